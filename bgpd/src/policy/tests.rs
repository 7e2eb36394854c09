//! Filter tests: each rule criterion and action, alone and together.

use super::*;
use crate::wire::attribute::AsPath;

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// Runs `filter` on `prefix` with `attributes` on a session where our AS is 65000.
fn run(filter: &Filter, prefix: &str, attributes: &mut PathAttributes) -> bool {
    filter.apply(&mut Route::new(net(prefix), attributes, 65000))
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
    assert!(run(&filter, "10.1.0.0/16", &mut attributes));
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
        !run(&filter, "10.1.0.0/16", &mut tagged),
        "the reject rule comes first"
    );
    let mut long = PathAttributes {
        as_path: Some(AsPath::sequence(vec![1, 2, 3])),
        ..PathAttributes::default()
    };
    assert!(
        !run(&filter, "10.1.0.0/16", &mut long),
        "falls through to the default"
    );
    assert!(run(
        &Filter::default(),
        "0.0.0.0/0",
        &mut PathAttributes::default()
    ));
}

fn path(asns: &[u32]) -> Option<AsPath> {
    Some(AsPath::sequence(asns.to_vec()))
}

/// A filter that accepts, changed by `modify`, what `matches` holds for and rejects the rest.
fn only(matches: Match, modify: Modify) -> Filter {
    Filter {
        rules: vec![Rule {
            matches,
            accept: true,
            modify,
        }],
        default_accept: false,
    }
}

fn accepts(matches: Match, attributes: PathAttributes) -> bool {
    run(
        &only(matches, Modify::default()),
        "10.1.0.0/16",
        &mut attributes.clone(),
    )
}

#[test]
fn as_path_regexes_match_frr_style() {
    let learned_from = Match {
        as_path_regex: vec!["^65002_".parse().unwrap()],
        ..Match::default()
    };
    let from = |asns: &[u32]| PathAttributes {
        as_path: path(asns),
        ..PathAttributes::default()
    };
    assert!(accepts(learned_from.clone(), from(&[65002, 65001])));
    assert!(!accepts(learned_from.clone(), from(&[65003, 65002])));
    assert!(!accepts(learned_from, from(&[650021])));
    let any = Match {
        as_path_regex: vec!["_64512_".parse().unwrap(), "^$".parse().unwrap()],
        ..Match::default()
    };
    assert!(accepts(any.clone(), from(&[65002, 64512, 65001])));
    assert!(
        accepts(any.clone(), PathAttributes::default()),
        "either one"
    );
    assert!(!accepts(any, from(&[65002, 645120])));
}

#[test]
fn origin_as_is_the_last_as_of_the_path() {
    let originated_by = Match {
        origin_as: vec![65001, 65009],
        ..Match::default()
    };
    let with = |asns: &[u32]| PathAttributes {
        as_path: path(asns),
        ..PathAttributes::default()
    };
    assert!(accepts(originated_by.clone(), with(&[65002, 65001])));
    assert!(accepts(originated_by.clone(), with(&[65009])));
    assert!(!accepts(originated_by.clone(), with(&[65001, 65002])));
    assert!(!accepts(originated_by, PathAttributes::default()));
    let ours = Match {
        origin_as: vec![65000],
        ..Match::default()
    };
    assert!(
        accepts(ours, PathAttributes::default()),
        "an empty path is our own AS's route"
    );
}

#[test]
fn extended_communities_are_matched() {
    let target = Match {
        extended_communities: vec![parse_extended_community("rt:65000:100").unwrap()],
        ..Match::default()
    };
    let tagged = |text: &str| PathAttributes {
        extended_communities: [parse_extended_community(text).unwrap()].into(),
        ..PathAttributes::default()
    };
    assert!(accepts(target.clone(), tagged("rt:65000:100")));
    assert!(
        !accepts(target.clone(), tagged("ro:65000:100")),
        "route origin differs"
    );
    assert!(!accepts(target.clone(), tagged("rt:65000:101")));
    assert!(!accepts(target, PathAttributes::default()));
}

#[test]
fn communities_are_deleted_exactly_or_by_pattern_before_additions() {
    let modify = Modify {
        delete_communities: vec![
            "65002:*".parse().unwrap(),
            "65003:1".parse().unwrap(),
            "65002:*:*".parse().unwrap(),
        ],
        add_communities: vec![(65002 << 16) | 9],
        ..Modify::default()
    };
    let mut attributes = PathAttributes {
        communities: vec![(65002 << 16) | 1, (65003 << 16) | 1, (65003 << 16) | 2],
        large_communities: [(65002, 1, 1), (65003, 1, 1)].into(),
        ..PathAttributes::default()
    };
    assert!(run(
        &only(Match::default(), modify),
        "10.1.0.0/16",
        &mut attributes
    ));
    assert_eq!(
        attributes.communities,
        vec![(65003 << 16) | 2, (65002 << 16) | 9],
        "65002:1 and 65003:1 went; the added 65002:9 stays"
    );
    assert_eq!(*attributes.large_communities, [(65003, 1, 1)]);
}

