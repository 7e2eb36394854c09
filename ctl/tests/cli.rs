//! twillctl as a user runs it: the real binary against a real SQLite file or a real etcd.

#![allow(clippy::disallowed_methods)] // Tests run processes and read the clock.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use twill_interop_tests::etcd::Etcd;
use twill_shared::resource::document::parse_documents;

mod common;

use common::Run;

fn twillctl(datastore: &str, args: &[&str], stdin: Option<&str>) -> Run {
    common::twillctl_on(Some(datastore), args, stdin)
}

fn ok(datastore: &str, args: &[&str]) -> String {
    let run = twillctl(datastore, args, None);
    assert_eq!(run.code, 0, "twillctl {args:?} failed:\n{}", run.stderr);
    run.stdout
}

fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = Vec::new();
    for folder in ["seed-walkthrough", "calico-policies"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

struct Sqlite {
    _dir: tempfile::TempDir,
    url: String,
}

fn sqlite() -> Sqlite {
    let dir = tempfile::Builder::new()
        .prefix("twillctl-")
        .tempdir()
        .unwrap();
    let url = format!("sqlite:{}", dir.path().join("state/twill.db").display());
    Sqlite { _dir: dir, url }
}

/// Every seed document applies unchanged and `get -o yaml` gives it back.
fn seeds_round_trip(url: &str) {
    for file in examples() {
        let path = file.to_str().unwrap();
        let out = ok(url, &["apply", "-f", path]);
        assert!(out.starts_with("Successfully applied"), "{out}");
        let originals = parse_documents(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for original in originals {
            let kind = original.kind().plural();
            let namespace = original.namespace().unwrap_or("default").to_string();
            let yaml = ok(
                url,
                &["get", kind, original.name(), "-n", &namespace, "-o", "yaml"],
            );
            let back = parse_documents(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
            assert_eq!(back.len(), 1);
            let meta = back[0].meta();
            assert!(
                meta.resource_version.is_some()
                    && meta.uid.is_some()
                    && meta.creation_timestamp.is_some()
            );
            assert_eq!(
                back[0].without_server_fields(),
                original,
                "{}: get -o yaml differs",
                file.display()
            );
        }
    }
    // A listing applies back, changing nothing.
    let listing = ok(url, &["get", "knp", "-A", "-o", "yaml"]);
    let again = twillctl(url, &["apply", "-f", "-"], Some(&listing));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("(9 unchanged)"), "{}", again.stdout);
    let table = ok(url, &["get", "knp", "-A"]);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(
        table.contains("default      deny-all-ingress-to-backend   app == 'backend'     Ingress"),
        "{table}"
    );
    let pods = ok(url, &["get", "pods"]);
    assert_eq!(
        pods,
        "NAME       LABELS\nbackend    app=backend\nfrontend   app=frontend\n"
    );
}

#[test]
fn seeds_apply_unchanged_and_come_back_from_sqlite() {
    let store = sqlite();
    seeds_round_trip(&store.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_apply_unchanged_and_come_back_from_etcd() {
    let etcd = Etcd::start().await;
    let url = etcd.url();
    tokio::task::spawn_blocking(move || seeds_round_trip(&url))
        .await
        .unwrap();
}

const GOOD_SET: &str =
    "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: good\nspec:\n  nets: [198.18.0.0/24]\n";

fn policy(spec: &str) -> String {
    format!("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: default\nspec:\n{spec}")
}

/// Applying `document` fails with exit 1, the message holds `expected`, and nothing changed.
fn refused(url: &str, document: &str, expected: &str) {
    let before = ok(url, &["get", "globalnetworksets", "-o", "json"]);
    let run = twillctl(url, &["apply", "-f", "-"], Some(document));
    assert_eq!(
        run.code, 1,
        "should fail:\n{document}\nstdout: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains(expected),
        "expected {expected:?} in:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was applied"), "{}", run.stderr);
    assert_eq!(
        ok(url, &["get", "globalnetworksets", "-o", "json"]),
        before,
        "nothing may change"
    );
}

#[test]
fn bad_documents_are_refused_with_document_path_and_reason() {
    let store = sqlite();
    let url = store.url.as_str();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{GOOD_SET}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n labels: {{}}\n"),
            "document 2, line 12 column 2: invalid YAML: did not find expected key",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: Widget\nmetadata:\n  name: w\n".into(),
            "document 1 (Widget w): unknown kind \"Widget\"",
        ),
        (
            "apiVersion: example.com/v1\nkind: NetworkPolicy\nmetadata:\n  name: w\n".into(),
            "kind NetworkPolicy is not served at apiVersion \"example.com/v1\"",
        ),
        (policy("  selectr: all()\n"), "spec.selectr: unknown field `selectr`"),
        (
            policy("  selector: app = 'x'\n"),
            "spec.selector: \"app = 'x'\" is not a valid selector: at column 5: expected",
        ),
        (
            policy("  ingress:\n  - action: Allow\n    source:\n      nets: [10.0.0.0/33]\n"),
            "spec.ingress[0].source.nets[0]: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            policy("  ingress:\n  - action: Allow\n    protocol: TCP\n    destination:\n      ports: [70000]\n"),
            "spec.ingress[0].destination.ports[0]: 70000 is not a valid port",
        ),
        (policy("  ingress:\n  - action: Allow\n    protocol: TCPX\n"), "spec.ingress[0].protocol: \"TCPX\" is not a valid protocol"),
        (
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pool\nspec:\n  cidr: 10.0.0.0/16\n  blockSize: 18\n".into(),
            "document 1 (IPPool pool): spec.blockSize: 18 is outside 20-32",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: 4294967296\n".into(),
            "spec.asNumber: 4294967296 is not a valid AS number",
        ),
        (
            format!("{GOOD_SET}---\n{GOOD_SET}"),
            "document 2 (GlobalNetworkSet good): metadata.name: document 1 already defines GlobalNetworkSet good",
        ),
        (
            format!("{GOOD_SET}---\n{}", GOOD_SET.replace("good", "bad").replace("/24", "/99")),
            "document 2 (GlobalNetworkSet bad): spec.nets[0]",
        ),
    ];
    for (document, expected) in &cases {
        refused(url, document, expected);
    }
    // The good document alone applies.
    assert_eq!(twillctl(url, &["apply", "-f", "-"], Some(GOOD_SET)).code, 0);
}

#[test]
fn exit_codes_and_messages() {
    let store = sqlite();
    let url = store.url.as_str();
    let missing = twillctl(url, &["get", "networkpolicy", "nope"], None);
    assert_eq!(
        (missing.code, missing.stderr.trim()),
        (1, "error: NetworkPolicy default/nope not found")
    );
    let missing = twillctl(url, &["get", "knp", "nope", "-n", "prod"], None);
    assert_eq!(
        missing.stderr.trim(),
        "error: NetworkPolicy.networking.k8s.io prod/nope not found"
    );
    let unknown = twillctl(url, &["get", "widgets"], None);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("unknown resource kind \"widgets\""),
        "{}",
        unknown.stderr
    );
    assert_eq!(
        twillctl(url, &["apply"], None).code,
        2,
        "missing -f is a usage error"
    );
    assert_eq!(twillctl(url, &["frobnicate"], None).code, 2);
    let no_file = twillctl(url, &["apply", "-f", "/nonexistent/twill.yaml"], None);
    assert_eq!(no_file.code, 1);
    assert!(
        no_file
            .stderr
            .contains("cannot read /nonexistent/twill.yaml"),
        "{}",
        no_file.stderr
    );
}

