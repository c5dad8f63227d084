//! The Vault-compatible HTTP API driven by a real Vault client: hvac from PyPI (installed into
//! the target directory on first use) against the real binary over HTTPS, with a real OIDC
//! issuer. Every call is authorised by the role's scopes and audited with `api: "vault"`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::issuer::{TestIssuer, TestKey};
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const AUD: &str = "keygate-vault";
const ISS: &str = "https://ci.vault.example";

/// hvac, installed once per target directory (pip reaches PyPI here; CI too).
fn hvac_path() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pydeps");
    if !dir.join("hvac").exists() {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--target"])
            .arg(&dir)
            .arg("hvac==2.4.0")
            .output()
            .expect("python3 is needed to run the Vault client tests");
        assert!(
            out.status.success(),
            "pip install hvac: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// A daemon with the `ci` issuer and role (`scopes`) and the Vault API (`vault_api`, TOML).
async fn start_with_vault(scopes: &str, vault_api: &str) -> (TestEnv, TestIssuer, TestKey, Daemon) {
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "vault").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&common::issuer::ci_role_config(
        "https://keygate.vault.test",
        ISS,
        &disc,
        AUD,
        scopes,
        "",
    ));
    env.append_config(vault_api);
    let d = env.start();
    (env, issuer, key, d)
}

/// The Vault API's address, from the daemon's "keygate serving" line.
fn vault_addr(d: &Daemon) -> String {
    d.log_text()
        .lines()
        .filter(|l| l.contains("keygate serving"))
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["vault"].as_str().map(str::to_string))
        })
        .filter(|v| v != "-")
        .expect("the daemon logs its Vault API address")
}

