//! The chains and sets of one family, from the endpoints' programs and the compiled rules.
//!
//! ```text
//! FORWARD ─▶ twl-FORWARD: established/related accepted, invalid dropped (workload traffic)
//!              ├─ -i tw+ ─▶ twl-from-wl-dispatch ─(-i twX, goto)─▶ twl-fw-twX   (egress)
//!              ├─ -o tw+ ─▶ twl-to-wl-dispatch   ─(-o twX, goto)─▶ twl-tw-twX   (ingress)
//!              └─ accept mark ─▶ ACCEPT        (both ends' chains ran and allowed)
//! INPUT ───▶ twl-INPUT: -i tw+ ─▶ twl-wl-to-host: egress policy, then the configured action
//!              └─ twl-from-hep-dispatch ─(-i IF, goto)─▶ twl-fh-IF   (host endpoint ingress)
//! OUTPUT ──▶ twl-OUTPUT ─▶ twl-to-hep-dispatch ─(-o IF, goto)─▶ twl-th-IF (host endpoint egress)
//!   twl-fh-/twl-th-: established, failsafe ports, then tiers and profiles as below.
//! twl-tw-X / twl-fw-X: per tier, its policies' chains (twl-pi-*/twl-po-*), an accept mark
//!   returns, a pass mark skips to the next tier, the tier's end denies; then profiles
//!   (twl-pri-*/twl-pro-*); then drop.
//! ```
//! Unknown workload interfaces are dropped by the dispatch chains (fail closed).

use std::collections::BTreeMap;

use twill_shared::resource::fields::Action;

use super::compile::{compile_policy, compile_rule, digest, CompiledRule, Condition};
use super::programs::{Direction, Flavour, Program, World};
use super::{Config, EndpointToHost};
use crate::ir::{
    Family, Hook, Match, Member, Ports, Rule, SetKind, Target, MARK_ACCEPT, MARK_MASK, MARK_PASS,
    NFLOG_GROUP_EGRESS, NFLOG_GROUP_INGRESS,
};
use crate::model::{Entity, Profile};

/// Chain of Twill's FORWARD hook.
pub const FORWARD_CHAIN: &str = "twl-FORWARD";
/// Chain of Twill's INPUT hook.
pub const INPUT_CHAIN: &str = "twl-INPUT";
/// Workload → host traffic.
pub const WL_TO_HOST_CHAIN: &str = "twl-wl-to-host";
/// Dispatch of traffic from workloads.
pub const FROM_WL_DISPATCH: &str = "twl-from-wl-dispatch";
/// Dispatch of traffic to workloads.
pub const TO_WL_DISPATCH: &str = "twl-to-wl-dispatch";
/// Chain of Twill's OUTPUT hook (host endpoints' egress).
pub const OUTPUT_CHAIN: &str = "twl-OUTPUT";
/// Dispatch of traffic arriving through host endpoints.
pub const FROM_HEP_DISPATCH: &str = "twl-from-hep-dispatch";
/// Dispatch of traffic leaving through host endpoints.
pub const TO_HEP_DISPATCH: &str = "twl-to-hep-dispatch";

fn family_tag(family: Family) -> char {
    match family {
        Family::V4 => '4',
        Family::V6 => '6',
    }
}

/// The chain of a policy in one direction.
pub fn policy_chain(policy_name: &str, kind: &str, direction: Direction) -> String {
    let prefix = match direction {
        Direction::Ingress => "twl-pi-",
        Direction::Egress => "twl-po-",
    };
    format!("{prefix}{}", digest(&format!("{kind}/{policy_name}"), 21))
}

/// The chain of a profile in one direction.
pub fn profile_chain(profile: &str, direction: Direction) -> String {
    let prefix = match direction {
        Direction::Ingress => "twl-pri-",
        Direction::Egress => "twl-pro-",
    };
    format!("{prefix}{}", digest(profile, 20))
}

/// The chain of a workload endpoint in one direction (`tw`: to the workload, ingress).
pub fn endpoint_chain(interface: &str, direction: Direction) -> String {
    match direction {
        Direction::Ingress => format!("twl-tw-{interface}"),
        Direction::Egress => format!("twl-fw-{interface}"),
    }
}

/// The set a condition refers to, if it refers to one.
pub fn set_name(condition: &Condition, family: Family) -> Option<String> {
    let tag = family_tag(family);
    match condition {
        Condition::Selected { selection, .. } => {
            Some(format!("twl-s{tag}-{}", digest(&selection.canonical, 24)))
        }
        Condition::NamedPort {
            selection,
            protocol,
            name,
            ..
        } => Some(format!(
            "twl-p{tag}-{}",
            digest(&format!("{},{protocol},{name}", selection.canonical), 24)
        )),
        // Several nets, or nets excluded: iptables takes one `-s`/`-d` per rule, so a rule
        // with both `nets` and `notNets` (ipBlock with except) needs a set for the exclusion.
        Condition::Nets { nets, not, .. } if nets.len() > 1 || *not => {
            let mut sorted: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            sorted.sort();
            Some(format!("twl-n{tag}-{}", digest(&sorted.join(","), 24)))
        }
        _ => None,
    }
}

