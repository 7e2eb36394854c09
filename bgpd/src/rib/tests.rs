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
        always_compare_med: false,
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
        shared_subnet: None,
        next_hop_keep: false,
        allowas_in: 0,
        local_as: None,
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
        r.check_import(
            PeerId(1),
            &PathAttributes {
                originator_id: Some(Ipv4Addr::new(198, 18, 0, 1)),
                ..PathAttributes::default()
            }
        ),
        Err(RejectReason::OriginatorLoop)
    );
    assert_eq!(
        r.check_import(
            PeerId(1),
            &PathAttributes {
                cluster_list: [Ipv4Addr::new(198, 18, 0, 1)].into(),
                ..PathAttributes::default()
            }
        ),
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
    assert_eq!(*reflected.cluster_list, [Ipv4Addr::new(198, 18, 0, 1)]);
    assert_eq!(reflected.local_pref, Some(300));
    // To eBGP: our AS prepended, LOCAL_PREF and reflection attributes removed, next hop self.
    let (next_hop, external) = r.export(PeerId(1), &path).unwrap();
    assert_eq!(next_hop, None);
    assert_eq!(external.as_path, Some(AsPath::sequence(vec![65000, 65100])));
    assert_eq!((external.local_pref, external.originator_id), (None, None));
    assert_eq!(
        external.med, None,
        "RFC 4271 §5.1.4: a MED learned over iBGP came from some neighbouring AS; not to another"
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
    // Our own MED (set where we originate) is for our neighbours: it goes out.
    r.originate(
        net("10.9.0.0/24"),
        PathAttributes {
            med: Some(30),
            ..PathAttributes::default()
        },
    );
    let ours = r.best(&net("10.9.0.0/24"))[0].clone();
    assert_eq!(r.export(PeerId(1), &ours).unwrap().1.med, Some(30));
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

#[test]
fn the_interner_shares_hops_and_sets_and_forgets_unused_ones() {
    let mut interner = Interner::default();
    let a = interner.intern(hop(1), attrs(&[65001], None, None));
    let b = interner.intern(hop(1), attrs(&[65001], None, None));
    let c = interner.intern(hop(2), attrs(&[65001], None, None));
    let d = interner.intern(hop(1), attrs(&[65002], None, None));
    assert!(Arc::ptr_eq(&a, &b), "one hop for one next hop and set");
    assert!(!Arc::ptr_eq(&a, &c), "a hop per next hop");
    assert!(
        Arc::ptr_eq(&a.attributes, &c.attributes),
        "next hops share a set"
    );
    assert!(!Arc::ptr_eq(&a.attributes, &d.attributes));
    assert_eq!((interner.hops.len(), interner.attributes.len()), (3, 2));
    drop((b, c));
    interner.collect();
    assert_eq!((interner.hops.len(), interner.attributes.len()), (2, 2));
    drop((a, d));
    interner.collect();
    assert_eq!((interner.hops.len(), interner.attributes.len()), (0, 0));
    // Enough sets for both tables to grow (hops are hashed again then): each is found again.
    let kept: Vec<Arc<Hop>> = (0..5000)
        .map(|i| interner.intern(hop((i % 3) as u8), attrs(&[64512 + i], None, None)))
        .collect();
    for (i, hop_kept) in (0..5000).zip(&kept) {
        let again = interner.intern(hop((i % 3) as u8), attrs(&[64512 + i], None, None));
        assert!(Arc::ptr_eq(&again, hop_kept));
    }
    assert_eq!(
        (interner.hops.len(), interner.attributes.len()),
        (5000, 5000)
    );
}

#[derive(Debug, Clone)]
enum Op {
    Announce {
        peer: u32,
        prefix: u8,
        path_len: u8,
        local_pref: u8,
        med: u8,
        /// The path's first AS: one of two neighbouring ASes.
        neighbour: u8,
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
        6 => (1u32..5, 0u8..6, 1u8..4, 0u8..3, 0u8..3, 0u8..2).prop_map(|(peer, prefix, path_len, local_pref, med, neighbour)| Op::Announce { peer, prefix, path_len, local_pref, med, neighbour }),
        3 => (1u32..5, 0u8..6).prop_map(|(peer, prefix)| Op::Withdraw { peer, prefix }),
        1 => (1u32..5).prop_map(|peer| Op::Down { peer }),
        1 => (1u32..5).prop_map(|peer| Op::Restart { peer }),
        1 => (1u32..5, any::<bool>()).prop_map(|(peer, ipv4)| Op::BeginRefresh { peer, ipv4 }),
        1 => (1u32..5, any::<bool>()).prop_map(|(peer, ipv4)| Op::EndRefresh { peer, ipv4 }),
    ]
}

proptest! {
    /// The incremental table equals the model after every operation (ranking and ECMP set),
    /// and the change stream alone keeps a shadow FIB equal to the table's ECMP sets.
    #[test]
    fn incremental_rib_matches_the_model(ops in prop::collection::vec(arb_op(), 1..60), max_paths in 1usize..4) {
        let mut r = rib(max_paths);
        let mut shadow: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
        let peers: HashMap<PeerId, PeerInfo> = (1..5).map(|n| (PeerId(n), r.peers[&PeerId(n)].clone())).collect();
        for op in ops {
            let changes = match op {
                Op::Announce { peer, prefix, path_len, local_pref, med, neighbour } => {
                    let path: Vec<u32> = (0..path_len).map(|i| 65100 + u32::from(neighbour) + 10 * u32::from(i)).collect();
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
                let candidates: Vec<Candidate> = paths.iter().map(|p| candidate_of(p, &peers)).collect();
                let ranked: Vec<(u32, u32)> = model_ranking(&candidates, false).iter().map(Candidate::slot).collect();
                let table: Vec<(u32, u32)> = paths.iter().map(|p| (p.peer().0, p.path_id())).collect();
                prop_assert_eq!(&table, &ranked, "order of {}", prefix);
                truth.insert(prefix, model_ecmp(&candidates, false, max_paths));
            }
            prop_assert_eq!(&shadow, &truth);
            for n in 1..5 {
                let counted = r.iter().map(|(_, paths)| paths.iter().filter(|p| p.peer() == PeerId(n)).count()).sum::<usize>();
                prop_assert_eq!(r.path_count(PeerId(n)), counted);
            }
        }
    }
}

/// One path as the model sees it: every input of the decision process, spelled out.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    peer: u32,
    path_id: u32,
    next_hop: IpAddr,
    /// Kept for a restarting peer (RFC 4724).
    stale: bool,
    /// Learned over eBGP.
    external: bool,
    /// The degree of preference: LOCAL_PREF, or 100 when absent (RFC 4271 §9.1.1). The
    /// RIB takes LOCAL_PREF as given: the one an eBGP peer sent is dropped before import
    /// policy, by the speaker (§5.1.5), and policy may set one on any path.
    preference: u32,
    as_path_len: usize,
    /// IGP 0, EGP 1, INCOMPLETE 2.
    origin: u8,
    neighbour_as: u32,
    /// MULTI_EXIT_DISC, 0 when absent (§9.1.2.2 (c): "the lowest possible MED value").
    med: u32,
    /// The peer's BGP identifier, or ORIGINATOR_ID (RFC 4456 §9).
    router_id: Ipv4Addr,
    address: IpAddr,
}

impl Candidate {
    fn slot(&self) -> (u32, u32) {
        (self.peer, self.path_id)
    }
}

/// The model's reading of a path the RIB holds, from the path's attributes and the test's
/// own knowledge of the peers (local AS 65000).
fn candidate_of(path: &Path, peers: &HashMap<PeerId, PeerInfo>) -> Candidate {
    let peer = &peers[&path.peer()];
    let attributes = path.attributes();
    let external = !peer.ibgp;
    let as_path = attributes.as_path.clone().unwrap_or_default();
    // §9.1.2.2: the neighbour AS is the first AS of the path; a path that is empty or starts
    // with an AS_SET came from inside (the local AS), or from the eBGP peer itself.
    let first = as_path
        .segments()
        .next()
        .filter(|s| s.kind == crate::wire::attribute::SegmentType::Sequence)
        .and_then(|s| s.asns.first().copied());
    let neighbour_as = first.unwrap_or(if external { peer.remote_as } else { 65000 });
    Candidate {
        peer: path.peer().0,
        path_id: path.path_id(),
        next_hop: path.next_hop(),
        stale: path.stale(),
        external,
        preference: attributes.local_pref.unwrap_or(100),
        as_path_len: as_path.len(),
        origin: match attributes.origin {
            Some(Origin::Igp) => 0,
            Some(Origin::Egp) => 1,
            _ => 2,
        },
        neighbour_as,
        med: attributes.med.unwrap_or(0),
        router_id: attributes.originator_id.unwrap_or(peer.router_id),
        address: peer.address,
    }
}

/// Keeps the candidates whose `key` is the least.
fn keep_least<K: Ord>(left: &mut Vec<Candidate>, key: impl Fn(&Candidate) -> K) {
    if let Some(least) = left.iter().map(&key).min() {
        left.retain(|c| key(c) == least);
    }
}

/// RFC 4271 §9.1.2.2 steps (a) to (d), read literally, after Twill's one step before them:
/// fresh paths over stale ones (RFC 4724 leaves it open; BIRD does so). What is left is the
/// set the ECMP set is drawn from.
fn model_survivors(candidates: &[Candidate], always_compare_med: bool) -> Vec<Candidate> {
    let mut left = candidates.to_vec();
    keep_least(&mut left, |c| c.stale);
    // (a) the highest degree of preference.
    keep_least(&mut left, |c| std::cmp::Reverse(c.preference));
    // (b) the fewest AS numbers in the AS_PATH.
    keep_least(&mut left, |c| c.as_path_len);
    // (c) the lowest ORIGIN.
    keep_least(&mut left, |c| c.origin);
    // (c) "remove from consideration routes with less-preferred MULTI_EXIT_DISC attributes",
    // compared only between routes learned from the same neighbouring AS (unless told to
    // compare them all).
    let considered = left.clone();
    left.retain(|c| {
        !considered
            .iter()
            .any(|o| (always_compare_med || o.neighbour_as == c.neighbour_as) && o.med < c.med)
    });
    // (d) if any route was learned over eBGP, remove those learned over iBGP.
    keep_least(&mut left, |c| !c.external);
    left
}

/// The whole of §9.1.2.2: steps (a) to (d), (e) (no interior cost in Twill: all equal),
/// (f) the lowest BGP identifier, (g) the shortest CLUSTER_LIST (none here), (h) the lowest
/// peer address; then the lowest add-path identifier.
fn model_best(candidates: &[Candidate], always_compare_med: bool) -> Option<Candidate> {
    let mut left = model_survivors(candidates, always_compare_med);
    keep_least(&mut left, |c| c.router_id);
    keep_least(&mut left, |c| c.address);
    keep_least(&mut left, |c| c.path_id);
    left.into_iter().next()
}

/// Best first: the best of all, then the best of the rest, and so on.
fn model_ranking(candidates: &[Candidate], always_compare_med: bool) -> Vec<Candidate> {
    let mut rest = candidates.to_vec();
    let mut ranking = Vec::new();
    while let Some(best) = model_best(&rest, always_compare_med) {
        rest.retain(|c| c.slot() != best.slot());
        ranking.push(best);
    }
    ranking
}

/// The ECMP set's next hops: the survivors of steps (a) to (d), best first, one per next
/// hop, at most `max_paths`.
fn model_ecmp(candidates: &[Candidate], always_compare_med: bool, max_paths: usize) -> Vec<IpAddr> {
    let survivors = model_survivors(candidates, always_compare_med);
    let mut hops: Vec<IpAddr> = Vec::new();
    for c in model_ranking(candidates, always_compare_med) {
        if survivors.contains(&c) && !hops.contains(&c.next_hop) && hops.len() < max_paths {
            hops.push(c.next_hop);
        }
    }
    hops
}

/// One generated path: from its own peer, learned from one of three neighbouring ASes,
/// over eBGP or iBGP.
#[derive(Debug, Clone)]
struct PathSpec {
    neighbour: u32,
    internal: bool,
    router_id: u8,
    local_pref: Option<u32>,
    longer: bool,
    incomplete: bool,
    med: Option<u32>,
}

fn arb_path_spec() -> impl Strategy<Value = PathSpec> {
    (
        65001u32..65004,
        any::<bool>(),
        1u8..8,
        prop::option::of(prop_oneof![Just(100u32), Just(200)]),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::option::of(prop_oneof![Just(0u32), Just(5), Just(10), Just(20)]),
    )
        .prop_map(
            |(neighbour, internal, router_id, local_pref, longer, incomplete, med)| PathSpec {
                neighbour,
                internal,
                router_id,
                local_pref,
                longer,
                incomplete,
                med,
            },
        )
}

/// Peer `n` (1-based) of a generated path, as the RIB knows it.
fn spec_peer(n: usize, spec: &PathSpec) -> PeerInfo {
    let n = u8::try_from(n).expect("fewer than 256 paths");
    let mut info = peer(n, if spec.internal { 65000 } else { spec.neighbour }, false);
    info.router_id = Ipv4Addr::new(198, 18, 1, spec.router_id);
    info
}

fn spec_attributes(spec: &PathSpec) -> PathAttributes {
    let mut path = vec![spec.neighbour];
    if spec.longer {
        path.push(64512);
    }
    let mut attributes = attrs(&path, spec.local_pref, spec.med);
    if spec.incomplete {
        attributes.origin = Some(Origin::Incomplete);
    }
    attributes
}

/// A RIB fed the generated paths in `order`, each from its own peer.
fn rib_in_order(specs: &[PathSpec], order: &[usize], config: RibConfig) -> Rib {
    let mut r = Rib::new(config);
    for (at, spec) in specs.iter().enumerate() {
        r.set_peer(PeerId(at as u32 + 1), spec_peer(at + 1, spec));
    }
    for &at in order {
        let from = at as u32 + 1;
        r.update(
            PeerId(from),
            &[(net("10.40.0.0/24"), 0)],
            hop(from as u8),
            spec_attributes(&specs[at]),
            &[],
        );
    }
    r
}

/// Every order of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for shorter in permutations(n - 1) {
        for at in 0..=shorter.len() {
            let mut order = shorter.clone();
            order.insert(at, n - 1);
            all.push(order);
        }
    }
    all
}

