//! Encapsulation inside twill-node: the node's VTEP (an address from a VXLAN pool through
//! IPAM, handle `vxlan-tunnel-addr-NODE`, and a MAC derived from the node's name, both written
//! on its Node resource as Calico does), then [`twill_ipip::plan`] written to the kernel
//! through rtnetlink: the `vxlan.twill` device, FDB and neighbour entries per remote node,
//! and routes to remote blocks with protocol 212. IP-in-IP needs the kernel's ipip module;
//! where it is missing, twill-node says so (status, log, metric) and keeps running.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::Context;
use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan};
use twill_bgpd::calico::Cluster;
use twill_ipip::{Endpoint, Mode, NodeInfo, Plan, PoolInfo, Tunnel, Via};
use twill_shared::client::{Client, WriteMode};
use twill_shared::datastore::Datastore;
use twill_shared::resource::fields::{EncapMode, Ip};
use twill_shared::resource::{Key, Kind, Resource};

use crate::routes::{self, Target};

/// A FelixConfiguration's (vxlanMTU, ipipMTU).
type Mtus = (Option<u32>, Option<u32>);

/// What the last apply found, for the status file and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncapStatus {
    /// Whether a VXLAN device is up.
    pub vxlan: bool,
    /// The MTU pods should use: the smallest of the VXLAN devices'.
    pub mtu: Option<u32>,
    /// Routes to remote blocks written (protocol 212).
    pub routes: usize,
    /// IP-in-IP pools exist but the kernel has no ipip module.
    pub ipip_unavailable: bool,
    /// What could not be done, in words.
    pub warnings: Vec<String>,
}

/// The encapsulation part of the agent.
#[derive(Debug)]
pub struct Encap {
    node: String,
    store: Arc<dyn Datastore>,
    ipam: twill_ipam::runtime::Ipam,
    /// FelixConfiguration's vxlanMTU and ipipMTU, when set (`node.NAME` over `default`).
    mtu_override: Option<u32>,
    ipip_mtu_override: Option<u32>,
    /// The FelixConfigurations they come from, by name.
    felix_configurations: BTreeMap<String, Mtus>,
    warned: BTreeSet<String>,
}

impl Encap {
    /// The encapsulation of `node`.
    pub fn new(node: &str, store: Arc<dyn Datastore>) -> Encap {
        Encap {
            node: node.to_string(),
            ipam: twill_ipam::runtime::Ipam::new(store.clone(), node, None),
            store,
            mtu_override: None,
            ipip_mtu_override: None,
            felix_configurations: BTreeMap::new(),
            warned: BTreeSet::new(),
        }
    }

    /// Takes a FelixConfiguration (`default` or this node's `node.NAME`; `None`: deleted);
    /// returns whether the MTUs it sets changed. Unset MTUs are detected from the underlay.
    pub fn set_felix_configuration(&mut self, name: &str, mtus: Option<Mtus>) -> bool {
        let own = format!("node.{}", self.node);
        if name != "default" && name != own {
            return false;
        }
        match mtus {
            Some(mtus) => self.felix_configurations.insert(name.to_string(), mtus),
            None => self.felix_configurations.remove(name),
        };
        let pick = |field: fn(&Mtus) -> Option<u32>| {
            self.felix_configurations
                .get(&own)
                .and_then(field)
                .or_else(|| self.felix_configurations.get("default").and_then(field))
        };
        let (vxlan, ipip) = (pick(|m| m.0), pick(|m| m.1));
        let changed = (vxlan, ipip) != (self.mtu_override, self.ipip_mtu_override);
        self.mtu_override = vxlan;
        self.ipip_mtu_override = ipip;
        changed
    }

