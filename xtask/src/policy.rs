//! The policy benchmarks: a node's start of day (calculation, rules and set members rendered,
//! apply) against the raw `iptables-restore` + `ipset restore` of the same text; one change
//! (a pod relabelled, a policy added) to the kernel, p50/p99 over 200 changes, against the
//! floor of the tools themselves; rules rendered as the cluster grows.
//!
//! The cluster is generated as real ones look: namespaces of a few dozen apps, pods with app /
//! tier / version labels and a named port, Kubernetes policies (podSelector + from a
//! podSelector, a namespaceSelector or both, numbered and named ports) and Calico policies
//! (selectors of 1–3 terms, nets, port ranges, orders). Everything runs in a network namespace
//! made here (removed by its guard); the root namespace is never touched.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use twill_felix::apply::{Applier, ApplierConfig};
use twill_felix::calc::{compute, Calculator, Config};
use twill_felix::ir::{Dataplane, Family};
use twill_felix::model::Model;
use twill_felix::plan::{plan_sets, plan_table};
use twill_interop_tests::netns::Netns;
use twill_shared::resource::document::parse_documents;
use twill_shared::resource::{Resource, DEFAULT_NAMESPACE};

const NODE: &str = "node-0";

/// A small deterministic generator (xorshift), so every run builds the same cluster.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The cluster's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Endpoints in the cluster.
    pub endpoints: usize,
    /// Of them, on this node.
    pub local: usize,
    /// Policies.
    pub policies: usize,
}

const NAMESPACES: usize = 50;
const APPS: usize = 40;

fn documents(shape: Shape) -> Vec<serde_json::Value> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut docs = Vec::new();
    for n in 0..NAMESPACES {
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{n}"),
            "labels": {"name": format!("ns{n}"), "team": format!("team{}", n % 7), "env": if n % 3 == 0 { "prod" } else { "dev" }}}}));
    }
    for e in 0..shape.endpoints {
        let namespace = format!("ns{}", e % NAMESPACES);
        let app = format!("app{}", random.below(APPS));
        let node = if e < shape.local {
            NODE.to_string()
        } else {
            format!("node-{}", 1 + e % 39)
        };
        let ip = format!("10.{}.{}.{}", 64 + e / 65536, (e / 256) % 256, e % 256);
        let tier = ["web", "api", "db"][random.below(3)];
        let version = format!("v{}", random.below(3));
        docs.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
            "metadata": {"name": format!("{node}-k8s-pod{e}-eth0"), "namespace": namespace,
                "labels": {"app": app, "tier": tier, "version": version,
                    "projectcalico.org/namespace": namespace, "projectcalico.org/orchestrator": "k8s"}},
            "spec": {"node": node, "pod": format!("pod{e}"), "endpoint": "eth0", "containerID": format!("c{e}"),
                "interfaceName": if e < shape.local { format!("tw{e:011x}") } else { format!("twr{e:010x}") },
                "ipNetworks": [format!("{ip}/32")], "profiles": [format!("kns.{namespace}")],
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}}));
    }
    for p in 0..shape.policies {
        let namespace = format!("ns{}", random.below(NAMESPACES));
        let app = format!("app{}", random.below(APPS));
        let peer = format!("app{}", random.below(APPS));
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
            docs.push(
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("knp{p}"), "namespace": namespace},
                "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                    "ingress": [{"from": from, "ports": ports}]}}),
            );
        } else {
            let selector = match p % 3 {
                0 => format!("app == '{app}'"),
                1 => format!("app == '{app}' && tier == 'api'"),
                _ => format!("app == '{app}' && tier in {{'web', 'api'}} && version != 'v0'"),
            };
            docs.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                "metadata": {"name": format!("cnp{p}"), "namespace": namespace},
                "spec": {"selector": selector, "order": 100 + p, "types": ["Ingress", "Egress"],
                    "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": format!("app == '{peer}'")},
                                 "destination": {"ports": [8080, "9000:9100"]}},
                                {"action": "Deny", "source": {"nets": ["10.200.0.0/16", "10.201.0.0/16"]}}],
                    "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
                               {"action": "Allow", "destination": {"selector": format!("app == '{peer}'"), "namespaceSelector": "env == 'prod'"}}]}}));
        }
    }
    docs
}

