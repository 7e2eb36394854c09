//! The lab harness shared by the lab and policy test suites: `twillctl` runs, and a lab that
//! is taken down when the test ends, however it ends.

#![allow(dead_code)] // Each suite uses part of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A lab name unique to this test process and call; panics early, with the command to run,
/// when the plugin the lab needs is not built.
pub fn lab_name(prefix: &str) -> String {
    let plugin = Path::new(env!("CARGO_BIN_EXE_twillctl")).with_file_name("twill");
    assert!(
        plugin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        plugin.display()
    );
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs twillctl with no `TWILL_DATASTORE` in its environment.
pub fn twillctl(args: &[&str], stdin: Option<&str>) -> Run {
    twillctl_on(None, args, stdin)
}

/// Runs twillctl with `TWILL_DATASTORE` set to `datastore` (or unset).
pub fn twillctl_on(datastore: Option<&str>, args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_twillctl"));
    match datastore {
        Some(url) => command.env("TWILL_DATASTORE", url),
        None => command.env_remove("TWILL_DATASTORE"),
    };
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("twillctl runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A lab that is taken down when the test ends, however it ends.
pub struct LabGuard {
    pub name: String,
}

impl LabGuard {
    pub fn up(topology: &str) -> LabGuard {
        LabGuard::up_with(topology, &[])
    }

    pub fn up_with(topology: &str, extra: &[&str]) -> LabGuard {
        let guard = LabGuard {
            name: lab_name("t"),
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), topology).unwrap();
        let mut args = vec!["up", "--topology", file.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        guard.ok(&args);
        guard
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut full = vec!["lab", "--name", &self.name];
        full.extend_from_slice(args);
        twillctl(&full, stdin)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args, None);
        assert_eq!(
            run.code, 0,
            "twillctl lab {args:?} failed:\n{}\n{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "-o", "json"])).unwrap()
    }

    /// `NS/POD`'s entry in `lab status -o json`.
    pub fn pod(&self, pod: &str) -> Value {
        let status = self.status();
        let (namespace, name) = pod.split_once('/').unwrap();
        status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["namespace"] == namespace && p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {pod} in {status}"))
    }

    pub fn ip(&self, pod: &str) -> String {
        self.pod(pod)["ip"]
            .as_str()
            .unwrap_or_else(|| panic!("{pod} has no address"))
            .to_string()
    }

    /// (from, to, port, protocol) → connected.
    pub fn probe(&self, ports: &[&str]) -> BTreeMap<(String, String, u64, String), bool> {
        self.probe_with(ports, &[])
    }

    /// As [`LabGuard::probe`], with more `lab probe` arguments (`--ipv6`).
    pub fn probe_with(
        &self,
        ports: &[&str],
        extra: &[&str],
    ) -> BTreeMap<(String, String, u64, String), bool> {
        let mut args = vec!["probe", "-o", "json"];
        args.extend_from_slice(extra);
        for port in ports {
            args.extend(["--port", port]);
        }
        let value: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        value["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let key = (
                    r["from"].as_str().unwrap().to_string(),
                    r["to"].as_str().unwrap().to_string(),
                    r["port"].as_u64().unwrap(),
                    r["protocol"].as_str().unwrap().to_string(),
                );
                (key, r["connected"].as_bool().unwrap())
            })
            .collect()
    }

    pub fn node_netns(&self) -> String {
        format!("twl-{}.node-1", self.name)
    }

    /// node-1's status file.
    pub fn status_file(&self) -> Value {
        let text =
            std::fs::read(format!("/run/twill/lab/{}/node-1/status.json", self.name)).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    pub fn datastore(&self) -> String {
        self.status()["datastore"].as_str().unwrap().to_string()
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let run = self.run(&["down"], None);
        if run.code != 0 {
            eprintln!("lab down failed: {}", run.stderr);
        }
    }
}

pub fn leftovers(name: &str) -> Vec<String> {
    let prefix = format!("twl-{name}.");
    let mut found: Vec<String> = ["/run/netns", "/etc/netns"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if Path::new("/run/twill/lab").join(name).exists() {
        found.push(format!("/run/twill/lab/{name}"));
    }
    // The Kubernetes lab's: node disks, node cgroups, processes naming the lab's paths.
    let disk = Path::new("/var/lib/twill-lab").join(name);
    if disk.exists() {
        found.push(disk.display().to_string());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let hierarchies = mounts.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 2 && (fields[2] == "cgroup" || fields[2] == "cgroup2"))
            .then(|| std::path::PathBuf::from(fields[1]))
    });
    for dir in hierarchies {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let cgroup = entry.file_name().to_string_lossy().into_owned();
            if cgroup.starts_with(&format!("twl-{name}.")) {
                found.push(format!("cgroup {}", entry.path().display()));
            }
        }
    }
    let markers = [
        format!("/run/twill/lab/{name}/"),
        format!("/var/lib/twill-lab/{name}/"),
    ];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if markers.iter().any(|m| text.contains(m.as_str())) {
            found.push(format!(
                "process {}: {text}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// kubectl with `kubeconfig` (a Kubernetes lab's), `stdin` on its input: its output, or why
/// it failed.
pub fn kubectl(kubeconfig: &str, args: &[&str], stdin: &str) -> Result<String, String> {
    twill_lab::kube::kubectl(kubeconfig, args, Some(stdin)).map_err(|err| format!("{err:#}"))
}
