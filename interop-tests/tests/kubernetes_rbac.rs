//! Least privilege, against a real kube-apiserver with deploy/kubernetes/rbac.yaml applied:
//! each component, authenticated as its own ServiceAccount, does its job through Twill's own
//! code and is refused everything beyond it (the API server's 403, not a check of Twill's).
//! The lab on the Kubernetes datastore also runs twill-node and the CNI plugin as these
//! accounts, through the whole policy scenario set.

#![allow(clippy::disallowed_methods)] // Tests run processes and wait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use twill_interop_tests::kube::ApiServer;
use twill_lab::kube::{CNI_ACCOUNT, CONTROLLERS_ACCOUNT, NODE_ACCOUNT};
use twill_shared::datastore::{connect, Datastore, DatastoreError};
use twill_shared::resource::{Key, Kind};

fn crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/crds")
}

async fn store_as(kubeconfig: &Path) -> Arc<dyn Datastore> {
    connect(&format!("kubernetes:{}", kubeconfig.display()))
        .await
        .expect("the API server answers")
}

/// The API server refused the call for want of permission.
fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, DatastoreError>) {
    match result {
        Err(DatastoreError::Backend { reason, .. }) if reason.starts_with("403") => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// A raw call as `kubeconfig`'s user: the HTTP status.
async fn status_of(kubeconfig: &Path, method: &str, path: &str, body: serde_json::Value) -> u16 {
    let client = twill_lab::kube::client(kubeconfig).await.unwrap();
    let request = http_request(method, path, body);
    match client.request_text(request).await {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(err) => panic!("{method} {path}: {err}"),
    }
}

fn http_request(method: &str, path: &str, body: serde_json::Value) -> http::Request<Vec<u8>> {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn policy(name: &str) -> serde_json::Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
           "metadata": {"name": name}, "spec": {"selector": "all()", "types": ["Ingress"]}})
}

