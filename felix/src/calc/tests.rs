//! Calculation as a model test: the same resources delivered in any order, in pieces, or
//! with superseded versions squashed away, give the same dataplane; and the label index
//! selects exactly what a scan of every entity selects.

use proptest::prelude::*;
use twill_shared::resource::document::parse_documents;
use twill_shared::resource::{Resource, DEFAULT_NAMESPACE};
use twill_shared::selector::Selector;

use super::programs::World;
use super::{compute, Config};
use crate::model::Model;

fn resources(text: &str) -> Vec<Resource> {
    parse_documents(text)
        .expect("test documents parse")
        .into_iter()
        .map(|mut r| {
            r.apply_defaults(DEFAULT_NAMESPACE);
            r
        })
        .collect()
}

const DOCUMENTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {team: blue}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: n1-k8s-a-eth0, namespace: x, labels: {app: web, projectcalico.org/orchestrator: k8s}}
spec: {node: n1, pod: a, endpoint: eth0, interfaceName: twa, ipNetworks: [10.90.0.1/32], profiles: [kns.x],
       ports: [{name: http, protocol: TCP, port: 8080}]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: n1-k8s-b-eth0, namespace: y, labels: {app: db, projectcalico.org/orchestrator: k8s}}
spec: {node: n1, pod: b, endpoint: eth0, interfaceName: twb, ipNetworks: [10.90.0.2/32, "fd00:90::2/128"], profiles: [kns.y]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: n2-k8s-c-eth0, namespace: y, labels: {app: web, projectcalico.org/orchestrator: k8s}}
spec: {node: n2, pod: c, endpoint: eth0, interfaceName: twc, ipNetworks: [10.90.1.3/32], profiles: [kns.y]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: y}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: red}}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}, {port: http}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: audit}
spec:
  order: 10
  selector: all()
  ingress: [{action: Log}, {action: Pass}]
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.block}
spec:
  tier: security
  selector: app == 'web'
  egress:
  - action: Deny
    destination: {nets: [10.0.0.0/8], notNets: [10.90.0.0/16]}
  - action: Allow
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: outside, labels: {zone: outside}}
spec: {nets: [198.18.0.0/24]}
"#;

/// How many documents DOCUMENTS holds.
const COUNT: usize = 10;

fn config() -> Config {
    Config {
        host_addresses: [("eth1".to_string(), vec!["198.18.0.20".parse().unwrap()])].into(),
        node: "n1".into(),
        ..Config::from_model(&Model::default(), "n1")
    }
}

fn model_of(updates: &[(usize, bool)], all: &[Resource]) -> Model {
    let mut model = Model::default();
    for &(index, present) in updates {
        let resource = &all[index];
        model.set(resource.key(), present.then(|| resource.clone()));
    }
    model
}

#[test]
fn the_reference_dataplane_has_what_the_documents_ask_for() {
    let all = resources(DOCUMENTS);
    let model = model_of(&(0..all.len()).map(|i| (i, true)).collect::<Vec<_>>(), &all);
    let computed = compute(&model, &config());
    assert_eq!(
        computed.local.keys().collect::<Vec<_>>(),
        ["twa", "twb"],
        "only this node's workloads"
    );
    let chains = &computed.v4.tables["filter"].chains;
    assert!(chains.contains_key("twl-tw-twa") && chains.contains_key("twl-fw-twb"));
    assert!(
        !chains.contains_key("twl-tw-twc"),
        "a remote workload has no chain"
    );
    // The namespaced rule's selector is scoped to namespaces labelled team=red: only x/a's
    // address (10.90.0.1) is a member, not y/c's (10.90.1.3, same app label).
    let members: Vec<String> = computed
        .v4
        .sets
        .values()
        .filter(|s| s.comment.contains("team"))
        .flat_map(|s| s.members.iter().map(|m| format!("{m:?}")))
        .collect();
    assert!(
        members.iter().any(|m| m.contains("10.90.0.1")),
        "{members:?}"
    );
    assert!(
        !members.iter().any(|m| m.contains("10.90.1.3")),
        "{members:?}"
    );
    assert!(computed
        .v6
        .sets
        .values()
        .all(|s| s.family == crate::ir::Family::V6));
}

