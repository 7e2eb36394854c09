//! One conformance suite for every datastore backend: real SQLite files and a real etcd
//! (Debian's etcd-server, started by the test on a free loopback port).

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use twill_interop_tests::etcd::Etcd;
use twill_interop_tests::severable::Severable;
use twill_interop_tests::workspace_binary;
use twill_shared::datastore::{connect, Datastore, DatastoreError, EventType, Revision, TxnOp};
use twill_shared::resource::{Key, Kind};
use twill_shared::syncer::{driver, SyncStatus, Update};

/// A backend under test, with what it needs kept alive.
enum Backend {
    Sqlite(tempfile::TempDir),
    Etcd(Etcd),
}

impl Backend {
    async fn sqlite() -> Backend {
        Backend::Sqlite(
            tempfile::Builder::new()
                .prefix("twill-sqlite-")
                .tempdir()
                .unwrap(),
        )
    }

    async fn etcd() -> Backend {
        Backend::Etcd(Etcd::start().await)
    }

    /// etcd over TLS, demanding a client certificate (Calico's etcdCACertFile, etcdCertFile
    /// and etcdKeyFile): `etcds://…?ca=…&cert=…&key=…`.
    async fn etcd_tls() -> Backend {
        Backend::Etcd(Etcd::start_tls().await)
    }

    fn url(&self) -> String {
        match self {
            Backend::Sqlite(dir) => format!("sqlite:{}", dir.path().join("twill.db").display()),
            Backend::Etcd(etcd) => etcd.url(),
        }
    }

    async fn store(&self) -> Arc<dyn Datastore> {
        connect(&self.url()).await.expect("the backend opens")
    }
}

fn set(name: &str, net: &str) -> (Key, serde_json::Value) {
    let key = Key::cluster(Kind::GlobalNetworkSet, name);
    let value = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
                       "metadata": {"name": name}, "spec": {"nets": [net]}});
    (key, value)
}

