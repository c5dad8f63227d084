//! keygate's credential signing keys as one of its own keys the rotation engine rotates. Here,
//! not in `credential`, so that `credential` does not depend on `rotation`.
use crate::credential::Credentials;
use crate::sensitive::SecretFields;

#[async_trait::async_trait]
impl super::SystemKey for Credentials {
    fn path(&self) -> &'static str {
        crate::credential::SIGNING_KEYS_PATH
    }

    fn every_secs(&self) -> u64 {
        self.rotation_secs()
    }

    fn next(&self, current: Option<&SecretFields>) -> Result<SecretFields, String> {
        self.next_key_set(current).map_err(|e| e.to_string())
    }

    async fn apply(&self, _pending: &SecretFields) -> Result<(), String> {
        Ok(())
    }

    async fn test(&self, pending: &SecretFields) -> Result<(), String> {
        self.check_key_set(pending).map_err(|e| e.to_string())
    }

    async fn activated(&self) -> Result<(), String> {
        self.reload().await.map_err(|e| e.to_string())
    }
}
