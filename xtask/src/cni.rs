//! The CNI, IPAM and lab benchmarks: pod ADD and DEL latency of the `twill` plugin and of the
//! reference plugins `ptp` + `host-local` side by side, a burst of parallel ADDs on one node,
//! IPAM allocations per second with 8 concurrent clients on etcd and SQLite, and `twillctl lab
//! up` + a full probe of a 9-pod lab.
//!
//! Plugins are called exactly as a container runtime calls them: `ip netns exec NODE plugin`
//! with the CNI_* environment and the network configuration on stdin, timed from spawn to
//! exit. Every namespace is made by the benchmark (node and pods, `tw-*-<pid>-<n>`) and
//! removed by its guard, also on error; the root namespace is never touched.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use twill_interop_tests::etcd::Etcd;
use twill_interop_tests::netns::Netns;
use twill_interop_tests::workspace_binary;
use twill_ipam::runtime::{AssignArgs, Ipam};
use twill_shared::client::{Client, WriteMode};
use twill_shared::datastore::{connect, Datastore};
use twill_shared::resource::document::parse_documents;

/// Pods ADDed (then DELeted) one after the other per plugin.
const SEQUENTIAL_PODS: usize = 30;
/// Pods of the burst, and how many ADDs (DELs) run at once.
const BURST_PODS: usize = 100;
const BURST_PARALLEL: usize = 16;
/// Bursts per plugin; the median is reported.
const BURST_RUNS: usize = 3;
/// IPAM clients and allocations per client; runs per case (median reported).
const IPAM_CLIENTS: usize = 8;
const IPAM_PER_CLIENT: usize = 250;
const IPAM_RUNS: usize = 3;
/// Probes of the lab (median reported).
const PROBE_RUNS: usize = 3;

/// The reference plugins, as Debian's containernetworking-plugins installs them.
const REFERENCE_DIR: &str = "/usr/lib/cni";
/// The pod network's Kubernetes namespace in CNI_ARGS.
const POD_NAMESPACE: &str = "bench";

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

/// Runs the benchmarks; returns their section of docs/benchmarks.md. A part that fails is
/// reported as failed (with why) and the others still run.
pub fn run() -> String {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return format!("## CNI, IPAM and lab\n\nfailed: no runtime: {err}\n"),
    };
    let mut out = String::from(
        "## CNI plugin, IPAM and lab (targets: ADD and DEL ≤ 1.0× `ptp` + `host-local`; IPAM ≥ 1,000 allocations/s on etcd)\n\n",
    );
    println!("  pod ADD/DEL latency and burst (twill vs ptp + host-local) ...");
    out += &guarded("pod ADD and DEL", || plugins_bench(&runtime));
    println!("  IPAM allocations/s (etcd, SQLite) ...");
    out += &guarded("IPAM allocations", || runtime.block_on(ipam_bench()));
    println!("  lab up and probe ...");
    out += &guarded("lab", lab_bench);
    out
}

/// The part's text, or a line saying it failed (an error or a panic).
pub(crate) fn guarded(what: &str, part: impl FnOnce() -> anyhow::Result<String>) -> String {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(part)) {
        Ok(Ok(text)) => text,
        Ok(Err(err)) => {
            eprintln!("{what}: {err:#}");
            format!("**{what}: failed**: {err:#}\n\n")
        }
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("**{what}: failed** (panic): {reason}\n\n")
        }
    }
}

// ---------------------------------------------------------------------------------------
// Pod ADD and DEL

