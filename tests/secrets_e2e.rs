//! End to end through the real binary over real TLS: CLI and gRPC round trips, versions,
//! check-and-set, list, delete/undelete/destroy, pruning, restart, at-rest encryption, health,
//! metrics and reflection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn err(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "command should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_round_trip_versions_cas_delete_destroy_prune_and_restart() {
    let env = TestEnv::new();
    let d = env.start();
    let pw1 = marker("pw1");
    let pw2 = marker("pw2");
    let key = marker("key");
    let file_val = marker("file");

    // put from argv, stdin and a file
    let val_file = env.tmp.path().join("value.txt");
    std::fs::write(&val_file, &file_val).unwrap();
    let out = env.cli_with(
        &d,
        &[
            "put",
            "prod/api",
            "db_password=-",
            &format!("api_key={key}"),
            &format!("cert=@{}", val_file.display()),
        ],
        Some(format!("{pw1}\n").as_bytes()),
        true,
    );
    assert!(ok(&out).contains("prod/api version 1"));

    let got = ok(&env.cli(&d, &["get", "prod/api", "--field", "db_password"]));
    assert_eq!(got, format!("{pw1}\n"));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&env.cli(&d, &["get", "prod/api", "--json"]))).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["fields"]["api_key"], key.as_str());
    assert_eq!(json["fields"]["cert"], file_val.as_str());

    // CAS: wrong version refused, right version accepted
    let e = err(&env.cli(&d, &["put", "prod/api", "db_password=x", "--cas", "0"]));
    assert!(
        e.contains("FAILED_PRECONDITION") && e.contains("current is 1"),
        "{e}"
    );
    ok(&env.cli(
        &d,
        &[
            "put",
            "prod/api",
            &format!("db_password={pw2}"),
            "--cas",
            "1",
        ],
    ));
    assert_eq!(
        ok(&env.cli(&d, &["get", "prod/api", "--field", "db_password"])),
        format!("{pw2}\n")
    );
    assert_eq!(
        ok(&env.cli(
            &d,
            &[
                "get",
                "prod/api",
                "--version",
                "1",
                "--field",
                "db_password"
            ]
        )),
        format!("{pw1}\n")
    );

    // list shows names and versions, never values
    ok(&env.cli(&d, &["put", "prod/web", "token=t"]));
    ok(&env.cli(&d, &["put", "staging/api", "token=t"]));
    let listed = ok(&env.cli(&d, &["list", "prod/"]));
    assert!(listed.contains("prod/api\tversion 2"), "{listed}");
    assert!(listed.contains("prod/web\tversion 1"), "{listed}");
    assert!(!listed.contains("staging"), "{listed}");
    assert!(!listed.contains(&pw2));

    // delete / undelete / destroy
    ok(&env.cli(&d, &["delete", "prod/api"]));
    let e = err(&env.cli(&d, &["get", "prod/api"]));
    assert!(e.contains("NOT_FOUND") && e.contains("deleted"), "{e}");
    ok(&env.cli(&d, &["undelete", "prod/api", "--versions", "2"]));
    assert_eq!(
        ok(&env.cli(&d, &["get", "prod/api", "--field", "db_password"])),
        format!("{pw2}\n")
    );
    ok(&env.cli(&d, &["destroy", "prod/api", "--versions", "1"]));
    let e = err(&env.cli(&d, &["get", "prod/api", "--version", "1"]));
    assert!(e.contains("destroyed"), "{e}");
    let e = err(&env.cli(&d, &["undelete", "prod/api", "--versions", "1"]));
    assert!(e.contains("destroyed"), "{e}");

    // max_versions pruning
    for i in 0..5 {
        ok(&env.cli(
            &d,
            &[
                "put",
                "prune/me",
                &format!("v=value{i}"),
                "--max-versions",
                "3",
            ],
        ));
    }
    let listed = ok(&env.cli(&d, &["list", "prune/", "--json"]));
    let m: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(m["current_version"], 5);
    assert_eq!(m["oldest_version"], 3);
    assert_eq!(m["versions"], 3);
    let e = err(&env.cli(&d, &["get", "prune/me", "--version", "2"]));
    assert!(e.contains("NOT_FOUND"), "{e}");
    assert_eq!(
        ok(&env.cli(&d, &["get", "prune/me", "--version", "3", "--field", "v"])),
        "value2\n"
    );

    // restart keeps everything
    assert_eq!(d.stop(), 0);
    let d = env.start();
    assert_eq!(
        ok(&env.cli(&d, &["get", "prod/api", "--field", "db_password"])),
        format!("{pw2}\n")
    );
    assert_eq!(
        ok(&env.cli(&d, &["get", "prod/web", "--field", "token"])),
        "t\n"
    );
    assert!(err(&env.cli(&d, &["get", "prod/api", "--version", "1"])).contains("destroyed"));
    assert_eq!(
        ok(&env.cli(&d, &["get", "prune/me", "--field", "v"])),
        "value4\n"
    );
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[pw1, pw2, key, file_val]);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_round_trip_and_watch() {
    let env = TestEnv::new();
    let d = env.start();
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    let secret = marker("grpc");

    let mut watch = c
        .watch(pb::WatchRequest {
            paths: vec![],
            prefixes: vec!["app/".into()],
        })
        .await
        .unwrap()
        .into_inner();

    let put = |cas: Option<u64>, v: &str| pb::PutSecretRequest {
        path: "app/db".into(),
        fields: HashMap::from([("password".to_string(), v.as_bytes().to_vec())]),
        cas,
        max_versions: Some(2),
        custom_metadata: HashMap::from([("owner".to_string(), "team-a".to_string())]),
        replace_custom_metadata: true,
    };
    let r = c.put(put(Some(0), &secret)).await.unwrap().into_inner();
    assert_eq!(r.version, 1);
    let conflict = c.put(put(Some(0), "x")).await.unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::FailedPrecondition);
    c.put(put(Some(1), "second")).await.unwrap();
    c.put(put(None, "third")).await.unwrap();

    let got = c
        .get(pb::GetSecretRequest {
            path: "app/db".into(),
            version: 0,
            previous: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, 3);
    assert_eq!(got.fields["password"], b"third");
    let meta = got.metadata.unwrap();
    assert_eq!(meta.custom_metadata["owner"], "team-a");
    assert_eq!(meta.oldest_version, 2, "max_versions=2 keeps 2 and 3");

    // Watch saw: created 1, created 2, created 3 + pruned 1 (order of commit).
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
            .await
            .expect("watch event in time")
            .unwrap()
            .unwrap();
        seen.push((ev.version, ev.kind()));
    }
    use pb::watch_event::Kind;
    assert_eq!(
        seen,
        vec![
            (1, Kind::Created),
            (2, Kind::Created),
            (3, Kind::Created),
            (1, Kind::Pruned)
        ]
    );

    // Bad input gets a clear error, not a panic.
    let bad = c
        .get(pb::GetSecretRequest {
            path: "../etc/passwd".into(),
            version: 0,
            previous: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let too_big = c
        .put(pb::PutSecretRequest {
            path: "big/one".into(),
            fields: HashMap::from([("f".to_string(), vec![0u8; 5 * 1024 * 1024])]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        too_big.code(),
        tonic::Code::ResourceExhausted,
        "{too_big:?}"
    );
    // ...and the daemon still serves.
    assert!(c
        .get(pb::GetSecretRequest {
            path: "app/db".into(),
            version: 3,
            previous: false,
        })
        .await
        .is_ok());
    assert_eq!(d.stop(), 0);
    env.assert_logs_free_of(&[secret]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_plaintext_at_rest() {
    let env = TestEnv::new();
    let d = env.start();
    let secret = marker("atrest");
    let out = env.cli(&d, &["put", "rest/check", &format!("value={secret}")]);
    assert!(out.status.success());
    assert_eq!(d.stop(), 0);
    let mut files = 0;
    let mut stack = vec![env.data_dir()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&p).unwrap();
            for form in encodings(&secret) {
                assert!(
                    !contains(&bytes, form.as_bytes()),
                    "{} holds the secret ({form})",
                    p.display()
                );
            }
        }
    }
    assert!(files > 0);
    // The scanner itself finds a planted copy, so a pass above means something.
    let probe = env.data_dir().join("probe");
    std::fs::write(&probe, format!("xx{secret}yy")).unwrap();
    assert!(contains(&std::fs::read(&probe).unwrap(), secret.as_bytes()));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reflection_metrics_and_readiness() {
    let env = TestEnv::new();
    let d = env.start();
    // grpc.health.v1 (anonymous: no client certificate needed)
    let anon = env.channel_as(&d, None).await;
    let mut h = tonic_health::pb::health_client::HealthClient::new(anon.clone());
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "keygate.v1.Secrets".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // reflection lists our services
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut r = ServerReflectionClient::new(anon);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = r
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "keygate.v1.Secrets",
        "keygate.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }

    // HTTPS side listener
    assert_eq!(
        https_get(&env, d.http, "/healthz").await,
        (200, "ok\n".into())
    );
    assert_eq!(https_get(&env, d.http, "/readyz").await.0, 200);
    let out = env.cli(&d, &["put", "m/one", "a=b"]);
    assert!(out.status.success());
    let _ = env.cli(&d, &["get", "m/missing"]);
    let (code, body) = https_get(&env, d.http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains(r#"keygate_requests_total{rpc="keygate.v1.Secrets/Put",code="OK"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"keygate_requests_total{rpc="keygate.v1.Secrets/Get",code="NOT_FOUND"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("keygate_request_duration_seconds_bucket"),
        "{body}"
    );
    assert!(body.contains("keygate_store_secrets 1"), "{body}");
    assert_eq!(https_get(&env, d.http, "/nope").await.0, 404);
    assert_eq!(d.stop(), 0);
}

#[test]
fn an_unreachable_daemon_is_named_once_in_plain_words() {
    let env = TestEnv::new();
    // a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(BIN)
        .args(["get", "app/x", "--addr"])
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--cacert")
        .arg(&env.paths.ca)
        .env_remove("KEYGATE_CLIENT_CERT")
        .env_remove("KEYGATE_CLIENT_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot connect to https://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(err.matches("tcp connect error").count(), 1, "{err}");
}
