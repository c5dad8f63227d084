//! Tamper evidence at rest, KEK rotation under load, access refusal, and crash durability.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use keygate::secrets::model::{meta_key, version_key};
use keygate::storage::{SledStorage, Storage, Txn};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

async fn grpc_get(
    c: &mut SecretsClient<tonic::transport::Channel>,
    path: &str,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    c.get(pb::GetSecretRequest {
        path: path.into(),
        version: 0,
        previous: false,
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_byte_and_swapped_records_are_integrity_errors() {
    let env = TestEnv::new();
    let d = env.start();
    let a = marker("a");
    let b = marker("b");
    assert!(env
        .cli(&d, &["put", "t/a", &format!("v={a}")])
        .status
        .success());
    assert!(env
        .cli(&d, &["put", "t/b", &format!("v={b}")])
        .status
        .success());
    assert!(env.cli(&d, &["put", "t/c", "v=c"]).status.success());
    assert_eq!(d.stop(), 0);

    // Edit the store directly, as an attacker with disk access would.
    {
        let s = SledStorage::open(&env.data_dir()).unwrap();
        // 1. flip one byte inside t/a's ciphertext (inside the base64 payload)
        let key = version_key("t/a", 1);
        let raw = s.get(&key).await.unwrap().unwrap();
        let mut rec: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut ct = b64.decode(rec["ciphertext"].as_str().unwrap()).unwrap();
        let mid = ct.len() / 2;
        ct[mid] ^= 0x40;
        rec["ciphertext"] = b64.encode(&ct).into();
        s.commit(Txn::default().put(key, serde_json::to_vec(&rec).unwrap()))
            .await
            .unwrap();
        // 2. copy t/b's record over t/c's
        let rb = s.get(&version_key("t/b", 1)).await.unwrap().unwrap();
        s.commit(Txn::default().put(version_key("t/c", 1), rb))
            .await
            .unwrap();
        assert!(s.get(&meta_key("t/c")).await.unwrap().is_some());
        s.flush().await.unwrap();
    }

    let d = env.start();
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    let e = grpc_get(&mut c, "t/a").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert!(e.message().contains("integrity check failed"), "{e:?}");
    let e = grpc_get(&mut c, "t/c").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    // The untouched secret still reads, and the daemon keeps serving.
    assert_eq!(
        grpc_get(&mut c, "t/b").await.unwrap().fields["v"],
        b.as_bytes()
    );
    let out = env.cli(&d, &["get", "t/a"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATA_LOSS"));
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[a, b]);
}

#[tokio::test(flavor = "multi_thread")]
async fn kek_rotation_under_concurrent_reads() {
    let env = TestEnv::new();
    let d = env.start();
    let chan = env.admin_channel(&d).await;
    let mut c = SecretsClient::new(chan.clone());
    let mut values = HashMap::new();
    for i in 0..200 {
        let v = marker(&format!("k{i}"));
        c.put(pb::PutSecretRequest {
            path: format!("rot/s{i}"),
            fields: HashMap::from([("v".to_string(), v.as_bytes().to_vec())]),
            ..Default::default()
        })
        .await
        .unwrap();
        values.insert(format!("rot/s{i}"), v);
    }
    let values = Arc::new(values);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..4 {
        let (chan, values, stop, reads) =
            (chan.clone(), values.clone(), stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut c = SecretsClient::new(chan);
            let mut i = r;
            while !stop.load(Ordering::SeqCst) {
                let path = format!("rot/s{}", i % 200);
                let got = grpc_get(&mut c, &path)
                    .await
                    .expect("no read may fail during rotation");
                assert_eq!(got.fields["v"], values[&path].as_bytes());
                reads.fetch_add(1, Ordering::SeqCst);
                i += 7;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let new_kek = env.paths.dir.join("kek2");
    keygate::secrets::kek::generate_file(&new_kek).unwrap();
    let out = env.cli(
        &d,
        &[
            "admin",
            "rotate-kek",
            "--new-kek",
            new_kek.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // 200 secrets plus keygate's own credential signing keys (`_sys/signing-keys`)
    assert!(text.contains("201 data keys rewrapped"), "{text}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    assert!(reads.load(Ordering::SeqCst) > 50, "readers actually ran");
    // Same KEK again is refused.
    let again = env.cli(
        &d,
        &[
            "admin",
            "rotate-kek",
            "--new-kek",
            new_kek.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in use"));
    assert_eq!(d.stop(), 0);

    // The old KEK opens nothing: a restart with it is refused, naming the key ...
    let old = env.try_start();
    let log = match old {
        Ok(_) => panic!("daemon started with the retired KEK"),
        Err(log) => log,
    };
    assert!(
        log.contains("not the one this store is encrypted with"),
        "{log}"
    );
    // ... and no stored record is wrapped by it any more.
    {
        let s = SledStorage::open(&env.data_dir()).unwrap();
        let old_kek = keygate::secrets::kek::load_file(&env.paths.dir.join("kek")).unwrap();
        let ring = keygate::secrets::envelope::Keyring::single(old_kek);
        let rows = s.scan_prefix(b"v/").await.unwrap();
        assert_eq!(rows.len(), 201);
        for (k, v) in rows {
            let (path, version) = keygate::secrets::model::parse_version_key(&k).unwrap();
            let rec: keygate::secrets::model::VersionRecord = serde_json::from_slice(&v).unwrap();
            assert!(keygate::secrets::envelope::open_version(&ring, &path, version, &rec).is_err());
        }
    }
    // Pointing the config at the new KEK brings everything back.
    let cfg = std::fs::read_to_string(&env.paths.config).unwrap();
    std::fs::write(
        &env.paths.config,
        cfg.replace("file = \"kek\"", "file = \"kek2\""),
    )
    .unwrap();
    let d = env.start();
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    assert_eq!(
        grpc_get(&mut c, "rot/s17").await.unwrap().fields["v"],
        values["rot/s17"].as_bytes()
    );
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&values.values().cloned().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_without_a_listed_certificate_are_refused() {
    let env = TestEnv::new();
    let d = env.start();
    // no client certificate
    let mut anon = SecretsClient::new(env.channel_as(&d, None).await);
    let e = grpc_get(&mut anon, "demo/app").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // a valid certificate from the same CA whose subject is not under [admin]
    let cert = env.paths.dir.join("other.pem");
    let key = env.paths.dir.join("other-key.pem");
    keygate::devenv::issue_client_cert(&env.paths.dir, "not-an-admin", &cert, &key).unwrap();
    let mut other = SecretsClient::new(env.channel_as(&d, Some((&cert, &key))).await);
    let e = grpc_get(&mut other, "demo/app").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = other
        .put(pb::PutSecretRequest {
            path: "x/y".into(),
            fields: HashMap::from([("a".to_string(), b"b".to_vec())]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let mut admin_api =
        keygate::pb::admin_client::AdminClient::new(env.channel_as(&d, Some((&cert, &key))).await);
    let e = admin_api
        .server_info(pb::ServerInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // the CLI without a certificate says what is missing
    let out = env.cli_with(&d, &["get", "demo/app"], None, false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));
    // a certificate from a foreign CA fails the TLS handshake
    let foreign = tempfile::tempdir().unwrap();
    let fp = keygate::devenv::init(foreign.path(), &Default::default()).unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("https://{}", d.grpc))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .domain_name("localhost")
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    std::fs::read(&env.paths.ca).unwrap(),
                ))
                .identity(tonic::transport::Identity::from_pem(
                    std::fs::read(&fp.admin_cert).unwrap(),
                    std::fs::read(&fp.admin_key).unwrap(),
                )),
        )
        .unwrap();
    let refused = match ch.connect().await {
        Err(_) => true,
        Ok(ch) => grpc_get(&mut SecretsClient::new(ch), "demo/app")
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA must not get in");
    // the admin still works
    let mut admin = SecretsClient::new(env.admin_channel(&d).await);
    assert_eq!(
        grpc_get(&mut admin, "x/y").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_right_after_an_acknowledged_put_loses_nothing() {
    let env = TestEnv::new();
    let d = env.start();
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    let mut values = Vec::new();
    for i in 0..50 {
        let v = marker(&format!("crash{i}"));
        c.put(pb::PutSecretRequest {
            path: format!("crash/s{i}"),
            fields: HashMap::from([("v".to_string(), v.as_bytes().to_vec())]),
            ..Default::default()
        })
        .await
        .unwrap();
        values.push(v);
    }
    d.kill9();
    let d = env.start();
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    for (i, v) in values.iter().enumerate() {
        let got = grpc_get(&mut c, &format!("crash/s{i}")).await.unwrap();
        assert_eq!(got.fields["v"], v.as_bytes());
    }
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&values);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_data_directory_is_refused() {
    let env = TestEnv::new();
    let d = env.start();
    let second = env.try_start();
    let Err(log) = second else {
        panic!("two daemons opened one data directory");
    };
    assert!(log.contains("storage.path"), "{log}");
    // the first one is unaffected
    assert!(env.cli(&d, &["put", "lock/a", "v=1"]).status.success());
    assert_eq!(d.stop(), 0);
}
