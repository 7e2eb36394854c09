//! IP sets: desired sets against an `ipset save` dump.
//!
//! `before` (for `ipset restore -exist`, run before iptables so rules find their sets), in
//! set name order:
//! - a missing set: `create` and its members;
//! - a set of another type or family: `destroy` and create again (the kernel swaps only sets
//!   of one type and family, and destroys only unreferenced sets: the caller first runs
//!   [`plan_unreference`](super::plan_unreference) for the sets in [`SetPlan::recreate`]);
//! - a set of the right type but another size: built under a temporary name, `swap`ped in
//!   (rules keep referring to the name) and the old one destroyed;
//! - otherwise `del` of the members not desired (as printed) and `add` of the missing ones.
//!
//! `after` (run once iptables no longer refers to them): `destroy` of Twill's sets of this
//! family that are not desired. Sets of the other family and foreign sets are never named.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::save::owned;
use crate::ir::{Family, IpSet, Member, SetKind};
use crate::render::ipset::{
    create_line, kernel_members, member_text, protocol_number, temp_name, MAX_ELEM,
};

/// The ipset scripts of one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetPlan {
    /// Run before iptables-restore, with `ipset restore -exist`; empty when nothing to do.
    pub before: String,
    /// Run after iptables-restore, with `ipset restore -exist`; empty when nothing to do.
    pub after: String,
    /// Sets that change type or family: Twill's rules must stop referring to them (see
    /// [`plan_unreference`](super::plan_unreference)) before `before` runs.
    pub recreate: BTreeSet<String>,
}

impl SetPlan {
    /// Whether the sets are already as desired.
    pub fn is_empty(&self) -> bool {
        self.before.is_empty() && self.after.is_empty()
    }
}

/// One set of a dump.
#[derive(Debug, Default)]
struct SavedSet {
    kind: Option<SetKind>,
    family: Option<Family>,
    maxelem: Option<u32>,
    /// Members by value, with their text as printed.
    members: BTreeMap<Member, String>,
    /// Members this code does not understand, as printed (always deleted).
    unknown: Vec<String>,
}

/// The scripts that make the kernel's sets of `family` (as dumped by `ipset save`) the
/// `desired` ones.
pub fn plan_sets(
    family: Family,
    desired: &BTreeMap<String, IpSet>,
    observed_save: &str,
) -> SetPlan {
    let observed = parse(observed_save);
    let mut plan = SetPlan::default();
    let mut before = Vec::new();
    let mut temps = BTreeSet::new();
    for (name, set) in desired {
        let want = kernel_members(set);
        let Some(saved) = observed.get(name) else {
            create(&mut before, name, set, &want);
            continue;
        };
        if saved.kind != Some(set.kind) || saved.family != Some(set.family) {
            plan.recreate.insert(name.clone());
            before.push(format!("destroy {name}"));
            create(&mut before, name, set, &want);
        } else if saved.maxelem != Some(MAX_ELEM) {
            let temp = temp_name(name);
            if observed.contains_key(&temp) {
                before.push(format!("destroy {temp}"));
            }
            create(&mut before, &temp, set, &want);
            before.push(format!("swap {temp} {name}"));
            before.push(format!("destroy {temp}"));
            temps.insert(temp);
        } else {
            update(&mut before, name, saved, &want);
        }
    }
    plan.before = script(before);
    let after = observed
        .iter()
        .filter(|(name, saved)| {
            !desired.contains_key(*name)
                && !temps.contains(*name)
                && saved.family.unwrap_or(Family::V4) == family
        })
        .map(|(name, _)| format!("destroy {name}"))
        .collect();
    plan.after = script(after);
    plan
}

fn create(lines: &mut Vec<String>, name: &str, set: &IpSet, members: &BTreeSet<Member>) {
    lines.push(create_line(name, set.kind, set.family));
    lines.extend(
        members
            .iter()
            .map(|m| format!("add {name} {}", member_text(m))),
    );
}

fn update(lines: &mut Vec<String>, name: &str, saved: &SavedSet, want: &BTreeSet<Member>) {
    let extra = saved
        .members
        .iter()
        .filter(|(member, _)| !want.contains(*member))
        .map(|(_, text)| text)
        .chain(&saved.unknown);
    lines.extend(extra.map(|text| format!("del {name} {text}")));
    let missing = want.iter().filter(|m| !saved.members.contains_key(*m));
    lines.extend(missing.map(|m| format!("add {name} {}", member_text(m))));
}

fn script(lines: Vec<String>) -> String {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// Twill's sets of an `ipset save` dump.
fn parse(save: &str) -> BTreeMap<String, SavedSet> {
    let mut sets: BTreeMap<String, SavedSet> = BTreeMap::new();
    for line in save.lines() {
        let mut words = line.split_whitespace();
        let (Some(verb), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        if !owned(name) {
            continue;
        }
        let rest: Vec<&str> = words.collect();
        match verb {
            "create" => {
                sets.insert(name.to_owned(), saved_set(&rest));
            }
            "add" => {
                let (Some(set), Some(text)) = (sets.get_mut(name), rest.first()) else {
                    continue;
                };
                match set.kind.and_then(|kind| parse_member(kind, text)) {
                    Some(member) => {
                        set.members.insert(member, (*text).to_owned());
                    }
                    None => set.unknown.push((*text).to_owned()),
                }
            }
            _ => {}
        }
    }
    sets
}

/// A set from the words after `create NAME`: its type, then options.
fn saved_set(words: &[&str]) -> SavedSet {
    let option = |key: &str| {
        words
            .windows(2)
            .find(|pair| pair[0] == key)
            .map(|pair| pair[1])
    };
    SavedSet {
        kind: match words.first() {
            Some(&"hash:net") => Some(SetKind::Net),
            Some(&"hash:ip,port") => Some(SetKind::IpPort),
            Some(&"hash:net,iface") => Some(SetKind::NetIface),
            _ => None,
        },
        family: match option("family") {
            Some("inet") => Some(Family::V4),
            Some("inet6") => Some(Family::V6),
            _ => None,
        },
        maxelem: option("maxelem").and_then(|v| v.parse().ok()),
        ..SavedSet::default()
    }
}

/// A member as `ipset save` prints it: `10.0.0.5`, `10.1.0.0/16`, `10.0.0.5,tcp:80`,
/// `10.0.0.5,twabc`.
fn parse_member(kind: SetKind, text: &str) -> Option<Member> {
    let net = |text: &str| match text.parse::<IpNet>() {
        Ok(net) => Some(net),
        Err(_) => Some(IpNet::from(text.parse::<std::net::IpAddr>().ok()?)),
    };
    match kind {
        SetKind::Net => Some(Member::Net(net(text)?)),
        SetKind::NetIface => {
            let (address, interface) = text.rsplit_once(',')?;
            Some(Member::NetIface(net(address)?, interface.to_owned()))
        }
        SetKind::IpPort => {
            let (addr, protocol_port) = text.rsplit_once(',')?;
            let (protocol, port) = protocol_port.split_once(':')?;
            let protocol = protocol_number(protocol).or_else(|| protocol.parse().ok())?;
            Some(Member::IpPort(
                addr.parse().ok()?,
                protocol,
                port.parse().ok()?,
            ))
        }
    }
}
