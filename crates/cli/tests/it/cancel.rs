use crate::harness::*;
use mpegflow_api::JobState;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_its_ffmpeg_and_frees_the_worker() {
    let tp = TestPlatform::start(1, test_control_config()).await;
    let client = tp.org("acme").await;
    let long = clip(tp.dir.path(), "long.mp4", 8, "640x360").await;
    let job = submit(
        &client,
        &long,
        &[("out", "o.mp4")],
        "-i {{in}} -c:v libx264 -preset slow -s 1280x720 {{out}}",
    )
    .await;
    let id = job.id;
    wait_for_state(&client, id, JobState::Running).await;
    let canceled = client.cancel(id).await.unwrap();
    assert_eq!(canceled.state, JobState::Canceled);
    let again = refused(client.cancel(id).await);
    assert_eq!(
        again.status, 409,
        "a finished job cannot be cancelled again: {again:?}"
    );

    // The worker learns of it at its next heartbeat, stops FFmpeg and records the attempt.
    let job = eventually(
        "the attempt to be recorded as canceled",
        Duration::from_secs(20),
        || {
            let c = client.clone();
            async move {
                let j = c.job(id).await.unwrap();
                let canceled = history(&j)
                    .first()
                    .is_some_and(|a| a.outcome.as_deref() == Some("canceled"));
                canceled.then_some(j)
            }
        },
    )
    .await;
    assert_eq!(job.state, JobState::Canceled);

    let short = clip(tp.dir.path(), "short.mp4", 1, "160x120").await;
    let next = run_job(
        &client,
        &short,
        &[("out", "o.mp4")],
        "-i {{in}} -c copy {{out}}",
    )
    .await;
    assert_eq!(next.state, JobState::Succeeded);
    assert_eq!(history(&next)[0].worker_id, history(&job)[0].worker_id);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_worker_finish_its_job_then_stop() {
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let (_, token) = tp.worker_token("default").await;
    let pid = tp.platform.spawn_worker(&token).await.unwrap();
    let long = clip(tp.dir.path(), "long.mp4", 4, "640x360").await;
    let job = submit(
        &client,
        &long,
        &[("out", "o.mp4")],
        "-i {{in}} -c:v libx264 -preset medium -s 1280x720 {{out}}",
    )
    .await;
    let id = job.id;
    wait_for_state(&client, id, JobState::Running).await;
    // SAFETY: signalling a child process we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let done = client.wait(id, |_| {}).await.unwrap();
    assert_eq!(
        done.state,
        JobState::Succeeded,
        "the job at hand is finished: {done:#?}"
    );
    assert_eq!(done.attempts, 1);
    let code = tokio::time::timeout(Duration::from_secs(20), tp.platform.wait_worker(pid))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "then the worker stops cleanly");
    tp.stop().await;
}
