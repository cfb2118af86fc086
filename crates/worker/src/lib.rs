//! The MpegFlow worker. It holds no credentials but its worker token: it asks the coordinator for
//! work over gRPC, fetches inputs and stores outputs through presigned URLs only, and runs FFmpeg
//! on files in a per-job directory. This crate links no database driver and no S3 signing code;
//! CI checks that from `cargo tree`.

pub mod ffmpeg;
pub mod ffmpeg_log;
mod job;
pub mod rpc;
pub mod selftest;
pub mod transfer;

use mpegflow_proto as pb;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub type Client = pb::CoordinatorClient<InterceptedService<Channel, AuthInterceptor>>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0} not found (looked for it at start)")]
    BinaryMissing(String),
    #[error("invalid coordinator URL {0:?}: {1}")]
    Endpoint(String, String),
    #[error("the worker token is missing or malformed")]
    Token,
    #[error("coordinator refused: {0}")]
    Refused(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("jail self-test failed: {0}; refusing to take work (pass --insecure-no-jail to run unconfined)")]
    JailSelfTest(String),
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub coordinator: String,
    pub work_dir: PathBuf,
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    pub hostname: String,
    pub image_hash: String,
    pub max_input_bytes: u64,
    /// How long one GetWorkAssignment call may wait.
    pub poll_seconds: u32,
    /// The jail every FFmpeg and ffprobe process runs in; `None` only with the explicit,
    /// loudly logged `--insecure-no-jail`.
    pub jail: Option<mpegflow_jail::Jail>,
    /// Address-space limit of each jailed process.
    pub memory_limit_bytes: u64,
    /// The kernel's OOM-kill count (`oom_kill N`): the evidence that a SIGKILL came from the
    /// OOM killer rather than from the job itself.
    pub oom_events: PathBuf,
    /// As root: the privileged spawn helper that runs each job as its own uid (this worker
    /// process itself has dropped to an unprivileged uid of its own).
    pub spawner: Option<std::sync::Arc<mpegflow_jail::spawner::SpawnerClient>>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct AuthInterceptor {
    value: MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(pb::AUTHORIZATION, self.value.clone());
        Ok(req)
    }
}

/// What a running worker knows about itself.
pub struct Worker {
    pub config: WorkerConfig,
    pub worker_id: String,
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    pub ffmpeg_version: String,
    pub heartbeat_seconds: u32,
    pub http: reqwest::Client,
}

/// This worker's FFmpeg: `-version`, `-buildconf`, and the grammar they imply. An FFmpeg whose
/// release cannot be told gets no grammar: the worker registers, says why, and gets no work.
async fn fingerprint(ffmpeg: &std::path::Path) -> Result<pb::FfmpegFingerprint, WorkerError> {
    let output = |arg: &'static str| async move {
        let out = tokio::process::Command::new(ffmpeg)
            .arg(arg)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let version = output("-version").await?;
    let buildconf = output("-buildconf").await?;
    Ok(
        match mpegflow_domain::fingerprint::Fingerprint::from_ffmpeg_output(&version, &buildconf) {
            Ok(f) => pb::FfmpegFingerprint {
                version: f.version,
                configuration: f.configuration,
                grammar: f.grammar.to_string(),
            },
            Err(e) => {
                tracing::error!("cannot tell which command grammar this FFmpeg implements: {e}; it will get no work");
                pb::FfmpegFingerprint {
                    version: version.lines().next().unwrap_or_default().to_owned(),
                    configuration: mpegflow_domain::fingerprint::configuration_of_buildconf(
                        &buildconf,
                    ),
                    grammar: String::new(),
                }
            }
        },
    )
}

/// Registers, waiting while the coordinator is unreachable or the token has its maximum of live
/// workers (a replaced worker's registration lapses within seconds). `None` on shutdown.
async fn register(
    client: &mut Client,
    req: &pb::RegisterWorkerRequest,
    shutdown: &CancellationToken,
) -> Result<Option<pb::RegisterWorkerResponse>, WorkerError> {
    let mut backoff = Duration::from_millis(500);
    let r = loop {
        match client
            .register_worker(rpc::request(req.clone(), rpc::CALL_DEADLINE))
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ) =>
            {
                tracing::warn!("cannot register yet, retrying: {}", s.message());
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(s) => {
                return Err(WorkerError::Refused(format!(
                    "{}: {}",
                    s.code(),
                    s.message()
                )))
            }
        }
    };
    let own = req.fingerprint.as_ref().map_or("", |f| f.grammar.as_str());
    if r.grammar != own {
        tracing::error!(
            ffmpeg_version = %req.ffmpeg_version,
            "this worker's FFmpeg implements command grammar {own:?}, but the control plane validates commands against {:?}: it will get no work until it runs a matching FFmpeg",
            r.grammar
        );
    }
    tracing::info!(worker_id = %r.worker_id, pool = %r.pool, ffmpeg_version = %req.ffmpeg_version, grammar = %own, "worker registered");
    Ok(Some(r))
}

