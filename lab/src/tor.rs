//! The lab's top-of-rack router: the underlay namespace (every node's default gateway,
//! 198.18.0.1) running a real bird2, frr bgpd or gobgpd that peers eBGP with every node, as
//! the BGPPeer the lab writes asks. It announces the rack's own prefix ([`TOR_PREFIX`]) to
//! the nodes. BIRD, and FRR through its zebra, also write what they learn into the underlay's
//! kernel, so the rack reaches every pod; gobgpd runs without a FIB, so with it the rack's
//! kernel learns nothing (its RIB still shows every block): gobgpd 3.10's zebra client does
//! not speak FRR 8.4's zebra protocol (it panics decoding zebra's interface messages).

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context};

use crate::netns::named;
use crate::state::NodeState;

/// The rack's AS number.
pub const TOR_AS: u32 = 65000;
/// What the rack announces to the nodes (its own network behind it).
pub const TOR_PREFIX: &str = "198.19.0.0/24";
/// The gobgpd API port (inside the underlay namespace).
const GOBGP_API: u16 = 50051;

/// The router the rack runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorKind {
    /// BIRD 2.
    Bird,
    /// FRR: bgpd with zebra, which writes bgpd's best routes into the rack's kernel.
    Frr,
    /// GoBGP.
    Gobgp,
}

impl std::str::FromStr for TorKind {
    type Err = String;

    fn from_str(text: &str) -> Result<TorKind, String> {
        match text {
            "bird" => Ok(TorKind::Bird),
            "frr" => Ok(TorKind::Frr),
            "gobgp" => Ok(TorKind::Gobgp),
            other => Err(format!("{other:?} is not bird, frr or gobgp")),
        }
    }
}

impl TorKind {
    /// The name as given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TorKind::Bird => "bird",
            TorKind::Frr => "frr",
            TorKind::Gobgp => "gobgp",
        }
    }
}

