//! The async edge of the syncer: list, watch from the list's revision, and on any watch
//! failure watch again from the last revision seen (with back-off), or list again when that
//! revision has been compacted. Updates flow to the consumer through a channel.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{SyncerState, Update};
use crate::datastore::{Datastore, DatastoreError};
use crate::resource::Kind;

/// First and longest pause between retries.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Starts a syncer for `kinds` (empty: all) and returns its updates. It runs until the
/// receiver is dropped.
pub fn spawn(store: Arc<dyn Datastore>, kinds: Vec<Kind>) -> mpsc::Receiver<Update> {
    let (sender, receiver) = mpsc::channel(1024);
    tokio::spawn(run(store, kinds, sender));
    receiver
}

async fn send_all(sender: &mpsc::Sender<Update>, updates: Vec<Update>) -> bool {
    for update in updates {
        if sender.send(update).await.is_err() {
            return false;
        }
    }
    true
}

async fn run(store: Arc<dyn Datastore>, kinds: Vec<Kind>, sender: mpsc::Sender<Update>) {
    let mut state = SyncerState::new(kinds);
    let single_kind = match state.kinds.as_slice() {
        [kind] => Some(*kind),
        _ => None,
    };
    let mut backoff = BACKOFF.0;
    let mut need_list = true;
    loop {
        if sender.is_closed() {
            return;
        }
        if need_list {
            if !send_all(&sender, state.on_resync_started()).await {
                return;
            }
            match store.list(single_kind, None).await {
                Ok(listing) => {
                    if !send_all(&sender, state.on_listed(listing)).await {
                        return;
                    }
                    need_list = false;
                    backoff = BACKOFF.0;
                }
                Err(err) => {
                    tracing::warn!(url = store.url(), error = %err, "syncer list failed; retrying");
                    if !send_all(&sender, state.on_disconnected()).await {
                        return;
                    }
                    backoff = pause(backoff).await;
                    continue;
                }
            }
        }
        let mut watch = match store.watch(single_kind, state.revision()).await {
            Ok(watch) => {
                if !send_all(&sender, state.on_reconnected()).await {
                    return;
                }
                watch
            }
            Err(DatastoreError::RevisionTooOld { .. }) => {
                tracing::info!(
                    url = store.url(),
                    rev = state.revision(),
                    "watch revision compacted; resyncing"
                );
                need_list = true;
                continue;
            }
            Err(err) => {
                tracing::warn!(url = store.url(), error = %err, "syncer watch failed; retrying");
                if !send_all(&sender, state.on_disconnected()).await {
                    return;
                }
                backoff = pause(backoff).await;
                continue;
            }
        };
        loop {
            match watch.next().await {
                Some(Ok(batch)) => {
                    backoff = BACKOFF.0;
                    // A batch after an interruption (possibly empty) says the watch is back.
                    if !send_all(&sender, state.on_reconnected()).await
                        || !send_all(&sender, state.on_events(batch)).await
                    {
                        return;
                    }
                }
                // The watch reconnects by itself and misses nothing: only the status changes.
                Some(Err(DatastoreError::Interrupted { reason, .. })) => {
                    tracing::warn!(url = store.url(), %reason, "watch interrupted; it reconnects by itself");
                    if !send_all(&sender, state.on_disconnected()).await {
                        return;
                    }
                }
                Some(Err(DatastoreError::RevisionTooOld { .. })) => {
                    tracing::info!(
                        url = store.url(),
                        rev = state.revision(),
                        "watch fell behind compaction; resyncing"
                    );
                    need_list = true;
                    break;
                }
                Some(Err(err)) => {
                    tracing::warn!(url = store.url(), error = %err, "watch dropped; watching again");
                    if !send_all(&sender, state.on_disconnected()).await {
                        return;
                    }
                    backoff = pause(backoff).await;
                    break;
                }
                None => {
                    backoff = pause(backoff).await;
                    break;
                }
            }
        }
    }
}

async fn pause(current: Duration) -> Duration {
    tokio::time::sleep(current).await;
    (current * 2).min(BACKOFF.1)
}
