//! The audit log: every access, allowed or denied, recorded durably before the answer, in a
//! hash-chained, signed, append-only file sequence (docs/audit.md). It is evidence, not a log
//! level: its own files, fixed schema, no secret values (only `hmac-sha256:` references).
pub mod bench;

pub mod cli;
pub mod record;
pub mod table;
pub mod tail;
pub mod verify;
pub mod writer;

use crate::secrets::path::SecretPath;
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

/// Why the audit keys or the log cannot be set up at start. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A key file or the log directory cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A new key file could not be written.
    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),
    /// A key file open to group or others.
    #[error("{} is accessible by group or others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())]
    Permissions {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file whose content is not the key it must hold.
    #[error("{}: {problem}", path.display())]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
    /// The random source or key generator failed.
    #[error("key generation failed")]
    Random,
    /// A writer thread could not be started.
    #[error("starting the audit writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The start record could not be written.
    #[error(transparent)]
    Append(#[from] writer::AuditError),
    /// The log on disk cannot be read back (which key signed it, where it ends).
    #[error("audit log: {0}")]
    Log(String),
    /// The audit keys in the store cannot be read or created.
    #[error("audit keys in the store: {0}")]
    Store(String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_private(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, SetupError> {
    let meta = std::fs::metadata(path).map_err(io_at(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SetupError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(zeroize::Zeroizing::new(
        std::fs::read(path).map_err(io_at(path))?,
    ))
}

impl AuditKeys {
    /// Loads the keys from `signing_file` (PKCS#8 Ed25519, base64) and `hmac_file` (32+ bytes,
    /// base64), creating both (mode 0600) when missing; writes the public key next to a file
    /// log (`log_dir`) as `audit.pub` (base64) for `keygate audit verify`.
    pub fn load_or_create(
        signing_file: &Path,
        hmac_file: &Path,
        log_dir: Option<&Path>,
    ) -> Result<Self, SetupError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        if !signing_file.exists() {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| SetupError::Random)?;
            crate::fsutil::write_private(signing_file, &B64.encode(doc.as_ref()))?;
        }
        if !hmac_file.exists() {
            let mut k = zeroize::Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(k.as_mut()).map_err(|_| SetupError::Random)?;
            crate::fsutil::write_private(hmac_file, &B64.encode(k.as_ref()))?;
        }
        let keys = Self::load(signing_file, hmac_file)?;
        if let Some(log_dir) = log_dir {
            std::fs::create_dir_all(log_dir).map_err(io_at(log_dir))?;
            std::fs::write(
                log_dir.join("audit.pub"),
                keys.anchor_public_base64() + "\n",
            )
            .map_err(io_at(log_dir))?;
        }
        Ok(keys)
    }

    /// Reads the key files, creating nothing.
    pub fn load(signing_file: &Path, hmac_file: &Path) -> Result<Self, SetupError> {
        let signing = read_private(signing_file)?;
        let hmac = read_private(hmac_file)?;
        Self::from_base64(&signing, &hmac, signing_file, hmac_file)
    }

    /// Parses the keys' base64 texts (`signing_at`, `hmac_at` name their source in errors).
    fn from_base64(
        signing: &[u8],
        hmac: &[u8],
        signing_at: &Path,
        hmac_at: &Path,
    ) -> Result<Self, SetupError> {
        let der = zeroize::Zeroizing::new(
            B64.decode(String::from_utf8_lossy(signing).trim())
                .map_err(|_| SetupError::KeyFile {
                    path: signing_at.to_path_buf(),
                    problem: "not base64",
                })?,
        );
        let signing = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| SetupError::KeyFile {
            path: signing_at.to_path_buf(),
            problem: "not an Ed25519 PKCS#8 key",
        })?;
        let hk = zeroize::Zeroizing::new(
            B64.decode(String::from_utf8_lossy(hmac).trim())
                .map_err(|_| SetupError::KeyFile {
                    path: hmac_at.to_path_buf(),
                    problem: "not base64",
                })?,
        );
        if hk.len() < 32 {
            return Err(SetupError::KeyFile {
                path: hmac_at.to_path_buf(),
                problem: "the HMAC key must be at least 32 bytes",
            });
        }
        Ok(Self {
            signing,
            pkcs8: der,
            hmac: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &hk),
        })
    }

    /// The keys every replica shares from the store (`_sys/audit-keys`, sealed under the KEK
    /// like every secret), created by the first replica that finds none: a stateless replica
    /// needs no key files, and its records' `hmac-sha256:` references match every other's.
    pub async fn from_store(store: &crate::secrets::SecretStore) -> Result<Self, SetupError> {
        use crate::secrets::SecretsError;
        for _ in 0..5 {
            if let Some(keys) = Self::stored(store).await? {
                return Ok(keys);
            }
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| SetupError::Random)?;
            let mut k = zeroize::Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(k.as_mut()).map_err(|_| SetupError::Random)?;
            let mut f = crate::sensitive::SecretFields::new();
            f.insert(
                "signing_pkcs8".into(),
                crate::sensitive::SecretBytes::new(B64.encode(doc.as_ref()).into_bytes()),
            );
            f.insert(
                "hmac".into(),
                crate::sensitive::SecretBytes::new(B64.encode(k.as_ref()).into_bytes()),
            );
            let create_only = crate::secrets::PutOptions {
                cas: Some(0),
                ..Default::default()
            };
            match store.put_internal(&KEYS_PATH, &f, &create_only).await {
                // another replica created them first: read theirs
                Ok(_) | Err(SecretsError::CasMismatch { .. }) => continue,
                Err(e) => return Err(SetupError::Store(e.to_string())),
            }
        }
        Err(SetupError::Store(
            "the stored audit keys could not be read or created".into(),
        ))
    }

    /// The keys kept in the store, if a replica created them (read only: what
    /// `keygate audit verify` takes the anchor from).
    pub async fn stored(store: &crate::secrets::SecretStore) -> Result<Option<Self>, SetupError> {
        use crate::secrets::SecretsError;
        let at = Path::new(KEYS_PATH.as_str());
        match store.get_internal(&KEYS_PATH).await {
            Ok(v) => {
                let field = |name: &'static str| {
                    v.fields
                        .get(name)
                        .map(|f| f.expose().to_vec())
                        .ok_or(SetupError::KeyFile {
                            path: at.to_path_buf(),
                            problem: "a field of the stored audit keys is missing",
                        })
                };
                let signing = zeroize::Zeroizing::new(field("signing_pkcs8")?);
                let hmac = zeroize::Zeroizing::new(field("hmac")?);
                Self::from_base64(&signing, &hmac, at, at).map(Some)
            }
            Err(SecretsError::NotFound(_)) => Ok(None),
            Err(e) => Err(SetupError::Store(e.to_string())),
        }
    }

    /// The anchor public key (base64): what `audit.pub` holds and `keygate audit verify` checks
    /// the first checkpoints with.
    pub fn anchor_public_base64(&self) -> String {
        B64.encode(self.signing.public_key().as_ref())
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
    ) -> Result<Ed25519KeyPair, SetupError> {
        let pairs = self.signer_candidates(store).await;
        let i = verify::active_key(log_dir, &publics(&pairs))
            .map_err(SetupError::Log)?
            .unwrap_or(0);
        pairs.into_iter().nth(i).ok_or(SetupError::KeyFile {
            path: log_dir.join("audit.pub"),
            problem: "no usable audit checkpoint key",
        })
    }

    /// [`AuditKeys::active_signer`] for a chain in a database table.
    pub async fn active_signer_on_table(
        &self,
        store: &crate::secrets::SecretStore,
        table: &dyn table::AuditTable,
        node: &str,
    ) -> Result<Ed25519KeyPair, SetupError> {
        let pairs = self.signer_candidates(store).await;
        let tail = table.tail(node).await.map_err(SetupError::Log)?;
        let i = verify::active_key_in(
            tail.iter().rev().map(|(_, l)| l.as_bytes()),
            &publics(&pairs),
        )
        .map_err(SetupError::Log)?
        .unwrap_or(0);
        pairs.into_iter().nth(i).ok_or(SetupError::KeyFile {
            path: Path::new("keygate_audit").to_path_buf(),
            problem: "no usable audit checkpoint key",
        })
    }

    /// The anchor, then the rotated checkpoint keys in the store (current, pending).
    async fn signer_candidates(&self, store: &crate::secrets::SecretStore) -> Vec<Ed25519KeyPair> {
        let mut candidates: Vec<zeroize::Zeroizing<Vec<u8>>> = vec![self.anchor_pkcs8()];
        if let Ok(v) = store.get_internal(&CHECKPOINT_KEY_PATH).await {
            if let Some(k) = v.fields.get("pkcs8") {
                candidates.push(zeroize::Zeroizing::new(k.expose().to_vec()));
            }
        }
        if let Ok(v) = store.get_pending(&CHECKPOINT_KEY_PATH).await {
            if let Some(k) = v.fields.get("pkcs8") {
                candidates.push(zeroize::Zeroizing::new(k.expose().to_vec()));
            }
        }
        candidates
            .iter()
            .filter_map(|c| Ed25519KeyPair::from_pkcs8(c).ok())
            .collect()
    }
}

fn publics(pairs: &[Ed25519KeyPair]) -> Vec<Vec<u8>> {
    pairs
        .iter()
        .map(|p| p.public_key().as_ref().to_vec())
        .collect()
}

/// `hmac-sha256:<hex>` of a value under the audit HMAC key: how records refer to tokens and
/// secrets without holding them.
pub fn hmac_ref(key: &aws_lc_rs::hmac::Key, value: &[u8]) -> String {
    format!(
        "hmac-sha256:{}",
        hex::encode(aws_lc_rs::hmac::sign(key, value).as_ref())
    )
}

/// Where the audit keys live with `[audit] keys` from the store (fields `signing_pkcs8` and
/// `hmac`, base64 like the key files).
pub static KEYS_PATH: SecretPath = SecretPath::system("_sys/audit-keys");

/// Where the rotated checkpoint keys live (PKCS#8 in field `pkcs8`).
pub static CHECKPOINT_KEY_PATH: SecretPath = SecretPath::system("_sys/audit-checkpoint-key");
