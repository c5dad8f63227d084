//! The command line: `keygate serve | dev | put | get | list | delete | undelete | destroy |
//! exchange | db-creds | admin | audit | bench`.

mod audit;
mod backup;
mod commands;
mod db;
mod rotation;
pub(crate) mod run;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// keygate: secrets and workload-identity broker.
#[derive(Parser, Debug)]
#[command(name = "keygate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

pub use crate::client::Conn;

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a local dev environment (certificates, KEK, config, a dev OIDC issuer) and run the
    /// daemon on it. `keygate dev token` prints a token from the dev issuer.
    Dev {
        #[command(subcommand)]
        command: Option<DevCommand>,
        /// Directory for everything; reused when it exists.
        #[arg(long, default_value = "./keygate-dev")]
        dir: PathBuf,
        /// gRPC listen address for a new dev config.
        #[arg(long, default_value = "127.0.0.1:8443")]
        grpc_listen: String,
        /// HTTPS listen address for a new dev config.
        #[arg(long, default_value = "127.0.0.1:8444")]
        http_listen: String,
        /// Listen address of the dev OIDC issuer (for a new dev directory).
        #[arg(long, default_value = "127.0.0.1:8445")]
        issuer_listen: String,
        /// Listen address of the Vault-compatible HTTP API for a new dev config (`off`: none);
        /// env.sh exports VAULT_ADDR and VAULT_CACERT for it.
        #[arg(long, default_value = "127.0.0.1:8200")]
        vault_listen: String,
    },
    /// Write a new version of a secret: `keygate put PATH field=value field=@file field=-`.
    Put {
        /// Secret path.
        path: String,
        /// Fields: `name=value`, `name=@file` (value from a file) or `name=-` (from stdin).
        #[arg(required = true)]
        fields: Vec<String>,
        /// Only write if the current version is N (0: only if the secret does not exist).
        #[arg(long)]
        cas: Option<u64>,
        /// Versions to keep.
        #[arg(long)]
        max_versions: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Read a secret.
    Get {
        /// Secret path.
        path: String,
        /// Version (default: current).
        #[arg(long, conflicts_with = "previous")]
        version: Option<u64>,
        /// The version a rotation replaced, while its overlap lasts.
        #[arg(long)]
        previous: bool,
        /// Print only this field's value.
        #[arg(long)]
        field: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List secrets under a prefix (names and metadata, no values).
    List {
        /// Prefix ("" for all).
        #[arg(default_value = "")]
        prefix: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Soft-delete versions (default: current).
    Delete(VersionsArgs),
    /// Restore soft-deleted versions (default: current).
    Undelete(VersionsArgs),
    /// Erase versions for good (default: current).
    Destroy(VersionsArgs),
    /// Exchange a platform OIDC token for a keygate credential.
    Exchange {
        /// Role to ask for.
        #[arg(long)]
        role: String,
        /// Scopes to ask for (`read:prod/api/*`); default: everything the role allows.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime in seconds (capped by the role).
        #[arg(long)]
        ttl: Option<u64>,
        /// Read the platform token from this file.
        #[arg(long, conflicts_with_all = ["token_env", "github_actions"])]
        token_file: Option<PathBuf>,
        /// Read the platform token from this environment variable.
        #[arg(long, conflicts_with = "github_actions")]
        token_env: Option<String>,
        /// Request the token from GitHub Actions (ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN).
        #[arg(long)]
        github_actions: bool,
        /// Audience to request from GitHub Actions (keygate's audience for that issuer).
        #[arg(long, env = "KEYGATE_AUDIENCE")]
        audience: Option<String>,
        /// CA for the GitHub Actions token endpoint (GHES with a private CA).
        #[arg(long, env = "KEYGATE_ACTIONS_CACERT", hide = true)]
        actions_cacert: Option<PathBuf>,
        /// Write the credential to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a command with secrets in its environment (CI): exchanges the job's platform token,
    /// fetches the secrets, then replaces itself with the command (its signals and exit code).
    Run {
        /// Role to exchange the platform token for.
        #[arg(long)]
        role: Option<String>,
        /// NAME=PATH#FIELD: one variable from one field (repeatable).
        #[arg(long = "env")]
        envs: Vec<String>,
        /// PATH=PREFIX_: every field of PATH as PREFIX_FIELD (repeatable).
        #[arg(long = "env-prefix")]
        prefixes: Vec<String>,
        /// Read the platform token from this file (re-read each run).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Read the platform token from this environment variable.
        #[arg(long, conflicts_with = "token_file")]
        token_env: Option<String>,
        /// Audience to request from GitHub Actions (keygate's audience for that issuer).
        #[arg(long, env = "KEYGATE_AUDIENCE")]
        audience: Option<String>,
        /// CA for the GitHub Actions token endpoint (GHES with a private CA).
        #[arg(long, env = "KEYGATE_ACTIONS_CACERT", hide = true)]
        actions_cacert: Option<PathBuf>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// The sidecar agent: renders secrets into files, follows changes, renews its credential.
    Agent {
        /// agent.toml (default: KEYGATE_AGENT_CONFIG_B64 / KEYGATE_AGENT_CONFIG from the injector).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Render everything once and exit (init containers).
        #[arg(long)]
        once: bool,
        /// Copy this binary to PATH first (exec mode in Kubernetes).
        #[arg(long)]
        install_to: Option<PathBuf>,
        /// Supervise CMD with the secrets in its environment; restart it when they change.
        #[arg(long)]
        exec: bool,
        /// The command, after `--` (with --exec).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// The Kubernetes mutating admission webhook (HTTPS).
    Injector {
        /// injector.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// A short-lived database user of a `[[databases.roles]]` role (needs scope `db:ROLE`).
    DbCreds {
        /// Database role.
        role: String,
        /// Lifetime in seconds (default: the role's default TTL; capped by its max TTL).
        #[arg(long)]
        ttl: Option<u64>,
        /// Print one JSON object.
        #[arg(long, conflicts_with = "env")]
        json: bool,
        /// Print PGUSER=/PGPASSWORD= lines.
        #[arg(long)]
        env: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Benchmarks. `keygate bench audit`: durable audit appends with N concurrent clients.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Read and prove the audit log (works on the files; no daemon needed).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Operator commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Group commit: records/s and latency of durable appends.
    Audit {
        /// Concurrent clients (repeat for several runs).
        #[arg(long = "clients", default_values_t = [1usize, 64])]
        clients: Vec<usize>,
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Directory for the temporary log (its file system is what is measured).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Measure audited secret reads end to end (a daemon over TLS) instead of the writer.
        #[arg(long)]
        reads: bool,
        /// Where the records go: `files` (in --dir) or `postgres` (the table of --database).
        #[arg(long, default_value = "files", value_parser = ["files", "postgres"])]
        store: String,
        /// A scratch PostgreSQL database on loopback (`postgres://USER@127.0.0.1:5432/DB`):
        /// `--store postgres` writes bench chains (`bench-<pid>-<clients>`) into its
        /// `keygate_audit`; with --reads the daemon's store is a database created on that
        /// server for the run (and dropped after).
        #[arg(long)]
        database: Option<String>,
    },
    /// The crypto floor: what an exchange and a read cannot avoid, per second, 1 and all cores.
    Floor {
        /// Time per figure.
        #[arg(long, default_value = "2s")]
        duration: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Load: TokenExchange.Exchange with a platform token.
    Exchange(LoadArgs),
    /// Load: Secrets.Get of a 1 KiB secret with a credential.
    Read(LoadArgs),
    /// Load: one exchange per nine reads.
    Mixed(LoadArgs),
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// An existing daemon, or several replicas separated by commas (the load is spread over
    /// them) (default: start one with durable audit in a temporary directory).
    #[arg(long)]
    addr: Option<String>,
    /// CA of the daemon (with --addr).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Role to exchange for (with --addr).
    #[arg(long)]
    role: Option<String>,
    /// File with a platform token the role accepts (with --addr).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Secret the role reads (with --addr).
    #[arg(long)]
    path: Option<String>,
    /// Requests in flight (closed loop), or at most in flight (with --rate).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured time.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Warm-up before measuring.
    #[arg(long, default_value = "1s")]
    warmup: String,
    /// Open loop: offer this many requests per second (latency from intended start).
    #[arg(long)]
    rate: Option<f64>,
    /// Scale runs: extra roles in the started daemon's config.
    #[arg(long, default_value_t = 0)]
    roles: usize,
    /// Scale runs: extra 1 KiB secrets written before measuring.
    #[arg(long, default_value_t = 0)]
    secrets: usize,
    /// Seconds per floor figure measured in the same run.
    #[arg(long, default_value_t = 1.0)]
    floor_secs: f64,
    /// Put the daemon and this generator on disjoint cores (needs two; says so).
    #[arg(long)]
    pin: bool,
    /// With --addr: the daemon's pid, to report its CPU time per request.
    #[arg(long, requires = "addr")]
    daemon_pid: Option<u32>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

fn load_options(
    scenario: crate::bench::load::Scenario,
    a: LoadArgs,
) -> anyhow::Result<crate::bench::LoadOptions> {
    Ok(crate::bench::LoadOptions {
        scenario,
        addr: a.addr,
        cacert: a.cacert,
        role: a.role,
        token_file: a.token_file,
        path: a.path,
        concurrency: a.concurrency,
        duration: crate::bench::duration(&a.duration)
            .map_err(|e| anyhow::anyhow!("--duration {e}"))?,
        warmup: crate::bench::duration(&a.warmup).map_err(|e| anyhow::anyhow!("--warmup {e}"))?,
        rate: a.rate,
        roles: a.roles,
        secrets: a.secrets,
        floor_secs: a.floor_secs,
        json: a.json,
        pin: a.pin,
        daemon_pid: a.daemon_pid,
    })
}

/// The directory given, or the log a config names (clap makes sure there is exactly one).
async fn log_of(
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<crate::audit::cli::Log> {
    match (dir, config) {
        (Some(d), _) => Ok(crate::audit::cli::Log::Dir(d)),
        (None, Some(c)) => audit::open_config(&c).await,
        (None, None) => anyhow::bail!("give an audit directory or --config"),
    }
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Walk every chain (one per replica) of each directory or database: OK with counts, or
    /// the first bad sequence number (exit 1 if any chain is bad).
    Verify {
        /// Audit directories, one per replica.
        #[arg(required_unless_present = "config", num_args = 0..)]
        dirs: Vec<PathBuf>,
        /// Daemon configs (repeatable): verify the log each one's `[audit]` names, beside any
        /// DIR given; with `store = "postgres"`, every replica's chain in that database.
        #[arg(long)]
        config: Vec<PathBuf>,
        /// Ed25519 public key (base64) to check checkpoints with; default DIR/audit.pub, or the
        /// database's anchor. Only with a single directory or database.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// Print JSON: every chain with its directory, node ids and counts.
        #[arg(long)]
        json: bool,
    },
    /// Print records as JSON lines (`--follow` keeps reading new ones).
    Tail {
        /// The audit directory.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        dir: Option<PathBuf>,
        /// A daemon config: the log its `[audit]` names.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Records to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing new records.
        #[arg(long)]
        follow: bool,
        /// With a database store: this replica's chain (default: the config's node id).
        #[arg(long, requires = "config")]
        node: Option<String>,
    },
    /// Print every record since a time (RFC 3339) as JSON lines, for a SIEM.
    Export {
        /// The audit directory.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        dir: Option<PathBuf>,
        /// A daemon config: the log its `[audit]` names.
        #[arg(long)]
        config: Option<PathBuf>,
        /// RFC 3339 time, e.g. 2026-11-27T00:00:00Z.
        #[arg(long)]
        since: String,
        /// With a database store: only this replica's chain (default: every replica's).
        #[arg(long, requires = "config")]
        node: Option<String>,
    },
    /// Print (or write) the trust anchor `verify` checks a config's log with: the Ed25519
    /// public key (base64, the `audit.pub` format) of its files or of the database's keys.
    Anchor {
        /// The daemon config.
        #[arg(long)]
        config: PathBuf,
        /// Write it to this file instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The `hmac-sha256:` reference a record holds for a value (a token, a secret).
    Hash {
        /// The value (`-` reads stdin).
        value: String,
        /// The audit HMAC key file.
        #[arg(long, env = "KEYGATE_AUDIT_HMAC_KEY")]
        key: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum DevCommand {
    /// Print a GitHub-Actions-shaped token from the dev issuer.
    Token {
        /// The dev directory.
        #[arg(long, default_value = "./keygate-dev")]
        dir: PathBuf,
        /// Override a claim: `--claim ref=refs/heads/dev`.
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct VersionsArgs {
    /// Secret path.
    path: String,
    /// Versions, comma-separated.
    #[arg(long, value_delimiter = ',')]
    versions: Vec<u64>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Rewrap every data key under a new KEK (a file on the daemon's host, mode 0600).
    RotateKek {
        /// New KEK file, as a path on the daemon's host.
        #[arg(long)]
        new_kek: PathBuf,
    },
    /// Make the daemon re-read its config file.
    Reload,
    /// Show the daemon's version, node id, backend, schema version, leader and KEK id.
    Info {
        /// Print JSON (keys `version`, `node_id`, `backend`, `schema_version`, `leader` (null
        /// when none), `kek_id`, `secrets`).
        #[arg(long)]
        json: bool,
    },
    /// Explain which roles a platform token gets, and why not the others.
    Explain {
        /// File holding the token (`-` for stdin).
        #[arg(long, visible_alias = "token-file")]
        token: PathBuf,
        /// Only this role (then: exit 1 unless it matches).
        #[arg(long)]
        role: Option<String>,
        /// One JSON document: token_valid, token_code, issuer, roles[{role, matched, failed[{claim, expected, actual}]}].
        #[arg(long)]
        json: bool,
    },
    /// List the configured roles.
    Roles,
    /// Revoke one lease.
    Revoke {
        /// Lease id.
        lease_id: String,
    },
    /// Revoke every lease whose id starts with PREFIX (`ROLE/` or `ROLE/SUBJECT`).
    RevokePrefix {
        /// Lease id prefix.
        prefix: String,
    },
    /// Create a new credential signing key now.
    RotateSigningKey,
    /// Write a point-in-time copy of the daemon's whole store to a new file (mode 0600). Secret
    /// values stay sealed under the KEK: keep the KEK, apart, to restore.
    Backup {
        /// The file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into the empty store CONFIG names (sled or PostgreSQL), with no daemon
    /// running on it; the config's KEK must be the backup's.
    Restore {
        /// The config of the store to restore into.
        #[arg(long)]
        config: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
    },
    /// Rotate a secret now (or finish its interrupted rotation) per its rotation policy.
    Rotate {
        /// Secret path.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotation policies: status, set, delete.
    Rotation {
        #[command(subcommand)]
        command: RotationCommand,
    },
}

#[derive(Subcommand, Debug)]
enum RotationCommand {
    /// Policies and their state (step, versions, next run, last error).
    Status {
        /// Only paths starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add or replace a policy from a TOML file with the keys of a [[rotations]] table.
    Set {
        /// The policy file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove a policy set through the API.
    Delete {
        /// Secret path.
        path: String,
    },
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    use commands::*;
    let result = match cli.command {
        Command::Serve { config } => return serve(&config).await,
        Command::Dev {
            command: Some(DevCommand::Token { dir, claims }),
            ..
        } => dev_token(&dir, &claims),
        Command::Dev {
            command: None,
            dir,
            grpc_listen,
            http_listen,
            issuer_listen,
            vault_listen,
        } => {
            return dev(
                &dir,
                crate::devenv::DevOptions {
                    grpc_listen,
                    http_listen,
                    issuer_listen,
                    vault_listen: (!vault_listen.is_empty() && vault_listen != "off")
                        .then_some(vault_listen),
                },
            )
            .await
        }
        Command::Put {
            path,
            fields,
            cas,
            max_versions,
            conn,
        } => put(&conn, &path, &fields, cas, max_versions).await,
        Command::Get {
            path,
            version,
            previous,
            field,
            json,
            conn,
        } => get(&conn, &path, version, previous, field.as_deref(), json).await,
        Command::List { prefix, json, conn } => list(&conn, &prefix, json).await,
        Command::Delete(a) => versions(&a.conn, VersionOp::Delete, &a.path, a.versions).await,
        Command::Undelete(a) => versions(&a.conn, VersionOp::Undelete, &a.path, a.versions).await,
        Command::Destroy(a) => versions(&a.conn, VersionOp::Destroy, &a.path, a.versions).await,
        Command::Exchange {
            role,
            scopes,
            ttl,
            token_file,
            token_env,
            github_actions,
            audience,
            actions_cacert,
            out,
            json,
            conn,
        } => {
            let source = if github_actions {
                TokenSource::GithubActions {
                    audience,
                    cacert: actions_cacert,
                }
            } else if let Some(f) = token_file {
                TokenSource::File(f)
            } else if let Some(v) = token_env {
                TokenSource::Env(v)
            } else {
                TokenSource::Detect { audience }
            };
            exchange(&conn, &role, &scopes, ttl, source, out.as_deref(), json).await
        }
        Command::Run {
            role,
            envs,
            prefixes,
            token_file,
            token_env,
            audience,
            actions_cacert,
            cmd,
            conn,
        } => {
            let (code, e) = run::run(
                &conn,
                run::RunOptions {
                    role,
                    envs,
                    prefixes,
                    token_file,
                    token_env,
                    audience,
                    actions_cacert,
                    cmd,
                },
            )
            .await;
            eprintln!("keygate run: {e:#}");
            return code;
        }
        Command::Agent {
            config,
            once,
            install_to,
            exec,
            cmd,
        } => {
            crate::logging::init(crate::config::LogFormat::Json, "info");
            if exec && cmd.is_empty() {
                eprintln!("keygate agent: --exec needs a command after --");
                return crate::EXIT_CONFIG;
            }
            let config = match crate::agent::load_config(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("keygate agent: {e:#}");
                    return crate::EXIT_CONFIG;
                }
            };
            return crate::agent::run(crate::agent::Options {
                config,
                once,
                install_to,
                exec: if exec { cmd } else { Vec::new() },
            })
            .await;
        }
        Command::Injector { config } => return crate::injector::server::run(&config).await,
        Command::DbCreds {
            role,
            ttl,
            json,
            env,
            conn,
        } => {
            let out = if json {
                db::DbOutput::Json
            } else if env {
                db::DbOutput::Env
            } else {
                db::DbOutput::Text
            };
            db::db_creds(&conn, &role, ttl, out).await
        }
        Command::Bench {
            command:
                BenchCommand::Audit {
                    clients,
                    seconds,
                    dir,
                    reads,
                    store,
                    database,
                },
        } => {
            let in_db = store == "postgres";
            let table = match (in_db, reads, database.as_deref()) {
                (true, _, None) => Err(anyhow::anyhow!("--store postgres needs --database URL")),
                (true, false, Some(url)) => audit::bench_table(url).await.map(Some),
                _ => Ok(None),
            };
            let mut r = Ok(());
            for n in clients {
                let d = std::time::Duration::from_secs(seconds);
                let line = match (&table, reads) {
                    (Err(e), _) => Err(anyhow::anyhow!("{e:#}")),
                    (Ok(_), true) => {
                        crate::bench::audit_reads::run(&dir, n, d, database.as_deref(), in_db).await
                    }
                    (Ok(t), false) => crate::audit::bench::run(&dir, n, d, t.clone()).await,
                };
                match line {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            r
        }
        Command::Bench {
            command: BenchCommand::Floor { duration, json },
        } => crate::bench::duration(&duration)
            .map_err(|e| anyhow::anyhow!("--duration {e}"))
            .and_then(|d| crate::bench::run_floor(d, json)),
        Command::Bench {
            command: BenchCommand::Exchange(a),
        } => match load_options(crate::bench::load::Scenario::Exchange, a) {
            Ok(o) => crate::bench::run_load(o).await,
            Err(e) => Err(e),
        },
        Command::Bench {
            command: BenchCommand::Read(a),
        } => match load_options(crate::bench::load::Scenario::Read, a) {
            Ok(o) => crate::bench::run_load(o).await,
            Err(e) => Err(e),
        },
        Command::Bench {
            command: BenchCommand::Mixed(a),
        } => match load_options(crate::bench::load::Scenario::Mixed, a) {
            Ok(o) => crate::bench::run_load(o).await,
            Err(e) => Err(e),
        },
        Command::Audit { command } => match command {
            AuditCommand::Verify {
                mut dirs,
                config,
                pubkey,
                json,
            } => {
                let mut dbs = Vec::new();
                for c in &config {
                    match audit::open_config(c).await {
                        Ok(crate::audit::cli::Log::Dir(d)) => dirs.push(d),
                        Ok(crate::audit::cli::Log::Db(db)) => dbs.push(db),
                        Err(e) => {
                            eprintln!("error: {e:#}");
                            return 64;
                        }
                    }
                }
                return crate::audit::cli::verify(&dirs, &dbs, pubkey.as_deref(), json).await;
            }
            AuditCommand::Tail {
                dir,
                config,
                lines,
                follow,
                node,
            } => match log_of(dir, config).await {
                Ok(crate::audit::cli::Log::Dir(d)) => {
                    crate::audit::cli::tail(&d, lines, follow).await
                }
                Ok(crate::audit::cli::Log::Db(db)) => {
                    let node = node.unwrap_or_else(|| db.node.clone());
                    crate::audit::cli::tail_db(&db, &node, lines, follow).await
                }
                Err(e) => Err(e),
            },
            AuditCommand::Export {
                dir,
                config,
                since,
                node,
            } => match log_of(dir, config).await {
                Ok(crate::audit::cli::Log::Dir(d)) => crate::audit::cli::export(&d, &since),
                Ok(crate::audit::cli::Log::Db(db)) => {
                    crate::audit::cli::export_db(&db, node.as_deref(), &since).await
                }
                Err(e) => Err(e),
            },
            AuditCommand::Anchor { config, out } => audit::anchor(&config, out.as_deref()).await,
            AuditCommand::Hash { value, key } => crate::audit::cli::hash(&value, &key),
        },
        Command::Admin { command, conn } => match command {
            AdminCommand::RotateKek { new_kek } => rotate_kek(&conn, &new_kek).await,
            AdminCommand::Reload => reload(&conn).await,
            AdminCommand::Info { json } => info(&conn, json).await,
            AdminCommand::Explain { token, role, json } => {
                explain(&conn, &token, role.as_deref(), json).await
            }
            AdminCommand::Roles => roles(&conn).await,
            AdminCommand::Revoke { lease_id } => revoke(&conn, &lease_id, false).await,
            AdminCommand::RevokePrefix { prefix } => revoke(&conn, &prefix, true).await,
            AdminCommand::RotateSigningKey => rotate_signing_key(&conn).await,
            AdminCommand::Backup { out } => backup::backup(&conn, &out).await,
            AdminCommand::Restore { config, from } => backup::restore(&config, &from).await,
            AdminCommand::Rotate { path, json } => rotation::rotate(&conn, &path, json).await,
            AdminCommand::Rotation { command } => match command {
                RotationCommand::Status { prefix, json } => {
                    rotation::status(&conn, &prefix, json).await
                }
                RotationCommand::Set { file } => rotation::set(&conn, &file).await,
                RotationCommand::Delete { path } => rotation::delete(&conn, &path).await,
            },
        },
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
