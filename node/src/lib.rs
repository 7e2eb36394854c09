//! twill-node: the per-node agent. It follows the datastore through the syncer and runs
//! felix (policy as iptables chains and ipsets, endpoint routes), BGP (twill-bgpd's speaker,
//! configured from the datastore as Calico configures BIRD) and encapsulation (VXLAN).
//!
//! - [`agent`]: the loop — syncer updates in, calculation, apply, status.
//! - [`bgp`]: the speaker, its configuration from the datastore, the block blackholes.
//! - [`encap`]: the VTEP, `vxlan.twill`, FDB and neighbour entries, routes through it.
//! - [`routes`]: routes Twill owns by protocol: endpoint routes (211), encapsulation routes
//!   (212), cluster routes (213: blackholes, `reachableBy`), added and repaired.
//! - [`interfaces`]: this node's interfaces and addresses (host endpoints by expectedIPs).
//! - [`health`]: `/livez`, `/readyz`, `/metrics`.
//! - [`controllers`]: `twill-kube-controllers` (deleted nodes' IPAM, leaked handles, a Lease
//!   for leader election), a binary of its own.
//! - [`status`]: the status file and the metrics.

#![allow(clippy::disallowed_methods)] // The agent is an edge: it reads clocks and runs tools.

pub mod agent;
pub mod bgp;
pub mod controllers;
pub mod encap;
pub mod health;
pub mod interfaces;
pub mod routes;
pub mod startup;
pub mod status;

/// Logs to standard error at `TWILL_LOG` (default info), as JSON or text (coloured on a
/// terminal): how both binaries of this crate log.
pub fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TWILL_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
