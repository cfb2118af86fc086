//! The privileged spawn helper refuses what it must: uid 0, uids outside its range or not
//! leased by it, any program but ffmpeg/ffprobe (and the self-test probe before `SEAL`), and
//! job directories it cannot open without following links. What it does start runs as the
//! leased uid. Needs root (skips otherwise); runs without the libtest harness because the
//! helper is forked from this process, which must be single-threaded for that.

use mpegflow_jail::ids::IdRange;
use mpegflow_jail::spawner::{self, OutAccess, Program, SpawnError, SpawnerConfig};
use mpegflow_jail::{Jail, Layers, Limits};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const WORKER: u32 = 0x70ff_0000;
const JOB_BASE: u32 = 0x7100_0000;

fn read_all(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let mut b = [0u8; 4096];
        // SAFETY: poll/read on a descriptor we own into buffers we own.
        let n = unsafe {
            libc::poll(&mut p, 1, 30_000);
            libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len())
        };
        match n {
            0 => return out,
            n if n > 0 => out.extend_from_slice(&b[..n as usize]),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => {}
            _ => panic!("read: {}", std::io::Error::last_os_error()),
        }
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, SpawnError>, needle: &str) {
    match r {
        Err(SpawnError::Refused(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
    }
}

fn job_dir(work: &Path, name: &str) {
    for d in ["", "in", "out"] {
        let p = work.join(name).join(d);
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(WORKER), Some(WORKER)).unwrap();
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // A run that promises the root setup (scripts/test.sh as root, as in CI) fails instead.
        assert!(
            std::env::var_os("MPEGFLOW_REQUIRE_ROOT_SETUP").is_none(),
            "the spawn helper test needs root, and this run requires the root setup"
        );
        eprintln!("skipped: needs root");
        return;
    }
    let base = std::env::temp_dir().join(format!("mpegflow-spawner-test-{}", std::process::id()));
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(&work, Some(WORKER), Some(WORKER)).unwrap();
    let id = std::fs::canonicalize("/usr/bin/id").unwrap();
    let cfg = SpawnerConfig {
        work_dir: std::fs::canonicalize(&work).unwrap(),
        worker: (WORKER, WORKER),
        ffmpeg: id.clone(),
        ffprobe: id,
        probe: Some(std::fs::canonicalize("/usr/bin/true").unwrap()),
        job_ids: IdRange {
            base: JOB_BASE,
            count: 8,
        },
        lock_dir: base.join("locks"),
        max_limits: Limits::default(),
        max_output_fs_bytes: 1 << 20,
    };
    let jail = Jail::new(Layers::default()).expect("jail");
    // SAFETY: no thread has been started (harness = false).
    let client = unsafe { spawner::start(cfg, jail, Vec::new()) }.expect("start the helper");
    let limits = Limits::default();
    job_dir(&work, "job-1");
    let uid = client.begin("job-1", &["out"], 1 << 20, 4).expect("begin");
    assert!((JOB_BASE..JOB_BASE + 8).contains(&uid), "{uid}");

    refused(
        client.spawn(0, Program::Ffmpeg, &[], OutAccess::Write, &limits),
        "uid 0",
    );
    refused(
        client.spawn(
            JOB_BASE - 1,
            Program::Ffmpeg,
            &[],
            OutAccess::Write,
            &limits,
        ),
        "outside the job range",
    );
    refused(
        client.spawn(
            JOB_BASE + 8,
            Program::Ffmpeg,
            &[],
            OutAccess::Write,
            &limits,
        ),
        "outside the job range",
    );
    let other = if uid == JOB_BASE {
        JOB_BASE + 1
    } else {
        JOB_BASE
    };
    refused(
        client.spawn(other, Program::Ffmpeg, &[], OutAccess::Write, &limits),
        "not a live job",
    );
    for code in [0u8, 4, 7, 255] {
        refused(
            client.spawn_raw(uid, code, &[], OutAccess::Write as u8, &limits),
            "is not ffmpeg or ffprobe",
        );
    }
    // The self-test probe runs until the worker seals the helper, never after.
    let probe = client
        .spawn(uid, Program::SelfTestProbe, &[], OutAccess::None, &limits)
        .expect("probe before seal");
    assert_eq!(read_all(&probe.status)[..4], 0i32.to_ne_bytes());
    client.seal().unwrap();
    refused(
        client.spawn(uid, Program::SelfTestProbe, &[], OutAccess::None, &limits),
        "is not ffmpeg or ffprobe",
    );
    refused(
        client.begin("../etc", &[], 1, 1),
        "invalid job directory name",
    );
    refused(client.begin("job-1", &[], 1, 1), "already live");
    refused(
        client.begin("job-2", &["Bad/alias"], 1, 1),
        "invalid output alias",
    );
    // A job directory whose in/ is a link elsewhere is not followed.
    job_dir(&work, "job-3");
    std::fs::remove_dir(work.join("job-3/in")).unwrap();
    std::os::unix::fs::symlink("/etc", work.join("job-3/in")).unwrap();
    refused(client.begin("job-3", &[], 1, 1), "in/");

    // What it does start runs as the leased uid and gid, with no supplementary groups.
    let s = client
        .spawn(
            uid,
            Program::Ffmpeg,
            &["-u".into()],
            OutAccess::Write,
            &limits,
        )
        .expect("spawn");
    let out = read_all(&s.stdout);
    assert_eq!(String::from_utf8_lossy(&out).trim(), uid.to_string());
    let status = read_all(&s.status);
    assert_eq!(status.len(), mpegflow_jail::spawner::STATUS_LEN);
    assert_eq!(status[..4], 0i32.to_ne_bytes());
    let s = client
        .spawn(
            uid,
            Program::Ffprobe,
            &["-G".into()],
            OutAccess::None,
            &limits,
        )
        .expect("spawn");
    assert_eq!(
        String::from_utf8_lossy(&read_all(&s.stdout)).trim(),
        uid.to_string()
    );
    // A figure for the report (not an assertion): a start through the helper, to exit.
    let t = std::time::Instant::now();
    for _ in 0..20 {
        let s = client
            .spawn(
                uid,
                Program::Ffmpeg,
                &["-u".into()],
                OutAccess::Write,
                &limits,
            )
            .expect("spawn");
        read_all(&s.status);
    }
    eprintln!(
        "spawn helper: `id -u` as a job uid, start to exit: {:.1} ms each (20 runs)",
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
    client.handover(uid).expect("handover");
    refused(
        client.spawn(uid, Program::Ffmpeg, &[], OutAccess::Write, &limits),
        "handed over",
    );
    client.end(uid).expect("end");
    refused(
        client.spawn(uid, Program::Ffmpeg, &[], OutAccess::Write, &limits),
        "not a live job",
    );
    assert!(!mpegflow_jail::ids::ids_in_use().contains(&uid));

    a_second_handover_is_refused_and_nothing_outside_out_changes(&client, &work, &base);
    a_worker_holds_few_live_jobs(&client, &work);
    the_worker_gets_out_read_only(&client, &work);
    out_is_listed_and_read_only_before_the_handover(&client, &work);
    the_longest_listing_fits_one_answer_and_no_linked_directory_is_walked(&client, &work);
    nothing_of_out_survives_end_for_a_descriptor_holder(&client, &work);
    drop(client);
    a_job_dies_with_its_helper(&base, &work);
    let _ = std::fs::remove_dir_all(&base);
    println!("spawn helper: every refusal held; jobs ran as uid {uid}");
}

/// Forks a child that becomes the worker uid and runs `f` until killed.
fn as_worker(f: impl FnOnce()) -> libc::pid_t {
    // SAFETY: this test process is single-threaded; the child only makes system calls and
    // allocates in its own copy of memory.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(WORKER, WORKER, WORKER) != 0
                || libc::setresuid(WORKER, WORKER, WORKER) != 0
            {
                libc::_exit(1);
            }
            f();
            libc::_exit(0);
        }
        pid
    }
}

fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: killing and reaping our own child by its pid.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// After HANDOVER the worker owns `out/` and may put anything there. A second HANDOVER would
/// walk that tree again as root; with a file swapped for a link between the helper's look and
/// its change, the change would land on the link's target outside the job. The helper refuses
/// a second HANDOVER, and never follows a link when it changes a file.
fn a_second_handover_is_refused_and_nothing_outside_out_changes(
    client: &spawner::SpawnerClient,
    work: &Path,
    base: &Path,
) {
    use std::os::unix::fs::MetadataExt;
    let target = base.join("root-owned-target");
    std::fs::write(&target, b"host file").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    job_dir(work, "job-4");
    let uid = client.begin("job-4", &[], 1 << 20, 16).expect("begin");
    client.handover(uid).expect("first handover");
    let out = work.join("job-4/out");
    // The (compromised) worker, as its own uid: "f" flips between a file and a link to the
    // target as fast as it can.
    let (f, alt) = (out.join("f"), out.join("alt"));
    let swapper = as_worker(|| {
        // (out/ is handed over read-only, so this fails now; the race below is then moot.)
        if std::fs::write(&f, b"x").is_err() || std::os::unix::fs::symlink(&target, &alt).is_err() {
            return;
        }
        let (f, alt) = (
            std::ffi::CString::new(f.to_str().unwrap()).unwrap(),
            std::ffi::CString::new(alt.to_str().unwrap()).unwrap(),
        );
        loop {
            // SAFETY: renameat2 with NUL-terminated paths.
            unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    f.as_ptr(),
                    libc::AT_FDCWD,
                    alt.as_ptr(),
                    libc::RENAME_EXCHANGE,
                );
            }
        }
    });
    let mut second = Vec::new();
    for _ in 0..300 {
        second.push(client.handover(uid));
    }
    kill_and_reap(swapper);
    let mode = std::fs::metadata(&target).unwrap().mode() & 0o7777;
    let accepted = second.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        mode, 0o644,
        "the helper changed a file outside out/ ({accepted} repeated handovers accepted)"
    );
    refused(second.remove(0), "handed over");
    client.end(uid).expect("end");
}

