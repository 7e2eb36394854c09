//! The in-process ingest benchmark: the speaker core fed the benchmark's UPDATE stream from
//! memory, without sockets or another process. It isolates what twill-bgpd spends per prefix
//! (framing, decoding, import, RIB, export checks) from the transport, and is what to profile
//! (`perf record -g target/release/xtask bench-ingest 1000000`).

#![allow(clippy::disallowed_methods)] // A benchmark: it reads the clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use twill_bgpd::fsm;
use twill_bgpd::speaker::{Action, ConnectionId, NeighborConfig, Speaker, SpeakerConfig};
use twill_bgpd::wire::{Capability, Context, Family, Message, OpenMsg};
use twill_interop_tests::blast;

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Bytes handed to the speaker at a time, as a socket read would.
const CHUNK: usize = 64 * 1024;

/// One run: seconds from the first UPDATE byte until the RIB holds every prefix.
fn run_once(count: u32, kernel: bool, realistic: bool) -> f64 {
    let now = Instant::now();
    let mut speaker = Speaker::new(SpeakerConfig {
        local_as: 65001,
        router_id: LOCAL,
        cluster_id: None,
        max_paths: 1,
        always_compare_med: false,
    });
    speaker.set_route_output(kernel);
    let mut session = fsm::Config::new(65001, blast::SENDER_AS, LOCAL);
    session.passive = true;
    session.families = vec![Family::Ipv4Unicast];
    speaker.set_neighbors(
        now,
        vec![NeighborConfig {
            address: IpAddr::V4(PEER),
            session,
            rr_client: false,
            next_hop_self: false,
            shared_subnet: None,
            next_hop_keep: false,
            next_hop_other: None,
            import: Vec::new(),
            export: Vec::new(),
            prefix_limits: Vec::new(),
            allowas_in: 0,
            local_as: None,
        }],
    );
    let connection = ConnectionId(1);
    speaker.handle_connected(now, PEER.into(), connection, LOCAL.into(), true);
    let open = OpenMsg::new(
        blast::SENDER_AS,
        240,
        PEER,
        vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::RouteRefresh,
        ],
    );
    let mut hello = Message::Open(open).encode(&Context::initial()).to_vec();
    let cx = Context {
        four_octet_as: true,
        ..Context::default()
    };
    hello.extend_from_slice(&Message::Keepalive.encode(&cx));
    speaker.handle_bytes(now, PEER.into(), connection, &hello);
    while speaker.poll_action().is_some() {}
    let updates = if realistic {
        blast::realistic_updates(count, blast::REALISTIC_SEED, PEER, &cx).0
    } else {
        blast::updates(count, PEER, &cx)
    };
    let started = Instant::now();
    let mut routes = 0usize;
    for chunk in updates.chunks(CHUNK) {
        speaker.handle_bytes(now, PEER.into(), connection, chunk);
        while let Some(action) = speaker.poll_action() {
            routes += usize::from(matches!(action, Action::Route(_)));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        speaker.rib().len(),
        count as usize,
        "every prefix is in the RIB"
    );
    assert_eq!(routes, if kernel { count as usize } else { 0 });
    elapsed
}

/// Median seconds over `runs` for each size, as lines of text.
/// With `realistic`, the realistic table (see `route_table`) instead of 100 attribute sets.
pub fn run(runs: usize, sizes: &[u32], realistic: bool) -> String {
    let mut out = String::new();
    for &count in sizes {
        for kernel in [false, true] {
            let mut times: Vec<f64> = (0..runs)
                .map(|_| run_once(count, kernel, realistic))
                .collect();
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            out.push_str(&format!(
                "in-process ingest {count} prefixes ({}), route output {}: {median:.3} s ({:.0} ns/prefix)\n",
                if realistic { "realistic table" } else { "100 attribute sets" },
                if kernel { "on" } else { "off" },
                median * 1e9 / f64::from(count)
            ));
        }
    }
    out
}
