//! twill-bgpd: Twill's BGP-4 speaker.
//!
//! This crate will own the BGP wire codec (`wire/`), the RFC 4271 §8 session state machine
//! (`fsm/`), the RIB with the §9.1 decision process (`rib/`), import/export policy
//! (`policy/`), and, behind the `runtime` feature, the I/O edges: TCP with MD5 and TTL
//! security, the control socket, rtnetlink route sync and the driver loop of the standalone
//! `twill-bgpd` daemon. Nothing is implemented yet; see the project's issues.
