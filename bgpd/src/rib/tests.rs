use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::wire::attribute::AsPath;

fn config() -> RibConfig {
    RibConfig {
        local_as: 65000,
        router_id: Ipv4Addr::new(198, 18, 0, 1),
        cluster_id: Ipv4Addr::new(198, 18, 0, 1),
        max_paths: 1,
    }
}

fn peer(n: u8, remote_as: u32, rr_client: bool) -> PeerInfo {
    PeerInfo {
        address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + n)),
        router_id: Ipv4Addr::new(198, 18, 1, n),
        remote_as,
        ibgp: remote_as == 65000,
        rr_client,
        local_address: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        next_hop_self: false,
    }
}

fn attrs(path: &[u32], local_pref: Option<u32>, med: Option<u32>) -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(path.to_vec())),
        local_pref,
        med,
        ..PathAttributes::default()
    }
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn hop(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + n))
}

/// A RIB with peers 1, 2 (eBGP, AS 65001/65002), 3 (iBGP client), 4 (iBGP non-client).
fn rib(max_paths: usize) -> Rib {
    let mut rib = Rib::new(RibConfig {
        max_paths,
        ..config()
    });
    rib.set_peer(PeerId(1), peer(1, 65001, false));
    rib.set_peer(PeerId(2), peer(2, 65002, false));
    rib.set_peer(PeerId(3), peer(3, 65000, true));
    rib.set_peer(PeerId(4), peer(4, 65000, false));
    rib
}

fn announce(rib: &mut Rib, from: u32, prefix: &str, attributes: PathAttributes) -> Vec<BestChange> {
    rib.update(
        PeerId(from),
        &[(net(prefix), 0)],
        hop(from as u8),
        attributes,
        &[],
    )
}

#[test]
fn the_decision_process_ranks_paths_in_rfc_order() {
    let mut r = rib(1);
    let p = "10.0.0.0/24";
    announce(&mut r, 1, p, attrs(&[65001, 1, 2], None, None));
    announce(&mut r, 2, p, attrs(&[65002, 1], None, None));
    assert_eq!(r.best(&net(p))[0].peer(), PeerId(2), "shorter AS path");
    announce(&mut r, 3, p, attrs(&[65010, 1, 2, 3], Some(200), None));
    assert_eq!(
        r.best(&net(p))[0].peer(),
        PeerId(3),
        "higher LOCAL_PREF beats path length"
    );
    let changes = announce(&mut r, 3, p, attrs(&[65010, 1, 2, 3], Some(50), None));
    assert_eq!(
        changes[0].paths[0].peer(),
        PeerId(2),
        "an update that lowers LOCAL_PREF moves the best"
    );
    // Same length: IGP origin beats INCOMPLETE; then eBGP beats iBGP; then lower router ID.
    let mut incomplete = attrs(&[65002, 7], None, None);
    incomplete.origin = Some(Origin::Incomplete);
    announce(&mut r, 2, p, incomplete);
    announce(&mut r, 4, p, attrs(&[65009, 9], None, None));
    announce(&mut r, 1, p, attrs(&[65001, 9], None, None));
    assert_eq!(
        r.best(&net(p))[0].peer(),
        PeerId(1),
        "eBGP over iBGP at equal length and origin"
    );
    r.update(
        PeerId(1),
        &[],
        hop(1),
        PathAttributes::default(),
        &[(net(p), 0)],
    );
    assert_eq!(
        r.best(&net(p))[0].peer(),
        PeerId(4),
        "IGP origin over INCOMPLETE"
    );
    // MED is compared only between paths from the same neighbouring AS.
    announce(&mut r, 1, "10.1.0.0/24", attrs(&[65001], None, Some(50)));
    announce(&mut r, 2, "10.1.0.0/24", attrs(&[65002], None, Some(10)));
    assert_eq!(
        r.best(&net("10.1.0.0/24"))[0].peer(),
        PeerId(1),
        "different ASes: MED ignored, lower router ID wins"
    );
    // Our own origination wins over everything.
    r.originate(net(p), PathAttributes::default());
    assert_eq!(r.best(&net(p))[0].peer(), PeerId::LOCAL);
}

