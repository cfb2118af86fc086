//! A start-up check that the object store is the one configured and refuses what the platform
//! relies on it refusing.
//!
//! The first write and read tell whether the endpoint, bucket, region and key pair are right;
//! a refusal is traced to the setting it points at ([`StoreSetting`]) from the store's S3 error
//! code. Results are immutable only if the store then (a) refuses a PUT body whose SHA-256
//! differs from the signed `x-amz-checksum-sha256` *without storing it*, (b) refuses to
//! overwrite an object under a signed `If-None-Match: *`, and (c) serves the signed
//! `response-content-type` and `response-content-disposition`. The probe tries each against
//! objects under a reserved prefix ([`PROBE_PREFIX`]; tenant objects live under `orgs/`), names
//! the first capability missing, and deletes what it wrote.

use crate::presign::{Presigner, PutSpec};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Where probe objects live. No tenant key starts with it.
pub const PROBE_PREFIX: &str = "_mpegflow/probe/";

/// The part of the store's configuration a refusal points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreSetting {
    Endpoint,
    Region,
    Bucket,
    AccessKey,
    SecretKey,
    /// The key pair is valid but may not write or read objects in the bucket.
    Permissions,
}

impl std::fmt::Display for StoreSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreSetting::Endpoint => "the endpoint",
            StoreSetting::Region => "the region",
            StoreSetting::Bucket => "the bucket",
            StoreSetting::AccessKey => "the access key",
            StoreSetting::SecretKey => "the secret key",
            StoreSetting::Permissions => "the access key's permissions on the bucket",
        })
    }
}

/// An error answer of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreAnswer {
    pub status: u16,
    /// The S3 error `<Code>`, or "-" when the answer carried none.
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for StoreAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.code, self.status)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("object store unreachable: {0}")]
    Unreachable(String),
    #[error("{setting} is wrong: the store answered {answer}")]
    Misconfigured {
        setting: StoreSetting,
        answer: StoreAnswer,
    },
    #[error("object store refused a correctly signed write-once {what}: {answer}; check the endpoint, bucket, region and credentials")]
    Refused {
        what: &'static str,
        answer: StoreAnswer,
    },
    #[error("the object store lacks a capability MpegFlow requires: {0}. Use AWS S3 (conditional writes since August 2024), a MinIO release from late 2024 or later, a Garage release with conditional writes, or the embedded store")]
    Missing(&'static str),
}

/// What the probe left behind: keys it wrote but could not delete, with the store's answer.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub undeleted: Vec<(String, String)>,
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

/// The text of the first `<tag>…</tag>` in an S3 error document.
fn xml_field<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..start + len].trim())
}

async fn answer(resp: reqwest::Response) -> StoreAnswer {
    let status = resp.status().as_u16();
    // Error documents are small; a HEAD has none.
    let body = resp.text().await.unwrap_or_default();
    let body = if body.len() > 64 * 1024 { "" } else { &body };
    StoreAnswer {
        status,
        code: xml_field(body, "Code").unwrap_or("-").to_owned(),
        message: xml_field(body, "Message").unwrap_or("").to_owned(),
    }
}

/// The setting a refused first request points at, from the store's error code (AWS S3,
/// MinIO, Garage and s3s use these codes).
pub fn misconfigured_setting(a: &StoreAnswer) -> Option<StoreSetting> {
    let mentions_region = a.message.to_ascii_lowercase().contains("region");
    Some(match a.code.as_str() {
        "SignatureDoesNotMatch" => StoreSetting::SecretKey,
        // s3s answers an unknown access key with NotSignedUp.
        "InvalidAccessKeyId" | "NotSignedUp" => StoreSetting::AccessKey,
        "NoSuchBucket" => StoreSetting::Bucket,
        "AuthorizationHeaderMalformed" | "AuthorizationQueryParametersError" if mentions_region => {
            StoreSetting::Region
        }
        "PermanentRedirect" | "IllegalLocationConstraintException" | "InvalidRegion" => {
            StoreSetting::Region
        }
        "AccessDenied" => StoreSetting::Permissions,
        _ if mentions_region => StoreSetting::Region,
        _ => return None,
    })
}

async fn put(
    http: &reqwest::Client,
    p: &Presigner,
    key: &str,
    signed_body: &[u8],
    sent_body: &[u8],
) -> Result<Result<(), StoreAnswer>, ProbeError> {
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
        .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
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
    if resp.status().is_success() {
        Ok(Ok(()))
    } else {
        Ok(Err(answer(resp).await))
    }
}

type Fetched = (reqwest::header::HeaderMap, bytes::Bytes);

async fn get(
    http: &reqwest::Client,
    url: &str,
) -> Result<Result<Fetched, StoreAnswer>, ProbeError> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
    if !resp.status().is_success() {
        return Ok(Err(answer(resp).await));
    }
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
    Ok(Ok((headers, body)))
}

