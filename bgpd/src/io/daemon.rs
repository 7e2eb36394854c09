//! The driver loop: events in (connections, bytes, timers, control requests, SIGHUP),
//! speaker actions out (connect, send, close, routes).

#![allow(clippy::disallowed_methods)] // The driver is the edge that reads the clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::kernel::{self, KernelCommand, NextHops};
use super::{control, socket};
use crate::config::{DaemonConfig, Transport};
use crate::speaker::{Action, ConnectionId, RibQuery, Speaker};

/// Something that happened outside the driver.
#[derive(Debug)]
pub enum Event {
    /// A neighbour connected to us.
    Accepted(TcpStream, SocketAddr),
    /// Our connection attempt finished.
    Connected(IpAddr, ConnectionId, std::io::Result<TcpStream>),
    /// Bytes arrived.
    Bytes(IpAddr, ConnectionId, Vec<u8>),
    /// A connection closed.
    Closed(IpAddr, ConnectionId),
    /// A connection's output queue, full before, has been written out.
    Drained(IpAddr, ConnectionId),
    /// A control request, answered on the channel.
    Control(String, oneshot::Sender<String>),
    /// `rib …`: which prefixes the query shows (the words after `rib`), or why none.
    RibPrefixes(
        String,
        oneshot::Sender<Result<(RibQuery, Vec<IpNet>), String>>,
    ),
    /// `rib …`: the rows of a chunk of those prefixes, as JSON objects separated by commas.
    RibRows(RibQuery, Vec<IpNet>, oneshot::Sender<String>),
    /// Reload the configuration (SIGHUP).
    Reload,
    /// Stop the daemon (SIGTERM, SIGINT; SIGUSR2 for a graceful-restart stop).
    Stop(StopMode),
}

/// How the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// For good: every session ends with Cease / Administrative Shutdown and an RFC 8203
    /// message, and Twill's kernel routes are removed.
    Shutdown,
    /// To be started again with `--graceful-restart` (RFC 4724): connections close with no
    /// NOTIFICATION, so peers keep our routes, and the kernel routes stay (forwarding goes
    /// on while we are away).
    GracefulRestart,
}

/// Bytes queued for one connection above which the peer counts as not reading: the
/// speaker starts its send hold timer (RFC 9687) and drops the peer at its hold time. Large
/// enough for a full table sent at once to a slow reader.
const OUTPUT_QUEUE_LIMIT: usize = 64 * 1024 * 1024;

/// Route writes queued for the kernel past which connections stop reading until it catches
/// up: two of the writer's rounds (about 1.5 MB; the reads already made still go in), where a
/// full table arriving faster than the kernel takes it would otherwise queue whole (about 50
/// bytes a route).
const KERNEL_BACKLOG_LIMIT: usize = 2 * kernel::ROUND;

/// Bytes a connection reads ahead of the speaker: four reads.
const INBOUND_LIMIT: usize = 1024 * 1024;

/// The longest a connection pauses its reading before it reads once more anyway.
const PAUSE_LIMIT: Duration = Duration::from_secs(1);

/// Connection IDs are unique in the process, so a daemon started again in the same process
/// (twill-node restarts its speaker when global settings change) never takes a late event
/// of its predecessor's connection for one of its own.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// How long a stop waits for its NOTIFICATIONs to be written and for the kernel routes to
/// be removed.
const STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Connection {
    peer: IpAddr,
    writer: mpsc::UnboundedSender<Bytes>,
    reader: tokio::task::JoinHandle<()>,
    /// The task writing what `writer` queues; it ends once the queue is written and closed.
    writing: tokio::task::JoinHandle<()>,
    /// Bytes queued and not yet written.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Set while the queue is over [`OUTPUT_QUEUE_LIMIT`]; the writer reports the drain.
    blocked: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes read and not yet taken by the speaker: past [`INBOUND_LIMIT`] the reader waits.
    unread: Arc<std::sync::atomic::AtomicUsize>,
}

