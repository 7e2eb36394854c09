//! Building, changing and removing a lab: node namespaces on an underlay bridge, pods wired
//! by the real `twill` plugin exactly as a container runtime calls it, a responder in each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ipnet::IpNet;
use serde_json::json;
use twill_shared::client::{Client, WriteMode};
use twill_shared::datastore::{connect, Datastore};
use twill_shared::resource::document::parse_documents;
use twill_shared::resource::kube::PodSpec;
use twill_shared::resource::{Key, Kind, Object, Resource};

use crate::agent::Target;
use crate::netns::named;
use crate::state::{self, NodeState, PodState, State, Tools};
use crate::topology::{Port, Topology};

mod agents;
mod datastore;
mod kubelets;
mod pods;
mod sync;
mod underlay;

use datastore::namespace_resource;
pub use kubelets::{build_images, hold_node_namespace, version_tag, KUBE_POD_POOL, MANIFEST};
use pods::topology_pod;
use underlay::twill_bgpd_default_as;
pub use underlay::{gateway, gateway_v6, node_v6, subnet_of};

/// The network name of the lab's CNI configuration (handles are `k8s-pod-network.<id>`).
pub const NETWORK: &str = "k8s-pod-network";
/// The lab's pod pool.
pub const POD_POOL: &str = "10.90.0.0/16";
/// The lab's IPv6 pod pool.
pub const POD_POOL_V6: &str = "fd00:90::/48";
/// The underlay router's address (on the underlay bridge).
pub const UNDERLAY_GATEWAY: &str = "198.18.0.1";
/// How long `up` and `apply` wait for every pod to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Where Debian's containernetworking-plugins put the reference plugins.
pub const REFERENCE_CNI_DIR: &str = "/usr/lib/cni";
/// Policy-only labs' pods: `10.91.N.0/24` on node N (host-local).
const POLICY_ONLY_POOL_PREFIX: &str = "10.91";

/// What `node_agent` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAction {
    /// SIGTERM, as a service manager stops it.
    Stop,
    /// SIGKILL, as a crash.
    Kill,
    /// Start it again.
    Start,
}

/// How to build a lab.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Namespaces, pods and ports.
    pub topology: Topology,
    /// How many nodes (at least 1).
    pub nodes: usize,
    /// Datastore URL (default: SQLite in the lab's directory).
    pub datastore: Option<String>,
    /// Give pods an IPv6 address too.
    pub dual_stack: bool,
    /// Pods wired by another CNI, twill-node in policy-only mode (see [`State::policy_only`]).
    pub policy_only: bool,
    /// A top-of-rack router in the underlay namespace, peering eBGP with every node.
    pub tor: Option<crate::tor::TorKind>,
    /// `none`, `vxlan`, `vxlan-cross-subnet` (see [`State::encap`]).
    pub encap: Option<String>,
    /// Underlay subnets (at least 1): `198.18.K.0/24`, joined by the underlay namespace as
    /// their router; nodes are spread over them.
    pub subnets: usize,
    /// A Kubernetes cluster: kubelets, containerd and kube-proxy per node, Twill installed
    /// from deploy/kubernetes/twill.yaml (see `kubelets.rs`).
    pub kubernetes: bool,
    /// The Kubernetes lab without Twill: the nodes stay NotReady (no network) until
    /// `kubectl apply -f deploy/kubernetes/twill.yaml`; no topology pods.
    pub without_twill: bool,
}

/// One lab on this machine.
#[derive(Debug, Clone)]
pub struct Lab {
    name: String,
    tools: Tools,
}

/// A lab name: lowercase letters, digits and '-', at most 24.
pub fn check_lab_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("{name:?} is not a lab name (lowercase letters, digits and '-', at most 24)");
    }
    Ok(())
}

