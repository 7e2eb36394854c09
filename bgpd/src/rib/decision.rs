//! The decision process of RFC 4271 §9.1.2.2, pure: ranks one prefix's paths best first, and
//! tells which of them tie with the best up to the multipath point.
//!
//! §9.1.2.2 is a procedure on the whole set of paths, not a pairwise order: MED is compared
//! only between paths from the same neighbouring AS (step (c)), so "A beats B, B beats C,
//! C beats A" happens, and a list kept sorted by pairwise comparison depends on arrival order.
//! Ranking is therefore done in two moves that give the procedure's answer exactly:
//!
//! 1. Within each MED group (one neighbouring AS; all paths with `always_compare_med`) the
//!    steps are a total order — the steps before MED, MED, the steps after it — so each group
//!    is sorted by it. A group's first path is the one §9.1.2.2 keeps from that group.
//! 2. The groups are merged by the steps without MED: the best path of all is the best of the
//!    groups' first paths (§9.1.2.2 after step (c) compares only survivors, at most one per
//!    group that matters), and the merge repeats that on what is left.
//!
//! So the first path is §9.1.2.2's best, the second is its best once the first is gone, and
//! so on: a ranking that depends only on the set, never on arrival order.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Range;

use super::{Path, PeerId, PeerInfo, RibConfig, DEFAULT_LOCAL_PREF};
use crate::wire::attribute::{Origin, SegmentType};

/// Ranks `paths` best first (see the module docs). Allocates only for a prefix with paths
/// from several MED groups.
pub(super) fn rank(config: &RibConfig, peers: &HashMap<PeerId, PeerInfo>, paths: &mut [Path]) {
    if paths.len() < 2 {
        return;
    }
    let group = |path: &Path| med_group(config, peers, path);
    paths.sort_by(|a, b| {
        group(a)
            .cmp(&group(b))
            .then_with(|| compare_before_med(a, b))
            .then_with(|| med(a).cmp(&med(b)))
            .then_with(|| compare_after_med(config, peers, a, b))
    });
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (at, path) in paths.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if group(&paths[run.start]) == group(path) => run.end = at + 1,
            _ => runs.push(at..at + 1),
        }
    }
    if runs.len() == 1 {
        return;
    }
    let mut ranked = Vec::with_capacity(paths.len());
    while ranked.len() < paths.len() {
        let next = runs
            .iter_mut()
            .filter(|run| run.start < run.end)
            .min_by(|x, y| compare_across_groups(config, peers, &paths[x.start], &paths[y.start]))
            .expect("a run with paths remains until every path is ranked");
        ranked.push(paths[next.start].clone());
        next.start += 1;
    }
    paths.clone_from_slice(&ranked);
}

/// Whether `paths[at]` ties with the best path (`paths[0]`) up to the multipath point: the
/// same steps before MED, not eliminated by MED within its group (§9.1.2.2 (c)), and learned
/// the same way, eBGP or iBGP (step (d)). `None` once no later path can tie: ranking puts
/// every path equal to the best on the steps before MED first.
pub(super) fn ties_with_best(
    config: &RibConfig,
    peers: &HashMap<PeerId, PeerInfo>,
    paths: &[Path],
    at: usize,
) -> Option<bool> {
    let (best, path) = (&paths[0], &paths[at]);
    if compare_before_med(best, path) != Ordering::Equal {
        return None;
    }
    // Within a group the least MED comes first, so the group's first path holds its floor.
    let group = med_group(config, peers, path);
    let floor = paths[..=at]
        .iter()
        .find(|p| med_group(config, peers, p) == group)
        .map_or(med(path), med);
    Some(med(path) == floor && is_ebgp(peers, best) == is_ebgp(peers, path))
}

/// The paths whose MEDs are compared with each other: one neighbouring AS, or every path
/// with `always_compare_med`.
fn med_group(config: &RibConfig, peers: &HashMap<PeerId, PeerInfo>, path: &Path) -> u32 {
    if config.always_compare_med {
        0
    } else {
        neighbour_as(config, peers, path)
    }
}

