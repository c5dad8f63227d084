//! Loading the key-encryption key from a file or an environment variable.
//!
//! Accepted encodings: 32 raw bytes, 64 hex characters, or standard base64 of 32 bytes
//! (surrounding whitespace ignored). A KEK file readable by group or others is refused.
use super::envelope::Kek;
use crate::sensitive::SecretBytes;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Decodes KEK material; the error never contains the material.
pub fn decode(raw: &[u8]) -> Result<SecretBytes, String> {
    if raw.len() == 32 {
        return Ok(SecretBytes::new(raw.to_vec()));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| "KEK is neither 32 raw bytes nor text".to_string())?
        .trim();
    if text.len() == 64 {
        if let Ok(b) = hex::decode(text) {
            return Ok(SecretBytes::new(b));
        }
    }
    match B64.decode(text) {
        Ok(b) if b.len() == 32 => Ok(SecretBytes::new(b)),
        _ => Err("KEK must be 32 bytes: raw, 64 hex characters, or base64".into()),
    }
}

/// Reads a KEK file, refusing one that group or others can read or write.
pub fn load_file(path: &Path) -> Result<Kek, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let raw = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let bytes = decode(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
    Kek::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// Reads a KEK from an environment variable.
pub fn load_env(var: &str) -> Result<Kek, String> {
    let raw = zeroize::Zeroizing::new(
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?,
    );
    let bytes = decode(raw.as_bytes()).map_err(|e| format!("{var}: {e}"))?;
    Kek::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// Writes a new random KEK (base64, mode 0600) to `path`, refusing to overwrite.
pub fn generate_file(path: &Path) -> Result<(), String> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| "system random source failed".to_string())?;
    let text = zeroize::Zeroizing::new(B64.encode(key.as_ref()) + "\n");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let k = [7u8; 32];
        assert_eq!(decode(&k).unwrap().expose(), &k);
        assert_eq!(decode(hex::encode(k).as_bytes()).unwrap().expose(), &k);
        assert_eq!(
            decode(format!("{}\n", B64.encode(k)).as_bytes())
                .unwrap()
                .expose(),
            &k
        );
        assert!(decode(b"short").is_err());
    }

    #[test]
    fn open_mode_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kek");
        generate_file(&p).unwrap();
        assert!(load_file(&p).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_file(&p).unwrap_err();
        assert!(e.contains("mode 640"), "{e}");
        assert!(generate_file(&p).is_err(), "must not overwrite");
    }
}
