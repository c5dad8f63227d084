//! `keygate run`: exchange the job's platform token, fetch secrets, and exec a command with them
//! in its environment. The process is replaced (signals and exit code are the command's);
//! nothing is written to disk and no value is put in argv.
use super::commands::{exchange_token, platform_token, TokenSource};
use super::Conn;
use crate::client::connect;
use crate::secrets::path::SecretPath;
use anyhow::{anyhow, Context};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use zeroize::Zeroizing;

/// What to put where.
#[derive(Debug, Default)]
pub struct Plan {
    /// `NAME` ← `path#field`.
    pub vars: Vec<(String, String, String)>,
    /// Every field of `path` as `PREFIX` + FIELD (upper case, `.`/`-` → `_`).
    pub prefixes: Vec<(String, String)>,
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Parses `--env NAME=PATH#FIELD` and `--env-prefix PATH=PREFIX_`.
pub fn plan(envs: &[String], prefixes: &[String]) -> anyhow::Result<Plan> {
    let mut p = Plan::default();
    for e in envs {
        let (name, rest) = e
            .split_once('=')
            .ok_or_else(|| anyhow!("--env {e:?}: expected NAME=PATH#FIELD"))?;
        let (path, field) = rest
            .split_once('#')
            .ok_or_else(|| anyhow!("--env {e:?}: expected NAME=PATH#FIELD"))?;
        if !valid_name(name) {
            return Err(anyhow!("--env {e:?}: {name:?} is not a variable name"));
        }
        SecretPath::parse(path).map_err(|m| anyhow!("--env {e:?}: {m}"))?;
        p.vars
            .push((name.to_string(), path.to_string(), field.to_string()));
    }
    for e in prefixes {
        let (path, prefix) = e
            .split_once('=')
            .ok_or_else(|| anyhow!("--env-prefix {e:?}: expected PATH=PREFIX_"))?;
        if !prefix.is_empty() && !valid_name(prefix) {
            return Err(anyhow!(
                "--env-prefix {e:?}: {prefix:?} is not a variable prefix"
            ));
        }
        SecretPath::parse(path).map_err(|m| anyhow!("--env-prefix {e:?}: {m}"))?;
        p.prefixes.push((path.to_string(), prefix.to_string()));
    }
    if p.vars.is_empty() && p.prefixes.is_empty() {
        return Err(anyhow!(
            "nothing to inject: add --env NAME=PATH#FIELD or --env-prefix PATH=PREFIX_"
        ));
    }
    Ok(p)
}

use crate::client::{env_suffix, fetch_all};

/// Fetches every path of `plan` (concurrently, one connection) and resolves the variables.
/// A missing secret or field is an error naming it.
pub async fn resolve(
    ch: crate::client::Authed,
    plan: &Plan,
) -> anyhow::Result<BTreeMap<String, Zeroizing<Vec<u8>>>> {
    let paths: BTreeSet<&str> = plan
        .vars
        .iter()
        .map(|(_, p, _)| p.as_str())
        .chain(plan.prefixes.iter().map(|(p, _)| p.as_str()))
        .collect();
    let fetched = fetch_all(&ch, paths.iter().copied()).await?;
    let mut out = BTreeMap::new();
    for (name, path, field) in &plan.vars {
        let v = fetched
            .get(path)
            .and_then(|f| f.get(field))
            .ok_or_else(|| anyhow!("secret {path} has no field {field:?} (for {name})"))?;
        out.insert(name.clone(), Zeroizing::new(v.clone()));
    }
    for (path, prefix) in &plan.prefixes {
        if let Some(fields) = fetched.get(path) {
            for (f, v) in fields {
                let name = format!("{prefix}{}", env_suffix(f));
                if !valid_name(&name) {
                    return Err(anyhow!("field {f:?} of {path} makes no variable name"));
                }
                out.entry(name).or_insert_with(|| Zeroizing::new(v.clone()));
            }
        }
    }
    for (name, v) in &out {
        if v.contains(&0) {
            return Err(anyhow!(
                "the value for {name} holds a NUL byte; it cannot be an environment variable"
            ));
        }
    }
    Ok(out)
}

/// `::add-mask::` lines for GitHub Actions (one per line of each value: the runner masks
/// line by line).
pub fn github_masks(values: &BTreeMap<String, Zeroizing<Vec<u8>>>) -> String {
    let mut s = String::new();
    for v in values.values() {
        for line in String::from_utf8_lossy(v).lines() {
            let line = line.trim();
            if !line.is_empty() {
                s.push_str("::add-mask::");
                s.push_str(line);
                s.push('\n');
            }
        }
    }
    s
}

/// Options of `keygate run`.
pub struct RunOptions {
    /// Role to exchange for (none: use KEYGATE_TOKEN or the admin certificate as is).
    pub role: Option<String>,
    /// `--env`.
    pub envs: Vec<String>,
    /// `--env-prefix`.
    pub prefixes: Vec<String>,
    /// `--token-file`.
    pub token_file: Option<std::path::PathBuf>,
    /// `--token-env`.
    pub token_env: Option<String>,
    /// Audience for GitHub Actions.
    pub audience: Option<String>,
    /// CA of the GitHub Actions endpoint (GHES, tests).
    pub actions_cacert: Option<std::path::PathBuf>,
    /// The command.
    pub cmd: Vec<String>,
}

/// `keygate run`: only returns on failure (exit code and message).
pub async fn run(conn: &Conn, o: RunOptions) -> (i32, anyhow::Error) {
    match prepare(conn, &o).await {
        Ok(env) => {
            use std::os::unix::process::CommandExt;
            if std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true") {
                use std::io::Write;
                let masks = Zeroizing::new(github_masks(&env));
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(masks.as_bytes());
                let _ = out.flush();
            }
            let mut cmd = std::process::Command::new(&o.cmd[0]);
            cmd.args(&o.cmd[1..]);
            for (k, v) in &env {
                cmd.env(k, OsString::from_vec(v.to_vec()));
            }
            // replaces this process; returns only if the command cannot be started
            let e = cmd.exec();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            (code, anyhow!("cannot run {:?}: {e}", o.cmd[0]))
        }
        Err(e) => (1, e),
    }
}

