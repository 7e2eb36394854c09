//! Calico policy resources: NetworkPolicy, GlobalNetworkPolicy, Tier, Profile, NetworkSet and
//! GlobalNetworkSet, and the rule model they share.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::fields::{serialize_order, Action, Cidr, PolicyType, Port, Protocol, SelectorText};

/// A policy rule: all of its match criteria must hold for `action` to apply.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// What to do on a match (required).
    pub action: Option<Action>,
    /// 4 or 6: restrict the rule to one IP family.
    pub ip_version: Option<u8>,
    /// Match this protocol.
    pub protocol: Option<Protocol>,
    /// Match any protocol but this one.
    pub not_protocol: Option<Protocol>,
    /// Match ICMP type and code (needs protocol ICMP or ICMPv6).
    pub icmp: Option<IcmpMatch>,
    /// Match any ICMP type/code but this one.
    #[serde(rename = "notICMP")]
    pub not_icmp: Option<IcmpMatch>,
    /// Match the packet's source.
    pub source: Option<EntityRule>,
    /// Match the packet's destination.
    pub destination: Option<EntityRule>,
    /// HTTP match (application layer; accepted and stored, enforced by a later component).
    pub http: Option<HttpMatch>,
    /// Annotations carried with the rule.
    pub metadata: Option<RuleMetadata>,
}

/// ICMP type and code.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IcmpMatch {
    /// ICMP type, 0 to 254.
    #[serde(rename = "type")]
    pub icmp_type: Option<u8>,
    /// ICMP code, 0 to 255; needs a type.
    pub code: Option<u8>,
}

/// Rule annotations.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleMetadata {
    /// Free-form annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// One side (source or destination) of a rule.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntityRule {
    /// Match addresses in any of these CIDRs.
    pub nets: Option<Vec<Cidr>>,
    /// Match addresses in none of these CIDRs.
    pub not_nets: Option<Vec<Cidr>>,
    /// Match endpoints and network sets with these labels.
    pub selector: Option<SelectorText>,
    /// Match everything but endpoints and network sets with these labels.
    pub not_selector: Option<SelectorText>,
    /// Match endpoints in namespaces with these labels.
    pub namespace_selector: Option<SelectorText>,
    /// Match these ports (needs protocol TCP, UDP or SCTP).
    pub ports: Option<Vec<Port>>,
    /// Match any port but these.
    pub not_ports: Option<Vec<Port>>,
    /// Match endpoints running as these service accounts.
    pub service_accounts: Option<ServiceAccountMatch>,
    /// Match the endpoints of a Kubernetes Service.
    pub services: Option<ServiceMatch>,
    /// Domain names (Calico Enterprise; accepted and stored, enforced by a later component).
    pub domains: Option<Vec<String>>,
}

/// Service-account match; names and selector are ANDed.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Service account names.
    pub names: Option<Vec<String>>,
    /// Selector over service-account labels.
    pub selector: Option<SelectorText>,
}

/// A Kubernetes Service by name and namespace.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceMatch {
    /// Service name.
    pub name: Option<String>,
    /// Service namespace (defaults to the policy's).
    pub namespace: Option<String>,
}

/// HTTP match criteria.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// HTTP methods, e.g. GET.
    pub methods: Option<Vec<String>>,
    /// Paths, each exact or prefix.
    pub paths: Option<Vec<HttpPath>>,
}

/// One HTTP path match: exactly one of `exact` or `prefix`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpPath {
    /// The path must equal this.
    pub exact: Option<String>,
    /// The path must start with this.
    pub prefix: Option<String>,
}

/// `projectcalico.org/v3` NetworkPolicy spec (namespaced).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Tier name (default `default`).
    pub tier: Option<String>,
    /// Order within the tier; lower first, absent last.
    #[serde(serialize_with = "serialize_order")]
    pub order: Option<f64>,
    /// Which endpoints of the namespace the policy applies to.
    pub selector: Option<SelectorText>,
    /// Directions; defaulted from the rules present when absent.
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules, first match wins.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules, first match wins.
    pub egress: Option<Vec<Rule>>,
    /// Restricts the policy to endpoints running as matching service accounts.
    pub service_account_selector: Option<SelectorText>,
    /// Hints such as `AssumeNeededOnEveryNode`.
    pub performance_hints: Option<Vec<String>>,
}

