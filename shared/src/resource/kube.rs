//! Kubernetes kinds Twill reads: `networking.k8s.io/v1` NetworkPolicy, and `v1` Namespace and
//! Pod (outside Kubernetes, Namespaces feed namespaceSelector and Pods describe lab workloads).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::fields::{Cidr, KubePort, PolicyType};

/// A Kubernetes label selector.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements that must all hold.
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One requirement of a label selector.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: String,
    /// Values for In and NotIn.
    pub values: Option<Vec<String>>,
}

/// A CIDR with exceptions.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    /// The CIDR.
    pub cidr: Cidr,
    /// CIDRs inside it that do not match.
    pub except: Option<Vec<Cidr>>,
}

/// A peer of a Kubernetes policy rule.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// Pods (in the policy's namespace unless namespaceSelector is given).
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    pub ip_block: Option<IpBlock>,
}

/// A port of a Kubernetes policy rule.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// TCP (default), UDP or SCTP.
    pub protocol: Option<String>,
    /// Port number or name; absent means all ports.
    pub port: Option<KubePort>,
    /// Last port of a range starting at `port`.
    pub end_port: Option<u16>,
}

/// An ingress rule.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    /// Sources; absent or empty means any.
    pub from: Option<Vec<NetworkPolicyPeer>>,
    /// Ports; absent or empty means any.
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// An egress rule.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    /// Destinations; absent or empty means any.
    pub to: Option<Vec<NetworkPolicyPeer>>,
    /// Ports; absent or empty means any.
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// `networking.k8s.io/v1` NetworkPolicy spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeNetworkPolicySpec {
    /// Pods the policy applies to; `{}` means all pods of the namespace.
    pub pod_selector: Option<LabelSelector>,
    /// Ingress and/or Egress.
    pub policy_types: Option<Vec<PolicyType>>,
    /// Allowed ingress.
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    /// Allowed egress.
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
}

/// `v1` Namespace spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Finalizers.
    pub finalizers: Option<Vec<String>>,
}

/// `v1` ServiceAccount. Kubernetes writes these fields beside `metadata` (a ServiceAccount
/// has no spec); the parser reads them into this struct. Twill uses the labels only (they
/// feed serviceAccountSelector).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAccountSpec {
    /// Whether pods mount its token.
    pub automount_service_account_token: Option<bool>,
    /// Secrets (object references).
    pub secrets: Option<Vec<BTreeMap<String, String>>>,
    /// Image pull secrets (object references).
    pub image_pull_secrets: Option<Vec<BTreeMap<String, String>>>,
}

/// A container port.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    /// The port the container listens on.
    pub container_port: u16,
    /// A name rules can refer to.
    pub name: Option<String>,
    /// TCP (default), UDP or SCTP.
    pub protocol: Option<String>,
    /// Host port mapped to it.
    pub host_port: Option<u16>,
    /// Host IP of the mapping.
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// An environment variable.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Value.
    pub value: Option<String>,
}

/// A container of a pod.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: Option<String>,
    /// Entrypoint.
    pub command: Option<Vec<String>>,
    /// Arguments.
    pub args: Option<Vec<String>>,
    /// Ports the container serves.
    pub ports: Option<Vec<ContainerPort>>,
    /// Environment.
    pub env: Option<Vec<EnvVar>>,
    /// Pull policy.
    pub image_pull_policy: Option<String>,
}

/// `v1` Pod spec: the part that matters to networking.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    /// Containers.
    pub containers: Vec<Container>,
    /// Node the pod runs on.
    pub node_name: Option<String>,
    /// Service account.
    pub service_account_name: Option<String>,
    /// Use the node's network namespace.
    pub host_network: Option<bool>,
}

/// A port of a Service.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// The port's name.
    pub name: Option<String>,
    /// TCP (default), UDP or SCTP.
    pub protocol: Option<String>,
    /// The Service's port.
    pub port: u16,
    /// The pods' port, a number or a container port's name.
    pub target_port: Option<KubePort>,
    /// The node port (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
    /// The application protocol.
    pub app_protocol: Option<String>,
}

/// One ingress point of a load balancer.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    /// Its address.
    pub ip: Option<String>,
    /// Its host name.
    pub hostname: Option<String>,
    /// `VIP` or `Proxy`.
    pub ip_mode: Option<String>,
    /// Port statuses, kept as given.
    pub ports: Option<Vec<serde_json::Value>>,
}

