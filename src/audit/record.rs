//! The audit record schema (docs/audit.md): one JSON object per line, fields in a fixed order so
//! the bytes hashed are the bytes written.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a line is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One RPC or HTTP request.
    Request,
    /// A signed checkpoint over the chain so far.
    Checkpoint,
    /// The writer reopened the log after a crash (and maybe truncated a torn line).
    Recovery,
    /// The checkpoint key changes: signed by the old key, names the new one (`key`).
    KeyRotation,
}

/// Who called.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallerInfo {
    /// Peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Verified TLS client certificate subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client: Option<String>,
    /// `admin` or `credential`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Platform issuer (`iss` of the source token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Platform subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Credential `jti`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Lease id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// Platform claims tying the access to one run or pod (repository, ref, sha, run_id, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Value>,
    /// `hmac-sha256:<hex>` of a presented token or credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_hmac: Option<String>,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Sequence number, from 1, no gaps, across segments.
    pub seq: u64,
    /// RFC 3339 UTC time.
    pub time: String,
    /// Node id.
    pub node: String,
    /// Kind.
    pub kind: Kind,
    /// Hex SHA-256 of the previous line's bytes (64 zeros for the first).
    pub prev: String,
    /// Request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Operation (`keygate.v1.Secrets/Get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The API the request came through when not gRPC: `vault` (the Vault-compatible HTTP API,
    /// translated into the gRPC call `op` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerInfo>,
    /// Resources touched (paths, versions, fields, roles, leases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// `allow`, `deny` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Reason code or message (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// gRPC status code name of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Checkpoint: base64 Ed25519 signature over `checkpoint_message(seq, prev, time)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// Recovery: bytes of a torn last line that were truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_bytes: Option<u64>,
    /// `key_rotation`: the new checkpoint public key (Ed25519, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Recovery: first and last sequence numbers of records that did not verify when the
    /// writer reopened the log (changed, re-chained or dropped after a crash); they were set
    /// aside in `quarantine-<first>.log`, never signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified: Option<[u64; 2]>,
    /// The last record of every group-commit batch: base64 Ed25519 signature over
    /// `seal_message(seq, prev, hash of this line without the seal)`. Always the last field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl Record {
    /// An empty record of `kind` for the writer to number, chain and sign.
    pub fn new(kind: Kind) -> Self {
        Self {
            seq: 0,
            time: super::writer::now_rfc3339(),
            node: String::new(),
            kind,
            prev: String::new(),
            request_id: None,
            op: None,
            api: None,
            caller: None,
            resources: Vec::new(),
            decision: None,
            reason: None,
            status: None,
            sig: None,
            truncated_bytes: None,
            key: None,
            unverified: None,
            seal: None,
        }
    }
}

/// What a batch seal signs: the record's position, its chain link and its own bytes.
pub fn seal_message(seq: u64, prev: &str, body_hash: &str) -> Vec<u8> {
    format!("keygate-audit-seal\0{seq}\0{prev}\0{body_hash}").into_bytes()
}

/// A sealed line split into the bytes the seal covers (the line without its `seal` field)
/// and the seal. `None` for a line without one.
pub fn split_seal(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    const MARK: &[u8] = b",\"seal\":\"";
    let at = line.windows(MARK.len()).rposition(|w| w == MARK)?;
    let rest = line.get(at + MARK.len()..)?;
    let sig = rest.strip_suffix(b"\"}")?;
    if sig
        .iter()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')))
    {
        return None;
    }
    let mut body = line[..at].to_vec();
    body.push(b'}');
    Some((body, std::str::from_utf8(sig).ok()?))
}

/// What a checkpoint signs.
/// What the old key signs when it hands over to a new one: the position in the chain and the
/// new public key.
pub fn key_rotation_message(seq: u64, chain: &str, time: &str, new_key: &str) -> Vec<u8> {
    format!("keygate-audit-key-rotation\0{seq}\0{chain}\0{time}\0{new_key}").into_bytes()
}

pub fn checkpoint_message(seq: u64, chain: &str, time: &str) -> Vec<u8> {
    format!("keygate-audit-checkpoint\0{seq}\0{chain}\0{time}").into_bytes()
}

/// Hex SHA-256 of a line's bytes (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line).as_ref())
}

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