pub fn connect(coordinator: &str, token: &str) -> Result<Client, WorkerError> {
    let mut value: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| WorkerError::Token)?;
    value.set_sensitive(true);
    let endpoint = Endpoint::from_shared(coordinator.to_owned())
        .map_err(|e| WorkerError::Endpoint(coordinator.to_owned(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(pb::CoordinatorClient::with_interceptor(
        endpoint.connect_lazy(),
        AuthInterceptor { value },
    ))
}

/// Registers, then takes jobs one at a time until `shutdown` is cancelled (finishing the job at
/// hand) or `shutdown_hard` is (handing the job back).
pub async fn run(
    config: WorkerConfig,
    token: String,
    shutdown: CancellationToken,
    shutdown_hard: CancellationToken,
) -> Result<(), WorkerError> {
    let ffmpeg = ffmpeg::resolve(&config.ffmpeg)
        .ok_or_else(|| WorkerError::BinaryMissing(config.ffmpeg.display().to_string()))?;
    let ffprobe = ffmpeg::resolve(&config.ffprobe)
        .ok_or_else(|| WorkerError::BinaryMissing(config.ffprobe.display().to_string()))?;
    let ffmpeg_version = ffmpeg::version(&ffmpeg).await?;
    let fingerprint = fingerprint(&ffmpeg).await?;
    std::fs::create_dir_all(&config.work_dir)?;
    let per_job_uid = config.spawner.is_some();
    match &config.jail {
        Some(jail) => {
            match &config.spawner {
                Some(spawner) => {
                    selftest::run_privileged(spawner, &config.work_dir)
                        .map_err(WorkerError::JailSelfTest)?;
                    // From here on the helper starts nothing but ffmpeg and ffprobe.
                    spawner
                        .seal()
                        .map_err(|e| WorkerError::JailSelfTest(e.to_string()))?;
                }
                None => selftest::run(jail, &config.work_dir, None)
                    .map_err(WorkerError::JailSelfTest)?,
            }
            let e = jail.enforcement();
            tracing::info!(landlock_abi = e.landlock_abi, landlock_fs = e.landlock_fs, landlock_tcp = e.landlock_tcp,
                landlock_scopes = e.landlock_scopes, seccomp = e.seccomp, per_job_uid, "jail self-test passed");
        }
        None => tracing::error!("RUNNING WITHOUT A JAIL (--insecure-no-jail): FFmpeg runs unconfined; a crafted input can reach everything this worker can"),
    }
    let mut client = connect(&config.coordinator, &token)?;
    drop(token);

    let registration = pb::RegisterWorkerRequest {
        hostname: config.hostname.clone(),
        worker_version: env!("CARGO_PKG_VERSION").into(),
        ffmpeg_version: ffmpeg_version.clone(),
        image_hash: config.image_hash.clone(),
        fingerprint: Some(fingerprint),
    };
    let Some(registered) = register(&mut client, &registration, &shutdown).await? else {
        return Ok(());
    };
    let mut worker = Worker {
        worker_id: registered.worker_id,
        heartbeat_seconds: registered.heartbeat_seconds,
        ffmpeg,
        ffprobe,
        ffmpeg_version,
        http: reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| WorkerError::Io(std::io::Error::other(e)))?,
        config,
    };
    let mut backoff = Duration::from_millis(200);
    // A job given up without its report getting through, handed back with the next call.
    let mut dropped: Option<pb::DroppedLease> = None;
    while !shutdown.is_cancelled() {
        let req = pb::GetWorkAssignmentRequest {
            worker_id: worker.worker_id.clone(),
            wait_seconds: worker.config.poll_seconds,
            dropped: dropped.clone(),
        };
        // A long-poll: its deadline is the wait it asks for plus room for the answer.
        let deadline =
            Duration::from_secs(u64::from(worker.config.poll_seconds)) + rpc::CALL_DEADLINE;
        let resp = tokio::select! {
            r = tokio::time::timeout(deadline, client.get_work_assignment(rpc::request(req, deadline)))
                => r.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer to a long-poll"))),
            () = shutdown.cancelled() => break,
        };
        match resp {
            Ok(r) => {
                backoff = Duration::from_millis(200);
                dropped = None;
                if let Some(a) = r.into_inner().assignment {
                    let span = tracing::info_span!("job", worker_id = %worker.worker_id, job_id = %a.job_id, attempt = a.attempt);
                    let _g = span.enter();
                    tracing::info!("job started");
                    dropped = job::execute(&worker, &mut client, a, shutdown_hard.clone()).await;
                    // Without its spawn helper a root worker can run nothing: stop, do not
                    // take jobs only to fail them (SEAL is idempotent; it answers while alive).
                    if let Some(spawner) = &worker.config.spawner {
                        if let Err(mpegflow_jail::spawner::SpawnError::Io(e)) = spawner.seal() {
                            return Err(WorkerError::Io(std::io::Error::other(format!(
                                "the spawn helper is gone: {e}"
                            ))));
                        }
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                return Err(WorkerError::Refused(format!(
                    "{}: {}",
                    s.code(),
                    s.message()
                )));
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                // An expired registration (or a suspended token, which registering again
                // reports and ends on).
                tracing::warn!("coordinator: {}; registering again", s.message());
                match register(&mut client, &registration, &shutdown).await? {
                    Some(r) => worker.worker_id = r.worker_id,
                    None => break,
                }
            }
            Err(s) => {
                tracing::warn!("get work failed: {}: {}", s.code(), s.message());
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}
