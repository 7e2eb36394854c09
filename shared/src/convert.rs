//! Kubernetes NetworkPolicy → Calico NetworkPolicy, with Calico's semantics, so that the
//! policy engine has one input form.
//!
//! - The result is named `knp.default.<name>`, in tier `default`, at order 1000.
//! - `podSelector` becomes `projectcalico.org/orchestrator == 'k8s'` ANDed with the labels
//!   (keys sorted) and expressions (In → `in`, NotIn → `not in`, Exists → `has()`,
//!   DoesNotExist → `!has()`).
//! - Each rule becomes one Calico rule per (peer, protocol): ports of one protocol merge, a
//!   port entry without a protocol means TCP, a protocol without a port swallows that
//!   protocol's numbered ports, and no ports at all means any protocol.
//! - `ipBlock` becomes `nets` plus `notNets` (the `except` list), masked.
//! - `policyTypes` carry over; absent means Ingress.

use crate::resource::fields::{Action, Cidr, KubePort, Port, Protocol, SelectorText};
use crate::resource::kube::{
    KubeNetworkPolicySpec, LabelSelector, NetworkPolicyPeer, NetworkPolicyPort,
};
use crate::resource::policy::{EntityRule, NetworkPolicySpec, Rule};
use crate::resource::{Object, ObjectMeta};

/// Order Calico gives converted Kubernetes policies.
pub const KUBERNETES_POLICY_ORDER: f64 = 1000.0;

/// Name prefix of converted Kubernetes policies.
pub const KUBERNETES_POLICY_PREFIX: &str = "knp.default.";

/// Label Calico puts on every Kubernetes pod's workload endpoint.
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";

/// Quotes a label value for a selector (label values never hold quotes).
fn quote_value(value: &str) -> String {
    format!("'{value}'")
}