async fn crud(backend: Backend) {
    let store = backend.store().await;
    let (key, value) = set("a", "198.18.0.0/24");
    assert_eq!(store.get(&key).await.unwrap(), None);
    let created = store.create(&key, value.clone()).await.unwrap();
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!((got.value.clone(), got.revision), (value.clone(), created));
    assert!(matches!(
        store.create(&key, value.clone()).await,
        Err(DatastoreError::AlreadyExists { .. })
    ));
    let (_, changed) = set("a", "198.18.1.0/24");
    let updated = store.update(&key, changed.clone(), created).await.unwrap();
    assert!(updated > created);
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, changed);
    // Namespaced objects list per namespace and across namespaces.
    let policy = |ns: &str, name: &str| {
        (
            Key::namespaced(Kind::NetworkPolicy, ns, name),
            json!({"n": name}),
        )
    };
    for (key, value) in [policy("prod", "x"), policy("prod", "y"), policy("dev", "x")] {
        store.create(&key, value).await.unwrap();
    }
    let prod = store
        .list(Some(Kind::NetworkPolicy), Some("prod"))
        .await
        .unwrap();
    assert_eq!(
        prod.items
            .iter()
            .map(|s| s.key.name.as_str())
            .collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(
        store
            .list(Some(Kind::NetworkPolicy), None)
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let everything = store.list(None, None).await.unwrap();
    assert_eq!(everything.items.len(), 4);
    assert!(everything.revision >= updated);
    // Deletes: conditional on a stale revision fails, then plain delete works, then NotFound.
    assert!(matches!(
        store.delete(&key, Some(created)).await,
        Err(DatastoreError::Conflict { .. })
    ));
    store.delete(&key, Some(updated)).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert!(matches!(
        store.delete(&key, None).await,
        Err(DatastoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update(&key, value, updated).await,
        Err(DatastoreError::NotFound { .. })
    ));
}

async fn cas_conflict_and_atomic_transactions(backend: Backend) {
    let store = backend.store().await;
    let (key, value) = set("c", "198.18.0.0/24");
    let first = store.create(&key, value.clone()).await.unwrap();
    let second = store.update(&key, value.clone(), first).await.unwrap();
    match store.update(&key, value.clone(), first).await {
        Err(DatastoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (first, second)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A transaction with one failing precondition changes nothing.
    let (other, other_value) = set("d", "198.18.2.0/24");
    let before = store.list(None, None).await.unwrap();
    let failed = store
        .txn(vec![
            TxnOp::Create {
                key: other.clone(),
                value: other_value.clone(),
            },
            TxnOp::Update {
                key: key.clone(),
                value: json!({"stale": true}),
                expected: Some(first),
            },
        ])
        .await;
    assert!(
        matches!(failed, Err(DatastoreError::Conflict { .. })),
        "{failed:?}"
    );
    assert_eq!(store.list(None, None).await.unwrap().items, before.items);
    // The same transaction with the right revision applies both, under one revision.
    let revision = store
        .txn(vec![
            TxnOp::Create {
                key: other.clone(),
                value: other_value,
            },
            TxnOp::Update {
                key: key.clone(),
                value: json!({"fresh": true}),
                expected: Some(second),
            },
        ])
        .await
        .unwrap();
    assert_eq!(store.get(&other).await.unwrap().unwrap().revision, revision);
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, revision);
}

async fn concurrent_writers(backend: Backend) {
    const WRITERS: usize = 8;
    const INCREMENTS: u64 = 200;
    let store = backend.store().await;
    let key = Key::cluster(Kind::Profile, "counter");
    let counter = json!({"apiVersion": "projectcalico.org/v3", "kind": "Profile",
                         "metadata": {"name": "counter", "labels": {"count": "0"}}});
    store.create(&key, counter).await.unwrap();
    // Each writer is a separate process.
    let workers: Vec<_> = (0..WRITERS)
        .map(|_| {
            std::process::Command::new(workspace_binary("twill-cas-worker"))
                .args([backend.url(), "counter".into(), INCREMENTS.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("twill-cas-worker is built with the tests")
        })
        .collect();
    let mut conflicts = 0u64;
    for worker in workers {
        let output = tokio::task::spawn_blocking(move || worker.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(output.status.success(), "a writer failed: {output:?}");
        conflicts += String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u64>()
            .unwrap();
    }
    let value = store.get(&key).await.unwrap().unwrap().value;
    assert_eq!(
        value["metadata"]["labels"]["count"],
        json!((WRITERS as u64 * INCREMENTS).to_string())
    );
    println!(
        "{}: {} increments, {conflicts} CAS conflicts retried",
        backend.url(),
        WRITERS as u64 * INCREMENTS
    );
}

async fn watch_from_revision(backend: Backend) {
    let store = backend.store().await;
    let (a, value) = set("a", "198.18.0.0/24");
    let (b, _) = set("b", "198.18.1.0/24");
    let r1 = store.create(&a, value.clone()).await.unwrap();
    let r2 = store.create(&b, value.clone()).await.unwrap();
    let r3 = store.update(&a, json!({"v": 3}), r1).await.unwrap();
    let r4 = store.delete(&b, None).await.unwrap();
    let _other_kind = store
        .create(&Key::cluster(Kind::Tier, "t"), json!({}))
        .await
        .unwrap();
    let r5 = store.create(&b, json!({"v": 5})).await.unwrap();
    // From r2: exactly r3, r4, r5 for this kind, in order, nothing else.
    let mut watch = store.watch(Some(Kind::GlobalNetworkSet), r2).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(
            batch
                .into_iter()
                .map(|e| (e.event_type, e.key.name, e.revision, e.value)),
        );
    }
    assert_eq!(
        seen,
        vec![
            (
                EventType::Modified,
                "a".to_string(),
                r3,
                Some(json!({"v": 3}))
            ),
            (EventType::Deleted, "b".to_string(), r4, Some(value)),
            (EventType::Added, "b".to_string(), r5, Some(json!({"v": 5}))),
        ]
    );
    // Later writes arrive live.
    let r6 = store.delete(&a, None).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        batch
            .iter()
            .map(|e| (e.event_type, e.revision))
            .collect::<Vec<_>>(),
        [(EventType::Deleted, r6)]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.next())
            .await
            .is_err(),
        "nothing more"
    );
    // A transaction arrives as one batch.
    let (c, cv) = set("c", "198.18.3.0/24");
    let (d, dv) = set("d", "198.18.4.0/24");
    let r7 = store
        .txn(vec![
            TxnOp::Create { key: c, value: cv },
            TxnOp::Create { key: d, value: dv },
        ])
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        batch.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [r7, r7]
    );
}

/// Collects syncer updates into the consumer's view until `done` holds.
struct Consumer {
    updates: tokio::sync::mpsc::Receiver<Update>,
    view: BTreeMap<Key, Revision>,
    log: Vec<Update>,
    status: Option<SyncStatus>,
}

impl Consumer {
    fn start(store: Arc<dyn Datastore>) -> Consumer {
        Consumer {
            updates: driver::spawn(store, vec![]),
            view: BTreeMap::new(),
            log: Vec::new(),
            status: None,
        }
    }

    /// Applies updates until the view equals the store's content (keys and revisions).
    async fn converge(&mut self, store: &Arc<dyn Datastore>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let listing = store.list(None, None).await.unwrap();
            let truth: BTreeMap<Key, Revision> = listing
                .items
                .into_iter()
                .map(|s| (s.key, s.revision))
                .collect();
            if self.view == truth && self.status == Some(SyncStatus::InSync) {
                return;
            }
            let update = tokio::time::timeout_at(deadline, self.updates.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "syncer did not converge: view {:?} store {:?}",
                        self.view, truth
                    )
                })
                .expect("the syncer runs");
            self.apply(update);
        }
    }

    fn apply(&mut self, update: Update) {
        match &update {
            Update::Status(status) => self.status = Some(*status),
            Update::Revision(_) => {}
            Update::Changed {
                key,
                revision,
                value: Some(_),
            } => {
                self.view.insert(key.clone(), *revision);
            }
            Update::Changed {
                key, value: None, ..
            } => {
                self.view.remove(key);
            }
        }
        self.log.push(update);
    }
}

