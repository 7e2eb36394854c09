use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use proptest::prelude::*;

use super::attribute::{
    flags, AsPath, MpReach, MpUnreach, Origin, PathAttributes, Remedy, Segment, SegmentType,
};
use super::open::GracefulRestart;
use super::update::ErrorAction;
use super::*;

fn hex(text: &str) -> Vec<u8> {
    let clean: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..clean.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).unwrap())
        .collect()
}

const MARKER: &str = "ffffffffffffffffffffffffffffffff";

fn decode(bytes: &[u8], cx: &Context) -> Result<Message, NotificationMsg> {
    let (message, len) = Message::decode(bytes, cx)?.expect("a whole message");
    assert_eq!(len, bytes.len());
    Ok(message)
}

fn four_octet() -> Context {
    Context {
        four_octet_as: true,
        ..Context::default()
    }
}

fn nlri(text: &str) -> Nlri {
    Nlri::new(text.parse().unwrap())
}

#[test]
fn keepalive_is_a_bare_header() {
    let bytes = hex(&format!("{MARKER} 0013 04"));
    assert_eq!(decode(&bytes, &Context::default()), Ok(Message::Keepalive));
    assert_eq!(
        Message::Keepalive.encode(&Context::default()).as_ref(),
        &bytes[..]
    );
}

#[test]
fn open_with_capabilities_matches_the_rfc_layout() {
    let open = OpenMsg::new(
        4_200_000_001,
        90,
        Ipv4Addr::new(198, 18, 0, 1),
        vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::Multiprotocol(Family::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::EnhancedRouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restarting: true,
                notification: false,
                restart_time: 120,
                families: vec![(Family::Ipv4Unicast, true)],
            }),
            Capability::AddPath(vec![(Family::Ipv4Unicast, 3)]),
            Capability::ExtendedMessage,
        ],
    );
    let expected = hex(&format!(
        "{MARKER} 0045 01  04 5ba0 005a c6120001 28  02 26 \
         01 04 0001 00 01   01 04 0002 00 01   02 00   46 00 \
         40 06 8078 0001 01 80   45 04 0001 01 03   06 00   41 04 fa56ea01"
    ));
    let encoded = Message::Open(open.clone()).encode(&Context::default());
    assert_eq!(encoded.as_ref(), &expected[..]);
    let Message::Open(back) = decode(&expected, &Context::default()).unwrap() else {
        panic!("an OPEN")
    };
    assert_eq!(back, open);
    assert_eq!(back.asn(), 4_200_000_001);
    assert_eq!(back.my_as, 23456, "AS_TRANS in the 2-octet field");
}

#[test]
fn header_errors_are_the_exact_notifications() {
    let cx = Context::default();
    type Expected = (u8, u8, Vec<u8>);
    let cases: Vec<(Vec<u8>, Expected)> = vec![
        (
            hex("fffffffffffffffffffffffffffffffe 0013 04"),
            (1, 1, vec![]),
        ),
        (hex(&format!("{MARKER} 0012 04")), (1, 2, vec![0x00, 0x12])),
        (hex(&format!("{MARKER} 1001 02")), (1, 2, vec![0x10, 0x01])),
        (
            hex(&format!("{MARKER} 0014 04 00")),
            (1, 2, vec![0x00, 0x14]),
        ),
        (hex(&format!("{MARKER} 0013 09")), (1, 3, vec![0x09])),
        (
            hex(&format!("{MARKER} 0014 03 06")),
            (1, 2, vec![0x00, 0x14]),
        ),
        (
            hex(&format!("{MARKER} 0016 05 0001 00")),
            (7, 1, hex(&format!("{MARKER} 0016 05 0001 00"))),
        ),
        (
            hex(&format!("{MARKER} 0018 05 0001 0000 00")),
            (7, 1, hex(&format!("{MARKER} 0018 05 0001 0000 00"))),
        ),
    ];
    for (bytes, (code, subcode, data)) in cases {
        let len = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
        let mut padded = bytes.clone();
        padded.resize(padded.len().max(len), 0);
        let err = Message::decode(&padded, &cx).expect_err(&format!("{bytes:02x?}"));
        assert_eq!(
            (err.code.code(), err.subcode, err.data.to_vec()),
            (code, subcode, data),
            "{bytes:02x?}"
        );
    }
    // A partial message waits for more bytes.
    assert_eq!(
        Message::decode(&hex(&format!("{MARKER} 0013")), &cx),
        Ok(None)
    );
    assert_eq!(
        Message::decode(&hex(&format!("{MARKER} 0020 02 0000")), &cx),
        Ok(None)
    );
}

