//! The BGP session state machine of RFC 4271 §8, for one TCP connection, sans-IO.
//!
//! Feed it [`Input`]s with [`Session::handle_input`] and expired timers with
//! [`Session::handle_timeout`]; drain [`Output`]s with [`Session::poll_output`] after each
//! call, and arm one timer for [`Session::poll_timeout`]. It owns no socket and reads no
//! clock: `now` is always a parameter, so every behaviour is tested on virtual time.
//!
//! Collision detection (RFC 4271 §6.8) needs two connections to one peer and is the
//! speaker's job; a session reports the remote BGP identifier once the OPEN arrives.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::open::{GracefulRestart, ADD_PATH_RECEIVE, ADD_PATH_SEND};
use crate::wire::{
    Capability, Context, ErrorCode, Family, Message, NotificationMsg, OpenMsg, RouteRefreshMsg,
    UpdateMsg,
};

/// RFC 4271 §8.2.2 state names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not trying; after an error, waiting for the idle-hold timer to try again (a passive
    /// session goes back to Active at once).
    Idle,
    /// Waiting for our outgoing TCP connection.
    Connect,
    /// Waiting for the peer to connect (passive, or after a failed attempt).
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for the first KEEPALIVE.
    OpenConfirm,
    /// Up: routes flow.
    Established,
}

impl State {
    /// The RFC 4271 name.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

/// Graceful restart settings (RFC 4724).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Seconds the peer should keep our routes while we restart.
    pub restart_time: u16,
    /// We are restarting now (set the R bit, RFC 4724 §3): the peer sends its routes at
    /// once, without waiting for our End-of-RIB. Set only in the OPENs of a restart, until
    /// its route selection is done (§4.1).
    pub restarting: bool,
    /// Our forwarding state was preserved across the restart (the F bit of every family,
    /// RFC 4724 §3): the peer keeps forwarding along the routes it had from us.
    pub forwarding_preserved: bool,
}

/// What a session proposes and requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our AS.
    pub local_as: u32,
    /// The peer's AS, checked against its OPEN.
    pub remote_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Hold time we propose (0: no keepalives); RFC 4271 suggests 90 s.
    pub hold_time: u16,
    /// Seconds between our KEEPALIVEs, independent of the hold time; `None` is a third of the
    /// negotiated hold time (RFC 4271 §10's suggestion). Never more than that third, as FRR:
    /// a peer proposing a shorter hold time shortens it.
    pub keepalive_time: Option<u16>,
    /// Wait between outgoing connection attempts (ConnectRetryTimer).
    pub connect_retry: Duration,
    /// Never connect; wait for the peer.
    pub passive: bool,
    /// Address families to negotiate.
    pub families: Vec<Family>,
    /// Graceful restart, if announced.
    pub graceful_restart: Option<GracefulRestartConfig>,
    /// Add-path per family with direction bits (RFC 7911).
    pub add_path: Vec<(Family, u8)>,
    /// Announce extended messages (RFC 8654).
    pub extended_messages: bool,
    /// After an error, wait this long before trying again, doubling with each error in a
    /// row up to `idle_hold_max` (not for a passive session, which listens again at once).
    pub idle_hold: Duration,
    /// Longest wait after repeated errors.
    pub idle_hold_max: Duration,
}

impl Config {
    /// Defaults as Calico's BIRD uses them: hold 90 s, connect retry 5 s, back-off 5→30 s,
    /// IPv4 and IPv6 unicast.
    pub fn new(local_as: u32, remote_as: u32, router_id: Ipv4Addr) -> Config {
        Config {
            local_as,
            remote_as,
            router_id,
            hold_time: 90,
            keepalive_time: None,
            connect_retry: Duration::from_secs(5),
            passive: false,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            graceful_restart: None,
            add_path: Vec::new(),
            extended_messages: false,
            idle_hold: Duration::from_secs(5),
            idle_hold_max: Duration::from_secs(30),
        }
    }

