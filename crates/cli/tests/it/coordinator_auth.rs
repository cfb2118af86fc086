use crate::harness::*;
use mpegflow_api::{self as api, JobState};
use mpegflow_proto as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_bound_to_their_pool() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let url = tp.platform.coordinator_url.clone();
    let store = tp.platform.store();
    let (_, api_key) = store.create_org("acme").await.unwrap();

    // Wrong, malformed, API-key and revoked credentials: UNAUTHENTICATED.
    let wrong = format!("mfw_{}", "ab".repeat(32));
    for bad in [wrong.as_str(), "garbage", api_key.expose()] {
        let err = RawWorker::connect_to(&url, bad)
            .await
            .register()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad}");
    }
    let mut none = pb::CoordinatorClient::connect(url.clone()).await.unwrap();
    let err = none
        .register_worker(pb::RegisterWorkerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let (token_id, token) = tp.worker_token("default").await;
    let mut w = RawWorker::connect_to(&url, &token).await;
    let worker_id = w.register().await.unwrap();
    assert!(w.poll(&worker_id, 0).await.unwrap().is_none());
    store.revoke_worker_token(token_id).await.unwrap();
    assert_eq!(
        w.poll(&worker_id, 0).await.unwrap_err().code(),
        Code::Unauthenticated,
        "revocation is immediate"
    );

    // A worker token cannot call the tenant API (checked in isolation.rs too), and a token
    // cannot speak for another token's worker.
    let (_, t1) = tp.worker_token("default").await;
    let (_, t2) = tp.worker_token("default").await;
    let mut w1 = RawWorker::connect_to(&url, &t1).await;
    let mut w2 = RawWorker::connect_to(&url, &t2).await;
    let id1 = w1.register().await.unwrap();
    assert_eq!(
        w2.poll(&id1, 0).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Pool binding: a "gpu" token never receives a default-pool job, and vice versa.
    store.create_pool("gpu", None).await.unwrap();
    let (_, gpu_token) = tp.worker_token("gpu").await;
    let mut gpu = RawWorker::connect_to(&url, &gpu_token).await;
    let gpu_id = gpu.register().await.unwrap();
    let client = mpegflow::client::ApiClient::new(&tp.platform.api_url, api_key.expose());
    let input = clip(tp.dir.path(), "a.mp4", 1, "160x120").await;
    let default_job = submit(&client, &input, &[("out", "o.mp4")], "-i {{in}} {{out}}").await;
    assert!(
        gpu.poll(&gpu_id, 1).await.unwrap().is_none(),
        "gpu worker must not get a default-pool job"
    );

    let asset = client.upload(&input).await.unwrap();
    let mut gpu_job =
        api::JobIn::new([("in", asset.id)], [("out", "o.mp4")], "-i {{in}} {{out}}").unwrap();
    gpu_job.pool = Some(api::PoolName::parse("gpu").unwrap());
    let gpu_job = client.submit(&gpu_job).await.unwrap();
    let got = w1
        .poll(&id1, 1)
        .await
        .unwrap()
        .expect("default worker gets the default job");
    assert_eq!(got.job_id, default_job.id.to_string());
    assert!(w1.fail(&id1, &got, "ffmpeg_failed", false).await.is_ok());
    let got_gpu = gpu
        .poll(&gpu_id, 1)
        .await
        .unwrap()
        .expect("gpu worker gets the gpu job");
    assert_eq!(got_gpu.job_id, gpu_job.id.to_string());

    // A worker holding a valid token reporting on a job it does not hold is refused, and the
    // job is unchanged.
    let id2 = w2.register().await.unwrap();
    let forged = w2
        .fail(&id2, &got_gpu, "ffmpeg_failed", false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            forged.code(),
            Code::FailedPrecondition | Code::PermissionDenied
        ),
        "{forged:?}"
    );
    let guess = pb::JobAssignment {
        fencing_token: "00000000000000000000000000000000".into(),
        ..got_gpu.clone()
    };
    let guessed = w1
        .fail(&id1, &guess, "ffmpeg_failed", false)
        .await
        .unwrap_err();
    assert_eq!(guessed.code(), Code::FailedPrecondition);
    let job = client.job(gpu_job.id).await.unwrap();
    assert_eq!(
        job.state,
        JobState::Running,
        "forged reports changed nothing: {job:#?}"
    );
    assert!(
        gpu.fail(&gpu_id, &got_gpu, "ffmpeg_failed", false)
            .await
            .is_ok(),
        "the holder's report is accepted"
    );
    assert_eq!(
        client.job(gpu_job.id).await.unwrap().state,
        JobState::Failed
    );
    tp.stop().await;
}
