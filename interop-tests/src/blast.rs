//! The benchmark's route load, shared by the sender (`twill-bgp-blast`) and the in-process
//! ingest benchmark (`cargo xtask bench-ingest`), so both measure the same bytes.

use std::net::Ipv4Addr;

use twill_bgpd::wire::attribute::{AsPath, Origin, PathAttributes};
use twill_bgpd::wire::{Context, Family, Message, Nlri, UpdateMsg};

/// Prefixes per UPDATE: 5 octets a /32 fits 4096 with the attributes.
pub const PER_UPDATE: u32 = 780;

/// Attribute sets the load cycles through (AS paths `65002 64512+k`).
pub const ATTRIBUTE_SETS: u32 = 100;

/// The sender's AS.
pub const SENDER_AS: u32 = 65002;

/// `count` distinct IPv4 /32s from 10.0.0.0 in UPDATEs of [`PER_UPDATE`] prefixes, cycling
/// through [`ATTRIBUTE_SETS`] attribute sets, then an IPv4 End-of-RIB.
pub fn updates(count: u32, next_hop: Ipv4Addr, cx: &Context) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0u32;
    let mut set = 0u32;
    while start < count {
        let end = (start + PER_UPDATE).min(count);
        let nlri = (start..end)
            .map(|i| {
                Nlri::new(ipnet::IpNet::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 32).unwrap())
            })
            .collect();
        let attributes = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(vec![
                SENDER_AS,
                64512 + set % ATTRIBUTE_SETS,
            ])),
            next_hop: Some(next_hop),
            ..PathAttributes::default()
        };
        out.extend_from_slice(
            &Message::Update(Box::new(UpdateMsg {
                attributes,
                nlri,
                ..UpdateMsg::default()
            }))
            .encode(cx),
        );
        start = end;
        set += 1;
    }
    out.extend_from_slice(
        &Message::Update(Box::new(UpdateMsg::end_of_rib_for(Family::Ipv4Unicast))).encode(cx),
    );
    out
}
