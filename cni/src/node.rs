//! The plugin asks twill-node, over its health endpoint, whether pods may start: a pod
//! wired before twill-node has programmed the node (after a reboot the CNI configuration is
//! still on disk, the kernel's rules are not) would run with no policy at all.
//!
//! - [`ready`]: twill-node answers and is ready (in sync, applied since it started — so since
//!   boot); STATUS and ADD fail until it is.
//! - [`wait_programmed`]: after ADD wrote the endpoint, wait (bounded by
//!   `policy_setup_timeout_seconds`) until twill-node's dataplane holds it, so the pod's first
//!   packet meets its own policy rather than the drop of an unknown interface.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One `GET` on twill-node's health listener: the status code and the body.
async fn get(address: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|err| format!("twill-node does not answer on {address}: {err}"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: twill-node\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|err| err.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|err| err.to_string())?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("twill-node on {address} answered {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_string())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| format!("twill-node on {address} did not answer within 2 s"))?
}

/// Whether twill-node on this node is ready for pods (`/readyz`, for ADD) or has at least
/// programmed the node since it started (`/applied`, for STATUS, so that a passing datastore
/// hiccup does not make the node NotReady); the reason when it is not.
pub async fn ready(address: &str, path: &str) -> Result<(), String> {
    match get(address, path).await? {
        (200, _) => Ok(()),
        (_, body) => Err(format!("twill-node is not ready: {body}")),
    }
}

/// Waits until twill-node's dataplane holds `namespace/name` as of `revision`, for at most
/// `timeout`; the last answer when it does not in time.
pub async fn wait_programmed(
    address: &str,
    namespace: &str,
    name: &str,
    revision: i64,
    timeout: Duration,
) -> Result<(), String> {
    let path = format!("/endpoints/{namespace}/{name}?revision={revision}");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match get(address, &path).await {
            Ok((200, _)) => return Ok(()),
            Ok((_, body)) => body,
            Err(err) => err,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
