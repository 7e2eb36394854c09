//! Twill IPAM under concurrent writers: separate processes on two "nodes" allocate against
//! real SQLite, a real etcd and a real Kubernetes API server (single-object writes only)
//! while one of them is killed with SIGKILL mid-way. No address
//! is handed out twice, every address a process reported is held by its handle, and
//! `ipam check` finds exactly the allocations the killed process never wrote an endpoint for.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use twill_interop_tests::etcd::Etcd;
use twill_interop_tests::workspace_binary;
use twill_ipam::gc::{report, Gc};
use twill_ipam::runtime::Ipam;
use twill_shared::datastore::{connect, Datastore};
use twill_shared::resource::{Key, Kind};

const WORKERS_PER_NODE: usize = 2;
const ALLOCATIONS: u32 = 25;

#[derive(Debug, Default)]
struct Lines {
    allocated: Vec<(IpAddr, String)>,
    endpoints: BTreeSet<String>,
}

fn parse(lines: &[String]) -> Lines {
    let mut parsed = Lines::default();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["allocated", ip, handle] => parsed
                .allocated
                .push((ip.parse().unwrap(), handle.to_string())),
            ["endpoint", _, handle] => {
                parsed.endpoints.insert(handle.to_string());
            }
            _ => panic!("unexpected worker output {line:?}"),
        }
    }
    parsed
}

async fn setup(store: &Arc<dyn Datastore>) {
    let pool = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "stress"}, "spec": {"cidr": "10.96.0.0/24", "blockSize": 29}});
    store
        .create(&Key::cluster(Kind::IpPool, "stress"), pool)
        .await
        .unwrap();
    for node in ["node-a", "node-b"] {
        let value = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": node}});
        store
            .create(&Key::cluster(Kind::Node, node), value)
            .await
            .unwrap();
    }
    if store.url().starts_with("kubernetes") {
        // The namespace the workers' pods go in, and the account the API server's admission
        // wants them to run as (no controller manager makes it here).
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "stress"}});
        store
            .create(&Key::cluster(Kind::Namespace, "stress"), namespace)
            .await
            .unwrap();
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": "stress"}});
        store
            .create(
                &Key::namespaced(Kind::ServiceAccount, "stress", "default"),
                account,
            )
            .await
            .unwrap();
    }
}