/// A node namespace as a real node has it: loopback up, an uplink holding 198.18.0.1/32 and
/// the default route (proxy ARP answers only for what the node can route elsewhere), IPv4
/// forwarding on.
fn node_namespace(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    ns.ip(&["link", "set", "up0", "up"]);
    ns.ip(&["link", "set", "up1", "up"]);
    ns.ip(&["addr", "add", "198.18.0.1/32", "dev", "up0"]);
    ns.ip(&["route", "add", "default", "dev", "up0"]);
    let out = ns.output("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    assert!(out.status.success(), "sysctl in {}", ns.name());
    ns
}

/// One plugin on its own node namespace, with its pods' namespaces.
struct Plugin {
    label: &'static str,
    /// Twill (its IPAM is in the datastore) or the reference (host-local's files).
    is_twill: bool,
    /// Container IDs start with it.
    tag: String,
    program: PathBuf,
    cni_path: String,
    config: Vec<u8>,
    node: Netns,
    pods: Vec<Netns>,
}

/// What one call did: wall time from spawn to exit, and the result on stdout.
struct Call {
    ms: f64,
    result: Value,
}

impl Plugin {
    fn new(
        label: &'static str,
        tag: &str,
        program: PathBuf,
        cni_path: String,
        config: &Value,
    ) -> Plugin {
        Plugin::with(label, tag, tag.starts_with("tw"), program, cni_path, config)
    }

    fn with(
        label: &'static str,
        tag: &str,
        is_twill: bool,
        program: PathBuf,
        cni_path: String,
        config: &Value,
    ) -> Plugin {
        let node = node_namespace(&format!("cn{tag}"));
        let pods = (0..BURST_PODS)
            .map(|_| Netns::new(&format!("cp{tag}")))
            .collect();
        Plugin {
            label,
            is_twill,
            tag: format!("{tag}{}", std::process::id()),
            program,
            cni_path,
            config: serde_json::to_vec(config).expect("JSON values serialize"),
            node,
            pods,
        }
    }

    /// Calls the plugin for pod `index` (`name` is its Kubernetes name), as a runtime does.
    fn call(&self, command: &str, index: usize, name: &str) -> anyhow::Result<Call> {
        let container = format!("{}-{name}", self.tag);
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container}"
        );
        let program = self.program.to_str().context("plugin path is UTF-8")?;
        let start = Instant::now();
        let mut child = self
            .node
            .command(program)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &container)
            .env(
                "CNI_NETNS",
                format!("/run/netns/{}", self.pods[index].name()),
            )
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", &args)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.program.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&self.config)?;
        }
        let output = child.wait_with_output()?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let result: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if !output.status.success() {
            bail!(
                "{} {command} of pod {name}: {result} {}",
                self.label,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Call { ms, result })
    }
}

