//! twill-kube-controllers against a real kube-apiserver, two replicas running as the
//! twill-kube-controllers account (deploy/kubernetes/rbac.yaml): a deleted Node's addresses,
//! blocks and affinities go while a live node's stay; a handle whose pod never existed is
//! kept through the leak grace period and released after it; when the leader is killed the
//! other replica takes over and acts; at no sample do both replicas say they lead.

#![allow(clippy::disallowed_methods)] // Tests run processes, read the clock and sleep.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_interop_tests::kube::ApiServer;
use twill_interop_tests::{eventually, free_port, workspace_binary};
use twill_ipam::runtime::{AssignArgs, Ipam};
use twill_shared::datastore::{connect, Datastore};
use twill_shared::resource::{Key, Kind};

/// Leak grace period given to the controllers, seconds.
const GRACE: u64 = 8;

fn crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/crds")
}

/// A replica, killed when dropped.
struct Replica {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Replica {
    fn start(server: &ApiServer, identity: &str) -> Replica {
        let kubeconfig = server.account_kubeconfig(twill_lab::kube::CONTROLLERS_ACCOUNT);
        let port = free_port();
        let log = server.dir().join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(workspace_binary("twill-kube-controllers"))
            .arg("--datastore")
            .arg(format!("kubernetes:{}", kubeconfig.display()))
            .args(["--identity", identity])
            .args(["--health-listen", &format!("127.0.0.1:{port}")])
            .args([
                "--lease-duration",
                "4",
                "--renew-deadline",
                "3",
                "--retry-period",
                "0.5",
            ])
            .args([
                "--reconcile-period",
                "2",
                "--leak-grace-period",
                &GRACE.to_string(),
            ])
            .env("TWILL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("twill-kube-controllers starts (cargo build --workspace)");
        Replica {
            child: Some(child),
            port,
            log,
        }
    }

    /// GET path: status code and body (None: no answer).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        get(self.port, path)
    }

    /// Whether it says it leads (its `leader` gauge).
    fn leads(&self) -> Option<bool> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with("twill_kube_controllers_leader "))
            .map(|l| l.ends_with(" 1"))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(1),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    if let Err(err) = stream.read_to_string(&mut text) {
        eprintln!("GET {path}: {err} after {text:?}");
        return None;
    }
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

async fn allocate(
    store: &Arc<dyn Datastore>,
    node: &str,
    handle: &str,
    pod: Option<&str>,
) -> String {
    let mut attributes = BTreeMap::from([("node".to_string(), node.to_string())]);
    if let Some(pod) = pod {
        attributes.insert("namespace".into(), "shop".into());
        attributes.insert("pod".into(), pod.into());
    }
    let assigned = Ipam::new(store.clone(), node, None)
        .assign(&AssignArgs {
            handle: handle.into(),
            attributes,
            ipv4: true,
            tunnel: pod.is_none(),
            ..Default::default()
        })
        .await
        .unwrap();
    assigned.addresses[0].to_string()
}

/// A Pod on `node` with the CNI plugin's annotations for `address` and container `container`.
fn pod(name: &str, node: &str, address: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  annotations:\n    \
         cni.projectcalico.org/podIP: {address}\n    cni.projectcalico.org/podIPs: {address}\n    \
         cni.projectcalico.org/containerID: {container}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: x}}]\n"
    )
}

async fn exists(store: &Arc<dyn Datastore>, kind: Kind, name: &str) -> bool {
    store
        .get(&Key::cluster(kind, name))
        .await
        .unwrap()
        .is_some()
}

