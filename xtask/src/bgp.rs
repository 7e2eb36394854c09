//! The BGP ingest benchmark (BRIEF §4): receivers twill-bgpd, BIRD 2 and GoBGP, one at a
//! time, each fed N IPv4 prefixes by a sender that is never the bottleneck (pre-encoded
//! UPDATEs written as fast as the socket takes them): distinct /32s in 100 attribute sets, or
//! a realistic table (`twill_interop_tests::route_table`). Measured: time from the sender's
//! first UPDATE byte to the last prefix accepted by the receiver (polled every 10 ms), and the
//! receiver's peak RSS; with a kernel table, time until every route is in the receiver
//! namespace's kernel table, counted outside the receiver (`crate::kernel_routes`).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::kernel_routes::{RouteCounter, LISTEN_PAUSE};

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
const SENDER_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 130, 2);

/// The route load the sender sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Distinct /32s in 100 attribute sets, 780 to an UPDATE.
    Synthetic,
    /// The realistic table (`blast::realistic_updates`).
    Realistic,
}

/// How often the accepted count is polled (each poll runs `twillctl` or `birdc`).
const ACCEPTED_POLL: Duration = Duration::from_millis(10);

/// How often the kernel table is dumped when the listener missed notifications.
const DUMP_POLL: Duration = Duration::from_millis(500);

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

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// What one run measured.
#[derive(Debug, Default)]
struct Outcome {
    /// Seconds from the first UPDATE byte to the finish line; `None` when not reached.
    time: Option<f64>,
    /// The receiver's peak RSS in MB.
    rss: f64,
    /// CPU seconds the kernel route listener used, for kernel runs.
    listener_cpu: Option<f64>,
    /// The sender's `table …` line, for realistic loads.
    table: Option<String>,
}

