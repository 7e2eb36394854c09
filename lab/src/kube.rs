//! A Kubernetes control plane for the lab (`lab up --datastore kubernetes`) and for tests:
//! etcd and a real kube-apiserver (built from the Go module proxy by `cargo xtask k8s-build`),
//! certificates made with openssl, kubeconfigs, and Twill's CRDs installed.
//!
//! In a lab, etcd and the API server run inside the underlay namespace: the API server listens
//! on the underlay's router address ([`crate::cluster::UNDERLAY_GATEWAY`], port 6443), where the
//! nodes reach it over the underlay as real nodes reach theirs, and a relay makes it reachable
//! on the machine's loopback for `twillctl` and `kubectl` (the machine's network is not
//! changed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;

/// The API server's port.
pub const API_PORT: u16 = 6443;
/// The Service range the API server is given (its own Service takes the first address).
pub const SERVICE_RANGE: &str = "10.96.0.0/16";
/// The `kubernetes` Service's address.
pub const SERVICE_ADDRESS: &str = "10.96.0.1";

macro_rules! crds {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../deploy/kubernetes/crds/", $name)))),*]
    };
}

/// Twill's CRD manifests (deploy/kubernetes/crds, generated from the resource model by
/// `cargo xtask crds`): file name, YAML.
pub const CRDS: &[(&str, &str)] = crds!(
    "bgpconfigurations.projectcalico.org.yaml",
    "bgpfilters.projectcalico.org.yaml",
    "bgppeers.projectcalico.org.yaml",
    "blockaffinities.projectcalico.org.yaml",
    "felixconfigurations.projectcalico.org.yaml",
    "globalnetworkpolicies.projectcalico.org.yaml",
    "globalnetworksets.projectcalico.org.yaml",
    "hostendpoints.projectcalico.org.yaml",
    "ipamblocks.projectcalico.org.yaml",
    "ipamconfigurations.projectcalico.org.yaml",
    "ipamhandles.projectcalico.org.yaml",
    "ippools.projectcalico.org.yaml",
    "ipreservations.projectcalico.org.yaml",
    "kubecontrollersconfigurations.projectcalico.org.yaml",
    "networkpolicies.projectcalico.org.yaml",
    "networksets.projectcalico.org.yaml",
    "tiers.projectcalico.org.yaml",
);

/// Twill's namespace, ServiceAccounts and roles (deploy/kubernetes/rbac.yaml).
pub const RBAC: &str = include_str!("../../deploy/kubernetes/rbac.yaml");
/// The namespace of Twill's accounts.
pub const NAMESPACE: &str = "twill-system";
/// twill-node's account.
pub const NODE_ACCOUNT: &str = "twill-node";
/// The CNI plugin's account.
pub const CNI_ACCOUNT: &str = "twill-cni-plugin";
/// twill-kube-controllers' account.
pub const CONTROLLERS_ACCOUNT: &str = "twill-kube-controllers";

/// Where `cargo xtask k8s-build` puts kube-apiserver and kubectl (TWILL_K8S_BIN overrides).
pub fn binaries() -> PathBuf {
    std::env::var_os("TWILL_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/twill-k8s/bin"))
}

/// Debian's etcd (TWILL_ETCD overrides).
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("TWILL_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// kube-apiserver, or an error that says how to build it.
pub fn apiserver_binary() -> anyhow::Result<PathBuf> {
    let binary = binaries().join("kube-apiserver");
    if !binary.is_file() {
        bail!(
            "{} is missing: build it with `cargo run -p xtask -- k8s-build` (make does), or \
             point TWILL_K8S_BIN at a directory holding kube-apiserver",
            binary.display()
        );
    }
    Ok(binary)
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("cannot run openssl (apt-get install openssl)")?;
    if !output.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A new P-256 private key `file` in `dir`.
fn ec_key(dir: &Path, file: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            file,
        ],
    )
}

/// A certificate `NAME.crt` and key `NAME.key` in `dir`, signed by its `ca.crt`.
fn signed(dir: &Path, name: &str, subject: &str, extensions: &str) -> anyhow::Result<()> {
    let (key, csr, ext, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.crt"),
    );
    std::fs::write(dir.join(&ext), extensions)?;
    ec_key(dir, &key)?;
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    )?;
    Ok(())
}

