//! The kernel side of CNI ADD, DEL and CHECK: the pod's veth pair, its addresses, the pod's
//! gateway routes and the node's host routes, wired exactly as Calico wires them
//! (`calico:cni-plugin/pkg/dataplane/linux/dataplane_linux.go`; shared research
//! `ipam-cni-encap.md` §2.3).
//!
//! This module is an edge: it talks netlink (through `rtnetlink`), enters network namespaces
//! and writes `/proc/sys`. The "node" namespace is the one the calling thread is in when
//! [`add`], [`del`] or [`check`] is first polled; it is captured then, so the future may move
//! between threads of a runtime afterwards. The pod namespace is entered only for the instant
//! it takes to open a netlink socket there or to write one of its sysctls: the thread switches
//! back before anything is awaited, and a guard switches it back on unwinding too. The
//! functions must run inside a tokio runtime (each netlink connection is a spawned task), and
//! the process needs `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` (for `setns`), as a CNI plugin has.
//!
//! The wiring, for a pod address `10.90.0.5` and `fd00:90::5`:
//! - a veth pair, `host_ifname` in the node namespace and `ifname` in the pod, created in one
//!   request with the peer placed straight into the pod namespace;
//! - host end: MAC `ee:ee:ee:ee:ee:ee`, up, no address, proxy ARP (answering for
//!   `169.254.1.1`) and forwarding on, IPv6 DAD and router advertisements off;
//! - pod end: up, `10.90.0.5/32` and `fd00:90::5/128`, `169.254.1.1 dev eth0 scope link`,
//!   `default via 169.254.1.1 dev eth0` and `default via fe80::ecee:eeff:feee:eeee dev eth0`
//!   (the host end's EUI-64 link-local address);
//! - node routes `10.90.0.5/32` and `fd00:90::5/128` `dev <host_ifname> scope link proto 211`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Route protocol number of the node's routes to workload endpoints (`docs/ARCHITECTURE.md`:
/// 211 is `twill-felix`, workload endpoint routes). The CNI plugin writes them with Felix's
/// number because Felix owns them afterwards.
pub const ENDPOINT_ROUTE_PROTOCOL: u8 = 211;

/// MAC of every host-side veth (Calico's `EE:EE:EE:EE:EE:EE`): pods see one gateway MAC.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// The pod's IPv4 next hop. No interface holds it: the host end answers ARP for it by proxy.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The pod's IPv6 next hop: the EUI-64 link-local address of a host end with [`HOST_MAC`].
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// Longest interface name the kernel accepts (`IFNAMSIZ` less the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// How long ADD waits for the host end's MAC to read back as [`HOST_MAC`] (Calico: 5 s).
const MAC_SETTLE: Duration = Duration::from_secs(5);

/// The calling thread's own network namespace (not `/proc/self`, which is the main thread's).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// One workload interface to wire: the pod end, the host end and the pod's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadLink {
    /// The pod's network namespace (`CNI_NETNS`), e.g. `/run/netns/cni-1234…`.
    pub netns: PathBuf,
    /// The interface inside the pod (`CNI_IFNAME`), e.g. `eth0`.
    pub ifname: String,
    /// The host end, created in the node namespace, e.g. from [`host_ifname`].
    pub host_ifname: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// The pod's addresses. Each is used as a host prefix (/32 or /128) whatever its prefix
    /// length, as Calico does.
    pub addresses: Vec<IpNet>,
}

/// What ADD made, for the CNI result and the workload endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    /// MAC of the pod end, lower-case `aa:bb:cc:dd:ee:ff`.
    pub pod_mac: String,
    /// Index of the host end in the node namespace.
    pub host_ifindex: u32,
    /// Index of the pod end in the pod namespace.
    pub pod_ifindex: u32,
}

/// Which network namespace an operation acted in, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// The node's: the calling thread's namespace when the operation started.
    Node,
    /// The pod's, by its path.
    Pod(PathBuf),
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Node => f.write_str("the node namespace"),
            Netns::Pod(path) => write!(f, "pod namespace {}", path.display()),
        }
    }
}

