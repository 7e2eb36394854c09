//! A rule as conditions, per family, with Calico's semantics: all criteria of a rule must
//! hold; within a list (nets, ports, set members) any may; a rule selector of a namespaced
//! policy is limited to the policy's namespace (or to the namespaces its namespaceSelector
//! picks) as soon as any selector field is used; `notSelector` is not scoped.

use std::collections::BTreeSet;

use ipnet::IpNet;
use sha2::{Digest, Sha224};
use twill_shared::resource::fields::{Action, Port, Protocol};
use twill_shared::resource::policy::{EntityRule, Rule};
use twill_shared::selector::Selector;

use crate::ir::{Family, Side};
use crate::model::{and, namespace_scope, service_account_scope, SERVICE_ACCOUNT_LABEL};

/// Which entities a rule selector picks, named by its canonical text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selection {
    /// The scoped selector's canonical text (the set's identity).
    pub canonical: String,
    /// The scoped selector.
    pub selector: SelectorKey,
}

/// A selector usable as a map key (compared by canonical text).
#[derive(Debug, Clone)]
pub struct SelectorKey(pub Selector);

impl PartialEq for SelectorKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.canonical() == other.0.canonical()
    }
}
impl Eq for SelectorKey {}
impl std::hash::Hash for SelectorKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.canonical().hash(state);
    }
}
impl PartialOrd for SelectorKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SelectorKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.canonical().cmp(&other.0.canonical())
    }
}

impl Selection {
    fn new(selector: Selector) -> Selection {
        Selection {
            canonical: selector.canonical(),
            selector: SelectorKey(selector),
        }
    }
}

/// One condition of a compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// The IP protocol is (not) this.
    Protocol {
        /// Negated.
        not: bool,
        /// IANA number.
        number: u8,
    },
    /// The address is (not) in one of these networks.
    Nets {
        /// Source or destination.
        side: Side,
        /// Negated: in none of them.
        not: bool,
        /// The networks (of the family).
        nets: Vec<IpNet>,
    },
    /// The address belongs (not) to an entity the selection picks.
    Selected {
        /// Source or destination.
        side: Side,
        /// Negated.
        not: bool,
        /// The selection.
        selection: Selection,
    },
    /// The port is (not) in these ranges.
    Ports {
        /// Source or destination port.
        side: Side,
        /// Negated.
        not: bool,
        /// Inclusive ranges.
        ranges: Vec<(u16, u16)>,
    },
    /// The address and port are (not) a named port of an entity the selection picks.
    NamedPort {
        /// Source or destination.
        side: Side,
        /// Negated.
        not: bool,
        /// Whose ports.
        selection: Selection,
        /// Protocol of the port.
        protocol: u8,
        /// The port's name.
        name: String,
    },
    /// ICMP type (and code).
    Icmp {
        /// Negated.
        not: bool,
        /// Type.
        icmp_type: u8,
        /// Code.
        code: Option<u8>,
    },
}

/// A rule compiled for one family: it matches when any variant's conditions all hold; no
/// variants means it never matches in this family.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    /// Its position in the policy's (or profile's) rule list.
    pub index: usize,
    /// What it does.
    pub action: Action,
    /// Alternatives (OR), each a conjunction.
    pub variants: Vec<Vec<Condition>>,
    /// Why it can never match here, when it cannot (for explain).
    pub never: Option<String>,
    /// What it names that Twill does not enforce, when it names any: a Deny or Log rule acts
    /// as if that matched (denies or logs more, never less); a Pass rule, which would skip
    /// the rest of its tier (and its Deny rules) for more traffic, denies instead.
    pub widened: Option<String>,
    /// A short text of the rule, for comments and explain.
    pub text: String,
}

/// The name of the all-entities selection (`all()`), for named ports without a selector.
fn all_selection() -> Selection {
    Selection::new(Selector::All)
}

