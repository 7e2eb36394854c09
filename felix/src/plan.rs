//! Planning (pure): desired state plus the kernel's own text in, the smallest restore scripts
//! out. Tested with strings; the `apply` edge only runs what this returns.
//!
//! - [`plan_table`]: an `iptables-save` dump and one desired table → an
//!   `iptables-restore --noflush` script, or `None` when the kernel already matches (so the
//!   steady state costs one `iptables-save`). Only Twill's objects are read or written:
//!   chains named `twl-*` and, in other chains, rules whose comment starts with `twl:`
//!   (the hooks). A chain is rewritten only when its sequence of rule hashes differs.
//! - [`plan_sets`]: an `ipset save` dump and the desired sets → a script to run before
//!   iptables (create, add, delete members, replace) and one to run after it (destroy sets
//!   nothing references any more).
//! - [`plan_unreference`]: the rare first step when a set must change its type or family,
//!   which the kernel cannot swap and cannot destroy while a rule refers to it.
//!
//! - [`plan_delta`]: between refreshes, the dataplane last applied and the desired one → only
//!   what changed, nothing parsed.
//!
//! Scripts are deterministic: chains and sets in name order, rules in chain order.

mod delta;
mod save;
mod sets;
mod table;

pub use delta::{advance, plan_delta, Delta};
pub use sets::{plan_sets, SetPlan};
pub use table::{plan_table, plan_unreference, tables_with_twill_objects};

/// The prefix of every kernel object Twill owns.
pub const OWNED_PREFIX: &str = "twl-";

#[cfg(test)]
mod tests;
