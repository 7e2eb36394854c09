//! Container images without a registry or a container engine: a root filesystem assembled
//! from this machine's files (Twill's binaries, stripped; Debian packages' files as `dpkg -L`
//! lists them; the shared libraries every ELF file needs, as `ldd` resolves them), written as
//! one archive that is both an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`)
//! and a `docker save` archive (`manifest.json`), so `ctr images import` and `docker load`
//! both take it.
//!
//! Reproducible: entries in byte order, every mtime [`EPOCH`] (or `SOURCE_DATE_EPOCH`), owner
//! 0:0, no user names, one uncompressed layer; the same inputs give the same digests.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The timestamp of every entry and of the image's `created` field, unless
/// `SOURCE_DATE_EPOCH` says otherwise.
pub const EPOCH: u64 = 1_700_000_000;

/// Paths of Debian packages that a container never reads.
const SKIPPED: &[&str] = &[
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/locale/",
    "usr/share/lintian/",
    "usr/share/bash-completion/",
    "usr/share/zsh/",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { source: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// One image being assembled.
#[derive(Debug, Clone)]
pub struct Image {
    /// `twill/node`, `nginx` …
    pub name: String,
    /// `v0.1.0`, `alpine` …
    pub tag: String,
    entries: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
    strip_dir: PathBuf,
}

/// What [`Image::write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The archive.
    pub path: PathBuf,
    /// Its reference as the container runtime names it: `docker.io/twill/node:v0.1.0`.
    pub reference: String,
    /// The manifest's digest (`sha256:…`).
    pub digest: String,
    /// The archive's size in bytes (one uncompressed layer: the unpacked size, near enough).
    pub size: u64,
    /// The layer's size after gzip -6, as a registry would store it.
    pub compressed: Option<u64>,
}

impl Image {
    /// An empty image; stripped copies of binaries are kept in `strip_dir`.
    pub fn new(name: &str, tag: &str, strip_dir: &Path) -> Image {
        let mut image = Image {
            name: name.into(),
            tag: tag.into(),
            entries: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            workdir: None,
            strip_dir: strip_dir.to_path_buf(),
        };
        // Debian's merged /usr: /bin, /sbin, /lib, /lib64 are links into /usr on the host, and
        // the files below are stored under /usr, so the image has the same links.
        for top in ["bin", "sbin", "lib", "lib64"] {
            if let Ok(target) = std::fs::read_link(Path::new("/").join(top)) {
                image.entries.insert(
                    top.into(),
                    Entry::Symlink(target.to_string_lossy().into_owned()),
                );
            }
        }
        for dir in [
            "tmp", "etc", "run", "var/run", "var/lib", "proc", "sys", "dev",
        ] {
            image.dir(dir);
        }
        image
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str) -> &mut Image {
        let path = path.trim_matches('/');
        let mut sofar = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !sofar.is_empty() {
                sofar.push('/');
            }
            sofar.push_str(part);
            self.entries.entry(sofar.clone()).or_insert(Entry::Dir);
        }
        self
    }

    fn parent_dirs(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// A file's content, written at `dest`.
    pub fn bytes(&mut self, dest: &str, data: &[u8], mode: u32) -> &mut Image {
        let dest = dest.trim_start_matches('/').to_string();
        self.parent_dirs(&dest);
        self.entries.insert(
            dest,
            Entry::Bytes {
                data: data.to_vec(),
                mode,
            },
        );
        self
    }

    /// A symbolic link at `path` to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Image {
        let path = path.trim_start_matches('/').to_string();
        self.parent_dirs(&path);
        self.entries.insert(path, Entry::Symlink(target.into()));
        self
    }

    /// The host's file at the same path (a link stays a link, and its target comes too),
    /// under the host's real directory (so `/lib/x/libc.so.6` is stored as
    /// `/usr/lib/x/libc.so.6` behind the image's `/lib` link).
    pub fn host_file(&mut self, path: &Path) -> anyhow::Result<&mut Image> {
        let mut path = path.to_path_buf();
        for _ in 0..16 {
            let parent = path.parent().context("a file has a directory")?;
            let parent = std::fs::canonicalize(parent)
                .with_context(|| format!("cannot resolve {}", parent.display()))?;
            let real = parent.join(path.file_name().context("a file name")?);
            let key = real.to_string_lossy().trim_start_matches('/').to_string();
            let meta = std::fs::symlink_metadata(&real)
                .with_context(|| format!("cannot read {}", real.display()))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&real)?;
                self.parent_dirs(&key);
                self.entries
                    .insert(key, Entry::Symlink(target.to_string_lossy().into_owned()));
                path = parent.join(target);
                // A package's dangling link (to a directory another package would fill)
                // stays dangling, as on the host.
                if std::fs::metadata(&path).is_err() {
                    return Ok(self);
                }
                continue;
            }
            if meta.is_dir() {
                self.dir(&key);
                return Ok(self);
            }
            self.parent_dirs(&key);
            self.entries.insert(
                key,
                Entry::File {
                    source: real,
                    mode: meta.permissions().mode() & 0o7777,
                },
            );
            return Ok(self);
        }
        bail!("{}: too many links", path.display())
    }

    /// A program of this machine at `dest`, without its debug information, with the shared
    /// libraries it needs.
    pub fn binary(&mut self, source: &Path, dest: &str) -> anyhow::Result<&mut Image> {
        use std::os::unix::fs::MetadataExt;
        std::fs::create_dir_all(&self.strip_dir)?;
        let name = source
            .file_name()
            .context("a binary has a name")?
            .to_string_lossy();
        // One copy per source file and version of it (path, size, mtime, inode), so a debug
        // and a release binary of one name never stand in for each other.
        let meta = std::fs::metadata(source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        let key = format!(
            "{}{}{}{}",
            source.display(),
            meta.size(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            meta.ino()
        );
        let stripped = self
            .strip_dir
            .join(format!("{name}.{}", &sha256(key.as_bytes())[..16]));
        if !stripped.exists() {
            let partial = stripped.with_extension(format!("partial{}", std::process::id()));
            let status = Command::new("strip")
                .arg("--strip-all")
                .arg("-o")
                .arg(&partial)
                .arg(source)
                .status()
                .context("cannot run strip (binutils)")?;
            if !status.success() {
                bail!("strip {} failed", source.display());
            }
            std::fs::rename(&partial, &stripped)?;
        }
        let dest = dest.trim_start_matches('/').to_string();
        self.parent_dirs(&dest);
        self.entries.insert(
            dest,
            Entry::File {
                source: stripped.clone(),
                mode: 0o755,
            },
        );
        self.libraries_of(&stripped)?;
        Ok(self)
    }

    /// Every file of the named Debian packages (as installed here), without documentation,
    /// and the libraries their programs and modules need.
    pub fn debian_packages(&mut self, packages: &[&str]) -> anyhow::Result<&mut Image> {
        for package in packages {
            let output = Command::new("dpkg")
                .args(["-L", package])
                .output()
                .context("cannot run dpkg")?;
            if !output.status.success() {
                bail!(
                    "Debian package {package} is not installed (apt-get install {package}): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let path = Path::new(line.trim());
                let relative = line.trim().trim_start_matches('/');
                if relative.is_empty()
                    || SKIPPED.iter().any(|s| relative.starts_with(s))
                    || !path.exists() && std::fs::symlink_metadata(path).is_err()
                {
                    continue;
                }
                let meta = std::fs::symlink_metadata(path)?;
                if meta.is_dir() {
                    continue;
                }
                self.host_file(path)?;
                if meta.is_file() && is_elf(path) {
                    self.libraries_of(path)?;
                }
            }
        }
        Ok(self)
    }

    /// The shared libraries (and the loader) `ldd` resolves for one ELF file.
    fn libraries_of(&mut self, elf: &Path) -> anyhow::Result<()> {
        let output = Command::new("ldd")
            .arg(elf)
            .output()
            .context("cannot run ldd")?;
        // Static programs: "not a dynamic executable", exit 1.
        let text = String::from_utf8_lossy(&output.stdout);
        for line in text.lines() {
            if line.contains("not found") {
                bail!("{}: a library is missing: {}", elf.display(), line.trim());
            }
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                self.host_file(Path::new(path))?;
            }
        }
        Ok(())
    }

    /// The command the container runs.
    pub fn entrypoint(&mut self, argv: &[&str]) -> &mut Image {
        self.entrypoint = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The default arguments.
    pub fn cmd(&mut self, argv: &[&str]) -> &mut Image {
        self.cmd = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The working directory.
    pub fn workdir(&mut self, dir: &str) -> &mut Image {
        self.dir(dir);
        self.workdir = Some(dir.to_string());
        self
    }

    /// The reference a container runtime gives the image.
    pub fn reference(&self) -> String {
        let name = if self.name.contains('/') {
            self.name.clone()
        } else {
            format!("library/{}", self.name)
        };
        if name
            .split('/')
            .next()
            .is_some_and(|host| host.contains('.'))
        {
            format!("{name}:{}", self.tag)
        } else {
            format!("docker.io/{name}:{}", self.tag)
        }
    }

    /// The layer: a tar of every entry.
    fn layer(&self, epoch: u64) -> anyhow::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(epoch);
            match entry {
                Entry::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(if path == "tmp" { 0o1777 } else { 0o755 });
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Entry::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)?;
                }
                Entry::File { source, mode } => {
                    let data = std::fs::read(source)
                        .with_context(|| format!("cannot read {}", source.display()))?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::Bytes { data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
            }
        }
        Ok(builder.into_inner()?)
    }

    /// Writes the archive as `dir/<name with '/' as '-'>.tar`; with `measure`, also the
    /// layer's compressed size (a gzip run: seconds for a large image).
    pub fn write(&self, dir: &Path, measure: bool) -> anyhow::Result<Written> {
        let epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(EPOCH);
        let layer = self.layer(epoch)?;
        let layer_digest = sha256(&layer);
        let created = twill_shared::client::rfc3339(epoch);
        let mut config = json!({"Env": self.env});
        if !self.entrypoint.is_empty() {
            config["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["Cmd"] = json!(self.cmd);
        }
        if let Some(dir) = &self.workdir {
            config["WorkingDir"] = json!(dir);
        }
        let config = serde_json::to_vec(&json!({
            "architecture": match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            },
            "os": "linux",
            "created": created,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
            "history": [{"created": created, "created_by": "twill image writer (lab/src/image.rs)"}],
        }))?;
        let config_digest = sha256(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": format!("sha256:{config_digest}"), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
        }))?;
        let manifest_digest = sha256(&manifest);
        let reference = self.reference();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
                "annotations": {"io.containerd.image.name": reference,
                                "org.opencontainers.image.ref.name": self.tag}}],
        }))?;
        let docker = serde_json::to_vec(&json!([{
            "Config": format!("blobs/sha256/{config_digest}"),
            "RepoTags": [format!("{}:{}", self.name, self.tag)],
            "Layers": [format!("blobs/sha256/{layer_digest}")],
        }]))?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.tar", self.name.replace('/', "-")));
        let partial = path.with_extension("tar.partial");
        {
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
            let mut put = |name: &str, data: &[u8]| -> anyhow::Result<()> {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(epoch);
                header.set_size(data.len() as u64);
                archive.append_data(&mut header, name, data)?;
                Ok(())
            };
            put(&format!("blobs/sha256/{config_digest}"), &config)?;
            put(&format!("blobs/sha256/{layer_digest}"), &layer)?;
            put(&format!("blobs/sha256/{manifest_digest}"), &manifest)?;
            put("index.json", &index)?;
            put("manifest.json", &docker)?;
            put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            archive.into_inner()?.flush()?;
        }
        std::fs::rename(&partial, &path)?;
        Ok(Written {
            size: std::fs::metadata(&path)?.len(),
            path,
            reference,
            digest: format!("sha256:{manifest_digest}"),
            compressed: if measure { gzip_size(&layer) } else { None },
        })
    }
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The layer's size compressed as a registry stores it (`gzip -6`), if gzip is here.
fn gzip_size(layer: &[u8]) -> Option<u64> {
    use std::process::Stdio;
    let mut child = Command::new("gzip")
        .args(["-6", "-c", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let data = layer.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let mut count = 0u64;
    let mut stdout = child.stdout.take()?;
    let mut buffer = [0u8; 65536];
    loop {
        match std::io::Read::read(&mut stdout, &mut buffer) {
            Ok(0) => break,
            Ok(n) => count += n as u64,
            Err(_) => return None,
        }
    }
    writer.join().ok()?.ok()?;
    child.wait().ok()?.success().then_some(count)
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Where stripped copies of the binaries of `dir` (a target profile's directory) are kept:
/// beside them, owned by whoever builds them.
pub fn strip_cache(dir: &Path) -> PathBuf {
    dir.join(".stripped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_what_containerd_names_them() {
        let dir = std::env::temp_dir();
        assert_eq!(
            Image::new("twill/node", "v0.1.0", &dir).reference(),
            "docker.io/twill/node:v0.1.0"
        );
        assert_eq!(
            Image::new("nginx", "alpine", &dir).reference(),
            "docker.io/library/nginx:alpine"
        );
        assert_eq!(
            Image::new("registry.k8s.io/pause", "3.10", &dir).reference(),
            "registry.k8s.io/pause:3.10"
        );
    }
}
