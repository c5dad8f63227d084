//! `keygate bench floor|exchange|read|mixed`: the crypto floor and a load generator, so
//! throughput is reported as a ratio to what the cryptography allows on the same machine in the
//! same run.
pub mod audit_reads;
pub mod floor;
pub mod load;

use anyhow::{anyhow, Context};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Options of `keygate bench exchange|read|mixed`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Scenario.
    pub scenario: load::Scenario,
    /// An existing daemon (none: start one).
    pub addr: Option<String>,
    /// Its CA.
    pub cacert: Option<PathBuf>,
    /// Role (existing daemon).
    pub role: Option<String>,
    /// Platform token file (existing daemon).
    pub token_file: Option<PathBuf>,
    /// Secret to read (existing daemon).
    pub path: Option<String>,
    /// Concurrency.
    pub concurrency: usize,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// Open-loop rate.
    pub rate: Option<f64>,
    /// Extra roles and secrets for scale runs (own daemon only).
    pub roles: usize,
    /// Extra secrets.
    pub secrets: usize,
    /// Floor measurement time per figure.
    pub floor_secs: f64,
    /// JSON output.
    pub json: bool,
    /// Put the daemon and the generator on disjoint cores.
    pub pin: bool,
    /// The pid of the `--addr` daemon, to read its CPU time (our own daemon's is known).
    pub daemon_pid: Option<u32>,
}

/// What the daemon spends per request against what it cannot avoid.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Limit {
    /// Daemon CPU per request of the scenario (µs).
    pub daemon_cpu_us_per_request: f64,
    /// Daemon CPU per `Health/Check` at the same concurrency, same run (µs).
    pub transport_us: f64,
    /// The scenario's crypto floor on one core (µs).
    pub crypto_us: f64,
    /// transport + crypto.
    pub limit_us: f64,
    /// limit / daemon CPU per request (1.0: nothing but transport and crypto).
    pub ratio_to_limit: f64,
}

/// Parses `10s`, `500ms`, `1m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// `keygate bench floor`.
pub fn run_floor(d: Duration, json: bool) -> anyhow::Result<()> {
    let f = floor::measure(d).map_err(|e| anyhow!(e))?;
    if json {
        println!("{}", serde_json::to_string(&f)?);
    } else {
        println!(
            "crypto floor on {} core(s) (release build expected; {} per figure):",
            f.cores,
            humantime::format_duration(d)
        );
        println!("  exchange (RS256-2048 verify + EdDSA sign + SHA-256): {:>9.0}/s one core, {:>9.0}/s all cores  ({:.1} µs/op)", f.exchange_1, f.exchange_all, 1e6 / f.exchange_1);
        println!("  read (EdDSA verify + AES-256-GCM 1 KiB + SHA-256):   {:>9.0}/s one core, {:>9.0}/s all cores  ({:.1} µs/op)", f.read_1, f.read_all, 1e6 / f.read_1);
        println!("  read, credential check cached (SHA-256 + AES-256-GCM 1 KiB + SHA-256): {:>9.0}/s one core  ({:.1} µs/op)", f.read_cached_1, 1e6 / f.read_cached_1);
    }
    Ok(())
}

