//! The daemon's configuration: one TOML file, parsed into typed settings.
//!
//! Parse, don't validate: raw TOML with unknown keys refused → [`Config`], whose constructor checks
//! every file it names (certificates parse, the KEK file is private). Every error names the key
//! and, where known, the line. `config/keygate.toml` documents every key.
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config problem. Exit code 64 when it stops a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// Dotted key, where known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error in {}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ", line {l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ", key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    tls: RawTls,
    #[serde(default)]
    storage: RawStorage,
    kek: RawKek,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    grpc_listen: String,
    http_listen: Option<String>,
    node_id: Option<String>,
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: u32,
    #[serde(default = "default_shutdown_grace")]
    shutdown_grace_secs: u32,
}

fn default_max_message_bytes() -> u32 {
    4 * 1024 * 1024
}

fn default_shutdown_grace() -> u32 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default = "default_backend")]
    backend: String,
    #[serde(default = "default_data_path")]
    path: PathBuf,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            path: default_data_path(),
        }
    }
}

fn default_backend() -> String {
    "sled".into()
}

fn default_data_path() -> PathBuf {
    PathBuf::from("data")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKek {
    file: Option<PathBuf>,
    env: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    subjects: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// gRPC (TLS) listen address.
    pub grpc_listen: SocketAddr,
    /// HTTPS side listener for health and metrics.
    pub http_listen: Option<SocketAddr>,
    /// This replica's id (audit records, metrics).
    pub node_id: String,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// How long in-flight requests get to finish on SIGTERM.
    pub shutdown_grace: Duration,
}

/// TLS material locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Server private key (PEM).
    pub key_file: PathBuf,
    /// CA for client certificates; enables mTLS.
    pub client_ca_file: Option<PathBuf>,
}

/// Where secrets are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// Embedded sled database in a directory.
    Sled {
        /// Directory.
        path: PathBuf,
    },
}

/// Where the key-encryption key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekSource {
    /// A file, mode 0600 or stricter.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Listeners.
    pub server: ServerConfig,
    /// TLS.
    pub tls: TlsConfig,
    /// Store.
    pub storage: StorageConfig,
    /// KEK source.
    pub kek: KekSource,
    /// Client-certificate subjects allowed to administer (normalised).
    pub admin_subjects: Vec<String>,
    /// Log format.
    pub log_format: LogFormat,
}

/// Normalises a distinguished name for comparison: `CN=a, O=b` → `CN=a,O=b`.
pub fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|p| {
            let p = p.trim();
            match p.split_once('=') {
                Some((k, v)) => format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()),
                None => p.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    /// An error for `table.key`, with the line where the key is set if it can be found.
    fn err(&self, table: &str, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: find_line(self.text, table, key),
            key: Some(format!("{table}.{key}")),
            message: message.into(),
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or_else(|| Path::new(".")).join(p)
        }
    }
}

/// The 1-based line where `key` is set inside `[table]`.
fn find_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = h.trim().to_string();
            continue;
        }
        if current == table {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

/// The dotted key set on a given 1-based line (for parser errors that only give a position).
fn key_at_line(text: &str, line_no: usize) -> Option<String> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = h.trim().trim_matches(['[', ']']).to_string();
        }
        if i + 1 == line_no {
            let (k, _) = l.split_once('=')?;
            let k = k.trim();
            return Some(if current.is_empty() {
                k.to_string()
            } else {
                format!("{current}.{k}")
            });
        }
    }
    None
}

fn parse_addr(ctx: &Ctx<'_>, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        ctx.err(
            "server",
            key,
            format!("{v:?} is not an address like 127.0.0.1:8443"),
        )
    })
}

