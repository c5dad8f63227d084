//! Rotation through the real binary: generated secrets pushed to watchers, PostgreSQL static
//! roles (one role and two alternating roles) against the real server, and a crash injected
//! after every step resuming to one consistent current version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::{pg, Daemon, TestEnv};
use keygate::pb;
use serde_json::Value;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const DEMO: &str = r#"
[[rotations]]
path = "demo/rotating"
every = "1h"
overlap = "10m"

[rotations.fields.password]
generator = "password"
length = 32

[rotations.fields.token]
generator = "bytes"
length = 16
encoding = "base64url"
"#;

async fn get(
    ch: &Channel,
    path: &str,
    previous: bool,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    pb::secrets_client::SecretsClient::new(ch.clone())
        .get(pb::GetSecretRequest {
            path: path.into(),
            version: 0,
            previous,
        })
        .await
        .map(|r| r.into_inner())
}

fn field(r: &pb::GetSecretResponse, f: &str) -> String {
    String::from_utf8(r.fields[f].clone()).unwrap()
}

async fn status(ch: &Channel, path: &str) -> pb::RotationStatus {
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

/// Waits until the rotation of `path` is idle with at least `n` completed rotations.
async fn settled(ch: &Channel, path: &str, n: u64) -> pb::RotationStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(ch, path).await;
        if s.state == "idle" && s.rotations >= n {
            return s;
        }
        assert!(Instant::now() < deadline, "rotation did not settle: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn audit_ops(env: &TestEnv) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for seg in keygate::audit::writer::segments(&env.paths.dir.join("audit")).unwrap() {
        for line in std::fs::read_to_string(seg).unwrap().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(op) = v["op"].as_str() {
                let res = v["resources"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| x.as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((op.to_string(), res));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_secret_rotates_pushes_to_watchers_and_keeps_previous() {
    let env = TestEnv::new();
    env.append_config(DEMO);
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    // the first scheduler pass creates the secret
    let s = settled(&ch, "demo/rotating", 1).await;
    assert_eq!(s.current_version, 1);
    assert_eq!(s.trigger, "initial");
    let v1 = get(&ch, "demo/rotating", false).await.unwrap();
    assert_eq!(field(&v1, "password").len(), 32);
    assert!(
        get(&ch, "demo/rotating", true).await.is_err(),
        "no previous yet"
    );

    let mut watch = pb::secrets_client::SecretsClient::new(ch.clone())
        .watch(pb::WatchRequest {
            paths: vec!["demo/rotating".into()],
            prefixes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let out = env.cli(&d, &["admin", "rotate", "demo/rotating", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = Instant::now();
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["current_version"], 2);
    assert_eq!(st["previous_version"], 1);
    assert_eq!(st["state"], "idle");
    let ev = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let e = watch.message().await.unwrap().unwrap();
            if e.kind == pb::watch_event::Kind::Created as i32 {
                return e;
            }
        }
    })
    .await
    .expect("the watcher did not see the new version within a second");
    assert_eq!(ev.version, 2);
    assert!(done.elapsed() < Duration::from_secs(1));

    let v2 = get(&ch, "demo/rotating", false).await.unwrap();
    let prev = get(&ch, "demo/rotating", true).await.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(prev.version, 1);
    assert_eq!(field(&prev, "password"), field(&v1, "password"));
    assert_ne!(field(&v2, "password"), field(&v1, "password"));
    assert_ne!(field(&v2, "token"), field(&v1, "token"));
    let meta = v2.metadata.clone().unwrap();
    assert_eq!(meta.previous_version, 1);
    assert!(meta.previous_until.unwrap().seconds > common::issuer::now() as i64 + 500);

    // CLI: status and get --previous
    let out = env.cli(&d, &["admin", "rotation", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("demo/rotating") && text.contains("state idle"),
        "{text}"
    );
    let out = env.cli(
        &d,
        &["get", "demo/rotating", "--previous", "--field", "password"],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        field(&v1, "password")
    );

    // a write while idle is fine; rotation of an unknown path is NOT_FOUND
    let e = pb::admin_client::AdminClient::new(ch.clone())
        .rotate_secret(pb::RotateSecretRequest {
            path: "demo/none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // policies through the API: set, status, rotate, delete; a config path is refused
    let file = env.paths.dir.join("policy.toml");
    std::fs::write(
        &file,
        "path = \"team/api\"\nevery = \"24h\"\n[fields.key]\ngenerator = \"ed25519\"\n",
    )
    .unwrap();
    let out = env.cli(
        &d,
        &["admin", "rotation", "set", "--file", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = settled(&ch, "team/api", 1).await;
    assert_eq!(s.source, "api");
    let k = get(&ch, "team/api", false).await.unwrap();
    assert!(field(&k, "key").starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(field(&k, "key_public").starts_with("-----BEGIN PUBLIC KEY-----"));
    std::fs::write(
        &file,
        "path = \"demo/rotating\"\nevery = \"2h\"\n[fields.x]\ngenerator = \"bytes\"\n",
    )
    .unwrap();
    let out = env.cli(
        &d,
        &["admin", "rotation", "set", "--file", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config file"));
    let out = env.cli(&d, &["admin", "rotation", "delete", "team/api"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("policy deleted"));

    // every step is audited
    let ops: Vec<String> = audit_ops(&env)
        .into_iter()
        .filter(|(_, r)| r.iter().any(|x| x == "path:demo/rotating"))
        .map(|(op, _)| op)
        .collect();
    for op in [
        "rotation.pending",
        "rotation.set",
        "rotation.tested",
        "rotation.current",
    ] {
        assert_eq!(
            ops.iter().filter(|o| *o == op).count(),
            2,
            "{op} in {ops:?}"
        );
    }
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[
        field(&v1, "password"),
        field(&v2, "password"),
        field(&v2, "token"),
    ]);
}

fn static_config(roles: &[&str]) -> String {
    let list: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        r#"
[[databases]]
name = "main"
url = "{url}"
rotatable_roles = [{}]

[[rotations]]
path = "db/static"
every = "1h"
overlap = "10m"

[rotations.postgres]
database = "main"
roles = [{}]
"#,
        list.join(", "),
        list.join(", "),
        url = pg::url()
    )
}

async fn fresh_role(admin: &tokio_postgres::Client, tag: &str) -> String {
    let mut b = [0u8; 5];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    let name = format!("kgs_{tag}_{}", hex::encode(b));
    admin
        .batch_execute(&format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'initial-password'"
        ))
        .await
        .unwrap();
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn static_role_password_rotates_and_open_sessions_survive() {
    let admin = pg::admin().await;
    let role = fresh_role(&admin, "one").await;
    let env = TestEnv::new();
    env.append_config(&static_config(&[&role]));
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    // keygate takes the role over at once
    settled(&ch, "db/static", 1).await;
    let v1 = get(&ch, "db/static", false).await.unwrap();
    assert_eq!(field(&v1, "username"), role);
    let p1 = field(&v1, "password");
    assert!(pg::password_matches(&admin, &role, &p1).await);
    assert!(!pg::password_matches(&admin, &role, "initial-password").await);

    // a client connected with the old password keeps working through the rotation
    let session = pg::connect_as(&role).await.unwrap();
    let out = env.cli(&d, &["admin", "rotate", "db/static"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = get(&ch, "db/static", false).await.unwrap();
    let p2 = field(&v2, "password");
    assert_ne!(p1, p2);
    assert!(
        pg::password_matches(&admin, &role, &p2).await,
        "new logins use the new password"
    );
    assert!(!pg::password_matches(&admin, &role, &p1).await);
    session
        .simple_query("SELECT 1")
        .await
        .expect("open session ended");
    assert_eq!(
        field(&get(&ch, "db/static", true).await.unwrap(), "password"),
        p1
    );
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[p1, p2]);
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_alternating_roles_keep_the_previous_login_valid() {
    let admin = pg::admin().await;
    let a = fresh_role(&admin, "a").await;
    let b = fresh_role(&admin, "b").await;
    let env = TestEnv::new();
    env.append_config(&static_config(&[&a, &b]));
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    settled(&ch, "db/static", 1).await;
    let v1 = get(&ch, "db/static", false).await.unwrap();
    assert_eq!(field(&v1, "username"), a);
    let out = env.cli(&d, &["admin", "rotate", "db/static"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = get(&ch, "db/static", false).await.unwrap();
    assert_eq!(
        field(&v2, "username"),
        b,
        "the inactive role became current"
    );
    // both logins work during the overlap: previous (a) untouched, current (b) new
    assert!(pg::password_matches(&admin, &a, &field(&v1, "password")).await);
    assert!(pg::password_matches(&admin, &b, &field(&v2, "password")).await);
    let prev = get(&ch, "db/static", true).await.unwrap();
    assert_eq!(field(&prev, "username"), a);
    // next rotation goes back to a, with a new password
    let out = env.cli(&d, &["admin", "rotate", "db/static"]);
    assert!(out.status.success());
    let v3 = get(&ch, "db/static", false).await.unwrap();
    assert_eq!(field(&v3, "username"), a);
    assert_ne!(field(&v3, "password"), field(&v1, "password"));
    assert!(pg::password_matches(&admin, &a, &field(&v3, "password")).await);
    assert!(pg::password_matches(&admin, &b, &field(&v2, "password")).await);
    assert_eq!(d.stop(), 0);
    admin
        .batch_execute(&format!("DROP ROLE {a}; DROP ROLE {b}"))
        .await
        .unwrap();
}

/// Asserts one consistent current version: nothing pending, the database holds its password.
async fn consistent(ch: &Channel, admin: &tokio_postgres::Client, role: &str, rotations: u64) {
    let s = settled(ch, "db/static", rotations).await;
    assert_eq!(s.pending_version, 0, "{s:?}");
    assert!(s.last_error.is_empty(), "{s:?}");
    let v = get(ch, "db/static", false).await.unwrap();
    assert_eq!(v.version, s.current_version);
    assert!(
        pg::password_matches(admin, role, &field(&v, "password")).await,
        "the database does not hold the current version's password"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_each_step_resumes_to_one_consistent_current_version() {
    let admin = pg::admin().await;
    let role = fresh_role(&admin, "crash").await;
    let env = TestEnv::new();
    env.append_config(&static_config(&[&role]));
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    consistent(&ch, &admin, &role, 1).await;
    assert_eq!(d.stop(), 0);
    let mut rotations = 1;
    for step in ["pending", "set", "tested", "current"] {
        let fault = format!("rotation-crash-after-{step}");
        let d: Daemon = env.start_with(&[("KEYGATE_FAULT_INJECT", &fault)]);
        let out = env.cli(&d, &["admin", "rotate", "db/static"]);
        assert!(!out.status.success(), "{step}: the daemon did not crash");
        let log = d.log.clone();
        assert_ne!(d.wait(), 0);
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("fault injection: aborting after rotation step") && text.contains(step),
            "{step}: not the injected crash"
        );
        // restart without the fault: the rotation resumes (or is already complete)
        let d = env.start();
        let ch = env.admin_channel(&d).await;
        rotations += 1;
        consistent(&ch, &admin, &role, rotations).await;
        let meta = get(&ch, "db/static", false)
            .await
            .unwrap()
            .metadata
            .unwrap();
        assert_eq!(
            meta.current_version, rotations,
            "{step}: one new version per rotation"
        );
        assert_eq!(d.stop(), 0);
    }
    // the audit chain verifies across the crashes
    let out = std::process::Command::new(common::BIN)
        .args(["audit", "verify"])
        .arg(env.paths.dir.join("audit"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

fn verify_audit(env: &TestEnv) -> String {
    let out = std::process::Command::new(common::BIN)
        .args(["audit", "verify"])
        .arg(env.paths.dir.join("audit"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

async fn audit_head_key(ch: &Channel) -> String {
    pb::admin_client::AdminClient::new(ch.clone())
        .audit_head(pb::AuditHeadRequest {})
        .await
        .unwrap()
        .into_inner()
        .public_key
}

#[tokio::test(flavor = "multi_thread")]
async fn keygates_own_keys_rotate_through_the_state_machine() {
    let env = TestEnv::new();
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    let anchor = std::fs::read_to_string(env.paths.dir.join("audit/audit.pub")).unwrap();
    assert_eq!(audit_head_key(&ch).await, anchor.trim());

    // the checkpoint key: a signed handover, then checkpoints under the new key
    let out = env.cli(
        &d,
        &["admin", "rotate", "_sys/audit-checkpoint-key", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["state"], "idle");
    let k2 = audit_head_key(&ch).await;
    assert_ne!(k2, anchor.trim());
    // signing keys: the old kid stays published, the new one signs
    let before = pb::admin_client::AdminClient::new(ch.clone())
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .kids;
    let out = env.cli(&d, &["admin", "rotate", "_sys/signing-keys"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.cli(&d, &["admin", "rotation", "status", "_sys/", "--json"]);
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sk = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "_sys/signing-keys")
        .unwrap();
    assert_eq!(sk["rotations"], 2, "{sk}");
    let (_, jwks) = common::https_get(&env, d.http, "/.well-known/jwks.json").await;
    let jwks: Value = serde_json::from_str(&jwks).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    for k in &before {
        assert!(
            kids.contains(&k.as_str()),
            "retired key {k} left the JWKS early"
        );
    }
    assert_eq!(kids.len(), before.len() + 1);
    // nobody reads keygate's own keys, not even the admin
    let e = get(&ch, "_sys/audit-checkpoint-key", false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(d.stop(), 0);
    assert!(verify_audit(&env).contains("1 checkpoint-key rotation(s)"));

    // a restart signs with the rotated key
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    assert_eq!(audit_head_key(&ch).await, k2);
    assert_eq!(d.stop(), 0);
    verify_audit(&env);

    // a crash after the handover (set) and before promotion resumes with the handed-over key
    let d = env.start_with(&[("KEYGATE_FAULT_INJECT", "rotation-crash-after-set")]);
    let out = env.cli(&d, &["admin", "rotate", "_sys/audit-checkpoint-key"]);
    assert!(!out.status.success());
    assert_ne!(d.wait(), 0);
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    let st = settled(&ch, "_sys/audit-checkpoint-key", 2).await;
    assert_eq!(st.pending_version, 0);
    let k3 = audit_head_key(&ch).await;
    assert_ne!(k3, k2);
    assert_eq!(d.stop(), 0);
    assert!(verify_audit(&env).contains("2 checkpoint-key rotation(s)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_added_to_the_config_apply_on_reload() {
    let env = TestEnv::new();
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    env.append_config(DEMO);
    d.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("config reloaded") {
        assert!(Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the new policy is scheduled and, the secret being new, rotated in at once
    let s = settled(&ch, "demo/rotating", 1).await;
    assert_eq!(s.source, "config");
    assert_eq!(s.current_version, 1);
    // a broken policy is refused; the running one stays
    let cfg = std::fs::read_to_string(&env.paths.config).unwrap();
    std::fs::write(
        &env.paths.config,
        cfg.replace("every = \"1h\"", "every = \"1h\"\ncron = \"0 3 * * *\""),
    )
    .unwrap();
    d.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("config reload refused") {
        assert!(Instant::now() < deadline, "bad config not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(&ch, "demo/rotating").await.schedule,
        "every 1h, overlap 600s"
    );
    assert_eq!(d.stop(), 0);
}

/// A rotation policy set through the API can take over only a database role declared in
/// `rotatable_roles`, and only with a `db-rotate:<database>/<role>` scope besides `admin:<path>`:
/// a credential scoped `admin:tenant/**` cannot point a rotation at `postgres`.
#[tokio::test(flavor = "multi_thread")]
async fn rotation_may_manage_only_declared_database_roles_with_a_scope_naming_them() {
    use common::issuer::{now, TestKey};
    let admin = pg::admin().await;
    let declared = fresh_role(&admin, "decl").await;
    let env = TestEnv::new();
    let key = TestKey::rsa("k1");
    std::fs::write(
        env.paths.dir.join("static-jwks.json"),
        serde_json::json!({ "keys": [key.jwk.clone()] }).to_string(),
    )
    .unwrap();
    env.append_config(&format!(
        r#"
[identity]
url = "https://keygate.test"

[[issuers]]
name = "static"
issuer = "https://static.example"
jwks_file = "static-jwks.json"
audience = "https://keygate.test"

[[roles]]
name = "tenant-admin"
issuer = "static"
bound_subject = "t"
scopes = ["admin:tenant/**", "read:tenant/**"]

[[roles]]
name = "db-owner"
issuer = "static"
bound_subject = "o"
scopes = ["admin:tenant/**", "read:tenant/**", "db-rotate:main/kgs_decl_*"]

[[databases]]
name = "main"
url = "{url}"
rotatable_roles = ["{declared}"]
"#,
        url = pg::url()
    ));
    let d = env.start();
    let ch = env.channel_as(&d, None).await;
    let cred = |sub: &str, role: &str| {
        let t = key.sign(&serde_json::json!({
            "iss": "https://static.example", "aud": "https://keygate.test",
            "sub": sub, "iat": now(), "exp": now() + 300,
        }));
        let (ch, role) = (ch.clone(), role.to_string());
        async move {
            pb::token_exchange_client::TokenExchangeClient::new(ch)
                .exchange(pb::ExchangeRequest {
                    subject_token: t,
                    role,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .access_token
        }
    };
    let set = |token: String, role: &str| {
        let mut r = tonic::Request::new(pb::RotationPolicy {
            path: "tenant/db".into(),
            every: "24h".into(),
            postgres: Some(pb::PostgresRotator {
                database: "main".into(),
                roles: vec![role.to_string()],
                ..Default::default()
            }),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let ch = ch.clone();
        async move {
            pb::admin_client::AdminClient::new(ch)
                .set_rotation_policy(r)
                .await
        }
    };
    // admin:<path> alone: not enough for any database role
    let tenant = cred("t", "tenant-admin").await;
    for role in ["postgres", declared.as_str()] {
        let e = set(tenant.clone(), role).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{role}: {e:?}");
    }
    // the scope names the role, but postgres is outside it; an undeclared role matching the
    // scope's glob is refused as not rotatable
    let owner = cred("o", "db-owner").await;
    let e = set(owner.clone(), "postgres").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = set(owner.clone(), "kgs_decl_undeclared").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("rotatable_roles"), "{e:?}");
    // declared and named by the scope: the policy is set and takes the role over
    set(owner, &declared).await.unwrap();
    let adm = env.admin_channel(&d).await;
    settled(&adm, "tenant/db", 1).await;
    let v = get(&adm, "tenant/db", false).await.unwrap();
    assert_eq!(field(&v, "username"), declared);
    assert!(pg::password_matches(&admin, &declared, &field(&v, "password")).await);
    // postgres's own password never changed hands
    assert_eq!(d.stop(), 0);
}
