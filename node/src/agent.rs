//! The policy part of twill-node: follow the datastore, calculate, apply; repeat on every
//! change (coalesced) and every refresh interval (drift repair).
//!
//! Nothing is written to the kernel before the syncer is in sync. Rules are never flushed:
//! when the agent stops or dies, the kernel keeps enforcing what it last applied, and a new
//! agent takes its own objects over by name and hash, changing only what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::IpNet;
use tokio::sync::watch;
use twill_felix::calc::{Calculator, Computed};
use twill_felix::ir::{Dataplane, Family};
use twill_felix::model::Model;
use twill_shared::datastore::{connect, Stored};
use twill_shared::resource::Kind;
use twill_shared::syncer::{driver, SyncStatus, Update};

use crate::health::{self, Health};
use crate::status::{Metrics, Status};

/// What the agent does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Policy, endpoint routes (and, with later issues, BGP and encapsulation).
    Full,
    /// Policy alone, for clusters whose pods another CNI wires.
    PolicyOnly,
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Datastore URL.
    pub datastore: String,
    /// This node's name.
    pub node: String,
    /// Full or policy-only.
    pub mode: Mode,
    /// Where `/livez`, `/readyz`, `/metrics` listen.
    pub health_listen: String,
    /// Where the status file goes.
    pub status_file: PathBuf,
    /// How often the kernel is compared with the desired state (drift repair).
    pub refresh: Duration,
    /// Where the BGP speaker's configuration and control socket go (full mode).
    pub run_dir: PathBuf,
    /// Secrets (BGP passwords) as files `DIR/NAME/KEY`.
    pub secrets_dir: PathBuf,
    /// Where the MTU pods should use is written (the CNI plugin reads it when its
    /// configuration names none).
    pub mtu_file: PathBuf,
    /// `/livez` fails when the main loop makes no progress for this long.
    pub watchdog: Duration,
    /// How this node's address is found and written on its Node resource at start.
    pub ip_autodetection: crate::startup::Autodetect,
    /// The pool created at start when the cluster has none.
    pub default_pool: Option<crate::startup::DefaultPool>,
    /// Kubernetes installs: the CNI plugin's kubeconfig on the host, kept fresh.
    pub cni_kubeconfig: Option<PathBuf>,
}

struct Agent {
    options: Options,
    calculator: Calculator,
    /// Where the syncer stands, as the agent acts on it.
    sync: SyncGate,
    /// Calculated but not yet applied (or the apply failed).
    dirty: bool,
    revision: i64,
    /// Every object the syncer has told of, at its revision.
    view: twill_shared::syncer::ViewDigest,
    computed: bool,
    applier: twill_felix::apply::Applier,
    status: Status,
    metrics: Arc<Mutex<Metrics>>,
    health: watch::Sender<Health>,
    /// The main loop's heartbeat (the watchdog behind `/livez`).
    heartbeat: Arc<health::Heartbeat>,
    /// This node's workload endpoints (`namespace/name`) in the dataplane last applied.
    programmed: Arc<BTreeSet<String>>,
    /// After a failed apply: when to try again (doubling up to the refresh interval).
    retry: Option<Duration>,
    lists: u64,
    /// BGP (full mode).
    bgp: Option<crate::bgp::Bgp>,
    /// Encapsulation (full mode).
    encap: Option<crate::encap::Encap>,
    /// Endpoint routes on interfaces no endpoint has, waiting out their grace period.
    unmanaged_routes: crate::routes::Unmanaged,
    /// Every workload endpoint's addresses (all nodes), to see which addresses leave.
    endpoint_addresses: BTreeMap<twill_shared::resource::Key, BTreeSet<IpAddr>>,
    /// Addresses that left an endpoint: their conntrack entries go after the next apply.
    released: BTreeSet<IpAddr>,
    /// The endpoint each address belongs to: an address that changes hands has its flows
    /// forgotten even if the old owner's deletion has not been seen yet.
    owners: BTreeMap<IpAddr, twill_shared::resource::Key>,
}

