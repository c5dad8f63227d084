//! The PostgreSQL backend: the same [`Storage`] contract as sled, on a database every replica
//! shares.
//!
//! - One table `keygate_kv (k BYTEA PRIMARY KEY, v BYTEA)`; bytea compares bytewise, so prefix
//!   scans are ordered like sled's.
//! - `commit` runs one SERIALIZABLE transaction: read the conditioned keys, compare, write. A
//!   serialization failure or deadlock is retried inside (it says nothing about the conditions);
//!   only a condition that does not hold is [`StorageError::Conflict`]. Every commit is
//!   synchronous, lazy ones too: the callers of a shared store wait for their batch anyway (a
//!   new lease is acknowledged only once committed), and a commit acknowledged before its WAL
//!   flush would be lost with the primary in a failover even to a synchronous standby.
//! - Change notification: a transaction with a `notify` payload takes the next number from the
//!   one-row `keygate_change_seq` (its row lock is held to commit, so numbers are in commit order)
//!   and appends `(seq, payload)` to `keygate_changes` in the same transaction, then
//!   `NOTIFY keygate_changes` with an empty payload (so NOTIFY's 8,000-byte limit never applies).
//!   Each replica follows the log from a dedicated connection: on every notification and at least
//!   every [`POLL`], it reads the rows after the last one it delivered, in order. After a lost
//!   connection it reconnects and reads on from where it was, so no change is skipped while the
//!   log still holds it (rows are kept `change_log_retention`, default 1 h). A follower query
//!   that does not answer within `operation_timeout` (a black-holed database) drops the
//!   connection and reconnects, so a dead link is never waited on.
//! - Every operation is bounded on this side by `operation_timeout` (default 4 s), waiting for
//!   a pooled connection included: a database that does not answer at all (a partition) costs
//!   a call at most that before it fails UNAVAILABLE.
pub mod audit;
pub mod config;
pub mod schema;

use super::{Storage, StorageError, StoreStats, Txn};
use async_trait::async_trait;
use config::{PgConfig, PgTls};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, IsolationLevel, Socket};

/// Longest a replica waits for a change it was not told about (a lost NOTIFY, a backend
/// without LISTEN).
pub const POLL: Duration = Duration::from_millis(500);
/// Longest a snapshot (a backup) may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Internal retries of a transaction that lost a serialization race.
const MAX_SERIALIZATION_RETRIES: u32 = 100;
/// Rows read from the change log per query.
const CHANGE_BATCH: i64 = 1000;

/// Why the PostgreSQL backend cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The password file cannot be read.
    #[error("password_file {}: {source}", path.display())]
    PasswordFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The URL does not parse (checked at config load already).
    #[error("url: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The database's CA file.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The system trust store.
    #[error("system trust store: {0}")]
    TrustStore(#[source] rustls::Error),
    /// The connection pool cannot be built.
    #[error("connection pool: {0}")]
    Pool(String),
    /// The database cannot be reached (or refused keygate).
    #[error("the database is unreachable: {0}")]
    Unreachable(String),
    /// The schema is not one this keygate can use.
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
}

/// What a caller (and the log) learns of a database error: its SQLSTATE and message, never the
/// DETAIL (which can quote values).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        // with its causes: which certificate, and why it was refused
        None => crate::error_chain::error_chain(e),
    }
}

