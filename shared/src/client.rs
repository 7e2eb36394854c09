//! Typed access to resources in a datastore: what `twillctl` and the agents use.
//!
//! Writes of several resources are one transaction: a file is applied all or nothing. On a
//! datastore without multi-object transactions (the Kubernetes API) they are written one by
//! one after every document was checked, and a failure rolls back those already written,
//! saying exactly what happened ([`ClientError::Partial`]). The client stamps `metadata.uid` and `metadata.creationTimestamp` on create, keeps them on
//! update, and reports `metadata.resourceVersion` (the object's revision) on read; a
//! `resourceVersion` given on write is a compare-and-swap precondition.

use std::sync::Arc;

use crate::datastore::{Datastore, DatastoreError, Revision, Stored, TxnOp};
use crate::resource::{Key, Kind, Resource};

/// How a write treats existing objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create or update.
    Apply,
    /// Create only; an existing object is an error.
    Create,
    /// Update only; a missing object is an error.
    Replace,
}

/// What a write did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was created.
    Created,
    /// It was updated.
    Configured,
    /// It already had this content.
    Unchanged,
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The datastore refused or failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// A stored object does not decode as its kind.
    #[error("{key}: the stored object does not decode: {reason}")]
    Decode {
        /// The object.
        key: Key,
        /// Why.
        reason: String,
    },
    /// One write of several failed on a datastore that writes one object at a time; those
    /// written before it were rolled back (or could not be: `left` names them).
    #[error("{failed}: {cause}; nothing else was changed{}{}",
        if rolled_back.is_empty() { String::new() } else {
            format!(" ({} written before it rolled back: {})", rolled_back.len(),
                rolled_back.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        },
        if left.is_empty() { String::new() } else {
            format!("; BUT these could not be rolled back and stay as written: {}",
                left.iter().map(|(k, e)| format!("{k} ({e})")).collect::<Vec<_>>().join(", "))
        })]
    Partial {
        /// The object whose write failed.
        failed: Key,
        /// Why.
        cause: Box<DatastoreError>,
        /// Objects written before it and restored.
        rolled_back: Vec<Key>,
        /// Objects written before it that could not be restored, with why.
        left: Vec<(Key, String)>,
    },
    /// `metadata.resourceVersion` is not a revision number.
    #[error("{key}: metadata.resourceVersion {value:?} is not a revision number")]
    BadResourceVersion {
        /// The object.
        key: Key,
        /// The value given.
        value: String,
    },
}

/// How often an apply is retried when another writer got in between.
const APPLY_ATTEMPTS: usize = 5;

/// Typed resource access over any datastore.
#[derive(Debug, Clone)]
pub struct Client {
    store: Arc<dyn Datastore>,
}

/// Decodes a stored object and reports its revision as `resourceVersion`.
pub fn decode(stored: Stored) -> Result<Resource, ClientError> {
    let mut resource =
        Resource::decode(stored.key.kind, stored.value).map_err(|err| ClientError::Decode {
            key: stored.key.clone(),
            reason: err.to_string(),
        })?;
    resource.meta_mut().resource_version = Some(stored.revision.to_string());
    Ok(resource)
}

fn stored_form(resource: &Resource) -> serde_json::Value {
    let mut copy = resource.clone();
    copy.meta_mut().resource_version = None;
    copy.to_value()
}

