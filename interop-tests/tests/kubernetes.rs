//! Twill on a real Kubernetes API server (kube-apiserver v1.34 built from the Go module proxy,
//! on its own etcd): the CRDs generated from the resource model install and make the server
//! refuse what they can; `kubectl apply` takes every example unchanged; the `kubernetes`
//! datastore passes the datastore contract where the API can keep it (one-object
//! compare-and-swap, paginated lists, watches from a revision, 410 → relist, a restart of the
//! API server) and refuses what it cannot (multi-object transactions, writing derived kinds).

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twill_interop_tests::kube::ApiServer;
use twill_shared::datastore::{connect, Datastore, DatastoreError, EventType, Revision, TxnOp};
use twill_shared::resource::{Key, Kind};
use twill_shared::syncer::{driver, SyncStatus, Update};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop-tests is in the workspace")
        .to_path_buf()
}

fn crds() -> PathBuf {
    workspace().join("deploy/kubernetes/crds")
}

/// Every YAML file of examples/ that holds resources (not topologies).
fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for folder in ["calico-policies", "seed-walkthrough"] {
        for entry in std::fs::read_dir(workspace().join("examples").join(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_every_example_and_the_crds_refuse_what_they_can() {
    let server = ApiServer::start(&crds()).await;
    for namespace in ["backend", "frontend", "database", "production"] {
        server.kubectl(&["create", "namespace", namespace], None);
    }
    // No controller manager runs beside this API server: the account pods need is made here.
    server.kubectl(
        &["create", "serviceaccount", "default", "-n", "default"],
        None,
    );
    for file in example_files() {
        let (code, stdout, stderr) = server.kubectl_status(
            &[
                "apply",
                "--validate=strict",
                "-f",
                &file.display().to_string(),
            ],
            None,
        );
        assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
    }
    let listed = server.kubectl(&["get", "globalnetworkpolicies", "-o", "name"], None);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    // Types, enums and ports the schema knows are refused by the API server itself.
    for (document, wanted) in [
        (
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16, vxlanMode: Sometimes}\n",
            "spec.vxlanMode: Unsupported value: \"Sometimes\"",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {order: fast}\n",
            "spec.order: Invalid value: \"string\"",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: s}\nspec: {nets: [10.0.0.0/8], colour: red}\n",
            "unknown field \"spec.colour\"",
        ),
    ] {
        let (code, stdout, stderr) =
            server.kubectl_status(&["apply", "--validate=strict", "-f", "-"], Some(document));
        assert_ne!(code, 0, "accepted: {document}: {stdout}");
        assert!(stderr.contains(wanted), "{document}: {stderr}");
    }
}

async fn store_of(server: &ApiServer) -> Arc<dyn Datastore> {
    connect(&format!("kubernetes:{}", server.kubeconfig().display()))
        .await
        .expect("the API server answers")
}

fn set(name: &str, net: &str) -> (Key, serde_json::Value) {
    let key = Key::cluster(Kind::GlobalNetworkSet, name);
    let value = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
                       "metadata": {"name": name, "labels": {"set": name}}, "spec": {"nets": [net]}});
    (key, value)
}

