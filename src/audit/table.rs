//! The audit log kept in a database table (`[audit] store = "postgres"`): the
//! [`AuditTable`] seam (defined beside the storage backends that implement it) and the kind
//! names its rows carry.
use super::record::Kind;
pub use crate::storage::audit_table::{all_lines, AuditTable, Line, Row};

/// The kind's name as records spell it.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Request => "request",
        Kind::Checkpoint => "checkpoint",
        Kind::Recovery => "recovery",
        Kind::KeyRotation => "key_rotation",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::record::Record;
    use crate::audit::verify::verify_lines;
    use crate::audit::writer::{AuditWriter, WriterConfig};
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// How the next append fails.
    #[derive(Clone, Copy, PartialEq)]
    enum Fail {
        None,
        /// Nothing is written.
        Before,
        /// The rows are committed, but the answer is lost (the connection dropped).
        AfterCommit,
    }

    /// A chain table in memory, with one-shot faults.
    struct MemTable {
        rows: Mutex<BTreeMap<u64, (&'static str, String)>>,
        quarantined: Mutex<Vec<(u64, String)>>,
        fail: Mutex<Fail>,
    }

    #[async_trait::async_trait]
    impl AuditTable for MemTable {
        async fn append(&self, _node: &str, rows: &[Row]) -> Result<(), String> {
            let fail = std::mem::replace(&mut *self.fail.lock().unwrap(), Fail::None);
            if fail == Fail::Before {
                return Err("connection refused".into());
            }
            let mut t = self.rows.lock().unwrap();
            if rows.iter().any(|r| t.contains_key(&r.seq)) {
                return Err("duplicate key".into());
            }
            for r in rows {
                t.insert(r.seq, (r.kind, r.line.clone()));
            }
            match fail {
                Fail::AfterCommit => Err("connection reset".into()),
                _ => Ok(()),
            }
        }
        async fn last(&self, _node: &str) -> Result<Option<Line>, String> {
            let t = self.rows.lock().unwrap();
            Ok(t.iter().next_back().map(|(s, (_, l))| (*s, l.clone())))
        }
        async fn tail(&self, _node: &str) -> Result<Vec<Line>, String> {
            let t = self.rows.lock().unwrap();
            let from = t
                .iter()
                .rev()
                .find(|(_, (k, _))| matches!(*k, "checkpoint" | "key_rotation"))
                .map(|(s, _)| *s)
                .unwrap_or(0);
            Ok(t.range(from..).map(|(s, (_, l))| (*s, l.clone())).collect())
        }
        async fn read(&self, _node: &str, after: u64, limit: usize) -> Result<Vec<Line>, String> {
            let t = self.rows.lock().unwrap();
            Ok(t.range(after + 1..)
                .take(limit)
                .map(|(s, (_, l))| (*s, l.clone()))
                .collect())
        }
        async fn nodes(&self) -> Result<Vec<String>, String> {
            Ok(vec!["n1".into()])
        }
        async fn quarantine(&self, _node: &str, from: u64) -> Result<u64, String> {
            let mut t = self.rows.lock().unwrap();
            let moved = t.split_off(&from);
            let n = moved.len() as u64;
            self.quarantined
                .lock()
                .unwrap()
                .extend(moved.into_iter().map(|(s, (_, l))| (s, l)));
            Ok(n)
        }
    }

    fn cfg() -> WriterConfig {
        WriterConfig {
            dir: "/nonexistent/keygate-audit-table-test".into(),
            segment_bytes: 1 << 20,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(3600),
            write_deadline: Duration::from_secs(5),
            node: "n1".into(),
            sink: None,
            sink_queue: 0,
            head_file: None,
        }
    }

    fn rec(i: u64) -> Record {
        let mut r = Record::new(Kind::Request);
        r.request_id = Some(format!("req-{i}"));
        r.resources = vec![format!("secret:app/{i}")];
        r
    }

    async fn open(table: &Arc<MemTable>, pkcs8: &[u8]) -> AuditWriter {
        AuditWriter::open_on_table(
            cfg(),
            Ed25519KeyPair::from_pkcs8(pkcs8).unwrap(),
            Arc::new(crate::clock::SystemClock),
            table.clone(),
        )
        .await
        .unwrap()
    }

    fn lines(table: &MemTable) -> Vec<Vec<u8>> {
        let t = table.rows.lock().unwrap();
        t.values().map(|(_, l)| l.clone().into_bytes()).collect()
    }

    fn request_ids(table: &MemTable) -> Vec<String> {
        lines(table)
            .iter()
            .filter_map(|l| serde_json::from_slice::<Record>(l).ok())
            .filter_map(|r| r.request_id)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_batch_whose_commit_is_unknown_is_followed_by_an_unbroken_chain() {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let pk = Ed25519KeyPair::from_pkcs8(doc.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let table = Arc::new(MemTable {
            rows: Mutex::default(),
            quarantined: Mutex::default(),
            fail: Mutex::new(Fail::None),
        });
        let w = open(&table, doc.as_ref()).await;
        w.append(rec(1)).await.unwrap();
        // the commit happened but its answer was lost: the request fails…
        *table.fail.lock().unwrap() = Fail::AfterCommit;
        assert!(w.append(rec(2)).await.is_err());
        // …and the next batch continues from the row that is there, not from a stale head
        w.append(rec(3)).await.unwrap();
        // nothing was written at all: the next batch reuses the sequence numbers
        *table.fail.lock().unwrap() = Fail::Before;
        assert!(w.append(rec(4)).await.is_err());
        w.append(rec(5)).await.unwrap();
        w.close().await;
        let report = verify_lines(&lines(&table), 0, &pk).unwrap();
        assert_eq!(report.records, lines(&table).len() as u64);
        assert_eq!(request_ids(&table), ["req-1", "req-2", "req-3", "req-5"]);

        // a restart takes the chain on; a forged unsealed row after the last seal is set
        // aside in quarantine, never signed, and verify names it
        let (last, _) = table.last("n1").await.unwrap().unwrap();
        let mut forged = rec(99);
        forged.seq = last + 1;
        forged.node = "n1".into();
        let forged = serde_json::to_string(&forged).unwrap();
        table
            .rows
            .lock()
            .unwrap()
            .insert(last + 1, ("request", forged.clone()));
        let w = open(&table, doc.as_ref()).await;
        w.append(rec(6)).await.unwrap();
        w.close().await;
        assert_eq!(
            table.quarantined.lock().unwrap().clone(),
            vec![(last + 1, forged)]
        );
        assert!(matches!(
            verify_lines(&lines(&table), 0, &pk),
            Err(crate::audit::verify::Fault::UnverifiedAtRestart { seq, to }) if seq == last + 1 && to == last + 1
        ));
        let ids = request_ids(&table);
        assert!(!ids.contains(&"req-99".to_string()), "{ids:?}");
        assert_eq!(ids.last().map(String::as_str), Some("req-6"));
    }
}
