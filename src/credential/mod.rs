//! keygate's own credentials: Ed25519-signed JWTs tied to a lease, checked (signature, expiry,
//! lease revocation) on every call. Signing keys live encrypted in the secret store under the
//! reserved path `_sys/signing-keys` and rotate on a period; a retired key stays published until
//! every credential it can have signed has expired.
pub mod lease;
mod mint;
mod signing_keys;
mod verify;

use crate::clock::Clock;
use crate::policy::scope::Scope;
use crate::secrets::path::SecretPath;
use crate::secrets::{PutOptions, SecretStore, SecretsError};
use crate::sensitive::{SecretBytes, SecretFields};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lease::{Lease, LeaseStore};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::RwLock;

/// Reserved secret path of the signing keys (never reachable through the Secrets API).
pub static SIGNING_KEYS_PATH: SecretPath = SecretPath::system("_sys/signing-keys");

/// Why a credential was refused (the caller sees only `UNAUTHENTICATED`).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Malformed, wrong signature, wrong issuer/audience.
    #[error("invalid credential: {0}")]
    Invalid(String),
    /// Past `exp` or the lease's expiry.
    #[error("credential expired")]
    Expired,
    /// The lease was revoked.
    #[error("credential revoked")]
    Revoked,
    /// Storage or key problems.
    #[error("credential store: {0}")]
    Store(String),
}

impl From<SecretsError> for CredentialError {
    fn from(e: SecretsError) -> Self {
        CredentialError::Store(e.to_string())
    }
}

/// The claims keygate signs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// keygate's URL.
    pub iss: String,
    /// The platform subject.
    pub sub: String,
    /// keygate's credential audience.
    pub aud: String,
    /// Expiry (s).
    pub exp: u64,
    /// Issued at (s).
    pub iat: u64,
    /// Not before (s).
    pub nbf: u64,
    /// Unique id of this token.
    pub jti: String,
    /// The lease it belongs to.
    pub lease_id: String,
    /// The role it was issued for.
    pub role: String,
    /// Granted scopes, space-separated (RFC 8693 `scope`).
    pub scope: String,
    /// The source identity's key claims (issuer, repository, ref, sha, run, namespace, …).
    pub src: Value,
}

struct SigningKey {
    kid: String,
    created: u64,
    encoding: EncodingKey,
    /// The parsed key: signing with it skips re-parsing PKCS#8 per credential.
    pair: Ed25519KeyPair,
    /// `base64url({"typ":"JWT","alg":"EdDSA","kid":…})`, the same for every credential.
    header_b64: String,
    decoding: DecodingKey,
    x: String,
}

struct KeySet {
    /// Oldest first; the last one signs.
    keys: Vec<SigningKey>,
    version: u64,
}

/// A verified credential.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Its claims.
    pub claims: Claims,
    /// Parsed scopes.
    pub scopes: Vec<Scope>,
}

/// Mints and checks credentials.
pub struct Credentials {
    store: Arc<SecretStore>,
    /// Leases.
    pub leases: LeaseStore,
    clock: Arc<dyn Clock>,
    url: String,
    audience: String,
    rotation_secs: u64,
    retain_secs: u64,
    keys: RwLock<Arc<KeySet>>,
    /// Last reload forced by an unknown `kid` (at most one per 5 s, so forged kids cannot
    /// turn into a store read per request).
    last_kid_reload: std::sync::Mutex<Option<std::time::Instant>>,
    /// Credentials whose signature, issuer and audience were verified, by SHA-256 of the token.
    /// Expiry and the lease (revocation) are still checked on every call.
    verified: std::sync::Mutex<VerifiedCache>,
}

/// Token hash → (signing kid, verified credential).
type VerifiedCache = HashMap<[u8; 32], (String, Arc<Authenticated>)>;

/// Verified credentials remembered (the cache is emptied when full).
const VERIFIED_CACHE: usize = 16_384;

impl Credentials {
    /// Loads (or creates) the signing keys.
    pub async fn open(
        store: Arc<SecretStore>,
        clock: Arc<dyn Clock>,
        url: String,
        audience: String,
        rotation_secs: u64,
        retain_secs: u64,
    ) -> Result<Self, CredentialError> {
        let leases = LeaseStore::new(store.storage().clone(), clock.clone());
        let c = Self {
            store,
            leases,
            clock,
            url,
            audience,
            rotation_secs,
            retain_secs,
            keys: RwLock::new(Arc::new(KeySet {
                keys: Vec::new(),
                version: 0,
            })),
            last_kid_reload: std::sync::Mutex::new(None),
            verified: std::sync::Mutex::new(HashMap::new()),
        };
        c.reload().await?;
        c.rotate_if_due().await?;
        Ok(c)
    }

    fn now(&self) -> u64 {
        self.clock.now_millis() / 1000
    }

    /// How often the signing key rotates.
    pub fn rotation_secs(&self) -> u64 {
        self.rotation_secs
    }

    /// keygate's credential audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::secrets::envelope::Kek;
    use crate::storage::SledStorage;

    #[tokio::test(flavor = "multi_thread")]
    async fn retired_keys_stay_published_until_their_credentials_can_have_expired() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SledStorage::open(dir.path()).unwrap());
        let t0 = 1_800_000_000_000u64;
        let clock = Arc::new(FixedClock::at(t0));
        let kek = Kek::from_bytes(&SecretBytes::new(vec![7; 32])).unwrap();
        let store = Arc::new(
            SecretStore::open(storage, kek, clock.clone())
                .await
                .unwrap(),
        );
        // rotate hourly; the longest credential lives 600 s
        let c = Credentials::open(
            store,
            clock.clone(),
            "https://k".into(),
            "https://k".into(),
            3600,
            600,
        )
        .await
        .unwrap();
        assert_eq!(c.kids().await.len(), 1);
        let now = t0 / 1000;
        let lease = Lease {
            lease_id: "r/s/1".into(),
            role: "r".into(),
            sub: "s".into(),
            scopes: vec!["read:a/*".into()],
            src: serde_json::json!({}),
            issued_at: now,
            expires_at: now + 100_000,
            max_expires_at: now + 100_000,
            revoked_at: None,
            db: None,
        };
        c.leases.create(&lease).await.unwrap();
        let first = c.mint(&lease, now + 100_000).await.unwrap();
        assert!(c.authenticate(&first).await.is_ok());

        // not due yet
        clock.advance(3_599_000);
        assert!(!c.rotate_if_due().await.unwrap());
        // due: a second key signs, the first stays published
        clock.advance(1_000);
        assert!(c.rotate_if_due().await.unwrap());
        assert_eq!(c.kids().await.len(), 2);
        let second = c.mint(&lease, now + 100_000).await.unwrap();
        assert!(c.authenticate(&first).await.is_ok());
        assert!(c.authenticate(&second).await.is_ok());
        // 599 s after the first key retired, a forced rotation still keeps it
        clock.advance(599_000);
        c.rotate(true).await.unwrap();
        assert_eq!(c.kids().await.len(), 3);
        assert!(c.authenticate(&first).await.is_ok());
        // past retirement + longest lifetime it is dropped: nothing it signed can be valid
        clock.advance(2_000);
        c.rotate(true).await.unwrap();
        let kids = c.kids().await;
        assert_eq!(kids.len(), 3, "{kids:?}");
        assert!(matches!(
            c.authenticate(&first).await,
            Err(CredentialError::Invalid(_))
        ));
        assert!(c.authenticate(&second).await.is_ok());
        let jwks = c.jwks().await;
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 3);
    }
}
