//! The pod × pod matrix: each source pod probes every other pod from inside its own
//! namespace, all sources at once.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::Target;
use crate::cluster::Lab;
use crate::state::State;
use crate::topology::Port;

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProbeResult {
    /// `NS/POD` of the source.
    pub from: String,
    /// `NS/POD` of the destination.
    pub to: String,
    /// The port.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: String,
    /// A reply came back.
    pub connected: bool,
}

/// The ports probed when none are named: the topology's and every pod's.
pub fn default_ports(state: &State) -> Vec<Port> {
    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for port in state
        .ports
        .iter()
        .chain(state.pods.iter().flat_map(|p| p.serves.iter()))
    {
        if seen.insert((port.port, port.protocol.clone())) {
            ports.push(Port {
                name: None,
                port: port.port,
                protocol: port.protocol.clone(),
            });
        }
    }
    ports.sort_by(|a, b| (a.port, &a.protocol).cmp(&(b.port, &b.protocol)));
    ports
}

impl Lab {
    /// Probes every ordered pair of distinct pods on every port, in parallel, at their first
    /// address.
    pub async fn probe(
        &self,
        ports: &[Port],
        timeout: Duration,
    ) -> anyhow::Result<Vec<ProbeResult>> {
        self.probe_family(ports, timeout, false).await
    }

    /// As [`Lab::probe`], at the pods' IPv6 addresses (`ipv6`) or their IPv4 ones; pods
    /// without one are not probed.
    pub async fn probe_family(
        &self,
        ports: &[Port],
        timeout: Duration,
        ipv6: bool,
    ) -> anyhow::Result<Vec<ProbeResult>> {
        let state = self.state()?;
        let ports = if ports.is_empty() {
            default_ports(&state)
        } else {
            ports.to_vec()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for source in &state.pods {
            let mut targets = Vec::new();
            for destination in state.pods.iter().filter(|d| d.id() != source.id()) {
                let Some(ip) = destination
                    .ips
                    .iter()
                    .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
                    .find(|ip| ip.is_ipv6() == ipv6)
                else {
                    continue;
                };
                for port in &ports {
                    targets.push(Target {
                        to: destination.id(),
                        ip,
                        port: port.port,
                        protocol: port.protocol.clone(),
                    });
                }
            }
            let (lab, netns, from) = (self.clone(), source.netns.clone(), source.id());
            tasks.spawn(async move { (from, lab.run_agent(&netns, targets, timeout).await) });
        }
        let mut results = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (from, outcomes) = done?;
            for outcome in outcomes? {
                results.push(ProbeResult {
                    from: from.clone(),
                    to: outcome.target.to,
                    port: outcome.target.port,
                    protocol: outcome.target.protocol,
                    connected: outcome.connected,
                });
            }
        }
        results.sort();
        Ok(results)
    }
}

/// The matrix as the Kubernetes e2e suite prints its truth tables: one table per port, rows
/// from, columns to, `.` for self, ✓ and ✗.
pub fn table(results: &[ProbeResult]) -> String {
    let pods: BTreeSet<&str> = results
        .iter()
        .flat_map(|r| [r.from.as_str(), r.to.as_str()])
        .collect();
    let ports: BTreeSet<(u16, &str)> = results
        .iter()
        .map(|r| (r.port, r.protocol.as_str()))
        .collect();
    let width = pods.iter().map(|p| p.len()).max().unwrap_or(1).max(4);
    let mut out = String::new();
    for (port, protocol) in ports {
        out.push_str(&format!("{port}/{protocol}\n{:width$}", "-"));
        for to in &pods {
            out.push_str(&format!(" {to:>width$}"));
        }
        out.push('\n');
        for from in &pods {
            out.push_str(&format!("{from:width$}"));
            for to in &pods {
                let cell = if from == to {
                    "."
                } else {
                    match results.iter().find(|r| {
                        r.from == *from && r.to == *to && r.port == port && r.protocol == protocol
                    }) {
                        Some(r) if r.connected => "✓",
                        Some(_) => "✗",
                        None => "?",
                    }
                };
                out.push_str(&format!(" {cell:>width$}"));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}
