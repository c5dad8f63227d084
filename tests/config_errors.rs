//! Bad config: each mistake is refused with a message naming the key (and line), exit code 64.
//! SIGHUP re-reads the config; a broken file is refused and the daemon keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn serve_with(env: &TestEnv) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&env.paths.config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn edit(env: &TestEnv, f: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(&env.paths.config).unwrap();
    let new = f(text.clone());
    assert_ne!(new, text, "the edit changed nothing");
    std::fs::write(&env.paths.config, new).unwrap();
}

#[test]
fn bad_config_matrix() {
    struct Case {
        name: &'static str,
        edit: fn(String) -> String,
        expect: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "unknown key",
            edit: |t| {
                t.replace(
                    "node_id = \"dev-1\"",
                    "node_id = \"dev-1\"\nnode_idd = \"x\"",
                )
            },
            expect: &[
                "line 6",
                "key `server.node_idd`",
                "unknown field `node_idd`",
            ],
        },
        Case {
            name: "wrong type",
            edit: |t| {
                t.replace(
                    "node_id = \"dev-1\"",
                    "node_id = \"dev-1\"\nmax_message_bytes = \"big\"",
                )
            },
            expect: &["line 6", "key `server.max_message_bytes`", "invalid type"],
        },
        Case {
            name: "bad address",
            edit: |t| {
                t.replace(
                    "grpc_listen = \"127.0.0.1:0\"",
                    "grpc_listen = \"localhost\"",
                )
            },
            expect: &["line 3", "key `server.grpc_listen`", "not an address"],
        },
        Case {
            name: "missing cert file",
            edit: |t| t.replace("cert_file = \"server.pem\"", "cert_file = \"nope.pem\""),
            expect: &["key `tls.cert_file`", "line 8", "nope.pem", "No such file"],
        },
        Case {
            name: "not a certificate",
            edit: |t| t.replace("cert_file = \"server.pem\"", "cert_file = \"keygate.toml\""),
            expect: &["key `tls.cert_file`", "no certificate found"],
        },
        Case {
            name: "unknown backend",
            edit: |t| t.replace("backend = \"sled\"", "backend = \"mongo\""),
            expect: &["key `storage.backend`", "unknown backend \"mongo\""],
        },
        Case {
            name: "postgres operation_timeout out of range",
            edit: |t| {
                t.replace(
                    "backend = \"sled\"\npath = \"data\"",
                    "backend = \"postgres\"\nurl = \"postgres://kg@127.0.0.1:9/kg\"\ntls = \"dangerous_disable\"\noperation_timeout = \"0s\"",
                )
            },
            expect: &["key `storage.operation_timeout`", "between 1s and 5m"],
        },
        Case {
            name: "postgres change_log_retention too short",
            edit: |t| {
                t.replace(
                    "backend = \"sled\"\npath = \"data\"",
                    "backend = \"postgres\"\nurl = \"postgres://kg@127.0.0.1:9/kg\"\ntls = \"dangerous_disable\"\nchange_log_retention = \"10s\"",
                )
            },
            expect: &["key `storage.change_log_retention`", "between 1m and 7d"],
        },
        Case {
            name: "sled with a postgres-only key",
            edit: |t| {
                t.replace(
                    "path = \"data\"",
                    "path = \"data\"\noperation_timeout = \"4s\"",
                )
            },
            expect: &[
                "key `storage.operation_timeout`",
                "only for backend = \"postgres\"",
            ],
        },
        Case {
            name: "both kek sources",
            edit: |t| t.replace("file = \"kek\"", "file = \"kek\"\nenv = \"X\""),
            expect: &["key `kek`", "exactly one of kek.file or kek.env"],
        },
        Case {
            name: "missing section",
            edit: |t| t.replace("[tls]", "[tlz]"),
            expect: &["unknown field `tlz`"],
        },
        Case {
            name: "admin without client CA",
            edit: |t| t.replace("client_ca_file = \"ca.pem\"\n", ""),
            expect: &["key `admin.subjects`", "tls.client_ca_file"],
        },
        Case {
            name: "audit in the database without a database",
            edit: |t| t + "\n[audit]\nstore = \"postgres\"\n",
            expect: &["key `audit.store`", "set [storage] backend = \"postgres\""],
        },
        Case {
            name: "unknown audit store",
            edit: |t| t + "\n[audit]\nstore = \"s3\"\n",
            expect: &["key `audit.store`", "\"s3\": use \"files\" or \"postgres\""],
        },
        Case {
            name: "database audit store with one of its two key files",
            edit: |t| {
                t.replace(
                    "[storage]\nbackend = \"sled\"\npath = \"data\"\n",
                    "[storage]\nbackend = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/none\"\ntls = \"dangerous_disable\"\n",
                ) + "\n[audit]\nstore = \"postgres\"\nsigning_key_file = \"audit-signing.key\"\n"
            },
            expect: &[
                "key `audit.signing_key_file`",
                "set both signing_key_file and hmac_key_file",
            ],
        },
        Case {
            name: "vault api on a bad address",
            edit: |t| t + "\n[vault_api]\nlisten = \"nowhere\"\n",
            expect: &[
                "key `vault_api.listen`",
                "is not an address like 127.0.0.1:8200",
            ],
        },
        Case {
            name: "vault api KV mount on a reserved path",
            edit: |t| t + "\n[vault_api]\nlisten = \"127.0.0.1:0\"\nkv_mount = \"sys\"\n",
            expect: &[
                "key `vault_api.kv_mount`",
                "not sys, auth, database or identity",
            ],
        },
    ];
    for case in cases {
        let env = TestEnv::new();
        edit(&env, case.edit);
        let (code, stderr) = serve_with(&env);
        assert_eq!(code, 64, "{}: exit code (stderr: {stderr})", case.name);
        for e in case.expect {
            assert!(stderr.contains(e), "{}: {e:?} not in {stderr:?}", case.name);
        }
        assert!(
            !env.data_dir().exists(),
            "{}: a bad config must not half-start",
            case.name
        );
    }

    // KEK file readable by others
    let env = TestEnv::new();
    let kek = env.paths.dir.join("kek");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = serve_with(&env);
    assert_eq!(code, 64, "{stderr}");
    for e in ["key `kek.file`", "line 17", "mode 644", "chmod 600"] {
        assert!(stderr.contains(e), "{e:?} not in {stderr:?}");
    }

    // KEK from an unset environment variable
    let env = TestEnv::new();
    edit(&env, |t| {
        t.replace("file = \"kek\"", "env = \"KEYGATE_TEST_UNSET_KEK\"")
    });
    let (code, stderr) = serve_with(&env);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("key `kek.env`") && stderr.contains("is not set"),
        "{stderr}"
    );

    // A file that does not exist
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/keygate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

