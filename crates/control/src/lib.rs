//! The MpegFlow control plane: the tenant REST API, the gRPC coordinator and the lease reaper.
//!
//! It is the only component that holds the database and the S3 signing key. Workers reach it
//! over gRPC with a worker token and receive presigned URLs for exactly one job at a time.

pub mod api;
pub mod coordinator;
pub mod error;
mod objects;
mod outputs;
pub mod service;

use mpegflow_dispatcher::{Resolver, SystemResolver};
use mpegflow_domain::job::RetryPolicy;
use mpegflow_domain::webhook::Keyring;
use mpegflow_objstore::Presigner;
use mpegflow_store::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Largest message a worker may send the coordinator. A report's worst case: 10,000 output
/// files of ≤ 250 bytes each (path, size, SHA-256), the media of 256 of them (≤ 32 streams of
/// ≤ 200 bytes), and ≤ 512 KiB of stderr — about 4.6 MB, past gRPC's 4 MiB default. The
/// buffer is taken before the token is checked, so no more than that.
pub const MAX_WORKER_MESSAGE: usize = 6 * 1024 * 1024;
/// Calls one connection may have open at once (a worker needs about three: its long-poll or
/// report, its heartbeat, its upload-URL requests): bounds what one peer makes the coordinator
/// buffer before any token is checked.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Tunables of the control plane. Defaults suit production; tests shorten the timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease_seconds: u32,
    /// How often workers heartbeat.
    pub heartbeat_seconds: u32,
    /// TTL of presigned URLs (capped at 3600).
    pub presign_ttl_seconds: u32,
    /// Attempts per job that may fail by the job's own fault (its input, its command); the
    /// last such failure is final.
    pub max_attempts: u32,
    /// Attempts per job that may fail by the platform's fault (a store, the database, a lost
    /// worker); these cost none of `max_attempts`, and the job keeps its place in the queue.
    pub max_platform_faults: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub default_timeout_seconds: u32,
    pub max_timeout_seconds: u32,
    /// How long an attempt may run beyond its job's timeout (fetching inputs, uploading
    /// outputs). Past it, heartbeats no longer extend the lease: a worker cannot hold a job
    /// running for ever.
    pub attempt_grace_seconds: u32,
    pub max_output_bytes: u64,
    pub max_output_files: u32,
    pub max_upload_bytes: u64,
    pub reaper_interval_ms: u64,
    /// Longest a GetWorkAssignment call is held open.
    pub max_poll_seconds: u32,
    /// `-threads` given to each input and output a tenant leaves unset (inside the jail FFmpeg
    /// cannot count CPUs itself).
    pub job_threads: u32,
    /// RequestUploadUrls calls one attempt may make (a worker re-asks when its URLs age).
    pub max_upload_url_calls: u32,
    /// A worker registration without contact for this long expires (its slot frees up).
    pub worker_ttl_seconds: u32,
    /// Input GET URLs live for the lease plus this slack (and at most `presign_ttl_seconds`);
    /// the lease holder gets fresh ones through its heartbeat.
    pub input_url_slack_seconds: u32,
    /// Leases per minute a token may take, per worker it may run (unless the token sets its own).
    pub leases_per_worker_per_minute: u32,
    /// Sliding window over which a token's strikes are counted.
    pub strike_window_seconds: u32,
    /// Strikes in the window from which a token's assignments back off exponentially.
    pub throttle_after_strikes: u32,
    pub throttle_base_ms: u64,
    pub throttle_max_ms: u64,
    /// Strikes in the window at which a token is suspended (until `admin worker-token unsuspend`).
    pub suspend_after_strikes: u32,
    /// Calls with bad credentials a peer address may make at once, then refilled at
    /// `auth_failures_per_minute`; beyond it, its calls are refused before the database.
    pub auth_failure_burst: u32,
    pub auth_failures_per_minute: u32,
    /// The FFmpeg grammar (major.minor) commands are validated against; jobs record it and go
    /// only to workers whose FFmpeg implements it.
    pub ffmpeg_grammar: String,
    /// An upload no job has used is deleted this long after it was announced.
    pub unused_asset_ttl_seconds: u64,
    /// A deleted object is removed from the store this long after the last URL signed for it
    /// expired (clocks of the store and the control plane may differ).
    pub deletion_grace_seconds: u64,
    /// Let webhook endpoints be loopback IP literals (`http://127.0.0.1:…`): for development
    /// and tests on one machine. Names resolving to loopback stay refused.
    pub webhook_allow_loopback: bool,
    /// Resolve endpoint host names (when saved and at every delivery). Off, only IP-address
    /// endpoints are accepted and DNS is never asked: for platforms that must not resolve
    /// outside names.
    pub webhook_resolve_names: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            lease_seconds: 30,
            // Each heartbeat carries the job's progress: once a second, a 5-s encode shows it
            // moving four times and more.
            heartbeat_seconds: 1,
            presign_ttl_seconds: 3600,
            max_attempts: 3,
            max_platform_faults: 10,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            default_timeout_seconds: 3_600,
            max_timeout_seconds: 6 * 3_600,
            attempt_grace_seconds: 3_600,
            max_output_bytes: 10 * 1024 * 1024 * 1024,
            max_output_files: 10_000,
            max_upload_bytes: 5 * 1024 * 1024 * 1024,
            reaper_interval_ms: 2_000,
            max_poll_seconds: 20,
            job_threads: mpegflow_domain::command::DEFAULT_THREADS,
            max_upload_url_calls: 64,
            worker_ttl_seconds: 15,
            input_url_slack_seconds: 60,
            leases_per_worker_per_minute: 120,
            strike_window_seconds: 600,
            throttle_after_strikes: 20,
            throttle_base_ms: 1_000,
            throttle_max_ms: 5_000,
            suspend_after_strikes: 60,
            auth_failure_burst: 20,
            auth_failures_per_minute: 60,
            ffmpeg_grammar: mpegflow_domain::fingerprint::COMMAND_GRAMMAR.to_owned(),
            unused_asset_ttl_seconds: 24 * 3600,
            deletion_grace_seconds: 300,
            webhook_allow_loopback: false,
            webhook_resolve_names: true,
        }
    }
}

