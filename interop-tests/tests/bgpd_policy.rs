//! twill-bgpd's policy and neighbour options against real peers: RFC 8212 with one
//! neighbour configured and one not, a prefix limit ending gobgpd's session with Cease
//! subcode 1, an AS-path regular expression refusing BIRD's route, and `local_as` as gobgpd
//! sees it.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use twill_interop_tests::bgp::{
    gobgp_announce, spawn_gobgpd, spawn_twill, wait_for, BgpLab, Options, PeerKind, PEER,
};
use twill_interop_tests::netns::{link, Netns};
use twill_interop_tests::workspace_binary;

const LONG: Duration = Duration::from_secs(40);

fn gobgp(ns: &Netns, port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut full = vec!["-u", "127.0.0.1", "-p", port.as_str()];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&ns.output("gobgp", &full).stdout).into_owned()
}

/// `twillctl bgp ARGS -o json` against the daemon whose control socket is `dir/bgpd.sock`.
fn twillctl(dir: &Path, args: &[&str]) -> Option<Value> {
    let control = dir.join("bgpd.sock");
    let output = std::process::Command::new(workspace_binary("twillctl"))
        .arg("bgp")
        .args(args)
        .args(["--control", control.to_str().unwrap(), "-o", "json"])
        .output()
        .ok()?;
    serde_json::from_slice(&output.stdout).ok()
}

/// Twill's status of the neighbour at `address`.
fn twill_peer(dir: &Path, address: &str) -> Option<Value> {
    twillctl(dir, &["peers"])?
        .as_array()?
        .iter()
        .find(|p| p["address"] == address)
        .cloned()
}