#[test]
fn open_errors_are_the_exact_notifications() {
    let open = |version: &str, hold: &str, id: &str, params: &str| {
        let body = hex(&format!("{version} fde8 {hold} {id} {params}"));
        let mut bytes = hex(MARKER);
        bytes.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        bytes.push(1);
        bytes.extend_from_slice(&body);
        Message::decode(&bytes, &Context::default())
    };
    let code = |result: Result<Option<(Message, usize)>, NotificationMsg>| {
        let err = result.expect_err("refused");
        (err.code.code(), err.subcode, err.data.to_vec())
    };
    assert_eq!(
        code(open("03", "005a", "c6120001", "00")),
        (2, 1, vec![0, 4])
    );
    assert_eq!(code(open("04", "0002", "c6120001", "00")), (2, 6, vec![]));
    assert_eq!(code(open("04", "005a", "00000000", "00")), (2, 3, vec![]));
    assert_eq!(
        code(open("04", "005a", "c6120001", "03 01 01 00")),
        (2, 4, vec![])
    );
    assert_eq!(
        code(open("04", "005a", "c6120001", "04 02 02 41 04")),
        (1, 2, vec![0, 0x21])
    );
    assert_eq!(
        code(open("04", "005a", "c6120001", "06 02 04 41 02 0000")),
        (2, 0, vec![65])
    );
    // Hold time 0 is allowed (no keepalives); unknown capabilities are kept.
    let Ok(Some((Message::Open(ok), _))) = open("04", "0000", "c6120001", "05 02 03 7f 01 aa")
    else {
        panic!()
    };
    assert_eq!(
        ok.capabilities,
        vec![Capability::Unknown {
            code: 127,
            value: Bytes::from_static(&[0xaa])
        }]
    );
}

/// An UPDATE body → message bytes.
fn update_bytes(body: &str) -> Vec<u8> {
    let body = hex(body);
    let mut bytes = hex(MARKER);
    bytes.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    bytes.push(2);
    bytes.extend_from_slice(&body);
    bytes
}

/// An UPDATE body from its three parts, with both length fields computed.
fn body(withdrawn: &str, attributes: &str, nlri: &str) -> String {
    let (w, a) = (hex(withdrawn), hex(attributes));
    format!(
        "{:04x} {withdrawn} {:04x} {attributes} {nlri}",
        w.len(),
        a.len()
    )
}

/// ORIGIN IGP, AS_PATH [65002] (4-octet), NEXT_HOP 198.18.0.2.
const BASE_ATTRS: &str = "40 01 01 00  40 02 06 02 01 0000fdea  40 03 04 c6120002";

fn decode_update(body: &str, cx: &Context) -> Result<UpdateMsg, NotificationMsg> {
    match decode(&update_bytes(body), cx)? {
        Message::Update(update) => Ok(*update),
        other => panic!("not an UPDATE: {other:?}"),
    }
}