impl Lab {
    /// The lab `name`, with its tools found.
    pub fn new(name: &str) -> anyhow::Result<Lab> {
        check_lab_name(name)?;
        Ok(Lab {
            name: name.to_string(),
            tools: Tools::find()?,
        })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prefix of every namespace this lab makes (the dot cannot be in a lab name, so one
    /// lab's prefix never matches another's namespaces).
    fn prefix(&self) -> String {
        format!("twl-{}.", self.name)
    }

    fn dir(&self) -> PathBuf {
        state::dir(&self.name)
    }

    /// The state as saved.
    pub fn state(&self) -> anyhow::Result<State> {
        state::load(&self.name)
    }

    /// Builds the lab; returns when every pod answers.
    pub async fn up(&self, options: UpOptions) -> anyhow::Result<State> {
        let leftovers = named::list(&self.prefix());
        if self.dir().join("state.json").exists() || !leftovers.is_empty() {
            bail!(
                "lab {:?} is already up (or was left behind); `twillctl lab down --name {}` first",
                self.name,
                self.name
            );
        }
        std::fs::create_dir_all(self.dir())
            .with_context(|| format!("cannot create {}", self.dir().display()))?;
        if options.without_twill && (!options.kubernetes || !options.topology.pods.is_empty()) {
            bail!("--without-twill is for --kubernetes labs without topology pods (pods need a network)");
        }
        if options.kubernetes
            && (options.policy_only
                || options.dual_stack
                || options.tor.is_some()
                || options.subnets > 1)
        {
            bail!("--kubernetes does not take --policy-only, --dual-stack, --tor or --subnets yet");
        }
        let kubernetes = match options.datastore.as_deref() {
            _ if options.kubernetes => true,
            Some("kubernetes") => true,
            Some(other) if other.starts_with("kubernetes:") => bail!(
                "the lab runs its own Kubernetes API server: use --datastore kubernetes \
                 (the lab's kubeconfig is then in `twillctl lab status -o json`)"
            ),
            _ => false,
        };
        if kubernetes && options.policy_only {
            bail!(
                "--policy-only is not available on the Kubernetes datastore yet: its pods' \
                 endpoints would come from a kubelet's pod status, which the lab does not run"
            );
        }
        let datastore = match (&options.datastore, kubernetes) {
            (_, true) => format!(
                "kubernetes:{}",
                self.kube_dir().join("admin.kubeconfig").display()
            ),
            (Some(url), false) => url.clone(),
            (None, false) => format!("sqlite:{}", self.dir().join("twill.db").display()),
        };
        let mut state = State {
            name: self.name.clone(),
            datastore,
            nodes: Vec::new(),
            pods: Vec::new(),
            ports: options.topology.ports.clone(),
            created: 0,
            relays: Vec::new(),
            policy_only: options.policy_only,
            tor: options.tor.map(|t| t.as_str().to_string()),
            encap: options.encap.clone().unwrap_or_else(|| "none".into()),
            kubeconfig: kubernetes.then(|| {
                self.kube_dir()
                    .join("admin.kubeconfig")
                    .display()
                    .to_string()
            }),
            kubelets: options.kubernetes,
        };
        let result = self.build(&mut state, &options).await;
        if let Err(err) = result {
            // TWILL_LAB_KEEP=1 leaves a failed lab up to look into (`lab down` removes it).
            if std::env::var_os("TWILL_LAB_KEEP").is_none() {
                let _ = self.down().await;
            }
            return Err(err);
        }
        Ok(state)
    }

    async fn build(&self, state: &mut State, options: &UpOptions) -> anyhow::Result<()> {
        let underlay = format!("{}underlay", self.prefix());
        let subnets = options.subnets.clamp(1, 8);
        self.make_underlay(&underlay, subnets, options.dual_stack)?;
        // The control plane starts while the nodes are made; it is waited for after.
        let control = match state.kubeconfig {
            Some(_) => {
                let control = crate::kube::start_in_lab(
                    &self.kube_dir(),
                    &underlay,
                    UNDERLAY_GATEWAY,
                    &self.tools.twillctl,
                )?;
                state.relays.push(control.relay);
                state::save(state)?;
                Some(control)
            }
            None => None,
        };
        for index in 1..=options.nodes.max(1) {
            state.nodes.push(self.add_node(
                &underlay,
                index,
                (index - 1) % subnets,
                options.dual_stack,
            )?);
        }
        if state.kubelets {
            let control = control.context("the Kubernetes lab's control plane")?;
            state::save(state)?;
            self.build_kubelets(state, &control, options).await?;
            state::save(state)?;
            if options.without_twill {
                return Ok(());
            }
            return self.add_topology(state, options).await;
        }
        self.start_relays(state)?;
        if let Some(control) = &control {
            control.ready().await?;
        }
        let store = self.store(state).await?;
        self.write_cluster_resources(&store, state, options).await?;
        for node in &state.nodes {
            self.write_cni_config(state, node, options.dual_stack)?;
            self.start_agent(state, node)?;
        }
        if let Some(kind) = options.tor {
            crate::tor::start(
                kind,
                &underlay,
                &self.dir().join("tor"),
                &state.nodes,
                twill_bgpd_default_as(),
            )?;
        }
        state::save(state)?;
        self.add_topology(state, options).await
    }

    /// The topology's namespaces and pods; returns when every pod answers and every node is
    /// in sync.
    async fn add_topology(&self, state: &mut State, options: &UpOptions) -> anyhow::Result<()> {
        let store = self.store(state).await?;
        let namespaces: Vec<Resource> = options
            .topology
            .namespaces
            .iter()
            .map(|(name, labels)| namespace_resource(name, labels))
            .collect();
        Client::new(store.clone())
            .write_all(&namespaces, WriteMode::Apply)
            .await?;
        if state.kubelets {
            let pods = options
                .topology
                .pods
                .iter()
                .map(|pod| (topology_pod(pod, &options.topology.ports), pod.node.clone()))
                .collect();
            self.add_kube_pods(state, pods).await?;
        } else {
            for pod in &options.topology.pods {
                let resource = topology_pod(pod, &options.topology.ports);
                self.add_pod(state, &store, resource, pod.node.clone())
                    .await?;
            }
        }
        self.write_hosts(state)?;
        self.wait_until_answering(state, None).await?;
        self.sync(ANSWER_TIMEOUT).await
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir().join(node)
    }

    /// Removes everything the lab made: processes, namespaces (and with them every link and
    /// route), /etc/netns entries, the state directory. Works after a lab whose processes
    /// were killed, and on a lab that is not up (nothing to do). Returns what was removed.
    pub async fn down(&self) -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        if let Ok(state) = self.state() {
            // Release the pods' addresses where the datastore outlives the lab.
            let lab_owned = state.kubeconfig.is_some()
                || state
                    .datastore
                    .starts_with(&format!("sqlite:{}", self.dir().display()));
            if !lab_owned {
                for pod in &state.pods {
                    named::kill_all(&pod.netns);
                    if let Some(node) = state.node(&pod.node) {
                        if let Err(err) = self.call_cni("DEL", node, pod, state.policy_only).await {
                            tracing::warn!(pod = %pod.id(), error = %err, "CNI DEL failed during lab down");
                        }
                    }
                }
            }
        }
        self.stop_relays();
        let namespaces = named::list(&self.prefix());
        for netns in &namespaces {
            named::kill_all(netns);
        }
        self.remove_kubelets();
        for netns in namespaces {
            named::delete(&netns).map_err(anyhow::Error::msg)?;
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&netns));
            removed.push(format!("namespace {netns}"));
        }
        if let Ok(entries) = std::fs::read_dir("/etc/netns") {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&self.prefix())
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        if self.dir().exists() {
            std::fs::remove_dir_all(self.dir())
                .with_context(|| format!("cannot remove {}", self.dir().display()))?;
            removed.push(format!("directory {}", self.dir().display()));
        }
        Ok(removed)
    }

    /// The lab's tools.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }
}

fn document_errors(errors: twill_shared::resource::document::DocumentErrors) -> anyhow::Error {
    anyhow::anyhow!("{errors}")
}