/// Starts the rack's router in `underlay`, its files in `dir`, peering with `nodes` (AS
/// `node_as`), each from the router's address on the node's subnet.
pub fn start(
    kind: TorKind,
    underlay: &str,
    dir: &Path,
    nodes: &[NodeState],
    node_as: u32,
) -> anyhow::Result<()> {
    let address = crate::cluster::UNDERLAY_GATEWAY;
    let local =
        |node: &NodeState| crate::cluster::gateway(crate::cluster::subnet_of(&node.address));
    std::fs::create_dir_all(dir)?;
    // The rack's own network, announced to the nodes.
    let _ = named::ip(underlay, &["route", "add", "blackhole", TOR_PREFIX]);
    let log = std::fs::File::create(dir.join("tor.log"))?;
    let (program, args): (&str, Vec<String>) = match kind {
        TorKind::Bird => {
            let mut config = format!(
                "router id {address};\nprotocol device {{ }}\n\
                 protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; merge paths on; }}\n\
                 protocol static rack {{ ipv4; route {TOR_PREFIX} blackhole; }}\n"
            );
            for node in nodes {
                config.push_str(&format!(
                    "protocol bgp {} {{\n  local {} as {TOR_AS};\n  neighbor {} as {node_as};\n  \
                     graceful restart on;\n  connect retry time 1;\n  error wait time 1, 5;\n  \
                     ipv4 {{ import all; export all; add paths off; }};\n}}\n",
                    node.name.replace('-', "_"),
                    local(node),
                    node.address
                ));
            }
            let path = dir.join("bird.conf");
            std::fs::write(&path, config)?;
            (
                "bird",
                vec![
                    "-c".into(),
                    path.display().to_string(),
                    "-s".into(),
                    dir.join("bird.ctl").display().to_string(),
                    "-f".into(),
                ],
            )
        }
        TorKind::Frr => {
            let mut neighbors = String::new();
            let mut activate = String::new();
            for node in nodes {
                neighbors.push_str(&format!(
                    " neighbor {0} remote-as {node_as}\n neighbor {0} timers connect 1\n neighbor {0} update-source {1}\n",
                    node.address,
                    local(node)
                ));
                activate.push_str(&format!("  neighbor {} activate\n", node.address));
            }
            let config = format!(
                "frr defaults traditional\nhostname tor\nlog stdout\n!\nrouter bgp {TOR_AS}\n bgp router-id {address}\n \
                 no bgp ebgp-requires-policy\n no bgp network import-check\n bgp graceful-restart\n{neighbors} \
                 address-family ipv4 unicast\n  network {TOR_PREFIX}\n{activate} exit-address-family\n"
            );
            let path = dir.join("bgpd.conf");
            std::fs::write(&path, config)?;
            let vty = dir.join("vty");
            std::fs::create_dir_all(&vty)?;
            std::fs::write(dir.join("zebra.conf"), "hostname tor\nlog stdout\n")?;
            // FRR runs as user frr: its files must be its own.
            let _ = std::process::Command::new("chown")
                .args(["-R", "frr:frr"])
                .arg(dir)
                .status();
            // zebra first: bgpd hands it its best routes through the zserv socket (and
            // connects again until it answers), zebra writes them to the kernel.
            let zserv = dir.join("zserv.api").display().to_string();
            spawn(
                underlay,
                "/usr/lib/frr/zebra",
                &[
                    "-z".into(),
                    zserv.clone(),
                    "-i".into(),
                    dir.join("zebra.pid").display().to_string(),
                    "--vty_socket".into(),
                    vty.display().to_string(),
                    "-f".into(),
                    dir.join("zebra.conf").display().to_string(),
                ],
                std::fs::File::create(dir.join("zebra.log"))?,
            )?;
            (
                "/usr/lib/frr/bgpd",
                vec![
                    "-z".into(),
                    zserv,
                    "-S".into(),
                    "-f".into(),
                    path.display().to_string(),
                    "-i".into(),
                    dir.join("bgpd.pid").display().to_string(),
                    "--vty_socket".into(),
                    vty.display().to_string(),
                    "-l".into(),
                    "0.0.0.0".into(),
                ],
            )
        }
        TorKind::Gobgp => {
            let mut config = format!(
                "[global.config]\n  as = {TOR_AS}\n  router-id = \"{address}\"\n  port = 179\n  local-address-list = [\"0.0.0.0\"]\n"
            );
            for node in nodes {
                config.push_str(&format!(
                    "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {node_as}\n  \
                     [neighbors.transport.config]\n    local-address = \"{}\"\n  \
                     [neighbors.graceful-restart.config]\n    enabled = true\n  \
                     [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n",
                    node.address,
                    local(node)
                ));
            }
            let path = dir.join("gobgpd.toml");
            std::fs::write(&path, config)?;
            (
                "gobgpd",
                vec![
                    "-f".into(),
                    path.display().to_string(),
                    "--api-hosts".into(),
                    format!("127.0.0.1:{GOBGP_API}"),
                    "--pprof-disable".into(),
                    "-p".into(),
                ],
            )
        }
    };
    spawn(underlay, program, &args, log)?;
    if kind == TorKind::Gobgp {
        // gobgpd takes routes to announce through its API once it answers.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let port = GOBGP_API.to_string();
            let added = named::exec(
                underlay,
                "gobgp",
                &[
                    "-u",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "global",
                    "rib",
                    "add",
                    TOR_PREFIX,
                    "origin",
                    "igp",
                    "-a",
                    "ipv4",
                ],
            );
            if added.is_ok() {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "gobgpd did not take {TOR_PREFIX} (log: {})",
                    dir.join("tor.log").display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Starts one of the rack's daemons in `underlay`, its output to `log`, in a process group of
/// its own (`lab down` kills what runs in the namespace).
fn spawn(underlay: &str, program: &str, args: &[String], log: std::fs::File) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    named::command(underlay, std::ffi::OsStr::new(program))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {program} as the top-of-rack router"))?;
    Ok(())
}

/// The rack router's RIB, as its own command line prints it.
pub fn routes(kind: TorKind, underlay: &str, dir: &Path) -> anyhow::Result<String> {
    let output = match kind {
        TorKind::Bird => {
            let socket = dir.join("bird.ctl").display().to_string();
            named::exec(underlay, "birdc", &["-s", &socket, "show", "route", "all"])
        }
        TorKind::Frr => {
            let vty = dir.join("vty").display().to_string();
            named::exec(
                underlay,
                "vtysh",
                &["--vty_socket", &vty, "-c", "show ip bgp"],
            )
        }
        TorKind::Gobgp => {
            let port = GOBGP_API.to_string();
            named::exec(
                underlay,
                "gobgp",
                &[
                    "-u",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "global",
                    "rib",
                    "-a",
                    "ipv4",
                ],
            )
        }
    }
    .map_err(anyhow::Error::msg)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
