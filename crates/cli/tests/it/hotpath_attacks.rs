//! adv8c: the coordinator's merged authentication and touch, the claim without its separate
//! lease check, and the pool that no longer pings a connection used within the last second.

use crate::harness::*;
use mpegflow::platform::{Platform, PlatformConfig};
use mpegflow_control::ControlConfig;
use std::time::{Duration, Instant};
use tonic::Code;

async fn seen_ago(pool: &sqlx::PgPool, worker: &str) -> f64 {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - last_seen_at)::float8 FROM workers WHERE id = $1::uuid",
    )
    .bind(worker)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn set_seen_ago(pool: &sqlx::PgPool, worker: &str, secs: f64) {
    sqlx::query(
        "UPDATE workers SET last_seen_at = now() - make_interval(secs => $2) WHERE id = $1::uuid",
    )
    .bind(worker)
    .bind(secs)
    .execute(pool)
    .await
    .unwrap();
}

/// A suspended or revoked token's worker, and a worker named by another token, are not
/// refreshed by the merged statement (its UPDATE runs whatever the outer query reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_refused_by_the_merged_authentication_refresh_no_registration() {
    let config = ControlConfig {
        worker_ttl_seconds: 30,
        ..test_control_config()
    };
    let tp = TestPlatform::start(0, config).await;
    let pool = tp.platform.store().pool().clone();
    let (a_id, a) = tp.worker_token_with("default", max_workers(2)).await;
    let (b_id, b) = tp.worker_token_with("default", max_workers(2)).await;
    let mut ra = RawWorker::connect(&tp, &a).await;
    let mut rb = RawWorker::connect(&tp, &b).await;
    let wa = ra.register().await.unwrap();
    let wb = rb.register().await.unwrap();

    // Token A speaks for B's worker: refused, B's registration untouched.
    set_seen_ago(&pool, &wb, 15.0).await;
    let e = ra.poll(&wb, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let ago = seen_ago(&pool, &wb).await;
    assert!(
        ago > 14.0,
        "token A refreshed token B's worker: seen {ago}s ago"
    );

    // Suspended token: refused, not refreshed.
    sqlx::query(
        "UPDATE worker_tokens SET suspended_at = now(), suspended_reason = 'test' WHERE id = $1",
    )
    .bind(b_id)
    .execute(&pool)
    .await
    .unwrap();
    let e = rb.poll(&wb, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let ago = seen_ago(&pool, &wb).await;
    assert!(
        ago > 14.0,
        "a suspended token's worker was refreshed: seen {ago}s ago"
    );

    // Revoked token: refused, not refreshed.
    set_seen_ago(&pool, &wa, 15.0).await;
    tp.platform.store().revoke_worker_token(a_id).await.unwrap();
    let e = ra.poll(&wa, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let ago = seen_ago(&pool, &wa).await;
    assert!(
        ago > 14.0,
        "a revoked token's worker was refreshed: seen {ago}s ago"
    );
    tp.stop().await;
}

/// Drives worker calls over a pool whose connections were all used a moment ago, kills every
/// backend of the platform (what a sub-second PostgreSQL restart, an admin's
/// pg_terminate_backend or a failover behind a proxy does to a pool in use), then calls again
/// until a full round succeeds. Returns, per kill, the failed calls and whether it recovered.
async fn calls_after_backends_are_killed() -> Vec<(Vec<(Code, String)>, bool)> {
    let dir = tempdir::TempDir::new("mpegflow-it-adv8c");
    let (_cluster, url) = OwnCluster::start(&dir.path().join("pg"), "adv8c").await;
    let platform = Platform::start(PlatformConfig {
        data_dir: dir.path().join("data"),
        database_url: Some(url.clone()),
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        s3_addr: "127.0.0.1:0".into(),
        workers: 0,
        control: test_control_config(),
        pg_for_tests: true,
        ..PlatformConfig::default()
    })
    .await
    .expect("platform starts");
    let (_, token) = platform
        .store()
        .create_worker_token("default", "adv8c", max_workers(8))
        .await
        .unwrap();
    let r = RawWorker::connect_to(&platform.coordinator_url, token.expose()).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(r.clone().register().await.unwrap());
    }
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let mut rounds = Vec::new();
    for round in 0..5 {
        // Warm many pooled connections at once.
        let mut warm = Vec::new();
        for w in &ids {
            let (mut r, w) = (r.clone(), w.clone());
            warm.push(tokio::spawn(async move { r.poll(&w, 0).await }));
        }
        for t in warm {
            t.await.unwrap().unwrap();
        }
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND backend_type = 'client backend') k",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let mut codes = Vec::new();
        let mut ok = false;
        while start.elapsed() < Duration::from_secs(5) {
            let mut calls = Vec::new();
            for w in &ids {
                let (mut r, w) = (r.clone(), w.clone());
                calls.push(tokio::spawn(async move { r.poll(&w, 0).await }));
            }
            let mut all_ok = true;
            for c in calls {
                if let Err(s) = c.await.unwrap() {
                    all_ok = false;
                    codes.push((s.code(), s.message().to_owned()));
                }
            }
            if all_ok {
                ok = true;
                break;
            }
        }
        eprintln!(
            "round {round}: killed {killed} backends, {} failed calls {codes:?}, recovered in {:?}",
            codes.len(),
            start.elapsed()
        );
        rounds.push((codes, ok));
    }
    platform.stop(Duration::from_secs(5)).await;
    rounds
}

