//! The gRPC coordinator: the only door a worker has, and a thin one. It authenticates the worker
//! token (bound to one pool) and the registration a call names, bounds bad credentials per peer
//! and open long-polls per token, converts the protocol's messages to and from the worker
//! use-cases in [`service::broker`](crate::service::broker) — which hand out one job at a time
//! with a lease and a fencing token, presign exactly the URLs that job needs, and accept reports
//! only from the current lease holder — and maps their errors through `error.rs`.

use crate::error::{ControlError, Result};
use crate::service::broker::{self, claim, heartbeat, register, report, uploads, LeaseHolder};
use crate::AppState;
use mpegflow_domain::token::{Secret, TokenKind};
use mpegflow_proto as pb;
use mpegflow_store::{WorkerContact, WorkerTokenInfo};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use uuid::Uuid;

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
        Ok(self.authenticate_as(req, None).await?.0)
    }

    /// Authenticates the token and, given the worker a call names, looks its registration up
    /// in the same round trip (recording the contact).
    async fn authenticate_as<T>(
        &self,
        req: &Request<T>,
        worker_id: Option<Uuid>,
    ) -> Result<(WorkerTokenInfo, Option<WorkerContact>)> {
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
        let store = &self.state.store;
        let found = match worker_id {
            None => store
                .authenticate_worker_token(&secret.hash())
                .await?
                .map(|info| (info, None)),
            Some(worker_id) => store
                .authenticate_worker_call(&secret.hash(), worker_id)
                .await?
                .map(|(info, contact)| (info, Some(contact))),
        };
        let (info, contact) = found.ok_or_else(fail)?;
        if info.suspended {
            return Err(ControlError::PermissionDenied(format!(
                "worker token {} is suspended: too many of its leases ended without a finished encode; \
                 an admin lifts it with `mpegflow admin worker-token unsuspend {}`",
                info.token_id, info.token_id
            )));
        }
        Ok((info, contact))
    }

    /// Authenticates the token and checks that `worker_id` was registered with it, recording the
    /// contact. An expired registration may still finish the job it holds (the lease's fencing
    /// token guards that); only new work needs a live one.
    async fn authenticate_worker<T>(
        &self,
        req: &Request<T>,
        worker_id: &str,
    ) -> Result<(WorkerTokenInfo, Uuid, WorkerContact)> {
        let unknown = || ControlError::PermissionDenied("unknown worker".into());
        // An id that is no UUID names no worker; the token is still checked first.
        let Ok(worker_id) = Uuid::parse_str(worker_id) else {
            self.authenticate(req).await?;
            return Err(unknown());
        };
        match self.authenticate_as(req, Some(worker_id)).await? {
            (token, Some(contact)) if contact != WorkerContact::Unknown => {
                Ok((token, worker_id, contact))
            }
            _ => Err(unknown()),
        }
    }

    /// Authenticates a call about one job: the token, its worker, and the job id, as the lease
    /// it claims to hold.
    async fn job_call<T: JobCall>(&self, req: Request<T>) -> Result<(LeaseHolder, T)> {
        let (_, worker_id, _) = self
            .authenticate_worker(&req, req.get_ref().worker_id())
            .await?;
        let mut r = req.into_inner();
        let job_id = Uuid::parse_str(r.job_id()).map_err(|_| {
            ControlError::LeaseLost("this worker holds no lease on that job".into())
        })?;
        let holder = LeaseHolder {
            worker_id,
            job_id,
            fencing_token: r.take_fencing_token(),
        };
        Ok((holder, r))
    }
}

/// Calls a worker makes about the job it holds.
trait JobCall {
    fn worker_id(&self) -> &str;
    fn job_id(&self) -> &str;
    fn take_fencing_token(&mut self) -> String;
}

