//! Identity end to end: a real HTTPS OIDC issuer on loopback (discovery + JWKS, fresh RSA and EC
//! keys), the real daemon over TLS, platform-shaped tokens, the attack matrix, key rotation on
//! both sides, credentials scoped, expiring and revoked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::issuer::{fixture, now, TestIssuer, TestKey};
use common::*;
use keygate::pb;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::transport::Channel;

const AUD: &str = "https://keygate.test";
const GH: &str = "https://token.actions.githubusercontent.com";
const GL: &str = "https://gitlab.acme.example";
const K8S: &str = "https://kubernetes.default.svc.cluster.local";
const RP: &str = "https://ci.replay.example";
const GHES: &str = "https://ghes.acme.example/_services/token";
const CC: &str = "https://oidc.circleci.com/org/1b9f5c2e-4a53-4f6e-9d3e-2c1f0e8a7b6d";

struct World {
    env: TestEnv,
    issuer: TestIssuer,
    rsa: Arc<TestKey>,
    ec: Arc<TestKey>,
}

async fn world() -> World {
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "main").await;
    let rsa = Arc::new(TestKey::rsa("rsa-1"));
    let ec = Arc::new(TestKey::ec("ec-1"));
    issuer.publish(&rsa);
    issuer.publish(&ec);
    let gh = issuer.tenant("gh", GH);
    let gl = issuer.tenant("gl", GL);
    let k8s = issuer.tenant("k8s", K8S);
    let rp = issuer.tenant("rp", RP);
    let redir = issuer.tenant("redirect", "https://redir.example");
    let huge = issuer.tenant("huge", "https://huge.example");
    // a discovery document that names another issuer than the one configured
    let liar = issuer.tenant("liar", "https://other.example");
    let bk = issuer.tenant("bk", "https://agent.buildkite.com");
    let cc = issuer.tenant("cc", CC);
    let slow = issuer.tenant("slow", "https://slow.example");
    let ghes = issuer.tenant("ghes", GHES);
    let direct_jwks = format!("{}/direct/jwks", issuer.base);
    std::fs::write(
        env.paths.dir.join("static-jwks.json"),
        json!({ "keys": [rsa.jwk.clone()] }).to_string(),
    )
    .unwrap();
    let extra = format!(
        r#"
[identity]
url = "https://keygate.test"

[[issuers]]
name = "github"
preset = "github-actions"
discovery_url = "{gh}"
ca_file = "ca.pem"
audience = "{AUD}"
cache_min_secs = 1

[[issuers]]
name = "gitlab"
preset = "gitlab"
issuer = "{GL}"
discovery_url = "{gl}"
ca_file = "ca.pem"
audience = "{AUD}"

[[issuers]]
name = "k8s"
preset = "kubernetes"
issuer = "{K8S}"
discovery_url = "{k8s}"
ca_file = "ca.pem"
audience = "{AUD}"

[[issuers]]
name = "replay"
issuer = "{RP}"
discovery_url = "{rp}"
ca_file = "ca.pem"
audience = "{AUD}"
refuse_jti_replay = true

[[issuers]]
name = "redir"
issuer = "https://redir.example"
discovery_url = "{redir}"
ca_file = "ca.pem"
audience = "{AUD}"

[[issuers]]
name = "huge"
issuer = "https://huge.example"
discovery_url = "{huge}"
ca_file = "ca.pem"
audience = "{AUD}"

[[issuers]]
name = "liar"
issuer = "https://liar.example"
discovery_url = "{liar}"
ca_file = "ca.pem"
audience = "{AUD}"

[[issuers]]
name = "buildkite"
preset = "buildkite"
discovery_url = "{bk}"
ca_file = "ca.pem"
audience = "{AUD}"

[[issuers]]
name = "circleci"
preset = "circleci"
issuer = "{CC}"
discovery_url = "{cc}"
ca_file = "ca.pem"
audience = "{AUD}"

[[issuers]]
name = "static"
issuer = "https://static.example"
jwks_file = "static-jwks.json"
audience = "{AUD}"

[[issuers]]
name = "direct"
issuer = "https://direct.example"
jwks_url = "{direct_jwks}"
ca_file = "ca.pem"
audience = "{AUD}"

[[issuers]]
name = "ghes"
preset = "github-actions"
issuer = "{GHES}"
discovery_url = "{ghes}"
ca_file = "ca.pem"
audience = "{AUD}"

[[roles]]
name = "ghes-deploy"
issuer = "ghes"
claims = {{ repository_id = "777", ref = "refs/heads/main" }}
scopes = ["read:ghes/*"]

[[issuers]]
name = "slow"
issuer = "https://slow.example"
discovery_url = "{slow}"
ca_file = "ca.pem"
audience = "{AUD}"
fetch_timeout_secs = 1

[[roles]]
name = "bk-deploy"
issuer = "buildkite"
claims = {{ organization_slug = "acme", pipeline_slug = "deploy", build_branch = "main" }}
scopes = ["read:bk/*"]

[[roles]]
name = "cc-deploy"
issuer = "circleci"
claims = {{ "oidc.circleci.com/project-id" = "6d2b1a0c-8f9e-4e3d-a2b1-c0d9e8f7a6b5", "oidc.circleci.com/context-ids" = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f" }}
scopes = ["read:cc/*"]

[[roles]]
name = "static"
issuer = "static"
bound_subject = "x"
scopes = ["read:x/*"]

[[roles]]
name = "direct"
issuer = "direct"
bound_subject = "x"
scopes = ["read:x/*"]

[[roles]]
name = "slow"
issuer = "slow"
bound_subject = "x"
scopes = ["read:x/*"]

[[roles]]
name = "capped"
issuer = "github"
claims = {{ repository_id = "123456" }}
scopes = ["read:prod/api/*"]
ttl_secs = 900
max_ttl_secs = 3600
cap_at_token_expiry = true

[[roles]]
name = "redir"
issuer = "redir"
bound_subject = "x"
scopes = ["read:x/*"]

[[roles]]
name = "huge"
issuer = "huge"
bound_subject = "x"
scopes = ["read:x/*"]

[[roles]]
name = "liar"
issuer = "liar"
bound_subject = "x"
scopes = ["read:x/*"]

[[roles]]
name = "deploy"
issuer = "github"
bound_subject = {{ glob = "repo:acme/app:**" }}
claims = {{ repository_id = "123456", ref = "refs/heads/main", event_name = ["push", "workflow_dispatch"], ref_protected = true }}
scopes = ["read:prod/api/*", "list:prod/**"]

[[roles]]
name = "short"
issuer = "github"
claims = {{ repository_id = "123456" }}
scopes = ["read:prod/api/*"]
ttl_secs = 2
max_ttl_secs = 4

[[roles]]
name = "gl-deploy"
issuer = "gitlab"
claims = {{ project_id = 20, ref_protected = "true", environment = {{ glob = "prod*" }} }}
scopes = ["read:gl/*"]

[[roles]]
name = "k8s-api"
issuer = "k8s"
claims = {{ "/kubernetes.io/namespace" = "prod", "/kubernetes.io/serviceaccount/name" = "api" }}
scopes = ["read:k8s/*"]

[[roles]]
name = "once"
issuer = "replay"
bound_subject = "job-1"
scopes = ["read:x/*"]
"#
    );
    let cfg = std::fs::read_to_string(&env.paths.config).unwrap();
    std::fs::write(&env.paths.config, cfg + &extra).unwrap();
    World {
        env,
        issuer,
        rsa,
        ec,
    }
}

async fn exchange(
    ch: &Channel,
    token: &str,
    role: &str,
    scopes: &[&str],
) -> Result<pb::ExchangeResponse, tonic::Status> {
    pb::token_exchange_client::TokenExchangeClient::new(ch.clone())
        .exchange(pb::ExchangeRequest {
            subject_token: token.into(),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: role.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ttl_seconds: 0,
            audience: String::new(),
            issuer: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

fn code(r: Result<pb::ExchangeResponse, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => s.message().to_string(),
    }
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn get_as(
    ch: &Channel,
    token: &str,
    path: &str,
) -> Result<pb::GetSecretResponse, tonic::Status> {
    pb::secrets_client::SecretsClient::new(ch.clone())
        .get(bearer(
            pb::GetSecretRequest {
                path: path.into(),
                version: 0,
                previous: false,
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_tokens_exchange_and_one_claim_off_is_refused() {
    let w = world().await;
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;

    let gh = fixture("github-actions", GH, AUD);
    let ok = exchange(&ch, &w.rsa.sign(&gh), "deploy", &[])
        .await
        .unwrap();
    assert_eq!(ok.token_type, "Bearer");
    assert_eq!(ok.issued_token_type, "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(ok.scopes, vec!["read:prod/api/*", "list:prod/**"]);
    assert!(ok.expires_in > 0 && ok.expires_in <= 900);
    assert!(
        ok.lease_id
            .starts_with("deploy/repo:acme/app:ref:refs/heads/main/"),
        "{}",
        ok.lease_id
    );

    for (claim, value) in [
        ("repository_id", json!("654321")),
        ("ref", json!("refs/heads/dev")),
        ("event_name", json!("pull_request_target")),
        ("event_name", json!("pull_request")),
        ("ref_protected", json!("false")),
        ("sub", json!("repo:evil/app:ref:refs/heads/main")),
    ] {
        let mut t = gh.clone();
        t[claim] = value.clone();
        assert_eq!(
            code(exchange(&ch, &w.rsa.sign(&t), "deploy", &[]).await),
            "no_matching_role",
            "{claim}={value}"
        );
    }
    // booleans as the platform emits them ("true") and as JSON true both match ref_protected = true
    let mut t = gh.clone();
    t["ref_protected"] = json!(true);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&t), "deploy", &[]).await),
        "ok"
    );

    let gl = fixture("gitlab", GL, AUD);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&gl), "gl-deploy", &[]).await),
        "ok"
    );
    for (claim, value) in [
        ("project_id", json!("21")),
        ("environment", json!("staging")),
        ("ref_protected", json!("false")),
    ] {
        let mut t = gl.clone();
        t[claim] = value;
        assert_eq!(
            code(exchange(&ch, &w.rsa.sign(&t), "gl-deploy", &[]).await),
            "no_matching_role",
            "{claim}"
        );
    }

    let k = fixture("kubernetes", K8S, AUD);
    assert_eq!(
        code(exchange(&ch, &w.ec.sign(&k), "k8s-api", &[]).await),
        "ok",
        "ES256 kubernetes token"
    );
    let mut t = k.clone();
    t["kubernetes.io"]["namespace"] = json!("dev");
    assert_eq!(
        code(exchange(&ch, &w.ec.sign(&t), "k8s-api", &[]).await),
        "no_matching_role"
    );
    let mut t = k.clone();
    t["kubernetes.io"]["serviceaccount"]["name"] = json!("web");
    assert_eq!(
        code(exchange(&ch, &w.ec.sign(&t), "k8s-api", &[]).await),
        "no_matching_role"
    );

    // a valid token of one issuer does not get another issuer's role, nor an unknown role
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&gh), "gl-deploy", &[]).await),
        "no_matching_role"
    );
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&gh), "nope", &[]).await),
        "no_matching_role"
    );

    // scopes: intersection, never more
    let r = exchange(
        &ch,
        &w.rsa.sign(&gh),
        "deploy",
        &["read:prod/api/db", "write:prod/api/db"],
    )
    .await
    .unwrap();
    assert_eq!(r.scopes, vec!["read:prod/api/db"]);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&gh), "deploy", &["read:prod/**"]).await),
        "scope_not_allowed"
    );

    // Explain tells the operator what the caller never learns
    let mut t = gh.clone();
    t["ref"] = json!("refs/heads/dev");
    let mut admin = pb::admin_client::AdminClient::new(w.env.admin_channel(&d).await);
    let ex = admin
        .explain(pb::ExplainRequest {
            token: w.rsa.sign(&t),
            role: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ex.token_valid);
    assert_eq!(ex.issuer, "github");
    let deploy = ex.roles.iter().find(|r| r.role == "deploy").unwrap();
    assert!(!deploy.matched);
    assert!(
        deploy.reason.contains("\"ref\"") && deploy.reason.contains("refs/heads/dev"),
        "{}",
        deploy.reason
    );
    assert!(ex.roles.iter().any(|r| r.role == "short" && r.matched));

    // every failing condition of a role, not only the first: wrong ref, wrong event, no
    // ref_protected
    let mut t3 = t.clone();
    t3["event_name"] = json!("pull_request");
    t3.as_object_mut().unwrap().remove("ref_protected");
    let ex = admin
        .explain(pb::ExplainRequest {
            token: w.rsa.sign(&t3),
            role: "deploy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let failed: Vec<(&str, &str, bool)> = ex.roles[0]
        .failed
        .iter()
        .map(|f| (f.claim.as_str(), f.actual.as_str(), f.missing))
        .collect();
    assert_eq!(
        failed,
        [
            ("event_name", "\"pull_request\"", false),
            ("ref", "\"refs/heads/dev\"", false),
            ("ref_protected", "", true),
        ],
        "{:?}",
        ex.roles[0]
    );

    // the CLI: --json, exit 0 on a match, 1 when the named role does not match or the token
    // is refused; a refused exchange points at explain
    let tok = w.env.paths.dir.join("explain.jwt");
    std::fs::write(&tok, w.rsa.sign(&t3)).unwrap();
    let tokp = tok.to_str().unwrap();
    let out = w
        .env
        .cli(&d, &["admin", "explain", "--token", tokp, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["token_valid"], json!(true));
    let dep = doc["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "deploy")
        .unwrap();
    assert_eq!(dep["failed"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(dep["failed"][2]["actual"], Value::Null);
    let out = w.env.cli(
        &d,
        &["admin", "explain", "--token", tokp, "--role", "deploy"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ref_protected: missing"), "{text}");
    let out = w.env.cli(
        &d,
        &["admin", "explain", "--token", tokp, "--role", "short"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut expired = t3.clone();
    expired["exp"] = json!(now() - 3600);
    expired["iat"] = json!(now() - 4000);
    std::fs::write(&tok, w.rsa.sign(&expired)).unwrap();
    let out = w
        .env
        .cli(&d, &["admin", "explain", "--token", tokp, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["token_code"], json!("token_expired"), "{doc}");
    std::fs::write(&tok, w.rsa.sign(&t3)).unwrap();
    let out = w.env.cli_with(
        &d,
        &["exchange", "--role", "deploy", "--token-file", tokp],
        None,
        false,
    );
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_matching_role") && err.contains("keygate admin explain"),
        "{err}"
    );
    let roles = admin
        .list_roles(pb::ListRolesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(roles.roles.len(), 15);
    assert_eq!(d.stop(), 0);
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn attack_matrix() {
    let w = world().await;
    let attacker = TestIssuer::start(&w.env.paths.dir, "attacker").await;
    let evil = TestKey::rsa("rsa-1"); // same kid as the real key, different key
    attacker.publish(&evil);
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;
    let good = fixture("github-actions", GH, AUD);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&good), "deploy", &[]).await),
        "ok"
    );
    let n = now();

    // a foreign audience is invalid_target, INVALID_ARGUMENT (not a string-keyed default)
    let e = pb::token_exchange_client::TokenExchangeClient::new(ch.clone())
        .exchange(pb::ExchangeRequest {
            subject_token: w.rsa.sign(&good),
            role: "deploy".into(),
            audience: "https://someone-else.example".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::InvalidArgument, "invalid_target")
    );

    // alg: none
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    assert_eq!(
        code(exchange(&ch, &none, "deploy", &[]).await),
        "invalid_token"
    );
    // HS256 signed with the issuer's public key (algorithm confusion)
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let hs = jsonwebtoken::encode(
        &h,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(w.rsa.public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        code(exchange(&ch, &hs, "deploy", &[]).await),
        "invalid_token"
    );
    // a valid token from a second issuer claiming the first's iss (same kid, other key)
    assert_eq!(
        code(exchange(&ch, &evil.sign(&good), "deploy", &[]).await),
        "invalid_token"
    );

    let variant = |f: &dyn Fn(&mut Value)| {
        let mut t = good.clone();
        f(&mut t);
        w.rsa.sign(&t)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong aud",
            variant(&|t| t["aud"] = json!("https://other.example")),
            "invalid_audience",
        ),
        (
            "missing aud",
            variant(&|t| {
                t.as_object_mut().unwrap().remove("aud");
            }),
            "invalid_token",
        ),
        (
            "extra aud",
            variant(&|t| t["aud"] = json!([AUD, "https://other.example"])),
            "invalid_audience",
        ),
        (
            "expired",
            variant(&|t| {
                t["exp"] = json!(n - 120);
                t["iat"] = json!(n - 400);
            }),
            "token_expired",
        ),
        (
            "nbf future",
            variant(&|t| t["nbf"] = json!(n + 600)),
            "token_not_yet_valid",
        ),
        (
            "iat future",
            variant(&|t| t["iat"] = json!(n + 600)),
            "token_not_yet_valid",
        ),
        (
            "too old",
            variant(&|t| {
                t["iat"] = json!(n - 3000);
                t["exp"] = json!(n + 300);
            }),
            "token_too_old",
        ),
        (
            "exp string",
            variant(&|t| t["exp"] = json!((n + 300).to_string())),
            "invalid_token",
        ),
        (
            "nbf string",
            variant(&|t| t["nbf"] = json!("0")),
            "invalid_token",
        ),
        (
            "missing exp",
            variant(&|t| {
                t.as_object_mut().unwrap().remove("exp");
            }),
            "invalid_token",
        ),
        (
            "missing iat",
            variant(&|t| {
                t.as_object_mut().unwrap().remove("iat");
            }),
            "invalid_token",
        ),
        ("garbage", "not.a.jwt".to_string(), "invalid_token"),
        ("empty", String::new(), "invalid_token"),
    ];
    for (name, token, want) in &cases {
        assert_eq!(
            code(exchange(&ch, token, "deploy", &[]).await),
            *want,
            "{name}"
        );
    }

    // unknown kid: one refetch, then refused; a second try within the interval does not refetch
    let before = w.issuer.jwks_hits();
    let stranger = TestKey::rsa("rsa-unknown");
    assert_eq!(
        code(exchange(&ch, &stranger.sign(&good), "deploy", &[]).await),
        "invalid_token"
    );
    assert_eq!(w.issuer.jwks_hits(), before + 1, "exactly one refetch");
    assert_eq!(
        code(exchange(&ch, &stranger.sign(&good), "deploy", &[]).await),
        "invalid_token"
    );
    assert_eq!(w.issuer.jwks_hits(), before + 1, "rate-limited");

    // jku / x5u headers pointing at the attacker are never followed
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    h.jku = Some(format!("{}/gh/jwks", attacker.base));
    h.x5u = Some(format!("{}/x5u", attacker.base));
    assert_eq!(
        code(exchange(&ch, &evil.sign_with(h, &good), "deploy", &[]).await),
        "invalid_token"
    );
    // an iss naming an unconfigured URL: refused, nothing fetched from it
    let mut t = good.clone();
    t["iss"] = json!(format!("{}/gh", attacker.base));
    attacker.tenant("gh", &format!("{}/gh", attacker.base));
    assert_eq!(
        code(exchange(&ch, &evil.sign(&t), "deploy", &[]).await),
        "untrusted_issuer"
    );
    assert!(
        attacker.hits().is_empty(),
        "keygate contacted the attacker: {:?}",
        attacker.hits()
    );

    // RFC 7515 §4.1.11: `crit` lists extensions keygate does not implement (even `[]`);
    // NumericDates must be plain numbers in [0, year 9999]; exp - iat at most 24 h by default
    let admin = w.env.admin_channel(&d).await;
    let explain = |token: String| {
        let admin = admin.clone();
        async move {
            pb::admin_client::AdminClient::new(admin)
                .explain(pb::ExplainRequest {
                    token,
                    role: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .token_error
        }
    };
    let mut refused: Vec<(String, &str)> = Vec::new();
    for crit in [vec!["exp".to_string()], vec![]] {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        h.crit = Some(crit);
        refused.push((w.rsa.sign_with(h, &good), "critical extensions"));
    }
    for (claim, value) in [
        ("exp", json!(1e20)),
        ("exp", json!(-5)),
        ("exp", json!(253_402_300_800u64)),
        ("iat", json!(-1.5)),
        ("nbf", json!(1e300)),
    ] {
        let mut t = good.clone();
        t[claim] = value;
        refused.push((w.rsa.sign(&t), "NumericDate"));
    }
    let mut t = good.clone();
    t["exp"] = json!(n + 25 * 3600);
    refused.push((w.rsa.sign(&t), "lifetime"));
    for (token, why) in refused {
        assert_eq!(
            code(exchange(&ch, &token, "deploy", &[]).await),
            "invalid_token",
            "{why}"
        );
        let err = explain(token).await;
        assert!(err.contains(why), "{why}: {err}");
    }
    // a fractional NumericDate within range is fine (RFC 7519 §2)
    let mut t = good.clone();
    t["exp"] = json!(n as f64 + 120.5);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&t), "deploy", &[]).await),
        "ok"
    );

    // a 1 MiB token is refused before parsing
    let big = "a".repeat(1024 * 1024);
    assert_eq!(
        code(exchange(&ch, &big, "deploy", &[]).await),
        "token_too_large"
    );

    // jti replay where the issuer refuses it
    let mut once = fixture("github-actions", RP, AUD);
    once["sub"] = json!("job-1");
    once["jti"] = json!("run-1-attempt-1");
    let tok = w.rsa.sign(&once);
    // refused exchanges and Explain do not use the token up
    assert_eq!(
        code(exchange(&ch, &tok, "deploy", &[]).await),
        "no_matching_role"
    );
    assert_eq!(
        code(exchange(&ch, &tok, "once", &["read:nowhere/*"]).await),
        "scope_not_allowed"
    );
    assert_eq!(explain(tok.clone()).await, "");
    assert_eq!(code(exchange(&ch, &tok, "once", &[]).await), "ok");
    assert_eq!(
        code(exchange(&ch, &tok, "once", &[]).await),
        "token_replayed"
    );
    once.as_object_mut().unwrap().remove("jti");
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&once), "once", &[]).await),
        "invalid_token",
        "jti required there"
    );
    // ... while on issuers without replay refusal the same token works twice
    let tok = w.rsa.sign(&good);
    assert_eq!(code(exchange(&ch, &tok, "deploy", &[]).await), "ok");
    assert_eq!(code(exchange(&ch, &tok, "deploy", &[]).await), "ok");
    // the daemon is still serving
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&good), "deploy", &[]).await),
        "ok"
    );
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_key_rotation_and_outage() {
    let w = world().await;
    // short cache lifetime (clamped to the issuer's 1 s minimum), so the outage is noticed
    *w.issuer.state.cache_control.lock().unwrap() = Some("public, max-age=1".into());
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;
    let good = fixture("github-actions", GH, AUD);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&good), "deploy", &[]).await),
        "ok"
    );
    // the issuer rotates: a new kid is picked up without a restart
    let k2 = TestKey::rsa("rsa-2");
    let tok = k2.sign(&good);
    w.issuer.publish(&k2);
    assert_eq!(code(exchange(&ch, &tok, "deploy", &[]).await), "ok");
    // the issuer goes down (and the cache is past its 1 s minimum): cached keys still work
    w.issuer.set_down(true);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&good), "deploy", &[]).await),
        "ok"
    );
    assert_eq!(
        code(exchange(&ch, &k2.sign(&good), "deploy", &[]).await),
        "ok"
    );
    let (_, metrics) = https_get(&w.env, d.http, "/metrics").await;
    assert!(
        metrics.contains(r#"keygate_jwks_fetches_total{issuer="github",outcome="failed"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keygate_exchanges_total{role="deploy",outcome="ok"}"#),
        "{metrics}"
    );
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_scoped_expire_and_revoke() {
    let w = world().await;
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;
    let db = marker("db");
    for (p, v) in [
        ("prod/api/db", db.as_str()),
        ("prod/billing/db", "billing"),
        ("prod/api/cache", "c"),
    ] {
        assert!(w
            .env
            .cli(&d, &["put", p, &format!("v={v}")])
            .status
            .success());
    }
    let good = fixture("github-actions", GH, AUD);
    let cred = exchange(&ch, &w.rsa.sign(&good), "deploy", &[])
        .await
        .unwrap();
    let t = cred.access_token.clone();
    assert_eq!(
        get_as(&ch, &t, "prod/api/db").await.unwrap().fields["v"],
        db.as_bytes()
    );
    assert_eq!(
        get_as(&ch, &t, "prod/billing/db").await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let mut sc = pb::secrets_client::SecretsClient::new(ch.clone());
    let w_err = sc
        .put(bearer(
            pb::PutSecretRequest {
                path: "prod/api/db".into(),
                fields: HashMap::from([("v".to_string(), b"x".to_vec())]),
                ..Default::default()
            },
            &t,
        ))
        .await
        .unwrap_err();
    assert_eq!(w_err.code(), tonic::Code::PermissionDenied);
    let listed = sc
        .list(bearer(pb::ListSecretsRequest { prefix: "".into() }, &t))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.secrets.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(names, ["prod/api/cache", "prod/api/db", "prod/billing/db"]);
    // a tampered credential is refused
    let mut bad = t.clone();
    bad.pop();
    bad.push(if t.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        get_as(&ch, &bad, "prod/api/db").await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // an open Watch ends when the lease is revoked
    let mut watch = sc
        .watch(bearer(
            pb::WatchRequest {
                paths: vec!["prod/api/db".into()],
                prefixes: vec![],
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(w
        .env
        .cli(&d, &["put", "prod/api/db", "v=new"])
        .status
        .success());
    let ev = watch.message().await.unwrap().unwrap();
    assert_eq!(ev.version, 2);
    let mut leases = pb::leases_client::LeasesClient::new(ch.clone());
    let r = leases
        .revoke(bearer(
            pb::RevokeLeaseRequest {
                lease_id: String::new(),
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 1);
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), tonic::Code::Unauthenticated);
    let e = get_as(&ch, &t, "prod/api/db").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("revoked"));

    // RevokePrefix on the role (admin only)
    let c1 = exchange(&ch, &w.rsa.sign(&good), "deploy", &[])
        .await
        .unwrap()
        .access_token;
    let c2 = exchange(&ch, &w.rsa.sign(&good), "deploy", &[])
        .await
        .unwrap()
        .access_token;
    let c3 = exchange(&ch, &w.rsa.sign(&good), "short", &[])
        .await
        .unwrap()
        .access_token;
    assert_eq!(
        leases
            .revoke_prefix(bearer(
                pb::RevokePrefixRequest {
                    prefix: "deploy/".into()
                },
                &c1
            ))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    let mut admin_leases = pb::leases_client::LeasesClient::new(w.env.admin_channel(&d).await);
    let r = admin_leases
        .revoke_prefix(pb::RevokePrefixRequest {
            prefix: "deploy/".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 2);
    for c in [&c1, &c2] {
        assert_eq!(
            get_as(&ch, c, "prod/api/db").await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
    // the other role's credential is untouched... until it expires (ttl 2 s)
    assert!(get_as(&ch, &c3, "prod/api/db").await.is_ok());
    // renewal extends up to max_ttl and hands back a fresh credential
    let renewed = leases
        .renew(bearer(
            pb::RenewLeaseRequest {
                lease_id: String::new(),
                increment_seconds: 100,
            },
            &c3,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        renewed.expires_in <= 4,
        "capped at max_ttl: {}",
        renewed.expires_in
    );
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    for c in [&c3, &renewed.access_token] {
        let e = get_as(&ch, c, "prod/api/db").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("expired"), "{e:?}");
    }
    assert_eq!(d.stop(), 0);
    // "which job of which commit read this secret" is one query over the audit log
    let mut reads = Vec::new();
    for seg in keygate::audit::writer::segments(&w.env.paths.dir.join("audit")).unwrap() {
        for l in std::fs::read_to_string(seg).unwrap().lines() {
            let r: keygate::audit::record::Record = serde_json::from_str(l).unwrap();
            if r.op.as_deref() == Some("keygate.v1.Secrets/Get")
                && r.status.as_deref() == Some("OK")
                && r.resources
                    .iter()
                    .any(|x| x.starts_with("secret:prod/api/db"))
            {
                reads.push(r);
            }
        }
    }
    let first = reads.first().expect("the credential's read is audited");
    let who = first.caller.as_ref().unwrap();
    assert_eq!(who.principal.as_deref(), Some("credential"));
    assert_eq!(who.role.as_deref(), Some("deploy"));
    assert_eq!(who.lease_id.as_deref(), Some(cred.lease_id.as_str()));
    assert_eq!(who.issuer.as_deref(), Some(GH));
    let claims = who.claims.as_ref().unwrap();
    assert_eq!(claims["repository"], "acme/app");
    assert_eq!(claims["sha"], good["sha"]);
    assert_eq!(claims["run_id"], good["run_id"]);
    assert!(who
        .token_hmac
        .as_deref()
        .unwrap()
        .starts_with("hmac-sha256:"));
    w.env.assert_logs_free_of(&[db, t, c1, c2, c3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_verify_offline_against_published_jwks_across_signing_key_rotation() {
    let w = world().await;
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;
    let good = fixture("github-actions", GH, AUD);
    let old = exchange(&ch, &w.rsa.sign(&good), "deploy", &[])
        .await
        .unwrap()
        .access_token;

    let (code_, disc) = https_get(&w.env, d.http, "/.well-known/openid-configuration").await;
    assert_eq!(code_, 200);
    let disc: Value = serde_json::from_str(disc.trim()).unwrap();
    assert_eq!(disc["issuer"], "https://keygate.test");
    assert_eq!(
        disc["jwks_uri"],
        "https://keygate.test/.well-known/jwks.json"
    );

    let mut admin = pb::admin_client::AdminClient::new(w.env.admin_channel(&d).await);
    let kids = admin
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .kids;
    assert_eq!(kids.len(), 2, "old key kept while its credentials live");
    let new = exchange(&ch, &w.rsa.sign(&good), "deploy", &[])
        .await
        .unwrap()
        .access_token;

    let (_, jwks) = https_get(&w.env, d.http, "/.well-known/jwks.json").await;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks.trim()).unwrap();
    assert_eq!(set.keys.len(), 2);
    let mut seen_kids = Vec::new();
    for tok in [&old, &new] {
        // a standard JWT library, the published JWKS, nothing else
        let kid = jsonwebtoken::decode_header(tok).unwrap().kid.unwrap();
        let jwk = set.find(&kid).expect("kid published");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&["https://keygate.test"]);
        v.set_issuer(&["https://keygate.test"]);
        let data = jsonwebtoken::decode::<Value>(tok, &key, &v).unwrap();
        assert_eq!(data.claims["role"], "deploy");
        assert_eq!(data.claims["src"]["repository"], "acme/app");
        assert_eq!(data.claims["src"]["sha"], good["sha"]);
        seen_kids.push(kid);
        // and keygate itself still accepts it
        assert_eq!(
            get_as(&ch, tok, "prod/api/nothing")
                .await
                .unwrap_err()
                .code(),
            tonic::Code::NotFound
        );
    }
    assert_ne!(seen_kids[0], seen_kids[1]);
    // keys survive a restart
    assert_eq!(d.stop(), 0);
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;
    assert_eq!(
        get_as(&ch, &old, "prod/api/nothing")
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_fetching_is_capped_same_host_and_issuer_checked() {
    let w = world().await;
    let attacker = TestIssuer::start(&w.env.paths.dir, "attacker").await;
    attacker.publish(&w.rsa);
    *w.issuer.state.redirect_to.lock().unwrap() = Some(format!("{}/gh/jwks", attacker.base));
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;
    for (iss, role) in [
        ("https://redir.example", "redir"),
        ("https://huge.example", "huge"),
        ("https://liar.example", "liar"),
    ] {
        let mut t = fixture("github-actions", iss, AUD);
        t["sub"] = json!("x");
        assert_eq!(
            code(exchange(&ch, &w.rsa.sign(&t), role, &[]).await),
            "issuer_unavailable",
            "{role}"
        );
    }
    assert!(
        attacker.hits().is_empty(),
        "followed a redirect to another host: {:?}",
        attacker.hits()
    );
    assert!(w.issuer.hits().iter().any(|h| h == "/redirect/jwks"));
    assert!(w.issuer.hits().iter().any(|h| h == "/huge/jwks"));
    assert!(
        !w.issuer.hits().iter().any(|h| h == "/liar/jwks"),
        "jwks fetched despite a lying discovery doc"
    );
    let log = d.log_text();
    assert!(
        log.contains("redirect to another host refused"),
        "redirect reason logged"
    );
    assert!(log.contains("larger than 262144 bytes"), "size cap logged");
    assert!(log.contains("discovery document names a different issuer"));
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_exchange_from_github_actions_and_role_reload() {
    let w = world().await;
    let d = w.env.start();
    let mut t = fixture("github-actions", GH, AUD);
    t["aud"] = json!(AUD);
    *w.issuer.state.actions_token.lock().unwrap() = Some(w.rsa.sign(&t));
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "exchange",
        "--role",
        "deploy",
        "--github-actions",
        "--audience",
        AUD,
    ])
    .env("KEYGATE_ADDR", format!("https://{}", d.grpc))
    .env("KEYGATE_CACERT", &w.env.paths.ca)
    .env(
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        format!("{}/actions-token?api-version=2.0", w.issuer.base),
    )
    .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "actions-request-token")
    .env("KEYGATE_ACTIONS_CACERT", &w.env.paths.ca)
    .env_remove("KEYGATE_CLIENT_CERT")
    .env_remove("KEYGATE_CLIENT_KEY");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let credential = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let reqs = w.issuer.state.actions_requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].0.contains("audience=https%3A%2F%2Fkeygate.test"),
        "{:?}",
        reqs[0]
    );
    // the credential works through every other command via KEYGATE_TOKEN
    assert!(w
        .env
        .cli(&d, &["put", "prod/api/db", "v=1"])
        .status
        .success());
    let out = std::process::Command::new(BIN)
        .args(["get", "prod/api/db", "--field", "v"])
        .env("KEYGATE_ADDR", format!("https://{}", d.grpc))
        .env("KEYGATE_CACERT", &w.env.paths.ca)
        .env("KEYGATE_TOKEN", &credential)
        .env_remove("KEYGATE_CLIENT_CERT")
        .env_remove("KEYGATE_CLIENT_KEY")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // roles reload on SIGHUP: the same token stops matching once the role pins another ref
    let ch = w.env.channel_as(&d, None).await;
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&t), "deploy", &[]).await),
        "ok"
    );
    let cfg = std::fs::read_to_string(&w.env.paths.config).unwrap();
    std::fs::write(
        &w.env.paths.config,
        cfg.replace("ref = \"refs/heads/main\"", "ref = \"refs/heads/release\""),
    )
    .unwrap();
    d.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.log_text().contains("config reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&t), "deploy", &[]).await),
        "no_matching_role"
    );
    assert_eq!(d.stop(), 0);
    w.env.assert_logs_free_of(&[credential]);
}

#[tokio::test(flavor = "multi_thread")]
async fn more_presets_key_sources_timeouts_caps_and_lease_listing() {
    let w = world().await;
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;
    // Buildkite (shared issuer, org pinned) and CircleCI (per-org issuer, array claim)
    let bk = fixture("buildkite", "https://agent.buildkite.com", AUD);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&bk), "bk-deploy", &[]).await),
        "ok"
    );
    let mut t = bk.clone();
    t["organization_slug"] = json!("evil");
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&t), "bk-deploy", &[]).await),
        "no_matching_role"
    );
    let cc = fixture("circleci", CC, AUD);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&cc), "cc-deploy", &[]).await),
        "ok"
    );
    let mut t = cc.clone();
    t["oidc.circleci.com/context-ids"] = json!(["other"]);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&t), "cc-deploy", &[]).await),
        "no_matching_role"
    );
    // static keys from a file, and a direct JWKS URL
    for (iss, role) in [
        ("https://static.example", "static"),
        ("https://direct.example", "direct"),
    ] {
        let mut t = fixture("github-actions", iss, AUD);
        t["sub"] = json!("x");
        assert_eq!(
            code(exchange(&ch, &w.rsa.sign(&t), role, &[]).await),
            "ok",
            "{role}"
        );
    }
    // an issuer slower than its fetch timeout
    let mut t = fixture("github-actions", "https://slow.example", AUD);
    t["sub"] = json!("x");
    let started = std::time::Instant::now();
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&t), "slow", &[]).await),
        "issuer_unavailable"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2900),
        "timeout honoured"
    );
    // cap at the platform token's expiry
    let mut t = fixture("github-actions", GH, AUD);
    t["exp"] = json!(now() + 60);
    let r = exchange(&ch, &w.rsa.sign(&t), "capped", &[]).await.unwrap();
    assert!(r.expires_in <= 60, "{}", r.expires_in);
    // a credential lists only its own lease; the admin lists by prefix
    let mut leases = pb::leases_client::LeasesClient::new(ch.clone());
    let own = leases
        .list(bearer(
            pb::ListLeasesRequest {
                prefix: String::new(),
            },
            &r.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.leases.len(), 1);
    assert_eq!(own.leases[0].lease_id, r.lease_id);
    assert_eq!(own.leases[0].role, "capped");
    let mut admin = pb::leases_client::LeasesClient::new(w.env.admin_channel(&d).await);
    let all = admin
        .list(pb::ListLeasesRequest {
            prefix: "bk-deploy/".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.leases.len(), 1);
    assert!(all.leases[0]
        .subject
        .starts_with("organization:acme:pipeline:deploy"));
    // --token-env
    let out = std::process::Command::new(BIN)
        .args([
            "exchange",
            "--role",
            "bk-deploy",
            "--token-env",
            "BUILDKITE_OIDC_TOKEN",
            "--json",
        ])
        .env("KEYGATE_ADDR", format!("https://{}", d.grpc))
        .env("KEYGATE_CACERT", &w.env.paths.ca)
        .env("BUILDKITE_OIDC_TOKEN", w.rsa.sign(&bk))
        .env_remove("KEYGATE_CLIENT_CERT")
        .env_remove("KEYGATE_CLIENT_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scopes"], json!(["read:bk/*"]));
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(d.stop(), 0);
}

/// Issuer traffic cannot be multiplied by anonymous callers: with the issuer down from the
/// start, hundreds of exchanges cost at most one request-triggered fetch (plus the background
/// one), and with keys cached an unknown-kid storm costs at most one refetch. The log never
/// claims cached keys that do not exist. GitHub Enterprise Server issuers get the preset and its
/// guards. A self-signed issuer certificate (openssl req -x509: CA:TRUE, no SAN) works when it
/// is in ca_file, and the failure without it is explained in plain words.
#[tokio::test(flavor = "multi_thread")]
async fn issuer_fetches_are_single_flight_ghes_preset_and_self_signed_issuers() {
    let w = world().await;
    let down = TestIssuer::start(&w.env.paths.dir, "down").await;
    down.publish(&w.rsa);
    let down_disc = down.tenant("d", "https://down.example");
    down.set_down(true);
    let selfsigned = TestIssuer::start_self_signed(&w.env.paths.dir, "ss").await;
    selfsigned.publish(&w.ec);
    let ss_disc = selfsigned.tenant("ss", "https://ss.example");
    let ss2_disc = selfsigned.tenant("ss2", "https://ss2.example");
    w.env.append_config(&format!(
        r#"
[[issuers]]
name = "down"
issuer = "https://down.example"
discovery_url = "{down_disc}"
ca_file = "ca.pem"
audience = "{AUD}"
cache_min_secs = 60
unknown_kid_refetch_secs = 30

[[roles]]
name = "down"
issuer = "down"
bound_subject = "x"
scopes = ["read:x/*"]

[[issuers]]
name = "selfsigned"
issuer = "https://ss.example"
discovery_url = "{ss_disc}"
ca_file = "ss-selfsigned.pem"
audience = "{AUD}"
algorithms = ["ES256"]

[[roles]]
name = "selfsigned"
issuer = "selfsigned"
bound_subject = "x"
scopes = ["read:x/*"]

[[issuers]]
name = "selfsigned-unpinned"
issuer = "https://ss2.example"
discovery_url = "{ss2_disc}"
ca_file = "ca.pem"
audience = "{AUD}"
algorithms = ["ES256"]
"#
    ));
    let d = w.env.start();
    let ch = w.env.channel_as(&d, None).await;
    let claims =
        |iss: &str| json!({"iss": iss, "aud": AUD, "sub": "x", "iat": now(), "exp": now() + 300});

    // the issuer is down from the start: 300 concurrent anonymous exchanges
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let tok = w.rsa.sign(&claims("https://down.example"));
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let (ch, tok) = (ch.clone(), tok.clone());
        tasks.push(tokio::spawn(async move {
            code(exchange(&ch, &tok, "down", &[]).await)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "issuer_unavailable");
    }
    let fetches = down.hits().iter().filter(|h| h.starts_with("/d/")).count();
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} issuer requests for 300 exchanges"
    );
    let log = d.log_text();
    assert!(
        log.contains("no keys were ever fetched"),
        "the log should say no keys exist"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("\"down\"") && l.contains("keeping the last good keys")),
        "claims cached keys that do not exist"
    );

    // keys cached: 300 tokens naming unknown kids cost at most one refetch
    let good = fixture("github-actions", GH, AUD);
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&good), "deploy", &[]).await),
        "ok"
    );
    let before = w.issuer.jwks_hits();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some(format!("forged-{i}"));
        let (ch, tok) = (ch.clone(), w.rsa.sign_with(h, &good));
        tasks.push(tokio::spawn(async move {
            code(exchange(&ch, &tok, "deploy", &[]).await)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "invalid_token");
    }
    let refetches = w.issuer.jwks_hits() - before;
    assert!(refetches <= 1, "{refetches} refetches for 300 forged kids");

    // GitHub Enterprise Server: the preset's guards apply
    let mut g = fixture("github-actions", GHES, AUD);
    g["repository_id"] = json!("777");
    g["ref"] = json!("refs/heads/main");
    g["event_name"] = json!("push");
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&g), "ghes-deploy", &[]).await),
        "ok"
    );
    g["event_name"] = json!("pull_request_target");
    assert_eq!(
        code(exchange(&ch, &w.rsa.sign(&g), "ghes-deploy", &[]).await),
        "no_matching_role"
    );

    // the self-signed certificate, pinned through ca_file
    let ss = w.ec.sign(&claims("https://ss.example"));
    assert_eq!(code(exchange(&ch, &ss, "selfsigned", &[]).await), "ok");
    // the same server without that certificate in ca_file: refused, explained plainly
    let mut admin = pb::admin_client::AdminClient::new(w.env.admin_channel(&d).await);
    let ex = admin
        .explain(pb::ExplainRequest {
            token: w.ec.sign(&claims("https://ss2.example")),
            role: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ex.token_code, "issuer_unavailable", "{ex:?}");
    assert!(
        ex.token_error
            .contains("is a CA certificate (basicConstraints CA:TRUE")
            && ex.token_error.contains("CN=localhost")
            && ex.token_error.contains("ca_file"),
        "{}",
        ex.token_error
    );
    assert!(!d.log_text().contains("CaUsedAsEndEntity"));
    assert_eq!(d.stop(), 0);
}
