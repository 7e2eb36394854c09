//! Which policies apply to an endpoint, in which order: Calico's tier and policy sort, and
//! the profile list.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use twill_shared::resource::fields::Action;
use twill_shared::resource::Key;
use twill_shared::selector::Selector;

use crate::model::{Entity, Model, Policy, Profile, Tier};

/// A direction of traffic relative to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Towards the endpoint.
    Ingress,
    /// From the endpoint.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Which entities carry which labels, so a selector is evaluated only on the entities that
/// can match it (Calico's label restriction index): `a == 'x'` anywhere in a conjunction
/// limits the candidates to entities with that label value; `has(a)` to those with the label.
/// Entities are slots of [`World`]; the index follows their arrivals and departures.
#[derive(Debug, Clone, Default)]
pub struct LabelIndex {
    /// Label key → value → slots.
    pairs: HashMap<String, HashMap<String, BTreeSet<usize>>>,
    /// Label key → slots.
    keys: HashMap<String, BTreeSet<usize>>,
}

impl LabelIndex {
    fn insert(&mut self, slot: usize, entity: &Entity) {
        for (key, value) in &entity.labels {
            let values = match self.pairs.get_mut(key) {
                Some(values) => values,
                None => self.pairs.entry(key.clone()).or_default(),
            };
            match values.get_mut(value) {
                Some(slots) => {
                    slots.insert(slot);
                }
                None => {
                    values.insert(value.clone(), BTreeSet::from([slot]));
                }
            }
            match self.keys.get_mut(key) {
                Some(slots) => {
                    slots.insert(slot);
                }
                None => {
                    self.keys.insert(key.clone(), BTreeSet::from([slot]));
                }
            }
        }
    }

    fn remove(&mut self, slot: usize, entity: &Entity) {
        for (key, value) in &entity.labels {
            if let Some(values) = self.pairs.get_mut(key) {
                if let Some(slots) = values.get_mut(value) {
                    slots.remove(&slot);
                    if slots.is_empty() {
                        values.remove(value);
                    }
                }
                if values.is_empty() {
                    self.pairs.remove(key);
                }
            }
            if let Some(slots) = self.keys.get_mut(key) {
                slots.remove(&slot);
                if slots.is_empty() {
                    self.keys.remove(key);
                }
            }
        }
    }

    fn pair(&self, key: &str, value: &str) -> Option<&BTreeSet<usize>> {
        self.pairs.get(key)?.get(value)
    }

    /// A superset of the entities the selector matches, or None for "any".
    fn candidates(&self, selector: &Selector) -> Option<Vec<usize>> {
        let collect = |slots: Option<&BTreeSet<usize>>| -> Vec<usize> {
            slots.map_or_else(Vec::new, |s| s.iter().copied().collect())
        };
        match selector {
            Selector::Equal(key, value) => Some(collect(self.pair(key, value))),
            Selector::Has(key) => Some(collect(self.keys.get(key))),
            Selector::In(key, values) => {
                let mut all: Vec<usize> = values
                    .iter()
                    .flat_map(|v| self.pair(key, v).into_iter().flatten())
                    .copied()
                    .collect();
                all.sort_unstable();
                all.dedup();
                Some(all)
            }
            // The operand with the fewest candidates (sized before any list is built).
            Selector::And(operands) => operands
                .iter()
                .filter_map(|o| Some((self.estimate(o)?, o)))
                .min_by_key(|(size, _)| *size)
                .and_then(|(_, o)| self.candidates(o)),
            _ => None,
        }
    }

    /// How many candidates [`LabelIndex::candidates`] would give, or None for "any".
    fn estimate(&self, selector: &Selector) -> Option<usize> {
        match selector {
            Selector::Equal(key, value) => Some(self.pair(key, value).map_or(0, BTreeSet::len)),
            Selector::Has(key) => Some(self.keys.get(key).map_or(0, BTreeSet::len)),
            Selector::In(key, values) => Some(
                values
                    .iter()
                    .map(|v| self.pair(key, v).map_or(0, BTreeSet::len))
                    .sum(),
            ),
            Selector::And(operands) => operands.iter().filter_map(|o| self.estimate(o)).min(),
            _ => None,
        }
    }
}

