//! Benchmarks of the issue-2 targets, printed as figures (record them in BENCHMARKS.md):
//!
//! 1. Coordinator assignments per second (claim with SKIP LOCKED + presign + audit), with many
//!    concurrent simulated workers over real gRPC, each leased job heartbeating once a second,
//!    and CPU time per assignment; against `pgbench` running the coordinator's own statements
//!    (`assignment.pgbench.sql`, `heartbeat.pgbench.sql`) on the same cluster (issue 8).
//! 2. Platform overhead: 20 real transcodes through the platform (2 workers) against the same
//!    FFmpeg command run directly with the same parallelism.
//!
//! 3. Webhooks: completion-to-delivery latency and deliveries per second (issue 10).
//!
//! Run: `cargo build --release -j2 -p mpegflow-worker -p mpegflow-dispatcher && cargo bench -j2 -p mpegflow --bench platform`

use mpegflow::client::ApiClient;
use mpegflow::pg::Cluster;
use mpegflow::platform::{Platform, PlatformConfig};
use mpegflow_api as api;
use mpegflow_control::ControlConfig;
use mpegflow_proto as pb;
use mpegflow_store::NewJob;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// User + system CPU seconds of `who` (`RUSAGE_SELF`, or `RUSAGE_CHILDREN`: waited-for ones).
fn rusage_seconds(who: libc::c_int) -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// CPU seconds of this process's waited-for children (pgbench, direct FFmpeg runs).
fn children_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_CHILDREN)
}

/// CPU seconds used so far by every process of the PostgreSQL cluster: the postmaster, its
/// children, and those of its children that have exited.
fn postgres_cpu_seconds(data: &Path) -> f64 {
    let pid: i32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse().ok())
        .unwrap_or(0);
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (ppid, own_pid) = (
            f.get(1).and_then(|v| v.parse::<i32>().ok()),
            e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()),
        );
        if ppid == Some(pid) || own_pid == Some(pid) {
            let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            total += (ut + st) / tick;
        }
        if own_pid == Some(pid) {
            // The postmaster's waited-for children: backends that have exited (pgbench's).
            let cut: f64 = f.get(13).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let cst: f64 = f.get(14).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            total += (cut + cst) / tick;
        }
    }
    total
}

async fn start(dir: &Path, cluster: &Cluster, db: &str, workers: usize) -> Platform {
    let url = mpegflow_store::create_database(&cluster.database_url("postgres"), db)
        .await
        .unwrap();
    let cfg = PlatformConfig {
        data_dir: dir.join(db),
        database_url: Some(url),
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        s3_addr: "127.0.0.1:0".into(),
        workers,
        control: ControlConfig {
            heartbeat_seconds: 1,
            max_poll_seconds: 2,
            // Thousands of simulated workers register before any of them polls.
            worker_ttl_seconds: 3600,
            ..ControlConfig::default()
        },
        ..PlatformConfig::default()
    };
    Platform::start(cfg).await.unwrap()
}

/// A database seeded for the coordinator bench: `jobs` queued jobs of one 1-s input, and a
/// worker token allowed thousands of workers.
struct Seeded {
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    token_id: uuid::Uuid,
    asset_id: uuid::Uuid,
    object_key: String,
}

async fn seed(dir: &Path, platform: &Platform, jobs: usize) -> Seeded {
    let store = platform.store().clone();
    let (org, key) = store.create_org("bench").await.unwrap();
    let client = ApiClient::new(&platform.api_url, key.expose());
    let clip = dir.join("tiny.mp4");
    if !clip.exists() {
        mpegflow::sample::make_clip(&clip, 1, "160x120")
            .await
            .unwrap();
    }
    let asset = client.upload(&clip).await.unwrap();
    let template = client
        .submit(&one_input_job(asset.id, "-i {{in}} {{out}}"))
        .await
        .unwrap();
    let inputs = sqlx_inputs(&store, template.id).await;
    // The template is queued too: claimed like the others.
    for _ in 1..jobs {
        store
            .submit_job(NewJob {
                id: uuid::Uuid::now_v7(),
                input_assets: vec![asset.id],
                org_id: org,
                pool_id: mpegflow_store::DEFAULT_POOL_ID,
                command: "-i {{in}} {{out}}".into(),
                argv: serde_json::to_value(&template.argv).unwrap(),
                inputs: inputs.clone(),
                outputs: json!([{ "alias": "out", "filename": "o.mp4" }]),
                timeout_seconds: 60,
                max_attempts: 3,
                metadata: json!({}),
                idempotency_key: None,
                request_hash: vec![],
                actor: "bench".into(),
                grammar: mpegflow_domain::fingerprint::COMMAND_GRAMMAR.into(),
            })
            .await
            .unwrap();
    }
    let (token_id, token) = store
        .create_worker_token("default", "bench", bench_limits())
        .await
        .unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(store.pool())
        .await
        .unwrap();
    Seeded {
        auth: format!("Bearer {}", token.expose()).parse().unwrap(),
        token_id,
        asset_id: asset.id,
        object_key: inputs[0]["object_key"].as_str().unwrap_or("").to_owned(),
    }
}

/// Registers `n` workers with the token (a worker holds one lease at a time).
async fn register_workers(
    channel: &tonic::transport::Channel,
    seeded: &Seeded,
    n: usize,
) -> Vec<String> {
    let mut c = pb::CoordinatorClient::new(channel.clone());
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut r = tonic::Request::new(register_request());
        r.metadata_mut()
            .insert("authorization", seeded.auth.clone());
        ids.push(c.register_worker(r).await.unwrap().into_inner().worker_id);
    }
    ids
}

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

