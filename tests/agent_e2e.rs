//! The sidecar agent end to end (daemon and agent as processes): files with the right content
//! and mode, a rotation reaching the file within 2 s, reconnect and resync after the daemon is
//! killed and restarted, a broken template keeping the old file, exec mode restarting the child
//! with the new environment, and a clear failure when it cannot authenticate at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::issuer::{now, TestIssuer, TestKey};
use common::{marker, TestEnv, BIN};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ISS: &str = "https://cluster.example";
const AUD: &str = "https://keygate.test";
const SUB: &str = "system:serviceaccount:shop:web";

/// A child process killed when the test ends, even by a panic.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct World {
    env: TestEnv,
    _issuer: TestIssuer,
    key: TestKey,
    port: u16,
    token: PathBuf,
}

async fn world() -> World {
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "k8s").await;
    let key = TestKey::rsa("k1");
    issuer.publish(&key);
    let disc = issuer.tenant("k8s", ISS);
    let port = free_port();
    let cfg = std::fs::read_to_string(&env.paths.config).unwrap();
    std::fs::write(
        &env.paths.config,
        cfg.replace(
            "grpc_listen = \"127.0.0.1:0\"",
            &format!("grpc_listen = \"127.0.0.1:{port}\""),
        ),
    )
    .unwrap();
    env.append_config(&format!(
        r#"
[[issuers]]
name = "k8s"
issuer = "{ISS}"
discovery_url = "{disc}"
ca_file = "ca.pem"
audience = "{AUD}"

[[roles]]
name = "web"
issuer = "k8s"
bound_subject = "{SUB}"
scopes = ["read:shop/*"]
ttl_secs = 4
max_ttl_secs = 3600

[[rotations]]
path = "shop/db"
every = "24h"

[rotations.fields.password]
generator = "password"
length = 24
"#
    ));
    let token = env.paths.dir.join("sa-token");
    let w = World {
        env,
        _issuer: issuer,
        key,
        port,
        token,
    };
    w.write_token();
    w
}

impl World {
    fn write_token(&self) {
        let t = self
            .key
            .sign(&json!({"iss": ISS, "aud": AUD, "sub": SUB, "iat": now(), "exp": now() + 600}));
        std::fs::write(&self.token, t).unwrap();
    }

    fn agent_config(&self, out: &Path, health: u16, extra: &str) -> PathBuf {
        let p = self.env.paths.dir.join(format!("agent-{health}.toml"));
        std::fs::write(
            &p,
            format!(
                r#"addr = "https://localhost:{port}"
cacert = "{ca}"
role = "web"
token_file = "{token}"
output_dir = "{out}"
health_listen = "127.0.0.1:{health}"
{extra}"#,
                port = self.port,
                ca = self.env.paths.ca.display(),
                token = self.token.display(),
                out = out.display(),
            ),
        )
        .unwrap();
        p
    }

    fn agent(&self, args: &[&str], name: &str) -> Proc {
        let log = std::fs::File::create(self.env.logs.join(format!("agent-{name}.log"))).unwrap();
        Command::new(BIN)
            .arg("agent")
            .args(args)
            .env("KEYGATE_LOG", common::LOG_LEVEL)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Proc)
            .unwrap()
    }
}

const TEMPLATES: &str = r#"
[[templates]]
destination = "db.json"
contents = "{{ secret('shop/db') | tojson }}"
mode = "0400"
uid = 1234
gid = 2345

[[templates]]
destination = "password"
contents = "{{ secret('shop/db').password }}"
mode = "0440"

[[templates]]
destination = "app.env"
contents = "{{ secret('shop/app') | envfile }}"
"#;

fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

