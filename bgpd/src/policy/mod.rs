//! Import and export filters, pure: a [`Route`] (prefix, attributes, our AS on the session)
//! → accept (possibly changed, perhaps with a new next hop) or reject. A filter is an ordered list of rules; the first rule whose match holds decides.
//! When none holds, the filter's default decides (accept, as Calico's BGPFilter does).

mod aspath;
mod community;

use std::net::IpAddr;

use ipnet::IpNet;

pub use self::aspath::{origin_as, AsPathRegex};
pub use self::community::{
    parse_extended_community, CommunityPattern, DeletePattern, LargeCommunityPattern,
};
use crate::wire::attribute::PathAttributes;

/// A prefix-list entry: `prefix` with the length range `ge..=le` (both default to the
/// prefix's own length, as in prefix lists everywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatch {
    /// The covering prefix.
    pub prefix: IpNet,
    /// Shortest length matched.
    pub ge: Option<u8>,
    /// Longest length matched.
    pub le: Option<u8>,
}

impl PrefixMatch {
    /// Whether `candidate` falls in this entry.
    pub fn matches(&self, candidate: &IpNet) -> bool {
        let own = self.prefix.prefix_len();
        let low = self.ge.unwrap_or(own);
        let high = self.le.unwrap_or(if self.ge.is_some() {
            self.prefix.max_prefix_len()
        } else {
            own
        });
        self.prefix.contains(candidate) && (low..=high).contains(&candidate.prefix_len())
    }
}

impl std::str::FromStr for PrefixMatch {
    type Err = String;

    /// `10.0.0.0/8`, `10.0.0.0/8 le 24`, `10.0.0.0/8 ge 16 le 24`.
    fn from_str(text: &str) -> Result<PrefixMatch, String> {
        let mut words = text.split_whitespace();
        let prefix: IpNet = words
            .next()
            .ok_or("an empty prefix match")?
            .parse()
            .map_err(|_| format!("{text:?}: expected PREFIX [ge N] [le N]"))?;
        let (mut ge, mut le) = (None, None);
        while let Some(word) = words.next() {
            let value: u8 = words
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v <= prefix.max_prefix_len() && *v >= prefix.prefix_len())
                .ok_or_else(|| {
                    format!(
                        "{text:?}: {word} needs a length from {} to {}",
                        prefix.prefix_len(),
                        prefix.max_prefix_len()
                    )
                })?;
            match word {
                "ge" => ge = Some(value),
                "le" => le = Some(value),
                _ => return Err(format!("{text:?}: expected ge or le, found {word:?}")),
            }
        }
        if let (Some(ge), Some(le)) = (ge, le) {
            if ge > le {
                return Err(format!("{text:?}: ge {ge} is above le {le}"));
            }
        }
        Ok(PrefixMatch {
            prefix: prefix.trunc(),
            ge,
            le,
        })
    }
}

/// What a rule looks at; every criterion given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// The prefix falls in one of these (any).
    pub prefixes: Vec<PrefixMatch>,
    /// The prefix falls in none of these (Calico's NotEqual / NotIn).
    pub not_prefixes: Vec<PrefixMatch>,
    /// The route was learned from a BGP peer (`true`) or is our own (`false`): Calico's
    /// `source: RemotePeers`.
    pub learned: Option<bool>,
    /// The path's LOCAL_PREF is this (Calico's `priority`, 2147483647 − priority).
    pub local_pref: Option<u32>,
    /// The path carries one of these communities (any).
    pub communities: Vec<u32>,
    /// The path carries one of these large communities (any).
    pub large_communities: Vec<(u32, u32, u32)>,
    /// The path carries one of these extended communities (any; RFC 4360).
    pub extended_communities: Vec<[u8; 8]>,
    /// The AS path is at most this long.
    pub as_path_max_len: Option<usize>,
    /// The AS path is at least this long.
    pub as_path_min_len: Option<usize>,
    /// The AS path starts with these ASes (nearest first).
    pub as_path_prefix: Vec<u32>,
    /// The AS path matches one of these regular expressions (any), FRR-style.
    pub as_path_regex: Vec<AsPathRegex>,
    /// The route was originated by one of these ASes (any): the last AS of the path, as
    /// BIRD's `bgp_path.last` and RFC 6811 §2 (a path ending in an AS_SET has none).
    pub origin_as: Vec<u32>,
}

