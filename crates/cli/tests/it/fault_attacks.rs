//! Attacks on fault accounting (an adversarial review of issue 9): what a tenant's own job, or
//! one worker's word, could make the platform charge to the platform (free reruns at the head
//! of the queue, strikes against the honest workers' token), and a joiner's trust in a stale
//! platform file.

use crate::harness::*;
use mpegflow_api::{self as api, JobState};
use mpegflow_control::ControlConfig;
use mpegflow_proto as pb;
use std::time::{Duration, Instant};

async fn suspended(tp: &TestPlatform, token_id: uuid::Uuid) -> bool {
    sqlx::query_scalar("SELECT suspended_at IS NOT NULL FROM worker_tokens WHERE id = $1")
        .bind(token_id)
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap()
}

fn attempts_of(job: &api::Job) -> Vec<String> {
    history(job)
        .iter()
        .map(|a| {
            format!(
                "{}:{}:{:?}",
                a.outcome.as_deref().unwrap_or("-"),
                a.error_code.as_deref().unwrap_or("-"),
                a.fault
            )
        })
        .collect()
}

/// Waits until the job is final or the worker token is suspended (then the job never ends).
async fn settle(
    tp: &TestPlatform,
    client: &mpegflow::client::ApiClient,
    id: uuid::Uuid,
    token_id: uuid::Uuid,
) -> api::Job {
    let start = Instant::now();
    loop {
        let job = client.job(id).await.unwrap();
        if job.state.is_terminal() || suspended(tp, token_id).await {
            return job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "neither final nor suspended: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A crafted input makes FFmpeg SIGKILL itself (raise(SIGKILL): tgkill to its own pid is not
/// a forbidden call). The worker cannot tell that from the host's OOM killer and calls it
/// `killed`, a retryable platform fault — so the tenant's job is retried for free, ahead of
/// everyone, and every attempt is a strike against the honest worker's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_self_sigkill_neither_strikes_the_honest_token_nor_runs_for_free() {
    let config = ControlConfig {
        max_attempts: 1,
        // Defaults otherwise (max_platform_faults 10); a low suspension threshold stands for
        // the default 60 strikes, which six such jobs reach.
        throttle_after_strikes: 100,
        suspend_after_strikes: 4,
        ..test_control_config()
    };
    let hp = HostilePlatform::start(config).await;
    let id = submit_attack(&hp.client, &hp.clip, "self_kill", 30).await;
    let job = settle(&hp.tp, &hp.client, id, hp.token_id).await;
    let strikes = strikes(&hp.tp, hp.token_id).await;
    let suspended = suspended(&hp.tp, hp.token_id).await;
    eprintln!(
        "state {} attempts {} job_faults {} platform_faults {} strikes {strikes} suspended {suspended}: {:?}",
        job.state,
        job.attempts,
        job.job_faults,
        job.platform_faults,
        attempts_of(&job)
    );
    assert!(
        !suspended,
        "one tenant job suspended the honest worker token: {strikes} strikes, attempts {:?}",
        attempts_of(&job)
    );
    assert_eq!(
        strikes,
        0,
        "the tenant's own kill struck the worker token: {:?}",
        attempts_of(&job)
    );
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert!(
        job.attempts <= 2,
        "max_attempts 1, yet the job ran {} times: {:?}",
        job.attempts,
        attempts_of(&job)
    );
    hp.tp.stop().await;
}

/// A job may produce up to `max_output_files` (10 000) files in a directory output, names of
/// up to 128 characters. The worker asks for all their upload URLs in one call, whose answer
/// (about 1 KiB a file) passes gRPC's default 4 MiB message limit: the worker calls that
/// `output_upload_failed`, a retryable platform fault — a strike on the honest token, and the
/// job runs again for free, at the head of the queue, until `max_platform_faults`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_many_outputs_is_not_a_platform_fault() {
    let config = ControlConfig {
        max_platform_faults: 3,
        ..test_control_config()
    };
    let hp = HostilePlatform::start(config).await;
    let asset = hp.client.upload(&hp.clip).await.unwrap();
    let mut job = api::JobIn::new(
        [("in", asset.id)],
        [("d", "d/")],
        "-i {{in}} -metadata comment=attack:many_files:6000 -f mp4 {{d}}/verdict.mp4",
    )
    .unwrap();
    job.timeout_seconds = Some(api::TimeoutSeconds::parse(600).unwrap());
    let id = hp.client.submit(&job).await.unwrap().id;
    let job = settle(&hp.tp, &hp.client, id, hp.token_id).await;
    let strikes = strikes(&hp.tp, hp.token_id).await;
    eprintln!(
        "state {} attempts {} job_faults {} platform_faults {} strikes {strikes}: {:?} {:?}",
        job.state,
        job.attempts,
        job.job_faults,
        job.platform_faults,
        attempts_of(&job),
        job.error
    );
    assert_eq!(
        strikes,
        0,
        "a tenant's many outputs struck the honest worker token: {:?}",
        attempts_of(&job)
    );
    assert_eq!(job.platform_faults, 0, "{:?}", attempts_of(&job));
    hp.tp.stop().await;
}

/// The same with the default strike and fault policy: six such jobs of one tenant (ten free
/// platform faults each) suspend the honest fleet's token, and every tenant's work stops
/// until an admin lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_self_killing_jobs_do_not_suspend_the_honest_token_under_the_default_policy() {
    let hp = HostilePlatform::start(test_control_config()).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit_attack(&hp.client, &hp.clip, "self_kill", 30).await);
    }
    let start = Instant::now();
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(settle(&hp.tp, &hp.client, *id, hp.token_id).await);
    }
    let strikes = strikes(&hp.tp, hp.token_id).await;
    let suspended = suspended(&hp.tp, hp.token_id).await;
    let runs: u32 = jobs.iter().map(|j| j.attempts).sum();
    eprintln!(
        "after {:.0?}: {runs} runs of 6 jobs, {strikes} strikes, suspended {suspended}; states {:?}",
        start.elapsed(),
        jobs.iter().map(|j| j.state).collect::<Vec<_>>()
    );
    assert!(
        !suspended,
        "six jobs of one tenant suspended the honest token: {runs} runs, {strikes} strikes"
    );
    hp.tp.stop().await;
}

