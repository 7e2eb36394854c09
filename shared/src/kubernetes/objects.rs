//! Objects between Twill's stored form and the Kubernetes API's (pure).
//!
//! - [`from_api`] / [`to_api`]: a custom resource or a Kubernetes kind, both ways: the
//!   metadata the API server manages is dropped on the way in (revisions travel beside the
//!   value, as on every backend), kinds whose Twill `apiVersion` differs are renamed.
//! - [`workload_endpoint_of_pod`], [`namespace_profile`], [`service_account_profile`],
//!   [`node_of`]: what Calico derives from Kubernetes objects, read the way Calico reads them.

use serde_json::{json, Map, Value};

use super::{host_interface, served, workload_endpoint_name, Served};
use crate::resource::Kind;

/// The host interface prefix of Twill's CNI plugin (Calico's is `cali`).
pub const INTERFACE_PREFIX: &str = "tw";

/// The annotations Twill's (and Calico's) CNI plugin writes on a Pod.
pub const POD_IP_ANNOTATION: &str = "cni.projectcalico.org/podIP";
/// All the pod's addresses, comma-separated CIDRs.
pub const POD_IPS_ANNOTATION: &str = "cni.projectcalico.org/podIPs";
/// The container the addresses belong to.
pub const CONTAINER_ID_ANNOTATION: &str = "cni.projectcalico.org/containerID";

/// The Node annotations Calico keeps its per-node settings in.
pub mod node_annotations {
    /// IPv4 address with its subnet (`198.18.0.11/24`).
    pub const IPV4_ADDRESS: &str = "projectcalico.org/IPv4Address";
    /// IPv6 address with its subnet.
    pub const IPV6_ADDRESS: &str = "projectcalico.org/IPv6Address";
    /// The node's AS number.
    pub const AS_NUMBER: &str = "projectcalico.org/ASNumber";
    /// The IPv4 VXLAN tunnel address.
    pub const IPV4_VXLAN: &str = "projectcalico.org/IPv4VXLANTunnelAddr";
    /// The IPv4 VXLAN device's MAC.
    pub const VXLAN_MAC: &str = "projectcalico.org/VXLANTunnelMACAddr";
    /// The IPv6 VXLAN tunnel address.
    pub const IPV6_VXLAN: &str = "projectcalico.org/IPv6VXLANTunnelAddr";
    /// The IPv6 VXLAN device's MAC.
    pub const VXLAN_MAC_V6: &str = "projectcalico.org/VXLANTunnelMACAddrV6";
    /// The IP-in-IP tunnel address.
    pub const IPV4_IPIP: &str = "projectcalico.org/IPv4IPIPTunnelAddr";
    /// A route reflector's cluster ID.
    pub const RR_CLUSTER_ID: &str = "projectcalico.org/RouteReflectorClusterID";
}

/// The metadata Twill keeps (the rest is the API server's: resourceVersion travels beside
/// the value, managedFields and the like are its own business).
fn kept_metadata(metadata: &Value) -> Value {
    let mut kept = Map::new();
    for field in [
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "creationTimestamp",
    ] {
        if let Some(value) = metadata.get(field).filter(|v| !v.is_null()) {
            kept.insert(field.to_string(), value.clone());
        }
    }
    Value::Object(kept)
}

/// Only `fields` of `object`, those present.
fn only(object: &Value, fields: &[&str]) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|f| {
            Some((
                f.to_string(),
                object.get(*f).filter(|v| !v.is_null())?.clone(),
            ))
        })
        .collect()
}