/// A refusal of the first write or read: traced to a setting when the code says which.
fn first_refusal(what: &'static str, answer: StoreAnswer) -> ProbeError {
    match misconfigured_setting(&answer) {
        Some(setting) => ProbeError::Misconfigured { setting, answer },
        None => ProbeError::Refused { what, answer },
    }
}

/// Runs the probe and deletes the objects it wrote; `nonce` makes this run's keys fresh (e.g.
/// a random hex string). Keys the store would not delete are listed in the report.
pub async fn probe(
    p: &Presigner,
    http: &reqwest::Client,
    nonce: &str,
) -> Result<ProbeReport, ProbeError> {
    let mut written = Vec::new();
    let result = checks(p, http, nonce, &mut written).await;
    let mut report = ProbeReport::default();
    for key in written {
        if let Err(why) = delete(http, p, &key).await {
            report.undeleted.push((key, why));
        }
    }
    result.map(|()| report)
}

async fn delete(http: &reqwest::Client, p: &Presigner, key: &str) -> Result<(), String> {
    let url = p.delete(key, Duration::from_secs(60)).url;
    match http.delete(&url).send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        // Already gone (a refused write that was not stored).
        Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => Ok(()),
        Ok(resp) => Err(answer(resp).await.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn checks(
    p: &Presigner,
    http: &reqwest::Client,
    nonce: &str,
    written: &mut Vec<String>,
) -> Result<(), ProbeError> {
    let ttl = Duration::from_secs(60);
    let first = format!("{PROBE_PREFIX}{nonce}/write-once");
    let original = format!("mpegflow probe {nonce}: the original").into_bytes();
    put(http, p, &first, &original, &original)
        .await?
        .map_err(|a| first_refusal("PUT", a))?;
    written.push(first.clone());
    let (_, body) = get(http, &p.get(&first, ttl).url)
        .await?
        .map_err(|a| first_refusal("GET", a))?;
    if body.as_ref() != original.as_slice() {
        return Err(ProbeError::Refused {
            what: "GET",
            answer: StoreAnswer {
                status: 200,
                code: "-".into(),
                message: "the object read back differs from the one written".into(),
            },
        });
    }

    // (b) An overwrite under If-None-Match: * with a body that matches its own checksum.
    let mut replacement = original.clone();
    replacement[0] ^= 0x20;
    let overwritten = put(http, p, &first, &replacement, &replacement)
        .await?
        .is_ok();
    let stored = get(http, &p.get(&first, ttl).url).await?.ok();
    if overwritten || stored.as_ref().map(|(_, b)| b.as_ref()) != Some(&original[..]) {
        return Err(ProbeError::Missing(CONDITIONAL_WRITES));
    }

    // (a) A body of the signed length whose checksum differs: refused and not stored.
    let second = format!("{PROBE_PREFIX}{nonce}/checksum");
    let accepted = put(http, p, &second, &original, &replacement)
        .await?
        .is_ok();
    written.push(second.clone());
    if accepted {
        return Err(ProbeError::Missing(CHECKSUM_REFUSAL));
    }
    if get(http, &p.get(&second, ttl).url).await?.is_ok() {
        return Err(ProbeError::Missing(CHECKSUM));
    }

    // (c) The signed response headers.
    let download = p.download(&first, ttl, "probe.html", Some("text/html"));
    let (headers, _) = get(http, &download.url)
        .await?
        .map_err(|_| ProbeError::Missing(RESPONSE_OVERRIDES))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn a(code: &str, message: &str) -> StoreAnswer {
        StoreAnswer {
            status: 403,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn refusals_point_at_the_setting() {
        let cases = [
            (a("SignatureDoesNotMatch", ""), Some(StoreSetting::SecretKey)),
            (a("InvalidAccessKeyId", ""), Some(StoreSetting::AccessKey)),
            (a("NoSuchBucket", ""), Some(StoreSetting::Bucket)),
            (
                a(
                    "AuthorizationQueryParametersError",
                    "Error parsing the X-Amz-Credential parameter; the region 'us-east-1' is wrong; expecting 'eu-west-1'",
                ),
                Some(StoreSetting::Region),
            ),
            (a("PermanentRedirect", ""), Some(StoreSetting::Region)),
            (a("AccessDenied", "Access Denied"), Some(StoreSetting::Permissions)),
            (a("InternalError", ""), None),
        ];
        for (answer, want) in cases {
            assert_eq!(misconfigured_setting(&answer), want, "{answer}");
        }
    }

    #[test]
    fn error_documents_are_read() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(xml_field(body, "Code"), Some("NoSuchBucket"));
        assert_eq!(
            xml_field(body, "Message"),
            Some("The specified bucket does not exist")
        );
        assert_eq!(xml_field("not xml", "Code"), None);
    }
}
