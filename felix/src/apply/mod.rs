//! Applying (edge, feature `runtime`): read the kernel's state, [`plan`](crate::plan) the
//! difference, run the scripts.
//!
//! One [`Applier::apply`] for a family:
//! 0. Between refreshes, with the dataplane last applied at hand: only the
//!    [delta](crate::plan::plan_delta) is written, nothing read. Otherwise (the first apply,
//!    a refresh, a delta that failed or needs the kernel's view):
//! 1. `ipset save` and `iptables-save` (all tables: one dump each is the whole cost of the
//!    steady state).
//! 2. Only if a set changes type or family: empty the chains that use it and dump again.
//! 3. `ipset restore -exist` of the plan's `before` script.
//! 4. `iptables-restore --noflush --wait=N` for each table that is desired or holds Twill's
//!    objects and differs (atomic per table).
//! 5. `ipset restore -exist` of the `after` script (destroy sets nothing refers to now).
//!
//! Everything runs synchronously in the calling thread's network namespace (children inherit
//! it); an async caller uses `spawn_blocking` on a thread that is in the right namespace.
//! A failed step returns its error and leaves the rest for the next apply, which starts again
//! from a fresh dump.

mod backend;
mod command;
pub mod conntrack;
mod quarantine;

use std::collections::BTreeSet;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

pub use backend::{Backend, BackendChoice, BACKEND_ENV};
pub use quarantine::Quarantined;

use crate::ir::{Dataplane, Family, Table};
use crate::plan::{plan_sets, plan_table, plan_unreference, tables_with_twill_objects};
use command::run;

/// How the applier finds its backend and waits for the xtables lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplierConfig {
    /// The iptables backend, or detection.
    pub backend: BackendChoice,
    /// How long iptables-restore waits for the xtables lock (legacy only; nft needs none).
    pub lock_timeout: Duration,
}

impl Default for ApplierConfig {
    fn default() -> ApplierConfig {
        ApplierConfig {
            backend: BackendChoice::Auto,
            lock_timeout: Duration::from_secs(10),
        }
    }
}

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Chains declared: created, rewritten or emptied.
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// Rules appended or inserted (hooks).
    pub rules_written: usize,
    /// Rules deleted one by one (misplaced or unwanted hooks).
    pub rules_deleted: usize,
    /// Sets created (temporary ones included).
    pub sets_created: usize,
    /// Sets destroyed.
    pub sets_destroyed: usize,
    /// Members added.
    pub members_added: usize,
    /// Members removed.
    pub members_removed: usize,
    /// Wall time of the apply, reads included.
    pub duration: Duration,
    /// Chains the kernel refused, set aside (each now a single DROP: fail closed).
    pub quarantined: Vec<Quarantined>,
}

impl ApplyStats {
    /// Whether the apply only read: the kernel was already as desired.
    pub fn wrote_nothing(&self) -> bool {
        ApplyStats {
            duration: Duration::ZERO,
            quarantined: Vec::new(),
            ..self.clone()
        } == ApplyStats::default()
    }

    fn count_iptables(&mut self, script: &str) {
        self.chains_written += count(script, ":");
        self.chains_deleted += count(script, "-X ");
        self.rules_written += count(script, "-A ") + count(script, "-I ");
        self.rules_deleted += count(script, "-D ");
    }

    fn count_ipset(&mut self, script: &str) {
        self.sets_created += count(script, "create ");
        self.sets_destroyed += count(script, "destroy ");
        self.members_added += count(script, "add ");
        self.members_removed += count(script, "del ");
    }
}

fn count(script: &str, prefix: &str) -> usize {
    script.lines().filter(|l| l.starts_with(prefix)).count()
}

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A program could not be started or fed (not installed, not executable).
    #[error("could not run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}{}", at_line(.line.as_deref()))]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it said.
        stderr: String,
        /// The script line it named, if it named one.
        line: Option<String>,
    },
    /// More chains were refused in one apply than are set aside.
    #[error("the kernel refused too many of the {family:?} chains; nothing more is set aside")]
    TooManyRefused {
        /// The family.
        family: Family,
    },
    /// The configured backend is neither `nft`, `legacy` nor `auto`.
    #[error("unknown iptables backend {value:?} (expected nft, legacy or auto)")]
    UnknownBackend {
        /// The value given.
        value: String,
    },
}

