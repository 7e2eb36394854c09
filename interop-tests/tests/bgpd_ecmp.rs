//! ECMP: gobgpd, BIRD and FRR announce one prefix with equal paths; twill-bgpd
//! (max_paths = 3) installs one multipath route through all three, and when one peer goes
//! the route keeps the other two.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use twill_interop_tests::bgp::{
    gobgp_announce, spawn_bird, spawn_frr, spawn_gobgpd, spawn_twill, wait_for,
};
use twill_interop_tests::netns::{link, Netns};

const PREFIX: &str = "10.50.0.0/24";

#[test]
fn equal_paths_from_three_peers_become_a_multipath_route() {
    let twill = Netns::new("ecmpt");
    let gobgp = Netns::new("ecmpg");
    let bird = Netns::new("ecmpb");
    let frr = Netns::new("ecmpf");
    link(&twill, "198.18.111.1/24", &gobgp, "198.18.111.2/24");
    link(&twill, "198.18.112.1/24", &bird, "198.18.112.2/24");
    link(&twill, "198.18.113.1/24", &frr, "198.18.113.2/24");
    let dir = tempfile::Builder::new()
        .prefix("twill-ecmp-")
        .tempdir()
        .unwrap();
    let _twill = spawn_twill(
        &twill,
        dir.path(),
        "[global]\nasn = 65001\nrouter_id = \"198.18.111.1\"\nlisten = [\"0.0.0.0:179\"]\nmax_paths = 3\n\
         [[neighbor]]\naddress = \"198.18.111.2\"\nremote_asn = 65002\nimport = [\"all\"]\nexport = [\"all\"]\nconnect_retry = 1\nfamilies = [\"ipv4-unicast\"]\n\
         [[neighbor]]\naddress = \"198.18.112.2\"\nremote_asn = 65003\nimport = [\"all\"]\nexport = [\"all\"]\nconnect_retry = 1\nfamilies = [\"ipv4-unicast\"]\n\
         [[neighbor]]\naddress = \"198.18.113.2\"\nremote_asn = 65004\nimport = [\"all\"]\nexport = [\"all\"]\nconnect_retry = 1\nfamilies = [\"ipv4-unicast\"]\n\
         [kernel]\ntable = 254\n",
    );
    let _gobgpd = spawn_gobgpd(
        &gobgp,
        dir.path(),
        "gobgpd",
        "[global.config]\n  as = 65002\n  router-id = \"198.18.111.2\"\n  port = 179\n  local-address-list = [\"198.18.111.2\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"198.18.111.1\"\n    peer-as = 65001\n"
            .to_string(),
        50061,
    );
    gobgp_announce(&gobgp, 50061, PREFIX, &[], &[]);
    let (bird_daemon, _) = spawn_bird(
        &bird,
        dir.path(),
        &format!(
            "router id 198.18.112.2;\nprotocol device {{ }}\nprotocol static {{ ipv4; route {PREFIX} blackhole; }}\n\
             protocol bgp twill {{\n  local 198.18.112.2 as 65003;\n  neighbor 198.18.112.1 as 65001;\n  \
             connect retry time 1;\n  ipv4 {{ import none; export all; }};\n}}\n"
        ),
    );
    let _frr = spawn_frr(
        &frr,
        dir.path(),
        &format!(
            "frr defaults traditional\nhostname ecmp\nlog stdout\n!\nrouter bgp 65004\n bgp router-id 198.18.113.2\n \
             no bgp ebgp-requires-policy\n no bgp network import-check\n neighbor 198.18.113.1 remote-as 65001\n \
             neighbor 198.18.113.1 timers connect 1\n address-family ipv4 unicast\n  network {PREFIX}\n  \
             neighbor 198.18.113.1 activate\n exit-address-family\n"
        ),
        &dir.path().join("frr.log"),
        None,
    );
    let logs: Vec<PathBuf> = ["twill.log", "gobgpd.log", "bird.log", "frr.log"]
        .iter()
        .map(|name| dir.path().join(name))
        .collect();
    let refs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    let route = || {
        String::from_utf8_lossy(&twill.output("ip", &["route", "show", PREFIX]).stdout).into_owned()
    };
    let hops = |routes: &str| routes.matches("nexthop via").count();
    let three = wait_for(
        Duration::from_secs(40),
        "a multipath route through all three peers",
        || {
            let routes = route();
            (hops(&routes) == 3).then_some(routes)
        },
        &refs,
    );
    for hop in ["198.18.111.2", "198.18.112.2", "198.18.113.2"] {
        assert!(three.contains(&format!("nexthop via {hop}")), "{three}");
    }
    assert!(
        three.contains("proto 210"),
        "Twill's route protocol: {three}"
    );
    // BIRD goes: its path is withdrawn, and the route keeps the other two.
    drop(bird_daemon);
    let two = wait_for(
        Duration::from_secs(30),
        "the multipath route without BIRD",
        || {
            let routes = route();
            (hops(&routes) == 2).then_some(routes)
        },
        &refs,
    );
    assert!(!two.contains("198.18.112.2"), "{two}");
    assert!(
        two.contains("nexthop via 198.18.111.2") && two.contains("nexthop via 198.18.113.2"),
        "{two}"
    );
}
