//! Sealed version records remembered in memory, so that a read costs the store one lookup (the
//! metadata, always read fresh: it decides what may be served) instead of two.
//!
//! Why this cannot serve what the store would not: a readable version's record never changes
//! content — version numbers are never reused, a version is sealed once, and rewrapping under a
//! new KEK keeps the plaintext — and an entry is used only when the fresh metadata still lists
//! that version as readable and with the creation time the entry was stored with. A pending
//! version (a rotation's, which a rollback can discard) is never cached. What the cache holds
//! is ciphertext, as in the store; entries of destroyed, deleted or pruned versions are dropped
//! as their change events arrive (from any replica), and all of them on a resync.
use super::model::{ChangeEvent, ChangeKind, VersionRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Entries kept before the cache starts over.
const CAPACITY: usize = 16_384;

/// path → version → (creation time, record). Nested so a lookup borrows the path (no
/// allocation on the read path).
type Entries = HashMap<String, HashMap<u64, (u64, Arc<VersionRecord>)>>;

#[derive(Default)]
struct Held {
    entries: Entries,
    /// Versions held, over all paths.
    len: usize,
}

/// See the module docs.
#[derive(Default)]
pub struct RecordCache {
    held: Mutex<Held>,
}

impl RecordCache {
    /// The record of `path` at `version`, if cached with `created_at`.
    pub fn get(&self, path: &str, version: u64, created_at: u64) -> Option<Arc<VersionRecord>> {
        let h = self.held.lock().ok()?;
        match h.entries.get(path).and_then(|v| v.get(&version)) {
            Some((at, r)) if *at == created_at => Some(r.clone()),
            _ => None,
        }
    }

    /// Remembers a readable version's record.
    pub fn insert(&self, path: &str, version: u64, created_at: u64, record: Arc<VersionRecord>) {
        if let Ok(mut h) = self.held.lock() {
            if h.len >= CAPACITY {
                *h = Held::default();
            }
            let fresh = h
                .entries
                .entry(path.to_string())
                .or_default()
                .insert(version, (created_at, record))
                .is_none();
            h.len += usize::from(fresh);
        }
    }

    /// Forgets one version.
    pub fn forget(&self, path: &str, version: u64) {
        if let Ok(mut h) = self.held.lock() {
            let Some(v) = h.entries.get_mut(path) else {
                return;
            };
            let gone = v.remove(&version).is_some();
            if v.is_empty() {
                h.entries.remove(path);
            }
            h.len -= usize::from(gone);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        if let Ok(mut h) = self.held.lock() {
            *h = Held::default();
        }
    }

    /// Entries held (for tests).
    pub fn len(&self) -> usize {
        self.held.lock().map(|h| h.len).unwrap_or(0)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one change notification of the store: versions that can no longer be read are
    /// forgotten; anything that is not a list of secret events (a resync) forgets everything.
    pub fn on_change(&self, payload: &[u8]) {
        if payload == crate::storage::RESYNC {
            self.clear();
            return;
        }
        let Ok(events) = serde_json::from_slice::<Vec<ChangeEvent>>(payload) else {
            // another kind of notification (leases, signing keys): nothing of ours
            return;
        };
        for ev in events {
            match ev.kind {
                ChangeKind::Destroyed | ChangeKind::Deleted | ChangeKind::Pruned => {
                    self.forget(&ev.path, ev.version)
                }
                ChangeKind::Created | ChangeKind::Undeleted => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(c: &str) -> Arc<VersionRecord> {
        Arc::new(VersionRecord {
            format: 1,
            kek_id: "k".into(),
            wrapped_dek: "d".into(),
            ciphertext: c.into(),
        })
    }

    #[test]
    fn used_only_with_the_same_creation_time_and_dropped_by_events() {
        let c = RecordCache::default();
        c.insert("a/b", 1, 100, rec("x"));
        assert_eq!(c.get("a/b", 1, 100).unwrap().ciphertext, "x");
        // another creation time: another version that happens to have the number
        assert!(c.get("a/b", 1, 101).is_none());
        assert!(c.get("a/b", 2, 100).is_none());
        let ev = |kind| {
            serde_json::to_vec(&vec![ChangeEvent {
                path: "a/b".into(),
                version: 1,
                kind,
                at: 0,
            }])
            .unwrap()
        };
        c.on_change(&ev(ChangeKind::Created));
        assert_eq!(c.len(), 1);
        c.on_change(&ev(ChangeKind::Destroyed));
        assert!(c.is_empty());
        c.insert("a/b", 1, 100, rec("x"));
        c.on_change(crate::storage::RESYNC);
        assert!(c.is_empty());
        // counted over paths; a re-insert is not a second entry
        c.insert("a/b", 1, 100, rec("x"));
        c.insert("a/b", 1, 100, rec("x"));
        c.insert("a/c", 4, 100, rec("y"));
        assert_eq!(c.len(), 2);
        c.forget("a/c", 4);
        c.forget("a/c", 4);
        assert_eq!(c.len(), 1);
        assert!(c.get("a/c", 4, 100).is_none());
    }
}
