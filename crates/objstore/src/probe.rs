//! A start-up check that the object store refuses what the platform relies on it refusing.
//!
//! Results are immutable only if the store (a) refuses a PUT body whose SHA-256 differs from the
//! signed `x-amz-checksum-sha256` *without storing it*, (b) refuses to overwrite an object under
//! a signed `If-None-Match: *`, and (c) serves the signed `response-content-type` and
//! `response-content-disposition`. The probe tries each against objects under a reserved prefix
//! ([`PROBE_PREFIX`]; tenant objects live under `orgs/`) and names the first capability missing.

use crate::presign::{Presigner, PutSpec};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Where probe objects live. No tenant key starts with it.
pub const PROBE_PREFIX: &str = "_mpegflow/probe/";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("object store unreachable: {0}")]
    Unreachable(String),
    #[error("object store refused a correctly signed write-once PUT ({0}); check the endpoint, bucket, region and credentials")]
    Refused(String),
    #[error("the object store lacks a capability MpegFlow requires: {0}. Use AWS S3 (conditional writes since August 2024), a MinIO release from late 2024 or later, a Garage release with conditional writes, or the embedded store")]
    Missing(&'static str),
}

pub const CHECKSUM: &str =
    "verifying x-amz-checksum-sha256 before storing a PUT body (a wrong body was stored)";
pub const CHECKSUM_REFUSAL: &str = "refusing a PUT body that does not match x-amz-checksum-sha256";
pub const CONDITIONAL_WRITES: &str =
    "conditional writes (If-None-Match: * on PUT; an existing object was overwritten)";
pub const RESPONSE_OVERRIDES: &str =
    "response-content-type / response-content-disposition on presigned GETs";

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn put(
    http: &reqwest::Client,
    p: &Presigner,
    key: &str,
    signed_body: &[u8],
    sent_body: &[u8],
) -> Result<reqwest::StatusCode, ProbeError> {
    let sha = sha_hex(signed_body);
    let put = p
        .put(
            key,
            Duration::from_secs(60),
            &PutSpec {
                size: signed_body.len() as u64,
                sha256_hex: Some(&sha),
                content_type: None,
            },
        )
        .map_err(|e| ProbeError::Refused(e.to_string()))?;
    let mut req = http.put(&put.url).body(sent_body.to_vec());
    for (k, v) in &put.headers {
        if k != "content-length" {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
    Ok(resp.status())
}

async fn get(
    http: &reqwest::Client,
    url: &str,
) -> Result<Option<(reqwest::header::HeaderMap, bytes::Bytes)>, ProbeError> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
    if !resp.status().is_success() {
        return Ok(None);
    }
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
    Ok(Some((headers, body)))
}

/// Runs the probe; `nonce` makes this run's keys fresh (e.g. a random hex string).
pub async fn probe(p: &Presigner, http: &reqwest::Client, nonce: &str) -> Result<(), ProbeError> {
    let ttl = Duration::from_secs(60);
    let first = format!("{PROBE_PREFIX}{nonce}/write-once");
    let original = format!("mpegflow probe {nonce}: the original").into_bytes();
    let status = put(http, p, &first, &original, &original).await?;
    if !status.is_success() {
        return Err(ProbeError::Refused(status.to_string()));
    }

    // (b) An overwrite under If-None-Match: * with a body that matches its own checksum.
    let mut replacement = original.clone();
    replacement[0] ^= 0x20;
    let status = put(http, p, &first, &replacement, &replacement).await?;
    let stored = get(http, &p.get(&first, ttl).url).await?;
    if status.is_success() || stored.as_ref().map(|(_, b)| b.as_ref()) != Some(&original[..]) {
        return Err(ProbeError::Missing(CONDITIONAL_WRITES));
    }

    // (a) A body of the signed length whose checksum differs: refused and not stored.
    let second = format!("{PROBE_PREFIX}{nonce}/checksum");
    let status = put(http, p, &second, &original, &replacement).await?;
    if status.is_success() {
        return Err(ProbeError::Missing(CHECKSUM_REFUSAL));
    }
    if get(http, &p.get(&second, ttl).url).await?.is_some() {
        return Err(ProbeError::Missing(CHECKSUM));
    }

    // (c) The signed response headers.
    let download = p.download(&first, ttl, "probe.html", Some("text/html"));
    let (headers, _) = get(http, &download.url)
        .await?
        .ok_or(ProbeError::Missing(RESPONSE_OVERRIDES))?;
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if header("content-type") != crate::media::OCTET_STREAM
        || !header("content-disposition").starts_with("attachment;")
    {
        return Err(ProbeError::Missing(RESPONSE_OVERRIDES));
    }
    Ok(())
}
