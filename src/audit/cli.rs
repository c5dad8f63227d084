//! `keygate audit verify | tail | export | anchor | hash`: work on the files or the database
//! table a config names, no daemon needed.
use super::record::Record;
use super::table::{all_lines as table_lines, AuditTable};
use super::writer::segments;
use anyhow::{anyhow, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a config keeps its audit log.
pub enum Log {
    /// Segment files.
    Dir(PathBuf),
    /// Chains in the database.
    Db(Db),
}

/// The database table of a config with `[audit] store = "postgres"`.
pub struct Db {
    /// The table.
    pub table: Arc<dyn AuditTable>,
    /// The database (its URL, which holds no password), for reports.
    pub label: String,
    /// The config's node id.
    pub node: String,
    /// The trust anchor (Ed25519 public key), or why it could not be had.
    pub anchor: Result<Vec<u8>, String>,
}

/// `keygate audit verify`: exit 0 when whole and signed, 1 on any fault.
pub async fn verify(dirs: &[PathBuf], dbs: &[Db], pubkey: Option<&Path>, json: bool) -> i32 {
    // several replicas' configs name one database: verify its chains once
    let mut seen = std::collections::HashSet::new();
    let dbs: Vec<&Db> = dbs
        .iter()
        .filter(|d| seen.insert(d.label.clone()))
        .collect();
    let several = dirs.len() + dbs.len() > 1;
    if several && pubkey.is_some() {
        eprintln!(
            "error: --pubkey applies to one directory or database; with several, each one's own anchor is used"
        );
        return 2;
    }
    let mut chains = Vec::new();
    let mut all_ok = true;
    for db in dbs {
        let given = pubkey.map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| e.to_string())
                .and_then(|t| B64.decode(t.trim()).map_err(|e| e.to_string()))
                .map_err(|e| format!("public key {}: {e}", p.display()))
        });
        let anchor = given.unwrap_or_else(|| db.anchor.clone());
        let nodes = match db.table.nodes().await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: {}: {e}", db.label);
                return 1;
            }
        };
        if nodes.is_empty() {
            all_ok = false;
            if !json {
                println!("{}: FAULT: the database holds no audit chain", db.label);
            }
            chains.push(serde_json::json!({"database": db.label, "ok": false, "nodes": [], "fault": "no chain"}));
        }
        for node in nodes {
            let outcome = match (&anchor, table_lines(db.table.as_ref(), &node).await) {
                (Err(e), _) => Err(format!("the trust anchor: {e}")),
                (_, Err(e)) => Err(format!("reading the chain: {e}")),
                (Ok(pk), Ok(lines)) => {
                    let lines: Vec<Vec<u8>> =
                        lines.into_iter().map(|(_, l)| l.into_bytes()).collect();
                    super::verify::verify_lines(&lines, 0, pk).map_err(|f| f.to_string())
                }
            };
            all_ok &= outcome.is_ok();
            if !json {
                match &outcome {
                    Ok(r) => println!(
                        "{} node {node}: OK: {} records, {} signed checkpoints, {} checkpoint-key rotation(s), last seq {}",
                        db.label, r.records, r.checkpoints, r.key_rotations, r.last_seq
                    ),
                    Err(f) => println!("{} node {node}: FAULT: {f}", db.label),
                }
            }
            chains.push(match outcome {
                Ok(r) => serde_json::json!({
                    "database": db.label,
                    "ok": true,
                    "nodes": [node],
                    "records": r.records,
                    "checkpoints": r.checkpoints,
                    "key_rotations": r.key_rotations,
                    "last_seq": r.last_seq,
                    "fault": null,
                }),
                Err(f) => serde_json::json!({
                    "database": db.label,
                    "ok": false,
                    "nodes": [node],
                    "fault": f,
                }),
            });
        }
    }
    for dir in dirs {
        let outcome = verify_one(dir, pubkey);
        all_ok &= outcome.is_ok();
        // the replicas whose records the chain holds (one, normally)
        let mut nodes: Vec<String> = all_lines(dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["node"].as_str().map(str::to_string))
            .collect();
        nodes.sort();
        nodes.dedup();
        if !json {
            let prefix = if several {
                format!("{}: ", dir.display())
            } else {
                String::new()
            };
            match &outcome {
                Ok(r) => println!(
                    "{prefix}OK: {} records in {} segment(s), {} signed checkpoints, {} checkpoint-key rotation(s), last seq {}{}",
                    r.records,
                    r.segments,
                    r.checkpoints,
                    r.key_rotations,
                    r.last_seq,
                    if nodes.is_empty() { String::new() } else { format!(", node {}", nodes.join(",")) }
                ),
                Err(f) => println!("{prefix}FAULT: {f}"),
            }
        }
        chains.push(match outcome {
            Ok(r) => serde_json::json!({
                "dir": dir.display().to_string(),
                "ok": true,
                "nodes": nodes,
                "records": r.records,
                "segments": r.segments,
                "checkpoints": r.checkpoints,
                "key_rotations": r.key_rotations,
                "last_seq": r.last_seq,
                "fault": null,
            }),
            Err(f) => serde_json::json!({
                "dir": dir.display().to_string(),
                "ok": false,
                "nodes": nodes,
                "fault": f,
            }),
        });
    }
    if json {
        println!("{}", serde_json::json!({ "ok": all_ok, "chains": chains }));
    }
    i32::from(!all_ok)
}

