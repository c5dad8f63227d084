//! Single-use tokens (`refuse_jti_replay`): one marker per `jti`, taken only when a credential
//! is issued, kept until the token's `exp` + leeway, bounded in number.
//!
//! Markers live under `j/<issuer>/<jti>` holding the time (s) they may be swept. Checking a
//! token ([`ReplayStore::seen`]) writes nothing, so `Admin.Explain` and a refused exchange leave
//! it usable; [`ReplayStore::consume`] takes the marker with check-and-set, once. The store
//! never holds more than `max_entries` markers: past that, new single-use tokens are refused
//! (fail closed, `issuer_unavailable`) until the sweep frees room; it cannot grow without bound
//! because every marker expires within the issuer's maximum token lifetime.
use crate::clock::Clock;
use crate::storage::{Storage, StorageError, Txn};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Default bound on stored markers.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// A marker to take: key and the time it may be swept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    key: Vec<u8>,
    until: u64,
}

/// Why a marker could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    /// Already taken: the token was used.
    #[error("token already used (jti replay)")]
    Replayed,
    /// `max_entries` markers are held.
    #[error("replay store is full ({0} markers, identity.max_replay_entries)")]
    Full(usize),
    /// The storage failed.
    #[error("replay store unavailable: {0}")]
    Store(String),
}

/// The replay markers.
pub struct ReplayStore {
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    max_entries: usize,
    /// Markers held: counted exactly at every sweep, incremented by every take.
    held: AtomicUsize,
}

impl ReplayStore {
    /// Over `storage`, holding at most `max_entries` markers.
    pub fn new(storage: Arc<dyn Storage>, clock: Arc<dyn Clock>, max_entries: usize) -> Self {
        Self {
            storage,
            clock,
            max_entries: max_entries.max(1),
            held: AtomicUsize::new(0),
        }
    }

    /// The marker of `jti` from `issuer`, to keep until `until` (s).
    pub fn marker(issuer: &str, jti: &str, until: u64) -> Marker {
        Marker {
            key: format!("j/{issuer}/{jti}").into_bytes(),
            until,
        }
    }

    /// Was this marker taken already? Writes nothing.
    pub async fn seen(&self, m: &Marker) -> Result<bool, ReplayError> {
        self.storage
            .get(&m.key)
            .await
            .map(|v| v.is_some())
            .map_err(|e| ReplayError::Store(e.to_string()))
    }

    /// Takes the marker, once (a second take is `Replayed`).
    pub async fn consume(&self, m: &Marker) -> Result<(), ReplayError> {
        let held = self.held.load(Ordering::Relaxed);
        if held >= self.max_entries {
            return Err(ReplayError::Full(held));
        }
        match self
            .storage
            .commit(
                Txn::default()
                    .expect(m.key.clone(), None)
                    .put(m.key.clone(), m.until.to_string().into_bytes()),
            )
            .await
        {
            Ok(()) => {
                self.held.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(StorageError::Conflict) => Err(ReplayError::Replayed),
            Err(e) => Err(ReplayError::Store(e.to_string())),
        }
    }

    /// Removes markers past their `exp` + leeway and recounts what is held. Returns how many
    /// were removed.
    pub async fn sweep(&self) -> Result<usize, StorageError> {
        let now = self.clock.now_millis() / 1000;
        let mut removed = 0;
        let mut kept = 0;
        for (k, v) in self.storage.scan_prefix(b"j/").await? {
            let until: u64 = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if until < now {
                match self
                    .storage
                    .commit(Txn::default().expect(k.clone(), Some(v)).delete(k))
                    .await
                {
                    Ok(()) => removed += 1,
                    Err(_) => kept += 1,
                }
            } else {
                kept += 1;
            }
        }
        self.held.store(kept, Ordering::Relaxed);
        Ok(removed)
    }

    /// Markers held (as of the last sweep plus takes since).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;

    #[tokio::test]
    async fn taken_once_bounded_and_swept_at_exp_plus_leeway() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::storage::SledStorage::open(dir.path()).unwrap());
        let clock = Arc::new(FixedClock::at(1_000_000));
        let r = ReplayStore::new(storage, clock.clone(), 3);
        let m = |j: &str, until| ReplayStore::marker("i", j, until);
        assert!(!r.seen(&m("a", 1010)).await.unwrap());
        r.consume(&m("a", 1010)).await.unwrap();
        assert!(r.seen(&m("a", 1010)).await.unwrap());
        assert_eq!(r.consume(&m("a", 1010)).await, Err(ReplayError::Replayed));
        r.consume(&m("b", 2000)).await.unwrap();
        r.consume(&m("c", 2000)).await.unwrap();
        // full: a fourth single-use token is refused, not stored
        assert_eq!(r.consume(&m("d", 2000)).await, Err(ReplayError::Full(3)));
        assert!(!r.seen(&m("d", 2000)).await.unwrap());
        // not yet past exp + leeway: nothing swept
        assert_eq!(r.sweep().await.unwrap(), 0);
        assert_eq!(r.held(), 3);
        clock.advance(11_000); // now 1011 s: "a" (until 1010) goes
        assert_eq!(r.sweep().await.unwrap(), 1);
        assert_eq!(r.held(), 2);
        r.consume(&m("d", 2000)).await.unwrap();
    }
}