/// A shuffle of `0..n` from a seed (xorshift, Fisher-Yates).
fn shuffled(n: usize, mut seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for at in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(at, (seed % (at as u64 + 1)) as usize);
    }
    order
}

proptest! {
    /// RFC 4271 §9.1.2.2 is a procedure on the whole set, not a pairwise order: whatever order
    /// paths from several neighbouring ASes arrive in, the RIB ranks them as the model does
    /// (so the best path is the model's), with the model's ECMP set. Up to five paths every
    /// order is tried; past twenty (where sorting by a non-total order can panic), several.
    #[test]
    fn every_arrival_order_gives_the_models_best_path(
        specs in prop::collection::vec(arb_path_spec(), 1..28),
        seeds in prop::collection::vec(1u64..u64::MAX, 4),
        always_compare_med in prop::bool::weighted(0.25),
    ) {
        let n = specs.len();
        let orders = if n <= 5 {
            permutations(n)
        } else {
            let mut orders: Vec<Vec<usize>> = seeds.iter().map(|s| shuffled(n, *s)).collect();
            orders.push((0..n).collect());
            orders.push((0..n).rev().collect());
            orders
        };
        let mut expected: Option<Vec<(u32, u32)>> = None;
        for order in orders {
            let r = rib_in_order(&specs, &order, RibConfig { max_paths: 4, always_compare_med, ..config() });
            let paths = r.paths(&net("10.40.0.0/24"));
            let candidates: Vec<Candidate> = paths.iter().map(|p| candidate_of(p, &r.peers)).collect();
            let table: Vec<(u32, u32)> = paths.iter().map(|p| (p.peer().0, p.path_id())).collect();
            let model: Vec<(u32, u32)> = model_ranking(&candidates, always_compare_med).iter().map(Candidate::slot).collect();
            prop_assert_eq!(&table, &model, "arrival order {:?}", order);
            let ecmp: Vec<IpAddr> = r.best(&net("10.40.0.0/24")).iter().map(|p| p.next_hop()).collect();
            prop_assert_eq!(ecmp, model_ecmp(&candidates, always_compare_med, 4), "arrival order {:?}", order);
            match &expected {
                None => expected = Some(table),
                Some(first) => prop_assert_eq!(first, &table, "arrival order {:?}", order),
            }
        }
    }
}

