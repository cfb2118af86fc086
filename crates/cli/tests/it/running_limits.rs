//! Limits hold while the job runs, not only after FFmpeg exits: a stand-in that floods its
//! progress pipe or stderr costs the worker a bounded amount of memory, and one that writes
//! from many threads into many files is stopped with `output_limit` while it writes.

use crate::harness::*;
use mpegflow::client::ApiClient;
use mpegflow_api::{self as api, JobState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

async fn run_attack(client: &ApiClient, clip: &Path, attack: &str, timeout: u32) -> api::Job {
    let job = submit_attack(client, clip, attack, timeout).await;
    client.wait(job, |_| {}).await.unwrap()
}

async fn verdict(tp: &TestPlatform, client: &ApiClient, job: &api::Job) -> String {
    let dest = tp.path(&format!("verdict-{}.txt", job.id));
    let id = output_file(job, "out").asset_id;
    client.download(id, &dest).await.unwrap();
    std::fs::read_to_string(dest).unwrap()
}

/// 2 GiB without a newline on stdout (read as FFmpeg's -progress) and on stderr: the worker's
/// peak memory grows by a bounded amount, and the job still ends normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gib_line_on_stdout_or_stderr_costs_the_worker_bounded_memory() {
    let HostilePlatform {
        mut tp,
        client,
        clip,
        worker,
        ..
    } = HostilePlatform::start(test_control_config()).await;
    // One ordinary job first, so the baseline includes everything a job costs anyway.
    let warm = run_attack(&client, &clip, "none", 60).await;
    assert_eq!(warm.state, JobState::Succeeded, "{warm:#?}");
    let before = peak_rss(worker);
    for attack in ["stdout_flood:2048", "stderr_flood:2048"] {
        let job = run_attack(&client, &clip, attack, 600).await;
        assert_eq!(job.state, JobState::Succeeded, "{attack}: {job:#?}");
        let v = verdict(&tp, &client, &job).await;
        assert!(v.starts_with("OK"), "{attack}: {v}");
    }
    let after = peak_rss(worker);
    eprintln!(
        "worker VmHWM: {} KiB before, {} KiB after 2 × 2 GiB without a newline",
        before >> 10,
        after >> 10
    );
    assert!(
        after < before + (32 << 20),
        "the worker's peak memory grew from {before} to {after} bytes"
    );
    assert!(tp.platform.worker_alive(worker));
    tp.stop().await;
}

/// Bytes (allocated or apparent, the larger) and entries under `dir`, walked independently of
/// the worker's own accounting.
fn disk_use(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut entries) = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(list) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in list.flatten() {
            let Ok(m) = e.metadata() else { continue };
            entries += 1;
            bytes += m.len().max(m.blocks() * 512);
            if m.is_dir() {
                pending.push(e.path());
            }
        }
    }
    (bytes, entries)
}

/// Samples the disk use under `dir` until stopped; keeps the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak_bytes: Arc<AtomicU64>,
    peak_files: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// `base` is subtracted: what the directory held before the job.
    fn start(dir: PathBuf, base: (u64, u64)) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_bytes = Arc::new(AtomicU64::new(0));
        let peak_files = Arc::new(AtomicU64::new(0));
        let (s, b, f) = (stop.clone(), peak_bytes.clone(), peak_files.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (bytes, files) = disk_use(&dir);
                b.fetch_max(bytes.saturating_sub(base.0), Ordering::Relaxed);
                f.fetch_max(files.saturating_sub(base.1), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        Sampler {
            stop,
            peak_bytes,
            peak_files,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.peak_bytes.load(Ordering::Relaxed),
            self.peak_files.load(Ordering::Relaxed),
        )
    }
}

const MAX_BYTES: u64 = 8 << 20;
const MAX_FILES: u32 = 50;

