//! Policy scenarios on the wire, in the manner of the upstream Kubernetes e2e netpol suite
//! (namespaces x/y/z × pods a/b/c, ports 80/81 over TCP and UDP) plus Calico's own policy
//! model: each scenario applies its objects to a real lab, waits for the node to apply them,
//! probes the whole matrix from inside the pods, and compares it with a matrix written by hand
//! from the Kubernetes and Calico documentation (never from felix's code, never from
//! `policy explain`). `policy explain` is then asked about every cell and must agree with the
//! wire. A scenario removes its objects before the next one starts.
//!
//! The expected matrices are built e2e-style: start from "everything connects", then for each
//! policy say what the destination's ingress and the source's egress admit; a cell connects
//! when both directions admit it (Calico evaluates egress at the source and ingress at the
//! destination independently).

#![allow(clippy::disallowed_methods)] // Tests run processes, read the clock and sleep.

use std::collections::{BTreeMap, BTreeSet};

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{twillctl, Run};

/// How long each probe waits for an answer.
const PROBE_TIMEOUT_MS: &str = "700";
/// How many `policy explain` processes run at once.
const EXPLAIN_WORKERS: usize = 4;

// ---------------------------------------------------------------------------------------------
// Running twillctl and the lab.

/// (from, to, port, protocol): one cell of the matrix.
type Cell = (String, String, u16, String);

/// A lab that is taken down when the test ends, however it ends.
struct LabGuard {
    name: String,
    datastore: String,
    /// On the Kubernetes datastore: the lab API server's kubeconfig (objects other than pods
    /// then go in and out with kubectl, as a user's do).
    kubeconfig: Option<String>,
    /// NS/POD → IPv4 address.
    ips: BTreeMap<String, String>,
}

impl LabGuard {
    fn up(topology: &str) -> LabGuard {
        LabGuard::up_with(topology, &[])
    }

    fn up_with(topology: &str, extra: &[&str]) -> LabGuard {
        let name = common::lab_name("p");
        let mut guard = LabGuard {
            name,
            datastore: String::new(),
            kubeconfig: None,
            ips: BTreeMap::new(),
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), topology).unwrap();
        let mut args = vec!["up", "--topology", file.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        guard.ok(&args, None);
        guard.refresh();
        guard
    }

    /// Reads the datastore and the pods' addresses from `lab status`.
    fn refresh(&mut self) {
        let status: Value =
            serde_json::from_str(&self.ok(&["status", "-o", "json"], None)).unwrap();
        self.datastore = status["datastore"].as_str().unwrap().to_string();
        self.kubeconfig = status["kubeconfig"].as_str().map(str::to_string);
        self.ips = status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap(),
                        p["name"].as_str().unwrap()
                    ),
                    p["ip"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    }

    fn ip(&self, pod: &str) -> &str {
        self.ips
            .get(pod)
            .unwrap_or_else(|| panic!("no pod {pod} in {:?}", self.ips))
    }

    /// `pod`'s address as a /32.
    fn net(&self, pod: &str) -> String {
        format!("{}/32", self.ip(pod))
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut full = vec!["lab", "--name", &self.name];
        full.extend_from_slice(args);
        twillctl(&full, stdin)
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let run = self.run(args, stdin);
        assert_eq!(
            run.code, 0,
            "twillctl lab {args:?} failed:\n{}\n{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    fn sync(&self) {
        self.ok(&["sync", "--timeout", "30"], None);
    }

    /// `lab apply -f -` (which waits for the node), then `lab sync`; what went wrong, if
    /// anything (a node that cannot apply a policy is a finding, not the end of the test). On
    /// the Kubernetes datastore, everything but pods goes in with `kubectl apply`.
    fn try_apply(&self, text: &str) -> Result<(), String> {
        let (pods, others) = self.split(text);
        if let Some(others) = others {
            self.kubectl(&["apply", "-f", "-"], &others)?;
        }
        if !pods.trim().is_empty() {
            let run = self.run(&["apply", "-f", "-"], Some(&pods));
            if run.code != 0 {
                return Err(format!("lab apply failed: {}", run.stderr.trim()));
            }
        }
        let run = self.run(&["sync", "--timeout", "30"], None);
        if run.code != 0 {
            return Err(format!("lab sync failed: {}", run.stderr.trim()));
        }
        Ok(())
    }

    /// On the Kubernetes datastore: (the pods, the other documents); elsewhere (everything,
    /// None).
    fn split(&self, text: &str) -> (String, Option<String>) {
        if self.kubeconfig.is_none() {
            return (text.to_string(), None);
        }
        let (mut pods, mut others) = (String::new(), String::new());
        for document in text.split("\n---") {
            let value: Option<Value> = serde_yaml::from_str(document).ok();
            let Some(value) = value.filter(|v| !v.is_null()) else {
                continue;
            };
            let target = if value["kind"] == "Pod" {
                &mut pods
            } else {
                &mut others
            };
            target.push_str(&format!(
                "---\n{}\n",
                serde_json::to_string(&value).unwrap()
            ));
        }
        (pods, (!others.is_empty()).then_some(others))
    }

    /// kubectl against the lab's API server.
    fn kubectl(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let kubeconfig = self.kubeconfig.as_deref().expect("a Kubernetes lab");
        common::kubectl(kubeconfig, args, stdin)
    }

    /// `lab apply -f -`, then `lab sync`; both must succeed.
    fn apply(&self, text: &str) {
        if let Err(err) = self.try_apply(text) {
            panic!("{err}");
        }
    }

    /// `lab delete -f -` (on the Kubernetes datastore, `kubectl delete` for all but pods),
    /// then `lab sync`.
    fn delete(&self, text: &str) {
        let (pods, others) = self.split(text);
        if let Some(others) = others {
            self.kubectl(&["delete", "-f", "-"], &others)
                .unwrap_or_else(|err| panic!("{err}"));
        }
        if !pods.trim().is_empty() {
            self.ok(&["delete", "-f", "-"], Some(&pods));
        }
        self.sync();
    }

    /// `twillctl apply` (the user's command, which warns about fields it does not enforce),
    /// then `lab sync`; returns its standard error.
    fn ctl_apply(&self, text: &str) -> String {
        let run = twillctl(
            &["--datastore", &self.datastore, "apply", "-f", "-"],
            Some(text),
        );
        assert_eq!(run.code, 0, "twillctl apply failed:\n{}", run.stderr);
        self.sync();
        run.stderr
    }

    /// The matrix on the wire.
    fn probe(&self, ports: &[&str]) -> BTreeMap<Cell, bool> {
        let mut args = vec!["probe", "-o", "json", "--timeout-ms", PROBE_TIMEOUT_MS];
        for port in ports {
            args.extend(["--port", port]);
        }
        let value: Value = serde_json::from_str(&self.ok(&args, None)).unwrap();
        value["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let key = (
                    r["from"].as_str().unwrap().to_string(),
                    r["to"].as_str().unwrap().to_string(),
                    r["port"].as_u64().unwrap() as u16,
                    r["protocol"].as_str().unwrap().to_string(),
                );
                (key, r["connected"].as_bool().unwrap())
            })
            .collect()
    }

    /// `policy explain` for each cell, a few at a time: cell → (allowed, explanation).
    fn explain(&self, cells: &[Cell]) -> BTreeMap<Cell, (bool, String)> {
        let next = AtomicUsize::new(0);
        let answers = Mutex::new(BTreeMap::new());
        std::thread::scope(|scope| {
            for _ in 0..EXPLAIN_WORKERS {
                scope.spawn(|| loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(cell) = cells.get(index) else { break };
                    let port = format!("{}/{}", cell.2, cell.3.to_ascii_lowercase());
                    let run = twillctl(
                        &[
                            "--datastore",
                            &self.datastore,
                            "policy",
                            "explain",
                            "--from",
                            &cell.0,
                            "--to",
                            &cell.1,
                            "--port",
                            &port,
                            "-o",
                            "json",
                        ],
                        None,
                    );
                    assert_eq!(
                        run.code, 0,
                        "policy explain {cell:?} failed:\n{}",
                        run.stderr
                    );
                    let value: Value = serde_json::from_str(&run.stdout).unwrap();
                    let allowed = value["allowed"].as_bool().unwrap();
                    answers
                        .lock()
                        .unwrap()
                        .insert(cell.clone(), (allowed, run.stdout));
                });
            }
        });
        answers.into_inner().unwrap()
    }

    /// Probes the matrix and compares it with `expect` (probing once more before calling a
    /// cell wrong, as the e2e suite does), then asks `policy explain` about every cell.
    /// Returns what went wrong, one line per problem.
    fn check(&self, scenario: &str, expect: &Expect) -> Vec<String> {
        let started = Instant::now();
        let mut wire = self.probe(&expect.ports);
        let mut wrong = diff(scenario, expect, &wire);
        if !wrong.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
            wire = self.probe(&expect.ports);
            wrong = diff(scenario, expect, &wire);
        }
        let probed = started.elapsed();
        // Every cell is explained on SQLite; on the Kubernetes datastore every fifth (each
        // explanation is a process that reads the policies from the API server anew, about
        // 150 ms; explain's logic is the same on both, the wire is probed whole on both).
        // (Five: prime to the four ports of a pair, so every port is sampled.)
        let every = if self.kubeconfig.is_some() { 5 } else { 1 };
        let cells: Vec<Cell> = expect
            .cells
            .iter()
            .filter(|c| !expect.unserved.contains(*c))
            .step_by(every)
            .cloned()
            .collect();
        let explained = self.explain(&cells);
        let mut disagreements = 0;
        for cell in &cells {
            let (allowed, text) = &explained[cell];
            if wire.get(cell) != Some(allowed) {
                disagreements += 1;
                // The whole explanation for the first few; the deciding rules for the rest.
                let detail = if disagreements <= 2 {
                    text.clone()
                } else {
                    let value: Value = serde_json::from_str(text).unwrap();
                    format!(
                        "(egress: {}; ingress: {})",
                        value["egress"]["decided_by"], value["ingress"]["decided_by"]
                    )
                };
                wrong.push(format!(
                    "{scenario}: policy explain says allowed={allowed} but the wire says \
                     connected={:?} for {} → {} {}/{} {detail}",
                    wire.get(cell),
                    cell.0,
                    cell.1,
                    cell.2,
                    cell.3
                ));
            }
        }
        eprintln!(
            "{scenario}: {} cells, probe {:.1}s, explain {:.1}s, {}",
            expect.cells.len(),
            probed.as_secs_f64(),
            (started.elapsed() - probed).as_secs_f64(),
            if wrong.is_empty() { "ok" } else { "WRONG" }
        );
        wrong
    }

    /// Runs a scenario: each step is applied and checked; then the scenario's objects are
    /// deleted and what it relabelled is restored.
    fn scenario(&self, scenario: &Scenario) -> Vec<String> {
        let mut wrong = Vec::new();
        for (index, step) in scenario.steps.iter().enumerate() {
            let name = if scenario.steps.len() > 1 {
                format!("{} (step {})", scenario.name, index + 1)
            } else {
                scenario.name.to_string()
            };
            if let Err(err) = self.try_apply(&documents(&step.apply)) {
                wrong.push(format!("{name}: {err}"));
            }
            wrong.extend(self.check(&name, &step.expect));
        }
        self.cleanup(scenario);
        wrong
    }

    fn cleanup(&self, scenario: &Scenario) {
        if !scenario.delete.is_empty() {
            self.delete(&documents(&scenario.delete));
        }
        if !scenario.restore.is_empty() {
            self.apply(&documents(&scenario.restore));
        }
    }

    /// `iptables-save -c` in the node's namespace.
    fn iptables_save(&self) -> String {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("twl-{}.node-1", self.name),
                "iptables-save",
                "-c",
            ])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let run = self.run(&["down"], None);
        if run.code != 0 {
            eprintln!("lab down failed: {}", run.stderr);
        }
    }
}