impl ControlConfig {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            max_platform_faults: self.max_platform_faults,
            base_delay: Duration::from_millis(self.retry_base_ms),
            max_delay: Duration::from_millis(self.retry_max_ms),
        }
    }
    pub fn presign_ttl(&self) -> Duration {
        Duration::from_secs(self.presign_ttl_seconds.clamp(1, 3600).into())
    }
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds.into())
    }
    pub fn attempt_grace(&self) -> Duration {
        Duration::from_secs(self.attempt_grace_seconds.into())
    }
    /// TTL of a worker's upload URLs: two leases (at least a minute), never above the presign
    /// TTL. The worker asks again, idempotently, when its URLs are half-way to expiry.
    pub fn upload_url_ttl(&self) -> Duration {
        let two_leases = u64::from(self.lease_seconds).saturating_mul(2).max(60);
        Duration::from_secs(two_leases).min(self.presign_ttl())
    }
    /// The most a tenant may upload as one asset: the configured limit, and never more than
    /// one PUT can carry.
    pub fn upload_limit(&self) -> u64 {
        self.max_upload_bytes
            .min(mpegflow_objstore::media::SINGLE_PUT_LIMIT)
    }
    /// Input GETs expire with the lease (plus slack), never later than any presigned URL.
    pub fn input_url_ttl(&self) -> Duration {
        let ttl = u64::from(self.lease_seconds) + u64::from(self.input_url_slack_seconds);
        Duration::from_secs(ttl.max(1)).min(self.presign_ttl())
    }
    /// When a deleted object's key is free of every URL signed for it: the longest TTL any
    /// URL can have, from now.
    pub fn object_free_at(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
            + self.presign_ttl()
            + Duration::from_secs(self.deletion_grace_seconds)
    }
    pub fn webhook_url_policy(&self) -> mpegflow_domain::webhook::UrlPolicy {
        mpegflow_domain::webhook::UrlPolicy {
            allow_loopback_literals: self.webhook_allow_loopback,
        }
    }
    pub fn token_policy(&self) -> mpegflow_store::TokenPolicy {
        mpegflow_store::TokenPolicy {
            worker_ttl: Duration::from_secs(self.worker_ttl_seconds.max(1).into()),
            leases_per_worker_per_minute: self.leases_per_worker_per_minute.max(1),
            strike_window: Duration::from_secs(self.strike_window_seconds.max(1).into()),
            throttle_after_strikes: self.throttle_after_strikes,
            throttle_base: Duration::from_millis(self.throttle_base_ms),
            throttle_max: Duration::from_millis(self.throttle_max_ms),
            suspend_after_strikes: self.suspend_after_strikes.max(1),
        }
    }
}

