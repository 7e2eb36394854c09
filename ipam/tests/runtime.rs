//! The IPAM runtime against a real SQLite datastore: Calico's allocation rules as a user of
//! `IPPool`, `IPReservation` and `IPAMConfiguration` sees them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use twill_ipam::gc::{report, Gc};
use twill_ipam::runtime::{AssignArgs, Ipam, IpamError};
use twill_shared::datastore::{connect, Datastore};
use twill_shared::resource::{Key, Kind};

struct Store {
    _dir: tempfile::TempDir,
    store: Arc<dyn Datastore>,
}

async fn store(documents: &[serde_json::Value]) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let store = connect(&format!("sqlite:{}", dir.path().join("twill.db").display()))
        .await
        .unwrap();
    for document in documents {
        let kind = Kind::from_type(
            document["apiVersion"].as_str().unwrap(),
            document["kind"].as_str().unwrap(),
        )
        .unwrap();
        let key = Key::cluster(kind, document["metadata"]["name"].as_str().unwrap());
        store.create(&key, document.clone()).await.unwrap();
    }
    Store { _dir: dir, store }
}

fn pool(name: &str, cidr: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"cidr": cidr});
    for (key, value) in extra.as_object().into_iter().flatten() {
        spec[key] = value.clone();
    }
    json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name}, "spec": spec})
}

fn args(handle: &str) -> AssignArgs {
    AssignArgs {
        handle: handle.to_string(),
        ipv4: true,
        ..AssignArgs::default()
    }
}

/// Allocates one address per handle until the pools are exhausted; returns them all.
async fn fill(ipam: &Ipam) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    loop {
        match ipam.assign(&args(&format!("h{}", got.len()))).await {
            Ok(assigned) => {
                got.insert(assigned.addresses[0].addr().to_string());
            }
            Err(IpamError::Exhausted { .. }) => return got,
            Err(err) => panic!("{err}"),
        }
    }
}

async fn one(ipam: &Ipam, handle: &str) -> IpAddr {
    ipam.assign(&args(handle)).await.unwrap().addresses[0].addr()
}

#[tokio::test]
async fn a_node_fills_its_block_then_claims_another() {
    let s = store(&[pool("p", "10.90.0.0/24", json!({"blockSize": 30}))]).await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let mut blocks = BTreeSet::new();
    for i in 0..6 {
        let ip = one(&ipam, &format!("h{i}")).await;
        blocks.insert(ipnet::IpNet::new(ip, 30).unwrap().trunc());
    }
    assert_eq!(
        blocks.len(),
        2,
        "4 addresses per /30 block: 6 need two blocks, {blocks:?}"
    );
    let affinities = s.store.list(Some(Kind::BlockAffinity), None).await.unwrap();
    assert_eq!(affinities.items.len(), 2);
    assert!(affinities
        .items
        .iter()
        .all(|a| a.value["spec"]["node"] == "node-1" && a.value["spec"]["state"] == "confirmed"));
}

#[tokio::test]
async fn reserved_addresses_are_never_handed_out() {
    let reservation = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPReservation",
        "metadata": {"name": "r"}, "spec": {"reservedCIDRs": ["10.90.0.0/29", "10.90.0.9"]}});
    let s = store(&[
        pool("p", "10.90.0.0/28", json!({"blockSize": 28})),
        reservation,
    ])
    .await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let got = fill(&ipam).await;
    // 16 addresses, 8 + 1 reserved: exactly the other 7.
    let expected: BTreeSet<String> = [8, 10, 11, 12, 13, 14, 15]
        .iter()
        .map(|o| format!("10.90.0.{o}"))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn borrowing_happens_unless_strict_affinity() {
    let s = store(&[pool("p", "10.90.0.0/29", json!({"blockSize": 30}))]).await;
    let a = Ipam::new(s.store.clone(), "node-a", None);
    let b = Ipam::new(s.store.clone(), "node-b", None);
    for i in 0..4 {
        one(&a, &format!("a{i}")).await;
    }
    for i in 0..4 {
        one(&b, &format!("b{i}")).await;
    }
    // Both /30 blocks are taken and full; free one address in node-a's block.
    let a_addresses = a.addresses_of_handle("a0").await.unwrap();
    a.release_ips(&a_addresses).await.unwrap();
    let borrowed = one(&b, "b-borrow").await;
    assert_eq!(
        borrowed, a_addresses[0],
        "node-b borrows the free address of node-a's block"
    );
    a.release_ips(&[borrowed]).await.unwrap();

    let strict = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPAMConfiguration",
        "metadata": {"name": "default"}, "spec": {"strictAffinity": true}});
    s.store
        .create(&Key::cluster(Kind::IpamConfiguration, "default"), strict)
        .await
        .unwrap();
    let err = b.assign(&args("b-strict")).await.unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
    assert!(
        one(&a, "a-own").await == a_addresses[0],
        "node-a still uses its own block"
    );
}

