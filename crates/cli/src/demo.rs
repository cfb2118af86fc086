//! The demo org `up` creates, and its API key, kept across restarts.
//!
//! Keys are stored in the database as SHA-256 only, so the plaintext of the demo key lives in
//! one file, `DIR/demo-api-key` (mode 0600). A restart reuses that key while it is still valid
//! for the demo org; only when it is missing or no longer valid is a new one minted, so
//! restarts do not pile up live keys.

use anyhow::{Context, Result};
use mpegflow_domain::token::{Secret, TokenKind};
use mpegflow_store::{Store, StoreError};
use std::path::Path;

pub const ORG: &str = "demo";
pub const KEY_FILE: &str = "demo-api-key";

/// The demo org's id and API key (plaintext), creating either as needed.
pub async fn credentials(store: &Store, data_dir: &Path) -> Result<(uuid::Uuid, String)> {
    let key_file = data_dir.join(KEY_FILE);
    let (org_id, key) = match store.create_org(ORG).await {
        Ok((org_id, key)) => (org_id, key.expose().to_owned()),
        Err(StoreError::Conflict(_)) => {
            let org_id = store.org_by_name(ORG).await?;
            match kept_key(store, &key_file, org_id).await? {
                Some(key) => return Ok((org_id, key)),
                None => {
                    let (_, key) = store.create_api_key(org_id, "up").await?;
                    (org_id, key.expose().to_owned())
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    write_private(&key_file, &format!("{key}\n"))?;
    Ok((org_id, key))
}

/// The key in `file`, if it is a live key of `org_id`.
async fn kept_key(store: &Store, file: &Path, org_id: uuid::Uuid) -> Result<Option<String>> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(None);
    };
    let Ok(secret) = Secret::parse(TokenKind::ApiKey, text.trim()) else {
        return Ok(None);
    };
    let live = store.authenticate_api_key(&secret.hash()).await?;
    Ok(live
        .filter(|(org, _)| *org == org_id)
        .map(|_| text.trim().to_owned()))
}

/// Writes `content` to `path`, readable by this user only.
pub fn write_private(path: &Path, content: &str) -> Result<()> {
    crate::write_private(path, content).with_context(|| format!("writing {}", path.display()))
}