fn model_of(docs: &[serde_json::Value]) -> anyhow::Result<Model> {
    let text: String = docs.iter().map(|d| format!("---\n{d}\n")).collect();
    let resources = parse_documents(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut model = Model::default();
    for mut resource in resources {
        resource.apply_defaults(DEFAULT_NAMESPACE);
        model.set(resource.key(), Some(resource));
    }
    Ok(model)
}

fn rules(dataplane: &Dataplane) -> usize {
    dataplane
        .tables
        .values()
        .flat_map(|t| t.chains.values())
        .map(|c| c.rules.len())
        .sum()
}

fn members(dataplane: &Dataplane) -> usize {
    dataplane.sets.values().map(|s| s.members.len()).sum()
}

/// Runs `f` on a thread inside the namespace.
fn inside<T: Send>(netns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{}", netns.name());
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = File::open(&path).expect("the namespace exists");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter the namespace");
                f()
            })
            .join()
            .expect("the benchmark thread does not panic")
    })
}

fn run_with_input(netns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut child = netns
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(started.elapsed().as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

/// Start of day: calc, render, apply in a fresh namespace, and the raw restore of the same text.
fn start_of_day(shape: Shape, out: &mut String) -> anyhow::Result<()> {
    let docs = documents(shape);
    let model = model_of(&docs)?;
    let config = Config {
        node: NODE.into(),
        ..Config::from_model(&model, NODE)
    };
    let mut calc_times = Vec::new();
    let mut computed = None;
    for _ in 0..3 {
        let mut calculator = Calculator::with_config(model.clone(), config.clone());
        let started = Instant::now();
        calculator.compute();
        calc_times.push(started.elapsed().as_secs_f64());
        computed = Some(calculator.computed().clone());
    }
    let computed = computed.expect("computed three times");
    let (mut apply_times, mut raw_times) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let netns = Netns::new("pol");
        apply_times.push(inside(&netns, || -> anyhow::Result<f64> {
            let started = Instant::now();
            let mut applier = Applier::new(&ApplierConfig::default());
            applier.apply(Family::V4, &computed.v4)?;
            Ok(started.elapsed().as_secs_f64())
        })?);
        let raw = Netns::new("raw");
        let sets = plan_sets(Family::V4, &computed.v4.sets, "");
        let table = plan_table(
            Family::V4,
            "filter",
            &computed.v4.tables["filter"],
            &computed.v4.hooks,
            "",
        )
        .unwrap_or_default();
        let ipset = run_with_input(&raw, "ipset", &["restore", "-exist"], &sets.before)?;
        let iptables = run_with_input(&raw, "iptables-nft-restore", &["--noflush"], &table)?;
        raw_times.push(ipset + iptables);
    }
    let calc = median(calc_times);
    let apply = median(apply_times);
    let raw = median(raw_times);
    writeln!(
        out,
        "| start of day: {} endpoints ({} local), {} policies | {:.0} ms | {:.0} ms | {:.0} ms | {} rules, {} set members | {:.0} ms | {:.2}× |",
        shape.endpoints,
        shape.local,
        shape.policies,
        calc * 1000.0,
        apply * 1000.0,
        (calc + apply) * 1000.0,
        rules(&computed.v4),
        members(&computed.v4),
        raw * 1000.0,
        (calc + apply) / raw
    )?;
    Ok(())
}

/// One change at a time, 200 of them: a local pod's label, or a new policy; from the model
/// change to the kernel (calc + plan + restore), and the tools' own floor beside it.
fn changes(shape: Shape, out: &mut String) -> anyhow::Result<()> {
    let docs = documents(shape);
    let model = model_of(&docs)?;
    let config = Config {
        node: NODE.into(),
        ..Config::from_model(&model, NODE)
    };
    let mut calculator = Calculator::with_config(model, config);
    let netns = Netns::new("chg");
    let mut calc_times = Vec::new();
    let mut wrote = Vec::new();
    let (times, floor) = inside(&netns, || -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let mut applier = Applier::new(&ApplierConfig::default());
        applier.apply(Family::V4, &calculator.compute().v4)?;
        let mut times = Vec::new();
        let mut floor = Vec::new();
        for i in 0..200 {
            let resource = change(&docs, shape, i)?;
            let started = Instant::now();
            let calc_started = Instant::now();
            calculator.update(resource.key(), Some(resource));
            let computed = calculator.compute();
            calc_times.push(calc_started.elapsed().as_secs_f64());
            let stats = applier.apply(Family::V4, &computed.v4)?;
            times.push(started.elapsed().as_secs_f64());
            wrote.push(!stats.wrote_nothing());
            // The floor: what the tools alone take to write one small change into this
            // ruleset (a one-chain iptables-restore and a one-member ipset restore).
            let started = Instant::now();
            let mut restore = Command::new("iptables-nft-restore")
                .arg("--noflush")
                .stdin(Stdio::piped())
                .spawn()?;
            restore.stdin.take().context("stdin")?.write_all(
                b"*filter\n:twl-bench-floor - [0:0]\n-A twl-bench-floor -j RETURN\nCOMMIT\n",
            )?;
            anyhow::ensure!(restore.wait()?.success(), "restore failed");
            let mut sets = Command::new("ipset")
                .args(["restore", "-exist"])
                .stdin(Stdio::piped())
                .spawn()?;
            sets.stdin.take().context("stdin")?.write_all(format!("create twl-bench-floor hash:net family inet\nadd twl-bench-floor 10.255.{}.{}\n", i / 256, i % 256).as_bytes())?;
            anyhow::ensure!(sets.wait()?.success(), "ipset restore failed");
            floor.push(started.elapsed().as_secs_f64());
        }
        Ok((times, floor))
    })?;
    let ms = |v: f64| v * 1000.0;
    let writing: Vec<f64> = times
        .iter()
        .zip(&wrote)
        .filter(|(_, w)| **w)
        .map(|(t, _)| *t)
        .collect();
    writeln!(
        out,
        "| one change → kernel (200: pod relabels and new policies) | p50 {:.1} ms, p99 {:.1} ms (of which calculation p50 {:.1} ms, p99 {:.1} ms) | a one-chain iptables-nft-restore + a one-member ipset restore: p50 {:.1} ms, p99 {:.1} ms | p50 {:.2}× |",
        ms(percentile(times.clone(), 0.5)),
        ms(percentile(times.clone(), 0.99)),
        ms(percentile(calc_times.clone(), 0.5)),
        ms(percentile(calc_times, 0.99)),
        ms(percentile(floor.clone(), 0.5)),
        ms(percentile(floor.clone(), 0.99)),
        percentile(times, 0.5) / percentile(floor.clone(), 0.5)
    )?;
    if !writing.is_empty() {
        writeln!(
            out,
            "| … only the {} of 200 changes that wrote to the kernel (the others touched no chain or set of this node) | p50 {:.1} ms, p99 {:.1} ms | as above | p50 {:.2}× |",
            writing.len(),
            ms(percentile(writing.clone(), 0.5)),
            ms(percentile(writing.clone(), 0.99)),
            percentile(writing, 0.5) / percentile(floor, 0.5)
        )?;
    }
    Ok(())
}

