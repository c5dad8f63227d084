//! Signing keys: the one rotation algorithm ([`successor_set`]) used both by the daemon's own
//! check at start and by the rotation engine's staged rotation, loading, publishing (JWKS).
use super::*;

pub(super) fn new_key(now: u64) -> Result<(String, SecretBytes), CredentialError> {
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

pub(super) fn load_keys(
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

/// The one key-rotation algorithm (the daemon's own period check and the rotation engine's
/// staged rotation both use it): keep every key while a credential it signed can still be valid
/// — it stopped signing when its successor was created, plus the longest credential lifetime
/// (`retain_ms`) — and add a new key created after the newest. Returns the fields (kid →
/// PKCS#8), their creation times (kid → ms) and the new kid. `now` and times are milliseconds.
pub(super) fn successor_set(
    keys: &[SigningKey],
    stored: &SecretFields,
    now: u64,
    retain_ms: u64,
) -> Result<(SecretFields, BTreeMap<String, String>, String), CredentialError> {
    let mut fields = SecretFields::new();
    let mut meta = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        let retired_at = keys.get(i + 1).map(|n| n.created).unwrap_or(now);
        if retired_at + retain_ms >= now {
            if let Some(p) = stored.get(&k.kid) {
                fields.insert(k.kid.clone(), p.clone());
                meta.insert(k.kid.clone(), k.created.to_string());
            }
        }
    }
    let created = keys.last().map_or(now, |k| now.max(k.created + 1));
    let (kid, pkcs8) = new_key(created)?;
    fields.insert(kid.clone(), pkcs8);
    meta.insert(kid.clone(), created.to_string());
    Ok((fields, meta, kid))
}

impl Credentials {
    /// Re-reads the signing keys from the store (another replica may have rotated them).
    pub async fn reload(&self) -> Result<(), CredentialError> {
        match self.store.get_internal(&SIGNING_KEYS_PATH).await {
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
            let stored = match self.store.get_internal(&SIGNING_KEYS_PATH).await {
                Ok(v) => v.fields,
                Err(SecretsError::NotFound(_)) => SecretFields::new(),
                Err(e) => return Err(e.into()),
            };
            let (fields, meta, kid) =
                successor_set(&set.keys, &stored, now, self.retain_secs * 1000)?;
            let opts = PutOptions {
                cas: Some(set.version),
                max_versions: Some(2),
                custom_metadata: Some(meta),
            };
            match self
                .store
                .put_internal(&SIGNING_KEYS_PATH, &fields, &opts)
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
        successor_set(&keys, current, now, self.retain_secs * 1000).map(|(fields, _, _)| fields)
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

    pub(super) async fn has_kid(&self, kid: &str) -> bool {
        self.keys.read().await.keys.iter().any(|k| k.kid == kid)
    }

    pub(super) async fn find(&self, kid: &str) -> Option<DecodingKey> {
        self.keys
            .read()
            .await
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.decoding.clone())
    }
}
