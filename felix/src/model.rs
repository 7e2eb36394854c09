//! What felix knows of the cluster: every resource that shapes policy, as the syncer
//! delivers them, and the views calc needs — entities with their effective labels, policies
//! in Calico's normal form, tiers, profiles.
//!
//! Calico's label inheritance is reproduced: a workload's effective labels are its own plus
//! those of its profiles (the namespace profile `kns.<ns>` gives `pcns.<label>` for each
//! namespace label and `pcns.projectcalico.org/name`); its own labels win.

use std::collections::BTreeMap;

use ipnet::IpNet;
use twill_shared::convert::kubernetes_policy_to_calico;
use twill_shared::resource::endpoint::{HostEndpointSpec, WorkloadEndpointSpec};
use twill_shared::resource::fields::{Action, PolicyType, Protocol};
use twill_shared::resource::policy::{NetworkSetSpec, ProfileSpec, Rule};
use twill_shared::resource::{Key, Kind, Object, Resource};
use twill_shared::selector::Selector;

/// Label every namespaced entity carries: its namespace.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Label: the service account of a workload.
pub const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";
/// Prefix of namespace labels seen through the namespace profile.
pub const NAMESPACE_PREFIX: &str = "pcns.";
/// Prefix of service account labels.
pub const SERVICE_ACCOUNT_PREFIX: &str = "pcsa.";
/// The tier policies land in when they name none.
pub const DEFAULT_TIER: &str = "default";

/// A named port of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    /// Its name.
    pub name: String,
    /// IANA protocol number.
    pub protocol: u8,
    /// The port.
    pub port: u16,
}

/// What kind of thing an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    /// A workload (pod) interface.
    Workload,
    /// A host interface.
    Host,
    /// A NetworkSet or GlobalNetworkSet: addresses only, selectable by rules.
    NetworkSet,
}

/// Something a selector can pick: an endpoint or a network set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// The resource it comes from.
    pub key: Key,
    /// Workload, host or network set.
    pub kind: EntityKind,
    /// The node it is on (endpoints).
    pub node: Option<String>,
    /// Its namespace (workloads and NetworkSets).
    pub namespace: Option<String>,
    /// Effective labels: its own over its profiles'.
    pub labels: BTreeMap<String, String>,
    /// Its addresses (hosts as /32 or /128; network sets as written).
    pub nets: Vec<IpNet>,
    /// Host-side interface name (workloads; host endpoints' `interfaceName`).
    pub interface: Option<String>,
    /// Source prefixes a workload may send from besides its own addresses
    /// (`allowSpoofedSourcePrefixes`; honoured only with FelixConfiguration
    /// `workloadSourceSpoofing: Any`).
    pub allowed_sources: Vec<IpNet>,
    /// Named ports.
    pub ports: Vec<NamedPort>,
    /// Profiles, in order.
    pub profiles: Vec<String>,
    /// The pod (workloads).
    pub pod: Option<String>,
}

impl Entity {
    /// `namespace/name` or `name`, for people.
    pub fn display(&self) -> String {
        match &self.key.namespace {
            Some(namespace) => format!("{namespace}/{}", self.key.name),
            None => self.key.name.clone(),
        }
    }
}

/// A policy in Calico's normal form (Kubernetes policies already converted).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The resource it comes from.
    pub key: Key,
    /// Its name as felix shows it: `ns/name` or `name` (Kubernetes: `ns/knp.default.name`).
    pub name: String,
    /// The namespace of a namespaced policy.
    pub namespace: Option<String>,
    /// The tier.
    pub tier: String,
    /// The order (absent: after every ordered policy).
    pub order: Option<f64>,
    /// Which endpoints it applies to (the namespace restriction included).
    pub selector: Selector,
    /// Ingress rules, when the policy applies to ingress.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules, when the policy applies to egress.
    pub egress: Option<Vec<Rule>>,
    /// GlobalNetworkPolicy flags for host endpoints.
    pub apply_on_forward: bool,
    /// Applies before DNAT (host endpoints).
    pub pre_dnat: bool,
    /// Untracked (host endpoints).
    pub do_not_track: bool,
}

/// A tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    /// Its name.
    pub name: String,
    /// Its order (absent: last).
    pub order: Option<f64>,
    /// What happens at its end: Deny (default) or Pass.
    pub default_action: Action,
}

