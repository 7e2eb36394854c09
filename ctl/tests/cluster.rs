//! Many nodes, observed as a user would: pods on different nodes reaching each other through
//! BGP routes, VXLAN or CrossSubnet; a real top-of-rack router (bird2, frr, gobgpd) learning
//! every node's blocks; route reflectors; faults. Expected matrices and routes are written
//! by hand from the topology (which pod is on which node, the lab's /26 blocks), never read
//! back from Twill.

#![allow(clippy::disallowed_methods)] // Tests run processes and read the clock.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::LabGuard;
use ipnet::Ipv4Net;
use serde_json::Value;

/// Three pods, one per node, serving TCP 80.
const SPREAD: &str = "namespaces:\n  x: {ns: x}\npods:\n  - {ns: x, name: a, labels: {pod: a}, node: node-1}\n  \
    - {ns: x, name: b, labels: {pod: b}, node: node-2}\n  - {ns: x, name: c, labels: {pod: c}, node: node-3}\nports:\n  \
    - {name: serve-80-tcp, port: 80, protocol: TCP}\n";

/// Two pods on two nodes.
const PAIR: &str = "namespaces:\n  x: {ns: x}\npods:\n  - {ns: x, name: a, labels: {pod: a}, node: node-1}\n  \
    - {ns: x, name: b, labels: {pod: b}, node: node-2}\nports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n";

type Matrix = BTreeMap<(String, String, u64, String), bool>;

/// Every pod reaches every other on TCP 80, except the pairs in `cut` (hand-written).
fn matrix(pods: &[&str], cut: &[(&str, &str)]) -> Matrix {
    let mut cells = BTreeMap::new();
    for from in pods {
        for to in pods.iter().filter(|t| *t != from) {
            let blocked = cut.contains(&(from, to));
            cells.insert(
                (from.to_string(), to.to_string(), 80, "TCP".to_string()),
                !blocked,
            );
        }
    }
    cells
}

fn netns(lab: &LabGuard, host: &str) -> String {
    format!("twl-{}.{host}", lab.name)
}

fn exec(netns: &str, program: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .output()
        .unwrap()
}

fn routes(lab: &LabGuard, node: &str) -> String {
    String::from_utf8_lossy(&exec(&netns(lab, node), "ip", &["route"]).stdout).into_owned()
}

/// The route to `prefix` in `node`'s main table (one line), if any.
fn route_to(lab: &LabGuard, node: &str, prefix: &str) -> Option<String> {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    let output = exec(
        &netns(lab, node),
        "ip",
        &[family, "route", "show", "exact", prefix],
    );
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The lab's pods are in /26 blocks (the lab's pool says blockSize 26).
fn block_of(ip: &str) -> String {
    let net: Ipv4Net = format!("{ip}/26").parse().unwrap();
    net.trunc().to_string()
}

fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + limit;
    loop {
        let Some(last) = check() else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{what} within {limit:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A dual-stack pod's IPv6 address.
fn ipv6_of(lab: &LabGuard, pod: &str) -> String {
    let entry = lab.pod(pod);
    entry["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|ip| ip.contains(':'))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{pod} has no IPv6 address: {entry}"))
}

fn node_of(lab: &LabGuard, pod: &str) -> String {
    lab.pod(pod)["node"].as_str().unwrap().to_string()
}

fn sessions(lab: &LabGuard, node: &str) -> BTreeMap<String, Value> {
    lab.status()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap()["bgp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["peer"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

fn ctl(lab: &LabGuard, args: &[&str], stdin: Option<&str>) -> common::Run {
    let datastore = lab.datastore();
    let mut full = vec!["--datastore", datastore.as_str()];
    full.extend_from_slice(args);
    common::twillctl(&full, stdin)
}

fn ipam_is_clean(lab: &LabGuard) {
    let run = ctl(lab, &["ipam", "check"], None);
    assert_eq!(run.code, 0, "ipam check:\n{}\n{}", run.stdout, run.stderr);
}

#[test]
fn bgp_routed_pods_on_three_nodes_reach_each_other_and_a_bird_rack_learns_every_block() {
    let lab = LabGuard::up_with(SPREAD, &["--nodes", "3", "--tor", "bird"]);
    let pods = ["x/a", "x/b", "x/c"];
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&pods, &[]));
    let nodes = [
        ("x/a", "node-1", "198.18.0.11"),
        ("x/b", "node-2", "198.18.0.12"),
        ("x/c", "node-3", "198.18.0.13"),
    ];
    let tor = lab.ok(&["tor", "routes"]);
    for (pod, home, address) in nodes {
        assert_eq!(node_of(&lab, pod), home);
        let block = block_of(&lab.ip(pod));
        // The rack learned the block, from the node it lives on among others.
        assert!(
            tor.contains(&block),
            "the rack has no route to {block}:\n{tor}"
        );
        // Every other node routes it via the block's node, learned by BGP (protocol 210).
        for other in ["node-1", "node-2", "node-3"]
            .into_iter()
            .filter(|n| *n != home)
        {
            let route = route_to(&lab, other, &block).unwrap_or_default();
            assert!(
                route.contains(&format!("via {address}")) && route.contains("proto 210"),
                "{other}'s route to {block}: {route:?}\n{}",
                routes(&lab, other)
            );
        }
        // Its own node discards the block's unallocated addresses.
        let own = route_to(&lab, home, &block).unwrap_or_default();
        assert!(
            own.starts_with("blackhole"),
            "{home}'s route to {block}: {own:?}"
        );
        // The rack sends straight to the block's node: every node announces it, the others
        // with the block's node as next hop (a third-party next hop on the shared subnet,
        // as BIRD would announce it), so no path detours through another node.
        let rack = route_to(&lab, "underlay", &block).unwrap_or_default();
        assert!(
            rack.starts_with(&format!("{block} via {address} dev br0")),
            "the rack's route to {block}: {rack:?}"
        );
        // The rack's namespace reaches the pod (BIRD wrote its routes to the kernel).
        rack_reaches(&lab, pod);
    }
    // What the rack announces reaches every node's kernel.
    for node in ["node-1", "node-2", "node-3"] {
        let route = route_to(&lab, node, "198.19.0.0/24").unwrap_or_default();
        assert!(
            route.contains("via 198.18.0.1") && route.contains("proto 210"),
            "{node}: {route:?}"
        );
        let sessions = sessions(&lab, node);
        assert_eq!(
            sessions.len(),
            3,
            "{node}: two mesh peers and the rack: {sessions:?}"
        );
        assert!(
            sessions.values().all(|s| s["state"] == "Established"),
            "{sessions:?}"
        );
    }
}

/// The rack's namespace reaches `pod` through the routes its router wrote to the kernel: the
/// pod's responder answers with its name.
fn rack_reaches(lab: &LabGuard, pod: &str) {
    let url = format!("http://{}:80/", lab.ip(pod));
    wait_until(
        Duration::from_secs(10),
        &format!("the rack reaches {pod}"),
        || {
            let curl = exec(
                &netns(lab, "underlay"),
                "curl",
                &["-s", "--max-time", "1", &url],
            );
            let answer = String::from_utf8_lossy(&curl.stdout).trim().to_string();
            (answer != pod).then(|| {
                format!(
                    "{answer:?} {}\n{}",
                    String::from_utf8_lossy(&curl.stderr),
                    routes(lab, "underlay")
                )
            })
        },
    );
}

fn rack_learns_both_blocks(kind: &str) {
    let lab = LabGuard::up_with(PAIR, &["--nodes", "2", "--tor", kind]);
    let blocks: Vec<String> = ["x/a", "x/b"]
        .iter()
        .map(|p| block_of(&lab.ip(p)))
        .collect();
    wait_until(
        Duration::from_secs(20),
        &format!("the {kind} rack learns {blocks:?}"),
        || {
            let tor = lab.ok(&["tor", "routes"]);
            (!blocks.iter().all(|b| tor.contains(b.as_str()))).then_some(tor)
        },
    );
    for node in ["node-1", "node-2"] {
        wait_until(
            Duration::from_secs(20),
            &format!("{node} learns the {kind} rack's prefix"),
            || {
                let route = route_to(&lab, node, "198.19.0.0/24").unwrap_or_default();
                (!route.contains("via 198.18.0.1")).then(|| routes(&lab, node))
            },
        );
    }
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&["x/a", "x/b"], &[]));
    if kind == "frr" {
        // FRR's zebra wrote bgpd's routes to the rack's kernel: the rack reaches each pod,
        // through the node the pod is on.
        for (pod, address) in [("x/a", "198.18.0.11"), ("x/b", "198.18.0.12")] {
            let block = block_of(&lab.ip(pod));
            wait_until(
                Duration::from_secs(20),
                &format!("zebra writes the rack's route to {block}"),
                || {
                    let route = route_to(&lab, "underlay", &block).unwrap_or_default();
                    (!(route.contains(&format!("via {address}")) && route.contains("proto bgp")))
                        .then(|| format!("{route:?}\n{}", routes(&lab, "underlay")))
                },
            );
            rack_reaches(&lab, pod);
        }
    }
    // gobgpd has no FIB of its own (it would need zebra's): its RIB alone is checked.
}

#[test]
fn an_frr_rack_learns_every_block_and_its_prefix_reaches_the_nodes() {
    rack_learns_both_blocks("frr");
}

#[test]
fn a_gobgp_rack_learns_every_block_and_its_prefix_reaches_the_nodes() {
    rack_learns_both_blocks("gobgp");
}

#[test]
fn vxlan_always_carries_pods_between_nodes_through_vxlan_twill() {
    let lab = LabGuard::up_with(SPREAD, &["--nodes", "3", "--encap", "vxlan"]);
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&["x/a", "x/b", "x/c"], &[]));
    let b_block = block_of(&lab.ip("x/b"));
    let route = route_to(&lab, "node-1", &b_block).unwrap_or_default();
    assert!(
        route.contains("dev vxlan.twill")
            && route.contains("onlink")
            && route.contains("proto 212"),
        "node-1's route to {b_block}: {route:?}"
    );
    // Each node's VTEP is on its Node resource, from the pool, and on its device.
    let nodes: Value =
        serde_json::from_str(&ctl(&lab, &["get", "nodes", "-o", "json"], None).stdout).unwrap();
    let items = nodes["items"]
        .as_array()
        .or_else(|| nodes.as_array())
        .unwrap()
        .clone();
    assert_eq!(items.len(), 3);
    let mut vteps = BTreeSet::new();
    for node in &items {
        let name = node["metadata"]["name"].as_str().unwrap();
        let vtep = node["spec"]["ipv4VXLANTunnelAddr"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no VTEP: {node}"));
        assert!(vtep.starts_with("10.90."), "{vtep} is not from the pool");
        assert!(node["spec"]["vxlanTunnelMACAddr"].is_string());
        vteps.insert(vtep.to_string());
        let device = exec(
            &netns(&lab, name),
            "ip",
            &["-d", "addr", "show", "dev", "vxlan.twill"],
        );
        let text = String::from_utf8_lossy(&device.stdout);
        assert!(text.contains(&format!("inet {vtep}/32")), "{name}: {text}");
        assert!(
            text.contains("vxlan id 4096")
                && text.contains("dstport 4789")
                && text.contains("mtu 1450"),
            "{name}: {text}"
        );
    }
    assert_eq!(vteps.len(), 3, "one VTEP per node, none shared");
    // FelixConfiguration's vxlanMTU overrides the detected MTU.
    let felix = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\nspec:\n  vxlanMTU: 1400\n";
    let run = ctl(&lab, &["apply", "-f", "-"], Some(felix));
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until(
        Duration::from_secs(20),
        "vxlan.twill takes vxlanMTU",
        || {
            let link = exec(
                &netns(&lab, "node-2"),
                "ip",
                &["link", "show", "dev", "vxlan.twill"],
            );
            let text = String::from_utf8_lossy(&link.stdout).into_owned();
            (!text.contains("mtu 1400")).then_some(text)
        },
    );
    // Nothing of the pool goes by plain BGP routes in the kernel.
    assert!(!routes(&lab, "node-1")
        .lines()
        .any(|l| l.starts_with("10.90.") && l.contains("proto 210")));
    ipam_is_clean(&lab);
    // Encapsulation turned off: the BGP routes take over (the speaker writes what it had
    // kept out of the kernel), the device's routes go, and pods still reach each other.
    let plain = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: default-ipv4-ippool\nspec:\n  \
                 cidr: 10.90.0.0/16\n  blockSize: 26\n  vxlanMode: Never\n  nodeSelector: all()\n";
    let run = ctl(&lab, &["apply", "-f", "-"], Some(plain));
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until(
        Duration::from_secs(20),
        "node-1 routes node-2's block by BGP",
        || {
            let route = route_to(&lab, "node-1", &b_block).unwrap_or_default();
            (!(route.contains("via 198.18.0.12") && route.contains("proto 210")))
                .then(|| routes(&lab, "node-1"))
        },
    );
    assert!(
        !routes(&lab, "node-1").contains("proto 212"),
        "{}",
        routes(&lab, "node-1")
    );
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&["x/a", "x/b", "x/c"], &[]));
}