/// Failures of the kernel side of ADD, DEL and CHECK.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// An interface name is empty, too long for the kernel or has a character it refuses.
    #[error("interface name {name:?} is invalid: {reason}")]
    InvalidIfname {
        /// The name as given.
        name: String,
        /// Why the kernel would refuse it.
        reason: &'static str,
    },
    /// The calling thread's own namespace could not be opened to come back to.
    #[error("cannot open the calling thread's network namespace {THREAD_NETNS}")]
    ThreadNetns {
        /// The open error.
        #[source]
        source: io::Error,
    },
    /// The pod's network namespace could not be opened.
    #[error("cannot open network namespace {}", netns.display())]
    OpenNetns {
        /// The `CNI_NETNS` path.
        netns: PathBuf,
        /// The open error.
        #[source]
        source: io::Error,
    },
    /// The thread could not enter a namespace (for the pod: the path is not a namespace).
    #[error("cannot enter {netns}")]
    EnterNetns {
        /// The namespace.
        netns: Netns,
        /// The `setns` error.
        #[source]
        source: Errno,
    },
    /// The thread could not return to its namespace: it is left in `netns` and must not be
    /// used for anything else.
    #[error("cannot return the thread to its own network namespace from {netns}")]
    RestoreNetns {
        /// The namespace the thread is stuck in.
        netns: Netns,
        /// The `setns` error.
        #[source]
        source: Errno,
    },
    /// A netlink socket could not be opened in a namespace.
    #[error("cannot open a netlink socket in {netns}")]
    Socket {
        /// The namespace.
        netns: Netns,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The pod already has an interface with the requested name; ADD changed nothing.
    #[error("interface {ifname} already exists in {netns}")]
    IfnameExists {
        /// The pod interface name.
        ifname: String,
        /// The pod namespace.
        netns: Netns,
    },
    /// A netlink request about an interface failed.
    #[error("cannot {action} interface {ifname} in {netns}")]
    Link {
        /// What was asked, e.g. "create the veth pair for".
        action: &'static str,
        /// The interface.
        ifname: String,
        /// Its namespace.
        netns: Netns,
        /// The netlink error (boxed: the type is large).
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// An interface that ADD just created could not be found.
    #[error("interface {ifname} vanished from {netns} while it was being wired")]
    Vanished {
        /// The interface.
        ifname: String,
        /// Its namespace.
        netns: Netns,
    },
    /// An address could not be added to the pod interface.
    #[error("cannot add address {address} to {ifname} in {netns}")]
    Address {
        /// The address, as a host prefix.
        address: IpNet,
        /// The pod interface.
        ifname: String,
        /// The pod namespace.
        netns: Netns,
        /// The netlink error (boxed: the type is large).
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A route could not be added or listed.
    #[error("cannot {action} route {route} in {netns}")]
    Route {
        /// "add" or "list routes to look for".
        action: &'static str,
        /// The route, as `ip route` would print it.
        route: String,
        /// Its namespace.
        netns: Netns,
        /// The netlink error (boxed: the type is large).
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A host route for the workload already exists, but not on its host interface.
    #[error("route {destination} already exists in {netns} on {existing}, not on {ifname}")]
    RouteConflict {
        /// The workload address, as a host prefix.
        destination: IpNet,
        /// The workload's host interface.
        ifname: String,
        /// Where the existing route points, e.g. "ifindex 7" or "no interface".
        existing: String,
        /// The node namespace.
        netns: Netns,
    },
    /// A sysctl could not be written.
    #[error("cannot set {} to {value} in {netns}", path.display())]
    Sysctl {
        /// The `/proc/sys` file.
        path: PathBuf,
        /// The value written.
        value: &'static str,
        /// The namespace it was written in.
        netns: Netns,
        /// The write error.
        #[source]
        source: io::Error,
    },
    /// The host end's MAC would not read back as `ee:ee:ee:ee:ee:ee`.
    #[error("host interface {ifname} kept MAC {found} instead of ee:ee:ee:ee:ee:ee")]
    HostMac {
        /// The host interface.
        ifname: String,
        /// The MAC it reports.
        found: String,
    },
    /// CHECK found the interfaces or routes differ from what ADD makes; each problem is named.
    #[error("workload interface is not as ADD left it: {}", problems.join("; "))]
    Check {
        /// One sentence per problem, e.g. "host route 10.90.0.5/32 via tw0123456789a is
        /// missing".
        problems: Vec<String>,
    },
}

/// The host-side interface name for a workload: `prefix` and the first 11 hex digits of
/// SHA-1(`workload_id`), as Calico's `VethNameForWorkload` (whose id is
/// `"<namespace>.<pod>"` and prefix `cali`). A prefix longer than 4 characters gives a name
/// over [`MAX_IFNAME_LEN`], which [`add`] refuses.
pub fn host_ifname(prefix: &str, workload_id: &str) -> String {
    twill_shared::kubernetes::host_interface(prefix, workload_id)
}

/// Wire the workload: create the veth pair, configure both ends, add the pod's addresses and
/// gateway routes and the node's host routes. A stale host end of the same name is deleted
/// first. Fails with [`DataplaneError::IfnameExists`], changing nothing, if the pod already
/// has `ifname`. On any later failure everything created is removed before the error is
/// returned.
pub async fn add(link: &WorkloadLink) -> Result<Wired, DataplaneError> {
    validate_ifname(&link.ifname)?;
    validate_ifname(&link.host_ifname)?;
    let node_ns = open_thread_netns()?;
    let pod = Netns::Pod(link.netns.clone());
    let pod_ns = File::open(&link.netns).map_err(|source| DataplaneError::OpenNetns {
        netns: link.netns.clone(),
        source,
    })?;
    let node_nl = Rtnl::open(&node_ns, &Netns::Node)?;
    let pod_nl = Rtnl::open(&pod_ns, &pod)?;

    // Checked before the stale host end goes: that end may be this very interface's peer.
    let existing = link_by_name(&pod_nl.handle, &link.ifname)
        .await
        .map_err(|source| link_error("look up", &link.ifname, &pod, source))?;
    if existing.is_some() {
        return Err(DataplaneError::IfnameExists {
            ifname: link.ifname.clone(),
            netns: pod,
        });
    }

    let stale = link_by_name(&node_nl.handle, &link.host_ifname)
        .await
        .map_err(|source| link_error("look up", &link.host_ifname, &Netns::Node, source))?;
    if let Some(stale) = stale {
        tracing::info!(interface = %link.host_ifname, "deleting stale host-side veth");
        delete_link(&node_nl.handle, stale.header.index)
            .await
            .map_err(|source| {
                link_error("delete stale", &link.host_ifname, &Netns::Node, source)
            })?;
    }

    // One request makes both ends, the peer straight in the pod namespace: nothing to move.
    let peer = LinkUnspec::new_with_name(&link.ifname)
        .mtu(link.mtu)
        .setns_by_fd(pod_ns.as_raw_fd())
        .build();
    let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(link.host_ifname.clone())
        .mtu(link.mtu)
        .address(HOST_MAC.to_vec())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    node_nl
        .handle
        .link()
        .add(pair)
        .execute()
        .await
        .map_err(|source| {
            if errno_of(&source) == Some(Errno::EEXIST) {
                // Lost a race with something that made `ifname` in the pod meanwhile.
                DataplaneError::IfnameExists {
                    ifname: link.ifname.clone(),
                    netns: pod.clone(),
                }
            } else {
                link_error(
                    "create the veth pair for",
                    &link.host_ifname,
                    &Netns::Node,
                    source,
                )
            }
        })?;

    let wiring = Wiring {
        link,
        node_ns: &node_ns,
        pod_ns: &pod_ns,
        pod: &pod,
        node_nl: &node_nl,
        pod_nl: &pod_nl,
    };
    match wiring.wire().await {
        Ok(wired) => Ok(wired),
        Err(error) => {
            // Deleting the host end removes its peer and every route through either end.
            match link_by_name(&node_nl.handle, &link.host_ifname).await {
                Ok(Some(host)) => {
                    if let Err(undo) = delete_link(&node_nl.handle, host.header.index).await {
                        tracing::warn!(interface = %link.host_ifname, error = %undo,
                            "could not undo a failed ADD; the veth pair is left behind");
                    }
                }
                Ok(None) => {}
                Err(undo) => tracing::warn!(interface = %link.host_ifname, error = %undo,
                    "could not undo a failed ADD; the veth pair may be left behind"),
            }
            Err(error)
        }
    }
}

/// Remove the workload's interfaces. Idempotent: a missing namespace or interface is success.
/// Deleting the pod end removes the host end and the host routes with it; when the pod
/// namespace is gone (the path is missing or no longer a namespace) the host end is deleted
/// by name instead, and a host end left without its pod end is deleted too. An empty
/// `host_ifname` leaves the node side alone.
pub async fn del(netns: &Path, ifname: &str, host_ifname: &str) -> Result<(), DataplaneError> {
    let node_ns = open_thread_netns()?;
    let pod = Netns::Pod(netns.to_path_buf());
    match File::open(netns) {
        Ok(pod_ns) => match Rtnl::open(&pod_ns, &pod) {
            Ok(pod_nl) => {
                let found = link_by_name(&pod_nl.handle, ifname)
                    .await
                    .map_err(|source| link_error("look up", ifname, &pod, source))?;
                if let Some(found) = found {
                    delete_link(&pod_nl.handle, found.header.index)
                        .await
                        .map_err(|source| link_error("delete", ifname, &pod, source))?;
                }
            }
            // A path left behind by an unmounted namespace is a file but not a namespace.
            Err(DataplaneError::EnterNetns {
                source: Errno::EINVAL,
                ..
            }) => {
                tracing::info!(netns = %netns.display(), "pod namespace is gone");
            }
            Err(error) => return Err(error),
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            tracing::info!(netns = %netns.display(), "pod namespace is gone");
        }
        Err(source) => {
            return Err(DataplaneError::OpenNetns {
                netns: netns.to_path_buf(),
                source,
            });
        }
    }
    if host_ifname.is_empty() {
        return Ok(());
    }
    let node_nl = Rtnl::open(&node_ns, &Netns::Node)?;
    if let Some(host) = link_by_name(&node_nl.handle, host_ifname)
        .await
        .map_err(|source| link_error("look up", host_ifname, &Netns::Node, source))?
    {
        delete_link(&node_nl.handle, host.header.index)
            .await
            .map_err(|source| link_error("delete", host_ifname, &Netns::Node, source))?;
    }
    Ok(())
}

/// Compare the kernel with what [`add`] makes and name every difference: the pod interface
/// (present, up, MTU, paired with the host end, exactly the expected addresses), the pod's
/// gateway routes, the host end (present, up, MTU, MAC) and each host route (on the host
/// end, protocol [`ENDPOINT_ROUTE_PROTOCOL`]). Differences come back together in
/// [`DataplaneError::Check`]; other errors mean the check itself could not run.
pub async fn check(link: &WorkloadLink) -> Result<(), DataplaneError> {
    let node_ns = open_thread_netns()?;
    let pod = Netns::Pod(link.netns.clone());
    let pod_ns = File::open(&link.netns).map_err(|source| DataplaneError::OpenNetns {
        netns: link.netns.clone(),
        source,
    })?;
    let node_nl = Rtnl::open(&node_ns, &Netns::Node)?;
    let pod_nl = Rtnl::open(&pod_ns, &pod)?;
    let mut problems = Vec::new();
    let addresses: Vec<IpNet> = link.addresses.iter().map(host_prefix).collect();
    let has_v4 = addresses.iter().any(|a| a.addr().is_ipv4());
    let has_v6 = addresses.iter().any(|a| a.addr().is_ipv6());

    let host = link_by_name(&node_nl.handle, &link.host_ifname)
        .await
        .map_err(|source| link_error("look up", &link.host_ifname, &Netns::Node, source))?;
    let pod_link = link_by_name(&pod_nl.handle, &link.ifname)
        .await
        .map_err(|source| link_error("look up", &link.ifname, &pod, source))?;

    match &pod_link {
        None => problems.push(format!("pod interface {} is missing in {pod}", link.ifname)),
        Some(pod_link) => {
            let name = &link.ifname;
            let index = pod_link.header.index;
            if !pod_link.header.flags.contains(LinkFlags::Up) {
                problems.push(format!("pod interface {name} is down"));
            }
            if let Some(mtu) = mtu_of(pod_link) {
                if mtu != link.mtu {
                    problems.push(format!(
                        "pod interface {name} has MTU {mtu}, expected {}",
                        link.mtu
                    ));
                }
            }
            if let Some(host) = &host {
                if peer_of(pod_link) != Some(host.header.index) {
                    problems.push(format!(
                        "pod interface {name} is not the peer of host interface {}",
                        link.host_ifname
                    ));
                }
            }
            let present = pod_addresses(&pod_nl.handle, index)
                .await
                .map_err(|source| link_error("list the addresses of", name, &pod, source))?;
            for want in &addresses {
                if !present.contains(want) {
                    problems.push(format!("pod interface {name} lacks address {want}"));
                }
            }
            for have in &present {
                if !addresses.contains(have) {
                    problems.push(format!(
                        "pod interface {name} has unexpected address {have}"
                    ));
                }
            }
            if has_v4 {
                let routes = list_routes(&pod_nl.handle, AddressFamily::Inet, &pod).await?;
                let gateway = IpAddr::V4(GATEWAY_V4);
                let gateway_route = IpNet::from(gateway);
                if !routes.iter().any(|r| {
                    r.destination() == Some(gateway_route)
                        && r.oif == Some(index)
                        && r.scope == RouteScope::Link
                }) {
                    problems.push(format!(
                        "pod route {gateway_route} dev {name} scope link is missing"
                    ));
                }
                if !routes.iter().any(|r| r.is_default_via(gateway, index)) {
                    problems.push(format!(
                        "pod default route via {gateway} dev {name} is missing"
                    ));
                }
            }
            if has_v6 {
                let routes = list_routes(&pod_nl.handle, AddressFamily::Inet6, &pod).await?;
                let gateway = IpAddr::V6(GATEWAY_V6);
                if !routes.iter().any(|r| r.is_default_via(gateway, index)) {
                    problems.push(format!(
                        "pod default route via {gateway} dev {name} is missing"
                    ));
                }
            }
        }
    }

    let host_name = &link.host_ifname;
    match &host {
        None => problems.push(format!("host interface {host_name} is missing")),
        Some(host) => {
            if !host.header.flags.contains(LinkFlags::Up) {
                problems.push(format!("host interface {host_name} is down"));
            }
            if let Some(mtu) = mtu_of(host) {
                if mtu != link.mtu {
                    problems.push(format!(
                        "host interface {host_name} has MTU {mtu}, expected {}",
                        link.mtu
                    ));
                }
            }
            let mac = mac_of(host);
            if mac.as_deref() != Some(&HOST_MAC[..]) {
                problems.push(format!(
                    "host interface {host_name} has MAC {}, expected ee:ee:ee:ee:ee:ee",
                    mac.map_or_else(|| "none".to_owned(), |m| format_mac(&m))
                ));
            }
        }
    }
    let host_index = host.as_ref().map(|h| h.header.index);
    for (family, wanted) in [
        (AddressFamily::Inet, has_v4),
        (AddressFamily::Inet6, has_v6),
    ] {
        if !wanted {
            continue;
        }
        let routes = list_routes(&node_nl.handle, family, &Netns::Node).await?;
        for want in addresses.iter().filter(|a| same_family(a.addr(), family)) {
            let candidates: Vec<&Route> = routes
                .iter()
                .filter(|r| r.destination() == Some(*want))
                .collect();
            let on_host = candidates
                .iter()
                .find(|r| host_index.is_some() && r.oif == host_index);
            match on_host {
                None => problems.push(format!("host route {want} via {host_name} is missing")),
                Some(route) => {
                    if route.protocol != RouteProtocol::Other(ENDPOINT_ROUTE_PROTOCOL) {
                        problems.push(format!(
                            "host route {want} via {host_name} has protocol {}, expected {}",
                            route.protocol, ENDPOINT_ROUTE_PROTOCOL
                        ));
                    }
                    if !route.has_link_scope() {
                        problems.push(format!(
                            "host route {want} via {host_name} has scope {}, expected link",
                            route.scope
                        ));
                    }
                }
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(DataplaneError::Check { problems })
    }
}

/// The steps of ADD after the pair exists; any error makes [`add`] delete the pair.
struct Wiring<'a> {
    link: &'a WorkloadLink,
    node_ns: &'a File,
    pod_ns: &'a File,
    pod: &'a Netns,
    node_nl: &'a Rtnl,
    pod_nl: &'a Rtnl,
}

impl Wiring<'_> {
    async fn wire(&self) -> Result<Wired, DataplaneError> {
        let link = self.link;
        let addresses: Vec<IpNet> = link.addresses.iter().map(host_prefix).collect();
        let has_v6 = addresses.iter().any(|a| a.addr().is_ipv6());
        let host_index = self
            .index_of(&self.node_nl.handle, &link.host_ifname, &Netns::Node)
            .await?;
        let pod_index = self
            .index_of(&self.pod_nl.handle, &link.ifname, self.pod)
            .await?;

        // Host end. The sysctls come before "up" so that its link-local address skips DAD.
        self.host_sysctls(has_v6)?;
        set_up(&self.node_nl.handle, host_index)
            .await
            .map_err(|source| link_error("bring up", &link.host_ifname, &Netns::Node, source))?;
        self.settle_host_mac(host_index).await?;

        // Pod end: DAD off before "up" and before the address, so both are usable at once.
        self.pod_sysctls(has_v6)?;
        if let Some(lo) = link_by_name(&self.pod_nl.handle, "lo")
            .await
            .map_err(|source| link_error("look up", "lo", self.pod, source))?
        {
            set_up(&self.pod_nl.handle, lo.header.index)
                .await
                .map_err(|source| link_error("bring up", "lo", self.pod, source))?;
        }
        set_up(&self.pod_nl.handle, pod_index)
            .await
            .map_err(|source| link_error("bring up", &link.ifname, self.pod, source))?;
        for address in &addresses {
            self.pod_nl
                .handle
                .address()
                .add(pod_index, address.addr(), address.prefix_len())
                .execute()
                .await
                .map_err(|source| DataplaneError::Address {
                    address: *address,
                    ifname: link.ifname.clone(),
                    netns: self.pod.clone(),
                    source: Box::new(source),
                })?;
        }
        self.pod_routes(pod_index, &addresses).await?;

        for address in &addresses {
            self.host_route(host_index, *address).await?;
        }

        let pod_link = link_by_index(&self.pod_nl.handle, pod_index)
            .await
            .map_err(|source| link_error("look up", &link.ifname, self.pod, source))?;
        let pod_mac = mac_of(&pod_link)
            .map(|m| format_mac(&m))
            .unwrap_or_default();
        Ok(Wired {
            pod_mac,
            host_ifindex: host_index,
            pod_ifindex: pod_index,
        })
    }

    async fn index_of(
        &self,
        handle: &Handle,
        name: &str,
        netns: &Netns,
    ) -> Result<u32, DataplaneError> {
        link_by_name(handle, name)
            .await
            .map_err(|source| link_error("look up", name, netns, source))?
            .map(|l| l.header.index)
            .ok_or_else(|| DataplaneError::Vanished {
                ifname: name.to_owned(),
                netns: netns.clone(),
            })
    }

    /// Calico's host-side sysctls (`configureSysctls`).
    fn host_sysctls(&self, has_v6: bool) -> Result<(), DataplaneError> {
        let ifname = &self.link.host_ifname;
        in_netns(
            self.node_ns,
            &Netns::Node,
            || -> Result<(), DataplaneError> {
                let node = &Netns::Node;
                // Routing to 127.0.0.0/8 from the pod, for NAT to the host's own services.
                write_sysctl(&format!("ipv4/conf/{ifname}/route_localnet"), "1", node)?;
                // Answer ARP for 169.254.1.1 (any address, in fact) with the host end's MAC, at once.
                write_sysctl(&format!("ipv4/neigh/{ifname}/proxy_delay"), "0", node)?;
                write_sysctl(&format!("ipv4/conf/{ifname}/proxy_arp"), "1", node)?;
                write_sysctl(&format!("ipv4/conf/{ifname}/forwarding"), "1", node)?;
                if has_v6 {
                    write_sysctl(&format!("ipv6/conf/{ifname}/disable_ipv6"), "0", node)?;
                    write_sysctl(&format!("ipv6/conf/{ifname}/accept_dad"), "0", node)?;
                    write_sysctl(&format!("ipv6/conf/{ifname}/proxy_ndp"), "1", node)?;
                    write_sysctl(&format!("ipv6/conf/{ifname}/forwarding"), "1", node)?;
                }
                // Calico turns router advertisements off on every host end, v6 or not. Only a
                // kernel without IPv6 may lack the file.
                match write_sysctl(&format!("ipv6/conf/{ifname}/accept_ra"), "0", node) {
                    Err(DataplaneError::Sysctl { source, .. })
                        if source.kind() == io::ErrorKind::NotFound
                            && !has_v6
                            && !Path::new("/proc/sys/net/ipv6").exists() =>
                    {
                        Ok(())
                    }
                    other => other,
                }
            },
        )?
    }

    /// Pod-side sysctls for IPv6: IPv6 on, and no DAD on the pod interface.
    fn pod_sysctls(&self, has_v6: bool) -> Result<(), DataplaneError> {
        if !has_v6 {
            return Ok(());
        }
        let ifname = &self.link.ifname;
        let pod = self.pod;
        in_netns(self.pod_ns, pod, || -> Result<(), DataplaneError> {
            for scope in ["all", "default", "lo", ifname.as_str()] {
                write_sysctl(&format!("ipv6/conf/{scope}/disable_ipv6"), "0", pod)?;
            }
            write_sysctl(&format!("ipv6/conf/{ifname}/accept_dad"), "0", pod)
        })?
    }

    /// The MAC was asked for at creation; read it back, setting it again until it sticks
    /// (something like udev's MACAddressPolicy can rewrite it, the reason Calico retries).
    async fn settle_host_mac(&self, index: u32) -> Result<(), DataplaneError> {
        let ifname = &self.link.host_ifname;
        let handle = &self.node_nl.handle;
        let mut found = None;
        let settle = async {
            loop {
                let link = link_by_index(handle, index)
                    .await
                    .map_err(|source| link_error("look up", ifname, &Netns::Node, source))?;
                found = mac_of(&link);
                if found.as_deref() == Some(&HOST_MAC[..]) {
                    return Ok(());
                }
                handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .address(HOST_MAC.to_vec())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|source| link_error("set the MAC of", ifname, &Netns::Node, source))?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(MAC_SETTLE, settle).await {
            Ok(result) => result,
            Err(_elapsed) => Err(DataplaneError::HostMac {
                ifname: ifname.clone(),
                found: found.map_or_else(|| "none".to_owned(), |m| format_mac(&m)),
            }),
        }
    }

    /// `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1 dev eth0`, and
    /// `default via fe80::ecee:eeff:feee:eeee dev eth0`, with the kernel's default protocol
    /// ("boot") as Calico's `netlink.RouteAdd` gives them.
    async fn pod_routes(&self, index: u32, addresses: &[IpNet]) -> Result<(), DataplaneError> {
        let ifname = &self.link.ifname;
        let handle = &self.pod_nl.handle;
        if addresses.iter().any(|a| a.addr().is_ipv4()) {
            let onlink = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(GATEWAY_V4, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::Boot)
                .build();
            add_route(
                handle,
                onlink,
                format!("{GATEWAY_V4}/32 dev {ifname} scope link"),
                self.pod,
            )
            .await?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(GATEWAY_V4)
                .output_interface(index)
                .protocol(RouteProtocol::Boot)
                .build();
            add_route(
                handle,
                default,
                format!("default via {GATEWAY_V4} dev {ifname}"),
                self.pod,
            )
            .await?;
        }
        if addresses.iter().any(|a| a.addr().is_ipv6()) {
            let default = RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(GATEWAY_V6)
                .output_interface(index)
                .protocol(RouteProtocol::Boot)
                .build();
            add_route(
                handle,
                default,
                format!("default via {GATEWAY_V6} dev {ifname}"),
                self.pod,
            )
            .await?;
        }
        Ok(())
    }

    /// `<address> dev <host_ifname> scope link proto 211`. An existing route is accepted only
    /// if it is the same route on the same interface (Felix may have been quicker).
    async fn host_route(&self, index: u32, destination: IpNet) -> Result<(), DataplaneError> {
        let ifname = &self.link.host_ifname;
        let handle = &self.node_nl.handle;
        let shown =
            format!("{destination} dev {ifname} scope link proto {ENDPOINT_ROUTE_PROTOCOL}");
        let protocol = RouteProtocol::Other(ENDPOINT_ROUTE_PROTOCOL);
        let message = match destination {
            IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(protocol)
                .build(),
            IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .output_interface(index)
                .scope(RouteScope::Link)
                .protocol(protocol)
                .build(),
        };
        match handle.route().add(message).execute().await {
            Ok(()) => Ok(()),
            Err(error) if errno_of(&error) == Some(Errno::EEXIST) => {
                let family = if destination.addr().is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                };
                let routes = list_routes(handle, family, &Netns::Node).await?;
                let same: Vec<&Route> = routes
                    .iter()
                    .filter(|r| r.destination() == Some(destination))
                    .collect();
                if same
                    .iter()
                    .any(|r| r.oif == Some(index) && r.has_link_scope())
                {
                    tracing::info!(route = %shown, "host route already present");
                    return Ok(());
                }
                let existing = same
                    .first()
                    .and_then(|r| r.oif)
                    .map_or_else(|| "no interface".to_owned(), |oif| format!("ifindex {oif}"));
                Err(DataplaneError::RouteConflict {
                    destination,
                    ifname: ifname.clone(),
                    existing,
                    netns: Netns::Node,
                })
            }
            Err(source) => Err(DataplaneError::Route {
                action: "add",
                route: shown,
                netns: Netns::Node,
                source: Box::new(source),
            }),
        }
    }
}

/// A netlink connection bound to one namespace; its I/O task stops when this is dropped.
struct Rtnl {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Rtnl {
    /// Open a socket in `ns`. The socket stays in the namespace it was opened in, wherever
    /// the thread goes afterwards, so only the open itself needs the switch.
    fn open(ns: &File, netns: &Netns) -> Result<Rtnl, DataplaneError> {
        let (connection, handle, _unsolicited) = in_netns(ns, netns, rtnetlink::new_connection)?
            .map_err(|source| DataplaneError::Socket {
                netns: netns.clone(),
                source,
            })?;
        let task = tokio::spawn(connection);
        Ok(Rtnl { handle, task })
    }
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Switches the thread back to its namespace if `what` unwinds; [`in_netns`] disarms it.
struct Restore<'a> {
    original: &'a File,
    armed: bool,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if self.armed && setns(self.original, CloneFlags::CLONE_NEWNET).is_err() {
            tracing::error!("cannot return a panicking thread to its network namespace");
        }
    }
}

/// Run `what` on this thread inside the namespace `ns`, then switch back. `what` is
/// synchronous, so the thread cannot be handed to other work while it is switched.
fn in_netns<T>(ns: &File, netns: &Netns, what: impl FnOnce() -> T) -> Result<T, DataplaneError> {
    let original = open_thread_netns()?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|source| DataplaneError::EnterNetns {
        netns: netns.clone(),
        source,
    })?;
    let mut restore = Restore {
        original: &original,
        armed: true,
    };
    let out = what();
    restore.armed = false;
    setns(&original, CloneFlags::CLONE_NEWNET).map_err(|source| DataplaneError::RestoreNetns {
        netns: netns.clone(),
        source,
    })?;
    Ok(out)
}

fn open_thread_netns() -> Result<File, DataplaneError> {
    File::open(THREAD_NETNS).map_err(|source| DataplaneError::ThreadNetns { source })
}

/// Write `value` to `/proc/sys/net/<name>` in the thread's current namespace.
fn write_sysctl(name: &str, value: &'static str, netns: &Netns) -> Result<(), DataplaneError> {
    let path = Path::new("/proc/sys/net").join(name);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| DataplaneError::Sysctl {
            path,
            value,
            netns: netns.clone(),
            source,
        })
}

fn validate_ifname(name: &str) -> Result<(), DataplaneError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "it is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "it is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "it contains '/', ':', whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(DataplaneError::InvalidIfname {
        name: name.to_owned(),
        reason,
    })
}

