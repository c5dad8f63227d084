//! Request-path integrity through the real daemon: one layer audits every method the
//! descriptors list, state changes are recorded before they happen (full audit disk, kill -9),
//! and what an anonymous caller can cost is bounded (audit bytes, metric series).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::issuer::{now, TestKey};
use common::*;
use keygate::audit::record::{Kind, Record};
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use prost::Message;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::process::Command;

const AUD: &str = "https://keygate.test";

/// A secret as List shows it: path, current version, (version, deleted, destroyed).
type SecretState = (String, u64, Vec<(u64, bool, bool)>);

fn audit_bytes(env: &TestEnv) -> u64 {
    keygate::audit::writer::segments(&env.paths.dir.join("audit"))
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Every keygate method from the compiled descriptors: (name, server-streaming).
fn methods_from_descriptors() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(keygate::pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut v = Vec::new();
    for f in &set.file {
        for s in &f.service {
            for m in &s.method {
                v.push((
                    format!("{}.{}/{}", f.package(), s.name(), m.name()),
                    m.server_streaming(),
                ));
            }
        }
    }
    v
}

/// An issuer with a static key and a role `app` granting read/write/delete on `app/*`.
fn with_static_issuer(env: &TestEnv) -> TestKey {
    let key = TestKey::rsa("k1");
    std::fs::write(
        env.paths.dir.join("static-jwks.json"),
        json!({ "keys": [key.jwk.clone()] }).to_string(),
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
audience = "{AUD}"

[[roles]]
name = "app"
issuer = "static"
bound_subject = "x"
scopes = ["read:app/*", "write:app/*", "delete:app/*"]
"#
    ));
    key
}