#[test]
fn across_subnets_bgp_alone_cannot_reach_and_vxlan_cross_subnet_does_natively_within_one() {
    // node-1 and node-3 share subnet 0; node-2 is on subnet 1, behind the underlay router,
    // which knows no pod routes (no rack): BGP-routed traffic across subnets is lost, as with
    // Calico.
    let plain = LabGuard::up_with(SPREAD, &["--nodes", "3", "--subnets", "2"]);
    let pods = ["x/a", "x/b", "x/c"];
    let cut = [
        ("x/a", "x/b"),
        ("x/b", "x/a"),
        ("x/c", "x/b"),
        ("x/b", "x/c"),
    ];
    assert_eq!(plain.probe(&["80/TCP"]), matrix(&pods, &cut));
    drop(plain);
    let lab = LabGuard::up_with(
        SPREAD,
        &[
            "--nodes",
            "3",
            "--subnets",
            "2",
            "--encap",
            "vxlan-cross-subnet",
        ],
    );
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&pods, &[]));
    let to_c = route_to(&lab, "node-1", &block_of(&lab.ip("x/c"))).unwrap_or_default();
    assert!(
        to_c.contains("via 198.18.0.13 dev eth0") && to_c.contains("proto 212"),
        "same subnet, native: {to_c:?}"
    );
    let to_b = route_to(&lab, "node-1", &block_of(&lab.ip("x/b"))).unwrap_or_default();
    assert!(
        to_b.contains("dev vxlan.twill"),
        "other subnet, encapsulated: {to_b:?}"
    );
}

#[test]
fn route_reflectors_with_the_mesh_off_connect_every_pod() {
    let topology = "namespaces:\n  x: {ns: x}\npods:\n  - {ns: x, name: a, labels: {pod: a}, node: node-1}\n  \
        - {ns: x, name: b, labels: {pod: b}, node: node-2}\n  - {ns: x, name: c, labels: {pod: c}, node: node-3}\n  \
        - {ns: x, name: d, labels: {pod: d}, node: node-4}\nports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n";
    let lab = LabGuard::up_with(topology, &["--nodes", "4"]);
    let reflector = |name: &str, address: &str| {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    \
             route-reflector: \"true\"\n    twill.lab/subnet: \"0\"\nspec:\n  bgp:\n    ipv4Address: {address}/24\n    routeReflectorClusterID: 224.0.0.1\n"
        )
    };
    let documents = [
        reflector("node-1", "198.18.0.11"),
        reflector("node-2", "198.18.0.12"),
        "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  nodeToNodeMeshEnabled: false\n".into(),
        "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: rr-clients\nspec:\n  nodeSelector: has(route-reflector)\n  peerSelector: \"!has(route-reflector)\"\n".into(),
        "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: to-rrs\nspec:\n  nodeSelector: \"!has(route-reflector)\"\n  peerSelector: has(route-reflector)\n".into(),
        "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: rr-mesh\nspec:\n  nodeSelector: has(route-reflector)\n  peerSelector: has(route-reflector)\n".into(),
    ]
    .concat();
    let run = ctl(&lab, &["apply", "-f", "-"], Some(&documents));
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Clients peer with the two reflectors only; the reflectors with everyone.
    wait_until(
        Duration::from_secs(30),
        "clients peer with the reflectors only",
        || {
            let c = sessions(&lab, "node-3");
            let peers: BTreeSet<&str> = c.keys().map(String::as_str).collect();
            let up = c.values().all(|s| s["state"] == "Established");
            (peers != BTreeSet::from(["198.18.0.11", "198.18.0.12"]) || !up)
                .then(|| format!("{c:?}"))
        },
    );
    wait_until(
        Duration::from_secs(30),
        "reflectors peer with every node",
        || {
            let r = sessions(&lab, "node-1");
            let up = r.len() == 3 && r.values().all(|s| s["state"] == "Established");
            (!up).then(|| format!("{r:?}"))
        },
    );
    // node-3 and node-4 hear each other's blocks only through the reflectors.
    let d_block = block_of(&lab.ip("x/d"));
    wait_until(
        Duration::from_secs(30),
        "node-3 learns node-4's block by reflection",
        || {
            let route = route_to(&lab, "node-3", &d_block).unwrap_or_default();
            (!route.contains("via 198.18.0.14")).then(|| routes(&lab, "node-3"))
        },
    );
    let pods = ["x/a", "x/b", "x/c", "x/d"];
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&pods, &[]));
}

