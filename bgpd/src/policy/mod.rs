//! Import and export filters, pure: `(prefix, attributes) → accept (possibly changed) or
//! reject`. A filter is an ordered list of rules; the first rule whose match holds decides.
//! When none holds, the filter's default decides (accept, as Calico's BGPFilter does).

use ipnet::IpNet;

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
    /// The path carries one of these communities (any).
    pub communities: Vec<u32>,
    /// The path carries one of these large communities (any).
    pub large_communities: Vec<(u32, u32, u32)>,
    /// The AS path is at most this long.
    pub as_path_max_len: Option<usize>,
    /// The AS path is at least this long.
    pub as_path_min_len: Option<usize>,
    /// The AS path starts with these ASes (nearest first).
    pub as_path_prefix: Vec<u32>,
}

impl Match {
    fn holds(&self, prefix: &IpNet, attributes: &PathAttributes) -> bool {
        let path_len = attributes.as_path.as_ref().map_or(0, |p| p.len());
        (self.prefixes.is_empty() || self.prefixes.iter().any(|m| m.matches(prefix)))
            && (self.communities.is_empty()
                || self
                    .communities
                    .iter()
                    .any(|c| attributes.communities.contains(c)))
            && (self.large_communities.is_empty()
                || self
                    .large_communities
                    .iter()
                    .any(|c| attributes.large_communities.contains(c)))
            && self.as_path_max_len.is_none_or(|max| path_len <= max)
            && self.as_path_min_len.is_none_or(|min| path_len >= min)
            && (self.as_path_prefix.is_empty() || {
                let asns: Vec<u32> = attributes
                    .as_path
                    .as_ref()
                    .map(|p| p.asns().collect())
                    .unwrap_or_default();
                asns.starts_with(&self.as_path_prefix)
            })
    }
}

/// What an accepting rule changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modify {
    /// Communities to add.
    pub add_communities: Vec<u32>,
    /// Large communities to add.
    pub add_large_communities: Vec<(u32, u32, u32)>,
    /// LOCAL_PREF to set.
    pub local_pref: Option<u32>,
    /// MED to set.
    pub med: Option<u32>,
    /// ASes to put in front of the AS path (the first is nearest).
    pub prepend: Vec<u32>,
}

impl Modify {
    fn apply(&self, attributes: &mut PathAttributes) {
        for community in &self.add_communities {
            if !attributes.communities.contains(community) {
                attributes.communities.push(*community);
            }
        }
        for community in &self.add_large_communities {
            if !attributes.large_communities.contains(community) {
                attributes.large_communities.push(*community);
            }
        }
        if let Some(local_pref) = self.local_pref {
            attributes.local_pref = Some(local_pref);
        }
        if let Some(med) = self.med {
            attributes.med = Some(med);
        }
        if !self.prepend.is_empty() {
            let path = attributes.as_path.get_or_insert_with(Default::default);
            for asn in self.prepend.iter().rev() {
                path.prepend(*asn);
            }
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

impl Filter {
    /// Runs the filter: `true` to accept, with `attributes` possibly changed.
    pub fn apply(&self, prefix: &IpNet, attributes: &mut PathAttributes) -> bool {
        match self
            .rules
            .iter()
            .find(|rule| rule.matches.holds(prefix, attributes))
        {
            Some(rule) if rule.accept => {
                rule.modify.apply(attributes);
                true
            }
            Some(_) => false,
            None => self.default_accept,
        }
    }

    /// Runs filters in order; each must accept.
    pub fn apply_all(filters: &[Filter], prefix: &IpNet, attributes: &mut PathAttributes) -> bool {
        filters
            .iter()
            .all(|filter| filter.apply(prefix, attributes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::attribute::AsPath;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn prefix_lists_follow_ge_and_le() {
        let exact: PrefixMatch = "10.0.0.0/8".parse().unwrap();
        assert!(exact.matches(&net("10.0.0.0/8")) && !exact.matches(&net("10.1.0.0/16")));
        let upto: PrefixMatch = "10.0.0.0/8 le 24".parse().unwrap();
        assert!(upto.matches(&net("10.1.2.0/24")) && !upto.matches(&net("10.1.2.0/25")));
        let band: PrefixMatch = "10.0.0.0/8 ge 16 le 24".parse().unwrap();
        assert!(!band.matches(&net("10.0.0.0/8")) && band.matches(&net("10.9.0.0/16")));
        let from: PrefixMatch = "fd00::/16 ge 64".parse().unwrap();
        assert!(
            from.matches(&net("fd00:1::/64"))
                && from.matches(&net("fd00:1::1/128"))
                && !from.matches(&net("fd00::/48"))
        );
        assert!(!upto.matches(&net("11.0.0.0/24")));
        assert!("10.0.0.0/8 le 40"
            .parse::<PrefixMatch>()
            .unwrap_err()
            .contains("le needs a length from 8 to 32"));
        assert!("10.0.0.0/8 ge 24 le 16".parse::<PrefixMatch>().is_err());
        assert!("10.0.0.0/8 gt 9".parse::<PrefixMatch>().is_err());
    }

    #[test]
    fn the_first_matching_rule_decides_and_modifies() {
        let filter = Filter {
            rules: vec![
                Rule {
                    matches: Match {
                        communities: vec![0xfde8_0001],
                        ..Match::default()
                    },
                    accept: false,
                    modify: Modify::default(),
                },
                Rule {
                    matches: Match {
                        prefixes: vec!["10.0.0.0/8 le 24".parse().unwrap()],
                        as_path_max_len: Some(2),
                        ..Match::default()
                    },
                    accept: true,
                    modify: Modify {
                        add_communities: vec![0xfde8_0064],
                        local_pref: Some(200),
                        prepend: vec![65000, 65000],
                        ..Modify::default()
                    },
                },
            ],
            default_accept: false,
        };
        let mut attributes = PathAttributes {
            as_path: Some(AsPath::sequence(vec![65001])),
            ..PathAttributes::default()
        };
        assert!(filter.apply(&net("10.1.0.0/16"), &mut attributes));
        assert_eq!(attributes.local_pref, Some(200));
        assert_eq!(attributes.communities, vec![0xfde8_0064]);
        assert_eq!(
            attributes
                .as_path
                .as_ref()
                .unwrap()
                .asns()
                .collect::<Vec<_>>(),
            vec![65000, 65000, 65001]
        );
        let mut tagged = PathAttributes {
            communities: vec![0xfde8_0001],
            ..PathAttributes::default()
        };
        assert!(
            !filter.apply(&net("10.1.0.0/16"), &mut tagged),
            "the reject rule comes first"
        );
        let mut long = PathAttributes {
            as_path: Some(AsPath::sequence(vec![1, 2, 3])),
            ..PathAttributes::default()
        };
        assert!(
            !filter.apply(&net("10.1.0.0/16"), &mut long),
            "falls through to the default"
        );
        assert!(Filter::default().apply(&net("0.0.0.0/0"), &mut PathAttributes::default()));
    }
}
