//! The storage seam: an ordered key-value store with atomic conditional transactions, prefix
//! scans and a change-notification stream. sled (embedded, default) implements it now;
//! PostgreSQL (scale-out) implements the same trait and runs the same conformance suite
//! (`tests/common/storage_conformance.rs`).
//!
//! Contract every implementation keeps:
//! - `commit` is atomic (all writes or none) and applies only if every condition holds at commit
//!   time; otherwise it returns [`StorageError::Conflict`] and changes nothing.
//! - `commit` returns `Ok` only once the writes are durable (survive a kill -9) — unless the
//!   transaction is marked [`Txn::lazy`] on a backend that honours it (sled; PostgreSQL commits
//!   every transaction synchronously): then it is durable within the backend's flush interval
//!   (sled: 500 ms). Lazy is only for writes whose loss in a crash fails closed (a new lease:
//!   losing it only invalidates the credential that names it).
//! - After a successful commit, its `notify` payload is delivered to every subscriber; a failed
//!   commit delivers nothing.
//! - `scan_prefix` returns keys in ascending byte order.

pub mod audit_table;
pub mod postgres;
pub mod sled_store;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use postgres::PgStorage;
pub use sled_store::SledStorage;

/// Delivered to subscribers in place of changes that were lost (a replica cut off from a
/// shared store for longer than its change log keeps them): a subscriber that shows changes to
/// clients must end its streams with an error so they re-read.
pub const RESYNC: &[u8] = b"keygate:resync";

/// What a storage operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A condition of the transaction did not hold; nothing was written.
    #[error("storage conflict: the data changed concurrently")]
    Conflict,
    /// The backend failed (I/O, connection lost).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The data disk is full: writes fail until space is freed; reads keep working.
    #[error("{0}")]
    Full(String),
}

/// One atomic, conditional unit of writes.
#[derive(Debug, Default, Clone)]
pub struct Txn {
    /// Each key must currently hold exactly this value (`None` = must be absent).
    pub conditions: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Writes applied in order (`None` = delete).
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Delivered to subscribers once the commit is durable.
    pub notify: Option<Vec<u8>>,
    /// Acknowledge before the writes are flushed (see the module docs).
    pub lazy: bool,
}

impl Txn {
    /// Requires `key` to hold `value` (`None`: absent) when the transaction commits.
    pub fn expect(mut self, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) -> Self {
        self.conditions.push((key.into(), value));
        self
    }

    /// Sets `key` to `value`.
    pub fn put(mut self, key: impl Into<Vec<u8>>, value: Vec<u8>) -> Self {
        self.writes.push((key.into(), Some(value)));
        self
    }

    /// Removes `key`.
    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.writes.push((key.into(), None));
        self
    }

    /// Adds `other`'s conditions and writes (after this one's) so both commit as one.
    pub fn merge(mut self, other: Txn) -> Self {
        self.lazy &= other.lazy;
        self.conditions.extend(other.conditions);
        self.writes.extend(other.writes);
        if other.notify.is_some() {
            self.notify = other.notify;
        }
        self
    }

    /// Acknowledges before flushing: only for writes whose loss in a crash fails closed.
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// Attaches a change notification.
    pub fn notify(mut self, payload: Vec<u8>) -> Self {
        self.notify = Some(payload);
        self
    }
}

/// Sizes reported on `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    /// Number of keys.
    pub keys: u64,
    /// Bytes the store occupies on disk (0 where not known).
    pub bytes_on_disk: u64,
}

/// What a backend with a connection pool and a change log reports on `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct BackendStats {
    /// Connections open in the pool.
    pub pool_open: u64,
    /// Of those, idle.
    pub pool_idle: u64,
    /// Most connections the pool opens.
    pub pool_max: u64,
    /// Reads (get, scan) done, and the seconds they took in all.
    pub reads: u64,
    /// Seconds the reads took, summed.
    pub read_seconds: f64,
    /// Commits done.
    pub commits: u64,
    /// Seconds the commits took, summed (serialization retries included).
    pub commit_seconds: f64,
    /// Milliseconds from the commit of the last change delivered to its delivery here.
    pub change_lag_ms: i64,
}

/// An ordered key-value store, the only thing keygate persists through.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// A short name for logs and metrics ("sled", "postgres").
    fn backend(&self) -> &'static str;
    /// Whether other keygate processes (replicas) share this store: then nothing may be
    /// acknowledged that exists only in this process's memory.
    fn shared(&self) -> bool {
        false
    }
    /// The schema version of a backend with one (0: none).
    fn schema_version(&self) -> i32 {
        0
    }
    /// Pool, latency and change-log figures (`None`: the backend has none).
    fn backend_stats(&self) -> Option<BackendStats> {
        None
    }
    /// Reads one key.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// All keys starting with `prefix`, ascending.
    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;
    /// Applies `txn` atomically and durably, or returns `Conflict` and changes nothing.
    async fn commit(&self, txn: Txn) -> Result<(), StorageError>;
    /// Every key and value at one point in time (no commit half in it), ascending: for backups.
    async fn snapshot(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;
    /// A stream of the `notify` payloads of committed transactions.
    fn subscribe(&self) -> broadcast::Receiver<Vec<u8>>;
    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<(), StorageError>;
    /// Sizes for metrics.
    async fn stats(&self) -> Result<StoreStats, StorageError>;
}