fn diff(scenario: &str, expect: &Expect, wire: &BTreeMap<Cell, bool>) -> Vec<String> {
    let mut wrong = Vec::new();
    let probed: BTreeSet<&Cell> = wire.keys().collect();
    let expected: BTreeSet<&Cell> = expect.cells.iter().collect();
    if probed != expected {
        wrong.push(format!(
            "{scenario}: the probe's cells differ from the model's: probed only {:?}, \
             expected only {:?}",
            probed.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&probed).collect::<Vec<_>>()
        ));
    }
    for cell in &expect.cells {
        let want = expect.verdict(cell);
        if let Some(&got) = wire.get(cell) {
            if got != want {
                wrong.push(format!(
                    "{scenario}: {} → {} {}/{}: expected {}, the wire says {}",
                    cell.0,
                    cell.1,
                    cell.2,
                    cell.3,
                    if want { "connected" } else { "refused" },
                    if got { "connected" } else { "refused" }
                ));
            }
        }
    }
    wrong
}

// ---------------------------------------------------------------------------------------------
// The hand-written model.

/// `*`, `ns/*`, `*/pod` or `ns/pod`.
fn pod_matches(pattern: &str, pod: &str) -> bool {
    let (pattern_ns, pattern_name) = pattern.split_once('/').unwrap_or(("*", "*"));
    let (ns, name) = pod.split_once('/').unwrap();
    (pattern_ns == "*" || pattern_ns == ns) && (pattern_name == "*" || pattern_name == name)
}

/// `*`, `N/PROTO`, `*/PROTO` or `N/*`.
fn port_matches(pattern: &str, port: u16, protocol: &str) -> bool {
    let (pattern_port, pattern_protocol) = pattern.split_once('/').unwrap_or(("*", "*"));
    (pattern_port == "*" || pattern_port.parse() == Ok(port))
        && (pattern_protocol == "*" || pattern_protocol.eq_ignore_ascii_case(protocol))
}

/// The expected matrix: what each destination's ingress admits and what each source's egress
/// admits; a cell connects when both admit it and the destination serves the port.
#[derive(Debug, Clone)]
struct Expect {
    ports: Vec<&'static str>,
    cells: Vec<Cell>,
    ingress: BTreeMap<Cell, bool>,
    egress: BTreeMap<Cell, bool>,
    unserved: BTreeSet<Cell>,
}

impl Expect {
    /// Every pair of distinct pods on every port, all allowed.
    fn all_allowed(pods: &[&str], ports: &[&'static str]) -> Expect {
        let mut cells = Vec::new();
        for from in pods {
            for to in pods.iter().filter(|to| *to != from) {
                for port in ports {
                    let (number, protocol) = port.split_once('/').unwrap();
                    cells.push((
                        from.to_string(),
                        to.to_string(),
                        number.parse().unwrap(),
                        protocol.to_string(),
                    ));
                }
            }
        }
        let allowed: BTreeMap<Cell, bool> = cells.iter().map(|c| (c.clone(), true)).collect();
        Expect {
            ports: ports.to_vec(),
            cells,
            ingress: allowed.clone(),
            egress: allowed,
            unserved: BTreeSet::new(),
        }
    }

    fn matching<'a>(
        cells: &'a [Cell],
        from: &'a str,
        to: &'a str,
        port: &'a str,
    ) -> impl Iterator<Item = &'a Cell> + 'a {
        cells.iter().filter(move |c| {
            pod_matches(from, &c.0) && pod_matches(to, &c.1) && port_matches(port, c.2, &c.3)
        })
    }