/// Twill's Loc-RIB rows for `prefix`.
fn twill_rib(dir: &Path, prefix: &str) -> Vec<Value> {
    twillctl(dir, &["rib", prefix])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// A gobgpd in AS `asn` at `address`, peering with Twill at `twill` (seen as `twill_as`).
fn gobgpd_config(asn: u32, address: &str, twill: &str, twill_as: u32) -> String {
    format!(
        "[global.config]\n  as = {asn}\n  router-id = \"{address}\"\n  port = 179\n  local-address-list = [\"{address}\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{twill}\"\n    peer-as = {twill_as}\n\
         \x20 [neighbors.timers.config]\n    connect-retry = 1\n    idle-hold-time-after-reset = 1\n"
    )
}

/// RFC 8212: of two eBGP neighbours, the one with `import`/`export` gets Twill's route and
/// gives its own; the one with neither gets nothing and gives nothing, though its session is
/// up and its route arrived (Adj-RIB-In).
#[test]
fn rfc_8212_a_neighbour_without_policy_gets_and_sends_nothing() {
    let twill_ns = Netns::new("p8t");
    let a = Netns::new("p8a");
    let b = Netns::new("p8b");
    link(&twill_ns, "198.18.150.1/24", &a, "198.18.150.2/24");
    link(&twill_ns, "198.18.151.1/24", &b, "198.18.151.2/24");
    let dir = tempfile::Builder::new()
        .prefix("twill-rfc8212-")
        .tempdir()
        .unwrap();
    let _twill = spawn_twill(
        &twill_ns,
        dir.path(),
        "[global]\nasn = 65001\nrouter_id = \"198.18.150.1\"\nlisten = [\"0.0.0.0:179\"]\n\
         [[neighbor]]\naddress = \"198.18.150.2\"\nremote_asn = 65002\nconnect_retry = 1\nimport = [\"all\"]\nexport = [\"all\"]\n\
         [[neighbor]]\naddress = \"198.18.151.2\"\nremote_asn = 65003\nconnect_retry = 1\n\
         [[originate]]\nprefix = \"10.80.0.0/24\"\n",
    );
    let _a = spawn_gobgpd(
        &a,
        dir.path(),
        "peer-a",
        gobgpd_config(65002, "198.18.150.2", "198.18.150.1", 65001),
        50081,
    );
    let _b = spawn_gobgpd(
        &b,
        dir.path(),
        "peer-b",
        gobgpd_config(65003, "198.18.151.2", "198.18.151.1", 65001),
        50082,
    );
    let logs = [
        dir.path().join("twill.log"),
        dir.path().join("peer-a.log"),
        dir.path().join("peer-b.log"),
    ];
    let logs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    gobgp_announce(&a, 50081, "10.81.0.0/24", &[], &logs);
    gobgp_announce(&b, 50082, "10.82.0.0/24", &[], &logs);
    for neighbour in ["198.18.150.2", "198.18.151.2"] {
        wait_for(
            LONG,
            &format!("{neighbour} Established"),
            || {
                let peer = twill_peer(dir.path(), neighbour)?;
                (peer["state"] == "Established").then(String::new)
            },
            &logs,
        );
    }
    wait_for(
        LONG,
        "Twill's route at the configured neighbour",
        || {
            let view = gobgp(&a, 50081, &["global", "rib", "10.80.0.0/24", "-a", "ipv4"]);
            view.contains("65001").then_some(view)
        },
        &logs,
    );
    wait_for(
        LONG,
        "the configured neighbour's route in Twill's RIB",
        || (!twill_rib(dir.path(), "10.81.0.0/24").is_empty()).then(String::new),
        &logs,
    );
    // The unconfigured neighbour's route arrives (Adj-RIB-In) but is not accepted.
    wait_for(
        LONG,
        "the unconfigured neighbour's route in its Adj-RIB-In",
        || {
            let rows = twillctl(dir.path(), &["rib", "--peer", "198.18.151.2", "--in"])?;
            rows.to_string().contains("10.82.0.0/24").then(String::new)
        },
        &logs,
    );
    assert!(
        twill_rib(dir.path(), "10.82.0.0/24").is_empty(),
        "no import policy: nothing accepted"
    );
    let peer = twill_peer(dir.path(), "198.18.151.2").unwrap();
    assert_eq!(peer["accepted"], 0, "{peer}");
    let view = gobgp(&b, 50082, &["global", "rib", "-a", "ipv4"]);
    assert!(
        !view.contains("10.80.0.0/24"),
        "no export policy: nothing sent\n{view}"
    );
    let out = twillctl(dir.path(), &["rib", "--peer", "198.18.151.2", "--out"]);
    assert!(
        !out.map(|v| v.to_string())
            .unwrap_or_default()
            .contains("10.80.0.0/24"),
        "nothing in its Adj-RIB-Out"
    );
}

/// Rewrites the lab's twill-bgpd configuration with `edit` and restarts it.
fn restart_with(lab: &mut BgpLab, edit: impl FnOnce(String) -> String) {
    let path = lab.path("twill.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    lab.start_twill(false);
}

/// gobgpd goes over an IPv4 prefix limit of 2: Twill ends the session with Cease / Maximum
/// Number of Prefixes Reached (6/1, RFC 4486) carrying AFI 1, SAFI 1 and the limit, gobgpd
/// counts the NOTIFICATION it received, and the session stays down (action `drop`).
#[test]
fn a_prefix_limit_exceeded_by_gobgpd_ends_the_session_with_cease_1() {
    let mut lab = BgpLab::start(PeerKind::Gobgp, Options::default());
    restart_with(&mut lab, |text| {
        text.replacen(
            "export = [\"all\"]\n",
            "export = [\"all\"]\nprefix_limit = { \"ipv4-unicast\" = 2 }\n",
            1,
        )
    });
    lab.wait(LONG, "Established with the limit", |l| {
        l.twill_state().as_deref() == Some("Established")
    });
    let logs = [lab.path("twill.log"), lab.path("peer.log")];
    let logs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    // 10.21.0.0/24 is there already; two more make three.
    gobgp_announce(&lab.peer_ns, 50051, "10.22.0.0/24", &[], &logs);
    gobgp_announce(&lab.peer_ns, 50051, "10.23.0.0/24", &[], &logs);
    lab.wait(LONG, "Twill to end the session over the limit", |l| {
        let peers = l.twillctl(&["peers"]).unwrap_or(Value::Null);
        let error = peers[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        error.contains("prefix limit of 2 reached (ipv4-unicast)") && peers[0]["disabled"] == true
    });
    lab.wait(LONG, "gobgpd to count the NOTIFICATION", |l| {
        let out = l.peer_ns.output(
            "gobgp",
            &[
                "-u",
                "127.0.0.1",
                "-p",
                "50051",
                "neighbor",
                l.twill_addr(),
                "-j",
            ],
        );
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
            v["state"]["messages"]["received"]["notification"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        })
    });
    // `drop`: the session stays down (gobgpd keeps trying) until `twillctl bgp enable`.
    let watch_until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < watch_until {
        assert_ne!(
            lab.twill_state().as_deref(),
            Some("Established"),
            "down until enabled:\n{}",
            lab.log("twill.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Back under the limit on gobgpd's side (two prefixes), then enabled: the session comes
    // up and stays (with three it would end again at once).
    let withdrawn = lab.peer_ns.output(
        "gobgp",
        &[
            "-u",
            "127.0.0.1",
            "-p",
            "50051",
            "global",
            "rib",
            "del",
            "10.23.0.0/24",
            "-a",
            "ipv4",
        ],
    );
    assert!(withdrawn.status.success());
    assert!(lab.twillctl(&["enable", PEER]).is_ok());
    lab.wait(
        LONG,
        "Established again after enable, with both prefixes",
        |l| {
            l.twill_state().as_deref() == Some("Established")
                && !l.twill_paths("10.22.0.0/24").is_empty()
        },
    );
    let steady_until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < steady_until {
        assert_eq!(
            lab.twill_state().as_deref(),
            Some("Established"),
            "under the limit it stays up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An import filter with AS-path regular expressions: `^65002$` (originated by BIRD, next
/// to us) refuses BIRD's IPv4 route, while `^64999_` (matching nothing) leaves the IPv6 one;
/// the refused route is still in the Adj-RIB-In.
#[test]
fn an_as_path_regex_filter_rejects_a_route_from_bird() {
    let mut lab = BgpLab::start(PeerKind::Bird, Options::default());
    restart_with(&mut lab, |text| {
        text.replacen("import = [\"all\"]", "import = [\"regex\"]", 1)
            + "\n[[filter]]\nname = \"regex\"\n\
               [[filter.rule]]\nprefix = [\"fd00:21::/64\"]\nas_path_regex = [\"^64999_\"]\naction = \"reject\"\n\
               [[filter.rule]]\nprefix = [\"10.21.0.0/24\"]\nas_path_regex = [\"^65002$\"]\naction = \"reject\"\n"
    });
    lab.wait(LONG, "BIRD's IPv6 route in Twill's RIB", |l| {
        !l.twill_paths("fd00:21::/64").is_empty()
    });
    lab.wait(LONG, "BIRD's IPv4 route in the Adj-RIB-In", |l| {
        l.twillctl(&["rib", "--peer", PEER, "--in", "10.21.0.0/24"])
            .is_ok_and(|v| v.to_string().contains("10.21.0.0/24"))
    });
    assert!(
        lab.twill_paths("10.21.0.0/24").is_empty(),
        "^65002$ refused it:\n{}",
        lab.log("twill.log")
    );
}

/// `local_as = 64999` towards gobgpd, which knows Twill as AS 64999 only: the session comes
/// up, gobgpd sees Twill's route through 64999 then 65001, and Twill sees gobgpd's route
/// through 64999 (prepended on receipt, as FRR's local-as).
#[test]
fn local_as_is_what_gobgpd_sees() {
    let twill_ns = Netns::new("lat");
    let peer = Netns::new("lap");
    link(&twill_ns, "198.18.152.1/24", &peer, "198.18.152.2/24");
    let dir = tempfile::Builder::new()
        .prefix("twill-local-as-")
        .tempdir()
        .unwrap();
    let _twill = spawn_twill(
        &twill_ns,
        dir.path(),
        "[global]\nasn = 65001\nrouter_id = \"198.18.152.1\"\nlisten = [\"0.0.0.0:179\"]\n\
         [[neighbor]]\naddress = \"198.18.152.2\"\nremote_asn = 65002\nlocal_as = 64999\nconnect_retry = 1\n\
         import = [\"all\"]\nexport = [\"all\"]\n\
         [[originate]]\nprefix = \"10.90.0.0/24\"\n",
    );
    let _peer = spawn_gobgpd(
        &peer,
        dir.path(),
        "peer",
        gobgpd_config(65002, "198.18.152.2", "198.18.152.1", 64999),
        50083,
    );
    let logs = [dir.path().join("twill.log"), dir.path().join("peer.log")];
    let logs: Vec<&Path> = logs.iter().map(|p| p.as_path()).collect();
    gobgp_announce(&peer, 50083, "10.91.0.0/24", &[], &logs);
    let view = wait_for(
        LONG,
        "Twill's route at gobgpd",
        || {
            let view = gobgp(
                &peer,
                50083,
                &["global", "rib", "10.90.0.0/24", "-a", "ipv4"],
            );
            view.contains("10.90.0.0/24").then_some(view)
        },
        &logs,
    );
    assert!(
        view.contains("64999 65001"),
        "through the local AS, then ours:\n{view}"
    );
    let neighbor = gobgp(&peer, 50083, &["neighbor", "198.18.152.1"]);
    assert!(
        neighbor.contains("64999"),
        "gobgpd's neighbour is AS 64999:\n{neighbor}"
    );
    let rows = wait_for(
        LONG,
        "gobgpd's route in Twill's RIB",
        || {
            let rows = twill_rib(dir.path(), "10.91.0.0/24");
            (!rows.is_empty()).then(|| Value::Array(rows).to_string())
        },
        &logs,
    );
    let rows: Value = serde_json::from_str(&rows).unwrap();
    assert_eq!(
        rows[0]["as_path"],
        serde_json::json!([64999, 65002]),
        "{rows}"
    );
}
