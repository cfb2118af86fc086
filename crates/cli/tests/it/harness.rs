//! Starting platforms for tests: one private PostgreSQL cluster per test binary (or
//! `DATABASE_URL`), a fresh database per test, every server on port 0.

use mpegflow::client::{ApiClient, ApiError};
use mpegflow::pg::Cluster;
use mpegflow::platform::{Platform, PlatformConfig};
use mpegflow_api as api;
use mpegflow_control::ControlConfig;
use mpegflow_proto as pb;
use mpegflow_store::TokenLimits;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tonic::Request;
use uuid::Uuid;

struct Db {
    admin_url: String,
    _cluster: Option<Cluster>,
}

static DB: OnceLock<Db> = OnceLock::new();
static CLUSTER_DATA: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn stop_cluster() {
    if let Some(Db {
        _cluster: Some(c), ..
    }) = DB.get()
    {
        c.stop();
    }
    if let Some(dir) = CLUSTER_DATA.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn db() -> &'static Db {
    DB.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Db {
                admin_url: url,
                _cluster: None,
            };
        }
        let dir = std::env::temp_dir().join(format!("mpegflow-it-pg-{}", std::process::id()));
        let cluster = Cluster::start(&dir, None, true).expect("start a private PostgreSQL cluster");
        let _ = CLUSTER_DATA.set(dir);
        // SAFETY: registering a plain extern "C" function to run at exit.
        unsafe { libc::atexit(stop_cluster) };
        Db {
            admin_url: cluster.database_url("postgres"),
            _cluster: Some(cluster),
        }
    })
}

/// A new, empty database on the test cluster.
pub async fn fresh_database() -> String {
    let name = format!("it_{}", uuid::Uuid::new_v4().simple());
    mpegflow_store::create_database(&db().admin_url, &name)
        .await
        .expect("create a test database")
}

pub fn test_control_config() -> ControlConfig {
    ControlConfig {
        lease_seconds: 10,
        heartbeat_seconds: 1,
        retry_base_ms: 100,
        retry_max_ms: 500,
        reaper_interval_ms: 300,
        max_poll_seconds: 2,
        ..ControlConfig::default()
    }
}

pub struct TestPlatform {
    pub platform: Platform,
    pub dir: tempdir::TempDir,
}