fn platform_token(key: &TestKey) -> String {
    let n = now();
    key.sign(&json!({
        "iss": "https://static.example", "aud": AUD, "sub": "x",
        "iat": n, "nbf": n - 5, "exp": n + 300,
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_method_in_the_descriptors_writes_one_outcome_record_per_call() {
    let env = TestEnv::new();
    let d = env.start();
    let admin = env.admin_channel(&d).await;
    let anon = env.channel_as(&d, None).await;
    let methods = methods_from_descriptors();
    assert!(methods.len() >= 26, "{methods:?}");
    // (request id, method, who) of every call
    let mut calls = Vec::new();
    for (m, streaming) in &methods {
        for (who, ch, body) in [
            // no credential: refused before the handler (the exchange reads its body)
            ("anonymous", anon.clone(), Vec::new()),
            // the admin with an empty request: allowed, or failed on the missing fields
            ("admin", admin.clone(), Vec::new()),
            // a bearer credential that is not one
            ("bogus", anon.clone(), Vec::new()),
            // bytes that are not a protobuf message
            ("garbage", admin.clone(), vec![0xff, 0xff, 0xff, 0x07]),
        ] {
            let bearer = (who == "bogus").then_some("not-a-credential");
            let a = raw::call(ch, m, body, bearer, *streaming).await;
            let id = a
                .request_id
                .unwrap_or_else(|| panic!("{m} as {who}: no x-request-id ({:?})", a.code));
            if who == "garbage" {
                assert_eq!(
                    a.code,
                    tonic::Code::InvalidArgument,
                    "{m}: malformed message"
                );
            }
            if who == "anonymous" && m != "keygate.v1.TokenExchange/Exchange" {
                assert_eq!(a.code, tonic::Code::Unauthenticated, "{m}");
            }
            calls.push((id, m.clone(), who, a.code));
        }
    }
    // the operator's log lines of a request carry its id
    let log = d.log_text();
    let refused = calls
        .iter()
        .find(|(_, m, who, _)| m == "keygate.v1.Secrets/Get" && *who == "anonymous")
        .unwrap();
    assert!(
        log.contains(&refused.0),
        "no log line names request {}",
        refused.0
    );
    assert_eq!(d.stop(), 0);
    let recs = audit_records(&env);
    let mut by_id: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in recs.iter().filter(|r| r.kind == Kind::Request) {
        if let Some(id) = r.request_id.as_deref() {
            by_id.entry(id).or_default().push(r);
        }
    }
    let mut decisions = HashSet::new();
    for (id, m, who, code) in &calls {
        let rs = by_id.get(id.as_str()).cloned().unwrap_or_default();
        let outcomes: Vec<&&Record> = rs
            .iter()
            .filter(|r| r.decision.as_deref() != Some("intent"))
            .collect();
        assert_eq!(outcomes.len(), 1, "{m} as {who}: {rs:?}");
        let r = outcomes[0];
        assert_eq!(r.op.as_deref(), Some(m.as_str()), "{who}");
        assert_eq!(
            r.status.as_deref(),
            Some(keygate::metrics::code_name(*code)),
            "{m} as {who}: the record holds the answer"
        );
        decisions.insert(r.decision.clone().unwrap());
    }
    for d in ["allow", "deny", "error"] {
        assert!(decisions.contains(d), "no {d} call among {decisions:?}");
    }
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_sizes_are_refused_by_name_and_cost_a_few_kib_of_audit() {
    let env = TestEnv::new();
    let d = env.start();
    let anon = env.channel_as(&d, None).await;
    let admin = env.admin_channel(&d).await;
    let huge = "r".repeat(3 * 1024 * 1024);
    let before = audit_bytes(&env);
    let n = 8;
    for _ in 0..n {
        // anonymous: a multi-MiB role name in an exchange, a multi-MiB path in a read
        let e = pb::token_exchange_client::TokenExchangeClient::new(anon.clone())
            .exchange(pb::ExchangeRequest {
                subject_token: "x".into(),
                role: huge.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = SecretsClient::new(anon.clone())
            .get(pb::GetSecretRequest {
                path: huge.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    let grown = audit_bytes(&env) - before;
    let per_request = grown / (2 * n);
    println!("audit bytes per anonymous multi-MiB request: {per_request}");
    assert!(per_request < 4096, "{per_request} bytes per request");
    // authenticated: refused with the limit's name, nothing stored, a bounded record
    let mut c = SecretsClient::new(admin.clone());
    let e = c
        .put(pb::PutSecretRequest {
            path: huge.clone(),
            fields: HashMap::from([("v".to_string(), b"x".to_vec())]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("limits.max_path_bytes"),
        "{}",
        e.message()
    );
    let e = c
        .put(pb::PutSecretRequest {
            path: "ok/path".into(),
            fields: (0..200).map(|i| (format!("f{i}"), b"x".to_vec())).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("limits.max_fields"), "{}", e.message());
    // an oversize message: RESOURCE_EXHAUSTED, not a decode error
    let a = raw::call(
        admin.clone(),
        "keygate.v1.Secrets/Put",
        pb::PutSecretRequest {
            path: "ok/big".into(),
            fields: HashMap::from([("v".to_string(), vec![7u8; 5 * 1024 * 1024])]),
            ..Default::default()
        }
        .encode_to_vec(),
        None,
        false,
    )
    .await;
    assert_eq!(a.code, tonic::Code::ResourceExhausted);
    assert!(c
        .list(pb::ListSecretsRequest {
            prefix: String::new()
        })
        .await
        .unwrap()
        .into_inner()
        .secrets
        .is_empty());
    assert_eq!(d.stop(), 0);
    // the long strings are held as a prefix, a length and an HMAC reference
    let recs = audit_records(&env);
    let longest = recs
        .iter()
        .map(|r| serde_json::to_string(r).unwrap().len())
        .max()
        .unwrap();
    assert!(longest < 4096, "{longest}");
    assert!(recs.iter().any(|r| r
        .resources
        .iter()
        .any(|x| x.contains("3145733 bytes, hmac-sha256:"))));
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_role_names_add_no_metric_series_and_cannot_inject_lines() {
    let env = TestEnv::new();
    let d = env.start();
    let anon = env.channel_as(&d, None).await;
    let call = move |role: String| {
        let ch = anon.clone();
        async move {
            let _ = pb::token_exchange_client::TokenExchangeClient::new(ch)
                .exchange(pb::ExchangeRequest {
                    subject_token: "x".into(),
                    role,
                    ..Default::default()
                })
                .await;
        }
    };
    let injected = "a\"} 1\nfake_series{x=\"1\"} 42\n# EOF\n".to_string();
    call(injected.clone()).await;
    let (code, first) = https_get(&env, d.http, "/metrics").await;
    assert_eq!(code, 200);
    let mut tasks = Vec::new();
    for t in 0..10 {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                call(format!("junk-{t}-{i}-{}", "z".repeat(i % 7))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, after) = https_get(&env, d.http, "/metrics").await;
    assert_eq!(d.stop(), 0);
    let series = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .filter(|s| !s.contains("latency") && !s.contains("_bucket"))
            .collect()
    };
    // the same series before and after 3,000 distinct role names (only values grew)
    assert_eq!(series(&first), series(&after));
    assert!(!after.contains("junk-"));
    assert!(!after.contains("fake_series"));
    assert!(after.contains("role=\"unknown\""), "{after}");
    assert_eq!(after.matches("# EOF").count(), 1);
    assert!(after.trim_end().ends_with("# EOF"));
    let parsed = prometheus_parse::Scrape::parse(after.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(parsed
        .samples
        .iter()
        .all(|s| s.labels.iter().all(|(_, v)| !v.contains('\n'))));
    assert!(parsed.samples.iter().any(|s| s.metric.contains("exchange")));
}

/// Mounts a small tmpfs on `dir`; `None` (with the reason printed) where that is refused.
fn small_tmpfs(dir: &std::path::Path) -> Option<Unmount> {
    std::fs::create_dir_all(dir).unwrap();
    match Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(dir)
        .output()
    {
        Ok(o) if o.status.success() => Some(Unmount(dir.to_path_buf())),
        Ok(o) => {
            println!(
                "SKIPPED: mounting a small tmpfs was refused: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            println!("SKIPPED: cannot run mount: {e}");
            None
        }
    }
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_audit_disk_full_no_state_change_happens() {
    let env = TestEnv::new();
    let audit_dir = env.paths.dir.join("audit");
    let Some(_guard) = small_tmpfs(&audit_dir) else {
        return;
    };
    let key = with_static_issuer(&env);
    env.append_config(
        r#"
[[rotations]]
path = "app/rotating"
every = "24h"

[rotations.fields.password]
generator = "password"
"#,
    );
    let d = env.start();
    let admin = env.admin_channel(&d).await;
    let mut c = SecretsClient::new(admin.clone());
    let put = |path: &str, v: &str| pb::PutSecretRequest {
        path: path.into(),
        fields: HashMap::from([("v".to_string(), v.as_bytes().to_vec())]),
        ..Default::default()
    };
    c.put(put("app/a", "one")).await.unwrap();
    c.put(put("app/a", "two")).await.unwrap();
    c.put(put("app/del", "x")).await.unwrap();
    c.delete(pb::VersionsRequest {
        path: "app/del".into(),
        versions: vec![],
    })
    .await
    .unwrap();
    let ex = pb::token_exchange_client::TokenExchangeClient::new(env.channel_as(&d, None).await)
        .exchange(pb::ExchangeRequest {
            subject_token: platform_token(&key),
            role: "app".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // wait for the first rotation of app/rotating (it has none yet: runs at start)
    let mut a = pb::admin_client::AdminClient::new(admin.clone());
    let rotated = |a: &mut pb::admin_client::AdminClient<tonic::transport::Channel>| {
        let mut a = a.clone();
        async move {
            a.get_rotation_status(pb::RotationStatusRequest {
                prefix: "app/rotating".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .rotations
            .first()
            .map(|r| (r.current_version, r.state.clone()))
        }
    };
    let mut before_rotation = None;
    for _ in 0..50 {
        before_rotation = rotated(&mut a).await;
        if before_rotation
            .as_ref()
            .is_some_and(|(v, s)| *v >= 1 && s == "current")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let snapshot = |c: &mut SecretsClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            let mut m: Vec<SecretState> = c
                .list(pb::ListSecretsRequest {
                    prefix: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .secrets
                .into_iter()
                .map(|s| {
                    (
                        s.path,
                        s.current_version,
                        s.versions
                            .iter()
                            .map(|v| (v.version, v.deleted_at.is_some(), v.destroyed))
                            .collect(),
                    )
                })
                .collect();
            m.sort();
            m
        }
    };
    let before = snapshot(&mut c).await;

    // fill the audit disk
    let filler = audit_dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let unavailable = |r: Result<(), tonic::Status>, what: &str| match r {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{what}: {s:?}"),
        Ok(()) => panic!("{what} succeeded with the audit disk full"),
    };
    // the writer may need a moment to see the disk is full; then every change is refused
    let mut first = Ok(());
    let mut written = 0;
    for _ in 0..50 {
        first = c.put(put("app/a", "three")).await.map(|_| ());
        if first.is_err() {
            break;
        }
        // acknowledged (and recorded) before the disk ran out: part of the expected state
        written += 1;
    }
    unavailable(first, "Put");
    let mut before = before;
    for (p, current, versions) in before.iter_mut() {
        if p == "app/a" {
            for v in 3..3 + written {
                versions.push((v, false, false));
            }
            *current += written;
        }
    }
    let vr = |p: &str, v: Vec<u64>| pb::VersionsRequest {
        path: p.into(),
        versions: v,
    };
    unavailable(c.delete(vr("app/a", vec![])).await.map(|_| ()), "Delete");
    unavailable(c.destroy(vr("app/a", vec![1])).await.map(|_| ()), "Destroy");
    unavailable(
        c.undelete(vr("app/del", vec![])).await.map(|_| ()),
        "Undelete",
    );
    unavailable(
        a.rotate_secret(pb::RotateSecretRequest {
            path: "app/rotating".into(),
        })
        .await
        .map(|_| ()),
        "RotateSecret",
    );
    let mut leases = pb::leases_client::LeasesClient::new(admin.clone());
    unavailable(
        leases
            .revoke(pb::RevokeLeaseRequest {
                lease_id: ex.lease_id.clone(),
            })
            .await
            .map(|_| ()),
        "Revoke",
    );
    // space again: the store is as it was, the credential still works
    std::fs::remove_file(&filler).unwrap();
    let mut after = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(r) = c
            .list(pb::ListSecretsRequest {
                prefix: String::new(),
            })
            .await
        {
            let _ = r;
            after = snapshot(&mut c).await;
            break;
        }
    }
    assert_eq!(before, after, "a refused change was applied");
    assert_eq!(rotated(&mut a).await, before_rotation);
    let mut r = tonic::Request::new(pb::GetSecretRequest {
        path: "app/a".into(),
        ..Default::default()
    });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", ex.access_token).parse().unwrap(),
    );
    let got = SecretsClient::new(env.channel_as(&d, None).await)
        .get(r)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, 2 + written);
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_in_a_loop_every_stored_change_and_every_answer_has_its_record() {
    let env = TestEnv::new();
    let rounds = 5;
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut deleted_acked: Vec<String> = Vec::new();
    for round in 0..rounds {
        let d = env.start();
        let ch = env.admin_channel(&d).await;
        let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let dels = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for t in 0..6 {
            let (ch, acks, dels) = (ch.clone(), acks.clone(), dels.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = SecretsClient::new(ch);
                for i in 0u64.. {
                    let path = format!("k/r{round}/t{t}/s{}", i % 5);
                    let r = c
                        .put(pb::PutSecretRequest {
                            path: path.clone(),
                            fields: HashMap::from([("v".to_string(), b"x".to_vec())]),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(r) => acks
                            .lock()
                            .unwrap()
                            .push((path.clone(), r.into_inner().version)),
                        Err(_) => break,
                    }
                    // mixed load: reads and deletes between the writes
                    if c.get(pb::GetSecretRequest {
                        path: path.clone(),
                        ..Default::default()
                    })
                    .await
                    .is_err()
                    {
                        break;
                    }
                    if i % 3 == 2 {
                        match c
                            .delete(pb::VersionsRequest {
                                path: path.clone(),
                                versions: vec![],
                            })
                            .await
                        {
                            Ok(_) => dels.lock().unwrap().push(path),
                            Err(_) => break,
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(400 + 150 * round)).await;
        d.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        let n = acks.lock().unwrap().len();
        assert!(n > 5, "round {round}: only {n} writes before the kill");
        acked.extend(acks.lock().unwrap().drain(..));
        deleted_acked.extend(dels.lock().unwrap().drain(..));
    }
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    let stored = SecretsClient::new(ch)
        .list(pb::ListSecretsRequest {
            prefix: "k/".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .secrets;
    assert_eq!(d.stop(), 0);
    let recs = audit_records(&env);
    let count = |op: &str, decision: &str, resource: &str| {
        recs.iter()
            .filter(|r| {
                r.op.as_deref() == Some(op)
                    && r.decision.as_deref() == Some(decision)
                    && r.resources.iter().any(|x| x == resource)
            })
            .count()
    };
    // every stored version was preceded by an intent record for a Put of its path
    let mut versions = 0;
    for s in &stored {
        let intents = count(
            "keygate.v1.Secrets/Put",
            "intent",
            &format!("secret:{} fields:v", s.path),
        );
        let n = s.versions.len();
        versions += n;
        assert!(intents >= n, "{}: {n} versions, {intents} intents", s.path);
        let deleted = s.versions.iter().filter(|v| v.deleted_at.is_some()).count();
        if deleted > 0 {
            assert!(
                count(
                    "keygate.v1.Secrets/Delete",
                    "intent",
                    &format!("secret:{} versions:[]", s.path)
                ) > 0,
                "{}: deleted without a record",
                s.path
            );
        }
    }
    // every acknowledged answer has its outcome record
    let mut puts: HashMap<&str, usize> = HashMap::new();
    for (p, _) in &acked {
        *puts.entry(p).or_default() += 1;
    }
    for (p, n) in &puts {
        let recorded = count(
            "keygate.v1.Secrets/Put",
            "allow",
            &format!("secret:{p} fields:v"),
        );
        assert!(
            recorded >= *n,
            "{p}: {n} acknowledged puts, {recorded} records"
        );
    }
    let mut dels: HashMap<&str, usize> = HashMap::new();
    for p in &deleted_acked {
        *dels.entry(p).or_default() += 1;
    }
    for (p, n) in &dels {
        let recorded = count(
            "keygate.v1.Secrets/Delete",
            "allow",
            &format!("secret:{p} versions:[]"),
        );
        assert!(
            recorded >= *n,
            "{p}: {n} acknowledged deletes, {recorded} records"
        );
    }
    println!(
        "kill -9 rounds: {rounds}; acknowledged puts: {}, deletes: {}; stored versions: {versions}",
        acked.len(),
        deleted_acked.len()
    );
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_goes_not_serving_at_shutdown_and_reflection_also_serves_v1alpha() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let env = TestEnv::new();
    let d = env.start();
    let ch = env.channel_as(&d, None).await;
    let mut rc = ServerReflectionClient::new(ch.clone());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = rc
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            let names: Vec<&str> = l.service.iter().map(|s| s.name.as_str()).collect();
            assert!(names.contains(&"keygate.v1.Secrets"), "{names:?}");
        }
        other => panic!("{other:?}"),
    }
    let mut hc = HealthClient::new(ch.clone());
    let check = |s: &str| HealthCheckRequest { service: s.into() };
    assert_eq!(
        hc.check(check("keygate.v1.Secrets"))
            .await
            .unwrap()
            .into_inner()
            .status,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        hc.check(check("no.Such")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let mut w = hc
        .watch(check("keygate.v1.Secrets"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        w.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let asked = std::time::Instant::now();
    d.signal("TERM");
    assert_eq!(
        w.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    // the stream ends, and the open watch does not hold the shutdown for its 30 s grace
    assert!(!matches!(w.message().await, Ok(Some(_))));
    assert_eq!(d.wait(), 0);
    let took = asked.elapsed();
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
}

/// An allowed call of every method the descriptors list, each recorded once as `allow`. The
/// table is checked against the descriptors: a new RPC fails this test until it has a case.
#[tokio::test(flavor = "multi_thread")]
async fn every_method_in_the_descriptors_has_an_allowed_call_recorded_once() {
    let env = TestEnv::new();
    let key = with_static_issuer(&env);
    env.append_config(&format!(
        r#"
[[roles]]
name = "dbapp"
issuer = "static"
bound_subject = "x"
scopes = ["read:app/*", "db:plain"]

[[rotations]]
path = "app/rot"
every = "24h"

[rotations.fields.password]
generator = "password"

[[databases]]
name = "main"
url = "{}"

[[databases.roles]]
name = "plain"
default_ttl = "30s"
max_ttl = "1m"
"#,
        common::pg::url()
    ));
    let new_kek = env.paths.dir.join("kek-2");
    keygate::secrets::kek::generate_file(&new_kek).unwrap();
    let d = env.start();
    let admin = env.admin_channel(&d).await;
    let anon = env.channel_as(&d, None).await;
    let token = platform_token(&key);
    let cred = pb::token_exchange_client::TokenExchangeClient::new(anon.clone())
        .exchange(pb::ExchangeRequest {
            subject_token: token.clone(),
            role: "dbapp".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let fields = |k: &str, v: &[u8]| HashMap::from([(k.to_string(), v.to_vec())]);
    let mut password = HashMap::new();
    password.insert(
        "password".to_string(),
        pb::FieldGenerator {
            generator: "password".into(),
            ..Default::default()
        },
    );
    // (method, body, as the credential instead of the admin), in the order they run
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "keygate.v1.Secrets/Put",
            pb::PutSecretRequest {
                path: "app/x".into(),
                fields: fields("v", b"1"),
                ..Default::default()
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Secrets/Get",
            pb::GetSecretRequest {
                path: "app/x".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            true,
        ),
        (
            "keygate.v1.Secrets/List",
            pb::ListSecretsRequest::default().encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Secrets/Delete",
            pb::VersionsRequest {
                path: "app/x".into(),
                versions: vec![],
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Secrets/Undelete",
            pb::VersionsRequest {
                path: "app/x".into(),
                versions: vec![],
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Secrets/Destroy",
            pb::VersionsRequest {
                path: "app/x".into(),
                versions: vec![1],
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Secrets/Watch",
            pb::WatchRequest {
                paths: vec!["app/x".into()],
                prefixes: vec![],
            }
            .encode_to_vec(),
            true,
        ),
        (
            "keygate.v1.TokenExchange/Exchange",
            pb::ExchangeRequest {
                subject_token: token.clone(),
                role: "app".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Leases/Renew",
            pb::RenewLeaseRequest::default().encode_to_vec(),
            true,
        ),
        (
            "keygate.v1.Leases/Lookup",
            pb::LookupLeaseRequest::default().encode_to_vec(),
            true,
        ),
        (
            "keygate.v1.Leases/List",
            pb::ListLeasesRequest::default().encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Leases/RevokePrefix",
            pb::RevokePrefixRequest {
                prefix: "none/".into(),
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.DatabaseCredentials/Generate",
            pb::GenerateDatabaseCredentialsRequest {
                role: "plain".into(),
                ttl_seconds: 0,
            }
            .encode_to_vec(),
            true,
        ),
        (
            "keygate.v1.Admin/RotateKek",
            pb::RotateKekRequest {
                new_kek_file: new_kek.display().to_string(),
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/ReloadConfig",
            pb::ReloadConfigRequest {}.encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/ServerInfo",
            pb::ServerInfoRequest {}.encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/Explain",
            pb::ExplainRequest {
                token: token.clone(),
                role: "app".into(),
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/ListRoles",
            pb::ListRolesRequest {}.encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/GetRole",
            pb::GetRoleRequest { name: "app".into() }.encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/RotateSigningKey",
            pb::RotateSigningKeyRequest {}.encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/AuditHead",
            pb::AuditHeadRequest {}.encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/AuditHash",
            pb::AuditHashRequest {
                value: b"v".to_vec(),
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/RotateSecret",
            pb::RotateSecretRequest {
                path: "app/rot".into(),
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/GetRotationStatus",
            pb::RotationStatusRequest::default().encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/SetRotationPolicy",
            pb::RotationPolicy {
                path: "app/rot2".into(),
                every: "24h".into(),
                fields: password,
                ..Default::default()
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/DeleteRotationPolicy",
            pb::DeleteRotationPolicyRequest {
                path: "app/rot2".into(),
            }
            .encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/Backup",
            pb::BackupRequest {}.encode_to_vec(),
            false,
        ),
        (
            "keygate.v1.Admin/IssueAdminToken",
            pb::IssueAdminTokenRequest { ttl_seconds: 60 }.encode_to_vec(),
            false,
        ),
        // last: revoking its own lease also drops the database user it generated
        (
            "keygate.v1.Leases/Revoke",
            pb::RevokeLeaseRequest::default().encode_to_vec(),
            true,
        ),
    ];
    let listed: HashSet<String> = cases.iter().map(|c| c.0.to_string()).collect();
    let described: HashSet<String> = methods_from_descriptors()
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(listed, described, "every method needs an allowed case here");
    let streaming: HashSet<String> = methods_from_descriptors()
        .into_iter()
        .filter(|m| m.1)
        .map(|m| m.0)
        .collect();
    let mut ids = Vec::new();
    for (m, body, as_cred) in cases {
        let ch = if as_cred { anon.clone() } else { admin.clone() };
        let bearer = as_cred.then_some(cred.as_str());
        let mut a = raw::call(ch.clone(), m, body.clone(), bearer, streaming.contains(m)).await;
        // the rotation its policy starts at boot may still be in flight: a second one waits
        for _ in 0..50 {
            if a.code != tonic::Code::Aborted {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            a = raw::call(ch.clone(), m, body.clone(), bearer, streaming.contains(m)).await;
        }
        assert_eq!(a.code, tonic::Code::Ok, "{m}");
        ids.push((m, a.request_id.unwrap()));
    }
    assert_eq!(d.stop(), 0);
    let recs = audit_records(&env);
    for (m, id) in ids {
        let outcomes: Vec<&Record> = recs
            .iter()
            .filter(|r| {
                r.request_id.as_deref() == Some(id.as_str())
                    && r.decision.as_deref() != Some("intent")
            })
            .collect();
        assert_eq!(outcomes.len(), 1, "{m}");
        assert_eq!(outcomes[0].op.as_deref(), Some(m));
        assert_eq!(outcomes[0].decision.as_deref(), Some("allow"), "{m}");
    }
}