/// The selector of a condition whose set's members come from entities.
pub fn set_selector(condition: &Condition) -> Option<&twill_shared::selector::Selector> {
    match condition {
        Condition::Selected { selection, .. } | Condition::NamedPort { selection, .. } => {
            Some(&selection.selector.0)
        }
        _ => None,
    }
}

/// What one entity the condition's selector matches puts in its set, in one family.
pub fn contributions(condition: &Condition, entity: &Entity, family: Family) -> Vec<Member> {
    match condition {
        Condition::Selected { .. } => entity
            .nets
            .iter()
            .filter(|n| Family::of(n) == family)
            .map(|n| Member::Net(*n))
            .collect(),
        Condition::NamedPort { protocol, name, .. } => entity
            .ports
            .iter()
            .filter(|p| p.name == *name && p.protocol == *protocol)
            .flat_map(|p| entity.nets.iter().map(move |n| (n, p.port)))
            .filter(|(n, _)| Family::of(n) == family)
            .map(|(n, port)| Member::IpPort(n.addr(), *protocol, port))
            .collect(),
        _ => Vec::new(),
    }
}

/// The members of a condition's set, from every entity in the cluster, each with the number
/// of entities that put it there (so that one entity's change updates it exactly).
pub fn set_members(
    condition: &Condition,
    world: &World,
    family: Family,
) -> (SetKind, BTreeMap<Member, u32>, String) {
    let mut counts: BTreeMap<Member, u32> = BTreeMap::new();
    match condition {
        Condition::Selected { selection, .. } | Condition::NamedPort { selection, .. } => {
            for entity in world.select(&selection.selector.0) {
                for member in contributions(condition, entity, family) {
                    *counts.entry(member).or_default() += 1;
                }
            }
        }
        Condition::Nets { nets, .. } => counts.extend(nets.iter().map(|n| (Member::Net(*n), 1))),
        _ => {}
    }
    match condition {
        Condition::Selected { selection, .. } => (
            SetKind::Net,
            counts,
            format!("selector {}", selection.canonical),
        ),
        Condition::NamedPort {
            selection, name, ..
        } => (
            SetKind::IpPort,
            counts,
            format!("named port {name} of {}", selection.canonical),
        ),
        Condition::Nets { .. } => (SetKind::Net, counts, "nets".to_string()),
        _ => (SetKind::Net, counts, String::new()),
    }
}

fn to_match(condition: &Condition, family: Family) -> Match {
    let set = || set_name(condition, family).expect("conditions with sets have names");
    match condition {
        Condition::Protocol { not, number } => Match::Protocol {
            not: *not,
            number: *number,
        },
        Condition::Nets {
            side,
            not: false,
            nets,
        } if nets.len() == 1 => Match::Net {
            side: *side,
            not: false,
            net: nets[0],
        },
        Condition::Nets { side, not, .. } | Condition::Selected { side, not, .. } => Match::Set {
            side: *side,
            not: *not,
            set: set(),
        },
        Condition::NamedPort { side, not, .. } => Match::SetIpPort {
            side: *side,
            not: *not,
            set: set(),
        },
        Condition::Ports { side, not, ranges } => Match::Ports {
            side: *side,
            not: *not,
            ports: Ports(ranges.clone()),
        },
        Condition::Icmp {
            not,
            icmp_type,
            code,
        } => Match::Icmp {
            not: *not,
            icmp_type: *icmp_type,
            code: *code,
        },
    }
}

fn rule(matches: Vec<Match>, target: Target, comment: impl Into<String>) -> Rule {
    Rule {
        matches,
        target,
        comment: comment.into(),
    }
}

fn accepted() -> Match {
    Match::Mark {
        value: MARK_ACCEPT,
        mask: MARK_ACCEPT,
    }
}

fn not_passed() -> Match {
    Match::Mark {
        value: 0,
        mask: MARK_PASS,
    }
}