/// A profile: rules and labels applied after the tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Its name (`kns.<ns>`, `ksa.<ns>.<sa>` or a user's).
    pub name: String,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
    /// Labels its endpoints inherit.
    pub labels: BTreeMap<String, String>,
}

/// Every resource felix reads, by key, and the objects that failed validation (which stand
/// in fail-closed: [`crate::invalid`]).
#[derive(Debug, Clone, Default)]
pub struct Model {
    resources: BTreeMap<Key, Resource>,
    invalid: BTreeMap<Key, crate::invalid::Invalid>,
}

/// The kinds felix follows.
pub const KINDS: &[Kind] = &[
    Kind::WorkloadEndpoint,
    Kind::HostEndpoint,
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::KubernetesNetworkPolicy,
    Kind::Tier,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
    Kind::Profile,
    Kind::Namespace,
    Kind::Pod,
    Kind::ServiceAccount,
    Kind::FelixConfiguration,
];

impl Model {
    /// Whether felix follows this kind.
    pub fn wants(kind: Kind) -> bool {
        KINDS.contains(&kind)
    }

    /// Sets (or, with `None`, removes) one resource. Returns whether anything changed.
    pub fn set(&mut self, key: Key, resource: Option<Resource>) -> bool {
        if !Model::wants(key.kind) {
            return false;
        }
        let was_invalid = self.invalid.remove(&key).is_some();
        let changed = match resource {
            Some(resource) => {
                self.resources.insert(key, resource.clone()).as_ref() != Some(&resource)
            }
            None => self.resources.remove(&key).is_some(),
        };
        changed || was_invalid
    }

    /// Records an object that failed to decode or validate, in place of any valid version.
    /// Returns whether anything changed.
    pub fn set_invalid(&mut self, key: Key, invalid: crate::invalid::Invalid) -> bool {
        if !Model::wants(key.kind) {
            return false;
        }
        // A configuration keeps what can be kept (its valid fields, the last valid version's
        // others): one bad field must not reset it to defaults.
        let salvaged = (key.kind == Kind::FelixConfiguration)
            .then(|| {
                crate::invalid::salvage_configuration(&key, &invalid, self.resources.get(&key))
            })
            .flatten();
        let changed_valid = match salvaged {
            Some(resource) => {
                self.resources.insert(key.clone(), resource.clone()) != Some(resource)
            }
            None => self.resources.remove(&key).is_some(),
        };
        self.invalid.insert(key, invalid.clone()) != Some(invalid) || changed_valid
    }

    /// The invalid objects, each described for people (kind, name, reason, consequence).
    pub fn invalid_objects(&self) -> Vec<String> {
        self.invalid
            .iter()
            .map(|(key, invalid)| crate::invalid::describe(key, invalid))
            .collect()
    }

    /// The keys of every object of a kind, valid or not.
    pub fn keys_of_kind(&self, kind: Kind) -> Vec<Key> {
        let mut keys: Vec<Key> = self.of_kind(kind).map(Resource::key).collect();
        keys.extend(self.invalid.range(kind_range(kind)).map(|(k, _)| k.clone()));
        keys
    }