fn link_error(
    action: &'static str,
    ifname: &str,
    netns: &Netns,
    source: rtnetlink::Error,
) -> DataplaneError {
    DataplaneError::Link {
        action,
        ifname: ifname.to_owned(),
        netns: netns.clone(),
        source: Box::new(source),
    }
}

/// The errno of a netlink NACK.
fn errno_of(error: &rtnetlink::Error) -> Option<Errno> {
    match error {
        rtnetlink::Error::NetlinkError(message) => {
            message.code.map(|code| Errno::from_raw(code.get().abs()))
        }
        _ => None,
    }
}

async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(error) if errno_of(&error) == Some(Errno::ENODEV) => Ok(None),
        Err(error) => Err(error),
    }
}

async fn link_by_index(handle: &Handle, index: u32) -> Result<LinkMessage, rtnetlink::Error> {
    let mut links = handle.link().get().match_index(index).execute();
    links
        .try_next()
        .await?
        .ok_or(rtnetlink::Error::RequestFailed)
}

/// Delete a link; one already gone counts as deleted.
async fn delete_link(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    match handle.link().del(index).execute().await {
        Err(error) if errno_of(&error) == Some(Errno::ENODEV) => Ok(()),
        other => other,
    }
}

async fn set_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

async fn add_route(
    handle: &Handle,
    message: RouteMessage,
    shown: String,
    netns: &Netns,
) -> Result<(), DataplaneError> {
    handle
        .route()
        .add(message)
        .execute()
        .await
        .map_err(|source| DataplaneError::Route {
            action: "add",
            route: shown,
            netns: netns.clone(),
            source: Box::new(source),
        })
}

