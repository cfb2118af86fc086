//! The chaos suite: faults injected into a running platform (its own PostgreSQL cluster, real
//! worker processes, the embedded store), each over a batch of jobs that includes bad-input
//! jobs. After each fault every job of its batch must end: none lost, none stuck, none
//! completed twice; every output downloads with the bytes its recorded SHA-256 names; a
//! bad-input job spends exactly the one attempt its error code allows; and no good job is
//! charged an attempt for the platform's trouble. Recovery times (fault cleared → first job
//! completed) are printed as figures (`chaos:` lines), not asserted.
//!
//! The workers talk to a control plane of its own process (`mpegflow control`, the one a test
//! can kill -9): it alone decides leases. The in-process platform's control plane, there for
//! the test's API calls, keeps its reaper idle.

use crate::harness::{
    clip, control_config_file, eventually, max_workers, tempdir::TempDir, test_control_config,
    ControlChild, OwnCluster,
};
use mpegflow::client::ApiClient;
use mpegflow::platform::{Platform, PlatformConfig};
use mpegflow_api::{self as api, JobState};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(3);
const WORKERS: usize = 3;
const GOOD_JOBS: usize = 8;
const BAD_JOBS: usize = 2;
/// `-re`: each encode takes the clip's length, so faults land mid-encode.
const COMMAND: &str = "-re -i {{in}} -c:v libx264 -preset veryfast -c:a aac {{out}}";

struct Chaos {
    platform: Platform,
    /// The control plane the workers use; restarted by the control-plane fault.
    control: ControlChild,
    /// Its command-line arguments and environment, to start it again on the same addresses.
    control_args: Vec<String>,
    control_env: Vec<(String, String)>,
    pg: OwnCluster,
    client: ApiClient,
    token: String,
    good_input: Uuid,
    bad_input: Uuid,
    dir: PathBuf,
}

/// One job of a batch and what it must come to.
struct Submitted {
    id: Uuid,
    good: bool,
}

impl Chaos {
    async fn start(dir: &Path) -> Chaos {
        let (pg, url) = OwnCluster::start(&dir.join("pg"), "chaos").await;
        let platform = Platform::start(PlatformConfig {
            data_dir: dir.join("data"),
            database_url: Some(url),
            api_addr: "127.0.0.1:0".into(),
            grpc_addr: "127.0.0.1:0".into(),
            s3_addr: "127.0.0.1:0".into(),
            workers: 0,
            control: mpegflow_control::ControlConfig {
                lease_seconds: LEASE.as_secs() as u32,
                reaper_interval_ms: 24 * 3600 * 1000,
                ..test_control_config()
            },
            pg_for_tests: true,
            ..PlatformConfig::default()
        })
        .await
        .expect("platform starts");
        let (_, key) = platform.store().create_org("chaos").await.unwrap();
        let client = ApiClient::new(&platform.api_url, key.expose());
        // Room for replacements while the registrations of killed workers still count.
        let (_, token) = platform
            .store()
            .create_worker_token("default", "chaos", max_workers(3 * WORKERS as u32))
            .await
            .unwrap();
        // The control plane the workers use: its own process, joined to the platform's
        // database and store.
        let config = control_config_file(
            dir,
            mpegflow_control::ControlConfig {
                lease_seconds: LEASE.as_secs() as u32,
                ..test_control_config()
            },
        );
        let control_args = vec![
            "--config".to_owned(),
            config.to_str().unwrap().to_owned(),
            "--join".to_owned(),
            platform.data_dir.to_str().unwrap().to_owned(),
        ];
        let mut control = ControlChild::start(dir, &strs(&control_args), &[]);
        let (api, coordinator) = tokio::task::block_in_place(|| control.wait_serving());
        let control_env = vec![
            (
                "MPEGFLOW_API_ADDR".to_owned(),
                api.trim_start_matches("http://").to_owned(),
            ),
            (
                "MPEGFLOW_GRPC_ADDR".to_owned(),
                coordinator.trim_start_matches("http://").to_owned(),
            ),
        ];
        let good = clip(dir, "in.mp4", 2, "320x240").await;
        let bad = dir.join("bad.mp4");
        std::fs::write(&bad, b"this is not a video, whatever its name says\n").unwrap();
        let good_input = client.upload(&good).await.unwrap().id;
        let bad_input = client.upload(&bad).await.unwrap().id;
        let mut platform = platform;
        platform.coordinator_url = coordinator;
        let mut chaos = Chaos {
            platform,
            control,
            control_args,
            control_env,
            pg,
            client,
            token: token.expose().to_owned(),
            good_input,
            bad_input,
            dir: dir.to_owned(),
        };
        for _ in 0..WORKERS {
            chaos.spawn_worker().await;
        }
        chaos
    }