/// Calico's scoping of an entity rule's positive selector; `None` when the rule names no
/// endpoints (any address).
pub fn scoped_selector(entity: &EntityRule, policy_namespace: Option<&str>) -> Option<Selector> {
    let namespaces = match (&entity.namespace_selector, policy_namespace) {
        (Some(selector), _) => Some(namespace_scope(selector.selector())),
        (None, Some(namespace)) => Some(Selector::Equal(
            crate::model::NAMESPACE_LABEL.into(),
            namespace.into(),
        )),
        (None, None) => None,
    };
    let mut parts = Vec::new();
    if let Some(accounts) = &entity.service_accounts {
        if let Some(selector) = &accounts.selector {
            parts.push(service_account_scope(selector.selector()));
        }
        if let Some(names) = accounts.names.as_ref().filter(|n| !n.is_empty()) {
            parts.push(Selector::In(
                SERVICE_ACCOUNT_LABEL.into(),
                names.iter().cloned().collect(),
            ));
        }
    }
    if let Some(selector) = &entity.selector {
        parts.push(selector.selector().clone());
    }
    let any_selector =
        !parts.is_empty() || entity.not_selector.is_some() || entity.namespace_selector.is_some();
    match namespaces {
        Some(scope) if any_selector => Some(and(std::iter::once(scope).chain(parts).collect())),
        _ if !parts.is_empty() => Some(and(parts)),
        _ => None,
    }
}

fn protocol_number(protocol: Protocol, family: Family) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Icmp if family == Family::V6 => 58,
        Protocol::Icmp => 1,
        Protocol::IcmpV6 => 58,
        Protocol::Sctp => 132,
        Protocol::UdpLite => 136,
        Protocol::Number(n) => n,
    }
}

fn in_family(net: &IpNet, family: Family) -> bool {
    Family::of(net) == family
}

/// The ranges and names of a port list.
fn split_ports(ports: &[Port]) -> (Vec<(u16, u16)>, Vec<String>) {
    let mut ranges = Vec::new();
    let mut names = Vec::new();
    for port in ports {
        match port {
            Port::Number(n) => ranges.push((*n, *n)),
            Port::Range(low, high) => ranges.push((*low, *high)),
            Port::Named(name) => names.push(name.clone()),
        }
    }
    (ranges, names)
}

/// Port lists longer than one multiport match holds (15 slots, a range takes two), split.
pub fn chunk_ranges(ranges: &[(u16, u16)]) -> Vec<Vec<(u16, u16)>> {
    let mut chunks: Vec<Vec<(u16, u16)>> = Vec::new();
    let mut used = 0;
    for &(low, high) in ranges {
        let cost = if low == high { 1 } else { 2 };
        if chunks.is_empty() || used + cost > 15 {
            chunks.push(Vec::new());
            used = 0;
        }
        chunks.last_mut().expect("pushed").push((low, high));
        used += cost;
    }
    chunks
}

/// What one side of a rule requires: conditions all variants share, and alternatives for
/// its ports (numbers, or each named port).
struct SideConditions {
    common: Vec<Condition>,
    port_alternatives: Vec<Vec<Condition>>,
    /// Criteria Twill does not enforce yet, in words.
    unenforced: Vec<&'static str>,
}