fn backend(e: &tokio_postgres::Error) -> StorageError {
    StorageError::Backend(describe(e))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => {
            StorageError::Backend(format!("the database is unavailable: {}", describe(&e)))
        }
        deadpool_postgres::PoolError::Timeout(_) => StorageError::Backend(
            "the database is unavailable: no connection within the connect timeout".into(),
        ),
        other => StorageError::Backend(format!("the database is unavailable: {other}")),
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// The first key after every key starting with `prefix` (`None`: no upper bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The PostgreSQL storage.
pub struct PgStorage {
    pool: Pool,
    events: broadcast::Sender<Vec<u8>>,
    schema_version: i32,
    delivered: Arc<AtomicI64>,
    follower: tokio::task::JoinHandle<()>,
    op_timeout: Duration,
    counters: Arc<Counters>,
}

/// Operation counts and summed durations (microseconds), for `/metrics`.
#[derive(Default)]
struct Counters {
    reads: std::sync::atomic::AtomicU64,
    read_micros: std::sync::atomic::AtomicU64,
    commits: std::sync::atomic::AtomicU64,
    commit_micros: std::sync::atomic::AtomicU64,
    change_lag_ms: AtomicI64,
}

impl Counters {
    fn read(&self, since: std::time::Instant) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_micros
            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn commit(&self, since: std::time::Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_micros
            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

impl Drop for PgStorage {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn connection_config(cfg: &PgConfig) -> Result<tokio_postgres::Config, PgError> {
    let mut c: tokio_postgres::Config = cfg.url.parse().map_err(PgError::Url)?;
    if let Some(f) = &cfg.password_file {
        let raw = zeroize::Zeroizing::new(std::fs::read_to_string(f).map_err(|source| {
            PgError::PasswordFile {
                path: f.clone(),
                source,
            }
        })?);
        c.password(raw.trim_end_matches(['\r', '\n']));
    } else if let Ok(p) = std::env::var("PGPASSWORD") {
        c.password(p);
    }
    c.connect_timeout(cfg.connect_timeout);
    c.application_name("keygate");
    c.options(format!(
        "-c statement_timeout={} -c lock_timeout={}",
        cfg.statement_timeout.as_millis(),
        cfg.statement_timeout.as_millis()
    ));
    c.keepalives(true);
    c.keepalives_idle(Duration::from_secs(30));
    c.ssl_mode(match cfg.tls {
        PgTls::VerifyFull { .. } => tokio_postgres::config::SslMode::Require,
        PgTls::DangerousDisable => tokio_postgres::config::SslMode::Disable,
    });
    Ok(c)
}

fn rustls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(PgError::TrustStore)?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in crate::tls::load_certs(path)? {
                roots
                    .add(c)
                    .map_err(|source| crate::tls::TlsError::Refused {
                        path: path.to_path_buf(),
                        source,
                    })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                rustls_platform_verifier::Verifier::new(provider).map_err(PgError::TrustStore)?,
            ))
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgStorage {
    /// Connects, migrates the schema and starts following the change log.
    pub async fn open(cfg: &PgConfig) -> Result<Self, PgError> {
        let pg = connection_config(cfg)?;
        match &cfg.tls {
            PgTls::DangerousDisable => Self::open_with(cfg, pg, tokio_postgres::NoTls).await,
            PgTls::VerifyFull { ca_file } => {
                let tls = rustls_connector(ca_file.as_deref())?;
                Self::open_with(cfg, pg, tls).await
            }
        }
    }

    async fn open_with<T>(
        cfg: &PgConfig,
        pg: tokio_postgres::Config,
        tls: T,
    ) -> Result<Self, PgError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.connect_timeout))
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))?;
        let schema_version = {
            let mut client = pool.get().await.map_err(|e| match pool_error(e) {
                StorageError::Backend(m) => PgError::Unreachable(m),
                other => PgError::Unreachable(other.to_string()),
            })?;
            schema::migrate(&mut client).await?
        };
        let start: i64 = {
            let client = pool
                .get()
                .await
                .map_err(|e| PgError::Unreachable(pool_error(e).to_string()))?;
            client
                .query_one("SELECT seq FROM keygate_change_seq WHERE id = 1", &[])
                .await
                .map_err(|e| PgError::Unreachable(describe(&e)))?
                .get(0)
        };
        let (events, _) = broadcast::channel(4096);
        let delivered = Arc::new(AtomicI64::new(start));
        let counters = Arc::new(Counters::default());
        let follower = tokio::spawn(follow(
            pg,
            tls,
            events.clone(),
            delivered.clone(),
            pool.clone(),
            counters.clone(),
            FollowTimes {
                query: cfg.operation_timeout,
                retention: cfg.change_log_retention,
            },
        ));
        Ok(Self {
            pool,
            events,
            schema_version,
            delivered,
            follower,
            // a pooled connection (connect) and the statement (server-bounded) each get theirs
            op_timeout: cfg.operation_timeout,
            counters,
        })
    }

    /// The last change-log number this replica delivered to its subscribers.
    pub fn delivered(&self) -> i64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Bounds one storage operation on this side too: a dead connection (a partition) does not
    /// answer, and the server's statement_timeout cannot end what never reaches it.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.op_timeout, op).await {
            Ok(r) => r,
            Err(_) => {
                // the connection that did not answer went back to the pool when the operation
                // was dropped; it (and the idle others, likely on the same dead link) is closed
                // so that the calls after a partition heals get fresh connections instead of
                // waiting behind TCP's retransmission backoff on the old ones
                let closed = self.pool.retain(|_, _| false).removed.len();
                tracing::warn!(
                    timeout = ?self.op_timeout,
                    closed,
                    "the database did not answer; closed the pool's idle connections"
                );
                Err(StorageError::Backend(format!(
                    "the database did not answer within {:?}",
                    self.op_timeout
                )))
            }
        }
    }

    async fn commit_once(
        &self,
        txn: &Txn,
    ) -> Result<Result<(), StorageError>, tokio_postgres::Error> {
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => return Ok(Err(pool_error(e))),
        };
        let t = client
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await?;
        if !txn.conditions.is_empty() {
            let keys: Vec<&[u8]> = txn.conditions.iter().map(|(k, _)| k.as_slice()).collect();
            let stmt = t
                .prepare_cached("SELECT k, v FROM keygate_kv WHERE k = ANY($1)")
                .await?;
            let rows = t.query(&stmt, &[&keys]).await?;
            let current: BTreeMap<Vec<u8>, Vec<u8>> =
                rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
            for (k, want) in &txn.conditions {
                if current.get(k) != want.as_ref() {
                    // nothing written; the transaction rolls back when dropped
                    return Ok(Err(StorageError::Conflict));
                }
            }
        }
        // the last write of a key wins, as in sled
        let mut last: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
        for (k, v) in &txn.writes {
            last.insert(k.as_slice(), v.as_deref());
        }
        let (mut put_k, mut put_v, mut del) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in last {
            match v {
                Some(v) => {
                    put_k.push(k);
                    put_v.push(v);
                }
                None => del.push(k),
            }
        }
        if !put_k.is_empty() {
            let stmt = t
                .prepare_cached(
                    "INSERT INTO keygate_kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])
                     ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                )
                .await?;
            t.execute(&stmt, &[&put_k, &put_v]).await?;
        }
        if !del.is_empty() {
            let stmt = t
                .prepare_cached("DELETE FROM keygate_kv WHERE k = ANY($1)")
                .await?;
            t.execute(&stmt, &[&del]).await?;
        }
        if let Some(payload) = &txn.notify {
            let stmt = t
                .prepare_cached(
                    "UPDATE keygate_change_seq SET seq = seq + 1 WHERE id = 1 RETURNING seq",
                )
                .await?;
            let seq: i64 = t.query_one(&stmt, &[]).await?.get(0);
            let stmt = t
                .prepare_cached("INSERT INTO keygate_changes (seq, payload) VALUES ($1, $2)")
                .await?;
            t.execute(&stmt, &[&seq, payload]).await?;
            t.batch_execute("NOTIFY keygate_changes").await?;
        }
        t.commit().await?;
        Ok(Ok(()))
    }
}

