//! `keygate bench floor`: what an exchange and a secret read cannot avoid, measured on this
//! machine with the crates and key types keygate uses.
//!
//! - exchange floor = one RS256-2048 verification of a platform token (jsonwebtoken + aws-lc)
//!   + one EdDSA credential signature + one SHA-256 over an audit line;
//! - read floor = one EdDSA credential verification + one AES-256-GCM decryption of 1 KiB
//!   + one SHA-256 over an audit line;
//! - cached read floor = what a read with a credential whose signature check is cached cannot
//!   avoid: one SHA-256 of the credential (the cache key) + one AES-256-GCM decryption of 1 KiB
//!   + one SHA-256 over an audit line.
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Operations per second.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Floor {
    /// Threads used for the all-cores figures.
    pub cores: usize,
    /// Exchange floor, one thread.
    pub exchange_1: f64,
    /// Exchange floor, all cores.
    pub exchange_all: f64,
    /// Read floor, one thread.
    pub read_1: f64,
    /// Read floor, all cores.
    pub read_all: f64,
    /// Cached-credential read floor, one thread.
    pub read_cached_1: f64,
}

/// Keys and inputs, built once.
struct Inputs {
    platform_token: String,
    rsa_pub: DecodingKey,
    ed_enc: EncodingKey,
    ed_dec: DecodingKey,
    credential: String,
    credential_claims: Value,
    aead: LessSafeKey,
    sealed: Vec<u8>,
    audit_line: Vec<u8>,
}

fn inputs() -> Result<Inputs, String> {
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(|e| e.to_string())?;
    let rsa_enc =
        EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).map_err(|e| e.to_string())?;
    let rsa_pub =
        DecodingKey::from_rsa_pem(rsa.public_key_pem().as_bytes()).map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // a GitHub-Actions-sized token
    let claims = json!({
        "iss": "https://token.actions.githubusercontent.com", "aud": "https://keygate.example",
        "sub": "repo:acme/app:ref:refs/heads/main", "repository": "acme/app",
        "repository_id": "123456789", "repository_owner": "acme", "repository_owner_id": "4711",
        "ref": "refs/heads/main", "ref_type": "branch", "ref_protected": "true",
        "sha": "0123456789abcdef0123456789abcdef01234567", "event_name": "push",
        "workflow": "deploy", "workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "run_id": "9876543210", "run_attempt": "1", "actor": "octocat", "actor_id": "1",
        "runner_environment": "github-hosted", "jti": "6f0c1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b",
        "iat": now, "nbf": now, "exp": now + 300,
    });
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let platform_token = jsonwebtoken::encode(&h, &claims, &rsa_enc).map_err(|e| e.to_string())?;

    let doc =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| "ed25519 key".to_string())?;
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| "ed25519 key".to_string())?;
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let ed_enc = EncodingKey::from_ed_der(doc.as_ref());
    let ed_dec = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
    let credential_claims = json!({
        "iss": "https://keygate.example", "sub": "repo:acme/app:ref:refs/heads/main",
        "aud": "https://keygate.example", "exp": now + 900, "iat": now, "nbf": now,
        "jti": "00112233445566778899aabbccddeeff", "lease_id": "deploy/repo:acme/app:ref:refs/heads/main/0011223344556677",
        "role": "deploy", "scope": "read:prod/api/*",
        "src": {"iss": "https://token.actions.githubusercontent.com", "repository": "acme/app", "ref": "refs/heads/main"},
    });
    let mut eh = Header::new(Algorithm::EdDSA);
    eh.kid = Some("c1".into());
    let credential =
        jsonwebtoken::encode(&eh, &credential_claims, &ed_enc).map_err(|e| e.to_string())?;

    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| "random".to_string())?;
    let aead =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).map_err(|_| "aes key".to_string())?);
    let mut sealed = vec![7u8; 1024];
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([1; 12]),
        Aad::from(b"prod/api\0\0\0\0\0\0\0\x01"),
        &mut sealed,
    )
    .map_err(|_| "seal".to_string())?;
    let audit_line = serde_json::to_vec(&json!({
        "seq": 123456, "time": "2026-11-27T17:00:00.123456Z", "node": "keygate-1", "kind": "request",
        "prev": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "request_id": "00112233445566778899aabb", "op": "keygate.v1.Secrets/Get",
        "caller": {"peer": "10.0.0.12:51234", "principal": "credential", "issuer": "https://token.actions.githubusercontent.com",
            "subject": "repo:acme/app:ref:refs/heads/main", "role": "deploy", "jti": "00112233445566778899aabbccddeeff",
            "lease_id": "deploy/repo:acme/app:ref:refs/heads/main/0011223344556677",
            "token_hmac": "hmac-sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"},
        "resources": ["secret:prod/api@0"], "decision": "allow", "status": "OK",
    }))
    .map_err(|e| e.to_string())?;
    Ok(Inputs {
        platform_token,
        rsa_pub,
        ed_enc,
        ed_dec,
        credential,
        credential_claims,
        aead,
        sealed,
        audit_line,
    })
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.required_spec_claims = HashSet::new();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v
}

