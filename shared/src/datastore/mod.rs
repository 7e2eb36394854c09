//! The datastore: one async trait over three backends (SQLite, etcd v3, and later the
//! Kubernetes API), with the same revision semantics everywhere. See
//! `docs/design/datastore.md`.
//!
//! - Every write gets a revision from one counter that only grows; each object remembers the
//!   revision of its last write (`mod_revision`).
//! - Updates and deletes may be conditional on that revision (compare-and-swap); a mismatch
//!   is [`DatastoreError::Conflict`].
//! - [`Datastore::txn`] applies several operations atomically, under one revision.
//! - A list returns the revision it was taken at; a watch from that revision delivers exactly
//!   the later changes, in order, in batches of one revision each. A watch from a revision
//!   that has been compacted away fails with [`DatastoreError::RevisionTooOld`]: the caller
//!   must list again (the [`crate::syncer`] does).

#[cfg(feature = "runtime")]
pub mod cni_credentials;
#[cfg(feature = "runtime")]
pub mod etcd;
#[cfg(feature = "runtime")]
pub mod kubernetes;
#[cfg(feature = "runtime")]
pub mod sqlite;

use crate::resource::{Key, Kind};
use std::collections::BTreeMap;

/// A datastore revision. Revisions only grow; 0 is "before any write".
pub type Revision = i64;

/// An object as stored, with the revision of its last write.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Where it is.
    pub key: Key,
    /// The object (a resource's JSON form).
    pub value: serde_json::Value,
    /// Revision of its last write.
    pub revision: Revision,
}

/// The result of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// The objects, ordered by key.
    pub items: Vec<Stored>,
    /// The store's revision when the list was taken: watch from here.
    pub revision: Revision,
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// It was created.
    Added,
    /// It was updated.
    Modified,
    /// It was deleted.
    Deleted,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Added, modified or deleted.
    pub event_type: EventType,
    /// The object's key.
    pub key: Key,
    /// The revision of the change.
    pub revision: Revision,
    /// The new value; for a delete, the last value when the backend knows it.
    pub value: Option<serde_json::Value>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnOp {
    /// Create; fails with AlreadyExists if the key exists.
    Create {
        /// Where.
        key: Key,
        /// What.
        value: serde_json::Value,
    },
    /// Update an existing object, only if its revision is `expected` (when given).
    Update {
        /// Where.
        key: Key,
        /// What.
        value: serde_json::Value,
        /// The revision the object must have.
        expected: Option<Revision>,
    },
    /// Delete an existing object, only if its revision is `expected` (when given).
    Delete {
        /// Where.
        key: Key,
        /// The revision the object must have.
        expected: Option<Revision>,
    },
}

impl TxnOp {
    /// The key the operation touches.
    pub fn key(&self) -> &Key {
        match self {
            TxnOp::Create { key, .. } | TxnOp::Update { key, .. } | TxnOp::Delete { key, .. } => {
                key
            }
        }
    }
}

