use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;
use crate::fsm::{self, GracefulRestartConfig};
use crate::policy::{Match, Rule};
use crate::wire::attribute::{AsPath, MpReach, Origin};
use crate::wire::open::{ADD_PATH_RECEIVE, ADD_PATH_SEND};
use crate::wire::{Context, Message, Nlri};

#[allow(clippy::disallowed_methods)] // The virtual clock's one reading.
fn epoch() -> Instant {
    Instant::now()
}

fn addr(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
}

fn prefix(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// Speakers on a virtual network, each known by its address.
struct Net {
    now: Instant,
    speakers: BTreeMap<IpAddr, Speaker>,
    /// Connection → (owner, the other end's connection, the owner's peer address).
    ends: HashMap<ConnectionId, (IpAddr, ConnectionId, IpAddr)>,
    next: u64,
    fib: BTreeMap<IpAddr, BTreeMap<IpNet, Vec<IpAddr>>>,
    /// Connections through which nothing is delivered (the peer is frozen or gone).
    cut: Vec<IpAddr>,
    /// Every message delivered: (sender, bytes).
    wire: Vec<(IpAddr, Bytes)>,
    /// Connections asked for and not yet up: (who connects, to whom). They come up once
    /// nothing else is left to do, all at once, like SYNs crossing: first every listener
    /// accepts, then every connecting side hears its connection is up.
    connecting: Vec<(IpAddr, IpAddr)>,
    /// Who opened each connection.
    opened_by: HashMap<ConnectionId, IpAddr>,
    /// Speakers that finished route selection after a restart, in order.
    selection_done: Vec<IpAddr>,
}

impl Net {
    fn new() -> Net {
        Net {
            now: epoch(),
            speakers: BTreeMap::new(),
            ends: HashMap::new(),
            next: 1,
            fib: BTreeMap::new(),
            cut: Vec::new(),
            wire: Vec::new(),
            connecting: Vec::new(),
            opened_by: HashMap::new(),
            selection_done: Vec::new(),
        }
    }

    fn add(&mut self, at: IpAddr, speaker: Speaker) {
        self.speakers.insert(at, speaker);
    }

    fn speaker(&mut self, at: IpAddr) -> &mut Speaker {
        self.speakers
            .get_mut(&at)
            .expect("a speaker at that address")
    }

    /// Carries out actions until the network is quiet.
    fn run(&mut self) {
        for _ in 0..10_000 {
            let mut pending = Vec::new();
            for (at, speaker) in &mut self.speakers {
                while let Some(action) = speaker.poll_action() {
                    pending.push((*at, action));
                }
            }
            if pending.is_empty() {
                if self.connecting.is_empty() {
                    return;
                }
                self.connect_all();
                continue;
            }
            for (at, action) in pending {
                self.carry_out(at, action);
            }
        }
        panic!("the network never went quiet");
    }

    fn carry_out(&mut self, at: IpAddr, action: Action) {
        let now = self.now;
        match action {
            Action::Connect(peer) => self.connecting.push((at, peer)),
            Action::Send(connection, bytes) => {
                let Some(&(_, other, peer)) = self.ends.get(&connection) else {
                    return;
                };
                if self.cut.contains(&peer) || self.cut.contains(&at) {
                    return;
                }
                self.wire.push((at, bytes.clone()));
                if let Some(speaker) = self.speakers.get_mut(&peer) {
                    speaker.handle_bytes(now, at, other, &bytes);
                }
            }
            Action::Close(connection) => {
                if let Some((_, other, peer)) = self.ends.remove(&connection) {
                    self.ends.remove(&other);
                    if let Some(speaker) = self.speakers.get_mut(&peer) {
                        speaker.handle_closed(now, at, other);
                    }
                }
            }
            Action::Route(change) => {
                let fib = self.fib.entry(at).or_default();
                if change.paths.is_empty() {
                    fib.remove(&change.prefix);
                } else {
                    fib.insert(
                        change.prefix,
                        change.paths.iter().map(|p| p.next_hop()).collect(),
                    );
                }
            }
            Action::SelectionDone => self.selection_done.push(at),
            Action::PeerUp(_) | Action::PeerDown(..) | Action::EndOfRib(..) => {}
        }
    }

    /// Brings up the connections asked for: every accept first, then every connect.
    fn connect_all(&mut self) {
        let now = self.now;
        let mut up = Vec::new();
        for (at, peer) in std::mem::take(&mut self.connecting) {
            let mine = ConnectionId(self.next);
            let theirs = ConnectionId(self.next + 1);
            self.next += 2;
            let reachable = !self.cut.contains(&peer)
                && self.speakers.get(&peer).is_some_and(|s| s.accepts(&at));
            if reachable {
                self.ends.insert(mine, (at, theirs, peer));
                self.ends.insert(theirs, (peer, mine, at));
                self.opened_by.insert(mine, at);
                self.opened_by.insert(theirs, at);
                self.speaker(peer)
                    .handle_connected(now, at, theirs, peer, true);
                up.push((at, peer, mine));
            } else {
                self.speaker(at).handle_closed(now, peer, mine);
            }
        }
        for (at, peer, mine) in up {
            if self.ends.contains_key(&mine) {
                self.speaker(at)
                    .handle_connected(now, peer, mine, at, false);
            }
        }
    }

    /// Advances virtual time in one-second steps.
    fn advance(&mut self, seconds: u64) {
        for _ in 0..seconds {
            self.now += Duration::from_secs(1);
            let now = self.now;
            for speaker in self.speakers.values_mut() {
                speaker.handle_timeout(now);
            }
            self.run();
        }
    }

    /// The messages `from` sent since the log was last cleared.
    fn sent_by(&self, from: IpAddr) -> Vec<Message> {
        let cx = Context {
            four_octet_as: true,
            ..Context::default()
        };
        let mut out = Vec::new();
        for (sender, bytes) in &self.wire {
            let mut rest: &[u8] = bytes;
            while let Ok(Some((message, len))) = Message::decode(rest, &cx) {
                if *sender == from {
                    out.push(message);
                }
                rest = &rest[len..];
            }
        }
        out
    }

    /// The connection `at` has to `peer`.
    fn connection(&self, at: IpAddr, peer: IpAddr) -> ConnectionId {
        *self
            .ends
            .iter()
            .find(|(_, (owner, _, other))| *owner == at && *other == peer)
            .expect("a connection")
            .0
    }

    fn established(&self, at: IpAddr, peer: IpAddr) -> bool {
        self.speakers[&at]
            .peers_status(self.now)
            .iter()
            .any(|s| s.address == peer && s.state == "Established")
    }
}

fn speaker(asn: u32, n: u8) -> Speaker {
    Speaker::new(SpeakerConfig {
        local_as: asn,
        router_id: Ipv4Addr::new(198, 18, 0, n),
        cluster_id: None,
        max_paths: 4,
        always_compare_med: false,
    })
}

fn neighbor(peer: u8, local_as: u32, remote_as: u32, me: u8) -> NeighborConfig {
    let mut session = fsm::Config::new(local_as, remote_as, Ipv4Addr::new(198, 18, 0, me));
    session.hold_time = 9;
    session.connect_retry = Duration::from_secs(2);
    session.idle_hold = Duration::from_secs(1);
    NeighborConfig {
        address: addr(peer),
        session,
        rr_client: false,
        next_hop_self: false,
        shared_subnet: None,
        next_hop_keep: false,
        next_hop_other: None,
        import: vec![],
        export: vec![],
        prefix_limits: Vec::new(),
        allowas_in: 0,
        local_as: None,
    }
}

fn originate(prefixes: &[&str], community: u32) -> BTreeMap<IpNet, PathAttributes> {
    prefixes
        .iter()
        .map(|p| {
            (
                prefix(p),
                PathAttributes {
                    origin: Some(Origin::Igp),
                    communities: vec![community],
                    ..PathAttributes::default()
                },
            )
        })
        .collect()
}

/// A (AS 65001, .1) and B (AS 65002, .2), eBGP.
fn two_speakers(a_neighbor: NeighborConfig, b_neighbor: NeighborConfig) -> Net {
    let mut net = Net::new();
    net.add(addr(1), speaker(65001, 1));
    net.add(addr(2), speaker(65002, 2));
    let now = net.now;
    net.speaker(addr(1)).set_neighbors(now, vec![a_neighbor]);
    net.speaker(addr(2)).set_neighbors(now, vec![b_neighbor]);
    net.run();
    net
}

#[test]
fn ebgp_speakers_exchange_routes_in_both_families_and_withdraw_them() {
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    assert!(net.established(addr(1), addr(2)) && net.established(addr(2), addr(1)));
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.1.0.0/24", "fd00:1::/64"], 0xfde9_0064));
    net.run();
    let paths = net.speakers[&addr(2)].rib().best(&prefix("10.1.0.0/24"));
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].next_hop(), addr(1));
    assert_eq!(
        paths[0]
            .attributes()
            .as_path
            .as_ref()
            .unwrap()
            .asns()
            .collect::<Vec<_>>(),
        vec![65001]
    );
    assert_eq!(paths[0].attributes().communities, vec![0xfde9_0064]);
    let v6 = net.speakers[&addr(2)].rib().best(&prefix("fd00:1::/64"));
    assert_eq!(
        v6[0].next_hop(),
        "::ffff:198.18.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(net.fib[&addr(2)][&prefix("10.1.0.0/24")], vec![addr(1)]);
    assert!(
        net.fib.get(&addr(1)).is_none_or(|f| f.is_empty()),
        "our own originations are not installed"
    );
    let status = &net.speakers[&addr(2)].peers_status(net.now)[0];
    assert_eq!(
        (status.received, status.accepted, status.state),
        (2, 2, "Established")
    );
    assert_eq!(
        net.speakers[&addr(1)].peers_status(net.now)[0].advertised,
        2
    );
    // Withdraw one.
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["fd00:1::/64"], 0xfde9_0064));
    net.run();
    assert!(net.speakers[&addr(2)]
        .rib()
        .best(&prefix("10.1.0.0/24"))
        .is_empty());
    assert!(!net.fib[&addr(2)].contains_key(&prefix("10.1.0.0/24")));
    // Keepalives keep it up for minutes.
    net.advance(60);
    assert!(net.established(addr(2), addr(1)));
}

