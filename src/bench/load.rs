//! `keygate bench exchange|read|mixed`: a gRPC load generator over TLS with HDR latency
//! histograms, closed loop (`--concurrency N`) or open loop at a fixed offered rate (`--rate R`,
//! latency measured from each request's intended start, so a stalled server is not hidden by
//! the generator waiting for it — no coordinated omission).
use crate::client::Failover as Channel;
use crate::client::{auth_for, Auth};
use crate::pb;
use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// TokenExchange.Exchange of a platform token.
    Exchange,
    /// Secrets.Get of a 1 KiB secret with a credential.
    Read,
    /// One exchange per nine reads.
    Mixed,
    /// `grpc.health.v1.Health/Check`: TLS, HTTP/2 and tonic with nothing behind them, the
    /// transport floor every scenario is compared with.
    Health,
}

impl Scenario {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Exchange => "exchange",
            Scenario::Read => "read",
            Scenario::Mixed => "mixed",
            Scenario::Health => "health",
        }
    }
}

/// A daemon to load, with what the requests need.
pub struct Target {
    /// `https://host:port`.
    pub addr: String,
    /// CA of its certificate.
    pub cacert: PathBuf,
    /// Role to exchange for.
    pub role: String,
    /// A platform token the role accepts.
    pub platform_token: String,
    /// A secret the role may read.
    pub path: String,
    /// Cleanup: the daemon we started, the issuer task, the temporary directory.
    pub owned: Option<Owned>,
}