#[test]
fn med_is_compared_within_each_neighbouring_as_whatever_the_arrival_order() {
    // The cycle: A (AS 65001, MED 10) beats B (AS 65002) on router ID, B beats
    // C (AS 65001, MED 5) on router ID, C beats A on MED. §9.1.2.2: C eliminates A inside
    // AS 65001, then B beats C on router ID.
    let specs = [
        (65001, 1, Some(10)), // A, router ID .1
        (65002, 2, None),     // B, router ID .2
        (65001, 5, Some(5)),  // C, router ID .5
    ]
    .map(|(neighbour, router_id, med)| PathSpec {
        neighbour,
        internal: false,
        router_id,
        local_pref: None,
        longer: false,
        incomplete: false,
        med,
    });
    for order in permutations(3) {
        let r = rib_in_order(&specs, &order, config());
        let ranking: Vec<u32> = r
            .paths(&net("10.40.0.0/24"))
            .iter()
            .map(|p| p.peer().0)
            .collect();
        assert_eq!(
            ranking,
            vec![2, 3, 1],
            "B, then C, then A; arrival order {order:?}"
        );
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

#[test]
fn always_compare_med_compares_it_across_neighbouring_ases() {
    // A (AS 65001, MED 10, router ID .1), B (AS 65002, MED 20, .2), C (AS 65001, MED 5, .5).
    let specs =
        [(65001, 1, 10), (65002, 2, 20), (65001, 5, 5)].map(|(neighbour, router_id, med)| {
            PathSpec {
                neighbour,
                internal: false,
                router_id,
                local_pref: None,
                longer: false,
                incomplete: false,
                med: Some(med),
            }
        });
    let ranking = |always_compare_med| {
        let r = rib_in_order(
            &specs,
            &[0, 1, 2],
            RibConfig {
                always_compare_med,
                ..config()
            },
        );
        let ranking: Vec<u32> = r
            .paths(&net("10.40.0.0/24"))
            .iter()
            .map(|p| p.peer().0)
            .collect();
        ranking
    };
    assert_eq!(
        ranking(false),
        vec![2, 3, 1],
        "per AS: C holds A down, B's MED is not compared, B wins on router ID"
    );
    assert_eq!(ranking(true), vec![3, 1, 2], "lowest MED of all first");
}

#[test]
fn an_external_peer_on_a_shared_subnet_gets_third_party_next_hops() {
    // RFC 4271 §5.1.3 (2): towards eBGP peer 1 on 198.18.0.0/24, a path learned from
    // another router on that subnet (peer 3, next hop 198.18.0.13) keeps its next hop;
    // our own originations and next hops outside the subnet go as ourselves.
    let mut r = rib(1);
    let mut external = peer(1, 65001, false);
    external.shared_subnet = Some(net("198.18.0.0/24"));
    r.set_peer(PeerId(1), external);
    announce(&mut r, 3, "10.4.0.0/24", attrs(&[], None, None));
    let from_neighbour = r.best(&net("10.4.0.0/24"))[0].clone();
    assert_eq!(
        r.export(PeerId(1), &from_neighbour).unwrap().0,
        Some(hop(3))
    );
    assert_eq!(
        r.export(PeerId(2), &from_neighbour).unwrap().0,
        None,
        "a peer with no shared subnet hears us as next hop"
    );
    r.originate(net("10.9.0.0/24"), PathAttributes::default());
    let ours = r.best(&net("10.9.0.0/24"))[0].clone();
    assert_eq!(r.export(PeerId(1), &ours).unwrap().0, None);
    let mut far = peer(1, 65001, false);
    far.shared_subnet = Some(net("198.19.0.0/24"));
    r.set_peer(PeerId(1), far);
    assert_eq!(r.export(PeerId(1), &from_neighbour).unwrap().0, None);
    // Never the peer's own address as next hop: a path it sent us is not sent back anyway,
    // and one whose next hop is the peer (from elsewhere) goes as ourselves.
    let mut own_hop = peer(1, 65001, false);
    own_hop.shared_subnet = Some(net("198.18.0.0/24"));
    r.set_peer(PeerId(1), own_hop);
    r.update(
        PeerId(4),
        &[(net("10.5.0.0/24"), 0)],
        hop(1),
        attrs(&[], None, None),
        &[],
    );
    let via_peer = r.best(&net("10.5.0.0/24"))[0].clone();
    assert_eq!(r.export(PeerId(1), &via_peer).unwrap().0, None);
}

#[test]
fn next_hop_keep_sends_paths_with_their_own_next_hop_to_an_external_peer() {
    // BIRD's `next hop keep`, Calico's nextHopMode Keep: the eBGP peer hears the path's
    // next hop (here peer 3's), not ours; our own originations still go as us.
    let mut r = rib(1);
    let mut external = peer(1, 65001, false);
    external.next_hop_keep = true;
    r.set_peer(PeerId(1), external);
    announce(&mut r, 3, "10.4.0.0/24", attrs(&[], None, None));
    let learned = r.best(&net("10.4.0.0/24"))[0].clone();
    assert_eq!(r.export(PeerId(1), &learned).unwrap().0, Some(hop(3)));
    assert_eq!(
        r.export(PeerId(2), &learned).unwrap().0,
        None,
        "Auto: next hop self to eBGP"
    );
    r.originate(net("10.9.0.0/24"), PathAttributes::default());
    let ours = r.best(&net("10.9.0.0/24"))[0].clone();
    assert_eq!(r.export(PeerId(1), &ours).unwrap().0, None);
}