/// `keygate bench exchange|read|mixed`.
pub async fn run_load(o: LoadOptions) -> anyhow::Result<()> {
    let floor = floor::measure(Duration::from_secs_f64(o.floor_secs)).map_err(|e| anyhow!(e))?;
    let floor_per_s = match o.scenario {
        load::Scenario::Exchange => floor.exchange_all,
        load::Scenario::Read => floor.read_all,
        load::Scenario::Mixed => 1.0 / (0.1 / floor.exchange_all + 0.9 / floor.read_all),
        load::Scenario::Health => 0.0,
    };
    let crypto_us = match o.scenario {
        load::Scenario::Exchange => 1e6 / floor.exchange_1,
        // the daemon caches a credential's signature check: a read cannot avoid only the
        // cache key's hash, the decryption and the audit line's hash
        load::Scenario::Read => 1e6 / floor.read_cached_1,
        load::Scenario::Mixed => 0.1 * 1e6 / floor.exchange_1 + 0.9 * 1e6 / floor.read_cached_1,
        load::Scenario::Health => 0.0,
    };
    let target = match &o.addr {
        None => {
            let started = std::time::Instant::now();
            let t = load::start_own(o.roles, o.secrets).await?;
            if !o.json {
                eprintln!(
                    "set up a daemon with durable audit in {} ({} extra roles, {} extra secrets) in {:.2} s; restart to serving: {:.0} ms",
                    t.owned.as_ref().map(|w| w.dir.display().to_string()).unwrap_or_default(),
                    o.roles,
                    o.secrets,
                    started.elapsed().as_secs_f64(),
                    t.owned.as_ref().map(|w| w.restart_ms).unwrap_or(0.0),
                );
            }
            t
        }
        Some(addr) => {
            let token_file = o.token_file.as_ref().ok_or_else(|| {
                anyhow!("--addr needs --token-file (a platform token the role accepts)")
            })?;
            load::Target {
                addr: addr.clone(),
                cacert: o
                    .cacert
                    .clone()
                    .ok_or_else(|| anyhow!("--addr needs --cacert"))?,
                role: o
                    .role
                    .clone()
                    .ok_or_else(|| anyhow!("--addr needs --role"))?,
                platform_token: std::fs::read_to_string(token_file)
                    .with_context(|| format!("{}", token_file.display()))?
                    .trim()
                    .to_string(),
                path: o
                    .path
                    .clone()
                    .ok_or_else(|| anyhow!("--addr needs --path (a secret the role reads)"))?,
                owned: None,
            }
        }
    };
    let target = Arc::new(target);
    let pid = target.owned.as_ref().map(|w| w.pid).or(o.daemon_pid);
    let pinned = match (o.pin, pid) {
        (true, Some(pid)) if floor.cores >= 2 => {
            // the generator on the lower half of the cores, the daemon on the upper half
            let half = floor.cores / 2;
            let generator: Vec<usize> = (0..half).collect();
            let daemon: Vec<usize> = (half..floor.cores).collect();
            load::pin(pid, &daemon)?;
            load::pin(std::process::id(), &generator)?;
            Some((generator, daemon))
        }
        (true, _) => {
            eprintln!("--pin: not pinned (needs two cores and the daemon's pid)");
            None
        }
        _ => None,
    };
    let l = load::Load {
        scenario: o.scenario,
        concurrency: o.concurrency.max(1),
        duration: o.duration,
        warmup: o.warmup,
        rate: o.rate,
    };
    let r = load::run(target.clone(), &l, floor_per_s, pid).await?;
    // the transport floor: Health/Check on the same daemon, same concurrency, same run
    let limit = match r.daemon_cpu_us_per_request {
        Some(cpu) => {
            let h = load::Load {
                scenario: load::Scenario::Health,
                duration: o.duration.min(Duration::from_secs(3)),
                warmup: Duration::from_millis(500),
                ..l.clone()
            };
            let hr = load::run(target.clone(), &h, 0.0, pid).await?;
            hr.daemon_cpu_us_per_request.map(|transport_us| {
                let limit_us = transport_us + crypto_us;
                Limit {
                    daemon_cpu_us_per_request: cpu,
                    transport_us,
                    crypto_us,
                    limit_us,
                    ratio_to_limit: limit_us / cpu,
                }
            })
        }
        None => None,
    };
    let rss = target.owned.as_ref().and_then(|w| load::rss_kib(w.pid));
    if o.json {
        let mut v = serde_json::to_value(&r)?;
        v["floor"] = serde_json::to_value(floor)?;
        if let Some(l) = &limit {
            v["transport_us"] = serde_json::json!(l.transport_us);
            v["crypto_us"] = serde_json::json!(l.crypto_us);
            v["limit_us"] = serde_json::json!(l.limit_us);
            v["ratio_to_limit"] = serde_json::json!(l.ratio_to_limit);
        }
        v["pinned"] = serde_json::json!(pinned
            .as_ref()
            .map(|(g, d)| serde_json::json!({"generator": g, "daemon": d})));
        if let Some(k) = rss {
            v["daemon_rss_mib"] = serde_json::json!(k as f64 / 1024.0);
        }
        if let Some(w) = &target.owned {
            v["restart_ms"] = serde_json::json!(w.restart_ms);
        }
        println!("{v}");
    } else {
        println!(
            "{}: {:.0} req/s ({} ok{}) at concurrency {}{} | p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms | floor {:.0}/s on {} cores, ratio {:.2}{}",
            r.scenario,
            r.requests_per_s,
            r.requests,
            if r.errors.is_empty() { String::new() } else { format!(", errors {:?}", r.errors) },
            r.concurrency,
            r.offered_per_s.map(|x| format!(", offered {x:.0}/s")).unwrap_or_default(),
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.floor_per_s,
            floor.cores,
            r.ratio_to_floor,
            rss.map(|k| format!(" | daemon RSS {:.1} MiB", k as f64 / 1024.0)).unwrap_or_default(),
        );
        if let Some(l) = &limit {
            println!(
                "  daemon CPU {:.1} µs/request | limit {:.1} µs = transport {:.1} µs (Health/Check, same daemon, same concurrency) + crypto {:.1} µs | ratio to limit {:.2}",
                l.daemon_cpu_us_per_request, l.limit_us, l.transport_us, l.crypto_us, l.ratio_to_limit
            );
        }
        if let Some((g, d)) = &pinned {
            println!("  pinned: generator on cores {g:?}, daemon on cores {d:?}");
        }
    }
    drop(target);
    Ok(())
}