/// The rules of a policy or profile chain.
fn rules_chain(
    owner: &str,
    rules: &[CompiledRule],
    direction: Direction,
    family: Family,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for compiled in rules {
        let comment = format!(
            "{owner} {} rule {}: {}",
            direction.name(),
            compiled.index,
            compiled.text
        );
        for variant in &compiled.variants {
            let matches: Vec<Match> = variant.iter().map(|c| to_match(c, family)).collect();
            let target = match compiled.action {
                Action::Allow => Target::SetMark {
                    value: MARK_ACCEPT,
                    mask: MARK_ACCEPT,
                },
                Action::Pass => Target::SetMark {
                    value: MARK_PASS,
                    mask: MARK_PASS,
                },
                Action::Deny => Target::Drop,
                Action::Log => Target::Nflog {
                    group: match direction {
                        Direction::Ingress => NFLOG_GROUP_INGRESS,
                        Direction::Egress => NFLOG_GROUP_EGRESS,
                    },
                    prefix: log_prefix(owner, direction, compiled.index),
                },
            };
            out.push(rule(matches, target, comment.clone()));
        }
        match compiled.action {
            Action::Allow if !compiled.variants.is_empty() => {
                out.push(rule(
                    vec![accepted()],
                    Target::Return,
                    format!("{owner}: accepted"),
                ));
            }
            Action::Pass if !compiled.variants.is_empty() => out.push(rule(
                vec![Match::Mark {
                    value: MARK_PASS,
                    mask: MARK_PASS,
                }],
                Target::Return,
                format!("{owner}: passed to the next tier"),
            )),
            _ => {}
        }
    }
    out
}

/// The NFLOG prefix of a Log rule: `twl <dir> <owner> <rule>` (at most 64 bytes).
pub fn log_prefix(owner: &str, direction: Direction, index: usize) -> String {
    let tag = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    let mut prefix = format!("twl {tag} {owner} {index} ");
    while prefix.len() > 63 {
        prefix.remove(prefix.len() / 2);
    }
    prefix
}

/// How an endpoint chain ends its tiers and itself.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// A tier whose policies all fell through denies (Deny tiers).
    tier_end_drop: bool,
    /// Profiles follow the tiers, and nothing allowed at the end drops.
    profiles_and_drop: bool,
}

const FULL: Style = Style {
    tier_end_drop: true,
    profiles_and_drop: true,
};

/// The chain of an endpoint in one direction.
fn endpoint_rules(program: &Program, world: &World, direction: Direction) -> Vec<Rule> {
    styled_endpoint_rules(program, world, direction, FULL)
}

fn styled_endpoint_rules(
    program: &Program,
    world: &World,
    direction: Direction,
    style: Style,
) -> Vec<Rule> {
    let mut out = vec![rule(
        vec![],
        Target::SetMark {
            value: 0,
            mask: MARK_MASK,
        },
        "clear marks",
    )];
    for tier in &program.tiers {
        if !tier.exists {
            out.push(rule(
                vec![],
                Target::Drop,
                format!("tier {} does not exist: deny", tier.name),
            ));
            return out;
        }
        out.push(rule(
            vec![],
            Target::SetMark {
                value: 0,
                mask: MARK_PASS,
            },
            format!("start of tier {}", tier.name),
        ));
        for &index in &tier.policies {
            let policy = &world.policies[index];
            let chain = policy_chain(&policy.name, &format!("{:?}", policy.key.kind), direction);
            out.push(rule(
                vec![not_passed()],
                Target::Jump(chain),
                format!("policy {}", policy.name),
            ));
            out.push(rule(
                vec![accepted()],
                Target::Return,
                format!("policy {} accepted", policy.name),
            ));
        }
        if tier.default_action == Action::Deny && style.tier_end_drop {
            out.push(rule(
                vec![not_passed()],
                Target::Drop,
                format!("end of tier {}: deny", tier.name),
            ));
        }
    }
    if !style.profiles_and_drop {
        return out;
    }
    for profile in &program.profiles {
        out.push(rule(
            vec![],
            Target::Jump(profile_chain(profile, direction)),
            format!("profile {profile}"),
        ));
        out.push(rule(
            vec![accepted()],
            Target::Return,
            format!("profile {profile} accepted"),
        ));
    }
    out.push(rule(
        vec![],
        Target::Drop,
        "no policy or profile allowed the packet",
    ));
    out
}

/// Twill's jumps from the built-in chains: filter FORWARD, INPUT and OUTPUT, and raw
/// PREROUTING (workloads' sources are checked there, before anything else sees the packet).
///
/// With host endpoints on this node, also raw OUTPUT (untracked policy) and mangle
/// PREROUTING (pre-DNAT policy).
pub fn hooks(hosts: bool) -> Vec<Hook> {
    let mut hooks = vec![
        ("filter", "FORWARD", FORWARD_CHAIN),
        ("filter", "INPUT", INPUT_CHAIN),
        ("filter", "OUTPUT", OUTPUT_CHAIN),
        ("raw", "PREROUTING", PREROUTING_CHAIN),
    ];
    if hosts {
        hooks.extend([
            ("raw", "OUTPUT", OUTPUT_CHAIN),
            ("mangle", "PREROUTING", PREROUTING_CHAIN),
        ]);
    }
    hooks
        .into_iter()
        .map(|(table, chain, target)| Hook {
            table: table.into(),
            chain: chain.into(),
            target: target.into(),
        })
        .collect()
}

