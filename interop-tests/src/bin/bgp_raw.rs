//! A raw BGP test peer that sends what real speakers never would:
//! `twill-bgp-raw ADDR:PORT SCENARIO`. It prints every message it receives (`notification
//! CODE/SUBCODE DATA`, `keepalive`, …) and `closed` when Twill closes the connection.
//!
//! Scenarios: `treat-as-withdraw` (a route, then the same route with a malformed ORIGIN,
//! then a healthy second route; stays up for 20 s), `bad-marker`, `bad-version`,
//! `bad-length`.

#![allow(clippy::disallowed_methods)] // A test tool at the edge: it reads the clock.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::bail;
use twill_bgpd::wire::attribute::{AsPath, Origin, PathAttributes};
use twill_bgpd::wire::{Capability, Context, Family, Message, Nlri, OpenMsg, UpdateMsg};

const MY_AS: u32 = 65002;

fn open() -> Message {
    let caps = vec![
        Capability::Multiprotocol(Family::Ipv4Unicast),
        Capability::RouteRefresh,
    ];
    Message::Open(OpenMsg::new(
        MY_AS,
        30,
        Ipv4Addr::new(198, 18, 110, 2),
        caps,
    ))
}

fn announce(prefix: &str) -> UpdateMsg {
    UpdateMsg {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(vec![MY_AS])),
            next_hop: Some(Ipv4Addr::new(198, 18, 110, 2)),
            ..PathAttributes::default()
        },
        nlri: vec![Nlri::new(prefix.parse().expect("a prefix"))],
        ..UpdateMsg::default()
    }
}

/// An UPDATE for `prefix` whose ORIGIN value is 5 (RFC 7606 §7.1: treat-as-withdraw).
fn malformed_origin(prefix: &str, cx: &Context) -> Vec<u8> {
    let mut bytes = Message::Update(Box::new(announce(prefix)))
        .encode(cx)
        .to_vec();
    // The ORIGIN attribute is encoded first: flags 0x40, type 1, length 1, value.
    let at = bytes
        .windows(3)
        .position(|w| w == [0x40, 0x01, 0x01])
        .expect("ORIGIN present")
        + 3;
    bytes[at] = 5;
    bytes
}

fn report(
    stream: &mut TcpStream,
    cx: &Context,
    buffer: &mut Vec<u8>,
    until: Instant,
) -> anyhow::Result<bool> {
    let mut chunk = [0u8; 4096];
    while Instant::now() < until {
        match stream.read(&mut chunk) {
            Ok(0) => {
                println!("closed");
                return Ok(false);
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                println!("closed ({e})");
                return Ok(false);
            }
        }
        while let Ok(Some((message, len))) = Message::decode(buffer, cx) {
            match &message {
                Message::Notification(n) => {
                    let data: String = n.data.iter().map(|b| format!("{b:02x}")).collect();
                    println!("notification {}/{} {data}", n.code.code(), n.subcode);
                }
                Message::Open(_) => println!("open"),
                Message::Keepalive => println!("keepalive"),
                Message::Update(_) => println!("update"),
                Message::RouteRefresh(_) => println!("route-refresh"),
            }
            buffer.drain(..len);
        }
    }
    Ok(true)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, scenario] = args.as_slice() else {
        bail!("usage: twill-bgp-raw ADDR:PORT SCENARIO")
    };
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let cx = Context {
        four_octet_as: true,
        ..Context::default()
    };
    let mut buffer = Vec::new();
    let initial = Context::initial();
    match scenario.as_str() {
        "bad-marker" => {
            let mut bytes = open().encode(&initial).to_vec();
            bytes[3] = 0;
            stream.write_all(&bytes)?;
        }
        "bad-version" => {
            let mut bytes = open().encode(&initial).to_vec();
            bytes[19] = 3;
            stream.write_all(&bytes)?;
        }
        "bad-length" => {
            stream.write_all(&open().encode(&initial))?;
            stream.write_all(&Message::Keepalive.encode(&initial))?;
            report(
                &mut stream,
                &cx,
                &mut buffer,
                Instant::now() + Duration::from_secs(1),
            )?;
            let mut keepalive = Message::Keepalive.encode(&cx).to_vec();
            keepalive[17] = 18; // Length 18: below the minimum of 19.
            stream.write_all(&keepalive)?;
        }
        "treat-as-withdraw" => {
            stream.write_all(&open().encode(&initial))?;
            stream.write_all(&Message::Keepalive.encode(&initial))?;
            report(
                &mut stream,
                &cx,
                &mut buffer,
                Instant::now() + Duration::from_secs(1),
            )?;
            stream.write_all(&Message::Update(Box::new(announce("10.30.0.0/24"))).encode(&cx))?;
            println!("sent 10.30.0.0/24");
            report(
                &mut stream,
                &cx,
                &mut buffer,
                Instant::now() + Duration::from_secs(2),
            )?;
            stream.write_all(&malformed_origin("10.30.0.0/24", &cx))?;
            println!("sent malformed 10.30.0.0/24");
            report(
                &mut stream,
                &cx,
                &mut buffer,
                Instant::now() + Duration::from_secs(1),
            )?;
            stream.write_all(&Message::Update(Box::new(announce("10.31.0.0/24"))).encode(&cx))?;
            println!("sent 10.31.0.0/24");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                stream.write_all(&Message::Keepalive.encode(&cx))?;
                if !report(
                    &mut stream,
                    &cx,
                    &mut buffer,
                    Instant::now() + Duration::from_secs(2),
                )? {
                    return Ok(());
                }
            }
            return Ok(());
        }
        other => bail!("unknown scenario {other:?}"),
    }
    report(
        &mut stream,
        &cx,
        &mut buffer,
        Instant::now() + Duration::from_secs(5),
    )?;
    Ok(())
}