async fn prepare(
    conn: &Conn,
    o: &RunOptions,
) -> anyhow::Result<BTreeMap<String, Zeroizing<Vec<u8>>>> {
    if o.cmd.is_empty() {
        return Err(anyhow!("no command: keygate run [options] -- CMD ARGS…"));
    }
    let plan = plan(&o.envs, &o.prefixes)?;
    let ch = connect(conn).await?;
    let in_actions = std::env::var_os("ACTIONS_ID_TOKEN_REQUEST_URL").is_some();
    let source = if in_actions {
        Some(TokenSource::GithubActions {
            audience: o.audience.clone(),
            cacert: o.actions_cacert.clone(),
        })
    } else if let Some(f) = &o.token_file {
        Some(TokenSource::File(f.clone()))
    } else {
        o.token_env.clone().map(TokenSource::Env)
    };
    let credential: Option<Zeroizing<String>> = match (source, &o.role) {
        (Some(src), Some(role)) => {
            let token = platform_token(src).await?;
            Some(exchange_token(ch.clone(), role, &token).await?)
        }
        (Some(_), None) => {
            return Err(anyhow!(
                "a platform token is available: name the role to exchange it for with --role"
            ))
        }
        (None, Some(role)) => {
            return Err(anyhow!(
                "--role {role} needs a platform token to exchange: run in GitHub Actions, or pass \
                 --token-file/--token-env (or drop --role and set KEYGATE_TOKEN to a credential)"
            ))
        }
        (None, None) => conn
            .credential
            .clone()
            .filter(|t| !t.trim().is_empty())
            .map(Zeroizing::new),
    };
    if credential.is_none() && conn.client_cert.is_none() {
        return Err(anyhow!(
            "no identity: run in GitHub Actions, or pass --token-file/--token-env with --role, \
             or set KEYGATE_TOKEN"
        ));
    }
    let auth = crate::client::auth_for(credential.as_deref().map(|s| s.as_str()))?;
    let authed = tonic::service::interceptor::InterceptedService::new(ch, auth);
    resolve(authed, &plan)
        .await
        .context("fetching secrets (the command was not started)")
}