#[test]
fn a_route_reflector_reflects_between_clients() {
    let mut net = Net::new();
    net.add(addr(1), speaker(65000, 1));
    net.add(addr(2), speaker(65000, 2));
    net.add(addr(3), speaker(65000, 3));
    let now = net.now;
    let mut to_2 = neighbor(2, 65000, 65000, 1);
    to_2.rr_client = true;
    let mut to_3 = neighbor(3, 65000, 65000, 1);
    to_3.rr_client = true;
    net.speaker(addr(1)).set_neighbors(now, vec![to_2, to_3]);
    net.speaker(addr(2))
        .set_neighbors(now, vec![neighbor(1, 65000, 65000, 2)]);
    net.speaker(addr(3))
        .set_neighbors(now, vec![neighbor(1, 65000, 65000, 3)]);
    net.speaker(addr(2))
        .set_originated(now, originate(&["10.2.0.0/26"], 1));
    net.run();
    let paths = net.speakers[&addr(3)].rib().best(&prefix("10.2.0.0/26"));
    assert_eq!(
        paths.len(),
        1,
        "client 3 learns client 2's block through the reflector"
    );
    assert_eq!(paths[0].next_hop(), addr(2), "the next hop is kept");
    assert_eq!(
        paths[0].attributes().originator_id,
        Some(Ipv4Addr::new(198, 18, 0, 2))
    );
    assert_eq!(
        *paths[0].attributes().cluster_list,
        [Ipv4Addr::new(198, 18, 0, 1)]
    );
    assert_eq!(paths[0].attributes().local_pref, Some(100));
}

#[test]
fn import_policy_counts_received_and_accepted() {
    let mut b = neighbor(1, 65002, 65001, 2);
    b.import = vec![Filter {
        rules: vec![Rule {
            matches: Match {
                prefixes: vec!["10.9.0.0/16 le 32".parse().unwrap()],
                ..Match::default()
            },
            accept: false,
            modify: Default::default(),
        }],
        default_accept: true,
    }];
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), b);
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.9.1.0/24", "10.10.0.0/24"], 1));
    net.run();
    let status = &net.speakers[&addr(2)].peers_status(net.now)[0];
    assert_eq!((status.received, status.accepted), (2, 1));
    assert!(net.speakers[&addr(2)]
        .rib()
        .best(&prefix("10.9.1.0/24"))
        .is_empty());
}

/// A filter of one accepting rule for everything, changing routes by `modify`.
fn changing(modify: crate::policy::Modify) -> Filter {
    Filter {
        rules: vec![Rule {
            matches: Match::default(),
            accept: true,
            modify,
        }],
        default_accept: true,
    }
}

#[test]
fn filters_set_the_next_hop_prepend_and_set_local_pref_on_ebgp_routes() {
    use crate::policy::{Modify, PrependTimes, SetNextHop};
    let mut a = neighbor(2, 65001, 65002, 1);
    a.export = vec![changing(Modify {
        next_hop: Some(SetNextHop::Address("198.18.0.9".parse().unwrap())),
        prepend_times: Some(PrependTimes {
            asn: None,
            times: 2,
        }),
        ..Modify::default()
    })];
    let mut b = neighbor(1, 65002, 65001, 2);
    b.import = vec![changing(Modify {
        local_pref: Some(250),
        ..Modify::default()
    })];
    let mut net = two_speakers(a, b);
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.1.0.0/24"], 1));
    net.run();
    let paths = net.speakers[&addr(2)].rib().best(&prefix("10.1.0.0/24"));
    assert_eq!(paths[0].next_hop(), "198.18.0.9".parse::<IpAddr>().unwrap());
    assert_eq!(
        paths[0]
            .attributes()
            .as_path
            .as_ref()
            .unwrap()
            .asns()
            .collect::<Vec<_>>(),
        vec![65001, 65001, 65001],
        "two by the filter, one as eBGP always does"
    );
    assert_eq!(
        paths[0].attributes().local_pref,
        Some(250),
        "an import filter's LOCAL_PREF stands on a route from eBGP (RFC 4271 §5.1.5 ignores \
         only the one received)"
    );
}

#[test]
fn an_import_filter_may_set_the_next_hop_to_the_neighbour_itself() {
    use crate::policy::{Modify, SetNextHop};
    let mut a = neighbor(2, 65001, 65002, 1);
    a.export = vec![changing(Modify {
        next_hop: Some(SetNextHop::Address("198.18.0.9".parse().unwrap())),
        ..Modify::default()
    })];
    let mut b = neighbor(1, 65002, 65001, 2);
    b.import = vec![changing(Modify {
        next_hop: Some(SetNextHop::Own),
        ..Modify::default()
    })];
    let mut net = two_speakers(a, b);
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.1.0.0/24"], 1));
    net.run();
    let paths = net.speakers[&addr(2)].rib().best(&prefix("10.1.0.0/24"));
    assert_eq!(paths[0].next_hop(), addr(1));
}

#[test]
fn allowas_in_accepts_paths_with_our_as_up_to_its_count() {
    for (allowas_in, accepted) in [(0, false), (1, true)] {
        let mut a = neighbor(2, 65001, 65002, 1);
        a.allowas_in = allowas_in;
        let mut net = two_speakers(a, neighbor(1, 65002, 65001, 2));
        let now = net.now;
        let mut routes = originate(&["10.1.0.0/24"], 1);
        for attributes in routes.values_mut() {
            // Learned by B from AS 65001 elsewhere (a site of A's AS, as with Calico's
            // numAllowedLocalASNumbers).
            attributes.as_path = Some(AsPath::sequence(vec![65001]));
        }
        net.speaker(addr(2)).set_originated(now, routes);
        net.run();
        let paths = net.speakers[&addr(1)].rib().best(&prefix("10.1.0.0/24"));
        assert_eq!(!paths.is_empty(), accepted, "allowas_in {allowas_in}");
    }
}

#[test]
fn local_as_is_what_the_peer_sees_in_the_open_and_the_paths() {
    use crate::rib::LocalAs;
    for (no_prepend, replace_as) in [(false, false), (true, true)] {
        let mut a = neighbor(2, 64999, 65002, 1);
        a.local_as = Some(LocalAs {
            asn: 64999,
            no_prepend,
            replace_as,
        });
        let mut net = Net::new();
        net.add(addr(1), speaker(65001, 1));
        net.add(addr(2), speaker(65002, 2));
        let now = net.now;
        net.speaker(addr(1)).set_neighbors(now, vec![a]);
        // B knows A as AS 64999 only.
        net.speaker(addr(2))
            .set_neighbors(now, vec![neighbor(1, 65002, 64999, 2)]);
        net.run();
        assert!(
            net.established(addr(1), addr(2)),
            "B takes A's OPEN as AS 64999"
        );
        net.speaker(addr(1))
            .set_originated(now, originate(&["10.1.0.0/24"], 1));
        net.speaker(addr(2))
            .set_originated(now, originate(&["10.2.0.0/24"], 1));
        net.run();
        let path_at = |at: u8, p: &str| -> Vec<u32> {
            let paths = net.speakers[&addr(at)].rib().best(&prefix(p));
            paths[0]
                .attributes()
                .as_path
                .as_ref()
                .unwrap()
                .asns()
                .collect()
        };
        let (sent, received) = (path_at(2, "10.1.0.0/24"), path_at(1, "10.2.0.0/24"));
        if replace_as {
            assert_eq!(sent, vec![64999], "replace-as: 65001 is hidden");
        } else {
            assert_eq!(sent, vec![64999, 65001]);
        }
        if no_prepend {
            assert_eq!(received, vec![65002]);
        } else {
            assert_eq!(received, vec![64999, 65002], "learned through 64999");
        }
    }
}

#[test]
fn rfc_7606_outcomes_are_counted_per_neighbour() {
    use crate::wire::attribute::{AttributeError, Remedy};
    use crate::wire::update::ErrorAction;
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    let now = net.now;
    let error = |remedy| AttributeError {
        code: 7,
        remedy,
        data: Bytes::new(),
        reason: "malformed attribute value",
    };
    let update = |action| UpdateMsg {
        nlri: vec![Nlri {
            path_id: None,
            prefix: prefix("10.7.0.0/24"),
        }],
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(vec![65001])),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
            ..PathAttributes::default()
        },
        error_action: action,
        ..UpdateMsg::default()
    };
    let b = net.speaker(addr(2));
    b.on_update(
        now,
        addr(1),
        update(ErrorAction::TreatAsWithdraw(vec![error(
            Remedy::TreatAsWithdraw,
        )])),
    );
    b.on_update(
        now,
        addr(1),
        update(ErrorAction::TreatAsWithdraw(vec![error(
            Remedy::TreatAsWithdraw,
        )])),
    );
    assert!(
        b.rib().best(&prefix("10.7.0.0/24")).is_empty(),
        "withdrawn, not announced"
    );
    b.on_update(
        now,
        addr(1),
        update(ErrorAction::Discarded(vec![error(Remedy::Discard)])),
    );
    assert_eq!(
        b.rib().best(&prefix("10.7.0.0/24")).len(),
        1,
        "the routes stand"
    );
    let status = &b.peers_status(now)[0];
    assert_eq!((status.treat_as_withdraw, status.attribute_discard), (2, 1));
}

