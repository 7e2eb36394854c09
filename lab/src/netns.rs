//! Network namespaces made by a test, each removed when its guard drops (even on panic),
//! and processes started inside them, killed when their guard drops. Names are unique per
//! process and call; nothing touches the root namespace.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by the test.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tw-<tag>-<pid>-<n>` with its loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "tw-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace; panics if it fails.
    pub fn ip(&self, args: &[&str]) -> Output {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"))
    }

    /// Starts a long-running process inside the namespace, killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str], log: &std::path::Path) -> Daemon {
        let file = std::fs::File::create(log).expect("a log file");
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
        Daemon {
            child: Some(child),
            name: program.to_string(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Connects two namespaces with a veth pair and gives each end an address (`198.18.x.y/24`).
/// Returns the interface names (in `a`, in `b`).
pub fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (a_if, b_if) = (format!("twa{n}"), format!("twb{n}"));
    a.ip(&[
        "link",
        "add",
        &a_if,
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "netns",
        b.name(),
    ]);
    a.ip(&["addr", "add", a_addr, "dev", &a_if]);
    b.ip(&["addr", "add", b_addr, "dev", &b_if]);
    a.ip(&["link", "set", &a_if, "up"]);
    b.ip(&["link", "set", &b_if, "up"]);
    (a_if, b_if)
}

/// A process inside a namespace; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    name: String,
}

impl Daemon {
    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its exit status, once it has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// The program's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` runs the program as its own process (exec), so this is the daemon.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_checked(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Named namespaces the lab keeps between commands (not removed on drop): `ip netns` under
/// the hood, every failure returned with the command's own message.
pub mod named {
    use std::process::{Command, Output};

    fn run(command: &mut Command) -> Result<Output, String> {
        let output = command
            .output()
            .map_err(|err| format!("cannot run {command:?}: {err}"))?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(format!(
                "{command:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Creates a namespace with its loopback up.
    pub fn add(name: &str) -> Result<(), String> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        ip(name, &["link", "set", "lo", "up"]).map(|_| ())
    }

    /// Deletes a namespace (a missing one is not an error).
    pub fn delete(name: &str) -> Result<(), String> {
        if !exists(name) {
            return Ok(());
        }
        run(Command::new("ip").args(["netns", "delete", name])).map(|_| ())
    }

    /// Whether the namespace exists.
    pub fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    /// The namespaces whose names start with `prefix`.
    pub fn list(prefix: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    /// The processes running inside the namespace.
    pub fn pids(name: &str) -> Vec<i32> {
        let Ok(output) = run(Command::new("ip").args(["netns", "pids", name])) else {
            return Vec::new();
        };
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kills (SIGKILL) every process inside the namespace and waits until they are gone.
    pub fn kill_all(name: &str) {
        for _ in 0..50 {
            let pids = pids(name);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(name: &str, args: &[&str]) -> Result<Output, String> {
        run(Command::new("ip").arg("-n").arg(name).args(args))
    }

    /// Runs a program inside the namespace and returns its output.
    pub fn exec(name: &str, program: &str, args: &[&str]) -> Result<Output, String> {
        run(Command::new("ip")
            .args(["netns", "exec", name, program])
            .args(args))
    }

    /// A command that runs inside the namespace.
    pub fn command(name: &str, program: &std::ffi::OsStr) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", name]).arg(program);
        command
    }
}
