//! The nodes' processes: twill-node started, stopped and killed, its status, its BGP sessions.

use super::*;

impl Lab {
    /// Starts twill-node in a node's namespace, detached, logging into the lab directory.
    pub(super) fn start_agent(&self, state: &State, node: &NodeState) -> anyhow::Result<()> {
        let logs = self.dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = std::fs::File::create(logs.join(format!("{}.twill-node.log", node.name)))?;
        let status = self.node_dir(&node.name).join("status.json");
        let mut command = named::command(&node.netns, self.tools.twill_node.as_os_str());
        command
            .args([
                "--datastore",
                &self.node_datastore(state),
                "--node-name",
                &node.name,
            ])
            .args([
                "--mode",
                if state.policy_only {
                    "policy-only"
                } else {
                    "full"
                },
            ])
            .args([
                "--health-listen",
                "127.0.0.1:9099",
                "--refresh-interval",
                "2",
            ])
            .arg("--status-file")
            .arg(&status)
            .arg("--run-dir")
            .arg(self.node_dir(&node.name))
            .arg("--mtu-file")
            .arg(self.node_dir(&node.name).join("mtu"))
            .arg("--secrets-dir")
            .arg(self.dir().join("secrets"))
            // A caller's TWILL_LOG (debug, to look into a lab) reaches the agents.
            .env(
                "TWILL_LOG",
                std::env::var("TWILL_LOG").unwrap_or_else(|_| "info".into()),
            );
        use std::os::unix::process::CommandExt;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start twill-node on {}", node.name))?;
        Ok(())
    }

    /// Stops (SIGTERM), kills (SIGKILL) or starts a node's twill-node, for fault tests.
    pub fn node_agent(&self, node: &str, action: AgentAction) -> anyhow::Result<()> {
        let state = self.state()?;
        let record = state
            .node(node)
            .with_context(|| format!("no node {node:?} in lab {:?}", self.name))?;
        if action == AgentAction::Start {
            if !self.agent_pids(record).is_empty() {
                bail!("twill-node already runs on {node}");
            }
            return self.start_agent(&state, record);
        }
        let signal = if action == AgentAction::Kill {
            "-KILL"
        } else {
            "-TERM"
        };
        let pids = self.agent_pids(record);
        if pids.is_empty() {
            bail!("twill-node does not run on {node}");
        }
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
        for _ in 0..250 {
            if self.agent_pids(record).is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("twill-node on {node} did not stop")
    }

    pub(super) fn agent_pids(&self, node: &NodeState) -> Vec<i32> {
        named::pids(&node.netns)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    cmdline
                        .split(|b| *b == 0)
                        .next()
                        .is_some_and(|argv0| argv0.ends_with(b"twill-node"))
                })
            })
            .collect()
    }

    /// The status twill-node of `node` last wrote.
    pub fn node_status(&self, node: &str) -> Option<serde_json::Value> {
        // The Kubernetes lab's twill-node writes where its DaemonSet says: /run/twill on the
        // node, the node's own directory.
        let text = std::fs::read(self.node_dir(node).join("status.json"))
            .or_else(|_| std::fs::read(self.node_disk(node).join("run-twill/node-status.json")))
            .ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// A node's BGP sessions, as `twillctl bgp peers -o json` prints them (empty when its
    /// speaker does not run).
    pub fn bgp_peers(&self, node: &str) -> Vec<serde_json::Value> {
        use std::io::{Read, Write};
        let mut socket = self.node_dir(node).join("bgpd.sock");
        if !socket.exists() {
            socket = self.node_disk(node).join("run-twill/bgpd.sock");
        }
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) else {
            return Vec::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream.write_all(b"peers\n").is_err() {
            return Vec::new();
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        serde_json::from_str(&answer).unwrap_or_default()
    }
}