    /// kill -9 of the control plane the workers use; started again on the same addresses
    /// after `down`.
    async fn kill_control_plane(&mut self, down: Duration) {
        self.control.child.kill().unwrap();
        self.control.child.wait().unwrap();
        tokio::time::sleep(down).await;
        let env: Vec<(&str, &str)> = self
            .control_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut control = ControlChild::start(&self.dir, &strs(&self.control_args), &env);
        tokio::task::block_in_place(|| control.wait_serving());
        self.control = control;
    }

    async fn spawn_worker(&mut self) -> u32 {
        let token = self.token.clone();
        self.platform.spawn_worker(&token).await.unwrap()
    }

    async fn submit_batch(&self) -> Vec<Submitted> {
        let mut batch = Vec::new();
        for n in 0..GOOD_JOBS + BAD_JOBS {
            // Bad-input jobs among the good ones, not all at the end.
            let good = n % (GOOD_JOBS / BAD_JOBS + 1) != 1;
            let input = if good {
                self.good_input
            } else {
                self.bad_input
            };
            let job = api::JobIn::new([("in", input)], [("out", "o.mp4")], COMMAND).unwrap();
            let id = self.client.submit(&job).await.unwrap().id;
            batch.push(Submitted { id, good });
        }
        assert_eq!(batch.iter().filter(|s| !s.good).count(), BAD_JOBS);
        batch
    }

    /// Waits until at least `n` jobs of the batch are encoding.
    async fn encoding(&self, batch: &[Submitted], n: usize) {
        eventually("jobs encoding", Duration::from_secs(60), || async {
            let mut encoding = 0;
            for s in batch {
                let j = self.client.job(s.id).await.ok()?;
                if j.live.and_then(|l| l.stage).as_deref() == Some("encode") {
                    encoding += 1;
                }
            }
            (encoding >= n).then_some(())
        })
        .await;
    }

