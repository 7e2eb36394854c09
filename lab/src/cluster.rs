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

    async fn store(&self, state: &State) -> anyhow::Result<Arc<dyn Datastore>> {
        connect(&state.datastore)
            .await
            .with_context(|| format!("cannot open the lab's datastore {}", state.datastore))
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
        let kubernetes = match options.datastore.as_deref() {
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
        };
        let result = self.build(&mut state, &options).await;
        if let Err(err) = result {
            let _ = self.down().await;
            return Err(err);
        }
        Ok(state)
    }

    async fn build(&self, state: &mut State, options: &UpOptions) -> anyhow::Result<()> {
        let underlay = format!("{}underlay", self.prefix());
        named::add(&underlay).map_err(anyhow::Error::msg)?;
        // The underlay's router: every node's default gateway, the rack's router, and the
        // router between the subnets.
        let subnets = options.subnets.clamp(1, 8);
        for subnet in 0..subnets {
            let bridge = format!("br{subnet}");
            named::ip(&underlay, &["link", "add", &bridge, "type", "bridge"])
                .map_err(anyhow::Error::msg)?;
            named::ip(&underlay, &["link", "set", &bridge, "up"]).map_err(anyhow::Error::msg)?;
            named::ip(
                &underlay,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", gateway(subnet)),
                    "dev",
                    &bridge,
                ],
            )
            .map_err(anyhow::Error::msg)?;
            if options.dual_stack {
                let address = format!("{}/64", gateway_v6(subnet));
                named::ip(
                    &underlay,
                    &["addr", "add", &address, "dev", &bridge, "nodad"],
                )
                .map_err(anyhow::Error::msg)?;
            }
        }
        named::exec(&underlay, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .map_err(anyhow::Error::msg)?;
        if options.dual_stack {
            named::exec(
                &underlay,
                "sysctl",
                &["-qw", "net.ipv6.conf.all.forwarding=1"],
            )
            .map_err(anyhow::Error::msg)?;
        }
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
        let namespaces: Vec<Resource> = options
            .topology
            .namespaces
            .iter()
            .map(|(name, labels)| namespace_resource(name, labels))
            .collect();
        Client::new(store.clone())
            .write_all(&namespaces, WriteMode::Apply)
            .await?;
        for pod in &options.topology.pods {
            let resource = topology_pod(pod, &options.topology.ports);
            self.add_pod(state, &store, resource, pod.node.clone())
                .await?;
        }
        self.write_hosts(state)?;
        self.wait_until_answering(state, None).await?;
        self.sync(ANSWER_TIMEOUT).await
    }

    /// A datastore on the machine's loopback (etcd://127.0.0.1:PORT) is out of the node
    /// namespaces' reach: a relay per node and endpoint listens on the same address inside
    /// the node's namespace and connects to it here. The machine's network is not changed.
    fn start_relays(&self, state: &mut State) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let twill_shared::datastore::DatastoreUrl::Etcd { endpoints, .. } =
            twill_shared::datastore::DatastoreUrl::parse(&state.datastore)?
        else {
            return Ok(());
        };
        for endpoint in endpoints {
            let host_port = endpoint
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .replace("localhost", "127.0.0.1");
            let Ok(address) = host_port.parse::<std::net::SocketAddr>() else {
                continue;
            };
            if !address.ip().is_loopback() {
                continue;
            }
            for node in &state.nodes {
                let mut child = std::process::Command::new(&self.tools.twillctl)
                    .args([
                        "lab",
                        "relay",
                        "--netns",
                        &format!("/run/netns/{}", node.netns),
                    ])
                    .args([
                        "--listen",
                        &address.to_string(),
                        "--connect",
                        &address.to_string(),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .context("cannot start the datastore relay")?;
                state.relays.push(child.id());
                let mut line = String::new();
                let stdout = child.stdout.take().context("the relay's output")?;
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
                if line.trim() != "listening" {
                    bail!("the datastore relay for {} did not start", node.name);
                }
            }
        }
        Ok(())
    }

    /// Starts twill-node in a node's namespace, detached, logging into the lab directory.
    fn start_agent(&self, state: &State, node: &NodeState) -> anyhow::Result<()> {
        let logs = self.dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = std::fs::File::create(logs.join(format!("{}.twill-node.log", node.name)))?;
        let status = self.node_dir(&node.name).join("status.json");
        let mut command = named::command(&node.netns, self.tools.twill_node.as_os_str());
        command
            .args([
                "--datastore",
                &self.node_datastore(state),
                "--node-name",
                &node.name,
            ])
            .args([
                "--mode",
                if state.policy_only {
                    "policy-only"
                } else {
                    "full"
                },
            ])
            .args([
                "--health-listen",
                "127.0.0.1:9099",
                "--refresh-interval",
                "2",
            ])
            .arg("--status-file")
            .arg(&status)
            .arg("--run-dir")
            .arg(self.node_dir(&node.name))
            .arg("--mtu-file")
            .arg(self.node_dir(&node.name).join("mtu"))
            .arg("--secrets-dir")
            .arg(self.dir().join("secrets"))
            // A caller's TWILL_LOG (debug, to look into a lab) reaches the agents.
            .env(
                "TWILL_LOG",
                std::env::var("TWILL_LOG").unwrap_or_else(|_| "info".into()),
            );
        use std::os::unix::process::CommandExt;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start twill-node on {}", node.name))?;
        Ok(())
    }

    /// Stops (SIGTERM), kills (SIGKILL) or starts a node's twill-node, for fault tests.
    pub fn node_agent(&self, node: &str, action: AgentAction) -> anyhow::Result<()> {
        let state = self.state()?;
        let record = state
            .node(node)
            .with_context(|| format!("no node {node:?} in lab {:?}", self.name))?;
        if action == AgentAction::Start {
            if !self.agent_pids(record).is_empty() {
                bail!("twill-node already runs on {node}");
            }
            return self.start_agent(&state, record);
        }
        let signal = if action == AgentAction::Kill {
            "-KILL"
        } else {
            "-TERM"
        };
        let pids = self.agent_pids(record);
        if pids.is_empty() {
            bail!("twill-node does not run on {node}");
        }
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
        for _ in 0..250 {
            if self.agent_pids(record).is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("twill-node on {node} did not stop")
    }

    fn agent_pids(&self, node: &NodeState) -> Vec<i32> {
        named::pids(&node.netns)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    cmdline
                        .split(|b| *b == 0)
                        .next()
                        .is_some_and(|argv0| argv0.ends_with(b"twill-node"))
                })
            })
            .collect()
    }

    /// The status twill-node of `node` last wrote.
    pub fn node_status(&self, node: &str) -> Option<serde_json::Value> {
        let text = std::fs::read(self.node_dir(node).join("status.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Returns once every node's dataplane reflects the datastore's current revision.
    pub async fn sync(&self, timeout: Duration) -> anyhow::Result<()> {
        let state = self.state()?;
        let store = self.store(&state).await?;
        let deadline = Instant::now() + timeout;
        if state.kubeconfig.is_some() {
            self.wait_views(&state, &store, deadline, timeout).await?;
        } else {
            self.wait_revisions(&state, &store, deadline, timeout)
                .await?;
        }
        if !state.policy_only {
            self.wait_routed(&state, &store, deadline).await?;
        }
        Ok(())
    }

    /// Every node has applied the datastore's current revision (SQLite and etcd: one
    /// revision counts every change, and a node's watch sees them in order).
    async fn wait_revisions(
        &self,
        state: &State,
        store: &Arc<dyn Datastore>,
        deadline: Instant,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let target = store.list(Some(Kind::Tier), None).await?.revision;
        for node in &state.nodes {
            loop {
                let status = self.node_status(&node.name);
                let applied = status
                    .as_ref()
                    .and_then(|s| s["applied_revision"].as_i64())
                    .unwrap_or(0);
                if applied >= target {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} has applied revision {applied}, not yet {target}, after {timeout:?}{}",
                        node.name,
                        self.agent_trouble(&node.name, status.as_ref())
                    );
                }
                // A status file read: cheap enough to look often, so `sync` (and `apply`,
                // which ends with it) returns within a few ms of the nodes.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Every node has applied a view equal to what the datastore holds now (the Kubernetes
    /// API: its resourceVersions also count writes to kinds nobody watches, and each kind's
    /// watch advances by itself, so a revision cannot say a node is caught up; the objects
    /// and their revisions can).
    async fn wait_views(
        &self,
        state: &State,
        store: &Arc<dyn Datastore>,
        deadline: Instant,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        loop {
            let listing = store.list(None, None).await?;
            let target = twill_shared::syncer::ViewDigest::of(
                listing.items.iter().map(|item| (&item.key, item.revision)),
            )
            .summary();
            // Look at the nodes often; list again now and then (something may have changed
            // since).
            let relist = Instant::now() + Duration::from_millis(250);
            loop {
                let behind: Vec<(&NodeState, Option<serde_json::Value>)> = state
                    .nodes
                    .iter()
                    .map(|node| (node, self.node_status(&node.name)))
                    .filter(|(_, status)| {
                        status.as_ref().and_then(|s| s["applied_view"].as_str())
                            != Some(target.as_str())
                    })
                    .collect();
                let Some((node, status)) = behind.first() else {
                    return Ok(());
                };
                if Instant::now() > deadline {
                    let applied = status
                        .as_ref()
                        .and_then(|s| s["applied_view"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    bail!(
                        "node {} has applied the view {applied:?}, not the datastore's {target:?} (objects:digest), after {timeout:?}{}",
                        node.name,
                        self.agent_trouble(&node.name, status.as_ref())
                    );
                }
                if Instant::now() > relist {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// The last error a node's agent reported, and where its log is.
    fn agent_trouble(&self, node: &str, status: Option<&serde_json::Value>) -> String {
        let error = status
            .and_then(|s| {
                s["last_error"]
                    .as_str()
                    .map(|e| format!("; last error: {e}"))
            })
            .unwrap_or_default();
        format!(
            "{error} (log: {})",
            self.dir()
                .join("logs")
                .join(format!("{node}.twill-node.log"))
                .display()
        )
    }

    /// Full labs: every node's BGP sessions are Established and its kernel has a route to
    /// every other node's blocks and to the addresses other nodes borrowed from a block.
    async fn wait_routed(
        &self,
        state: &State,
        store: &Arc<dyn Datastore>,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let affinities = store.list(Some(Kind::BlockAffinity), None).await?;
        let mut blocks: Vec<(String, String)> = Vec::new();
        for stored in affinities.items {
            if let Ok(Resource::BlockAffinity(affinity)) = twill_shared::client::decode(stored) {
                if let (Some(node), Some(cidr)) = (affinity.spec.node, affinity.spec.cidr) {
                    blocks.push((node, cidr.0.to_string()));
                }
            }
        }
        // Addresses a pod's node borrowed from another node's block: a host route each.
        let parsed: Vec<(String, IpNet)> = blocks
            .iter()
            .filter_map(|(node, block)| Some((node.clone(), block.parse().ok()?)))
            .collect();
        let endpoints = store.list(Some(Kind::WorkloadEndpoint), None).await?;
        for stored in endpoints.items {
            if let Ok(Resource::WorkloadEndpoint(endpoint)) = twill_shared::client::decode(stored) {
                let Some(node) = endpoint.spec.node else {
                    continue;
                };
                for net in endpoint.spec.ip_networks.into_iter().flatten() {
                    let net = net.0.trunc();
                    let holders: Vec<&String> = parsed
                        .iter()
                        .filter(|(_, block)| block.contains(&net))
                        .map(|(owner, _)| owner)
                        .collect();
                    if !holders.is_empty() && !holders.contains(&&node) {
                        blocks.push((node.clone(), net.to_string()));
                    }
                }
            }
        }
        let expect_peers = state.nodes.len() > 1 || state.tor.is_some();
        for node in &state.nodes {
            loop {
                let peers = self.bgp_peers(&node.name);
                // IP-in-IP pools on a kernel without ipip: nothing can route them; the node
                // says so in its status, and that is what `sync` reports too.
                let no_ipip = self
                    .node_status(&node.name)
                    .is_some_and(|s| s["ipip_unavailable"] == true);
                let sessions_up = !expect_peers
                    || (!peers.is_empty() && peers.iter().all(|p| p["state"] == "Established"));
                let missing: Vec<&String> = blocks
                    .iter()
                    .filter(|(owner, _)| *owner != node.name)
                    .map(|(_, block)| block)
                    .filter(|block| {
                        let family = if block.contains(':') { "-6" } else { "-4" };
                        named::ip(&node.netns, &[family, "route", "show", "exact", block])
                            .map_or(true, |o| o.stdout.is_empty())
                    })
                    .collect();
                if sessions_up && (missing.is_empty() || no_ipip) {
                    if no_ipip && !missing.is_empty() {
                        tracing::warn!(node = %node.name, "IP-in-IP pools, but the kernel has no ipip module: other nodes' blocks are not routed");
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} is not routed yet: sessions {}, no route to {:?} (log: {})",
                        node.name,
                        serde_json::Value::Array(peers),
                        missing,
                        self.dir()
                            .join("logs")
                            .join(format!("{}.twill-node.log", node.name))
                            .display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// A node's BGP sessions, as `twillctl bgp peers -o json` prints them (empty when its
    /// speaker does not run).
    pub fn bgp_peers(&self, node: &str) -> Vec<serde_json::Value> {
        use std::io::{Read, Write};
        let socket = self.node_dir(node).join("bgpd.sock");
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) else {
            return Vec::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream.write_all(b"peers\n").is_err() {
            return Vec::new();
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        serde_json::from_str(&answer).unwrap_or_default()
    }

    /// The top-of-rack router's RIB, as its own command line prints it.
    pub fn tor_routes(&self) -> anyhow::Result<String> {
        let state = self.state()?;
        let Some(kind) = state.tor.as_deref() else {
            bail!(
                "lab {:?} has no top-of-rack router (lab up --tor bird|frr|gobgp)",
                self.name
            );
        };
        let kind: crate::tor::TorKind = kind.parse().map_err(anyhow::Error::msg)?;
        crate::tor::routes(
            kind,
            &format!("{}underlay", self.prefix()),
            &self.dir().join("tor"),
        )
    }

    fn add_node(
        &self,
        underlay: &str,
        index: usize,
        subnet: usize,
        dual_stack: bool,
    ) -> anyhow::Result<NodeState> {
        let name = format!("node-{index}");
        let netns = format!("{}{name}", self.prefix());
        let address = format!("198.18.{subnet}.{}", 10 + index);
        let bridge = format!("br{subnet}");
        let port = format!("n{index}");
        let step = |result: Result<std::process::Output, String>| {
            result.map(|_| ()).map_err(anyhow::Error::msg)
        };
        step(named::add(&netns).map(|()| empty_output()))?;
        step(named::ip(
            &netns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", underlay,
            ],
        ))?;
        step(named::ip(
            underlay,
            &["link", "set", &port, "master", &bridge, "up"],
        ))?;
        step(named::ip(
            &netns,
            &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
        ))?;
        step(named::ip(&netns, &["link", "set", "eth0", "up"]))?;
        // A default route, as a real node has: proxy ARP answers for 169.254.1.1 only when
        // the node can route it out another interface.
        step(named::ip(
            &netns,
            &["route", "add", "default", "via", &gateway(subnet)],
        ))?;
        if dual_stack {
            let v6 = format!("{}/64", node_v6(&address));
            step(named::ip(
                &netns,
                &["addr", "add", &v6, "dev", "eth0", "nodad"],
            ))?;
            step(named::ip(
                &netns,
                &["-6", "route", "add", "default", "via", &gateway_v6(subnet)],
            ))?;
        }
        for setting in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            step(named::exec(&netns, "sysctl", &["-qw", setting]))?;
        }
        Ok(NodeState {
            name,
            netns,
            address,
        })
    }

    async fn write_cluster_resources(
        &self,
        store: &Arc<dyn Datastore>,
        state: &State,
        options: &UpOptions,
    ) -> anyhow::Result<()> {
        let mut documents = vec![
            json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "default-ipv4-ippool"},
            "spec": {"cidr": POD_POOL, "blockSize": 26, "natOutgoing": false, "nodeSelector": "all()"}}),
        ];
        if options.dual_stack {
            documents.push(
                json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                "metadata": {"name": "default-ipv6-ippool"},
                "spec": {"cidr": POD_POOL_V6, "blockSize": 122, "nodeSelector": "all()"}}),
            );
        }
        if state.policy_only {
            documents.push(
                json!({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                "metadata": {"name": "default"}, "spec": {"interfacePrefix": "veth"}}),
            );
        }
        if options.tor.is_some() {
            // Each subnet's nodes peer with the rack on their own subnet.
            for subnet in 0..options.subnets.clamp(1, 8) {
                documents.push(
                    json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                    "metadata": {"name": format!("rack-subnet-{subnet}")},
                    "spec": {"peerIP": gateway(subnet), "asNumber": crate::tor::TOR_AS,
                        "nodeSelector": format!("twill.lab/subnet == '{subnet}'")}}),
                );
            }
        }
        let (vxlan, ipip) = match state.encap.as_str() {
            "vxlan" => ("Always", "Never"),
            "vxlan-cross-subnet" => ("CrossSubnet", "Never"),
            "ipip" => ("Never", "Always"),
            "ipip-cross-subnet" => ("Never", "CrossSubnet"),
            _ => ("Never", "Never"),
        };
        documents[0]["spec"]["vxlanMode"] = json!(vxlan);
        documents[0]["spec"]["ipipMode"] = json!(ipip);
        if options.dual_stack {
            // IPv6 has VXLAN (vxlan-v6.twill) but no IP-in-IP.
            documents[1]["spec"]["vxlanMode"] = json!(vxlan);
        }
        for node in &state.nodes {
            let mut bgp = json!({"ipv4Address": format!("{}/24", node.address)});
            if options.dual_stack {
                bgp["ipv6Address"] = json!(format!("{}/64", node_v6(&node.address)));
            }
            documents.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name,
                    "twill.lab/subnet": subnet_of(&node.address).to_string()}},
                "spec": {"bgp": bgp}}));
        }
        let text: String = documents.iter().map(|d| format!("---\n{d}\n")).collect();
        let resources = parse_documents(&text).map_err(document_errors)?;
        Client::new(store.clone())
            .write_all(&resources, WriteMode::Apply)
            .await?;
        Ok(())
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir().join(node)
    }

    /// The control plane's directory (Kubernetes datastore): certificates, kubeconfigs, etcd's
    /// data, logs.
    fn kube_dir(&self) -> PathBuf {
        self.dir().join("kube")
    }

    /// The datastore URL the nodes' processes use: on Kubernetes, the API server on the
    /// underlay (the machine's tools reach it through the loopback relay instead).
    fn node_datastore(&self, state: &State) -> String {
        match state.kubeconfig {
            Some(_) => format!(
                "kubernetes:{}",
                self.kube_dir().join("node.kubeconfig").display()
            ),
            None => state.datastore.clone(),
        }
    }

    fn write_cni_config(
        &self,
        state: &State,
        node: &NodeState,
        dual_stack: bool,
    ) -> anyhow::Result<()> {
        let dir = self.node_dir(&node.name);
        std::fs::create_dir_all(dir.join("net.d"))?;
        if state.policy_only {
            // Another CNI: the reference ptp plugin, addresses from host-local (one /24 per
            // node, its state in the node's directory).
            let index = state
                .nodes
                .iter()
                .position(|n| n.name == node.name)
                .unwrap_or(0);
            let conflist = json!({
                "cniVersion": "1.0.0",
                "name": NETWORK,
                "plugins": [{
                    "type": "ptp",
                    "ipMasq": false,
                    "mtu": 1500,
                    "ipam": {"type": "host-local",
                             "ranges": [[{"subnet": format!("{POLICY_ONLY_POOL_PREFIX}.{}.0/24", index + 1)}]],
                             "routes": [{"dst": "0.0.0.0/0"}],
                             "dataDir": dir.join("host-local")},
                }],
            });
            std::fs::write(
                dir.join("net.d/10-twill.conflist"),
                serde_json::to_vec_pretty(&conflist)?,
            )?;
            return Ok(());
        }
        let (datastore, kubeconfig) = match state.kubeconfig {
            Some(_) => (
                "kubernetes".to_string(),
                Some(self.kube_dir().join("cni.kubeconfig")),
            ),
            None => (state.datastore.clone(), None),
        };
        let mut conflist = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "twill",
                "datastore": datastore,
                "nodename": node.name,
                // What twill-node detects (the veth underlay's 1500 minus VXLAN's 50 over
                // IPv4, 70 over IPv6; pods take the smaller); the lab's nodes share one
                // filesystem, so the lab writes it here rather than letting the plugin read
                // the machine's MTU file.
                "mtu": match (state.encap.starts_with("vxlan"), dual_stack) {
                    (true, true) => 1430,
                    (true, false) => 1450,
                    _ => 1500,
                },
                "log_level": "info",
                "log_file_path": dir.join("cni.log"),
                "ipam_lock_file": dir.join("ipam.lock"),
                "ipam": {"type": "twill-ipam", "ipv4_pools": [], "ipv6_pools": [],
                         "assign_ipv4": "true", "assign_ipv6": if dual_stack { "true" } else { "false" }},
            }],
        });
        if let Some(kubeconfig) = kubeconfig {
            conflist["plugins"][0]["kubeconfig"] = json!(kubeconfig);
        }
        std::fs::write(
            dir.join("net.d/10-twill.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(())
    }

    /// The plugin's stdin for one call, as a runtime builds it from the conflist: the
    /// plugin's object with the list's `cniVersion` and `name`.
    fn plugin_config(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let path = self.node_dir(node).join("net.d/10-twill.conflist");
        let conflist: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let mut plugin = conflist["plugins"][0].clone();
        plugin["cniVersion"] = conflist["cniVersion"].clone();
        plugin["name"] = conflist["name"].clone();
        Ok(plugin)
    }

    /// Calls the `twill` plugin (policy-only: the reference `ptp`) inside the node's
    /// namespace, as kubelet's runtime would.
    async fn call_cni(
        &self,
        command: &str,
        node: &NodeState,
        pod: &PodState,
        policy_only: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let config = serde_json::to_vec(&self.plugin_config(&node.name)?)?;
        let (program, path) = if policy_only {
            let dir = PathBuf::from(REFERENCE_CNI_DIR);
            (dir.join("ptp"), dir)
        } else {
            (self.tools.twill.clone(), self.tools.cni_dir())
        };
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.namespace, pod.name, pod.container_id
        );
        let mut child =
            tokio::process::Command::from(named::command(&node.netns, program.as_os_str()))
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", &pod.container_id)
                .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_ARGS", args)
                .env("CNI_PATH", path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot run the CNI plugin {}", program.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(&config).await?;
        }
        let output = child.wait_with_output().await?;
        let value: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        if !output.status.success() {
            bail!(
                "CNI {command} of {} failed: {} {}",
                pod.id(),
                value,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(value)
    }

    /// ADD as a runtime does it: "try again later" (twill-node not ready yet, as right after
    /// `lab up` starts the agents) is retried with back-off for up to 30 s; any other error
    /// is final.
    async fn add_with_retries(
        &self,
        node: &NodeState,
        pod: &PodState,
        policy_only: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(20);
        loop {
            match self.call_cni("ADD", node, pod, policy_only).await {
                Err(err)
                    if err.to_string().contains("\"code\":11")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                outcome => return outcome,
            }
        }
    }

    /// Creates one pod: its namespace, its Pod resource, the plugin's ADD, then its
    /// responder (or its own command).
    async fn add_pod(
        &self,
        state: &mut State,
        store: &Arc<dyn Datastore>,
        pod: Object<PodSpec>,
        node: Option<String>,
    ) -> anyhow::Result<()> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        if state.pod(&format!("{namespace}/{name}")).is_some() {
            bail!(
                "pod {namespace}/{name} exists already in lab {:?}",
                self.name
            );
        }
        let node = match node.or_else(|| pod.spec.node_name.clone()) {
            Some(node) => state
                .node(&node)
                .cloned()
                .with_context(|| format!("pod {namespace}/{name}: no node {node:?} in the lab"))?,
            None => state.nodes[(state.created as usize) % state.nodes.len()].clone(),
        };
        state.created += 1;
        let mut pod = pod;
        pod.spec.node_name = Some(node.name.clone());
        pod.metadata.namespace = Some(namespace.clone());
        self.ensure_namespace(store, &namespace).await?;
        Client::new(store.clone())
            .write_all(&[Resource::Pod(pod.clone())], WriteMode::Apply)
            .await?;
        let mut record = PodState {
            namespace: namespace.clone(),
            name: name.clone(),
            node: node.name.clone(),
            netns: format!("{}p.{namespace}.{name}", self.prefix()),
            container_id: format!(
                "{:016x}{:08x}",
                fnv64(&format!("{}/{namespace}/{name}", self.name)),
                state.created
            ),
            ips: Vec::new(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            serves: Vec::new(),
            command: None,
        };
        named::add(&record.netns).map_err(anyhow::Error::msg)?;
        let result = match self
            .add_with_retries(&node, &record, state.policy_only)
            .await
        {
            Ok(result) => result,
            Err(err) => {
                let _ = named::delete(&record.netns);
                return Err(err);
            }
        };
        record.ips = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect();
        if state.policy_only {
            // What an orchestrator integration writes for a pod another CNI wired: its
            // WorkloadEndpoint, with the host side of the veth the plugin reported.
            let host_side = result["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i.get("sandbox").is_none())
                .and_then(|i| i["name"].as_str())
                .with_context(|| format!("ptp reported no host interface for {}", record.id()))?
                .to_string();
            let endpoint = workload_endpoint(&pod, &node.name, &host_side, &record.ips);
            Client::new(store.clone())
                .write_all(&[endpoint], WriteMode::Apply)
                .await?;
        }
        let (serves, command) = workload_of(&pod, &state.ports);
        record.serves = serves;
        record.command = command;
        self.start_workload(&record)?;
        if state.policy_only {
            routes_to_pod(state, &record, "add")?;
        }
        state.pods.push(record);
        state::save(state)?;
        Ok(())
    }

    async fn ensure_namespace(
        &self,
        store: &Arc<dyn Datastore>,
        namespace: &str,
    ) -> anyhow::Result<()> {
        let key = Key::cluster(Kind::Namespace, namespace);
        if store.get(&key).await?.is_none() {
            let resource = namespace_resource(namespace, &BTreeMap::new());
            Client::new(store.clone())
                .write_all(&[resource], WriteMode::Apply)
                .await?;
        }
        // The API server admits a pod only when its service account exists; without a
        // controller manager in the lab, the lab makes each namespace's `default` account as
        // that controller would.
        if store.endpoints_from_pods() {
            let key = Key::namespaced(Kind::ServiceAccount, namespace, "default");
            if store.get(&key).await?.is_none() {
                let value = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": namespace}});
                let resource = Resource::decode(Kind::ServiceAccount, value)?;
                Client::new(store.clone())
                    .write_all(&[resource], WriteMode::Apply)
                    .await?;
            }
        }
        Ok(())
    }

    /// Starts the pod's command, or the responder, detached, logging into the lab directory.
    fn start_workload(&self, pod: &PodState) -> anyhow::Result<()> {
        let log_path = self
            .dir()
            .join("logs")
            .join(format!("{}.{}.log", pod.namespace, pod.name));
        std::fs::create_dir_all(log_path.parent().expect("a parent"))?;
        let log = std::fs::File::create(&log_path)?;
        let mut command = match &pod.command {
            Some(argv) => {
                let program = resolve_program(&argv[0]);
                let mut command = named::command(&pod.netns, program.as_os_str());
                command.args(&argv[1..]).current_dir(self.dir());
                command
            }
            None => {
                let mut command = named::command(&pod.netns, self.tools.twillctl.as_os_str());
                command.args(["lab", "responder", "--answer", &pod.id()]);
                for port in &pod.serves {
                    command.args(["--port", &port.label()]);
                }
                command
            }
        };
        use std::os::unix::process::CommandExt;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start the workload of {}", pod.id()))?;
        Ok(())
    }

    /// Waits until every pod (or `only` these) answers on a port it serves, probed from its
    /// node's namespace.
    async fn wait_until_answering(
        &self,
        state: &State,
        only: Option<&[String]>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let pods: Vec<&PodState> = state
            .pods
            .iter()
            .filter(|p| only.is_none_or(|o| o.contains(&p.id())))
            .collect();
        for pod in pods {
            let node = state.node(&pod.node).context("the pod's node")?;
            loop {
                let ports = self.listening_ports(pod);
                let answered = match ports.first() {
                    Some(port) => self.answers(node, pod, port).await,
                    None => false,
                };
                if answered {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "pod {} did not answer within {ANSWER_TIMEOUT:?} (see {})",
                        pod.id(),
                        self.dir().join("logs").display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// The ports the pod should answer on: the responder's, or what its command listens on.
    fn listening_ports(&self, pod: &PodState) -> Vec<Port> {
        if pod.command.is_none() {
            return pod.serves.clone();
        }
        let Ok(output) = named::exec(&pod.netns, "ss", &["-Hltn"]) else {
            return Vec::new();
        };
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                line.split_whitespace()
                    .nth(3)?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .map(|port| Port {
                name: None,
                port,
                protocol: "TCP".into(),
            })
            .collect()
    }

    async fn answers(&self, node: &NodeState, pod: &PodState, port: &Port) -> bool {
        let Some(ip) = pod.ips.first().and_then(|ip| ip.parse().ok()) else {
            return false;
        };
        let target = Target {
            to: pod.id(),
            ip,
            port: port.port,
            protocol: port.protocol.clone(),
        };
        match self
            .run_agent(&node.netns, vec![target], Duration::from_millis(500))
            .await
        {
            Ok(outcomes) => outcomes.first().is_some_and(|o| o.connected),
            Err(_) => false,
        }
    }

    /// Runs the probe agent inside a namespace.
    pub(crate) async fn run_agent(
        &self,
        netns: &str,
        targets: Vec<Target>,
        timeout: Duration,
    ) -> anyhow::Result<Vec<crate::agent::Outcome>> {
        let mut child =
            tokio::process::Command::from(named::command(netns, self.tools.twillctl.as_os_str()))
                .args([
                    "lab",
                    "probe-agent",
                    "--timeout-ms",
                    &timeout.as_millis().to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot run the probe agent")?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(&serde_json::to_vec(&targets)?).await?;
        }
        let output = child.wait_with_output().await?;
        if !output.status.success() {
            bail!(
                "the probe agent in {netns} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Writes each pod's /etc/hosts (through `ip netns exec`'s /etc/netns/NAME): pods of the
    /// same namespace by name, every pod as `pod.ns` and `pod.ns.svc.cluster.local`.
    fn write_hosts(&self, state: &State) -> anyhow::Result<()> {
        for pod in &state.pods {
            let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
            for other in &state.pods {
                for ip in &other.ips {
                    let qualified = format!(
                        "{0}.{1} {0}.{1}.svc {0}.{1}.svc.cluster.local",
                        other.name, other.namespace
                    );
                    if other.namespace == pod.namespace {
                        text.push_str(&format!("{ip}\t{} {qualified}\n", other.name));
                    } else {
                        text.push_str(&format!("{ip}\t{qualified}\n"));
                    }
                }
            }
            let dir = Path::new("/etc/netns").join(&pod.netns);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(dir.join("hosts"), text)?;
        }
        Ok(())
    }

    /// Applies a file to the lab's datastore; `v1` Pod documents create pods. Returns a line
    /// per document.
    pub async fn apply(&self, text: &str) -> anyhow::Result<Vec<String>> {
        let mut state = self.state()?;
        let store = self.store(&state).await?;
        let resources = parse_documents(text).map_err(document_errors)?;
        let (pods, others): (Vec<Resource>, Vec<Resource>) =
            resources.into_iter().partition(|r| r.kind() == Kind::Pod);
        let mut lines = Vec::new();
        if !others.is_empty() {
            for (key, outcome) in Client::new(store.clone())
                .write_all(&others, WriteMode::Apply)
                .await?
            {
                lines.push(format!("{key}: {outcome:?}").to_lowercase());
            }
        }
        let mut added = Vec::new();
        for resource in pods {
            let Resource::Pod(pod) = resource else {
                continue;
            };
            let id = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or("")
            );
            if state.pod(&id).is_some() {
                Client::new(store.clone())
                    .write_all(&[Resource::Pod(pod)], WriteMode::Apply)
                    .await?;
                lines.push(format!(
                    "pod {id}: configured (the lab keeps the running pod)"
                ));
                continue;
            }
            self.add_pod(&mut state, &store, pod, None).await?;
            added.push(id.clone());
            lines.push(format!(
                "pod {id}: created on {}",
                state.pod(&id).map(|p| p.node.as_str()).unwrap_or("?")
            ));
        }
        if !added.is_empty() {
            self.write_hosts(&state)?;
            self.wait_until_answering(&state, Some(&added)).await?;
        }
        self.sync(ANSWER_TIMEOUT).await?;
        Ok(lines)
    }

    /// Deletes what a file names; `v1` Pod documents remove pods.
    pub async fn delete(&self, text: &str) -> anyhow::Result<Vec<String>> {
        let mut state = self.state()?;
        let store = self.store(&state).await?;
        let resources = parse_documents(text).map_err(document_errors)?;
        let mut lines = Vec::new();
        for resource in &resources {
            if let Resource::Pod(pod) = resource {
                let id = format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                    pod.metadata.name.as_deref().unwrap_or("")
                );
                if let Some(index) = state.pods.iter().position(|p| p.id() == id) {
                    let record = state.pods.remove(index);
                    self.remove_pod(&state, &record).await?;
                    state::save(&state)?;
                }
            }
            match store.delete(&resource.key(), None).await {
                Ok(_) => lines.push(format!("{}: deleted", resource.key())),
                Err(twill_shared::datastore::DatastoreError::NotFound { .. }) => {
                    lines.push(format!("{}: not found", resource.key()))
                }
                Err(err) => return Err(err.into()),
            }
        }
        self.write_hosts(&state)?;
        self.sync(ANSWER_TIMEOUT).await?;
        Ok(lines)
    }

    async fn remove_pod(&self, state: &State, pod: &PodState) -> anyhow::Result<()> {
        named::kill_all(&pod.netns);
        if let Some(node) = state.node(&pod.node) {
            self.call_cni("DEL", node, pod, state.policy_only).await?;
            if state.policy_only {
                let key = twill_shared::resource::Key::namespaced(
                    twill_shared::resource::Kind::WorkloadEndpoint,
                    &pod.namespace,
                    &format!("{}-k8s-{}-eth0", node.name, pod.name.replace('-', "--")),
                );
                match self.store(state).await?.delete(&key, None).await {
                    Ok(_) | Err(twill_shared::datastore::DatastoreError::NotFound { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        named::delete(&pod.netns).map_err(anyhow::Error::msg)?;
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&pod.netns));
        if state.policy_only {
            routes_to_pod(state, pod, "del")?;
        }
        Ok(())
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

    /// Kills this lab's datastore relays (found by their command line, so it also works
    /// without state).
    fn stop_relays(&self) {
        let marker = format!("/run/netns/{}", self.prefix());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline);
            if text.contains("\0relay\0") && text.split('\0').any(|arg| arg.starts_with(&marker)) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }

    /// Runs a command in a pod (inheriting this process's standard streams); returns its exit
    /// code.
    pub fn exec(&self, pod: &str, argv: &[String]) -> anyhow::Result<i32> {
        let state = self.state()?;
        let record = state
            .pod(pod)
            .with_context(|| format!("no pod {pod:?} in lab {:?} (pods are NS/POD)", self.name))?;
        let program = resolve_program(&argv[0]);
        let status = named::command(&record.netns, program.as_os_str())
            .args(&argv[1..])
            .status()
            .with_context(|| format!("cannot run {} in {pod}", argv[0]))?;
        Ok(status.code().unwrap_or(1))
    }

    /// The lab's tools.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }
}

/// The router's address on subnet `subnet` (`198.18.K.1`; subnet 0's is
/// [`UNDERLAY_GATEWAY`]).
pub fn gateway(subnet: usize) -> String {
    format!("198.18.{subnet}.1")
}

/// The router's IPv6 address on subnet `subnet` (dual-stack labs: `fd00:198:18:K::1`, a
/// unique local address inside the lab's namespaces).
pub fn gateway_v6(subnet: usize) -> String {
    format!("fd00:198:18:{subnet:x}::1")
}

/// A node's IPv6 underlay address, from its IPv4 one: `198.18.K.N` → `fd00:198:18:K::N`.
pub fn node_v6(address: &str) -> String {
    let parts: Vec<&str> = address.split('.').collect();
    format!(
        "fd00:198:18:{:x}::{}",
        subnet_of(address),
        parts.get(3).copied().unwrap_or("0")
    )
}

/// The subnet of a node's underlay address.
pub fn subnet_of(address: &str) -> usize {
    address
        .split('.')
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Calico's default AS number, which the lab's nodes use.
fn twill_bgpd_default_as() -> u32 {
    64512
}

/// Policy-only labs' pods are wired by another CNI with no routing of its own: the lab gives
/// every other node a static route to each pod via the pod's node (full labs route by BGP).
fn routes_to_pod(state: &State, pod: &PodState, action: &str) -> anyhow::Result<()> {
    let Some(home) = state.node(&pod.node) else {
        return Ok(());
    };
    for node in state.nodes.iter().filter(|n| n.name != pod.node) {
        for ip in &pod.ips {
            let prefix = if ip.contains(':') {
                format!("{ip}/128")
            } else {
                format!("{ip}/32")
            };
            let via = if ip.contains(':') {
                continue;
            } else {
                home.address.as_str()
            };
            let result = named::ip(
                &node.netns,
                &["route", action, &prefix, "via", via, "proto", "static"],
            );
            if let (Err(err), "add") = (result, action) {
                bail!(
                    "cannot route {prefix} from {} to {}: {err}",
                    node.name,
                    home.name
                );
            }
        }
    }
    Ok(())
}

fn empty_output() -> std::process::Output {
    std::process::Output {
        status: std::process::ExitStatus::default(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

fn document_errors(errors: twill_shared::resource::document::DocumentErrors) -> anyhow::Error {
    anyhow::anyhow!("{errors}")
}

/// A program name as a pod image would have it: `python` is `python3` where only that exists.
fn resolve_program(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    state::find_program(name)
        .or_else(|_| {
            if name == "python" {
                state::find_program("python3")
            } else {
                Err(anyhow::anyhow!(""))
            }
        })
        .unwrap_or_else(|_| PathBuf::from(name))
}

/// What runs in a pod: its command when it has one that runs here, else the responder on
/// the topology's ports and the pod's container ports.
fn workload_of(pod: &Object<PodSpec>, topology_ports: &[Port]) -> (Vec<Port>, Option<Vec<String>>) {
    let container = pod.spec.containers.first();
    if let Some(argv) = container.and_then(|c| {
        let mut argv = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        (!argv.is_empty()).then_some(argv)
    }) {
        if argv[0].contains('/') && Path::new(&argv[0]).is_file()
            || resolve_program(&argv[0]).is_absolute()
        {
            return (Vec::new(), Some(argv));
        }
    }
    let mut ports: Vec<Port> = topology_ports.to_vec();
    for container in &pod.spec.containers {
        for port in container.ports.iter().flatten() {
            let candidate = Port {
                name: port.name.clone(),
                port: port.container_port,
                protocol: port
                    .protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_ascii_uppercase(),
            };
            if !ports
                .iter()
                .any(|p| p.port == candidate.port && p.protocol == candidate.protocol)
            {
                ports.push(candidate);
            }
        }
    }
    (ports, None)
}

fn namespace_resource(name: &str, labels: &BTreeMap<String, String>) -> Resource {
    let mut labels = labels.clone();
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    let value = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    Resource::decode(Kind::Namespace, value).expect("a namespace document decodes")
}

fn topology_pod(pod: &crate::topology::PodEntry, ports: &[Port]) -> Object<PodSpec> {
    let container_ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            let mut port = json!({"containerPort": p.port, "protocol": p.protocol});
            if let Some(name) = &p.name {
                port["name"] = json!(name);
            }
            port
        })
        .collect();
    let value = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.ns, "labels": pod.labels},
        "spec": {"containers": [{"name": "responder", "image": "twill/responder", "ports": container_ports}]}});
    match Resource::decode(Kind::Pod, value).expect("a topology pod decodes") {
        Resource::Pod(pod) => pod,
        _ => unreachable!("decoded as a Pod"),
    }
}

fn fnv64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The WorkloadEndpoint of a pod another CNI wired (policy-only), as Calico's Kubernetes
/// integration derives it: `<node>-k8s-<pod>-eth0`, the pod's labels with the namespace and
/// orchestrator labels, the namespace profile.
fn workload_endpoint(
    pod: &Object<PodSpec>,
    node: &str,
    interface: &str,
    ips: &[String],
) -> Resource {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut labels = pod.metadata.labels.clone().unwrap_or_default();
    labels.insert("projectcalico.org/namespace".into(), namespace.clone());
    labels.insert("projectcalico.org/orchestrator".into(), "k8s".into());
    let networks: Vec<String> = ips
        .iter()
        .map(|ip| {
            if ip.contains(':') {
                format!("{ip}/128")
            } else {
                format!("{ip}/32")
            }
        })
        .collect();
    let document = json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": format!("{node}-k8s-{}-eth0", name.replace('-', "--")),
                     "namespace": namespace, "labels": labels},
        "spec": {"node": node, "orchestrator": "k8s", "pod": name, "endpoint": "eth0",
                 "interfaceName": interface, "ipNetworks": networks,
                 "profiles": [format!("kns.{namespace}")]}});
    let mut resources = parse_documents(&document.to_string()).expect("a well-formed endpoint");
    resources.remove(0)
}
