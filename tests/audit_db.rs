//! Stateless replicas with `[audit] store = "postgres"`: the real binary on a real PostgreSQL.
//! A replica's records go to the database before its answers; it keeps nothing local but its
//! config, TLS files and KEK, so killing it and deleting its directory loses no record; the
//! anchor every replica shares is published; tampering in the table is found and named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::audit::record::Record;
use keygate::pb;
use keygate::pb::admin_client::AdminClient;
use keygate::pb::secrets_client::SecretsClient;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The files a stateless replica is given (what a pod mounts): config, TLS files, KEK.
const MOUNTED: [&str; 4] = ["server.pem", "server-key.pem", "ca.pem", "kek"];

/// Writes replica `name`'s own directory: the mounted files and a config on `url` whose audit
/// log (and keys) are in the database. Idempotent: it is how a replacement pod starts.
fn mount(env: &TestEnv, name: &str, url: &str) -> (PathBuf, PathBuf) {
    let dir = env.tmp.path().join(format!("pod-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    for f in MOUNTED {
        std::fs::copy(env.paths.dir.join(f), dir.join(f)).unwrap();
    }
    let base = std::fs::read_to_string(&env.paths.config).unwrap();
    let sled = "[storage]\nbackend = \"sled\"\npath = \"data\"\n";
    assert!(base.contains(sled));
    let text = base
        .replace(
            sled,
            &format!("[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\ntls = \"dangerous_disable\"\npool_size = 8\n"),
        )
        .replace("node_id = \"dev-1\"", &format!("node_id = \"{name}\""))
        + "\n[audit]\nstore = \"postgres\"\ncheckpoint_every = 50\n";
    let config = dir.join("keygate.toml");
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn audit_cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("audit")
        .args(args)
        .env("KEYGATE_LOG", LOG_LEVEL)
        .output()
        .unwrap();
    std::fs::write(
        env.logs.join(format!("audit-cli-{}.log", marker("c"))),
        &out.stderr,
    )
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn head(env: &TestEnv, d: &Daemon) -> pb::AuditHeadResponse {
    AdminClient::new(env.admin_channel(d).await)
        .audit_head(pb::AuditHeadRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn put(path: &str, value: &str) -> pb::PutSecretRequest {
    pb::PutSecretRequest {
        path: path.into(),
        fields: HashMap::from([("v".to_string(), value.as_bytes().to_vec())]),
        ..Default::default()
    }
}

fn exported(env: &TestEnv, config: &Path, node: Option<&str>) -> Vec<Record> {
    let mut args = vec![
        "export",
        "--config",
        config.to_str().unwrap(),
        "--since",
        "2000-01-01T00:00:00Z",
    ];
    if let Some(n) = node {
        args.extend(["--node", n]);
    }
    let (code, out, err) = audit_cli(env, &args);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_stateless_replica_whose_directory_is_deleted_loses_no_audit_record() {
    let env = TestEnv::new();
    let (db, url) = pg::fresh_database().await;
    let (dir1, c1) = mount(&env, "r1", &url);
    let (dir2, c2) = mount(&env, "r2", &url);
    let before = listing(&dir1);
    let r1 = env.start_config(&c1);
    let r2 = env.start_config(&c2);

    // one anchor, from the database, published by every replica and by the CLI
    let (h1, h2) = (head(&env, &r1).await, head(&env, &r2).await);
    assert_eq!((h1.store.as_str(), h1.node.as_str()), ("postgres", "r1"));
    assert_eq!((h2.store.as_str(), h2.node.as_str()), ("postgres", "r2"));
    assert!(!h1.anchor_public_key.is_empty());
    assert_eq!(h1.anchor_public_key, h2.anchor_public_key);
    let info = env.cli(&r2, &["admin", "info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["audit_anchor"],
        h1.anchor_public_key.as_str(),
        "{info}"
    );
    assert_eq!(info["audit_store"], "postgres", "{info}");
    let anchor_file = env.tmp.path().join("anchor.pub");
    let (code, _, err) = audit_cli(
        &env,
        &[
            "anchor",
            "--config",
            c2.to_str().unwrap(),
            "--out",
            anchor_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&anchor_file).unwrap().trim(),
        h1.anchor_public_key
    );

    // clients write through r1 until it is killed mid-load
    let ch = env.admin_channel(&r1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let values: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (ch, stop, acked, values) = (ch.clone(), stop.clone(), acked.clone(), values.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = SecretsClient::new(ch);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("load/w{w}/{n}");
                let value = marker("v");
                values.lock().unwrap().push(value.clone());
                match c.put(put(&path, &value)).await {
                    Ok(_) => acked.lock().unwrap().push(path),
                    Err(_) => return,
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    r1.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} writes before the kill",
        acked.len()
    );

    // the replica's whole directory is gone; a replacement starts from its mounts alone
    std::fs::remove_dir_all(&dir1).unwrap();
    let (_, c1) = mount(&env, "r1", &url);
    let r1 = env.start_config(&c1);
    assert_eq!(
        head(&env, &r1).await.anchor_public_key,
        h1.anchor_public_key
    );
    let mut c = SecretsClient::new(env.admin_channel(&r1).await);
    c.put(put("after/restart", &marker("v"))).await.unwrap();
    assert_eq!(r1.stop(), 0);
    assert_eq!(r2.stop(), 0);

    // nothing local was written: no audit directory, head file or key files
    assert_eq!(listing(&dir1), before);
    assert_eq!(listing(&dir2), before);

    // every acknowledged write has its record, and both chains verify against the anchor
    let records = exported(&env, &c1, Some("r1"));
    let recorded: BTreeSet<String> = records
        .iter()
        .filter(|r| {
            r.op.as_deref() == Some("keygate.v1.Secrets/Put") && r.status.as_deref() == Some("OK")
        })
        .flat_map(|r| r.resources.iter())
        .filter_map(|res| res.strip_prefix("secret:"))
        .filter_map(|res| res.split(' ').next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|p| !recorded.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes without a record: {missing:?}"
    );
    assert!(recorded.contains("after/restart"));
    assert!(records.iter().all(|r| r.node == "r1"));
    let all = exported(&env, &c2, None);
    assert!(all.iter().any(|r| r.node == "r2") && all.len() > records.len());
    let (code, out, err) = audit_cli(
        &env,
        &[
            "verify",
            "--json",
            "--config",
            c1.to_str().unwrap(),
            "--config",
            c2.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let chains = v["chains"].as_array().unwrap();
    let nodes: Vec<&str> = chains
        .iter()
        .map(|c| c["nodes"][0].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["r1", "r2"], "{v}");
    // r1's chain: the kill, then the replacement's recovery record, then its writes
    let r1_chain = &chains[0];
    assert!(
        r1_chain["records"].as_u64().unwrap() >= acked.len() as u64 + 3,
        "{v}"
    );
    println!(
        "r1 killed under load after {} acknowledged writes, its directory deleted, restarted: every write has its record; chains {}",
        acked.len(),
        v["chains"]
    );
    // the published anchor verifies the same chains
    let (code, out, err) = audit_cli(
        &env,
        &[
            "verify",
            "--config",
            c1.to_str().unwrap(),
            "--pubkey",
            anchor_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("node r1: OK") && out.contains("node r2: OK"),
        "{out}"
    );

    // no value ever reached a record or a log
    let values = values.lock().unwrap().clone();
    let text: String = all
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    for m in &values {
        assert!(
            !text.contains(m.as_str()),
            "a secret value is in an audit record"
        );
    }
    env.assert_logs_free_of(&values);
    pg::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_row_fails_verify_by_seq_and_a_forged_tail_is_quarantined_at_restart() {
    let env = TestEnv::new();
    let (db, url) = pg::fresh_database().await;
    let (_, c1) = mount(&env, "r1", &url);
    let r1 = env.start_config(&c1);
    let mut c = SecretsClient::new(env.admin_channel(&r1).await);
    for i in 0..5 {
        c.put(put(&format!("t/{i}"), "x")).await.unwrap();
    }
    assert_eq!(r1.stop(), 0);
    let config = c1.to_str().unwrap();
    let (code, out, err) = audit_cli(&env, &["verify", "--config", config]);
    assert_eq!(code, 0, "{out}{err}");

    // an insider edits one record in the table
    let pgc = pg::connect(&url).await.unwrap();
    let row = pgc
        .query_one(
            "SELECT seq, line FROM keygate_audit WHERE node = 'r1' AND line LIKE '%secret:t/2 %' ORDER BY seq LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (seq, line): (i64, String) = (row.get(0), row.get(1));
    let changed = line.replace("secret:t/2 ", "secret:t/9 ");
    pgc.execute(
        "UPDATE keygate_audit SET line = $1 WHERE node = 'r1' AND seq = $2",
        &[&changed, &seq],
    )
    .await
    .unwrap();
    let (code, out, _) = audit_cli(&env, &["verify", "--config", config]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("node r1: FAULT: seq {seq}")), "{out}");
    pgc.execute(
        "UPDATE keygate_audit SET line = $1 WHERE node = 'r1' AND seq = $2",
        &[&line, &seq],
    )
    .await
    .unwrap();
    let (code, out, err) = audit_cli(&env, &["verify", "--config", config]);
    assert_eq!(code, 0, "{out}{err}");

    // a forged record appended after the last seal: the restart sets it aside, never signs it
    let last: i64 = pgc
        .query_one("SELECT max(seq) FROM keygate_audit WHERE node = 'r1'", &[])
        .await
        .unwrap()
        .get(0);
    let mut forged: Record = serde_json::from_str(&line).unwrap();
    forged.seq = last as u64 + 1;
    forged.seal = None;
    forged.resources = vec!["secret:t/forged fields:v".into()];
    let forged = serde_json::to_string(&forged).unwrap();
    pgc.execute(
        "INSERT INTO keygate_audit (node, seq, kind, line) VALUES ('r1', $1, 'request', $2)",
        &[&(last + 1), &forged],
    )
    .await
    .unwrap();
    let r1 = env.start_config(&c1);
    assert_eq!(r1.stop(), 0);
    let q = pgc
        .query(
            "SELECT seq, line FROM keygate_audit_quarantine WHERE node = 'r1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].get::<_, i64>(0), last + 1);
    assert_eq!(q[0].get::<_, String>(1), forged);
    let (code, out, _) = audit_cli(&env, &["verify", "--config", config]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "seq {}: records {}..={} did not verify when the writer restarted",
            last + 1,
            last + 1,
            last + 1
        )),
        "{out}"
    );
    drop(pgc);
    pg::drop_database(&db).await;
}
