//! Sockets for BGP: TCP-MD5 (RFC 2385) keys, GTSM (RFC 5082) minimum TTL, multihop TTL and
//! source addresses. The only `unsafe` in bgpd: the `setsockopt`/`getsockopt` calls for
//! options Rust's socket crates do not wrap (TCP-MD5, minimum TTL, the saved SYN), and reading
//! a socket address's bytes for the MD5 key.

#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::Transport;

/// `struct tcp_md5sig` of linux/tcp.h.
#[repr(C)]
struct TcpMd5Sig {
    address: [u8; 128],
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: i32,
    key: [u8; 80],
}

fn setsockopt<T>(socket: &impl AsRawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live, properly sized value of the type the option expects.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a byte-string option into `buffer`; returns how many bytes it holds.
fn getsockopt_bytes(
    socket: &impl AsRawFd,
    level: i32,
    name: i32,
    buffer: &mut [u8],
) -> io::Result<usize> {
    let mut len = buffer.len() as libc::socklen_t;
    // SAFETY: `buffer` is writable for `len` bytes, and the kernel writes at most that many,
    // storing the count in `len`.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            buffer.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if result == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The TTL (IPv4) or hop limit (IPv6) a saved SYN arrived with: its IP header's field.
fn syn_ttl(headers: &[u8]) -> Option<u8> {
    match headers.first()? >> 4 {
        4 => headers.get(8).copied(),
        6 => headers.get(7).copied(),
        _ => None,
    }
}

/// Sets (or with `None`, removes) the TCP-MD5 key for segments to and from `peer`.
pub fn set_md5(socket: &impl AsRawFd, peer: IpAddr, key: Option<&str>) -> io::Result<()> {
    let key = key.unwrap_or("").as_bytes();
    if key.len() > 80 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 keys are at most 80 bytes",
        ));
    }
    let mut signature = TcpMd5Sig {
        address: [0; 128],
        flags: 0,
        prefix_len: 0,
        key_len: key.len() as u16,
        ifindex: 0,
        key: [0; 80],
    };
    let address = SockAddr::from(SocketAddr::new(peer, 0));
    // SAFETY: `SockAddr` holds `len()` initialised bytes of a sockaddr at `as_ptr()`.
    let raw = unsafe {
        std::slice::from_raw_parts(address.as_ptr().cast::<u8>(), address.len() as usize)
    };
    signature.address[..raw.len()].copy_from_slice(raw);
    signature.key[..key.len()].copy_from_slice(key);
    setsockopt(socket, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &signature)
}

/// Applies the TTL rules of a neighbour to a socket: GTSM (send with 255, drop packets
/// below 256 − hops) or a plain TTL of `multihop`.
pub fn apply_ttl(socket: &Socket, transport: &Transport) -> io::Result<()> {
    let hops = transport.multihop.max(1);
    let ttl = if transport.ttl_security {
        255
    } else {
        u32::from(hops)
    };
    match transport.remote.ip() {
        IpAddr::V4(_) => socket.set_ttl_v4(ttl)?,
        IpAddr::V6(_) => socket.set_unicast_hops_v6(ttl)?,
    }
    if transport.ttl_security {
        let minimum: libc::c_int = 256 - libc::c_int::from(hops);
        match transport.remote.ip() {
            IpAddr::V4(_) => setsockopt(socket, libc::IPPROTO_IP, libc::IP_MINTTL, &minimum)?,
            IpAddr::V6(_) => {
                setsockopt(socket, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &minimum)?
            }
        }
    }
    Ok(())
}

/// Opens a connection to a neighbour with its key, TTL rules and source address.
pub async fn connect(
    transport: &Transport,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let remote = transport.remote;
    let socket = Socket::new(
        Domain::for_address(remote),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = transport.source {
        socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    }
    if let Some(password) = &transport.password {
        set_md5(&socket, remote.ip(), Some(password.expose()))?;
    }
    apply_ttl(&socket, transport)?;
    match socket.connect(&SockAddr::from(remote)) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(socket))?;
    tokio::time::timeout(timeout, stream.writable())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    stream.peer_addr()?;
    Ok(stream)
}

/// A listening socket on `address` (reuse-address, IPv6 sockets IPv6-only).
pub fn listen(address: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Keep each connection's SYN, so that GTSM can judge the packets that arrived before the
    // accepted socket got its minimum TTL.
    setsockopt(&socket, libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, &1i32)?;
    socket.bind(&SockAddr::from(address))?;
    socket.listen(128)?;
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(socket))
}

/// Applies the neighbour's TTL rules to an accepted connection. Under GTSM the minimum TTL
/// only filters what comes after it is set; what the peer sent before (its OPEN may already
/// be queued) is judged by the SYN it came with: a SYN below the minimum refuses the
/// connection.
pub fn configure_accepted(stream: &tokio::net::TcpStream, transport: &Transport) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    apply_ttl(&socket, transport)?;
    if transport.ttl_security {
        let minimum = 256 - u32::from(transport.multihop.max(1));
        let mut headers = [0u8; 256];
        let len = getsockopt_bytes(stream, libc::IPPROTO_TCP, libc::TCP_SAVED_SYN, &mut headers)?;
        // No saved SYN (SYN cookies under a flood): the minimum TTL alone applies.
        if let Some(ttl) = syn_ttl(&headers[..len]) {
            if u32::from(ttl) < minimum {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("GTSM: the connection's SYN arrived with TTL {ttl}, below {minimum}"),
                ));
            }
        }
    }
    Ok(())
}
