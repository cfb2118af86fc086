use crate::harness::*;
use mpegflow_api::JobState;
use std::collections::BTreeSet;
use tokio_util::sync::CancellationToken;

/// Two control-plane replicas on one database and one object store: jobs submitted to one are
/// run by workers polling the other, each exactly once, and both reapers run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_plane_replicas_share_the_work() {
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;

    // Replica B: the same store and signing key, its own API and coordinator listeners.
    let state_b = mpegflow_control::AppState::new(
        tp.platform.store().clone(),
        tp.platform.state.presigner.clone(),
        test_control_config(),
    );
    let api_b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator_b = format!("http://{}", grpc_b.local_addr().unwrap());
    let stop_b = CancellationToken::new();
    let replica_b = tokio::spawn(mpegflow_control::run(
        state_b,
        api_b,
        grpc_b,
        stop_b.clone(),
    ));

    // One worker on each replica.
    let (_, token) = tp.worker_token("default").await;
    tp.platform.spawn_worker(&token).await.unwrap();
    let original = std::mem::replace(&mut tp.platform.coordinator_url, coordinator_b);
    tp.platform.spawn_worker(&token).await.unwrap();
    tp.platform.coordinator_url = original;

    let input = clip(tp.dir.path(), "a.mp4", 1, "160x120").await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let job = submit(
            &client,
            &input,
            &[("out", "o.mkv")],
            "-i {{in}} -c copy {{out}}",
        )
        .await;
        ids.push(job.id);
    }
    let mut workers = BTreeSet::new();
    for id in ids {
        let job = client.wait(id, |_| {}).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
        assert_eq!(job.attempts, 1, "each job ran exactly once: {job:#?}");
        workers.insert(history(&job)[0].worker_id);
    }
    assert_eq!(workers.len(), 2, "both replicas' workers took jobs");
    stop_b.cancel();
    replica_b.await.unwrap().unwrap();
    tp.stop().await;
}