/// Everything calculation reads. Entities live in slots (stable while they exist) so that
/// the label index and the incremental calculator can follow single changes.
#[derive(Debug, Clone, Default)]
pub struct World {
    slots: Vec<Option<Entity>>,
    free: Vec<usize>,
    by_key: BTreeMap<Key, usize>,
    /// Label index over the entities.
    pub index: LabelIndex,
    /// Every policy, in evaluation order (tier order, tier name, policy order, policy name).
    pub policies: Vec<Arc<Policy>>,
    /// Tiers by name.
    pub tiers: BTreeMap<String, Tier>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// Problems worth telling people.
    pub warnings: Vec<String>,
}

/// Which of an endpoint's chains a program is for: Calico's host endpoint policy flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavour {
    /// Traffic of the endpoint itself (workloads; a host's own traffic): every policy but
    /// the pre-DNAT and untracked ones.
    Normal,
    /// Traffic forwarded through a host endpoint: `applyOnForward` policies (not pre-DNAT or
    /// untracked).
    Forward,
    /// Before DNAT, in the mangle table: `preDNAT` policies (ingress only).
    PreDnat,
    /// Before connection tracking, in the raw table: `doNotTrack` policies.
    Untracked,
}

impl Flavour {
    /// Whether a policy belongs in this flavour's chains.
    pub fn admits(self, policy: &Policy) -> bool {
        match self {
            Flavour::Normal => !policy.pre_dnat && !policy.do_not_track,
            Flavour::Forward => policy.apply_on_forward && !policy.pre_dnat && !policy.do_not_track,
            Flavour::PreDnat => policy.pre_dnat,
            Flavour::Untracked => policy.do_not_track,
        }
    }
}

/// One tier as an endpoint sees it in one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct TierProgram {
    /// The tier's name.
    pub name: String,
    /// Deny or Pass at its end.
    pub default_action: Action,
    /// Whether the tier exists (a policy in a missing tier denies: fail closed).
    pub exists: bool,
    /// Indexes into [`World::policies`], in order.
    pub policies: Vec<usize>,
}

/// What an endpoint's traffic meets in one direction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Program {
    /// Tiers with at least one policy for this endpoint and direction, in order.
    pub tiers: Vec<TierProgram>,
    /// Profiles, in order (a missing one denies).
    pub profiles: Vec<String>,
}

fn order_key(order: Option<f64>) -> f64 {
    order.unwrap_or(f64::INFINITY)
}

fn compare_orders(a: Option<f64>, b: Option<f64>) -> Ordering {
    order_key(a).total_cmp(&order_key(b))
}

impl World {
    /// Sorts the model's policies and gathers what calculation needs.
    pub fn new(model: &Model, entities: Vec<Entity>) -> World {
        let mut world = World {
            profiles: model.profiles(),
            ..World::default()
        };
        for entity in entities {
            world.upsert(entity);
        }
        world.set_policies(
            model.tiers(),
            model.policies().into_iter().map(Arc::new).collect(),
        );
        world
    }