/// Whether `wanted` is empty (no criterion) or `holds` for one of its entries.
fn any_of<T>(wanted: &[T], holds: impl Fn(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(holds)
}

impl Match {
    fn holds(&self, route: &Route<'_>) -> bool {
        let attributes = &*route.attributes;
        let path = attributes.as_path.as_ref();
        let path_len = path.map_or(0, |p| p.len());
        any_of(&self.prefixes, |m| m.matches(&route.prefix))
            && !self.not_prefixes.iter().any(|m| m.matches(&route.prefix))
            && self.learned.is_none_or(|learned| learned == route.learned)
            && self
                .local_pref
                .is_none_or(|wanted| attributes.local_pref == Some(wanted))
            && any_of(&self.communities, |c| attributes.communities.contains(c))
            && any_of(&self.large_communities, |c| {
                attributes.large_communities.contains(c)
            })
            && any_of(&self.extended_communities, |c| {
                attributes.extended_communities.contains(c)
            })
            && self.as_path_max_len.is_none_or(|max| path_len <= max)
            && self.as_path_min_len.is_none_or(|min| path_len >= min)
            && (self.as_path_prefix.is_empty() || {
                let asns: Vec<u32> = path.map(|p| p.asns().collect()).unwrap_or_default();
                asns.starts_with(&self.as_path_prefix)
            })
            && any_of(&self.as_path_regex, |r| r.matches(path))
            && (self.origin_as.is_empty() || {
                let origin = aspath::origin_as(path, route.local_as);
                origin.is_some_and(|o| self.origin_as.contains(&o))
            })
    }
}

/// A next hop set by a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetNextHop {
    /// This address, for routes of its family (an IPv4 address for IPv4 routes).
    Address(IpAddr),
    /// `self`: on export our address on the session (FRR's `next-hop-self`, BIRD's
    /// `next hop self`); on import the neighbour's own address (FRR's `set ip next-hop
    /// peer-address`).
    Own,
}

impl SetNextHop {
    /// The address for a route of `prefix`'s family, if this one is of that family (`self`
    /// always is).
    pub fn for_prefix(self, prefix: &IpNet) -> Option<Option<IpAddr>> {
        match self {
            SetNextHop::Own => Some(None),
            SetNextHop::Address(address) => {
                (address.is_ipv4() == prefix.addr().is_ipv4()).then_some(Some(address))
            }
        }
    }
}

/// AS path prepending by count (FRR's `set as-path prepend`, BIRD's `bgp_path.prepend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrependTimes {
    /// The AS to prepend; `None` is our AS on the session.
    pub asn: Option<u32>,
    /// How many times.
    pub times: u8,
}

/// What an accepting rule changes. Deletions come before additions, so a rule can replace
/// a peer's communities with its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modify {
    /// Standard and large communities to delete (exact or with `*` parts).
    pub delete_communities: Vec<DeletePattern>,
    /// Communities to add.
    pub add_communities: Vec<u32>,
    /// Large communities to add.
    pub add_large_communities: Vec<(u32, u32, u32)>,
    /// LOCAL_PREF to set.
    pub local_pref: Option<u32>,
    /// LOCAL_PREF to set when the route has none.
    pub default_local_pref: Option<u32>,
    /// MED to set.
    pub med: Option<u32>,
    /// MED to set when the route has none.
    pub default_med: Option<u32>,
    /// ASes to put in front of the AS path (the first is nearest).
    pub prepend: Vec<u32>,
    /// An AS to put in front of the AS path, repeatedly (in front of `prepend`).
    pub prepend_times: Option<PrependTimes>,
    /// The next hop to set.
    pub next_hop: Option<SetNextHop>,
}

