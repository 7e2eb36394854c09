//! BGP inside twill-node: the datastore's Calico BGP resources compiled to twill-bgpd's
//! configuration ([`twill_bgpd::calico`]), the speaker run in this process, and the routes the
//! node keeps for the cluster (a blackhole per affine block, BGPPeers' `reachableBy`).
//!
//! The configuration is written to `RUN_DIR/bgpd.toml` and reloaded the way SIGHUP reloads
//! twill-bgpd, so a change alters only the sessions it must. A change of global settings (AS
//! number, router ID, cluster ID, listen addresses) restarts the speaker as a graceful
//! restart: peers keep our routes meanwhile. The speaker starts as restarting (RFC 4724)
//! when a previous run left its routes in the kernel, and twill-node stops it the same way,
//! so a restart of twill-node never flushes forwarding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use twill_bgpd::calico::{Cluster, Rendered, Secrets};
use twill_bgpd::io::{control, daemon};
use twill_shared::resource::{Kind, Resource};

use crate::routes::{self, Target};

/// Secrets as files: `DIR/NAME/KEY` (a Kubernetes Secret mounted as a volume has this shape).
#[derive(Debug, Clone)]
pub struct SecretFiles(pub PathBuf);

impl Secrets for SecretFiles {
    fn get(&self, name: &str, key: &str) -> Option<String> {
        let safe = |part: &str| !part.is_empty() && !part.contains('/') && part != "..";
        if !safe(name) || !safe(key) {
            return None;
        }
        std::fs::read_to_string(self.0.join(name).join(key))
            .ok()
            .map(|text| text.trim_end_matches('\n').to_string())
    }
}

type Running =
    tokio::task::JoinHandle<(mpsc::UnboundedReceiver<daemon::Event>, anyhow::Result<()>)>;

/// The BGP part of the agent.
#[derive(Debug)]
pub struct Bgp {
    node: String,
    dir: PathBuf,
    secrets: SecretFiles,
    cluster: Cluster,
    events: mpsc::UnboundedSender<daemon::Event>,
    /// Where the control socket's requests go: `events`, kept in step with it.
    current: Arc<Mutex<mpsc::UnboundedSender<daemon::Event>>>,
    /// The borrowed addresses last announced.
    last_borrowed: Vec<IpNet>,
    /// The speaker's channel while no speaker runs.
    idle: Option<mpsc::UnboundedReceiver<daemon::Event>>,
    running: Option<Running>,
    last: Option<Rendered>,
    warned: BTreeSet<String>,
    dirty: bool,
}

impl Bgp {
    /// BGP for `node`, with its files (`bgpd.toml`, `bgpd.sock`) in `dir`.
    pub fn new(node: &str, dir: &Path, secrets: SecretFiles) -> anyhow::Result<Bgp> {
        let (events, receiver) = mpsc::unbounded_channel();
        // The control socket outlives any one speaker: its requests go to whichever channel
        // is current (a speaker that had to be abandoned leaves its channel behind).
        let current = Arc::new(Mutex::new(events.clone()));
        let (control_events, mut control_requests) = mpsc::unbounded_channel();
        let forward_to = current.clone();
        tokio::spawn(async move {
            while let Some(event) = control_requests.recv().await {
                let sender = forward_to.lock().map(|s| s.clone());
                if let Ok(sender) = sender {
                    let _ = sender.send(event);
                }
            }
        });
        private_dir(dir)?;
        let socket = dir.join("bgpd.sock");
        control::serve(&socket, control_events)
            .with_context(|| format!("cannot serve {}", socket.display()))?;
        Ok(Bgp {
            current,
            last_borrowed: Vec::new(),
            node: node.to_string(),
            dir: dir.to_path_buf(),
            secrets,
            cluster: Cluster::default(),
            events,
            idle: Some(receiver),
            running: None,
            last: None,
            warned: BTreeSet::new(),
            dirty: true,
        })
    }

    /// Takes a datastore change; returns whether BGP depends on it.
    pub fn update(&mut self, kind: Kind, name: &str, resource: Option<Resource>) -> bool {
        let relevant = Cluster::wants(kind) && self.cluster.update(kind, name, resource);
        self.dirty |= relevant;
        relevant
    }

