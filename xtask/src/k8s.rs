//! `cargo xtask k8s-build`: real Kubernetes binaries (the control plane, kubelet, kube-proxy
//! and kubectl) built from the Go module proxy, for the tests and the lab that run them.
//!
//! `k8s.io/kubernetes` points its `k8s.io/*` staging modules at `./staging`, which its module
//! zip does not hold, so `go install k8s.io/kubernetes/cmd/...@v` cannot work. A scratch module
//! that requires it and pins each staging module to its published `v0.<minor>.<patch>` twin
//! builds the commands. Modules and build cache stay in the cache directory, so a second run
//! takes seconds; the binaries land in `<cache>/bin`.
//!
//! Environment: `TWILL_K8S_VERSION` (default v1.34.4), `TWILL_K8S_CACHE` (default
//! /var/tmp/twill-k8s), `TWILL_K8S_CMDS` (default: every command the Kubernetes lab runs),
//! `TWILL_COREDNS_VERSION` (default v1.12.1: CoreDNS, the lab's cluster DNS).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The Kubernetes release built by default.
pub const DEFAULT_VERSION: &str = "v1.34.4";
/// Where modules, build cache and binaries are kept by default.
pub const DEFAULT_CACHE: &str = "/var/tmp/twill-k8s";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Builds the binaries; returns the directory that holds them.
pub fn build() -> anyhow::Result<PathBuf> {
    let version = env_or("TWILL_K8S_VERSION", DEFAULT_VERSION);
    let cache = PathBuf::from(env_or("TWILL_K8S_CACHE", DEFAULT_CACHE));
    let commands = env_or(
        "TWILL_K8S_CMDS",
        "kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl",
    );
    let bin = cache.join("bin");
    let module = cache.join(format!("module-{version}"));
    std::fs::create_dir_all(&module)?;
    std::fs::create_dir_all(&bin)?;
    let go = |dir: &Path, args: &[&str]| -> anyhow::Result<String> {
        let output = Command::new("go")
            .current_dir(dir)
            .args(args)
            .env("GOMODCACHE", cache.join("gomodcache"))
            .env("GOCACHE", cache.join("gocache"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .output()
            .context("cannot run go (a Go toolchain is needed to build Kubernetes)")?;
        if !output.status.success() {
            bail!(
                "go {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let minor = version.trim_start_matches("v1.");
    let staging = format!("v0.{minor}");
    let go_mod = module.join("go.mod");
    if !go_mod.exists() {
        let download = go(
            &module,
            &[
                "mod",
                "download",
                "-json",
                &format!("k8s.io/kubernetes@{version}"),
            ],
        )?;
        let info: serde_json::Value =
            serde_json::from_str(&download).context("go mod download printed no JSON")?;
        let upstream = std::fs::read_to_string(
            Path::new(info["Dir"].as_str().context("no module directory")?).join("go.mod"),
        )?;
        std::fs::write(&go_mod, scratch_module(&upstream, &version, &staging)?)?;
        std::fs::write(module.join("doc.go"), "package k8sbuild\n")?;
    }
    let mut flags = String::from("-s -w");
    for package in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        let major_minor = minor.split('.').next().unwrap_or("0");
        flags.push_str(&format!(
            " -X {package}.gitVersion={version} -X {package}.gitMajor=1 -X {package}.gitMinor={major_minor} -X {package}.gitTreeState=clean"
        ));
    }
    let mut args = vec![
        "build".to_string(),
        "-trimpath".into(),
        "-ldflags".into(),
        flags,
        "-o".into(),
        format!("{}/", bin.display()),
    ];
    args.extend(
        commands
            .split_whitespace()
            .map(|c| format!("k8s.io/kubernetes/cmd/{c}")),
    );
    let started = std::time::Instant::now();
    eprintln!("building {commands} {version} into {}", bin.display());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    go(&module, &args)?;
    eprintln!("built in {:.0} s", started.elapsed().as_secs_f64());
    // The cluster DNS of the Kubernetes lab: CoreDNS's own module builds with `go install`
    // (no staging replacements); once built it is kept.
    let coredns = env_or("TWILL_COREDNS_VERSION", COREDNS_VERSION);
    if !bin.join("coredns").exists() {
        eprintln!("building coredns {coredns} into {}", bin.display());
        let output = Command::new("go")
            .current_dir(&module)
            .args(["install", "-trimpath", "-ldflags=-s -w"])
            .arg(format!("github.com/coredns/coredns@{coredns}"))
            .env("GOMODCACHE", cache.join("gomodcache"))
            .env("GOCACHE", cache.join("gocache"))
            .env("GOBIN", &bin)
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .env_remove("GOFLAGS")
            .output()
            .context("cannot run go")?;
        if !output.status.success() {
            bail!(
                "go install coredns@{coredns}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(bin)
}

/// The CoreDNS release kubeadm installs with Kubernetes 1.34.
pub const COREDNS_VERSION: &str = "v1.12.1";

/// The scratch module's go.mod: the upstream `go` (and `godebug`) lines, a requirement of
/// k8s.io/kubernetes, and each `./staging` replacement turned into the published version.
fn scratch_module(upstream: &str, version: &str, staging: &str) -> anyhow::Result<String> {
    let line_starting = |prefix: &str| upstream.lines().find(|l| l.starts_with(prefix));
    let go_line = line_starting("go ").context("the upstream go.mod names no go version")?;
    let mut text = format!("module local.test/k8sbuild\n\n{go_line}\n");
    if let Some(godebug) = line_starting("godebug ") {
        text.push_str(godebug);
        text.push('\n');
    }
    text.push_str(&format!(
        "\nrequire k8s.io/kubernetes {version}\n\nreplace (\n"
    ));
    for line in upstream.lines() {
        let Some((module, target)) = line.trim().split_once(" => ") else {
            continue;
        };
        if module.starts_with("k8s.io/") && target.starts_with("./staging/") {
            text.push_str(&format!("\t{module} => {module} {staging}\n"));
        }
    }
    text.push_str(")\n");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_replacements_become_published_versions() {
        let upstream = "module k8s.io/kubernetes\n\ngo 1.24.0\n\ngodebug default=go1.24\n\nrequire (\n\tk8s.io/api v0.0.0\n)\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n)\n";
        let text = scratch_module(upstream, "v1.34.4", "v0.34.4").unwrap();
        assert!(text.contains("go 1.24.0\ngodebug default=go1.24\n"));
        assert!(text.contains("require k8s.io/kubernetes v1.34.4"));
        assert!(text.contains("\tk8s.io/api => k8s.io/api v0.34.4\n"));
        assert!(text.contains("\tk8s.io/client-go => k8s.io/client-go v0.34.4\n"));
    }
}