/// One statement as pg_stat_statements saw it in a database since the last reset.
#[derive(Debug, Clone)]
struct Statement {
    query: String,
    calls: i64,
    mean_ms: f64,
    total_ms: f64,
}

async fn statements(pool: &sqlx::PgPool) -> Vec<Statement> {
    let rows: Vec<(String, i64, f64, f64)> = sqlx::query_as(
        "SELECT query, calls, mean_exec_time, total_exec_time FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(query, calls, mean_ms, total_ms)| Statement {
            query,
            calls,
            mean_ms,
            total_ms,
        })
        .collect()
}

async fn reset_statements(pool: &sqlx::PgPool) {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(pool)
        .await
        .unwrap();
}

/// A statement's text with every parameter and constant as `$` and no layout: the form in
/// which the coordinator's statements and the pgbench scripts' (both as pg_stat_statements
/// normalised them) are compared. pgbench numbers each use of a variable as a parameter of its
/// own, so the numbers go.
fn shape(sql: &str) -> String {
    let mut flat = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            flat.push('$');
        } else if c.is_whitespace() {
            while chars.peek().is_some_and(|d| d.is_whitespace()) {
                chars.next();
            }
            flat.push(' ');
        } else {
            flat.push(c);
        }
    }
    let v: Vec<char> = flat
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .chars()
        .collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    v.iter()
        .enumerate()
        .filter(|&(i, &c)| c != ' ' || (word(v[i - 1]) && word(v[i + 1])))
        .map(|(_, &c)| c)
        .collect()
}

/// Transaction control: pgbench in prepared mode has pg_stat_statements count these once per
/// connection, so only their presence is compared.
fn is_transaction_control(shape: &str) -> bool {
    matches!(shape, "BEGIN" | "COMMIT")
}

/// The statements that run for assignments and heartbeats (at least half as often as the
/// rarer of the two), by shape, with their calls.
fn per_unit(stmts: &[Statement], assignments: u64, heartbeats: u64) -> BTreeMap<String, Statement> {
    let unit = if heartbeats > 0 {
        assignments.min(heartbeats)
    } else {
        assignments
    };
    let mut out: BTreeMap<String, Statement> = BTreeMap::new();
    for s in stmts {
        let k = shape(&s.query);
        if k.contains("bench_setup") || k.contains("pg_stat_statements") {
            continue;
        }
        if s.calls as f64 >= unit as f64 / 2.0 || (is_transaction_control(&k) && s.calls > 0) {
            let e = out.entry(k).or_insert(Statement {
                calls: 0,
                total_ms: 0.0,
                ..s.clone()
            });
            e.calls += s.calls;
            e.total_ms += s.total_ms;
            e.mean_ms = e.total_ms / e.calls.max(1) as f64;
        }
    }
    out
}

