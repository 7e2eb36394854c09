//! twill-felix: Twill's policy agent.
//!
//! This crate will own the label index (`index/`), the incremental policy calculation
//! (`calc/`), rendering to iptables rules and ipsets (`render/`), planning the difference
//! between desired and observed kernel state (`plan/`), and, behind the `runtime` feature,
//! applying it atomically (`apply/`). It consumes the resources and selectors of
//! `twill-shared`. Nothing is implemented yet; see the project's issues.