/// Starts the sender; returns the Unix nanoseconds of its first UPDATE byte, and its
/// `table …` line, once it has printed them.
fn send(
    sender_ns: &Netns,
    dir: &Path,
    load: Load,
    count: u64,
) -> (Daemon, Option<u128>, Option<String>) {
    let blast = workspace_binary("twill-bgp-blast");
    let log = dir.join("sender.log");
    let (target, count) = (format!("{RECEIVER}:179"), count.to_string());
    let mut args = vec![target.as_str(), count.as_str()];
    if load == Load::Realistic {
        args.push("realistic");
    }
    let sender = sender_ns.spawn(blast.to_str().unwrap(), &args, &log);
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let first_byte = text
            .lines()
            .find_map(|l| l.strip_prefix("start "))
            .and_then(|n| n.trim().parse::<u128>().ok());
        if first_byte.is_some() || started.elapsed() > Duration::from_secs(60) {
            let table = text
                .lines()
                .find_map(|l| l.strip_prefix("table "))
                .map(str::to_string);
            return (sender, first_byte, table);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Unix nanoseconds when the receiver had accepted `count` prefixes (polled every
/// [`ACCEPTED_POLL`]); `None` past the deadline or when the receiver died.
fn wait_accepted(
    receiver: Receiver,
    ns: &Netns,
    dir: &Path,
    daemon: &mut Daemon,
    count: u64,
    deadline: Instant,
) -> Option<u128> {
    loop {
        if accepted(receiver, ns, dir).is_some_and(|n| n >= count) {
            return Some(unix_nanos());
        }
        if Instant::now() > deadline || !daemon.is_running() {
            return None;
        }
        std::thread::sleep(ACCEPTED_POLL);
    }
}

/// Unix nanoseconds when `count` routes via the sender were in the receiver's kernel table:
/// when the listener read the last one's notification, checked by a dump; by a dump every
/// [`DUMP_POLL`] if the listener missed notifications.
fn wait_in_kernel(
    counter: &RouteCounter,
    daemon: &mut Daemon,
    count: u64,
    deadline: Instant,
) -> Option<u128> {
    let dumped = |counter: &RouteCounter| counter.dump().unwrap_or(0);
    loop {
        if let Some(at) = counter.reached_at() {
            let in_table = dumped(counter);
            if in_table >= count {
                return Some(u128::from(at));
            }
            eprintln!("  listener counted {count} routes, a dump {in_table}: waiting on dumps");
            break;
        }
        if counter.overflowed() {
            eprintln!(
                "  the route listener missed notifications (at {}): timing by dumps every {} ms",
                counter.count(),
                DUMP_POLL.as_millis()
            );
            break;
        }
        if Instant::now() > deadline || !daemon.is_running() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    loop {
        if dumped(counter) >= count {
            return Some(unix_nanos());
        }
        if Instant::now() > deadline || !daemon.is_running() {
            return None;
        }
        std::thread::sleep(DUMP_POLL);
    }
}

/// One run of `receiver` fed `count` prefixes of `load`; with `kernel`, the finish line is
/// every route in the kernel table. `time` is `None` when it did not finish in `limit`.
fn run_once(receiver: Receiver, load: Load, count: u64, kernel: bool, limit: Duration) -> Outcome {
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
    // Listening before the receiver starts, so no route is written unseen.
    let counter = kernel.then(|| {
        RouteCounter::start(&receiver_ns, SENDER_ADDRESS, count)
            .expect("a route listener in the receiver's namespace (needs root)")
    });
    let mut daemon = start(receiver, &receiver_ns, dir.path(), kernel);
    std::thread::sleep(Duration::from_millis(500));
    let (_sender, first_byte, table) = send(&sender_ns, dir.path(), load, count);
    let mut outcome = Outcome {
        table,
        ..Outcome::default()
    };
    let Some(first_byte) = first_byte else {
        eprintln!("{}: no session with the sender", receiver.name());
        outcome.rss = peak_rss_mb(daemon.pid());
        return outcome;
    };
    let deadline = Instant::now() + limit;
    let finished = match &counter {
        Some(counter) => wait_in_kernel(counter, &mut daemon, count, deadline),
        None => wait_accepted(
            receiver,
            &receiver_ns,
            dir.path(),
            &mut daemon,
            count,
            deadline,
        ),
    };
    outcome.time = finished.map(|at| at.saturating_sub(first_byte) as f64 / 1e9);
    outcome.rss = peak_rss_mb(daemon.pid());
    drop(daemon);
    outcome.listener_cpu = counter.map(RouteCounter::stop);
    outcome
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Runs of a receiver at a size: one for GoBGP at a million prefixes (it takes minutes).
fn runs_of(receiver: Receiver, count: u64, runs: usize) -> usize {
    if receiver == Receiver::Gobgp && count >= 1_000_000 {
        1
    } else {
        runs
    }
}

/// How many runs each figure is the median of, as the text says it.
fn runs_stated(runs: usize, sizes: &[u64]) -> String {
    let gobgp_alone = runs > 1
        && sizes.iter().any(|&n| n >= 1_000_000)
        && receivers(Load::Synthetic, false).contains(&Receiver::Gobgp);
    match (runs, gobgp_alone) {
        (1, _) => "Every figure is from one run".into(),
        (_, false) => format!("Every figure is the median of {runs} runs"),
        (_, true) => format!(
            "Every figure is the median of {runs} runs, but GoBGP's at 1000000 prefixes: one run (it takes minutes)"
        ),
    }
}

/// The receivers of a row group: BIRD first (the yardstick), then twill-bgpd, then GoBGP on
/// the synthetic load without a kernel table (it writes none without zebra, and takes
/// minutes). `TWILL_BENCH_RECEIVERS=twill,bird` limits them (BIRD stays).
fn receivers(load: Load, kernel: bool) -> Vec<Receiver> {
    let only = std::env::var("TWILL_BENCH_RECEIVERS").ok();
    [Receiver::Bird, Receiver::Twill, Receiver::Gobgp]
        .into_iter()
        .filter(|&receiver| {
            let name = format!("{receiver:?}").to_lowercase();
            receiver == Receiver::Bird
                || only
                    .as_ref()
                    .is_none_or(|o| o.split(',').any(|r| r == name))
        })
        .filter(|&receiver| receiver != Receiver::Gobgp || (load == Load::Synthetic && !kernel))
        .collect()
}

/// The rows of each receiver fed `count` prefixes of `load`, with ratios to BIRD's.
fn rows(out: &mut String, runs: usize, load: Load, count: u64, kernel: bool) -> Option<String> {
    let mut bird = None;
    let mut table = None;
    for receiver in receivers(load, kernel) {
        let limit = Duration::from_secs(if receiver == Receiver::Gobgp {
            400
        } else {
            120
        });
        let results: Vec<Outcome> = (0..runs_of(receiver, count, runs))
            .map(|_| run_once(receiver, load, count, kernel, limit))
            .collect();
        table = table.or_else(|| results.iter().find_map(|r| r.table.clone()));
        let times: Vec<f64> = results.iter().filter_map(|r| r.time).collect();
        let rss = median(results.iter().map(|r| r.rss).collect());
        let time = (times.len() == results.len()).then(|| median(times));
        if receiver == Receiver::Bird {
            bird = time.map(|t| (t, rss));
        }
        let shown = time.map_or(format!("> {} (did not finish)", limit.as_secs()), |t| {
            format!("{t:.3}")
        });
        let (time_ratio, rss_ratio) = match (time, bird) {
            (Some(t), Some((bt, brss))) => (format!("{:.2}", t / bt), format!("{:.2}", rss / brss)),
            _ => ("-".into(), "-".into()),
        };
        let cpu: Vec<String> = results
            .iter()
            .filter_map(|r| r.listener_cpu)
            .map(|c| format!("{c:.2}"))
            .collect();
        let cpu = if cpu.is_empty() {
            String::new()
        } else {
            format!(" (route listener CPU s: {})", cpu.join(", "))
        };
        println!(
            "  {} {load:?} {count} kernel={kernel}: {shown} s, {rss:.0} MB{cpu}",
            receiver.name()
        );
        let _ = writeln!(
            out,
            "| {} | {count} | {} | {shown} | {rss:.0} | {time_ratio} | {rss_ratio} |",
            receiver.name(),
            if kernel { "yes" } else { "no" }
        );
    }
    table
}

/// The sender's `prefixes=N sets=S updates=U bytes=B` in words.
fn describe_table(line: &str) -> String {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    format!(
        "{} prefixes in {} distinct attribute sets, {} UPDATEs, {:.1} MB",
        field("prefixes"),
        field("sets"),
        field("updates"),
        field("bytes") as f64 / 1e6
    )
}

const TABLE_HEAD: &str = "| receiver | prefixes | kernel | time (s) | peak RSS (MB) | time / BIRD | RSS / BIRD |\n|---|---|---|---|---|---|---|\n";

/// Runs the BGP benchmark, `runs` runs a row, the synthetic load at `sizes` and the realistic
/// table at `realistic`; returns its section of docs/benchmarks.md.
pub fn run(runs: usize, sizes: &[u64], realistic: &[u64]) -> String {
    let mut out = format!(
        "## BGP ingest (BRIEF §4; targets at 1M: twill-bgpd no slower than BIRD, within 1.5× its memory)\n\n\
         One eBGP session; the sender (`twill-bgp-blast`) pre-encodes its UPDATEs and writes them as fast as the socket \
         takes them. Time: from the sender's first UPDATE byte until the receiver reports every prefix accepted \
         (`twillctl bgp peers`, `birdc show protocols all`, `gobgp neighbor -j`, each a new process, run every {} ms: \
         a figure is late by up to that plus one poll). With a kernel table (`kernel`: twill-bgpd's `[kernel]`, BIRD's \
         `protocol kernel`), until every prefix is a route via the sender in the main table of the receiver's network \
         namespace, counted the same way for both, outside the receiver: a netlink socket in that namespace listens to \
         the IPv4 route notifications (1 GiB receive buffer; it reads what is queued, then pauses {} ms, so the time is \
         late by about that at most) and the time is when it reads the one that completes the table, confirmed by a \
         dump of the table (a run whose listener misses notifications falls back to a dump every {} ms and says so). \
         Peak RSS: the receiver's VmHWM. Each receiver in its own network namespace. {}.\n\n\
         Distinct IPv4 /32s in 100 attribute sets (AS paths `65002 64512+k`), packed 780 to an UPDATE:\n\n{TABLE_HEAD}",
        ACCEPTED_POLL.as_millis(),
        LISTEN_PAUSE.as_millis(),
        DUMP_POLL.as_millis(),
        runs_stated(runs, sizes),
    );
    for &count in sizes {
        for kernel in [false, true] {
            rows(&mut out, runs, Load::Synthetic, count, kernel);
        }
    }
    if !realistic.is_empty() {
        let mut section = String::new();
        let mut summaries = Vec::new();
        for &count in realistic {
            for kernel in [false, true] {
                if let Some(table) = rows(&mut section, runs, Load::Realistic, count, kernel) {
                    if !summaries.contains(&table) {
                        summaries.push(table);
                    }
                }
            }
        }
        let _ = write!(
            out,
            "\nA realistic table (`twill_interop_tests::route_table`, seed {}; as sent: {}): prefix lengths as in \
             the IPv4 Internet table (62% /24, 13% /22, 10% /23, then /16–/21, a few /11–/15), anywhere in \
             1.0.0.0–223.255.255.255; AS paths of 1–10 hops (mostly 3–5; one in ten with the origin prepended); \
             communities (1–6) on 30% of the attribute sets and MED on 20%; origin IGP or, for 13%, incomplete; \
             three attribute sets for every ten prefixes, each carrying one prefix and the rest spread with a skew, \
             so a few sets carry many prefixes and most one or two; every UPDATE packs as many prefixes of one set \
             as fit in 4,096 octets. GoBGP is not run on it.\n\n{TABLE_HEAD}{section}",
            twill_interop_tests::blast::REALISTIC_SEED,
            summaries
                .iter()
                .map(|t| describe_table(t))
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    out
}
