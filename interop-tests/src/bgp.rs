//! Harness for BGP interop: twill-bgpd and the three Debian peers, each in its own network
//! namespace (198.18.110.1 is Twill, .2 the peer), with their configs and CLIs.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::{link, Daemon, Netns};
use crate::workspace_binary;

/// Twill's address.
pub const TWILL: &str = "198.18.110.1";
/// The peer's address.
pub const PEER: &str = "198.18.110.2";
/// Twill's AS.
pub const TWILL_AS: u32 = 65001;
/// The peer's AS.
pub const PEER_AS: u32 = 65002;

/// Which real peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// gobgpd 3.10.
    Gobgp,
    /// BIRD 2.0.12.
    Bird,
    /// FRR 8.4 bgpd.
    Frr,
}

/// Options of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Twill waits for the peer to connect.
    pub twill_passive: bool,
    /// The peer waits for Twill.
    pub peer_passive: bool,
    /// TCP-MD5 password on Twill's side.
    pub twill_password: Option<String>,
    /// TCP-MD5 password on the peer's side.
    pub peer_password: Option<String>,
    /// Hold time both propose.
    pub hold_time: u16,
    /// Write best routes into the main table (`[kernel]`).
    pub kernel: bool,
    /// Run the session over IPv6 (fd00:110::1 ↔ fd00:110::2) instead of IPv4.
    pub ipv6_session: bool,
}

/// Two namespaces, twill-bgpd in one and a peer in the other.
#[derive(Debug)]
pub struct BgpLab {
    /// The peer's kind.
    pub kind: PeerKind,
    /// Twill's namespace.
    pub twill_ns: Netns,
    /// The peer's namespace.
    pub peer_ns: Netns,
    /// Scratch directory (configs, logs, sockets).
    pub dir: tempfile::TempDir,
    /// twill-bgpd.
    pub twill: Option<Daemon>,
    /// The peer daemon.
    pub peer: Option<Daemon>,
    options: Options,
}

fn poll<T>(limit: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(limit, Duration::from_millis(100), check)
}

