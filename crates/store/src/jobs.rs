//! Jobs: submission, claiming with `FOR UPDATE SKIP LOCKED`, fenced heartbeats and reports,
//! cancellation and the lease reaper.

use crate::audit::insert_audit;
use crate::webhooks::insert_job_event;
use crate::{AuditEntry, Result, Store, StoreError};
use mpegflow_domain::job::{
    error_code, transition, Event, Failure, Fault, JobState, RetryPolicy, Spent, Transition,
};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub org_id: Uuid,
    pub workflow_id: Uuid,
    pub pool_id: Uuid,
    pub state: String,
    pub command: String,
    pub argv: Value,
    pub inputs: Value,
    pub outputs: Value,
    pub timeout_seconds: i32,
    pub max_attempts: i32,
    pub metadata: Value,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<Vec<u8>>,
    pub attempts: i32,
    pub progress: Option<f32>,
    pub run_after: OffsetDateTime,
    pub lease_worker_id: Option<Uuid>,
    pub lease_expires_at: Option<OffsetDateTime>,
    pub fencing_token: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub stderr_tail: Option<String>,
    pub result: Option<Value>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub blame_worker_id: Option<Uuid>,
    /// While running: the stage and FFmpeg's speed and fps, from the last heartbeat.
    pub live: Option<Value>,
    /// Failed attempts charged to the job (they count against `max_attempts`).
    pub job_faults: i32,
    /// Failed attempts charged to the platform (they count against its own bound).
    pub platform_faults: i32,
}

impl Job {
    /// What the job's finished attempts have cost so far.
    pub fn spent(&self) -> Spent {
        Spent {
            job_faults: self.job_faults.max(0) as u32,
            platform_faults: self.platform_faults.max(0) as u32,
        }
    }

    pub fn state(&self) -> JobState {
        self.state.parse().unwrap_or(JobState::Failed)
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Attempt {
    pub attempt: i32,
    pub worker_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub assigned_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub ffmpeg_version: Option<String>,
    pub stages: Option<Value>,
    pub input_hashes: Option<Value>,
    pub output_hashes: Option<Value>,
    /// `job` or `platform` for a failed attempt: whose fault it was (what it cost the job).
    pub fault: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    /// The ready assets it reads: locked while it is inserted, and no longer expiring.
    pub input_assets: Vec<Uuid>,
    pub org_id: Uuid,
    pub pool_id: Uuid,
    pub command: String,
    pub argv: Value,
    pub inputs: Value,
    pub outputs: Value,
    pub timeout_seconds: i32,
    pub max_attempts: i32,
    pub metadata: Value,
    pub idempotency_key: Option<String>,
    pub request_hash: Vec<u8>,
    pub actor: String,
    /// The FFmpeg command grammar the command was validated against.
    pub grammar: String,
}

#[derive(Debug)]
pub enum Submitted {
    Created(Job),
    /// Same `Idempotency-Key`, same request: the job created the first time.
    Replayed(Job),
}

/// Who acts on a running job: the job, the worker holding its lease, and the lease's fencing
/// token. Every write through a lease matches all three.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub job_id: Uuid,
    pub worker_id: Uuid,
    pub fencing_token: &'a str,
}

/// Who asks for work: the worker, its token, and the command grammar its FFmpeg implements.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub token: &'a crate::WorkerTokenInfo,
    pub worker_id: Uuid,
    pub grammar: &'a str,
}

/// The answer to a request for work.
#[derive(Debug)]
pub enum Claim<T> {
    Assigned(Box<Job>, T),
    NoWork,
    /// There is work, but this token must wait.
    Throttled(Throttle),
    /// The worker already holds the lease on this job.
    LeaseHeld(Uuid),
    /// The worker's token was revoked or suspended since the call was authenticated.
    TokenInactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub wait: Duration,
    pub reason: ThrottleReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    LeaseRate { leases_per_minute: i64 },
    Strikes { strikes: i64 },
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::from_secs(60))
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeartbeatResult {
    Extended,
    Canceled,
    /// The caller no longer holds the lease (expired and reassigned, finished, or never held).
    Lost,
}

/// What a worker says about how its attempt ended.
#[derive(Debug, Clone)]
pub enum Report {
    Succeeded {
        result: Value,
        outputs: Vec<OutputObject>,
    },
    Failed(Failure),
    Canceled,
}

/// One object a successful attempt produced; becomes an asset of the job's org.
#[derive(Debug, Clone)]
pub struct OutputObject {
    pub asset_id: Uuid,
    pub object_key: String,
    pub filename: String,
    pub size: i64,
    pub sha256: String,
    /// What it is as media (`mpegflow_domain::media::MediaInfo`), when measured.
    pub media: Option<Value>,
}

