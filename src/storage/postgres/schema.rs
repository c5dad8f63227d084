//! The schema keygate keeps in PostgreSQL, created and migrated by keygate itself. Migrations
//! are numbered and run in one transaction under an advisory lock, so replicas starting together
//! migrate once.
//!
//! Rollback: every migration declares the oldest schema version whose keygate keeps working on
//! the schema it makes (`compatible_from`, stored beside the version). A keygate that finds a
//! newer schema runs on it, without migrating, when its own version is at least that — so after
//! an upgrade whose migration is additive, the previous release still runs (a rollback needs no
//! database restore) — and refuses to start otherwise, naming both versions. Rule for new
//! migrations: additive changes (a table, a nullable column, an index) declare
//! `compatible_from = version - 1`; anything an older keygate would misread declares `version`.
use tokio_postgres::Client;

/// The schema version this build creates and understands.
pub const VERSION: i32 = 2;

/// Advisory lock key of the migration step ("keygate" in ASCII).
const MIGRATION_LOCK: i64 = 0x006b_6579_6761_7465;

/// One numbered migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Plain SQL of the subset CockroachDB and YugabyteDB accept; only the advisory lock around
    /// migrations and LISTEN/NOTIFY are PostgreSQL-specific.
    pub sql: &'static str,
    /// The oldest schema version whose keygate works on the schema this migration makes.
    pub compatible_from: i32,
}

/// Migration `i + 1`.
const MIGRATIONS: [Migration; VERSION as usize] = [
    // 1: the ordered key-value table, the change log and its sequence row
    Migration {
        sql: "CREATE TABLE keygate_kv (
         k BYTEA PRIMARY KEY,
         v BYTEA NOT NULL
     );
     CREATE TABLE keygate_changes (
         seq BIGINT PRIMARY KEY,
         payload BYTEA NOT NULL,
         at TIMESTAMPTZ NOT NULL DEFAULT now()
     );
     CREATE TABLE keygate_change_seq (
         id INT PRIMARY KEY,
         seq BIGINT NOT NULL
     );
     INSERT INTO keygate_change_seq (id, seq) VALUES (1, 0);",
        compatible_from: 1,
    },
    // 2: the audit log's chains (`[audit] store = "postgres"`) and the lines a restart set
    // aside; additive, so schema-1 keygates keep running on it
    Migration {
        sql: "CREATE TABLE keygate_audit (
         node TEXT NOT NULL,
         seq BIGINT NOT NULL,
         kind TEXT NOT NULL,
         line TEXT NOT NULL,
         PRIMARY KEY (node, seq)
     );
     CREATE INDEX keygate_audit_signed ON keygate_audit (node, seq)
         WHERE kind IN ('checkpoint', 'key_rotation');
     CREATE TABLE keygate_audit_quarantine (
         node TEXT NOT NULL,
         seq BIGINT NOT NULL,
         line TEXT NOT NULL,
         set_aside TIMESTAMPTZ NOT NULL DEFAULT now(),
         PRIMARY KEY (node, seq, set_aside)
     );",
        compatible_from: 1,
    },
];

/// The migrations this build knows: its own, and in test builds the test-only migration that
/// plays the next release (`KEYGATE_TEST_SCHEMA_AHEAD=compatible|incompatible`).
fn known() -> Vec<Migration> {
    let mut m = MIGRATIONS.to_vec();
    if let Some(next) = test_ahead() {
        m.push(next);
    }
    m
}

#[cfg(feature = "test-hooks")]
fn test_ahead() -> Option<Migration> {
    let compatible_from = match std::env::var("KEYGATE_TEST_SCHEMA_AHEAD").ok()?.as_str() {
        "compatible" => VERSION,
        "incompatible" => VERSION + 1,
        _ => return None,
    };
    Some(Migration {
        sql: "CREATE TABLE keygate_test_ahead (id INT PRIMARY KEY, note TEXT)",
        compatible_from,
    })
}

#[cfg(not(feature = "test-hooks"))]
fn test_ahead() -> Option<Migration> {
    None
}

/// Why the schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database holds a schema from a newer keygate that this one cannot run on.
    #[error("the database schema is version {found}, which needs keygate schema version {compatible_from} or newer; this keygate knows version {known}: upgrade keygate (or point it at another database)")]
    Newer {
        /// The version in the database.
        found: i32,
        /// The oldest version that works on it.
        compatible_from: i32,
        /// This build's version.
        known: i32,
    },
    /// A statement failed.
    #[error("migrating the schema: {0}")]
    Sql(#[source] tokio_postgres::Error),
}

/// Creates or migrates the schema to this build's version, or runs on a newer compatible one;
/// returns the version now in the database.
pub async fn migrate(client: &mut Client) -> Result<i32, SchemaError> {
    let migrations = known();
    let known = migrations.len() as i32;
    let txn = client.transaction().await.map_err(SchemaError::Sql)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(SchemaError::Sql)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS keygate_schema (
             id INT PRIMARY KEY,
             version INT NOT NULL
         );
         ALTER TABLE keygate_schema ADD COLUMN IF NOT EXISTS compatible_from INT NOT NULL DEFAULT 1",
    )
    .await
    .map_err(SchemaError::Sql)?;
    let (found, compatible_from): (i32, i32) = txn
        .query_opt(
            "SELECT version, compatible_from FROM keygate_schema WHERE id = 1",
            &[],
        )
        .await
        .map_err(SchemaError::Sql)?
        .map(|r| (r.get(0), r.get(1)))
        .unwrap_or((0, 0));
    if found > known {
        if compatible_from > known {
            return Err(SchemaError::Newer {
                found,
                compatible_from,
                known,
            });
        }
        tracing::warn!(
            schema = found,
            known,
            compatible_from,
            "the database schema is newer than this keygate and declared compatible with it: running on it without migrating (a rollback)"
        );
        txn.commit().await.map_err(SchemaError::Sql)?;
        return Ok(found);
    }
    for (i, m) in migrations.iter().enumerate().skip(found as usize) {
        tracing::info!(version = i + 1, "migrating the keygate schema");
        txn.batch_execute(m.sql).await.map_err(SchemaError::Sql)?;
    }
    let compatible_from = migrations.last().map(|m| m.compatible_from).unwrap_or(1);
    txn.execute(
        "INSERT INTO keygate_schema (id, version, compatible_from) VALUES (1, $1, $2)
         ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version,
                                        compatible_from = EXCLUDED.compatible_from",
        &[&known, &compatible_from],
    )
    .await
    .map_err(SchemaError::Sql)?;
    txn.commit().await.map_err(SchemaError::Sql)?;
    Ok(known)
}
/// The version in the database, without changing anything.
pub async fn version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT version FROM keygate_schema WHERE id = 1", &[])
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0))
}
