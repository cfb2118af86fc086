//! One job, start to end: fetch inputs, validate, encode, upload, report.

use crate::ffmpeg::{self, Exit, Progress};
use crate::ffmpeg_log::{InputFailure, InputLog, InputSpec};
use crate::transfer::{self, Digested};
use crate::{Client, Worker};
use mpegflow_domain::command::timing::expected_output_us;
use mpegflow_domain::command::{check_rendered, parse_rendered, subtitle_inputs, IoSpec, Target};
use mpegflow_domain::job::error_code;
use mpegflow_jail::spawner::{OutAccess, Program};
use mpegflow_proto as pb;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Why a job did not succeed.
#[derive(Debug)]
pub struct JobFailure {
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
    pub exit_code: i32,
}

impl JobFailure {
    fn new(code: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        JobFailure {
            code,
            message: message.into(),
            retryable,
            exit_code: -1,
        }
    }

    /// A jailed probe tripped the seccomp wire.
    fn security(message: String) -> Self {
        JobFailure {
            exit_code: 128 + libc::SIGSYS,
            ..JobFailure::new(error_code::SECURITY_VIOLATION, message, false)
        }
    }
}

enum Ended {
    Succeeded(Vec<pb::ProducedFile>),
    Failed(JobFailure),
    Canceled,
    /// The lease was lost: another worker owns the job now. Report nothing.
    LeaseLost,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Records the start and end of each stage, for the provenance record.
#[derive(Default)]
struct Stages(Vec<pb::Stage>, u64);

impl Stages {
    fn start(&mut self, name: &str) {
        self.1 = ffmpeg::cpu_used_us();
        self.0.push(pb::Stage {
            name: name.into(),
            started_at_ms: now_ms(),
            finished_at_ms: 0,
            cpu_us: 0,
        });
    }
    fn end(&mut self) {
        if let Some(s) = self.0.last_mut() {
            s.finished_at_ms = now_ms();
            s.cpu_us = ffmpeg::cpu_used_us().saturating_sub(self.1);
        }
    }
}

/// The job's input URLs. They expire with the lease; while it lives, fresh ones come with a
/// heartbeat that asks for them, and downloads (and their retries) use the freshest.
#[derive(Clone)]
struct InputUrls {
    urls: Arc<Mutex<HeldUrls>>,
    wanted: Arc<AtomicBool>,
    /// Wakes the heartbeat loop at once.
    wake: Arc<Notify>,
}

/// alias → (URL, expiry in Unix seconds), and how many times they were refreshed.
struct HeldUrls {
    by_alias: HashMap<String, (String, i64)>,
    generation: u64,
}

/// Tries per input download (each after the first with fresh URLs).
const DOWNLOAD_TRIES: u32 = 3;
/// URLs closer to expiry than this are refreshed before a download starts.
const URL_MARGIN_SECS: i64 = 30;

impl InputUrls {
    fn new(inputs: &[pb::InputFile]) -> Self {
        let map = inputs
            .iter()
            .map(|i| (i.alias.clone(), (i.url.clone(), i.url_expires_at_unix)))
            .collect();
        InputUrls {
            urls: Arc::new(Mutex::new(HeldUrls {
                by_alias: map,
                generation: 0,
            })),
            wanted: Arc::default(),
            wake: Arc::default(),
        }
    }

    fn get(&self, alias: &str) -> Option<(String, i64, u64)> {
        let g = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        g.by_alias
            .get(alias)
            .map(|(u, e)| (u.clone(), *e, g.generation))
    }

    fn store(&self, fresh: &[pb::InputFile]) {
        let mut g = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        for i in fresh {
            // Only the inputs this job was given.
            if let Some(slot) = g.by_alias.get_mut(&i.alias) {
                *slot = (i.url.clone(), i.url_expires_at_unix);
            }
        }
        g.generation += 1;
        self.wanted.store(false, Ordering::Relaxed);
    }

