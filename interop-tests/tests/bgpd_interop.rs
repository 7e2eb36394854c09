//! twill-bgpd against real peers: gobgpd 3.10, BIRD 2.0.12 and FRR 8.4 (Debian), each in
//! its own network namespace. What a network engineer checks: the session comes up with
//! either side connecting; routes flow both ways with AS_PATH, communities and large
//! communities; a withdrawal (by live reconfiguration) reaches the peer.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::time::Duration;

use twill_interop_tests::bgp::{signal, BgpLab, Options, PeerKind, PEER, PEER_AS};

const LONG: Duration = Duration::from_secs(30);

fn routes_flow_both_ways(kind: PeerKind, twill_passive: bool) {
    let lab = BgpLab::start(
        kind,
        Options {
            twill_passive,
            peer_passive: !twill_passive,
            ..Options::default()
        },
    );
    lab.wait(LONG, "Established on Twill's side", |l| {
        l.twill_state().as_deref() == Some("Established")
    });
    lab.wait(
        LONG,
        "Established on the peer's side",
        BgpLab::peer_established,
    );
    // The peer's routes in Twill's RIB, attributes preserved.
    for prefix in ["10.21.0.0/24", "fd00:21::/64"] {
        lab.wait(LONG, &format!("{prefix} in Twill's RIB"), |l| {
            !l.twill_paths(prefix).is_empty()
        });
        let path = &lab.twill_paths(prefix)[0];
        assert_eq!(
            path["as_path"],
            serde_json::json!([PEER_AS]),
            "{kind:?}: {path}"
        );
        assert!(
            path["communities"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "65002:200"),
            "{kind:?}: {path}"
        );
        assert_eq!(
            path["large_communities"],
            serde_json::json!(["65002:3:4"]),
            "{kind:?}: {path}"
        );
        assert_eq!(
            (path["from"].as_str(), path["best"].as_bool()),
            (Some(PEER), Some(true))
        );
    }
    let peers = lab.twillctl(&["peers"]).unwrap();
    assert_eq!(peers[0]["received"], 2, "{peers}");
    assert_eq!(peers[0]["accepted"], 2);
    // Twill's routes at the peer, communities and large communities preserved.
    for prefix in ["10.20.0.0/24", "fd00:20::/64"] {
        lab.wait(LONG, &format!("{prefix} at the peer"), |l| {
            l.peer_route(prefix).is_some()
        });
        let view = lab.peer_route(prefix).unwrap();
        let (standard, large) = match kind {
            PeerKind::Gobgp => ("65001:100", "65001:1:2"),
            PeerKind::Bird => ("(65001,100)", "(65001, 1, 2)"),
            PeerKind::Frr => ("65001:100", "65001:1:2"),
        };
        assert!(
            view.contains(standard) && view.contains(large),
            "{kind:?} {prefix}:\n{view}"
        );
    }
    assert_eq!(lab.twillctl(&["peers"]).unwrap()[0]["advertised"], 2);
    // Withdraw one by reloading the configuration (SIGHUP); the session stays up.
    lab.write_twill_config(&["fd00:20::/64"]);
    signal(lab.twill.as_ref().unwrap(), "HUP");
    lab.wait(LONG, "10.20.0.0/24 withdrawn at the peer", |l| {
        l.peer_route("10.20.0.0/24").is_none()
    });
    assert!(lab.peer_route("fd00:20::/64").is_some());
    assert_eq!(
        lab.twill_state().as_deref(),
        Some("Established"),
        "reload did not reset the session"
    );
}

#[test]
fn gobgpd_twill_active() {
    routes_flow_both_ways(PeerKind::Gobgp, false);
}

#[test]
fn gobgpd_twill_passive() {
    routes_flow_both_ways(PeerKind::Gobgp, true);
}

#[test]
fn bird_twill_active() {
    routes_flow_both_ways(PeerKind::Bird, false);
}

#[test]
fn bird_twill_passive() {
    routes_flow_both_ways(PeerKind::Bird, true);
}

#[test]
fn frr_twill_active() {
    routes_flow_both_ways(PeerKind::Frr, false);
}

#[test]
fn frr_twill_passive() {
    routes_flow_both_ways(PeerKind::Frr, true);
}
