//! Stored rows as the API shows them. The only place a store type becomes an API type.

use crate::error::{ControlError, Result};
use crate::outputs::{stored_inputs, stored_outputs};
use mpegflow_api as api;
use mpegflow_domain::job::JobState;
use mpegflow_store::{Asset, Attempt, Job, WebhookAttempt, WebhookDelivery, WebhookEndpoint};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

fn corrupt(what: &str, id: impl std::fmt::Display, e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(format!("{what} {id}: {e}"))
}

pub fn asset(a: &Asset) -> Result<api::Asset> {
    Ok(api::Asset {
        id: a.id,
        filename: api::FileName::parse(a.filename.clone())
            .map_err(|e| corrupt("asset", a.id, e))?,
        content_type: a.content_type.clone(),
        state: match a.state.as_str() {
            "ready" => api::AssetState::Ready,
            _ => api::AssetState::Pending,
        },
        size: a.size.or(a.declared_size).map(|s| s.max(0) as u64),
        sha256: a
            .sha256
            .as_ref()
            .or(a.declared_sha256.as_ref())
            .map(|s| api::Sha256Hex::parse(s.clone()))
            .transpose()
            .map_err(|e| corrupt("asset", a.id, e))?,
        source_job_id: a.source_job_id,
        created_at: a.created_at.into(),
        completed_at: a.completed_at.map(Into::into),
        expires_at: a.expires_at.map(Into::into),
        media: a
            .media
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt("asset media", a.id, e))?,
    })
}

/// A succeeded job's `result.outputs`, as the coordinator recorded it.
#[derive(Deserialize)]
struct RecordedResult {
    #[serde(default)]
    outputs: BTreeMap<api::Alias, api::JobOutput>,
}

pub fn job(job: &Job, pool: &str, history: Option<Vec<Attempt>>) -> Result<api::Job> {
    let inputs = stored_inputs(job)?
        .into_iter()
        .map(|i| {
            api::Alias::parse(i.alias)
                .map(|a| (a, i.asset_id))
                .map_err(|e| corrupt("job", job.id, e))
        })
        .collect::<Result<_>>()?;
    let mut recorded = match &job.result {
        Some(v) => {
            serde_json::from_value::<RecordedResult>(v.clone())
                .map_err(|e| corrupt("job result", job.id, e))?
                .outputs
        }
        None => BTreeMap::new(),
    };
    let outputs = stored_outputs(job)?
        .into_iter()
        .map(|o| {
            let alias = api::Alias::parse(o.alias).map_err(|e| corrupt("job", job.id, e))?;
            let out = match recorded.remove(&alias) {
                Some(out) => out,
                None => api::JobOutput {
                    filename: api::OutputName::parse(o.filename)
                        .map_err(|e| corrupt("job", job.id, e))?,
                    files: Vec::new(),
                },
            };
            Ok((alias, out))
        })
        .collect::<Result<_>>()?;
    let error = job
        .error_code
        .as_ref()
        .filter(|_| job.state() == JobState::Failed)
        .map(|code| api::JobError {
            code: code.clone(),
            message: job.error_message.clone(),
            stderr_tail: job.stderr_tail.clone(),
        });
    let argv = serde_json::from_value(job.argv.clone()).map_err(|e| corrupt("job", job.id, e))?;
    let metadata = match &job.metadata {
        Value::Object(m) => m.clone(),
        _ => Default::default(),
    };
    Ok(api::Job {
        id: job.id,
        workflow_id: job.workflow_id,
        state: job.state().into(),
        progress: job.progress,
        live: job
            .live
            .as_ref()
            .filter(|_| job.state() == JobState::Running)
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
        attempts: job.attempts.max(0) as u32,
        max_attempts: job.max_attempts.max(0) as u32,
        job_faults: job.job_faults.max(0) as u32,
        platform_faults: job.platform_faults.max(0) as u32,
        pool: pool.to_owned(),
        command: job.command.clone(),
        argv,
        inputs,
        outputs,
        error,
        timeout_seconds: job.timeout_seconds.max(0) as u32,
        metadata,
        created_at: job.created_at.into(),
        started_at: job.started_at.map(Into::into),
        finished_at: job.finished_at.map(Into::into),
        history: history.map(|h| h.iter().map(attempt).collect()),
    })
}

