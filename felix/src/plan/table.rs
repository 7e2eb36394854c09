//! One table: desired chains and hooks against an `iptables-save` dump.
//!
//! The script, for `iptables-restore --noflush` (one atomic COMMIT):
//! 1. `:twl-X - [0:0]` for every chain to create, rewrite or empty. Under `--noflush` a
//!    declared chain that exists is flushed (checked with iptables-nft and iptables-legacy
//!    1.8.9), so no `-F` is needed.
//! 2. `-A` lines of the chains written.
//! 3. Hooks: `-D CHAIN <as printed>` for each of Twill's rules in a built-in chain whose
//!    hooks are out of place, then `-I CHAIN n` for the desired ones, so they end up exactly
//!    once, first, in order.
//! 4. `-X twl-X` for Twill's chains no longer desired, which by now nothing of Twill's
//!    references. A chain that a foreign rule still jumps to is emptied but kept.

use std::collections::{BTreeMap, BTreeSet};

use super::save::{owned, SavedChain, SavedTable};
use crate::ir::{Family, Hook, Table};
use crate::render::iptables::{render_chain, render_hook, RenderedRule};

/// The pieces of a restore script, in the order they are written.
#[derive(Debug, Default)]
struct Script {
    /// Chains declared (created or flushed).
    declare: BTreeSet<String>,
    /// `-A` lines.
    append: Vec<String>,
    /// `-D` lines of misplaced hooks.
    delete_rules: Vec<String>,
    /// `-I` lines of hooks.
    insert: Vec<String>,
    /// Chains to delete.
    delete_chains: BTreeSet<String>,
}

impl Script {
    fn is_empty(&self) -> bool {
        self.declare.is_empty()
            && self.append.is_empty()
            && self.delete_rules.is_empty()
            && self.insert.is_empty()
            && self.delete_chains.is_empty()
    }

    fn into_text(self, table: &str) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut lines = vec![format!("*{table}")];
        lines.extend(self.declare.iter().map(|c| format!(":{c} - [0:0]")));
        lines.extend(self.append);
        lines.extend(self.delete_rules);
        lines.extend(self.insert);
        lines.extend(self.delete_chains.iter().map(|c| format!("-X {c}")));
        lines.push("COMMIT".to_owned());
        let mut text = lines.join("\n");
        text.push('\n');
        Some(text)
    }
}

/// The `iptables-restore --noflush` script that makes `table` of the kernel (as dumped by
/// `iptables-save`, the whole dump or `-t table`) hold exactly the `desired` chains and the
/// `hooks` of this table (hooks of other tables are ignored), touching nothing that is not
/// Twill's; `None` when it already does.
pub fn plan_table(
    family: Family,
    table: &str,
    desired: &Table,
    hooks: &[Hook],
    observed_save: &str,
) -> Option<String> {
    let observed = SavedTable::parse(observed_save, table);
    let mut script = Script::default();
    write_chains(family, desired, &observed, &mut script);
    remove_chains(desired, &observed, &mut script);
    write_hooks(family, table, hooks, &observed, &mut script);
    script.into_text(table)
}

/// Declare and fill every desired chain that is missing or whose hashes differ.
fn write_chains(family: Family, desired: &Table, observed: &SavedTable, script: &mut Script) {
    for (name, chain) in &desired.chains {
        let rendered = render_chain(family, chain);
        if observed
            .chains
            .get(name)
            .is_some_and(|saved| same_hashes(saved, &rendered))
        {
            continue;
        }
        script.declare.insert(name.clone());
        script.append.extend(
            rendered
                .iter()
                .map(|rule| format!("-A {name} {}", rule.text)),
        );
    }
}

/// Whether a saved chain holds exactly these rules (by hash, in order, nothing else: all the
/// rules of a `twl-*` chain are saved, hashed or not).
fn same_hashes(saved: &SavedChain, rendered: &[RenderedRule]) -> bool {
    saved.rules.len() == rendered.len()
        && saved
            .rules
            .iter()
            .zip(rendered)
            .all(|(rule, want)| rule.hash.as_deref() == Some(want.hash.as_str()))
}

/// Empty and delete Twill's chains that are not desired.
fn remove_chains(desired: &Table, observed: &SavedTable, script: &mut Script) {
    let foreign_targets = foreign_references(observed);
    for (name, saved) in &observed.chains {
        if !owned(name) || desired.chains.contains_key(name) {
            continue;
        }
        if saved.len > 0 {
            script.declare.insert(name.clone());
        }
        if !foreign_targets.contains(name) {
            script.delete_chains.insert(name.clone());
        }
    }
}

/// Twill chains that a rule which is not Twill's (no hash, outside `twl-*`) jumps to.
fn foreign_references(observed: &SavedTable) -> BTreeSet<String> {
    observed
        .chains
        .iter()
        .filter(|(name, _)| !owned(name))
        .flat_map(|(_, chain)| &chain.rules)
        .filter(|rule| rule.hash.is_none())
        .filter_map(|rule| rule.target.clone())
        .collect()
}

/// Make Twill's rules in each built-in chain exactly the desired hooks, first, in order.
fn write_hooks(
    family: Family,
    table: &str,
    hooks: &[Hook],
    observed: &SavedTable,
    script: &mut Script,
) {
    let mut wanted: BTreeMap<&str, Vec<RenderedRule>> = BTreeMap::new();
    for hook in hooks.iter().filter(|hook| hook.table == table) {
        let rendered = render_hook(family, hook);
        let list = wanted.entry(hook.chain.as_str()).or_default();
        if !list.contains(&rendered) {
            list.push(rendered);
        }
    }
    for (name, saved) in &observed.chains {
        let has_ours = saved.rules.iter().any(|rule| rule.hash.is_some());
        if !owned(name) && has_ours {
            wanted.entry(name.as_str()).or_default();
        }
    }
    for (chain, want) in wanted {
        let ours: Vec<_> = observed
            .chains
            .get(chain)
            .map(|saved| saved.rules.iter().filter(|r| r.hash.is_some()).collect())
            .unwrap_or_default();
        let in_place = ours.len() == want.len()
            && ours.iter().zip(&want).enumerate().all(|(i, (rule, hook))| {
                rule.index == i && rule.hash.as_deref() == Some(hook.hash.as_str())
            });
        if in_place {
            continue;
        }
        for rule in ours {
            script
                .delete_rules
                .push(format!("-D {chain} {}", rule.spec));
        }
        for (position, hook) in want.iter().enumerate() {
            let line = format!("-I {chain} {} {}", position + 1, hook.text);
            script.insert.push(line);
        }
    }
}

/// The script that empties every Twill chain of `table` whose rules match one of `sets`, so
/// the sets can be destroyed and created again with another type or family; `None` when no
/// chain does. The next [`plan_table`] (on a fresh dump) fills them again.
pub fn plan_unreference(
    table: &str,
    observed_save: &str,
    sets: &BTreeSet<String>,
) -> Option<String> {
    let observed = SavedTable::parse(observed_save, table);
    let mut script = Script::default();
    for (name, saved) in &observed.chains {
        let uses = saved.rules.iter().any(|rule| !rule.sets.is_disjoint(sets));
        if owned(name) && uses {
            script.declare.insert(name.clone());
        }
    }
    script.into_text(table)
}

/// The tables of an `iptables-save` dump that hold a Twill chain or rule: with the tables
/// of the desired dataplane, the ones to plan (so a table Twill stops using is cleaned).
pub fn tables_with_twill_objects(observed_save: &str) -> BTreeSet<String> {
    SavedTable::tables_with_twill_objects(observed_save)
}