fn exchange_op(i: &Inputs, v: &Validation) -> Result<(), String> {
    let t = jsonwebtoken::decode::<Value>(&i.platform_token, &i.rsa_pub, v)
        .map_err(|e| e.to_string())?;
    std::hint::black_box(t);
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("c1".into());
    let c = jsonwebtoken::encode(&h, &i.credential_claims, &i.ed_enc).map_err(|e| e.to_string())?;
    std::hint::black_box(c);
    std::hint::black_box(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &i.audit_line,
    ));
    Ok(())
}

fn read_op(i: &Inputs, v: &Validation, buf: &mut Vec<u8>, cached: bool) -> Result<(), String> {
    if cached {
        std::hint::black_box(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            i.credential.as_bytes(),
        ));
    } else {
        let c = jsonwebtoken::decode::<Value>(&i.credential, &i.ed_dec, v)
            .map_err(|e| e.to_string())?;
        std::hint::black_box(c);
    }
    buf.clear();
    buf.extend_from_slice(&i.sealed);
    let plain = i
        .aead
        .open_in_place(
            Nonce::assume_unique_for_key([1; 12]),
            Aad::from(b"prod/api\0\0\0\0\0\0\0\x01"),
            buf,
        )
        .map_err(|_| "open".to_string())?;
    std::hint::black_box(plain);
    std::hint::black_box(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &i.audit_line,
    ));
    Ok(())
}

/// What [`rate`] measures.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    Exchange,
    Read,
    ReadCached,
}

fn rate(threads: usize, d: Duration, inputs: &Arc<Inputs>, op: Op) -> Result<f64, String> {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let i = inputs.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let (vr, ve) = (validation(Algorithm::RS256), validation(Algorithm::EdDSA));
                let mut buf = Vec::with_capacity(2048);
                let mut n = 0u64;
                let t0 = Instant::now();
                while t0.elapsed() < d {
                    for _ in 0..16 {
                        match op {
                            Op::Exchange => exchange_op(&i, &vr)?,
                            Op::Read => read_op(&i, &ve, &mut buf, false)?,
                            Op::ReadCached => read_op(&i, &ve, &mut buf, true)?,
                        }
                    }
                    n += 16;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0u64;
    for h in handles {
        total += h
            .join()
            .map_err(|_| "floor thread panicked".to_string())??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Measures both floors, on one thread and on every core, `d` each.
pub fn measure(d: Duration) -> Result<Floor, String> {
    let i = Arc::new(inputs()?);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Ok(Floor {
        cores,
        exchange_1: rate(1, d, &i, Op::Exchange)?,
        exchange_all: rate(cores, d, &i, Op::Exchange)?,
        read_1: rate(1, d, &i, Op::Read)?,
        read_all: rate(cores, d, &i, Op::Read)?,
        read_cached_1: rate(1, d, &i, Op::ReadCached)?,
    })
}