/// Converts a Kubernetes NetworkPolicy (already defaulted and validated).
pub fn kubernetes_policy_to_calico(
    policy: &Object<KubeNetworkPolicySpec>,
) -> Object<NetworkPolicySpec> {
    let spec = &policy.spec;
    let ingress = spec.ingress.iter().flatten().flat_map(|rule| {
        convert_rule(
            rule.from.as_deref(),
            rule.ports.as_deref(),
            Direction::Ingress,
        )
    });
    let egress = spec.egress.iter().flatten().flat_map(|rule| {
        convert_rule(rule.to.as_deref(), rule.ports.as_deref(), Direction::Egress)
    });
    let types = crate::resource::policy::kubernetes_policy_types(
        spec.policy_types.as_deref(),
        spec.egress.as_ref().map_or(0, Vec::len),
    );
    let pod_selector = spec.pod_selector.clone().unwrap_or_default();
    Object {
        api_version: "projectcalico.org/v3".into(),
        kind: "NetworkPolicy".into(),
        metadata: ObjectMeta {
            name: Some(format!(
                "{KUBERNETES_POLICY_PREFIX}{}",
                policy.metadata.name.as_deref().unwrap_or("")
            )),
            namespace: policy.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        spec: NetworkPolicySpec {
            tier: Some("default".into()),
            order: Some(KUBERNETES_POLICY_ORDER),
            selector: Some(selector_text(&pod_selector, true)),
            types: Some(types),
            ingress: Some(ingress.collect()),
            egress: Some(egress.collect()),
            ..NetworkPolicySpec::default()
        },
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

/// Translates a Kubernetes label selector. Pod selectors also require the k8s orchestrator
/// label; an empty namespace selector is `all()`.
pub fn label_selector_to_calico(selector: &LabelSelector, pods: bool) -> String {
    let mut terms = Vec::new();
    if pods {
        terms.push(format!("{ORCHESTRATOR_LABEL} == 'k8s'"));
    }
    for (key, value) in selector.match_labels.iter().flatten() {
        terms.push(format!("{key} == {}", quote_value(value)));
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let values = || {
            let quoted: Vec<String> = requirement
                .values
                .iter()
                .flatten()
                .map(|v| quote_value(v))
                .collect();
            format!("{{{}}}", quoted.join(", "))
        };
        terms.push(match requirement.operator.as_str() {
            "In" => format!("{} in {}", requirement.key, values()),
            "NotIn" => format!("{} not in {}", requirement.key, values()),
            "Exists" => format!("has({})", requirement.key),
            _ => format!("! has({})", requirement.key),
        });
    }
    if terms.is_empty() {
        "all()".into()
    } else {
        terms.join(" && ")
    }
}

fn selector_text(selector: &LabelSelector, pods: bool) -> SelectorText {
    SelectorText::new(&label_selector_to_calico(selector, pods))
        .expect("validated label selectors translate to valid selectors")
}

/// The protocol groups of a rule's ports: `None` protocol means "any protocol, any port".
fn port_groups(ports: Option<&[NetworkPolicyPort]>) -> Vec<(Option<Protocol>, Option<Vec<Port>>)> {
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        return vec![(None, None)];
    }
    // Per protocol, in first-seen order: None = the whole protocol.
    let mut groups: Vec<(Protocol, Option<Vec<Port>>)> = Vec::new();
    for port in ports {
        let protocol = match port.protocol.as_deref() {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        };
        let calico_port = port.port.as_ref().map(|p| match (p, port.end_port) {
            (KubePort::Number(start), Some(end)) => Port::Range(*start, end),
            (KubePort::Number(n), None) => Port::Number(*n),
            (KubePort::Named(name), _) => Port::Named(name.clone()),
        });
        let index = match groups.iter().position(|(p, _)| *p == protocol) {
            Some(index) => index,
            None => {
                groups.push((protocol, Some(Vec::new())));
                groups.len() - 1
            }
        };
        match (&mut groups[index].1, calico_port) {
            (Some(list), Some(port)) => {
                if !list.contains(&port) {
                    list.push(port)
                }
            }
            (slot, None) => *slot = None,
            (None, Some(_)) => {}
        }
    }
    groups
        .into_iter()
        .map(|(protocol, ports)| (Some(protocol), ports))
        .collect()
}

fn peer_entity(peer: &NetworkPolicyPeer) -> EntityRule {
    if let Some(block) = &peer.ip_block {
        let masked = |cidr: &Cidr| Cidr(cidr.0.trunc());
        return EntityRule {
            nets: Some(vec![masked(&block.cidr)]),
            not_nets: block
                .except
                .as_ref()
                .map(|list| list.iter().map(masked).collect()),
            ..EntityRule::default()
        };
    }
    let mut entity = EntityRule::default();
    match (&peer.pod_selector, &peer.namespace_selector) {
        (Some(pods), namespaces) => {
            entity.selector = Some(selector_text(pods, true));
            entity.namespace_selector = namespaces.as_ref().map(|ns| selector_text(ns, false));
        }
        (None, Some(namespaces)) => {
            entity.namespace_selector = Some(selector_text(namespaces, false));
        }
        (None, None) => {}
    }
    entity
}

fn convert_rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    direction: Direction,
) -> Vec<Rule> {
    let peers: Vec<Option<EntityRule>> = match peers {
        Some(list) if !list.is_empty() => list.iter().map(|p| Some(peer_entity(p))).collect(),
        _ => vec![None],
    };
    let mut rules = Vec::new();
    for peer in &peers {
        for (protocol, ports) in port_groups(ports) {
            let mut destination = EntityRule {
                ports: ports.filter(|p| !p.is_empty()),
                ..EntityRule::default()
            };
            let mut source = None;
            match (direction, peer) {
                (Direction::Ingress, Some(entity)) => source = Some(entity.clone()),
                (Direction::Egress, Some(entity)) => {
                    destination = EntityRule {
                        ports: destination.ports,
                        ..entity.clone()
                    };
                }
                (_, None) => {}
            }
            rules.push(Rule {
                action: Some(Action::Allow),
                protocol,
                source,
                destination: Some(destination).filter(|d| *d != EntityRule::default()),
                ..Rule::default()
            });
        }
    }
    rules
}
