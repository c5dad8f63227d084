//! Test harness: runs the real `keygate` binary over real TLS on loopback, with real files.
//! Every daemon's and CLI's output is kept under the environment's `logs/` directory so tests
//! can check that no secret value ever reached a log.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod issuer;
pub mod pg;
pub mod raw;

use keygate::devenv::{DevOptions, DevPaths};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// Everything at debug, keygate itself at trace: the level an operator debugging would use.
pub const LOG_LEVEL: &str = "debug,keygate=trace";

pub struct TestEnv {
    pub tmp: tempfile::TempDir,
    pub paths: DevPaths,
    pub logs: PathBuf,
    runs: std::sync::atomic::AtomicUsize,
}

pub struct Daemon {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A random marker that must never appear in a log.
pub fn marker(tag: &str) -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    format!("MARK{tag}{}", hex::encode(b))
}

impl TestEnv {
    pub fn new() -> Self {
        keygate::tls::install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kg");
        let paths = keygate::devenv::init(
            &dir,
            &DevOptions {
                grpc_listen: "127.0.0.1:0".into(),
                http_listen: "127.0.0.1:0".into(),
                issuer_listen: "127.0.0.1:0".into(),
                vault_listen: None,
            },
        )
        .unwrap();
        let cfg = std::fs::read_to_string(&paths.config).unwrap();
        // tests bring their own issuers and roles: drop the dev issuer's
        let cfg = cfg.split("\n[identity]").next().unwrap().to_string();
        std::fs::write(
            &paths.config,
            cfg.replace("format = \"text\"", "format = \"json\""),
        )
        .unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            tmp,
            paths,
            logs,
            runs: Default::default(),
        }
    }

    /// Appends TOML to the daemon's config.
    pub fn append_config(&self, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.paths.config)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn next_log(&self, what: &str) -> PathBuf {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.logs.join(format!("{n:04}-{what}.log"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.paths.dir.join("data")
    }

    /// Starts `keygate serve` and waits for it to listen.
    pub fn start(&self) -> Daemon {
        self.try_start()
            .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    }

    /// Starts `keygate serve`; `Err(log)` if it exits before listening.
    pub fn try_start(&self) -> Result<Daemon, String> {
        self.try_start_with(&[])
    }

    /// Starts `keygate serve` with extra environment variables (fault injection).
    pub fn start_with(&self, vars: &[(&str, &str)]) -> Daemon {
        self.try_start_with(vars)
            .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    }

    /// A config for replica `name` of this environment on the PostgreSQL database `pg_url`:
    /// the current config with its own node id, audit directory, audit keys and head file,
    /// written next to the main config (so relative paths resolve alike).
    pub fn replica_config(&self, name: &str, pg_url: &str) -> PathBuf {
        let base = std::fs::read_to_string(&self.paths.config).unwrap();
        assert!(base.contains("[storage]\nbackend = \"sled\"\npath = \"data\"\n"));
        let text = base
            .replace(
                "[storage]\nbackend = \"sled\"\npath = \"data\"\n",
                &format!(
                    "[storage]\nbackend = \"postgres\"\nurl = \"{pg_url}\"\ntls = \"dangerous_disable\"\npool_size = 8\n"
                ),
            )
            .replace("node_id = \"dev-1\"", &format!("node_id = \"{name}\""))
            + &format!(
                "\n[audit]\ndir = \"audit-{name}\"\nhead_file = \"audit-{name}.head\"\nsigning_key_file = \"audit-{name}-signing.key\"\nhmac_key_file = \"audit-{name}-hmac.key\"\n"
            );
        let path = self.paths.dir.join(format!("keygate-{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `keygate serve --config CONFIG` and waits for it to listen.
    pub fn start_config(&self, config: &Path) -> Daemon {
        self.try_start_config(config, &[])
            .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    }

    /// Like [`TestEnv::start_config`], with extra environment variables.
    pub fn start_config_with(&self, config: &Path, vars: &[(&str, &str)]) -> Daemon {
        self.try_start_config(config, vars)
            .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    }

    fn try_start_with(&self, vars: &[(&str, &str)]) -> Result<Daemon, String> {
        let config = self.paths.config.clone();
        self.try_start_config(&config, vars)
    }

    /// Starts `keygate serve --config CONFIG` inside the network namespace `netns`
    /// (`ip netns exec`, which execs the daemon: its pid is the daemon's).
    pub fn start_config_in_netns(
        &self,
        netns: &str,
        config: &Path,
        vars: &[(&str, &str)],
    ) -> Daemon {
        self.try_start_config_in(Some(netns), config, vars)
            .unwrap_or_else(|log| panic!("daemon did not start:\n{log}"))
    }

    fn try_start_config(&self, config: &Path, vars: &[(&str, &str)]) -> Result<Daemon, String> {
        self.try_start_config_in(None, config, vars)
    }

    fn try_start_config_in(
        &self,
        netns: Option<&str>,
        config: &Path,
        vars: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        let log = self.next_log("daemon");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .envs(vars.iter().copied())
            .env("KEYGATE_LOG", LOG_LEVEL)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel::<(SocketAddr, SocketAddr)>();
        let log_path = log.clone();
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::create(&log_path).unwrap();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                writeln!(f, "{line}").unwrap();
                if line.contains("keygate serving") {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        let g = v["grpc"].as_str().unwrap_or("").parse();
                        let h = v["http"].as_str().unwrap_or("").parse();
                        if let (Ok(g), Ok(h)) = (g, h) {
                            let _ = tx.send((g, h));
                        }
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((grpc, http)) => Ok(Daemon {
                child,
                grpc,
                http,
                log,
                reader: Some(reader),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                Err(std::fs::read_to_string(&log).unwrap_or_default())
            }
        }
    }

    /// Runs the CLI against `d` as the admin; output is logged for the marker check.
    pub fn cli(&self, d: &Daemon, args: &[&str]) -> Output {
        self.cli_with(d, args, None, true)
    }

    pub fn cli_with(&self, d: &Daemon, args: &[&str], stdin: Option<&[u8]>, admin: bool) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("KEYGATE_ADDR", format!("https://{}", d.grpc))
            .env("KEYGATE_CACERT", &self.paths.ca)
            .env("KEYGATE_LOG", LOG_LEVEL)
            .env_remove("KEYGATE_CLIENT_CERT")
            .env_remove("KEYGATE_CLIENT_KEY")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if admin {
            cmd.env("KEYGATE_CLIENT_CERT", &self.paths.admin_cert)
                .env("KEYGATE_CLIENT_KEY", &self.paths.admin_key);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        // stdout carries values on purpose (`get`); only stderr is a log.
        std::fs::write(self.next_log("cli-stderr"), &out.stderr).unwrap();
        out
    }

    /// A gRPC channel with the given client identity (None: no client certificate).
    pub async fn channel_as(&self, d: &Daemon, identity: Option<(&Path, &Path)>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(
                std::fs::read(&self.paths.ca).unwrap(),
            ));
        if let Some((c, k)) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(c).unwrap(),
                std::fs::read(k).unwrap(),
            ));
        }
        Channel::from_shared(format!("https://{}", d.grpc))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn admin_channel(&self, d: &Daemon) -> Channel {
        self.channel_as(d, Some((&self.paths.admin_cert, &self.paths.admin_key)))
            .await
    }

    /// Fails if any log written so far contains any of `markers`, raw, base64 or hex.
    pub fn assert_logs_free_of(&self, markers: &[String]) {
        let patterns: Vec<String> = markers.iter().flat_map(|m| encodings(m)).collect();
        let finder = aho_corasick::AhoCorasick::new(&patterns).unwrap();
        let mut files = 0;
        // the daemon's and CLI's logs, and the audit log
        let audit =
            keygate::audit::writer::segments(&self.paths.dir.join("audit")).unwrap_or_default();
        let logs = std::fs::read_dir(&self.logs)
            .unwrap()
            .map(|e| e.unwrap().path());
        for p in logs.chain(audit) {
            let text = std::fs::read(&p).unwrap();
            files += 1;
            if let Some(m) = finder.find(&text) {
                panic!(
                    "secret marker {} found in log {}",
                    patterns[m.pattern().as_usize()],
                    p.display()
                );
            }
        }
        assert!(files > 0, "no logs were captured");
    }
}

/// The marker as it might leak: raw, base64 (three alignments), hex.
pub fn encodings(m: &str) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v = vec![m.to_string(), hex::encode(m), hex::encode_upper(m)];
    for skip in 0..3 {
        // A marker embedded at any offset shows up base64-encoded with one of three
        // alignments; drop the partial first and last groups.
        let enc = b64.encode(&m.as_bytes()[skip..]);
        let inner = &enc[..enc.len().saturating_sub(4)];
        v.push(inner.to_string());
    }
    v
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> i32 {
        self.signal("TERM");
        let st = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        st.code().unwrap_or(-1)
    }

    /// Waits for exit (after a signal sent elsewhere); returns the exit code.
    pub fn wait(mut self) -> i32 {
        let st = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        st.code().unwrap_or(-1)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over HTTPS (HTTP/1.1) from the side listener: (status, body).
pub async fn https_get(env: &TestEnv, addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in keygate::tls::load_certs(&env.paths.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Every record of the environment's audit log, in order.
pub fn audit_records(env: &TestEnv) -> Vec<keygate::audit::record::Record> {
    let dir = env.paths.dir.join("audit");
    let mut out = Vec::new();
    for s in keygate::audit::writer::segments(&dir).unwrap() {
        for l in std::fs::read_to_string(s).unwrap().lines() {
            out.push(serde_json::from_str(l).unwrap());
        }
    }
    out
}

/// `keygate audit verify` on the environment's log: (exit code, stdout + stderr).
pub fn audit_verify(env: &TestEnv) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(env.paths.dir.join("audit"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
