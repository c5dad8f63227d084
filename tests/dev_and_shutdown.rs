//! `keygate dev` from nothing to a working system, graceful shutdown, and the log check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct DevRun {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
}

fn start_dev(dir: &std::path::Path, log: std::path::PathBuf) -> DevRun {
    let log_copy = log.clone();
    let mut child = Command::new(BIN)
        .args(["dev", "--dir"])
        .arg(dir)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--vault-listen",
            "127.0.0.1:0",
            // ports of its own: the test passes while a `keygate dev` runs on the defaults
            "--issuer-listen",
            "127.0.0.1:0",
        ])
        .env("KEYGATE_LOG", LOG_LEVEL)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        std::fs::write(log, buf).unwrap();
    });
    let out = child.stdout.take().unwrap();
    let stdout = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let so = stdout.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("Stop with Ctrl-C");
            so.lock().unwrap().push_str(&(line + "\n"));
            if done {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(300));
        panic!(
            "keygate dev did not start:\n{}",
            std::fs::read_to_string(&log_copy).unwrap_or_default()
        );
    }
    DevRun { child, stdout }
}

fn env_sh(dir: &std::path::Path) -> HashMap<String, String> {
    std::fs::read_to_string(dir.join("env.sh"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn cli_from_env_sh(
    dir: &std::path::Path,
    args: &[&str],
    log: std::path::PathBuf,
) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .envs(env_sh(dir))
        .env("KEYGATE_LOG", LOG_LEVEL)
        .output()
        .unwrap();
    std::fs::write(log, &out.stderr).unwrap();
    out
}

#[test]
fn dev_starts_seeds_reuses_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keygate-dev");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    let mut run = start_dev(&dir, logs.join("dev1.log"));
    let printed = run.stdout.lock().unwrap().clone();
    assert!(
        printed.contains("env.sh") && printed.contains("get demo/app"),
        "{printed}"
    );
    // the Vault-compatible API is on, and env.sh points Vault clients at it
    let env = env_sh(&dir);
    let vault = env.get("VAULT_ADDR").expect("VAULT_ADDR in env.sh");
    assert!(
        vault.starts_with("https://127.0.0.1:") && !vault.ends_with(":0"),
        "{vault}"
    );
    assert_eq!(env.get("VAULT_CACERT"), env.get("KEYGATE_CACERT"));
    // a second `keygate dev` on the first one's issuer port says what to do, not just "in use"
    let issuer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("dev-issuer.json")).unwrap()).unwrap();
    let second = Command::new(BIN)
        .args(["dev", "--dir"])
        .arg(dir.with_extension("second"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--vault-listen", "127.0.0.1:0", "--issuer-listen"])
        .arg(issuer["listen"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("is in use: is another `keygate dev` running?"),
        "{err}"
    );
    for f in [
        "ca.pem",
        "server.pem",
        "admin.pem",
        "kek",
        "keygate.toml",
        "env.sh",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    for f in ["kek", "ca-key.pem", "server-key.pem", "admin-key.pem"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let out = cli_from_env_sh(&dir, &["get", "demo/app", "--json"], logs.join("cli1.log"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fields"]["username"], "demo");
    let password = v["fields"]["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 20);
    // the seeded rotating secret rotates on demand
    assert!(printed.contains("admin rotate demo/rotating"), "{printed}");
    let out = cli_from_env_sh(
        &dir,
        &["admin", "rotate", "demo/rotating", "--json"],
        logs.join("cli-rotate.log"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["current_version"], 2, "{st}");
    assert_eq!(st["previous_version"], 1, "{st}");
    assert_eq!(st["schedule"], "every 1h, overlap 600s", "{st}");

    // The CI flow out of the box: a dev-issuer token, exchanged for a credential scoped to demo/*
    let tok = cli_from_env_sh(
        &dir,
        &["dev", "token", "--dir", dir.to_str().unwrap()],
        logs.join("cli-token.log"),
    );
    assert!(
        tok.status.success(),
        "{}",
        String::from_utf8_lossy(&tok.stderr)
    );
    let token_file = tmp.path().join("platform-token");
    std::fs::write(&token_file, &tok.stdout).unwrap();
    let cred_file = tmp.path().join("credential");
    let out = cli_from_env_sh(
        &dir,
        &[
            "exchange",
            "--role",
            "demo",
            "--token-file",
            token_file.to_str().unwrap(),
            "--out",
            cred_file.to_str().unwrap(),
        ],
        logs.join("cli-exchange.log"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&cred_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let credential = std::fs::read_to_string(&cred_file).unwrap();
    let as_job = |args: &[&str], log: &str| {
        let mut env = env_sh(&dir);
        env.remove("KEYGATE_CLIENT_CERT");
        env.remove("KEYGATE_CLIENT_KEY");
        let out = Command::new(BIN)
            .args(args)
            .env_clear()
            .envs(env)
            .env("KEYGATE_TOKEN", &credential)
            .output()
            .unwrap();
        std::fs::write(logs.join(log), &out.stderr).unwrap();
        out
    };
    let out = as_job(&["get", "demo/app", "--field", "password"], "job1.log");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{password}\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_job(&["put", "demo/app", "password=x"], "job2.log");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    // a token for another branch gets no credential, and the caller only learns the code
    let tok = cli_from_env_sh(
        &dir,
        &[
            "dev",
            "token",
            "--dir",
            dir.to_str().unwrap(),
            "--claim",
            "ref=refs/heads/dev",
        ],
        logs.join("cli-token2.log"),
    );
    std::fs::write(&token_file, &tok.stdout).unwrap();
    let out = cli_from_env_sh(
        &dir,
        &[
            "exchange",
            "--role",
            "demo",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        logs.join("cli-exchange2.log"),
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("PERMISSION_DENIED: no_matching_role"), "{e}");
    // ... while the admin's explain says why
    let out = cli_from_env_sh(
        &dir,
        &["admin", "explain", "--token", token_file.to_str().unwrap()],
        logs.join("cli-explain.log"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("demo: no match") && text.contains("refs/heads/dev"),
        "{text}"
    );

    // Ctrl-C stops it cleanly
    Command::new("kill")
        .args(["-INT", &run.child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(run.child.wait().unwrap().code(), Some(0));
    // its text log, written to a pipe, carries no terminal colour codes
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(logs.join("dev1.log")).map_or(true, |m| m.len() < 100)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read(logs.join("dev1.log")).unwrap();
    assert!(text.len() > 100, "the dev log was written");
    assert!(!text.contains(&0x1b), "ANSI escape codes in a log file");

    // Re-running reuses the directory and its data: same CA, same secret, not re-seeded.
    let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
    let mut run = start_dev(&dir, logs.join("dev2.log"));
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    let out = cli_from_env_sh(
        &dir,
        &["get", "demo/app", "--field", "password"],
        logs.join("cli2.log"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{password}\n")
    );
    let out = cli_from_env_sh(&dir, &["list", "demo/"], logs.join("cli3.log"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "demo/app\tversion 1\ndemo/rotating\tversion 2\n"
    );
    Command::new("kill")
        .args(["-TERM", &run.child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(run.child.wait().unwrap().code(), Some(0));
    std::thread::sleep(Duration::from_millis(200));

    // The generated password never reached any log of either run.
    let mut secrets = encodings(&password);
    secrets.extend(encodings(&credential));
    let finder = aho_corasick::AhoCorasick::new(secrets).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read(e.unwrap().path()).unwrap();
        n += 1;
        assert!(
            finder.find(&text).is_none(),
            "the demo password is in a log"
        );
    }
    assert_eq!(n, 13, "every run and CLI call left its log");
    // ... nor the audit log, which verifies whole and signed after the clean stop
    let audit = dir.join("audit");
    let segs = keygate::audit::writer::segments(&audit).unwrap();
    assert!(!segs.is_empty());
    for seg in segs {
        let text = std::fs::read(seg).unwrap();
        assert!(finder.find(&text).is_none(), "a secret is in the audit log");
    }
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish_and_loses_no_acknowledged_write() {
    let env = TestEnv::new();
    let d = env.start();
    let chan = env.admin_channel(&d).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (chan, acked) = (chan.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = SecretsClient::new(chan);
            for i in 0.. {
                let path = format!("g/t{t}/s{i}");
                let r = c
                    .put(pb::PutSecretRequest {
                        path: path.clone(),
                        fields: HashMap::from([("v".to_string(), path.as_bytes().to_vec())]),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => acked.lock().unwrap().push(path),
                    Err(_) => break,
                }
            }
        }));
    }
    // writes under way (however slow the machine is today) before the signal
    let t = std::time::Instant::now();
    while acked.lock().unwrap().len() <= 20 {
        assert!(t.elapsed() < Duration::from_secs(20), "no writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.signal("TERM");
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(d.wait(), 0, "clean exit after SIGTERM");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "writes were in flight: {}", acked.len());
    let d = env.start();
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    for path in &acked {
        let got = c
            .get(pb::GetSecretRequest {
                path: path.clone(),
                version: 0,
                previous: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{path} acknowledged but lost: {e}"))
            .into_inner();
        assert_eq!(got.fields["v"], path.as_bytes());
    }
    assert_eq!(d.stop(), 0);
}

#[test]
#[should_panic(expected = "secret marker")]
fn the_log_check_finds_a_planted_secret() {
    let env = TestEnv::new();
    let m = marker("planted");
    use base64::Engine;
    // planted base64-encoded at an odd offset, as a leaked `{:?}` of bytes might be
    let leaked = base64::engine::general_purpose::STANDARD.encode(format!("x{m}"));
    std::fs::write(
        env.logs.join("planted.log"),
        format!("level=INFO value={leaked}\n"),
    )
    .unwrap();
    env.assert_logs_free_of(&[m]);
}