#[test]
fn a_killed_agent_keeps_traffic_flowing_and_converges_with_no_stale_routes() {
    let lab = LabGuard::up_with(SPREAD, &["--nodes", "3", "--tor", "bird"]);
    let pods = ["x/a", "x/b", "x/c"];
    let b_block = block_of(&lab.ip("x/b"));
    let before = route_to(&lab, "node-1", &b_block).expect("node-1 routes node-2's block");
    lab.ok(&["node", "kill", "node-2"]);
    // While node-2's agent is dead: peers hold its routes (graceful restart), its kernel
    // keeps everything, and traffic goes on. Watched for a while, never missing once.
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        assert_eq!(
            route_to(&lab, "node-1", &b_block).as_deref(),
            Some(before.as_str()),
            "node-1 lost {b_block}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&pods, &[]));
    lab.ok(&["node", "start", "node-2"]);
    lab.ok(&["sync", "--timeout", "60"]);
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&pods, &[]));
    // No stale routes: each node's BGP routes are exactly the other nodes' blocks and the
    // rack's prefix.
    let blocks: BTreeMap<&str, String> = [("node-1", "x/a"), ("node-2", "x/b"), ("node-3", "x/c")]
        .into_iter()
        .map(|(node, pod)| (node, block_of(&lab.ip(pod))))
        .collect();
    for node in ["node-1", "node-2", "node-3"] {
        let learned: BTreeSet<String> = routes(&lab, node)
            .lines()
            .filter(|l| l.contains("proto 210"))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect();
        let mut expected: BTreeSet<String> = blocks
            .iter()
            .filter(|(owner, _)| **owner != node)
            .map(|(_, b)| b.clone())
            .collect();
        expected.insert("198.19.0.0/24".into());
        assert_eq!(learned, expected, "{node}:\n{}", routes(&lab, node));
    }
}

