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
    let (a, b, c) = (
        env.start_config(&ra),
        env.start_config(&rb),
        env.start_config(&rc),
    );
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
    // the figures an operator watches: pool, operations, change lag, leadership
    let mut leaders = 0;
    for d in [&a, &b, &c] {
        let (status, text) = https_get(&env, d.http, "/metrics").await;
        assert_eq!(status, 200);
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(
            value("keygate_storage_pool_connections", Some(("state", "max"))),
            8.0
        );
        assert!(value("keygate_storage_pool_connections", Some(("state", "open"))) >= 1.0);
        assert!(value("keygate_storage_operations", Some(("op", "read"))) > 0.0);
        assert!(value("keygate_storage_operation_seconds", Some(("op", "read"))) > 0.0);
        let lag = value("keygate_storage_change_lag_ms", None);
        assert!((0.0..1000.0).contains(&lag), "change lag {lag} ms");
        leaders += value("keygate_leader", None) as u32;
    }
    assert_eq!(leaders, 1, "exactly one replica says it leads");
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
    // one signed chain per replica, each record naming its node; verified together
    let dirs: Vec<std::path::PathBuf> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| env.paths.dir.join(format!("audit-{n}")))
        .collect();
    let verify = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .args(["audit", "verify"])
            .args(&dirs)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = verify(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    for (chain, n) in v["chains"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["r1", "r2", "r3"])
    {
        assert_eq!(chain["ok"], true, "{chain}");
        assert_eq!(chain["nodes"], serde_json::json!([n]), "{chain}");
        assert!(chain["records"].as_u64().unwrap() > 2, "{chain}");
    }
    // r1 served the 20 writes: its chain holds more than the others
    assert!(v["chains"][0]["records"].as_u64() > v["chains"][2]["records"].as_u64());
    // the same, from the replicas' configs (the logs their [audit] sections name)
    let by_config = std::process::Command::new(BIN)
        .args(["audit", "verify", "--json"])
        .args(
            [&ra, &rb, &rc]
                .iter()
                .flat_map(|c| ["--config".as_ref(), c.as_os_str()]),
        )
        .output()
        .unwrap();
    assert!(
        by_config.status.success(),
        "{}",
        String::from_utf8_lossy(&by_config.stderr)
    );
    let w: serde_json::Value = serde_json::from_slice(&by_config.stdout).unwrap();
    for (a, b) in v["chains"]
        .as_array()
        .unwrap()
        .iter()
        .zip(w["chains"].as_array().unwrap())
    {
        assert_eq!((&a["records"], &a["nodes"]), (&b["records"], &b["nodes"]));
    }
    let tail = std::process::Command::new(BIN)
        .args(["audit", "tail", "-n", "3", "--config"])
        .arg(&rb)
        .output()
        .unwrap();
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|r| r["node"] == "r2"), "{lines:?}");
    // one tampered chain fails the whole verification and is named
    let seg = std::fs::read_dir(&dirs[1])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, text.replacen("\"node\":\"r2\"", "\"node\":\"rX\"", 1)).unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{}: FAULT", dirs[1].display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}: OK", dirs[0].display())),
        "{text}"
    );
    pg::drop_database(&db).await;
}

