//! The embedded default store: sled in a local directory.
//!
//! sled does not make an `insert` durable by itself (a kill right after loses it), so every
//! commit is followed by a flush before it is acknowledged. Every sled call runs on the blocking
//! pool, never on an async worker: a stuck disk stalls store calls, not the daemon.
//!
//! sled's error after a failed write (ENOSPC) is sticky: every later write fails, even once
//! space is freed, and sled cannot be reopened while the disk is full. So after a failed write
//! the store is *broken*: writes answer at once with the disk named; reads keep being served
//! from the open store, except of the keys the failed write touched (sled applied it in memory
//! though it never became durable: those reads fail rather than show it); a recovery thread
//! probes the disk every half second and, once a write fits again, reopens the store from
//! what is durable on disk (forgetting the failed write) and clears the broken state.
use super::{Storage, StorageError, StoreStats, Txn};
use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// sled-backed [`Storage`].
pub struct SledStorage {
    inner: Arc<Inner>,
    events: broadcast::Sender<Vec<u8>>,
}

struct Inner {
    dir: PathBuf,
    db: RwLock<Option<sled::Db>>,
    /// Bumped by every reopen; callers wait on it while the store is closed.
    generation: watch::Sender<u64>,
    /// A write failed; cleared by the reopen.
    broken: AtomicBool,
    /// Keys of failed writes (in sled's memory, not on disk) until the reopen.
    poisoned: Mutex<HashSet<Vec<u8>>>,
    /// Commits hold it shared; a snapshot holds it alone, so it sees no commit half done
    /// (sled's iterators are not point-in-time).
    snapshot: Arc<RwLock<()>>,
}

/// Bytes the recovery probe must be able to write (and sync) before the store is reopened.
const PROBE_BYTES: usize = 256 * 1024;

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// ENOSPC (28) and EDQUOT (122): the disk, not the store, is the problem.
fn is_disk_full(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if matches!(io.raw_os_error(), Some(28 | 122)))
        || e.to_string().contains("No space left")
}

fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(Some(500))
        // sled's default page cache is 1 GiB; keygate's working set is small
        .cache_capacity(64 * 1024 * 1024)
        .open()
}

impl Inner {
    fn current(&self) -> Option<sled::Db> {
        match self.db.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, db: Option<sled::Db>) -> Option<sled::Db> {
        let mut g = match self.db.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::replace(&mut *g, db)
    }

    fn poisoned(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        match self.poisoned.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Can a write fit on the disk again? Writes, syncs and removes a probe file.
    fn space_again(&self) -> bool {
        use std::io::Write;
        let probe = self.dir.join(".keygate-space-probe");
        let ok = std::fs::File::create(&probe)
            .and_then(|mut f| {
                f.write_all(&vec![0u8; PROBE_BYTES])?;
                f.sync_all()
            })
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }

    /// Waits for space, then closes the broken store and opens it again from disk (retried:
    /// in-flight calls hold the old handle, and with it sled's file lock, for a moment).
    fn recover(self: Arc<Self>) {
        while !self.space_again() {
            std::thread::sleep(Duration::from_millis(500));
        }
        let old = self.set(None);
        drop(old);
        let mut wait = Duration::from_millis(20);
        loop {
            match open_db(&self.dir) {
                Ok(db) => {
                    self.set(Some(db));
                    self.poisoned().clear();
                    self.broken.store(false, Ordering::SeqCst);
                    self.generation.send_modify(|g| *g += 1);
                    tracing::warn!(dir = %self.dir.display(), "store reopened after a write failure");
                    return;
                }
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "store reopen failed; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

impl SledStorage {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = open_db(dir)
            .map_err(|e| StorageError::Backend(format!("opening {}: {e}", dir.display())))?;
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db: RwLock::new(Some(db)),
                generation: watch::channel(0).0,
                broken: AtomicBool::new(false),
                poisoned: Mutex::new(HashSet::new()),
                snapshot: Arc::default(),
            }),
            events,
        })
    }

