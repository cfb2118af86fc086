//! Upload grants: one presigned, write-once PUT per declared output file, its size and SHA-256
//! pinned per attempt and signed in.

use super::{actor, lease_lost, LeaseHolder, ReportedFile};
use crate::error::{ControlError, Result};
use crate::outputs::{check_files, io_spec};
use crate::{presign_audit, AppState};
use mpegflow_domain::names::output_key;
use mpegflow_objstore::media::content_type_for_filename;
use mpegflow_objstore::PutSpec;
use mpegflow_store::{AuditEntry, GrantLimits, GrantResult, Job, UploadGrant};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::Instrument;

/// One granted upload.
#[derive(Debug, Clone)]
pub struct UploadUrl {
    /// The reported path, relative to `out/`.
    pub path: String,
    pub url: String,
    /// Headers the PUT must carry exactly (they are signed).
    pub headers: BTreeMap<String, String>,
}

/// The uploads granted by one call, and how long their URLs stay valid.
#[derive(Debug, Clone)]
pub struct UploadUrls {
    pub uploads: Vec<UploadUrl>,
    pub ttl: Duration,
}

/// Grants the holder's attempt one PUT per file: declared paths only, within the output
/// limits, each (attempt, path) pinned once to one size and SHA-256 (asking again with the same
/// pin re-issues the URL; with another is a conflict), a bounded number of calls per attempt.
pub async fn grant_uploads(
    state: &AppState,
    holder: &LeaseHolder,
    files: Vec<ReportedFile>,
) -> Result<UploadUrls> {
    let worker_id = holder.worker_id;
    let job = state
        .store
        .leased_job(holder.lease())
        .await?
        .ok_or_else(lease_lost)?;
    let span = tracing::info_span!("request_upload_urls", job_id = %job.id, org_id = %job.org_id, %worker_id);
    grant(state, holder, &job, files).instrument(span).await
}

async fn grant(
    state: &AppState,
    holder: &LeaseHolder,
    job: &Job,
    files: Vec<ReportedFile>,
) -> Result<UploadUrls> {
    let worker_id = holder.worker_id;
    let spec = io_spec(job)?;
    let files = check_files(
        &spec,
        files.into_iter().map(|f| (f.path, f.size, f.sha256)),
        state.config.max_output_bytes,
        state.config.max_output_files,
    )?;
    let asked: Vec<UploadGrant> = files
        .iter()
        .map(|f| UploadGrant {
            path: f.path.clone(),
            size: f.size as i64,
            sha256: f.sha256.clone(),
        })
        .collect();
    let limits = GrantLimits {
        max_files: state.config.max_output_files.into(),
        max_bytes: i64::try_from(state.config.max_output_bytes).unwrap_or(i64::MAX),
        max_calls: i32::try_from(state.config.max_upload_url_calls).unwrap_or(i32::MAX),
    };
    let (attempt, new) = match state
        .store
        .grant_uploads(holder.lease(), &asked, limits)
        .await?
    {
        GrantResult::Granted { attempt, new } => (attempt, new),
        GrantResult::LeaseLost => return Err(lease_lost()),
        GrantResult::Conflict(message) => {
            return Err(ControlError::Conflict {
                code: "upload_already_granted",
                message,
            })
        }
        GrantResult::TooMany(message) => {
            return Err(ControlError::invalid("output_limit", message))
        }
        GrantResult::CallsExhausted(n) => {
            return Err(ControlError::Conflict {
                code: "upload_calls_exhausted",
                message: format!("at most {n} RequestUploadUrls calls per attempt"),
            })
        }
    };
    let ttl = state.config.upload_url_ttl();
    let mut uploads = Vec::with_capacity(files.len());
    let mut audit = Vec::with_capacity(new.len() + 1);
    for f in &files {
        let key = output_key(job.org_id, job.id, attempt as u32, &f.path);
        let p = state
            .presigner
            .put(
                &key,
                ttl,
                &PutSpec {
                    size: f.size,
                    sha256_hex: Some(&f.sha256),
                    content_type: Some(content_type_for_filename(&f.name)),
                },
            )
            .map_err(|e| ControlError::invalid("output_rejected", e.to_string()))?;
        if new.contains(&f.path) {
            audit.push(presign_audit(
                job.org_id,
                actor(worker_id),
                Some(job.id),
                f.path.clone(),
                &key,
                &p,
                json!({ "worker_id": worker_id, "attempt": attempt, "size": f.size, "sha256": f.sha256 }),
            ));
        }
        uploads.push(UploadUrl {
            path: f.path.clone(),
            url: p.url,
            headers: p.headers,
        });
    }
    let reissued = files.len() - new.len();
    if reissued > 0 {
        // Same keys, same pins: one line for the lot rather than one per URL.
        audit.push(AuditEntry {
            org_id: Some(job.org_id),
            actor: actor(worker_id),
            action: "presign.put_reissued",
            job_id: Some(job.id),
            subject: None,
            details: json!({ "worker_id": worker_id, "attempt": attempt, "urls": reissued, "ttl_seconds": ttl.as_secs() }),
        });
    }
    state.store.audit_many(&audit).await?;
    Ok(UploadUrls { uploads, ttl })
}
