//! A real etcd (Debian's etcd-server) on free loopback ports with a temporary data directory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use twill_lab::kube::etcd_binary;
use twill_shared::datastore::{connect, Datastore};

use crate::{eventually, free_port};

/// A running etcd; killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Etcd {
        let data = tempfile::Builder::new()
            .prefix("twill-etcd-")
            .tempdir()
            .expect("a temporary directory");
        let mut etcd = Etcd {
            child: None,
            data,
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.launch().await;
        etcd
    }

    /// The datastore URL, `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Opens a Twill datastore on this etcd.
    pub async fn store(&self) -> Arc<dyn Datastore> {
        connect(&self.url()).await.expect("etcd is up")
    }

    /// Kills etcd with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data directory and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    async fn launch(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("etcd.log"))
            .expect("a log file in the data directory");
        let child = Command::new(etcd_binary())
            .args(twill_lab::kube::etcd_args(
                &self.data.path().join("member-data"),
                &client,
                &peer,
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start {}: {err} (apt-get install etcd-server)",
                    etcd_binary().display()
                )
            });
        self.child = Some(child);
        let url = self.url();
        let log_path = self.data.path().join("etcd.log");
        eventually(
            Duration::from_secs(20),
            &format!("etcd at {url} (log: {})", log_path.display()),
            || {
                let url = url.clone();
                async move { connect(&url).await.ok() }
            },
        )
        .await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