/// The revision of an API object (its resourceVersion: etcd's revision of its last write).
pub fn revision_of(object: &Value) -> Option<i64> {
    object["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

/// A Pod as Twill's resource model holds it: what networking needs of its spec.
fn pod_spec(spec: &Value) -> Value {
    let container = |c: &Value| {
        let mut kept = only(c, &["name", "image", "command", "args", "imagePullPolicy"]);
        if let Some(ports) = c["ports"].as_array() {
            let ports: Vec<Value> = ports
                .iter()
                .map(|p| {
                    Value::Object(only(
                        p,
                        &["containerPort", "name", "protocol", "hostPort", "hostIP"],
                    ))
                })
                .collect();
            kept.insert("ports".into(), Value::Array(ports));
        }
        if let Some(env) = c["env"].as_array() {
            let env: Vec<Value> = env
                .iter()
                .filter(|e| e.get("valueFrom").is_none())
                .map(|e| Value::Object(only(e, &["name", "value"])))
                .collect();
            kept.insert("env".into(), Value::Array(env));
        }
        Value::Object(kept)
    };
    let mut kept = only(spec, &["nodeName", "serviceAccountName", "hostNetwork"]);
    let containers: Vec<Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(container)
        .collect();
    kept.insert("containers".into(), Value::Array(containers));
    Value::Object(kept)
}

/// An object of `kind` as the API server returned it, in Twill's stored form.
pub fn from_api(kind: Kind, object: &Value) -> Value {
    let mut value = Map::new();
    value.insert("apiVersion".into(), json!(kind.api_version()));
    value.insert("kind".into(), json!(kind.name()));
    value.insert("metadata".into(), kept_metadata(&object["metadata"]));
    match kind {
        Kind::Pod => {
            value.insert("spec".into(), pod_spec(&object["spec"]));
        }
        Kind::Namespace => {
            let spec = only(&object["spec"], &["finalizers"]);
            if !spec.is_empty() {
                value.insert("spec".into(), Value::Object(spec));
            }
        }
        Kind::Service => {
            value.insert("spec".into(), service_spec(object));
        }
        Kind::EndpointSlice => {
            value.insert("spec".into(), endpoint_slice_spec(object));
        }
        // A ServiceAccount has no spec: its fields sit beside the metadata, and the model
        // keeps them under `spec` (as the document parser does).
        Kind::ServiceAccount => {
            let spec = only(
                object,
                &[
                    "automountServiceAccountToken",
                    "secrets",
                    "imagePullSecrets",
                ],
            );
            if !spec.is_empty() {
                value.insert("spec".into(), Value::Object(spec));
            }
        }
        _ => {
            if let Some(spec) = object.get("spec").filter(|s| !s.is_null()) {
                value.insert("spec".into(), spec.clone());
            }
        }
    }
    Value::Object(value)
}

/// A stored value of `kind` as the API server takes it, with `resource_version` as the
/// write's precondition (None: create, or an unconditional write).
pub fn to_api(kind: Kind, value: &Value, resource_version: Option<i64>) -> Value {
    let (api_version, api_kind) = match served(kind) {
        Served::Crd(resource) | Served::Native(resource) => (resource.api_version(), resource.kind),
        Served::Derived { .. } => (kind.api_version().to_string(), kind.name()),
    };
    let mut metadata = only(
        &value["metadata"],
        &["name", "namespace", "labels", "annotations"],
    );
    if let Some(version) = resource_version {
        metadata.insert("resourceVersion".into(), json!(version.to_string()));
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(api_kind));
    object.insert("metadata".into(), Value::Object(metadata));
    for (field, field_value) in value.as_object().into_iter().flatten() {
        if !matches!(field.as_str(), "apiVersion" | "kind" | "metadata") {
            object.insert(field.clone(), field_value.clone());
        }
    }
    // What the model keeps under `spec` goes back where Kubernetes has it.
    match kind {
        Kind::ServiceAccount | Kind::EndpointSlice => {
            if let Some(Value::Object(spec)) = object.remove("spec") {
                object.extend(spec);
            }
        }
        Kind::Service => {
            if let Some(status) = object
                .get_mut("spec")
                .and_then(Value::as_object_mut)
                .and_then(|spec| spec.remove("status"))
            {
                object.insert("status".into(), status);
            }
        }
        _ => {}
    }
    Value::Object(object)
}

/// A Pod `current` (as the API server has it) with the labels and annotations of `value`
/// (Twill's stored form): what an update of a Pod writes. The rest of a Pod is the
/// kubelet's and the scheduler's; a change of the projected spec is refused with the reason.
pub fn pod_update(current: &Value, value: &Value) -> Result<Value, String> {
    // What the API server defaulted (the account, pull policies, protocols) is not a change.
    fn within(wanted: &Value, actual: &Value) -> bool {
        match (wanted, actual) {
            (Value::Object(w), Value::Object(a)) => w
                .iter()
                .all(|(k, v)| v.is_null() || a.get(k).is_some_and(|av| within(v, av))),
            (Value::Array(w), Value::Array(a)) => {
                w.len() == a.len() && w.iter().zip(a).all(|(w, a)| within(w, a))
            }
            _ => wanted == actual,
        }
    }
    if !value["spec"].is_null() && !within(&value["spec"], &pod_spec(&current["spec"])) {
        return Err(
            "only a Pod's labels and annotations can change here; its spec is the API server's"
                .into(),
        );
    }
    let mut merged = current.clone();
    for field in ["labels", "annotations"] {
        let new = value["metadata"][field].clone();
        match merged["metadata"].as_object_mut() {
            Some(metadata) if new.is_null() => {
                metadata.remove(field);
            }
            Some(metadata) => {
                metadata.insert(field.into(), new);
            }
            None => {}
        }
    }
    Ok(merged)
}

/// The spec fields of a Service the model holds.
const SERVICE_FIELDS: &[&str] = &[
    "type",
    "clusterIP",
    "clusterIPs",
    "externalIPs",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "loadBalancerIP",
    "selector",
    "ports",
    "ipFamilies",
    "ipFamilyPolicy",
    "sessionAffinity",
    "sessionAffinityConfig",
    "externalName",
    "publishNotReadyAddresses",
    "healthCheckNodePort",
    "allocateLoadBalancerNodePorts",
    "loadBalancerClass",
    "loadBalancerSourceRanges",
    "trafficDistribution",
];

/// A Service as the model holds it: its spec, with its status's load balancer under
/// `spec.status`.
fn service_spec(object: &Value) -> Value {
    let mut spec = only(&object["spec"], SERVICE_FIELDS);
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            *port = Value::Object(only(
                port,
                &[
                    "name",
                    "protocol",
                    "port",
                    "targetPort",
                    "nodePort",
                    "appProtocol",
                ],
            ));
        }
    }
    let status = only(&object["status"], &["loadBalancer"]);
    if !status.is_empty() {
        spec.insert("status".into(), Value::Object(status));
    }
    Value::Object(spec)
}

