//! The BGP ingest benchmark (BRIEF §4): receivers twill-bgpd, BIRD 2 and GoBGP, one at a
//! time, each fed N IPv4 prefixes by a sender that is never the bottleneck (pre-encoded
//! UPDATEs written as fast as the socket takes them). Measured: time from the sender's first
//! UPDATE byte to the last prefix accepted by the receiver (polled every 10 ms), and the
//! receiver's peak RSS; with `[kernel]`, time until every route is written to the kernel.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use twill_interop_tests::bgp::{birdc, spawn_bird};
use twill_interop_tests::netns::{link, Daemon, Netns};
use twill_interop_tests::workspace_binary;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receiver {
    Twill,
    Bird,
    Gobgp,
}

impl Receiver {
    fn name(self) -> &'static str {
        match self {
            Receiver::Twill => "twill-bgpd",
            Receiver::Bird => "BIRD 2",
            Receiver::Gobgp => "GoBGP",
        }
    }
}

const RECEIVER: &str = "198.18.130.1";
const SENDER: &str = "198.18.130.2";

fn start(receiver: Receiver, ns: &Netns, dir: &Path, kernel: bool) -> Daemon {
    let log = dir.join("receiver.log");
    match receiver {
        Receiver::Twill => {
            let mut config = format!(
                "[global]\nasn = 65001\nrouter_id = \"{RECEIVER}\"\nlisten = [\"{RECEIVER}:179\"]\nmetrics_listen = \"127.0.0.1:9179\"\n\
                 [[neighbor]]\naddress = \"{SENDER}\"\nremote_asn = 65002\npassive = true\nhold_time = 240\nimport = [\"all\"]\nexport = [\"all\"]\n"
            );
            if kernel {
                config.push_str("[kernel]\ntable = 254\n");
            }
            std::fs::write(dir.join("twill.toml"), config).unwrap();
            let binary = workspace_binary("twill-bgpd");
            let (config, control) = (dir.join("twill.toml"), dir.join("bgpd.sock"));
            ns.spawn(
                binary.to_str().unwrap(),
                &[
                    "--config",
                    config.to_str().unwrap(),
                    "--control",
                    control.to_str().unwrap(),
                ],
                &log,
            )
        }
        Receiver::Bird => {
            let kernel_protocol = if kernel {
                "protocol kernel { ipv4 { export all; }; }\n"
            } else {
                ""
            };
            let config = format!(
                "router id {RECEIVER};\nprotocol device {{ }}\n{kernel_protocol}protocol bgp sender {{\n  local {RECEIVER} as 65001;\n  \
                 neighbor {SENDER} as 65002;\n  passive on;\n  hold time 240;\n  ipv4 {{ import all; export none; }};\n}}\n"
            );
            spawn_bird(ns, dir, &config).0
        }
        Receiver::Gobgp => {
            let config = format!(
                "[global.config]\n  as = 65001\n  router-id = \"{RECEIVER}\"\n  port = 179\n  local-address-list = [\"{RECEIVER}\"]\n\
                 [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{SENDER}\"\n    peer-as = 65002\n  \
                 [neighbors.transport.config]\n    passive-mode = true\n  [neighbors.timers.config]\n    hold-time = 240\n"
            );
            std::fs::write(dir.join("gobgpd.toml"), config).unwrap();
            let config = dir.join("gobgpd.toml");
            ns.spawn(
                "gobgpd",
                &[
                    "-f",
                    config.to_str().unwrap(),
                    "--api-hosts",
                    "127.0.0.1:50051",
                    "--pprof-disable",
                    "-p",
                ],
                &log,
            )
        }
    }
}