/// The addresses on a pod interface that ADD could have put there: all but IPv6 link-local.
async fn pod_addresses(handle: &Handle, index: u32) -> Result<Vec<IpNet>, rtnetlink::Error> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await?;
    Ok(messages
        .iter()
        .filter_map(|message| {
            let address = message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Address(address) => Some(*address),
                    _ => None,
                })?;
            let is_link_local = matches!(address, IpAddr::V6(v6) if v6.is_unicast_link_local());
            if is_link_local {
                return None;
            }
            IpNet::new(address, message.header.prefix_len).ok()
        })
        .collect())
}

/// A route of the main table, reduced to what CHECK and ADD compare.
#[derive(Debug)]
struct Route {
    destination: Option<IpAddr>,
    prefix_len: u8,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    protocol: RouteProtocol,
    scope: RouteScope,
}

impl Route {
    fn from_message(message: &RouteMessage) -> Route {
        let mut route = Route {
            destination: None,
            prefix_len: message.header.destination_prefix_length,
            gateway: None,
            oif: None,
            protocol: message.header.protocol,
            scope: message.header.scope,
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(address) => route.destination = ip_of(address),
                RouteAttribute::Gateway(address) => route.gateway = ip_of(address),
                RouteAttribute::Oif(index) => route.oif = Some(*index),
                _ => {}
            }
        }
        route
    }

    fn destination(&self) -> Option<IpNet> {
        IpNet::new(self.destination?, self.prefix_len).ok()
    }

    /// IPv6 routes carry no scope (the kernel reports "universe" whatever was asked), so
    /// only IPv4 ones can be held to "link".
    fn has_link_scope(&self) -> bool {
        self.scope == RouteScope::Link || matches!(self.destination, Some(IpAddr::V6(_)))
    }

    fn is_default_via(&self, gateway: IpAddr, oif: u32) -> bool {
        self.prefix_len == 0 && self.gateway == Some(gateway) && self.oif == Some(oif)
    }
}

