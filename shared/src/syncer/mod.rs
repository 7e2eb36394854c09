//! The syncer: list + watch with resync, as Calico's watcher-syncer does it.
//!
//! [`SyncerState`] is the pure core: it holds what the consumer has been told and turns lists
//! and watch batches into [`Update`]s. After a resync (a new list, e.g. because the watch's
//! revision was compacted) it reports exactly the differences: objects that changed, new
//! ones, and synthetic deletes for objects that vanished meanwhile; nothing twice. The async
//! driver ([`driver`]) feeds it from a [`crate::datastore::Datastore`].

#[cfg(feature = "runtime")]
pub mod driver;

use std::collections::BTreeMap;

use crate::datastore::{Event, EventType, Listing, Revision};
use crate::resource::{Key, Kind};

/// Where the syncer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    /// Not yet listed, or the connection to the datastore is lost (the view stays that of
    /// the last revision seen; InSync follows once watching works again).
    WaitForDatastore,
    /// Listing (first time, or again after a dropped watch).
    ResyncInProgress,
    /// The consumer's view equals a consistent snapshot of the store; watching.
    InSync,
}

/// What the consumer is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The status changed.
    Status(SyncStatus),
    /// The consumer's view is that of this store revision (sent after each list, just
    /// before InSync; after that, each change carries its revision).
    Revision(Revision),
    /// An object is new or changed (`value` set) or gone (`value` None).
    Changed {
        /// The object.
        key: Key,
        /// Revision of the change (for a synthetic delete, the list's revision).
        revision: Revision,
        /// The new value; None for a delete.
        value: Option<serde_json::Value>,
    },
}

/// Which objects a view holds, at which revisions, as one short string: two views with the
/// same objects at the same revisions have the same summary, whatever order they were built
/// in. A node publishes the summary of the view it applied; a tool that lists the datastore
/// computes the same and knows the node is caught up, where revisions alone cannot say (the
/// Kubernetes API's resourceVersions count writes to every kind, watched or not, and each
/// kind's watch stream advances by itself).
#[derive(Debug, Default, Clone)]
pub struct ViewDigest {
    revisions: BTreeMap<Key, Revision>,
    hash: u64,
}

impl ViewDigest {
    /// The digest of these objects.
    pub fn of<'a>(objects: impl IntoIterator<Item = (&'a Key, Revision)>) -> ViewDigest {
        let mut digest = ViewDigest::default();
        for (key, revision) in objects {
            digest.set(key, Some(revision));
        }
        digest
    }

    /// `key` is now at `revision` (None: gone).
    pub fn set(&mut self, key: &Key, revision: Option<Revision>) {
        let old = match revision {
            Some(revision) => self.revisions.insert(key.clone(), revision),
            None => self.revisions.remove(key),
        };
        if let Some(old) = old {
            self.hash ^= entry_hash(key, old);
        }
        if let Some(revision) = revision {
            self.hash ^= entry_hash(key, revision);
        }
    }

    /// `COUNT:HASH`.
    pub fn summary(&self) -> String {
        format!("{}:{:016x}", self.revisions.len(), self.hash)
    }
}

