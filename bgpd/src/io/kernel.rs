//! Best routes into a kernel routing table over rtnetlink, from a thread of their own.
//!
//! Routes carry protocol number 210 (`twill-bgp`, see docs/ARCHITECTURE.md), so Twill
//! recognises its own after a restart with no memory. Changes are coalesced per prefix and
//! written in batches of many messages per `send`; each message is acknowledged and a
//! failure is logged with its prefix. ECMP sets become multipath routes (RTA_MULTIPATH).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::sync::mpsc;

use ipnet::IpNet;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::config::KernelConfig;

/// Route protocol number of routes twill-bgpd writes.
pub const RTPROT_TWILL_BGP: u8 = 210;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTN_UNICAST: u8 = 1;
/// Messages per `send`.
const BATCH: usize = 2_000;

/// Route writes the kernel thread gathers per round, coalescing writes to one prefix; more
/// wait in the queue, so a backlog (a full table arriving faster than the kernel takes it) is
/// never copied whole.
const ROUND: usize = 65_536;

/// The next hops of a route write: none (the route goes), one (held inline: no allocation
/// for the usual route), or several (an ECMP route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHops {
    /// Remove the route.
    None,
    /// One gateway.
    One(IpAddr),
    /// Several gateways: a multipath route.
    Many(Box<[IpAddr]>),
}

impl NextHops {
    /// The gateways.
    pub fn as_slice(&self) -> &[IpAddr] {
        match self {
            NextHops::None => &[],
            NextHops::One(hop) => std::slice::from_ref(hop),
            NextHops::Many(hops) => hops,
        }
    }
}

impl FromIterator<IpAddr> for NextHops {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> NextHops {
        let mut iter = iter.into_iter();
        let Some(first) = iter.next() else {
            return NextHops::None;
        };
        let Some(second) = iter.next() else {
            return NextHops::One(first);
        };
        NextHops::Many([first, second].into_iter().chain(iter).collect())
    }
}

/// What the kernel thread is asked to do, in order.
#[derive(Debug)]
pub enum KernelCommand {
    /// Install (with next hops) or remove (without) routes.
    Routes(Vec<(IpNet, NextHops)>),
    /// Remove Twill's routes not installed since start (after graceful restart).
    Sweep,
    /// Remove every route of Twill's in the table (the daemon is stopping), after the writes
    /// queued before; the sender hears back once they are gone.
    Flush(mpsc::Sender<()>),
}

/// Writes routes into one table.
pub struct Kernel {
    socket: Socket,
    config: KernelConfig,
    sequence: u32,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

fn address_bytes(address: &IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl Kernel {
    /// Opens a netlink socket.
    pub fn open(config: KernelConfig) -> io::Result<Kernel> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let _ = socket.set_rx_buf_sz(8 * 1024 * 1024);
        Ok(Kernel {
            socket,
            config,
            sequence: 1,
        })
    }

    fn message(&mut self, kind: u16, flags: u16, prefix: &IpNet, next_hops: &[IpAddr]) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        let family = if prefix.addr().is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        let table = u8::try_from(self.config.table).unwrap_or(0);
        // struct rtmsg
        body.extend_from_slice(&[
            family,
            prefix.prefix_len(),
            0,
            0,
            table,
            RTPROT_TWILL_BGP,
            0,
            RTN_UNICAST,
        ]);
        body.extend_from_slice(&0u32.to_ne_bytes());
        attribute(&mut body, RTA_DST, &address_bytes(&prefix.network()));
        attribute(&mut body, RTA_TABLE, &self.config.table.to_ne_bytes());
        attribute(&mut body, RTA_PRIORITY, &self.config.metric.to_ne_bytes());
        match next_hops {
            [] => {}
            [one] => attribute(&mut body, RTA_GATEWAY, &address_bytes(one)),
            many => {
                let mut hops = Vec::new();
                for hop in many {
                    let mut gateway = Vec::new();
                    attribute(&mut gateway, RTA_GATEWAY, &address_bytes(hop));
                    // struct rtnexthop: len, flags, hops, ifindex.
                    hops.extend_from_slice(&((8 + gateway.len()) as u16).to_ne_bytes());
                    hops.extend_from_slice(&[0, 0]);
                    hops.extend_from_slice(&0i32.to_ne_bytes());
                    hops.extend_from_slice(&gateway);
                }
                attribute(&mut body, RTA_MULTIPATH, &hops);
            }
        }
        self.sequence = self.sequence.wrapping_add(1);
        let mut message = Vec::with_capacity(16 + body.len());
        message.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&self.sequence.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(&body);
        message
    }

