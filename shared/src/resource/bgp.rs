//! BGPPeer, BGPConfiguration and BGPFilter.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::fields::{AsNumber, Cidr, Duration, SelectorText};

/// A reference to a key of a Kubernetes Secret.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: Option<String>,
    /// Key within the secret.
    pub key: Option<String>,
}

/// Where a BGP password comes from.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpPassword {
    /// A key of a Secret in Twill's namespace.
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// `projectcalico.org/v3` BGPPeer spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpPeerSpec {
    /// The one node this peering is for.
    pub node: Option<String>,
    /// The nodes this peering is for (empty: all).
    pub node_selector: Option<SelectorText>,
    /// The peer's address: `IP`, `IP:port` or `[IPv6]:port`.
    #[serde(rename = "peerIP")]
    pub peer_ip: Option<String>,
    /// The peer's AS number.
    pub as_number: Option<AsNumber>,
    /// Peer with the Twill nodes that match.
    pub peer_selector: Option<SelectorText>,
    /// Keep the original next hop (eBGP; deprecated for nextHopMode).
    pub keep_original_next_hop: Option<bool>,
    /// Auto, Self or Keep.
    pub next_hop_mode: Option<String>,
    /// TCP-MD5 password.
    pub password: Option<BgpPassword>,
    /// UseNodeIP (default) or None.
    pub source_address: Option<String>,
    /// Graceful restart time.
    pub max_restart_time: Option<Duration>,
    /// Keepalive time.
    pub keepalive_time: Option<Duration>,
    /// How many times our own AS may appear in a received path.
    #[serde(rename = "numAllowedLocalASNumbers")]
    pub num_allowed_local_as_numbers: Option<u32>,
    /// GTSM: accept only packets this many hops away.
    pub ttl_security: Option<u8>,
    /// Gateway through which the peer is reachable.
    pub reachable_by: Option<String>,
    /// BGPFilter names, applied in order.
    pub filters: Option<Vec<String>>,
    /// Local AS number for this peering.
    #[serde(rename = "localASNumber")]
    pub local_as_number: Option<AsNumber>,
    /// Peer with local workloads that match.
    pub local_workload_selector: Option<SelectorText>,
    /// Auto or Manual.
    pub reverse_peering: Option<String>,
}

/// A CIDR entry of service advertisement.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceCidr {
    /// The CIDR.
    pub cidr: Option<Cidr>,
}

/// A named community.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedCommunity {
    /// Name used in prefixAdvertisements.
    pub name: Option<String>,
    /// `aa:nn` or large `aa:nn:mm`.
    pub value: Option<String>,
}

/// Communities to attach to a prefix.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrefixAdvertisement {
    /// The prefix.
    pub cidr: Option<Cidr>,
    /// Community names or literal values.
    pub communities: Option<Vec<String>>,
}

/// `projectcalico.org/v3` BGPConfiguration spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpConfigurationSpec {
    /// Log level.
    pub log_severity_screen: Option<String>,
    /// Full mesh between nodes (default true).
    pub node_to_node_mesh_enabled: Option<bool>,
    /// Default AS number of nodes (default 64512).
    pub as_number: Option<AsNumber>,
    /// Service cluster IP ranges to advertise.
    #[serde(rename = "serviceClusterIPs")]
    pub service_cluster_ips: Option<Vec<ServiceCidr>>,
    /// Service external IP ranges to advertise.
    #[serde(rename = "serviceExternalIPs")]
    pub service_external_ips: Option<Vec<ServiceCidr>>,
    /// Service LoadBalancer IP ranges to advertise.
    #[serde(rename = "serviceLoadBalancerIPs")]
    pub service_load_balancer_ips: Option<Vec<ServiceCidr>>,
    /// BGP port (default 179).
    pub listen_port: Option<u16>,
    /// Named communities.
    pub communities: Option<Vec<NamedCommunity>>,
    /// Communities per prefix.
    pub prefix_advertisements: Option<Vec<PrefixAdvertisement>>,
    /// Password of mesh sessions.
    pub node_mesh_password: Option<BgpPassword>,
    /// Graceful restart time of mesh sessions.
    pub node_mesh_max_restart_time: Option<Duration>,
    /// None or NodeIP.
    pub bind_mode: Option<String>,
    /// Interfaces whose routes are not exported.
    pub ignored_interfaces: Option<Vec<String>>,
    /// Address local workloads peer with (IPv4).
    #[serde(rename = "localWorkloadPeeringIPV4")]
    pub local_workload_peering_ipv4: Option<String>,
    /// Address local workloads peer with (IPv6).
    #[serde(rename = "localWorkloadPeeringIPV6")]
    pub local_workload_peering_ipv6: Option<String>,
    /// Who programs cluster routes.
    pub program_cluster_routes: Option<String>,
    /// Kernel metric of normal IPv4 routes (default 1024).
    pub ipv4_normal_route_priority: Option<u32>,
    /// Kernel metric of normal IPv6 routes (default 1024).
    pub ipv6_normal_route_priority: Option<u32>,
    /// Enabled or Disabled.
    pub service_load_balancer_aggregation: Option<String>,
}

/// A prefix-length range.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrefixLength {
    /// Shortest prefix length.
    pub min: Option<u8>,
    /// Longest prefix length.
    pub max: Option<u8>,
}

/// Community values to match.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommunityMatch {
    /// `aa:nn` or `aa:nn:mm`.
    pub values: Option<Vec<String>>,
}

/// A filter operation (Calico 3.32).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterOperation {
    /// Add a community.
    pub add_community: Option<CommunityMatch>,
    /// Prepend AS numbers.
    #[serde(rename = "prependASPath")]
    pub prepend_as_path: Option<PrependAsPath>,
    /// Set the route priority.
    pub set_priority: Option<SetPriority>,
}

/// AS path prepend.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrependAsPath {
    /// AS numbers to prepend.
    pub prefix: Option<Vec<AsNumber>>,
}

/// Route priority.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPriority {
    /// Kernel metric.
    pub value: Option<u32>,
}

/// One BGPFilter rule.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpFilterRule {
    /// Prefix to compare against.
    pub cidr: Option<Cidr>,
    /// Equal, NotEqual, In or NotIn.
    pub match_operator: Option<String>,
    /// RemotePeers: only routes learned from BGP.
    pub source: Option<String>,
    /// Interface name glob.
    pub interface: Option<String>,
    /// Accept or Reject (required).
    pub action: Option<String>,
    /// Prefix-length range.
    pub prefix_length: Option<PrefixLength>,
    /// eBGP or iBGP.
    pub peer_type: Option<String>,
    /// Community match.
    pub communities: Option<CommunityMatch>,
    /// AS path prefix match.
    #[serde(rename = "asPathPrefix")]
    pub as_path_prefix: Option<Vec<AsNumber>>,
    /// Priority match.
    pub priority: Option<u32>,
    /// Operations applied on match.
    pub operations: Option<Vec<FilterOperation>>,
}

/// `projectcalico.org/v3` BGPFilter spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpFilterSpec {
    /// IPv4 export rules.
    #[serde(rename = "exportV4")]
    pub export_v4: Option<Vec<BgpFilterRule>>,
    /// IPv4 import rules.
    #[serde(rename = "importV4")]
    pub import_v4: Option<Vec<BgpFilterRule>>,
    /// IPv6 export rules.
    #[serde(rename = "exportV6")]
    pub export_v6: Option<Vec<BgpFilterRule>>,
    /// IPv6 import rules.
    #[serde(rename = "importV6")]
    pub import_v6: Option<Vec<BgpFilterRule>>,
}
