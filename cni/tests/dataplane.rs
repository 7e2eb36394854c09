//! The kernel side of ADD, DEL and CHECK against a real kernel, as root.
//!
//! Each test makes two fresh namespaces, a "node" and a "pod", and runs the library on a
//! thread that has entered the node namespace, so nothing touches the root namespace. The
//! node gets an uplink (a veth pair inside the node namespace) holding 198.18.0.1/32 and the
//! default route, as a real node has: proxy ARP only answers for addresses the node can route
//! elsewhere. Observations go through `ip -n`; reachability through ICMP echo sent from the
//! node namespace with a raw socket (this machine has no `ping` binary).
#![allow(
    clippy::disallowed_methods,
    reason = "an integration test: it runs `ip` and waits on the clock"
)]

use std::fs::File;
use std::future::Future;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use twill_cni::dataplane::{
    self, host_ifname, DataplaneError, Netns, WorkloadLink, ENDPOINT_ROUTE_PROTOCOL,
};

/// `ip netns add` mounts /run/netns on first use; concurrent first uses can trip on it.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A node and a pod namespace, deleted on drop (also when the test panics).
struct Namespaces {
    node: String,
    pod: String,
}

impl Namespaces {
    fn new() -> Namespaces {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("tw-dp-{}-{n}", std::process::id());
        let namespaces = Namespaces {
            node: format!("{base}-node"),
            pod: format!("{base}-pod"),
        };
        {
            let _serial = NETNS_LOCK
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            ip(&["netns", "add", &namespaces.node]);
            ip(&["netns", "add", &namespaces.pod]);
        }
        let node = namespaces.node.as_str();
        ip(&["-n", node, "link", "set", "lo", "up"]);
        ip(&[
            "-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ip(&["-n", node, "link", "set", "up0", "up"]);
        ip(&["-n", node, "link", "set", "up1", "up"]);
        ip(&["-n", node, "addr", "add", "198.18.0.1/32", "dev", "up0"]);
        ip(&["-n", node, "route", "add", "default", "dev", "up0"]);
        namespaces
    }

    fn pod_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.pod))
    }

    fn workload(&self, addresses: &[&str]) -> WorkloadLink {
        WorkloadLink {
            netns: self.pod_path(),
            ifname: "eth0".to_owned(),
            host_ifname: host_ifname("tw", &format!("default.{}", self.pod)),
            mtu: 1450,
            addresses: addresses
                .iter()
                .map(|a| a.parse::<IpNet>().expect("test address"))
                .collect(),
        }
    }

    /// Run `f` on a fresh thread that has entered the node namespace, on a current-thread
    /// runtime, and return its output.
    fn in_node<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.node);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let node = File::open(&path).expect("open the node namespace");
                    setns(&node, CloneFlags::CLONE_NEWNET).expect("enter the node namespace");
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(f())
                })
                .join()
                .expect("the node thread panicked")
        })
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in [&self.node, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Run `ip` and return its standard output; panic if it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `ip` succeeds (e.g. `link show X` for "X exists").
fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .expect("run ip")
        .status
        .success()
}

fn node_sysctl(ns: &Namespaces, path: &str) -> String {
    ip(&["netns", "exec", &ns.node, "cat", path])
        .trim()
        .to_owned()
}

