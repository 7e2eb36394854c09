//! Endpoint routes: every local workload address has a host route via its interface with
//! Twill's endpoint protocol (211); missing ones are added (a route lost after the CNI plugin
//! added it comes back); on an endpoint's interface, routes to addresses it no longer has are
//! removed, and a route to an endpoint's address on another interface is moved.
//! Routes of other protocols are never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::RouteMessageBuilder;

/// Twill's route protocol for workload endpoint routes.
pub const ENDPOINT_ROUTE_PROTOCOL: u8 = 211;

/// What a sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteChanges {
    /// Routes added.
    pub added: Vec<IpNet>,
    /// Routes removed.
    pub removed: Vec<IpNet>,
}

/// How long an endpoint route may sit on an interface no endpoint has before it goes: longer
/// than any CNI ADD takes between its route and its WorkloadEndpoint, short enough that a
/// leaked interface does not keep an address that now lives elsewhere.
pub const UNMANAGED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Endpoint routes on interfaces no local endpoint has, with when they were first seen.
pub type Unmanaged = BTreeMap<(IpNet, u32), std::time::Instant>;

/// Makes the endpoint routes of this namespace exactly `desired` (address → interface).
/// Interfaces that do not exist (yet) are skipped. A route on an interface no endpoint has
/// is left alone for [`UNMANAGED_GRACE`] (the CNI plugin's, between its route and its
/// WorkloadEndpoint), then removed; `unmanaged` remembers them between calls.
pub async fn sync(
    desired: &BTreeMap<IpNet, String>,
    unmanaged: &mut Unmanaged,
) -> Result<RouteChanges, String> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    let task = tokio::spawn(connection);
    let result = sync_with(&handle, desired, unmanaged).await;
    task.abort();
    result
}

async fn sync_with(
    handle: &rtnetlink::Handle,
    desired: &BTreeMap<IpNet, String>,
    unmanaged: &mut Unmanaged,
) -> Result<RouteChanges, String> {
    let indexes: BTreeMap<String, u32> = crate::interfaces::names(handle)
        .await?
        .into_iter()
        .map(|(index, name)| (name, index))
        .collect();
    let mut present: BTreeMap<IpNet, u32> = BTreeMap::new();
    for message in routes_of(handle, ENDPOINT_ROUTE_PROTOCOL).await? {
        if let Some((net, oif)) = destination(&message) {
            present.insert(net, oif);
        }
    }
    let mut changes = RouteChanges::default();
    let wanted: BTreeSet<(IpNet, u32)> = desired
        .iter()
        .filter_map(|(net, interface)| Some((*net, *indexes.get(interface)?)))
        .collect();
    // A route on an interface no local endpoint has yet is the CNI plugin's, between its
    // route and its WorkloadEndpoint: left alone (removing it would cut a starting pod off).
    // Interfaces that go take their routes with them.
    let managed: BTreeSet<u32> = wanted.iter().map(|(_, oif)| *oif).collect();
    let wanted_nets: BTreeSet<IpNet> = wanted.iter().map(|(net, _)| *net).collect();
    let now = std::time::Instant::now();
    unmanaged.retain(|key, _| present.get(&key.0) == Some(&key.1) && !managed.contains(&key.1));
    for (net, oif) in &present {
        let mut ours = managed.contains(oif) || wanted_nets.contains(net);
        if !ours {
            let since = *unmanaged.entry((*net, *oif)).or_insert(now);
            if now.duration_since(since) >= UNMANAGED_GRACE {
                tracing::warn!(%net, interface = oif, "an endpoint route on an interface no workload has, for {:?}: removed", UNMANAGED_GRACE);
                unmanaged.remove(&(*net, *oif));
                ours = true;
            }
        }
        if ours && !wanted.contains(&(*net, *oif)) {
            let message = build(*net, *oif);
            if handle.route().del(message).execute().await.is_ok() {
                changes.removed.push(*net);
            }
        }
    }
    for (net, oif) in &wanted {
        if present.get(net) != Some(oif) {
            match handle
                .route()
                .add(build(*net, *oif))
                .replace()
                .execute()
                .await
            {
                Ok(()) => changes.added.push(*net),
                Err(err) => return Err(format!("adding the route to {net}: {err}")),
            }
        }
    }
    Ok(changes)
}

fn build(net: IpNet, oif: u32) -> RouteMessage {
    let protocol = RouteProtocol::Other(ENDPOINT_ROUTE_PROTOCOL);
    match net {
        IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .output_interface(oif)
            .scope(RouteScope::Link)
            .protocol(protocol)
            .build(),
        IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .output_interface(oif)
            .protocol(protocol)
            .build(),
    }
}

fn destination(message: &RouteMessage) -> Option<(IpNet, u32)> {
    let mut address = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => address = Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => address = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    Some((
        IpNet::new(address?, message.header.destination_prefix_length).ok()?,
        oif?,
    ))
}

/// Twill's route protocol for the routes twill-node keeps for the cluster: blackholes for
/// this node's IPAM blocks, BGPPeers' `reachableBy` routes.
pub const CLUSTER_ROUTE_PROTOCOL: u8 = 213;
/// Twill's route protocol for routes through an encapsulation device (or, CrossSubnet,
/// straight over the underlay) to other nodes' blocks.
pub const ENCAP_ROUTE_PROTOCOL: u8 = 212;

