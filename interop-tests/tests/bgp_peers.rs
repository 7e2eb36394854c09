//! Real peers (gobgpd 3.10, BIRD 2.0.12, FRR 8.4, from Debian) open a session with Twill's
//! codec and everything they send decodes: OPEN with their capabilities, UPDATEs carrying
//! AS_PATH, communities and large communities for IPv4 and IPv6 (MP-BGP), and End-of-RIB.
//! Each peer runs in its own network namespace (198.18.100.1) facing the capture speaker in
//! another (198.18.100.2). With TWILL_CAPTURE_DIR set, the raw messages are saved there as
//! byte vectors (bgpd/tests/vectors/ holds the committed ones).

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::path::Path;
use std::time::{Duration, Instant};

use twill_bgpd::wire::attribute::Origin;
use twill_bgpd::wire::{Capability, Context, Family, Message};
use twill_interop_tests::bgp::{gobgp_announce, spawn_bird, spawn_frr, spawn_gobgpd};
use twill_interop_tests::netns::{link, Daemon, Netns};
use twill_interop_tests::workspace_binary;

const PEER: &str = "198.18.100.1";
const TWILL: &str = "198.18.100.2";
const V4: &str = "10.10.0.0/24";
const V6: &str = "fd00:10::/64";

struct Lab {
    peer: Netns,
    twill: Netns,
    dir: tempfile::TempDir,
    capture: Daemon,
}

