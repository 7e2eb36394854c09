//! The etcd v3 datastore.
//!
//! Keys: `/twill/v1/<plural>/<name>` for cluster-wide kinds and
//! `/twill/v1/<plural>/<namespace>/<name>` for namespaced ones; values are the resources'
//! JSON. Revisions are etcd's: the store revision, and each key's `mod_revision`. Create is
//! `version == 0`, CAS is `mod_revision == expected`, a transaction is one etcd `Txn`.
//! Every call is bounded by [`CALL_TIMEOUT`], so an unreachable etcd is an error, not a hang.
//! `etcds://` URLs connect over TLS (rustls), with a client certificate when given one.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions,
    EventType as EtcdEventType, GetOptions, Identity, TlsOptions, Txn, TxnOp as EtcdTxnOp,
    WatchOptions,
};

use super::{
    check_txn, kind_from_plural, DatastoreError, EtcdTls, Event, EventType, Listing, Revision,
    Stored, TxnOp, Watch,
};
use crate::resource::{Key, Kind};

/// Root of Twill's keys.
pub const PREFIX: &str = "/twill/v1/";

/// Upper bound of one etcd call, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// Keys fetched per page of a list.
const PAGE: i64 = 1_000;

/// The etcd datastore.
#[derive(Clone)]
pub struct EtcdStore {
    url: String,
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The etcd key of an object.
pub fn etcd_key(key: &Key) -> String {
    match &key.namespace {
        Some(namespace) => format!("{PREFIX}{}/{namespace}/{}", key.kind.plural(), key.name),
        None => format!("{PREFIX}{}/{}", key.kind.plural(), key.name),
    }
}

fn prefix_of(kind: Option<Kind>, namespace: Option<&str>) -> String {
    match (kind, namespace) {
        (None, _) => PREFIX.to_string(),
        (Some(kind), Some(namespace)) if kind.namespaced() => {
            format!("{PREFIX}{}/{namespace}/", kind.plural())
        }
        (Some(kind), _) => format!("{PREFIX}{}/", kind.plural()),
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers, within [`CALL_TIMEOUT`].
    pub async fn connect(
        url: &str,
        endpoints: Vec<String>,
        tls: Option<&EtcdTls>,
    ) -> Result<EtcdStore, DatastoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = tls {
            options = options.with_tls(tls_options(url, tls)?);
        }
        let unavailable = |reason: String| DatastoreError::Unavailable {
            url: url.to_string(),
            reason,
        };
        let connecting = async {
            let mut client = Client::connect(&endpoints, Some(options)).await?;
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        };
        match tokio::time::timeout(CALL_TIMEOUT, connecting).await {
            Ok(Ok(client)) => Ok(EtcdStore {
                url: url.to_string(),
                client,
            }),
            Ok(Err(err)) => Err(unavailable(describe(&err))),
            Err(_) => Err(unavailable(format!(
                "no answer within {}s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    fn error(&self, err: &etcd_client::Error) -> DatastoreError {
        // gRPC status codes: 1 cancelled, 4 deadline exceeded, 14 unavailable.
        let unreachable = match err {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            etcd_client::Error::GRpcStatus(status) => {
                matches!(i32::from(status.code()), 1 | 4 | 14)
            }
            _ => false,
        };
        if unreachable {
            DatastoreError::Unavailable {
                url: self.url.clone(),
                reason: describe(err),
            }
        } else {
            DatastoreError::Backend {
                url: self.url.clone(),
                reason: describe(err),
            }
        }
    }

    /// Runs one etcd call with the timeout.
    async fn call<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, DatastoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, work).await {
            Ok(result) => result.map_err(|err| self.error(&err)),
            Err(_) => Err(DatastoreError::Unavailable {
                url: self.url.clone(),
                reason: format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
            }),
        }
    }

    fn parse_key(&self, raw: &[u8]) -> Result<Key, DatastoreError> {
        let corrupt = || DatastoreError::Corrupt {
            url: self.url.clone(),
            reason: format!("unexpected key {:?}", String::from_utf8_lossy(raw)),
        };
        let text = std::str::from_utf8(raw).map_err(|_| corrupt())?;
        let rest = text.strip_prefix(PREFIX).ok_or_else(corrupt)?;
        let mut parts = rest.split('/');
        let kind = parts
            .next()
            .and_then(kind_from_plural)
            .ok_or_else(corrupt)?;
        let key = match (kind.namespaced(), parts.next(), parts.next(), parts.next()) {
            (true, Some(namespace), Some(name), None) => Key::namespaced(kind, namespace, name),
            (false, Some(name), None, None) => Key::cluster(kind, name),
            _ => return Err(corrupt()),
        };
        Ok(key)
    }

    fn parse_value(&self, raw: &[u8]) -> Result<serde_json::Value, DatastoreError> {
        serde_json::from_slice(raw).map_err(|err| DatastoreError::Corrupt {
            url: self.url.clone(),
            reason: format!("stored value is not JSON: {err}"),
        })
    }

    /// Works out which precondition of a failed transaction did not hold.
    async fn explain_failure(&self, ops: &[TxnOp]) -> DatastoreError {
        for op in ops {
            let current = match self.get_inner(op.key()).await {
                Ok(found) => found.map(|stored| stored.revision),
                Err(err) => return err,
            };
            let key = op.key().clone();
            match (op, current) {
                (TxnOp::Create { .. }, Some(_)) => return DatastoreError::AlreadyExists { key },
                (TxnOp::Update { .. } | TxnOp::Delete { .. }, None) => {
                    return DatastoreError::NotFound { key }
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
                ) if *expected != actual => {
                    return DatastoreError::Conflict {
                        key,
                        expected: *expected,
                        actual,
                    }
                }
                _ => {}
            }
        }
        // Everything holds now: it changed in between; report it as a conflict on the first key.
        let key = ops[0].key().clone();
        DatastoreError::Conflict {
            key,
            expected: -1,
            actual: -1,
        }
    }

    async fn get_inner(&self, key: &Key) -> Result<Option<Stored>, DatastoreError> {
        let mut client = self.client.clone();
        let response = self.call(client.get(etcd_key(key), None)).await?;
        match response.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Stored {
                key: key.clone(),
                value: self.parse_value(kv.value())?,
                revision: kv.mod_revision(),
            })),
        }
    }
}

