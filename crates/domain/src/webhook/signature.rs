//! Webhook signatures as the Standard Webhooks specification (and Svix) define them, so receivers
//! can verify deliveries with the standardwebhooks or svix libraries.
//!
//! A delivery carries `webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature`:
//! space-separated `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one per active
//! secret, so a secret can be rotated without a window where receivers reject deliveries.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

/// Prefix of the text form of a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Size of a generated secret: 256 bits, the HMAC-SHA256 block-size sweet spot.
pub const GENERATED_SECRET_BYTES: usize = 32;
/// Shortest key accepted: Svix's own secrets are 24 bytes.
pub const MIN_SECRET_BYTES: usize = 24;
/// Longest key accepted: one HMAC-SHA256 block; longer keys would be hashed down anyway.
pub const MAX_SECRET_BYTES: usize = 64;
/// How far a delivery's timestamp may be from the receiver's clock, either way.
pub const TOLERANCE_SECS: i64 = 300;

/// Standard base64, with or without padding (the standardwebhooks libraries accept both).
const STANDARD_PAD_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing secret; Debug never prints it.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the signing secret is not whsec_ followed by standard base64")]
    Malformed,
    #[error(
        "the signing secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len}"
    )]
    Length { len: usize },
}

impl SigningSecret {
    /// 32 random bytes from the operating system.
    pub fn generate() -> SigningSecret {
        let mut key = vec![0u8; GENERATED_SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SigningSecret(key)
    }

    /// `whsec_` + standard base64 (padding optional), or the bare base64 without the prefix, as
    /// the standardwebhooks libraries accept. Surrounding whitespace (a pasted newline) is ignored.
    pub fn parse(s: &str) -> Result<SigningSecret, SecretError> {
        let s = s.trim();
        let b64 = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
        let key = STANDARD_PAD_OPTIONAL
            .decode(b64)
            .map_err(|_| SecretError::Malformed)?;
        SigningSecret::from_bytes(&key)
    }

    pub fn from_bytes(b: &[u8]) -> Result<SigningSecret, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&b.len()) {
            return Err(SecretError::Length { len: b.len() });
        }
        Ok(SigningSecret(b.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text form shown to the endpoint's owner once: `whsec_` + padded standard base64.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningSecret(<{} bytes redacted>)", self.0.len())
    }
}

fn mac(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// `v1,` + base64 of HMAC-SHA256(key, `"{msg_id}.{timestamp}.{body}"`).
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1,{}",
        STANDARD.encode(mac(secret, msg_id, timestamp, body))
    )
}

