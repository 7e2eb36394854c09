//! The calculation kept between changes (pure): resources in one at a time, the desired
//! dataplane out, recomputing only what a change can touch.
//!
//! What each kind of change touches:
//! - an endpoint or network set (or the Pod behind a workload): its entity; the label index;
//!   the IP sets whose selector matches it before or after; if it is on this node, the
//!   policies that select it and its own chains;
//! - a policy: its chains; which of this node's endpoints it selects and their chains; the
//!   sets it refers to;
//! - a Namespace or Profile: the profiles, the entities that inherit from the changed ones;
//! - a Tier: the order, so every endpoint chain of this node;
//! - FelixConfiguration: everything (it shapes every chain).
//!
//! [`compute`](super::compute) builds a calculator from nothing and runs it once, so the
//! batch result and the incremental one come from the same code; the model test checks they
//! agree after any sequence of changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use twill_shared::resource::{Key, Kind, Resource};

use super::chains::{self, OwnedChain};
use super::compile::Condition;
use super::programs::{Direction, Flavour, World};
use super::{Computed, Config};
use crate::ir::{Chain, Dataplane, Family, IpSet, Table};
use crate::model::{Entity, EntityKind, Model, Policy, ENTITY_KINDS};

/// One of this node's endpoints (a workload or a host endpoint).
#[derive(Debug, Clone)]
struct Local {
    entity: Entity,
    /// The policies whose selector matches it.
    matching: BTreeSet<Key>,
    /// Per direction (ingress, egress), the policy and profile chains its program uses.
    needs: [Vec<Need>; 2],
}

/// A chain an endpoint's program jumps to.
#[derive(Debug, Clone)]
enum Need {
    /// A policy's chain.
    Policy { key: Key, chain: String },
    /// A profile's chain.
    Profile { name: String, chain: String },
}

