//! A read costs the store one lookup once the version's sealed record is cached (the metadata
//! is read fresh every time, and decides what may be served), and the cache never serves what
//! the store would not: two secret stores on one PostgreSQL database stand for two replicas.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "common/pg.rs"]
mod pg;

use async_trait::async_trait;
use keygate::clock::SystemClock;
use keygate::secrets::envelope::Kek;
use keygate::secrets::path::SecretPath;
use keygate::secrets::{PutOptions, SecretStore, SecretsError};
use keygate::sensitive::{SecretBytes, SecretFields};
use keygate::storage::{PgStorage, Storage, StorageError, StoreStats, Txn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Counts the lookups that reach the store.
struct Counting {
    inner: Arc<dyn Storage>,
    gets: AtomicU64,
}

#[async_trait]
impl Storage for Counting {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.inner.scan_prefix(prefix).await
    }
    async fn commit(&self, txn: Txn) -> Result<(), StorageError> {
        self.inner.commit(txn).await
    }
    async fn snapshot(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.inner.snapshot().await
    }
    fn subscribe(&self) -> broadcast::Receiver<Vec<u8>> {
        self.inner.subscribe()
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush().await
    }
    async fn stats(&self) -> Result<StoreStats, StorageError> {
        self.inner.stats().await
    }
}

fn kek() -> Kek {
    Kek::from_bytes(&SecretBytes::new(vec![9; 32])).unwrap()
}

fn fields(v: &str) -> SecretFields {
    let mut f = SecretFields::new();
    f.insert("password".into(), SecretBytes::new(v.as_bytes().to_vec()));
    f
}

fn value(f: &SecretFields) -> Vec<u8> {
    f.get("password").unwrap().expose().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_reads_cost_one_lookup_and_never_outlive_the_metadata() {
    let (db, url) = pg::fresh_database().await;
    let cfg = pg::store_config(&url);
    let a_storage: Arc<dyn Storage> = Arc::new(PgStorage::open(&cfg).await.unwrap());
    let counting = Arc::new(Counting {
        inner: Arc::new(PgStorage::open(&cfg).await.unwrap()),
        gets: AtomicU64::new(0),
    });
    let a = SecretStore::open(a_storage, kek(), Arc::new(SystemClock))
        .await
        .unwrap();
    let b = SecretStore::open(counting.clone(), kek(), Arc::new(SystemClock))
        .await
        .unwrap();
    let path = SecretPath::parse("app/cached").unwrap();
    a.put(&path, &fields("one"), &PutOptions::default())
        .await
        .unwrap();

    // cold: metadata and record; warm: the metadata only
    let before = counting.gets.load(Ordering::SeqCst);
    assert_eq!(value(&b.get(&path, 0).await.unwrap().fields), b"one");
    assert_eq!(counting.gets.load(Ordering::SeqCst) - before, 2);
    for _ in 0..5 {
        let before = counting.gets.load(Ordering::SeqCst);
        let got = b.get(&path, 0).await.unwrap();
        assert_eq!((got.version, value(&got.fields)), (1, b"one".to_vec()));
        assert_eq!(counting.gets.load(Ordering::SeqCst) - before, 1);
    }

    // a new version written through A is read through B at once (fresh metadata)
    a.put(&path, &fields("two"), &PutOptions::default())
        .await
        .unwrap();
    let got = b.get(&path, 0).await.unwrap();
    assert_eq!((got.version, value(&got.fields)), (2, b"two".to_vec()));
    // version 1 destroyed through A: B refuses it at once, whether or not the change
    // notification has reached it yet
    assert_eq!(value(&b.get(&path, 1).await.unwrap().fields), b"one");
    a.destroy(&path, &[1]).await.unwrap();
    assert!(matches!(
        b.get(&path, 1).await,
        Err(SecretsError::VersionDestroyed { version: 1, .. })
    ));
    // and a soft-deleted version likewise, until undeleted
    a.delete(&path, &[2]).await.unwrap();
    assert!(matches!(
        b.get(&path, 2).await,
        Err(SecretsError::VersionDeleted { version: 2, .. })
    ));
    a.undelete(&path, &[2]).await.unwrap();
    assert_eq!(value(&b.get(&path, 2).await.unwrap().fields), b"two");
    drop((a, b));
    pg::drop_database(&db).await;
}