/// The main-table routes of one family.
async fn list_routes(
    handle: &Handle,
    family: AddressFamily,
    netns: &Netns,
) -> Result<Vec<Route>, DataplaneError> {
    let query = match family {
        AddressFamily::Inet6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        _ => RouteMessageBuilder::<Ipv4Addr>::new().build(),
    };
    let messages: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|source| DataplaneError::Route {
            action: "list routes to look for",
            route: format!("{family:?} routes"),
            netns: netns.clone(),
            source: Box::new(source),
        })?;
    Ok(messages
        .iter()
        .filter(|m| main_table(m))
        .map(Route::from_message)
        .collect())
}

fn main_table(message: &RouteMessage) -> bool {
    let table = message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table));
    table == u32::from(rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN)
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn same_family(address: IpAddr, family: AddressFamily) -> bool {
    match address {
        IpAddr::V4(_) => family == AddressFamily::Inet,
        IpAddr::V6(_) => family == AddressFamily::Inet6,
    }
}

/// The address as a host prefix (/32 or /128), its prefix length dropped as Calico does.
fn host_prefix(address: &IpNet) -> IpNet {
    IpNet::from(address.addr())
}

fn mtu_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

fn mac_of(link: &LinkMessage) -> Option<Vec<u8>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.clone()),
        _ => None,
    })
}

