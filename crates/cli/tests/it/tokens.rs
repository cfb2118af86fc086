//! A worker token's blast radius: live-worker caps, long-poll caps, throttling and suspension,
//! blame that needs a second worker, input URLs that die with the lease, FFmpeg fingerprints.
//! Rogue workers are played over raw gRPC with real tokens against a real platform.

use crate::harness::*;
use mpegflow_api::JobState;
use mpegflow_control::ControlConfig;
use mpegflow_proto as pb;
use serde_json::Value;
use std::time::{Duration, Instant};
use tonic::Code;

async fn audit_rows(
    tp: &TestPlatform,
    action: &str,
) -> Vec<(Option<uuid::Uuid>, Option<String>, Value)> {
    sqlx::query_as("SELECT job_id, subject, details FROM audit_logs WHERE action = $1 ORDER BY id")
        .bind(action)
        .fetch_all(tp.platform.store().pool())
        .await
        .unwrap()
}

/// A counter of the platform's /metrics, as an operator reads it.
fn metric(tp: &TestPlatform, name: &str) -> u64 {
    let text = tp.platform.state.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_token_cannot_register_more_workers_until_a_registration_lapses() {
    let config = ControlConfig {
        worker_ttl_seconds: 2,
        ..test_control_config()
    };
    let tp = TestPlatform::start(0, config).await;
    let (_, token) = tp.worker_token_with("default", max_workers(2)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w1 = r.register().await.unwrap();
    let w2 = r.register().await.unwrap();
    let refused = r.register().await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("maximum (2)"),
        "{}",
        refused.message()
    );
    // Another token's workers are unaffected.
    let (_, other) = tp.worker_token_with("default", max_workers(1)).await;
    RawWorker::connect(&tp, &other)
        .await
        .register()
        .await
        .unwrap();

    // w1 keeps calling; w2 falls silent. Once w2's registration lapses, a new worker takes
    // its place, and w2 must register again (and is refused: the slots are full).
    let mut w3 = None;
    let start = Instant::now();
    while w3.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "w2's registration never lapsed"
        );
        assert!(r.poll(&w1, 0).await.unwrap().is_none());
        match r.register().await {
            Ok(id) => w3 = Some(id),
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let w3 = w3.unwrap();
    let expired = r.poll(&w2, 0).await.unwrap_err();
    assert_eq!(expired.code(), Code::PermissionDenied);
    assert!(
        expired.message().contains("register again"),
        "{}",
        expired.message()
    );
    assert_eq!(
        r.register().await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    assert!(
        r.poll(&w3, 0).await.unwrap().is_none(),
        "the replacement works"
    );
    assert!(metric(&tp, "mpegflow_worker_registrations_refused_total") >= 2);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_concurrent_long_polls_per_token_are_refused() {
    let config = ControlConfig {
        max_poll_seconds: 30,
        ..test_control_config()
    };
    let tp = TestPlatform::start(0, config).await;
    let (_, token) = tp.worker_token_with("default", max_workers(2)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w1 = r.register().await.unwrap();
    let w2 = r.register().await.unwrap();
    // Two long-polls open (the token's maximum), then more from the same workers. The long
    // polls hold for 30 s so that a slow start on a loaded machine still overlaps the window.
    // A probe below holds a slot for an instant; a long-poll that starts in that instant is
    // refused, and tries again, so that both end up open whatever the scheduling.
    let mut open = Vec::new();
    for w in [&w1, &w2] {
        let (mut r, w) = (r.clone(), w.clone());
        open.push(tokio::spawn(async move {
            loop {
                match r.poll(&w, 30).await {
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => return other,
                }
            }
        }));
    }
    let refused = eventually(
        "a third long-poll to be refused",
        Duration::from_secs(25),
        || {
            let (mut r, w) = (r.clone(), w1.clone());
            async move {
                match r.poll(&w, 0).await {
                    Err(s) if s.code() == Code::ResourceExhausted => Some(s),
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(
        refused.message().contains("open GetWorkAssignment calls"),
        "{}",
        refused.message()
    );
    for t in open {
        assert!(t.await.unwrap().unwrap().is_none());
    }
    // The slots come back when the calls end.
    assert!(r.poll(&w1, 0).await.unwrap().is_none());
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_failing_fast_is_throttled_then_suspended_and_its_jobs_stay_runnable() {
    let config = ControlConfig {
        throttle_after_strikes: 2,
        throttle_base_ms: 300,
        throttle_max_ms: 1_000,
        suspend_after_strikes: 5,
        max_attempts: 6,
        max_platform_faults: 6,
        ..test_control_config()
    };
    let mut tp = TestPlatform::start(0, config).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = submit(
            &client,
            &input,
            &[("out", "o.mp4")],
            "-i {{in}} -c:v libx264 -preset veryfast {{out}}",
        )
        .await;
        ids.push(job.id);
    }
    // Room for a second registration after the suspension is lifted.
    let (rogue_token, token) = tp.worker_token_with("default", max_workers(2)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();

    // Drain attempt: take every job and fail it at once as infrastructure trouble, until the
    // coordinator stops answering. (Blaming the tenant instead is no strike at all: a
    // second worker must confirm it, see `fault_attacks`.)
    let mut failed = 0;
    let refusal = loop {
        assert!(failed <= 5, "the token was never suspended");
        match r.poll(&w, 2).await {
            Ok(Some(a)) => {
                let code = if failed % 2 == 0 {
                    "worker_error"
                } else {
                    "output_upload_failed"
                };
                if r.fail(&w, &a, code, true).await.is_ok() {
                    failed += 1;
                }
            }
            Ok(None) => {}
            Err(s) => break s,
        }
    };
    assert_eq!(refusal.code(), Code::PermissionDenied, "{refusal:?}");
    assert!(
        refusal.message().contains("suspended"),
        "{}",
        refusal.message()
    );
    assert_eq!(failed, 5);
    assert!(
        metric(&tp, "mpegflow_assignments_throttled_total") > 0,
        "throttled before suspension"
    );
    let suspended = audit_rows(&tp, "worker_token.suspended").await;
    assert_eq!(suspended.len(), 1);
    assert_eq!(
        suspended[0].1.as_deref(),
        Some(rogue_token.to_string().as_str())
    );
    assert_eq!(suspended[0].2["strikes"], 5);
    // Suspended means suspended: no new registrations either.
    assert_eq!(
        r.register().await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Nothing was lost: the jobs are still queued, and another token's worker finishes them.
    for id in &ids {
        let job = client.job(*id).await.unwrap();
        assert_eq!(job.state, JobState::Queued, "{job:#?}");
    }
    let (_, honest) = tp.worker_token("default").await;
    tp.platform.spawn_worker(&honest).await.unwrap();
    for id in &ids {
        let job = client.wait(*id, |_| {}).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    }

    // An admin lifts the suspension; the token works again.
    tp.platform
        .store()
        .unsuspend_worker_token(rogue_token)
        .await
        .unwrap();
    let w = r.register().await.unwrap();
    assert!(r.poll(&w, 0).await.unwrap().is_none());
    assert_eq!(audit_rows(&tp, "worker_token.unsuspended").await.len(), 1);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_crashes_do_not_suspend_a_token() {
    // Default strike thresholds; 19 leases lost by 2 workers within well under a minute.
    let config = ControlConfig {
        lease_seconds: 1,
        max_attempts: 30,
        max_platform_faults: 30,
        ..test_control_config()
    };
    let Queued { tp, .. } = Queued::start(config, 4).await;
    let (token_id, token) = tp.worker_token_with("default", max_workers(2)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let workers = [r.register().await.unwrap(), r.register().await.unwrap()];
    let pool = tp.platform.store().pool().clone();
    let lost = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_attempts WHERE token_id = $1 AND outcome = 'lease_expired'",
        )
        .bind(token_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        n
    };
    // Each worker takes a job and "dies" (never heartbeats); the reaper takes the lease back.
    let start = Instant::now();
    while lost().await < 19 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "too slow: {} leases lost",
            lost().await
        );
        for w in &workers {
            match r.poll(w, 1).await {
                Ok(_) => {}
                Err(s) => {
                    assert_eq!(
                        s.code(),
                        Code::FailedPrecondition,
                        "only 'lease held' is expected: {s:?}"
                    );
                }
            }
        }
    }
    assert!(audit_rows(&tp, "worker_token.suspended").await.is_empty());
    let strikes = strikes(&tp, token_id).await;
    assert!(strikes >= 19, "{strikes}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_workers_blame_is_not_trusted() {
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let command = "-i {{in}} -c:v libx264 -preset veryfast {{out}}";
    let branded = submit(&client, &input, &[("out", "o.mp4")], command).await;
    let branded2 = submit(&client, &input, &[("out", "o.mp4")], command).await;
    let (_, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();

    // The rogue brands the tenant's jobs.
    let mut branded_ids = Vec::new();
    for code in ["security_violation", "invalid_input"] {
        let a = r.poll(&w, 2).await.unwrap().expect("the rogue gets a job");
        r.fail(&w, &a, code, false).await.unwrap();
        branded_ids.push(a.job_id);
    }
    branded_ids.sort();
    let mut want = vec![branded.id.to_string(), branded2.id.to_string()];
    want.sort();
    assert_eq!(branded_ids, want);
    for id in &branded_ids {
        let job = client.job(id.parse().unwrap()).await.unwrap();
        assert_eq!(
            job.state,
            JobState::Queued,
            "one worker's word is not final: {job:#?}"
        );
    }
    // Not back to the same worker.
    assert!(r.poll(&w, 1).await.unwrap().is_none());
    let unconfirmed = audit_rows(&tp, "job.blame_unconfirmed").await;
    assert_eq!(unconfirmed.len(), 2);
    let codes: Vec<_> = unconfirmed
        .iter()
        .map(|u| u.2["error_code"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        codes.contains(&"security_violation".into()) && codes.contains(&"invalid_input".into())
    );
    assert!(unconfirmed
        .iter()
        .all(|u| u.1.as_deref() == Some(w.as_str())));

    // An honest worker of another token runs them: they succeed, and no security event stands.
    let (_, honest) = tp.worker_token("default").await;
    tp.platform.spawn_worker(&honest).await.unwrap();
    for id in &branded_ids {
        let job = client.wait(id.parse().unwrap(), |_| {}).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
        let history = history(&job);
        assert_eq!(history.len(), 2, "{job:#?}");
        assert_eq!(history[0].worker_id.to_string(), w);
        assert_ne!(history[1].worker_id.to_string(), w);
    }
    assert!(audit_rows(&tp, "security.violation").await.is_empty());
    assert_eq!(metric(&tp, "mpegflow_security_violations_total"), 0);
    assert_eq!(metric(&tp, "mpegflow_blame_unconfirmed_total"), 2);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blame_is_final_once_a_worker_of_another_token_confirms_it() {
    let Queued { tp, client, jobs } = Queued::start(test_control_config(), 1).await;
    let job = &jobs[0];
    let id = job.id;
    let (_, t1) = tp.worker_token_with("default", max_workers(2)).await;
    let (_, t2) = tp.worker_token_with("default", max_workers(1)).await;
    let mut a = RawWorker::connect(&tp, &t1).await;
    let mut b = RawWorker::connect(&tp, &t2).await;
    let wa = a.register().await.unwrap();
    let wa2 = a.register().await.unwrap();
    let wb = b.register().await.unwrap();
    let got = a.poll(&wa, 2).await.unwrap().unwrap();
    a.fail(&wa, &got, "security_violation", false)
        .await
        .unwrap();
    // While a worker of another token is live, the blamer's own token does not confirm.
    assert!(a.poll(&wa2, 1).await.unwrap().is_none());
    let again = b
        .poll(&wb, 2)
        .await
        .unwrap()
        .expect("the other token's worker gets it");
    assert_eq!(again.job_id, id.to_string());
    b.fail(&wb, &again, "security_violation", false)
        .await
        .unwrap();
    let job = client.job(id).await.unwrap();
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert_eq!(job_error(&job).code, "security_violation");
    assert_eq!(audit_rows(&tp, "job.blame_unconfirmed").await.len(), 1);
    assert_eq!(audit_rows(&tp, "security.violation").await.len(), 1);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_urls_expire_with_the_lease_and_are_reissued_to_the_holder_only() {
    let config = ControlConfig {
        lease_seconds: 3,
        input_url_slack_seconds: 2,
        ..test_control_config()
    };
    let Queued { tp, client, .. } = Queued::start(config, 1).await;
    let (_, token) = tp.worker_token("default").await;
    let (_, other_token) = tp.worker_token("default").await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let mut o = RawWorker::connect(&tp, &other_token).await;
    let w = r.register().await.unwrap();
    let w_same_token = r.register().await.unwrap();
    let w_other = o.register().await.unwrap();
    let a = r.poll(&w, 2).await.unwrap().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let first = a.inputs[0].clone();
    assert!(
        first.url_expires_at_unix <= now + 3 + 2 + 1,
        "lives as long as the lease (+ slack): {} vs now {now}",
        first.url_expires_at_unix
    );
    assert!(first.url.contains("X-Amz-Expires=5"), "{}", first.url);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(first.url.clone()).await, 200);

    // Someone else asking for the URLs, with the leaked fencing token, gets none.
    let err = o.heartbeat(&w_other, &a, true).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = r.heartbeat(&w_same_token, &a, true).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = o.heartbeat(&w, &a, true).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "another token cannot speak for the holder: {err:?}"
    );

    // The holder keeps its lease alive past the first URLs' expiry, then asks for fresh ones.
    let hb = r.heartbeat(&w, &a, false).await.unwrap();
    assert!(hb.inputs.is_empty(), "URLs only when asked for");
    while time::OffsetDateTime::now_utc().unix_timestamp() <= first.url_expires_at_unix + 1 {
        r.heartbeat(&w, &a, false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        get(first.url.clone()).await,
        403,
        "the first URL died with its lease time"
    );
    let fresh = r.heartbeat(&w, &a, true).await.unwrap().inputs;
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].alias, first.alias);
    assert!(fresh[0].url_expires_at_unix > first.url_expires_at_unix);
    assert_eq!(get(fresh[0].url.clone()).await, 200);
    let reissued = audit_rows(&tp, "presign.get").await;
    assert_eq!(reissued.len(), 2, "each issue is audited");

    // Once the lease is gone, no more URLs.
    wait_for_state(&client, a.job_id.parse().unwrap(), JobState::Queued).await;
    let err = r.heartbeat(&w, &a, true).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_ffmpeg_grammar_differs_gets_no_work() {
    let Queued { tp, jobs, .. } = Queued::start(test_control_config(), 1).await;
    let job = &jobs[0];
    let (_, token) = tp.worker_token("default").await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let newer = r.register_as(fingerprint_of("7.1")).await.unwrap();
    // Claiming the right grammar with another release's version line is no better.
    let liar = r
        .register_as(pb::FfmpegFingerprint {
            grammar: mpegflow_domain::fingerprint::COMMAND_GRAMMAR.into(),
            ..fingerprint_of("7.1")
        })
        .await
        .unwrap();
    for w in [&newer, &liar] {
        assert!(
            r.poll(w, 1).await.unwrap().is_none(),
            "a mismatching FFmpeg gets no work"
        );
    }
    let recorded: String = sqlx::query_scalar("SELECT grammar FROM jobs WHERE id = $1::uuid")
        .bind(job.id.to_string())
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap();
    assert_eq!(recorded, mpegflow_domain::fingerprint::COMMAND_GRAMMAR);
    let mismatches = audit_rows(&tp, "worker.fingerprint_mismatch").await;
    assert_eq!(mismatches.len(), 2);
    assert_eq!(
        metric(&tp, "mpegflow_worker_fingerprint_mismatches_total"),
        2
    );
    let matching = r.register().await.unwrap();
    let got = r
        .poll(&matching, 2)
        .await
        .unwrap()
        .expect("a matching FFmpeg gets the job");
    assert_eq!(got.job_id, job.id.to_string());
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_rate_limited_per_peer_before_the_database() {
    let config = ControlConfig {
        auth_failure_burst: 5,
        auth_failures_per_minute: 1,
        ..test_control_config()
    };
    let tp = TestPlatform::start(0, config).await;
    let (_, token) = tp.worker_token("default").await;
    let mut good = RawWorker::connect(&tp, &token).await;
    good.register().await.unwrap();
    let mut bad = RawWorker::connect(&tp, &format!("mfw_{}", "cd".repeat(32))).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(bad.register().await.unwrap_err().code());
    }
    assert_eq!(&codes[..5], &[Code::Unauthenticated; 5]);
    assert!(
        codes[5..].iter().all(|c| *c == Code::ResourceExhausted),
        "{codes:?}"
    );
    // From this address even a valid token waits: the check comes before any lookup.
    assert_eq!(
        good.register().await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    assert_eq!(metric(&tp, "mpegflow_coordinator_auth_failures_total"), 9);
    tp.stop().await;
}