/// Returns once the store's revision has not moved for 300 ms (at most 10 s).
async fn settle(store: &dyn Datastore) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = -1;
    let mut still = 0;
    while still < 3 {
        let revision = store.list(Some(Kind::IpPool), None).await.unwrap().revision;
        still = if revision == last { still + 1 } else { 0 };
        last = revision;
        assert!(
            std::time::Instant::now() < deadline,
            "the store kept changing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn hammer(url: String) {
    let store = connect(&url).await.unwrap();
    setup(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let worker = workspace_binary("twill-ipam-worker");
    let mut children = Vec::new();
    for node in ["node-a", "node-b"] {
        for n in 0..WORKERS_PER_NODE {
            let lock = dir.path().join(format!("{node}.lock"));
            let child = Command::new(&worker)
                .args([
                    &url,
                    node,
                    &ALLOCATIONS.to_string(),
                    &format!("{node}w{n}x"),
                ])
                .arg(&lock)
                .stdout(Stdio::piped())
                .spawn()
                .expect("twill-ipam-worker is built with the tests");
            children.push(child);
        }
    }
    // The victim allocates without end on node-a until it is killed.
    let mut victim = Command::new(&worker)
        .args([&url, "node-a", "100000", "victim"])
        .arg(dir.path().join("node-a.lock"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let victim_out = victim.stdout.take().unwrap();
    let victim_lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(victim_out);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 {
            lines.push(line.trim().to_string());
            line.clear();
            if lines.iter().filter(|l| l.starts_with("allocated")).count() == 12 {
                break;
            }
        }
        victim.kill().unwrap(); // SIGKILL, wherever it is
        victim.wait().unwrap();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        lines.extend(rest.lines().map(str::to_string));
        lines
    });
    let mut lines = Vec::new();
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            output.status.success(),
            "a worker failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        lines.extend(
            String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .map(str::to_string),
        );
    }
    let workers = parse(&lines);
    let victim = parse(&victim_lines.await.unwrap());
    assert_eq!(
        workers.allocated.len(),
        2 * WORKERS_PER_NODE * ALLOCATIONS as usize
    );

    // No address was handed out twice, and every one is in the pool.
    let everything: Vec<(IpAddr, String)> = workers
        .allocated
        .iter()
        .chain(&victim.allocated)
        .cloned()
        .collect();
    let unique: BTreeSet<IpAddr> = everything.iter().map(|(ip, _)| *ip).collect();
    assert_eq!(
        unique.len(),
        everything.len(),
        "an address was handed out twice"
    );
    let pool: ipnet::IpNet = "10.96.0.0/24".parse().unwrap();
    assert!(unique.iter().all(|ip| pool.contains(ip)));

    // A write the victim had sent when it was killed can still land (etcd applies a request
    // whose client is gone): wait until the store's revision stands still.
    settle(store.as_ref()).await;

    // The datastore holds each reported address for the handle that reported it.
    let inventory = twill_ipam::gc::inventory(store.as_ref()).await.unwrap();
    let mut held: BTreeMap<IpAddr, String> = BTreeMap::new();
    for block in &inventory.blocks {
        for (ip, attribute) in twill_ipam::block::allocated(block) {
            assert!(held
                .insert(ip, attribute.handle_id.clone().unwrap())
                .is_none());
        }
    }
    for (ip, handle) in &everything {
        assert_eq!(held.get(ip), Some(handle), "{ip} is not held by {handle}");
    }
    // At most one allocation the victim made but did not live to report.
    let unreported: Vec<&IpAddr> = held.keys().filter(|ip| !unique.contains(ip)).collect();
    assert!(
        unreported.len() <= 1,
        "unreported allocations: {unreported:?}"
    );

    // `ipam check`: the leaks are the victim's allocations without an endpoint — those it did
    // not report writing, less any whose endpoint write landed before it died.
    let written: BTreeSet<String> = store
        .list(Some(Kind::WorkloadEndpoint), None)
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|e| {
            e.value["spec"]["containerID"]
                .as_str()
                .map(|c| format!("stress.{c}"))
        })
        .collect();
    let expected: BTreeSet<String> = victim
        .allocated
        .iter()
        .map(|(_, h)| h.clone())
        .filter(|h| !victim.endpoints.contains(h))
        .chain(unreported.iter().map(|ip| held[*ip].clone()))
        .filter(|h| !written.contains(h))
        .collect();
    let found = report(store.as_ref()).await.unwrap();
    assert_eq!(found.leaked_handles(), expected);
    assert!(found.unallocated.is_empty(), "{:?}", found.unallocated);
    println!(
        "{url}: {} allocations by {} processes, {} leaked by the killed one",
        everything.len(),
        2 * WORKERS_PER_NODE + 1,
        expected.len()
    );

    // The GC frees the leaks (grace 0 here) and nothing else.
    let ipam = Ipam::new(store.clone(), "node-a", None);
    let mut gc = Gc::default();
    let released = gc
        .run(&ipam, Duration::from_secs(0), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(released.into_iter().collect::<BTreeSet<_>>(), expected);
    let after = report(store.as_ref()).await.unwrap();
    assert!(after.is_clean(), "{after:?}");
    assert_eq!(after.allocations, held.len() - expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_processes_never_share_an_address_and_leaks_are_found() {
    let dir = tempfile::tempdir().unwrap();
    hammer(format!("sqlite:{}", dir.path().join("twill.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_processes_never_share_an_address_and_leaks_are_found() {
    let etcd = Etcd::start().await;
    hammer(etcd.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_processes_never_share_an_address_and_leaks_are_found() {
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/crds");
    let server = twill_interop_tests::kube::ApiServer::start(&crds).await;
    hammer(format!("kubernetes:{}", server.kubeconfig().display())).await;
}
