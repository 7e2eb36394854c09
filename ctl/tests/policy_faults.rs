//! Policy enforcement when things go wrong, observed on the wire of a lab: the agent killed
//! or restarted, Twill's chains flushed by someone else, foreign rules, bad documents.

#![allow(clippy::disallowed_methods)] // Tests run processes and read the clock.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::LabGuard;

const TOPOLOGY: &str =
    "namespaces:\n  x: {ns: x}\npods:\n  - {ns: x, name: a, labels: {pod: a}}\n  \
    - {ns: x, name: b, labels: {pod: b}}\n  - {ns: x, name: c, labels: {pod: c}}\nports:\n  \
    - {name: serve-80-tcp, port: 80, protocol: TCP}\n";

/// x/a accepts only from x/b.
const ONLY_B_TO_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-b, namespace: x}\n\
    spec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n";

/// The matrix on port 80 with ONLY_B_TO_A in force (hand-written).
fn expected() -> BTreeMap<(String, String, u64, String), bool> {
    let pods = ["x/a", "x/b", "x/c"];
    let mut cells = BTreeMap::new();
    for from in pods {
        for to in pods.iter().filter(|t| **t != from) {
            let allowed = *to != "x/a" || from == "x/b";
            cells.insert(
                (from.to_string(), to.to_string(), 80, "TCP".to_string()),
                allowed,
            );
        }
    }
    cells
}

fn enforced_lab() -> LabGuard {
    let lab = LabGuard::up(TOPOLOGY);
    let run = lab.run(&["apply", "-f", "-"], Some(ONLY_B_TO_A));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(lab.probe(&["80/TCP"]), expected());
    lab
}

fn node_exec(lab: &LabGuard, program: &str, args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", &lab.node_netns(), program])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn verdicts_stay_when_the_agent_is_killed() {
    let lab = enforced_lab();
    lab.ok(&["node", "kill", "node-1"]);
    assert_eq!(
        lab.probe(&["80/TCP"]),
        expected(),
        "the kernel keeps enforcing after SIGKILL"
    );
    lab.ok(&["node", "start", "node-1"]);
    lab.ok(&["sync", "--timeout", "20"]);
    assert_eq!(lab.probe(&["80/TCP"]), expected());
}

#[test]
fn a_restart_never_opens_what_policy_closes() {
    let lab = enforced_lab();
    let c = lab.ip("x/c");
    let a = lab.ip("x/a");
    // A probe loop from inside x/c to x/a (denied) runs through the restarts: TCP connects
    // with a 20 ms timeout, from a thread that entered the pod's namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let pod_netns = format!("/run/netns/twl-{}.p.x.c", lab.name);
    let target: std::net::SocketAddr = format!("{a}:80").parse().unwrap();
    let looping = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let netns = std::fs::File::open(&pod_netns).unwrap();
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut probes = 0;
            let mut opened = 0;
            while !stop.load(Ordering::Relaxed) {
                probes += 1;
                if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(20)).is_ok()
                {
                    opened += 1;
                }
            }
            (probes, opened)
        })
    };
    for action in ["stop", "kill", "stop"] {
        lab.ok(&["node", action, "node-1"]);
        lab.ok(&["node", "start", "node-1"]);
        lab.ok(&["sync", "--timeout", "20"]);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (probes, opened) = looping.join().unwrap();
    assert!(probes >= 10, "the loop ran ({probes} probes from {c})");
    assert_eq!(
        opened, 0,
        "x/c ({c}) reached x/a during a restart, {opened} times in {probes} probes"
    );
    assert_eq!(lab.probe(&["80/TCP"]), expected());
}