/// What every component is refused: Secrets, and writing policy.
async fn no_secrets_no_policy(kubeconfig: &Path, store: &Arc<dyn Datastore>, who: &str) {
    let secrets = status_of(
        kubeconfig,
        "GET",
        "/api/v1/namespaces/twill-system/secrets",
        json!(null),
    )
    .await;
    assert_eq!(secrets, 403, "{who} lists Secrets");
    let secret = status_of(
        kubeconfig,
        "GET",
        "/api/v1/namespaces/default/secrets/bgp",
        json!(null),
    )
    .await;
    assert_eq!(secret, 403, "{who} reads a Secret");
    forbidden(
        &format!("{who} creates a GlobalNetworkPolicy"),
        store
            .create(
                &Key::cluster(Kind::GlobalNetworkPolicy, "sneaky"),
                policy("sneaky"),
            )
            .await,
    );
    forbidden(
        &format!("{who} deletes a GlobalNetworkPolicy"),
        store
            .delete(&Key::cluster(Kind::GlobalNetworkPolicy, "admins"), None)
            .await,
    );
    forbidden(
        &format!("{who} creates a Kubernetes NetworkPolicy"),
        store
            .create(
                &Key::namespaced(Kind::KubernetesNetworkPolicy, "shop", "sneaky"),
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "sneaky", "namespace": "shop"},
                       "spec": {"podSelector": {}}}),
            )
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_does_its_job_and_nothing_beyond() {
    let server = ApiServer::start(&crds()).await;
    server.install_rbac();
    let admin = connect(&format!("kubernetes:{}", server.kubeconfig().display()))
        .await
        .unwrap();
    server.kubectl(&["create", "namespace", "shop"], None);
    server.kubectl(&["create", "serviceaccount", "default", "-n", "shop"], None);
    server.kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.77.0.0/24, blockSize: 28}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: bgp, namespace: default}\nstringData: {password: s3cret}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  nodeName: node-a\n  containers: [{name: c, image: x}]\n",
        ),
    );
    admin
        .create(
            &Key::cluster(Kind::GlobalNetworkPolicy, "admins"),
            policy("admins"),
        )
        .await
        .unwrap();

    // twill-node: reads everything it enforces and routes by, and watches it; writes its
    // Node's annotations and allocates its tunnel address.
    let node_config = server.account_kubeconfig(NODE_ACCOUNT);
    let node = store_as(&node_config).await;
    let everything = node
        .list(None, None)
        .await
        .expect("twill-node lists every kind");
    let keys: Vec<String> = everything.items.iter().map(|s| s.key.to_string()).collect();
    for wanted in [
        "GlobalNetworkPolicy admins",
        "IPPool pods",
        "Node node-a",
        "Profile kns.shop",
    ] {
        assert!(keys.iter().any(|k| k == wanted), "{wanted} in {keys:?}");
    }
    let mut watch = node.watch(None, everything.revision).await.unwrap();
    admin
        .create(
            &Key::cluster(Kind::GlobalNetworkPolicy, "later"),
            policy("later"),
        )
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let batch = watch.next().await.expect("the watch goes on").unwrap();
            if batch.iter().any(|e| e.key.name == "later") {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "twill-node watches policies");
    let ipam = twill_ipam::runtime::Ipam::new(node.clone(), "node-a", None);
    let tunnel = ipam
        .assign(&twill_ipam::runtime::AssignArgs {
            handle: "vxlan-tunnel-addr-node-a".into(),
            attributes: BTreeMap::from([("node".into(), "node-a".into())]),
            ipv4: true,
            tunnel: true,
            ..Default::default()
        })
        .await
        .expect("twill-node allocates its tunnel address");
    let node_key = Key::cluster(Kind::Node, "node-a");
    let stored = node.get(&node_key).await.unwrap().expect("node-a");
    let mut value = stored.value.clone();
    value["spec"]["ipv4VXLANTunnelAddr"] = json!(tunnel.addresses[0].addr().to_string());
    node.update(&node_key, value, stored.revision)
        .await
        .expect("twill-node writes its Node's annotations");
    let annotated = server.kubectl(&["get", "node", "node-a", "-o", "json"], None);
    assert!(
        annotated.contains("projectcalico.org/IPv4VXLANTunnelAddr"),
        "{annotated}"
    );
    let pod = Key::namespaced(Kind::Pod, "shop", "web");
    forbidden(
        "twill-node annotates a Pod",
        node.annotate(
            &pod,
            &BTreeMap::from([(
                "cni.projectcalico.org/podIP".to_string(),
                Some("10.77.0.99/32".to_string()),
            )]),
            None,
        )
        .await,
    );
    forbidden(
        "twill-node creates a Pod",
        node.create(
            &Key::namespaced(Kind::Pod, "shop", "evil"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "evil", "namespace": "shop"},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        )
        .await,
    );
    forbidden(
        "twill-node deletes a Namespace",
        node.delete(&Key::cluster(Kind::Namespace, "shop"), None)
            .await,
    );
    no_secrets_no_policy(&node_config, &node, "twill-node").await;

    // The CNI plugin: reads and annotates the pod, allocates and releases its address.
    let cni_config = server.account_kubeconfig(CNI_ACCOUNT);
    let cni = store_as(&cni_config).await;
    let stored = cni
        .get(&pod)
        .await
        .unwrap()
        .expect("the CNI plugin reads the pod");
    let ipam = twill_ipam::runtime::Ipam::new(cni.clone(), "node-a", None);
    let assigned = ipam
        .assign(&twill_ipam::runtime::AssignArgs {
            handle: "k8s-pod-network.c1".into(),
            attributes: BTreeMap::from([("pod".into(), "web".into())]),
            ipv4: true,
            ..Default::default()
        })
        .await
        .expect("the CNI plugin allocates");
    cni.annotate(
        &pod,
        &BTreeMap::from([(
            "cni.projectcalico.org/podIP".to_string(),
            Some(assigned.addresses[0].to_string()),
        )]),
        Some(stored.revision),
    )
    .await
    .expect("the CNI plugin annotates the pod");
    assert_eq!(
        ipam.release_handle("k8s-pod-network.c1").await.unwrap(),
        vec![assigned.addresses[0].addr()]
    );
    forbidden("the CNI plugin deletes a Pod", cni.delete(&pod, None).await);
    let current = cni.get(&node_key).await.unwrap().expect("it reads Nodes");
    forbidden(
        "the CNI plugin writes a Node",
        cni.update(&node_key, current.value, current.revision).await,
    );
    let lists_policies = status_of(
        &cni_config,
        "GET",
        "/apis/projectcalico.org/v3/globalnetworkpolicies",
        json!(null),
    )
    .await;
    assert_eq!(
        lists_policies, 403,
        "the CNI plugin has no business reading policies"
    );
    no_secrets_no_policy(&cni_config, &cni, "the CNI plugin").await;

    // twill-kube-controllers: reads Nodes and Pods, frees IPAM objects, holds its Lease in
    // its own namespace only.
    let controllers_config = server.account_kubeconfig(CONTROLLERS_ACCOUNT);
    let controllers = store_as(&controllers_config).await;
    controllers
        .list(Some(Kind::Pod), None)
        .await
        .expect("the controllers list pods");
    controllers
        .list(Some(Kind::Node), None)
        .await
        .expect("the controllers list nodes");
    let affinities = controllers
        .list(Some(Kind::BlockAffinity), None)
        .await
        .unwrap();
    assert!(!affinities.items.is_empty(), "node-a's block affinity");
    let ipam = twill_ipam::runtime::Ipam::new(controllers.clone(), "node-a", None);
    ipam.release_handle("vxlan-tunnel-addr-node-a")
        .await
        .expect("the controllers free a handle");
    for affinity in affinities.items {
        controllers
            .delete(&affinity.key, Some(affinity.revision))
            .await
            .expect("the controllers delete a deleted node's affinity");
    }
    let lease = |namespace: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "twill-kube-controllers", "namespace": namespace},
               "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
    };
    let own = status_of(
        &controllers_config,
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/twill-system/leases",
        lease("twill-system"),
    )
    .await;
    assert_eq!(own, 200, "the controllers take their Lease");
    let elsewhere = status_of(
        &controllers_config,
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
        lease("kube-system"),
    )
    .await;
    assert_eq!(
        elsewhere, 403,
        "the controllers take no Lease outside twill-system"
    );
    forbidden(
        "the controllers annotate a Pod",
        controllers
            .annotate(
                &pod,
                &BTreeMap::from([("x".to_string(), Some("y".to_string()))]),
                None,
            )
            .await,
    );
    no_secrets_no_policy(&controllers_config, &controllers, "the controllers").await;
}