/// RFC 4271 §9.1.2.2 (c), neighborAS(): the first AS of the AS_PATH. A path that is empty or
/// begins with an AS_SET was originated or aggregated inside: the local AS, or the AS of the
/// eBGP peer it came from.
fn neighbour_as(config: &RibConfig, peers: &HashMap<PeerId, PeerInfo>, path: &Path) -> u32 {
    let first = path
        .attributes()
        .as_path
        .as_ref()
        .and_then(|p| p.segments().next())
        .filter(|s| s.kind == SegmentType::Sequence)
        .and_then(|s| s.asns.first().copied());
    first.unwrap_or_else(|| {
        peers
            .get(&path.peer())
            .filter(|p| !p.ibgp)
            .map_or(config.local_as, |p| p.remote_as)
    })
}

/// The steps before MED: our own originations first, fresh paths over stale ones (RFC 4724
/// leaves it open; BIRD does so), then §9.1.2.2 (a) highest LOCAL_PREF, (b) shortest
/// AS_PATH, (c) lowest ORIGIN.
fn compare_before_med(a: &Path, b: &Path) -> Ordering {
    (b.peer() == PeerId::LOCAL)
        .cmp(&(a.peer() == PeerId::LOCAL))
        .then_with(|| a.stale().cmp(&b.stale()))
        .then_with(|| local_pref(b).cmp(&local_pref(a)))
        .then_with(|| as_path_len(a).cmp(&as_path_len(b)))
        .then_with(|| origin_rank(a).cmp(&origin_rank(b)))
}

/// The steps after MED: §9.1.2.2 (d) eBGP over iBGP, (e) no interior cost in Twill, (f)
/// lowest BGP identifier (ORIGINATOR_ID when present, RFC 4456 §9), (g) shortest
/// CLUSTER_LIST, (h) lowest peer address; then the lowest add-path identifier.
fn compare_after_med(
    config: &RibConfig,
    peers: &HashMap<PeerId, PeerInfo>,
    a: &Path,
    b: &Path,
) -> Ordering {
    let router_id = |path: &Path| {
        path.attributes().originator_id.unwrap_or_else(|| {
            peers
                .get(&path.peer())
                .map_or(config.router_id, |p| p.router_id)
        })
    };
    let address = |path: &Path| peers.get(&path.peer()).map(|p| p.address);
    is_ebgp(peers, b)
        .cmp(&is_ebgp(peers, a))
        .then_with(|| router_id(a).cmp(&router_id(b)))
        .then_with(|| {
            a.attributes()
                .cluster_list
                .len()
                .cmp(&b.attributes().cluster_list.len())
        })
        .then_with(|| address(a).cmp(&address(b)))
        .then_with(|| a.path_id.cmp(&b.path_id))
}

/// Between the first paths of two groups: every step but MED.
fn compare_across_groups(
    config: &RibConfig,
    peers: &HashMap<PeerId, PeerInfo>,
    a: &Path,
    b: &Path,
) -> Ordering {
    compare_before_med(a, b).then_with(|| compare_after_med(config, peers, a, b))
}

/// MULTI_EXIT_DISC; a path without one has "the lowest possible MED value" (§9.1.2.2 (c)).
fn med(path: &Path) -> u32 {
    path.attributes().med.unwrap_or(0)
}

fn local_pref(path: &Path) -> u32 {
    path.attributes().local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
}

fn as_path_len(path: &Path) -> usize {
    path.attributes().as_path.as_ref().map_or(0, |p| p.len())
}

fn origin_rank(path: &Path) -> u8 {
    match path.attributes().origin {
        Some(Origin::Igp) => 0,
        Some(Origin::Egp) => 1,
        _ => 2,
    }
}

fn is_ebgp(peers: &HashMap<PeerId, PeerInfo>, path: &Path) -> bool {
    peers.get(&path.peer()).is_some_and(|p| !p.ibgp)
}
