//! Routes a receiver put in its namespace's kernel table, counted from outside the receiver,
//! the same way for every receiver: the BGP benchmark's kernel finish line.
//!
//! A thread enters the namespace and opens two rtnetlink sockets there (a socket stays in the
//! namespace it was made in). One listens to `RTNLGRP_IPV4_ROUTE` with a 1 GiB receive buffer
//! and keeps the set of main-table IPv4 routes via the sender's address, as each
//! `RTM_NEWROUTE` / `RTM_DELROUTE` arrives; it notes the time it read the notification that
//! made the set reach its target. It reads whatever is queued, then pauses 1 ms, so it wakes
//! about once a millisecond however fast routes arrive. The other dumps the table on demand: the final check, and
//! the fallback when the listener missed notifications (`ENOBUFS`).

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use twill_interop_tests::netns::Netns;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTA_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
/// `RTMGRP_IPV4_ROUTE`: the multicast group of IPv4 route changes.
const IPV4_ROUTE_GROUP: u32 = 0x40;
/// Receive buffer asked of the kernel (which doubles it) with `SO_RCVBUFFORCE`.
const LISTEN_BUFFER: usize = 512 << 20;
/// The listener's pause once it has read every notification queued: the resolution of
/// [`RouteCounter::reached_at`].
pub const LISTEN_PAUSE: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Shared {
    /// Routes the listener counts now.
    count: AtomicU64,
    /// Unix nanoseconds at which the count first reached the target (0: not yet).
    reached_at: AtomicU64,
    /// The listener missed notifications: its count is no longer exact.
    overflowed: AtomicBool,
    /// CPU time the listener thread used, in nanoseconds, once it has stopped.
    cpu_nanos: AtomicU64,
    stop: AtomicBool,
}