/// FFmpeg that produces nothing for a declared output is the job's doing (its command), yet
/// the worker's `output_missing` is on the platform's list: the failure is recorded as the
/// platform's fault and counted in `platform_faults`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_command_never_wrote_is_the_jobs_fault() {
    let hp = HostilePlatform::start(test_control_config()).await;
    let asset = hp.client.upload(&hp.clip).await.unwrap();
    let job = api::JobIn::new(
        [("in", asset.id)],
        [("out", "verdict.txt"), ("b", "b.mp4")],
        "-i {{in}} -metadata comment=attack:none -f mp4 {{b}} -f mp4 {{out}}",
    )
    .unwrap();
    let id = hp.client.submit(&job).await.unwrap().id;
    let job = settle(&hp.tp, &hp.client, id, hp.token_id).await;
    eprintln!(
        "state {} job_faults {} platform_faults {}: {:?} {:?}",
        job.state,
        job.job_faults,
        job.platform_faults,
        attempts_of(&job),
        job.error
    );
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert_eq!(job_error(&job).code, "output_missing", "{job:#?}");
    assert_eq!(
        history(&job)[0].fault,
        Some(api::Fault::Job),
        "the tenant's command wrote no b.mp4: {:?}",
        attempts_of(&job)
    );
    hp.tp.stop().await;
}

/// A platform fault is meant to cost the job nothing and requeue it (up to
/// `max_platform_faults`). But a worker's `retryable: false` on a platform code ends the job at
/// once — charged to "the platform", and with no strike against the token that said so: one
/// rogue worker fails whatever it claims, for free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_unretryable_platform_fault_does_not_end_the_job_unchallenged() {
    let Queued { tp, client, jobs } = Queued::start(test_control_config(), 1).await;
    let id = jobs[0].id;
    let (token_id, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let a = r.poll(&w, 2).await.unwrap().expect("the job");
    r.fail(&w, &a, "worker_error", false).await.unwrap();
    let job = client.job(id).await.unwrap();
    let strikes = strikes(&tp, token_id).await;
    eprintln!(
        "state {} platform_faults {} strikes {strikes}: {:?}",
        job.state,
        job.platform_faults,
        attempts_of(&job)
    );
    assert!(
        job.state == JobState::Queued || strikes > 0,
        "one worker's word ended the job for good at no cost to its token: {job:#?}"
    );
    tp.stop().await;
}

