//! twill-node: the per-node agent.
//!
//! This crate will own the `twill-node` binary, which runs `twill-bgpd`, `twill-felix` and
//! `twill-ipip` against one datastore, with health (`/livez`, `/readyz`) and Prometheus
//! metrics. Nothing is implemented yet; see the project's issues.
