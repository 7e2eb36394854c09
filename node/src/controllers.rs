//! `twill-kube-controllers`: Calico kube-controllers' IPAM jobs on the Kubernetes datastore.
//!
//! - When a Kubernetes Node is deleted, its addresses that nothing uses any more are released
//!   at once (no allocation can be in flight on a node that is gone), then its empty blocks
//!   and its block affinities go ([`twill_ipam::gc::release_deleted_nodes`]); a Node deletion
//!   starts a pass at once, and every reconcile period a pass catches what happened while no
//!   replica ran.
//! - A handle whose pod is gone (no workload endpoint holds it) is released once it has
//!   looked leaked for the leak grace period ([`twill_ipam::gc::Gc`]): an allocation whose
//!   CNI ADD is still running is never taken for a leak.
//! - Replicas elect a leader through a `coordination.k8s.io` Lease ([`Elector`]): only the
//!   leader acts, and only while its last renewal is younger than the renew deadline, which
//!   is shorter than the lease duration another replica waits before taking over — so two
//!   replicas never act at once, whatever their clocks say.
//! - `/livez`, `/readyz`, `/metrics` as twill-node's ([`crate::health`]).
//!
//! Settings come from the KubeControllersConfiguration `default`
//! (`spec.controllers.node.reconcilerPeriod`, `leakGracePeriod`), unless the command line
//! sets them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use twill_shared::datastore::kubernetes::KubeStore;
use twill_shared::datastore::{Datastore, DatastoreUrl};
use twill_shared::resource::config::NodeControllerSettings;
use twill_shared::resource::{Kind, Resource};
use twill_shared::syncer::{driver, Update};

use crate::health::{self, Health, Heartbeat};

/// Calico's defaults.
const DEFAULT_RECONCILE: Duration = Duration::from_secs(300);
const DEFAULT_LEAK_GRACE: Duration = Duration::from_secs(900);

/// How the controllers run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `kubernetes` or `kubernetes:KUBECONFIG`.
    pub datastore: String,
    /// This replica's name in the Lease (default: the host name).
    pub identity: String,
    /// The Lease's namespace and name.
    pub lease_namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// How long a leader's Lease holds without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops acting (shorter than
    /// `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the Lease is renewed or tried.
    pub retry_period: Duration,
    /// Where `/livez`, `/readyz` and `/metrics` listen.
    pub health_listen: String,
    /// Full pass every … (None: the configuration's `reconcilerPeriod`, else 5 min).
    pub reconcile_period: Option<Duration>,
    /// How long a handle must look leaked before it is released (None: the configuration's
    /// `leakGracePeriod`, else 15 min).
    pub leak_grace_period: Option<Duration>,
    /// `/livez` fails when the main loop makes no progress for this long.
    pub watchdog: Duration,
}

