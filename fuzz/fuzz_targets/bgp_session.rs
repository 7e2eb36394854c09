//! A speaker fed arbitrary bytes by an established peer never panics, and its RIB stays
//! consistent: every path it counts for the peer is in the table. A second, quiet peer (with
//! add-path send) is established too, so every change also runs the export and packing code.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use twill_bgpd::fsm;
use twill_bgpd::rib::PeerId;
use twill_bgpd::speaker::{ConnectionId, NeighborConfig, Speaker, SpeakerConfig};
use twill_bgpd::wire::{Capability, Context, Family, Message, OpenMsg};

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const FUZZED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const QUIET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

fn neighbor(address: Ipv4Addr, remote_as: u32, add_path: u8) -> NeighborConfig {
    let mut session = fsm::Config::new(65001, remote_as, LOCAL);
    session.passive = true;
    session.add_path = vec![(Family::Ipv4Unicast, add_path), (Family::Ipv6Unicast, add_path)];
    NeighborConfig {
        address: IpAddr::V4(address),
        session,
        rr_client: remote_as == 65001,
        next_hop_self: false,
        shared_subnet: None,
        next_hop_keep: false,
        next_hop_other: None,
        import: Vec::new(),
        export: Vec::new(),
        prefix_limits: Vec::new(),
        allowas_in: 0,
        local_as: None,
    }
}

fn open(speaker: &mut Speaker, now: Instant, address: Ipv4Addr, asn: u32, id: u64, caps: Vec<Capability>) {
    let connection = ConnectionId(id);
    speaker.handle_connected(now, address.into(), connection, LOCAL.into(), true);
    let mut hello = Message::Open(OpenMsg::new(asn, 90, address, caps)).encode(&Context::initial()).to_vec();
    hello.extend_from_slice(&Message::Keepalive.encode(&Context { four_octet_as: true, ..Context::default() }));
    speaker.handle_bytes(now, address.into(), connection, &hello);
    while speaker.poll_action().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&switches, bytes)) = data.split_first() else { return };
    let mut now = Instant::now();
    let mut speaker = Speaker::new(SpeakerConfig { local_as: 65001, router_id: LOCAL, cluster_id: None, max_paths: 4, always_compare_med: false });
    speaker.set_route_output(switches & 1 != 0);
    // The fuzzed peer is internal or external, with or without add-path receive.
    let ibgp = switches & 2 != 0;
    let add_path = switches & 4 != 0;
    let fuzzed_as = if ibgp { 65001 } else { 65002 };
    speaker.set_neighbors(now, vec![neighbor(FUZZED, fuzzed_as, if add_path { 1 } else { 0 }), neighbor(QUIET, 65003, 2)]);
    let mut caps = vec![Capability::Multiprotocol(Family::Ipv4Unicast), Capability::Multiprotocol(Family::Ipv6Unicast), Capability::RouteRefresh, Capability::EnhancedRouteRefresh];
    if add_path {
        caps.push(Capability::AddPath(vec![(Family::Ipv4Unicast, 2), (Family::Ipv6Unicast, 2)]));
    }
    open(&mut speaker, now, FUZZED, fuzzed_as, 1, caps);
    open(&mut speaker, now, QUIET, 65003, 2, vec![Capability::Multiprotocol(Family::Ipv4Unicast), Capability::Multiprotocol(Family::Ipv6Unicast), Capability::AddPath(vec![(Family::Ipv4Unicast, 1), (Family::Ipv6Unicast, 1)])]);
    assert!(speaker.peers_status(now).iter().all(|s| s.state == "Established"), "both sessions are up before the fuzzed bytes");
    // Bytes arrive in pieces whose sizes the input chooses; time moves between them.
    let mut rest = bytes;
    while let Some((&step, tail)) = rest.split_first() {
        let take = (usize::from(step) * 4 + 1).min(tail.len());
        speaker.handle_bytes(now, FUZZED.into(), ConnectionId(1), &tail[..take]);
        while speaker.poll_action().is_some() {}
        if step & 0x80 != 0 {
            now += Duration::from_secs(u64::from(step & 0x3f));
            speaker.handle_timeout(now);
            while speaker.poll_action().is_some() {}
        }
        rest = &tail[take..];
    }
    let rib = speaker.rib();
    for peer in [PeerId(1), PeerId(2)] {
        let counted: usize = rib.iter().map(|(_, paths)| paths.iter().filter(|p| p.peer() == peer).count()).sum();
        assert_eq!(rib.path_count(peer), counted);
    }
});