fn spec_of(stored: &twill_shared::datastore::Stored) -> serde_json::Value {
    stored.value["spec"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_compare_and_swap_and_what_the_api_cannot_do() {
    let server = ApiServer::start(&crds()).await;
    let store = store_of(&server).await;
    let (key, value) = set("a", "198.18.0.0/24");
    assert_eq!(store.get(&key).await.unwrap(), None);
    let created = store.create(&key, value.clone()).await.unwrap();
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (spec_of(&got), got.revision),
        (value["spec"].clone(), created)
    );
    assert!(
        got.value["metadata"]["uid"].is_string(),
        "the server's uid is kept"
    );
    assert!(matches!(
        store.create(&key, value.clone()).await,
        Err(DatastoreError::AlreadyExists { .. })
    ));
    let (_, changed) = set("a", "198.18.1.0/24");
    let updated = store.update(&key, changed.clone(), created).await.unwrap();
    assert!(updated > created);
    // 409: the write was conditional on a revision the object no longer has.
    match store.update(&key, changed.clone(), created).await {
        Err(DatastoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (created, updated)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        store.delete(&key, Some(created)).await,
        Err(DatastoreError::Conflict { .. })
    ));
    store.delete(&key, Some(updated)).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert!(matches!(
        store.delete(&key, None).await,
        Err(DatastoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update(&key, value.clone(), updated).await,
        Err(DatastoreError::NotFound { .. })
    ));
    // No multi-object transaction on the Kubernetes API: refused, nothing written.
    let (b, bv) = set("b", "198.18.2.0/24");
    let (c, cv) = set("c", "198.18.3.0/24");
    match store
        .txn(vec![
            TxnOp::Create {
                key: b.clone(),
                value: bv,
            },
            TxnOp::Create { key: c, value: cv },
        ])
        .await
    {
        Err(DatastoreError::InvalidTxn { reason }) => {
            assert!(reason.contains("no multi-object transaction"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(store.get(&b).await.unwrap(), None);
    // Derived kinds are read-only, with the reason.
    let endpoint = Key::namespaced(Kind::WorkloadEndpoint, "default", "n-k8s-p-eth0");
    match store.create(&endpoint, json!({})).await {
        Err(DatastoreError::NotWritable { reason, .. }) => {
            assert!(reason.contains("Pods"), "{reason}")
        }
        other => panic!("expected NotWritable, got {other:?}"),
    }
    // Namespaced objects list per namespace and across namespaces.
    for namespace in ["prod", "dev"] {
        server.kubectl(&["create", "namespace", namespace], None);
    }
    let policy = |ns: &str, name: &str| {
        (
            Key::namespaced(Kind::NetworkPolicy, ns, name),
            json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                   "metadata": {"name": name, "namespace": ns}, "spec": {"selector": "all()"}}),
        )
    };
    for (key, value) in [policy("prod", "x"), policy("prod", "y"), policy("dev", "x")] {
        store.create(&key, value).await.unwrap();
    }
    let prod = store
        .list(Some(Kind::NetworkPolicy), Some("prod"))
        .await
        .unwrap();
    assert_eq!(
        prod.items
            .iter()
            .map(|s| s.key.name.as_str())
            .collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(
        store
            .list(Some(Kind::NetworkPolicy), None)
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    // Kubernetes' own objects come as Twill's kinds, and the profiles Calico derives.
    let everything = store.list(None, None).await.unwrap();
    let keys: Vec<String> = everything.items.iter().map(|s| s.key.to_string()).collect();
    for wanted in ["Namespace prod", "Profile kns.prod", "NetworkPolicy dev/x"] {
        assert!(keys.iter().any(|k| k == wanted), "{wanted} in {keys:?}");
    }
    // Profiles: one per Namespace, one per ServiceAccount (the API server made none here:
    // no controller manager runs), whether listed alone or with everything.
    server.kubectl(&["create", "serviceaccount", "api", "-n", "prod"], None);
    let mut expected: Vec<String> = [
        "default",
        "dev",
        "kube-node-lease",
        "kube-public",
        "kube-system",
        "prod",
    ]
    .iter()
    .map(|ns| format!("kns.{ns}"))
    .collect();
    expected.push("ksa.prod.api".into());
    expected.sort();
    let profiles = |listing: twill_shared::datastore::Listing| {
        let mut names: Vec<String> = listing
            .items
            .into_iter()
            .filter(|s| s.key.kind == Kind::Profile)
            .map(|s| s.key.name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        profiles(store.list(Some(Kind::Profile), None).await.unwrap()),
        expected
    );
    assert_eq!(profiles(store.list(None, None).await.unwrap()), expected);
    let account = store
        .get(&Key::cluster(Kind::Profile, "ksa.prod.api"))
        .await
        .unwrap()
        .expect("the account's profile");
    assert_eq!(
        account.value["spec"]["labelsToApply"]["pcsa.projectcalico.org/name"],
        "api"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_through_a_large_kind() {
    const SETS: usize = 1_100;
    let server = ApiServer::start(&crds()).await;
    let store = store_of(&server).await;
    let mut writers = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let store = store.clone();
        writers.spawn(async move {
            for i in (worker..SETS).step_by(8) {
                let (key, value) = set(&format!("s{i:04}"), "198.18.0.0/24");
                store.create(&key, value).await.unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    // 500 a page: three pages, every object once, in key order.
    let listing = store
        .list(Some(Kind::GlobalNetworkSet), None)
        .await
        .unwrap();
    let names: Vec<&str> = listing.items.iter().map(|s| s.key.name.as_str()).collect();
    let expected: Vec<String> = (0..SETS).map(|i| format!("s{i:04}")).collect();
    assert_eq!(
        names,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_revision_delivers_exactly_the_later_events() {
    let server = ApiServer::start(&crds()).await;
    let store = store_of(&server).await;
    let (a, value) = set("a", "198.18.0.0/24");
    let (b, _) = set("b", "198.18.1.0/24");
    let r1 = store.create(&a, value.clone()).await.unwrap();
    let r2 = store.create(&b, value.clone()).await.unwrap();
    let (_, changed) = set("a", "198.18.9.0/24");
    let r3 = store.update(&a, changed, r1).await.unwrap();
    store.delete(&b, None).await.unwrap();
    let r5 = store.create(&b, value.clone()).await.unwrap();
    let mut watch = store.watch(Some(Kind::GlobalNetworkSet), r2).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("events within 10 s")
            .unwrap()
            .unwrap();
        seen.extend(
            batch
                .into_iter()
                .map(|e| (e.event_type, e.key.name, e.revision)),
        );
    }
    assert_eq!(seen[0], (EventType::Modified, "a".to_string(), r3));
    assert_eq!((seen[1].0, seen[1].1.as_str()), (EventType::Deleted, "b"));
    assert!(
        seen[1].2 > r3 && seen[1].2 < r5,
        "the delete's own revision"
    );
    assert_eq!(seen[2], (EventType::Added, "b".to_string(), r5));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.next())
            .await
            .is_err(),
        "nothing more"
    );
    // A revision older than the API server's watch history: 410 Gone, list again.
    let mut stale = store.watch(Some(Kind::GlobalNetworkSet), 1).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stale.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, Err(DatastoreError::RevisionTooOld { .. })),
        "{first:?}"
    );
}

/// Applies syncer updates into a view (key → revision) and remembers every update.
struct Consumer {
    updates: tokio::sync::mpsc::Receiver<Update>,
    view: BTreeMap<Key, Revision>,
    log: Vec<Update>,
    status: Option<SyncStatus>,
}

impl Consumer {
    fn apply(&mut self, update: Update) {
        match &update {
            Update::Status(status) => self.status = Some(*status),
            Update::Changed {
                key,
                revision,
                value,
            } => match value {
                Some(_) => {
                    self.view.insert(key.clone(), *revision);
                }
                None => {
                    self.view.remove(key);
                }
            },
            Update::Revision(_) => {}
        }
        self.log.push(update);
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Consumer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            let update = tokio::time::timeout(left, self.updates.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting until {what}: {:?}", self.status))
                .expect("the syncer runs");
            self.apply(update);
        }
    }
}

fn sets_in(view: &BTreeMap<Key, Revision>) -> Vec<String> {
    view.keys()
        .filter(|k| k.kind == Kind::GlobalNetworkSet)
        .map(|k| k.name.clone())
        .collect()
}

/// A syncer on the Kubernetes datastore: in sync, then the API server is killed (the watch is
/// interrupted: WaitForDatastore) and started again on the same etcd; changes made after the
/// restart reach the consumer (its old watch history is gone: 410, relist), each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_syncer_survives_an_api_server_restart_losing_and_doubling_nothing() {
    let mut server = ApiServer::start(&crds()).await;
    let store = store_of(&server).await;
    for name in ["a", "b"] {
        let (key, value) = set(name, "198.18.0.0/24");
        store.create(&key, value).await.unwrap();
    }
    let mut consumer = Consumer {
        updates: driver::spawn(store.clone(), vec![]),
        view: BTreeMap::new(),
        log: Vec::new(),
        status: None,
    };
    consumer
        .until("in sync with a and b", |c| {
            c.status == Some(SyncStatus::InSync) && sets_in(&c.view) == ["a", "b"]
        })
        .await;
    server.kill();
    consumer
        .until("the lost API server is reported", |c| {
            c.status == Some(SyncStatus::WaitForDatastore)
        })
        .await;
    server.restart().await;
    let writer = store_of(&server).await;
    let (c, cv) = set("c", "198.18.3.0/24");
    writer.create(&c, cv).await.unwrap();
    writer
        .delete(&Key::cluster(Kind::GlobalNetworkSet, "a"), None)
        .await
        .unwrap();
    let from = consumer.log.len();
    consumer
        .until("in sync with b and c", |c| {
            c.status == Some(SyncStatus::InSync) && sets_in(&c.view) == ["b", "c"]
        })
        .await;
    let changes: Vec<(String, bool)> = consumer.log[from..]
        .iter()
        .filter_map(|u| match u {
            Update::Changed { key, value, .. } if key.kind == Kind::GlobalNetworkSet => {
                Some((key.name.clone(), value.is_some()))
            }
            _ => None,
        })
        .collect();
    let mut sorted = changes.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [("a".to_string(), false), ("c".to_string(), true)],
        "each change once, nothing else: {changes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_named_within_five_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let port = twill_interop_tests::free_port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: nobody\n  user: {{token: x}}\ncontexts:\n- name: gone\n  context: {{cluster: gone, user: nobody}}\ncurrent-context: gone\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let err = connect(&format!("kubernetes:{}", kubeconfig.display()))
        .await
        .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("cannot reach"),
        "{text}"
    );
}

fn twillctl(server: &ApiServer, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let binary = twill_interop_tests::workspace_binary("twillctl");
    assert!(
        binary.exists(),
        "{} is missing: cargo build --workspace",
        binary.display()
    );
    let mut child = std::process::Command::new(binary)
        .arg("--datastore")
        .arg(format!("kubernetes:{}", server.kubeconfig().display()))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// twillctl reads what kubectl wrote and the other way round; a file of several documents
/// that the API server refuses half-way is rolled back, and twillctl says exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twillctl_and_kubectl_read_each_others_writes_and_a_failed_apply_is_rolled_back() {
    let server = ApiServer::start(&crds()).await;
    let policy = std::fs::read_to_string(
        workspace().join("examples/calico-policies/global-deny-external.yaml"),
    )
    .unwrap();
    server.kubectl(&["apply", "-f", "-"], Some(&policy));
    let (code, stdout, stderr) = twillctl(&server, &["get", "globalnetworkpolicies"], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("deny-external-egress"), "{stdout}");
    let documents = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: from-twillctl}\nspec: {nets: [198.18.0.0/24]}\n---\n\
        apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n";
    let (code, _, stderr) = twillctl(&server, &["apply", "-f", "-"], Some(documents));
    assert_eq!(code, 0, "{stderr}");
    let listed = server.kubectl(&["get", "globalnetworksets,tiers", "-o", "name"], None);
    assert!(
        listed.contains("globalnetworkset.projectcalico.org/from-twillctl")
            && listed.contains("tier.projectcalico.org/security"),
        "{listed}"
    );
    // The second document names a namespace that does not exist: the API server refuses it
    // after the first was written; the first is rolled back.
    let half = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: first-of-two}\nspec: {nets: [198.18.1.0/24]}\n---\n\
        apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: no-such-namespace}\nspec: {selector: all()}\n";
    let (code, _, stderr) = twillctl(&server, &["apply", "-f", "-"], Some(half));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("NetworkPolicy no-such-namespace/p")
            && stderr.contains("1 written before it rolled back: GlobalNetworkSet first-of-two"),
        "{stderr}"
    );
    let (code, _, _) = server.kubectl_status(&["get", "globalnetworkset", "first-of-two"], None);
    assert_ne!(code, 0, "rolled back");
    // Derived objects: a Pod with the CNI plugin's annotations is a workload endpoint, a
    // Namespace and a ServiceAccount are profiles; twillctl shows them and refuses to write one.
    server.kubectl(&["create", "namespace", "shop"], None);
    server.kubectl(&["create", "serviceaccount", "api", "-n", "shop"], None);
    server.kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  labels: {app: web}\n  \
             annotations: {cni.projectcalico.org/podIP: 10.77.0.9/32, cni.projectcalico.org/podIPs: 10.77.0.9/32}\n\
             spec:\n  nodeName: node-a\n  serviceAccountName: api\n  containers: [{name: c, image: x}]\n",
        ),
    );
    let (code, stdout, stderr) = twillctl(&server, &["get", "workloadendpoints", "-A"], None);
    assert_eq!(code, 0, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.contains("web"))
        .unwrap_or_else(|| panic!("web in {stdout}"));
    for column in ["shop", "node-a", "10.77.0.9/32"] {
        assert!(row.contains(column), "{column} in {row}");
    }
    let (code, stdout, stderr) = twillctl(&server, &["get", "profiles"], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("kns.shop") && stdout.contains("ksa.shop.api"),
        "{stdout}"
    );
    let endpoint = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: node--a-k8s-web-eth0\n  namespace: shop\n\
        spec: {node: node-a, orchestrator: k8s, pod: web, endpoint: eth0, interfaceName: tw0123456789a}\n";
    let (code, _, stderr) = twillctl(&server, &["apply", "-f", "-"], Some(endpoint));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("WorkloadEndpoint shop/node--a-k8s-web-eth0")
            && stderr.contains("derived from Pods"),
        "{stderr}"
    );
}