impl Need {
    fn chain(&self) -> &str {
        match self {
            Need::Policy { chain, .. } | Need::Profile { chain, .. } => chain,
        }
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// One family's output and what it was made from.
#[derive(Debug, Clone, Default)]
struct FamilyState {
    /// Policy and profile chains by chain name.
    owned: HashMap<String, OwnedChain>,
    /// Whether this node had host endpoints at the last calculation.
    hosts_present: bool,
    /// Per set, how many entities put each member there.
    counts: HashMap<String, BTreeMap<crate::ir::Member, u32>>,
    /// What the last calculation of this family had to say beyond its chains.
    warnings: Vec<String>,
}

/// The incremental calculation of one node.
#[derive(Debug, Clone)]
pub struct Calculator {
    model: Model,
    node: String,
    /// Given from outside (tests, benchmarks): FelixConfiguration is then not read.
    fixed_config: Option<Config>,
    config: Config,
    /// This node's interfaces and addresses (from the edge).
    host_addresses: BTreeMap<String, Vec<std::net::IpAddr>>,
    world: World,
    policies: BTreeMap<Key, Arc<Policy>>,
    rank: HashMap<Key, usize>,
    endpoints: BTreeMap<Key, Local>,
    /// The interface of each endpoint in [`Computed::local`].
    interfaces: HashMap<Key, String>,
    pending: BTreeSet<Key>,
    fresh: bool,
    families: [FamilyState; 2],
    host_warnings: Vec<String>,
    computed: Computed,
    /// The IP pools, for natOutgoing (from the edge, which follows them for BGP too).
    nat_pools: Vec<super::nat::NatPool>,
    nat_dirty: bool,
}

fn empty_computed() -> Computed {
    Computed {
        v4: Dataplane::default(),
        v6: Dataplane::default(),
        local: BTreeMap::new(),
        warnings: Vec::new(),
    }
}

impl Calculator {
    /// A calculator for `node`, configured by the FelixConfiguration resources it is given.
    pub fn new(node: &str) -> Calculator {
        Calculator {
            model: Model::default(),
            node: node.to_string(),
            fixed_config: None,
            config: Config::from_model(&Model::default(), node),
            host_addresses: BTreeMap::new(),
            world: World::default(),
            policies: BTreeMap::new(),
            rank: HashMap::new(),
            endpoints: BTreeMap::new(),
            interfaces: HashMap::new(),
            pending: BTreeSet::new(),
            fresh: true,
            families: Default::default(),
            host_warnings: Vec::new(),
            computed: empty_computed(),
            nat_pools: Vec::new(),
            nat_dirty: false,
        }
    }

    /// The IP pools natOutgoing follows; returns whether they changed.
    pub fn set_nat_pools(&mut self, mut pools: Vec<super::nat::NatPool>) -> bool {
        pools.sort();
        if pools == self.nat_pools {
            return false;
        }
        self.nat_pools = pools;
        self.nat_dirty = true;
        true
    }

    /// A calculator with a configuration given from outside, starting from a model.
    pub fn with_config(model: Model, config: Config) -> Calculator {
        let mut calculator = Calculator::new(&config.node);
        calculator.model = model;
        calculator.config = config.clone();
        calculator.fixed_config = Some(config);
        calculator
    }

    /// Sets (or, with `None`, removes) one resource. Returns whether anything changed.
    pub fn update(&mut self, key: Key, resource: Option<Resource>) -> bool {
        let changed = self.model.set(key.clone(), resource);
        if changed {
            self.pending.insert(key);
        }
        changed
    }

    /// Records an object that failed to decode or validate: it stands in fail-closed
    /// ([`crate::invalid`]). Returns whether anything changed.
    pub fn update_invalid(&mut self, key: Key, invalid: crate::invalid::Invalid) -> bool {
        let changed = self.model.set_invalid(key.clone(), invalid);
        if changed {
            self.pending.insert(key);
        }
        changed
    }

    /// The invalid objects felix holds, described for people.
    pub fn invalid_objects(&self) -> Vec<String> {
        self.model.invalid_objects()
    }

    /// Whether changes wait for [`Calculator::compute`].
    pub fn is_dirty(&self) -> bool {
        self.fresh || !self.pending.is_empty() || self.nat_dirty
    }

    /// This node's interfaces and their addresses (read by the edge); returns whether they
    /// changed. A change recalculates everything at the next [`Calculator::compute`].
    pub fn set_host_addresses(
        &mut self,
        addresses: BTreeMap<String, Vec<std::net::IpAddr>>,
    ) -> bool {
        if addresses == self.host_addresses {
            return false;
        }
        self.host_addresses = addresses;
        if self.fixed_config.is_none() {
            self.fresh = true;
        }
        true
    }

    /// The desired dataplane after every update so far.
    pub fn compute(&mut self) -> &Computed {
        let pending = std::mem::take(&mut self.pending);
        let config = self.fixed_config.clone().unwrap_or_else(|| Config {
            host_addresses: self.host_addresses.clone(),
            ..Config::from_model(&self.model, &self.node)
        });
        if config != self.config {
            self.config = config;
            self.fresh = true;
        }
        if self.fresh {
            self.rebuild();
        } else {
            self.apply_changes(pending);
        }
        // natOutgoing's objects, put back after every calculation (which keeps only the
        // sets its own chains refer to).
        self.nat_dirty = false;
        super::nat::apply(&mut self.computed.v4, Family::V4, &self.nat_pools);
        super::nat::apply(&mut self.computed.v6, Family::V6, &self.nat_pools);
        &self.computed
    }

    /// The last result.
    pub fn computed(&self) -> &Computed {
        &self.computed
    }

    /// How many policies the last calculation followed.
    pub fn policy_count(&self) -> usize {
        self.world.policies.len()
    }

    fn rebuild(&mut self) {
        self.fresh = false;
        self.world = World::default();
        self.policies.clear();
        self.endpoints.clear();
        self.interfaces.clear();
        self.families = Default::default();
        self.computed = empty_computed();
        let mut all: BTreeSet<Key> = ENTITY_KINDS
            .iter()
            .flat_map(|&kind| self.model.keys_of_kind(kind))
            .collect();
        for kind in [
            Kind::NetworkPolicy,
            Kind::GlobalNetworkPolicy,
            Kind::KubernetesNetworkPolicy,
            Kind::Tier,
            Kind::Profile,
            Kind::Namespace,
        ] {
            all.extend(self.model.keys_of_kind(kind));
        }
        // A tier or profile that exists nowhere still needs its first calculation.
        all.insert(Key::cluster(Kind::Tier, crate::model::DEFAULT_TIER));
        self.apply_changes(all);
    }

    fn apply_changes(&mut self, pending: BTreeSet<Key>) {
        let mut entity_keys: BTreeSet<Key> = BTreeSet::new();
        let mut policy_keys: BTreeSet<Key> = BTreeSet::new();
        let mut tiers_changed = false;
        let mut profiles_changed = false;
        for key in pending {
            match key.kind {
                Kind::WorkloadEndpoint
                | Kind::HostEndpoint
                | Kind::NetworkSet
                | Kind::GlobalNetworkSet => {
                    entity_keys.insert(key);
                }
                Kind::Pod => entity_keys.extend(
                    self.model
                        .endpoints_of_pod(key.namespace.as_deref().unwrap_or(""), &key.name),
                ),
                Kind::Namespace | Kind::Profile => profiles_changed = true,
                // Its labels reach the workloads in its namespace that run as it.
                Kind::ServiceAccount => entity_keys.extend(
                    self.model
                        .in_namespace(
                            Kind::WorkloadEndpoint,
                            key.namespace.as_deref().unwrap_or(""),
                        )
                        .map(|(k, _)| k.clone()),
                ),
                Kind::NetworkPolicy | Kind::GlobalNetworkPolicy | Kind::KubernetesNetworkPolicy => {
                    policy_keys.insert(key);
                }
                Kind::Tier => tiers_changed = true,
                _ => {}
            }
        }

        // Profiles: the entities that inherit labels from a changed one are recomputed.
        let mut changed_profiles: BTreeSet<String> = BTreeSet::new();
        if profiles_changed {
            let profiles = self.model.profiles();
            for name in profiles.keys().chain(self.world.profiles.keys()) {
                if profiles.get(name) != self.world.profiles.get(name) {
                    changed_profiles.insert(name.clone());
                }
            }
            self.world.profiles = profiles;
            if !changed_profiles.is_empty() {
                for entity in self.world.entities() {
                    if entity.profiles.iter().any(|p| changed_profiles.contains(p)) {
                        entity_keys.insert(entity.key.clone());
                    }
                }
                for name in &changed_profiles {
                    if let Some(namespace) = name.strip_prefix("kns.") {
                        entity_keys.extend(
                            self.model
                                .in_namespace(Kind::NetworkSet, namespace)
                                .map(|(k, _)| k.clone()),
                        );
                    }
                }
            }
        }

        // Entities.
        let mut changes: Vec<Change> = Vec::new();
        for key in entity_keys {
            let new = self.model.entity(&key, &self.world.profiles);
            let old = match new {
                Some(entity) if self.world.entity(&key) == Some(&entity) => continue,
                Some(entity) => self.world.upsert(entity),
                None => match self.world.remove(&key) {
                    Some(old) => Some(old),
                    None => continue,
                },
            };
            changes.push(Change { key, old });
        }

        // Policies, in order.
        if !policy_keys.is_empty() || tiers_changed {
            for key in &policy_keys {
                match self.model.policy(key) {
                    Some(policy) => self.policies.insert(key.clone(), Arc::new(policy)),
                    None => self.policies.remove(key),
                };
            }
            self.world.set_policies(
                self.model.tiers(),
                self.policies.values().cloned().collect(),
            );
            self.rank = self
                .world
                .policies
                .iter()
                .enumerate()
                .map(|(i, p)| (p.key.clone(), i))
                .collect();
        }

        // This node's endpoints and the policies that select them.
        let mut dirty: BTreeSet<Key> = BTreeSet::new();
        let mut arrived: Vec<Entity> = Vec::new();
        for change in &changes {
            match self.world.entity(&change.key).filter(|e| self.is_local(e)) {
                Some(entity) => arrived.push(entity.clone()),
                None => {
                    if self.endpoints.remove(&change.key).is_some() {
                        dirty.insert(change.key.clone());
                    }
                }
            }
        }
        let matchings = matching_policies(&arrived, &self.policies);
        let arrived: BTreeSet<Key> = arrived
            .into_iter()
            .zip(matchings)
            .map(|(entity, matching)| {
                let key = entity.key.clone();
                self.endpoints.insert(
                    key.clone(),
                    Local {
                        entity,
                        matching,
                        needs: Default::default(),
                    },
                );
                dirty.insert(key.clone());
                key
            })
            .collect();
        for policy_key in &policy_keys {
            let policy = self.policies.get(policy_key);
            for (key, local) in &mut self.endpoints {
                if arrived.contains(key) {
                    continue;
                }
                let matches = policy.is_some_and(|p| p.selector.matches(&local.entity.labels));
                let had = local.matching.contains(policy_key);
                if matches && !had {
                    local.matching.insert(policy_key.clone());
                } else if had && !matches {
                    local.matching.remove(policy_key);
                }
                if matches || had {
                    dirty.insert(key.clone());
                }
            }
        }
        if tiers_changed {
            dirty.extend(self.endpoints.keys().cloned());
        }
        for key in &dirty {
            let Some(local) = self.endpoints.get(key) else {
                continue;
            };
            let needs = DIRECTIONS.map(|direction| self.needs(local, direction));
            if let Some(local) = self.endpoints.get_mut(key) {
                local.needs = needs;
            }
        }

        // This node's workloads and host endpoints by interface.
        let endpoints_changed = self.follow_local(&dirty);
        let mut host_warnings = Vec::new();
        let hosts = chains::local_hosts(
            self.endpoints
                .values()
                .map(|l| &l.entity)
                .filter(|e| e.kind == EntityKind::Host),
            &self.config,
            &mut host_warnings,
        );
        self.host_warnings = host_warnings;

        let mut warnings = Vec::new();
        for (index, family) in [Family::V4, Family::V6].into_iter().enumerate() {
            let mut state = std::mem::take(&mut self.families[index]);
            let mut dataplane = std::mem::take(match family {
                Family::V4 => &mut self.computed.v4,
                Family::V6 => &mut self.computed.v6,
            });
            self.family(
                &mut state,
                &mut dataplane,
                family,
                &hosts,
                &FamilyChanges {
                    changes: &changes,
                    dirty: &dirty,
                    policies: &policy_keys,
                    profiles: &changed_profiles,
                    endpoints_changed,
                },
            );
            warnings.extend(
                state
                    .owned
                    .values()
                    .flat_map(|o| o.warnings.iter().cloned()),
            );
            warnings.extend(state.warnings.iter().cloned());
            self.families[index] = state;
            match family {
                Family::V4 => self.computed.v4 = dataplane,
                Family::V6 => self.computed.v6 = dataplane,
            }
        }
        warnings.extend(self.world.warnings.iter().cloned());
        warnings.extend(self.host_warnings.iter().cloned());
        warnings.sort();
        warnings.dedup();
        self.computed.warnings = warnings;
    }

    /// Brings [`Computed::local`] up to date with the dirty endpoints; returns whether its
    /// layout (which endpoint has which interface) changed.
    fn follow_local(&mut self, dirty: &BTreeSet<Key>) -> bool {
        let mut removed = BTreeSet::new();
        let mut added = BTreeSet::new();
        let mut conflict = false;
        for key in dirty {
            if let Some(interface) = self.interfaces.remove(key) {
                self.computed.local.remove(&interface);
                removed.insert((interface, key.clone()));
            }
        }
        for key in dirty {
            let Some(local) = self.endpoints.get(key) else {
                continue;
            };
            let Some(interface) = local.entity.interface.clone() else {
                continue;
            };
            if local.entity.kind != EntityKind::Workload {
                continue;
            }
            if self.computed.local.contains_key(&interface) {
                conflict = true;
                break;
            }
            self.computed
                .local
                .insert(interface.clone(), local.entity.clone());
            self.interfaces.insert(key.clone(), interface.clone());
            added.insert((interface, key.clone()));
        }
        if conflict || self.interfaces.len() != self.computed.local.len() {
            // Two endpoints claim one interface: the last by key wins, as in a fresh build.
            self.computed.local = self
                .endpoints
                .values()
                .filter(|l| l.entity.kind == EntityKind::Workload)
                .filter_map(|l| Some((l.entity.interface.clone()?, l.entity.clone())))
                .collect();
            self.interfaces = self
                .computed
                .local
                .iter()
                .map(|(interface, e)| (e.key.clone(), interface.clone()))
                .collect();
            return true;
        }
        removed != added
    }

    fn is_local(&self, entity: &Entity) -> bool {
        matches!(entity.kind, EntityKind::Workload | EntityKind::Host)
            && entity.node.as_deref() == Some(self.node.as_str())
    }

    /// The program of one of this node's endpoints.
    fn program(&self, local: &Local, direction: Direction) -> super::programs::Program {
        self.flavoured(local, direction, Flavour::Normal)
    }

    /// The program of one of this node's host endpoints for one of its flavours of chain.
    fn flavoured(
        &self,
        local: &Local,
        direction: Direction,
        flavour: Flavour,
    ) -> super::programs::Program {
        let mut ranks: Vec<usize> = local
            .matching
            .iter()
            .filter_map(|k| self.rank.get(k).copied())
            .collect();
        ranks.sort_unstable();
        self.world
            .program_of(&local.entity, ranks.into_iter(), direction, flavour)
    }

    /// The chains an endpoint's program uses in one direction.
    fn needs(&self, local: &Local, direction: Direction) -> Vec<Need> {
        let program = self.program(local, direction);
        let mut needs: Vec<Need> = chains::program_chains(&program, &self.world, direction)
            .into_iter()
            .map(|(index, chain)| Need::Policy {
                key: self.world.policies[index].key.clone(),
                chain,
            })
            .collect();
        needs.extend(program.profiles.iter().map(|name| Need::Profile {
            name: name.clone(),
            chain: chains::profile_chain(name, direction),
        }));
        needs
    }

    fn family(
        &self,
        state: &mut FamilyState,
        dataplane: &mut Dataplane,
        family: Family,
        hosts: &BTreeMap<String, Entity>,
        changes: &FamilyChanges<'_>,
    ) {
        let config = &self.config;
        let world = &self.world;
        let mut table = std::mem::take(dataplane.tables.entry("filter".to_string()).or_default());
        let put = |table: &mut Table, name: &str, rules: &[crate::ir::Rule]| {
            if table.chains.get(name).is_some_and(|c| c.rules == rules) {
                return;
            }
            table.chains.insert(
                name.to_string(),
                Chain {
                    name: name.to_string(),
                    rules: rules.to_vec(),
                },
            );
        };

        // Chains of policies whose resource changed are compiled again (a deleted policy's
        // chain goes when nothing needs it).
        for key in changes.policies {
            let Some(policy) = self.policies.get(key) else {
                continue;
            };
            for direction in [Direction::Ingress, Direction::Egress] {
                let kind = format!("{:?}", key.kind);
                state
                    .owned
                    .remove(&chains::policy_chain(&policy.name, &kind, direction));
            }
        }
        for name in changes.profiles {
            for direction in [Direction::Ingress, Direction::Egress] {
                state.owned.remove(&chains::profile_chain(name, direction));
            }
        }

        // Endpoint chains, and every policy and profile chain some endpoint uses.
        let mut needed: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut endpoint_chains: BTreeSet<String> = BTreeSet::new();
        let mut interfaces: Vec<(&Local, String, String, bool)> = Vec::new();
        for (interface, entity) in &self.computed.local {
            if let Some(local) = self.endpoints.get(&entity.key) {
                interfaces.push((
                    local,
                    chains::endpoint_chain(interface, Direction::Ingress),
                    chains::endpoint_chain(interface, Direction::Egress),
                    false,
                ));
            }
        }
        for (interface, entity) in hosts {
            if let Some(local) = self.endpoints.get(&entity.key) {
                interfaces.push((
                    local,
                    chains::host_chain(interface, Direction::Ingress),
                    chains::host_chain(interface, Direction::Egress),
                    true,
                ));
            }
        }
        for (local, ingress_chain, egress_chain, host) in interfaces {
            for (slot, (direction, chain_name)) in [
                (Direction::Ingress, ingress_chain),
                (Direction::Egress, egress_chain),
            ]
            .into_iter()
            .enumerate()
            {
                for need in &local.needs[slot] {
                    let chain = need.chain();
                    if !state.owned.contains_key(chain) {
                        let owned = match need {
                            Need::Policy { key, .. } => match self.policies.get(key) {
                                Some(policy) => chains::policy_rules(policy, direction, family),
                                None => continue,
                            },
                            Need::Profile { name, .. } => chains::profile_rules(
                                world.profiles.get(name),
                                name,
                                direction,
                                family,
                            ),
                        };
                        put(&mut table, chain, &owned.rules);
                        state.owned.insert(chain.to_string(), owned);
                    }
                    needed.insert(chain);
                }
                let rewrite = host
                    || changes.dirty.contains(&local.entity.key)
                    || !table.chains.contains_key(&chain_name);
                if rewrite {
                    let program = self.program(local, direction);
                    let rules =
                        chains::endpoint_chain_rules(&program, world, config, direction, host);
                    put(&mut table, &chain_name, &rules);
                }
                endpoint_chains.insert(chain_name);
            }
        }
        // Host endpoints are few: their other chains are written (if they differ) every time.
        // Forwarded traffic in filter, with the policy chains it shares; pre-DNAT policy in
        // mangle and untracked policy in raw, each with its own copy of its policies' chains
        // (a chain cannot jump to another table).
        let mut host_chains: BTreeSet<String> = BTreeSet::new();
        let mut needed_by_hosts: BTreeSet<String> = BTreeSet::new();
        let mut other_tables: BTreeMap<&str, Table> = BTreeMap::new();
        let mut other_sets: BTreeMap<String, Condition> = BTreeMap::new();
        for (interface, entity) in hosts {
            let Some(local) = self.endpoints.get(&entity.key) else {
                continue;
            };
            for (flavour, directions, table_name) in [
                (Flavour::Forward, &DIRECTIONS[..], "filter"),
                (Flavour::PreDnat, &DIRECTIONS[..1], "mangle"),
                (Flavour::Untracked, &DIRECTIONS[..], "raw"),
            ] {
                for &direction in directions {
                    let program = self.flavoured(local, direction, flavour);
                    let rules =
                        chains::host_flavour_rules(&program, world, config, direction, flavour);
                    let name = chains::host_flavour_chain(interface, direction, flavour);
                    for (index, chain) in chains::program_chains(&program, world, direction) {
                        let policy = &world.policies[index];
                        if table_name == "filter" {
                            if !state.owned.contains_key(&chain) {
                                let owned = chains::policy_rules(policy, direction, family);
                                put(&mut table, &chain, &owned.rules);
                                state.owned.insert(chain.clone(), owned);
                            }
                            needed_by_hosts.insert(chain);
                        } else {
                            let owned = chains::policy_rules(policy, direction, family);
                            other_sets.extend(owned.sets);
                            let target = other_tables.entry(table_name).or_default();
                            put(target, &chain, &owned.rules);
                        }
                    }
                    if table_name == "filter" {
                        put(&mut table, &name, &rules);
                        host_chains.insert(name);
                    } else {
                        put(other_tables.entry(table_name).or_default(), &name, &rules);
                    }
                }
            }
        }
        if !hosts.is_empty() {
            let dispatch =
                |direction, flavour| chains::flavour_dispatch(hosts, config, direction, flavour);
            for (name, rules) in [
                (
                    chains::FROM_HEP_FORWARD,
                    dispatch(Direction::Ingress, Flavour::Forward),
                ),
                (
                    chains::TO_HEP_FORWARD,
                    dispatch(Direction::Egress, Flavour::Forward),
                ),
            ] {
                put(&mut table, name, &rules);
                host_chains.insert(name.to_string());
            }
            let raw = other_tables.entry("raw").or_default();
            put(
                raw,
                chains::FROM_HEP_UNTRACKED,
                &dispatch(Direction::Ingress, Flavour::Untracked),
            );
            put(
                raw,
                chains::TO_HEP_UNTRACKED,
                &dispatch(Direction::Egress, Flavour::Untracked),
            );
            let mangle = other_tables.entry("mangle").or_default();
            for (name, rules) in chains::mangle_hooks(config) {
                put(mangle, &name, &rules);
            }
            put(
                mangle,
                chains::FROM_HEP_PREDNAT,
                &dispatch(Direction::Ingress, Flavour::PreDnat),
            );
        }
        let raw = other_tables.entry("raw").or_default();
        for (name, rules) in chains::raw_hooks(config, family, !hosts.is_empty()) {
            put(raw, &name, &rules);
        }
        for name in ["raw", "mangle"] {
            match other_tables.remove(name) {
                Some(built) => match dataplane.tables.get_mut(name) {
                    // Written only if it differs, so that the delta stays empty.
                    Some(current) if *current == built => {}
                    _ => {
                        dataplane.tables.insert(name.to_string(), built);
                    }
                },
                None => {
                    dataplane.tables.remove(name);
                }
            }
        }
        dataplane.hooks = chains::hooks(!hosts.is_empty());
        state
            .owned
            .retain(|name, _| needed.contains(name.as_str()) || needed_by_hosts.contains(name));

        // The fixed and dispatch chains.
        for (name, rules) in chains::host_dispatch(hosts, config) {
            put(&mut table, &name, &rules);
        }
        let hosts_present = !hosts.is_empty();
        if changes.endpoints_changed
            || !table.chains.contains_key(chains::FORWARD_CHAIN)
            || state.hosts_present != hosts_present
        {
            for (name, rules) in
                chains::fixed_chains(&self.computed.local, config, family, hosts_present)
            {
                put(&mut table, &name, &rules);
            }
        }
        state.hosts_present = hosts_present;
        let fixed: BTreeSet<String> = [
            chains::FORWARD_CHAIN,
            chains::INPUT_CHAIN,
            chains::WL_TO_HOST_CHAIN,
            chains::FROM_WL_DISPATCH,
            chains::TO_WL_DISPATCH,
            chains::OUTPUT_CHAIN,
            chains::FROM_HEP_DISPATCH,
            chains::TO_HEP_DISPATCH,
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let present = fixed
            .iter()
            .filter(|f| table.chains.contains_key(*f))
            .count();
        let needed_by_hosts_only = needed_by_hosts
            .iter()
            .filter(|n| !needed.contains(n.as_str()))
            .count();
        let extra = table.chains.len()
            != needed.len()
                + needed_by_hosts_only
                + endpoint_chains.len()
                + present
                + host_chains.len();
        if extra {
            table.chains.retain(|name, _| {
                needed.contains(name.as_str())
                    || needed_by_hosts.contains(name)
                    || endpoint_chains.contains(name)
                    || fixed.contains(name)
                    || host_chains.contains(name)
            });
        }
        dataplane.tables.insert("filter".to_string(), table);

        // Sets: the ones some chain refers to; members again where a changed entity matches.
        let mut wanted: BTreeMap<&str, &Condition> = BTreeMap::new();
        for name in needed
            .iter()
            .copied()
            .chain(needed_by_hosts.iter().map(String::as_str))
        {
            for (set, condition) in &state.owned[name].sets {
                wanted.insert(set, condition);
            }
        }
        for (set, condition) in &other_sets {
            wanted.insert(set, condition);
        }
        let sets = &mut dataplane.sets;
        sets.retain(|name, _| wanted.contains_key(name.as_str()));
        state
            .counts
            .retain(|name, _| wanted.contains_key(name.as_str()));
        for (name, condition) in wanted {
            if let (Some(set), Some(counts)) = (sets.get_mut(name), state.counts.get_mut(name)) {
                if let Some(selector) = chains::set_selector(condition) {
                    follow(
                        set,
                        counts,
                        condition,
                        selector,
                        changes.changes,
                        world,
                        family,
                    );
                }
                continue;
            }
            let (kind, counts, comment) = chains::set_members(condition, world, family);
            sets.insert(
                name.to_string(),
                IpSet {
                    name: name.to_string(),
                    kind,
                    family,
                    members: counts.keys().cloned().collect(),
                    comment,
                },
            );
            state.counts.insert(name.to_string(), counts);
        }
        // Anti-spoofing's set follows this node's workloads (rebuilt each time: it is as
        // small as this node's workloads).
        state.warnings.clear();
        let sources =
            chains::workload_sources(&self.computed.local, config, family, &mut state.warnings);
        if sets.get(&sources.name) != Some(&sources) {
            sets.insert(sources.name.clone(), sources);
        }
    }
}

/// Updates a set's members from entity changes: what the old version put there goes (unless
/// another entity still puts it there), what the new one puts there comes.
fn follow(
    set: &mut IpSet,
    counts: &mut BTreeMap<crate::ir::Member, u32>,
    condition: &Condition,
    selector: &twill_shared::selector::Selector,
    changes: &[Change],
    world: &World,
    family: Family,
) {
    for change in changes {
        let (old, new) = (&change.old, world.entity(&change.key));
        if let Some(old) = old.as_ref().filter(|e| selector.matches(&e.labels)) {
            for member in chains::contributions(condition, old, family) {
                if let Some(count) = counts.get_mut(&member) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&member);
                        set.members.remove(&member);
                    }
                }
            }
        }
        if let Some(new) = new.filter(|e| selector.matches(&e.labels)) {
            for member in chains::contributions(condition, new, family) {
                let count = counts.entry(member.clone()).or_default();
                *count += 1;
                if *count == 1 {
                    set.members.insert(member);
                }
            }
        }
    }
}