/// Temporary directories that clean up after themselves.
pub mod tempdir {
    use std::path::{Path, PathBuf};
    pub struct TempDir(PathBuf);
    impl TempDir {
        pub fn new(prefix: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestPlatform {
    pub async fn start(workers: usize, control: ControlConfig) -> TestPlatform {
        Self::start_with(workers, control, |_| {}).await
    }

    /// [`TestPlatform::start`] with settings changed by `customize` first.
    pub async fn start_with(
        workers: usize,
        control: ControlConfig,
        customize: impl FnOnce(&mut PlatformConfig),
    ) -> TestPlatform {
        let dir = tempdir::TempDir::new("mpegflow-it");
        let mut cfg = PlatformConfig {
            data_dir: dir.path().join("data"),
            database_url: Some(fresh_database().await),
            api_addr: "127.0.0.1:0".into(),
            grpc_addr: "127.0.0.1:0".into(),
            s3_addr: "127.0.0.1:0".into(),
            s3: None,
            workers,
            worker_bin: None,
            control,
            pg_for_tests: true,
            // Tests that deliver webhooks run a dispatcher of their own, on a manual clock.
            dispatcher: false,
            ..PlatformConfig::default()
        };
        customize(&mut cfg);
        let platform = Platform::start(cfg).await.expect("platform starts");
        TestPlatform { platform, dir }
    }

    /// A new org and a client holding its API key.
    pub async fn org(&self, name: &str) -> ApiClient {
        let (_, key) = self.platform.store().create_org(name).await.unwrap();
        ApiClient::new(&self.platform.api_url, key.expose())
    }

    pub async fn worker_token(&self, pool: &str) -> (uuid::Uuid, String) {
        self.worker_token_with(pool, mpegflow_store::TokenLimits::default())
            .await
    }

    pub async fn worker_token_with(
        &self,
        pool: &str,
        limits: mpegflow_store::TokenLimits,
    ) -> (uuid::Uuid, String) {
        let (id, t) = self
            .platform
            .store()
            .create_worker_token(pool, "test", limits)
            .await
            .unwrap();
        (id, t.expose().to_owned())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The variables that point `mpegflow control` at this platform's database and at its
    /// embedded store as an external one (its endpoint and key pair).
    pub fn external_env(&self) -> Vec<(&'static str, String)> {
        let s3_key: toml::Table = toml::from_str(
            &std::fs::read_to_string(
                self.platform
                    .data_dir
                    .join(mpegflow::platform::EMBEDDED_KEY_FILE),
            )
            .unwrap(),
        )
        .unwrap();
        vec![
            ("DATABASE_URL", self.platform.database_url.clone()),
            ("MPEGFLOW_S3_ENDPOINT", self.platform.s3_endpoint.clone()),
            ("MPEGFLOW_S3_BUCKET", "mpegflow".to_owned()),
            (
                "MPEGFLOW_S3_ACCESS_KEY",
                s3_key["access_key"].as_str().unwrap().to_owned(),
            ),
            (
                "MPEGFLOW_S3_SECRET_KEY",
                s3_key["secret_key"].as_str().unwrap().to_owned(),
            ),
        ]
    }

    pub async fn stop(self) {
        self.platform.stop(Duration::from_secs(5)).await;
    }
}

/// A test clip of `seconds` at `size`, H.264 + AAC, made once per name.
pub async fn clip(dir: &Path, name: &str, seconds: u32, size: &str) -> PathBuf {
    let p = dir.join(name);
    mpegflow::sample::make_clip(&p, seconds, size)
        .await
        .expect("make a clip");
    p
}

/// `dir/name` made by FFmpeg from a lavfi `source` with `encode` options (codec, metadata…).
pub async fn lavfi(dir: &Path, name: &str, source: &str, encode: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", source])
        .args(encode)
        .arg(&p)
        .status()
        .await
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg made no {name} from {source}");
    p
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// ffprobe's view of a media file.
pub fn ffprobe(path: &Path) -> Value {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The FFmpeg fingerprint a raw (test-driven) worker registers with: the installed FFmpeg's
/// release as far as the command grammar goes.
pub fn fingerprint() -> mpegflow_proto::FfmpegFingerprint {
    fingerprint_of(mpegflow_domain::fingerprint::COMMAND_GRAMMAR)
}

/// A fingerprint of an FFmpeg `major.minor` release.
pub fn fingerprint_of(grammar: &str) -> mpegflow_proto::FfmpegFingerprint {
    mpegflow_proto::FfmpegFingerprint {
        version: format!("ffmpeg version {grammar}.0 (test)"),
        configuration: "--test".into(),
        grammar: grammar.into(),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Uploads `path` and submits a one-input job (the input's alias is `in`); returns the job.
pub async fn submit(
    client: &ApiClient,
    input: &Path,
    outputs: &[(&str, &str)],
    command: &str,
) -> api::Job {
    let asset = client.upload(input).await.expect("upload");
    let job = api::JobIn::new([("in", asset.id)], outputs.iter().copied(), command)
        .expect("a well-formed job");
    client.submit(&job).await.expect("submit")
}

/// Polls a job until it is in `state` (30 s at most).
pub async fn wait_for_state(client: &ApiClient, id: Uuid, state: api::JobState) -> api::Job {
    eventually(
        &format!("job {id} to be {state}"),
        Duration::from_secs(30),
        || async {
            let job = client.job(id).await.unwrap();
            (job.state == state).then_some(job)
        },
    )
    .await
}

/// Uploads `input`, submits a one-input job and waits for it to end; returns the final job.
pub async fn run_job(
    client: &ApiClient,
    input: &Path,
    outputs: &[(&str, &str)],
    command: &str,
) -> api::Job {
    let job = submit(client, input, outputs, command).await;
    client.wait(job.id, |_| {}).await.unwrap()
}

/// An alias known to be well formed.
pub fn alias(name: &str) -> api::Alias {
    api::Alias::parse(name).unwrap()
}

/// A job's declared output `name`.
pub fn output<'a>(job: &'a api::Job, name: &str) -> &'a api::JobOutput {
    job.outputs
        .get(&alias(name))
        .unwrap_or_else(|| panic!("no output {name}: {job:#?}"))
}

/// The single stored file of a succeeded job's file output `name`.
pub fn output_file<'a>(job: &'a api::Job, name: &str) -> &'a api::OutputFile {
    let out = output(job, name);
    assert_eq!(out.files.len(), 1, "a file output has one file: {job:#?}");
    &out.files[0]
}

/// The attempts of a job read with `GET /v1/jobs/{id}`.
pub fn history(job: &api::Job) -> &[api::Attempt] {
    job.history
        .as_deref()
        .unwrap_or_else(|| panic!("a job read by id carries its history: {job:#?}"))
}

/// The error of a failed job.
pub fn job_error(job: &api::Job) -> &api::JobError {
    job.error
        .as_ref()
        .unwrap_or_else(|| panic!("job has no error: {job:#?}"))
}

/// The problem an API call was refused with (panics on any other error).
pub fn problem(err: anyhow::Error) -> api::Problem {
    match err.downcast::<ApiError>() {
        Ok(ApiError(p)) => p,
        Err(e) => panic!("not an API refusal: {e:#}"),
    }
}

/// The problem a call that must be refused was refused with.
pub fn refused<T: std::fmt::Debug>(result: anyhow::Result<T>) -> api::Problem {
    match result {
        Ok(v) => panic!("expected a refusal, got {v:#?}"),
        Err(e) => problem(e),
    }
}

/// Whether this process can run the root-only setup of a test. Where the run promises that
/// setup (`MPEGFLOW_REQUIRE_ROOT_SETUP=1`, set by `scripts/test.sh` as root, as in CI), a missing
/// one fails the test instead of skipping it: a security claim is never "shown" by a skip.
pub fn root_setup_available(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("MPEGFLOW_REQUIRE_ROOT_SETUP").is_none(),
            "{what} needs root, and this run requires the root setup"
        );
        eprintln!("skipped: {what} needs root");
    }
    root
}

/// Compiles a C stand-in for FFmpeg from `tests/it/<source>` into a per-process temp directory
/// (world-readable, so dropped worker and job uids can run it); call it once per binary.
pub fn compile_standin(source: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mpegflow-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it")
        .join(source);
    let st = std::process::Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success(), "compiling {source}");
    bin
}

/// Compiles the hostile stand-in for FFmpeg (`tests/it/hostile.c`) once per test binary.
pub fn hostile() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile_standin("hostile.c", "hostile-ffmpeg"))
}

