//! Attacks on the broker by a holder of one worker token, played over raw gRPC against a real
//! platform: more leases than the token's worker cap, and a tenant's job held past its timeout.

use crate::harness::*;
use mpegflow_api::{self as api, JobState};
use mpegflow_control::ControlConfig;
use mpegflow_proto as pb;
use std::time::{Duration, Instant};
use tonic::Code;

async fn running_jobs(tp: &TestPlatform) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap()
}

/// One registration asks for work several times at once: it must still hold one job at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_never_holds_two_leases_through_concurrent_polls() {
    let Queued { tp, .. } = Queued::start(test_control_config(), 4).await;
    let (_, token) = tp.worker_token_with("default", max_workers(4)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let mut polls = Vec::new();
    for _ in 0..4 {
        let (mut r, w) = (r.clone(), w.clone());
        polls.push(tokio::spawn(async move { r.poll(&w, 2).await }));
    }
    let mut assigned = 0;
    for p in polls {
        match p.await.unwrap() {
            Ok(Some(_)) => assigned += 1,
            Ok(None) => {}
            Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
        }
    }
    assert_eq!(assigned, 1, "one worker was handed {assigned} jobs at once");
    assert_eq!(running_jobs(&tp).await, 1);
    tp.stop().await;
}

/// A worker whose registration lapsed keeps its lease alive by heartbeats, and its slot is
/// taken by a fresh registration that claims another job: the token must still hold no more
/// leases than its maximum of workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_registrations_cannot_multiply_a_tokens_leases() {
    let config = ControlConfig {
        worker_ttl_seconds: 1,
        lease_seconds: 30,
        ..test_control_config()
    };
    let Queued { tp, .. } = Queued::start(config, 4).await;
    let (_, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let mut held: Vec<(String, pb::JobAssignment)> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) && held.len() < 4 {
        if let Ok(w) = r.register().await {
            if let Ok(Some(a)) = r.poll(&w, 1).await {
                held.push((w, a));
            }
        }
        // Fall silent past the registration TTL (well within the lease), then keep every
        // lease alive from the lapsed registrations.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        for (w, a) in &held {
            let _ = r.heartbeat(w, a, false).await;
        }
    }
    let mut alive = 0;
    for (w, a) in &held {
        if r.heartbeat(w, a, false).await.is_ok_and(|h| !h.cancel) {
            alive += 1;
        }
    }
    assert!(
        alive <= 1 && running_jobs(&tp).await <= 1,
        "a token capped at 1 worker holds {alive} live leases ({} jobs running)",
        running_jobs(&tp).await
    );
    tp.stop().await;
}

