//! Claiming a job: the oldest runnable job of the worker's pool, leased with a fencing token,
//! with exactly the presigned inputs it needs.

use super::{input_urls, InputUrl};
use crate::error::{ControlError, Result};
use crate::outputs::{stored_outputs, StoredOutput};
use crate::AppState;
use mpegflow_store::{AuditEntry, Claim, Claimant, Job, WorkerTokenInfo};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument;
use uuid::Uuid;

/// A registered worker asking for work.
#[derive(Debug, Clone, Copy)]
pub struct WorkRequest<'a> {
    pub token: &'a WorkerTokenInfo,
    pub worker_id: Uuid,
    /// The command grammar of the worker's live registration.
    pub grammar: &'a str,
    /// How long the worker lets the call wait for work (bounded by the configuration).
    pub wait: Duration,
    /// A job the worker gave up on without its report getting through, with the attempt's
    /// fencing token: its lease is released before the worker gets new work.
    pub dropped: Option<(Uuid, &'a str)>,
}

/// What the worker receives for a claimed job.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub job_id: Uuid,
    pub attempt: u32,
    pub fencing_token: String,
    /// The rendered argv without the program name; paths are relative to the job directory.
    pub argv: Vec<String>,
    pub inputs: Vec<InputUrl>,
    /// The declared outputs; a directory output's file name ends in `/`.
    pub outputs: Vec<StoredOutput>,
    pub limits: Limits,
    pub lease_seconds: u32,
}

/// Bounds the worker applies to the job.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout_seconds: u32,
    pub max_output_bytes: u64,
    pub max_output_files: u32,
}

fn fencing_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn lease_held(job_id: Uuid) -> ControlError {
    ControlError::Conflict {
        code: "lease_held",
        message: format!("worker already holds the lease on job {job_id}"),
    }
}

/// What the worker receives for a claimed job, and the audit lines of its presigns.
fn assignment(
    state: &AppState,
    worker_id: Uuid,
    job: &Job,
    fencing_token: &str,
) -> Result<(Assignment, Vec<AuditEntry<'static>>)> {
    let (inputs, audit) = input_urls(state, worker_id, job)?;
    let argv: Vec<String> = serde_json::from_value(job.argv.clone())
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    let assignment = Assignment {
        job_id: job.id,
        attempt: job.attempts as u32,
        fencing_token: fencing_token.to_owned(),
        argv,
        inputs,
        outputs: stored_outputs(job)?,
        limits: Limits {
            timeout_seconds: job.timeout_seconds as u32,
            max_output_bytes: state.config.max_output_bytes,
            max_output_files: state.config.max_output_files,
        },
        lease_seconds: state.config.lease_seconds,
    };
    Ok((assignment, audit))
}

/// Claims a job for the worker, waiting up to the asked time (at most the configured maximum)
/// for one to come up: `None` when none did. A worker that still holds a lease gets nothing
/// more; a token revoked or suspended while the call waited gets nothing at all.
pub async fn claim(state: &AppState, req: WorkRequest<'_>) -> Result<Option<Assignment>> {
    let WorkRequest {
        token,
        worker_id,
        grammar,
        wait,
        dropped,
    } = req;
    let span = tracing::info_span!("get_work_assignment", %worker_id, pool = %token.pool_name);
    async move {
        // A worker that gave up on its job must not wait behind its own stale lease: it says
        // so (fenced), and the job goes back to its place in the queue (a platform fault).
        if let Some((job_id, fencing_token)) = dropped {
            let caller = Claimant {
                token,
                worker_id,
                grammar,
            };
            let released = state
                .store
                .release_dropped_lease(
                    caller,
                    job_id,
                    fencing_token,
                    state.config.retry_policy(),
                    rand::random(),
                )
                .await?;
            if let Some(new_state) = released {
                tracing::warn!(%job_id, %new_state, "the worker dropped this job without a report; released its lease");
                state.job_changed.notify_waiters();
                if new_state == mpegflow_domain::job::JobState::Queued {
                    state.job_queued.notify_waiters();
                }
            }
        }
        // A worker still holding a lease is refused by the claim itself (`Claim::LeaseHeld`),
        // which checks under the lock on the worker's row: no separate round trip first.
        let wait = wait.min(Duration::from_secs(state.config.max_poll_seconds.into()));
        let deadline = Instant::now() + wait;
        // An open long-poll is contact: keep the registration alive while it waits.
        let touch_every = Duration::from_secs(state.config.worker_ttl_seconds.max(3).into()) / 3;
        let mut touched = Instant::now();
        let mut throttled = false;
        loop {
            let notified = state.job_queued.notified();
            let fencing = fencing_token();
            let claimant = Claimant {
                token,
                worker_id,
                grammar,
            };
            let claimed = state
                .store
                .claim_job(claimant, state.config.lease(), &fencing, |job| {
                    assignment(state, worker_id, job, &fencing)
                })
                .await?;
            let mut nap = Duration::from_millis(250);
            match claimed {
                Claim::Assigned(job, assignment) => {
                    tracing::info!(job_id = %job.id, org_id = %job.org_id, attempt = job.attempts, "job assigned");
                    state.job_changed.notify_waiters();
                    return Ok(Some(assignment));
                }
                Claim::NoWork => {}
                Claim::TokenInactive => {
                    return Err(ControlError::PermissionDenied(
                        "worker token revoked or suspended".into(),
                    ));
                }
                Claim::LeaseHeld(job_id) => return Err(lease_held(job_id)),
                Claim::Throttled(t) => {
                    if !throttled {
                        throttled = true;
                        state
                            .metrics
                            .assignments_throttled
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(token_id = %token.token_id, reason = ?t.reason, wait_ms = t.wait.as_millis() as u64, "assignment throttled");
                    }
                    nap = t.wait.max(Duration::from_millis(50));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if touched.elapsed() >= touch_every {
                touched = now;
                state.store.touch_worker(worker_id, token.token_id).await?;
            }
            // Other replicas queue jobs too: poll as well as listen.
            let nap = (deadline - now).min(nap);
            if throttled {
                tokio::time::sleep(nap).await;
            } else {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(nap) => {}
                }
            }
        }
    }
    .instrument(span)
    .await
}
