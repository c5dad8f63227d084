//! Upgrades and rollbacks on one PostgreSQL database, with two builds: "N-1" is the binary as it
//! is, "N" the same binary knowing one migration more (the test-only migration of
//! `KEYGATE_TEST_SCHEMA_AHEAD`). Replicas are replaced one at a time under load — N-1 → N, then
//! back to N-1 after N's migration ran — and clients that fail over see no failed request; a
//! migration N-1 would misread makes N-1 refuse to start, naming both versions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A replica config on fixed ports (a replaced replica comes back where clients expect it).
fn fixed_config(env: &TestEnv, name: &str, url: &str) -> (PathBuf, u16) {
    let path = env.replica_config(name, url);
    let text = std::fs::read_to_string(&path).unwrap();
    let grpc = free_port();
    let text = text
        .replacen("\"127.0.0.1:0\"", &format!("\"127.0.0.1:{grpc}\""), 1)
        .replacen(
            "\"127.0.0.1:0\"",
            &format!("\"127.0.0.1:{}\"", free_port()),
            1,
        );
    std::fs::write(&path, text).unwrap();
    (path, grpc)
}

const NEXT: &[(&str, &str)] = &[("KEYGATE_TEST_SCHEMA_AHEAD", "compatible")];

async fn wait_ready(env: &TestEnv, d: &Daemon) {
    let t = Instant::now();
    while https_get(env, d.http, "/readyz").await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(10), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn schema_version(env: &TestEnv, d: &Daemon) -> i64 {
    let out = env.cli(d, &["admin", "info", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["schema_version"].as_i64().unwrap()
}

/// Replaces `old` by a daemon of the given build on the same config (SIGTERM, then start).
async fn replace(env: &TestEnv, old: Daemon, config: &Path, build: &[(&str, &str)]) -> Daemon {
    assert_eq!(old.stop(), 0);
    let d = env.start_config_with(config, build);
    wait_ready(env, &d).await;
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_upgrade_and_rollback_under_load_fail_no_request() {
    let env = TestEnv::new();
    let (db, url) = pg::fresh_database().await;
    let (c1, p1) = fixed_config(&env, "r1", &url);
    let (c2, p2) = fixed_config(&env, "r2", &url);
    let mut r1 = env.start_config(&c1);
    let mut r2 = env.start_config(&c2);
    assert_eq!(schema_version(&env, &r1), 2);
    let ch = keygate::client::connect(&keygate::client::Conn {
        addr: format!("https://127.0.0.1:{p1},https://127.0.0.1:{p2}"),
        cacert: Some(env.paths.ca.clone()),
        client_cert: Some(env.paths.admin_cert.clone()),
        client_key: Some(env.paths.admin_key.clone()),
        credential: None,
    })
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (ch, stop, acked, errors) = (ch.clone(), stop.clone(), acked.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = SecretsClient::new(ch);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("up/w{w}/{n}");
                let value = format!("v-{w}-{n}");
                let r = c
                    .put(pb::PutSecretRequest {
                        path: path.clone(),
                        fields: HashMap::from([("v".to_string(), value.as_bytes().to_vec())]),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => acked.lock().unwrap().push((path.clone(), value)),
                    Err(e) => errors.lock().unwrap().push(format!("put {path}: {e}")),
                }
                // and a read of what was just written, through whichever replica answers
                if let Err(e) = c
                    .get(pb::GetSecretRequest {
                        path: path.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    errors.lock().unwrap().push(format!("get {path}: {e}"));
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // upgrade, one replica at a time: N migrates the schema while N-1 still serves on it
    r1 = replace(&env, r1, &c1, NEXT).await;
    assert_eq!(schema_version(&env, &r1), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    r2 = replace(&env, r2, &c2, NEXT).await;
    assert_eq!(schema_version(&env, &r2), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let upgraded = acked.lock().unwrap().len();

    // rollback to N-1 after N's migration ran: N-1 runs on the newer, compatible schema
    r1 = replace(&env, r1, &c1, &[]).await;
    assert_eq!(schema_version(&env, &r1), 3, "not migrated back");
    assert!(r1
        .log_text()
        .contains("declared compatible with it: running on it without migrating"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    r2 = replace(&env, r2, &c2, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > upgraded, "writes went on after the rollback");
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
        "rolling upgrade N-1 -> N and rollback N -> N-1 under load: {} writes (and as many reads), 0 failed requests",
        acked.len()
    );
    assert_eq!(r1.stop(), 0);
    assert_eq!(r2.stop(), 0);

    // a migration N-1 would misread (declared incompatible): N-1 refuses to start, in words
    let n = env.start_config_with(&c1, &[("KEYGATE_TEST_SCHEMA_AHEAD", "incompatible")]);
    assert_eq!(n.stop(), 0);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&c2)
        .env("KEYGATE_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the database schema is version 3, which needs keygate schema version 3 or newer; this keygate knows version 2"),
        "{err}"
    );
    pg::drop_database(&db).await;
}
