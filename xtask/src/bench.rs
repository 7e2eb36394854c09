//! The benchmarks: selector evaluation, datastore write throughput with 1 and 8 clients and
//! watch latency on SQLite and etcd side by side, and BGP ingest (see `crate::bgp`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use twill_interop_tests::etcd::Etcd;
use twill_shared::datastore::sqlite::{SqliteStore, Synchronous};
use twill_shared::datastore::{connect, Datastore};
use twill_shared::resource::{Key, Kind};
use twill_shared::selector::Selector;

/// Repetitions of each measurement; the median is reported.
const RUNS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

pub fn run(output: Option<&str>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = String::new();
    writeln!(report, "# Benchmarks\n")?;
    writeln!(report, "Written by `make bench` (`cargo run --release -p xtask -- bench`). Each section says how many runs its figures are the medians of.\n")?;
    writeln!(report, "{}", machine())?;
    println!("selector evaluation ...");
    writeln!(report, "{}", selector_bench())?;
    println!("datastore throughput and watch latency (SQLite, etcd) ...");
    writeln!(report, "{}", runtime.block_on(datastore_bench())?)?;
    println!("CNI pod ADD/DEL, IPAM allocations, lab (needs root for network namespaces) ...");
    writeln!(report, "{}", crate::cni::run())?;
    println!("Kubernetes datastore against etcd (needs root for network namespaces) ...");
    writeln!(report, "{}", crate::kube_bench::run())?;
    println!("policy: start of day, one change, scaling (needs root for network namespaces) ...");
    writeln!(report, "{}", crate::policy::run())?;
    println!("cluster: pod on A reachable from B, agents at rest, restart (needs root) ...");
    writeln!(report, "{}", crate::cluster::run())?;
    println!("Twill on a Kubernetes cluster: install, pod start against bridge + host-local ...");
    writeln!(report, "{}", crate::kube_install::run())?;
    println!("BGP ingest (twill-bgpd, BIRD 2, GoBGP; needs root for network namespaces) ...");
    writeln!(
        report,
        "{}",
        crate::bgp::run(RUNS.min(3), &[100_000, 1_000_000], &[1_000_000])
    )?;
    let path = output.unwrap_or("docs/benchmarks.md");
    std::fs::write(path, &report).with_context(|| format!("cannot write {path}"))?;
    println!("{report}\nwritten to {path}");
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    let etcd = command_output("etcd", &["--version"])
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    format!(
        "## Machine\n\n| | |\n|---|---|\n| date (UTC) | {} |\n| CPU | {cpu} × {} cores |\n| memory | {memory} |\n| kernel | {} |\n| rustc | {} |\n| etcd | {etcd} |\n| SQLite | {} (bundled) |\n",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_output("uname", &["-r"]),
        command_output("rustc", &["--version"]),
        twill_shared::datastore::sqlite::library_version(),
    )
}

/// ns per evaluation of a 3-term selector over 10 labels, matching and not matching.
fn selector_bench() -> String {
    let selector =
        Selector::parse("app == 'web' && tier in {'frontend', 'backend'} && !has(quarantine)")
            .expect("valid");
    let mut labels = BTreeMap::new();
    for (k, v) in [
        ("app", "web"),
        ("tier", "frontend"),
        ("env", "prod"),
        ("team", "payments"),
        ("version", "v2"),
        ("region", "eu-west"),
        ("zone", "a"),
        ("projectcalico.org/namespace", "shop"),
        ("projectcalico.org/orchestrator", "k8s"),
        ("projectcalico.org/serviceaccount", "default"),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    let mut other = labels.clone();
    other.insert("tier".into(), "db".into());
    const N: u32 = 2_000_000;
    let measure = |labels: &BTreeMap<String, String>| {
        median(
            (0..RUNS)
                .map(|_| {
                    let start = Instant::now();
                    for _ in 0..N {
                        black_box(selector.matches(black_box(labels)));
                    }
                    start.elapsed().as_nanos() as f64 / f64::from(N)
                })
                .collect(),
        )
    };
    let (hit, miss) = (measure(&labels), measure(&other));
    let parse = median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..20_000 {
                    black_box(
                        Selector::parse(black_box(
                            "app == 'web' && tier in {'frontend', 'backend'} && !has(quarantine)",
                        ))
                        .ok(),
                    );
                }
                start.elapsed().as_nanos() as f64 / 20_000.0
            })
            .collect(),
    );
    format!(
        "## Selector evaluation (target < 100 ns)\n\n`app == 'web' && tier in {{'frontend', 'backend'}} && !has(quarantine)` over 10 labels (BTreeMap); medians of {RUNS} runs.\n\n| case | ns per evaluation |\n|---|---|\n| matches (all three terms evaluated) | {hit:.1} |\n| does not match (stops at the 2nd term) | {miss:.1} |\n| parse (ns per parse) | {parse:.0} |\n"
    )
}

