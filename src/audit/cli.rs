//! `keygate audit verify | tail | export | hash`: work on the files, no daemon needed.
use super::record::Record;
use super::writer::segments;
use anyhow::{anyhow, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::io::{Read, Write};
use std::path::Path;

/// `keygate audit verify`: exit 0 when whole and signed, 1 on any fault.
pub fn verify(dirs: &[std::path::PathBuf], pubkey: Option<&Path>, json: bool) -> i32 {
    if dirs.len() > 1 && pubkey.is_some() {
        eprintln!(
            "error: --pubkey applies to one directory; with several, each DIR/audit.pub is used"
        );
        return 2;
    }
    let mut chains = Vec::new();
    let mut all_ok = true;
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
            let prefix = if dirs.len() > 1 {
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
    let since = time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow!("--since {since:?} is not an RFC 3339 time: {e}"))?;
    let mut out = std::io::stdout().lock();
    for l in all_lines(dir)? {
        let Ok(r) = serde_json::from_str::<Record>(&l) else {
            continue;
        };
        let t =
            time::OffsetDateTime::parse(&r.time, &time::format_description::well_known::Rfc3339);
        if t.is_ok_and(|t| t >= since) {
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