#[tokio::test(flavor = "multi_thread")]
async fn hvac_logs_in_with_a_jwt_and_reads_writes_lists_and_deletes_kv_v2_secrets() {
    let pydeps = hvac_path();
    let (env, _issuer, key, d) = start_with_vault(
        r#"["read:app/**", "write:app/**", "list:app/**", "delete:app/**"]"#,
        "\n[vault_api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let addr = vault_addr(&d);
    let mark = marker("vault");
    let out = Command::new("python3")
        .arg(env!("CARGO_MANIFEST_DIR").to_string() + "/tests/fixtures/vault_hvac.py")
        .env("PYTHONPATH", &pydeps)
        .env("VAULT_ADDR", format!("https://{addr}"))
        .env("VAULT_CACERT", &env.paths.ca)
        .env("JWT", common::issuer::ci_token(&key, ISS, AUD, None))
        .env("MARK", &mark)
        .env("ADMIN_CERT", &env.paths.admin_cert)
        .env("ADMIN_KEY", &env.paths.admin_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hvac script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("hvac saw: {v:#}");

    // sys
    assert_eq!(v["health"]["initialized"], true);
    assert_eq!(v["health"]["sealed"], false);
    assert_eq!(v["sealed"], false);
    // login: a keygate credential as the Vault token, the scopes as policies
    assert_eq!(v["unauthenticated_before_login"], false);
    let login = &v["login"];
    assert!(login["client_token"].as_str().unwrap().starts_with("ey"));
    assert!(login["lease_duration"].as_u64().unwrap() > 0);
    assert_eq!(login["token_type"], "service");
    assert!(login["policies"]
        .as_array()
        .unwrap()
        .contains(&Value::from("read:app/**")));
    assert!(login["metadata"]["role"].is_string());
    assert_eq!(v["authenticated"], true);
    let me = &v["lookup_self"];
    assert_eq!(me["type"], "service");
    assert!(me["ttl"].as_u64().unwrap() > 0);
    assert!(me["expire_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(me["accessor"], login["accessor"]);
    assert!(me["meta"]["role"].is_string());
    // KV v2
    assert_eq!(v["write_1"], 1);
    assert_eq!(v["write_2"], 2);
    assert_eq!(
        v["cas_conflict"]["type"], "InvalidRequest",
        "{}",
        v["cas_conflict"]
    );
    assert!(v["cas_conflict"]["errors"][0]
        .as_str()
        .unwrap()
        .contains("check-and-set parameter did not match the current version"));
    assert_eq!(v["read_latest"]["data"]["password"], "second");
    assert_eq!(v["read_latest"]["metadata"]["version"], 2);
    assert_eq!(v["read_v1"]["password"], format!("hunter2-{mark}"));
    assert_eq!(v["list"], serde_json::json!(["db", "sub/"]));
    assert_eq!(v["metadata_current"], 2);
    assert_eq!(
        v["read_deleted"]["type"], "InvalidPath",
        "{}",
        v["read_deleted"]
    );
    assert_eq!(v["read_undeleted"]["password"], "second");
    assert_eq!(v["denied"]["type"], "Forbidden", "{}", v["denied"]);
    assert_eq!(v["missing"]["type"], "InvalidPath", "{}", v["missing"]);
    assert_eq!(v["kv_config"]["cas_required"], false);
    assert_eq!(v["mount"]["version"], "2");
    assert_eq!(v["bad_token"]["type"], "Forbidden", "{}", v["bad_token"]);
    assert_eq!(v["admin_read"]["password"], "second");
    assert_eq!(
        v["admin_mounts"],
        serde_json::json!(["database/", "secret/"])
    );
    assert_eq!(
        v["mounts_as_ci"]["type"], "Forbidden",
        "{}",
        v["mounts_as_ci"]
    );
    assert!(
        matches!(
            v["bad_login"]["type"].as_str(),
            Some("InvalidRequest" | "Forbidden")
        ),
        "{}",
        v["bad_login"]
    );

    // HTTP/2 by ALPN as well as hvac's HTTP/1.1; an unknown route is Vault's 404 shape
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&env.paths.ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let r = http
        .get(format!(
            "https://localhost:{}/v1/sys/health",
            addr.rsplit(':').next().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!(
            "https://localhost:{}/v1/nope/x",
            addr.rsplit(':').next().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(body["errors"].is_array());
    let r = http
        .post(format!(
            "https://localhost:{}/v1/auth/jwt/login",
            addr.rsplit(':').next().unwrap()
        ))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(body["errors"][0]
        .as_str()
        .unwrap()
        .starts_with("failed to parse JSON input"));

    // every translated call is audited like its gRPC equivalent, marked as the Vault API
    assert_eq!(d.stop(), 0);
    let records = audit_records(&env);
    let vault: Vec<_> = records
        .iter()
        .filter(|r| r.api.as_deref() == Some("vault"))
        .collect();
    let has = |op: &str, status: &str| {
        vault
            .iter()
            .any(|r| r.op.as_deref() == Some(op) && r.status.as_deref() == Some(status))
    };
    assert!(has("keygate.v1.TokenExchange/Exchange", "OK"));
    assert!(has("keygate.v1.Leases/Lookup", "OK"));
    assert!(has("keygate.v1.Secrets/Put", "OK"));
    assert!(has("keygate.v1.Secrets/Put", "FAILED_PRECONDITION"));
    assert!(has("keygate.v1.Secrets/Get", "OK"));
    assert!(has("keygate.v1.Secrets/Get", "PERMISSION_DENIED"));
    assert!(has("keygate.v1.Secrets/List", "OK"));
    assert!(has("keygate.v1.Secrets/Delete", "OK"));
    assert!(has("keygate.v1.Secrets/Undelete", "OK"));
    assert!(vault
        .iter()
        .all(|r| r.caller.as_ref().and_then(|c| c.peer.as_ref()).is_some()));
    // no value or token reached a log or a record
    env.assert_logs_free_of(&[mark]);
}

/// The exact requests hashicorp/vault-action sends for `method: jwt` with a `secrets:` line
/// (got: JSON body, `accept: application/json`, the token in `X-Vault-Token`, an empty
/// `X-Vault-Namespace` when none is set), and External Secrets Operator's Vault provider (Go's
/// Vault client: `X-Vault-Request: true`; the store validation reads lookup-self, an
/// ExternalSecret a KV v2 path); then revoke-self ends the token everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn vault_action_and_external_secrets_operator_requests_as_they_send_them() {
    let (env, _issuer, key, d) = start_with_vault(
        r#"["read:ci/*"]"#,
        "\n[vault_api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let mark = marker("npm");
    keygate::pb::secrets_client::SecretsClient::new(env.admin_channel(&d).await)
        .put(keygate::pb::PutSecretRequest {
            path: "ci/npm".into(),
            fields: std::collections::HashMap::from([(
                "npmToken".to_string(),
                mark.as_bytes().to_vec(),
            )]),
            ..Default::default()
        })
        .await
        .unwrap();
    let port = vault_addr(&d).rsplit(':').next().unwrap().to_string();
    let base = format!("https://localhost:{port}");
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&env.paths.ca).unwrap()).unwrap(),
        )
        .http1_only()
        .build()
        .unwrap();
    let json = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (
            status,
            if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice::<Value>(&body).unwrap()
            },
        )
    };

    // vault-action: POST v1/auth/jwt/login {jwt, role}
    let jwt = common::issuer::ci_token(&key, ISS, AUD, None);
    let (status, login) = json(
        http.post(format!("{base}/v1/auth/jwt/login"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("user-agent", "got (https://github.com/sindresorhus/got)")
            .header("x-vault-namespace", "")
            .body(serde_json::json!({"jwt": jwt, "role": "ci", "extra": 1}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let token = login["auth"]["client_token"].as_str().unwrap().to_string();
    // an unknown field is accepted and named
    assert!(
        login["warnings"][0].as_str().unwrap().contains("extra"),
        "{login}"
    );
    // Go clients decode auth.metadata as map[string]string
    assert!(login["auth"]["metadata"]
        .as_object()
        .unwrap()
        .values()
        .all(Value::is_string));
    // `secrets: secret/data/ci/npm npmToken | NPM_TOKEN`: GET v1/secret/data/ci/npm
    let (status, secret) = json(
        http.get(format!("{base}/v1/secret/data/ci/npm"))
            .header("x-vault-token", &token)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{secret}");
    assert_eq!(secret["data"]["data"]["npmToken"], mark.as_str());
    // a namespace keygate does not have is refused, never answered from the root one
    let (status, refused) = json(
        http.get(format!("{base}/v1/secret/data/ci/npm"))
            .header("x-vault-token", &token)
            .header("x-vault-namespace", "team-a/")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["errors"][0]
        .as_str()
        .unwrap()
        .contains("namespaces"));
    assert!(!refused.to_string().contains(mark.as_str()));

    // External Secrets Operator: login, then the store's validation and the ExternalSecret read
    let (status, me) = json(
        http.get(format!("{base}/v1/auth/token/lookup-self"))
            .header("x-vault-token", &token)
            .header("x-vault-request", "true")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert!(me["data"]["ttl"].as_i64().unwrap() > 0);
    assert!(me["data"]["meta"]
        .as_object()
        .unwrap()
        .values()
        .all(Value::is_string));
    let (status, secret) = json(
        http.get(format!("{base}/v1/secret/data/ci/npm?version=1"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-vault-request", "true")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{secret}");
    assert_eq!(secret["data"]["metadata"]["version"], 1);
    // a path its scopes do not allow: 403 with errors
    let (status, denied) = json(
        http.get(format!("{base}/v1/secret/data/other/x"))
            .header("x-vault-token", &token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(!denied["errors"].as_array().unwrap().is_empty());
    // a method Vault does not have
    let (status, body) = json(
        http.patch(format!("{base}/v1/secret/data/ci/npm"))
            .header("x-vault-token", &token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405, "{body}");

    // revoke-self: the token is refused from then on
    let (status, _) = json(
        http.post(format!("{base}/v1/auth/token/revoke-self"))
            .header("x-vault-token", &token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = json(
        http.get(format!("{base}/v1/secret/data/ci/npm"))
            .header("x-vault-token", &token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[mark, token]);
}

/// node-vault, installed once per target directory (npm reaches its registry here; CI too).
fn node_vault_path() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nodedeps");
    if !dir.join("node_modules/node-vault").exists() {
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("node-vault@0.10.10")
            .output()
            .expect("npm is needed to run the Node.js Vault client test");
        assert!(
            out.status.success(),
            "npm install node-vault: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.join("node_modules")
}

#[tokio::test(flavor = "multi_thread")]
async fn node_vault_logs_in_and_reads_writes_lists_and_deletes() {
    let modules = node_vault_path();
    let (env, _issuer, key, d) = start_with_vault(
        r#"["read:app/**", "write:app/**", "list:app/**", "delete:app/**"]"#,
        "\n[vault_api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let port = vault_addr(&d).rsplit(':').next().unwrap().to_string();
    let mark = marker("node");
    let out = Command::new("node")
        .arg(env!("CARGO_MANIFEST_DIR").to_string() + "/tests/fixtures/vault_node.js")
        .env("NODE_PATH", &modules)
        .env("NODE_EXTRA_CA_CERTS", &env.paths.ca)
        .env("VAULT_ADDR", format!("https://localhost:{port}"))
        .env("JWT", common::issuer::ci_token(&key, ISS, AUD, None))
        .env("MARK", &mark)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "node-vault script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("node-vault saw: {v:#}");
    assert_eq!(v["health"]["sealed"], false);
    assert!(v["login"]["client_token"]
        .as_str()
        .unwrap()
        .starts_with("ey"));
    assert_eq!(v["lookup"]["type"], "service");
    assert_eq!(v["read"]["k"], format!("v-{mark}"));
    assert_eq!(v["list"], serde_json::json!(["node"]));
    assert_eq!(v["cas"]["status"], 400, "{}", v["cas"]);
    assert!(v["cas"]["message"]
        .as_str()
        .unwrap()
        .contains("check-and-set parameter did not match the current version"));
    assert_eq!(v["deleted"]["status"], 404, "{}", v["deleted"]);
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[mark]);
}

#[tokio::test(flavor = "multi_thread")]
async fn hvac_kubernetes_login_database_credentials_and_leases() {
    let pydeps = hvac_path();
    let env = TestEnv::new();
    let admin = pg::admin().await;
    let schema = pg::fresh_schema(&admin).await;
    let issuer = TestIssuer::start(&env.paths.dir, "vault").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&format!(
        r#"
[identity]
url = "https://keygate.vault.test"

[[issuers]]
name = "ci"
issuer = "{ISS}"
discovery_url = "{disc}"
ca_file = "ca.pem"
audience = "{AUD}"

[[roles]]
name = "app"
issuer = "ci"
bound_subject = "pipeline:deploy"
scopes = ["db:ro"]

[[databases]]
name = "main"
url = "{url}"

[[databases.roles]]
name = "ro"
grants = ["USAGE ON SCHEMA {schema}"]
default_ttl = "30s"
max_ttl = "1m"

[vault_api]
listen = "127.0.0.1:0"
"#,
        url = pg::url()
    ));
    let d = env.start();
    let addr = vault_addr(&d);
    let out = Command::new("python3")
        .arg(env!("CARGO_MANIFEST_DIR").to_string() + "/tests/fixtures/vault_hvac_db.py")
        .env("PYTHONPATH", &pydeps)
        .env("VAULT_ADDR", format!("https://{addr}"))
        .env("VAULT_CACERT", &env.paths.ca)
        .env("JWT", common::issuer::ci_token(&key, ISS, AUD, None))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hvac script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["login"]["client_token"]
        .as_str()
        .unwrap()
        .starts_with("ey"));
    let user = v["username"].as_str().unwrap();
    let lease = v["creds"]["lease_id"].as_str().unwrap();
    assert_eq!(lease, format!("db:ro/{user}"));
    assert!(v["creds"]["lease_duration"].as_u64().unwrap() > 0);
    assert_eq!(v["creds"]["renewable"], true);
    assert!(v["password"].as_str().unwrap().len() >= 16);
    assert!(v["lookup"]["ttl"].as_u64().unwrap() > 0);
    assert_eq!(v["lookup"]["id"], lease);
    assert_eq!(v["renewed"]["lease_id"], lease);
    assert!(v["renewed"]["lease_duration"].as_u64().unwrap() > 0);
    // revoked: the user is gone from PostgreSQL, the lease no longer renewable or found
    assert!(
        !pg::role_exists(&admin, user).await,
        "user outlived its revocation"
    );
    assert_eq!(v["after_revoke"], "InvalidRequest", "{v}");
    assert_eq!(v["quick"].as_array().unwrap().len(), 5, "{v}");
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[v["password"].as_str().unwrap().to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn hvac_on_a_kv_v1_mount_and_an_issuer_login_mount() {
    let pydeps = hvac_path();
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "vault").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&common::issuer::ci_role_config(
        "https://keygate.vault.test",
        ISS,
        &disc,
        AUD,
        r#"["read:app/**", "write:app/**", "list:app/**", "delete:app/**"]"#,
        "",
    ));
    env.append_config(
        "\n[vault_api]\nlisten = \"127.0.0.1:0\"\nkv_mount = \"kv\"\nkv_version = 1\n",
    );
    let d = env.start();
    let addr = vault_addr(&d);
    let out = Command::new("python3")
        .arg(env!("CARGO_MANIFEST_DIR").to_string() + "/tests/fixtures/vault_hvac_v1.py")
        .env("PYTHONPATH", &pydeps)
        .env("VAULT_ADDR", format!("https://{addr}"))
        .env("VAULT_CACERT", &env.paths.ca)
        .env("JWT", common::issuer::ci_token(&key, ISS, AUD, None))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hvac script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // `auth/ci/login`: the issuer named `ci` only; another issuer's mount refuses its token
    assert_eq!(v["login"], "service");
    assert!(v["other_mount"].is_string(), "{v}");
    assert_eq!(v["read"]["user"], "u1");
    // a JSON number is stored as its text and reads back as a string
    assert_eq!(v["read"]["n"], "7");
    assert_eq!(v["list"], serde_json::json!(["v1"]));
    assert_eq!(v["mount"]["version"], "1");
    assert_eq!(v["after_delete"], "InvalidPath", "{v}");
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hvac_renews_its_token_past_its_first_expiry_and_an_admin_certificate_logs_in() {
    let pydeps = hvac_path();
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "vault").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    // a 3 s credential that renewals may extend to two minutes
    let role = common::issuer::ci_role_config(
        "https://keygate.vault.test",
        ISS,
        &disc,
        AUD,
        r#"["read:app/**", "write:app/**"]"#,
        "",
    )
    .replace(
        "ttl_secs = 600\nmax_ttl_secs = 600",
        "ttl_secs = 3\nmax_ttl_secs = 120",
    );
    assert!(role.contains("ttl_secs = 3\n"));
    env.append_config(&role);
    env.append_config("\n[vault_api]\nlisten = \"127.0.0.1:0\"\n");
    let d = env.start();
    let addr = vault_addr(&d);
    let out = Command::new("python3")
        .arg(env!("CARGO_MANIFEST_DIR").to_string() + "/tests/fixtures/vault_hvac_renew.py")
        .env("PYTHONPATH", &pydeps)
        .env("VAULT_ADDR", format!("https://{addr}"))
        .env("VAULT_CACERT", &env.paths.ca)
        .env("JWT", common::issuer::ci_token(&key, ISS, AUD, None))
        .env("ADMIN_CERT", &env.paths.admin_cert)
        .env("ADMIN_KEY", &env.paths.admin_key)
        .env("WAIT", "4.5")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hvac script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("hvac saw: {v:#}");
    assert_eq!(v["login_ttl"], 3);
    // metadata: the role and the source identity's key claims, all strings
    let meta = v["login_metadata"].as_object().unwrap();
    assert_eq!(meta["role"], "ci");
    assert_eq!(meta["iss"], ISS);
    assert!(meta.values().all(Value::is_string), "{meta:?}");
    // renew-self answers with the same token and the renewed lease
    let renewed = &v["renew_self"];
    let token = renewed["client_token"].as_str().unwrap();
    assert!(token.starts_with("ey"));
    assert!(
        (50..=60).contains(&renewed["lease_duration"].as_u64().unwrap()),
        "{renewed}"
    );
    assert_eq!(renewed["renewable"], true);
    // 4.5 s after a 3 s login the same token writes and reads
    assert_eq!(v["read_after_first_expiry"], "after-renew");
    assert!(v["lookup_by_value"]["ttl"].as_u64().unwrap() > 40);
    assert!((80..=90).contains(&v["renew_by_value"].as_u64().unwrap()));
    // u64::MAX seconds: capped at max_ttl (120 s from login), the daemon unharmed
    let huge = v["renew_huge"].as_u64().unwrap();
    assert!((100..=120).contains(&huge), "{huge}");
    assert_eq!(v["after_revoke_by_value"]["type"], "Forbidden", "{v}");

    // cert auth: a short-lived admin credential that works without the certificate
    let cert = &v["cert_login"];
    let admin_token = cert["client_token"].as_str().unwrap();
    assert!(admin_token.starts_with("ey"));
    assert_eq!(cert["lease_duration"], 900);
    assert_eq!(cert["renewable"], false);
    assert!(cert["policies"]
        .as_array()
        .unwrap()
        .contains(&Value::from("admin:**")));
    assert_eq!(v["admin_token_read"], "after-renew");
    assert!(v["admin_token_mounts"]
        .as_array()
        .unwrap()
        .contains(&Value::from("secret/")));
    assert_eq!(v["admin_token_self"]["meta"]["role"], "_admin-cert");
    assert_eq!(
        v["cert_login_without_cert"]["type"], "InvalidRequest",
        "{v}"
    );

    // the admin credential cannot mint another (only the certificate can), over gRPC too
    let anon = env.channel_as(&d, None).await;
    let mut r = tonic::Request::new(keygate::pb::IssueAdminTokenRequest::default());
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {admin_token}").parse().unwrap(),
    );
    let st = keygate::pb::admin_client::AdminClient::new(anon)
        .issue_admin_token(r)
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::PermissionDenied);
    assert_eq!(d.stop(), 0);

    // audited like the gRPC calls, marked as Vault's; no token in any log
    let recs = audit_records(&env);
    let issued: Vec<_> = recs
        .iter()
        .filter(|r| {
            r.op.as_deref() == Some("keygate.v1.Admin/IssueAdminToken")
                && r.decision.as_deref() == Some("allow")
        })
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].api.as_deref(), Some("vault"));
    assert!(recs.iter().any(|r| {
        r.op.as_deref() == Some("keygate.v1.Admin/IssueAdminToken")
            && r.decision.as_deref() == Some("deny")
    }));
    let renews = recs
        .iter()
        .filter(|r| {
            r.op.as_deref() == Some("keygate.v1.Leases/Renew")
                && r.decision.as_deref() == Some("allow")
        })
        .count();
    assert_eq!(renews, 3, "renew-self, by value, the huge increment");
    env.assert_logs_free_of(&[token.to_string(), admin_token.to_string()]);
}
