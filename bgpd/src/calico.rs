//! Calico's BGP model, compiled to twill-bgpd's configuration: what calico-node's confd does
//! for BIRD, as a pure function of the datastore's resources.
//!
//! [`Cluster`] keeps the resources that matter (Nodes, BGPConfigurations, BGPPeers, IPPools,
//! BlockAffinities); [`Cluster::render`] gives, for one node, the TOML twill-bgpd reads (the
//! same file a user can read, like confd's `bird.cfg`), the blackhole routes for the node's
//! blocks, the static routes BGPPeers' `reachableBy` asks for, and warnings for what it could
//! not honour. The rules follow Calico's `bgp_processor.go`:
//!
//! - the node-to-node mesh: every other node with an address of the family, unless either
//!   side is a route reflector; a node is passive towards peers whose address *string*
//!   compares greater than its own, exactly Calico's rule, so a mixed Calico/Twill cluster
//!   has one active side per pair;
//! - BGPPeers for this node (`node`, `nodeSelector`, or every node), to `peerIP` or to the
//!   nodes `peerSelector` matches; only global peerings towards another node take the passive
//!   rule; route reflection is derived from `routeReflectorClusterID`;
//! - each affine block originated once, with a blackhole so unallocated addresses never leak;
//!   addresses borrowed from other nodes' blocks as host routes; LOCAL_PREF 2147482623
//!   (Calico ≥ 3.32: 2147483647 − the normal route priority 1024) and communities from
//!   `prefixAdvertisements`;
//! - export: only routes inside a pool whose BGP export is not disabled (a disabled pool
//!   still is: `disabled` only stops allocation); import:
//!   everything, except that routes to encapsulated pools are not written to the kernel (the
//!   encapsulation writes those, through its device);
//! - Services: the `serviceClusterIPs`, `serviceExternalIPs` and `serviceLoadBalancerIPs`
//!   ranges from every node, and single service addresses as Calico's route generator
//!   chooses them from Services and EndpointSlices (`externalTrafficPolicy: Local`: from the
//!   nodes with a ready endpoint).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use toml::{Table, Value};
use twill_shared::resource::bgp::{
    BgpConfigurationSpec, BgpFilterSpec, BgpPassword, BgpPeerSpec, SecretKeyRef,
};
use twill_shared::resource::config::NodeSpec;
use twill_shared::resource::fields::EncapMode;
use twill_shared::resource::ipam::{BlockAffinitySpec, IpPoolSpec};
use twill_shared::resource::kube::{EndpointSliceSpec, ServiceSpec, SERVICE_NAME_LABEL};
use twill_shared::resource::{Object, Resource};

/// Calico's default AS number.
pub const DEFAULT_AS: u32 = 64512;
/// LOCAL_PREF of a normal route: 2147483647 − 1024 (Calico's route priority encoding).
pub const NORMAL_LOCAL_PREF: u32 = 2_147_482_623;
/// Kernel metric of a normal route (2147483647 − [`NORMAL_LOCAL_PREF`]).
pub const NORMAL_METRIC: u32 = 1024;
/// The name of the export filter the rendering defines.
const EXPORT_FILTER: &str = "calico_export";

/// The resources BGP depends on, by name.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    nodes: BTreeMap<String, Object<NodeSpec>>,
    configurations: BTreeMap<String, Object<BgpConfigurationSpec>>,
    peers: BTreeMap<String, Object<BgpPeerSpec>>,
    pools: BTreeMap<String, Object<IpPoolSpec>>,
    affinities: BTreeMap<String, Object<BlockAffinitySpec>>,
    filters: BTreeMap<String, Object<BgpFilterSpec>>,
    /// Workload endpoints (by `namespace/name`) with addresses: the node each is on, and
    /// the addresses (for [`Cluster::borrowed_addresses`]).
    workloads: BTreeMap<String, (String, Vec<IpNet>)>,
    /// Kubernetes Services, by `namespace/name`.
    services: BTreeMap<String, Object<ServiceSpec>>,
    /// Kubernetes EndpointSlices, by `namespace/name`.
    slices: BTreeMap<String, Object<EndpointSliceSpec>>,
}

/// What [`Cluster::render`] gives for one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    /// twill-bgpd's configuration; `None` when the node speaks no BGP (no Node resource or
    /// no BGP address).
    pub config: Option<String>,
    /// Blocks affine to the node: a blackhole route each.
    pub blackholes: BTreeSet<IpNet>,
    /// `reachableBy`: a host route to a peer via a gateway.
    pub static_routes: BTreeSet<(IpNet, IpAddr)>,
    /// What could not be honoured, in words.
    pub warnings: Vec<String>,
}

/// Something outside the resources the rendering needs.
pub trait Secrets {
    /// The value of a Secret's key (TCP-MD5 passwords), if it can be read.
    fn get(&self, name: &str, key: &str) -> Option<String>;
}

impl Secrets for BTreeMap<(String, String), String> {
    fn get(&self, name: &str, key: &str) -> Option<String> {
        BTreeMap::get(self, &(name.to_string(), key.to_string())).cloned()
    }
}

/// A peering's far end: address, port, AS, `Some(its cluster ID)` when it is one of our
/// nodes, and our address of its family.
type Target = (IpAddr, u16, u32, Option<Option<IpAddr>>, Option<IpAddr>);

/// One BGP session's settings, before it becomes a `[[neighbor]]` table.
#[derive(Debug, Clone)]
struct Session {
    address: IpAddr,
    port: u16,
    remote_as: u32,
    passive: bool,
    password: Option<crate::config::Password>,
    source: Option<IpAddr>,
    restart_time: Option<u64>,
    keepalive: Option<u64>,
    allowas_in: Option<u32>,
    local_as: Option<u32>,
    ttl_security: Option<u8>,
    next_hop_self: bool,
    next_hop_keep: bool,
    rr_client: bool,
    /// Calico's peer type: `Mesh`, `Global` or `Node`.
    kind: &'static str,
    /// The BGPFilters the peering names, in order.
    filters: Vec<String>,
    /// eBGP to a router on our own underlay subnet: other nodes' routes go with their own
    /// next hops (as BIRD does on a shared interface), not through us.
    shared_subnet: Option<IpNet>,
}

impl Cluster {
    /// Takes a changed resource (`Some`) or a deleted one (`None`, by kind and name:
    /// `namespace/name` for namespaced kinds); returns whether it is one BGP depends on.
    pub fn update(
        &mut self,
        kind: twill_shared::resource::Kind,
        name: &str,
        resource: Option<Resource>,
    ) -> bool {
        use twill_shared::resource::Kind;
        fn put<S>(map: &mut BTreeMap<String, Object<S>>, name: &str, object: Option<Object<S>>) {
            match object {
                Some(object) => map.insert(name.to_string(), object),
                None => map.remove(name),
            };
        }
        match (kind, resource) {
            (Kind::Node, Some(Resource::Node(o))) => put(&mut self.nodes, name, Some(o)),
            (Kind::Node, None) => put(&mut self.nodes, name, None),
            (Kind::BgpConfiguration, Some(Resource::BgpConfiguration(o))) => {
                put(&mut self.configurations, name, Some(o));
            }
            (Kind::BgpConfiguration, None) => put(&mut self.configurations, name, None),
            (Kind::BgpPeer, Some(Resource::BgpPeer(o))) => put(&mut self.peers, name, Some(o)),
            (Kind::BgpPeer, None) => put(&mut self.peers, name, None),
            (Kind::IpPool, Some(Resource::IpPool(o))) => put(&mut self.pools, name, Some(o)),
            (Kind::IpPool, None) => put(&mut self.pools, name, None),
            (Kind::BlockAffinity, Some(Resource::BlockAffinity(o))) => {
                put(&mut self.affinities, name, Some(o));
            }
            (Kind::BlockAffinity, None) => put(&mut self.affinities, name, None),
            (Kind::BgpFilter, Some(Resource::BgpFilter(o))) => {
                put(&mut self.filters, name, Some(o))
            }
            (Kind::BgpFilter, None) => put(&mut self.filters, name, None),
            (Kind::Service, Some(Resource::Service(o))) => put(&mut self.services, name, Some(o)),
            (Kind::Service, None) => put(&mut self.services, name, None),
            (Kind::EndpointSlice, Some(Resource::EndpointSlice(o))) => {
                put(&mut self.slices, name, Some(o));
            }
            (Kind::EndpointSlice, None) => put(&mut self.slices, name, None),
            _ => return false,
        }
        true
    }

    /// Whether resources of `kind` matter here.
    pub fn wants(kind: twill_shared::resource::Kind) -> bool {
        use twill_shared::resource::Kind;
        matches!(
            kind,
            Kind::Node
                | Kind::BgpConfiguration
                | Kind::BgpPeer
                | Kind::BgpFilter
                | Kind::IpPool
                | Kind::BlockAffinity
                | Kind::Service
                | Kind::EndpointSlice
        )
    }

    /// The Node resource of `name`.
    pub fn node(&self, name: &str) -> Option<&Object<NodeSpec>> {
        self.nodes.get(name)
    }

    /// Every Node resource, by name.
    pub fn nodes(&self) -> impl Iterator<Item = (&String, &Object<NodeSpec>)> {
        self.nodes.iter()
    }

    /// Every block with the node it is affine to (as [`Cluster::blocks_of`] counts them).
    pub fn all_blocks(&self) -> Vec<(IpNet, String)> {
        let owners: BTreeSet<&String> = self
            .affinities
            .values()
            .filter_map(|a| a.spec.node.as_ref())
            .collect();
        owners
            .into_iter()
            .flat_map(|node| {
                self.blocks_of(node)
                    .into_iter()
                    .map(move |block| (block, node.clone()))
            })
            .collect()
    }

    /// The IP pools.
    pub fn pools(&self) -> impl Iterator<Item = &Object<IpPoolSpec>> {
        self.pools.values()
    }