    /// Asks the next heartbeat for fresh URLs and waits (boundedly) for them.
    async fn refresh(&self, generation: u64, within: Duration) {
        self.wanted.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self
                .urls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .generation
                != generation
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("no fresh input URLs arrived; trying with the ones held");
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Run<'a> {
    worker: &'a Worker,
    urls: InputUrls,
    a: &'a pb::JobAssignment,
    dir: PathBuf,
    cancel: CancellationToken,
    canceled_by_tenant: Arc<AtomicBool>,
    lease_lost: Arc<AtomicBool>,
    progress: Progress,
    stages: Stages,
    inputs: Vec<pb::InputHash>,
    stderr: Vec<u8>,
    /// What the jailed ffprobe measured of the outputs.
    media: Vec<pb::OutputMedia>,
    /// As root: the job's own uid, leased from the spawn helper for this run.
    job_uid: Option<u32>,
}

/// Runs one assignment and reports its end to the coordinator.
/// Runs one job and reports it. Returns the lease when the report did not get through: the
/// next call for work hands it back, so the job does not wait for the lease to run out.
pub async fn execute(
    worker: &Worker,
    client: &mut Client,
    a: pb::JobAssignment,
    shutdown_hard: CancellationToken,
) -> Option<pb::DroppedLease> {
    let dir = worker
        .config
        .work_dir
        .join(format!("{}-{}", a.job_id, a.attempt));
    let cancel = shutdown_hard.child_token();
    let urls = InputUrls::new(&a.inputs);
    let mut run = Run {
        worker,
        urls: urls.clone(),
        a: &a,
        dir,
        cancel: cancel.clone(),
        canceled_by_tenant: Arc::default(),
        lease_lost: Arc::default(),
        progress: Progress::unknown(),
        stages: Stages::default(),
        inputs: Vec::new(),
        stderr: Vec::new(),
        media: Vec::new(),
        job_uid: None,
    };
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker.worker_id.clone(),
        a.job_id.clone(),
        a.fencing_token.clone(),
        Duration::from_secs(worker.heartbeat_seconds.max(1).into()),
        run.progress.clone(),
        cancel.clone(),
        run.canceled_by_tenant.clone(),
        run.lease_lost.clone(),
        urls,
    ));
    let ended = run.go(client).await;
    heartbeat.abort();
    let ended = if run.lease_lost.load(Ordering::Relaxed) {
        Ended::LeaseLost
    } else if run.canceled_by_tenant.load(Ordering::Relaxed) {
        Ended::Canceled
    } else if shutdown_hard.is_cancelled() && !matches!(ended, Ended::Succeeded(_)) {
        Ended::Failed(JobFailure::new(
            error_code::WORKER_ERROR,
            "worker shut down during the job; handed back",
            true,
        ))
    } else {
        ended
    };
    if let (Some(uid), Some(spawner)) = (run.job_uid, worker.config.spawner.clone()) {
        // Frees the job uid only once nothing of the job is left.
        match tokio::task::spawn_blocking(move || spawner.end(uid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(job_id = %a.job_id, "ending job uid {uid}: {e}"),
            Err(e) => tracing::error!(job_id = %a.job_id, "ending job uid {uid}: {e}"),
        }
    }
    let dir = run.dir.clone();
    let _ = tokio::task::spawn_blocking(move || remove_job_dir(&dir)).await;
    let stderr_zstd = zstd::encode_all(&run.stderr[..], 3).unwrap_or_default();
    let mut report = pb::ReportJobStatusRequest {
        worker_id: worker.worker_id.clone(),
        job_id: a.job_id.clone(),
        fencing_token: a.fencing_token.clone(),
        stderr_zstd,
        inputs: run.inputs,
        stages: run.stages.0,
        ffmpeg_version: worker.ffmpeg_version.clone(),
        ..Default::default()
    };
    match ended {
        Ended::LeaseLost => {
            tracing::warn!(job_id = %a.job_id, "lease lost; dropping the job without a report");
            return None;
        }
        Ended::Succeeded(outputs) => {
            report.outcome = pb::Outcome::Succeeded as i32;
            report.exit_code = 0;
            report.outputs = outputs;
            report.output_media = run.media;
        }
        Ended::Canceled => report.outcome = pb::Outcome::Canceled as i32,
        Ended::Failed(f) => {
            tracing::warn!(job_id = %a.job_id, code = f.code, message = %f.message, "job failed");
            report.outcome = pb::Outcome::Failed as i32;
            report.exit_code = f.exit_code;
            report.error_code = f.code.into();
            report.error_message = f.message;
            report.retryable = f.retryable;
        }
    }
    // Retried through a coordinator restart or a database outage: the attempt's work is done,
    // and only a refusal (the lease went to another worker) drops it.
    let sent = crate::rpc::retrying(
        "reporting",
        crate::rpc::REPORT_DEADLINE,
        REPORT_BUDGET,
        &shutdown_hard,
        || {
            let mut client = client.clone();
            let report = report.clone();
            async move {
                client
                    .report_job_status(crate::rpc::request(report, crate::rpc::REPORT_DEADLINE))
                    .await
            }
        },
    )
    .await;
    match sent {
        Ok(_) => None,
        Err(s) => {
            tracing::warn!(job_id = %a.job_id, "report not delivered: {} {}", s.code(), s.message());
            Some(pb::DroppedLease {
                job_id: a.job_id.clone(),
                fencing_token: a.fencing_token.clone(),
            })
        }
    }
}

/// Files whose upload URLs one RequestUploadUrls call asks for (an answer of about 1 KiB a
/// file stays well under gRPC's 4 MiB message limit).
const UPLOAD_URL_BATCH: usize = 500;
/// How long a finished encode waits for upload URLs through a platform outage (the lease
/// ending stops it sooner).
const UPLOAD_URLS_BUDGET: Duration = Duration::from_secs(30 * 60);
/// How long a report is retried through a platform outage.
const REPORT_BUDGET: Duration = Duration::from_secs(30 * 60);

#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    mut client: Client,
    worker_id: String,
    job_id: String,
    fencing_token: String,
    every: Duration,
    progress: Progress,
    cancel: CancellationToken,
    canceled_by_tenant: Arc<AtomicBool>,
    lease_lost: Arc<AtomicBool>,
    urls: InputUrls,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = urls.wake.notified() => {}
        }
        let req = pb::HeartbeatRequest {
            worker_id: worker_id.clone(),
            job_id: job_id.clone(),
            fencing_token: fencing_token.clone(),
            progress: progress.get().unwrap_or(-1.0),
            stage: progress.stage().to_owned(),
            refresh_input_urls: urls.wanted.load(Ordering::Relaxed),
            speed: progress.speed().unwrap_or(0.0),
            fps: progress.fps().unwrap_or(0.0),
        };
        match client
            .heartbeat(crate::rpc::request(req, crate::rpc::CALL_DEADLINE))
            .await
        {
            Ok(r) if r.get_ref().cancel => {
                canceled_by_tenant.store(true, Ordering::Relaxed);
                cancel.cancel();
                return;
            }
            Ok(r) => {
                if !r.get_ref().inputs.is_empty() {
                    urls.store(&r.get_ref().inputs);
                }
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::FailedPrecondition | Code::PermissionDenied | Code::Unauthenticated
                ) =>
            {
                lease_lost.store(true, Ordering::Relaxed);
                cancel.cancel();
                return;
            }
            Err(s) => tracing::warn!(%job_id, "heartbeat failed: {}", s.message()),
        }
    }
}

