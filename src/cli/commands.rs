//! CLI commands.
use super::Conn;
use crate::client::{connect_authed as connect, status_error};
use crate::pb;
use anyhow::{anyhow, Context};
use base64::Engine;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use zeroize::Zeroizing;

/// `keygate serve`.
pub async fn serve(config: &Path) -> i32 {
    let cfg = match crate::config::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return crate::EXIT_CONFIG;
        }
    };
    crate::logging::init(cfg.log_format, "info");
    run_daemon(cfg, None).await
}

async fn run_daemon(cfg: crate::config::Config, dev: Option<crate::devenv::DevPaths>) -> i32 {
    use crate::server::{Daemon, StartError};
    let daemon = match Daemon::start(cfg).await {
        Ok(d) => d,
        Err(StartError::Config(e)) => {
            eprintln!("{e}");
            tracing::error!(error = %e, "refusing to start");
            return crate::EXIT_CONFIG;
        }
        Err(e) => {
            eprintln!("error: {e}");
            tracing::error!(error = %e, "failed to start");
            return 1;
        }
    };
    if let Some(paths) = dev {
        if let Err(e) = crate::devenv::write_env(&paths, daemon.grpc_addr(), daemon.vault_addr()) {
            eprintln!("error: {e}");
        }
        if let Err(e) = seed_demo(&daemon).await {
            eprintln!("error: seeding demo/app: {e}");
        }
        println!(
            "\nkeygate dev is running: gRPC https://{grpc}, health/metrics https://{http}\n\
             Data in {dir}/data. Next, in another shell:\n\n  \
             . {env}\n  \
             cargo run --release -- get demo/app\n  \
             cargo run --release -- put demo/app username=demo password=-   # value from stdin\n  \
             cargo run --release -- list demo/\n\n\
             Rotation (demo/rotating: a new password every hour, the old one readable for 10 minutes):\n\n  \
             cargo run --release -- admin rotate demo/rotating\n  \
             cargo run --release -- get demo/rotating --previous\n  \
             cargo run --release -- admin rotation status\n\n\
             As a CI job would (a token from the local dev issuer, exchanged for a credential):\n\n  \
             export KEYGATE_TOKEN=$(cargo run --release -- exchange --role demo --token-file <(cargo run --release -- dev token --dir {dir}))\n  \
             cargo run --release -- get demo/app      # as the job: a credential scoped to demo/*\n\n\
             Stop with Ctrl-C.",
            grpc = daemon.grpc_addr(),
            http = daemon
                .http_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            dir = paths.dir.display(),
            env = paths.env_sh.display(),
        );
    }
    match daemon.run_until_signalled().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn seed_demo(daemon: &crate::server::Daemon) -> anyhow::Result<()> {
    use crate::sensitive::{SecretBytes, SecretFields};
    let store = daemon.store();
    let path = crate::secrets::path::SecretPath::parse("demo/app")?;
    if store.metadata(&path).await.is_ok() {
        return Ok(());
    }
    let mut pw = Zeroizing::new([0u8; 18]);
    aws_lc_rs::rand::fill(pw.as_mut()).map_err(|_| anyhow!("random source failed"))?;
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pw.as_ref());
    let fields: SecretFields = [
        ("username".to_string(), SecretBytes::new(b"demo".to_vec())),
        (
            "password".to_string(),
            SecretBytes::new(password.into_bytes()),
        ),
    ]
    .into_iter()
    .collect();
    let opts = crate::secrets::PutOptions {
        cas: Some(0),
        ..Default::default()
    };
    store.put(&path, &fields, &opts).await?;
    tracing::info!(path = "demo/app", "seeded demo secret");
    Ok(())
}

/// `keygate dev`.
pub async fn dev(dir: &Path, opts: crate::devenv::DevOptions) -> i32 {
    crate::tls::install_crypto_provider();
    let paths = match crate::devenv::init(dir, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let cfg = match crate::config::Config::load(&paths.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return crate::EXIT_CONFIG;
        }
    };
    crate::logging::init(cfg.log_format, "info");
    let issuer = match crate::devissuer::serve(&paths.dir, &cfg.tls).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let code = run_daemon(cfg, Some(paths)).await;
    issuer.abort();
    code
}

