//! A separate identity per job, as root (the default of `mpegflow up` on a root host): every
//! worker process runs as a uid of its own with no capabilities, every job's FFmpeg as a fresh
//! uid in its own namespaces, one worker cannot read another's job files, and a job's `out/` is
//! a file system the kernel bounds while the job runs. All tests here need root and say so.

use crate::harness::*;
use mpegflow_api::{self as api, JobState};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

macro_rules! needs_root {
    () => {
        if !root_setup_available("per-job uids (they exist only for a root worker)") {
            return;
        }
    };
}

/// Compiles the identity stand-in once per test binary.
fn standin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| compile_standin("identity_standin.c", "identity-standin"))
}

/// The `Key:` lines of /proc/<pid>/status.
fn proc_status(pid: u32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn ids(status: &HashMap<String, String>, key: &str) -> Vec<u32> {
    status
        .get(key)
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every worker has dropped root, and returns each one's uid.
async fn worker_uids(tp: &mut TestPlatform) -> HashMap<u32, u32> {
    let pids = tp.platform.worker_pids();
    assert!(!pids.is_empty());
    eventually("workers to drop root", Duration::from_secs(30), || {
        let pids = pids.clone();
        async move {
            let mut uids = HashMap::new();
            for pid in pids {
                let uid = *ids(&proc_status(pid), "Uid").first()?;
                if uid == 0 {
                    return None;
                }
                uids.insert(pid, uid);
            }
            Some(uids)
        }
    })
    .await
}

/// Starts `n` root workers (as `mpegflow up` does) that run the stand-in in ffmpeg's place.
async fn platform_with_standin(n: usize, control: mpegflow_control::ControlConfig) -> TestPlatform {
    let mut tp = TestPlatform::start(0, control).await;
    let (_, token) = tp.worker_token("default").await;
    for _ in 0..n {
        tp.platform
            .spawn_worker_with(&token, &["--ffmpeg", standin().to_str().unwrap()], true)
            .await
            .unwrap();
    }
    tp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_up_each_worker_has_its_own_uid_and_no_capabilities() {
    needs_root!();
    // Exactly how `mpegflow up` starts its fleet.
    let mut tp = TestPlatform::start(2, test_control_config()).await;
    let uids = worker_uids(&mut tp).await;
    assert_eq!(uids.len(), 2);
    let mut seen = HashSet::new();
    for (pid, uid) in &uids {
        let st = proc_status(*pid);
        assert_eq!(
            ids(&st, "Uid"),
            vec![*uid; 4],
            "worker {pid}: real, effective, saved, fs uid"
        );
        assert_eq!(ids(&st, "Gid"), vec![*uid; 4], "worker {pid}: gids");
        assert_ne!(*uid, 0);
        assert_eq!(st["Groups"], "", "worker {pid}: no supplementary groups");
        for cap in ["CapEff", "CapPrm", "CapAmb", "CapInh", "CapBnd"] {
            assert_eq!(
                u64::from_str_radix(&st[cap], 16).unwrap(),
                0,
                "worker {pid}: {cap} = {}",
                st[cap]
            );
        }
        assert_eq!(
            st["NoNewPrivs"], "1",
            "worker {pid}: no way back through setuid binaries"
        );
        assert!(seen.insert(*uid), "worker uids are distinct: {uids:?}");

        // Its spawn helper keeps root but has no network: a namespace of its own.
        let helper = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|p| {
                let st = proc_status(*p);
                st.get("PPid").map(String::as_str) == Some(&pid.to_string())
                    && ids(&st, "Uid").first() == Some(&0)
            })
            .expect("the worker's spawn helper (its root child)");
        assert_ne!(
            std::fs::read_link(format!("/proc/{helper}/ns/net")).unwrap(),
            std::fs::read_link("/proc/self/ns/net").unwrap(),
            "the spawn helper is off the host network"
        );
    }
    // And the fleet works: a real transcode as a job uid.
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let job = run_job(
        &client,
        &input,
        &[("out", "o.mp4")],
        "-i {{in}} -c:v libx264 -preset ultrafast -c:a aac {{out}}",
    )
    .await;
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    tp.stop().await;
}

/// "uid=U gid=G pid=P" from a whoami job's output.
async fn whoami(
    client: &mpegflow::client::ApiClient,
    tp: &TestPlatform,
    job: &api::Job,
) -> (u32, u32, u32) {
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let dest = tp.path(&format!("who-{}.txt", job.id));
    client
        .download(output_file(job, "out").asset_id, &dest)
        .await
        .unwrap();
    let text = std::fs::read_to_string(dest).unwrap();
    let field = |k: &str| -> u32 {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {text:?}"))
    };
    (field("uid="), field("gid="), field("pid="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_runs_as_a_fresh_uid_sequentially_and_concurrently() {
    needs_root!();
    let mut tp = platform_with_standin(2, test_control_config()).await;
    let worker_uids: HashSet<u32> = worker_uids(&mut tp).await.into_values().collect();
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let mut job_ids = Vec::new();
    // Two in a row…
    for _ in 0..2 {
        let job = run_job(
            &client,
            &input,
            &[("out", "who.txt")],
            "-i {{in}} -metadata comment=whoami:0 -f mp4 {{out}}",
        )
        .await;
        job_ids.push(whoami(&client, &tp, &job).await);
    }
    // …and two at once, one on each worker.
    let a = submit(
        &client,
        &input,
        &[("out", "who.txt")],
        "-i {{in}} -metadata comment=whoami:3 -f mp4 {{out}}",
    )
    .await;
    let b = submit(
        &client,
        &input,
        &[("out", "who.txt")],
        "-i {{in}} -metadata comment=whoami:3 -f mp4 {{out}}",
    )
    .await;
    let (a, b) = (a.id, b.id);
    eventually(
        "both jobs running at once",
        Duration::from_secs(30),
        || async {
            let ja = client.job(a).await.unwrap();
            let jb = client.job(b).await.unwrap();
            (ja.state == JobState::Running && jb.state == JobState::Running).then_some(())
        },
    )
    .await;
    for id in [a, b] {
        let job = client.wait(id, |_| {}).await.unwrap();
        job_ids.push(whoami(&client, &tp, &job).await);
    }
    eprintln!("worker uids {worker_uids:?}; job (uid, gid, pid) {job_ids:?}");
    let uids: HashSet<u32> = job_ids.iter().map(|(u, _, _)| *u).collect();
    assert_eq!(
        uids.len(),
        4,
        "four jobs, four uids, none reused: {job_ids:?}"
    );
    for (uid, gid, pid) in &job_ids {
        assert_ne!(*uid, 0);
        assert_eq!(uid, gid, "a job's gid is its own too");
        assert!(
            !worker_uids.contains(uid),
            "a job never runs as a worker's uid"
        );
        assert!(
            (0x7001_0000..0x7002_0000).contains(uid),
            "{uid} is in the reserved job range"
        );
        assert_eq!(
            *pid, 2,
            "the job's program is pid 2 of its own pid namespace"
        );
    }
    // Every job uid was freed: nothing of it runs and no mount carries it.
    for (uid, _, _) in &job_ids {
        assert!(
            !mpegflow_jail::ids::ids_in_use().contains(uid),
            "uid {uid} left something behind"
        );
    }
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_cannot_read_another_workers_job_files() {
    needs_root!();
    let mut tp = platform_with_standin(2, test_control_config()).await;
    let uids = worker_uids(&mut tp).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let job = submit(
        &client,
        &input,
        &[("out", "who.txt")],
        "-i {{in}} -metadata comment=whoami:5 -f mp4 {{out}}",
    )
    .await;
    let id = job.id;
    wait_for_state(&client, id, JobState::Running).await;
    // Find the job's input in whichever worker took it (we are root: we may look).
    let work = tp.platform.data_dir.join("work");
    use std::os::unix::fs::MetadataExt;
    // Once the helper has opened the job directory to the job's group (mode 0710), the input
    // is complete.
    let (owner_dir, file) = eventually("the job's input on disk", Duration::from_secs(30), || {
        let work = work.clone();
        async move {
            for w in std::fs::read_dir(&work).ok()?.flatten() {
                let job_dir = w.path().join(format!("{id}-1"));
                let Ok(meta) = std::fs::metadata(&job_dir) else {
                    continue;
                };
                if meta.mode() & 0o777 != 0o710 {
                    continue;
                }
                let f = std::fs::read_dir(job_dir.join("in"))
                    .ok()?
                    .flatten()
                    .next()?;
                return Some((w.path(), f.path()));
            }
            None
        }
    })
    .await;
    let owner_uid = std::fs::metadata(&owner_dir).unwrap().uid();
    assert!(
        uids.values().any(|u| *u == owner_uid),
        "the work directory is its worker's"
    );
    let other_uid = *uids.values().find(|u| **u != owner_uid).unwrap();
    use std::os::unix::process::CommandExt;
    let read_as = |uid: u32, path: &Path| {
        std::process::Command::new("cat")
            .arg(path)
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    // The owning worker reads it (so the attempt below can succeed when it should)…
    let own = read_as(owner_uid, &file);
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    assert_eq!(own.stdout, std::fs::read(&input).unwrap());
    // …the other worker cannot, nor list the first worker's jobs.
    let other = read_as(other_uid, &file);
    assert!(
        !other.status.success(),
        "uid {other_uid} read {}",
        file.display()
    );
    assert!(String::from_utf8_lossy(&other.stderr).contains("Permission denied"));
    let listing = std::process::Command::new("ls")
        .arg(&owner_dir)
        .uid(other_uid)
        .gid(other_uid)
        .output()
        .unwrap();
    assert!(
        !listing.status.success(),
        "uid {other_uid} listed {}",
        owner_dir.display()
    );
    let job = client.wait(id, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    tp.stop().await;
}

/// The tmpfs mounted on a job's `out/` under `root`, if one is mounted now.
fn job_output_mounts(root: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mount_point = PathBuf::from(f.get(4)?);
            let fstype = f
                .iter()
                .position(|x| *x == "-")
                .and_then(|i| f.get(i + 1))?;
            (*fstype == "tmpfs" && mount_point.starts_with(root)).then_some(mount_point)
        })
        .collect()
}

/// Bytes and regular files under `dir`.
fn usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            let (b, f) = usage(&e.path());
            bytes += b;
            files += f;
        } else {
            bytes += meta.len();
            files += 1;
        }
    }
    (bytes, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_file_system_stops_many_writers_while_they_run() {
    needs_root!();
    const LIMIT: u64 = 8 << 20;
    const FILES: u64 = 20;
    let control = mpegflow_control::ControlConfig {
        max_output_bytes: LIMIT,
        max_output_files: FILES as u32,
        ..test_control_config()
    };
    let tp = platform_with_standin(1, control).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    // 8 threads × 40 files × 1 MiB: 320 MiB in 320 files, against an 8-MiB, 20-file limit.
    let job = submit(
        &client,
        &input,
        &[("frames", "frames/")],
        "-i {{in}} -metadata comment=fill:8:40:1 -f mp4 {{frames}}/x.bin",
    )
    .await;
    let id = job.id;
    let root = std::fs::canonicalize(&tp.platform.data_dir).unwrap();
    let (mut most_bytes, mut most_files, mut looks) = (0u64, 0u64, 0);
    let job = loop {
        for mount in job_output_mounts(&root) {
            let (b, f) = usage(&mount);
            most_bytes = most_bytes.max(b);
            most_files = most_files.max(f);
            looks += 1;
        }
        let job = client.job(id).await.unwrap();
        if job.state == JobState::Failed || job.state == JobState::Succeeded {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("out/ held at most {most_bytes} bytes in {most_files} files ({looks} looks)");
    assert!(looks > 0, "the job's out/ was its own file system");
    assert!(most_bytes > 0, "the stand-in wrote");
    assert!(
        most_bytes <= LIMIT + (1 << 20),
        "{most_bytes} bytes > limit + 1 MiB"
    );
    assert!(most_files <= FILES + 8, "{most_files} files");
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert_eq!(job_error(&job).code, "output_limit", "{job:#?}");
    // Unmounted once the job ended.
    eventually("out/ unmounted", Duration::from_secs(10), || async {
        job_output_mounts(&root).is_empty().then_some(())
    })
    .await;
    tp.stop().await;
}

/// A root worker gives its work directory to its own uid. Its parent may be a shared one (the
/// default is under /tmp), where another uid — say a compromised worker from before — can plant
/// a link by that name to some empty directory of the host (`/usr/local/bin` often is). Root must
/// not follow it: the worker refuses, and the link's target keeps its owner and mode.
#[test]
fn a_root_worker_does_not_follow_a_planted_link_for_its_work_directory() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    needs_root!();
    let base = std::env::temp_dir().join(format!("mpegflow-workdir-link-{}", std::process::id()));
    let target = base.join("host-dir");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    let planted = base.join("work");
    std::os::unix::fs::symlink(&target, &planted).unwrap();
    let worker = mpegflow::platform::default_worker_bin().unwrap();
    let out = std::process::Command::new(worker)
        .args(["--coordinator", "http://127.0.0.1:9", "--token-file", "-"])
        .arg("--work-dir")
        .arg(&planted)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let meta = std::fs::metadata(&target).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&base);
    assert!(!out.status.success(), "the worker started: {stderr}");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o755),
        "root followed the planted link and gave its target away; worker said: {stderr}"
    );
    assert!(stderr.contains("work directory"), "{stderr}");
}
