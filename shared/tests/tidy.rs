//! Tidy: the layering rule of STYLE §1, checked on every `cargo test`. Core modules (the
//! sans-IO brains of shared, bgpd, felix, ipam and ipip) must not mention sockets, files,
//! processes, clocks, sleeps or async runtimes; edges (the files listed below, and any
//! `io/`, `apply/` or `bin/` folder) may.

use std::path::{Path, PathBuf};

/// Crates whose non-edge code is core.
const CORE_CRATES: &[&str] = &["shared", "bgpd", "felix", "ipam", "ipip"];

/// Edge files, relative to the workspace.
const EDGE_FILES: &[&str] = &[
    "shared/src/client.rs",
    "shared/src/datastore/cni_credentials.rs",
    "shared/src/datastore/etcd.rs",
    "shared/src/datastore/kubernetes.rs",
    "shared/src/datastore/runtime.rs",
    "shared/src/datastore/sqlite.rs",
    "shared/src/syncer/driver.rs",
    "ipam/src/runtime.rs",
    "ipam/src/gc.rs",
];

/// Edge folders, anywhere under a crate's `src/`; binaries' `main.rs` are edges too.
const EDGE_FOLDERS: &[&str] = &["/io/", "/apply/", "/bin/"];

/// What core code may not use.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "rusqlite",
    "etcd_client",
    "std::net::Tcp",
    "std::net::Udp",
    "TcpStream",
    "UdpSocket",
    "std::fs",
    "std::process",
    "Instant::now",
    "SystemTime::now",
    "thread::sleep",
    "std::thread",
    "std::env::var",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("in a workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("readable directory").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of `source` outside tests and comments that use a forbidden name.
fn violations(source: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    let lines: Vec<&str> = source.lines().collect();
    for (number, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        // An inline test module (`#[cfg(test)]` then `mod tests {`) ends a file's core code;
        // a declaration (`mod tests;`) does not: its file is skipped as a whole.
        let next = lines.get(number + 1).map_or("", |l| l.trim_start());
        if trimmed.starts_with("#[cfg(test)]") && next.starts_with("mod ") && next.ends_with('{') {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        for name in FORBIDDEN {
            if code.contains(name) {
                found.push((number + 1, *name));
            }
        }
    }
    found
}

#[test]
fn the_scanner_catches_io_in_core_code() {
    assert_eq!(violations("use tokio::net;\n"), vec![(1, "tokio")]);
    assert_eq!(
        violations("let now = std::time::Instant::now();"),
        vec![(1, "Instant::now")]
    );
    assert!(violations("// tokio is mentioned in a comment\nlet x = 1; // std::fs too").is_empty());
    assert!(violations("#[cfg(test)]\nmod tests {\n use std::fs; }").is_empty());
    // A test module declared at the top does not hide the code below it.
    assert_eq!(
        violations("#[cfg(test)]\nmod tests;\nuse tokio::net;\n"),
        vec![(3, "tokio")]
    );
}

#[test]
fn core_modules_do_no_io() {
    let root = workspace();
    let mut problems = Vec::new();
    let mut scanned = 0;
    for krate in CORE_CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for file in files {
            let relative = file
                .strip_prefix(&root)
                .expect("under the workspace")
                .to_string_lossy()
                .replace('\\', "/");
            // Test code (tests.rs files, tests/ folders) may read the clock, e.g. for an epoch.
            let test_code = relative.ends_with("/tests.rs") || relative.contains("/tests/");
            if test_code
                || relative.ends_with("/main.rs")
                || EDGE_FILES.contains(&relative.as_str())
                || EDGE_FOLDERS.iter().any(|f| relative.contains(f))
            {
                continue;
            }
            scanned += 1;
            let source = std::fs::read_to_string(&file).expect("readable source");
            for (line, name) in violations(&source) {
                problems.push(format!("{relative}:{line}: core code uses `{name}`"));
            }
        }
    }
    assert!(
        scanned >= 10,
        "the tidy check found only {scanned} core files; is the layout right?"
    );
    assert!(
        problems.is_empty(),
        "I/O in core modules (move it to an edge):\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_edge_file_listed_exists() {
    for file in EDGE_FILES {
        assert!(
            workspace().join(file).is_file(),
            "{file} is listed as an edge but does not exist"
        );
    }
}