/// The controllers' metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    leader: Gauge,
    leader_transitions: Counter,
    passes: Counter,
    pass_errors: Counter,
    handles_released: Counter,
    blocks_released: Counter,
    affinities_released: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("twill_kube_controllers");
        let metrics = Metrics {
            registry: Registry::default(),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
            passes: Counter::default(),
            pass_errors: Counter::default(),
            handles_released: Counter::default(),
            blocks_released: Counter::default(),
            affinities_released: Counter::default(),
        };
        registry.register(
            "leader",
            "1 while this replica leads (and may act)",
            metrics.leader.clone(),
        );
        registry.register(
            "leader_transitions",
            "Times this replica became the leader",
            metrics.leader_transitions.clone(),
        );
        registry.register("passes", "IPAM passes run", metrics.passes.clone());
        registry.register(
            "pass_errors",
            "IPAM passes that failed",
            metrics.pass_errors.clone(),
        );
        registry.register(
            "handles_released",
            "Handles released (leaked, or a deleted node's)",
            metrics.handles_released.clone(),
        );
        registry.register(
            "blocks_released",
            "Empty blocks of deleted nodes released",
            metrics.blocks_released.clone(),
        );
        registry.register(
            "affinities_released",
            "Block affinities of deleted nodes removed",
            metrics.affinities_released.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl health::Exposition for Metrics {
    fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Leader election through a `coordination.k8s.io/v1` Lease, as client-go does it: a
/// replica takes a Lease whose record has not changed for its duration, measured on its own
/// clock from when it last saw the record change (never comparing clocks across machines).
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew_deadline: Duration,
    /// The record last seen (holder, renew time, transitions) and when it was first seen.
    observed: Option<((String, String, i32), Instant)>,
    /// When this replica last renewed its own Lease.
    renewed: Option<Instant>,
}

impl Elector {
    /// An elector for Lease `namespace/name`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
        renew_deadline: Duration,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            renew_deadline,
            observed: None,
            renewed: None,
        }
    }

    /// Whether this replica may act now: it leads and renewed within the renew deadline.
    pub fn may_act(&self) -> bool {
        self.renewed
            .is_some_and(|renewed| renewed.elapsed() < self.renew_deadline)
    }

    /// Takes the Lease if it is free or expired, or renews it if it is ours. Returns
    /// whether this replica holds it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(self.won()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (
            holder.clone(),
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            spec.lease_transitions.unwrap_or(0),
        );
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != record)
        {
            self.observed = Some((record, Instant::now()));
        }
        let ours = holder == self.identity;
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= self.duration);
        if !ours && !holder.is_empty() && !expired {
            self.renewed = None;
            return Ok(false);
        }
        let mut lease = current.clone();
        let mut spec = spec;
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        lease.spec = Some(spec);
        // A replace carries the resourceVersion read: another replica's write in between
        // makes it fail (409), and that replica leads.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(self.won()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.renewed = None;
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    fn won(&mut self) -> bool {
        self.renewed = Some(Instant::now());
        true
    }

    /// Gives the Lease up (on a clean stop) so another replica takes over without waiting
    /// out the lease duration.
    pub async fn release(&mut self) {
        if self.renewed.take().is_none() {
            return;
        }
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            if let Some(spec) = lease.spec.as_mut() {
                if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                    spec.holder_identity = None;
                    let _ = self
                        .api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await;
                }
            }
        }
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let DatastoreUrl::Kubernetes { kubeconfig } = DatastoreUrl::parse(&options.datastore)? else {
        anyhow::bail!(
            "twill-kube-controllers works on the Kubernetes datastore (--datastore kubernetes), \
             not {}",
            options.datastore
        );
    };
    let listener = tokio::net::TcpListener::bind(&options.health_listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.health_listen))?;
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let (health_sender, health_receiver) = watch::channel(Health {
        not_ready: "starting: not yet connected to the API server".into(),
        ..Health::default()
    });
    let heartbeat = Arc::new(Heartbeat::new(options.watchdog));
    heartbeat.beat();
    tokio::spawn(health::serve(
        listener,
        health_receiver,
        heartbeat.clone(),
        metrics.clone(),
    ));
    let kube_store = KubeStore::connect(&options.datastore, kubeconfig)
        .await
        .with_context(|| format!("cannot reach the API server ({})", options.datastore))?;
    let client = kube_store.client();
    let store: Arc<dyn Datastore> = Arc::new(kube_store);
    let mut elector = Elector::new(
        client,
        &options.lease_namespace,
        &options.lease_name,
        &options.identity,
        options.lease_duration,
        options.renew_deadline,
    );
    // One syncer per kind: each lists and watches its kind alone (all this account may read).
    let mut nodes = driver::spawn(store.clone(), vec![Kind::Node]);
    let mut configurations = driver::spawn(store.clone(), vec![Kind::KubeControllersConfiguration]);
    let mut configured: Option<NodeControllerSettings> = None;
    let ipam = twill_ipam::runtime::Ipam::new(store.clone(), &options.identity, None);
    let mut gc = twill_ipam::gc::Gc::default();
    let mut retry = tokio::time::interval(options.retry_period);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut leading = false;
    let mut due = true; // a pass at once on becoming leader
    let mut last_pass: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let mut connected = false;
    tracing::info!(identity = %options.identity, lease = %format!("{}/{}", options.lease_namespace, options.lease_name), "started");
    loop {
        tokio::select! {
            _ = retry.tick() => {
                match elector.try_acquire_or_renew().await {
                    Ok(held) => {
                        connected = true;
                        if held && !leading {
                            tracing::info!("became the leader");
                            due = true;
                            if let Ok(m) = metrics.lock() { m.leader_transitions.inc(); }
                        }
                        if !held && leading {
                            tracing::warn!("lost the lease: another replica leads");
                        }
                        leading = held;
                    }
                    Err(err) => {
                        connected = false;
                        tracing::warn!(error = %err, "cannot renew or take the lease");
                    }
                }
                if leading && !elector.may_act() {
                    tracing::warn!("no renewal within the renew deadline: standing down");
                    leading = false;
                }
            }
            update = nodes.recv() => {
                let Some(update) = update else { anyhow::bail!("the syncer stopped") };
                if let Update::Changed { key, value: None, .. } = update {
                    tracing::info!(node = %key.name, "a node was deleted");
                    due = true;
                }
            }
            update = configurations.recv() => {
                let Some(update) = update else { anyhow::bail!("the syncer stopped") };
                if let Update::Changed { key, value, .. } = update {
                    if key.name == "default" {
                        configured = node_settings(value);
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        heartbeat.beat();
        if let Ok(m) = metrics.lock() {
            m.leader.set(i64::from(leading && elector.may_act()));
        }
        let settings = Settings::of(&options, configured.as_ref());
        let period_over = last_pass.is_none_or(|at| at.elapsed() >= settings.reconcile);
        // The leak collector needs passes more often than its grace period to honour it.
        let gc_due = last_pass.is_none_or(|at| at.elapsed() >= settings.leak_grace / 4);
        if leading && elector.may_act() && (due || period_over || gc_due) {
            due = false;
            last_pass = Some(Instant::now());
            let outcome = pass(&store, &ipam, &mut gc, &settings, &elector, &metrics).await;
            if let Ok(m) = metrics.lock() {
                m.passes.inc();
                if outcome.is_err() {
                    m.pass_errors.inc();
                }
            }
            last_error = outcome.err().map(|err| format!("{err:#}"));
            if let Some(err) = &last_error {
                tracing::warn!(error = %err, "IPAM pass failed; trying again next period");
                due = true;
            }
        }
        let not_ready = if !connected {
            "cannot reach the API server".to_string()
        } else {
            match (&last_error, leading) {
                (Some(err), true) => format!("the last IPAM pass failed: {err}"),
                _ => String::new(),
            }
        };
        let health = Health {
            ready: not_ready.is_empty(),
            not_ready,
            ..Health::default()
        };
        if *health_sender.borrow() != health {
            let _ = health_sender.send(health);
        }
    }
    tracing::info!("stopping; giving the lease up");
    elector.release().await;
    Ok(())
}

/// The settings a pass uses.
#[derive(Debug, Clone, Copy)]
struct Settings {
    reconcile: Duration,
    leak_grace: Duration,
}

impl Settings {
    /// From the command line, else the KubeControllersConfiguration `default`, else Calico's
    /// defaults.
    fn of(options: &Options, configured: Option<&NodeControllerSettings>) -> Settings {
        let duration = |value: Option<&twill_shared::resource::fields::Duration>| {
            value.map(|d| Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(u64::MAX)))
        };
        Settings {
            reconcile: options
                .reconcile_period
                .or_else(|| duration(configured.and_then(|n| n.reconciler_period.as_ref())))
                .unwrap_or(DEFAULT_RECONCILE),
            leak_grace: options
                .leak_grace_period
                .or_else(|| duration(configured.and_then(|n| n.leak_grace_period.as_ref())))
                .unwrap_or(DEFAULT_LEAK_GRACE),
        }
    }
}

/// The node controller's settings in a KubeControllersConfiguration (None when it is gone or
/// does not decode: the defaults then).
fn node_settings(value: Option<serde_json::Value>) -> Option<NodeControllerSettings> {
    let value = value?;
    match Resource::decode(Kind::KubeControllersConfiguration, value) {
        Ok(Resource::KubeControllersConfiguration(config)) => {
            config.spec.controllers.and_then(|c| c.node)
        }
        Ok(_) => None,
        Err(err) => {
            tracing::warn!(error = %err, "the KubeControllersConfiguration does not decode; using the defaults");
            None
        }
    }
}

/// One IPAM pass: deleted nodes first, then leaked handles past their grace period.
async fn pass(
    store: &Arc<dyn Datastore>,
    ipam: &twill_ipam::runtime::Ipam,
    gc: &mut twill_ipam::gc::Gc,
    settings: &Settings,
    elector: &Elector,
    metrics: &Mutex<Metrics>,
) -> anyhow::Result<()> {
    let cleanup = twill_ipam::gc::release_deleted_nodes(store).await?;
    if let Ok(m) = metrics.lock() {
        m.handles_released.inc_by(cleanup.handles.len() as u64);
        m.blocks_released.inc_by(cleanup.blocks.len() as u64);
        m.affinities_released.inc_by(cleanup.affinities as u64);
    }
    if !elector.may_act() {
        return Ok(());
    }
    let released = gc
        .run(
            ipam,
            settings.leak_grace,
            twill_ipam::runtime::now_since_epoch(),
        )
        .await?;
    if let Ok(m) = metrics.lock() {
        m.handles_released.inc_by(released.len() as u64);
    }
    Ok(())
}