#[test]
fn a_plain_update_decodes_every_attribute() {
    let body = body(
        "",
        &format!(
            "{BASE_ATTRS}  80 04 04 00000064  40 05 04 00000096  c0 08 08 fde80064 ffffff01 \
             c0 10 08 0002fde8 00000064  c0 20 0c 0000fde9 00000001 00000002"
        ),
        "18 0a0a00  20 0a0b0c0d",
    );
    let update = decode_update(&body, &four_octet()).unwrap();
    let a = &update.attributes;
    assert_eq!(update.error_action, ErrorAction::None);
    assert_eq!(a.origin, Some(Origin::Igp));
    assert_eq!(a.as_path, Some(AsPath::sequence(vec![65002])));
    assert_eq!(a.next_hop, Some(Ipv4Addr::new(198, 18, 0, 2)));
    assert_eq!((a.med, a.local_pref), (Some(100), Some(150)));
    assert_eq!(
        a.communities,
        vec![0xfde8_0064, attribute::community::NO_EXPORT]
    );
    assert_eq!(*a.large_communities, [(65001, 1, 2)]);
    assert_eq!(*a.extended_communities, [[0, 2, 0xfd, 0xe8, 0, 0, 0, 0x64]]);
    assert_eq!(
        update.nlri,
        vec![nlri("10.10.0.0/24"), nlri("10.11.12.13/32")]
    );
    // And it encodes back to the same bytes.
    let mut again = bytes::BytesMut::new();
    update.encode(&mut again, &four_octet());
    assert_eq!(again.as_ref(), &hex(&body)[..]);
}

#[test]
fn rfc7606_actions_are_taken_per_attribute() {
    let cx = four_octet();
    let action = |body: String| decode_update(&body, &cx).map(|u| u.error_action);
    let remedies = |body: String| match action(body).unwrap() {
        ErrorAction::TreatAsWithdraw(errors) | ErrorAction::Discarded(errors) => errors
            .iter()
            .map(|e| (e.code, e.remedy))
            .collect::<Vec<_>>(),
        ErrorAction::None => vec![],
    };
    // Invalid ORIGIN value → treat-as-withdraw.
    let origin3 = "40 01 01 03  40 02 06 02 01 0000fdea  40 03 04 c6120002";
    assert_eq!(
        remedies(body("", origin3, "18 0a0a00")),
        vec![(1, Remedy::TreatAsWithdraw)]
    );
    // Missing NEXT_HOP with IPv4 NLRI → treat-as-withdraw, data = the type code.
    let no_next_hop = "40 01 01 00  40 02 06 02 01 0000fdea";
    assert_eq!(
        remedies(body("", no_next_hop, "18 0a0a00")),
        vec![(3, Remedy::TreatAsWithdraw)]
    );
    // ...but an UPDATE that only withdraws needs no attributes at all.
    assert_eq!(remedies(body("18 0a0a00", "", "")), vec![]);
    // ATOMIC_AGGREGATE with a length → attribute discard, the route stands.
    assert_eq!(
        remedies(body("", &format!("{BASE_ATTRS} 40 06 01 00"), "18 0a0a00")),
        vec![(6, Remedy::Discard)]
    );
    // Wrong flags on MED (well-known instead of optional) → treat-as-withdraw.
    assert_eq!(
        remedies(body(
            "",
            &format!("{BASE_ATTRS} 40 04 04 00000001"),
            "18 0a0a00"
        )),
        vec![(4, Remedy::TreatAsWithdraw)]
    );
    // COMMUNITIES of 3 octets → treat-as-withdraw.
    assert_eq!(
        remedies(body(
            "",
            &format!("{BASE_ATTRS} c0 08 03 000001"),
            "18 0a0a00"
        )),
        vec![(8, Remedy::TreatAsWithdraw)]
    );
    // An attribute whose length overruns the list → treat-as-withdraw, NLRI still read.
    let update = decode_update(
        &body("", &format!("{BASE_ATTRS} c0 08 08 00000001"), "18 0a0a00"),
        &cx,
    )
    .unwrap();
    assert!(update.treat_as_withdraw());
    assert_eq!(update.nlri, vec![nlri("10.10.0.0/24")]);
    // A repeated attribute: the first one counts.
    let update = decode_update(
        &body("", &format!("{BASE_ATTRS} 40 01 01 02"), "18 0a0a00"),
        &cx,
    )
    .unwrap();
    assert_eq!(
        (update.attributes.origin, update.treat_as_withdraw()),
        (Some(Origin::Igp), false)
    );
    // An unknown optional transitive attribute is kept with PARTIAL set; a non-transitive one is dropped.
    let update = decode_update(
        &body(
            "",
            &format!("{BASE_ATTRS} c0 63 02 abcd 80 64 01 ff"),
            "18 0a0a00",
        ),
        &cx,
    )
    .unwrap();
    assert_eq!(update.attributes.unknown.len(), 1);
    assert_eq!(
        update.attributes.unknown[0].flags,
        flags::OPTIONAL | flags::TRANSITIVE | flags::PARTIAL
    );
    // Session resets: unrecognized well-known (3/2), malformed MP_REACH (3/9), bad NLRI (3/10),
    // withdrawn length overrun (3/1).
    let notify = |body: String| {
        let err = decode_update(&body, &cx).unwrap_err();
        (err.code.code(), err.subcode)
    };
    assert_eq!(
        notify(body("", &format!("{BASE_ATTRS} 40 63 01 00"), "18 0a0a00")),
        (3, 2)
    );
    assert_eq!(
        notify(body(
            "",
            &format!("{BASE_ATTRS} 80 0e 03 0002 01"),
            "18 0a0a00"
        )),
        (3, 9)
    );
    assert_eq!(notify(body("", BASE_ATTRS, "21 0a0a0000 00")), (3, 10));
    assert_eq!(notify("0005 18 0a0a".into()), (3, 1));
}