#[test]
fn a_flushed_chain_and_a_deleted_set_are_repaired_and_foreign_rules_survive() {
    let lab = enforced_lab();
    node_exec(&lab, "iptables", &["-N", "FOREIGN"]);
    node_exec(
        &lab,
        "iptables",
        &[
            "-A",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "foreign",
            "-j",
            "FOREIGN",
        ],
    );
    node_exec(&lab, "iptables", &["-F", "twl-FORWARD"]);
    node_exec(&lab, "iptables", &["-F", "twl-to-wl-dispatch"]);
    // Repaired within the lab's refresh interval (2 s): poll for it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let save = node_exec(&lab, "iptables-save", &["-t", "filter"]);
        let count = |chain: &str| {
            save.lines()
                .filter(|l| l.starts_with(&format!("-A {chain} ")))
                .count()
        };
        if count("twl-FORWARD") > 0 && count("twl-to-wl-dispatch") > 0 {
            assert!(
                save.contains("-A FORWARD -m comment --comment foreign -j FOREIGN"),
                "the foreign rule survives:\n{save}"
            );
            assert!(save.contains(":FOREIGN"), "the foreign chain survives");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "twl chains not repaired:\n{save}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.probe(&["80/TCP"]), expected());
    let run = lab.run(&["delete", "-f", "-"], Some(ONLY_B_TO_A));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let save = node_exec(&lab, "iptables-save", &["-t", "filter"]);
    assert!(
        save.contains("-A FORWARD -m comment --comment foreign -j FOREIGN"),
        "{save}"
    );
}

#[test]
fn a_bad_policy_is_refused_and_nothing_changes() {
    let lab = enforced_lab();
    let before = lab.status_file();
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\n\
        spec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 70000}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(bad));
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("70000"), "{}", run.stderr);
    lab.ok(&["sync"]);
    assert_eq!(
        lab.status_file()["applied_revision"],
        before["applied_revision"],
        "no revision was written"
    );
    assert_eq!(lab.probe(&["80/TCP"]), expected());
}

/// A lab on a real etcd (on this machine's loopback; the lab relays it into the node's
/// namespace): enforcement works, and when etcd stops the dataplane stays as it is, then
/// follows the datastore again once etcd is back.
#[test]
fn an_etcd_lab_keeps_its_dataplane_while_etcd_is_down_and_resyncs_after() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut etcd = runtime.block_on(twill_interop_tests::etcd::Etcd::start());
    let url = etcd.url();
    let lab = LabGuard::up_with(TOPOLOGY, &["--datastore", &url]);
    assert_eq!(lab.datastore(), url);
    let run = lab.run(&["apply", "-f", "-"], Some(ONLY_B_TO_A));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(lab.probe(&["80/TCP"]), expected());
    let check = common::twillctl(&["--datastore", &url, "ipam", "check"], None);
    assert_eq!(check.code, 0, "{}", check.stdout);

    etcd.kill();
    assert_eq!(
        lab.probe(&["80/TCP"]),
        expected(),
        "etcd down: the dataplane stays"
    );
    // Not ready while the datastore cannot be reached (the CNI plugin refuses new pods),
    // live all along.
    wait_for_health(&lab, "/readyz", "503", "the datastore cannot be reached");
    wait_for_health(&lab, "/livez", "200", "ok");
    runtime.block_on(etcd.restart());
    wait_for_health(&lab, "/readyz", "200", "ok");
    // A change made once etcd is back reaches the node: x/a closes to x/b as well.
    let none_to_a = ONLY_B_TO_A.replace(
        "  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n",
        "",
    );
    let run = lab.run(&["apply", "-f", "-"], Some(&none_to_a));
    assert_eq!(run.code, 0, "{}", run.stderr);
    lab.ok(&["sync", "--timeout", "30"]);
    let mut closed = expected();
    closed.insert(("x/b".into(), "x/a".into(), 80, "TCP".into()), false);
    assert_eq!(lab.probe(&["80/TCP"]), closed);
    let name = lab.name.clone();
    drop(lab);
    let relays = Command::new("pgrep")
        .args(["-f", &format!("lab relay --netns /run/netns/twl-{name}.")])
        .output()
        .unwrap();
    assert!(
        relays.stdout.is_empty(),
        "relays left behind: {}",
        String::from_utf8_lossy(&relays.stdout)
    );
}

