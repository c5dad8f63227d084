//! Envelope encryption: each secret version gets a fresh 256-bit data key (DEK); the fields are
//! sealed with AES-256-GCM under the DEK, and the DEK is sealed under the key-encryption key
//! (KEK). Both associated data strings bind the ciphertext to its path and version, so a record
//! moved to another path or version fails to open.
//!
//! Nonces: one message per DEK, so the data nonce can never repeat under its key; DEK wraps use
//! random 96-bit nonces under the KEK (safe far beyond 2^32 wraps per KEK; rotate the KEK before).
use super::model::VersionRecord;
use crate::sensitive::{SecretBytes, SecretFields};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::fmt;
use zeroize::Zeroizing;

/// Current record format.
pub const FORMAT: u32 = 1;

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The record does not authenticate: changed, moved, or not ours.
    #[error("integrity check failed")]
    Integrity,
    /// The record names a KEK that is not loaded.
    #[error("record is wrapped by KEK {0}, which is not loaded")]
    UnknownKek(String),
    /// The record is not well-formed.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// The system random source or cipher failed.
    #[error("crypto failure")]
    Crypto,
}

/// A key-encryption key. `Debug` shows only its id.
pub struct Kek {
    id: String,
    key: LessSafeKey,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    /// Builds a KEK from 32 secret bytes.
    pub fn from_bytes(bytes: &SecretBytes) -> Result<Self, EnvelopeError> {
        if bytes.len() != 32 {
            return Err(EnvelopeError::Malformed("a KEK is 32 bytes"));
        }
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"keygate kek id\0");
        ctx.update(bytes.expose());
        let id = hex::encode(&ctx.finish().as_ref()[..8]);
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes.expose()).map_err(|_| EnvelopeError::Crypto)?,
        );
        Ok(Self { id, key })
    }

    /// The KEK's public id: a truncated hash, safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The KEKs loaded: the active one wraps new data keys; the others only unwrap (during rotation).
#[derive(Debug)]
pub struct Keyring {
    /// Wraps every new data key.
    pub active: std::sync::Arc<Kek>,
    /// Still accepted for unwrapping.
    pub retired: Vec<std::sync::Arc<Kek>>,
}

impl Keyring {
    /// A keyring with one KEK.
    pub fn single(active: Kek) -> Self {
        Self {
            active: std::sync::Arc::new(active),
            retired: Vec::new(),
        }
    }

    fn find(&self, id: &str) -> Option<&Kek> {
        std::iter::once(&self.active)
            .chain(self.retired.iter())
            .find(|k| k.id == id)
            .map(|k| &**k)
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, EnvelopeError> {
    let mut b = Zeroizing::new([0u8; N]);
    SystemRandom::new()
        .fill(b.as_mut())
        .map_err(|_| EnvelopeError::Crypto)?;
    Ok(b)
}

fn aad(kind: &str, path: &str, version: u64, kek_id: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + path.len());
    a.extend_from_slice(b"keygate/v1/");
    a.extend_from_slice(kind.as_bytes());
    a.push(0);
    a.extend_from_slice(path.as_bytes());
    a.push(0);
    a.extend_from_slice(&version.to_be_bytes());
    a.extend_from_slice(kek_id.as_bytes());
    a
}

fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let nonce = random::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(nonce.as_ref());
    let mut body = Zeroizing::new(plaintext.to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(*nonce),
        Aad::from(aad),
        &mut *body,
    )
    .map_err(|_| EnvelopeError::Crypto)?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(EnvelopeError::Integrity);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| EnvelopeError::Integrity)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| EnvelopeError::Integrity)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// Length-prefixed binary encoding of the fields: no intermediate strings to leak.
fn encode_fields(fields: &SecretFields) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::new());
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for (name, value) in fields.iter() {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.expose());
    }
    out
}

fn decode_fields(mut buf: &[u8]) -> Result<SecretFields, EnvelopeError> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], EnvelopeError> {
        if buf.len() < n {
            return Err(EnvelopeError::Malformed("truncated fields"));
        }
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        Ok(head)
    }
    fn len(buf: &mut &[u8]) -> Result<usize, EnvelopeError> {
        let b = take(buf, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let count = len(&mut buf)?;
    let mut fields = SecretFields::new();
    for _ in 0..count {
        let n = len(&mut buf)?;
        let name = std::str::from_utf8(take(&mut buf, n)?)
            .map_err(|_| EnvelopeError::Malformed("field name"))?
            .to_string();
        let n = len(&mut buf)?;
        let value = SecretBytes::new(take(&mut buf, n)?.to_vec());
        fields.insert(name, value);
    }
    if !buf.is_empty() {
        return Err(EnvelopeError::Malformed("trailing bytes"));
    }
    Ok(fields)
}

/// Seals `fields` as version `version` of `path` under a fresh data key.
pub fn seal_version(
    keyring: &Keyring,
    path: &str,
    version: u64,
    fields: &SecretFields,
) -> Result<VersionRecord, EnvelopeError> {
    let dek = random::<32>()?;
    let dek_key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, dek.as_ref()).map_err(|_| EnvelopeError::Crypto)?,
    );
    let kek = &keyring.active;
    let ciphertext = seal(
        &dek_key,
        &aad("data", path, version, ""),
        &encode_fields(fields),
    )?;
    let wrapped = seal(&kek.key, &aad("dek", path, version, &kek.id), dek.as_ref())?;
    Ok(VersionRecord {
        format: FORMAT,
        kek_id: kek.id.clone(),
        wrapped_dek: B64.encode(wrapped),
        ciphertext: B64.encode(ciphertext),
    })
}