/// An entity that changed: its key (the new version, if any, is in the world) and its old
/// version, if it had one.
#[derive(Debug)]
struct Change {
    key: Key,
    old: Option<Entity>,
}

/// For each endpoint, the policies whose selector matches it. Many endpoints at once (a
/// start, a namespace relabelled) are matched through a label index over them, so each
/// policy is evaluated on its candidates only.
fn matching_policies(
    endpoints: &[Entity],
    policies: &BTreeMap<Key, Arc<Policy>>,
) -> Vec<BTreeSet<Key>> {
    let mut out = vec![BTreeSet::new(); endpoints.len()];
    if endpoints.len() < 16 {
        for (entity, matching) in endpoints.iter().zip(&mut out) {
            *matching = policies
                .iter()
                .filter(|(_, p)| p.selector.matches(&entity.labels))
                .map(|(k, _)| k.clone())
                .collect();
        }
        return out;
    }
    let mut world = World::default();
    let mut position: HashMap<Key, usize> = HashMap::new();
    for (index, entity) in endpoints.iter().enumerate() {
        position.insert(entity.key.clone(), index);
        world.upsert(entity.clone());
    }
    for (key, policy) in policies {
        for entity in world.select(&policy.selector) {
            out[position[&entity.key]].insert(key.clone());
        }
    }
    out
}

/// What changed, as one family's update reads it.
struct FamilyChanges<'a> {
    /// Entities before and after.
    changes: &'a [Change],
    /// This node's endpoints whose chains must be written again.
    dirty: &'a BTreeSet<Key>,
    /// Policies whose resource changed.
    policies: &'a BTreeSet<Key>,
    /// Profiles that changed.
    profiles: &'a BTreeSet<String>,
    /// Whether this node's set of endpoints (or their interfaces) may have changed.
    endpoints_changed: bool,
}
