//! keygate's credential signing keys as one of its own keys the rotation engine rotates. Here,
//! not in `credential`, so that `credential` does not depend on `rotation`.
use super::KeyError;
use crate::credential::Credentials;
use crate::secrets::path::SecretPath;
use crate::sensitive::SecretFields;

#[async_trait::async_trait]
impl super::SystemKey for Credentials {
    fn path(&self) -> &SecretPath {
        &crate::credential::SIGNING_KEYS_PATH
    }

    fn every_secs(&self) -> u64 {
        self.rotation_secs()
    }

    fn next(&self, current: Option<&SecretFields>) -> Result<SecretFields, KeyError> {
        self.next_key_set(current).map_err(KeyError::from)
    }

    async fn apply(&self, _pending: &SecretFields) -> Result<(), KeyError> {
        Ok(())
    }

    async fn test(&self, pending: &SecretFields) -> Result<(), KeyError> {
        self.check_key_set(pending).map_err(KeyError::from)
    }

    async fn activated(&self) -> Result<(), KeyError> {
        self.reload().await.map_err(KeyError::from)
    }
}
