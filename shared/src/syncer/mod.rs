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
