//! What twill-node reports about itself: the status file (read by `twillctl node status` and
//! `twillctl lab sync`) and the Prometheus metrics.

use std::path::Path;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// The status file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The node.
    pub node: String,
    /// `full` or `policy-only`.
    pub mode: String,
    /// The datastore URL.
    pub datastore: String,
    /// Whether the syncer is in sync with the datastore.
    pub in_sync: bool,
    /// The newest datastore revision seen.
    pub datastore_revision: i64,
    /// The datastore revision the dataplane reflects (0: nothing applied yet).
    pub applied_revision: i64,
    /// Which objects, at which revisions, the dataplane reflects
    /// ([`twill_shared::syncer::ViewDigest`]'s summary; empty: nothing applied yet).
    #[serde(default)]
    pub applied_view: String,
    /// Duration of the last apply, in milliseconds.
    pub last_apply_ms: f64,
    /// When the last apply finished (RFC 3339).
    pub last_apply_at: Option<String>,
    /// Applies that failed since start.
    pub apply_errors: u64,
    /// The last apply error, if the last apply failed.
    pub last_error: Option<String>,
    /// Local workload endpoints.
    pub endpoints: usize,
    /// Policies known.
    pub policies: usize,
    /// Rules in Twill's chains (both families).
    pub rules: usize,
    /// Members of Twill's IP sets (both families).
    pub ipset_members: usize,
    /// Resyncs of the syncer since start.
    pub resyncs: u64,
    /// Warnings for people (unenforced fields, missing referents).
    pub warnings: Vec<String>,
    /// Objects in the datastore that failed to decode or validate, and what each does
    /// meanwhile (fail closed).
    #[serde(default)]
    pub invalid_objects: Vec<String>,
    /// Chains the kernel refused, set aside (each dropping everything: fail closed), with
    /// what the kernel said.
    #[serde(default)]
    pub quarantined_chains: Vec<String>,
    /// Process ID, so a reader can tell a dead agent's file.
    pub pid: u32,
    /// Whether the BGP speaker runs (full mode, a Node resource with a BGP address).
    #[serde(default)]
    pub bgp_running: bool,
    /// The last error bringing BGP in line with the datastore, if the last attempt failed.
    #[serde(default)]
    pub bgp_last_error: Option<String>,
    /// What the BGP resources ask that Twill cannot honour, in words.
    #[serde(default)]
    pub bgp_warnings: Vec<String>,
    /// The VXLAN device's MTU, when it is up.
    #[serde(default)]
    pub vxlan_mtu: Option<u32>,
    /// Routes to other nodes' blocks through the encapsulation (protocol 212).
    #[serde(default)]
    pub encap_routes: usize,
    /// IP-in-IP pools exist but this kernel has no ipip module.
    #[serde(default)]
    pub ipip_unavailable: bool,
    /// The last encapsulation error, if the last attempt failed.
    #[serde(default)]
    pub encap_last_error: Option<String>,
    /// What the encapsulation could not do, in words.
    #[serde(default)]
    pub encap_warnings: Vec<String>,
}

impl Status {
    /// Writes the file atomically (a new file renamed over the old).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = path.with_extension("json.new");
        std::fs::write(
            &temporary,
            serde_json::to_vec_pretty(self).expect("status serializes"),
        )?;
        std::fs::rename(&temporary, path)
    }

    /// Reads a status file.
    pub fn read(path: &Path) -> std::io::Result<Status> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
    }
}

/// The metrics twill-node exports.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Apply durations, seconds.
    pub apply_seconds: Histogram,
    /// Calculation durations, seconds.
    pub calc_seconds: Histogram,
    /// Failed applies.
    pub apply_errors: Counter,
    /// Syncer resyncs.
    pub resyncs: Counter,
    /// Rules in Twill's chains.
    pub rules: Gauge,
    /// IP set members.
    pub ipset_members: Gauge,
    /// Local endpoints.
    pub endpoints: Gauge,
    /// Policies.
    pub policies: Gauge,
    /// 1 when in sync and applied.
    pub ready: Gauge,
    /// 1 when IP-in-IP pools exist and this kernel has no ipip module.
    pub ipip_unavailable: Gauge,
    /// Conntrack entries deleted because their address left its endpoint.
    pub conntrack_deleted: Counter,
    /// Objects that failed to decode or validate (each standing in fail-closed).
    pub invalid_objects: Gauge,
    /// Chains the kernel refused, set aside.
    pub quarantined_chains: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("twill_felix");
        let apply_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let calc_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let metrics = Metrics {
            apply_seconds,
            calc_seconds,
            apply_errors: Counter::default(),
            resyncs: Counter::default(),
            rules: Gauge::default(),
            ipset_members: Gauge::default(),
            endpoints: Gauge::default(),
            policies: Gauge::default(),
            ready: Gauge::default(),
            ipip_unavailable: Gauge::default(),
            conntrack_deleted: Counter::default(),
            invalid_objects: Gauge::default(),
            quarantined_chains: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "apply_duration_seconds",
            "Time to bring the kernel to the desired state",
            metrics.apply_seconds.clone(),
        );
        registry.register(
            "calc_duration_seconds",
            "Time to calculate the desired dataplane",
            metrics.calc_seconds.clone(),
        );
        registry.register(
            "apply_errors",
            "Applies that failed",
            metrics.apply_errors.clone(),
        );
        registry.register(
            "resyncs",
            "Times the syncer listed the datastore again",
            metrics.resyncs.clone(),
        );
        registry.register("rules", "Rules in Twill's chains", metrics.rules.clone());
        registry.register(
            "ipset_members",
            "Members of Twill's IP sets",
            metrics.ipset_members.clone(),
        );
        registry.register(
            "local_endpoints",
            "Workload endpoints on this node",
            metrics.endpoints.clone(),
        );
        registry.register("policies", "Policies known", metrics.policies.clone());
        registry.register(
            "ready",
            "1 when in sync and the dataplane is applied",
            metrics.ready.clone(),
        );
        registry.register(
            "encap_ipip_unavailable",
            "1 when IP-in-IP pools exist but this kernel has no ipip module",
            metrics.ipip_unavailable.clone(),
        );
        registry.register(
            "conntrack_deleted",
            "Conntrack entries deleted because their address left its endpoint",
            metrics.conntrack_deleted.clone(),
        );
        registry.register(
            "invalid_objects",
            "Objects in the datastore that failed to decode or validate (each fails closed)",
            metrics.invalid_objects.clone(),
        );
        registry.register(
            "quarantined_chains",
            "Chains the kernel refused, set aside as a single DROP each",
            metrics.quarantined_chains.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
