//! The speaker's route flow: UPDATEs in through import policy to the RIB, and RIB changes out
//! through the export rules and policy to every peer's Adj-RIB-Out, packed into UPDATEs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use ipnet::IpNet;

use super::{Action, Peer, Received, Speaker};
use crate::fsm::State;
use crate::policy::{Filter, Route, SetNextHop};
use crate::rib::{BestChange, PeerId};
use crate::wire::attribute::{MpReach, MpUnreach, PathAttributes};
use crate::wire::{Context, Family, Nlri, UpdateMsg};

/// Paths per prefix announced with add-path.
const ADD_PATH_LIMIT: usize = 8;

fn family_of(prefix: &IpNet) -> Family {
    if prefix.addr().is_ipv4() {
        Family::Ipv4Unicast
    } else {
        Family::Ipv6Unicast
    }
}

/// Our add-path identifiers for the paths chosen for one prefix (RFC 7911 §3: a path is
/// known by prefix and identifier). A path announced before keeps its identifier, so a change
/// of its attributes replaces it; a new one takes the lowest identifier, from 1, that no
/// path staying in the set holds, which may be that of a path leaving it (announcing it
/// replaces that one). `announced` is (identifier, source) of what the peer has now.
fn assign_path_ids(chosen: &[(PeerId, u32)], announced: &[(u32, (PeerId, u32))]) -> Vec<u32> {
    let mut ids: Vec<Option<u32>> = chosen
        .iter()
        .map(|source| {
            announced
                .iter()
                .find(|(_, s)| s == source)
                .map(|(id, _)| *id)
        })
        .collect();
    let mut next = 1;
    for at in 0..ids.len() {
        if ids[at].is_none() {
            while ids.contains(&Some(next)) {
                next += 1;
            }
            ids[at] = Some(next);
        }
    }
    ids.into_iter()
        .map(|id| id.expect("every path was given one"))
        .collect()
}

/// Our next hop for a family, from our address on the session: an IPv4 session announces
/// IPv6 routes with the IPv4-mapped address, as FRR does.
fn self_next_hop(local: IpAddr, family: Family) -> Option<IpAddr> {
    match (local, family) {
        (IpAddr::V4(_), Family::Ipv4Unicast) | (IpAddr::V6(_), Family::Ipv6Unicast) => Some(local),
        (IpAddr::V4(v4), Family::Ipv6Unicast) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        _ => None,
    }
}

fn family_matches(address: IpAddr, family: Family) -> bool {
    address.is_ipv4() == (family == Family::Ipv4Unicast)
}

/// RFC 4760 §8: routes of a family flow only where both sides announced it. A peer that sends
/// another family anyway has its routes of it refused (ignored, with a warning, as FRR does);
/// the session stays up.
fn refuse_families_not_negotiated(
    peer: &Peer,
    announced: &mut [(IpAddr, Vec<Nlri>)],
    withdrawn: &mut Vec<(IpNet, u32)>,
) {
    let Some(negotiated) = peer.session.negotiated() else {
        return;
    };
    let families = &negotiated.families;
    let mut refused: Vec<Family> = Vec::new();
    for (_, nlri) in announced.iter_mut() {
        nlri.retain(|n| {
            let family = family_of(&n.prefix);
            let keep = families.contains(&family);
            if !keep && !refused.contains(&family) {
                refused.push(family);
            }
            keep
        });
    }
    withdrawn.retain(|(prefix, _)| families.contains(&family_of(prefix)));
    for family in refused {
        tracing::warn!(%family, "routes of a family not negotiated on this session; refused");
    }
}

/// The next hop an import filter set, if it set one for the route's family: `self` is the
/// neighbour's own address (FRR's `set ip next-hop peer-address`), for routes of its family.
fn imported_next_hop(set: Option<SetNextHop>, neighbour: IpAddr, prefix: &IpNet) -> Option<IpAddr> {
    match set?.for_prefix(prefix)? {
        Some(address) => Some(address),
        None => (neighbour.is_ipv4() == prefix.addr().is_ipv4()).then_some(neighbour),
    }
}

