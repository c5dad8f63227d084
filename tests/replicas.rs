//! Several real keygate daemons on one PostgreSQL database (a fresh one per test), each serving
//! every RPC: what one replica acknowledges, the others serve.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn put(path: &str, v: &str) -> pb::PutSecretRequest {
    pb::PutSecretRequest {
        path: path.into(),
        fields: HashMap::from([("password".to_string(), v.as_bytes().to_vec())]),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_one_replica_are_read_and_watched_through_the_others() {
    let env = TestEnv::new();
    let (db, url) = pg::fresh_database().await;
    let ra = env.replica_config("r1", &url);
    let rb = env.replica_config("r2", &url);
    let rc = env.replica_config("r3", &url);
    let (a, b, c) = (env.start_config(&ra), env.start_config(&rb), env.start_config(&rc));
    let mut ca = SecretsClient::new(env.admin_channel(&a).await);
    let mut cb = SecretsClient::new(env.admin_channel(&b).await);
    let mut cc = SecretsClient::new(env.admin_channel(&c).await);
    let mut watch_b = cb
        .watch(pb::WatchRequest {
            paths: vec![],
            prefixes: vec!["app/".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch_c = cc
        .watch(pb::WatchRequest {
            paths: vec!["app/db".into()],
            prefixes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut delays = Vec::new();
    for round in 1..=20u64 {
        let value = marker("replica");
        let acked = Instant::now();
        let r = ca.put(put("app/db", &value)).await.unwrap().into_inner();
        let acked = acked.elapsed();
        assert_eq!(r.version, round);
        // no stale read after an acknowledged write, on either other replica
        for cl in [&mut cb, &mut cc] {
            let got = cl
                .get(pb::GetSecretRequest {
                    path: "app/db".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.version, round);
            assert_eq!(got.fields["password"], value.as_bytes());
        }
        let t = Instant::now();
        for w in [&mut watch_b, &mut watch_c] {
            // past max_versions (10) a write also prunes the oldest version: one more event
            let mut kinds = Vec::new();
            let want = if round > 10 { 2 } else { 1 };
            while kinds.len() < want {
                let ev = tokio::time::timeout(Duration::from_secs(1), w.message())
                    .await
                    .expect("a change made through r1 reaches another replica's Watch within 1 s")
                    .unwrap()
                    .unwrap();
                assert_eq!(ev.path, "app/db");
                kinds.push((ev.kind(), ev.version));
            }
            let mut expect = vec![(pb::watch_event::Kind::Created, round)];
            if round > 10 {
                expect.push((pb::watch_event::Kind::Pruned, round - 10));
            }
            assert_eq!(kinds, expect);
        }
        delays.push(t.elapsed() + acked);
    }
    delays.sort();
    println!(
        "watch propagation across replicas (put sent -> event on both other replicas): median {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    // a write through B is read through A: every replica writes
    cb.put(put("app/other", "x")).await.unwrap();
    let got = ca
        .get(pb::GetSecretRequest {
            path: "app/other".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, 1);
    for d in [a, b, c] {
        assert_eq!(d.stop(), 0);
    }
    pg::drop_database(&db).await;
}
