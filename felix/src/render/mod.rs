//! Rendering (pure): the [`ir`](crate::ir) spelled as kernel text.
//!
//! - [`iptables`]: one [`ir::Rule`](crate::ir::Rule) as the rule specification that follows
//!   `-A CHAIN` in an `iptables-restore` script, with its `twl:<hash>` comment.
//! - [`ipset`]: `ipset restore` create lines and member text.
//!
//! Renderers only spell: names are already kernel names, and every function is total (no
//! I/O, no errors); what the kernel would refuse is the calculation's contract (see the
//! `ir` docs) except where noted.

pub mod ipset;
pub mod iptables;
