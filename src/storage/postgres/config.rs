//! `[storage] backend = "postgres"`: where the database is and how keygate talks to it. The
//! URL never holds a password (it is read from `password_file` or `PGPASSWORD`).
use std::path::PathBuf;
use std::time::Duration;

/// TLS to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// rustls (aws-lc-rs): the server certificate must chain to `ca_file` (or, without one, the
    /// system trust store) and name the URL's host.
    VerifyFull {
        /// The database's CA (PEM).
        ca_file: Option<PathBuf>,
    },
    /// Plain TCP: only to a loopback host (development and tests).
    DangerousDisable,
}

/// A checked PostgreSQL storage config.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// `postgres://USER@HOST:PORT/DB` (no password).
    pub url: String,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// TLS mode.
    pub tls: PgTls,
    /// Most connections in the pool.
    pub pool_size: usize,
    /// TCP connect and TLS handshake bound.
    pub connect_timeout: Duration,
    /// Server-side bound on every statement (`statement_timeout`).
    pub statement_timeout: Duration,
    /// Client-side bound on every storage operation, waiting for a connection included: what
    /// a black-holed database (no answer at all) costs a call before it fails.
    pub operation_timeout: Duration,
    /// How long the change log keeps a change: a replica cut off longer than this resyncs
    /// (its Watch streams end with DATA_LOSS).
    pub change_log_retention: Duration,
}

/// Default [`PgConfig::operation_timeout`]: a call fails within 5 s when the database is gone.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(4);
/// Default [`PgConfig::change_log_retention`].
pub const DEFAULT_CHANGE_LOG_RETENTION: Duration = Duration::from_secs(3600);

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.url)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("change_log_retention", &self.change_log_retention)
            .finish()
    }
}

/// Why a PostgreSQL storage config is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgConfigError {
    /// Not a `postgres://` URL tokio-postgres understands.
    #[error("not a postgres://USER@HOST:PORT/DB URL: {0}")]
    Url(String),
    /// A password in the URL (it would sit in the config file and the logs).
    #[error("a password in the URL is refused; use password_file or PGPASSWORD")]
    PasswordInUrl,
    /// No user.
    #[error("name the user (postgres://USER@HOST/DB)")]
    NoUser,
    /// No database name.
    #[error("name the database (postgres://USER@HOST/DB)")]
    NoDatabase,
    /// Plain TCP to a host that is not loopback.
    #[error("\"dangerous_disable\" is only allowed to a loopback host (127.0.0.1, ::1, localhost); use \"verify-full\"")]
    PlainToRemote,
    /// An unknown TLS mode.
    #[error("{0:?} is not \"verify-full\" or \"dangerous_disable\"")]
    TlsMode(String),
    /// `ca_file` without verify-full.
    #[error("only used with tls = \"verify-full\"")]
    CaWithoutTls,
    /// Pool size out of range.
    #[error("must be between 1 and 1024")]
    PoolSize,
}

fn is_loopback(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Tcp(h) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false)
        }
        // a unix socket is local by construction
        tokio_postgres::config::Host::Unix(_) => true,
    }
}

impl PgConfig {
    /// Checks `url` and the TLS mode (`tls`: `verify-full` or `dangerous_disable`).
    pub fn check(
        url: &str,
        password_file: Option<PathBuf>,
        tls: &str,
        ca_file: Option<PathBuf>,
        pool_size: usize,
        connect_timeout: Duration,
        statement_timeout: Duration,
    ) -> Result<Self, PgConfigError> {
        let parsed: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgConfigError::Url(e.to_string()))?;
        if parsed.get_password().is_some() {
            return Err(PgConfigError::PasswordInUrl);
        }
        if parsed.get_user().is_none() {
            return Err(PgConfigError::NoUser);
        }
        if parsed.get_dbname().is_none() {
            return Err(PgConfigError::NoDatabase);
        }
        let tls = match tls {
            "verify-full" => PgTls::VerifyFull { ca_file },
            "dangerous_disable" => {
                if ca_file.is_some() {
                    return Err(PgConfigError::CaWithoutTls);
                }
                if !parsed.get_hosts().iter().all(is_loopback) || parsed.get_hosts().is_empty() {
                    return Err(PgConfigError::PlainToRemote);
                }
                PgTls::DangerousDisable
            }
            other => return Err(PgConfigError::TlsMode(other.chars().take(50).collect())),
        };
        if !(1..=1024).contains(&pool_size) {
            return Err(PgConfigError::PoolSize);
        }
        Ok(Self {
            url: url.to_string(),
            password_file,
            tls,
            pool_size,
            connect_timeout,
            statement_timeout,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            change_log_retention: DEFAULT_CHANGE_LOG_RETENTION,
        })
    }

    /// Sets the client-side bound on every storage operation.
    pub fn with_operation_timeout(mut self, d: Duration) -> Self {
        self.operation_timeout = d;
        self
    }

    /// Sets how long the change log keeps changes.
    pub fn with_change_log_retention(mut self, d: Duration) -> Self {
        self.change_log_retention = d;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, tls: &str) -> Result<PgConfig, PgConfigError> {
        PgConfig::check(
            url,
            None,
            tls,
            None,
            8,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
    }

    #[test]
    fn urls_and_tls_modes() {
        assert!(check("postgres://kg@127.0.0.1:5432/kg", "dangerous_disable").is_ok());
        assert!(check("postgres://kg@db.example:5432/kg", "verify-full").is_ok());
        assert_eq!(
            check("postgres://kg:hunter2@127.0.0.1/kg", "verify-full").map(|_| ()),
            Err(PgConfigError::PasswordInUrl)
        );
        assert_eq!(
            check("postgres://kg@db.example/kg", "dangerous_disable").map(|_| ()),
            Err(PgConfigError::PlainToRemote)
        );
        assert_eq!(
            check("postgres://127.0.0.1/kg", "verify-full").map(|_| ()),
            Err(PgConfigError::NoUser)
        );
        assert_eq!(
            check("postgres://kg@127.0.0.1", "verify-full").map(|_| ()),
            Err(PgConfigError::NoDatabase)
        );
        assert!(matches!(
            check("postgres://kg@127.0.0.1/kg", "prefer"),
            Err(PgConfigError::TlsMode(_))
        ));
        assert!(matches!(
            check("mysql://x", "verify-full"),
            Err(PgConfigError::Url(_))
        ));
    }
}
