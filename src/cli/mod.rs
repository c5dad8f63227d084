//! The command line: `keygate serve | dev | put | get | list | delete | undelete | destroy | admin`.
mod client;
mod commands;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// keygate: secrets and workload-identity broker.
#[derive(Parser, Debug)]
#[command(name = "keygate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the CLI reaches a daemon (the Vault CLI convention: flags or `KEYGATE_*` variables).
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Daemon address, e.g. https://127.0.0.1:8443.
    #[arg(
        long,
        env = "KEYGATE_ADDR",
        default_value = "https://127.0.0.1:8443",
        global = true
    )]
    pub addr: String,
    /// CA certificate that signed the daemon's certificate (PEM).
    #[arg(long, env = "KEYGATE_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Client certificate for mTLS (PEM).
    #[arg(long, env = "KEYGATE_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Client key for mTLS (PEM).
    #[arg(long, env = "KEYGATE_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a local dev environment (certificates, KEK, config) and run the daemon on it.
    Dev {
        /// Directory for everything; reused when it exists.
        #[arg(long, default_value = "./keygate-dev")]
        dir: PathBuf,
        /// gRPC listen address for a new dev config.
        #[arg(long, default_value = "127.0.0.1:8443")]
        grpc_listen: String,
        /// HTTPS listen address for a new dev config.
        #[arg(long, default_value = "127.0.0.1:8444")]
        http_listen: String,
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
        #[arg(long)]
        version: Option<u64>,
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
    /// Operator commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
        #[command(flatten)]
        conn: Conn,
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
    /// Show the daemon's version, node id, backend and KEK id.
    Info,
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    use commands::*;
    let result = match cli.command {
        Command::Serve { config } => return serve(&config).await,
        Command::Dev {
            dir,
            grpc_listen,
            http_listen,
        } => {
            return dev(
                &dir,
                crate::devenv::DevOptions {
                    grpc_listen,
                    http_listen,
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
            field,
            json,
            conn,
        } => get(&conn, &path, version, field.as_deref(), json).await,
        Command::List { prefix, json, conn } => list(&conn, &prefix, json).await,
        Command::Delete(a) => versions(&a.conn, VersionOp::Delete, &a.path, a.versions).await,
        Command::Undelete(a) => versions(&a.conn, VersionOp::Undelete, &a.path, a.versions).await,
        Command::Destroy(a) => versions(&a.conn, VersionOp::Destroy, &a.path, a.versions).await,
        Command::Admin { command, conn } => match command {
            AdminCommand::RotateKek { new_kek } => rotate_kek(&conn, &new_kek).await,
            AdminCommand::Reload => reload(&conn).await,
            AdminCommand::Info => info(&conn).await,
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