/// Provenance of one attempt, written whatever its outcome.
#[derive(Debug, Clone, Default)]
pub struct AttemptRecord {
    pub exit_code: Option<i32>,
    pub stderr_zstd: Option<Vec<u8>>,
    pub stderr_tail: Option<String>,
    pub ffmpeg_version: Option<String>,
    pub stages: Value,
    pub input_hashes: Value,
    pub output_hashes: Value,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReportResult {
    /// The report moved the job to this state.
    Applied(JobState),
    /// The job was cancelled while running; the attempt was recorded, the state stays.
    RecordedCanceled,
    /// Stale or foreign fencing token: nothing changed.
    Refused,
}

const JOB_COLUMNS: &str = "*";

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

impl Store {
    pub async fn submit_job(&self, new: NewJob) -> Result<Submitted> {
        let mut tx = self.begin().await?;
        // The inputs cannot be deleted under the submission (deletion locks them FOR UPDATE
        // and then looks for queued jobs that read them).
        let mut wanted = new.input_assets.clone();
        wanted.sort_unstable();
        wanted.dedup();
        let present: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM assets WHERE id = ANY($1) AND org_id = $2 AND state = 'ready'
             ORDER BY id FOR SHARE",
        )
        .bind(&wanted)
        .bind(new.org_id)
        .fetch_all(&mut *tx)
        .await?;
        if present.len() != wanted.len() {
            return Err(StoreError::NotFound);
        }
        let inserted: Option<Job> = sqlx::query_as(&format!(
            "INSERT INTO jobs (id, org_id, workflow_id, pool_id, state, command, argv, inputs, outputs, timeout_seconds,
                               max_attempts, metadata, idempotency_key, request_hash, grammar)
             VALUES ($1,$2,$1,$3,'queued',$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)
             ON CONFLICT (org_id, idempotency_key) DO NOTHING RETURNING {JOB_COLUMNS}"
        ))
        .bind(new.id)
        .bind(new.org_id)
        .bind(new.pool_id)
        .bind(&new.command)
        .bind(&new.argv)
        .bind(&new.inputs)
        .bind(&new.outputs)
        .bind(new.timeout_seconds)
        .bind(new.max_attempts)
        .bind(&new.metadata)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .bind(&new.grammar)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = inserted else {
            let existing: Job =
                sqlx::query_as("SELECT * FROM jobs WHERE org_id = $1 AND idempotency_key = $2")
                    .bind(new.org_id)
                    .bind(&new.idempotency_key)
                    .fetch_one(&mut *tx)
                    .await?;
            return if existing.request_hash.as_deref() == Some(&new.request_hash[..]) {
                Ok(Submitted::Replayed(existing))
            } else {
                Err(StoreError::Conflict(
                    "Idempotency-Key was already used with a different request".into(),
                ))
            };
        };
        sqlx::query(
            "UPDATE assets SET expires_at = NULL WHERE id = ANY($1) AND expires_at IS NOT NULL",
        )
        .bind(&wanted)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut *tx,
            &AuditEntry {
                org_id: Some(job.org_id),
                actor: new.actor,
                action: "job.submitted",
                job_id: Some(job.id),
                subject: None,
                details: json!({ "command": job.command, "argv": job.argv, "inputs": job.inputs, "outputs": job.outputs,
                                 "pool_id": job.pool_id, "workflow_id": job.workflow_id, "grammar": new.grammar }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Submitted::Created(job))
    }

    /// The org's job submitted under this idempotency key, if any.
    pub async fn job_by_idempotency_key(&self, org_id: Uuid, key: &str) -> Result<Option<Job>> {
        Ok(
            sqlx::query_as("SELECT * FROM jobs WHERE org_id = $1 AND idempotency_key = $2")
                .bind(org_id)
                .bind(key)
                .fetch_optional(&mut *self.conn().await?)
                .await?,
        )
    }

