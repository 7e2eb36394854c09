//! Harness for tests against real peers started by the test: etcd now; gobgpd, bird2, frr and
//! multi-node clusters in later issues. Everything listens on loopback or inside namespaces
//! the test makes, and is stopped when its guard drops, even on panic.

#![allow(clippy::disallowed_methods)] // The harness starts processes and reads the clock.

pub mod bgp;
pub mod blast;
pub mod etcd;
pub mod kube;
pub use twill_lab::netns;
pub mod route_table;
pub mod severable;

use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("the loopback interface accepts a listener on port 0")
}

/// Polls `check` every 10 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Path of a binary of this workspace, built next to the test executables.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let mut dir = exe
        .parent()
        .expect("test executables live in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