    /// Whether the session is internal (iBGP).
    pub fn is_ibgp(&self) -> bool {
        self.local_as == self.remote_as
    }

    /// Our OPEN.
    pub fn open(&self) -> OpenMsg {
        let mut capabilities: Vec<Capability> = self
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        capabilities.push(Capability::RouteRefresh);
        capabilities.push(Capability::EnhancedRouteRefresh);
        if let Some(gr) = self.graceful_restart {
            capabilities.push(Capability::GracefulRestart(GracefulRestart {
                restarting: gr.restarting,
                notification: false,
                restart_time: gr.restart_time,
                families: self
                    .families
                    .iter()
                    .map(|f| (*f, gr.forwarding_preserved))
                    .collect(),
            }));
        }
        if !self.add_path.is_empty() {
            capabilities.push(Capability::AddPath(self.add_path.clone()));
        }
        if self.extended_messages {
            capabilities.push(Capability::ExtendedMessage);
        }
        OpenMsg::new(self.local_as, self.hold_time, self.router_id, capabilities)
    }
}

/// What both sides agreed on when the session came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's AS.
    pub remote_as: u32,
    /// The peer's BGP identifier.
    pub remote_id: Ipv4Addr,
    /// Negotiated hold time in seconds (0: none).
    pub hold_time: u16,
    /// Families both sides announced.
    pub families: Vec<Family>,
    /// Codec context for the session.
    pub context: Context,
    /// The peer's graceful restart capability, if announced.
    pub peer_graceful_restart: Option<GracefulRestart>,
    /// The peer does route refresh (RFC 2918).
    pub route_refresh: bool,
    /// The peer does enhanced route refresh (RFC 7313).
    pub enhanced_route_refresh: bool,
}

/// Inputs, named after RFC 4271 §8.1 events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// Event 1 (ManualStart), or Event 4 (ManualStart_with_PassiveTcpEstablishment).
    ManualStart,
    /// Event 2 (ManualStop): close with Cease / Administrative Shutdown.
    ManualStop,
    /// Events 16/17 (Tcp_CR_Acked / TcpConnectionConfirmed): a connection is up, ours or the
    /// peer's.
    TcpConnected,
    /// Event 18 (TcpConnectionFails): the connection failed or closed.
    TcpFailed,
    /// Bytes read from the connection (Events 19-28 follow from the messages in them).
    Bytes(&'a [u8]),
    /// The peer is not taking what we send: the driver's output queue for the connection is
    /// full. The SendHoldTimer starts (RFC 9687 §3).
    SendBlocked,
    /// The output queue has drained: the SendHoldTimer stops.
    SendDrained,
}

/// Why a session is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// Stopped by the operator.
    Stopped,
    /// The peer sent a NOTIFICATION.
    NotificationReceived(NotificationMsg),
    /// We sent a NOTIFICATION (an error on our side of the wire, or hold timer expiry).
    NotificationSent(NotificationMsg),
    /// The TCP connection failed or closed.
    ConnectionLost,
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::Stopped => f.write_str("stopped"),
            DownReason::NotificationReceived(n) => write!(f, "received {n}"),
            DownReason::NotificationSent(n) => write!(f, "sent {n}"),
            DownReason::ConnectionLost => f.write_str("connection lost"),
        }
    }
}

/// What the session asks of its driver, or tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open an outgoing TCP connection to the peer.
    Connect,
    /// Write these bytes to the connection.
    Send(Bytes),
    /// Close the connection.
    Close,
    /// The session is up.
    Established(Box<Negotiated>),
    /// An UPDATE arrived (Established only).
    Update(Box<UpdateMsg>),
    /// The peer asks for our routes again (RFC 2918), or marks a refresh (RFC 7313).
    RouteRefresh(RouteRefreshMsg),
    /// The session left OpenSent or a later state.
    Down(DownReason),
}

/// Session timers (RFC 4271 §10), plus the idle-hold timer that paces automatic restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    IdleHold,
    /// RFC 9687: runs while the peer does not take what we send.
    SendHold,
}

