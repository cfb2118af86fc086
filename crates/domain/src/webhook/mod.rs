//! Signed webhooks: what is announced, how deliveries are signed (Standard Webhooks), when failed
//! deliveries are retried and endpoints disabled, which URLs may be targets, and how signing
//! secrets are sealed at rest. Pure: the store, dispatcher and API do the I/O.
//!
//! * [`events`]: event types and message ids.
//! * [`signature`]: signing secrets, `webhook-signature` values, verification.
//! * [`schedule`]: the retry schedule and `Retry-After`.
//! * [`breaker`]: when a failing endpoint is disabled.
//! * [`ssrf`]: endpoint URL and address rules against server-side request forgery.
//! * [`sealed`]: authenticated encryption of signing secrets under keys kept outside the database.

pub mod breaker;
pub mod events;
pub mod schedule;
pub mod sealed;
pub mod signature;
pub mod ssrf;

pub use breaker::{after_attempt, BreakerPolicy, EndpointHealth};
pub use events::{message_id, EventType, UnknownEventType};
pub use schedule::{
    next_retry, parse_retry_after, retry_window, MAX_ATTEMPTS, MAX_RETRY_AFTER, RETRY_DELAYS,
};
pub use sealed::{Keyring, KeyringError, SealError};
pub use signature::{
    sign, signature_header, verify, SecretError, SignedHeaders, SigningSecret, VerifyError,
    TOLERANCE_SECS,
};
pub use ssrf::{check_ip, EndpointUrl, TargetHost, UrlError, UrlPolicy};

/// The associated data a sealed signing secret is bound to: its endpoint, so a ciphertext
/// moved to another endpoint's row does not open.
pub fn endpoint_secret_aad(endpoint_id: uuid::Uuid) -> Vec<u8> {
    format!("mpegflow webhook secret {endpoint_id}").into_bytes()
}

/// The body of a delivery: the Standard Webhooks envelope, so the event type is signed too.
/// Rendered from the stored event alone, the same bytes on every attempt and replay.
#[derive(Debug, serde::Serialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// When the event happened (RFC 3339, UTC).
    pub timestamp: &'a str,
    pub data: &'a serde_json::Value,
}

impl Envelope<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising borrowed strings and a JSON value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