/// Runs until the process is stopped.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&options.health_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for health and metrics",
                options.health_listen
            )
        })?;
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let (health_sender, health_receiver) = watch::channel(Health {
        not_ready: "starting: not yet in sync with the datastore".into(),
        ..Health::default()
    });
    let heartbeat = Arc::new(health::Heartbeat::new(options.watchdog));
    heartbeat.beat();
    tokio::spawn(health::serve(
        listener,
        health_receiver,
        heartbeat.clone(),
        metrics.clone(),
    ));
    let store = connect(&options.datastore)
        .await
        .with_context(|| format!("cannot open the datastore {}", options.datastore))?;
    crate::startup::node_address(&store, &options.node, &options.ip_autodetection).await?;
    if let Some(pool) = &options.default_pool {
        crate::startup::default_pool(&store, pool).await?;
    }
    if let Some(path) = &options.cni_kubeconfig {
        let config = kube::Config::infer()
            .await
            .context("--cni-kubeconfig needs the pod's service account (in-cluster)")?;
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)?;
        crate::startup::spawn_cni_credentials(client, server, path.clone());
    }
    let config = twill_felix::apply::ApplierConfig {
        backend: twill_felix::apply::BackendChoice::from_env()?,
        ..twill_felix::apply::ApplierConfig::default()
    };
    let applier =
        tokio::task::spawn_blocking(move || twill_felix::apply::Applier::new(&config)).await?;
    tracing::info!(backend = ?applier.backend(), "iptables backend");
    let encap = (options.mode == Mode::Full)
        .then(|| crate::encap::Encap::new(&options.node, store.clone()));
    let mut updates = driver::spawn(store, Vec::new());
    let bgp = match options.mode {
        Mode::Full => Some(crate::bgp::Bgp::new(
            &options.node,
            &options.run_dir,
            crate::bgp::SecretFiles(options.secrets_dir.clone()),
        )?),
        Mode::PolicyOnly => None,
    };
    let mut agent = Agent {
        bgp,
        encap,
        unmanaged_routes: Default::default(),
        endpoint_addresses: BTreeMap::new(),
        released: BTreeSet::new(),
        owners: BTreeMap::new(),
        status: Status {
            node: options.node.clone(),
            mode: match options.mode {
                Mode::Full => "full".into(),
                Mode::PolicyOnly => "policy-only".into(),
            },
            datastore: options.datastore.clone(),
            pid: std::process::id(),
            ..Status::default()
        },
        calculator: Calculator::new(&options.node),
        options,
        sync: SyncGate::default(),
        dirty: false,
        revision: 0,
        view: Default::default(),
        computed: false,
        applier,
        metrics,
        health: health_sender,
        heartbeat,
        programmed: Arc::default(),
        retry: None,
        lists: 0,
    };
    agent.read_addresses().await;
    agent.write_status();
    let mut refresh = tokio::time::interval(agent.options.refresh);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        agent.heartbeat.beat();
        let mut repair = false;
        tokio::select! {
            update = updates.recv() => {
                let Some(update) = update else { anyhow::bail!("the syncer stopped") };
                agent.on_update(update);
                while let Ok(update) = updates.try_recv() {
                    agent.on_update(update);
                }
            }
            _ = refresh.tick() => repair = true,
            // A failed apply is tried again soon, not only at the next change or refresh.
            _ = tokio::time::sleep(agent.retry.unwrap_or_default()), if agent.retry.is_some() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        if repair {
            agent.read_addresses().await;
        }
        // During a relist the view is partial: wait for its end and apply it as one step.
        let settled = agent.sync.settled();
        if settled && (agent.dirty || agent.calculator.is_dirty() || repair) {
            agent.calculate_and_apply(repair).await;
        } else {
            agent.advance();
        }
        if settled {
            agent.apply_bgp(repair).await;
        }
        agent.publish_health();
    }
    if let Some(bgp) = agent.bgp.as_mut() {
        // As a graceful restart: peers keep our routes, the kernel keeps its routes.
        bgp.stop(twill_bgpd::io::daemon::StopMode::GracefulRestart)
            .await;
    }
    tracing::info!("stopping; the kernel keeps the rules and routes last applied");
    Ok(())
}

