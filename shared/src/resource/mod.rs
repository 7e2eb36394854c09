//! The resource model: every kind Twill accepts, with Calico's `projectcalico.org/v3` field
//! names, plus `networking.k8s.io/v1` NetworkPolicy and `v1` Namespace and Pod.
//!
//! Documents are parsed by [`document::parse_documents`], which checks each one with
//! [`validate`] and reports the document, the field path and the reason of every problem.

pub mod bgp;
pub mod config;
pub mod document;
pub mod endpoint;
pub mod fields;
pub mod ipam;
pub mod kube;
pub mod policy;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use self::bgp::{BgpConfigurationSpec, BgpFilterSpec, BgpPeerSpec};
use self::config::{FelixConfigurationSpec, KubeControllersConfigurationSpec, NodeSpec};
use self::endpoint::{HostEndpointSpec, WorkloadEndpointSpec};
use self::ipam::{
    BlockAffinitySpec, IpPoolSpec, IpReservationSpec, IpamBlockSpec, IpamConfigurationSpec,
    IpamHandleSpec,
};
use self::kube::{
    EndpointSliceSpec, KubeNetworkPolicySpec, NamespaceSpec, PodSpec, ServiceAccountSpec,
    ServiceSpec,
};
use self::policy::{
    GlobalNetworkPolicySpec, NetworkPolicySpec, NetworkSetSpec, ProfileSpec, TierSpec,
};

/// The namespace of namespaced objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Object metadata, as Kubernetes and Calico write it.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name (required).
    pub name: Option<String>,
    /// The namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// Labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations.
    pub annotations: Option<BTreeMap<String, String>>,
    /// The datastore revision the object was read at; a precondition when written back.
    pub resource_version: Option<String>,
    /// Set by the datastore client when the object is created.
    pub uid: Option<String>,
    /// Set by the datastore client when the object is created (RFC 3339).
    pub creation_timestamp: Option<String>,
    /// Kubernetes generation, kept as given.
    pub generation: Option<i64>,
}

/// A whole object: type, metadata and spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    bound(
        deserialize = "S: Deserialize<'de> + Default",
        serialize = "S: Serialize + Default + PartialEq"
    )
)]
pub struct Object<S> {
    /// API group and version.
    pub api_version: String,
    /// Kind name.
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default, skip_serializing_if = "is_default")]
    pub spec: S,
}

fn is_default<S: Default + PartialEq>(spec: &S) -> bool {
    *spec == S::default()
}

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Namespaced.
    Namespaced,
    /// Cluster-wide.
    Cluster,
}

macro_rules! kinds {
    ($($(#[$meta:meta])* $variant:ident($spec:ty) = $api:literal, $kind:literal, $plural:literal,
       $scope:ident, [$($alias:literal),*];)*) => {
        /// Every kind of resource.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $($(#[$meta])* $variant),* }

        impl Kind {
            /// All kinds.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The JSON schema of this kind's spec (for CRD manifests).
            pub fn spec_schema(self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                match self { $(Kind::$variant => generator.subschema_for::<$spec>()),* }
            }

            /// The `apiVersion` documents of this kind carry.
            pub fn api_version(self) -> &'static str {
                match self { $(Kind::$variant => $api),* }
            }

            /// The `kind` documents of this kind carry.
            pub fn name(self) -> &'static str {
                match self { $(Kind::$variant => $kind),* }
            }

            /// The plural name, unique across kinds: used in storage keys and on the command line.
            pub fn plural(self) -> &'static str {
                match self { $(Kind::$variant => $plural),* }
            }

            /// Namespaced or cluster-wide.
            pub fn scope(self) -> Scope {
                match self { $(Kind::$variant => Scope::$scope),* }
            }

            /// Other names the command line accepts.
            pub fn aliases(self) -> &'static [&'static str] {
                match self { $(Kind::$variant => &[$($alias),*]),* }
            }

            /// The kind of a document, from its `apiVersion` and `kind`.
            pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
                match (api_version, kind) {
                    $(($api, $kind) => Some(Kind::$variant),)*
                    _ => None,
                }
            }
        }

        /// One object of any kind.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Resource { $($(#[$meta])* $variant(Object<$spec>)),* }

        impl Resource {
            /// The object's kind.
            pub fn kind(&self) -> Kind {
                match self { $(Resource::$variant(_) => Kind::$variant),* }
            }

            /// The object's metadata.
            pub fn meta(&self) -> &ObjectMeta {
                match self { $(Resource::$variant(o) => &o.metadata),* }
            }

            /// The object's metadata, to change.
            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self { $(Resource::$variant(o) => &mut o.metadata),* }
            }

            /// The object as JSON.
            pub fn to_value(&self) -> serde_json::Value {
                let value = match self { $(Resource::$variant(o) => serde_json::to_value(o)),* };
                value.expect("resources serialize to JSON: all map keys are strings")
            }

            /// Decodes an object of `kind`; the error carries the path of the bad field.
            pub fn decode<'de, D: serde::Deserializer<'de>>(
                kind: Kind,
                deserializer: D,
            ) -> Result<Resource, serde_path_to_error::Error<D::Error>> {
                Ok(match kind {
                    $(Kind::$variant => Resource::$variant(serde_path_to_error::deserialize(deserializer)?)),*
                })
            }
        }
    };
}

