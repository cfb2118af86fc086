//! The file holding the keys that seal webhook signing secrets (see [`Keyring::parse`] for its
//! lines). It lives outside the database, readable by its owner only: a key file others can
//! read is refused rather than used.

use mpegflow_domain::webhook::{Keyring, KeyringError};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading the webhook key file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the webhook key file {path} is readable by others (mode {mode:o}): make it 0600")]
    Exposed { path: String, mode: u32 },
    #[error("the webhook key file {path}: {error}")]
    Malformed { path: String, error: KeyringError },
}

/// Reads a key file, refusing one that others than its owner can read.
pub fn read_keyring(path: &Path) -> Result<Keyring, KeyFileError> {
    let shown = path.display().to_string();
    let read = |error| KeyFileError::Read {
        path: shown.clone(),
        error,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed {
            path: shown,
            mode: mode & 0o777,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    Keyring::parse(&text).map_err(|error| KeyFileError::Malformed { path: shown, error })
}
