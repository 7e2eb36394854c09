//! Which policies apply to an endpoint, in which order: Calico's tier and policy sort, and
//! the profile list.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use twill_shared::resource::fields::Action;
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
#[derive(Debug, Clone, Default)]
pub struct LabelIndex {
    pairs: HashMap<(String, String), Vec<usize>>,
    keys: HashMap<String, Vec<usize>>,
}

impl LabelIndex {
    fn new(entities: &[Entity]) -> LabelIndex {
        let mut index = LabelIndex::default();
        for (position, entity) in entities.iter().enumerate() {
            for (key, value) in &entity.labels {
                index
                    .pairs
                    .entry((key.clone(), value.clone()))
                    .or_default()
                    .push(position);
                index.keys.entry(key.clone()).or_default().push(position);
            }
        }
        index
    }

    /// A superset of the entities the selector matches, or None for "any".
    fn candidates(&self, selector: &Selector) -> Option<Vec<usize>> {
        const NONE: &[usize] = &[];
        match selector {
            Selector::Equal(key, value) => Some(
                self.pairs
                    .get(&(key.clone(), value.clone()))
                    .map_or(NONE, Vec::as_slice)
                    .to_vec(),
            ),
            Selector::Has(key) => Some(self.keys.get(key).map_or(NONE, Vec::as_slice).to_vec()),
            Selector::In(key, values) => {
                let mut all: Vec<usize> = values
                    .iter()
                    .flat_map(|v| {
                        self.pairs
                            .get(&(key.clone(), v.clone()))
                            .map_or(NONE, Vec::as_slice)
                    })
                    .copied()
                    .collect();
                all.sort_unstable();
                all.dedup();
                Some(all)
            }
            Selector::And(operands) => operands
                .iter()
                .filter_map(|o| self.candidates(o))
                .min_by_key(Vec::len),
            _ => None,
        }
    }
}

/// Everything calculation reads, sorted once.
#[derive(Debug, Clone)]
pub struct World {
    /// Every endpoint and network set.
    pub entities: Vec<Entity>,
    /// Label index over `entities`.
    pub index: LabelIndex,
    /// Every policy, in evaluation order (tier order, tier name, policy order, policy name).
    pub policies: Vec<Policy>,
    /// Tiers by name.
    pub tiers: BTreeMap<String, Tier>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// Problems worth telling people.
    pub warnings: Vec<String>,
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
        let tiers = model.tiers();
        let mut policies = model.policies();
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
        World {
            index: LabelIndex::new(&entities),
            entities,
            policies,
            tiers,
            profiles: model.profiles(),
            warnings,
        }
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
                    .map(|i| &self.entities[i])
                    .filter(move |e| selector.matches(&e.labels)),
            ),
            None => Box::new(
                self.entities
                    .iter()
                    .filter(move |e| selector.matches(&e.labels)),
            ),
        }
    }

    /// The program of an endpoint in one direction.
    pub fn program(&self, endpoint: &Entity, direction: Direction) -> Program {
        let mut tiers: Vec<TierProgram> = Vec::new();
        for (index, policy) in self.policies.iter().enumerate() {
            let applies = match direction {
                Direction::Ingress => policy.ingress.is_some(),
                Direction::Egress => policy.egress.is_some(),
            };
            if !applies || !policy.selector.matches(&endpoint.labels) {
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
