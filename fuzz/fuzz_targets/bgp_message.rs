//! Decoding a BGP message never panics, under every negotiated context; what decodes cleanly
//! encodes and decodes again to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_bgpd::wire::{Context, Family, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&switches, bytes)) = data.split_first() else { return };
    let mut cx = Context { four_octet_as: switches & 1 != 0, extended_messages: switches & 2 != 0, ..Context::default() };
    if switches & 4 != 0 {
        cx.add_path_receive = [Family::Ipv4Unicast, Family::Ipv6Unicast].into_iter().collect();
        cx.add_path_send = cx.add_path_receive.clone();
    }
    let mut rest = bytes;
    while let Ok(Some((message, len))) = Message::decode(rest, &cx) {
        let clean = match &message {
            Message::Update(update) => update.error_action == twill_bgpd::wire::update::ErrorAction::None,
            _ => true,
        };
        if clean {
            let again = message.encode(&cx);
            if let Ok(Some((decoded, _))) = Message::decode(&again, &cx) {
                assert_eq!(decoded, message);
            }
        }
        rest = &rest[len..];
    }
});
