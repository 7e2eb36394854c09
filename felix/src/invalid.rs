//! Objects that reach felix without passing validation (written to the datastore by another
//! tool, or by an older Twill): each is kept aside, reported, and stands in fail-closed, so
//! one bad object never stops the node from programming everything else and never opens
//! traffic its valid form would have closed.
//!
//! What each kind does while invalid:
//! - a policy (Calico NetworkPolicy, GlobalNetworkPolicy, Kubernetes NetworkPolicy) denies
//!   everything, in the directions it names (both when it names none readably), to the
//!   endpoints it selects — read leniently from what parses: its tier, order, selectors.
//!   A selector that does not parse is left out, which widens the selection to the policy's
//!   scope (its namespace; for a global policy, every endpoint): denying more, never less;
//! - a workload endpoint is absent: its interface is unknown, so the dispatch chains drop it;
//! - a host endpoint is absent: its interface name may not be one the kernel can have;
//! - a profile, tier or namespace is absent, which already denies (a missing profile or tier
//!   denies);
//! - a network set keeps its labels and the nets that parse;
//! - a FelixConfiguration keeps its fields that are valid on their own, and for the others
//!   the last valid version's values (the defaults only where there never was one).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::Value;
use twill_shared::resource::fields::{Action, PolicyType};
use twill_shared::resource::kube::LabelSelector;
use twill_shared::resource::policy::Rule;
use twill_shared::resource::{Key, Kind};
use twill_shared::selector::Selector;

use crate::model::{
    and, namespace_scope, service_account_scope, Entity, EntityKind, Policy, DEFAULT_TIER,
    NAMESPACE_LABEL,
};

/// An object that failed to decode or to validate, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Why it is invalid (the decode error, or the fields that failed validation).
    pub reason: String,
    /// The stored value.
    pub value: Value,
}

/// What an operator reads about an invalid object: kind, name, reason and consequence.
pub fn describe(key: &Key, invalid: &Invalid) -> String {
    let consequence = match key.kind {
        Kind::NetworkPolicy | Kind::GlobalNetworkPolicy | Kind::KubernetesNetworkPolicy => {
            "it denies all traffic of the endpoints it selects (fail closed)"
        }
        Kind::WorkloadEndpoint => "its interface is dropped as unknown (fail closed)",
        Kind::HostEndpoint => "it applies nowhere",
        Kind::Profile | Kind::Tier | Kind::Namespace => {
            "it counts as missing, which denies (fail closed)"
        }
        Kind::NetworkSet | Kind::GlobalNetworkSet => "only its valid nets are used",
        Kind::FelixConfiguration => {
            "its valid fields apply, the others keep their last valid values (or defaults)"
        }
        _ => "it is ignored",
    };
    format!("invalid {key}: {}; {consequence}", invalid.reason)
}

fn selector_at(value: &Value) -> Option<Selector> {
    Selector::parse(value.as_str()?).ok()
}

