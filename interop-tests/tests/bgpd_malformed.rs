//! twill-bgpd facing malformed messages from a raw test peer: RFC 7606 treat-as-withdraw
//! keeps the session up; header and OPEN errors get the exact NOTIFICATION of RFC 4271 §6.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::time::{Duration, Instant};

use twill_interop_tests::netns::{link, Netns};
use twill_interop_tests::workspace_binary;

struct Lab {
    twill_ns: Netns,
    raw_ns: Netns,
    dir: tempfile::TempDir,
    _twill: twill_interop_tests::netns::Daemon,
}

fn lab() -> Lab {
    let twill_ns = Netns::new("rawt");
    let raw_ns = Netns::new("rawp");
    link(&twill_ns, "198.18.110.1/24", &raw_ns, "198.18.110.2/24");
    let dir = tempfile::Builder::new()
        .prefix("twill-raw-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("twill.toml");
    std::fs::write(
        &config,
        "[global]\nasn = 65001\nrouter_id = \"198.18.110.1\"\nlisten = [\"198.18.110.1:179\"]\nmetrics_listen = \"127.0.0.1:9179\"\n[[neighbor]]\naddress = \"198.18.110.2\"\nremote_asn = 65002\npassive = true\nimport = [\"all\"]\nexport = [\"all\"]\n",
    )
    .unwrap();
    let control = dir.path().join("bgpd.sock");
    let binary = workspace_binary("twill-bgpd");
    let twill = twill_ns.spawn(
        binary.to_str().unwrap(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        &dir.path().join("twill.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !control.exists() {
        assert!(Instant::now() < deadline, "twill-bgpd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Lab {
        twill_ns,
        raw_ns,
        dir,
        _twill: twill,
    }
}

impl Lab {
    fn raw(&self, scenario: &str) -> twill_interop_tests::netns::Daemon {
        let binary = workspace_binary("twill-bgp-raw");
        self.raw_ns.spawn(
            binary.to_str().unwrap(),
            &["198.18.110.1:179", scenario],
            &self.dir.path().join(format!("{scenario}.log")),
        )
    }

    fn raw_log(&self, scenario: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{scenario}.log"))).unwrap_or_default()
    }

    fn twillctl(&self, what: &str) -> serde_json::Value {
        let control = self.dir.path().join("bgpd.sock");
        let output = std::process::Command::new(workspace_binary("twillctl"))
            .args([
                "bgp",
                what,
                "--control",
                control.to_str().unwrap(),
                "-o",
                "json",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn has(&self, prefix: &str) -> bool {
        self.twillctl("rib")
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["prefix"] == prefix)
    }

    fn wait(&self, what: &str, mut check: impl FnMut(&Lab) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check(self) {
            let twill_log =
                std::fs::read_to_string(self.dir.path().join("twill.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{twill_log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_malformed_attribute_withdraws_the_route_and_keeps_the_session() {
    let lab = lab();
    let _raw = lab.raw("treat-as-withdraw");
    lab.wait("10.30.0.0/24 accepted", |l| l.has("10.30.0.0/24"));
    lab.wait(
        "10.30.0.0/24 withdrawn by the malformed re-announcement",
        |l| !l.has("10.30.0.0/24"),
    );
    lab.wait(
        "10.31.0.0/24 accepted afterwards on the same session",
        |l| l.has("10.31.0.0/24"),
    );
    let peers = lab.twillctl("peers");
    assert_eq!(peers[0]["state"], "Established", "{peers}");
    // Prometheus metrics, served inside Twill's namespace.
    let metrics = lab
        .twill_ns
        .output("curl", &["-s", "http://127.0.0.1:9179/metrics"]);
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("twill_bgp_sessions{state=\"Established\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("twill_bgp_prefixes_accepted{peer=\"198.18.110.2\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("twill_bgp_updates_received_total{peer=\"198.18.110.2\"}"),
        "{text}"
    );
    assert!(
        !lab.raw_log("treat-as-withdraw").contains("notification"),
        "{}",
        lab.raw_log("treat-as-withdraw")
    );
    drop(lab.twill_ns);
}

fn notification_for(scenario: &str, expected: &str) {
    let lab = lab();
    let mut raw = lab.raw(scenario);
    lab.wait("the raw peer to finish", |_| raw.exit_status().is_some());
    let log = lab.raw_log(scenario);
    assert!(
        log.lines().any(|l| l == expected),
        "{scenario}: expected {expected:?} in:\n{log}"
    );
    assert!(
        log.contains("closed"),
        "{scenario}: Twill closes after the NOTIFICATION:\n{log}"
    );
}

#[test]
fn a_bad_marker_gets_connection_not_synchronized() {
    notification_for("bad-marker", "notification 1/1 ");
}

#[test]
fn a_bad_open_version_gets_unsupported_version_with_our_version() {
    notification_for("bad-version", "notification 2/1 0004");
}

#[test]
fn a_bad_length_gets_bad_message_length_with_the_length() {
    notification_for("bad-length", "notification 1/2 0012");
}