    /// Takes a workload endpoint (`id`: `namespace/name`; `Some((node, addresses))`, or
    /// `None` when it is gone); returns whether its borrowed addresses, as the pools and
    /// affinities known now say, changed. Every endpoint is kept: the syncer may deliver
    /// endpoints before the pools and affinities that decide (a start lists kinds in order),
    /// and those mark the cluster changed themselves when they come.
    pub fn update_workload(&mut self, id: &str, workload: Option<(&str, &[IpNet])>) -> bool {
        let entry = workload
            .filter(|(_, nets)| !nets.is_empty())
            .map(|(node, nets)| (node.to_string(), nets.iter().map(IpNet::trunc).collect()));
        let old = match entry {
            Some(entry) => self.workloads.insert(id.to_string(), entry),
            None => self.workloads.remove(id),
        };
        let mut blocks = BTreeMap::new();
        let mut borrowed = |workload: Option<&(String, Vec<IpNet>)>| -> Vec<(IpNet, String)> {
            workload.map_or_else(Vec::new, |(node, nets)| {
                self.borrowed_of(node, nets, &mut blocks)
                    .into_iter()
                    .map(|net| (net, node.clone()))
                    .collect()
            })
        };
        borrowed(old.as_ref()) != borrowed(self.workloads.get(id))
    }

    /// The addresses of `nets` in some pool and outside the blocks affine to `node`
    /// (`blocks`: a cache of [`Cluster::blocks_of`]).
    fn borrowed_of(
        &self,
        node: &str,
        nets: &[IpNet],
        blocks: &mut BTreeMap<String, BTreeSet<IpNet>>,
    ) -> Vec<IpNet> {
        let in_pool = |net: &IpNet| {
            self.pools()
                .any(|p| p.spec.cidr.as_ref().is_some_and(|c| c.0.contains(net)))
        };
        if !nets.iter().any(in_pool) {
            return Vec::new();
        }
        let own = blocks
            .entry(node.to_string())
            .or_insert_with(|| self.blocks_of(node));
        nets.iter()
            .filter(|net| in_pool(net) && !own.iter().any(|b| b.contains(*net)))
            .copied()
            .collect()
    }

    /// Every address a workload holds in a pool but outside the blocks affine to its node,
    /// with that node (Calico's borrowed addresses: routed to the borrower, not to the block's
    /// node), as the pools and affinities are now.
    pub fn borrowed_addresses(&self) -> Vec<(IpNet, String)> {
        let mut blocks = BTreeMap::new();
        let mut found = Vec::new();
        for (node, nets) in self.workloads.values() {
            found.extend(
                self.borrowed_of(node, nets, &mut blocks)
                    .into_iter()
                    .map(|net| (net, node.clone())),
            );
        }
        found
    }

    /// The blocks affine to `node` (confirmed, or with no state: Calico's implicit
    /// confirmation), with the pool each is in.
    pub fn blocks_of(&self, node: &str) -> BTreeSet<IpNet> {
        self.affinities
            .values()
            .filter(|a| a.spec.node.as_deref() == Some(node))
            .filter(|a| a.spec.deleted != Some(true))
            .filter(|a| matches!(a.spec.state.as_deref(), None | Some("") | Some("confirmed")))
            .filter_map(|a| a.spec.cidr.as_ref().map(|c| c.0.trunc()))
            .collect()
    }