#[test]
fn a_restarting_peers_routes_stay_stale_until_end_of_rib() {
    let mut a = neighbor(2, 65001, 65002, 1);
    a.session.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 120,
        restarting: false,
        forwarding_preserved: false,
    });
    let mut b = neighbor(1, 65002, 65001, 2);
    b.session.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 120,
        restarting: false,
        forwarding_preserved: false,
    });
    let mut net = two_speakers(a.clone(), b);
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.3.0.0/24", "10.4.0.0/24"], 1));
    net.run();
    // A dies without a NOTIFICATION: B sees the TCP connection drop.
    net.speakers.remove(&addr(1));
    let connections: Vec<ConnectionId> = net
        .ends
        .iter()
        .filter(|(_, (owner, _, _))| *owner == addr(1))
        .map(|(c, _)| *c)
        .collect();
    for connection in connections {
        net.carry_out(addr(1), Action::Close(connection));
    }
    net.run();
    let kept = net.speakers[&addr(2)].rib().best(&prefix("10.3.0.0/24"));
    assert!(kept[0].stale(), "kept as stale while A restarts");
    assert_eq!(
        net.fib[&addr(2)][&prefix("10.3.0.0/24")],
        vec![addr(1)],
        "forwarding continues"
    );
    // A comes back (restarting, forwarding preserved), now originating only 10.3.0.0/24.
    net.add(addr(1), speaker(65001, 1));
    let now = net.now;
    net.speaker(addr(1))
        .begin_restart(now, true, Duration::from_secs(120));
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.3.0.0/24"], 1));
    net.speaker(addr(1)).set_neighbors(now, vec![a]);
    net.run();
    net.advance(5);
    assert!(net.established(addr(2), addr(1)));
    let fresh = net.speakers[&addr(2)].rib().best(&prefix("10.3.0.0/24"));
    assert!(!fresh.is_empty() && !fresh[0].stale(), "re-sent and fresh");
    assert!(
        net.speakers[&addr(2)]
            .rib()
            .best(&prefix("10.4.0.0/24"))
            .is_empty(),
        "End-of-RIB swept what was not re-sent"
    );
    assert!(!net.fib[&addr(2)].contains_key(&prefix("10.4.0.0/24")));
}

/// Who opened the one connection left between .1 and .2, once both are up.
fn collision_winner(net: &Net) -> IpAddr {
    assert!(net.established(addr(1), addr(2)) && net.established(addr(2), addr(1)));
    assert_eq!(
        net.ends.len(),
        2,
        "exactly one connection (two ends) survives"
    );
    let connection = net.ends.keys().next().expect("one connection");
    net.opened_by[connection]
}

/// The Cease / Connection Collision Resolution NOTIFICATIONs sent (RFC 4271 §6.8).
fn collision_ceases(net: &Net) -> usize {
    [addr(1), addr(2)]
        .iter()
        .flat_map(|at| net.sent_by(*at))
        .filter(|m| {
            matches!(m, Message::Notification(n)
                if *n == NotificationMsg::new(ErrorCode::Cease, 7, Bytes::new()))
        })
        .count()
}

#[test]
fn both_sides_connecting_at_once_leave_one_session() {
    // The SYNs cross: each side accepts the other's connection, then its own comes up. The
    // connection opened by the higher BGP identifier (.2) stays (RFC 4271 §6.8).
    let net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    assert_eq!(collision_winner(&net), addr(2));
    assert_eq!(collision_ceases(&net), 1, "the other closed with Cease/7");
}

#[test]
fn a_collision_between_equal_bgp_identifiers_keeps_the_larger_as_connection() {
    // eBGP with one BGP identifier on both sides (RFC 6286 §2.2 allows it): the connection
    // opened by the side with the larger AS stays (RFC 6286 §2.3), here .1 (AS 65009).
    let mut net = Net::new();
    net.add(addr(1), speaker(65009, 7));
    net.add(addr(2), speaker(65002, 7));
    let now = net.now;
    net.speaker(addr(1))
        .set_neighbors(now, vec![neighbor(2, 65009, 65002, 7)]);
    net.speaker(addr(2))
        .set_neighbors(now, vec![neighbor(1, 65002, 65009, 7)]);
    net.run();
    assert_eq!(collision_winner(&net), addr(1));
    assert_eq!(collision_ceases(&net), 1, "the other closed with Cease/7");
}

#[test]
fn route_refresh_resends_the_table() {
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.5.0.0/24"], 1));
    net.run();
    let before = net.speakers[&addr(1)].peers_status(net.now)[0].updates_out;
    assert!(net.speaker(addr(2)).request_refresh(now, addr(1)));
    net.run();
    let after = net.speakers[&addr(1)].peers_status(net.now)[0].updates_out;
    assert!(
        after > before,
        "A sent its table again ({before} → {after})"
    );
}

#[test]
fn removing_a_neighbor_leaves_the_others_alone() {
    let mut net = Net::new();
    net.add(addr(1), speaker(65001, 1));
    net.add(addr(2), speaker(65002, 2));
    net.add(addr(3), speaker(65003, 3));
    let now = net.now;
    net.speaker(addr(1)).set_neighbors(
        now,
        vec![neighbor(2, 65001, 65002, 1), neighbor(3, 65001, 65003, 1)],
    );
    net.speaker(addr(2))
        .set_neighbors(now, vec![neighbor(1, 65002, 65001, 2)]);
    net.speaker(addr(3))
        .set_neighbors(now, vec![neighbor(1, 65003, 65001, 3)]);
    net.run();
    let up_before = net.speakers[&addr(1)]
        .peers_status(net.now)
        .iter()
        .find(|s| s.address == addr(3))
        .unwrap()
        .updates_out;
    net.speaker(addr(1))
        .set_neighbors(now, vec![neighbor(3, 65001, 65003, 1)]);
    net.run();
    let statuses = net.speakers[&addr(1)].peers_status(net.now);
    assert_eq!(statuses.len(), 1);
    assert_eq!(
        (statuses[0].state, statuses[0].updates_out),
        ("Established", up_before),
        "the other session was not reset"
    );
}

#[test]
fn a_peer_that_withdraws_learns_the_path_that_replaces_its_own() {
    // With and without route output (kernel) at X: re-export must not depend on it.
    for route_output in [true, false] {
        withdraw_and_replace(route_output);
    }
}

fn withdraw_and_replace(route_output: bool) {
    // A (.2) and B (.3) are eBGP peers of X (.1); both announce one prefix, A's path is shorter.
    let mut net = Net::new();
    net.add(addr(1), speaker(65001, 1));
    net.add(addr(2), speaker(65002, 2));
    net.add(addr(3), speaker(65003, 3));
    net.speaker(addr(1)).set_route_output(route_output);
    let now = net.now;
    net.speaker(addr(1)).set_neighbors(
        now,
        vec![neighbor(2, 65001, 65002, 1), neighbor(3, 65001, 65003, 1)],
    );
    net.speaker(addr(2))
        .set_neighbors(now, vec![neighbor(1, 65002, 65001, 2)]);
    net.speaker(addr(3))
        .set_neighbors(now, vec![neighbor(1, 65003, 65001, 3)]);
    net.speaker(addr(2))
        .set_originated(now, originate(&["10.40.0.0/24"], 1));
    let mut longer = originate(&["10.40.0.0/24"], 1);
    for attributes in longer.values_mut() {
        attributes.as_path = Some(crate::wire::attribute::AsPath::sequence(vec![65003, 65003]));
    }
    net.speaker(addr(3)).set_originated(now, longer);
    net.run();
    assert_eq!(
        net.speakers[&addr(1)].rib().best(&prefix("10.40.0.0/24"))[0].next_hop(),
        addr(2)
    );
    // A stops announcing it: X's best becomes B's path, and A must now hear about it from X.
    net.speaker(addr(2)).set_originated(now, BTreeMap::new());
    net.run();
    assert_eq!(
        net.speakers[&addr(1)].rib().best(&prefix("10.40.0.0/24"))[0].next_hop(),
        addr(3)
    );
    let at_a = net.speakers[&addr(2)].rib().best(&prefix("10.40.0.0/24"));
    assert_eq!(at_a.len(), 1, "A learns B's path through X");
    assert_eq!(
        at_a[0]
            .attributes()
            .as_path
            .as_ref()
            .unwrap()
            .asns()
            .collect::<Vec<_>>(),
        vec![65001, 65003, 65003, 65003]
    );
}

fn refresh_marker(message: &Message) -> Option<(Family, u8)> {
    match message {
        Message::RouteRefresh(r) => Some((r.family, r.subtype)),
        _ => None,
    }
}