impl Agent {
    fn on_update(&mut self, update: Update) {
        match update {
            Update::Status(status) => {
                if let Some(event) = self.sync.on_status(status) {
                    match event {
                        SyncEvent::InSync => {
                            tracing::info!(revision = self.revision, "in sync with the datastore");
                            self.dirty = true;
                        }
                        SyncEvent::Lost => tracing::warn!(
                            "lost the datastore; keeping the dataplane as it is until it is back"
                        ),
                    }
                }
                if status != SyncStatus::ResyncInProgress {
                    return;
                }
                self.lists += 1;
                if self.lists > 1 {
                    self.status.resyncs += 1;
                    if let Ok(metrics) = self.metrics.lock() {
                        metrics.resyncs.inc();
                    }
                }
            }
            Update::Revision(revision) => self.revision = self.revision.max(revision),
            Update::Changed {
                key,
                revision,
                value,
            } => {
                self.revision = self.revision.max(revision);
                self.view.set(&key, value.is_some().then_some(revision));
                let for_bgp = self.bgp.is_some() && twill_bgpd::calico::Cluster::wants(key.kind);
                if !Model::wants(key.kind) && !for_bgp {
                    return;
                }
                let (resource, invalid) = admit(&key, value, revision);
                if let Some(invalid) = invalid {
                    // Written by another tool, past validation: reported, and it stands in
                    // fail-closed for felix (BGP treats it as absent).
                    tracing::warn!(%key, revision, reason = %invalid.reason, "invalid object in the datastore");
                    if Model::wants(key.kind)
                        && self.calculator.update_invalid(key.clone(), invalid)
                    {
                        self.dirty = true;
                    }
                    if for_bgp {
                        if let Some(bgp) = self.bgp.as_mut() {
                            bgp.update(key.kind, &bgp_name(&key), None);
                        }
                    }
                    if key.kind == twill_shared::resource::Kind::WorkloadEndpoint {
                        self.follow_addresses(&key, None);
                    }
                    self.status.datastore_revision = self.revision;
                    return;
                }
                if key.kind == twill_shared::resource::Kind::FelixConfiguration {
                    if let Some(encap) = self.encap.as_mut() {
                        let mtus = match &resource {
                            Some(twill_shared::resource::Resource::FelixConfiguration(c)) => {
                                Some((c.spec.vxlan_mtu, c.spec.ipip_mtu))
                            }
                            _ => None,
                        };
                        if encap.set_felix_configuration(&key.name, mtus) {
                            if let Some(bgp) = self.bgp.as_mut() {
                                bgp.mark_dirty();
                            }
                        }
                    }
                }
                if for_bgp {
                    if let Some(bgp) = self.bgp.as_mut() {
                        bgp.update(key.kind, &bgp_name(&key), resource.clone());
                        if key.kind == twill_shared::resource::Kind::IpPool {
                            let pools = bgp
                                .cluster()
                                .pools()
                                .filter_map(|p| {
                                    Some(twill_felix::calc::nat::NatPool {
                                        cidr: p.spec.cidr.as_ref()?.0.trunc(),
                                        // Disabled pools' workloads still masquerade:
                                        // `disabled` only stops allocation.
                                        masquerade: p.spec.nat_outgoing == Some(true),
                                    })
                                })
                                .collect();
                            if self.calculator.set_nat_pools(pools) {
                                self.dirty = true;
                            }
                        }
                    }
                }
                if key.kind == twill_shared::resource::Kind::WorkloadEndpoint {
                    self.follow_addresses(&key, resource.as_ref());
                    if let Some(bgp) = self.bgp.as_mut() {
                        let id = format!("{}/{}", key.namespace.as_deref().unwrap_or(""), key.name);
                        match &resource {
                            Some(twill_shared::resource::Resource::WorkloadEndpoint(w)) => {
                                let nets: Vec<IpNet> =
                                    w.spec.ip_networks.iter().flatten().map(|c| c.0).collect();
                                let node = w.spec.node.as_deref().unwrap_or_default();
                                bgp.update_workload(&id, Some((node, &nets)));
                            }
                            _ => bgp.update_workload(&id, None),
                        }
                    }
                }
                if Model::wants(key.kind) && self.calculator.update(key, resource) {
                    self.dirty = true;
                }
            }
        }
        self.status.datastore_revision = self.revision;
    }

