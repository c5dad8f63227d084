//! Replicas on a PostgreSQL cluster of their own that is restarted under load: not ready while
//! it is down, serving again after, and no acknowledged write lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "common/cluster.rs"]
mod cluster;
mod common;

use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_database_restart_under_load_loses_no_acknowledged_write() {
    let db = cluster::Cluster::create("host all all 127.0.0.1/32 trust\nlocal all postgres peer\n");
    db.ctl("start");
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", db.port);
    let env = TestEnv::new();
    let r1 = env.start_config(&env.replica_config("r1", &url));
    let r2 = env.start_config(&env.replica_config("r2", &url));
    let conn = keygate::client::Conn {
        addr: format!("https://{},https://{}", r1.grpc, r2.grpc),
        cacert: Some(env.paths.ca.clone()),
        client_cert: Some(env.paths.admin_cert.clone()),
        client_key: Some(env.paths.admin_key.clone()),
        credential: None,
    };
    let ch = keygate::client::connect(&conn).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // writers: each acknowledged write is remembered with its value
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (ch, stop, acked) = (ch.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = SecretsClient::new(ch);
            let (mut n, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let path = format!("load/w{w}/{n}");
                let value = format!("v-{w}-{n}");
                match c
                    .put(pb::PutSecretRequest {
                        path: path.clone(),
                        fields: HashMap::from([("v".to_string(), value.as_bytes().to_vec())]),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push((path, value)),
                    Err(e) => {
                        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                n += 1;
            }
            failed
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = acked.lock().unwrap().len();
    // restart the database under the load: fast shutdown ends every connection
    db.ctl("stop");
    let down = Instant::now();
    let t = Instant::now();
    while https_get(&env, r2.http, "/readyz").await.0 == 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "r2 ready 10 s into the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready = down.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    db.ctl("start");
    let up = Instant::now();
    for d in [&r1, &r2] {
        while https_get(&env, d.http, "/readyz").await.0 != 200 {
            assert!(
                up.elapsed() < Duration::from_secs(15),
                "not ready after the restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ready_again = up.elapsed();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > before, "writes resumed after the restart");
    // every acknowledged write is there, through either replica
    let mut c = SecretsClient::new(ch.clone());
    for (path, value) in &acked {
        let got = c
            .get(pb::GetSecretRequest {
                path: path.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged write {path} lost: {e}"))
            .into_inner();
        assert_eq!(got.fields["v"], value.as_bytes());
    }
    println!(
        "database restarted under load: not ready after {unready:?}, ready again {ready_again:?} after it came back; {} writes acknowledged, all present; {failed} refused UNAVAILABLE during the outage",
        acked.len()
    );
    for d in [r1, r2] {
        assert_eq!(d.stop(), 0);
    }
}