    /// Brings the kernel in line with the cluster's encapsulation.
    pub async fn apply(&mut self, cluster: &Cluster) -> anyhow::Result<EncapStatus> {
        let pools: Vec<PoolInfo> = cluster
            .pools()
            .filter_map(|p| {
                let mode = |m: Option<EncapMode>| match m {
                    Some(EncapMode::Always) => Mode::Always,
                    Some(EncapMode::CrossSubnet) => Mode::CrossSubnet,
                    _ => Mode::Never,
                };
                Some(PoolInfo {
                    cidr: p.spec.cidr.as_ref()?.0.trunc(),
                    vxlan: mode(p.spec.vxlan_mode),
                    ipip: mode(p.spec.ipip_mode),
                })
            })
            .collect();
        let nodes: Vec<NodeInfo> = cluster
            .nodes()
            .map(|(name, node)| {
                let (spec, bgp) = (&node.spec, node.spec.bgp.as_ref());
                let endpoint =
                    |underlay: Option<IpNet>, vtep: Option<Ip>, mac: Option<&str>| Endpoint {
                        underlay,
                        vtep: vtep.map(|a| a.0),
                        vtep_mac: mac.and_then(twill_ipip::parse_mac),
                    };
                NodeInfo {
                    name: name.clone(),
                    v4: endpoint(
                        bgp.and_then(|b| b.ipv4_address.as_ref()).map(|c| c.0),
                        spec.ipv4_vxlan_tunnel_addr,
                        spec.vxlan_tunnel_mac_addr.as_deref(),
                    ),
                    v6: endpoint(
                        bgp.and_then(|b| b.ipv6_address.as_ref()).map(|c| c.0),
                        spec.ipv6_vxlan_tunnel_addr,
                        spec.vxlan_tunnel_mac_addr_v6.as_deref(),
                    ),
                }
            })
            .collect();
        let mut status = EncapStatus::default();
        if let Some(own) = nodes.iter().find(|n| n.name == self.node) {
            for (v6, side) in [(false, &own.v4), (true, &own.v6)] {
                if twill_ipip::needs_vxlan(&pools, v6)
                    && side.underlay.is_some()
                    && (side.vtep.is_none() || side.vtep_mac.is_none())
                {
                    // The Node comes back through the syncer with its VTEP; the plan then
                    // has the device.
                    self.ensure_vtep(&pools, v6).await?;
                }
            }
        }
        // Remote blocks go to their node; addresses a node borrowed from another's block go
        // to the borrower (a host route, more specific than the block's).
        let mut destinations = cluster.all_blocks();
        destinations.extend(cluster.borrowed_addresses());
        let plan = twill_ipip::plan(&self.node, &nodes, &pools, &destinations);
        status.warnings.clone_from(&plan.warnings);
        let ipip_present = ipip_module_present();
        if !plan.ipip_blocks.is_empty() && ipip_present {
            if let Some(own) = nodes.iter().find(|n| n.name == self.node) {
                let has_address = cluster
                    .node(&self.node)
                    .and_then(|n| n.spec.bgp.as_ref())
                    .is_some_and(|b| b.ipv4_ipip_tunnel_addr.is_some());
                if !has_address && own.v4.underlay.is_some() {
                    self.ensure_ipip_address(&pools).await?;
                }
            }
        }
        if !plan.ipip_blocks.is_empty() && !ipip_present {
            status.ipip_unavailable = true;
            status.warnings.push(format!(
                "IP-in-IP pools route {} remote block(s) through tunl0, but this kernel has no ipip module: those blocks are not reachable from this node (use VXLAN, or load ipip)",
                plan.ipip_blocks.len()
            ));
        }
        for warning in &status.warnings {
            if self.warned.insert(warning.clone()) {
                tracing::warn!("{warning}");
            }
        }
        let (connection, handle, _) = rtnetlink::new_connection().context("netlink")?;
        let task = tokio::spawn(connection);
        let mut result = self.write(&handle, &plan, &mut status).await;
        let tunnel_address = cluster
            .node(&self.node)
            .and_then(|n| n.spec.bgp.as_ref())
            .and_then(|b| b.ipv4_ipip_tunnel_addr)
            .and_then(|a| match a.0 {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            });
        let ipip_up = if result.is_ok() && ipip_present && !plan.ipip_blocks.is_empty() {
            let underlay = nodes
                .iter()
                .find(|n| n.name == self.node)
                .and_then(|n| n.v4.underlay)
                .and_then(|u| match u.addr() {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                });
            match write_tunl0(&handle, tunnel_address, underlay, self.ipip_mtu_override).await {
                Ok(()) => true,
                Err(err) => {
                    result = Err(err);
                    false
                }
            }
        } else {
            false
        };
        task.abort();
        result?;
        let mut desired: BTreeMap<IpNet, Target> = plan
            .routes
            .iter()
            .map(|(block, via)| {
                let target = match via {
                    Via::Vxlan(vtep) => Target::OnLink(*vtep, device_name(vtep.is_ipv6()).into()),
                    Via::Underlay(address) => Target::Gateway(*address),
                };
                (*block, target)
            })
            .collect();
        if ipip_up {
            for (block, underlay) in &plan.ipip_blocks {
                desired.insert(
                    *block,
                    Target::OnLink(IpAddr::V4(*underlay), IPIP_DEVICE.into()),
                );
            }
        }
        let changes = routes::sync_owned(routes::ENCAP_ROUTE_PROTOCOL, &desired)
            .await
            .map_err(anyhow::Error::msg)
            .context("encapsulation routes")?;
        if !changes.added.is_empty() || !changes.removed.is_empty() {
            tracing::info!(added = ?changes.added, removed = ?changes.removed, "encapsulation routes");
        }
        status.routes = desired.len();
        Ok(status)
    }