/// A rogue worker that heartbeats forever and never reports must not keep a tenant's job
/// running past the job's own timeout: the lease stops being extended and the job moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeating_rogue_cannot_hold_a_job_past_its_timeout() {
    let config = ControlConfig {
        lease_seconds: 2,
        attempt_grace_seconds: 2,
        max_attempts: 1,
        // The rogue's lost lease is a platform fault: the job's only one allowed here.
        max_platform_faults: 1,
        ..test_control_config()
    };
    let tp = TestPlatform::start(0, config).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let asset = client.upload(&input).await.unwrap();
    let mut job =
        api::JobIn::new([("in", asset.id)], [("out", "o.mp4")], "-i {{in}} {{out}}").unwrap();
    job.timeout_seconds = Some(api::TimeoutSeconds::parse(1).unwrap());
    let id = client.submit(&job).await.unwrap().id;
    let (_, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let a = r
        .poll(&w, 2)
        .await
        .unwrap()
        .expect("the rogue gets the job");
    assert_eq!(a.job_id, id.to_string());
    // Far past timeout + lease + the upload allowance, the rogue still heartbeats.
    let start = Instant::now();
    let mut refused = None;
    while start.elapsed() < Duration::from_secs(40) {
        match r.heartbeat(&w, &a, false).await {
            Ok(_) => {}
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let refused = refused.expect("the rogue held the job running past its timeout");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let job = wait_for_state(&client, id, JobState::Failed).await;
    assert_eq!(job_error(&job).code, "lease_expired", "{job:#?}");
    tp.stop().await;
}

/// FFmpeg (the tenant's code, in the threat model) writes a NUL byte to stderr. An honest
/// worker forwards its stderr as it is; the coordinator must still record the attempt, or each
/// such job costs the honest token a strike until the pool's token is suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_on_ffmpegs_stderr_does_not_break_an_honest_workers_report() {
    let config = ControlConfig {
        max_attempts: 1,
        ..test_control_config()
    };
    let HostilePlatform {
        tp,
        client,
        clip,
        token_id,
        ..
    } = HostilePlatform::start(config).await;
    for (exit, state) in [(0, JobState::Succeeded), (1, JobState::Failed)] {
        let id = submit_attack(&client, &clip, &format!("stderr_nul:{exit}"), 60).await;
        let job = client.wait(id, |_| {}).await.unwrap();
        assert_eq!(job.state, state, "{job:#?}");
        if state == JobState::Failed {
            let error = job_error(&job);
            assert_eq!(error.code, "ffmpeg_failed", "{job:#?}");
            let tail = error.stderr_tail.as_deref().unwrap();
            assert!(
                tail.contains("before") && tail.contains("after"),
                "{tail:?}"
            );
        }
        assert_eq!(job.attempts, 1, "{job:#?}");
    }
    assert_eq!(
        strikes(&tp, token_id).await,
        0,
        "the honest token was struck"
    );
    tp.stop().await;
}

/// Everything a worker says is text the coordinator stores: NUL characters in any field get
/// a clean answer, never an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_from_a_rogue_worker_get_no_internal_error() {
    let Queued { tp, client, jobs } = Queued::start(test_control_config(), 1).await;
    let job = &jobs[0];
    let (_, token) = tp.worker_token_with("default", max_workers(2)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    // A NUL, and terminal escapes (a clipboard write, clear screen) aimed at whoever reads the job.
    let nul = "a\0b\u{1b}]52;c;aGk=\u{7}\u{1b}[2J\u{9b}";
    let req = r.req(pb::RegisterWorkerRequest {
        hostname: nul.into(),
        worker_version: nul.into(),
        ffmpeg_version: nul.into(),
        image_hash: nul.into(),
        fingerprint: Some(pb::FfmpegFingerprint {
            version: format!("{}\0", fingerprint().version),
            ..fingerprint()
        }),
    });
    let registered = r.client.register_worker(req).await;
    assert!(
        !matches!(&registered, Err(s) if s.code() == Code::Internal || s.code() == Code::Unknown),
        "{registered:?}"
    );
    let w = r.register().await.unwrap();
    let a = r
        .poll(&w, 2)
        .await
        .unwrap()
        .expect("the rogue gets the job");
    let req = r.req(pb::ReportJobStatusRequest {
        worker_id: w.clone(),
        job_id: a.job_id.clone(),
        fencing_token: a.fencing_token.clone(),
        outcome: pb::Outcome::Failed as i32,
        error_code: "ffmpeg_failed".into(),
        error_message: nul.into(),
        retryable: false,
        exit_code: 1,
        ffmpeg_version: nul.into(),
        stages: vec![pb::Stage {
            name: nul.into(),
            ..Default::default()
        }],
        inputs: vec![pb::InputHash {
            alias: nul.into(),
            sha256: nul.into(),
            ..Default::default()
        }],
        outputs: vec![pb::ProducedFile {
            path: nul.into(),
            sha256: nul.into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let reported = r.client.report_job_status(req).await;
    assert!(reported.is_ok(), "{reported:?}");
    let job = client.job(job.id).await.unwrap();
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let error = job_error(&job);
    assert_eq!(error.code, "ffmpeg_failed", "{job:#?}");
    let message = error.message.as_deref().unwrap_or_default();
    assert!(message.starts_with('a'), "{message:?}");
    assert!(
        !message.chars().any(char::is_control),
        "control characters reach the reader: {message:?}"
    );
    tp.stop().await;
}

/// A long-poll opened before its token was revoked must not be handed a job afterwards:
/// revocation is immediate, including for calls already waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_open_across_revocation_gets_no_job() {
    let config = ControlConfig {
        max_poll_seconds: 10,
        ..test_control_config()
    };
    let tp = TestPlatform::start(0, config).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let asset = client.upload(&input).await.unwrap();
    let (token_id, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let poll = {
        let (mut r, w) = (r.clone(), w.clone());
        tokio::spawn(async move { r.poll(&w, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tp.platform
        .store()
        .revoke_worker_token(token_id)
        .await
        .unwrap();
    let job = client
        .submit(
            &api::JobIn::new([("in", asset.id)], [("out", "o.mp4")], "-i {{in}} {{out}}").unwrap(),
        )
        .await
        .unwrap();
    let answer = poll.await.unwrap();
    assert!(
        !matches!(&answer, Ok(Some(_))),
        "a revoked token's open long-poll was handed job {}",
        job.id
    );
    let job = client.job(job.id).await.unwrap();
    assert_eq!(job.state, JobState::Queued, "{job:#?}");
    tp.stop().await;
}

/// A running job's live figures are a worker's word. Whatever a rogue worker sends as stage,
/// speed, fps and progress (NaN, infinities, negative, huge or subnormal numbers, unknown
/// stages with NUL and terminal escapes), the tenant reads the job (200, valid JSON of the
/// contract) and sees only a known stage and plausible figures, or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_workers_live_figures_reach_the_tenant_bounded_or_not_at_all() {
    let Queued { tp, client, jobs } = Queued::start(test_control_config(), 1).await;
    let job = &jobs[0];
    let (_, token) = tp.worker_token_with("default", max_workers(2)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let a = r
        .poll(&w, 2)
        .await
        .unwrap()
        .expect("the rogue gets the job");
    let odd = [
        ("a\0b\u{1b}[2J\u{9b}", f32::NAN, f32::NAN, f32::NAN),
        ("encode\0", f32::INFINITY, f32::NEG_INFINITY, f32::INFINITY),
        ("ENCODE", -1.0, -0.0, 2.0),
        ("encode ", f32::MAX, 1e30, -0.5),
        ("upload", f32::MIN_POSITIVE / 2.0, 1e-45, 1e-45),
        ("encode", 2.5, 50.0, 0.5),
    ];
    for (stage, speed, fps, progress) in odd {
        let req = r.req(pb::HeartbeatRequest {
            worker_id: w.clone(),
            job_id: a.job_id.clone(),
            fencing_token: a.fencing_token.clone(),
            progress,
            stage: stage.into(),
            speed,
            fps,
            refresh_input_urls: false,
        });
        r.client.heartbeat(req).await.unwrap();
        let raw = client
            .call(
                reqwest::Method::GET,
                &format!("/v1/jobs/{}", job.id),
                None::<&()>,
                &[],
            )
            .await
            .unwrap();
        assert_eq!(raw.status, 200, "{stage:?}: {}", raw.body);
        let seen: api::Job = raw.json().unwrap();
        assert_eq!(seen.state, JobState::Running);
        let live = seen.live.expect("a running job shows its live figures");
        assert!(
            live.stage
                .as_deref()
                .is_none_or(|s| { mpegflow_domain::job::STAGES.contains(&s) }),
            "{live:?}"
        );
        for v in [live.speed, live.fps].into_iter().flatten() {
            assert!(v.is_finite() && v > 0.0 && v < 1e5, "{live:?}");
        }
        if let Some(p) = seen.progress {
            assert!((0.0..=1.0).contains(&p), "{p}");
        }
    }
    // The last, honest heartbeat is shown as sent.
    let seen = client.job(job.id).await.unwrap();
    let live = seen.live.unwrap();
    assert_eq!(
        (live.stage.as_deref(), live.speed, live.fps, seen.progress),
        (Some("encode"), Some(2.5), Some(50.0), Some(0.5))
    );
    tp.stop().await;
}