    /// Notes the addresses an endpoint (of any node) no longer has: an address that leaves
    /// must take its connections with it, here as on its own node (a flow this node's egress
    /// policy accepted must not carry on to the address's next owner).
    fn follow_addresses(
        &mut self,
        key: &twill_shared::resource::Key,
        resource: Option<&twill_shared::resource::Resource>,
    ) {
        let now: BTreeSet<IpAddr> = match resource {
            Some(twill_shared::resource::Resource::WorkloadEndpoint(w)) => w
                .spec
                .ip_networks
                .iter()
                .flatten()
                .map(|c| c.0.addr())
                .collect(),
            _ => BTreeSet::new(),
        };
        let before = if now.is_empty() {
            self.endpoint_addresses.remove(key)
        } else {
            self.endpoint_addresses.insert(key.clone(), now.clone())
        }
        .unwrap_or_default();
        for gone in before.difference(&now) {
            if self.owners.get(gone) == Some(key) {
                self.owners.remove(gone);
            }
            self.released.insert(*gone);
        }
        for address in &now {
            match self.owners.insert(*address, key.clone()) {
                Some(previous) if previous != *key => {
                    self.released.insert(*address);
                }
                _ => {}
            }
        }
    }

    /// Deletes the conntrack entries of addresses that left (after the apply that removed
    /// their endpoints' rules and routes); kept for the next apply if that fails.
    fn forget_released_flows(&mut self) {
        if self.released.is_empty() {
            return;
        }
        let released = std::mem::take(&mut self.released);
        match tokio::task::block_in_place(|| {
            twill_felix::apply::conntrack::delete_flows_of(&released)
        }) {
            Ok(deleted) => {
                tracing::info!(addresses = ?released, deleted, "conntrack entries of released addresses deleted");
                if let Ok(metrics) = self.metrics.lock() {
                    metrics.conntrack_deleted.inc_by(deleted as u64);
                }
            }
            Err(err) => {
                tracing::warn!(addresses = ?released, error = %err, "cannot delete conntrack entries; retrying after the next apply");
                self.released.extend(released);
            }
        }
    }

    /// Reads this node's interface addresses (host endpoints by expectedIPs follow them).
    async fn read_addresses(&mut self) {
        match crate::interfaces::addresses().await {
            Ok(addresses) => {
                if self.calculator.set_host_addresses(addresses) {
                    tracing::info!("this node's interface addresses changed");
                    self.dirty = true;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read this node's addresses"),
        }
    }

    /// `fresh`: read the kernel first (drift repair) rather than trusting the last apply.
    async fn calculate_and_apply(&mut self, fresh: bool) {
        if self.calculator.is_dirty() || !self.computed {
            let started = Instant::now();
            self.calculator.compute();
            self.computed = true;
            if let Ok(metrics) = self.metrics.lock() {
                metrics
                    .calc_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        let applied_revision = self.revision;
        let applied_view = self.view.summary();
        let started = Instant::now();
        let result = self.apply(fresh).await;
        let elapsed = started.elapsed();
        match result {
            Ok(()) => {
                self.retry = None;
                self.forget_released_flows();
                let programmed: BTreeSet<String> = self
                    .calculator
                    .computed()
                    .local
                    .values()
                    .map(|e| e.display())
                    .collect();
                if *self.programmed != programmed {
                    self.programmed = Arc::new(programmed);
                }
                self.dirty = false;
                self.status.applied_revision = applied_revision;
                self.status.applied_view = applied_view;
                self.status.last_error = None;
            }
            Err(err) => {
                let next = self
                    .retry
                    .map_or(Duration::from_millis(500), |d| d * 2)
                    .min(self.options.refresh);
                self.retry = Some(next);
                tracing::error!(error = %err, retry_in = ?next, "apply failed; retrying");
                self.status.apply_errors += 1;
                self.status.last_error = Some(format!("{err:#}"));
                if let Ok(metrics) = self.metrics.lock() {
                    metrics.apply_errors.inc();
                }
            }
        }
        self.record(elapsed);
        self.write_status();
    }

    async fn apply(&mut self, fresh: bool) -> anyhow::Result<()> {
        let computed = self.calculator.computed();
        // The runtime's worker threads are all in this node's network namespace; the apply
        // blocks this one (no copy of the dataplane to hand to another thread).
        let applier = &mut self.applier;
        let quarantined = tokio::task::block_in_place(|| {
            apply_families(applier, &computed.v4, &computed.v6, fresh)
        })?;
        if let Ok(metrics) = self.metrics.lock() {
            metrics.quarantined_chains.set(quarantined.len() as i64);
        }
        self.status.quarantined_chains = quarantined;
        if self.options.mode == Mode::Full {
            let desired: BTreeMap<IpNet, String> = computed
                .local
                .iter()
                .flat_map(|(interface, endpoint)| {
                    endpoint.nets.iter().map(move |n| (*n, interface.clone()))
                })
                .collect();
            let changes = crate::routes::sync(&desired, &mut self.unmanaged_routes)
                .await
                .map_err(anyhow::Error::msg)?;
            if !changes.added.is_empty() || !changes.removed.is_empty() {
                tracing::info!(added = ?changes.added, removed = ?changes.removed, "endpoint routes repaired");
            }
        }
        Ok(())
    }

    /// Brings BGP in line (once in sync: never originate or withdraw from a partial view).
    async fn apply_bgp(&mut self, repair: bool) {
        let Some(bgp) = self.bgp.as_mut() else {
            return;
        };
        bgp.reap().await;
        // Local workload addresses outside this node's blocks were borrowed: host routes.
        let blocks = bgp.own_blocks();
        let borrowed: Vec<IpNet> = if self.computed {
            self.calculator
                .computed()
                .local
                .values()
                .flat_map(|e| e.nets.iter().copied())
                .filter(|net| !blocks.iter().any(|b| b.contains(net)))
                .collect()
        } else {
            Vec::new()
        };
        if !bgp.is_dirty() && !repair && !bgp.borrowed_changed(&borrowed) {
            return;
        }
        if let Some(encap) = self.encap.as_mut() {
            match encap.apply(bgp.cluster()).await {
                Ok(status) => {
                    if let Some(mtu) = status.mtu {
                        if self.status.vxlan_mtu != Some(mtu) {
                            if let Err(err) = write_mtu(&self.options.mtu_file, mtu) {
                                tracing::warn!(path = %self.options.mtu_file.display(), error = %err, "cannot write the pod MTU");
                            }
                        }
                    }
                    self.status.encap_last_error = None;
                    self.status.vxlan_mtu = status.mtu;
                    self.status.encap_routes = status.routes;
                    self.status.ipip_unavailable = status.ipip_unavailable;
                    self.status.encap_warnings = status.warnings;
                    if let Ok(metrics) = self.metrics.lock() {
                        metrics
                            .ipip_unavailable
                            .set(i64::from(status.ipip_unavailable));
                    }
                }
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "encapsulation apply failed; retrying at the next change or refresh");
                    self.status.encap_last_error = Some(format!("{err:#}"));
                }
            }
        }
        match bgp.apply(&borrowed, repair).await {
            Ok(()) => self.status.bgp_last_error = None,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "BGP apply failed; retrying at the next change or refresh");
                self.status.bgp_last_error = Some(format!("{err:#}"));
            }
        }
        self.status.bgp_running = bgp.is_running();
        self.status.bgp_warnings = bgp.warnings();
        self.write_status();
    }

