//! Backup and restore through the binary: `keygate admin backup` of a running daemon, the store
//! destroyed, `keygate admin restore` into a new one — on sled, and across to a fresh
//! PostgreSQL database — and the restored daemon serves the same secrets, credentials and JWKS.
//! A damaged backup, a non-empty target and the wrong KEK are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::issuer::{TestIssuer, TestKey};
use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const AUD: &str = "keygate-backup";
const ISS: &str = "https://ci.backup.example";

async fn kids(env: &TestEnv, d: &Daemon) -> Vec<String> {
    let (status, body) = https_get(env, d.http, "/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut k: Vec<String> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

/// Both versions of `app/b` and a read with `cred` (scope read:app/*), as the original served.
async fn serves_the_same(env: &TestEnv, d: &Daemon, cred: &str) {
    let mut admin = SecretsClient::new(env.admin_channel(d).await);
    for (version, value) in [(1u64, "first"), (2, "second")] {
        let got = admin
            .get(pb::GetSecretRequest {
                path: "app/b".into(),
                version,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.fields["password"], value.as_bytes());
    }
    let mut req = tonic::Request::new(pb::GetSecretRequest {
        path: "app/b".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {cred}").parse().unwrap());
    let got = SecretsClient::new(env.channel_as(d, None).await)
        .get(req)
        .await
        .expect("the credential issued before the backup works after the restore")
        .into_inner();
    assert_eq!(got.version, 2);
}

fn restore(config: &Path, from: &Path) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(["admin", "restore", "--config"])
        .arg(config)
        .arg("--from")
        .arg(from)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_destroy_restore_serves_the_same_secrets_credentials_and_jwks() {
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "backup").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&common::issuer::ci_role_config(
        "https://keygate.backup.test",
        ISS,
        &disc,
        AUD,
        r#"["read:app/*"]"#,
        "",
    ));
    let d = env.start();
    let mut admin = SecretsClient::new(env.admin_channel(&d).await);
    for v in ["first", "second"] {
        admin
            .put(pb::PutSecretRequest {
                path: "app/b".into(),
                fields: HashMap::from([("password".to_string(), v.as_bytes().to_vec())]),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // a credential issued right before the backup (its lease still in the write-behind buffer)
    let cred = pb::token_exchange_client::TokenExchangeClient::new(env.channel_as(&d, None).await)
        .exchange(pb::ExchangeRequest {
            subject_token: common::issuer::ci_token(&key, ISS, AUD, None),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let jwks = kids(&env, &d).await;
    assert!(!jwks.is_empty());
    let file = env.tmp.path().join("store.kgbackup");
    let out = env.cli(&d, &["admin", "backup", "--out", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backup of "));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // never overwritten
    let again = env.cli(&d, &["admin", "backup", "--out", file.to_str().unwrap()]);
    assert!(!again.status.success());
    // the backup holds sealed values only
    let raw = std::fs::read(&file).unwrap();
    assert!(!contains(&raw, b"second") && !contains(&raw, b"first"));
    assert_eq!(d.stop(), 0);

    // the store is destroyed; restored from the backup
    std::fs::remove_dir_all(env.data_dir()).unwrap();
    let (ok, msg) = restore(&env.paths.config, &file);
    assert!(ok, "{msg}");
    let (ok, msg) = restore(&env.paths.config, &file);
    assert!(!ok && msg.contains("not empty"), "{msg}");
    let d = env.start();
    serves_the_same(&env, &d, &cred).await;
    assert_eq!(kids(&env, &d).await, jwks, "the same signing keys");
    assert_eq!(d.stop(), 0);

    // across backends: the sled backup into a fresh PostgreSQL database
    let (db, url) = pg::fresh_database().await;
    let pg_config = env.replica_config("p1", &url);
    let mut bad = raw.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    let bad_file = env.tmp.path().join("damaged.kgbackup");
    std::fs::write(&bad_file, &bad).unwrap();
    let (ok, msg) = restore(&pg_config, &bad_file);
    assert!(!ok && msg.contains("damaged or altered"), "{msg}");
    // another KEK in the config: refused, naming the backup's
    let other_kek = env.paths.dir.join("other-kek");
    keygate::secrets::kek::generate_file(&other_kek).unwrap();
    let other_config = env.paths.dir.join("keygate-other-kek.toml");
    let text = std::fs::read_to_string(&pg_config).unwrap();
    assert!(text.contains("file = \"kek\""));
    std::fs::write(
        &other_config,
        text.replace("file = \"kek\"", "file = \"other-kek\""),
    )
    .unwrap();
    let (ok, msg) = restore(&other_config, &file);
    assert!(
        !ok && msg.contains("the backup is encrypted under KEK"),
        "{msg}"
    );
    // the right one
    let (ok, msg) = restore(&pg_config, &file);
    assert!(ok, "{msg}");
    let r = env.start_config(&pg_config);
    serves_the_same(&env, &r, &cred).await;
    assert_eq!(kids(&env, &r).await, jwks);
    assert_eq!(r.stop(), 0);
    pg::drop_database(&db).await;
}