    /// Every resource of a kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.resources
            .range(kind_range(kind))
            .map(|(_, resource)| resource)
    }

    /// One resource.
    pub fn get(&self, key: &Key) -> Option<&Resource> {
        self.resources.get(key)
    }

    /// How many resources felix holds.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Labels of each namespace.
    pub fn namespaces(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.of_kind(Kind::Namespace)
            .filter_map(|r| match r {
                Resource::Namespace(o) => Some((
                    o.metadata.name.clone().unwrap_or_default(),
                    o.metadata.labels.clone().unwrap_or_default(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Every profile: the user's, and one per namespace (`kns.<ns>`: allow both ways, the
    /// namespace's labels as `pcns.*`), as Calico derives them from Kubernetes namespaces.
    pub fn profiles(&self) -> BTreeMap<String, Profile> {
        let mut profiles = BTreeMap::new();
        for (namespace, labels) in self.namespaces() {
            let mut inherited: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (format!("{NAMESPACE_PREFIX}{k}"), v.clone()))
                .collect();
            inherited.insert(
                format!("{NAMESPACE_PREFIX}projectcalico.org/name"),
                namespace.clone(),
            );
            let allow = Rule {
                action: Some(Action::Allow),
                ..Rule::default()
            };
            let name = format!("kns.{namespace}");
            profiles.insert(
                name.clone(),
                Profile {
                    name,
                    ingress: vec![allow.clone()],
                    egress: vec![allow],
                    labels: inherited,
                },
            );
        }
        for resource in self.of_kind(Kind::Profile) {
            if let Resource::Profile(o) = resource {
                let name = o.metadata.name.clone().unwrap_or_default();
                profiles.insert(name.clone(), profile_of(&name, &o.spec));
            }
        }
        profiles
    }

    /// Tiers by name; `default` exists even when nobody wrote it (order 1,000,000, Deny).
    pub fn tiers(&self) -> BTreeMap<String, Tier> {
        let mut tiers = BTreeMap::from([(
            DEFAULT_TIER.to_string(),
            Tier {
                name: DEFAULT_TIER.into(),
                order: Some(1_000_000.0),
                default_action: Action::Deny,
            },
        )]);
        for resource in self.of_kind(Kind::Tier) {
            if let Resource::Tier(o) = resource {
                let name = o.metadata.name.clone().unwrap_or_default();
                tiers.insert(
                    name.clone(),
                    Tier {
                        name,
                        order: o.spec.order,
                        default_action: o.spec.default_action.unwrap_or(Action::Deny),
                    },
                );
            }
        }
        tiers
    }

    /// Every policy in normal form.
    pub fn policies(&self) -> Vec<Policy> {
        let mut policies = Vec::new();
        for kind in [
            Kind::NetworkPolicy,
            Kind::GlobalNetworkPolicy,
            Kind::KubernetesNetworkPolicy,
        ] {
            for resource in self.of_kind(kind) {
                if let Some(policy) = policy_of(resource) {
                    policies.push(policy);
                }
            }
            for (key, invalid) in self.invalid.range(kind_range(kind)) {
                policies.extend(crate::invalid::stand_in_policy(key, invalid));
            }
        }
        policies
    }

    /// The policy of one key, in normal form (None: absent or not a policy); an invalid
    /// policy's fail-closed stand-in.
    pub fn policy(&self, key: &Key) -> Option<Policy> {
        match self.invalid.get(key) {
            Some(invalid) => crate::invalid::stand_in_policy(key, invalid),
            None => self.get(key).and_then(policy_of),
        }
    }

    /// Every entity with its effective labels.
    pub fn entities(&self) -> Vec<Entity> {
        let profiles = self.profiles();
        ENTITY_KINDS
            .iter()
            .flat_map(|&kind| self.keys_of_kind(kind))
            .filter_map(|key| self.entity(&key, &profiles))
            .collect()
    }

    /// The entity of one key (a workload, host endpoint or network set), given the profiles.
    pub fn entity(&self, key: &Key, profiles: &BTreeMap<String, Profile>) -> Option<Entity> {
        if let Some(invalid) = self.invalid.get(key) {
            let mut entity = crate::invalid::stand_in_network_set(key, invalid)?;
            if let Some(namespace) = &key.namespace {
                let names = [format!("kns.{namespace}")];
                entity.labels = effective_labels(&entity.labels, &names, profiles);
            }
            return Some(entity);
        }
        match self.get(key)? {
            Resource::WorkloadEndpoint(o) => {
                let pod = o.spec.pod.as_deref().and_then(|name| {
                    let namespace = o.metadata.namespace.as_deref().unwrap_or("default");
                    match self.get(&Key::namespaced(Kind::Pod, namespace, name)) {
                        Some(Resource::Pod(pod)) => Some(pod),
                        _ => None,
                    }
                });
                let accounts = |namespace: &str, name: &str| match self.get(&Key::namespaced(
                    Kind::ServiceAccount,
                    namespace,
                    name,
                )) {
                    Some(Resource::ServiceAccount(sa)) => sa.metadata.labels.clone(),
                    _ => None,
                };
                Some(workload_entity(o, pod, accounts, profiles))
            }
            Resource::HostEndpoint(o) => Some(host_entity(o, profiles)),
            resource @ (Resource::NetworkSet(o) | Resource::GlobalNetworkSet(o)) => {
                Some(network_set_entity(resource.key(), o, profiles))
            }
            _ => None,
        }
    }

    /// The workload endpoints of a pod.
    pub fn endpoints_of_pod(&self, namespace: &str, pod: &str) -> Vec<Key> {
        self.in_namespace(Kind::WorkloadEndpoint, namespace)
            .filter(|(_, r)| {
                matches!(r, Resource::WorkloadEndpoint(o) if o.spec.pod.as_deref() == Some(pod))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every resource of a namespaced kind in one namespace.
    pub fn in_namespace<'a>(
        &'a self,
        kind: Kind,
        namespace: &str,
    ) -> impl Iterator<Item = (&'a Key, &'a Resource)> {
        let low = Key::namespaced(kind, namespace, "");
        let namespace = namespace.to_string();
        self.resources
            .range(low..)
            .take_while(move |(k, _)| k.kind == kind && k.namespace.as_deref() == Some(&namespace))
    }
}

/// The kinds that are entities.
pub const ENTITY_KINDS: &[Kind] = &[
    Kind::WorkloadEndpoint,
    Kind::HostEndpoint,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
];

fn kind_range(kind: Kind) -> std::ops::RangeInclusive<Key> {
    let low = Key {
        kind,
        namespace: None,
        name: String::new(),
    };
    let high = Key {
        kind,
        namespace: Some("\u{10ffff}".into()),
        name: "\u{10ffff}".into(),
    };
    low..=high
}

fn profile_of(name: &str, spec: &ProfileSpec) -> Profile {
    Profile {
        name: name.to_string(),
        ingress: spec.ingress.clone().unwrap_or_default(),
        egress: spec.egress.clone().unwrap_or_default(),
        labels: spec.labels_to_apply.clone().unwrap_or_default(),
    }
}

/// Effective labels: the profiles' labels in order, then the entity's own on top.
fn effective_labels(
    own: &BTreeMap<String, String>,
    profile_names: &[String],
    profiles: &BTreeMap<String, Profile>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for name in profile_names {
        if let Some(profile) = profiles.get(name) {
            labels.extend(profile.labels.clone());
        }
    }
    labels.extend(own.clone());
    labels
}

fn protocol_number(protocol: Option<Protocol>) -> u8 {
    match protocol {
        Some(Protocol::Udp) => 17,
        Some(Protocol::Sctp) => 132,
        Some(Protocol::Icmp) => 1,
        Some(Protocol::IcmpV6) => 58,
        Some(Protocol::UdpLite) => 136,
        Some(Protocol::Number(n)) => n,
        Some(Protocol::Tcp) | None => 6,
    }
}

/// A workload's entity. When its Pod is in the datastore, the Pod's live labels and named
/// ports win over what the CNI plugin copied at ADD (as Calico derives endpoints from Pods).
fn workload_entity(
    o: &Object<WorkloadEndpointSpec>,
    pod: Option<&Object<twill_shared::resource::kube::PodSpec>>,
    accounts: impl Fn(&str, &str) -> Option<BTreeMap<String, String>>,
    profiles: &BTreeMap<String, Profile>,
) -> Entity {
    let spec = &o.spec;
    let namespace = o
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut own = o.metadata.labels.clone().unwrap_or_default();
    let mut ports = named_ports(spec.ports.as_deref());
    if let Some(pod) = pod {
        own.retain(|key, _| key.starts_with("projectcalico.org/"));
        own.extend(pod.metadata.labels.clone().unwrap_or_default());
        if let Some(account) = &pod.spec.service_account_name {
            own.insert(SERVICE_ACCOUNT_LABEL.into(), account.clone());
        }
        ports = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let protocol = p
                    .protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .parse::<Protocol>()
                    .ok()?;
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: protocol_number(Some(protocol)),
                    port: p.container_port,
                })
            })
            .collect();
    }
    own.insert(NAMESPACE_LABEL.into(), namespace.clone());
    if let Some(account) = &spec.service_account_name {
        own.entry(SERVICE_ACCOUNT_LABEL.into())
            .or_insert_with(|| account.clone());
    }
    // The service account's labels as `pcsa.*` and its name as `pcsa.projectcalico.org/name`
    // (what Calico's `ksa.<ns>.<sa>` profile gives), for serviceAccountSelector.
    let mut labels_of_account = BTreeMap::new();
    if let Some(account) = own.get(SERVICE_ACCOUNT_LABEL).cloned() {
        for (key, value) in accounts(&namespace, &account).unwrap_or_default() {
            labels_of_account.insert(format!("{SERVICE_ACCOUNT_PREFIX}{key}"), value);
        }
        labels_of_account.insert(
            format!("{SERVICE_ACCOUNT_PREFIX}projectcalico.org/name"),
            account,
        );
    }
    let profile_names = spec
        .profiles
        .clone()
        .unwrap_or_else(|| vec![format!("kns.{namespace}")]);
    let mut labels = labels_of_account;
    labels.extend(effective_labels(&own, &profile_names, profiles));
    Entity {
        key: Key::namespaced(
            Kind::WorkloadEndpoint,
            &namespace,
            o.metadata.name.as_deref().unwrap_or(""),
        ),
        kind: EntityKind::Workload,
        node: spec.node.clone(),
        namespace: Some(namespace),
        labels,
        nets: spec
            .ip_networks
            .iter()
            .flatten()
            .map(|c| IpNet::from(c.0.addr()))
            .collect(),
        interface: spec.interface_name.clone(),
        allowed_sources: spec
            .allow_spoofed_source_prefixes
            .iter()
            .flatten()
            .map(|c| c.0.trunc())
            .collect(),
        ports,
        profiles: profile_names,
        pod: spec.pod.clone().or_else(|| spec.workload.clone()),
    }
}

fn named_ports(ports: Option<&[twill_shared::resource::endpoint::EndpointPort]>) -> Vec<NamedPort> {
    ports
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                protocol: protocol_number(p.protocol),
                port: p.port?,
            })
        })
        .collect()
}

