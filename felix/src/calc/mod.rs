//! The policy calculation (pure): the model in, per family the desired chains and IP sets out,
//! with Calico's semantics.
//!
//! - [`programs`]: per endpoint and direction, the tiers (by order, then name) with the
//!   policies that select it (by order, then name), and its profiles — what both the
//!   dataplane and `policy explain` follow.
//! - [`compile`]: a rule as conditions over sets, nets, protocols and ports, per family;
//!   rule selectors scoped to namespaces exactly as Calico scopes them.
//! - [`chains`]: the chains and sets of one family from the programs and compiled rules.
//!
//! Rules are O(local endpoints + policies that select them): remote endpoints are members of
//! IP sets, never rules.

pub mod chains;
pub mod compile;
pub mod nat;
pub mod programs;
pub mod state;

pub use state::Calculator;

use std::collections::BTreeMap;

use crate::ir::Dataplane;
use crate::model::{Entity, Model};

/// What shapes the dataplane beyond the resources' rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node.
    pub node: String,
    /// Prefixes of workload interfaces (Calico's `interfacePrefix`; Twill's plugin uses `tw`).
    pub interface_prefixes: Vec<String>,
    /// What happens to traffic from a workload to its host after egress policy allowed it.
    pub endpoint_to_host: EndpointToHost,
    /// Ports host endpoint policy never blocks, towards the host.
    pub failsafe_inbound: Vec<FailsafePort>,
    /// Ports host endpoint policy never blocks, from the host.
    pub failsafe_outbound: Vec<FailsafePort>,
    /// This node's interfaces and their addresses: a host endpoint with `expectedIPs` and no
    /// `interfaceName` applies to the interfaces that hold one of them (as Calico's).
    pub host_addresses: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// FelixConfiguration `workloadSourceSpoofing: Any`: workloads may send from their
    /// endpoints' `allowSpoofedSourcePrefixes` too.
    pub source_spoofing: bool,
}

/// A failsafe port (FelixConfiguration `failsafeInboundHostPorts` / `…Outbound…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailsafePort {
    /// IANA protocol number.
    pub protocol: u8,
    /// The (destination) port.
    pub port: u16,
    /// Only from (inbound) or to (outbound) this network.
    pub net: Option<ipnet::IpNet>,
}

/// Calico's default failsafe ports: SSH, DHCP, BGP, etcd, Typha, the Kubernetes API, kube-proxy
/// health inbound; DNS, DHCP, BGP, etcd, Typha, the Kubernetes API outbound.
fn default_failsafe(inbound: bool) -> Vec<FailsafePort> {
    let tcp = |port| FailsafePort {
        protocol: 6,
        port,
        net: None,
    };
    let udp = |port| FailsafePort {
        protocol: 17,
        port,
        net: None,
    };
    let mut ports = if inbound {
        vec![tcp(22), udp(68)]
    } else {
        vec![udp(53), udp(67)]
    };
    ports.extend([179, 2379, 2380, 5473, 6443, 6666, 6667].map(tcp));
    ports
}

fn failsafe_of(ports: &[twill_shared::resource::config::ProtoPort]) -> Vec<FailsafePort> {
    ports
        .iter()
        .filter_map(|p| {
            let protocol = match p.protocol {
                Some(twill_shared::resource::fields::Protocol::Udp) => 17,
                Some(twill_shared::resource::fields::Protocol::Sctp) => 132,
                _ => 6,
            };
            Some(FailsafePort {
                protocol,
                port: p.port?,
                net: p.net.as_deref().and_then(|n| n.parse().ok()),
            })
        })
        .collect()
}

/// FelixConfiguration `defaultEndpointToHostAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointToHost {
    /// Accept it (as Calico's Kubernetes manifests configure).
    Accept,
    /// Drop it.
    Drop,
    /// Return to the host's own INPUT rules.
    Return,
}

impl Config {
    /// The configuration of `node` from the FelixConfiguration resources (`default`, then
    /// `node.<name>` on top).
    pub fn from_model(model: &Model, node: &str) -> Config {
        let mut config = Config {
            node: node.to_string(),
            interface_prefixes: vec!["tw".into()],
            endpoint_to_host: EndpointToHost::Accept,
            failsafe_inbound: default_failsafe(true),
            failsafe_outbound: default_failsafe(false),
            host_addresses: BTreeMap::new(),
            source_spoofing: false,
        };
        for name in ["default".to_string(), format!("node.{node}")] {
            let key = twill_shared::resource::Key::cluster(
                twill_shared::resource::Kind::FelixConfiguration,
                &name,
            );
            let Some(twill_shared::resource::Resource::FelixConfiguration(o)) = model.get(&key)
            else {
                continue;
            };
            if let Some(ports) = &o.spec.failsafe_inbound_host_ports {
                config.failsafe_inbound = failsafe_of(ports);
            }
            if let Some(ports) = &o.spec.failsafe_outbound_host_ports {
                config.failsafe_outbound = failsafe_of(ports);
            }
            if let Some(spoofing) = o.spec.workload_source_spoofing {
                config.source_spoofing =
                    spoofing == twill_shared::resource::fields::WorkloadSourceSpoofing::Any;
            }
            if let Some(prefix) = &o.spec.interface_prefix {
                config.interface_prefixes = prefix
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect();
            }
            match o
                .spec
                .default_endpoint_to_host_action
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("drop") => config.endpoint_to_host = EndpointToHost::Drop,
                Some("return") => config.endpoint_to_host = EndpointToHost::Return,
                Some("accept") => config.endpoint_to_host = EndpointToHost::Accept,
                _ => {}
            }
        }
        config
    }
}

/// The result of a calculation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Computed {
    /// IPv4 chains and sets.
    pub v4: Dataplane,
    /// IPv6 chains and sets.
    pub v6: Dataplane,
    /// This node's workload endpoints, by interface.
    pub local: BTreeMap<String, Entity>,
    /// Warnings for people (fields stored but not enforced, missing referents).
    pub warnings: Vec<String>,
}

/// Calculates the whole desired dataplane of one node (a [`Calculator`] built from nothing).
pub fn compute(model: &Model, config: &Config) -> Computed {
    Calculator::with_config(model.clone(), config.clone())
        .compute()
        .clone()
}

#[cfg(test)]
mod tests;
