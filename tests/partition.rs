//! A real partition between one replica and its database: the replica runs in a network
//! namespace of the test's own (`ip netns`, veth), its database link is black-holed (packets
//! dropped both ways: no refusal, no reset) while clients keep calling it over another link.
//! It fails closed — not ready, UNAVAILABLE within the documented bounds, never a revoked
//! credential or a stale version — loses its leadership to the replica on the other side, whose
//! leader alone finishes the rotation the partitioned one had in flight, and rejoins cleanly
//! when the link returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/netns.rs"]
mod netns;

use cluster::{run, Cluster};
use common::issuer::{TestIssuer, TestKey};
use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const AUD: &str = "keygate-partition";
const ISS: &str = "https://ci.partition.example";

fn put(path: &str, v: &str) -> pb::PutSecretRequest {
    pb::PutSecretRequest {
        path: path.into(),
        fields: HashMap::from([("password".to_string(), v.as_bytes().to_vec())]),
        ..Default::default()
    }
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn read(
    ch: &tonic::transport::Channel,
    path: &str,
    token: Option<&str>,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    let req = pb::GetSecretRequest {
        path: path.into(),
        ..Default::default()
    };
    let req = match token {
        Some(t) => bearer(req, t),
        None => tonic::Request::new(req),
    };
    SecretsClient::new(ch.clone())
        .get(req)
        .await
        .map(|r| r.into_inner())
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

async fn rotation_status(ch: &tonic::transport::Channel, path: &str) -> pb::RotationStatus {
    pb::admin_client::AdminClient::new(ch.clone())
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

async fn metric(env: &TestEnv, d: &Daemon, name: &str) -> f64 {
    let (status, text) = https_get(env, d.http, "/metrics").await;
    assert_eq!(status, 200);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} missing"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !cond().await {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_replica_fails_closed_loses_leadership_and_rejoins_cleanly() {
    let ns = match netns::Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            println!("SKIPPED: network namespaces cannot be made here: {why}");
            return;
        }
    };
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "partition").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&common::issuer::ci_role_config(
        "https://keygate.partition.test",
        ISS,
        &disc,
        AUD,
        r#"["read:app/*"]"#,
        "",
    ));

    // the database: a cluster of the test's own, on loopback for r1 and on the partitionable
    // link for r2 (TLS there: plain TCP is only allowed to loopback)
    let (cert, key_file) = (
        env.paths.dir.join("db-server.pem"),
        env.paths.dir.join("db-server-key.pem"),
    );
    keygate::devenv::issue_server_cert(&env.paths.dir, &[&ns.db.host_ip], &cert, &key_file)
        .unwrap();
    let db = Cluster::create(&format!(
        "local all postgres peer\nhost all all 127.0.0.1/32 trust\nhostssl all all {}/32 trust\n",
        ns.db.ns_ip
    ));
    let data = db.data_dir();
    std::fs::copy(&cert, data.join("server.pem")).unwrap();
    std::fs::copy(&key_file, data.join("server.key")).unwrap();
    for f in ["server.pem", "server.key"] {
        run(Command::new("chown").args(["postgres", data.join(f).to_str().unwrap()]));
    }
    run(Command::new("chmod").args(["600", data.join("server.key").to_str().unwrap()]));
    db.append_conf(&format!(
        "ssl = on\nssl_cert_file = '{0}/server.pem'\nssl_key_file = '{0}/server.key'\nlisten_addresses = '127.0.0.1,{1}'\n",
        data.display(),
        ns.db.host_ip
    ));
    db.ctl("start");

    // the rotated secret exists before its policy does: a policy whose secret is missing
    // rotates as soon as a leader starts, which would race the rotation this test holds
    let seed = env.start_config(&env.replica_config(
        "seed",
        &format!("postgres://postgres@127.0.0.1:{}/postgres", db.port),
    ));
    SecretsClient::new(env.admin_channel(&seed).await)
        .put(put("app/rot", "seeded"))
        .await
        .unwrap();
    assert_eq!(seed.stop(), 0);
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
    let r1_config = env.replica_config(
        "r1",
        &format!("postgres://postgres@127.0.0.1:{}/postgres", db.port),
    );
    let r2_config = env.replica_config(
        "r2",
        &format!("postgres://postgres@{}:{}/postgres", ns.db.host_ip, db.port),
    );
    // r2's own server certificate names the address clients reach it at
    keygate::devenv::issue_server_cert(
        &env.paths.dir,
        &["localhost", &ns.client.ns_ip],
        &env.paths.dir.join("r2-server.pem"),
        &env.paths.dir.join("r2-server-key.pem"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&r2_config).unwrap();
    assert!(text.contains("cert_file = \"server.pem\"\nkey_file = \"server-key.pem\""));
    assert_eq!(text.matches("\"127.0.0.1:0\"").count(), 2, "{text}");
    let text = text
        .replace("\"127.0.0.1:0\"", &format!("\"{}:0\"", ns.client.ns_ip))
        .replace(
            "cert_file = \"server.pem\"\nkey_file = \"server-key.pem\"",
            "cert_file = \"r2-server.pem\"\nkey_file = \"r2-server-key.pem\"",
        )
        .replace(
            "tls = \"dangerous_disable\"",
            "tls = \"verify-full\"\nca_file = \"ca.pem\"",
        );
    std::fs::write(&r2_config, text).unwrap();

    // r2 (inside the namespace) starts first and leads; its rotations pause after the first
    // step until told to go on
    let resume = env.paths.dir.join("resume-rotation");
    let r2 = env.start_config_in_netns(
        &ns.name,
        &r2_config,
        &[
            ("KEYGATE_FAULT_INJECT", "rotation-pause-after-pending"),
            ("KEYGATE_FAULT_RESUME", resume.to_str().unwrap()),
        ],
    );
    assert_eq!(r2.grpc.ip().to_string(), ns.client.ns_ip);
    wait_for("r2 leads", Duration::from_secs(10), || async {
        admin_info(&env, &r2)["leader"] == "r2"
    })
    .await;
    let r1 = env.start_config(&r1_config);
    let (a1, a2) = (env.admin_channel(&r1).await, env.admin_channel(&r2).await);
    let anon2 = env.channel_as(&r2, None).await;
    assert_eq!(admin_info(&env, &r1)["leader"], "r2");
    assert_eq!(metric(&env, &r2, "keygate_leader").await, 1.0);

    SecretsClient::new(a1.clone())
        .put(put("app/part", "before"))
        .await
        .unwrap();
    let cred = pb::token_exchange_client::TokenExchangeClient::new(env.channel_as(&r1, None).await)
        .exchange(pb::ExchangeRequest {
            subject_token: common::issuer::ci_token(&key, ISS, AUD, None),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // r2 serves r1's credential and write
    let got = read(&anon2, "app/part", Some(&cred.access_token))
        .await
        .unwrap();
    assert_eq!(
        (got.version, &got.fields["password"][..]),
        (1, &b"before"[..])
    );
    let mut watch = SecretsClient::new(a2.clone())
        .watch(pb::WatchRequest {
            paths: vec!["app/part".into()],
            prefixes: vec![],
        })
        .await
        .unwrap()
        .into_inner();

    // the leader r2 starts a rotation and holds it after its first step
    let before = rotation_status(&a1, "app/rot").await;
    let in_flight = {
        let a2 = a2.clone();
        tokio::spawn(async move {
            let mut c = pb::admin_client::AdminClient::new(a2);
            loop {
                let r = c
                    .rotate_secret(pb::RotateSecretRequest {
                        path: "app/rot".into(),
                    })
                    .await;
                // ABORTED: the leader's first scheduling round was writing the state; again
                match r {
                    Err(e) if e.code() == tonic::Code::Aborted => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await
                    }
                    other => break other,
                }
            }
        })
    };
    wait_for(
        "r2's rotation holds after its first step",
        Duration::from_secs(10),
        || async {
            r2.log_text()
                .contains("fault injection: pausing after rotation step")
        },
    )
    .await;
    assert_eq!(rotation_status(&a1, "app/rot").await.state, "pending");

    // the partition
    ns.cut_db();
    let cut = Instant::now();

    // r2 fails closed: a call answers UNAVAILABLE within 5 s, readiness goes within 10 s
    let t = Instant::now();
    let e = read(&anon2, "app/part", Some(&cred.access_token))
        .await
        .unwrap_err();
    let first_unavailable = t.elapsed();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        first_unavailable < Duration::from_secs(5),
        "UNAVAILABLE after {first_unavailable:?}"
    );
    wait_for("r2 not ready", Duration::from_secs(10), || async {
        https_get(&env, r2.http, "/readyz").await.0 == 503
    })
    .await;
    let not_ready = cut.elapsed();

    // the other side: r1 takes the lapsed lease and alone finishes r2's rotation
    wait_for("r1 leads", Duration::from_secs(10), || async {
        admin_info(&env, &r1)["leader"] == "r1"
    })
    .await;
    let takeover = cut.elapsed();
    assert_eq!(metric(&env, &r2, "keygate_leader").await, 0.0);
    wait_for(
        "r1 finishes the rotation",
        Duration::from_secs(15),
        || async {
            let s = rotation_status(&a1, "app/rot").await;
            s.state == "idle" && s.rotations == before.rotations + 1
        },
    )
    .await;
    // a revocation and a new version on r1 while r2 is cut off
    pb::leases_client::LeasesClient::new(a1.clone())
        .revoke(pb::RevokeLeaseRequest {
            lease_id: cred.lease_id.clone(),
        })
        .await
        .unwrap();
    SecretsClient::new(a1.clone())
        .put(put("app/part", "after"))
        .await
        .unwrap();
    // r2 never serves the revoked credential nor the old version: it answers nothing but
    // UNAVAILABLE, each within 5 s
    for token in [Some(cred.access_token.as_str()), None] {
        let ch = if token.is_some() { &anon2 } else { &a2 };
        let t = Instant::now();
        let e = read(ch, "app/part", token).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    let partitioned_for = cut.elapsed();

    // the link returns
    ns.heal_db();
    let healed = Instant::now();
    let rejoin = wait_for("r2 ready again", Duration::from_secs(15), || async {
        https_get(&env, r2.http, "/readyz").await.0 == 200
    })
    .await;
    let e = read(&anon2, "app/part", Some(&cred.access_token))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::Unauthenticated,
        "revoked on r1: {e:?}"
    );
    let got = read(&a2, "app/part", None).await.unwrap();
    assert_eq!(
        (got.version, &got.fields["password"][..]),
        (2, &b"after"[..])
    );
    // the Watch opened before the partition gets the change made during it (or ends with a
    // non-OK status; it never skips it silently)
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("r2's Watch neither delivered the change made during the partition nor ended");
    match ev {
        Ok(Some(ev)) => assert_eq!((ev.path.as_str(), ev.version), ("app/part", 2)),
        Ok(None) => panic!("Watch ended with OK"),
        Err(status) => assert_ne!(status.code(), tonic::Code::Ok),
    }

    // r2's held rotation goes on now: nothing of it lands (it no longer leads)
    std::fs::write(&resume, b"").unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("r2's held rotation did not end")
        .unwrap();
    // it either fails or reports the rotation r1 finished; either way no step of its own lands
    match &outcome {
        Ok(s) => assert_eq!(
            (s.get_ref().state.as_str(), s.get_ref().current_version),
            ("idle", before.current_version + 1),
            "{s:?}"
        ),
        Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}"),
    }
    assert!(r2
        .log_text()
        .contains("fault injection: resuming after rotation step"));
    let after = rotation_status(&a1, "app/rot").await;
    assert_eq!(
        after.rotations,
        before.rotations + 1,
        "rotated exactly once"
    );
    assert_eq!(after.current_version, before.current_version + 1);
    assert_eq!(after.state, "idle");
    // by its next lease round r2 follows r1
    wait_for("r2 names r1 as leader", Duration::from_secs(6), || async {
        admin_info(&env, &r2)["leader"] == "r1"
    })
    .await;
    let e = pb::admin_client::AdminClient::new(a2.clone())
        .rotate_secret(pb::RotateSecretRequest {
            path: "app/rot".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("r1"), "{}", e.message());
    // r2 serves writes again
    SecretsClient::new(a2.clone())
        .put(put("app/part", "rejoined"))
        .await
        .unwrap();
    assert_eq!(read(&a1, "app/part", None).await.unwrap().version, 3);

    println!(
        "partition: first call UNAVAILABLE after {first_unavailable:?}, not ready {not_ready:?} after the cut, \
         r1 leads {takeover:?} after the cut; cut off for {partitioned_for:?}; ready again {rejoin:?} after the link returned ({:?})",
        healed.elapsed()
    );
    for d in [r1, r2] {
        assert_eq!(d.stop(), 0);
    }
    // both chains verify
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(env.paths.dir.join("audit-r1"))
        .arg(env.paths.dir.join("audit-r2"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