fn wait_for_log(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if d.log_text().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("log never said {needle:?}:\n{}", d.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reload_keeps_serving_on_a_broken_file_and_applies_a_good_one() {
    let env = TestEnv::new();
    let d = env.start();
    assert!(env.cli(&d, &["put", "hup/a", "v=1"]).status.success());
    let good = std::fs::read_to_string(&env.paths.config).unwrap();

    // Broken file: refused, logged, old config stays, daemon serves.
    std::fs::write(&env.paths.config, good.replace("[admin]", "[admin\nbroken")).unwrap();
    d.signal("HUP");
    wait_for_log(&d, "config reload refused");
    let out = env.cli(&d, &["get", "hup/a", "--field", "v"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same through Admin.ReloadConfig.
    let out = env.cli(&d, &["admin", "reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FAILED_PRECONDITION") && stderr.contains("line"),
        "{stderr}"
    );
    assert!(env.cli(&d, &["get", "hup/a"]).status.success());

    // A good file that changes [admin] applies at once: the admin is no longer listed.
    std::fs::write(
        &env.paths.config,
        good.replace("CN=keygate-admin", "CN=someone-else"),
    )
    .unwrap();
    d.signal("HUP");
    wait_for_log(&d, "config reloaded");
    let out = env.cli(&d, &["get", "hup/a"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    let (code, metrics) = https_get(&env, d.http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"keygate_config_reloads_total{outcome="refused"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keygate_config_reloads_total{outcome="ok"} 1"#),
        "{metrics}"
    );

    // A change to a restart-only setting is reported as such.
    std::fs::write(
        &env.paths.config,
        good.replace("node_id = \"dev-1\"", "node_id = \"dev-2\""),
    )
    .unwrap();
    d.signal("HUP");
    wait_for_log(&d, r#""needs_restart":"[\"server\"]""#);
    assert_eq!(d.stop(), 0);
    // each SIGHUP reload is on record, its intent before it: refused, applied, applied
    let mut hup: Vec<(String, String)> = Vec::new();
    for seg in keygate::audit::writer::segments(&env.paths.dir.join("audit")).unwrap() {
        for l in std::fs::read_to_string(seg).unwrap().lines() {
            let r: keygate::audit::record::Record = serde_json::from_str(l).unwrap();
            if r.op.as_deref() == Some(keygate::server::SIGHUP_RELOAD) {
                hup.push((r.request_id.unwrap(), r.decision.unwrap()));
            }
        }
    }
    let decisions: Vec<&str> = hup.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        decisions,
        ["intent", "error", "intent", "allow", "intent", "allow"],
        "{hup:?}"
    );
    assert!(hup.chunks(2).all(|p| p[0].0 == p[1].0));
}

#[test]
fn identity_config_refusals() {
    let gh = "[[issuers]]\nname = \"gh\"\npreset = \"github-actions\"\naudience = \"https://keygate.test\"\n";
    let cases: &[(&str, String, &[&str])] = &[
        (
            "two issuers with the same iss",
            format!("{gh}\n[[issuers]]\nname = \"gh2\"\npreset = \"github-actions\"\naudience = \"https://keygate.test\"\n"),
            &["key `issuers[1].issuer`", "\"gh\" and \"gh2\"", "token.actions.githubusercontent.com"],
        ),
        (
            "role on a shared issuer pinning only the owner",
            format!("{gh}\n[[roles]]\nname = \"r\"\nissuer = \"gh\"\nclaims = {{ repository_owner = \"acme\" }}\nscopes = [\"read:a/*\"]\n"),
            &["key `roles[0].claims`", "shared by every GitHub tenant", "repository_id"],
        ),
        (
            "role constraining nothing",
            format!("{gh}\n[[roles]]\nname = \"r\"\nissuer = \"gh\"\nscopes = [\"read:a/*\"]\n"),
            &["key `roles[0].claims`", "must constrain the token"],
        ),
        (
            "wildcard owner",
            format!("{gh}\n[[roles]]\nname = \"r\"\nissuer = \"gh\"\nbound_subject = {{ glob = \"repo:*\" }}\nscopes = [\"read:a/*\"]\n"),
            &["key `roles[0].claims`", "literal owner"],
        ),
        (
            "HMAC algorithm",
            format!("{gh}algorithms = [\"RS256\", \"HS256\"]\n"),
            &["key `issuers[0].algorithms`", "symmetric"],
        ),
        (
            "alg none",
            format!("{gh}algorithms = [\"none\"]\n"),
            &["key `issuers[0].algorithms`", "never accepted"],
        ),
        (
            "http discovery without the dangerous flag",
            "[[issuers]]\nname = \"x\"\nissuer = \"https://x.example\"\ndiscovery_url = \"http://127.0.0.1:9/.well-known/openid-configuration\"\naudience = \"a\"\n".into(),
            &["key `issuers[0].discovery_url`", "HTTPS only", "dangerous_allow_http_loopback_issuers"],
        ),
        (
            "http to a non-loopback host even with the flag",
            "[identity]\ndangerous_allow_http_loopback_issuers = true\n\n[[issuers]]\nname = \"x\"\nissuer = \"https://x.example\"\njwks_url = \"http://10.0.0.1/jwks\"\naudience = \"a\"\n".into(),
            &["key `issuers[0].jwks_url`", "only to a loopback IP"],
        ),
        (
            "github preset with a foreign issuer",
            "[[issuers]]\nname = \"gh\"\npreset = \"github-actions\"\nissuer = \"https://evil.example\"\naudience = \"a\"\n".into(),
            &["key `issuers[0].issuer`", "token.actions.githubusercontent.com"],
        ),
        (
            "role on an unknown issuer",
            format!("{gh}\n[[roles]]\nname = \"r\"\nissuer = \"nope\"\nclaims = {{ repository_id = 1 }}\nscopes = [\"read:a/*\"]\n"),
            &["key `roles[0].issuer`", "no [[issuers]] entry is named \"nope\""],
        ),
        (
            "role name in keygate's own namespace",
            format!("{gh}\n[[roles]]\nname = \"_admin-cert\"\nissuer = \"gh\"\nclaims = {{ repository_id = 1 }}\nscopes = [\"read:a/*\"]\n"),
            &["key `roles[0].name`", "starting with `_`"],
        ),
        (
            "bad scope",
            format!("{gh}\n[[roles]]\nname = \"r\"\nissuer = \"gh\"\nclaims = {{ repository_id = 1 }}\nscopes = [\"fly:a/*\"]\n"),
            &["key `roles[0].scopes`", "unknown capability"],
        ),
        (
            "GitHub Enterprise Server role pinning only the owner",
            "[[issuers]]\nname = \"ghes\"\npreset = \"github-actions\"\nissuer = \"https://ghes.acme.example/_services/token\"\naudience = \"a\"\n\n[[roles]]\nname = \"r\"\nissuer = \"ghes\"\nclaims = { repository_owner = \"acme\" }\nscopes = [\"read:a/*\"]\n".into(),
            &["key `roles[0].claims`", "shared by every GitHub tenant"],
        ),
        (
            "rotation of a database role not declared rotatable",
            "[[databases]]\nname = \"main\"\nurl = \"postgres://postgres@127.0.0.1:9/test\"\nrotatable_roles = [\"app_blue\"]\n\n[[rotations]]\npath = \"db/x\"\nevery = \"1d\"\n[rotations.postgres]\ndatabase = \"main\"\nroles = [\"app_blue\", \"postgres\"]\n".into(),
            &["key `rotations[0].postgres`", "\"postgres\" is not in rotatable_roles"],
        ),
        (
            "unknown issuer key",
            format!("{gh}jwks_uri = \"https://x\"\n"),
            &["unknown field `jwks_uri`"],
        ),
    ];
    for (name, extra, expect) in cases {
        let env = TestEnv::new();
        let text = std::fs::read_to_string(&env.paths.config).unwrap();
        std::fs::write(&env.paths.config, text + "\n" + extra).unwrap();
        let (code, stderr) = serve_with(&env);
        assert_eq!(code, 64, "{name}: {stderr}");
        for e in *expect {
            assert!(stderr.contains(e), "{name}: {e:?} not in {stderr:?}");
        }
    }
    // the same shape with a numeric id pin starts
    let env = TestEnv::new();
    let text = std::fs::read_to_string(&env.paths.config).unwrap();
    std::fs::write(
        &env.paths.config,
        text + "\n" + gh + "\n[[roles]]\nname = \"r\"\nissuer = \"gh\"\nclaims = { repository_id = 123 }\nscopes = [\"read:a/*\"]\n",
    )
    .unwrap();
    let d = env.start();
    assert_eq!(d.stop(), 0);
}