#[test]
fn a_node_removed_from_the_datastore_leaves_and_a_new_peer_flaps_no_mesh_session() {
    let lab = LabGuard::up_with(SPREAD, &["--nodes", "3", "--tor", "bird"]);
    // Take the rack's peerings away, then give them back: the mesh must not notice.
    let rack = ctl(&lab, &["get", "bgppeers", "-o", "yaml"], None).stdout;
    assert!(rack.contains("rack-subnet-0"), "{rack}");
    let run = ctl(&lab, &["delete", "bgppeer", "rack-subnet-0"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until(Duration::from_secs(20), "node-1 drops the rack", || {
        let s = sessions(&lab, "node-1");
        s.contains_key("198.18.0.1").then(|| format!("{s:?}"))
    });
    let mesh_before = sessions(&lab, "node-1");
    let watched = Instant::now();
    let peer = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: rack-again\nspec:\n  peerIP: 198.18.0.1\n  asNumber: 65000\n";
    let run = ctl(&lab, &["apply", "-f", "-"], Some(peer));
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until(
        Duration::from_secs(30),
        "node-1's new rack session comes up",
        || {
            let s = sessions(&lab, "node-1");
            (s.get("198.18.0.1").map(|p| p["state"].clone()) != Some(Value::from("Established")))
                .then(|| format!("{s:?}"))
        },
    );
    let mesh_after = sessions(&lab, "node-1");
    let elapsed = watched.elapsed().as_secs();
    for (peer, before) in &mesh_before {
        let after = &mesh_after[peer];
        assert_eq!(after["state"], "Established", "{peer}");
        // Uptime grew by the time watched (a second of rounding either side): never reset.
        assert!(
            after["uptime_s"].as_u64().unwrap() + 2
                >= before["uptime_s"].as_u64().unwrap() + elapsed,
            "the mesh session to {peer} was reset: {before}, then {after} after {elapsed} s"
        );
    }
    // node-3's Node resource deleted: its block leaves node-1's kernel.
    let c_block = block_of(&lab.ip("x/c"));
    assert!(route_to(&lab, "node-1", &c_block).is_some());
    let run = ctl(&lab, &["delete", "node", "node-3"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until(
        Duration::from_secs(20),
        "node-3's block leaves node-1",
        || route_to(&lab, "node-1", &c_block),
    );
}

#[test]
fn the_seed_walkthrough_holds_across_nodes() {
    let lab = LabGuard::up_with("ports: []\n", &["--nodes", "3"]);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seed-walkthrough");
    lab.ok(&["apply", "-f", &format!("{root}/01-pods.yaml")]);
    assert_ne!(
        node_of(&lab, "default/frontend"),
        node_of(&lab, "default/backend"),
        "the pods are on different nodes"
    );
    let cell = |m: &Matrix, from: &str, to: &str, port: u64| {
        m[&(from.to_string(), to.to_string(), port, "TCP".to_string())]
    };
    let open = lab.probe(&["8000/TCP"]);
    assert!(cell(&open, "default/frontend", "default/backend", 8000));
    lab.ok(&[
        "apply",
        "-f",
        &format!("{root}/02-deny-all-ingress-to-backend.yaml"),
    ]);
    lab.ok(&["sync"]);
    let denied = lab.probe(&["8000/TCP"]);
    assert!(!cell(&denied, "default/frontend", "default/backend", 8000));
    lab.ok(&[
        "apply",
        "-f",
        &format!("{root}/03-allow-frontend-to-backend.yaml"),
    ]);
    lab.ok(&["sync"]);
    let allowed = lab.probe(&["8000/TCP", "80/TCP"]);
    assert!(cell(&allowed, "default/frontend", "default/backend", 8000));
    assert!(
        !cell(&allowed, "default/backend", "default/frontend", 8000),
        "only ingress to backend was allowed; frontend serves 80"
    );
    assert!(
        cell(&allowed, "default/backend", "default/frontend", 80),
        "frontend's own ingress is open"
    );
}

#[test]
fn churn_of_a_hundred_pods_over_three_nodes_leaves_no_stale_route_and_no_leaked_address() {
    let lab = LabGuard::up_with(
        "ports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n",
        &["--nodes", "3"],
    );
    let pods: String = (0..100)
        .map(|i| format!("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  labels: {{app: churn}}\nspec:\n  containers: [{{name: c, image: x}}]\n"))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &pods).unwrap();
    let path = file.path().to_str().unwrap();
    lab.ok(&["apply", "-f", path]);
    lab.ok(&["sync", "--timeout", "60"]);
    let status = lab.status();
    let placed: BTreeMap<String, String> = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["ip"].as_str().unwrap().to_string(),
                p["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(placed.len(), 100, "100 pods, 100 distinct addresses");
    // Every pod's block is routed by every other node towards the pod's node.
    let address = |node: &str| {
        format!(
            "198.18.0.{}",
            10 + node.trim_start_matches("node-").parse::<u32>().unwrap()
        )
    };
    let owners: BTreeMap<String, String> = placed
        .iter()
        .map(|(ip, node)| (block_of(ip), node.clone()))
        .collect();
    for (block, owner) in &owners {
        for node in ["node-1", "node-2", "node-3"]
            .into_iter()
            .filter(|n| n != owner)
        {
            let route = route_to(&lab, node, block).unwrap_or_default();
            assert!(
                route.contains(&format!("via {}", address(owner))),
                "{node} → {block}: {route:?}"
            );
        }
    }
    lab.ok(&["delete", "-f", path]);
    lab.ok(&["sync", "--timeout", "60"]);
    assert!(lab.status()["pods"].as_array().unwrap().is_empty());
    ipam_is_clean(&lab);
    // Blocks stay affine to their nodes (as Calico keeps them); no node routes anything
    // else, and no node keeps a host route to a pod that is gone.
    for node in ["node-1", "node-2", "node-3"] {
        let text = routes(&lab, node);
        for line in text.lines().filter(|l| l.contains("proto 210")) {
            let prefix = line.split_whitespace().next().unwrap();
            assert_ne!(
                owners.get(prefix).map(String::as_str),
                Some(node),
                "{node} learned its own block: {line}"
            );
        }
        assert!(
            !text.lines().any(|l| l.contains("proto 211")),
            "{node} keeps endpoint routes of deleted pods:\n{text}"
        );
    }
}

/// Pods on three nodes from a pool of one /30 block: the first node claims the block, the
/// other two borrow from it (no strictAffinity). The borrowed addresses must reach their pods,
/// not the claiming node's blackhole: through host routes to the borrowers, by VXLAN or BGP.
#[test]
fn addresses_borrowed_from_another_nodes_block_reach_their_pods_through_vxlan() {
    borrowed_addresses_reach_their_pods("vxlan");
}

#[test]
fn addresses_borrowed_from_another_nodes_block_reach_their_pods_by_bgp() {
    borrowed_addresses_reach_their_pods("none");
}

fn borrowed_addresses_reach_their_pods(encap: &str) {
    let lab = LabGuard::up_with(
        "namespaces:\n  x: {ns: x}\nports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n",
        &["--nodes", "3", "--encap", encap],
    );
    let mode = if encap == "vxlan" { "Always" } else { "Never" };
    let tiny = format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: tiny\nspec:\n  \
         cidr: 10.91.0.0/30\n  blockSize: 30\n  vxlanMode: {mode}\n  nodeSelector: all()\n"
    );
    let run = ctl(&lab, &["apply", "-f", "-"], Some(&tiny));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pod = |name: &str, node: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: x\n  labels: {{pod: {name}}}\n  \
             annotations:\n    cni.projectcalico.org/ipv4pools: '[\"tiny\"]'\nspec:\n  nodeName: {node}\n  \
             containers: [{{name: c, image: x}}]\n"
        )
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap().to_string();
    // node-1 first, so the block is node-1's.
    std::fs::write(&path, pod("a", "node-1")).unwrap();
    lab.ok(&["apply", "-f", &path]);
    std::fs::write(&path, pod("b", "node-2") + &pod("c", "node-3")).unwrap();
    lab.ok(&["apply", "-f", &path]);
    lab.ok(&["sync", "--timeout", "60"]);
    let block: Ipv4Net = "10.91.0.0/30".parse().unwrap();
    let ips: BTreeSet<String> = ["x/a", "x/b", "x/c"].iter().map(|p| lab.ip(p)).collect();
    assert_eq!(ips.len(), 3, "three distinct addresses: {ips:?}");
    for ip in &ips {
        assert!(
            block.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "{ip} not from tiny"
        );
    }
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&["x/a", "x/b", "x/c"], &[]));
    // node-3 sends b's borrowed address to node-2 (its VTEP, or its underlay address by the
    // route node-2 announces), not to the block's node.
    let b = lab.ip("x/b");
    let route = route_to(&lab, "node-3", &format!("{b}/32")).unwrap_or_default();
    let expected = if encap == "vxlan" {
        route.contains("dev vxlan.twill") && route.contains("proto 212")
    } else {
        route.contains("via 198.18.0.12") && route.contains("proto 210")
    };
    assert!(
        expected,
        "node-3's route to {b}: {route:?}\n{}",
        routes(&lab, "node-3")
    );
    // A restarted agent routes them again from what the datastore lists at its start
    // (endpoints come before pools and affinities there): node-3's route, removed while its
    // agent is down, is back once it has synced.
    lab.ok(&["node", "kill", "node-3"]);
    exec(
        &netns(&lab, "node-3"),
        "ip",
        &["route", "del", &format!("{b}/32")],
    );
    assert_eq!(route_to(&lab, "node-3", &format!("{b}/32")), None);
    lab.ok(&["node", "start", "node-3"]);
    lab.ok(&["sync", "--timeout", "60"]);
    assert!(route_to(&lab, "node-3", &format!("{b}/32")).is_some());
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&["x/a", "x/b", "x/c"], &[]));
    // Deleted, their host routes go; the block's route stays with node-1's pod.
    std::fs::write(&path, pod("b", "node-2") + &pod("c", "node-3")).unwrap();
    lab.ok(&["delete", "-f", &path]);
    lab.ok(&["sync", "--timeout", "60"]);
    wait_until(
        Duration::from_secs(20),
        "borrowed host routes removed",
        || {
            let text = routes(&lab, "node-1");
            text.lines()
                .any(|l| {
                    l.starts_with("10.91.0.")
                        && (l.contains("proto 212") || l.contains("proto 210"))
                })
                .then_some(text)
        },
    );
    ipam_is_clean(&lab);
}

