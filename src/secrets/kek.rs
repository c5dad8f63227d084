//! Loading the key-encryption key from a file or an environment variable.
//!
//! Accepted encodings: 32 raw bytes, 64 hex characters, or standard base64 of 32 bytes
//! (surrounding whitespace ignored). A KEK file readable by group or others is refused.
use super::envelope::{EnvelopeError, Kek};
use crate::sensitive::SecretBytes;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a KEK cannot be loaded or made. Never holds the material.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// Not one of the accepted encodings of 32 bytes.
    #[error("KEK must be 32 bytes: raw, 64 hex characters, or base64")]
    Encoding,
    /// Neither 32 raw bytes nor UTF-8 text.
    #[error("KEK is neither 32 raw bytes nor text")]
    NotText,
    /// A file or variable whose content does not decode.
    #[error("{origin}: {source}")]
    In {
        /// The file or variable.
        origin: String,
        /// Why.
        #[source]
        source: Box<KekError>,
    },
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is open to group or others.
    #[error("{} is accessible by group or others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    /// The decoded bytes are not a KEK.
    #[error(transparent)]
    Key(#[from] EnvelopeError),
    /// The random source failed.
    #[error("system random source failed")]
    Random,
    /// A new KEK file could not be written.
    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),
}

fn within(origin: impl Into<String>) -> impl FnOnce(KekError) -> KekError {
    let origin = origin.into();
    move |e| KekError::In {
        origin,
        source: Box::new(e),
    }
}

/// Decodes KEK material; the error never contains the material.
pub fn decode(raw: &[u8]) -> Result<SecretBytes, KekError> {
    if raw.len() == 32 {
        return Ok(SecretBytes::new(raw.to_vec()));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| KekError::NotText)?
        .trim();
    if text.len() == 64 {
        if let Ok(b) = hex::decode(text) {
            return Ok(SecretBytes::new(b));
        }
    }
    match B64.decode(text) {
        Ok(b) if b.len() == 32 => Ok(SecretBytes::new(b)),
        _ => Err(KekError::Encoding),
    }
}

/// Reads a KEK file, refusing one that group or others can read or write.
pub fn load_file(path: &Path) -> Result<Kek, KekError> {
    let read_err = |source| KekError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KekError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let raw = zeroize::Zeroizing::new(std::fs::read(path).map_err(read_err)?);
    let bytes = decode(&raw).map_err(within(path.display().to_string()))?;
    Ok(Kek::from_bytes(&bytes)?)
}

/// Reads a KEK from an environment variable.
pub fn load_env(var: &str) -> Result<Kek, KekError> {
    let raw = zeroize::Zeroizing::new(
        std::env::var(var).map_err(|_| KekError::EnvUnset(var.to_string()))?,
    );
    let bytes = decode(raw.as_bytes()).map_err(within(var))?;
    Ok(Kek::from_bytes(&bytes)?)
}

/// Writes a new random KEK (base64, mode 0600) to `path`, refusing to overwrite.
pub fn generate_file(path: &Path) -> Result<(), KekError> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| KekError::Random)?;
    let text = zeroize::Zeroizing::new(B64.encode(key.as_ref()) + "\n");
    Ok(crate::fsutil::write_private(path, &text)?)
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
        assert!(
            matches!(e, KekError::Permissions { mode: 0o640, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("mode 640"), "{e}");
        let again = generate_file(&p).unwrap_err();
        assert!(
            matches!(
                again,
                KekError::Write(crate::fsutil::WriteError::Create { .. })
            ),
            "must not overwrite: {again}"
        );
        // the io::Error stays reachable as the source
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&again);
        let mut found = false;
        while let Some(e) = cur {
            found |= e.downcast_ref::<std::io::Error>().is_some();
            cur = e.source();
        }
        assert!(found, "no io::Error in the source chain of {again}");
    }
}