/// The addresses of an ADD result.
fn addresses(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// Runs `count` jobs with `workers` at once; returns the wall time in seconds and the results
/// in job order (the first error if any job failed).
fn parallel<T: Send>(
    count: usize,
    workers: usize,
    job: impl Fn(usize) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<(f64, Vec<T>)> {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let done: Vec<Vec<(usize, anyhow::Result<T>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            break mine;
                        }
                        mine.push((index, job(index)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a burst worker panicked"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut done: Vec<(usize, anyhow::Result<T>)> = done.into_iter().flatten().collect();
    done.sort_by_key(|(index, _)| *index);
    let results = done
        .into_iter()
        .map(|(_, result)| result)
        .collect::<anyhow::Result<Vec<T>>>()?;
    Ok((seconds, results))
}

/// Addresses still allocated after every DEL: Twill's IPAM blocks, host-local's files.
fn leftovers(
    plugin: &Plugin,
    dir: &Path,
    url: &str,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<usize> {
    if plugin.is_twill {
        runtime.block_on(async {
            let store = connect(url).await?;
            let inventory = twill_ipam::gc::inventory(store.as_ref()).await?;
            Ok(inventory
                .blocks
                .iter()
                .map(|b| twill_ipam::block::allocated(b).len())
                .sum())
        })
    } else {
        // host-local keeps one file per allocated address, named by it.
        let store = dir.join("hl/ref");
        let count = std::fs::read_dir(&store)
            .with_context(|| format!("cannot read {}", store.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.parse::<IpAddr>().is_ok())
            .count();
        Ok(count)
    }
}

/// Per plugin: sequential latencies and burst figures.
#[derive(Default)]
struct PluginFigures {
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
    burst_add_s: Vec<f64>,
    burst_del_s: Vec<f64>,
    distinct: Vec<usize>,
    left: Vec<usize>,
}

/// The `twill` plugin's network configuration on `datastore` (with `kubeconfig` on
/// Kubernetes), its log and lock files in `dir`. The plugin alone, as ptp runs alone: no
/// twill-node to ask (the cluster benchmark measures pod creation with it).
fn twill_config(dir: &Path, datastore: &str, kubeconfig: Option<&Path>) -> Value {
    let mut config = json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "twill",
        "datastore": datastore, "nodename": "node-1", "mtu": 1500, "log_level": "warn",
        "log_file_path": dir.join("cni.log"),
        "ipam_lock_file": dir.join("ipam.lock"),
        "ipam": {"type": "twill-ipam", "assign_ipv4": "true"},
        "node_health_address": "none",
    });
    if let Some(kubeconfig) = kubeconfig {
        config["kubeconfig"] = json!(kubeconfig);
    }
    config
}

fn plugins_bench(runtime: &tokio::runtime::Runtime) -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("twill-bench-cni-")
        .tempdir()?;
    let twill = workspace_binary("twill");
    if !twill.is_file() || !workspace_binary("twill-ipam").is_file() {
        bail!(
            "{} (and twill-ipam) not built: cargo build --release -p twill-cni",
            twill.display()
        );
    }
    let url = format!("sqlite:{}", dir.path().join("twill.db").display());
    runtime.block_on(store_pool(&url, "bench-pool", "10.90.0.0/16"))?;
    let twill_config = twill_config(dir.path(), &url, None);
    let reference_config = json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.91.0.0/16", "dataDir": dir.path().join("hl")},
    });
    let target_dir = twill
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .display()
        .to_string();
    let plugins = [
        Plugin::new("Twill", "tw", twill, target_dir, &twill_config),
        Plugin::new(
            "ptp + host-local",
            "rf",
            Path::new(REFERENCE_DIR).join("ptp"),
            REFERENCE_DIR.to_string(),
            &reference_config,
        ),
    ];
    // The fixed cost in every call of both: `ip netns exec` itself.
    let mut exec_ms = Vec::new();
    for _ in 0..SEQUENTIAL_PODS {
        let start = Instant::now();
        let status = plugins[0].node.command("true").status()?;
        exec_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        if !status.success() {
            bail!("ip netns exec … true failed");
        }
    }
    // One ADD and DEL each first (page cache, the SQLite file), not counted.
    for plugin in &plugins {
        plugin.call("ADD", 0, "warmup")?;
        plugin.call("DEL", 0, "warmup")?;
    }
    let mut figures: Vec<PluginFigures> =
        plugins.iter().map(|_| PluginFigures::default()).collect();
    // Sequential: the plugins interleaved pod by pod, so both see the same machine.
    let mut seen: Vec<HashSet<IpAddr>> = vec![HashSet::new(); plugins.len()];
    for index in 0..SEQUENTIAL_PODS {
        for (p, plugin) in plugins.iter().enumerate() {
            let call = plugin.call("ADD", index, &format!("p{index}"))?;
            figures[p].add_ms.push(call.ms);
            seen[p].extend(addresses(&call.result));
        }
    }
    for (p, plugin) in plugins.iter().enumerate() {
        if seen[p].len() != SEQUENTIAL_PODS {
            bail!(
                "{}: {} distinct addresses for {SEQUENTIAL_PODS} sequential ADDs",
                plugin.label,
                seen[p].len()
            );
        }
    }
    for index in 0..SEQUENTIAL_PODS {
        for (p, plugin) in plugins.iter().enumerate() {
            let call = plugin.call("DEL", index, &format!("p{index}"))?;
            figures[p].del_ms.push(call.ms);
        }
    }
    // Bursts: 100 ADDs, 16 at a time, then 100 DELs; the plugins alternate who goes first.
    for round in 0..BURST_RUNS {
        for offset in 0..plugins.len() {
            let p = (round + offset) % plugins.len();
            let plugin = &plugins[p];
            let (seconds, calls) = parallel(BURST_PODS, BURST_PARALLEL, |index| {
                plugin.call("ADD", index, &format!("b{index}"))
            })?;
            figures[p].burst_add_s.push(seconds);
            let all: Vec<IpAddr> = calls.iter().flat_map(|c| addresses(&c.result)).collect();
            let distinct: HashSet<IpAddr> = all.iter().copied().collect();
            if all.len() != BURST_PODS {
                bail!(
                    "{}: {} addresses for {BURST_PODS} ADDs",
                    plugin.label,
                    all.len()
                );
            }
            figures[p].distinct.push(distinct.len());
            let (seconds, _) = parallel(BURST_PODS, BURST_PARALLEL, |index| {
                plugin.call("DEL", index, &format!("b{index}"))
            })?;
            figures[p].burst_del_s.push(seconds);
            figures[p]
                .left
                .push(leftovers(plugin, dir.path(), &url, runtime)?);
            println!(
                "    {} burst {round}: ADD {:.3} s, DEL {seconds:.3} s, {} distinct, {} left allocated",
                plugin.label,
                figures[p].burst_add_s[round],
                distinct.len(),
                figures[p].left[round]
            );
        }
    }
    let (tw, rf) = (&figures[0], &figures[1]);
    let mut out = String::new();
    writeln!(
        out,
        "Each plugin called as a container runtime calls it: `ip netns exec NODE PLUGIN` with CNI_COMMAND, CNI_CONTAINERID, \
         CNI_NETNS=/run/netns/POD, CNI_IFNAME=eth0, CNI_ARGS (K8S_POD_NAMESPACE/NAME) and CNI_PATH, the network configuration on \
         stdin; timed from spawn to exit (so `ip netns exec` is in both). Twill: `twill` with `twill-ipam` (in process), SQLite \
         datastore file, pool 10.90.0.0/16 (/26 blocks), log level warn. Reference: Debian's `ptp` with `host-local` \
         (10.91.0.0/16, file store). Each on its own node namespace (uplink with 198.18.0.1/32 and the default route, forwarding \
         on) with fresh pod namespaces. One ADD and DEL each first, not counted; then {SEQUENTIAL_PODS} pods ADDed one after \
         the other, the two plugins interleaved pod by pod, then DELeted the same way. Burst: {BURST_PODS} pods ADDed with \
         {BURST_PARALLEL} at a time on one node, then DELeted likewise; median of {BURST_RUNS} bursts per plugin.\n"
    )?;
    out += "| what | Twill | ptp + host-local | Twill / reference |\n|---|---|---|---|\n";
    let ms_row =
        |name: &str, t: f64, r: f64| format!("| {name} | {t:.1} ms | {r:.1} ms | {:.2} |\n", t / r);
    out += &ms_row(
        "ADD median",
        median(tw.add_ms.clone()),
        median(rf.add_ms.clone()),
    );
    out += &ms_row(
        "ADD p90",
        percentile(tw.add_ms.clone(), 0.9),
        percentile(rf.add_ms.clone(), 0.9),
    );
    out += &ms_row(
        "DEL median",
        median(tw.del_ms.clone()),
        median(rf.del_ms.clone()),
    );
    out += &ms_row(
        "DEL p90",
        percentile(tw.del_ms.clone(), 0.9),
        percentile(rf.del_ms.clone(), 0.9),
    );
    let exec = median(exec_ms);
    writeln!(
        out,
        "| `ip netns exec NODE true` alone (in every figure above) | {exec:.1} ms | {exec:.1} ms | |"
    )?;
    let (tw_add, rf_add) = (
        median(tw.burst_add_s.clone()),
        median(rf.burst_add_s.clone()),
    );
    let (tw_del, rf_del) = (
        median(tw.burst_del_s.clone()),
        median(rf.burst_del_s.clone()),
    );
    let n = BURST_PODS as f64;
    writeln!(
        out,
        "| burst: {BURST_PODS} ADDs, {BURST_PARALLEL} in parallel | {tw_add:.2} s ({:.0} ADDs/s) | {rf_add:.2} s ({:.0} ADDs/s) | {:.2} |",
        n / tw_add,
        n / rf_add,
        tw_add / rf_add
    )?;
    writeln!(
        out,
        "| burst: {BURST_PODS} DELs, {BURST_PARALLEL} in parallel | {tw_del:.2} s ({:.0} DELs/s) | {rf_del:.2} s ({:.0} DELs/s) | {:.2} |",
        n / tw_del,
        n / rf_del,
        tw_del / rf_del
    )?;
    let distinct = |f: &PluginFigures| {
        let worst = f.distinct.iter().copied().min().unwrap_or(0);
        if worst == BURST_PODS {
            format!("{BURST_PODS} distinct in every burst: zero duplicates")
        } else {
            format!("**{} duplicate(s)** in a burst", BURST_PODS - worst)
        }
    };
    writeln!(
        out,
        "| burst addresses | {} | {} | |",
        distinct(tw),
        distinct(rf)
    )?;
    let left = |f: &PluginFigures| {
        let worst = f.left.iter().copied().max().unwrap_or(0);
        if worst == 0 {
            "0 in use after every DEL burst".to_string()
        } else {
            format!("**{worst} left allocated**")
        }
    };
    writeln!(
        out,
        "| IPAM after the DELs | {} | {} | |",
        left(tw),
        left(rf)
    )?;
    Ok(out)
}

/// Bursts of one plugin: ADD seconds, DEL seconds, fewest distinct addresses in a burst,
/// most left allocated after one.
pub(crate) type BurstFigures = (Vec<f64>, Vec<f64>, usize, usize);

/// The same burst as [`plugins_bench`]'s (100 pods, 16 ADDs at a time, then the DELs), by the
/// `twill` plugin on the kubernetes datastore (`kubeconfig`: the API server's admin, reached
/// from the node namespace through a relay on the same loopback address) and on SQLite, the
/// two alternating; each pod exists as a Pod in the API server first, as the kubelet's
/// runtime call presumes. Returns (SQLite, Kubernetes) figures: ADD seconds, DEL seconds,
/// fewest distinct addresses, most left allocated.
pub(crate) fn kube_burst(
    runtime: &tokio::runtime::Runtime,
    kubeconfig: &Path,
    server: std::net::SocketAddr,
) -> anyhow::Result<[BurstFigures; 2]> {
    let dir = tempfile::Builder::new()
        .prefix("twill-bench-kcni-")
        .tempdir()?;

    let twill = workspace_binary("twill");
    let sqlite_url = format!("sqlite:{}", dir.path().join("twill.db").display());
    let kube_url = format!("kubernetes:{}", kubeconfig.display());
    runtime.block_on(async {
        store_pool(&sqlite_url, "bench-pool", "10.90.0.0/16").await?;
        store_pool(&kube_url, "bench-pool", "10.90.0.0/16").await?;
        let store = connect(&kube_url).await?;
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": POD_NAMESPACE}});
        store
            .create(
                &twill_shared::resource::Key::cluster(
                    twill_shared::resource::Kind::Namespace,
                    POD_NAMESPACE,
                ),
                namespace,
            )
            .await?;
        // The account the controller-manager would make (a Pod is admitted only with it).
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": {"name": "default", "namespace": POD_NAMESPACE}});
        store
            .create(
                &twill_shared::resource::Key::namespaced(
                    twill_shared::resource::Kind::ServiceAccount,
                    POD_NAMESPACE,
                    "default",
                ),
                account,
            )
            .await?;
        for index in 0..BURST_PODS {
            let name = format!("b{index}");
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": POD_NAMESPACE, "labels": {"app": "burst"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "bench",
                         "ports": [{"name": "http", "containerPort": 8080}]}]}});
            store
                .create(
                    &twill_shared::resource::Key::namespaced(
                        twill_shared::resource::Kind::Pod,
                        POD_NAMESPACE,
                        &name,
                    ),
                    pod,
                )
                .await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let config = |datastore: &str, kubeconfig| twill_config(dir.path(), datastore, kubeconfig);
    let target_dir = twill
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .display()
        .to_string();
    let plugins = [
        Plugin::with(
            "Twill on SQLite",
            "ts",
            true,
            twill.clone(),
            target_dir.clone(),
            &config(&sqlite_url, None),
        ),
        Plugin::with(
            "Twill on Kubernetes",
            "tk",
            true,
            twill,
            target_dir,
            &config("kubernetes", Some(kubeconfig)),
        ),
    ];
    // The API server listens on the machine's loopback; the node namespace has its own. A
    // relay inside it on the same address carries the plugin's connections out.
    let _relay = crate::kube_bench::relay(&plugins[1].node, server)?;
    let urls = [sqlite_url.as_str(), kube_url.as_str()];
    for plugin in &plugins {
        plugin.call("ADD", 0, "b0")?;
        plugin.call("DEL", 0, "b0")?;
    }
    let mut figures: [BurstFigures; 2] = Default::default();
    for f in &mut figures {
        f.2 = BURST_PODS;
    }
    for round in 0..BURST_RUNS {
        for offset in 0..plugins.len() {
            let p = (round + offset) % plugins.len();
            let plugin = &plugins[p];
            let (add, calls) = parallel(BURST_PODS, BURST_PARALLEL, |index| {
                plugin.call("ADD", index, &format!("b{index}"))
            })?;
            let all: Vec<IpAddr> = calls.iter().flat_map(|c| addresses(&c.result)).collect();
            if all.len() != BURST_PODS {
                bail!(
                    "{}: {} addresses for {BURST_PODS} ADDs",
                    plugin.label,
                    all.len()
                );
            }
            let distinct: HashSet<IpAddr> = all.iter().copied().collect();
            let (del, _) = parallel(BURST_PODS, BURST_PARALLEL, |index| {
                plugin.call("DEL", index, &format!("b{index}"))
            })?;
            let left = leftovers(plugin, dir.path(), urls[p], runtime)?;
            println!(
                "    {} burst {round}: ADD {add:.3} s, DEL {del:.3} s, {} distinct, {left} left allocated",
                plugin.label,
                distinct.len()
            );
            figures[p].0.push(add);
            figures[p].1.push(del);
            figures[p].2 = figures[p].2.min(distinct.len());
            figures[p].3 = figures[p].3.max(left);
        }
    }
    Ok(figures)
}