fn host_entity(o: &Object<HostEndpointSpec>, profiles: &BTreeMap<String, Profile>) -> Entity {
    let spec = &o.spec;
    let own = o.metadata.labels.clone().unwrap_or_default();
    let profile_names = spec.profiles.clone().unwrap_or_default();
    Entity {
        key: Key::cluster(Kind::HostEndpoint, o.metadata.name.as_deref().unwrap_or("")),
        kind: EntityKind::Host,
        node: spec.node.clone(),
        namespace: None,
        labels: effective_labels(&own, &profile_names, profiles),
        nets: spec
            .expected_ips
            .iter()
            .flatten()
            .map(|ip| IpNet::from(ip.0))
            .collect(),
        interface: spec.interface_name.clone(),
        allowed_sources: Vec::new(),
        ports: named_ports(spec.ports.as_deref()),
        profiles: profile_names,
        pod: None,
    }
}

fn network_set_entity(
    key: Key,
    o: &Object<NetworkSetSpec>,
    profiles: &BTreeMap<String, Profile>,
) -> Entity {
    let mut own = o.metadata.labels.clone().unwrap_or_default();
    let namespace = key.namespace.clone();
    let mut profile_names = Vec::new();
    if let Some(namespace) = &namespace {
        own.insert(NAMESPACE_LABEL.into(), namespace.clone());
        profile_names.push(format!("kns.{namespace}"));
    }
    Entity {
        key,
        kind: EntityKind::NetworkSet,
        node: None,
        namespace,
        labels: effective_labels(&own, &profile_names, profiles),
        nets: o.spec.nets.iter().flatten().map(|c| c.0.trunc()).collect(),
        interface: None,
        allowed_sources: Vec::new(),
        ports: Vec::new(),
        profiles: Vec::new(),
        pod: None,
    }
}