    /// Takes a workload endpoint change (`id`: `namespace/name`): an address borrowed from
    /// another node's block is routed to the borrower by the encapsulation, so a change in
    /// those marks the next apply.
    pub fn update_workload(&mut self, id: &str, workload: Option<(&str, &[IpNet])>) {
        self.dirty |= self.cluster.update_workload(id, workload);
    }

    /// Asks for the next [`Bgp::apply`] (and the encapsulation with it) to run.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether something changed since the last [`Bgp::apply`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The resources as last taken.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The local blocks (for borrowed-address detection).
    pub fn own_blocks(&self) -> BTreeSet<IpNet> {
        self.cluster.blocks_of(&self.node)
    }

    /// Brings the speaker and the cluster routes in line with the resources. `borrowed`:
    /// local workload addresses outside this node's blocks. `repair`: rewrite the cluster
    /// routes even if nothing changed (drift repair).
    pub async fn apply(&mut self, borrowed: &[IpNet], repair: bool) -> anyhow::Result<()> {
        if !self.dirty
            && !repair
            && !self.borrowed_changed(borrowed)
            && self
                .last
                .as_ref()
                .is_some_and(|r| r.config.is_some() == self.running.is_some())
        {
            return Ok(());
        }
        self.last_borrowed = borrowed.to_vec();
        let rendered = self.cluster.render(&self.node, borrowed, &self.secrets);
        for warning in &rendered.warnings {
            if self.warned.insert(warning.clone()) {
                tracing::warn!(node = %self.node, "{warning}");
            }
        }
        let mut desired: BTreeMap<IpNet, Target> = rendered
            .blackholes
            .iter()
            .map(|b| (*b, Target::Blackhole))
            .collect();
        for (net, gateway) in &rendered.static_routes {
            desired.insert(*net, Target::Gateway(*gateway));
        }
        // A route the kernel refuses (a reachableBy gateway not on a connected network) is
        // reported and retried at the next apply; it never keeps the speaker from its
        // configuration.
        let mut route_error = None;
        match routes::sync_owned(routes::CLUSTER_ROUTE_PROTOCOL, &desired).await {
            Ok(changes) => {
                if !changes.added.is_empty() || !changes.removed.is_empty() {
                    tracing::info!(added = ?changes.added, removed = ?changes.removed, "cluster routes (block blackholes, reachableBy)");
                }
            }
            Err(err) => route_error = Some(anyhow::anyhow!("cluster routes: {err}")),
        }
        let changed = self.last.as_ref().map(|r| &r.config) != Some(&rendered.config);
        match &rendered.config {
            None => {
                if self.running.is_some() {
                    tracing::info!("this node no longer speaks BGP (no Node resource or BGP address); stopping the speaker");
                    self.stop(daemon::StopMode::Shutdown).await;
                }
            }
            Some(text) if changed || self.running.is_none() => {
                let path = self.dir.join("bgpd.toml");
                write_atomically(&path, text)?;
                if self.running.is_some() {
                    match self.request("reload").await {
                        Ok(answer) if answer.contains("\"ok\"") => {
                            tracing::info!("BGP configuration reloaded");
                        }
                        Ok(answer) if answer.contains("global settings changed") => {
                            tracing::info!(
                                "BGP global settings changed: restarting the speaker gracefully"
                            );
                            self.stop(daemon::StopMode::GracefulRestart).await;
                            self.start(true)?;
                        }
                        Ok(answer) => {
                            anyhow::bail!("the speaker refused the new configuration: {answer}")
                        }
                        Err(err) => return Err(err),
                    }
                } else {
                    let kept =
                        twill_bgpd::io::kernel::leftovers(&twill_bgpd::config::KernelConfig {
                            table: 254,
                            metric: twill_bgpd::calico::NORMAL_METRIC,
                            exclude: Vec::new(),
                        })
                        .unwrap_or(0);
                    self.start(kept > 0)?;
                }
            }
            Some(_) => {}
        }
        self.last = Some(rendered);
        self.dirty = route_error.is_some();
        route_error.map_or(Ok(()), Err)
    }

