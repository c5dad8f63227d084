//! Databases keygate administers: short-lived PostgreSQL users behind leases, and the
//! connections static-role rotation uses.
//!
//! Passwords never reach the database in plaintext: keygate sends a SCRAM-SHA-256 verifier
//! (`PASSWORD 'SCRAM-SHA-256$…'`), so no statement log, `pg_stat_statements` row or error
//! message on the server can hold a usable password.
//!
//! A generated user's lease is written before the user is created and marked `dropped` only
//! after the revocation statements ran, so a crash at any point leaves at most a lease whose
//! user is dropped by the next sweep — never a user nobody will drop.
pub mod config;
pub mod template;

use crate::clock::Clock;
use crate::credential::lease::{DbLease, Lease, LeaseStore};
use crate::secrets::SecretStore;
use crate::sensitive::SecretBytes;
use config::{DatabaseConfig, DbRole};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use template::{pg_timestamp, render, Values};

/// What database operations fail with. Messages hold no password or verifier.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No `[[databases.roles]]` entry has this name.
    #[error("database role {0:?} is not configured")]
    UnknownRole(String),
    /// No `[[databases]]` entry has this name.
    #[error("database {0:?} is not configured")]
    UnknownDatabase(String),
    /// The database cannot be reached or refused keygate's admin login.
    #[error("database {database:?} is unavailable: {message}")]
    Unavailable {
        /// Which database.
        database: String,
        /// Why (the server's or the network's message).
        message: String,
    },
    /// A statement failed.
    #[error("database {database:?}: statement {index} of {what} failed: {message}")]
    Statement {
        /// Which database.
        database: String,
        /// creation, revocation, renewal, rotation.
        what: &'static str,
        /// 1-based statement number.
        index: usize,
        /// The server's message.
        message: String,
    },
    /// The admin password secret cannot be read.
    #[error("database {database:?}: admin password secret: {message}")]
    Secret {
        /// Which database.
        database: String,
        /// Why.
        message: String,
    },
    /// A lease problem (missing, revoked, expired).
    #[error("{0}")]
    Lease(String),
    /// The lease store failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A statement template problem.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// A user name or password could not be generated.
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
}

/// A generated user handed to a caller.
#[derive(Debug)]
pub struct Generated {
    /// User name.
    pub username: String,
    /// Its password (only here, once).
    pub password: SecretBytes,
    /// Its lease.
    pub lease: Lease,
}

/// The configured databases.
pub struct Databases {
    configs: RwLock<Arc<Vec<DatabaseConfig>>>,
    store: Arc<SecretStore>,
    leases: LeaseStore,
    clock: Arc<dyn Clock>,
}

/// Lease-id prefix of generated users: `db:<role>/<username>`.
pub const LEASE_PREFIX: &str = "db:";

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A unique user name: `kg_<role>_<random>`, only `a-z 0-9 _`, at most 63 bytes.
pub fn new_username(role: &str) -> Result<String, DbError> {
    let clean: String = role
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect::<String>()
        .to_ascii_lowercase();
    let suffix = crate::generate::random_bytes(8, crate::generate::Encoding::Hex)?;
    let suffix = String::from_utf8_lossy(suffix.expose()).into_owned();
    let name = format!("kg_{clean}_{suffix}");
    Ok(name.chars().take(config::MAX_NAME_LEN).collect())
}

/// A SCRAM-SHA-256 verifier of `password` (what PostgreSQL stores; not usable to log in).
pub fn scram_verifier(password: &SecretBytes) -> String {
    postgres_protocol::password::scram_sha_256(password.expose())
}

impl Databases {
    /// Over the configured databases; leases live in the same store as credential leases.
    pub fn new(
        configs: Vec<DatabaseConfig>,
        store: Arc<SecretStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let leases = LeaseStore::new(store.storage().clone(), clock.clone());
        Self::with_leases(configs, store, clock, leases)
    }

    /// Over the credentials' own lease store: a credential issued a moment ago (its lease
    /// still pending in the write-behind batch) may ask for a user at once.
    pub fn with_leases(
        configs: Vec<DatabaseConfig>,
        store: Arc<SecretStore>,
        clock: Arc<dyn Clock>,
        leases: LeaseStore,
    ) -> Self {
        Self {
            configs: RwLock::new(Arc::new(configs)),
            leases,
            store,
            clock,
        }
    }