#[test]
fn dual_stack_pods_reach_each_other_over_both_families_across_nodes() {
    let lab = LabGuard::up_with(SPREAD, &["--nodes", "3", "--dual-stack"]);
    let pods = ["x/a", "x/b", "x/c"];
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&pods, &[]));
    assert_eq!(
        lab.probe_with(&["80/TCP"], &["--ipv6"]),
        matrix(&pods, &[]),
        "over IPv6"
    );
    // IPv6 blocks (/122) go over IPv6 sessions between the nodes' IPv6 addresses.
    let b6 = ipv6_of(&lab, "x/b");
    let block: ipnet::Ipv6Net = format!("{b6}/122").parse().unwrap();
    let route = route_to(&lab, "node-1", &block.trunc().to_string()).unwrap_or_default();
    assert!(
        route.contains("via fd00:198:18::12") && route.contains("proto 210"),
        "{route:?}"
    );
    assert!(sessions(&lab, "node-1")
        .get("fd00:198:18::12")
        .is_some_and(|s| s["state"] == "Established"));
}

#[test]
fn a_bgp_filter_on_the_rack_peering_changes_what_the_rack_and_the_node_learn() {
    let lab = LabGuard::up_with(PAIR, &["--nodes", "2", "--tor", "bird"]);
    let a_block = block_of(&lab.ip("x/a"));
    let b_block = block_of(&lab.ip("x/b"));
    assert!(route_to(&lab, "node-1", "198.19.0.0/24").is_some());
    // The nodes take nothing of 198.19.0.0/16 from the rack and tell it only about their own
    // blocks, not those they learned from each other.
    let documents = "---\napiVersion: projectcalico.org/v3\nkind: BGPFilter\nmetadata:\n  name: rack-policy\nspec:\n  \
         importV4:\n  - {action: Reject, matchOperator: In, cidr: 198.19.0.0/16}\n  \
         exportV4:\n  - {action: Reject, source: RemotePeers}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: rack-subnet-0\nspec:\n  \
         peerIP: 198.18.0.1\n  asNumber: 65000\n  nodeSelector: \"twill.lab/subnet == '0'\"\n  filters: [rack-policy]\n";
    let run = ctl(&lab, &["apply", "-f", "-"], Some(documents));
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until(
        Duration::from_secs(30),
        "the rack's prefix leaves the nodes",
        || {
            route_to(&lab, "node-1", "198.19.0.0/24")
                .or_else(|| route_to(&lab, "node-2", "198.19.0.0/24"))
        },
    );
    // The rack still has both blocks, each only from its own node now.
    wait_until(
        Duration::from_secs(30),
        "the rack hears each block from its own node only",
        || {
            let tor = lab.ok(&["tor", "routes"]);
            let a_from_1 = route_to(&lab, "underlay", &a_block).unwrap_or_default();
            let b_from_2 = route_to(&lab, "underlay", &b_block).unwrap_or_default();
            // BIRD lists each path it has; one path per block now.
            let paths = tor.matches("BGP.as_path").count();
            let ok = a_from_1.contains("via 198.18.0.11")
                && b_from_2.contains("via 198.18.0.12")
                && paths == 2;
            (!ok).then(|| format!("{a_from_1:?} {b_from_2:?} {paths} paths\n{tor}"))
        },
    );
    assert_eq!(
        lab.probe(&["80/TCP"]),
        matrix(&["x/a", "x/b"], &[]),
        "the mesh is untouched"
    );
}

/// The reply-direction destination conntrack recorded on `node` for connections to
/// `address`:`port` (the node's address when masqueraded, the pod's otherwise).
fn reply_destinations(lab: &LabGuard, node: &str, address: &str, port: &str) -> BTreeSet<String> {
    let output = exec(
        &netns(lab, node),
        "conntrack",
        &["-L", "-p", "tcp", "--dst", address, "--dport", port],
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // The second "dst=" is the reply tuple's.
            line.split_whitespace()
                .filter(|w| w.starts_with("dst="))
                .nth(1)
                .map(|w| w[4..].to_string())
        })
        .collect()
}