/// The most useful line of an etcd client error (tonic nests the cause).
/// The TLS settings of `tls`, its files read now: a file that cannot be read is named.
fn tls_options(url: &str, tls: &EtcdTls) -> Result<TlsOptions, DatastoreError> {
    let read = |parameter: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|err| DatastoreError::BadUrl {
            url: url.to_string(),
            reason: format!("{parameter}={}: {err}", path.display()),
        })
    };
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca", &tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    Ok(options)
}

fn describe(err: &etcd_client::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The end of the key range that starts with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

#[async_trait::async_trait]
impl super::Datastore for EtcdStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get(&self, key: &Key) -> Result<Option<Stored>, DatastoreError> {
        self.get_inner(key).await
    }

    async fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Listing, DatastoreError> {
        let prefix = prefix_of(kind, namespace);
        let end = range_end(&prefix);
        let mut client = self.client.clone();
        let mut start = prefix.clone().into_bytes();
        let mut revision = 0;
        let mut items = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = self.call(client.get(start.clone(), Some(options))).await?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                let key = self.parse_key(kv.key())?;
                if kind.is_none() || namespace.is_none() || key.namespace.as_deref() == namespace {
                    items.push(Stored {
                        key,
                        value: self.parse_value(kv.value())?,
                        revision: kv.mod_revision(),
                    });
                }
            }
            match (response.more(), response.kvs().last()) {
                (true, Some(last)) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        if let (None, Some(namespace)) = (kind, namespace) {
            items.retain(|item| item.key.namespace.as_deref() == Some(namespace));
        }
        items.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing { items, revision })
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision, DatastoreError> {
        check_txn(&ops)?;
        if ops.is_empty() {
            return Err(DatastoreError::InvalidTxn {
                reason: "no operations".into(),
            });
        }
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        for op in &ops {
            let key = etcd_key(op.key());
            match op {
                TxnOp::Create { value, .. } => {
                    compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                    writes.push(EtcdTxnOp::put(key, value.to_string(), None));
                }
                TxnOp::Update {
                    value, expected, ..
                } => {
                    compares.push(match expected {
                        Some(revision) => {
                            Compare::mod_revision(key.clone(), CompareOp::Equal, *revision)
                        }
                        None => Compare::version(key.clone(), CompareOp::Greater, 0),
                    });
                    writes.push(EtcdTxnOp::put(key, value.to_string(), None));
                }
                TxnOp::Delete { expected, .. } => {
                    compares.push(match expected {
                        Some(revision) => {
                            Compare::mod_revision(key.clone(), CompareOp::Equal, *revision)
                        }
                        None => Compare::version(key.clone(), CompareOp::Greater, 0),
                    });
                    writes.push(EtcdTxnOp::delete(key, None));
                }
            }
        }
        let mut client = self.client.clone();
        let response = self
            .call(client.txn(Txn::new().when(compares).and_then(writes)))
            .await?;
        if response.succeeded() {
            Ok(response.header().map_or(0, |h| h.revision()))
        } else {
            Err(self.explain_failure(&ops).await)
        }
    }

    async fn watch(&self, kind: Option<Kind>, after: Revision) -> Result<Watch, DatastoreError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1)
            .with_prev_key();
        let mut stream = self
            .call(client.watch(prefix_of(kind, None), Some(options)))
            .await?;
        // The first answer says whether the watch was created or refused (compacted).
        let first = self.call(stream.message()).await?;
        if let Some(response) = &first {
            if response.compact_revision() > 0 || response.canceled() {
                return Err(DatastoreError::RevisionTooOld {
                    requested: after,
                    compacted: response.compact_revision(),
                });
            }
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let store = self.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                let message = match stream.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(err) => {
                        let _ = sender.send(Err(store.error(&err))).await;
                        return;
                    }
                };
                if message.compact_revision() > 0 {
                    let compacted = message.compact_revision();
                    let _ = sender
                        .send(Err(DatastoreError::RevisionTooOld {
                            requested: after,
                            compacted,
                        }))
                        .await;
                    return;
                }
                if message.canceled() {
                    let reason = format!("watch canceled: {}", message.cancel_reason());
                    let _ = sender
                        .send(Err(DatastoreError::Unavailable {
                            url: store.url.clone(),
                            reason,
                        }))
                        .await;
                    return;
                }
                match store.convert_events(&message) {
                    Ok(batches) => {
                        for batch in batches {
                            if sender.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = sender.send(Err(err)).await;
                        return;
                    }
                }
            }
        });
        Ok(Watch::new(receiver, task))
    }

    async fn compact(&self, revision: Revision) -> Result<(), DatastoreError> {
        let mut client = self.client.clone();
        self.call(client.compact(revision, Some(CompactionOptions::new().with_physical())))
            .await?;
        Ok(())
    }
}

impl EtcdStore {
    /// Turns one watch response into batches, one per revision.
    fn convert_events(
        &self,
        message: &etcd_client::WatchResponse,
    ) -> Result<Vec<Vec<Event>>, DatastoreError> {
        let mut batches: Vec<Vec<Event>> = Vec::new();
        for event in message.events() {
            let Some(kv) = event.kv() else { continue };
            let key = self.parse_key(kv.key())?;
            let (event_type, value) = match event.event_type() {
                EtcdEventType::Put if kv.create_revision() == kv.mod_revision() => {
                    (EventType::Added, Some(self.parse_value(kv.value())?))
                }
                EtcdEventType::Put => (EventType::Modified, Some(self.parse_value(kv.value())?)),
                EtcdEventType::Delete => {
                    let last = event
                        .prev_kv()
                        .map(|prev| self.parse_value(prev.value()))
                        .transpose()?;
                    (EventType::Deleted, last)
                }
            };
            let event = Event {
                event_type,
                key,
                revision: kv.mod_revision(),
                value,
            };
            match batches.last_mut() {
                Some(batch) if batch[0].revision == event.revision => batch.push(event),
                _ => batches.push(vec![event]),
            }
        }
        Ok(batches)
    }
}