    fn set_ingress(&mut self, from: &str, to: &str, port: &str, value: bool) -> &mut Self {
        for cell in Expect::matching(&self.cells, from, to, port) {
            self.ingress.insert(cell.clone(), value);
        }
        self
    }

    fn set_egress(&mut self, from: &str, to: &str, port: &str, value: bool) -> &mut Self {
        for cell in Expect::matching(&self.cells, from, to, port) {
            self.egress.insert(cell.clone(), value);
        }
        self
    }

    /// The destination's ingress is isolated: nothing reaches it unless allowed.
    fn deny_ingress_to(&mut self, to: &str) -> &mut Self {
        self.set_ingress("*", to, "*", false)
    }

    /// The destination's ingress admits these.
    fn allow_ingress(&mut self, from: &str, to: &str, port: &str) -> &mut Self {
        self.set_ingress(from, to, port, true)
    }

    /// The destination's ingress refuses these.
    fn deny_ingress(&mut self, from: &str, to: &str, port: &str) -> &mut Self {
        self.set_ingress(from, to, port, false)
    }

    /// The source's egress is isolated: it reaches nothing unless allowed.
    fn deny_egress_from(&mut self, from: &str) -> &mut Self {
        self.set_egress(from, "*", "*", false)
    }

    /// The source's egress refuses these.
    fn deny_egress(&mut self, from: &str, to: &str, port: &str) -> &mut Self {
        self.set_egress(from, to, port, false)
    }

    /// The source's egress admits these.
    fn allow_egress(&mut self, from: &str, to: &str, port: &str) -> &mut Self {
        self.set_egress(from, to, port, true)
    }

    /// Nothing listens there: the cell is refused whatever the policy, and `policy explain`
    /// (which judges policy only) is not asked about it.
    fn unserved(&mut self, to: &str, port: &str) -> &mut Self {
        for cell in Expect::matching(&self.cells, "*", to, port) {
            self.unserved.insert(cell.clone());
        }
        self
    }

    fn verdict(&self, cell: &Cell) -> bool {
        self.ingress[cell] && self.egress[cell] && !self.unserved.contains(cell)
    }
}

/// A scenario: steps (objects to apply, then the matrix they should give), the objects to
/// delete afterwards and the objects to apply again afterwards (namespaces it relabelled).
struct Scenario {
    name: &'static str,
    steps: Vec<Step>,
    delete: Vec<Value>,
    restore: Vec<Value>,
}

struct Step {
    apply: Vec<Value>,
    expect: Expect,
}

impl Scenario {
    /// One step; its objects are deleted afterwards.
    fn simple(name: &'static str, objects: Vec<Value>, expect: Expect) -> Scenario {
        Scenario {
            name,
            steps: vec![Step {
                apply: objects.clone(),
                expect,
            }],
            delete: objects,
            restore: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Documents.

fn documents(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("---\n{o}\n")).collect()
}

/// A Kubernetes NetworkPolicy.
fn knp(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// A Calico NetworkPolicy.
fn np(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// A Calico GlobalNetworkPolicy.
fn gnp(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name}, "spec": spec})
}

fn tier(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
        "metadata": {"name": name}, "spec": spec})
}

fn network_set(namespace: &str, name: &str, labels: Value, nets: &[String]) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nets": nets}})
}

fn global_network_set(name: &str, labels: Value, nets: &[String]) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
        "metadata": {"name": name, "labels": labels}, "spec": {"nets": nets}})
}

/// A Namespace with these labels (and `kubernetes.io/metadata.name`, as the API server adds).
fn namespace(name: &str, labels: Value) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

// ---------------------------------------------------------------------------------------------
// The e2e topology.

const XYZ: &str = "namespaces:\n  x: {ns: x}\n  y: {ns: y}\n  z: {ns: z}\npods:\n\
    - {ns: x, name: a, labels: {pod: a}}\n- {ns: x, name: b, labels: {pod: b}}\n\
    - {ns: x, name: c, labels: {pod: c}}\n- {ns: y, name: a, labels: {pod: a}}\n\
    - {ns: y, name: b, labels: {pod: b}}\n- {ns: y, name: c, labels: {pod: c}}\n\
    - {ns: z, name: a, labels: {pod: a}}\n- {ns: z, name: b, labels: {pod: b}}\n\
    - {ns: z, name: c, labels: {pod: c}}\nports:\n\
    - {name: serve-80-tcp, port: 80, protocol: TCP}\n\
    - {name: serve-81-tcp, port: 81, protocol: TCP}\n\
    - {name: serve-80-udp, port: 80, protocol: UDP}\n\
    - {name: serve-81-udp, port: 81, protocol: UDP}\n";

const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];
const PORTS: [&str; 4] = ["80/TCP", "81/TCP", "80/UDP", "81/UDP"];

/// Everything connects (no policy).
fn open() -> Expect {
    Expect::all_allowed(&PODS, &PORTS)
}

fn matchlabels(key: &str, value: &str) -> Value {
    json!({"matchLabels": {key: value}})
}

/// Runs scenarios on one lab; fails with every problem found.
fn run_all(lab: &LabGuard, scenarios: &[Scenario]) -> Vec<String> {
    let mut wrong = Vec::new();
    for scenario in scenarios {
        wrong.extend(lab.scenario(scenario));
    }
    wrong
}

