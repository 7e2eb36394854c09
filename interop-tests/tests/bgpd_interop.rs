//! twill-bgpd against real peers: gobgpd 3.10, BIRD 2.0.12 and FRR 8.4 (Debian), each in
//! its own network namespace. What a network engineer checks: the session comes up with
//! either side connecting; routes flow both ways with AS_PATH, communities and large
//! communities; a withdrawal (by live reconfiguration) reaches the peer.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::time::Duration;

use twill_interop_tests::bgp::{signal, BgpLab, Options, PeerKind, PEER, PEER_AS};

const LONG: Duration = Duration::from_secs(30);

fn routes_flow_both_ways(kind: PeerKind, twill_passive: bool) {
    let options = Options {
        twill_passive,
        peer_passive: !twill_passive,
        ..Options::default()
    };
    routes_flow(kind, options);
}

fn routes_flow(kind: PeerKind, options: Options) {
    let lab = BgpLab::start(kind, options);
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
            (Some(lab.peer_addr()), Some(true))
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

fn established(lab: &BgpLab) {
    lab.wait(LONG, "Established on Twill's side", |l| {
        l.twill_state().as_deref() == Some("Established")
    });
    lab.wait(
        LONG,
        "Established on the peer's side",
        BgpLab::peer_established,
    );
}

/// TCP-MD5: the right password gives a session; a wrong one never does.
fn md5(kind: PeerKind) {
    let right = Options {
        twill_password: Some("s3cret".into()),
        peer_password: Some("s3cret".into()),
        ..Options::default()
    };
    let lab = BgpLab::start(kind, right);
    established(&lab);
    lab.wait(LONG, "routes over the signed session", |l| {
        !l.twill_paths("10.21.0.0/24").is_empty()
    });
    drop(lab);
    let wrong = Options {
        twill_password: Some("s3cret".into()),
        peer_password: Some("other".into()),
        ..Options::default()
    };
    let lab = BgpLab::start(kind, wrong);
    // Eight seconds of every chance to (wrongly) come up, watched throughout: a session that
    // came up and went down again in between is caught too.
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        assert_ne!(
            lab.twill_state().as_deref(),
            Some("Established"),
            "{kind:?}: up with a wrong password"
        );
        assert!(
            !lab.peer_established(),
            "{kind:?}: the peer is up with a wrong password"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The peer frozen with SIGSTOP: Twill's hold timer expires and it sends the NOTIFICATION;
/// after SIGCONT the session comes back.
fn hold_timer_expiry(kind: PeerKind) {
    let lab = BgpLab::start(
        kind,
        Options {
            hold_time: 6,
            ..Options::default()
        },
    );
    established(&lab);
    signal(lab.peer.as_ref().unwrap(), "STOP");
    lab.wait(Duration::from_secs(20), "the hold timer to expire", |l| {
        l.twill_state().as_deref() != Some("Established")
    });
    let peers = lab.twillctl(&["peers"]).unwrap();
    let error = peers[0]["last_error"].as_str().unwrap_or("").to_string();
    assert!(
        error.contains("Hold Timer Expired (4/0)"),
        "{kind:?}: {peers}"
    );
    assert!(
        lab.twill_paths("10.21.0.0/24").is_empty(),
        "the frozen peer's routes are gone"
    );
    signal(lab.peer.as_ref().unwrap(), "CONT");
    // Recovery waits for the peer's own idle hold after the NOTIFICATION (gobgpd refuses
    // connections while idle, up to its 30 s idle-hold-time-after-reset) and for Twill's next
    // attempt (back-off 5, 10, 20, 30 s).
    let recovery = Duration::from_secs(75);
    lab.wait(recovery, "Established again after SIGCONT", |l| {
        l.twill_state().as_deref() == Some("Established")
    });
    lab.wait(recovery, "routes again", |l| {
        !l.twill_paths("10.21.0.0/24").is_empty()
    });
}

/// Route refresh both ways: the peer asks for Twill's routes again and Twill sends them
/// (BIRD `reload in`, FRR `clear bgp soft in`; GoBGP's `softresetin` re-reads its own
/// Adj-RIB-In and sends no ROUTE-REFRESH, checked with tcpdump, so for gobgpd only the other
/// direction applies); Twill asks the peer (`twillctl bgp refresh`) and the peer re-sends.
fn route_refresh(kind: PeerKind) {
    let lab = BgpLab::start(kind, Options::default());
    established(&lab);
    lab.wait(LONG, "Twill's routes at the peer", |l| {
        l.peer_route("10.20.0.0/24").is_some()
    });
    let sent = || {
        lab.twillctl(&["peers"]).unwrap()[0]["updates_out"]
            .as_u64()
            .unwrap()
    };
    let before = sent();
    let asked = match kind {
        PeerKind::Gobgp => None,
        PeerKind::Bird => Some(lab.peer_ns.output(
            "birdc",
            &[
                "-s",
                lab.path("bird.ctl").to_str().unwrap(),
                "reload",
                "in",
                "twill",
            ],
        )),
        PeerKind::Frr => Some(lab.peer_ns.output(
            "vtysh",
            &[
                "--vty_socket",
                lab.path("vty").to_str().unwrap(),
                "-c",
                "clear bgp 198.18.110.1 soft in",
            ],
        )),
    };
    if let Some(asked) = asked {
        assert!(asked.status.success(), "{kind:?}: {asked:?}");
        lab.wait(LONG, "Twill to send its table again", |_| sent() > before);
    }
    assert_eq!(lab.twill_state().as_deref(), Some("Established"));
    assert!(lab.peer_route("10.20.0.0/24").is_some());
    // And Twill asks the peer (twillctl bgp refresh): the peer sends its routes again.
    let received = || {
        lab.twillctl(&["peers"]).unwrap()[0]["updates_in"]
            .as_u64()
            .unwrap()
    };
    let before = received();
    assert_eq!(
        lab.twillctl(&["refresh", PEER]),
        Ok(serde_json::Value::Bool(true))
    );
    lab.wait(LONG, "the peer to send its routes again", |_| {
        received() > before
    });
    lab.wait(LONG, "the peer's routes to stay", |l| {
        !l.twill_paths("10.21.0.0/24").is_empty()
            && l.twill_state().as_deref() == Some("Established")
    });
    // BIRD and FRR do enhanced route refresh (RFC 7313): their re-announcement comes between
    // Beginning- and End-of-RIB-Refresh, after which Twill keeps what was announced again.
    if kind != PeerKind::Gobgp {
        lab.wait(LONG, "the peer's End-of-RIB-Refresh", |l| {
            l.log("twill.log").contains("End-of-RIB-Refresh received")
        });
        let paths = lab.twill_paths("10.21.0.0/24");
        assert!(
            paths.len() == 1 && paths[0]["refreshing"] == false,
            "{paths:?}"
        );
        assert!(
            lab.log("twill.log").contains("enhanced=true"),
            "Twill answered the peer's request with markers"
        );
    }
    // The peer answered Twill's request after it had Twill's End-of-RIB-Refresh (one TCP
    // stream), so what it kept then is what it keeps.
    assert!(
        lab.peer_route("10.20.0.0/24").is_some(),
        "{}",
        lab.peer_view()
    );
}

/// twill-bgpd (writing its routes to the kernel) killed with SIGKILL: the peer keeps Twill's
/// routes as stale meanwhile; Twill restarted (restarting bit set, and the forwarding bit,
/// since its kernel routes stayed) re-establishes and the routes are fresh again. The peer's
/// view is polled through the whole restart: the route is never missing from it. (Without
/// forwarding preserved, the F bit is clear and RFC 4724 §4.2 has the peer drop the routes at
/// once — which BIRD does.)
fn graceful_restart_of_twill(kind: PeerKind) {
    let mut lab = BgpLab::start(
        kind,
        Options {
            kernel: true,
            ..Options::default()
        },
    );
    established(&lab);
    lab.wait(LONG, "Twill's routes at the peer", |l| {
        l.peer_route("10.20.0.0/24").is_some()
    });
    let held = |l: &BgpLab, when: &str| {
        assert!(
            l.peer_route("10.20.0.0/24").is_some(),
            "{kind:?}: the peer dropped Twill's route {when} instead of keeping it through the restart"
        );
    };
    signal(lab.twill.as_ref().unwrap(), "KILL");
    lab.wait(LONG, "the peer to notice", |l| {
        held(l, "while noticing the loss");
        !l.peer_established()
    });
    // A while down (the peer's restart timer runs), polled.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    lab.wait(LONG, "two seconds down", |l| {
        held(l, "while Twill was down");
        std::time::Instant::now() >= until
    });
    lab.start_twill(true);
    lab.wait(LONG, "the session and routes after the restart", |l| {
        held(l, "during the restart");
        l.peer_established() && !l.twill_paths("10.21.0.0/24").is_empty()
    });
}

#[test]
fn gobgpd_ipv6_session() {
    routes_flow(
        PeerKind::Gobgp,
        Options {
            ipv6_session: true,
            ..Options::default()
        },
    );
}

#[test]
fn bird_ipv6_session() {
    routes_flow(
        PeerKind::Bird,
        Options {
            ipv6_session: true,
            ..Options::default()
        },
    );
}

#[test]
fn frr_ipv6_session() {
    routes_flow(
        PeerKind::Frr,
        Options {
            ipv6_session: true,
            ..Options::default()
        },
    );
}

#[test]
fn gobgpd_md5() {
    md5(PeerKind::Gobgp);
}

#[test]
fn bird_md5() {
    md5(PeerKind::Bird);
}

#[test]
fn frr_md5() {
    md5(PeerKind::Frr);
}

#[test]
fn gobgpd_hold_timer_expiry() {
    hold_timer_expiry(PeerKind::Gobgp);
}

#[test]
fn bird_hold_timer_expiry() {
    hold_timer_expiry(PeerKind::Bird);
}

#[test]
fn frr_hold_timer_expiry() {
    hold_timer_expiry(PeerKind::Frr);
}

#[test]
fn gobgpd_route_refresh() {
    route_refresh(PeerKind::Gobgp);
}

#[test]
fn bird_route_refresh() {
    route_refresh(PeerKind::Bird);
}

#[test]
fn frr_route_refresh() {
    route_refresh(PeerKind::Frr);
}

#[test]
fn gobgpd_graceful_restart_of_twill() {
    graceful_restart_of_twill(PeerKind::Gobgp);
}

#[test]
fn bird_graceful_restart_of_twill() {
    graceful_restart_of_twill(PeerKind::Bird);
}

/// The forwarding bit is honest: twill-bgpd with no kernel routes (nothing forwarded through
/// it survives it) restarts with F clear, and BIRD, as RFC 4724 §4.2 asks, drops its stale
/// routes at once instead of keeping them for the restart; they come back with the session.
#[test]
fn bird_drops_twills_routes_when_twill_restarts_without_forwarding_state() {
    let mut lab = BgpLab::start(PeerKind::Bird, Options::default());
    established(&lab);
    lab.wait(LONG, "Twill's routes at the peer", |l| {
        l.peer_route("10.20.0.0/24").is_some()
    });
    signal(lab.twill.as_ref().unwrap(), "KILL");
    lab.wait(LONG, "the peer to notice", |l| !l.peer_established());
    assert!(
        lab.peer_route("10.20.0.0/24").is_some(),
        "kept as stale while Twill is away (its last OPEN had the R capability)"
    );
    lab.start_twill(true);
    let mut dropped = false;
    // The route is gone only between the new session and Twill's re-announcement (about
    // 100 ms): looked at every 5 ms, not every 100.
    lab.wait_every(
        LONG,
        std::time::Duration::from_millis(5),
        "the session and routes after the restart",
        |l| {
            dropped |= l.peer_route("10.20.0.0/24").is_none();
            dropped && l.peer_established() && l.peer_route("10.20.0.0/24").is_some()
        },
    );
}

#[test]
fn frr_graceful_restart_of_twill() {
    graceful_restart_of_twill(PeerKind::Frr);
}

/// `[kernel]`: best routes are in the table with protocol 210, removed on withdrawal, kept
/// while twill-bgpd is killed and restarted with graceful restart.
#[test]
fn kernel_routes_follow_the_rib_and_survive_a_restart() {
    let mut lab = BgpLab::start(
        PeerKind::Gobgp,
        Options {
            kernel: true,
            ..Options::default()
        },
    );
    established(&lab);
    lab.wait(LONG, "the peer's routes in the kernel", |l| {
        let routes = l.kernel_routes();
        routes.contains("10.21.0.0/24 via 198.18.110.2")
            && routes.contains("fd00:21::/64 via fd00:110::2")
    });
    assert!(
        lab.kernel_routes().contains("metric 1024"),
        "{}",
        lab.kernel_routes()
    );
    assert!(
        !lab.kernel_routes().contains("10.20.0.0/24"),
        "our own originations are not installed"
    );
    // Every route change in Twill's namespace from here on, as the kernel reports it: a
    // restart that deletes and re-adds a route shows here even if a poll would miss it.
    let monitor_log = lab.path("monitor.log");
    let monitor = lab
        .twill_ns
        .spawn("ip", &["monitor", "route"], &monitor_log);
    let deletions = || {
        std::fs::read_to_string(&monitor_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Deleted 10.21.0.0/24"))
            .count()
    };
    signal(lab.twill.as_ref().unwrap(), "KILL");
    lab.start_twill(true);
    established(&lab);
    lab.wait(LONG, "the route through the restart", |l| {
        l.kernel_routes().contains("10.21.0.0/24 via 198.18.110.2")
    });
    lab.peer_withdraw_v4();
    lab.wait(LONG, "the withdrawn route to leave the kernel", |l| {
        !l.kernel_routes().contains("10.21.0.0/24")
    });
    lab.wait(LONG, "the monitor to report the withdrawal", |_| {
        deletions() >= 1
    });
    drop(monitor);
    assert_eq!(
        deletions(),
        1,
        "the route was deleted during the restart, not only at the withdrawal:\n{}",
        std::fs::read_to_string(&monitor_log).unwrap_or_default()
    );
    assert!(lab.kernel_routes().contains("fd00:21::/64"));
}

/// A lab whose twill-bgpd writes the kernel table, once routes flow both ways (Twill's at the
/// peer, the peer's in the kernel).
fn kernel_lab_with_routes_both_ways(kind: PeerKind) -> BgpLab {
    let lab = BgpLab::start(
        kind,
        Options {
            kernel: true,
            ..Options::default()
        },
    );
    established(&lab);
    lab.wait(LONG, "routes both ways", |l| {
        l.peer_route("10.20.0.0/24").is_some()
            && l.kernel_routes().contains("10.21.0.0/24 via 198.18.110.2")
    });
    lab
}

/// SIGTERM: the peer hears Cease / Administrative Shutdown (so it drops Twill's routes at
/// once rather than keeping them stale for a restart), twill-bgpd exits, and its kernel
/// routes (protocol 210) are gone.
fn stop_ends_sessions_and_removes_kernel_routes(kind: PeerKind) {
    let mut lab = kernel_lab_with_routes_both_ways(kind);
    signal(lab.twill.as_ref().unwrap(), "TERM");
    lab.wait_twill_exit(LONG);
    assert!(lab.kernel_routes().is_empty(), "{}", lab.kernel_routes());
    assert!(
        lab.log("twill.log").contains("twill-bgpd stopped"),
        "{}",
        lab.log("twill.log")
    );
    lab.wait(LONG, "the peer to drop Twill's routes", |l| {
        !l.peer_established() && l.peer_route("10.20.0.0/24").is_none()
    });
    if kind == PeerKind::Bird {
        let view = lab.peer_view();
        assert!(
            view.contains("Administrative shutdown")
                && view.contains("twill-bgpd is shutting down"),
            "BIRD shows the Cease and its RFC 8203 message: {view}"
        );
    }
}

/// SIGUSR2: a graceful-restart stop. No NOTIFICATION: the peer keeps Twill's routes as
/// stale; the kernel keeps Twill's routes; twill-bgpd started with --graceful-restart picks
/// the session up again.
fn graceful_restart_stop_keeps_forwarding(kind: PeerKind) {
    let mut lab = kernel_lab_with_routes_both_ways(kind);
    signal(lab.twill.as_ref().unwrap(), "USR2");
    lab.wait_twill_exit(LONG);
    lab.wait(LONG, "the peer to notice", |l| !l.peer_established());
    assert!(
        lab.kernel_routes()
            .contains("10.21.0.0/24 via 198.18.110.2"),
        "kernel routes stay: {}",
        lab.kernel_routes()
    );
    assert!(
        lab.peer_route("10.20.0.0/24").is_some(),
        "{kind:?}: the peer dropped Twill's routes instead of keeping them stale"
    );
    lab.start_twill(true);
    established(&lab);
    lab.wait(LONG, "routes after the restart", |l| {
        l.peer_route("10.20.0.0/24").is_some()
            && l.kernel_routes().contains("10.21.0.0/24 via 198.18.110.2")
    });
}

#[test]
fn gobgpd_stop_ends_sessions_and_removes_kernel_routes() {
    stop_ends_sessions_and_removes_kernel_routes(PeerKind::Gobgp);
}

#[test]
fn bird_stop_ends_sessions_and_removes_kernel_routes() {
    stop_ends_sessions_and_removes_kernel_routes(PeerKind::Bird);
}

#[test]
fn frr_stop_ends_sessions_and_removes_kernel_routes() {
    stop_ends_sessions_and_removes_kernel_routes(PeerKind::Frr);
}

#[test]
fn gobgpd_graceful_restart_stop_keeps_forwarding() {
    graceful_restart_stop_keeps_forwarding(PeerKind::Gobgp);
}

#[test]
fn bird_graceful_restart_stop_keeps_forwarding() {
    graceful_restart_stop_keeps_forwarding(PeerKind::Bird);
}