/// The running daemon.
#[derive(Debug)]
pub struct Daemon {
    config_path: PathBuf,
    config: DaemonConfig,
    speaker: Speaker,
    transports: HashMap<IpAddr, Transport>,
    connections: HashMap<ConnectionId, Connection>,
    events: mpsc::UnboundedSender<Event>,
    /// Shared with their accept tasks; TCP-MD5 keys are set on them per neighbour.
    listeners: Vec<Arc<tokio::net::TcpListener>>,
    started: Instant,
    /// The kernel writer, when `[kernel]` is configured.
    kernel: Option<kernel::Writer>,
    /// Route writes decided in this round of actions, for the kernel thread.
    kernel_batch: Vec<(IpNet, NextHops)>,
    /// Route writes the kernel writer has done.
    kernel_writes: Arc<std::sync::atomic::AtomicU64>,
    /// Route writes handed to the kernel writer and not yet done: past
    /// [`KERNEL_BACKLOG_LIMIT`] the connections stop reading.
    kernel_backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// Times a connection paused its reading: for the speaker, for the kernel.
    read_pauses: Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// Writer tasks of closed connections still writing their last bytes (a NOTIFICATION).
    closing: Vec<tokio::task::JoinHandle<()>>,
}

/// Normalises an IPv4-mapped IPv6 address (from a dual-stack socket) to IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Daemon {
    /// Loads the configuration and opens the listeners.
    pub fn new(
        config_path: PathBuf,
        restarting: bool,
        events: mpsc::UnboundedSender<Event>,
    ) -> anyhow::Result<Daemon> {
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config = DaemonConfig::parse(&text)
            .with_context(|| format!("{} is not valid", config_path.display()))?;
        let mut listeners = Vec::new();
        for address in &config.listen {
            listeners.push(Arc::new(
                socket::listen(*address).with_context(|| format!("cannot listen on {address}"))?,
            ));
        }
        let mut speaker = Speaker::new(config.speaker.clone());
        speaker.set_route_output(config.kernel.is_some());
        let kernel_writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (kernel, kept) = match config.kernel {
            Some(ref kernel_config) => {
                let (sender, kept) =
                    kernel::spawn(kernel_config.clone(), restarting, kernel_writes.clone())
                        .context("cannot open rtnetlink")?;
                (Some(sender), kept)
            }
            None => (None, 0),
        };
        if restarting {
            // RFC 4724 §3: forwarding state was preserved when the previous stop left its
            // kernel routes (a SIGUSR2 stop or a crash; a SIGTERM stop removes them). Without
            // `[kernel]` Twill forwards nothing, so it preserved nothing either.
            let preserved = kept > 0;
            tracing::info!(
                forwarding_preserved = preserved,
                kernel_routes_kept = kept,
                deferral_s = config.selection_deferral.as_secs(),
                "restarting: route selection waits for every neighbour's End-of-RIB"
            );
            speaker.begin_restart(Instant::now(), preserved, config.selection_deferral);
        }
        let kernel_backlog = kernel
            .as_ref()
            .map_or_else(Arc::default, kernel::Writer::backlog);
        Ok(Daemon {
            config_path,
            config,
            speaker,
            transports: HashMap::new(),
            connections: HashMap::new(),
            events,
            listeners,
            started: Instant::now(),
            kernel,
            kernel_batch: Vec::new(),
            kernel_writes,
            kernel_backlog,
            read_pauses: Arc::default(),
            closing: Vec::new(),
        })
    }

    /// Where Prometheus metrics are served, if configured.
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.config.metrics_listen
    }

    /// Runs until the process ends.
    /// Runs until a [`Event::Stop`] (or until every sender is gone). The channel stays the
    /// caller's: a supervisor can start another daemon on it, with the same control socket.
    pub async fn run(mut self, events: &mut mpsc::UnboundedReceiver<Event>) -> anyhow::Result<()> {
        let mut accepting = Vec::new();
        for listener in self.listeners.clone() {
            let sender = self.events.clone();
            accepting.push(tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            if sender.send(Event::Accepted(stream, peer)).is_err() {
                                return;
                            }
                        }
                        Err(err) => tracing::warn!(error = %err, "accept failed"),
                    }
                }
            }));
        }
        // The listeners close with the daemon, so a successor can bind the same addresses.
        struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                for task in &self.0 {
                    task.abort();
                }
            }
        }
        let _accepting = AbortOnDrop(accepting);
        self.apply_config(Instant::now());
        loop {
            self.carry_out_actions();
            let deadline = self
                .speaker
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Stop(mode)) => return self.stop(mode).await,
                    Some(event) => self.on_event(event),
                    None => return Ok(()),
                },
                () = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    self.speaker.handle_timeout(Instant::now());
                }
            }
        }
    }

    fn apply_config(&mut self, now: Instant) {
        let previous = std::mem::take(&mut self.transports);
        self.transports = self
            .config
            .neighbors
            .iter()
            .map(|(n, t)| (n.address, t.clone()))
            .collect();
        for (peer, old) in &previous {
            let keyless = self
                .transports
                .get(peer)
                .is_none_or(|t| t.password.is_none());
            if old.password.is_some() && keyless {
                for listener in &self.listeners {
                    let _ = socket::set_md5(listener.as_ref(), *peer, None);
                }
            }
        }
        for transport in self.transports.values() {
            if let Some(password) = &transport.password {
                // Listening sockets need the key too, per neighbour.
                for listener in &self.listeners {
                    if let Err(err) = socket::set_md5(
                        listener.as_ref(),
                        transport.remote.ip(),
                        Some(password.expose()),
                    ) {
                        tracing::error!(peer = %transport.remote.ip(), error = %err, "cannot set the TCP-MD5 key on a listener");
                    }
                }
            }
        }
        self.speaker.set_neighbors(
            now,
            self.config
                .neighbors
                .iter()
                .map(|(n, _)| n.clone())
                .collect(),
        );
        self.speaker
            .set_originated(now, self.config.originate.clone());
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Accepted(stream, from) => self.on_accepted(now, stream, from),
            Event::Connected(peer, id, Ok(stream)) => {
                let local = stream.local_addr().map(|a| canonical(a.ip()));
                match local {
                    Ok(local) => {
                        self.attach(peer, id, stream);
                        self.speaker.handle_connected(now, peer, id, local, false);
                    }
                    Err(_) => self.speaker.handle_closed(now, peer, id),
                }
            }
            Event::Connected(peer, id, Err(err)) => {
                tracing::debug!(%peer, error = %err, "connect failed");
                self.speaker.handle_closed(now, peer, id);
            }
            Event::Bytes(peer, id, bytes) => {
                if let Some(connection) = self.connections.get(&id) {
                    connection
                        .unread
                        .fetch_sub(bytes.len(), std::sync::atomic::Ordering::Relaxed);
                }
                self.speaker.handle_bytes(now, peer, id, &bytes);
            }
            Event::Drained(peer, id) => {
                if self.connections.contains_key(&id) {
                    self.speaker.handle_send_blocked(now, peer, id, false);
                }
            }
            Event::Closed(peer, id) => {
                if let Some(connection) = self.connections.remove(&id) {
                    connection.reader.abort();
                    self.speaker.handle_closed(now, peer, id);
                }
            }
            Event::RibPrefixes(text, reply) => {
                let listing = text.parse::<RibQuery>().and_then(|query| {
                    self.speaker
                        .rib_prefixes(&query)
                        .map(|prefixes| (query, prefixes))
                });
                let _ = reply.send(listing);
            }
            Event::RibRows(query, prefixes, reply) => {
                let rows = self.speaker.rib_rows(&query, &prefixes);
                let _ = reply.send(control::rib_rows_json(&rows));
            }
            Event::Control(request, reply) => {
                let answer = self.on_control(now, request.trim());
                let _ = reply.send(answer);
            }
            Event::Stop(_) => unreachable!("the loop handles stops"),
            Event::Reload => {
                if let Err(err) = self.reload(now) {
                    tracing::error!(error = %format!("{err:#}"), "reload failed; keeping the running configuration");
                }
            }
        }
    }

    fn on_accepted(&mut self, now: Instant, stream: TcpStream, from: SocketAddr) {
        let peer = canonical(from.ip());
        let Some(transport) = self.transports.get(&peer) else {
            tracing::info!(%peer, "connection from an unknown address refused");
            return;
        };
        if !self.speaker.accepts(&peer) {
            tracing::debug!(%peer, "connection refused: the session is up");
            return;
        }
        if let Err(err) = socket::configure_accepted(&stream, transport) {
            tracing::warn!(%peer, error = %err, "accepted connection refused");
            return;
        }
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let id = self.new_connection_id();
        self.attach(peer, id, stream);
        self.speaker
            .handle_connected(now, peer, id, canonical(local.ip()), true);
    }

    fn new_connection_id(&mut self) -> ConnectionId {
        ConnectionId(NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// Starts the reader and writer tasks of a connection.
    fn attach(&mut self, peer: IpAddr, id: ConnectionId, stream: TcpStream) {
        let (mut read, mut write) = stream.into_split();
        let (writer, mut outgoing) = mpsc::unbounded_channel::<Bytes>();
        let events = self.events.clone();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (left, stuck, drained) = (queued.clone(), blocked.clone(), self.events.clone());
        let writing = tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            while let Some(bytes) = outgoing.recv().await {
                if write.write_all(&bytes).await.is_err() {
                    break;
                }
                let before = left.fetch_sub(bytes.len(), Ordering::Relaxed);
                if before == bytes.len() && stuck.swap(false, Ordering::Relaxed) {
                    let _ = drained.send(Event::Drained(peer, id));
                }
            }
            let _ = write.shutdown().await;
        });
        let backlog = self.kernel_backlog.clone();
        let pauses = self.read_pauses.clone();
        let unread = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pending = unread.clone();
        let reader = tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                // Flow control: while the speaker or the kernel is behind, UPDATEs wait in
                // the peer's TCP window rather than in our memory (as raw bytes, or as route
                // writes). BIRD, single-threaded, reads nothing while it works either. A
                // pause ends after PAUSE_LIMIT whatever the backlog, so every session is read
                // at least that often (a hold time is 3 s or more): a long kernel write, or a
                // kernel writer that died, slows reading but never stops it.
                let paused = tokio::time::Instant::now();
                let mut counted = false;
                loop {
                    let speaker_behind = pending.load(Ordering::Relaxed) > INBOUND_LIMIT;
                    let kernel_behind = backlog.load(Ordering::Relaxed) > KERNEL_BACKLOG_LIMIT;
                    if !(speaker_behind || kernel_behind) || paused.elapsed() >= PAUSE_LIMIT {
                        break;
                    }
                    if !counted {
                        counted = true;
                        pauses[usize::from(kernel_behind)].fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                match read.read(&mut buffer).await {
                    Ok(0) | Err(_) => {
                        let _ = events.send(Event::Closed(peer, id));
                        return;
                    }
                    Ok(n) => {
                        pending.fetch_add(n, Ordering::Relaxed);
                        if events
                            .send(Event::Bytes(peer, id, buffer[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        self.connections.insert(
            id,
            Connection {
                peer,
                writer,
                reader,
                writing,
                queued,
                blocked,
                unread,
            },
        );
    }

    fn carry_out_actions(&mut self) {
        while let Some(action) = self.speaker.poll_action() {
            match action {
                Action::Connect(peer) => {
                    let Some(transport) = self.transports.get(&peer).cloned() else {
                        continue;
                    };
                    let id = self.new_connection_id();
                    let events = self.events.clone();
                    tokio::spawn(async move {
                        let result = socket::connect(&transport, Duration::from_secs(5)).await;
                        let _ = events.send(Event::Connected(peer, id, result));
                    });
                }
                Action::Send(id, bytes) => self.send(id, bytes),
                Action::Close(id) => {
                    if let Some(connection) = self.connections.remove(&id) {
                        connection.reader.abort();
                        self.closing.retain(|task| !task.is_finished());
                        if connection
                            .blocked
                            .load(std::sync::atomic::Ordering::Relaxed)
                        {
                            // A peer that stopped reading: its last NOTIFICATION gets a
                            // moment, then the queue goes with the task.
                            let abort = connection.writing.abort_handle();
                            tokio::spawn(async move {
                                tokio::time::sleep(STOP_WAIT).await;
                                abort.abort();
                            });
                        }
                        self.closing.push(connection.writing);
                        tracing::debug!(peer = %connection.peer, "connection closed");
                    }
                }
                Action::Route(change) => {
                    if self.kernel.is_some() {
                        // An excluded prefix is written as a removal: one written before
                        // the exclusion (a reload) goes at its next change.
                        let excluded = self.config.kernel.as_ref().is_some_and(|k| {
                            k.exclude.iter().any(|net| net.contains(&change.prefix))
                        });
                        let hops = if excluded {
                            NextHops::None
                        } else {
                            change.paths.iter().map(|p| p.next_hop()).collect()
                        };
                        self.kernel_batch.push((change.prefix, hops));
                    }
                }
                Action::EndOfRib(peer, family) => {
                    tracing::debug!(%peer, %family, "End-of-RIB received");
                }
                Action::SelectionDone => self.sweep_kernel(),
                Action::PeerUp(peer) => tracing::info!(%peer, "session established"),
                Action::PeerDown(peer, reason) => tracing::info!(%peer, %reason, "session down"),
            }
        }
        self.flush_kernel_batch();
    }

    /// Queues bytes for a connection; a queue grown past [`OUTPUT_QUEUE_LIMIT`] tells the
    /// speaker the peer is not reading.
    fn send(&mut self, id: ConnectionId, bytes: Bytes) {
        use std::sync::atomic::Ordering;
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        let len = bytes.len();
        // Counted before the writer can take it, so its count never goes below zero.
        let queued = connection.queued.fetch_add(len, Ordering::Relaxed) + len;
        if connection.writer.send(bytes).is_err() {
            connection.queued.fetch_sub(len, Ordering::Relaxed);
            return;
        }
        if queued > OUTPUT_QUEUE_LIMIT && !connection.blocked.swap(true, Ordering::Relaxed) {
            let peer = connection.peer;
            tracing::warn!(%peer, queued, "the peer is not reading what we send");
            self.speaker
                .handle_send_blocked(Instant::now(), peer, id, true);
        }
    }

    /// Hands the route writes gathered so far to the kernel thread, as one command.
    fn flush_kernel_batch(&mut self) {
        if self.kernel_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.kernel_batch);
        if let Some(kernel) = &self.kernel {
            let _ = kernel.send(KernelCommand::Routes(batch));
        }
    }

    /// After a graceful restart's route selection: routes from before that were not
    /// written again go.
    fn sweep_kernel(&mut self) {
        if self.kernel.is_none() {
            return;
        }
        tracing::info!("removing kernel routes from before the restart not learned again");
        // Route writes decided before the sweep (the whole table) go first.
        self.flush_kernel_batch();
        if let Some(kernel) = &self.kernel {
            let _ = kernel.send(KernelCommand::Sweep);
        }
    }

    /// Stops the daemon. A shutdown sends every peer Cease / Administrative Shutdown (RFC
    /// 8203 message), waits for those to be written, and removes Twill's kernel routes; a
    /// graceful-restart stop closes the connections silently and leaves the routes.
    async fn stop(mut self, mode: StopMode) -> anyhow::Result<()> {
        match mode {
            StopMode::Shutdown => {
                tracing::info!("stopping: administrative shutdown of every session");
                self.speaker.shutdown("twill-bgpd is shutting down");
            }
            StopMode::GracefulRestart => {
                tracing::info!(
                    "stopping for a graceful restart: sessions close silently, kernel routes stay"
                );
                self.speaker.stop_for_restart(Instant::now());
            }
        }
        self.carry_out_actions();
        let closing = std::mem::take(&mut self.closing);
        let written = async {
            for task in closing {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(STOP_WAIT, written).await.is_err() {
            tracing::warn!("some peers did not take their NOTIFICATION in time");
        }
        if mode == StopMode::Shutdown {
            if let Some(kernel) = self.kernel.take() {
                let (done, gone) = std::sync::mpsc::channel();
                if kernel.send(KernelCommand::Flush(done)).is_ok() {
                    let waited =
                        tokio::task::spawn_blocking(move || gone.recv_timeout(STOP_WAIT)).await;
                    if !matches!(waited, Ok(Ok(()))) {
                        tracing::error!(
                            "kernel routes may remain: their removal did not finish in time"
                        );
                    }
                }
            }
        }
        tracing::info!("twill-bgpd stopped");
        Ok(())
    }

    fn reload(&mut self, now: Instant) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config_path)
            .with_context(|| format!("cannot read {}", self.config_path.display()))?;
        let config = DaemonConfig::parse(&text)
            .with_context(|| format!("{} is not valid", self.config_path.display()))?;
        if config.speaker != self.config.speaker || config.listen != self.config.listen {
            anyhow::bail!("global settings changed; restart twill-bgpd to apply them");
        }
        let excluded = |c: &DaemonConfig| {
            c.kernel
                .as_ref()
                .map(|k| k.exclude.clone())
                .unwrap_or_default()
        };
        let (before, after) = (excluded(&self.config), excluded(&config));
        self.config = config;
        self.apply_config(now);
        if before != after {
            // Prefixes that entered or left the exclusion: written (or removed) again now.
            let changed: Vec<IpNet> = before
                .iter()
                .filter(|net| !after.contains(net))
                .chain(after.iter().filter(|net| !before.contains(net)))
                .copied()
                .collect();
            self.speaker.reemit_routes(&changed);
        }
        tracing::info!(
            neighbors = self.config.neighbors.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    fn on_control(&mut self, now: Instant, request: &str) -> String {
        let (command, argument) = request.split_once(' ').unwrap_or((request, ""));
        match command {
            "peers" => control::peers_json(&self.speaker.peers_status(now), &self.config.descriptions),
            "metrics" => {
                let kernel = self.kernel.is_some().then(|| {
                    let backlog = self.kernel_backlog.load(std::sync::atomic::Ordering::Relaxed);
                    let writes = self.kernel_writes.load(std::sync::atomic::Ordering::Relaxed);
                    (writes, backlog as u64)
                });
                let pauses = self
                    .read_pauses
                    .each_ref()
                    .map(|count| count.load(std::sync::atomic::Ordering::Relaxed));
                control::metrics(
                    &self.speaker.peers_status(now),
                    &self.speaker,
                    self.started.elapsed(),
                    kernel,
                    pauses,
                )
            }
            "reload" => match self.reload(now) {
                Ok(()) => "{\"ok\":true}".into(),
                Err(err) => serde_json::json!({ "error": format!("{err:#}") }).to_string(),
            },
            "refresh" => match argument.parse::<IpAddr>() {
                Ok(peer) if self.speaker.request_refresh(now, peer) => "{\"ok\":true}".into(),
                Ok(peer) => serde_json::json!({ "error": format!("{peer} is not an established neighbour with route refresh") }).to_string(),
                Err(_) => serde_json::json!({ "error": format!("{argument:?} is not an address") }).to_string(),
            },
            "disable" | "enable" => match argument.parse::<IpAddr>() {
                Ok(peer) if self.speaker.set_enabled(now, peer, command == "enable") => "{\"ok\":true}".into(),
                Ok(peer) => serde_json::json!({ "error": format!("{peer} is not a neighbour") }).to_string(),
                Err(_) => serde_json::json!({ "error": format!("{argument:?} is not an address") }).to_string(),
            },
            other => serde_json::json!({ "error": format!("unknown command {other:?} (peers, rib [PREFIX|ADDRESS] [--peer ADDRESS --in|--out], metrics, reload, refresh ADDRESS, disable ADDRESS, enable ADDRESS)") }).to_string(),
        }
    }
}
