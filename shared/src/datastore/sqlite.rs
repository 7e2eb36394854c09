//! The embedded datastore: one SQLite file (WAL mode) that the processes of a machine share.
//!
//! Tables: `objects` (current state, with each object's last revision), `events` (the change
//! log that watches read), `twill_meta` (schema version, current revision, compaction point).
//! Writers take the write lock up front (`BEGIN IMMEDIATE`), so compare-and-swap is exact
//! across processes. Watches learn of commits made by any process through
//! `PRAGMA data_version`, polled every millisecond by one thread per open store, and of this
//! process's commits at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::{
    check_txn, kind_from_plural, DatastoreError, Event, EventType, Listing, Revision, Stored,
    TxnOp, Watch,
};
use crate::resource::{Key, Kind};

/// Schema version written in `twill_meta`.
const SCHEMA_VERSION: i64 = 1;

/// How many revisions of history the change log keeps; older ones are compacted.
const HISTORY: Revision = 10_000;

/// How often the history is trimmed (every this many revisions).
const TRIM_EVERY: Revision = 1_000;

/// About how many events a watch reads per query (whole revisions are never split).
const WATCH_BATCH: i64 = 5_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS twill_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO twill_meta (name, value) VALUES ('schema', 1), ('revision', 0), ('compacted', 0);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    value TEXT NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL, op INTEGER NOT NULL,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, value TEXT
);
CREATE INDEX IF NOT EXISTS events_by_rev ON events (rev);
";

/// SQLite's `synchronous` setting for the store's writes: how much a power loss can take
/// (docs/design/datastore.md). Either way a crash of the process loses nothing committed, and
/// the file is never corrupted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// `NORMAL` (the default): in WAL mode a commit is not synced; the WAL is synced at each
    /// checkpoint. A power loss may roll back the last commits, never corrupt the file.
    #[default]
    Normal,
    /// `FULL`: every commit syncs the WAL before it returns, so a power loss loses nothing
    /// acknowledged; each write waits for the disk.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// The SQLite datastore.
