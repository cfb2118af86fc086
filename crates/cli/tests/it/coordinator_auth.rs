use crate::harness::*;
use mpegflow_api::{self as api, JobState};
use mpegflow_proto as pb;
use tonic::{Code, Request};

/// A raw coordinator client presenting `token`, playing the part of a worker (or an attacker).
struct RawWorker {
    client: pb::CoordinatorClient<tonic::transport::Channel>,
    token: String,
}

impl RawWorker {
    async fn connect(url: &str, token: &str) -> RawWorker {
        let client = pb::CoordinatorClient::connect(url.to_owned())
            .await
            .unwrap();
        RawWorker {
            client,
            token: token.to_owned(),
        }
    }
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        r
    }
    async fn register(&mut self) -> Result<String, tonic::Status> {
        let r = self.req(pb::RegisterWorkerRequest {
            hostname: "test".into(),
            fingerprint: Some(fingerprint()),
            ..Default::default()
        });
        Ok(self.client.register_worker(r).await?.into_inner().worker_id)
    }
    async fn poll(
        &mut self,
        worker_id: &str,
        wait: u32,
    ) -> Result<Option<pb::JobAssignment>, tonic::Status> {
        let r = self.req(pb::GetWorkAssignmentRequest {
            worker_id: worker_id.into(),
            wait_seconds: wait,
        });
        Ok(self
            .client
            .get_work_assignment(r)
            .await?
            .into_inner()
            .assignment)
    }
    async fn report(
        &mut self,
        worker_id: &str,
        job_id: &str,
        fencing: &str,
    ) -> Result<(), tonic::Status> {
        let r = self.req(pb::ReportJobStatusRequest {
            worker_id: worker_id.into(),
            job_id: job_id.into(),
            fencing_token: fencing.into(),
            outcome: pb::Outcome::Failed as i32,
            error_code: "ffmpeg_failed".into(),
            error_message: "forged".into(),
            ..Default::default()
        });
        self.client.report_job_status(r).await.map(|_| ())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_bound_to_their_pool() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let url = tp.platform.coordinator_url.clone();
    let store = tp.platform.store();
    let (_, api_key) = store.create_org("acme").await.unwrap();

    // Wrong, malformed, API-key and revoked credentials: UNAUTHENTICATED.
    let wrong = format!("mfw_{}", "ab".repeat(32));
    for bad in [wrong.as_str(), "garbage", api_key.expose()] {
        let err = RawWorker::connect(&url, bad)
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
    let mut w = RawWorker::connect(&url, &token).await;
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
    let mut w1 = RawWorker::connect(&url, &t1).await;
    let mut w2 = RawWorker::connect(&url, &t2).await;
    let id1 = w1.register().await.unwrap();
    assert_eq!(
        w2.poll(&id1, 0).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Pool binding: a "gpu" token never receives a default-pool job, and vice versa.
    store.create_pool("gpu", None).await.unwrap();
    let (_, gpu_token) = tp.worker_token("gpu").await;
    let mut gpu = RawWorker::connect(&url, &gpu_token).await;
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
    assert!(w1
        .report(&id1, &got.job_id, &got.fencing_token)
        .await
        .is_ok());
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
        .report(&id2, &got_gpu.job_id, &got_gpu.fencing_token)
        .await
        .unwrap_err();
    assert!(
        matches!(
            forged.code(),
            Code::FailedPrecondition | Code::PermissionDenied
        ),
        "{forged:?}"
    );
    let guessed = w1
        .report(&id1, &got_gpu.job_id, "00000000000000000000000000000000")
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
        gpu.report(&gpu_id, &got_gpu.job_id, &got_gpu.fencing_token)
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