/// `keygate dev token`.
pub fn dev_token(dir: &Path, claims: &[String]) -> anyhow::Result<()> {
    let overrides = claims
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--claim {c:?} is not name=value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = crate::devissuer::token(dir, &overrides, now).map_err(|e| anyhow!(e))?;
    println!("{t}");
    Ok(())
}

/// Parses `name=value`, `name=@file`, `name=-` (at most one from stdin).
fn parse_fields(args: &[String]) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let mut out = HashMap::new();
    let mut stdin_used = false;
    for a in args {
        let (name, v) = a.split_once('=').ok_or_else(|| {
            anyhow!(
                "field {:?} is not name=value",
                a.split('=').next().unwrap_or("")
            )
        })?;
        let value = if v == "-" {
            if stdin_used {
                return Err(anyhow!("only one field can read from stdin"));
            }
            stdin_used = true;
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading stdin")?;
            if buf.ends_with(b"\n") {
                buf.pop();
            }
            buf
        } else if let Some(file) = v.strip_prefix('@') {
            std::fs::read(file)
                .with_context(|| format!("reading the value of {name} from {file}"))?
        } else {
            v.as_bytes().to_vec()
        };
        if out.insert(name.to_string(), value).is_some() {
            return Err(anyhow!("field {name} given twice"));
        }
    }
    Ok(out)
}

/// `keygate put`.
pub async fn put(
    conn: &Conn,
    path: &str,
    fields: &[String],
    cas: Option<u64>,
    max_versions: Option<u32>,
) -> anyhow::Result<()> {
    let fields = parse_fields(fields)?;
    let mut c = pb::secrets_client::SecretsClient::new(connect(conn).await?);
    let r = c
        .put(pb::PutSecretRequest {
            path: path.to_string(),
            fields,
            cas,
            max_versions,
            custom_metadata: Default::default(),
            replace_custom_metadata: false,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{} version {}", r.path, r.version);
    Ok(())
}

fn printable(v: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(v) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => {
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(v) })
        }
    }
}