/// The policy an invalid policy object stands in as.
pub fn stand_in_policy(key: &Key, invalid: &Invalid) -> Option<Policy> {
    let spec = &invalid.value["spec"];
    let namespace = key.namespace.clone();
    let mut parts = Vec::new();
    if let Some(namespace) = &namespace {
        parts.push(Selector::Equal(NAMESPACE_LABEL.into(), namespace.clone()));
    }
    let (types_field, tier, order, name) = match key.kind {
        Kind::NetworkPolicy | Kind::GlobalNetworkPolicy => {
            parts.extend(selector_at(&spec["selector"]));
            if let Some(selector) = selector_at(&spec["namespaceSelector"]) {
                parts.push(namespace_scope(&selector));
            }
            if let Some(selector) = selector_at(&spec["serviceAccountSelector"]) {
                parts.push(service_account_scope(&selector));
            }
            (
                &spec["types"],
                spec["tier"].as_str().unwrap_or(DEFAULT_TIER).to_string(),
                spec["order"].as_f64(),
                key.name.clone(),
            )
        }
        Kind::KubernetesNetworkPolicy => {
            let pods = serde_json::from_value::<LabelSelector>(spec["podSelector"].clone())
                .ok()
                .and_then(|s| {
                    Selector::parse(&twill_shared::convert::label_selector_to_calico(&s, true)).ok()
                });
            parts.extend(pods);
            (
                &spec["policyTypes"],
                DEFAULT_TIER.to_string(),
                Some(twill_shared::convert::KUBERNETES_POLICY_ORDER),
                format!(
                    "{}{}",
                    twill_shared::convert::KUBERNETES_POLICY_PREFIX,
                    key.name
                ),
            )
        }
        _ => return None,
    };
    let named: Vec<PolicyType> = types_field
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str()?.parse().ok())
        .collect();
    let both = named.is_empty();
    let deny = || {
        Some(vec![Rule {
            action: Some(Action::Deny),
            ..Rule::default()
        }])
    };
    Some(Policy {
        key: key.clone(),
        name: match &namespace {
            Some(namespace) => format!("{namespace}/{name} [invalid: denies all]"),
            None => format!("{name} [invalid: denies all]"),
        },
        namespace,
        tier,
        order,
        selector: and(parts),
        ingress: (both || named.contains(&PolicyType::Ingress))
            .then(deny)
            .flatten(),
        egress: (both || named.contains(&PolicyType::Egress))
            .then(deny)
            .flatten(),
        apply_on_forward: false,
        pre_dnat: false,
        do_not_track: false,
    })
}

/// The entity an invalid network set stands in as: its labels (those that are strings) and
/// the nets that parse.
pub fn stand_in_network_set(key: &Key, invalid: &Invalid) -> Option<Entity> {
    if !matches!(key.kind, Kind::NetworkSet | Kind::GlobalNetworkSet) {
        return None;
    }
    let mut labels: BTreeMap<String, String> = invalid.value["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    if let Some(namespace) = &key.namespace {
        labels.insert(NAMESPACE_LABEL.into(), namespace.clone());
    }
    let nets: Vec<IpNet> = invalid.value["spec"]["nets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str()?.parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect();
    Some(Entity {
        key: key.clone(),
        kind: EntityKind::NetworkSet,
        node: None,
        namespace: key.namespace.clone(),
        labels,
        nets,
        interface: None,
        allowed_sources: Vec::new(),
        ports: Vec::new(),
        profiles: Vec::new(),
        pod: None,
    })
}

/// An invalid configuration object (FelixConfiguration) salvaged field by field: each field of
/// `spec` that decodes and validates on its own is taken from the invalid object, every
/// other field keeps the value of the last valid version (`last`), so one bad field written
/// by another tool never resets the rest to defaults (an interface prefix back to `tw`, a
/// narrowed failsafe list widened again). None when nothing can be kept.
pub fn salvage_configuration(
    key: &Key,
    invalid: &Invalid,
    last: Option<&twill_shared::resource::Resource>,
) -> Option<twill_shared::resource::Resource> {
    use twill_shared::resource::Resource;
    let skeleton = |spec: serde_json::Map<String, Value>| {
        serde_json::json!({
            "apiVersion": key.kind.api_version(),
            "kind": key.kind.name(),
            "metadata": {"name": key.name},
            "spec": spec,
        })
    };
    let valid = |value: Value| {
        Resource::decode(key.kind, value)
            .ok()
            .filter(|r| twill_shared::resource::validate::validate(r).is_empty())
    };
    let mut spec: serde_json::Map<String, Value> = last
        .map(|r| r.to_value()["spec"].clone())
        .and_then(|s| s.as_object().cloned())
        .unwrap_or_default();
    let mut kept = !spec.is_empty();
    for (field, value) in invalid.value["spec"].as_object().into_iter().flatten() {
        let alone = serde_json::Map::from_iter([(field.clone(), value.clone())]);
        if valid(skeleton(alone)).is_some() {
            spec.insert(field.clone(), value.clone());
            kept = true;
        }
    }
    if !kept {
        return None;
    }
    valid(skeleton(spec))
}