    /// The single service addresses (/32, /128) `node` advertises, as Calico's route
    /// generator chooses them: a Service of type ClusterIP, NodePort or LoadBalancer with a
    /// cluster address; its cluster addresses when `serviceClusterIPs` names any range, its
    /// external addresses inside `serviceExternalIPs`, its load balancer's addresses inside
    /// `serviceLoadBalancerIPs`. With `externalTrafficPolicy: Local`, from the nodes with a
    /// ready endpoint of the address's family (traffic arrives only where it is served). With
    /// `Cluster`, only when an external or load-balancer address is a single-address entry of
    /// those lists (the range covers the rest), and then from every node, while the Service
    /// has a ready endpoint anywhere (Calico: while its Endpoints object exists). An unset
    /// policy (a ClusterIP Service's) is neither: the ranges alone cover it, as in Calico.
    fn service_routes(&self, node: &str, global: &BgpConfigurationSpec) -> BTreeSet<IpNet> {
        let cidrs = |list: &Option<Vec<twill_shared::resource::bgp::ServiceCidr>>| -> Vec<IpNet> {
            list.iter()
                .flatten()
                .filter_map(|s| s.cidr.as_ref().map(|c| c.0.trunc()))
                .collect()
        };
        let cluster_ranges = cidrs(&global.service_cluster_ips);
        let external_ranges = cidrs(&global.service_external_ips);
        let balancer_ranges = cidrs(&global.service_load_balancer_ips);
        let within =
            |ranges: &[IpNet], address: &IpAddr| ranges.iter().any(|r| r.contains(address));
        let single = |ranges: &[IpNet], address: &IpAddr| {
            ranges
                .iter()
                .any(|r| r.prefix_len() == r.max_prefix_len() && r.contains(address))
        };
        let parse = |text: &str| text.trim().parse::<IpAddr>().ok();
        let mut routes = BTreeSet::new();
        for (id, service) in &self.services {
            let spec = &service.spec;
            if !matches!(
                spec.type_.as_deref().unwrap_or("ClusterIP"),
                "ClusterIP" | "NodePort" | "LoadBalancer"
            ) {
                continue;
            }
            let cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
                Some(list) if !list.is_empty() => list.iter().filter_map(|a| parse(a)).collect(),
                _ => spec
                    .cluster_ip
                    .as_deref()
                    .and_then(parse)
                    .into_iter()
                    .collect(),
            };
            if cluster_ips.is_empty() {
                continue; // headless (None) or not yet given an address
            }
            let external: Vec<IpAddr> = spec
                .external_ips
                .iter()
                .flatten()
                .filter_map(|a| parse(a))
                .collect();
            let ingress: Vec<IpAddr> = spec
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref().and_then(parse))
                .collect();
            let mut candidates: Vec<IpAddr> = Vec::new();
            if !cluster_ranges.is_empty() {
                candidates.extend(&cluster_ips);
            }
            candidates.extend(external.iter().filter(|a| within(&external_ranges, a)));
            candidates.extend(ingress.iter().filter(|a| within(&balancer_ranges, a)));
            // Ready endpoints of this Service: (node, is IPv6).
            let (namespace, name) = id.split_once('/').unwrap_or(("", id));
            let endpoints: Vec<(Option<&str>, bool)> = self
                .slices
                .values()
                .filter(|slice| {
                    slice.metadata.namespace.as_deref() == Some(namespace)
                        && slice
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(SERVICE_NAME_LABEL))
                            .map(String::as_str)
                            == Some(name)
                })
                .flat_map(|slice| slice.spec.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                .flat_map(|e| {
                    e.addresses
                        .iter()
                        .filter_map(|a| parse(a))
                        .map(move |a| (e.node_name.as_deref(), a.is_ipv6()))
                })
                .collect();
            // Calico's rules name the policy: an unset one (a ClusterIP Service's) is
            // neither, and only the ranges cover such a Service.
            let policy = spec.external_traffic_policy.as_deref();
            if policy == Some("Local") {
                for address in candidates {
                    if endpoints.contains(&(Some(node), address.is_ipv6())) {
                        routes.insert(IpNet::from(address));
                    }
                }
            } else if policy == Some("Cluster") {
                let balancer_single = spec.type_.as_deref() == Some("LoadBalancer")
                    && spec
                        .load_balancer_ip
                        .as_deref()
                        .and_then(parse)
                        .iter()
                        .chain(&ingress)
                        .any(|a| single(&balancer_ranges, a));
                let external_single = external.iter().any(|a| single(&external_ranges, a));
                if (balancer_single || external_single) && !endpoints.is_empty() {
                    routes.extend(candidates.into_iter().map(IpNet::from));
                }
            }
        }
        routes
    }

    fn configuration(&self, name: &str) -> Option<&BgpConfigurationSpec> {
        self.configurations.get(name).map(|o| &o.spec)
    }

    /// The AS number of `node`: its own, else the default BGPConfiguration's, else 64512.
    pub fn as_of(&self, node: &Object<NodeSpec>) -> u32 {
        node.spec
            .bgp
            .as_ref()
            .and_then(|b| b.as_number)
            .or_else(|| self.configuration("default").and_then(|c| c.as_number))
            .map_or(DEFAULT_AS, |a| a.0)
    }

    /// The BGP port `node` listens on: its `node.<name>` BGPConfiguration's, else the
    /// default's, else 179.
    fn port_of(&self, node: &str) -> u16 {
        self.configuration(&format!("node.{node}"))
            .and_then(|c| c.listen_port)
            .or_else(|| self.configuration("default").and_then(|c| c.listen_port))
            .unwrap_or(179)
    }

    /// Renders `node`'s configuration. `borrowed`: addresses of this node's workloads outside
    /// its own blocks (advertised as host routes).
    pub fn render(&self, node_name: &str, borrowed: &[IpNet], secrets: &dyn Secrets) -> Rendered {
        let own_blocks = self.blocks_of(node_name);
        // A host-sized block (blockSize 32 or 128) is its one workload's route: no blackhole
        // under it (Calico skips them too).
        let mut rendered = Rendered {
            blackholes: own_blocks
                .iter()
                .filter(|b| b.prefix_len() < b.max_prefix_len())
                .copied()
                .collect(),
            ..Rendered::default()
        };
        let Some(node) = self.nodes.get(node_name) else {
            return rendered;
        };
        let Some(bgp) = node.spec.bgp.as_ref() else {
            return rendered;
        };
        let own_nets: Vec<IpNet> = [bgp.ipv4_address.as_ref(), bgp.ipv6_address.as_ref()]
            .into_iter()
            .flatten()
            .map(|c| c.0)
            .collect();
        let own_v4 = bgp.ipv4_address.as_ref().map(|c| c.0.addr());
        let own_v6 = bgp.ipv6_address.as_ref().map(|c| c.0.addr());
        if own_v4.is_none() && own_v6.is_none() {
            return rendered;
        }
        let global = self.configuration("default").cloned().unwrap_or_default();
        let local = self.configuration(&format!("node.{node_name}"));
        let local_as = self.as_of(node);
        let own_cluster = bgp.route_reflector_cluster_id.map(|c| c.0);
        let port = self.port_of(node_name);
        let router_id = match own_v4 {
            Some(IpAddr::V4(v4)) => v4,
            _ => hashed_router_id(node_name),
        };

        let mut sessions: Vec<Session> = Vec::new();
        // The node-to-node mesh.
        if global.node_to_node_mesh_enabled != Some(false) && own_cluster.is_none() {
            let password = global.node_mesh_password.as_ref().and_then(|p| {
                password(
                    p,
                    secrets,
                    "BGPConfiguration default nodeMeshPassword",
                    &mut rendered.warnings,
                )
            });
            let restart = global.node_mesh_max_restart_time.as_ref().map(seconds);
            for (name, other) in &self.nodes {
                if name == node_name {
                    continue;
                }
                let Some(other_bgp) = other.spec.bgp.as_ref() else {
                    continue;
                };
                if other_bgp.route_reflector_cluster_id.is_some() {
                    continue;
                }
                for (own, theirs) in [
                    (own_v4, other_bgp.ipv4_address.as_ref().map(|c| c.0.addr())),
                    (own_v6, other_bgp.ipv6_address.as_ref().map(|c| c.0.addr())),
                ] {
                    let (Some(own), Some(theirs)) = (own, theirs) else {
                        continue;
                    };
                    sessions.push(Session {
                        address: theirs,
                        port: self.port_of(name),
                        remote_as: self.as_of(other),
                        passive: theirs.to_string() > own.to_string(),
                        password: password.clone(),
                        source: Some(own),
                        restart_time: restart,
                        keepalive: None,
                        allowas_in: None,
                        local_as: None,
                        ttl_security: None,
                        next_hop_self: false,
                        next_hop_keep: false,
                        rr_client: false,
                        kind: "Mesh",
                        filters: Vec::new(),
                        shared_subnet: None,
                    });
                }
            }
        }
        // BGPPeers: global ones first (Calico's order), then node-specific ones.
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let mut peers: Vec<(&String, &Object<BgpPeerSpec>)> = self.peers.iter().collect();
        peers.sort_by_key(|(name, p)| {
            (
                p.spec.node.is_some() || p.spec.node_selector.is_some(),
                *name,
            )
        });
        for (peer_name, peer) in peers {
            let spec = &peer.spec;
            let applies = match (&spec.node, &spec.node_selector) {
                (Some(only), _) => only == node_name,
                (None, Some(selector)) => selector.selector().matches(&labels),
                (None, None) => true,
            };
            if !applies {
                continue;
            }
            let global_peering = spec.node.is_none() && spec.node_selector.is_none();
            let what = format!("BGPPeer {peer_name}");
            let password = spec
                .password
                .as_ref()
                .and_then(|p| password(p, secrets, &what, &mut rendered.warnings));
            let mut targets: Vec<Target> = Vec::new();
            if let Some(text) = &spec.peer_ip {
                let Some((address, peer_port)) = peer_address(text) else {
                    rendered.warnings.push(format!(
                        "{what}: peerIP {text:?} is not IP, IP:port or [IPv6]:port"
                    ));
                    continue;
                };
                let Some(remote_as) = spec.as_number else {
                    rendered
                        .warnings
                        .push(format!("{what}: peerIP without asNumber"));
                    continue;
                };
                // Is it another node of ours? (Its cluster ID decides reflection.)
                let other = self.nodes.iter().find(|(n, o)| {
                    n.as_str() != node_name
                        && o.spec.bgp.as_ref().is_some_and(|b| {
                            [b.ipv4_address.as_ref(), b.ipv6_address.as_ref()]
                                .into_iter()
                                .flatten()
                                .any(|c| c.0.addr() == address)
                        })
                });
                let own = if address.is_ipv4() { own_v4 } else { own_v6 };
                targets.push((
                    address,
                    peer_port.unwrap_or(179),
                    remote_as.0,
                    other.map(|(_, o)| {
                        o.spec
                            .bgp
                            .as_ref()
                            .and_then(|b| b.route_reflector_cluster_id.map(|c| c.0))
                    }),
                    own,
                ));
            }
            if let Some(selector) = &spec.peer_selector {
                for (name, other) in &self.nodes {
                    if name == node_name {
                        continue;
                    }
                    let other_labels = other.metadata.labels.clone().unwrap_or_default();
                    if !selector.selector().matches(&other_labels) {
                        continue;
                    }
                    let Some(other_bgp) = other.spec.bgp.as_ref() else {
                        continue;
                    };
                    for (own, theirs) in [
                        (own_v4, other_bgp.ipv4_address.as_ref().map(|c| c.0.addr())),
                        (own_v6, other_bgp.ipv6_address.as_ref().map(|c| c.0.addr())),
                    ] {
                        if let (Some(own), Some(theirs)) = (own, theirs) {
                            targets.push((
                                theirs,
                                self.port_of(name),
                                self.as_of(other),
                                Some(other_bgp.route_reflector_cluster_id.map(|c| c.0)),
                                Some(own),
                            ));
                        }
                    }
                }
            }
            for (address, peer_port, remote_as, other_node, own) in targets {
                let Some(own) = own else {
                    rendered.warnings.push(format!(
                        "{what}: this node has no {} BGP address to peer with {address}",
                        if address.is_ipv4() { "IPv4" } else { "IPv6" }
                    ));
                    continue;
                };
                if address == own {
                    continue;
                }
                let ibgp = remote_as == local_as;
                let rr_client = match (own_cluster, &other_node) {
                    (Some(own), Some(Some(theirs))) => ibgp && *theirs != own,
                    (Some(_), _) => ibgp,
                    (None, _) => false,
                };
                let passive =
                    global_peering && other_node.is_some() && address.to_string() > own.to_string();
                let local_as_number = spec.local_as_number.map(|a| a.0).filter(|a| *a != local_as);
                let next_hop_self = matches!(spec.next_hop_mode.as_deref(), Some("Self"));
                // Keep (or the older keepOriginalNextHop): paths go with their own next hop,
                // also to an external peer.
                let next_hop_keep = matches!(spec.next_hop_mode.as_deref(), Some("Keep"))
                    || spec.keep_original_next_hop == Some(true);
                if spec.local_workload_selector.is_some() {
                    rendered.warnings.push(format!(
                        "{what}: localWorkloadSelector is not supported yet"
                    ));
                    continue;
                }
                if let Some(gateway) = spec.reachable_by.as_deref() {
                    match gateway.parse::<IpAddr>() {
                        Ok(gateway) => {
                            rendered
                                .static_routes
                                .insert((IpNet::from(address), gateway));
                        }
                        Err(_) => rendered
                            .warnings
                            .push(format!("{what}: reachableBy {gateway:?} is not an address")),
                    }
                }
                sessions.push(Session {
                    address,
                    port: peer_port,
                    remote_as,
                    passive,
                    password: password.clone(),
                    source: (spec.source_address.as_deref() != Some("None")).then_some(own),
                    restart_time: spec.max_restart_time.as_ref().map(seconds),
                    keepalive: spec.keepalive_time.as_ref().map(seconds),
                    allowas_in: spec.num_allowed_local_as_numbers,
                    local_as: local_as_number,
                    ttl_security: spec.ttl_security.filter(|t| *t > 0),
                    next_hop_self,
                    next_hop_keep,
                    rr_client,
                    kind: if global_peering { "Global" } else { "Node" },
                    filters: spec.filters.clone().unwrap_or_default(),
                    shared_subnet: own_nets
                        .iter()
                        .find(|net| !ibgp && net.contains(&address))
                        .map(IpNet::trunc),
                });
            }
        }

        // The configuration file.
        let mut file = Table::new();
        let mut global_table = Table::new();
        global_table.insert("asn".into(), Value::Integer(local_as.into()));
        global_table.insert("router_id".into(), Value::String(router_id.to_string()));
        let bind_node_ip = global.bind_mode.as_deref() == Some("NodeIP");
        let mut listen = Vec::new();
        for own in [own_v4, own_v6].into_iter().flatten() {
            let address = if bind_node_ip {
                own
            } else if own.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            };
            listen.push(Value::String(SocketAddr::new(address, port).to_string()));
        }
        global_table.insert("listen".into(), Value::Array(listen));
        if let Some(cluster) = own_cluster {
            if cluster.is_ipv4() {
                global_table.insert("cluster_id".into(), Value::String(cluster.to_string()));
            } else {
                rendered.warnings.push(format!(
                    "Node {node_name}: routeReflectorClusterID {cluster} is not an IPv4 address; the router ID is used"
                ));
            }
        }
        // ECMP: several nodes may announce the same (borrowed) prefix.
        global_table.insert("max_paths".into(), Value::Integer(16));
        // Calico's export filter is the policy towards eBGP peers too.
        global_table.insert("ebgp_requires_policy".into(), Value::Boolean(true));
        file.insert("global".into(), Value::Table(global_table));

        let mut seen = BTreeSet::new();
        let mut neighbors = Vec::new();
        let mut filtered_sessions = Vec::new();
        for session in sessions {
            if !seen.insert(session.address) {
                rendered.warnings.push(format!(
                    "{} {}: already a neighbour through an earlier peering; skipped",
                    session.kind, session.address
                ));
                continue;
            }
            neighbors.push(Value::Table(neighbor_table(&session, local_as)));
            if !session.filters.is_empty() {
                filtered_sessions.push(session);
            }
        }
        file.insert("neighbor".into(), Value::Array(neighbors));

        // What is originated: each block once, borrowed addresses as host routes.
        let advertisements = local
            .and_then(|c| c.prefix_advertisements.clone())
            .or_else(|| global.prefix_advertisements.clone())
            .unwrap_or_default();
        let named: BTreeMap<String, String> = global
            .communities
            .iter()
            .flatten()
            .filter_map(|c| Some((c.name.clone()?, c.value.clone()?)))
            .collect();
        // Service ranges (Calico's static routes): advertised from every node, and routes
        // learned inside them never written to the kernel. A node labelled
        // exclude-from-external-load-balancers keeps the exclusion but advertises no
        // external or load-balancer range, and no single service address: those (/32,
        // /128) go per Service, from the nodes its endpoints and traffic policy choose
        // (`service_routes`).
        let excluded_from_lb =
            labels.contains_key("node.kubernetes.io/exclude-from-external-load-balancers");
        let mut service_ranges: BTreeSet<IpNet> = BTreeSet::new();
        let mut service_advertised: BTreeSet<IpNet> = BTreeSet::new();
        for (list, external) in [
            (&global.service_cluster_ips, false),
            (&global.service_external_ips, true),
            (&global.service_load_balancer_ips, true),
        ] {
            for cidr in list.iter().flatten().filter_map(|s| s.cidr.as_ref()) {
                let net = cidr.0.trunc();
                service_ranges.insert(net);
                if net.prefix_len() < net.max_prefix_len() && !(external && excluded_from_lb) {
                    service_advertised.insert(net);
                }
            }
        }
        if !excluded_from_lb {
            service_advertised.extend(self.service_routes(node_name, &global));
        }
        let mut originate = Vec::new();
        let blocks = own_blocks;
        for prefix in blocks
            .iter()
            .chain(
                borrowed
                    .iter()
                    .filter(|b| !blocks.iter().any(|block| block.contains(*b))),
            )
            .chain(service_advertised.iter())
        {
            let mut entry = Table::new();
            entry.insert("prefix".into(), Value::String(prefix.to_string()));
            entry.insert(
                "local_pref".into(),
                Value::Integer(NORMAL_LOCAL_PREF.into()),
            );
            let mut communities = Vec::new();
            for advertisement in &advertisements {
                let Some(cidr) = advertisement.cidr.as_ref() else {
                    continue;
                };
                if !cidr.0.contains(prefix) {
                    continue;
                }
                for community in advertisement.communities.iter().flatten() {
                    let value = named.get(community).unwrap_or(community);
                    if !communities.contains(value) {
                        communities.push(value.clone());
                    }
                }
            }
            if !communities.is_empty() {
                entry.insert(
                    "communities".into(),
                    Value::Array(communities.into_iter().map(Value::String).collect()),
                );
            }
            originate.push(Value::Table(entry));
        }
        file.insert("originate".into(), Value::Array(originate));

        // Export: only what lies in a pool that exports; import: everything.
        let mut rules = Vec::new();
        let mut encapsulated = Vec::new();
        for pool in self.pools.values() {
            let Some(cidr) = pool.spec.cidr.as_ref().map(|c| c.0.trunc()) else {
                continue;
            };
            let encap = |mode: Option<EncapMode>| mode.is_some_and(|m| m != EncapMode::Never);
            // VXLAN of either family and IPv4 IP-in-IP (there is no IPv6 IP-in-IP) are the
            // encapsulation's to route.
            if encap(pool.spec.vxlan_mode) || (encap(pool.spec.ipip_mode) && cidr.addr().is_ipv4())
            {
                encapsulated.push(Value::String(cidr.to_string()));
            }
            // A disabled pool only stops handing out addresses: what it already gave out is
            // still routed (Calico exports it too).
            if pool.spec.disable_bgp_export == Some(true) {
                continue;
            }
            let mut rule = Table::new();
            rule.insert(
                "prefix".into(),
                Value::Array(vec![Value::String(format!(
                    "{cidr} le {}",
                    cidr.max_prefix_len()
                ))]),
            );
            rule.insert("action".into(), Value::String("accept".into()));
            rules.push(Value::Table(rule));
        }
        for range in &service_advertised {
            let mut rule = Table::new();
            rule.insert(
                "prefix".into(),
                Value::Array(vec![Value::String(range.to_string())]),
            );
            rule.insert("action".into(), Value::String("accept".into()));
            rules.push(Value::Table(rule));
        }
        encapsulated.extend(service_ranges.iter().map(|r| Value::String(r.to_string())));
        let mut filters = Vec::new();
        // Filtered sessions: their BGPFilters' rules in order, first match deciding, then
        // Calico's defaults (import: accept; export: the pools' rules above).
        for session in filtered_sessions {
            let v4 = session.address.is_ipv4();
            let ibgp = session.remote_as == local_as;
            let mut import_rules = Vec::new();
            let mut export_rules = Vec::new();
            let mut broken = None;
            for name in &session.filters {
                let Some(filter) = self.filters.get(name) else {
                    broken = Some(format!("BGPFilter {name} does not exist"));
                    break;
                };
                let (import, export) = if v4 {
                    (&filter.spec.import_v4, &filter.spec.export_v4)
                } else {
                    (&filter.spec.import_v6, &filter.spec.export_v6)
                };
                for (list, out) in [(import, &mut import_rules), (export, &mut export_rules)] {
                    for (index, rule) in list.iter().flatten().enumerate() {
                        match filter_rule(rule, v4, ibgp) {
                            Ok(Some(table)) => out.push(Value::Table(table)),
                            Ok(None) => {}
                            Err(reason) => {
                                broken = Some(format!("BGPFilter {name} rule {index}: {reason}"));
                            }
                        }
                    }
                }
            }
            let name = session_filter_name(&session);
            let (import_default, export_default) = match &broken {
                Some(reason) => {
                    rendered.warnings.push(format!(
                        "peering with {}: {reason}; it accepts and sends nothing until that is fixed",
                        session.address
                    ));
                    import_rules.clear();
                    export_rules.clear();
                    ("reject", "reject")
                }
                None => {
                    export_rules.extend(rules.iter().cloned());
                    ("accept", "reject")
                }
            };
            for (suffix, list, default) in [
                ("import", import_rules, import_default),
                ("export", export_rules, export_default),
            ] {
                let mut filter = Table::new();
                filter.insert("name".into(), Value::String(format!("{name}_{suffix}")));
                filter.insert("default".into(), Value::String(default.into()));
                filter.insert("rule".into(), Value::Array(list));
                filters.push(Value::Table(filter));
            }
        }
        let mut filter = Table::new();
        filter.insert("name".into(), Value::String(EXPORT_FILTER.into()));
        filter.insert("default".into(), Value::String("reject".into()));
        filter.insert("rule".into(), Value::Array(rules));
        filters.insert(0, Value::Table(filter));
        file.insert("filter".into(), Value::Array(filters));

        let mut kernel = Table::new();
        kernel.insert("table".into(), Value::Integer(254));
        kernel.insert("metric".into(), Value::Integer(NORMAL_METRIC.into()));
        kernel.insert("exclude".into(), Value::Array(encapsulated));
        file.insert("kernel".into(), Value::Table(kernel));

        let text = toml::to_string(&file).expect("a TOML table serializes");
        rendered.config = Some(format!(
            "# Written by twill-node for node {node_name:?} from the datastore's Node, \
             BGPConfiguration, BGPPeer, IPPool and BlockAffinity resources; changes here are \
             overwritten.\n{text}"
        ));
        rendered
    }
}

