//! The daemon: wires config, store, authorizer and handlers, serves gRPC and HTTPS, reloads on
//! SIGHUP and shuts down gracefully on SIGTERM/SIGINT.
pub mod health;
pub mod http;
pub mod listener;

use crate::api::{
    admin::AdminApi, database::DatabaseApi, exchange::ExchangeApi, leases::LeasesApi,
    secrets::SecretsApi, AppState, ConfigReload,
};
use crate::authz::Gate;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError, KekSource, StorageConfig};
use crate::credential::Credentials;
use crate::database::Databases;
use crate::identity::replay::ReplayStore;
use crate::identity::trust::Trust;
use crate::identity::Verifier;
use crate::metrics::Metrics;
use crate::pb;
use crate::secrets::envelope::Kek;
use crate::secrets::{SecretStore, SecretsError};
use crate::storage::{SledStorage, Storage};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `op` of a config reload asked for by SIGHUP.
pub const SIGHUP_RELOAD: &str = "signal.SIGHUP/ReloadConfig";

/// How long each final write at shutdown (pending leases, the store flush) may take.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// The listeners of a replica waiting for its database at start (UNAVAILABLE, not ready).
struct Waiting {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Waiting {
    async fn start(config: &Config) -> Result<Self, StartError> {
        let (grpc, http) =
            http::waiting_routers("the database is unreachable; this replica is waiting for it");
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let l = TcpListener::bind(config.server.grpc_listen)
            .await
            .map_err(io_error(format!(
                "server.grpc_listen {}",
                config.server.grpc_listen
            )))?;
        let tls = crate::tls::grpc_rustls_config(&config.tls)?;
        tasks.push(tokio::spawn(http::serve_router(l, tls, grpc, rx.clone())));
        if let Some(addr) = config.server.http_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(io_error(format!("server.http_listen {addr}")))?;
            let tls = crate::tls::http_server_config(&config.tls)?;
            tasks.push(tokio::spawn(http::serve_router(l, tls, http, rx)));
        }
        tracing::warn!("serving UNAVAILABLE and not ready until the database can be reached");
        Ok(Self { stop, tasks })
    }