/// When the helper dies (an OOM kill, a crash), nothing it started outlives it: the namespace
/// init dies with it, and so the job. (Changing uid clears the parent-death signal, so it must
/// be set after the change.)
fn a_job_dies_with_its_helper(base: &Path, work: &Path) {
    let children = || -> std::collections::HashSet<i32> {
        let me = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let after = stat.rsplit_once(')')?.1;
                (after.split_whitespace().nth(1)? == me).then_some(pid)
            })
            .collect()
    };
    let before = children();
    let cfg = SpawnerConfig {
        work_dir: std::fs::canonicalize(work).unwrap(),
        worker: (WORKER, WORKER),
        ffmpeg: std::fs::canonicalize("/usr/bin/sleep").unwrap(),
        ffprobe: std::fs::canonicalize("/usr/bin/sleep").unwrap(),
        probe: None,
        job_ids: IdRange {
            base: JOB_BASE + 8,
            count: 8,
        },
        lock_dir: base.join("locks"),
        max_limits: Limits::default(),
        max_output_fs_bytes: 1 << 20,
    };
    let jail = Jail::new(Layers::default()).expect("jail");
    // SAFETY: single-threaded (every earlier child was a process, and is reaped).
    let client = unsafe { spawner::start(cfg, jail, Vec::new()) }.expect("start a second helper");
    let helper = *children()
        .difference(&before)
        .next()
        .expect("the helper is a child of this process");
    job_dir(work, "job-5");
    let uid = client.begin("job-5", &[], 1 << 20, 4).expect("begin");
    let s = client
        .spawn(
            uid,
            Program::Ffmpeg,
            &["1000".into()],
            OutAccess::None,
            &Limits::default(),
        )
        .expect("spawn sleep");
    let running = || mpegflow_jail::ids::processes_with(uid);
    let start = std::time::Instant::now();
    while !running() && start.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(running(), "the job never started");
    kill_and_reap(helper);
    let start = std::time::Instant::now();
    while running() && start.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let survived = running();
    if survived {
        // Clean up what this test started: every process of the job uid.
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            if status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains(&uid.to_string()))
            {
                // SAFETY: SIGKILL to a process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    drop((s, client));
    let out = std::ffi::CString::new(work.join("job-5/out").to_str().unwrap()).unwrap();
    // SAFETY: unmounting the job's out/ the dead helper left behind.
    unsafe { libc::umount2(out.as_ptr(), libc::MNT_DETACH) };
    assert!(!survived, "the job of uid {uid} outlived its spawn helper");
}

