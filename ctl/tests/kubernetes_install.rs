//! Twill installed into a real Kubernetes cluster as users install it: the lab's cluster
//! (kube-apiserver, controller manager, scheduler; containerd, kubelet and kube-proxy in each
//! node's namespace) without Twill, then `kubectl apply -f deploy/kubernetes/twill.yaml`.
//! What a user sees is asserted: the nodes NotReady until the network is up, host-network
//! pods running meanwhile, every other pod waiting; then the nodes Ready, pods addressed from
//! the ConfigMap's pool in their node's block, the CNI plugin under its own identity, and
//! `lab down` leaving nothing.

#![allow(clippy::disallowed_methods)] // Tests run processes and wait.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{kubectl, leftovers, LabGuard};
use serde_json::Value;

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/kubernetes/twill.yaml"
);

fn json(kubeconfig: &str, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let text = kubectl(kubeconfig, &full, "").unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).unwrap()
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Polls `check` every 250 ms until it returns Some, or fails with `what` and the last
/// value seen.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what} not within {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: on-host, namespace: default}
spec:
  nodeName: node-1
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
    - {name: c, image: "twill/responder:lab", imagePullPolicy: IfNotPresent,
       args: ["--answer", "default/on-host", "--port", "18080/TCP"]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
    - {name: c, image: "twill/responder:lab", imagePullPolicy: IfNotPresent,
       args: ["--answer", "default/web-1", "--port", "80/TCP"]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: default, labels: {app: web}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers:
    - {name: c, image: "twill/responder:lab", imagePullPolicy: IfNotPresent,
       args: ["--answer", "default/web-2", "--port", "80/TCP"]}
"#;

#[test]
fn kubectl_apply_of_twill_yaml_brings_the_network_up_on_a_real_cluster() {
    let lab = LabGuard::up_with("", &["--kubernetes", "--without-twill", "--nodes", "2"]);
    let name = lab.name.clone();
    let status = lab.status();
    let kubeconfig = status["kubeconfig"]
        .as_str()
        .expect("lab status names the kubeconfig")
        .to_string();
    let kc = kubeconfig.as_str();

    // Before Twill: the kubelets say the network is not ready, and why.
    let nodes = json(kc, &["get", "nodes"]);
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{nodes}");
    for node in items {
        let ready = condition(node, "Ready").expect("a Ready condition");
        assert_eq!(ready["status"], "False", "{ready}");
        let message = ready["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("NetworkReady=false") || message.contains("network plugin"),
            "the kubelet names the network as the reason: {message}"
        );
    }
    // Host-network pods start; others wait for the network. The nodes carry the kubelet's
    // not-ready taint, which these test pods tolerate so that only the network holds them.
    let tolerant = PODS.replace(
        "  terminationGracePeriodSeconds: 1\n",
        "  terminationGracePeriodSeconds: 1\n  tolerations: [{operator: Exists}]\n",
    );
    kubectl(kc, &["apply", "-f", "-"], &tolerant).unwrap();
    eventually(
        "the host-network pod Running",
        Duration::from_secs(90),
        || {
            let pod = json(kc, &["get", "pod", "on-host"]);
            (pod["status"]["phase"] == "Running")
                .then_some(())
                .ok_or_else(|| pod["status"].to_string())
        },
    );
    // The kubelet says why web-1 waits: the network (an event on the pod), not its image.
    eventually(
        "web-1 held back by the network",
        Duration::from_secs(60),
        || {
            let events = kubectl(
                kc,
                &[
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=web-1",
                    "-o",
                    "json",
                ],
                "",
            )?;
            let events: Value = serde_json::from_str(&events).map_err(|e| e.to_string())?;
            events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["reason"] == "NetworkNotReady"
                        || e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("network is not ready"))
                })
                .then_some(())
                .ok_or_else(|| events["items"].to_string())
        },
    );
    let web = json(kc, &["get", "pod", "web-1"]);
    assert_ne!(
        web["status"]["phase"], "Running",
        "no network yet: {}",
        web["status"]
    );
    assert!(web["status"]["podIP"].is_null(), "{}", web["status"]);

    // The install, as the user runs it.
    let applied = kubectl(kc, &["apply", "-f", MANIFEST], "").unwrap();
    assert!(applied.contains("daemonset.apps/twill-node"), "{applied}");
    eventually("both nodes Ready", Duration::from_secs(180), || {
        let nodes = json(kc, &["get", "nodes"]);
        let ready = nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| condition(n, "Ready").is_some_and(|c| c["status"] == "True"))
            .count();
        (ready == 2)
            .then_some(())
            .ok_or_else(|| format!("{ready} Ready"))
    });
    let pods = eventually(
        "both web pods Running with an address",
        Duration::from_secs(120),
        || {
            let pods: Vec<Value> = ["web-1", "web-2"]
                .iter()
                .map(|p| json(kc, &["get", "pod", p]))
                .collect();
            pods.iter()
                .all(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
                .then_some(pods.clone())
                .ok_or_else(|| {
                    pods.iter()
                        .map(|p| p["status"].to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
        },
    );

    // Addresses from the ConfigMap's pool (10.244.0.0/16, as installed), each inside a
    // block affine to the pod's own node.
    let pool: ipnet::Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let affinities = json(kc, &["get", "blockaffinities.projectcalico.org"]);
    for pod in &pods {
        let ip: std::net::Ipv4Addr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
        assert!(pool.contains(&ip), "{ip} outside {pool}");
        let node = pod["spec"]["nodeName"].as_str().unwrap();
        let in_own_block = affinities["items"].as_array().unwrap().iter().any(|a| {
            a["spec"]["node"] == node
                && a["spec"]["cidr"]
                    .as_str()
                    .and_then(|c| c.parse::<ipnet::Ipv4Net>().ok())
                    .is_some_and(|block| block.contains(&ip))
        });
        assert!(
            in_own_block,
            "{ip} of {node} is in no block of {node}: {affinities}"
        );
    }
    let ips: Vec<&str> = pods
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap())
        .collect();
    assert_ne!(ips[0], ips[1]);

    // The pods reach each other across nodes (BGP between the twill-node pods).
    let web2 = ips[1].to_string();
    eventually(
        "web-1 reaches web-2 across nodes",
        Duration::from_secs(60),
        || {
            kubectl(
                kc,
                &[
                    "exec",
                    "-i",
                    "web-1",
                    "--",
                    "/usr/bin/twillctl",
                    "lab",
                    "probe-agent",
                    "--timeout-ms",
                    "1000",
                ],
                &format!(
                    r#"[{{"to": "default/web-2", "ip": "{web2}", "port": 80, "protocol": "TCP"}}]"#
                ),
            )
            .and_then(|out| {
                let outcomes: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
                (outcomes[0]["connected"] == true && outcomes[0]["reply"] == "default/web-2")
                    .then_some(())
                    .ok_or(out)
            })
        },
    );

    // The CNI plugin's kubeconfig on each node holds a token of its own account (checked by
    // the API server's TokenReview), not twill-node's.
    for node in ["node-1", "node-2"] {
        let path = Path::new("/var/lib/twill-lab")
            .join(&name)
            .join(node)
            .join("etc-cni-net.d/twill-kubeconfig");
        let text = std::fs::read_to_string(&path).unwrap();
        let token = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .expect("a token");
        let review = format!(
            r#"{{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {{"token": "{token}"}}}}"#
        );
        let answer: Value = serde_json::from_str(
            &kubectl(kc, &["create", "-o", "json", "-f", "-"], &review).unwrap(),
        )
        .unwrap();
        assert_eq!(answer["status"]["authenticated"], true, "{answer}");
        assert_eq!(
            answer["status"]["user"]["username"],
            "system:serviceaccount:twill-system:twill-cni-plugin"
        );
        let conflist: Value = serde_json::from_slice(
            &std::fs::read(path.with_file_name("10-twill.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(conflist["plugins"][0]["datastore"], "kubernetes");
        assert_eq!(conflist["plugins"][0]["nodename"], node);
    }

    // The running twill-node holds exactly NET_ADMIN (12), NET_RAW (13) and
    // NET_BIND_SERVICE (10) (capabilities(7)): its effective set, read from the kernel.
    let netns = format!("/run/netns/twl-{name}.node-1");
    let netns_id = std::fs::metadata(&netns)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let agent = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let in_node = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == netns_id);
            in_node && argv0.split(|b| *b == 0).next() == Some(&b"/usr/bin/twill-node"[..])
        })
        .expect("twill-node runs in node-1's namespace");
    let status = std::fs::read_to_string(format!("/proc/{agent}/status")).unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(
        effective,
        (1 << 12) | (1 << 13) | (1 << 10),
        "CapEff {effective:x}"
    );

    drop(lab);
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

/// The first seed article, verbatim, on a real cluster with Twill installed: its pods run
/// their own images (local stand-ins for nginx:alpine and python:3.9-slim), and
/// `kubectl exec frontend -- curl http://backend:8000` — the name resolved by the cluster
/// DNS — answers, is dropped once ingress to the backend is denied, and answers again once
/// the frontend is allowed.
#[test]
fn the_first_article_runs_verbatim_on_a_kubernetes_cluster() {
    let lab = LabGuard::up_with("", &["--kubernetes", "--nodes", "2"]);
    let article = |file: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/seed-walkthrough")
                .join(file),
        )
        .unwrap()
    };
    let run = lab.run(&["apply", "-f", "-"], Some(&article("01-pods.yaml")));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let curl = || {
        let run = lab.run(
            &[
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
                "2",
                "http://backend:8000",
            ],
            None,
        );
        (run.code, run.stdout.trim().to_string())
    };
    assert_eq!(
        curl(),
        (0, "200".to_string()),
        "the frontend reaches the backend by name"
    );
    let run = lab.run(
        &["apply", "-f", "-"],
        Some(&article("02-deny-all-ingress-to-backend.yaml")),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // curl's exit 28: no answer within --max-time (the SYN is dropped, not refused).
    assert_eq!(
        curl(),
        (28, "000".to_string()),
        "ingress to the backend is denied"
    );
    let run = lab.run(
        &["apply", "-f", "-"],
        Some(&article("03-allow-frontend-to-backend.yaml")),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        curl(),
        (0, "200".to_string()),
        "the frontend is allowed again"
    );
}