/// One chain: its report, or the fault in words.
fn verify_one(dir: &Path, pubkey: Option<&Path>) -> Result<super::verify::Report, String> {
    let pk_path = pubkey
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("audit.pub"));
    let pk = std::fs::read_to_string(&pk_path)
        .map_err(|e| e.to_string())
        .and_then(|t| B64.decode(t.trim()).map_err(|e| e.to_string()))
        .map_err(|e| format!("public key {}: {e}", pk_path.display()))?;
    super::verify::verify(dir, &pk).map_err(|f| f.to_string())
}

fn all_lines(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for s in segments(dir).with_context(|| format!("reading {}", dir.display()))? {
        let text =
            std::fs::read_to_string(&s).with_context(|| format!("reading {}", s.display()))?;
        out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    Ok(out)
}

/// `keygate audit tail` on a database chain (`node`).
pub async fn tail_db(db: &Db, node: &str, n: usize, follow: bool) -> anyhow::Result<()> {
    let lines = table_lines(db.table.as_ref(), node)
        .await
        .map_err(|e| anyhow!(e))?;
    let mut after = lines.last().map(|l| l.0).unwrap_or(0);
    {
        let mut out = std::io::stdout().lock();
        for (_, l) in lines.iter().skip(lines.len().saturating_sub(n)) {
            writeln!(out, "{l}")?;
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let page = db
            .table
            .read(node, after, 10_000)
            .await
            .map_err(|e| anyhow!(e))?;
        let mut out = std::io::stdout().lock();
        for (seq, l) in &page {
            writeln!(out, "{l}")?;
            after = *seq;
        }
        out.flush()?;
    }
}

/// `keygate audit export` on a database: every chain (or `node`'s), node by node.
pub async fn export_db(db: &Db, node: Option<&str>, since: &str) -> anyhow::Result<()> {
    let since = parse_since(since)?;
    let nodes = match node {
        Some(n) => vec![n.to_string()],
        None => db.table.nodes().await.map_err(|e| anyhow!(e))?,
    };
    for node in nodes {
        let lines = table_lines(db.table.as_ref(), &node)
            .await
            .map_err(|e| anyhow!(e))?;
        let mut out = std::io::stdout().lock();
        for (_, l) in lines {
            if is_since(&l, since) {
                writeln!(out, "{l}")?;
            }
        }
    }
    Ok(())
}

fn parse_since(since: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow!("--since {since:?} is not an RFC 3339 time: {e}"))
}

fn is_since(line: &str, since: time::OffsetDateTime) -> bool {
    let Ok(r) = serde_json::from_str::<Record>(line) else {
        return false;
    };
    time::OffsetDateTime::parse(&r.time, &time::format_description::well_known::Rfc3339)
        .is_ok_and(|t| t >= since)
}

/// `keygate audit tail`.
pub async fn tail(dir: &Path, n: usize, follow: bool) -> anyhow::Result<()> {
    let lines = all_lines(dir)?;
    let mut shown = lines.len();
    let mut out = std::io::stdout().lock();
    for l in lines.iter().skip(lines.len().saturating_sub(n)) {
        writeln!(out, "{l}")?;
    }
    drop(out);
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let lines = all_lines(dir)?;
        let mut out = std::io::stdout().lock();
        for l in lines.iter().skip(shown) {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        shown = lines.len();
    }
}

/// `keygate audit export --since`.
pub fn export(dir: &Path, since: &str) -> anyhow::Result<()> {
    let since = parse_since(since)?;
    let mut out = std::io::stdout().lock();
    for l in all_lines(dir)? {
        if is_since(&l, since) {
            writeln!(out, "{l}")?;
        }
    }
    Ok(())
}

/// `keygate audit hash`.
pub fn hash(value: &str, key: &Path) -> anyhow::Result<()> {
    let raw = zeroize::Zeroizing::new(
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?,
    );
    let k = zeroize::Zeroizing::new(
        B64.decode(raw.trim())
            .map_err(|_| anyhow!("{}: not base64", key.display()))?,
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k);
    let v = if value == "-" {
        let mut s = zeroize::Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut s)?;
        zeroize::Zeroizing::new(s.trim_end_matches('\n').to_string())
    } else {
        zeroize::Zeroizing::new(value.to_string())
    };
    println!("{}", super::hmac_ref(&key, v.as_bytes()));
    Ok(())
}