    /// Allocates this node's VTEP address (once: the handle finds an earlier one) and writes
    /// it with the MAC on the Node resource.
    async fn ensure_vtep(&self, pools: &[PoolInfo], v6: bool) -> anyhow::Result<()> {
        let handle = if v6 {
            format!("vxlan-v6-tunnel-addr-{}", self.node)
        } else {
            format!("vxlan-tunnel-addr-{}", self.node)
        };
        let (v4_pools, v6_pools) = (family_pools(pools, false), family_pools(pools, true));
        let address = self
            .tunnel_address(&handle, "vxlanTunnelAddress", v6, v4_pools, v6_pools)
            .await?;
        self.update_node("the VTEP", |node| {
            let mac = Some(twill_ipip::format_mac(&twill_ipip::vtep_mac(&mac_seed(
                &self.node, v6,
            ))));
            if v6 {
                node.spec.ipv6_vxlan_tunnel_addr = Some(Ip(address));
                node.spec.vxlan_tunnel_mac_addr_v6 = mac;
            } else {
                node.spec.ipv4_vxlan_tunnel_addr = Some(Ip(address));
                node.spec.vxlan_tunnel_mac_addr = mac;
            }
        })
        .await?;
        tracing::info!(%address, "VXLAN tunnel address allocated and written on the Node");
        Ok(())
    }

    /// Allocates this node's IP-in-IP tunnel address (handle `ipip-tunnel-addr-NODE`) and
    /// writes it on its Node resource (`bgp.ipv4IPIPTunnelAddr`).
    async fn ensure_ipip_address(&self, pools: &[PoolInfo]) -> anyhow::Result<()> {
        let handle = format!("ipip-tunnel-addr-{}", self.node);
        let v4_pools = pools
            .iter()
            .filter(|p| p.cidr.addr().is_ipv4() && p.ipip != Mode::Never)
            .map(|p| p.cidr.to_string())
            .collect();
        let address = self
            .tunnel_address(&handle, "ipipTunnelAddress", false, v4_pools, Vec::new())
            .await?;
        self.update_node("the IP-in-IP tunnel address", |node| {
            node.spec
                .bgp
                .get_or_insert_with(Default::default)
                .ipv4_ipip_tunnel_addr = Some(Ip(address));
        })
        .await?;
        tracing::info!(%address, "IP-in-IP tunnel address allocated and written on the Node");
        Ok(())
    }