/// Stores an IPv4 pool with /26 blocks.
pub(crate) async fn store_pool(url: &str, name: &str, cidr: &str) -> anyhow::Result<()> {
    let store = connect(url).await?;
    let pool = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, "blockSize": 26, "nodeSelector": "all()"}});
    let resources = parse_documents(&pool.to_string())?;
    Client::new(store)
        .write_all(&resources, WriteMode::Apply)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// IPAM

/// One run of [`ipam_rate`].
struct IpamRun {
    /// Allocations per second over the whole run.
    rate: f64,
    /// Allocations per second over the first and the last quarter of the allocations.
    first_quarter: f64,
    last_quarter: f64,
    addresses: Vec<IpAddr>,
}

/// Allocations per second of 8 clients, each with its own connection, each allocating
/// `IPAM_PER_CLIENT` addresses one after the other: on 8 node names without a lock, or all
/// on one node name sharing a lock file.
async fn ipam_rate(url: &str, lock: Option<&Path>) -> anyhow::Result<IpamRun> {
    let mut clients = Vec::new();
    for client in 0..IPAM_CLIENTS {
        let store: Arc<dyn Datastore> = connect(url).await?;
        let node = match lock {
            Some(_) => "bench-node".to_string(),
            None => format!("bench-node-{client}"),
        };
        clients.push(Ipam::new(store, &node, lock.map(Path::to_path_buf)));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, ipam) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(IPAM_PER_CLIENT);
            for n in 0..IPAM_PER_CLIENT {
                let args = AssignArgs {
                    handle: format!("bench.{client}.{n}"),
                    ipv4: true,
                    ..Default::default()
                };
                let assigned = ipam.assign(&args).await?;
                let done = start.elapsed().as_secs_f64();
                got.extend(assigned.addresses.iter().map(|a| (done, a.addr())));
            }
            Ok::<_, anyhow::Error>(got)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let total = IPAM_CLIENTS * IPAM_PER_CLIENT;
    if all.len() != total {
        bail!("{url}: {} addresses for {total} allocations", all.len());
    }
    let mut times: Vec<f64> = all.iter().map(|(t, _)| *t).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let quarter = total / 4;
    Ok(IpamRun {
        rate: total as f64 / times[total - 1],
        first_quarter: quarter as f64 / times[quarter - 1],
        last_quarter: quarter as f64 / (times[total - 1] - times[total - 1 - quarter]),
        addresses: all.into_iter().map(|(_, a)| a).collect(),
    })
}