/// `namespace == 'ns'` as a selector.
fn in_namespace(namespace: &str) -> Selector {
    Selector::Equal(NAMESPACE_LABEL.into(), namespace.into())
}

/// A namespace selector as Calico evaluates it on endpoints: labels prefixed `pcns.`,
/// `all()` meaning "in some namespace", `global()` meaning "in none".
pub fn namespace_scope(selector: &Selector) -> Selector {
    prefix_labels(selector, NAMESPACE_PREFIX, true)
}

/// A service account selector: labels prefixed `pcsa.`.
pub fn service_account_scope(selector: &Selector) -> Selector {
    prefix_labels(selector, SERVICE_ACCOUNT_PREFIX, false)
}

fn prefix_labels(selector: &Selector, prefix: &str, namespaces: bool) -> Selector {
    let key = |k: &String| format!("{prefix}{k}");
    let recurse = |s: &Selector| prefix_labels(s, prefix, namespaces);
    match selector {
        Selector::All if namespaces => Selector::Has(NAMESPACE_LABEL.into()),
        Selector::Global if namespaces => {
            Selector::Not(Box::new(Selector::Has(NAMESPACE_LABEL.into())))
        }
        Selector::All | Selector::Global => Selector::All,
        Selector::Has(k) => Selector::Has(key(k)),
        Selector::Equal(k, v) => Selector::Equal(key(k), v.clone()),
        Selector::NotEqual(k, v) => Selector::NotEqual(key(k), v.clone()),
        Selector::In(k, set) => Selector::In(key(k), set.clone()),
        Selector::NotIn(k, set) => Selector::NotIn(key(k), set.clone()),
        Selector::Contains(k, v) => Selector::Contains(key(k), v.clone()),
        Selector::StartsWith(k, v) => Selector::StartsWith(key(k), v.clone()),
        Selector::EndsWith(k, v) => Selector::EndsWith(key(k), v.clone()),
        Selector::Not(inner) => Selector::Not(Box::new(recurse(inner))),
        Selector::And(operands) => Selector::And(operands.iter().map(recurse).collect()),
        Selector::Or(operands) => Selector::Or(operands.iter().map(recurse).collect()),
    }
}

