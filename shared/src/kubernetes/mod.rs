//! Where each kind lives on the Kubernetes API (pure): Calico's kinds as native
//! `projectcalico.org/v3` custom resources (Calico 3.32's native CRD mode, no aggregated API
//! server), Kubernetes' own kinds as themselves, and the kinds Calico derives from Kubernetes
//! objects rather than storing (WorkloadEndpoints from Pods, Profiles from Namespaces and
//! ServiceAccounts, Nodes from Nodes).

use crate::resource::Kind;

/// The API group of Calico's custom resources.
pub const CALICO_GROUP: &str = "projectcalico.org";
/// Their version.
pub const CALICO_VERSION: &str = "v3";

/// A resource of the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiResource {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind as the API names it.
    pub kind: &'static str,
    /// Plural, as in the URL.
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl ApiResource {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// How a kind is served on the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A `projectcalico.org/v3` custom resource that Twill reads and writes.
    Crd(ApiResource),
    /// A Kubernetes kind, read and written as itself.
    Native(ApiResource),
    /// Derived from Kubernetes objects, read-only (writing one is refused with the reason).
    Derived {
        /// What it is derived from, in words.
        from: &'static str,
    },
}

fn calico(kind: Kind) -> ApiResource {
    ApiResource {
        group: CALICO_GROUP,
        version: CALICO_VERSION,
        kind: kind.name(),
        plural: kind.plural(),
        namespaced: kind.namespaced(),
    }
}

/// How `kind` is served.
pub fn served(kind: Kind) -> Served {
    let native = |group, version, api_kind, plural, namespaced| {
        Served::Native(ApiResource {
            group,
            version,
            kind: api_kind,
            plural,
            namespaced,
        })
    };
    match kind {
        Kind::WorkloadEndpoint => Served::Derived {
            from: "Pods (their addresses, labels and ports)",
        },
        Kind::Profile => Served::Derived {
            from: "Namespaces (kns.<name>) and ServiceAccounts (ksa.<namespace>.<name>)",
        },
        Kind::Node => Served::Derived {
            from: "Kubernetes Nodes and their projectcalico.org/* annotations",
        },
        Kind::KubernetesNetworkPolicy => native(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
        ),
        Kind::Namespace => native("", "v1", "Namespace", "namespaces", false),
        Kind::Pod => native("", "v1", "Pod", "pods", true),
        Kind::ServiceAccount => native("", "v1", "ServiceAccount", "serviceaccounts", true),
        Kind::Service => native("", "v1", "Service", "services", true),
        Kind::EndpointSlice => native(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
        ),
        _ => Served::Crd(calico(kind)),
    }
}

/// The kinds stored as Calico custom resources (one CRD each).
pub fn crd_kinds() -> impl Iterator<Item = Kind> {
    Kind::ALL
        .iter()
        .copied()
        .filter(|kind| matches!(served(*kind), Served::Crd(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calico_kinds_are_v3_crds_and_kubernetes_kinds_stay_native() {
        let Served::Crd(ippools) = served(Kind::IpPool) else {
            panic!("IPPool is a CRD")
        };
        assert_eq!(ippools.api_version(), "projectcalico.org/v3");
        assert_eq!(ippools.plural, "ippools");
        assert!(!ippools.namespaced);
        let Served::Crd(blocks) = served(Kind::IpamBlock) else {
            panic!("IPAMBlock is a CRD")
        };
        assert_eq!((blocks.kind, blocks.plural), ("IPAMBlock", "ipamblocks"));
        assert_eq!(blocks.api_version(), "projectcalico.org/v3");
        let Served::Native(policies) = served(Kind::KubernetesNetworkPolicy) else {
            panic!("native")
        };
        assert_eq!(policies.api_version(), "networking.k8s.io/v1");
        assert_eq!(policies.plural, "networkpolicies");
        let Served::Native(pods) = served(Kind::Pod) else {
            panic!("native")
        };
        assert_eq!(pods.api_version(), "v1");
        assert!(matches!(
            served(Kind::WorkloadEndpoint),
            Served::Derived { .. }
        ));
        assert!(
            crd_kinds().all(|k| k.api_version().starts_with("projectcalico.org/")
                || k.api_version() == "crd.projectcalico.org/v1")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Names Calico derives, shared by the CNI plugin (which makes them) and the Kubernetes datastore
// (which derives endpoints from Pods).

/// The host-side interface of a pod: `prefix` and the first 11 hex digits of SHA-1 of
/// `workload_id` (`namespace.pod`), as Calico names its `cali…` interfaces.
pub fn host_interface(prefix: &str, workload_id: &str) -> String {
    use sha1::Digest as _;
    let digest = sha1::Sha1::digest(workload_id.as_bytes());
    let mut name = String::with_capacity(prefix.len() + 11);
    name.push_str(prefix);
    for byte in digest.iter() {
        name.push_str(&format!("{byte:02x}"));
    }
    name.truncate(prefix.len() + 11);
    name
}

/// Calico's workload endpoint name: `<node>-<orchestrator>-<workload>-<endpoint>`, each `-`
/// inside a part doubled so the parts stay apart.
pub fn workload_endpoint_name(parts: [&str; 4]) -> String {
    parts
        .iter()
        .map(|part| part.replace('-', "--"))
        .collect::<Vec<_>>()
        .join("-")
}

/// The parts of a workload endpoint's name (the inverse of [`workload_endpoint_name`]): a
/// single `-` separates, `--` is a dash inside a part. None unless there are four parts.
pub fn workload_endpoint_parts(name: &str) -> Option<[String; 4]> {
    let mut parts = vec![String::new()];
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '-' {
            parts.last_mut()?.push(c);
        } else if chars.peek() == Some(&'-') {
            chars.next();
            parts.last_mut()?.push('-');
        } else {
            parts.push(String::new());
        }
    }
    parts.try_into().ok()
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn endpoint_names_split_back_into_their_parts() {
        for parts in [
            ["node-1", "k8s", "web-7f9c-x2", "eth0"],
            ["n", "k8s", "a--b", "eth0"],
            ["ip-10-0-0-1.ec2.internal", "k8s", "p", "net1"],
        ] {
            let name = workload_endpoint_name(parts);
            assert_eq!(
                workload_endpoint_parts(&name),
                Some(parts.map(String::from)),
                "{name}"
            );
        }
        // Five single dashes: six parts, not an endpoint name.
        assert_eq!(workload_endpoint_parts("node-1-k8s-web-eth0"), None);
        assert_eq!(
            workload_endpoint_parts("node--1-k8s-web-eth0").unwrap()[0],
            "node-1"
        );
    }
}

pub mod objects;