/// `projectcalico.org/v3` GlobalNetworkPolicy spec (cluster-wide).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    /// Tier name (default `default`).
    pub tier: Option<String>,
    /// Order within the tier; lower first, absent last.
    #[serde(serialize_with = "serialize_order")]
    pub order: Option<f64>,
    /// Which endpoints the policy applies to.
    pub selector: Option<SelectorText>,
    /// Restricts the policy to endpoints in matching namespaces.
    pub namespace_selector: Option<SelectorText>,
    /// Restricts the policy to endpoints running as matching service accounts.
    pub service_account_selector: Option<SelectorText>,
    /// Directions; defaulted from the rules present when absent.
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules.
    pub egress: Option<Vec<Rule>>,
    /// Apply before connection tracking (host endpoints only).
    pub do_not_track: Option<bool>,
    /// Apply before DNAT (host endpoints only, ingress only).
    #[serde(rename = "preDNAT")]
    pub pre_dnat: Option<bool>,
    /// Also apply to forwarded traffic (host endpoints).
    pub apply_on_forward: Option<bool>,
    /// Hints such as `AssumeNeededOnEveryNode`.
    pub performance_hints: Option<Vec<String>>,
}

/// `projectcalico.org/v3` Tier spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierSpec {
    /// Order among tiers; lower first, absent last.
    #[serde(serialize_with = "serialize_order")]
    pub order: Option<f64>,
    /// What happens at the end of the tier when a policy applied: Deny (default) or Pass.
    pub default_action: Option<Action>,
}

/// `projectcalico.org/v3` Profile spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileSpec {
    /// Ingress rules.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules.
    pub egress: Option<Vec<Rule>>,
    /// Labels given to every endpoint that uses the profile.
    pub labels_to_apply: Option<BTreeMap<String, String>>,
}

/// `projectcalico.org/v3` NetworkSet and GlobalNetworkSet spec.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSetSpec {
    /// The CIDRs in the set.
    pub nets: Option<Vec<Cidr>>,
    /// Domain names (Calico Enterprise; accepted and stored).
    pub allowed_egress_domains: Option<Vec<String>>,
}

/// The directions of a Calico NetworkPolicy or GlobalNetworkPolicy: `types` when it names at
/// least one, else Calico's defaulting from the rule lists — egress rules only → Egress;
/// ingress and egress rules → both; otherwise (ingress rules only, or none) → Ingress. A list
/// counts by its length: absent and `[]` are alike, and so are `types` absent and `[]`.
pub fn calico_policy_types(
    types: Option<&[PolicyType]>,
    ingress: Option<&[Rule]>,
    egress: Option<&[Rule]>,
) -> Vec<PolicyType> {
    if let Some(types) = types.filter(|t| !t.is_empty()) {
        return types.to_vec();
    }
    let has = |rules: Option<&[Rule]>| rules.is_some_and(|r| !r.is_empty());
    match (has(ingress), has(egress)) {
        (false, true) => vec![PolicyType::Egress],
        (true, true) => vec![PolicyType::Ingress, PolicyType::Egress],
        _ => vec![PolicyType::Ingress],
    }
}

/// The directions of a Kubernetes NetworkPolicy: `policyTypes` when it names at least one,
/// else the API server's defaulting — Ingress always, plus Egress when the policy has at least
/// one egress rule.
pub fn kubernetes_policy_types(
    types: Option<&[PolicyType]>,
    egress_rules: usize,
) -> Vec<PolicyType> {
    if let Some(types) = types.filter(|t| !t.is_empty()) {
        return types.to_vec();
    }
    let mut defaulted = vec![PolicyType::Ingress];
    if egress_rules > 0 {
        defaulted.push(PolicyType::Egress);
    }
    defaulted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_orders_serialize_as_integers() {
        let policy = NetworkPolicySpec {
            order: Some(200.0),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&policy).unwrap(), r#"{"order":200}"#);
        assert_eq!(serde_yaml::to_string(&policy).unwrap(), "order: 200\n");
        let global = GlobalNetworkPolicySpec {
            order: Some(-3.0),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&global).unwrap(), r#"{"order":-3}"#);
        let tier = TierSpec {
            order: Some(0.0),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&tier).unwrap(), r#"{"order":0}"#);
    }

    #[test]
    fn fractional_and_absent_orders_are_kept() {
        let policy = NetworkPolicySpec {
            order: Some(100.5),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&policy).unwrap(),
            r#"{"order":100.5}"#
        );
        assert_eq!(serde_yaml::to_string(&policy).unwrap(), "order: 100.5\n");
        assert_eq!(
            serde_json::to_string(&NetworkPolicySpec::default()).unwrap(),
            "{}"
        );
        // Beyond the integers an i64 holds, the float form is kept (still exact).
        let huge = TierSpec {
            order: Some(1e20),
            ..Default::default()
        };
        let text = serde_json::to_string(&huge).unwrap();
        assert_eq!(serde_json::from_str::<TierSpec>(&text).unwrap(), huge);
    }

    #[test]
    fn applied_orders_round_trip() {
        for written in ["200", "100.5", "0", "-7"] {
            let text = format!("order: {written}\n");
            let spec: NetworkPolicySpec = serde_yaml::from_str(&text).unwrap();
            assert_eq!(serde_yaml::to_string(&spec).unwrap(), text);
        }
    }
}