/// `up` killed (-9, OOM, power) leaves its `platform.json`; the next `up` on the data directory
/// takes the lock at once but publishes only once it serves, seconds later, after starting
/// PostgreSQL on a *new* random port. A `control --join` started in that window (a supervisor
/// restarting it, as in the chaos suite) sees the lock held and trusts the stale file: it
/// connects to the old database port — free now, so any local user can listen there — and
/// hands its password (kept across runs in `pg-password`) to whoever answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_does_not_give_the_database_password_to_a_stale_platform_files_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tp = TestPlatform::start(0, test_control_config()).await;
    let data_dir = tp.platform.data_dir.clone();
    let file = data_dir.join(mpegflow::platform::PLATFORM_FILE);
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let url = info["database_url"].as_str().unwrap().to_owned();
    // The earlier run's port, now held by another local user's listener.
    let squatter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old_port = squatter.local_addr().unwrap().port();
    let at = url.find("@127.0.0.1:").unwrap() + "@127.0.0.1:".len();
    let end = at + url[at..].find('/').unwrap();
    let stale = format!("{}{old_port}{}", &url[..at], &url[end..]);
    info["database_url"] = stale.clone().into();
    // Written by the earlier run: its pid, which is gone.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    info["pid"] = gone_pid.into();
    std::fs::write(&file, serde_json::to_string_pretty(&info).unwrap()).unwrap();

    // A PostgreSQL look-alike asking for the password in clear text.
    let caught = tokio::spawn(async move {
        let (mut s, _) = squatter.accept().await.ok()?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).await.ok()?;
        if startup.starts_with(&[0x04, 0xd2, 0x16, 0x2f]) {
            // SSLRequest: no.
            s.write_all(b"N").await.ok()?;
            s.read_exact(&mut len).await.ok()?;
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            s.read_exact(&mut startup).await.ok()?;
        }
        s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.ok()?;
        let mut tag = [0u8; 1];
        s.read_exact(&mut tag).await.ok()?;
        s.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut body).await.ok()?;
        (tag[0] == b'p').then(|| {
            String::from_utf8_lossy(&body)
                .trim_end_matches('\0')
                .to_owned()
        })
    });

    let cfg = mpegflow::control_only::ControlOnlyConfig {
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        control: test_control_config(),
        join: Some(data_dir.clone()),
        ..Default::default()
    };
    let listeners = mpegflow::control_only::Listeners::bind(&cfg).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let joined = tokio::spawn(mpegflow::control_only::run(cfg, listeners, stop.clone()));
    let password = tokio::time::timeout(Duration::from_secs(30), caught)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    stop.cancel();
    joined.abort();
    // The password in the URL the platform uses (an `up` keeps it in DATA_DIR/pg-password).
    let real = url
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .and_then(|(u, _)| u.split_once(':'))
        .map(|(_, p)| p.to_owned());
    eprintln!(
        "the squatter on the stale port got {password:?} (the database's password: {real:?})"
    );
    assert!(
        password.is_none(),
        "the joiner sent the database password to the stale port's listener: {password:?}"
    );
    tp.stop().await;
}

/// A tenant's crafted bad inputs draw a blame from every honest worker that meets them. Before
/// a second worker confirms, a blame was a strike: enough bad jobs suspended the honest fleet's
/// token. Now a confirmed blame strikes no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_bad_inputs_confirmed_by_a_second_worker_strike_no_one() {
    let config = ControlConfig {
        throttle_after_strikes: 100,
        suspend_after_strikes: 2,
        ..test_control_config()
    };
    // Two honest workers of one (fleet) token.
    let tp = TestPlatform::start(2, config).await;
    let client = tp.org("acme").await;
    let bad = tp.path("bad.mp4");
    std::fs::write(&bad, b"not a video").unwrap();
    for _ in 0..4 {
        let job = run_job(&client, &bad, &[("out", "o.mp4")], "-i {{in}} {{out}}").await;
        assert_eq!(job.state, JobState::Failed, "{job:#?}");
        assert_eq!(job_error(&job).code, "invalid_input");
        assert_eq!((job.attempts, job.job_faults), (2, 1), "{job:#?}");
    }
    let strikes: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE strike")
        .fetch_one(tp.platform.store().pool())
        .await
        .unwrap();
    assert_eq!(
        strikes, 0,
        "the honest fleet was struck for the tenant's bad inputs"
    );
    let suspended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM worker_tokens WHERE suspended_at IS NOT NULL")
            .fetch_one(tp.platform.store().pool())
            .await
            .unwrap();
    assert_eq!(suspended, 0);
    tp.stop().await;
}

