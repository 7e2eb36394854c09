//! twill-ipam: Twill's IP address management.
//!
//! This crate will own IP pools, per-node blocks with affinity, handles, borrowing, release
//! and garbage collection: a pure `(Block, Request) -> (Block, Allocation)` core, and behind
//! the `runtime` feature the compare-and-swap retry loop against the `twill-shared`
//! datastore and the `twill-ipam` CNI IPAM plugin. Nothing is implemented yet; see the
//! project's issues.