fn assert_none(started: Instant, wrong: &[String]) {
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        wrong.is_empty(),
        "{} problem(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy: isolation and peers.

fn kubernetes_peer_scenarios() -> Vec<Scenario> {
    let pod_a = matchlabels("pod", "a");
    let ns_y = matchlabels("ns", "y");
    vec![
        Scenario::simple(
            "default-deny ingress in x",
            vec![knp(
                "x",
                "default-deny-ingress",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            open().deny_ingress_to("x/*").clone(),
        ),
        Scenario::simple(
            "default-deny egress in x",
            vec![knp(
                "x",
                "default-deny-egress",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
            open().deny_egress_from("x/*").clone(),
        ),
        Scenario::simple(
            "deny all both ways in x",
            vec![knp(
                "x",
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            open()
                .deny_ingress_to("x/*")
                .deny_egress_from("x/*")
                .clone(),
        ),
        Scenario::simple(
            "allow ingress from the same namespace (podSelector {})",
            // No policyTypes: Ingress, as the API server defaults it.
            vec![knp(
                "x",
                "allow-same-namespace",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
            open()
                .deny_ingress_to("x/*")
                .allow_ingress("x/*", "x/*", "*")
                .clone(),
        ),
        Scenario::simple(
            "allow ingress from a namespace by label",
            vec![knp(
                "x",
                "a-from-y",
                json!({"podSelector": pod_a, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"namespaceSelector": ns_y}]}]}),
            )],
            open()
                .deny_ingress_to("x/a")
                .allow_ingress("y/*", "x/a", "*")
                .clone(),
        ),
        Scenario::simple(
            "podSelector AND namespaceSelector in one peer",
            vec![knp(
                "x",
                "a-from-y-b",
                json!({"podSelector": pod_a, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"namespaceSelector": ns_y,
                        "podSelector": matchlabels("pod", "b")}]}]}),
            )],
            open()
                .deny_ingress_to("x/a")
                .allow_ingress("y/b", "x/a", "*")
                .clone(),
        ),
        Scenario::simple(
            "podSelector OR namespaceSelector as two peers",
            vec![knp(
                "x",
                "a-from-y-or-b",
                json!({"podSelector": pod_a, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"namespaceSelector": ns_y},
                        {"podSelector": matchlabels("pod", "b")}]}]}),
            )],
            open()
                .deny_ingress_to("x/a")
                .allow_ingress("y/*", "x/a", "*")
                .allow_ingress("x/b", "x/a", "*")
                .clone(),
        ),
        Scenario::simple(
            "matchExpressions In (pods) and NotIn (namespaces)",
            vec![knp(
                "x",
                "ab-not-from-y",
                json!({"podSelector": {"matchExpressions": [
                        {"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                        {"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]}),
            )],
            open()
                .deny_ingress_to("x/a")
                .deny_ingress_to("x/b")
                .allow_ingress("x/*", "x/a", "*")
                .allow_ingress("z/*", "x/a", "*")
                .allow_ingress("x/*", "x/b", "*")
                .allow_ingress("z/*", "x/b", "*")
                .clone(),
        ),
        Scenario {
            name: "matchExpressions Exists and DoesNotExist",
            steps: vec![Step {
                apply: vec![
                    namespace("z", json!({"ns": "z", "team": "blue"})),
                    knp(
                        "x",
                        "team-or-pod-a",
                        json!({"podSelector": {}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [
                                {"namespaceSelector": {"matchExpressions": [
                                    {"key": "team", "operator": "Exists"}]}},
                                {"namespaceSelector": {"matchExpressions": [
                                    {"key": "team", "operator": "DoesNotExist"}]},
                                 "podSelector": pod_a}]}]}),
                    ),
                ],
                // z has a team: all of it; x and y have none: their pods a only.
                expect: open()
                    .deny_ingress_to("x/*")
                    .allow_ingress("z/*", "x/*", "*")
                    .allow_ingress("*/a", "x/*", "*")
                    .clone(),
            }],
            delete: vec![knp("x", "team-or-pod-a", json!({"podSelector": {}}))],
            restore: vec![namespace("z", json!({"ns": "z"}))],
        },
    ]
}

#[test]
fn kubernetes_policies_isolate_and_select_peers() {
    let started = Instant::now();
    let lab = LabGuard::up(XYZ);
    let wrong = run_all(&lab, &kubernetes_peer_scenarios());
    assert_none(started, &wrong);
}

// ---------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy: ports, both directions, stacking, updates, relabels, ipBlock.

fn kubernetes_port_scenarios(lab: &LabGuard) -> Vec<Scenario> {
    let pod = |name: &str| matchlabels("pod", name);
    let only_80 = knp(
        "x",
        "a-port",
        json!({"podSelector": pod("a"), "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}),
    );
    let only_81 = knp(
        "x",
        "a-port",
        json!({"podSelector": pod("a"), "ingress": [{"ports": [{"port": 81, "protocol": "TCP"}]}]}),
    );
    let from_team_blue = knp(
        "x",
        "a-from-team-blue",
        json!({"podSelector": pod("a"), "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": matchlabels("team", "blue")}]}]}),
    );
    let isolate_db = knp(
        "x",
        "isolate-db",
        json!({"podSelector": matchlabels("role", "db"), "policyTypes": ["Ingress"]}),
    );
    // The Pod object, with the topology's named ports: felix follows a Pod's live labels, as
    // Calico derives endpoints from Pods.
    let pod_b = |labels: Value| {
        let ports: Vec<Value> = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")]
            .iter()
            .map(|(port, protocol)| {
                json!({"containerPort": port, "protocol": protocol,
                       "name": format!("serve-{port}-{}", protocol.to_lowercase())})
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "b", "namespace": "x", "labels": labels},
            "spec": {"containers": [{"name": "responder", "image": "twill/responder", "ports": ports}]}})
    };
    let b = pod_b(json!({"pod": "b"}));
    let b_as_db = pod_b(json!({"pod": "b", "role": "db"}));
    vec![
        Scenario::simple(
            "a port by number",
            vec![only_80.clone()],
            open()
                .deny_ingress_to("x/a")
                .allow_ingress("*", "x/a", "80/TCP")
                .clone(),
        ),
        Scenario::simple(
            "ports by name (serve-81-tcp, serve-80-udp)",
            vec![knp(
                "x",
                "b-named-ports",
                json!({"podSelector": pod("b"), "ingress": [{"ports": [
                    {"port": "serve-81-tcp"}, {"port": "serve-80-udp", "protocol": "UDP"}]}]}),
            )],
            open()
                .deny_ingress_to("x/b")
                .allow_ingress("*", "x/b", "81/TCP")
                .allow_ingress("*", "x/b", "80/UDP")
                .clone(),
        ),
        Scenario::simple(
            "port ranges with endPort",
            vec![knp(
                "x",
                "c-ranges",
                json!({"podSelector": pod("c"), "ingress": [{"ports": [
                    {"port": 75, "endPort": 80, "protocol": "TCP"},
                    {"port": 81, "endPort": 90, "protocol": "UDP"}]}]}),
            )],
            open()
                .deny_ingress_to("x/c")
                .allow_ingress("*", "x/c", "80/TCP")
                .allow_ingress("*", "x/c", "81/UDP")
                .clone(),
        ),
        Scenario::simple(
            "UDP only (a port entry with just a protocol)",
            vec![knp(
                "y",
                "a-udp",
                json!({"podSelector": pod("a"), "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
            )],
            open()
                .deny_ingress_to("y/a")
                .allow_ingress("*", "y/a", "*/UDP")
                .clone(),
        ),
        Scenario::simple(
            "egress denied at the source wins over ingress allowed at the destination",
            vec![
                knp(
                    "x",
                    "from-y",
                    json!({"podSelector": {}, "ingress": [{"from": [
                        {"namespaceSelector": matchlabels("ns", "y")}]}]}),
                ),
                knp(
                    "y",
                    "b-to-z",
                    json!({"podSelector": pod("b"), "policyTypes": ["Egress"],
                        "egress": [{"to": [{"namespaceSelector": matchlabels("ns", "z")}]}]}),
                ),
            ],
            open()
                .deny_ingress_to("x/*")
                .allow_ingress("y/*", "x/*", "*")
                .deny_egress_from("y/b")
                .allow_egress("y/b", "z/*", "*")
                .clone(),
        ),
        Scenario::simple(
            "stacked policies: the union of their allows",
            vec![
                knp(
                    "x",
                    "a-from-y-80",
                    json!({"podSelector": pod("a"), "ingress": [{
                        "from": [{"namespaceSelector": matchlabels("ns", "y")}],
                        "ports": [{"port": 80, "protocol": "TCP"}]}]}),
                ),
                knp(
                    "x",
                    "a-from-b",
                    json!({"podSelector": pod("a"),
                        "ingress": [{"from": [{"podSelector": pod("b")}]}]}),
                ),
            ],
            open()
                .deny_ingress_to("x/a")
                .allow_ingress("y/*", "x/a", "80/TCP")
                .allow_ingress("x/b", "x/a", "*")
                .clone(),
        ),
        Scenario {
            name: "a policy updated from port 80 to port 81",
            steps: vec![
                Step {
                    apply: vec![only_80],
                    expect: open()
                        .deny_ingress_to("x/a")
                        .allow_ingress("*", "x/a", "80/TCP")
                        .clone(),
                },
                Step {
                    apply: vec![only_81.clone()],
                    expect: open()
                        .deny_ingress_to("x/a")
                        .allow_ingress("*", "x/a", "81/TCP")
                        .clone(),
                },
            ],
            delete: vec![only_81],
            restore: Vec::new(),
        },
        Scenario {
            name: "a namespace relabelled in and out of a namespaceSelector",
            steps: vec![
                Step {
                    apply: vec![from_team_blue.clone()],
                    expect: open().deny_ingress_to("x/a").clone(),
                },
                Step {
                    apply: vec![namespace("y", json!({"ns": "y", "team": "blue"}))],
                    expect: open()
                        .deny_ingress_to("x/a")
                        .allow_ingress("y/*", "x/a", "*")
                        .clone(),
                },
                Step {
                    apply: vec![namespace("y", json!({"ns": "y"}))],
                    expect: open().deny_ingress_to("x/a").clone(),
                },
            ],
            delete: vec![from_team_blue],
            restore: vec![namespace("y", json!({"ns": "y"}))],
        },
        Scenario {
            name: "a pod relabelled into and out of a podSelector (through its Pod object)",
            steps: vec![
                Step {
                    apply: vec![isolate_db.clone()],
                    expect: open(),
                },
                Step {
                    apply: vec![b_as_db],
                    expect: open().deny_ingress_to("x/b").clone(),
                },
                Step {
                    apply: vec![b.clone()],
                    expect: open(),
                },
            ],
            delete: vec![isolate_db],
            restore: vec![b],
        },
        Scenario::simple(
            "ipBlock of one pod (egress)",
            vec![knp(
                "z",
                "c-to-x-a",
                json!({"podSelector": pod("c"), "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": lab.net("x/a")}}]}]}),
            )],
            open()
                .deny_egress_from("z/c")
                .allow_egress("z/c", "x/a", "*")
                .clone(),
        ),
    ]
}

