//! twill-bgpd: Twill's BGP-4 speaker.
//!
//! Layers (pure cores first; I/O behind the `runtime` feature):
//! - [`wire`]: the message codec (RFC 4271, 4760, 2545, 6793, 2918, 7313, 4724, 7911, 8654,
//!   1997, 4360, 8092, 4456) with RFC 7606 error handling. Done.
//! - `fsm/` (the RFC 4271 §8 session), `rib/` (Adj-RIB-In, Loc-RIB with the §9.1 decision
//!   process, Adj-RIB-Out), `policy/` (import/export filters), and the `io/` edges (TCP with
//!   MD5 and TTL security, control socket, rtnetlink route sync, the `twill-bgpd` daemon):
//!   to come.
//! - [`calico`]: Calico's BGP resources compiled to this daemon's configuration (what
//!   twill-node runs).

pub mod calico;
pub mod config;
pub mod fsm;
#[cfg(feature = "runtime")]
pub mod io;
pub mod policy;
pub mod rib;
pub mod speaker;
pub mod wire;