/// The `webhook-signature` header value: one `v1` signature per secret, space-separated (during a
/// rotation both the new and the old secret sign).
pub fn signature_header(
    secrets: &[&SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three headers of a delivery, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    /// `webhook-id`
    pub id: &'a str,
    /// `webhook-timestamp`
    pub timestamp: &'a str,
    /// `webhook-signature`
    pub signature: &'a str,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("webhook-timestamp is not an integer")]
    BadTimestamp,
    #[error("webhook-timestamp is more than {TOLERANCE_SECS} s in the past")]
    TooOld,
    #[error("webhook-timestamp is more than {TOLERANCE_SECS} s in the future")]
    TooNew,
    #[error("no v1 signature in webhook-signature matches")]
    NoValidSignature,
}

/// Checks a delivery as a receiver would: the timestamp within [`TOLERANCE_SECS`] of `now_unix`
/// (so a captured delivery cannot be replayed later), and any `v1` signature matching.
/// Entries with other version prefixes are skipped, so newer schemes can be added alongside.
pub fn verify(
    secret: &SigningSecret,
    headers: &SignedHeaders<'_>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = headers
        .timestamp
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if timestamp < now_unix.saturating_sub(TOLERANCE_SECS) {
        return Err(VerifyError::TooOld);
    }
    if timestamp > now_unix.saturating_add(TOLERANCE_SECS) {
        return Err(VerifyError::TooNew);
    }
    let expected = mac(secret, headers.id, timestamp, body);
    let mut matched = subtle::Choice::from(0u8);
    for entry in headers.signature.split(' ') {
        let Some(("v1", b64)) = entry.split_once(',') else {
            continue;
        };
        let Ok(given) = STANDARD_PAD_OPTIONAL.decode(b64) else {
            continue;
        };
        // Compare the MACs, not their text, and in constant time: timing must not reveal how
        // much of a forged signature is right.
        matched |= expected.as_slice().ct_eq(&given);
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(VerifyError::NoValidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks test vector (standard-webhooks/standard-webhooks,
    // libraries/python/tests/test_webhooks.py, test_sign_function).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: i64 = 1614265330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_secret() -> SigningSecret {
        SigningSecret::parse(VECTOR_SECRET).unwrap()
    }

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id,
            timestamp: ts,
            signature: sig,
        }
    }

    #[test]
    fn standard_webhooks_test_vector() {
        let secret = vector_secret();
        assert_eq!(secret.as_bytes().len(), 24);
        assert_eq!(sign(&secret, VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
        let ts = VECTOR_TS.to_string();
        assert_eq!(
            verify(
                &secret,
                &headers(VECTOR_ID, &ts, VECTOR_SIG),
                VECTOR_BODY,
                VECTOR_TS
            ),
            Ok(())
        );
        // The library's own "invalid signature" case: last base64 digit changed.
        let forged = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(
            verify(
                &secret,
                &headers(VECTOR_ID, &ts, forged),
                VECTOR_BODY,
                VECTOR_TS
            ),
            Err(VerifyError::NoValidSignature)
        );
    }

    #[test]
    fn secret_parses_with_or_without_prefix_and_padding() {
        let bare = SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(bare.as_bytes(), vector_secret().as_bytes());
        let key = [7u8; 32];
        let padded = format!("whsec_{}", STANDARD.encode(key));
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(SigningSecret::parse(&padded).unwrap().as_bytes(), key);
        assert_eq!(SigningSecret::parse(unpadded).unwrap().as_bytes(), key);
        assert_eq!(
            SigningSecret::parse(&format!(" {padded}\n"))
                .unwrap()
                .as_bytes(),
            key
        );
    }

    #[test]
    fn secret_parse_errors() {
        assert_eq!(
            SigningSecret::parse("whsec_").unwrap_err(),
            SecretError::Length { len: 0 }
        );
        assert_eq!(
            SigningSecret::parse("whsec_!!!!").unwrap_err(),
            SecretError::Malformed
        );
        // URL-safe alphabet is not standard base64.
        let urlsafe = "whsec_____________________________________________";
        assert_eq!(
            SigningSecret::parse(urlsafe).unwrap_err(),
            SecretError::Malformed
        );
        let short = format!("whsec_{}", STANDARD.encode([1u8; 23]));
        assert_eq!(
            SigningSecret::parse(&short).unwrap_err(),
            SecretError::Length { len: 23 }
        );
        let long = format!("whsec_{}", STANDARD.encode([1u8; 65]));
        assert_eq!(
            SigningSecret::parse(&long).unwrap_err(),
            SecretError::Length { len: 65 }
        );
        assert!(SigningSecret::from_bytes(&[0u8; 24]).is_ok());
        assert!(SigningSecret::from_bytes(&[0u8; 64]).is_ok());
        assert_eq!(
            SigningSecret::from_bytes(&[]).unwrap_err(),
            SecretError::Length { len: 0 }
        );
    }

    #[test]
    fn generated_secret_round_trips_through_its_text() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        assert_eq!(a.as_bytes().len(), 32);
        assert_ne!(a.as_bytes(), b.as_bytes());
        let text = a.expose();
        assert!(text.starts_with("whsec_"), "{text}");
        assert_eq!(text.len(), "whsec_".len() + 44);
        assert_eq!(
            SigningSecret::parse(&text).unwrap().as_bytes(),
            a.as_bytes()
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        let secret = vector_secret();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "SigningSecret(<24 bytes redacted>)");
        let b64 = secret.expose();
        assert!(!debug.contains(&b64["whsec_".len()..]));
    }

    #[test]
    fn tampering_with_body_id_or_timestamp_fails() {
        let secret = SigningSecret::generate();
        let now = 1_700_000_000;
        let sig = sign(&secret, "msg_a", now, b"{\"a\":1}");
        let ts = now.to_string();
        assert_eq!(
            verify(&secret, &headers("msg_a", &ts, &sig), b"{\"a\":1}", now),
            Ok(())
        );
        assert_eq!(
            verify(&secret, &headers("msg_a", &ts, &sig), b"{\"a\":2}", now),
            Err(VerifyError::NoValidSignature)
        );
        assert_eq!(
            verify(&secret, &headers("msg_b", &ts, &sig), b"{\"a\":1}", now),
            Err(VerifyError::NoValidSignature)
        );
        let other_ts = (now + 1).to_string();
        assert_eq!(
            verify(
                &secret,
                &headers("msg_a", &other_ts, &sig),
                b"{\"a\":1}",
                now
            ),
            Err(VerifyError::NoValidSignature)
        );
        assert_eq!(
            verify(
                &SigningSecret::generate(),
                &headers("msg_a", &ts, &sig),
                b"{\"a\":1}",
                now
            ),
            Err(VerifyError::NoValidSignature)
        );
    }

    #[test]
    fn timestamp_window_is_300_seconds_either_way() {
        let secret = SigningSecret::generate();
        let now = 1_700_000_000;
        for (ts, want) in [
            (now - 301, Err(VerifyError::TooOld)),
            (now - 300, Ok(())),
            (now + 300, Ok(())),
            (now + 301, Err(VerifyError::TooNew)),
            (now - 86_400, Err(VerifyError::TooOld)),
            (i64::MIN, Err(VerifyError::TooOld)),
            (i64::MAX, Err(VerifyError::TooNew)),
        ] {
            let sig = sign(&secret, "msg_a", ts, b"body");
            let ts_text = ts.to_string();
            assert_eq!(
                verify(&secret, &headers("msg_a", &ts_text, &sig), b"body", now),
                want,
                "{ts}"
            );
        }
    }

    #[test]
    fn non_integer_timestamps_are_refused() {
        let secret = SigningSecret::generate();
        let sig = sign(&secret, "msg_a", 1_700_000_000, b"body");
        for bad in [
            "",
            "hello",
            "1700000000.0",
            "1e9",
            " 1700000000",
            "99999999999999999999",
        ] {
            assert_eq!(
                verify(
                    &secret,
                    &headers("msg_a", bad, &sig),
                    b"body",
                    1_700_000_000
                ),
                Err(VerifyError::BadTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn header_with_two_secrets_verifies_under_each() {
        let old = SigningSecret::generate();
        let new = SigningSecret::generate();
        let now = 1_700_000_000;
        let header = signature_header(&[&new, &old], "msg_a", now, b"body");
        let parts: Vec<_> = header.split(' ').collect();
        assert_eq!(
            parts,
            [
                sign(&new, "msg_a", now, b"body"),
                sign(&old, "msg_a", now, b"body")
            ]
        );
        let ts = now.to_string();
        for secret in [&old, &new] {
            assert_eq!(
                verify(secret, &headers("msg_a", &ts, &header), b"body", now),
                Ok(())
            );
        }
        assert_eq!(
            verify(
                &SigningSecret::generate(),
                &headers("msg_a", &ts, &header),
                b"body",
                now
            ),
            Err(VerifyError::NoValidSignature)
        );
        assert_eq!(signature_header(&[], "msg_a", now, b"body"), "");
    }

    #[test]
    fn other_versions_and_garbage_entries_are_skipped() {
        let secret = vector_secret();
        let ts = VECTOR_TS.to_string();
        let b64 = &VECTOR_SIG[3..];
        // As in the standardwebhooks multi-signature test, plus malformed entries.
        let header = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= \
             garbage v1,!!! ,{b64} {VECTOR_SIG} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
        );
        assert_eq!(
            verify(
                &secret,
                &headers(VECTOR_ID, &ts, &header),
                VECTOR_BODY,
                VECTOR_TS
            ),
            Ok(())
        );
        // The right MAC under another version label does not count.
        for header in [
            format!("v2,{b64}"),
            format!("V1,{b64}"),
            b64.to_string(),
            String::new(),
        ] {
            assert_eq!(
                verify(
                    &secret,
                    &headers(VECTOR_ID, &ts, &header),
                    VECTOR_BODY,
                    VECTOR_TS
                ),
                Err(VerifyError::NoValidSignature),
                "{header:?}"
            );
        }
        // A truncated MAC does not match.
        let truncated = format!(
            "v1,{}",
            STANDARD.encode(&STANDARD.decode(b64).unwrap()[..16])
        );
        assert_eq!(
            verify(
                &secret,
                &headers(VECTOR_ID, &ts, &truncated),
                VECTOR_BODY,
                VECTOR_TS
            ),
            Err(VerifyError::NoValidSignature)
        );
    }
}