/// A policy or profile chain with what it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedChain {
    /// Its rules.
    pub rules: Vec<Rule>,
    /// The sets it refers to, by name, with the condition each stands for.
    pub sets: BTreeMap<String, Condition>,
    /// What people should hear about it.
    pub warnings: Vec<String>,
}

fn sets_of(compiled: &[CompiledRule], family: Family) -> BTreeMap<String, Condition> {
    super::compile::referenced(compiled)
        .into_iter()
        .filter_map(|c| Some((set_name(&c, family)?, c)))
        .collect()
}

/// The chain of a policy in one direction and family.
pub fn policy_rules(
    policy: &crate::model::Policy,
    direction: Direction,
    family: Family,
) -> OwnedChain {
    let compiled = compile_policy(policy, direction, family);
    let mut warnings = Vec::new();
    note_never(&compiled, &policy.name, &mut warnings);
    OwnedChain {
        sets: sets_of(&compiled, family),
        rules: rules_chain(
            &format!("policy {}", policy.name),
            &compiled,
            direction,
            family,
        ),
        warnings,
    }
}

/// The chain of an endpoint (a workload's, or a host endpoint's with `host`) in one direction.
pub fn endpoint_chain_rules(
    program: &Program,
    world: &World,
    config: &Config,
    direction: Direction,
    host: bool,
) -> Vec<Rule> {
    let mut rules = if host {
        host_prefix(config, direction)
    } else {
        Vec::new()
    };
    rules.extend(endpoint_rules(program, world, direction));
    rules
}

/// The policy chains an endpoint's program jumps to, with their policies' indexes.
pub fn program_chains(
    program: &Program,
    world: &World,
    direction: Direction,
) -> Vec<(usize, String)> {
    program
        .tiers
        .iter()
        .flat_map(|t| t.policies.iter())
        .map(|&index| {
            let policy = &world.policies[index];
            (
                index,
                policy_chain(&policy.name, &format!("{:?}", policy.key.kind), direction),
            )
        })
        .collect()
}

fn note_never(compiled: &[CompiledRule], owner: &str, warnings: &mut Vec<String>) {
    for rule in compiled {
        if let Some(reason) = rule.never.as_ref().filter(|r| r.contains("not enforce")) {
            warnings.push(format!("{owner} rule {}: {reason}", rule.index));
        }
        if let Some(reason) = &rule.widened {
            warnings.push(format!(
                "{owner} rule {}: {reason}; it acts as a {} rule as if they matched ({} more, never less)",
                rule.index,
                rule.action,
                match rule.action {
                    Action::Deny => "denies",
                    _ => "logs",
                }
            ));
        }
    }
}