async fn health(port: u16) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).await.unwrap();
    let t = String::from_utf8_lossy(&b).to_string();
    let code = t
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, t.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_renders_follows_rotation_reconnects_and_keeps_old_files_on_errors() {
    let w = world().await;
    let d = w.env.start();
    let p1 = marker("agentpw");
    // shop/db has a rotation policy whose first run starts with the daemon: while that
    // rotation is in flight a write is refused (FAILED_PRECONDITION), so retry briefly
    let mut put = None;
    for _ in 0..50 {
        let out = w.env.cli(
            &d,
            &["put", "shop/db", &format!("password={p1}"), "user=web"],
        );
        if out.status.success() {
            put = None;
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("rotation"), "{err}");
        put = Some(err);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(put.is_none(), "{put:?}");
    assert!(w
        .env
        .cli(&d, &["put", "shop/app", "mode=blue"])
        .status
        .success());
    let out = w.env.paths.dir.join("out");

    // --once: everything rendered, with modes, then exit 0
    let cfg = w.agent_config(&out, free_port(), TEMPLATES);
    let st = w
        .agent(&["--config", cfg.to_str().unwrap(), "--once"], "once")
        .wait()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    let db: Value = serde_json::from_str(&read(&out.join("db.json"))).unwrap();
    assert_eq!(db, json!({"password": p1, "user": "web"}));
    assert_eq!(read(&out.join("password")), p1);
    assert_eq!(read(&out.join("app.env")), "MODE=blue\n");
    let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("db.json"), 0o400);
    assert_eq!(mode("password"), 0o440);
    assert_eq!(mode("app.env"), 0o400);
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(out.join("db.json")).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (1234, 2345),
            "owner and group as configured"
        );
    }

    // the long-running agent: a rotation reaches the file within 2 s
    let hp = free_port();
    let cfg = w.agent_config(&out, hp, TEMPLATES);
    let mut agent = w.agent(&["--config", cfg.to_str().unwrap()], "sidecar");
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(hp).await.0 != 200 {
        assert!(Instant::now() < deadline, "agent never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out_rot = w.env.cli(&d, &["admin", "rotate", "shop/db"]);
    assert!(
        out_rot.status.success(),
        "{}",
        String::from_utf8_lossy(&out_rot.stderr)
    );
    let rotated = Instant::now();
    let get = w.env.cli(&d, &["get", "shop/db", "--field", "password"]);
    let p2 = String::from_utf8(get.stdout).unwrap().trim().to_string();
    assert_ne!(p2, p1);
    wait_for(2, "the rotated password in the file", || {
        read(&out.join("password")) == p2
    });
    assert!(rotated.elapsed() < Duration::from_secs(2));

    // the credential lives 4 s: renewals keep the agent working well past it
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(w
        .env
        .cli(&d, &["put", "shop/app", "mode=teal"])
        .status
        .success());
    wait_for(3, "a change after several renewals", || {
        read(&out.join("app.env")) == "MODE=teal\n"
    });

    // its lease revoked: the stream ends, renewal is refused, the agent exchanges again
    assert!(w
        .env
        .cli(&d, &["admin", "revoke-prefix", "web/"])
        .status
        .success());
    assert!(w
        .env
        .cli(&d, &["put", "shop/app", "mode=plum"])
        .status
        .success());
    wait_for(10, "a change after revocation", || {
        read(&out.join("app.env")) == "MODE=plum\n"
    });

    // kill the daemon and restart it: the agent reconnects and resyncs
    d.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = w.env.start();
    assert!(w
        .env
        .cli(&d, &["put", "shop/app", "mode=green"])
        .status
        .success());
    wait_for(10, "the change after the daemon restart", || {
        read(&out.join("app.env")) == "MODE=green\n"
    });

    // a broken template (its field is gone) keeps the old file; the others follow; unhealthy
    assert!(w
        .env
        .cli(&d, &["put", "shop/db", "user=web2"])
        .status
        .success());
    wait_for(3, "db.json update", || {
        read(&out.join("db.json")).contains("web2")
    });
    assert_eq!(
        read(&out.join("password")),
        p2,
        "the previous file must stay"
    );
    let (code, body) = health(hp).await;
    assert_eq!(code, 503);
    assert!(body.contains("password"), "{body}");
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));

    agent.kill().unwrap();
    agent.wait().unwrap();
    let alog = read(&w.env.logs.join("agent-sidecar.log"));
    assert!(
        alog.contains("credential renewed"),
        "no renewal in the agent log"
    );
    assert!(alog.contains("watch reconnected; resyncing"));
    assert!(
        alog.contains("re-authenticated"),
        "no re-exchange after revocation"
    );
    assert_eq!(d.stop(), 0);
    w.env.assert_logs_free_of(&[p1, p2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_mode_restarts_the_child_with_new_env_and_start_failures_are_clear() {
    let w = world().await;
    let d = w.env.start();
    assert!(w
        .env
        .cli(&d, &["put", "shop/app", "mode=blue"])
        .status
        .success());
    let out = w.env.paths.dir.join("exec-out");
    let log = w.env.paths.dir.join("child.log");
    let cfg = w.agent_config(
        &out,
        free_port(),
        "[exec]\nrestart_signal = \"TERM\"\ngrace_secs = 2\n[exec.env]\nAPP_MODE = \"shop/app#mode\"\n",
    );
    let script = format!(
        "echo \"start $APP_MODE\" >> {}; trap 'exit 0' TERM; while true; do sleep 0.05; done",
        log.display()
    );
    let mut agent = w.agent(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--exec",
            "--",
            "sh",
            "-c",
            &script,
        ],
        "exec",
    );
    wait_for(10, "the child", || read(&log) == "start blue\n");
    assert!(w
        .env
        .cli(&d, &["put", "shop/app", "mode=green"])
        .status
        .success());
    wait_for(3, "the restarted child", || {
        read(&log) == "start blue\nstart green\n"
    });
    // SIGTERM to the agent stops the child and the agent with the child's code
    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(agent.wait().unwrap().code(), Some(0));

    // on_change: a signal to the process in a pid file, and a command
    let pidfile = w.env.paths.dir.join("app.pid");
    let hups = w.env.paths.dir.join("hups");
    let marker_file = w.env.paths.dir.join("changed-marker");
    let mut app = Proc(
        Command::new("sh")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .arg("-c")
            .arg(format!(
                "echo $$ > {pid}; trap 'echo hup >> {h}' HUP; while true; do sleep 0.05; done",
                pid = pidfile.display(),
                h = hups.display()
            ))
            .spawn()
            .unwrap(),
    );
    wait_for(5, "the pid file", || !read(&pidfile).is_empty());
    let hook_cfg = w.agent_config(
        &w.env.paths.dir.join("hook-out"),
        free_port(),
        &format!(
            r#"
[[templates]]
destination = "app.env"
contents = "{{{{ secret('shop/app') | envfile }}}}"
on_change = {{ signal = "HUP", pidfile = "{pid}" }}

[[templates]]
destination = "mode"
contents = "{{{{ secret('shop/app').mode }}}}"
on_change = {{ command = ["touch", "{m}"] }}
"#,
            pid = pidfile.display(),
            m = marker_file.display()
        ),
    );
    let mut hook = w.agent(&["--config", hook_cfg.to_str().unwrap()], "hooks");
    wait_for(10, "first render", || {
        w.env.paths.dir.join("hook-out/mode").exists()
    });
    // the first render at start signals nobody (the app starts after it); a change does
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&hups), "");
    assert!(!marker_file.exists());
    assert!(w
        .env
        .cli(&d, &["put", "shop/app", "mode=red"])
        .status
        .success());
    wait_for(3, "HUP after the change", || read(&hups) == "hup\n");
    wait_for(3, "the on_change command", || marker_file.exists());
    hook.kill().unwrap();
    hook.wait().unwrap();
    app.kill().unwrap();
    app.wait().unwrap();

    // cannot authenticate at start: a clear message, non-zero, nothing run
    std::fs::write(&w.token, "not-a-token").unwrap();
    let o = Command::new(BIN)
        .args(["agent", "--config", cfg.to_str().unwrap(), "--once"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot authenticate at start"), "{err}");
    // a bad config: exit 64 naming the problem
    let bad = w.env.paths.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "addr = \"http://x\"\ncacert = \"c\"\nrole = \"r\"\ntoken_file = \"t\"\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["agent", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("https://"));
    assert_eq!(d.stop(), 0);
}