kinds! {
    /// Calico namespaced network policy.
    NetworkPolicy(NetworkPolicySpec) = "projectcalico.org/v3", "NetworkPolicy", "networkpolicies",
        Namespaced, ["networkpolicy", "policy", "policies", "pol", "pols", "netpol", "netpols", "cnp"];
    /// Calico cluster-wide network policy.
    GlobalNetworkPolicy(GlobalNetworkPolicySpec) = "projectcalico.org/v3", "GlobalNetworkPolicy",
        "globalnetworkpolicies", Cluster, ["globalnetworkpolicy", "globalpolicy", "globalpolicies", "gnp", "gnps"];
    /// Policy tier.
    Tier(TierSpec) = "projectcalico.org/v3", "Tier", "tiers", Cluster, ["tier"];
    /// Labelled CIDRs in a namespace.
    NetworkSet(NetworkSetSpec) = "projectcalico.org/v3", "NetworkSet", "networksets", Namespaced,
        ["networkset", "netset", "netsets"];
    /// Labelled CIDRs, cluster-wide.
    GlobalNetworkSet(NetworkSetSpec) = "projectcalico.org/v3", "GlobalNetworkSet", "globalnetworksets",
        Cluster, ["globalnetworkset", "globalnetset", "globalnetsets"];
    /// A host interface under policy.
    HostEndpoint(HostEndpointSpec) = "projectcalico.org/v3", "HostEndpoint", "hostendpoints", Cluster,
        ["hostendpoint", "hep", "heps"];
    /// A workload's interface.
    WorkloadEndpoint(WorkloadEndpointSpec) = "projectcalico.org/v3", "WorkloadEndpoint",
        "workloadendpoints", Namespaced, ["workloadendpoint", "wep", "weps"];
    /// Rules and labels shared by endpoints.
    Profile(ProfileSpec) = "projectcalico.org/v3", "Profile", "profiles", Cluster, ["profile", "pro", "pros"];
    /// An address pool.
    IpPool(IpPoolSpec) = "projectcalico.org/v3", "IPPool", "ippools", Cluster, ["ippool", "ipp", "ipps", "pool", "pools"];
    /// Addresses kept out of automatic allocation.
    IpReservation(IpReservationSpec) = "projectcalico.org/v3", "IPReservation", "ipreservations",
        Cluster, ["ipreservation", "ipr", "iprs"];
    /// IPAM settings (the object named `default`).
    IpamConfiguration(IpamConfigurationSpec) = "projectcalico.org/v3", "IPAMConfiguration",
        "ipamconfigurations", Cluster, ["ipamconfiguration", "ipamconfig", "ipamconfigs"];
    /// A block of a pool and its allocations (written by IPAM only).
    IpamBlock(IpamBlockSpec) = "crd.projectcalico.org/v1", "IPAMBlock", "ipamblocks", Cluster,
        ["ipamblock"];
    /// A node's claim on a block (written by IPAM only).
    BlockAffinity(BlockAffinitySpec) = "projectcalico.org/v3", "BlockAffinity", "blockaffinities",
        Cluster, ["blockaffinity"];
    /// The blocks holding a handle's addresses (written by IPAM only).
    IpamHandle(IpamHandleSpec) = "crd.projectcalico.org/v1", "IPAMHandle", "ipamhandles", Cluster,
        ["ipamhandle"];
    /// A BGP peering.
    BgpPeer(BgpPeerSpec) = "projectcalico.org/v3", "BGPPeer", "bgppeers", Cluster, ["bgppeer", "bgpp", "bgpps", "bp", "bps"];
    /// BGP settings, global (`default`) or per node (`node.NAME`).
    BgpConfiguration(BgpConfigurationSpec) = "projectcalico.org/v3", "BGPConfiguration",
        "bgpconfigurations", Cluster, ["bgpconfiguration", "bgpconfig", "bgpconfigs"];
    /// BGP import/export filter.
    BgpFilter(BgpFilterSpec) = "projectcalico.org/v3", "BGPFilter", "bgpfilters", Cluster, ["bgpfilter"];
    /// Policy agent settings.
    FelixConfiguration(FelixConfigurationSpec) = "projectcalico.org/v3", "FelixConfiguration",
        "felixconfigurations", Cluster, ["felixconfiguration", "felixconfig", "felixconfigs"];
    /// Controller settings.
    KubeControllersConfiguration(KubeControllersConfigurationSpec) = "projectcalico.org/v3",
        "KubeControllersConfiguration", "kubecontrollersconfigurations", Cluster,
        ["kubecontrollersconfiguration", "kcc"];
    /// A node of the cluster.
    Node(NodeSpec) = "projectcalico.org/v3", "Node", "nodes", Cluster, ["node", "no"];
    /// Kubernetes NetworkPolicy.
    KubernetesNetworkPolicy(KubeNetworkPolicySpec) = "networking.k8s.io/v1", "NetworkPolicy",
        "kubernetesnetworkpolicies", Namespaced,
        ["networkpolicies.networking.k8s.io", "networkpolicy.networking.k8s.io", "kubernetesnetworkpolicy", "knp", "knps"];
    /// Kubernetes Namespace.
    Namespace(NamespaceSpec) = "v1", "Namespace", "namespaces", Cluster, ["namespace", "ns"];
    /// Kubernetes Pod.
    Pod(PodSpec) = "v1", "Pod", "pods", Namespaced, ["pod", "po"];
    /// Kubernetes ServiceAccount (its labels feed serviceAccountSelector).
    ServiceAccount(ServiceAccountSpec) = "v1", "ServiceAccount", "serviceaccounts", Namespaced,
        ["serviceaccount", "sa"];
    /// Kubernetes Service (its addresses are advertised by BGP as Calico does).
    Service(ServiceSpec) = "v1", "Service", "services", Namespaced, ["service", "svc"];
    /// Kubernetes EndpointSlice (which nodes have a Service's endpoints).
    EndpointSlice(EndpointSliceSpec) = "discovery.k8s.io/v1", "EndpointSlice", "endpointslices",
        Namespaced, ["endpointslice"];
}