#[test]
fn create_replace_and_delete_follow_their_contracts() {
    let store = sqlite();
    let url = store.url.as_str();
    let created = twillctl(url, &["create", "-f", "-"], Some(GOOD_SET));
    assert_eq!(
        created.stdout,
        "Successfully created 1 'GlobalNetworkSet' resource(s)\n"
    );
    let again = twillctl(url, &["create", "-f", "-"], Some(GOOD_SET));
    assert_eq!(again.code, 1);
    assert!(
        again
            .stderr
            .contains("GlobalNetworkSet good already exists"),
        "{}",
        again.stderr
    );
    let absent = twillctl(
        url,
        &["replace", "-f", "-"],
        Some(&GOOD_SET.replace("good", "other")),
    );
    assert!(
        absent.code == 1 && absent.stderr.contains("GlobalNetworkSet other not found"),
        "{}",
        absent.stderr
    );
    // replace with the revision read works; with a stale one it is a conflict.
    let read = ok(url, &["get", "globalnetworkset", "good", "-o", "yaml"]);
    let changed = read.replace("198.18.0.0/24", "198.18.5.0/24");
    assert_eq!(
        twillctl(url, &["replace", "-f", "-"], Some(&changed)).code,
        0
    );
    let stale = twillctl(
        url,
        &["replace", "-f", "-"],
        Some(&changed.replace("198.18.5.0/24", "198.18.6.0/24")),
    );
    assert_eq!(stale.code, 1);
    assert!(
        stale.stderr.contains("was modified concurrently"),
        "{}",
        stale.stderr
    );
    assert!(ok(url, &["get", "globalnetworkset", "good", "-o", "yaml"]).contains("198.18.5.0/24"));
    // delete: by name; a missing object fails unless skipped; by file, all or nothing.
    let gone = twillctl(url, &["delete", "globalnetworkset", "nope"], None);
    assert!(gone.code == 1 && gone.stderr.contains("not found"));
    assert_eq!(
        twillctl(
            url,
            &["delete", "globalnetworkset", "nope", "--skip-not-exists"],
            None
        )
        .code,
        0
    );
    let both = format!("{GOOD_SET}---\n{}", GOOD_SET.replace("good", "absent"));
    assert_eq!(twillctl(url, &["delete", "-f", "-"], Some(&both)).code, 1);
    assert!(
        ok(url, &["get", "globalnetworksets"]).contains("good"),
        "nothing deleted"
    );
    assert_eq!(
        ok(url, &["delete", "globalnetworkset", "good"]),
        "Successfully deleted 1 'GlobalNetworkSet' resource(s)\n"
    );
    assert_eq!(ok(url, &["get", "globalnetworksets"]), "NAME\n");
}