    fn record(&mut self, elapsed: Duration) {
        let computed: &Computed = self.calculator.computed();
        let count_rules = |d: &Dataplane| {
            d.tables
                .values()
                .flat_map(|t| t.chains.values())
                .map(|c| c.rules.len())
                .sum::<usize>()
        };
        let count_members = |d: &Dataplane| d.sets.values().map(|s| s.members.len()).sum::<usize>();
        self.status.in_sync = self.sync.in_sync;
        self.status.last_apply_ms = elapsed.as_secs_f64() * 1000.0;
        self.status.last_apply_at = Some(twill_shared::client::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        ));
        self.status.endpoints = computed.local.len();
        self.status.rules = count_rules(&computed.v4) + count_rules(&computed.v6);
        self.status.ipset_members = count_members(&computed.v4) + count_members(&computed.v6);
        self.status.warnings = computed.warnings.clone();
        self.status.invalid_objects = self.calculator.invalid_objects();
        self.status.policies = self.calculator.policy_count();
        if let Ok(metrics) = self.metrics.lock() {
            metrics.apply_seconds.observe(elapsed.as_secs_f64());
            metrics.rules.set(self.status.rules as i64);
            metrics.ipset_members.set(self.status.ipset_members as i64);
            metrics.endpoints.set(self.status.endpoints as i64);
            metrics.policies.set(self.status.policies as i64);
            metrics
                .invalid_objects
                .set(self.status.invalid_objects.len() as i64);
        }
    }

    /// Publishes readiness and what is programmed to the health endpoints (only when it
    /// changed).
    fn publish_health(&mut self) {
        let not_ready = not_ready(&Readiness {
            in_sync: self.sync.in_sync,
            connected: self.sync.connected,
            resyncing: self.sync.resyncing,
            applied_revision: self.status.applied_revision,
            last_error: self.status.last_error.as_deref(),
        });
        let programmed = self.programmed.clone();
        let current = self.health.borrow().clone();
        let ready = not_ready.is_empty();
        if current.ready == ready
            && current.not_ready == not_ready
            && current.applied_revision == self.status.applied_revision
            && Arc::ptr_eq(&current.programmed, &programmed)
        {
            return;
        }
        let _ = self.health.send(Health {
            ready,
            not_ready,
            applied_revision: self.status.applied_revision,
            programmed,
        });
        if let Ok(metrics) = self.metrics.lock() {
            metrics.ready.set(i64::from(ready));
        }
    }

    /// Changes felix does not follow (IPAM objects, BGP settings) leave the dataplane as it
    /// is: it reflects the newer revision too.
    fn advance(&mut self) {
        let clean = self.sync.in_sync
            && !self.dirty
            && !self.calculator.is_dirty()
            && self.computed
            && self.status.last_error.is_none();
        let view = self.view.summary();
        if clean
            && self.status.applied_revision > 0
            && (self.status.applied_revision < self.revision || self.status.applied_view != view)
        {
            self.status.applied_revision = self.revision;
            self.status.applied_view = view;
            self.write_status();
        }
    }

    fn write_status(&mut self) {
        self.status.in_sync = self.sync.in_sync;
        if let Err(err) = self.status.write(&self.options.status_file) {
            tracing::warn!(path = %self.options.status_file.display(), error = %err, "cannot write the status file");
        }
    }
}