/// Counts main-table IPv4 routes via `gateway` in a namespace; stops when dropped.
pub struct RouteCounter {
    shared: Arc<Shared>,
    dump: Socket,
    gateway: Ipv4Addr,
    listener: Option<JoinHandle<()>>,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The listening socket and the dump socket, both made inside `netns`.
fn open_sockets(netns: &str) -> io::Result<(Socket, Socket)> {
    let file = std::fs::File::open(format!("/run/netns/{netns}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let mut listen = Socket::new(NETLINK_ROUTE)?;
    listen.bind(&SocketAddr::new(0, IPV4_ROUTE_GROUP))?;
    setsockopt(&listen, sockopt::RcvBufForce, &LISTEN_BUFFER)?;
    // Drained, then left for [`LISTEN_PAUSE`]: one wake-up a millisecond, not one a route.
    listen.set_non_blocking(true)?;
    let mut dump = Socket::new(NETLINK_ROUTE)?;
    dump.bind_auto()?;
    dump.connect(&SocketAddr::new(0, 0))?;
    Ok((listen, dump))
}

impl RouteCounter {
    /// Starts listening in `netns` before anything writes routes there; `target` is the count
    /// whose arrival time [`RouteCounter::reached_at`] reports.
    pub fn start(netns: &Netns, gateway: Ipv4Addr, target: u64) -> io::Result<RouteCounter> {
        let shared = Arc::new(Shared::default());
        let (sockets, receive) = mpsc::channel();
        let name = netns.name().to_string();
        let listening = shared.clone();
        let listener = std::thread::Builder::new()
            .name("bench-route-listener".into())
            .spawn(move || match open_sockets(&name) {
                Ok((listen, dump)) => {
                    let _ = sockets.send(Ok(dump));
                    listen_loop(&listen, gateway, target, &listening);
                }
                Err(err) => {
                    let _ = sockets.send(Err(err));
                }
            })?;
        let dump = receive
            .recv()
            .map_err(|_| io::Error::other("the listener thread ended"))??;
        Ok(RouteCounter {
            shared,
            dump,
            gateway,
            listener: Some(listener),
        })
    }

    /// Unix nanoseconds at which the listener read the notification that brought the count
    /// to the target; `None` before, or once notifications were missed.
    pub fn reached_at(&self) -> Option<u64> {
        let at = self.shared.reached_at.load(Ordering::Acquire);
        (at != 0 && !self.overflowed()).then_some(at)
    }

    /// Whether the listener missed notifications (then only [`RouteCounter::dump`] counts).
    pub fn overflowed(&self) -> bool {
        self.shared.overflowed.load(Ordering::Acquire)
    }

    /// The listener's count now.
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Acquire)
    }

    /// The routes in the table now, by a full dump (slow at a million routes: seconds).
    pub fn dump(&self) -> io::Result<u64> {
        let mut request = Vec::with_capacity(28);
        request.extend_from_slice(&28u32.to_ne_bytes());
        request.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
        request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request.extend_from_slice(&1u32.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        self.dump.send(&request, 0)?;
        let mut routes = HashSet::new();
        loop {
            let (reply, _) = self.dump.recv_from_full()?;
            for (kind, body) in messages(&reply) {
                if kind == NLMSG_DONE || kind == NLMSG_ERROR {
                    return Ok(routes.len() as u64);
                }
                if let Some(route) = route_via(body, self.gateway) {
                    routes.insert(route);
                }
            }
        }
    }
}

impl RouteCounter {
    /// Stops the listener; returns the CPU seconds it used (what the measure cost the machine).
    pub fn stop(mut self) -> f64 {
        self.stop_listener();
        self.shared.cpu_nanos.load(Ordering::Acquire) as f64 / 1e9
    }

    fn stop_listener(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
    }
}

impl Drop for RouteCounter {
    fn drop(&mut self) {
        self.stop_listener();
    }
}

/// CPU time of the calling thread in nanoseconds (the first field of its schedstat).
fn thread_cpu_nanos() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn listen_loop(socket: &Socket, gateway: Ipv4Addr, target: u64, shared: &Shared) {
    let mut routes = HashSet::new();
    let mut buffer = Vec::with_capacity(1 << 20);
    while !shared.stop.load(Ordering::Acquire) {
        buffer.clear();
        match socket.recv(&mut buffer, 0) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                shared.overflowed.store(true, Ordering::Release);
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(LISTEN_PAUSE);
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        for (kind, body) in messages(&buffer) {
            let Some(route) = route_via(body, gateway) else {
                continue;
            };
            match kind {
                RTM_NEWROUTE => routes.insert(route),
                RTM_DELROUTE => routes.remove(&route),
                _ => false,
            };
        }
        let count = routes.len() as u64;
        shared.count.store(count, Ordering::Release);
        if count >= target && shared.reached_at.load(Ordering::Acquire) == 0 {
            shared.reached_at.store(unix_nanos(), Ordering::Release);
        }
    }
    shared
        .cpu_nanos
        .store(thread_cpu_nanos(), Ordering::Release);
}

/// (type, body) of each message in a netlink datagram.
fn messages(datagram: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= datagram.len() {
        let length = u32::from_ne_bytes(datagram[at..at + 4].try_into().expect("4 bytes"));
        let kind = u16::from_ne_bytes([datagram[at + 4], datagram[at + 5]]);
        let length = length as usize;
        if length < 16 || at + length > datagram.len() {
            break;
        }
        out.push((kind, &datagram[at + 16..at + length]));
        at += length.div_ceil(4) * 4;
    }
    out
}

/// A route message's (destination, prefix length) when it is an IPv4 main-table route whose
/// gateway is `gateway`.
fn route_via(body: &[u8], gateway: Ipv4Addr) -> Option<(u32, u8)> {
    let header = body.get(..12)?;
    let (family, length) = (header[0], header[1]);
    if i32::from(family) != libc::AF_INET {
        return None;
    }
    let mut table = u32::from(header[4]);
    let (mut destination, mut via) = (0u32, None);
    let mut at = 12;
    while at + 4 <= body.len() {
        let len = usize::from(u16::from_ne_bytes([body[at], body[at + 1]]));
        let kind = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
        let value = body.get(at + 4..at + len.max(4))?;
        match (kind, <[u8; 4]>::try_from(value)) {
            (RTA_TABLE, Ok(v)) => table = u32::from_ne_bytes(v),
            (RTA_DST, Ok(v)) => destination = u32::from_be_bytes(v),
            (RTA_GATEWAY, Ok(v)) => via = Some(Ipv4Addr::from(v)),
            _ => {}
        }
        at += len.max(4).div_ceil(4) * 4;
    }
    (table == RT_TABLE_MAIN && via == Some(gateway)).then_some((destination, length))
}