    pub async fn get_job(&self, org_id: Uuid, id: Uuid) -> Result<Job> {
        sqlx::query_as("SELECT * FROM jobs WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Newest first; `before` is the last id of the previous page.
    pub async fn list_jobs(
        &self,
        org_id: Uuid,
        state: Option<JobState>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        Ok(sqlx::query_as(
            "SELECT * FROM jobs WHERE org_id = $1 AND ($2::text IS NULL OR state = $2) AND ($3::uuid IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(org_id)
        .bind(state.map(JobState::as_str))
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    pub async fn job_attempts(&self, job_id: Uuid) -> Result<Vec<Attempt>> {
        Ok(sqlx::query_as(
            "SELECT attempt, worker_id, assigned_at, finished_at, outcome, exit_code, error_code, error_message,
                    ffmpeg_version, stages, input_hashes, output_hashes, fault
             FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
        )
        .bind(job_id)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    /// Full stderr of one attempt, zstd-compressed.
    pub async fn attempt_stderr(&self, job_id: Uuid, attempt: i32) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT stderr_zstd FROM job_attempts WHERE job_id = $1 AND attempt = $2",
        )
        .bind(job_id)
        .bind(attempt)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .flatten())
    }

    pub async fn cancel_job(&self, org_id: Uuid, id: Uuid, actor: String) -> Result<Job> {
        let mut tx = self.begin().await?;
        let job: Job =
            sqlx::query_as("SELECT * FROM jobs WHERE id = $1 AND org_id = $2 FOR UPDATE")
                .bind(id)
                .bind(org_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
        let t = transition(
            job.state(),
            &Event::Cancel,
            job.spent(),
            &RetryPolicy::default(),
            SystemTime::now(),
            0.0,
        )
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
        debug_assert!(matches!(
            t,
            Transition::Finish {
                state: JobState::Canceled,
                ..
            }
        ));
        // The fencing token stays, so the worker's next heartbeat learns of the cancellation.
        let job: Job = sqlx::query_as(
            "UPDATE jobs SET state = 'canceled', finished_at = now(), lease_expires_at = NULL WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        insert_job_event(&mut tx, self.job_snapshot, &job).await?;
        insert_audit(
            &mut *tx,
            &AuditEntry {
                org_id: Some(org_id),
                actor,
                action: "job.canceled",
                job_id: Some(id),
                subject: None,
                details: json!({}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Claims the oldest runnable job of the claimant's pool whose grammar its FFmpeg
    /// implements, or says why not. `presign` builds what the worker receives from the claimed
    /// job, with the audit lines that record it; they commit together with the claim.
    ///
    /// The token's lease rate and strike backoff are read from `job_attempts` (indexed by
    /// token), only once a candidate row is locked: no per-token row is written here.
    pub async fn claim_job<T, E, F>(
        &self,
        claimant: Claimant<'_>,
        lease: Duration,
        fencing_token: &str,
        presign: F,
    ) -> Result<Claim<T>, E>
    where
        E: From<StoreError>,
        F: FnOnce(&Job) -> Result<(T, Vec<AuditEntry<'static>>), E>,
    {
        let policy = self.token_policy;
        let token = claimant.token;
        let worker_id = claimant.worker_id;
        let db = |e: sqlx::Error| E::from(StoreError::from(e));
        let mut tx = self.begin().await.map_err(E::from)?;
        // One job at a time per worker: claims of one worker are serialised on its row (concurrent
        // long-polls of one registration would otherwise each take a job), and a worker that
        // still holds a lease gets nothing more.
        // The token is checked again here: a long-poll authenticated before its token was
        // revoked or suspended must not take a job afterwards.
        let registered: Option<bool> = sqlx::query_scalar(
            "SELECT t.revoked_at IS NULL AND t.suspended_at IS NULL
             FROM workers w JOIN worker_tokens t ON t.id = w.token_id
             WHERE w.id = $1 AND w.token_id = $2 FOR UPDATE OF w",
        )
        .bind(worker_id)
        .bind(token.token_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        match registered {
            None => return Ok(Claim::NoWork),
            Some(false) => return Ok(Claim::TokenInactive),
            Some(true) => {}
        }
        // A statement of its own, so it sees what a claim that held the lock just committed.
        let held: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE lease_worker_id = $1 AND state = 'running' LIMIT 1",
        )
        .bind(worker_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(job_id) = held {
            return Ok(Claim::LeaseHeld(job_id));
        }
        // A job blamed on its tenant by one worker goes to another worker, and to a worker of
        // another token while one of those is live in the pool.
        let candidate: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, state FROM jobs j
             WHERE pool_id = $1 AND state = 'queued' AND run_after <= now() AND grammar = $4
               AND (blame_worker_id IS NULL OR (blame_worker_id <> $2 AND (blame_token_id IS DISTINCT FROM $3 OR NOT EXISTS (
                    SELECT 1 FROM workers w WHERE w.pool_id = $1 AND w.token_id <> $3 AND w.ffmpeg_grammar = $4
                      AND w.last_seen_at > now() - make_interval(secs => $5)))))
             ORDER BY run_after, created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(token.pool_id)
        .bind(worker_id)
        .bind(token.token_id)
        .bind(claimant.grammar)
        .bind(policy.worker_ttl.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some((id, state)) = candidate else {
            return Ok(Claim::NoWork);
        };
        if let Some(wait) = self.token_gate(&mut tx, token).await? {
            // Dropping the transaction unlocks the row for other workers.
            return Ok(Claim::Throttled(wait));
        }
        let state: JobState = state
            .parse()
            .map_err(|e: mpegflow_domain::job::UnknownState| StoreError::Conflict(e.to_string()))?;
        transition(
            state,
            &Event::Assign,
            Spent::default(),
            &RetryPolicy::default(),
            SystemTime::now(),
            0.0,
        )
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
        let job: Job = sqlx::query_as(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_worker_id = $2, live = NULL,
                    lease_expires_at = now() + make_interval(secs => $3), fencing_token = $4,
                    started_at = COALESCE(started_at, now()), progress = 0
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(worker_id)
        .bind(lease.as_secs_f64())
        .bind(fencing_token)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        insert_job_event(&mut tx, self.job_snapshot, &job)
            .await
            .map_err(E::from)?;
        sqlx::query(
            "INSERT INTO job_attempts (job_id, attempt, worker_id, token_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(job.attempts)
        .bind(worker_id)
        .bind(token.token_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let (out, mut audit) = presign(&job)?;
        audit.insert(
            0,
            AuditEntry {
                org_id: Some(job.org_id),
                actor: format!("worker:{worker_id}"),
                action: "job.assigned",
                job_id: Some(id),
                subject: Some(worker_id.to_string()),
                details: json!({ "attempt": job.attempts, "lease_seconds": lease.as_secs(),
                                 "token_id": token.token_id, "grammar": claimant.grammar }),
            },
        );
        crate::audit::insert_audits(&mut *tx, &audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(Claim::Assigned(Box::new(job), out))
    }

    /// How long the token must wait before its next lease, if at all: its lease rate over the
    /// last minute, and an exponential backoff once its strikes pass the throttle threshold.
    async fn token_gate(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        token: &crate::WorkerTokenInfo,
    ) -> Result<Option<Throttle>> {
        let policy = self.token_policy;
        let (recent, rate_wait, strikes, since_strike): (i64, Option<f64>, i64, Option<f64>) =
            sqlx::query_as(
                "SELECT
                   (SELECT count(*) FROM job_attempts WHERE token_id = $1 AND assigned_at > now() - interval '60 seconds'),
                   (SELECT EXTRACT(EPOCH FROM min(assigned_at) + interval '60 seconds' - now())::float8
                      FROM job_attempts WHERE token_id = $1 AND assigned_at > now() - interval '60 seconds'),
                   (SELECT count(*) FROM job_attempts WHERE token_id = $1 AND strike
                      AND finished_at > greatest(now() - make_interval(secs => $2), COALESCE($3, '-infinity'::timestamptz))),
                   (SELECT EXTRACT(EPOCH FROM now() - max(finished_at))::float8 FROM job_attempts WHERE token_id = $1 AND strike
                      AND finished_at > greatest(now() - make_interval(secs => $2), COALESCE($3, '-infinity'::timestamptz)))",
            )
            .bind(token.token_id)
            .bind(policy.strike_window.as_secs_f64())
            .bind(token.strikes_since)
            .fetch_one(&mut **tx)
            .await?;
        let rate = token.leases_per_minute.map_or_else(
            || i64::from(token.max_workers) * i64::from(policy.leases_per_worker_per_minute),
            i64::from,
        );
        if recent >= rate.max(1) {
            return Ok(Some(Throttle {
                wait: secs(rate_wait.unwrap_or(1.0)),
                reason: ThrottleReason::LeaseRate {
                    leases_per_minute: rate,
                },
            }));
        }
        let over = strikes - i64::from(policy.throttle_after_strikes);
        if over >= 0 {
            let backoff = policy
                .throttle_base
                .saturating_mul(1u32 << over.min(20) as u32)
                .min(policy.throttle_max);
            let since = secs(since_strike.unwrap_or(0.0));
            if since < backoff {
                return Ok(Some(Throttle {
                    wait: backoff - since,
                    reason: ThrottleReason::Strikes { strikes },
                }));
            }
        }
        Ok(None)
    }

    /// The job a worker holds under `fencing_token`, if it still holds it.
    pub async fn leased_job(&self, lease_ref: Lease<'_>) -> Result<Option<Job>> {
        // The connection first: reaching the database may end an outage, and with it start
        // the amnesty the cutoff reflects.
        let mut conn = self.conn().await?;
        Ok(sqlx::query_as(
            "SELECT * FROM jobs WHERE id = $1 AND lease_worker_id = $2 AND fencing_token = $3 AND state = 'running'
               AND lease_expires_at > COALESCE($4, now())",
        )
        .bind(lease_ref.job_id)
        .bind(lease_ref.worker_id)
        .bind(lease_ref.fencing_token)
        .bind(self.lease_cutoff())
        .fetch_optional(&mut *conn)
        .await?)
    }

    /// Extends a running job's lease, never past the attempt's deadline: its start plus the
    /// job's timeout plus `grace` (for fetching inputs and uploading outputs). Past it the
    /// holder has lost the lease, which then runs out for the reaper: a worker that heartbeats
    /// without ever reporting cannot keep a job running for ever.
    pub async fn heartbeat(
        &self,
        lease_ref: Lease<'_>,
        progress: Option<f32>,
        live: Value,
        lease: Duration,
        grace: Duration,
    ) -> Result<HeartbeatResult> {
        // The connection first, as in `leased_job`.
        let mut conn = self.conn().await?;
        let row: Option<String> = sqlx::query_scalar(
            "WITH deadline AS (
               SELECT a.assigned_at + make_interval(secs => j.timeout_seconds + $6) AS at
               FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.attempt = j.attempts
               WHERE j.id = $1),
             before AS (SELECT progress FROM jobs WHERE id = $1),
             updated AS (
             UPDATE jobs SET lease_expires_at = CASE WHEN state = 'running'
                        THEN LEAST(now() + make_interval(secs => $4), (SELECT at FROM deadline)) ELSE lease_expires_at END,
                    progress = CASE WHEN state = 'running' THEN COALESCE($5, progress) ELSE progress END,
                    live = CASE WHEN state = 'running' THEN $7 ELSE live END
             WHERE id = $1 AND lease_worker_id = $2 AND fencing_token = $3
               AND (state = 'canceled' OR (state = 'running' AND now() < (SELECT at FROM deadline)
                                           AND lease_expires_at > COALESCE($8, now())))
             RETURNING id, org_id, state, progress, attempts),
             -- job.progress, only when it moved and an endpoint of the org asked for it.
             announced AS (
               INSERT INTO webhook_events (id, org_id, job_id, type, data)
               SELECT $9, u.org_id, u.id, 'job.progress',
                      jsonb_build_object('id', u.id, 'state', 'running', 'progress', u.progress, 'attempt', u.attempts)
               FROM updated u
               WHERE u.state = 'running' AND u.progress IS DISTINCT FROM (SELECT progress FROM before)
                 AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.org_id = u.org_id
                               AND e.deleted_at IS NULL AND 'job.progress' = ANY(e.events)))
             SELECT state FROM updated",
        )
        .bind(lease_ref.job_id)
        .bind(lease_ref.worker_id)
        .bind(lease_ref.fencing_token)
        .bind(lease.as_secs_f64())
        .bind(progress)
        .bind(grace.as_secs_f64())
        .bind(live)
        .bind(self.lease_cutoff())
        .bind(Uuid::now_v7())
        .fetch_optional(&mut *conn)
        .await?;
        Ok(match row.as_deref() {
            Some("running") => HeartbeatResult::Extended,
            Some(_) => HeartbeatResult::Canceled,
            None => HeartbeatResult::Lost,
        })
    }

    /// Applies a worker's report, fenced: only the current lease holder moves the job.
    pub async fn report(
        &self,
        lease_ref: Lease<'_>,
        report: Report,
        record: AttemptRecord,
        policy: RetryPolicy,
        jitter: f64,
    ) -> Result<ReportResult> {
        let Lease {
            job_id, worker_id, ..
        } = lease_ref;
        let mut tx = self.begin().await?;
        let job: Option<Job> = sqlx::query_as(
            "SELECT * FROM jobs WHERE id = $1 AND lease_worker_id = $2 AND fencing_token = $3
               AND (state = 'canceled' OR (state = 'running' AND lease_expires_at > COALESCE($4, now())))
             FOR UPDATE",
        )
        .bind(lease_ref.job_id)
        .bind(lease_ref.worker_id)
        .bind(lease_ref.fencing_token)
        .bind(self.lease_cutoff())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job else {
            return Ok(ReportResult::Refused);
        };
        let (outcome, failure) = match &report {
            Report::Succeeded { .. } => ("succeeded", None),
            Report::Failed(f) => ("failed", Some(f.clone())),
            Report::Canceled => ("canceled", None),
        };
        let live = job.state() != JobState::Canceled;
        // A tenant-blaming code is one worker's word until a second worker repeats it.
        let blame = failure
            .as_ref()
            .filter(|f| live && error_code::blames_tenant(&f.code));
        let unconfirmed_blame = blame
            .is_some_and(|f| !error_code::blame_confirmed(&f.code, job.blame_worker_id, worker_id));
        // Counted against the token: an attempt that ended without a finished encode by the
        // worker's doing (infrastructure trouble it reported, an unasked cancellation). The
        // tenant's own failures are not, and neither is a blame nobody confirmed yet: a crafted
        // input earns one from every honest worker (and one contradicted later stays no strike:
        // see `audit_refuted_blames`).
        let strike = live
            && match &report {
                Report::Succeeded { .. } => false,
                Report::Failed(f) => {
                    f.retryable && !unconfirmed_blame && error_code::is_worker_evidence(&f.code)
                }
                Report::Canceled => true,
            };
        let event = match &report {
            Report::Failed(f) if unconfirmed_blame => Event::BlameUnconfirmed(f.clone()),
            Report::Succeeded { .. } => Event::Succeed,
            Report::Failed(f) => Event::Fail(f.clone()),
            Report::Canceled => Event::Fail(Failure {
                code: mpegflow_domain::job::error_code::WORKER_ERROR.into(),
                message: "worker reported a cancellation the coordinator did not ask for".into(),
                retryable: true,
            }),
        };
        let policy = RetryPolicy {
            max_attempts: job.max_attempts as u32,
            ..policy
        };
        // A cancelled job stays cancelled: its attempt is recorded, nothing is charged.
        let t = live
            .then(|| {
                transition(
                    JobState::Running,
                    &event,
                    job.spent(),
                    &policy,
                    SystemTime::now(),
                    jitter,
                )
                .map_err(|e| StoreError::Conflict(e.to_string()))
            })
            .transpose()?;
        // An attempt is recorded once: a cancelled job keeps its fencing token (so its worker
        // learns of the cancellation), and its report must not be rewritten again and again.
        let recorded: Option<Option<Uuid>> = sqlx::query_scalar(
            "UPDATE job_attempts SET finished_at = now(), outcome = $3, exit_code = $4, error_code = $5, error_message = $6,
                    stderr_zstd = $7, ffmpeg_version = $8, stages = $9, input_hashes = $10, output_hashes = $11, strike = $12,
                    fault = $13
             WHERE job_id = $1 AND attempt = $2 AND finished_at IS NULL RETURNING token_id",
        )
        .bind(job_id)
        .bind(job.attempts)
        .bind(outcome)
        .bind(record.exit_code)
        .bind(failure.as_ref().map(|f| f.code.as_str()))
        .bind(failure.as_ref().map(|f| f.message.as_str()))
        .bind(&record.stderr_zstd)
        .bind(&record.ffmpeg_version)
        .bind(&record.stages)
        .bind(&record.input_hashes)
        .bind(&record.output_hashes)
        .bind(strike)
        .bind(t.as_ref().and_then(charge_of).map(Fault::as_str))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(token_id) = recorded else {
            // Already recorded: the same answer as the first time, nothing written.
            return Ok(if live {
                ReportResult::Refused
            } else {
                ReportResult::RecordedCanceled
            });
        };
        let actor = format!("worker:{worker_id}");
        if !matches!(report, Report::Succeeded { .. }) || t.is_none() {
            self.collect_attempt_uploads(&mut tx, &job).await?;
        }
        let Some(t) = t else {
            insert_audit(&mut *tx, &AuditEntry { org_id: Some(job.org_id), actor, action: "job.attempt_ended", job_id: Some(job_id), subject: None,
                details: json!({ "attempt": job.attempts, "outcome": outcome, "job_state": "canceled" }) }).await?;
            tx.commit().await?;
            return Ok(ReportResult::RecordedCanceled);
        };
        if let (Some(token_id), true) = (token_id, strike) {
            crate::admin::suspend_if_struck_out(&mut tx, token_id, &self.token_policy).await?;
        }
        let new_state = self
            .apply(&mut tx, &job, &t, record.stderr_tail.as_deref())
            .await?;
        if unconfirmed_blame {
            // For another worker (see `claim_job`); the blame cost nothing (see `Event::BlameUnconfirmed`).
            sqlx::query("UPDATE jobs SET blame_worker_id = $2, blame_token_id = $3 WHERE id = $1")
                .bind(job_id)
                .bind(worker_id)
                .bind(token_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Report::Succeeded { result, outputs } = &report {
            self.audit_refuted_blames(&mut tx, &job, worker_id).await?;
            sqlx::query("UPDATE jobs SET result = $2, progress = 1 WHERE id = $1")
                .bind(job_id)
                .bind(result)
                .execute(&mut *tx)
                .await?;
            for o in outputs {
                sqlx::query(
                    "INSERT INTO assets (id, org_id, object_key, filename, size, sha256, state, source_job_id, completed_at, media)
                     VALUES ($1,$2,$3,$4,$5,$6,'ready',$7, now(), $8)",
                )
                .bind(o.asset_id)
                .bind(job.org_id)
                .bind(&o.object_key)
                .bind(&o.filename)
                .bind(o.size)
                .bind(&o.sha256)
                .bind(job_id)
                .bind(&o.media)
                .execute(&mut *tx)
                .await?;
            }
        }
        if new_state.is_terminal() {
            self.announce(&mut tx, job_id).await?;
        }
        insert_audit(
            &mut *tx,
            &AuditEntry {
                org_id: Some(job.org_id),
                actor,
                action: if unconfirmed_blame {
                    "job.blame_unconfirmed"
                } else if new_state.is_terminal() {
                    "job.finished"
                } else {
                    "job.requeued"
                },
                job_id: Some(job_id),
                subject: unconfirmed_blame.then(|| worker_id.to_string()),
                details: json!({ "attempt": job.attempts, "outcome": outcome, "state": new_state, "token_id": token_id,
                                 "message": failure.as_ref().map(|f| &f.message),
                                 "error_code": failure.as_ref().map(|f| &f.code), "exit_code": record.exit_code,
                                 "fault": charge_of(&t).map(Fault::as_str),
                                 "ffmpeg_version": record.ffmpeg_version, "inputs": record.input_hashes,
                                 "outputs": record.output_hashes, "stages": record.stages,
                                 "blame_confirmed_after": blame.and(job.blame_worker_id) }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(ReportResult::Applied(new_state))
    }

    /// Writes a transition of a running job; clears the lease so the old holder is fenced off,
    /// and charges the ended attempt to the job or the platform. A job requeued after a
    /// platform fault keeps its `run_after`, so it keeps its place in the queue.
    async fn apply(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        job: &Job,
        t: &Transition,
        stderr_tail: Option<&str>,
    ) -> Result<JobState> {
        let spent = job.spent().after(charge_of(t));
        let (job_faults, platform_faults) = (
            i32::try_from(spent.job_faults).unwrap_or(i32::MAX),
            i32::try_from(spent.platform_faults).unwrap_or(i32::MAX),
        );
        match t {
            Transition::Requeue {
                not_before,
                failure,
                ..
            } => {
                sqlx::query(
                    "UPDATE jobs SET state = 'queued', lease_worker_id = NULL, lease_expires_at = NULL, fencing_token = NULL,
                            run_after = COALESCE($2, run_after), error_code = $3, error_message = $4, progress = NULL,
                            job_faults = $5, platform_faults = $6
                     WHERE id = $1",
                )
                .bind(job.id)
                .bind(not_before.map(to_offset))
                .bind(&failure.code)
                .bind(&failure.message)
                .bind(job_faults)
                .bind(platform_faults)
                .execute(&mut **tx)
                .await?;
                Ok(JobState::Queued)
            }
            Transition::Finish { state, failure, .. } => {
                sqlx::query(
                    "UPDATE jobs SET state = $2, lease_worker_id = NULL, lease_expires_at = NULL, fencing_token = NULL,
                            finished_at = now(), error_code = $3, error_message = $4, stderr_tail = COALESCE($5, stderr_tail),
                            job_faults = $6, platform_faults = $7
                     WHERE id = $1",
                )
                .bind(job.id)
                .bind(state.as_str())
                .bind(failure.as_ref().map(|f| &f.code))
                .bind(failure.as_ref().map(|f| &f.message))
                .bind(stderr_tail)
                .bind(job_faults)
                .bind(platform_faults)
                .execute(&mut **tx)
                .await?;
                Ok(*state)
            }
            Transition::StartAttempt => Err(StoreError::Conflict("unexpected transition".into())),
        }
    }

    /// Writes the event announcing the job's state as it now is (in `tx`) into the outbox.
    async fn announce(&self, tx: &mut sqlx::PgTransaction<'_>, job_id: Uuid) -> Result<()> {
        let job: Job = sqlx::query_as("SELECT * FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
        insert_job_event(tx, self.job_snapshot, &job).await
    }

    /// The job succeeded on `worker_id`: earlier attempts that blamed the tenant (unconfirmed,
    /// so charged to nobody) are contradicted, and audited so (`job.blame_refuted`) for an
    /// operator to weigh. Never a strike: either worker may be the wrong one (a compromised
    /// worker can fake a success; a crafted input can fail on one worker and not another), so
    /// one worker's word must not count against another's token.
    async fn audit_refuted_blames(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        job: &Job,
        worker_id: Uuid,
    ) -> Result<()> {
        let refuted: Vec<(Option<Uuid>, Uuid, i32)> = sqlx::query_as(
            "SELECT token_id, worker_id, attempt FROM job_attempts
             WHERE job_id = $1 AND attempt < $2 AND outcome = 'failed' AND fault IS NULL
               AND error_code = ANY($3)",
        )
        .bind(job.id)
        .bind(job.attempts)
        .bind([error_code::INVALID_INPUT, error_code::SECURITY_VIOLATION])
        .fetch_all(&mut **tx)
        .await?;
        for (token_id, blamer, attempt) in refuted {
            insert_audit(
                &mut **tx,
                &AuditEntry {
                    org_id: Some(job.org_id),
                    actor: "system:coordinator".into(),
                    action: "job.blame_refuted",
                    job_id: Some(job.id),
                    subject: Some(blamer.to_string()),
                    details: json!({ "token_id": token_id, "attempt": attempt,
                                     "succeeded_on": worker_id }),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Schedules the deletion of what the running attempt of `job` was granted to upload: it
    /// ended without success, so no asset will reference those attempt-scoped keys. Not before
    /// every upload URL granted for them has expired.
    async fn collect_attempt_uploads(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        job: &Job,
    ) -> Result<()> {
        let paths: Vec<String> =
            sqlx::query_scalar("SELECT path FROM upload_grants WHERE job_id = $1 AND attempt = $2")
                .bind(job.id)
                .bind(job.attempts)
                .fetch_all(&mut **tx)
                .await?;
        if paths.is_empty() {
            return Ok(());
        }
        let attempt = job.attempts.max(0) as u32;
        let keys: Vec<String> = paths
            .iter()
            .map(|p| mpegflow_domain::names::output_key(job.org_id, job.id, attempt, p))
            .collect();
        sqlx::query(
            "INSERT INTO object_deletions (object_key, not_before)
             SELECT k, now() + make_interval(secs => $2) FROM unnest($1::text[]) AS k
             ON CONFLICT (object_key) DO NOTHING",
        )
        .bind(&keys)
        .bind(self.unused_outputs_after.as_secs_f64())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Ends the running attempt of `job` (locked by the caller) without a report: its lease ran
    /// out, or its worker asked for new work while holding it. A platform fault: the attempt is
    /// a strike against the worker's token, and the job goes back to its place in the queue.
    async fn end_unreported(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        job: &Job,
        why: Unreported<'_>,
        policy: RetryPolicy,
        jitter: f64,
    ) -> Result<JobState> {
        let Unreported {
            event,
            outcome,
            actor,
            action,
        } = why;
        let policy = RetryPolicy {
            max_attempts: job.max_attempts as u32,
            ..policy
        };
        let t = transition(
            JobState::Running,
            &event,
            job.spent(),
            &policy,
            SystemTime::now(),
            jitter,
        )
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
        let failure = match &t {
            Transition::Requeue { failure, .. } => Some(failure),
            Transition::Finish { failure, .. } => failure.as_ref(),
            Transition::StartAttempt => None,
        };
        let token_id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE job_attempts SET finished_at = now(), outcome = $3, error_code = $4, error_message = $5,
                    strike = true, fault = $6
             WHERE job_id = $1 AND attempt = $2 AND finished_at IS NULL RETURNING token_id",
        )
        .bind(job.id)
        .bind(job.attempts)
        .bind(outcome)
        .bind(failure.map(|f| f.code.as_str()))
        .bind(failure.map(|f| f.message.as_str()))
        .bind(charge_of(&t).map(Fault::as_str))
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
        if let Some(token_id) = token_id {
            crate::admin::suspend_if_struck_out(tx, token_id, &self.token_policy).await?;
        }
        self.collect_attempt_uploads(tx, job).await?;
        let state = self.apply(tx, job, &t, None).await?;
        if state.is_terminal() {
            self.announce(tx, job.id).await?;
        }
        insert_audit(
            &mut **tx,
            &AuditEntry {
                org_id: Some(job.org_id),
                actor: actor.to_owned(),
                action,
                job_id: Some(job.id),
                subject: job.lease_worker_id.map(|w| w.to_string()),
                details: json!({ "attempt": job.attempts, "state": state,
                                 "fault": charge_of(&t).map(Fault::as_str) }),
            },
        )
        .await?;
        Ok(state)
    }

    /// Ends the attempt under `job_id`'s lease whose worker gave it up without its report
    /// getting through: the lease would only keep the job from running until it ran out.
    /// Fenced: `fencing_token` must be the attempt's, and its worker must be of the caller's
    /// token (a worker that registered again hands back its earlier registration's lease).
    /// Returns the job's new state, or `None` when the lease is not held (any more).
    pub async fn release_dropped_lease(
        &self,
        caller: Claimant<'_>,
        job_id: Uuid,
        fencing_token: &str,
        policy: RetryPolicy,
        jitter: f64,
    ) -> Result<Option<JobState>> {
        let worker_id = caller.worker_id;
        let mut tx = self.begin().await?;
        let job: Option<Job> = sqlx::query_as(
            "SELECT j.* FROM jobs j JOIN workers w ON w.id = j.lease_worker_id
             WHERE j.id = $1 AND j.fencing_token = $2 AND w.token_id = $3 AND j.state = 'running'
             FOR UPDATE OF j",
        )
        .bind(job_id)
        .bind(fencing_token)
        .bind(caller.token.token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job) = job else {
            return Ok(None);
        };
        let event = Event::Fail(Failure {
            code: error_code::WORKER_ERROR.into(),
            message: "the worker gave the job up without its report getting through".into(),
            retryable: true,
        });
        let state = self
            .end_unreported(
                &mut tx,
                &job,
                Unreported {
                    event,
                    outcome: "dropped",
                    actor: &format!("worker:{worker_id}"),
                    action: "job.dropped",
                },
                policy,
                jitter,
            )
            .await?;
        tx.commit().await?;
        Ok(Some(state))
    }

    /// Requeues (or fails, when out of attempts) jobs whose lease ran out. Safe to run from
    /// several control-plane replicas at once: rows are locked with SKIP LOCKED.
    pub async fn reap_expired_leases(
        &self,
        limit: i64,
        policy: RetryPolicy,
        jitter: f64,
    ) -> Result<Vec<(Uuid, JobState)>> {
        let mut tx = self.begin().await?;
        // Not held: expired, and not counted as held through an outage (see `LeaseClock`).
        let expired: Vec<Job> = sqlx::query_as(
            "SELECT * FROM jobs WHERE state = 'running' AND lease_expires_at <= COALESCE($2, now())
             ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .bind(self.lease_cutoff())
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(expired.len());
        for job in expired {
            let state = self
                .end_unreported(
                    &mut tx,
                    &job,
                    Unreported {
                        event: Event::LeaseExpired,
                        outcome: "lease_expired",
                        actor: "system:reaper",
                        action: "job.lease_expired",
                    },
                    policy,
                    jitter,
                )
                .await?;
            out.push((job.id, state));
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// Why an attempt ended without its worker's report, as the attempt and the audit trail tell.
struct Unreported<'a> {
    event: Event,
    /// The attempt's `outcome`.
    outcome: &'a str,
    actor: &'a str,
    action: &'static str,
}

/// Whose fault the attempt a transition ends was, if anybody's.
fn charge_of(t: &Transition) -> Option<Fault> {
    match t {
        Transition::Requeue { charge, .. } | Transition::Finish { charge, .. } => *charge,
        Transition::StartAttempt => None,
    }
}
