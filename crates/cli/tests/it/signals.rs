//! No signal leaves a job. A hostile stand-in for FFmpeg, run jailed by the real worker, sends
//! real signals (SIGUSR1, SIGTERM, SIGSTOP, SIGKILL) by every route Linux offers — kill, tgkill,
//! tkill, rt_sigqueueinfo, rt_tgsigqueueinfo, pidfd_send_signal, pidfd_open, fcntl
//! F_SETOWN/F_SETOWN_EX/F_SETSIG with O_ASYNC, ioctl FIOSETOWN/SIOCSPGRP/FIOASYNC — at its own
//! worker, another worker, another job's jailed process, a control-plane-like process of its
//! own uid, and every process it may signal (`kill(-1)`). Every attempt fails and every target
//! survives, as root and unprivileged, on this kernel's Landlock ABI and capped at ABI 2
//! (Debian 12's 6.1, without Landlock's signal scoping). Unjailed, the same routes land.

use crate::harness::*;
use mpegflow::client::ApiClient;
use mpegflow_api::{self as api, JobState};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// SIGUSR1, SIGTERM, SIGSTOP, SIGKILL: each one would end or freeze an unprotected target.
const REAL_SIGNALS: &str = "10,15,19,9";

/// The process of job `job_id` (its working directory is the job's) whose command line
/// contains `needle`; tests run in parallel, so the job id is what tells them apart.
fn find_process(job_id: Uuid, needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
        let in_job = cwd
            .file_name()?
            .to_str()?
            .starts_with(&format!("{job_id}-"));
        (in_job && String::from_utf8_lossy(&cmdline).contains(needle)).then_some(pid)
    })
}

/// The one-letter state of a process (R, S, D, T, Z, …), `None` once it is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Alive, and neither stopped nor a zombie.
fn running(pid: u32) -> bool {
    matches!(state(pid), Some(s) if !matches!(s, 'T' | 't' | 'Z' | 'X'))
}

fn real_ids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("Uid:"), field("Gid:"))
}

async fn verdict(tp: &TestPlatform, client: &ApiClient, job: &api::Job) -> String {
    let dest = tp.path(&format!("verdict-{}.txt", job.id));
    let id = output_file(job, "out").asset_id;
    client.download(id, &dest).await.unwrap();
    std::fs::read_to_string(dest).unwrap()
}

/// Waits for the jailed stand-in running `attack` and hands it `targets` through its job's
/// `in/` (the only place it can read), once the test has spawned what needs its uid.
async fn wait_for_stand_in(job_id: Uuid, attack: &str) -> (u32, PathBuf) {
    let needle = format!("attack:{attack}");
    let pid = eventually(
        &format!("the stand-in {attack}"),
        Duration::from_secs(60),
        || async { find_process(job_id, &needle) },
    )
    .await;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    (pid, cwd)
}

