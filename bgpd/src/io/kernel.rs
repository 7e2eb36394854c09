//! Best routes into a kernel routing table over rtnetlink, from a thread of their own.
//!
//! Routes carry protocol number 210 (`twill-bgp`, see docs/ARCHITECTURE.md), so Twill
//! recognises its own after a restart with no memory. Changes are coalesced per prefix and
//! written in batches of many messages per `send` (netlink-packet-route's typed messages on
//! this thread's own netlink-sys socket); each message is acknowledged and a failure is
//! logged with its prefix, the rest of the batch going in regardless. ECMP sets become
//! multipath routes.
//!
//! Next hops are checked before anything is written (RFC 4271 §5.1.3, §6.3): the unspecified
//! address, an address of this host, and an address the kernel has no route to are never
//! installed. A next hop that is not on a connected network is resolved recursively through
//! the kernel's table (as Calico's BIRD does with `gateway recursive`): the route goes in via
//! the gateway that reaches it. A route the kernel refused, or whose next hop did not
//! resolve, is tried again every [`RETRY`], and resolved routes are checked again then too.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::config::KernelConfig;

/// Route protocol number of routes twill-bgpd writes.
pub const RTPROT_TWILL_BGP: u8 = 210;

/// Messages per `send`.
const BATCH: usize = 2_000;

/// Route writes the kernel thread gathers per round, coalescing writes to one prefix; more
/// wait in the queue, up to the daemon's limit, past which its connections stop reading until
/// the kernel catches up: a full table arriving faster than the kernel takes it is never
/// queued whole. Measured on the realistic 1M table, a smaller round costs no time and keeps
/// the peak lower (65,536: ~183 MB; 16,384: ~172 MB).
pub const ROUND: usize = 16_384;

/// How often refused or unresolved routes are tried again, and recursive ones re-resolved.
pub const RETRY: Duration = Duration::from_secs(5);

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

/// How the kernel reaches a next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// On a connected network: the next hop is the gateway.
    Direct,
    /// Through another gateway (recursive resolution).
    Via(IpAddr),
    /// One of this host's own addresses.
    Local,
    /// No route, or a blackhole/unreachable/prohibit one.
    Unreachable,
}

/// The gateways a route is installed with: each next hop of the family, not unspecified,
/// reachable and not this host's, replaced by the gateway that reaches it when it is not on a
/// connected network; duplicates once. Empty: the route is not installed.
pub fn gateways(
    prefix: &IpNet,
    next_hops: &[IpAddr],
    mut reach: impl FnMut(IpAddr) -> Reach,
) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for &hop in next_hops {
        if hop.is_ipv4() != prefix.addr().is_ipv4() || hop.is_unspecified() {
            continue;
        }
        let gateway = match reach(hop) {
            Reach::Direct => hop,
            Reach::Via(gateway) => gateway,
            Reach::Local | Reach::Unreachable => continue,
        };
        if !out.contains(&gateway) {
            out.push(gateway);
        }
    }
    out
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

/// The sending end of the kernel writer: commands in order, with the count of route writes
/// sent and not yet done (a reader can hold back while the kernel is behind).
#[derive(Debug, Clone)]
pub struct Writer {
    sender: mpsc::Sender<KernelCommand>,
    backlog: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Writer {
    /// Queues a command for the writer thread. Route writes go in commands of at most one
    /// round, so the backlog comes down round by round however many are sent at once (a
    /// session down withdraws a whole table in one batch).
    pub fn send(&self, command: KernelCommand) -> Result<(), mpsc::SendError<KernelCommand>> {
        match command {
            KernelCommand::Routes(mut routes) if routes.len() > ROUND => {
                while routes.len() > ROUND {
                    let rest = routes.split_off(ROUND);
                    self.send_one(KernelCommand::Routes(routes))?;
                    routes = rest;
                }
                self.send_one(KernelCommand::Routes(routes))
            }
            command => self.send_one(command),
        }
    }

    fn send_one(&self, command: KernelCommand) -> Result<(), mpsc::SendError<KernelCommand>> {
        use std::sync::atomic::Ordering;
        let routes = match &command {
            KernelCommand::Routes(routes) => routes.len(),
            _ => 0,
        };
        // Counted before the thread can take it, so the count never goes below zero.
        self.backlog.fetch_add(routes, Ordering::Relaxed);
        self.sender
            .send(command)
            .inspect_err(|_| lower(&self.backlog, routes))
    }

    /// Route writes sent and not yet done, shared.
    pub fn backlog(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.backlog.clone()
    }
}

/// Lowers a backlog count, never below zero (a writer thread that ended set it to zero).
fn lower(backlog: &std::sync::atomic::AtomicUsize, by: usize) {
    use std::sync::atomic::Ordering;
    let _ = backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
        Some(count.saturating_sub(by))
    });
}