macro_rules! job_call {
    ($($t:ty),*) => {$(
        impl JobCall for $t {
            fn worker_id(&self) -> &str { &self.worker_id }
            fn job_id(&self) -> &str { &self.job_id }
            fn take_fencing_token(&mut self) -> String { std::mem::take(&mut self.fencing_token) }
        }
    )*};
}
job_call!(
    pb::HeartbeatRequest,
    pb::RequestUploadUrlsRequest,
    pb::ReportJobStatusRequest
);

fn input_file(i: broker::InputUrl) -> pb::InputFile {
    pb::InputFile {
        alias: i.alias,
        path: i.path,
        url: i.url,
        size: i.size,
        sha256: i.sha256,
        filename: i.filename,
        url_expires_at_unix: i.expires_at.unix_timestamp(),
    }
}

fn reported_file(f: pb::ProducedFile) -> broker::ReportedFile {
    broker::ReportedFile {
        path: f.path,
        size: f.size,
        sha256: f.sha256,
    }
}

fn worker_description(r: pb::RegisterWorkerRequest) -> register::WorkerDescription {
    register::WorkerDescription {
        hostname: r.hostname,
        worker_version: r.worker_version,
        ffmpeg_version: r.ffmpeg_version,
        image_hash: r.image_hash,
        fingerprint: r.fingerprint.map(|f| register::FfmpegFingerprint {
            version: f.version,
            configuration: f.configuration,
            grammar: f.grammar,
        }),
    }
}

fn job_assignment(a: claim::Assignment) -> pb::JobAssignment {
    pb::JobAssignment {
        job_id: a.job_id.to_string(),
        attempt: a.attempt,
        fencing_token: a.fencing_token,
        argv: a.argv,
        inputs: a.inputs.into_iter().map(input_file).collect(),
        outputs: a
            .outputs
            .into_iter()
            .map(|o| pb::OutputSpec {
                alias: o.alias,
                filename: o.filename,
            })
            .collect(),
        limits: Some(pb::Limits {
            timeout_seconds: a.limits.timeout_seconds,
            max_output_bytes: a.limits.max_output_bytes,
            max_output_files: a.limits.max_output_files,
        }),
        lease_seconds: a.lease_seconds,
    }
}

/// A report as the service takes it. An outcome this build does not know is no outcome.
fn worker_report(r: pb::ReportJobStatusRequest) -> report::WorkerReport {
    let outcome = match pb::Outcome::try_from(r.outcome).unwrap_or(pb::Outcome::Unspecified) {
        pb::Outcome::Succeeded => Some(report::Outcome::Succeeded),
        pb::Outcome::Failed => Some(report::Outcome::Failed {
            code: r.error_code,
            message: r.error_message,
            retryable: r.retryable,
        }),
        pb::Outcome::Canceled => Some(report::Outcome::Canceled),
        pb::Outcome::Unspecified => None,
    };
    // At most one measurement per reported file is read (the service keeps only those).
    let output_media = r
        .output_media
        .iter()
        .take(r.outputs.len())
        .map(|m| report::ReportedMedia {
            path: m.path.clone(),
            media: m.media.as_ref().and_then(pb::MediaInfo::to_domain),
        })
        .collect();
    report::WorkerReport {
        outcome,
        outputs: r.outputs.into_iter().map(reported_file).collect(),
        output_media,
        provenance: report::Provenance {
            exit_code: r.exit_code,
            stderr_zstd: r.stderr_zstd,
            ffmpeg_version: r.ffmpeg_version,
            stages: r
                .stages
                .into_iter()
                .map(|s| report::StageTiming {
                    name: s.name,
                    started_at_ms: s.started_at_ms,
                    finished_at_ms: s.finished_at_ms,
                    cpu_us: s.cpu_us,
                })
                .collect(),
            inputs: r
                .inputs
                .into_iter()
                .map(|i| report::InputHash {
                    alias: i.alias,
                    size: i.size,
                    sha256: i.sha256,
                })
                .collect(),
        },
    }
}