    /// Installs or removes routes; returns the prefixes the kernel refused, with why.
    pub fn apply(&mut self, routes: &[(IpNet, NextHops)]) -> io::Result<Vec<(IpNet, io::Error)>> {
        let mut failures = Vec::new();
        for chunk in routes.chunks(BATCH) {
            let mut buffer = Vec::with_capacity(chunk.len() * 80);
            let mut by_sequence = BTreeMap::new();
            for (prefix, next_hops) in chunk {
                // IPv4-mapped next hops cannot be kernel gateways: such routes are not installed.
                let usable: Vec<IpAddr> = next_hops
                    .as_slice()
                    .iter()
                    .filter(|hop| hop.is_ipv4() == prefix.addr().is_ipv4() && !hop.is_unspecified())
                    .copied()
                    .collect();
                let message = if usable.is_empty() {
                    self.message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, prefix, &[])
                } else {
                    self.message(
                        RTM_NEWROUTE,
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                        prefix,
                        &usable,
                    )
                };
                by_sequence.insert(self.sequence, (*prefix, usable.is_empty()));
                buffer.extend_from_slice(&message);
            }
            self.socket.send(&buffer, 0)?;
            let mut pending = by_sequence.len();
            while pending > 0 {
                let (reply, _) = self.socket.recv_from_full()?;
                for (sequence, error) in acknowledgements(&reply) {
                    if let Some((prefix, deleting)) = by_sequence.remove(&sequence) {
                        pending -= 1;
                        // Deleting a route that is not there is fine.
                        if error != 0 && !(deleting && error == -libc::ESRCH) {
                            failures.push((prefix, io::Error::from_raw_os_error(-error)));
                        }
                    }
                }
            }
        }
        Ok(failures)
    }

    /// Twill's routes in the table now (protocol 210).
    pub fn list(&mut self) -> io::Result<BTreeSet<IpNet>> {
        let mut routes = BTreeSet::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let mut request = Vec::new();
            let body = [family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            request.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
            request.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
            request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
            request.extend_from_slice(&self.sequence.to_ne_bytes());
            request.extend_from_slice(&0u32.to_ne_bytes());
            request.extend_from_slice(&body);
            self.socket.send(&request, 0)?;
            'dump: loop {
                let (reply, _) = self.socket.recv_from_full()?;
                for message in messages(&reply) {
                    if message.0 == NLMSG_DONE || message.0 == NLMSG_ERROR {
                        break 'dump;
                    }
                    if let Some(prefix) = self.parse_route(message.1) {
                        routes.insert(prefix);
                    }
                }
            }
        }
        Ok(routes)
    }

    /// A dumped route's prefix, when it is Twill's and in our table.
    fn parse_route(&self, body: &[u8]) -> Option<IpNet> {
        let header = body.get(..12)?;
        let (family, length, table, protocol) = (header[0], header[1], header[4], header[5]);
        if protocol != RTPROT_TWILL_BGP {
            return None;
        }
        let mut table = u32::from(table);
        let mut destination = None;
        let mut at = 12;
        while at + 4 <= body.len() {
            let len = usize::from(u16::from_ne_bytes([body[at], body[at + 1]]));
            let kind = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
            let value = body.get(at + 4..at + len.max(4))?;
            match kind {
                RTA_TABLE if value.len() == 4 => {
                    table = u32::from_ne_bytes([value[0], value[1], value[2], value[3]])
                }
                RTA_DST => destination = Some(value.to_vec()),
                _ => {}
            }
            at += len.max(4).div_ceil(4) * 4;
        }
        if table != self.config.table {
            return None;
        }
        let address: IpAddr = match (family as i32, destination.as_deref()) {
            (libc::AF_INET, Some(v)) => IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
            (libc::AF_INET6, Some(v)) => IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
            _ => return None,
        };
        IpNet::new(address, length).ok()
    }
}

/// (type, body) of each message in a netlink datagram.
fn messages(datagram: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= datagram.len() {
        let len = u32::from_ne_bytes([
            datagram[at],
            datagram[at + 1],
            datagram[at + 2],
            datagram[at + 3],
        ]) as usize;
        if len < 16 || at + len > datagram.len() {
            break;
        }
        let kind = u16::from_ne_bytes([datagram[at + 4], datagram[at + 5]]);
        out.push((kind, &datagram[at + 16..at + len]));
        at += len.div_ceil(4) * 4;
    }
    out
}

