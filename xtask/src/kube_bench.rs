//! The Kubernetes datastore against the etcd one, side by side in one run: creates and
//! compare-and-swap per second with 1 and 8 clients and watch latency; IPAM allocations per
//! second with 8 clients; a 100-pod burst of the CNI plugin on each datastore (against SQLite,
//! the default); twill-node's start of day on 10,000 Pods and 1,000 policies on each; and what
//! 20 watching twill-nodes cost the API server.
//!
//! The API server is a real kube-apiserver (v1.34, built by `make k8s`) on its own etcd 3.4,
//! both on loopback, started here with Twill's CRDs. twill-node runs as a process in a network
//! namespace of its own (policy-only: the policy engine's start of day, without BGP), reaching
//! the datastore through a relay on the same loopback address inside the namespace. Every
//! namespace is made here and removed by its guard; the root namespace is never touched.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use twill_interop_tests::etcd::Etcd;
use twill_interop_tests::kube::ApiServer;
use twill_interop_tests::netns::Netns;
use twill_interop_tests::workspace_binary;
use twill_shared::datastore::connect;
use twill_shared::resource::{Key, Kind};

use crate::cni::{guarded, median};

/// Pods and policies of the twill-node measurement.
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;
/// Pods on the measured node (the rest are remote).
const LOCAL_PODS: usize = 250;
const NAMESPACES: usize = 50;
/// Starts of twill-node per datastore.
const STARTS: usize = 3;
/// twill-nodes watching at once.
const WATCHERS: usize = 20;
/// Pod relabels while they watch.
const RELABELS: usize = 100;
/// Clients writing the data.
const WRITERS: usize = 8;

fn crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/crds")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("deploy/kubernetes/crds"))
}

/// Runs the benchmarks; returns their section of docs/benchmarks.md.
pub fn run() -> String {
    run_parts(&[])
}

/// Runs the parts named (`datastore`, `ipam`, `cni`, `agents`; none: all).
pub fn run_parts(parts: &[String]) -> String {
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return format!("## Kubernetes datastore\n\nfailed: no runtime: {err}\n"),
    };
    let mut out = String::from(
        "## Kubernetes datastore (targets: watch p99 ≤ 2× etcd's; IPAM ≥ 300 allocations/s with 8 clients; \
         a 100-pod CNI burst ≤ 2× SQLite's, zero duplicates)\n\n\
         A real kube-apiserver (v1.34.4, built from the Kubernetes modules by `make k8s`) on its own etcd 3.4, both one process \
         on loopback, with Twill's CRDs; beside it a plain etcd 3.4 for the etcd backend. Both run on this 2-core machine with \
         the clients.\n\n",
    );
    if wanted("datastore") {
        println!("  datastore: etcd and the Kubernetes API ...");
        out += &guarded("datastore", || runtime.block_on(datastore()));
    }
    if wanted("ipam") {
        println!("  IPAM on the Kubernetes API ...");
        out += &guarded("IPAM", || runtime.block_on(ipam()));
    }
    if wanted("cni") {
        println!("  CNI burst on the Kubernetes API and SQLite ...");
        out += &guarded("CNI burst", || cni_burst(&runtime));
    }
    if wanted("agents") {
        println!("  twill-node on 10,000 Pods and 1,000 policies; 20 watching nodes ...");
        out += &guarded("twill-node", || agents(&runtime));
    }
    out
}

fn kube_url(server: &ApiServer) -> String {
    format!("kubernetes:{}", server.kubeconfig().display())
}

