//! What is stored, and under which keys.
//!
//! - `m/<path>`: [`SecretMeta`] (JSON): versions, timestamps, settings. No values.
//! - `v/<path>\0<version as 8 big-endian bytes>`: [`VersionRecord`] (JSON): the sealed fields.
//! - `k/active_kek`: id of the KEK every data key is wrapped with.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Versions kept when a secret sets none.
pub const DEFAULT_MAX_VERSIONS: u32 = 10;

/// Key of the active KEK id.
pub const ACTIVE_KEK_KEY: &[u8] = b"k/active_kek";

/// Metadata key of a secret.
pub fn meta_key(path: &str) -> Vec<u8> {
    [b"m/".as_slice(), path.as_bytes()].concat()
}

/// Record key of one version of a secret.
pub fn version_key(path: &str, version: u64) -> Vec<u8> {
    [
        b"v/".as_slice(),
        path.as_bytes(),
        b"\0",
        version.to_be_bytes().as_slice(),
    ]
    .concat()
}

/// Splits a record key back into path and version.
pub fn parse_version_key(key: &[u8]) -> Option<(String, u64)> {
    let rest = key.strip_prefix(b"v/")?;
    if rest.len() < 9 {
        return None;
    }
    let (path, tail) = rest.split_at(rest.len() - 9);
    if tail[0] != 0 {
        return None;
    }
    let version = u64::from_be_bytes(tail[1..].try_into().ok()?);
    Some((String::from_utf8(path.to_vec()).ok()?, version))
}

/// Per-version metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionMeta {
    /// Creation time, ms since epoch.
    pub created_at: u64,
    /// Soft-deletion time, if deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
    /// The ciphertext is erased.
    #[serde(default)]
    pub destroyed: bool,
}

/// Metadata of one secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretMeta {
    /// Highest version ever written (versions are never reused).
    pub current_version: u64,
    /// Versions kept before pruning.
    pub max_versions: u32,
    /// Creation time of the secret.
    pub created_at: u64,
    /// Time of the last change.
    pub updated_at: u64,
    /// Operator-defined labels (not secret).
    #[serde(default)]
    pub custom_metadata: BTreeMap<String, String>,
    /// Kept versions by number.
    pub versions: BTreeMap<u64, VersionMeta>,
    /// A version written by a rotation that is not current yet (readers never see it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_version: Option<u64>,
    /// The version a rotation replaced, readable as `previous` until `previous_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
    /// End of the overlap, ms since epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until: Option<u64>,
}

impl SecretMeta {
    /// The number the next version gets: above every version ever written (current, pending,
    /// kept or destroyed), so numbers are never reused.
    pub fn next_version(&self) -> u64 {
        let kept = self.versions.keys().next_back().copied().unwrap_or(0);
        self.current_version
            .max(kept)
            .max(self.pending_version.unwrap_or(0))
            + 1
    }

    /// Prunes the oldest versions past `max_versions`, never the current, pending or previous
    /// one. Returns the pruned numbers.
    pub fn prune(&mut self) -> Vec<u64> {
        let keep = [
            Some(self.current_version),
            self.pending_version,
            self.previous_version,
        ];
        let mut pruned = Vec::new();
        while self.versions.len() > self.max_versions as usize {
            let Some(&oldest) = self.versions.keys().find(|v| !keep.contains(&Some(**v))) else {
                break;
            };
            self.versions.remove(&oldest);
            pruned.push(oldest);
        }
        pruned
    }
}

/// The sealed fields of one version (envelope encryption).
#[derive(Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Record format.
    pub format: u32,
    /// Id of the KEK that wrapped `wrapped_dek`.
    pub kek_id: String,
    /// Nonce ‖ AES-256-GCM(KEK, DEK) ‖ tag, base64.
    pub wrapped_dek: String,
    /// Nonce ‖ AES-256-GCM(DEK, encoded fields) ‖ tag, base64.
    pub ciphertext: String,
}

impl std::fmt::Debug for VersionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionRecord")
            .field("format", &self.format)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// A change pushed to `Watch` subscribers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Secret path.
    pub path: String,
    /// Version concerned.
    pub version: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// When, ms since epoch.
    pub at: u64,
}

/// Kinds of version events.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A new version was written.
    Created,
    /// A version was soft-deleted.
    Deleted,
    /// A soft-deleted version was restored.
    Undeleted,
    /// A version's ciphertext was erased.
    Destroyed,
    /// A version was removed by `max_versions`.
    Pruned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_key_round_trip() {
        let k = version_key("prod/api", 258);
        assert_eq!(parse_version_key(&k), Some(("prod/api".to_string(), 258)));
        assert!(version_key("a", 1) < version_key("a", 2));
        assert_eq!(parse_version_key(b"v/x"), None);
    }
}
