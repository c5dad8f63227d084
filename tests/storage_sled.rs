//! The sled backend runs the shared storage conformance suite, plus reopen durability.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "common/storage_conformance.rs"]
mod storage_conformance;

use keygate::storage::{SledStorage, Storage, Txn};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread")]
async fn sled_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(SledStorage::open(dir.path()).unwrap());
    storage_conformance::run_all(s, "t1/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_commits_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStorage::open(dir.path()).unwrap();
        for i in 0..100u32 {
            s.commit(Txn::default().put(format!("k{i}").into_bytes(), i.to_be_bytes().to_vec()))
                .await
                .unwrap();
        }
        // dropped without an explicit flush: every commit was already durable
    }
    let s = SledStorage::open(dir.path()).unwrap();
    assert_eq!(s.scan_prefix(b"k").await.unwrap().len(), 100);
    assert_eq!(
        s.get(b"k42").await.unwrap(),
        Some(42u32.to_be_bytes().to_vec())
    );
}
