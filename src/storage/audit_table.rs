//! The seam a database keeps audit chains through (`[audit] store = "postgres"`): each
//! replica's chain is its rows `(node, seq, kind, line)`, the same lines, hashes and signatures
//! as the audit files, and one batch is one transaction, committed (synchronously replicated
//! where the database is) before any request of the batch is answered. `audit::writer` writes
//! through it; `storage::postgres` implements it. It lives here, not in `audit`, so storage
//! does not depend on the audit log.

/// One line of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Sequence number in its node's chain.
    pub seq: u64,
    /// The record's kind (`request`, `checkpoint`, …), for finding signed records quickly.
    pub kind: &'static str,
    /// The line, exactly the bytes the chain hashes.
    pub line: String,
}

/// Lines read back: sequence number and line.
pub type Line = (u64, String);

/// Where chains live in a database. Errors are descriptions without record contents.
#[async_trait::async_trait]
pub trait AuditTable: Send + Sync {
    /// Appends one batch of `node`'s chain (consecutive sequence numbers) in one transaction;
    /// durable when it returns `Ok`. A row that exists already fails the whole batch.
    async fn append(&self, node: &str, rows: &[Row]) -> Result<(), String>;
    /// The last line of `node`'s chain.
    async fn last(&self, node: &str) -> Result<Option<Line>, String>;
    /// `node`'s lines from its last checkpoint or key rotation on (every line when it has
    /// none), oldest first: what a restart checks.
    async fn tail(&self, node: &str) -> Result<Vec<Line>, String>;
    /// At most `limit` of `node`'s lines after sequence number `after`, oldest first.
    async fn read(&self, node: &str, after: u64, limit: usize) -> Result<Vec<Line>, String>;
    /// The nodes that have a chain, sorted.
    async fn nodes(&self) -> Result<Vec<String>, String>;
    /// Moves `node`'s lines from `from` on into the quarantine table (set aside at a restart,
    /// never signed); returns how many moved.
    async fn quarantine(&self, node: &str, from: u64) -> Result<u64, String>;
}

/// Every line of `node`'s chain, oldest first, read in pages.
pub async fn all_lines(table: &dyn AuditTable, node: &str) -> Result<Vec<Line>, String> {
    const PAGE: usize = 10_000;
    let mut out: Vec<Line> = Vec::new();
    loop {
        let after = out.last().map(|l| l.0).unwrap_or(0);
        let page = table.read(node, after, PAGE).await?;
        let n = page.len();
        out.extend(page);
        if n < PAGE {
            return Ok(out);
        }
    }
}
