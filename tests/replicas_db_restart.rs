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

/// Acknowledged writes, as (path, value).
type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// `n` writers putting `load/wW/N` until `stop`, remembering what was acknowledged; each
/// returns how many of its writes were refused (UNAVAILABLE only: anything else fails the test).
fn writers(
    n: usize,
    ch: &keygate::client::Failover,
    stop: &Arc<AtomicBool>,
    acked: &Acked,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..n)
        .map(|w| {
            let (ch, stop, acked) = (ch.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
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
            })
        })
        .collect()
}

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
    tasks.extend(writers(4, &ch, &stop, &acked));
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

const AUD: &str = "keygate-failover";
const ISS: &str = "https://ci.failover.example";

/// The primary of a synchronously replicated pair is killed under mixed load (writes and
/// exchanges) through two replicas given both hosts; the standby is promoted. The replicas go
/// not ready, reconnect to the new primary by themselves, and every write and credential
/// acknowledged before the kill is there afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_and_its_promoted_synchronous_standby_lose_no_acknowledged_write() {
    use common::issuer::{TestIssuer, TestKey};
    let hba = "local all postgres peer\nhost all all 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\n";
    let primary = cluster::Cluster::create(hba);
    primary.append_conf("wal_level = replica\nmax_wal_senders = 4\n");
    primary.ctl("start");
    let standby = primary.standby(hba);
    primary.append_conf("synchronous_standby_names = '*'\nsynchronous_commit = on\n");
    primary.ctl("reload");
    let t = Instant::now();
    while primary.psql_value("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
        != "1"
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the standby never became synchronous"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );

    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "failover").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&common::issuer::ci_role_config(
        "https://keygate.failover.test",
        ISS,
        &disc,
        AUD,
        r#"["read:load/*"]"#,
        "",
    ));
    let r1 = env.start_config(&env.replica_config("r1", &url));
    let r2 = env.start_config(&env.replica_config("r2", &url));
    let conn = |admin: bool| keygate::client::Conn {
        addr: format!("https://{},https://{}", r1.grpc, r2.grpc),
        cacert: Some(env.paths.ca.clone()),
        client_cert: admin.then(|| env.paths.admin_cert.clone()),
        client_key: admin.then(|| env.paths.admin_key.clone()),
        credential: None,
    };
    let ch = keygate::client::connect(&conn(true)).await.unwrap();
    let anon = keygate::client::connect(&conn(false)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let creds: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    tasks.extend(writers(3, &ch, &stop, &acked));
    {
        let (anon, stop, creds) = (anon.clone(), stop.clone(), creds.clone());
        let token = move || common::issuer::ci_token(&key, ISS, AUD, None);
        tasks.push(tokio::spawn(async move {
            let mut c = pb::token_exchange_client::TokenExchangeClient::new(anon);
            let mut failed = 0;
            while !stop.load(Ordering::Relaxed) {
                match c
                    .exchange(pb::ExchangeRequest {
                        subject_token: token(),
                        subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
                        role: "ci".into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => creds.lock().unwrap().push(r.into_inner().access_token),
                    Err(e) => {
                        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            failed
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // the primary dies with everything acknowledged so far
    primary.kill9();
    let killed = Instant::now();
    let (writes_before, creds_before) = (acked.lock().unwrap().len(), creds.lock().unwrap().len());
    assert!(writes_before > 0 && creds_before > 0);
    let t = Instant::now();
    while https_get(&env, r2.http, "/readyz").await.0 == 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "r2 ready 10 s after the primary died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready = killed.elapsed();
    // the operator (or the failover manager) promotes the standby
    standby.ctl("promote");
    let promoted = Instant::now();
    for d in [&r1, &r2] {
        while https_get(&env, d.http, "/readyz").await.0 != 200 {
            assert!(
                promoted.elapsed() < Duration::from_secs(20),
                "not ready on the new primary"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ready_again = promoted.elapsed();
    // and serving writes again
    let before_resume = acked.lock().unwrap().len();
    let t = Instant::now();
    while acked.lock().unwrap().len() == before_resume {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "writes did not resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let serving = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let creds = creds.lock().unwrap().clone();
    // every acknowledged write and credential, before the kill and after, is on the new primary
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
    let (first_path, _) = &acked[0];
    let mut c = SecretsClient::new(anon.clone());
    for cred in &creds {
        let mut req = tonic::Request::new(pb::GetSecretRequest {
            path: "load/none".into(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {cred}").parse().unwrap());
        let e = c.get(req).await.unwrap_err();
        // the credential is known (its lease is there): a missing secret, not UNAUTHENTICATED
        assert_eq!(
            e.code(),
            tonic::Code::NotFound,
            "credential lost in the failover: {e:?}"
        );
    }
    assert!(!first_path.is_empty());
    println!(
        "primary killed under load: r2 not ready after {unready:?}; both ready {ready_again:?} after the promotion; writes served again {serving:?} after the kill; {} writes and {} credentials acknowledged ({writes_before} and {creds_before} before the kill), all present; {failed} calls refused UNAVAILABLE meanwhile",
        acked.len(),
        creds.len()
    );
    for d in [r1, r2] {
        assert_eq!(d.stop(), 0);
    }
}