/// (sequence, error) of each acknowledgement in a datagram (error 0: success). An
/// acknowledgement's body is the error code followed by the request's header, whose sequence
/// number sits 8 octets in.
fn acknowledgements(datagram: &[u8]) -> Vec<(u32, i32)> {
    messages(datagram)
        .into_iter()
        .filter(|(kind, body)| *kind == NLMSG_ERROR && body.len() >= 20)
        .map(|(_, body)| {
            let error = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            let sequence = u32::from_ne_bytes([body[12], body[13], body[14], body[15]]);
            (sequence, error)
        })
        .collect()
}

/// Removes every route of Twill's from the table, as listed by the kernel.
fn flush(kernel: &mut Kernel) {
    let routes: Vec<(IpNet, NextHops)> = match kernel.list() {
        Ok(routes) => routes.into_iter().map(|p| (p, NextHops::None)).collect(),
        Err(error) => {
            tracing::error!(%error, "cannot list Twill's kernel routes to remove them");
            return;
        }
    };
    match kernel.apply(&routes) {
        Ok(failures) => {
            for (prefix, error) in failures {
                tracing::warn!(%prefix, %error, "the kernel refused to remove a route");
            }
            tracing::info!(removed = routes.len(), "kernel routes removed");
        }
        Err(error) => tracing::error!(%error, "netlink write failed"),
    }
}

/// Runs the kernel writer on its own thread; `writes` counts route writes done. With
/// `keep_existing` (graceful restart), Twill's routes from before stay until
/// [`KernelCommand::Sweep`]; otherwise they are removed now. Returns the sender and how many
/// routes from before were kept.
pub fn spawn(
    config: KernelConfig,
    keep_existing: bool,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> io::Result<(mpsc::Sender<KernelCommand>, usize)> {
    let mut kernel = Kernel::open(config)?;
    let mut leftovers = kernel.list()?;
    if !keep_existing {
        let stale: Vec<(IpNet, NextHops)> =
            leftovers.iter().map(|p| (*p, NextHops::None)).collect();
        kernel.apply(&stale)?;
        leftovers.clear();
    }
    tracing::info!(
        table = config.table,
        kept = leftovers.len(),
        "kernel route sync started"
    );
    let kept = leftovers.len();
    let (sender, receiver) = mpsc::channel::<KernelCommand>();
    std::thread::Builder::new()
        .name("twill-kernel".into())
        .spawn(move || {
            while let Ok(first) = receiver.recv() {
                let mut pending: BTreeMap<IpNet, NextHops> = BTreeMap::new();
                let mut sweep = false;
                let mut flushed = None;
                let mut gathered = 0;
                let mut next = Some(first);
                while let Some(command) = next.take() {
                    match command {
                        KernelCommand::Routes(routes) => {
                            gathered += routes.len();
                            for (prefix, hops) in routes {
                                leftovers.remove(&prefix);
                                pending.insert(prefix, hops);
                            }
                        }
                        KernelCommand::Sweep => sweep = true,
                        KernelCommand::Flush(done) => {
                            flushed = Some(done);
                            break;
                        }
                    }
                    if gathered < ROUND {
                        next = receiver.try_recv().ok();
                    }
                }
                if sweep {
                    // Every route write queued before the sweep has been gathered by now, so
                    // what is left over was not learned again.
                    for prefix in std::mem::take(&mut leftovers) {
                        pending.entry(prefix).or_insert(NextHops::None);
                    }
                }
                let routes: Vec<(IpNet, NextHops)> = pending.into_iter().collect();
                let written = routes.len() as u64;
                match kernel.apply(&routes) {
                    Ok(failures) => {
                        writes.fetch_add(written, std::sync::atomic::Ordering::Relaxed);
                        for (prefix, error) in failures {
                            tracing::warn!(%prefix, %error, "the kernel refused a route");
                        }
                    }
                    Err(error) => tracing::error!(%error, "netlink write failed"),
                }
                if let Some(done) = flushed {
                    flush(&mut kernel);
                    let _ = done.send(());
                    return;
                }
            }
        })?;
    Ok((sender, kept))
}