/// A process killed when the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nat_outgoing_lets_pods_reach_outside_the_pools_as_their_node_and_leaves_pod_traffic_alone() {
    let lab = LabGuard::up_with(PAIR, &["--nodes", "2"]);
    let a = lab.ip("x/a");
    let b = lab.ip("x/b");
    // Something outside every pool: a server on the underlay router, which has no route
    // to the pods (no rack here), so only a masqueraded connection can be answered.
    let _server = Killed(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns(&lab, "underlay"),
                env!("CARGO_BIN_EXE_twillctl"),
            ])
            .args([
                "lab",
                "responder",
                "--answer",
                "outside",
                "--port",
                "8080/TCP",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let fetch = || {
        let run = lab.run(
            &[
                "exec",
                "x/a",
                "--",
                "curl",
                "-s",
                "--max-time",
                "1",
                "http://198.18.0.1:8080/",
            ],
            None,
        );
        run.stdout.trim().to_string()
    };
    // The server is up (from the node itself, whose address the router knows).
    wait_until(Duration::from_secs(10), "the server answers node-1", || {
        let curl = exec(
            &netns(&lab, "node-1"),
            "curl",
            &["-s", "--max-time", "1", "http://198.18.0.1:8080/"],
        );
        let answer = String::from_utf8_lossy(&curl.stdout).trim().to_string();
        (answer != "outside").then_some(answer)
    });
    assert_eq!(
        fetch(),
        "",
        "without natOutgoing the answer has no way back to the pod"
    );
    assert!(
        reply_destinations(&lab, "node-1", "198.18.0.1", "8080").contains(&a),
        "sent with the pod's own address"
    );
    let pool = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: default-ipv4-ippool\nspec:\n  \
                cidr: 10.90.0.0/16\n  blockSize: 26\n  natOutgoing: true\n  nodeSelector: all()\n";
    let run = ctl(&lab, &["apply", "-f", "-"], Some(pool));
    assert_eq!(run.code, 0, "{}", run.stderr);
    lab.ok(&["sync"]);
    wait_until(
        Duration::from_secs(10),
        "x/a reaches the server as node-1",
        || {
            let answer = fetch();
            (answer != "outside").then_some(answer)
        },
    );
    assert!(reply_destinations(&lab, "node-1", "198.18.0.1", "8080").contains("198.18.0.11"));
    // Pod to pod stays unmasqueraded: the destination is in a pool.
    let _ = lab.run(
        &[
            "exec",
            "x/a",
            "--",
            "curl",
            "-s",
            "--max-time",
            "1",
            &format!("http://{b}:80/"),
        ],
        None,
    );
    let seen = reply_destinations(&lab, "node-1", &b, "80");
    assert!(
        seen.contains(&a) && !seen.contains("198.18.0.11"),
        "{seen:?}"
    );
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&["x/a", "x/b"], &[]));
}

#[test]
fn ipip_carries_pods_between_nodes_where_the_kernel_has_it_and_is_reported_missing_where_not() {
    let lab = LabGuard::up_with(SPREAD, &["--nodes", "3", "--encap", "ipip"]);
    let present = std::path::Path::new("/sys/module/ipip").exists();
    let status_of = |node: &str| -> Value {
        let path = format!("/run/twill/lab/{}/{node}/status.json", lab.name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    if present {
        assert_eq!(lab.probe(&["80/TCP"]), matrix(&["x/a", "x/b", "x/c"], &[]));
        let route = route_to(&lab, "node-1", &block_of(&lab.ip("x/b"))).unwrap_or_default();
        assert!(
            route.contains("dev tunl0") && route.contains("via 198.18.0.12"),
            "{route:?}"
        );
        return;
    }
    // This kernel has no ipip module: every node says so (status, log, metric), keeps
    // running, and keeps enforcing and routing what it can (pods on one node).
    eprintln!(
        "skipping the IP-in-IP matrix: this kernel has no ipip module (/sys/module/ipip is absent)"
    );
    for node in ["node-1", "node-2", "node-3"] {
        wait_until(
            Duration::from_secs(20),
            &format!("{node} reports the missing ipip module"),
            || {
                let status = status_of(node);
                (status["ipip_unavailable"] != true).then(|| status.to_string())
            },
        );
        let status = status_of(node);
        assert!(
            status["encap_warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str().unwrap().contains("no ipip module")),
            "{status}"
        );
        let metrics = exec(
            &netns(&lab, node),
            "curl",
            &["-s", "--max-time", "2", "http://127.0.0.1:9099/metrics"],
        );
        let text = String::from_utf8_lossy(&metrics.stdout);
        assert!(
            text.contains("twill_felix_encap_ipip_unavailable 1"),
            "{node}: {text}"
        );
        let log = std::fs::read_to_string(format!(
            "/run/twill/lab/{}/logs/{node}.twill-node.log",
            lab.name
        ))
        .unwrap();
        assert!(log.contains("no ipip module"), "{node}'s log says nothing");
        let health = exec(
            &netns(&lab, node),
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:9099/livez",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&health.stdout),
            "200",
            "{node} keeps running"
        );
    }
    // Nothing routes the pool between nodes: no plain BGP route either (the pool is the
    // encapsulation's), so the pods on other nodes are unreachable rather than reached
    // unencapsulated behind the operator's back.
    assert!(route_to(&lab, "node-1", &block_of(&lab.ip("x/b"))).is_none());
    let pods = ["x/a", "x/b", "x/c"];
    let all_cut: Vec<(&str, &str)> = pods
        .iter()
        .flat_map(|f| pods.iter().filter(move |t| *t != f).map(move |t| (*f, *t)))
        .collect();
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&pods, &all_cut));
}

#[test]
fn three_nodes_on_one_etcd_route_pods_to_each_other() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let etcd = runtime.block_on(twill_interop_tests::etcd::Etcd::start());
    let url = etcd.url();
    let lab = LabGuard::up_with(SPREAD, &["--nodes", "3", "--datastore", &url]);
    assert_eq!(lab.datastore(), url);
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&["x/a", "x/b", "x/c"], &[]));
    let b_block = block_of(&lab.ip("x/b"));
    let route = route_to(&lab, "node-3", &b_block).unwrap_or_default();
    assert!(
        route.contains("via 198.18.0.12") && route.contains("proto 210"),
        "{route:?}"
    );
    drop(lab);
    drop(etcd);
}

