//! `twillctl lab` as a user runs it: real namespaces, the real `twill` plugin (built beside
//! twillctl by `cargo build --workspace`), probes on the wire. Each test has its own lab name;
//! a guard runs `lab down` even when the test panics.

#![allow(clippy::disallowed_methods)] // Tests run processes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;

use common::{leftovers, twillctl, LabGuard};

const TOPOLOGY: &str = "namespaces:\n  x: {ns: x, team: red}\n  y: {ns: y}\npods:\n  \
    - {ns: x, name: a, labels: {pod: a, app: web}}\n  - {ns: x, name: b, labels: {pod: b}}\n  \
    - {ns: y, name: a, labels: {pod: a}}\nports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n  \
    - {name: serve-81-udp, port: 81, protocol: UDP}\n";

#[test]
fn a_lab_comes_up_answers_everywhere_and_goes_down_without_a_trace() {
    let lab = LabGuard::up(TOPOLOGY);
    let status = lab.status();
    assert_eq!(status["name"], lab.name.as_str());
    assert_eq!(
        status["datastore"],
        format!("sqlite:/run/twill/lab/{}/twill.db", lab.name)
    );
    assert_eq!(status["nodes"][0]["name"], "node-1");
    assert!(status["nodes"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("198.18."));
    let pods = status["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 3);
    let pool: ipnet::IpNet = "10.90.0.0/16".parse().unwrap();
    let ips: BTreeSet<String> = pods
        .iter()
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 3, "every pod has its own address: {ips:?}");
    assert!(ips
        .iter()
        .all(|ip| pool.contains(&ip.parse::<std::net::IpAddr>().unwrap())));
    let web = pods
        .iter()
        .find(|p| p["namespace"] == "x" && p["name"] == "a")
        .unwrap();
    assert_eq!(web["labels"]["app"], "web");
    assert_eq!(web["node"], "node-1");
    assert_eq!(web["ips"][0], web["ip"]);

    // With no policy, every pair answers on every port, and the answer names the pod.
    let matrix = lab.probe(&[]);
    assert_eq!(matrix.len(), 3 * 2 * 2, "{matrix:?}");
    assert!(matrix.values().all(|&c| c), "{matrix:?}");
    let reply = lab.ok(&[
        "exec",
        "x/a",
        "--",
        "curl",
        "-s",
        "--max-time",
        "2",
        "http://a.y/",
    ]);
    assert_eq!(reply.trim(), "y/a");
    let reply = lab.ok(&[
        "exec",
        "x/a",
        "--",
        "curl",
        "-s",
        "--max-time",
        "2",
        "http://b/",
    ]);
    assert_eq!(
        reply.trim(),
        "x/b",
        "a short name resolves in the pod's own namespace"
    );

    // A second `up` of the same name is refused and changes nothing.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), TOPOLOGY).unwrap();
    let again = lab.run(&["up", "--topology", file.path().to_str().unwrap()], None);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already up"), "{}", again.stderr);
    assert_eq!(lab.status()["pods"].as_array().unwrap().len(), 3);

    let name = lab.name.clone();
    assert!(!leftovers(&name).is_empty());
    drop(lab);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn a_drop_rule_for_one_pair_makes_exactly_that_pair_fail() {
    let lab = LabGuard::up(TOPOLOGY);
    let (from, to) = (lab.ip("x/a"), lab.ip("y/a"));
    let rule = [
        "-s", &from, "-d", &to, "-p", "tcp", "--dport", "80", "-j", "DROP",
    ];
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node_netns(),
            "iptables",
            // mangle, which Twill never touches (it keeps its filter hooks first).
            "-t",
            "mangle",
            "-I",
            "FORWARD",
        ])
        .args(rule)
        .status()
        .unwrap();
    assert!(status.success());
    let matrix = lab.probe(&["80/TCP", "81/UDP"]);
    let failed: Vec<_> = matrix
        .iter()
        .filter(|(_, &c)| !c)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        failed,
        [("x/a".to_string(), "y/a".to_string(), 80, "TCP".to_string())]
    );
}