fn neighbor_table(session: &Session, local_as: u32) -> Table {
    let mut table = Table::new();
    table.insert("address".into(), Value::String(session.address.to_string()));
    table.insert(
        "remote_asn".into(),
        Value::Integer(session.remote_as.into()),
    );
    table.insert(
        "description".into(),
        Value::String(protocol_name(session.kind, session.address, session.port)),
    );
    if session.port != 179 {
        table.insert("port".into(), Value::Integer(session.port.into()));
    }
    table.insert("passive".into(), Value::Boolean(session.passive));
    if let Some(password) = &session.password {
        table.insert(
            "password".into(),
            Value::String(password.expose().to_string()),
        );
    }
    if let Some(source) = session.source {
        table.insert("source_address".into(), Value::String(source.to_string()));
    }
    let family = if session.address.is_ipv4() {
        "ipv4-unicast"
    } else {
        "ipv6-unicast"
    };
    table.insert(
        "families".into(),
        Value::Array(vec![Value::String(family.into())]),
    );
    table.insert("graceful_restart".into(), Value::Boolean(true));
    if let Some(restart) = session.restart_time {
        table.insert(
            "restart_time".into(),
            Value::Integer(restart.min(4095) as i64),
        );
    }
    if let Some(keepalive) = session.keepalive {
        table.insert(
            "keepalive_time".into(),
            Value::Integer(keepalive.clamp(1, u64::from(u16::MAX)) as i64),
        );
    }
    if let Some(allow) = session.allowas_in {
        table.insert(
            "allowas_in".into(),
            Value::Integer(i64::from(allow.min(10))),
        );
    }
    if let Some(local) = session.local_as {
        table.insert("local_as".into(), Value::Integer(local.into()));
    }
    // Calico: `ttl security on; multihop N`, else `ttl security off; multihop` (any distance).
    match session.ttl_security {
        Some(hops) => {
            table.insert("ttl_security".into(), Value::Boolean(true));
            table.insert("multihop".into(), Value::Integer(hops.into()));
        }
        None => {
            table.insert("multihop".into(), Value::Integer(64));
        }
    }
    if session.next_hop_self {
        table.insert("next_hop_self".into(), Value::Boolean(true));
    }
    if session.next_hop_keep && !session.next_hop_self {
        table.insert("next_hop_keep".into(), Value::Boolean(true));
    }
    if let Some(subnet) = session.shared_subnet {
        table.insert("shared_subnet".into(), Value::String(subnet.to_string()));
    }
    if session.rr_client && session.remote_as == local_as {
        table.insert("route_reflector_client".into(), Value::Boolean(true));
    }
    let (import, export) = if session.filters.is_empty() {
        ("all".to_string(), EXPORT_FILTER.to_string())
    } else {
        let name = session_filter_name(session);
        (format!("{name}_import"), format!("{name}_export"))
    };
    table.insert("import".into(), Value::Array(vec![Value::String(import)]));
    table.insert("export".into(), Value::Array(vec![Value::String(export)]));
    table
}

/// The name of a filtered session's own filters (`…_import`, `…_export`).
fn session_filter_name(session: &Session) -> String {
    format!(
        "bgpfilter_{}",
        session.address.to_string().replace(['.', ':'], "_")
    )
}

/// A whole family's catch-all: rules with no prefix criterion still only see their family.
fn family_prefix(v4: bool) -> String {
    if v4 { "0.0.0.0/0 le 32" } else { "::/0 le 128" }.to_string()
}