    /// How long after `cleared` a job of the batch that had not succeeded by then succeeds.
    async fn recovery(&self, batch: &[Submitted], cleared: Instant) -> Duration {
        let mut done_before = BTreeSet::new();
        for s in batch {
            // The API itself may still be coming back.
            if let Ok(j) = self.client.job(s.id).await {
                if j.state == JobState::Succeeded {
                    done_before.insert(s.id);
                }
            }
        }
        eventually(
            "a job completed after the fault",
            Duration::from_secs(120),
            || async {
                for s in batch.iter().filter(|s| !done_before.contains(&s.id)) {
                    if let Ok(j) = self.client.job(s.id).await {
                        if j.state == JobState::Succeeded {
                            return Some(());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            },
        )
        .await;
        cleared.elapsed()
    }

    /// Every job of the batch ends as it must; returns the platform faults the batch absorbed.
    async fn settle(&self, fault: &str, batch: &[Submitted]) -> u32 {
        let mut platform_faults = 0;
        for s in batch {
            let job =
                tokio::time::timeout(Duration::from_secs(180), self.client.wait(s.id, |_| {}))
                    .await
                    .unwrap_or_else(|_| panic!("{fault}: job {} stuck", s.id))
                    .unwrap();
            platform_faults += job.platform_faults;
            let history = job.history.as_deref().unwrap_or_default();
            let succeeded = history
                .iter()
                .filter(|a| a.outcome.as_deref() == Some("succeeded"))
                .count();
            if s.good {
                assert_eq!(job.state, JobState::Succeeded, "{fault}: {job:#?}");
                assert_eq!(succeeded, 1, "{fault}: completed once: {job:#?}");
                assert_eq!(
                    job.job_faults, 0,
                    "{fault}: the platform's trouble cost the job an attempt: {job:#?}"
                );
                let stored: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM assets WHERE source_job_id = $1")
                        .bind(job.id)
                        .fetch_one(self.platform.store().pool())
                        .await
                        .unwrap();
                assert_eq!(stored, 1, "{fault}: one output asset: {job:#?}");
                let file = &job.outputs[&api::Alias::parse("out").unwrap()].files[0];
                let dest = self.dir.join(format!("{}.mp4", job.id));
                let (size, sha256) = self.client.download(file.asset_id, &dest).await.unwrap();
                assert_eq!(
                    (size, sha256.as_str()),
                    (file.size, file.sha256.as_str()),
                    "{fault}: downloaded bytes"
                );
                let _ = std::fs::remove_file(dest);
            } else {
                assert_eq!(job.state, JobState::Failed, "{fault}: {job:#?}");
                assert_eq!(
                    job.error.as_ref().map(|e| e.code.as_str()),
                    Some("invalid_input"),
                    "{fault}: {job:#?}"
                );
                assert_eq!(job.job_faults, 1, "{fault}: one attempt: {job:#?}");
                assert_eq!(succeeded, 0, "{fault}: {job:#?}");
            }
        }
        platform_faults
    }

    fn report(fault: &str, recovery: Duration, platform_faults: u32) {
        eprintln!(
            "chaos: {fault}: first job completed {:.2} s after the fault cleared; {platform_faults} platform faults absorbed; {GOOD_JOBS} good + {BAD_JOBS} bad-input jobs as they must be",
            recovery.as_secs_f64()
        );
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill takes plain integers.
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "signal {sig} to {pid}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_faults_lose_nothing_double_nothing_and_cost_no_attempts() {
    let dir = TempDir::new("mpegflow-it-chaos");
    let mut chaos = Chaos::start(dir.path()).await;

    // 1. kill -9 of a worker mid-encode; a replacement starts.
    let fault = "kill -9 of a worker mid-encode";
    let batch = chaos.submit_batch().await;
    chaos.encoding(&batch, 2).await;
    let victim = chaos.platform.worker_pids()[0];
    signal(victim, libc::SIGKILL);
    chaos.platform.wait_worker(victim).await;
    chaos.spawn_worker().await;
    let cleared = Instant::now();
    let recovery = chaos.recovery(&batch, cleared).await;
    let absorbed = chaos.settle(fault, &batch).await;
    Chaos::report(fault, recovery, absorbed);

    // 2. PostgreSQL restarted mid-encode.
    let fault = "PostgreSQL restarted";
    let batch = chaos.submit_batch().await;
    chaos.encoding(&batch, 2).await;
    chaos.pg.stop();
    chaos.pg.restart();
    let cleared = Instant::now();
    let recovery = chaos.recovery(&batch, cleared).await;
    let absorbed = chaos.settle(fault, &batch).await;
    Chaos::report(fault, recovery, absorbed);

    // 3. PostgreSQL stopped for longer than the lease.
    let fault = "PostgreSQL stopped for twice the lease";
    let batch = chaos.submit_batch().await;
    chaos.encoding(&batch, 2).await;
    chaos.pg.stop();
    tokio::time::sleep(LEASE * 2).await;
    chaos.pg.restart();
    let cleared = Instant::now();
    let recovery = chaos.recovery(&batch, cleared).await;
    let absorbed = chaos.settle(fault, &batch).await;
    Chaos::report(fault, recovery, absorbed);

    // 4. A worker frozen (SIGSTOP) past its lease, then thawed: its job went to another
    // worker, and nothing it says afterwards counts.
    let fault = "a worker SIGSTOPped past its lease";
    let batch = chaos.submit_batch().await;
    chaos.encoding(&batch, 2).await;
    let frozen = chaos.platform.worker_pids()[0];
    signal(frozen, libc::SIGSTOP);
    tokio::time::sleep(LEASE * 2).await;
    signal(frozen, libc::SIGCONT);
    let cleared = Instant::now();
    let recovery = chaos.recovery(&batch, cleared).await;
    let absorbed = chaos.settle(fault, &batch).await;
    Chaos::report(fault, recovery, absorbed);

    // 5. kill -9 of the control plane, down for twice the lease, then started again.
    let fault = "kill -9 of the control plane, restarted after twice the lease";
    let batch = chaos.submit_batch().await;
    chaos.encoding(&batch, 2).await;
    chaos.kill_control_plane(LEASE * 2).await;
    let cleared = Instant::now();
    let recovery = chaos.recovery(&batch, cleared).await;
    let absorbed = chaos.settle(fault, &batch).await;
    Chaos::report(fault, recovery, absorbed);

    chaos.platform.stop(Duration::from_secs(5)).await;
}
