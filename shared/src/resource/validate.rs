//! Rules that involve more than one field, or names, checked after a document has decoded.
//! Single-field rules (CIDRs, ports, protocols, selectors, AS numbers) are checked while
//! decoding, by the types in [`super::fields`].

use std::fmt;

use super::fields::{Action, Cidr, EncapMode, Port, Protocol, SelectorText};
use super::kube::{LabelSelector, NetworkPolicyPeer, NetworkPolicyPort};
use super::policy::{EntityRule, Rule};
use super::{Kind, ObjectMeta, Resource, Scope};
use crate::selector::Selector;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.ingress[0].destination.ports`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Collects problems under a path.
#[derive(Debug, Default)]
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Checks a decoded resource; an empty list means it is valid.
pub fn validate(resource: &Resource) -> Vec<FieldError> {
    let mut checker = Checker::default();
    check_meta(&mut checker, resource.kind(), resource.meta());
    match resource {
        Resource::NetworkPolicy(o) => {
            check_rules(&mut checker, "spec.ingress", o.spec.ingress.as_deref());
            check_rules(&mut checker, "spec.egress", o.spec.egress.as_deref());
            check_not_global(&mut checker, "spec.selector", o.spec.selector.as_ref());
        }
        Resource::GlobalNetworkPolicy(o) => {
            check_rules(&mut checker, "spec.ingress", o.spec.ingress.as_deref());
            check_rules(&mut checker, "spec.egress", o.spec.egress.as_deref());
            check_not_global(&mut checker, "spec.selector", o.spec.selector.as_ref());
            let (pre_dnat, untracked) = (
                o.spec.pre_dnat == Some(true),
                o.spec.do_not_track == Some(true),
            );
            if pre_dnat && untracked {
                checker.fail("spec.preDNAT", "preDNAT and doNotTrack cannot both be true");
            }
            if pre_dnat && o.spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                checker.fail("spec.egress", "a preDNAT policy cannot have egress rules");
            }
            if (pre_dnat || untracked) && o.spec.apply_on_forward != Some(true) {
                checker.fail(
                    "spec.applyOnForward",
                    "must be true when preDNAT or doNotTrack is true",
                );
            }
        }
        Resource::Profile(o) => {
            check_rules(&mut checker, "spec.ingress", o.spec.ingress.as_deref());
            check_rules(&mut checker, "spec.egress", o.spec.egress.as_deref());
        }
        Resource::Tier(o) => {
            if let Some(action) = o.spec.default_action {
                if !matches!(action, Action::Deny | Action::Pass) {
                    checker.fail(
                        "spec.defaultAction",
                        format!("{action:?} is not Deny or Pass"),
                    );
                }
            }
        }
        Resource::HostEndpoint(o) => {
            if o.spec.interface_name.is_none()
                && o.spec.expected_ips.as_ref().is_none_or(Vec::is_empty)
            {
                checker.fail("spec", "a host endpoint needs interfaceName or expectedIPs");
            }
            if o.spec.node.is_none() {
                checker.fail("spec.node", "required");
            }
            if let Some(name) = &o.spec.interface_name {
                if name != "*" {
                    if let Err(reason) = check_interface_name(name) {
                        checker.fail("spec.interfaceName", format!("{reason}, or \"*\""));
                    }
                }
            }
        }
        Resource::WorkloadEndpoint(o) => {
            if let Some(name) = &o.spec.interface_name {
                if let Err(reason) = check_interface_name(name) {
                    checker.fail("spec.interfaceName", reason);
                }
            }
        }
        Resource::FelixConfiguration(o) => {
            if let Some(prefixes) = &o.spec.interface_prefix {
                let bad = prefixes.split(',').find(|prefix| {
                    prefix.is_empty()
                        || prefix.len() > 15
                        || !prefix
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
                });
                if let Some(prefix) = bad {
                    checker.fail(
                        "spec.interfacePrefix",
                        format!(
                            "{prefix:?} is not an interface prefix (a comma-separated list of 1 to 15 \
                             letters, digits, '_' or '-' each)"
                        ),
                    );
                }
            }
        }
        Resource::IpPool(o) => check_ip_pool(&mut checker, &o.spec),
        Resource::BgpPeer(o) => {
            if o.spec.peer_ip.is_some() == o.spec.peer_selector.is_some() {
                checker.fail(
                    "spec",
                    "set exactly one of peerIP (with asNumber) or peerSelector",
                );
            }
            if o.spec.peer_ip.is_some() && o.spec.as_number.is_none() {
                checker.fail("spec.asNumber", "required with peerIP");
            }
            if let Some(peer) = &o.spec.peer_ip {
                if let Err(reason) = check_peer_ip(peer) {
                    checker.fail("spec.peerIP", reason);
                }
            }
            if o.spec.node.is_some() && o.spec.node_selector.is_some() {
                checker.fail(
                    "spec.nodeSelector",
                    "node and nodeSelector cannot both be set",
                );
            }
        }
        Resource::KubernetesNetworkPolicy(o) => check_kube_policy(&mut checker, &o.spec),
        Resource::IpamConfiguration(o) => {
            if resource.name() != "default" {
                checker.fail(
                    "metadata.name",
                    "the IPAM configuration must be named \"default\"",
                );
            }
            let strict = o.spec.strict_affinity == Some(true);
            if o.spec.max_blocks_per_host.is_some_and(|max| max > 0) && !strict {
                checker.fail("spec.maxBlocksPerHost", "needs strictAffinity: true");
            }
            if o.spec.auto_allocate_blocks == Some(false) && !strict {
                checker.fail(
                    "spec.autoAllocateBlocks",
                    "false needs strictAffinity: true (a node with no block could never allocate)",
                );
            }
        }
        Resource::IpamBlock(_) | Resource::BlockAffinity(_) | Resource::IpamHandle(_) => {
            checker.fail(
                "kind",
                format!(
                    "{} objects are written by Twill's IPAM only; use `twillctl ipam release` to free addresses",
                    resource.kind()
                ),
            );
        }
        _ => {}
    }
    checker.errors
}

fn check_meta(checker: &mut Checker, kind: Kind, meta: &ObjectMeta) {
    match meta.name.as_deref() {
        None | Some("") => checker.fail("metadata.name", "required"),
        Some(name) => {
            if let Err(reason) = check_name(name) {
                checker.fail("metadata.name", reason);
            }
        }
    }
    match (kind.scope(), meta.namespace.as_deref()) {
        (Scope::Cluster, Some(_)) => checker.fail(
            "metadata.namespace",
            format!("{kind} is cluster-wide and takes no namespace"),
        ),
        (Scope::Namespaced, Some(namespace)) => {
            if let Err(reason) = check_name(namespace).and_then(|()| no_dots(namespace)) {
                checker.fail("metadata.namespace", reason);
            }
        }
        _ => {}
    }
    for (key, value) in meta.labels.iter().flatten() {
        if let Err(reason) = check_label(key, value) {
            checker.fail(format!("metadata.labels.{key}"), reason);
        }
    }
}

/// A DNS subdomain: lowercase letters, digits, `-` and `.`, starting and ending alphanumeric,
/// at most 253 characters.
fn check_name(name: &str) -> Result<(), String> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = name.len() <= 253
        && name.bytes().all(|b| alnum(b) || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (lowercase letters, digits, '-' and '.', starting and \
             ending with a letter or digit, at most 253 characters)"
        ))
    }
}

/// A Linux interface name, as Calico validates it: 1 to 15 of letters, digits, `_`, `.` and
/// `-` (the kernel's IFNAMSIZ less its NUL; iptables takes nothing longer either).
pub fn check_interface_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an interface name (1 to 15 letters, digits, '_', '.' or '-')"
        ))
    }
}

fn no_dots(name: &str) -> Result<(), String> {
    if name.contains('.') || name.len() > 63 {
        Err(format!(
            "{name:?} is not a valid namespace (no '.', at most 63 characters)"
        ))
    } else {
        Ok(())
    }
}

/// Kubernetes label rules: key `[prefix/]name`, name and value at most 63 characters of
/// letters, digits, `-`, `_`, `.`, starting and ending alphanumeric.
fn check_label(key: &str, value: &str) -> Result<(), String> {
    let segment_ok = |s: &str, allow_empty: bool| {
        (allow_empty && s.is_empty())
            || (s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
    };
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    if !segment_ok(name, false) || (key.contains('/') && check_name(prefix).is_err()) {
        return Err(format!("{key:?} is not a valid label key"));
    }
    if !segment_ok(value, true) {
        return Err(format!("{value:?} is not a valid label value (at most 63 characters of letters, digits, '-', '_', '.')"));
    }
    Ok(())
}

fn check_not_global(checker: &mut Checker, path: &str, selector: Option<&SelectorText>) {
    if selector.is_some_and(|s| mentions_global(s.selector())) {
        checker.fail(
            path,
            "global() is only allowed in a rule's namespaceSelector",
        );
    }
}

fn mentions_global(selector: &Selector) -> bool {
    match selector {
        Selector::Global => true,
        Selector::Not(inner) => mentions_global(inner),
        Selector::And(list) | Selector::Or(list) => list.iter().any(mentions_global),
        _ => false,
    }
}

fn check_rules(checker: &mut Checker, path: &str, rules: Option<&[Rule]>) {
    for (index, rule) in rules.unwrap_or_default().iter().enumerate() {
        check_rule(checker, &format!("{path}[{index}]"), rule);
    }
}

fn check_rule(checker: &mut Checker, path: &str, rule: &Rule) {
    if rule.action.is_none() {
        checker.fail(
            format!("{path}.action"),
            "required (Allow, Deny, Log or Pass)",
        );
    }
    if let Some(version) = rule.ip_version {
        if version != 4 && version != 6 {
            checker.fail(
                format!("{path}.ipVersion"),
                format!("{version} is not 4 or 6"),
            );
        }
    }
    for (field, icmp) in [("icmp", &rule.icmp), ("notICMP", &rule.not_icmp)] {
        let Some(icmp) = icmp else { continue };
        if !matches!(rule.protocol, Some(Protocol::Icmp | Protocol::IcmpV6)) {
            checker.fail(format!("{path}.{field}"), "needs protocol ICMP or ICMPv6");
        }
        if icmp.code.is_some() && icmp.icmp_type.is_none() {
            checker.fail(format!("{path}.{field}.code"), "an ICMP code needs a type");
        }
        if icmp.icmp_type == Some(255) {
            checker.fail(
                format!("{path}.{field}.type"),
                "255 is not a valid ICMP type (0 to 254)",
            );
        }
    }
    if rule.http.is_some() && rule.action != Some(Action::Allow) {
        checker.fail(
            format!("{path}.http"),
            "HTTP matches are only allowed on Allow rules",
        );
    }
    for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        if let Some(entity) = entity {
            check_entity(checker, &format!("{path}.{side}"), entity, rule);
        }
    }
}

fn check_entity(checker: &mut Checker, path: &str, entity: &EntityRule, rule: &Rule) {
    let has_ports = |ports: &Option<Vec<Port>>| ports.as_ref().is_some_and(|p| !p.is_empty());
    for (field, ports) in [("ports", &entity.ports), ("notPorts", &entity.not_ports)] {
        if has_ports(ports) && !rule.protocol.is_some_and(Protocol::has_ports) {
            checker.fail(
                format!("{path}.{field}"),
                "ports need protocol TCP, UDP or SCTP",
            );
        }
    }
    for (field, nets) in [("nets", &entity.nets), ("notNets", &entity.not_nets)] {
        for (index, net) in nets.iter().flatten().enumerate() {
            if let Some(version) = rule.ip_version {
                if family(net) != version {
                    checker.fail(
                        format!("{path}.{field}[{index}]"),
                        format!("{net} is not IPv{version} as the rule's ipVersion says"),
                    );
                }
            }
        }
    }
    check_not_global(
        checker,
        &format!("{path}.selector"),
        entity.selector.as_ref(),
    );
    check_not_global(
        checker,
        &format!("{path}.notSelector"),
        entity.not_selector.as_ref(),
    );
    if entity.services.is_some()
        && (entity.selector.is_some() || entity.nets.is_some() || entity.service_accounts.is_some())
    {
        checker.fail(
            format!("{path}.services"),
            "services cannot be combined with selector, nets or serviceAccounts",
        );
    }
}

fn family(cidr: &Cidr) -> u8 {
    if cidr.0.addr().is_ipv4() {
        4
    } else {
        6
    }
}

fn check_ip_pool(checker: &mut Checker, spec: &super::ipam::IpPoolSpec) {
    let Some(cidr) = spec.cidr else {
        checker.fail("spec.cidr", "required");
        return;
    };
    if !cidr.is_masked() {
        checker.fail(
            "spec.cidr",
            format!("{cidr} has host bits set; did you mean {}?", cidr.0.trunc()),
        );
    }
    let (low, high, v4) = if cidr.0.addr().is_ipv4() {
        (20, 32, true)
    } else {
        (116, 128, false)
    };
    let block_size = spec.block_size.unwrap_or(if v4 { 26 } else { 122 });
    if !(low..=high).contains(&block_size) {
        checker.fail(
            "spec.blockSize",
            format!(
                "{block_size} is outside {low}-{high}, the block sizes allowed for an IPv{} pool",
                if v4 { 4 } else { 6 }
            ),
        );
    } else if block_size < cidr.0.prefix_len() {
        checker.fail(
            "spec.blockSize",
            format!("a /{block_size} block does not fit in the pool {cidr}"),
        );
    }
    let link_local: Cidr = if v4 { "169.254.0.0/16" } else { "fe80::/10" }
        .parse()
        .expect("constant CIDR");
    if link_local.0.contains(&cidr.0.network()) || cidr.0.contains(&link_local.0.network()) {
        checker.fail(
            "spec.cidr",
            format!("{cidr} overlaps link-local addresses ({link_local})"),
        );
    }
    let ipip = spec.ipip_mode.is_some_and(|m| m != EncapMode::Never);
    let vxlan = spec.vxlan_mode.is_some_and(|m| m != EncapMode::Never);
    if ipip && vxlan {
        checker.fail(
            "spec.ipipMode",
            "ipipMode and vxlanMode cannot both be enabled",
        );
    }
    if ipip && !v4 {
        checker.fail("spec.ipipMode", "IP-in-IP is IPv4 only");
    }
    for (index, using) in spec.allowed_uses.iter().flatten().enumerate() {
        if !matches!(using.as_str(), "Workload" | "Tunnel" | "LoadBalancer") {
            checker.fail(
                format!("spec.allowedUses[{index}]"),
                format!("{using:?} is not Workload, Tunnel or LoadBalancer"),
            );
        }
    }
    if let Some(mode) = &spec.assignment_mode {
        if !matches!(mode.as_str(), "Automatic" | "Manual") {
            checker.fail(
                "spec.assignmentMode",
                format!("{mode:?} is not Automatic or Manual"),
            );
        }
    }
}

/// `IP`, `IP:port` or `[IPv6]:port`.
fn check_peer_ip(peer: &str) -> Result<(), String> {
    use std::net::{IpAddr, SocketAddr};
    if peer.parse::<IpAddr>().is_ok() || peer.parse::<SocketAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!("{peer:?} is not IP, IP:port or [IPv6]:port"))
    }
}

fn check_kube_policy(checker: &mut Checker, spec: &super::kube::KubeNetworkPolicySpec) {
    if let Some(selector) = &spec.pod_selector {
        check_label_selector(checker, "spec.podSelector", selector);
    }
    for (index, rule) in spec.ingress.iter().flatten().enumerate() {
        let path = format!("spec.ingress[{index}]");
        check_kube_peers(checker, &format!("{path}.from"), rule.from.as_deref());
        check_kube_ports(checker, &format!("{path}.ports"), rule.ports.as_deref());
    }
    for (index, rule) in spec.egress.iter().flatten().enumerate() {
        let path = format!("spec.egress[{index}]");
        check_kube_peers(checker, &format!("{path}.to"), rule.to.as_deref());
        check_kube_ports(checker, &format!("{path}.ports"), rule.ports.as_deref());
    }
}

fn check_kube_peers(checker: &mut Checker, path: &str, peers: Option<&[NetworkPolicyPeer]>) {
    for (index, peer) in peers.unwrap_or_default().iter().enumerate() {
        let path = format!("{path}[{index}]");
        let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        if let Some(block) = &peer.ip_block {
            if selectors {
                checker.fail(
                    &path,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                );
            }
            for (at, except) in block.except.iter().flatten().enumerate() {
                if !block.cidr.0.contains(&except.0) || except.0 == block.cidr.0 {
                    checker.fail(
                        format!("{path}.ipBlock.except[{at}]"),
                        format!("{except} is not strictly inside {}", block.cidr),
                    );
                }
            }
        } else if !selectors {
            checker.fail(
                &path,
                "a peer needs podSelector, namespaceSelector or ipBlock",
            );
        }
        for (field, selector) in [
            ("podSelector", &peer.pod_selector),
            ("namespaceSelector", &peer.namespace_selector),
        ] {
            if let Some(selector) = selector {
                check_label_selector(checker, &format!("{path}.{field}"), selector);
            }
        }
    }
}

fn check_kube_ports(checker: &mut Checker, path: &str, ports: Option<&[NetworkPolicyPort]>) {
    use super::fields::KubePort;
    for (index, port) in ports.unwrap_or_default().iter().enumerate() {
        let path = format!("{path}[{index}]");
        if let Some(protocol) = &port.protocol {
            if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
                checker.fail(
                    format!("{path}.protocol"),
                    format!("{protocol:?} is not TCP, UDP or SCTP"),
                );
            }
        }
        if let Some(end) = port.end_port {
            match &port.port {
                Some(KubePort::Number(start)) if end >= *start => {}
                Some(KubePort::Number(start)) => checker.fail(
                    format!("{path}.endPort"),
                    format!("{end} is below port {start}"),
                ),
                _ => checker.fail(format!("{path}.endPort"), "needs a numeric port"),
            }
        }
    }
}

fn check_label_selector(checker: &mut Checker, path: &str, selector: &LabelSelector) {
    for (key, value) in selector.match_labels.iter().flatten() {
        if let Err(reason) = check_label(key, value) {
            checker.fail(format!("{path}.matchLabels.{key}"), reason);
        }
    }
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let path = format!("{path}.matchExpressions[{index}]");
        let values = requirement.values.as_ref().map_or(0, Vec::len);
        match requirement.operator.as_str() {
            "In" | "NotIn" if values == 0 => checker.fail(
                format!("{path}.values"),
                format!("{} needs at least one value", requirement.operator),
            ),
            "Exists" | "DoesNotExist" if values > 0 => checker.fail(
                format!("{path}.values"),
                format!("{} takes no values", requirement.operator),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => checker.fail(
                format!("{path}.operator"),
                format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
            ),
        }
        if check_label(&requirement.key, "").is_err() {
            checker.fail(
                format!("{path}.key"),
                format!("{:?} is not a valid label key", requirement.key),
            );
        }
    }
}