/// Send ICMP echo requests from the node namespace to `dst` until one is answered or 5 s
/// have passed.
fn ping_from_node(ns: &Namespaces, dst: IpAddr) -> bool {
    ns.in_node(|| async move {
        let (domain, protocol, request, reply) = match dst {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
        };
        let socket = Socket::new(domain, Type::RAW, Some(protocol)).expect("raw ICMP socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let id = (std::process::id() & 0xffff) as u16;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seq = 0u16;
        let mut connected = false;
        while Instant::now() < deadline {
            // A connected raw socket only receives what `dst` sends. Connecting fails while
            // there is no route to `dst`.
            if !connected {
                connected = socket
                    .connect(&SockAddr::from(SocketAddr::new(dst, 0)))
                    .is_ok();
                if !connected {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            seq = seq.wrapping_add(1);
            let mut packet = vec![request, 0, 0, 0];
            packet.extend_from_slice(&id.to_be_bytes());
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.extend_from_slice(b"twill-dataplane-test");
            if dst.is_ipv4() {
                // The kernel fills in ICMPv6 checksums on raw sockets, not ICMPv4 ones.
                let sum = checksum(&packet);
                packet[2..4].copy_from_slice(&sum.to_be_bytes());
            }
            if socket.send(&packet).is_err() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let mut buf = [0u8; 1500];
            let Ok(n) = (&socket).read(&mut buf) else {
                continue;
            };
            // IPv4 raw sockets deliver the IP header too; IPv6 ones only the ICMPv6 message.
            let icmp = if dst.is_ipv4() {
                &buf[usize::from(buf[0] & 0x0f) * 4..n]
            } else {
                &buf[..n]
            };
            if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
                return true;
            }
        }
        false
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn problems(result: Result<(), DataplaneError>) -> Vec<String> {
    match result {
        Err(DataplaneError::Check { problems }) => problems,
        other => panic!("expected CHECK to report problems, got {other:?}"),
    }
}

#[test]
fn add_wires_the_pod_and_the_node_like_calico() {
    let ns = Namespaces::new();
    let link = ns.workload(&["10.90.0.5/32"]);
    let host = link.host_ifname.clone();
    let wired = ns.in_node(|| dataplane::add(&link)).expect("ADD");

    // Pod end: up, the MTU, the address as /32, the link-local gateway and the default route.
    let pod_link = ip(&["-n", &ns.pod, "link", "show", "eth0"]);
    assert!(pod_link.contains(",UP"), "{pod_link}");
    assert!(pod_link.contains("mtu 1450"), "{pod_link}");
    assert!(
        pod_link.contains(&format!("link/ether {} ", wired.pod_mac)),
        "{pod_link}"
    );
    assert!(
        pod_link.starts_with(&format!("{}: eth0@", wired.pod_ifindex)),
        "{pod_link}"
    );
    let lo = ip(&["-n", &ns.pod, "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    let addrs = ip(&["-n", &ns.pod, "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("inet 10.90.0.5/32 "), "{addrs}");
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    let routes = ip(&["-n", &ns.pod, "-4", "route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );

    // Host end: ee:ee MAC, up, no address, the MTU, and Calico's sysctls.
    let host_link = ip(&["-n", &ns.node, "link", "show", &host]);
    assert!(
        host_link.contains("link/ether ee:ee:ee:ee:ee:ee "),
        "{host_link}"
    );
    assert!(host_link.contains(",UP"), "{host_link}");
    assert!(host_link.contains("mtu 1450"), "{host_link}");
    assert!(
        host_link.starts_with(&format!("{}: {host}@", wired.host_ifindex)),
        "{host_link}"
    );
    let host_v4 = ip(&["-n", &ns.node, "-4", "-o", "addr", "show", "dev", &host]);
    assert_eq!(host_v4.trim(), "", "the host end has no IPv4 address");
    for (sysctl, value) in [
        (format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp"), "1"),
        (format!("/proc/sys/net/ipv4/neigh/{host}/proxy_delay"), "0"),
        (format!("/proc/sys/net/ipv4/conf/{host}/forwarding"), "1"),
        (
            format!("/proc/sys/net/ipv4/conf/{host}/route_localnet"),
            "1",
        ),
        (format!("/proc/sys/net/ipv6/conf/{host}/accept_ra"), "0"),
    ] {
        assert_eq!(node_sysctl(&ns, &sysctl), value, "{sysctl}");
    }

    // Host route: scope link, protocol 211.
    let proto = ENDPOINT_ROUTE_PROTOCOL.to_string();
    let host_routes = ip(&["-n", &ns.node, "route", "show", "proto", &proto]);
    assert_eq!(
        host_routes.trim(),
        format!("10.90.0.5 dev {host} scope link"),
        "{host_routes}"
    );

    // The node reaches the pod: host route out, proxy ARP for 169.254.1.1 back.
    assert!(
        ping_from_node(&ns, "10.90.0.5".parse().unwrap()),
        "no echo reply from 10.90.0.5"
    );
}

#[test]
fn add_refuses_an_existing_pod_interface_and_leaves_no_host_veth() {
    let ns = Namespaces::new();
    ip(&[
        "-n", &ns.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let link = ns.workload(&["10.90.0.5/32"]);
    let result = ns.in_node(|| dataplane::add(&link));
    match result {
        Err(DataplaneError::IfnameExists { ifname, netns }) => {
            assert_eq!(ifname, "eth0");
            assert_eq!(netns, Netns::Pod(ns.pod_path()));
        }
        other => panic!("expected IfnameExists, got {other:?}"),
    }
    assert!(
        !ip_ok(&["-n", &ns.node, "link", "show", &link.host_ifname]),
        "host veth left behind"
    );
    let pod_eth0 = ip(&["-n", &ns.pod, "link", "show", "eth0"]);
    assert!(
        pod_eth0.contains("eth0@other0"),
        "the pod's own eth0 was touched: {pod_eth0}"
    );
}

#[test]
fn add_undoes_everything_when_a_later_step_fails() {
    let ns = Namespaces::new();
    // The node already routes the pod's address elsewhere: the host route step must fail.
    ip(&["-n", &ns.node, "route", "add", "10.90.0.7/32", "dev", "up0"]);
    let link = ns.workload(&["10.90.0.7/32"]);
    let result = ns.in_node(|| dataplane::add(&link));
    match result {
        Err(DataplaneError::RouteConflict {
            destination,
            ifname,
            ..
        }) => {
            assert_eq!(destination.to_string(), "10.90.0.7/32");
            assert_eq!(ifname, link.host_ifname);
        }
        other => panic!("expected RouteConflict, got {other:?}"),
    }
    assert!(
        !ip_ok(&["-n", &ns.node, "link", "show", &link.host_ifname]),
        "host veth left behind"
    );
    assert!(
        !ip_ok(&["-n", &ns.pod, "link", "show", "eth0"]),
        "pod eth0 left behind"
    );
    let proto = ENDPOINT_ROUTE_PROTOCOL.to_string();
    assert_eq!(
        ip(&["-n", &ns.node, "route", "show", "proto", &proto]).trim(),
        ""
    );
}

#[test]
fn add_replaces_a_stale_host_veth() {
    let ns = Namespaces::new();
    let link = ns.workload(&["10.90.0.8/32"]);
    ip(&[
        "-n",
        &ns.node,
        "link",
        "add",
        &link.host_ifname,
        "type",
        "veth",
        "peer",
        "name",
        "stale1",
    ]);
    ns.in_node(|| dataplane::add(&link))
        .expect("ADD over a stale host veth");
    assert!(
        !ip_ok(&["-n", &ns.node, "link", "show", "stale1"]),
        "the stale pair is still there"
    );
    ns.in_node(|| dataplane::check(&link))
        .expect("CHECK after ADD");
}

#[test]
fn del_twice_succeeds_and_removes_everything() {
    let ns = Namespaces::new();
    let link = ns.workload(&["10.90.0.5/32"]);
    ns.in_node(|| dataplane::add(&link)).expect("ADD");
    for round in 1..=2 {
        ns.in_node(|| dataplane::del(&link.netns, &link.ifname, &link.host_ifname))
            .unwrap_or_else(|e| panic!("DEL #{round}: {e}"));
        assert!(
            !ip_ok(&["-n", &ns.pod, "link", "show", "eth0"]),
            "pod eth0 still there"
        );
        assert!(
            !ip_ok(&["-n", &ns.node, "link", "show", &link.host_ifname]),
            "host veth still there"
        );
        let proto = ENDPOINT_ROUTE_PROTOCOL.to_string();
        assert_eq!(
            ip(&["-n", &ns.node, "route", "show", "proto", &proto]).trim(),
            ""
        );
    }
}

#[test]
fn del_succeeds_when_the_pod_namespace_is_gone() {
    let ns = Namespaces::new();
    let link = ns.workload(&["10.90.0.5/32"]);
    ns.in_node(|| dataplane::add(&link)).expect("ADD");
    ip(&["netns", "del", &ns.pod]);
    ns.in_node(|| dataplane::del(&link.netns, &link.ifname, &link.host_ifname))
        .expect("DEL after the namespace went");
    assert!(
        !ip_ok(&["-n", &ns.node, "link", "show", &link.host_ifname]),
        "host veth still there"
    );
    // And with no namespace path at all (CNI allows an empty CNI_NETNS on DEL).
    ns.in_node(|| dataplane::del(std::path::Path::new(""), &link.ifname, &link.host_ifname))
        .expect("DEL without a namespace");
}

#[test]
fn check_passes_after_add_and_names_a_missing_host_route() {
    let ns = Namespaces::new();
    let link = ns.workload(&["10.90.0.5/32"]);
    ns.in_node(|| dataplane::add(&link)).expect("ADD");
    ns.in_node(|| dataplane::check(&link))
        .expect("CHECK right after ADD");

    ip(&["-n", &ns.node, "route", "del", "10.90.0.5/32"]);
    let found = problems(ns.in_node(|| dataplane::check(&link)));
    assert_eq!(
        found,
        vec![format!(
            "host route 10.90.0.5/32 via {} is missing",
            link.host_ifname
        )]
    );
}

#[test]
fn check_names_a_pod_interface_that_is_down() {
    let ns = Namespaces::new();
    let link = ns.workload(&["10.90.0.5/32"]);
    ns.in_node(|| dataplane::add(&link)).expect("ADD");
    ip(&["-n", &ns.pod, "link", "set", "eth0", "down"]);
    let found = problems(ns.in_node(|| dataplane::check(&link)));
    assert!(
        found.contains(&"pod interface eth0 is down".to_owned()),
        "{found:?}"
    );
    // The kernel drops IPv4 routes through a downed device, and CHECK says so too.
    assert!(
        found.contains(&"pod default route via 169.254.1.1 dev eth0 is missing".to_owned()),
        "{found:?}"
    );
}

#[test]
fn check_names_wrong_addresses_mac_and_protocol() {
    let ns = Namespaces::new();
    let link = ns.workload(&["10.90.0.5/32"]);
    let host = link.host_ifname.clone();
    ns.in_node(|| dataplane::add(&link)).expect("ADD");
    ip(&["-n", &ns.pod, "addr", "add", "10.90.0.99/32", "dev", "eth0"]);
    ip(&[
        "-n",
        &ns.node,
        "link",
        "set",
        &host,
        "address",
        "02:00:00:00:00:01",
    ]);
    ip(&[
        "-n",
        &ns.node,
        "route",
        "replace",
        "10.90.0.5/32",
        "dev",
        &host,
        "scope",
        "link",
        "proto",
        "static",
    ]);
    let expected_in_wrong_family = {
        let mut other = link.clone();
        other.addresses = vec!["10.90.0.6/32".parse().unwrap()];
        other
    };
    let found = problems(ns.in_node(|| dataplane::check(&link)));
    assert_eq!(
        found,
        vec![
            "pod interface eth0 has unexpected address 10.90.0.99/32".to_owned(),
            format!("host interface {host} has MAC 02:00:00:00:00:01, expected ee:ee:ee:ee:ee:ee"),
            format!("host route 10.90.0.5/32 via {host} has protocol static, expected 211"),
        ]
    );
    let found = problems(ns.in_node(|| dataplane::check(&expected_in_wrong_family)));
    assert!(
        found.contains(&"pod interface eth0 lacks address 10.90.0.6/32".to_owned()),
        "{found:?}"
    );
    assert!(
        found.contains(&format!("host route 10.90.0.6/32 via {host} is missing")),
        "{found:?}"
    );
}

#[test]
fn dual_stack_pod_is_reachable_over_both_families() {
    let ns = Namespaces::new();
    let link = ns.workload(&["10.90.0.6/32", "fd00:90::6/128"]);
    let host = link.host_ifname.clone();
    ns.in_node(|| dataplane::add(&link)).expect("ADD");

    let addrs = ip(&[
        "-n", &ns.pod, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    assert!(addrs.contains("inet6 fd00:90::6/128 "), "{addrs}");
    assert!(!addrs.contains("tentative"), "DAD should be off: {addrs}");
    let routes = ip(&["-n", &ns.pod, "-6", "route", "show", "default"]);
    assert!(
        routes.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{routes}"
    );
    let proto = ENDPOINT_ROUTE_PROTOCOL.to_string();
    let host_routes = ip(&["-n", &ns.node, "-6", "route", "show", "proto", &proto]);
    assert!(
        host_routes.contains(&format!("fd00:90::6 dev {host} ")),
        "{host_routes}"
    );
    let host_ll = ip(&["-n", &ns.node, "-6", "-o", "addr", "show", "dev", &host]);
    assert!(
        host_ll.contains("inet6 fe80::ecee:eeff:feee:eeee/64"),
        "{host_ll}"
    );
    for (sysctl, value) in [
        (format!("/proc/sys/net/ipv6/conf/{host}/accept_dad"), "0"),
        (format!("/proc/sys/net/ipv6/conf/{host}/proxy_ndp"), "1"),
        (format!("/proc/sys/net/ipv6/conf/{host}/forwarding"), "1"),
        (format!("/proc/sys/net/ipv6/conf/{host}/accept_ra"), "0"),
    ] {
        assert_eq!(node_sysctl(&ns, &sysctl), value, "{sysctl}");
    }
    ns.in_node(|| dataplane::check(&link))
        .expect("CHECK after a dual-stack ADD");

    assert!(
        ping_from_node(&ns, "fd00:90::6".parse().unwrap()),
        "no echo reply from fd00:90::6"
    );
    assert!(
        ping_from_node(&ns, "10.90.0.6".parse().unwrap()),
        "no echo reply from 10.90.0.6"
    );
}