/// The announcements and withdrawals for one peer, grouped for packing.
#[derive(Default)]
struct Outbox {
    announce: HashMap<(IpAddr, Arc<PathAttributes>), Vec<Nlri>>,
    withdraw: HashMap<Family, Vec<Nlri>>,
}

impl Speaker {
    pub(super) fn on_update(&mut self, now: Instant, address: IpAddr, update: UpdateMsg) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        if let Some(family) = update.end_of_rib() {
            self.actions.push_back(Action::EndOfRib(address, family));
            if peer.restart_deadline.is_some() {
                self.sweep_stale(now, address, Some(family));
            }
            if let Some(restart) = self.restart.as_mut() {
                restart.end_of_rib.insert((address, family));
                self.check_restart(now);
            }
            return;
        }
        let id = peer.id;
        peer.malformed.record(address, &update.error_action);
        // RFC 7606 treat-as-withdraw: what the UPDATE announces is withdrawn instead.
        let treat_as_withdraw = update.treat_as_withdraw();
        let mut withdrawn: Vec<(IpNet, u32)> = update
            .withdrawn
            .iter()
            .map(|n| (n.prefix, n.path_id.unwrap_or(0)))
            .collect();
        let mut attributes = update.attributes;
        if let Some(local) = peer.config.local_as.filter(|l| !l.no_prepend) {
            // FRR's local-as: routes from the peer look learned through that AS.
            if let Some(path) = attributes.as_path.as_mut() {
                path.prepend(local.asn);
            }
        }
        if !peer.config.session.is_ibgp() {
            // RFC 4271 §5.1.5: a LOCAL_PREF from an external peer is ignored; the degree of
            // preference is ours to set (§9.1.1), by import policy or the default.
            attributes.local_pref = None;
        }
        if let Some(unreach) = attributes.mp_unreach.take() {
            withdrawn.extend(
                unreach
                    .withdrawn
                    .iter()
                    .map(|n| (n.prefix, n.path_id.unwrap_or(0))),
            );
        }
        let mut announced: Vec<(IpAddr, Vec<Nlri>)> = Vec::new();
        if let Some(next_hop) = attributes.next_hop {
            announced.push((IpAddr::V4(next_hop), update.nlri));
        } else if !update.nlri.is_empty() {
            withdrawn.extend(
                update
                    .nlri
                    .iter()
                    .map(|n| (n.prefix, n.path_id.unwrap_or(0))),
            );
        }
        if let Some(reach) = attributes.mp_reach.take() {
            match reach.next_hops.first() {
                Some(next_hop) => announced.push((*next_hop, reach.nlri)),
                None => withdrawn.extend(
                    reach
                        .nlri
                        .iter()
                        .map(|n| (n.prefix, n.path_id.unwrap_or(0))),
                ),
            }
        }
        if treat_as_withdraw {
            for (_, nlri) in announced.drain(..) {
                withdrawn.extend(nlri.iter().map(|n| (n.prefix, n.path_id.unwrap_or(0))));
            }
        }
        refuse_families_not_negotiated(peer, &mut announced, &mut withdrawn);
        let mut changes = Vec::new();
        let mut touched: Vec<IpNet> = withdrawn.iter().map(|(p, _)| *p).collect();
        for key in &withdrawn {
            peer.rejected.remove(key);
            peer.adj_in.remove(key);
        }
        changes.extend(self.rib.update(
            id,
            &[],
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            PathAttributes::default(),
            &withdrawn,
        ));
        let (import, session_as) = (peer.config.import.clone(), peer.config.session.local_as);
        for (next_hop, nlri) in announced {
            touched.extend(nlri.iter().map(|n| n.prefix));
            if import.is_empty() {
                let keys: Vec<(IpNet, u32)> = nlri
                    .iter()
                    .map(|n| (n.prefix, n.path_id.unwrap_or(0)))
                    .collect();
                changes.extend(
                    self.rib
                        .update(id, &keys, next_hop, attributes.clone(), &[]),
                );
                continue;
            }
            let received = Arc::new(attributes.clone());
            for n in nlri {
                let key = (n.prefix, n.path_id.unwrap_or(0));
                let mut filtered = attributes.clone();
                let peer = self.peers.get_mut(&address).expect("present above");
                peer.adj_in.insert(key, (next_hop, received.clone()));
                let mut route = Route::new(n.prefix, &mut filtered, session_as);
                if Filter::apply_all(&import, &mut route) {
                    let next_hop =
                        imported_next_hop(route.next_hop, address, &n.prefix).unwrap_or(next_hop);
                    peer.rejected.remove(&key);
                    changes.extend(self.rib.update(id, &[key], next_hop, filtered, &[]));
                } else {
                    peer.rejected.insert(key);
                    changes.extend(self.rib.update(
                        id,
                        &[],
                        next_hop,
                        PathAttributes::default(),
                        &[key],
                    ));
                }
            }
        }
        self.after_rib_change(now, changes, &touched);
        self.check_prefix_limits(now, address);
    }

    /// Runs the peer's import filters again over what it sent: its Adj-RIB-In, kept while it
    /// has filters, or its paths in the RIB when it had none (`from_rib`). Paths kept stale
    /// for a graceful restart are left alone: the peer announces them again.
    pub(super) fn reimport(&mut self, now: Instant, address: IpAddr, from_rib: bool) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let id = peer.id;
        let received: Vec<((IpNet, u32), Received)> = if from_rib {
            self.rib
                .iter()
                .flat_map(|(prefix, paths)| {
                    paths
                        .iter()
                        .filter(|p| p.peer() == id && !p.stale())
                        .map(move |p| {
                            let attributes = Arc::new((**p.attributes()).clone());
                            ((prefix, p.path_id()), (p.next_hop(), attributes))
                        })
                })
                .collect()
        } else {
            peer.adj_in.drain().collect()
        };
        let (import, session_as) = (peer.config.import.clone(), peer.config.session.local_as);
        peer.rejected.clear();
        let mut changes = Vec::new();
        let mut touched = Vec::with_capacity(received.len());
        for (key, (next_hop, attributes)) in received {
            touched.push(key.0);
            let mut filtered = (*attributes).clone();
            let peer = self.peers.get_mut(&address).expect("present above");
            if !import.is_empty() {
                peer.adj_in.insert(key, (next_hop, attributes));
            }
            let mut route = Route::new(key.0, &mut filtered, session_as);
            if Filter::apply_all(&import, &mut route) {
                let next_hop =
                    imported_next_hop(route.next_hop, address, &key.0).unwrap_or(next_hop);
                changes.extend(self.rib.update(id, &[key], next_hop, filtered, &[]));
            } else {
                peer.rejected.insert(key);
                let none = PathAttributes::default();
                changes.extend(self.rib.update(id, &[], next_hop, none, &[key]));
            }
        }
        touched.sort();
        touched.dedup();
        self.after_rib_change(now, changes, &touched);
    }

    /// Programs the kernel and tells every other established peer.
    pub(super) fn after_rib_change(
        &mut self,
        now: Instant,
        changes: Vec<BestChange>,
        touched: &[IpNet],
    ) {
        self.emit_routes(changes);
        if touched.is_empty() {
            return;
        }
        // Every established peer, the source included: when the source's own path lost (a
        // withdrawal, a worse path), it must hear of the path that replaced it. Nothing goes
        // back to where it came from: `Rib::export` refuses that.
        let targets: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.session.state() == State::Established)
            .map(|(address, _)| *address)
            .collect();
        for address in targets {
            self.export_to(now, address, touched, false);
        }
    }

    /// Route changes for the kernel: our own originations are not installed. While our
    /// restart defers route selection (RFC 4724 §4.1) nothing is: the kernel keeps the
    /// routes from before, and gets the whole table once selection is done.
    pub(super) fn emit_routes(&mut self, changes: Vec<BestChange>) {
        if !self.route_output || self.restart.is_some() {
            return;
        }
        for mut change in changes {
            if change
                .paths
                .first()
                .is_some_and(|p| p.peer() == PeerId::LOCAL)
            {
                change.paths.clear();
            }
            change.paths.retain(|p| p.peer() != PeerId::LOCAL);
            self.actions.push_back(Action::Route(change));
        }
    }

    /// Route changes for the kernel again for every prefix inside `within` (their current best
    /// paths): after the kernel writer's exclusions changed, what it wrote (or skipped) before
    /// is brought in line.
    pub fn reemit_routes(&mut self, within: &[IpNet]) {
        let changes: Vec<BestChange> = self
            .rib
            .iter()
            .map(|(prefix, _)| prefix)
            .filter(|prefix| within.iter().any(|net| net.contains(prefix)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|prefix| BestChange {
                prefix,
                paths: self.rib.best(&prefix),
            })
            .collect();
        self.emit_routes(changes);
    }

    /// Sends a peer the table again: everything of `family` (or every family), re-sending what
    /// it already has (route refresh) and fixing what policy now decides differently.
    pub(super) fn readvertise(&mut self, now: Instant, address: IpAddr, family: Option<Family>) {
        let mut prefixes: Vec<IpNet> = self.rib.iter().map(|(p, _)| p).collect();
        if let Some(peer) = self.peers.get(&address) {
            prefixes.extend(peer.adj_out.keys().map(|(p, _)| *p));
        }
        prefixes.retain(|p| family.is_none_or(|f| f == family_of(p)));
        prefixes.sort();
        prefixes.dedup();
        self.export_to(now, address, &prefixes, family.is_some());
    }

    /// Brings the peer's Adj-RIB-Out for `prefixes` in line with the RIB; `force` re-sends
    /// announcements that did not change.
    fn export_to(&mut self, now: Instant, address: IpAddr, prefixes: &[IpNet], force: bool) {
        if self.restart.is_some() {
            // RFC 4724 §4.1: nothing is sent before route selection after our restart.
            return;
        }
        let Some(peer) = self.peers.get(&address) else {
            return;
        };
        let Some(negotiated) = peer.session.negotiated() else {
            return;
        };
        let (families, context) = (negotiated.families.clone(), negotiated.context.clone());
        let (id, local, export, other, session_as) = (
            peer.id,
            peer.local_address,
            peer.config.export.clone(),
            peer.config.next_hop_other,
            peer.config.session.local_as,
        );
        let mut outbox = Outbox::default();
        let mut shared: HashMap<PathAttributes, Arc<PathAttributes>> = HashMap::new();
        let mut adj_updates = Vec::new();
        for prefix in prefixes {
            let family = family_of(prefix);
            if !families.contains(&family) {
                continue;
            }
            let add_path = context.add_path_send.contains(&family);
            let paths = self.rib.paths(prefix);
            let chosen = if add_path {
                &paths[..paths.len().min(ADD_PATH_LIMIT)]
            } else {
                &paths[..paths.len().min(1)]
            };
            let mut desired = Vec::new();
            let mut sources = Vec::new();
            for path in chosen {
                let Some((next_hop, mut attributes)) = self.rib.export(id, path) else {
                    continue;
                };
                let mut route = Route::new(*prefix, &mut attributes, session_as);
                route.learned = path.peer() != crate::rib::PeerId::LOCAL;
                if !Filter::apply_all(&export, &mut route) {
                    continue;
                }
                let next_hop = match route.next_hop.and_then(|set| set.for_prefix(prefix)) {
                    Some(set) => set,
                    None => next_hop,
                };
                let configured = other.filter(|o| family_matches(*o, family));
                let Some(next_hop) = next_hop
                    .or(configured)
                    .or_else(|| local.and_then(|l| self_next_hop(l, family)))
                else {
                    continue;
                };
                let attributes = shared
                    .entry(attributes.clone())
                    .or_insert_with(|| Arc::new(attributes))
                    .clone();
                desired.push((0, next_hop, attributes));
                sources.push((path.peer(), path.path_id()));
            }
            let peer = self.peers.get_mut(&address).expect("present above");
            if add_path {
                let range = (*prefix, 0)..=(*prefix, u32::MAX);
                let announced: Vec<(u32, (PeerId, u32))> = peer
                    .add_path_ids
                    .range(range.clone())
                    .map(|((_, id), source)| (*id, *source))
                    .collect();
                let ids = assign_path_ids(&sources, &announced);
                for (entry, id) in desired.iter_mut().zip(&ids) {
                    entry.0 = *id;
                }
                for (id, _) in announced {
                    peer.add_path_ids.remove(&(*prefix, id));
                }
                for (id, source) in ids.into_iter().zip(sources) {
                    peer.add_path_ids.insert((*prefix, id), source);
                }
            }
            let current: Vec<(u32, IpAddr, Arc<PathAttributes>)> = peer
                .adj_out
                .range((*prefix, 0)..=(*prefix, u32::MAX))
                .map(|((_, pid), (nh, a))| (*pid, *nh, a.clone()))
                .collect();
            for (path_id, next_hop, attributes) in &desired {
                let unchanged = current
                    .iter()
                    .any(|(p, nh, a)| p == path_id && nh == next_hop && a == attributes);
                if force || !unchanged {
                    let nlri = Nlri {
                        path_id: add_path.then_some(*path_id),
                        prefix: *prefix,
                    };
                    outbox
                        .announce
                        .entry((*next_hop, attributes.clone()))
                        .or_default()
                        .push(nlri);
                    adj_updates.push(((*prefix, *path_id), Some((*next_hop, attributes.clone()))));
                }
            }
            for (path_id, _, _) in current
                .iter()
                .filter(|(p, _, _)| !desired.iter().any(|(d, _, _)| d == p))
            {
                let nlri = Nlri {
                    path_id: add_path.then_some(*path_id),
                    prefix: *prefix,
                };
                outbox.withdraw.entry(family).or_default().push(nlri);
                adj_updates.push(((*prefix, *path_id), None));
            }
        }
        let peer = self.peers.get_mut(&address).expect("present above");
        for (key, value) in adj_updates {
            match value {
                Some(entry) => peer.adj_out.insert(key, entry),
                None => peer.adj_out.remove(&key),
            };
        }
        for update in pack(outbox, &context) {
            if peer.session.send_update(now, update) {
                peer.updates_out += 1;
            }
        }
    }
}

