//! A minimal BGP listener for interop tests and byte-vector capture, built on Twill's codec:
//! `twill-bgp-capture ADDR:PORT ASN ROUTER_ID SECONDS [PREFIX...]`. It accepts one session,
//! answers the peer's OPEN with its own (multiprotocol IPv4/IPv6, route refresh, 4-octet AS,
//! graceful restart) and a KEEPALIVE, then prints every message it receives as
//! `TYPE HEX` lines until it has seen every PREFIX announced and an End-of-RIB for IPv4 and
//! IPv6, or SECONDS pass. A message the codec refuses is printed as `refused NOTIFICATION`,
//! sent back to the peer, and ends the run with exit code 1.

#![allow(clippy::disallowed_methods)] // A test tool at the edge: it reads the clock.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use twill_bgpd::wire::open::GracefulRestart;
use twill_bgpd::wire::{Capability, Context, Family, Message, OpenMsg};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Open(_) => "open",
        Message::Update(update) if update.end_of_rib().is_some() => "end-of-rib",
        Message::Update(_) => "update",
        Message::Notification(_) => "notification",
        Message::Keepalive => "keepalive",
        Message::RouteRefresh(_) => "route-refresh",
    }
}

/// The prefixes an UPDATE announces, as text.
fn announced(message: &Message) -> Vec<String> {
    let Message::Update(update) = message else {
        return Vec::new();
    };
    let mut out: Vec<String> = update.nlri.iter().map(|n| n.prefix.to_string()).collect();
    if let Some(reach) = &update.attributes.mp_reach {
        out.extend(reach.nlri.iter().map(|n| n.prefix.to_string()));
    }
    out
}

fn our_open(asn: u32, router_id: Ipv4Addr) -> OpenMsg {
    let families = vec![(Family::Ipv4Unicast, false), (Family::Ipv6Unicast, false)];
    OpenMsg::new(
        asn,
        90,
        router_id,
        vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::Multiprotocol(Family::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                notification: false,
                restart_time: 120,
                families,
            }),
        ],
    )
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, asn, router_id, seconds, wanted @ ..] = args.as_slice() else {
        bail!("usage: twill-bgp-capture ADDR:PORT ASN ROUTER_ID SECONDS [PREFIX...]");
    };
    let (asn, router_id): (u32, Ipv4Addr) = (asn.parse()?, router_id.parse()?);
    let deadline = Instant::now() + Duration::from_secs(seconds.parse()?);
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening {listen}");
    let (mut stream, peer) = listener.accept()?;
    println!("accepted {peer}");
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut cx = Context::initial();
    let mut buffer = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut end_of_rib: Vec<Family> = Vec::new();
    let mut chunk = [0u8; 65536];
    while Instant::now() < deadline {
        loop {
            match Message::decode(&buffer, &cx) {
                Ok(None) => break,
                Ok(Some((message, len))) => {
                    println!("{} {}", kind(&message), hex(&buffer[..len]));
                    buffer.drain(..len);
                    if let Message::Open(open) = &message {
                        cx.four_octet_as = open.has(&Capability::FourOctetAs(0));
                        stream.write_all(
                            &Message::Open(our_open(asn, router_id)).encode(&Context::initial()),
                        )?;
                        stream.write_all(&Message::Keepalive.encode(&cx))?;
                    }
                    if let Message::Update(update) = &message {
                        end_of_rib.extend(update.end_of_rib());
                    }
                    seen.extend(announced(&message));
                }
                Err(notification) => {
                    println!("refused {notification}");
                    let _ = stream.write_all(&Message::Notification(notification).encode(&cx));
                    std::process::exit(1);
                }
            }
        }
        let done = wanted.iter().all(|p| seen.contains(p))
            && [Family::Ipv4Unicast, Family::Ipv6Unicast]
                .iter()
                .all(|f| end_of_rib.contains(f));
        if done {
            println!("done");
            return Ok(());
        }
        match stream.read(&mut chunk) {
            Ok(0) => bail!("the peer closed the connection"),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err.into()),
        }
    }
    println!("timeout");
    std::process::exit(2);
}
