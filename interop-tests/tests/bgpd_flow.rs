//! twill-bgpd's flow control with a real kernel table: a peer sends a table far larger than
//! the route writes the daemon lets wait for the kernel, as fast as its socket takes it. The
//! connection stops being read while the kernel is behind and resumes as it catches up; the
//! whole table must arrive in the kernel and the session must stay up. A reader that never
//! resumes, or a backlog count that never comes down (the backlog metric stays up), fails this
//! test, and so does a reader that never pauses (the metric of pauses stays at zero).

#![allow(clippy::disallowed_methods)] // Tests read the clock.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use twill_interop_tests::netns::{link, Netns};
use twill_interop_tests::workspace_binary;

const RECEIVER: &str = "198.18.131.1";
const SENDER: &str = "198.18.131.2";

/// Far more than twill-bgpd lets wait for the kernel (two rounds of 16,384 writes), in more
/// bytes (about 2.2 MB) than a connection reads ahead of the speaker (1 MiB): the reader
/// must pause and resume before the table is in.
const PREFIXES: usize = 400_000;

/// The daemon's answer to a request on its control socket.
fn control(socket: &std::path::Path, request: &str) -> String {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if stream.write_all(format!("{request}\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn peers(socket: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&control(socket, "peers")).unwrap_or(serde_json::Value::Null)
}

/// The value of the sample whose line starts with `prefix`.
fn metric(socket: &std::path::Path, prefix: &str) -> Option<u64> {
    control(socket, "metrics")
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `twill_bgp_read_pauses_total` summed over its reasons.
fn read_pauses(socket: &std::path::Path) -> u64 {
    control(socket, "metrics")
        .lines()
        .filter(|l| l.starts_with("twill_bgp_read_pauses_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Routes twill-bgpd wrote (protocol 210) via the sender.
fn kernel_routes(netns: &Netns) -> usize {
    let output = netns.ip(&["-4", "route", "show", "proto", "210"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(&format!("via {SENDER}")))
        .count()
}

#[test]
fn a_table_larger_than_the_kernel_backlog_reaches_the_kernel_whole_with_the_session_up() {
    let receiver = Netns::new("flr");
    let sender = Netns::new("fls");
    link(
        &receiver,
        &format!("{RECEIVER}/24"),
        &sender,
        &format!("{SENDER}/24"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("twill.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\nasn = 65001\nrouter_id = \"{RECEIVER}\"\nlisten = [\"{RECEIVER}:179\"]\n\
             [[neighbor]]\naddress = \"{SENDER}\"\nremote_asn = 65002\npassive = true\nhold_time = 60\n\
             import = [\"all\"]\nexport = [\"all\"]\n[kernel]\ntable = 254\n"
        ),
    )
    .unwrap();
    let socket = dir.path().join("bgpd.sock");
    let mut twill = receiver.spawn(
        workspace_binary("twill-bgpd").to_str().unwrap(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--control",
            socket.to_str().unwrap(),
        ],
        &dir.path().join("twill.log"),
    );
    let count = PREFIXES.to_string();
    let target = format!("{RECEIVER}:179");
    let _blast = sender.spawn(
        workspace_binary("twill-bgp-blast").to_str().unwrap(),
        &[target.as_str(), count.as_str()],
        &dir.path().join("sender.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut installed = 0;
    while installed < PREFIXES {
        assert!(
            twill.is_running(),
            "twill-bgpd exited:\n{}",
            std::fs::read_to_string(dir.path().join("twill.log")).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "{installed} of {PREFIXES} routes in the kernel; peers: {}",
            peers(&socket)
        );
        std::thread::sleep(Duration::from_millis(500));
        installed = kernel_routes(&receiver);
    }
    assert_eq!(installed, PREFIXES);
    let answer = peers(&socket);
    let peer = &answer[0];
    assert_eq!(peer["state"], "Established", "{answer}");
    assert_eq!(peer["accepted"], PREFIXES, "{answer}");
    assert_eq!(peer["last_error"], serde_json::Value::Null, "{answer}");
    // Every write counted in is counted out (a count that never came down would slow every
    // read to one a second).
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&socket, "twill_bgp_kernel_backlog ") != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the kernel backlog stays:\n{}",
            control(&socket, "metrics")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The table came in faster than it could be taken: reading did pause.
    assert!(
        read_pauses(&socket) > 0,
        "no read pause:\n{}",
        control(&socket, "metrics")
    );
}