/// Blocks (CIDR → affinity) and affinities' nodes.
async fn blocks_and_affinities(
    store: &Arc<dyn Datastore>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let blocks = store
        .list(Some(Kind::IpamBlock), None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| {
            (
                s.value["spec"]["cidr"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s.value["spec"]["affinity"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let affinities = store
        .list(Some(Kind::BlockAffinity), None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| {
            s.value["spec"]["node"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    (blocks, affinities)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_nodes_and_leaks_are_cleaned_by_one_leader_at_a_time() {
    let server = ApiServer::start(&crds()).await;
    server.install_rbac();
    let admin = connect(&format!("kubernetes:{}", server.kubeconfig().display()))
        .await
        .unwrap();
    server.kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.77.0.0/24, blockSize: 28}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: shop}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {name: node-c}\n",
        ),
    );
    // node-a: a pod and the node's tunnel address. node-b: a live pod, and an address whose
    // pod never existed (a leak). node-c: its tunnel address.
    let a1 = allocate(&admin, "node-a", "k8s-pod-network.ca1", Some("a1")).await;
    allocate(&admin, "node-a", "vxlan-tunnel-addr-node-a", None).await;
    let b1 = allocate(&admin, "node-b", "k8s-pod-network.cb1", Some("b1")).await;
    allocate(&admin, "node-b", "k8s-pod-network.cleak", Some("never")).await;
    allocate(&admin, "node-c", "vxlan-tunnel-addr-node-c", None).await;
    server.kubectl(
        &["apply", "-f", "-"],
        Some(&pod("a1", "node-a", &a1, "ca1")),
    );
    server.kubectl(
        &["apply", "-f", "-"],
        Some(&pod("b1", "node-b", &b1, "cb1")),
    );
    let (blocks, _) = blocks_and_affinities(&admin).await;
    assert_eq!(
        blocks.values().filter(|a| *a == "host:node-a").count(),
        1,
        "{blocks:?}"
    );

    let started = Instant::now();
    let one = Replica::start(&server, "replica-1");
    let two = Replica::start(&server, "replica-2");
    // A sampler: never both leading.
    let stop = Arc::new(AtomicBool::new(false));
    let both = Arc::new(AtomicBool::new(false));
    let ports = (one.port, two.port);
    let sampler = {
        let (stop, both) = (stop.clone(), both.clone());
        std::thread::spawn(move || {
            let leads = |port| {
                get(port, "/metrics").and_then(|(_, body)| {
                    body.lines()
                        .find(|l| l.starts_with("twill_kube_controllers_leader "))
                        .map(|l| l.ends_with(" 1"))
                })
            };
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                if leads(ports.0) == Some(true) && leads(ports.1) == Some(true) {
                    both.store(true, Ordering::Relaxed);
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };
    let leader = eventually(Duration::from_secs(20), "one replica leads", || {
        let (a, b) = (one.leads(), two.leads());
        async move {
            match (a, b) {
                (Some(true), Some(false)) => Some(1),
                (Some(false), Some(true)) => Some(2),
                _ => None,
            }
        }
    })
    .await;
    for replica in [&one, &two] {
        let port = replica.port;
        eventually(
            Duration::from_secs(10),
            "both replicas live and ready",
            || async move {
                let live = get(port, "/livez").map(|r| r.0);
                let ready = get(port, "/readyz").map(|r| r.0);
                (live == Some(200) && ready == Some(200)).then_some(())
            },
        )
        .await;
    }

    // node-a goes (its pod first, as Kubernetes' pod GC would).
    // (Forced: no kubelet here confirms a graceful deletion.)
    server.kubectl(
        &[
            "delete",
            "pod",
            "a1",
            "-n",
            "shop",
            "--grace-period=0",
            "--force",
        ],
        None,
    );
    server.kubectl(&["delete", "node", "node-a"], None);
    eventually(Duration::from_secs(20), "node-a's IPAM cleaned up", || {
        let admin = admin.clone();
        async move {
            let (blocks, affinities) = blocks_and_affinities(&admin).await;
            let gone = !exists(&admin, Kind::IpamHandle, "k8s-pod-network.ca1").await
                && !exists(&admin, Kind::IpamHandle, "vxlan-tunnel-addr-node-a").await
                && !blocks.values().any(|a| a == "host:node-a")
                && !affinities.iter().any(|n| n == "node-a");
            gone.then_some(())
        }
    })
    .await;
    // node-b keeps its block, its affinity and its live pod's address.
    let (blocks, affinities) = blocks_and_affinities(&admin).await;
    assert!(blocks.values().any(|a| a == "host:node-b"), "{blocks:?}");
    assert!(affinities.iter().any(|n| n == "node-b"), "{affinities:?}");
    assert!(exists(&admin, Kind::IpamHandle, "k8s-pod-network.cb1").await);

    // The leak: kept through its grace period (counted from the first pass, after the start),
    // released after it.
    let before_grace = started + Duration::from_secs(GRACE / 2);
    if let Some(wait) = before_grace.checked_duration_since(Instant::now()) {
        tokio::time::sleep(wait).await;
    }
    assert!(
        exists(&admin, Kind::IpamHandle, "k8s-pod-network.cleak").await,
        "released before its grace period"
    );
    eventually(Duration::from_secs(30), "the leak released", || {
        let admin = admin.clone();
        async move {
            (!exists(&admin, Kind::IpamHandle, "k8s-pod-network.cleak").await).then_some(())
        }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(GRACE),
        "released after {:?}, before the {GRACE} s grace period",
        started.elapsed()
    );
    assert!(exists(&admin, Kind::IpamHandle, "k8s-pod-network.cb1").await);

    // The leader dies: the other takes over within the lease duration and acts.
    let (mut dead, survivor) = if leader == 1 { (one, two) } else { (two, one) };
    dead.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(15), "the survivor leads", || {
        let leads = survivor.leads();
        async move { (leads == Some(true)).then_some(()) }
    })
    .await;
    let takeover = killed.elapsed();
    server.kubectl(&["delete", "node", "node-c"], None);
    eventually(
        Duration::from_secs(20),
        "node-c cleaned up by the new leader",
        || {
            let admin = admin.clone();
            async move {
                let (_, affinities) = blocks_and_affinities(&admin).await;
                let gone = !exists(&admin, Kind::IpamHandle, "vxlan-tunnel-addr-node-c").await
                    && !affinities.iter().any(|n| n == "node-c");
                gone.then_some(())
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    assert!(samples > 50, "{samples} samples");
    assert!(
        !both.load(Ordering::Relaxed),
        "both replicas said they led at once"
    );
    // The lease holds 4 s after its last renewal; the survivor takes it on its next try.
    assert!(
        takeover <= Duration::from_secs(4 + 3),
        "takeover took {takeover:?}\n{}",
        survivor.log()
    );
    let lease = server.kubectl(
        &[
            "get",
            "lease",
            "twill-kube-controllers",
            "-n",
            "twill-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert_eq!(
        lease,
        if leader == 1 {
            "replica-2"
        } else {
            "replica-1"
        }
    );
    let report = twill_ipam::gc::report(admin.as_ref()).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}