proptest! {
    /// Any order, any split, superseded versions and deletes in between: the final state alone
    /// decides the dataplane.
    #[test]
    fn order_split_and_squash_do_not_change_the_dataplane(
        order in Just((0..COUNT).collect::<Vec<_>>()).prop_shuffle(),
        wanted in prop::collection::vec(any::<bool>(), COUNT),
        noise in prop::collection::vec((0..COUNT, any::<bool>()), 0..20),
    ) {
        let all = resources(DOCUMENTS);
        prop_assert_eq!(all.len(), COUNT);
        let target: Vec<(usize, bool)> = (0..COUNT).filter(|&i| wanted[i]).map(|i| (i, true)).collect();
        let reference = compute(&model_of(&target, &all), &config());
        // Noise first (adds and deletes in any order), then each resource's final state, in a
        // shuffled order.
        let mut updates: Vec<(usize, bool)> = noise;
        updates.extend(order.iter().map(|&i| (i, wanted[i])));
        let computed = compute(&model_of(&updates, &all), &config());
        prop_assert_eq!(&computed.v4, &reference.v4);
        prop_assert_eq!(&computed.v6, &reference.v6);
    }

    /// The label index never changes what a selector selects.
    #[test]
    fn the_label_index_selects_what_a_scan_selects(
        selector in prop::sample::select(vec![
            "app == 'web'", "app in {'web', 'db'}", "has(app) && app != 'db'", "team == 'red' || app == 'db'",
            "!has(zone)", "projectcalico.org/namespace == 'y' && app == 'web'", "pcns.team == 'red'", "all()",
            "zone == 'outside'", "app == 'nothing'",
        ]),
    ) {
        let all = resources(DOCUMENTS);
        let model = model_of(&(0..all.len()).map(|i| (i, true)).collect::<Vec<_>>(), &all);
        let world = World::new(&model, model.entities());
        let selector = Selector::parse(selector).unwrap();
        let indexed: Vec<String> = world.select(&selector).map(|e| e.display()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let scanned: Vec<String> = world.entities().filter(|e| selector.matches(&e.labels)).map(|e| e.display()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        prop_assert_eq!(indexed, scanned);
    }

    /// The incremental calculator, fed the same changes one by one and asked for the dataplane
    /// at arbitrary points, ends where a calculation from nothing over the final state ends —
    /// with second versions of namespaces, endpoints, pods, profiles, tiers and policies in
    /// the mix (relabels, moves between nodes, reorders, deletes).
    #[test]
    fn the_incremental_calculation_ends_where_a_fresh_one_does(
        updates in prop::collection::vec((0..COUNT + VARIANT_COUNT, any::<bool>(), any::<bool>()), 1..40),
        start_with_variants in any::<bool>(),
    ) {
        let mut all = resources(DOCUMENTS);
        all.extend(resources(VARIANTS));
        prop_assert_eq!(all.len(), COUNT + VARIANT_COUNT);
        // Everything first (a rich state to change), then the changes.
        let mut updates: Vec<(usize, bool, bool)> = updates;
        let start: Vec<(usize, bool, bool)> = (0..COUNT + VARIANT_COUNT)
            .filter(|&i| i < COUNT || start_with_variants)
            .map(|i| (i, true, false))
            .collect();
        updates.splice(0..0, start.into_iter().chain([(0, true, true)]));
        let mut calculator = super::Calculator::with_config(Model::default(), config());
        for &(index, present, compute_now) in &updates {
            let resource = &all[index];
            calculator.update(resource.key(), present.then(|| resource.clone()));
            if compute_now {
                calculator.compute();
            }
        }
        let plain: Vec<(usize, bool)> = updates.iter().map(|&(i, p, _)| (i, p)).collect();
        let reference = compute(&model_of(&plain, &all), &config());
        let computed = calculator.compute();
        prop_assert_eq!(&computed.v4, &reference.v4);
        prop_assert_eq!(&computed.v6, &reference.v6);
        prop_assert_eq!(&computed.local, &reference.local);
        prop_assert_eq!(&computed.warnings, &reference.warnings);
    }
}

/// Second versions of some of DOCUMENTS' objects, and objects that refer to them.
const VARIANTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: blue}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: n1-k8s-a-eth0, namespace: x, labels: {app: db, projectcalico.org/orchestrator: k8s}}
spec: {node: n1, pod: a, endpoint: eth0, interfaceName: twa, ipNetworks: [10.90.0.9/32], profiles: [kns.x]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: n2-k8s-c-eth0, namespace: y, labels: {app: web, projectcalico.org/orchestrator: k8s}}
spec: {node: n1, pod: c, endpoint: eth0, interfaceName: twc, ipNetworks: [10.90.1.3/32], profiles: [kns.y, extra]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web, version: v2}}
spec:
  serviceAccountName: api
  containers:
  - name: main
    ports: [{name: http, containerPort: 9090, protocol: TCP}]
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: extra}
spec:
  labelsToApply: {zone: outside, app: profiled}
  ingress: [{action: Deny, source: {selector: app == 'db'}}, {action: Allow}]
  egress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 1, defaultAction: Deny}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: audit}