    /// Closes the listeners and their connections (the ports are free again).
    async fn end(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is wrong (exit code 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An operating-system resource (a socket, a signal handler) could not be had.
    #[error("{what}: {source}")]
    Io {
        /// What keygate was doing, with the config key where there is one.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data store cannot be opened or flushed.
    #[error("{what}: {source}")]
    Storage {
        /// Which step.
        what: &'static str,
        /// Why.
        #[source]
        source: crate::storage::StorageError,
    },
    /// The PostgreSQL store cannot be opened (unreachable, refused, a newer schema).
    #[error("storage (postgres): {0}")]
    Postgres(#[source] crate::storage::postgres::PgError),
    /// The secret store refused to open.
    #[error("secret store: {0}")]
    Secrets(#[source] SecretsError),
    /// keygate's signing keys cannot be loaded.
    #[error("signing keys: {0}")]
    Credentials(#[source] crate::credential::CredentialError),
    /// The TLS certificate or key of a listener.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The audit keys or log cannot be opened.
    #[error("audit: {0}")]
    Audit(#[source] crate::audit::SetupError),
    /// gRPC reflection cannot be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The final store flush did not finish within its budget.
    #[error("final store flush did not finish within {0:?}")]
    FlushTimeout(std::time::Duration),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

struct Reloader {
    path: PathBuf,
    current: RwLock<Config>,
    authz: Arc<Gate>,
    metrics: Arc<Metrics>,
    trust: Arc<RwLock<Arc<Trust>>>,
    clock: Arc<dyn Clock>,
    replay: Arc<ReplayStore>,
    databases: Arc<Databases>,
    rotator: Arc<crate::rotation::Rotator>,
}

/// Builds the verifier and roles of a config and starts its key refreshers (the previous
/// verifier's end when it is dropped).
fn build_trust(
    config: &Config,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    replay: Arc<ReplayStore>,
) -> Result<Trust, crate::identity::IssuerError> {
    let id = &config.identity;
    let verifier = Verifier::new(
        &id.issuers,
        id.dangerous_allow_http_loopback_issuers,
        metrics,
        clock,
        replay,
    )?;
    verifier.start_refresh();
    Ok(Trust::new(verifier, id.roles.clone()))
}

impl ConfigReload for Reloader {
    fn reload(&self) -> Result<Vec<String>, crate::api::ReloadError> {
        match Config::load(&self.path) {
            Ok(new) => {
                let trust = build_trust(
                    &new,
                    self.metrics.clone(),
                    self.clock.clone(),
                    self.replay.clone(),
                )
                .map_err(|e| {
                    self.metrics.reload(false);
                    tracing::error!(error = %e, "config reload refused; the running config stays");
                    e
                })?;
                let mut cur = self
                    .current
                    .write()
                    .map_err(|_| crate::api::ReloadError::Poisoned)?;
                let restart = new.restart_needed(&cur);
                self.authz.set_subjects(new.admin_subjects.clone());
                self.databases.set_configs(new.databases.clone());
                self.rotator.set_configured(new.rotations.clone());
                if let Ok(mut t) = self.trust.write() {
                    *t = Arc::new(trust);
                }
                *cur = new;
                self.metrics.reload(true);
                tracing::info!(needs_restart = ?restart, "config reloaded");
                Ok(restart)
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(error = %e, "config reload refused; the running config stays");
                Err(e.into())
            }
        }
    }
}

/// Reloads the signing keys as soon as they change in the store (a rotation on any replica,
/// seen through the store's change notifications), so every replica publishes the same JWKS
/// and verifies every replica's credentials. The 30 s housekeeping reload stays as a backstop.
async fn follow_signing_keys(credentials: Arc<Credentials>, store: Arc<SecretStore>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = store.subscribe();
    loop {
        let reload = match rx.recv().await {
            Ok(payload) if payload == crate::storage::RESYNC => true,
            Ok(payload) => {
                serde_json::from_slice::<Vec<crate::secrets::model::ChangeEvent>>(&payload)
                    .map(|evs| {
                        evs.iter()
                            .any(|e| e.path == crate::credential::SIGNING_KEYS_PATH.as_str())
                    })
                    .unwrap_or(false)
            }
            // missed notifications: one may have been a key change
            Err(RecvError::Lagged(_)) => true,
            Err(RecvError::Closed) => return,
        };
        if reload {
            if let Err(e) = credentials.reload().await {
                tracing::warn!(error = %e, "signing key reload after a change failed");
            } else {
                tracing::debug!("signing keys reloaded after a change in the store");
            }
        }
    }
}

/// Periodic work: pick-up of signing keys other replicas rotated, replay and lease clean-up.
/// (Signing keys themselves rotate through the rotation scheduler.)
async fn housekeeping(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        tick.tick().await;
        if let Err(e) = state.credentials.reload().await {
            tracing::warn!(error = %e, "signing key reload failed");
        }
        // the sweeps run once for all replicas: on the leader
        if !state.leadership.is_leader() {
            continue;
        }
        if let Err(e) = state.trust().verifier.sweep_replay().await {
            tracing::warn!(error = %e, "replay store sweep failed");
        }
        if let Err(e) = state.credentials.leases.sweep(3600).await {
            tracing::warn!(error = %e, "lease sweep failed");
        }
    }
}

/// Drops database users whose leases are revoked or expired: at start (leases that expired
/// while the daemon was down) and then every second.
async fn database_sweeper(databases: Arc<Databases>, leadership: Arc<crate::leader::Leadership>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // once for all replicas: on the leader
        if !databases.any() || !leadership.is_leader() {
            continue;
        }
        match databases.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(dropped = n, "expired or revoked database users dropped"),
            Err(e) => tracing::warn!(error = %e, "database lease sweep failed"),
        }
    }
}

/// Runs the rotation scheduler: every second, due and unfinished rotations (the first pass, at
/// start, resumes rotations a crash interrupted and runs those missed while down).
async fn rotation_scheduler(rotator: Arc<crate::rotation::Rotator>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = rotator.tick().await {
            tracing::warn!(error = %e, "rotation scheduler pass failed");
        }
    }
}

/// A running daemon.
pub struct Daemon {
    store: Arc<SecretStore>,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    accepting: Arc<AtomicBool>,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    http_task: Option<JoinHandle<()>>,
    vault_addr: Option<SocketAddr>,
    vault_task: Option<JoinHandle<()>>,
    reload: Arc<Reloader>,
    grace: std::time::Duration,
    housekeeping: JoinHandle<()>,
    key_follower: JoinHandle<()>,
    leader_task: JoinHandle<()>,
    leadership: Arc<crate::leader::Leadership>,
    credentials: Arc<Credentials>,
    sweeper: JoinHandle<()>,
    scheduler: JoinHandle<()>,
    audit: Arc<crate::audit::writer::AuditWriter>,
    signals: Signals,
}

/// SIGTERM, SIGINT, SIGHUP: installed before the daemon says it is serving, so a signal sent
/// right after never meets the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, StartError> {
        use tokio::signal::unix::{signal, SignalKind};
        let sig = |k| signal(k).map_err(io_error("signal handler"));
        Ok(Self {
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
            hup: sig(SignalKind::hangup())?,
        })
    }
}

pub fn kek_from(config: &Config) -> Result<Kek, ConfigError> {
    let err = |key: &str, m: crate::secrets::kek::KekError| ConfigError {
        file: config.path.clone(),
        line: None,
        key: Some(key.to_string()),
        message: m.to_string(),
    };
    match &config.kek {
        KekSource::File(p) => crate::secrets::kek::load_file(p).map_err(|m| err("kek.file", m)),
        KekSource::Env(v) => crate::secrets::kek::load_env(v).map_err(|m| err("kek.env", m)),
    }
}

/// Opens the audit keys (files or the store) and the writer on the store the config names:
/// segment files in `audit.dir`, or this node's chain in the database `table`.
async fn open_audit(
    config: &Config,
    store: &Arc<SecretStore>,
    table: Option<Arc<dyn crate::audit::table::AuditTable>>,
    clock: Arc<dyn Clock>,
) -> Result<
    (
        Arc<crate::audit::AuditKeys>,
        Arc<crate::audit::writer::AuditWriter>,
    ),
    StartError,
> {
    use crate::audit::{writer::AuditWriter, AuditKeys};
    use crate::config::AuditKeySource;
    let a = &config.audit;
    let log_dir = table.is_none().then_some(a.dir.as_path());
    let keys = match &a.keys {
        AuditKeySource::Files { signing, hmac } => {
            AuditKeys::load_or_create(signing, hmac, log_dir).map_err(|m| {
                StartError::Config(ConfigError {
                    file: config.path.clone(),
                    line: None,
                    key: Some("audit.signing_key_file".into()),
                    message: m.to_string(),
                })
            })?
        }
        AuditKeySource::Store => AuditKeys::from_store(store)
            .await
            .map_err(StartError::Audit)?,
    };
    let keys = Arc::new(keys);
    let cfg = crate::audit::writer::WriterConfig {
        dir: a.dir.clone(),
        segment_bytes: a.segment_bytes,
        checkpoint_every: a.checkpoint_every,
        checkpoint_interval: std::time::Duration::from_secs(a.checkpoint_interval_secs),
        write_deadline: std::time::Duration::from_millis(a.write_deadline_ms),
        node: config.server.node_id.clone(),
        sink: a.sink.clone(),
        sink_queue: a.sink_queue,
        head_file: table.is_none().then(|| a.head_file.clone()),
    };
    let writer = match table {
        Some(table) => {
            let signer = keys
                .active_signer_on_table(store, table.as_ref(), &config.server.node_id)
                .await
                .map_err(StartError::Audit)?;
            AuditWriter::open_on_table(cfg, signer, clock, table)
                .await
                .map_err(StartError::Audit)?
        }
        None => {
            let signer = keys
                .active_signer(store, &a.dir)
                .await
                .map_err(StartError::Audit)?;
            AuditWriter::open_with_clock(cfg, signer, clock).map_err(StartError::Audit)?
        }
    };
    Ok((keys, Arc::new(writer)))
}

impl Daemon {
    /// Opens the store and starts both listeners.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        let mut signals = Signals::install()?;
        // the database the audit log is kept in, with `[audit] store = "postgres"`
        let mut audit_table: Option<Arc<dyn crate::audit::table::AuditTable>> = None;
        let storage: Arc<dyn Storage> = match &config.storage {
            StorageConfig::Sled { path } => Arc::new(SledStorage::open(path).map_err(
                |source| StartError::Storage {
                    what: "storage.path",
                    source,
                },
            )?),
            StorageConfig::Postgres(pg) => {
                // an unreachable database is waited for, not a reason to exit: the process
                // stays up (not listening, so not ready) until it can open the store
                let mut delay = std::time::Duration::from_millis(500);
                let mut waiting: Option<Waiting> = None;
                loop {
                    use crate::storage::postgres::PgError;
                    match crate::storage::PgStorage::open(pg).await {
                        Ok(s) => {
                            if let Some(w) = waiting.take() {
                                w.end().await;
                            }
                            let s = Arc::new(s);
                            if config.audit.store == crate::config::AuditStore::Postgres {
                                audit_table = Some(s.clone());
                            }
                            break s as Arc<dyn Storage>;
                        }
                        Err(PgError::Unreachable(m)) => {
                            if waiting.is_none() {
                                waiting = Some(Waiting::start(&config).await?);
                            }
                            tracing::warn!(error = %m, retry_in = ?delay, "the database is unreachable; waiting for it (not ready)");
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = signals.term.recv() => return Err(StartError::Postgres(PgError::Unreachable(m))),
                                _ = signals.int.recv() => return Err(StartError::Postgres(PgError::Unreachable(m))),
                            }
                            delay = (delay * 2).min(std::time::Duration::from_secs(5));
                        }
                        Err(e) => return Err(StartError::Postgres(e)),
                    }
                }
            }
        };
        let kek = kek_from(&config)?;
        // one clock for everything the daemon stamps or checks
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = match SecretStore::open(storage, kek, clock.clone()).await {
            Ok(s) => Arc::new(s),
            Err(SecretsError::Kek(m)) => {
                return Err(ConfigError {
                    file: config.path.clone(),
                    line: None,
                    key: Some("kek".into()),
                    message: m,
                }
                .into())
            }
            Err(e) => return Err(StartError::Secrets(e)),
        };
        let metrics = Arc::new(Metrics::new());
        let id = &config.identity;
        let retain = id
            .roles
            .iter()
            .map(|r| r.max_ttl_secs)
            .max()
            .unwrap_or(3600)
            .max(3600);
        let credentials = Arc::new(
            Credentials::open(
                store.clone(),
                clock.clone(),
                id.url.clone(),
                id.audience.clone(),
                id.signing_key_rotation_secs,
                retain,
            )
            .await
            .map_err(StartError::Credentials)?,
        );
        let replay = Arc::new(ReplayStore::new(
            store.storage().clone(),
            clock.clone(),
            config.identity.max_replay_entries,
        ));
        let trust =
            build_trust(&config, metrics.clone(), clock.clone(), replay.clone()).map_err(|m| {
                StartError::Config(ConfigError {
                    file: config.path.clone(),
                    line: None,
                    key: Some("issuers".into()),
                    message: m.to_string(),
                })
            })?;
        let trust = Arc::new(RwLock::new(Arc::new(trust)));
        let authz = Arc::new(Gate::new(
            config.admin_subjects.clone(),
            Some(credentials.clone()),
        ));
        // one lease store: a credential's lease is visible to the database users it asks for
        // while still pending in its write-behind batch
        let databases = Arc::new(Databases::with_leases(
            config.databases.clone(),
            store.clone(),
            clock.clone(),
            credentials.leases.clone(),
        ));
        let (audit_keys, audit) = open_audit(&config, &store, audit_table, clock.clone()).await?;
        let rotator = Arc::new(crate::rotation::Rotator::new(
            store.clone(),
            databases.clone(),
            clock.clone(),
            Some(audit.clone()),
            config.rotations.clone(),
        ));
        let leadership = Arc::new(crate::leader::Leadership::new(
            store.storage().clone(),
            clock.clone(),
            config.server.node_id.clone(),
        ));
        rotator.set_leadership(leadership.clone());
        // keygate's own signing keys rotate through the same state machine
        rotator.register_system(credentials.clone());
        rotator.register_system(Arc::new(
            crate::rotation::audit_key::CheckpointKeyRotation {
                writer: audit.clone(),
                anchor: audit_keys.anchor_pkcs8(),
                every_secs: config.audit.checkpoint_key_rotation_secs,
            },
        ));
        let reload = Arc::new(Reloader {
            path: config.path.clone(),
            current: RwLock::new(config.clone()),
            authz: authz.clone(),
            metrics: metrics.clone(),
            trust: trust.clone(),
            clock: clock.clone(),
            replay: replay.clone(),
            databases: databases.clone(),
            rotator: rotator.clone(),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = Arc::new(AppState {
            store: store.clone(),
            authz,
            metrics: metrics.clone(),
            reload: reload.clone(),
            node_id: config.server.node_id.clone(),
            shutdown: shutdown_rx.clone(),
            credentials: credentials.clone(),
            trust: trust.clone(),
            clock: clock.clone(),
            audit: audit.clone(),
            audit_keys,
            databases: databases.clone(),
            rotator: rotator.clone(),
            leadership: leadership.clone(),
            limits: config.limits.clone(),
        });
        let leader_task = tokio::spawn(leadership.clone().run());
        let housekeeping = tokio::spawn(housekeeping(state.clone()));
        let key_follower = tokio::spawn(follow_signing_keys(credentials.clone(), store.clone()));
        let sweeper = tokio::spawn(database_sweeper(databases, leadership.clone()));
        let scheduler = tokio::spawn(rotation_scheduler(rotator));

        let accepting = Arc::new(AtomicBool::new(true));

        let grpc_listener =
            TcpListener::bind(config.server.grpc_listen)
                .await
                .map_err(io_error(format!(
                    "server.grpc_listen {}",
                    config.server.grpc_listen
                )))?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(io_error("server.grpc_listen"))?;
        let tls = crate::tls::grpc_rustls_config(&config.tls)?;
        let conn_stats = Arc::new(listener::ConnStats::default());
        let max = config.server.max_message_bytes;
        let services: Vec<String> = {
            let mut v: Vec<String> = crate::api::layer::methods()
                .keys()
                .filter_map(|m| m.split_once('/').map(|(svc, _)| svc.to_string()))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            health::HealthApi::new(services, shutdown_rx.clone()),
        );
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl and Python's grpcio-reflection still ask v1alpha
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let srv = &config.server;
        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(
                pb::secrets_server::SecretsServer::new(SecretsApi::new(state.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                pb::admin_server::AdminServer::new(AdminApi::new(state.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                pb::token_exchange_server::TokenExchangeServer::new(ExchangeApi::new(
                    state.clone(),
                ))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            )
            .add_service(
                pb::leases_server::LeasesServer::new(LeasesApi::new(state.clone()))
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                pb::database_credentials_server::DatabaseCredentialsServer::new(DatabaseApi::new(
                    state.clone(),
                ))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            )
            .prepare();
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(srv.keepalive_interval))
            .http2_keepalive_timeout(Some(srv.keepalive_timeout))
            .max_concurrent_streams(Some(srv.max_concurrent_streams))
            // a request's headers (a credential is a few KiB) and at most this much buffered
            .http2_max_header_list_size(Some(64 * 1024))
            .layer(crate::api::layer::RpcLayer::new(state.clone()))
            .add_routes(routes.clone());
        // the Vault-compatible HTTP API: its calls go through the same layer (authentication,
        // audit, metrics) into the same services, in process
        let vault_task = match &config.vault_api {
            Some(v) => {
                let l = TcpListener::bind(v.listen)
                    .await
                    .map_err(io_error(format!("vault_api.listen {}", v.listen)))?;
                let bound = l.local_addr().map_err(io_error("vault_api.listen"))?;
                let tls = crate::tls::http_server_config(&config.tls)?;
                let grpc = tower::Layer::layer(
                    &crate::api::layer::RpcLayer::new(state.clone()),
                    routes.clone(),
                );
                let api = Arc::new(crate::vault::VaultApi::new(
                    grpc,
                    v.clone(),
                    max,
                    shutdown_rx.clone(),
                ));
                tracing::info!(vault_api = %bound, kv_mount = %v.kv_mount, "Vault-compatible HTTP API listening");
                // the same bounded accept loop as the gRPC listener: connection cap, handshake
                // and idle timeouts against slow, silent and too many peers
                let incoming = listener::incoming(
                    l,
                    tls,
                    srv.connections.clone(),
                    conn_stats.clone(),
                    shutdown_rx.clone(),
                );
                Some((
                    bound,
                    tokio::spawn(http::serve_translated(
                        incoming,
                        crate::vault::router(api),
                        "vault",
                        shutdown_rx.clone(),
                    )),
                ))
            }
            None => None,
        };
        let incoming = listener::incoming(
            grpc_listener,
            tls,
            srv.connections.clone(),
            conn_stats.clone(),
            shutdown_rx.clone(),
        );
        let mut rx = shutdown_rx.clone();
        let grpc_task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await
        });

        let (http_addr, http_task) = match config.server.http_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(io_error(format!("server.http_listen {addr}")))?;
                let bound = l.local_addr().map_err(io_error("server.http_listen"))?;
                let tls = crate::tls::http_server_config(&config.tls)?;
                let hs = http::HttpState {
                    store: store.clone(),
                    metrics,
                    accepting: accepting.clone(),
                    credentials: credentials.clone(),
                    leadership: leadership.clone(),
                    audit: audit.clone(),
                    conn_stats: conn_stats.clone(),
                };
                let task = tokio::spawn(http::serve(l, tls, hs, shutdown_rx.clone()));
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        tracing::info!(
            grpc = %grpc_addr,
            http = %http_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            vault = %vault_task.as_ref().map(|v| v.0.to_string()).unwrap_or_else(|| "-".into()),
            node_id = %config.server.node_id,
            storage = store.storage().backend(),
            kek_id = %store.kek_id().await,
            "keygate serving"
        );
        Ok(Self {
            store,
            grpc_addr,
            http_addr,
            shutdown_tx,
            accepting,
            grpc_task,
            http_task,
            vault_addr: vault_task.as_ref().map(|v| v.0),
            vault_task: vault_task.map(|v| v.1),
            reload,
            grace: config.server.shutdown_grace,
            housekeeping,
            key_follower,
            leader_task,
            leadership,
            credentials,
            sweeper,
            scheduler,
            audit,
            signals,
        })
    }

    /// The secret store (for seeding in `keygate dev`).
    pub fn store(&self) -> &Arc<SecretStore> {
        &self.store
    }

    /// Bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Bound HTTPS address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The Vault-compatible HTTP API's address, when `[vault_api]` is set.
    pub fn vault_addr(&self) -> Option<SocketAddr> {
        self.vault_addr
    }

    /// Serves until SIGTERM/SIGINT (reloading on SIGHUP), then shuts down gracefully.
    pub async fn run_until_signalled(mut self) -> Result<(), StartError> {
        loop {
            tokio::select! {
                _ = self.signals.term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = self.signals.int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = self.signals.hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    self.reload_audited().await;
                }
            }
        }
        self.shutdown().await
    }

    /// A SIGHUP reload, recorded like the RPC: intent first (no record, no reload), outcome
    /// after.
    async fn reload_audited(&self) {
        use crate::audit::record::{CallerInfo, Kind, Record};
        let mut id = [0u8; 12];
        let _ = aws_lc_rs::rand::fill(&mut id);
        let record = |decision: &str, reason: Option<String>, status: Option<&str>| {
            let mut r = Record::new(Kind::Request);
            r.request_id = Some(hex::encode(id));
            r.op = Some(SIGHUP_RELOAD.into());
            r.caller = Some(CallerInfo {
                principal: Some("operator (SIGHUP)".into()),
                ..Default::default()
            });
            r.resources = vec!["config".into()];
            r.decision = Some(decision.into());
            r.reason = reason;
            r.status = status.map(str::to_string);
            r
        };
        if let Err(e) = self.audit.append(record("intent", None, None)).await {
            tracing::error!(error = %e, "config reload not applied: the audit log cannot record it");
            return;
        }
        let outcome = match self.reload.reload() {
            Ok(_) => record("allow", None, Some("OK")),
            Err(e) => record("error", Some(e.to_string()), Some("FAILED_PRECONDITION")),
        };
        if let Err(e) = self.audit.append(outcome).await {
            tracing::error!(error = %e, "config reload outcome not recorded (its intent record stands)");
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), flushes the store.
    pub async fn shutdown(self) -> Result<(), StartError> {
        self.accepting.store(false, Ordering::SeqCst);
        let _ = self.shutdown_tx.send(true);
        let mut grpc_task = self.grpc_task;
        match tokio::time::timeout(self.grace, &mut grpc_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "grpc server error"),
            Ok(Err(e)) => tracing::error!(error = %e, "grpc server task failed"),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "grace period over: closing remaining connections");
                grpc_task.abort();
            }
        }
        if let Some(t) = self.http_task {
            t.abort();
        }
        if let Some(t) = self.vault_task {
            t.abort();
        }
        self.housekeeping.abort();
        self.key_follower.abort();
        self.sweeper.abort();
        self.scheduler.abort();
        self.leader_task.abort();
        // another replica takes over at once instead of after the lease expires
        let _ = tokio::time::timeout(FINAL_FLUSH, self.leadership.resign()).await;
        // a stuck store must not keep the daemon from exiting: each final write is bounded
        let budget = FINAL_FLUSH;
        // leases written behind: commit them before the final flush
        match tokio::time::timeout(budget, self.credentials.leases.flush_pending()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "pending leases not written"),
            Err(_) => tracing::error!(
                ?budget,
                "pending leases not written: the store did not answer in time"
            ),
        }
        // the final signed checkpoint
        self.audit.close().await;
        match tokio::time::timeout(budget, self.store.storage().flush()).await {
            Ok(r) => r.map_err(|source| StartError::Storage {
                what: "final flush",
                source,
            })?,
            Err(_) => {
                tracing::error!(
                    ?budget,
                    "final store flush did not finish in time; exiting without it"
                );
                return Err(StartError::FlushTimeout(budget));
            }
        }
        tracing::info!("keygate stopped; store flushed");
        Ok(())
    }
}
