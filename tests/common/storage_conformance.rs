//! The storage conformance suite: every `Storage` implementation runs exactly this.
//! Keys are namespaced under `ns` so implementations backed by a shared server can run it in
//! parallel.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate::storage::{Storage, StorageError, Txn};
use std::sync::Arc;
use std::time::Duration;

fn k(ns: &str, s: &str) -> Vec<u8> {
    format!("{ns}{s}").into_bytes()
}

pub async fn run_all(s: Arc<dyn Storage>, ns: &str) {
    get_put_overwrite_delete(&*s, ns).await;
    conditions_and_atomicity(&*s, ns).await;
    prefix_scans(&*s, ns).await;
    notifications(&*s, ns).await;
    concurrent_check_and_set(s.clone(), ns).await;
    snapshots_are_point_in_time(s.clone(), ns).await;
    s.flush().await.unwrap();
    assert!(s.stats().await.unwrap().keys > 0);
}

async fn get_put_overwrite_delete(s: &dyn Storage, ns: &str) {
    let key = k(ns, "basic/one");
    assert_eq!(s.get(&key).await.unwrap(), None);
    s.commit(Txn::default().put(key.clone(), b"v1".to_vec()))
        .await
        .unwrap();
    assert_eq!(s.get(&key).await.unwrap(), Some(b"v1".to_vec()));
    s.commit(Txn::default().put(key.clone(), b"v2".to_vec()))
        .await
        .unwrap();
    assert_eq!(s.get(&key).await.unwrap(), Some(b"v2".to_vec()));
    // empty values and binary keys are values like any other
    let bin = [ns.as_bytes(), b"basic/\x00\xff\x01"].concat();
    s.commit(Txn::default().put(bin.clone(), Vec::new()))
        .await
        .unwrap();
    assert_eq!(s.get(&bin).await.unwrap(), Some(Vec::new()));
    s.commit(Txn::default().delete(key.clone())).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap(), None);
    // deleting a missing key is not an error
    s.commit(Txn::default().delete(key.clone())).await.unwrap();
}

