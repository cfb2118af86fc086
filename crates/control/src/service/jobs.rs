//! Submitting, checking, reading and cancelling jobs.

use super::{views, Tenant};
use crate::error::{ControlError, Result};
use crate::outputs::{StoredInput, StoredOutput};
use crate::AppState;
use mpegflow_api as api;
use mpegflow_domain::command::{render, IoSpec};
use mpegflow_store::{Job, NewJob, StoreError, Submitted};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// A submission's answer: whether it created the job or replayed an earlier one with the same
/// idempotency key.
pub enum Submission {
    Created(api::Job),
    Replayed(api::Job),
}

/// What a template, its declared inputs and outputs, and the caller's options amount to.
struct Checked {
    spec: IoSpec,
    argv: Vec<String>,
    pool_id: Uuid,
    pool_name: String,
    timeout: u32,
}

/// Checks everything about a job that does not need its assets: names, the template against
/// FFmpeg's grammar and the allowlists, the timeout and the pool.
async fn check(
    state: &AppState,
    tenant: &Tenant,
    inputs: impl Iterator<Item = (&api::Alias, &str)>,
    outputs: &std::collections::BTreeMap<api::Alias, api::OutputName>,
    command: &str,
    pool: Option<&api::PoolName>,
    timeout: Option<api::TimeoutSeconds>,
) -> Result<Checked> {
    let mut spec = IoSpec::default();
    let mut any_input = false;
    for (alias, filename) in inputs {
        spec.add_input(alias, filename)?;
        any_input = true;
    }
    if !any_input {
        return Err(ControlError::invalid(
            "invalid_job",
            "a job needs at least one input",
        ));
    }
    if outputs.is_empty() {
        return Err(ControlError::invalid(
            "invalid_job",
            "a job needs at least one output",
        ));
    }
    for (alias, filename) in outputs {
        spec.add_output(alias, filename)?;
    }
    let timeout = timeout.map_or(state.config.default_timeout_seconds, |t| t.get());
    if timeout > state.config.max_timeout_seconds {
        return Err(ControlError::invalid(
            "invalid_timeout",
            format!(
                "timeout_seconds must be 1-{}",
                state.config.max_timeout_seconds
            ),
        ));
    }
    let argv = render(command, &spec, state.config.job_threads)?;
    let pool_name = pool.map_or("default", |p| p.as_str());
    let pool = match state.store.pool_by_name(pool_name).await {
        Ok(p) if p.org_id.is_none() || p.org_id == Some(tenant.org_id) => p,
        Ok(_) | Err(StoreError::NotFound) => {
            return Err(ControlError::invalid(
                "unknown_pool",
                format!("pool {pool_name:?} not found"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Checked {
        spec,
        argv,
        pool_id: pool.id,
        pool_name: pool.name,
        timeout,
    })
}

/// `POST /v1/jobs/validate`: what a submission of this template would run, without assets.
pub async fn validate(
    state: &AppState,
    tenant: &Tenant,
    req: &api::JobValidateIn,
) -> Result<api::JobValidation> {
    let checked = check(
        state,
        tenant,
        req.inputs.iter().map(|(a, f)| (a, f.as_str())),
        &req.outputs,
        &req.command,
        req.pool.as_ref(),
        req.timeout_seconds,
    )
    .await?;
    Ok(api::JobValidation {
        argv: checked.argv,
        pool: api::PoolName::parse(checked.pool_name)
            .map_err(|e| ControlError::Internal(e.to_string()))?,
    })
}

pub async fn submit(
    state: &AppState,
    tenant: &Tenant,
    req: api::JobIn,
    idempotency_key: Option<api::IdempotencyKey>,
) -> Result<Submission> {
    // The typed request serialises deterministically (ordered maps), so equal requests hash
    // equally whatever their key order or whitespace on the wire.
    let request_hash = Sha256::digest(
        serde_json::to_vec(&req).map_err(|e| ControlError::Internal(e.to_string()))?,
    )
    .to_vec();
    // A repeated request answers the job it created, whatever became of its inputs since
    // (they may have been deleted once it finished).
    if let Some(key) = &idempotency_key {
        if let Some(existing) = state
            .store
            .job_by_idempotency_key(tenant.org_id, key.as_str())
            .await?
        {
            return replay(state, &existing, &request_hash).await;
        }
    }
    let metadata = Value::Object(req.metadata.clone().unwrap_or_default());
    if metadata.to_string().len() > api::MAX_METADATA_BYTES {
        return Err(ControlError::invalid(
            "invalid_metadata",
            format!(
                "metadata must be at most {} KiB of JSON",
                api::MAX_METADATA_BYTES / 1024
            ),
        ));
    }
    // Inputs: each must be a completed asset of this org.
    let ids: Vec<Uuid> = req.inputs.values().copied().collect();
    let assets = state.store.get_assets(tenant.org_id, &ids).await?;
    let mut named = Vec::new();
    for (alias, id) in &req.inputs {
        let asset = assets.iter().find(|a| a.id == *id).ok_or_else(|| {
            ControlError::invalid(
                "unknown_asset",
                format!("input {:?}: asset {id} not found", alias.as_str()),
            )
        })?;
        if asset.state != "ready" {
            return Err(ControlError::invalid(
                "asset_not_ready",
                format!(
                    "input {:?}: asset {id} has not been completed",
                    alias.as_str()
                ),
            ));
        }
        named.push((alias, asset));
    }
    let checked = check(
        state,
        tenant,
        named.iter().map(|(alias, a)| (*alias, a.filename.as_str())),
        &req.outputs,
        &req.command,
        req.pool.as_ref(),
        req.timeout_seconds,
    )
    .await?;
    let inputs: Vec<StoredInput> = named
        .iter()
        .map(|(alias, asset)| StoredInput {
            alias: alias.to_string(),
            asset_id: asset.id,
            filename: asset.filename.clone(),
            path: checked.spec.input_path(alias).unwrap_or_default(),
            object_key: asset.object_key.clone(),
            size: asset.size,
            sha256: asset.sha256.clone(),
        })
        .collect();
    let outputs: Vec<StoredOutput> = req
        .outputs
        .iter()
        .map(|(alias, filename)| StoredOutput {
            alias: alias.to_string(),
            filename: filename.to_string(),
        })
        .collect();
    let internal = |e: serde_json::Error| ControlError::Internal(e.to_string());
    let new = NewJob {
        id: Uuid::now_v7(),
        input_assets: named.iter().map(|(_, a)| a.id).collect(),
        org_id: tenant.org_id,
        pool_id: checked.pool_id,
        command: req.command,
        argv: json!(checked.argv),
        inputs: serde_json::to_value(&inputs).map_err(internal)?,
        outputs: serde_json::to_value(&outputs).map_err(internal)?,
        timeout_seconds: checked.timeout as i32,
        max_attempts: state.config.max_attempts as i32,
        metadata,
        idempotency_key: idempotency_key.map(String::from),
        request_hash,
        actor: tenant.actor(),
        // The grammar the command was validated against: only workers implementing it run it.
        grammar: state.config.ffmpeg_grammar.clone(),
    };
    match state.store.submit_job(new).await {
        Ok(Submitted::Created(job)) => {
            state.job_queued.notify_waiters();
            tracing::info!(job_id = %job.id, org_id = %job.org_id, "job submitted");
            Ok(Submission::Created(views::job(
                &job,
                &checked.pool_name,
                None,
            )?))
        }
        Ok(Submitted::Replayed(job)) => Ok(Submission::Replayed(views::job(
            &job,
            &checked.pool_name,
            None,
        )?)),
        Err(StoreError::Conflict(message)) => Err(ControlError::Conflict {
            code: "idempotency_conflict",
            message,
        }),
        Err(StoreError::NotFound) => Err(ControlError::invalid(
            "unknown_asset",
            "an input asset was deleted while the job was submitted",
        )),
        Err(e) => Err(e.into()),
    }
}

/// The answer to a submission whose idempotency key `existing` was submitted with: that job
/// when the request is the same, a conflict when it is not.
async fn replay(state: &AppState, existing: &Job, request_hash: &[u8]) -> Result<Submission> {
    if existing.request_hash.as_deref() != Some(request_hash) {
        return Err(ControlError::Conflict {
            code: "idempotency_conflict",
            message: "Idempotency-Key was already used with a different request".into(),
        });
    }
    Ok(Submission::Replayed(views::job(
        existing,
        &pool_name(state, existing).await,
        None,
    )?))
}

async fn tenant_job(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<Job> {
    match state.store.get_job(tenant.org_id, id).await {
        Ok(job) => Ok(job),
        Err(StoreError::NotFound) => Err(ControlError::NotFound("job")),
        Err(e) => Err(e.into()),
    }
}

async fn pool_name(state: &AppState, job: &Job) -> String {
    state
        .store
        .pool_name(job.pool_id)
        .await
        .unwrap_or_else(|_| job.pool_id.to_string())
}

/// A job with its history. With `wait`, answers once the job is finished or its state or
/// progress changes, or when `wait` has passed.
pub async fn get(state: &AppState, tenant: &Tenant, id: Uuid, wait: Duration) -> Result<api::Job> {
    let mut job = tenant_job(state, tenant, id).await?;
    let deadline = Instant::now() + wait;
    let seen = (job.state.clone(), job.progress);
    while !job.state().is_terminal() && Instant::now() < deadline {
        let changed = state.job_changed.notified();
        // Changes made by other replicas are seen within a second.
        let nap = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep(nap) => {}
        }
        job = tenant_job(state, tenant, id).await?;
        if (job.state.clone(), job.progress) != seen {
            break;
        }
    }
    let history = state.store.job_attempts(job.id).await?;
    let pool = pool_name(state, &job).await;
    views::job(&job, &pool, Some(history))
}

pub async fn list(
    state: &AppState,
    tenant: &Tenant,
    q: &api::ListJobsQuery,
) -> Result<api::JobList> {
    let limit = super::page_size(q.limit)?;
    let rows = state
        .store
        .list_jobs(
            tenant.org_id,
            q.state.map(Into::into),
            q.cursor,
            i64::from(limit) + 1,
        )
        .await?;
    let (page, next_cursor) = super::split_page(rows, limit, |j| j.id);
    let pool_ids: Vec<Uuid> = page.iter().map(|j| j.pool_id).collect();
    let pools = state.store.pool_names(&pool_ids).await?;
    let jobs = page
        .iter()
        .map(|job| {
            let pool = pools
                .get(&job.pool_id)
                .cloned()
                .unwrap_or_else(|| job.pool_id.to_string());
            views::job(job, &pool, None)
        })
        .collect::<Result<_>>()?;
    Ok(api::JobList { jobs, next_cursor })
}

pub async fn cancel(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<api::Job> {
    let job = match state
        .store
        .cancel_job(tenant.org_id, id, tenant.actor())
        .await
    {
        Ok(job) => job,
        Err(StoreError::NotFound) => return Err(ControlError::NotFound("job")),
        Err(StoreError::Conflict(message)) => {
            return Err(ControlError::Conflict {
                code: "job_finished",
                message,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let pool = pool_name(state, &job).await;
    views::job(&job, &pool, None)
}

/// FFmpeg's full stderr of one attempt.
pub async fn attempt_stderr(
    state: &AppState,
    tenant: &Tenant,
    id: Uuid,
    attempt: i32,
) -> Result<Vec<u8>> {
    let job = tenant_job(state, tenant, id).await?;
    let stderr = state
        .store
        .attempt_stderr(job.id, attempt)
        .await?
        .ok_or(ControlError::NotFound("attempt"))?;
    Ok(crate::outputs::decompress_stderr(&stderr))
}