/// Submits a job whose FFmpeg is the hostile stand-in running `attack` (`name:arg`); its
/// verdict lands in the output `verdict.txt`. Returns the job id.
pub async fn submit_attack(client: &ApiClient, clip: &Path, attack: &str, timeout: u32) -> Uuid {
    let asset = client.upload(clip).await.unwrap();
    let mut job = api::JobIn::new(
        [("in", asset.id)],
        [("out", "verdict.txt")],
        format!("-i {{{{in}}}} -metadata comment=attack:{attack} -f mp4 {{{{out}}}}"),
    )
    .unwrap();
    job.timeout_seconds = Some(api::TimeoutSeconds::parse(timeout).unwrap());
    client.submit(&job).await.unwrap().id
}

/// A platform with one unprivileged worker whose FFmpeg is the hostile stand-in, a client of
/// org "acme" and a 1 s clip to submit.
pub struct HostilePlatform {
    pub tp: TestPlatform,
    pub client: ApiClient,
    pub clip: PathBuf,
    /// The worker's token.
    pub token_id: Uuid,
    /// The worker's pid.
    pub worker: u32,
}

impl HostilePlatform {
    pub async fn start(control: ControlConfig) -> HostilePlatform {
        let mut tp = TestPlatform::start(0, control).await;
        let client = tp.org("acme").await;
        let clip = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
        let (token_id, token) = tp.worker_token("default").await;
        let worker = tp
            .platform
            .spawn_worker_with(&token, &["--ffmpeg", hostile().to_str().unwrap()], false)
            .await
            .unwrap();
        HostilePlatform {
            tp,
            client,
            clip,
            token_id,
            worker,
        }
    }
}

