//! Reading `iptables-save` text, as far as Twill cares: the chains of one table, and for each
//! rule its hash comment, its jump target and the sets it matches.

use std::collections::{BTreeMap, BTreeSet};

use super::OWNED_PREFIX;
use crate::render::iptables::HASH_PREFIX;

/// One table of a dump.
#[derive(Debug, Default)]
pub(super) struct SavedTable {
    /// Every chain, built-in, foreign or Twill's, by name.
    pub chains: BTreeMap<String, SavedChain>,
}

/// One chain of a dump.
#[derive(Debug, Default)]
pub(super) struct SavedChain {
    /// How many rules it has.
    pub len: usize,
    /// The rules Twill may care about: all rules of `twl-*` chains; elsewhere the rules with
    /// a Twill hash or a jump into a `twl-*` chain.
    pub rules: Vec<SavedRule>,
}

/// One rule of a dump.
#[derive(Debug)]
pub(super) struct SavedRule {
    /// Its position in the chain, from 0.
    pub index: usize,
    /// The text after `-A CHAIN `, as printed.
    pub spec: String,
    /// The hash of its `twl:` comment.
    pub hash: Option<String>,
    /// The chain it jumps or goes to.
    pub target: Option<String>,
    /// The sets it matches.
    pub sets: BTreeSet<String>,
}

/// Whether a chain or set name is Twill's.
pub(super) fn owned(name: &str) -> bool {
    name.starts_with(OWNED_PREFIX)
}

impl SavedTable {
    /// The section `*table` … `COMMIT` of `save` (empty when absent).
    pub fn parse(save: &str, table: &str) -> SavedTable {
        let mut out = SavedTable::default();
        let mut inside = false;
        for line in save.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                inside = name == table;
            } else if line == "COMMIT" {
                inside = false;
            } else if !inside || line.starts_with('#') {
                continue;
            } else if let Some(declaration) = line.strip_prefix(':') {
                let name = declaration.split_whitespace().next().unwrap_or_default();
                out.chains.entry(name.to_owned()).or_default();
            } else if let Some(rest) = line.strip_prefix("-A ") {
                out.add_rule(rest);
            }
        }
        out
    }

    fn add_rule(&mut self, rest: &str) {
        let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
        let entry = self.chains.entry(chain.to_owned()).or_default();
        let index = entry.len;
        entry.len += 1;
        let rule = SavedRule::parse(index, spec);
        let ours = owned(chain) || rule.hash.is_some() || rule.target.as_deref().is_some_and(owned);
        if ours {
            entry.rules.push(rule);
        }
    }

    /// The names of the tables of `save` that hold a Twill chain or hashed rule.
    pub fn tables_with_twill_objects(save: &str) -> BTreeSet<String> {
        let mut tables = BTreeSet::new();
        let mut current = None;
        for line in save.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                current = Some(name.to_owned());
            } else if line.starts_with(&format!(":{OWNED_PREFIX}"))
                || (line.starts_with("-A ") && line.contains(HASH_PREFIX))
            {
                tables.extend(current.clone());
            }
        }
        tables
    }
}

impl SavedRule {
    fn parse(index: usize, spec: &str) -> SavedRule {
        let tokens = tokens(spec);
        let mut rule = SavedRule {
            index,
            spec: spec.to_owned(),
            hash: None,
            target: None,
            sets: BTreeSet::new(),
        };
        for pair in tokens.windows(2) {
            let (flag, value) = (pair[0].as_str(), &pair[1]);
            match flag {
                "--comment" if rule.hash.is_none() => rule.hash = hash_of(value),
                "-j" | "--jump" | "-g" | "--goto" => rule.target = Some(value.clone()),
                "--match-set" => {
                    rule.sets.insert(value.clone());
                }
                _ => {}
            }
        }
        rule
    }
}

/// The hash of a Twill comment (`twl:HASH why`).
fn hash_of(comment: &str) -> Option<String> {
    let rest = comment.strip_prefix(HASH_PREFIX)?;
    Some(rest.split(' ').next().unwrap_or_default().to_owned())
}

/// Split a rule as iptables-restore does: on whitespace, with `"…"` quoting and backslash
/// escapes (iptables-save writes `\'`, `\"` and `\\` inside quotes).
pub(super) fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut started = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.extend(chars.next());
                started = true;
            }
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(current);
    }
    out
}