impl Run<'_> {
    async fn go(&mut self, client: &mut Client) -> Ended {
        match self.steps(client).await {
            Ok(files) => Ended::Succeeded(files),
            Err(_) if self.cancel.is_cancelled() => Ended::Canceled,
            Err(f) => Ended::Failed(f),
        }
    }

    fn spec(&self) -> Result<IoSpec, JobFailure> {
        let mut spec = IoSpec::default();
        let bad = |e: mpegflow_domain::command::CommandError| {
            JobFailure::new(error_code::COMMAND_REJECTED, e.to_string(), false)
        };
        for i in &self.a.inputs {
            spec.add_input(&i.alias, &i.filename).map_err(bad)?;
            if spec.input_path(&i.alias).as_deref() != Some(i.path.as_str()) {
                return Err(JobFailure::new(
                    error_code::COMMAND_REJECTED,
                    format!("input path {:?} is not the expected one", i.path),
                    false,
                ));
            }
        }
        for o in &self.a.outputs {
            spec.add_output(&o.alias, &o.filename).map_err(bad)?;
        }
        Ok(spec)
    }

    async fn steps(&mut self, client: &mut Client) -> Result<Vec<pb::ProducedFile>, JobFailure> {
        let infra = |e: std::io::Error| {
            JobFailure::new(
                error_code::WORKER_ERROR,
                format!("job directory: {e}"),
                true,
            )
        };
        // Checked again here: the worker runs nothing the domain rules would refuse.
        let spec = self.spec()?;
        check_rendered(&self.a.argv, &spec)
            .map_err(|e| JobFailure::new(error_code::COMMAND_REJECTED, e.to_string(), false))?;
        // Inputs that a filter (subtitles=, ass=) opens itself, and the demuxer each must be.
        let cmd = parse_rendered(&self.a.argv, &spec)
            .map_err(|e| JobFailure::new(error_code::COMMAND_REJECTED, e.to_string(), false))?;
        let subtitles = subtitle_inputs(&cmd, &spec);

        tokio::fs::create_dir_all(self.dir.join("in"))
            .await
            .map_err(infra)?;
        if self.worker.config.spawner.is_some() {
            // The helper mounts the job's own file system on out/ and makes the alias
            // directories in it.
            tokio::fs::create_dir_all(self.dir.join("out"))
                .await
                .map_err(infra)?;
        } else {
            for alias in spec.outputs.keys() {
                tokio::fs::create_dir_all(self.dir.join("out").join(alias))
                    .await
                    .map_err(infra)?;
            }
        }

        self.stages.start("download");
        self.progress.set_stage("download");
        for input in &self.a.inputs {
            let dest = self.dir.join(&input.path);
            let got = self.download(input, &dest).await?;
            if (!input.sha256.is_empty() && input.sha256 != got.sha256)
                || (input.size != 0 && input.size != got.size)
            {
                return Err(JobFailure::new(
                    error_code::INPUT_FETCH_FAILED,
                    format!(
                        "input {:?}: received bytes do not match the recorded size/checksum",
                        input.alias
                    ),
                    false,
                ));
            }
            self.inputs.push(pb::InputHash {
                alias: input.alias.clone(),
                size: got.size,
                sha256: got.sha256,
            });
        }
        self.stages.end();

        if let Some(spawner) = self.worker.config.spawner.clone() {
            self.begin_identity(spawner, &spec).await?;
        }

        // FFmpeg validates the media inputs itself, in the encode's own run: it opens every
        // input before it writes anything, and its log (at the platform's level) says which
        // one it could not open. Only the subtitle files a filter opens are checked first.
        let limits = self.a.limits.unwrap_or_default();
        if !subtitles.is_empty() {
            self.stages.start("validate");
            self.progress.set_stage("validate");
            for input in &self.a.inputs {
                let Some(demuxer) = subtitles.get(&input.alias) else {
                    continue;
                };
                if let Err(message) = self.check_subtitles(&input.path, demuxer).await? {
                    self.stderr = message.clone().into_bytes();
                    if message.starts_with(ffmpeg::SECURITY_PREFIX) {
                        return Err(JobFailure::security(message));
                    }
                    return Err(JobFailure::new(
                        error_code::INVALID_INPUT,
                        format!(
                            "input {:?} is not a subtitle file ({demuxer}): {message}",
                            input.alias
                        ),
                        false,
                    ));
                }
            }
            self.stages.end();
        }

        self.stages.start("encode");
        self.progress.set_stage("encode");
        let timeout = Duration::from_secs(limits.timeout_seconds.max(1).into());
        self.progress.set(0.0);
        let jail = self.jail_for(&self.worker.ffmpeg, &limits, OutAccess::Write)?;
        // The output limits hold while FFmpeg runs: a watcher kills it once out/ grows past
        // them (RLIMIT_FSIZE bounds each single file on top).
        let encode = self.cancel.child_token();
        let tripped = Arc::new(std::sync::Mutex::new(None));
        // With a job uid, out/ is a bounded file system the worker cannot even list until the
        // handover: the kernel holds the limits there, and the watcher has nothing to do.
        let watched = self.job_uid.is_none();
        let watcher = tokio::spawn(ffmpeg::watch_output(
            ffmpeg::OutputBound {
                dir: self.dir.join("out"),
                max_bytes: if watched { limits.max_output_bytes } else { 0 },
                max_files: if watched {
                    limits.max_output_files.into()
                } else {
                    0
                },
            },
            encode.clone(),
            tripped.clone(),
        ));
        let jail = self.launch_for(Program::Ffmpeg, jail, &limits, OutAccess::Write);
        let encode_started = Instant::now();
        let oom_kills_before = oom_kills(&self.worker.config.oom_events);
        let finished = ffmpeg::run(
            &self.worker.ffmpeg,
            &self.a.argv,
            &self.dir,
            timeout,
            &encode,
            Some(ffmpeg::Watch {
                progress: self.progress.clone(),
                inputs: InputLog::new(
                    cmd.files
                        .iter()
                        .filter_map(|f| match &f.target {
                            Target::Input { alias } => Some(InputSpec {
                                alias: alias.clone(),
                                path: spec.input_path(alias)?,
                                seeks: f.options.iter().any(|o| matches!(o.name, "ss" | "sseof")),
                            }),
                            Target::Output { .. } => None,
                        })
                        .collect(),
                ),
                // Against what the output runs: `-t`, `-ss` and `-to` cut the inputs.
                expected_us: {
                    let cmd = cmd.clone();
                    Box::new(move |log: &InputLog| {
                        expected_output_us(&cmd, &log.durations()).unwrap_or(0)
                    })
                },
            }),
            jail,
        )
        .await;
        watcher.abort();
        let finished = finished.map_err(|e| {
            JobFailure::new(
                error_code::WORKER_ERROR,
                format!("cannot start ffmpeg: {e}"),
                true,
            )
        })?;
        self.stderr = finished.stderr;
        self.stages.end();
        let exited_ok = matches!(finished.exit, ffmpeg::Exit::Code(0));
        // An input FFmpeg's log shows to be why the run failed or produced nothing.
        let blamed = finished
            .inputs
            .as_ref()
            .and_then(|log| log.blame(exited_ok, finished.progressed));
        if exited_ok && blamed.is_none() && tripped.lock().is_ok_and(|t| t.is_none()) {
            self.stages.start("measure");
            self.progress.set_stage("measure");
            self.media = self.measure_outputs(&spec, &limits).await?;
            self.stages.end();
        }
        if let (Some(uid), Some(spawner)) = (self.job_uid, self.worker.config.spawner.clone()) {
            // Nothing of the job runs past here, and out/ becomes this worker's to upload.
            tokio::task::spawn_blocking(move || spawner.handover(uid))
                .await
                .map_err(|e| infra(std::io::Error::other(e)))?
                .map_err(|e| infra(std::io::Error::other(e)))?;
        }
        if let Some(why) = tripped.lock().ok().and_then(|mut t| t.take()) {
            return Err(JobFailure::new(error_code::OUTPUT_LIMIT, why, false));
        }
        // The CPU limit's SIGKILL needs that much CPU time: with every core busy since the
        // start, could the job have used it? If not, someone else killed it.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu_limit_reachable = encode_started.elapsed().as_secs_f64() * cores
            >= self.jail_limits(&limits).cpu_seconds as f64;
        let oom_seen = matches!(
            (oom_kills_before, oom_kills(&self.worker.config.oom_events)),
            (Some(before), Some(after)) if after > before
        );
        let invalid = |failed: InputFailure, exit_code| JobFailure {
            code: error_code::INVALID_INPUT,
            message: format!(
                "input {:?} is not valid media: {}",
                failed.alias, failed.why
            ),
            retryable: false,
            exit_code,
        };
        let classified = classify_exit(
            &finished.exit,
            &self.stderr,
            timeout,
            cpu_limit_reachable,
            oom_seen,
        );
        if let Err(f) = classified {
            // Limits first: a run the platform stopped is never the input's fault.
            if let (error_code::FFMPEG_FAILED, Some(failed)) = (f.code, blamed) {
                return Err(invalid(failed, f.exit_code));
            }
            if self.job_uid.is_some() && output_fs_full(&self.dir.join("out")) {
                return Err(JobFailure {
                    code: error_code::OUTPUT_LIMIT,
                    message: format!(
                        "ffmpeg filled the job's output file system ({} bytes, {} files at most)",
                        limits.max_output_bytes, limits.max_output_files
                    ),
                    ..f
                });
            }
            return Err(f);
        }
        if let Some(failed) = blamed {
            return Err(invalid(failed, 0));
        }

        self.stages.start("upload");
        self.progress.set_stage("upload");
        let files = self.collect_outputs(&spec, &limits).await?;
        // URLs are asked for in batches (a job may write thousands of files: one answer for
        // all would pass gRPC's message limit), and live a few minutes: ask again
        // (idempotently, same pins) for what is left once they are half-way to expiry.
        let batch_from = |from: usize| &files[from..files.len().min(from + UPLOAD_URL_BATCH)];
        let mut urls = self.upload_urls(client, batch_from(0)).await?;
        let mut done = 0;
        // Whether the current file's URL was already asked for again after a 403.
        let mut reasked = false;
        while done < files.len() {
            if urls.refresh_at <= Instant::now() || !urls.by_path.contains_key(&files[done].path) {
                urls = self.upload_urls(client, batch_from(done)).await?;
            }
            let f = &files[done];
            let up = urls.by_path.get(&f.path).ok_or_else(|| {
                JobFailure::new(
                    error_code::OUTPUT_UPLOAD_FAILED,
                    format!("coordinator sent no upload URL for {:?}", f.path),
                    true,
                )
            })?;
            let path = self.dir.join("out").join(&f.path);
            let sent = tokio::select! {
                r = transfer::upload(&self.worker.http, &up.url, &up.headers, &path) => r,
                () = self.cancel.cancelled() => return Err(JobFailure::new(error_code::WORKER_ERROR, "canceled", false)),
            };
            match sent {
                // Write-once: the object is already there, and the store only ever took the
                // pinned bytes for it (an earlier try of ours went through).
                Ok(()) | Err(transfer::TransferError::Status { status: 412, .. }) => {}
                Err(e) if reask_after(&e, reasked) => {
                    // Most likely URLs signed with a key the store no longer has (it was
                    // restarted without its key) or expired early: ask again (idempotent,
                    // same pins) once, then try this file again.
                    tracing::warn!(path = %f.path, "upload refused, asking for fresh upload URLs: {e}");
                    reasked = true;
                    urls = self.upload_urls(client, batch_from(done)).await?;
                    continue;
                }
                Err(e) => {
                    return Err(JobFailure::new(
                        error_code::OUTPUT_UPLOAD_FAILED,
                        format!("{}: {e}", f.path),
                        e.retryable(),
                    ))
                }
            }
            done += 1;
            reasked = false;
        }
        self.stages.end();
        Ok(files)
    }

    /// Upload URLs for `files`, by path, and when to ask again.
    async fn upload_urls(
        &self,
        client: &mut Client,
        files: &[pb::ProducedFile],
    ) -> Result<UploadUrls, JobFailure> {
        let req = pb::RequestUploadUrlsRequest {
            worker_id: self.worker.worker_id.clone(),
            job_id: self.a.job_id.clone(),
            fencing_token: self.a.fencing_token.clone(),
            files: files.to_vec(),
        };
        let asked = Instant::now();
        // A finished encode waits out a coordinator or database blip rather than spend an
        // attempt: retried for as long as the lease lives (the heartbeat cancels the run once
        // the coordinator says it is lost).
        let resp = crate::rpc::retrying(
            "asking for upload URLs",
            crate::rpc::CALL_DEADLINE,
            UPLOAD_URLS_BUDGET,
            &self.cancel,
            || {
                let mut client = client.clone();
                let req = req.clone();
                async move {
                    client
                        .request_upload_urls(crate::rpc::request(req, crate::rpc::CALL_DEADLINE))
                        .await
                }
            },
        )
        .await
        .map_err(|s| match s.code() {
            Code::InvalidArgument => {
                JobFailure::new(error_code::OUTPUT_REJECTED, s.message().to_owned(), false)
            }
            _ => JobFailure::new(
                error_code::OUTPUT_UPLOAD_FAILED,
                s.message().to_owned(),
                true,
            ),
        })?
        .into_inner();
        let mut by_path = HashMap::new();
        for up in resp.uploads {
            // Upload only what we listed, whatever the answer says.
            if !files.iter().any(|f| f.path == up.path) {
                return Err(JobFailure::new(
                    error_code::OUTPUT_REJECTED,
                    format!("coordinator named an unlisted file {:?}", up.path),
                    false,
                ));
            }
            by_path.insert(up.path.clone(), up);
        }
        let half_life = Duration::from_secs(u64::from(resp.expires_in_seconds.max(2)) / 2);
        Ok(UploadUrls {
            by_path,
            refresh_at: asked + half_life,
        })
    }

    /// Downloads one input, retrying transient failures (and expired URLs) with fresh URLs
    /// from the coordinator.
    async fn download(
        &self,
        input: &pb::InputFile,
        dest: &std::path::Path,
    ) -> Result<Digested, JobFailure> {
        let max = self.worker.config.max_input_bytes;
        let wait_for_urls =
            Duration::from_secs(2 * u64::from(self.worker.heartbeat_seconds.max(1)) + 5);
        let mut tries = 0;
        loop {
            tries += 1;
            let (mut url, expires, generation) = self.urls.get(&input.alias).unwrap_or((
                input.url.clone(),
                input.url_expires_at_unix,
                0,
            ));
            if tries > 1 || (expires != 0 && expires - unix_now() < URL_MARGIN_SECS) {
                self.urls.refresh(generation, wait_for_urls).await;
                if let Some((fresh, _, _)) = self.urls.get(&input.alias) {
                    url = fresh;
                }
            }
            let _ = tokio::fs::remove_file(dest).await;
            let r = tokio::select! {
                r = transfer::download(&self.worker.http, &url, dest, max) => r,
                () = self.cancel.cancelled() => return Err(JobFailure::new(error_code::WORKER_ERROR, "canceled", false)),
            };
            match r {
                Ok(d) => return Ok(d),
                Err(e) => {
                    // 403: most likely an expired URL, which fresh ones cure.
                    let expired = matches!(e, transfer::TransferError::Status { status: 403, .. });
                    if (e.retryable() || expired) && tries < DOWNLOAD_TRIES {
                        tracing::warn!(alias = %input.alias, "input download failed, retrying with fresh URLs: {e}");
                        continue;
                    }
                    return Err(JobFailure::new(
                        error_code::INPUT_FETCH_FAILED,
                        format!("input {:?}: {e}", input.alias),
                        e.retryable() || expired,
                    ));
                }
            }
        }
    }

    /// Checks, with the jailed ffprobe, that the file a subtitles/ass filter will open is a
    /// subtitle file read by `demuxer`: forced, it holds one subtitle stream with cues; probed
    /// by content (as the filter opens it, naming no format), FFmpeg picks that same demuxer
    /// and no other (a playlist or container named .srt is refused here).
    async fn check_subtitles(
        &self,
        rel: &str,
        demuxer: &str,
    ) -> Result<Result<(), String>, JobFailure> {
        let limits = self.a.limits.unwrap_or_default();
        for how in [
            ffmpeg::SubtitleProbe::Forced,
            ffmpeg::SubtitleProbe::Content,
        ] {
            let jail = self.jail_for(&self.worker.ffprobe, &limits, OutAccess::None)?;
            let jail = self.launch_for(Program::Ffprobe, jail, &limits, OutAccess::None);
            let checked = ffmpeg::probe_subtitles(
                &self.worker.ffprobe,
                &self.dir,
                rel,
                demuxer,
                how,
                &self.cancel,
                jail,
            )
            .await;
            if checked.is_err() {
                return Ok(checked);
            }
        }
        Ok(Ok(()))
    }

    /// Leases the job's own uid from the spawn helper, which also bounds `out/`.
    async fn begin_identity(
        &mut self,
        spawner: std::sync::Arc<mpegflow_jail::spawner::SpawnerClient>,
        spec: &IoSpec,
    ) -> Result<(), JobFailure> {
        let fail = |e: String| {
            JobFailure::new(error_code::WORKER_ERROR, format!("job identity: {e}"), true)
        };
        // Inputs are read by the job's uid through the job's group on the directories.
        for input in &self.a.inputs {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                self.dir.join(&input.path),
                std::fs::Permissions::from_mode(0o644),
            )
            .map_err(|e| fail(e.to_string()))?;
        }
        let name = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let aliases: Vec<String> = spec.outputs.keys().cloned().collect();
        let limits = self.a.limits.unwrap_or_default();
        let uid = tokio::task::spawn_blocking(move || {
            let aliases: Vec<&str> = aliases.iter().map(String::as_str).collect();
            spawner.begin(
                &name,
                &aliases,
                limits.max_output_bytes,
                u64::from(limits.max_output_files),
            )
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
        self.job_uid = Some(uid);
        Ok(())
    }

    /// How one process of this job starts: through the spawn helper as the job's uid when
    /// there is one, else directly in `jail`.
    fn launch_for(
        &self,
        program: Program,
        jail: Option<mpegflow_jail::Prepared>,
        limits: &pb::Limits,
        out: OutAccess,
    ) -> ffmpeg::Launch {
        match (self.job_uid, &self.worker.config.spawner) {
            (Some(uid), Some(spawner)) => ffmpeg::Launch::Helper {
                spawner: spawner.clone(),
                uid,
                program,
                out,
                limits: self.jail_limits(limits),
            },
            _ => ffmpeg::Launch::Direct(jail),
        }
    }

    fn jail_limits(&self, limits: &pb::Limits) -> mpegflow_jail::Limits {
        let timeout = u64::from(limits.timeout_seconds.max(1));
        mpegflow_jail::Limits {
            address_space_bytes: self.worker.config.memory_limit_bytes,
            // FFmpeg is multi-threaded: allow several cores' worth of CPU time in the wall time.
            cpu_seconds: timeout.saturating_mul(4),
            file_size_bytes: if limits.max_output_bytes > 0 {
                limits.max_output_bytes
            } else {
                u64::MAX
            },
            ..mpegflow_jail::Limits::default()
        }
    }

    /// The jail for one FFmpeg or ffprobe process of this job, with `out` access to `out/`.
    fn jail_for(
        &self,
        program: &std::path::Path,
        limits: &pb::Limits,
        out: OutAccess,
    ) -> Result<Option<mpegflow_jail::Prepared>, JobFailure> {
        let Some(jail) = &self.worker.config.jail else {
            return Ok(None);
        };
        if self.job_uid.is_some() {
            // The helper builds the jail itself.
            return Ok(None);
        }
        let mut read = vec![self.dir.join("in")];
        let mut write = vec![];
        match out {
            OutAccess::None => {}
            OutAccess::Read => read.push(self.dir.join("out")),
            OutAccess::Write => write.push(self.dir.join("out")),
        }
        let policy = mpegflow_jail::Policy {
            read,
            write,
            limits: self.jail_limits(limits),
            identity: None,
        };
        jail.prepare(program, &policy).map(Some).map_err(|e| {
            JobFailure::new(
                error_code::WORKER_ERROR,
                format!("cannot build the jail: {e}"),
                true,
            )
        })
    }

    /// What each file FFmpeg wrote is, as media: the jailed ffprobe, as the job's own uid and
    /// before the handover (after it the job's uid cannot read `out/`), reads them two at a
    /// time, at most [`MAX_MEASURED_FILES`] within [`MEASURE_BUDGET`]. A file it cannot read as
    /// media (a playlist) gets none; only a tripped seccomp wire fails the job.
    async fn measure_outputs(
        &self,
        spec: &IoSpec,
        limits: &pb::Limits,
    ) -> Result<Vec<pb::OutputMedia>, JobFailure> {
        use futures::StreamExt;
        let names = match (self.job_uid, &self.worker.config.spawner) {
            (Some(uid), Some(spawner)) => {
                let spawner = spawner.clone();
                tokio::task::spawn_blocking(move || spawner.list_outputs(uid, MAX_MEASURED_FILES))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
            _ => list_regular_files(&self.dir.join("out"), spec, MAX_MEASURED_FILES).await,
        };
        let deadline = tokio::time::Instant::now() + MEASURE_BUDGET;
        let measured: Vec<Result<Option<pb::OutputMedia>, JobFailure>> =
            futures::stream::iter(names.into_iter().filter(|n| spec.output_of(n).is_some()))
                .map(|rel| async move {
                    // Past the budget, start nothing: a timeout polls what it bounds once
                    // before it looks at the clock, and a spawn once asked for runs to its end
                    // (the ffprobe then lives until the handover), so every file left would
                    // still cost the shared helper a spawn.
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                    let jail = self.jail_for(&self.worker.ffprobe, limits, OutAccess::Read)?;
                    let launch = self.launch_for(Program::Ffprobe, jail, limits, OutAccess::Read);
                    let path = format!("out/{rel}");
                    let probed = tokio::time::timeout_at(
                        deadline,
                        ffmpeg::probe_media(
                            &self.worker.ffprobe,
                            &self.dir,
                            &path,
                            &self.cancel,
                            launch,
                        ),
                    )
                    .await;
                    match probed {
                        Ok(Ok(media)) => Ok(media.map(|m| pb::OutputMedia {
                            path: rel,
                            media: Some(m.into()),
                        })),
                        Ok(Err(message)) => Err(JobFailure::security(message)),
                        Err(_) => Ok(None),
                    }
                })
                .buffered(2)
                .collect()
                .await;
        measured.into_iter().filter_map(Result::transpose).collect()
    }

    /// Lists what FFmpeg wrote under `out/`: regular files only (a symlink could point anywhere).
    async fn collect_outputs(
        &self,
        spec: &IoSpec,
        limits: &pb::Limits,
    ) -> Result<Vec<pb::ProducedFile>, JobFailure> {
        let rejected = |m: String| JobFailure::new(error_code::OUTPUT_REJECTED, m, false);
        let mut files = Vec::new();
        let mut total = 0u64;
        for alias in spec.outputs.keys() {
            let dir = self.dir.join("out").join(alias);
            let mut entries = tokio::fs::read_dir(&dir)
                .await
                .map_err(|e| rejected(format!("{alias}: {e}")))?;
            let mut names = Vec::new();
            while let Ok(Some(entry)) = entries.next_entry().await {
                names.push(entry.file_name());
            }
            names.sort();
            for name in names {
                let name = name
                    .to_str()
                    .ok_or_else(|| rejected(format!("{alias}: a file name is not UTF-8")))?
                    .to_owned();
                let rel = format!("{alias}/{name}");
                let path = dir.join(&name);
                let meta = tokio::fs::symlink_metadata(&path)
                    .await
                    .map_err(|e| rejected(format!("{rel}: {e}")))?;
                if !meta.file_type().is_file() {
                    return Err(rejected(format!("{rel} is not a regular file")));
                }
                if spec.output_of(&rel).is_none() {
                    return Err(rejected(format!("{rel} is not a declared output")));
                }
                total += meta.len();
                if total > limits.max_output_bytes && limits.max_output_bytes > 0 {
                    return Err(JobFailure::new(
                        error_code::OUTPUT_LIMIT,
                        format!("outputs exceed {} bytes", limits.max_output_bytes),
                        false,
                    ));
                }
                if limits.max_output_files > 0 && files.len() >= limits.max_output_files as usize {
                    return Err(JobFailure::new(
                        error_code::OUTPUT_LIMIT,
                        format!("more than {} output files", limits.max_output_files),
                        false,
                    ));
                }
                let d = transfer::digest_file(&path)
                    .await
                    .map_err(|e| rejected(format!("{rel}: {e}")))?;
                files.push(pb::ProducedFile {
                    path: rel,
                    size: d.size,
                    sha256: d.sha256,
                });
            }
        }
        for alias in spec.outputs.keys() {
            if !files
                .iter()
                .any(|f| f.path.starts_with(&format!("{alias}/")))
            {
                return Err(JobFailure::new(
                    error_code::OUTPUT_MISSING,
                    format!("ffmpeg produced nothing for output {alias:?}"),
                    false,
                ));
            }
        }
        Ok(files)
    }
}

/// Output files measured as media per job (the rest get none).
const MAX_MEASURED_FILES: usize = 256;
/// Time all measuring of one job's outputs may take.
const MEASURE_BUDGET: Duration = Duration::from_secs(60);

/// Regular files under `out/`'s declared alias directories as `alias/name`, sorted, at most
/// `max` (an unprivileged worker lists them itself).
async fn list_regular_files(out: &std::path::Path, spec: &IoSpec, max: usize) -> Vec<String> {
    let mut found = Vec::new();
    for alias in spec.outputs.keys() {
        let Ok(mut entries) = tokio::fs::read_dir(out.join(alias)).await else {
            continue;
        };
        let mut names = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            if entry.file_type().await.is_ok_and(|t| t.is_file()) {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(format!("{alias}/{name}"));
                }
            }
        }
        names.sort();
        found.extend(names);
    }
    found.truncate(max);
    found
}