fn side_conditions(
    entity: Option<&EntityRule>,
    side: Side,
    policy_namespace: Option<&str>,
    protocol: Option<u8>,
    family: Family,
) -> Result<SideConditions, String> {
    let mut common = Vec::new();
    let mut port_alternatives = Vec::new();
    let mut unenforced = Vec::new();
    let Some(entity) = entity else {
        return Ok(SideConditions {
            common,
            port_alternatives,
            unenforced,
        });
    };
    if entity.domains.as_ref().is_some_and(|d| !d.is_empty()) {
        unenforced.push("domain names");
    }
    if entity.services.is_some() {
        unenforced.push("Kubernetes services");
    }
    if let Some(nets) = entity.nets.as_ref().filter(|n| !n.is_empty()) {
        let nets: Vec<IpNet> = nets
            .iter()
            .map(|c| c.0.trunc())
            .filter(|n| in_family(n, family))
            .collect();
        if nets.is_empty() {
            return Err("its nets are all of the other address family".into());
        }
        common.push(Condition::Nets {
            side,
            not: false,
            nets,
        });
    }
    if let Some(nets) = entity.not_nets.as_ref() {
        let nets: Vec<IpNet> = nets
            .iter()
            .map(|c| c.0.trunc())
            .filter(|n| in_family(n, family))
            .collect();
        if nets.iter().any(|n| n.prefix_len() == 0) {
            return Err("notNets excludes every address".into());
        }
        if !nets.is_empty() {
            common.push(Condition::Nets {
                side,
                not: true,
                nets,
            });
        }
    }
    let positive = scoped_selector(entity, policy_namespace);
    if let Some(selector) = &positive {
        common.push(Condition::Selected {
            side,
            not: false,
            selection: Selection::new(selector.clone()),
        });
    }
    if let Some(not_selector) = &entity.not_selector {
        common.push(Condition::Selected {
            side,
            not: true,
            selection: Selection::new(not_selector.selector().clone()),
        });
    }
    let port_owner = positive
        .clone()
        .map(Selection::new)
        .unwrap_or_else(all_selection);
    if let Some(ports) = entity.ports.as_ref().filter(|p| !p.is_empty()) {
        let protocol = protocol.ok_or("has ports but no protocol")?;
        let (ranges, names) = split_ports(ports);
        for chunk in chunk_ranges(&ranges) {
            port_alternatives.push(vec![Condition::Ports {
                side,
                not: false,
                ranges: chunk,
            }]);
        }
        for name in names {
            port_alternatives.push(vec![Condition::NamedPort {
                side,
                not: false,
                selection: port_owner.clone(),
                protocol,
                name,
            }]);
        }
    }
    if let Some(ports) = entity.not_ports.as_ref().filter(|p| !p.is_empty()) {
        protocol.ok_or("has notPorts but no protocol")?;
        let (ranges, names) = split_ports(ports);
        for chunk in chunk_ranges(&ranges) {
            common.push(Condition::Ports {
                side,
                not: true,
                ranges: chunk,
            });
        }
        for name in names {
            common.push(Condition::NamedPort {
                side,
                not: true,
                selection: port_owner.clone(),
                protocol: protocol.unwrap_or(6),
                name,
            });
        }
    }
    Ok(SideConditions {
        common,
        port_alternatives,
        unenforced,
    })
}

