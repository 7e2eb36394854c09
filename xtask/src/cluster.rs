//! The cluster benchmarks (BRIEF §4, issue "many nodes" §6), on the lab:
//!
//! - a pod created on node A → reachable from a pod on node B, over 100 pods: with the
//!   block already present on A (B already has its route), and with a new block per pod (a
//!   pool of blockSize 32: every pod's route travels by BGP from A to B);
//! - agents at rest in a 1-node and a 5-node lab: each twill-node's resident memory and CPU;
//! - a restarted (killed) twill-node in the 5-node lab: time until its sessions are up and
//!   its kernel routes every other node's blocks again.
//!
//! No Calico runs here to compare with: the figures stand against the targets.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use twill_interop_tests::netns::named;
use twill_interop_tests::workspace_binary;

use crate::bench::percentile;
use crate::cni::{twillctl, LabGuard};

/// Pods created per scenario.
const PODS: usize = 100;
/// How long at rest before and while measuring CPU.
const REST: Duration = Duration::from_secs(10);
/// Restarts measured.
const RESTARTS: usize = 3;

const PROBER: &str = "namespaces:\n  x: {ns: x}\npods:\n  - {ns: x, name: prober, labels: {pod: prober}, node: node-2}\n  \
    - {ns: x, name: warm, labels: {pod: warm}, node: node-1}\nports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n";

/// The section of docs/benchmarks.md.
pub fn run() -> String {
    let mut out = String::from(
        "## Cluster (targets: a pod on node A reachable from a pod on node B within 100 ms at p99 when the block exists)\n\n",
    );
    println!("  pod on node A → reachable from node B ...");
    match reachability() {
        Ok(text) => out += &text,
        Err(err) => {
            let _ = writeln!(out, "reachability: failed: {err:#}\n");
        }
    }
    println!("  agents at rest, restart convergence ...");
    match at_rest() {
        Ok(text) => out += &text,
        Err(err) => {
            let _ = writeln!(out, "agents at rest: failed: {err:#}\n");
        }
    }
    out
}

fn lab_up(
    name: &str,
    nodes: usize,
    topology: &str,
) -> anyhow::Result<(LabGuard, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("twill-bench-cluster-")
        .tempdir()?;
    let path = dir.path().join("topology.yaml");
    std::fs::write(&path, topology)?;
    let guard = LabGuard {
        twillctl: workspace_binary("twillctl"),
        name: name.to_string(),
        up: true,
    };
    let nodes = nodes.to_string();
    twillctl(&[
        "lab",
        "up",
        "--name",
        name,
        "--nodes",
        &nodes,
        "--topology",
        path.to_str().context("UTF-8 path")?,
    ])?;
    Ok((guard, dir))
}

