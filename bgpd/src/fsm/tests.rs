use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::*;
use crate::wire::update::ErrorAction;

/// The virtual clock's epoch; tests only ever add to it.
#[allow(clippy::disallowed_methods)] // One reading, to have an Instant to start from.
fn epoch() -> Instant {
    Instant::now()
}

fn config(local_as: u32, remote_as: u32, id: u8) -> Config {
    Config::new(local_as, remote_as, Ipv4Addr::new(198, 18, 0, id))
}

fn drain(session: &mut Session) -> Vec<Output> {
    std::iter::from_fn(|| session.poll_output()).collect()
}

/// Two sessions joined by a virtual TCP connection.
struct Pair {
    a: Session,
    b: Session,
    now: Instant,
    /// Outputs other than Send, per side.
    a_events: Vec<Output>,
    b_events: Vec<Output>,
    /// While set, bytes from b never reach a (b is frozen, like SIGSTOP).
    b_frozen: bool,
}

impl Pair {
    fn new(a: Config, b: Config) -> Pair {
        let mut pair = Pair {
            a: Session::new(a),
            b: Session::new(b),
            now: epoch(),
            a_events: Vec::new(),
            b_events: Vec::new(),
            b_frozen: false,
        };
        let now = pair.now;
        pair.a.handle_input(now, Input::ManualStart);
        pair.b.handle_input(now, Input::ManualStart);
        pair.a.handle_input(now, Input::TcpConnected);
        pair.b.handle_input(now, Input::TcpConnected);
        pair.pump();
        pair
    }

    /// Moves bytes both ways until nothing is left in flight.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for output in drain(&mut self.a) {
                match output {
                    Output::Send(bytes) => {
                        moved = true;
                        self.b.handle_input(self.now, Input::Bytes(&bytes));
                    }
                    other => self.a_events.push(other),
                }
            }
            for output in drain(&mut self.b) {
                match output {
                    Output::Send(bytes) if !self.b_frozen => {
                        moved = true;
                        self.a.handle_input(self.now, Input::Bytes(&bytes));
                    }
                    Output::Send(_) => {}
                    other => self.b_events.push(other),
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Advances virtual time by `step` at a time, firing due timers and moving bytes.
    fn advance(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.now += step;
            let now = self.now;
            self.a.handle_timeout(now);
            if !self.b_frozen {
                self.b.handle_timeout(now);
            }
            self.pump();
        }
    }
}

#[test]
fn a_pair_negotiates_and_establishes() {
    let mut a = config(65001, 65002, 1);
    a.hold_time = 9;
    a.add_path = vec![(Family::Ipv4Unicast, 3)];
    let mut b = config(65002, 65001, 2);
    b.families = vec![Family::Ipv4Unicast];
    b.add_path = vec![(Family::Ipv4Unicast, ADD_PATH_RECEIVE)];
    b.passive = true;
    let pair = Pair::new(a, b);
    assert_eq!(
        (pair.a.state(), pair.b.state()),
        (State::Established, State::Established)
    );
    let Some(Output::Established(negotiated)) = pair.a_events.last() else {
        panic!("{:?}", pair.a_events)
    };
    assert_eq!(negotiated.hold_time, 9, "the smaller hold time");
    assert_eq!(
        negotiated.families,
        vec![Family::Ipv4Unicast],
        "only what both announced"
    );
    assert_eq!(
        (negotiated.remote_as, negotiated.remote_id),
        (65002, Ipv4Addr::new(198, 18, 0, 2))
    );
    assert!(
        negotiated.context.four_octet_as
            && negotiated.route_refresh
            && negotiated.enhanced_route_refresh
    );
    assert!(
        negotiated
            .context
            .add_path_send
            .contains(&Family::Ipv4Unicast),
        "we send, they receive"
    );
    assert!(
        negotiated.context.add_path_receive.is_empty(),
        "they do not send"
    );
    assert!(
        !pair.b_events.contains(&Output::Connect),
        "a passive session never connects"
    );
}