/// One Calico BGPFilter rule as a twill-bgpd rule; `None` when it can never match here
/// (`interface`: Twill's speaker exports no interface routes; `peerType` of the other kind).
fn filter_rule(
    rule: &twill_shared::resource::bgp::BgpFilterRule,
    v4: bool,
    ibgp: bool,
) -> Result<Option<Table>, String> {
    if rule.interface.is_some() {
        return Ok(None);
    }
    match rule.peer_type.as_deref() {
        Some("eBGP") if ibgp => return Ok(None),
        Some("iBGP") if !ibgp => return Ok(None),
        Some("eBGP" | "iBGP") | None => {}
        Some(other) => return Err(format!("peerType {other:?} is not eBGP or iBGP")),
    }
    let mut table = Table::new();
    let action = match rule.action.as_deref() {
        Some("Accept") => "accept",
        Some("Reject") => "reject",
        other => return Err(format!("action {other:?} is not Accept or Reject")),
    };
    table.insert("action".into(), Value::String(action.into()));
    let max = if v4 { 32 } else { 128 };
    let range = |base: u8| {
        let (min, high) = rule
            .prefix_length
            .as_ref()
            .map_or((None, None), |l| (l.min, l.max));
        let low = min.unwrap_or(base).max(base);
        let high = high.unwrap_or(max).min(max);
        if low > high {
            return Err(format!("prefixLength {low}..{high} is empty"));
        }
        Ok(if low == base {
            format!("le {high}")
        } else {
            format!("ge {low} le {high}")
        })
    };
    let family = family_prefix(v4);
    match (&rule.cidr, rule.match_operator.as_deref()) {
        (Some(cidr), operator) => {
            let cidr = cidr.0.trunc();
            if cidr.addr().is_ipv4() != v4 {
                return Ok(None);
            }
            // prefixLength narrows In and NotIn only; Equal names one prefix.
            let within = || -> Result<String, String> {
                Ok(format!("{cidr} {}", range(cidr.prefix_len())?))
            };
            let (key, value) = match operator {
                Some("Equal") => ("prefix", cidr.to_string()),
                Some("In") => ("prefix", within()?),
                Some("NotEqual") => ("not_prefix", cidr.to_string()),
                Some("NotIn") => ("not_prefix", within()?),
                other => {
                    return Err(format!(
                        "matchOperator {other:?} is not Equal, NotEqual, In or NotIn"
                    ))
                }
            };
            table.insert(key.into(), Value::Array(vec![Value::String(value)]));
            if key == "not_prefix" {
                table.insert("prefix".into(), Value::Array(vec![Value::String(family)]));
            }
        }
        (None, _) => {
            let zero = if v4 { "0.0.0.0/0" } else { "::/0" };
            table.insert(
                "prefix".into(),
                Value::Array(vec![Value::String(format!("{zero} {}", range(0)?))]),
            );
        }
    }
    match rule.source.as_deref() {
        Some("RemotePeers") => {
            table.insert("learned".into(), Value::Boolean(true));
        }
        None => {}
        Some(other) => return Err(format!("source {other:?} is not RemotePeers")),
    }
    if let Some(values) = rule.communities.as_ref().and_then(|c| c.values.clone()) {
        table.insert(
            "community".into(),
            Value::Array(values.into_iter().map(Value::String).collect()),
        );
    }
    if let Some(prefix) = &rule.as_path_prefix {
        table.insert(
            "as_path_prefix".into(),
            Value::Array(prefix.iter().map(|a| Value::Integer(a.0.into())).collect()),
        );
    }
    if let Some(priority) = rule.priority {
        table.insert(
            "match_local_pref".into(),
            Value::Integer(i64::from(i32::MAX as u32 - priority.min(i32::MAX as u32))),
        );
    }
    let mut add = Vec::new();
    let mut prepend = Vec::new();
    for operation in rule.operations.iter().flatten() {
        if let Some(values) = operation
            .add_community
            .as_ref()
            .and_then(|c| c.values.clone())
        {
            add.extend(values.into_iter().map(Value::String));
        }
        if let Some(asns) = operation
            .prepend_as_path
            .as_ref()
            .and_then(|p| p.prefix.clone())
        {
            prepend.extend(asns.into_iter().map(|a| Value::Integer(a.0.into())));
        }
        if let Some(value) = operation.set_priority.as_ref().and_then(|p| p.value) {
            table.insert(
                "local_pref".into(),
                Value::Integer(i64::from(i32::MAX as u32 - value.min(i32::MAX as u32))),
            );
        }
    }
    if !add.is_empty() {
        table.insert("add_community".into(), Value::Array(add));
    }
    if !prepend.is_empty() {
        table.insert("prepend".into(), Value::Array(prepend));
    }
    Ok(Some(table))
}

/// Calico's protocol names, which `node status` reads the peer type from: `Mesh_10_0_0_1`,
/// `Global_…`, `Node_…`, with `_port_N` for a port other than 179.
fn protocol_name(kind: &str, address: IpAddr, port: u16) -> String {
    let mut name = format!("{kind}_{}", address.to_string().replace(['.', ':'], "_"));
    if port != 179 {
        name.push_str(&format!("_port_{port}"));
    }
    name
}

/// `IP`, `IP:port` or `[IPv6]:port`.
fn peer_address(text: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some((address, None));
    }
    let socket: SocketAddr = text.parse().ok()?;
    Some((socket.ip(), Some(socket.port())))
}

fn seconds(duration: &twill_shared::resource::fields::Duration) -> u64 {
    (duration.nanos / 1_000_000_000) as u64
}

fn password(
    password: &BgpPassword,
    secrets: &dyn Secrets,
    what: &str,
    warnings: &mut Vec<String>,
) -> Option<crate::config::Password> {
    let SecretKeyRef { name, key } = password.secret_key_ref.as_ref()?;
    let (Some(name), Some(key)) = (name, key) else {
        warnings.push(format!("{what}: password secretKeyRef needs name and key"));
        return None;
    };
    let value = secrets.get(name, key);
    if value.is_none() {
        warnings.push(format!(
            "{what}: secret {name}/{key} cannot be read; the session is configured without a password and will not come up with a peer that wants one"
        ));
    }
    value.map(crate::config::Password::new)
}