#[test]
fn two_octet_peers_see_as_trans_and_as4_path() {
    let path = AsPath::sequence(vec![65001, 4_200_000_001, 65003]);
    let update = UpdateMsg {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(path.clone()),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
            aggregator: Some((4_200_000_001, Ipv4Addr::new(198, 18, 0, 9))),
            ..PathAttributes::default()
        },
        nlri: vec![nlri("10.0.0.0/24")],
        ..UpdateMsg::default()
    };
    let two = Context::default();
    let bytes = Message::Update(Box::new(update.clone())).encode(&two);
    // On the wire: AS_PATH with AS_TRANS (0x5ba0), and AS4_PATH / AS4_AGGREGATOR.
    let wire = bytes.as_ref();
    assert!(
        wire.windows(8)
            .any(|w| w == hex("02 03 fde9 5ba0 fdeb").as_slice()),
        "{wire:02x?}"
    );
    assert!(
        wire.windows(3).any(|w| w == [0xc0, 17, 14]),
        "AS4_PATH present"
    );
    assert!(
        wire.windows(3).any(|w| w == [0xc0, 18, 8]),
        "AS4_AGGREGATOR present"
    );
    let Message::Update(back) = decode(wire, &two).unwrap() else {
        panic!()
    };
    assert_eq!(
        back.attributes.as_path,
        Some(path),
        "merged back to the true path"
    );
    assert_eq!(back.attributes.aggregator, update.attributes.aggregator);
}

#[test]
fn end_of_rib_markers() {
    let v4 = UpdateMsg::end_of_rib_for(Family::Ipv4Unicast);
    let v6 = UpdateMsg::end_of_rib_for(Family::Ipv6Unicast);
    let cx = four_octet();
    assert_eq!(
        Message::Update(Box::new(v4.clone())).encode(&cx).as_ref(),
        &hex(&format!("{MARKER} 0017 02 0000 0000"))[..]
    );
    for marker in [v4, v6] {
        let family = marker.end_of_rib();
        let Message::Update(back) =
            decode(&Message::Update(Box::new(marker)).encode(&cx), &cx).unwrap()
        else {
            panic!()
        };
        assert_eq!(back.end_of_rib(), family);
        assert!(family.is_some());
    }
    assert_eq!(
        UpdateMsg {
            withdrawn: vec![nlri("10.0.0.0/8")],
            ..UpdateMsg::default()
        }
        .end_of_rib(),
        None
    );
}