const AUD: &str = "keygate-replicas";
const ISS: &str = "https://ci.replicas.example";

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn exchange(
    ch: &tonic::transport::Channel,
    token: &str,
) -> Result<pb::ExchangeResponse, tonic::Status> {
    pb::token_exchange_client::TokenExchangeClient::new(ch.clone())
        .exchange(pb::ExchangeRequest {
            subject_token: token.into(),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: "ci".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn read_as(
    ch: &tonic::transport::Channel,
    token: &str,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    SecretsClient::new(ch.clone())
        .get(bearer(
            pb::GetSecretRequest {
                path: "ci/db".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_replay_markers_revocations_and_signing_keys_hold_across_replicas() {
    use common::issuer::{now, TestIssuer, TestKey};
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "replicas").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&common::issuer::ci_role_config(
        "https://keygate.replicas.test",
        ISS,
        &disc,
        AUD,
        r#"["read:ci/*"]"#,
        "refuse_jti_replay = true\n",
    ));
    let (db, url) = pg::fresh_database().await;
    let mut daemons: Vec<Daemon> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| env.start_config(&env.replica_config(n, &url)))
        .collect();
    let mut chans = Vec::new();
    for d in &daemons {
        chans.push(env.channel_as(d, None).await);
    }
    SecretsClient::new(env.admin_channel(&daemons[0]).await)
        .put(put("ci/db", "s3cret"))
        .await
        .unwrap();
    let token = |jti: &str| {
        key.sign(&serde_json::json!({
            "iss": ISS, "aud": AUD, "sub": "pipeline:deploy", "jti": jti,
            "iat": now(), "nbf": now() - 5, "exp": now() + 300,
        }))
    };

    // a credential issued by r1 works on r2 and r3 at once
    let cred = exchange(&chans[0], &token("jti-1")).await.unwrap();
    for ch in &chans[1..] {
        let got = read_as(ch, &cred.access_token).await.unwrap();
        assert_eq!(got.fields["password"], b"s3cret");
    }

    // a platform token used once on r2 is a replay on r3 (and on r1)
    let once = token("jti-2");
    exchange(&chans[1], &once).await.unwrap();
    for ch in [&chans[2], &chans[0]] {
        let e = exchange(ch, &once).await.unwrap_err();
        assert_eq!(e.message(), "token_replayed");
    }

    // r1 killed (kill -9) right after answering: its fresh credential lives on r2 and r3
    let last = exchange(&chans[0], &token("jti-3")).await.unwrap();
    daemons.remove(0).kill9();
    for ch in &chans[1..] {
        read_as(ch, &last.access_token)
            .await
            .expect("a credential acknowledged by a killed replica works on the others");
    }

    // a revocation on r2 is refused on r3 within 1 s, and ends r3's Watch of that credential
    let victim = exchange(&chans[1], &token("jti-4")).await.unwrap();
    let mut watch = SecretsClient::new(chans[2].clone())
        .watch(bearer(
            pb::WatchRequest {
                paths: vec!["ci/db".into()],
                prefixes: vec![],
            },
            &victim.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    read_as(&chans[2], &victim.access_token).await.unwrap();
    pb::leases_client::LeasesClient::new(env.admin_channel(&daemons[0]).await)
        .revoke(pb::RevokeLeaseRequest {
            lease_id: victim.lease_id.clone(),
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    let e = read_as(&chans[2], &victim.access_token).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let ended = tokio::time::timeout(Duration::from_secs(1), watch.message())
        .await
        .expect("the revoked credential's Watch on another replica ends within 1 s");
    let watch_end = revoked_at.elapsed();
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Unauthenticated);
    println!("revocation on r2 -> r3 refuses the credential at once; r3's Watch ended after {watch_end:?}");

    // a signing key rotated on r2 is on r3's JWKS within 1 s, and r3 verifies its credentials
    let jwks = |d: &Daemon| {
        let addr = d.http;
        let env = &env;
        async move {
            let (status, body) = https_get(env, addr, "/.well-known/jwks.json").await;
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    // key rotation is the leader's: wait for a survivor to take over from the killed r1
    let t = Instant::now();
    let leader = loop {
        let l = admin_info(&env, &daemons[0])["leader"].clone();
        if l == "r2" {
            break 0;
        }
        if l == "r3" {
            break 1;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no survivor leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let other = 1 - leader;
    let before = jwks(&daemons[other]).await;
    let rotated = pb::admin_client::AdminClient::new(env.admin_channel(&daemons[leader]).await)
        .rotate_signing_key(pb::RotateSigningKeyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let t = Instant::now();
    let new_kid = rotated
        .kids
        .iter()
        .find(|k| !before.contains(k))
        .expect("a new kid")
        .clone();
    loop {
        if jwks(&daemons[other]).await.contains(&new_kid) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "r3's JWKS lacks r2's new signing key after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "new signing key on another replica's JWKS after {:?}",
        t.elapsed()
    );
    let fresh = exchange(&chans[1 + leader], &token("jti-5")).await.unwrap();
    read_as(&chans[1 + other], &fresh.access_token)
        .await
        .unwrap();
    for d in daemons {
        assert_eq!(d.stop(), 0);
    }
    pg::drop_database(&db).await;
}

/// Writes `path` through a replica started and stopped for that alone, before the rotation
/// policies are configured: a policy whose secret does not exist rotates at once when a leader
/// starts (its initial version), which would race what the test does itself.
async fn seed(env: &TestEnv, url: &str, path: &str) {
    let d = env.start_config(&env.replica_config("seed", url));
    SecretsClient::new(env.admin_channel(&d).await)
        .put(put(path, "seeded"))
        .await
        .unwrap();
    assert_eq!(d.stop(), 0);
}

fn admin_info(env: &TestEnv, d: &Daemon) -> serde_json::Value {
    let out = env.cli(d, &["admin", "info", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn rotation_status(env: &TestEnv, d: &Daemon, path: &str) -> pb::RotationStatus {
    pb::admin_client::AdminClient::new(env.admin_channel(d).await)
        .get_rotation_status(pb::RotationStatusRequest {
            prefix: path.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rotations
        .into_iter()
        .find(|s| s.path == path)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_rotates_and_a_survivor_takes_over_and_resumes_the_rotation_once() {
    let env = TestEnv::new();
    let (db, url) = pg::fresh_database().await;
    seed(&env, &url, "app/rot").await;
    env.append_config(
        r#"
[[rotations]]
path = "app/rot"
every = "1h"

[rotations.fields.password]
generator = "password"
length = 24
"#,
    );
    // r1 starts first and leads; it is built to die right after a rotation's first step
    let r1 = env.start_config_with(
        &env.replica_config("r1", &url),
        &[("KEYGATE_FAULT_INJECT", "rotation-crash-after-pending")],
    );
    let t = Instant::now();
    while admin_info(&env, &r1)["leader"] != "r1" {
        assert!(t.elapsed() < Duration::from_secs(10), "r1 never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r2 = env.start_config(&env.replica_config("r2", &url));
    let r3 = env.start_config(&env.replica_config("r3", &url));
    for d in [&r2, &r3] {
        let info = admin_info(&env, d);
        assert_eq!(info["backend"], "postgres");
        assert_eq!(info["schema_version"], 2);
        assert_eq!(info["leader"], "r1");
    }
    assert_eq!(admin_info(&env, &r2)["node_id"], "r2");
    // a follower does not rotate: it says which replica does (UNAVAILABLE: a client with
    // several addresses moves on)
    let e = pb::admin_client::AdminClient::new(env.admin_channel(&r2).await)
        .rotate_secret(pb::RotateSecretRequest {
            path: "app/rot".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("r1"), "{}", e.message());
    let first = rotation_status(&env, &r2, "app/rot").await;
    // the leader rotates and dies after the pending step (its process aborts)
    // (ABORTED: the leader's first scheduling round was writing the rotation's state at that
    // moment; asked again)
    let mut admin1 = pb::admin_client::AdminClient::new(env.admin_channel(&r1).await);
    for _ in 0..50 {
        match admin1
            .rotate_secret(pb::RotateSecretRequest {
                path: "app/rot".into(),
            })
            .await
        {
            Err(e) if e.code() == tonic::Code::Aborted => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => break,
        }
    }
    let mut r1 = r1;
    let died = Instant::now();
    let code = loop {
        if let Some(code) = r1.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            died.elapsed() < Duration::from_secs(10),
            "r1 did not crash after the pending step"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!code.success(), "r1 was to crash after the pending step");
    assert_eq!(rotation_status(&env, &r2, "app/rot").await.state, "pending");
    // a survivor takes over within 10 s and finishes the rotation, once
    let leader = loop {
        let l = admin_info(&env, &r2)["leader"].clone();
        if l == "r2" || l == "r3" {
            break l;
        }
        assert!(
            died.elapsed() < Duration::from_secs(10),
            "no survivor led 10 s after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let takeover = died.elapsed();
    // r3 sees the same leader by its next lease round
    let t = Instant::now();
    while admin_info(&env, &r3)["leader"] != leader {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "r3 does not see the new leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = loop {
        let s = rotation_status(&env, &r3, "app/rot").await;
        if s.state == "idle" && s.rotations > first.rotations {
            break s;
        }
        assert!(
            died.elapsed() < Duration::from_secs(20),
            "rotation not resumed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.rotations, first.rotations + 1, "resumed exactly once");
    assert_eq!(done.current_version, first.current_version + 1);
    println!(
        "leader killed -> {leader} leads after {takeover:?}; rotation resumed and completed once"
    );
    for d in [r2, r3] {
        assert_eq!(d.stop(), 0);
    }
    pg::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_under_load_costs_clients_with_several_addresses_no_error() {
    let env = TestEnv::new();
    let (db, url) = pg::fresh_database().await;
    let mut daemons: Vec<Daemon> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| env.start_config(&env.replica_config(n, &url)))
        .collect();
    let addrs = daemons
        .iter()
        .map(|d| format!("https://{}", d.grpc))
        .collect::<Vec<_>>()
        .join(",");
    let conn = keygate::client::Conn {
        addr: addrs.clone(),
        cacert: Some(env.paths.ca.clone()),
        client_cert: Some(env.paths.admin_cert.clone()),
        client_key: Some(env.paths.admin_key.clone()),
        credential: None,
    };
    let ch = keygate::client::connect(&conn).await.unwrap();
    SecretsClient::new(ch.clone())
        .put(put("app/load", "v"))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (ch, stop) = (ch.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, Vec::new());
            let mut c = SecretsClient::new(ch);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c
                    .get(pb::GetSecretRequest {
                        path: "app/load".into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // the first address (where every call goes first) dies under load
    daemons.remove(0).kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut errors) = (0, Vec::new());
    for t in tasks {
        let (o, e) = t.await.unwrap();
        ok += o;
        errors.extend(e);
    }
    println!(
        "reads through {addrs}: {ok} ok, {} errors, r1 killed midway",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "clients saw errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(ok > 100, "{ok}");
    // the CLI takes the same list: the dead first address is skipped
    let out = std::process::Command::new(BIN)
        .args(["get", "app/load"])
        .env("KEYGATE_ADDR", &addrs)
        .env("KEYGATE_CACERT", &env.paths.ca)
        .env("KEYGATE_CLIENT_CERT", &env.paths.admin_cert)
        .env("KEYGATE_CLIENT_KEY", &env.paths.admin_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in daemons {
        assert_eq!(d.stop(), 0);
    }
    pg::drop_database(&db).await;
}

async fn set_connectable(db: &str, allowed: bool) {
    let c = pg::admin().await;
    c.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {allowed}"))
        .await
        .unwrap();
    if !allowed {
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    }
}

async fn ready(env: &TestEnv, d: &Daemon) -> bool {
    https_get(env, d.http, "/readyz").await.0 == 200
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_makes_replicas_unready_and_unavailable_then_they_serve_again() {
    let env = TestEnv::new();
    let (db, url) = pg::fresh_database().await;
    let r1 = env.start_config(&env.replica_config("r1", &url));
    let r2 = env.start_config(&env.replica_config("r2", &url));
    let value = marker("outage");
    SecretsClient::new(env.admin_channel(&r1).await)
        .put(put("app/kept", &value))
        .await
        .unwrap();
    assert!(ready(&env, &r2).await);
    let mut c2 = SecretsClient::new(env.admin_channel(&r2).await);

    // the database goes away (no connection accepted, every open one ended)
    set_connectable(&db, false).await;
    let down = Instant::now();
    while ready(&env, &r2).await {
        assert!(
            down.elapsed() < Duration::from_secs(10),
            "r2 still ready 10 s into the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready_after = down.elapsed();
    let t = Instant::now();
    let e = c2
        .get(pb::GetSecretRequest {
            path: "app/kept".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let answered = t.elapsed();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        answered < Duration::from_secs(5),
        "UNAVAILABLE after {answered:?}"
    );
    println!("database down: r2 not ready after {unready_after:?}; a read answered UNAVAILABLE in {answered:?}");

    // a replica started during the outage waits for the database instead of exiting; on its
    // own ports (known in advance) it answers UNAVAILABLE and is not ready meanwhile
    let r3_config = env.replica_config("r3", &url);
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (g3, h3) = (free(), free());
    let text = std::fs::read_to_string(&r3_config).unwrap();
    assert!(
        text.contains("grpc_listen = \"127.0.0.1:0\"")
            && text.contains("http_listen = \"127.0.0.1:0\"")
    );
    std::fs::write(
        &r3_config,
        text.replace(
            "grpc_listen = \"127.0.0.1:0\"",
            &format!("grpc_listen = \"{g3}\""),
        )
        .replace(
            "http_listen = \"127.0.0.1:0\"",
            &format!("http_listen = \"{h3}\""),
        ),
    )
    .unwrap();
    let (r3, back_ready) = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            // its node id from the environment, as a Deployment's pods get theirs
            let starting =
                s.spawn(|| env.start_config_with(&r3_config, &[("KEYGATE_NODE_ID", "pod-r3")]));
            std::thread::sleep(Duration::from_secs(3));
            assert!(
                !starting.is_finished(),
                "r3 must neither exit nor serve while the database is down"
            );
            let rt = tokio::runtime::Handle::current();
            rt.block_on(async {
                assert_eq!(https_get(&env, h3, "/readyz").await.0, 503);
                assert_eq!(https_get(&env, h3, "/healthz").await.0, 200);
                let conn = keygate::client::Conn {
                    addr: format!("https://{g3}"),
                    cacert: Some(env.paths.ca.clone()),
                    client_cert: Some(env.paths.admin_cert.clone()),
                    client_key: Some(env.paths.admin_key.clone()),
                    credential: None,
                };
                let t = Instant::now();
                let e = SecretsClient::new(keygate::client::connect(&conn).await.unwrap())
                    .get(pb::GetSecretRequest {
                        path: "app/kept".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(t.elapsed() < Duration::from_secs(5));
                println!(
                    "r3 waiting for the database: /readyz 503, a read UNAVAILABLE in {:?}",
                    t.elapsed()
                );
            });
            rt.block_on(set_connectable(&db, true));
            let back = Instant::now();
            let r3 = starting
                .join()
                .expect("r3 came up once the database was back");
            (r3, back)
        })
    });
    while !ready(&env, &r2).await {
        assert!(
            back_ready.elapsed() < Duration::from_secs(10),
            "r2 not ready 10 s after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "database back: r2 ready and r3 serving after {:?}",
        back_ready.elapsed()
    );
    assert_eq!(admin_info(&env, &r3)["node_id"], "pod-r3");
    // nothing acknowledged before the outage is lost, on any replica
    for d in [&r1, &r2, &r3] {
        let got = SecretsClient::new(env.admin_channel(d).await)
            .get(pb::GetSecretRequest {
                path: "app/kept".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.fields["password"], value.as_bytes());
    }
    for d in [r1, r2, r3] {
        assert_eq!(d.stop(), 0);
    }
    pg::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_run_on_the_leader_reaches_watch_streams_on_the_other_replicas() {
    let env = TestEnv::new();
    let (db, url) = pg::fresh_database().await;
    seed(&env, &url, "app/rotwatch").await;
    env.append_config(
        r#"
[[rotations]]
path = "app/rotwatch"
every = "1h"

[rotations.fields.password]
generator = "password"
length = 24
"#,
    );
    let r1 = env.start_config(&env.replica_config("r1", &url));
    let t = Instant::now();
    while admin_info(&env, &r1)["leader"] != "r1" {
        assert!(t.elapsed() < Duration::from_secs(10), "r1 never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r2 = env.start_config(&env.replica_config("r2", &url));
    let r3 = env.start_config(&env.replica_config("r3", &url));
    let before = rotation_status(&env, &r2, "app/rotwatch").await;
    let mut watches = Vec::new();
    for d in [&r2, &r3] {
        let w = SecretsClient::new(env.admin_channel(d).await)
            .watch(pb::WatchRequest {
                paths: vec!["app/rotwatch".into()],
                prefixes: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        watches.push(w);
    }
    // the leader runs the rotation (a follower would refuse: only one replica rotates)
    let mut admin1 = pb::admin_client::AdminClient::new(env.admin_channel(&r1).await);
    let (sent, answered) = loop {
        let sent = Instant::now();
        match admin1
            .rotate_secret(pb::RotateSecretRequest {
                path: "app/rotwatch".into(),
            })
            .await
        {
            Ok(_) => break (sent, sent.elapsed()),
            // the leader's first scheduling round was writing the rotation's state: again
            Err(e) if e.code() == tonic::Code::Aborted => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let want = before.current_version + 1;
    for (w, name) in watches.iter_mut().zip(["r2", "r3"]) {
        // the new version becomes readable by its promotion: the event that says so comes
        // within 1 s of the leader's answer
        let ev = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let ev = w.message().await.unwrap().unwrap();
                if ev.kind() == pb::watch_event::Kind::Created && ev.version == want {
                    break ev;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}'s Watch missed the rotation run on r1"));
        assert_eq!(ev.path, "app/rotwatch");
    }
    let seen = sent.elapsed();
    // and the version the event names is what the other replicas serve
    let got = SecretsClient::new(env.admin_channel(&r3).await)
        .get(pb::GetSecretRequest {
            path: "app/rotwatch".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, want);
    println!("rotation on r1 answered in {answered:?}; its event on r2 and r3 by {seen:?}");
    for d in [r1, r2, r3] {
        assert_eq!(d.stop(), 0);
    }
    pg::drop_database(&db).await;
}