/// A certificate authority in `dir`: `ca.key` and the self-signed `ca.crt`.
fn make_ca(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    ec_key(dir, "ca.key")?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=twill-lab-ca",
            "-days",
            "30",
            "-out",
            "ca.crt",
        ],
    )
}

/// etcd's certificates in `dir`: a CA, etcd's server certificate `etcd.crt` for `server_ips`
/// and a client certificate `etcd-client.crt` for Twill.
pub fn etcd_certificates(dir: &Path, server_ips: &[&str]) -> anyhow::Result<()> {
    make_ca(dir)?;
    let names: Vec<String> = server_ips.iter().map(|ip| format!("IP:{ip}")).collect();
    signed(
        dir,
        "etcd",
        "/CN=etcd",
        &format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
            names.join(",")
        ),
    )?;
    client_certificate(dir, "etcd-client", "twill", &[])
}

/// A cluster's certificates in `dir`: a CA, the API server's (for `server_ips`, the Service
/// address and the `kubernetes` Service names), an admin client (group system:masters) and
/// the service-account key pair.
pub fn make_certificates(dir: &Path, server_ips: &[&str]) -> anyhow::Result<()> {
    make_ca(dir)?;
    let mut names: Vec<String> = server_ips.iter().map(|ip| format!("IP:{ip}")).collect();
    names.push(format!("IP:{SERVICE_ADDRESS}"));
    for dns in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        names.push(format!("DNS:{dns}"));
    }
    signed(
        dir,
        "apiserver",
        "/CN=kube-apiserver",
        &format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
            names.join(",")
        ),
    )?;
    client_certificate(dir, "admin", "twill-admin", &["system:masters"])?;
    // The API server's own identity towards kubelets (logs, exec, port-forward).
    client_certificate(
        dir,
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        &["system:masters"],
    )?;
    ec_key(dir, "sa.key")?;
    openssl(dir, &["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

/// A client certificate `NAME.crt` for user `user` in `groups`, signed by the CA in `dir`.
pub fn client_certificate(
    dir: &Path,
    name: &str,
    user: &str,
    groups: &[&str],
) -> anyhow::Result<()> {
    let subject: String = groups
        .iter()
        .map(|g| format!("/O={g}"))
        .chain(std::iter::once(format!("/CN={user}")))
        .collect();
    signed(dir, name, &subject, "extendedKeyUsage=clientAuth\n")
}

/// A serving certificate `NAME.crt` for `ip` (a kubelet's), signed by the CA in `dir`.
pub fn serving_certificate(dir: &Path, name: &str, ip: &str) -> anyhow::Result<()> {
    signed(
        dir,
        name,
        &format!("/CN={name}"),
        &format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"),
    )
}

/// A client certificate `ACCOUNT.crt` that the API server takes for Twill's ServiceAccount
/// `ACCOUNT` (RBAC matches an account by its user name, `system:serviceaccount:NS:NAME`).
pub fn account_certificate(dir: &Path, account: &str) -> anyhow::Result<()> {
    client_certificate(
        dir,
        account,
        &format!("system:serviceaccount:{NAMESPACE}:{account}"),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{NAMESPACE}"),
        ],
    )
}

/// Server-side applies every document of `text` (any kind the API server serves), in order.
pub async fn apply_documents(client: &kube::Client, text: &str) -> anyhow::Result<()> {
    use serde::Deserialize;
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value.clone())?;
        let types = object
            .types
            .clone()
            .context("a document without apiVersion and kind")?;
        let (group, version) = match types.api_version.split_once('/') {
            Some((group, version)) => (group.to_string(), version.to_string()),
            None => (String::new(), types.api_version.clone()),
        };
        let kind = kube::api::GroupVersionKind::gvk(&group, &version, &types.kind);
        let (resource, capabilities) = kube::discovery::pinned_kind(client, &kind).await?;
        let name = object
            .metadata
            .name
            .clone()
            .context("a document without a name")?;
        let api: Api<DynamicObject> = match (&capabilities.scope, &object.metadata.namespace) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            (kube::discovery::Scope::Namespaced, None) => {
                Api::default_namespaced_with(client.clone(), &resource)
            }
            (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("twill-lab").force(),
            &Patch::Apply(&value),
        )
        .await
        .with_context(|| format!("cannot apply {} {name}", types.kind))?;
    }
    Ok(())
}