#[test]
fn seed_pods_come_up_from_their_yaml_and_the_frontend_reaches_the_backend() {
    let lab = LabGuard::up("{}\n");
    let pods =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed-walkthrough/01-pods.yaml");
    let out = lab.ok(&["apply", "-f", pods.to_str().unwrap()]);
    assert!(
        out.contains("default/frontend") && out.contains("default/backend"),
        "{out}"
    );
    let code = lab.ok(&[
        "exec",
        "default/frontend",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "http://backend:8000",
    ]);
    assert_eq!(code, "200", "python -m http.server in the backend answers");
    let matrix = lab.probe(&["8000/TCP"]);
    assert!(
        matrix[&(
            "default/frontend".into(),
            "default/backend".into(),
            8000,
            "TCP".into()
        )]
    );

    // The endpoints carry the pods' labels; IPAM and endpoints agree.
    let datastore = lab.datastore();
    let weps = twillctl(
        &[
            "--datastore",
            &datastore,
            "get",
            "workloadendpoints",
            "-n",
            "default",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(weps.code, 0, "{}", weps.stderr);
    assert!(
        weps.stdout.contains("\"app\": \"backend\""),
        "{}",
        weps.stdout
    );
    let check = twillctl(&["--datastore", &datastore, "ipam", "check"], None);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);

    // `lab delete` removes the pod, its namespace, its endpoint and its address.
    let removed = lab.run(&["delete", "-f", "-"], Some("apiVersion: v1\nkind: Pod\nmetadata: {name: backend}\nspec: {containers: [{name: c}]}\n"));
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(!Path::new(&format!("/run/netns/twl-{}.p.default.backend", lab.name)).exists());
    let show = twillctl(&["--datastore", &datastore, "ipam", "show"], None);
    assert!(
        show.stdout.contains("| 1 (0%)") || show.stdout.contains(" 1 (0%)"),
        "one address left in use:\n{}",
        show.stdout
    );
    let check = twillctl(&["--datastore", &datastore, "ipam", "check"], None);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
}

#[test]
fn ipam_check_finds_a_leak_and_release_frees_it() {
    let lab = LabGuard::up(TOPOLOGY);
    let datastore = lab.datastore();
    let ip = lab.ip("x/b");
    // An endpoint vanishes behind the plugin's back: its address is now a leak.
    let weps = twillctl(
        &[
            "--datastore",
            &datastore,
            "get",
            "workloadendpoints",
            "-n",
            "x",
            "-o",
            "json",
        ],
        None,
    );
    let value: Value = serde_json::from_str(&weps.stdout).unwrap();
    let items = value["items"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![value.clone()]);
    let wep = items.iter().find(|w| w["spec"]["pod"] == "b").unwrap();
    let name = wep["metadata"]["name"].as_str().unwrap();
    let deleted = twillctl(
        &[
            "--datastore",
            &datastore,
            "delete",
            "workloadendpoint",
            name,
            "-n",
            "x",
        ],
        None,
    );
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let check = twillctl(&["--datastore", &datastore, "ipam", "check"], None);
    assert_eq!(check.code, 1);
    assert!(
        check.stdout.contains("1 leaked") && check.stdout.contains(&ip),
        "{}",
        check.stdout
    );
    let handle = format!(
        "k8s-pod-network.{}",
        wep["spec"]["containerID"].as_str().unwrap()
    );
    assert!(check.stdout.contains(&handle), "{}", check.stdout);
    let released = twillctl(
        &[
            "--datastore",
            &datastore,
            "ipam",
            "release",
            "--handle",
            &handle,
        ],
        None,
    );
    assert_eq!(released.code, 0, "{}", released.stderr);
    assert!(released.stdout.contains(&ip));
    let check = twillctl(&["--datastore", &datastore, "ipam", "check"], None);
    assert_eq!(check.code, 0, "{}", check.stdout);
    let show = twillctl(
        &["--datastore", &datastore, "ipam", "show", "--show-blocks"],
        None,
    );
    assert!(
        show.stdout.contains("IP Pool") && show.stdout.contains("Block"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("2 (0%)"),
        "two addresses in use:\n{}",
        show.stdout
    );
    // Releasing what is not allocated is an error that says so.
    let again = twillctl(
        &["--datastore", &datastore, "ipam", "release", "--ip", &ip],
        None,
    );
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("not allocated"), "{}", again.stderr);
}

#[test]
fn down_cleans_up_after_a_lab_whose_processes_were_killed() {
    let lab = LabGuard::up(TOPOLOGY);
    let prefix = format!("twl-{}.", lab.name);
    for netns in std::fs::read_dir("/run/netns").unwrap().flatten() {
        let name = netns.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            let pids = Command::new("ip")
                .args(["netns", "pids", &name])
                .output()
                .unwrap();
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
    let name = lab.name.clone();
    lab.ok(&["down"]);
    assert_eq!(leftovers(&name), Vec::<String>::new());
    // Down of a lab that is not up is fine.
    lab.ok(&["down"]);
}

#[test]
fn bad_topologies_and_names_are_refused_before_anything_is_made() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "pods:\n  - {ns: x, name: Bad_Name}\n").unwrap();
    let name = format!("t{}bad", std::process::id());
    let run = twillctl(
        &[
            "lab",
            "--name",
            &name,
            "up",
            "--topology",
            file.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("pods[0].name"), "{}", run.stderr);
    assert_eq!(leftovers(&name), Vec::<String>::new());
    let run = twillctl(&["lab", "--name", "No.Dots", "status"], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn pods_on_two_nodes_reach_each_other_and_pods_are_spread() {
    let topology =
        "pods:\n  - {ns: x, name: a, node: node-2}\n  - {ns: x, name: b}\n  - {ns: x, name: c}\n\
        ports:\n  - {port: 80, protocol: TCP}\n";
    let lab = LabGuard::up_with(topology, &["--nodes", "2"]);
    let status = lab.status();
    let nodes: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node-1", "node-2"]);
    let placed: BTreeMap<String, String> = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(placed["a"], "node-2", "node: places the pod");
    assert_ne!(
        placed["b"], placed["c"],
        "pods without a node are spread: {placed:?}"
    );
    let matrix = lab.probe(&["80/TCP"]);
    assert_eq!(matrix.len(), 6);
    assert!(matrix.values().all(|&c| c), "{matrix:?}");
}