/// The syncer's status as the agent acts on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SyncGate {
    /// In sync at least once: the first apply may happen.
    in_sync: bool,
    /// A relist is under way after the first sync: nothing is calculated until it ends, so
    /// the re-listed view is applied as one step (never an intermediate state).
    resyncing: bool,
    /// The syncer reaches the datastore (false while it cannot: not ready).
    connected: bool,
}

/// What a status change means to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncEvent {
    /// In sync (again): calculate and apply.
    InSync,
    /// The datastore was reachable and no longer is.
    Lost,
}

impl SyncGate {
    fn on_status(&mut self, status: SyncStatus) -> Option<SyncEvent> {
        match status {
            SyncStatus::InSync => {
                *self = SyncGate {
                    in_sync: true,
                    resyncing: false,
                    connected: true,
                };
                Some(SyncEvent::InSync)
            }
            SyncStatus::ResyncInProgress => {
                self.resyncing = self.in_sync;
                None
            }
            SyncStatus::WaitForDatastore => {
                let was = self.connected;
                self.connected = false;
                was.then_some(SyncEvent::Lost)
            }
        }
    }

    /// Whether the agent may calculate and apply: in sync and not in the middle of a relist.
    fn settled(&self) -> bool {
        self.in_sync && !self.resyncing
    }
}

/// What readiness depends on.
struct Readiness<'a> {
    in_sync: bool,
    connected: bool,
    resyncing: bool,
    applied_revision: i64,
    last_error: Option<&'a str>,
}

/// Why the agent is not ready for pods (empty: ready): it must be in sync with the datastore
/// and reach it, not be in the middle of a relist, and have applied since it started with
/// its last apply successful.
fn not_ready(readiness: &Readiness<'_>) -> String {
    if !readiness.in_sync {
        "not yet in sync with the datastore".to_string()
    } else if !readiness.connected {
        "the datastore cannot be reached".to_string()
    } else if readiness.resyncing {
        "listing the datastore again".to_string()
    } else if readiness.applied_revision == 0 {
        "nothing applied yet".to_string()
    } else if let Some(err) = readiness.last_error {
        format!("the last apply failed: {err}")
    } else {
        String::new()
    }
}

/// A stored object as felix and BGP take it: decoded and validated as `twillctl apply` would
/// (an object another tool wrote may be neither), or the reason it is invalid.
/// The name BGP's model knows an object by: `namespace/name` for namespaced kinds.
fn bgp_name(key: &twill_shared::resource::Key) -> String {
    match &key.namespace {
        Some(namespace) => format!("{namespace}/{}", key.name),
        None => key.name.clone(),
    }
}