pub(crate) struct Figures {
    pub(crate) creates_1: f64,
    pub(crate) creates_8: f64,
    pub(crate) cas_1: f64,
    pub(crate) cas_8: f64,
    pub(crate) watch_p50_ms: f64,
    pub(crate) watch_p99_ms: f64,
}

fn object(name: &str, n: u64) -> serde_json::Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
           "metadata": {"name": name, "labels": {"n": n.to_string()}}, "spec": {"nets": ["198.18.0.0/24"]}})
}

/// Operations per second with `clients` stores, each doing `per_client` creates of its own
/// keys, then as many CAS updates of its own object.
async fn throughput(
    url: &str,
    clients: usize,
    per_client: u64,
    round: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut stores = Vec::new();
    for _ in 0..clients {
        stores.push(connect(url).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, store) in stores.iter().cloned().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..per_client {
                let name = format!("r{round}-c{client}-{n}");
                store
                    .create(
                        &Key::cluster(Kind::GlobalNetworkSet, &name),
                        object(&name, n),
                    )
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let creates = (clients as u64 * per_client) as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, store) in stores.iter().cloned().enumerate() {
        tasks.push(tokio::spawn(async move {
            let name = format!("r{round}-c{client}-0");
            let key = Key::cluster(Kind::GlobalNetworkSet, &name);
            let mut revision = store.get(&key).await?.context("created above")?.revision;
            for n in 0..per_client {
                revision = store.update(&key, object(&name, n + 1), revision).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let cas = (clients as u64 * per_client) as f64 / start.elapsed().as_secs_f64();
    Ok((creates, cas))
}

/// Latency from the start of a write to its event at a watcher on another connection (for
/// SQLite: another store handle, which learns of the write the way another process would).
async fn watch_latency(url: &str, writes: u64) -> anyhow::Result<Vec<f64>> {
    let writer = connect(url).await?;
    let watcher = connect(url).await?;
    let key = Key::cluster(Kind::GlobalNetworkSet, "latency");
    let start_rev = writer.create(&key, object("latency", 0)).await?;
    let mut watch = watcher
        .watch(Some(Kind::GlobalNetworkSet), start_rev)
        .await?;
    let mut revision = start_rev;
    let mut samples = Vec::new();
    for n in 1..=writes {
        let start = Instant::now();
        revision = writer.update(&key, object("latency", n), revision).await?;
        loop {
            let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
                .await
                .with_context(|| format!("{url}: watch event for revision {revision} within 5 s"))?
                .context("watch open")??;
            if batch.iter().any(|e| e.revision == revision) {
                break;
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        // Space the writes out so each latency is measured from idle.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(samples)
}

pub(crate) async fn backend_figures(url: &str) -> anyhow::Result<Figures> {
    let mut creates_1 = Vec::new();
    let mut creates_8 = Vec::new();
    let mut cas_1 = Vec::new();
    let mut cas_8 = Vec::new();
    for round in 0..RUNS {
        let (c, u) = throughput(url, 1, 1000, round * 2).await?;
        creates_1.push(c);
        cas_1.push(u);
        let (c, u) = throughput(url, 8, 250, round * 2 + 1).await?;
        creates_8.push(c);
        cas_8.push(u);
    }
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for _ in 0..RUNS {
        let mut samples = watch_latency(url, 500).await?;
        samples.sort_by(|a, b| a.total_cmp(b));
        p50.push(percentile(&samples, 0.50));
        p99.push(percentile(&samples, 0.99));
        let store: Arc<dyn Datastore> = connect(url).await?;
        store
            .delete(&Key::cluster(Kind::GlobalNetworkSet, "latency"), None)
            .await?;
    }
    Ok(Figures {
        creates_1: median(creates_1),
        creates_8: median(creates_8),
        cas_1: median(cas_1),
        cas_8: median(cas_8),
        watch_p50_ms: median(p50),
        watch_p99_ms: median(p99),
    })
}

async fn datastore_bench() -> anyhow::Result<String> {
    let dir = tempfile::Builder::new().prefix("twill-bench-").tempdir()?;
    let sqlite_url = format!("sqlite:{}", dir.path().join("bench.db").display());
    let sqlite = backend_figures(&sqlite_url).await?;
    let etcd_server = Etcd::start().await;
    let etcd = backend_figures(&etcd_server.url()).await?;
    drop(etcd_server);
    let row = |name: &str, s: f64, e: f64, unit: &str| {
        format!(
            "| {name} | {s:.0} {unit} | {e:.0} {unit} | {:.2} |\n",
            s / e
        )
    };
    let row_ms =
        |name: &str, s: f64, e: f64| format!("| {name} | {s:.2} ms | {e:.2} ms | {:.2} |\n", s / e);
    let mut out = format!(
        "## Datastore (target: watch p99 < 10 ms on both)\n\nSQLite (`sqlite:` file in WAL mode on local disk) and etcd 3.4 (one member on loopback) in one run. \
         Throughput: each client has its own connection; creates of distinct keys, then compare-and-swap updates of the client's own object \
         (1 client: 1000 operations; 8 clients: 250 each). Watch latency: from the start of a write to its event at a watcher on a second \
         connection (for SQLite a second store handle, which learns of commits the way another process does, through `PRAGMA data_version`), \
         500 sequential writes per run. Medians of {RUNS} runs.\n\n| measure | SQLite | etcd | SQLite / etcd |\n|---|---|---|---|\n",
    );
    out += &row(
        "creates/s, 1 client",
        sqlite.creates_1,
        etcd.creates_1,
        "/s",
    );
    out += &row(
        "creates/s, 8 clients",
        sqlite.creates_8,
        etcd.creates_8,
        "/s",
    );
    out += &row("CAS updates/s, 1 client", sqlite.cas_1, etcd.cas_1, "/s");
    out += &row("CAS updates/s, 8 clients", sqlite.cas_8, etcd.cas_8, "/s");
    out += &row_ms("watch latency p50", sqlite.watch_p50_ms, etcd.watch_p50_ms);
    out += &row_ms("watch latency p99", sqlite.watch_p99_ms, etcd.watch_p99_ms);
    out += &synchronous_bench(dir.path()).await?;
    Ok(out)
}

/// Sequential writes (each its own transaction, as `twillctl apply` of one object) per
/// second, and the p50 and p99 of one write in ms, with this `synchronous` setting.
async fn sequential_writes(
    dir: &std::path::Path,
    synchronous: Synchronous,
    writes: u64,
    round: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let path = dir.join(format!("sync-{synchronous:?}-{round}.db"));
    let url = format!("sqlite:{}", path.display());
    let store = SqliteStore::open_with(&url, &path, synchronous).await?;
    let key = Key::cluster(Kind::GlobalNetworkSet, "sync");
    let mut revision = store.create(&key, object("sync", 0)).await?;
    let mut samples = Vec::new();
    let start = Instant::now();
    for n in 1..=writes {
        let write = Instant::now();
        revision = store.update(&key, object("sync", n), revision).await?;
        samples.push(write.elapsed().as_secs_f64() * 1000.0);
    }
    let per_second = writes as f64 / start.elapsed().as_secs_f64();
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((
        per_second,
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
    ))
}

/// The `synchronous` comparison alone (`cargo xtask bench-sqlite-sync`).
pub async fn synchronous_only() -> anyhow::Result<String> {
    let dir = tempfile::Builder::new().prefix("twill-bench-").tempdir()?;
    synchronous_bench(dir.path()).await
}

/// SQLite with `synchronous=NORMAL` (Twill's setting) and `FULL` side by side.
async fn synchronous_bench(dir: &std::path::Path) -> anyhow::Result<String> {
    const WRITES: u64 = 500;
    let mut figures = [(vec![], vec![], vec![]), (vec![], vec![], vec![])];
    for round in 0..RUNS {
        // Interleaved, so both settings see the same disk weather.
        for (at, setting) in [Synchronous::Normal, Synchronous::Full]
            .into_iter()
            .enumerate()
        {
            let (rate, p50, p99) = sequential_writes(dir, setting, WRITES, round).await?;
            figures[at].0.push(rate);
            figures[at].1.push(p50);
            figures[at].2.push(p99);
        }
    }
    let [normal, full] = figures.map(|(r, a, b)| (median(r), median(a), median(b)));
    let filesystem = command_output("df", &["--output=fstype", &dir.display().to_string()]);
    let filesystem = filesystem.lines().last().unwrap_or("unknown");
    let mut out = format!(
        "\nSQLite's `synchronous` setting (a durability choice, docs/design/datastore.md): {WRITES} compare-and-swap \
         updates of one object one after the other, each its own transaction as one `twillctl apply` of one object is, \
         through one store handle, on a fresh file in WAL mode ({filesystem} on local disk); medians of {RUNS} runs, \
         the two settings interleaved. NORMAL is Twill's setting: a power loss can roll back the last commits. FULL \
         syncs the WAL at every commit: a power loss loses nothing acknowledged.\n\n\
         | measure | NORMAL | FULL | NORMAL / FULL |\n|---|---|---|---|\n"
    );
    let _ = writeln!(
        out,
        "| writes/s | {:.0} /s | {:.0} /s | {:.2} |",
        normal.0,
        full.0,
        normal.0 / full.0
    );
    for (name, n, f) in [("p50", normal.1, full.1), ("p99", normal.2, full.2)] {
        let _ = writeln!(
            out,
            "| one write, {name} | {n:.2} ms | {f:.2} ms | {:.2} |",
            n / f
        );
    }
    Ok(out)
}