impl Config {
    /// Reads and checks the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks config text; `path` resolves relative paths and names the file.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let key = line.and_then(|l| key_at_line(text, l));
            ConfigError {
                file: path.to_path_buf(),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        })?;
        let ctx = Ctx { file: path, text };

        let grpc_listen = parse_addr(&ctx, "grpc_listen", &raw.server.grpc_listen)?;
        let http_listen = raw
            .server
            .http_listen
            .as_deref()
            .map(|v| parse_addr(&ctx, "http_listen", v))
            .transpose()?;
        if raw.server.max_message_bytes < 1024 || raw.server.max_message_bytes > 64 * 1024 * 1024 {
            return Err(ctx.err(
                "server",
                "max_message_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        let node_id = match raw.server.node_id {
            Some(n) if n.trim().is_empty() => {
                return Err(ctx.err("server", "node_id", "must not be empty"))
            }
            Some(n) => n,
            None => "keygate-1".to_string(),
        };

        let tls = TlsConfig {
            cert_file: ctx.resolve(&raw.tls.cert_file),
            key_file: ctx.resolve(&raw.tls.key_file),
            client_ca_file: raw.tls.client_ca_file.as_deref().map(|p| ctx.resolve(p)),
        };
        crate::tls::load_certs(&tls.cert_file).map_err(|e| ctx.err("tls", "cert_file", e))?;
        crate::tls::load_key(&tls.key_file).map_err(|e| ctx.err("tls", "key_file", e))?;
        if let Some(ca) = &tls.client_ca_file {
            crate::tls::load_certs(ca).map_err(|e| ctx.err("tls", "client_ca_file", e))?;
        }

        let storage = match raw.storage.backend.as_str() {
            "sled" => StorageConfig::Sled {
                path: ctx.resolve(&raw.storage.path),
            },
            other => {
                return Err(ctx.err(
                    "storage",
                    "backend",
                    format!("unknown backend {other:?}; supported: \"sled\""),
                ))
            }
        };

        let kek = match (raw.kek.file, raw.kek.env) {
            (Some(f), None) => {
                let f = ctx.resolve(&f);
                crate::secrets::kek::load_file(&f).map_err(|e| ctx.err("kek", "file", e))?;
                KekSource::File(f)
            }
            (None, Some(v)) => {
                crate::secrets::kek::load_env(&v).map_err(|e| ctx.err("kek", "env", e))?;
                KekSource::Env(v)
            }
            _ => {
                return Err(ConfigError {
                    file: path.to_path_buf(),
                    line: None,
                    key: Some("kek".into()),
                    message: "set exactly one of kek.file or kek.env".into(),
                })
            }
        };

        let admin_subjects: Vec<String> =
            raw.admin.subjects.iter().map(|s| normalize_dn(s)).collect();
        if admin_subjects.iter().any(|s| s.is_empty()) {
            return Err(ctx.err("admin", "subjects", "an empty subject is not allowed"));
        }
        if !admin_subjects.is_empty() && tls.client_ca_file.is_none() {
            return Err(ctx.err(
                "admin",
                "subjects",
                "admin subjects need client certificates: set tls.client_ca_file",
            ));
        }

        Ok(Self {
            path: path.to_path_buf(),
            server: ServerConfig {
                grpc_listen,
                http_listen,
                node_id,
                max_message_bytes: raw.server.max_message_bytes as usize,
                shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs as u64),
            },
            tls,
            storage,
            kek,
            admin_subjects,
            log_format: raw.log.format,
        })
    }

    /// Settings that differ from `other` and only apply after a restart.
    pub fn restart_needed(&self, other: &Config) -> Vec<String> {
        let mut v = Vec::new();
        if self.server != other.server {
            v.push("server".to_string());
        }
        if self.tls != other.tls {
            v.push("tls".to_string());
        }
        if self.storage != other.storage {
            v.push("storage".to_string());
        }
        if self.kek != other.kek {
            v.push("kek".to_string());
        }
        if self.log_format != other.log_format {
            v.push("log.format".to_string());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_errors_name_key_and_line() {
        let text = "[server]\ngrpc_listen = \"127.0.0.1:1\"\nbogus = 1\n";
        let e = Config::parse(Path::new("/x/k.toml"), text).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");

        let text = "[server]\ngrpc_listen = 5\n";
        let e = Config::parse(Path::new("/x/k.toml"), text).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert_eq!(e.key.as_deref(), Some("server.grpc_listen"), "{e}");
    }

    #[test]
    fn dn_normalisation() {
        assert_eq!(normalize_dn("cn = a, O=b c"), "CN=a,O=b c");
    }
}