/// A platform without workers (the test plays them over raw gRPC), a client of org "acme", and
/// `n` queued jobs copying a 1 s clip (`-i {{in}} {{out}}` into `o.mp4`), oldest first.
pub struct Queued {
    pub tp: TestPlatform,
    pub client: ApiClient,
    pub jobs: Vec<api::Job>,
}

impl Queued {
    pub async fn start(control: ControlConfig, n: usize) -> Queued {
        let tp = TestPlatform::start(0, control).await;
        let client = tp.org("acme").await;
        let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
        let mut jobs = Vec::with_capacity(n);
        for _ in 0..n {
            jobs.push(submit(&client, &input, &[("out", "o.mp4")], "-i {{in}} {{out}}").await);
        }
        Queued { tp, client, jobs }
    }
}

/// Attempts of `token_id`'s workers counted as strikes against it.
pub async fn strikes(tp: &TestPlatform, token_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE token_id = $1 AND strike")
        .bind(token_id)
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap()
}

/// A PostgreSQL cluster of the test's own (the shared one must stay up for the other tests),
/// which the test may stop and start again on the same port. Stopped when dropped, panicking
/// or not.
pub struct OwnCluster {
    cluster: Option<Cluster>,
    dir: PathBuf,
    port: u16,
}

impl OwnCluster {
    /// Starts a cluster in `dir` with one database `name`; returns it and the database's URL.
    pub async fn start(dir: &Path, name: &str) -> (OwnCluster, String) {
        let cluster = Cluster::start(dir, None, true).expect("start a private cluster");
        let url = mpegflow_store::create_database(&cluster.database_url("postgres"), name)
            .await
            .expect("create the database");
        let port = cluster.port;
        let own = OwnCluster {
            cluster: Some(cluster),
            dir: dir.to_owned(),
            port,
        };
        (own, url)
    }

    pub fn stop(&mut self) {
        if let Some(c) = self.cluster.take() {
            tokio::task::block_in_place(|| c.stop());
        }
    }

    /// Starts it again: the same port, the same data.
    pub fn restart(&mut self) {
        let c = tokio::task::block_in_place(|| Cluster::start(&self.dir, Some(self.port), true))
            .expect("restart the cluster");
        self.cluster = Some(c);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
    }
}

/// Token limits allowing `max_workers` live workers, unthrottled.
pub fn max_workers(max_workers: u32) -> TokenLimits {
    TokenLimits {
        max_workers,
        leases_per_minute: None,
    }
}

/// A coordinator client presenting one worker token over raw gRPC: a worker a test drives by
/// hand, or an attacker holding the token.
#[derive(Clone)]
pub struct RawWorker {
    pub client: pb::CoordinatorClient<tonic::transport::Channel>,
    token: String,
}

impl RawWorker {
    pub async fn connect(tp: &TestPlatform, token: &str) -> RawWorker {
        RawWorker::connect_to(&tp.platform.coordinator_url, token).await
    }

    pub async fn connect_to(url: &str, token: &str) -> RawWorker {
        RawWorker {
            client: pb::CoordinatorClient::connect(url.to_owned())
                .await
                .unwrap(),
            token: token.to_owned(),
        }
    }

