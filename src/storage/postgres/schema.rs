//! The schema keygate keeps in PostgreSQL, created and migrated by keygate itself. Migrations
//! are numbered and run in one transaction under an advisory lock, so replicas starting together
//! migrate once; a replica refuses a schema newer than the migrations it knows.
use tokio_postgres::Client;

/// The schema version this build creates and understands.
pub const VERSION: i32 = 1;

/// Advisory lock key of the migration step ("keygate" in ASCII).
const MIGRATION_LOCK: i64 = 0x006b_6579_6761_7465;

/// Migration `i + 1`. Plain SQL of the subset CockroachDB and YugabyteDB accept; only the
/// advisory lock around them and LISTEN/NOTIFY are PostgreSQL-specific.
const MIGRATIONS: [&str; VERSION as usize] = [
    // 1: the ordered key-value table, the change log and its sequence row
    "CREATE TABLE keygate_kv (
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
];

/// Why the schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database holds a schema from a newer keygate.
    #[error("the database schema is version {found}, newer than this keygate knows ({VERSION}); upgrade keygate (or point it at another database)")]
    Newer {
        /// The version in the database.
        found: i32,
    },
    /// A statement failed.
    #[error("migrating the schema: {0}")]
    Sql(#[source] tokio_postgres::Error),
}

/// Creates or migrates the schema to [`VERSION`]; returns the version now in the database.
pub async fn migrate(client: &mut Client) -> Result<i32, SchemaError> {
    let txn = client.transaction().await.map_err(SchemaError::Sql)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(SchemaError::Sql)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS keygate_schema (
             id INT PRIMARY KEY,
             version INT NOT NULL
         )",
    )
    .await
    .map_err(SchemaError::Sql)?;
    let found: i32 = txn
        .query_opt("SELECT version FROM keygate_schema WHERE id = 1", &[])
        .await
        .map_err(SchemaError::Sql)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    if found > VERSION {
        return Err(SchemaError::Newer { found });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(version = i + 1, "migrating the keygate schema");
        txn.batch_execute(sql).await.map_err(SchemaError::Sql)?;
    }
    txn.execute(
        "INSERT INTO keygate_schema (id, version) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
        &[&VERSION],
    )
    .await
    .map_err(SchemaError::Sql)?;
    txn.commit().await.map_err(SchemaError::Sql)?;
    Ok(VERSION)
}

/// The version in the database, without changing anything.
pub async fn version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT version FROM keygate_schema WHERE id = 1", &[])
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0))
}
