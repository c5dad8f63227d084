//! [`AuditTable`] on PostgreSQL (migration 2): `keygate_audit (node, seq, kind, line)`, one
//! chain per node, a batch one multi-row INSERT (one transaction, synchronous commit), and
//! `keygate_audit_quarantine` for lines a restart set aside. Every operation is bounded by
//! `operation_timeout` like the store's.
use super::{backend, pool_error, PgStorage};
use crate::storage::audit_table::{AuditTable, Line, Row};
use crate::storage::StorageError;

fn text(e: StorageError) -> String {
    e.to_string()
}

fn lines(rows: Vec<tokio_postgres::Row>) -> Vec<Line> {
    rows.into_iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1)))
        .collect()
}

#[async_trait::async_trait]
impl AuditTable for PgStorage {
    async fn append(&self, node: &str, rows: &[Row]) -> Result<(), String> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq as i64).collect();
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
        let body: Vec<&str> = rows.iter().map(|r| r.line.as_str()).collect();
        self.bounded(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO keygate_audit (node, seq, kind, line)
                     SELECT $1, s, k, l FROM unnest($2::BIGINT[], $3::TEXT[], $4::TEXT[]) AS b(s, k, l)",
                )
                .await
                .map_err(|e| backend(&e))?;
            client
                .execute(&stmt, &[&node, &seqs, &kinds, &body])
                .await
                .map_err(|e| backend(&e))?;
            Ok(())
        })
        .await
        .map_err(text)
    }

    async fn last(&self, node: &str) -> Result<Option<Line>, String> {
        self.bounded(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT seq, line FROM keygate_audit WHERE node = $1 ORDER BY seq DESC LIMIT 1",
                    &[&node],
                )
                .await
                .map_err(|e| backend(&e))?;
            Ok(lines(rows).pop())
        })
        .await
        .map_err(text)
    }

    async fn tail(&self, node: &str) -> Result<Vec<Line>, String> {
        self.bounded(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT seq, line FROM keygate_audit
                     WHERE node = $1 AND seq >= COALESCE(
                         (SELECT max(seq) FROM keygate_audit
                          WHERE node = $1 AND kind IN ('checkpoint', 'key_rotation')), 0)
                     ORDER BY seq",
                    &[&node],
                )
                .await
                .map_err(|e| backend(&e))?;
            Ok(lines(rows))
        })
        .await
        .map_err(text)
    }

    async fn read(&self, node: &str, after: u64, limit: usize) -> Result<Vec<Line>, String> {
        let (after, limit) = (after as i64, limit as i64);
        self.bounded(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT seq, line FROM keygate_audit WHERE node = $1 AND seq > $2
                     ORDER BY seq LIMIT $3",
                    &[&node, &after, &limit],
                )
                .await
                .map_err(|e| backend(&e))?;
            Ok(lines(rows))
        })
        .await
        .map_err(text)
    }

    async fn nodes(&self) -> Result<Vec<String>, String> {
        self.bounded(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query("SELECT DISTINCT node FROM keygate_audit ORDER BY node", &[])
                .await
                .map_err(|e| backend(&e))?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
        .await
        .map_err(text)
    }

    async fn quarantine(&self, node: &str, from: u64) -> Result<u64, String> {
        let from = from as i64;
        self.bounded(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let t = client.transaction().await.map_err(|e| backend(&e))?;
            t.execute(
                "INSERT INTO keygate_audit_quarantine (node, seq, line)
                 SELECT node, seq, line FROM keygate_audit WHERE node = $1 AND seq >= $2",
                &[&node, &from],
            )
            .await
            .map_err(|e| backend(&e))?;
            let n = t
                .execute(
                    "DELETE FROM keygate_audit WHERE node = $1 AND seq >= $2",
                    &[&node, &from],
                )
                .await
                .map_err(|e| backend(&e))?;
            t.commit().await.map_err(|e| backend(&e))?;
            Ok(n)
        })
        .await
        .map_err(text)
    }
}