/// `a && b`, flattening and dropping `all()`.
pub fn and(parts: Vec<Selector>) -> Selector {
    let mut operands = Vec::new();
    for part in parts {
        match part {
            Selector::All => {}
            Selector::And(inner) => operands.extend(inner),
            other => operands.push(other),
        }
    }
    match operands.len() {
        0 => Selector::All,
        1 => operands.pop().expect("one operand"),
        _ => Selector::And(operands),
    }
}

fn parse_or_all(text: Option<&twill_shared::resource::fields::SelectorText>) -> Selector {
    text.map(|s| s.selector().clone()).unwrap_or(Selector::All)
}

/// The rule lists of the directions a Calico policy applies to (one defaulting rule, shared
/// with the client that writes policies: `calico_policy_types`).
fn directions(
    types: Option<&Vec<PolicyType>>,
    ingress: &Option<Vec<Rule>>,
    egress: &Option<Vec<Rule>>,
) -> (Option<Vec<Rule>>, Option<Vec<Rule>>) {
    let types = twill_shared::resource::policy::calico_policy_types(
        types.map(Vec::as_slice),
        ingress.as_deref(),
        egress.as_deref(),
    );
    (
        types
            .contains(&PolicyType::Ingress)
            .then(|| ingress.clone().unwrap_or_default()),
        types
            .contains(&PolicyType::Egress)
            .then(|| egress.clone().unwrap_or_default()),
    )
}

fn policy_of(resource: &Resource) -> Option<Policy> {
    match resource {
        Resource::NetworkPolicy(o) => Some(namespaced_policy(resource.key(), o)),
        Resource::KubernetesNetworkPolicy(o) => {
            let converted = kubernetes_policy_to_calico(o);
            Some(namespaced_policy(resource.key(), &converted))
        }
        Resource::GlobalNetworkPolicy(o) => {
            let spec = &o.spec;
            let mut parts = Vec::new();
            if let Some(namespaces) = &spec.namespace_selector {
                parts.push(namespace_scope(namespaces.selector()));
            }
            if let Some(accounts) = &spec.service_account_selector {
                parts.push(service_account_scope(accounts.selector()));
            }
            parts.push(parse_or_all(spec.selector.as_ref()));
            let (ingress, egress) = directions(spec.types.as_ref(), &spec.ingress, &spec.egress);
            let name = o.metadata.name.clone().unwrap_or_default();
            Some(Policy {
                key: resource.key(),
                name,
                namespace: None,
                tier: spec.tier.clone().unwrap_or_else(|| DEFAULT_TIER.into()),
                order: spec.order,
                selector: and(parts),
                ingress,
                egress,
                apply_on_forward: spec.apply_on_forward == Some(true),
                pre_dnat: spec.pre_dnat == Some(true),
                do_not_track: spec.do_not_track == Some(true),
            })
        }
        _ => None,
    }
}