/// Why a datastore operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DatastoreError {
    /// The object does not exist.
    #[error("{key} not found")]
    NotFound {
        /// The missing object.
        key: Key,
    },
    /// The object exists already.
    #[error("{key} already exists")]
    AlreadyExists {
        /// The existing object.
        key: Key,
    },
    /// Compare-and-swap failed: the object changed since it was read.
    #[error("{key} was modified concurrently (expected revision {expected}, found {actual})")]
    Conflict {
        /// The object.
        key: Key,
        /// The revision the write was conditional on.
        expected: Revision,
        /// The revision it has now.
        actual: Revision,
    },
    /// A watch asked for history that has been compacted away: list again.
    #[error("revision {requested} has been compacted (oldest available is after {compacted}); list again")]
    RevisionTooOld {
        /// The revision asked for.
        requested: Revision,
        /// The compaction point.
        compacted: Revision,
    },
    /// The transaction is malformed (e.g. it touches one key twice).
    #[error("invalid transaction: {reason}")]
    InvalidTxn {
        /// Why.
        reason: String,
    },
    /// The URL does not name a datastore Twill knows.
    #[error("bad datastore URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The datastore cannot be reached or opened.
    #[error("cannot reach the datastore at {url}: {reason}")]
    Unavailable {
        /// The datastore.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The datastore's content is not what Twill wrote.
    #[error("the datastore at {url} is corrupt: {reason}")]
    Corrupt {
        /// The datastore.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The object cannot be written on this backend (the Kubernetes datastore derives it).
    #[error("{key} cannot be written: {reason}")]
    NotWritable {
        /// The object.
        key: Key,
        /// Why.
        reason: String,
    },
    /// A watch lost its connection and is reconnecting by itself: it goes on, nothing is lost;
    /// the next batch (possibly empty) says it is back.
    #[error("the watch on {url} is interrupted ({reason}); reconnecting")]
    Interrupted {
        /// The datastore.
        url: String,
        /// What happened.
        reason: String,
    },
    /// Any other backend failure.
    #[error("datastore error at {url}: {reason}")]
    Backend {
        /// The datastore.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// A parsed datastore URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreUrl {
    /// `sqlite:PATH`: the embedded store, one file shared by the processes of a machine.
    Sqlite {
        /// The database file.
        path: std::path::PathBuf,
    },
    /// `etcd://HOST:PORT[,HOST:PORT…]`: etcd v3; `etcds://HOST:PORT[,…]?ca=PATH[&cert=PATH&key=PATH]`:
    /// etcd v3 over TLS, with a client certificate when etcd demands one.
    Etcd {
        /// `http://HOST:PORT` or `https://HOST:PORT` endpoints.
        endpoints: Vec<String>,
        /// The TLS files (`etcds://`).
        tls: Option<EtcdTls>,
    },
    /// `kubernetes` (KUBECONFIG, `~/.kube/config` or the pod's service account) or
    /// `kubernetes:PATH` (that kubeconfig): the Kubernetes API.
    Kubernetes {
        /// The kubeconfig named in the URL.
        kubeconfig: Option<std::path::PathBuf>,
    },
}

/// The files of a TLS connection to etcd: Calico's `etcdCACertFile`, `etcdCertFile` and
/// `etcdKeyFile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificate (PEM).
    pub ca: std::path::PathBuf,
    /// The client certificate and its key (PEM), for an etcd started with
    /// `--client-cert-auth`.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The default datastore of a machine.
pub const DEFAULT_URL: &str = "sqlite:/var/lib/twill/twill.db";

impl DatastoreUrl {
    /// Parses `sqlite:PATH`, `etcd://HOST:PORT[,HOST:PORT…]` or `kubernetes`.
    pub fn parse(url: &str) -> Result<DatastoreUrl, DatastoreError> {
        let bad = |reason: &str| DatastoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad(
                    "sqlite: needs a file path, e.g. sqlite:/var/lib/twill/twill.db",
                ));
            }
            return Ok(DatastoreUrl::Sqlite { path: path.into() });
        }
        let etcd = url
            .strip_prefix("etcd://")
            .map(|rest| (rest, false))
            .or_else(|| url.strip_prefix("etcds://").map(|rest| (rest, true)));
        if let Some((rest, secure)) = etcd {
            let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
            let tls = if secure {
                Some(parse_etcd_tls(query).map_err(|reason| bad(&reason))?)
            } else if !query.is_empty() {
                return Err(bad(
                    "etcd:// takes no parameters; TLS files go with etcds://HOST:PORT?ca=PATH&cert=PATH&key=PATH",
                ));
            } else {
                None
            };
            let scheme = if secure { "https" } else { "http" };
            let mut endpoints = Vec::new();
            for host in hosts.trim_end_matches('/').split(',') {
                let valid = host
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !valid {
                    return Err(bad(&format!("{host:?} is not HOST:PORT")));
                }
                endpoints.push(format!("{scheme}://{host}"));
            }
            return Ok(DatastoreUrl::Etcd { endpoints, tls });
        }
        if url == "kubernetes" {
            return Ok(DatastoreUrl::Kubernetes { kubeconfig: None });
        }
        if let Some(path) = url.strip_prefix("kubernetes:") {
            if path.is_empty() {
                return Err(bad(
                    "kubernetes: needs a kubeconfig path, or use kubernetes alone",
                ));
            }
            return Ok(DatastoreUrl::Kubernetes {
                kubeconfig: Some(path.into()),
            });
        }
        Err(bad(
            "expected sqlite:PATH, etcd://HOST:PORT[,HOST:PORT...], etcds://HOST:PORT[,...]?ca=PATH&cert=PATH&key=PATH, kubernetes or kubernetes:KUBECONFIG",
        ))
    }
}