/// A worker runs one job at a time. A compromised one that kept calling BEGIN would otherwise
/// take every job uid of the host (shared by all workers) and mount an `out/` file system per
/// call, each as large as `--max-output-fs-mb`, which it may fill once handed over: the
/// documented bound of workers × one `out/` would not hold.
fn a_worker_holds_few_live_jobs(client: &spawner::SpawnerClient, work: &Path) {
    let mut uids = Vec::new();
    let mut refusal = None;
    for i in 0..6 {
        let name = format!("many-{i}");
        job_dir(work, &name);
        match client.begin(&name, &[], 1 << 20, 4) {
            Ok(uid) => uids.push(uid),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    for uid in &uids {
        client.end(*uid).expect("end");
    }
    assert!(
        uids.len() <= spawner::MAX_LIVE_JOBS,
        "{} live jobs at once",
        uids.len()
    );
    refused(refusal.map_or(Ok(()), Err), "live jobs");
    // And ending them makes room again.
    let uid = client.begin("many-0", &[], 1 << 20, 4);
    client
        .end(uid.expect("begin after the others ended"))
        .unwrap();
}

/// The worker only uploads from `out/`. Were it handed over writable, a compromised worker
/// could keep a descriptor into it across END (which only detaches the file system) and go on
/// filling one tmpfs after another, past the bound of one `out/` per worker; or plant links
/// for root to walk. It can read what the job wrote, and change nothing.
fn the_worker_gets_out_read_only(client: &spawner::SpawnerClient, work: &Path) {
    job_dir(work, "job-ro");
    let uid = client
        .begin("job-ro", &["video"], 1 << 20, 16)
        .expect("begin");
    let out = work.join("job-ro/out");
    // What the job wrote (made here as root: the stand-in program writes nothing).
    std::fs::write(out.join("video/result.mp4"), b"encoded").unwrap();
    client.handover(uid).expect("handover");
    let probe = |what: &'static str| {
        let out = out.clone();
        let pid = as_worker(move || {
            let ok = match what {
                "read" => {
                    std::fs::read(out.join("video/result.mp4")).is_ok_and(|b| b == b"encoded")
                }
                "list" => std::fs::read_dir(out.join("video")).is_ok(),
                "write" => std::fs::OpenOptions::new()
                    .append(true)
                    .open(out.join("video/result.mp4"))
                    .is_ok(),
                "create" => std::fs::write(out.join("planted"), b"x").is_ok(),
                "mkdir" => std::fs::create_dir(out.join("video/more")).is_ok(),
                "chmod" => std::fs::set_permissions(
                    out.join("video"),
                    std::fs::Permissions::from_mode(0o777),
                )
                .is_ok(),
                _ => false,
            };
            // SAFETY: leaving the forked child with its answer.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        });
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0
    };
    let allowed: Vec<bool> = ["read", "list", "write", "create", "mkdir", "chmod"]
        .into_iter()
        .map(probe)
        .collect();
    client.end(uid).expect("end");
    assert_eq!(
        allowed,
        [true, true, false, false, false, false],
        "the worker's access to out/ after handover (read, list, write, create, mkdir, chmod)"
    );
}

/// Before the handover the worker cannot list `out/`; the helper names its regular files (no
/// link, directory or other entry, never past `max`), and an ffprobe may read but not write it.
fn out_is_listed_and_read_only_before_the_handover(client: &spawner::SpawnerClient, work: &Path) {
    job_dir(work, "job-list");
    let uid = client
        .begin("job-list", &["video", "hls"], 1 << 20, 16)
        .expect("begin");
    let out = work.join("job-list/out");
    // What the job wrote (made here as root: the stand-in program writes nothing).
    std::fs::write(out.join("video/result.mp4"), b"encoded").unwrap();
    std::fs::write(out.join("hls/b.ts"), b"segment").unwrap();
    std::fs::write(out.join("hls/a.ts"), b"segment").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", out.join("hls/c.ts")).unwrap();
    std::fs::create_dir(out.join("hls/d")).unwrap();
    std::fs::write(out.join("hls/d/e.ts"), b"deeper").unwrap();
    std::fs::write(out.join("stray"), b"top level").unwrap();
    assert_eq!(
        client.list_outputs(uid, 100).expect("list"),
        ["hls/a.ts", "hls/b.ts", "video/result.mp4"]
    );
    assert_eq!(
        client.list_outputs(uid, 2).expect("list"),
        ["hls/a.ts", "hls/b.ts"]
    );
    let limits = Limits::default();
    refused(
        client.spawn(uid, Program::Ffprobe, &[], OutAccess::Write, &limits),
        "may not have that access",
    );
    let s = client
        .spawn(
            uid,
            Program::Ffprobe,
            &["-u".into()],
            OutAccess::Read,
            &limits,
        )
        .expect("an ffprobe that reads out/");
    let status = read_all(&s.status);
    assert_eq!(status.len(), mpegflow_jail::spawner::STATUS_LEN);
    assert_eq!(status[..4], 0i32.to_ne_bytes());
    refused(
        client.spawn_raw(uid, Program::Ffprobe as u8, &[], 9, &limits),
        "unknown out/ access",
    );
    client.handover(uid).expect("handover");
    refused(client.list_outputs(uid, 100), "handed over");
    client.end(uid).expect("end");
}

/// The most names the helper lists, each as long as a file name can be, fit in one answer; an
/// alias that is a link to a directory outside `out/` is not walked.
fn the_longest_listing_fits_one_answer_and_no_linked_directory_is_walked(
    client: &spawner::SpawnerClient,
    work: &Path,
) {
    job_dir(work, "job-names");
    let alias = "a".repeat(64);
    let uid = client
        .begin("job-names", &[alias.as_str()], 1 << 24, 1000)
        .expect("begin");
    let out = work.join("job-names/out");
    std::os::unix::fs::symlink("/etc", out.join("linked")).unwrap();
    for i in 0..spawner::MAX_LISTED + 1 {
        let name = format!("{i:04}{}", "x".repeat(251));
        std::fs::write(out.join(&alias).join(name), b"").unwrap();
    }
    let names = client.list_outputs(uid, usize::MAX).expect("list");
    client.end(uid).expect("end");
    assert_eq!(names.len(), spawner::MAX_LISTED);
    assert!(
        names.iter().all(|n| n.starts_with(&format!("{alias}/"))),
        "only the alias directory is walked, not the link to /etc"
    );
}

/// END only detaches `out/`: a descriptor the worker kept into it would otherwise keep what the
/// job wrote in memory, one job's worth per descriptor, past the bound of one `out/` per worker.
/// The helper empties it first, so a kept descriptor holds nothing.
fn nothing_of_out_survives_end_for_a_descriptor_holder(
    client: &spawner::SpawnerClient,
    work: &Path,
) {
    use std::io::Read;
    job_dir(work, "job-keep");
    let uid = client
        .begin("job-keep", &["video"], 4 << 20, 16)
        .expect("begin");
    let out = work.join("job-keep/out");
    std::fs::write(out.join("video/result.mp4"), vec![7u8; 1 << 20]).unwrap();
    client.handover(uid).expect("handover");
    // Kept open across END (here by the test; the worker can read it, so it can do the same).
    let mut kept = std::fs::File::open(out.join("video/result.mp4")).unwrap();
    let kept_dir = std::fs::File::open(out.join("video")).unwrap();
    client.end(uid).expect("end");
    let mut left = Vec::new();
    kept.read_to_end(&mut left).unwrap();
    let listed = std::fs::read_dir(format!("/proc/self/fd/{}", kept_dir.as_raw_fd()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        (left.len(), listed),
        (0, 0),
        "bytes and entries of out/ still reachable through kept descriptors after END"
    );
}
