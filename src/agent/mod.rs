//! `keygate agent`: the sidecar. Authenticates with a projected service-account token (re-read
//! at every exchange), renews its credential at ~70 % of its life, renders templates into
//! files atomically, follows changes with `Secrets.Watch` (reconnecting with backoff and
//! resyncing everything after each reconnect), and signals, runs a command, or restarts a
//! supervised process when what it rendered changes.
pub mod config;
pub mod render;

use crate::client::Conn;
use crate::client::Failover as Channel;
use crate::client::{auth_for, connect, Auth};
use crate::pb;
use anyhow::{anyhow, Context};
use config::{signal_number, AgentConfig};
use render::{Rendered, Secrets};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

/// Command-line options.
pub struct Options {
    /// The configuration.
    pub config: AgentConfig,
    /// Render once and exit (init containers).
    pub once: bool,
    /// Copy this binary here first (exec mode: the app container runs it).
    pub install_to: Option<std::path::PathBuf>,
    /// Supervise this command with the secrets in its environment.
    pub exec: Vec<String>,
}

/// Loads the configuration: `--config FILE`, else `KEYGATE_AGENT_CONFIG_B64` (the injector's),
/// else `KEYGATE_AGENT_CONFIG`.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<AgentConfig> {
    let text = match path {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => {
            if let Ok(b) = std::env::var("KEYGATE_AGENT_CONFIG_B64") {
                use base64::Engine;
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .context("KEYGATE_AGENT_CONFIG_B64 is not base64")?,
                )?
            } else {
                std::env::var("KEYGATE_AGENT_CONFIG").map_err(|_| {
                    anyhow!("no configuration: --config FILE or KEYGATE_AGENT_CONFIG")
                })?
            }
        }
    };
    AgentConfig::parse(&text).map_err(|e| anyhow!("agent config: {e}"))
}

struct Session {
    credential: Zeroizing<String>,
    lease_id: String,
    ttl: Duration,
}