/// Whether the job's bounded `out/` file system ran out of space or inodes.
fn output_fs_full(out: &std::path::Path) -> bool {
    let Ok(path) = std::ffi::CString::new(out.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statvfs fills a struct we own from a NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(path.as_ptr(), &mut st) == 0 && (st.f_bfree == 0 || st.f_ffree == 0)
    }
}

/// Maps how FFmpeg ended to the job's outcome: limits and tripwires get their own codes.
/// The kernel's count of OOM kills in `path` (/proc/vmstat or a cgroup's memory.events).
fn oom_kills(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// What FFmpeg's end says about whose fault it was. `cpu_limit_reachable`: whether the job
/// could have used up its CPU time; `oom_seen`: whether the kernel's OOM killer killed
/// something while it ran (see the caller). A SIGKILL is the platform's fault only with that
/// evidence and no limit of the job's to explain it: FFmpeg may SIGKILL itself, and a crafted
/// input must not buy free reruns that way.
fn classify_exit(
    exit: &Exit,
    stderr: &[u8],
    timeout: Duration,
    cpu_limit_reachable: bool,
    oom_seen: bool,
) -> Result<(), JobFailure> {
    let fail = |code, message: String, exit_code| {
        Err(JobFailure {
            code,
            message,
            retryable: false,
            exit_code,
        })
    };
    match *exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(c) => {
            let text = String::from_utf8_lossy(stderr);
            // FFmpeg catches SIGXCPU (the soft CPU limit) and exits "normally".
            if text.contains(&format!("received signal {}.", libc::SIGXCPU)) {
                fail(
                    error_code::TIME_LIMIT,
                    format!("ffmpeg used up its CPU time (status {c})"),
                    c,
                )
            } else if text.contains("Cannot allocate memory")
                || text.contains("Out of memory")
                || text.contains("out of memory")
            {
                fail(
                    error_code::MEMORY_LIMIT,
                    format!("ffmpeg ran out of memory (status {c})"),
                    c,
                )
            } else if text.contains("File too large") {
                fail(
                    error_code::OUTPUT_LIMIT,
                    format!("ffmpeg hit the output size limit (status {c})"),
                    c,
                )
            } else {
                fail(
                    error_code::FFMPEG_FAILED,
                    format!("ffmpeg exited with status {c}"),
                    c,
                )
            }
        }
        Exit::Signal(s) if s == libc::SIGSYS => fail(
            error_code::SECURITY_VIOLATION,
            "ffmpeg made a forbidden system call and was killed".into(),
            128 + s,
        ),
        Exit::Signal(s) if s == libc::SIGXCPU || (s == libc::SIGKILL && cpu_limit_reachable) => {
            fail(
                error_code::TIME_LIMIT,
                format!("ffmpeg used up its CPU time (signal {s})"),
                128 + s,
            )
        }
        Exit::Signal(s) if s == libc::SIGKILL && oom_seen => Err(JobFailure {
            code: error_code::KILLED,
            message: "ffmpeg was killed (SIGKILL) while the kernel's out-of-memory killer was at \
                      work, before it could have used up its CPU time"
                .into(),
            retryable: true,
            exit_code: 128 + s,
        }),
        Exit::Signal(s) if s == libc::SIGKILL => fail(
            error_code::FFMPEG_FAILED,
            "ffmpeg was killed (SIGKILL) with no sign of the out-of-memory killer".into(),
            128 + s,
        ),
        Exit::Signal(s) if s == libc::SIGXFSZ => fail(
            error_code::OUTPUT_LIMIT,
            "ffmpeg wrote a file past the output limit".into(),
            128 + s,
        ),
        Exit::Signal(s) => fail(
            error_code::FFMPEG_FAILED,
            format!("ffmpeg was killed by signal {s}"),
            128 + s,
        ),
        Exit::TimedOut => fail(
            error_code::TIME_LIMIT,
            format!("ffmpeg ran longer than {}s", timeout.as_secs()),
            -1,
        ),
        Exit::Canceled => fail(error_code::WORKER_ERROR, "canceled".into(), -1),
    }
}

