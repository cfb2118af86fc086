//! Signed webhooks end to end: a real job's events leave the outbox through the dispatcher,
//! connected as its own least-privilege database role, to a real HTTP receiver on loopback,
//! signed so a Standard Webhooks verifier accepts them; retries follow the real schedule on an
//! injected clock.

use crate::harness::*;
use axum::http::{HeaderMap, StatusCode};
use mpegflow::client::ApiClient;
use mpegflow_api::JobState;
use mpegflow_dispatcher::{Clock, Dispatcher, DispatcherConfig, ManualClock, SystemResolver};
use mpegflow_domain::webhook::{
    endpoint_secret_aad, verify, EventType, Keyring, SignedHeaders, SigningSecret, UrlPolicy,
};
use mpegflow_store::{NewWebhookEndpoint, Store};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use uuid::Uuid;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// A receiver on loopback that answers 500 to its first `fail_first` requests, then 200.
async fn receiver(fail_first: usize) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (tx, seen) = (tx.clone(), seen.clone());
            async move {
                let _ = tx.send(Received {
                    headers,
                    body: body.to_vec(),
                });
                if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// The dispatcher's own connection: its role, with a login granted now.
async fn dispatcher_store(tp: &TestPlatform) -> Store {
    let (role, password) = tp.platform.store().grant_dispatcher_login().await.unwrap();
    let mut url = url::Url::parse(&tp.platform.database_url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some(&password)).unwrap();
    Store::connect_unmigrated(url.as_str(), 4).await.unwrap()
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>, what: &str) -> Received {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no delivery: {what}"))
        .expect("the receiver runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_events_arrive_signed_and_a_failed_delivery_is_retried_on_the_real_schedule() {
    let tp = TestPlatform::start(1, test_control_config()).await;
    let (org_id, key) = tp.platform.store().create_org("hooks").await.unwrap();
    let client = ApiClient::new(&tp.platform.api_url, key.expose());
    let (url, mut rx) = receiver(1).await;

    let keys = Keyring::parse(&Keyring::generate_line("k1")).unwrap();
    let secret = SigningSecret::generate();
    let endpoint_id = Uuid::now_v7();
    tp.platform
        .store()
        .create_webhook_endpoint(
            NewWebhookEndpoint {
                id: endpoint_id,
                org_id,
                url: url.clone(),
                description: String::new(),
                events: vec![EventType::JobStarted, EventType::JobCompleted],
                secret_sealed: keys.seal(secret.as_bytes(), &endpoint_secret_aad(endpoint_id)),
            },
            "test".into(),
        )
        .await
        .unwrap();

    let store = dispatcher_store(&tp).await;
    // Its role reaches the webhook tables and nothing else.
    let denied = sqlx::query("SELECT count(*) FROM jobs")
        .execute(store.pool())
        .await
        .expect_err("the dispatcher's role cannot read jobs");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    for (statement, what) in [
        ("SELECT count(*) FROM api_keys", "read API keys"),
        ("SELECT count(*) FROM assets", "read assets"),
        ("SELECT count(*) FROM audit_logs", "read the audit trail"),
        ("DELETE FROM audit_logs", "delete from the audit trail"),
        ("UPDATE jobs SET state = 'failed'", "change jobs"),
    ] {
        let denied = sqlx::query(statement)
            .execute(store.pool())
            .await
            .expect_err(what);
        assert!(denied.to_string().contains("permission denied"), "{what}: {denied}");
    }

    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let dispatcher = Dispatcher::new(
        store,
        keys,
        clock.clone(),
        Arc::new(SystemResolver),
        DispatcherConfig {
            url_policy: UrlPolicy {
                allow_loopback_literals: true,
            },
            ..DispatcherConfig::default()
        },
    )
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(dispatcher.run(stop.clone()));

    let clip = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
    let job = run_job(
        &client,
        &clip,
        &[("out", "o.mp4")],
        "-i {{in}} -c copy {{out}}",
    )
    .await;
    assert_eq!(job.state, JobState::Succeeded);

    // The first request fails (500); the other event arrives meanwhile.
    let first = next(&mut rx, "the first event").await;
    let second = next(&mut rx, "the second event").await;
    for r in [&first, &second] {
        let headers = SignedHeaders {
            id: r.header("webhook-id"),
            timestamp: r.header("webhook-timestamp"),
            signature: r.header("webhook-signature"),
        };
        let now = mpegflow_domain::webhook::schedule::unix_seconds(clock.now());
        verify(&secret, &headers, &r.body, now).expect("the signature verifies");
        let mut tampered = r.body.clone();
        tampered[2] ^= 1;
        assert!(verify(&secret, &headers, &tampered, now).is_err());
        assert_eq!(r.header("x-mpegflow-id"), r.header("webhook-id"));
        assert_eq!(
            r.header("x-mpegflow-signature"),
            r.header("webhook-signature")
        );
        let body = r.json();
        assert_eq!(body["type"], r.header("x-mpegflow-event"));
        assert_eq!(body["data"]["id"], job.id.to_string());
    }
    let mut types = [first.json()["type"].clone(), second.json()["type"].clone()];
    types.sort_by_key(|t| t.to_string());
    assert_eq!(types, ["job.completed", "job.started"]);

    // Nothing more until the schedule's first delay (1 min ±10 %) has passed on the clock.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .is_err(),
        "a failed delivery must wait for its retry"
    );
    clock.advance(Duration::from_secs(50));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .is_err(),
        "retried before 54 s"
    );
    clock.advance(Duration::from_secs(20));
    let retried = next(&mut rx, "the retry").await;
    assert_eq!(retried.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(retried.body, first.body, "the same bytes on every attempt");
    assert!(
        retried.header("webhook-timestamp").parse::<i64>().unwrap()
            >= first.header("webhook-timestamp").parse::<i64>().unwrap() + 60,
        "a fresh timestamp on each attempt"
    );
    let deliveries = tp
        .platform
        .store()
        .list_webhook_deliveries(org_id, endpoint_id, None, 10)
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 2);
    eventually(
        "both deliveries to succeed",
        Duration::from_secs(10),
        || {
            let store = tp.platform.store().clone();
            async move {
                let d = store
                    .list_webhook_deliveries(org_id, endpoint_id, None, 10)
                    .await
                    .unwrap();
                d.iter().all(|d| d.state == "succeeded").then_some(())
            }
        },
    )
    .await;
    // Another org sees none of it.
    let (other, _) = tp.platform.store().create_org("other").await.unwrap();
    assert!(tp
        .platform
        .store()
        .list_webhook_deliveries(other, endpoint_id, None, 10)
        .await
        .is_err());

    stop.cancel();
    let _ = running.await;
    tp.stop().await;
}
