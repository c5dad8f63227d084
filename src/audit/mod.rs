//! The audit log: every access, allowed or denied, recorded durably before the answer, in a
//! hash-chained, signed, append-only file sequence (docs/audit.md). It is evidence, not a log
//! level: its own files, fixed schema, no secret values (only `hmac-sha256:` references).
pub mod bench;
pub mod bench_reads;
pub mod cli;
pub mod record;
pub mod tail;
pub mod verify;
pub mod writer;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The audit signing and HMAC keys.
pub struct AuditKeys {
    /// Signs checkpoints.
    pub signing: Ed25519KeyPair,
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
    /// Keys the HMAC of referenced values.
    pub hmac: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKeys([redacted])")
    }
}

fn read_private(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
    ))
}

impl AuditKeys {
    /// Loads the keys from `signing_file` (PKCS#8 Ed25519, base64) and `hmac_file` (32+ bytes,
    /// base64), creating both (mode 0600) when missing; writes the public key next to the log
    /// as `audit.pub` (base64) for `keygate audit verify`.
    pub fn load_or_create(
        signing_file: &Path,
        hmac_file: &Path,
        log_dir: &Path,
    ) -> Result<Self, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        if !signing_file.exists() {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "key generation failed")?;
            crate::devenv::write_private(signing_file, &B64.encode(doc.as_ref()))?;
        }
        if !hmac_file.exists() {
            let mut k = zeroize::Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(k.as_mut()).map_err(|_| "random source failed")?;
            crate::devenv::write_private(hmac_file, &B64.encode(k.as_ref()))?;
        }
        let raw = read_private(signing_file)?;
        let der = zeroize::Zeroizing::new(
            B64.decode(String::from_utf8_lossy(&raw).trim())
                .map_err(|_| format!("{}: not base64", signing_file.display()))?,
        );
        let signing = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| format!("{}: not an Ed25519 PKCS#8 key", signing_file.display()))?;
        let raw = read_private(hmac_file)?;
        let hk = zeroize::Zeroizing::new(
            B64.decode(String::from_utf8_lossy(&raw).trim())
                .map_err(|_| format!("{}: not base64", hmac_file.display()))?,
        );
        if hk.len() < 32 {
            return Err(format!(
                "{}: the HMAC key must be at least 32 bytes",
                hmac_file.display()
            ));
        }
        std::fs::create_dir_all(log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
        std::fs::write(
            log_dir.join("audit.pub"),
            B64.encode(signing.public_key().as_ref()) + "\n",
        )
        .map_err(|e| format!("{}: {e}", log_dir.display()))?;
        Ok(Self {
            signing,
            pkcs8: der,
            hmac: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &hk),
        })
    }

    /// The anchor signing key as PKCS#8 (for the checkpoint-key rotation's rollback).
    pub fn anchor_pkcs8(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.pkcs8.to_vec())
    }

    /// The checkpoint key the log is signed with now: the anchor (`signing_key_file`) until a
    /// rotation handed over, then the rotated key from the store (current or, after a crash
    /// between handover and promotion, pending), whichever the log's last signed record names.
    pub async fn active_signer(
        &self,
        store: &crate::secrets::SecretStore,
        log_dir: &Path,
    ) -> Result<Ed25519KeyPair, String> {
        let mut candidates: Vec<zeroize::Zeroizing<Vec<u8>>> = vec![self.anchor_pkcs8()];
        if let Ok(v) = store.get_internal(CHECKPOINT_KEY_PATH).await {
            if let Some(k) = v.fields.get("pkcs8") {
                candidates.push(zeroize::Zeroizing::new(k.expose().to_vec()));
            }
        }
        if let Ok(v) = store.get_pending(CHECKPOINT_KEY_PATH).await {
            if let Some(k) = v.fields.get("pkcs8") {
                candidates.push(zeroize::Zeroizing::new(k.expose().to_vec()));
            }
        }
        let pairs: Vec<Ed25519KeyPair> = candidates
            .iter()
            .filter_map(|c| Ed25519KeyPair::from_pkcs8(c).ok())
            .collect();
        let publics: Vec<Vec<u8>> = pairs
            .iter()
            .map(|p| p.public_key().as_ref().to_vec())
            .collect();
        let i = verify::active_key(log_dir, &publics)?.unwrap_or(0);
        pairs
            .into_iter()
            .nth(i)
            .ok_or_else(|| "no usable audit checkpoint key".to_string())
    }
}

/// `hmac-sha256:<hex>` of a value under the audit HMAC key: how records refer to tokens and
/// secrets without holding them.
pub fn hmac_ref(key: &aws_lc_rs::hmac::Key, value: &[u8]) -> String {
    format!(
        "hmac-sha256:{}",
        hex::encode(aws_lc_rs::hmac::sign(key, value).as_ref())
    )
}

/// Where the rotated checkpoint keys live (PKCS#8 in field `pkcs8`).
pub const CHECKPOINT_KEY_PATH: &str = "_sys/audit-checkpoint-key";

/// The audit checkpoint key, rotated by the rotation state machine: pending = a new key stored;
/// set = the writer hands over to it with a `key_rotation` record signed by the old key;
/// tested = the writer signs with it; current = promoted. `keygate audit verify` follows the
/// handovers from the anchor key in `audit.pub`.
pub struct CheckpointKeyRotation {
    /// The writer whose key rotates.
    pub writer: std::sync::Arc<writer::AuditWriter>,
    /// The anchor key (`audit.signing_key_file`), PKCS#8, for a rollback before any rotation.
    pub anchor: zeroize::Zeroizing<Vec<u8>>,
    /// Rotation period.
    pub every_secs: u64,
}

fn pkcs8_of(f: &crate::sensitive::SecretFields) -> Result<&[u8], String> {
    f.get("pkcs8")
        .map(|v| v.expose())
        .ok_or_else(|| "the checkpoint key record has no pkcs8 field".to_string())
}

#[async_trait::async_trait]
impl crate::rotation::SystemKey for CheckpointKeyRotation {
    fn path(&self) -> &'static str {
        CHECKPOINT_KEY_PATH
    }

    fn every_secs(&self) -> u64 {
        self.every_secs
    }

    fn next(
        &self,
        _current: Option<&crate::sensitive::SecretFields>,
    ) -> Result<crate::sensitive::SecretFields, String> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| "key generation failed".to_string())?;
        let mut f = crate::sensitive::SecretFields::new();
        f.insert(
            "pkcs8".into(),
            crate::sensitive::SecretBytes::new(doc.as_ref().to_vec()),
        );
        Ok(f)
    }

    async fn apply(&self, pending: &crate::sensitive::SecretFields) -> Result<(), String> {
        self.writer
            .rotate_key(pkcs8_of(pending)?)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn test(&self, pending: &crate::sensitive::SecretFields) -> Result<(), String> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8_of(pending)?)
            .map_err(|_| "the pending checkpoint key is not Ed25519 PKCS#8".to_string())?;
        if self.writer.public_key() == pair.public_key().as_ref() {
            Ok(())
        } else {
            Err("the audit writer does not sign with the new key".into())
        }
    }

    async fn activated(&self) -> Result<(), String> {
        Ok(())
    }

    async fn restore(
        &self,
        current: Option<&crate::sensitive::SecretFields>,
    ) -> Result<(), String> {
        let key = match current {
            Some(f) => pkcs8_of(f)?.to_vec(),
            None => self.anchor.to_vec(),
        };
        self.writer
            .rotate_key(&key)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
