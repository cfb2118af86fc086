//! The gRPC coordinator: the only door a worker has. It authenticates the worker token (bound to
//! one pool), hands out one job at a time with a lease and a fencing token, presigns exactly the
//! URLs that job needs, and accepts reports only from the current lease holder.

use crate::error::{ControlError, Result};
use crate::outputs::{
    check_files, check_produced, io_spec, match_grants, match_stored, stored_inputs,
    stored_outputs, ProducedFile, Unverified,
};
use crate::{presign_audit, AppState};
use mpegflow_api as api;
use mpegflow_domain::command::OutputDecl;
use mpegflow_domain::fingerprint::Fingerprint;
use mpegflow_domain::job::{error_code, Failure};
use mpegflow_domain::media::{MediaInfo, MediaStream, StreamKind};
use mpegflow_domain::names::output_key;
use mpegflow_domain::token::{Secret, TokenKind};
use mpegflow_objstore::media::content_type_for_filename;
use mpegflow_objstore::PutSpec;
use mpegflow_proto as pb;
use mpegflow_store::{
    AttemptRecord, AuditEntry, Claim, Claimant, GrantLimits, GrantResult, HeartbeatResult, Job,
    Lease, OutputObject, Registration, Report, ReportResult, UploadGrant, WorkerContact,
    WorkerInfo, WorkerTokenInfo,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

/// Largest compressed stderr kept per attempt.
const MAX_STDERR_ZSTD: usize = 8 * 1024 * 1024;
/// Stages and input hashes kept from one report (a worker has a handful of each).
const MAX_STAGES: usize = 32;
const MAX_INPUT_HASHES: usize = 64;
/// How much of stderr's end is kept readable on the job.
const STDERR_TAIL: usize = 4 * 1024;

pub struct CoordinatorService {
    state: AppState,
    guards: Arc<Guards>,
}

/// Bounds this replica keeps in memory, checked before the database is touched.
///
/// Per replica by design: a peer or token spread over N replicas gets N times the bound, which
/// is known and small, and nothing here needs a shared row. The hard per-token bounds (live
/// workers, lease rate, strikes) are in the database.
#[derive(Default)]
struct Guards {
    /// Bad-credential budget per peer address (a token bucket).
    peers: Mutex<HashMap<IpAddr, Bucket>>,
    /// Open GetWorkAssignment calls per token.
    polls: Mutex<HashMap<Uuid, u32>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most peer addresses remembered; beyond it, peers whose budget is whole are forgotten first.
const MAX_PEERS: usize = 16_384;

impl Guards {
    fn refill(b: &mut Bucket, burst: f64, per_sec: f64) {
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(burst);
        b.at = now;
    }

    /// Whether `peer` still has budget for a call (bad credentials use it up).
    fn peer_allowed(&self, peer: IpAddr, burst: f64, per_sec: f64) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get_mut(&peer) {
            Some(b) => {
                Self::refill(b, burst, per_sec);
                b.tokens >= 1.0
            }
            None => true,
        }
    }

    fn peer_failed(&self, peer: IpAddr, burst: f64, per_sec: f64) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, b| {
                Self::refill(b, burst, per_sec);
                b.tokens < burst
            });
        }
        let b = peers.entry(peer).or_insert(Bucket {
            tokens: burst,
            at: Instant::now(),
        });
        Self::refill(b, burst, per_sec);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Takes one of the token's long-poll slots, or `None` when all `max` are open.
    fn open_poll(self: &Arc<Self>, token_id: Uuid, max: u32) -> Option<PollSlot> {
        let mut polls = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        let n = polls.entry(token_id).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PollSlot {
            guards: self.clone(),
            token_id,
        })
    }
}

/// An open long-poll; its slot is given back when the call ends (or its client goes away).
struct PollSlot {
    guards: Arc<Guards>,
    token_id: Uuid,
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        let mut polls = self.guards.polls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = polls.get_mut(&self.token_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                polls.remove(&self.token_id);
            }
        }
    }
}

impl CoordinatorService {
    pub fn new(state: AppState) -> Self {
        CoordinatorService {
            state,
            guards: Arc::default(),
        }
    }

    fn peer_budget(&self) -> (f64, f64) {
        let c = &self.state.config;
        (
            f64::from(c.auth_failure_burst.max(1)),
            f64::from(c.auth_failures_per_minute) / 60.0,
        )
    }