fn hand_targets(job_dir: &Path, targets: &[i64]) {
    let list = targets
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let tmp = job_dir.join("in/targets.tmp");
    std::fs::write(&tmp, format!("{list}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, job_dir.join("in/targets")).unwrap();
}

/// A stand-in for the control plane: an ordinary process of the given uid.
fn same_uid_process(uid: u32, gid: u32) -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("600")
        .uid(uid)
        .gid(gid)
        .spawn()
        .unwrap()
}

/// Worker `n`'s log, without terminal colour codes.
fn worker_log(tp: &TestPlatform, n: usize) -> String {
    let raw = std::fs::read_to_string(
        tp.platform
            .data_dir
            .join("logs")
            .join(format!("worker-{n}.log")),
    )
    .unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn signal_matrix(keep_root: bool, worker_args: &[&str]) {
    if !root_setup_available("reading other processes' /proc entries and spawning targets") {
        return;
    }
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let clip = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let (_, token) = tp.worker_token("default").await;
    let mut args = vec!["--ffmpeg", hostile().to_str().unwrap()];
    args.extend_from_slice(worker_args);

    // Worker A runs another job's jailed process (a long sleep); worker B then takes the attack.
    let worker_a = tp
        .platform
        .spawn_worker_with(&token, &args, keep_root)
        .await
        .unwrap();
    let victim_job = submit_attack(&client, &clip, "sleep:300", 600).await;
    let (victim, _) = wait_for_stand_in(victim_job, "sleep:300").await;
    let worker_b = tp
        .platform
        .spawn_worker_with(&token, &args, keep_root)
        .await
        .unwrap();
    let attack_job = submit_attack(
        &client,
        &clip,
        &format!("signal_matrix:{REAL_SIGNALS}"),
        120,
    )
    .await;
    let (_attacker, job_dir) = wait_for_stand_in(attack_job, "signal_matrix").await;
    // A stand-in for the control plane under the uid closest to the attacker's: its own when
    // worker and job share one (unprivileged), its worker's when each job has a uid of its own
    // (root), since nothing outside a job ever runs under the job's uid.
    let (uid, gid) = real_ids(worker_b);
    let mut control = same_uid_process(uid, gid);
    let control_pid = control.id();
    // -1: every process the attacker may signal.
    let targets = [worker_b, worker_a, victim, control_pid].map(i64::from);
    hand_targets(
        &job_dir,
        &[targets[0], targets[1], targets[2], targets[3], -1],
    );

    let job = client.wait(attack_job, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let v = verdict(&tp, &client, &job).await;
    assert!(v.starts_with("BLOCKED"), "{v}");
    assert!(v.contains("own raise works"), "{v}");
    let attempts = v.lines().skip(1).filter(|l| !l.is_empty()).count();
    // 4 signals × (4 targets × 15 routes + kill(-1)).
    assert_eq!(attempts, 4 * (4 * 15 + 1), "{v}");
    assert!(!v.contains("SUCCEEDED"), "{v}");

    // pidfd_open is a tripwire: the attacker dies, the target does not. The resulting
    // `security_violation` is final only once a second worker confirms it: a third worker, of
    // another token, is there to do so while worker A holds the victim.
    let (_, token2) = tp.worker_token("default").await;
    tp.platform
        .spawn_worker_with(&token2, &args, keep_root)
        .await
        .unwrap();
    let trip = submit_attack(&client, &clip, &format!("pidfd_open:{worker_b}"), 60).await;
    let trip = client.wait(trip, |_| {}).await.unwrap();
    assert_eq!(trip.state, JobState::Failed, "{trip:#?}");
    assert_eq!(job_error(&trip).code, "security_violation", "{trip:#?}");
    assert_eq!(trip.attempts, 2, "confirmed by a second worker: {trip:#?}");

    for (name, pid) in [
        ("the attacker's worker", worker_b),
        ("another worker", worker_a),
        ("another job's jailed process", victim),
        (
            "a process of the attacker's (unprivileged) or its worker's (root) uid",
            control_pid,
        ),
    ] {
        assert!(
            running(pid),
            "{name} ({pid}) was hit: state {:?}",
            state(pid)
        );
    }
    assert!(matches!(control.try_wait(), Ok(None)));
    assert!(tp.platform.worker_alive(worker_a) && tp.platform.worker_alive(worker_b));
    for n in 0..2 {
        let log = worker_log(&tp, n);
        if let Some(i) = worker_args.iter().position(|a| *a == "--landlock-abi-max") {
            let abi = format!("landlock_abi={} ", worker_args[i + 1]);
            assert!(
                log.contains(&abi) && log.contains("landlock_scopes=false"),
                "worker {n} runs with {abi} and no Landlock signal scoping:\n{log}"
            );
        }
        assert!(
            !log.contains("stopping"),
            "worker {n} received a stop signal:\n{log}"
        );
    }
    let victim_state = client.job(victim_job).await.unwrap();
    assert_eq!(victim_state.state, JobState::Running, "{victim_state:#?}");
    // The attacker's worker takes the next job.
    let next = submit_attack(&client, &clip, "none", 60).await;
    let next = client.wait(next, |_| {}).await.unwrap();
    assert_eq!(next.state, JobState::Succeeded, "{next:#?}");
    eprintln!(
        "signal matrix ({}{}): {attempts} attempts refused\n{v}",
        if keep_root { "root" } else { "unprivileged" },
        worker_args.join(" ")
    );
    let _ = control.kill();
    let _ = control.wait();
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signal_leaves_a_job_for_an_unprivileged_worker() {
    signal_matrix(false, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signal_leaves_a_job_for_an_unprivileged_worker_on_landlock_abi_2() {
    signal_matrix(false, &["--landlock-abi-max", "2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signal_leaves_a_job_for_a_root_worker() {
    signal_matrix(true, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signal_leaves_a_job_for_a_root_worker_on_landlock_abi_2() {
    signal_matrix(true, &["--landlock-abi-max", "2"]).await;
}

/// The same stand-in, unjailed, does signal a process of its uid by these routes: the matrix
/// above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positive_control_signals_land_without_the_jail() {
    if !root_setup_available("the positive control") {
        return;
    }
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let clip = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let (_, token) = tp.worker_token("default").await;
    tp.platform
        .spawn_worker_with(
            &token,
            &[
                "--ffmpeg",
                hostile().to_str().unwrap(),
                "--insecure-no-jail",
            ],
            false,
        )
        .await
        .unwrap();
    // SIGWINCH (ignored by default) by every route, then SIGUSR1 (fatal by default).
    let job = submit_attack(&client, &clip, "signal_matrix:28,10", 60).await;
    let (attacker, job_dir) = wait_for_stand_in(job, "signal_matrix").await;
    let (uid, gid) = real_ids(attacker);
    let mut control = same_uid_process(uid, gid);
    hand_targets(&job_dir, &[i64::from(control.id())]);
    let job = client.wait(job, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    let v = verdict(&tp, &client, &job).await;
    assert!(v.starts_with("ESCAPED"), "{v}");
    for route in [
        "kill",
        "tgkill",
        "tgkill_hibits",
        "tkill",
        "rt_sigqueueinfo",
        "rt_tgsigqueueinfo",
        "fcntl_F_SETSIG",
        "fcntl_F_SETOWN",
        "fcntl_F_SETOWN_EX",
        "fcntl_O_ASYNC",
    ] {
        assert!(
            v.lines()
                .any(|l| l.starts_with(&format!("{route} ")) && l.ends_with("sig 28: SUCCEEDED")),
            "{route} did not land unjailed:\n{v}"
        );
    }
    let status = control.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGUSR1), "a real signal landed");
    tp.stop().await;
}