/// The shared state of one agent.
struct Agent {
    cfg: AgentConfig,
    ch: Channel,
    session: tokio::sync::RwLock<Session>,
    secrets: Mutex<Arc<Secrets>>,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

fn authed(
    ch: &Channel,
    credential: &str,
) -> anyhow::Result<tonic::service::interceptor::InterceptedService<Channel, Auth>> {
    Ok(tonic::service::interceptor::InterceptedService::new(
        ch.clone(),
        auth_for(Some(credential))?,
    ))
}

async fn exchange(ch: &Channel, cfg: &AgentConfig) -> anyhow::Result<Session> {
    // kubelet rotates the projected token: read it at every exchange
    let token = Zeroizing::new(
        std::fs::read_to_string(&cfg.token_file)
            .with_context(|| format!("reading the token file {}", cfg.token_file.display()))?
            .trim()
            .to_string(),
    );
    let r = pb::token_exchange_client::TokenExchangeClient::new(ch.clone())
        .exchange(pb::ExchangeRequest {
            subject_token: token.to_string(),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: cfg.role.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| {
            anyhow!(
                "exchange for role {}: {}",
                cfg.role,
                crate::client::status_error(s)
            )
        })?
        .into_inner();
    Ok(Session {
        credential: Zeroizing::new(r.access_token.clone()),
        lease_id: r.lease_id,
        ttl: Duration::from_secs(r.expires_in.max(1)),
    })
}

impl Agent {
    async fn credential(&self) -> Zeroizing<String> {
        Zeroizing::new(self.session.read().await.credential.to_string())
    }

    /// Fetches `paths` into the cache.
    async fn fetch(&self, paths: &BTreeSet<String>) -> anyhow::Result<()> {
        let cred = self.credential().await;
        let ch = authed(&self.ch, &cred)?;
        let got = crate::client::fetch_all(&ch, paths.iter().map(String::as_str))
            .await?
            .into_iter()
            .map(|(p, f)| {
                let fields: BTreeMap<String, String> = f
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                (p, fields)
            });
        let mut guard = self
            .secrets
            .lock()
            .map_err(|_| anyhow!("secret cache poisoned"))?;
        let mut next = (**guard).clone();
        for (p, f) in got {
            next.insert(p, f);
        }
        *guard = Arc::new(next);
        Ok(())
    }

    fn cached(&self) -> Arc<Secrets> {
        self.secrets.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Renders every template; returns the files that changed and the first error. A template
    /// that fails keeps its previous file.
    async fn render_all(&self) -> (Vec<usize>, Option<String>) {
        let mut changed = Vec::new();
        let mut first_error = None;
        for (i, t) in self.cfg.templates.iter().enumerate() {
            match self.render_one(t).await {
                Ok(true) => changed.push(i),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(file = %t.destination, error = %e, "render failed; the previous file stays");
                    first_error.get_or_insert(format!("{}: {e}", t.destination));
                }
            }
        }
        (changed, first_error)
    }

    async fn render_one(&self, t: &config::TemplateConfig) -> anyhow::Result<bool> {
        let text = match (&t.contents, &t.source) {
            (Some(c), _) => c.clone(),
            (None, Some(p)) => {
                std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?
            }
            (None, None) => return Err(anyhow!("no template")),
        };
        for _ in 0..8 {
            match render::render(&text, &self.cached()).map_err(|e| anyhow!(e))? {
                Rendered::Done(out) => {
                    let out = Zeroizing::new(out);
                    let mode = u32::from_str_radix(&t.mode, 8).unwrap_or(0o400);
                    return render::write_atomic(
                        &self.cfg.output_dir,
                        &t.destination,
                        out.as_bytes(),
                        mode,
                        t.uid,
                        t.gid,
                    )
                    .with_context(|| format!("writing {}", t.destination));
                }
                Rendered::Needs(paths) => self.fetch(&paths).await?,
            }
        }
        Err(anyhow!("the template keeps asking for new secrets"))
    }

    /// Every path the agent uses (templates asked for, exec variables).
    fn paths(&self) -> BTreeSet<String> {
        let mut p: BTreeSet<String> = self.cached().keys().cloned().collect();
        if let Some(e) = &self.cfg.exec {
            p.extend(
                e.env
                    .values()
                    .filter_map(|v| v.split_once('#').map(|x| x.0.to_string())),
            );
            p.extend(e.env_prefix.keys().cloned());
        }
        p
    }

    /// Full resync: refetch everything, render everything.
    async fn sync(&self) -> anyhow::Result<Vec<usize>> {
        let paths = self.paths();
        if !paths.is_empty() {
            self.fetch(&paths).await?;
        }
        // a template that fails keeps its file and marks the agent unhealthy
        let (changed, err) = self.render_all().await;
        self.set_health(err);
        Ok(changed)
    }

    fn set_health(&self, err: Option<String>) {
        self.healthy.store(err.is_none(), Ordering::SeqCst);
        if let Ok(mut l) = self.last_error.lock() {
            *l = err;
        }
    }

    /// The exec environment.
    fn exec_env(&self) -> anyhow::Result<BTreeMap<String, Zeroizing<String>>> {
        let Some(e) = &self.cfg.exec else {
            return Ok(BTreeMap::new());
        };
        let s = self.cached();
        let mut out = BTreeMap::new();
        for (name, spec) in &e.env {
            let (path, field) = spec
                .split_once('#')
                .ok_or_else(|| anyhow!("exec.env {name}: expected PATH#FIELD"))?;
            let v = s
                .get(path)
                .and_then(|f| f.get(field))
                .ok_or_else(|| anyhow!("secret {path} has no field {field:?} (for {name})"))?;
            out.insert(name.clone(), Zeroizing::new(v.clone()));
        }
        for (path, prefix) in &e.env_prefix {
            for (f, v) in s.get(path).into_iter().flatten() {
                out.insert(
                    format!("{prefix}{}", crate::client::env_suffix(f)),
                    Zeroizing::new(v.clone()),
                );
            }
        }
        Ok(out)
    }

    fn on_change(&self, changed: &[usize]) {
        for &i in changed {
            let Some(oc) = self.cfg.templates.get(i).and_then(|t| t.on_change.as_ref()) else {
                continue;
            };
            if let Some(cmd) = oc.command.as_ref().filter(|c| !c.is_empty()) {
                match std::process::Command::new(&cmd[0]).args(&cmd[1..]).status() {
                    Ok(s) if s.success() => {}
                    Ok(s) => {
                        tracing::warn!(command = ?cmd, status = %s, "on_change command failed")
                    }
                    Err(e) => {
                        tracing::warn!(command = ?cmd, error = %e, "on_change command did not start")
                    }
                }
            }
            if let Some(sig) = &oc.signal {
                let pids = match (&oc.pidfile, &oc.process_name) {
                    (Some(p), _) => std::fs::read_to_string(p)
                        .ok()
                        .and_then(|s| s.trim().parse::<i32>().ok())
                        .into_iter()
                        .collect(),
                    (None, Some(name)) => pids_named(name),
                    _ => Vec::new(),
                };
                if pids.is_empty() {
                    tracing::warn!(file = %self.cfg.templates[i].destination, "on_change: no process to signal");
                }
                for pid in pids {
                    if let Err(e) = send_signal(pid, sig) {
                        tracing::warn!(pid, error = %e, "on_change signal failed");
                    }
                }
            }
        }
    }
}

/// Pids whose `comm` is `name` (a shared process namespace).
fn pids_named(name: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

fn send_signal(pid: i32, name: &str) -> Result<(), String> {
    let n = signal_number(name)?;
    let sig = nix::sys::signal::Signal::try_from(n).map_err(|e| e.to_string())?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| e.to_string())
}

/// Runs the agent; returns the process exit code.
pub async fn run(opts: Options) -> i32 {
    match run_inner(opts).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keygate agent: {e:#}");
            tracing::error!(error = %format!("{e:#}"), "agent stopped");
            1
        }
    }
}

async fn run_inner(opts: Options) -> anyhow::Result<i32> {
    if let Some(dest) = &opts.install_to {
        let me = std::env::current_exe().context("locating the keygate binary")?;
        std::fs::copy(&me, dest).with_context(|| format!("installing to {}", dest.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))?;
    }
    let cfg = opts.config;
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("output directory {}", cfg.output_dir.display()))?;
    let conn = Conn {
        addr: cfg.addr.clone(),
        cacert: Some(cfg.cacert.clone()),
        client_cert: None,
        client_key: None,
        credential: None,
    };
    let ch = connect(&conn).await?;
    let session = exchange(&ch, &cfg)
        .await
        .context("cannot authenticate at start")?;
    tracing::info!(role = %cfg.role, lease_id = %session.lease_id, "agent authenticated");
    let agent = Arc::new(Agent {
        cfg,
        ch,
        session: tokio::sync::RwLock::new(session),
        secrets: Mutex::new(Arc::new(Secrets::new())),
        healthy: AtomicBool::new(false),
        last_error: Mutex::new(None),
    });
    // first render: every template (it discovers the secrets it needs) and the exec variables
    let initial = agent.sync().await;
    if opts.once {
        initial.context("fetching secrets")?;
        if !agent.healthy.load(Ordering::SeqCst) {
            let e = agent
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default();
            return Err(anyhow!("rendering failed: {e}"));
        }
        tracing::info!(files = agent.cfg.templates.len(), "rendered once");
        return Ok(0);
    }
    if !opts.exec.is_empty() {
        // the supervised command must not start without its variables
        agent.exec_env().context("exec environment")?;
    }
    if let Err(e) = &initial {
        tracing::warn!(error = %e, "first sync incomplete; retrying on the next change or reconnect");
    }
    if let Some(addr) = agent.cfg.health_listen.clone() {
        let a = agent.clone();
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("health_listen {addr}"))?;
        tokio::spawn(health(l, a));
    }
    tokio::spawn(renewer(agent.clone()));
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(watcher(agent.clone(), tx));
    if opts.exec.is_empty() {
        let mut rx = rx;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(0),
                r = rx.changed() => if r.is_err() { return Ok(1) },
            }
        }
    }
    supervise(agent, opts.exec, rx).await
}