#[test]
fn equal_paths_through_different_next_hops_form_the_ecmp_set() {
    let mut r = rib(4);
    let p = "10.2.0.0/24";
    announce(&mut r, 3, p, attrs(&[65100], None, None));
    let changes = announce(&mut r, 4, p, attrs(&[65100], None, None));
    assert_eq!(changes.len(), 1);
    let hops: Vec<IpAddr> = changes[0].paths.iter().map(|p| p.next_hop()).collect();
    assert_eq!(hops, vec![hop(3), hop(4)]);
    // A longer path is not equal; a withdrawal shrinks the set.
    announce(&mut r, 1, p, attrs(&[65001, 65100], None, None));
    assert_eq!(r.best(&net(p)).len(), 2);
    let changes = r.update(
        PeerId(3),
        &[],
        hop(3),
        PathAttributes::default(),
        &[(net(p), 0)],
    );
    assert_eq!(
        changes[0]
            .paths
            .iter()
            .map(|p| p.peer())
            .collect::<Vec<_>>(),
        vec![PeerId(4)]
    );
}

#[test]
fn loops_are_rejected_and_withdraw_what_was_there() {
    let mut r = rib(1);
    announce(&mut r, 1, "10.3.0.0/24", attrs(&[65001], None, None));
    let changes = announce(
        &mut r,
        1,
        "10.3.0.0/24",
        attrs(&[65001, 65000, 7], None, None),
    );
    assert_eq!(
        changes,
        vec![BestChange {
            prefix: net("10.3.0.0/24"),
            paths: vec![]
        }],
        "our AS in the path"
    );
    assert_eq!(
        r.check_import(&PathAttributes {
            originator_id: Some(Ipv4Addr::new(198, 18, 0, 1)),
            ..PathAttributes::default()
        }),
        Err(RejectReason::OriginatorLoop)
    );
    assert_eq!(
        r.check_import(&PathAttributes {
            cluster_list: vec![Ipv4Addr::new(198, 18, 0, 1)],
            ..PathAttributes::default()
        }),
        Err(RejectReason::ClusterLoop)
    );
}

#[test]
fn export_follows_split_horizon_reflection_and_ebgp_rules() {
    let mut r = rib(1);
    let mut client_route = attrs(&[65100], Some(300), Some(5));
    client_route.communities = vec![];
    announce(&mut r, 3, "10.4.0.0/24", client_route);
    let path = r.best(&net("10.4.0.0/24"))[0].clone();
    assert!(
        r.export(PeerId(3), &path).is_none(),
        "never back to the sender"
    );
    // Client → non-client: reflected with ORIGINATOR_ID and CLUSTER_LIST, next hop kept.
    let (next_hop, reflected) = r.export(PeerId(4), &path).unwrap();
    assert_eq!(next_hop, Some(hop(3)));
    assert_eq!(reflected.originator_id, Some(Ipv4Addr::new(198, 18, 1, 3)));
    assert_eq!(reflected.cluster_list, vec![Ipv4Addr::new(198, 18, 0, 1)]);
    assert_eq!(reflected.local_pref, Some(300));
    // To eBGP: our AS prepended, LOCAL_PREF and reflection attributes removed, next hop self.
    let (next_hop, external) = r.export(PeerId(1), &path).unwrap();
    assert_eq!(next_hop, None);
    assert_eq!(external.as_path, Some(AsPath::sequence(vec![65000, 65100])));
    assert_eq!((external.local_pref, external.originator_id), (None, None));
    assert_eq!(
        external.med,
        Some(5),
        "a MED learned inside the AS may go out"
    );
    // Non-client → non-client: not reflected.
    announce(&mut r, 4, "10.5.0.0/24", attrs(&[65200], None, None));
    let path = r.best(&net("10.5.0.0/24"))[0].clone();
    assert!(r.export(PeerId(3), &path).is_some(), "non-client → client");
    let mut non_client_2 = peer(5, 65000, false);
    non_client_2.router_id = Ipv4Addr::new(198, 18, 1, 5);
    r.set_peer(PeerId(5), non_client_2);
    assert!(
        r.export(PeerId(5), &path).is_none(),
        "non-client → non-client"
    );
    // eBGP-learned: MED stripped towards another AS; NO_EXPORT stays inside; NO_ADVERTISE nowhere.
    let mut tagged = attrs(&[65001], None, Some(9));
    tagged.communities = vec![community::NO_EXPORT];
    announce(&mut r, 1, "10.6.0.0/24", tagged);
    let path = r.best(&net("10.6.0.0/24"))[0].clone();
    assert!(r.export(PeerId(2), &path).is_none());
    assert_eq!(
        r.export(PeerId(3), &path).unwrap().1.local_pref,
        Some(DEFAULT_LOCAL_PREF)
    );
    let mut plain = attrs(&[65001], None, Some(9));
    plain.communities = vec![];
    announce(&mut r, 1, "10.7.0.0/24", plain);
    assert_eq!(
        r.export(PeerId(2), &r.best(&net("10.7.0.0/24"))[0].clone())
            .unwrap()
            .1
            .med,
        None
    );
    let mut quiet = attrs(&[65001], None, None);
    quiet.communities = vec![community::NO_ADVERTISE];
    announce(&mut r, 1, "10.8.0.0/24", quiet);
    assert!(r
        .export(PeerId(3), &r.best(&net("10.8.0.0/24"))[0].clone())
        .is_none());
}