/// Clears the backlog when the writer thread ends, however it ends (a panic included): no
/// connection then waits for writes that will never be done.
struct ClearOnExit(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ClearOnExit {
    fn drop(&mut self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }
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

fn route_address(address: IpAddr) -> RouteAddress {
    match address {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn family_of(address: IpAddr) -> AddressFamily {
    if address.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Every message of a netlink datagram that decodes (others are skipped).
fn decode(datagram: &[u8]) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
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
        if let Ok(message) =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[at..at + len])
        {
            out.push(message);
        }
        at += len.div_ceil(4) * 4;
    }
    out
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

    /// Appends one request to `out`; returns its sequence number.
    fn encode(&mut self, payload: RouteNetlinkMessage, flags: u16, out: &mut Vec<u8>) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        message.finalize();
        let at = out.len();
        out.resize(at + message.buffer_len(), 0);
        message.serialize(&mut out[at..]);
        self.sequence
    }

    /// A route of Twill's in our table: its header and attributes, next hops aside.
    fn route(&self, prefix: &IpNet, gateways: &[IpAddr]) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = family_of(prefix.addr());
        route.header.destination_prefix_length = prefix.prefix_len();
        route.header.table =
            u8::try_from(self.config.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        route.header.protocol = RouteProtocol::from(RTPROT_TWILL_BGP);
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route.attributes = vec![
            RouteAttribute::Destination(route_address(prefix.network())),
            RouteAttribute::Table(self.config.table),
            RouteAttribute::Priority(self.config.metric),
        ];
        match gateways {
            [] => {}
            [one] => route
                .attributes
                .push(RouteAttribute::Gateway(route_address(*one))),
            many => route.attributes.push(RouteAttribute::MultiPath(
                many.iter()
                    .map(|hop| {
                        let mut next_hop = RouteNextHop::default();
                        next_hop.attributes = vec![RouteAttribute::Gateway(route_address(*hop))];
                        next_hop
                    })
                    .collect(),
            )),
        }
        route
    }

    /// Installs (with gateways) or removes (without) routes; returns the prefixes the kernel
    /// refused, with why. One refusal never keeps the others of its batch out.
    pub fn apply(&mut self, routes: &[(IpNet, NextHops)]) -> io::Result<Vec<(IpNet, io::Error)>> {
        let mut failures = Vec::new();
        for chunk in routes.chunks(BATCH) {
            let mut buffer = Vec::with_capacity(chunk.len() * 80);
            let mut by_sequence = BTreeMap::new();
            for (prefix, gateways) in chunk {
                let gateways = gateways.as_slice();
                let sequence = if gateways.is_empty() {
                    let route = self.route(prefix, &[]);
                    self.encode(
                        RouteNetlinkMessage::DelRoute(route),
                        NLM_F_REQUEST | NLM_F_ACK,
                        &mut buffer,
                    )
                } else {
                    let route = self.route(prefix, gateways);
                    self.encode(
                        RouteNetlinkMessage::NewRoute(route),
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                        &mut buffer,
                    )
                };
                by_sequence.insert(sequence, (*prefix, gateways.is_empty()));
            }
            self.socket.send(&buffer, 0)?;
            let mut pending = by_sequence.len();
            while pending > 0 {
                let (reply, _) = self.socket.recv_from_full()?;
                for message in decode(&reply) {
                    let NetlinkPayload::Error(error) = &message.payload else {
                        continue;
                    };
                    let sequence = message.header.sequence_number;
                    if let Some((prefix, deleting)) = by_sequence.remove(&sequence) {
                        pending -= 1;
                        let code = error.code.map_or(0, |c| c.get());
                        // Deleting a route that is not there is fine.
                        if code != 0 && !(deleting && code == -libc::ESRCH) {
                            failures.push((prefix, io::Error::from_raw_os_error(-code)));
                        }
                    }
                }
            }
        }
        Ok(failures)
    }

    /// How the kernel reaches `address` now (`ip route get`).
    pub fn reach(&mut self, address: IpAddr) -> io::Result<Reach> {
        let mut route = RouteMessage::default();
        route.header.address_family = family_of(address);
        route.header.destination_prefix_length = if address.is_ipv4() { 32 } else { 128 };
        route.attributes = vec![RouteAttribute::Destination(route_address(address))];
        let mut buffer = Vec::new();
        let sequence = self.encode(
            RouteNetlinkMessage::GetRoute(route),
            NLM_F_REQUEST,
            &mut buffer,
        );
        self.socket.send(&buffer, 0)?;
        loop {
            let (reply, _) = self.socket.recv_from_full()?;
            for message in decode(&reply) {
                if message.header.sequence_number != sequence {
                    continue;
                }
                return Ok(match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(found)) => {
                        match found.header.kind {
                            RouteType::Local => Reach::Local,
                            RouteType::Unicast => found
                                .attributes
                                .iter()
                                .find_map(|a| match a {
                                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                                        Some(Reach::Via(IpAddr::V4(*g)))
                                    }
                                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                                        Some(Reach::Via(IpAddr::V6(*g)))
                                    }
                                    _ => None,
                                })
                                .unwrap_or(Reach::Direct),
                            _ => Reach::Unreachable,
                        }
                    }
                    _ => Reach::Unreachable,
                });
            }
        }
    }

    /// Twill's routes in the table now (protocol 210).
    pub fn list(&mut self) -> io::Result<BTreeSet<IpNet>> {
        let mut routes = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            let mut buffer = Vec::new();
            let sequence = self.encode(
                RouteNetlinkMessage::GetRoute(request),
                NLM_F_REQUEST | NLM_F_DUMP,
                &mut buffer,
            );
            self.socket.send(&buffer, 0)?;
            'dump: loop {
                let (reply, _) = self.socket.recv_from_full()?;
                for message in decode(&reply) {
                    if message.header.sequence_number != sequence {
                        continue;
                    }
                    match message.payload {
                        NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => break 'dump,
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                            if let Some(prefix) = self.ours(&route) {
                                routes.insert(prefix);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(routes)
    }

    /// A dumped route's prefix, when it is Twill's and in our table.
    fn ours(&self, route: &RouteMessage) -> Option<IpNet> {
        if u8::from(route.header.protocol) != RTPROT_TWILL_BGP {
            return None;
        }
        let mut table = u32::from(route.header.table);
        let mut destination = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                    destination = Some(IpAddr::V4(*a))
                }
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                    destination = Some(IpAddr::V6(*a))
                }
                _ => {}
            }
        }
        if table != self.config.table {
            return None;
        }
        let destination = destination.unwrap_or(match route.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        });
        IpNet::new(destination, route.header.destination_prefix_length).ok()
    }
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

