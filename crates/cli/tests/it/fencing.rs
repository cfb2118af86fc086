use crate::harness::*;
use mpegflow_api::JobState;
use mpegflow_proto as pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_fenced_off_after_its_lease_expires() {
    let config = mpegflow_control::ControlConfig {
        lease_seconds: 3,
        ..test_control_config()
    };
    let mut tp = TestPlatform::start(0, config).await;
    let client = tp.org("acme").await;
    let (_, token) = tp.worker_token("default").await;
    let pid_a = tp.platform.spawn_worker(&token).await.unwrap();

    // Long enough to freeze it mid-encode.
    let input = clip(tp.dir.path(), "long.mp4", 6, "640x360").await;
    let job = submit(
        &client,
        &input,
        &[("out", "o.mp4")],
        "-i {{in}} -c:v libx264 -preset medium -s 1280x720 {{out}}",
    )
    .await;
    let job_uuid = job.id;
    let pool = tp.platform.store().pool().clone();

    let (fencing_a, worker_a): (String, uuid::Uuid) = eventually("worker A to take the job", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            sqlx::query_as("SELECT fencing_token, lease_worker_id FROM jobs WHERE id = $1 AND state = 'running'")
                .bind(job_uuid)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await;
    // SAFETY: signalling a child process we started.
    unsafe { libc::kill(pid_a as i32, libc::SIGSTOP) };

    // The lease runs out and the reaper requeues the job; a second worker finishes it.
    wait_for_state(&client, job_uuid, JobState::Queued).await;
    tp.platform.spawn_worker(&token).await.unwrap();
    let done = client.wait(job_uuid, |_| {}).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let winner = output_file(&done, "out").clone();

    // Worker A wakes up: whatever it sends, the job keeps B's result.
    unsafe { libc::kill(pid_a as i32, libc::SIGCONT) };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut raw = RawWorker::connect(&tp, &token).await;
    let stale = raw.req(pb::ReportJobStatusRequest {
        worker_id: worker_a.to_string(),
        job_id: job_uuid.to_string(),
        fencing_token: fencing_a.clone(),
        outcome: pb::Outcome::Succeeded as i32,
        ..Default::default()
    });
    let err = raw.client.report_job_status(stale).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    let after = client.job(job_uuid).await.unwrap();
    assert_eq!(after.state, JobState::Succeeded);
    assert_eq!(
        output_file(&after, "out"),
        &winner,
        "the winner's result stands"
    );
    let history = history(&after);
    assert_eq!(history.len(), 2, "{after:#?}");
    assert_eq!(history[0].worker_id, worker_a);
    assert_eq!(history[0].outcome.as_deref(), Some("lease_expired"));
    assert_eq!(history[1].outcome.as_deref(), Some("succeeded"));
    assert_ne!(history[1].worker_id, history[0].worker_id);
    let trail = tp.platform.store().job_audit(job_uuid).await.unwrap();
    assert!(trail.iter().any(|r| r.action == "job.lease_expired"));
    tp.stop().await;
}