/// Runs the `twill` plugin inside `node` as a runtime does; exit code and JSON output.
fn plugin(
    node: &twill_interop_tests::netns::Netns,
    command: &str,
    config: &serde_json::Value,
    container: &str,
    pod_netns: &str,
    pod: (&str, &str),
) -> (i32, serde_json::Value) {
    let binary = twill_interop_tests::workspace_binary("twill");
    let mut child = node
        .command(binary.to_str().unwrap())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/run/netns/{pod_netns}"))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.0, pod.1
            ),
        )
        .env("CNI_PATH", binary.parent().unwrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        &serde_json::to_vec(config).unwrap(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let value = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), value)
}

/// The CNI plugin on the Kubernetes datastore: ADD reads the Pod, allocates from IPAM on the
/// API server and writes Calico's address annotations on the Pod (which makes its
/// WorkloadEndpoint); DEL clears them and frees the addresses; a Pod that does not exist is a
/// clear error that leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cni_plugin_annotates_pods_on_the_kubernetes_datastore() {
    let server = ApiServer::start(&crds()).await;
    let store = store_of(&server).await;
    let node = twill_interop_tests::netns::Netns::new("kcni");
    // The API server listens on the machine's loopback: a relay makes it reachable at the same
    // address inside the node's namespace (as the lab reaches etcd).
    let address: std::net::SocketAddr =
        server.url().trim_start_matches("https://").parse().unwrap();
    let relay = tokio::spawn(twill_lab::agent::relay(
        Some(format!("/run/netns/{}", node.name()).into()),
        address,
        None,
        address,
    ));
    server.kubectl(&["create", "namespace", "shop"], None);
    server.kubectl(&["create", "serviceaccount", "default", "-n", "shop"], None);
    // The plugin runs as its own account, with the role deploy/kubernetes/rbac.yaml gives it.
    server.install_rbac();
    let kubeconfig = server.account_kubeconfig(twill_lab::kube::CNI_ACCOUNT);
    server.kubectl(
        &["apply", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.77.0.0/24, blockSize: 28}\n---\n\
              apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\n\
              spec:\n  nodeName: node-1\n  containers:\n  - name: c\n    image: twill/none\n    ports: [{containerPort: 8080, name: http}]\n"),
    );
    let lock = tempfile::tempdir().unwrap();
    let config = json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "twill",
        "datastore": "kubernetes", "kubeconfig": kubeconfig,
        "nodename": "node-1", "node_health_address": "none", "log_level": "debug",
        "log_file_path": lock.path().join("cni.log"),
        "ipam_lock_file": lock.path().join("ipam.lock"),
        "ipam": {"type": "twill-ipam"},
    });
    let pod_netns = twill_interop_tests::netns::Netns::new("kpod");
    let (code, added) = plugin(
        &node,
        "ADD",
        &config,
        "c1",
        pod_netns.name(),
        ("shop", "web"),
    );
    assert_eq!(
        code,
        0,
        "{added} (log: {})",
        std::fs::read_to_string(lock.path().join("cni.log")).unwrap_or_default()
    );
    let cidr = added["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(cidr.starts_with("10.77.0."), "{added}");
    let pod: serde_json::Value = serde_json::from_str(
        &server.kubectl(&["get", "pod", "web", "-n", "shop", "-o", "json"], None),
    )
    .unwrap();
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["cni.projectcalico.org/podIP"], cidr.as_str());
    assert_eq!(annotations["cni.projectcalico.org/podIPs"], cidr.as_str());
    assert_eq!(annotations["cni.projectcalico.org/containerID"], "c1");
    // The endpoint Twill derives from the Pod.
    let endpoints = store
        .list(Some(Kind::WorkloadEndpoint), Some("shop"))
        .await
        .unwrap();
    assert_eq!(endpoints.items.len(), 1, "{:?}", endpoints.items);
    let endpoint = &endpoints.items[0].value;
    assert_eq!(endpoint["metadata"]["name"], "node--1-k8s-web-eth0");
    assert_eq!(endpoint["spec"]["ipNetworks"], json!([cidr]));
    assert_eq!(endpoint["spec"]["containerID"], "c1");
    assert_eq!(
        endpoint["spec"]["interfaceName"],
        added["interfaces"][0]["name"]
    );
    assert_eq!(endpoint["spec"]["ports"][0]["name"], "http");
    let (code, deleted) = plugin(
        &node,
        "DEL",
        &config,
        "c1",
        pod_netns.name(),
        ("shop", "web"),
    );
    assert_eq!(code, 0, "{deleted}");
    let pod: serde_json::Value = serde_json::from_str(
        &server.kubectl(&["get", "pod", "web", "-n", "shop", "-o", "json"], None),
    )
    .unwrap();
    assert_eq!(
        pod["metadata"]["annotations"].get("cni.projectcalico.org/podIP"),
        None
    );
    assert!(store
        .list(Some(Kind::IpamHandle), None)
        .await
        .unwrap()
        .items
        .is_empty());
    // A pod the API server does not have: a clear error, nothing allocated or wired.
    let (code, refused) = plugin(
        &node,
        "ADD",
        &config,
        "c2",
        pod_netns.name(),
        ("shop", "ghost"),
    );
    assert_eq!(code, 1, "{refused}");
    assert_eq!(refused["msg"], "the pod does not exist", "{refused}");
    assert!(
        refused["details"].as_str().unwrap().contains("shop/ghost"),
        "{refused}"
    );
    assert!(store
        .list(Some(Kind::IpamHandle), None)
        .await
        .unwrap()
        .items
        .is_empty());
    let links = pod_netns.output("ip", &["-o", "link"]);
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"));
    relay.abort();
}

