//! `mpegflow control`: the control plane alone, against the database and object store of a
//! platform that runs already. Joined in-process to a running platform (`--join`), as the real
//! binary killed with SIGKILL and started again, and refused when there is nothing to join.

use crate::harness::*;
use mpegflow::client::ApiClient;
use mpegflow::control_only::{self, ControlOnlyConfig, Listeners};
use mpegflow_api::JobState;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// A joined control plane on free ports, in this process.
async fn join_in_process(
    data_dir: &Path,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let cfg = ControlOnlyConfig {
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        control: test_control_config(),
        join: Some(data_dir.to_owned()),
        ..ControlOnlyConfig::default()
    };
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let api = listeners.api_url().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(control_only::run(cfg, listeners, stop.clone()));
    (api, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_joined_to_a_running_platform_runs_jobs_on_its_workers_and_store() {
    let tp = TestPlatform::start(1, test_control_config()).await;
    let data_dir = tp.platform.data_dir.clone();
    let (_, key) = tp.platform.store().create_org("acme").await.unwrap();
    // What a joiner reads: only its owner may (it names the database).
    let published = data_dir.join(mpegflow::platform::PLATFORM_FILE);
    let mode = std::fs::metadata(&published).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", published.display());
    let (api, stop, joined) = join_in_process(&data_dir).await;
    let client = ApiClient::new(&api, key.expose());

    // A job submitted to the joined control plane runs on the platform's worker (the joined
    // one has none of its own) and is recorded in the one database.
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let job = run_job(
        &client,
        &input,
        &[("out", "o.mp4")],
        "-i {{in}} -c copy {{out}}",
    )
    .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let platform_client = ApiClient::new(&tp.platform.api_url, key.expose());
    assert_eq!(
        platform_client.job(job.id).await.unwrap().state,
        JobState::Succeeded
    );

    // Its output downloads through a link the joined control plane signed, from the one store.
    let file = output_file(&job, "out");
    let link = client.download_link(file.asset_id).await.unwrap();
    assert!(
        link.url.starts_with(&tp.platform.s3_endpoint),
        "{} is not a link to {}",
        link.url,
        tp.platform.s3_endpoint
    );
    let bytes = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&link.url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, file.size);
    assert_eq!(sha256_hex(&bytes), file.sha256.to_string());

    // The joined control plane stops on its own; the platform runs on.
    stop.cancel();
    joined.await.unwrap().unwrap();
    let again = run_job(
        &platform_client,
        &input,
        &[("out", "o.mp4")],
        "-i {{in}} -c copy {{out}}",
    )
    .await;
    assert_eq!(again.state, JobState::Succeeded, "{again:#?}");

    // A platform that stopped cleanly withdrew what it published: nothing to join.
    tp.stop().await;
    assert!(
        !data_dir.join(mpegflow::platform::PLATFORM_FILE).exists(),
        "platform.json outlived the platform"
    );
    let (_, _, joined) = join_in_process(&data_dir).await;
    let err = joined
        .await
        .unwrap()
        .expect_err("joining a stopped platform");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no `mpegflow up` is running")
            && msg.contains(&data_dir.display().to_string()),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_mid_job_and_restarted_serves_again_with_database_and_workers_untouched(
) {
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let (_, key) = tp.platform.store().create_org("acme").await.unwrap();
    // The platform's embedded store as an external one: its endpoint and key pair.
    let env = tp.external_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = control_config_file(tp.dir.path(), test_control_config());
    let args = ["--config", config.to_str().unwrap()];
    let mut control = ControlChild::start(tp.dir.path(), &args, &env);
    let (api, coordinator) = control.wait_serving();
    let client = ApiClient::new(&api, key.expose());

    // A worker of the stand-alone control plane.
    let (_, token) = tp.worker_token("default").await;
    let platform_coordinator =
        std::mem::replace(&mut tp.platform.coordinator_url, coordinator.clone());
    let worker = tp.platform.spawn_worker(&token).await.unwrap();
    tp.platform.coordinator_url = platform_coordinator;

    let long = clip(tp.dir.path(), "long.mp4", 10, "640x360").await;
    let job = submit(
        &client,
        &long,
        &[("out", "o.mp4")],
        "-i {{in}} -c:v libx264 -preset slow -s 1280x720 {{out}}",
    )
    .await;
    wait_for_state(&client, job.id, JobState::Running).await;

    // SIGKILL mid-job: PostgreSQL and the worker do not notice beyond a refused call.
    control.child.kill().unwrap();
    control.child.wait().unwrap();
    assert!(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{api}/v1/pools"))
            .send()
            .await
            .is_err(),
        "the killed control plane still answers"
    );
    assert!(tp.platform.worker_alive(worker), "the worker died with it");
    let read = ApiClient::new(&tp.platform.api_url, key.expose())
        .job(job.id)
        .await
        .unwrap();
    assert_eq!(read.state, JobState::Running, "{read:#?}");

    // Started again on the same addresses: its API answers, the worker reports to its
    // coordinator, and the job completes.
    let api_addr = api.trim_start_matches("http://").to_owned();
    let grpc_addr = coordinator.trim_start_matches("http://").to_owned();
    let mut env2 = env.clone();
    env2.push(("MPEGFLOW_API_ADDR", &api_addr));
    env2.push(("MPEGFLOW_GRPC_ADDR", &grpc_addr));
    let mut control = ControlChild::start(tp.dir.path(), &args, &env2);
    assert_eq!(control.wait_serving(), (api.clone(), coordinator.clone()));
    let done = client.wait(job.id, |_| {}).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert!(tp.platform.worker_alive(worker));

    // A clean stop: SIGTERM ends it with status 0.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(control.child.id() as i32, libc::SIGTERM) };
    assert!(control.wait_exit().success(), "{}", control.log());
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_join_without_a_running_platform_fails_naming_the_data_dir() {
    let dir = tempdir::TempDir::new("mpegflow-join");
    // What a crashed `up` leaves: its platform file, but no lock held.
    std::fs::write(
        dir.path().join(mpegflow::platform::PLATFORM_FILE),
        r#"{"pid": 1, "database_url": "postgres://nowhere/x", "api_url": "http://127.0.0.1:1",
            "coordinator_url": "http://127.0.0.1:1", "embedded_store": {"endpoint":
            "http://127.0.0.1:1", "region": "us-east-1", "bucket": "mpegflow"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("up.lock"), "1\n").unwrap();
    for data_dir in [dir.path().join("nowhere"), dir.path().to_owned()] {
        let mut control =
            ControlChild::start(dir.path(), &["--join", data_dir.to_str().unwrap()], &[]);
        let status = control.wait_exit();
        let log = control.log();
        assert!(!status.success(), "{log}");
        assert!(
            log.contains("no `mpegflow up` is running")
                && log.contains(&data_dir.display().to_string()),
            "{log}"
        );
    }
    // Nothing was made in a data directory that is not one.
    assert!(!dir.path().join("nowhere").exists());
    assert!(!dir.path().join("s3.key").exists());
}
