//! natOutgoing: traffic from a pool with `natOutgoing: true` to an address outside every
//! pool leaves masqueraded as the node, as Calico's felix does it: two IP sets (every pool;
//! the masquerading pools), one rule in a chain of the nat table, hooked into POSTROUTING.

use ipnet::IpNet;

use crate::ir::{
    Chain, Dataplane, Family, Hook, IpSet, Match, Member, Rule, SetKind, Side, Target,
};

/// The nat chain.
pub const NAT_OUTGOING_CHAIN: &str = "twl-nat-outgoing";

/// A pool as natOutgoing sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatPool {
    /// Its CIDR.
    pub cidr: IpNet,
    /// `natOutgoing: true` (a disabled pool's workloads too).
    pub masquerade: bool,
}

fn set_names(family: Family) -> (String, String) {
    let tag = match family {
        Family::V4 => '4',
        Family::V6 => '6',
    };
    (
        format!("twl-all-pools-{tag}"),
        format!("twl-masq-pools-{tag}"),
    )
}

/// Puts natOutgoing's objects into `dataplane` (or takes them out when no pool of the family
/// masquerades).
pub fn apply(dataplane: &mut Dataplane, family: Family, pools: &[NatPool]) {
    let (all_name, masq_name) = set_names(family);
    let of_family: Vec<&NatPool> = pools
        .iter()
        .filter(|p| p.cidr.addr().is_ipv4() == (family == Family::V4))
        .collect();
    let hook = Hook {
        table: "nat".into(),
        chain: "POSTROUTING".into(),
        target: NAT_OUTGOING_CHAIN.into(),
    };
    if !of_family.iter().any(|p| p.masquerade) {
        dataplane.sets.remove(&all_name);
        dataplane.sets.remove(&masq_name);
        dataplane.tables.remove("nat");
        dataplane.hooks.retain(|h| *h != hook);
        return;
    }
    let set = |name: &str, members: Vec<&NatPool>, comment: &str| IpSet {
        name: name.to_string(),
        kind: SetKind::Net,
        family,
        members: members.iter().map(|p| Member::Net(p.cidr)).collect(),
        comment: comment.to_string(),
    };
    dataplane.sets.insert(
        all_name.clone(),
        set(&all_name, of_family.clone(), "every IP pool"),
    );
    dataplane.sets.insert(
        masq_name.clone(),
        set(
            &masq_name,
            of_family.iter().copied().filter(|p| p.masquerade).collect(),
            "IP pools with natOutgoing",
        ),
    );
    let rule = Rule {
        matches: vec![
            Match::Set {
                side: Side::Src,
                not: false,
                set: masq_name,
            },
            Match::Set {
                side: Side::Dst,
                not: true,
                set: all_name,
            },
        ],
        target: Target::Masquerade,
        comment: "natOutgoing: from a masquerading pool to outside every pool".into(),
    };
    let table = dataplane.tables.entry("nat".into()).or_default();
    table.chains.insert(
        NAT_OUTGOING_CHAIN.into(),
        Chain {
            name: NAT_OUTGOING_CHAIN.into(),
            rules: vec![rule],
        },
    );
    if !dataplane.hooks.contains(&hook) {
        dataplane.hooks.push(hook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, masquerade: bool) -> NatPool {
        NatPool {
            cidr: cidr.parse().unwrap(),
            masquerade,
        }
    }

    #[test]
    fn masquerading_pools_get_a_rule_the_sets_and_a_hook_and_lose_them_again() {
        let mut dataplane = Dataplane::default();
        let pools = [
            pool("10.90.0.0/16", true),
            pool("10.91.0.0/16", false),
            pool("fd00:90::/48", false),
        ];
        apply(&mut dataplane, Family::V4, &pools);
        let all = &dataplane.sets["twl-all-pools-4"];
        assert_eq!(all.members.len(), 2);
        let masq = &dataplane.sets["twl-masq-pools-4"];
        assert_eq!(
            masq.members.iter().collect::<Vec<_>>(),
            [&Member::Net("10.90.0.0/16".parse().unwrap())]
        );
        let chain = &dataplane.tables["nat"].chains[NAT_OUTGOING_CHAIN];
        assert_eq!(chain.rules.len(), 1);
        assert_eq!(chain.rules[0].target, Target::Masquerade);
        assert_eq!(
            dataplane.hooks.iter().filter(|h| h.table == "nat").count(),
            1
        );
        apply(&mut dataplane, Family::V4, &pools);
        assert_eq!(
            dataplane.hooks.iter().filter(|h| h.table == "nat").count(),
            1,
            "once"
        );
        // IPv6: no masquerading pool of that family.
        let mut v6 = Dataplane::default();
        apply(&mut v6, Family::V6, &pools);
        assert!(v6.sets.is_empty() && v6.tables.is_empty() && v6.hooks.is_empty());
        // natOutgoing turned off: everything goes.
        apply(&mut dataplane, Family::V4, &[pool("10.90.0.0/16", false)]);
        assert!(dataplane.sets.is_empty() && !dataplane.tables.contains_key("nat"));
        assert!(dataplane.hooks.is_empty());
    }
}
