//! `cargo xtask bench-kube-install`: Twill on a real Kubernetes cluster (the lab's
//! `--kubernetes` cluster: kubelets, containerd, kube-proxy, three nodes). Measured:
//! `kubectl apply -f twill.yaml` → every node Ready with twill-node and the controllers
//! ready; pod start latency (create → Running, create → first TCP answer from another node)
//! of 50 pods with Twill and, on the same kind of cluster, with the reference `bridge` +
//! `host-local` plugins (static routes between the nodes' /24s); twill-node's memory and CPU
//! at rest and over a 100-pod churn.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use twill_lab::kube::kubectl;

use crate::bench::percentile;
use crate::cluster::{cpu_ticks, first_connection};
use crate::cni::{twillctl, LabGuard};
use crate::kube_bench::status_mib;
use twill_interop_tests::workspace_binary;

const NODES: usize = 3;
const PODS: usize = 50;

fn json(kubeconfig: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    Ok(serde_json::from_str(&kubectl(kubeconfig, &full, None)?)?)
}

fn ready(object: &Value) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// A `--kubernetes --without-twill` lab of `NODES` nodes; its kubeconfig.
fn cluster(name: &str) -> anyhow::Result<(LabGuard, String)> {
    let guard = LabGuard {
        twillctl: workspace_binary("twillctl"),
        name: name.to_string(),
        up: true,
    };
    let _ = twillctl(&["lab", "down", "--name", name]);
    twillctl(&[
        "lab",
        "up",
        "--name",
        name,
        "--kubernetes",
        "--without-twill",
        "--nodes",
        &NODES.to_string(),
    ])?;
    let (_, status) = twillctl(&["lab", "status", "--name", name, "-o", "json"])?;
    let status: Value = serde_json::from_str(&status)?;
    let kubeconfig = status["kubeconfig"]
        .as_str()
        .context("kubeconfig")?
        .to_string();
    Ok((guard, kubeconfig))
}

fn disk(lab: &str, node: &str) -> PathBuf {
    Path::new("/var/lib/twill-lab").join(lab).join(node)
}

/// The reference network (as a node with the OS's plugins has it: loopback too): bridge +
/// host-local with `10.245.N.0/24` on node N, and a route
/// on every node to every other node's /24 (as a flat L2/L3 network would have).
fn reference_network(lab: &str) -> anyhow::Result<()> {
    for n in 1..=NODES {
        let dir = disk(lab, &format!("node-{n}"));
        for plugin in ["bridge", "host-local", "loopback"] {
            std::fs::copy(
                Path::new("/usr/lib/cni").join(plugin),
                dir.join("opt-cni-bin").join(plugin),
            )?;
        }
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "reference",
            "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.245.{n}.0/24")}]],
                         "routes": [{"dst": "0.0.0.0/0"}]}}]});
        std::fs::write(
            dir.join("etc-cni-net.d/10-bridge.conflist"),
            serde_json::to_vec_pretty(&conf)?,
        )?;
        for m in (1..=NODES).filter(|m| *m != n) {
            let netns = format!("twl-{lab}.node-{n}");
            let out = Command::new("ip")
                .args(["-n", &netns, "route", "replace"])
                .arg(format!("10.245.{m}.0/24"))
                .args(["via", &format!("198.18.0.{}", 10 + m)])
                .output()?;
            if !out.status.success() {
                bail!("route on {netns}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    Ok(())
}

fn wait_ready(kubeconfig: &str, with_twill: bool, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let nodes = json(kubeconfig, &["get", "nodes"])?;
        let nodes_ready = nodes["items"]
            .as_array()
            .is_some_and(|n| n.len() == NODES && n.iter().all(ready));
        let pods_ready = !with_twill || {
            let pods = json(kubeconfig, &["-n", "twill-system", "get", "pods"])?;
            pods["items"]
                .as_array()
                .is_some_and(|p| p.len() == NODES + 1 && p.iter().all(ready))
        };
        if nodes_ready && pods_ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pods_yaml(prefix: &str) -> String {
    (0..PODS)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {prefix}-{i}, labels: {{bench: '{prefix}'}}}}\n\
                 spec:\n  nodeName: node-{}\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
                 - {{name: c, image: 'twill/responder:lab', imagePullPolicy: IfNotPresent, \
                 args: ['--answer', 'p{i}', '--port', '80/TCP']}}\n",
                i % NODES + 1
            )
        })
        .collect()
}

/// Creates `PODS` pods at once; (create → Running, create → answered from another node's
/// namespace), seconds, per pod.
fn pod_start(lab: &str, kubeconfig: &str, prefix: &str) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let started = Instant::now();
    kubectl(kubeconfig, &["create", "-f", "-"], Some(&pods_yaml(prefix)))?;
    let mut running: std::collections::BTreeMap<String, f64> = Default::default();
    let mut probes = Vec::new();
    let deadline = started + Duration::from_secs(300);
    while running.len() < PODS {
        if Instant::now() > deadline {
            bail!("{} of {PODS} pods Running after 300 s", running.len());
        }
        let pods = json(
            kubeconfig,
            &["get", "pods", "-l", &format!("bench={prefix}")],
        )?;
        for pod in pods["items"].as_array().into_iter().flatten() {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (Some(ip), Some(node)) = (
                pod["status"]["podIP"].as_str(),
                pod["spec"]["nodeName"].as_str(),
            ) else {
                continue;
            };
            if pod["status"]["phase"] != "Running" || running.contains_key(&name) {
                continue;
            }
            running.insert(name, started.elapsed().as_secs_f64());
            // From the next node's namespace: the path a pod on another node takes.
            let index: usize = node.trim_start_matches("node-").parse().unwrap_or(1);
            let from = format!("twl-{lab}.node-{}", index % NODES + 1);
            let target: SocketAddr = format!("{ip}:80").parse()?;
            probes.push(std::thread::spawn(move || {
                first_connection(&from, target, Duration::from_secs(120))
            }));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut answered = Vec::new();
    for probe in probes {
        let at = probe
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread"))??;
        answered.push(at.duration_since(started).as_secs_f64());
    }
    let mut running: Vec<f64> = running.into_values().collect();
    running.sort_by(f64::total_cmp);
    answered.sort_by(f64::total_cmp);
    Ok((running, answered))
}

fn twill_node_pids(lab: &str) -> Vec<i32> {
    (1..=NODES)
        .flat_map(|n| twill_lab::netns::named::pids(&format!("twl-{lab}.node-{n}")))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .next()
                    .is_some_and(|argv0| argv0.ends_with(b"twill-node"))
            })
        })
        .collect()
}

