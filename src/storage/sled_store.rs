//! The embedded default store: sled in a local directory.
//!
//! sled does not make an `insert` durable by itself (a kill right after loses it), so every
//! commit is followed by `flush_async` before it is acknowledged.
use super::{Storage, StorageError, StoreStats, Txn};
use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;
use tokio::sync::broadcast;

/// sled-backed [`Storage`].
pub struct SledStorage {
    db: sled::Db,
    events: broadcast::Sender<Vec<u8>>,
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl SledStorage {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(500))
            // sled's default page cache is 1 GiB; keygate's working set is small
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| StorageError::Backend(format!("opening {}: {e}", dir.display())))?;
        let (events, _) = broadcast::channel(1024);
        Ok(Self { db, events })
    }
}

#[async_trait]
impl Storage for SledStorage {
    fn backend(&self) -> &'static str {
        "sled"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.db
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    async fn commit(&self, txn: Txn) -> Result<(), StorageError> {
        let result: Result<(), TransactionError<()>> = self.db.transaction(|t| {
            for (key, expected) in &txn.conditions {
                let current = t.get(key)?;
                if current.as_deref() != expected.as_deref() {
                    return Err(ConflictableTransactionError::Abort(()));
                }
            }
            for (key, value) in &txn.writes {
                match value {
                    Some(v) => {
                        t.insert(key.as_slice(), v.as_slice())?;
                    }
                    None => {
                        t.remove(key.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(())) => return Err(StorageError::Conflict),
            Err(TransactionError::Storage(e)) => return Err(backend(e)),
        }
        // Acknowledge only what survives a crash (lazy writes: sled's own flusher, 500 ms).
        if !txn.lazy {
            self.flush().await?;
        }
        if let Some(payload) = txn.notify {
            // No subscribers is not an error.
            let _ = self.events.send(payload);
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Vec<u8>> {
        self.events.subscribe()
    }

    async fn flush(&self) -> Result<(), StorageError> {
        // sled's `flush_async` was seen to hang with two databases in one process; a
        // blocking flush on the blocking pool does not (and concurrent flushes coalesce).
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(backend)?
            .map(|_| ())
            .map_err(backend)
    }

    async fn stats(&self) -> Result<StoreStats, StorageError> {
        Ok(StoreStats {
            keys: self.db.len() as u64,
            bytes_on_disk: self.db.size_on_disk().map_err(backend)?,
        })
    }
}