#[test]
fn notification_and_route_refresh_round_trip() {
    let cx = Context::default();
    let cease = NotificationMsg::new(ErrorCode::Cease, 2, Bytes::from_static(b"bye"));
    let bytes = Message::Notification(cease.clone()).encode(&cx);
    assert_eq!(
        bytes.as_ref(),
        &hex(&format!("{MARKER} 0018 03 06 02 627965"))[..]
    );
    assert_eq!(
        decode(&bytes, &cx),
        Ok(Message::Notification(cease.clone()))
    );
    assert_eq!(
        cease.to_string(),
        "Cease: Administrative Shutdown (6/2) data 627965"
    );
    let refresh = RouteRefreshMsg {
        family: Family::Ipv6Unicast,
        subtype: 1,
    };
    let bytes = Message::RouteRefresh(refresh).encode(&cx);
    assert_eq!(
        bytes.as_ref(),
        &hex(&format!("{MARKER} 0017 05 0002 01 01"))[..]
    );
    assert_eq!(decode(&bytes, &cx), Ok(Message::RouteRefresh(refresh)));
}

fn arb_v4() -> impl Strategy<Value = Nlri> {
    (any::<u32>(), 0u8..=32, proptest::option::of(any::<u32>())).prop_map(|(addr, len, id)| Nlri {
        path_id: id,
        ..Nlri::new(ipnet::IpNet::new(IpAddr::V4(Ipv4Addr::from(addr)), len).unwrap())
    })
}

fn arb_v6() -> impl Strategy<Value = Nlri> {
    (any::<u128>(), 0u8..=128, proptest::option::of(any::<u32>())).prop_map(|(addr, len, id)| {
        Nlri {
            path_id: id,
            ..Nlri::new(ipnet::IpNet::new(IpAddr::V6(Ipv6Addr::from(addr)), len).unwrap())
        }
    })
}

fn arb_path() -> impl Strategy<Value = AsPath> {
    let segment = (
        prop_oneof![Just(SegmentType::Sequence), Just(SegmentType::Set)],
        prop::collection::vec(any::<u32>(), 1..6),
    );
    prop::collection::vec(segment, 0..4).prop_map(|segments| {
        AsPath::from_segments(
            segments
                .iter()
                .map(|(kind, asns)| Segment { kind: *kind, asns }),
        )
    })
}

prop_compose! {
    fn arb_update()(
        four in any::<bool>(),
        add_path in any::<bool>(),
        withdrawn in prop::collection::vec(arb_v4(), 0..5),
        announced in prop::collection::vec(arb_v4(), 0..5),
        v6 in prop::collection::vec(arb_v6(), 0..5),
        v6_gone in prop::collection::vec(arb_v6(), 0..3),
        path in arb_path(),
        med in proptest::option::of(any::<u32>()),
        local_pref in proptest::option::of(any::<u32>()),
        communities in prop::collection::vec(any::<u32>(), 0..4),
        large in prop::collection::vec(any::<(u32, u32, u32)>(), 0..3),
        cluster in prop::collection::vec(any::<u32>(), 0..3),
        originator in proptest::option::of(any::<u32>()),
        origin in prop_oneof![Just(Origin::Igp), Just(Origin::Egp), Just(Origin::Incomplete)],
    ) -> (Context, UpdateMsg) {
        let families: std::collections::BTreeSet<Family> = if add_path { [Family::Ipv4Unicast, Family::Ipv6Unicast].into_iter().collect() } else { Default::default() };
        let cx = Context { four_octet_as: four, extended_messages: true, add_path_receive: families.clone(), add_path_send: families };
        let strip = |list: Vec<Nlri>| list.into_iter().map(|n| Nlri { path_id: if add_path { Some(n.path_id.unwrap_or(0)) } else { None }, ..n }).collect::<Vec<_>>();
        // Without 4-octet support only 2-octet numbers survive AS4_PATH merging when sets are involved.
        let path = if four { path } else { let two: Vec<(SegmentType, Vec<u32>)> = path.segments().map(|s| (s.kind, s.asns.iter().map(|a| a & 0xffff).collect())).collect(); AsPath::from_segments(two.iter().map(|(kind, asns)| Segment { kind: *kind, asns })) };
        let attributes = PathAttributes {
            origin: Some(origin),
            as_path: Some(path),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
            med,
            local_pref,
            communities,
            large_communities: large.into(),
            cluster_list: cluster.into_iter().map(Ipv4Addr::from).collect(),
            originator_id: originator.map(Ipv4Addr::from),
            mp_reach: (!v6.is_empty()).then(|| Box::new(MpReach { family: Family::Ipv6Unicast, next_hops: vec!["fd00::1".parse().unwrap()], nlri: strip(v6) })),
            mp_unreach: (!v6_gone.is_empty()).then(|| Box::new(MpUnreach { family: Family::Ipv6Unicast, withdrawn: strip(v6_gone) })),
            ..PathAttributes::default()
        };
        (cx, UpdateMsg { withdrawn: strip(withdrawn), attributes, nlri: strip(announced), error_action: ErrorAction::None })
    }
}