/// What the writer keeps between rounds: routes it could not install as asked.
#[derive(Debug, Default)]
struct Held {
    /// Refused by the kernel, or no next hop resolved: tried again every [`RETRY`].
    retry: BTreeMap<IpNet, NextHops>,
    /// Installed through a recursively resolved gateway: resolved again every [`RETRY`].
    recursive: BTreeMap<IpNet, (NextHops, Vec<IpAddr>)>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.retry.is_empty() && self.recursive.is_empty()
    }
}

/// One round: resolve the next hops of the gathered writes (once per distinct next hop),
/// write them, and remember what must be tried again. Returns how many writes the kernel
/// acknowledged.
fn write_round(kernel: &mut Kernel, pending: BTreeMap<IpNet, NextHops>, held: &mut Held) -> u64 {
    let mut reach: BTreeMap<IpAddr, Reach> = BTreeMap::new();
    let mut routes: Vec<(IpNet, NextHops)> = Vec::with_capacity(pending.len());
    let mut asked: BTreeMap<IpNet, NextHops> = BTreeMap::new();
    for (prefix, hops) in pending {
        held.retry.remove(&prefix);
        held.recursive.remove(&prefix);
        if hops == NextHops::None {
            routes.push((prefix, NextHops::None));
            continue;
        }
        let mut recursive = false;
        let gateways = gateways(&prefix, hops.as_slice(), |hop| {
            let found = *reach.entry(hop).or_insert_with(|| {
                kernel.reach(hop).unwrap_or_else(|error| {
                    tracing::warn!(%hop, %error, "cannot resolve a next hop");
                    Reach::Unreachable
                })
            });
            recursive |= matches!(found, Reach::Via(_));
            found
        });
        if gateways.is_empty() {
            // Not installable now (RFC 4271 §5.1.3, §6.3): out of the table until it is.
            tracing::debug!(%prefix, ?hops, "no usable next hop: not installed");
            held.retry.insert(prefix, hops);
            routes.push((prefix, NextHops::None));
            continue;
        }
        if recursive {
            held.recursive
                .insert(prefix, (hops.clone(), gateways.clone()));
        }
        asked.insert(prefix, hops);
        routes.push((prefix, gateways.into_iter().collect()));
    }
    let written = routes.len() as u64;
    match kernel.apply(&routes) {
        Ok(failures) => {
            for (prefix, error) in &failures {
                tracing::warn!(%prefix, %error, "the kernel refused a route; it is tried again");
                if let Some(hops) = asked.remove(prefix) {
                    held.recursive.remove(prefix);
                    held.retry.insert(*prefix, hops);
                }
            }
            written - failures.len() as u64
        }
        Err(error) => {
            tracing::error!(%error, "netlink write failed; the routes are tried again");
            held.retry.extend(asked);
            0
        }
    }
}

