//! Regression guard for the request path's cost: the daemon's heap allocations per exchange and
//! per secret read (cached credential), counted in the real binary (test builds count every
//! allocation: `keygate_test_allocations_total` in /metrics) over hundreds of sequential calls
//! over real TLS. Counts, not times: stable on a noisy machine. A change that makes either grow
//! past its budget fails here; one that makes them shrink should lower the budget.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::issuer::{TestIssuer, TestKey};
use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use keygate::pb::token_exchange_client::TokenExchangeClient;
use std::collections::HashMap;

const AUD: &str = "keygate-alloc";
const ISS: &str = "https://ci.alloc.example";

/// Allocations per call allowed: what this build measured (2026-12-03, three runs: 354–355 per
/// exchange, 222 per read, the same in each run) plus about 10%.
const EXCHANGE_BUDGET: f64 = 390.0;
const READ_BUDGET: f64 = 250.0;

async fn allocations(env: &TestEnv, d: &Daemon) -> u64 {
    let (status, body) = https_get(env, d.http, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("keygate_test_allocations_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("keygate_test_allocations_total in /metrics (a test-hooks build)")
}

/// What one scrape allocates itself (its TLS connection, the encoding): the smallest of a few.
async fn scrape_cost(env: &TestEnv, d: &Daemon) -> u64 {
    let mut last = allocations(env, d).await;
    let mut least = u64::MAX;
    for _ in 0..4 {
        let now = allocations(env, d).await;
        least = least.min(now - last);
        last = now;
    }
    least
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exchange_and_a_read_stay_within_their_allocation_budgets() {
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "alloc").await;
    let key = TestKey::rsa("ci-1");
    issuer.publish(&key);
    let disc = issuer.tenant("ci", ISS);
    env.append_config(&common::issuer::ci_role_config(
        "https://keygate.alloc.test",
        ISS,
        &disc,
        AUD,
        r#"["read:app/*"]"#,
        "",
    ));
    let d = env.start();
    SecretsClient::new(env.admin_channel(&d).await)
        .put(pb::PutSecretRequest {
            path: "app/db".into(),
            fields: HashMap::from([("password".to_string(), vec![b'x'; 1024])]),
            ..Default::default()
        })
        .await
        .unwrap();
    let ch = env.channel_as(&d, None).await;
    let mut ex = TokenExchangeClient::new(ch.clone());
    let token = common::issuer::ci_token(&key, ISS, AUD, None);
    let exchange = |ex: &mut TokenExchangeClient<_>| {
        let req = pb::ExchangeRequest {
            subject_token: token.clone(),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: "ci".into(),
            ..Default::default()
        };
        let mut ex = ex.clone();
        async move { ex.exchange(req).await.unwrap().into_inner() }
    };
    let cred = exchange(&mut ex).await.access_token;
    let mut secrets = SecretsClient::new(ch);
    let read = |s: &mut SecretsClient<_>| {
        let mut r = tonic::Request::new(pb::GetSecretRequest {
            path: "app/db".into(),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {cred}").parse().unwrap());
        let mut s = s.clone();
        async move {
            let got = s.get(r).await.unwrap().into_inner();
            assert_eq!(got.fields["password"].len(), 1024);
        }
    };
    // warm: caches, connections, the JWKS, lazily built state
    for _ in 0..100 {
        exchange(&mut ex).await;
        read(&mut secrets).await;
    }

    const READS: u64 = 500;
    const EXCHANGES: u64 = 300;
    let scrape = scrape_cost(&env, &d).await;
    let a0 = allocations(&env, &d).await;
    for _ in 0..READS {
        read(&mut secrets).await;
    }
    let a1 = allocations(&env, &d).await;
    for _ in 0..EXCHANGES {
        exchange(&mut ex).await;
    }
    let a2 = allocations(&env, &d).await;
    let per_read = (a1 - a0).saturating_sub(scrape) as f64 / READS as f64;
    let per_exchange = (a2 - a1).saturating_sub(scrape) as f64 / EXCHANGES as f64;
    println!(
        "daemon allocations: {per_exchange:.0} per exchange (budget {EXCHANGE_BUDGET}), {per_read:.0} per read (budget {READ_BUDGET}); a scrape costs {scrape}"
    );
    // a count of zero would mean the hook is not counting: the guard would pass blindly
    assert!(
        per_read > 50.0 && per_exchange > 50.0,
        "the counter does not count"
    );
    assert!(
        per_exchange <= EXCHANGE_BUDGET,
        "an exchange now allocates {per_exchange:.0} times (budget {EXCHANGE_BUDGET})"
    );
    assert!(
        per_read <= READ_BUDGET,
        "a read now allocates {per_read:.0} times (budget {READ_BUDGET})"
    );
    assert_eq!(d.stop(), 0);
}