/// RFC 9687 §3: the send hold time when no hold time was negotiated (8 minutes).
const SEND_HOLD_WITHOUT_HOLD_TIME: Duration = Duration::from_secs(480);

/// RFC 4271 §10: the large hold time used until OPENs are exchanged.
const LARGE_HOLD: Duration = Duration::from_secs(240);

/// One session's state machine.
#[derive(Debug)]
pub struct Session {
    config: Config,
    state: State,
    timers: [Option<Instant>; 5],
    negotiated: Option<Negotiated>,
    context: Context,
    buffer: Vec<u8>,
    outputs: VecDeque<Output>,
    /// Consecutive failures, for the idle-hold back-off.
    failures: u32,
    /// Started and not stopped by the operator.
    enabled: bool,
    last_error: Option<String>,
}

impl Session {
    /// A session in Idle.
    pub fn new(config: Config) -> Session {
        Session {
            config,
            state: State::Idle,
            timers: [None; 5],
            negotiated: None,
            context: Context::initial(),
            buffer: Vec::new(),
            outputs: VecDeque::new(),
            failures: 0,
            enabled: false,
            last_error: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the graceful restart capability announced from the next OPEN on (the R and
    /// F bits end with a restart); the session as it is goes on.
    pub fn set_graceful_restart(&mut self, graceful_restart: Option<GracefulRestartConfig>) {
        self.config.graceful_restart = graceful_restart;
    }

    /// What was negotiated, once Established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated
            .as_ref()
            .filter(|_| self.state == State::Established)
    }

    /// The peer's BGP identifier, once its OPEN has been accepted (OpenConfirm on).
    pub fn remote_id(&self) -> Option<Ipv4Addr> {
        self.negotiated.as_ref().map(|n| n.remote_id)
    }

    /// The codec context in force (negotiated once OPENs are exchanged).
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The last error, for status displays.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Handles an input. Call [`Session::poll_output`] until it returns `None` afterwards.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::ManualStart => self.on_start(now),
            Input::ManualStop => self.on_stop(Bytes::new()),
            Input::TcpConnected => self.on_connected(now),
            Input::TcpFailed => self.on_connection_failed(now),
            Input::Bytes(bytes) => self.on_bytes(now, bytes),
            Input::SendBlocked => self.on_send_blocked(now),
            Input::SendDrained => self.set_timer(Timer::SendHold, None),
        }
    }