#[test]
fn namespaces_scope_listings() {
    let store = sqlite();
    let url = store.url.as_str();
    let two = "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata:\n  name: a\n  namespace: prod\n---\napiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata:\n  name: a\n";
    assert_eq!(
        twillctl(url, &["apply", "-f", "-", "-n", "dev"], Some(two)).code,
        0
    );
    assert_eq!(ok(url, &["get", "networksets", "-n", "prod"]), "NAME\na\n");
    assert_eq!(
        ok(url, &["get", "networksets", "-A"]),
        "NAMESPACE   NAME\ndev         a\nprod        a\n"
    );
    assert_eq!(ok(url, &["get", "networksets"]), "NAME\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_named_within_five_seconds() {
    let port = twill_interop_tests::free_port();
    let url = format!("etcd://127.0.0.1:{port}");
    let started = Instant::now();
    let run = tokio::task::spawn_blocking({
        let url = url.clone();
        move || twillctl(&url, &["get", "ippools"], None)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(run.code, 1);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        run.stderr
            .contains(&format!("cannot reach the datastore at {url}")),
        "{}",
        run.stderr
    );
}

#[test]
fn unwritable_and_corrupt_sqlite_files_are_explained() {
    let dir = tempfile::Builder::new()
        .prefix("twillctl-bad-")
        .tempdir()
        .unwrap();
    // The parent "directory" is a file.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let url = format!("sqlite:{}", blocker.join("twill.db").display());
    let run = twillctl(&url, &["apply", "-f", "-"], Some(GOOD_SET));
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!(
            "cannot reach the datastore at {url}: cannot create directory"
        )),
        "{}",
        run.stderr
    );
    // The path is a directory.
    let url = format!("sqlite:{}", dir.path().display());
    let run = twillctl(&url, &["get", "ippools"], None);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot reach the datastore") && run.stderr.contains("unable to open"),
        "{}",
        run.stderr
    );
    // A file that is not a database.
    let corrupt = dir.path().join("corrupt.db");
    std::fs::write(&corrupt, vec![0x5a_u8; 8192]).unwrap();
    let url = format!("sqlite:{}", corrupt.display());
    let run = twillctl(&url, &["get", "ippools"], None);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains(&format!("the datastore at {url} is corrupt")),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read(&corrupt).unwrap(),
        vec![0x5a_u8; 8192],
        "the corrupt file is left as it was"
    );
}