fn lab(name: &str) -> Lab {
    let peer = Netns::new(&format!("{name}p"));
    let twill = Netns::new(&format!("{name}t"));
    let (peer_if, twill_if) = link(&peer, &format!("{PEER}/24"), &twill, &format!("{TWILL}/24"));
    peer.ip(&["addr", "add", "fd00::1/64", "dev", &peer_if, "nodad"]);
    twill.ip(&["addr", "add", "fd00::2/64", "dev", &twill_if, "nodad"]);
    let dir = tempfile::Builder::new()
        .prefix(&format!("twill-{name}-"))
        .tempdir()
        .unwrap();
    let binary = workspace_binary("twill-bgp-capture");
    let capture = twill.spawn(
        binary.to_str().unwrap(),
        &[&format!("{TWILL}:179"), "65002", TWILL, "40", V4, V6],
        &dir.path().join("capture.log"),
    );
    let log = dir.path().join("capture.log");
    wait_for(
        Duration::from_secs(10),
        "the capture speaker to listen",
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("listening")),
    );
    Lab {
        peer,
        twill,
        dir,
        capture,
    }
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hex_to_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Waits for the capture to finish, then checks what the peer sent.
fn check_capture(mut lab: Lab, peer_name: &str, peer_log: &Path) {
    let log = lab.dir.path().join("capture.log");
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(status) = lab.capture.exit_status() {
            break status;
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let peer_text = std::fs::read_to_string(peer_log).unwrap_or_default();
            panic!(
                "{peer_name}: capture did not finish:\n{text}\n--- {peer_name} log:\n{peer_text}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    let peer_text = std::fs::read_to_string(peer_log).unwrap_or_default();
    assert!(
        status.success(),
        "{peer_name}: capture failed ({status}):\n{text}\n--- {peer_name} log:\n{peer_text}"
    );
    if let Some(dir) = std::env::var_os("TWILL_CAPTURE_DIR") {
        std::fs::write(Path::new(&dir).join(format!("{peer_name}.txt")), &text).unwrap();
    }
    let mut cx = Context {
        four_octet_as: true,
        ..Context::default()
    };
    let mut open = None;
    let mut v4 = None;
    let mut v6 = None;
    for line in text.lines() {
        let Some((kind, hex)) = line.split_once(' ') else {
            continue;
        };
        if !matches!(kind, "open" | "update" | "end-of-rib" | "keepalive") {
            continue;
        }
        let bytes = hex_to_bytes(hex);
        let (message, len) = Message::decode(&bytes, &cx).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        match message {
            Message::Open(o) => {
                cx.four_octet_as = o.has(&Capability::FourOctetAs(0));
                open = Some(o);
            }
            Message::Update(update) => {
                if update.nlri.iter().any(|n| n.prefix.to_string() == V4) {
                    v4 = Some(update.clone());
                }
                let reach = update.attributes.mp_reach.as_ref();
                if reach.is_some_and(|r| {
                    r.family == Family::Ipv6Unicast
                        && r.nlri.iter().any(|n| n.prefix.to_string() == V6)
                }) {
                    v6 = Some(update.clone());
                }
            }
            _ => {}
        }
    }
    let open = open.expect("the peer sent an OPEN");
    assert_eq!(open.asn(), 65001);
    assert_eq!(open.bgp_id.to_string(), PEER);
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        assert!(
            open.capabilities
                .contains(&Capability::Multiprotocol(family)),
            "{peer_name}: {:?}",
            open.capabilities
        );
    }
    assert!(open.capabilities.contains(&Capability::FourOctetAs(65001)));
    for update in [
        v4.expect("the IPv4 route arrived"),
        v6.expect("the IPv6 route arrived"),
    ] {
        let a = &update.attributes;
        assert_eq!(
            update.error_action,
            twill_bgpd::wire::update::ErrorAction::None,
            "{peer_name}"
        );
        assert_eq!(
            a.as_path.as_ref().and_then(|p| p.first_as()),
            Some(65001),
            "{peer_name}"
        );
        assert_eq!(a.origin, Some(Origin::Igp), "{peer_name}");
        assert!(
            a.communities.contains(&((65001 << 16) | 100)),
            "{peer_name}: communities {:?}",
            a.communities
        );
        assert_eq!(*a.large_communities, [(65001, 1, 2)], "{peer_name}");
    }
    assert!(text.contains("end-of-rib"), "{peer_name} sent End-of-RIB");
    drop(lab.twill);
    drop(lab.peer);
}

#[test]
fn gobgpd_session_decodes() {
    let lab = lab("gobgp");
    let config = format!(
        r#"[global.config]
  as = 65001
  router-id = "{PEER}"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{TWILL}"
    peer-as = 65002
  [neighbors.timers.config]
    connect-retry = 1
  [neighbors.graceful-restart.config]
    enabled = true
    restart-time = 120
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
"#
    );
    let log = lab.dir.path().join("gobgpd.log");
    let _gobgpd = spawn_gobgpd(&lab.peer, lab.dir.path(), "gobgpd", config, 50051);
    let attributes = ["community", "65001:100", "large-community", "65001:1:2"];
    gobgp_announce(&lab.peer, 50051, V4, &attributes, &[&log]);
    let v6 = [&["nexthop", "fd00::1"][..], &attributes].concat();
    gobgp_announce(&lab.peer, 50051, V6, &v6, &[&log]);
    check_capture(lab, "gobgpd", &log);
}

#[test]
fn bird2_session_decodes() {
    let lab = lab("bird");
    let (_bird, _socket) = spawn_bird(
        &lab.peer,
        lab.dir.path(),
        &format!(
            r#"router id {PEER};
protocol device {{ }}
protocol static orig4 {{ ipv4; route {V4} blackhole; }}
protocol static orig6 {{ ipv6; route {V6} blackhole; }}
filter add_communities {{ bgp_community.add((65001,100)); bgp_large_community.add((65001,1,2)); accept; }}
protocol bgp capture {{
  local {PEER} as 65001;
  neighbor {TWILL} as 65002;
  connect retry time 1;
  graceful restart on;
  ipv4 {{ import none; export filter add_communities; }};
  ipv6 {{ import none; export filter add_communities; next hop address fd00::1; }};
}}
"#
        ),
    );
    let log = lab.dir.path().join("bird.log");
    check_capture(lab, "bird", &log);
}

#[test]
fn frr_session_decodes() {
    let lab = lab("frr");
    let config = format!(
            "frr defaults traditional\nhostname tor\nlog stdout\n!\nroute-map TAG permit 10\n set community 65001:100\n \
             set large-community 65001:1:2\n!\nrouter bgp 65001\n bgp router-id {PEER}\n no bgp ebgp-requires-policy\n \
             no bgp network import-check\n bgp graceful-restart\n neighbor {TWILL} remote-as 65002\n \
             neighbor {TWILL} timers connect 1\n address-family ipv4 unicast\n  network {V4} route-map TAG\n  \
             neighbor {TWILL} activate\n exit-address-family\n address-family ipv6 unicast\n  network {V6} route-map TAG\n  \
             neighbor {TWILL} activate\n exit-address-family\n"
        );
    let log = lab.dir.path().join("frr.log");
    let _frr = spawn_frr(&lab.peer, lab.dir.path(), &config, &log, None);
    check_capture(lab, "frr", &log);
}