#[derive(Debug)]
pub struct SqliteStore {
    url: String,
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    /// Bumped on every commit this process makes and every foreign commit the poller sees.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    poller: OnceLock<()>,
    stop: Arc<AtomicBool>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn op_code(event_type: EventType) -> i64 {
    match event_type {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, with `synchronous=NORMAL`.
    pub async fn open(url: &str, path: &Path) -> Result<SqliteStore, DatastoreError> {
        SqliteStore::open_with(url, path, Synchronous::Normal).await
    }

    /// Opens (creating if needed) the database at `path`; this store's writes commit with
    /// `synchronous`.
    pub async fn open_with(
        url: &str,
        path: &Path,
        synchronous: Synchronous,
    ) -> Result<SqliteStore, DatastoreError> {
        let (url_owned, path_owned) = (url.to_string(), path.to_path_buf());
        let (writer, reader) = tokio::task::spawn_blocking(move || {
            let writer = open_connection(&url_owned, &path_owned, true, synchronous)?;
            let reader = open_connection(&url_owned, &path_owned, false, Synchronous::Normal)?;
            Ok::<_, DatastoreError>((writer, reader))
        })
        .await
        .map_err(|err| backend(url, err))??;
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(SqliteStore {
            url: url.to_string(),
            path: path.to_path_buf(),
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            changes: Arc::new(changes),
            poller: OnceLock::new(),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Runs `work` on a connection in the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        connection: &Arc<Mutex<Connection>>,
        work: impl FnOnce(&mut Connection, &str) -> Result<T, DatastoreError> + Send + 'static,
    ) -> Result<T, DatastoreError> {
        let (connection, url) = (connection.clone(), self.url.clone());
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard, &url)
        })
        .await
        .map_err(|err| backend(&self.url, err))?
    }

    /// Starts the thread that notices other processes' commits (once per store).
    fn start_poller(&self) -> Result<(), DatastoreError> {
        if self.poller.get().is_some() {
            return Ok(());
        }
        let connection = open_connection(&self.url, &self.path, false, Synchronous::Normal)?;
        // The baseline is read here, before any watch reads the log: a commit that lands
        // after this point changes data_version and is noticed.
        let baseline = data_version(&connection).map_err(|err| sqlite_error(&self.url, err))?;
        let (changes, stop) = (self.changes.clone(), self.stop.clone());
        if self.poller.set(()).is_ok() {
            std::thread::Builder::new()
                .name("twill-sqlite-poll".into())
                .spawn(move || poll_data_version(&connection, baseline, &changes, &stop))
                .map_err(|err| backend(&self.url, err))?;
        }
        Ok(())
    }
}

/// Watches `PRAGMA data_version`, which changes when another connection commits.
#[allow(clippy::disallowed_methods)] // This edge thread paces itself with a sleep.
fn poll_data_version(
    connection: &Connection,
    baseline: i64,
    changes: &tokio::sync::watch::Sender<u64>,
    stop: &AtomicBool,
) {
    let mut last = baseline;
    // Runs until the store is dropped (receivers come and go with watches).
    while !stop.load(Ordering::Relaxed) {
        if let Ok(version) = data_version(connection) {
            if version != last {
                changes.send_modify(|n| *n += 1);
                last = version;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn data_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA data_version", [], |row| row.get(0))
}

fn backend(url: &str, err: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Backend {
        url: url.to_string(),
        reason: err.to_string(),
    }
}

/// Maps a SQLite error to what it means for the user.
fn sqlite_error(url: &str, err: rusqlite::Error) -> DatastoreError {
    let reason = err.to_string();
    match err.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => DatastoreError::Corrupt {
            url: url.to_string(),
            reason: format!("{reason} (not a Twill database, or damaged)"),
        },
        Some(ErrorCode::CannotOpen) => DatastoreError::Unavailable {
            url: url.to_string(),
            reason: format!("{reason} (does the directory exist and is it writable?)"),
        },
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => DatastoreError::Unavailable {
            url: url.to_string(),
            reason: format!("{reason} (the file is not writable)"),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => DatastoreError::Unavailable {
            url: url.to_string(),
            reason: format!("{reason} (another process holds the lock)"),
        },
        _ => backend(url, reason),
    }
}

/// Opens a connection; `synchronous` matters only for one that writes (readers never sync).
fn open_connection(
    url: &str,
    path: &Path,
    create: bool,
    synchronous: Synchronous,
) -> Result<Connection, DatastoreError> {
    if create {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| DatastoreError::Unavailable {
                url: url.to_string(),
                reason: format!("cannot create directory {}: {err}", parent.display()),
            })?;
        }
    }
    let connection = Connection::open(path).map_err(|err| sqlite_error(url, err))?;
    connection
        .busy_timeout(Duration::from_secs(10))
        .map_err(|err| sqlite_error(url, err))?;
    let setup = |connection: &Connection| -> rusqlite::Result<i64> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", synchronous.pragma())?;
        if create {
            connection.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))?;
        }
        connection.query_row(
            "SELECT value FROM twill_meta WHERE name = 'schema'",
            [],
            |row| row.get(0),
        )
    };
    let schema = setup(&connection).map_err(|err| match err {
        rusqlite::Error::SqliteFailure(_, _) => sqlite_error(url, err),
        other => DatastoreError::Corrupt {
            url: url.to_string(),
            reason: other.to_string(),
        },
    })?;
    if schema != SCHEMA_VERSION {
        return Err(DatastoreError::Corrupt {
            url: url.to_string(),
            reason: format!("schema version {schema}; this Twill reads version {SCHEMA_VERSION}"),
        });
    }
    Ok(connection)
}

fn meta(connection: &Connection, name: &str) -> rusqlite::Result<i64> {
    connection.query_row(
        "SELECT value FROM twill_meta WHERE name = ?1",
        [name],
        |row| row.get(0),
    )
}

fn namespace_column(key: &Key) -> &str {
    key.namespace.as_deref().unwrap_or("")
}

fn parse_value(url: &str, text: &str) -> Result<serde_json::Value, DatastoreError> {
    serde_json::from_str(text).map_err(|err| DatastoreError::Corrupt {
        url: url.to_string(),
        reason: format!("stored value is not JSON: {err}"),
    })
}

fn row_key(url: &str, kind: &str, namespace: String, name: String) -> Result<Key, DatastoreError> {
    let kind = kind_from_plural(kind).ok_or_else(|| DatastoreError::Corrupt {
        url: url.to_string(),
        reason: format!("unknown kind {kind:?} in the store"),
    })?;
    Ok(Key {
        kind,
        namespace: (!namespace.is_empty()).then_some(namespace),
        name,
    })
}

/// The current revision of `key`, if it exists.
fn current_revision(connection: &Connection, key: &Key) -> rusqlite::Result<Option<Revision>> {
    connection
        .query_row(
            "SELECT mod_rev FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
            params![key.kind.plural(), namespace_column(key), key.name],
            |row| row.get(0),
        )
        .optional()
}

