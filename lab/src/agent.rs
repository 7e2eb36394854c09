//! What runs inside a pod's network namespace: the responder (serves every port on TCP and
//! UDP, answering `NS/POD`) and the probe agent (tries each target from inside the source
//! pod and reports what came back on the wire).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::topology::Port;

/// Serves `ports` until killed: TCP answers with a small HTTP response whose body is
/// `answer` (so both `curl` and the probe read it), UDP answers each datagram with `answer`.
pub async fn respond(answer: String, ports: Vec<Port>) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for port in ports {
        let answer = answer.clone();
        if port.protocol.eq_ignore_ascii_case("UDP") {
            let socket = bind_udp(port.port).await?;
            tasks.spawn(async move { serve_udp(socket, answer).await });
        } else {
            let listener = bind_tcp(port.port).await?;
            tasks.spawn(async move { serve_tcp(listener, answer).await });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn bind_tcp(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    // [::] takes IPv4 too (bindv6only is 0 by default); without IPv6, fall back to 0.0.0.0.
    match tokio::net::TcpListener::bind(("::", port)).await {
        Ok(listener) => Ok(listener),
        Err(_) => Ok(tokio::net::TcpListener::bind(("0.0.0.0", port)).await?),
    }
}

async fn bind_udp(port: u16) -> anyhow::Result<tokio::net::UdpSocket> {
    match tokio::net::UdpSocket::bind(("::", port)).await {
        Ok(socket) => Ok(socket),
        Err(_) => Ok(tokio::net::UdpSocket::bind(("0.0.0.0", port)).await?),
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, answer: String) -> anyhow::Result<()> {
    let body = format!("{answer}\n");
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    loop {
        let (mut stream, _) = listener.accept().await?;
        let response = response.clone();
        tokio::spawn(async move {
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            // Drain what the client sent so the close is orderly (no RST).
            let mut sink = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
        });
    }
}

async fn serve_udp(socket: tokio::net::UdpSocket, answer: String) -> anyhow::Result<()> {
    let mut buffer = [0u8; 1500];
    loop {
        let (_, peer) = socket.recv_from(&mut buffer).await?;
        let _ = socket.send_to(answer.as_bytes(), peer).await;
    }
}

/// One probe to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `NS/POD` of the destination.
    pub to: String,
    /// Its address.
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: String,
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The target.
    #[serde(flatten)]
    pub target: Target,
    /// A reply came back (TCP: connected and data read).
    pub connected: bool,
    /// The first line of the reply, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

/// Probes every target at once, each within `timeout`.
pub async fn probe_all(targets: Vec<Target>, timeout: Duration) -> Vec<Outcome> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        tasks.spawn(async move {
            let reply = tokio::time::timeout(timeout, probe(&target))
                .await
                .ok()
                .flatten();
            (
                index,
                Outcome {
                    connected: reply.is_some(),
                    reply,
                    target,
                },
            )
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(outcome) = done {
            outcomes.push(outcome);
        }
    }
    outcomes.sort_by_key(|(index, _)| *index);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

/// The reply's first non-empty body line, or `None` when nothing came back.
async fn probe(target: &Target) -> Option<String> {
    let address = SocketAddr::new(target.ip, target.port);
    if target.protocol.eq_ignore_ascii_case("UDP") {
        let local: SocketAddr = if target.ip.is_ipv4() {
            "0.0.0.0:0".parse().expect("constant")
        } else {
            "[::]:0".parse().expect("constant")
        };
        let socket = tokio::net::UdpSocket::bind(local).await.ok()?;
        socket.connect(address).await.ok()?;
        let mut buffer = [0u8; 1500];
        // Resend now and then: a datagram lost before the path was ready is not a verdict.
        loop {
            socket.send(b"probe\n").await.ok()?;
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buffer)).await
            {
                return Some(first_line(&buffer[..n]));
            }
        }
    }
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let _ = stream
        .write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
        .await;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                reply.extend_from_slice(&buffer[..n]);
                if reply.len() > 64 * 1024 {
                    break;
                }
            }
        }
    }
    (!reply.is_empty()).then(|| body_line(&reply))
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The first line of an HTTP body (or of the reply, if it is not HTTP).
fn body_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/") => {
            let line = body.lines().next().unwrap_or_default().trim();
            if line.is_empty() {
                head.lines().next().unwrap_or_default().to_string()
            } else {
                line.to_string()
            }
        }
        _ => text.lines().next().unwrap_or_default().trim().to_string(),
    }
}

/// Relays TCP connections accepted on `listen` (inside the namespace `listen_netns`, else
/// here) to `connect` (reached from inside `connect_netns`, else from here): how processes in
/// a lab's node namespaces reach a datastore on the machine's loopback, and how tools on the
/// machine reach the API server inside a lab's underlay, without any change to the machine's
/// network. Prints `listening` once the listener is bound.
pub async fn relay(
    listen_netns: Option<std::path::PathBuf>,
    listen: SocketAddr,
    connect_netns: Option<std::path::PathBuf>,
    connect: SocketAddr,
) -> anyhow::Result<()> {
    let listener = in_netns(listen_netns, move || -> anyhow::Result<_> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening")?;
        stdout.flush()?;
    }
    loop {
        let (mut inbound, _) = listener.accept().await?;
        // A relay forwards what it reads at once: with Nagle's algorithm on, a TLS handshake's
        // small records wait for delayed acknowledgements (40 ms each, measured).
        inbound.set_nodelay(true)?;
        let connect_netns = connect_netns.clone();
        tokio::spawn(async move {
            let outbound = tokio::task::spawn_blocking(move || {
                // A thread of its own: setns changes the calling thread for good.
                in_netns(connect_netns, move || -> anyhow::Result<_> {
                    let stream =
                        std::net::TcpStream::connect_timeout(&connect, Duration::from_secs(5))?;
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    Ok(stream)
                })
            })
            .await;
            if let Ok(Ok(outbound)) = outbound {
                if let Ok(mut outbound) = tokio::net::TcpStream::from_std(outbound) {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            }
        });
    }
}

/// Runs `work` on a new thread that entered the network namespace `netns` (here if None).
pub(crate) fn in_netns<T: Send + 'static>(
    netns: Option<std::path::PathBuf>,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || -> anyhow::Result<T> {
        if let Some(netns) = netns {
            let file = std::fs::File::open(&netns)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}
