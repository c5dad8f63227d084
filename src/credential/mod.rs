//! keygate's own credentials: Ed25519-signed JWTs tied to a lease, checked (signature, expiry,
//! lease revocation) on every call. Signing keys live encrypted in the secret store under the
//! reserved path `_sys/signing-keys` and rotate on a period; a retired key stays published until
//! every credential it can have signed has expired.
pub mod lease;

use crate::clock::Clock;
use crate::policy::scope::Scope;
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
pub const SIGNING_KEYS_PATH: &str = "_sys/signing-keys";

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

fn new_key(now: u64) -> Result<(String, SecretBytes), CredentialError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| CredentialError::Store("key generation failed".into()))?;
    let mut id = [0u8; 6];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| CredentialError::Store("random source failed".into()))?;
    Ok((
        format!("{now}-{}", hex::encode(id)),
        SecretBytes::new(doc.as_ref().to_vec()),
    ))
}

fn load_keys(
    fields: &SecretFields,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<SigningKey>, CredentialError> {
    let mut keys = Vec::new();
    for (kid, pkcs8) in fields.iter() {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.expose())
            .map_err(|_| CredentialError::Store(format!("signing key {kid} is corrupt")))?;
        let x = B64URL.encode(pair.public_key().as_ref());
        let decoding = DecodingKey::from_ed_components(&x)
            .map_err(|e| CredentialError::Store(e.to_string()))?;
        keys.push(SigningKey {
            kid: kid.clone(),
            // kids are `<created ms>-<random>`; older stores also kept it in metadata
            created: meta
                .get(kid)
                .and_then(|c| c.parse().ok())
                .or_else(|| kid.split('-').next().and_then(|c| c.parse().ok()))
                .unwrap_or(0),
            encoding: EncodingKey::from_ed_der(pkcs8.expose()),
            header_b64: B64URL.encode(
                serde_json::to_vec(&serde_json::json!({"typ": "JWT", "alg": "EdDSA", "kid": kid}))
                    .map_err(|e| CredentialError::Store(e.to_string()))?,
            ),
            pair,
            decoding,
            x,
        });
    }
    keys.sort_by(|a, b| (a.created, &a.kid).cmp(&(b.created, &b.kid)));
    Ok(keys)
}

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

    /// Re-reads the signing keys from the store (another replica may have rotated them).
    pub async fn reload(&self) -> Result<(), CredentialError> {
        match self.store.get_internal(SIGNING_KEYS_PATH).await {
            Ok(v) => {
                let keys = load_keys(&v.fields, &v.meta.custom_metadata)?;
                *self.keys.write().await = Arc::new(KeySet {
                    keys,
                    version: v.version,
                });
                Ok(())
            }
            Err(SecretsError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a new signing key when the current one is older than the rotation period, and
    /// drops retired keys whose credentials have all expired. Safe to call from every replica.
    pub async fn rotate_if_due(&self) -> Result<bool, CredentialError> {
        self.rotate(false).await
    }

    /// Key ids currently published, oldest first.
    pub async fn kids(&self) -> Vec<String> {
        self.keys
            .read()
            .await
            .keys
            .iter()
            .map(|k| k.kid.clone())
            .collect()
    }

    /// Rotates when due, or now when `force`.
    pub async fn rotate(&self, force: bool) -> Result<bool, CredentialError> {
        for _ in 0..5 {
            // key times are in milliseconds so that two rotations in one second still order
            let now = self.clock.now_millis();
            let set = self.keys.read().await.clone();
            let due = force
                || set
                    .keys
                    .last()
                    .is_none_or(|k| now.saturating_sub(k.created) >= self.rotation_secs * 1000);
            if !due {
                return Ok(false);
            }
            let mut fields = SecretFields::new();
            let mut meta = BTreeMap::new();
            let stored = match self.store.get_internal(SIGNING_KEYS_PATH).await {
                Ok(v) => Some(v),
                Err(SecretsError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            // keep a key while a credential it signed can still be valid: it stopped signing
            // when its successor was created, plus the longest credential lifetime
            for (i, k) in set.keys.iter().enumerate() {
                let retired_at = set.keys.get(i + 1).map(|n| n.created).unwrap_or(now);
                if retired_at + self.retain_secs * 1000 >= now {
                    if let Some(p) = stored.as_ref().and_then(|v| v.fields.get(&k.kid)) {
                        fields.insert(k.kid.clone(), p.clone());
                        meta.insert(k.kid.clone(), k.created.to_string());
                    }
                }
            }
            let created = set.keys.last().map_or(now, |k| now.max(k.created + 1));
            let (kid, pkcs8) = new_key(created)?;
            fields.insert(kid.clone(), pkcs8);
            meta.insert(kid.clone(), created.to_string());
            let opts = PutOptions {
                cas: Some(set.version),
                max_versions: Some(2),
                custom_metadata: Some(meta),
            };
            match self
                .store
                .put_internal(SIGNING_KEYS_PATH, &fields, &opts)
                .await
            {
                Ok(_) => {
                    self.reload().await?;
                    tracing::info!(kid = %kid, "credential signing key rotated");
                    return Ok(true);
                }
                Err(SecretsError::CasMismatch { .. }) => self.reload().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CredentialError::Store(
            "signing key rotation kept conflicting".into(),
        ))
    }

    /// The key set a rotation stages: the keys whose credentials can still be valid, plus a new
    /// key that signs from the moment the set becomes current.
    pub fn next_key_set(
        &self,
        current: Option<&SecretFields>,
    ) -> Result<SecretFields, CredentialError> {
        let now = self.clock.now_millis();
        let empty = SecretFields::new();
        let current = current.unwrap_or(&empty);
        let keys = load_keys(current, &BTreeMap::new())?;
        let mut fields = SecretFields::new();
        for (i, k) in keys.iter().enumerate() {
            let retired_at = keys.get(i + 1).map(|n| n.created).unwrap_or(now);
            if retired_at + self.retain_secs * 1000 >= now {
                if let Some(p) = current.get(&k.kid) {
                    fields.insert(k.kid.clone(), p.clone());
                }
            }
        }
        let created = keys.last().map_or(now, |k| now.max(k.created + 1));
        let (kid, pkcs8) = new_key(created)?;
        fields.insert(kid, pkcs8);
        Ok(fields)
    }

    /// Checks a staged key set: every key loads, and the newest signs a credential that
    /// verifies with its public key.
    pub fn check_key_set(&self, fields: &SecretFields) -> Result<(), CredentialError> {
        let keys = load_keys(fields, &BTreeMap::new())?;
        let k = keys
            .last()
            .ok_or_else(|| CredentialError::Store("empty key set".into()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(k.kid.clone());
        let t = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": "key-check"}),
            &k.encoding,
        )
        .map_err(|e| CredentialError::Store(e.to_string()))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.required_spec_claims = HashSet::new();
        v.validate_exp = false;
        v.validate_aud = false;
        jsonwebtoken::decode::<Value>(&t, &k.decoding, &v)
            .map(|_| ())
            .map_err(|e| CredentialError::Store(format!("new signing key does not verify: {e}")))
    }

    /// The public JWKS document.
    pub async fn jwks(&self) -> Value {
        let set = self.keys.read().await.clone();
        let keys: Vec<Value> = set
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": k.kid, "x": k.x,
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The OpenID discovery document for keygate's credentials.
    pub fn discovery(&self) -> Value {
        serde_json::json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.url),
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "lease_id", "role", "scope", "src"],
        })
    }

    /// keygate's credential audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs a credential for `lease` valid until `exp`.
    pub async fn mint(&self, lease: &Lease, exp: u64) -> Result<String, CredentialError> {
        let set = self.keys.read().await.clone();
        let key = set
            .keys
            .last()
            .ok_or_else(|| CredentialError::Store("no signing key".into()))?;
        let now = self.now();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)
            .map_err(|_| CredentialError::Store("random source failed".into()))?;
        let claims = Claims {
            iss: self.url.clone(),
            sub: lease.sub.clone(),
            aud: self.audience.clone(),
            exp,
            iat: now,
            nbf: now,
            jti: hex::encode(jti),
            lease_id: lease.lease_id.clone(),
            role: lease.role.clone(),
            scope: lease.scopes.join(" "),
            src: lease.src.clone(),
        };
        // the JWS compact form by hand with the already-parsed key (what jsonwebtoken::encode
        // does, minus parsing the PKCS#8 document on every call)
        let body =
            serde_json::to_vec(&claims).map_err(|e| CredentialError::Store(e.to_string()))?;
        let mut out = String::with_capacity(key.header_b64.len() + body.len() * 4 / 3 + 90);
        out.push_str(&key.header_b64);
        out.push('.');
        B64URL.encode_string(&body, &mut out);
        let sig = key.pair.sign(out.as_bytes());
        out.push('.');
        B64URL.encode_string(sig.as_ref(), &mut out);
        Ok(out)
    }

    /// Checks a presented credential: signature, issuer, audience, expiry, and its lease. The
    /// signature check is remembered per token; expiry and the lease are checked every time.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, CredentialError> {
        if token.len() > crate::identity::MAX_TOKEN_BYTES {
            return Err(CredentialError::Invalid("too large".into()));
        }
        let mut h = [0u8; 32];
        h.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
        );
        let cached = self.verified.lock().ok().and_then(|m| m.get(&h).cloned());
        // a remembered verification holds only while its signing key is still published
        let cached = match cached {
            Some((kid, a)) if self.has_kid(&kid).await => Some(a),
            _ => None,
        };
        let auth = match cached {
            Some(a) => a,
            None => {
                let kid = jsonwebtoken::decode_header(token)
                    .ok()
                    .and_then(|h| h.kid)
                    .unwrap_or_default();
                let a = Arc::new(self.verify_signature(token).await?);
                if let Ok(mut m) = self.verified.lock() {
                    if m.len() >= VERIFIED_CACHE {
                        m.clear();
                    }
                    m.insert(h, (kid, a.clone()));
                }
                a
            }
        };
        self.check_live(&auth).await?;
        Ok((*auth).clone())
    }

    /// Expiry and lease: on every call.
    async fn check_live(&self, a: &Authenticated) -> Result<(), CredentialError> {
        let now = self.now();
        if now >= a.claims.exp {
            return Err(CredentialError::Expired);
        }
        let lease = self
            .leases
            .get(&a.claims.lease_id)
            .await
            .map_err(|e| CredentialError::Store(e.to_string()))?
            .ok_or(CredentialError::Revoked)?;
        if lease.revoked_at.is_some() {
            return Err(CredentialError::Revoked);
        }
        if now >= lease.expires_at {
            return Err(CredentialError::Expired);
        }
        Ok(())
    }

    /// Signature, issuer and audience (cacheable: they never change for a token).
    async fn verify_signature(&self, token: &str) -> Result<Authenticated, CredentialError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| CredentialError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(CredentialError::Invalid("not an EdDSA credential".into()));
        }
        let kid = header
            .kid
            .ok_or_else(|| CredentialError::Invalid("no kid".into()))?;
        let mut key = self.find(&kid).await;
        if key.is_none() {
            // another replica may have rotated; at most one reload per 5 s
            let due = self.last_kid_reload.lock().map(|mut last| {
                let due = last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5));
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            });
            if due.unwrap_or(false) {
                self.reload().await?;
                key = self.find(&kid).await;
            }
        }
        let key = key.ok_or_else(|| CredentialError::Invalid("unknown signing key".into()))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.required_spec_claims = HashSet::new();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| CredentialError::Invalid(e.to_string()))?;
        let c = data.claims;
        if c.iss != self.url || c.aud != self.audience {
            return Err(CredentialError::Invalid("issuer or audience".into()));
        }
        let scopes = c
            .scope
            .split_whitespace()
            .filter_map(|s| Scope::parse(s).ok())
            .collect();
        Ok(Authenticated { claims: c, scopes })
    }

    async fn has_kid(&self, kid: &str) -> bool {
        self.keys.read().await.keys.iter().any(|k| k.kid == kid)
    }

    async fn find(&self, kid: &str) -> Option<DecodingKey> {
        self.keys
            .read()
            .await
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.decoding.clone())
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