async fn datastore() -> anyhow::Result<String> {
    let etcd_server = Etcd::start().await;
    let etcd = crate::bench::backend_figures(&etcd_server.url()).await?;
    drop(etcd_server);
    let server = ApiServer::start(&crds()).await;
    let kube = crate::bench::backend_figures(&kube_url(&server)).await?;
    drop(server);
    let mut out = String::from(
        "Throughput and watch latency exactly as in the Datastore section (GlobalNetworkSets: creates of distinct objects, then \
         compare-and-swap updates of each client's own, 1 client × 1000 and 8 clients × 250; watch: 500 sequential updates, from \
         the start of the write to the event at a watcher on another connection); on the API server a create is a POST of the \
         custom resource, a compare-and-swap a PUT with the resourceVersion, the watch a watch of the kind. Medians of 5 runs.\n\n\
         | measure | etcd | Kubernetes API | Kubernetes / etcd |\n|---|---|---|---|\n",
    );
    let row = |name: &str, e: f64, k: f64, unit: &str, digits: usize| {
        format!(
            "| {name} | {e:.digits$} {unit} | {k:.digits$} {unit} | {:.2} |\n",
            k / e
        )
    };
    out += &row(
        "creates/s, 1 client",
        etcd.creates_1,
        kube.creates_1,
        "/s",
        0,
    );
    out += &row(
        "creates/s, 8 clients",
        etcd.creates_8,
        kube.creates_8,
        "/s",
        0,
    );
    out += &row("CAS updates/s, 1 client", etcd.cas_1, kube.cas_1, "/s", 0);
    out += &row("CAS updates/s, 8 clients", etcd.cas_8, kube.cas_8, "/s", 0);
    out += &row(
        "watch latency p50",
        etcd.watch_p50_ms,
        kube.watch_p50_ms,
        "ms",
        2,
    );
    out += &row(
        "watch latency p99",
        etcd.watch_p99_ms,
        kube.watch_p99_ms,
        "ms",
        2,
    );
    out.push('\n');
    Ok(out)
}

async fn ipam() -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("twill-bench-kipam-")
        .tempdir()?;
    let etcd = crate::cni::ipam_figures("etcd", dir.path(), |_| async {
        let server = Etcd::start().await;
        Ok((server.url(), server))
    })
    .await?;
    let kube = crate::cni::ipam_figures("Kubernetes API", dir.path(), |_| async {
        let server = ApiServer::start(&crds()).await;
        Ok((kube_url(&server), server))
    })
    .await?;
    let mut out = String::from(
        "IPAM as in the CNI section (`Ipam::assign` in process, 8 clients each on its own connection, 250 IPv4 addresses each, \
         /26 blocks, a fresh datastore per run: a fresh API server for each Kubernetes run): every write a single-object \
         compare-and-swap, as the Kubernetes API allows (docs/design/ipam.md). Median of 3 runs; every address of every run \
         checked: zero duplicates.\n\n| allocations/s | etcd | Kubernetes API | Kubernetes / etcd |\n|---|---|---|---|\n",
    );
    writeln!(
        out,
        "| 8 clients, 8 nodes | {:.0} | {:.0} | {:.2} |",
        etcd.0,
        kube.0,
        kube.0 / etcd.0
    )?;
    writeln!(
        out,
        "| 8 clients, one node (host lock) | {:.0} | {:.0} | {:.2} |\n",
        etcd.1,
        kube.1,
        kube.1 / etcd.1
    )?;
    Ok(out)
}

/// The API server's address from its URL.
fn address(server: &ApiServer) -> anyhow::Result<SocketAddr> {
    server
        .url()
        .trim_start_matches("https://")
        .parse()
        .context("the API server's address")
}