/// An EndpointSlice as the model holds it: its fields under `spec`, each endpoint's fields
/// that the model knows.
fn endpoint_slice_spec(object: &Value) -> Value {
    let mut spec = only(object, &["addressType", "ports"]);
    if let Some(endpoints) = object["endpoints"].as_array() {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                Value::Object(only(
                    e,
                    &[
                        "addresses",
                        "conditions",
                        "nodeName",
                        "hostname",
                        "targetRef",
                        "zone",
                        "hints",
                    ],
                ))
            })
            .collect();
        spec.insert("endpoints".into(), Value::Array(endpoints));
    }
    Value::Object(spec)
}

/// The addresses of a pod as CIDRs (`/32`, `/128`): the CNI plugin's annotations (podIPs,
/// else podIP), else `status.podIPs`.
fn pod_addresses(pod: &Value) -> Vec<String> {
    let annotations = &pod["metadata"]["annotations"];
    let host = |text: &str| -> Option<String> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            return Some(ipnet::IpNet::from(net.addr()).to_string());
        }
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|a| ipnet::IpNet::from(a).to_string())
    };
    if let Some(list) = annotations[POD_IPS_ANNOTATION].as_str() {
        let addresses: Vec<String> = list.split(',').filter_map(host).collect();
        if !addresses.is_empty() {
            return addresses;
        }
    }
    if let Some(address) = annotations[POD_IP_ANNOTATION].as_str().and_then(host) {
        return vec![address];
    }
    pod["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| host(ip["ip"].as_str()?))
        .collect()
}