#[test]
fn graceful_restart_keeps_stale_paths_until_swept() {
    let mut r = rib(1);
    announce(&mut r, 1, "10.9.0.0/24", attrs(&[65001], None, None));
    announce(&mut r, 1, "fd00:9::/64", attrs(&[65001], None, None));
    assert!(
        r.peer_down(PeerId(1), true).is_empty(),
        "stale paths stay best meanwhile"
    );
    assert!(r.best(&net("10.9.0.0/24"))[0].stale());
    // The peer is back and re-sends one IPv4 prefix; End-of-RIB sweeps the rest.
    announce(&mut r, 1, "10.10.0.0/24", attrs(&[65001], None, None));
    let swept = r.sweep_stale(PeerId(1), true);
    assert_eq!(
        swept,
        vec![BestChange {
            prefix: net("10.9.0.0/24"),
            paths: vec![]
        }]
    );
    assert!(
        r.best(&net("fd00:9::/64"))[0].stale(),
        "IPv6 waits for its own End-of-RIB"
    );
    assert_eq!(r.sweep_stale(PeerId(1), false).len(), 1);
    assert_eq!(r.len(), 1);
}

#[test]
fn equal_attributes_are_stored_once() {
    let mut r = rib(1);
    for i in 0..100u8 {
        announce(
            &mut r,
            1,
            &format!("10.20.{i}.0/24"),
            attrs(&[65001], None, None),
        );
    }
    assert_eq!(r.attribute_sets(), 1);
}

#[derive(Debug, Clone)]
enum Op {
    Announce {
        peer: u32,
        prefix: u8,
        path_len: u8,
        local_pref: u8,
        med: u8,
    },
    Withdraw {
        peer: u32,
        prefix: u8,
    },
    Down {
        peer: u32,
    },
    /// The session is lost and the peer restarts gracefully: its paths stay, stale.
    Restart {
        peer: u32,
    },
    /// An enhanced route refresh of one family begins (RFC 7313 BoRR).
    BeginRefresh {
        peer: u32,
        ipv4: bool,
    },
    /// It ends (EoRR): what was not announced again goes.
    EndRefresh {
        peer: u32,
        ipv4: bool,
    },
}

/// The model's prefixes: both families, so both tables are exercised.
fn model_prefix(n: u8) -> String {
    if n.is_multiple_of(2) {
        format!("10.30.{n}.0/24")
    } else {
        format!("fd00:30:{n}::/64")
    }
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u32..5, 0u8..6, 1u8..4, 0u8..3, 0u8..3).prop_map(|(peer, prefix, path_len, local_pref, med)| Op::Announce { peer, prefix, path_len, local_pref, med }),
        3 => (1u32..5, 0u8..6).prop_map(|(peer, prefix)| Op::Withdraw { peer, prefix }),
        1 => (1u32..5).prop_map(|peer| Op::Down { peer }),
        1 => (1u32..5).prop_map(|peer| Op::Restart { peer }),
        1 => (1u32..5, any::<bool>()).prop_map(|(peer, ipv4)| Op::BeginRefresh { peer, ipv4 }),
        1 => (1u32..5, any::<bool>()).prop_map(|(peer, ipv4)| Op::EndRefresh { peer, ipv4 }),
    ]
}

