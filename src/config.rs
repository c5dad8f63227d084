//! The daemon's configuration: one TOML file, parsed into typed settings.
//!
//! Parse, don't validate: raw TOML with unknown keys refused → [`Config`], whose constructor checks
//! every file it names (certificates parse, the KEK file is private). Every error names the key
//! and, where known, the line. `config/keygate.toml` documents every key.
use crate::identity::issuer::{self, IssuerConfig, KeySource};
use crate::policy::scope::Scope;
use crate::policy::{Matcher, Platform, Role};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::config_error::ConfigError;
pub(crate) use crate::config_error::{key_at_line, Ctx};

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
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    roles: Vec<RawRole>,
    #[serde(default)]
    databases: Vec<crate::database::config::RawDatabase>,
    #[serde(default)]
    rotations: Vec<crate::rotation::config::RawRotation>,
    #[serde(default)]
    limits: RawLimits,
    vault_api: Option<RawVaultApi>,
}

/// `[vault_api]`: the Vault-compatible HTTP API (docs/vault-compat.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultApi {
    listen: String,
    #[serde(default = "default_kv_mount")]
    kv_mount: String,
    #[serde(default = "default_kv_version")]
    kv_version: u8,
}

fn default_kv_mount() -> String {
    "secret".into()
}
fn default_kv_version() -> u8 {
    2
}

/// The Vault-compatible HTTP API's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultApiConfig {
    /// Its HTTPS listener (the gRPC listener's certificates and client-certificate rules).
    pub listen: SocketAddr,
    /// The KV mount: `<kv_mount>/data/prod/api` is keygate's `prod/api`.
    pub kv_mount: String,
    /// KV engine version the mount speaks: 2 (versioned) or 1.
    pub kv_version: u8,
}

/// `[limits]`: every field a caller controls (docs/operations.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_path_bytes: usize,
    max_role_bytes: usize,
    max_scopes: usize,
    max_scope_bytes: usize,
    max_token_bytes: usize,
    max_fields: usize,
    max_field_name_bytes: usize,
    max_field_value_bytes: usize,
    max_metadata_entries: usize,
    max_metadata_bytes: usize,
    max_list_items: usize,
    max_string_bytes: usize,
    audit_string_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        let d = crate::api::limits::Limits::default();
        Self {
            max_path_bytes: d.max_path_bytes,
            max_role_bytes: d.max_role_bytes,
            max_scopes: d.max_scopes,
            max_scope_bytes: d.max_scope_bytes,
            max_token_bytes: d.max_token_bytes,
            max_fields: d.max_fields,
            max_field_name_bytes: d.max_field_name_bytes,
            max_field_value_bytes: d.max_field_value_bytes,
            max_metadata_entries: d.max_metadata_entries,
            max_metadata_bytes: d.max_metadata_bytes,
            max_list_items: d.max_list_items,
            max_string_bytes: d.max_string_bytes,
            audit_string_bytes: d.audit_string_bytes,
        }
    }
}