    fn start(&mut self, restarting: bool) -> anyhow::Result<()> {
        let mut receiver = self
            .idle
            .take()
            .context("the speaker's channel is in use")?;
        let daemon = match daemon::Daemon::new(
            self.dir.join("bgpd.toml"),
            restarting,
            self.events.clone(),
        ) {
            Ok(daemon) => daemon,
            Err(err) => {
                self.idle = Some(receiver);
                return Err(err.context("cannot start the BGP speaker"));
            }
        };
        tracing::info!(restarting, "BGP speaker started");
        self.running = Some(tokio::spawn(async move {
            let result = daemon.run(&mut receiver).await;
            (receiver, result)
        }));
        Ok(())
    }

    /// Stops the speaker: `GracefulRestart` keeps peers' copies of our routes and the kernel's
    /// routes; `Shutdown` ends every session with a Cease and removes them.
    pub async fn stop(&mut self, mode: daemon::StopMode) {
        let Some(running) = self.running.take() else {
            return;
        };
        let _ = self.events.send(daemon::Event::Stop(mode));
        let abort = running.abort_handle();
        match tokio::time::timeout(Duration::from_secs(10), running).await {
            Ok(Ok((receiver, result))) => {
                if let Err(err) = result {
                    tracing::warn!(error = %format!("{err:#}"), "the BGP speaker stopped with an error");
                }
                self.idle = Some(receiver);
            }
            Ok(Err(_)) => {
                tracing::error!("the BGP speaker panicked while stopping");
                self.new_channel();
            }
            Err(_) => {
                // Aborted, its task drops its listeners and sessions, so a successor can bind.
                tracing::error!("the BGP speaker did not stop in time; abandoning it");
                abort.abort();
                self.new_channel();
            }
        }
    }

    /// A fresh channel for the next speaker (the old one went with a task that failed).
    fn new_channel(&mut self) {
        let (events, receiver) = mpsc::unbounded_channel();
        if let Ok(mut current) = self.current.lock() {
            *current = events.clone();
        }
        self.events = events;
        self.idle = Some(receiver);
    }

    /// Whether the borrowed addresses differ from those last announced.
    pub fn borrowed_changed(&self, borrowed: &[IpNet]) -> bool {
        self.last_borrowed != borrowed
    }

    /// Whether the speaker task ended on its own (an error); it is started again at the next
    /// apply.
    pub async fn reap(&mut self) {
        if self.running.as_ref().is_some_and(|r| r.is_finished()) {
            if let Some(running) = self.running.take() {
                match running.await {
                    Ok((receiver, result)) => {
                        if let Err(err) = result {
                            tracing::error!(error = %format!("{err:#}"), "the BGP speaker stopped; starting it again");
                        }
                        self.idle = Some(receiver);
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "the BGP speaker panicked; starting it again");
                        self.new_channel();
                    }
                }
            }
            self.dirty = true;
        }
    }

    async fn request(&self, command: &str) -> anyhow::Result<String> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(daemon::Event::Control(command.to_string(), reply))
            .map_err(|_| anyhow::anyhow!("the BGP speaker is not running"))?;
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .context("the BGP speaker did not answer")?
            .context("the BGP speaker did not answer")
    }

    /// The sessions, as `twillctl bgp peers -o json` prints them (empty when no speaker runs).
    pub async fn peers(&self) -> Vec<serde_json::Value> {
        if self.running.is_none() {
            return Vec::new();
        }
        self.request("peers")
            .await
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Whether the speaker runs.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The warnings of the last rendering.
    pub fn warnings(&self) -> Vec<String> {
        self.last
            .as_ref()
            .map(|r| r.warnings.clone())
            .unwrap_or_default()
    }
}

/// Writes a file that may hold secrets (BGP passwords): created 0600 (never readable by
/// others, not even for a moment), filled, then renamed over the old one, in a directory
/// made 0700.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        private_dir(parent)?;
    }
    let temporary = path.with_extension("toml.new");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    drop(file);
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Creates `dir` (and its parents) if needed and makes it 0700: it holds the speaker's
/// configuration, with its passwords, and its control socket.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))
}