/// Whether an upload that failed with `e` is tried again with fresh URLs: a 403 (a URL the
/// store no longer honours) once per file, whatever else (transient errors are the attempt's
/// to retry) never.
fn reask_after(e: &transfer::TransferError, reasked: bool) -> bool {
    !reasked && matches!(e, transfer::TransferError::Status { status: 403, .. })
}

/// Upload URLs of some of a job's files, and when to ask for fresh ones.
struct UploadUrls {
    by_path: HashMap<String, pb::UploadUrl>,
    refresh_at: Instant,
}

/// Removes a job directory. A directory the job made without read or search permission for its
/// owner (mode 0300, say; an unprivileged job shares the worker's uid) stops `remove_dir_all`
/// and would keep what it holds on disk for good: its owner opens it up again and retries. The
/// job is dead by now, so nothing swaps an entry between the look and the change.
fn remove_job_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::remove_dir_all(dir).is_ok() {
        return Ok(());
    }
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        match std::fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(e.path());
                }
            }
        }
    }
    std::fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_refused_with_403_asks_for_fresh_urls_once() {
        let status = |status| transfer::TransferError::Status {
            status,
            body: String::new(),
        };
        assert!(reask_after(&status(403), false));
        assert!(!reask_after(&status(403), true), "once per file, then fail");
        for other in [400, 404, 409, 500, 503] {
            assert!(!reask_after(&status(other), false), "{other}");
        }
        assert!(!reask_after(
            &transfer::TransferError::Mismatch("x".into()),
            false
        ));
    }

    #[test]
    fn exits_map_to_error_codes() {
        let t = Duration::from_secs(5);
        let cases: &[(Exit, &str, Option<&str>)] = &[
            (Exit::Code(0), "", None),
            (
                Exit::Code(1),
                "Invalid data found",
                Some(error_code::FFMPEG_FAILED),
            ),
            (
                Exit::Code(1),
                "x: Cannot allocate memory",
                Some(error_code::MEMORY_LIMIT),
            ),
            (
                Exit::Code(1),
                "write: File too large",
                Some(error_code::OUTPUT_LIMIT),
            ),
            (
                Exit::Signal(libc::SIGSYS),
                "",
                Some(error_code::SECURITY_VIOLATION),
            ),
            (
                Exit::Signal(libc::SIGXCPU),
                "",
                Some(error_code::TIME_LIMIT),
            ),
            (
                Exit::Signal(libc::SIGKILL),
                "",
                Some(error_code::TIME_LIMIT),
            ),
            (
                Exit::Code(255),
                "Exiting normally, received signal 24.",
                Some(error_code::TIME_LIMIT),
            ),
            (
                Exit::Signal(libc::SIGXFSZ),
                "",
                Some(error_code::OUTPUT_LIMIT),
            ),
            (
                Exit::Signal(libc::SIGSEGV),
                "",
                Some(error_code::FFMPEG_FAILED),
            ),
            (Exit::TimedOut, "", Some(error_code::TIME_LIMIT)),
        ];
        for (exit, stderr, want) in cases {
            let got = classify_exit(exit, stderr.as_bytes(), t, true, false)
                .err()
                .map(|f| f.code);
            assert_eq!(got, *want, "{exit:?}");
            if let Err(f) = classify_exit(exit, stderr.as_bytes(), t, true, false) {
                assert!(!f.retryable, "a job's own failure is not retried elsewhere");
            }
        }
    }

    #[test]
    fn a_sigkill_is_the_platforms_fault_only_with_the_oom_killer_at_work() {
        let t = Duration::from_secs(5);
        let kill = Exit::Signal(libc::SIGKILL);
        let f = classify_exit(&kill, b"", t, false, true).unwrap_err();
        assert_eq!(f.code, error_code::KILLED);
        assert!(f.retryable);
        assert_eq!(
            mpegflow_domain::job::Failure {
                code: f.code.into(),
                message: f.message,
                retryable: f.retryable
            }
            .fault(),
            mpegflow_domain::job::Fault::Platform
        );
        // No OOM kill seen: FFmpeg (or the tenant's code in it) killed itself.
        let f = classify_exit(&kill, b"", t, false, false).unwrap_err();
        assert_eq!((f.code, f.retryable), (error_code::FFMPEG_FAILED, false));
        // SIGXCPU is the limit's own signal, whatever the time.
        let f = classify_exit(&Exit::Signal(libc::SIGXCPU), b"", t, false, true).unwrap_err();
        assert_eq!(f.code, error_code::TIME_LIMIT);
    }

    #[test]
    fn the_oom_kill_count_is_read_from_vmstat_or_memory_events() {
        let dir = std::env::temp_dir().join(format!("mf-oom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let events = dir.join("memory.events");
        std::fs::write(&events, "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&events), Some(2));
        std::fs::write(&events, "oom_kill_disable 0\n").unwrap();
        assert_eq!(oom_kills(&events), None);
        assert_eq!(oom_kills(&dir.join("absent")), None);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(oom_kills(std::path::Path::new("/proc/vmstat")).is_some());
    }
}