fn parse_limits(
    ctx: &Ctx<'_>,
    r: RawLimits,
    max_message_bytes: usize,
) -> Result<crate::api::limits::Limits, ConfigError> {
    let range = |key: &str, v: usize, lo: usize, hi: usize| {
        if v < lo || v > hi {
            Err(ctx.err("limits", key, format!("must be between {lo} and {hi}")))
        } else {
            Ok(v)
        }
    };
    let token_max = crate::identity::MAX_TOKEN_BYTES;
    Ok(crate::api::limits::Limits {
        max_path_bytes: range("max_path_bytes", r.max_path_bytes, 16, 4096)?,
        max_role_bytes: range("max_role_bytes", r.max_role_bytes, 16, 1024)?,
        max_scopes: range("max_scopes", r.max_scopes, 1, 1024)?,
        max_scope_bytes: range("max_scope_bytes", r.max_scope_bytes, 16, 8192)?,
        max_token_bytes: range("max_token_bytes", r.max_token_bytes, 1024, token_max)?,
        max_fields: range("max_fields", r.max_fields, 1, 10_000)?,
        max_field_name_bytes: range("max_field_name_bytes", r.max_field_name_bytes, 8, 4096)?,
        max_field_value_bytes: range(
            "max_field_value_bytes",
            r.max_field_value_bytes,
            16,
            max_message_bytes,
        )?,
        max_metadata_entries: range("max_metadata_entries", r.max_metadata_entries, 0, 10_000)?,
        max_metadata_bytes: range("max_metadata_bytes", r.max_metadata_bytes, 8, 65_536)?,
        max_list_items: range("max_list_items", r.max_list_items, 1, 100_000)?,
        max_string_bytes: range("max_string_bytes", r.max_string_bytes, 64, 65_536)?,
        audit_string_bytes: range("audit_string_bytes", r.audit_string_bytes, 32, 4096)?,
        max_message_bytes,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    url: Option<String>,
    audience: Option<String>,
    #[serde(default = "default_signing_rotation")]
    signing_key_rotation_secs: u64,
    #[serde(default)]
    dangerous_allow_http_loopback_issuers: bool,
    #[serde(default = "default_max_replay_entries")]
    max_replay_entries: usize,
}

fn default_max_replay_entries() -> usize {
    crate::identity::replay::DEFAULT_MAX_ENTRIES
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    store: Option<String>,
    #[serde(default = "default_audit_dir")]
    dir: PathBuf,
    signing_key_file: Option<PathBuf>,
    hmac_key_file: Option<PathBuf>,
    #[serde(default = "default_audit_head")]
    head_file: PathBuf,
    #[serde(default = "default_segment_bytes")]
    segment_bytes: u64,
    #[serde(default = "default_checkpoint_every")]
    checkpoint_every: u64,
    #[serde(default = "default_checkpoint_secs")]
    checkpoint_interval_secs: u64,
    #[serde(default = "default_write_deadline")]
    write_deadline_ms: u64,
    sink: Option<String>,
    #[serde(default = "default_sink_queue")]
    sink_queue: usize,
    #[serde(default = "default_checkpoint_key_rotation")]
    checkpoint_key_rotation_secs: u64,
}

fn default_checkpoint_key_rotation() -> u64 {
    30 * 86_400
}

fn default_sink_queue() -> usize {
    10_000
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            store: None,
            dir: default_audit_dir(),
            signing_key_file: None,
            hmac_key_file: None,
            head_file: default_audit_head(),
            segment_bytes: default_segment_bytes(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval_secs: default_checkpoint_secs(),
            write_deadline_ms: default_write_deadline(),
            sink: None,
            sink_queue: default_sink_queue(),
            checkpoint_key_rotation_secs: default_checkpoint_key_rotation(),
        }
    }
}

fn default_audit_dir() -> PathBuf {
    PathBuf::from("audit")
}
fn default_audit_head() -> PathBuf {
    PathBuf::from("audit.head")
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_secs() -> u64 {
    60
}
fn default_write_deadline() -> u64 {
    2000
}

/// Where the audit records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditStore {
    /// Segment files in `dir` (the default).
    Files,
    /// The `keygate_audit` table of the PostgreSQL storage backend: a replica keeps nothing
    /// local.
    Postgres,
}

/// Where the audit signing (anchor) and HMAC keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditKeySource {
    /// Key files (created if missing, mode 0600): the Ed25519 checkpoint anchor key and the
    /// HMAC key for value references.
    Files {
        /// The anchor signing key.
        signing: PathBuf,
        /// The HMAC key.
        hmac: PathBuf,
    },
    /// The store, sealed under the KEK like every secret (`_sys/audit-keys`), shared by all
    /// replicas.
    Store,
}

/// The audit log's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Where the records are kept.
    pub store: AuditStore,
    /// Segment directory (file store).
    pub dir: PathBuf,
    /// Where the keys come from.
    pub keys: AuditKeySource,
    /// The durable head of the log (`seq chain-hash`), kept outside `dir`.
    pub head_file: PathBuf,
    /// Segment size.
    pub segment_bytes: u64,
    /// Checkpoint every N records.
    pub checkpoint_every: u64,
    /// …or every this many seconds.
    pub checkpoint_interval_secs: u64,
    /// How long a request waits for its record.
    pub write_deadline_ms: u64,
    /// Optional second sink.
    pub sink: Option<crate::audit::writer::Sink>,
    /// Its queue length.
    pub sink_queue: usize,
    /// How often the checkpoint signing key rotates.
    pub checkpoint_key_rotation_secs: u64,
}