fn row(out: &mut String, what: &str, twill: &[f64], reference: &[f64]) {
    let (t50, t99) = (percentile(twill, 0.5), percentile(twill, 0.99));
    let (r50, r99) = (percentile(reference, 0.5), percentile(reference, 0.99));
    let _ = writeln!(
        out,
        "| {what} | {:.2} / {:.2} s | {:.2} / {:.2} s | {:.2} / {:.2} |",
        t50,
        t99,
        r50,
        r99,
        t50 / r50,
        t99 / r99
    );
}

fn measure() -> anyhow::Result<String> {
    let mut out = String::new();
    // With Twill.
    let lab = "bki-twill";
    let (mut guard, kubeconfig) = cluster(lab)?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/twill.yaml");
    let started = Instant::now();
    kubectl(
        &kubeconfig,
        &["apply", "-f", manifest.to_str().context("path")?],
        None,
    )?;
    wait_ready(&kubeconfig, true, Duration::from_secs(300))?;
    let install = started.elapsed().as_secs_f64();
    let (twill_running, twill_answered) = pod_start(lab, &kubeconfig, "a")?;
    // At rest: 20 s with 50 pods.
    let pids = twill_node_pids(lab);
    let ticks = |pids: &[i32]| pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let rest_started = (Instant::now(), ticks(&pids));
    std::thread::sleep(Duration::from_secs(20));
    let rest_cpu = (ticks(&pids) - rest_started.1) as f64
        / 100.0
        / rest_started.0.elapsed().as_secs_f64()
        / pids.len().max(1) as f64;
    let rest_rss: f64 =
        pids.iter().map(|p| status_mib(*p, "VmRSS:")).sum::<f64>() / pids.len().max(1) as f64;
    // Churn: the 50 pods go, 50 others come (100 pod changes).
    let churn_started = (Instant::now(), ticks(&pids));
    kubectl(
        &kubeconfig,
        &["delete", "pods", "-l", "bench=a", "--wait=false"],
        None,
    )?;
    pod_start(lab, &kubeconfig, "b")?;
    let churn_seconds = churn_started.0.elapsed().as_secs_f64();
    let churn_cpu = (ticks(&pids) - churn_started.1) as f64 / 100.0 / pids.len().max(1) as f64;
    let peak: f64 = pids
        .iter()
        .map(|p| status_mib(*p, "VmHWM:"))
        .fold(0.0, f64::max);
    guard.down()?;
    // The reference plugins.
    let lab = "bki-ref";
    let (mut guard, kubeconfig) = cluster(lab)?;
    reference_network(lab)?;
    wait_ready(&kubeconfig, false, Duration::from_secs(120))?;
    let (ref_running, ref_answered) = pod_start(lab, &kubeconfig, "a")?;
    guard.down()?;

    let _ = writeln!(
        out,
        "`kubectl apply -f deploy/kubernetes/twill.yaml` on a {NODES}-node cluster \
         without a network → every node Ready, twill-node ready on each and \
         twill-kube-controllers ready: **{install:.1} s** (one run).\n"
    );
    let _ = writeln!(
        out,
        "Pod start, {PODS} pods created at once over {NODES} nodes (p50 / p99 from the create; \
         answered: the first TCP connection to the pod from another node's namespace):\n"
    );
    let _ = writeln!(out, "| | Twill | bridge + host-local | Twill / reference |");
    let _ = writeln!(out, "|---|---|---|---|");
    row(&mut out, "create → Running", &twill_running, &ref_running);
    row(
        &mut out,
        "create → answered",
        &twill_answered,
        &ref_answered,
    );
    let _ = writeln!(
        out,
        "\ntwill-node in the cluster (mean per node, {} nodes): at rest with {PODS} pods \
         {rest_rss:.0} MiB RSS, {:.2} % of a core; a churn of 100 pods ({PODS} deleted, \
         {PODS} created, {churn_seconds:.1} s) took {churn_cpu:.2} CPU-seconds per node; peak \
         RSS {peak:.0} MiB.\n",
        pids.len(),
        rest_cpu * 100.0
    );
    Ok(out)
}

/// The section for docs/benchmarks.md.
pub fn run() -> String {
    let mut out = String::from(
        "## Twill on a Kubernetes cluster (target: pod start ≤ 1.1× the reference plugins)\n\n",
    );
    match measure() {
        Ok(text) => out += &text,
        Err(err) => {
            let _ = writeln!(out, "failed: {err:#}\n");
        }
    }
    out
}
