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