fn cni_burst(runtime: &tokio::runtime::Runtime) -> anyhow::Result<String> {
    let server = runtime.block_on(ApiServer::start(&crds()));
    let figures = crate::cni::kube_burst(runtime, &server.kubeconfig(), address(&server)?)?;
    drop(server);
    let [sqlite, kube] = figures;
    let (s_add, k_add) = (median(sqlite.0), median(kube.0));
    let (s_del, k_del) = (median(sqlite.1), median(kube.1));
    let mut out = String::from(
        "CNI burst: the `twill` plugin called as a runtime calls it (as in the CNI section), 100 pods ADDed 16 at a time on one \
         node, then DELeted likewise, on the kubernetes datastore (`\"datastore\": \"kubernetes\"`, the admin's kubeconfig; \
         each ADD reads its Pod and patches Calico's annotations on it, each DEL clears them; the 100 Pods exist first) and on \
         SQLite (Twill's default), the two alternating; median of 3 bursts each.\n\n\
         | burst | SQLite | Kubernetes API | Kubernetes / SQLite |\n|---|---|---|---|\n",
    );
    writeln!(
        out,
        "| 100 ADDs, 16 in parallel | {s_add:.2} s ({:.0}/s) | {k_add:.2} s ({:.0}/s) | {:.2} |",
        100.0 / s_add,
        100.0 / k_add,
        k_add / s_add
    )?;
    writeln!(
        out,
        "| 100 DELs, 16 in parallel | {s_del:.2} s ({:.0}/s) | {k_del:.2} s ({:.0}/s) | {:.2} |",
        100.0 / s_del,
        100.0 / k_del,
        k_del / s_del
    )?;
    let words = |distinct: usize, left: usize| {
        format!(
            "{} distinct, {}",
            distinct,
            if left == 0 {
                "0 left allocated".to_string()
            } else {
                format!("**{left} left allocated**")
            }
        )
    };
    writeln!(
        out,
        "| fewest distinct addresses in a burst; most left after the DELs | {} | {} | |\n",
        words(sqlite.2, sqlite.3),
        words(kube.2, kube.3)
    )?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// twill-node on 10,000 Pods and 1,000 policies

/// A deterministic pseudo-random sequence (xorshift), so every run has the same data.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The cluster: Namespaces, Pods (on the Kubernetes API: Pods with the CNI plugin's address
/// annotation, from which the backend derives workload endpoints; on etcd: the workload
/// endpoints the plugin writes there) and policies (70 % Kubernetes NetworkPolicies, 30 %
/// Calico's), with `node-0` holding the first 250 pods.
fn cluster(kubernetes: bool) -> Vec<(Key, Value)> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut objects = Vec::new();
    for n in 0..NAMESPACES {
        let name = format!("ns{n}");
        objects.push((
            Key::cluster(Kind::Namespace, &name),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name,
                "labels": {"team": format!("team{}", n % 7), "env": if n % 3 == 0 { "prod" } else { "dev" }}}}),
        ));
        if kubernetes {
            // What the controller-manager's service account controller would make (the API
            // server admits a Pod only once its account exists).
            objects.push((
                Key::namespaced(Kind::ServiceAccount, &name, "default"),
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": "default", "namespace": name}}),
            ));
        }
    }
    for e in 0..PODS {
        let namespace = format!("ns{}", e % NAMESPACES);
        let node = if e < LOCAL_PODS {
            "node-0".to_string()
        } else {
            format!("node-{}", 1 + e % WATCHERS)
        };
        let ip = format!("10.{}.{}.{}", 64 + e / 65536, (e / 256) % 256, e % 256);
        let app = format!("app{}", random.below(40));
        let tier = ["web", "api", "db"][random.below(3)];
        let version = format!("v{}", random.below(3));
        let labels = json!({"app": app, "tier": tier, "version": version});
        let pod = format!("pod{e}");
        if kubernetes {
            objects.push((
                Key::namespaced(Kind::Pod, &namespace, &pod),
                json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": namespace, "labels": labels,
                        "annotations": {"cni.projectcalico.org/podIP": format!("{ip}/32"),
                                        "cni.projectcalico.org/podIPs": format!("{ip}/32"),
                                        "cni.projectcalico.org/containerID": format!("c{e}")}},
                    "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app",
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]}}),
            ));
        } else {
            let mut labels = labels;
            labels["projectcalico.org/namespace"] = json!(namespace);
            labels["projectcalico.org/orchestrator"] = json!("k8s");
            let name = format!("{node}-k8s-{pod}-eth0");
            objects.push((
                Key::namespaced(Kind::WorkloadEndpoint, &namespace, &name),
                json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels},
                    "spec": {"orchestrator": "k8s", "node": node, "pod": pod, "endpoint": "eth0",
                        "containerID": format!("c{e}"), "interfaceName": format!("tw{e:011x}"),
                        "ipNetworks": [format!("{ip}/32")], "profiles": [format!("kns.{namespace}")],
                        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}}),
            ));
        }
    }
    for p in 0..POLICIES {
        let namespace = format!("ns{}", random.below(NAMESPACES));
        let app = format!("app{}", random.below(40));
        let peer = format!("app{}", random.below(40));
        if p % 10 < 7 {
            let from = match p % 3 {
                0 => json!([{"podSelector": {"matchLabels": {"app": peer}}}]),
                1 => {
                    json!([{"namespaceSelector": {"matchLabels": {"team": format!("team{}", random.below(7))}}}])
                }
                _ => {
                    json!([{"namespaceSelector": {"matchLabels": {"env": "prod"}}, "podSelector": {"matchLabels": {"app": peer}}}])
                }
            };
            let ports = if p % 2 == 0 {
                json!([{"port": 8080}, {"port": 9090}])
            } else {
                json!([{"port": "http"}])
            };
            let name = format!("knp{p}");
            objects.push((
                Key::namespaced(Kind::KubernetesNetworkPolicy, &namespace, &name),
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                        "ingress": [{"from": from, "ports": ports}]}}),
            ));
        } else {
            let selector = match p % 3 {
                0 => format!("app == '{app}'"),
                1 => format!("app == '{app}' && tier == 'api'"),
                _ => format!("app == '{app}' && tier in {{'web', 'api'}} && version != 'v0'"),
            };
            let name = format!("cnp{p}");
            objects.push((
                Key::namespaced(Kind::NetworkPolicy, &namespace, &name),
                json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"selector": selector, "order": 100 + p, "types": ["Ingress", "Egress"],
                        "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": format!("app == '{peer}'")},
                                     "destination": {"ports": [8080, "9000:9100"]}},
                                    {"action": "Deny", "source": {"nets": ["10.200.0.0/16", "10.201.0.0/16"]}}],
                        "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
                                   {"action": "Allow", "destination": {"selector": format!("app == '{peer}'"),
                                                                       "namespaceSelector": "env == 'prod'"}}]}}),
            ));
        }
    }
    objects
}