/// The `i`th change of the one-change benchmark: a local pod's label (even), a new policy
/// (odd).
fn change(docs: &[serde_json::Value], shape: Shape, i: usize) -> anyhow::Result<Resource> {
    let text = if i.is_multiple_of(2) {
        let e = i % shape.local;
        let mut wep = docs
            .iter()
            .find(|d| d["spec"]["pod"] == format!("pod{e}"))
            .cloned()
            .context("a local pod")?;
        wep["metadata"]["labels"]["app"] = json!(format!("app{}", (i * 7) % APPS));
        format!("{wep}")
    } else {
        let app = format!("app{}", i % APPS);
        format!(
            "{}",
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("added{i}"), "namespace": format!("ns{}", i % NAMESPACES)},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "app1"}}}], "ports": [{"port": 7000 + i}]}]}})
        )
    };
    let resource: Resource = parse_documents(&text)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .remove(0);
    Ok(resource)
}

/// The calculation alone over the one-change benchmark's changes (for profilers):
/// `cargo xtask policy-calc`.
pub fn calc_only() -> anyhow::Result<()> {
    let shape = Shape {
        endpoints: 10_000,
        local: 250,
        policies: 1000,
    };
    let docs = documents(shape);
    let model = model_of(&docs)?;
    let config = Config {
        node: NODE.into(),
        ..Config::from_model(&model, NODE)
    };
    let mut calculator = Calculator::with_config(model, config);
    calculator.compute();
    let mut times = Vec::new();
    for round in 0..5 {
        for i in 0..200 {
            let resource = change(&docs, shape, i + round * 200)?;
            let started = Instant::now();
            calculator.update(resource.key(), Some(resource));
            calculator.compute();
            times.push(started.elapsed().as_secs_f64());
        }
    }
    println!(
        "calc p50 {:.2} ms, p99 {:.2} ms",
        percentile(times.clone(), 0.5) * 1000.0,
        percentile(times, 0.99) * 1000.0
    );
    Ok(())
}

