//! One change: the dataplane last applied (exactly) and the desired one → the scripts that
//! write only what differs, without reading or rendering anything else.
//!
//! The applier uses it between refreshes; every refresh plans against the kernel's own dumps
//! instead ([`plan_table`](super::plan_table), [`plan_sets`](super::plan_sets)), which is
//! what repairs drift. When the change needs what only a dump can tell (a set changing its
//! type or family, hooks moving), there is no delta: the caller plans against the kernel.

use std::collections::BTreeSet;

use crate::ir::{Dataplane, Family, IpSet, Table};
use crate::render::ipset::{create_line, kernel_members, member_text};
use crate::render::iptables::render_chain;

/// The scripts of one change, in the order they run, and what they change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// `ipset restore -exist` before iptables: new sets, members added and removed.
    pub sets_before: String,
    /// `iptables-restore --noflush`, one script per table that changes.
    pub tables: Vec<(String, String)>,
    /// `ipset restore -exist` after iptables: sets no longer referred to, destroyed.
    pub sets_after: String,
    /// Chains written or removed, as (table, chain).
    pub chains: BTreeSet<(String, String)>,
    /// Sets created, changed or destroyed.
    pub sets: BTreeSet<String>,
}

impl Delta {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty()
    }
}

/// The delta from `last` (applied exactly) to `desired`; `None` when it cannot be planned
/// without the kernel's dumps.
pub fn plan_delta(family: Family, last: &Dataplane, desired: &Dataplane) -> Option<Delta> {
    if last.hooks != desired.hooks {
        return None;
    }
    let mut delta = Delta::default();
    let mut before = Vec::new();
    for (name, set) in &desired.sets {
        match last.sets.get(name) {
            None => {
                before.push(create_line(name, set.kind, set.family));
                before.extend(
                    kernel_members(set)
                        .iter()
                        .map(|m| format!("add {name} {}", member_text(m))),
                );
            }
            Some(old) if old.kind != set.kind || old.family != set.family => return None,
            Some(old) if old.members == set.members => continue,
            Some(old) => member_changes(&mut before, name, old, set),
        }
        delta.sets.insert(name.clone());
    }
    let mut after = Vec::new();
    for name in last.sets.keys() {
        if !desired.sets.contains_key(name) {
            after.push(format!("destroy {name}"));
            delta.sets.insert(name.clone());
        }
    }
    let empty = Table::default();
    let tables: BTreeSet<&String> = last.tables.keys().chain(desired.tables.keys()).collect();
    for table in tables {
        let old = last.tables.get(table).unwrap_or(&empty);
        let new = desired.tables.get(table).unwrap_or(&empty);
        let mut declare = Vec::new();
        let mut append = Vec::new();
        let mut delete = Vec::new();
        for (name, chain) in &new.chains {
            if old.chains.get(name) == Some(chain) {
                continue;
            }
            declare.push(format!(":{name} - [0:0]"));
            append.extend(
                render_chain(family, chain)
                    .into_iter()
                    .map(|rule| format!("-A {name} {}", rule.text)),
            );
            delta.chains.insert((table.clone(), name.clone()));
        }
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                // Emptied first, so that chains removed together may refer to each other.
                declare.push(format!(":{name} - [0:0]"));
                delete.push(format!("-X {name}"));
                delta.chains.insert((table.clone(), name.clone()));
            }
        }
        if declare.is_empty() {
            continue;
        }
        let mut lines = vec![format!("*{table}")];
        lines.extend(declare);
        lines.extend(append);
        lines.extend(delete);
        lines.push("COMMIT".into());
        delta.tables.push((table.clone(), lines.join("\n") + "\n"));
    }
    delta.sets_before = script(before);
    delta.sets_after = script(after);
    Some(delta)
}

fn member_changes(lines: &mut Vec<String>, name: &str, old: &IpSet, new: &IpSet) {
    let (old, new) = (kernel_members(old), kernel_members(new));
    lines.extend(
        old.difference(&new)
            .map(|m| format!("del {name} {}", member_text(m))),
    );
    lines.extend(
        new.difference(&old)
            .map(|m| format!("add {name} {}", member_text(m))),
    );
}

fn script(lines: Vec<String>) -> String {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// Makes `last` equal to `desired` by copying only what `delta` says changed.
pub fn advance(last: &mut Dataplane, desired: &Dataplane, delta: &Delta) {
    for (table, name) in &delta.chains {
        let chain = desired.tables.get(table).and_then(|t| t.chains.get(name));
        let target = last.tables.entry(table.clone()).or_default();
        match chain {
            Some(chain) => {
                target.chains.insert(name.clone(), chain.clone());
            }
            None => {
                target.chains.remove(name);
            }
        }
    }
    last.tables
        .retain(|table, t| !t.chains.is_empty() || desired.tables.contains_key(table));
    for name in &delta.sets {
        match desired.sets.get(name) {
            Some(set) => {
                last.sets.insert(name.clone(), set.clone());
            }
            None => {
                last.sets.remove(name);
            }
        }
    }
}