/// Writes `objects` with [`WRITERS`] clients (namespaces and their accounts first); returns
/// objects per second.
async fn load(url: &str, objects: Vec<(Key, Value)>) -> anyhow::Result<f64> {
    let (namespaces, rest): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|(key, _)| matches!(key.kind, Kind::Namespace | Kind::ServiceAccount));
    let store = connect(url).await?;
    for (key, value) in namespaces {
        store.create(&key, value).await?;
    }
    let total = rest.len();
    let shared = Arc::new(std::sync::Mutex::new(rest));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = connect(url).await?;
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = shared.lock().expect("not poisoned").pop();
                let Some((key, value)) = next else {
                    return Ok::<_, anyhow::Error>(());
                };
                store
                    .create(&key, value)
                    .await
                    .with_context(|| format!("create {key}"))?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Kills a child and waits for it when dropped.
pub(crate) struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A relay inside `netns` on `address`, to `address` on the machine's loopback.
pub(crate) fn relay(netns: &Netns, address: SocketAddr) -> anyhow::Result<Kill> {
    let mut child = Command::new(workspace_binary("twillctl"))
        .args(["lab", "relay", "--netns"])
        .arg(format!("/run/netns/{}", netns.name()))
        .args(["--listen", &address.to_string()])
        .args(["--connect", &address.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the relay")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().context("relay output")?),
        &mut line,
    )?;
    let child = Kill(child);
    if line.trim() != "listening" {
        bail!("the relay into {} did not start", netns.name());
    }
    Ok(child)
}

/// One twill-node (policy-only) in its own namespace, with its relay.
struct Agent {
    process: Kill,
    _relay: Kill,
    _netns: Netns,
    status: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(url: &str, address: SocketAddr, node: &str) -> anyhow::Result<Agent> {
        let netns = Netns::new("kb");
        netns.ip(&["link", "set", "lo", "up"]);
        let relay = relay(&netns, address)?;
        let dir = tempfile::Builder::new()
            .prefix("twill-bench-node-")
            .tempdir()?;
        let status = dir.path().join("status.json");
        let log = std::fs::File::create(dir.path().join("twill-node.log"))?;
        let program = workspace_binary("twill-node");
        let process = netns
            .command(program.to_str().context("UTF-8 path")?)
            .args([
                "--datastore",
                url,
                "--node-name",
                node,
                "--mode",
                "policy-only",
            ])
            .args(["--health-listen", "127.0.0.1:9099"])
            .arg("--status-file")
            .arg(&status)
            .arg("--run-dir")
            .arg(dir.path())
            .arg("--mtu-file")
            .arg(dir.path().join("mtu"))
            .arg("--secrets-dir")
            .arg(dir.path().join("secrets"))
            .env("TWILL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start twill-node (cargo build --release -p twill-node)")?;
        Ok(Agent {
            process: Kill(process),
            _relay: relay,
            _netns: netns,
            status,
            _dir: dir,
        })
    }

    fn applied_view(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.status).ok()?;
        let status: Value = serde_json::from_str(&text).ok()?;
        status["applied_view"].as_str().map(str::to_string)
    }

    fn pid(&self) -> i32 {
        self.process.0.id() as i32
    }
}