/// Calls on connections that died under the pool answer UNAVAILABLE (retryable), never
/// INTERNAL, and the next round of calls succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_on_connections_killed_under_the_pool_answer_unavailable_then_recover() {
    for (round, (codes, ok)) in calls_after_backends_are_killed().await.iter().enumerate() {
        for (code, message) in codes {
            assert_eq!(*code, Code::Unavailable, "round {round}: {message}");
        }
        assert!(
            ok,
            "round {round}: no full round of calls succeeded within 5 s"
        );
    }
}

/// With the ping before every acquire (before the pool change) a connection that died under
/// the pool was replaced unseen: killing every backend cost no call. Now a connection used
/// within the last second is handed out unchecked, and each dead one fails one worker call
/// (one per pooled connection, 8 to 13 here). At most one failed call per kill is allowed:
/// the first dead connection met can tell the pool to check the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_killed_under_the_pool_cost_at_most_one_failed_call() {
    for (round, (codes, _)) in calls_after_backends_are_killed().await.iter().enumerate() {
        assert!(
            codes.len() <= 1,
            "round {round}: {} worker calls failed on dead pooled connections: {codes:?}",
            codes.len()
        );
    }
}

/// A worker hands back its lease in one call while asking for work in several others at once:
/// whatever order they run in, it holds one lease at most (the claim's own check under the
/// lock on its row, now without the separate look-up before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_back_racing_other_polls_of_the_same_worker_leaves_one_lease() {
    let Queued { tp, .. } = Queued::start(test_control_config(), 6).await;
    let (_, token) = tp.worker_token_with("default", max_workers(8)).await;
    let mut r = RawWorker::connect(&tp, &token).await;
    let w = r.register().await.unwrap();
    let mut held = r.poll(&w, 1).await.unwrap().expect("a job");
    let pool = tp.platform.store().pool().clone();
    for round in 0..4 {
        let mut calls = Vec::new();
        for i in 0..4 {
            let (mut r, w, held) = (r.clone(), w.clone(), held.clone());
            calls.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    r.poll_dropping(&w, 1, Some(&held)).await
                } else {
                    r.poll(&w, 1).await
                }
            }));
        }
        let mut got = Vec::new();
        for c in calls {
            match c.await.unwrap() {
                Ok(Some(a)) => got.push(a),
                Ok(None) => {}
                Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
            }
        }
        let leases: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_worker_id = $1::uuid",
        )
        .bind(&w)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(got.len() <= 1, "round {round}: handed {} jobs", got.len());
        assert!(leases <= 1, "round {round}: worker holds {leases} leases");
        eprintln!(
            "round {round}: handed {} job(s), {leases} lease(s)",
            got.len()
        );
        match got.pop() {
            Some(a) => held = a,
            None => break,
        }
    }
    tp.stop().await;
}

/// A PostgreSQL restart (stop and start: about 0.2 s here) right after the pool was in use:
/// the connections it closed were used within the last second, so they are handed out
/// unchecked and every one fails a worker call (8 of 8 here; none with the old ping). At most
/// one failed call is allowed, and it must say UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_postgresql_restart_costs_at_most_one_failed_call() {
    let dir = tempdir::TempDir::new("mpegflow-it-adv8c");
    let (mut cluster, url) = OwnCluster::start(&dir.path().join("pg"), "adv8c").await;
    let platform = Platform::start(PlatformConfig {
        data_dir: dir.path().join("data"),
        database_url: Some(url.clone()),
        api_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        s3_addr: "127.0.0.1:0".into(),
        workers: 0,
        control: test_control_config(),
        pg_for_tests: true,
        ..PlatformConfig::default()
    })
    .await
    .expect("platform starts");
    let (_, token) = platform
        .store()
        .create_worker_token("default", "adv8c", max_workers(8))
        .await
        .unwrap();
    let r = RawWorker::connect_to(&platform.coordinator_url, token.expose()).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(r.clone().register().await.unwrap());
    }
    let mut warm = Vec::new();
    for w in &ids {
        let (mut r, w) = (r.clone(), w.clone());
        warm.push(tokio::spawn(async move { r.poll(&w, 0).await }));
    }
    for t in warm {
        t.await.unwrap().unwrap();
    }
    let t0 = Instant::now();
    cluster.stop();
    cluster.restart();
    let took = t0.elapsed();
    let mut failed = Vec::new();
    for w in &ids {
        if let Err(s) = r.clone().poll(w, 0).await {
            failed.push((s.code(), s.message().to_owned()));
        }
    }
    eprintln!(
        "restart took {took:?}; {} of 8 calls failed after it",
        failed.len()
    );
    platform.stop(Duration::from_secs(5)).await;
    for (code, message) in &failed {
        assert_eq!(*code, Code::Unavailable, "{message}");
    }
    assert!(
        failed.len() <= 1,
        "{} of 8 worker calls after a {took:?} restart failed on dead pooled connections: {failed:?}",
        failed.len()
    );
}
