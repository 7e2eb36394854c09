//! `twill-install-cni`: the init step of twill-node's DaemonSet. It puts Twill's CNI plugins
//! and their network configuration on the node, through the host paths the DaemonSet mounts:
//!
//! 1. the plugins (`twill`, `twill-ipam`, and `portmap` when the image has it) into the
//!    host's CNI bin dir, each through a temporary file and a rename, so a runtime calling a
//!    plugin meanwhile runs the old binary or the new one, never half of one;
//! 2. a kubeconfig for the plugin's own ServiceAccount (`twill-cni-plugin`, a token from the
//!    TokenRequest API; twill-node renews it while it runs);
//! 3. last, the conflist (`datastore: kubernetes`): the runtime reports the network ready once a
//!    conflist exists, and by then everything it names is in place.
//!
//! Settings come from the environment (the manifest's ConfigMap): `CNI_BIN_DIR`
//! (`/host/opt/cni/bin`), `CNI_NET_DIR` (`/host/etc/cni/net.d`), `HOST_CNI_NET_DIR` (where
//! that directory is on the host: `/etc/cni/net.d`), `CNI_CONF_NAME` (`10-twill.conflist`),
//! `SOURCE_DIR` (`/usr/bin`), `KUBERNETES_NODE_NAME`, `CNI_MTU` (0: twill-node's detected MTU),
//! `CNI_LOG_LEVEL` (`info`), `CNI_LOG_FILE` (`/var/log/twill/cni/cni.log`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use twill_shared::datastore::cni_credentials::{
    write_cni_kubeconfig, write_private, IN_CLUSTER_CA,
};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Copies `source` to `dir/name` through `dir/.name.partial` and a rename.
fn install(source: &Path, dir: &Path, name: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::copy(source, &partial)
        .with_context(|| format!("cannot copy {} to {}", source.display(), partial.display()))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, dir.join(name))
        .with_context(|| format!("cannot install {name} into {}", dir.display()))?;
    Ok(())
}

/// The conflist: the twill plugin (its IPAM twill-ipam) and portmap for hostPort.
fn conflist(
    node: &str,
    kubeconfig: &Path,
    mtu: u32,
    log_level: &str,
    log_file: &str,
    portmap: bool,
) -> serde_json::Value {
    let mut twill = json!({
        "type": "twill",
        "datastore": "kubernetes",
        "kubeconfig": kubeconfig,
        "nodename": node,
        "log_level": log_level,
        "log_file_path": log_file,
        "ipam": {"type": "twill-ipam"},
    });
    if mtu > 0 {
        twill["mtu"] = json!(mtu);
    }
    let mut plugins = vec![twill];
    if portmap {
        plugins
            .push(json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}));
    }
    json!({"name": "k8s-pod-network", "cniVersion": "1.0.0", "plugins": plugins})
}

async fn run() -> anyhow::Result<()> {
    let bin_dir = PathBuf::from(setting("CNI_BIN_DIR", "/host/opt/cni/bin"));
    let net_dir = PathBuf::from(setting("CNI_NET_DIR", "/host/etc/cni/net.d"));
    let host_net_dir = PathBuf::from(setting("HOST_CNI_NET_DIR", "/etc/cni/net.d"));
    let conf_name = setting("CNI_CONF_NAME", "10-twill.conflist");
    let source = PathBuf::from(setting("SOURCE_DIR", "/usr/bin"));
    let node = setting("KUBERNETES_NODE_NAME", "");
    if node.is_empty() {
        bail!("KUBERNETES_NODE_NAME is not set (the manifest sets it from spec.nodeName)");
    }
    if setting("TWILL_MODE", "full") == "policy-only" {
        println!(
            "policy-only: another CNI plugin wires pods; nothing to install (twill-node enforces \
             policy on its interfaces)"
        );
        return Ok(());
    }
    let mtu: u32 = setting("CNI_MTU", "0")
        .parse()
        .context("CNI_MTU: not a number")?;
    std::fs::create_dir_all(&bin_dir)
        .with_context(|| format!("cannot create {}", bin_dir.display()))?;
    let mut portmap = false;
    // loopback: the runtime's own call for every pod's `lo`; portmap: hostPort.
    for plugin in ["twill", "twill-ipam", "portmap", "loopback"] {
        let from = source.join(plugin);
        if !from.exists() {
            if plugin == "portmap" || plugin == "loopback" {
                continue;
            }
            bail!("{} is missing from the image", from.display());
        }
        install(&from, &bin_dir, plugin)?;
        portmap |= plugin == "portmap";
        println!("installed {}", bin_dir.join(plugin).display());
    }
    let config = kube::Config::infer()
        .await
        .context("no in-cluster service account (install-cni runs in twill-node's pod)")?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)?;
    let kubeconfig = net_dir.join("twill-kubeconfig");
    write_cni_kubeconfig(&client, &server, IN_CLUSTER_CA.as_ref(), &kubeconfig).await?;
    println!("wrote {} (server {server})", kubeconfig.display());
    let list = conflist(
        &node,
        &host_net_dir.join("twill-kubeconfig"),
        mtu,
        &setting("CNI_LOG_LEVEL", "info"),
        &setting("CNI_LOG_FILE", "/var/log/twill/cni/cni.log"),
        portmap,
    );
    let path = net_dir.join(&conf_name);
    // A runtime uses the first configuration by name: another network's that sorts first
    // would win over Twill's, silently.
    for entry in std::fs::read_dir(&net_dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let config =
            name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json");
        if config && name < conf_name && !name.starts_with('.') {
            eprintln!(
                "warning: {} sorts before {conf_name}: the container runtime uses it, not Twill's \
                 (remove it, or set CNI_CONF_NAME to sort first)",
                entry.path().display()
            );
        }
    }
    write_private(&path, &serde_json::to_vec_pretty(&list)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("twill-install-cni: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_names_what_the_plugin_reads() {
        let list = conflist(
            "node-1",
            Path::new("/etc/cni/net.d/twill-kubeconfig"),
            0,
            "info",
            "/var/log/twill/cni/cni.log",
            true,
        );
        assert_eq!(list["cniVersion"], "1.0.0");
        let twill = &list["plugins"][0];
        assert_eq!(twill["type"], "twill");
        assert_eq!(twill["datastore"], "kubernetes");
        assert_eq!(twill["kubeconfig"], "/etc/cni/net.d/twill-kubeconfig");
        assert_eq!(twill["nodename"], "node-1");
        assert!(twill.get("mtu").is_none(), "0 leaves the MTU to twill-node");
        assert_eq!(list["plugins"][1]["type"], "portmap");
        let without = conflist("n", Path::new("/k"), 1450, "debug", "/l", false);
        assert_eq!(without["plugins"][0]["mtu"], 1450);
        assert_eq!(without["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn install_replaces_a_plugin_in_one_rename() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, b"new").unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("twill"), b"old").unwrap();
        install(&source, &bin, "twill").unwrap();
        assert_eq!(std::fs::read(bin.join("twill")).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&bin)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("twill")],
            "no partial file left"
        );
    }
}