/// A stage as the coordinator recorded it from the worker's report.
#[derive(Deserialize)]
struct RecordedStage {
    name: String,
    #[serde(default)]
    started_at_ms: i64,
    #[serde(default)]
    finished_at_ms: i64,
    #[serde(default)]
    cpu_us: Option<u64>,
}

/// Provenance recorded from a worker's report. A record that does not read as expected is
/// shown empty rather than failing the whole job's answer: it is the worker's word anyway.
fn recorded<T: serde::de::DeserializeOwned>(v: &Option<Value>) -> Vec<T> {
    v.as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn attempt(a: &Attempt) -> api::Attempt {
    let ms = |t: i64| (t > 0).then(|| api::Timestamp::from_unix_ms(t)).flatten();
    api::Attempt {
        attempt: a.attempt.max(0) as u32,
        worker_id: a.worker_id,
        assigned_at: a.assigned_at.into(),
        finished_at: a.finished_at.map(Into::into),
        outcome: a.outcome.clone(),
        exit_code: a.exit_code,
        error_code: a.error_code.clone(),
        error_message: a.error_message.clone(),
        ffmpeg_version: a.ffmpeg_version.clone(),
        fault: a.fault.as_deref().and_then(|f| match f.parse() {
            Ok(mpegflow_domain::job::Fault::Job) => Some(api::Fault::Job),
            Ok(mpegflow_domain::job::Fault::Platform) => Some(api::Fault::Platform),
            Err(_) => None,
        }),
        stages: recorded::<RecordedStage>(&a.stages)
            .into_iter()
            .map(|s| api::AttemptStage {
                name: s.name,
                started_at: ms(s.started_at_ms),
                finished_at: ms(s.finished_at_ms),
                cpu_ms: s.cpu_us.map(|us| us as f64 / 1e3),
            })
            .collect(),
        inputs: recorded(&a.input_hashes),
        outputs: recorded(&a.output_hashes),
    }
}

// ---- webhooks ----

pub fn webhook(ep: &WebhookEndpoint) -> Result<api::Webhook> {
    let events = ep
        .events
        .iter()
        .map(|e| api::EventType::parse(e).map_err(|e| corrupt("webhook", ep.id, e)))
        .collect::<Result<_>>()?;
    Ok(api::Webhook {
        id: ep.id,
        url: ep.url.clone(),
        description: ep.description.clone(),
        events,
        state: if ep.enabled() {
            api::WebhookState::Enabled
        } else {
            api::WebhookState::Disabled
        },
        disabled_at: ep.disabled_at.map(Into::into),
        disabled_reason: ep.disabled_reason.clone(),
        previous_secret_until: ep
            .previous_secret_expires_at
            .filter(|t| *t > time::OffsetDateTime::now_utc())
            .map(Into::into),
        created_at: ep.created_at.into(),
        updated_at: ep.updated_at.into(),
    })
}

fn delivery_attempt(a: &WebhookAttempt) -> api::DeliveryAttempt {
    api::DeliveryAttempt {
        attempted_at: a.attempted_at.into(),
        succeeded: a.succeeded,
        status_code: a.status_code.and_then(|c| u16::try_from(c).ok()),
        latency_ms: a.latency_ms.max(0) as u32,
        error: a.error.clone(),
        response_body: a.response_body.clone(),
    }
}

/// A delivery with its attempts (`attempts` may hold other deliveries' too).
pub fn delivery(d: &WebhookDelivery, attempts: &[WebhookAttempt]) -> Result<api::WebhookDelivery> {
    let event_type =
        api::EventType::parse(&d.event_type).map_err(|e| corrupt("delivery", d.id, e))?;
    let state = match d.state.as_str() {
        "pending" => api::DeliveryState::Pending,
        "succeeded" => api::DeliveryState::Succeeded,
        "failed" => api::DeliveryState::Failed,
        "held" => api::DeliveryState::Held,
        other => return Err(corrupt("delivery", d.id, format!("state {other:?}"))),
    };
    let event_timestamp: api::Timestamp = d.event_created_at.into();
    // The body exactly as the dispatcher signs it (the same envelope, the same time format).
    let payload = serde_json::to_value(api::WebhookEnvelope {
        event_type,
        timestamp: event_timestamp,
        data: d.data.clone(),
    })
    .map_err(|e| corrupt("delivery", d.id, e))?;
    Ok(api::WebhookDelivery {
        id: d.id,
        webhook_id: d.endpoint_id,
        message_id: mpegflow_domain::webhook::message_id(d.event_id),
        event_type,
        event_timestamp,
        job_id: d.job_id,
        state,
        next_attempt_at: (state == api::DeliveryState::Pending).then(|| d.next_attempt_at.into()),
        in_flight: d.in_flight,
        attempts: attempts
            .iter()
            .filter(|a| a.delivery_id == d.id)
            .map(delivery_attempt)
            .collect(),
        payload,
        created_at: d.created_at.into(),
        updated_at: d.updated_at.into(),
    })
}

/// `data` of a job's state-change events: the job right after the change, kept well under
/// the Standard Webhooks guidance of ~20 kB (at most [`api::MAX_EVENT_OUTPUT_FILES`] output
/// files, metadata up to [`api::MAX_EVENT_METADATA_BYTES`]); `url` leads to the rest.
/// Written by the store in the change's own transaction, so it cannot fail: a row that does not
/// render (it would be a bug) is announced with its id and state only.
pub fn job_event_data(row: &Job) -> Value {
    let Ok(full) = job(row, "", None) else {
        return serde_json::json!({ "id": row.id, "state": row.state });
    };
    let mut budget = api::MAX_EVENT_OUTPUT_FILES;
    let mut outputs_truncated = false;
    let outputs = full
        .outputs
        .into_iter()
        .map(|(alias, mut out)| {
            if out.files.len() > budget {
                outputs_truncated = true;
                out.files.truncate(budget);
            }
            budget -= out.files.len();
            // Media is the bulk of a file's entry (up to 32 streams): `url` has it.
            for f in &mut out.files {
                f.media = None;
            }
            (alias, out)
        })
        .collect();
    let metadata_bytes = serde_json::to_vec(&full.metadata).map_or(usize::MAX, |b| b.len());
    let metadata_omitted = metadata_bytes > api::MAX_EVENT_METADATA_BYTES;
    let data = api::JobEventData {
        id: full.id,
        workflow_id: full.workflow_id,
        state: full.state,
        attempts: full.attempts,
        error: full.error.map(|e| api::JobEventError {
            code: e.code,
            message: e
                .message
                .map(|m| truncate_chars(&m, EVENT_ERROR_MESSAGE_CHARS)),
        }),
        outputs,
        outputs_truncated,
        metadata: (!metadata_omitted).then_some(full.metadata),
        metadata_omitted,
        created_at: full.created_at,
        started_at: full.started_at,
        finished_at: full.finished_at,
        url: format!("/v1/jobs/{}", full.id),
    };
    let mut value = serde_json::to_value(&data)
        .unwrap_or_else(|_| serde_json::json!({ "id": row.id, "state": row.state }));
    // Many declared outputs with long names could still add up: past the bound, the lists go.
    if serde_json::to_vec(&value).map_or(usize::MAX, |b| b.len()) > MAX_EVENT_DATA_BYTES {
        let mut data = data;
        data.outputs.clear();
        data.outputs_truncated = true;
        data.metadata = None;
        data.metadata_omitted = true;
        value = serde_json::to_value(&data)
            .unwrap_or_else(|_| serde_json::json!({ "id": row.id, "state": row.state }));
    }
    value
}

/// The most a job event's `data` may take, as JSON: well under the ~20 kB Standard Webhooks
/// advises for a whole payload.
pub const MAX_EVENT_DATA_BYTES: usize = 16 * 1024;
/// An error message in an event is cut to this many characters (the job has all of it).
const EVENT_ERROR_MESSAGE_CHARS: usize = 1024;

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}