/// A Pod relabelled through Twill (`twillctl lab apply` on a Kubernetes lab does this): the
/// labels and annotations go onto the whole Pod, what the API server and the kubelet own
/// stays, the derived endpoint follows; a spec change and a stale revision are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_relabelled_through_twill_keeps_what_the_api_server_owns() {
    let server = ApiServer::start(&crds()).await;
    let store = store_of(&server).await;
    server.kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: v1\nkind: ServiceAccount\n\
             metadata:\n  name: default\n  namespace: shop\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  \
             namespace: shop\n  labels:\n    app: web\n  annotations:\n    cni.projectcalico.org/podIP: 10.90.0.5/32\n\
             spec:\n  nodeName: node-1\n  containers:\n  - name: c\n    image: nginx\n    ports:\n    - containerPort: 80\n      name: http\n",
        ),
    );
    let key = Key::namespaced(Kind::Pod, "shop", "web");
    let stored = store.get(&key).await.unwrap().expect("the pod");
    let mut relabelled = stored.value.clone();
    relabelled["metadata"]["labels"] = json!({"app": "web", "tier": "front"});
    let revision = store
        .update(&key, relabelled.clone(), stored.revision)
        .await
        .unwrap();
    assert!(revision > stored.revision);
    let labels = server.kubectl(
        &["get", "pod", "-n", "shop", "web", "-o", "jsonpath={.metadata.labels.tier} {.spec.restartPolicy} {.spec.serviceAccountName} {.metadata.annotations}"],
        None,
    );
    assert!(
        labels.starts_with("front Always default ") && labels.contains("10.90.0.5/32"),
        "{labels}"
    );
    let endpoint = store
        .get(&Key::namespaced(
            Kind::WorkloadEndpoint,
            "shop",
            "node--1-k8s-web-eth0",
        ))
        .await
        .unwrap()
        .expect("the derived endpoint, got by its name");
    assert_eq!(endpoint.value["metadata"]["labels"]["tier"], "front");
    // A stale revision: the server's 409, with the actual revision.
    match store
        .update(&key, relabelled.clone(), stored.revision)
        .await
    {
        Err(DatastoreError::Conflict { actual, .. }) => assert_eq!(actual, revision),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Moving the pod is not a relabel.
    let mut moved = relabelled;
    moved["spec"]["nodeName"] = json!("node-2");
    match store.update(&key, moved, revision).await {
        Err(DatastoreError::NotWritable { reason, .. }) => {
            assert!(reason.contains("labels and annotations"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
