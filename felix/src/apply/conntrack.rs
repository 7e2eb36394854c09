//! Connection tracking entries of addresses that left: deleted over ctnetlink (netfilter's
//! netlink protocol), as `conntrack -D` does, without a process per address.
//!
//! A released pod address must take no flows with it: Twill accepts established traffic
//! before any endpoint's policy, so an entry left behind would let the old pod's peers reach
//! whichever pod gets the address next without that pod's policy being asked. One dump of the
//! family's table finds every entry whose original or reply tuple has one of the addresses
//! as source or destination (every protocol); each is deleted by its original tuple, zone and
//! ID (so an entry created since, with the same tuple, is left alone).
//!
//! No crate speaks ctnetlink's conntrack messages (netlink-packet-netfilter covers NFLOG),
//! so the few messages needed are written here on netlink-sys, the socket layer the rest of
//! the workspace's netlink uses; encoding and parsing are pure and tested with bytes.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`.
const MSG_NEW: u16 = 1 << 8;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`.
const MSG_GET: u16 = (1 << 8) | 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE`.
const MSG_DELETE: u16 = (1 << 8) | 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const HEADER: usize = 16;
/// `struct nfgenmsg`: family, version, resource ID.
const NFGENMSG: usize = 4;
#[cfg(test)]
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// One conntrack entry, as much of it as deleting it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Source and destination of the original and the reply direction.
    pub addresses: Vec<IpAddr>,
    /// The `CTA_TUPLE_ORIG` attribute as the kernel sent it (header included).
    orig: Vec<u8>,
    /// `CTA_ZONE` and `CTA_ID`, as sent, when present.
    extra: Vec<u8>,
}

fn family_byte(v6: bool) -> u8 {
    if v6 {
        AF_INET6
    } else {
        AF_INET
    }
}

fn message(kind: u16, flags: u16, sequence: u32, family: u8, attributes: &[u8]) -> Vec<u8> {
    let length = HEADER + NFGENMSG + attributes.len();
    let mut bytes = Vec::with_capacity(length);
    bytes.extend_from_slice(&(length as u32).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(&flags.to_ne_bytes());
    bytes.extend_from_slice(&sequence.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(&[family, 0, 0, 0]);
    bytes.extend_from_slice(attributes);
    bytes
}

/// The request for a dump of one family's table.
pub fn dump_request(v6: bool, sequence: u32) -> Vec<u8> {
    message(
        MSG_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        family_byte(v6),
        &[],
    )
}

/// The request that deletes one entry (acknowledged). Never without a tuple: a DELETE with
/// none flushes the whole table (entries only come from [`parse_entry`], which requires it).
pub fn delete_request(entry: &Entry, v6: bool, sequence: u32) -> Vec<u8> {
    assert!(
        !entry.orig.is_empty(),
        "a conntrack DELETE without a tuple would flush the table"
    );
    let mut attributes = entry.orig.clone();
    attributes.extend_from_slice(&entry.extra);
    message(
        MSG_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        sequence,
        family_byte(v6),
        &attributes,
    )
}

/// The attributes of a buffer: (type without flags, payload, the whole attribute padded).
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let length = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > bytes.len() {
            return None;
        }
        let padded = (length + 3) & !3;
        let whole = &bytes[..padded.min(bytes.len())];
        let item = (kind, &bytes[4..length], whole);
        bytes = &bytes[padded.min(bytes.len())..];
        Some(item)
    })
}

fn tuple_addresses(tuple: &[u8], out: &mut Vec<IpAddr>) {
    for (kind, payload, _) in attributes(tuple) {
        if kind != CTA_TUPLE_IP {
            continue;
        }
        for (kind, value, _) in attributes(payload) {
            match (kind, value.len()) {
                (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                    let octets: [u8; 4] = value.try_into().expect("four bytes");
                    out.push(IpAddr::from(octets));
                }
                (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                    let octets: [u8; 16] = value.try_into().expect("sixteen bytes");
                    out.push(IpAddr::from(octets));
                }
                _ => {}
            }
        }
    }
}

