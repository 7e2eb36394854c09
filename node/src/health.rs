//! `/livez`, `/readyz` and `/metrics` on `--health-listen`: a small HTTP/1.1 server (one
//! request per connection).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::status::Metrics;

/// What the health endpoints answer from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// The agent's loop runs.
    pub live: bool,
    /// In sync and the first apply done.
    pub ready: bool,
}

/// Serves until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: watch::Receiver<Health>,
    metrics: Arc<std::sync::Mutex<Metrics>>,
) {
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => {
                pause = std::time::Duration::from_millis(10);
                stream
            }
            // Out of file descriptors and the like: back off rather than spin.
            Err(err) => {
                tracing::warn!(error = %err, "health listener accept failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
                continue;
            }
        };
        let health = *health.borrow();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 2048];
            let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut buffer))
                    .await
            else {
                return;
            };
            let request = String::from_utf8_lossy(&buffer[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (code, body, kind) = match path {
                "/livez" if health.live => ("200 OK", "ok\n".to_string(), "text/plain"),
                "/livez" => (
                    "503 Service Unavailable",
                    "not live\n".to_string(),
                    "text/plain",
                ),
                "/readyz" if health.ready => ("200 OK", "ok\n".to_string(), "text/plain"),
                "/readyz" => (
                    "503 Service Unavailable",
                    "not ready: not in sync or not yet applied\n".to_string(),
                    "text/plain",
                ),
                "/metrics" => {
                    let text = metrics.lock().map(|m| m.encode()).unwrap_or_default();
                    (
                        "200 OK",
                        text,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                }
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