    /// `msg` with this token as its bearer credential.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        r
    }

    /// Registers a worker with this FFmpeg fingerprint; returns its id.
    pub async fn register_as(
        &mut self,
        fp: pb::FfmpegFingerprint,
    ) -> Result<String, tonic::Status> {
        let r = self.req(pb::RegisterWorkerRequest {
            hostname: "rogue".into(),
            fingerprint: Some(fp),
            ..Default::default()
        });
        Ok(self.client.register_worker(r).await?.into_inner().worker_id)
    }

    /// Registers a worker with the installed FFmpeg's fingerprint; returns its id.
    pub async fn register(&mut self) -> Result<String, tonic::Status> {
        self.register_as(fingerprint()).await
    }

    /// Asks for work as `worker`, waiting up to `wait` seconds.
    pub async fn poll(
        &mut self,
        worker: &str,
        wait: u32,
    ) -> Result<Option<pb::JobAssignment>, tonic::Status> {
        self.poll_dropping(worker, wait, None).await
    }

    /// Asks for work as `worker`, handing back the lease of `dropped` (a job given up on).
    pub async fn poll_dropping(
        &mut self,
        worker: &str,
        wait: u32,
        dropped: Option<&pb::JobAssignment>,
    ) -> Result<Option<pb::JobAssignment>, tonic::Status> {
        let r = self.req(pb::GetWorkAssignmentRequest {
            worker_id: worker.into(),
            wait_seconds: wait,
            dropped: dropped.map(|a| pb::DroppedLease {
                job_id: a.job_id.clone(),
                fencing_token: a.fencing_token.clone(),
            }),
        });
        Ok(self
            .client
            .get_work_assignment(r)
            .await?
            .into_inner()
            .assignment)
    }

    /// Reports `a` failed with `code` as `worker`.
    pub async fn fail(
        &mut self,
        worker: &str,
        a: &pb::JobAssignment,
        code: &str,
        retryable: bool,
    ) -> Result<(), tonic::Status> {
        let r = self.req(pb::ReportJobStatusRequest {
            worker_id: worker.into(),
            job_id: a.job_id.clone(),
            fencing_token: a.fencing_token.clone(),
            outcome: pb::Outcome::Failed as i32,
            error_code: code.into(),
            error_message: "said the rogue".into(),
            retryable,
            ..Default::default()
        });
        self.client.report_job_status(r).await.map(|_| ())
    }

    /// Heartbeats `a` as `worker` (asking for fresh input URLs with `refresh`).
    pub async fn heartbeat(
        &mut self,
        worker: &str,
        a: &pb::JobAssignment,
        refresh: bool,
    ) -> Result<pb::HeartbeatResponse, tonic::Status> {
        let r = self.req(pb::HeartbeatRequest {
            worker_id: worker.into(),
            job_id: a.job_id.clone(),
            fencing_token: a.fencing_token.clone(),
            progress: -1.0,
            refresh_input_urls: refresh,
            ..Default::default()
        });
        Ok(self.client.heartbeat(r).await?.into_inner())
    }
}

/// One `mpegflow control` child with its stderr in a file.
pub struct ControlChild {
    pub child: Child,
    log: PathBuf,
}

impl ControlChild {
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ControlChild {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = dir.join(format!("control-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpegflow"));
        cmd.arg("control").args(args);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("MPEGFLOW_") || k == "DATABASE_URL" || k == "NO_COLOR" {
                cmd.env_remove(&*k);
            }
        }
        cmd.env("MPEGFLOW_API_ADDR", "127.0.0.1:0")
            .env("MPEGFLOW_GRPC_ADDR", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start target/debug/mpegflow");
        ControlChild { child, log }
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits for the serving line; returns the API and coordinator URLs it names.
    pub fn wait_serving(&mut self) -> (String, String) {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains("control plane serving")) {
                let after = |label: &str| {
                    let at = line.find(label).unwrap() + label.len();
                    line[at..].split_whitespace().next().unwrap().to_owned()
                };
                return (after("API "), after("coordinator "));
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("control exited ({status}) before serving:\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "not serving within 60 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "control still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ControlChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test settings as a config file `control` reads.
pub fn control_config_file(dir: &Path, control: ControlConfig) -> PathBuf {
    #[derive(serde::Serialize)]
    struct File {
        control: mpegflow_control::ControlConfig,
    }
    let path = dir.join("control.toml");
    let text = toml::to_string(&File { control }).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}