#[test]
fn keepalives_keep_the_session_and_hold_expiry_ends_it() {
    let mut a = config(65001, 65002, 1);
    a.hold_time = 9;
    let mut pair = Pair::new(a, config(65002, 65001, 2));
    pair.advance(Duration::from_secs(60), Duration::from_secs(1));
    assert_eq!(
        pair.a.state(),
        State::Established,
        "keepalives every 3 s keep it up"
    );
    // The peer freezes: after 9 s without a message, a sends Hold Timer Expired.
    pair.b_frozen = true;
    pair.advance(Duration::from_secs(9), Duration::from_secs(1));
    assert_eq!(pair.a.state(), State::Idle);
    let expiry = NotificationMsg::new(ErrorCode::HoldTimerExpired, 0, Bytes::new());
    assert!(
        pair.a_events
            .contains(&Output::Down(DownReason::NotificationSent(expiry))),
        "{:?}",
        pair.a_events
    );
    // After the idle hold (5 s) it connects again by itself.
    pair.a_events.clear();
    pair.advance(Duration::from_secs(5), Duration::from_secs(1));
    assert_eq!(pair.a.state(), State::Connect);
    assert!(pair.a_events.contains(&Output::Connect));
}

#[test]
fn the_keepalive_time_is_configured_apart_from_the_hold_time() {
    let mut a = config(65001, 65002, 1);
    a.keepalive_time = Some(2);
    let mut pair = Pair::new(a, config(65002, 65001, 2));
    assert_eq!(pair.a.state(), State::Established);
    let start = pair.now;
    assert_eq!(
        pair.a.poll_timeout(),
        Some(start + Duration::from_secs(2)),
        "every 2 s, not 30 s (a third of 90)"
    );
    pair.advance(Duration::from_secs(2), Duration::from_secs(1));
    assert_eq!(pair.a.poll_timeout(), Some(start + Duration::from_secs(4)));
    // A peer proposing a shorter hold time caps it at a third of the negotiated one.
    let mut a = config(65001, 65002, 1);
    a.keepalive_time = Some(20);
    let mut b = config(65002, 65001, 2);
    b.hold_time = 9;
    let pair = Pair::new(a, b);
    assert_eq!(
        pair.a.poll_timeout(),
        Some(pair.now + Duration::from_secs(3))
    );
}

#[test]
fn a_peer_with_the_wrong_as_is_refused_with_bad_peer_as() {
    let pair = Pair::new(config(65001, 65009, 1), config(65002, 65001, 2));
    let refused = pair.a_events.iter().find_map(|o| match o {
        Output::Down(DownReason::NotificationSent(n)) => Some(n.clone()),
        _ => None,
    });
    let refused = refused.expect("a refused the OPEN");
    assert_eq!(
        (refused.code, refused.subcode, refused.data.as_ref()),
        (ErrorCode::OpenMessage, 2, &[0xfd, 0xea][..])
    );
    assert!(pair
        .b_events
        .iter()
        .any(|o| matches!(o, Output::Down(DownReason::NotificationReceived(n)) if n.subcode == 2)));
    assert_eq!(pair.a.last_error(), Some("peer announced AS 65002, expected 65009: sent OPEN Message Error: Bad Peer AS (2/2) data fdea"));
}

#[test]
fn ibgp_peers_with_one_identifier_are_refused() {
    let pair = Pair::new(config(65001, 65001, 1), config(65001, 65001, 1));
    assert!(pair.a_events.iter().any(|o| matches!(o, Output::Down(DownReason::NotificationSent(n)) if (n.code, n.subcode) == (ErrorCode::OpenMessage, 3))));
}

#[test]
fn an_unexpected_message_is_an_fsm_error_by_state() {
    let now = epoch();
    let mut session = Session::new(config(65001, 65002, 1));
    session.handle_input(now, Input::ManualStart);
    session.handle_input(now, Input::TcpConnected);
    drain(&mut session);
    assert_eq!(session.state(), State::OpenSent);
    session.handle_input(
        now,
        Input::Bytes(&Message::Keepalive.encode(&Context::default())),
    );
    let outputs = drain(&mut session);
    let fsm_error = NotificationMsg::new(ErrorCode::FiniteStateMachine, 1, Bytes::new());
    assert!(outputs.contains(&Output::Send(
        Message::Notification(fsm_error.clone()).encode(&Context::default())
    )));
    assert!(outputs.contains(&Output::Down(DownReason::NotificationSent(fsm_error))));
}