/// Serves `/healthz`: 200 when authenticated and the last render succeeded.
async fn health(l: tokio::net::TcpListener, agent: Arc<Agent>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let a = agent.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            let (code, body) = if a.healthy.load(Ordering::SeqCst) {
                ("200 OK", "ok\n".to_string())
            } else {
                let e = a
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_else(|| "starting".into());
                ("503 Service Unavailable", format!("{e}\n"))
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// Renews the credential at ~70 % of its life (with jitter); re-exchanges when refused.
async fn renewer(agent: Arc<Agent>) {
    loop {
        let ttl = agent.session.read().await.ttl;
        let mut j = [0u8; 2];
        let _ = aws_lc_rs::rand::fill(&mut j);
        let jitter = (u16::from_le_bytes(j) as f64 / u16::MAX as f64) * 0.1 - 0.05;
        let wait = ttl.mul_f64((0.7 + jitter).clamp(0.5, 0.9));
        tokio::time::sleep(wait.max(Duration::from_millis(500))).await;
        let (cred, lease) = {
            let s = agent.session.read().await;
            (Zeroizing::new(s.credential.to_string()), s.lease_id.clone())
        };
        let renewed = async {
            let mut c = pb::leases_client::LeasesClient::new(authed(&agent.ch, &cred)?);
            let r = c
                .renew(pb::RenewLeaseRequest {
                    lease_id: lease,
                    increment_seconds: 0,
                })
                .await
                .map_err(|s| anyhow!("{}", crate::client::status_error(s)))?
                .into_inner();
            Ok::<_, anyhow::Error>(r)
        }
        .await;
        match renewed {
            Ok(r) if !r.access_token.is_empty() && r.expires_in > 0 => {
                let mut s = agent.session.write().await;
                s.credential = Zeroizing::new(r.access_token.clone());
                s.ttl = Duration::from_secs(r.expires_in);
                tracing::info!(expires_in = r.expires_in, "credential renewed");
            }
            other => {
                if let Err(e) = &other {
                    tracing::info!(error = %e, "renewal refused; exchanging the platform token again");
                }
                reexchange(&agent).await;
            }
        }
    }
}

async fn reexchange(agent: &Agent) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match exchange(&agent.ch, &agent.cfg).await {
            Ok(s) => {
                tracing::info!(lease_id = %s.lease_id, "re-authenticated");
                *agent.session.write().await = s;
                return;
            }
            Err(e) => {
                agent.set_health(Some(format!("authentication: {e:#}")));
                tracing::warn!(error = %format!("{e:#}"), "exchange failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Follows changes: one `Watch` stream over every path; after each (re)connect a full resync.
/// Bumps `tx` whenever something rendered or an exec variable changed.
async fn watcher(agent: Arc<Agent>, tx: tokio::sync::watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    let mut last_env = agent.exec_env().ok().map(fingerprint);
    loop {
        let cred = agent.credential().await;
        let stream = async {
            let mut c = pb::secrets_client::SecretsClient::new(authed(&agent.ch, &cred)?);
            let s = c
                .watch(pb::WatchRequest {
                    paths: agent.paths().into_iter().collect(),
                    prefixes: vec![],
                })
                .await
                .map_err(|s| (s.code(), anyhow!("{}", crate::client::status_error(s))))
                .map_err(|(code, e)| {
                    if code == tonic::Code::Unauthenticated {
                        anyhow!("unauthenticated: {e}")
                    } else {
                        e
                    }
                })?;
            Ok::<_, anyhow::Error>(s.into_inner())
        }
        .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, backoff = ?backoff, "watch: cannot connect; retrying");
                if e.to_string().contains("unauthenticated") {
                    reexchange(&agent).await;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        // resync after every (re)connect: changes while disconnected are not lost
        if !first {
            tracing::info!("watch reconnected; resyncing");
        }
        first = false;
        let mut react = |changed: Vec<usize>| {
            agent.on_change(&changed);
            let env = agent.exec_env().ok().map(fingerprint);
            if !changed.is_empty() || env != last_env {
                last_env = env;
                tx.send_modify(|v| *v += 1);
            }
        };
        match agent.sync().await {
            Ok(changed) => react(changed),
            Err(e) => tracing::warn!(error = %e, "resync failed"),
        }
        backoff = Duration::from_millis(200);
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    let path = ev.path.clone();
                    tracing::info!(path = %path, version = ev.version, "secret changed");
                    let one: BTreeSet<String> = [path].into_iter().collect();
                    if let Err(e) = agent.fetch(&one).await {
                        tracing::warn!(error = %e, "refetch failed");
                        agent.set_health(Some(e.to_string()));
                        continue;
                    }
                    let (changed, err) = agent.render_all().await;
                    agent.set_health(err);
                    react(changed);
                }
                Ok(None) | Err(_) => {
                    tracing::info!("watch stream ended; reconnecting");
                    break;
                }
            }
        }
    }
}

fn fingerprint(env: BTreeMap<String, Zeroizing<String>>) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (k, v) in &env {
        ctx.update(k.as_bytes());
        ctx.update(&[0]);
        ctx.update(v.as_bytes());
        ctx.update(&[0]);
    }
    ctx.finish().as_ref().to_vec()
}

/// Exec mode: runs the command with the secrets in its environment, restarts it (signal, grace,
/// SIGKILL) when they change, forwards SIGTERM/SIGINT and exits with its code.
async fn supervise(
    agent: Arc<Agent>,
    cmd: Vec<String>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) -> anyhow::Result<i32> {
    let exec = agent.cfg.exec.clone().unwrap_or_default();
    let restart_signal = exec.restart_signal.clone();
    let grace = Duration::from_secs(exec.grace_secs);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let env = agent.exec_env().context("exec environment")?;
        let mut c = tokio::process::Command::new(&cmd[0]);
        c.args(&cmd[1..]);
        for (k, v) in &env {
            c.env(k, v.as_str());
        }
        let mut child = c
            .spawn()
            .with_context(|| format!("starting {:?}", cmd[0]))?;
        let pid = child.id().map(|p| p as i32);
        tracing::info!(pid, "started the supervised command");
        let stop = |child_pid: Option<i32>, sig: &str| {
            if let Some(p) = child_pid {
                let _ = send_signal(p, sig);
            }
        };
        tokio::select! {
            st = child.wait() => {
                let st = st?;
                return Ok(st.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)));
            }
            _ = term.recv() => {
                stop(pid, "TERM");
                let st = child.wait().await?;
                return Ok(st.code().unwrap_or(143));
            }
            _ = int.recv() => {
                stop(pid, "INT");
                let st = child.wait().await?;
                return Ok(st.code().unwrap_or(130));
            }
            r = changes.changed() => {
                if r.is_err() {
                    return Ok(1);
                }
                tracing::info!(pid, "secrets changed: restarting the supervised command");
                stop(pid, &restart_signal);
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                    let _ = child.wait().await;
                }
            }
        }
    }
}
