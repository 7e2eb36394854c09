//! The speaker: sessions, RIB and policy composed into the one sans-IO object a daemon drives.
//!
//! The driver owns sockets and the clock. It tells the speaker about connections
//! ([`Speaker::handle_connected`], [`Speaker::handle_closed`]), bytes
//! ([`Speaker::handle_bytes`]) and time ([`Speaker::handle_timeout`]), and carries out
//! [`Action`]s from [`Speaker::poll_action`]: connect, send, close, and route changes for the
//! kernel. Each connection has a driver-chosen [`ConnectionId`]; during a collision (RFC 4271
//! §6.8) a neighbour has two, and the speaker keeps the one the BGP identifiers choose.

mod export;
mod malformed;
mod show;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;

pub use self::malformed::Outcome;
pub use self::show::{PrefixQuery, RibQuery, RibRow, RibTable};
use crate::fsm::{self, DownReason, Input, Output, Session, State};
use crate::policy::Filter;
pub use crate::rib::LocalAs;
use crate::rib::{BestChange, PeerId, PeerInfo, Rib, RibConfig};
use crate::wire::attribute::PathAttributes;
use crate::wire::{ErrorCode, Family, NotificationMsg, RouteRefreshMsg, UpdateMsg};

/// A connection, as numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// One neighbour's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighborConfig {
    /// The neighbour's address.
    pub address: IpAddr,
    /// Session parameters (AS numbers, timers, capabilities, passive).
    pub session: fsm::Config,
    /// A route reflector client of ours.
    pub rr_client: bool,
    /// Announce ourselves as next hop also to iBGP peers.
    pub next_hop_self: bool,
    /// The subnet shared with an external peer (see [`crate::rib::PeerInfo::shared_subnet`]).
    pub shared_subnet: Option<IpNet>,
    /// Keep paths' next hops, also towards an external peer.
    pub next_hop_keep: bool,
    /// Our next hop for the other family than the session's (an IPv6 address on an IPv4
    /// session, or the reverse); without it an IPv4 session announces IPv6 routes with the
    /// IPv4-mapped address.
    pub next_hop_other: Option<IpAddr>,
    /// Import filters, in order.
    pub import: Vec<Filter>,
    /// Export filters, in order.
    pub export: Vec<Filter>,
    /// Most prefixes accepted per family (after import policy), and what then.
    pub prefix_limits: Vec<PrefixLimit>,
    /// Paths with our AS in them up to this many times are accepted (see
    /// [`PeerInfo::allowas_in`]).
    pub allowas_in: u8,
    /// The AS this session uses instead of ours (FRR's `local-as`); `session.local_as` is
    /// set to it too, for the OPEN.
    pub local_as: Option<LocalAs>,
}

/// A prefix limit (BIRD's `import limit`, FRR's `maximum-prefix`): the most paths of a
/// family a neighbour may have accepted, after import policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLimit {
    /// The family counted.
    pub family: Family,
    /// The most paths allowed.
    pub max: u32,
    /// What happens above it.
    pub action: LimitAction,
}

/// What happens when a neighbour goes above its prefix limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    /// Log a warning (once, until the count is back under the limit).
    Warn,
    /// End the session with Cease / Maximum Number of Prefixes Reached (RFC 4486) and keep
    /// it down until `twillctl bgp enable`.
    Drop,
    /// The same, then start the session again after this long.
    Restart(Duration),
}

/// How long an enhanced route refresh from a peer may take before the routes it did not
/// announce again are removed anyway (RFC 7313 §4 leaves the value open; 360 s is the usual
/// default of routers' stale-path timers).
pub const ENHANCED_REFRESH_STALE_TIME: Duration = Duration::from_secs(360);

/// Graceful restart helper: once a restarting peer is back, how long its stale paths wait
/// for its End-of-RIB (RFC 4724 §4.2 allows such an upper bound; 360 s is FRR's
/// `stalepath-time` default). The peer's restart time bounds only the wait for the session.
pub const STALE_PATH_TIME: Duration = Duration::from_secs(360);

/// Speaker-wide configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route reflector cluster ID (default: the router ID).
    pub cluster_id: Option<Ipv4Addr>,
    /// Paths per prefix installed for ECMP.
    pub max_paths: usize,
    /// Compare MED across neighbouring ASes too (see [`RibConfig::always_compare_med`]).
    pub always_compare_med: bool,
}

/// What the speaker asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to this neighbour and report it with `handle_connected`.
    Connect(IpAddr),
    /// Write bytes to a connection.
    Send(ConnectionId, Bytes),
    /// Close a connection.
    Close(ConnectionId),
    /// The ECMP set of a prefix changed: program the kernel.
    Route(BestChange),
    /// A session came up.
    PeerUp(IpAddr),
    /// A session went down.
    PeerDown(IpAddr, String),
    /// A neighbour finished sending its routes of a family (End-of-RIB, RFC 4724).
    EndOfRib(IpAddr, Family),
    /// Route selection after our restart is done (RFC 4724 §4.1): every route is in the
    /// [`Action::Route`]s before this one, so kernel routes from before the restart that were
    /// not written again can go.
    SelectionDone,
}

