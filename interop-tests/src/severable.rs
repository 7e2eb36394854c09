//! A datastore wrapper whose watches a test can cut and hold back, to force what a network
//! partition or a slow consumer would: a watch that resumes from a revision that has since
//! been compacted. Every other call goes straight to the real backend.

use std::sync::Arc;

use tokio::sync::watch as signal;
use twill_shared::datastore::{Datastore, DatastoreError, Listing, Revision, Stored, TxnOp, Watch};
use twill_shared::resource::{Key, Kind};

/// Wraps a real datastore.
#[derive(Debug)]
pub struct Severable {
    inner: Arc<dyn Datastore>,
    /// `true` while watches are cut: live ones end and new ones wait.
    cut: signal::Sender<bool>,
}

impl Severable {
    /// Wraps `inner`; watches flow normally.
    pub fn new(inner: Arc<dyn Datastore>) -> Arc<Severable> {
        Arc::new(Severable {
            inner,
            cut: signal::channel(false).0,
        })
    }

    /// Ends every live watch and holds new ones back until [`Severable::release`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets watches through again.
    pub fn release(&self) {
        self.cut.send_replace(false);
    }
}

#[async_trait::async_trait]
impl Datastore for Severable {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn get(&self, key: &Key) -> Result<Option<Stored>, DatastoreError> {
        self.inner.get(key).await
    }

    async fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Listing, DatastoreError> {
        self.inner.list(kind, namespace).await
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Revision, DatastoreError> {
        self.inner.txn(ops).await
    }

    async fn watch(&self, kind: Option<Kind>, after: Revision) -> Result<Watch, DatastoreError> {
        let mut cut = self.cut.subscribe();
        let _ = cut.wait_for(|cut| !cut).await;
        let mut inner = self.inner.watch(kind, after).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    changed = cut.changed() => if changed.is_err() || *cut.borrow_and_update() { return },
                    next = inner.next() => match next {
                        // An item that arrives once the cut is made is never passed on, however
                        // the two raced: the test's writes after `cut()` must stay unseen.
                        Some(_) if *cut.borrow() => return,
                        Some(item) => if sender.send(item).await.is_err() { return },
                        None => return,
                    },
                }
            }
        });
        Ok(Watch::new(receiver, task))
    }

    async fn compact(&self, revision: Revision) -> Result<(), DatastoreError> {
        self.inner.compact(revision).await
    }
}