/// A rogue worker blames a good job on its tenant, and an honest worker then runs it to success.
/// The contradiction is audited (`job.blame_refuted`, naming the blamer) for an operator, but is
/// no strike: one worker's success cannot prove another worker wrong (see the two tests above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refuted_blame_is_audited_and_strikes_no_one() {
    let Queued {
        mut tp,
        client,
        jobs,
    } = Queued::start(test_control_config(), 1).await;
    let id = jobs[0].id;
    let (rogue_token, token) = tp.worker_token_with("default", max_workers(1)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let a = r
        .poll(&w, 2)
        .await
        .unwrap()
        .expect("the rogue gets the job");
    r.fail(&w, &a, "invalid_input", false).await.unwrap();
    assert_eq!(
        strikes(&tp, rogue_token).await,
        0,
        "not yet: nobody knows who is right"
    );
    // An honest worker of another token runs it.
    let (_, honest) = tp.worker_token("default").await;
    tp.platform.spawn_worker(&honest).await.unwrap();
    let job = client.wait(id, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!((job.job_faults, job.platform_faults), (0, 0), "{job:#?}");
    assert_eq!(
        strikes(&tp, rogue_token).await,
        0,
        "one worker's word struck another"
    );
    let refuted: Vec<String> = sqlx::query_scalar(
        "SELECT subject FROM audit_logs WHERE job_id = $1 AND action = 'job.blame_refuted'",
    )
    .bind(id)
    .fetch_all(tp.platform.store().pool())
    .await
    .unwrap();
    assert_eq!(refuted, vec![w.clone()]);
    tp.stop().await;
}

/// adv9b: code run inside FFmpeg by a crafted input chooses by itself whether the attempt
/// blames the tenant: it kills its process with SIGSYS (what the seccomp tripwire's kill looks
/// like: `security_violation`) before a time the tenant picked, and encodes after it. The
/// honest worker that met it first reported the truth; the honest worker that met it later
/// succeeds, and the first one's blame is "refuted": a strike against the honest fleet token.
/// A tenant repeating this (or failing at random: a quarter of its jobs strike) suspends the
/// fleet — what 1db592b meant to end. (Here both workers share the fleet's token, as `up`
/// runs them; the success alone cannot tell a lying blamer from a tenant's flaky input.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_input_that_fails_only_on_the_first_worker_does_not_strike_it() {
    let config = ControlConfig {
        throttle_after_strikes: 100,
        suspend_after_strikes: 1,
        ..test_control_config()
    };
    let mut tp = TestPlatform::start(0, config).await;
    let client = tp.org("acme").await;
    let clip = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let (token_id, token) = tp.worker_token("default").await;
    let ffmpeg = ["--ffmpeg", hostile().to_str().unwrap()];
    tp.platform
        .spawn_worker_with(&token, &ffmpeg, false)
        .await
        .unwrap();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 15;
    let id = submit_attack(&client, &clip, &format!("sigsys_before:{until}"), 30).await;
    // The first worker meets it (before `until`) and blames the tenant, truthfully.
    let start = Instant::now();
    let first = loop {
        let job = client.job(id).await.unwrap();
        if let Some(a) = history(&job).iter().find(|a| a.outcome.is_some()) {
            break a.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{job:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        first.error_code.as_deref(),
        Some("security_violation"),
        "{first:#?}"
    );
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= until
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A second honest worker of the fleet joins and runs it to success.
    tp.platform
        .spawn_worker_with(&token, &ffmpeg, false)
        .await
        .unwrap();
    let job = client.wait(id, |_| {}).await.unwrap();
    eprintln!(
        "state {} attempts {:?} strikes {} suspended {}",
        job.state,
        attempts_of(&job),
        strikes(&tp, token_id).await,
        suspended(&tp, token_id).await
    );
    assert_eq!(job.state, JobState::Succeeded, "{job:#?}");
    assert_eq!(
        strikes(&tp, token_id).await,
        0,
        "the tenant's own flaky input struck the honest fleet token: {:?}",
        attempts_of(&job)
    );
    assert!(
        !suspended(&tp, token_id).await,
        "the fleet token is suspended"
    );
    tp.stop().await;
}

/// adv9b: a rogue worker (its own token) turns an honest worker's true blame into a strike.
/// A tenant's input is garbage; the honest fleet worker says `invalid_input`, unconfirmed, and
/// the job is requeued for a worker of another token — the rogue's, preferred for it. The
/// rogue uploads any bytes as the output and reports success: the honest blame is "refuted",
/// a strike against the honest fleet's token. Every bad input the fleet meets becomes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_workers_fake_success_does_not_strike_the_honest_blamer() {
    let config = ControlConfig {
        throttle_after_strikes: 100,
        suspend_after_strikes: 1,
        ..test_control_config()
    };
    let mut tp = TestPlatform::start(0, config).await;
    let client = tp.org("acme").await;
    let (honest_id, honest) = tp.worker_token("default").await;
    tp.platform.spawn_worker(&honest).await.unwrap();
    let bad = tp.path("bad.mp4");
    std::fs::write(&bad, b"not a video").unwrap();
    let job = submit(&client, &bad, &[("out", "o.mp4")], "-i {{in}} {{out}}").await;
    let start = Instant::now();
    loop {
        let j = client.job(job.id).await.unwrap();
        if history(&j).iter().any(|a| a.outcome.is_some()) {
            assert_eq!(
                attempts_of(&j)[0],
                "failed:invalid_input:None",
                "the honest worker blames the garbage input: {j:#?}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{j:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The rogue, with a token of its own, takes the requeued job and "encodes" it.
    let (_, rogue_token) = tp.worker_token("default").await;
    let mut r = RawWorker::connect(&tp, &rogue_token).await;
    let w = r.register().await.unwrap();
    let mut a = None;
    for _ in 0..20 {
        if let Some(got) = r.poll(&w, 2).await.unwrap() {
            a = Some(got);
            break;
        }
    }
    let a = a.expect("the rogue gets the requeued job");
    let bytes: &[u8] = b"anything at all";
    let files = vec![pb::ProducedFile {
        path: "out/o.mp4".into(),
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    }];
    let req = r.req(pb::RequestUploadUrlsRequest {
        worker_id: w.clone(),
        job_id: a.job_id.clone(),
        fencing_token: a.fencing_token.clone(),
        files: files.clone(),
    });
    let urls = r
        .client
        .request_upload_urls(req)
        .await
        .unwrap()
        .into_inner()
        .uploads;
    let mut put = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(&urls[0].url)
        .body(bytes.to_vec());
    for (k, v) in &urls[0].headers {
        if k != "content-length" {
            put = put.header(k, v);
        }
    }
    assert!(put.send().await.unwrap().status().is_success());
    let req = r.req(pb::ReportJobStatusRequest {
        worker_id: w.clone(),
        job_id: a.job_id.clone(),
        fencing_token: a.fencing_token.clone(),
        outcome: pb::Outcome::Succeeded as i32,
        outputs: files,
        ..Default::default()
    });
    r.client.report_job_status(req).await.unwrap();
    let j = client.job(job.id).await.unwrap();
    eprintln!(
        "state {} attempts {:?} honest strikes {} suspended {}",
        j.state,
        attempts_of(&j),
        strikes(&tp, honest_id).await,
        suspended(&tp, honest_id).await
    );
    assert_eq!(
        strikes(&tp, honest_id).await,
        0,
        "a rogue's word struck the honest fleet token: {:?}",
        attempts_of(&j)
    );
    assert!(!suspended(&tp, honest_id).await);
    tp.stop().await;
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// adv9b: a819f9a raised the coordinator's decoding limit to 32 MiB for every RPC, and the
/// token is checked in the handlers, after tonic has buffered and decoded the message: a peer
/// with no token at all makes the coordinator hold 32 MiB (plus its decoded copy) per request
/// in flight, with no limit on concurrent streams. 24 such requests, sent by curl processes
/// (so that the attacker's own buffers are not in this process's figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_peer_cannot_make_the_coordinator_buffer_32_mib_messages() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    // ReportJobStatusRequest { error_message (field 7) = 31 MiB of "x" }, encoded by hand.
    let n = 31 * 1024 * 1024usize;
    let mut msg = vec![7 << 3 | 2];
    let mut len = n;
    while len >= 0x80 {
        msg.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    msg.push(len as u8);
    msg.resize(msg.len() + n, b'x');
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    drop(msg);
    let body = tp.path("frame.bin");
    std::fs::write(&body, &frame).unwrap();
    drop(frame);
    let before = peak_rss_mib();
    let url = format!(
        "{}/mpegflow.coordinator.v1.Coordinator/ReportJobStatus",
        tp.platform.coordinator_url
    );
    let curls: Vec<_> = (0..24)
        .map(|_| {
            std::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} ",
                    "--http2-prior-knowledge",
                ])
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                .arg("--data-binary")
                .arg(format!("@{}", body.display()))
                .arg(&url)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut codes = String::new();
    for c in curls {
        let out = tokio::task::spawn_blocking(move || c.wait_with_output().unwrap())
            .await
            .unwrap();
        codes.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let grown = peak_rss_mib().saturating_sub(before);
    eprintln!("http codes {codes}; coordinator peak RSS grew {grown} MiB");
    assert!(
        grown < 256,
        "the coordinator buffered 24 unauthenticated 31 MiB messages: peak RSS +{grown} MiB"
    );
    tp.stop().await;
}
