//! The audit log through the real daemon: one durable record per RPC, no secret in it, fail
//! closed on a full disk and recover, survive SIGKILL with every acknowledged request recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::audit::record::{Kind, Record};
use keygate::pb;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::HashMap;
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_writes_exactly_one_record_and_no_value_reaches_the_log() {
    let env = TestEnv::new();
    let d = env.start();
    let secret = marker("audit");
    let ch = env.admin_channel(&d).await;
    let mut c = SecretsClient::new(ch.clone());
    let mut a = pb::admin_client::AdminClient::new(ch.clone());
    let put = pb::PutSecretRequest {
        path: "au/db".into(),
        fields: HashMap::from([("password".to_string(), secret.as_bytes().to_vec())]),
        ..Default::default()
    };
    c.put(put).await.unwrap();
    c.get(pb::GetSecretRequest {
        path: "au/db".into(),
        version: 0,
        previous: false,
    })
    .await
    .unwrap();
    c.list(pb::ListSecretsRequest {
        prefix: "au/".into(),
    })
    .await
    .unwrap();
    c.delete(pb::VersionsRequest {
        path: "au/db".into(),
        versions: vec![],
    })
    .await
    .unwrap();
    c.undelete(pb::VersionsRequest {
        path: "au/db".into(),
        versions: vec![],
    })
    .await
    .unwrap();
    let _ = c
        .get(pb::GetSecretRequest {
            path: "au/missing".into(),
            version: 0,
            previous: false,
        })
        .await
        .unwrap_err();
    c.put(pb::PutSecretRequest {
        path: "au/tmp".into(),
        fields: HashMap::from([("x".to_string(), b"y".to_vec())]),
        ..Default::default()
    })
    .await
    .unwrap();
    c.destroy(pb::VersionsRequest {
        path: "au/tmp".into(),
        versions: vec![1],
    })
    .await
    .unwrap();
    drop(
        c.watch(pb::WatchRequest {
            paths: vec!["au/db".into()],
            prefixes: vec![],
        })
        .await
        .unwrap(),
    );
    let mut leases = pb::leases_client::LeasesClient::new(ch.clone());
    leases
        .list(pb::ListLeasesRequest {
            prefix: String::new(),
        })
        .await
        .unwrap();
    let _ = leases
        .revoke_prefix(pb::RevokePrefixRequest {
            prefix: "none/".into(),
        })
        .await
        .unwrap();
    a.list_roles(pb::ListRolesRequest {}).await.unwrap();
    let _ = a
        .get_role(pb::GetRoleRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    a.reload_config(pb::ReloadConfigRequest {}).await.unwrap();
    a.rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap();
    a.server_info(pb::ServerInfoRequest {}).await.unwrap();
    let head = a
        .audit_head(pb::AuditHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(head.healthy && head.seq >= 7, "{head:?}");
    assert_eq!(
        head.public_key,
        std::fs::read_to_string(env.paths.dir.join("audit/audit.pub"))
            .unwrap()
            .trim()
    );
    let via_rpc = a
        .audit_hash(pb::AuditHashRequest {
            value: secret.as_bytes().to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .hmac;
    // denied: no identity at all, and a garbage bearer token
    let mut anon = SecretsClient::new(env.channel_as(&d, None).await);
    let _ = anon
        .get(pb::GetSecretRequest {
            path: "au/db".into(),
            version: 0,
            previous: false,
        })
        .await
        .unwrap_err();
    let bogus = marker("bearer");
    let mut r = tonic::Request::new(pb::GetSecretRequest {
        path: "au/db".into(),
        version: 0,
        previous: false,
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {bogus}").parse().unwrap());
    let _ = anon.get(r).await.unwrap_err();
    let mut ex =
        pb::token_exchange_client::TokenExchangeClient::new(env.channel_as(&d, None).await);
    let platform = marker("platform");
    let _ = ex
        .exchange(pb::ExchangeRequest {
            subject_token: platform.clone(),
            role: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(d.stop(), 0);

    let recs = audit_records(&env);
    // a state change has an intent record before it, with the outcome's request id
    let outcomes: Vec<&Record> = recs
        .iter()
        .filter(|r| r.kind == Kind::Request && r.decision.as_deref() != Some("intent"))
        .collect();
    let intents: Vec<&Record> = recs
        .iter()
        .filter(|r| r.decision.as_deref() == Some("intent"))
        .collect();
    assert_eq!(
        intents
            .iter()
            .map(|r| r.op.as_deref().unwrap())
            .collect::<Vec<_>>(),
        vec![
            "keygate.v1.Secrets/Put",
            "keygate.v1.Secrets/Delete",
            "keygate.v1.Secrets/Undelete",
            "keygate.v1.Secrets/Put",
            "keygate.v1.Secrets/Destroy",
            "keygate.v1.Leases/RevokePrefix",
            "keygate.v1.Admin/ReloadConfig",
            "keygate.v1.Admin/RotateSigningKey",
        ]
    );
    for i in &intents {
        let pos = recs.iter().position(|r| r.seq == i.seq).unwrap();
        let outcome = recs[pos + 1..]
            .iter()
            .find(|r| r.request_id == i.request_id)
            .expect("an outcome record follows the intent");
        assert_eq!(outcome.op, i.op);
        assert!(outcome.decision.as_deref() != Some("intent"));
    }
    let reqs = outcomes;
    let ops: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.op.as_deref().unwrap(), r.status.as_deref().unwrap()))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("keygate.v1.Secrets/Put", "OK"),
            ("keygate.v1.Secrets/Get", "OK"),
            ("keygate.v1.Secrets/List", "OK"),
            ("keygate.v1.Secrets/Delete", "OK"),
            ("keygate.v1.Secrets/Undelete", "OK"),
            ("keygate.v1.Secrets/Get", "NOT_FOUND"),
            ("keygate.v1.Secrets/Put", "OK"),
            ("keygate.v1.Secrets/Destroy", "OK"),
            ("keygate.v1.Secrets/Watch", "OK"),
            ("keygate.v1.Leases/List", "OK"),
            ("keygate.v1.Leases/RevokePrefix", "OK"),
            ("keygate.v1.Admin/ListRoles", "OK"),
            ("keygate.v1.Admin/GetRole", "NOT_FOUND"),
            ("keygate.v1.Admin/ReloadConfig", "OK"),
            // the signing key rotates through the rotation state machine: each step audited
            ("rotation.pending", "OK"),
            ("rotation.set", "OK"),
            ("rotation.tested", "OK"),
            ("rotation.current", "OK"),
            ("keygate.v1.Admin/RotateSigningKey", "OK"),
            ("keygate.v1.Admin/ServerInfo", "OK"),
            ("keygate.v1.Admin/AuditHead", "OK"),
            ("keygate.v1.Admin/AuditHash", "OK"),
            ("keygate.v1.Secrets/Get", "UNAUTHENTICATED"),
            ("keygate.v1.Secrets/Get", "UNAUTHENTICATED"),
            ("keygate.v1.TokenExchange/Exchange", "UNAUTHENTICATED"),
        ]
    );
    let put = reqs[0];
    assert_eq!(put.decision.as_deref(), Some("allow"));
    assert_eq!(put.resources, vec!["secret:au/db fields:password"]);
    let caller = put.caller.as_ref().unwrap();
    assert_eq!(caller.principal.as_deref(), Some("admin"));
    assert_eq!(caller.tls_client.as_deref(), Some("CN=keygate-admin"));
    assert!(caller.peer.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(reqs[22].decision.as_deref(), Some("deny"));
    // the bogus bearer and platform token appear only as HMACs, findable with `audit hash`
    let hash = |v: &str| {
        let out = Command::new(BIN)
            .args(["audit", "hash", v, "--key"])
            .arg(env.paths.dir.join("audit-hmac.key"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(
        reqs[23].caller.as_ref().unwrap().token_hmac.as_deref(),
        Some(hash(&bogus).as_str())
    );
    assert_eq!(
        reqs[24].caller.as_ref().unwrap().token_hmac.as_deref(),
        Some(hash(&platform).as_str())
    );
    assert!(hash(&bogus).starts_with("hmac-sha256:"));
    assert_eq!(
        via_rpc,
        hash(&secret),
        "Admin.AuditHash and `audit hash` agree"
    );
    // sequence: open record, the requests, the final signed checkpoint; the chain verifies
    assert_eq!(recs.first().unwrap().kind, Kind::Recovery);
    assert_eq!(recs.last().unwrap().kind, Kind::Checkpoint);
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("OK: {} records", recs.len())),
        "{out}"
    );
    // no value, token or credential anywhere in the audit directory
    env.assert_logs_free_of(&[secret, bogus, platform]);

    // tamper: flip one byte of the Get record → verify names seq 4 (open record is 1, then
    // the Put's intent and outcome)
    let seg = keygate::audit::writer::segments(&env.paths.dir.join("audit"))
        .unwrap()
        .remove(0);
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, text.replacen("secret:au/db@0", "secret:au/dc@0", 1)).unwrap();
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAULT: seq 4:"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_closed_on_a_full_disk_then_recover_without_restart() {
    let env = TestEnv::new();
    let audit_dir = env.paths.dir.join("audit");
    std::fs::create_dir_all(&audit_dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&audit_dir)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "SKIPPED: mounting a small tmpfs was refused: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            println!("SKIPPED: cannot run mount: {e}");
            return;
        }
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(audit_dir.clone());
    let d = env.start();
    let secret = marker("full");
    assert!(env
        .cli(&d, &["put", "full/a", &format!("v={secret}")])
        .status
        .success());
    // fill the disk
    let filler = audit_dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    use std::io::Write;
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    // the log's last, partly used page may still take a few records: then it fails
    let mut served_before_full = 0;
    loop {
        match c
            .get(pb::GetSecretRequest {
                path: "full/a".into(),
                version: 0,
                previous: false,
            })
            .await
        {
            Ok(_) => {
                served_before_full += 1;
                assert!(served_before_full < 20, "the audit log never filled up");
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                break;
            }
        }
    }
    // from now on nothing is served: no value without its record
    for _ in 0..10 {
        let s = c
            .get(pb::GetSecretRequest {
                path: "full/a".into(),
                version: 0,
                previous: false,
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
        assert!(s.message().contains("audit log unavailable"));
        assert!(!s.message().contains(&secret));
    }
    let (code, _) = https_get(&env, d.http, "/readyz").await;
    assert_eq!(code, 503, "not ready while the audit log cannot be written");
    // space again: the next request is served and recorded, no restart
    std::fs::remove_file(&filler).unwrap();
    let got = c
        .get(pb::GetSecretRequest {
            path: "full/a".into(),
            version: 0,
            previous: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.fields["v"], secret.as_bytes());
    let (code, _) = https_get(&env, d.http, "/readyz").await;
    assert_eq!(code, 200);
    assert_eq!(d.stop(), 0);
    let recs = audit_records(&env);
    // the refused requests left no record (they were not served); the chain is whole
    assert_eq!(
        recs.iter()
            .filter(|r| r.op.as_deref() == Some("keygate.v1.Secrets/Get"))
            .count(),
        served_before_full + 1
    );
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_run_every_acknowledged_request_has_its_record() {
    let env = TestEnv::new();
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (ch, acked) = (ch.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = SecretsClient::new(ch);
            for i in 0.. {
                let path = format!("k/t{t}/s{i}");
                let r = c
                    .put(pb::PutSecretRequest {
                        path: path.clone(),
                        fields: HashMap::from([("v".to_string(), b"x".to_vec())]),
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
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    d.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "{}", acked.len());
    // after a restart and a clean stop the chain verifies and holds every acknowledged write
    let d = env.start();
    assert_eq!(d.stop(), 0);
    let recs = audit_records(&env);
    let recorded: std::collections::HashSet<String> = recs
        .iter()
        .filter(|r| r.status.as_deref() == Some("OK"))
        .flat_map(|r| r.resources.iter().cloned())
        .collect();
    for p in &acked {
        assert!(
            recorded.contains(&format!("secret:{p} fields:v")),
            "{p} acknowledged but not audited"
        );
    }
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sink_gets_the_same_lines_and_a_stalled_one_never_blocks_requests() {
    let env = TestEnv::new();
    let sock = env.paths.dir.join("sink.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let cfg = std::fs::read_to_string(&env.paths.config).unwrap();
    std::fs::write(
        &env.paths.config,
        cfg + "\n[audit]\nsink = \"unix:sink.sock\"\nsink_queue = 16\n",
    )
    .unwrap();
    // a reader that takes the first lines, then stalls (never reads again)
    let (tx, rx) = std::sync::mpsc::channel::<Vec<String>>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let (conn, _) = listener.accept().unwrap();
        let mut r = std::io::BufReader::new(conn);
        let mut got = Vec::new();
        for _ in 0..5 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            got.push(l.trim_end().to_string());
        }
        tx.send(got).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(r);
    });
    let d = env.start();
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    let started = std::time::Instant::now();
    for i in 0..1500 {
        c.put(pb::PutSecretRequest {
            path: format!("sink/s{}", i % 10),
            fields: HashMap::from([("v".to_string(), vec![b'x'; 200])]),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let elapsed = started.elapsed();
    let first = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    let (_, metrics) = https_get(&env, d.http, "/metrics").await;
    // a counter (issue 17: it was a gauge)
    assert!(
        metrics.contains("# TYPE keygate_audit_sink_dropped counter"),
        "{metrics}"
    );
    let dropped: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keygate_audit_sink_dropped_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        dropped > 0,
        "the stalled sink dropped lines instead of blocking: {metrics}"
    );
    assert!(elapsed < std::time::Duration::from_secs(60));
    assert_eq!(d.stop(), 0);
    // the sink's lines are the durable log's lines, byte for byte
    let seg = keygate::audit::writer::segments(&env.paths.dir.join("audit"))
        .unwrap()
        .remove(0);
    let durable: Vec<String> = std::fs::read_to_string(seg)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(first, durable[..5].to_vec());
    assert!(durable.len() >= 1500);
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 0, "{out}");
    drop(reader);
}

/// Writes some secrets one at a time, then kills the daemon: the log ends in sealed batches
/// after its last checkpoint. Returns the newest segment's lines.
async fn crashed_log(env: &TestEnv) -> (std::path::PathBuf, Vec<String>) {
    let d = env.start();
    let mut c = SecretsClient::new(env.admin_channel(&d).await);
    for i in 0..20 {
        c.put(pb::PutSecretRequest {
            path: format!("tail/s{i}"),
            fields: HashMap::from([("v".to_string(), b"x".to_vec())]),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    d.kill9();
    let seg = keygate::audit::writer::segments(&env.paths.dir.join("audit"))
        .unwrap()
        .pop()
        .unwrap();
    let lines = std::fs::read_to_string(&seg)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (seg, lines)
}

fn sealed(line: &str) -> bool {
    keygate::audit::record::split_seal(line.as_bytes()).is_some()
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<Record>(line).unwrap().seq
}

fn write_lines(seg: &std::path::Path, lines: &[String]) {
    std::fs::write(seg, lines.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn records_cut_from_the_tail_after_a_crash_are_reported_not_re_signed() {
    let env = TestEnv::new();
    let (seg, lines) = crashed_log(&env).await;
    // cut the last records back to a batch boundary, at least three of them
    let j = (0..lines.len() - 3)
        .rev()
        .find(|&j| sealed(&lines[j]))
        .unwrap();
    let first_cut = seq_of(&lines[j]) + 1;
    write_lines(&seg, &lines[..=j]);
    let d = env.start();
    assert_eq!(d.stop(), 0);
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("FAULT: seq {first_cut}:")) && out.contains("did not verify"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_rewritten_and_re_chained_after_a_crash_is_quarantined_and_named() {
    let env = TestEnv::new();
    let (seg, mut lines) = crashed_log(&env).await;
    // a Put outcome record that starts a batch (its predecessor is sealed), well inside the tail
    let k = (1..lines.len() - 2)
        .rev()
        .find(|&k| {
            sealed(&lines[k - 1])
                && lines[k].contains("Secrets/Put")
                && lines[k].contains("\"allow\"")
        })
        .unwrap();
    let bad = seq_of(&lines[k]);
    let mut r: Record = serde_json::from_str(&lines[k]).unwrap();
    r.resources = vec!["secret:tail/innocent fields:v".into()];
    lines[k] = serde_json::to_string(&r).unwrap();
    // re-chain everything after it, as an attacker with the file (not the key) can
    for i in k + 1..lines.len() {
        let mut r: Record = serde_json::from_str(&lines[i]).unwrap();
        r.prev = keygate::audit::record::line_hash(lines[i - 1].as_bytes());
        lines[i] = serde_json::to_string(&r).unwrap();
    }
    write_lines(&seg, &lines);
    // before the restart, verify already sees the seal fail
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("FAULT: seq {bad}:")), "{out}");
    let d = env.start();
    assert_eq!(d.stop(), 0);
    // the restart did not sign over it: the tail was set aside and the log says so
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("FAULT: seq {bad}:")) && out.contains("quarantine"),
        "{out}"
    );
    let q = env
        .paths
        .dir
        .join("audit")
        .join(format!("quarantine-{bad:020}.log"));
    let held = std::fs::read_to_string(&q).unwrap();
    assert!(held.contains("tail/innocent"), "{held}");
    let recs = audit_records(&env);
    assert!(!recs
        .iter()
        .any(|r| r.resources.iter().any(|x| x.contains("tail/innocent"))));
}
