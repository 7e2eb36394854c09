//! HostEndpoint and WorkloadEndpoint.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::fields::{Cidr, Ip, Protocol};

/// A named port an endpoint declares.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointPort {
    /// Port name, referenced by rules.
    pub name: Option<String>,
    /// TCP, UDP or SCTP.
    pub protocol: Option<Protocol>,
    /// Port number.
    pub port: Option<u16>,
    /// Host port mapped to it (workloads only).
    pub host_port: Option<u16>,
    /// Host IP of the mapping (workloads only).
    #[serde(rename = "hostIP")]
    pub host_ip: Option<Ip>,
}

/// `projectcalico.org/v3` HostEndpoint spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostEndpointSpec {
    /// The node the interface is on.
    pub node: Option<String>,
    /// Interface name; `*` means every interface of the node.
    pub interface_name: Option<String>,
    /// The addresses of the interface.
    #[serde(rename = "expectedIPs")]
    pub expected_ips: Option<Vec<Ip>>,
    /// Profiles applied after policy.
    pub profiles: Option<Vec<String>>,
    /// Named ports.
    pub ports: Option<Vec<EndpointPort>>,
}

/// A 1:1 NAT mapping of a workload.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpNat {
    /// The workload's address.
    #[serde(rename = "internalIP")]
    pub internal_ip: Option<Ip>,
    /// The address it is reachable at.
    #[serde(rename = "externalIP")]
    pub external_ip: Option<Ip>,
}

/// `projectcalico.org/v3` WorkloadEndpoint spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    /// Orchestrator, e.g. `k8s`.
    pub orchestrator: Option<String>,
    /// Workload name.
    pub workload: Option<String>,
    /// Node the workload runs on.
    pub node: Option<String>,
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Endpoint name, e.g. `eth0`.
    pub endpoint: Option<String>,
    /// Service account of the pod.
    pub service_account_name: Option<String>,
    /// The workload's addresses.
    pub ip_networks: Option<Vec<Cidr>>,
    /// 1:1 NAT mappings.
    #[serde(rename = "ipNATs")]
    pub ip_nats: Option<Vec<IpNat>>,
    /// IPv4 gateway the workload uses.
    pub ipv4_gateway: Option<Ip>,
    /// IPv6 gateway the workload uses.
    pub ipv6_gateway: Option<Ip>,
    /// Profiles applied after policy.
    pub profiles: Option<Vec<String>>,
    /// Host-side interface name.
    pub interface_name: Option<String>,
    /// MAC address of the workload's interface.
    pub mac: Option<String>,
    /// Named ports.
    pub ports: Option<Vec<EndpointPort>>,
    /// Source prefixes the workload may spoof.
    pub allow_spoofed_source_prefixes: Option<Vec<Cidr>>,
}