    /// The tunnel address of `handle` (of the family `v6` says): the one IPAM gave it
    /// before (after a restart), else a new one from the given pools, for tunnels.
    async fn tunnel_address(
        &self,
        handle: &str,
        kind: &str,
        v6: bool,
        ipv4_pools: Vec<String>,
        ipv6_pools: Vec<String>,
    ) -> anyhow::Result<IpAddr> {
        let mut addresses = self.ipam.addresses_of_handle(handle).await?;
        if addresses.is_empty() {
            let args = twill_ipam::runtime::AssignArgs {
                handle: handle.to_string(),
                attributes: [
                    ("node".to_string(), self.node.clone()),
                    ("type".to_string(), kind.to_string()),
                ]
                .into(),
                ipv4: !v6,
                ipv6: v6,
                ipv4_pools,
                ipv6_pools,
                tunnel: true,
                ..Default::default()
            };
            addresses = self
                .ipam
                .assign(&args)
                .await
                .with_context(|| format!("allocating the tunnel address {handle}"))?
                .addresses
                .iter()
                .map(IpNet::addr)
                .collect();
        }
        addresses
            .into_iter()
            .find(|a| a.is_ipv6() == v6)
            .with_context(|| format!("IPAM gave no address of the family for {handle}"))
    }

    /// Changes this node's Node resource and writes it back at the revision it was read at
    /// (compare-and-swap: a concurrent change makes this fail, and the next apply retries).
    async fn update_node(
        &self,
        what: &str,
        change: impl FnOnce(
            &mut twill_shared::resource::Object<twill_shared::resource::config::NodeSpec>,
        ),
    ) -> anyhow::Result<()> {
        let client = Client::new(self.store.clone());
        let key = Key {
            kind: Kind::Node,
            namespace: None,
            name: self.node.clone(),
        };
        let Some(Resource::Node(mut node)) = client.get(&key).await? else {
            anyhow::bail!("node {} has no Node resource", self.node);
        };
        change(&mut node);
        client
            .write_all(&[Resource::Node(node)], WriteMode::Replace)
            .await
            .with_context(|| format!("writing {what} on the Node resource"))?;
        Ok(())
    }

    async fn write(
        &self,
        handle: &rtnetlink::Handle,
        plan: &Plan,
        status: &mut EncapStatus,
    ) -> anyhow::Result<()> {
        for v6 in [false, true] {
            let name = device_name(v6);
            let tunnel = plan.tunnel(v6);
            let existing = link_index(handle, name).await?;
            let Some(device) = &tunnel.device else {
                if let Some((index, _)) = existing {
                    tracing::info!("no pool of its family uses VXLAN any more: removing {name}");
                    handle.link().del(index).execute().await?;
                }
                continue;
            };
            let (underlay_index, underlay_mtu) = underlay_link(handle, device.local)
                .await?
                .with_context(|| {
                    format!("no interface has the underlay address {}", device.local)
                })?;
            let overhead = if v6 {
                twill_ipip::VXLAN_OVERHEAD_V6
            } else {
                twill_ipip::VXLAN_OVERHEAD
            };
            let mtu = self
                .mtu_override
                .unwrap_or_else(|| twill_ipip::tunnel_mtu(underlay_mtu, overhead));
            let index = match existing {
                Some((index, info))
                    if info == (twill_ipip::VXLAN_VNI, Some(device.local), underlay_index) =>
                {
                    index
                }
                other => {
                    if let Some((index, _)) = other {
                        tracing::info!("{name} has other parameters: recreating it");
                        handle.link().del(index).execute().await?;
                    }
                    let builder = LinkVxlan::new(name, twill_ipip::VXLAN_VNI)
                        .dev(underlay_index)
                        .port(twill_ipip::VXLAN_PORT)
                        .learning(false);
                    let builder = match device.local {
                        IpAddr::V4(local) => builder.local(local),
                        IpAddr::V6(local) => builder.local6(local),
                    };
                    handle
                        .link()
                        .add(builder.build())
                        .execute()
                        .await
                        .with_context(|| format!("creating {name}"))?;
                    link_index(handle, name)
                        .await?
                        .context("the VXLAN device vanished")?
                        .0
                }
            };
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .mtu(mtu)
                        .address(device.mac.to_vec())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .with_context(|| format!("setting {name} up"))?;
            let host = if v6 { 128 } else { 32 };
            let mut request = handle.address().add(index, device.address, host).replace();
            if v6 {
                // No duplicate address detection on a tunnel address (it would stay tentative).
                request.message_mut().header.flags |=
                    rtnetlink::packet_route::address::AddressHeaderFlags::Nodad;
            }
            request.execute().await.context("the VTEP address")?;
            status.vxlan = true;
            // Pods get the smallest: their packets may take either device.
            status.mtu = Some(status.mtu.map_or(mtu, |m| m.min(mtu)));
            sync_neighbours(handle, index, tunnel).await?;
        }
        Ok(())
    }
}