/// The entry of one conntrack message's payload (after the netlink header), if it is one.
pub fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let attrs = payload.get(NFGENMSG..)?;
    let mut entry = Entry {
        addresses: Vec::new(),
        orig: Vec::new(),
        extra: Vec::new(),
    };
    for (kind, value, whole) in attributes(attrs) {
        match kind {
            CTA_TUPLE_ORIG => {
                entry.orig = whole.to_vec();
                tuple_addresses(value, &mut entry.addresses);
            }
            CTA_TUPLE_REPLY => tuple_addresses(value, &mut entry.addresses),
            CTA_ZONE | CTA_ID => entry.extra.extend_from_slice(whole),
            _ => {}
        }
    }
    (!entry.orig.is_empty()).then_some(entry)
}

/// What one received buffer held: entries, whether the reply is complete, and errors (an
/// acknowledgement is an error 0).
#[derive(Debug, Default)]
pub struct Received {
    /// Conntrack entries.
    pub entries: Vec<Entry>,
    /// NLMSG_DONE seen.
    pub done: bool,
    /// `(sequence, errno)` of NLMSG_ERROR messages (0: an acknowledgement).
    pub errors: Vec<(u32, i32)>,
}

/// Splits a buffer of netlink messages.
pub fn parse_messages(mut bytes: &[u8]) -> Received {
    let mut received = Received::default();
    while bytes.len() >= HEADER {
        let length = u32::from_ne_bytes(bytes[0..4].try_into().expect("four bytes")) as usize;
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let sequence = u32::from_ne_bytes(bytes[8..12].try_into().expect("four bytes"));
        if length < HEADER || length > bytes.len() {
            break;
        }
        let payload = &bytes[HEADER..length];
        match kind {
            NLMSG_DONE => received.done = true,
            NLMSG_ERROR if payload.len() >= 4 => {
                let code = i32::from_ne_bytes(payload[0..4].try_into().expect("four bytes"));
                received.errors.push((sequence, -code));
            }
            // Dumped entries come as IPCTNL_MSG_CT_NEW.
            MSG_NEW | MSG_GET => received.entries.extend(parse_entry(payload)),
            _ => {}
        }
        bytes = &bytes[((length + 3) & !3).min(bytes.len())..];
    }
    received
}

/// Deletes every conntrack entry of the calling thread's network namespace that has one of
/// `addresses` as source or destination, in either direction. Returns how many went.
pub fn delete_flows_of(addresses: &BTreeSet<IpAddr>) -> io::Result<usize> {
    let mut deleted = 0;
    for v6 in [false, true] {
        let wanted: BTreeSet<&IpAddr> = addresses.iter().filter(|a| a.is_ipv6() == v6).collect();
        if wanted.is_empty() {
            continue;
        }
        let socket = open()?;
        let entries = dump(&socket, v6, |e| {
            e.addresses.iter().any(|a| wanted.contains(a))
        })?;
        deleted += delete(&socket, &entries, v6)?;
    }
    Ok(deleted)
}

fn open() -> io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn receive(socket: &netlink_sys::Socket) -> io::Result<Received> {
    let mut buffer = vec![0u8; 1 << 16];
    let n = socket.recv(&mut &mut buffer[..], 0)?;
    Ok(parse_messages(&buffer[..n]))
}

/// The entries of one family's table that `keep` accepts (filtered buffer by buffer, so a
/// large table is never held whole).
fn dump(
    socket: &netlink_sys::Socket,
    v6: bool,
    keep: impl Fn(&Entry) -> bool,
) -> io::Result<Vec<Entry>> {
    socket.send(&dump_request(v6, 1), 0)?;
    let mut entries = Vec::new();
    loop {
        let received = receive(socket)?;
        entries.extend(received.entries.into_iter().filter(|e| keep(e)));
        if let Some((_, errno)) = received.errors.iter().find(|(_, e)| *e != 0) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        if received.done {
            return Ok(entries);
        }
    }
}

