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
    #[error("{0} bytes is more than one PUT may carry (5 GiB); multipart uploads are not offered")]
    TooLarge(u64),
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

/// The raw digest of an `x-amz-checksum-sha256` value, if it is one.
pub fn sha256_b64_to_raw(b64: &[u8]) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()?
        .try_into()
        .ok()
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

    /// A GET that makes the store answer with `content_type` (reduced to the safe list) and
    /// `Content-Disposition: attachment` naming `filename`. Both are query parameters covered by
    /// the signature, so they cannot be changed or dropped.
    pub fn download(
        &self,
        key: &str,
        ttl: Duration,
        filename: &str,
        content_type: Option<&str>,
    ) -> Presigned {
        let ttl = ttl.min(MAX_TTL);
        let mut action = self.bucket.get_object(Some(&self.credentials), key);
        action.query_mut().insert(
            "response-content-type",
            crate::media::safe_content_type(content_type),
        );
        action.query_mut().insert(
            "response-content-disposition",
            crate::media::attachment_disposition(filename),
        );
        let url = action.sign(ttl);
        Self::finish("GET", url, BTreeMap::new(), ttl)
    }

    /// A DELETE, for the control plane's own use and never handed out: no tenant or worker
    /// may remove what another's job reads. (The start-up probe removes its objects with it,
    /// and deleted assets' objects are removed once no URL signed for them is valid.)
    pub fn delete(&self, key: &str, ttl: Duration) -> Presigned {
        let ttl = ttl.min(MAX_TTL);
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(ttl);
        Self::finish("DELETE", url, BTreeMap::new(), ttl)
    }

    /// A HEAD that asks the store for the object's stored checksum too.
    pub fn head(&self, key: &str, ttl: Duration) -> Presigned {
        let ttl = ttl.min(MAX_TTL);
        let mut headers = BTreeMap::new();
        headers.insert("x-amz-checksum-mode".to_owned(), "ENABLED".to_owned());
        let mut action = self.bucket.head_object(Some(&self.credentials), key);
        for (k, v) in &headers {
            action.headers_mut().insert(k.clone(), v.clone());
        }
        let url = action.sign(ttl);
        Self::finish("HEAD", url, headers, ttl)
    }

    /// A write-once PUT for `key`: its size, content type, `If-None-Match: *` and (when given)
    /// its SHA-256 are signed in, so the store refuses any other body and any overwrite of an
    /// existing object. The caller must send every returned header exactly.
    pub fn put(
        &self,
        key: &str,
        ttl: Duration,
        spec: &PutSpec<'_>,
    ) -> Result<Presigned, PresignError> {
        if spec.size > crate::media::SINGLE_PUT_LIMIT {
            return Err(PresignError::TooLarge(spec.size));
        }
        let ttl = ttl.min(MAX_TTL);
        let mut headers = BTreeMap::new();
        headers.insert("content-length".to_owned(), spec.size.to_string());
        headers.insert(
            "content-type".to_owned(),
            crate::media::safe_content_type(spec.content_type),
        );
        headers.insert("if-none-match".to_owned(), "*".to_owned());
        if let Some(sha) = spec.sha256_hex {
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

/// What a PUT URL pins.
#[derive(Debug, Clone, Copy)]
pub struct PutSpec<'a> {
    pub size: u64,
    pub sha256_hex: Option<&'a str>,
    /// Reduced to the safe list ([`crate::media::safe_content_type`]).
    pub content_type: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presigner() -> Presigner {
        Presigner::new(&S3Config {
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            bucket: "b".into(),
            path_style: true,
            access_key: "ak".into(),
            secret_key: "sk".into(),
        })
        .unwrap()
    }

    #[test]
    fn every_put_is_write_once_sized_and_typed() {
        let p = presigner();
        let sha = "ab".repeat(32);
        let put = p
            .put(
                "k",
                Duration::from_secs(60),
                &PutSpec {
                    size: 7,
                    sha256_hex: Some(&sha),
                    content_type: Some("text/html"),
                },
            )
            .unwrap();
        assert_eq!(put.headers["content-length"], "7");
        assert_eq!(put.headers["if-none-match"], "*");
        assert_eq!(put.headers["content-type"], "application/octet-stream");
        assert!(put.headers.contains_key("x-amz-checksum-sha256"));
        let signed = put.url.split("X-Amz-SignedHeaders=").nth(1).unwrap();
        let signed = signed.split('&').next().unwrap().replace("%3B", ";");
        for h in [
            "content-length",
            "content-type",
            "host",
            "if-none-match",
            "x-amz-checksum-sha256",
        ] {
            assert!(
                signed.split(';').any(|s| s == h),
                "{h} not signed: {signed}"
            );
        }
        let big = PutSpec {
            size: crate::media::SINGLE_PUT_LIMIT + 1,
            sha256_hex: None,
            content_type: None,
        };
        assert!(matches!(
            p.put("k", Duration::from_secs(60), &big),
            Err(PresignError::TooLarge(_))
        ));
    }

    #[test]
    fn downloads_are_attachments_with_a_safe_type() {
        let p = presigner();
        let get = p.download("k", Duration::from_secs(60), "x.html", Some("text/html"));
        let url = Url::parse(&get.url).unwrap();
        let q: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response-content-type"], "application/octet-stream");
        assert!(q["response-content-disposition"].starts_with("attachment; filename=\"x.html\""));
    }
}