impl Client {
    /// A client over `store`.
    pub fn new(store: Arc<dyn Datastore>) -> Client {
        Client { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// Reads one object.
    pub async fn get(&self, key: &Key) -> Result<Option<Resource>, ClientError> {
        self.store.get(key).await?.map(decode).transpose()
    }

    /// Lists objects of a kind, in one namespace or all.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<Vec<Resource>, ClientError> {
        let listing = self.store.list(Some(kind), namespace).await?;
        listing.items.into_iter().map(decode).collect()
    }

    /// Writes every resource in one transaction; returns what happened to each.
    pub async fn write_all(
        &self,
        resources: &[Resource],
        mode: WriteMode,
    ) -> Result<Vec<(Key, Outcome)>, ClientError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_write_all(resources, mode).await {
                Err(ClientError::Datastore(DatastoreError::Conflict { .. }))
                    if attempt < APPLY_ATTEMPTS
                        && resources
                            .iter()
                            .all(|r| r.meta().resource_version.is_none()) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn try_write_all(
        &self,
        resources: &[Resource],
        mode: WriteMode,
    ) -> Result<Vec<(Key, Outcome)>, ClientError> {
        let mut ops = Vec::new();
        let mut outcomes = Vec::new();
        for resource in resources {
            let key = resource.key();
            let expected =
                match &resource.meta().resource_version {
                    Some(text) => Some(text.parse::<Revision>().map_err(|_| {
                        ClientError::BadResourceVersion {
                            key: key.clone(),
                            value: text.clone(),
                        }
                    })?),
                    None => None,
                };
            let current = self.store.get(&key).await?;
            let outcome = match (mode, current) {
                (WriteMode::Create, Some(_)) => {
                    return Err(DatastoreError::AlreadyExists { key }.into())
                }
                (WriteMode::Replace, None) => return Err(DatastoreError::NotFound { key }.into()),
                (_, None) => {
                    let mut fresh = resource.clone();
                    stamp_new(&mut fresh);
                    ops.push(TxnOp::Create {
                        key: key.clone(),
                        value: stored_form(&fresh),
                    });
                    Outcome::Created
                }
                (_, Some(stored)) => {
                    let existing = decode(stored.clone())?;
                    let mut updated = resource.clone();
                    updated.meta_mut().uid = existing.meta().uid.clone();
                    updated.meta_mut().creation_timestamp =
                        existing.meta().creation_timestamp.clone();
                    let precondition = expected.unwrap_or(stored.revision);
                    if expected.is_none_or(|e| e == stored.revision)
                        && updated.without_server_fields() == existing.without_server_fields()
                    {
                        Outcome::Unchanged
                    } else {
                        ops.push(TxnOp::Update {
                            key: key.clone(),
                            value: stored_form(&updated),
                            expected: Some(precondition),
                        });
                        Outcome::Configured
                    }
                }
            };
            outcomes.push((key, outcome));
        }
        if ops.len() > 1 && !self.store.multi_object_transactions() {
            self.write_one_by_one(ops).await?;
        } else if !ops.is_empty() {
            self.store.txn(ops).await?;
        }
        Ok(outcomes)
    }

    /// Writes operations one at a time; on a failure, undoes the ones written (in reverse
    /// order, each conditional on the revision it wrote) and reports all of it.
    async fn write_one_by_one(&self, ops: Vec<TxnOp>) -> Result<(), ClientError> {
        // What undoes each write: delete what was created, put back what was updated.
        let mut undo: Vec<(Key, Option<serde_json::Value>, Revision)> = Vec::new();
        for op in ops {
            let key = op.key().clone();
            let before = match &op {
                TxnOp::Update { .. } | TxnOp::Delete { .. } => {
                    self.store.get(&key).await?.map(|s| s.value)
                }
                TxnOp::Create { .. } => None,
            };
            match self.store.txn(vec![op]).await {
                Ok(revision) => undo.push((key, before, revision)),
                Err(cause) => {
                    let mut rolled_back = Vec::new();
                    let mut left = Vec::new();
                    for (written, before, revision) in undo.into_iter().rev() {
                        let restore = match before {
                            None => TxnOp::Delete {
                                key: written.clone(),
                                expected: Some(revision),
                            },
                            Some(value) => TxnOp::Update {
                                key: written.clone(),
                                value: strip_revision(value),
                                expected: Some(revision),
                            },
                        };
                        match self.store.txn(vec![restore]).await {
                            Ok(_) => rolled_back.push(written),
                            Err(err) => left.push((written, err.to_string())),
                        }
                    }
                    return Err(ClientError::Partial {
                        failed: key,
                        cause: Box::new(cause),
                        rolled_back,
                        left,
                    });
                }
            }
        }
        Ok(())
    }

    /// Deletes every object in one transaction (one at a time, re-creating the deleted ones
    /// on a failure, where there are no multi-object transactions); each must exist.
    pub async fn delete_all(
        &self,
        keys: &[(Key, Option<Revision>)],
    ) -> Result<Revision, ClientError> {
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|(key, expected)| TxnOp::Delete {
                key: key.clone(),
                expected: *expected,
            })
            .collect();
        if ops.len() > 1 && !self.store.multi_object_transactions() {
            let mut deleted: Vec<(Key, serde_json::Value)> = Vec::new();
            let mut revision = 0;
            for op in ops {
                let key = op.key().clone();
                let before = self.store.get(&key).await?;
                match self.store.txn(vec![op]).await {
                    Ok(r) => {
                        revision = r;
                        if let Some(stored) = before {
                            deleted.push((key, stored.value));
                        }
                    }
                    Err(cause) => {
                        let mut rolled_back = Vec::new();
                        let mut left = Vec::new();
                        for (key, value) in deleted.into_iter().rev() {
                            let restore = TxnOp::Create {
                                key: key.clone(),
                                value: strip_revision(value),
                            };
                            match self.store.txn(vec![restore]).await {
                                Ok(_) => rolled_back.push(key),
                                Err(err) => left.push((key, err.to_string())),
                            }
                        }
                        return Err(ClientError::Partial {
                            failed: key,
                            cause: Box::new(cause),
                            rolled_back,
                            left,
                        });
                    }
                }
            }
            return Ok(revision);
        }
        Ok(self.store.txn(ops).await?)
    }
}

/// A stored value without a resourceVersion (to write it back as it was).
fn strip_revision(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(metadata) = value["metadata"].as_object_mut() {
        metadata.remove("resourceVersion");
    }
    value
}

/// Sets the uid and creation time of a new object.
fn stamp_new(resource: &mut Resource) {
    let meta = resource.meta_mut();
    meta.resource_version = None;
    meta.uid = Some(new_uid());
    meta.creation_timestamp = Some(now_rfc3339());
}

/// A random (version 4) UUID.
fn new_uid() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // Without /dev/urandom, fall back to the clock and pid: unique enough for an id.
        #[allow(clippy::disallowed_methods)] // The client is an edge.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes[..16]
            .copy_from_slice(&(now.as_nanos() ^ u128::from(std::process::id())).to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Now, as RFC 3339 UTC with seconds.
fn now_rfc3339() -> String {
    #[allow(clippy::disallowed_methods)] // The client is an edge.
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(seconds)
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_219_200), "2026-11-21T00:00:00Z");
        assert!(super::new_uid().len() == 36);
    }
}
