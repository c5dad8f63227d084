//! One leader among the replicas, for the work that must run once: scheduled rotations
//! (keygate's own keys included), the lease, replay-marker and database-user sweepers.
//!
//! The leader holds a lease record in the store (`sys/leader`: node, term, expiry) and renews it
//! every [`RENEW`]; a replica takes over a record whose expiry passed, with the next term. The
//! term is also written alone under [`TERM_KEY`], changed only by a takeover: a leader's
//! rotation steps commit only while that key still holds its term (the fencing token), so a
//! deposed leader that has not noticed yet (paused, partitioned) cannot commit a step. A leader
//! stops leading [`MARGIN`] before its record expires, so with clocks within that of each other
//! two replicas never both believe they lead. Takeover after a leader dies (kill -9): at most
//! [`TTL`] + [`RENEW`].
use crate::clock::Clock;
use crate::storage::{Storage, StorageError, Txn};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The leader record.
pub const KEY: &[u8] = b"sys/leader";
/// The current term alone: the fencing token leader-only writes are conditioned on.
pub const TERM_KEY: &[u8] = b"sys/leader-term";
/// How long a leader record holds without renewal.
pub const TTL: Duration = Duration::from_secs(6);
/// How often the leader renews (and a follower looks for an expired record).
pub const RENEW: Duration = Duration::from_secs(1);
/// A leader stops leading this long before its record expires.
pub const MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    node: String,
    term: u64,
    until_ms: u64,
}

/// What this replica knows of the leadership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The leader's node id, as last read (None: no live leader).
    pub leader: Option<String>,
    /// Until when `leader`'s record was valid when last read (ms since epoch).
    pub leader_until_ms: u64,
    /// This replica's term while it leads.
    pub my_term: Option<u64>,
    /// Until when (ms, this replica's clock) this replica may act as leader.
    pub lead_until_ms: u64,
}

/// The leadership of one replica.
pub struct Leadership {
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    node: String,
    view: watch::Sender<View>,
}