/// The peer's ifindex that a veth end reports (`IFLA_LINK`).
fn peer_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_prefix_and_11_hex_digits_of_sha1() {
        // `printf default.nginx | sha1sum` = c440f455693b69cdd48a37aa5ecd78038f50413d
        assert_eq!(host_ifname("cali", "default.nginx"), "calic440f455693");
        assert_eq!(host_ifname("tw", "default.nginx"), "twc440f455693");
    }

    #[test]
    fn gateway_v6_is_the_eui64_of_the_host_mac() {
        let mut eui = [0u8; 8];
        eui[..3].copy_from_slice(&HOST_MAC[..3]);
        eui[3] = 0xff;
        eui[4] = 0xfe;
        eui[5..].copy_from_slice(&HOST_MAC[3..]);
        eui[0] ^= 0x02;
        let mut bytes = [0u8; 16];
        bytes[0] = 0xfe;
        bytes[1] = 0x80;
        bytes[8..].copy_from_slice(&eui);
        assert_eq!(GATEWAY_V6, Ipv6Addr::from(bytes));
    }

    #[test]
    fn ifnames_the_kernel_refuses_are_refused() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("tw0123456789abc").is_ok());
        for bad in ["", "tw0123456789abcd", "a/b", "a b", "a:b", ".."] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
