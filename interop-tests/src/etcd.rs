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
    /// TLS with client certificates: the directory of the CA, etcd's and the client's files.
    tls: Option<std::path::PathBuf>,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Etcd {
        Etcd::start_with(false).await
    }

    /// Starts an etcd that serves clients over TLS only and demands a client certificate
    /// signed by its CA (`--client-cert-auth`), as a production etcd does.
    pub async fn start_tls() -> Etcd {
        Etcd::start_with(true).await
    }

    async fn start_with(tls: bool) -> Etcd {
        let data = tempfile::Builder::new()
            .prefix("twill-etcd-")
            .tempdir()
            .expect("a temporary directory");
        let tls = tls.then(|| {
            let dir = data.path().join("pki");
            twill_lab::kube::etcd_certificates(&dir, &["127.0.0.1"])
                .expect("openssl makes etcd's certificates");
            dir
        });
        let mut etcd = Etcd {
            child: None,
            data,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        etcd.launch().await;
        etcd
    }

    /// The datastore URL: `etcd://127.0.0.1:PORT`, or for a TLS etcd
    /// `etcds://127.0.0.1:PORT?ca=…&cert=…&key=…` with the client certificate.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("etcd://127.0.0.1:{}", self.client_port),
            Some(dir) => format!(
                "etcds://127.0.0.1:{}?ca={}&cert={}&key={}",
                self.client_port,
                dir.join("ca.crt").display(),
                dir.join("etcd-client.crt").display(),
                dir.join("etcd-client.key").display()
            ),
        }
    }

    /// The directory of a TLS etcd's certificates (`ca.crt`, `etcd-client.crt`, …).
    pub fn pki(&self) -> Option<&Path> {
        self.tls.as_deref()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
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
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let mut args =
            twill_lab::kube::etcd_args(&self.data.path().join("member-data"), &client, &peer);
        if let Some(dir) = &self.tls {
            args.extend(twill_lab::kube::etcd_tls_args(dir));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("etcd.log"))
            .expect("a log file in the data directory");
        let child = Command::new(etcd_binary())
            .args(args)
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
