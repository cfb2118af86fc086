//! One attempt: the signed request, and what came back.

use crate::resolve::{CheckedResolver, Refused, Resolver};
use crate::{Dispatcher, DispatcherConfig};
use mpegflow_domain::webhook::{
    endpoint_secret_aad, message_id, parse_retry_after, schedule::unix_seconds, signature_header,
    EndpointUrl, Envelope, SigningSecret,
};
use mpegflow_store::{AttemptOutcome, ClaimedDelivery};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tracing::Instrument;

pub(crate) fn client(
    config: &DispatcherConfig,
    resolver: Arc<dyn Resolver>,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(CheckedResolver {
            inner: resolver,
            policy: config.url_policy,
        }))
        // A redirect would lead to a target nobody checked; a proxy from the environment
        // would connect to something other than the address checked.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(config.attempt_timeout)
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("MpegFlow-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// RFC 3339, UTC, milliseconds: the envelope's `timestamp`.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// The request of one attempt, as it goes out: body and headers.
pub(crate) struct SignedRequest {
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// Renders and signs a delivery of `claim`'s event at `now` with every secret given.
pub(crate) fn signed_request(
    claim: &ClaimedDelivery,
    secrets: &[SigningSecret],
    now: SystemTime,
) -> SignedRequest {
    let msg_id = message_id(claim.event_id);
    let timestamp = rfc3339(claim.event_created_at);
    let body = Envelope {
        event_type: &claim.event_type,
        timestamp: &timestamp,
        data: &claim.data,
    }
    .to_bytes();
    let ts = unix_seconds(now);
    let refs: Vec<&SigningSecret> = secrets.iter().collect();
    let signature = signature_header(&refs, &msg_id, ts, &body);
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("x-mpegflow-id", msg_id.clone()),
        ("x-mpegflow-timestamp", ts.to_string()),
        ("x-mpegflow-event", claim.event_type.clone()),
        ("x-mpegflow-signature", signature.clone()),
        ("webhook-id", msg_id),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", signature),
    ];
    SignedRequest { body, headers }
}

/// What went wrong with a request, for the attempt's record: a refused address says so.
fn describe(e: &reqwest::Error, timeout: std::time::Duration) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return format!("refused: {refused}");
        }
        source = s.source();
    }
    if e.is_timeout() {
        return format!("timed out after {} s", timeout.as_secs());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Dispatcher {
    /// The secrets a delivery is signed with now: the endpoint's, and during a rotation's
    /// overlap the one it replaced.
    fn secrets(&self, claim: &ClaimedDelivery) -> Result<Vec<SigningSecret>, String> {
        let aad = endpoint_secret_aad(claim.endpoint_id);
        let open = |sealed: &str| {
            self.keys
                .open(sealed, &aad)
                .map_err(|e| e.to_string())
                .and_then(|b| SigningSecret::from_bytes(&b).map_err(|e| e.to_string()))
        };
        let mut secrets = vec![open(&claim.secret_sealed)?];
        if let (Some(prev), Some(until)) = (
            &claim.previous_secret_sealed,
            claim.previous_secret_expires_at,
        ) {
            if SystemTime::from(until) > self.clock.now() {
                secrets.push(open(prev)?);
            }
        }
        Ok(secrets)
    }

    pub(crate) async fn deliver(&self, claim: ClaimedDelivery) {
        let span = tracing::info_span!("delivery", delivery_id = %claim.delivery_id,
            endpoint_id = %claim.endpoint_id, org_id = %claim.org_id, event = %claim.event_type);
        async {
            let secrets = match self.secrets(&claim) {
                Ok(s) => s,
                Err(e) => {
                    // The platform's fault (a key missing from the keyring), not the
                    // receiver's: no attempt is charged; the claim runs out and it is tried
                    // again once the key is back.
                    tracing::error!("cannot open the endpoint's signing secret: {e}");
                    return;
                }
            };
            let outcome = self.attempt(&claim, &secrets).await;
            let now = self.clock.now();
            match self
                .store
                .record_delivery_attempt(
                    &claim,
                    &outcome,
                    now,
                    rand::random(),
                    &self.config.breaker,
                )
                .await
            {
                Ok(recorded) => {
                    tracing::debug!(?recorded, status = ?outcome.status_code, "attempt recorded")
                }
                // The claim runs out and the delivery is sent again (same id).
                Err(e) => tracing::warn!("recording an attempt failed: {e}"),
            }
        }
        .instrument(span)
        .await
    }

    async fn attempt(&self, claim: &ClaimedDelivery, secrets: &[SigningSecret]) -> AttemptOutcome {
        let started = Instant::now();
        let failed = |error: String| AttemptOutcome {
            succeeded: false,
            status_code: None,
            latency: started.elapsed(),
            error: Some(error),
            response_body: None,
            retry_after: None,
        };
        // Checked again at every attempt: the rules may have changed since it was created.
        let url = match EndpointUrl::parse(&claim.url, &self.config.url_policy) {
            Ok(u) => u,
            Err(e) => return failed(format!("refused: {e}")),
        };
        let now = self.clock.now();
        let request = signed_request(claim, secrets, now);
        let mut builder = self.http.post(url.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let mut response = match builder.body(request.body).send().await {
            Ok(r) => r,
            Err(e) => return failed(describe(&e, self.config.attempt_timeout)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, unix_seconds(now)));
        // Only the start of the body is kept; the rest is never read.
        let limit = self.config.response_body_bytes;
        let mut body = Vec::new();
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())])
                }
                _ => break,
            }
        }
        drop(response);
        let succeeded = status.is_success();
        AttemptOutcome {
            succeeded,
            status_code: Some(status.as_u16()),
            latency: started.elapsed(),
            error: (!succeeded).then(|| format!("HTTP {}", status.as_u16())),
            response_body: (!body.is_empty())
                .then(|| String::from_utf8_lossy(&body).replace('\0', "\u{FFFD}")),
            retry_after,
        }
    }
}