impl Kind {
    /// The kind a command-line name means: plural, singular, short form or `Kind`, any case.
    pub fn from_cli_name(name: &str) -> Option<Kind> {
        let wanted = name.to_ascii_lowercase();
        Kind::ALL.iter().copied().find(|kind| {
            kind.plural() == wanted
                || kind.aliases().contains(&wanted.as_str())
                || (kind.name().eq_ignore_ascii_case(&wanted)
                    && kind.api_version() != "networking.k8s.io/v1")
        })
    }

    /// Whether the kind is namespaced.
    pub fn namespaced(self) -> bool {
        self.scope() == Scope::Namespaced
    }
}

impl fmt::Display for Kind {
    /// The kind name, qualified with its group where two kinds share a name
    /// (`NetworkPolicy.networking.k8s.io`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::KubernetesNetworkPolicy => f.write_str("NetworkPolicy.networking.k8s.io"),
            kind => f.write_str(kind.name()),
        }
    }
}

/// Identifies one object in the datastore.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The kind.
    pub kind: Kind,
    /// The namespace (namespaced kinds only).
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl Key {
    /// A key of a cluster-wide kind.
    pub fn cluster(kind: Kind, name: &str) -> Key {
        Key {
            kind,
            namespace: None,
            name: name.to_string(),
        }
    }

    /// A key of a namespaced kind.
    pub fn namespaced(kind: Kind, namespace: &str, name: &str) -> Key {
        Key {
            kind,
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl Resource {
    /// The object's name ("" when missing; validation refuses such objects).
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or("")
    }

    /// The object's namespace, for namespaced kinds.
    pub fn namespace(&self) -> Option<&str> {
        self.meta().namespace.as_deref()
    }

    /// The datastore key of the object.
    pub fn key(&self) -> Key {
        Key {
            kind: self.kind(),
            namespace: self
                .meta()
                .namespace
                .clone()
                .filter(|_| self.kind().namespaced()),
            name: self.name().to_string(),
        }
    }

    /// Fills in what Calico and Kubernetes fill in on create: the namespace (`namespace` when
    /// the object names none), and a policy's directions when it names none.
    pub fn apply_defaults(&mut self, namespace: &str) {
        if self.kind().namespaced() && self.meta().namespace.is_none() {
            self.meta_mut().namespace = Some(namespace.to_string());
        }
        match self {
            Resource::NetworkPolicy(o) => {
                let spec = &mut o.spec;
                spec.types = Some(policy::calico_policy_types(
                    spec.types.as_deref(),
                    spec.ingress.as_deref(),
                    spec.egress.as_deref(),
                ));
            }
            Resource::GlobalNetworkPolicy(o) => {
                let spec = &mut o.spec;
                spec.types = Some(policy::calico_policy_types(
                    spec.types.as_deref(),
                    spec.ingress.as_deref(),
                    spec.egress.as_deref(),
                ));
            }
            // The Kubernetes API server's defaulting.
            Resource::KubernetesNetworkPolicy(o) => {
                let spec = &mut o.spec;
                spec.policy_types = Some(policy::kubernetes_policy_types(
                    spec.policy_types.as_deref(),
                    spec.egress.as_ref().map_or(0, Vec::len),
                ));
            }
            _ => {}
        }
    }

    /// A copy without what the datastore client manages (revision, uid, creation time), to
    /// compare what the user wrote.
    pub fn without_server_fields(&self) -> Resource {
        let mut copy = self.clone();
        let meta = copy.meta_mut();
        meta.resource_version = None;
        meta.uid = None;
        meta.creation_timestamp = None;
        copy
    }
}