impl Leadership {
    /// For replica `node` over `storage`.
    pub fn new(storage: Arc<dyn Storage>, clock: Arc<dyn Clock>, node: String) -> Self {
        Self {
            storage,
            clock,
            node,
            view: watch::channel(View::default()).0,
        }
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// The leader as last seen, while its lease lasts by this replica's clock: a replica cut
    /// off from the store stops naming a leader (itself included) once that lease ran out.
    pub fn leader(&self) -> Option<String> {
        let v = self.view.borrow();
        if self.clock.now_millis() < v.leader_until_ms {
            v.leader.clone()
        } else {
            None
        }
    }

    /// Changes of the view.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    /// This replica's term if it leads now.
    pub fn term(&self) -> Option<u64> {
        let v = self.view.borrow();
        match v.my_term {
            Some(t) if self.clock.now_millis() < v.lead_until_ms => Some(t),
            _ => None,
        }
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// The condition a leader-only write carries: the term key still holds `term`.
    pub fn fence(txn: Txn, term: u64) -> Txn {
        txn.expect(TERM_KEY.to_vec(), Some(term.to_string().into_bytes()))
    }

    /// One round: renew, take over an expired record, or follow. Returns whether this replica
    /// leads afterwards.
    pub async fn step(&self) -> Result<bool, StorageError> {
        let now = self.clock.now_millis();
        let raw = self.storage.get(KEY).await?;
        let rec: Option<Record> = raw.as_deref().and_then(|r| serde_json::from_slice(r).ok());
        let until_ms = now + TTL.as_millis() as u64;
        let (next, takeover) = match &rec {
            Some(r) if r.until_ms > now && r.node != self.node => {
                self.publish(View {
                    leader: Some(r.node.clone()),
                    leader_until_ms: r.until_ms,
                    my_term: None,
                    lead_until_ms: 0,
                });
                return Ok(false);
            }
            Some(r) if r.until_ms > now => (
                Record {
                    node: self.node.clone(),
                    term: r.term,
                    until_ms,
                },
                false,
            ),
            other => (
                Record {
                    node: self.node.clone(),
                    term: other.as_ref().map(|r| r.term).unwrap_or(0) + 1,
                    until_ms,
                },
                true,
            ),
        };
        let body = serde_json::to_vec(&next)
            .map_err(|e| StorageError::Backend(format!("leader record: {e}")))?;
        let mut txn = Txn::default()
            .expect(KEY.to_vec(), raw)
            .put(KEY.to_vec(), body);
        if takeover {
            txn = txn.put(TERM_KEY.to_vec(), next.term.to_string().into_bytes());
        }
        match self.storage.commit(txn).await {
            Ok(()) => {
                if takeover {
                    tracing::info!(node = %self.node, term = next.term, "this replica leads now");
                }
                self.publish(View {
                    leader: Some(self.node.clone()),
                    leader_until_ms: until_ms,
                    my_term: Some(next.term),
                    lead_until_ms: until_ms.saturating_sub(MARGIN.as_millis() as u64),
                });
                Ok(true)
            }
            Err(StorageError::Conflict) => {
                // another replica renewed or took over first: follow it from the next round
                self.publish(View {
                    leader: None,
                    leader_until_ms: 0,
                    my_term: None,
                    lead_until_ms: 0,
                });
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn publish(&self, v: View) {
        let was = self.view.borrow().my_term;
        if was.is_some() && v.my_term.is_none() {
            tracing::warn!(node = %self.node, "this replica no longer leads");
        }
        self.view.send_replace(v);
    }

    /// Runs [`Leadership::step`] every [`RENEW`] until the task is dropped. A failed round
    /// keeps the last view, which lapses on its own at `lead_until_ms`.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "leader lease round failed");
            }
        }
    }

    /// Gives up leadership at shutdown, so another replica takes over at once.
    pub async fn resign(&self) {
        if self.term().is_none() {
            return;
        }
        if let Ok(Some(raw)) = self.storage.get(KEY).await {
            if let Ok(mut r) = serde_json::from_slice::<Record>(&raw) {
                if r.node == self.node {
                    r.until_ms = 0;
                    if let Ok(body) = serde_json::to_vec(&r) {
                        let _ = self
                            .storage
                            .commit(
                                Txn::default()
                                    .expect(KEY.to_vec(), Some(raw))
                                    .put(KEY.to_vec(), body),
                            )
                            .await;
                    }
                }
            }
        }
        self.view.send_replace(View::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Manual(AtomicU64);
    impl Clock for Manual {
        fn now_millis(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn one_leader_takeover_after_expiry_and_fencing() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(crate::storage::SledStorage::open(dir.path()).unwrap());
        let clock = Arc::new(Manual(AtomicU64::new(1_000_000)));
        let a = Leadership::new(storage.clone(), clock.clone(), "a".into());
        let b = Leadership::new(storage.clone(), clock.clone(), "b".into());
        assert!(a.step().await.unwrap());
        assert!(!b.step().await.unwrap());
        assert_eq!(b.view().leader.as_deref(), Some("a"));
        let t1 = a.term().unwrap();
        // a renews; b still follows
        clock.0.fetch_add(1000, Ordering::SeqCst);
        assert!(a.step().await.unwrap());
        assert!(!b.step().await.unwrap());
        // a stops renewing (killed): b takes over once the record expired, with a new term
        clock
            .0
            .fetch_add(TTL.as_millis() as u64 + 1, Ordering::SeqCst);
        assert!(
            !a.is_leader(),
            "a must stop leading before its record expires"
        );
        assert!(b.step().await.unwrap());
        let t2 = b.term().unwrap();
        assert!(t2 > t1);
        // a's fenced write with the old term is refused; b's goes through
        let w = |t| Leadership::fence(Txn::default().put(b"x".to_vec(), b"1".to_vec()), t);
        assert!(matches!(
            storage.commit(w(t1)).await,
            Err(StorageError::Conflict)
        ));
        storage.commit(w(t2)).await.unwrap();
        // a comes back: it follows b
        assert!(!a.step().await.unwrap());
        assert_eq!(a.view().leader.as_deref(), Some("b"));
    }
}