#[test]
fn a_refresh_for_an_enhanced_peer_is_bracketed_by_borr_and_eorr() {
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.5.0.0/24", "fd00:5::/64"], 1));
    net.run();
    net.wire.clear();
    assert!(net.speaker(addr(2)).request_refresh(now, addr(1)));
    net.run();
    let sent = net.sent_by(addr(1));
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let begin = sent
            .iter()
            .position(|m| refresh_marker(m) == Some((family, 1)))
            .unwrap_or_else(|| panic!("BoRR for {family} in {sent:?}"));
        let end = sent
            .iter()
            .position(|m| refresh_marker(m) == Some((family, 2)))
            .unwrap_or_else(|| panic!("EoRR for {family} in {sent:?}"));
        let updates = sent[begin..end]
            .iter()
            .filter(|m| matches!(m, Message::Update(_)))
            .count();
        assert!(
            begin < end && updates >= 1,
            "the routes sit between the markers: {sent:?}"
        );
    }
    // B, the asker, took the markers as a refresh: nothing it had is gone.
    let rib = net.speakers[&addr(2)].rib();
    assert_eq!(rib.len(), 2);
    assert!(rib.iter().all(|(_, paths)| !paths[0].refreshing()));
}

/// A and B up, A announcing two IPv4 prefixes; then A's side of the session is played by
/// hand: a refresh that announces only the first.
fn refresh_that_forgets_one(end_with_eorr: bool) -> Net {
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.6.0.0/24", "10.7.0.0/24"], 1));
    net.run();
    assert_eq!(net.speakers[&addr(2)].rib().len(), 2);
    let cx = Context {
        four_octet_as: true,
        ..Context::default()
    };
    let refresh = |subtype| {
        Message::RouteRefresh(RouteRefreshMsg {
            family: Family::Ipv4Unicast,
            subtype,
        })
        .encode(&cx)
    };
    let update = Message::Update(Box::new(UpdateMsg {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(crate::wire::attribute::AsPath::sequence(vec![65001])),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
            communities: vec![1],
            ..PathAttributes::default()
        },
        nlri: vec![crate::wire::Nlri::new(prefix("10.6.0.0/24"))],
        ..UpdateMsg::default()
    }))
    .encode(&cx);
    let connection = net.connection(addr(2), addr(1));
    let b = net.speaker(addr(2));
    b.handle_bytes(now, addr(1), connection, &refresh(1));
    b.handle_bytes(now, addr(1), connection, &update);
    assert_eq!(b.rib().len(), 2, "during the refresh nothing goes yet");
    if end_with_eorr {
        b.handle_bytes(now, addr(1), connection, &refresh(2));
    }
    net.run();
    net
}

#[test]
fn end_of_rib_refresh_removes_what_the_peer_did_not_announce_again() {
    let net = refresh_that_forgets_one(true);
    let rib = net.speakers[&addr(2)].rib();
    assert!(
        rib.paths(&prefix("10.7.0.0/24")).is_empty(),
        "not announced again: gone"
    );
    let kept = rib.paths(&prefix("10.6.0.0/24"));
    assert!(
        kept.len() == 1 && !kept[0].refreshing(),
        "announced again: kept, fresh"
    );
    assert!(
        !net.fib[&addr(2)].contains_key(&prefix("10.7.0.0/24")),
        "and gone from forwarding"
    );
}

#[test]
fn a_refresh_without_its_end_times_out() {
    let mut net = refresh_that_forgets_one(false);
    net.advance(ENHANCED_REFRESH_STALE_TIME.as_secs() - 5);
    assert_eq!(
        net.speakers[&addr(2)].rib().len(),
        2,
        "still waiting for EoRR"
    );
    net.advance(10);
    let rib = net.speakers[&addr(2)].rib();
    assert!(rib.paths(&prefix("10.7.0.0/24")).is_empty());
    assert_eq!(rib.paths(&prefix("10.6.0.0/24")).len(), 1);
    assert!(net.established(addr(2), addr(1)), "the session stays up");
}

/// An UPDATE as the peer's session would frame it.
fn update_bytes(update: UpdateMsg) -> Bytes {
    let cx = Context {
        four_octet_as: true,
        ..Context::default()
    };
    Message::Update(Box::new(update)).encode(&cx)
}

fn announcement(nlri: Vec<IpNet>, mp: Option<(Family, IpAddr)>) -> UpdateMsg {
    let nlri: Vec<Nlri> = nlri
        .into_iter()
        .map(|prefix| Nlri {
            path_id: None,
            prefix,
        })
        .collect();
    let mut attributes = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(vec![65002])),
        ..PathAttributes::default()
    };
    let mut update = UpdateMsg::default();
    match mp {
        Some((family, next_hop)) => {
            attributes.mp_reach = Some(Box::new(MpReach {
                family,
                next_hops: vec![next_hop],
                nlri,
            }))
        }
        None => {
            attributes.next_hop = Some(Ipv4Addr::new(198, 18, 0, 2));
            update.nlri = nlri;
        }
    }
    update.attributes = attributes;
    update
}

#[test]
fn routes_of_a_family_the_session_did_not_negotiate_are_refused() {
    // A offers only one family to B; B sends routes of both anyway.
    for (offered, refused, taken) in [
        (Family::Ipv4Unicast, "fd00:7::/64", "10.7.0.0/24"),
        (Family::Ipv6Unicast, "10.7.0.0/24", "fd00:7::/64"),
    ] {
        let mut a = neighbor(2, 65001, 65002, 1);
        a.session.families = vec![offered];
        let mut net = two_speakers(a, neighbor(1, 65002, 65001, 2));
        assert!(net.established(addr(1), addr(2)));
        let connection = net.connection(addr(1), addr(2));
        let now = net.now;
        let v6_next_hop: IpAddr = "fd00::2".parse().unwrap();
        for text in [refused, taken] {
            let p = prefix(text);
            let update = if p.addr().is_ipv4() {
                announcement(vec![p], None)
            } else {
                announcement(vec![p], Some((Family::Ipv6Unicast, v6_next_hop)))
            };
            net.speaker(addr(1))
                .handle_bytes(now, addr(2), connection, &update_bytes(update));
        }
        net.run();
        let rib = net.speakers[&addr(1)].rib();
        assert!(
            rib.best(&prefix(refused)).is_empty(),
            "{refused} on a session of {offered} only"
        );
        assert_eq!(rib.best(&prefix(taken)).len(), 1, "{taken} is negotiated");
        assert!(
            net.established(addr(1), addr(2)),
            "refused, not a session error"
        );
    }
}

#[test]
fn add_path_identifiers_sent_to_a_peer_never_collide() {
    // A hears 10.8.0.0/24 from B (.2, no add-path: identifier 0) and from C (.3, add-path,
    // identifier 0x30000), and sends both paths to D (.4) with add-path. A numbers its peers
    // .2, .3, .4 as 1, 2, 3; (1, 0) and (2, 0x30000) once made one identifier, so D kept
    // only one of the two paths.
    let mut net = Net::new();
    for (n, asn) in [(1, 65001), (2, 65002), (3, 65003), (4, 65004)] {
        net.add(addr(n), speaker(asn, n));
    }
    let mut to_c = neighbor(3, 65001, 65003, 1);
    to_c.session.add_path = vec![(Family::Ipv4Unicast, ADD_PATH_RECEIVE)];
    let mut to_d = neighbor(4, 65001, 65004, 1);
    to_d.session.add_path = vec![(Family::Ipv4Unicast, ADD_PATH_SEND)];
    let mut c = neighbor(1, 65003, 65001, 3);
    c.session.add_path = vec![(Family::Ipv4Unicast, ADD_PATH_SEND)];
    let mut d = neighbor(1, 65004, 65001, 4);
    d.session.add_path = vec![(Family::Ipv4Unicast, ADD_PATH_RECEIVE)];
    let now = net.now;
    net.speaker(addr(1))
        .set_neighbors(now, vec![neighbor(2, 65001, 65002, 1), to_c, to_d]);
    net.speaker(addr(2))
        .set_neighbors(now, vec![neighbor(1, 65002, 65001, 2)]);
    net.speaker(addr(3)).set_neighbors(now, vec![c]);
    net.speaker(addr(4)).set_neighbors(now, vec![d]);
    net.run();
    assert!([2, 3, 4].iter().all(|n| net.established(addr(1), addr(*n))));
    let p = prefix("10.8.0.0/24");
    net.speaker(addr(2))
        .set_originated(now, originate(&["10.8.0.0/24"], 0xfdea_0001));
    let update = UpdateMsg {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(vec![65003])),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, 3)),
            ..PathAttributes::default()
        },
        nlri: vec![Nlri {
            path_id: Some(0x30000),
            prefix: p,
        }],
        ..UpdateMsg::default()
    };
    let cx = Context {
        four_octet_as: true,
        add_path_send: [Family::Ipv4Unicast].into_iter().collect(),
        ..Context::default()
    };
    let connection = net.connection(addr(1), addr(3));
    net.speaker(addr(1)).handle_bytes(
        now,
        addr(3),
        connection,
        &Message::Update(Box::new(update)).encode(&cx),
    );
    net.run();
    assert_eq!(net.speakers[&addr(1)].rib().paths(&p).len(), 2);
    let at_d: Vec<u32> = net.speakers[&addr(4)]
        .rib()
        .paths(&p)
        .iter()
        .map(|path| path.path_id())
        .collect();
    assert_eq!(at_d.len(), 2, "D has both paths, by identifiers {at_d:?}");
    // Withdrawing one path withdraws exactly its identifier.
    net.speaker(addr(2)).set_originated(now, BTreeMap::new());
    net.run();
    assert_eq!(net.speakers[&addr(4)].rib().paths(&p).len(), 1);
}