async fn compaction_forces_a_resync_that_loses_and_repeats_nothing(backend: Backend) {
    let real = backend.store().await;
    let severable = Severable::new(real.clone());
    let store: Arc<dyn Datastore> = severable.clone();
    for (index, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let (key, value) = set(name, &format!("198.18.{index}.0/24"));
        store.create(&key, value).await.unwrap();
    }
    let mut consumer = Consumer::start(store.clone());
    consumer.converge(&store).await;
    consumer.log.clear();
    // The consumer is cut off while b changes, c goes, f comes (twice changed), and the
    // history is compacted away.
    severable.cut();
    let b = store.get(&set("b", "").0).await.unwrap().unwrap();
    store
        .update(&b.key, json!({"b": 2}), b.revision)
        .await
        .unwrap();
    store.delete(&set("c", "").0, None).await.unwrap();
    let (f, fv) = set("f", "198.18.9.0/24");
    let r = store.create(&f, fv).await.unwrap();
    let r = store.update(&f, json!({"f": 2}), r).await.unwrap();
    let last = store.update(&f, json!({"f": 3}), r).await.unwrap();
    store.compact(last).await.unwrap();
    severable.release();
    consumer.converge(&store).await;
    let changes: Vec<(String, Option<serde_json::Value>)> = consumer
        .log
        .iter()
        .filter_map(|u| match u {
            Update::Changed { key, value, .. } => Some((key.name.clone(), value.clone())),
            Update::Status(_) | Update::Revision(_) => None,
        })
        .collect();
    let mut sorted = changes.clone();
    sorted.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        sorted,
        vec![
            ("b".into(), Some(json!({"b": 2}))),
            ("c".into(), None),
            ("f".into(), Some(json!({"f": 3})))
        ],
        "exactly the differences, each once: {:?}",
        consumer.log
    );
    assert!(
        consumer
            .log
            .contains(&Update::Status(SyncStatus::ResyncInProgress)),
        "a resync happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crud() {
    crud(Backend::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_crud() {
    crud(Backend::etcd().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cas_conflict_and_atomic_transactions() {
    cas_conflict_and_atomic_transactions(Backend::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cas_conflict_and_atomic_transactions() {
    cas_conflict_and_atomic_transactions(Backend::etcd().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_eight_writer_processes_200_cas_increments_each_end_at_1600() {
    concurrent_writers(Backend::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_eight_writer_processes_200_cas_increments_each_end_at_1600() {
    concurrent_writers(Backend::etcd().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watch_from_revision_delivers_exactly_the_later_events() {
    watch_from_revision(Backend::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_from_revision_delivers_exactly_the_later_events() {
    watch_from_revision(Backend::etcd().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_compaction_forces_a_resync_that_loses_and_repeats_nothing() {
    compaction_forces_a_resync_that_loses_and_repeats_nothing(Backend::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction_forces_a_resync_that_loses_and_repeats_nothing() {
    compaction_forces_a_resync_that_loses_and_repeats_nothing(Backend::etcd().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate_crud() {
    crud(Backend::etcd_tls().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate_eight_writer_processes_end_at_1600() {
    concurrent_writers(Backend::etcd_tls().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate_watch_from_revision() {
    watch_from_revision(Backend::etcd_tls().await).await;
}

/// An etcd that demands client certificates refuses every client that lacks what it trusts,
/// each within the 5 s the backend gives a call, with a reason; a missing file is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_refuses_clients_without_its_trust_and_names_a_missing_file() {
    let etcd = Etcd::start_tls().await;
    let pki = etcd.pki().unwrap().to_path_buf();
    let port = etcd.port();
    // A second CA, unknown to etcd, with its own client certificate.
    let stranger = tempfile::tempdir().unwrap();
    twill_lab::kube::etcd_certificates(stranger.path(), &["127.0.0.1"]).unwrap();
    let file = |dir: &std::path::Path, name: &str| dir.join(name).display().to_string();
    let refused = [
        // Plain text to a TLS port.
        format!("etcd://127.0.0.1:{port}"),
        // The right CA but no client certificate.
        format!("etcds://127.0.0.1:{port}?ca={}", file(&pki, "ca.crt")),
        // A client certificate from a CA etcd does not trust.
        format!(
            "etcds://127.0.0.1:{port}?ca={}&cert={}&key={}",
            file(&pki, "ca.crt"),
            file(stranger.path(), "etcd-client.crt"),
            file(stranger.path(), "etcd-client.key")
        ),
        // A server certificate from a CA the client does not trust.
        format!(
            "etcds://127.0.0.1:{port}?ca={}&cert={}&key={}",
            file(stranger.path(), "ca.crt"),
            file(&pki, "etcd-client.crt"),
            file(&pki, "etcd-client.key")
        ),
    ];
    for url in refused {
        let started = std::time::Instant::now();
        let outcome = async {
            let store = connect(&url).await?;
            store.list(None, None).await
        }
        .await;
        match outcome {
            Err(DatastoreError::Unavailable { reason, .. }) => {
                assert!(!reason.is_empty(), "{url}: a reason");
            }
            other => panic!("{url}: expected the connection refused, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{url}: refused after {:?}",
            started.elapsed()
        );
    }
    let missing = format!(
        "etcds://127.0.0.1:{port}?ca={}&cert=/nonexistent/client.crt&key={}",
        file(&pki, "ca.crt"),
        file(&pki, "etcd-client.key")
    );
    match connect(&missing).await {
        Err(DatastoreError::BadUrl { reason, .. }) => assert!(
            reason.starts_with("cert=/nonexistent/client.crt: "),
            "{reason}"
        ),
        other => panic!("expected the missing file named, got {:?}", other.err()),
    }
    // The URL the harness gives, with etcd's CA and Twill's client certificate, works.
    let store = connect(&etcd.url()).await.unwrap();
    store.list(None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_survives_etcd_being_killed_and_restarted() {
    let mut etcd = Etcd::start().await;
    let store = etcd.store().await;
    for name in ["a", "b", "c"] {
        let (key, value) = set(name, "198.18.0.0/24");
        store.create(&key, value).await.unwrap();
    }
    let mut consumer = Consumer::start(store.clone());
    consumer.converge(&store).await;
    etcd.kill();
    // While etcd is down the syncer retries; nothing is lost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.restart().await;
    let store_after = etcd.store().await;
    store_after.delete(&set("a", "").0, None).await.unwrap();
    let (d, dv) = set("d", "198.18.4.0/24");
    store_after.create(&d, dv).await.unwrap();
    let b = store_after.get(&set("b", "").0).await.unwrap().unwrap();
    store_after
        .update(&b.key, json!({"b": 2}), b.revision)
        .await
        .unwrap();
    consumer.converge(&store_after).await;
    assert!(consumer.view.contains_key(&d) && !consumer.view.contains_key(&set("a", "").0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watch_sees_writes_from_another_process() {
    let backend = Backend::sqlite().await;
    let store = backend.store().await;
    let key = Key::cluster(Kind::Profile, "counter");
    store
        .create(
            &key,
            json!({"apiVersion": "projectcalico.org/v3", "kind": "Profile",
                             "metadata": {"name": "counter", "labels": {"count": "0"}}}),
        )
        .await
        .unwrap();
    let mut consumer = Consumer::start(store.clone());
    consumer.converge(&store).await;
    let status = std::process::Command::new(workspace_binary("twill-cas-worker"))
        .args([backend.url(), "counter".into(), "5".into()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    consumer.converge(&store).await;
    let changes = consumer
        .log
        .iter()
        .filter(|u| matches!(u, Update::Changed { key: k, .. } if *k == key))
        .count();
    assert_eq!(
        changes,
        1 + 5,
        "the create, then each of the other process's five writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watch_on_one_handle_sees_writes_through_another() {
    let backend = Backend::sqlite().await;
    let writer = backend.store().await;
    let watcher = backend.store().await;
    let key = Key::cluster(Kind::Profile, "p");
    let mut revision = writer.create(&key, json!({"n": 0})).await.unwrap();
    let mut watch = watcher.watch(Some(Kind::Profile), revision).await.unwrap();
    for n in 1..=20 {
        revision = writer
            .update(&key, json!({"n": n}), revision)
            .await
            .unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(2), watch.next())
            .await
            .unwrap_or_else(|_| panic!("write {n} (revision {revision}) not seen within 2 s"))
            .unwrap()
            .unwrap();
        assert_eq!(batch[0].revision, revision);
    }
}