/// What `twillctl bgp peers` shows for one neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The neighbour's address.
    pub address: IpAddr,
    /// Its AS.
    pub remote_as: u32,
    /// RFC 4271 state name.
    pub state: &'static str,
    /// Seconds since Established (0 when not).
    pub uptime_s: u64,
    /// Prefixes the neighbour announces (before import policy).
    pub received: usize,
    /// Prefixes accepted by import policy.
    pub accepted: usize,
    /// Prefixes we announce to it.
    pub advertised: usize,
    /// The last error.
    pub last_error: Option<String>,
    /// Disabled by the operator.
    pub disabled: bool,
    /// UPDATE messages received.
    pub updates_in: u64,
    /// UPDATE messages sent.
    pub updates_out: u64,
    /// UPDATEs whose routes were treated as withdrawn (RFC 7606).
    pub treat_as_withdraw: u64,
    /// UPDATEs that had attributes discarded (RFC 7606).
    pub attribute_discard: u64,
}

/// Our own restart (RFC 4724 §4.1), from a start with `--graceful-restart` until route
/// selection is done: every neighbour's End-of-RIB, or the selection deferral timer.
#[derive(Debug)]
struct Restart {
    /// When selection goes ahead whatever is missing (the Selection_Deferral_Timer).
    deadline: Instant,
    /// Our forwarding state survived the restart (the F bits).
    forwarding_preserved: bool,
    /// End-of-RIBs received, per neighbour and family.
    end_of_rib: HashSet<(IpAddr, Family)>,
}

/// A path as a peer sent it: next hop and attributes, before import policy.
type Received = (IpAddr, Arc<PathAttributes>);

/// Why a neighbour's session is ended by configuration (RFC 4486 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// It is gone from the configuration: Cease / Peer De-configured.
    Deconfigured,
    /// Its session parameters changed and it starts again: Cease / Other Configuration Change.
    Reconfigured,
}

/// A neighbour's live state.
#[derive(Debug)]
struct Peer {
    id: PeerId,
    config: NeighborConfig,
    session: Session,
    /// The connection the session runs on.
    connection: Option<ConnectionId>,
    /// Our address on that connection.
    local_address: Option<IpAddr>,
    /// Whether the peer opened `connection` (we accepted it).
    inbound: bool,
    /// A second connection during a collision (RFC 4271 §6.8), with its own session: the
    /// peer's, or ours when it comes up after the peer's was accepted.
    contender: Option<(ConnectionId, IpAddr, Session)>,
    /// Whether the peer opened the contender.
    contender_inbound: bool,
    /// What we announced: (prefix, path id) → (next hop, attributes).
    adj_out: BTreeMap<(IpNet, u32), (IpAddr, Arc<PathAttributes>)>,
    /// With add-path (RFC 7911): the path behind each identifier we announced, (prefix, our
    /// identifier) → (source peer, its identifier). Ours are numbered per prefix, so two
    /// paths of one prefix never share one.
    add_path_ids: BTreeMap<(IpNet, u32), (PeerId, u32)>,
    /// Announced prefixes that import policy rejected (received = accepted + these).
    rejected: HashSet<(IpNet, u32)>,
    /// What the peer announced, before import policy, when it has import filters (without
    /// them the RIB holds exactly that): a changed filter is run over it again.
    adj_in: HashMap<(IpNet, u32), Received>,
    established_at: Option<Instant>,
    /// Stale paths are dropped at this instant (graceful restart helper).
    restart_deadline: Option<Instant>,
    /// Families in an enhanced route refresh from the peer, with when it times out.
    refreshing: BTreeMap<Family, Instant>,
    /// The restart time the peer announced in its last session (RFC 4724), if any.
    peer_restart_time: Option<u16>,
    /// Stopped by the operator (`twillctl bgp disable`), or by a prefix limit, until
    /// enabled again.
    disabled: bool,
    /// Families over their prefix limit already warned about.
    limit_warned: HashSet<Family>,
    /// Stopped by a prefix limit: started again at this instant.
    limit_restart_at: Option<Instant>,
    updates_in: u64,
    updates_out: u64,
    /// RFC 7606 outcomes of the neighbour's UPDATEs.
    malformed: malformed::Malformed,
}

/// The sans-IO BGP speaker.
#[derive(Debug)]
pub struct Speaker {
    config: SpeakerConfig,
    rib: Rib,
    peers: BTreeMap<IpAddr, Peer>,
    originated: BTreeMap<IpNet, PathAttributes>,
    actions: VecDeque<Action>,
    next_peer_id: u32,
    /// Whether route changes are reported ([`Action::Route`]); off when nothing installs them.
    route_output: bool,
    /// Our restart, while its route selection is deferred.
    restart: Option<Restart>,
}

impl Speaker {
    /// A speaker with no neighbours.
    pub fn new(config: SpeakerConfig) -> Speaker {
        let rib = Rib::new(RibConfig {
            local_as: config.local_as,
            router_id: config.router_id,
            cluster_id: config.cluster_id.unwrap_or(config.router_id),
            max_paths: config.max_paths.max(1),
            always_compare_med: config.always_compare_med,
        });
        Speaker {
            config,
            rib,
            peers: BTreeMap::new(),
            originated: BTreeMap::new(),
            actions: VecDeque::new(),
            next_peer_id: 1,
            route_output: true,
            restart: None,
        }
    }