#[test]
fn a_passive_speaker_takes_its_peers_connection_again_right_after_an_error() {
    // A listens (passive, with a long idle hold); B connects. An error ends the session;
    // B is back one idle hold (1 s) later, and A must not refuse it for A's back-off.
    let mut a = neighbor(2, 65001, 65002, 1);
    a.session.passive = true;
    a.session.idle_hold = Duration::from_secs(60);
    a.session.idle_hold_max = Duration::from_secs(60);
    let mut net = two_speakers(a, neighbor(1, 65002, 65001, 2));
    assert!(net.established(addr(1), addr(2)));
    for round in 0..3 {
        let connection = net.connection(addr(1), addr(2));
        let now = net.now;
        let mut bad = vec![0xff; 16];
        bad.extend_from_slice(&[0x00, 0x05, 0x04]);
        net.speaker(addr(1))
            .handle_bytes(now, addr(2), connection, &bad);
        net.run();
        assert!(
            !net.established(addr(1), addr(2)),
            "round {round}: the error ends it"
        );
        net.advance(5);
        assert!(
            net.established(addr(1), addr(2)) && net.established(addr(2), addr(1)),
            "round {round}: up again within B's retry, whatever A's back-off"
        );
    }
}

#[test]
fn a_passive_speaker_keeps_the_peers_second_connection_when_the_first_is_lost() {
    // A (router ID .9, above B's .2) listens. B connects twice; the first connection is lost
    // while A is in OpenSent. With no connection of A's own left there is no collision to
    // resolve (RFC 4271 §6.8): the second connection is the session, not refused.
    let mut a = Speaker::new(SpeakerConfig {
        local_as: 65001,
        router_id: Ipv4Addr::new(198, 18, 0, 9),
        cluster_id: None,
        max_paths: 1,
        always_compare_med: false,
    });
    let mut config = neighbor(2, 65001, 65002, 9);
    config.session.passive = true;
    let now = epoch();
    a.set_neighbors(now, vec![config]);
    let (first, second) = (ConnectionId(1), ConnectionId(2));
    a.handle_connected(now, addr(2), first, addr(9), true);
    a.handle_connected(now, addr(2), second, addr(9), true);
    a.handle_closed(now, addr(2), first);
    std::iter::from_fn(|| a.poll_action()).for_each(drop);
    let b = fsm::Config::new(65002, 65001, Ipv4Addr::new(198, 18, 0, 2));
    let cx = Context::initial();
    let mut bytes = Message::Open(b.open()).encode(&cx).to_vec();
    bytes.extend_from_slice(&Message::Keepalive.encode(&cx));
    a.handle_bytes(now, addr(2), second, &bytes);
    let actions: Vec<Action> = std::iter::from_fn(|| a.poll_action()).collect();
    assert!(!actions.contains(&Action::Close(second)), "{actions:?}");
    assert!(actions.contains(&Action::PeerUp(addr(2))), "{actions:?}");
}

/// B (.2, AS 65002, passive) alone, with its peer A (.1, AS 65001) played by hand: A's side
/// of each connection is written as bytes, so the test decides when A's End-of-RIB comes.
struct HandPeer {
    b: Speaker,
    now: Instant,
    connection: u64,
}

impl HandPeer {
    fn new() -> HandPeer {
        let mut b = speaker(65002, 2);
        let mut config = neighbor(1, 65002, 65001, 2);
        config.session.passive = true;
        let now = epoch();
        b.set_neighbors(now, vec![config]);
        HandPeer {
            b,
            now,
            connection: 0,
        }
    }

    /// A connects and opens a session (graceful restart, `restarting` = R bit and
    /// forwarding preserved; hold time 0 so no keepalives are needed).
    fn connect(&mut self, restarting: bool) {
        self.connection += 1;
        let id = ConnectionId(self.connection);
        self.b
            .handle_connected(self.now, addr(1), id, addr(2), true);
        let mut a = fsm::Config::new(65001, 65002, Ipv4Addr::new(198, 18, 0, 1));
        a.hold_time = 0;
        a.graceful_restart = Some(GracefulRestartConfig {
            restart_time: 120,
            restarting,
            forwarding_preserved: restarting,
        });
        let cx = Context::initial();
        let mut bytes = Message::Open(a.open()).encode(&cx).to_vec();
        bytes.extend_from_slice(&Message::Keepalive.encode(&cx));
        self.b.handle_bytes(self.now, addr(1), id, &bytes);
        self.drain();
        assert_eq!(self.b.peers_status(self.now)[0].state, "Established");
    }

    fn announce(&mut self, prefixes: &[&str]) {
        let mut update = announcement(prefixes.iter().map(|p| prefix(p)).collect(), None);
        update.attributes.as_path = Some(AsPath::sequence(vec![65001]));
        update.attributes.next_hop = Some(Ipv4Addr::new(198, 18, 0, 1));
        let id = ConnectionId(self.connection);
        self.b
            .handle_bytes(self.now, addr(1), id, &update_bytes(update));
        self.drain();
    }

    fn end_of_rib(&mut self) {
        let id = ConnectionId(self.connection);
        let bytes = update_bytes(UpdateMsg::end_of_rib_for(Family::Ipv4Unicast));
        self.b.handle_bytes(self.now, addr(1), id, &bytes);
        self.drain();
    }

    /// A's TCP connection drops, without a NOTIFICATION.
    fn drop_connection(&mut self) {
        let id = ConnectionId(self.connection);
        self.b.handle_closed(self.now, addr(1), id);
        self.drain();
    }

    fn advance(&mut self, seconds: u64) {
        for _ in 0..seconds {
            self.now += Duration::from_secs(1);
            self.b.handle_timeout(self.now);
            self.drain();
        }
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.b.poll_action()).collect()
    }

    /// The path B has for a prefix: `None`, or `Some(stale)`.
    fn path(&self, text: &str) -> Option<bool> {
        self.b.rib().paths(&prefix(text)).first().map(|p| p.stale())
    }
}

#[test]
fn a_restarting_peers_stale_routes_wait_for_its_end_of_rib_after_it_is_back() {
    // A restarts with a restart time of 120 s and is back after 100 s, but its End-of-RIB
    // takes longer. RFC 4724 §4.2: the restart time bounds only the wait for the new
    // session; once A is back, the wait for End-of-RIB starts over (FRR's stale-path time).
    let mut net = HandPeer::new();
    net.connect(false);
    net.announce(&["10.3.0.0/24", "10.4.0.0/24"]);
    net.end_of_rib();
    net.drop_connection();
    assert_eq!(net.path("10.4.0.0/24"), Some(true), "kept as stale");
    net.advance(100);
    net.connect(true);
    net.announce(&["10.3.0.0/24"]);
    net.advance(40);
    assert_eq!(
        net.path("10.4.0.0/24"),
        Some(true),
        "past the old restart deadline, still waiting for End-of-RIB"
    );
    assert_eq!(net.path("10.3.0.0/24"), Some(false));
    net.advance(STALE_PATH_TIME.as_secs());
    assert_eq!(
        net.path("10.4.0.0/24"),
        None,
        "no End-of-RIB within the stale-path time: swept"
    );
    assert_eq!(net.path("10.3.0.0/24"), Some(false), "fresh paths stay");
}

#[test]
fn a_second_restart_before_end_of_rib_deletes_what_is_still_stale() {
    // RFC 4724 §4.2: A restarts, comes back, announces 10.3 again but not 10.4, and restarts
    // again before its End-of-RIB. 10.4 was stale from the first restart and goes; 10.3,
    // fresh, becomes stale in its turn.
    let mut net = HandPeer::new();
    net.connect(false);
    net.announce(&["10.3.0.0/24", "10.4.0.0/24"]);
    net.end_of_rib();
    net.drop_connection();
    net.advance(10);
    net.connect(true);
    net.announce(&["10.3.0.0/24"]);
    net.drop_connection();
    assert_eq!(net.path("10.4.0.0/24"), None, "stale twice: deleted");
    assert_eq!(net.path("10.3.0.0/24"), Some(true), "fresh, now stale");
    net.advance(10);
    net.connect(true);
    net.end_of_rib();
    assert_eq!(net.path("10.3.0.0/24"), None, "not announced again: swept");
}

fn graceful(mut config: NeighborConfig) -> NeighborConfig {
    config.session.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 120,
        restarting: false,
        forwarding_preserved: false,
    });
    config
}