    /// Fires every timer due at `now`. Call [`Session::poll_output`] afterwards.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in [
            Timer::IdleHold,
            Timer::ConnectRetry,
            Timer::Hold,
            Timer::Keepalive,
            Timer::SendHold,
        ] {
            if self.timers[timer as usize].is_some_and(|due| due <= now) {
                self.timers[timer as usize] = None;
                self.on_timer(now, timer);
            }
        }
    }

    /// The next instant [`Session::handle_timeout`] must be called at; ask again after every
    /// `handle_*` call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// The next output; call until `None` after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Sends an UPDATE (Established only; otherwise it is dropped and `false` returned).
    pub fn send_update(&mut self, now: Instant, update: UpdateMsg) -> bool {
        if self.state != State::Established {
            return false;
        }
        self.send(&Message::Update(Box::new(update)));
        self.restart_keepalive(now);
        true
    }

    /// Sends a ROUTE-REFRESH (Established and negotiated only).
    pub fn send_route_refresh(&mut self, family: Family) -> bool {
        let supported = self
            .negotiated()
            .is_some_and(|n| n.route_refresh || n.enhanced_route_refresh);
        if supported {
            self.send(&Message::RouteRefresh(RouteRefreshMsg {
                family,
                subtype: 0,
            }));
        }
        supported
    }

    /// Sends an RFC 7313 Beginning-of-RIB-Refresh (`begin`) or End-of-RIB-Refresh marker for
    /// a family, when the peer announced enhanced route refresh.
    pub fn send_refresh_marker(&mut self, family: Family, begin: bool) -> bool {
        let enhanced = self.negotiated().is_some_and(|n| n.enhanced_route_refresh);
        if enhanced {
            self.send(&Message::RouteRefresh(RouteRefreshMsg {
                family,
                subtype: if begin { 1 } else { 2 },
            }));
        }
        enhanced
    }

    fn set_timer(&mut self, timer: Timer, due: Option<Instant>) {
        self.timers[timer as usize] = due;
    }

    fn send(&mut self, message: &Message) {
        self.outputs
            .push_back(Output::Send(message.encode(&self.context)));
    }

    fn on_start(&mut self, now: Instant) {
        self.enabled = true;
        if self.state == State::Idle {
            self.failures = 0;
            self.set_timer(Timer::IdleHold, None);
            self.start_connecting(now);
        }
    }

    /// Idle → Connect (active) or Active (passive).
    fn start_connecting(&mut self, now: Instant) {
        self.buffer.clear();
        self.context = Context::initial();
        if self.config.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            self.outputs.push_back(Output::Connect);
            self.set_timer(Timer::ConnectRetry, Some(now + self.config.connect_retry));
        }
    }

    /// Event 2 (ManualStop) with a reason for the peer's operator: Cease / Administrative
    /// Shutdown carrying `message` as a Shutdown Communication (RFC 8203, lengthened to 255
    /// octets by RFC 9003 §2; cut at a character boundary). Call [`Session::poll_output`]
    /// afterwards.
    pub fn administrative_shutdown(&mut self, message: &str) {
        self.on_stop(shutdown_communication(message));
    }

    /// Stops the session with Cease / Maximum Number of Prefixes Reached (RFC 4486 §4,
    /// subcode 1; the data is AFI, SAFI and the upper bound), like ManualStop otherwise: it
    /// stays down until started again.
    pub fn prefix_limit_reached(&mut self, family: Family, limit: u32) {
        let mut data = Vec::with_capacity(7);
        data.extend_from_slice(&family.afi().to_be_bytes());
        data.push(family.safi());
        data.extend_from_slice(&limit.to_be_bytes());
        self.cease(1, Bytes::from(data));
        self.last_error = Some(format!("prefix limit of {limit} reached ({family})"));
    }

    /// Stops the session because its neighbour left the configuration: Cease / Peer
    /// De-configured (RFC 4486 §3, subcode 3).
    pub fn deconfigured(&mut self) {
        self.cease(3, Bytes::new());
    }

    /// Stops the session because its parameters changed and it must start again: Cease /
    /// Other Configuration Change (RFC 4486 §3, subcode 6).
    pub fn reconfigured(&mut self) {
        self.cease(6, Bytes::new());
    }

    fn on_stop(&mut self, data: Bytes) {
        self.cease(2, data);
    }

    fn cease(&mut self, subcode: u8, data: Bytes) {
        self.enabled = false;
        if matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            let cease = NotificationMsg::new(ErrorCode::Cease, subcode, data);
            self.send(&Message::Notification(cease));
            self.outputs.push_back(Output::Close);
            self.outputs.push_back(Output::Down(DownReason::Stopped));
        } else if self.state == State::Connect {
            self.outputs.push_back(Output::Close);
        }
        self.state = State::Idle;
        self.timers = [None; 5];
        self.negotiated = None;
    }

    fn on_connected(&mut self, now: Instant) {
        if !matches!(self.state, State::Connect | State::Active) {
            // A second connection while one is in use: the speaker resolves collisions, so
            // this session refuses it.
            return;
        }
        self.set_timer(Timer::ConnectRetry, None);
        self.send(&Message::Open(self.config.open()));
        self.set_timer(Timer::Hold, Some(now + LARGE_HOLD));
        self.state = State::OpenSent;
    }

    fn on_connection_failed(&mut self, now: Instant) {
        match self.state {
            State::Connect => {
                // RFC 4271 §8.2.2: Connect + TcpConnectionFails → Active, retry later.
                self.state = State::Active;
                self.set_timer(Timer::ConnectRetry, Some(now + self.config.connect_retry));
            }
            State::Active | State::Idle => {}
            State::OpenSent => self.on_connection_lost_in_open_sent(now),
            State::OpenConfirm | State::Established => {
                self.fail(now, DownReason::ConnectionLost, "connection lost");
            }
        }
    }

    /// RFC 4271 §8.2.2, OpenSent + TcpConnectionFails (Event 18): close the connection,
    /// restart the ConnectRetryTimer, listen for the peer, and go to Active. A lost
    /// connection before the OPENs are exchanged is not an error to damp: the idle hold and
    /// its back-off are left alone.
    fn on_connection_lost_in_open_sent(&mut self, now: Instant) {
        self.last_error = Some("connection lost".to_string());
        self.outputs.push_back(Output::Close);
        self.outputs
            .push_back(Output::Down(DownReason::ConnectionLost));
        self.timers = [None; 5];
        self.negotiated = None;
        self.buffer.clear();
        self.context = Context::initial();
        self.state = State::Active;
        if !self.config.passive {
            self.set_timer(Timer::ConnectRetry, Some(now + self.config.connect_retry));
        }
    }

    fn on_timer(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::IdleHold if self.enabled && self.state == State::Idle => {
                self.start_connecting(now)
            }
            Timer::ConnectRetry
                if matches!(self.state, State::Connect | State::Active) && !self.config.passive =>
            {
                self.state = State::Connect;
                self.outputs.push_back(Output::Close);
                self.outputs.push_back(Output::Connect);
                self.set_timer(Timer::ConnectRetry, Some(now + self.config.connect_retry));
            }
            Timer::Hold
                if matches!(
                    self.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                ) =>
            {
                self.notify_and_fail(
                    now,
                    NotificationMsg::new(ErrorCode::HoldTimerExpired, 0, Bytes::new()),
                    None,
                );
            }
            Timer::SendHold if matches!(self.state, State::OpenConfirm | State::Established) => {
                // RFC 9687 §4: the NOTIFICATION is queued behind what the peer did not take;
                // the driver gives it a moment, then drops the connection anyway.
                self.notify_and_fail(
                    now,
                    NotificationMsg::new(ErrorCode::SendHoldTimerExpired, 0, Bytes::new()),
                    Some("the peer stopped reading what we send".to_string()),
                );
            }
            Timer::Keepalive if matches!(self.state, State::OpenConfirm | State::Established) => {
                self.send(&Message::Keepalive);
                self.restart_keepalive(now);
            }
            _ => {}
        }
    }

    fn on_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if !matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            return;
        }
        self.buffer.extend_from_slice(bytes);
        let mut offset = 0;
        while matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            match Message::decode(&self.buffer[offset..], &self.context) {
                Ok(None) => break,
                Ok(Some((message, len))) => {
                    offset += len;
                    self.on_message(now, message);
                }
                Err(notification) => {
                    self.notify_and_fail(now, notification, None);
                    break;
                }
            }
        }
        if offset > 0 && offset <= self.buffer.len() {
            self.buffer.drain(..offset);
        }
    }

    fn on_message(&mut self, now: Instant, message: Message) {
        match (self.state, message) {
            (_, Message::Notification(notification)) => {
                self.last_error = Some(format!("received {notification}"));
                self.fail(now, DownReason::NotificationReceived(notification), "");
            }
            (State::OpenSent, Message::Open(open)) => self.on_open(now, open),
            (State::OpenConfirm, Message::Keepalive) => self.on_established(now),
            (State::Established, Message::Keepalive) => self.restart_hold(now),
            (State::Established, Message::Update(update)) => {
                self.restart_hold(now);
                self.outputs.push_back(Output::Update(update));
            }
            (State::Established, Message::RouteRefresh(refresh)) => {
                self.outputs.push_back(Output::RouteRefresh(refresh))
            }
            (state, _) => {
                // RFC 6608: FSM Error, subcode by state.
                let subcode = match state {
                    State::OpenSent => 1,
                    State::OpenConfirm => 2,
                    _ => 3,
                };
                let detail = format!("unexpected message in {}", state.name());
                self.notify_and_fail(
                    now,
                    NotificationMsg::new(ErrorCode::FiniteStateMachine, subcode, Bytes::new()),
                    Some(detail),
                );
            }
        }
    }

    /// OpenSent + OPEN (Event 19): check it, negotiate, send KEEPALIVE, go to OpenConfirm.
    fn on_open(&mut self, now: Instant, open: OpenMsg) {
        if open.asn() != self.config.remote_as {
            let data = Bytes::copy_from_slice(&open.my_as.to_be_bytes());
            let detail = format!(
                "peer announced AS {}, expected {}",
                open.asn(),
                self.config.remote_as
            );
            return self.notify_and_fail(
                now,
                NotificationMsg::new(ErrorCode::OpenMessage, 2, data),
                Some(detail),
            );
        }
        if self.config.is_ibgp() && open.bgp_id == self.config.router_id {
            let detail = format!("peer uses our BGP identifier {}", open.bgp_id);
            return self.notify_and_fail(
                now,
                NotificationMsg::new(ErrorCode::OpenMessage, 3, Bytes::new()),
                Some(detail),
            );
        }
        let negotiated = negotiate(&self.config, &open);
        self.context = negotiated.context.clone();
        let hold = Duration::from_secs(u64::from(negotiated.hold_time));
        self.negotiated = Some(negotiated);
        self.send(&Message::Keepalive);
        if hold.is_zero() {
            self.set_timer(Timer::Hold, None);
        } else {
            self.set_timer(Timer::Hold, Some(now + hold));
            self.restart_keepalive(now);
        }
        self.state = State::OpenConfirm;
    }

    fn on_established(&mut self, now: Instant) {
        self.state = State::Established;
        self.failures = 0;
        self.last_error = None;
        self.restart_hold(now);
        let negotiated = self
            .negotiated
            .clone()
            .expect("OpenConfirm follows a negotiated OPEN");
        self.outputs
            .push_back(Output::Established(Box::new(negotiated)));
    }

    /// RFC 9687 §3: the driver's queue for this connection is full. Once OPENs are exchanged,
    /// the SendHoldTimer starts (unless running): the hold time, as BIRD and FRR use, or 8
    /// minutes without one. It stops when the queue drains.
    fn on_send_blocked(&mut self, now: Instant) {
        if matches!(self.state, State::OpenConfirm | State::Established)
            && self.timers[Timer::SendHold as usize].is_none()
        {
            let wait = self
                .negotiated_hold()
                .unwrap_or(SEND_HOLD_WITHOUT_HOLD_TIME);
            self.set_timer(Timer::SendHold, Some(now + wait));
        }
    }

    fn negotiated_hold(&self) -> Option<Duration> {
        let hold = self.negotiated.as_ref()?.hold_time;
        (hold > 0).then(|| Duration::from_secs(u64::from(hold)))
    }

    fn restart_hold(&mut self, now: Instant) {
        let due = self.negotiated_hold().map(|hold| now + hold);
        self.set_timer(Timer::Hold, due);
    }

    /// KEEPALIVEs go every third of the negotiated hold time (RFC 4271 §4.4, §10), or every
    /// `keepalive_time` when that is shorter.
    fn restart_keepalive(&mut self, now: Instant) {
        let configured = self
            .config
            .keepalive_time
            .map(|k| Duration::from_secs(u64::from(k)));
        let due = self.negotiated_hold().map(|hold| {
            let interval = configured.map_or(hold / 3, |k| k.min(hold / 3));
            now + interval.max(Duration::from_secs(1))
        });
        self.set_timer(Timer::Keepalive, due);
    }

    /// Sends a NOTIFICATION and fails; `detail` says why, for the operator.
    fn notify_and_fail(
        &mut self,
        now: Instant,
        notification: NotificationMsg,
        detail: Option<String>,
    ) {
        self.last_error = Some(match detail {
            Some(detail) => format!("{detail}: sent {notification}"),
            None => format!("sent {notification}"),
        });
        self.send(&Message::Notification(notification.clone()));
        self.fail(now, DownReason::NotificationSent(notification), "");
    }

    /// Any error: close, report, go Idle, and try again after the idle-hold back-off, which
    /// doubles with each error in a row (RFC 4271 §8.1.1 DampPeerOscillations, §8.2.1.3).
    /// A passive session goes on listening at once instead (Event 5,
    /// AutomaticStart_with_PassiveTcpEstablishment): it never connects, so holding it in
    /// Idle, where connections are refused, would only shut the peer out.
    fn fail(&mut self, now: Instant, reason: DownReason, error: &str) {
        if !error.is_empty() {
            self.last_error = Some(error.to_string());
        }
        let was_open = matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        );
        self.outputs.push_back(Output::Close);
        if was_open {
            self.outputs.push_back(Output::Down(reason));
        }
        self.state = State::Idle;
        self.timers = [None; 5];
        self.negotiated = None;
        self.buffer.clear();
        self.failures = self.failures.saturating_add(1);
        if self.enabled && self.config.passive {
            self.start_connecting(now);
        } else if self.enabled {
            let factor = 1u32 << self.failures.saturating_sub(1).min(8);
            let wait = self
                .config
                .idle_hold
                .saturating_mul(factor)
                .min(self.config.idle_hold_max);
            self.set_timer(Timer::IdleHold, Some(now + wait));
        }
    }
}