/// The WorkloadEndpoint Calico derives from a Pod (stored form), or None for a pod that has
/// none: host-network pods, pods not yet on a node or with no address, finished pods.
pub fn workload_endpoint_of_pod(pod: &Value) -> Option<Value> {
    let spec = &pod["spec"];
    if spec["hostNetwork"] == json!(true) {
        return None;
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        return None;
    }
    let node = spec["nodeName"].as_str().filter(|n| !n.is_empty())?;
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str()?;
    let addresses = pod_addresses(pod);
    if addresses.is_empty() {
        return None;
    }
    let mut labels: Map<String, Value> = pod["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert("projectcalico.org/namespace".into(), json!(namespace));
    labels.insert("projectcalico.org/orchestrator".into(), json!("k8s"));
    let mut profiles = vec![format!("kns.{namespace}")];
    let account = spec["serviceAccountName"]
        .as_str()
        .filter(|a| !a.is_empty() && a.len() < 63);
    if let Some(account) = account {
        labels.insert("projectcalico.org/serviceaccount".into(), json!(account));
        profiles.push(format!("ksa.{namespace}.{account}"));
    }
    let ports: Vec<Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().into_iter().flatten())
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
                return None;
            }
            Some(json!({"name": p["name"].as_str()?, "protocol": protocol,
                "port": p["containerPort"].as_u64()?}))
        })
        .collect();
    let mut wep_spec = json!({
        "orchestrator": "k8s",
        "node": node,
        "pod": name,
        "endpoint": "eth0",
        "ipNetworks": addresses,
        "profiles": profiles,
        "interfaceName": host_interface(INTERFACE_PREFIX, &format!("{namespace}.{name}")),
    });
    if let Some(container) = pod["metadata"]["annotations"][CONTAINER_ID_ANNOTATION].as_str() {
        wep_spec["containerID"] = json!(container);
    }
    if let Some(account) = account {
        wep_spec["serviceAccountName"] = json!(account);
    }
    if !ports.is_empty() {
        wep_spec["ports"] = json!(ports);
    }
    let mut metadata = json!({
        "name": workload_endpoint_name([node, "k8s", name, "eth0"]),
        "namespace": namespace,
        "labels": labels,
    });
    if let Some(uid) = pod["metadata"]["uid"].as_str() {
        metadata["uid"] = json!(uid);
    }
    Some(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": metadata,
        "spec": wep_spec,
    }))
}

fn prefixed_labels(object: &Value, prefix: &str, name: &str) -> Map<String, Value> {
    let mut labels: Map<String, Value> = object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect();
    labels.insert(format!("{prefix}projectcalico.org/name"), json!(name));
    labels
}

/// The profile `kns.<name>` of a Namespace: allow both ways, its labels as `pcns.*`.
pub fn namespace_profile(namespace: &Value) -> Option<Value> {
    let name = namespace["metadata"]["name"].as_str()?;
    Some(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "Profile",
        "metadata": {"name": format!("kns.{name}")},
        "spec": {
            "ingress": [{"action": "Allow"}],
            "egress": [{"action": "Allow"}],
            "labelsToApply": prefixed_labels(namespace, "pcns.", name),
        },
    }))
}

/// The profile `ksa.<namespace>.<name>` of a ServiceAccount: its labels as `pcsa.*`, no rules.
pub fn service_account_profile(account: &Value) -> Option<Value> {
    let name = account["metadata"]["name"].as_str()?;
    let namespace = account["metadata"]["namespace"].as_str()?;
    Some(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "Profile",
        "metadata": {"name": format!("ksa.{namespace}.{name}")},
        "spec": {"labelsToApply": prefixed_labels(account, "pcsa.", name)},
    }))
}

/// Twill's (Calico's) Node of a Kubernetes Node: its labels, its addresses, and the settings
/// Calico keeps in its annotations.
pub fn node_of(node: &Value) -> Option<Value> {
    use node_annotations as a;
    let name = node["metadata"]["name"].as_str()?;
    let annotations = &node["metadata"]["annotations"];
    let annotation = |key: &str| annotations[key].as_str().filter(|v| !v.is_empty());
    let mut bgp = Map::new();
    for (key, field) in [
        (a::IPV4_ADDRESS, "ipv4Address"),
        (a::IPV6_ADDRESS, "ipv6Address"),
        (a::IPV4_IPIP, "ipv4IPIPTunnelAddr"),
        (a::RR_CLUSTER_ID, "routeReflectorClusterID"),
    ] {
        if let Some(value) = annotation(key) {
            bgp.insert(field.into(), json!(value));
        }
    }
    if let Some(asn) = annotation(a::AS_NUMBER) {
        bgp.insert(
            "asNumber".into(),
            asn.parse::<u64>().map_or(json!(asn), |n| json!(n)),
        );
    }
    let mut spec = Map::new();
    if !bgp.is_empty() {
        spec.insert("bgp".into(), Value::Object(bgp));
    }
    for (key, field) in [
        (a::IPV4_VXLAN, "ipv4VXLANTunnelAddr"),
        (a::VXLAN_MAC, "vxlanTunnelMACAddr"),
        (a::IPV6_VXLAN, "ipv6VXLANTunnelAddr"),
        (a::VXLAN_MAC_V6, "vxlanTunnelMACAddrV6"),
    ] {
        if let Some(value) = annotation(key) {
            spec.insert(field.into(), json!(value));
        }
    }
    let addresses: Vec<Value> = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| matches!(a["type"].as_str(), Some("InternalIP" | "ExternalIP")))
        .map(|a| json!({"address": a["address"], "type": a["type"]}))
        .collect();
    if !addresses.is_empty() {
        spec.insert("addresses".into(), json!(addresses));
    }
    spec.insert(
        "orchRefs".into(),
        json!([{"nodeName": name, "orchestrator": "k8s"}]),
    );
    let mut metadata = json!({"name": name});
    if let Some(labels) = node["metadata"]["labels"].as_object() {
        metadata["labels"] = Value::Object(labels.clone());
    }
    Some(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "Node",
        "metadata": metadata,
        "spec": spec,
    }))
}