/// A load balancer's status.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerStatus {
    /// Its ingress points.
    pub ingress: Option<Vec<LoadBalancerIngress>>,
}

/// A Service's status: the addresses a load-balancer controller gave it.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The load balancer.
    pub load_balancer: Option<LoadBalancerStatus>,
    /// Conditions, kept as given.
    pub conditions: Option<Vec<serde_json::Value>>,
}

/// `v1` Service: its spec, and its `status` (which Kubernetes writes beside the spec; the
/// parser moves it here). Twill reads the addresses (BGP service advertisement).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// ClusterIP (default), NodePort, LoadBalancer or ExternalName.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// The cluster address (`None` for a headless Service).
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// The cluster addresses, one per family.
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    /// Addresses outside the cluster routed to the Service.
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Vec<String>>,
    /// `Cluster` (default) or `Local`: whether external traffic may go to other nodes'
    /// endpoints.
    pub external_traffic_policy: Option<String>,
    /// `Cluster` (default) or `Local`, for traffic from inside the cluster.
    pub internal_traffic_policy: Option<String>,
    /// The requested load-balancer address (deprecated in Kubernetes, still read).
    #[serde(rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<String>,
    /// The pods it sends to.
    pub selector: Option<BTreeMap<String, String>>,
    /// Its ports.
    pub ports: Option<Vec<ServicePort>>,
    /// IPv4 and/or IPv6.
    pub ip_families: Option<Vec<String>>,
    /// SingleStack, PreferDualStack or RequireDualStack.
    pub ip_family_policy: Option<String>,
    /// None or ClientIP.
    pub session_affinity: Option<String>,
    /// Its settings, kept as given.
    pub session_affinity_config: Option<serde_json::Value>,
    /// The name an ExternalName Service stands for.
    pub external_name: Option<String>,
    /// Whether endpoints are published before they are ready.
    pub publish_not_ready_addresses: Option<bool>,
    /// The node port of the health check (`externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// Whether a LoadBalancer Service gets node ports.
    pub allocate_load_balancer_node_ports: Option<bool>,
    /// The load-balancer implementation.
    pub load_balancer_class: Option<String>,
    /// Client ranges a load balancer admits.
    pub load_balancer_source_ranges: Option<Vec<String>>,
    /// Traffic distribution preference.
    pub traffic_distribution: Option<String>,
    /// The Service's status (`status` in Kubernetes' documents).
    pub status: Option<ServiceStatus>,
}

/// The state of an endpoint.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConditions {
    /// Ready for traffic (absent: ready).
    pub ready: Option<bool>,
    /// Serving (may be terminating).
    pub serving: Option<bool>,
    /// Terminating.
    pub terminating: Option<bool>,
}

/// One endpoint of an EndpointSlice.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// Its addresses (one family, the slice's).
    pub addresses: Vec<String>,
    /// Its state.
    pub conditions: Option<EndpointConditions>,
    /// The node it is on.
    pub node_name: Option<String>,
    /// Its host name.
    pub hostname: Option<String>,
    /// The object it is (a Pod), kept as given.
    pub target_ref: Option<serde_json::Value>,
    /// Its zone.
    pub zone: Option<String>,
    /// Topology hints, kept as given.
    pub hints: Option<serde_json::Value>,
}

/// A port of an EndpointSlice.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SlicePort {
    /// The Service port's name.
    pub name: Option<String>,
    /// TCP, UDP or SCTP.
    pub protocol: Option<String>,
    /// The endpoints' port.
    pub port: Option<u16>,
    /// The application protocol.
    pub app_protocol: Option<String>,
}

/// `discovery.k8s.io/v1` EndpointSlice. Kubernetes writes these fields beside `metadata`; the
/// parser reads them into this struct. The Service it belongs to is its
/// `kubernetes.io/service-name` label.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSliceSpec {
    /// IPv4, IPv6 or FQDN.
    pub address_type: Option<String>,
    /// The endpoints.
    pub endpoints: Option<Vec<SliceEndpoint>>,
    /// The ports.
    pub ports: Option<Vec<SlicePort>>,
}

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