#[test]
fn dual_stack_vxlan_carries_each_family_through_its_own_device() {
    let lab = LabGuard::up_with(
        SPREAD,
        &["--nodes", "3", "--dual-stack", "--encap", "vxlan"],
    );
    let pods = ["x/a", "x/b", "x/c"];
    assert_eq!(lab.probe(&["80/TCP"]), matrix(&pods, &[]));
    assert_eq!(
        lab.probe_with(&["80/TCP"], &["--ipv6"]),
        matrix(&pods, &[]),
        "over IPv6"
    );
    let b6 = ipv6_of(&lab, "x/b");
    let block6: ipnet::Ipv6Net = format!("{b6}/122").parse().unwrap();
    let route6 = route_to(&lab, "node-1", &block6.trunc().to_string()).unwrap_or_default();
    assert!(
        route6.contains("dev vxlan-v6.twill") && route6.contains("proto 212"),
        "{route6:?}"
    );
    let route4 = route_to(&lab, "node-1", &block_of(&lab.ip("x/b"))).unwrap_or_default();
    assert!(route4.contains("dev vxlan.twill"), "{route4:?}");
    let device = exec(
        &netns(&lab, "node-2"),
        "ip",
        &["-d", "addr", "show", "dev", "vxlan-v6.twill"],
    );
    let text = String::from_utf8_lossy(&device.stdout);
    assert!(
        text.contains("local fd00:198:18::12") && text.contains("mtu 1430"),
        "{text}"
    );
    // The IPv6 VTEP is on the Node, from the IPv6 pool.
    let nodes: Value =
        serde_json::from_str(&ctl(&lab, &["get", "node", "node-2", "-o", "json"], None).stdout)
            .unwrap();
    let node = nodes["items"]
        .as_array()
        .and_then(|i| i.first())
        .unwrap_or(&nodes);
    let vtep6 = node["spec"]["ipv6VXLANTunnelAddr"]
        .as_str()
        .unwrap_or_default();
    assert!(vtep6.starts_with("fd00:90:"), "{node}");
    assert!(text.contains(&format!("inet6 {vtep6}/128")), "{text}");
    assert!(
        !routes(&lab, "node-1").contains("proto 210"),
        "no plain BGP routes for encapsulated pools"
    );
}

/// kubectl against a Kubernetes lab (its kubeconfig from `lab status -o json`).
fn kubectl(lab: &LabGuard, args: &[&str], stdin: &str) -> String {
    let status = lab.status();
    let kubeconfig = status["kubeconfig"]
        .as_str()
        .expect("a lab on the kubernetes datastore names its kubeconfig");
    common::kubectl(kubeconfig, args, stdin).unwrap_or_else(|err| panic!("{err}"))
}

/// The next hops gobgpd's RIB holds for `prefix` (`gobgp global rib`: one line per path,
/// the prefix, then the next hop).
fn rack_next_hops(lab: &LabGuard, prefix: &str) -> BTreeSet<String> {
    let rib = lab.ok(&["tor", "routes"]);
    let mut hops = BTreeSet::new();
    let mut current = String::new();
    for line in rib.lines() {
        let tokens: Vec<&str> = line
            .split_whitespace()
            .skip_while(|t| t.starts_with('*') || *t == ">")
            .collect();
        let Some(first) = tokens.first() else {
            continue;
        };
        let hop = if first.parse::<ipnet::IpNet>().is_ok() {
            current = first.to_string();
            tokens.get(1)
        } else if first.parse::<std::net::IpAddr>().is_ok() {
            Some(first) // a further path of the same prefix
        } else {
            continue;
        };
        if current == prefix {
            hops.extend(hop.map(|h| h.to_string()));
        }
    }
    hops
}

/// Calico's service advertisement on the Kubernetes datastore, as a network engineer sees it
/// on the rack: the cluster range from every node, and a Service with
/// `externalTrafficPolicy: Local` as a /32 from exactly the nodes that have a ready endpoint,
/// following the endpoint when it moves and withdrawn when it goes. The lab runs no
/// kube-controller-manager (no kubelet would make its pods ready), so the test writes the
/// EndpointSlice with kubectl as the EndpointSlice controller would.
#[test]
fn a_local_service_is_advertised_from_the_nodes_with_its_endpoints_endpoint_slices_written_as_the_controller_would(
) {
    let lab = LabGuard::up_with(
        PAIR,
        &[
            "--nodes",
            "2",
            "--tor",
            "gobgp",
            "--datastore",
            "kubernetes",
        ],
    );
    kubectl(
        &lab,
        &["apply", "-f", "-"],
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  \
         serviceClusterIPs:\n  - cidr: 10.96.0.0/16\n",
    );
    kubectl(
        &lab,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: x\nspec:\n  type: NodePort\n  \
         externalTrafficPolicy: Local\n  selector:\n    pod: a\n  ports:\n  - port: 80\n    targetPort: 80\n",
    );
    let cluster_ip = kubectl(
        &lab,
        &[
            "get",
            "service",
            "-n",
            "x",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        "",
    );
    assert!(cluster_ip.starts_with("10.96."), "{cluster_ip:?}");
    let host = format!("{cluster_ip}/32");
    let slice = |address: &str, node: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: x\n  \
             labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nendpoints:\n- addresses: [\"{address}\"]\n  \
             nodeName: {node}\n  conditions:\n    ready: true\nports:\n- port: 80\n  protocol: TCP\n"
        )
    };
    let wait_for = |prefix: &str, hops: &[&str]| {
        let wanted: BTreeSet<String> = hops.iter().map(|h| h.to_string()).collect();
        wait_until(
            Duration::from_secs(30),
            &format!("the rack's paths to {prefix} are {wanted:?}"),
            || {
                let seen = rack_next_hops(&lab, prefix);
                (seen != wanted).then(|| format!("{seen:?}\n{}", lab.ok(&["tor", "routes"])))
            },
        );
    };
    // The range from both nodes; no endpoint yet: no host route.
    wait_for("10.96.0.0/16", &["198.18.0.11", "198.18.0.12"]);
    wait_for(&host, &[]);
    // The endpoint (pod x/a) on node-1: only node-1 advertises the service.
    kubectl(
        &lab,
        &["apply", "-f", "-"],
        &slice(&lab.ip("x/a"), "node-1"),
    );
    wait_for(&host, &["198.18.0.11"]);
    // It moves to node-2 (pod x/b): node-1 withdraws, node-2 advertises.
    kubectl(
        &lab,
        &["apply", "-f", "-"],
        &slice(&lab.ip("x/b"), "node-2"),
    );
    wait_for(&host, &["198.18.0.12"]);
    // No endpoint left: withdrawn everywhere; the range stays.
    kubectl(&lab, &["delete", "endpointslice", "-n", "x", "web-1"], "");
    wait_for(&host, &[]);
    wait_for("10.96.0.0/16", &["198.18.0.11", "198.18.0.12"]);
}
