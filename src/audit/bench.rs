//! `keygate bench audit`: group commit measured. N concurrent clients each append records and
//! wait for durability, as request handlers do; reports records/s and latency percentiles.
use super::record::{Kind, Record};
use super::writer::{AuditWriter, WriterConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the benchmark in a temporary directory under `dir`, or on a database `table` (a chain
/// of its own, node `bench-<pid>-<clients>`).
pub async fn run(
    dir: &std::path::Path,
    clients: usize,
    duration: Duration,
    table: Option<Arc<dyn super::table::AuditTable>>,
) -> anyhow::Result<String> {
    let tmp = dir.join(format!("keygate-audit-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let doc =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let key = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| anyhow::anyhow!("key"))?;
    let cfg = WriterConfig {
        dir: tmp.clone(),
        segment_bytes: 64 * 1024 * 1024,
        checkpoint_every: 1000,
        checkpoint_interval: Duration::from_secs(60),
        write_deadline: Duration::from_secs(10),
        node: format!("bench-{}-{clients}", std::process::id()),
        sink: None,
        sink_queue: 0,
        head_file: None,
    };
    let store = if table.is_some() { "postgres" } else { "files" };
    let w = Arc::new(match table {
        Some(t) => AuditWriter::open_on_table(cfg, key, Arc::new(crate::clock::SystemClock), t)
            .await
            .map_err(|e| anyhow::anyhow!(e))?,
        None => AuditWriter::open(cfg, key).map_err(|e| anyhow::anyhow!(e))?,
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while started.elapsed() < duration {
                let rec = Record {
                    seq: 0,
                    time: super::writer::now_rfc3339(),
                    node: String::new(),
                    kind: Kind::Request,
                    prev: String::new(),
                    request_id: Some(format!("{c}-{i}")),
                    op: Some("keygate.v1.Secrets/Get".into()),
                    api: None,
                    caller: None,
                    resources: vec![format!("secret:bench/{c}/{i}@0")],
                    decision: Some("allow".into()),
                    reason: None,
                    status: Some("OK".into()),
                    sig: None,
                    truncated_bytes: None,
                    key: None,
                    unverified: None,
                    seal: None,
                };
                let t = Instant::now();
                if w.append(rec).await.is_err() {
                    break;
                }
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    w.close().await;
    let _ = std::fs::remove_dir_all(&tmp);
    let l = Latencies::of(all, secs);
    Ok(format!(
        "store={store} clients={clients} records={} records_per_s={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        l.count, l.per_s, l.p50_ms, l.p99_ms, l.max_ms
    ))
}

/// Throughput and latency percentiles of one benchmark run.
pub struct Latencies {
    /// Operations completed.
    pub count: usize,
    /// Operations per second.
    pub per_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latencies {
    /// Summarises per-operation latencies measured over `secs` seconds.
    pub fn of(mut all: Vec<Duration>, secs: f64) -> Self {
        all.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .map(ms)
                .unwrap_or(0.0)
        };
        Self {
            count: all.len(),
            per_s: all.len() as f64 / secs.max(f64::EPSILON),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: all.last().map(ms).unwrap_or(0.0),
        }
    }
}