/// What `keygate bench` started itself.
pub struct Owned {
    child: std::process::Child,
    issuer: tokio::task::JoinHandle<()>,
    /// The temporary directory (data, audit log, daemon log).
    pub dir: PathBuf,
    /// The daemon's pid.
    pub pid: u32,
    /// Time from start to serving (TLS accepted) on the seeded store, ms.
    pub restart_ms: f64,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.issuer.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn channel(
    addr: &str,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<Channel> {
    let conn = crate::client::Conn {
        addr: addr.to_string(),
        cacert: Some(ca.to_path_buf()),
        client_cert: identity.map(|i| i.0.to_path_buf()),
        client_key: identity.map(|i| i.1.to_path_buf()),
        credential: None,
    };
    crate::client::connect(&conn).await
}

/// Starts a daemon (durable audit on, its own sled store) and the dev issuer in a temporary
/// directory, seeds a 1 KiB secret, and returns the target. `roles`/`secrets` add that many
/// extra roles and secrets (scale runs).
pub async fn start_own(roles: usize, secrets: usize) -> anyhow::Result<Target> {
    let mut r = [0u8; 6];
    let _ = aws_lc_rs::rand::fill(&mut r);
    let dir = std::env::temp_dir().join(format!("keygate-bench-{}", hex::encode(r)));
    let (grpc, http, iss) = (free_port()?, free_port()?, free_port()?);
    let paths = crate::devenv::init(
        &dir,
        &crate::devenv::DevOptions {
            grpc_listen: format!("127.0.0.1:{grpc}"),
            http_listen: format!("127.0.0.1:{http}"),
            issuer_listen: format!("127.0.0.1:{iss}"),
            vault_listen: None,
        },
    )
    .map_err(|e| anyhow!(e))?;
    if roles > 0 {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&paths.config)?;
        for i in 0..roles {
            writeln!(
                f,
                "\n[[roles]]\nname = \"scale-{i}\"\nissuer = \"dev\"\nclaims = {{ repository = \"acme/app-{i}\" }}\nscopes = [\"read:scale/{i}/*\"]"
            )?;
        }
    }
    let tls = crate::config::TlsConfig {
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server-key.pem"),
        client_ca_file: None,
    };
    let issuer = crate::devissuer::serve(&dir, &tls)
        .await
        .map_err(|e| anyhow!(e))?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(&paths.config)
        .env("KEYGATE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the daemon")?;
    let pid = child.id();
    let owned = Owned {
        child,
        issuer,
        dir: dir.clone(),
        pid,
        restart_ms: 0.0,
    };
    let addr = format!("https://localhost:{grpc}");
    let started = Instant::now();
    let admin = loop {
        match channel(
            &addr,
            &paths.ca,
            Some((&paths.admin_cert, &paths.admin_key)),
        )
        .await
        {
            Ok(c) => break c,
            Err(e) if started.elapsed() > Duration::from_secs(20) => {
                let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
                return Err(anyhow!("the daemon did not start: {e:#}\n{log}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut value = vec![0u8; 768];
    let _ = aws_lc_rs::rand::fill(&mut value);
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD.encode(value); // 1 KiB
    let mut c = pb::secrets_client::SecretsClient::new(admin);
    c.put(pb::PutSecretRequest {
        path: "demo/bench".into(),
        fields: [("value".to_string(), value.clone().into_bytes())]
            .into_iter()
            .collect(),
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow!("seeding: {}", crate::client::status_error(s)))?;
    {
        use futures::StreamExt;
        let puts = futures::stream::iter(0..secrets).map(|i| {
            let mut c = c.clone();
            let v = value.clone();
            async move {
                c.put(pb::PutSecretRequest {
                    path: format!("scale/{}/s{i}", i % 100),
                    fields: [("value".to_string(), v.into_bytes())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| anyhow!("seeding: {}", crate::client::status_error(s)))
            }
        });
        let results: Vec<anyhow::Result<()>> = puts.buffer_unordered(64).collect().await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    }
    // restart on the seeded store: how long until it serves again
    let mut owned = owned;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(owned.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = owned.child.wait();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("daemon.log"))?;
    let t0 = Instant::now();
    owned.child = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(&paths.config)
        .env("KEYGATE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("restarting the daemon")?;
    owned.pid = owned.child.id();
    loop {
        if channel(
            &addr,
            &paths.ca,
            Some((&paths.admin_cert, &paths.admin_key)),
        )
        .await
        .is_ok()
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(anyhow!("the daemon did not restart"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    owned.restart_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let platform_token = crate::devissuer::token(&dir, &[], now).map_err(|e| anyhow!(e))?;
    Ok(Target {
        addr,
        cacert: paths.ca,
        role: "demo".into(),
        platform_token,
        path: "demo/bench".into(),
        owned: Some(owned),
    })
}

/// Load settings.
#[derive(Debug, Clone)]
pub struct Load {
    /// Scenario.
    pub scenario: Scenario,
    /// Closed loop: in-flight requests; open loop: the most in flight.
    pub concurrency: usize,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up (not measured).
    pub warmup: Duration,
    /// Open loop: requests per second offered.
    pub rate: Option<f64>,
}

/// The outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: &'static str,
    /// Requests completed per second (successes).
    pub requests_per_s: f64,
    /// Requests completed.
    pub requests: u64,
    /// Errors by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Latency percentiles (ms).
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Concurrency.
    pub concurrency: usize,
    /// Offered rate, if open loop.
    pub offered_per_s: Option<f64>,
    /// The crypto floor for this scenario on all cores, measured in the same run.
    pub floor_per_s: f64,
    /// requests_per_s / floor_per_s.
    pub ratio_to_floor: f64,
    /// The daemon's CPU time (user + system, from /proc) over the measured window, per
    /// request completed in it; absent when the daemon's pid is unknown.
    pub daemon_cpu_us_per_request: Option<f64>,
}

/// CPU time a process has used (user + system, all its threads), µs, from `/proc/PID/stat`.
pub fn cpu_us(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ: 100 on every Linux target keygate builds for
    Some(ticks as f64 * 10_000.0)
}

/// Pins every thread of `pid` to `cpus` (new threads inherit it from their creator).
pub fn pin(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    for c in cpus {
        set.set(*c)?;
    }
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = t?.file_name().to_string_lossy().parse()?;
        // a thread that ended meanwhile is fine
        let _ = sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
    }
    Ok(())
}

struct Client {
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    exchange: pb::token_exchange_client::TokenExchangeClient<Channel>,
    secrets: pb::secrets_client::SecretsClient<
        tonic::service::interceptor::InterceptedService<Channel, Auth>,
    >,
}

async fn one(c: &mut Client, t: &Target, op: Scenario) -> Result<(), tonic::Code> {
    if op == Scenario::Health {
        return c
            .health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code());
    }
    if op == Scenario::Exchange {
        c.exchange
            .exchange(pb::ExchangeRequest {
                subject_token: t.platform_token.clone(),
                subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
                role: t.role.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    } else {
        c.secrets
            .get(pb::GetSecretRequest {
                path: t.path.clone(),
                version: 0,
                previous: false,
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }
}

struct Tally {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    ok: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("{e}"))?,
            errors: BTreeMap::new(),
            ok: 0,
        })
    }

    fn record(&mut self, r: Result<(), tonic::Code>, latency: Duration) {
        match r {
            Ok(()) => {
                self.ok += 1;
                let _ = self.hist.record((latency.as_micros() as u64).max(1));
            }
            Err(code) => {
                *self
                    .errors
                    .entry(crate::metrics::code_name(code).to_string())
                    .or_default() += 1
            }
        }
    }
}

/// Runs the load against `t`; with `daemon`, its pid, the daemon's CPU over the window too.
pub async fn run(
    t: Arc<Target>,
    load: &Load,
    floor_per_s: f64,
    daemon: Option<u32>,
) -> anyhow::Result<Report> {
    // several HTTP/2 connections, each shared by several requests; TLS handshakes happen once.
    // `--addr A,B`: the connections are spread over the replicas, round-robin
    let addrs: Vec<&str> = t
        .addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let conns = load.concurrency.clamp(1, 8).max(addrs.len());
    let mut chans = Vec::new();
    for i in 0..conns {
        chans.push(channel(addrs[i % addrs.len()], &t.cacert, None).await?);
    }
    // a credential for the reads
    let cred = pb::token_exchange_client::TokenExchangeClient::new(chans[0].clone())
        .exchange(pb::ExchangeRequest {
            subject_token: t.platform_token.clone(),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: t.role.clone(),
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await
        .map_err(|s| {
            anyhow!(
                "exchange for the bench credential: {}",
                crate::client::status_error(s)
            )
        })?
        .into_inner()
        .access_token;
    let auth = auth_for(Some(&cred))?;
    let client = |i: usize| Client {
        health: tonic_health::pb::health_client::HealthClient::new(chans[i % conns].clone()),
        exchange: pb::token_exchange_client::TokenExchangeClient::new(chans[i % conns].clone()),
        secrets: pb::secrets_client::SecretsClient::new(
            tonic::service::interceptor::InterceptedService::new(
                chans[i % conns].clone(),
                auth.clone(),
            ),
        ),
    };
    let scenario = load.scenario;
    let is_exchange = move |n: u64| match scenario {
        Scenario::Mixed if n % 10 == 0 => Scenario::Exchange,
        Scenario::Mixed => Scenario::Read,
        s => s,
    };
    let tally = Arc::new(Mutex::new(Tally::new()?));
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    // the daemon's CPU at the window's start and end
    let cpu = daemon.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let c0 = cpu_us(pid);
            tokio::time::sleep_until(end.into()).await;
            c0.zip(cpu_us(pid))
        })
    });
    match load.rate {
        None => {
            let mut tasks = Vec::new();
            for i in 0..load.concurrency {
                let mut c = client(i);
                let t = t.clone();
                let tally = tally.clone();
                tasks.push(tokio::spawn(async move {
                    let mut local = Tally::new()?;
                    let mut n = i as u64;
                    loop {
                        let s = Instant::now();
                        if s >= end {
                            break;
                        }
                        let r = one(&mut c, &t, is_exchange(n)).await;
                        n += 1;
                        if s >= measure_from {
                            local.record(r, s.elapsed());
                        }
                    }
                    let mut g = tally.lock().map_err(|_| anyhow!("tally"))?;
                    g.hist.add(&local.hist).map_err(|e| anyhow!("{e}"))?;
                    g.ok += local.ok;
                    for (k, v) in local.errors {
                        *g.errors.entry(k).or_default() += v;
                    }
                    Ok::<_, anyhow::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
            let permits = Arc::new(tokio::sync::Semaphore::new(load.concurrency.max(1)));
            let mut n = 0u64;
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let intended = start + interval.mul_f64(n as f64);
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                let permit = permits.clone().acquire_owned().await?;
                let mut c = client(n as usize);
                let t = t.clone();
                let tally = tally.clone();
                let ex = is_exchange(n);
                tasks.spawn(async move {
                    let r = one(&mut c, &t, ex).await;
                    // from the intended start: queueing behind a slow server counts
                    if intended >= measure_from {
                        if let Ok(mut g) = tally.lock() {
                            g.record(r, intended.elapsed());
                        }
                    }
                    drop(permit);
                });
                n += 1;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let cpu = match cpu {
        Some(task) => task.await?,
        None => None,
    };
    let g = tally.lock().map_err(|_| anyhow!("tally"))?;
    let ms = |q: f64| g.hist.value_at_quantile(q) as f64 / 1000.0;
    let rps = g.ok as f64 / load.duration.as_secs_f64();
    Ok(Report {
        scenario: load.scenario.name(),
        requests_per_s: rps,
        requests: g.ok,
        errors: g.errors.clone(),
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: g.hist.max() as f64 / 1000.0,
        concurrency: load.concurrency,
        offered_per_s: load.rate,
        floor_per_s,
        ratio_to_floor: if floor_per_s > 0.0 {
            rps / floor_per_s
        } else {
            0.0
        },
        daemon_cpu_us_per_request: cpu
            .filter(|_| g.ok > 0)
            .map(|(c0, c1)| (c1 - c0) / g.ok as f64),
    })
}

/// Resident memory of a process (KiB), from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