    async fn authenticate<T>(&self, req: &Request<T>) -> Result<WorkerTokenInfo> {
        let peer = req
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let (burst, per_sec) = self.peer_budget();
        let failures = &self.state.metrics.coordinator_auth_failures;
        if !self.guards.peer_allowed(peer, burst, per_sec) {
            failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "coordinator call refused: too many bad credentials from this address");
            return Err(ControlError::ResourceExhausted(
                "too many calls with bad credentials from this address; try again later".into(),
            ));
        }
        let fail = || {
            failures.fetch_add(1, Ordering::Relaxed);
            self.guards.peer_failed(peer, burst, per_sec);
            tracing::warn!(%peer, "coordinator authentication failure");
            ControlError::Unauthenticated
        };
        let value = req
            .metadata()
            .get(pb::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = value.and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(fail());
        };
        let Ok(secret) = Secret::parse(TokenKind::WorkerToken, token) else {
            return Err(fail());
        };
        let info = self
            .state
            .store
            .authenticate_worker_token(&secret.hash())
            .await?
            .ok_or_else(fail)?;
        if info.suspended {
            return Err(ControlError::PermissionDenied(format!(
                "worker token {} is suspended: too many of its leases ended without a finished encode; \
                 an admin lifts it with `mpegflow admin worker-token unsuspend {}`",
                info.token_id, info.token_id
            )));
        }
        Ok(info)
    }

    /// Authenticates the token and checks that `worker_id` was registered with it, recording the
    /// contact. An expired registration may still finish the job it holds (the lease's fencing
    /// token guards that); only new work needs a live one.
    async fn authenticate_worker<T>(
        &self,
        req: &Request<T>,
        worker_id: &str,
    ) -> Result<(WorkerTokenInfo, Uuid, WorkerContact)> {
        let token = self.authenticate(req).await?;
        let worker_id = Uuid::parse_str(worker_id)
            .map_err(|_| ControlError::PermissionDenied("unknown worker".into()))?;
        match self
            .state
            .store
            .touch_worker(worker_id, token.token_id)
            .await?
        {
            WorkerContact::Unknown => Err(ControlError::PermissionDenied("unknown worker".into())),
            contact => Ok((token, worker_id, contact)),
        }
    }

    /// Presigned GETs of a job's inputs, living as long as the lease (plus slack), with the
    /// audit lines that record them.
    fn input_files(
        &self,
        worker_id: Uuid,
        job: &Job,
    ) -> Result<(Vec<pb::InputFile>, Vec<AuditEntry<'static>>)> {
        let ttl = self.state.config.input_url_ttl();
        let mut inputs = Vec::new();
        let mut audit = Vec::new();
        for input in stored_inputs(job)? {
            let p = self.state.presigner.get(&input.object_key, ttl);
            audit.push(presign_audit(
                job.org_id,
                format!("worker:{worker_id}"),
                Some(job.id),
                input.asset_id.to_string(),
                &input.object_key,
                &p,
                json!({ "worker_id": worker_id, "attempt": job.attempts }),
            ));
            inputs.push(pb::InputFile {
                alias: input.alias,
                path: input.path,
                url: p.url,
                size: input.size.unwrap_or(0).max(0) as u64,
                sha256: input.sha256.unwrap_or_default(),
                filename: input.filename,
                url_expires_at_unix: p.expires_at.unix_timestamp(),
            });
        }
        Ok((inputs, audit))
    }

    /// Authenticates a call about one job: the token, its worker, and the job id.
    async fn job_call<T: JobCall>(&self, req: Request<T>) -> Result<(Uuid, Uuid, T)> {
        let (_, worker_id, _) = self
            .authenticate_worker(&req, req.get_ref().worker_id())
            .await?;
        let r = req.into_inner();
        let job_id = Self::parse_job_id(r.job_id())?;
        Ok((worker_id, job_id, r))
    }

    fn parse_job_id(id: &str) -> Result<Uuid> {
        Uuid::parse_str(id)
            .map_err(|_| ControlError::LeaseLost("this worker holds no lease on that job".into()))
    }

    /// What the worker receives for a claimed job, and the audit lines of its presigns.
    fn assignment(
        &self,
        worker_id: Uuid,
        job: &Job,
        fencing_token: &str,
    ) -> Result<(pb::JobAssignment, Vec<AuditEntry<'static>>)> {
        let (inputs, audit) = self.input_files(worker_id, job)?;
        let argv: Vec<String> = serde_json::from_value(job.argv.clone())
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let assignment = pb::JobAssignment {
            job_id: job.id.to_string(),
            attempt: job.attempts as u32,
            fencing_token: fencing_token.to_owned(),
            argv,
            inputs,
            outputs: stored_outputs(job)?
                .into_iter()
                .map(|o| pb::OutputSpec {
                    alias: o.alias,
                    filename: o.filename,
                })
                .collect(),
            limits: Some(pb::Limits {
                timeout_seconds: job.timeout_seconds as u32,
                max_output_bytes: self.state.config.max_output_bytes,
                max_output_files: self.state.config.max_output_files,
            }),
            lease_seconds: self.state.config.lease_seconds,
        };
        Ok((assignment, audit))
    }

    /// Establishes that the store holds exactly what the attempt reports: the report must equal
    /// the attempt's upload grants, and each granted object must be in the store with the
    /// granted size and SHA-256 — the store's checksum, or the control plane's own hash of the
    /// object when the store keeps none. Never the worker's word.
    async fn verify_uploaded(
        &self,
        job: &Job,
        files: &[ProducedFile],
    ) -> Result<std::result::Result<(), Unverified>> {
        let grants = self.state.store.upload_grants(job.id, job.attempts).await?;
        if let Err(u) = match_grants(files, &grants) {
            return Ok(Err(u));
        }
        for g in &grants {
            let key = output_key(job.org_id, job.id, job.attempts as u32, &g.path);
            let mut stored = self
                .state
                .head_object(&key)
                .await
                .map_err(ControlError::Unavailable)?;
            if stored.as_ref().is_some_and(|h| h.sha256.is_none()) {
                stored = self
                    .state
                    .hash_object(&key, g.size.max(0) as u64)
                    .await
                    .map_err(ControlError::Unavailable)?;
            }
            if let Err(u) = match_stored(g, stored.as_ref()) {
                return Ok(Err(u));
            }
        }
        Ok(Ok(()))
    }

    /// The audit row of an attempt whose outputs could not be verified.
    async fn output_unverified(
        &self,
        job: &Job,
        worker_id: Uuid,
        u: &Unverified,
        reported: &[ProducedFile],
    ) -> Result<()> {
        tracing::warn!(job_id = %job.id, org_id = %job.org_id, %worker_id, code = u.code, message = %u.message, "attempt's outputs not verified");
        self.state
            .store
            .audit(&AuditEntry {
                org_id: Some(job.org_id),
                actor: format!("worker:{worker_id}"),
                action: "job.output_unverified",
                job_id: Some(job.id),
                subject: Some(worker_id.to_string()),
                details: json!({
                    "attempt": job.attempts, "code": u.code, "message": u.message,
                    "reported": reported.iter().map(|f| json!({ "path": f.path, "size": f.size, "sha256": f.sha256 })).collect::<Vec<_>>(),
                }),
            })
            .await?;
        Ok(())
    }

    /// A tripped seccomp wire: an audit event of its own and a metric, beside the job's failure.
    async fn security_violation(&self, job: &Job, worker_id: Uuid, message: &str) -> Result<()> {
        self.state
            .metrics
            .security_violations
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(job_id = %job.id, org_id = %job.org_id, %worker_id, message, "security violation: jailed process killed by seccomp");
        self.state
            .store
            .audit(&AuditEntry {
                org_id: Some(job.org_id),
                actor: format!("worker:{worker_id}"),
                action: "security.violation",
                job_id: Some(job.id),
                subject: Some(worker_id.to_string()),
                details: json!({ "attempt": job.attempts, "message": message }),
            })
            .await?;
        Ok(())
    }
}