/// `keygate get`.
pub async fn get(
    conn: &Conn,
    path: &str,
    version: Option<u64>,
    previous: bool,
    field: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let mut c = pb::secrets_client::SecretsClient::new(connect(conn).await?);
    let r = c
        .get(pb::GetSecretRequest {
            path: path.to_string(),
            version: version.unwrap_or(0),
            previous,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    if let Some(f) = field {
        let v = r
            .fields
            .get(f)
            .ok_or_else(|| anyhow!("secret {path} version {} has no field {f:?}", r.version))?;
        out.write_all(v)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    let mut names: Vec<&String> = r.fields.keys().collect();
    names.sort();
    if json {
        let fields: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|k| ((*k).clone(), printable(&r.fields[*k])))
            .collect();
        let doc = serde_json::json!({ "path": r.path, "version": r.version, "fields": fields });
        writeln!(out, "{doc}")?;
    } else {
        writeln!(out, "path     {}", r.path)?;
        writeln!(out, "version  {}", r.version)?;
        for k in names {
            let v = &r.fields[k];
            writeln!(out, "{k}={}", String::from_utf8_lossy(v))?;
        }
    }
    Ok(())
}

/// `keygate list`.
pub async fn list(conn: &Conn, prefix: &str, json: bool) -> anyhow::Result<()> {
    let mut c = pb::secrets_client::SecretsClient::new(connect(conn).await?);
    let r = c
        .list(pb::ListSecretsRequest {
            prefix: prefix.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    for s in r.secrets {
        if json {
            let doc = serde_json::json!({
                "path": s.path,
                "current_version": s.current_version,
                "oldest_version": s.oldest_version,
                "max_versions": s.max_versions,
                "versions": s.versions.len(),
            });
            writeln!(out, "{doc}")?;
        } else {
            writeln!(out, "{}\tversion {}", s.path, s.current_version)?;
        }
    }
    Ok(())
}

/// Which version operation.
pub enum VersionOp {
    /// Soft delete.
    Delete,
    /// Restore.
    Undelete,
    /// Erase.
    Destroy,
}

/// `keygate delete|undelete|destroy`.
pub async fn versions(
    conn: &Conn,
    op: VersionOp,
    path: &str,
    versions: Vec<u64>,
) -> anyhow::Result<()> {
    let mut c = pb::secrets_client::SecretsClient::new(connect(conn).await?);
    let req = pb::VersionsRequest {
        path: path.to_string(),
        versions,
    };
    let (verb, r) = match op {
        VersionOp::Delete => ("deleted", c.delete(req).await),
        VersionOp::Undelete => ("undeleted", c.undelete(req).await),
        VersionOp::Destroy => ("destroyed", c.destroy(req).await),
    };
    let m = r.map_err(status_error)?.into_inner();
    println!("{verb}: {} (current version {})", m.path, m.current_version);
    Ok(())
}

/// `keygate admin rotate-kek`.
pub async fn rotate_kek(conn: &Conn, new_kek: &Path) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let r = c
        .rotate_kek(pb::RotateKekRequest {
            new_kek_file: new_kek.display().to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "KEK rotated: {} -> {}, {} data keys rewrapped.\nSet kek.file = {:?} in the config before the next restart.",
        r.old_kek_id,
        r.new_kek_id,
        r.rewrapped,
        new_kek.display().to_string()
    );
    Ok(())
}

/// `keygate admin reload`.
pub async fn reload(conn: &Conn) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let r = c
        .reload_config(pb::ReloadConfigRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if r.needs_restart.is_empty() {
        println!("config reloaded");
    } else {
        println!(
            "config reloaded; these take effect after a restart: {}",
            r.needs_restart.join(", ")
        );
    }
    Ok(())
}

/// `keygate admin info`.
pub async fn info(conn: &Conn, json: bool) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let r = c
        .server_info(pb::ServerInfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let leader = (!r.leader.is_empty()).then_some(r.leader.clone());
    // the audit log's store and trust anchor (needs `admin` on `audit`; left out without it)
    let audit = c
        .audit_head(pb::AuditHeadRequest {})
        .await
        .ok()
        .map(|h| h.into_inner());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "version": r.version,
                "node_id": r.node_id,
                "backend": r.storage_backend,
                "schema_version": r.schema_version,
                "leader": leader,
                "kek_id": r.kek_id,
                "secrets": r.secrets,
                "audit_store": audit.as_ref().map(|a| a.store.clone()),
                "audit_anchor": audit.as_ref().map(|a| a.anchor_public_key.clone()),
                "audit_seq": audit.as_ref().map(|a| a.seq),
            })
        );
        return Ok(());
    }
    println!(
        "version         {}\nnode_id         {}\nstorage         {}\nschema_version  {}\nleader          {}\nkek_id          {}\nsecrets         {}",
        r.version,
        r.node_id,
        r.storage_backend,
        r.schema_version,
        leader.as_deref().unwrap_or("(none)"),
        r.kek_id,
        r.secrets
    );
    if let Some(a) = audit {
        println!(
            "audit_store     {}\naudit_anchor    {}\naudit_seq       {}",
            a.store, a.anchor_public_key, a.seq
        );
    }
    Ok(())
}

/// Where `keygate exchange` gets the platform token.
pub enum TokenSource {
    /// A file (`-` for stdin).
    File(std::path::PathBuf),
    /// An environment variable.
    Env(String),
    /// GitHub Actions' token endpoint.
    GithubActions {
        /// Audience to ask for.
        audience: Option<String>,
        /// Private CA of the endpoint (GHES).
        cacert: Option<std::path::PathBuf>,
    },
    /// GitHub Actions when its variables are set, else `KEYGATE_PLATFORM_TOKEN`.
    Detect {
        /// Audience for GitHub Actions.
        audience: Option<String>,
    },
}