fn one_line(sql: &str, max: usize) -> String {
    let s: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// What pgbench printed: per script, its transactions and their rate.
fn pgbench_scripts(out: &str) -> Vec<(u64, f64)> {
    out.lines()
        .filter(|l| l.starts_with(" - ") && l.contains(" transactions (") && l.contains("tps = "))
        .map(|l| {
            let n = l[3..].split_whitespace().next().unwrap().parse().unwrap();
            let tps = l.rsplit("tps = ").next().unwrap().trim_end_matches(')');
            (n, tps.trim().parse().unwrap())
        })
        .collect()
}

/// Issue 8: assignments per second over real gRPC with every leased job heartbeating once a
/// second, against `pgbench -c 64 -M prepared` running the coordinator's own statements for
/// one assignment (`assignment.pgbench.sql`) and, weighted to the same mix, for one heartbeat
/// (`heartbeat.pgbench.sql`), on the same cluster.
async fn coordinator_bench(dir: &Path, cluster: &Cluster) {
    const JOBS: usize = 3000;
    const CONCURRENCY: usize = 64;
    let platform = start(dir, cluster, "bench_coordinator", 0).await;
    let seeded = seed(dir, &platform, JOBS).await;
    let pool = platform.store().pool().clone();
    // One connection per simulated worker, as real workers have: the coordinator allows 16
    // open calls per connection.
    let mut channels = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        channels.push(channel(&platform.coordinator_url).await);
    }
    let ids = register_workers(&channels[0], &seeded, JOBS + 1).await;
    let queue = Arc::new(Mutex::new(ids));
    let beats = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = tokio_util::sync::CancellationToken::new();
    let beaters = Arc::new(Mutex::new(Vec::new()));
    reset_statements(&pool).await;
    let pg0 = postgres_cpu_seconds(&cluster.data);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for channel in &channels {
        let (queue, auth, channel) = (queue.clone(), seeded.auth.clone(), channel.clone());
        let (beats, failures, first_failure, stop, beaters) = (
            beats.clone(),
            failures.clone(),
            first_failure.clone(),
            stop.clone(),
            beaters.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut c = pb::CoordinatorClient::new(channel.clone());
            let mut got = 0usize;
            loop {
                let Some(worker_id) = queue.lock().await.pop() else {
                    return got;
                };
                let mut r = tonic::Request::new(pb::GetWorkAssignmentRequest {
                    worker_id: worker_id.clone(),
                    wait_seconds: 0,
                    dropped: None,
                });
                r.metadata_mut().insert("authorization", auth.clone());
                let Some(a) = c
                    .get_work_assignment(r)
                    .await
                    .unwrap()
                    .into_inner()
                    .assignment
                else {
                    return got;
                };
                assert!(a.inputs[0].url.contains("X-Amz-Signature"));
                got += 1;
                // The leased job's worker heartbeats it every second until the bench ends.
                let beat = pb::HeartbeatRequest {
                    worker_id,
                    job_id: a.job_id,
                    fencing_token: a.fencing_token,
                    progress: 0.5,
                    stage: "encode".into(),
                    refresh_input_urls: false,
                    speed: 1.0,
                    fps: 25.0,
                };
                let (mut c, auth) = (pb::CoordinatorClient::new(channel.clone()), auth.clone());
                let (beats, failures, first_failure, stop) = (
                    beats.clone(),
                    failures.clone(),
                    first_failure.clone(),
                    stop.clone(),
                );
                beaters.lock().await.push(tokio::spawn(async move {
                    let second = Duration::from_secs(1);
                    let mut tick =
                        tokio::time::interval_at(tokio::time::Instant::now() + second, second);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        let mut r = tonic::Request::new(beat.clone());
                        r.metadata_mut().insert("authorization", auth.clone());
                        let failed = match c.heartbeat(r).await {
                            Ok(resp) if !resp.get_ref().cancel => None,
                            Ok(_) => Some("the lease was cancelled".to_owned()),
                            Err(s) => Some(format!("{s:?}")),
                        };
                        match failed {
                            None => beats.fetch_add(1, Ordering::Relaxed),
                            Some(e) => {
                                first_failure.lock().unwrap().get_or_insert(e);
                                failures.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                }));
            }
        }));
    }
    let mut assigned = 0;
    for t in tasks {
        assigned += t.await.unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let pg = postgres_cpu_seconds(&cluster.data) - pg0;
    // Heartbeats stop here; those under way finish, so the count matches the database's.
    stop.cancel();
    for b in beaters.lock().await.drain(..) {
        b.await.unwrap();
    }
    let heartbeats = beats.load(Ordering::Relaxed);
    let grpc_stmts = statements(&pool).await;
    let failed = failures.load(Ordering::Relaxed);
    let audits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE action IN ('job.assigned', 'presign.get')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let grpc_rate = assigned as f64 / elapsed;
    let a = assigned as u64;
    println!("coordinator: {assigned} assignments by {CONCURRENCY} concurrent workers in {elapsed:.2} s = {grpc_rate:.0} assignments/s, with every leased job heartbeating once a second: {heartbeats} heartbeats ({:.2} per assignment), {failed} failed", heartbeats as f64 / assigned as f64);
    println!("coordinator: control-plane process CPU {:.3} ms/assignment (includes the simulated gRPC clients); PostgreSQL CPU {:.3} ms/assignment", cpu * 1e3 / assigned as f64, pg * 1e3 / assigned as f64);
    println!("coordinator: {audits} audit rows (job.assigned + presign.get)");
    platform.stop(Duration::from_secs(5)).await;

    // The baseline: the same statements from pgbench, in a database seeded the same way.
    let weight = (1000.0 * heartbeats as f64 / a as f64).round() as u64;
    let per_client = (a + heartbeats).div_ceil(CONCURRENCY as u64);
    let expected = (per_client * CONCURRENCY as u64) as f64 * 1000.0 / (1000 + weight) as f64;
    let base = start(dir, cluster, "bench_coordinator_pgbench", 0).await;
    let seeded_b = seed(dir, &base, (expected * 1.15) as usize + 200).await;
    register_workers(
        &channel(&base.coordinator_url).await,
        &seeded_b,
        CONCURRENCY,
    )
    .await;
    let base_url = base.database_url.clone();
    base.stop(Duration::from_secs(5)).await;
    let base_pool = sqlx::PgPool::connect(&base_url).await.unwrap();
    let cfg = ControlConfig::default();
    let mut vars: Vec<(&str, String)> = vec![
        ("ready", "0".into()),
        ("ttl", "3600".into()),
        ("lease", cfg.lease_seconds.to_string()),
        ("grace", cfg.attempt_grace_seconds.to_string()),
        ("strike_window", cfg.strike_window_seconds.to_string()),
        ("no_strikes_since", "-infinity".into()),
        ("now", "now".into()),
        ("fencing", hex::encode([7u8; 16])),
        ("assigned_action", "job.assigned".into()),
        ("presign_action", "presign.get".into()),
        ("asset_subject", seeded_b.asset_id.to_string()),
        ("hb_progress", "0.5".into()),
        ("hb_event_id", uuid::Uuid::nil().to_string()),
        ("started_type", "job.started".into()),
        ("started_data", json!({ "state": "running" }).to_string()),
        (
            "hb_live",
            json!({ "stage": "encode", "speed": 1.0f32, "fps": 25.0f32 }).to_string(),
        ),
    ];
    vars.push((
        "assigned_details",
        json!({ "attempt": 1, "lease_seconds": cfg.lease_seconds, "token_id": seeded_b.token_id,
                "grammar": mpegflow_domain::fingerprint::COMMAND_GRAMMAR })
        .to_string(),
    ));
    vars.push((
        "presign_details",
        json!({ "key": seeded_b.object_key, "method": "GET", "expires_at": "2026-12-01T00:00:00Z",
                "worker_id": uuid::Uuid::now_v7(), "attempt": 1 })
        .to_string(),
    ));
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    let pgbench = mpegflow::pg::find_bin("pgbench").expect("pgbench not found: install postgresql");
    let password = cluster
        .url
        .split_once("mpegflow:")
        .and_then(|(_, r)| r.split_once('@'))
        .map(|(p, _)| p.to_owned())
        .unwrap();
    let mut cmd = std::process::Command::new(&pgbench);
    cmd.env("PGPASSWORD", password)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "mpegflow",
        ])
        .args([
            "-n",
            "-c",
            &CONCURRENCY.to_string(),
            "-j",
            "2",
            "-M",
            "prepared",
        ])
        .arg("-f")
        .arg(format!(
            "{}@1000",
            scripts.join("assignment.pgbench.sql").display()
        ))
        .arg("-f")
        .arg(format!(
            "{}@{weight}",
            scripts.join("heartbeat.pgbench.sql").display()
        ))
        .args(["-t", &per_client.to_string()]);
    for (k, v) in &vars {
        cmd.arg("-D").arg(format!("{k}={v}"));
    }
    cmd.arg("bench_coordinator_pgbench");
    reset_statements(&base_pool).await;
    let pg0 = postgres_cpu_seconds(&cluster.data);
    let cpu0 = children_cpu_seconds();
    let out = cmd.output().expect("running pgbench");
    let bench_cpu = children_cpu_seconds() - cpu0;
    let pg = postgres_cpu_seconds(&cluster.data) - pg0;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("aborted"),
        "pgbench failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let per_script = pgbench_scripts(&text);
    let [(base_a, base_rate), (base_h, _)] = per_script[..] else {
        panic!("unexpected pgbench output: {text}");
    };
    let base_stmts = statements(&base_pool).await;
    base_pool.close().await;
    println!("coordinator (pgbench -c {CONCURRENCY} -j 2 -M prepared, assignment.pgbench.sql@1000 + heartbeat.pgbench.sql@{weight}, -t {per_client}): {base_a} assignments + {base_h} heartbeats at {base_rate:.0} assignments/s");
    println!("coordinator (pgbench): pgbench process CPU {:.3} ms/assignment; PostgreSQL CPU {:.3} ms/assignment (includes the 64 connections' start)", bench_cpu * 1e3 / base_a as f64, pg * 1e3 / base_a as f64);

    // What one assignment (with its share of heartbeats) costs the database, side by side.
    let g = per_unit(&grpc_stmts, a, heartbeats);
    let b = per_unit(&base_stmts, base_a, base_h);
    println!("coordinator: statements per assignment, gRPC run | pgbench run (calls per assignment, mean ms):");
    let (mut g_sum, mut b_sum) = (0.0, 0.0);
    for s in grpc_stmts
        .iter()
        .filter(|s| g.contains_key(&shape(&s.query)))
    {
        let k = shape(&s.query);
        let (gs, bs) = (&g[&k], b.get(&k));
        g_sum += gs.calls as f64 / a as f64;
        b_sum += bs.map_or(0.0, |b| b.calls as f64 / base_a as f64);
        println!(
            "  {:5.2} {:7.3} ms | {} | {}",
            gs.calls as f64 / a as f64,
            gs.mean_ms,
            bs.map_or("  —".into(), |b| format!(
                "{:5.2} {:7.3} ms",
                b.calls as f64 / base_a as f64,
                b.mean_ms
            )),
            one_line(&s.query, 110)
        );
    }
    println!("coordinator: {g_sum:.2} statements per assignment in the gRPC run, {b_sum:.2} in pgbench's (BEGIN/COMMIT counted once per connection there)");

    // The baseline must be the coordinator's statements: the same set, each as often per
    // assignment (within the sampling of the weighted scripts).
    let missing: Vec<&String> = g.keys().filter(|k| !b.contains_key(*k)).collect();
    let extra: Vec<&String> = b.keys().filter(|k| !g.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the pgbench scripts no longer run the coordinator's statements: update crates/cli/benches/*.pgbench.sql\n\
         run by the coordinator, not by the scripts: {missing:#?}\nrun by the scripts, not by the coordinator: {extra:#?}"
    );
    for (k, gs) in &g {
        if is_transaction_control(k) {
            continue;
        }
        let (x, y) = (
            gs.calls as f64 / a as f64,
            b[k].calls as f64 / base_a as f64,
        );
        assert!(
            (x - y).abs() <= 0.1 * x.max(y) + 0.05,
            "the coordinator runs {k} {x:.2} times per assignment, the pgbench scripts {y:.2}: update crates/cli/benches/*.pgbench.sql"
        );
    }
    assert_eq!(
        failed,
        0,
        "heartbeats failed: {:?}",
        first_failure.lock().unwrap()
    );
    // Only once the baseline is known to be the coordinator's statements, and no heartbeat failed.
    println!(
        "coordinator: gRPC {grpc_rate:.0} assignments/s ÷ pgbench {base_rate:.0} assignments/s = ratio {:.3} (issue 8 goal ≥ 0.8)",
        grpc_rate / base_rate
    );
}