impl Default for RawIdentity {
    fn default() -> Self {
        Self {
            url: None,
            audience: None,
            signing_key_rotation_secs: default_signing_rotation(),
            dangerous_allow_http_loopback_issuers: false,
            max_replay_entries: default_max_replay_entries(),
        }
    }
}

fn default_signing_rotation() -> u64 {
    86_400
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    name: String,
    #[serde(default = "default_platform")]
    preset: Platform,
    issuer: Option<String>,
    discovery_url: Option<String>,
    jwks_url: Option<String>,
    jwks_file: Option<PathBuf>,
    algorithms: Option<Vec<String>>,
    audience: String,
    #[serde(default)]
    allow_extra_audiences: bool,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    max_token_age_secs: Option<u64>,
    #[serde(default = "default_max_token_lifetime")]
    max_token_lifetime_secs: u64,
    #[serde(default)]
    refuse_jti_replay: bool,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_cache_min")]
    cache_min_secs: u64,
    #[serde(default = "default_cache_max")]
    cache_max_secs: u64,
    #[serde(default = "default_refetch")]
    unknown_kid_refetch_secs: u64,
    #[serde(default = "default_fetch_timeout")]
    fetch_timeout_secs: u64,
    #[serde(default = "default_max_response")]
    max_response_bytes: usize,
}

fn default_platform() -> Platform {
    Platform::Generic
}
fn default_leeway() -> u64 {
    30
}
fn default_cache_min() -> u64 {
    60
}
fn default_cache_max() -> u64 {
    3600
}
fn default_refetch() -> u64 {
    30
}
fn default_fetch_timeout() -> u64 {
    5
}
fn default_max_response() -> usize {
    256 * 1024
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: String,
    issuer: String,
    bound_subject: Option<Matcher>,
    #[serde(default)]
    claims: BTreeMap<String, Matcher>,
    scopes: Vec<String>,
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
    #[serde(default = "default_max_ttl")]
    max_ttl_secs: u64,
    #[serde(default)]
    cap_at_token_expiry: bool,
    #[serde(default)]
    allow_pull_request_target: bool,
}

fn default_max_token_lifetime() -> u64 {
    86_400
}

fn default_ttl() -> u64 {
    900
}
fn default_max_ttl() -> u64 {
    3600
}

/// Credential and issuer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// keygate's own issuer URL (`iss` of credentials; discovery served under it).
    pub url: String,
    /// `aud` of credentials.
    pub audience: String,
    /// How often credential signing keys rotate.
    pub signing_key_rotation_secs: u64,
    /// Allow `http://` issuer URLs to loopback addresses (tests and dev only).
    pub dangerous_allow_http_loopback_issuers: bool,
    /// Most single-use (`refuse_jti_replay`) markers held at once.
    pub max_replay_entries: usize,
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Roles.
    pub roles: Vec<Role>,
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
    #[serde(default = "default_handshake_timeout")]
    handshake_timeout_secs: u64,
    #[serde(default = "default_idle_timeout")]
    idle_timeout_secs: u64,
    #[serde(default = "default_keepalive_interval")]
    keepalive_interval_secs: u64,
    #[serde(default = "default_keepalive_timeout")]
    keepalive_timeout_secs: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_concurrent_streams")]
    max_concurrent_streams: u32,
}

fn default_handshake_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_keepalive_interval() -> u64 {
    60
}
fn default_keepalive_timeout() -> u64 {
    20
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_concurrent_streams() -> u32 {
    128
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
    path: Option<PathBuf>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    tls: Option<String>,
    ca_file: Option<PathBuf>,
    pool_size: Option<usize>,
    connect_timeout: Option<String>,
    statement_timeout: Option<String>,
    operation_timeout: Option<String>,
    change_log_retention: Option<String>,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            path: None,
            url: None,
            password_file: None,
            tls: None,
            ca_file: None,
            pool_size: None,
            connect_timeout: None,
            statement_timeout: None,
            operation_timeout: None,
            change_log_retention: None,
        }
    }
}