fn unwrap_dek(
    keyring: &Keyring,
    path: &str,
    version: u64,
    record: &VersionRecord,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if record.format != FORMAT {
        return Err(EnvelopeError::Malformed("unknown record format"));
    }
    let kek = keyring
        .find(&record.kek_id)
        .ok_or_else(|| EnvelopeError::UnknownKek(record.kek_id.clone()))?;
    let wrapped = B64
        .decode(&record.wrapped_dek)
        .map_err(|_| EnvelopeError::Integrity)?;
    let dek = open(&kek.key, &aad("dek", path, version, &kek.id), &wrapped)?;
    if dek.len() != 32 {
        return Err(EnvelopeError::Integrity);
    }
    Ok(dek)
}

/// Opens version `version` of `path`; fails with `Integrity` if the record was changed or moved.
pub fn open_version(
    keyring: &Keyring,
    path: &str,
    version: u64,
    record: &VersionRecord,
) -> Result<SecretFields, EnvelopeError> {
    let dek = unwrap_dek(keyring, path, version, record)?;
    let dek_key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &dek).map_err(|_| EnvelopeError::Crypto)?);
    let ciphertext = B64
        .decode(&record.ciphertext)
        .map_err(|_| EnvelopeError::Integrity)?;
    let plain = open(&dek_key, &aad("data", path, version, ""), &ciphertext)?;
    decode_fields(&plain)
}

/// Re-wraps a record's data key under the keyring's active KEK; the ciphertext is unchanged.
pub fn rewrap(
    keyring: &Keyring,
    path: &str,
    version: u64,
    record: &VersionRecord,
) -> Result<VersionRecord, EnvelopeError> {
    let dek = unwrap_dek(keyring, path, version, record)?;
    let kek = &keyring.active;
    let wrapped = seal(&kek.key, &aad("dek", path, version, &kek.id), &dek)?;
    Ok(VersionRecord {
        format: FORMAT,
        kek_id: kek.id.clone(),
        wrapped_dek: B64.encode(wrapped),
        ciphertext: record.ciphertext.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(b: u8) -> Kek {
        Kek::from_bytes(&SecretBytes::new(vec![b; 32])).unwrap()
    }

    fn fields() -> SecretFields {
        [
            ("user".to_string(), SecretBytes::new(b"alice".to_vec())),
            ("password".to_string(), SecretBytes::new(b"s3cr3t".to_vec())),
            ("empty".to_string(), SecretBytes::new(Vec::new())),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::single(kek(1));
        let rec = seal_version(&ring, "prod/api", 3, &fields()).unwrap();
        assert_eq!(open_version(&ring, "prod/api", 3, &rec).unwrap(), fields());
    }

    #[test]
    fn bound_to_path_and_version() {
        let ring = Keyring::single(kek(1));
        let rec = seal_version(&ring, "prod/api", 3, &fields()).unwrap();
        assert!(matches!(
            open_version(&ring, "prod/api2", 3, &rec),
            Err(EnvelopeError::Integrity)
        ));
        assert!(matches!(
            open_version(&ring, "prod/api", 4, &rec),
            Err(EnvelopeError::Integrity)
        ));
    }

    #[test]
    fn any_flipped_byte_fails() {
        let ring = Keyring::single(kek(1));
        let rec = seal_version(&ring, "a", 1, &fields()).unwrap();
        let raw = B64.decode(&rec.ciphertext).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let mut r = rec.clone();
            r.ciphertext = B64.encode(&bad);
            assert!(matches!(
                open_version(&ring, "a", 1, &r),
                Err(EnvelopeError::Integrity)
            ));
        }
    }

    #[test]
    fn rewrap_moves_to_new_kek() {
        let old = Keyring::single(kek(1));
        let rec = seal_version(&old, "a", 1, &fields()).unwrap();
        let both = Keyring {
            active: std::sync::Arc::new(kek(2)),
            retired: vec![std::sync::Arc::new(kek(1))],
        };
        let moved = rewrap(&both, "a", 1, &rec).unwrap();
        assert_eq!(moved.kek_id, kek(2).id());
        let new_only = Keyring::single(kek(2));
        assert_eq!(open_version(&new_only, "a", 1, &moved).unwrap(), fields());
        assert!(open_version(&old, "a", 1, &moved).is_err());
    }

    #[test]
    fn fresh_nonces_and_keys() {
        let ring = Keyring::single(kek(1));
        let a = seal_version(&ring, "a", 1, &fields()).unwrap();
        let b = seal_version(&ring, "a", 1, &fields()).unwrap();
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_dek, b.wrapped_dek);
    }
}