fn at_line(line: Option<&str>) -> String {
    line.map(|l| format!(" (at `{l}`)")).unwrap_or_default()
}

/// Programs the kernel of the calling thread's network namespace.
#[derive(Debug)]
pub struct Applier {
    backend: Backend,
    lock_timeout: Duration,
    /// Per family, the dataplane the last apply wrote (exactly): the next change is planned
    /// against it without reading the kernel; `apply_fresh` reads the kernel again.
    last: std::collections::BTreeMap<Family, Dataplane>,
    /// Chains the kernel refused, set aside.
    quarantine: quarantine::Quarantine,
}

impl Applier {
    /// An applier with the configured backend, detecting it if asked (which runs the save
    /// programs of both backends).
    pub fn new(config: &ApplierConfig) -> Applier {
        Applier {
            backend: Backend::detect(config.backend),
            lock_timeout: config.lock_timeout,
            last: std::collections::BTreeMap::new(),
            quarantine: quarantine::Quarantine::default(),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Make the kernel's tables and sets of `family` exactly `dataplane` (Twill's objects
    /// only), writing only what differs from what the last apply wrote (the kernel is read
    /// when there is no last apply, or when planning against it failed).
    ///
    /// A policy, profile or workload endpoint chain whose rules the kernel refuses is set
    /// aside (one DROP in its place) and the rest applied: [`ApplyStats::quarantined`].
    pub fn apply(
        &mut self,
        family: Family,
        dataplane: &Dataplane,
    ) -> Result<ApplyStats, ApplyError> {
        self.isolating(family, dataplane, false)
    }

    /// As [`Applier::apply`], reading the kernel first: drift repair.
    pub fn apply_fresh(
        &mut self,
        family: Family,
        dataplane: &Dataplane,
    ) -> Result<ApplyStats, ApplyError> {
        self.isolating(family, dataplane, true)
    }

    /// Applies, setting aside each chain the kernel refuses (at most 16 per apply).
    fn isolating(
        &mut self,
        family: Family,
        dataplane: &Dataplane,
        fresh: bool,
    ) -> Result<ApplyStats, ApplyError> {
        let mut fresh = fresh;
        for _ in 0..16 {
            let (replaced, quarantined) = self.quarantine.apply_to(family, dataplane);
            let desired = replaced.as_ref().unwrap_or(dataplane);
            let outcome = if fresh {
                self.last.remove(&family);
                self.apply_with(family, desired)
            } else {
                self.apply_once(family, desired)
            };
            let err = match outcome {
                Ok(mut stats) => {
                    stats.quarantined = quarantined;
                    return Ok(stats);
                }
                Err(err) => err,
            };
            let named = match &err {
                ApplyError::Failed {
                    line: Some(line), ..
                } => quarantine::chain_of_line(line).map(str::to_owned),
                _ => None,
            };
            // A refusal the kernel reports at COMMIT (or without a line) names no chain: find
            // it by setting chains aside until the apply goes through.
            let refused = match named {
                Some(chain) => Some(chain),
                None if matches!(err, ApplyError::Failed { .. }) => {
                    self.bisect(family, desired, &quarantined)
                }
                None => None,
            };
            let Some(chain) = refused else {
                return Err(err);
            };
            if !self
                .quarantine
                .add(family, desired, &chain, &err.to_string())
            {
                return Err(err);
            }
            tracing::error!(?family, chain, error = %err, "the kernel refused a chain: set aside (it drops everything) and the rest applied");
            // The failed attempt may have left part of its work: read the kernel again.
            fresh = true;
        }
        Err(ApplyError::TooManyRefused { family })
    }

    /// The chain, among those that may be set aside, whose rules make the apply fail: None
    /// when setting all of them aside does not help. A binary search keeping two facts true:
    /// with `outside` aside the apply fails, with `outside` and `suspects` aside it works; it
    /// ends on one suspect, a culprit. Each step is a real apply (a failed one changes
    /// nothing: restores are atomic per table; one that works only has more chains dropping
    /// everything than needed, until the next).
    fn bisect(
        &mut self,
        family: Family,
        desired: &Dataplane,
        aside: &[Quarantined],
    ) -> Option<String> {
        let mut suspects = quarantine::candidates(desired, aside);
        let mut outside: Vec<String> = Vec::new();
        let works = |this: &mut Applier, chains: Vec<String>| {
            this.last.remove(&family);
            this.apply_with(family, &quarantine::with_stand_ins(desired, &chains))
                .is_ok()
        };
        if suspects.is_empty() || !works(self, suspects.clone()) {
            return None;
        }
        while suspects.len() > 1 {
            let rest = suspects.split_off(suspects.len() / 2);
            let trial: Vec<String> = outside.iter().chain(&suspects).cloned().collect();
            if !works(self, trial) {
                // A culprit is in `rest`, with the first half aside from now on.
                outside.append(&mut suspects);
                suspects = rest;
            }
        }
        suspects.pop()
    }

    fn apply_once(
        &mut self,
        family: Family,
        dataplane: &Dataplane,
    ) -> Result<ApplyStats, ApplyError> {
        if let Some(mut last) = self.last.remove(&family) {
            if let Some(delta) = crate::plan::plan_delta(family, &last, dataplane) {
                match self.apply_delta(family, &delta) {
                    Ok(stats) => {
                        crate::plan::advance(&mut last, dataplane, &delta);
                        self.last.insert(family, last);
                        return Ok(stats);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "applying against the last state failed; reading the kernel")
                    }
                }
            }
        }
        self.apply_with(family, dataplane)
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the edge measures the apply's duration"
    )]
    fn apply_delta(
        &mut self,
        family: Family,
        delta: &crate::plan::Delta,
    ) -> Result<ApplyStats, ApplyError> {
        let started = Instant::now();
        let mut stats = ApplyStats::default();
        self.ipset_restore(&delta.sets_before, &mut stats)?;
        for (table, script) in &delta.tables {
            tracing::debug!(table, script, "restoring");
            stats.count_iptables(script);
            self.restore(family, script)?;
        }
        self.ipset_restore(&delta.sets_after, &mut stats)?;
        stats.duration = started.elapsed();
        if !stats.wrote_nothing() {
            tracing::debug!(?family, ?stats, "applied a change");
        }
        Ok(stats)
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the edge measures the apply's duration"
    )]
    fn apply_with(
        &mut self,
        family: Family,
        dataplane: &Dataplane,
    ) -> Result<ApplyStats, ApplyError> {
        let started = Instant::now();
        let mut stats = ApplyStats::default();
        let (observed_tables, observed_sets) = (self.save(family)?, run("ipset", &["save"], None)?);
        let set_plan = plan_sets(family, &dataplane.sets, &observed_sets);
        let mut dump = observed_tables;
        if !set_plan.recreate.is_empty() {
            for table in tables_with_twill_objects(&dump) {
                if let Some(script) = plan_unreference(&table, &dump, &set_plan.recreate) {
                    stats.count_iptables(&script);
                    self.restore(family, &script)?;
                }
            }
            dump = self.save(family)?;
        }
        self.ipset_restore(&set_plan.before, &mut stats)?;
        let mut tables: BTreeSet<String> = tables_with_twill_objects(&dump);
        tables.extend(dataplane.tables.keys().cloned());
        tables.extend(dataplane.hooks.iter().map(|hook| hook.table.clone()));
        let empty = Table::default();
        for table in &tables {
            let desired = dataplane.tables.get(table).unwrap_or(&empty);
            if let Some(script) = plan_table(family, table, desired, &dataplane.hooks, &dump) {
                tracing::debug!(table, script, "restoring");
                stats.count_iptables(&script);
                self.restore(family, &script)?;
            }
        }
        self.ipset_restore(&set_plan.after, &mut stats)?;
        self.last.insert(family, dataplane.clone());
        stats.duration = started.elapsed();
        if !stats.wrote_nothing() {
            tracing::info!(?family, ?stats, "applied the dataplane");
        }
        Ok(stats)
    }

    fn save(&self, family: Family) -> Result<String, ApplyError> {
        run(&self.backend.save(family), &[], None)
    }

    fn restore(&self, family: Family, script: &str) -> Result<(), ApplyError> {
        let wait = format!("--wait={}", self.lock_timeout.as_secs().max(1));
        run(
            &self.backend.restore(family),
            &["--noflush", &wait],
            Some(script),
        )
        .map(drop)
    }

    fn ipset_restore(&self, script: &str, stats: &mut ApplyStats) -> Result<(), ApplyError> {
        if script.is_empty() {
            return Ok(());
        }
        tracing::debug!(script, "ipset restore");
        stats.count_ipset(script);
        run("ipset", &["restore", "-exist"], Some(script)).map(drop)
    }
}