proptest! {
    #[test]
    fn update_encode_then_decode_is_identity((cx, update) in arb_update()) {
        let bytes = Message::Update(Box::new(update.clone())).encode(&cx);
        let decoded = Message::decode(&bytes, &cx);
        prop_assert_eq!(decoded, Ok(Some((Message::Update(Box::new(update)), bytes.len()))));
    }

    #[test]
    fn decoding_never_panics(body in prop::collection::vec(any::<u8>(), 0..300), kind in 1u8..6, four in any::<bool>()) {
        let mut bytes = hex(MARKER);
        bytes.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        let cx = Context { four_octet_as: four, ..Context::default() };
        let _ = Message::decode(&bytes, &cx);
    }
}

/// An AS path as it was kept before it was flattened into one allocation: a list of segments,
/// each a list of ASes. The compact [`AsPath`] must behave exactly as this model.
type ModelPath = Vec<(SegmentType, Vec<u32>)>;

fn arb_kind() -> impl Strategy<Value = SegmentType> {
    prop_oneof![
        Just(SegmentType::Sequence),
        Just(SegmentType::Set),
        Just(SegmentType::ConfedSequence),
        Just(SegmentType::ConfedSet),
    ]
}

/// Segments of 1 to 299 ASes (past the 255 of one wire segment), often from a few numbers, so
/// that an AS repeats as in a loop or a prepend.
fn arb_model_path() -> impl Strategy<Value = ModelPath> {
    let asn = prop_oneof![64512u32..64516, any::<u32>(), 0u32..0x1_0000];
    let segment = (
        arb_kind(),
        prop_oneof![
            prop::collection::vec(asn.clone(), 1..12),
            prop::collection::vec(asn, 250..300),
        ],
    );
    prop::collection::vec(segment, 0..4)
}

fn compact(model: &ModelPath) -> AsPath {
    AsPath::from_segments(
        model
            .iter()
            .map(|(kind, asns)| Segment { kind: *kind, asns }),
    )
}

fn model_of(path: &AsPath) -> ModelPath {
    path.segments().map(|s| (s.kind, s.asns.to_vec())).collect()
}

fn model_len(model: &ModelPath) -> usize {
    model
        .iter()
        .map(|(kind, asns)| match kind {
            SegmentType::Sequence => asns.len(),
            SegmentType::Set => 1,
            _ => 0,
        })
        .sum()
}

fn model_prepend(model: &mut ModelPath, asn: u32) {
    match model.first_mut() {
        Some((SegmentType::Sequence, asns)) if asns.len() < 255 => asns.insert(0, asn),
        _ => model.insert(0, (SegmentType::Sequence, vec![asn])),
    }
}

