//! The WorkloadEndpoint a pod gets (pure): its name as Calico derives it, its labels from the
//! Pod plus Calico's `projectcalico.org/*` labels, its profiles and named ports.

use std::collections::BTreeMap;

use ipnet::IpNet;
use twill_shared::resource::endpoint::{EndpointPort, WorkloadEndpointSpec};
use twill_shared::resource::fields::{Cidr, Protocol};
use twill_shared::resource::kube::PodSpec;
use twill_shared::resource::{Object, ObjectMeta, Resource};

/// Label: the pod's namespace.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Label: the orchestrator (`k8s`, or `cni` outside Kubernetes).
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";
/// Label: the pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";
/// Annotation: the CNI network the endpoint belongs to (GC touches only its own network's).
pub const NETWORK_ANNOTATION: &str = "cni.twill.io/network";

/// Who the workload is.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload<'a> {
    /// The node.
    pub node: &'a str,
    /// The pod's namespace and name (Kubernetes), if known.
    pub pod: Option<(&'a str, &'a str)>,
    /// The Pod object from the datastore, if there is one.
    pub pod_object: Option<&'a Object<PodSpec>>,
    /// The container ID.
    pub container_id: &'a str,
    /// The interface inside the pod.
    pub ifname: &'a str,
    /// The CNI network's name.
    pub network: &'a str,
}

impl Workload<'_> {
    /// The orchestrator label value.
    pub fn orchestrator(&self) -> &'static str {
        if self.pod.is_some() {
            "k8s"
        } else {
            "cni"
        }
    }

    /// The namespace of the endpoint.
    pub fn namespace(&self) -> &str {
        self.pod.map_or("default", |(namespace, _)| namespace)
    }

    /// What the host interface name is derived from: `namespace.pod`, or the container ID.
    pub fn id(&self) -> String {
        match self.pod {
            Some((namespace, pod)) => format!("{namespace}.{pod}"),
            None => self.container_id.to_string(),
        }
    }

    /// Calico's endpoint name: `<node>-<orchestrator>-<workload>-<interface>`, each `-`
    /// inside a part doubled so the parts stay apart.
    pub fn endpoint_name(&self) -> String {
        let workload = self.pod.map_or(self.container_id, |(_, pod)| pod);
        twill_shared::kubernetes::workload_endpoint_name([
            self.node,
            self.orchestrator(),
            workload,
            self.ifname,
        ])
    }
}

/// The endpoint ADD writes. `allowed_sources`: the prefixes the pod may send from besides
/// its addresses (Calico's `cni.projectcalico.org/allowedSourcePrefixes` annotation).
pub fn workload_endpoint(
    workload: &Workload<'_>,
    addresses: &[IpNet],
    host_ifname: &str,
    pod_mac: &str,
    allowed_sources: &[IpNet],
) -> Resource {
    let namespace = workload.namespace().to_string();
    let pod_spec = workload.pod_object.map(|pod| &pod.spec);
    let service_account = pod_spec.and_then(|spec| spec.service_account_name.clone());
    let mut labels: BTreeMap<String, String> = workload
        .pod_object
        .and_then(|pod| pod.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert(NAMESPACE_LABEL.into(), namespace.clone());
    labels.insert(ORCHESTRATOR_LABEL.into(), workload.orchestrator().into());
    let mut profiles = vec![format!("kns.{namespace}")];
    if let Some(account) = &service_account {
        labels.insert(SERVICE_ACCOUNT_LABEL.into(), account.clone());
        profiles.push(format!("ksa.{namespace}.{account}"));
    }
    let ports = named_ports(pod_spec);
    let spec = WorkloadEndpointSpec {
        orchestrator: Some(workload.orchestrator().into()),
        workload: None,
        node: Some(workload.node.to_string()),
        container_id: Some(workload.container_id.to_string()),
        pod: workload.pod.map(|(_, pod)| pod.to_string()),
        endpoint: Some(workload.ifname.to_string()),
        service_account_name: service_account,
        ip_networks: Some(addresses.iter().map(|a| Cidr(*a)).collect()),
        profiles: Some(profiles),
        interface_name: Some(host_ifname.to_string()),
        mac: Some(pod_mac.to_string()),
        ports: (!ports.is_empty()).then_some(ports),
        allow_spoofed_source_prefixes: (!allowed_sources.is_empty())
            .then(|| allowed_sources.iter().map(|n| Cidr(n.trunc())).collect()),
        ..WorkloadEndpointSpec::default()
    };
    Resource::WorkloadEndpoint(Object {
        api_version: "projectcalico.org/v3".into(),
        kind: "WorkloadEndpoint".into(),
        metadata: ObjectMeta {
            name: Some(workload.endpoint_name()),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                NETWORK_ANNOTATION.to_string(),
                workload.network.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec,
    })
}

/// The pod's named container ports (what rules refer to by name).
fn named_ports(spec: Option<&PodSpec>) -> Vec<EndpointPort> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            let name = port.name.clone()?;
            let protocol = port
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .parse::<Protocol>()
                .ok()?;
            Some(EndpointPort {
                name: Some(name),
                protocol: Some(protocol),
                port: Some(port.container_port),
                ..EndpointPort::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_calico() {
        // calico:libcalico-go/lib/names/workloadendpoint.go: "node-1" "k8s" "my-pod" "eth0"
        // → "node--1-k8s-my--pod-eth0".
        let workload = Workload {
            node: "node-1",
            pod: Some(("default", "my-pod")),
            pod_object: None,
            container_id: "abc",
            ifname: "eth0",
            network: "k8s-pod-network",
        };
        assert_eq!(workload.endpoint_name(), "node--1-k8s-my--pod-eth0");
        assert_eq!(workload.id(), "default.my-pod");
    }

    #[test]
    fn labels_profiles_and_named_ports_come_from_the_pod() {
        let pod: Object<PodSpec> = serde_yaml::from_str(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: x, labels: {app: web}}\n\
             spec:\n  serviceAccountName: sa1\n  containers:\n  - name: c\n    ports:\n    \
             - {containerPort: 80, name: http}\n    - {containerPort: 53, protocol: UDP, name: dns}\n    \
             - {containerPort: 9000}\n",
        )
        .unwrap();
        let workload = Workload {
            node: "n",
            pod: Some(("x", "web")),
            pod_object: Some(&pod),
            container_id: "c1",
            ifname: "eth0",
            network: "k8s-pod-network",
        };
        let Resource::WorkloadEndpoint(wep) = workload_endpoint(
            &workload,
            &["10.90.0.5/32".parse().unwrap()],
            "twabc",
            "02:00:00:00:00:01",
            &[],
        ) else {
            panic!("a workload endpoint");
        };
        let labels = wep.metadata.labels.unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[NAMESPACE_LABEL], "x");
        assert_eq!(labels[ORCHESTRATOR_LABEL], "k8s");
        assert_eq!(labels[SERVICE_ACCOUNT_LABEL], "sa1");
        assert_eq!(wep.spec.profiles.unwrap(), ["kns.x", "ksa.x.sa1"]);
        let ports = wep.spec.ports.unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].protocol, Some(Protocol::Udp));
    }
}