fn admit(
    key: &twill_shared::resource::Key,
    value: Option<serde_json::Value>,
    revision: i64,
) -> (
    Option<twill_shared::resource::Resource>,
    Option<twill_felix::invalid::Invalid>,
) {
    let Some(value) = value else {
        return (None, None);
    };
    let stored = Stored {
        key: key.clone(),
        value: value.clone(),
        revision,
    };
    let reason = match twill_shared::client::decode(stored) {
        // IPAM's own objects are written by IPAM only (validation refuses them from users).
        Ok(resource)
            if matches!(
                key.kind,
                Kind::IpamBlock | Kind::BlockAffinity | Kind::IpamHandle
            ) =>
        {
            return (Some(resource), None);
        }
        Ok(resource) => {
            let errors = twill_shared::resource::validate::validate(&resource);
            if errors.is_empty() {
                return (Some(resource), None);
            }
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }
        Err(err) => err.to_string(),
    };
    (None, Some(twill_felix::invalid::Invalid { reason, value }))
}

/// Writes the MTU pods should use, atomically.
fn write_mtu(path: &std::path::Path, mtu: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, format!("{mtu}\n"))?;
    std::fs::rename(&temporary, path)
}

/// Applies IPv4, then IPv6 where the kernel has it; returns the chains the kernel refused
/// (set aside, each dropping everything), as `family chain: reason`.
fn apply_families(
    applier: &mut twill_felix::apply::Applier,
    v4: &Dataplane,
    v6: &Dataplane,
    fresh: bool,
) -> anyhow::Result<Vec<String>> {
    let apply = |applier: &mut twill_felix::apply::Applier, family, dataplane| {
        if fresh {
            applier.apply_fresh(family, dataplane)
        } else {
            applier.apply(family, dataplane)
        }
    };
    let mut quarantined = Vec::new();
    let mut note = |family: &str, stats: &twill_felix::apply::ApplyStats| {
        quarantined.extend(
            stats
                .quarantined
                .iter()
                .map(|q| format!("{family} {}: {}", q.chain, q.reason)),
        );
    };
    let stats = apply(applier, Family::V4, v4)?;
    if !stats.wrote_nothing() {
        tracing::info!(?stats, "applied IPv4");
    }
    note("IPv4", &stats);
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        let stats = apply(applier, Family::V6, v6)?;
        if !stats.wrote_nothing() {
            tracing::info!(?stats, "applied IPv6");
        }
        note("IPv6", &stats);
    }
    Ok(quarantined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_is_applied_as_one_step() {
        let mut gate = SyncGate::default();
        assert!(!gate.settled(), "nothing before the first sync");
        gate.on_status(SyncStatus::ResyncInProgress);
        assert!(!gate.settled());
        assert_eq!(gate.on_status(SyncStatus::InSync), Some(SyncEvent::InSync));
        assert!(gate.settled());
        // A relist after a compaction: its updates are held until it ends.
        gate.on_status(SyncStatus::ResyncInProgress);
        assert!(!gate.settled(), "no calculation in the middle of a relist");
        gate.on_status(SyncStatus::InSync);
        assert!(gate.settled());
        // A lost connection keeps the dataplane and repairs drift (still settled), and is
        // said once.
        assert_eq!(
            gate.on_status(SyncStatus::WaitForDatastore),
            Some(SyncEvent::Lost)
        );
        assert_eq!(gate.on_status(SyncStatus::WaitForDatastore), None);
        assert!(gate.settled() && !gate.connected);
    }

    #[test]
    fn ready_only_when_in_sync_connected_settled_and_applied_without_error() {
        let ready = Readiness {
            in_sync: true,
            connected: true,
            resyncing: false,
            applied_revision: 5,
            last_error: None,
        };
        assert_eq!(not_ready(&ready), "");
        let cases = [
            (
                Readiness {
                    in_sync: false,
                    ..ready
                },
                "not yet in sync",
            ),
            (
                Readiness {
                    connected: false,
                    ..ready
                },
                "cannot be reached",
            ),
            (
                Readiness {
                    resyncing: true,
                    ..ready
                },
                "listing the datastore again",
            ),
            (
                Readiness {
                    applied_revision: 0,
                    ..ready
                },
                "nothing applied yet",
            ),
            (
                Readiness {
                    last_error: Some("iptables-restore failed"),
                    ..ready
                },
                "the last apply failed: iptables-restore failed",
            ),
        ];
        for (readiness, reason) in cases {
            assert!(not_ready(&readiness).contains(reason), "{reason}");
        }
    }
}
