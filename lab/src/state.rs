//! What a lab remembers between commands, in `/run/twill/lab/NAME/state.json`, and where its
//! tools are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::topology::Port;

/// Where labs keep their state.
pub const STATE_ROOT: &str = "/run/twill/lab";

/// A node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The node's name (`node-1`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address.
    pub address: String,
}

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// The container ID the plugin was called with.
    pub container_id: String,
    /// Its addresses, as the plugin returned them.
    pub ips: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What the responder serves (empty when the pod runs its own command).
    pub serves: Vec<Port>,
    /// The pod's own command, when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

impl PodState {
    /// `NS/POD`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The whole lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The lab's name.
    pub name: String,
    /// Its datastore URL.
    pub datastore: String,
    /// Its nodes.
    pub nodes: Vec<NodeState>,
    /// Its pods.
    pub pods: Vec<PodState>,
    /// The topology's ports (every topology pod serves them).
    pub ports: Vec<Port>,
    /// Pods created so far (for container IDs and spreading over nodes).
    pub created: u64,
    /// Relays that let node namespaces reach a datastore on the machine's loopback.
    #[serde(default)]
    pub relays: Vec<u32>,
    /// Policy-only: pods wired by another CNI (the reference `ptp` plugin with `host-local`
    /// addresses), their WorkloadEndpoints written as an orchestrator would, and twill-node
    /// in `--mode policy-only` with FelixConfiguration's interfacePrefix `veth`.
    #[serde(default)]
    pub policy_only: bool,
    /// The top-of-rack router the underlay namespace runs (`bird`, `frr`, `gobgp`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor: Option<String>,
    /// How pods reach other nodes: `none` (BGP-routed), `vxlan`, `vxlan-cross-subnet`,
    /// `ipip`, `ipip-cross-subnet`.
    #[serde(default = "no_encap")]
    pub encap: String,
    /// On the Kubernetes datastore: the admin kubeconfig of the lab's own API server (reached
    /// through a relay on the machine's loopback), for `twillctl` and `kubectl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// The Kubernetes lab: kubelets, containerd and kube-proxy per node, Twill installed from
    /// its manifest, pods as Kubernetes Pods.
    #[serde(default)]
    pub kubelets: bool,
}

fn no_encap() -> String {
    "none".into()
}

impl State {
    /// The pod `NS/POD`.
    pub fn pod(&self, id: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.id() == id)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// The lab's directory.
pub fn dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// Reads the state of lab `name`.
pub fn load(name: &str) -> anyhow::Result<State> {
    let path = dir(name).join("state.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "lab {name:?} is not up (no {}); start it with `twillctl lab up --name {name}`",
                path.display()
            )
        }
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not a lab state", path.display()))
}

/// Writes the state (atomically: a new file renamed over the old).
pub fn save(state: &State) -> anyhow::Result<()> {
    let path = dir(&state.name).join("state.json");
    let temporary = path.with_extension("json.new");
    std::fs::write(&temporary, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The programs the lab runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// The `twill` CNI plugin.
    pub twill: PathBuf,
    /// `twillctl` (the responder and the probe agent).
    pub twillctl: PathBuf,
    /// `twill-node`, the agent each node runs.
    pub twill_node: PathBuf,
}

impl Tools {
    /// Finds the tools beside the running executable (or its parent, for test executables in
    /// `deps/`), else on PATH.
    pub fn find() -> anyhow::Result<Tools> {
        Ok(Tools {
            twill: find_program("twill")?,
            twillctl: find_program("twillctl")?,
            twill_node: find_program("twill-node")?,
        })
    }

    /// The directory of the CNI plugins (CNI_PATH).
    pub fn cni_dir(&self) -> PathBuf {
        self.twill
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// A program beside the running executable, or on PATH.
pub fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        if dir.ends_with("deps") {
            dirs.extend(dir.parent().map(Path::to_path_buf));
        }
    }
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "cannot find {name} beside {} or on PATH (build it with `cargo build --workspace`)",
                exe.display()
            )
        })
}