#[test]
fn a_directory_applies_all_or_nothing() {
    let store = sqlite();
    let url = store.url.as_str();
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed-walkthrough");
    let dir = tempfile::Builder::new()
        .prefix("twillctl-dir-")
        .tempdir()
        .unwrap();
    for entry in std::fs::read_dir(&seeds).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let bad = dir.path().join("04-bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers: []\n  nodeNam: a\n",
    )
    .unwrap();
    let run = twillctl(url, &["apply", "-f", dir.path().to_str().unwrap()], None);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!(
            "{}:\ndocument 1 (Pod x): spec.nodeNam: unknown field",
            bad.display()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(
        ok(url, &["get", "pods"]),
        "NAME   LABELS\n",
        "nothing applied"
    );
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(
        ok(url, &["apply", "-f", dir.path().to_str().unwrap()]),
        "Successfully applied 4 resource(s)\n"
    );
    assert_eq!(ok(url, &["get", "knp"]).lines().count(), 3);
}

/// An order is printed as it was applied, as calicoctl prints it: `200`, not `200.0`; a
/// fractional order keeps its fraction.
#[test]
fn orders_come_back_as_applied() {
    let store = sqlite();
    let url = store.url.as_str();
    let documents = format!(
        "{}---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: g\nspec:\n  order: 100.5\n  selector: all()\n",
        policy("  order: 200\n  selector: all()\n")
    );
    let run = twillctl(url, &["apply", "-f", "-"], Some(&documents));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let yaml = ok(url, &["get", "networkpolicy", "p", "-o", "yaml"]);
    assert!(yaml.lines().any(|l| l == "  order: 200"), "{yaml}");
    let json = ok(url, &["get", "networkpolicy", "p", "-o", "json"]);
    assert!(json.contains("\"order\": 200,"), "{json}");
    let yaml = ok(url, &["get", "globalnetworkpolicy", "g", "-o", "yaml"]);
    assert!(yaml.lines().any(|l| l == "  order: 100.5"), "{yaml}");
    let json = ok(url, &["get", "globalnetworkpolicy", "g", "-o", "json"]);
    assert!(json.contains("\"order\": 100.5,"), "{json}");
}

/// `twillctl get … | head -1`: the reader closes the pipe early; twillctl ends as a command
/// killed by SIGPIPE does (141), with no panic message.
#[test]
fn a_reader_that_stops_early_ends_twillctl_quietly() {
    let store = sqlite();
    let sets: String = (0..1500)
        .map(|n| {
            format!(
                "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: set-{n}\nspec:\n  nets: [198.18.{}.0/24]\n",
                n % 256
            )
        })
        .collect();
    let run = twillctl(&store.url, &["apply", "-f", "-"], Some(&sets));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_twillctl"))
        .env("TWILL_DATASTORE", &store.url)
        .args(["get", "globalnetworksets", "-o", "yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}