/// Deletes entries in batches, each acknowledged; an entry already gone (ENOENT) counts as
/// not deleted, not as a failure.
fn delete(socket: &netlink_sys::Socket, entries: &[Entry], v6: bool) -> io::Result<usize> {
    let mut deleted = 0;
    for (batch_index, batch) in entries.chunks(64).enumerate() {
        let first = 2 + (batch_index * 64) as u32;
        let mut bytes = Vec::new();
        for (offset, entry) in batch.iter().enumerate() {
            bytes.extend(delete_request(entry, v6, first + offset as u32));
        }
        socket.send(&bytes, 0)?;
        let mut answered = 0;
        while answered < batch.len() {
            let received = receive(socket)?;
            for (_, errno) in received.errors {
                answered += 1;
                match errno {
                    0 => deleted += 1,
                    ENOENT => {}
                    errno => return Err(io::Error::from_raw_os_error(errno)),
                }
            }
        }
    }
    Ok(deleted)
}

const ENOENT: i32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(payload);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
    }

    fn tuple(source: [u8; 4], destination: [u8; 4]) -> Vec<u8> {
        let ip = [
            attribute(CTA_IP_V4_SRC, &source),
            attribute(CTA_IP_V4_DST, &destination),
        ]
        .concat();
        // Protocol part: CTA_TUPLE_PROTO (2) with CTA_PROTO_NUM (1) = 17.
        let proto = attribute(2 | NLA_F_NESTED, &attribute(1, &[17]));
        [attribute(CTA_TUPLE_IP | NLA_F_NESTED, &ip), proto].concat()
    }

    /// A message as the kernel dumps one UDP entry 10.0.0.1:x → 10.0.0.2:y (layout of
    /// include/uapi/linux/netfilter/nfnetlink_conntrack.h).
    fn dumped() -> Vec<u8> {
        let orig = attribute(
            CTA_TUPLE_ORIG | NLA_F_NESTED,
            &tuple([10, 0, 0, 1], [10, 0, 0, 2]),
        );
        let reply = attribute(
            CTA_TUPLE_REPLY | NLA_F_NESTED,
            &tuple([10, 0, 0, 2], [10, 0, 0, 1]),
        );
        let id = attribute(CTA_ID, &7u32.to_be_bytes());
        let zone = attribute(CTA_ZONE, &0u16.to_be_bytes());
        let body = [orig, reply, id, zone].concat();
        message(MSG_NEW, 0x2, 1, AF_INET, &body)
    }

    #[test]
    fn a_dumped_entry_gives_its_addresses_and_is_deleted_by_its_original_tuple() {
        let mut bytes = dumped();
        bytes.extend(message(NLMSG_DONE, 0x2, 1, 0, &[]));
        let received = parse_messages(&bytes);
        assert!(received.done);
        assert_eq!(received.entries.len(), 1);
        let entry = &received.entries[0];
        let addresses: BTreeSet<IpAddr> = entry.addresses.iter().copied().collect();
        let expected: BTreeSet<IpAddr> = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()]
            .into_iter()
            .collect();
        assert_eq!(addresses, expected);
        let request = delete_request(entry, false, 9);
        // Header: length, IPCTNL_MSG_CT_DELETE of the conntrack subsystem, request + ack.
        assert_eq!(
            u32::from_ne_bytes(request[0..4].try_into().unwrap()) as usize,
            request.len()
        );
        assert_eq!(u16::from_ne_bytes([request[4], request[5]]), 0x0102);
        assert_eq!(u16::from_ne_bytes([request[6], request[7]]), 0x5);
        assert_eq!(request[16], AF_INET);
        // Attributes: the original tuple as dumped, then ID and zone; never the reply tuple.
        let kinds: Vec<u16> = attributes(&request[20..]).map(|(k, _, _)| k).collect();
        assert_eq!(kinds, [CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE]);
    }

    #[test]
    fn acknowledgements_and_errors_are_read_with_their_sequence() {
        // struct nlmsghdr, then struct nlmsgerr's error (negative errno).
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((HEADER + 4) as u32).to_ne_bytes());
        bytes.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        bytes.extend_from_slice(&0u16.to_ne_bytes());
        bytes.extend_from_slice(&5u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&(-2i32).to_ne_bytes());
        let received = parse_messages(&bytes);
        assert_eq!(received.errors, [(5, 2)]);
        assert!(parse_messages(&[1, 2, 3]).entries.is_empty());
    }
}
