//! Small file helpers shared by `devenv`, `devissuer`, `audit` and `secrets::kek`. A leaf module.
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a private file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// It cannot be created (it exists, or the directory is missing or read-only).
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It was created but could not be written and synced (a full disk).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Writes a new file with mode 0600 (refuses to overwrite).
pub fn write_private(path: &Path, contents: &str) -> Result<(), WriteError> {
    write_private_bytes(path, contents.as_bytes())
}

/// Writes a new file of bytes with mode 0600 (refuses to overwrite), synced before `Ok`.
pub fn write_private_bytes(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| WriteError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|source| WriteError::Write {
            path: path.to_path_buf(),
            source,
        })
}