#[test]
fn kubernetes_policies_match_ports_directions_updates_and_ip_blocks() {
    let started = Instant::now();
    let lab = LabGuard::up(XYZ);
    let wrong = run_all(&lab, &kubernetes_port_scenarios(&lab));
    assert_none(started, &wrong);
}

// ---------------------------------------------------------------------------------------------
// Calico NetworkPolicy and GlobalNetworkPolicy: order, selectors, sets, negations.

fn calico_rule_scenarios(lab: &LabGuard) -> Vec<Scenario> {
    let isolation_article = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/calico-policies/namespace-isolation.yaml"),
    )
    .unwrap();
    let isolation: Value = serde_yaml::from_str(&isolation_article).unwrap();
    vec![
        Scenario::simple(
            "Calico rules are first-match; a namespaced rule selector stays in its namespace",
            vec![np(
                "x",
                "a-first-match",
                json!({"selector": "pod == 'a'", "ingress": [
                    {"action": "Deny", "source": {"selector": "pod == 'b'"}},
                    {"action": "Allow"}]}),
            )],
            // Only x/b matches the Deny: y/b and z/b are in other namespaces.
            open().deny_ingress("x/b", "x/a", "*").clone(),
        ),
        Scenario::simple(
            "policy order: a Deny in order 10 beats an Allow in order 20, an Allow in order 5 \
             beats both",
            vec![
                np(
                    "x",
                    "deny-y",
                    json!({"order": 10, "selector": "pod == 'a'", "ingress": [
                        {"action": "Deny", "source": {"namespaceSelector": "ns == 'y'"}}]}),
                ),
                np(
                    "x",
                    "allow-all",
                    json!({"order": 20, "selector": "pod == 'a'",
                        "ingress": [{"action": "Allow"}]}),
                ),
                np(
                    "x",
                    "allow-y-b",
                    json!({"order": 5, "selector": "pod == 'a'", "ingress": [
                        {"action": "Allow", "source": {"namespaceSelector": "ns == 'y'",
                            "selector": "pod == 'b'"}}]}),
                ),
            ],
            open()
                .deny_ingress("y/*", "x/a", "*")
                .allow_ingress("y/b", "x/a", "*")
                .clone(),
        ),
        Scenario::simple(
            "GlobalNetworkPolicy with a selector (rule selectors span namespaces)",
            vec![gnp(
                "c-from-a",
                json!({"selector": "pod == 'c'", "types": ["Ingress"], "ingress": [
                    {"action": "Allow", "source": {"selector": "pod == 'a'"}}]}),
            )],
            open()
                .deny_ingress_to("*/c")
                .allow_ingress("*/a", "*/c", "*")
                .clone(),
        ),
        Scenario::simple(
            "GlobalNetworkPolicy with a namespaceSelector",
            vec![gnp(
                "z-egress-80",
                json!({"namespaceSelector": "ns == 'z'", "types": ["Egress"], "egress": [
                    {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}]}),
            )],
            open()
                .deny_egress_from("z/*")
                .allow_egress("z/*", "*", "80/TCP")
                .clone(),
        ),
        Scenario::simple(
            "global() in a rule's namespaceSelector matches a GlobalNetworkSet",
            vec![
                global_network_set("trusted", json!({"role": "trusted"}), &[lab.net("z/a")]),
                np(
                    "x",
                    "a-from-trusted-nets",
                    json!({"selector": "pod == 'a'", "ingress": [{"action": "Allow",
                        "source": {"namespaceSelector": "global()",
                            "selector": "role == 'trusted'"}}]}),
                ),
            ],
            open()
                .deny_ingress_to("x/a")
                .allow_ingress("z/a", "x/a", "*")
                .clone(),
        ),
        Scenario::simple(
            "namespaceSelector all() admits every namespace",
            vec![np(
                "x",
                "from-any-a",
                json!({"selector": "all()", "ingress": [{"action": "Allow",
                    "source": {"namespaceSelector": "all()", "selector": "pod == 'a'"}}]}),
            )],
            open()
                .deny_ingress_to("x/*")
                .allow_ingress("*/a", "x/*", "*")
                .clone(),
        ),
        Scenario {
            name: "the second article's namespace-isolation GlobalNetworkPolicy (all() is \
                   any namespace)",
            steps: vec![Step {
                apply: vec![
                    namespace("x", json!({"ns": "x", "isolation": "enabled"})),
                    isolation.clone(),
                ],
                // x is isolated both ways, but its rules admit pods of all namespaces.
                expect: open(),
            }],
            delete: vec![isolation],
            restore: vec![namespace("x", json!({"ns": "x"}))],
        },
        Scenario::simple(
            "notNets",
            vec![np(
                "x",
                "b-not-nets",
                json!({"selector": "pod == 'b'", "ingress": [{"action": "Allow",
                    "source": {"notNets": [lab.net("y/a"), lab.net("z/a")]}}]}),
            )],
            open()
                .deny_ingress_to("x/b")
                .allow_ingress("*", "x/b", "*")
                .deny_ingress("y/a", "x/b", "*")
                .deny_ingress("z/a", "x/b", "*")
                .clone(),
        ),
        Scenario::simple(
            "notPorts",
            vec![np(
                "y",
                "a-not-80",
                json!({"selector": "pod == 'a'", "ingress": [{"action": "Allow",
                    "protocol": "TCP", "destination": {"notPorts": [80]}}]}),
            )],
            open()
                .deny_ingress_to("y/a")
                .allow_ingress("*", "y/a", "81/TCP")
                .clone(),
        ),
        Scenario::simple(
            "notSelector: in a namespaced policy it stays in the namespace, in a global one \
             it does not",
            vec![
                np(
                    "z",
                    "a-not-b",
                    json!({"selector": "pod == 'a'", "ingress": [{"action": "Allow",
                        "source": {"notSelector": "pod == 'b'"}}]}),
                ),
                gnp(
                    "c-not-b",
                    json!({"selector": "pod == 'c'", "types": ["Ingress"], "ingress": [
                        {"action": "Allow", "source": {"notSelector": "pod == 'b'"}}]}),
                ),
            ],
            // libcalico-go updateprocessors/rules.go getEndpointSelector: a namespaced
            // policy's rule is limited to its namespace as soon as any selector field is used,
            // NotSelector included.
            open()
                .deny_ingress_to("z/a")
                .allow_ingress("z/c", "z/a", "*")
                .deny_ingress("*/b", "*/c", "*")
                .clone(),
        ),
        Scenario::simple(
            "a NetworkSet matches rule selectors of its own namespace only",
            vec![
                network_set(
                    "x",
                    "trusted",
                    json!({"role": "trusted"}),
                    &[lab.net("y/c")],
                ),
                network_set(
                    "y",
                    "trusted",
                    json!({"role": "trusted"}),
                    &[lab.net("z/c")],
                ),
                np(
                    "x",
                    "c-from-trusted",
                    json!({"selector": "pod == 'c'", "ingress": [{"action": "Allow",
                        "source": {"selector": "role == 'trusted'"}}]}),
                ),
            ],
            open()
                .deny_ingress_to("x/c")
                .allow_ingress("y/c", "x/c", "*")
                .clone(),
        ),
        Scenario::simple(
            "a named port in a Calico rule (serve-80-udp, protocol UDP)",
            vec![np(
                "z",
                "b-named-udp",
                json!({"selector": "pod == 'b'", "ingress": [{"action": "Allow",
                    "protocol": "UDP", "destination": {"ports": ["serve-80-udp"]}}]}),
            )],
            open()
                .deny_ingress_to("z/b")
                .allow_ingress("*", "z/b", "80/UDP")
                .clone(),
        ),
        Scenario::simple(
            "protocols by number (17 ingress, 6 egress)",
            vec![
                np(
                    "y",
                    "b-proto-17",
                    json!({"selector": "pod == 'b'",
                        "ingress": [{"action": "Allow", "protocol": 17}]}),
                ),
                np(
                    "y",
                    "c-proto-6",
                    json!({"selector": "pod == 'c'", "types": ["Egress"], "egress": [
                        {"action": "Allow", "protocol": 6, "destination": {"ports": [81]}}]}),
                ),
            ],
            open()
                .deny_ingress_to("y/b")
                .allow_ingress("*", "y/b", "*/UDP")
                .deny_egress_from("y/c")
                .allow_egress("y/c", "*", "81/TCP")
                .clone(),
        ),
    ]
}