#[test]
fn malformed_bytes_send_the_codecs_notification() {
    let now = epoch();
    let mut session = Session::new(config(65001, 65002, 1));
    session.handle_input(now, Input::ManualStart);
    session.handle_input(now, Input::TcpConnected);
    drain(&mut session);
    session.handle_input(now, Input::Bytes(&malformed()));
    let outputs = drain(&mut session);
    let sent = NotificationMsg::new(ErrorCode::MessageHeader, 2, Bytes::from_static(&[0, 5]));
    assert!(
        outputs.contains(&Output::Down(DownReason::NotificationSent(sent))),
        "{outputs:?}"
    );
    assert_eq!(session.state(), State::Idle);
}

#[test]
fn manual_stop_sends_cease_and_stays_down() {
    let mut pair = Pair::new(config(65001, 65002, 1), config(65002, 65001, 2));
    let now = pair.now;
    pair.a.handle_input(now, Input::ManualStop);
    pair.pump();
    assert!(pair.a_events.contains(&Output::Down(DownReason::Stopped)));
    let cease = NotificationMsg::new(ErrorCode::Cease, 2, Bytes::new());
    assert!(pair
        .b_events
        .contains(&Output::Down(DownReason::NotificationReceived(cease))));
    assert_eq!(
        pair.a.poll_timeout(),
        None,
        "no automatic restart after a manual stop"
    );
    pair.advance(Duration::from_secs(120), Duration::from_secs(5));
    assert_eq!(pair.a.state(), State::Idle);
}

/// A message header with a bad length: the codec's error, answered with a NOTIFICATION.
fn malformed() -> Vec<u8> {
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0x00, 0x05, 0x04]);
    bad
}

#[test]
fn failed_connections_are_retried_and_errors_back_off() {
    let mut now = epoch();
    let mut session = Session::new(config(65001, 65002, 1));
    session.handle_input(now, Input::ManualStart);
    assert_eq!(drain(&mut session), vec![Output::Connect]);
    session.handle_input(now, Input::TcpFailed);
    assert_eq!(session.state(), State::Active);
    assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(5)));
    now += Duration::from_secs(5);
    session.handle_timeout(now);
    assert_eq!(
        (session.state(), drain(&mut session)),
        (State::Connect, vec![Output::Close, Output::Connect])
    );
    // Each error in a row doubles the idle hold (RFC 4271 §8.1.1 DampPeerOscillations):
    // 5, 10, 20, 30, 30 s.
    let mut waits = Vec::new();
    for _ in 0..5 {
        session.handle_input(now, Input::TcpConnected);
        session.handle_input(now, Input::Bytes(&malformed()));
        assert_eq!(session.state(), State::Idle);
        let due = session.poll_timeout().expect("an idle-hold timer");
        waits.push((due - now).as_secs());
        now = due;
        session.handle_timeout(now);
        assert_eq!(session.state(), State::Connect);
        drain(&mut session);
    }
    assert_eq!(waits, vec![5, 10, 20, 30, 30]);
}

#[test]
fn a_tcp_failure_in_open_sent_goes_to_active_with_the_connect_retry_timer() {
    // RFC 4271 §8.2.2, OpenSent + TcpConnectionFails (Event 18): close, restart the
    // ConnectRetryTimer, listen, go to Active. Not an error to damp: however often it
    // happens, the next attempt is one connect-retry away.
    let mut now = epoch();
    let mut session = Session::new(config(65001, 65002, 1));
    session.handle_input(now, Input::ManualStart);
    drain(&mut session);
    for _ in 0..5 {
        session.handle_input(now, Input::TcpConnected);
        assert_eq!(session.state(), State::OpenSent);
        drain(&mut session);
        session.handle_input(now, Input::TcpFailed);
        assert_eq!(session.state(), State::Active);
        assert!(drain(&mut session).contains(&Output::Down(DownReason::ConnectionLost)));
        assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(5)));
        now += Duration::from_secs(5);
        session.handle_timeout(now);
        assert_eq!(
            (session.state(), drain(&mut session)),
            (State::Connect, vec![Output::Close, Output::Connect])
        );
    }
    // The peer may connect meanwhile: Active takes its connection.
    session.handle_input(now, Input::TcpConnected);
    session.handle_input(now, Input::TcpFailed);
    session.handle_input(now, Input::TcpConnected);
    assert_eq!(session.state(), State::OpenSent);
}