    /// We are restarting (RFC 4724 §4.1; call before the first [`Speaker::set_neighbors`]):
    /// OPENs carry the R bit, and the F bits when `forwarding_preserved`, until route
    /// selection is done. Selection is deferred until every neighbour is up and has sent
    /// End-of-RIB for each family (neighbours without graceful restart, or restarting
    /// themselves, are not waited for: RFC 4724 §4.1 excludes them), or until `deferral`
    /// has passed. Meanwhile routes received go into the RIB, but nothing is installed or
    /// sent; then the whole table is, followed by [`Action::SelectionDone`] and End-of-RIB.
    pub fn begin_restart(&mut self, now: Instant, forwarding_preserved: bool, deferral: Duration) {
        self.restart = Some(Restart {
            deadline: now + deferral,
            forwarding_preserved,
            end_of_rib: HashSet::new(),
        });
        let addresses: Vec<IpAddr> = self.peers.keys().copied().collect();
        for address in addresses {
            self.stamp_restart_bits(address);
        }
    }

    /// Whether our restart's route selection is still deferred.
    pub fn restarting(&self) -> bool {
        self.restart.is_some()
    }

    /// The graceful restart capability a neighbour's next OPEN carries: R and F bits from
    /// our restart state, not from configuration.
    fn restart_bits(&self, config: &mut NeighborConfig) {
        if let Some(gr) = config.session.graceful_restart.as_mut() {
            gr.restarting = self.restart.is_some();
            gr.forwarding_preserved = self
                .restart
                .as_ref()
                .is_some_and(|r| r.forwarding_preserved);
        }
    }

    fn stamp_restart_bits(&mut self, address: IpAddr) {
        let Some(mut config) = self.peers.get(&address).map(|p| p.config.clone()) else {
            return;
        };
        self.restart_bits(&mut config);
        let peer = self.peers.get_mut(&address).expect("present above");
        peer.session
            .set_graceful_restart(config.session.graceful_restart);
        peer.config = config;
    }

    /// RFC 4724 §4.1: selection is done once every neighbour is up and has sent End-of-RIB
    /// for each family it negotiated — but for neighbours that announced no graceful
    /// restart, or restart themselves (they wait for ours) — or once the deferral timer
    /// has passed.
    fn check_restart(&mut self, now: Instant) {
        let Some(restart) = self.restart.as_ref() else {
            return;
        };
        let timed_out = restart.deadline <= now;
        let complete = self.peers.iter().all(|(address, peer)| {
            if peer.disabled {
                return true;
            }
            let Some(negotiated) = peer.session.negotiated() else {
                return false;
            };
            let waited_for = negotiated
                .peer_graceful_restart
                .as_ref()
                .is_some_and(|gr| !gr.restarting);
            !waited_for
                || negotiated
                    .families
                    .iter()
                    .all(|f| restart.end_of_rib.contains(&(*address, *f)))
        });
        if !complete && !timed_out {
            return;
        }
        if timed_out && !complete {
            tracing::warn!("selection deferral timer expired: going ahead without every neighbour's End-of-RIB");
        } else {
            tracing::info!("End-of-RIB from every neighbour: route selection done");
        }
        self.restart = None;
        let addresses: Vec<IpAddr> = self.peers.keys().copied().collect();
        for address in &addresses {
            self.stamp_restart_bits(*address);
        }
        // The whole table, now selected, for the kernel; then what was not written can go.
        let table: Vec<BestChange> = self
            .rib
            .iter()
            .map(|(prefix, _)| BestChange {
                prefix,
                paths: self.rib.best(&prefix),
            })
            .collect();
        self.emit_routes(table);
        self.actions.push_back(Action::SelectionDone);
        for address in addresses {
            self.send_table(now, address);
        }
    }

    /// Sends a newly established peer the table, then End-of-RIB per family (RFC 4724 §2).
    fn send_table(&mut self, now: Instant, address: IpAddr) {
        let Some(families) = self
            .peers
            .get(&address)
            .and_then(|p| p.session.negotiated())
            .map(|n| n.families.clone())
        else {
            return;
        };
        self.readvertise(now, address, None);
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        for family in families {
            if peer
                .session
                .send_update(now, UpdateMsg::end_of_rib_for(family))
            {
                peer.updates_out += 1;
            }
        }
    }

    /// Whether to report route changes for the kernel (default on).
    pub fn set_route_output(&mut self, on: bool) {
        self.route_output = on;
        self.rib.set_report_changes(on);
    }

    /// The RIB, for display.
    pub fn rib(&self) -> &Rib {
        &self.rib
    }

