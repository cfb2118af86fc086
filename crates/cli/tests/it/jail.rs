//! The jail, attacked: a hostile stand-in for FFmpeg runs through the real worker and tries to
//! escape. Jailed (as root with a per-job uid, and as the unprivileged worker user) every attempt
//! is blocked with the right error code; unjailed, the same attempts succeed, which proves the
//! test can fail.

use crate::harness::*;
use mpegflow::client::ApiClient;
use mpegflow_api::{self as api, JobState};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The job succeeds and the program's own verdict says BLOCKED.
    Blocked,
    /// The job fails with this error code.
    Code(&'static str),
}

struct Attack {
    name: &'static str,
    arg: String,
    jailed: Expect,
    /// Unjailed, the attempt must succeed (ESCAPED), proving the jail is what stops it.
    control_escapes: bool,
}

struct Env {
    tp: TestPlatform,
    client: ApiClient,
    clip: PathBuf,
    other_job_secret: PathBuf,
    data_secret: PathBuf,
    pid: u32,
}

const SV: Expect = Expect::Code("security_violation");

fn port_of(url: &str) -> String {
    url.rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// Every TCP port listening on loopback right now, from the test's own view of /proc.
fn listening_loopback_ports() -> Vec<u16> {
    let mut ports = std::collections::BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN; local address is hex "ADDR:PORT".
            if f.get(3) == Some(&"0A") {
                if let Some(port) = f
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.insert(port);
                }
            }
        }
    }
    ports.into_iter().collect()
}

fn attacks(env: &Env) -> Vec<Attack> {
    let p = &env.tp.platform;
    let pg_port = port_of(p.database_url.split('@').nth(1).unwrap());
    let a = |name, arg: &str, jailed, control_escapes| Attack {
        name,
        arg: arg.to_owned(),
        jailed,
        control_escapes,
    };
    let outside =
        std::env::temp_dir().join(format!("mpegflow-pwned-{}", uuid::Uuid::new_v4().simple()));
    vec![
        a("read_file", "/etc/passwd", Expect::Blocked, true),
        a("read_ppid_environ", "", Expect::Blocked, false),
        a("read_ppid_mem", "", Expect::Blocked, false),
        a("list_parent", "", Expect::Blocked, true),
        a(
            "read_file",
            &env.other_job_secret.to_string_lossy(),
            Expect::Blocked,
            true,
        ),
        a(
            "read_file",
            &env.data_secret.to_string_lossy(),
            Expect::Blocked,
            true,
        ),
        a(
            "write_file",
            &outside.to_string_lossy(),
            Expect::Blocked,
            true,
        ),
        a("write_input", "in/in.mp4", Expect::Blocked, true),
        a("symlink_out", "", Expect::Blocked, true),
        a("exec_sh", "", Expect::Blocked, true),
        a("signal_parent", "", Expect::Blocked, true),
        a("tcp", &port_of(&p.coordinator_url), SV, true),
        a("tcp", &port_of(&p.s3_endpoint), SV, true),
        a("tcp", &port_of(&p.api_url), SV, true),
        a("tcp", &pg_port, SV, true),
        a("udp", &pg_port, SV, true),
        a(
            "tcp_scan",
            &listening_loopback_ports()
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            SV,
            true,
        ),
        a("ptrace_parent", "", SV, false),
        a("unix_abstract", "", SV, true),
        a("ptrace", "", SV, true),
        a("process_vm_readv", "", SV, true),
        a("userns", "", SV, false),
        a("io_uring", "", SV, false),
        a("memfd", "", SV, true),
        a("fork_bomb", "", SV, true),
        a("alloc", "1024", Expect::Code("memory_limit"), true),
        a("big_file", "24", Expect::Code("output_limit"), false),
        a("sleep", "30", Expect::Code("time_limit"), false),
    ]
}

async fn setup(jailed: bool, keep_root: bool) -> Env {
    setup_with(jailed, keep_root, &[]).await
}

