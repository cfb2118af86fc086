use crate::harness::*;
use reqwest::Method;
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
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_state(&client, &id, "running").await;
    let canceled = client
        .ok(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(canceled["state"], "canceled");
    let (status, body) = client
        .call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None, &[])
        .await
        .unwrap();
    assert_eq!(
        status, 409,
        "a finished job cannot be cancelled again: {body}"
    );

    // The worker learns of it at its next heartbeat, stops FFmpeg and records the attempt.
    let job = eventually(
        "the attempt to be recorded as canceled",
        Duration::from_secs(20),
        || {
            let (c, id) = (client.clone(), id.clone());
            async move {
                let j = c.job(&id).await.unwrap();
                (j["history"][0]["outcome"] == "canceled").then_some(j)
            }
        },
    )
    .await;
    assert_eq!(job["state"], "canceled");

    let short = clip(tp.dir.path(), "short.mp4", 1, "160x120").await;
    let next = run_job(
        &client,
        &short,
        &[("out", "o.mp4")],
        "-i {{in}} -c copy {{out}}",
    )
    .await;
    assert_eq!(next["state"], "succeeded");
    assert_eq!(
        next["history"][0]["worker_id"],
        job["history"][0]["worker_id"]
    );
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
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for_state(&client, &id, "running").await;
    // SAFETY: signalling a child process we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let done = client.wait(&id, |_| {}).await.unwrap();
    assert_eq!(
        done["state"], "succeeded",
        "the job at hand is finished: {done:#}"
    );
    assert_eq!(done["attempts"], 1);
    let code = tokio::time::timeout(Duration::from_secs(20), tp.platform.wait_worker(pid))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "then the worker stops cleanly");
    tp.stop().await;
}
