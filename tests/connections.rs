//! What silent and flooding peers can cost the gRPC listener, through the real daemon: sockets
//! that never finish a TLS handshake are dropped after `handshake_timeout_secs`, a descriptor
//! limit reached by a flood does not spin the accept loop nor lock real clients out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use keygate::pb;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const HANDSHAKE_SECS: u64 = 2;

fn with_server_settings(env: &TestEnv, lines: &str) {
    let cfg = std::fs::read_to_string(&env.paths.config).unwrap();
    let cfg = cfg.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1);
    std::fs::write(&env.paths.config, cfg).unwrap();
}

/// The daemon's CPU time (user + system) in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 14 and 15 of stat; after the ")" they are the 12th and 13th
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

async fn served(env: &TestEnv, d: &Daemon) -> bool {
    let fresh = tokio::time::timeout(Duration::from_secs(1), async {
        let ch = env.admin_channel(d).await;
        pb::admin_client::AdminClient::new(ch)
            .server_info(pb::ServerInfoRequest {})
            .await
            .is_ok()
    });
    matches!(fresh.await, Ok(true))
}

/// Waits until the daemon closes `s` (read gives EOF or an error); the time it took.
async fn closed_after(mut s: TcpStream, started: Instant, limit: Duration) -> Option<Duration> {
    let mut b = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
        Ok(Ok(_)) => Some(started.elapsed()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_are_dropped_after_the_handshake_timeout_while_clients_are_served() {
    let env = TestEnv::new();
    with_server_settings(&env, &format!("handshake_timeout_secs = {HANDSHAKE_SECS}"));
    let d = env.start();
    let ch = env.admin_channel(&d).await;
    let started = Instant::now();
    let mut socks = Vec::new();
    for _ in 0..2000 {
        socks.push(TcpStream::connect(d.grpc).await.unwrap());
    }
    let opened = started.elapsed();
    // a real client keeps being served, on its connection and on new ones
    let client = {
        let ch = ch.clone();
        tokio::spawn(async move {
            let mut a = pb::admin_client::AdminClient::new(ch);
            let mut ok = 0;
            let until = Instant::now() + Duration::from_secs(HANDSHAKE_SECS + 1);
            while Instant::now() < until {
                a.server_info(pb::ServerInfoRequest {}).await.unwrap();
                ok += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ok
        })
    };
    assert!(
        served(&env, &d).await,
        "a new client was not served during the flood"
    );
    let waits: Vec<_> = socks
        .into_iter()
        .map(|s| {
            tokio::spawn(closed_after(
                s,
                started,
                Duration::from_secs(HANDSHAKE_SECS + 10),
            ))
        })
        .collect();
    let mut latest = Duration::ZERO;
    for w in waits {
        let t = w
            .await
            .unwrap()
            .expect("a silent socket was held past the handshake timeout");
        latest = latest.max(t);
    }
    assert!(client.await.unwrap() > 10);
    println!(
        "2000 silent sockets opened in {opened:?}, all dropped by {latest:?} (handshake timeout {HANDSHAKE_SECS}s)"
    );
    assert!(
        latest < opened + Duration::from_secs(HANDSHAKE_SECS + 3),
        "{latest:?}"
    );
    assert!(served(&env, &d).await);
    // counted where an operator sees it
    let (_, metrics) = https_get(&env, d.http, "/metrics").await;
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keygate_grpc_connection_events{event=\"handshake_failed\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(failed >= 2000, "{failed}");
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_descriptor_flood_neither_spins_the_accept_loop_nor_locks_clients_out() {
    // long enough for the whole flood to be open at once
    const HANDSHAKE_SECS: u64 = 6;
    let env = TestEnv::new();
    with_server_settings(&env, &format!("handshake_timeout_secs = {HANDSHAKE_SECS}"));
    let d = env.start();
    let pid = d.pid();
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=1024:1024"])
        .status();
    match st {
        Ok(s) if s.success() => {}
        other => {
            println!("SKIPPED: prlimit could not set the daemon's descriptor limit: {other:?}");
            return;
        }
    }
    let ch = env.admin_channel(&d).await;
    let mut a = pb::admin_client::AdminClient::new(ch);
    let mut socks = Vec::new();
    for _ in 0..1100 {
        socks.push(TcpStream::connect(d.grpc).await.unwrap());
    }
    let flood_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds = open_fds(pid);
    assert!(
        fds > 1000,
        "the flood did not reach the limit ({fds} descriptors)"
    );
    // out of descriptors: the accept loop backs off rather than spinning a core
    let ticks = cpu_ticks(pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let used = (cpu_ticks(pid) - ticks) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    println!(
        "daemon CPU while out of descriptors: {:.0}% of a core",
        used * 100.0
    );
    assert!(used < 0.5, "the accept loop spins: {used:.2} of a core");
    // a client connected before the flood is still served
    a.server_info(pb::ServerInfoRequest {}).await.unwrap();
    // within a second of the flood's sockets timing out (the last opened times out last), new
    // clients are served
    let timed_out = flood_at + Duration::from_secs(HANDSHAKE_SECS);
    tokio::time::sleep_until(timed_out.into()).await;
    let mut first = None;
    while first.is_none() && Instant::now() < timed_out + Duration::from_secs(5) {
        if served(&env, &d).await {
            first = Some(Instant::now().saturating_duration_since(timed_out));
        }
    }
    let first = first.expect("no new client served after the flood timed out");
    println!("first new client served {first:?} after the flood's handshake timeout");
    assert!(first < Duration::from_millis(1500), "{first:?}");
    drop(socks);
    assert_eq!(d.stop(), 0);
}

/// The Vault-compatible API's listener is the same bounded accept loop: its silent sockets are
/// dropped after the configured handshake timeout too, and it still serves meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn the_vault_api_listener_drops_silent_sockets_after_the_handshake_timeout() {
    let env = TestEnv::new();
    with_server_settings(&env, &format!("handshake_timeout_secs = {HANDSHAKE_SECS}"));
    env.append_config("\n[vault_api]\nlisten = \"127.0.0.1:0\"\n");
    let d = env.start();
    let vault: std::net::SocketAddr = d
        .log_text()
        .lines()
        .filter(|l| l.contains("keygate serving"))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["vault"].as_str().and_then(|a| a.parse().ok()))
        .expect("the Vault API address in the serving line");
    let started = Instant::now();
    let mut socks = Vec::new();
    for _ in 0..500 {
        socks.push(TcpStream::connect(vault).await.unwrap());
    }
    let opened = started.elapsed();
    // served meanwhile
    let (status, body) = https_get(&env, vault, "/v1/sys/health").await;
    assert_eq!(status, 200, "{body}");
    let mut latest = Duration::ZERO;
    for s in socks {
        let t = closed_after(s, started, Duration::from_secs(HANDSHAKE_SECS + 10))
            .await
            .expect("a silent socket was held past the handshake timeout");
        latest = latest.max(t);
    }
    println!("500 silent sockets on the Vault API, all dropped by {latest:?}");
    assert!(
        latest < opened + Duration::from_secs(HANDSHAKE_SECS + 3),
        "{latest:?}"
    );
    assert_eq!(d.stop(), 0);
}