/// A hostile worker under output limits of `MAX_BYTES` and `MAX_FILES`: the platform, a client,
/// the clip, the worker's pid and the directory its jobs work in.
async fn output_limited() -> (TestPlatform, ApiClient, PathBuf, u32, PathBuf) {
    let config = mpegflow_control::ControlConfig {
        max_output_bytes: MAX_BYTES,
        max_output_files: MAX_FILES,
        ..test_control_config()
    };
    let HostilePlatform {
        tp,
        client,
        clip,
        worker,
        ..
    } = HostilePlatform::start(config).await;
    let work = tp.platform.data_dir.join("work");
    (tp, client, clip, worker, work)
}

/// An unprivileged worker (no kernel-enforced bound on out/): 16 threads write 2 GiB into 1024
/// files, then 16 threads create 16,000 empty files. The worker stops each while it writes:
/// the job fails `output_limit` from the watcher, and the disk never holds more than the limit
/// plus what the stand-in writes in one watch interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_limit_holds_while_ffmpeg_runs() {
    let (mut tp, client, clip, worker, work) = output_limited().await;
    let mut report = Vec::new();
    for (attack, what) in [
        ("disk_flood:16:64:2048", "bytes"),
        ("disk_flood:16:1000:0", "files"),
    ] {
        let sampler = Sampler::start(work.clone(), disk_use(&work));
        let job = run_attack(&client, &clip, attack, 300).await;
        let (peak_bytes, peak_files) = sampler.finish();
        assert_eq!(job.state, JobState::Failed, "{attack}: {job:#?}");
        let error = job_error(&job);
        assert_eq!(error.code, "output_limit", "{attack}: {job:#?}");
        let message = error.message.as_deref().unwrap_or_default();
        assert!(
            message.contains("while ffmpeg ran"),
            "{attack}: stopped while running, not after: {message}"
        );
        report.push(format!(
            "{attack}: peak {} KiB, {peak_files} entries ({message})",
            peak_bytes >> 10
        ));
        match what {
            // The stand-in would write 2 GiB; the worker stops it within one interval, which at
            // page-cache speed with 16 writers is tens to hundreds of MiB (the documented
            // unprivileged bound): it must be stopped well before half of it.
            "bytes" => assert!(
                peak_bytes < MAX_BYTES + (1 << 30),
                "{attack}: disk use peaked at {peak_bytes} bytes"
            ),
            _ => assert!(
                peak_files < u64::from(MAX_FILES) + 8_000,
                "{attack}: {peak_files} entries"
            ),
        }
    }
    eprintln!("output limits while running:\n  {}", report.join("\n  "));
    assert!(tp.platform.worker_alive(worker));
    tp.stop().await;
}

/// An unprivileged worker shares its uid with the job, so a directory the job makes with mode
/// 0300 (writable, not listable) is one the worker's watcher cannot list either. Writing there
/// must not go unseen: the worker stops the job while it runs, and removes what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlistable_output_directory_does_not_hide_writes() {
    let (mut tp, client, clip, worker, work) = output_limited().await;
    let base = disk_use(&work);
    // 4 threads × 256 files × 2 MiB: 2 GiB, 256 times the limit. Unprivileged, the bound is one
    // watcher interval at page-cache speed (see the test above): the writers must be stopped
    // well before half of it, whatever the machine's load.
    let sampler = Sampler::start(work.clone(), base);
    let job = run_attack(&client, &clip, "hidden_flood:4:256:2048", 300).await;
    let (peak_bytes, _) = sampler.finish();
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let error = job_error(&job);
    assert_eq!(error.code, "output_limit", "{job:#?}");
    let message = error.message.as_deref().unwrap_or_default();
    assert!(message.contains("while ffmpeg ran"), "{message}");
    assert!(
        peak_bytes < MAX_BYTES + (1 << 30),
        "disk use peaked at {peak_bytes} bytes"
    );
    let after = disk_use(&work);
    assert!(
        after.0 <= base.0,
        "the job left {} bytes behind in the work directory",
        after.0 - base.0
    );
    assert!(tp.platform.worker_alive(worker));
    tp.stop().await;
}
