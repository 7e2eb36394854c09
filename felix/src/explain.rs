//! `policy explain`: the verdict for one packet, walking the same programs and compiled rules
//! the dataplane is built from — the source endpoint's egress, then the destination's
//! ingress — and saying which rule of which policy decided, or which default applied.

use std::fmt;
use std::net::IpAddr;

use twill_shared::resource::fields::Action;

use crate::calc::compile::{compile_policy, compile_rule, CompiledRule, Condition};
use crate::calc::programs::{Direction, World};
use crate::ir::{Family, Side};
use crate::model::{Entity, EntityKind};

/// The packet being explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IANA protocol number.
    pub protocol: u8,
    /// Source port (0 when unknown).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// One thing that happened on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A tier was entered.
    Tier(String),
    /// A policy's rule matched (index, text, action).
    Rule {
        /// The policy or profile.
        owner: String,
        /// The rule's index.
        index: usize,
        /// The rule.
        text: String,
        /// Its action.
        action: Action,
    },
    /// A policy had no matching rule.
    NoMatch(String),
    /// A rule could never match (not enforced, other family).
    Skipped {
        /// The policy or profile.
        owner: String,
        /// The rule's index.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A matching rule named criteria Twill does not enforce; it acted as if they matched.
    Widened {
        /// The policy or profile.
        owner: String,
        /// The rule's index.
        index: usize,
        /// What it names that is not enforced.
        reason: String,
    },
    /// The tier's default applied.
    TierDefault {
        /// The tier.
        tier: String,
        /// Deny or Pass.
        action: Action,
    },
    /// A note (missing tier or profile, no endpoint).
    Note(String),
}

/// One direction's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// `egress of x/a` etc.
    pub title: String,
    /// What happened, in order.
    pub steps: Vec<Step>,
    /// Allowed?
    pub allowed: bool,
    /// What decided, in a line.
    pub decided_by: String,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Egress of the source (None when the source is not a workload).
    pub egress: Option<Trace>,
    /// Ingress of the destination (None when it is not a workload).
    pub ingress: Option<Trace>,
}

impl Explanation {
    /// Whether the packet gets through.
    pub fn allowed(&self) -> bool {
        self.egress.as_ref().is_none_or(|t| t.allowed)
            && self.ingress.as_ref().is_none_or(|t| t.allowed)
    }
}

/// Explains one packet between two entities (either may be absent: outside the cluster).
pub fn explain(
    world: &World,
    source: Option<&Entity>,
    destination: Option<&Entity>,
    packet: &Packet,
) -> Explanation {
    fn workload(e: Option<&Entity>) -> Option<&Entity> {
        e.filter(|e| e.kind == EntityKind::Workload)
    }
    Explanation {
        egress: workload(source).map(|e| trace(world, e, Direction::Egress, packet)),
        ingress: workload(destination).map(|e| trace(world, e, Direction::Ingress, packet)),
    }
}

fn family_of(ip: IpAddr) -> Family {
    if ip.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// Whether `ip` belongs to an entity the predicate accepts.
fn owned_by(world: &World, ip: IpAddr, accept: impl Fn(&Entity) -> bool) -> bool {
    world
        .entities()
        .any(|e| e.nets.iter().any(|n| n.contains(&ip)) && accept(e))
}

fn holds(world: &World, condition: &Condition, packet: &Packet) -> bool {
    let address = |side: &Side| match side {
        Side::Src => packet.src,
        Side::Dst => packet.dst,
    };
    let port = |side: &Side| match side {
        Side::Src => packet.src_port,
        Side::Dst => packet.dst_port,
    };
    match condition {
        Condition::Protocol { not, number } => (packet.protocol == *number) != *not,
        Condition::Nets { side, not, nets } => {
            nets.iter().any(|n| n.contains(&address(side))) != *not
        }
        Condition::Selected {
            side,
            not,
            selection,
        } => {
            owned_by(world, address(side), |e| {
                selection.selector.0.matches(&e.labels)
            }) != *not
        }
        Condition::Ports { side, not, ranges } => {
            ranges
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&port(side)))
                != *not
        }
        Condition::NamedPort {
            side,
            not,
            selection,
            protocol,
            name,
        } => {
            let found = owned_by(world, address(side), |e| {
                selection.selector.0.matches(&e.labels)
                    && e.ports
                        .iter()
                        .any(|p| p.name == *name && p.protocol == *protocol && p.port == port(side))
            });
            found != *not
        }
        // The explain command works on TCP/UDP/SCTP ports; an ICMP condition never holds.
        Condition::Icmp { not, .. } => *not,
    }
}

fn matches(world: &World, rule: &CompiledRule, packet: &Packet) -> bool {
    rule.variants
        .iter()
        .any(|variant| variant.iter().all(|c| holds(world, c, packet)))
}