/// Calls a worker makes about the job it holds.
trait JobCall {
    fn worker_id(&self) -> &str;
    fn job_id(&self) -> &str;
}

macro_rules! job_call {
    ($($t:ty),*) => {$(
        impl JobCall for $t {
            fn worker_id(&self) -> &str { &self.worker_id }
            fn job_id(&self) -> &str { &self.job_id }
        }
    )*};
}
job_call!(
    pb::HeartbeatRequest,
    pb::RequestUploadUrlsRequest,
    pb::ReportJobStatusRequest
);

fn fencing_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Decompresses at most 16 MiB of stderr and keeps its last few KiB as text.
fn stderr_tail(zstd_bytes: &[u8]) -> Option<String> {
    if zstd_bytes.is_empty() {
        return None;
    }
    let buf = crate::outputs::decompress_stderr(zstd_bytes);
    let start = buf.len().saturating_sub(STDERR_TAIL);
    Some(worker_text(
        &String::from_utf8_lossy(&buf[start..]),
        usize::MAX,
    ))
}

fn error_code_of(code: &str) -> String {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if ok {
        code.to_owned()
    } else {
        error_code::WORKER_ERROR.to_owned()
    }
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

/// The `outputs` part of a finished job's result (as the API shows it), and the assets to
/// create.
fn result_of(
    job: &Job,
    spec: &mpegflow_domain::command::IoSpec,
    files: &[ProducedFile],
    media: &BTreeMap<String, MediaInfo>,
) -> Result<(Value, Vec<OutputObject>)> {
    let mut objects = Vec::new();
    let mut outputs = BTreeMap::new();
    for (alias, decl) in &spec.outputs {
        let mut entries = Vec::new();
        for f in files.iter().filter(|f| &f.alias == alias) {
            let asset_id = Uuid::now_v7();
            let media = media.get(&f.path).cloned();
            objects.push(OutputObject {
                asset_id,
                object_key: output_key(job.org_id, job.id, job.attempts as u32, &f.path),
                filename: f.name.clone(),
                size: f.size as i64,
                sha256: f.sha256.clone(),
                media: media
                    .as_ref()
                    .map(serde_json::to_value)
                    .transpose()
                    .map_err(|e| ControlError::Internal(e.to_string()))?,
            });
            entries.push(api::OutputFile {
                asset_id,
                path: f.name.clone(),
                size: f.size,
                sha256: api::Sha256Hex::parse(f.sha256.clone())
                    .map_err(|e| ControlError::Internal(e.to_string()))?,
                media,
            });
        }
        let filename = match decl {
            OutputDecl::File { name } => name.clone(),
            OutputDecl::Dir { name } => format!("{name}/"),
        };
        let alias =
            api::Alias::parse(alias.clone()).map_err(|e| ControlError::Internal(e.to_string()))?;
        let filename =
            api::OutputName::parse(filename).map_err(|e| ControlError::Internal(e.to_string()))?;
        outputs.insert(
            alias,
            api::JobOutput {
                filename,
                files: entries,
            },
        );
    }
    let result =
        serde_json::to_value(&outputs).map_err(|e| ControlError::Internal(e.to_string()))?;
    Ok((json!({ "outputs": result }), objects))
}

#[tonic::async_trait]
impl pb::Coordinator for CoordinatorService {
    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let token = self.authenticate(&req).await?;
        let r = req.into_inner();
        let wanted = &self.state.config.ffmpeg_grammar;
        let fingerprint = r
            .fingerprint
            .as_ref()
            .ok_or_else(|| "no FFmpeg fingerprint".to_owned())
            .and_then(|f| {
                Fingerprint::check(&f.version, &f.configuration, &f.grammar)
                    .map_err(|e| e.to_string())
            });
        let (grammar, config_sha) = match &fingerprint {
            Ok(f) => (f.grammar.to_string(), f.configuration_sha256()),
            Err(_) => (String::new(), String::new()),
        };
        let info = WorkerInfo {
            hostname: worker_text(&r.hostname, 255),
            worker_version: worker_text(&r.worker_version, 64),
            ffmpeg_version: worker_text(&r.ffmpeg_version, 255),
            image_hash: worker_text(&r.image_hash, 128),
            ffmpeg_grammar: grammar.clone(),
            ffmpeg_configuration_sha256: config_sha,
        };
        let worker_id = match self
            .state
            .store
            .register_worker(&token, &info)
            .await
            .map_err(ControlError::from)?
        {
            Registration::Registered(id) => id,
            Registration::Full { live, max } => {
                self.state
                    .metrics
                    .worker_registrations_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(token_id = %token.token_id, live, max, "worker registration refused: token at its maximum of live workers");
                return Err(ControlError::ResourceExhausted(format!(
                    "worker token {} already has {live} live workers, its maximum ({max}); a registration expires {}s after its worker's last call once it holds no lease",
                    token.token_id, self.state.config.worker_ttl_seconds
                ))
                .into());
            }
        };
        if grammar != *wanted {
            let reason = match &fingerprint {
                Ok(f) => format!("its FFmpeg implements command grammar {}", f.grammar),
                Err(e) => format!("its FFmpeg fingerprint is unusable: {e}"),
            };
            self.state
                .metrics
                .worker_fingerprint_mismatches
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%worker_id, ffmpeg_version = %info.ffmpeg_version, %reason, expected = %wanted,
                "worker's FFmpeg does not match the command grammar: it will get no work");
            self.state
                .store
                .audit(&AuditEntry {
                    org_id: None,
                    actor: format!("worker_token:{}", token.token_id),
                    action: "worker.fingerprint_mismatch",
                    job_id: None,
                    subject: Some(worker_id.to_string()),
                    details: json!({ "ffmpeg_version": info.ffmpeg_version, "reason": reason, "expected_grammar": wanted }),
                })
                .await
                .map_err(ControlError::from)?;
        }
        tracing::info!(%worker_id, pool = %token.pool_name, grammar = %info.ffmpeg_grammar, "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: worker_id.to_string(),
            pool: token.pool_name,
            lease_seconds: self.state.config.lease_seconds,
            heartbeat_seconds: self.state.config.heartbeat_seconds,
            grammar: wanted.clone(),
            registration_ttl_seconds: self.state.config.worker_ttl_seconds,
        }))
    }

    async fn get_work_assignment(
        &self,
        req: Request<pb::GetWorkAssignmentRequest>,
    ) -> Result<Response<pb::GetWorkAssignmentResponse>, Status> {
        let (token, worker_id, contact) = self
            .authenticate_worker(&req, &req.get_ref().worker_id)
            .await?;
        let WorkerContact::Live { grammar } = contact else {
            return Err(ControlError::PermissionDenied(format!(
                "worker registration expired ({}s without a call); register again",
                self.state.config.worker_ttl_seconds
            ))
            .into());
        };
        let Some(_slot) = self
            .guards
            .open_poll(token.token_id, token.max_workers.max(1) as u32)
        else {
            self.state
                .metrics
                .long_polls_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(ControlError::ResourceExhausted(format!(
                "worker token {} already has {} open GetWorkAssignment calls, its maximum",
                token.token_id, token.max_workers
            ))
            .into());
        };
        let span = tracing::info_span!("get_work_assignment", %worker_id, pool = %token.pool_name);
        async move {
            if let Some(job_id) = self.state.store.lease_held_by(worker_id).await.map_err(ControlError::from)? {
                return Err(ControlError::Conflict { code: "lease_held", message: format!("worker already holds the lease on job {job_id}") }.into());
            }
            let wait = Duration::from_secs(req.get_ref().wait_seconds.min(self.state.config.max_poll_seconds).into());
            let deadline = Instant::now() + wait;
            // An open long-poll is contact: keep the registration alive while it waits.
            let touch_every = Duration::from_secs(self.state.config.worker_ttl_seconds.max(3).into()) / 3;
            let mut touched = Instant::now();
            let mut throttled = false;
            loop {
                let notified = self.state.job_queued.notified();
                let fencing = fencing_token();
                let claimant = Claimant { token: &token, worker_id, grammar: &grammar };
                let claimed = self
                    .state
                    .store
                    .claim_job(claimant, self.state.config.lease(), &fencing, |job| {
                        self.assignment(worker_id, job, &fencing)
                    })
                    .await?;
                let mut nap = Duration::from_millis(250);
                match claimed {
                    Claim::Assigned(job, assignment) => {
                        tracing::info!(job_id = %job.id, org_id = %job.org_id, attempt = job.attempts, "job assigned");
                        self.state.job_changed.notify_waiters();
                        return Ok(Response::new(pb::GetWorkAssignmentResponse { assignment: Some(assignment) }));
                    }
                    Claim::NoWork => {}
                    Claim::TokenInactive => {
                        return Err(ControlError::PermissionDenied("worker token revoked or suspended".into()).into());
                    }
                    Claim::LeaseHeld(job_id) => {
                        return Err(ControlError::Conflict { code: "lease_held", message: format!("worker already holds the lease on job {job_id}") }.into());
                    }
                    Claim::Throttled(t) => {
                        if !throttled {
                            throttled = true;
                            self.state.metrics.assignments_throttled.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(token_id = %token.token_id, reason = ?t.reason, wait_ms = t.wait.as_millis() as u64, "assignment throttled");
                        }
                        nap = t.wait.max(Duration::from_millis(50));
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Response::new(pb::GetWorkAssignmentResponse { assignment: None }));
                }
                if touched.elapsed() >= touch_every {
                    touched = now;
                    self.state.store.touch_worker(worker_id, token.token_id).await.map_err(ControlError::from)?;
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

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (worker_id, job_id, r) = self.job_call(req).await?;
        let progress = (0.0..=1.0).contains(&r.progress).then_some(r.progress);
        // The worker's word, bounded: a known stage name and plausible rates or nothing.
        let rate = |v: f32| (v.is_finite() && v > 0.0 && v < 1e5).then_some(v);
        let stage = mpegflow_domain::job::STAGES
            .iter()
            .find(|s| **s == r.stage)
            .copied();
        let live = json!({ "stage": stage, "speed": rate(r.speed), "fps": rate(r.fps) });
        let lease = Lease {
            job_id,
            worker_id,
            fencing_token: &r.fencing_token,
        };
        let result = self
            .state
            .store
            .heartbeat(
                lease,
                progress,
                live,
                self.state.config.lease(),
                self.state.config.attempt_grace(),
            )
            .await
            .map_err(ControlError::from)?;
        match result {
            HeartbeatResult::Extended => {
                self.state.job_changed.notify_waiters();
                let mut inputs = Vec::new();
                if r.refresh_input_urls {
                    // Re-issued to the lease holder only, and audited like the first ones.
                    if let Some(job) = self
                        .state
                        .store
                        .leased_job(lease)
                        .await
                        .map_err(ControlError::from)?
                    {
                        let (fresh, audit) = self.input_files(worker_id, &job)?;
                        self.state
                            .store
                            .audit_many(&audit)
                            .await
                            .map_err(ControlError::from)?;
                        inputs = fresh;
                    }
                }
                Ok(Response::new(pb::HeartbeatResponse {
                    cancel: false,
                    lease_seconds: self.state.config.lease_seconds,
                    inputs,
                }))
            }
            HeartbeatResult::Canceled => Ok(Response::new(pb::HeartbeatResponse {
                cancel: true,
                lease_seconds: 0,
                inputs: Vec::new(),
            })),
            HeartbeatResult::Lost => Err(ControlError::LeaseLost(
                "this worker no longer holds the lease on that job".into(),
            )
            .into()),
        }
    }

    async fn request_upload_urls(
        &self,
        req: Request<pb::RequestUploadUrlsRequest>,
    ) -> Result<Response<pb::RequestUploadUrlsResponse>, Status> {
        let (worker_id, job_id, r) = self.job_call(req).await?;
        let job = self
            .state
            .store
            .leased_job(Lease {
                job_id,
                worker_id,
                fencing_token: &r.fencing_token,
            })
            .await
            .map_err(ControlError::from)?
            .ok_or_else(|| {
                ControlError::LeaseLost("this worker no longer holds the lease on that job".into())
            })?;
        let span =
            tracing::info_span!("request_upload_urls", %job_id, org_id = %job.org_id, %worker_id);
        let _g = span.enter();
        let spec = io_spec(&job)?;
        let files = check_files(
            &spec,
            r.files.into_iter().map(|f| (f.path, f.size, f.sha256)),
            self.state.config.max_output_bytes,
            self.state.config.max_output_files,
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
            max_files: self.state.config.max_output_files.into(),
            max_bytes: i64::try_from(self.state.config.max_output_bytes).unwrap_or(i64::MAX),
            max_calls: i32::try_from(self.state.config.max_upload_url_calls).unwrap_or(i32::MAX),
        };
        let lease = Lease {
            job_id,
            worker_id,
            fencing_token: &r.fencing_token,
        };
        let (attempt, new) = match self
            .state
            .store
            .grant_uploads(lease, &asked, limits)
            .await
            .map_err(ControlError::from)?
        {
            GrantResult::Granted { attempt, new } => (attempt, new),
            GrantResult::LeaseLost => {
                return Err(ControlError::LeaseLost(
                    "this worker no longer holds the lease on that job".into(),
                )
                .into())
            }
            GrantResult::Conflict(message) => {
                return Err(ControlError::Conflict {
                    code: "upload_already_granted",
                    message,
                }
                .into())
            }
            GrantResult::TooMany(message) => {
                return Err(ControlError::invalid("output_limit", message).into())
            }
            GrantResult::CallsExhausted(n) => {
                return Err(ControlError::Conflict {
                    code: "upload_calls_exhausted",
                    message: format!("at most {n} RequestUploadUrls calls per attempt"),
                }
                .into())
            }
        };
        let ttl = self.state.config.upload_url_ttl();
        let mut uploads = Vec::with_capacity(files.len());
        let mut audit = Vec::with_capacity(new.len() + 1);
        for f in &files {
            let key = output_key(job.org_id, job.id, attempt as u32, &f.path);
            let p = self
                .state
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
                    format!("worker:{worker_id}"),
                    Some(job.id),
                    f.path.clone(),
                    &key,
                    &p,
                    json!({ "worker_id": worker_id, "attempt": attempt, "size": f.size, "sha256": f.sha256 }),
                ));
            }
            uploads.push(pb::UploadUrl {
                path: f.path.clone(),
                url: p.url,
                headers: p.headers.into_iter().collect(),
            });
        }
        let reissued = files.len() - new.len();
        if reissued > 0 {
            // Same keys, same pins: one line for the lot rather than one per URL.
            audit.push(AuditEntry {
                org_id: Some(job.org_id),
                actor: format!("worker:{worker_id}"),
                action: "presign.put_reissued",
                job_id: Some(job.id),
                subject: None,
                details: json!({ "worker_id": worker_id, "attempt": attempt, "urls": reissued, "ttl_seconds": ttl.as_secs() }),
            });
        }
        self.state
            .store
            .audit_many(&audit)
            .await
            .map_err(ControlError::from)?;
        Ok(Response::new(pb::RequestUploadUrlsResponse {
            uploads,
            expires_in_seconds: ttl.as_secs() as u32,
        }))
    }

    async fn report_job_status(
        &self,
        req: Request<pb::ReportJobStatusRequest>,
    ) -> Result<Response<pb::ReportJobStatusResponse>, Status> {
        let (worker_id, job_id, r) = self.job_call(req).await?;
        let lost = || {
            ControlError::LeaseLost(
                "stale or foreign fencing token: this worker does not hold that job".into(),
            )
        };
        // Cheap early refusal; the store checks the fencing token again atomically.
        let job = match self
            .state
            .store
            .leased_job(Lease {
                job_id,
                worker_id,
                fencing_token: &r.fencing_token,
            })
            .await
            .map_err(ControlError::from)?
        {
            Some(job) => job,
            None => {
                // A job cancelled while running still takes its attempt's record.
                let canceled = self
                    .state
                    .store
                    .report(
                        Lease {
                            job_id,
                            worker_id,
                            fencing_token: &r.fencing_token,
                        },
                        Report::Canceled,
                        record_of(&r),
                        self.state.config.retry_policy(),
                        0.0,
                    )
                    .await;
                return match canceled {
                    Ok(ReportResult::RecordedCanceled) => {
                        Ok(Response::new(pb::ReportJobStatusResponse {}))
                    }
                    _ => {
                        tracing::warn!(%job_id, %worker_id, "refused report with stale fencing token");
                        Err(lost().into())
                    }
                };
            }
        };
        let span = tracing::info_span!("report_job_status", %job_id, org_id = %job.org_id, %worker_id, attempt = job.attempts);
        async move {
            let outcome = pb::Outcome::try_from(r.outcome).unwrap_or(pb::Outcome::Unspecified);
            let mut verified_hashes = json!([]);
            let report = match outcome {
                pb::Outcome::Succeeded => {
                    let spec = io_spec(&job)?;
                    let checked = check_produced(
                        &spec,
                        r.outputs
                            .iter()
                            .map(|f| (f.path.clone(), f.size, f.sha256.clone())),
                        self.state.config.max_output_bytes,
                        self.state.config.max_output_files,
                    );
                    match checked {
                        Err(ControlError::Invalid { code, message, .. }) => {
                            Report::Failed(Failure {
                                code: code.to_owned(),
                                message,
                                retryable: false,
                            })
                        }
                        Err(e) => return Err(e),
                        Ok(files) => match self.verify_uploaded(&job, &files).await? {
                            // The worker, not the tenant's command, is at fault: another attempt
                            // (bounded by max_attempts) may well succeed elsewhere.
                            Err(u) => {
                                self.output_unverified(&job, worker_id, &u, &files).await?;
                                Report::Failed(Failure {
                                    code: u.code.to_owned(),
                                    message: u.message,
                                    retryable: true,
                                })
                            }
                            Ok(()) => {
                                verified_hashes = json!(files.iter().map(|f| json!({ "path": f.path, "size": f.size, "sha256": f.sha256 })).collect::<Vec<_>>());
                                let media = output_media(&r.output_media, &files);
                                let (result, outputs) = result_of(&job, &spec, &files, &media)?;
                                Report::Succeeded { result, outputs }
                            }
                        },
                    }
                }
                pb::Outcome::Failed => Report::Failed(Failure {
                    code: error_code_of(&r.error_code),
                    message: worker_text(&r.error_message, 4096),
                    retryable: r.retryable,
                }),
                pb::Outcome::Canceled => Report::Canceled,
                pb::Outcome::Unspecified => {
                    return Err(ControlError::invalid(
                        "invalid_outcome",
                        "outcome is required",
                    ))
                }
            };
            // The attempt's record shows output hashes only once they are verified: a worker's
            // claim is never displayed as a fact.
            let mut record = record_of(&r);
            record.output_hashes = verified_hashes;
            let blamed = matches!(&report, Report::Failed(f) if error_code::blames_tenant(&f.code));
            let security_event = match &report {
                Report::Failed(f) if f.code == error_code::SECURITY_VIOLATION => {
                    Some(f.message.clone())
                }
                _ => None,
            };
            let result = self
                .state
                .store
                .report(
                    Lease {
                        job_id,
                        worker_id,
                        fencing_token: &r.fencing_token,
                    },
                    report,
                    record,
                    self.state.config.retry_policy(),
                    rand::random(),
                )
                .await?;
            match result {
                ReportResult::Applied(state) => {
                    tracing::info!(%state, "job report applied");
                    if !state.is_terminal() && blamed {
                        // One worker's word: the store requeued it for another worker and
                        // audited `job.blame_unconfirmed`.
                        self.state.metrics.blame_unconfirmed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%job_id, %worker_id, "tenant-blaming failure not confirmed yet: job goes to another worker");
                    } else if let Some(message) = security_event {
                        self.security_violation(&job, worker_id, &message).await?;
                    }
                    self.state.job_changed.notify_waiters();
                    if !state.is_terminal() {
                        self.state.job_queued.notify_waiters();
                    }
                    Ok(Response::new(pb::ReportJobStatusResponse {}))
                }
                ReportResult::RecordedCanceled => Ok(Response::new(pb::ReportJobStatusResponse {})),
                ReportResult::Refused => Err(lost()),
            }
        }
        .instrument(span)
        .await
        .map_err(Status::from)
    }
}

