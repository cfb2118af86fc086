use base64::Engine;
use rusty_s3::actions::S3Action;
use rusty_s3::{Bucket, Credentials, UrlStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;
use url::Url;

/// The longest a presigned URL may live.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// Where objects live and the key that signs for them. Held by the control plane only.
#[derive(Clone, Serialize, Deserialize)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    #[serde(default = "yes")]
    pub path_style: bool,
    pub access_key: String,
    pub secret_key: String,
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    #[error("invalid S3 endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("a SHA-256 checksum must be 64 hex characters")]
    BadChecksum,
}

/// A presigned request: method, URL and the headers the caller must send exactly.
#[derive(Debug, Clone, Serialize)]
pub struct Presigned {
    pub method: &'static str,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Clone)]
pub struct Presigner {
    bucket: Bucket,
    credentials: Credentials,
}

impl std::fmt::Debug for Presigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presigner")
            .field("bucket", &self.bucket.name())
            .finish_non_exhaustive()
    }
}

/// `x-amz-checksum-sha256` carries the base64 of the raw digest.
pub fn sha256_hex_to_b64(hex_digest: &str) -> Result<String, PresignError> {
    let raw = hex::decode(hex_digest).map_err(|_| PresignError::BadChecksum)?;
    if raw.len() != 32 {
        return Err(PresignError::BadChecksum);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(raw))
}

impl Presigner {
    pub fn new(cfg: &S3Config) -> Result<Self, PresignError> {
        let endpoint: Url = cfg.endpoint.parse().map_err(|e: url::ParseError| {
            PresignError::Endpoint(cfg.endpoint.clone(), e.to_string())
        })?;
        let style = if cfg.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, cfg.bucket.clone(), cfg.region.clone())
            .map_err(|e| PresignError::Endpoint(cfg.endpoint.clone(), e.to_string()))?;
        Ok(Presigner {
            bucket,
            credentials: Credentials::new(cfg.access_key.clone(), cfg.secret_key.clone()),
        })
    }

    fn finish(
        method: &'static str,
        url: Url,
        headers: BTreeMap<String, String>,
        ttl: Duration,
    ) -> Presigned {
        Presigned {
            method,
            url: url.to_string(),
            headers,
            expires_at: OffsetDateTime::now_utc() + ttl,
        }
    }

    pub fn get(&self, key: &str, ttl: Duration) -> Presigned {
        let ttl = ttl.min(MAX_TTL);
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(ttl);
        Self::finish("GET", url, BTreeMap::new(), ttl)
    }

    pub fn head(&self, key: &str, ttl: Duration) -> Presigned {
        let ttl = ttl.min(MAX_TTL);
        let url = self
            .bucket
            .head_object(Some(&self.credentials), key)
            .sign(ttl);
        Self::finish("HEAD", url, BTreeMap::new(), ttl)
    }

    /// A PUT for `key`. A given size and SHA-256 are signed in as `content-length` and
    /// `x-amz-checksum-sha256`, so the store refuses any other body.
    pub fn put(
        &self,
        key: &str,
        ttl: Duration,
        size: Option<u64>,
        sha256_hex: Option<&str>,
    ) -> Result<Presigned, PresignError> {
        let ttl = ttl.min(MAX_TTL);
        let mut headers = BTreeMap::new();
        if let Some(size) = size {
            headers.insert("content-length".to_owned(), size.to_string());
        }
        if let Some(sha) = sha256_hex {
            headers.insert("x-amz-checksum-sha256".to_owned(), sha256_hex_to_b64(sha)?);
        }
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        for (k, v) in &headers {
            action.headers_mut().insert(k.clone(), v.clone());
        }
        let url = action.sign(ttl);
        Ok(Self::finish("PUT", url, headers, ttl))
    }
}
