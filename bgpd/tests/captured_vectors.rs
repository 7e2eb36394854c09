//! Byte vectors captured from gobgpd, BIRD and FRR decode to what those peers were told to
//! send, and every clean message survives encode → decode unchanged.

use std::net::IpAddr;

use twill_bgpd::wire::attribute::Origin;
use twill_bgpd::wire::update::ErrorAction;
use twill_bgpd::wire::{Capability, Context, Family, Message, UpdateMsg};

fn messages(peer: &str) -> Vec<(String, Vec<u8>)> {
    let path = format!("{}/tests/vectors/{peer}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(kind, _)| matches!(*kind, "open" | "update" | "end-of-rib" | "keepalive"))
        .map(|(kind, hex)| {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (kind.to_string(), bytes)
        })
        .collect()
}

/// Decodes a peer's capture; returns its OPEN capabilities and UPDATEs.
fn decode_capture(peer: &str) -> (Vec<Capability>, Vec<UpdateMsg>) {
    let cx = Context {
        four_octet_as: true,
        ..Context::default()
    };
    let mut capabilities = Vec::new();
    let mut updates = Vec::new();
    for (kind, bytes) in messages(peer) {
        let (message, len) = Message::decode(&bytes, &cx)
            .unwrap_or_else(|e| panic!("{peer} {kind}: {e}"))
            .unwrap();
        assert_eq!(len, bytes.len(), "{peer} {kind}");
        // Re-encoding (which may choose other length encodings) decodes to the same message.
        let again = Message::decode(&message.encode(&cx), &cx)
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(again, message, "{peer} {kind}");
        match message {
            Message::Open(open) => {
                assert_eq!(
                    (open.asn(), open.bgp_id.to_string()),
                    (65001, "198.18.100.1".to_string()),
                    "{peer}"
                );
                capabilities = open.capabilities;
            }
            Message::Update(update) => {
                assert_eq!(
                    update.end_of_rib().is_some(),
                    kind == "end-of-rib",
                    "{peer}"
                );
                updates.push(*update);
            }
            _ => {}
        }
    }
    (capabilities, updates)
}

/// The announcement of `prefix` and its next hops.
fn route<'a>(updates: &'a [UpdateMsg], prefix: &str) -> (&'a UpdateMsg, Vec<IpAddr>) {
    for update in updates {
        if update.nlri.iter().any(|n| n.prefix.to_string() == prefix) {
            return (
                update,
                update
                    .attributes
                    .next_hop
                    .map(IpAddr::V4)
                    .into_iter()
                    .collect(),
            );
        }
        if let Some(reach) = update
            .attributes
            .mp_reach
            .as_ref()
            .filter(|r| r.nlri.iter().any(|n| n.prefix.to_string() == prefix))
        {
            return (update, reach.next_hops.clone());
        }
    }
    panic!("{prefix} not announced");
}

fn check(peer: &str, v6_next_hops: &[&str]) {
    let (capabilities, updates) = decode_capture(peer);
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        assert!(
            capabilities.contains(&Capability::Multiprotocol(family)),
            "{peer}: {capabilities:?}"
        );
    }
    assert!(
        capabilities
            .iter()
            .any(|c| matches!(c, Capability::GracefulRestart(_))),
        "{peer}"
    );
    let eors: Vec<Family> = updates.iter().filter_map(UpdateMsg::end_of_rib).collect();
    assert!(
        eors.contains(&Family::Ipv4Unicast) && eors.contains(&Family::Ipv6Unicast),
        "{peer}: {eors:?}"
    );
    let (v4, v4_hops) = route(&updates, "10.10.0.0/24");
    let (v6, v6_hops) = route(&updates, "fd00:10::/64");
    assert_eq!(
        v4_hops,
        vec!["198.18.100.1".parse::<IpAddr>().unwrap()],
        "{peer}"
    );
    let expected: Vec<IpAddr> = v6_next_hops.iter().map(|h| h.parse().unwrap()).collect();
    assert_eq!(&v6_hops[..expected.len()], &expected[..], "{peer}");
    for update in [v4, v6] {
        let a = &update.attributes;
        assert_eq!(update.error_action, ErrorAction::None, "{peer}");
        assert_eq!(a.origin, Some(Origin::Igp), "{peer}");
        assert_eq!(
            a.as_path.as_ref().map(|p| p.asns().collect::<Vec<_>>()),
            Some(vec![65001]),
            "{peer}"
        );
        assert!(a.communities.contains(&((65001 << 16) | 100)), "{peer}");
        assert_eq!(*a.large_communities, [(65001, 1, 2)], "{peer}");
    }
}

#[test]
fn gobgpd_vectors() {
    check("gobgpd", &["fd00::1"]);
    // gobgpd also announces the FQDN capability (73), which Twill keeps as unknown.
    let (capabilities, _) = decode_capture("gobgpd");
    assert!(capabilities
        .iter()
        .any(|c| matches!(c, Capability::Unknown { code: 73, .. })));
}

#[test]
fn bird_vectors() {
    // BIRD sends the configured global next hop and its link-local address (RFC 2545).
    check("bird", &["fd00::1"]);
    let (_, updates) = decode_capture("bird");
    let (_, hops) = route(&updates, "fd00:10::/64");
    assert!(
        matches!(hops.get(1), Some(IpAddr::V6(a)) if a.segments()[0] == 0xfe80),
        "{hops:?}"
    );
}

#[test]
fn frr_vectors() {
    // FRR, with no IPv6 session address to use, sends the IPv4-mapped next hop.
    check("frr", &["::ffff:198.18.100.1"]);
}