async fn setup_with(jailed: bool, keep_root: bool, worker_args: &[&str]) -> Env {
    let config = mpegflow_control::ControlConfig {
        max_output_bytes: 8 << 20,
        ..test_control_config()
    };
    let mut tp = TestPlatform::start(0, config).await;
    let client = tp.org("acme").await;
    let clip = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    // Another job's input and a platform secret, readable by any uid: only the jail stands
    // between them and the hostile program.
    let data = tp.platform.data_dir.clone();
    let other = data.join("work").join("victim-job").join("in");
    std::fs::create_dir_all(&other).unwrap();
    for d in [
        data.join("work"),
        data.join("work/victim-job"),
        other.clone(),
    ] {
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let other_job_secret = other.join("secret.mp4");
    std::fs::write(&other_job_secret, b"another tenant's video").unwrap();
    let data_secret = data.join("platform-secret.txt");
    std::fs::write(&data_secret, b"platform secret").unwrap();
    for f in [&other_job_secret, &data_secret] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let (_, token) = tp.worker_token("default").await;
    let mut args = vec![
        "--ffmpeg",
        hostile().to_str().unwrap(),
        "--memory-limit-mb",
        "512",
    ];
    if !jailed {
        args.push("--insecure-no-jail");
    }
    args.extend_from_slice(worker_args);
    let pid = tp
        .platform
        .spawn_worker_with(&token, &args, keep_root)
        .await
        .unwrap();
    // A second worker under another token: a tenant-blaming failure (security_violation,
    // invalid_input) is final only when a second worker, of another token if any, confirms it.
    let (_, token2) = tp.worker_token("default").await;
    tp.platform
        .spawn_worker_with(&token2, &args, keep_root)
        .await
        .unwrap();
    Env {
        tp,
        client,
        clip,
        other_job_secret,
        data_secret,
        pid,
    }
}

async fn run_attack(env: &Env, attack: &Attack) -> api::Job {
    let asset = env.client.upload(&env.clip).await.unwrap();
    let command = format!(
        "-i {{{{in}}}} -metadata comment=attack:{}:{} -f mp4 {{{{out}}}}",
        attack.name, attack.arg
    );
    let timeout = if attack.name == "sleep" { 2 } else { 60 };
    let mut job = api::JobIn::new([("in", asset.id)], [("out", "verdict.txt")], command)
        .unwrap_or_else(|e| panic!("{}: {e}", attack.name));
    job.timeout_seconds = Some(api::TimeoutSeconds::parse(timeout).unwrap());
    let job = env
        .client
        .submit(&job)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", attack.name));
    env.client.wait(job.id, |_| {}).await.unwrap()
}

async fn verdict(env: &Env, job: &api::Job) -> String {
    let dest = env.tp.path(&format!("verdict-{}.txt", job.id));
    let id = output_file(job, "out").asset_id;
    env.client.download(id, &dest).await.unwrap();
    std::fs::read_to_string(dest).unwrap()
}

async fn jailed_suite(keep_root: bool, worker_args: &[&str]) {
    let mut env = setup_with(true, keep_root, worker_args).await;
    let list = attacks(&env);
    assert!(list.len() >= 20);
    let mut report = Vec::new();
    for attack in &list {
        let job = run_attack(&env, attack).await;
        let label = format!("{} {}", attack.name, attack.arg);
        match attack.jailed {
            Expect::Blocked => {
                assert_eq!(job.state, JobState::Succeeded, "{label}: {job:#?}");
                let v = verdict(&env, &job).await;
                assert!(v.starts_with("BLOCKED"), "{label}: {v}");
                report.push(format!("{label}: {}", v.trim()));
            }
            Expect::Code(code) => {
                assert_eq!(job.state, JobState::Failed, "{label}: {job:#?}");
                assert_eq!(job_error(&job).code, code, "{label}: {job:#?}");
                if mpegflow_domain::job::error_code::blames_tenant(code) {
                    // One worker's word is not enough: confirmed by the other worker.
                    assert_eq!(job.attempts, 2, "{label}: confirmed elsewhere: {job:#?}");
                    let history = history(&job);
                    assert_ne!(
                        history[0].worker_id, history[1].worker_id,
                        "{label}: confirmed by another worker"
                    );
                } else {
                    assert_eq!(job.attempts, 1, "{label}: not retried on another worker");
                }
                report.push(format!("{label}: {code}"));
            }
        }
    }
    assert!(
        env.tp.platform.worker_alive(env.pid),
        "the worker survived every attack"
    );
    // The worker takes the next job.
    let ok = run_attack(
        &env,
        &Attack {
            name: "none",
            arg: String::new(),
            jailed: Expect::Blocked,
            control_escapes: false,
        },
    )
    .await;
    assert_eq!(ok.state, JobState::Succeeded);
    assert_eq!(verdict(&env, &ok).await.trim(), "OK none");
    // Tripped wires are security events in the audit trail.
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE action = 'security.violation'")
            .fetch_one(env.tp.platform.store().pool())
            .await
            .unwrap();
    let expected = list.iter().filter(|a| a.jailed == SV).count() as i64;
    assert_eq!(events, expected);
    eprintln!(
        "jailed ({}{}): {} attacks\n  {}",
        if keep_root { "root" } else { "unprivileged" },
        worker_args.join(" "),
        report.len(),
        report.join("\n  ")
    );
    env.tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_is_blocked_for_an_unprivileged_worker() {
    jailed_suite(false, &[]).await;
}

/// As on Debian 12's kernel (Landlock ABI 2: no TCP rules, no signal or socket scoping): the
/// other layers still stop every attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_is_blocked_for_an_unprivileged_worker_on_landlock_abi_2() {
    jailed_suite(false, &["--landlock-abi-max", "2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_is_blocked_for_a_root_worker() {
    if !root_setup_available("running the worker as root") {
        return;
    }
    jailed_suite(true, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positive_control_the_same_attacks_escape_without_the_jail() {
    let env = setup(false, false).await;
    let mut escaped = 0;
    for attack in attacks(&env).iter().filter(|a| a.control_escapes) {
        let job = run_attack(&env, attack).await;
        let label = format!("{} {}", attack.name, attack.arg);
        assert_eq!(job.state, JobState::Succeeded, "{label} unjailed: {job:#?}");
        let v = verdict(&env, &job).await;
        assert!(v.starts_with("ESCAPED"), "{label} unjailed: {v}");
        escaped += 1;
    }
    assert!(escaped >= 18, "{escaped}");
    env.tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_test_refuses_a_jail_with_a_layer_disabled() {
    let mut tp = TestPlatform::start(0, test_control_config()).await;
    let (_, token) = tp.worker_token("default").await;
    for layer in ["landlock", "seccomp"] {
        let pid = tp
            .platform
            .spawn_worker_with(&token, &["--jail-disable-layer", layer], false)
            .await
            .unwrap();
        let code = tokio::time::timeout(Duration::from_secs(30), tp.platform.wait_worker(pid))
            .await
            .unwrap();
        assert!(
            matches!(code, Some(c) if c != 0),
            "{layer}: worker must refuse to start, got {code:?}"
        );
    }
    // With the explicit opt-out it starts (and says so loudly in its log).
    let pid = tp
        .platform
        .spawn_worker_with(&token, &["--insecure-no-jail"], false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(tp.platform.worker_alive(pid));
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_transcodes_succeed_inside_the_jail() {
    let tp = TestPlatform::start(2, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "in.mp4", 2, "320x240").await;
    let cases = [
        ("x264/aac", vec![("out", "o.mp4")], "-i {{in}} -c:v libx264 -preset veryfast -c:a aac {{out}}"),
        ("vp9/opus", vec![("out", "o.webm")], "-i {{in}} -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 200k -c:a libopus {{out}}"),
        ("hls", vec![("hls", "hls/")], "-i {{in}} -c:v libx264 -preset veryfast -g 25 -c:a aac -f hls -hls_time 1 -hls_segment_filename {{hls}}/s_%03d.ts {{hls}}/index.m3u8"),
        ("thumbnail", vec![("thumb", "thumb.jpg")], "-ss 1 -i {{in}} -frames:v 1 -vf scale=160:-2 {{thumb}}"),
    ];
    let mut jobs = Vec::new();
    for (label, outputs, command) in &cases {
        jobs.push((label, submit(&client, &input, outputs, command).await));
    }
    for (label, job) in jobs {
        let job = client.wait(job.id, |_| {}).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{label}: {job:#?}");
    }
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_is_really_an_hls_playlist_cannot_pull_in_host_files() {
    // Two workers: `invalid_input` is final once a second worker confirms it.
    let tp = TestPlatform::start(2, test_control_config()).await;
    let client = tp.org("acme").await;
    // A media file elsewhere on the host, readable by everyone.
    let elsewhere = clip(tp.dir.path(), "elsewhere.ts", 1, "160x120").await;
    std::fs::set_permissions(
        &elsewhere,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let playlist = tp.path("innocent.mp4");
    std::fs::write(
        &playlist,
        format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\nfile://{}\n#EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n", elsewhere.display(), elsewhere.display()),
    )
    .unwrap();
    let job = run_job(
        &client,
        &playlist,
        &[("out", "o.mp4")],
        "-i {{in}} -c copy {{out}}",
    )
    .await;
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert_eq!(job_error(&job).code, "invalid_input", "{job:#?}");
    assert!(
        output(&job, "out").files.is_empty(),
        "no output was produced"
    );
    tp.stop().await;
}