#[async_trait]
impl Storage for PgStorage {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn shared(&self) -> bool {
        true
    }

    fn schema_version(&self) -> i32 {
        self.schema_version
    }

    fn backend_stats(&self) -> Option<super::BackendStats> {
        let st = self.pool.status();
        let c = &self.counters;
        Some(super::BackendStats {
            pool_open: st.size as u64,
            pool_idle: st.available as u64,
            pool_max: st.max_size as u64,
            reads: c.reads.load(Ordering::Relaxed),
            read_seconds: c.read_micros.load(Ordering::Relaxed) as f64 / 1e6,
            commits: c.commits.load(Ordering::Relaxed),
            commit_seconds: c.commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
            change_lag_ms: c.change_lag_ms.load(Ordering::Relaxed),
        })
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let started = std::time::Instant::now();
        let _done = Finish(|| self.counters.read(started));
        self.bounded(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached("SELECT v FROM keygate_kv WHERE k = $1")
                .await
                .map_err(|e| backend(&e))?;
            let row = client
                .query_opt(&stmt, &[&key])
                .await
                .map_err(|e| backend(&e))?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    async fn snapshot(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        // one statement sees one MVCC snapshot; a whole store may take longer than an operation
        let op = async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let t = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| backend(&e))?;
            t.batch_execute(&format!(
                "SET LOCAL statement_timeout = {}",
                SNAPSHOT_TIMEOUT.as_millis()
            ))
            .await
            .map_err(|e| backend(&e))?;
            let rows = t
                .query("SELECT k, v FROM keygate_kv ORDER BY k", &[])
                .await
                .map_err(|e| backend(&e))?;
            t.commit().await.map_err(|e| backend(&e))?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        };
        tokio::time::timeout(SNAPSHOT_TIMEOUT, op)
            .await
            .map_err(|_| StorageError::Backend("the snapshot did not finish in time".into()))?
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let started = std::time::Instant::now();
        let _done = Finish(|| self.counters.read(started));
        self.bounded(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = match prefix_end(prefix) {
                Some(end) => {
                    let stmt = client
                        .prepare_cached(
                            "SELECT k, v FROM keygate_kv WHERE k >= $1 AND k < $2 ORDER BY k",
                        )
                        .await
                        .map_err(|e| backend(&e))?;
                    client.query(&stmt, &[&prefix, &end]).await
                }
                None => {
                    let stmt = client
                        .prepare_cached("SELECT k, v FROM keygate_kv WHERE k >= $1 ORDER BY k")
                        .await
                        .map_err(|e| backend(&e))?;
                    client.query(&stmt, &[&prefix]).await
                }
            }
            .map_err(|e| backend(&e))?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
        .await
    }

    async fn commit(&self, txn: Txn) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let _done = Finish(|| self.counters.commit(started));
        self.bounded(async move {
            let mut attempt = 0;
            loop {
                match self.commit_once(&txn).await {
                    Ok(outcome) => return outcome,
                    Err(e) if retryable(&e) && attempt < MAX_SERIALIZATION_RETRIES => {
                        attempt += 1;
                        // spread the retries of writers that raced on the same rows
                        let mut b = [0u8; 2];
                        let _ = aws_lc_rs::rand::fill(&mut b);
                        let micros =
                            u64::from(u16::from_le_bytes(b)) % (200 * u64::from(attempt.min(20)));
                        tokio::time::sleep(Duration::from_micros(micros)).await;
                    }
                    Err(e) => return Err(backend(&e)),
                }
            }
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Vec<u8>> {
        self.events.subscribe()
    }

    async fn flush(&self) -> Result<(), StorageError> {
        self.bounded(async move {
            // every commit is synchronous here; a round trip proves the database is reachable
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "UPDATE keygate_schema SET version = version WHERE id = 1",
                    &[],
                )
                .await
                .map_err(|e| backend(&e))?;
            Ok(())
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StorageError> {
        self.bounded(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT count(*)::BIGINT, pg_total_relation_size('keygate_kv')::BIGINT FROM keygate_kv",
                    &[],
                )
                .await
                .map_err(|e| backend(&e))?;
            let (keys, bytes): (i64, i64) = (row.get(0), row.get(1));
            Ok(StoreStats {
                keys: keys.max(0) as u64,
                bytes_on_disk: bytes.max(0) as u64,
            })
        })
        .await
    }
}

/// Runs its closure when dropped (an operation counted however it ends).
struct Finish<F: FnMut()>(F);

impl<F: FnMut()> Drop for Finish<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// The follower's bounds.
#[derive(Clone, Copy)]
struct FollowTimes {
    /// A change-log query that takes longer ends the connection (a dead link).
    query: Duration,
    /// Rows older than this are pruned.
    retention: Duration,
}

/// Follows the change log from its own connection and delivers each row once, in order.
async fn follow<T>(
    pg: tokio_postgres::Config,
    tls: T,
    events: broadcast::Sender<Vec<u8>>,
    delivered: Arc<AtomicI64>,
    pool: Pool,
    counters: Arc<Counters>,
    times: FollowTimes,
) where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send + Sync,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut last_prune = tokio::time::Instant::now();
    loop {
        let (client, mut connection) = match tokio::time::timeout(
            times.query,
            pg.connect(tls.clone()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %describe(&e), "change-log follower cannot connect; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                tracing::warn!("change-log follower: the database did not answer; retrying");
                continue;
            }
        };
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = wake_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        match tokio::time::timeout(times.query, client.batch_execute("LISTEN keygate_changes"))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %describe(&e), "LISTEN failed; following the change log by polling");
            }
            Err(_) => {
                tracing::warn!(
                    "change-log follower: the database did not answer LISTEN; reconnecting"
                );
                driver.abort();
                continue;
            }
        }
        loop {
            match tokio::time::timeout(
                times.query,
                catch_up(&client, &events, &delivered, &counters),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %describe(&e), "change-log follower lost its connection; reconnecting");
                    break;
                }
                Err(_) => {
                    tracing::warn!(timeout = ?times.query, "change-log follower: the database did not answer; reconnecting");
                    break;
                }
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                if tokio::time::timeout(times.query, prune(&pool, times.retention))
                    .await
                    .is_err()
                {
                    tracing::warn!("pruning the change log did not finish in time");
                }
            }
            if driver.is_finished() {
                break;
            }
            tokio::select! {
                _ = wake.recv() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        driver.abort();
    }
}