/// Rules rendered as the cluster grows with the local endpoints and policies fixed, and the
/// memory it takes: each size runs in a process of its own (`xtask policy-memory N`), whose
/// peak RSS, less that of the same process for an empty cluster, is divided by N.
fn scaling(out: &mut String) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let measure = |endpoints: usize| -> anyhow::Result<serde_json::Value> {
        let output = Command::new(&exe)
            .args(["policy-memory", &endpoints.to_string()])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "policy-memory {endpoints} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let empty = measure(0)?["peak_kib"].as_u64().unwrap_or(0);
    for endpoints in [1_000, 10_000, 100_000] {
        let row = measure(endpoints)?;
        let peak = row["peak_kib"].as_u64().unwrap_or(0);
        writeln!(
            out,
            "| {endpoints} cluster endpoints, 250 local, 1000 policies | {} rules | {} set members | calc {:.0} ms | peak {} MiB ({:.1} KiB per endpoint over an empty cluster) |",
            row["rules"],
            row["members"],
            row["calc_ms"].as_f64().unwrap_or(0.0),
            peak / 1024,
            peak.saturating_sub(empty) as f64 / endpoints as f64
        )?;
    }
    Ok(())
}

/// `xtask policy-memory N`: builds the model of N endpoints, calculates, prints rules, set
/// members, calculation time and this process's peak RSS as JSON.
pub fn memory(endpoints: usize) -> anyhow::Result<()> {
    let shape = Shape {
        endpoints,
        local: endpoints.min(250),
        policies: 1000,
    };
    let model = model_of(&documents(shape))?;
    let config = Config {
        node: NODE.into(),
        ..Config::from_model(&model, NODE)
    };
    let started = Instant::now();
    let computed = compute(&model, &config);
    let calc_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    println!(
        "{}",
        json!({"rules": rules(&computed.v4), "members": members(&computed.v4), "calc_ms": calc_ms, "peak_kib": peak_kib})
    );
    Ok(())
}

/// The policy section of docs/benchmarks.md.
pub fn run() -> String {
    let mut out = String::from("## Policy (felix)\n\n");
    out.push_str(
        "A generated cluster (50 namespaces, 40 apps, pods with app/tier/version labels and a named port; 70% Kubernetes \
         policies with pod, namespace and combined peers, numbered and named ports; 30% Calico policies with 1–3-term \
         selectors, nets, port ranges and orders). Apply runs in a fresh network namespace with iptables-nft; \
         the raw restore feeds the same text to `ipset restore` and `iptables-nft-restore --noflush`. Medians of 3.\n\n",
    );
    out.push_str("| what | calc | apply | total | rendered | raw restore | total / raw |\n|---|---|---|---|---|---|---|\n");
    for shape in [Shape {
        endpoints: 10_000,
        local: 250,
        policies: 1000,
    }] {
        if let Err(err) = start_of_day(shape, &mut out) {
            let _ = writeln!(out, "| start of day | **failed**: {err:#} |");
        }
    }
    out.push_str("\n| what | Twill | floor | ratio |\n|---|---|---|---|\n");
    if let Err(err) = changes(
        Shape {
            endpoints: 10_000,
            local: 250,
            policies: 1000,
        },
        &mut out,
    ) {
        let _ = writeln!(out, "| one change | **failed**: {err:#} |");
    }
    out.push_str("\n| cluster | rules | set members | calc | memory (peak RSS of model + calculation) |\n|---|---|---|---|---|\n");
    if let Err(err) = scaling(&mut out) {
        let _ = writeln!(out, "| scaling | **failed**: {err:#} |");
    }
    out
}
