//! A real Kubernetes API server (kube-apiserver built from the Go module proxy by
//! `cargo xtask k8s-build`) on its own etcd, on free loopback ports, with certificates made
//! for it (openssl), an admin kubeconfig, and Twill's CRDs installed. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::etcd::Etcd;
use crate::{eventually, free_port};

pub use twill_lab::kube::binaries;

/// `kubectl` of the built binaries.
pub fn kubectl_binary() -> PathBuf {
    binaries().join("kubectl")
}

/// A running API server; stopped (with its etcd) when dropped.
#[derive(Debug)]
pub struct ApiServer {
    child: Option<Child>,
    /// Its etcd.
    pub etcd: Etcd,
    dir: tempfile::TempDir,
    port: u16,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver, writes the admin kubeconfig, installs the CRDs of
    /// `crd_dir` (Twill's deploy/kubernetes/crds) and waits until they are established.
    pub async fn start(crd_dir: &Path) -> ApiServer {
        twill_lab::kube::apiserver_binary().unwrap_or_else(|err| panic!("{err:#}"));
        let etcd = Etcd::start().await;
        let dir = tempfile::Builder::new()
            .prefix("twill-kube-")
            .tempdir()
            .expect("a temporary directory");
        twill_lab::kube::make_certificates(dir.path(), &["127.0.0.1"]).expect("certificates");
        let mut server = ApiServer {
            child: None,
            etcd,
            dir,
            port: free_port(),
        };
        server.write_kubeconfig();
        server.launch().await;
        server.install_crds(crd_dir).await;
        server
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The API server's process ID, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// The directory with the certificates (ca.crt, …) and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_kubeconfig(&self) {
        twill_lab::kube::write_kubeconfig(
            &self.kubeconfig(),
            &self.url(),
            self.dir.path(),
            "admin",
        )
        .expect("a kubeconfig");
    }

    /// Applies Twill's namespace, accounts and roles (deploy/kubernetes/rbac.yaml) with
    /// kubectl.
    pub fn install_rbac(&self) {
        self.kubectl(&["apply", "-f", "-"], Some(twill_lab::kube::RBAC));
    }

    /// A kubeconfig that authenticates as Twill's ServiceAccount `account` (a client
    /// certificate the API server maps to `system:serviceaccount:twill-system:ACCOUNT`).
    pub fn account_kubeconfig(&self, account: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{account}.kubeconfig"));
        if !path.exists() {
            twill_lab::kube::account_certificate(self.dir.path(), account).expect("a certificate");
            twill_lab::kube::write_kubeconfig(&path, &self.url(), self.dir.path(), account)
                .expect("a kubeconfig");
        }
        path
    }

    /// Runs kubectl against this server; its output, panicking on failure.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (code, stdout, stderr) = self.kubectl_status(args, stdin);
        assert_eq!(code, 0, "kubectl {args:?}: {stderr}");
        stdout
    }

    /// Runs kubectl against this server: exit code, stdout, stderr.
    pub fn kubectl_status(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut child = Command::new(kubectl_binary())
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(text) = stdin {
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Stops the API server (SIGKILL), leaving etcd up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the API server again on the same port and etcd.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kube-apiserver.log"))
            .expect("a log file");
        let etcd = self.etcd.url().replace("etcd://", "http://");
        let child = Command::new(binaries().join("kube-apiserver"))
            .args(twill_lab::kube::apiserver_args(
                &etcd,
                "127.0.0.1",
                self.port,
                self.dir.path(),
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("kube-apiserver starts");
        self.child = Some(child);
        let (dir, kubeconfig) = (self.dir.path().to_path_buf(), self.kubeconfig());
        eventually(
            Duration::from_secs(60),
            &format!(
                "kube-apiserver at {} (log: {})",
                self.url(),
                dir.join("kube-apiserver.log").display()
            ),
            || {
                let kubeconfig = kubeconfig.clone();
                async move {
                    let output = Command::new(kubectl_binary())
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .args(["get", "--raw", "/readyz"])
                        .output()
                        .ok()?;
                    (output.status.success()).then_some(())
                }
            },
        )
        .await;
    }

    async fn install_crds(&self, crd_dir: &Path) {
        self.kubectl(
            &[
                "apply",
                "--server-side",
                "-f",
                &crd_dir.display().to_string(),
            ],
            None,
        );
        self.kubectl(
            &[
                "wait",
                "--for",
                "condition=established",
                "--timeout",
                "60s",
                "crd",
                "--all",
            ],
            None,
        );
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}