/// A Kubernetes Node with the settings of Twill's `node` written into its annotations (the
/// ones Calico uses; an absent setting removes its annotation) and its labels; everything
/// else as it was.
pub fn annotate_node(kubernetes_node: &Value, node: &Value) -> Value {
    use node_annotations as a;
    let mut updated = kubernetes_node.clone();
    let spec = &node["spec"];
    let settings = [
        (a::IPV4_ADDRESS, &spec["bgp"]["ipv4Address"]),
        (a::IPV6_ADDRESS, &spec["bgp"]["ipv6Address"]),
        (a::IPV4_IPIP, &spec["bgp"]["ipv4IPIPTunnelAddr"]),
        (a::RR_CLUSTER_ID, &spec["bgp"]["routeReflectorClusterID"]),
        (a::AS_NUMBER, &spec["bgp"]["asNumber"]),
        (a::IPV4_VXLAN, &spec["ipv4VXLANTunnelAddr"]),
        (a::VXLAN_MAC, &spec["vxlanTunnelMACAddr"]),
        (a::IPV6_VXLAN, &spec["ipv6VXLANTunnelAddr"]),
        (a::VXLAN_MAC_V6, &spec["vxlanTunnelMACAddrV6"]),
    ];
    let metadata = updated["metadata"]
        .as_object_mut()
        .expect("a Kubernetes object has metadata");
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    let annotations = annotations.as_object_mut().expect("made an object");
    for (key, value) in settings {
        match value {
            Value::String(text) => {
                annotations.insert(key.into(), json!(text));
            }
            Value::Number(number) => {
                annotations.insert(key.into(), json!(number.to_string()));
            }
            _ => {
                annotations.remove(key);
            }
        }
    }
    if let Some(labels) = node["metadata"]["labels"].as_object() {
        metadata.insert("labels".into(), Value::Object(labels.clone()));
    }
    updated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                         "labels": {"app": "web"}, "managedFields": [{"manager": "kubectl"}],
                         "annotations": {"cni.projectcalico.org/podIPs": "10.90.0.5/32,fd00::5/128",
                                         "cni.projectcalico.org/containerID": "c0ffee"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "api",
                     "containers": [{"name": "c", "image": "x", "resources": {},
                                     "ports": [{"containerPort": 8080, "name": "http"},
                                               {"containerPort": 53, "protocol": "UDP", "name": "dns"},
                                               {"containerPort": 9000}]}],
                     "dnsPolicy": "ClusterFirst"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.90.0.9"}]},
        })
    }

    #[test]
    fn a_pod_gives_calicos_workload_endpoint() {
        let wep = workload_endpoint_of_pod(&pod()).expect("a running pod has an endpoint");
        // Calico's name: node-1 → node--1, web-1 → web--1.
        assert_eq!(wep["metadata"]["name"], "node--1-k8s-web--1-eth0");
        assert_eq!(wep["metadata"]["namespace"], "shop");
        assert_eq!(wep["metadata"]["labels"]["app"], "web");
        assert_eq!(
            wep["metadata"]["labels"]["projectcalico.org/namespace"],
            "shop"
        );
        assert_eq!(
            wep["metadata"]["labels"]["projectcalico.org/serviceaccount"],
            "api"
        );
        // The CNI plugin's annotation wins over the kubelet's status.
        assert_eq!(
            wep["spec"]["ipNetworks"],
            json!(["10.90.0.5/32", "fd00::5/128"])
        );
        assert_eq!(wep["spec"]["profiles"], json!(["kns.shop", "ksa.shop.api"]));
        assert_eq!(wep["spec"]["containerID"], "c0ffee");
        // `printf shop.web-1 | sha1sum`: the same host interface the CNI plugin makes.
        assert_eq!(
            wep["spec"]["interfaceName"],
            host_interface("tw", "shop.web-1")
        );
        assert_eq!(
            wep["spec"]["ports"],
            json!([{"name": "http", "protocol": "TCP", "port": 8080},
                   {"name": "dns", "protocol": "UDP", "port": 53}])
        );
        let wep = crate::resource::Resource::decode(Kind::WorkloadEndpoint, wep);
        assert!(wep.is_ok(), "the model takes it: {wep:?}");
    }

    #[test]
    fn pods_without_an_endpoint() {
        let mut status_only = pod();
        status_only["metadata"]["annotations"] = json!({});
        assert_eq!(
            workload_endpoint_of_pod(&status_only).unwrap()["spec"]["ipNetworks"],
            json!(["10.90.0.9/32"]),
            "no annotation: the kubelet's status"
        );
        for (section, field, value) in [
            ("spec", "hostNetwork", json!(true)),
            ("status", "phase", json!("Succeeded")),
            ("status", "phase", json!("Failed")),
            ("spec", "nodeName", json!("")),
        ] {
            let mut changed = pod();
            changed[section][field] = value;
            assert_eq!(
                workload_endpoint_of_pod(&changed),
                None,
                "{section}.{field}"
            );
        }
        let mut no_address = status_only;
        no_address["status"]["podIPs"] = json!([]);
        assert_eq!(workload_endpoint_of_pod(&no_address), None);
    }

    #[test]
    fn objects_lose_the_servers_metadata_and_keep_their_kind() {
        let stored = from_api(Kind::Pod, &pod());
        assert_eq!(stored["metadata"].get("managedFields"), None);
        assert_eq!(stored["metadata"].get("resourceVersion"), None);
        assert_eq!(stored["spec"].get("dnsPolicy"), None);
        assert_eq!(stored["spec"]["containers"][0].get("resources"), None);
        assert!(crate::resource::Resource::decode(Kind::Pod, stored).is_ok());
        let block = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMBlock",
            "metadata": {"name": "10-90-0-0-26", "resourceVersion": "7", "generation": 1},
            "spec": {"cidr": "10.90.0.0/26"}});
        let stored = from_api(Kind::IpamBlock, &block);
        assert_eq!(stored["apiVersion"], Kind::IpamBlock.api_version());
        let back = to_api(Kind::IpamBlock, &stored, Some(7));
        assert_eq!(back["apiVersion"], "projectcalico.org/v3");
        assert_eq!(back["metadata"]["resourceVersion"], "7");
        assert_eq!(revision_of(&block), Some(7));
    }

    #[test]
    fn namespaces_and_accounts_give_calicos_profiles() {
        let namespace = json!({"metadata": {"name": "shop", "labels": {"team": "red"}}});
        let profile = namespace_profile(&namespace).unwrap();
        assert_eq!(profile["metadata"]["name"], "kns.shop");
        assert_eq!(profile["spec"]["labelsToApply"]["pcns.team"], "red");
        assert_eq!(
            profile["spec"]["labelsToApply"]["pcns.projectcalico.org/name"],
            "shop"
        );
        let account =
            json!({"metadata": {"name": "api", "namespace": "shop", "labels": {"tier": "b"}}});
        let profile = service_account_profile(&account).unwrap();
        assert_eq!(profile["metadata"]["name"], "ksa.shop.api");
        assert_eq!(profile["spec"]["labelsToApply"]["pcsa.tier"], "b");
        assert_eq!(profile["spec"].get("ingress"), None);
    }

    #[test]
    fn node_annotations_both_ways() {
        let kubernetes = json!({"metadata": {"name": "node-1", "labels": {"rack": "a"},
            "annotations": {"projectcalico.org/IPv4Address": "198.18.0.11/24",
                            "projectcalico.org/ASNumber": "64512", "other": "kept"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"},
                                     {"type": "Hostname", "address": "node-1"}]}});
        let node = node_of(&kubernetes).unwrap();
        assert_eq!(node["spec"]["bgp"]["ipv4Address"], "198.18.0.11/24");
        assert_eq!(node["spec"]["bgp"]["asNumber"], 64512);
        assert_eq!(
            node["spec"]["addresses"],
            json!([{"address": "198.18.0.11", "type": "InternalIP"}])
        );
        assert!(crate::resource::Resource::decode(Kind::Node, node.clone()).is_ok());
        let mut changed = node;
        changed["spec"]["ipv4VXLANTunnelAddr"] = json!("10.90.0.1");
        changed["spec"]["bgp"]["asNumber"] = Value::Null;
        let written = annotate_node(&kubernetes, &changed);
        let annotations = &written["metadata"]["annotations"];
        assert_eq!(
            annotations["projectcalico.org/IPv4VXLANTunnelAddr"],
            "10.90.0.1"
        );
        assert_eq!(annotations.get("projectcalico.org/ASNumber"), None);
        assert_eq!(annotations["other"], "kept");
        assert_eq!(
            annotations["projectcalico.org/IPv4Address"],
            "198.18.0.11/24"
        );
    }

    /// Services, EndpointSlices and ServiceAccounts as the API server writes them (fields
    /// the model does not hold included) decode into the model, and go back as Kubernetes
    /// has them.
    #[test]
    fn services_slices_and_accounts_from_the_api_decode_and_go_back() {
        use crate::resource::Resource;
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
                     "ports": [{"port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"}],
                     "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                     "someFutureField": true},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.20.5", "ipMode": "VIP"}]},
                       "conditions": []}
        });
        let stored = from_api(Kind::Service, &service);
        let Ok(Resource::Service(decoded)) = Resource::decode(Kind::Service, stored.clone()) else {
            panic!("{stored}")
        };
        assert_eq!(
            decoded.spec.external_traffic_policy.as_deref(),
            Some("Local")
        );
        let ingress = decoded
            .spec
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap();
        assert_eq!(ingress[0].ip.as_deref(), Some("198.19.20.5"));
        let back = to_api(Kind::Service, &stored, Some(7));
        assert_eq!(
            back["status"]["loadBalancer"]["ingress"][0]["ip"],
            "198.19.20.5"
        );
        assert!(back["spec"].get("status").is_none(), "{back}");

        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.90.0.5"], "conditions": {"ready": true},
                           "nodeName": "node-1", "deprecatedTopology": {"a": "b"},
                           "targetRef": {"kind": "Pod", "name": "web-1"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        });
        let stored = from_api(Kind::EndpointSlice, &slice);
        let Ok(Resource::EndpointSlice(decoded)) =
            Resource::decode(Kind::EndpointSlice, stored.clone())
        else {
            panic!("{stored}")
        };
        let endpoints = decoded.spec.endpoints.unwrap();
        assert_eq!(endpoints[0].node_name.as_deref(), Some("node-1"));
        let back = to_api(Kind::EndpointSlice, &stored, None);
        assert_eq!(back["endpoints"][0]["addresses"][0], "10.90.0.5");
        assert_eq!(back["addressType"], "IPv4");
        assert!(back.get("spec").is_none(), "{back}");

        let account = json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "builder", "namespace": "ci"},
            "secrets": [{"name": "builder-token"}], "automountServiceAccountToken": false
        });
        let stored = from_api(Kind::ServiceAccount, &account);
        assert!(
            Resource::decode(Kind::ServiceAccount, stored.clone()).is_ok(),
            "{stored}"
        );
        let back = to_api(Kind::ServiceAccount, &stored, None);
        assert_eq!(back["secrets"][0]["name"], "builder-token");
        assert!(back.get("spec").is_none(), "{back}");
    }

    /// An update of a Pod changes its labels and annotations on the whole object; a spec
    /// as the user wrote it (the server's defaults absent) is no change; another spec is
    /// refused.
    #[test]
    fn a_pod_update_takes_labels_and_annotations_onto_the_whole_pod() {
        let current = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": "9",
                         "labels": {"app": "web"}, "annotations": {"a": "1"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "default",
                     "containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always",
                                     "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                     "resources": {}}],
                     "restartPolicy": "Always"},
            "status": {"phase": "Running"}
        });
        let value = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "api"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x",
                     "ports": [{"containerPort": 80}]}]}
        });
        let merged = pod_update(&current, &value).unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"app": "api"}));
        assert!(merged["metadata"].get("annotations").is_none());
        assert_eq!(merged["spec"]["restartPolicy"], "Always");
        assert_eq!(merged["metadata"]["resourceVersion"], "9");
        let mut moved = value.clone();
        moved["spec"]["nodeName"] = json!("node-2");
        assert!(pod_update(&current, &moved)
            .unwrap_err()
            .contains("labels and annotations"));
    }
}
