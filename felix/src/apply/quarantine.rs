//! Chains the kernel refuses, set aside so that everything else is still programmed.
//!
//! Validation keeps what no kernel would take out of the dataplane, but something can still
//! slip through (an object no validation saw, a kernel older than the rules assume). When
//! `iptables-restore` names the line it refused, the chain of that line is *quarantined*: its
//! rules are replaced by one DROP — the policy, profile or workload endpoint it belongs to
//! denies everything (fail closed) — and the apply is tried again. Only those chains are ever
//! quarantined; a refused line of Twill's fixed, dispatch or host endpoint chains (a DROP
//! there would cut the node off) stays an error.
//!
//! A quarantined chain stays so, without another refused attempt per apply, for as long as
//! its desired rules are the ones the kernel refused; when they change, they are tried again.

use std::collections::BTreeMap;

use crate::ir::{Dataplane, Family, Rule, Target};

/// Prefixes of the chains that may be quarantined: policy, profile and workload endpoint
/// chains.
const QUARANTINABLE: [&str; 6] = [
    "twl-pi-", "twl-po-", "twl-pri-", "twl-pro-", "twl-tw-", "twl-fw-",
];

/// A chain set aside, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The chain.
    pub chain: String,
    /// What the kernel said.
    pub reason: String,
}

/// The chains set aside per family: chain → (the rules refused, why).
#[derive(Debug, Default)]
pub(super) struct Quarantine {
    chains: BTreeMap<(Family, String), (Vec<Rule>, String)>,
}

/// The chain a refused script line belongs to (`-A C …`, `-I C …`, `:C …`).
pub(super) fn chain_of_line(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    match words.next()? {
        "-A" | "-I" | "-R" => words.next(),
        declaration => declaration.strip_prefix(':'),
    }
}

fn quarantinable(chain: &str) -> bool {
    QUARANTINABLE.iter().any(|prefix| chain.starts_with(prefix))
}

/// The chains that could be set aside: quarantinable ones of `dataplane` not aside already.
pub(super) fn candidates(dataplane: &Dataplane, aside: &[Quarantined]) -> Vec<String> {
    let mut names: Vec<String> = dataplane
        .tables
        .values()
        .flat_map(|t| t.chains.keys())
        .filter(|c| quarantinable(c) && !aside.iter().any(|q| q.chain == **c))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `dataplane` with `chains` replaced by their stand-ins.
pub(super) fn with_stand_ins(dataplane: &Dataplane, chains: &[String]) -> Dataplane {
    let mut replaced = dataplane.clone();
    for table in replaced.tables.values_mut() {
        for chain in chains {
            if let Some(found) = table.chains.get_mut(chain) {
                found.rules = stand_in();
            }
        }
    }
    replaced
}

fn stand_in() -> Vec<Rule> {
    vec![Rule {
        matches: Vec::new(),
        target: Target::Drop,
        comment: "quarantined: the kernel refused this chain's rules; fails closed".into(),
    }]
}

impl Quarantine {
    /// Sets aside `chain` (refused with `reason`), if it is one that may be; returns whether
    /// it did.
    pub(super) fn add(
        &mut self,
        family: Family,
        dataplane: &Dataplane,
        chain: &str,
        reason: &str,
    ) -> bool {
        if !quarantinable(chain) {
            return false;
        }
        let Some(rules) = dataplane
            .tables
            .values()
            .find_map(|t| t.chains.get(chain))
            .map(|c| c.rules.clone())
        else {
            return false;
        };
        self.chains
            .insert((family, chain.to_string()), (rules, reason.to_string()));
        true
    }

    /// `dataplane` with this family's quarantined chains replaced by their stand-ins
    /// (forgetting those whose desired rules changed since), and the chains set aside.
    pub(super) fn apply_to(
        &mut self,
        family: Family,
        dataplane: &Dataplane,
    ) -> (Option<Dataplane>, Vec<Quarantined>) {
        self.chains.retain(|(f, chain), (refused, _)| {
            *f != family
                || dataplane
                    .tables
                    .values()
                    .any(|t| t.chains.get(chain).is_some_and(|c| c.rules == *refused))
        });
        let mine: Vec<(String, String)> = self
            .chains
            .iter()
            .filter(|((f, _), _)| *f == family)
            .map(|((_, chain), (_, reason))| (chain.clone(), reason.clone()))
            .collect();
        if mine.is_empty() {
            return (None, Vec::new());
        }
        let chains: Vec<String> = mine.iter().map(|(chain, _)| chain.clone()).collect();
        let replaced = with_stand_ins(dataplane, &chains);
        let report = mine
            .into_iter()
            .map(|(chain, reason)| Quarantined { chain, reason })
            .collect();
        (Some(replaced), report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Chain, Table};

    #[test]
    fn refused_lines_name_their_chain() {
        assert_eq!(chain_of_line("-A twl-pi-abc -j DROP"), Some("twl-pi-abc"));
        assert_eq!(chain_of_line(":twl-tw-x - [0:0]"), Some("twl-tw-x"));
        assert_eq!(chain_of_line("COMMIT"), None);
    }

    #[test]
    fn only_policy_profile_and_workload_chains_are_set_aside_and_only_while_unchanged() {
        let chain = |name: &str, comment: &str| Chain {
            name: name.into(),
            rules: vec![Rule {
                matches: Vec::new(),
                target: Target::Return,
                comment: comment.into(),
            }],
        };
        let mut dataplane = Dataplane::default();
        let table: &mut Table = dataplane.tables.entry("filter".into()).or_default();
        for name in ["twl-pi-bad", "twl-from-hep-dispatch"] {
            table.chains.insert(name.into(), chain(name, "v1"));
        }
        let mut quarantine = Quarantine::default();
        assert!(!quarantine.add(Family::V4, &dataplane, "twl-from-hep-dispatch", "no"));
        assert!(quarantine.add(Family::V4, &dataplane, "twl-pi-bad", "refused"));
        let (replaced, report) = quarantine.apply_to(Family::V4, &dataplane);
        let replaced = replaced.expect("a chain is set aside");
        assert_eq!(
            replaced.tables["filter"].chains["twl-pi-bad"].rules,
            stand_in()
        );
        assert_eq!(
            replaced.tables["filter"].chains["twl-from-hep-dispatch"],
            dataplane.tables["filter"].chains["twl-from-hep-dispatch"]
        );
        assert_eq!(report[0].chain, "twl-pi-bad");
        assert_eq!(quarantine.apply_to(Family::V6, &dataplane).1, []);
        // New rules for the chain: tried again.
        let table = dataplane.tables.get_mut("filter").unwrap();
        table
            .chains
            .insert("twl-pi-bad".into(), chain("twl-pi-bad", "v2"));
        assert_eq!(
            quarantine.apply_to(Family::V4, &dataplane),
            (None, Vec::new())
        );
    }
}