#[tokio::test]
async fn pools_are_chosen_by_node_selector_disabled_and_name() {
    let node = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"rack": "r1"}}});
    let small = |name: &str, cidr: &str, extra: serde_json::Value| {
        let mut document = pool(name, cidr, extra);
        document["spec"]["blockSize"] = json!(30);
        document
    };
    let s = store(&[
        small("off", "10.91.0.0/30", json!({"disabled": true})),
        small(
            "other-rack",
            "10.92.0.0/30",
            json!({"nodeSelector": "rack == 'r2'"}),
        ),
        small(
            "mine",
            "10.93.0.0/30",
            json!({"nodeSelector": "rack == 'r1'"}),
        ),
        small("named", "10.94.0.0/30", json!({})),
        node,
    ])
    .await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let got = fill(&ipam).await;
    assert_eq!(
        got.len(),
        8,
        "exactly the 4 + 4 addresses of the two pools node-1 may use: {got:?}"
    );
    assert!(
        got.iter()
            .all(|ip| ip.starts_with("10.93.") || ip.starts_with("10.94.")),
        "{got:?}"
    );

    ipam.release_handle("h0").await.unwrap();
    ipam.release_handle("h7").await.unwrap();
    let mut only_named = args("n");
    only_named.ipv4_pools = vec!["named".into()];
    assert!(ipam.assign(&only_named).await.unwrap().addresses[0]
        .addr()
        .to_string()
        .starts_with("10.94."));
    let mut by_cidr = args("c");
    by_cidr.ipv4_pools = vec!["10.93.0.0/30".into()];
    assert!(ipam.assign(&by_cidr).await.unwrap().addresses[0]
        .addr()
        .to_string()
        .starts_with("10.93."));
    let mut refused = args("x");
    refused.ipv4_pools = vec!["other-rack".into()];
    assert!(matches!(
        ipam.assign(&refused).await,
        Err(IpamError::NoPool { .. })
    ));
}

#[tokio::test]
async fn dual_stack_is_all_or_nothing() {
    let s = store(&[
        pool("v4", "10.90.0.0/24", json!({})),
        pool("v6", "fd00:90::/122", json!({"blockSize": 122})),
    ])
    .await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let mut both = args("both");
    both.ipv6 = true;
    let assigned = ipam.assign(&both).await.unwrap();
    let families: Vec<bool> = assigned
        .addresses
        .iter()
        .map(|a| a.addr().is_ipv4())
        .collect();
    assert_eq!(families, [true, false]);
    assert_eq!(assigned.addresses[0].prefix_len(), 32);
    assert_eq!(assigned.addresses[1].prefix_len(), 128);

    // No IPv6 pool left for this request: the IPv4 address must go back too.
    let mut impossible = args("half");
    impossible.ipv6 = true;
    impossible.ipv6_pools = vec!["fd00:99::/120".into()];
    assert!(ipam.assign(&impossible).await.is_err());
    assert!(ipam.addresses_of_handle("half").await.unwrap().is_empty());
    let report = report(s.store.as_ref()).await.unwrap();
    assert_eq!(
        report.allocations, 2,
        "only the dual-stack pair is allocated"
    );
}

#[tokio::test]
async fn a_specific_address_is_honoured_once() {
    let s = store(&[pool("p", "10.90.0.0/24", json!({}))]).await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let mut wanted = args("a");
    wanted.addresses = vec!["10.90.0.77".parse().unwrap()];
    let got = ipam.assign(&wanted).await.unwrap();
    assert_eq!(got.addresses[0].to_string(), "10.90.0.77/32");
    wanted.handle = "b".into();
    let err = ipam.assign(&wanted).await.unwrap_err();
    assert!(err.to_string().contains("already allocated"), "{err}");
    wanted.addresses = vec!["10.200.0.1".parse().unwrap()];
    assert!(ipam
        .assign(&wanted)
        .await
        .unwrap_err()
        .to_string()
        .contains("in no IPPool"));
}

#[tokio::test]
async fn release_by_handle_and_by_address() {
    let s = store(&[pool("p", "10.90.0.0/24", json!({}))]).await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let first = one(&ipam, "h1").await;
    let second = one(&ipam, "h2").await;
    assert_eq!(ipam.release_handle("h1").await.unwrap(), [first]);
    assert!(
        ipam.release_handle("h1").await.unwrap().is_empty(),
        "releasing twice is a no-op"
    );
    let released = ipam.release_ips(&[second]).await.unwrap();
    assert_eq!(released, [(second, Some("h2".to_string()))]);
    assert!(
        s.store
            .get(&Key::cluster(Kind::IpamHandle, "h2"))
            .await
            .unwrap()
            .is_none(),
        "the handle goes with its last address"
    );
    assert_eq!(report(s.store.as_ref()).await.unwrap().allocations, 0);
}

