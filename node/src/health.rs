//! `/livez`, `/readyz`, `/endpoints/NS/NAME` and `/metrics` on `--health-listen`: a small
//! HTTP/1.1 server (one request per connection).
//!
//! - `/livez`: the agent's main loop made progress within the watchdog timeout (a loop stuck
//!   in an apply, or wedged, is not live, so a supervisor restarts it);
//! - `/readyz`: in sync with the datastore and connected to it, not in the middle of a
//!   resync, and the last apply succeeded (the CNI plugin refuses ADD until then);
//! - `/applied`: the agent has programmed this node at least once since it started (what
//!   the CNI plugin's STATUS asks: a passing datastore hiccup must not make a node
//!   NotReady, but a node whose rules a reboot wiped must be);
//! - `/endpoints/NS/NAME?revision=R`: this node's dataplane holds workload endpoint NS/NAME
//!   as of datastore revision R or later (what the CNI plugin's ADD waits for).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Metrics `/metrics` can encode (the agent's, the controllers').
pub trait Exposition: Send + 'static {
    /// The OpenMetrics text.
    fn encode(&self) -> String;
}

impl Exposition for crate::status::Metrics {
    fn encode(&self) -> String {
        crate::status::Metrics::encode(self)
    }
}

/// What the health endpoints answer from (published by the agent after each step).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    /// Ready for pods: in sync, connected, applied.
    pub ready: bool,
    /// Why not, in words (empty when ready).
    pub not_ready: String,
    /// The datastore revision the dataplane reflects.
    pub applied_revision: i64,
    /// This node's workload endpoints (`namespace/name`) in the dataplane last applied.
    pub programmed: Arc<BTreeSet<String>>,
}

/// The main loop's heartbeat, as the watchdog sees it.
#[derive(Debug)]
pub struct Heartbeat {
    started: Instant,
    /// Milliseconds since `started` at the last beat.
    last: AtomicU64,
    timeout: Duration,
}

impl Heartbeat {
    /// A heartbeat that goes stale `timeout` after its last beat.
    #[allow(
        clippy::disallowed_methods,
        reason = "the agent's edge reads the clock for its watchdog"
    )]
    pub fn new(timeout: Duration) -> Heartbeat {
        Heartbeat {
            started: Instant::now(),
            last: AtomicU64::new(0),
            timeout,
        }
    }

    /// The loop made progress.
    pub fn beat(&self) {
        self.last.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// Whether the last beat is recent enough.
    pub fn live(&self) -> bool {
        let since = self
            .elapsed_ms()
            .saturating_sub(self.last.load(Ordering::Relaxed));
        u128::from(since) <= self.timeout.as_millis()
    }

    /// How long since the last beat.
    pub fn silence(&self) -> Duration {
        Duration::from_millis(
            self.elapsed_ms()
                .saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the agent's edge reads the clock for its watchdog"
    )]
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The answer to one request: status line, body, content type.
fn answer<M: Exposition>(
    path: &str,
    health: &Health,
    heartbeat: &Heartbeat,
    metrics: &std::sync::Mutex<M>,
) -> (&'static str, String, &'static str) {
    const TEXT: &str = "text/plain";
    const UNAVAILABLE: &str = "503 Service Unavailable";
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    match path {
        "/livez" if heartbeat.live() => ("200 OK", "ok\n".into(), TEXT),
        "/livez" => (
            UNAVAILABLE,
            format!(
                "not live: the main loop made no progress for {:.1} s\n",
                heartbeat.silence().as_secs_f64()
            ),
            TEXT,
        ),
        "/readyz" if health.ready => ("200 OK", "ok\n".into(), TEXT),
        "/applied" if health.applied_revision > 0 => ("200 OK", "ok\n".into(), TEXT),
        "/applied" => (
            UNAVAILABLE,
            format!("nothing applied since start: {}\n", health.not_ready),
            TEXT,
        ),
        "/readyz" => (
            UNAVAILABLE,
            format!("not ready: {}\n", health.not_ready),
            TEXT,
        ),
        "/metrics" => (
            "200 OK",
            metrics.lock().map(|m| m.encode()).unwrap_or_default(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => match path.strip_prefix("/endpoints/") {
            Some(endpoint) => endpoint_answer(endpoint, query, health),
            None => ("404 Not Found", "not found\n".into(), TEXT),
        },
    }
}

/// Whether an endpoint is programmed, as of a revision.
fn endpoint_answer(
    endpoint: &str,
    query: &str,
    health: &Health,
) -> (&'static str, String, &'static str) {
    const TEXT: &str = "text/plain";
    let revision: i64 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("revision="))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if !health.programmed.contains(endpoint) {
        return (
            "503 Service Unavailable",
            format!("{endpoint} is not in this node's dataplane yet\n"),
            TEXT,
        );
    }
    if health.applied_revision < revision {
        return (
            "503 Service Unavailable",
            format!(
                "{endpoint}: the dataplane reflects revision {}, not yet {revision}\n",
                health.applied_revision
            ),
            TEXT,
        );
    }
    ("200 OK", "programmed\n".into(), TEXT)
}

/// Serves until the process ends.
pub async fn serve<M: Exposition>(
    listener: tokio::net::TcpListener,
    health: watch::Receiver<Health>,
    heartbeat: Arc<Heartbeat>,
    metrics: Arc<std::sync::Mutex<M>>,
) {
    let mut pause = Duration::from_millis(10);
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => {
                pause = Duration::from_millis(10);
                stream
            }
            // Out of file descriptors and the like: back off rather than spin.
            Err(err) => {
                tracing::warn!(error = %err, "health listener accept failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let health = health.borrow().clone();
        let metrics = metrics.clone();
        let heartbeat = heartbeat.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 2048];
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer)).await
            else {
                return;
            };
            let request = String::from_utf8_lossy(&buffer[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (code, body, kind) = answer(path, &health, &heartbeat, &metrics);
            let response = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_goes_stale_after_its_timeout() {
        let mut heartbeat = Heartbeat::new(Duration::from_secs(1));
        // Started 5 s ago, never beaten since.
        heartbeat.started -= Duration::from_secs(5);
        assert!(!heartbeat.live(), "5 s without a beat, timeout 1 s");
        assert!(heartbeat.silence() >= Duration::from_secs(5));
        heartbeat.beat();
        assert!(heartbeat.live());
    }

    #[test]
    fn endpoints_are_programmed_only_at_or_after_the_revision_asked() {
        let health = Health {
            ready: true,
            not_ready: String::new(),
            applied_revision: 7,
            programmed: Arc::new(["x/n1-k8s-a-eth0".to_string()].into_iter().collect()),
        };
        assert_eq!(
            endpoint_answer("x/n1-k8s-a-eth0", "revision=7", &health).0,
            "200 OK"
        );
        assert_eq!(
            endpoint_answer("x/n1-k8s-a-eth0", "revision=8", &health).0,
            "503 Service Unavailable"
        );
        assert_eq!(
            endpoint_answer("x/n1-k8s-b-eth0", "", &health).0,
            "503 Service Unavailable"
        );
    }
}
