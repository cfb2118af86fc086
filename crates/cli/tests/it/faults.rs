//! What faults cost a job: a platform fault (a store, the database, a lost or abandoning
//! worker) spends none of its attempts and keeps its place in the queue; only the job's own
//! faults count against `max_attempts`. Leases are exact: past `lease_expires_at` nothing is
//! extended, granted or recorded for the attempt.

use crate::harness::*;
use mpegflow_api::{self as api, JobState};
use mpegflow_control::ControlConfig;
use mpegflow_proto as pb;
use std::time::Duration;
use tonic::Code;

async fn job(client: &mpegflow::client::ApiClient, id: uuid::Uuid) -> api::Job {
    client.job(id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_fault_costs_no_attempt_and_the_job_keeps_its_place_in_the_queue() {
    // One attempt for the job's own faults: a platform fault that spent it would fail the job.
    let config = ControlConfig {
        max_attempts: 1,
        // Three platform faults are retried; the fourth is final.
        max_platform_faults: 4,
        ..test_control_config()
    };
    let Queued { tp, client, jobs } = Queued::start(config, 2).await;
    let (first, second) = (jobs[0].id, jobs[1].id);
    let (_, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();

    // Three platform faults in a row (the store refused the upload, the worker crashed, the
    // host killed FFmpeg): each time the job is back at the head of the queue at once.
    for (round, code) in ["output_upload_failed", "worker_error", "killed"]
        .into_iter()
        .enumerate()
    {
        let a = r.poll(&w, 2).await.unwrap().expect("a job");
        assert_eq!(
            a.job_id,
            first.to_string(),
            "round {round}: the oldest job first, again"
        );
        r.fail(&w, &a, code, true).await.unwrap();
        let j = job(&client, first).await;
        assert_eq!(j.state, JobState::Queued, "round {round}: {j:#?}");
        assert_eq!(j.job_faults, 0, "round {round}: {j:#?}");
        assert_eq!(j.platform_faults, round as u32 + 1, "{j:#?}");
        assert_eq!(
            history(&j)[round].fault,
            Some(api::Fault::Platform),
            "{j:#?}"
        );
    }
    // The fourth platform fault is past the platform's bound: final.
    let a = r.poll(&w, 2).await.unwrap().expect("a job");
    assert_eq!(a.job_id, first.to_string());
    r.fail(&w, &a, "input_fetch_failed", true).await.unwrap();
    let j = job(&client, first).await;
    assert_eq!(j.state, JobState::Failed, "{j:#?}");
    assert_eq!((j.attempts, j.platform_faults), (4, 4), "{j:#?}");

    // A job's own retryable fault is charged to it: with one attempt allowed, final at once.
    let a = r.poll(&w, 2).await.unwrap().expect("the second job");
    assert_eq!(a.job_id, second.to_string());
    r.fail(&w, &a, "ffmpeg_failed", true).await.unwrap();
    let j = job(&client, second).await;
    assert_eq!(j.state, JobState::Failed, "{j:#?}");
    assert_eq!((j.job_faults, j.platform_faults), (1, 0), "{j:#?}");
    assert_eq!(history(&j)[0].fault, Some(api::Fault::Job), "{j:#?}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_gave_up_a_job_hands_its_lease_back_and_gets_work_at_once() {
    let config = ControlConfig {
        max_attempts: 1,
        ..test_control_config()
    };
    let Queued { tp, client, jobs } = Queued::start(config, 1).await;
    let id = jobs[0].id;
    let (_, token) = tp.worker_token_with("default", max_workers(2)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let dropped = r.poll(&w, 2).await.unwrap().expect("the job");
    // Asking again without handing the lease back (a second, concurrent long-poll, say) is
    // refused: one worker holds one lease.
    let held = r.poll(&w, 0).await.unwrap_err();
    assert_eq!(held.code(), Code::FailedPrecondition, "{held:?}");
    // A wrong fencing token hands back nothing.
    let mut forged = dropped.clone();
    forged.fencing_token = "0".repeat(forged.fencing_token.len());
    let held = r.poll_dropping(&w, 0, Some(&forged)).await.unwrap_err();
    assert_eq!(held.code(), Code::FailedPrecondition, "{held:?}");

    // Nor does the right fencing token from a worker of another token.
    let (_, other) = tp.worker_token_with("default", max_workers(1)).await;
    let mut stranger = RawWorker::connect(&tp, &other).await;
    let s = stranger.register().await.unwrap();
    assert!(
        stranger
            .poll_dropping(&s, 0, Some(&dropped))
            .await
            .unwrap()
            .is_none(),
        "another token's worker released the lease (and got the job)"
    );
    assert_eq!(job(&client, id).await.attempts, 1, "the lease was released");

    // The worker gave the job up (its report could not get through) and registered again:
    // handing back the lease of its earlier registration, it gets work at once — the same
    // job, in its old place, under a new fencing token.
    let w2 = r.register().await.unwrap();
    let again = r
        .poll_dropping(&w2, 0, Some(&dropped))
        .await
        .expect("the dropped lease does not strand the worker")
        .expect("the job again, at once");
    assert_eq!(again.job_id, id.to_string());
    assert_ne!(again.fencing_token, dropped.fencing_token);
    let stale = r.heartbeat(&w, &dropped, false).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    let j = job(&client, id).await;
    assert_eq!(j.state, JobState::Running, "{j:#?}");
    assert_eq!((j.attempts, j.job_faults, j.platform_faults), (2, 0, 1));
    let first = &history(&j)[0];
    assert_eq!(first.outcome.as_deref(), Some("dropped"), "{j:#?}");
    assert_eq!(first.fault, Some(api::Fault::Platform));
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_expiry_a_lease_extends_grants_and_records_nothing_even_before_the_reaper_runs() {
    let config = ControlConfig {
        lease_seconds: 2,
        // The reaper does not come by during the test: the lease's expiry alone must count.
        reaper_interval_ms: 600_000,
        ..test_control_config()
    };
    let Queued { tp, client, jobs } = Queued::start(config, 1).await;
    let id = jobs[0].id;
    let (_, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    // Past the amnesty a starting control plane gives leases (one lease period).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = r.poll(&w, 2).await.unwrap().expect("the job");
    r.heartbeat(&w, &a, false)
        .await
        .expect("a live lease extends");
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let hb = r.heartbeat(&w, &a, false).await.unwrap_err();
    assert_eq!(hb.code(), Code::FailedPrecondition, "heartbeat: {hb:?}");
    let ask = r.req(pb::RequestUploadUrlsRequest {
        worker_id: w.clone(),
        job_id: a.job_id.clone(),
        fencing_token: a.fencing_token.clone(),
        files: vec![pb::ProducedFile {
            path: "out/o.mp4".into(),
            size: 1,
            sha256: sha256_hex(b"x"),
        }],
    });
    let grant = r.client.request_upload_urls(ask).await.unwrap_err();
    assert_eq!(
        grant.code(),
        Code::FailedPrecondition,
        "upload URLs: {grant:?}"
    );
    let report = r.fail(&w, &a, "ffmpeg_failed", false).await.unwrap_err();
    assert_eq!(
        report.code(),
        Code::FailedPrecondition,
        "report: {report:?}"
    );

    let j = job(&client, id).await;
    assert_eq!(j.state, JobState::Running, "not reaped yet: {j:#?}");
    assert!(history(&j)[0].outcome.is_none(), "nothing recorded: {j:#?}");
    let grants: i64 = sqlx::query_scalar("SELECT count(*) FROM upload_grants WHERE job_id = $1")
        .bind(id)
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap();
    assert_eq!(grants, 0, "no upload was granted on an expired lease");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_failed_attempt_was_granted_to_upload_is_collected_once_its_urls_expire() {
    let Queued { tp, client, jobs } = Queued::start(test_control_config(), 1).await;
    let id = jobs[0].id;
    let (_, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let a = r.poll(&w, 2).await.unwrap().expect("the job");
    let bytes = b"half an output".to_vec();
    let ask = r.req(pb::RequestUploadUrlsRequest {
        worker_id: w.clone(),
        job_id: a.job_id.clone(),
        fencing_token: a.fencing_token.clone(),
        files: vec![pb::ProducedFile {
            path: "out/o.mp4".into(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        }],
    });
    let granted = r
        .client
        .request_upload_urls(ask)
        .await
        .unwrap()
        .into_inner();
    let up = &granted.uploads[0];
    let mut put = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(&up.url)
        .body(bytes);
    for (name, value) in &up.headers {
        put = put.header(name, value);
    }
    assert!(put.send().await.unwrap().status().is_success());
    // The attempt fails after its upload: nothing will ever reference that object.
    r.fail(&w, &a, "output_upload_failed", true).await.unwrap();
    assert_eq!(job(&client, id).await.state, JobState::Queued);

    let org: uuid::Uuid = sqlx::query_scalar("SELECT org_id FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap();
    let key = mpegflow_domain::names::output_key(org, id, a.attempt, "out/o.mp4");
    let due: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM not_before - now())::float8 FROM object_deletions WHERE object_key = $1",
    )
    .bind(&key)
    .fetch_optional(tp.platform.store().pool())
    .await
    .unwrap();
    let due = due.expect("the failed attempt's object is scheduled for deletion");
    let config = test_control_config();
    let urls_live = config.upload_url_ttl().as_secs_f64();
    assert!(
        due > urls_live && due <= urls_live + config.deletion_grace_seconds as f64 + 5.0,
        "deleted {due:.0} s from now: not before its upload URL ({urls_live} s) expired"
    );
    tp.stop().await;
}

/// The pid of the FFmpeg process working in a directory of `job` (its cwd is the job's).
fn ffmpeg_of(job: uuid::Uuid) -> Option<i32> {
    let job = job.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        (comm.trim() == "ffmpeg" && cwd.to_string_lossy().contains(&job)).then_some(pid)
    })
}

/// FFmpeg SIGKILLed while the kernel counts an OOM kill (the worker reads the count from the
/// file `--oom-events` names: /proc/vmstat, or a cgroup's memory.events; here a file the test
/// bumps as the OOM killer would) long before it could have used up its CPU time: the
/// platform's fault. The job runs again and succeeds, charged nothing, and the worker's token
/// takes no strike. (Without the OOM count rising, a SIGKILL is the job's own: see
/// `fault_attacks::a_tenants_self_sigkill_…`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_killed_by_the_oom_killer_costs_the_job_nothing() {
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let oom_events = tp.path("memory.events");
    std::fs::write(&oom_events, "oom 0\noom_kill 0\n").unwrap();
    let (_, token) = tp.worker_token("default").await;
    tp.platform
        .spawn_worker_with(
            &token,
            &["--oom-events", oom_events.to_str().unwrap()],
            true,
        )
        .await
        .unwrap();
    let input = clip(tp.dir.path(), "in.mp4", 4, "320x240").await;
    let id = submit(
        &client,
        &input,
        &[("out", "o.mp4")],
        "-re -i {{in}} -c:v libx264 -preset veryfast {{out}}",
    )
    .await
    .id;
    let pid = eventually("FFmpeg encoding", Duration::from_secs(60), || async {
        let j = client.job(id).await.ok()?;
        if j.live.and_then(|l| l.stage).as_deref() != Some("encode") {
            return None;
        }
        ffmpeg_of(id)
    })
    .await;
    std::fs::write(&oom_events, "oom 1\noom_kill 1\n").unwrap();
    // SAFETY: kill takes plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let j = client.wait(id, |_| {}).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:#?}");
    assert_eq!(
        (j.attempts, j.job_faults, j.platform_faults),
        (2, 0, 1),
        "{j:#?}"
    );
    let killed = &history(&j)[0];
    assert_eq!(killed.error_code.as_deref(), Some("killed"), "{j:#?}");
    assert_eq!(killed.fault, Some(api::Fault::Platform));
    let strikes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE job_id = $1 AND strike")
            .bind(id)
            .fetch_one(tp.platform.store().pool())
            .await
            .unwrap();
    assert_eq!(strikes, 0, "the worker's token was struck");
    tp.stop().await;
}
