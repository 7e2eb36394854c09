//! The async half of the datastore: the trait every backend implements, the watch handle,
//! and opening a store by URL.

use std::sync::Arc;

use super::{
    etcd, kubernetes, sqlite, DatastoreError, DatastoreUrl, Event, Listing, Revision, Stored, TxnOp,
};
use crate::resource::{Key, Kind};

/// A live watch: batches of events, one revision per batch, in revision order. It ends
/// (`None`) or yields an error when the backend drops it; the caller then watches again
/// from the last revision it saw, or lists again after [`DatastoreError::RevisionTooOld`].
#[derive(Debug)]
pub struct Watch {
    receiver: tokio::sync::mpsc::Receiver<Result<Vec<Event>, DatastoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Builds a watch from the channel a task feeds (for backends and wrappers); dropping
    /// the watch stops the task.
    pub fn new(
        receiver: tokio::sync::mpsc::Receiver<Result<Vec<Event>, DatastoreError>>,
        task: tokio::task::JoinHandle<()>,
    ) -> Watch {
        Watch { receiver, task }
    }

    /// The next batch; `None` when the watch has ended.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, DatastoreError>> {
        self.receiver.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The datastore contract every backend meets (checked by one conformance suite).
///
/// Multi-key transactions are atomic on SQLite and etcd; a backend without them (the
/// Kubernetes API) must refuse transactions of more than one operation.
#[async_trait::async_trait]
pub trait Datastore: Send + Sync + std::fmt::Debug {
    /// The URL the store was opened with.
    fn url(&self) -> &str;

    /// Reads one object.
    async fn get(&self, key: &Key) -> Result<Option<Stored>, DatastoreError>;

    /// Lists the objects of one kind (or all kinds), optionally in one namespace.
    async fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Listing, DatastoreError>;

    /// Applies operations atomically; returns the revision of the write.
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision, DatastoreError>;

    /// Whether [`Datastore::txn`] takes more than one operation (the Kubernetes API cannot).
    fn multi_object_transactions(&self) -> bool {
        true
    }

    /// Whether workload endpoints are derived from Pods (the Kubernetes API: a CNI plugin
    /// annotates the Pod instead of writing an endpoint).
    fn endpoints_from_pods(&self) -> bool {
        false
    }

    /// Sets (`Some`) or removes (`None`) annotations of an object, conditional on its
    /// revision when `expected` is given; the new revision. Nothing else of the object
    /// changes (on the Kubernetes API: a merge patch, so fields Twill does not model stay).
    async fn annotate(
        &self,
        key: &Key,
        annotations: &std::collections::BTreeMap<String, Option<String>>,
        expected: Option<Revision>,
    ) -> Result<Revision, DatastoreError> {
        let stored = self
            .get(key)
            .await?
            .ok_or_else(|| DatastoreError::NotFound { key: key.clone() })?;
        if let Some(expected) = expected.filter(|e| *e != stored.revision) {
            return Err(DatastoreError::Conflict {
                key: key.clone(),
                expected,
                actual: stored.revision,
            });
        }
        let mut value = stored.value;
        let metadata =
            value["metadata"]
                .as_object_mut()
                .ok_or_else(|| DatastoreError::Corrupt {
                    url: self.url().to_string(),
                    reason: format!("{key} has no metadata"),
                })?;
        let current = metadata
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        if !current.is_object() {
            *current = serde_json::json!({});
        }
        let current = current.as_object_mut().expect("made an object");
        for (name, value) in annotations {
            match value {
                Some(text) => {
                    current.insert(name.clone(), text.clone().into());
                }
                None => {
                    current.remove(name);
                }
            }
        }
        self.update(key, value, stored.revision).await
    }

    /// Watches one kind (or all kinds) for changes after revision `after`.
    async fn watch(&self, kind: Option<Kind>, after: Revision) -> Result<Watch, DatastoreError>;

    /// Forgets the history up to and including `revision`.
    async fn compact(&self, revision: Revision) -> Result<(), DatastoreError>;

    /// Creates an object; fails with AlreadyExists.
    async fn create(
        &self,
        key: &Key,
        value: serde_json::Value,
    ) -> Result<Revision, DatastoreError> {
        self.txn(vec![TxnOp::Create {
            key: key.clone(),
            value,
        }])
        .await
    }

    /// Updates an object whose revision is `expected`; fails with Conflict or NotFound.
    async fn update(
        &self,
        key: &Key,
        value: serde_json::Value,
        expected: Revision,
    ) -> Result<Revision, DatastoreError> {
        self.txn(vec![TxnOp::Update {
            key: key.clone(),
            value,
            expected: Some(expected),
        }])
        .await
    }

    /// Deletes an object, if its revision is `expected` when given.
    async fn delete(
        &self,
        key: &Key,
        expected: Option<Revision>,
    ) -> Result<Revision, DatastoreError> {
        self.txn(vec![TxnOp::Delete {
            key: key.clone(),
            expected,
        }])
        .await
    }
}

/// Opens the datastore a URL names.
pub async fn connect(url: &str) -> Result<Arc<dyn Datastore>, DatastoreError> {
    match DatastoreUrl::parse(url)? {
        DatastoreUrl::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(url, &path).await?)),
        DatastoreUrl::Etcd { endpoints, tls } => Ok(Arc::new(
            etcd::EtcdStore::connect(url, endpoints, tls.as_ref()).await?,
        )),
        DatastoreUrl::Kubernetes { kubeconfig } => Ok(Arc::new(
            kubernetes::KubeStore::connect(url, kubeconfig).await?,
        )),
    }
}
