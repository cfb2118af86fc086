//! Reading the object store from the control plane, through short-lived presigned URLs.

use crate::AppState;
use mpegflow_objstore::presign::sha256_b64_to_raw;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// What the object store says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    /// Hex SHA-256, when the store kept a checksum.
    pub sha256: Option<String>,
}

impl AppState {
    /// HEADs an object; `Ok(None)` when it does not exist.
    pub async fn head_object(&self, key: &str) -> Result<Option<ObjectHead>, String> {
        let head = self.presigner.head(key, Duration::from_secs(60));
        let mut req = self.http.head(&head.url);
        for (k, v) in &head.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let Some(resp) = existing(req.send().await)? else {
            return Ok(None);
        };
        let size = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .ok_or("object store sent no content-length")?;
        let sha256 = resp
            .headers()
            .get("x-amz-checksum-sha256")
            .and_then(|v| sha256_b64_to_raw(v.as_bytes()))
            .map(hex::encode);
        Ok(Some(ObjectHead { size, sha256 }))
    }

    /// Deletes an object; one that is already gone counts as deleted. The URL is signed here
    /// for this one request and never leaves the control plane.
    pub async fn delete_object(&self, key: &str) -> Result<(), String> {
        let delete = self.presigner.delete(key, Duration::from_secs(60));
        let resp = self
            .http
            .delete(&delete.url)
            .send()
            .await
            .map_err(|e| format!("object store unreachable: {}", e.without_url()))?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(()),
            status => Err(format!("object store answered {status} to a DELETE")),
        }
    }

    /// Reads an object and hashes it as it streams (constant memory), stopping past
    /// `max_bytes`; `Ok(None)` when it does not exist. Objects are write-once, so the hash is
    /// that of the object for good.
    pub async fn hash_object(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<Option<ObjectHead>, String> {
        let get = self.presigner.get(key, Duration::from_secs(300));
        let Some(mut resp) = existing(self.http_streaming.get(&get.url).send().await)? else {
            return Ok(None);
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the object: {}", e.without_url()))?
        {
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(format!("the object is larger than {max_bytes} bytes"));
            }
            hasher.update(&chunk);
        }
        Ok(Some(ObjectHead {
            size,
            sha256: Some(hex::encode(hasher.finalize())),
        }))
    }
}

/// The store's answer about one object: the response when it exists, `None` when it does not,
/// an error for anything else.
fn existing(sent: reqwest::Result<reqwest::Response>) -> Result<Option<reqwest::Response>, String> {
    let resp = sent.map_err(|e| format!("object store unreachable: {}", e.without_url()))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(format!("object store answered {}", resp.status()));
    }
    Ok(Some(resp))
}
