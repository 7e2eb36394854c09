//! The underlay: the router namespace's subnets, the nodes' namespaces on them, the relays
//! that bring a loopback datastore into the nodes, the top-of-rack router's RIB.

use super::*;

impl Lab {
    /// The underlay namespace: a bridge per subnet, the router's address on each, forwarding.
    pub(super) fn make_underlay(
        &self,
        underlay: &str,
        subnets: usize,
        dual_stack: bool,
    ) -> anyhow::Result<()> {
        named::add(underlay).map_err(anyhow::Error::msg)?;
        // The underlay's router: every node's default gateway, the rack's router, and the
        // router between the subnets.
        for subnet in 0..subnets {
            let bridge = format!("br{subnet}");
            named::ip(underlay, &["link", "add", &bridge, "type", "bridge"])
                .map_err(anyhow::Error::msg)?;
            named::ip(underlay, &["link", "set", &bridge, "up"]).map_err(anyhow::Error::msg)?;
            named::ip(
                underlay,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", gateway(subnet)),
                    "dev",
                    &bridge,
                ],
            )
            .map_err(anyhow::Error::msg)?;
            if dual_stack {
                let address = format!("{}/64", gateway_v6(subnet));
                named::ip(
                    underlay,
                    &["addr", "add", &address, "dev", &bridge, "nodad"],
                )
                .map_err(anyhow::Error::msg)?;
            }
        }
        named::exec(underlay, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .map_err(anyhow::Error::msg)?;
        if dual_stack {
            named::exec(
                underlay,
                "sysctl",
                &["-qw", "net.ipv6.conf.all.forwarding=1"],
            )
            .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// A datastore on the machine's loopback (etcd://127.0.0.1:PORT) is out of the node
    /// namespaces' reach: a relay per node and endpoint listens on the same address inside
    /// the node's namespace and connects to it here. The machine's network is not changed.
    pub(super) fn start_relays(&self, state: &mut State) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let twill_shared::datastore::DatastoreUrl::Etcd { endpoints, .. } =
            twill_shared::datastore::DatastoreUrl::parse(&state.datastore)?
        else {
            return Ok(());
        };
        for endpoint in endpoints {
            let host_port = endpoint
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .replace("localhost", "127.0.0.1");
            let Ok(address) = host_port.parse::<std::net::SocketAddr>() else {
                continue;
            };
            if !address.ip().is_loopback() {
                continue;
            }
            for node in &state.nodes {
                let mut child = std::process::Command::new(&self.tools.twillctl)
                    .args([
                        "lab",
                        "relay",
                        "--netns",
                        &format!("/run/netns/{}", node.netns),
                    ])
                    .args([
                        "--listen",
                        &address.to_string(),
                        "--connect",
                        &address.to_string(),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .context("cannot start the datastore relay")?;
                state.relays.push(child.id());
                let mut line = String::new();
                let stdout = child.stdout.take().context("the relay's output")?;
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
                if line.trim() != "listening" {
                    bail!("the datastore relay for {} did not start", node.name);
                }
            }
        }
        Ok(())
    }

    /// The top-of-rack router's RIB, as its own command line prints it.
    pub fn tor_routes(&self) -> anyhow::Result<String> {
        let state = self.state()?;
        let Some(kind) = state.tor.as_deref() else {
            bail!(
                "lab {:?} has no top-of-rack router (lab up --tor bird|frr|gobgp)",
                self.name
            );
        };
        let kind: crate::tor::TorKind = kind.parse().map_err(anyhow::Error::msg)?;
        crate::tor::routes(
            kind,
            &format!("{}underlay", self.prefix()),
            &self.dir().join("tor"),
        )
    }

    pub(super) fn add_node(
        &self,
        underlay: &str,
        index: usize,
        subnet: usize,
        dual_stack: bool,
    ) -> anyhow::Result<NodeState> {
        let name = format!("node-{index}");
        let netns = format!("{}{name}", self.prefix());
        let address = format!("198.18.{subnet}.{}", 10 + index);
        let bridge = format!("br{subnet}");
        let port = format!("n{index}");
        let step = |result: Result<std::process::Output, String>| {
            result.map(|_| ()).map_err(anyhow::Error::msg)
        };
        step(named::add(&netns).map(|()| empty_output()))?;
        step(named::ip(
            &netns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", underlay,
            ],
        ))?;
        step(named::ip(
            underlay,
            &["link", "set", &port, "master", &bridge, "up"],
        ))?;
        step(named::ip(
            &netns,
            &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
        ))?;
        step(named::ip(&netns, &["link", "set", "eth0", "up"]))?;
        // A default route, as a real node has: proxy ARP answers for 169.254.1.1 only when
        // the node can route it out another interface.
        step(named::ip(
            &netns,
            &["route", "add", "default", "via", &gateway(subnet)],
        ))?;
        if dual_stack {
            let v6 = format!("{}/64", node_v6(&address));
            step(named::ip(
                &netns,
                &["addr", "add", &v6, "dev", "eth0", "nodad"],
            ))?;
            step(named::ip(
                &netns,
                &["-6", "route", "add", "default", "via", &gateway_v6(subnet)],
            ))?;
        }
        for setting in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            step(named::exec(&netns, "sysctl", &["-qw", setting]))?;
        }
        Ok(NodeState {
            name,
            netns,
            address,
        })
    }

    /// Kills this lab's datastore relays (found by their command line, so it also works
    /// without state).
    pub(super) fn stop_relays(&self) {
        let marker = format!("/run/netns/{}", self.prefix());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline);
            if text.contains("\0relay\0") && text.split('\0').any(|arg| arg.starts_with(&marker)) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The router's address on subnet `subnet` (`198.18.K.1`; subnet 0's is
/// [`UNDERLAY_GATEWAY`]).
pub fn gateway(subnet: usize) -> String {
    format!("198.18.{subnet}.1")
}

/// The router's IPv6 address on subnet `subnet` (dual-stack labs: `fd00:198:18:K::1`, a
/// unique local address inside the lab's namespaces).
pub fn gateway_v6(subnet: usize) -> String {
    format!("fd00:198:18:{subnet:x}::1")
}

/// A node's IPv6 underlay address, from its IPv4 one: `198.18.K.N` → `fd00:198:18:K::N`.
pub fn node_v6(address: &str) -> String {
    let parts: Vec<&str> = address.split('.').collect();
    format!(
        "fd00:198:18:{:x}::{}",
        subnet_of(address),
        parts.get(3).copied().unwrap_or("0")
    )
}

/// The subnet of a node's underlay address.
pub fn subnet_of(address: &str) -> usize {
    address
        .split('.')
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Calico's default AS number, which the lab's nodes use.
pub(super) fn twill_bgpd_default_as() -> u32 {
    64512
}

pub(super) fn empty_output() -> std::process::Output {
    std::process::Output {
        status: std::process::ExitStatus::default(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}