spec:
  order: 5
  selector: app == 'db'
  ingress: [{action: Allow, protocol: TCP, source: {selector: zone == 'outside'}, destination: {ports: [http]}}]
  egress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {app: web, host: "yes"}}
spec: {node: n1, interfaceName: eth0, expectedIPs: [198.18.0.10]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: hosts, namespace: y}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: outside, labels: {zone: inside}}
spec: {nets: [198.18.0.0/25, 203.0.113.0/24]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: same-address, namespace: x, labels: {app: db, zone: outside}}
spec: {nets: [10.90.0.9/32, 10.90.1.3/32]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: untracked}
spec:
  selector: host == 'yes'
  doNotTrack: true
  applyOnForward: true
  ingress: [{action: Allow, protocol: TCP, source: {selector: app == 'db'}, destination: {ports: [22]}}]
  egress: [{action: Allow, protocol: TCP, source: {ports: [22]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pre-dnat}
spec:
  selector: has(host)
  preDNAT: true
  applyOnForward: true
  ingress: [{action: Deny, source: {nets: [203.0.113.0/24]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: forward}
spec:
  selector: all()
  applyOnForward: true
  egress: [{action: Allow, destination: {selector: zone == 'outside'}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: api, namespace: x, labels: {tier: api}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: by-account}
spec:
  serviceAccountSelector: tier == 'api'
  ingress: [{action: Allow, source: {serviceAccounts: {names: [api]}}}]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-by-address, labels: {host: "yes"}}
spec: {node: n1, expectedIPs: [198.18.0.20]}
"#;

/// How many documents VARIANTS holds.
const VARIANT_COUNT: usize = 17;

/// A GlobalNetworkPolicy's serviceAccountSelector picks workloads by their service account's
/// labels (as Calico's `ksa.<ns>.<sa>` profile gives them): x/a runs as `api` (labelled
/// tier=api), so the policy is in its chain; y/b runs as no account, so it is not. Removing the
/// label from the ServiceAccount takes the policy off x/a.
#[test]
fn service_account_selectors_read_the_service_accounts_labels() {
    let mut all = resources(DOCUMENTS);
    all.extend(resources(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: web}}\n\
         spec: {serviceAccountName: api, containers: [{name: main}]}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: api, namespace: x, labels: {tier: api}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: by-account}\n\
         spec: {serviceAccountSelector: \"tier == 'api'\", ingress: [{action: Allow}]}\n",
    ));
    let mut calculator = super::Calculator::with_config(Model::default(), config());
    for resource in &all {
        calculator.update(resource.key(), Some(resource.clone()));
    }
    let jumps = |computed: &super::Computed, chain: &str| -> bool {
        computed.v4.tables["filter"].chains[chain]
            .rules
            .iter()
            .any(|r| r.comment == "policy by-account")
    };
    let computed = calculator.compute().clone();
    assert!(jumps(&computed, "twl-tw-twa"), "x/a runs as api");
    assert!(!jumps(&computed, "twl-tw-twb"), "y/b runs as no account");
    let unlabelled =
        resources("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: api, namespace: x}\n");
    calculator.update(unlabelled[0].key(), Some(unlabelled[0].clone()));
    let computed = calculator.compute().clone();
    assert!(
        !jumps(&computed, "twl-tw-twa"),
        "the account lost its label"
    );
}

/// A host endpoint with expectedIPs and no interfaceName applies to the interfaces of this
/// node that hold one of them (here eth1, holding 198.18.0.20); with none holding one, it
/// applies nowhere and says so.
#[test]
fn a_host_endpoint_without_an_interface_name_applies_where_its_addresses_are() {
    let hep = resources(
        "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: n1-by-address}\n\
         spec: {node: n1, expectedIPs: [198.18.0.20]}\n",
    );
    let mut model = Model::default();
    model.set(hep[0].key(), Some(hep[0].clone()));
    let computed = compute(&model, &config());
    let chains = &computed.v4.tables["filter"].chains;
    assert!(chains.contains_key("twl-fh-eth1") && chains.contains_key("twl-th-eth1"));
    let elsewhere = Config {
        host_addresses: [("eth2".to_string(), vec!["198.18.0.99".parse().unwrap()])].into(),
        ..config()
    };
    let computed = compute(&model, &elsewhere);
    assert!(!computed.v4.tables["filter"]
        .chains
        .keys()
        .any(|c| c.starts_with("twl-fh-")));
    assert!(
        computed
            .warnings
            .iter()
            .any(|w| w.contains("n1-by-address") && w.contains("applies nowhere")),
        "{:?}",
        computed.warnings
    );
}

/// A policy stored by another tool, with `types` absent or empty, applies in the directions
/// Calico's defaulting gives (written out by hand): only a non-empty rule list counts.
#[test]
fn stored_policies_without_types_apply_as_calico_defaults_them() {
    use twill_shared::resource::fields::PolicyType;
    let lists = [
        ("absent", None),
        ("empty", Some("[]")),
        ("one rule", Some("[{action: Allow}]")),
    ];
    for types in [None, Some(Vec::<PolicyType>::new())] {
        for (ingress_form, ingress) in lists {
            for (egress_form, egress) in lists {
                let mut text = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec:\n  selector: all()\n".to_string();
                for (field, list) in [("ingress", ingress), ("egress", egress)] {
                    if let Some(list) = list {
                        text.push_str(&format!("  {field}: {list}\n"));
                    }
                }
                let mut resource = parse_documents(&text).unwrap().remove(0);
                let Resource::GlobalNetworkPolicy(policy) = &mut resource else {
                    panic!("a GlobalNetworkPolicy")
                };
                policy.spec.types = types.clone();
                let key = resource.key();
                let mut model = Model::default();
                model.set(key.clone(), Some(resource));
                let policy = model.policy(&key).unwrap();
                let (expect_ingress, expect_egress) = match (ingress_form, egress_form) {
                    ("one rule", "one rule") => (true, true),
                    (_, "one rule") => (false, true),
                    _ => (true, false),
                };
                let case = format!("types {types:?}, ingress {ingress_form}, egress {egress_form}");
                assert_eq!(policy.ingress.is_some(), expect_ingress, "ingress, {case}");
                assert_eq!(policy.egress.is_some(), expect_egress, "egress, {case}");
            }
        }
    }
}

/// A FelixConfiguration another tool wrote with one bad field keeps its valid fields and, for
/// the bad one, the last valid value: the interface prefix never falls back to the default.
#[test]
fn an_invalid_felix_configuration_keeps_what_is_valid() {
    use twill_shared::resource::{Key, Kind};
    let key = Key::cluster(Kind::FelixConfiguration, "default");
    let mut model = Model::default();
    let valid = resources(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {interfacePrefix: cali}\n",
    )
    .remove(0);
    model.set(key.clone(), Some(valid));
    let invalid = crate::invalid::Invalid {
        reason: "spec.interfacePrefix: not an interface prefix".into(),
        value: serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
            "metadata": {"name": "default"},
            "spec": {"interfacePrefix": "tw.x", "defaultEndpointToHostAction": "Drop"}}),
    };
    model.set_invalid(key.clone(), invalid.clone());
    let config = Config::from_model(&model, "n1");
    assert_eq!(
        config.interface_prefixes,
        ["cali"],
        "the last valid prefix stays"
    );
    assert_eq!(
        config.endpoint_to_host,
        super::EndpointToHost::Drop,
        "the valid new field applies"
    );
    assert_eq!(model.invalid_objects().len(), 1, "and it is reported");
    // Never valid before: its valid fields, the defaults for the rest.
    let mut fresh = Model::default();
    fresh.set_invalid(key, invalid);
    let config = Config::from_model(&fresh, "n1");
    assert_eq!(config.interface_prefixes, ["tw"]);
    assert_eq!(config.endpoint_to_host, super::EndpointToHost::Drop);
}