/// What the worker measured of its outputs, by path: only for files of the report, each
/// at most once, and only what passes the media rules (anything else is left unknown).
fn output_media(
    reported: &[pb::OutputMedia],
    files: &[ProducedFile],
) -> BTreeMap<String, MediaInfo> {
    let mut media = BTreeMap::new();
    for m in reported.iter().take(files.len()) {
        if !files.iter().any(|f| f.path == m.path) || media.contains_key(&m.path) {
            continue;
        }
        let Some(info) = m.media.as_ref().and_then(media_info) else {
            tracing::warn!(path = %worker_text(&m.path, 255), "ignoring output media out of range");
            continue;
        };
        media.insert(m.path.clone(), info);
    }
    media
}

fn media_info(m: &pb::MediaInfo) -> Option<MediaInfo> {
    if m.streams.len() > mpegflow_domain::media::MAX_STREAMS {
        return None;
    }
    let info = MediaInfo {
        format: m.format.clone(),
        duration_seconds: m.duration_seconds,
        bit_rate: m.bit_rate,
        streams: m
            .streams
            .iter()
            .map(|s| {
                Some(MediaStream {
                    index: s.index,
                    kind: StreamKind::parse(&s.kind)?,
                    codec: s.codec.clone(),
                    profile: s.profile.clone(),
                    width: s.width,
                    height: s.height,
                    frame_rate: s.frame_rate.clone(),
                    pixel_format: s.pixel_format.clone(),
                    bit_rate: s.bit_rate,
                    sample_rate: s.sample_rate,
                    channels: s.channels,
                    channel_layout: s.channel_layout.clone(),
                    duration_seconds: s.duration_seconds,
                })
            })
            .collect::<Option<Vec<_>>>()?,
    };
    info.check().ok().map(|()| info)
}

/// The provenance of an attempt, from the worker's report.
fn record_of(r: &pb::ReportJobStatusRequest) -> AttemptRecord {
    let stderr = (r.stderr_zstd.len() <= MAX_STDERR_ZSTD).then(|| r.stderr_zstd.clone());
    AttemptRecord {
        exit_code: Some(r.exit_code),
        stderr_tail: stderr.as_deref().and_then(stderr_tail),
        stderr_zstd: stderr,
        ffmpeg_version: Some(worker_text(&r.ffmpeg_version, 255)),
        stages: json!(r.stages.iter().take(MAX_STAGES).map(|s| json!({ "name": worker_text(&s.name, 32), "started_at_ms": s.started_at_ms, "finished_at_ms": s.finished_at_ms })).collect::<Vec<_>>()),
        input_hashes: json!(r.inputs.iter().take(MAX_INPUT_HASHES).map(|i| json!({ "alias": worker_text(&i.alias, 32), "size": i.size, "sha256": worker_text(&i.sha256, 64) })).collect::<Vec<_>>()),
        // Shown only once verified against the grants and the store (see report_job_status).
        output_hashes: json!([]),
    }
}