/// FNV-1a over the key and revision, then a finalizer that spreads every bit (XOR-combining
/// raw FNV values would let similar keys cancel out).
fn entry_hash(key: &Key, revision: Revision) -> u64 {
    let text = format!("{key}\0{revision}");
    let mut hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The pure core of the syncer.
#[derive(Debug)]
pub struct SyncerState {
    kinds: Vec<Kind>,
    cache: BTreeMap<Key, (Revision, serde_json::Value)>,
    revision: Revision,
    status: SyncStatus,
}

impl SyncerState {
    /// A syncer for these kinds (empty: all kinds).
    pub fn new(kinds: Vec<Kind>) -> SyncerState {
        SyncerState {
            kinds,
            cache: BTreeMap::new(),
            revision: 0,
            status: SyncStatus::WaitForDatastore,
        }
    }

    /// Whether the syncer follows objects of `kind`.
    pub fn wants(&self, kind: Kind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    /// The revision to watch from.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The current status.
    pub fn status(&self) -> SyncStatus {
        self.status
    }

    /// The consumer's view: every object it has been told of, with its revision.
    pub fn objects(&self) -> impl Iterator<Item = (&Key, &(Revision, serde_json::Value))> {
        self.cache.iter()
    }

    /// A (re)list is starting.
    pub fn on_resync_started(&mut self) -> Vec<Update> {
        self.set_status(SyncStatus::ResyncInProgress)
    }

    /// The datastore cannot be reached (a list or watch failed): a consumer that was in
    /// sync hears WaitForDatastore.
    pub fn on_disconnected(&mut self) -> Vec<Update> {
        if self.status != SyncStatus::InSync {
            return Vec::new();
        }
        self.set_status(SyncStatus::WaitForDatastore)
    }

    /// A watch was established again after [`SyncerState::on_disconnected`] (no list was
    /// needed): InSync again.
    pub fn on_reconnected(&mut self) -> Vec<Update> {
        if self.status != SyncStatus::WaitForDatastore || self.revision == 0 {
            return Vec::new();
        }
        self.set_status(SyncStatus::InSync)
    }

    /// A list arrived: report what differs from the consumer's view — changed and new
    /// objects first, then synthetic deletes of what vanished (so a consumer acting on each
    /// update never goes through a state with an old object gone and its replacement not yet
    /// there) — then InSync.
    pub fn on_listed(&mut self, listing: Listing) -> Vec<Update> {
        let mut updates = Vec::new();
        let mut listed = BTreeMap::new();
        for item in listing
            .items
            .into_iter()
            .filter(|item| self.wants(item.key.kind))
        {
            listed.insert(item.key, (item.revision, item.value));
        }
        let vanished: Vec<Key> = self
            .cache
            .keys()
            .filter(|key| !listed.contains_key(*key))
            .cloned()
            .collect();
        for (key, (revision, value)) in listed {
            let unchanged = self
                .cache
                .get(&key)
                .is_some_and(|(known, _)| *known == revision);
            if !unchanged {
                updates.push(Update::Changed {
                    key: key.clone(),
                    revision,
                    value: Some(value.clone()),
                });
                self.cache.insert(key, (revision, value));
            }
        }
        for key in vanished {
            self.cache.remove(&key);
            updates.push(Update::Changed {
                key,
                revision: listing.revision,
                value: None,
            });
        }
        self.revision = listing.revision;
        updates.push(Update::Revision(listing.revision));
        updates.extend(self.set_status(SyncStatus::InSync));
        updates
    }

    /// A watch batch arrived (one revision).
    pub fn on_events(&mut self, events: Vec<Event>) -> Vec<Update> {
        let mut updates = Vec::new();
        for event in events {
            self.revision = self.revision.max(event.revision);
            if !self.wants(event.key.kind) {
                continue;
            }
            match (event.event_type, event.value) {
                (EventType::Deleted, _) | (_, None) => {
                    if self.cache.remove(&event.key).is_some() {
                        updates.push(Update::Changed {
                            key: event.key,
                            revision: event.revision,
                            value: None,
                        });
                    }
                }
                (_, Some(value)) => {
                    let seen = self
                        .cache
                        .get(&event.key)
                        .is_some_and(|(known, _)| *known >= event.revision);
                    if !seen {
                        self.cache
                            .insert(event.key.clone(), (event.revision, value.clone()));
                        updates.push(Update::Changed {
                            key: event.key,
                            revision: event.revision,
                            value: Some(value),
                        });
                    }
                }
            }
        }
        updates
    }

    fn set_status(&mut self, status: SyncStatus) -> Vec<Update> {
        if self.status == status {
            return Vec::new();
        }
        self.status = status;
        vec![Update::Status(status)]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::datastore::Stored;

    fn key(name: &str) -> Key {
        Key::cluster(Kind::GlobalNetworkSet, name)
    }

    fn stored(name: &str, revision: Revision) -> Stored {
        Stored {
            key: key(name),
            value: json!({ "rev": revision }),
            revision,
        }
    }

    #[test]
    fn a_view_digest_depends_on_the_objects_and_revisions_not_the_order() {
        let (a, b, c) = (key("a"), key("b"), key("c"));
        // Built by changes, in one order, with an object that came and went.
        let mut built = ViewDigest::default();
        built.set(&b, Some(1));
        built.set(&c, Some(2));
        built.set(&a, Some(3));
        built.set(&b, Some(4));
        built.set(&c, None);
        built.set(&c, Some(5));
        // Listed, in another order.
        let listed = ViewDigest::of([(&c, 5), (&a, 3), (&b, 4)]);
        assert_eq!(built.summary(), listed.summary());
        assert!(built.summary().starts_with("3:"));
        // One revision apart, one object more or less: different.
        assert_ne!(
            ViewDigest::of([(&c, 5), (&a, 3), (&b, 5)]).summary(),
            listed.summary()
        );
        assert_ne!(
            ViewDigest::of([(&a, 3), (&b, 4)]).summary(),
            listed.summary()
        );
        // Deleting what is not there changes nothing.
        let mut same = listed.clone();
        same.set(&key("d"), None);
        assert_eq!(same.summary(), listed.summary());
    }

    #[test]
    fn resync_reports_only_differences_and_synthetic_deletes() {
        let mut state = SyncerState::new(vec![Kind::GlobalNetworkSet]);
        state.on_resync_started();
        let first = state.on_listed(Listing {
            items: vec![stored("a", 1), stored("b", 2), stored("c", 3)],
            revision: 3,
        });
        assert_eq!(first.len(), 5, "three objects, the revision, then InSync");
        // Meanwhile: b changed, c deleted, d created; a untouched.
        state.on_resync_started();
        let second = state.on_listed(Listing {
            items: vec![stored("a", 1), stored("b", 5), stored("d", 6)],
            revision: 7,
        });
        // Updates first, then deletions.
        assert_eq!(
            second,
            vec![
                Update::Changed {
                    key: key("b"),
                    revision: 5,
                    value: Some(json!({"rev": 5}))
                },
                Update::Changed {
                    key: key("d"),
                    revision: 6,
                    value: Some(json!({"rev": 6}))
                },
                Update::Changed {
                    key: key("c"),
                    revision: 7,
                    value: None
                },
                Update::Revision(7),
                Update::Status(SyncStatus::InSync),
            ]
        );
        assert_eq!(state.revision(), 7);
    }

    #[test]
    fn a_lost_connection_is_reported_and_a_new_watch_brings_in_sync_back() {
        let mut state = SyncerState::new(vec![Kind::GlobalNetworkSet]);
        assert!(state.on_disconnected().is_empty(), "not yet in sync");
        assert!(state.on_reconnected().is_empty(), "never listed");
        state.on_resync_started();
        state.on_listed(Listing {
            items: vec![stored("a", 1)],
            revision: 1,
        });
        assert_eq!(
            state.on_disconnected(),
            [Update::Status(SyncStatus::WaitForDatastore)]
        );
        assert!(state.on_disconnected().is_empty(), "said once");
        assert_eq!(state.on_reconnected(), [Update::Status(SyncStatus::InSync)]);
        assert!(state.on_reconnected().is_empty());
    }

    #[test]
    fn events_after_a_list_are_not_repeated_and_other_kinds_are_ignored() {
        let mut state = SyncerState::new(vec![Kind::GlobalNetworkSet]);
        state.on_listed(Listing {
            items: vec![stored("a", 4)],
            revision: 4,
        });
        let stale = Event {
            event_type: EventType::Modified,
            key: key("a"),
            revision: 4,
            value: Some(json!({})),
        };
        assert!(state.on_events(vec![stale]).is_empty());
        let other = Event {
            event_type: EventType::Added,
            key: Key::cluster(Kind::Tier, "t"),
            revision: 5,
            value: Some(json!({})),
        };
        assert!(state.on_events(vec![other]).is_empty());
        assert_eq!(state.revision(), 5);
        let gone = Event {
            event_type: EventType::Deleted,
            key: key("a"),
            revision: 6,
            value: None,
        };
        assert_eq!(
            state.on_events(vec![gone]),
            vec![Update::Changed {
                key: key("a"),
                revision: 6,
                value: None
            }]
        );
        let twice = Event {
            event_type: EventType::Deleted,
            key: key("a"),
            revision: 6,
            value: None,
        };
        assert!(state.on_events(vec![twice]).is_empty());
    }
}