/// Polls node-1's health endpoint until it answers `code` with `body` in it.
fn wait_for_health(lab: &LabGuard, path: &str, code: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = node_exec(
            lab,
            "curl",
            &[
                "-s",
                "-w",
                " %{http_code}",
                &format!("http://127.0.0.1:9099{path}"),
            ],
        );
        if answer.ends_with(&format!(" {code}")) && answer.contains(body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {code} with {body:?}; last: {answer}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn twill_node_reports_health_metrics_and_status() {
    let lab = enforced_lab();
    let get = |path: &str| {
        node_exec(
            &lab,
            "curl",
            &[
                "-s",
                "-w",
                " %{http_code}",
                &format!("http://127.0.0.1:9099{path}"),
            ],
        )
    };
    assert!(get("/livez").ends_with(" 200"), "{}", get("/livez"));
    assert!(get("/readyz").ends_with(" 200"), "{}", get("/readyz"));
    let metrics = get("/metrics");
    for name in [
        "twill_felix_apply_duration_seconds_bucket",
        "twill_felix_rules ",
        "twill_felix_ipset_members ",
        "twill_felix_local_endpoints 3",
        "twill_felix_policies 1",
        "twill_felix_apply_errors_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let status = lab.status_file();
    let run = node_status(&lab);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("in sync:            true"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "applied revision:   {}",
            status["applied_revision"]
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("running"), "{}", run.stdout);
    lab.ok(&["node", "kill", "node-1"]);
    let run = node_status(&lab);
    assert!(run.stdout.contains("NOT RUNNING"), "{}", run.stdout);
}

/// Probes TCP ports of the node (198.18.0.11) from the underlay's router namespace.
fn probe_node(lab: &LabGuard, ports: &[u16]) -> BTreeMap<u16, bool> {
    let targets: Vec<(&str, u16)> = ports.iter().map(|&p| ("198.18.0.11", p)).collect();
    probe_from_underlay(lab, &targets)
        .into_iter()
        .map(|((_, port), connected)| (port, connected))
        .collect()
}

/// TCP connects from the underlay (outside the node) to addresses and ports.
fn probe_from_underlay(lab: &LabGuard, targets: &[(&str, u16)]) -> BTreeMap<(String, u16), bool> {
    let targets: Vec<serde_json::Value> = targets
        .iter()
        .map(|(ip, p)| serde_json::json!({"to": ip, "ip": ip, "port": p, "protocol": "TCP"}))
        .collect();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("twl-{}.underlay", lab.name),
            env!("CARGO_BIN_EXE_twillctl"),
        ])
        .args(["lab", "probe-agent", "--timeout-ms", "500"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        serde_json::to_string(&targets).unwrap().as_bytes(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let outcomes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    outcomes
        .iter()
        .map(|o| {
            (
                (
                    o["ip"].as_str().unwrap().to_string(),
                    o["port"].as_u64().unwrap() as u16,
                ),
                o["connected"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn host_endpoints_guard_the_node_except_its_failsafe_ports() {
    let lab = enforced_lab();
    // The node serves 8080, 9090 and 22 (SSH's port, a failsafe port) on its own address.
    let _server = node_responder(&lab, &["8080/TCP", "9090/TCP", "22/TCP"]);
    let all = |open: bool| BTreeMap::from([(22, true), (8080, open), (9090, open)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe_node(&lab, &[22, 8080, 9090]) != all(true) {
        assert!(
            Instant::now() < deadline,
            "the node's responder never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let hep = "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: node-1-eth0, labels: {role: node}}\n\
        spec: {node: node-1, interfaceName: eth0, expectedIPs: [198.18.0.11]}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(hep));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        probe_node(&lab, &[22, 8080, 9090]),
        all(false),
        "a host endpoint with no policy admits only failsafe ports"
    );
    let allow = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: node-web}\n\
        spec:\n  selector: role == 'node'\n  types: [Ingress]\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [8080]}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(allow));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        probe_node(&lab, &[22, 8080, 9090]),
        BTreeMap::from([(22, true), (8080, true), (9090, false)])
    );
    assert_eq!(
        lab.probe(&["80/TCP"]),
        expected(),
        "workload policy is unchanged"
    );
    let run = lab.run(&["delete", "-f", "-"], Some(hep));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        probe_node(&lab, &[22, 8080, 9090]),
        all(true),
        "without the host endpoint the node is open again"
    );
    // A host endpoint naming only its address applies to the interface holding it (eth0).
    let by_address = "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: node-1-by-address, labels: {role: node}}\n\
        spec: {node: node-1, expectedIPs: [198.18.0.11]}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(by_address));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        probe_node(&lab, &[22, 8080, 9090]),
        BTreeMap::from([(22, true), (8080, true), (9090, false)]),
        "expectedIPs alone: the node's eth0 is guarded, the policy's 8080 open"
    );
    let run = lab.run(&["delete", "-f", "-"], Some(by_address));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(probe_node(&lab, &[22, 8080, 9090]), all(true));
}

/// A responder on the node's own address (in its namespace, not a pod's) for these ports.
fn node_responder(lab: &LabGuard, ports: &[&str]) -> KillOnDrop {
    let mut command = Command::new("ip");
    command.args([
        "netns",
        "exec",
        &lab.node_netns(),
        env!("CARGO_BIN_EXE_twillctl"),
    ]);
    command.args(["lab", "responder", "--answer", "node"]);
    for port in ports {
        command.args(["--port", port]);
    }
    KillOnDrop(command.stdout(std::process::Stdio::null()).spawn().unwrap())
}

/// `twillctl node status` of node-1, as a user runs it.
fn node_status(lab: &LabGuard) -> common::Run {
    common::twillctl(
        &[
            "node",
            "status",
            "--status-file",
            &format!("/run/twill/lab/{}/node-1/status.json", lab.name),
        ],
        None,
    )
}

/// A process of the test, killed and reaped when the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Calico's host endpoint flavours on the wire, from outside the node (the underlay):
/// traffic forwarded through the node's eth0 to a pod is allowed with a host endpoint and no
/// `applyOnForward` policy; an `applyOnForward` Deny closes one pod port; a `preDNAT` Deny from
/// the underlay's address closes the other before anything else sees it; a `doNotTrack`
/// policy opens a port of the node's own with no connection tracked for it, while a tracked
/// port the normal policy opens shows in conntrack.
#[test]
fn host_endpoint_forward_pre_dnat_and_untracked_policy() {
    let lab = LabGuard::up(
        "namespaces:\n  x: {ns: x}\npods:\n  - {ns: x, name: a, labels: {pod: a}}\nports:\n  \
         - {name: p80, port: 80, protocol: TCP}\n  - {name: p81, port: 81, protocol: TCP}\n",
    );
    let pod = lab.ip("x/a");
    // The underlay reaches the pods through the node (a route inside the lab's namespace).
    let underlay = format!("twl-{}.underlay", lab.name);
    let output = Command::new("ip")
        .args([
            "-n",
            &underlay,
            "route",
            "replace",
            "10.90.0.0/16",
            "via",
            "198.18.0.11",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _server = node_responder(&lab, &["8080/TCP", "9090/TCP"]);
    let probe = || {
        probe_from_underlay(
            &lab,
            &[
                (&pod, 80),
                (&pod, 81),
                ("198.18.0.11", 8080),
                ("198.18.0.11", 9090),
            ],
        )
        .into_iter()
        .map(|((ip, port), ok)| {
            (
                format!("{}:{port}", if ip == pod { "pod" } else { "node" }),
                ok,
            )
        })
        .collect::<BTreeMap<String, bool>>()
    };
    let want = |cells: [bool; 4]| -> BTreeMap<String, bool> {
        ["pod:80", "pod:81", "node:8080", "node:9090"]
            .into_iter()
            .map(String::from)
            .zip(cells)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe() != want([true, true, true, true]) {
        assert!(
            Instant::now() < deadline,
            "the lab never answered: {:?}",
            probe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let apply = |text: &str| {
        let run = lab.run(&["apply", "-f", "-"], Some(text));
        assert_eq!(run.code, 0, "{}", run.stderr);
    };
    let hep = "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: node-1-eth0, labels: {role: node}}\n\
         spec: {node: node-1, interfaceName: eth0, expectedIPs: [198.18.0.11]}\n";
    apply(hep);
    assert_eq!(
        probe(),
        want([true, true, false, false]),
        "a host endpoint closes the node (failsafe ports aside) but not forwarded traffic"
    );
    apply(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: forward}\n\
         spec:\n  selector: role == 'node'\n  applyOnForward: true\n  types: [Ingress]\n  ingress:\n  \
         - {action: Deny, protocol: TCP, destination: {ports: [81]}}\n  - {action: Allow}\n",
    );
    assert_eq!(
        probe(),
        want([true, false, true, true]),
        "applyOnForward: the Deny closes the pod's 81; its Allow opens the node itself too"
    );
    apply(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: pre-dnat}\n\
         spec:\n  selector: role == 'node'\n  preDNAT: true\n  applyOnForward: true\n  ingress:\n  \
         - {action: Deny, protocol: TCP, source: {nets: [198.18.0.1/32]}, destination: {ports: [80, 9090]}}\n",
    );
    assert_eq!(
        probe(),
        want([false, false, true, false]),
        "preDNAT Deny from the underlay's address, before the forward policy's Allow"
    );
    let run = lab.run(
        &["delete", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: pre-dnat}\n"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = lab.run(
        &["delete", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: forward}\n"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(probe(), want([true, true, false, false]));
    // Untracked: 8080 allowed both ways before conntrack; 9090 opened by normal policy.
    apply(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: untracked}\n\
         spec:\n  selector: role == 'node'\n  doNotTrack: true\n  applyOnForward: true\n  ingress:\n  \
         - {action: Allow, protocol: TCP, destination: {ports: [8080]}}\n  egress:\n  \
         - {action: Allow, protocol: TCP, source: {ports: [8080]}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: tracked}\n\
         spec:\n  selector: role == 'node'\n  types: [Ingress]\n  ingress:\n  \
         - {action: Allow, protocol: TCP, destination: {ports: [9090]}}\n",
    );
    let _ = node_exec_status(&lab, "conntrack", &["-F"]);
    assert_eq!(probe(), want([true, true, true, true]));
    let tracked = node_exec(&lab, "conntrack", &["-L", "-p", "tcp"]);
    assert!(
        tracked.contains("dport=9090"),
        "the tracked port's connection is in conntrack: {tracked}"
    );
    assert!(
        !tracked.contains("dport=8080"),
        "the untracked port's connection is not: {tracked}"
    );
    // Without the host endpoint the node is open again and nothing of the flavours is left.
    let run = lab.run(&["delete", "-f", "-"], Some(hep));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(probe(), want([true, true, true, true]));
    let mangle = node_exec(&lab, "iptables-save", &["-t", "mangle"]);
    assert!(!mangle.contains("twl"), "mangle: {mangle}");
    // raw keeps only the workloads' anti-spoofing (PREROUTING); no untracked policy.
    let raw = node_exec(&lab, "iptables-save", &["-t", "raw"]);
    for gone in ["hep", "nt-", "twl-OUTPUT"] {
        assert!(!raw.contains(gone), "raw: {gone} left in {raw}");
    }
}

/// Runs a program in the node's namespace; whether it succeeded.
fn node_exec_status(lab: &LabGuard, program: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &lab.node_netns(), program])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Policy-only mode: the pods are wired by another CNI (the reference ptp plugin with
/// host-local addresses, host interfaces `veth…`), twill-node runs `--mode policy-only` with
/// FelixConfiguration's interfacePrefix `veth`: the same policy gives the same matrix, the
/// dispatch is on the other plugin's interfaces, and the node's routes are the other
/// plugin's (no endpoint routes of Twill's).
#[test]
fn policy_only_mode_enforces_policy_on_another_plugins_pods() {
    let lab = LabGuard::up_with(TOPOLOGY, &["--policy-only"]);
    assert!(lab.ip("x/a").starts_with("10.91."), "host-local's range");
    let run = lab.run(&["apply", "-f", "-"], Some(ONLY_B_TO_A));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(lab.probe(&["80/TCP"]), expected());
    let save = node_exec(&lab, "iptables-save", &["-t", "filter"]);
    let dispatched: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A twl-to-wl-dispatch -o "))
        .collect();
    assert_eq!(dispatched.len(), 3, "{save}");
    assert!(
        dispatched.iter().all(|l| l.contains("-o veth")),
        "{dispatched:?}"
    );
    let routes = node_exec(&lab, "ip", &["route", "show", "table", "all"]);
    assert!(!routes.contains("proto 211"), "{routes}");
    assert_eq!(
        routes.lines().filter(|l| l.starts_with("10.91.")).count(),
        3,
        "ptp's host routes: {routes}"
    );
    let status = lab.status();
    assert!(status["pods"].as_array().unwrap().len() == 3);
}