#[tonic::async_trait]
impl pb::Coordinator for CoordinatorService {
    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let token = self.authenticate(&req).await?;
        let worker = worker_description(req.into_inner());
        let r = register::register(&self.state, token, &worker).await?;
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: r.worker_id.to_string(),
            pool: r.pool,
            lease_seconds: r.lease_seconds,
            heartbeat_seconds: r.heartbeat_seconds,
            grammar: r.grammar,
            registration_ttl_seconds: r.registration_ttl_seconds,
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
        let work = claim::WorkRequest {
            token: &token,
            worker_id,
            grammar: &grammar,
            wait: Duration::from_secs(req.get_ref().wait_seconds.into()),
            dropped: match &req.get_ref().dropped {
                None => None,
                Some(d) => Some((
                    Uuid::parse_str(&d.job_id).map_err(|_| {
                        ControlError::invalid("invalid_job_id", "dropped.job_id is not a UUID")
                    })?,
                    d.fencing_token.as_str(),
                )),
            },
        };
        let assignment = claim::claim(&self.state, work).await?;
        Ok(Response::new(pb::GetWorkAssignmentResponse {
            assignment: assignment.map(job_assignment),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (holder, r) = self.job_call(req).await?;
        let beat = heartbeat::Beat {
            progress: r.progress,
            stage: r.stage,
            speed: r.speed,
            fps: r.fps,
            refresh_input_urls: r.refresh_input_urls,
        };
        let answer = match heartbeat::heartbeat(&self.state, &holder, &beat).await? {
            heartbeat::BeatAnswer::Extended {
                lease_seconds,
                inputs,
            } => pb::HeartbeatResponse {
                cancel: false,
                lease_seconds,
                inputs: inputs.into_iter().map(input_file).collect(),
            },
            heartbeat::BeatAnswer::Cancel => pb::HeartbeatResponse {
                cancel: true,
                lease_seconds: 0,
                inputs: Vec::new(),
            },
        };
        Ok(Response::new(answer))
    }

    async fn request_upload_urls(
        &self,
        req: Request<pb::RequestUploadUrlsRequest>,
    ) -> Result<Response<pb::RequestUploadUrlsResponse>, Status> {
        let (holder, r) = self.job_call(req).await?;
        let files = r.files.into_iter().map(reported_file).collect();
        let granted = uploads::grant_uploads(&self.state, &holder, files).await?;
        Ok(Response::new(pb::RequestUploadUrlsResponse {
            uploads: granted
                .uploads
                .into_iter()
                .map(|u| pb::UploadUrl {
                    path: u.path,
                    url: u.url,
                    headers: u.headers.into_iter().collect(),
                })
                .collect(),
            expires_in_seconds: granted.ttl.as_secs() as u32,
        }))
    }

    async fn report_job_status(
        &self,
        req: Request<pb::ReportJobStatusRequest>,
    ) -> Result<Response<pb::ReportJobStatusResponse>, Status> {
        let (holder, r) = self.job_call(req).await?;
        report::report(&self.state, &holder, worker_report(r)).await?;
        Ok(Response::new(pb::ReportJobStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_or_missing_outcome_reaches_the_service_as_none() {
        for outcome in [0, 99, -1] {
            let r = pb::ReportJobStatusRequest {
                outcome,
                ..Default::default()
            };
            assert!(worker_report(r).outcome.is_none(), "{outcome}");
        }
    }

    #[test]
    fn a_failure_carries_the_workers_code_message_and_retryability() {
        let r = pb::ReportJobStatusRequest {
            outcome: pb::Outcome::Failed as i32,
            error_code: "invalid_input".into(),
            error_message: "bad".into(),
            retryable: true,
            outputs: vec![pb::ProducedFile {
                path: "out/o.mp4".into(),
                size: 3,
                sha256: "a".repeat(64),
            }],
            ..Default::default()
        };
        let w = worker_report(r);
        assert!(matches!(
            w.outcome,
            Some(report::Outcome::Failed { ref code, ref message, retryable: true })
                if code == "invalid_input" && message == "bad"
        ));
        assert_eq!(w.outputs[0].path, "out/o.mp4");
    }
}