/// Packs announcements and withdrawals into UPDATEs that fit the message size.
fn pack(outbox: Outbox, context: &Context) -> Vec<UpdateMsg> {
    let mut updates = Vec::new();
    let budget = context.max_message_len() - 19 - 4 - 64;
    for (family, nlri) in outbox.withdraw {
        let per_prefix = if family == Family::Ipv4Unicast { 9 } else { 21 };
        for chunk in nlri.chunks((budget / per_prefix).max(1)) {
            let mut update = UpdateMsg::default();
            if family == Family::Ipv4Unicast {
                update.withdrawn = chunk.to_vec();
            } else {
                update.attributes.mp_unreach = Some(Box::new(MpUnreach {
                    family,
                    withdrawn: chunk.to_vec(),
                }));
            }
            updates.push(update);
        }
    }
    for ((next_hop, attributes), nlri) in outbox.announce {
        let mut encoded = BytesMut::new();
        attributes.encode(&mut encoded, context);
        let room = budget.saturating_sub(encoded.len() + 40).max(64);
        let family = family_of(&nlri[0].prefix);
        let per_prefix = if family == Family::Ipv4Unicast { 9 } else { 21 };
        for chunk in nlri.chunks((room / per_prefix).max(1)) {
            let mut attrs = (*attributes).clone();
            let mut update = UpdateMsg::default();
            match (family, next_hop) {
                (Family::Ipv4Unicast, IpAddr::V4(v4)) => {
                    attrs.next_hop = Some(v4);
                    update.nlri = chunk.to_vec();
                }
                _ => {
                    let next_hop = match next_hop {
                        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                        v6 => v6,
                    };
                    attrs.mp_reach = Some(Box::new(MpReach {
                        family,
                        next_hops: vec![next_hop],
                        nlri: chunk.to_vec(),
                    }));
                }
            }
            update.attributes = attrs;
            updates.push(update);
        }
    }
    updates
}