proptest! {
    /// The incremental table equals a full recompute after every operation, and the change
    /// stream alone keeps a shadow FIB equal to the table's ECMP sets.
    #[test]
    fn incremental_rib_matches_full_recompute(ops in prop::collection::vec(arb_op(), 1..60), max_paths in 1usize..4) {
        let mut r = rib(max_paths);
        let mut shadow: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
        for op in ops {
            let changes = match op {
                Op::Announce { peer, prefix, path_len, local_pref, med } => {
                    let path: Vec<u32> = (0..path_len).map(|i| 65100 + u32::from(i)).collect();
                    let lp = [None, Some(100), Some(200)][usize::from(local_pref)];
                    announce(&mut r, peer, &model_prefix(prefix), attrs(&path, lp, Some(u32::from(med))))
                }
                Op::Withdraw { peer, prefix } => r.update(PeerId(peer), &[], hop(0), PathAttributes::default(), &[(net(&model_prefix(prefix)), 0)]),
                Op::Down { peer } => r.peer_down(PeerId(peer), false),
                Op::Restart { peer } => r.peer_down(PeerId(peer), true),
                Op::BeginRefresh { peer, ipv4 } => {
                    r.begin_refresh(PeerId(peer), ipv4);
                    Vec::new()
                }
                Op::EndRefresh { peer, ipv4 } => r.end_refresh(PeerId(peer), ipv4),
            };
            for change in changes {
                if change.paths.is_empty() {
                    shadow.remove(&change.prefix);
                } else {
                    shadow.insert(change.prefix, change.paths.iter().map(|p| p.next_hop()).collect());
                }
            }
            let mut truth = BTreeMap::new();
            for (prefix, paths) in r.iter() {
                let mut sorted = paths.to_vec();
                let peers: HashMap<PeerId, PeerInfo> = (1..5).map(|n| (PeerId(n), r.peers[&PeerId(n)].clone())).collect();
                sorted.sort_by(|a, b| compare(r.config(), &peers, a, b));
                prop_assert_eq!(&sorted, &paths.to_vec(), "order of {}", prefix);
                truth.insert(prefix, Rib::ecmp_of(r.config(), &peers, &sorted).iter().map(|p| p.next_hop()).collect::<Vec<_>>());
            }
            prop_assert_eq!(&shadow, &truth);
            for n in 1..5 {
                let counted = r.iter().map(|(_, paths)| paths.iter().filter(|p| p.peer() == PeerId(n)).count()).sum::<usize>();
                prop_assert_eq!(r.path_count(PeerId(n)), counted);
            }
        }
    }
}

#[test]
fn a_table_bucket_stays_small() {
    // What makes a million prefixes fit in about 50 MB: a 16-byte path held inline.
    assert_eq!(
        std::mem::size_of::<V4Key>() + std::mem::size_of::<Paths>(),
        24
    );
    assert_eq!(std::mem::size_of::<Path>(), 16);
    assert_eq!(std::mem::size_of::<Paths>(), 16);
}

#[test]
fn a_withdrawn_table_gives_its_memory_back() {
    let mut r = rib(1);
    let prefixes: Vec<(IpNet, u32)> = (0..100_000u32)
        .map(|i| {
            (
                IpNet::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 32).unwrap(),
                0,
            )
        })
        .collect();
    r.update(
        PeerId(1),
        &prefixes,
        hop(1),
        attrs(&[65001], None, None),
        &[],
    );
    let capacity = |r: &Rib| r.table.v4.iter().map(HashMap::capacity).sum::<usize>();
    let full = capacity(&r);
    assert!(full >= 100_000);
    r.update(
        PeerId(1),
        &[],
        hop(1),
        PathAttributes::default(),
        &prefixes[1000..],
    );
    assert_eq!(r.len(), 1000);
    assert!(capacity(&r) <= full / 8, "{} of {full}", capacity(&r));
    assert_eq!(r.path_count(PeerId(1)), 1000);
}
