//! The worker use-cases, free of gRPC: register a worker, claim a job (with its presigned
//! inputs), heartbeat a lease, grant output uploads, and take a finished attempt's report.
//!
//! Each takes a worker already authenticated by the transport (its token, and the registration
//! it names) and plain Rust input, and answers typed output or a
//! [`ControlError`](crate::error::ControlError). `coordinator.rs` only authenticates the worker
//! token, converts the protocol's messages to and from these types, and maps errors through
//! `error.rs`; no generated protocol type is known here.

pub mod claim;
pub mod heartbeat;
pub mod register;
pub mod report;
pub mod uploads;

use crate::error::{ControlError, Result};
use crate::outputs::stored_inputs;
use crate::{presign_audit, AppState};
use mpegflow_store::{AuditEntry, Job, Lease};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

/// Who acts on which job: the registered worker, the job and the fencing token handed out with
/// its lease. Every call about a held job names one.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    pub worker_id: Uuid,
    pub job_id: Uuid,
    pub fencing_token: String,
}

impl LeaseHolder {
    fn lease(&self) -> Lease<'_> {
        Lease {
            job_id: self.job_id,
            worker_id: self.worker_id,
            fencing_token: &self.fencing_token,
        }
    }
}

/// A file a worker says it produced: for upload URLs, and in its report. Its word only, until
/// checked against the declared outputs, the grants and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedFile {
    /// Relative to the job's `out/` directory: `<alias>/<name>`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// One input of a job as its worker fetches it: a presigned GET that expires with the lease.
#[derive(Debug, Clone)]
pub struct InputUrl {
    pub alias: String,
    /// Relative to the job directory, e.g. `in/in.mov`.
    pub path: String,
    pub url: String,
    pub size: u64,
    pub sha256: String,
    /// The tenant's file name, for the extension hint.
    pub filename: String,
    pub expires_at: OffsetDateTime,
}

/// The error of a call whose lease this worker no longer holds.
fn lease_lost() -> ControlError {
    ControlError::LeaseLost("this worker no longer holds the lease on that job".into())
}

/// How the audit trail names a worker.
fn actor(worker_id: Uuid) -> String {
    format!("worker:{worker_id}")
}

/// Presigned GETs of a job's inputs, living as long as the lease (plus slack), with the audit
/// lines that record them.
fn input_urls(
    state: &AppState,
    worker_id: Uuid,
    job: &Job,
) -> Result<(Vec<InputUrl>, Vec<AuditEntry<'static>>)> {
    let ttl = state.config.input_url_ttl();
    let mut inputs = Vec::new();
    let mut audit = Vec::new();
    for input in stored_inputs(job)? {
        let p = state.presigner.get(&input.object_key, ttl);
        audit.push(presign_audit(
            job.org_id,
            actor(worker_id),
            Some(job.id),
            input.asset_id.to_string(),
            &input.object_key,
            &p,
            json!({ "worker_id": worker_id, "attempt": job.attempts }),
        ));
        inputs.push(InputUrl {
            alias: input.alias,
            path: input.path,
            url: p.url,
            size: input.size.unwrap_or(0).max(0) as u64,
            sha256: input.sha256.unwrap_or_default(),
            filename: input.filename,
            expires_at: p.expires_at,
        });
    }
    Ok((inputs, audit))
}

/// A worker's text as the database can store it and a terminal can show it: at most `max`
/// bytes (on a character boundary), control characters other than newline and tab replaced
/// (a carriage return becomes a newline). A worker relays what FFmpeg — the tenant's code —
/// wrote, so a NUL must not make its report unstorable (the honest worker would lose its
/// lease), and escape sequences must not reach the terminal of whoever reads the job.
fn worker_text(s: &str, max: usize) -> String {
    mpegflow_domain::names::truncate_utf8(s, max)
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            '\r' => '\n',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}
