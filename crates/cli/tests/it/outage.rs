//! A database outage: the platform runs on a PostgreSQL cluster of its own (the shared test
//! cluster must stay up for the other tests), which the test stops and starts again.

use crate::harness::{
    clip, eventually, fingerprint, submit, tempdir::TempDir, test_control_config, OwnCluster,
};
use mpegflow::client::ApiClient;
use mpegflow::platform::{Platform, PlatformConfig};
use mpegflow_api as api;
use mpegflow_proto as pb;
use std::time::{Duration, Instant};

/// What a client sees of one GET.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    content_type: String,
    body: String,
    took: Duration,
}

async fn get(http: &reqwest::Client, url: &str, key: Option<&str>) -> Answer {
    let mut req = http.get(url);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let started = Instant::now();
    let resp = req.send().await.expect("the API answers");
    let took = started.elapsed();
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header(reqwest::header::RETRY_AFTER);
    let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Answer {
        status,
        retry_after,
        content_type,
        body,
        took,
    }
}

/// A 503 a client can act on: `Retry-After` and a problem naming the database.
fn assert_database_unavailable(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {}", a.body);
    let retry: u64 = a
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no numeric Retry-After: {:?}", a.retry_after));
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    assert_eq!(a.content_type, "application/problem+json", "{what}");
    let problem: api::Problem = serde_json::from_str(&a.body).expect("a problem body");
    assert_eq!(problem.code, "database_unavailable", "{what}: {problem:?}");
    assert_eq!(problem.status, 503);
    assert!(problem.detail.contains("database"), "{what}: {problem:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_outage_answers_503_fast_and_recovers() {
    let dir = TempDir::new("mpegflow-it-outage");
    let (mut cluster, url) = OwnCluster::start(&dir.path().join("pg"), "outage").await;
    let platform = Platform::start(PlatformConfig {
        data_dir: dir.path().join("data"),
        database_url: Some(url),
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        s3_addr: "127.0.0.1:0".into(),
        workers: 0,
        control: test_control_config(),
        pg_for_tests: true,
        ..PlatformConfig::default()
    })
    .await
    .expect("platform starts");
    let (_, key) = platform.store().create_org("outage").await.unwrap();
    let key = key.expose().to_owned();
    let (_, worker_token) = platform
        .store()
        .create_worker_token("default", "outage", mpegflow_store::TokenLimits::default())
        .await
        .unwrap();
    let mut coordinator = pb::CoordinatorClient::connect(platform.coordinator_url.clone())
        .await
        .unwrap();
    let register = || {
        let mut r = tonic::Request::new(pb::RegisterWorkerRequest {
            hostname: "outage".into(),
            fingerprint: Some(fingerprint()),
            ..Default::default()
        });
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", worker_token.expose()).parse().unwrap(),
        );
        r
    };
    let base = platform.api_url.clone();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let jobs = format!("{base}/v1/jobs");

    let before = get(&http, &jobs, Some(&key)).await;
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(
        get(&http, &format!("{base}/readyz"), None).await.status,
        200
    );

    cluster.stop();

    // The first call after the outage starts meets a pool full of dead connections; later
    // ones know the database is down. Both answer 503, neither waits out a long pool timeout.
    for round in ["first call", "second call"] {
        let a = get(&http, &jobs, Some(&key)).await;
        eprintln!(
            "outage: GET /v1/jobs ({round}) answered {} in {:?}",
            a.status, a.took
        );
        assert_database_unavailable(&a, round);
        assert!(
            a.took < Duration::from_secs(8),
            "{round} took {:?}: the old 10 s pool timeout",
            a.took
        );
    }
    // Workers retry UNAVAILABLE; INTERNAL would end their call.
    let refused = coordinator
        .register_worker(register())
        .await
        .expect_err("no registration without the database");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("database"), "{refused:?}");
    let health = get(&http, &format!("{base}/healthz"), None).await;
    assert_eq!(
        health.status, 200,
        "liveness during the outage: {}",
        health.body
    );
    let ready = get(&http, &format!("{base}/readyz"), None).await;
    eprintln!(
        "outage: GET /readyz answered {} in {:?}",
        ready.status, ready.took
    );
    assert_database_unavailable(&ready, "readyz");

    // Back on the same port, the same data.
    cluster.restart();
    let recovered = Instant::now();
    eventually(
        "readyz after the restart",
        Duration::from_secs(30),
        || async {
            (get(&http, &format!("{base}/readyz"), None).await.status == 200).then_some(())
        },
    )
    .await;
    eprintln!(
        "outage: /readyz 200 {:?} after the restart",
        recovered.elapsed()
    );
    let after = get(&http, &jobs, Some(&key)).await;
    assert_eq!(after.status, 200, "{}", after.body);
    let list: api::JobList = serde_json::from_str(&after.body).unwrap();
    assert!(list.jobs.is_empty());
    coordinator
        .register_worker(register())
        .await
        .expect("a worker registers once the database is back");

    platform.stop(Duration::from_secs(5)).await;
    cluster.stop();
}

/// A database outage longer than the lease while a job runs: heartbeats and the finished
/// encode's upload-URL request fail through it and are retried; once the database is back the
/// lease still counts (nothing was reaped for want of renewals the outage made impossible),
/// and the job completes on its first attempt, costing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_running_through_an_outage_longer_than_its_lease_completes_on_its_first_attempt() {
    let dir = TempDir::new("mpegflow-it-outage-lease");
    let (mut cluster, url) = OwnCluster::start(&dir.path().join("pg"), "outage").await;
    let lease = Duration::from_secs(3);
    let platform = Platform::start(PlatformConfig {
        data_dir: dir.path().join("data"),
        database_url: Some(url),
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        s3_addr: "127.0.0.1:0".into(),
        workers: 1,
        control: mpegflow_control::ControlConfig {
            lease_seconds: lease.as_secs() as u32,
            ..test_control_config()
        },
        pg_for_tests: true,
        ..PlatformConfig::default()
    })
    .await
    .expect("platform starts");
    let (_, key) = platform.store().create_org("outage").await.unwrap();
    let client = ApiClient::new(&platform.api_url, key.expose());
    let input = clip(dir.path(), "in.mp4", 4, "320x240").await;
    // `-re`: the encode takes the clip's 4 s, so the job is in flight when the outage begins.
    let id = submit(
        &client,
        &input,
        &[("out", "o.mp4")],
        "-re -i {{in}} -c:v libx264 -preset veryfast {{out}}",
    )
    .await
    .id;
    eventually("the job running", Duration::from_secs(30), || async {
        let j = client.job(id).await.ok()?;
        (j.state == api::JobState::Running).then_some(())
    })
    .await;

    cluster.stop();
    let outage = lease * 3;
    tokio::time::sleep(outage).await;
    cluster.restart();
    let recovered = Instant::now();
    let job = client.wait(id, |_| {}).await.unwrap();
    eprintln!(
        "outage of {outage:?} (lease {lease:?}): the job {} {:?} after the restart",
        job.state,
        recovered.elapsed()
    );
    assert_eq!(job.state, api::JobState::Succeeded, "{job:#?}");
    assert_eq!(
        (job.attempts, job.job_faults, job.platform_faults),
        (1, 0, 0),
        "the outage cost nothing: {job:#?}"
    );
    platform.stop(Duration::from_secs(5)).await;
    cluster.stop();
}