/// Medians of both cases on one backend, each run on a fresh datastore (`fresh` gives its
/// URL and a guard to keep while it is used); fails on a duplicate address.
pub(crate) async fn ipam_figures<G, F, Fut>(
    name: &str,
    lock_dir: &Path,
    fresh: F,
) -> anyhow::Result<(f64, f64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(String, G)>>,
{
    let (mut nodes, mut shared) = (Vec::new(), Vec::new());
    let lock = lock_dir.join("ipam.lock");
    for run in 0..IPAM_RUNS {
        for (case, lock) in [(&mut nodes, None), (&mut shared, Some(lock.as_path()))] {
            let (url, guard) = fresh(run * 2 + usize::from(lock.is_some())).await?;
            store_pool(&url, "bench-ipam-pool", "10.96.0.0/16").await?;
            let result = ipam_rate(&url, lock).await?;
            drop(guard);
            let distinct: HashSet<IpAddr> = result.addresses.iter().copied().collect();
            if distinct.len() != result.addresses.len() {
                bail!(
                    "{name}: {} duplicate address(es)",
                    result.addresses.len() - distinct.len()
                );
            }
            println!(
                "    {name}, {}: {:.0}/s (first quarter {:.0}/s, last quarter {:.0}/s), {} distinct",
                if lock.is_some() { "one node" } else { "8 nodes" },
                result.rate,
                result.first_quarter,
                result.last_quarter,
                distinct.len()
            );
            case.push(result.rate);
        }
    }
    Ok((median(nodes), median(shared)))
}

async fn ipam_bench() -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("twill-bench-ipam-")
        .tempdir()?;
    let etcd = ipam_figures("etcd", dir.path(), |_| async {
        let server = Etcd::start().await;
        Ok((server.url(), server))
    })
    .await?;
    let sqlite = ipam_figures("SQLite", dir.path(), |n| {
        let url = format!(
            "sqlite:{}",
            dir.path().join(format!("ipam{n}.db")).display()
        );
        async move { Ok((url, ())) }
    })
    .await?;
    let mut out = String::new();
    writeln!(
        out,
        "\nIPAM (`twill_ipam::runtime::Ipam::assign`, in process): {IPAM_CLIENTS} clients at once, each with its own datastore \
         connection, each allocating {IPAM_PER_CLIENT} IPv4 addresses one after the other (a handle each) from 10.96.0.0/16 \
         with /26 blocks, starting from an empty datastore. Either each client is its own node (no lock: compare-and-swap \
         between nodes) or all are one node sharing the node's lock file (the host lock serialises them, as on one machine; \
         that node ends with {} blocks). Median of {IPAM_RUNS} runs; etcd 3.4 one member on loopback. Every address of every run \
         collected and checked: zero duplicates.\n",
        (IPAM_CLIENTS * IPAM_PER_CLIENT).div_ceil(64)
    )?;
    out += "| allocations/s | etcd | SQLite | etcd / SQLite |\n|---|---|---|---|\n";
    writeln!(
        out,
        "| {IPAM_CLIENTS} clients, {IPAM_CLIENTS} nodes | {:.0} | {:.0} | {:.2} |",
        etcd.0,
        sqlite.0,
        etcd.0 / sqlite.0
    )?;
    writeln!(
        out,
        "| {IPAM_CLIENTS} clients, one node (host lock) | {:.0} | {:.0} | {:.2} |",
        etcd.1,
        sqlite.1,
        etcd.1 / sqlite.1
    )?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Lab

/// `twillctl lab down` when dropped, unless already down.
pub(crate) struct LabGuard {
    pub(crate) twillctl: PathBuf,
    pub(crate) name: String,
    pub(crate) up: bool,
}

impl LabGuard {
    pub(crate) fn down(&mut self) -> anyhow::Result<f64> {
        self.up = false;
        let start = Instant::now();
        let out = Command::new(&self.twillctl)
            .args(["lab", "down", "--name", &self.name])
            .output()?;
        let seconds = start.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "twillctl lab down --name {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(seconds)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.up {
            let _ = self.down();
        }
    }
}