fn model_merge_as4(model: &ModelPath, as4: &ModelPath) -> ModelPath {
    let (len, len4) = (model_len(model), model_len(as4));
    if len < len4 {
        return model.clone();
    }
    let mut keep = len - len4;
    let mut merged = Vec::new();
    for (kind, asns) in model {
        if keep == 0 {
            break;
        }
        match kind {
            SegmentType::Sequence if asns.len() > keep => {
                merged.push((*kind, asns[..keep].to_vec()));
                keep = 0;
            }
            SegmentType::Sequence => {
                keep -= asns.len();
                merged.push((*kind, asns.clone()));
            }
            SegmentType::Set => {
                keep -= 1;
                merged.push((*kind, asns.clone()));
            }
            _ => merged.push((*kind, asns.clone())),
        }
    }
    merged.extend(as4.iter().cloned());
    merged
}

/// The AS_PATH value as the segment list was written: segments of more than 255 ASes split.
fn model_encode(model: &ModelPath, four_octet: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, asns) in model {
        let code = match kind {
            SegmentType::Set => 1,
            SegmentType::Sequence => 2,
            SegmentType::ConfedSequence => 3,
            SegmentType::ConfedSet => 4,
        };
        for chunk in asns.chunks(255) {
            out.extend([code, chunk.len() as u8]);
            for &asn in chunk {
                if four_octet {
                    out.extend(asn.to_be_bytes());
                } else {
                    out.extend(u16::try_from(asn).unwrap_or(23456).to_be_bytes());
                }
            }
        }
    }
    out
}

/// The segment-list decoder, as it was: `None` for anything malformed.
fn model_decode(mut bytes: &[u8], four_octet: bool) -> Option<ModelPath> {
    let width = if four_octet { 4 } else { 2 };
    let mut model = Vec::new();
    while let [code, count, rest @ ..] = bytes {
        let kind = match code {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return None,
        };
        let size = usize::from(*count) * width;
        if *count == 0 || rest.len() < size {
            return None;
        }
        let asns = rest[..size]
            .chunks(width)
            .map(|c| match *c {
                [a, b] => u32::from(u16::from_be_bytes([a, b])),
                [a, b, c, d] => u32::from_be_bytes([a, b, c, d]),
                _ => unreachable!("chunks of the width"),
            })
            .collect();
        model.push((kind, asns));
        bytes = &rest[size..];
    }
    bytes.is_empty().then_some(model)
}

/// The AS_PATH attribute decoded from `value`, or `None` when it was found malformed.
fn decode_as_path(value: &[u8], four_octet: bool) -> Option<AsPath> {
    let cx = Context {
        four_octet_as: four_octet,
        ..Context::default()
    };
    let mut decoded = attribute::Decoded::default();
    decoded.add(flags::TRANSITIVE, 2, value, value, &cx);
    decoded
        .errors
        .is_empty()
        .then(|| decoded.attributes.as_path.expect("decoded"))
}

/// Encodes a path as the AS_PATH attribute and returns its value.
fn encode_as_path(path: &AsPath, four_octet: bool) -> Vec<u8> {
    let cx = Context {
        four_octet_as: four_octet,
        ..Context::default()
    };
    let attributes = PathAttributes {
        as_path: Some(path.clone()),
        ..PathAttributes::default()
    };
    let mut out = bytes::BytesMut::new();
    attributes.encode(&mut out, &cx);
    let header = if out[0] & flags::EXTENDED_LENGTH != 0 {
        4
    } else {
        3
    };
    assert_eq!(out[1], 2, "AS_PATH first");
    let len = if header == 4 {
        usize::from(u16::from_be_bytes([out[2], out[3]]))
    } else {
        usize::from(out[2])
    };
    out[header..header + len].to_vec()
}

#[test]
fn as_paths_keep_their_segments() {
    let model: ModelPath = vec![
        (SegmentType::ConfedSequence, vec![64600]),
        (SegmentType::Sequence, vec![65002, 65001]),
        (SegmentType::Set, vec![64512, 64513]),
    ];
    let path = compact(&model);
    assert_eq!(model_of(&path), model);
    assert_eq!(path.len(), 3);
    assert_eq!(path.first_as(), Some(65002));
    assert_eq!(
        format!("{path:?}"),
        "[Segment { kind: ConfedSequence, asns: [64600] }, \
         Segment { kind: Sequence, asns: [65002, 65001] }, \
         Segment { kind: Set, asns: [64512, 64513] }]"
    );
    assert!(AsPath::default().is_empty() && AsPath::sequence(vec![]).is_empty());
    assert_eq!(AsPath::sequence(vec![]), AsPath::default());
    let mut path = AsPath::default();
    path.prepend(65000);
    assert_eq!(path, AsPath::sequence(vec![65000]));
    path.prepend(65001);
    assert_eq!(path, AsPath::sequence(vec![65001, 65000]));
}