/// A field of /proc/PID/status in kB, as MiB.
pub(crate) fn status_mib(pid: i32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User and system CPU seconds a process has used (/proc counts in USER_HZ, 100 per second).
fn cpu_seconds(pid: i32) -> f64 {
    crate::cluster::cpu_ticks(pid) as f64 / 100.0
}

/// The view every node must apply: the datastore's objects and revisions.
async fn target_view(url: &str) -> anyhow::Result<String> {
    let store = connect(url).await?;
    let listing = store.list(None, None).await?;
    Ok(twill_shared::syncer::ViewDigest::of(
        listing.items.iter().map(|item| (&item.key, item.revision)),
    )
    .summary())
}

/// Waits until each agent has applied `target`; fails after `limit`.
fn wait_applied(agents: &[Agent], target: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while agents
        .iter()
        .any(|a| a.applied_view().as_deref() != Some(target))
    {
        if Instant::now() > deadline {
            let behind = agents
                .iter()
                .find(|a| a.applied_view().as_deref() != Some(target))
                .and_then(Agent::applied_view);
            bail!("a twill-node has applied {behind:?}, not {target:?}, after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Start of day of one twill-node on `url`: (seconds to the whole view applied, peak RSS MiB).
fn start_of_day(url: &str, address: SocketAddr, target: &str) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let agent = Agent::start(url, address, "node-0")?;
    wait_applied(
        std::slice::from_ref(&agent),
        target,
        Duration::from_secs(300),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((seconds, status_mib(agent.pid(), "VmHWM:")))
}

fn agents(runtime: &tokio::runtime::Runtime) -> anyhow::Result<String> {
    // The same cluster on etcd (workload endpoints as the plugin writes them there) and on
    // the API server (Pods).
    let etcd = runtime.block_on(Etcd::start());
    let etcd_url = etcd.url();
    let etcd_address: SocketAddr = etcd_url.trim_start_matches("etcd://").parse()?;
    let etcd_rate = runtime.block_on(load(&etcd_url, cluster(false)))?;
    let server = runtime.block_on(ApiServer::start(&crds()));
    let kube = kube_url(&server);
    let kube_address = address(&server)?;
    let kube_rate = runtime.block_on(load(&kube, cluster(true)))?;
    println!("    loaded: etcd {etcd_rate:.0} objects/s, Kubernetes API {kube_rate:.0} objects/s");
    let etcd_target = runtime.block_on(target_view(&etcd_url))?;
    let kube_target = runtime.block_on(target_view(&kube))?;
    let (mut etcd_starts, mut kube_starts) = (Vec::new(), Vec::new());
    for round in 0..STARTS {
        // Alternate who goes first.
        for which in [round % 2, 1 - round % 2] {
            if which == 0 {
                etcd_starts.push(start_of_day(&etcd_url, etcd_address, &etcd_target)?);
            } else {
                kube_starts.push(start_of_day(&kube, kube_address, &kube_target)?);
            }
        }
        println!(
            "    start {round}: etcd {:.2} s {:.0} MiB, Kubernetes API {:.2} s {:.0} MiB",
            etcd_starts[round].0, etcd_starts[round].1, kube_starts[round].0, kube_starts[round].1
        );
    }
    drop(etcd);
    // What watching twill-nodes cost the API server.
    let apiserver = server.pid().context("the API server's process")?;
    let settle = Duration::from_secs(10);
    std::thread::sleep(settle);
    let idle_rss = status_mib(apiserver, "VmRSS:");
    let before = cpu_seconds(apiserver);
    std::thread::sleep(settle);
    let idle_cpu = cpu_seconds(apiserver) - before;
    let relabel = |round: usize| -> anyhow::Result<f64> {
        runtime.block_on(async {
            let store = connect(&kube).await?;
            let cpu = cpu_seconds(apiserver);
            for n in 0..RELABELS {
                let e = LOCAL_PODS + n * 37 % (PODS - LOCAL_PODS);
                let key = Key::namespaced(
                    Kind::Pod,
                    &format!("ns{}", e % NAMESPACES),
                    &format!("pod{e}"),
                );
                let mut stored = store.get(&key).await?.context("the pod")?;
                stored.value["metadata"]["labels"]["version"] = json!(format!("r{round}-{n}"));
                store.update(&key, stored.value, stored.revision).await?;
            }
            Ok(cpu_seconds(apiserver) - cpu)
        })
    };
    let alone = relabel(0)?;
    let cpu = cpu_seconds(apiserver);
    let started = Instant::now();
    let mut watchers = Vec::new();
    for n in 1..=WATCHERS {
        watchers.push(Agent::start(&kube, kube_address, &format!("node-{n}"))?);
    }
    let target = runtime.block_on(target_view(&kube))?;
    wait_applied(&watchers, &target, Duration::from_secs(600))?;
    let start_seconds = started.elapsed().as_secs_f64();
    let start_cpu = cpu_seconds(apiserver) - cpu;
    let start_peak = status_mib(apiserver, "VmHWM:");
    std::thread::sleep(settle);
    let watched_rss = status_mib(apiserver, "VmRSS:");
    let before = cpu_seconds(apiserver);
    std::thread::sleep(settle);
    let watched_idle = cpu_seconds(apiserver) - before;
    let watched = relabel(1)?;
    let target = runtime.block_on(target_view(&kube))?;
    wait_applied(&watchers, &target, Duration::from_secs(120))?;
    let node_rss: Vec<f64> = watchers
        .iter()
        .map(|a| status_mib(a.pid(), "VmRSS:"))
        .collect();
    drop(watchers);
    drop(server);

    let (etcd_s, etcd_mib) = (
        median(etcd_starts.iter().map(|s| s.0).collect()),
        median(etcd_starts.iter().map(|s| s.1).collect()),
    );
    let (kube_s, kube_mib) = (
        median(kube_starts.iter().map(|s| s.0).collect()),
        median(kube_starts.iter().map(|s| s.1).collect()),
    );
    let mut out = format!(
        "twill-node on {PODS} pods in {NAMESPACES} namespaces ({LOCAL_PODS} on the measured node) and {POLICIES} policies (70 % \
         Kubernetes NetworkPolicies, 30 % Calico NetworkPolicies with Allow, Deny and egress rules), the same cluster on both: on \
         the Kubernetes API as Pods carrying the CNI plugin's address annotations (the backend derives the workload endpoints), on \
         etcd as the workload endpoints the plugin writes there. twill-node in policy-only mode in its own namespace, from process \
         start until its status reports the whole datastore view applied (every object at its revision, compared with a list); \
         peak RSS is its VmHWM. Loading the data with {WRITERS} clients: etcd {etcd_rate:.0} objects/s, Kubernetes API \
         {kube_rate:.0} objects/s. Medians of {STARTS} starts each, alternating.\n\n\
         | twill-node | etcd | Kubernetes API | Kubernetes / etcd |\n|---|---|---|---|\n\
         | start of day to applied | {etcd_s:.2} s | {kube_s:.2} s | {:.2} |\n\
         | peak RSS | {etcd_mib:.0} MiB | {kube_mib:.0} MiB | {:.2} |\n\n",
        kube_s / etcd_s,
        kube_mib / etcd_mib
    );
    writeln!(
        out,
        "The API server's cost of watching nodes: {WATCHERS} twill-nodes (node-1 … node-{WATCHERS}, each its own process, \
         namespace and connection; each lists and watches every kind once) started at once on the same data, then \
         {RELABELS} pod relabels written one after the other; the API server's RSS and CPU (user + system, from /proc) \
         beside the same without watchers. A single API server and its clients share the machine's 2 cores.\n"
    )?;
    out += "| kube-apiserver | no twill-node | 20 twill-nodes | per node |\n|---|---|---|---|\n";
    writeln!(
        out,
        "| RSS at rest | {idle_rss:.0} MiB | {watched_rss:.0} MiB | {:.1} MiB |",
        (watched_rss - idle_rss) / WATCHERS as f64
    )?;
    writeln!(
        out,
        "| CPU at rest over {}s | {idle_cpu:.2} s | {watched_idle:.2} s | {:.3} s |",
        settle.as_secs(),
        (watched_idle - idle_cpu) / WATCHERS as f64
    )?;
    writeln!(
        out,
        "| {WATCHERS} nodes' start (lists and watches; {start_seconds:.1} s until all applied) | | {start_cpu:.2} s CPU, peak RSS {start_peak:.0} MiB | {:.2} s CPU |",
        start_cpu / WATCHERS as f64
    )?;
    writeln!(
        out,
        "| CPU for {RELABELS} pod relabels | {alone:.2} s | {watched:.2} s | {:.1} ms per node per change |",
        (watched - alone) / WATCHERS as f64 / RELABELS as f64 * 1000.0
    )?;
    writeln!(
        out,
        "| twill-node RSS of the watchers (median, max) | | {:.0} MiB, {:.0} MiB | |\n",
        median(node_rss.clone()),
        node_rss.iter().copied().fold(0.0, f64::max)
    )?;
    Ok(out)
}