/// The chain of a profile (None: missing, which denies) in one direction and family.
pub fn profile_rules(
    profile: Option<&Profile>,
    name: &str,
    direction: Direction,
    family: Family,
) -> OwnedChain {
    let Some(profile) = profile else {
        return OwnedChain {
            rules: vec![rule(
                vec![],
                Target::Drop,
                format!("profile {name} does not exist: deny"),
            )],
            sets: BTreeMap::new(),
            warnings: Vec::new(),
        };
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
    let mut warnings = Vec::new();
    note_never(&compiled, &format!("profile {name}"), &mut warnings);
    OwnedChain {
        sets: sets_of(&compiled, family),
        rules: rules_chain(&format!("profile {name}"), &compiled, direction, family),
        warnings,
    }
}

/// twl-FORWARD, twl-INPUT, twl-wl-to-host and the dispatch chains.
pub fn fixed_chains(
    local: &BTreeMap<String, Entity>,
    config: &Config,
    family: Family,
    hosts: bool,
) -> Vec<(String, Vec<Rule>)> {
    let mut forward = Vec::new();
    let mut input = Vec::new();
    if hosts {
        forward.push(rule(
            vec![Match::Mark {
                value: 0,
                mask: MARK_ACCEPT,
            }],
            Target::Jump(FROM_HEP_FORWARD.into()),
            "forwarded from host endpoints: their applyOnForward policy",
        ));
    }
    for prefix in &config.interface_prefixes {
        let wildcard = format!("{prefix}+");
        let from = Match::InInterface(wildcard.clone());
        let to = Match::OutInterface(wildcard.clone());
        for side in [&from, &to] {
            forward.extend(conntrack(Some(side.clone())));
            forward.push(rule(
                vec![side.clone()],
                Target::SetMark {
                    value: 0,
                    mask: MARK_MASK,
                },
                "clear marks",
            ));
        }
        forward.push(rule(
            vec![from.clone()],
            Target::Jump(FROM_WL_DISPATCH.into()),
            "from workloads: egress policy",
        ));
        forward.push(rule(
            vec![to],
            Target::Jump(TO_WL_DISPATCH.into()),
            "to workloads: ingress policy",
        ));
        input.push(rule(
            vec![from],
            Target::Goto(WL_TO_HOST_CHAIN.into()),
            "from workloads to this host",
        ));
    }
    if hosts {
        forward.push(rule(
            vec![],
            Target::Jump(TO_HEP_FORWARD.into()),
            "forwarded to host endpoints: their applyOnForward policy",
        ));
    }
    forward.push(rule(
        vec![accepted()],
        Target::Accept,
        "policy accepted the packet",
    ));
    let mut to_host = conntrack(None);
    if family == Family::V6 {
        // Neighbour discovery and MLD must reach the host whatever egress policy says.
        for icmp_type in [130, 131, 132, 133, 135, 136] {
            to_host.push(rule(
                vec![
                    Match::Protocol {
                        not: false,
                        number: 58,
                    },
                    Match::Icmp {
                        not: false,
                        icmp_type,
                        code: None,
                    },
                ],
                Target::Accept,
                "IPv6 neighbour discovery",
            ));
        }
    }
    to_host.push(rule(
        vec![],
        Target::SetMark {
            value: 0,
            mask: MARK_MASK,
        },
        "clear marks",
    ));
    to_host.push(rule(
        vec![],
        Target::Jump(FROM_WL_DISPATCH.into()),
        "egress policy of the workload",
    ));
    to_host.push(rule(
        vec![],
        match config.endpoint_to_host {
            EndpointToHost::Accept => Target::Accept,
            EndpointToHost::Drop => Target::Drop,
            EndpointToHost::Return => Target::Return,
        },
        "defaultEndpointToHostAction",
    ));
    let mut from_dispatch = Vec::new();
    let mut to_dispatch = Vec::new();
    for interface in local.keys() {
        from_dispatch.push(rule(
            vec![Match::InInterface(interface.clone())],
            Target::Goto(endpoint_chain(interface, Direction::Egress)),
            format!("from {}", local[interface].display()),
        ));
        to_dispatch.push(rule(
            vec![Match::OutInterface(interface.clone())],
            Target::Goto(endpoint_chain(interface, Direction::Ingress)),
            format!("to {}", local[interface].display()),
        ));
    }
    from_dispatch.push(rule(vec![], Target::Drop, "unknown workload interface"));
    to_dispatch.push(rule(vec![], Target::Drop, "unknown workload interface"));
    vec![
        (FORWARD_CHAIN.into(), forward),
        (INPUT_CHAIN.into(), {
            if hosts {
                input.push(rule(
                    vec![accepted()],
                    Target::Return,
                    "allowed by untracked or pre-DNAT host endpoint policy",
                ));
            }
            input.push(rule(
                vec![],
                Target::Jump(FROM_HEP_DISPATCH.into()),
                "from host endpoints: their ingress policy",
            ));
            input
        }),
        (WL_TO_HOST_CHAIN.into(), to_host),
        (FROM_WL_DISPATCH.into(), from_dispatch),
        (TO_WL_DISPATCH.into(), to_dispatch),
    ]
}

/// The chain of a host endpoint's interface in one direction (`fh`: arriving from the
/// interface, the host's ingress; `th`: leaving through it). `*` is spelled `any`.
pub fn host_chain(interface: &str, direction: Direction) -> String {
    let interface = if interface == "*" { "any" } else { interface };
    match direction {
        Direction::Ingress => format!("twl-fh-{interface}"),
        Direction::Egress => format!("twl-th-{interface}"),
    }
}

/// This node's host endpoints by interface (`*`: every interface but workloads' and lo).
pub fn local_hosts<'a>(
    entities: impl Iterator<Item = &'a Entity>,
    config: &Config,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Entity> {
    let mut hosts = BTreeMap::new();
    for entity in entities {
        if entity.kind != crate::model::EntityKind::Host
            || entity.node.as_deref() != Some(config.node.as_str())
        {
            continue;
        }
        if let Some(interface) = entity.interface.as_deref().filter(|i| !i.is_empty()) {
            hosts.insert(interface.to_string(), entity.clone());
            continue;
        }
        // No interfaceName: the interfaces that hold one of its expectedIPs.
        let holding: Vec<&String> = config
            .host_addresses
            .iter()
            .filter(|(_, addresses)| {
                addresses
                    .iter()
                    .any(|a| entity.nets.iter().any(|n| n.contains(a)))
            })
            .map(|(interface, _)| interface)
            .collect();
        if holding.is_empty() {
            warnings.push(format!(
                "host endpoint {} names no interfaceName and no interface of this node holds one of its expectedIPs: it applies nowhere",
                entity.display()
            ));
        }
        for interface in holding {
            hosts.insert(interface.clone(), entity.clone());
        }
    }
    hosts
}

/// Established and related traffic accepted, invalid dropped (on one interface side, or all).
fn conntrack(side: Option<Match>) -> Vec<Rule> {
    let with = |state: &str| {
        side.iter()
            .cloned()
            .chain([Match::ConntrackState(state.into())])
            .collect()
    };
    vec![
        rule(with("RELATED,ESTABLISHED"), Target::Accept, "established"),
        rule(with("INVALID"), Target::Drop, "invalid"),
    ]
}

/// What a host endpoint's chain does before its policy: established traffic and the
/// failsafe ports (so no policy cuts the node off its datastore, SSH or BGP) are accepted.
fn host_prefix(config: &Config, direction: Direction) -> Vec<Rule> {
    let mut rules = conntrack(None);
    rules.extend(failsafe_rules(config, direction));
    rules
}

/// The failsafe ports of one direction, accepted.
fn failsafe_rules(config: &Config, direction: Direction) -> Vec<Rule> {
    let mut rules = Vec::new();
    let failsafe = match direction {
        Direction::Ingress => &config.failsafe_inbound,
        Direction::Egress => &config.failsafe_outbound,
    };
    for port in failsafe {
        let mut matches = vec![
            Match::Protocol {
                not: false,
                number: port.protocol,
            },
            Match::Ports {
                side: crate::ir::Side::Dst,
                not: false,
                ports: Ports(vec![(port.port, port.port)]),
            },
        ];
        if let Some(net) = port.net {
            let side = match direction {
                Direction::Ingress => crate::ir::Side::Src,
                Direction::Egress => crate::ir::Side::Dst,
            };
            matches.push(Match::Net {
                side,
                not: false,
                net,
            });
        }
        rules.push(rule(
            matches,
            Target::Accept,
            format!("failsafe {}/{}", port.protocol, port.port),
        ));
    }
    rules
}

/// The host endpoint dispatch chains and twl-OUTPUT. Interfaces without a host endpoint are
/// not touched (they return).
pub fn host_dispatch(
    hosts: &BTreeMap<String, Entity>,
    config: &Config,
) -> Vec<(String, Vec<Rule>)> {
    let mut from = vec![rule(
        vec![Match::InInterface("lo".into())],
        Target::Return,
        "loopback",
    )];
    let mut to = vec![rule(
        vec![Match::OutInterface("lo".into())],
        Target::Return,
        "loopback",
    )];
    let mut output = Vec::new();
    if !hosts.is_empty() {
        output.push(rule(
            vec![accepted()],
            Target::Return,
            "allowed by untracked host endpoint policy",
        ));
    }
    for prefix in &config.interface_prefixes {
        output.push(rule(
            vec![Match::OutInterface(format!("{prefix}+"))],
            Target::Return,
            "to workloads: their ingress policy applies",
        ));
    }
    output.push(rule(
        vec![],
        Target::Jump(TO_HEP_DISPATCH.into()),
        "to host endpoints: their egress policy",
    ));
    // Named interfaces first, the `*` endpoint last.
    let ordered = hosts
        .iter()
        .filter(|(i, _)| *i != "*")
        .chain(hosts.iter().filter(|(i, _)| *i == "*"));
    for (interface, endpoint) in ordered {
        let (in_match, out_match) = if interface == "*" {
            (vec![], vec![])
        } else {
            (
                vec![Match::InInterface(interface.clone())],
                vec![Match::OutInterface(interface.clone())],
            )
        };
        from.push(rule(
            in_match,
            Target::Goto(host_chain(interface, Direction::Ingress)),
            format!("from host endpoint {}", endpoint.display()),
        ));
        to.push(rule(
            out_match,
            Target::Goto(host_chain(interface, Direction::Egress)),
            format!("to host endpoint {}", endpoint.display()),
        ));
    }
    vec![
        (FROM_HEP_DISPATCH.into(), from),
        (TO_HEP_DISPATCH.into(), to),
        (OUTPUT_CHAIN.into(), output),
    ]
}

/// Forwarded traffic arriving through host endpoints (filter): `applyOnForward` policy.
pub const FROM_HEP_FORWARD: &str = "twl-from-hep-fwd";
/// Forwarded traffic leaving through host endpoints (filter).
pub const TO_HEP_FORWARD: &str = "twl-to-hep-fwd";
/// Chain of Twill's PREROUTING hooks (raw: untracked policy; mangle: pre-DNAT policy).
pub const PREROUTING_CHAIN: &str = "twl-PREROUTING";
/// Dispatch of pre-DNAT host endpoint policy (mangle).
pub const FROM_HEP_PREDNAT: &str = "twl-from-hep-pd";
/// Dispatch of untracked host endpoint policy, arriving (raw).
pub const FROM_HEP_UNTRACKED: &str = "twl-from-hep-nt";
/// Dispatch of untracked host endpoint policy, leaving (raw).
pub const TO_HEP_UNTRACKED: &str = "twl-to-hep-nt";

/// The chain of a host endpoint's interface for one direction and flavour.
pub fn host_flavour_chain(interface: &str, direction: Direction, flavour: Flavour) -> String {
    let interface = if interface == "*" { "any" } else { interface };
    let side = match direction {
        Direction::Ingress => "fh",
        Direction::Egress => "th",
    };
    match flavour {
        Flavour::Normal => format!("twl-{side}-{interface}"),
        Flavour::Forward => format!("twl-{side}fw-{interface}"),
        Flavour::PreDnat => format!("twl-{side}pd-{interface}"),
        Flavour::Untracked => format!("twl-{side}nt-{interface}"),
    }
}

/// A host endpoint's chain of one flavour but Normal (whose chain is
/// [`endpoint_chain_rules`] with `host`).
///
/// - Forward: established traffic accepted; with no `applyOnForward` policy, forwarded
///   traffic is allowed (Calico: "allow forwarded traffic by default"); otherwise the tiers,
///   and a drop when none allowed (no profiles).
/// - PreDnat and Untracked: the failsafe ports, then the tiers; an Allow marks the packet
///   accepted and returns, a Deny drops; no end-of-tier drop and no default, so what no rule
///   decided goes on to the normal policy.
pub fn host_flavour_rules(
    program: &Program,
    world: &World,
    config: &Config,
    direction: Direction,
    flavour: Flavour,
) -> Vec<Rule> {
    match flavour {
        Flavour::Normal => endpoint_chain_rules(program, world, config, direction, true),
        Flavour::Forward => {
            let mut rules = conntrack(None);
            if program.tiers.is_empty() {
                rules.push(rule(
                    vec![],
                    Target::SetMark {
                        value: MARK_ACCEPT,
                        mask: MARK_MASK,
                    },
                    "no applyOnForward policy: forwarded traffic is allowed",
                ));
                return rules;
            }
            rules.extend(styled_endpoint_rules(
                &Program {
                    tiers: program.tiers.clone(),
                    profiles: Vec::new(),
                },
                world,
                direction,
                FULL,
            ));
            rules
        }
        Flavour::PreDnat | Flavour::Untracked => {
            let mut rules = failsafe_rules(config, direction);
            rules.extend(styled_endpoint_rules(
                program,
                world,
                direction,
                Style {
                    tier_end_drop: false,
                    profiles_and_drop: false,
                },
            ));
            rules
        }
    }
}

/// A dispatch chain over host endpoint interfaces (named ones first, `*` last); what matches
/// none returns.
pub fn flavour_dispatch(
    hosts: &BTreeMap<String, Entity>,
    config: &Config,
    direction: Direction,
    flavour: Flavour,
) -> Vec<Rule> {
    let ordered = hosts
        .iter()
        .filter(|(i, _)| *i != "*")
        .chain(hosts.iter().filter(|(i, _)| *i == "*"));
    let mut rules = workloads_return(config, direction);
    rules.extend(ordered.map(|(interface, endpoint)| {
        let matches = match (interface.as_str(), direction) {
            ("*", _) => vec![],
            (_, Direction::Ingress) => vec![Match::InInterface(interface.clone())],
            (_, Direction::Egress) => vec![Match::OutInterface(interface.clone())],
        };
        rule(
            matches,
            Target::Goto(host_flavour_chain(interface, direction, flavour)),
            format!("host endpoint {}", endpoint.display()),
        )
    }));
    rules
}

/// The set of what this node's workloads may send from, as (source, interface) pairs.
pub fn source_set_name(family: Family) -> String {
    format!("twl-wl-src-{}", family_tag(family))
}

/// Anti-spoofing's set: each local workload's own addresses on its interface, and — only
/// with `workloadSourceSpoofing: Any` — the prefixes its endpoint may spoof. A workload asking
/// for spoofed prefixes without that setting is held to its own addresses, with a warning.
pub fn workload_sources(
    local: &BTreeMap<String, Entity>,
    config: &Config,
    family: Family,
    warnings: &mut Vec<String>,
) -> crate::ir::IpSet {
    let mut members = std::collections::BTreeSet::new();
    for (interface, entity) in local {
        let mut sources: Vec<&ipnet::IpNet> = entity.nets.iter().collect();
        if config.source_spoofing {
            sources.extend(&entity.allowed_sources);
        } else if !entity.allowed_sources.is_empty() && family == Family::V4 {
            warnings.push(format!(
                "workload endpoint {} asks to send from {} (allowSpoofedSourcePrefixes): ignored,                  FelixConfiguration workloadSourceSpoofing is not Any",
                entity.display(),
                entity
                    .allowed_sources
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        members.extend(
            sources
                .into_iter()
                .filter(|n| Family::of(n) == family)
                .map(|n| Member::NetIface(*n, interface.clone())),
        );
    }
    crate::ir::IpSet {
        name: source_set_name(family),
        kind: SetKind::NetIface,
        family,
        members,
        comment: "what workloads may send from (anti-spoofing)".into(),
    }
}

/// Anti-spoofing, first in raw PREROUTING: a packet from a workload interface whose source is
/// not one of that workload's addresses (or prefixes it may spoof) is dropped before
/// connection tracking and any policy sees it. IPv6 link-local sources are let through (the
/// kernel never forwards them; neighbour discovery needs them), as is the unspecified source
/// of ICMPv6 (duplicate address detection).
fn anti_spoofing(config: &Config, family: Family) -> Vec<Rule> {
    let mut rules = Vec::new();
    for prefix in &config.interface_prefixes {
        let from = Match::InInterface(format!("{prefix}+"));
        if family == Family::V6 {
            rules.push(rule(
                vec![
                    from.clone(),
                    Match::Net {
                        side: crate::ir::Side::Src,
                        not: false,
                        net: "fe80::/10".parse().expect("a valid network"),
                    },
                ],
                Target::Return,
                "link-local source: never forwarded",
            ));
            rules.push(rule(
                vec![
                    from.clone(),
                    Match::Net {
                        side: crate::ir::Side::Src,
                        not: false,
                        net: "::/128".parse().expect("a valid network"),
                    },
                    Match::Protocol {
                        not: false,
                        number: 58,
                    },
                ],
                Target::Return,
                "duplicate address detection",
            ));
        }
        rules.push(rule(
            vec![
                from,
                Match::SetSourceIface {
                    not: true,
                    set: source_set_name(family),
                },
            ],
            Target::Drop,
            "source is not the workload's own address (anti-spoofing)",
        ));
    }
    rules
}

/// The raw table's hook chains: anti-spoofing for workloads, then (with host endpoints)
/// untracked policy — workloads' traffic returns; what a host endpoint's untracked policy
/// allowed is exempted from connection tracking.
pub fn raw_hooks(config: &Config, family: Family, hosts: bool) -> Vec<(String, Vec<Rule>)> {
    let mut chains = Vec::new();
    for (name, dispatch, direction) in [
        (PREROUTING_CHAIN, FROM_HEP_UNTRACKED, Direction::Ingress),
        (OUTPUT_CHAIN, TO_HEP_UNTRACKED, Direction::Egress),
    ] {
        let mut rules = if direction == Direction::Ingress {
            anti_spoofing(config, family)
        } else {
            Vec::new()
        };
        if !hosts {
            if !rules.is_empty() {
                chains.push((name.to_string(), rules));
            }
            continue;
        }
        rules.extend(workloads_return(config, direction));
        rules.push(rule(
            vec![],
            Target::SetMark {
                value: 0,
                mask: MARK_MASK,
            },
            "clear marks",
        ));
        rules.push(rule(
            vec![],
            Target::Jump(dispatch.into()),
            "untracked host endpoint policy",
        ));
        rules.push(rule(vec![accepted()], Target::NoTrack, "allowed untracked"));
        chains.push((name.to_string(), rules));
    }
    chains
}

/// The mangle table's hook chain (pre-DNAT policy, arriving traffic only).
pub fn mangle_hooks(config: &Config) -> Vec<(String, Vec<Rule>)> {
    let mut rules = vec![rule(
        vec![accepted()],
        Target::Return,
        "already allowed by untracked policy",
    )];
    rules.extend(workloads_return(config, Direction::Ingress));
    rules.push(rule(
        vec![Match::ConntrackState("RELATED,ESTABLISHED".into())],
        Target::Return,
        "established",
    ));
    rules.push(rule(
        vec![],
        Target::SetMark {
            value: 0,
            mask: MARK_MASK,
        },
        "clear marks",
    ));
    rules.push(rule(
        vec![],
        Target::Jump(FROM_HEP_PREDNAT.into()),
        "pre-DNAT host endpoint policy",
    ));
    vec![(PREROUTING_CHAIN.to_string(), rules)]
}

fn workloads_return(config: &Config, direction: Direction) -> Vec<Rule> {
    config
        .interface_prefixes
        .iter()
        .map(|prefix| {
            let wildcard = format!("{prefix}+");
            let side = match direction {
                Direction::Ingress => Match::InInterface(wildcard),
                Direction::Egress => Match::OutInterface(wildcard),
            };
            rule(vec![side], Target::Return, "workloads: their own policy")
        })
        .collect()
}
