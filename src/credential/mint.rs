//! Minting credentials: an EdDSA JWT for a lease, signed by the newest key.
use super::*;

impl Credentials {
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
}
