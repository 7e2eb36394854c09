//! ECMP: two gobgpd peers announce one prefix with equal paths; twill-bgpd (max_paths = 2)
//! installs one multipath route through both.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::time::{Duration, Instant};

use twill_interop_tests::netns::{link, Netns};
use twill_interop_tests::workspace_binary;

fn gobgpd(
    ns: &Netns,
    dir: &std::path::Path,
    me: &str,
    asn: u32,
    port: u16,
) -> twill_interop_tests::netns::Daemon {
    let config = dir.join(format!("gobgpd-{asn}.toml"));
    std::fs::write(
        &config,
        format!(
            "[global.config]\n  as = {asn}\n  router-id = \"{me}\"\n  port = 179\n  local-address-list = [\"{me}\"]\n\
             [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"198.18.0.0\"\n    peer-as = 65001\n"
        )
        .replace("198.18.0.0", if me.starts_with("198.18.111") { "198.18.111.1" } else { "198.18.112.1" }),
    )
    .unwrap();
    let api = format!("127.0.0.1:{port}");
    let daemon = ns.spawn(
        "gobgpd",
        &[
            "-f",
            config.to_str().unwrap(),
            "--api-hosts",
            &api,
            "--pprof-disable",
            "-p",
        ],
        &dir.join(format!("gobgpd-{asn}.log")),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = port.to_string();
    while !ns
        .output(
            "gobgp",
            &[
                "-u",
                "127.0.0.1",
                "-p",
                &port,
                "global",
                "rib",
                "add",
                "10.50.0.0/24",
                "origin",
                "igp",
                "-a",
                "ipv4",
            ],
        )
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "gobgp AS {asn} did not take the route"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

#[test]
fn equal_paths_from_two_peers_become_a_multipath_route() {
    let twill = Netns::new("ecmpt");
    let left = Netns::new("ecmpl");
    let right = Netns::new("ecmpr");
    link(&twill, "198.18.111.1/24", &left, "198.18.111.2/24");
    link(&twill, "198.18.112.1/24", &right, "198.18.112.2/24");
    let dir = tempfile::Builder::new()
        .prefix("twill-ecmp-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("twill.toml");
    std::fs::write(
        &config,
        "[global]\nasn = 65001\nrouter_id = \"198.18.111.1\"\nlisten = [\"0.0.0.0:179\"]\nmax_paths = 2\n\
         [[neighbor]]\naddress = \"198.18.111.2\"\nremote_asn = 65002\nconnect_retry = 1\n\
         [[neighbor]]\naddress = \"198.18.112.2\"\nremote_asn = 65003\nconnect_retry = 1\n[kernel]\ntable = 254\n",
    )
    .unwrap();
    let control = dir.path().join("bgpd.sock");
    let _twill = twill.spawn(
        workspace_binary("twill-bgpd").to_str().unwrap(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        &dir.path().join("twill.log"),
    );
    let _left = gobgpd(&left, dir.path(), "198.18.111.2", 65002, 50061);
    let _right = gobgpd(&right, dir.path(), "198.18.112.2", 65003, 50062);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let routes = String::from_utf8_lossy(
            &twill
                .output("ip", &["route", "show", "10.50.0.0/24"])
                .stdout,
        )
        .into_owned();
        if routes.contains("nexthop via 198.18.111.2")
            && routes.contains("nexthop via 198.18.112.2")
        {
            break;
        }
        let log = std::fs::read_to_string(dir.path().join("twill.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "no multipath route:\n{routes}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
