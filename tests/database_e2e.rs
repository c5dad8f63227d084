//! Dynamic database users against the real PostgreSQL: exact privileges, renew, revoke, expiry,
//! expiry while the daemon is down, revoke by role, scope checks, an unreachable database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::issuer::{now, TestIssuer, TestKey};
use common::{pg, TestEnv};
use keygate::pb;
use serde_json::{json, Value};
use tonic::transport::Channel;

const AUD: &str = "https://keygate.test";
const ISS: &str = "https://ci.example";

fn databases(schema: &str) -> String {
    format!(
        r#"
[[databases]]
name = "main"
url = "{url}"

[[databases.roles]]
name = "ro"
grants = ["USAGE ON SCHEMA {schema}", "SELECT ON {schema}.items"]
default_ttl = "30s"
max_ttl = "1m"

[[databases.roles]]
name = "short"
grants = ["USAGE ON SCHEMA {schema}", "SELECT ON {schema}.items"]
default_ttl = "2s"
max_ttl = "8s"

[[databases]]
name = "down"
url = "postgres://postgres@127.0.0.1:1/test"
connect_timeout = "1s"

[[databases.roles]]
name = "unreachable"
"#,
        url = pg::url()
    )
}

async fn generate(
    ch: &Channel,
    role: &str,
    ttl: u64,
) -> Result<pb::DatabaseCredential, tonic::Status> {
    pb::database_credentials_client::DatabaseCredentialsClient::new(ch.clone())
        .generate(pb::GenerateDatabaseCredentialsRequest {
            role: role.into(),
            ttl_seconds: ttl,
        })
        .await
        .map(|r| r.into_inner())
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_users_have_exactly_their_grants_renew_revoke_and_expire() {
    let env = TestEnv::new();
    let admin = pg::admin().await;
    let schema = pg::fresh_schema(&admin).await;
    let issuer = TestIssuer::start(&env.paths.dir, "ci").await;
    let key = TestKey::rsa("k1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&format!(
        r#"
[[issuers]]
name = "ci"
issuer = "{ISS}"
discovery_url = "{disc}"
ca_file = "ca.pem"
audience = "{AUD}"

[[roles]]
name = "app"
issuer = "ci"
bound_subject = "app"
scopes = ["db:ro", "db:short"]

[[roles]]
name = "other"
issuer = "ci"
bound_subject = "other"
scopes = ["read:x/*"]
{}"#,
        databases(&schema)
    ));
    let d = env.start();
    let ch = env.admin_channel(&d).await;

    // through the CLI, as the admin
    let out = env.cli(&d, &["db-creds", "ro", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let user = v["username"].as_str().unwrap().to_string();
    let password = v["password"].as_str().unwrap().to_string();
    let lease = v["lease_id"].as_str().unwrap().to_string();
    assert!(user.starts_with("kg_ro_") && user.len() <= 63, "{user}");
    assert!(user
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    assert_eq!(lease, format!("db:ro/{user}"));
    assert!(pg::role_exists(&admin, &user).await);
    assert!(pg::password_matches(&admin, &user, &password).await);
    assert!(!pg::password_matches(&admin, &user, "not-the-password").await);
    let until = pg::valid_until(&admin, &user).await.unwrap();
    assert!(
        (until - (now() as i64 + 30)).abs() <= 3,
        "VALID UNTIL {until}"
    );

    // exactly the granted privileges
    let u = pg::connect_as(&user).await.unwrap();
    let n: i64 = u
        .query_one(&format!("SELECT count(*) FROM {schema}.items"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    for denied in [
        format!("SELECT * FROM {schema}.private"),
        format!("INSERT INTO {schema}.items VALUES (3)"),
        format!("CREATE TABLE {schema}.mine (id int)"),
        format!("DELETE FROM {schema}.items"),
    ] {
        let e = u.batch_execute(&denied).await.unwrap_err();
        assert!(
            e.to_string().contains("permission denied")
                || e.as_db_error().is_some_and(|d| d.code().code() == "42501"),
            "{denied}: {e}"
        );
    }

    // --env prints PGUSER/PGPASSWORD lines for an env file
    let out = env.cli(&d, &["db-creds", "ro", "--env"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let kv: std::collections::HashMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    let env_user = kv["PGUSER"].to_string();
    assert!(pg::password_matches(&admin, &env_user, kv["PGPASSWORD"]).await);
    assert_eq!(kv["KEYGATE_DB_LEASE_ID"], format!("db:ro/{env_user}"));

    // a second user is another role: names are unique
    let other = generate(&ch, "ro", 0).await.unwrap();
    assert_ne!(other.username, user);

    // renew moves VALID UNTIL and the lease, capped at max_ttl (1m from issue)
    let r = pb::leases_client::LeasesClient::new(ch.clone())
        .renew(pb::RenewLeaseRequest {
            lease_id: lease.clone(),
            increment_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner();
    let l = r.lease.unwrap();
    let exp = l.expires_at.unwrap().seconds;
    assert!(r.access_token.is_empty());
    assert_eq!(exp, l.max_expires_at.unwrap().seconds, "capped at max TTL");
    assert_eq!(pg::valid_until(&admin, &user).await.unwrap(), exp);

    // revoke: the open session ends, the role is gone, it cannot log in
    let out = env.cli(&d, &["admin", "revoke", &lease]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pg::role_exists(&admin, &user).await);
    assert!(
        u.query_one("SELECT 1", &[]).await.is_err(),
        "session survived revoke"
    );
    let e = pg::connect_as(&user).await.unwrap_err();
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("does not exist"), "{e:?}");

    // expiry: a renewed lease outlives its first TTL, then the sweeper drops it
    let s = generate(&ch, "short", 2).await.unwrap();
    pb::leases_client::LeasesClient::new(ch.clone())
        .renew(pb::RenewLeaseRequest {
            lease_id: s.lease_id.clone(),
            increment_seconds: 5,
        })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        pg::role_exists(&admin, &s.username).await,
        "dropped before its renewed expiry"
    );
    assert!(pg::connect_as(&s.username).await.is_ok());
    let gone = pg::eventually(10, || async { !pg::role_exists(&admin, &s.username).await }).await;
    assert!(gone, "expired user was not dropped");
    assert!(
        pg::connect_as(&s.username).await.is_err(),
        "an expired user logged in"
    );
    let leases = pb::leases_client::LeasesClient::new(ch.clone())
        .list(pb::ListLeasesRequest {
            prefix: s.lease_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(leases[0].revoked_at.is_some());

    // RevokePrefix on a role drops all its users
    let a = generate(&ch, "ro", 0).await.unwrap();
    let b = generate(&ch, "ro", 0).await.unwrap();
    let out = env.cli(&d, &["admin", "revoke-prefix", "db:ro/"]);
    assert!(out.status.success());
    for x in [&a.username, &b.username, &other.username, &env_user] {
        assert!(
            !pg::role_exists(&admin, x).await,
            "{x} survived revoke-prefix"
        );
    }

    // credentials: scope db:ro needed; the owner renews and revokes its own user, others cannot
    let token = |sub: &str| {
        key.sign(&json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": now(), "exp": now() + 300}))
    };
    let ex = |sub: &'static str| {
        let ch = ch.clone();
        let t = token(sub);
        async move {
            pb::token_exchange_client::TokenExchangeClient::new(ch)
                .exchange(pb::ExchangeRequest {
                    subject_token: t,
                    subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
                    role: if sub == "app" { "app" } else { "other" }.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .access_token
        }
    };
    let app = ex("app").await;
    let stranger = ex("other").await;
    let mut dbc = pb::database_credentials_client::DatabaseCredentialsClient::new(ch.clone());
    let mine = dbc
        .generate(bearer(
            pb::GenerateDatabaseCredentialsRequest {
                role: "ro".into(),
                ttl_seconds: 0,
            },
            &app,
        ))
        .await
        .unwrap()
        .into_inner();
    let denied = dbc
        .generate(bearer(
            pb::GenerateDatabaseCredentialsRequest {
                role: "ro".into(),
                ttl_seconds: 0,
            },
            &stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let mut lc = pb::leases_client::LeasesClient::new(ch.clone());
    let e = lc
        .revoke(bearer(
            pb::RevokeLeaseRequest {
                lease_id: mine.lease_id.clone(),
            },
            &stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let listed = lc
        .list(bearer(pb::ListLeasesRequest::default(), &app))
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(listed.iter().any(|l| l.lease_id == mine.lease_id));
    lc.renew(bearer(
        pb::RenewLeaseRequest {
            lease_id: mine.lease_id.clone(),
            increment_seconds: 10,
        },
        &app,
    ))
    .await
    .unwrap();
    lc.revoke(bearer(
        pb::RevokeLeaseRequest {
            lease_id: mine.lease_id.clone(),
        },
        &app,
    ))
    .await
    .unwrap();
    assert!(!pg::role_exists(&admin, &mine.username).await);
    // revoking the credential revokes the users it generated
    let child = dbc
        .generate(bearer(
            pb::GenerateDatabaseCredentialsRequest {
                role: "ro".into(),
                ttl_seconds: 0,
            },
            &app,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(pg::role_exists(&admin, &child.username).await);
    lc.revoke(bearer(pb::RevokeLeaseRequest::default(), &app))
        .await
        .unwrap();
    assert!(
        !pg::role_exists(&admin, &child.username).await,
        "child user outlived its credential"
    );

    // a user never outlives the credential that asked for it: an 8 s credential gets a user
    // capped at 8 s (the role's default is 30 s; 8 s, not less, leaves a loaded CI machine
    // time to ask before the credential runs out), renewals cannot extend it, and the user is
    // dropped when the credential expires
    let brief = pb::token_exchange_client::TokenExchangeClient::new(ch.clone())
        .exchange(pb::ExchangeRequest {
            subject_token: token("app"),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: "app".into(),
            ttl_seconds: 8,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(brief.expires_in, 8);
    let cred_exp = now() + 8;
    let capped = dbc
        .generate(bearer(
            pb::GenerateDatabaseCredentialsRequest {
                role: "ro".into(),
                ttl_seconds: 0,
            },
            &brief.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let exp = capped.expires_at.as_ref().unwrap().seconds as u64;
    assert!(
        exp <= cred_exp + 1,
        "user lease {exp} past credential {cred_exp}"
    );
    let until = pg::valid_until(&admin, &capped.username).await.unwrap() as u64;
    assert!(until <= cred_exp + 1, "VALID UNTIL {until} past {cred_exp}");
    let renewed = lc
        .renew(bearer(
            pb::RenewLeaseRequest {
                lease_id: capped.lease_id.clone(),
                increment_seconds: 60,
            },
            &brief.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let rexp = renewed.lease.unwrap().expires_at.unwrap().seconds as u64;
    assert!(rexp <= cred_exp + 1, "renewed to {rexp}, past {cred_exp}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while pg::role_exists(&admin, &capped.username).await {
        assert!(
            std::time::Instant::now() < deadline,
            "user {} outlived its credential",
            capped.username
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        now() >= cred_exp - 1,
        "dropped before the credential expired"
    );

    // an unreachable database: UNAVAILABLE, no user, the lease closed
    let e = generate(&ch, "unreachable", 0).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    // an unknown role
    assert_eq!(
        generate(&ch, "nope", 0).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let open: Vec<_> = pb::leases_client::LeasesClient::new(ch.clone())
        .list(pb::ListLeasesRequest {
            prefix: "db:unreachable/".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .leases
        .into_iter()
        .filter(|l| l.revoked_at.is_none())
        .collect();
    assert!(open.is_empty(), "{open:?}");

    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[
        password,
        other.password,
        s.password,
        mine.password,
        child.password,
    ]);
    pg::drop_schema(&admin, &schema).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_whose_leases_expire_while_the_daemon_is_down_are_dropped_at_start() {
    let env = TestEnv::new();
    let admin = pg::admin().await;
    let schema = pg::fresh_schema(&admin).await;
    env.append_config(&databases(&schema));
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    let a = generate(&ch, "short", 2).await.unwrap();
    let b = generate(&ch, "short", 2).await.unwrap();
    let long = generate(&ch, "short", 8).await.unwrap();
    d.kill9();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // nobody dropped them while keygate was down
    assert!(pg::role_exists(&admin, &a.username).await);
    assert!(pg::role_exists(&admin, &b.username).await);
    let d = env.start();
    let gone = pg::eventually(5, || async {
        !pg::role_exists(&admin, &a.username).await && !pg::role_exists(&admin, &b.username).await
    })
    .await;
    assert!(gone, "expired users were not dropped at start");
    assert!(
        pg::role_exists(&admin, &long.username).await,
        "a live user was dropped"
    );
    assert!(env
        .cli(&d, &["admin", "revoke-prefix", "db:short/"])
        .status
        .success());
    assert!(!pg::role_exists(&admin, &long.username).await);
    assert_eq!(d.stop(), 0);
    pg::drop_schema(&admin, &schema).await;
}