#[test]
fn shutdown_sends_an_administrative_shutdown_with_its_message_and_stays_down() {
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    net.wire.clear();
    net.speaker(addr(1)).shutdown("twill-bgpd stopping");
    net.run();
    let ceases: Vec<NotificationMsg> = net
        .sent_by(addr(1))
        .into_iter()
        .filter_map(|m| match m {
            Message::Notification(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut data = vec![19u8];
    data.extend_from_slice(b"twill-bgpd stopping");
    assert_eq!(
        ceases,
        vec![NotificationMsg::new(ErrorCode::Cease, 2, Bytes::from(data))],
        "one Cease / Administrative Shutdown with the RFC 8203 message"
    );
    assert!(net.ends.is_empty(), "the connection is closed");
    net.advance(30);
    assert!(!net.established(addr(2), addr(1)), "A never comes back");
}

#[test]
fn a_graceful_restart_stop_sends_no_notification_and_the_peer_keeps_our_routes() {
    let mut net = two_speakers(
        graceful(neighbor(2, 65001, 65002, 1)),
        graceful(neighbor(1, 65002, 65001, 2)),
    );
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.3.0.0/24"], 1));
    net.run();
    net.wire.clear();
    net.speaker(addr(1)).stop_for_restart(now);
    net.run();
    assert!(
        !net.sent_by(addr(1))
            .iter()
            .any(|m| matches!(m, Message::Notification(_))),
        "no NOTIFICATION"
    );
    assert!(net.ends.is_empty(), "the connection is closed");
    let kept = net.speakers[&addr(2)].rib().best(&prefix("10.3.0.0/24"));
    assert!(
        kept.len() == 1 && kept[0].stale(),
        "B keeps A's route, stale"
    );
}

#[test]
fn a_shutdown_communication_is_cut_at_255_octets_on_a_character_boundary() {
    let data = fsm::shutdown_communication(&"é".repeat(200));
    assert_eq!(data[0], 254);
    assert!(std::str::from_utf8(&data[1..]).is_ok());
    assert_eq!(fsm::shutdown_communication("")[..], [0]);
}

#[test]
fn making_a_peer_a_route_reflector_client_on_reload_reflects_its_routes_to_the_others() {
    // X (.1) has iBGP peers .2 and .3, not clients: .2's route does not go to .3. A reload
    // makes .2 a client, and .3 must now hear .2's route, with no session reset.
    let mut net = Net::new();
    for n in [1, 2, 3] {
        net.add(addr(n), speaker(65000, n));
    }
    let now = net.now;
    let (to_2, to_3) = (neighbor(2, 65000, 65000, 1), neighbor(3, 65000, 65000, 1));
    net.speaker(addr(1))
        .set_neighbors(now, vec![to_2.clone(), to_3.clone()]);
    net.speaker(addr(2))
        .set_neighbors(now, vec![neighbor(1, 65000, 65000, 2)]);
    net.speaker(addr(3))
        .set_neighbors(now, vec![neighbor(1, 65000, 65000, 3)]);
    net.speaker(addr(2))
        .set_originated(now, originate(&["10.2.0.0/26"], 1));
    net.run();
    let p = prefix("10.2.0.0/26");
    assert!(
        net.speakers[&addr(3)].rib().best(&p).is_empty(),
        "not reflected"
    );
    let mut client = to_2.clone();
    client.rr_client = true;
    net.speaker(addr(1))
        .set_neighbors(now, vec![client, to_3.clone()]);
    net.run();
    assert_eq!(
        net.speakers[&addr(3)].rib().best(&p).len(),
        1,
        "reflected to .3 once .2 is a client"
    );
    net.speaker(addr(1)).set_neighbors(now, vec![to_2, to_3]);
    net.run();
    assert!(
        net.speakers[&addr(3)].rib().best(&p).is_empty(),
        "withdrawn from .3 once .2 is no longer a client"
    );
    assert!(net.established(addr(1), addr(2)) && net.established(addr(1), addr(3)));
}

fn reject(prefixes: &str) -> Filter {
    Filter {
        rules: vec![Rule {
            matches: Match {
                prefixes: vec![prefixes.parse().unwrap()],
                ..Match::default()
            },
            accept: false,
            modify: Default::default(),
        }],
        default_accept: true,
    }
}

#[test]
fn an_import_filter_changed_on_reload_is_applied_to_the_routes_already_received() {
    // B rejects 10.9.0.0/16 from A. A reload without the filter takes A's 10.9.1.0/24; one
    // with a filter on 10.10.0.0/16 drops that one. No ROUTE-REFRESH, no session reset.
    let mut b = neighbor(1, 65002, 65001, 2);
    b.import = vec![reject("10.9.0.0/16 le 32")];
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), b.clone());
    let now = net.now;
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.9.1.0/24", "10.10.0.0/24"], 1));
    net.run();
    let (nine, ten) = (prefix("10.9.1.0/24"), prefix("10.10.0.0/24"));
    assert!(net.speakers[&addr(2)].rib().best(&nine).is_empty());
    net.wire.clear();
    b.import = vec![];
    net.speaker(addr(2)).set_neighbors(now, vec![b.clone()]);
    net.run();
    assert_eq!(
        net.speakers[&addr(2)].rib().best(&nine).len(),
        1,
        "taken now"
    );
    let status = &net.speakers[&addr(2)].peers_status(net.now)[0];
    assert_eq!((status.received, status.accepted), (2, 2));
    b.import = vec![reject("10.10.0.0/16 le 32")];
    net.speaker(addr(2)).set_neighbors(now, vec![b]);
    net.run();
    let rib = net.speakers[&addr(2)].rib();
    assert!(rib.best(&ten).is_empty(), "rejected now");
    assert_eq!(rib.best(&nine).len(), 1);
    assert!(
        !net.fib[&addr(2)].contains_key(&ten),
        "and gone from forwarding"
    );
    let status = &net.speakers[&addr(2)].peers_status(net.now)[0];
    assert_eq!((status.received, status.accepted), (2, 1));
    assert!(
        !net.sent_by(addr(2))
            .iter()
            .any(|m| matches!(m, Message::RouteRefresh(_))),
        "no refresh asked"
    );
    assert!(net.established(addr(2), addr(1)));
}

#[test]
fn a_reload_during_a_graceful_restart_resets_no_session() {
    // twill-bgpd --graceful-restart sets the R bit on every neighbour; the configuration
    // read again on SIGHUP does not. That difference alone must not restart a session.
    let mut net = Net::new();
    net.add(addr(1), speaker(65001, 1));
    net.add(addr(2), speaker(65002, 2));
    let now = net.now;
    net.speaker(addr(1))
        .begin_restart(now, true, Duration::from_secs(120));
    net.speaker(addr(1)).set_neighbors(
        now,
        vec![
            graceful(neighbor(2, 65001, 65002, 1)),
            graceful(neighbor(3, 65001, 65003, 1)),
        ],
    );
    net.speaker(addr(2))
        .set_neighbors(now, vec![graceful(neighbor(1, 65002, 65001, 2))]);
    net.run();
    assert!(net.established(addr(1), addr(2)));
    assert!(net.speakers[&addr(1)].restarting(), "waiting for .3");
    net.wire.clear();
    let now = net.now;
    net.speaker(addr(1)).set_neighbors(
        now,
        vec![
            graceful(neighbor(2, 65001, 65002, 1)),
            graceful(neighbor(3, 65001, 65003, 1)),
        ],
    );
    net.run();
    assert!(
        !net.sent_by(addr(1))
            .iter()
            .any(|m| matches!(m, Message::Notification(_) | Message::Open(_))),
        "the session was reset: {:?}",
        net.sent_by(addr(1))
    );
    assert!(net.established(addr(1), addr(2)));
}

/// The graceful restart capability in each OPEN `from` sent: (R bit, F bits).
fn restart_bits(net: &Net, from: IpAddr) -> Vec<(bool, Vec<bool>)> {
    net.sent_by(from)
        .iter()
        .filter_map(|m| match m {
            Message::Open(open) => open.capabilities.iter().find_map(|c| match c {
                crate::wire::Capability::GracefulRestart(gr) => {
                    Some((gr.restarting, gr.families.iter().map(|(_, f)| *f).collect()))
                }
                _ => None,
            }),
            _ => None,
        })
        .collect()
}

/// Drops every connection of `at`'s (both ends see it close), as a cable pulled.
fn drop_connections(net: &mut Net, at: IpAddr) {
    let connections: Vec<ConnectionId> = net
        .ends
        .iter()
        .filter(|(_, (owner, _, _))| *owner == at)
        .map(|(c, _)| *c)
        .collect();
    let now = net.now;
    for connection in connections {
        if let Some((_, other, peer)) = net.ends.remove(&connection) {
            net.ends.remove(&other);
            net.speaker(peer).handle_closed(now, at, other);
            net.speaker(at).handle_closed(now, peer, connection);
        }
    }
    net.run();
}

#[test]
fn the_r_bit_is_sent_only_until_every_peers_end_of_rib() {
    // RFC 4724 §4.1: the R bit says "I have restarted"; once route selection is done (every
    // peer's End-of-RIB here), a later OPEN (the session reset) must not say it again, or the
    // peer would take a session reset for a restart. F bits follow forwarding preserved.
    let mut net = Net::new();
    net.add(addr(1), speaker(65001, 1));
    net.add(addr(2), speaker(65002, 2));
    let now = net.now;
    net.speaker(addr(1))
        .begin_restart(now, true, Duration::from_secs(120));
    net.speaker(addr(1))
        .set_neighbors(now, vec![graceful(neighbor(2, 65001, 65002, 1))]);
    net.speaker(addr(2))
        .set_neighbors(now, vec![graceful(neighbor(1, 65002, 65001, 2))]);
    net.run();
    assert!(net.established(addr(1), addr(2)));
    let first = restart_bits(&net, addr(1));
    assert!(!first.is_empty());
    assert!(
        first.iter().all(|(r, f)| *r && f.iter().all(|f| *f)),
        "restarting, forwarding preserved: {first:?}"
    );
    assert!(
        !net.speakers[&addr(1)].restarting(),
        "B's End-of-RIB ended it"
    );
    assert_eq!(net.selection_done, vec![addr(1)]);
    net.wire.clear();
    drop_connections(&mut net, addr(1));
    net.advance(10);
    assert!(net.established(addr(1), addr(2)));
    let again = restart_bits(&net, addr(1));
    assert!(!again.is_empty());
    assert!(
        again.iter().all(|(r, f)| !*r && f.iter().all(|f| !*f)),
        "no R bit, no F bits once the restart is over: {again:?}"
    );
}

#[test]
fn forwarding_bits_are_clear_when_forwarding_was_not_preserved() {
    let mut net = Net::new();
    net.add(addr(1), speaker(65001, 1));
    net.add(addr(2), speaker(65002, 2));
    let now = net.now;
    net.speaker(addr(1))
        .begin_restart(now, false, Duration::from_secs(120));
    net.speaker(addr(1))
        .set_neighbors(now, vec![graceful(neighbor(2, 65001, 65002, 1))]);
    net.speaker(addr(2))
        .set_neighbors(now, vec![graceful(neighbor(1, 65002, 65001, 2))]);
    net.run();
    let bits = restart_bits(&net, addr(1));
    assert!(
        !bits.is_empty() && bits.iter().all(|(r, f)| *r && f.iter().all(|f| !*f)),
        "{bits:?}"
    );
}

#[test]
fn a_restarting_speaker_defers_selection_until_end_of_rib_or_the_deferral_timer() {
    // RFC 4724 §4.1: A restarts with two neighbours; B is back at once, C never. Until the
    // deferral timer A installs nothing new and sends B nothing (no routes, no End-of-RIB);
    // then the whole table goes to the kernel (before the sweep of what was not learned
    // again) and to B, followed by End-of-RIB.
    let mut net = Net::new();
    net.add(addr(1), speaker(65001, 1));
    net.add(addr(2), speaker(65002, 2));
    let now = net.now;
    net.speaker(addr(1))
        .begin_restart(now, true, Duration::from_secs(60));
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.1.0.0/24"], 1));
    net.speaker(addr(1)).set_neighbors(
        now,
        vec![
            graceful(neighbor(2, 65001, 65002, 1)),
            graceful(neighbor(3, 65001, 65003, 1)),
        ],
    );
    net.speaker(addr(2))
        .set_originated(now, originate(&["10.2.0.0/24"], 2));
    net.speaker(addr(2))
        .set_neighbors(now, vec![graceful(neighbor(1, 65002, 65001, 2))]);
    net.run();
    net.advance(30);
    assert!(net.established(addr(1), addr(2)));
    assert_eq!(
        net.speakers[&addr(1)]
            .rib()
            .best(&prefix("10.2.0.0/24"))
            .len(),
        1,
        "B's routes are taken in"
    );
    assert!(
        net.fib.get(&addr(1)).is_none_or(|f| f.is_empty()),
        "but not installed yet"
    );
    assert!(
        !net.sent_by(addr(1))
            .iter()
            .any(|m| matches!(m, Message::Update(_))),
        "nothing sent to B before selection is done"
    );
    assert!(net.selection_done.is_empty());
    net.advance(31);
    assert_eq!(net.selection_done, vec![addr(1)]);
    assert_eq!(net.fib[&addr(1)][&prefix("10.2.0.0/24")], vec![addr(2)]);
    assert_eq!(
        net.speakers[&addr(2)]
            .rib()
            .best(&prefix("10.1.0.0/24"))
            .len(),
        1
    );
    let updates: Vec<UpdateMsg> = net
        .sent_by(addr(1))
        .into_iter()
        .filter_map(|m| match m {
            Message::Update(u) => Some(*u),
            _ => None,
        })
        .collect();
    let first_eor = updates.iter().position(|u| u.end_of_rib().is_some());
    let last_route = updates.iter().rposition(|u| !u.nlri.is_empty());
    assert!(
        first_eor > last_route,
        "End-of-RIB after the routes: {updates:?}"
    );
}

#[test]
fn rib_queries_parse() {
    let parse = |text: &str| text.parse::<RibQuery>();
    assert_eq!(
        parse("").unwrap(),
        RibQuery {
            table: RibTable::Loc,
            prefixes: PrefixQuery::All
        }
    );
    assert_eq!(
        parse("10.1.2.3").unwrap().prefixes,
        PrefixQuery::LongestMatch("10.1.2.3".parse().unwrap())
    );
    assert_eq!(
        parse("10.1.2.3/24").unwrap().prefixes,
        PrefixQuery::Exact(prefix("10.1.2.0/24")),
        "host bits are dropped"
    );
    assert_eq!(
        parse("--peer 198.18.0.2 --out fd00::/64").unwrap(),
        RibQuery {
            table: RibTable::Out(addr(2)),
            prefixes: PrefixQuery::Exact(prefix("fd00::/64"))
        }
    );
    assert_eq!(
        parse("--in --peer 198.18.0.2").unwrap().table,
        RibTable::In(addr(2))
    );
    for (bad, reason) in [
        ("--peer 198.18.0.2", "--peer needs --in or --out"),
        ("--in", "--in needs --peer"),
        ("--peer nope --in", "is not an address"),
        ("10.0.0.0/8 10.0.0.0/16", "one prefix or address at most"),
        ("ten", "neither a prefix nor an address"),
    ] {
        let error = parse(bad).unwrap_err();
        assert!(error.contains(reason), "{bad}: {error}");
    }
}

/// A (.1) with an import filter refusing 10.1.2.0/24 from B (.2), which originates
/// 10.1.0.0/16 and 10.1.2.0/24; A originates 10.9.0.0/24.
fn views_net() -> Net {
    let mut to_b = neighbor(2, 65001, 65002, 1);
    to_b.import = vec![reject("10.1.2.0/24")];
    let mut net = two_speakers(to_b, neighbor(1, 65002, 65001, 2));
    let now = net.now;
    net.speaker(addr(2))
        .set_originated(now, originate(&["10.1.0.0/16", "10.1.2.0/24"], 2));
    net.speaker(addr(1))
        .set_originated(now, originate(&["10.9.0.0/24"], 1));
    net.run();
    net
}

fn shown(speaker: &Speaker, query: &str) -> Vec<(IpNet, Option<IpAddr>, bool)> {
    let query: RibQuery = query.parse().unwrap();
    let mut prefixes = speaker.rib_prefixes(&query).unwrap();
    prefixes.sort();
    speaker
        .rib_rows(&query, &prefixes)
        .into_iter()
        .map(|row| (row.prefix, row.from, row.best))
        .collect()
}

#[test]
fn the_rib_shows_one_prefix_by_longest_match_or_exactly() {
    let net = views_net();
    let b = &net.speakers[&addr(2)];
    let a_path = |p: &str| vec![(prefix(p), Some(addr(1)), true)];
    let own = |p: &str| vec![(prefix(p), None, true)];
    assert_eq!(shown(b, "10.1.2.3"), own("10.1.2.0/24"), "longest match");
    assert_eq!(shown(b, "10.1.9.9"), own("10.1.0.0/16"));
    assert_eq!(shown(b, "10.9.0.77"), a_path("10.9.0.0/24"));
    assert_eq!(shown(b, "10.1.0.0/16"), own("10.1.0.0/16"), "exact");
    assert!(shown(b, "10.1.0.0/24").is_empty(), "exact: no such prefix");
    assert!(shown(b, "192.0.2.1").is_empty(), "nothing covers it");
    assert_eq!(shown(b, "").len(), 3);
}

#[test]
fn adj_rib_in_shows_what_the_peer_sent_and_adj_rib_out_what_we_announce() {
    let net = views_net();
    let a = &net.speakers[&addr(1)];
    let from_b = |p: &str| (prefix(p), Some(addr(2)), false);
    assert_eq!(
        shown(a, "--peer 198.18.0.2 --in"),
        vec![from_b("10.1.0.0/16"), from_b("10.1.2.0/24")],
        "before import policy: the refused prefix too"
    );
    assert_eq!(
        shown(a, ""),
        vec![
            (prefix("10.1.0.0/16"), Some(addr(2)), true),
            (prefix("10.9.0.0/24"), None, true)
        ],
        "the Loc-RIB has only what policy accepted"
    );
    assert_eq!(
        shown(a, "--peer 198.18.0.2 --in 10.1.2.9"),
        vec![from_b("10.1.2.0/24")]
    );
    assert_eq!(
        shown(a, "--peer 198.18.0.2 --out"),
        vec![from_b("10.9.0.0/24")]
    );
    let out: RibQuery = "--peer 198.18.0.2 --out".parse().unwrap();
    let row = &a.rib_rows(&out, &[prefix("10.9.0.0/24")])[0];
    assert_eq!(
        row.attributes
            .as_path
            .as_ref()
            .unwrap()
            .asns()
            .collect::<Vec<_>>(),
        vec![65001],
        "as sent: our AS prepended"
    );
    assert_eq!(row.next_hop, addr(1));
    let b = &net.speakers[&addr(2)];
    assert_eq!(
        shown(b, "--peer 198.18.0.1 --in"),
        vec![(prefix("10.9.0.0/24"), Some(addr(1)), false)],
        "without import filters, the peer's paths in the RIB"
    );
    assert!(a
        .rib_prefixes(&"--peer 198.18.0.9 --in".parse().unwrap())
        .unwrap_err()
        .contains("not a neighbour"));
}

#[test]
fn a_rib_listed_in_chunks_leaves_out_what_went_meanwhile() {
    let mut net = views_net();
    let query = RibQuery {
        table: RibTable::Loc,
        prefixes: PrefixQuery::All,
    };
    let b = &net.speakers[&addr(2)];
    let mut prefixes = b.rib_prefixes(&query).unwrap();
    prefixes.sort();
    let whole = b.rib_rows(&query, &prefixes);
    let chunked: Vec<RibRow> = prefixes
        .chunks(2)
        .flat_map(|chunk| b.rib_rows(&query, chunk))
        .collect();
    assert_eq!(whole, chunked);
    let now = net.now;
    net.speaker(addr(1)).set_originated(now, BTreeMap::new());
    net.run();
    let later = net.speakers[&addr(2)].rib_rows(&query, &prefixes);
    assert_eq!(later.len(), 2, "10.9.0.0/24 was withdrawn: {later:?}");
}

#[test]
fn a_disabled_neighbour_gets_an_administrative_shutdown_and_stays_down_until_enabled() {
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    let now = net.now;
    net.speaker(addr(2))
        .set_originated(now, originate(&["10.2.0.0/24"], 2));
    net.run();
    assert_eq!(net.fib[&addr(1)][&prefix("10.2.0.0/24")], vec![addr(2)]);
    net.wire.clear();
    let now = net.now;
    assert!(net.speaker(addr(1)).set_enabled(now, addr(2), false));
    net.run();
    let ceases: Vec<(ErrorCode, u8)> = net
        .sent_by(addr(1))
        .iter()
        .filter_map(|m| match m {
            Message::Notification(n) => Some((n.code, n.subcode)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ceases,
        vec![(ErrorCode::Cease, 2)],
        "Cease / Administrative Shutdown"
    );
    assert!(!net.fib[&addr(1)].contains_key(&prefix("10.2.0.0/24")));
    net.advance(60);
    assert!(
        !net.established(addr(1), addr(2)),
        "B's connections are refused"
    );
    let status = &net.speakers[&addr(1)].peers_status(net.now)[0];
    assert!(status.disabled && status.state == "Idle", "{status:?}");
    // A reload keeps it disabled, even one that changes the session.
    let mut changed = neighbor(2, 65001, 65002, 1);
    changed.session.hold_time = 30;
    let now = net.now;
    net.speaker(addr(1)).set_neighbors(now, vec![changed]);
    net.advance(20);
    assert!(!net.established(addr(1), addr(2)));
    let now = net.now;
    assert!(net.speaker(addr(1)).set_enabled(now, addr(2), true));
    net.advance(10);
    assert!(net.established(addr(1), addr(2)));
    assert_eq!(net.fib[&addr(1)][&prefix("10.2.0.0/24")], vec![addr(2)]);
    assert!(!net.speaker(addr(1)).set_enabled(now, addr(9), false));
}

/// B (.2) announcing `count` IPv4 prefixes 10.50.N.0/24 to A (.1), whose limit is `limit`.
fn over_the_limit(limit: PrefixLimit, count: u8) -> Net {
    let mut to_b = neighbor(2, 65001, 65002, 1);
    to_b.prefix_limits = vec![limit];
    let mut net = two_speakers(to_b, neighbor(1, 65002, 65001, 2));
    let prefixes: Vec<String> = (0..count).map(|n| format!("10.50.{n}.0/24")).collect();
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let now = net.now;
    net.wire.clear();
    net.speaker(addr(2))
        .set_originated(now, originate(&prefixes, 2));
    net.run();
    net
}

fn notifications(net: &Net, from: IpAddr) -> Vec<NotificationMsg> {
    net.sent_by(from)
        .into_iter()
        .filter_map(|m| match m {
            Message::Notification(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn a_prefix_limit_ends_the_session_with_the_rfc_4486_cease() {
    let limit = PrefixLimit {
        family: Family::Ipv4Unicast,
        max: 3,
        action: LimitAction::Drop,
    };
    let mut net = over_the_limit(limit, 4);
    let sent = notifications(&net, addr(1));
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].code, sent[0].subcode), (ErrorCode::Cease, 1));
    // RFC 4486 §4: AFI 1, SAFI 1, the upper bound 3.
    assert_eq!(&sent[0].data[..], &[0, 1, 1, 0, 0, 0, 3]);
    assert!(
        net.fib[&addr(1)].is_empty(),
        "the peer's routes went with it"
    );
    net.advance(120);
    let status = &net.speakers[&addr(1)].peers_status(net.now)[0];
    assert!(
        status.disabled && status.state == "Idle",
        "down until enabled"
    );
    assert!(status
        .last_error
        .as_deref()
        .unwrap()
        .contains("prefix limit of 3"));
    let now = net.now;
    net.speaker(addr(1)).set_enabled(now, addr(2), true);
    net.advance(5);
    assert!(
        !net.established(addr(1), addr(2)),
        "still over: dropped again"
    );
}

#[test]
fn a_prefix_limit_at_its_bound_or_in_another_family_does_nothing() {
    let limit = PrefixLimit {
        family: Family::Ipv4Unicast,
        max: 4,
        action: LimitAction::Drop,
    };
    let net = over_the_limit(limit, 4);
    assert!(notifications(&net, addr(1)).is_empty());
    assert_eq!(net.fib[&addr(1)].len(), 4);
    let v6 = PrefixLimit {
        family: Family::Ipv6Unicast,
        max: 1,
        action: LimitAction::Drop,
    };
    let net = over_the_limit(v6, 4);
    assert!(notifications(&net, addr(1)).is_empty());
}

#[test]
fn a_prefix_limit_that_warns_keeps_the_session_and_one_that_restarts_comes_back() {
    let warn = PrefixLimit {
        family: Family::Ipv4Unicast,
        max: 1,
        action: LimitAction::Warn,
    };
    let net = over_the_limit(warn, 3);
    assert!(notifications(&net, addr(1)).is_empty());
    assert!(net.established(addr(1), addr(2)));
    assert_eq!(net.fib[&addr(1)].len(), 3);
    let restart = PrefixLimit {
        family: Family::Ipv4Unicast,
        max: 1,
        action: LimitAction::Restart(Duration::from_secs(30)),
    };
    let mut net = over_the_limit(restart, 3);
    assert_eq!(notifications(&net, addr(1)).len(), 1);
    net.advance(20);
    assert!(!net.established(addr(1), addr(2)), "down for 30 s");
    net.wire.clear();
    net.advance(11);
    assert_eq!(
        notifications(&net, addr(1)).len(),
        1,
        "started again after 30 s, and over the limit again"
    );
}

/// RFC 4486 §3: a neighbour taken out of the configuration hears Cease / Peer De-configured
/// (subcode 3); one whose session parameters changed, Cease / Other Configuration Change
/// (subcode 6) before the session starts again.
#[test]
fn a_reload_ends_sessions_with_the_cease_subcode_that_says_why() {
    let ceases = |net: &mut Net| -> Vec<(ErrorCode, u8)> {
        net.sent_by(addr(1))
            .iter()
            .filter_map(|m| match m {
                Message::Notification(n) => Some((n.code, n.subcode)),
                _ => None,
            })
            .collect()
    };
    let mut net = two_speakers(neighbor(2, 65001, 65002, 1), neighbor(1, 65002, 65001, 2));
    net.run();
    assert!(net.established(addr(1), addr(2)));
    net.wire.clear();
    let mut changed = neighbor(2, 65001, 65002, 1);
    changed.session.hold_time = 30;
    let now = net.now;
    net.speaker(addr(1)).set_neighbors(now, vec![changed]);
    net.run();
    assert_eq!(
        ceases(&mut net),
        vec![(ErrorCode::Cease, 6)],
        "Other Configuration Change"
    );
    net.advance(20);
    assert!(net.established(addr(1), addr(2)), "and it comes back");
    net.wire.clear();
    let now = net.now;
    net.speaker(addr(1)).set_neighbors(now, vec![]);
    net.run();
    assert_eq!(
        ceases(&mut net),
        vec![(ErrorCode::Cease, 3)],
        "Peer De-configured"
    );
}

/// A reload that lowers a neighbour's prefix limit below what it already sent ends the
/// session with the RFC 4486 Cease at once, with no new UPDATE needed.
#[test]
fn a_prefix_limit_lowered_on_reload_below_what_the_peer_sent_ends_the_session() {
    let generous = PrefixLimit {
        family: Family::Ipv4Unicast,
        max: 10,
        action: LimitAction::Drop,
    };
    let mut net = over_the_limit(generous, 4);
    assert!(notifications(&net, addr(1)).is_empty(), "under the limit");
    assert_eq!(net.fib[&addr(1)].len(), 4);
    net.wire.clear();
    let mut lowered = neighbor(2, 65001, 65002, 1);
    lowered.prefix_limits = vec![PrefixLimit { max: 3, ..generous }];
    let now = net.now;
    net.speaker(addr(1)).set_neighbors(now, vec![lowered]);
    net.run();
    let sent = notifications(&net, addr(1));
    assert_eq!(
        sent.iter().map(|n| (n.code, n.subcode)).collect::<Vec<_>>(),
        vec![(ErrorCode::Cease, 1)],
        "{sent:?}"
    );
}
