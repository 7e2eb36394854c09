//! FelixConfiguration, KubeControllersConfiguration and Node.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::fields::{AsNumber, Cidr, Duration, Ip, Protocol, WorkloadSourceSpoofing};

/// A failsafe port: traffic that host endpoint policy never blocks.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtoPort {
    /// TCP, UDP or SCTP.
    pub protocol: Option<Protocol>,
    /// Port number.
    pub port: Option<u16>,
    /// Restrict to this CIDR.
    pub net: Option<String>,
}

/// A range of kernel routing tables.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTableRange {
    /// First table.
    pub min: Option<u32>,
    /// Last table.
    pub max: Option<u32>,
}

/// `projectcalico.org/v3` FelixConfiguration spec: the settings operators use most, Calico's
/// names and types. Flow-log settings are accepted and stored; a later component acts on them.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct FelixConfigurationSpec {
    pub log_severity_screen: Option<String>,
    pub log_severity_file: Option<String>,
    pub log_severity_sys: Option<String>,
    pub log_file_path: Option<String>,
    pub log_prefix: Option<String>,
    pub log_action_rate_limit: Option<String>,
    pub log_action_rate_limit_burst: Option<u32>,
    pub ipip_enabled: Option<bool>,
    #[serde(rename = "ipipMTU")]
    pub ipip_mtu: Option<u32>,
    pub vxlan_enabled: Option<bool>,
    #[serde(rename = "vxlanMTU")]
    pub vxlan_mtu: Option<u32>,
    #[serde(rename = "vxlanMTUV6")]
    pub vxlan_mtu_v6: Option<u32>,
    pub vxlan_port: Option<u16>,
    #[serde(rename = "vxlanVNI")]
    pub vxlan_vni: Option<u32>,
    pub wireguard_enabled: Option<bool>,
    #[serde(rename = "wireguardMTU")]
    pub wireguard_mtu: Option<u32>,
    pub bpf_enabled: Option<bool>,
    pub bpf_log_level: Option<String>,
    pub nftables_mode: Option<String>,
    pub iptables_backend: Option<String>,
    pub iptables_refresh_interval: Option<Duration>,
    pub iptables_lock_timeout: Option<Duration>,
    pub iptables_post_write_check_interval: Option<Duration>,
    pub iptables_mark_mask: Option<u32>,
    pub ipsets_refresh_interval: Option<Duration>,
    pub route_refresh_interval: Option<Duration>,
    pub interface_refresh_interval: Option<Duration>,
    pub reporting_interval: Option<Duration>,
    pub netlink_timeout: Option<Duration>,
    pub default_endpoint_to_host_action: Option<String>,
    pub chain_insert_mode: Option<String>,
    pub iptables_filter_allow_action: Option<String>,
    pub iptables_filter_deny_action: Option<String>,
    pub iptables_mangle_allow_action: Option<String>,
    pub failsafe_inbound_host_ports: Option<Vec<ProtoPort>>,
    pub failsafe_outbound_host_ports: Option<Vec<ProtoPort>>,
    pub health_enabled: Option<bool>,
    pub health_host: Option<String>,
    pub health_port: Option<u16>,
    pub prometheus_metrics_enabled: Option<bool>,
    pub prometheus_metrics_host: Option<String>,
    pub prometheus_metrics_port: Option<u16>,
    pub prometheus_go_metrics_enabled: Option<bool>,
    pub prometheus_process_metrics_enabled: Option<bool>,
    pub flow_logs_flush_interval: Option<Duration>,
    pub flow_logs_enable_network_sets: Option<bool>,
    pub flow_logs_enable_host_endpoint: Option<bool>,
    pub flow_logs_file_enabled: Option<bool>,
    pub flow_logs_file_include_labels: Option<bool>,
    pub flow_logs_file_include_policies: Option<bool>,
    pub flow_logs_file_include_service: Option<bool>,
    pub flow_logs_file_aggregation_kind_for_allowed: Option<u32>,
    pub flow_logs_file_aggregation_kind_for_denied: Option<u32>,
    pub flow_logs_collector_debug_trace: Option<bool>,
    pub dns_logs_flush_interval: Option<Duration>,
    pub dns_logs_file_enabled: Option<bool>,
    pub nat_outgoing_address: Option<Ip>,
    pub nat_port_range: Option<String>,
    pub device_route_source_address: Option<Ip>,
    pub device_route_protocol: Option<u32>,
    pub remove_external_routes: Option<bool>,
    pub route_table_range: Option<RouteTableRange>,
    pub route_table_ranges: Option<Vec<RouteTableRange>>,
    pub route_source: Option<String>,
    pub interface_prefix: Option<String>,
    pub interface_exclude: Option<String>,
    pub mtu_iface_pattern: Option<String>,
    pub policy_sync_path_prefix: Option<String>,
    pub floating_ips: Option<String>,
    pub xdp_enabled: Option<bool>,
    #[serde(rename = "genericXDPEnabled")]
    pub generic_xdp_enabled: Option<bool>,
    pub endpoint_reporting_enabled: Option<bool>,
    pub endpoint_reporting_delay: Option<Duration>,
    pub service_loop_prevention: Option<String>,
    pub ipv6_support: Option<bool>,
    pub feature_detect_override: Option<String>,
    #[serde(rename = "allowVXLANPacketsFromWorkloads")]
    pub allow_vxlan_packets_from_workloads: Option<bool>,
    #[serde(rename = "allowIPIPPacketsFromWorkloads")]
    pub allow_ipip_packets_from_workloads: Option<bool>,
    pub aws_src_dst_check: Option<String>,
    pub kube_node_port_ranges: Option<Vec<String>>,
    pub external_nodes_cidr_list: Option<Vec<String>>,
    pub debug_memory_profile_path: Option<String>,
    pub disable_conntrack_invalid_check: Option<bool>,
    pub workload_source_spoofing: Option<WorkloadSourceSpoofing>,
    pub usage_reporting_enabled: Option<bool>,
    pub bpf_external_service_mode: Option<String>,
    pub bpf_kube_proxy_iptables_cleanup_enabled: Option<bool>,
}

