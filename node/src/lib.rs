//! twill-node: the per-node agent. It follows the datastore through the syncer and runs
//! felix (policy as iptables chains and ipsets, endpoint routes); BGP and encapsulation
//! join it with later issues.
//!
//! - [`agent`]: the loop — syncer updates in, calculation, apply, status.
//! - [`routes`]: endpoint routes (protocol 211), added and repaired.
//! - [`interfaces`]: this node's interfaces and addresses (host endpoints by expectedIPs).
//! - [`health`]: `/livez`, `/readyz`, `/metrics`.
//! - [`status`]: the status file and the metrics.

#![allow(clippy::disallowed_methods)] // The agent is an edge: it reads clocks and runs tools.

pub mod agent;
pub mod health;
pub mod interfaces;
pub mod routes;
pub mod status;