/// A stable router ID for a node with no IPv4 address (Calico's `CALICO_ROUTER_ID=hash`
/// idea): FNV-1a of the name, never 0.0.0.0.
pub fn hashed_router_id(name: &str) -> Ipv4Addr {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    Ipv4Addr::from(hash.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_shared::resource::document::parse_documents;
    use twill_shared::resource::fields::Cidr;
    use twill_shared::resource::Kind;

    /// A cluster from YAML documents, plus blocks affine to nodes.
    fn cluster(yaml: &str, blocks: &[(&str, &str)]) -> Cluster {
        let mut cluster = Cluster::default();
        for resource in parse_documents(yaml).expect("the test's documents are valid") {
            let meta = resource.meta();
            let name = match &meta.namespace {
                Some(namespace) => format!("{namespace}/{}", meta.name.clone().unwrap()),
                None => meta.name.clone().unwrap(),
            };
            assert!(cluster.update(resource.kind(), &name, Some(resource)));
        }
        for (index, (node, cidr)) in blocks.iter().enumerate() {
            let affinity = Object {
                api_version: "projectcalico.org/v3".into(),
                kind: "BlockAffinity".into(),
                spec: BlockAffinitySpec {
                    state: Some("confirmed".into()),
                    node: Some(node.to_string()),
                    cidr: Some(Cidr(cidr.parse().unwrap())),
                    ..BlockAffinitySpec::default()
                },
                ..Object::default()
            };
            cluster.update(
                Kind::BlockAffinity,
                &format!("a{index}"),
                Some(Resource::BlockAffinity(affinity)),
            );
        }
        cluster
    }

    fn node(name: &str, address: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {name}\n{extra}spec:\n  bgp:\n    ipv4Address: {address}/24\n"
        )
    }

    const POOL: &str = "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pods\nspec:\n  cidr: 10.90.0.0/16\n";

    /// The rendered file, checked by twill-bgpd's own parser, as a TOML table.
    fn render(cluster: &Cluster, node: &str) -> (Table, Rendered) {
        let secrets: BTreeMap<(String, String), String> = [(
            ("bgp".to_string(), "mesh".to_string()),
            "s3cret".to_string(),
        )]
        .into();
        let rendered = cluster.render(node, &[], &secrets);
        let text = rendered.config.clone().expect("the node speaks BGP");
        crate::config::DaemonConfig::parse(&text)
            .unwrap_or_else(|e| panic!("twill-bgpd refuses the rendering: {e}\n{text}"));
        (text.parse::<Table>().unwrap(), rendered)
    }

    fn neighbors(table: &Table) -> BTreeMap<String, Table> {
        table["neighbor"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let n = n.as_table().unwrap().clone();
                (n["address"].as_str().unwrap().to_string(), n)
            })
            .collect()
    }

    #[test]
    fn the_mesh_has_one_active_side_per_pair_by_string_comparison() {
        // "10.0.0.10" < "10.0.0.9" as strings (Calico's Go comparison), the reverse of the
        // numeric order: the node at .10 is the passive one towards .9.
        let yaml = [
            node("a", "10.0.0.9", ""),
            node("b", "10.0.0.10", ""),
            POOL.into(),
        ]
        .concat();
        let cluster = cluster(&yaml, &[]);
        let (a, _) = render(&cluster, "a");
        let (b, _) = render(&cluster, "b");
        let a_to_b = &neighbors(&a)["10.0.0.10"];
        let b_to_a = &neighbors(&b)["10.0.0.9"];
        assert_eq!(a_to_b["passive"].as_bool(), Some(false));
        assert_eq!(b_to_a["passive"].as_bool(), Some(true));
        assert_eq!(a_to_b["remote_asn"].as_integer(), Some(64512));
        assert_eq!(a_to_b["source_address"].as_str(), Some("10.0.0.9"));
        assert_eq!(a_to_b["description"].as_str(), Some("Mesh_10_0_0_10"));
        assert_eq!(a["global"]["router_id"].as_str(), Some("10.0.0.9"));
        assert_eq!(a["global"]["asn"].as_integer(), Some(64512));
    }

    #[test]
    fn mesh_settings_come_from_the_default_bgp_configuration() {
        let yaml = [
            node("a", "10.0.0.1", ""),
            node("b", "10.0.0.2", ""),
            POOL.into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: 65100\n  \
             listenPort: 1790\n  nodeMeshPassword:\n    secretKeyRef: {name: bgp, key: mesh}\n  nodeMeshMaxRestartTime: 300s\n"
                .into(),
        ]
        .concat();
        let (a, rendered) = render(&cluster(&yaml, &[]), "a");
        let b = &neighbors(&a)["10.0.0.2"];
        assert_eq!(a["global"]["asn"].as_integer(), Some(65100));
        assert_eq!(
            a["global"]["listen"].as_array().unwrap()[0].as_str(),
            Some("0.0.0.0:1790")
        );
        assert_eq!(b["port"].as_integer(), Some(1790));
        assert_eq!(b["password"].as_str(), Some("s3cret"));
        assert_eq!(b["restart_time"].as_integer(), Some(300));
        assert_eq!(b["description"].as_str(), Some("Mesh_10_0_0_2_port_1790"));
        assert!(rendered.warnings.is_empty(), "{:?}", rendered.warnings);
    }

    #[test]
    fn the_mesh_can_be_turned_off() {
        let yaml = [
            node("a", "10.0.0.1", ""),
            node("b", "10.0.0.2", ""),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  nodeToNodeMeshEnabled: false\n".into(),
        ]
        .concat();
        let (a, _) = render(&cluster(&yaml, &[]), "a");
        assert!(neighbors(&a).is_empty());
    }

    /// Calico's usual route reflector setup (its golden test explicit_peering/route_reflector):
    /// reflectors labelled and given a cluster ID, the mesh off, reflectors peering with
    /// non-reflectors and with each other.
    #[test]
    fn route_reflection_is_derived_from_cluster_ids() {
        let rr = "  labels:\n    route-reflector: \"true\"\n";
        let yaml = [
            node("rr1", "10.0.0.1", rr).replace("    ipv4Address", "    routeReflectorClusterID: 224.0.0.1\n    ipv4Address"),
            node("rr2", "10.0.0.2", rr).replace("    ipv4Address", "    routeReflectorClusterID: 224.0.0.1\n    ipv4Address"),
            node("c1", "10.0.0.3", ""),
            node("c2", "10.0.0.4", ""),
            POOL.into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  nodeToNodeMeshEnabled: false\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: rr-to-clients\nspec:\n  nodeSelector: has(route-reflector)\n  peerSelector: \"!has(route-reflector)\"\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: clients-to-rr\nspec:\n  nodeSelector: \"!has(route-reflector)\"\n  peerSelector: has(route-reflector)\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: rr-mesh\nspec:\n  nodeSelector: has(route-reflector)\n  peerSelector: has(route-reflector)\n".into(),
        ]
        .concat();
        let cluster = cluster(&yaml, &[]);
        let (rr1, _) = render(&cluster, "rr1");
        assert_eq!(rr1["global"]["cluster_id"].as_str(), Some("224.0.0.1"));
        let rr1_neighbors = neighbors(&rr1);
        let mut addresses: Vec<&String> = rr1_neighbors.keys().collect();
        addresses.sort();
        assert_eq!(addresses, ["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        for client in ["10.0.0.3", "10.0.0.4"] {
            let n = &rr1_neighbors[client];
            assert_eq!(
                n["route_reflector_client"].as_bool(),
                Some(true),
                "{client}"
            );
            // Node-specific peerings: both sides active (collision resolution).
            assert_eq!(n["passive"].as_bool(), Some(false));
            assert_eq!(
                n["description"].as_str(),
                Some(format!("Node_{}", client.replace('.', "_")).as_str())
            );
        }
        // Reflectors of one cluster are not each other's clients.
        assert!(rr1_neighbors["10.0.0.2"]
            .get("route_reflector_client")
            .is_none());
        let (c1, _) = render(&cluster, "c1");
        let c1_neighbors = neighbors(&c1);
        let mut addresses: Vec<&String> = c1_neighbors.keys().collect();
        addresses.sort();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.2"]);
        assert!(c1_neighbors
            .values()
            .all(|n| n.get("route_reflector_client").is_none()));
        assert!(c1["global"].get("cluster_id").is_none());
    }

    #[test]
    fn with_the_mesh_on_reflectors_are_left_out_of_it() {
        let yaml = [
            node("rr", "10.0.0.1", "").replace(
                "    ipv4Address",
                "    routeReflectorClusterID: 224.0.0.1\n    ipv4Address",
            ),
            node("a", "10.0.0.2", ""),
            node("b", "10.0.0.3", ""),
        ]
        .concat();
        let cluster = cluster(&yaml, &[]);
        let (a, _) = render(&cluster, "a");
        assert_eq!(neighbors(&a).keys().collect::<Vec<_>>(), ["10.0.0.3"]);
        let (rr, _) = render(&cluster, "rr");
        assert!(neighbors(&rr).is_empty());
    }

    #[test]
    fn explicit_peers_follow_node_and_selector_scoping() {
        let yaml = [
            node("a", "10.0.0.1", "  labels:\n    rack: r1\n"),
            node("b", "10.0.0.2", "  labels:\n    rack: r2\n"),
            POOL.into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: tor-r1\nspec:\n  nodeSelector: rack == 'r1'\n  \
             peerIP: 198.18.0.1:1179\n  asNumber: 65000\n  keepaliveTime: 10s\n  maxRestartTime: 60s\n  ttlSecurity: 1\n  \
             numAllowedLocalASNumbers: 2\n  reachableBy: 10.0.0.254\n  sourceAddress: None\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: only-b\nspec:\n  node: b\n  peerIP: 198.18.0.9\n  asNumber: 65009\n  localASNumber: 65555\n".into(),
        ]
        .concat();
        let cluster = cluster(&yaml, &[]);
        let (a, rendered) = render(&cluster, "a");
        let a_neighbors = neighbors(&a);
        let tor = &a_neighbors["198.18.0.1"];
        assert_eq!(tor["port"].as_integer(), Some(1179));
        assert_eq!(tor["remote_asn"].as_integer(), Some(65000));
        assert_eq!(tor["keepalive_time"].as_integer(), Some(10));
        assert_eq!(tor["restart_time"].as_integer(), Some(60));
        assert_eq!(tor["ttl_security"].as_bool(), Some(true));
        assert_eq!(tor["multihop"].as_integer(), Some(1));
        assert_eq!(tor["allowas_in"].as_integer(), Some(2));
        assert!(tor.get("source_address").is_none());
        assert_eq!(tor["passive"].as_bool(), Some(false));
        assert_eq!(
            tor["export"].as_array().unwrap()[0].as_str(),
            Some("calico_export")
        );
        assert!(!a_neighbors.contains_key("198.18.0.9"));
        assert!(rendered.static_routes.contains(&(
            "198.18.0.1/32".parse().unwrap(),
            "10.0.0.254".parse().unwrap()
        )));
        let (b, _) = render(&cluster, "b");
        let b_neighbors = neighbors(&b);
        assert!(!b_neighbors.contains_key("198.18.0.1"));
        assert_eq!(
            b_neighbors["198.18.0.9"]["local_as"].as_integer(),
            Some(65555)
        );
    }

    #[test]
    fn a_global_peering_to_another_node_takes_the_passive_rule() {
        let yaml = [
            node("a", "10.0.0.9", ""),
            node("b", "10.0.0.10", ""),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  nodeToNodeMeshEnabled: false\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: to-b\nspec:\n  peerIP: 10.0.0.10\n  asNumber: 64512\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: to-a\nspec:\n  peerIP: 10.0.0.9\n  asNumber: 64512\n".into(),
        ]
        .concat();
        let cluster = cluster(&yaml, &[]);
        let (a, _) = render(&cluster, "a");
        let (b, _) = render(&cluster, "b");
        assert_eq!(neighbors(&a)["10.0.0.10"]["passive"].as_bool(), Some(false));
        assert_eq!(neighbors(&b)["10.0.0.9"]["passive"].as_bool(), Some(true));
    }

    #[test]
    fn blocks_are_originated_with_blackholes_communities_and_calicos_local_pref() {
        let yaml = [
            node("a", "10.0.0.1", ""),
            POOL.into(),
            "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: quiet\nspec:\n  cidr: 10.91.0.0/16\n  disableBGPExport: true\n  vxlanMode: Always\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: retired\nspec:\n  cidr: 10.93.0.0/16\n  disabled: true\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  \
             communities:\n  - name: pods\n    value: 65001:100\n  prefixAdvertisements:\n  - cidr: 10.90.0.0/16\n    \
             communities: [pods, \"65001:1:2\"]\n".into(),
        ]
        .concat();
        let cluster = cluster(
            &yaml,
            &[
                ("a", "10.90.1.0/26"),
                ("a", "10.91.0.0/26"),
                ("b", "10.90.2.0/26"),
            ],
        );
        let secrets: BTreeMap<(String, String), String> = BTreeMap::new();
        let borrowed: Vec<IpNet> = vec![
            "10.90.2.7/32".parse().unwrap(),
            "10.90.1.5/32".parse().unwrap(),
        ];
        let rendered = cluster.render("a", &borrowed, &secrets);
        let text = rendered.config.clone().unwrap();
        let config = crate::config::DaemonConfig::parse(&text).unwrap();
        let originated: Vec<String> = config.originate.keys().map(ToString::to_string).collect();
        // Own blocks, and the borrowed address outside them; not the one inside a block.
        assert_eq!(originated, ["10.90.1.0/26", "10.90.2.7/32", "10.91.0.0/26"]);
        let block = &config.originate[&"10.90.1.0/26".parse().unwrap()];
        assert_eq!(block.local_pref, Some(2_147_482_623));
        assert_eq!(block.communities, vec![(65001 << 16) | 100]);
        assert_eq!(&*block.large_communities, &[(65001, 1, 2)]);
        assert!(config.originate[&"10.91.0.0/26".parse().unwrap()]
            .communities
            .is_empty());
        assert_eq!(
            rendered
                .blackholes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.90.1.0/26", "10.91.0.0/26"]
        );
        // Export: the exporting pool only. Kernel: the VXLAN pool is the encapsulation's.
        let table: Table = text.parse().unwrap();
        let rules = table["filter"][0]["rule"].as_array().unwrap();
        assert_eq!(
            rules.len(),
            2,
            "a disabled pool is still exported; one with disableBGPExport is not"
        );
        assert_eq!(rules[0]["prefix"][0].as_str(), Some("10.90.0.0/16 le 32"));
        assert_eq!(rules[1]["prefix"][0].as_str(), Some("10.93.0.0/16 le 32"));
        assert_eq!(
            config.kernel.unwrap().exclude,
            vec!["10.91.0.0/16".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn a_node_without_a_bgp_address_speaks_no_bgp_but_keeps_its_blackholes() {
        let yaml =
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: a\nspec: {}\n";
        let cluster = cluster(yaml, &[("a", "10.90.1.0/26")]);
        let rendered = cluster.render("a", &[], &BTreeMap::new());
        assert!(rendered.config.is_none());
        assert_eq!(rendered.blackholes.len(), 1);
        assert!(cluster
            .render("missing", &[], &BTreeMap::new())
            .config
            .is_none());
    }

    /// The decision twill-bgpd's own filters take for a route on the session to `peer`.
    fn decide(
        config: &crate::config::DaemonConfig,
        peer: &str,
        export: bool,
        prefix: &str,
        learned: bool,
        attributes: &mut crate::wire::attribute::PathAttributes,
    ) -> bool {
        let (neighbor, _) = config
            .neighbors
            .iter()
            .find(|(n, _)| n.address.to_string() == peer)
            .unwrap();
        let filters = if export {
            &neighbor.export
        } else {
            &neighbor.import
        };
        let mut route = crate::policy::Route::new(prefix.parse().unwrap(), attributes, 64512);
        route.learned = learned;
        crate::policy::Filter::apply_all(filters, &mut route)
    }

    const TOR: &str = "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: tor\nspec:\n  peerIP: 198.18.0.1\n  asNumber: 65000\n  filters: [rack-in, rack-out]\n";

    #[test]
    fn bgp_filters_decide_in_order_then_calicos_defaults_apply() {
        let filters = "---\napiVersion: projectcalico.org/v3\nkind: BGPFilter\nmetadata:\n  name: rack-in\nspec:\n  importV4:\n  \
            - {action: Accept, matchOperator: In, cidr: 198.19.0.0/16, prefixLength: {min: 24}}\n  - {action: Reject}\n\
            ---\napiVersion: projectcalico.org/v3\nkind: BGPFilter\nmetadata:\n  name: rack-out\nspec:\n  exportV4:\n  \
            - {action: Reject, matchOperator: In, cidr: 10.90.0.0/16, source: RemotePeers}\n  \
            - action: Accept\n    matchOperator: Equal\n    cidr: 10.90.1.0/26\n    operations:\n    - addCommunity: {values: [\"65000:7\"]}\n    - prependASPath: {prefix: [64512, 64512]}\n    - setPriority: {value: 512}\n  \
            - {action: Accept, matchOperator: NotIn, cidr: 10.0.0.0/8}\n  importV6:\n  - {action: Reject}\n";
        let yaml = [
            node("a", "10.0.0.1", ""),
            POOL.into(),
            TOR.into(),
            filters.into(),
        ]
        .concat();
        let cluster = cluster(&yaml, &[("a", "10.90.1.0/26"), ("a", "10.90.2.0/26")]);
        let rendered = cluster.render("a", &[], &BTreeMap::new());
        assert!(rendered.warnings.is_empty(), "{:?}", rendered.warnings);
        let config = crate::config::DaemonConfig::parse(&rendered.config.unwrap()).unwrap();
        let plain = || crate::wire::attribute::PathAttributes::default();
        // Import: the rack's /24s and longer inside 198.19.0.0/16, nothing else.
        assert!(decide(
            &config,
            "198.18.0.1",
            false,
            "198.19.4.0/24",
            true,
            &mut plain()
        ));
        assert!(!decide(
            &config,
            "198.18.0.1",
            false,
            "198.19.0.0/16",
            true,
            &mut plain()
        ));
        assert!(!decide(
            &config,
            "198.18.0.1",
            false,
            "0.0.0.0/0",
            true,
            &mut plain()
        ));
        // Export: pod routes learned from other nodes stay in; our block 10.90.1.0/26 goes
        // with the operations; the other falls through to Calico's pool rule; NotIn
        // 10.0.0.0/8 lets a non-pool route out by the filter's own accept.
        assert!(!decide(
            &config,
            "198.18.0.1",
            true,
            "10.90.9.0/26",
            true,
            &mut plain()
        ));
        let mut changed = plain();
        assert!(decide(
            &config,
            "198.18.0.1",
            true,
            "10.90.1.0/26",
            false,
            &mut changed
        ));
        assert_eq!(changed.communities, vec![(65000 << 16) | 7]);
        assert_eq!(
            changed.as_path.map(|p| p.asns().collect::<Vec<_>>()),
            Some(vec![64512, 64512])
        );
        assert_eq!(changed.local_pref, Some(2_147_483_647 - 512));
        assert!(decide(
            &config,
            "198.18.0.1",
            true,
            "10.90.2.0/26",
            false,
            &mut plain()
        ));
        assert!(decide(
            &config,
            "198.18.0.1",
            true,
            "192.168.0.0/16",
            true,
            &mut plain()
        ));
        assert!(
            !decide(
                &config,
                "198.18.0.1",
                true,
                "10.200.0.0/16",
                true,
                &mut plain()
            ),
            "not in a pool: Calico's default"
        );
    }

    #[test]
    fn a_missing_bgp_filter_fails_closed_and_says_so() {
        let yaml = [node("a", "10.0.0.1", ""), POOL.into(), TOR.into()].concat();
        let rendered = cluster(&yaml, &[("a", "10.90.1.0/26")]).render("a", &[], &BTreeMap::new());
        assert!(
            rendered
                .warnings
                .iter()
                .any(|w| w.contains("BGPFilter rack-in does not exist")),
            "{:?}",
            rendered.warnings
        );
        let config = crate::config::DaemonConfig::parse(&rendered.config.unwrap()).unwrap();
        let mut plain = crate::wire::attribute::PathAttributes::default();
        assert!(!decide(
            &config,
            "198.18.0.1",
            false,
            "198.19.4.0/24",
            true,
            &mut plain
        ));
        assert!(!decide(
            &config,
            "198.18.0.1",
            true,
            "10.90.1.0/26",
            false,
            &mut plain
        ));
    }

    #[test]
    fn a_password_that_cannot_be_read_is_reported() {
        let yaml = [
            node("a", "10.0.0.1", ""),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: tor\nspec:\n  peerIP: 198.18.0.1\n  asNumber: 65000\n  password:\n    secretKeyRef: {name: nope, key: k}\n".into(),
        ]
        .concat();
        let (_, rendered) = render(&cluster(&yaml, &[]), "a");
        assert!(
            rendered.warnings.iter().any(|w| w.contains("nope/k")),
            "{:?}",
            rendered.warnings
        );
    }

    #[test]
    fn an_external_peer_on_the_nodes_subnet_shares_it() {
        let yaml = [
            node("a", "198.18.0.11", ""),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: tor\nspec:\n  peerIP: 198.18.0.1\n  asNumber: 65000\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: far\nspec:\n  peerIP: 198.19.0.1\n  asNumber: 65000\n".into(),
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: ibgp\nspec:\n  peerIP: 198.18.0.2\n  asNumber: 64512\n".into(),
        ]
        .concat();
        let (a, _) = render(&cluster(&yaml, &[]), "a");
        let n = neighbors(&a);
        assert_eq!(
            n["198.18.0.1"]["shared_subnet"].as_str(),
            Some("198.18.0.0/24")
        );
        assert!(n["198.19.0.1"].get("shared_subnet").is_none());
        assert!(
            n["198.18.0.2"].get("shared_subnet").is_none(),
            "iBGP keeps next hops anyway"
        );
    }

    fn service(name: &str, spec: &str, status: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n{spec}{status}"
        )
    }

    /// An EndpointSlice of Service `service`: (address, node, ready) per endpoint.
    fn slice(service: &str, family: &str, endpoints: &[(&str, &str, bool)]) -> String {
        let endpoints: String = endpoints
            .iter()
            .map(|(address, node, ready)| {
                format!("- addresses: [\"{address}\"]\n  nodeName: {node}\n  conditions:\n    ready: {ready}\n")
            })
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{}\n  namespace: shop\n  \
             labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\nendpoints:\n{endpoints}",
            family.to_lowercase()
        )
    }

    /// Calico's route generator, case by case (its routes.go, read for the rules, and
    /// Kubernetes' Service semantics): what each node originates beside the ranges.
    #[test]
    fn single_service_addresses_go_from_the_nodes_their_traffic_policy_chooses() {
        let bgp_config = "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  \
            serviceClusterIPs:\n  - cidr: 10.96.0.0/12\n  - cidr: fd00:96::/108\n  serviceExternalIPs:\n  - cidr: 198.19.10.0/24\n  - cidr: 198.19.11.7/32\n  \
            serviceLoadBalancerIPs:\n  - cidr: 198.19.20.0/24\n  - cidr: 198.19.21.9/32\n";
        let yaml = [
            node("a", "10.0.0.1", ""),
            node("b", "10.0.0.2", ""),
            node(
                "c",
                "10.0.0.3",
                "  labels:\n    node.kubernetes.io/exclude-from-external-load-balancers: \"\"\n",
            ),
            bgp_config.into(),
            // Local, dual-stack: the IPv4 endpoint on a (ready), the IPv6 one on b, a
            // not-ready IPv4 one on b; an external address outside the allowed ranges.
            service(
                "local",
                "  type: NodePort\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00:96::a\"]\n  \
                 externalIPs: [198.19.10.5, 203.0.113.7]\n  externalTrafficPolicy: Local\n  ports:\n  - port: 80\n",
                "",
            ),
            slice("local", "IPv4", &[("10.90.0.5", "a", true), ("10.90.1.5", "b", false)]),
            slice("local", "IPv6", &[("fd00:90::5", "b", true)]),
            // Cluster, with a load balancer address that is a single-address entry and an
            // endpoint on c: every node but the excluded one.
            service(
                "balanced",
                "  type: LoadBalancer\n  clusterIP: 10.96.0.20\n  externalTrafficPolicy: Cluster\n  ports:\n  - port: 443\n",
                "status:\n  loadBalancer:\n    ingress:\n    - ip: 198.19.21.9\n",
            ),
            slice("balanced", "IPv4", &[("10.90.2.5", "c", true)]),
            // Cluster, with a load balancer address inside a range only: the range does.
            service(
                "ranged",
                "  type: LoadBalancer\n  clusterIP: 10.96.0.30\n  externalTrafficPolicy: Cluster\n  ports:\n  - port: 443\n",
                "status:\n  loadBalancer:\n    ingress:\n    - ip: 198.19.20.30\n",
            ),
            slice("ranged", "IPv4", &[("10.90.0.6", "a", true)]),
            // No policy (a ClusterIP Service): a single-address external IP and a ready
            // endpoint, yet only the ranges cover it, as in Calico.
            service(
                "plain",
                "  clusterIP: 10.96.0.50\n  externalIPs: [198.19.11.7]\n  ports:\n  - port: 80\n",
                "",
            ),
            slice("plain", "IPv4", &[("10.90.0.9", "a", true)]),
            // Cluster, a single-address external IP, but no ready endpoint anywhere.
            service(
                "idle",
                "  type: NodePort\n  clusterIP: 10.96.0.40\n  externalTrafficPolicy: Cluster\n  externalIPs: [198.19.11.7]\n  ports:\n  - port: 80\n",
                "",
            ),
            slice("idle", "IPv4", &[("10.90.0.7", "a", false)]),
            // Headless and ExternalName Services have no address to advertise.
            service(
                "headless",
                "  clusterIP: None\n  externalTrafficPolicy: Local\n  ports:\n  - port: 80\n",
                "",
            ),
            slice("headless", "IPv4", &[("10.90.0.8", "a", true)]),
            service(
                "elsewhere",
                "  type: ExternalName\n  externalName: db.example.com\n",
                "",
            ),
        ]
        .concat();
        let cluster = cluster(&yaml, &[]);
        let singles = |node: &str| -> Vec<String> {
            let config = crate::config::DaemonConfig::parse(
                &cluster.render(node, &[], &BTreeMap::new()).config.unwrap(),
            )
            .unwrap();
            config
                .originate
                .keys()
                .filter(|p| p.prefix_len() == p.max_prefix_len())
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            singles("a"),
            [
                "10.96.0.10/32",
                "10.96.0.20/32",
                "198.19.10.5/32",
                "198.19.21.9/32"
            ]
        );
        assert_eq!(
            singles("b"),
            ["10.96.0.20/32", "198.19.21.9/32", "fd00:96::a/128"]
        );
        assert_eq!(singles("c"), Vec::<String>::new());
        // Each one is exported: the export filter accepts it exactly.
        let (table, _) = render(&cluster, "a");
        let exported: Vec<String> = table["filter"].as_array().unwrap()[0]["rule"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["prefix"].as_array().unwrap().clone())
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        assert!(
            exported.contains(&"10.96.0.10/32".to_string()),
            "{exported:?}"
        );
        assert!(
            exported.contains(&"198.19.21.9/32".to_string()),
            "{exported:?}"
        );
    }

    #[test]
    fn service_ranges_are_advertised_and_kept_out_of_the_kernel() {
        let bgp_config = "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  \
            serviceClusterIPs:\n  - cidr: 10.96.0.0/12\n  serviceExternalIPs:\n  - cidr: 198.19.10.0/24\n  - cidr: 198.19.11.7/32\n  \
            serviceLoadBalancerIPs:\n  - cidr: 198.19.20.0/24\n";
        let yaml = [
            node("a", "10.0.0.1", ""),
            node(
                "b",
                "10.0.0.2",
                "  labels:\n    node.kubernetes.io/exclude-from-external-load-balancers: \"\"\n",
            ),
            bgp_config.into(),
        ]
        .concat();
        let cluster = cluster(&yaml, &[]);
        let config = |node: &str| {
            crate::config::DaemonConfig::parse(
                &cluster.render(node, &[], &BTreeMap::new()).config.unwrap(),
            )
            .unwrap()
        };
        let a = config("a");
        let originated: Vec<String> = a.originate.keys().map(ToString::to_string).collect();
        // Ranges, not the single address (that one is per Service).
        assert_eq!(
            originated,
            ["10.96.0.0/12", "198.19.10.0/24", "198.19.20.0/24"]
        );
        let excluded: Vec<String> = a
            .kernel
            .unwrap()
            .exclude
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            excluded,
            [
                "10.96.0.0/12",
                "198.19.10.0/24",
                "198.19.11.7/32",
                "198.19.20.0/24"
            ]
        );
        let b = config("b");
        let originated: Vec<String> = b.originate.keys().map(ToString::to_string).collect();
        assert_eq!(
            originated,
            ["10.96.0.0/12"],
            "excluded from external load balancers"
        );
        assert_eq!(
            b.kernel.unwrap().exclude.len(),
            4,
            "still never routes them"
        );
    }

    #[test]
    fn host_sized_blocks_are_originated_without_a_blackhole() {
        let yaml = [node("a", "10.0.0.1", ""), POOL.into()].concat();
        let cluster = cluster(&yaml, &[("a", "10.90.0.7/32"), ("a", "10.90.1.0/26")]);
        let rendered = cluster.render("a", &[], &BTreeMap::new());
        let config = crate::config::DaemonConfig::parse(&rendered.config.unwrap()).unwrap();
        assert_eq!(config.originate.len(), 2);
        assert_eq!(
            rendered
                .blackholes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.90.1.0/26"],
            "a blackhole /32 would take the place of the workload's own route"
        );
    }

    #[test]
    fn next_hop_modes_follow_calico() {
        let peer = |name: &str, ip: &str, extra: &str| {
            format!("---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: {name}\nspec:\n  peerIP: {ip}\n  asNumber: 65000\n{extra}")
        };
        let yaml = [
            node("a", "10.0.0.1", ""),
            peer("keep", "198.18.0.1", "  nextHopMode: Keep\n"),
            peer("legacy", "198.18.0.2", "  keepOriginalNextHop: true\n"),
            peer("self", "198.18.0.3", "  nextHopMode: Self\n"),
            peer("auto", "198.18.0.4", ""),
        ]
        .concat();
        let (a, rendered) = render(&cluster(&yaml, &[]), "a");
        let n = neighbors(&a);
        assert_eq!(n["198.18.0.1"]["next_hop_keep"].as_bool(), Some(true));
        assert_eq!(n["198.18.0.2"]["next_hop_keep"].as_bool(), Some(true));
        assert_eq!(n["198.18.0.3"]["next_hop_self"].as_bool(), Some(true));
        assert!(
            n["198.18.0.4"].get("next_hop_keep").is_none()
                && n["198.18.0.4"].get("next_hop_self").is_none()
        );
        assert!(rendered.warnings.is_empty(), "{:?}", rendered.warnings);
    }

    #[test]
    fn hashed_router_ids_are_stable_and_never_zero() {
        assert_eq!(hashed_router_id("node-1"), hashed_router_id("node-1"));
        assert_ne!(hashed_router_id("node-1"), hashed_router_id("node-2"));
        assert!(!hashed_router_id("").is_unspecified());
    }

    #[test]
    fn borrowed_addresses_are_those_outside_the_blocks_of_the_workloads_node() {
        let mut cluster = cluster(POOL, &[("a", "10.90.0.0/26"), ("b", "10.90.0.64/26")]);
        let net = |t: &str| -> IpNet { t.parse().unwrap() };
        // In its own node's block: not borrowed, nothing to do.
        assert!(!cluster.update_workload("x/p1", Some(("a", &[net("10.90.0.5/32")]))));
        // From b's block, on a: borrowed, routed to a.
        assert!(cluster.update_workload("x/p2", Some(("a", &[net("10.90.0.70/32")]))));
        // Outside every pool: the cluster does not route it.
        assert!(!cluster.update_workload("x/p3", Some(("c", &[net("192.0.2.1/32")]))));
        // The same again changes nothing.
        assert!(!cluster.update_workload("x/p2", Some(("a", &[net("10.90.0.70/32")]))));
        assert_eq!(
            cluster.borrowed_addresses(),
            vec![(net("10.90.0.70/32"), "a".to_string())]
        );
        // Its node claims that block later (the affinity moves): no longer borrowed.
        let mut moved = cluster.clone();
        let affinity = Object {
            spec: BlockAffinitySpec {
                state: Some("confirmed".into()),
                node: Some("a".into()),
                cidr: Some(Cidr(net("10.90.0.64/26"))),
                ..BlockAffinitySpec::default()
            },
            ..Object::default()
        };
        moved.update(
            Kind::BlockAffinity,
            "a1",
            Some(Resource::BlockAffinity(affinity)),
        );
        assert!(moved.borrowed_addresses().is_empty());
        // Gone: nothing borrowed.
        assert!(cluster.update_workload("x/p2", None));
        assert!(!cluster.update_workload("x/p2", None));
        assert!(cluster.borrowed_addresses().is_empty());
    }

    /// A start lists WorkloadEndpoints before IPPools and BlockAffinities: what they borrow
    /// is known once those arrive, without the endpoints coming again.
    #[test]
    fn endpoints_listed_before_pools_and_affinities_are_borrowers_once_those_come() {
        let net = |t: &str| -> IpNet { t.parse().unwrap() };
        let mut early = Cluster::default();
        assert!(!early.update_workload("x/p1", Some(("a", &[net("10.90.0.70/32")]))));
        assert!(!early.update_workload("x/p2", Some(("b", &[net("10.90.0.71/32")]))));
        assert!(early.borrowed_addresses().is_empty(), "no pools yet");
        let late = cluster(POOL, &[("a", "10.90.0.0/26"), ("b", "10.90.0.64/26")]);
        for (name, pool) in &late.pools {
            early.update(Kind::IpPool, name, Some(Resource::IpPool(pool.clone())));
        }
        for (name, affinity) in &late.affinities {
            early.update(
                Kind::BlockAffinity,
                name,
                Some(Resource::BlockAffinity(affinity.clone())),
            );
        }
        assert_eq!(
            early.borrowed_addresses(),
            vec![(net("10.90.0.70/32"), "a".to_string())]
        );
        // The endpoint moves to b, whose block holds its address: not borrowed any more.
        assert!(early.update_workload("x/p1", Some(("b", &[net("10.90.0.70/32")]))));
        assert!(early.borrowed_addresses().is_empty());
    }
}