fn state(name: &str) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(format!("/run/twill/lab/{name}/state.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn pod_field(state: &Value, pod: &str, field: &str) -> Option<String> {
    let (namespace, name) = pod.split_once('/')?;
    state["pods"]
        .as_array()?
        .iter()
        .find(|p| p["namespace"] == namespace && p["name"] == name)
        .and_then(|p| match &p[field] {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
}

/// Connects from inside `netns` to `target` until it works; returns when it did.
pub(crate) fn first_connection(
    netns: &str,
    target: SocketAddr,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || -> anyhow::Result<Instant> {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let deadline = Instant::now() + limit;
        loop {
            if TcpStream::connect_timeout(&target, Duration::from_millis(20)).is_ok() {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                anyhow::bail!("{target} not reachable from {path} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
}

/// (created → reachable from B, answered on A → reachable from B), seconds, per pod.
fn scenario(name: &str, new_blocks: bool) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut lab, dir) = lab_up(name, 2, PROBER)?;
    let datastore = state(name)?["datastore"]
        .as_str()
        .context("datastore")?
        .to_string();
    if new_blocks {
        // Every pod its own block: its route has to reach node-2 by BGP.
        let pools = "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: default-ipv4-ippool\nspec:\n  \
            cidr: 10.90.0.0/16\n  blockSize: 26\n  disabled: true\n  nodeSelector: all()\n\
            ---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: per-pod-blocks\nspec:\n  \
            cidr: 10.92.0.0/16\n  blockSize: 32\n  nodeSelector: all()\n";
        let path = dir.path().join("pools.yaml");
        std::fs::write(&path, pools)?;
        twillctl(&[
            "--datastore",
            &datastore,
            "apply",
            "-f",
            path.to_str().context("UTF-8 path")?,
        ])?;
        twillctl(&["lab", "sync", "--name", name])?;
    }
    let prober = pod_field(&state(name)?, "x/prober", "netns").context("the prober's namespace")?;
    let mut total = Vec::new();
    let mut after_answer = Vec::new();
    for index in 0..PODS {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{index}\n  namespace: x\n  labels: {{pod: p{index}}}\nspec:\n  \
             nodeName: node-1\n  containers: [{{name: c, image: x, ports: [{{containerPort: 80}}]}}]\n"
        );
        let path = dir.path().join("pod.yaml");
        std::fs::write(&path, pod)?;
        let created = Instant::now();
        twillctl(&[
            "lab",
            "apply",
            "--name",
            name,
            "-f",
            path.to_str().context("UTF-8 path")?,
        ])?;
        let answered = Instant::now();
        let ip: IpAddr = pod_field(&state(name)?, &format!("x/p{index}"), "ips")
            .context("the new pod's address")?
            .parse()?;
        let reached = first_connection(&prober, SocketAddr::new(ip, 80), Duration::from_secs(10))?;
        total.push((reached - created).as_secs_f64());
        after_answer.push(reached.saturating_duration_since(answered).as_secs_f64());
    }
    lab.down()?;
    Ok((total, after_answer))
}

fn reachability() -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "A 2-node lab (SQLite, BGP mesh, no encapsulation); {PODS} pods created one after another on node-1 with `twillctl lab \
         apply` (the real CNI plugin; it returns when the pod answers on its node), each probed from a pod on node-2 by TCP \
         connects every millisecond from inside that pod until one succeeds. *Block present*: node-1 already has the block \
         (and node-2 its route). *New block*: a pool of blockSize 32, so every pod is a new block whose route goes node-1 → \
         BGP → node-2's kernel.\n"
    )?;
    out += "| scenario | created → reachable from B, p50 | p99 | answered on A → reachable from B, p50 | p99 |\n|---|---|---|---|---|\n";
    for (label, new_blocks, name) in [
        ("block present", false, format!("bcl{}", std::process::id())),
        (
            "new block per pod",
            true,
            format!("bcn{}", std::process::id()),
        ),
    ] {
        let (mut total, mut after) = scenario(&name, new_blocks)?;
        total.sort_by(f64::total_cmp);
        after.sort_by(f64::total_cmp);
        let ms = |v: f64| v * 1000.0;
        println!(
            "    {label}: p50 {:.1} ms, p99 {:.1} ms (after answering: p50 {:.1}, p99 {:.1})",
            ms(percentile(&total, 0.5)),
            ms(percentile(&total, 0.99)),
            ms(percentile(&after, 0.5)),
            ms(percentile(&after, 0.99))
        );
        writeln!(
            out,
            "| {label} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(percentile(&total, 0.5)),
            ms(percentile(&total, 0.99)),
            ms(percentile(&after, 0.5)),
            ms(percentile(&after, 0.99))
        )?;
    }
    out.push('\n');
    Ok(out)
}

/// The twill-node processes of the lab's nodes, by node.
fn agents(name: &str) -> anyhow::Result<Vec<(String, i32)>> {
    let state = state(name)?;
    let mut found = Vec::new();
    for node in state["nodes"].as_array().context("nodes")? {
        let netns = node["netns"].as_str().context("netns")?;
        for pid in named::pids(netns) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline
                .split(|b| *b == 0)
                .next()
                .is_some_and(|a| a.ends_with(b"twill-node"))
            {
                found.push((node["name"].as_str().unwrap_or("").to_string(), pid));
            }
        }
    }
    Ok(found)
}

fn rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// utime + stime, in clock ticks.
pub(crate) fn cpu_ticks(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn spread(nodes: usize) -> String {
    let mut text = String::from("namespaces:\n  x: {ns: x}\npods:\n");
    for node in 1..=nodes {
        for pod in 0..2 {
            let _ = writeln!(text, "  - {{ns: x, name: n{node}p{pod}, labels: {{pod: n{node}p{pod}}}, node: node-{node}}}");
        }
    }
    text + "ports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n"
}

fn at_rest() -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "Labs of 1 and 5 nodes (2 pods per node, BGP mesh), measured after `lab up` returned and {}s of rest: each \
         twill-node's resident memory and CPU over the next {}s (felix, the BGP speaker and the encapsulation in one \
         process per node). Then, in the 5-node lab, node-3's twill-node killed (SIGKILL) and started again {RESTARTS} times: \
         the time from its start until `twillctl lab sync` returns (its BGP sessions Established, every other node's block \
         in its kernel, the datastore's revision applied).\n",
        REST.as_secs(),
        REST.as_secs()
    )?;
    out += "| lab | twill-node RSS, median (max) | CPU at rest, median (max) |\n|---|---|---|\n";
    let ticks_per_second = 100.0;
    let mut restart_times = Vec::new();
    for nodes in [1usize, 5] {
        let name = format!("br{nodes}x{}", std::process::id());
        let (mut lab, _dir) = lab_up(&name, nodes, &spread(nodes))?;
        std::thread::sleep(REST);
        let pids = agents(&name)?;
        let before: Vec<u64> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
        std::thread::sleep(REST);
        let mut cpu: Vec<f64> = pids
            .iter()
            .zip(before)
            .map(|((_, pid), start)| {
                (cpu_ticks(*pid).saturating_sub(start)) as f64
                    / ticks_per_second
                    / REST.as_secs_f64()
                    * 100.0
            })
            .collect();
        let mut rss: Vec<f64> = pids.iter().map(|(_, pid)| rss_mib(*pid)).collect();
        cpu.sort_by(f64::total_cmp);
        rss.sort_by(f64::total_cmp);
        let max = |v: &[f64]| v.last().copied().unwrap_or(0.0);
        println!(
            "    {nodes} node(s): RSS median {:.1} MiB, CPU median {:.2}%",
            percentile(&rss, 0.5),
            percentile(&cpu, 0.5)
        );
        writeln!(
            out,
            "| {nodes} node(s) | {:.1} MiB ({:.1}) | {:.2}% ({:.2}%) |",
            percentile(&rss, 0.5),
            max(&rss),
            percentile(&cpu, 0.5),
            max(&cpu)
        )?;
        if nodes == 5 {
            for _ in 0..RESTARTS {
                twillctl(&["lab", "node", "--name", &name, "kill", "node-3"])?;
                let started = Instant::now();
                twillctl(&["lab", "node", "--name", &name, "start", "node-3"])?;
                twillctl(&["lab", "sync", "--name", &name, "--timeout", "120"])?;
                restart_times.push(started.elapsed().as_secs_f64());
            }
        }
        lab.down()?;
    }
    restart_times.sort_by(f64::total_cmp);
    println!("    restart → converged: {restart_times:?}");
    writeln!(
        out,
        "\n| restarted node (5-node lab) | median | max |\n|---|---|---|\n| kill -9, start → converged | {:.2} s | {:.2} s |\n",
        percentile(&restart_times, 0.5),
        restart_times.last().copied().unwrap_or(0.0)
    )?;
    Ok(out)
}