#[test]
fn malformed_as_paths_are_refused() {
    for (value, why) in [
        (&[2u8, 0][..], "a zero-length segment (RFC 7606 §7.2)"),
        (&[5, 1, 0, 1], "an unknown segment type"),
        (&[2, 2, 0, 1], "fewer ASes than counted"),
        (&[2, 1, 0, 1, 2], "a lone octet after the last segment"),
    ] {
        assert_eq!(decode_as_path(value, false), None, "{why}");
    }
    assert_eq!(decode_as_path(&[], false), Some(AsPath::default()));
}

proptest! {
    #[test]
    fn as_path_behaves_as_the_segment_list(model in arb_model_path(), asn in prop_oneof![64512u32..64516, any::<u32>()]) {
        let path = compact(&model);
        prop_assert_eq!(model_of(&path), model.clone());
        prop_assert_eq!(path.len(), model_len(&model));
        prop_assert_eq!(path.is_empty(), model.is_empty());
        let flat: Vec<u32> = model.iter().flat_map(|(_, asns)| asns.iter().copied()).collect();
        prop_assert_eq!(path.asns().collect::<Vec<_>>(), flat.clone());
        // The loop check counts our AS in the path.
        prop_assert_eq!(path.asns().filter(|a| *a == asn).count(), flat.iter().filter(|a| **a == asn).count());
        let first = model.iter().find(|(kind, _)| *kind == SegmentType::Sequence).and_then(|(_, asns)| asns.first().copied());
        prop_assert_eq!(path.first_as(), first);
        let (mut prepended, mut model_prepended) = (path.clone(), model.clone());
        for _ in 0..3 {
            prepended.prepend(asn);
            model_prepend(&mut model_prepended, asn);
            prop_assert_eq!(model_of(&prepended), model_prepended.clone());
        }
        prop_assert_eq!(&compact(&model_prepended), &prepended);
        // Equal exactly when the segment lists are.
        prop_assert_eq!(path == prepended, model == model_prepended);
    }

    #[test]
    fn as_path_merges_as4_as_the_segment_list(model in arb_model_path(), as4 in arb_model_path()) {
        let merged = compact(&model).merge_as4(&compact(&as4));
        prop_assert_eq!(model_of(&merged), model_merge_as4(&model, &as4));
    }

    #[test]
    fn as_path_encodes_and_decodes_as_the_segment_list(model in arb_model_path(), four in any::<bool>()) {
        let path = compact(&model);
        let value = encode_as_path(&path, four);
        prop_assert_eq!(&value, &model_encode(&model, four));
        let decoded = decode_as_path(&value, four).expect("what we encode decodes");
        prop_assert_eq!(Some(model_of(&decoded)), model_decode(&value, four));
    }

    #[test]
    fn as_path_decoding_accepts_what_the_segment_list_did(value in prop::collection::vec(prop_oneof![0u8..6, any::<u8>()], 0..40), four in any::<bool>()) {
        let decoded = decode_as_path(&value, four);
        prop_assert_eq!(decoded.as_ref().map(model_of), model_decode(&value, four));
    }
}

#[test]
fn an_attribute_set_stays_small() {
    // Interned once per distinct set, hundreds of thousands of times in a full table: 160
    // bytes plus the `Arc` counts is one 192-byte allocation.
    assert!(std::mem::size_of::<PathAttributes>() <= 160);
    assert_eq!(std::mem::size_of::<Option<AsPath>>(), 16);
}
