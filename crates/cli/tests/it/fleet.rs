//! The fleet a platform starts is kept: a worker killed mid-job is replaced with the same
//! token, its work directory (its job's files) is removed, and its job runs again elsewhere.

use crate::harness::*;
use mpegflow_api::JobState;
use std::path::PathBuf;
use std::time::Duration;

/// The `--work-dir` a process was started with.
fn work_dir_of(pid: u32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .find(|w| w[0] == b"--work-dir")
        .map(|w| PathBuf::from(std::ffi::OsStr::from_bytes(w[1])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_worker_killed_mid_job_is_replaced_its_work_dir_removed_and_its_job_completes() {
    let tp = TestPlatform::start(2, test_control_config()).await;
    let client = tp.org("acme").await;
    let long = clip(tp.dir.path(), "long.mp4", 8, "640x360").await;
    let job = submit(
        &client,
        &long,
        &[("out", "o.mp4")],
        "-i {{in}} -c:v libx264 -preset slow -s 1280x720 {{out}}",
    )
    .await;
    wait_for_state(&client, job.id, JobState::Running).await;

    // The worker running it: the one whose work directory holds the job's.
    let job_prefix = job.id.to_string();
    let fleet = tp.platform.fleet_pids();
    assert_eq!(fleet.len(), 2);
    let (victim, work_dir) = eventually("the job's directory", Duration::from_secs(30), || {
        let found = fleet.iter().find_map(|&pid| {
            let dir = work_dir_of(pid)?;
            let busy = std::fs::read_dir(&dir)
                .ok()?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&job_prefix));
            busy.then_some((pid, dir))
        });
        async move { found }
    })
    .await;

    // SAFETY: kill takes plain integers; the pid is a worker this test's platform started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };

    // Its work directory goes, and a replacement takes its place: the fleet is two again.
    eventually(
        "the work directory to be removed",
        Duration::from_secs(30),
        || {
            let gone = !work_dir.exists();
            async move { gone.then_some(()) }
        },
    )
    .await;
    let fleet_now = eventually("a replacement worker", Duration::from_secs(30), || {
        let pids = tp.platform.fleet_pids();
        async move { (pids.len() == 2 && !pids.contains(&victim)).then_some(pids) }
    })
    .await;
    assert!(fleet_now
        .iter()
        .all(|&p| work_dir_of(p).is_some_and(|d| d.exists())));

    // The replacement registers with the fleet's token once the dead worker's slot lapses:
    // three registrations, two of them in touch.
    let db = sqlx::PgPool::connect(&tp.platform.database_url)
        .await
        .unwrap();
    eventually("the replacement to register", Duration::from_secs(60), || {
        let db = db.clone();
        async move {
            let (all, live): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE last_seen_at > now() - interval '4 seconds')
                 FROM workers",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            (all == 3 && live == 2).then_some(())
        }
    })
    .await;
    db.close().await;

    // The killed job's lease expires and it runs again, on another worker.
    let done = client.wait(job.id, |_| {}).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let attempts = history(&done);
    assert!(attempts.len() >= 2, "{done:#?}");
    assert_ne!(
        attempts[0].worker_id,
        attempts.last().unwrap().worker_id,
        "{done:#?}"
    );
    tp.stop().await;
}