fn poll_every<T>(
    limit: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

impl BgpLab {
    /// Builds the namespaces and starts both daemons.
    pub fn start(kind: PeerKind, options: Options) -> BgpLab {
        let tag = match kind {
            PeerKind::Gobgp => "gob",
            PeerKind::Bird => "brd",
            PeerKind::Frr => "frr",
        };
        let twill_ns = Netns::new(&format!("{tag}t"));
        let peer_ns = Netns::new(&format!("{tag}p"));
        let (twill_if, peer_if) = link(
            &twill_ns,
            &format!("{TWILL}/24"),
            &peer_ns,
            &format!("{PEER}/24"),
        );
        twill_ns.ip(&["addr", "add", "fd00:110::1/64", "dev", &twill_if, "nodad"]);
        peer_ns.ip(&["addr", "add", "fd00:110::2/64", "dev", &peer_if, "nodad"]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("twill-interop-{tag}-"))
            .tempdir()
            .expect("a temp dir");
        let mut lab = BgpLab {
            kind,
            twill_ns,
            peer_ns,
            dir,
            twill: None,
            peer: None,
            options,
        };
        lab.write_twill_config(&["10.20.0.0/24", "fd00:20::/64"]);
        lab.start_peer();
        lab.start_twill(false);
        lab
    }

    /// Twill's session address.
    pub fn twill_addr(&self) -> &'static str {
        if self.options.ipv6_session {
            "fd00:110::1"
        } else {
            TWILL
        }
    }

    /// The peer's session address.
    pub fn peer_addr(&self) -> &'static str {
        if self.options.ipv6_session {
            "fd00:110::2"
        } else {
            PEER
        }
    }

    /// Path of a file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes twill-bgpd's configuration originating `prefixes`.
    pub fn write_twill_config(&self, prefixes: &[&str]) {
        let o = &self.options;
        let (listen, other_family_next_hop) = if o.ipv6_session {
            (
                "[fd00:110::1]:179".to_string(),
                format!("next_hop_v4 = \"{TWILL}\""),
            )
        } else {
            (
                format!("{TWILL}:179"),
                "next_hop_v6 = \"fd00:110::1\"".to_string(),
            )
        };
        let mut text = format!(
            "[global]\nasn = {TWILL_AS}\nrouter_id = \"{TWILL}\"\nlisten = [\"{listen}\"]\n\n[[neighbor]]\naddress = \"{}\"\n\
             remote_asn = {PEER_AS}\nimport = [\"all\"]\nexport = [\"all\"]\npassive = {}\nhold_time = {}\nconnect_retry = 1\n{other_family_next_hop}\n",
            self.peer_addr(),
            o.twill_passive,
            if o.hold_time == 0 { 30 } else { o.hold_time }
        );
        if let Some(password) = &o.twill_password {
            text.push_str(&format!("password = \"{password}\"\n"));
        }
        for prefix in prefixes {
            text.push_str(&format!("\n[[originate]]\nprefix = \"{prefix}\"\ncommunities = [\"65001:100\", \"65001:1:2\"]\n"));
        }
        if o.kernel {
            text.push_str("\n[kernel]\ntable = 254\n");
        }
        std::fs::write(self.path("twill.toml"), text).expect("config written");
    }

    /// Starts (or restarts) twill-bgpd.
    pub fn start_twill(&mut self, graceful_restart: bool) {
        self.twill = None;
        let binary = workspace_binary("twill-bgpd");
        assert!(
            binary.exists(),
            "{} is missing: build the workspace first (cargo build --workspace)",
            binary.display()
        );
        let config = self.path("twill.toml");
        let control = self.path("bgpd.sock");
        let _ = std::fs::remove_file(&control);
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ];
        if graceful_restart {
            args.push("--graceful-restart");
        }
        self.twill = Some(self.twill_ns.spawn(
            binary.to_str().unwrap(),
            &args,
            &self.path("twill.log"),
        ));
        let ready = poll(Duration::from_secs(10), || control.exists().then_some(()));
        assert!(
            ready.is_some(),
            "twill-bgpd did not start:\n{}",
            self.log("twill.log")
        );
    }

    /// Waits for twill-bgpd to exit (after a signal), failing with its log.
    pub fn wait_twill_exit(&mut self, limit: Duration) {
        let exited = poll(limit, || {
            self.twill
                .as_mut()
                .is_none_or(|d| !d.is_running())
                .then_some(())
        });
        assert!(
            exited.is_some(),
            "twill-bgpd did not exit:\n{}",
            self.log("twill.log")
        );
    }

    /// A log file's content.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Runs `twillctl bgp ARGS --control … -o json` and parses the answer.
    pub fn twillctl(&self, args: &[&str]) -> Result<Value, String> {
        let binary = workspace_binary("twillctl");
        let control = self.path("bgpd.sock");
        let output = std::process::Command::new(&binary)
            .arg("bgp")
            .args(args)
            .args(["--control", control.to_str().unwrap(), "-o", "json"])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&output.stdout);
        if text.trim() == "ok" {
            return Ok(Value::Bool(true));
        }
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }

    /// Twill's session state with the peer.
    pub fn twill_state(&self) -> Option<String> {
        let peers = self.twillctl(&["peers"]).ok()?;
        peers
            .as_array()?
            .first()?
            .get("state")?
            .as_str()
            .map(str::to_string)
    }

    /// Twill's routes in its namespace's main table (protocol 210), as `ip route` prints them.
    pub fn kernel_routes(&self) -> String {
        let v4 = self
            .twill_ns
            .output("ip", &["route", "show", "proto", "210"]);
        let v6 = self
            .twill_ns
            .output("ip", &["-6", "route", "show", "proto", "210"]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&v4.stdout),
            String::from_utf8_lossy(&v6.stdout)
        )
    }

    /// Withdraws the peer's IPv4 route (gobgpd only).
    pub fn peer_withdraw_v4(&self) {
        assert_eq!(
            self.kind,
            PeerKind::Gobgp,
            "withdrawal by CLI is wired for gobgpd"
        );
        let args = [
            "-u",
            "127.0.0.1",
            "-p",
            "50051",
            "global",
            "rib",
            "del",
            "10.21.0.0/24",
            "-a",
            "ipv4",
        ];
        assert!(self.peer_ns.output("gobgp", &args).status.success());
    }

    /// Twill's paths for `prefix`.
    pub fn twill_paths(&self, prefix: &str) -> Vec<Value> {
        let rib = self.twillctl(&["rib"]).unwrap_or(Value::Null);
        rib.as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["prefix"] == prefix)
            .cloned()
            .collect()
    }

    /// Polls until `check` holds, failing with both logs.
    pub fn wait(&self, limit: Duration, what: &str, check: impl FnMut(&BgpLab) -> bool) {
        self.wait_every(limit, Duration::from_millis(100), what, check);
    }

    /// As [`BgpLab::wait`], looking every `interval`: for a state that lasts only a moment
    /// (a route gone between a restart and its re-announcement, about 100 ms).
    pub fn wait_every(
        &self,
        limit: Duration,
        interval: Duration,
        what: &str,
        mut check: impl FnMut(&BgpLab) -> bool,
    ) {
        if poll_every(limit, interval, || check(self).then_some(())).is_none() {
            panic!(
                "timed out waiting for {what}\n--- twill:\n{}\n--- peer:\n{}\n--- peer view:\n{}",
                self.log("twill.log"),
                self.log("peer.log"),
                self.peer_view()
            );
        }
    }

    /// What the peer's CLI says about the session and routes (for failure messages).
    pub fn peer_view(&self) -> String {
        let output = match self.kind {
            PeerKind::Gobgp => self
                .peer_ns
                .output("gobgp", &["-u", "127.0.0.1", "-p", "50051", "neighbor"]),
            PeerKind::Bird => self.birdc(&["show", "protocols", "all", "twill"]),
            PeerKind::Frr => self.vtysh("show bgp summary"),
        };
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn birdc(&self, args: &[&str]) -> Output {
        birdc(&self.peer_ns, &self.path("bird.ctl"), args)
    }

    fn vtysh(&self, command: &str) -> Output {
        vtysh(&self.peer_ns, self.dir.path(), command)
    }

    fn start_peer(&mut self) {
        let o = self.options.clone();
        let (twill, peer) = (self.twill_addr(), self.peer_addr());
        let hold = if o.hold_time == 0 { 30 } else { o.hold_time };
        let log = self.path("peer.log");
        let daemon = match self.kind {
            PeerKind::Gobgp => {
                let mut neighbor = format!("[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{twill}\"\n    peer-as = {TWILL_AS}\n");
                if let Some(password) = &o.peer_password {
                    neighbor.push_str(&format!("    auth-password = \"{password}\"\n"));
                }
                neighbor.push_str(&format!(
                    "  [neighbors.timers.config]\n    connect-retry = 1\n    hold-time = {hold}\n    keepalive-interval = {}\n    idle-hold-time-after-reset = 1\n  \
                     [neighbors.transport.config]\n    passive-mode = {}\n    local-address = \"{peer}\"\n",
                    (hold / 3).max(1),
                    o.peer_passive
                ));
                neighbor.push_str("  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 120\n");
                for family in ["ipv4-unicast", "ipv6-unicast"] {
                    neighbor.push_str(&format!(
                        "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\"\n    \
                         [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n"
                    ));
                }
                let config = format!("[global.config]\n  as = {PEER_AS}\n  router-id = \"{PEER}\"\n  port = 179\n  local-address-list = [\"{peer}\"]\n{neighbor}");
                let daemon = spawn_gobgpd(&self.peer_ns, self.dir.path(), "peer", config, 50051);
                let logs = [self.path("peer.log")];
                let logs: Vec<&std::path::Path> = logs.iter().map(PathBuf::as_path).collect();
                let attributes = ["community", "65002:200", "large-community", "65002:3:4"];
                gobgp_announce(&self.peer_ns, 50051, "10.21.0.0/24", &attributes, &logs);
                let v6 = [&["nexthop", "fd00:110::2"][..], &attributes].concat();
                gobgp_announce(&self.peer_ns, 50051, "fd00:21::/64", &v6, &logs);
                daemon
            }
            PeerKind::Bird => {
                let password = o
                    .peer_password
                    .as_ref()
                    .map(|p| format!("  password \"{p}\";\n"))
                    .unwrap_or_default();
                let config = format!(
                    "router id {PEER};\nprotocol device {{ }}\nprotocol static orig4 {{ ipv4; route 10.21.0.0/24 blackhole; }}\n\
                     protocol static orig6 {{ ipv6; route fd00:21::/64 blackhole; }}\n\
                     filter add_communities {{ bgp_community.add((65002,200)); bgp_large_community.add((65002,3,4)); accept; }}\n\
                     protocol bgp twill {{\n  local {peer} as {PEER_AS};\n  neighbor {twill} as {TWILL_AS};\n  hold time {hold};\n  \
                     connect retry time 1;\n  error wait time 1, 5;\n  graceful restart on;\n  passive {};\n{password}  \
                     ipv4 {{ import all; export filter add_communities; next hop address {PEER}; }};\n  \
                     ipv6 {{ import all; export filter add_communities; next hop address fd00:110::2; }};\n}}\n",
                    if o.peer_passive { "on" } else { "off" }
                );
                spawn_bird(&self.peer_ns, self.dir.path(), &config).0
            }
            PeerKind::Frr => {
                let mut neighbor = format!(" neighbor {twill} remote-as {TWILL_AS}\n neighbor {twill} timers {} {hold}\n neighbor {twill} timers connect 1\n", (hold / 3).max(1));
                if o.peer_passive {
                    neighbor.push_str(&format!(" neighbor {twill} passive\n"));
                }
                if let Some(password) = &o.peer_password {
                    neighbor.push_str(&format!(" neighbor {twill} password {password}\n"));
                }
                let config = format!(
                    "frr defaults traditional\nhostname tor\nlog stdout\n!\nroute-map TAG permit 10\n set community 65002:200\n \
                     set large-community 65002:3:4\n!\nrouter bgp {PEER_AS}\n bgp router-id {PEER}\n no bgp ebgp-requires-policy\n \
                     no bgp network import-check\n bgp graceful-restart\n{neighbor} address-family ipv4 unicast\n  network 10.21.0.0/24 route-map TAG\n  \
                     neighbor {twill} activate\n exit-address-family\n address-family ipv6 unicast\n  network fd00:21::/64 route-map TAG\n  \
                     neighbor {twill} activate\n exit-address-family\n"
                );
                spawn_frr(&self.peer_ns, self.dir.path(), &config, &log, Some(PEER))
            }
        };
        self.peer = Some(daemon);
    }

    /// Whether the peer says the session is Established.
    pub fn peer_established(&self) -> bool {
        match self.kind {
            PeerKind::Gobgp => {
                let out = self.peer_ns.output(
                    "gobgp",
                    &[
                        "-u",
                        "127.0.0.1",
                        "-p",
                        "50051",
                        "neighbor",
                        self.twill_addr(),
                        "-j",
                    ],
                );
                serde_json::from_slice::<Value>(&out.stdout)
                    .is_ok_and(|v| v["state"]["session_state"] == 6)
            }
            PeerKind::Bird => {
                String::from_utf8_lossy(&self.birdc(&["show", "protocols", "twill"]).stdout)
                    .contains("Established")
            }
            PeerKind::Frr => {
                let twill = self.twill_addr();
                let out = self.vtysh(&format!("show bgp neighbors {twill} json"));
                serde_json::from_slice::<Value>(&out.stdout)
                    .is_ok_and(|v| v[twill]["bgpState"] == "Established")
            }
        }
    }

    /// The peer's view of `prefix` from Twill: (AS path, standard communities, large
    /// communities), as text, or `None` when the peer does not have it.
    pub fn peer_route(&self, prefix: &str) -> Option<String> {
        let v6 = prefix.contains(':');
        let text = match self.kind {
            PeerKind::Gobgp => {
                let family = if v6 { "ipv6" } else { "ipv4" };
                let out = self.peer_ns.output(
                    "gobgp",
                    &[
                        "-u",
                        "127.0.0.1",
                        "-p",
                        "50051",
                        "global",
                        "rib",
                        prefix,
                        "-a",
                        family,
                    ],
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            PeerKind::Bird => {
                String::from_utf8_lossy(&self.birdc(&["show", "route", prefix, "all"]).stdout)
                    .into_owned()
            }
            PeerKind::Frr => {
                let family = if v6 { "ipv6" } else { "ipv4" };
                String::from_utf8_lossy(
                    &self
                        .vtysh(&format!("show bgp {family} unicast {prefix}"))
                        .stdout,
                )
                .into_owned()
            }
        };
        (text.contains(&TWILL_AS.to_string())
            && !text.contains("Network not in table")
            && !text.contains("not in table"))
        .then_some(text)
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        self.twill = None;
        self.peer = None;
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `limit` showing the
/// `logs`.
pub fn wait_for(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<String>,
    logs: &[&std::path::Path],
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        if Instant::now() > deadline {
            let text: Vec<String> = logs
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect();
            panic!("timed out waiting for {what}\n{}", text.join("\n-----\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts twill-bgpd in `ns` with `config` (written to `dir/twill.toml`, control socket
/// `dir/bgpd.sock`, log `dir/twill.log`).
pub fn spawn_twill(ns: &Netns, dir: &std::path::Path, config: &str) -> Daemon {
    std::fs::write(dir.join("twill.toml"), config).expect("twill.toml written");
    let (config, control) = (dir.join("twill.toml"), dir.join("bgpd.sock"));
    ns.spawn(
        workspace_binary("twill-bgpd").to_str().unwrap(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        &dir.join("twill.log"),
    )
}

/// Starts BIRD in `ns` with `config` (written to `dir/bird.conf`, logging to
/// `dir/bird.log`); returns the daemon and its control socket.
pub fn spawn_bird(ns: &Netns, dir: &std::path::Path, config: &str) -> (Daemon, PathBuf) {
    let (path, socket) = (dir.join("bird.conf"), dir.join("bird.ctl"));
    std::fs::write(&path, config).expect("bird.conf written");
    let daemon = ns.spawn(
        "bird",
        &[
            "-c",
            path.to_str().unwrap(),
            "-s",
            socket.to_str().unwrap(),
            "-f",
        ],
        &dir.join("bird.log"),
    );
    (daemon, socket)
}

/// Starts FRR's bgpd alone (`-Z`, no zebra) in `ns` with `config` (written to
/// `dir/bgpd.conf`, its vty socket in `dir/vty`), logging to `log`, listening on `listen`
/// when given.
pub fn spawn_frr(
    ns: &Netns,
    dir: &std::path::Path,
    config: &str,
    log: &std::path::Path,
    listen: Option<&str>,
) -> Daemon {
    let (path, pid, vty) = (dir.join("bgpd.conf"), dir.join("bgpd.pid"), dir.join("vty"));
    std::fs::write(&path, config).expect("bgpd.conf written");
    std::fs::create_dir_all(&vty).expect("the vty directory");
    let mut args = vec![
        "-Z".to_string(),
        "-S".to_string(),
        "-f".to_string(),
        path.display().to_string(),
        "-i".to_string(),
        pid.display().to_string(),
        "--vty_socket".to_string(),
        vty.display().to_string(),
    ];
    if let Some(address) = listen {
        args.extend(["-l".to_string(), address.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.spawn("/usr/lib/frr/bgpd", &args, log)
}

/// Runs `vtysh -c COMMAND` in `ns` against the FRR started in `dir`.
pub fn vtysh(ns: &Netns, dir: &std::path::Path, command: &str) -> Output {
    let vty = dir.join("vty");
    ns.output(
        "vtysh",
        &["--vty_socket", vty.to_str().unwrap(), "-c", command],
    )
}

/// Starts gobgpd in `ns` with `config` (written to `dir/NAME.toml`, logging to
/// `dir/NAME.log`), its API on 127.0.0.1:`port` inside the namespace.
pub fn spawn_gobgpd(
    ns: &Netns,
    dir: &std::path::Path,
    name: &str,
    config: String,
    port: u16,
) -> Daemon {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("the gobgpd config written");
    let api = format!("127.0.0.1:{port}");
    ns.spawn(
        "gobgpd",
        &[
            "-f",
            path.to_str().unwrap(),
            "--api-hosts",
            &api,
            "--pprof-disable",
            "-p",
        ],
        &dir.join(format!("{name}.log")),
    )
}

/// Announces `prefix` (origin IGP, IPv4 or IPv6 by its address, with `attributes` in
/// `gobgp global rib add` words) from the gobgpd whose API is on `port`, retrying until the
/// API answers; on failure shows `logs`.
pub fn gobgp_announce(
    ns: &Netns,
    port: u16,
    prefix: &str,
    attributes: &[&str],
    logs: &[&std::path::Path],
) {
    let port = port.to_string();
    let family = if prefix.contains(':') { "ipv6" } else { "ipv4" };
    let mut args = vec![
        "-u",
        "127.0.0.1",
        "-p",
        port.as_str(),
        "global",
        "rib",
        "add",
        prefix,
    ];
    args.extend_from_slice(attributes);
    args.extend(["origin", "igp", "-a", family]);
    wait_for(
        Duration::from_secs(10),
        &format!("gobgp to take {prefix}"),
        || ns.output("gobgp", &args).status.success().then(String::new),
        logs,
    );
}

/// Runs `birdc -s SOCKET ARGS` in `ns`.
pub fn birdc(ns: &Netns, socket: &std::path::Path, args: &[&str]) -> Output {
    let mut full = vec!["-s", socket.to_str().unwrap()];
    full.extend_from_slice(args);
    ns.output("birdc", &full)
}

/// Sends a signal to a daemon's process.
pub fn signal(daemon: &Daemon, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &daemon.pid().to_string()])
        .status();
}
