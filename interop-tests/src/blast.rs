//! The benchmark's route loads, shared by the sender (`twill-bgp-blast`) and the in-process
//! ingest benchmark (`cargo xtask bench-ingest`), so both measure the same bytes: distinct
//! /32s in 100 attribute sets ([`updates`]), or a realistic table ([`realistic_updates`]).

use std::net::Ipv4Addr;

use twill_bgpd::wire::attribute::{AsPath, Origin, PathAttributes};
use twill_bgpd::wire::{Context, Family, Message, Nlri, UpdateMsg, MAX_MESSAGE_LEN};

use crate::route_table;

/// Prefixes per UPDATE: 5 octets a /32 fits 4096 with the attributes.
pub const PER_UPDATE: u32 = 780;

/// Attribute sets the load cycles through (AS paths `65002 64512+k`).
pub const ATTRIBUTE_SETS: u32 = 100;

/// The sender's AS.
pub const SENDER_AS: u32 = 65002;

/// The seed of the realistic table the benchmark sends.
pub const REALISTIC_SEED: u64 = 2024;

/// What a realistic load holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSummary {
    /// Distinct prefixes.
    pub prefixes: u32,
    /// Distinct attribute sets.
    pub attribute_sets: u32,
    /// UPDATE messages (without the End-of-RIB).
    pub updates: u32,
    /// Bytes of all messages.
    pub bytes: usize,
}

/// The realistic table of `count` prefixes from `seed` (see [`route_table`]) as UPDATEs, each
/// packed with as many prefixes of one attribute set as fit in 4,096 octets, then an IPv4
/// End-of-RIB.
pub fn realistic_updates(
    count: u32,
    seed: u64,
    next_hop: Ipv4Addr,
    cx: &Context,
) -> (Vec<u8>, LoadSummary) {
    let table = route_table::generate(seed, count, SENDER_AS, next_hop);
    let mut out = Vec::new();
    let mut updates = 0;
    for (attributes, prefixes) in &table.sets {
        let encode = |nlri: Vec<Nlri>| {
            Message::Update(Box::new(UpdateMsg {
                attributes: attributes.clone(),
                nlri,
                ..UpdateMsg::default()
            }))
            .encode(cx)
        };
        let room = MAX_MESSAGE_LEN - encode(Vec::new()).len();
        let mut nlri = Vec::new();
        let mut used = 0;
        for &(address, length) in prefixes {
            let size = 1 + usize::from(length).div_ceil(8);
            if used + size > room {
                out.extend_from_slice(&encode(std::mem::take(&mut nlri)));
                updates += 1;
                used = 0;
            }
            let prefix = ipnet::IpNet::new(address.into(), length).expect("length <= 32");
            nlri.push(Nlri::new(prefix));
            used += size;
        }
        out.extend_from_slice(&encode(nlri));
        updates += 1;
    }
    out.extend_from_slice(
        &Message::Update(Box::new(UpdateMsg::end_of_rib_for(Family::Ipv4Unicast))).encode(cx),
    );
    let summary = LoadSummary {
        prefixes: count,
        attribute_sets: table.sets.len() as u32,
        updates,
        bytes: out.len(),
    };
    (out, summary)
}

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