/// Checks one operation's precondition against the current state.
fn check_op(op: &TxnOp, current: Option<Revision>) -> Result<EventType, DatastoreError> {
    let key = op.key().clone();
    match (op, current) {
        (TxnOp::Create { .. }, None) => Ok(EventType::Added),
        (TxnOp::Create { .. }, Some(_)) => Err(DatastoreError::AlreadyExists { key }),
        (TxnOp::Update { .. } | TxnOp::Delete { .. }, None) => {
            Err(DatastoreError::NotFound { key })
        }
        (
            TxnOp::Update {
                expected: Some(expected),
                ..
            }
            | TxnOp::Delete {
                expected: Some(expected),
                ..
            },
            Some(actual),
        ) if *expected != actual => Err(DatastoreError::Conflict {
            key,
            expected: *expected,
            actual,
        }),
        (TxnOp::Update { .. }, Some(_)) => Ok(EventType::Modified),
        (TxnOp::Delete { .. }, Some(_)) => Ok(EventType::Deleted),
    }
}

fn apply_txn(
    connection: &mut Connection,
    url: &str,
    ops: &[TxnOp],
) -> Result<Revision, DatastoreError> {
    let sql = |err| sqlite_error(url, err);
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let revision = meta(&tx, "revision").map_err(sql)? + 1;
    for op in ops {
        let key = op.key();
        let event_type = check_op(op, current_revision(&tx, key).map_err(sql)?)?;
        let key_params = params![key.kind.plural(), namespace_column(key), key.name];
        let value_text = match op {
            TxnOp::Create { value, .. } | TxnOp::Update { value, .. } => Some(value.to_string()),
            TxnOp::Delete { .. } => None,
        };
        let logged = match (&value_text, event_type) {
            (Some(text), EventType::Added) => {
                tx.execute(
                    "INSERT INTO objects (kind, namespace, name, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![key.kind.plural(), namespace_column(key), key.name, text, revision],
                )
                .map_err(sql)?;
                Some(text.clone())
            }
            (Some(text), _) => {
                tx.execute(
                    "UPDATE objects SET value = ?4, mod_rev = ?5 WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                    params![key.kind.plural(), namespace_column(key), key.name, text, revision],
                )
                .map_err(sql)?;
                Some(text.clone())
            }
            (None, _) => {
                let last: String = tx
                    .query_row("SELECT value FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3", key_params, |r| r.get(0))
                    .map_err(sql)?;
                tx.execute(
                    "DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                    key_params,
                )
                .map_err(sql)?;
                Some(last)
            }
        };
        tx.execute(
            "INSERT INTO events (rev, op, kind, namespace, name, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![revision, op_code(event_type), key.kind.plural(), namespace_column(key), key.name, logged],
        )
        .map_err(sql)?;
    }
    tx.execute(
        "UPDATE twill_meta SET value = ?1 WHERE name = 'revision'",
        [revision],
    )
    .map_err(sql)?;
    if revision % TRIM_EVERY == 0 && revision > HISTORY {
        compact_in(&tx, revision - HISTORY).map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(revision)
}

fn compact_in(connection: &Connection, revision: Revision) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM events WHERE rev <= ?1", [revision])?;
    connection.execute(
        "UPDATE twill_meta SET value = max(value, ?1) WHERE name = 'compacted'",
        [revision],
    )?;
    Ok(())
}

fn read_events(
    connection: &mut Connection,
    url: &str,
    kind: Option<Kind>,
    after: Revision,
) -> Result<Vec<Event>, DatastoreError> {
    let sql = |err| sqlite_error(url, err);
    let tx = connection.transaction().map_err(sql)?;
    let compacted = meta(&tx, "compacted").map_err(sql)?;
    if after < compacted {
        return Err(DatastoreError::RevisionTooOld {
            requested: after,
            compacted,
        });
    }
    let mut statement = tx
        .prepare_cached(
            // Whole revisions only: up to the revision of the WATCH_BATCH-th event after `after`.
            "SELECT rev, op, kind, namespace, name, value FROM events
             WHERE rev > ?1 AND (?2 IS NULL OR kind = ?2)
               AND rev <= COALESCE((SELECT rev FROM events WHERE rev > ?1 AND (?2 IS NULL OR kind = ?2)
                                    ORDER BY seq LIMIT 1 OFFSET ?3), 9223372036854775807)
             ORDER BY seq",
        )
        .map_err(sql)?;
    let rows = statement
        .query_map(
            params![after, kind.map(Kind::plural), WATCH_BATCH - 1],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            },
        )
        .map_err(sql)?;
    let mut events = Vec::new();
    for row in rows {
        let (revision, op, kind, namespace, name, value) = row.map_err(sql)?;
        let event_type = match op {
            0 => EventType::Added,
            1 => EventType::Modified,
            _ => EventType::Deleted,
        };
        let value = value.map(|text| parse_value(url, &text)).transpose()?;
        events.push(Event {
            event_type,
            key: row_key(url, &kind, namespace, name)?,
            revision,
            value,
        });
    }
    Ok(events)
}

