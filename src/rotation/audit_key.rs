//! The audit checkpoint key as one of keygate's own keys the rotation engine rotates. It lives
//! here, not in `audit`, so that `audit` does not depend on `rotation`.
use super::KeyError;
use crate::audit::writer::AuditWriter;
use crate::secrets::path::SecretPath;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

/// The audit checkpoint key, rotated by the rotation state machine: pending = a new key stored;
/// set = the writer hands over to it with a `key_rotation` record signed by the old key;
/// tested = the writer signs with it; current = promoted. `keygate audit verify` follows the
/// handovers from the anchor key in `audit.pub`.
pub struct CheckpointKeyRotation {
    /// The writer whose key rotates.
    pub writer: std::sync::Arc<AuditWriter>,
    /// The anchor key (`audit.signing_key_file`), PKCS#8, for a rollback before any rotation.
    pub anchor: zeroize::Zeroizing<Vec<u8>>,
    /// Rotation period.
    pub every_secs: u64,
}

fn pkcs8_of(f: &crate::sensitive::SecretFields) -> Result<&[u8], KeyError> {
    f.get("pkcs8")
        .map(|v| v.expose())
        .ok_or(KeyError::Malformed(
            "the checkpoint key record has no pkcs8 field",
        ))
}

#[async_trait::async_trait]
impl super::SystemKey for CheckpointKeyRotation {
    fn path(&self) -> &SecretPath {
        &crate::audit::CHECKPOINT_KEY_PATH
    }

    fn every_secs(&self) -> u64 {
        self.every_secs
    }

    fn next(
        &self,
        _current: Option<&crate::sensitive::SecretFields>,
    ) -> Result<crate::sensitive::SecretFields, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| KeyError::Generate)?;
        let mut f = crate::sensitive::SecretFields::new();
        f.insert(
            "pkcs8".into(),
            crate::sensitive::SecretBytes::new(doc.as_ref().to_vec()),
        );
        Ok(f)
    }

    async fn apply(&self, pending: &crate::sensitive::SecretFields) -> Result<(), KeyError> {
        self.writer
            .rotate_key(pkcs8_of(pending)?)
            .await
            .map(|_| ())
            .map_err(KeyError::Audit)
    }

    async fn test(&self, pending: &crate::sensitive::SecretFields) -> Result<(), KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8_of(pending)?)
            .map_err(|_| KeyError::Malformed("the pending checkpoint key is not Ed25519 PKCS#8"))?;
        if self.writer.public_key() == pair.public_key().as_ref() {
            Ok(())
        } else {
            Err(KeyError::NotInUse(
                "the audit writer does not sign with the new key",
            ))
        }
    }

    async fn activated(&self) -> Result<(), KeyError> {
        Ok(())
    }

    async fn restore(
        &self,
        current: Option<&crate::sensitive::SecretFields>,
    ) -> Result<(), KeyError> {
        let key = match current {
            Some(f) => pkcs8_of(f)?.to_vec(),
            None => self.anchor.to_vec(),
        };
        self.writer
            .rotate_key(&key)
            .await
            .map(|_| ())
            .map_err(KeyError::Audit)
    }
}