    /// The next action; call until `None` after every `handle_*`/`set_*` call.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Speaker::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                [
                    p.session.poll_timeout(),
                    p.contender.as_ref().and_then(|c| c.2.poll_timeout()),
                    p.restart_deadline,
                    p.refreshing.values().min().copied(),
                    p.limit_restart_at,
                ]
            })
            .flatten()
            .chain(self.restart.as_ref().map(|r| r.deadline))
            .min()
    }

    /// Sets the neighbours: new ones start, missing ones stop (their routes go), changed ones
    /// restart only when their session parameters changed. Others are not touched.
    pub fn set_neighbors(&mut self, now: Instant, neighbors: Vec<NeighborConfig>) {
        let wanted: BTreeMap<IpAddr, NeighborConfig> =
            neighbors.into_iter().map(|n| (n.address, n)).collect();
        let gone: Vec<IpAddr> = self
            .peers
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for address in gone {
            self.remove_peer(now, address, Removal::Deconfigured);
        }
        for (address, mut config) in wanted {
            // Whether we are restarting (the R and F bits, RFC 4724 §3) is the speaker's
            // state, not configuration: a configuration read again keeps it, and resets no
            // session.
            self.restart_bits(&mut config);
            match self.peers.get_mut(&address) {
                Some(peer) if peer.config == config => {}
                Some(peer)
                    if peer.config.session == config.session
                        && peer.config.address == config.address
                        && peer.config.allowas_in == config.allowas_in
                        && peer.config.local_as == config.local_as =>
                {
                    // Only filters or RR/next-hop roles changed: re-run policy, keep the session.
                    let old = std::mem::replace(&mut peer.config, config);
                    self.reconfigure_peer(now, address, &old);
                }
                Some(peer) => {
                    // Disabled stays disabled through a reload.
                    let enabled = !peer.disabled;
                    self.remove_peer(now, address, Removal::Reconfigured);
                    self.add_peer(now, config, enabled);
                }
                None => self.add_peer(now, config, true),
            }
        }
        self.flush(now);
        self.check_restart(now);
    }

    /// Sets the prefixes we originate, with their attributes (communities etc.).
    pub fn set_originated(&mut self, now: Instant, originated: BTreeMap<IpNet, PathAttributes>) {
        let mut touched = Vec::new();
        let mut changes = Vec::new();
        for prefix in self
            .originated
            .keys()
            .filter(|p| !originated.contains_key(p))
            .copied()
            .collect::<Vec<_>>()
        {
            changes.extend(self.rib.withdraw_local(prefix));
            touched.push(prefix);
        }
        for (prefix, attributes) in &originated {
            if self.originated.get(prefix) != Some(attributes) {
                changes.extend(self.rib.originate(*prefix, attributes.clone()));
                touched.push(prefix.trunc());
            }
        }
        self.originated = originated;
        self.after_rib_change(now, changes, &touched);
        self.flush(now);
    }

    /// Whether an incoming connection from `address` is wanted.
    pub fn accepts(&self, address: &IpAddr) -> bool {
        self.peers.get(address).is_some_and(|p| {
            !p.disabled && p.contender.is_none() && p.session.state() != State::Established
        })
    }

    /// `twillctl bgp disable|enable`: disabling ends the neighbour's session with Cease /
    /// Administrative Shutdown (RFC 4486 subcode 2, with an RFC 8203 message), removes its
    /// routes and refuses its connections until it is enabled again; a reload keeps it
    /// disabled (as `birdc disable`). `false` when it is not a neighbour.
    pub fn set_enabled(&mut self, now: Instant, address: IpAddr, enabled: bool) -> bool {
        let Some(peer) = self.peers.get_mut(&address) else {
            return false;
        };
        if peer.disabled != enabled {
            return true;
        }
        peer.disabled = !enabled;
        peer.limit_restart_at = None;
        if enabled {
            tracing::info!(peer = %address, "neighbour enabled");
            peer.session.handle_input(now, Input::ManualStart);
        } else {
            tracing::info!(peer = %address, "neighbour disabled");
            let message = "session disabled by the operator";
            peer.session.administrative_shutdown(message);
            if let Some((connection, _, mut contender)) = peer.contender.take() {
                contender.administrative_shutdown(message);
                while let Some(output) = contender.poll_output() {
                    if let Output::Send(bytes) = output {
                        self.actions.push_back(Action::Send(connection, bytes));
                    }
                }
                self.actions.push_back(Action::Close(connection));
            }
        }
        self.flush(now);
        self.check_restart(now);
        true
    }

    /// A connection is up: ours (`inbound` false) after [`Action::Connect`], or the peer's.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        address: IpAddr,
        connection: ConnectionId,
        local: IpAddr,
        inbound: bool,
    ) {
        let Some(peer) = self.peers.get_mut(&address) else {
            self.actions.push_back(Action::Close(connection));
            return;
        };
        match peer.session.state() {
            State::Connect | State::Active => {
                if let Some(old) = peer.connection.replace(connection) {
                    if old != connection {
                        self.actions.push_back(Action::Close(old));
                    }
                }
                peer.local_address = Some(local);
                peer.inbound = inbound;
                peer.session.handle_input(now, Input::TcpConnected);
            }
            State::OpenSent | State::OpenConfirm if peer.contender.is_none() => {
                // A collision: the peer's connection while ours is opening, or ours coming up
                // after we took the peer's (the SYNs crossed). Run it alongside until an OPEN
                // tells which stays.
                let mut contender = Session::new(peer.config.session.clone());
                contender.handle_input(now, Input::ManualStart);
                contender.handle_input(now, Input::TcpConnected);
                peer.contender = Some((connection, local, contender));
                peer.contender_inbound = inbound;
            }
            _ => self.actions.push_back(Action::Close(connection)),
        }
        self.flush(now);
    }

    /// A connection failed, or closed.
    pub fn handle_closed(&mut self, now: Instant, address: IpAddr, connection: ConnectionId) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        if peer.contender.as_ref().is_some_and(|c| c.0 == connection) {
            peer.contender = None;
        } else if peer.connection == Some(connection) || peer.connection.is_none() {
            peer.connection = None;
            peer.session.handle_input(now, Input::TcpFailed);
        }
        self.flush(now);
    }

    /// Bytes arrived on a connection.
    pub fn handle_bytes(
        &mut self,
        now: Instant,
        address: IpAddr,
        connection: ConnectionId,
        bytes: &[u8],
    ) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        if let Some((_, _, contender)) = peer.contender.as_mut().filter(|c| c.0 == connection) {
            contender.handle_input(now, Input::Bytes(bytes));
        } else if peer.connection == Some(connection) {
            peer.session.handle_input(now, Input::Bytes(bytes));
        }
        self.resolve_collision(address);
        self.flush(now);
    }

    /// The driver's output queue for a connection is full (`blocked`) or has drained: a
    /// peer that does not take what we send is dropped at its hold time (RFC 9687).
    pub fn handle_send_blocked(
        &mut self,
        now: Instant,
        address: IpAddr,
        connection: ConnectionId,
        blocked: bool,
    ) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let input = if blocked {
            Input::SendBlocked
        } else {
            Input::SendDrained
        };
        if let Some((_, _, contender)) = peer.contender.as_mut().filter(|c| c.0 == connection) {
            contender.handle_input(now, input);
        } else if peer.connection == Some(connection) {
            peer.session.handle_input(now, input);
        }
        self.flush(now);
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut refresh_expired = Vec::new();
        for (address, peer) in &mut self.peers {
            peer.session.handle_timeout(now);
            if let Some((_, _, contender)) = peer.contender.as_mut() {
                contender.handle_timeout(now);
            }
            if peer.restart_deadline.is_some_and(|d| d <= now) {
                peer.restart_deadline = None;
                expired.push(*address);
            }
            if peer.limit_restart_at.is_some_and(|d| d <= now) {
                peer.limit_restart_at = None;
                if peer.disabled {
                    tracing::info!(peer = %address, "starting again after the prefix limit");
                    peer.disabled = false;
                    peer.session.handle_input(now, Input::ManualStart);
                }
            }
            let due: Vec<Family> = peer
                .refreshing
                .iter()
                .filter(|(_, due)| **due <= now)
                .map(|(family, _)| *family)
                .collect();
            for family in due {
                peer.refreshing.remove(&family);
                tracing::warn!(peer = %address, %family, "no End-of-RIB-Refresh in time; routes not announced again go");
                refresh_expired.push((*address, family));
            }
        }
        for address in expired {
            self.sweep_stale(now, address, None);
        }
        for (address, family) in refresh_expired {
            self.end_refresh(now, address, family);
        }
        self.check_restart(now);
        self.flush(now);
    }

    /// Asks a neighbour to send its routes again (soft reset in).
    pub fn request_refresh(&mut self, now: Instant, address: IpAddr) -> bool {
        let Some(peer) = self.peers.get_mut(&address) else {
            return false;
        };
        let families = peer
            .session
            .negotiated()
            .map(|n| n.families.clone())
            .unwrap_or_default();
        let asked =
            families.iter().all(|f| peer.session.send_route_refresh(*f)) && !families.is_empty();
        self.flush(now);
        asked
    }

    /// Stops every session for good (the daemon is stopping): each open one is closed with
    /// Cease / Administrative Shutdown carrying `message` (RFC 8203), and nothing connects
    /// again. Routes are not withdrawn one by one, to the kernel or to peers: the sessions
    /// end, and the driver removes the kernel routes wholesale.
    pub fn shutdown(&mut self, message: &str) {
        for peer in self.peers.values_mut() {
            peer.session.administrative_shutdown(message);
            if let Some((connection, _, contender)) = peer.contender.as_mut() {
                contender.administrative_shutdown(message);
                while let Some(output) = contender.poll_output() {
                    if let Output::Send(bytes) = output {
                        self.actions.push_back(Action::Send(*connection, bytes));
                    }
                }
                self.actions.push_back(Action::Close(*connection));
            }
            peer.contender = None;
            while let Some(output) = peer.session.poll_output() {
                if let Output::Send(bytes) = output {
                    self.actions
                        .extend(peer.connection.map(|c| Action::Send(c, bytes)));
                }
            }
            self.actions
                .extend(peer.connection.take().map(Action::Close));
        }
    }

    /// Stops for a graceful restart (RFC 4724 §4.1): every connection closes with no
    /// NOTIFICATION, so peers that announced graceful restart keep our routes, marked stale,
    /// until we are back; the driver leaves the kernel routes in place.
    pub fn stop_for_restart(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            // Stop the session without its NOTIFICATION: only the closes go out.
            peer.session.handle_input(now, Input::ManualStop);
            std::iter::from_fn(|| peer.session.poll_output()).for_each(drop);
            self.actions
                .extend(peer.connection.take().map(Action::Close));
            if let Some((connection, _, _)) = peer.contender.take() {
                self.actions.push_back(Action::Close(connection));
            }
        }
    }

    /// Status of every neighbour.
    pub fn peers_status(&self, now: Instant) -> Vec<PeerStatus> {
        self.peers
            .values()
            .map(|peer| {
                let accepted = self.rib.path_count(peer.id);
                PeerStatus {
                    address: peer.config.address,
                    remote_as: peer.config.session.remote_as,
                    state: peer.session.state().name(),
                    uptime_s: peer
                        .established_at
                        .map_or(0, |t| now.saturating_duration_since(t).as_secs()),
                    received: accepted + peer.rejected.len(),
                    accepted,
                    advertised: peer.adj_out.len(),
                    last_error: peer.session.last_error().map(str::to_string),
                    disabled: peer.disabled,
                    updates_in: peer.updates_in,
                    updates_out: peer.updates_out,
                    treat_as_withdraw: peer.malformed.treat_as_withdraw,
                    attribute_discard: peer.malformed.attribute_discard,
                }
            })
            .collect()
    }

    /// The families negotiated with each established neighbour.
    pub fn established_families(&self) -> Vec<(IpAddr, Vec<Family>)> {
        self.peers
            .iter()
            .filter_map(|(address, peer)| {
                peer.session
                    .negotiated()
                    .map(|n| (*address, n.families.clone()))
            })
            .collect()
    }

    /// The address of the peer that sent a path (`None` for our own).
    pub fn peer_address(&self, id: PeerId) -> Option<IpAddr> {
        self.peers
            .values()
            .find(|p| p.id == id)
            .map(|p| p.config.address)
    }

    fn add_peer(&mut self, now: Instant, config: NeighborConfig, enabled: bool) {
        let id = PeerId(self.next_peer_id);
        self.next_peer_id += 1;
        let mut session = Session::new(config.session.clone());
        if enabled {
            session.handle_input(now, Input::ManualStart);
        }
        let address = config.address;
        self.peers.insert(
            address,
            Peer {
                id,
                config,
                session,
                connection: None,
                local_address: None,
                inbound: false,
                contender: None,
                contender_inbound: false,
                adj_out: BTreeMap::new(),
                add_path_ids: BTreeMap::new(),
                rejected: HashSet::new(),
                adj_in: HashMap::new(),
                established_at: None,
                restart_deadline: None,
                refreshing: BTreeMap::new(),
                peer_restart_time: None,
                disabled: !enabled,
                limit_warned: HashSet::new(),
                limit_restart_at: None,
                updates_in: 0,
                malformed: Default::default(),
                updates_out: 0,
            },
        );
        self.refresh_rib_info(address);
    }

    fn remove_peer(&mut self, now: Instant, address: IpAddr, why: Removal) {
        let Some(mut peer) = self.peers.remove(&address) else {
            return;
        };
        match why {
            Removal::Deconfigured => peer.session.deconfigured(),
            Removal::Reconfigured => peer.session.reconfigured(),
        }
        while let Some(output) = peer.session.poll_output() {
            match output {
                Output::Send(bytes) => self
                    .actions
                    .extend(peer.connection.map(|c| Action::Send(c, bytes))),
                Output::Close => self.actions.extend(peer.connection.map(Action::Close)),
                _ => {}
            }
        }
        if let Some((connection, _, _)) = peer.contender {
            self.actions.push_back(Action::Close(connection));
        }
        let touched = self.prefixes_of(peer.id);
        let changes = self.rib.remove_peer(peer.id);
        self.after_rib_change(now, changes, &touched);
    }

    /// Applies a peer's new filters and roles (its session parameters are unchanged): a new
    /// import filter is run over what the peer sent (its Adj-RIB-In, no route refresh); a
    /// change of route reflector client re-exports to every peer, since whether the peer's
    /// routes may be reflected to the others changed; export settings re-export to the peer.
    fn reconfigure_peer(&mut self, now: Instant, address: IpAddr, old: &NeighborConfig) {
        let Some(peer) = self.peers.get(&address) else {
            return;
        };
        let new = peer.config.clone();
        self.refresh_rib_info(address);
        if new.import != old.import {
            self.reimport(now, address, old.import.is_empty());
        }
        if new.rr_client != old.rr_client {
            let everyone: Vec<IpAddr> = self.peers.keys().copied().collect();
            for other in everyone {
                self.readvertise(now, other, None);
            }
        } else {
            self.readvertise(now, address, None);
        }
        // A new import filter or a lower limit may take the neighbour over its limit.
        self.check_prefix_limits(now, address);
    }

    /// Checks a neighbour's prefix limits after its routes changed (RFC 4486 §4).
    fn check_prefix_limits(&mut self, now: Instant, address: IpAddr) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        for limit in peer.config.prefix_limits.clone() {
            let ipv4 = limit.family == Family::Ipv4Unicast;
            let count = self.rib.family_path_count(peer.id, ipv4);
            if count <= limit.max as usize {
                peer.limit_warned.remove(&limit.family);
                continue;
            }
            let family = limit.family;
            match limit.action {
                LimitAction::Warn => {
                    if peer.limit_warned.insert(family) {
                        tracing::warn!(peer = %address, %family, count, limit = limit.max, "prefix limit exceeded");
                    }
                }
                LimitAction::Drop | LimitAction::Restart(_) => {
                    tracing::warn!(peer = %address, %family, count, limit = limit.max, "prefix limit exceeded: session ended (Cease, Maximum Number of Prefixes Reached)");
                    peer.disabled = true;
                    if let LimitAction::Restart(after) = limit.action {
                        peer.limit_restart_at = Some(now + after);
                    }
                    peer.session.prefix_limit_reached(family, limit.max);
                    return;
                }
            }
        }
    }

    fn refresh_rib_info(&mut self, address: IpAddr) {
        let Some(peer) = self.peers.get(&address) else {
            return;
        };
        let remote_id = peer
            .session
            .negotiated()
            .map_or(Ipv4Addr::UNSPECIFIED, |n| n.remote_id);
        let info = PeerInfo {
            address,
            router_id: remote_id,
            remote_as: peer.config.session.remote_as,
            ibgp: peer.config.session.is_ibgp(),
            rr_client: peer.config.rr_client,
            local_address: peer.local_address.unwrap_or(address),
            next_hop_self: peer.config.next_hop_self,
            shared_subnet: peer.config.shared_subnet,
            next_hop_keep: peer.config.next_hop_keep,
            allowas_in: peer.config.allowas_in,
            local_as: peer.config.local_as,
        };
        let id = peer.id;
        let changes = self.rib.set_peer(id, info);
        self.emit_routes(changes);
    }

    fn prefixes_of(&self, id: PeerId) -> Vec<IpNet> {
        self.rib
            .iter()
            .filter(|(_, paths)| paths.iter().any(|p| p.peer() == id))
            .map(|(prefix, _)| prefix)
            .collect()
    }

    /// RFC 4271 §6.8: once the contender has the peer's OPEN, keep the connection opened by
    /// the side with the higher BGP identifier, or with equal identifiers (possible on eBGP)
    /// the side with the larger AS (RFC 6286 §2.3); the other closes with Cease / Connection
    /// Collision Resolution. When the first connection was lost meanwhile, the contender is
    /// kept whatever the identifiers; when the first is already Established, it stays.
    fn resolve_collision(&mut self, address: IpAddr) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let Some((_, _, contender)) = peer.contender.as_ref() else {
            return;
        };
        if !matches!(contender.state(), State::OpenConfirm | State::Established) {
            if contender.state() == State::Idle {
                peer.contender = None;
            }
            return;
        }
        let Some(remote_id) = contender.remote_id() else {
            return;
        };
        let (connection, local, mut contender) = peer.contender.take().expect("checked above");
        let cease = NotificationMsg::new(ErrorCode::Cease, 7, Bytes::new());
        let (ours, theirs) = (u32::from(self.config.router_id), u32::from(remote_id));
        let keep_peers = if ours == theirs {
            peer.config.session.remote_as > peer.config.session.local_as
        } else {
            theirs > ours
        };
        let keep_contender = if peer.connection.is_none() {
            // The first connection is already lost: there is nothing to collide with.
            true
        } else if peer.session.state() == State::Established {
            false
        } else {
            keep_peers == peer.contender_inbound
        };
        if keep_contender {
            // Keep the peer's connection.
            if let Some(old) = peer.connection.replace(connection) {
                self.actions.push_back(Action::Send(
                    old,
                    crate::wire::Message::Notification(cease).encode(peer.session.context()),
                ));
                self.actions.push_back(Action::Close(old));
            }
            peer.local_address = Some(local);
            peer.inbound = peer.contender_inbound;
            std::mem::swap(&mut peer.session, &mut contender);
        } else {
            self.actions.push_back(Action::Send(
                connection,
                crate::wire::Message::Notification(cease).encode(contender.context()),
            ));
            self.actions.push_back(Action::Close(connection));
        }
    }

    /// Drains every session's outputs into actions and RIB work, until all are quiet: work
    /// for one peer (an UPDATE) queues output on others (the re-export).
    fn flush(&mut self, now: Instant) {
        loop {
            let mut drained_any = false;
            let addresses: Vec<IpAddr> = self.peers.keys().copied().collect();
            for address in addresses {
                while let Some(peer) = self.peers.get_mut(&address) {
                    let contender_output = peer
                        .contender
                        .as_mut()
                        .and_then(|(c, _, s)| s.poll_output().map(|o| (*c, o)));
                    if let Some((connection, output)) = contender_output {
                        drained_any = true;
                        match output {
                            Output::Send(bytes) => {
                                self.actions.push_back(Action::Send(connection, bytes))
                            }
                            Output::Close => self.actions.push_back(Action::Close(connection)),
                            _ => {}
                        }
                        continue;
                    }
                    let Some(output) = peer.session.poll_output() else {
                        break;
                    };
                    drained_any = true;
                    self.on_session_output(now, address, output);
                }
            }
            if !drained_any {
                return;
            }
        }
    }

    fn on_session_output(&mut self, now: Instant, address: IpAddr, output: Output) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        // Everything logged while handling the peer's output carries its address.
        let _span = tracing::info_span!("peer", peer = %address).entered();
        match output {
            Output::Connect => {
                if peer.connection.is_none() {
                    self.actions.push_back(Action::Connect(address));
                }
            }
            Output::Send(bytes) => self
                .actions
                .extend(peer.connection.map(|c| Action::Send(c, bytes))),
            Output::Close => {
                if let Some(connection) = peer.connection.take() {
                    self.actions.push_back(Action::Close(connection));
                }
            }
            Output::Established(_) => self.on_established(now, address),
            Output::Update(update) => {
                peer.updates_in += 1;
                self.on_update(now, address, *update);
            }
            Output::RouteRefresh(refresh) => self.on_route_refresh(now, address, refresh),
            Output::Down(reason) => self.on_down(now, address, reason),
        }
    }

    fn on_established(&mut self, now: Instant, address: IpAddr) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        peer.established_at = Some(now);
        peer.peer_restart_time = peer
            .session
            .negotiated()
            .and_then(|n| n.peer_graceful_restart.as_ref())
            .map(|gr| gr.restart_time);
        let keeps_forwarding = peer
            .session
            .negotiated()
            .and_then(|n| n.peer_graceful_restart.as_ref())
            .map(|gr| {
                gr.families
                    .iter()
                    .filter(|(_, preserved)| *preserved)
                    .map(|(f, _)| *f)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        self.actions.push_back(Action::PeerUp(address));
        self.refresh_rib_info(address);
        // RFC 4724 §4.2: stale paths of a family whose forwarding state was not preserved go
        // now. The rest wait for End-of-RIB: the restart time bounded the wait for this
        // session, and a new wait, the stale-path time, starts now (as in FRR; BIRD stops its
        // restart timer here too).
        if let Some(peer) = self
            .peers
            .get_mut(&address)
            .filter(|p| p.restart_deadline.is_some())
        {
            peer.restart_deadline = Some(now + STALE_PATH_TIME);
            for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
                if !keeps_forwarding.contains(&family) {
                    self.sweep_stale(now, address, Some(family));
                }
            }
        }
        if self.restart.is_some() {
            // RFC 4724 §4.1: our routes go once selection is done; this peer may be the
            // last one waited for (if it is not waited for at all).
            self.check_restart(now);
        } else {
            self.send_table(now, address);
        }
    }

    fn on_down(&mut self, now: Instant, address: IpAddr, reason: DownReason) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let was_up = peer.established_at.take().is_some();
        if let Some(restart) = self.restart.as_mut() {
            // Its End-of-RIBs are awaited again from its next session.
            restart.end_of_rib.retain(|(from, _)| *from != address);
        }
        peer.adj_out.clear();
        peer.add_path_ids.clear();
        peer.rejected.clear();
        peer.adj_in.clear();
        // An unfinished refresh ends with the session: its marks go with the paths, or stay
        // harmlessly on paths kept for graceful restart (announced again, they are fresh).
        peer.refreshing.clear();
        self.actions
            .push_back(Action::PeerDown(address, reason.to_string()));
        if !was_up {
            return;
        }
        // RFC 4724 §4.2 (helper): when the TCP session ends without a NOTIFICATION and the
        // peer announced graceful restart, keep its paths as stale until it is back and sends
        // End-of-RIB, or its restart time passes.
        let keep = matches!(reason, DownReason::ConnectionLost) && peer.peer_restart_time.is_some();
        if keep {
            let seconds = u64::from(peer.peer_restart_time.unwrap_or(0));
            peer.restart_deadline = Some(now + Duration::from_secs(seconds));
        }
        let id = peer.id;
        let touched = self.prefixes_of(id);
        let changes = self.rib.peer_down(id, keep);
        self.after_rib_change(now, changes, &touched);
    }

    /// RFC 2918 / RFC 7313: a request is served with the family's routes again, between
    /// Beginning- and End-of-RIB-Refresh markers when the peer does enhanced route refresh;
    /// the peer's own markers bracket its re-announcement, after which what it did not
    /// announce again goes. Anything else, or a family not negotiated, is ignored.
    fn on_route_refresh(&mut self, now: Instant, address: IpAddr, refresh: RouteRefreshMsg) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let Some(negotiated) = peer.session.negotiated() else {
            return;
        };
        let family = refresh.family;
        if !negotiated.families.contains(&family) {
            tracing::debug!(%family, "ROUTE-REFRESH for a family not negotiated; ignored");
            return;
        }
        let enhanced = negotiated.enhanced_route_refresh;
        match refresh.subtype {
            0 if self.restart.is_some() => {
                tracing::debug!(%family, "route refresh asked while route selection is deferred; the table follows once it is done");
            }
            0 => {
                tracing::info!(%family, enhanced, "route refresh asked; sending the routes again");
                peer.session.send_refresh_marker(family, true);
                self.readvertise(now, address, Some(family));
                if let Some(peer) = self.peers.get_mut(&address) {
                    peer.session.send_refresh_marker(family, false);
                }
            }
            1 if enhanced => {
                tracing::info!(%family, "Beginning-of-RIB-Refresh received");
                peer.refreshing
                    .insert(family, now + ENHANCED_REFRESH_STALE_TIME);
                let id = peer.id;
                self.rib.begin_refresh(id, family == Family::Ipv4Unicast);
            }
            2 if enhanced => {
                if peer.refreshing.remove(&family).is_some() {
                    let removed = self.end_refresh(now, address, family);
                    tracing::info!(%family, removed, "End-of-RIB-Refresh received");
                }
            }
            subtype => {
                tracing::debug!(subtype, "ROUTE-REFRESH subtype not understood; ignored");
            }
        }
    }

    /// Removes what the peer did not announce again during a refresh of `family`; returns
    /// how many paths went.
    fn end_refresh(&mut self, now: Instant, address: IpAddr, family: Family) -> usize {
        let Some(peer) = self.peers.get(&address) else {
            return 0;
        };
        let id = peer.id;
        let before = self.rib.path_count(id);
        let touched = self.prefixes_of(id);
        let changes = self.rib.end_refresh(id, family == Family::Ipv4Unicast);
        self.after_rib_change(now, changes, &touched);
        before.saturating_sub(self.rib.path_count(id))
    }

    fn sweep_stale(&mut self, now: Instant, address: IpAddr, family: Option<Family>) {
        let Some(peer) = self.peers.get(&address) else {
            return;
        };
        let id = peer.id;
        // What to re-examine for export: every prefix the peer has paths for (a superset of
        // the swept ones; the Adj-RIB-Out diff sends only real changes).
        let touched = self.prefixes_of(id);
        let mut changes = Vec::new();
        for (f, ipv4) in [(Family::Ipv4Unicast, true), (Family::Ipv6Unicast, false)] {
            if family.is_none_or(|wanted| wanted == f) {
                changes.extend(self.rib.sweep_stale(id, ipv4));
            }
        }
        self.after_rib_change(now, changes, &touched);
        if family.is_none() {
            if let Some(peer) = self.peers.get_mut(&address) {
                peer.restart_deadline = None;
            }
        }
    }
}