fn storage_config(raw: RawStorage, ctx: &Ctx<'_>) -> Result<StorageConfig, ConfigError> {
    let pg_only = [
        ("url", raw.url.is_some()),
        ("password_file", raw.password_file.is_some()),
        ("tls", raw.tls.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("pool_size", raw.pool_size.is_some()),
        ("connect_timeout", raw.connect_timeout.is_some()),
        ("statement_timeout", raw.statement_timeout.is_some()),
        ("operation_timeout", raw.operation_timeout.is_some()),
        ("change_log_retention", raw.change_log_retention.is_some()),
    ];
    match raw.backend.as_str() {
        "sled" => {
            if let Some((key, _)) = pg_only.iter().find(|(_, set)| *set) {
                return Err(ctx.err("storage", key, "only for backend = \"postgres\""));
            }
            Ok(StorageConfig::Sled {
                path: ctx.resolve(&raw.path.unwrap_or_else(default_data_path)),
            })
        }
        "postgres" => {
            if raw.path.is_some() {
                return Err(ctx.err(
                    "storage",
                    "path",
                    "only for backend = \"sled\" (PostgreSQL keeps the data in the database)",
                ));
            }
            let Some(url) = raw.url else {
                return Err(ctx.err(
                    "storage",
                    "url",
                    "backend = \"postgres\" needs url = \"postgres://USER@HOST:PORT/DB\"",
                ));
            };
            // defaults: a call fails within 5 s when the database is gone or does not answer
            // (every operation is bounded by operation_timeout, 4 s)
            let secs = |key: &str,
                        v: Option<String>,
                        default: &str,
                        range: (u64, u64, &str)|
             -> Result<std::time::Duration, ConfigError> {
                let s = crate::duration::parse_duration(v.as_deref().unwrap_or(default))
                    .map_err(|e| ctx.err("storage", key, e))?;
                if !(range.0..=range.1).contains(&s) {
                    return Err(ctx.err("storage", key, range.2));
                }
                Ok(std::time::Duration::from_secs(s))
            };
            let short = (1, 300, "must be between 1s and 5m");
            let connect_timeout = secs("connect_timeout", raw.connect_timeout, "2s", short)?;
            let statement_timeout = secs("statement_timeout", raw.statement_timeout, "3s", short)?;
            let operation_timeout = secs("operation_timeout", raw.operation_timeout, "4s", short)?;
            let change_log_retention = secs(
                "change_log_retention",
                raw.change_log_retention,
                "1h",
                (60, 7 * 86_400, "must be between 1m and 7d"),
            )?;
            let password_file = raw.password_file.map(|p| ctx.resolve(&p));
            if let Some(p) = &password_file {
                std::fs::metadata(p).map_err(|e| {
                    ctx.err("storage", "password_file", format!("{}: {e}", p.display()))
                })?;
            }
            let ca_file = raw.ca_file.map(|p| ctx.resolve(&p));
            if let Some(p) = &ca_file {
                crate::tls::load_certs(p).map_err(|e| ctx.err("storage", "ca_file", e))?;
            }
            use crate::storage::postgres::config::{PgConfig, PgConfigError as E};
            PgConfig::check(
                &url,
                password_file,
                raw.tls.as_deref().unwrap_or("verify-full"),
                ca_file,
                raw.pool_size.unwrap_or(16),
                connect_timeout,
                statement_timeout,
            )
            .map(|c| {
                StorageConfig::Postgres(
                    c.with_operation_timeout(operation_timeout)
                        .with_change_log_retention(change_log_retention),
                )
            })
            .map_err(|e| {
                let key = match e {
                    E::Url(_) | E::PasswordInUrl | E::NoUser | E::NoDatabase => "url",
                    E::PlainToRemote | E::TlsMode(_) => "tls",
                    E::CaWithoutTls => "ca_file",
                    E::PoolSize => "pool_size",
                };
                ctx.err("storage", key, e)
            })
        }
        other => Err(ctx.err(
            "storage",
            "backend",
            format!("unknown backend {other:?}; supported: \"sled\", \"postgres\""),
        )),
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
    /// Handshake, idle and connection-count limits of the gRPC listener.
    pub connections: ConnLimits,
    /// HTTP/2 PING interval on an open connection (a peer that does not answer within
    /// `keepalive_timeout` is dropped).
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered.
    pub keepalive_timeout: Duration,
    /// Concurrent streams per connection.
    pub max_concurrent_streams: u32,
}

pub use crate::tls::TlsConfig;

/// Connection limits (`[server]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// TLS handshake deadline from accept.
    pub handshake_timeout: std::time::Duration,
    /// No bytes in either direction for this long closes the connection.
    pub idle_timeout: std::time::Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Where secrets are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// Embedded sled database in a directory.
    Sled {
        /// Directory.
        path: PathBuf,
    },
    /// PostgreSQL, shared by every replica.
    Postgres(crate::storage::postgres::config::PgConfig),
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
    /// Issuers, roles and credential settings.
    pub identity: IdentityConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Databases keygate administers.
    pub databases: Vec<crate::database::config::DatabaseConfig>,
    /// Rotation policies.
    pub rotations: Vec<crate::rotation::config::Policy>,
    /// Limits on caller-controlled fields (`[limits]`).
    pub limits: crate::api::limits::Limits,
    /// The Vault-compatible HTTP API, when `[vault_api]` is set.
    pub vault_api: Option<VaultApiConfig>,
}

pub use crate::tls::normalize_dn;

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
        for (key, v, lo, hi) in [
            (
                "handshake_timeout_secs",
                raw.server.handshake_timeout_secs,
                1,
                300,
            ),
            ("idle_timeout_secs", raw.server.idle_timeout_secs, 1, 86_400),
            (
                "keepalive_interval_secs",
                raw.server.keepalive_interval_secs,
                1,
                86_400,
            ),
            (
                "keepalive_timeout_secs",
                raw.server.keepalive_timeout_secs,
                1,
                3_600,
            ),
            (
                "max_connections",
                raw.server.max_connections as u64,
                1,
                1_000_000,
            ),
            (
                "max_concurrent_streams",
                raw.server.max_concurrent_streams as u64,
                1,
                100_000,
            ),
        ] {
            if v < lo || v > hi {
                return Err(ctx.err("server", key, format!("must be between {lo} and {hi}")));
            }
        }
        if raw.server.keepalive_interval_secs >= raw.server.idle_timeout_secs {
            return Err(ctx.err(
                "server",
                "keepalive_interval_secs",
                "must be below idle_timeout_secs (keepalive PINGs keep a live connection from idling out)",
            ));
        }
        if raw.server.max_message_bytes < 1024 || raw.server.max_message_bytes > 64 * 1024 * 1024 {
            return Err(ctx.err(
                "server",
                "max_message_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        // KEYGATE_NODE_ID (e.g. a pod's name) overrides the file: replicas of one Deployment
        // share their config file but each needs its own id
        let from_env = std::env::var("KEYGATE_NODE_ID")
            .ok()
            .filter(|n| !n.trim().is_empty());
        let node_id = match from_env.or(raw.server.node_id) {
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

        let storage = storage_config(raw.storage, &ctx)?;

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

        let identity = parse_identity(&ctx, raw.identity, raw.issuers, raw.roles)?;
        let databases = crate::database::config::parse(&ctx, raw.databases)?;
        let rotations = crate::rotation::config::parse(&ctx, raw.rotations, &databases)?;
        let a = raw.audit;
        if a.segment_bytes < 4096 {
            return Err(ctx.err("audit", "segment_bytes", "must be at least 4096"));
        }
        if a.checkpoint_every == 0 || a.checkpoint_interval_secs == 0 {
            return Err(ctx.err(
                "audit",
                "checkpoint_every",
                "checkpoints need a positive count and interval",
            ));
        }
        if a.checkpoint_key_rotation_secs < 60 {
            return Err(ctx.err(
                "audit",
                "checkpoint_key_rotation_secs",
                "must be at least 60",
            ));
        }
        if !(10..=60_000).contains(&a.write_deadline_ms) {
            return Err(ctx.err("audit", "write_deadline_ms", "must be between 10 and 60000"));
        }
        let sink = match a.sink.as_deref() {
            None | Some("") => None,
            Some("stdout") => Some(crate::audit::writer::Sink::Stdout),
            Some(u) if u.starts_with("unix:") => Some(crate::audit::writer::Sink::Unix(
                ctx.resolve(Path::new(&u[5..])),
            )),
            Some(other) => {
                return Err(ctx.err(
                    "audit",
                    "sink",
                    format!("{other:?}: use \"stdout\" or \"unix:/path/to.sock\""),
                ))
            }
        };
        let store = match a.store.as_deref() {
            None | Some("files") => AuditStore::Files,
            Some("postgres") => {
                if !matches!(storage, StorageConfig::Postgres(_)) {
                    return Err(ctx.err(
                        "audit",
                        "store",
                        "\"postgres\" keeps the audit log in the storage database: set [storage] backend = \"postgres\"",
                    ));
                }
                AuditStore::Postgres
            }
            Some(other) => {
                return Err(ctx.err(
                    "audit",
                    "store",
                    format!("{other:?}: use \"files\" or \"postgres\""),
                ))
            }
        };
        let keys = match (a.signing_key_file, a.hmac_key_file, store) {
            (Some(s), Some(h), _) => AuditKeySource::Files {
                signing: ctx.resolve(&s),
                hmac: ctx.resolve(&h),
            },
            (None, None, AuditStore::Postgres) => AuditKeySource::Store,
            (s, h, AuditStore::Files) => AuditKeySource::Files {
                signing: ctx.resolve(&s.unwrap_or_else(|| PathBuf::from("audit-signing.key"))),
                hmac: ctx.resolve(&h.unwrap_or_else(|| PathBuf::from("audit-hmac.key"))),
            },
            _ => {
                return Err(ctx.err(
                    "audit",
                    "signing_key_file",
                    "with store = \"postgres\" set both signing_key_file and hmac_key_file (keys the operator mounts), or neither (keys kept in the database)",
                ))
            }
        };
        let audit = AuditConfig {
            sink,
            sink_queue: a.sink_queue.clamp(1, 1_000_000),
            store,
            dir: ctx.resolve(&a.dir),
            keys,
            head_file: ctx.resolve(&a.head_file),
            segment_bytes: a.segment_bytes,
            checkpoint_every: a.checkpoint_every,
            checkpoint_interval_secs: a.checkpoint_interval_secs,
            checkpoint_key_rotation_secs: a.checkpoint_key_rotation_secs,
            write_deadline_ms: a.write_deadline_ms,
        };

        let limits = parse_limits(&ctx, raw.limits, raw.server.max_message_bytes as usize)?;
        let vault_api = match raw.vault_api {
            None => None,
            Some(v) => {
                let listen = v.listen.parse().map_err(|_| {
                    ctx.err(
                        "vault_api",
                        "listen",
                        format!("{:?} is not an address like 127.0.0.1:8200", v.listen),
                    )
                })?;
                let mount = v.kv_mount.trim_matches('/').to_string();
                if mount.is_empty()
                    || mount.contains('/')
                    || matches!(mount.as_str(), "sys" | "auth" | "database" | "identity")
                {
                    return Err(ctx.err(
                        "vault_api",
                        "kv_mount",
                        "one path segment that is not sys, auth, database or identity",
                    ));
                }
                if !matches!(v.kv_version, 1 | 2) {
                    return Err(ctx.err("vault_api", "kv_version", "1 or 2"));
                }
                Some(VaultApiConfig {
                    listen,
                    kv_mount: mount,
                    kv_version: v.kv_version,
                })
            }
        };
        Ok(Self {
            vault_api,
            limits,
            path: path.to_path_buf(),
            server: ServerConfig {
                grpc_listen,
                http_listen,
                node_id,
                max_message_bytes: raw.server.max_message_bytes as usize,
                shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs as u64),
                connections: ConnLimits {
                    handshake_timeout: Duration::from_secs(raw.server.handshake_timeout_secs),
                    idle_timeout: Duration::from_secs(raw.server.idle_timeout_secs),
                    max_connections: raw.server.max_connections,
                },
                keepalive_interval: Duration::from_secs(raw.server.keepalive_interval_secs),
                keepalive_timeout: Duration::from_secs(raw.server.keepalive_timeout_secs),
                max_concurrent_streams: raw.server.max_concurrent_streams,
            },
            tls,
            storage,
            kek,
            admin_subjects,
            log_format: raw.log.format,
            identity,
            audit,
            databases,
            rotations,
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
        if self.vault_api != other.vault_api {
            v.push("vault_api".to_string());
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
        if self.audit != other.audit {
            v.push("audit".to_string());
        }
        if self.limits != other.limits {
            v.push("limits".to_string());
        }
        let (a, b) = (&self.identity, &other.identity);
        if a.url != b.url
            || a.audience != b.audience
            || a.signing_key_rotation_secs != b.signing_key_rotation_secs
        {
            v.push("identity".to_string());
        }
        v
    }
}

fn parse_identity(
    ctx: &Ctx<'_>,
    raw: RawIdentity,
    raw_issuers: Vec<RawIssuer>,
    raw_roles: Vec<RawRole>,
) -> Result<IdentityConfig, ConfigError> {
    let url = raw
        .url
        .unwrap_or_else(|| "https://keygate.invalid".to_string());
    if !url.starts_with("https://") {
        return Err(ctx.err(
            "identity",
            "url",
            "keygate's issuer URL must start with https://",
        ));
    }
    let url = url.trim_end_matches('/').to_string();
    let audience = raw.audience.unwrap_or_else(|| url.clone());
    if raw.signing_key_rotation_secs < 60 {
        return Err(ctx.err(
            "identity",
            "signing_key_rotation_secs",
            "must be at least 60",
        ));
    }
    let allow_http = raw.dangerous_allow_http_loopback_issuers;
    let mut issuers: Vec<IssuerConfig> = Vec::new();
    for (i, r) in raw_issuers.into_iter().enumerate() {
        let e = |key: &str, m: String| ctx.err_at("issuers", i, key, m);
        if r.name.is_empty() || issuers.iter().any(|x| x.name == r.name) {
            return Err(e(
                "name",
                format!("issuer name {:?} is empty or used twice", r.name),
            ));
        }
        let p = issuer::preset(r.preset);
        let iss = match (r.issuer, p.default_issuer) {
            (Some(i), _) => i,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(e("issuer", "this preset needs the exact issuer URL".into()))
            }
        };
        let shared = issuer::check_issuer(r.preset, &iss).map_err(|m| e("issuer", m))?;
        let keys = match (r.discovery_url, r.jwks_url, r.jwks_file) {
            (Some(u), None, None) => KeySource::Discovery(u),
            (None, Some(u), None) => KeySource::Jwks(u),
            (None, None, Some(f)) => {
                let f = ctx.resolve(&f);
                let doc = std::fs::read_to_string(&f)
                    .map_err(|err| e("jwks_file", format!("cannot read {}: {err}", f.display())))?;
                KeySource::Static(doc)
            }
            (None, None, None) => KeySource::Discovery(format!(
                "{}/.well-known/openid-configuration",
                iss.trim_end_matches('/')
            )),
            _ => {
                return Err(e(
                    "discovery_url",
                    "set at most one of discovery_url, jwks_url, jwks_file".into(),
                ))
            }
        };
        if let KeySource::Discovery(u) | KeySource::Jwks(u) = &keys {
            let key = if matches!(keys, KeySource::Jwks(_)) {
                "jwks_url"
            } else {
                "discovery_url"
            };
            crate::identity::jwks::check_url(u, allow_http).map_err(|m| e(key, m.to_string()))?;
        }
        let algorithms = match r.algorithms {
            Some(list) => {
                if list.is_empty() {
                    return Err(e("algorithms", "list at least one algorithm".into()));
                }
                list.iter()
                    .map(|a| issuer::parse_algorithm(a))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| e("algorithms", m))?
            }
            None => p.algorithms.to_vec(),
        };
        if r.audience.trim().is_empty() {
            return Err(e(
                "audience",
                "keygate's audience for this issuer must not be empty".into(),
            ));
        }
        if !(60..=31 * 86_400).contains(&r.max_token_lifetime_secs) {
            return Err(e(
                "max_token_lifetime_secs",
                "must be between 60 and 2678400 seconds".into(),
            ));
        }
        if r.leeway_secs > 300 {
            return Err(e("leeway_secs", "at most 300 seconds".into()));
        }
        if r.cache_min_secs > r.cache_max_secs {
            return Err(e("cache_min_secs", "must not exceed cache_max_secs".into()));
        }
        let ca_file = r.ca_file.map(|c| ctx.resolve(&c));
        if let Some(ca) = &ca_file {
            crate::tls::load_certs(ca).map_err(|m| e("ca_file", m.to_string()))?;
        }
        issuers.push(IssuerConfig {
            name: r.name,
            platform: r.preset,
            issuer: iss,
            keys,
            algorithms,
            audience: r.audience,
            allow_extra_audiences: r.allow_extra_audiences,
            leeway_secs: r.leeway_secs,
            max_token_age_secs: r.max_token_age_secs.unwrap_or(p.max_token_age_secs),
            max_token_lifetime_secs: r.max_token_lifetime_secs,
            refuse_jti_replay: r.refuse_jti_replay,
            shared,
            ca_file,
            cache_min_secs: r.cache_min_secs,
            cache_max_secs: r.cache_max_secs,
            unknown_kid_refetch_secs: r.unknown_kid_refetch_secs,
            fetch_timeout_secs: r.fetch_timeout_secs.clamp(1, 60),
            max_response_bytes: r.max_response_bytes.clamp(1024, 4 * 1024 * 1024),
        });
    }
    // a token is matched to an issuer by its exact `iss`: a second entry with the same one
    // would silently never be used
    for (i, a) in issuers.iter().enumerate() {
        if let Some(b) = issuers[..i].iter().find(|b| b.issuer == a.issuer) {
            return Err(ctx.err_at(
                "issuers",
                i,
                "issuer",
                format!(
                    "issuers {:?} and {:?} both have issuer {:?}; a token's iss picks one issuer, so merge them",
                    b.name, a.name, a.issuer
                ),
            ));
        }
    }
    let mut roles: Vec<Role> = Vec::new();
    for (i, r) in raw_roles.into_iter().enumerate() {
        let e = |key: &str, m: String| ctx.err_at("roles", i, key, m);
        if r.name.is_empty() || roles.iter().any(|x| x.name == r.name) {
            return Err(e(
                "name",
                format!("role name {:?} is empty or used twice", r.name),
            ));
        }
        if r.name.starts_with('_') {
            return Err(e(
                "name",
                format!(
                    "role name {:?}: names starting with `_` are keygate's own (admin tokens use `_admin-cert`)",
                    r.name
                ),
            ));
        }
        let Some(iss) = issuers.iter().find(|x| x.name == r.issuer) else {
            return Err(e(
                "issuer",
                format!("no [[issuers]] entry is named {:?}", r.issuer),
            ));
        };
        let scopes = r
            .scopes
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| e("scopes", m.to_string()))?;
        let role = Role {
            name: r.name,
            issuer: r.issuer,
            bound_subject: r.bound_subject,
            claims: r.claims,
            scopes,
            ttl_secs: r.ttl_secs,
            max_ttl_secs: r.max_ttl_secs,
            cap_at_token_expiry: r.cap_at_token_expiry,
            allow_pull_request_target: r.allow_pull_request_target,
        };
        role.validate(iss.platform, iss.shared)
            .map_err(|m| e("claims", m.to_string()))?;
        roles.push(role);
    }
    Ok(IdentityConfig {
        url,
        audience,
        signing_key_rotation_secs: raw.signing_key_rotation_secs,
        dangerous_allow_http_loopback_issuers: allow_http,
        max_replay_entries: raw.max_replay_entries,
        issuers,
        roles,
    })
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
    fn the_documented_example_has_only_real_keys() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml"));
        let text = std::fs::read_to_string(path).unwrap();
        // the TOML structure (every key, every type) is accepted; the first error is the
        // certificate file the example names, which does not exist in the repository
        let e = Config::parse(path, &text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tls.cert_file"), "{e}");
    }

    #[test]
    fn dn_normalisation() {
        assert_eq!(normalize_dn("cn = a, O=b c"), "CN=a,O=b c");
    }
}

#[cfg(test)]
mod fuzzish {
    use super::*;

    /// Bad config of any shape is an error that names what it can, never a panic.
    #[test]
    fn mutated_configs_never_panic() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml"));
        let text = std::fs::read_to_string(path).unwrap();
        let bytes = text.as_bytes();
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"[]=\"'#\n ,{}.0a-";
        for _ in 0..2000 {
            let mut m = bytes.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % m.len() as u64) as usize;
                match next() % 3 {
                    0 => {
                        m.remove(at);
                    }
                    1 => m.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                    _ => m[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                }
            }
            let t = String::from_utf8_lossy(&m);
            if let Err(e) = Config::parse(path, &t) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
}