    /// The open store; while it is being reopened, waits up to 5 s for it.
    async fn db(&self) -> Result<sled::Db, StorageError> {
        let mut rx = self.inner.generation.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(db) = self.inner.current() {
                return Ok(db);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(StorageError::Backend(format!(
                    "the store in {} is being reopened after a write failure",
                    self.inner.dir.display()
                )));
            }
        }
    }

    /// A write of `keys` failed: mark them, start the recovery (once) and say why.
    fn write_failed(&self, e: &sled::Error, keys: Vec<Vec<u8>>) -> StorageError {
        self.inner.poisoned().extend(keys);
        if !self.inner.broken.swap(true, Ordering::SeqCst) {
            tracing::error!(dir = %self.inner.dir.display(), error = %e, "store write failed: writes are refused until the store is reopened");
            let inner = self.inner.clone();
            if let Err(err) = std::thread::Builder::new()
                .name("keygate-sled-recover".into())
                .spawn(move || inner.recover())
            {
                self.inner.broken.store(false, Ordering::SeqCst);
                tracing::error!(error = %err, "cannot start the store recovery");
            }
        }
        if is_disk_full(e) {
            self.full()
        } else {
            backend(e)
        }
    }

    fn full(&self) -> StorageError {
        StorageError::Full(format!(
            "the data disk at {} is full or failing: writes wait for the store to be reopened",
            self.inner.dir.display()
        ))
    }

    /// A read of `key` while the store is broken and a failed write touched it.
    fn refuse_poisoned(&self, key: &[u8]) -> Result<(), StorageError> {
        if self.inner.broken.load(Ordering::SeqCst) && self.inner.poisoned().contains(key) {
            return Err(self.full());
        }
        Ok(())
    }

    /// Runs `f` on the blocking pool with the open store.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(sled::Db) -> T + Send + 'static,
    ) -> Result<T, StorageError> {
        let db = self.db().await?;
        tokio::task::spawn_blocking(move || f(db))
            .await
            .map_err(backend)
    }
}

#[async_trait]
impl Storage for SledStorage {
    fn backend(&self) -> &'static str {
        "sled"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.refuse_poisoned(key)?;
        // a point read runs on the calling worker, not the blocking pool: it is a lookup in
        // sled's page cache (microseconds), and the hand-off to a pool thread and back cost
        // more than the read (two thread wake-ups per read: docs/performance.md). A page that
        // is not cached blocks this worker for one read from the disk.
        let db = self.db().await?;
        db.get(key).map(|v| v.map(|v| v.to_vec())).map_err(backend)
    }

    async fn snapshot(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let lock = self.inner.snapshot.clone();
        self.blocking(move |db| {
            let _alone = lock.write();
            db.iter()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(backend)
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        if self.inner.broken.load(Ordering::SeqCst)
            && self.inner.poisoned().iter().any(|k| k.starts_with(prefix))
        {
            return Err(self.full());
        }
        let prefix = prefix.to_vec();
        self.blocking(move |db| {
            db.scan_prefix(prefix)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
                .collect()
        })
        .await?
    }

    async fn commit(&self, txn: Txn) -> Result<(), StorageError> {
        if self.inner.broken.load(Ordering::SeqCst) {
            return Err(self.full());
        }
        let keys: Vec<Vec<u8>> = txn.writes.iter().map(|(k, _)| k.clone()).collect();
        let lazy = txn.lazy;
        let notify = txn.notify.clone();
        let snapshot = self.inner.snapshot.clone();
        let result: Result<bool, sled::Error> = self
            .blocking(move |db| {
                let _no_snapshot_meanwhile = snapshot.read();
                let r: Result<(), TransactionError<()>> = db.transaction(|t| {
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
                match r {
                    Ok(()) => {
                        // acknowledge only what survives a crash (lazy: sled's flusher, 500 ms)
                        if !lazy {
                            db.flush()?;
                        }
                        Ok(true)
                    }
                    Err(TransactionError::Abort(())) => Ok(false),
                    Err(TransactionError::Storage(e)) => Err(e),
                }
            })
            .await?;
        match result {
            Ok(true) => {}
            Ok(false) => return Err(StorageError::Conflict),
            Err(e) => return Err(self.write_failed(&e, keys)),
        }
        if let Some(payload) = notify {
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
        if self.inner.broken.load(Ordering::SeqCst) {
            return Err(self.full());
        }
        match self.blocking(|db| db.flush()).await? {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_failed(&e, Vec::new())),
        }
    }

    async fn stats(&self) -> Result<StoreStats, StorageError> {
        self.blocking(|db| {
            Ok(StoreStats {
                keys: db.len() as u64,
                bytes_on_disk: db.size_on_disk().map_err(backend)?,
            })
        })
        .await?
    }
}