/// How many of Twill's BGP routes a previous run left in `config`'s table: a supervisor
/// that finds some starts the speaker as restarting (RFC 4724), keeping them.
pub fn leftovers(config: &KernelConfig) -> io::Result<usize> {
    Ok(Kernel::open(config.clone())?.list()?.len())
}

/// Runs the kernel writer on its own thread; `writes` counts route writes the kernel
/// acknowledged. With `keep_existing` (graceful restart), Twill's routes from before stay
/// until [`KernelCommand::Sweep`]; otherwise they are removed now. Returns the sender and how
/// many routes from before were kept.
#[allow(
    clippy::disallowed_methods,
    reason = "the writer is an edge: it times its retries"
)]
pub fn spawn(
    config: KernelConfig,
    keep_existing: bool,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> io::Result<(Writer, usize)> {
    let mut kernel = Kernel::open(config.clone())?;
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
    let backlog = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = Writer {
        sender,
        backlog: backlog.clone(),
    };
    std::thread::Builder::new()
        .name("twill-kernel".into())
        .spawn(move || {
            let backlog = ClearOnExit(backlog);
            let mut held = Held::default();
            let mut last_retry = std::time::Instant::now();
            loop {
                let first = if held.is_empty() {
                    match receiver.recv() {
                        Ok(command) => Some(command),
                        Err(_) => return,
                    }
                } else {
                    match receiver.recv_timeout(RETRY.saturating_sub(last_retry.elapsed())) {
                        Ok(command) => Some(command),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                };
                let mut pending: BTreeMap<IpNet, NextHops> = BTreeMap::new();
                let mut sweep = false;
                let mut flushed = None;
                let mut gathered = 0;
                let mut next = first;
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
                if last_retry.elapsed() >= RETRY && !held.is_empty() {
                    last_retry = std::time::Instant::now();
                    for (prefix, hops) in std::mem::take(&mut held.retry) {
                        pending.entry(prefix).or_insert(hops);
                    }
                    let recursive: Vec<(IpNet, NextHops)> = held
                        .recursive
                        .iter()
                        .map(|(prefix, (hops, _))| (*prefix, hops.clone()))
                        .collect();
                    for (prefix, hops) in recursive {
                        pending.entry(prefix).or_insert(hops);
                    }
                }
                if sweep {
                    // Every route write queued before the sweep has been gathered by now, so
                    // what is left over was not learned again.
                    for prefix in std::mem::take(&mut leftovers) {
                        pending.entry(prefix).or_insert(NextHops::None);
                    }
                }
                if !pending.is_empty() {
                    let done = write_round(&mut kernel, pending, &mut held);
                    writes.fetch_add(done, std::sync::atomic::Ordering::Relaxed);
                }
                lower(&backlog.0, gathered);
                if let Some(done) = flushed {
                    flush(&mut kernel);
                    let _ = done.send(());
                    return;
                }
            }
        })?;
    Ok((writer, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// RFC 4271 §5.1.3 / §6.3 and Calico's `gateway recursive`: which gateways a route gets.
    #[test]
    fn next_hops_are_checked_and_resolved_before_a_route_is_installed() {
        let reach = |hop: IpAddr| match hop.to_string().as_str() {
            "198.18.0.2" | "198.18.0.3" | "fd00::2" => Reach::Direct,
            "10.99.0.7" => Reach::Via(ip("198.18.0.2")),
            "198.18.0.1" => Reach::Local,
            _ => Reach::Unreachable,
        };
        let v4 = net("10.50.0.0/24");
        assert_eq!(
            gateways(&v4, &[ip("198.18.0.2")], reach),
            [ip("198.18.0.2")]
        );
        assert_eq!(
            gateways(&v4, &[ip("10.99.0.7")], reach),
            [ip("198.18.0.2")],
            "recursive"
        );
        assert!(
            gateways(&v4, &[ip("0.0.0.0")], reach).is_empty(),
            "unspecified"
        );
        assert!(
            gateways(&v4, &[ip("198.18.0.1")], reach).is_empty(),
            "our own address"
        );
        assert!(
            gateways(&v4, &[ip("192.0.2.9")], reach).is_empty(),
            "unreachable"
        );
        assert!(
            gateways(&v4, &[ip("fd00::2")], reach).is_empty(),
            "another family"
        );
        assert_eq!(
            gateways(
                &v4,
                &[
                    ip("192.0.2.9"),
                    ip("198.18.0.3"),
                    ip("10.99.0.7"),
                    ip("198.18.0.2")
                ],
                reach
            ),
            [ip("198.18.0.3"), ip("198.18.0.2")],
            "the usable ones of an ECMP set, each gateway once"
        );
    }
}