/// The first rule that matches, recording skipped ones.
fn first_match(
    world: &World,
    owner: &str,
    rules: &[CompiledRule],
    packet: &Packet,
    steps: &mut Vec<Step>,
) -> Option<Action> {
    for rule in rules {
        if let Some(reason) = &rule.never {
            steps.push(Step::Skipped {
                owner: owner.to_string(),
                index: rule.index,
                reason: reason.clone(),
            });
            continue;
        }
        if matches(world, rule, packet) {
            if let Some(reason) = &rule.widened {
                steps.push(Step::Widened {
                    owner: owner.to_string(),
                    index: rule.index,
                    reason: reason.clone(),
                });
            }
            steps.push(Step::Rule {
                owner: owner.to_string(),
                index: rule.index,
                text: rule.text.clone(),
                action: rule.action,
            });
            if rule.action != Action::Log {
                return Some(rule.action);
            }
        }
    }
    steps.push(Step::NoMatch(owner.to_string()));
    None
}

fn trace(world: &World, endpoint: &Entity, direction: Direction, packet: &Packet) -> Trace {
    let family = family_of(packet.src);
    let program = world.program(endpoint, direction);
    let mut steps = Vec::new();
    let title = format!("{} of {}", direction.name(), endpoint.display());
    let done = |steps: Vec<Step>, allowed: bool, decided_by: String| Trace {
        title: title.clone(),
        steps,
        allowed,
        decided_by,
    };
    for tier in &program.tiers {
        steps.push(Step::Tier(tier.name.clone()));
        if !tier.exists {
            steps.push(Step::Note(format!("tier {} does not exist", tier.name)));
            return done(
                steps,
                false,
                format!("tier {} does not exist: deny", tier.name),
            );
        }
        let mut passed = false;
        for &index in &tier.policies {
            let policy = &world.policies[index];
            let compiled = compile_policy(policy, direction, family);
            let owner = format!("policy {}", policy.name);
            match first_match(world, &owner, &compiled, packet, &mut steps) {
                Some(Action::Allow) => return done(steps, true, format!("{owner}: allow")),
                Some(Action::Deny) => return done(steps, false, format!("{owner}: deny")),
                Some(Action::Pass) => {
                    passed = true;
                    break;
                }
                _ => {}
            }
        }
        if !passed {
            steps.push(Step::TierDefault {
                tier: tier.name.clone(),
                action: tier.default_action,
            });
            if tier.default_action == Action::Deny {
                return done(
                    steps,
                    false,
                    format!(
                        "end of tier {}: no policy allowed the packet (default deny)",
                        tier.name
                    ),
                );
            }
        }
    }
    for name in &program.profiles {
        let Some(profile) = world.profiles.get(name) else {
            steps.push(Step::Note(format!("profile {name} does not exist")));
            return done(steps, false, format!("profile {name} does not exist: deny"));
        };
        let rules = match direction {
            Direction::Ingress => &profile.ingress,
            Direction::Egress => &profile.egress,
        };
        let compiled: Vec<CompiledRule> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(r, i, None, family))
            .collect();
        let owner = format!("profile {name}");
        match first_match(world, &owner, &compiled, packet, &mut steps) {
            Some(Action::Allow) => return done(steps, true, format!("{owner}: allow")),
            Some(Action::Deny) => return done(steps, false, format!("{owner}: deny")),
            _ => {}
        }
    }
    done(
        steps,
        false,
        "no policy or profile allowed the packet".into(),
    )
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.title)?;
        if self.steps.is_empty() {
            writeln!(f, "  no tier applies")?;
        }
        for step in &self.steps {
            match step {
                Step::Tier(name) => writeln!(f, "  tier {name}")?,
                Step::Rule {
                    owner,
                    index,
                    text,
                    action,
                } => writeln!(f, "    {owner}: rule {index} matched ({text}) → {action}")?,
                Step::NoMatch(owner) => writeln!(f, "    {owner}: no rule matched")?,
                Step::Skipped {
                    owner,
                    index,
                    reason,
                } => writeln!(f, "    {owner}: rule {index} skipped: {reason}")?,
                Step::Widened {
                    owner,
                    index,
                    reason,
                } => writeln!(
                    f,
                    "    {owner}: rule {index} widened: it {reason}, so it acts as if they matched (a Pass denies)"
                )?,
                Step::TierDefault { tier, action } => {
                    writeln!(f, "    end of tier {tier}: {action}")?
                }
                Step::Note(note) => writeln!(f, "    {note}")?,
            }
        }
        writeln!(
            f,
            "  verdict: {} — {}",
            if self.allowed { "ALLOW" } else { "DENY" },
            self.decided_by
        )
    }
}
