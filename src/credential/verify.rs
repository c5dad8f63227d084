//! Checking credentials: signature, issuer and audience (cached per token), then expiry and
//! the lease on every call.
use super::*;

impl Credentials {
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

    /// The lease, on every call: a credential lives exactly as long as its lease, so a renewal
    /// (Vault's `renew-self`) extends the token the caller already holds. Its `exp` is what an
    /// offline verifier sees; the signing key stays published past any renewal, which is capped
    /// at the role's max TTL.
    async fn check_live(&self, a: &Authenticated) -> Result<(), CredentialError> {
        let now = self.now();
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
}