#[test]
fn calico_policies_order_select_and_negate() {
    let started = Instant::now();
    let lab = LabGuard::up(XYZ);
    let wrong = run_all(&lab, &calico_rule_scenarios(&lab));
    assert_none(started, &wrong);
}

/// The same scenarios with the nine pods spread over three nodes (the lab places pods round
/// robin): policy decided on the destination's node for traffic that crossed the BGP mesh
/// gives the same matrices as on one node.
#[test]
fn the_same_verdicts_with_pods_spread_over_three_nodes() {
    let started = Instant::now();
    let lab = LabGuard::up_with(XYZ, &["--nodes", "3"]);
    let status: serde_json::Value =
        serde_json::from_str(&lab.ok(&["status", "-o", "json"], None)).unwrap();
    let nodes: std::collections::BTreeSet<&str> = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["node"].as_str())
        .collect();
    assert_eq!(nodes.len(), 3, "the pods are on three nodes");
    let mut scenarios = kubernetes_peer_scenarios();
    scenarios.extend(calico_rule_scenarios(&lab));
    let wrong = run_all(&lab, &scenarios);
    assert_none(started, &wrong);
}

/// The Kubernetes datastore (the lab's own kube-apiserver; Kubernetes and Calico policies
/// applied and deleted with kubectl; pods spread over three nodes): the same verdicts.
#[test]
fn the_same_verdicts_on_the_kubernetes_datastore() {
    let started = Instant::now();
    let lab = LabGuard::up_with(XYZ, &["--nodes", "3", "--datastore", "kubernetes"]);
    assert!(lab.kubeconfig.is_some(), "lab status names the kubeconfig");
    let mut scenarios = kubernetes_peer_scenarios();
    scenarios.extend(calico_rule_scenarios(&lab));
    scenarios.extend(tier_scenarios());
    let wrong = run_all(&lab, &scenarios);
    assert_none(started, &wrong);
}

// ---------------------------------------------------------------------------------------------
// Tiers, Pass, Log, rules that match nothing.

fn tier_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::simple(
            "a tier of order 100 passes y to the default tier, allows z, denies the rest",
            vec![
                tier("security", json!({"order": 100})),
                gnp(
                    "security.gate",
                    json!({"tier": "security", "order": 10, "selector": "pod == 'a'",
                        "types": ["Ingress"], "ingress": [
                        {"action": "Pass", "source": {"namespaceSelector": "ns == 'y'"}},
                        {"action": "Allow", "source": {"namespaceSelector": "ns == 'z'"}}]}),
                ),
                knp(
                    "x",
                    "a-80",
                    json!({"podSelector": matchlabels("pod", "a"),
                        "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]}),
                ),
            ],
            // From x: the end of tier security denies. From y: passed on; x/a's default-tier
            // policy admits port 80 only, y/a and z/a have none (their profile allows).
            // From z: allowed in tier security, the default tier is never asked.
            open()
                .deny_ingress("x/*", "*/a", "*")
                .deny_ingress("y/*", "x/a", "*")
                .allow_ingress("y/*", "x/a", "80/TCP")
                .clone(),
        ),
        Scenario {
            name: "a tier's defaultAction: Pass, then Deny",
            steps: vec![
                Step {
                    apply: vec![
                        tier("platform", json!({"order": 50, "defaultAction": "Pass"})),
                        gnp(
                            "platform.b",
                            json!({"tier": "platform", "selector": "pod == 'b'",
                                "types": ["Ingress"], "ingress": [{"action": "Deny",
                                "source": {"namespaceSelector": "ns == 'z'"}}]}),
                        ),
                    ],
                    expect: open().deny_ingress("z/*", "*/b", "*").clone(),
                },
                Step {
                    apply: vec![tier(
                        "platform",
                        json!({"order": 50, "defaultAction": "Deny"}),
                    )],
                    expect: open().deny_ingress_to("*/b").clone(),
                },
            ],
            delete: vec![
                gnp("platform.b", json!({"tier": "platform"})),
                tier("platform", json!({})),
            ],
            restore: Vec::new(),
        },
        Scenario::simple(
            "a policy in a tier that does not exist fails closed",
            vec![gnp(
                "ghost.c",
                json!({"tier": "ghost", "selector": "pod == 'c'",
                    "namespaceSelector": "ns == 'x'", "types": ["Ingress"],
                    "ingress": [{"action": "Allow"}]}),
            )],
            open().deny_ingress_to("x/c").clone(),
        ),
        Scenario::simple(
            "Pass in the last tier goes to the profile (which allows)",
            vec![
                np(
                    "x",
                    "pass-y",
                    json!({"order": 10, "selector": "pod == 'a'", "ingress": [
                        {"action": "Pass", "source": {"namespaceSelector": "ns == 'y'"}}]}),
                ),
                np(
                    "x",
                    "deny-rest",
                    json!({"order": 20, "selector": "pod == 'a'",
                        "ingress": [{"action": "Deny"}]}),
                ),
            ],
            open()
                .deny_ingress_to("x/a")
                .allow_ingress("y/*", "x/a", "*")
                .clone(),
        ),
        Scenario::simple(
            "ipVersion 6 rules do not match IPv4",
            vec![
                np(
                    "x",
                    "c-v6-deny",
                    json!({"selector": "pod == 'c'", "ingress": [
                        {"action": "Deny", "ipVersion": 6},
                        {"action": "Allow", "protocol": "TCP"}]}),
                ),
                np(
                    "y",
                    "c-v6-allow",
                    json!({"selector": "pod == 'c'",
                        "ingress": [{"action": "Allow", "ipVersion": 6}]}),
                ),
            ],
            open()
                .deny_ingress_to("x/c")
                .allow_ingress("*", "x/c", "*/TCP")
                .deny_ingress_to("y/c")
                .clone(),
        ),
        Scenario::simple(
            "ICMP rules do not match TCP or UDP",
            vec![
                np(
                    "z",
                    "c-icmp-allow",
                    json!({"selector": "pod == 'c'",
                        "ingress": [{"action": "Allow", "protocol": "ICMP"}]}),
                ),
                np(
                    "z",
                    "a-icmp-deny",
                    json!({"selector": "pod == 'a'", "ingress": [
                        {"action": "Deny", "protocol": "ICMP"}, {"action": "Allow"}]}),
                ),
            ],
            open().deny_ingress_to("z/c").clone(),
        ),
    ]
}

