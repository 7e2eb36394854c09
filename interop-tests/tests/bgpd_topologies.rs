//! Topologies beyond one session: twill-bgpd as route reflector for two real clients, and
//! add-path with two paths for one prefix.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::path::Path;
use std::time::Duration;

use twill_interop_tests::bgp::{
    birdc, gobgp_announce, spawn_bird, spawn_frr, spawn_gobgpd as gobgpd, spawn_twill as twill,
    vtysh, wait_for as wait,
};
use twill_interop_tests::netns::{link, Netns};
use twill_interop_tests::workspace_binary;

fn gobgp(ns: &Netns, port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut full = vec!["-u", "127.0.0.1", "-p", port.as_str()];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&ns.output("gobgp", &full).stdout).into_owned()
}

/// Twill reflects a client's route (gobgpd) to the other clients (BIRD and FRR): the next hop
/// is kept, ORIGINATOR_ID and CLUSTER_LIST are set.
#[test]
fn twill_reflects_between_clients() {
    let rr = Netns::new("rrt");
    let a = Netns::new("rra");
    let b = Netns::new("rrb");
    let c = Netns::new("rrc");
    link(&rr, "198.18.140.1/24", &a, "198.18.140.2/24");
    link(&rr, "198.18.141.1/24", &b, "198.18.141.2/24");
    link(&rr, "198.18.142.1/24", &c, "198.18.142.2/24");
    // BIRD resolves iBGP next hops through its table: give it a route to A's network.
    b.ip(&["route", "add", "198.18.140.0/24", "via", "198.18.141.1"]);
    let dir = tempfile::Builder::new()
        .prefix("twill-rr-")
        .tempdir()
        .unwrap();
    let _twill = twill(
        &rr,
        dir.path(),
        "[global]\nasn = 65000\nrouter_id = \"198.18.140.1\"\nlisten = [\"0.0.0.0:179\"]\n\
         [[neighbor]]\naddress = \"198.18.140.2\"\nremote_asn = 65000\nroute_reflector_client = true\nconnect_retry = 1\n\
         [[neighbor]]\naddress = \"198.18.141.2\"\nremote_asn = 65000\nroute_reflector_client = true\nconnect_retry = 1\n\
         [[neighbor]]\naddress = \"198.18.142.2\"\nremote_asn = 65000\nroute_reflector_client = true\nconnect_retry = 1\n",
    );
    let _c = spawn_frr(
        &c,
        dir.path(),
        "frr defaults traditional\nhostname client-c\nlog stdout\n!\nrouter bgp 65000\n bgp router-id 198.18.142.2\n \
         neighbor 198.18.142.1 remote-as 65000\n neighbor 198.18.142.1 timers connect 1\n \
         address-family ipv4 unicast\n  neighbor 198.18.142.1 activate\n exit-address-family\n",
        &dir.path().join("frr.log"),
        None,
    );
    let _a = gobgpd(
        &a,
        dir.path(),
        "client-a",
        "[global.config]\n  as = 65000\n  router-id = \"198.18.140.2\"\n  port = 179\n  local-address-list = [\"198.18.140.2\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"198.18.140.1\"\n    peer-as = 65000\n"
            .to_string(),
        50071,
    );
    let (_b, socket) = spawn_bird(
        &b,
        dir.path(),
        "router id 198.18.141.2;\nprotocol device { }\nprotocol kernel { ipv4 { import all; export none; }; learn; }\n\
         protocol bgp reflector {\n  local 198.18.141.2 as 65000;\n  neighbor 198.18.141.1 as 65000;\n  connect retry time 1;\n  \
         ipv4 { import all; export none; gateway recursive; igp table master4; };\n}\n",
    );
    gobgp_announce(&a, 50071, "10.60.0.0/26", &[], &[]);
    let logs = [
        dir.path().join("twill.log"),
        dir.path().join("bird.log"),
        dir.path().join("client-a.log"),
        dir.path().join("frr.log"),
    ];
    let log_refs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    let view = wait(
        Duration::from_secs(40),
        "the reflected route at client B",
        || {
            let out = birdc(&b, &socket, &["show", "route", "10.60.0.0/26", "all"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("BGP.originator_id").then_some(text)
        },
        &log_refs,
    );
    assert!(view.contains("BGP.originator_id: 198.18.140.2"), "{view}");
    assert!(view.contains("BGP.cluster_list: 198.18.140.1"), "{view}");
    assert!(
        view.contains("BGP.next_hop: 198.18.140.2"),
        "the next hop is the originating client's:\n{view}"
    );
    // FRR, the third client, sees the same.
    let path = wait(
        Duration::from_secs(40),
        "the reflected route at client C",
        || {
            let out = vtysh(&c, dir.path(), "show bgp ipv4 unicast 10.60.0.0/26 json");
            let view: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            view["paths"]
                .as_array()
                .and_then(|paths| paths.first())
                .map(|p| p.to_string())
        },
        &log_refs,
    );
    let path: serde_json::Value = serde_json::from_str(&path).unwrap();
    assert_eq!(path["originatorId"], "198.18.140.2", "{path}");
    assert_eq!(path["clusterList"]["list"][0], "198.18.140.1", "{path}");
    assert_eq!(path["nexthops"][0]["ip"], "198.18.140.2", "{path}");
    // And nothing is reflected back to the client it came from.
    assert!(!gobgp(
        &a,
        50071,
        &["neighbor", "198.18.140.1", "adj-in", "-a", "ipv4"]
    )
    .contains("10.60.0.0/26"));
}

/// Two eBGP peers announce one prefix; Twill sends both paths with add-path to three iBGP
/// receivers: gobgpd, BIRD and FRR each hold two paths.
#[test]
fn add_path_sends_two_paths_for_one_prefix() {
    let twill_ns = Netns::new("apt");
    let left = Netns::new("apl");
    let right = Netns::new("apr");
    let receiver = Netns::new("apx");
    let bird_rx = Netns::new("apb");
    let frr_rx = Netns::new("apf");
    link(&twill_ns, "198.18.150.1/24", &left, "198.18.150.2/24");
    link(&twill_ns, "198.18.151.1/24", &right, "198.18.151.2/24");
    link(&twill_ns, "198.18.152.1/24", &receiver, "198.18.152.2/24");
    link(&twill_ns, "198.18.153.1/24", &bird_rx, "198.18.153.2/24");
    link(&twill_ns, "198.18.154.1/24", &frr_rx, "198.18.154.2/24");
    // BIRD resolves iBGP next hops through its table: the senders' networks go via Twill.
    for network in ["198.18.150.0/24", "198.18.151.0/24"] {
        bird_rx.ip(&["route", "add", network, "via", "198.18.153.1"]);
    }
    let dir = tempfile::Builder::new()
        .prefix("twill-addpath-")
        .tempdir()
        .unwrap();
    let _twill = twill(
        &twill_ns,
        dir.path(),
        "[global]\nasn = 65001\nrouter_id = \"198.18.150.1\"\nlisten = [\"0.0.0.0:179\"]\n\
         [[neighbor]]\naddress = \"198.18.150.2\"\nremote_asn = 65002\nimport = [\"all\"]\nexport = [\"all\"]\nconnect_retry = 1\n\
         [[neighbor]]\naddress = \"198.18.151.2\"\nremote_asn = 65003\nimport = [\"all\"]\nexport = [\"all\"]\nconnect_retry = 1\n\
         [[neighbor]]\naddress = \"198.18.152.2\"\nremote_asn = 65001\nconnect_retry = 1\nadd_path = \"send\"\nfamilies = [\"ipv4-unicast\"]\n\
         [[neighbor]]\naddress = \"198.18.153.2\"\nremote_asn = 65001\nconnect_retry = 1\nadd_path = \"send\"\nfamilies = [\"ipv4-unicast\"]\n\
         [[neighbor]]\naddress = \"198.18.154.2\"\nremote_asn = 65001\nconnect_retry = 1\nadd_path = \"send\"\nfamilies = [\"ipv4-unicast\"]\n",
    );
    let (_bird, bird_socket) = spawn_bird(
        &bird_rx,
        dir.path(),
        "router id 198.18.153.2;\nprotocol device { }\nprotocol kernel { ipv4 { import all; export none; }; learn; }\n\
         protocol bgp twill {\n  local 198.18.153.2 as 65001;\n  neighbor 198.18.153.1 as 65001;\n  connect retry time 1;\n  \
         ipv4 { import all; export none; add paths rx; gateway recursive; igp table master4; };\n}\n",
    );
    let _frr = spawn_frr(
        &frr_rx,
        dir.path(),
        "frr defaults traditional\nhostname rx\nlog stdout\n!\nrouter bgp 65001\n bgp router-id 198.18.154.2\n \
         no bgp ebgp-requires-policy\n neighbor 198.18.154.1 remote-as 65001\n neighbor 198.18.154.1 timers connect 1\n \
         address-family ipv4 unicast\n  neighbor 198.18.154.1 activate\n exit-address-family\n",
        &dir.path().join("frr.log"),
        None,
    );
    let sender = |me: &str, asn: u32| {
        format!(
            "[global.config]\n  as = {asn}\n  router-id = \"{me}\"\n  port = 179\n  local-address-list = [\"{me}\"]\n\
             [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = 65001\n",
            me.replace(".2", ".1")
        )
    };
    let _left = gobgpd(
        &left,
        dir.path(),
        "left",
        sender("198.18.150.2", 65002),
        50081,
    );
    let _right = gobgpd(
        &right,
        dir.path(),
        "right",
        sender("198.18.151.2", 65003),
        50082,
    );
    let _receiver = gobgpd(
        &receiver,
        dir.path(),
        "receiver",
        "[global.config]\n  as = 65001\n  router-id = \"198.18.152.2\"\n  port = 179\n  local-address-list = [\"198.18.152.2\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"198.18.152.1\"\n    peer-as = 65001\n  \
         [neighbors.add-paths.config]\n    receive = true\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      \
         afi-safi-name = \"ipv4-unicast\"\n"
            .to_string(),
        50083,
    );
    for (ns, port) in [(&left, 50081u16), (&right, 50082u16)] {
        gobgp_announce(ns, port, "10.70.0.0/24", &[], &[]);
    }
    let logs = [
        dir.path().join("twill.log"),
        dir.path().join("receiver.log"),
        dir.path().join("bird.log"),
        dir.path().join("frr.log"),
    ];
    let log_refs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    let view = wait(
        Duration::from_secs(40),
        "two paths at the add-path receiver",
        || {
            let text = gobgp(
                &receiver,
                50083,
                &["global", "rib", "10.70.0.0/24", "-a", "ipv4"],
            );
            (text.contains("65002") && text.contains("65003")).then_some(text)
        },
        &log_refs,
    );
    assert!(
        view.lines()
            .filter(|l| l.contains("10.70.0.0/24") || l.contains("65002") || l.contains("65003"))
            .count()
            >= 2,
        "{view}"
    );
    // BIRD keeps both paths: one route line each, from AS 65002 and from AS 65003.
    wait(
        Duration::from_secs(40),
        "two paths at BIRD",
        || {
            let out = birdc(
                &bird_rx,
                &bird_socket,
                &["show", "route", "10.70.0.0/24", "all"],
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let paths = text.matches("BGP.as_path:").count();
            (paths == 2 && text.contains("65002") && text.contains("65003")).then_some(text)
        },
        &log_refs,
    );
    // FRR too.
    wait(
        Duration::from_secs(40),
        "two paths at FRR",
        || {
            let out = vtysh(
                &frr_rx,
                dir.path(),
                "show bgp ipv4 unicast 10.70.0.0/24 json",
            );
            let view: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let paths = view["paths"].as_array()?;
            let sources: Vec<String> = paths
                .iter()
                .filter_map(|p| p["aspath"]["string"].as_str().map(str::to_string))
                .collect();
            (paths.len() == 2
                && sources.iter().any(|s| s.contains("65002"))
                && sources.iter().any(|s| s.contains("65003")))
            .then(|| view.to_string())
        },
        &log_refs,
    );
}

/// A 2-octet-only peer (BIRD with `enable as4 off`): a route from a 4-octet AS (gobgpd in
/// AS 4200000002) reaches it through Twill (AS 65001) with AS_TRANS in AS_PATH and the true
/// path in AS4_PATH (RFC 6793), which BIRD merges back; the old speaker's route reaches Twill.
#[test]
fn a_two_octet_peer_sees_as_trans_and_as4_path() {
    let twill_ns = Netns::new("as4t");
    let old = Netns::new("as4o");
    let new = Netns::new("as4n");
    link(&twill_ns, "198.18.160.1/24", &old, "198.18.160.2/24");
    link(&twill_ns, "198.18.161.1/24", &new, "198.18.161.2/24");
    let dir = tempfile::Builder::new()
        .prefix("twill-as4-")
        .tempdir()
        .unwrap();
    let _twill = twill(
        &twill_ns,
        dir.path(),
        "[global]\nasn = 65001\nrouter_id = \"198.18.160.1\"\nlisten = [\"0.0.0.0:179\"]\n\
         [[neighbor]]\naddress = \"198.18.160.2\"\nremote_asn = 65002\nimport = [\"all\"]\nexport = [\"all\"]\nconnect_retry = 1\nfamilies = [\"ipv4-unicast\"]\n\
         [[neighbor]]\naddress = \"198.18.161.2\"\nremote_asn = 4200000002\nimport = [\"all\"]\nexport = [\"all\"]\nconnect_retry = 1\nfamilies = [\"ipv4-unicast\"]\n",
    );
    let _new = gobgpd(
        &new,
        dir.path(),
        "new",
        "[global.config]\n  as = 4200000002\n  router-id = \"198.18.161.2\"\n  port = 179\n  local-address-list = [\"198.18.161.2\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"198.18.161.1\"\n    peer-as = 65001\n"
            .to_string(),
        50091,
    );
    gobgp_announce(&new, 50091, "10.80.0.0/24", &[], &[]);
    let (_bird, socket) = spawn_bird(
        &old,
        dir.path(),
        "router id 198.18.160.2;\nprotocol device { }\nprotocol static o4 { ipv4; route 10.81.0.0/24 blackhole; }\n\
         protocol bgp old {\n  local 198.18.160.2 as 65002;\n  neighbor 198.18.160.1 as 65001;\n  enable as4 off;\n  \
         connect retry time 1;\n  ipv4 { import all; export where proto = \"o4\"; };\n}\n",
    );
    let logs = [
        dir.path().join("twill.log"),
        dir.path().join("bird.log"),
        dir.path().join("new.log"),
    ];
    let log_refs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    let view = wait(
        Duration::from_secs(30),
        "the 4-octet AS's route at the 2-octet peer",
        || {
            let out = birdc(&old, &socket, &["show", "route", "10.80.0.0/24", "all"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("BGP.as_path").then_some(text)
        },
        &log_refs,
    );
    // BIRD merges AS_PATH (65001 23456 on this 2-octet session) with AS4_PATH (65001
    // 4200000002) as RFC 6793 §4.2.3 says: the 4-octet AS can only have come in AS4_PATH.
    assert!(
        view.contains("BGP.as_path: 65001 4200000002"),
        "the true path rebuilt from AS4_PATH:\n{view}"
    );
    // And the old speaker's route reaches Twill with its 2-octet AS.
    let control = dir.path().join("bgpd.sock");
    wait(
        Duration::from_secs(30),
        "the 2-octet peer's route at Twill",
        || {
            let out = std::process::Command::new(workspace_binary("twillctl"))
                .args([
                    "bgp",
                    "rib",
                    "--control",
                    control.to_str().unwrap(),
                    "-o",
                    "json",
                ])
                .output()
                .ok()?;
            let rib: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            rib.as_array()?
                .iter()
                .any(|p| {
                    p["prefix"] == "10.81.0.0/24" && p["as_path"] == serde_json::json!([65002])
                })
                .then(String::new)
        },
        &log_refs,
    );
}