/// The data of a Cease / Administrative Shutdown NOTIFICATION: a length octet and at most 255
/// octets of UTF-8 (RFC 8203 §2, RFC 9003 §2), the text cut at a character boundary.
pub fn shutdown_communication(message: &str) -> Bytes {
    let mut end = message.len().min(255);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut data = Vec::with_capacity(end + 1);
    data.push(end as u8);
    data.extend_from_slice(&message.as_bytes()[..end]);
    Bytes::from(data)
}

/// What our configuration and the peer's OPEN agree on.
pub fn negotiate(config: &Config, open: &OpenMsg) -> Negotiated {
    let peer_families: Vec<Family> = open
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::Multiprotocol(family) => Some(*family),
            _ => None,
        })
        .collect();
    // RFC 4760 §8: a peer that announces no multiprotocol capability speaks IPv4 unicast.
    let peer_families = if peer_families.is_empty() {
        vec![Family::Ipv4Unicast]
    } else {
        peer_families
    };
    let families: Vec<Family> = config
        .families
        .iter()
        .copied()
        .filter(|f| peer_families.contains(f))
        .collect();
    let peer_add_path: Vec<(Family, u8)> = open
        .capabilities
        .iter()
        .flat_map(|c| match c {
            Capability::AddPath(list) => list.clone(),
            _ => Vec::new(),
        })
        .collect();
    let mut context = Context {
        four_octet_as: open.has(&Capability::FourOctetAs(0)),
        extended_messages: config.extended_messages && open.has(&Capability::ExtendedMessage),
        ..Context::default()
    };
    for (family, ours) in &config.add_path {
        let theirs = peer_add_path
            .iter()
            .find(|(f, _)| f == family)
            .map_or(0, |(_, d)| *d);
        if ours & ADD_PATH_RECEIVE != 0 && theirs & ADD_PATH_SEND != 0 {
            context.add_path_receive.insert(*family);
        }
        if ours & ADD_PATH_SEND != 0 && theirs & ADD_PATH_RECEIVE != 0 {
            context.add_path_send.insert(*family);
        }
    }
    Negotiated {
        remote_as: open.asn(),
        remote_id: open.bgp_id,
        hold_time: config.hold_time.min(open.hold_time),
        families,
        context,
        peer_graceful_restart: open.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr.clone()),
            _ => None,
        }),
        route_refresh: open.has(&Capability::RouteRefresh),
        enhanced_route_refresh: open.has(&Capability::EnhancedRouteRefresh),
    }
}