    /// Sets the tiers and policies (in any order; sorted here) and the warnings about them.
    pub fn set_policies(&mut self, tiers: BTreeMap<String, Tier>, mut policies: Vec<Arc<Policy>>) {
        let tier_order = |name: &str| {
            tiers
                .get(name)
                .map_or((1, f64::INFINITY), |t| (0, order_key(t.order)))
        };
        policies.sort_by(|a, b| {
            let (valid_a, order_a) = tier_order(&a.tier);
            let (valid_b, order_b) = tier_order(&b.tier);
            valid_a
                .cmp(&valid_b)
                .then(order_a.total_cmp(&order_b))
                .then(a.tier.cmp(&b.tier))
                .then(compare_orders(a.order, b.order))
                .then(a.name.cmp(&b.name))
                .then(a.key.cmp(&b.key))
        });
        let mut warnings = Vec::new();
        for policy in &policies {
            if !tiers.contains_key(&policy.tier) {
                warnings.push(format!(
                    "policy {} is in tier {:?}, which does not exist: it denies the endpoints it selects",
                    policy.name, policy.tier
                ));
            }
        }
        self.policies = policies;
        self.tiers = tiers;
        self.warnings = warnings;
    }

    /// Adds or replaces an entity (by key); returns the one it replaced.
    pub fn upsert(&mut self, entity: Entity) -> Option<Entity> {
        let old = self.remove(&entity.key);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.index.insert(slot, &entity);
        self.by_key.insert(entity.key.clone(), slot);
        self.slots[slot] = Some(entity);
        old
    }

    /// Removes an entity; returns it.
    pub fn remove(&mut self, key: &Key) -> Option<Entity> {
        let slot = self.by_key.remove(key)?;
        let entity = self.slots[slot].take()?;
        self.index.remove(slot, &entity);
        self.free.push(slot);
        Some(entity)
    }

    /// One entity.
    pub fn entity(&self, key: &Key) -> Option<&Entity> {
        self.by_key
            .get(key)
            .and_then(|&slot| self.slots[slot].as_ref())
    }

    /// Every entity, by key.
    pub fn entities(&self) -> impl Iterator<Item = &Entity> {
        self.by_key
            .values()
            .filter_map(|&slot| self.slots[slot].as_ref())
    }

    /// The entities a selector matches (using the label index).
    pub fn select<'a>(
        &'a self,
        selector: &'a Selector,
    ) -> Box<dyn Iterator<Item = &'a Entity> + 'a> {
        match self.index.candidates(selector) {
            Some(candidates) => Box::new(
                candidates
                    .into_iter()
                    .filter_map(|slot| self.slots[slot].as_ref())
                    .filter(move |e| selector.matches(&e.labels)),
            ),
            None => Box::new(
                self.slots
                    .iter()
                    .flatten()
                    .filter(move |e| selector.matches(&e.labels)),
            ),
        }
    }

    /// The program of an endpoint in one direction.
    pub fn program(&self, endpoint: &Entity, direction: Direction) -> Program {
        self.program_of(
            endpoint,
            (0..self.policies.len())
                .filter(|&i| self.policies[i].selector.matches(&endpoint.labels)),
            direction,
            Flavour::Normal,
        )
    }

    /// The program of an endpoint in one direction and flavour, given (in ascending order)
    /// the indexes in [`World::policies`] of the policies whose selector matches it.
    pub fn program_of(
        &self,
        endpoint: &Entity,
        matching: impl Iterator<Item = usize>,
        direction: Direction,
        flavour: Flavour,
    ) -> Program {
        let mut tiers: Vec<TierProgram> = Vec::new();
        for index in matching {
            let policy = &self.policies[index];
            let applies = match direction {
                Direction::Ingress => policy.ingress.is_some(),
                Direction::Egress => policy.egress.is_some(),
            };
            if !applies || !flavour.admits(policy) {
                continue;
            }
            match tiers.last_mut() {
                Some(tier) if tier.name == policy.tier => tier.policies.push(index),
                _ => {
                    let tier = self.tiers.get(&policy.tier);
                    tiers.push(TierProgram {
                        name: policy.tier.clone(),
                        default_action: tier.map_or(Action::Deny, |t| t.default_action),
                        exists: tier.is_some(),
                        policies: vec![index],
                    });
                }
            }
        }
        Program {
            tiers,
            profiles: endpoint.profiles.clone(),
        }
    }
}
