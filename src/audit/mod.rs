//! The audit log: every access, allowed or denied, recorded durably before the answer, in a
//! hash-chained, signed, append-only file sequence (docs/audit.md). It is evidence, not a log
//! level: its own files, fixed schema, no secret values (only `hmac-sha256:` references).
pub mod bench;
pub mod bench_reads;
pub mod cli;
pub mod record;
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

    /// A second handle on the signing key, for the writer thread.
    pub fn signer(&self) -> Result<Ed25519KeyPair, String> {
        Ed25519KeyPair::from_pkcs8(&self.pkcs8).map_err(|_| "audit signing key".to_string())
    }

    /// The public key (base64), as published in `audit.pub` and via `Admin`.
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.signing.public_key().as_ref())
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