fn find_number(value: &Value, key: &str) -> Option<u64> {
    match value {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| map.values().find_map(|v| find_number(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_number(v, key)),
        _ => None,
    }
}

/// Prefixes the receiver has accepted from the sender.
fn accepted(receiver: Receiver, ns: &Netns, dir: &Path) -> Option<u64> {
    match receiver {
        Receiver::Twill => {
            let control = dir.join("bgpd.sock");
            let out = std::process::Command::new(workspace_binary("twillctl"))
                .args(["bgp", "peers", "--control", control.to_str()?, "-o", "json"])
                .output()
                .ok()?;
            let peers: Value = serde_json::from_slice(&out.stdout).ok()?;
            peers.get(0)?.get("accepted")?.as_u64()
        }
        Receiver::Bird => {
            let out = birdc(
                ns,
                &dir.join("bird.ctl"),
                &["show", "protocols", "all", "sender"],
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with("Routes:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        }
        Receiver::Gobgp => {
            let out = ns.output(
                "gobgp",
                &["-u", "127.0.0.1", "-p", "50051", "neighbor", SENDER, "-j"],
            );
            let value: Value = serde_json::from_slice(&out.stdout).ok()?;
            find_number(&value, "accepted")
        }
    }
}

/// Routes the receiver has written to the kernel.
fn in_kernel(receiver: Receiver, ns: &Netns, dir: &Path) -> Option<u64> {
    match receiver {
        Receiver::Twill => {
            let out = ns.output("curl", &["-s", "http://127.0.0.1:9179/metrics"]);
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .find_map(|l| l.strip_prefix("twill_bgp_kernel_writes_total "))
                .and_then(|n| n.trim().parse().ok())
        }
        Receiver::Bird => {
            let out = birdc(
                ns,
                &dir.join("bird.ctl"),
                &["show", "protocols", "all", "kernel1"],
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with("Routes:"))?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| w.starts_with("exported"))?;
            words.get(at - 1)?.parse().ok()
        }
        Receiver::Gobgp => None,
    }
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines().find(|l| l.starts_with("VmHWM:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One run: seconds until all `count` prefixes are accepted (and in the kernel when
/// `kernel`), and the receiver's peak RSS in MB. `None` when it did not finish in `limit`.
fn run_once(receiver: Receiver, count: u64, kernel: bool, limit: Duration) -> (Option<f64>, f64) {
    let receiver_ns = Netns::new("benr");
    let sender_ns = Netns::new("bens");
    link(
        &receiver_ns,
        &format!("{RECEIVER}/24"),
        &sender_ns,
        &format!("{SENDER}/24"),
    );
    let dir = tempfile::Builder::new()
        .prefix("twill-bench-bgp-")
        .tempdir()
        .unwrap();
    let mut daemon = start(receiver, &receiver_ns, dir.path(), kernel);
    std::thread::sleep(Duration::from_millis(500));
    let blast = workspace_binary("twill-bgp-blast");
    let sender_log = dir.path().join("sender.log");
    let _sender = sender_ns.spawn(
        blast.to_str().unwrap(),
        &[&format!("{RECEIVER}:179"), &count.to_string()],
        &sender_log,
    );
    let started = Instant::now();
    let first_byte = loop {
        let text = std::fs::read_to_string(&sender_log).unwrap_or_default();
        if let Some(nanos) = text
            .lines()
            .find_map(|l| l.strip_prefix("start "))
            .and_then(|n| n.trim().parse::<u128>().ok())
        {
            break Some(nanos);
        }
        if started.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let Some(first_byte) = first_byte else {
        eprintln!("{}: no session with the sender", receiver.name());
        return (None, peak_rss_mb(daemon.pid()));
    };
    let deadline = Instant::now() + limit;
    let done = loop {
        let all_accepted = accepted(receiver, &receiver_ns, dir.path()).is_some_and(|n| n >= count);
        let all_in_kernel =
            !kernel || in_kernel(receiver, &receiver_ns, dir.path()).is_some_and(|n| n >= count);
        if all_accepted && all_in_kernel {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            break Some((now.saturating_sub(first_byte)) as f64 / 1e9);
        }
        if Instant::now() > deadline || !daemon.is_running() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let rss = peak_rss_mb(daemon.pid());
    drop(daemon);
    (done, rss)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Runs the BGP benchmark; returns its section of docs/benchmarks.md.
pub fn run(runs: usize, sizes: &[u64]) -> String {
    let mut out = String::from(
        "## BGP ingest (BRIEF §4; targets at 1M: twill-bgpd no slower than BIRD, within 1.5× its memory)\n\n\
         One eBGP session; the sender (`twill-bgp-blast`) pre-encodes distinct IPv4 /32s in 100 attribute sets, packed \
         780 to an UPDATE, and writes them as fast as the socket takes them. Time: from the sender's first UPDATE byte \
         until the receiver reports every prefix accepted (polled every 10 ms: `twillctl bgp peers`, `birdc show protocols \
         all`, `gobgp neighbor -j`); with `[kernel]`, until every route is also written to the kernel table. Peak RSS: the \
         receiver's VmHWM. Each receiver in its own network namespace; medians of 3 runs (GoBGP at 1M: one run).\n\n\
         | receiver | prefixes | kernel | time (s) | peak RSS (MB) | time / BIRD | RSS / BIRD |\n|---|---|---|---|---|---|---|\n",
    );
    for &count in sizes {
        for kernel in [false, true] {
            let mut bird = None;
            // TWILL_BENCH_RECEIVERS=twill,bird limits the run (BIRD stays: it is the yardstick).
            let only = std::env::var("TWILL_BENCH_RECEIVERS").ok();
            for receiver in [Receiver::Bird, Receiver::Twill, Receiver::Gobgp] {
                let name = format!("{receiver:?}").to_lowercase();
                if only
                    .as_ref()
                    .is_some_and(|o| receiver != Receiver::Bird && !o.split(',').any(|r| r == name))
                {
                    continue;
                }
                if kernel && receiver == Receiver::Gobgp {
                    continue; // GoBGP writes no kernel routes without zebra.
                }
                let limit = Duration::from_secs(if receiver == Receiver::Gobgp {
                    400
                } else {
                    120
                });
                let results: Vec<(Option<f64>, f64)> = (0..runs)
                    .map(|_| run_once(receiver, count, kernel, limit))
                    .collect();
                let times: Vec<f64> = results.iter().filter_map(|r| r.0).collect();
                let rss = median(results.iter().map(|r| r.1).collect());
                let time = (times.len() == results.len()).then(|| median(times));
                if receiver == Receiver::Bird {
                    bird = time.map(|t| (t, rss));
                }
                let shown = time.map_or(format!("> {} (did not finish)", limit.as_secs()), |t| {
                    format!("{t:.3}")
                });
                let (time_ratio, rss_ratio) = match (time, bird) {
                    (Some(t), Some((bt, brss))) => {
                        (format!("{:.2}", t / bt), format!("{:.2}", rss / brss))
                    }
                    _ => ("-".into(), "-".into()),
                };
                println!(
                    "  {} {count} kernel={kernel}: {shown} s, {rss:.0} MB",
                    receiver.name()
                );
                let _ = writeln!(
                    out,
                    "| {} | {count} | {} | {shown} | {rss:.0} | {time_ratio} | {rss_ratio} |",
                    receiver.name(),
                    if kernel { "yes" } else { "no" }
                );
            }
        }
    }
    out
}
