//! Waiting for the lab: every node has applied the datastore and is routed, every pod answers.

use super::*;

impl Lab {
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
    pub(super) async fn wait_revisions(
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
    pub(super) async fn wait_views(
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
    pub(super) fn agent_trouble(&self, node: &str, status: Option<&serde_json::Value>) -> String {
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
    pub(super) async fn wait_routed(
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

    /// Waits until every pod (or `only` these) answers on a port it serves, probed from its
    /// node's namespace.
    pub(super) async fn wait_until_answering(
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
    pub(super) fn listening_ports(&self, pod: &PodState) -> Vec<Port> {
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

    pub(super) async fn answers(&self, node: &NodeState, pod: &PodState, port: &Port) -> bool {
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
}