impl Modify {
    fn apply(&self, route: &mut Route<'_>) {
        let attributes = &mut *route.attributes;
        for pattern in &self.delete_communities {
            match pattern {
                DeletePattern::Standard(p) => attributes.communities.retain(|c| !p.matches(*c)),
                DeletePattern::Large(p) => {
                    let kept = attributes.large_communities.iter().copied();
                    attributes.large_communities = kept.filter(|c| !p.matches(*c)).collect();
                }
            }
        }
        for community in &self.add_communities {
            if !attributes.communities.contains(community) {
                attributes.communities.push(*community);
            }
        }
        let large = &attributes.large_communities;
        if self
            .add_large_communities
            .iter()
            .any(|c| !large.contains(c))
        {
            let mut large = std::mem::take(&mut attributes.large_communities).into_vec();
            for community in &self.add_large_communities {
                if !large.contains(community) {
                    large.push(*community);
                }
            }
            attributes.large_communities = large.into_boxed_slice();
        }
        match (self.local_pref, self.default_local_pref) {
            (Some(value), _) => attributes.local_pref = Some(value),
            (None, Some(value)) => _ = attributes.local_pref.get_or_insert(value),
            (None, None) => {}
        }
        match (self.med, self.default_med) {
            (Some(value), _) => attributes.med = Some(value),
            (None, Some(value)) => _ = attributes.med.get_or_insert(value),
            (None, None) => {}
        }
        let repeated = self.prepend_times.map_or(0, |p| p.times);
        if !self.prepend.is_empty() || repeated > 0 {
            let path = attributes.as_path.get_or_insert_with(Default::default);
            for asn in self.prepend.iter().rev() {
                path.prepend(*asn);
            }
            if let Some(PrependTimes { asn, times }) = self.prepend_times {
                for _ in 0..times {
                    path.prepend(asn.unwrap_or(route.local_as));
                }
            }
        }
        if self.next_hop.is_some() {
            route.next_hop = self.next_hop;
        }
    }
}

/// One rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// When it applies.
    pub matches: Match,
    /// Accept (after `modify`) or reject.
    pub accept: bool,
    /// Changes made on accept.
    pub modify: Modify,
}

/// An ordered list of rules with a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
    /// What happens when no rule matches.
    pub default_accept: bool,
}

impl Default for Filter {
    /// Accept everything unchanged.
    fn default() -> Filter {
        Filter {
            rules: Vec::new(),
            default_accept: true,
        }
    }
}

/// A route as filters see and change it: the prefix, its attributes, and what they need to
/// know of the session.
#[derive(Debug)]
pub struct Route<'a> {
    /// The prefix.
    pub prefix: IpNet,
    /// The attributes, changed in place by accepting rules.
    pub attributes: &'a mut PathAttributes,
    /// Our AS on the session (the neighbour's `local_as` when it has one): the origin AS of
    /// an empty path, and what `prepend_times` repeats unless told another AS.
    pub local_as: u32,
    /// The next hop a rule set, if any: the caller applies it.
    pub next_hop: Option<SetNextHop>,
    /// Learned from a BGP peer (every imported route; exported ones unless our own).
    pub learned: bool,
}

impl<'a> Route<'a> {
    /// A route seen on a session where our AS is `local_as`.
    pub fn new(prefix: IpNet, attributes: &'a mut PathAttributes, local_as: u32) -> Route<'a> {
        Route {
            prefix,
            attributes,
            local_as,
            next_hop: None,
            learned: true,
        }
    }
}

impl Filter {
    /// Runs the filter: `true` to accept, with the route possibly changed.
    pub fn apply(&self, route: &mut Route<'_>) -> bool {
        match self.rules.iter().find(|rule| rule.matches.holds(route)) {
            Some(rule) if rule.accept => {
                rule.modify.apply(route);
                true
            }
            Some(_) => false,
            None => self.default_accept,
        }
    }

    /// Runs filters in order; each must accept.
    pub fn apply_all(filters: &[Filter], route: &mut Route<'_>) -> bool {
        filters.iter().all(|filter| filter.apply(route))
    }
}

#[cfg(test)]
mod tests;