/// Writes a kubeconfig at `path` for `server`, authenticating with the client certificate
/// `NAME.crt` of `dir` (whose `ca.crt` verifies the server).
pub fn write_kubeconfig(path: &Path, server: &str, dir: &Path, name: &str) -> anyhow::Result<()> {
    let file = |f: String| dir.join(f).display().to_string();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: twill\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    client-certificate: {}\n    \
         client-key: {}\ncontexts:\n- name: twill\n  context: {{cluster: twill, user: {name}}}\n\
         current-context: twill\n",
        file("ca.crt".into()),
        file(format!("{name}.crt")),
        file(format!("{name}.key")),
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// etcd's arguments: one member, its data in `data`, clients on `client` (`http://IP:PORT`),
/// peers on `peer`.
pub fn etcd_args(data: &Path, client: &str, peer: &str) -> Vec<String> {
    [
        "--name",
        "twill",
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        &format!("twill={peer}"),
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// etcd's arguments for clients over TLS that must show a certificate signed by the CA of
/// `dir` (see [`etcd_certificates`]); the client URL given to [`etcd_args`] is then `https://`.
pub fn etcd_tls_args(dir: &Path) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        "--cert-file".into(),
        file("etcd.crt"),
        "--key-file".into(),
        file("etcd.key"),
        "--client-cert-auth".into(),
        "--trusted-ca-file".into(),
        file("ca.crt"),
    ]
}

/// kube-apiserver's arguments: on `etcd` (`http://IP:PORT`), listening on `address:port`,
/// with the certificates of `dir` (see [`make_certificates`]); Node and RBAC authorization.
pub fn apiserver_args(etcd: &str, address: &str, port: u16, dir: &Path) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    [
        ("--etcd-servers", etcd.to_string()),
        ("--bind-address", address.to_string()),
        ("--advertise-address", address.to_string()),
        ("--secure-port", port.to_string()),
        ("--tls-cert-file", file("apiserver.crt")),
        ("--tls-private-key-file", file("apiserver.key")),
        ("--client-ca-file", file("ca.crt")),
        (
            "--service-account-issuer",
            "https://kubernetes.default.svc".to_string(),
        ),
        ("--service-account-key-file", file("sa.pub")),
        ("--service-account-signing-key-file", file("sa.key")),
        ("--service-cluster-ip-range", SERVICE_RANGE.to_string()),
        ("--authorization-mode", "Node,RBAC".to_string()),
        ("--storage-media-type", "application/json".to_string()),
        // Towards kubelets (the Kubernetes lab's): logs, exec, port-forward.
        (
            "--kubelet-client-certificate",
            file("apiserver-kubelet-client.crt"),
        ),
        ("--kubelet-client-key", file("apiserver-kubelet-client.key")),
        ("--kubelet-certificate-authority", file("ca.crt")),
        (
            "--kubelet-preferred-address-types",
            "InternalIP".to_string(),
        ),
        ("--v", "1".to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .chain(std::iter::once("--allow-privileged=true".to_string()))
    .collect()
}

/// kubectl (the one [`binaries`] holds) with `kubeconfig`, `stdin` on its input: its output,
/// or why it failed (its error output).
pub fn kubectl(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(binaries().join("kubectl"))
        .args(["--kubeconfig", kubeconfig])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run kubectl (make k8s builds it)")?;
    let mut input = child.stdin.take().context("kubectl's input")?;
    input.write_all(stdin.unwrap_or_default().as_bytes())?;
    drop(input);
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .with_context(|| format!("{} is not a usable kubeconfig", kubeconfig.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// Waits until the API server serves (its `default` Namespace exists: the bootstrap
/// controllers ran).
pub async fn wait_serving(kubeconfig: &Path, timeout: Duration, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client(kubeconfig).await {
            Ok(client) => match Api::<Namespace>::all(client).get("default").await {
                Ok(_) => return Ok(()),
                Err(err) => err.to_string(),
            },
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "the API server did not serve within {timeout:?}: {last} (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs Twill's CRDs (server-side apply) and waits until each is established.
pub async fn install_crds(client: &kube::Client, timeout: Duration) -> anyhow::Result<()> {
    let resource = ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let params = PatchParams::apply("twill-lab").force();
    let mut names = Vec::new();
    for (file, text) in CRDS {
        let value: serde_json::Value =
            serde_yaml::from_str(text).with_context(|| format!("{file} is not YAML"))?;
        let name = value["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{file} has no name"))?
            .to_string();
        api.patch(&name, &params, &Patch::Apply(&value))
            .await
            .with_context(|| format!("cannot install the CRD {name}"))?;
        names.push(name);
    }
    let deadline = Instant::now() + timeout;
    for name in names {
        loop {
            let crd = api.get(&name).await?;
            let established = crd.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!("the CRD {name} was not established within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// How a lab reaches its control plane.
#[derive(Debug, Clone)]
pub struct LabControlPlane {
    /// The admin kubeconfig for the machine (the API server through the loopback relay).
    pub kubeconfig: PathBuf,
    /// twill-node's kubeconfig (the API server on the underlay, as the twill-node account).
    pub node_kubeconfig: PathBuf,
    /// The CNI plugin's kubeconfig (as the twill-cni-plugin account).
    pub cni_kubeconfig: PathBuf,
    /// The relay's process ID.
    pub relay: u32,
    /// The underlay namespace and the API server's address there.
    underlay: String,
    address: std::net::SocketAddr,
}

/// Starts a lab's etcd and API server inside the underlay namespace `underlay` (where
/// `address` is the underlay router's), certificates and kubeconfigs in `dir`, and a relay
/// (`twillctl` at `twillctl`) from a free port on the machine's loopback. Returns once the
/// processes are started; [`LabControlPlane::ready`] waits for them.
pub fn start_in_lab(
    dir: &Path,
    underlay: &str,
    address: &str,
    twillctl: &Path,
) -> anyhow::Result<LabControlPlane> {
    use std::os::unix::process::CommandExt;
    let apiserver = apiserver_binary()?;
    std::fs::create_dir_all(dir)?;
    make_certificates(dir, &["127.0.0.1", address])?;
    for account in [NODE_ACCOUNT, CNI_ACCOUNT] {
        account_certificate(dir, account)?;
    }
    let log = |name: &str| -> anyhow::Result<std::fs::File> {
        Ok(std::fs::File::create(dir.join(format!("{name}.log")))?)
    };
    let spawn = |program: &Path, args: Vec<String>, name: &str| -> anyhow::Result<()> {
        let file = log(name)?;
        crate::netns::named::command(underlay, program.as_os_str())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(())
    };
    // etcd on the underlay namespace's own loopback.
    spawn(
        &etcd_binary(),
        etcd_args(
            &dir.join("etcd"),
            "http://127.0.0.1:2379",
            "http://127.0.0.1:2380",
        ),
        "etcd",
    )?;
    spawn(
        &apiserver,
        apiserver_args("http://127.0.0.1:2379", address, API_PORT, dir),
        "kube-apiserver",
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut relay = Command::new(twillctl)
        .args(["lab", "relay", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--connect-netns", &format!("/run/netns/{underlay}")])
        .args(["--connect", &format!("{address}:{API_PORT}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the API server's relay")?;
    let mut line = String::new();
    let stdout = relay.stdout.take().context("the relay's output")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    if line.trim() != "listening" {
        bail!("the API server's relay did not start");
    }
    let kubeconfig = dir.join("admin.kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &format!("https://127.0.0.1:{port}"),
        dir,
        "admin",
    )?;
    // The nodes' processes run as Twill's accounts, with the roles of rbac.yaml.
    let on_underlay = format!("https://{address}:{API_PORT}");
    let node_kubeconfig = dir.join("node.kubeconfig");
    write_kubeconfig(&node_kubeconfig, &on_underlay, dir, NODE_ACCOUNT)?;
    let cni_kubeconfig = dir.join("cni.kubeconfig");
    write_kubeconfig(&cni_kubeconfig, &on_underlay, dir, CNI_ACCOUNT)?;
    Ok(LabControlPlane {
        kubeconfig,
        node_kubeconfig,
        cni_kubeconfig,
        relay: relay.id(),
        underlay: underlay.to_string(),
        address: format!("{address}:{API_PORT}").parse()?,
    })
}

impl LabControlPlane {
    /// Starts kube-controller-manager and kube-scheduler beside the API server (the
    /// Kubernetes lab, whose kubelets need them), each with its own certificate.
    pub fn start_controllers(&self) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let dir = self
            .kubeconfig
            .parent()
            .context("the control plane's directory")?
            .to_path_buf();
        let server = format!("https://{}", self.address);
        client_certificate(
            &dir,
            "kube-controller-manager",
            "system:kube-controller-manager",
            &[],
        )?;
        client_certificate(&dir, "kube-scheduler", "system:kube-scheduler", &[])?;
        client_certificate(&dir, "kube-proxy", "system:kube-proxy", &[])?;
        let file = |name: &str| dir.join(name).display().to_string();
        for (name, port, extra) in [
            (
                "kube-controller-manager",
                10257,
                vec![
                    "--use-service-account-credentials".to_string(),
                    format!("--service-account-private-key-file={}", file("sa.key")),
                    format!("--root-ca-file={}", file("ca.crt")),
                    format!("--cluster-signing-cert-file={}", file("ca.crt")),
                    format!("--cluster-signing-key-file={}", file("ca.key")),
                    format!("--service-cluster-ip-range={SERVICE_RANGE}"),
                ],
            ),
            ("kube-scheduler", 10259, Vec::new()),
        ] {
            let kubeconfig = dir.join(format!("{name}.kubeconfig"));
            write_kubeconfig(&kubeconfig, &server, &dir, name)?;
            let binary = binaries().join(name);
            if !binary.exists() {
                bail!(
                    "{} is missing: TWILL_K8S_CMDS=\"{name}\" cargo xtask k8s-build (make k8s builds it)",
                    binary.display()
                );
            }
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let kubeconfig = kubeconfig.display().to_string();
            crate::netns::named::command(&self.underlay, binary.as_os_str())
                .args([
                    format!("--kubeconfig={kubeconfig}"),
                    format!("--authentication-kubeconfig={kubeconfig}"),
                    format!("--authorization-kubeconfig={kubeconfig}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={port}"),
                    "--leader-elect=false".into(),
                    "--v=1".into(),
                ])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .with_context(|| format!("cannot start {name}"))?;
        }
        Ok(())
    }

    /// Waits until the API server serves, then installs the CRDs and Twill's accounts and
    /// roles.
    pub async fn ready(&self) -> anyhow::Result<()> {
        self.serving().await?;
        let client = client(&self.kubeconfig).await?;
        install_crds(&client, Duration::from_secs(60)).await?;
        apply_documents(&client, RBAC).await
    }

    /// Waits until the API server serves (nothing of Twill's installed).
    pub async fn serving(&self) -> anyhow::Result<()> {
        let log = self
            .kubeconfig
            .parent()
            .unwrap_or(Path::new("."))
            .join("kube-apiserver.log");
        // First until it listens (looked at from the underlay, quietly: a client would log
        // every refused connection), then until it serves.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (netns, address) = (self.underlay.clone(), self.address);
            let path = PathBuf::from(format!("/run/netns/{netns}"));
            let listening = crate::agent::in_netns(Some(path), move || {
                Ok(
                    std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                        .is_ok(),
                )
            })?;
            if listening {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the API server did not listen on {} within 90 s (log: {})",
                    self.address,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_serving(&self.kubeconfig, Duration::from_secs(90), &log).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_manifest_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/crds");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        files.sort();
        let embedded: Vec<String> = CRDS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(embedded, files);
    }
}