/// Counters exposed at `/metrics` (Prometheus text format).
#[derive(Debug, Default)]
pub struct Metrics {
    pub security_violations: std::sync::atomic::AtomicU64,
    pub coordinator_auth_failures: std::sync::atomic::AtomicU64,
    pub worker_fingerprint_mismatches: std::sync::atomic::AtomicU64,
    pub worker_registrations_refused: std::sync::atomic::AtomicU64,
    pub long_polls_refused: std::sync::atomic::AtomicU64,
    pub assignments_throttled: std::sync::atomic::AtomicU64,
    pub blame_unconfirmed: std::sync::atomic::AtomicU64,
}

impl Metrics {
    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "# HELP mpegflow_security_violations_total Jailed processes killed by the seccomp tripwire.\n\
             # TYPE mpegflow_security_violations_total counter\n\
             mpegflow_security_violations_total {}\n\
             # HELP mpegflow_coordinator_auth_failures_total Coordinator calls with a missing, wrong or revoked worker token.\n\
             # TYPE mpegflow_coordinator_auth_failures_total counter\n\
             mpegflow_coordinator_auth_failures_total {}\n\
             # HELP mpegflow_worker_fingerprint_mismatches_total Worker registrations whose FFmpeg does not implement the control plane's command grammar.\n\
             # TYPE mpegflow_worker_fingerprint_mismatches_total counter\n\
             mpegflow_worker_fingerprint_mismatches_total {}\n\
             # HELP mpegflow_worker_registrations_refused_total Registrations refused because the token had its maximum of live workers.\n\
             # TYPE mpegflow_worker_registrations_refused_total counter\n\
             mpegflow_worker_registrations_refused_total {}\n\
             # HELP mpegflow_long_polls_refused_total GetWorkAssignment calls refused because the token had its maximum of open long-polls.\n\
             # TYPE mpegflow_long_polls_refused_total counter\n\
             mpegflow_long_polls_refused_total {}\n\
             # HELP mpegflow_assignments_throttled_total Assignments held back by a token's lease rate or strike backoff.\n\
             # TYPE mpegflow_assignments_throttled_total counter\n\
             mpegflow_assignments_throttled_total {}\n\
             # HELP mpegflow_blame_unconfirmed_total Tenant-blaming failures requeued for confirmation by another worker.\n\
             # TYPE mpegflow_blame_unconfirmed_total counter\n\
             mpegflow_blame_unconfirmed_total {}\n",
            self.security_violations.load(Relaxed),
            self.coordinator_auth_failures.load(Relaxed),
            self.worker_fingerprint_mismatches.load(Relaxed),
            self.worker_registrations_refused.load(Relaxed),
            self.long_polls_refused.load(Relaxed),
            self.assignments_throttled.load(Relaxed),
            self.blame_unconfirmed.load(Relaxed)
        )
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub presigner: Presigner,
    pub config: Arc<ControlConfig>,
    /// Woken when a job is queued, so long-polling workers on this replica claim at once.
    pub job_queued: Arc<Notify>,
    /// Woken when any job's state or progress changes, for long-polling job reads.
    pub job_changed: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// For HEAD requests against the object store (through presigned URLs too).
    pub http: reqwest::Client,
    /// For reading whole objects: no total timeout, but a stalled read fails.
    pub http_streaming: reqwest::Client,
    /// The keys that seal webhook signing secrets; without them the webhook API answers 503.
    pub webhook_keys: Option<Arc<Keyring>>,
    /// Resolves endpoint hosts when they are saved (injectable: tests answer without DNS).
    pub resolver: Arc<dyn Resolver>,
    /// Event streams open per org on this replica (`GET /v1/webhook-events`).
    pub event_streams: Arc<std::sync::Mutex<std::collections::HashMap<Uuid, usize>>>,
}