#[tokio::test]
async fn an_empty_block_loses_its_affinity_only_after_the_grace_period() {
    let s = store(&[pool("p", "10.90.0.0/24", json!({}))]).await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let ip = one(&ipam, "h").await;
    ipam.release_handle("h").await.unwrap();
    let now = twill_ipam::runtime::now_seconds();
    assert!(
        ipam.release_empty_blocks(300, now)
            .await
            .unwrap()
            .is_empty(),
        "within the grace period the block stays"
    );
    assert_eq!(
        s.store
            .list(Some(Kind::BlockAffinity), None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let freed = ipam.release_empty_blocks(300, now + 301).await.unwrap();
    assert_eq!(freed, [ipnet::IpNet::new(ip, 26).unwrap().trunc()]);
    assert!(s
        .store
        .list(Some(Kind::BlockAffinity), None)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(s
        .store
        .list(Some(Kind::IpamBlock), None)
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test]
async fn the_gc_waits_for_the_grace_period_and_spares_what_an_endpoint_claims() {
    let s = store(&[pool("p", "10.90.0.0/24", json!({}))]).await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    one(&ipam, "net.leaked").await;
    let kept = one(&ipam, "net.kept").await;
    let endpoint = json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": "n-k8s-p-eth0", "namespace": "x"},
        "spec": {"node": "node-1", "containerID": "kept", "pod": "p", "endpoint": "eth0", "ipNetworks": [format!("{kept}/32")]}});
    s.store
        .create(
            &Key::namespaced(Kind::WorkloadEndpoint, "x", "n-k8s-p-eth0"),
            endpoint,
        )
        .await
        .unwrap();
    let mut gc = Gc::default();
    assert!(
        gc.run(&ipam, Duration::from_secs(900), Duration::from_secs(1000))
            .await
            .unwrap()
            .is_empty(),
        "first seen: a candidate only"
    );
    assert!(
        gc.run(&ipam, Duration::from_secs(900), Duration::from_secs(1899))
            .await
            .unwrap()
            .is_empty(),
        "still within the grace period"
    );
    assert_eq!(
        gc.run(&ipam, Duration::from_secs(900), Duration::from_secs(1900))
            .await
            .unwrap(),
        ["net.leaked"]
    );
    assert!(report(s.store.as_ref()).await.unwrap().is_clean());
    assert_eq!(ipam.addresses_of_handle("net.kept").await.unwrap(), [kept]);
}

/// What a crash in the middle of a block claim leaves (single-object writes: the affinity
/// written `pending`, the block maybe created) is repaired by the node's next allocation:
/// a pending affinity whose block is the node's is confirmed and allocated from; one whose
/// block never came is removed; and a handle written before its block is found empty by
/// `ipam check` and freed by the GC.
#[tokio::test]
async fn a_claim_cut_short_is_repaired_by_the_next_allocation() {
    let s = store(&[pool("p", "10.90.0.0/24", json!({"blockSize": 30}))]).await;
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let first = one(&ipam, "h0").await;
    let block = ipnet::IpNet::new(first, 30).unwrap().trunc();
    // As if the claim of `block` had stopped before confirming, and a claim of another block
    // before creating it.
    let affinity = |cidr: &str, state: &str| {
        json!({"apiVersion": "projectcalico.org/v3", "kind": "BlockAffinity",
            "metadata": {"name": format!("node-1-{}", cidr.replace(['.', '/'], "-"))},
            "spec": {"state": state, "node": "node-1", "type": "host", "cidr": cidr}})
    };
    let mine = Key::cluster(
        Kind::BlockAffinity,
        &format!("node-1-{}", block.to_string().replace(['.', '/'], "-")),
    );
    let stored = s.store.get(&mine).await.unwrap().unwrap();
    s.store
        .update(
            &mine,
            affinity(&block.to_string(), "pending"),
            stored.revision,
        )
        .await
        .unwrap();
    let ghost = Key::cluster(Kind::BlockAffinity, "node-1-10-90-0-200-30");
    s.store
        .create(&ghost, affinity("10.90.0.200/30", "pending"))
        .await
        .unwrap();
    // And a handle written whose block write never happened.
    let orphan = json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMHandle",
        "metadata": {"name": "k8s-pod-network.gone"},
        "spec": {"handleID": "k8s-pod-network.gone", "block": {block.to_string(): 1}}});
    s.store
        .create(
            &Key::cluster(Kind::IpamHandle, "k8s-pod-network.gone"),
            orphan,
        )
        .await
        .unwrap();
    // The next allocation, by a new process (every CNI ADD is one).
    let ipam = Ipam::new(s.store.clone(), "node-1", None);
    let second = one(&ipam, "h1").await;
    assert!(
        block.contains(&second),
        "{second} comes from the repaired block {block}"
    );
    let repaired = s.store.get(&mine).await.unwrap().unwrap();
    assert_eq!(repaired.value["spec"]["state"], "confirmed");
    assert_eq!(
        s.store.get(&ghost).await.unwrap(),
        None,
        "the ghost affinity is gone"
    );
    let found = report(s.store.as_ref()).await.unwrap();
    assert_eq!(found.empty_handles, ["k8s-pod-network.gone"]);
    let mut gc = Gc::default();
    let released = gc
        .run(&ipam, Duration::from_secs(0), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        released.contains(&"k8s-pod-network.gone".to_string()),
        "{released:?}"
    );
    assert!(report(s.store.as_ref())
        .await
        .unwrap()
        .empty_handles
        .is_empty());
}
