//! The topology file: namespaces with labels, pods with labels (and an optional node), and
//! the ports every pod serves.
//!
//! ```yaml
//! namespaces:            # name -> labels
//!   x: {ns: x, team: red}
//! pods:                  # optional `node: N` places a pod on node N
//!   - {ns: x, name: a, labels: {pod: a, app: web}}
//! ports:                 # every pod serves each; `name` is its named container port
//!   - {name: serve-80-tcp, port: 80, protocol: TCP}
//! ```

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// A port every pod of the topology serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// The named container port (rules can refer to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// TCP or UDP.
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "TCP".into()
}

impl Port {
    /// Parses `N/PROTO` (`80/TCP`, `53/udp`) or `N` (TCP).
    pub fn parse(text: &str) -> anyhow::Result<Port> {
        let (port, protocol) = text.split_once('/').unwrap_or((text, "TCP"));
        let port: u16 = port
            .parse()
            .with_context(|| format!("{text:?}: {port:?} is not a port number"))?;
        let protocol = protocol.to_ascii_uppercase();
        if protocol != "TCP" && protocol != "UDP" {
            bail!("{text:?}: the lab probes TCP and UDP, not {protocol}");
        }
        Ok(Port {
            name: None,
            port,
            protocol,
        })
    }

    /// `80/TCP`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.port, self.protocol)
    }
}

/// A pod of the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodEntry {
    /// Its namespace.
    pub ns: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The node it runs on (default: spread over the nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A whole topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Namespace → labels.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Pods.
    #[serde(default)]
    pub pods: Vec<PodEntry>,
    /// Ports every pod serves.
    #[serde(default)]
    pub ports: Vec<Port>,
}

impl Topology {
    /// Reads and checks a topology; errors name the field.
    pub fn parse(text: &str) -> anyhow::Result<Topology> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let topology: Topology = serde_path_to_error_free(deserializer)?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, pod) in topology.pods.iter().enumerate() {
            check_name(&pod.ns).with_context(|| format!("pods[{i}].ns"))?;
            check_name(&pod.name).with_context(|| format!("pods[{i}].name"))?;
            if !seen.insert((pod.ns.clone(), pod.name.clone())) {
                bail!("pods[{i}]: {}/{} appears twice", pod.ns, pod.name);
            }
        }
        for name in topology.namespaces.keys() {
            check_name(name).with_context(|| format!("namespaces.{name}"))?;
        }
        for (i, port) in topology.ports.iter().enumerate() {
            let protocol = port.protocol.to_ascii_uppercase();
            if protocol != "TCP" && protocol != "UDP" {
                bail!("ports[{i}].protocol: {:?} is not TCP or UDP", port.protocol);
            }
            if port.port == 0 {
                bail!("ports[{i}].port: 0 is not a port");
            }
        }
        Ok(topology)
    }
}

fn serde_path_to_error_free(
    deserializer: serde_yaml::Deserializer<'_>,
) -> anyhow::Result<Topology> {
    Topology::deserialize(deserializer)
        .map_err(|err| anyhow::anyhow!("the topology does not parse: {err}"))
}

/// Kubernetes names: lowercase letters, digits and '-', at most 63, alphanumeric at both ends.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| alnum(b) || b == b'-')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    if ok {
        Ok(())
    } else {
        bail!("{name:?} is not a valid name (lowercase letters, digits and '-', at most 63)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_shape_parses() {
        let topology = Topology::parse(
            "namespaces:\n  x: {ns: x, team: red}\npods:\n  - {ns: x, name: a, labels: {pod: a, app: web}}\n  \
             - {ns: x, name: b, node: node-1}\nports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n",
        )
        .unwrap();
        assert_eq!(topology.namespaces["x"]["team"], "red");
        assert_eq!(topology.pods[1].node.as_deref(), Some("node-1"));
        assert_eq!(topology.ports[0].label(), "80/TCP");
    }

    #[test]
    fn mistakes_are_named() {
        let err = Topology::parse("pods:\n  - {ns: x, name: A}\n").unwrap_err();
        assert!(format!("{err:#}").contains("pods[0].name"), "{err:#}");
        let err = Topology::parse("pods:\n  - {ns: x, name: a, lables: {}}\n").unwrap_err();
        assert!(format!("{err:#}").contains("lables"), "{err:#}");
        let err = Topology::parse("ports:\n  - {port: 80, protocol: ICMP}\n").unwrap_err();
        assert!(format!("{err:#}").contains("ports[0].protocol"), "{err:#}");
        assert_eq!(Port::parse("53/udp").unwrap().label(), "53/UDP");
        assert!(Port::parse("x/TCP").is_err());
    }
}