    /// Replaces the configuration (config reload). Existing leases keep working as long as their
    /// database stays configured.
    pub fn set_configs(&self, configs: Vec<DatabaseConfig>) {
        if let Ok(mut c) = self.configs.write() {
            *c = Arc::new(configs);
        }
    }

    /// The configured databases.
    pub fn configs(&self) -> Arc<Vec<DatabaseConfig>> {
        match self.configs.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Is any database configured?
    pub fn any(&self) -> bool {
        !self.configs().is_empty()
    }

    /// Is a database of this name configured?
    pub fn has_database(&self, name: &str) -> bool {
        self.configs().iter().any(|d| d.name == name)
    }

    /// A role by name.
    pub fn role(&self, name: &str) -> Result<DbRole, DbError> {
        self.configs()
            .iter()
            .flat_map(|d| &d.roles)
            .find(|r| r.name == name)
            .cloned()
            .ok_or_else(|| DbError::UnknownRole(name.to_string()))
    }

    fn database(&self, name: &str) -> Result<DatabaseConfig, DbError> {
        self.configs()
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| DbError::UnknownDatabase(name.to_string()))
    }

    /// An admin connection to a database.
    pub async fn connect(&self, database: &str) -> Result<tokio_postgres::Client, DbError> {
        let db = self.database(database)?;
        let unavailable = |message: String| DbError::Unavailable {
            database: db.name.clone(),
            message,
        };
        let mut cfg: tokio_postgres::Config =
            db.url.parse().map_err(|e| unavailable(format!("{e}")))?;
        cfg.connect_timeout(Duration::from_secs(db.connect_timeout_secs));
        cfg.application_name("keygate");
        if let Some((path, field)) = &db.password_secret {
            let v = self.store.get(path, 0).await.map_err(|e| DbError::Secret {
                database: db.name.clone(),
                message: e.to_string(),
            })?;
            let pw = v.fields.get(field).ok_or_else(|| DbError::Secret {
                database: db.name.clone(),
                message: format!("secret {path:?} has no field {field:?}"),
            })?;
            cfg.password(pw.expose());
        }
        let connect = cfg.connect(tokio_postgres::NoTls);
        let (client, conn) =
            tokio::time::timeout(Duration::from_secs(db.connect_timeout_secs + 1), connect)
                .await
                .map_err(|_| unavailable("connect timed out".into()))?
                .map_err(|e| unavailable(pg_message(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        Ok(client)
    }

    /// Sets the password of an existing role (static-role rotation); sends a SCRAM verifier.
    pub async fn set_password(
        &self,
        database: &str,
        role: &str,
        password: &SecretBytes,
    ) -> Result<(), DbError> {
        let verifier = scram_verifier(password);
        self.run(
            database,
            "rotation",
            &["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'".to_string()],
            &Values {
                name: role,
                password: Some(&verifier),
                expiration: None,
            },
        )
        .await
    }

    /// Logs in as `user` with `password` and runs `SELECT 1`: proves the password works.
    pub async fn login_test(
        &self,
        database: &str,
        user: &str,
        password: &SecretBytes,
    ) -> Result<(), DbError> {
        let db = self.database(database)?;
        let failed = |message: String| DbError::Statement {
            database: db.name.clone(),
            what: "login test",
            index: 1,
            message,
        };
        let mut cfg: tokio_postgres::Config = db.url.parse().map_err(|e| failed(format!("{e}")))?;
        cfg.user(user);
        cfg.password(password.expose());
        cfg.connect_timeout(Duration::from_secs(db.connect_timeout_secs));
        cfg.application_name("keygate-login-test");
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| failed(pg_message(&e)))?;
        let task = tokio::spawn(conn);
        let r = client.simple_query("SELECT 1").await;
        drop(client);
        let _ = task.await;
        r.map(|_| ()).map_err(|e| failed(pg_message(&e)))
    }

    /// Runs statements in one transaction.
    pub async fn run(
        &self,
        database: &str,
        what: &'static str,
        statements: &[String],
        values: &Values<'_>,
    ) -> Result<(), DbError> {
        let rendered = statements
            .iter()
            .map(|s| render(s, values))
            .collect::<Result<Vec<_>, _>>()?;
        let mut client = self.connect(database).await?;
        let txn = client
            .transaction()
            .await
            .map_err(|e| DbError::Unavailable {
                database: database.to_string(),
                message: pg_message(&e),
            })?;
        for (i, s) in rendered.iter().enumerate() {
            txn.batch_execute(s).await.map_err(|e| DbError::Statement {
                database: database.to_string(),
                what,
                index: i + 1,
                message: pg_message(&e),
            })?;
        }
        txn.commit().await.map_err(|e| DbError::Statement {
            database: database.to_string(),
            what,
            index: rendered.len(),
            message: pg_message(&e),
        })
    }

    /// Creates a user of `role` for `ttl_secs` (0 = the role's default), capped at its max TTL
    /// and at the remaining life of the owning credential's lease: a user never outlives the
    /// credential that asked for it.
    pub async fn generate(
        &self,
        role: &str,
        ttl_secs: u64,
        owner: &str,
        sub: &str,
        src: serde_json::Value,
    ) -> Result<Generated, DbError> {
        let r = self.role(role)?;
        let now = self.clock.now_millis() / 1000;
        let (owner_exp, owner_max) = self.owner_life(owner).await?;
        let max_expires_at = (now + r.max_ttl_secs).min(owner_max);
        let ttl = if ttl_secs == 0 {
            r.default_ttl_secs
        } else {
            ttl_secs.min(r.max_ttl_secs)
        }
        .min(owner_exp.saturating_sub(now));
        if ttl == 0 {
            return Err(DbError::Lease(
                "the asking credential has no lifetime left".into(),
            ));
        }
        let username = new_username(&r.name)?;
        let password =
            crate::generate::password(&crate::generate::PasswordRules::alphanumeric(32))?;
        let lease = Lease {
            lease_id: format!("{LEASE_PREFIX}{}/{username}", r.name),
            role: r.name.clone(),
            sub: sub.to_string(),
            scopes: vec![format!("db:{}", r.name)],
            src,
            issued_at: now,
            expires_at: now + ttl,
            max_expires_at,
            revoked_at: None,
            db: Some(DbLease {
                database: r.database.clone(),
                username: username.clone(),
                owner: owner.to_string(),
                dropped: false,
            }),
        };
        // the lease first: whatever happens next, the sweeper knows the user may exist
        self.leases.create(&lease).await?;
        let verifier = scram_verifier(&password);
        let expiration = pg_timestamp(lease.expires_at);
        let values = Values {
            name: &username,
            password: Some(&verifier),
            expiration: Some(&expiration),
        };
        if let Err(e) = self
            .run(&r.database, "creation", &r.creation, &values)
            .await
        {
            // the transaction rolled back: no user exists
            let _ = self
                .leases
                .update(&lease.lease_id, |l| {
                    l.revoked_at = Some(now);
                    if let Some(d) = l.db.as_mut() {
                        d.dropped = true;
                    }
                    true
                })
                .await;
            return Err(e);
        }
        tracing::info!(role = %r.name, database = %r.database, username = %username, lease_id = %lease.lease_id, ttl, "database user created");
        Ok(Generated {
            username,
            password,
            lease,
        })
    }

    /// Extends a user's lease and its `VALID UNTIL` by `increment` (0 = the role's default),
    /// up to the lease's hard limit.
    pub async fn renew(&self, lease_id: &str, increment: u64) -> Result<Lease, DbError> {
        let lease = self
            .leases
            .get(lease_id)
            .await?
            .ok_or_else(|| DbError::Lease(format!("lease {lease_id:?} not found")))?;
        let db = lease
            .db
            .clone()
            .ok_or_else(|| DbError::Lease("not a database lease".into()))?;
        let now = self.clock.now_millis() / 1000;
        if lease.revoked_at.is_some() || now >= lease.expires_at || db.dropped {
            return Err(DbError::Lease("lease is revoked or expired".into()));
        }
        let inc = if increment == 0 {
            self.role(&lease.role)
                .map(|r| r.default_ttl_secs)
                .unwrap_or(3600)
        } else {
            increment
        };
        let renewal = self
            .role(&lease.role)
            .map(|r| r.renewal)
            .unwrap_or_else(|_| {
                vec!["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'".to_string()]
            });
        // never past the owning credential's current expiry (it may have been renewed too)
        let (owner_exp, _) = self.owner_life(&db.owner).await?;
        let new_exp = now
            .saturating_add(inc)
            .min(lease.max_expires_at)
            .min(owner_exp)
            .max(lease.expires_at);
        let expiration = pg_timestamp(new_exp);
        // the database first: if the lease update then fails, the user outlives its lease by
        // at most the increment and the sweeper still drops it at lease expiry
        self.run(
            &db.database,
            "renewal",
            &renewal,
            &Values {
                name: &db.username,
                password: None,
                expiration: Some(&expiration),
            },
        )
        .await?;
        self.leases
            .update(lease_id, |l| {
                if l.revoked_at.is_some() {
                    return false;
                }
                l.expires_at = l.expires_at.max(new_exp);
                true
            })
            .await?
            .ok_or_else(|| DbError::Lease("lease was revoked meanwhile".into()))
    }

    /// The owning credential's lease expiry and hard limit (`u64::MAX` for an admin owner,
    /// `admin:…`, which has no lease). A revoked or missing owner lease has no life left.
    async fn owner_life(&self, owner: &str) -> Result<(u64, u64), DbError> {
        if owner.starts_with("admin:") {
            return Ok((u64::MAX, u64::MAX));
        }
        Ok(match self.leases.get(owner).await? {
            Some(o) if o.revoked_at.is_none() => (o.expires_at, o.max_expires_at),
            _ => (0, 0),
        })
    }

    /// Is the credential that generated a user revoked, expired or gone?
    async fn owner_gone(&self, owner: &str) -> Result<bool, DbError> {
        let now = self.clock.now_millis() / 1000;
        Ok(now >= self.owner_life(owner).await?.0)
    }

    /// Drops the user of a lease (idempotent) and marks the lease dropped.
    pub async fn drop_user(&self, lease: &Lease) -> Result<(), DbError> {
        let Some(db) = &lease.db else {
            return Ok(());
        };
        if db.dropped {
            return Ok(());
        }
        let revocation = self
            .role(&lease.role)
            .map(|r| r.revocation)
            .unwrap_or_else(|_| config::default_revocation());
        let client = self.connect(&db.database).await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&db.username])
            .await
            .map_err(|e| DbError::Unavailable {
                database: db.database.clone(),
                message: pg_message(&e),
            })?
            .is_some();
        drop(client);
        if exists {
            self.run(
                &db.database,
                "revocation",
                &revocation,
                &Values {
                    name: &db.username,
                    password: None,
                    expiration: None,
                },
            )
            .await?;
        }
        let now = self.clock.now_millis() / 1000;
        self.leases
            .update(&lease.lease_id, |l| {
                l.revoked_at.get_or_insert(now);
                match l.db.as_mut() {
                    Some(d) if !d.dropped => {
                        d.dropped = true;
                        true
                    }
                    _ => false,
                }
            })
            .await?;
        tracing::info!(lease_id = %lease.lease_id, username = %db.username, "database user dropped");
        Ok(())
    }

    /// Drops every user whose lease is revoked or expired, or whose owning credential's lease
    /// is revoked or gone, and not yet dropped. Returns how many were dropped; failures are
    /// logged and retried on the next sweep.
    pub async fn sweep(&self) -> Result<usize, DbError> {
        let now = self.clock.now_millis() / 1000;
        let mut n = 0;
        for l in self.leases.list(LEASE_PREFIX).await? {
            let Some(d) = &l.db else { continue };
            if d.dropped {
                continue;
            }
            let live = l.revoked_at.is_none() && now < l.expires_at;
            if live && !self.owner_gone(&d.owner).await? {
                continue;
            }
            match self.drop_user(&l).await {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(lease_id = %l.lease_id, error = %e, "database user not dropped yet; will retry")
                }
            }
        }
        Ok(n)
    }
}