/// Log then Allow: the traffic is allowed and the NFLOG rule counts it.
fn log_scenario(lab: &LabGuard) -> Vec<String> {
    let policy = np(
        "y",
        "c-log",
        json!({"selector": "pod == 'c'", "ingress": [
            {"action": "Log", "protocol": "TCP"}, {"action": "Allow", "protocol": "TCP"}]}),
    );
    lab.apply(&documents(std::slice::from_ref(&policy)));
    let logged = |text: &str| -> Option<u64> {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("NFLOG")).collect();
        (!lines.is_empty()).then(|| {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix('[')?.split(':').next()?.parse::<u64>().ok())
                .sum()
        })
    };
    let before = logged(&lab.iptables_save());
    // What a user reads with standard tools: tcpdump on the NFLOG group of ingress logs.
    let capture = tempfile::NamedTempFile::new().unwrap();
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", &format!("twl-{}.node-1", lab.name)])
        .args(["tcpdump", "-U", "-i", "nflog:1", "-w"])
        .arg(capture.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // tcpdump says "listening" once its socket is bound.
    let mut stderr = std::io::BufReader::new(tcpdump.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.contains("listening on nflog:1"), "{line}");
    let mut wrong = lab.check(
        "Log then Allow",
        open()
            .deny_ingress_to("y/c")
            .allow_ingress("*", "y/c", "*/TCP"),
    );
    let after = logged(&lab.iptables_save());
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.id().to_string()])
        .status();
    let _ = tcpdump.wait();
    let read = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(capture.path())
        .output()
        .unwrap();
    let packets = String::from_utf8_lossy(&read.stdout).into_owned();
    let bytes = std::fs::read(capture.path()).unwrap();
    let prefix = b"twl in policy y/c-log 0";
    let to_c = format!("> {}.", lab.ip("y/c"));
    if !packets.lines().any(|l| l.contains(&to_c))
        || !bytes.windows(prefix.len()).any(|w| w == prefix)
    {
        wrong.push(format!(
            "Log then Allow: tcpdump -i nflog:1 should show packets to y/c with the prefix \
             {:?}; it read:\n{packets}",
            String::from_utf8_lossy(prefix)
        ));
    }
    match (before, after) {
        (Some(before), Some(after)) if after > before => {}
        _ => wrong.push(format!(
            "Log then Allow: the node's NFLOG rule should exist and count the probes \
             (packets before {before:?}, after {after:?})"
        )),
    }
    lab.delete(&documents(&[policy]));
    wrong
}

/// Rules that need what Twill does not enforce (http, destination.domains,
/// destination.services) never open traffic: an Allow rule naming one matches nothing (that
/// traffic ends at the end of the tier); a Deny rule acts as if it matched, so it denies
/// more; a Pass rule denies (passing more would skip the tier's Deny rules for that traffic).
/// `twillctl apply` warns about each.
fn unenforced_scenarios(lab: &LabGuard) -> Vec<String> {
    let mut wrong = Vec::new();
    let cases = [
        (
            "an Allow rule with http matches nothing",
            vec![np(
                "x",
                "a-http",
                json!({"selector": "pod == 'a'", "ingress": [{"action": "Allow",
                    "http": {"methods": ["GET"]}}]}),
            )],
            "http",
            open().deny_ingress_to("x/a").clone(),
        ),
        (
            "an Allow rule with destination.domains matches nothing",
            vec![np(
                "y",
                "a-domains",
                json!({"selector": "pod == 'a'", "types": ["Egress"], "egress": [
                    {"action": "Allow", "destination": {"domains": ["example.com"]}}]}),
            )],
            "domains",
            open().deny_egress_from("y/a").clone(),
        ),
        (
            // Calico denies the service's traffic; Twill, which cannot tell it apart yet,
            // denies all the rule's other criteria select: every egress of y/b.
            "a Deny rule with destination.services denies as if it matched",
            vec![np(
                "y",
                "b-deny-service",
                json!({"selector": "pod == 'b'", "types": ["Egress"], "egress": [
                    {"action": "Deny", "destination": {"services": {"name": "db", "namespace": "y"}}},
                    {"action": "Allow"}]}),
            )],
            "services",
            open().deny_egress_from("y/b").clone(),
        ),
        (
            // Passing the c pods' egress as if the domain matched would skip the tier's Deny
            // rule for all of it (and the default tier, where no policy selects them, would
            // let it out through their namespace profiles): the Pass denies instead.
            "a Pass rule with destination.domains denies as if it matched",
            vec![
                tier("unenforced", json!({"order": 50})),
                gnp(
                    "unenforced.c-pass-domains",
                    json!({"tier": "unenforced", "selector": "pod == 'c'", "types": ["Egress"],
                        "egress": [
                            {"action": "Pass", "destination": {"domains": ["example.com"]}},
                            {"action": "Deny", "destination": {"selector": "pod == 'a'"}}]}),
                ),
            ],
            "domains",
            open().deny_egress_from("*/c").clone(),
        ),
    ];
    for (name, objects, field, expect) in cases {
        let stderr = lab.ctl_apply(&documents(&objects));
        if !(stderr.contains("warning") && stderr.contains(field)) {
            wrong.push(format!(
                "{name}: twillctl apply should warn about {field}; it printed {stderr:?}"
            ));
        }
        wrong.extend(lab.check(name, &expect));
        let mut reversed = objects.clone();
        reversed.reverse();
        lab.delete(&documents(&reversed));
    }
    wrong
}

#[test]
fn tiers_pass_log_and_rules_that_match_nothing() {
    let started = Instant::now();
    let lab = LabGuard::up(XYZ);
    let mut wrong = run_all(&lab, &tier_scenarios());
    wrong.extend(log_scenario(&lab));
    wrong.extend(unenforced_scenarios(&lab));
    assert_none(started, &wrong);
}

// ---------------------------------------------------------------------------------------------
// The articles' examples.

fn example(path: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(path),
    )
    .unwrap()
}