/// One token plays thousands of workers here.
fn bench_limits() -> mpegflow_store::TokenLimits {
    mpegflow_store::TokenLimits {
        max_workers: 10_000,
        leases_per_minute: Some(1_000_000),
    }
}

/// A registration with the fingerprint of an FFmpeg implementing the current grammar.
fn register_request() -> pb::RegisterWorkerRequest {
    pb::RegisterWorkerRequest {
        fingerprint: Some(pb::FfmpegFingerprint {
            version: format!(
                "ffmpeg version {}.0 bench",
                mpegflow_domain::fingerprint::COMMAND_GRAMMAR
            ),
            configuration: String::new(),
            grammar: mpegflow_domain::fingerprint::COMMAND_GRAMMAR.into(),
        }),
        ..Default::default()
    }
}

/// A job of `command` with the input `in` and the output `out` (o.mp4).
fn one_input_job(asset: uuid::Uuid, command: &str) -> api::JobIn {
    api::JobIn::new([("in", asset)], [("out", "o.mp4")], command).unwrap()
}

async fn sqlx_inputs(store: &mpegflow_store::Store, job_id: uuid::Uuid) -> serde_json::Value {
    sqlx::query_scalar("SELECT inputs FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

const COMMAND: &str = "-i {{in}} -c:v libx264 -preset veryfast {{out}}";

/// The same FFmpeg command run directly on local files, `parallel` at a time: wall seconds and
/// FFmpeg's CPU seconds.
async fn direct(clips: &[PathBuf], out_dir: &Path, parallel: usize) -> (f64, f64) {
    let cpu0 = children_cpu_seconds();
    let t0 = Instant::now();
    let queue = Arc::new(Mutex::new(
        clips.iter().cloned().enumerate().collect::<Vec<_>>(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (queue, out_dir) = (queue.clone(), out_dir.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((i, clip)) = queue.lock().await.pop() else {
                    return;
                };
                let st = tokio::process::Command::new("ffmpeg")
                    // The rendered command's explicit threads, so both sides run the same FFmpeg command.
                    .args([
                        "-hide_banner",
                        "-nostdin",
                        "-nostats",
                        "-y",
                        "-threads",
                        "2",
                        "-i",
                    ])
                    .arg(&clip)
                    .args(["-c:v", "libx264", "-preset", "veryfast", "-threads", "2"])
                    .arg(out_dir.join(format!("direct-{i}.mp4")))
                    .stderr(std::process::Stdio::null())
                    .status()
                    .await
                    .unwrap();
                assert!(st.success());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (t0.elapsed().as_secs_f64(), children_cpu_seconds() - cpu0)
}

/// Sums of wall and CPU milliseconds by name, and their means.
#[derive(Default)]
struct Tally(BTreeMap<String, (f64, f64, usize)>);

impl Tally {
    fn add(&mut self, name: &str, wall_ms: f64, cpu_ms: Option<f64>) {
        let e = self.0.entry(name.to_owned()).or_default();
        e.0 += wall_ms;
        e.1 += cpu_ms.unwrap_or(f64::NAN);
        e.2 += 1;
    }
    fn cpu_total(&self) -> f64 {
        self.0
            .values()
            .filter(|(_, c, _)| c.is_finite())
            .map(|(_, c, _)| c)
            .sum()
    }
    fn means(&self) -> String {
        self.0
            .iter()
            .map(|(k, (w, c, n))| {
                let n = *n as f64;
                if c.is_finite() {
                    format!("{k} {:.1} ms wall / {:.1} ms CPU", w / n, c / n)
                } else {
                    format!("{k} {:.1} ms", w / n)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one job cost, as the client saw it.
struct Lane {
    job: api::Job,
    upload_ms: f64,
    /// Submission answered → job record says finished.
    run_ms: f64,
    download_ms: f64,
}

/// `mpegflow up`'s shipped defaults (as root: per-job uids, namespaces, bounded outputs,
/// store-verified hashes), two workers, against plain FFmpeg with the same parallelism. The
/// clock starts before the first upload and stops when the last output is downloaded.
async fn overhead_bench(dir: &Path, cluster: &Cluster, clip_seconds: u32) {
    const JOBS: usize = 20;
    let parallel = 2;
    let db = format!("bench_overhead_{clip_seconds}");
    let url = mpegflow_store::create_database(&cluster.database_url("postgres"), &db)
        .await
        .unwrap();
    let platform = Platform::start(PlatformConfig {
        data_dir: dir.join(&db),
        database_url: Some(url),
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        s3_addr: "127.0.0.1:0".into(),
        workers: parallel,
        ..PlatformConfig::default()
    })
    .await
    .unwrap();
    let (_, key) = platform.store().create_org("bench").await.unwrap();
    let client = ApiClient::new(&platform.api_url, key.expose());
    let mut clips = Vec::new();
    for i in 0..JOBS {
        let p = dir.join(format!("clip-{clip_seconds}-{i}.mp4"));
        mpegflow::sample::make_clip(&p, clip_seconds, "640x360")
            .await
            .unwrap();
        clips.push(p);
    }
    let out_dir = dir.join(format!("platform-out-{clip_seconds}"));
    std::fs::create_dir_all(&out_dir).unwrap();
    // Warm both paths once (page cache, worker registration, connections).
    direct(&clips[..1], dir, 1).await;
    let one = |client: ApiClient, clip: PathBuf, out: PathBuf| async move {
        let t = Instant::now();
        let asset = client.upload(&clip).await.unwrap();
        let upload_ms = t.elapsed().as_secs_f64() * 1e3;
        let job = client
            .submit(&one_input_job(asset.id, COMMAND))
            .await
            .unwrap();
        let t = Instant::now();
        let job = client.wait(job.id, |_| {}).await.unwrap();
        let run_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(job.state, api::JobState::Succeeded, "{job:#?}");
        let t = Instant::now();
        client
            .download_outputs(&job, &BTreeMap::from([("out".to_owned(), out)]))
            .await
            .unwrap();
        Lane {
            job,
            upload_ms,
            run_ms,
            download_ms: t.elapsed().as_secs_f64() * 1e3,
        }
    };
    one(client.clone(), clips[0].clone(), out_dir.join("warm.mp4")).await;

    let (direct_s, direct_cpu) = direct(&clips, dir, parallel).await;

    let pg0 = postgres_cpu_seconds(&cluster.data);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let queue = Arc::new(Mutex::new(
        clips.iter().cloned().enumerate().collect::<Vec<_>>(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (queue, client, out_dir) = (queue.clone(), client.clone(), out_dir.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                // (A `while let` would hold the lock through the job: one lane at a time.)
                let Some((i, clip)) = queue.lock().await.pop() else {
                    return done;
                };
                done.push(one(client.clone(), clip, out_dir.join(format!("p-{i}.mp4"))).await);
            }
        }));
    }
    let mut lanes = Vec::new();
    for t in tasks {
        lanes.extend(t.await.unwrap());
    }
    let platform_s = t0.elapsed().as_secs_f64();
    let bench_cpu = cpu_seconds() - cpu0;
    let pg_cpu = postgres_cpu_seconds(&cluster.data) - pg0;

    let ms = |t: Option<api::Timestamp>| {
        t.map(|t| (t.get().unix_timestamp_nanos() / 1_000_000) as f64)
            .unwrap_or(0.0)
    };
    let (mut stages, mut around) = (Tally::default(), Tally::default());
    for lane in &lanes {
        let a = &lane.job.history.as_deref().unwrap_or_default()[0];
        let first = ms(a.stages.first().and_then(|s| s.started_at));
        let last = ms(a.stages.last().and_then(|s| s.finished_at));
        around.add("client upload", lane.upload_ms, None);
        around.add(
            "submitted->assigned",
            ms(Some(a.assigned_at)) - ms(Some(lane.job.created_at)),
            None,
        );
        around.add(
            "assigned->first stage",
            first - ms(Some(a.assigned_at)),
            None,
        );
        around.add("last stage->recorded", ms(a.finished_at) - last, None);
        around.add(
            "recorded->client saw it",
            lane.run_ms - (ms(a.finished_at) - ms(Some(lane.job.created_at))),
            None,
        );
        around.add("client download", lane.download_ms, None);
        for s in &a.stages {
            stages.add(&s.name, ms(s.finished_at) - ms(s.started_at), s.cpu_ms);
        }
    }
    let n = JOBS as f64;
    let tag = format!("overhead ({clip_seconds} s clips)");
    println!("{tag}: {JOBS} jobs ({clip_seconds} s 640x360 25 fps H.264 + AAC -> libx264 veryfast), parallelism {parallel}, `mpegflow up` defaults{}", if mpegflow::pg::is_root() { " as root (per-job uids)" } else { " unprivileged" });
    println!(
        "{tag}: worker stages per job (worker + its FFmpeg/ffprobe processes): {}",
        stages.means()
    );
    println!("{tag}: around the stages per job: {}", around.means());
    println!(
        "{tag}: CPU per job: direct ffmpeg {:.1} ms; platform {:.1} ms = worker stages {:.1} + control plane, embedded store and client (one process) {:.1} + PostgreSQL {:.1}",
        direct_cpu * 1e3 / n,
        (stages.cpu_total() + (bench_cpu + pg_cpu) * 1e3) / n,
        stages.cpu_total() / n,
        bench_cpu * 1e3 / n,
        pg_cpu * 1e3 / n
    );
    println!("{tag}: direct ffmpeg {direct_s:.2} s, platform (upload+submit+run+download) {platform_s:.2} s, ratio {:.3}", platform_s / direct_s);
    platform.stop(Duration::from_secs(5)).await;
}

/// Round-trip latency of single coordinator calls (no jobs queued).
async fn latency_bench(dir: &Path, cluster: &Cluster) {
    let platform = start(dir, cluster, "bench_latency", 0).await;
    let (_, token) = platform
        .store()
        .create_worker_token("default", "bench", bench_limits())
        .await
        .unwrap();
    let auth: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token.expose()).parse().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(platform.coordinator_url.clone())
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let mut c = pb::CoordinatorClient::new(channel);
    let mut r = tonic::Request::new(register_request());
    r.metadata_mut().insert("authorization", auth.clone());
    let worker_id = c.register_worker(r).await.unwrap().into_inner().worker_id;
    let n = 50;
    let t0 = Instant::now();
    for _ in 0..n {
        let mut r = tonic::Request::new(pb::GetWorkAssignmentRequest {
            worker_id: worker_id.clone(),
            wait_seconds: 0,
            dropped: None,
        });
        r.metadata_mut().insert("authorization", auth.clone());
        c.get_work_assignment(r).await.unwrap();
    }
    println!(
        "latency: empty GetWorkAssignment {:.2} ms",
        t0.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    let (_, key) = platform.store().create_org("bench").await.unwrap();
    let client = ApiClient::new(&platform.api_url, key.expose());
    let clip = dir.join("tiny-l.mp4");
    mpegflow::sample::make_clip(&clip, 1, "160x120")
        .await
        .unwrap();
    let asset = client.upload(&clip).await.unwrap();
    let mut total = Duration::ZERO;
    for _ in 0..10 {
        client
            .submit(&one_input_job(asset.id, "-i {{in}} {{out}}"))
            .await
            .unwrap();
        let mut r = tonic::Request::new(pb::GetWorkAssignmentRequest {
            worker_id: worker_id.clone(),
            wait_seconds: 0,
            dropped: None,
        });
        r.metadata_mut().insert("authorization", auth.clone());
        let t = Instant::now();
        let a = c
            .get_work_assignment(r)
            .await
            .unwrap()
            .into_inner()
            .assignment
            .unwrap();
        total += t.elapsed();
        let mut r = tonic::Request::new(pb::ReportJobStatusRequest {
            worker_id: worker_id.clone(),
            job_id: a.job_id,
            fencing_token: a.fencing_token,
            outcome: 2,
            ..Default::default()
        });
        r.metadata_mut().insert("authorization", auth.clone());
        c.report_job_status(r).await.unwrap();
    }
    println!(
        "latency: successful GetWorkAssignment {:.2} ms",
        total.as_secs_f64() * 1e3 / 10.0
    );
    platform.stop(Duration::from_secs(5)).await;
}

/// A receiver on loopback answering 200 to every POST: each arrival's wall time and body.
async fn hook_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(std::time::SystemTime, Vec<u8>)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((std::time::SystemTime::now(), body.to_vec()));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// CPU seconds used so far by this process's `mpegflow-dispatcher` children (running ones).
fn dispatcher_cpu_seconds() -> f64 {
    let me = std::process::id().to_string();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if head.contains("(mpegflow-dispat") && f.get(1) == Some(&me.as_str()) {
            let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            total += (ut + st) / tick;
        }
    }
    total
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Webhooks under `up`'s defaults (the `mpegflow-dispatcher` process, its own role): latency
/// from a real job's completion (its `finished_at`, set in the transaction that commits it and
/// its event) to the delivery's arrival at a loopback receiver; then deliveries per second for
/// 5,000 events committed at once for 10 orgs (one endpoint each).
async fn webhooks_bench(dir: &Path, cluster: &Cluster) {
    let db = "bench_webhooks";
    let url = mpegflow_store::create_database(&cluster.database_url("postgres"), db)
        .await
        .unwrap();
    let platform = Platform::start(PlatformConfig {
        data_dir: dir.join(db),
        database_url: Some(url),
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        s3_addr: "127.0.0.1:0".into(),
        workers: 2,
        control: ControlConfig {
            webhook_allow_loopback: true,
            ..ControlConfig::default()
        },
        ..PlatformConfig::default()
    })
    .await
    .unwrap();
    let (hook_url, mut rx) = hook_receiver().await;

    // Latency: completion → delivery, 30 real jobs one after another.
    let (_, key) = platform.store().create_org("latency").await.unwrap();
    let client = ApiClient::new(&platform.api_url, key.expose());
    client
        .create_webhook(&api::WebhookIn {
            url: hook_url.clone(),
            events: Some(vec![api::EventType::JobCompleted]),
            description: None,
        })
        .await
        .unwrap();
    let clip = dir.join("tiny-w.mp4");
    mpegflow::sample::make_clip(&clip, 1, "160x120")
        .await
        .unwrap();
    let asset = client.upload(&clip).await.unwrap();
    let mut latencies = Vec::new();
    for _ in 0..30 {
        let job = client
            .submit(&one_input_job(asset.id, "-i {{in}} -c copy {{out}}"))
            .await
            .unwrap();
        let (arrived, body) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a delivery within 60 s")
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(event["data"]["id"], job.id.to_string());
        let finished: api::Timestamp =
            serde_json::from_value(event["data"]["finished_at"].clone()).unwrap();
        let finished = std::time::SystemTime::from(finished.get());
        latencies.push(
            arrived
                .duration_since(finished)
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
        );
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "webhooks: job completion -> delivery over 30 jobs: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().copied().unwrap_or(f64::NAN)
    );

    // Throughput: 5,000 events committed in one transaction, 10 orgs with an endpoint each.
    const ORGS: usize = 10;
    const PER_ORG: usize = 500;
    let mut orgs = Vec::new();
    for n in 0..ORGS {
        let (org, key) = platform
            .store()
            .create_org(&format!("tp{n}"))
            .await
            .unwrap();
        ApiClient::new(&platform.api_url, key.expose())
            .create_webhook(&api::WebhookIn {
                url: hook_url.clone(),
                events: Some(vec![api::EventType::JobCanceled]),
                description: None,
            })
            .await
            .unwrap();
        orgs.push(org);
    }
    let pool = platform.store().pool().clone();
    let cpu0 = cpu_seconds();
    let pg0 = postgres_cpu_seconds(&cluster.data);
    let dispatcher0 = dispatcher_cpu_seconds();
    let t0 = Instant::now();
    let committed = std::time::SystemTime::now();
    sqlx::query(
        "INSERT INTO webhook_events (id, org_id, type, data)
         SELECT gen_random_uuid(), org, 'job.canceled', jsonb_build_object('id', gen_random_uuid(), 'state', 'canceled')
         FROM unnest($1::uuid[]) AS org, generate_series(1, $2)",
    )
    .bind(&orgs)
    .bind(PER_ORG as i32)
    .execute(&pool)
    .await
    .unwrap();
    let mut lag = Vec::new();
    while lag.len() < ORGS * PER_ORG {
        let (arrived, _) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .expect("deliveries keep arriving")
            .unwrap();
        lag.push(
            arrived
                .duration_since(committed)
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
        );
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Recorded too, not only received.
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE state = 'succeeded'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if done as usize >= ORGS * PER_ORG + 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recorded = t0.elapsed().as_secs_f64();
    let control_cpu = cpu_seconds() - cpu0;
    let dispatcher_cpu = dispatcher_cpu_seconds() - dispatcher0;
    let pg_cpu = postgres_cpu_seconds(&cluster.data) - pg0;
    let n = (ORGS * PER_ORG) as f64;
    println!(
        "webhooks: {} deliveries (10 endpoints) in {:.2} s = {:.0}/s received, {:.0}/s recorded; commit -> arrival p50 {:.0} ms, p99 {:.0} ms; CPU per delivery: dispatcher {:.2} ms, PostgreSQL {:.2} ms, this process (receiver, control plane) {:.2} ms",
        ORGS * PER_ORG, elapsed, n / elapsed, n / recorded,
        percentile(&lag, 0.5), percentile(&lag, 0.99), dispatcher_cpu * 1e3 / n, pg_cpu * 1e3 / n,
        control_cpu * 1e3 / n
    );
    platform.stop(Duration::from_secs(5)).await;
}

/// Jail cost: spawn overhead against a plain spawn of the same binary, and a short real
/// transcode jailed against unjailed.
fn jail_bench(dir: &Path) {
    use std::os::unix::process::CommandExt;
    let jail = mpegflow_jail::Jail::new(mpegflow_jail::Layers::default()).expect("jail");
    let work = dir.join("jail-bench");
    std::fs::create_dir_all(work.join("in")).unwrap();
    std::fs::create_dir_all(work.join("out")).unwrap();
    let policy = mpegflow_jail::Policy {
        read: vec![work.join("in")],
        write: vec![work.join("out")],
        ..Default::default()
    };
    let run = |program: &str, args: &[&str], jailed: bool| {
        let t = Instant::now();
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .current_dir(&work)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if jailed {
            let prepared = jail.prepare(Path::new(program), &policy).unwrap();
            unsafe { cmd.pre_exec(move || prepared.apply()) };
        }
        let st = cmd.status().unwrap();
        assert!(st.success(), "{program} {args:?} jailed={jailed}: {st}");
        t.elapsed().as_secs_f64()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let n = 300;
    let (mut plain, mut jailed) = (Vec::new(), Vec::new());
    for _ in 0..n {
        plain.push(run("/bin/true", &[], false));
        jailed.push(run("/bin/true", &[], true));
    }
    println!(
        "jail: spawn+wait of /bin/true over {n} runs: plain mean {:.2} ms (median {:.2}), jailed mean {:.2} ms (median {:.2}); added {:.2} ms mean",
        mean(&plain) * 1e3, median(&mut plain.clone()) * 1e3, mean(&jailed) * 1e3, median(&mut jailed.clone()) * 1e3, (mean(&jailed) - mean(&plain)) * 1e3
    );
    let clip = work.join("in/clip.mp4");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(mpegflow::sample::make_clip(&clip, 2, "640x360"))
        .unwrap();
    let args = [
        "-hide_banner",
        "-nostdin",
        "-y",
        "-threads",
        "2",
        "-i",
        "in/clip.mp4",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-c:a",
        "aac",
        "out/o.mp4",
    ];
    let (mut p, mut j) = (Vec::new(), Vec::new());
    run("/usr/bin/ffmpeg", &args, false);
    for _ in 0..10 {
        p.push(run("/usr/bin/ffmpeg", &args, false));
        j.push(run("/usr/bin/ffmpeg", &args, true));
    }
    println!(
        "jail: 2 s 640x360 transcode (libx264 veryfast + aac) over 10 runs: unjailed mean {:.1} ms, jailed mean {:.1} ms, ratio {:.3}",
        mean(&p) * 1e3, mean(&j) * 1e3, mean(&j) / mean(&p)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mpegflow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = Cluster::start(&dir.join("pg"), None, false).expect("PostgreSQL cluster");
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    if only.as_deref().is_none_or(|o| o == "coordinator") {
        // The coordinator bench reads pg_stat_statements, which must be preloaded.
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&cluster.url).await.unwrap();
            sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                .execute(&mut c)
                .await
                .unwrap();
        });
        cluster.stop();
        cluster = Cluster::start(&dir.join("pg"), None, false).expect("PostgreSQL cluster");
    }
    if only.as_deref().is_none_or(|o| o == "jail") {
        jail_bench(&dir);
    }
    // A failed bench (the coordinator's drift check, a failed heartbeat) still stops the cluster.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            if only.as_deref().is_none_or(|o| o == "coordinator") {
                coordinator_bench(&dir, &cluster).await;
            }
            if only.as_deref() == Some("latency") {
                latency_bench(&dir, &cluster).await;
            }
            if only.as_deref().is_none_or(|o| o == "webhooks") {
                webhooks_bench(&dir, &cluster).await;
            }
            if only.as_deref().is_none_or(|o| o == "overhead") {
                overhead_bench(&dir, &cluster, 1).await;
                overhead_bench(&dir, &cluster, 10).await;
            }
        })
    }));
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
}
