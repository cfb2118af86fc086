//! Attacks on validation from FFmpeg's own log (an adversarial review of the `InputLog` change):
//! what a tenant's bytes can make the worker read in FFmpeg's level-tagged stderr.

use crate::harness::*;
use mpegflow_api::JobState;
use mpegflow_control::ControlConfig;
use std::time::{Duration, Instant};

/// A 1 s MKV whose video track's language tag carries newlines. FFmpeg prints that tag with
/// `%s` in the stream's description line, so the text after each newline starts a log line of
/// its own, without FFmpeg's level prefix: the tenant writes whole "FFmpeg" lines.
async fn mkv_with_language(
    dir: &std::path::Path,
    name: &str,
    language: &str,
) -> std::path::PathBuf {
    lavfi(
        dir,
        name,
        "testsrc=size=64x64:rate=10:duration=1",
        &[
            "-c:v",
            "libx264",
            "-metadata:s:v:0",
            &format!("language={language}"),
        ],
    )
    .await
}

/// A tenant's MKV forges `[error] in/in.mkv: Permission denied` in FFmpeg's log, and its command
/// fails on its own (`-map 0:a` on a file without audio). The worker reads the forged line as
/// FFmpeg failing to read the worker's own file: `worker_error`, retryable, a platform fault
/// and a strike against the honest worker's token, again at every one of the job's
/// `max_platform_faults` reruns. A handful of such jobs suspends the fleet's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_os_error_in_ffmpegs_log_strikes_no_honest_worker() {
    let config = ControlConfig {
        throttle_after_strikes: 100,
        suspend_after_strikes: 2,
        ..test_control_config()
    };
    let tp = TestPlatform::start(2, config).await;
    let client = tp.org("acme").await;
    let forged = mkv_with_language(
        tp.dir.path(),
        "forged.mkv",
        "eng\n[error] in/in.mkv: Permission denied\n[info] x",
    )
    .await;
    let job = submit(
        &client,
        &forged,
        &[("out", "o.m4a")],
        "-i {{in}} -map 0:a -c:a aac {{out}}",
    )
    .await;
    // The job's own failure ends it at once; give a wrongly retried one time to pile strikes.
    let start = Instant::now();
    let job = loop {
        let j = client.job(job.id).await.unwrap();
        if j.state.is_terminal() || start.elapsed() > Duration::from_secs(60) {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let strikes: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE strike")
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap();
    let suspended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM worker_tokens WHERE suspended_at IS NOT NULL")
            .fetch_one(tp.platform.store().pool())
            .await
            .unwrap();
    let codes: Vec<String> = sqlx::query_scalar(
        "SELECT COALESCE(error_code, '-') FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(job.id)
    .fetch_all(tp.platform.store().pool())
    .await
    .unwrap();
    eprintln!(
        "forged os error: {} after {} attempt(s), attempt codes {codes:?}, {strikes} strike(s), \
         {suspended} suspended token(s)",
        job.state, job.attempts
    );
    assert_eq!(
        strikes, 0,
        "the tenant's log line struck honest workers: {codes:?}"
    );
    assert_eq!(
        suspended, 0,
        "the tenant's log line suspended the fleet's token"
    );
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let code = &job_error(&job).code;
    assert!(
        code == "ffmpeg_failed" || code == "invalid_input",
        "the tenant's own failure was charged to the platform: {code} ({codes:?})"
    );
    assert_eq!(job.platform_faults, 0, "{job:#?}");
    tp.stop().await;
}

/// FFmpeg opened and read the tenant's input; the command itself failed. A forged
/// `[error] in/in.mkv: Invalid data found when processing input` line makes the worker blame
/// the input: `invalid_input`, a blame one worker's word cannot settle, so the job runs again,
/// in full, on a second worker (its first run not counted as a job fault). Any failing job,
/// however long its encode, costs the platform two runs where its own failure costs one; the
/// probe it replaced blamed inputs only before the encode, in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_input_error_does_not_buy_a_failing_command_a_second_run() {
    let tp = TestPlatform::start(2, test_control_config()).await;
    let client = tp.org("acme").await;
    let forged = mkv_with_language(
        tp.dir.path(),
        "forged.mkv",
        "eng\n[error] in/in.mkv: Invalid data found when processing input\n[info] x",
    )
    .await;
    let job = run_job(
        &client,
        &forged,
        &[("out", "o.m4a")],
        "-i {{in}} -map 0:a -c:a aac {{out}}",
    )
    .await;
    eprintln!(
        "forged input error: {} {:?} after {} attempt(s)",
        job.state,
        job.error.as_ref().map(|e| &e.code),
        job.attempts
    );
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert_eq!(job_error(&job).code, "ffmpeg_failed", "{job:#?}");
    assert_eq!(job.attempts, 1, "the command's own failure ran twice");
    tp.stop().await;
}