/// The VXLAN device of a family.
fn device_name(v6: bool) -> &'static str {
    if v6 {
        twill_ipip::VXLAN_DEVICE_V6
    } else {
        twill_ipip::VXLAN_DEVICE
    }
}

/// The pools of a family that use VXLAN, by CIDR.
fn family_pools(pools: &[PoolInfo], v6: bool) -> Vec<String> {
    pools
        .iter()
        .filter(|p| p.cidr.addr().is_ipv6() == v6 && p.vxlan != Mode::Never)
        .map(|p| p.cidr.to_string())
        .collect()
}

/// What a VTEP MAC is derived from: the node's name (IPv4), its name and `/v6` (IPv6).
fn mac_seed(node: &str, v6: bool) -> String {
    if v6 {
        format!("{node}/v6")
    } else {
        node.to_string()
    }
}

/// The IP-in-IP device the ipip module makes in every namespace.
const IPIP_DEVICE: &str = "tunl0";

/// Whether the kernel can make `tunl0` (the module is loaded or built in).
fn ipip_module_present() -> bool {
    std::path::Path::new("/sys/module/ipip").exists()
}

/// `tunl0` up, with the node's IP-in-IP tunnel address (for traffic the node itself sends
/// to remote pods) and the underlay MTU minus 20.
async fn write_tunl0(
    handle: &rtnetlink::Handle,
    address: Option<Ipv4Addr>,
    underlay: Option<Ipv4Addr>,
    mtu_override: Option<u32>,
) -> anyhow::Result<()> {
    let (index, _) = link_index(handle, IPIP_DEVICE)
        .await?
        .context("the ipip module is loaded but this namespace has no tunl0")?;
    let underlay_mtu = match underlay {
        Some(underlay) => underlay_link(handle, IpAddr::V4(underlay))
            .await?
            .map_or(1500, |(_, mtu)| mtu),
        None => 1500,
    };
    let mtu = mtu_override
        .unwrap_or_else(|| twill_ipip::tunnel_mtu(underlay_mtu, twill_ipip::IPIP_OVERHEAD));
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .context("setting tunl0 up")?;
    if let Some(address) = address {
        handle
            .address()
            .add(index, IpAddr::V4(address), 32)
            .replace()
            .execute()
            .await
            .context("the IP-in-IP tunnel address")?;
    }
    Ok(())
}

