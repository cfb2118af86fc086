//! Webhook endpoints, their deliveries, and the payloads deliveries carry.

use crate::{Alias, JobOutput, JobState, Timestamp};
pub use mpegflow_domain::webhook::EventType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Longest endpoint description, in characters.
pub const MAX_WEBHOOK_DESCRIPTION_CHARS: usize = 512;
/// Endpoints per org.
pub const MAX_WEBHOOKS_PER_ORG: usize = 50;
/// Longest rotation overlap: 7 days.
pub const MAX_ROTATION_OVERLAP_SECONDS: u32 = 7 * 24 * 3600;
/// The overlap when none is asked for: 24 hours.
pub const DEFAULT_ROTATION_OVERLAP_SECONDS: u32 = 24 * 3600;
/// A job event lists at most this many output files; the rest are in `GET /v1/jobs/{id}`.
pub const MAX_EVENT_OUTPUT_FILES: usize = 20;
/// A job event carries the job's metadata only up to this size (bytes of JSON).
pub const MAX_EVENT_METADATA_BYTES: usize = 4 * 1024;

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookIn {
    /// Where deliveries go: `https://…` (or `http://…`). Addresses in private, loopback,
    /// link-local and other internal ranges are refused, when created and at every delivery.
    #[schema(max_length = 2048, pattern = "^[^\\u0000]*$")]
    pub url: String,
    /// Events to send. Default: every type but `job.progress`.
    #[serde(default)]
    #[schema(min_items = 1)]
    pub events: Option<Vec<EventType>>,
    #[serde(default)]
    #[schema(max_length = 512, pattern = "^[^\\u0000]*$")]
    pub description: Option<String>,
}

/// `PATCH /v1/webhooks/{id}`: fields given are replaced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    #[serde(default)]
    #[schema(max_length = 2048, pattern = "^[^\\u0000]*$")]
    pub url: Option<String>,
    #[serde(default)]
    #[schema(min_items = 1)]
    pub events: Option<Vec<EventType>>,
    #[serde(default)]
    #[schema(max_length = 512, pattern = "^[^\\u0000]*$")]
    pub description: Option<String>,
}

/// Whether an endpoint receives deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    Enabled,
    /// Disabled by the circuit breaker: deliveries are held until `POST …/enable`.
    Disabled,
}

/// An endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    pub events: Vec<EventType>,
    pub state: WebhookState,
    #[schema(required = true)]
    pub disabled_at: Option<Timestamp>,
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    /// During a secret rotation's overlap: until when deliveries also carry a signature with
    /// the previous secret.
    #[schema(required = true)]
    pub previous_secret_until: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An endpoint with its signing secret: shown once, when created or rotated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookWithSecret {
    pub webhook: Webhook,
    /// `whsec_<base64>`; the HMAC key is the decoded bytes (Standard Webhooks).
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RotateSecretQuery {
    /// How long the previous secret keeps signing beside the new one (default 86400).
    #[param(minimum = 0, maximum = 604800)]
    pub overlap_seconds: Option<u32>,
}

/// `POST /v1/webhooks/{id}/enable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEnabled {
    pub webhook: Webhook,
    /// Held deliveries released to be sent now.
    pub released: u64,
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Due at `next_attempt_at`, or in flight.
    Pending,
    Succeeded,
    /// Every retry failed.
    Failed,
    /// The endpoint is disabled; sent once it is enabled.
    Held,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryAttempt {
    pub attempted_at: Timestamp,
    pub succeeded: bool,
    /// The receiver's HTTP status, when it answered.
    #[schema(required = true)]
    pub status_code: Option<u16>,
    pub latency_ms: u32,
    /// Why it failed (`HTTP 500`, `timed out after 15 s`, `refused: …`).
    #[schema(required = true)]
    pub error: Option<String>,
    /// The start of the receiver's answer.
    #[schema(required = true)]
    pub response_body: Option<String>,
}

/// One event sent to one endpoint, with every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    /// `X-MpegFlow-Id` / `webhook-id`: the same on every attempt and replay.
    pub message_id: String,
    pub event_type: EventType,
    pub event_timestamp: Timestamp,
    #[schema(required = true)]
    pub job_id: Option<Uuid>,
    pub state: DeliveryState,
    /// When the next attempt is due (pending deliveries).
    #[schema(required = true)]
    pub next_attempt_at: Option<Timestamp>,
    /// An attempt is being sent right now.
    pub in_flight: bool,
    pub attempts: Vec<DeliveryAttempt>,
    /// The signed body.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDeliveryList {
    pub deliveries: Vec<WebhookDelivery>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDeliveriesQuery {
    pub cursor: Option<Uuid>,
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// `POST /v1/webhooks/{id}/recover`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverIn {
    /// Deliveries created at or after this time that failed or are held are sent again.
    pub since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverOut {
    pub recovered: u64,
}

// ---- what deliveries carry ----

/// The body of every delivery (Standard Webhooks), signed as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEnvelope<D> {
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event happened.
    pub timestamp: Timestamp,
    pub data: D,
}

/// `data` of `job.started`, `job.completed`, `job.failed` and `job.canceled`: the job as it
/// was right after the change, kept small (well under 20 kB); `url` has everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobEventData {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub state: JobState,
    /// Runs started so far.
    pub attempts: u32,
    #[schema(required = true)]
    pub error: Option<JobEventError>,
    /// Output alias → files (at most 20 files in all; see `outputs_truncated`).
    pub outputs: BTreeMap<Alias, JobOutput>,
    /// More output files exist than are listed here.
    pub outputs_truncated: bool,
    /// The job's metadata, when at most 4 KiB of JSON (else `null` and `metadata_omitted`).
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Option<Map<String, Value>>,
    pub metadata_omitted: bool,
    pub created_at: Timestamp,
    #[schema(required = true)]
    pub started_at: Option<Timestamp>,
    #[schema(required = true)]
    pub finished_at: Option<Timestamp>,
    /// `/v1/jobs/{id}`: the whole job.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobEventError {
    pub code: String,
    #[schema(required = true)]
    pub message: Option<String>,
}

/// `data` of `job.progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobProgressData {
    pub id: Uuid,
    pub state: JobState,
    pub progress: f32,
    pub attempt: u32,
}

/// `data` of `webhook.disabled`, sent to the org's other endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDisabledData {
    pub endpoint_id: Uuid,
    pub url: String,
    pub reason: String,
}

/// One event of `GET /v1/webhook-events` (the `data` of a server-sent event whose `id` is the
/// event's position, to resume from with `Last-Event-ID`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamedEvent {
    /// What deliveries of this event carry as `X-MpegFlow-Id`.
    pub message_id: String,
    /// The body deliveries of this event carry.
    #[schema(value_type = Object)]
    pub envelope: WebhookEnvelope<Value>,
}

/// `GET /v1/webhook-events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamEventsQuery {
    /// Resume after this position (the `id` of the last event received; `Last-Event-ID` does
    /// the same). Default: from now on.
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// Event streams an org may hold open at once (per control-plane replica).
pub const MAX_EVENT_STREAMS_PER_ORG: usize = 4;
/// A stream ends after this long; clients reconnect with `Last-Event-ID`.
pub const MAX_EVENT_STREAM_SECONDS: u64 = 3600;
