//! The text the kernel's save tools would print after a dataplane was applied exactly: what
//! the applier plans the next change against, so a change costs its restore alone. The
//! kernel itself is read again at each refresh (drift repair).

use std::fmt::Write as _;

use crate::ir::{Dataplane, Family};
use crate::render::ipset::{create_line, kernel_members, member_text};
use crate::render::iptables::{render_chain, render_hook};

/// `iptables-save` text of every table the dataplane has (hooks first in their built-in
/// chains, as the applier inserts them).
pub fn iptables_save(family: Family, dataplane: &Dataplane) -> String {
    let mut tables: std::collections::BTreeSet<&str> =
        dataplane.tables.keys().map(String::as_str).collect();
    tables.extend(dataplane.hooks.iter().map(|h| h.table.as_str()));
    let mut out = String::new();
    for table in tables {
        let _ = writeln!(out, "*{table}");
        let builtins: std::collections::BTreeSet<&str> = dataplane
            .hooks
            .iter()
            .filter(|h| h.table == table)
            .map(|h| h.chain.as_str())
            .collect();
        for chain in &builtins {
            let _ = writeln!(out, ":{chain} ACCEPT [0:0]");
        }
        if let Some(contents) = dataplane.tables.get(table) {
            for name in contents.chains.keys() {
                let _ = writeln!(out, ":{name} - [0:0]");
            }
        }
        for hook in dataplane.hooks.iter().filter(|h| h.table == table) {
            let _ = writeln!(out, "-A {} {}", hook.chain, render_hook(family, hook).text);
        }
        if let Some(contents) = dataplane.tables.get(table) {
            for chain in contents.chains.values() {
                for rule in render_chain(family, chain) {
                    let _ = writeln!(out, "-A {} {}", chain.name, rule.text);
                }
            }
        }
        let _ = writeln!(out, "COMMIT");
    }
    out
}

/// `ipset save` text of the dataplane's sets.
pub fn ipset_save(dataplane: &Dataplane) -> String {
    let mut out = String::new();
    for set in dataplane.sets.values() {
        let _ = writeln!(out, "{}", create_line(&set.name, set.kind, set.family));
        for member in kernel_members(set) {
            let _ = writeln!(out, "add {} {}", set.name, member_text(&member));
        }
    }
    out
}
