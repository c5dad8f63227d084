//! Backups: a point-in-time copy of every stored key (`Storage::snapshot`), and its restore into
//! an empty store of either backend.
//!
//! Format (version 1): the line `KEYGATE-BACKUP 1`, one line of JSON ([`Header`]: when, from
//! which backend and schema, under which KEK, how many entries, the SHA-256 of the body), then
//! the body: per entry a 4-byte big-endian key length, the key, a 4-byte big-endian value
//! length, the value. Secret values are in it as stored — sealed under data keys wrapped by the
//! KEK — so a backup is useless without the KEK, and the KEK is never in it; paths, metadata and
//! lease records are in it in the clear (keep backups as private as the database).
use crate::storage::{Storage, StorageError, Txn};
use serde::{Deserialize, Serialize};

/// Stored keys and values, ascending.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

const MAGIC: &[u8] = b"KEYGATE-BACKUP 1\n";
/// Entries written per restore transaction.
const RESTORE_BATCH: usize = 500;

/// What a backup says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// Milliseconds since the epoch.
    pub created_at: u64,
    /// The backend it was taken from.
    pub backend: String,
    /// That backend's schema version (0: none).
    pub schema_version: i32,
    /// The KEK every data key in it is wrapped with.
    pub kek_id: String,
    /// Entries in the body.
    pub entries: u64,
    /// SHA-256 of the body, hex.
    pub sha256: String,
}

/// Why a backup cannot be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not a keygate backup, or of another format version.
    #[error("not a keygate backup (version 1)")]
    NotABackup,
    /// The header line does not parse.
    #[error("the backup's header does not parse: {0}")]
    Header(String),
    /// The body is cut short or its digest differs: damaged or altered.
    #[error("the backup is damaged or altered: {0}")]
    Damaged(&'static str),
    /// The store to restore into holds data.
    #[error("the store to restore into is not empty ({0} keys): restore only into a new store")]
    NotEmpty(usize),
    /// The configured KEK is not the backup's.
    #[error("the backup is encrypted under KEK {backup}, the config names KEK {configured}: point kek.file at the KEK the backup was taken with")]
    WrongKek {
        /// The backup's.
        backup: String,
        /// The config's.
        configured: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn sha256_hex(body: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body).as_ref())
}

/// Encodes `entries` as a backup file.
pub fn encode(
    entries: &[(Vec<u8>, Vec<u8>)],
    created_at: u64,
    backend: &str,
    schema_version: i32,
    kek_id: &str,
) -> Vec<u8> {
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut body = Vec::with_capacity(size);
    for (k, v) in entries {
        body.extend_from_slice(&(k.len() as u32).to_be_bytes());
        body.extend_from_slice(k);
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v);
    }
    let header = Header {
        created_at,
        backend: backend.to_string(),
        schema_version,
        kek_id: kek_id.to_string(),
        entries: entries.len() as u64,
        sha256: sha256_hex(&body),
    };
    let mut out = MAGIC.to_vec();
    // a struct of strings and numbers always serializes
    out.extend_from_slice(&serde_json::to_vec(&header).unwrap_or_default());
    out.push(b'\n');
    out.extend_from_slice(&body);
    out
}

/// Checks and decodes a backup file.
pub fn decode(raw: &[u8]) -> Result<(Header, Entries), BackupError> {
    let rest = raw.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(BackupError::Damaged("no header line"))?;
    let header: Header =
        serde_json::from_slice(&rest[..nl]).map_err(|e| BackupError::Header(e.to_string()))?;
    let body = &rest[nl + 1..];
    if sha256_hex(body) != header.sha256 {
        return Err(BackupError::Damaged(
            "its SHA-256 differs from its header's",
        ));
    }
    let mut entries = Vec::new();
    let mut b = body;
    let take = |b: &mut &[u8]| -> Result<Vec<u8>, BackupError> {
        if b.len() < 4 {
            return Err(BackupError::Damaged("an entry is cut short"));
        }
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if b.len() < 4 + n {
            return Err(BackupError::Damaged("an entry is cut short"));
        }
        let v = b[4..4 + n].to_vec();
        *b = &b[4 + n..];
        Ok(v)
    };
    while !b.is_empty() {
        let k = take(&mut b)?;
        let v = take(&mut b)?;
        entries.push((k, v));
    }
    if entries.len() as u64 != header.entries {
        return Err(BackupError::Damaged(
            "it holds another number of entries than its header says",
        ));
    }
    Ok((header, entries))
}

/// Writes a decoded backup into `storage`, which must be empty, under the configured KEK
/// `kek_id`. Returns the entries written.
pub async fn restore(
    storage: &dyn Storage,
    header: &Header,
    entries: Entries,
    kek_id: &str,
) -> Result<u64, BackupError> {
    if header.kek_id != kek_id {
        return Err(BackupError::WrongKek {
            backup: header.kek_id.clone(),
            configured: kek_id.to_string(),
        });
    }
    let present = storage.snapshot().await?.len();
    if present > 0 {
        return Err(BackupError::NotEmpty(present));
    }
    let mut written = 0u64;
    for batch in entries.chunks(RESTORE_BATCH) {
        let mut txn = Txn::default();
        for (k, v) in batch {
            // each key only if still absent: a restore racing a running daemon fails, not mixes
            txn = txn.expect(k.clone(), None).put(k.clone(), v.clone());
        }
        storage.commit(txn).await?;
        written += batch.len() as u64;
    }
    storage.flush().await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_refused() {
        let entries = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"m/x".to_vec(), vec![0u8; 300]),
            (b"z".to_vec(), Vec::new()),
        ];
        let raw = encode(&entries, 7, "sled", 0, "kek-1");
        let (h, back) = decode(&raw).unwrap();
        assert_eq!((h.entries, h.kek_id.as_str(), back), (3, "kek-1", entries));
        // one byte of the body changed, the body cut, the magic wrong
        let mut bad = raw.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(decode(&bad), Err(BackupError::Damaged(_))));
        assert!(matches!(
            decode(&raw[..raw.len() - 2]),
            Err(BackupError::Damaged(_))
        ));
        assert!(matches!(
            decode(b"PK\x03\x04"),
            Err(BackupError::NotABackup)
        ));
    }
}
