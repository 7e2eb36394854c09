//! The benchmark sender: `twill-bgp-blast ADDR:PORT COUNT [realistic]`. It connects, encodes
//! COUNT distinct IPv4 /32 prefixes (10.0.0.0/8, 100 attribute sets) into UPDATEs, or with
//! `realistic` a realistic table of COUNT prefixes (`blast::realistic_updates`, seed
//! `blast::REALISTIC_SEED`; it prints `table prefixes=N sets=S updates=U bytes=B`), opens a
//! session as AS 65002, then writes every UPDATE as fast as the socket takes them and an
//! End-of-RIB. It prints `start NANOS` (Unix time) just before the first UPDATE byte and
//! `sent NANOS` after the last, then keeps the session alive until killed.

#![allow(clippy::disallowed_methods)] // A benchmark tool at the edge: it reads the clock.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use twill_bgpd::wire::{Capability, Context, Family, Message, OpenMsg};
use twill_interop_tests::blast;

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (address, count, realistic) = match args.as_slice() {
        [_, address, count] => (address, count, false),
        [_, address, count, table] if table == "realistic" => (address, count, true),
        _ => bail!("usage: twill-bgp-blast ADDR:PORT COUNT [realistic]"),
    };
    let count: u32 = count.parse()?;
    let cx = Context {
        four_octet_as: true,
        ..Context::default()
    };
    let mut stream = loop {
        match TcpStream::connect(address) {
            Ok(stream) => break stream,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let local = match stream.local_addr()?.ip() {
        std::net::IpAddr::V4(v4) => v4,
        other => bail!("an IPv4 session is needed, got {other}"),
    };
    let updates = if realistic {
        let (updates, summary) = blast::realistic_updates(count, blast::REALISTIC_SEED, local, &cx);
        println!(
            "table prefixes={} sets={} updates={} bytes={}",
            summary.prefixes, summary.attribute_sets, summary.updates, summary.bytes
        );
        updates
    } else {
        blast::updates(count, local, &cx)
    };
    let caps = vec![
        Capability::Multiprotocol(Family::Ipv4Unicast),
        Capability::RouteRefresh,
    ];
    let open = OpenMsg::new(blast::SENDER_AS, 240, local, caps);
    stream.write_all(&Message::Open(open).encode(&Context::initial()))?;
    stream.write_all(&Message::Keepalive.encode(&cx))?;
    // Wait for the receiver's OPEN and KEEPALIVE: the session is up on its side too.
    let mut buffer = Vec::new();
    let mut seen_keepalive = false;
    let mut chunk = [0u8; 4096];
    while !seen_keepalive {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("the receiver closed the connection");
        }
        buffer.extend_from_slice(&chunk[..n]);
        while let Ok(Some((message, len))) = Message::decode(&buffer, &cx) {
            buffer.drain(..len);
            seen_keepalive |= matches!(message, Message::Keepalive);
        }
    }
    println!("start {}", nanos());
    stream.write_all(&updates)?;
    println!("sent {}", nanos());
    loop {
        std::thread::sleep(Duration::from_secs(20));
        stream.write_all(&Message::Keepalive.encode(&cx))?;
        // Drain what the receiver sends so its writes never block.
        stream.set_nonblocking(true)?;
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                return Ok(());
            }
        }
        stream.set_nonblocking(false)?;
    }
}
