//! `keygate run` end to end: a GitHub-Actions-style token endpoint backed by the test issuer,
//! masks first, the secret in the child's environment only, the child's exit code and signals,
//! and a missing field failing before anything runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::issuer::{fixture, TestIssuer, TestKey};
use common::{marker, TestEnv, BIN};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

const GH: &str = "https://token.actions.githubusercontent.com";
const AUD: &str = "https://keygate.test";

struct World {
    env: TestEnv,
    issuer: TestIssuer,
    d: common::Daemon,
}

async fn world() -> World {
    let env = TestEnv::new();
    let issuer = TestIssuer::start(&env.paths.dir, "gh").await;
    let key = TestKey::rsa("k1");
    issuer.publish(&key);
    let disc = issuer.tenant("gh", GH);
    env.append_config(&format!(
        r#"
[identity]
url = "https://keygate.test"

[[issuers]]
name = "github"
preset = "github-actions"
discovery_url = "{disc}"
ca_file = "ca.pem"
audience = "{AUD}"

[[roles]]
name = "ci"
issuer = "github"
claims = {{ repository_owner_id = "4242", repository = "acme/app", ref = "refs/heads/main" }}
scopes = ["read:ci/*"]
"#
    ));
    let mut t = fixture("github-actions", GH, AUD);
    t["repository_owner_id"] = json!("4242");
    t["repository"] = json!("acme/app");
    t["ref"] = json!("refs/heads/main");
    *issuer.state.actions_token.lock().unwrap() = Some(key.sign(&t));
    let d = env.start();
    World { env, issuer, d }
}

fn run_cmd(w: &World, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("run")
        .args(args)
        .env("KEYGATE_ADDR", format!("https://{}", w.d.grpc))
        .env("KEYGATE_CACERT", &w.env.paths.ca)
        .env("KEYGATE_AUDIENCE", AUD)
        .env("KEYGATE_ACTIONS_CACERT", &w.env.paths.ca)
        .env("GITHUB_ACTIONS", "true")
        .env(
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            format!("{}/actions-token?api-version=2.0", w.issuer.base),
        )
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "actions-request-token")
        .env_remove("KEYGATE_CLIENT_CERT")
        .env_remove("KEYGATE_CLIENT_KEY")
        .env_remove("KEYGATE_TOKEN");
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn run_injects_masks_and_hands_over_the_process() {
    let w = world().await;
    let pw = marker("runpw");
    let multi = format!("line-one-{}\nline-two-{}", marker("a"), marker("b"));
    assert!(w
        .env
        .cli(
            &w.d,
            &["put", "ci/db", &format!("password={pw}"), "user=app"]
        )
        .status
        .success());
    let out = w.env.cli_with(
        &w.d,
        &["put", "ci/cert", "pem=-"],
        Some(multi.as_bytes()),
        true,
    );
    assert!(out.status.success());

    // the child sees the values; masks come first; nothing in argv
    let out = run_cmd(
        &w,
        &[
            "--role",
            "ci",
            "--env",
            "DB_PASSWORD=ci/db#password",
            "--env-prefix",
            "ci/cert=CERT_",
            "--",
            "sh",
            "-c",
            "echo child-start; [ \"$DB_PASSWORD\" = \"$EXPECT\" ] && echo pw-ok; printf '%s' \"$CERT_PEM\" | wc -l",
        ],
    )
    .env("EXPECT", &pw)
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines.iter().position(|l| *l == "child-start").unwrap();
    let masks = &lines[..start];
    assert!(
        masks.contains(&format!("::add-mask::{pw}").as_str()),
        "{stdout}"
    );
    for l in multi.lines() {
        assert!(
            masks.contains(&format!("::add-mask::{l}").as_str()),
            "every line masked: {stdout}"
        );
    }
    assert!(
        !masks.contains(&"::add-mask::app"),
        "only injected values are masked"
    );
    assert_eq!(lines[start + 1], "pw-ok");
    assert_eq!(
        lines[start + 2].trim(),
        "1",
        "a multi-line value arrives whole"
    );
    let reqs = w.issuer.state.actions_requests.lock().unwrap().clone();
    assert!(reqs[0].0.contains("audience=https%3A%2F%2Fkeygate.test"));

    // the child's exit code is run's
    let st = run_cmd(
        &w,
        &[
            "--role",
            "ci",
            "--env",
            "P=ci/db#password",
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
    )
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert_eq!(st.code(), Some(7));

    // run is replaced by the child: a signal sent to run's pid reaches the child's handler
    let mut child = run_cmd(
        &w,
        &[
            "--role",
            "ci",
            "--env",
            "P=ci/db#password",
            "--",
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut so = child.stdout.take().unwrap();
    let mut buf = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&buf).contains("ready") {
        assert!(std::time::Instant::now() < deadline, "child never started");
        let mut b = [0u8; 256];
        let n = std::io::Read::read(&mut so, &mut b).unwrap();
        assert!(n > 0, "stdout closed early");
        buf.extend_from_slice(&b[..n]);
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));

    // a missing field fails before the command starts, naming it
    let flag = w.env.paths.dir.join("ran");
    let out = run_cmd(
        &w,
        &[
            "--role",
            "ci",
            "--env",
            "P=ci/db#password",
            "--env",
            "T=ci/db#api_token",
            "--",
            "touch",
            flag.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ci/db") && err.contains("api_token") && err.contains("T"),
        "{err}"
    );
    assert!(!flag.exists(), "the command ran");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("::add-mask::"),
        "masks printed for a failed run"
    );
    // a missing secret, and a path outside the role's scopes, too
    let out = run_cmd(&w, &["--role", "ci", "--env", "X=ci/none#a", "--", "true"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("ci/none"));
    let out = run_cmd(&w, &["--role", "ci", "--env", "X=other/x#a", "--", "true"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    // outside GitHub Actions: --role without a platform token is named as such
    let out = run_cmd(
        &w,
        &["--role", "ci", "--env", "P=ci/db#password", "--", "true"],
    )
    .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
    .env_remove("GITHUB_ACTIONS")
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a platform token"));
    // outside GitHub Actions: no identity is a clear error; KEYGATE_TOKEN is used as is
    let out = run_cmd(
        &w,
        &["--env", "P=ci/db#password", "--", "sh", "-c", "echo ${#P}"],
    )
    .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
    .env_remove("GITHUB_ACTIONS")
    .output()
    .unwrap();
    assert!(!out.status.success(), "no identity must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no identity"));
    let cred = Command::new(BIN)
        .args(["exchange", "--role", "ci", "--github-actions"])
        .envs(
            run_cmd(&w, &[])
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .env_remove("KEYGATE_CLIENT_CERT")
        .env_remove("KEYGATE_CLIENT_KEY")
        .output()
        .unwrap();
    assert!(
        cred.status.success(),
        "{}",
        String::from_utf8_lossy(&cred.stderr)
    );
    let cred = String::from_utf8(cred.stdout).unwrap().trim().to_string();
    let out = run_cmd(
        &w,
        &["--env", "P=ci/db#password", "--", "sh", "-c", "echo ${#P}"],
    )
    .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
    .env_remove("GITHUB_ACTIONS")
    .env("KEYGATE_TOKEN", &cred)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pw.len().to_string()
    );

    let d = w.d;
    assert_eq!(d.stop(), 0);
    w.env.assert_logs_free_of(&[pw, cred]);
}