/// A link's index and, for a VXLAN link, its (VNI, local address, underlay index).
async fn link_index(
    handle: &rtnetlink::Handle,
    name: &str,
) -> anyhow::Result<Option<(u32, (u32, Option<IpAddr>, u32))>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => {
            let mut info = (0, None, 0);
            for attribute in &link.attributes {
                if let LinkAttribute::LinkInfo(infos) = attribute {
                    for item in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(data)) = item {
                            for field in data {
                                match field {
                                    InfoVxlan::Id(id) => info.0 = *id,
                                    InfoVxlan::Local(local) => info.1 = Some(IpAddr::V4(*local)),
                                    InfoVxlan::Local6(local) => info.1 = Some(IpAddr::V6(*local)),
                                    InfoVxlan::Link(index) => info.2 = *index,
                                    _ => {}
                                }
                            }
                        }
                    }
                }
            }
            Ok(Some((link.header.index, info)))
        }
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(err))
            if err.code.map(|c| c.get()) == Some(-libc_enodev()) =>
        {
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

fn libc_enodev() -> i32 {
    19
}

/// The interface holding `address`, and its MTU.
async fn underlay_link(
    handle: &rtnetlink::Handle,
    address: IpAddr,
) -> anyhow::Result<Option<(u32, u32)>> {
    let mut addresses = handle.address().get().set_address_filter(address).execute();
    let Some(message) = addresses.try_next().await? else {
        return Ok(None);
    };
    let index = message.header.index;
    let mut links = handle.link().get().match_index(index).execute();
    let mtu = match links.try_next().await? {
        Some(link) => link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .unwrap_or(1500),
        None => 1500,
    };
    Ok(Some((index, mtu)))
}

/// FDB (MAC → remote underlay address) and neighbour (VTEP → MAC) entries on the device:
/// exactly the plan's.
async fn sync_neighbours(
    handle: &rtnetlink::Handle,
    index: u32,
    tunnel: &Tunnel,
) -> anyhow::Result<()> {
    let mut fdb_present: BTreeMap<Vec<u8>, Option<IpAddr>> = BTreeMap::new();
    let mut neighbours_present: BTreeMap<IpAddr, Vec<u8>> = BTreeMap::new();
    let mut messages = Vec::new();
    for family in [
        AddressFamily::Bridge,
        AddressFamily::Inet,
        AddressFamily::Inet6,
    ] {
        let mut request = handle.neighbours().get().set_address_family(family);
        request.message_mut().header.ifindex = index;
        let found: Vec<_> = request.execute().try_collect().await?;
        messages.extend(found.into_iter().filter(|m| m.header.ifindex == index));
    }
    let destination_of = |message: &rtnetlink::packet_route::neighbour::NeighbourMessage| {
        message.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        })
    };
    let lladdr_of = |message: &rtnetlink::packet_route::neighbour::NeighbourMessage| {
        message.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
            _ => None,
        })
    };
    let permanent = |message: &rtnetlink::packet_route::neighbour::NeighbourMessage| {
        message.header.state == NeighbourState::Permanent
    };
    for message in &messages {
        match (message.header.family, lladdr_of(message)) {
            (AddressFamily::Bridge, Some(mac)) => {
                fdb_present.insert(mac, destination_of(message));
            }
            (AddressFamily::Inet | AddressFamily::Inet6, Some(mac)) if permanent(message) => {
                if let Some(destination) = destination_of(message) {
                    neighbours_present.insert(destination, mac);
                }
            }
            _ => {}
        }
    }
    for (mac, underlay) in &tunnel.fdb {
        if fdb_present.get(mac.as_slice()) != Some(&Some(*underlay)) {
            handle
                .neighbours()
                .add_bridge(index, mac)
                // NTF_SELF: the entry is the VXLAN device's own (not a bridge port's).
                .flags(NeighbourFlags::Own)
                .destination(*underlay)
                .replace()
                .execute()
                .await
                .with_context(|| format!("FDB entry {}", twill_ipip::format_mac(mac)))?;
        }
    }
    for (vtep, mac) in &tunnel.neighbours {
        if neighbours_present.get(vtep) != Some(&mac.to_vec()) {
            handle
                .neighbours()
                .add(index, *vtep)
                .link_layer_address(mac)
                .replace()
                .execute()
                .await
                .with_context(|| format!("neighbour entry {vtep}"))?;
        }
    }
    // Entries of nodes that left.
    for message in messages {
        if !permanent(&message) {
            continue;
        }
        let stale = match message.header.family {
            AddressFamily::Bridge => lladdr_of(&message).is_some_and(|mac| {
                !tunnel
                    .fdb
                    .keys()
                    .any(|wanted| wanted.as_slice() == mac.as_slice())
            }),
            AddressFamily::Inet | AddressFamily::Inet6 => destination_of(&message)
                .is_some_and(|destination| !tunnel.neighbours.contains_key(&destination)),
            _ => false,
        };
        if stale {
            let _ = handle.neighbours().del(message).execute().await;
        }
    }
    Ok(())
}