/// The parameters of an `etcds://` URL: `ca=PATH` (required), `cert=PATH` and `key=PATH`
/// (together or not at all).
fn parse_etcd_tls(query: &str) -> Result<EtcdTls, String> {
    let mut files: BTreeMap<&str, std::path::PathBuf> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("parameter {pair:?} is not NAME=PATH"));
        };
        if !matches!(name, "ca" | "cert" | "key") {
            return Err(format!(
                "unknown parameter {name:?}; etcds:// takes ca, cert and key"
            ));
        }
        if value.is_empty() {
            return Err(format!("{name} needs a file path"));
        }
        if files.insert(name, value.into()).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    let ca = files
        .remove("ca")
        .ok_or("etcds:// needs ca=PATH, the CA that signed etcd's certificate")?;
    let identity = match (files.remove("cert"), files.remove("key")) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err("cert=PATH needs key=PATH, its private key".into()),
        (None, Some(_)) => return Err("key=PATH needs cert=PATH, its certificate".into()),
    };
    Ok(EtcdTls { ca, identity })
}

/// Checks that a transaction touches each key at most once.
pub fn check_txn(ops: &[TxnOp]) -> Result<(), DatastoreError> {
    let mut seen = std::collections::BTreeSet::new();
    for op in ops {
        if !seen.insert(op.key()) {
            return Err(DatastoreError::InvalidTxn {
                reason: format!("{} appears twice", op.key()),
            });
        }
    }
    Ok(())
}

/// The kind whose plural is `plural`.
pub fn kind_from_plural(plural: &str) -> Option<Kind> {
    Kind::ALL.iter().copied().find(|k| k.plural() == plural)
}

#[cfg(feature = "runtime")]
mod runtime;
#[cfg(feature = "runtime")]
pub use self::runtime::{connect, Datastore, Watch};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_urls_name_their_scheme_and_tls_files() {
        assert_eq!(
            DatastoreUrl::parse("etcd://198.18.0.1:2379,198.18.0.2:2379").unwrap(),
            DatastoreUrl::Etcd {
                endpoints: vec![
                    "http://198.18.0.1:2379".into(),
                    "http://198.18.0.2:2379".into()
                ],
                tls: None
            }
        );
        assert_eq!(
            DatastoreUrl::parse("etcds://198.18.0.1:2379?ca=/a/ca.crt&cert=/a/c.crt&key=/a/c.key")
                .unwrap(),
            DatastoreUrl::Etcd {
                endpoints: vec!["https://198.18.0.1:2379".into()],
                tls: Some(EtcdTls {
                    ca: "/a/ca.crt".into(),
                    identity: Some(("/a/c.crt".into(), "/a/c.key".into())),
                })
            }
        );
        assert_eq!(
            DatastoreUrl::parse("etcds://h:1?ca=/ca").unwrap(),
            DatastoreUrl::Etcd {
                endpoints: vec!["https://h:1".into()],
                tls: Some(EtcdTls {
                    ca: "/ca".into(),
                    identity: None
                })
            }
        );
    }

    #[test]
    fn a_bad_etcds_url_says_what_is_missing() {
        let reason = |url: &str| match DatastoreUrl::parse(url) {
            Err(DatastoreError::BadUrl { reason, .. }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        assert!(reason("etcds://h:1").contains("needs ca=PATH"));
        assert!(reason("etcds://h:1?ca=/c&cert=/x").contains("needs key=PATH"));
        assert!(reason("etcds://h:1?ca=/c&key=/x").contains("needs cert=PATH"));
        assert!(reason("etcds://h:1?ca=/c&password=x").contains("unknown parameter \"password\""));
        assert!(reason("etcds://h:1?ca=").contains("ca needs a file path"));
        assert!(reason("etcds://h:1?ca=/a&ca=/b").contains("given twice"));
        assert!(reason("etcd://h:1?ca=/a").contains("etcd:// takes no parameters"));
        assert!(reason("etcds://h?ca=/a").contains("\"h\" is not HOST:PORT"));
    }
}