/// A short text of a rule for comments and explain: `Allow TCP from selector … to ports …`.
pub fn rule_text(rule: &Rule) -> String {
    let mut text = rule.action.map_or("Allow", |a| a.as_str()).to_string();
    if let Some(protocol) = rule.protocol {
        text.push_str(&format!(" {protocol}"));
    }
    let describe = |entity: &EntityRule| {
        let mut parts = Vec::new();
        if let Some(s) = &entity.selector {
            parts.push(format!("selector {}", s.as_str()));
        }
        if let Some(s) = &entity.namespace_selector {
            parts.push(format!("namespaceSelector {}", s.as_str()));
        }
        if let Some(s) = &entity.not_selector {
            parts.push(format!("notSelector {}", s.as_str()));
        }
        if let Some(nets) = &entity.nets {
            parts.push(format!(
                "nets {}",
                nets.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if let Some(nets) = &entity.not_nets {
            parts.push(format!(
                "notNets {}",
                nets.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if let Some(ports) = &entity.ports {
            parts.push(format!(
                "ports {}",
                ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if let Some(ports) = &entity.not_ports {
            parts.push(format!(
                "notPorts {}",
                ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        parts.join(" ")
    };
    if let Some(source) = rule.source.as_ref().map(describe).filter(|s| !s.is_empty()) {
        text.push_str(&format!(" from {source}"));
    }
    if let Some(destination) = rule
        .destination
        .as_ref()
        .map(describe)
        .filter(|s| !s.is_empty())
    {
        text.push_str(&format!(" to {destination}"));
    }
    text
}

/// Compiles one rule for one family.
pub fn compile_rule(
    rule: &Rule,
    index: usize,
    policy_namespace: Option<&str>,
    family: Family,
) -> CompiledRule {
    let action = rule.action.unwrap_or(Action::Allow);
    let text = rule_text(rule);
    let never = |reason: String| CompiledRule {
        index,
        action,
        variants: Vec::new(),
        never: Some(reason),
        widened: None,
        text: text.clone(),
    };
    let wanted_version = match family {
        Family::V4 => 4,
        Family::V6 => 6,
    };
    if rule.ip_version.is_some_and(|v| v != wanted_version) {
        return never(format!(
            "ipVersion {} only",
            rule.ip_version.unwrap_or_default()
        ));
    }
    let mut unenforced: Vec<&'static str> = Vec::new();
    if rule.http.is_some() {
        unenforced.push("HTTP fields");
    }
    let protocol = rule.protocol.map(|p| protocol_number(p, family));
    let mut common = Vec::new();
    if let Some(number) = protocol {
        if (number == 1 && family == Family::V6) || (number == 58 && family == Family::V4) {
            return never("its ICMP protocol is of the other family".into());
        }
        common.push(Condition::Protocol { not: false, number });
    }
    if let Some(not) = rule.not_protocol {
        common.push(Condition::Protocol {
            not: true,
            number: protocol_number(not, family),
        });
    }
    if let Some(icmp) = &rule.icmp {
        if let Some(icmp_type) = icmp.icmp_type {
            common.push(Condition::Icmp {
                not: false,
                icmp_type,
                code: icmp.code,
            });
        }
    }
    if let Some(icmp) = &rule.not_icmp {
        if let Some(icmp_type) = icmp.icmp_type {
            common.push(Condition::Icmp {
                not: true,
                icmp_type,
                code: icmp.code,
            });
        }
    }
    let sides = [
        side_conditions(
            rule.source.as_ref(),
            Side::Src,
            policy_namespace,
            protocol,
            family,
        ),
        side_conditions(
            rule.destination.as_ref(),
            Side::Dst,
            policy_namespace,
            protocol,
            family,
        ),
    ];
    let mut variants: Vec<Vec<Condition>> = vec![common];
    for side in sides {
        let side = match side {
            Ok(side) => side,
            Err(reason) => return never(reason),
        };
        unenforced.extend(side.unenforced.iter().copied());
        for variant in &mut variants {
            variant.extend(side.common.iter().cloned());
        }
        if !side.port_alternatives.is_empty() {
            variants = variants
                .iter()
                .flat_map(|variant| {
                    side.port_alternatives.iter().map(move |alternative| {
                        let mut combined = variant.clone();
                        combined.extend(alternative.iter().cloned());
                        combined
                    })
                })
                .collect();
        }
    }
    // A criterion Twill cannot check never opens traffic: an Allow rule naming one matches
    // nothing; a Deny or Log rule acts as if it matched (it does more, never less); a Pass
    // rule denies, as passing more traffic to the next tier would skip this tier's Deny rules
    // and its end-of-tier deny for it.
    let widened = (!unenforced.is_empty()).then(|| {
        unenforced.dedup();
        format!(
            "matches {}, which Twill does not enforce yet",
            unenforced.join(" and ")
        )
    });
    let mut action = action;
    if let Some(reason) = &widened {
        match action {
            Action::Allow => {
                return never(format!(
                    "{reason}; an Allow rule naming them matches nothing"
                ))
            }
            Action::Pass => action = Action::Deny,
            Action::Deny | Action::Log => {}
        }
    }
    CompiledRule {
        index,
        action,
        variants,
        never: None,
        widened,
        text,
    }
}

/// Every rule of a policy in one direction, compiled for one family.
pub fn compile_policy(
    policy: &crate::model::Policy,
    direction: super::programs::Direction,
    family: Family,
) -> Vec<CompiledRule> {
    let rules = match direction {
        super::programs::Direction::Ingress => policy.ingress.as_deref().unwrap_or_default(),
        super::programs::Direction::Egress => policy.egress.as_deref().unwrap_or_default(),
    };
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| compile_rule(r, i, policy.namespace.as_deref(), family))
        .collect()
}

/// A short, stable digest of a text (hex of SHA-224), `len` characters.
pub fn digest(text: &str, len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = Sha224::digest(text.as_bytes());
    let mut hex = String::with_capacity(hash.len() * 2);
    for byte in hash {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex.truncate(len);
    hex
}

/// Every selection and named port a set of compiled rules refers to.
pub fn referenced(rules: &[CompiledRule]) -> BTreeSet<Condition> {
    rules
        .iter()
        .flat_map(|r| r.variants.iter().flatten())
        .filter(|c| {
            matches!(
                c,
                Condition::Selected { .. } | Condition::NamedPort { .. } | Condition::Nets { .. }
            )
        })
        .cloned()
        .collect()
}
