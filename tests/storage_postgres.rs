//! The PostgreSQL backend runs the shared storage conformance suite against the real server
//! (`KEYGATE_TEST_POSTGRES_URL`), each test on its own fresh database, plus what only a shared
//! database has: several storages (replicas) on one database, concurrent migration, a schema
//! newer than this build, change notification across replicas and after a lost connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "common/pg.rs"]
mod pg;
#[path = "common/storage_conformance.rs"]
mod storage_conformance;

use keygate::storage::postgres::config::PgConfig;
use keygate::storage::postgres::schema;
use keygate::storage::{PgStorage, Storage, StorageError, Txn};
use std::sync::Arc;
use std::time::Duration;

fn config(url: &str) -> PgConfig {
    pg::store_config(url)
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_conformance() {
    let (db, url) = pg::fresh_database().await;
    let s: Arc<dyn Storage> = Arc::new(PgStorage::open(&config(&url)).await.unwrap());
    storage_conformance::run_all(s, "t1/").await;
    pg::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_migrate_once_share_writes_and_hear_each_others_changes() {
    let (db, url) = pg::fresh_database().await;
    // three replicas starting at the same time on an empty database: one migration, no error
    let cfg = config(&url);
    let opened = futures::future::join_all((0..3).map(|_| PgStorage::open(&cfg))).await;
    let replicas: Vec<Arc<PgStorage>> = opened.into_iter().map(|r| Arc::new(r.unwrap())).collect();
    for r in &replicas {
        assert_eq!(r.schema_version(), schema::VERSION);
    }
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    // subscribed before the first change: a subscriber that joins later may still get changes
    // its replica's follower had not delivered yet
    let mut rx_a = a.subscribe();
    let mut rx_b = b.subscribe();
    let mut rx_c = c.subscribe();
    // a write through A is read through B at once
    a.commit(
        Txn::default()
            .put(b"k/1".to_vec(), b"v1".to_vec())
            .notify(b"ev-1".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(b.get(b"k/1").await.unwrap(), Some(b"v1".to_vec()));
    // check-and-set across replicas: B's stale expectation conflicts and writes nothing
    c.commit(
        Txn::default()
            .expect(b"k/1".to_vec(), Some(b"v1".to_vec()))
            .put(b"k/1".to_vec(), b"v2".to_vec())
            .notify(b"ev-2".to_vec()),
    )
    .await
    .unwrap();
    let r = b
        .commit(
            Txn::default()
                .expect(b"k/1".to_vec(), Some(b"v1".to_vec()))
                .put(b"k/other".to_vec(), b"x".to_vec())
                .notify(b"ev-never".to_vec()),
        )
        .await;
    assert!(matches!(r, Err(StorageError::Conflict)), "{r:?}");
    assert_eq!(a.get(b"k/other").await.unwrap(), None);
    // every replica hears every change, once, in commit order
    for rx in [&mut rx_a, &mut rx_b, &mut rx_c] {
        let mut got = Vec::new();
        while got.len() < 2 {
            got.push(
                tokio::time::timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .expect("change delivered within 5 s")
                    .unwrap(),
            );
        }
        assert_eq!(got, [b"ev-1".to_vec(), b"ev-2".to_vec()]);
        assert!(rx.try_recv().is_err(), "a failed commit notified");
    }
    // concurrent notifying writers on two replicas: every change delivered in one order
    let mut tasks = Vec::new();
    for (i, r) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                r.commit(
                    Txn::default()
                        .put(format!("w/{i}/{n}").into_bytes(), vec![1])
                        .notify(format!("{i}:{n}").into_bytes()),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen_a = Vec::new();
    let mut seen_c = Vec::new();
    while seen_a.len() < 100 {
        seen_a.push(
            tokio::time::timeout(Duration::from_secs(5), rx_a.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    while seen_c.len() < 100 {
        seen_c.push(
            tokio::time::timeout(Duration::from_secs(5), rx_c.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        seen_a, seen_c,
        "replicas saw the changes in different orders"
    );
    for i in 0..2 {
        let mine: Vec<String> = seen_a
            .iter()
            .map(|e| String::from_utf8(e.clone()).unwrap())
            .filter(|e| e.starts_with(&format!("{i}:")))
            .collect();
        let want: Vec<String> = (0..50).map(|n| format!("{i}:{n}")).collect();
        assert_eq!(mine, want, "writer {i}'s changes out of order or missing");
    }
    drop(replicas);
    pg::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_is_used_when_declared_compatible_and_refused_otherwise() {
    let (db, url) = pg::fresh_database().await;
    drop(PgStorage::open(&config(&url)).await.unwrap());
    let c = pg::connect(&url).await.unwrap();
    // the next release's additive migration: this build keeps working on it (a rollback)
    c.execute(
        "UPDATE keygate_schema SET version = $1, compatible_from = $2 WHERE id = 1",
        &[&(schema::VERSION + 1), &schema::VERSION],
    )
    .await
    .unwrap();
    let s = PgStorage::open(&config(&url))
        .await
        .expect("runs on a compatible newer schema");
    assert_eq!(s.schema_version(), schema::VERSION + 1);
    s.commit(Txn::default().put(b"compat/k".to_vec(), b"v".to_vec()))
        .await
        .unwrap();
    drop(s);
    let still: (i32, i32) = {
        let r = c
            .query_one(
                "SELECT version, compatible_from FROM keygate_schema WHERE id = 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        still,
        (schema::VERSION + 1, schema::VERSION),
        "not migrated back"
    );
    // a migration this build would misread: refused, naming both versions
    c.execute(
        "UPDATE keygate_schema SET compatible_from = $1 WHERE id = 1",
        &[&(schema::VERSION + 1)],
    )
    .await
    .unwrap();
    let e = PgStorage::open(&config(&url)).await.err().expect("refused");
    let m = e.to_string();
    assert!(
        m.contains(&format!("schema is version {}", schema::VERSION + 1))
            && m.contains(&format!("knows version {}", schema::VERSION)),
        "{m}"
    );
    pg::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_made_while_the_follower_is_cut_off_are_delivered_after_it_reconnects() {
    let (db, url) = pg::fresh_database().await;
    let a = PgStorage::open(&config(&url)).await.unwrap();
    let b = PgStorage::open(&config(&url)).await.unwrap();
    let mut rx = b.subscribe();
    // end the followers' connections (theirs is the one whose last query read the change
    // log); each must reconnect and read on from where it was
    tokio::time::sleep(Duration::from_millis(700)).await;
    let admin = pg::admin().await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'keygate'
               AND query LIKE 'SELECT seq, payload,%keygate_changes%'",
            &[&db],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 2, "both followers' connections ended");
    for n in 0..20u8 {
        a.commit(Txn::default().put(vec![b'x', n], vec![n]).notify(vec![n]))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("changes delivered after the reconnect")
                .unwrap(),
        );
    }
    assert_eq!(got, (0..20u8).map(|n| vec![n]).collect::<Vec<_>>());
    drop((a, b));
    pg::drop_database(&db).await;
}

#[test]
fn a_password_in_the_url_is_refused() {
    let e = PgConfig::check(
        "postgres://kg:hunter2@127.0.0.1/kg",
        None,
        "verify-full",
        None,
        8,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(!e.to_string().contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_in_the_change_log_is_announced_not_skipped_silently() {
    let (db, url) = pg::fresh_database().await;
    let b = PgStorage::open(&config(&url)).await.unwrap();
    let mut rx = b.subscribe();
    // rows pruned while a replica was cut off: the next row it finds is not the one it expects
    let c = pg::connect(&url).await.unwrap();
    c.batch_execute(
        "UPDATE keygate_change_seq SET seq = seq + 2 WHERE id = 1;
         INSERT INTO keygate_changes (seq, payload)
             SELECT seq, 'after-gap'::bytea FROM keygate_change_seq WHERE id = 1;
         NOTIFY keygate_changes;",
    )
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        keygate::storage::RESYNC,
        "the gap is announced first"
    );
    let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next, b"after-gap");
    drop(b);
    pg::drop_database(&db).await;
}