impl AppState {
    pub fn new(mut store: Store, presigner: Presigner, config: ControlConfig) -> Self {
        store.set_token_policy(config.token_policy());
        store.set_lease(config.lease());
        store.set_unused_outputs_after(
            config.upload_url_ttl() + Duration::from_secs(config.deletion_grace_seconds),
        );
        store.set_job_snapshot(service::views::job_event_data);
        AppState {
            store,
            presigner,
            config: Arc::new(config),
            job_queued: Arc::new(Notify::new()),
            job_changed: Arc::new(Notify::new()),
            metrics: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .no_proxy()
                .build()
                .expect("a default reqwest client builds"),
            http_streaming: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .no_proxy()
                .build()
                .expect("a default reqwest client builds"),
            webhook_keys: None,
            resolver: Arc::new(SystemResolver),
            event_streams: Arc::default(),
        }
    }

    /// With the keys that seal webhook signing secrets (see [`Keyring::parse`]).
    pub fn with_webhook_keys(mut self, keys: Keyring) -> Self {
        self.webhook_keys = Some(Arc::new(keys));
        self
    }

    /// With another resolver for endpoint hosts.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }
}

pub use objects::ObjectHead;

/// The audit line every presigned URL leaves: who, which key, which method, until when.
/// `extra` adds call-specific details (worker, attempt, size…).
pub(crate) fn presign_audit(
    org_id: Uuid,
    actor: String,
    job_id: Option<Uuid>,
    subject: String,
    key: &str,
    presigned: &mpegflow_objstore::Presigned,
    extra: serde_json::Value,
) -> mpegflow_store::AuditEntry<'static> {
    let action = match presigned.method {
        "GET" => "presign.get",
        "PUT" => "presign.put",
        "DELETE" => "presign.delete",
        _ => "presign.head",
    };
    let mut details = serde_json::json!({
        "key": key,
        "method": presigned.method,
        "expires_at": presigned.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    });
    if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    mpegflow_store::AuditEntry {
        org_id: Some(org_id),
        actor,
        action,
        job_id,
        subject: Some(subject),
        details,
    }
}