/// Splits events (whole revisions, in order) into one batch per revision.
fn batches(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut out: Vec<Vec<Event>> = Vec::new();
    for event in events {
        match out.last_mut() {
            Some(batch) if batch[0].revision == event.revision => batch.push(event),
            _ => out.push(vec![event]),
        }
    }
    out
}

#[async_trait::async_trait]
impl super::Datastore for SqliteStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get(&self, key: &Key) -> Result<Option<Stored>, DatastoreError> {
        let key = key.clone();
        self.with(&self.reader, move |connection, url| {
            let row: Option<(String, Revision)> = connection
                .query_row(
                    "SELECT value, mod_rev FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
                    params![key.kind.plural(), namespace_column(&key), key.name],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(|err| sqlite_error(url, err))?;
            row.map(|(text, revision)| Ok(Stored { value: parse_value(url, &text)?, key, revision })).transpose()
        })
        .await
    }

    async fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Listing, DatastoreError> {
        let namespace = namespace.map(str::to_string);
        self.with(&self.reader, move |connection, url| {
            let sql = |err| sqlite_error(url, err);
            let tx = connection.transaction().map_err(sql)?;
            let revision = meta(&tx, "revision").map_err(sql)?;
            let mut statement = tx
                .prepare_cached(
                    "SELECT kind, namespace, name, value, mod_rev FROM objects
                     WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR namespace = ?2)
                     ORDER BY kind, namespace, name",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map(params![kind.map(Kind::plural), namespace], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get::<_, String>(3)?,
                        row.get(4)?,
                    ))
                })
                .map_err(sql)?;
            let mut items = Vec::new();
            for row in rows {
                let (kind, namespace, name, text, revision) = row.map_err(sql)?;
                items.push(Stored {
                    key: row_key(url, &kind, namespace, name)?,
                    value: parse_value(url, &text)?,
                    revision,
                });
            }
            items.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(Listing { items, revision })
        })
        .await
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision, DatastoreError> {
        check_txn(&ops)?;
        let revision = self
            .with(&self.writer, move |connection, url| {
                apply_txn(connection, url, &ops)
            })
            .await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(revision)
    }

    async fn watch(&self, kind: Option<Kind>, after: Revision) -> Result<Watch, DatastoreError> {
        self.start_poller()?;
        // Fail now, not in the stream, when the history is gone.
        let first = {
            let mut connection =
                open_connection(&self.url, &self.path, false, Synchronous::Normal)?;
            read_events(&mut connection, &self.url, kind, after)?;
            connection
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let mut changes = self.changes.subscribe();
        let (connection, url) = (Arc::new(Mutex::new(first)), self.url.clone());
        let task = tokio::spawn(async move {
            let mut after = after;
            loop {
                changes.borrow_and_update();
                let (connection, url_copy) = (connection.clone(), url.clone());
                let read = tokio::task::spawn_blocking(move || {
                    let mut guard = connection.lock().unwrap_or_else(|p| p.into_inner());
                    read_events(&mut guard, &url_copy, kind, after)
                })
                .await;
                let events = match read {
                    Ok(Ok(events)) => events,
                    Ok(Err(err)) => {
                        let _ = sender.send(Err(err)).await;
                        return;
                    }
                    Err(err) => {
                        let _ = sender.send(Err(backend(&url, err))).await;
                        return;
                    }
                };
                let limit_reached = events.len() as i64 >= WATCH_BATCH;
                for batch in batches(events) {
                    after = batch[0].revision;
                    if sender.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
                if !limit_reached {
                    tokio::select! {
                        changed = changes.changed() => if changed.is_err() { return },
                        () = sender.closed() => return,
                    }
                }
            }
        });
        Ok(Watch::new(receiver, task))
    }

    async fn compact(&self, revision: Revision) -> Result<(), DatastoreError> {
        self.with(&self.writer, move |connection, url| {
            let tx = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|err| sqlite_error(url, err))?;
            compact_in(&tx, revision).map_err(|err| sqlite_error(url, err))?;
            tx.commit().map_err(|err| sqlite_error(url, err))
        })
        .await
    }
}

/// The version of the bundled SQLite library.
pub fn library_version() -> &'static str {
    rusqlite::version()
}