const THREE_TIER_PORTS: [&str; 5] = ["53/UDP", "80/TCP", "5432/TCP", "8000/TCP", "8080/TCP"];

#[test]
fn the_articles_examples() {
    let started = Instant::now();
    let lab = LabGuard::up(&example("three-tier/topology.yaml"));
    let wrong = articles(&lab);
    assert_none(started, &wrong);
}

/// The articles' commands are kubectl: on the Kubernetes datastore (the lab's own
/// kube-apiserver, pods over two nodes) every policy goes in and out with `kubectl`.
#[test]
fn the_articles_examples_with_kubectl_on_the_kubernetes_datastore() {
    let started = Instant::now();
    let lab = LabGuard::up_with(
        &example("three-tier/topology.yaml"),
        &["--datastore", "kubernetes", "--nodes", "2"],
    );
    assert!(lab.kubeconfig.is_some(), "lab status names the kubeconfig");
    let wrong = articles(&lab);
    // kubectl reads back what it wrote, as the API server stores it.
    let policies = lab
        .kubectl(
            &[
                "get",
                "networkpolicies.projectcalico.org",
                "-A",
                "-o",
                "name",
            ],
            "",
        )
        .unwrap();
    assert_eq!(policies.trim(), "", "the articles' policies were deleted");
    assert_none(started, &wrong);
}

/// Twill installed into a real cluster (kubelets, containerd, kube-proxy; twill.yaml applied
/// by the lab as a user applies it): the second article's three-tier application, its pods
/// Kubernetes Pods on two nodes, its policies applied with kubectl and checked on the wire.
#[test]
fn the_three_tier_example_on_a_kubernetes_cluster_with_kubelets() {
    let started = Instant::now();
    let lab = LabGuard::up_with(
        &example("three-tier/topology.yaml"),
        &["--kubernetes", "--nodes", "2"],
    );
    assert!(lab.kubeconfig.is_some(), "lab status names the kubeconfig");
    let wrong = three_tier_article(&THREE_TIER_PODS, &lab);
    assert_none(started, &wrong);
}

const THREE_TIER_PODS: [&str; 5] = [
    "ingress-nginx/controller",
    "frontend/web",
    "backend/api",
    "database/postgres",
    "kube-system/coredns",
];

/// Both articles, each policy checked on the wire; what went wrong.
fn articles(lab: &LabGuard) -> Vec<String> {
    let mut wrong = Vec::new();

    // The first article: two pods in `default`, deny all ingress to the backend, then allow
    // the frontend on TCP 8000. The backend runs `python -m http.server 8000` and serves
    // nothing else; nothing else serves 8000.
    let pods = example("seed-walkthrough/01-pods.yaml");
    lab.apply(&pods);
    let three_tier_pods = THREE_TIER_PODS;
    let mut seed_pods = three_tier_pods.to_vec();
    seed_pods.extend(["default/frontend", "default/backend"]);
    let mut seed = Expect::all_allowed(&seed_pods, &THREE_TIER_PORTS);
    for port in THREE_TIER_PORTS {
        if port == "8000/TCP" {
            for pod in seed_pods.iter().filter(|p| **p != "default/backend") {
                seed.unserved(pod, port);
            }
        } else {
            seed.unserved("default/backend", port);
        }
    }
    wrong.extend(lab.check("seed walkthrough: the pods", &seed));
    lab.apply(&example(
        "seed-walkthrough/02-deny-all-ingress-to-backend.yaml",
    ));
    let mut denied = seed.clone();
    denied.deny_ingress_to("default/backend");
    wrong.extend(lab.check("seed walkthrough: deny all ingress to the backend", &denied));
    lab.apply(&example(
        "seed-walkthrough/03-allow-frontend-to-backend.yaml",
    ));
    let mut allowed = denied.clone();
    allowed.allow_ingress("default/frontend", "default/backend", "8000/TCP");
    wrong.extend(lab.check(
        "seed walkthrough: allow the frontend to the backend",
        &allowed,
    ));
    lab.delete(&format!(
        "{}\n---\n{}\n---\n{pods}",
        example("seed-walkthrough/02-deny-all-ingress-to-backend.yaml"),
        example("seed-walkthrough/03-allow-frontend-to-backend.yaml")
    ));

    wrong.extend(three_tier_article(&three_tier_pods, lab));
    wrong
}

/// The second article's three-tier application (expected table: examples/three-tier).
fn three_tier_article(three_tier_pods: &[&str], lab: &LabGuard) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut before = Expect::all_allowed(three_tier_pods, &THREE_TIER_PORTS);
    before.unserved("*", "8000/TCP");
    wrong.extend(lab.check("three-tier: no policy", &before));
    lab.apply(&example("calico-policies/frontend-policy.yaml"));
    let mut after = before.clone();
    after
        // frontend-policy
        .deny_ingress_to("frontend/web")
        .allow_ingress("ingress-nginx/*", "frontend/web", "80/TCP")
        .deny_egress_from("frontend/web")
        .allow_egress("frontend/web", "backend/api", "8080/TCP")
        .allow_egress("frontend/web", "kube-system/*", "53/UDP")
        // api-policy
        .deny_ingress_to("backend/api")
        .allow_ingress("frontend/web", "backend/api", "8080/TCP")
        .deny_egress_from("backend/api")
        .allow_egress("backend/api", "database/postgres", "5432/TCP")
        .allow_egress("backend/api", "kube-system/*", "53/UDP")
        // database-policy
        .deny_ingress_to("database/postgres")
        .allow_ingress("backend/api", "database/postgres", "5432/TCP")
        .deny_egress_from("database/postgres");
    wrong.extend(lab.check("three-tier: the article's policies", &after));
    lab.delete(&example("calico-policies/frontend-policy.yaml"));
    wrong
}

// ---------------------------------------------------------------------------------------------
// Known disagreements with Calico's semantics.

/// Kubernetes `ipBlock.except` is `nets` plus `notNets` on one Calico rule (libcalico-go
/// conversion.go k8sPeerToCalicoFields; research/policy.md §1.4): in the CIDR and in none of
/// the exceptions. Felix must render the pair as match blocks (research/policy.md §2.7).
fn nets_with_not_nets_scenarios(lab: &LabGuard) -> Vec<Scenario> {
    vec![
        Scenario::simple(
            "ipBlock with except (ingress)",
            vec![knp(
                "x",
                "a-from-block",
                json!({"podSelector": matchlabels("pod", "a"), "ingress": [{"from": [
                    {"ipBlock": {"cidr": "10.90.0.0/16", "except": [lab.net("y/b")]}}]}]}),
            )],
            open()
                .deny_ingress_to("x/a")
                .allow_ingress("*", "x/a", "*")
                .deny_ingress("y/b", "x/a", "*")
                .clone(),
        ),
        Scenario::simple(
            "Calico nets with notNets on one side (egress)",
            vec![np(
                "z",
                "b-nets-not-nets",
                json!({"selector": "pod == 'b'", "types": ["Egress"], "egress": [
                    {"action": "Allow", "destination": {"nets": ["10.90.0.0/16"],
                        "notNets": [lab.net("x/c")]}}]}),
            )],
            open()
                .deny_egress_from("z/b")
                .allow_egress("z/b", "*", "*")
                .deny_egress("z/b", "x/c", "*")
                .clone(),
        ),
    ]
}

#[test]
fn nets_with_not_nets_as_ip_block_except() {
    let started = Instant::now();
    let lab = LabGuard::up(XYZ);
    let wrong = run_all(&lab, &nets_with_not_nets_scenarios(&lab));
    assert_none(started, &wrong);
}