/// Serves the REST API and the coordinator on the given listeners and runs the reaper, until
/// `shutdown` is cancelled.
pub async fn run(
    state: AppState,
    api: TcpListener,
    grpc: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let reaper = tokio::spawn(reap_loop(state.clone(), shutdown.clone()));
    let api_server = {
        let app = api::router(state.clone());
        let shutdown = shutdown.clone();
        async move {
            use axum::serve::ListenerExt;
            // Nagle plus delayed ACKs would hold small responses back by ~40 ms.
            let api = api.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(api, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    };
    let grpc_server = {
        // A report lists every output file (up to `max_output_files`, each with its path,
        // size and SHA-256) and the media of up to 256: past gRPC's default 4 MiB.
        let svc = mpegflow_proto::CoordinatorServer::new(coordinator::CoordinatorService::new(
            state.clone(),
        ))
        .max_decoding_message_size(MAX_WORKER_MESSAGE);
        let shutdown = shutdown.clone();
        async move {
            tonic::transport::Server::builder()
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::StreamExt::map(
                        tokio_stream::wrappers::TcpListenerStream::new(grpc),
                        |conn| {
                            // gRPC trailers follow the body in a second small write: without
                            // TCP_NODELAY it waits ~40 ms for the peer's delayed ACK.
                            conn.inspect(|tcp| {
                                let _ = tcp.set_nodelay(true);
                            })
                        },
                    ),
                    shutdown.cancelled_owned(),
                )
                .await
                .map_err(std::io::Error::other)
        }
    };
    let (a, g) = tokio::join!(api_server, grpc_server);
    shutdown.cancel();
    let _ = reaper.await;
    a?;
    g
}

async fn reap_loop(state: AppState, shutdown: CancellationToken) {
    let interval = Duration::from_millis(state.config.reaper_interval_ms.max(100));
    let mut outage = Outage::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match state
            .store
            .reap_expired_leases(100, state.config.retry_policy(), rand::random())
            .await
        {
            Ok(reaped) => {
                outage.reached();
                for (job_id, new_state) in &reaped {
                    tracing::warn!(%job_id, %new_state, "lease expired");
                }
                if !reaped.is_empty() {
                    state.job_queued.notify_waiters();
                    state.job_changed.notify_waiters();
                }
            }
            Err(e) if e.is_unavailable() => {
                outage.unreachable(&e);
                // Housekeeping would only meet the same outage.
                continue;
            }
            Err(e) => tracing::error!("reaper: {e}"),
        }
        housekeeping(&state, &mut outage).await;
    }
}

/// A database outage as the background tasks see it: one WARN when it starts, one INFO when
/// it ends, nothing per tick in between.
#[derive(Debug, Default)]
struct Outage {
    since: Option<std::time::Instant>,
}

impl Outage {
    fn unreachable(&mut self, e: &mpegflow_store::StoreError) {
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            tracing::warn!("database unreachable, background tasks pause until it is back: {e}");
        }
    }

    fn reached(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                outage_seconds = since.elapsed().as_secs_f64(),
                "database reachable again, background tasks resume"
            );
        }
    }

    /// Logs `e` as an outage or, when it is another failure, as an error of `what`.
    fn report(&mut self, what: &str, e: &mpegflow_store::StoreError) {
        if e.is_unavailable() {
            self.unreachable(e);
        } else {
            tracing::error!("{what}: {e}");
        }
    }
}

/// Removes uploads that expired unused and deletes objects whose deletion is due.
async fn housekeeping(state: &AppState, outage: &mut Outage) {
    match state
        .store
        .expire_assets(state.config.object_free_at(), 100)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(assets = n, "unused uploads expired"),
        Err(e) => outage.report("asset expiry", &e),
    }
    let due = match state.store.due_object_deletions(20).await {
        Ok(due) => due,
        Err(e) => {
            outage.report("object deletions", &e);
            return;
        }
    };
    for key in due {
        let outcome = match state.delete_object(&key).await {
            Ok(()) => state.store.object_deleted(&key).await,
            Err(e) => {
                tracing::warn!(%key, "deleting an object: {e}");
                state.store.object_deletion_failed(&key).await
            }
        };
        if let Err(e) = outcome {
            outage.report("object deletions", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Outage;
    use mpegflow_store::StoreError;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_outage_logs_one_warning_and_one_line_when_it_ends() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut outage = Outage::default();
            outage.reached();
            for _ in 0..5 {
                let down = StoreError::Unavailable(sqlx::Error::PoolTimedOut);
                outage.unreachable(&down);
                outage.report("asset expiry", &down);
            }
            outage.reached();
            outage.reached();
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("database unreachable"),
            "{log}"
        );
        assert!(
            lines[1].contains("INFO") && lines[1].contains("reachable again"),
            "{log}"
        );
        assert!(!log.contains("ERROR"), "{log}");
    }
}