const TOPOLOGY: &str = "namespaces:
  x: {ns: x}
  y: {ns: y}
  z: {ns: z}
pods:
  - {ns: x, name: a, labels: {pod: a}}
  - {ns: x, name: b, labels: {pod: b}}
  - {ns: x, name: c, labels: {pod: c}}
  - {ns: y, name: a, labels: {pod: a}}
  - {ns: y, name: b, labels: {pod: b}}
  - {ns: y, name: c, labels: {pod: c}}
  - {ns: z, name: a, labels: {pod: a}}
  - {ns: z, name: b, labels: {pod: b}}
  - {ns: z, name: c, labels: {pod: c}}
ports:
  - {name: serve-80-tcp, port: 80, protocol: TCP}
  - {name: serve-81-tcp, port: 81, protocol: TCP}
  - {name: serve-80-udp, port: 80, protocol: UDP}
  - {name: serve-81-udp, port: 81, protocol: UDP}
";

pub(crate) fn twillctl(args: &[&str]) -> anyhow::Result<(f64, String)> {
    let program = workspace_binary("twillctl");
    let start = Instant::now();
    let out = Command::new(&program).args(args).output()?;
    let seconds = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "twillctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((seconds, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn lab_bench() -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("twill-bench-lab-")
        .tempdir()?;
    let topology = dir.path().join("topology.yaml");
    std::fs::write(&topology, TOPOLOGY)?;
    let name = format!("bench{}", std::process::id());
    let mut lab = LabGuard {
        twillctl: workspace_binary("twillctl"),
        name: name.clone(),
        up: true,
    };
    let topology = topology.to_str().context("temporary path is UTF-8")?;
    let (up, _) = twillctl(&["lab", "up", "--name", &name, "--topology", topology])?;
    let mut probes = Vec::new();
    let mut connected = Vec::new();
    let mut results = 0;
    for _ in 0..PROBE_RUNS {
        let (seconds, text) = twillctl(&["lab", "probe", "--name", &name, "-o", "json"])?;
        let value: Value = serde_json::from_str(&text).context("lab probe -o json")?;
        let list = value["results"].as_array().context("no results")?;
        results = list.len();
        connected.push(
            list.iter()
                .filter(|r| r["connected"] == Value::Bool(true))
                .count(),
        );
        probes.push(seconds);
    }
    let down = lab.down()?;
    let probe = median(probes);
    println!(
        "    lab up {up:.2} s, probe {probe:.2} s ({results} results, connected {connected:?}), down {down:.2} s"
    );
    let all = connected.iter().all(|&c| c == results);
    let mut out = String::new();
    writeln!(
        out,
        "\n`twillctl lab up` of 9 pods (namespaces x, y, z × pods a, b, c; each serving 80/TCP, 81/TCP, 80/UDP, 81/UDP; one node, \
         SQLite datastore; returns when every pod answers), then the full probe `twillctl lab probe -o json` (every pod to \
         every other pod on the 4 ports, from inside the source pod; median of {PROBE_RUNS}), then `twillctl lab down`. No \
         policy: everything should connect.\n"
    )?;
    out += "| step | time |\n|---|---|\n";
    writeln!(out, "| `lab up` (9 pods) | {up:.2} s |")?;
    writeln!(
        out,
        "| `lab probe` ({results} results; connected: {}) | {probe:.2} s |",
        if all {
            format!("all {results}")
        } else {
            format!("**{connected:?}**")
        }
    )?;
    writeln!(out, "| `lab down` | {down:.2} s |")?;
    Ok(out)
}