/// Where an owned route sends packets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Discarded (a block's unallocated addresses).
    Blackhole,
    /// Via a gateway the kernel finds the interface for.
    Gateway(IpAddr),
    /// Via a gateway on this interface, taken as on-link (a tunnel's remote VTEP).
    OnLink(IpAddr, String),
}

/// Makes the routes of `protocol` in the main table exactly `desired`; returns what changed.
/// Routes of other protocols are never touched; a route the kernel refuses is reported and
/// the rest still go in.
pub async fn sync_owned(
    protocol: u8,
    desired: &BTreeMap<IpNet, Target>,
) -> Result<RouteChanges, String> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    let task = tokio::spawn(connection);
    let result = sync_owned_with(&handle, protocol, desired).await;
    task.abort();
    result
}

async fn sync_owned_with(
    handle: &rtnetlink::Handle,
    protocol: u8,
    desired: &BTreeMap<IpNet, Target>,
) -> Result<RouteChanges, String> {
    use rtnetlink::packet_route::route::RouteType;
    let names = crate::interfaces::names(handle).await?;
    let mut present: BTreeMap<IpNet, (Target, RouteMessage)> = BTreeMap::new();
    for message in routes_of(handle, protocol).await? {
        let mut destination = None;
        let mut gateway = None;
        let mut oif = None;
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                    destination = Some(IpAddr::V4(*v4));
                }
                RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                    destination = Some(IpAddr::V6(*v6));
                }
                RouteAttribute::Gateway(RouteAddress::Inet(v4)) => {
                    gateway = Some(IpAddr::V4(*v4));
                }
                RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => {
                    gateway = Some(IpAddr::V6(*v6));
                }
                RouteAttribute::Oif(index) => oif = Some(*index),
                _ => {}
            }
        }
        let Some(net) =
            destination.and_then(|a| IpNet::new(a, message.header.destination_prefix_length).ok())
        else {
            continue;
        };
        let onlink = message
            .header
            .flags
            .contains(rtnetlink::packet_route::route::RouteFlags::Onlink);
        let target = match (message.header.kind, gateway) {
            (RouteType::BlackHole, _) => Target::Blackhole,
            (_, Some(gateway)) if onlink => Target::OnLink(
                gateway,
                oif.and_then(|i| names.get(&i).cloned()).unwrap_or_default(),
            ),
            (_, Some(gateway)) => Target::Gateway(gateway),
            _ => continue,
        };
        present.insert(net, (target, message));
    }
    let indexes: BTreeMap<&str, u32> = names.iter().map(|(i, n)| (n.as_str(), *i)).collect();
    let mut changes = RouteChanges::default();
    for (net, (target, message)) in &present {
        if desired.get(net) != Some(target) {
            let mut message = message.clone();
            message
                .attributes
                .retain(|a| matches!(a, RouteAttribute::Destination(_) | RouteAttribute::Table(_)));
            if handle.route().del(message).execute().await.is_ok() {
                changes.removed.push(*net);
            }
        }
    }
    let mut refused = Vec::new();
    for (net, target) in desired {
        if present.get(net).map(|(t, _)| t) == Some(target) {
            continue;
        }
        let message = match owned_route(*net, target, protocol, &indexes) {
            Ok(message) => message,
            Err(err) => {
                refused.push(err);
                continue;
            }
        };
        match handle.route().add(message).replace().execute().await {
            Ok(()) => changes.added.push(*net),
            Err(err) => refused.push(format!("{net} ({target:?}): {err}")),
        }
    }
    if !refused.is_empty() {
        return Err(format!("routes refused: {}", refused.join("; ")));
    }
    Ok(changes)
}

fn owned_route(
    net: IpNet,
    target: &Target,
    protocol: u8,
    indexes: &BTreeMap<&str, u32>,
) -> Result<RouteMessage, String> {
    use rtnetlink::packet_route::route::RouteType;
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net.addr(), net.prefix_len())
        .map_err(|e| format!("{net}: {e}"))?
        .protocol(RouteProtocol::Other(protocol));
    match target {
        Target::Blackhole => builder = builder.kind(RouteType::BlackHole),
        Target::Gateway(gateway) => {
            builder = builder
                .gateway(*gateway)
                .map_err(|e| format!("{net} via {gateway}: {e}"))?;
        }
        Target::OnLink(gateway, device) => {
            let index = indexes
                .get(device.as_str())
                .ok_or_else(|| format!("{net}: no interface {device}"))?;
            builder = builder
                .gateway(*gateway)
                .map_err(|e| format!("{net} via {gateway}: {e}"))?
                .output_interface(*index)
                .onlink();
        }
    }
    Ok(builder.build())
}

/// The main table's routes of both families with this protocol.
async fn routes_of(handle: &rtnetlink::Handle, protocol: u8) -> Result<Vec<RouteMessage>, String> {
    let mut found = Vec::new();
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let messages: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| format!("listing routes: {e}"))?;
        found.extend(
            messages
                .into_iter()
                .filter(|m| m.header.protocol == RouteProtocol::Other(protocol)),
        );
    }
    Ok(found)
}