async fn conditions_and_atomicity(s: &dyn Storage, ns: &str) {
    let a = k(ns, "cond/a");
    let b = k(ns, "cond/b");
    // expect absent: ok once, then conflict
    s.commit(
        Txn::default()
            .expect(a.clone(), None)
            .put(a.clone(), b"1".to_vec()),
    )
    .await
    .unwrap();
    let r = s
        .commit(
            Txn::default()
                .expect(a.clone(), None)
                .put(a.clone(), b"x".to_vec()),
        )
        .await;
    assert!(matches!(r, Err(StorageError::Conflict)), "{r:?}");
    assert_eq!(s.get(&a).await.unwrap(), Some(b"1".to_vec()));
    // expect a value: wrong value conflicts and writes nothing, not even to other keys
    let r = s
        .commit(
            Txn::default()
                .expect(a.clone(), Some(b"2".to_vec()))
                .put(b.clone(), b"should-not-exist".to_vec())
                .put(a.clone(), b"3".to_vec()),
        )
        .await;
    assert!(matches!(r, Err(StorageError::Conflict)));
    assert_eq!(s.get(&b).await.unwrap(), None);
    assert_eq!(s.get(&a).await.unwrap(), Some(b"1".to_vec()));
    // right value: every write lands together
    s.commit(
        Txn::default()
            .expect(a.clone(), Some(b"1".to_vec()))
            .expect(b.clone(), None)
            .put(a.clone(), b"2".to_vec())
            .put(b.clone(), b"b".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(s.get(&a).await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(s.get(&b).await.unwrap(), Some(b"b".to_vec()));
    // a condition on one key, a delete of another
    s.commit(
        Txn::default()
            .expect(a.clone(), Some(b"2".to_vec()))
            .delete(b.clone()),
    )
    .await
    .unwrap();
    assert_eq!(s.get(&b).await.unwrap(), None);
}

async fn prefix_scans(s: &dyn Storage, ns: &str) {
    let mut txn = Txn::default();
    for key in [
        "scan/a/2",
        "scan/a/1",
        "scan/a/10",
        "scan/a0",
        "scan/b/1",
        "scan/a/\u{7f}",
    ] {
        txn = txn.put(k(ns, key), key.as_bytes().to_vec());
    }
    s.commit(txn).await.unwrap();
    let rows = s.scan_prefix(&k(ns, "scan/a/")).await.unwrap();
    let keys: Vec<String> = rows
        .iter()
        .map(|(key, _)| String::from_utf8(key[ns.len()..].to_vec()).unwrap())
        .collect();
    assert_eq!(keys, ["scan/a/1", "scan/a/10", "scan/a/2", "scan/a/\u{7f}"]);
    for (key, v) in &rows {
        assert_eq!(&key[ns.len()..], v.as_slice());
    }
    assert_eq!(s.scan_prefix(&k(ns, "scan/")).await.unwrap().len(), 6);
    assert!(s.scan_prefix(&k(ns, "scan/zzz")).await.unwrap().is_empty());
}

async fn notifications(s: &dyn Storage, ns: &str) {
    let mut rx = s.subscribe();
    let key = k(ns, "notify/x");
    s.commit(
        Txn::default()
            .put(key.clone(), b"1".to_vec())
            .notify(k(ns, "event-1")),
    )
    .await
    .unwrap();
    // a failed commit notifies nothing
    let _ = s
        .commit(
            Txn::default()
                .expect(key.clone(), None)
                .notify(k(ns, "event-failed")),
        )
        .await;
    s.commit(
        Txn::default()
            .put(key.clone(), b"2".to_vec())
            .notify(k(ns, "event-2")),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification in time")
            .unwrap();
        // other suites may share the channel: keep ours
        if ev.starts_with(ns.as_bytes()) {
            got.push(ev);
        }
    }
    assert_eq!(got, vec![k(ns, "event-1"), k(ns, "event-2")]);
}

async fn concurrent_check_and_set(s: Arc<dyn Storage>, ns: &str) {
    let key = k(ns, "cas/counter");
    s.commit(Txn::default().put(key.clone(), b"0".to_vec()))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, key) = (s.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 25 {
                let cur = s.get(&key).await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&cur).unwrap().parse().unwrap();
                let next = (n + 1).to_string().into_bytes();
                match s
                    .commit(
                        Txn::default()
                            .expect(key.clone(), Some(cur))
                            .put(key.clone(), next),
                    )
                    .await
                {
                    Ok(()) => done += 1,
                    Err(StorageError::Conflict) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        s.get(&key).await.unwrap(),
        Some(b"200".to_vec()),
        "no increment lost"
    );
}

/// A snapshot taken while multi-key transactions commit holds each of them whole or not at
/// all (every `pair/a/N` with its `pair/b/N`), in key order.
async fn snapshots_are_point_in_time(s: Arc<dyn Storage>, ns: &str) {
    let writer = {
        let (s, ns) = (s.clone(), ns.to_string());
        tokio::spawn(async move {
            for i in 0..200u32 {
                let v = i.to_be_bytes().to_vec();
                s.commit(
                    Txn::default()
                        .put(k(&ns, &format!("pair/a/{i:04}")), v.clone())
                        .put(k(&ns, &format!("pair/b/{i:04}")), v),
                )
                .await
                .unwrap();
            }
        })
    };
    let (a, b) = (k(ns, "pair/a/"), k(ns, "pair/b/"));
    let mut seen = 0;
    for _ in 0..50 {
        let snap = s.snapshot().await.unwrap();
        assert!(snap.windows(2).all(|w| w[0].0 < w[1].0), "key order");
        let pick = |p: &[u8]| {
            snap.iter()
                .filter(|(key, _)| key.starts_with(p))
                .map(|(key, v)| (key[p.len()..].to_vec(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(&a), pick(&b), "a transaction half in a snapshot");
        seen = seen.max(pick(&a).len());
        if writer.is_finished() {
            break;
        }
    }
    writer.await.unwrap();
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        snap.iter().filter(|(key, _)| key.starts_with(&a)).count(),
        200
    );
    assert!(seen > 0);
}