fn namespaced_policy(
    key: Key,
    o: &Object<twill_shared::resource::policy::NetworkPolicySpec>,
) -> Policy {
    let spec = &o.spec;
    let namespace = o
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut parts = vec![in_namespace(&namespace)];
    if let Some(accounts) = &spec.service_account_selector {
        parts.push(service_account_scope(accounts.selector()));
    }
    parts.push(parse_or_all(spec.selector.as_ref()));
    let (ingress, egress) = directions(spec.types.as_ref(), &spec.ingress, &spec.egress);
    Policy {
        key,
        name: format!("{namespace}/{}", o.metadata.name.as_deref().unwrap_or("")),
        namespace: Some(namespace),
        tier: spec.tier.clone().unwrap_or_else(|| DEFAULT_TIER.into()),
        order: spec.order,
        selector: and(parts),
        ingress,
        egress,
        apply_on_forward: false,
        pre_dnat: false,
        do_not_track: false,
    }
}

/// Fields a resource sets that Twill stores but does not enforce yet, as `path: what`:
/// Calico Enterprise's `domains` and `http`, and Kubernetes `services` matches (an Allow rule
/// that needs them matches nothing; a Deny, Pass or Log rule acts as if they matched — never
/// open), network sets' domains, flow-log settings.
pub fn unenforced(resource: &Resource) -> Vec<String> {
    let mut found = Vec::new();
    let rules = |found: &mut Vec<String>, direction: &str, rules: Option<&Vec<Rule>>| {
        for (index, rule) in rules.into_iter().flatten().enumerate() {
            let path = format!("spec.{direction}[{index}]");
            let consequence = match rule.action.unwrap_or(Action::Allow) {
                Action::Allow => "the Allow rule matches nothing".to_string(),
                // Passing more would skip the rest of the tier, its Deny rules included.
                Action::Pass => "the Pass rule denies instead, as if it matched".to_string(),
                action => format!("the {action} rule acts as if it matched (never less)"),
            };
            if rule.http.is_some() {
                found.push(format!(
                    "{path}.http: HTTP matching (Calico Enterprise) is not enforced; {consequence}"
                ));
            }
            for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
                let Some(entity) = entity else { continue };
                if entity.domains.as_ref().is_some_and(|d| !d.is_empty()) {
                    found.push(format!("{path}.{side}.domains: domain names (Calico Enterprise) are not enforced; {consequence}"));
                }
                if entity.services.is_some() {
                    found.push(format!("{path}.{side}.services: service matches are not enforced yet; {consequence}"));
                }
            }
        }
    };
    match resource {
        Resource::NetworkPolicy(o) => {
            rules(&mut found, "ingress", o.spec.ingress.as_ref());
            rules(&mut found, "egress", o.spec.egress.as_ref());
        }
        Resource::GlobalNetworkPolicy(o) => {
            rules(&mut found, "ingress", o.spec.ingress.as_ref());
            rules(&mut found, "egress", o.spec.egress.as_ref());
        }
        Resource::Profile(o) => {
            rules(&mut found, "ingress", o.spec.ingress.as_ref());
            rules(&mut found, "egress", o.spec.egress.as_ref());
        }
        Resource::NetworkSet(o) | Resource::GlobalNetworkSet(o)
            if o.spec
                .allowed_egress_domains
                .as_ref()
                .is_some_and(|d| !d.is_empty()) =>
        {
            found.push(
                "spec.allowedEgressDomains: domain names (Calico Enterprise) are not enforced"
                    .into(),
            );
        }
        Resource::FelixConfiguration(o) => {
            let value = serde_json::to_value(&o.spec).unwrap_or_default();
            for key in value.as_object().into_iter().flat_map(|m| m.keys()) {
                if key.starts_with("flowLogs") {
                    found.push(format!(
                        "spec.{key}: flow logs are not produced yet (stored only)"
                    ));
                }
            }
        }
        _ => {}
    }
    found
}