#[test]
fn a_passive_session_takes_the_peers_connection_right_after_an_error() {
    // A passive session never connects, so holding it in Idle (where connections are
    // refused) would only shut the peer out: after an error it waits in Active at once.
    let now = epoch();
    let mut passive = config(65001, 65002, 1);
    passive.passive = true;
    let mut session = Session::new(passive);
    session.handle_input(now, Input::ManualStart);
    for _ in 0..5 {
        assert_eq!(session.state(), State::Active);
        session.handle_input(now, Input::TcpConnected);
        assert_eq!(
            session.state(),
            State::OpenSent,
            "the peer's connection is taken"
        );
        session.handle_input(now, Input::Bytes(&malformed()));
        let outputs = drain(&mut session);
        assert!(outputs
            .iter()
            .any(|o| matches!(o, Output::Down(DownReason::NotificationSent(_)))));
        assert!(!outputs.contains(&Output::Connect), "never connects");
    }
    assert_eq!(session.state(), State::Active);
    assert_eq!(session.poll_timeout(), None, "no timer: it only listens");
}

#[test]
fn updates_and_route_refresh_reach_the_driver_once_established() {
    let mut pair = Pair::new(config(65001, 65002, 1), config(65002, 65001, 2));
    let now = pair.now;
    let update = UpdateMsg::end_of_rib_for(Family::Ipv6Unicast);
    assert!(pair.b.send_update(now, update.clone()));
    assert!(pair.b.send_route_refresh(Family::Ipv4Unicast));
    pair.pump();
    assert!(pair.a_events.contains(&Output::Update(Box::new(UpdateMsg {
        error_action: ErrorAction::None,
        ..update
    }))));
    assert!(pair
        .a_events
        .contains(&Output::RouteRefresh(RouteRefreshMsg {
            family: Family::Ipv4Unicast,
            subtype: 0
        })));
}

#[test]
fn a_peer_that_stops_reading_is_dropped_at_the_hold_time() {
    // RFC 9687: the driver reports that a's output is not being taken (its queue is full);
    // b still sends keepalives, so a's hold timer alone would never fire. After the hold
    // time a gives up with Send Hold Timer Expired; output taken again in time saves it.
    let mut a = config(65001, 65002, 1);
    a.hold_time = 9;
    let mut pair = Pair::new(a.clone(), config(65002, 65001, 2));
    let now = pair.now;
    pair.a.handle_input(now, Input::SendBlocked);
    pair.advance(Duration::from_secs(5), Duration::from_secs(1));
    let now = pair.now;
    pair.a.handle_input(now, Input::SendDrained);
    pair.advance(Duration::from_secs(30), Duration::from_secs(1));
    assert_eq!(pair.a.state(), State::Established, "drained in time");
    let now = pair.now;
    pair.a.handle_input(now, Input::SendBlocked);
    pair.advance(Duration::from_secs(8), Duration::from_secs(1));
    assert_eq!(pair.a.state(), State::Established, "within the hold time");
    pair.advance(Duration::from_secs(1), Duration::from_secs(1));
    assert_eq!(pair.a.state(), State::Idle);
    let expiry = NotificationMsg::new(ErrorCode::SendHoldTimerExpired, 0, Bytes::new());
    assert!(
        pair.a_events
            .contains(&Output::Down(DownReason::NotificationSent(expiry))),
        "{:?}",
        pair.a_events
    );
}