/// Per-controller settings with a reconcile period.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReconcilerSettings {
    /// How often to reconcile.
    pub reconciler_period: Option<Duration>,
}

/// Automatic host endpoints.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AutoHostEndpoints {
    /// Enabled or Disabled.
    pub auto_create: Option<String>,
}

/// The node controller's settings.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeControllerSettings {
    /// How often to reconcile.
    pub reconciler_period: Option<Duration>,
    /// Enabled or Disabled.
    pub sync_labels: Option<String>,
    /// Automatic host endpoints.
    pub host_endpoint: Option<AutoHostEndpoints>,
    /// How long an address may look leaked before it is reclaimed.
    pub leak_grace_period: Option<Duration>,
}

/// Load-balancer controller settings.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// AllServices or RequestedServicesOnly.
    #[serde(rename = "assignIPs")]
    pub assign_ips: Option<String>,
}

/// Which controllers run, with their settings.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Controllers {
    /// Node controller.
    pub node: Option<NodeControllerSettings>,
    /// Policy controller.
    pub policy: Option<ReconcilerSettings>,
    /// Workload endpoint controller.
    pub workload_endpoint: Option<ReconcilerSettings>,
    /// Service account controller.
    pub service_account: Option<ReconcilerSettings>,
    /// Namespace controller.
    pub namespace: Option<ReconcilerSettings>,
    /// Load-balancer controller.
    pub load_balancer: Option<LoadBalancerSettings>,
}

/// `projectcalico.org/v3` KubeControllersConfiguration spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeControllersConfigurationSpec {
    /// Log level.
    pub log_severity_screen: Option<String>,
    /// Enabled or Disabled.
    pub health_checks: Option<String>,
    /// How often to compact etcd.
    pub etcd_v3_compaction_period: Option<Duration>,
    /// Metrics port (0 disables).
    pub prometheus_metrics_port: Option<u16>,
    /// Profiling port (0 disables).
    pub debug_profile_port: Option<u16>,
    /// Controllers and their settings.
    pub controllers: Option<Controllers>,
}

/// A node's BGP settings.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeBgpSpec {
    /// AS number of this node (default: the global one).
    pub as_number: Option<AsNumber>,
    /// IPv4 address and subnet, e.g. `198.18.0.1/24`.
    pub ipv4_address: Option<Cidr>,
    /// IPv6 address and subnet.
    pub ipv6_address: Option<Cidr>,
    /// Address of this node's IP-in-IP tunnel.
    #[serde(rename = "ipv4IPIPTunnelAddr")]
    pub ipv4_ipip_tunnel_addr: Option<Ip>,
    /// Route reflector cluster ID; set makes this node a route reflector.
    #[serde(rename = "routeReflectorClusterID")]
    pub route_reflector_cluster_id: Option<Ip>,
}

/// Orchestrator reference.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OrchRef {
    /// Node name in the orchestrator.
    pub node_name: Option<String>,
    /// Orchestrator, e.g. `k8s`.
    pub orchestrator: Option<String>,
}

/// A node address.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeAddress {
    /// The address.
    pub address: Option<String>,
    /// InternalIP, ExternalIP, CalicoNodeIP.
    #[serde(rename = "type")]
    pub address_type: Option<String>,
}

/// `projectcalico.org/v3` Node spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// BGP settings.
    pub bgp: Option<NodeBgpSpec>,
    /// Address of this node's IPv4 VXLAN tunnel.
    #[serde(rename = "ipv4VXLANTunnelAddr")]
    pub ipv4_vxlan_tunnel_addr: Option<Ip>,
    /// MAC address of this node's IPv4 VXLAN device.
    #[serde(rename = "vxlanTunnelMACAddr")]
    pub vxlan_tunnel_mac_addr: Option<String>,
    /// Address of this node's IPv6 VXLAN tunnel.
    #[serde(rename = "ipv6VXLANTunnelAddr")]
    pub ipv6_vxlan_tunnel_addr: Option<Ip>,
    /// MAC address of this node's IPv6 VXLAN device.
    #[serde(rename = "vxlanTunnelMACAddrV6")]
    pub vxlan_tunnel_mac_addr_v6: Option<String>,
    /// Orchestrator references.
    pub orch_refs: Option<Vec<OrchRef>>,
    /// Node addresses.
    pub addresses: Option<Vec<NodeAddress>>,
}