async fn github_actions_token(
    audience: Option<String>,
    cacert: Option<&Path>,
) -> anyhow::Result<Zeroizing<String>> {
    let url = std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL")
        .map_err(|_| anyhow!("ACTIONS_ID_TOKEN_REQUEST_URL is not set: is the job's `permissions: id-token: write` set?"))?;
    let bearer = Zeroizing::new(
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
            .map_err(|_| anyhow!("ACTIONS_ID_TOKEN_REQUEST_TOKEN is not set"))?,
    );
    let audience = audience.ok_or_else(|| {
        anyhow!("--audience (or KEYGATE_AUDIENCE) is needed to request a GitHub Actions token")
    })?;
    let mut url = reqwest::Url::parse(&url).context("ACTIONS_ID_TOKEN_REQUEST_URL")?;
    url.query_pairs_mut().append_pair("audience", &audience);
    crate::tls::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .https_only(true);
    if let Some(ca) = cacert {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        b = b.tls_certs_only([reqwest::Certificate::from_pem(&pem)?]);
    }
    let resp = b
        .build()?
        .get(url)
        .header("authorization", format!("bearer {}", bearer.as_str()))
        .header("accept", "application/json")
        .send()
        .await
        .context("requesting the GitHub Actions OIDC token")?;
    if !resp.status().is_success() {
        return Err(anyhow!(
            "GitHub Actions token endpoint answered HTTP {}",
            resp.status()
        ));
    }
    let body = Zeroizing::new(
        resp.bytes()
            .await
            .context("GitHub Actions token response")?
            .to_vec(),
    );
    let v: serde_json::Value =
        serde_json::from_slice(&body).context("GitHub Actions token response is not JSON")?;
    let t = v
        .get("value")
        .and_then(|t| t.as_str())
        .ok_or_else(|| anyhow!("GitHub Actions token response has no value"))?;
    Ok(Zeroizing::new(t.to_string()))
}

/// Exchanges a platform token for a keygate credential of `role`.
pub(crate) async fn exchange_token(
    ch: crate::client::Failover,
    role: &str,
    token: &str,
) -> anyhow::Result<Zeroizing<String>> {
    let r = pb::token_exchange_client::TokenExchangeClient::new(ch)
        .exchange(pb::ExchangeRequest {
            subject_token: token.to_string(),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: role.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("exchange for role {role}: {}", status_error(s)))?
        .into_inner();
    Ok(Zeroizing::new(r.access_token.clone()))
}

/// The platform token from `source`.
pub(crate) async fn platform_token(source: TokenSource) -> anyhow::Result<Zeroizing<String>> {
    match source {
        TokenSource::File(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the token from stdin")?;
            Ok(Zeroizing::new(s.trim().to_string()))
        }
        TokenSource::File(p) => Ok(Zeroizing::new(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading the token from {}", p.display()))?
                .trim()
                .to_string(),
        )),
        TokenSource::Env(v) => Ok(Zeroizing::new(
            std::env::var(&v)
                .map_err(|_| anyhow!("environment variable {v} is not set"))?
                .trim()
                .to_string(),
        )),
        TokenSource::GithubActions { audience, cacert } => {
            github_actions_token(audience, cacert.as_deref()).await
        }
        TokenSource::Detect { audience } => {
            if std::env::var_os("ACTIONS_ID_TOKEN_REQUEST_URL").is_some() {
                github_actions_token(audience, None).await
            } else if let Ok(t) = std::env::var("KEYGATE_PLATFORM_TOKEN") {
                Ok(Zeroizing::new(t.trim().to_string()))
            } else {
                Err(anyhow!(
                    "no platform token: use --token-file, --token-env, --github-actions, or set KEYGATE_PLATFORM_TOKEN"
                ))
            }
        }
    }
}

/// `keygate exchange`.
pub async fn exchange(
    conn: &Conn,
    role: &str,
    scopes: &[String],
    ttl: Option<u64>,
    source: TokenSource,
    out: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let token = platform_token(source).await?;
    let mut c = pb::token_exchange_client::TokenExchangeClient::new(connect(conn).await?);
    let r = c
        .exchange(pb::ExchangeRequest {
            subject_token: token.to_string(),
            subject_token_type: "urn:ietf:params:oauth:token-type:id_token".into(),
            role: role.to_string(),
            scopes: scopes.to_vec(),
            ttl_seconds: ttl.unwrap_or(0),
            audience: String::new(),
            issuer: String::new(),
        })
        .await
        .map_err(|s| {
            // the caller learns a reason code only; the admin's explain shows the rest
            let hint = match s.message() {
                "no_matching_role"
                | "scope_not_allowed"
                | "invalid_token"
                | "invalid_audience"
                | "token_expired"
                | "token_not_yet_valid"
                | "token_too_old"
                | "untrusted_issuer"
                | "token_replayed" => {
                    "\n  an admin can see why: keygate admin explain --token FILE --role ROLE"
                }
                _ => "",
            };
            anyhow!("{}{hint}", status_error(s))
        })?
        .into_inner();
    let credential = Zeroizing::new(r.access_token.clone());
    match out {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("writing {}", path.display()))?;
            f.write_all(credential.as_bytes())?;
            eprintln!(
                "credential written to {} (lease {}, expires in {} s, scopes {})",
                path.display(),
                r.lease_id,
                r.expires_in,
                r.scopes.join(" ")
            );
        }
        None if json => {
            let doc = serde_json::json!({
                "access_token": credential.as_str(),
                "issued_token_type": r.issued_token_type,
                "token_type": r.token_type,
                "expires_in": r.expires_in,
                "scopes": r.scopes,
                "lease_id": r.lease_id,
            });
            println!("{doc}");
        }
        None => println!("{}", credential.as_str()),
    }
    Ok(())
}