#[test]
fn a_rule_sets_the_next_hop() {
    for (set, prefix, expected) in [
        (
            SetNextHop::Address("192.0.2.9".parse().unwrap()),
            "10.1.0.0/16",
            Some(Some("192.0.2.9".parse().unwrap())),
        ),
        (
            SetNextHop::Address("192.0.2.9".parse().unwrap()),
            "fd00::/64",
            None,
        ),
        (SetNextHop::Own, "fd00::/64", Some(None)),
    ] {
        let filter = only(
            Match::default(),
            Modify {
                next_hop: Some(set),
                ..Modify::default()
            },
        );
        let mut attributes = PathAttributes::default();
        let mut route = Route::new(net(prefix), &mut attributes, 65000);
        assert!(filter.apply(&mut route));
        assert_eq!(route.next_hop, Some(set));
        assert_eq!(set.for_prefix(&net(prefix)), expected, "{set:?} {prefix}");
    }
}

#[test]
fn prepending_repeats_our_as_or_a_given_one() {
    let prepend = |asn: Option<u32>, times: u8| {
        let filter = only(
            Match::default(),
            Modify {
                prepend_times: Some(PrependTimes { asn, times }),
                ..Modify::default()
            },
        );
        let mut attributes = PathAttributes {
            as_path: path(&[65001]),
            ..PathAttributes::default()
        };
        assert!(run(&filter, "10.1.0.0/16", &mut attributes));
        attributes.as_path.unwrap().asns().collect::<Vec<_>>()
    };
    assert_eq!(prepend(None, 3), vec![65000, 65000, 65000, 65001]);
    assert_eq!(prepend(Some(64999), 2), vec![64999, 64999, 65001]);
}

#[test]
fn defaults_set_med_and_local_pref_only_when_absent() {
    let filter = only(
        Match::default(),
        Modify {
            default_med: Some(50),
            default_local_pref: Some(150),
            ..Modify::default()
        },
    );
    let mut bare = PathAttributes::default();
    assert!(run(&filter, "10.1.0.0/16", &mut bare));
    assert_eq!((bare.med, bare.local_pref), (Some(50), Some(150)));
    let mut set = PathAttributes {
        med: Some(7),
        local_pref: Some(300),
        ..PathAttributes::default()
    };
    assert!(run(&filter, "10.1.0.0/16", &mut set));
    assert_eq!((set.med, set.local_pref), (Some(7), Some(300)), "kept");
}

#[test]
fn negated_prefixes_origin_and_local_pref_match_as_calicos_bgp_filters_need() {
    let rule = |matches: Match| Filter {
        rules: vec![Rule {
            matches,
            accept: false,
            modify: Modify::default(),
        }],
        default_accept: true,
    };
    // NotIn 10.0.0.0/8: everything outside it is rejected, what is inside falls through.
    let not_in = rule(Match {
        not_prefixes: vec!["10.0.0.0/8 le 32".parse().unwrap()],
        ..Match::default()
    });
    assert!(!run(
        &not_in,
        "192.168.0.0/16",
        &mut PathAttributes::default()
    ));
    assert!(run(&not_in, "10.1.0.0/16", &mut PathAttributes::default()));
    // source: RemotePeers.
    let learned = rule(Match {
        learned: Some(true),
        ..Match::default()
    });
    let mut attributes = PathAttributes::default();
    let mut ours = Route::new(net("10.0.0.0/24"), &mut attributes, 65000);
    ours.learned = false;
    assert!(learned.apply(&mut ours), "our own route is not from a peer");
    assert!(!run(
        &learned,
        "10.0.0.0/24",
        &mut PathAttributes::default()
    ));
    // priority, as LOCAL_PREF.
    let priority = rule(Match {
        local_pref: Some(2_147_482_623),
        ..Match::default()
    });
    let mut normal = PathAttributes {
        local_pref: Some(2_147_482_623),
        ..PathAttributes::default()
    };
    assert!(!run(&priority, "10.0.0.0/24", &mut normal));
    assert!(run(
        &priority,
        "10.0.0.0/24",
        &mut PathAttributes::default()
    ));
}