async fn catch_up(
    client: &tokio_postgres::Client,
    events: &broadcast::Sender<Vec<u8>>,
    delivered: &AtomicI64,
    counters: &Counters,
) -> Result<(), tokio_postgres::Error> {
    loop {
        let from = delivered.load(Ordering::Relaxed);
        let rows = client
            .query(
                "SELECT seq, payload,
                        (extract(epoch FROM clock_timestamp() - at) * 1000)::BIGINT
                 FROM keygate_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&from, &CHANGE_BATCH],
            )
            .await?;
        let n = rows.len() as i64;
        for r in rows {
            let seq: i64 = r.get(0);
            if seq != delivered.load(Ordering::Relaxed) + 1 {
                tracing::error!(
                    expected = delivered.load(Ordering::Relaxed) + 1,
                    found = seq,
                    "change log has a gap (rows pruned while this replica was cut off): open Watch streams are ended so their clients re-read"
                );
                let _ = events.send(super::RESYNC.to_vec());
            }
            // no subscriber is not an error
            let _ = events.send(r.get(1));
            delivered.store(seq, Ordering::Relaxed);
            counters.change_lag_ms.store(r.get(2), Ordering::Relaxed);
        }
        if n < CHANGE_BATCH {
            return Ok(());
        }
    }
}

async fn prune(pool: &Pool, retention: Duration) {
    let Ok(client) = pool.get().await else {
        return;
    };
    let secs = retention.as_secs_f64();
    if let Err(e) = client
        .execute(
            "DELETE FROM keygate_changes WHERE at < now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await
    {
        tracing::warn!(error = %describe(&e), "pruning the change log failed");
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