/// `keygate admin explain`: exits non-zero when the token itself is refused, or when `role`
/// is named and does not match.
pub async fn explain(
    conn: &Conn,
    token: &Path,
    role: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let t = platform_token(TokenSource::File(token.to_path_buf())).await?;
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let r = c
        .explain(pb::ExplainRequest {
            token: t.to_string(),
            role: role.unwrap_or("").to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let roles: Vec<serde_json::Value> = r
            .roles
            .iter()
            .map(|m| {
                serde_json::json!({
                    "role": m.role,
                    "matched": m.matched,
                    "failed": m.failed.iter().map(|f| serde_json::json!({
                        "claim": f.claim,
                        "expected": f.expected,
                        "actual": if f.missing { serde_json::Value::Null } else { serde_json::Value::String(f.actual.clone()) },
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "token_valid": r.token_valid,
            "token_code": (!r.token_valid).then_some(&r.token_code),
            "token_error": (!r.token_valid).then_some(&r.token_error),
            "issuer": r.token_valid.then_some(&r.issuer),
            "roles": roles,
        });
        println!("{doc}");
    } else if !r.token_valid {
        println!("token refused: {} ({})", r.token_code, r.token_error);
    } else {
        println!("token valid, issuer {}", r.issuer);
        for m in &r.roles {
            if m.matched {
                println!("  {}: matches", m.role);
            } else {
                println!("  {}: no match", m.role);
                for f in &m.failed {
                    if f.missing {
                        println!("    - {}: missing; required {}", f.claim, f.expected);
                    } else {
                        println!(
                            "    - {}: is {}; required {}",
                            f.claim, f.actual, f.expected
                        );
                    }
                }
            }
        }
    }
    if !r.token_valid {
        return Err(anyhow!("token refused: {}", r.token_code));
    }
    if role.is_some() && !r.roles.iter().any(|m| m.matched) {
        return Err(anyhow!(
            "the token does not match role {}",
            role.unwrap_or("")
        ));
    }
    Ok(())
}

/// `keygate admin roles`.
pub async fn roles(conn: &Conn) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let r = c
        .list_roles(pb::ListRolesRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    for role in r.roles {
        println!(
            "{}\tissuer {}\tttl {}s (max {}s)\n  conditions: {}\n  scopes: {}",
            role.name,
            role.issuer,
            role.ttl_seconds,
            role.max_ttl_seconds,
            role.conditions.join("; "),
            role.scopes.join(" ")
        );
    }
    Ok(())
}

/// `keygate admin revoke` / `revoke-prefix`.
pub async fn revoke(conn: &Conn, what: &str, prefix: bool) -> anyhow::Result<()> {
    let mut c = pb::leases_client::LeasesClient::new(connect(conn).await?);
    let r = if prefix {
        c.revoke_prefix(pb::RevokePrefixRequest {
            prefix: what.to_string(),
        })
        .await
    } else {
        c.revoke(pb::RevokeLeaseRequest {
            lease_id: what.to_string(),
        })
        .await
    }
    .map_err(status_error)?
    .into_inner();
    println!("revoked {} lease(s)", r.revoked);
    Ok(())
}

/// `keygate admin rotate-signing-key`.
pub async fn rotate_signing_key(conn: &Conn) -> anyhow::Result<()> {
    let mut c = pb::admin_client::AdminClient::new(connect(conn).await?);
    let r = c
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "signing keys (oldest first; the last one signs): {}",
        r.kids.join(", ")
    );
    Ok(())
}
