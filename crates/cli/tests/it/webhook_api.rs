//! Webhooks through the tenant API, delivered by a real dispatcher (in-process on a manual
//! clock, or the `mpegflow-dispatcher` process) to real HTTP receivers on loopback: the retry
//! schedule, the circuit breaker with held deliveries, replay and recover, secret rotation,
//! SSRF refusals with an injected resolver, org isolation, crashes of the control plane and of
//! the dispatcher, a Standard Webhooks library from another language, and `webhooks listen`.

use crate::harness::*;
use axum::http::{HeaderMap, StatusCode};
use mpegflow::client::ApiClient;
use mpegflow::platform::{WebhookResolver, WEBHOOK_KEYS_FILE};
use mpegflow_api as api;
use mpegflow_dispatcher::{Clock, Dispatcher, DispatcherConfig, ManualClock, Resolver};
use mpegflow_domain::webhook::{
    schedule::unix_seconds, verify, SignedHeaders, SigningSecret, UrlPolicy, RETRY_DELAYS,
};
use mpegflow_store::Store;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// ---------------------------------------------------------------- receivers

#[derive(Debug, Clone)]
pub(crate) struct Received {
    headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
    pub(crate) fn signed(&self) -> SignedHeaders<'_> {
        SignedHeaders {
            id: self.header("webhook-id"),
            timestamp: self.header("webhook-timestamp"),
            signature: self.header("webhook-signature"),
        }
    }
}

/// How a receiver answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    Ok,
    Fail,
    /// Holds the request this long, then answers 200.
    Sleep(Duration),
}

/// An HTTP receiver on loopback whose answer the test changes as it goes.
pub(crate) struct Receiver {
    pub(crate) url: String,
    rx: mpsc::UnboundedReceiver<Received>,
    answer: Arc<Mutex<Answer>>,
}

impl Receiver {
    pub(crate) async fn start(answer: Answer) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let answer = Arc::new(Mutex::new(answer));
        let current = answer.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (tx, current) = (tx.clone(), current.clone());
                async move {
                    let _ = tx.send(Received {
                        headers,
                        body: body.to_vec(),
                    });
                    let answer = *current.lock().unwrap();
                    match answer {
                        Answer::Ok => StatusCode::OK,
                        Answer::Fail => StatusCode::SERVICE_UNAVAILABLE,
                        Answer::Sleep(d) => {
                            tokio::time::sleep(d).await;
                            StatusCode::OK
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, rx, answer }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub(crate) async fn next(&mut self, what: &str) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no delivery: {what}"))
            .expect("the receiver runs")
    }

    /// Asserts nothing arrives for `wait`.
    async fn quiet(&mut self, wait: Duration, why: &str) {
        if let Ok(Some(r)) = tokio::time::timeout(wait, self.rx.recv()).await {
            panic!("{why}: got {}", String::from_utf8_lossy(&r.body));
        }
    }
}

// ---------------------------------------------------------------- the platform

/// A resolver the test answers for: never asks DNS.
#[derive(Default)]
struct FakeDns(Mutex<HashMap<String, Vec<IpAddr>>>);

impl FakeDns {
    fn answer(&self, host: &str, ips: &[&str]) {
        self.0.lock().unwrap().insert(
            host.to_owned(),
            ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        );
    }
}

impl Resolver for FakeDns {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        let answer = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::other(format!("{host}: no such name")))
        })
    }
}

/// A platform without workers whose API accepts loopback endpoints and resolves with
/// [`FakeDns`], and a dispatcher in this process on a manual clock.
struct Hooks {
    tp: TestPlatform,
    dns: Arc<FakeDns>,
    clock: Arc<ManualClock>,
    stop: CancellationToken,
    running: Option<tokio::task::JoinHandle<()>>,
    clip: std::path::PathBuf,
}

fn hooks_config() -> mpegflow_control::ControlConfig {
    mpegflow_control::ControlConfig {
        webhook_allow_loopback: true,
        ..test_control_config()
    }
}

impl Hooks {
    async fn start() -> Hooks {
        let hooks = Self::without_dispatcher().await;
        hooks.with_dispatcher().await
    }

    async fn without_dispatcher() -> Hooks {
        let dns = Arc::new(FakeDns::default());
        let injected = dns.clone();
        let tp = TestPlatform::start_with(0, hooks_config(), move |cfg| {
            cfg.webhook_resolver = WebhookResolver(Some(injected));
        })
        .await;
        let clip = clip(tp.dir.path(), "in.mp4", 1, "160x120").await;
        Hooks {
            tp,
            dns,
            clock: Arc::new(ManualClock::new(SystemTime::now())),
            stop: CancellationToken::new(),
            running: None,
            clip,
        }
    }

    async fn with_dispatcher(mut self) -> Hooks {
        let dispatcher = Dispatcher::new(
            dispatcher_store(&self.tp).await,
            keys(&self.tp.platform.data_dir),
            self.clock.clone(),
            self.dns.clone(),
            DispatcherConfig {
                url_policy: UrlPolicy {
                    allow_loopback_literals: true,
                },
                poll_interval: Duration::from_millis(100),
                ..DispatcherConfig::default()
            },
        )
        .unwrap();
        self.running = Some(tokio::spawn(dispatcher.run(self.stop.clone())));
        self
    }

    async fn org(&self, name: &str) -> ApiClient {
        self.tp.org(name).await
    }

    /// A job that is queued, then canceled: one `job.canceled` event. Returns its id.
    async fn canceled_job(&self, client: &ApiClient) -> Uuid {
        let job = submit(
            client,
            &self.clip,
            &[("out", "o.mp4")],
            "-i {{in}} -c copy {{out}}",
        )
        .await;
        let canceled = client.cancel(job.id).await.unwrap();
        assert_eq!(canceled.state, api::JobState::Canceled);
        job.id
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(r) = self.running.take() {
            let _ = r.await;
        }
        self.tp.stop().await;
    }
}

fn keys(data_dir: &Path) -> mpegflow_domain::webhook::Keyring {
    mpegflow_dispatcher::read_keyring(&data_dir.join(WEBHOOK_KEYS_FILE)).unwrap()
}

/// The dispatcher's own connection: its role, with a login granted now.
async fn dispatcher_store(tp: &TestPlatform) -> Store {
    Store::connect_unmigrated(&dispatcher_url(tp).await, 4)
        .await
        .unwrap()
}

async fn dispatcher_url(tp: &TestPlatform) -> String {
    let (role, password) = tp.platform.store().grant_dispatcher_login().await.unwrap();
    let mut url = url::Url::parse(&tp.platform.database_url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some(&password)).unwrap();
    url.into()
}

async fn create(
    client: &ApiClient,
    url: &str,
    events: Option<Vec<api::EventType>>,
) -> api::WebhookWithSecret {
    client
        .create_webhook(&api::WebhookIn {
            url: url.to_owned(),
            events,
            description: None,
        })
        .await
        .expect("create a webhook")
}

fn secret(created: &api::WebhookWithSecret) -> SigningSecret {
    SigningSecret::parse(&created.secret).unwrap()
}

/// The endpoint's deliveries once `done` holds for them (10 s at most).
async fn deliveries_when(
    client: &ApiClient,
    endpoint: Uuid,
    what: &str,
    done: impl Fn(&[api::WebhookDelivery]) -> bool,
) -> Vec<api::WebhookDelivery> {
    eventually(what, Duration::from_secs(10), || async {
        let list = client
            .webhook_deliveries(endpoint, &api::ListDeliveriesQuery::default())
            .await
            .unwrap()
            .deliveries;
        done(&list).then_some(list)
    })
    .await
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_schedule_is_followed_to_the_end_then_recover_resends_with_the_same_id() {
    let hooks = Hooks::start().await;
    let client = hooks.org("acme").await;
    let mut rx = Receiver::start(Answer::Fail).await;
    let created = create(&client, &rx.url, None).await;
    assert!(created.secret.starts_with("whsec_"));
    let job = hooks.canceled_job(&client).await;

    let first = rx.next("the first attempt").await;
    recorded(&client, created.webhook.id, 1).await;
    assert_eq!(first.json()["type"], "job.canceled");
    assert_eq!(first.json()["data"]["id"], job.to_string());
    let id = first.header("x-mpegflow-id").to_owned();
    // Each retry waits for its delay (±10 % jitter) on the dispatcher's clock, not sooner.
    for (n, delay) in RETRY_DELAYS.iter().enumerate() {
        hooks.clock.advance(delay.mul_f64(0.88));
        rx.quiet(
            Duration::from_millis(600),
            &format!("retry {} came early", n + 1),
        )
        .await;
        hooks.clock.advance(delay.mul_f64(0.24));
        let retry = rx.next(&format!("retry {}", n + 1)).await;
        assert_eq!(retry.header("x-mpegflow-id"), id);
        assert_eq!(retry.body, first.body, "the same bytes on every attempt");
        recorded(&client, created.webhook.id, n + 2).await;
    }
    let failed = deliveries_when(&client, created.webhook.id, "retries to run out", |d| {
        d.len() == 1 && d[0].state == api::DeliveryState::Failed
    })
    .await;
    assert_eq!(failed[0].attempts.len(), RETRY_DELAYS.len() + 1);
    assert!(failed[0]
        .attempts
        .iter()
        .all(|a| a.status_code == Some(503)));
    assert_eq!(failed[0].message_id, id);
    // Nine failures of one delivery do not trip the breaker (it takes ten).
    let endpoint = client.webhook(created.webhook.id).await.unwrap();
    assert_eq!(endpoint.state, api::WebhookState::Enabled);
    hooks.clock.advance(Duration::from_secs(48 * 3600));
    rx.quiet(
        Duration::from_millis(600),
        "a failed delivery is not retried",
    )
    .await;

    // Recover: everything failed since the job started is sent again, with the same id.
    rx.set(Answer::Ok);
    let since = api::Timestamp::from(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
    let recovered = client
        .recover_webhook(created.webhook.id, &api::RecoverIn { since })
        .await
        .unwrap();
    assert_eq!(recovered.recovered, 1);
    let again = rx.next("the recovered delivery").await;
    assert_eq!(again.header("x-mpegflow-id"), id);
    assert_eq!(again.body, first.body);
    deliveries_when(
        &client,
        created.webhook.id,
        "the recovered delivery to succeed",
        |d| d[0].state == api::DeliveryState::Succeeded,
    )
    .await;
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_failures_spanning_an_hour_disable_the_endpoint_hold_its_deliveries_and_enable_releases_them(
) {
    let hooks = Hooks::start().await;
    let client = hooks.org("acme").await;
    let mut failing = Receiver::start(Answer::Fail).await;
    let mut watcher = Receiver::start(Answer::Ok).await;
    let endpoint = create(&client, &failing.url, None).await.webhook.id;
    let other = create(
        &client,
        &watcher.url,
        Some(vec![api::EventType::WebhookDisabled]),
    )
    .await;

    // Ten deliveries fail within a second: a blip, not ten failures spanning an hour.
    for _ in 0..10 {
        hooks.canceled_job(&client).await;
    }
    for n in 0..10 {
        failing.next(&format!("failure {}", n + 1)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.webhook(endpoint).await.unwrap().state,
        api::WebhookState::Enabled,
        "ten failures in a second must not disable an endpoint"
    );
    // An hour later their retries fail too: the breaker trips.
    hooks.clock.advance(Duration::from_secs(61 * 60));
    failing.next("a failure an hour later").await;
    let disabled = eventually(
        "the endpoint to be disabled",
        Duration::from_secs(10),
        || async {
            let w = client.webhook(endpoint).await.unwrap();
            (w.state == api::WebhookState::Disabled).then_some(w)
        },
    )
    .await;
    assert!(disabled
        .disabled_reason
        .unwrap()
        .contains("consecutive failed attempts"));
    // The org's other endpoint hears of it, signed like any delivery.
    let notice = watcher.next("webhook.disabled").await;
    assert_eq!(notice.json()["type"], "webhook.disabled");
    assert_eq!(notice.json()["data"]["endpoint_id"], endpoint.to_string());
    verify(
        &secret(&other),
        &notice.signed(),
        &notice.body,
        unix_seconds(hooks.clock.now()),
    )
    .expect("the notice verifies");
    let audit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE action = 'webhook.disabled' AND subject = $1",
    )
    .bind(endpoint.to_string())
    .fetch_one(hooks.tp.platform.store().pool())
    .await
    .unwrap();
    assert_eq!(audit, 1);

    // Later events are held, never sent and never dropped.
    let later = hooks.canceled_job(&client).await;
    while failing.rx.try_recv().is_ok() {}
    hooks.clock.advance(Duration::from_secs(11 * 3600));
    failing
        .quiet(
            Duration::from_secs(1),
            "a disabled endpoint received a delivery",
        )
        .await;
    let held = deliveries_when(&client, endpoint, "every delivery to be held", |d| {
        d.len() == 11 && d.iter().all(|d| d.state == api::DeliveryState::Held)
    })
    .await;
    assert_eq!(held[0].job_id, Some(later), "newest first");
    assert!(held.windows(2).all(|w| w[0].created_at >= w[1].created_at));
    // Pages of 4 follow the same order, each delivery once.
    let (mut paged, mut cursor) = (Vec::new(), None);
    loop {
        let page = client
            .webhook_deliveries(
                endpoint,
                &api::ListDeliveriesQuery {
                    cursor,
                    limit: Some(4),
                },
            )
            .await
            .unwrap();
        paged.extend(page.deliveries.iter().map(|d| d.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c.parse().unwrap()),
            None => break,
        }
    }
    assert_eq!(paged, held.iter().map(|d| d.id).collect::<Vec<_>>());
    // Replay and recover are refused while it is disabled: enable releases.
    let refused = refused(client.replay_delivery(held[0].id).await);
    assert_eq!(refused.status, 409);

    failing.set(Answer::Ok);
    let enabled = client.enable_webhook(endpoint).await.unwrap();
    assert_eq!(enabled.released, 11);
    assert_eq!(enabled.webhook.state, api::WebhookState::Enabled);
    let mut ids = std::collections::BTreeSet::new();
    for n in 0..11 {
        ids.insert(
            failing
                .next(&format!("released {}", n + 1))
                .await
                .header("webhook-id")
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 11, "each held delivery once");
    let sent = deliveries_when(&client, endpoint, "every delivery to succeed", |d| {
        d.iter().all(|d| d.state == api::DeliveryState::Succeeded)
    })
    .await;
    assert!(sent.iter().all(|d| ids.contains(&d.message_id)));
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_tampering_fails_replay_keeps_the_id_and_rotation_signs_with_both_secrets(
) {
    let hooks = Hooks::start().await;
    let client = hooks.org("acme").await;
    let mut rx = Receiver::start(Answer::Ok).await;
    let created = create(&client, &rx.url, None).await;
    let old = secret(&created);
    hooks.canceled_job(&client).await;
    let got = rx.next("the delivery").await;
    let now = unix_seconds(hooks.clock.now());
    verify(&old, &got.signed(), &got.body, now).expect("the signature verifies");
    assert_eq!(
        got.header("x-mpegflow-signature"),
        got.header("webhook-signature")
    );
    assert_eq!(
        got.header("x-mpegflow-timestamp"),
        got.header("webhook-timestamp")
    );
    assert_eq!(got.header("x-mpegflow-event"), "job.canceled");
    // Any change to the body, the id or the timestamp breaks it; so does age.
    let mut body = got.body.clone();
    body[10] ^= 1;
    assert!(verify(&old, &got.signed(), &body, now).is_err());
    let other_id = SignedHeaders {
        id: "msg_other",
        ..got.signed()
    };
    assert!(verify(&old, &other_id, &got.body, now).is_err());
    let ts = (now + 1).to_string();
    let other_ts = SignedHeaders {
        timestamp: &ts,
        ..got.signed()
    };
    assert!(verify(&old, &other_ts, &got.body, now).is_err());
    assert!(verify(&old, &got.signed(), &got.body, now + 301).is_err());

    // The body is the envelope the API shows for the delivery.
    let list = deliveries_when(
        &client,
        created.webhook.id,
        "the delivery to succeed",
        |d| d.len() == 1 && d[0].state == api::DeliveryState::Succeeded,
    )
    .await;
    assert_eq!(list[0].payload, got.json());
    assert_eq!(list[0].message_id, got.header("webhook-id"));

    // Replay: the same id and body, a fresh timestamp.
    hooks.clock.advance(Duration::from_secs(5));
    let replayed = client.replay_delivery(list[0].id).await.unwrap();
    assert_eq!(replayed.message_id, list[0].message_id);
    let again = rx.next("the replay").await;
    assert_eq!(again.header("webhook-id"), got.header("webhook-id"));
    assert_eq!(again.body, got.body);
    assert!(again.header("webhook-timestamp") > got.header("webhook-timestamp"));

    // Rotation: during the overlap both secrets sign; after it, only the new one.
    let rotated = client
        .rotate_webhook_secret(created.webhook.id, Some(600))
        .await
        .unwrap();
    let new = secret(&rotated);
    assert_ne!(rotated.secret, created.secret);
    assert!(rotated.webhook.previous_secret_until.is_some());
    hooks.clock.advance(Duration::from_secs(1));
    hooks.canceled_job(&client).await;
    let during = rx.next("a delivery during the overlap").await;
    let now = unix_seconds(hooks.clock.now());
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    verify(&new, &during.signed(), &during.body, now).expect("the new secret verifies");
    verify(&old, &during.signed(), &during.body, now).expect("the old secret verifies");
    hooks.clock.advance(Duration::from_secs(700));
    hooks.canceled_job(&client).await;
    let after = rx.next("a delivery after the overlap").await;
    let now = unix_seconds(hooks.clock.now());
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    verify(&new, &after.signed(), &after.body, now).expect("the new secret verifies");
    assert!(verify(&old, &after.signed(), &after.body, now).is_err());

    // The secret is stored sealed, never in plain text.
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT secret_sealed || coalesce(previous_secret_sealed, '') FROM webhook_endpoints",
    )
    .fetch_all(hooks.tp.platform.store().pool())
    .await
    .unwrap();
    for s in [&created.secret, &rotated.secret] {
        let b64 = s.trim_start_matches("whsec_");
        assert!(stored.iter().all(|row| !row.contains(b64)));
    }
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_targets_are_refused_when_saved_and_a_name_that_turns_private_is_refused_at_delivery()
{
    let hooks = Hooks::start().await;
    let client = hooks.org("acme").await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.8/hook",
        "http://192.168.1.1/hook",
        "http://100.64.0.1/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://0x0a.0.0.1/hook",
        "http://012.0.0.1/hook",
        "http://167772161/hook",
        "ftp://hooks.example/x",
        "file:///etc/passwd",
        "http://user:pw@hooks.example/",
        "http://db.internal/hook",
        "http://printer.local/hook",
    ] {
        let problem = refused(
            client
                .create_webhook(&api::WebhookIn {
                    url: url.into(),
                    events: None,
                    description: None,
                })
                .await,
        );
        assert_eq!(
            (problem.status, problem.code.as_str()),
            (400, "invalid_url"),
            "{url}"
        );
    }
    // A name resolving to a private address is refused when saved.
    hooks
        .dns
        .answer("intranet.example", &["93.184.216.34", "10.1.2.3"]);
    let problem = refused(
        client
            .create_webhook(&api::WebhookIn {
                url: "https://intranet.example/hook".into(),
                events: None,
                description: None,
            })
            .await,
    );
    assert_eq!(problem.code, "invalid_url");
    assert!(problem.detail.contains("10.1.2.3"), "{}", problem.detail);

    // A name that answers public when saved and loopback at delivery (DNS rebinding): the
    // dispatcher refuses it, so the receiver listening there hears nothing.
    let mut rx = Receiver::start(Answer::Ok).await;
    let port = rx
        .url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    hooks.dns.answer("rebind.example", &["93.184.216.34"]);
    let created = create(&client, &format!("http://rebind.example:{port}/hook"), None).await;
    hooks.dns.answer("rebind.example", &["127.0.0.1"]);
    hooks.canceled_job(&client).await;
    let failed = deliveries_when(
        &client,
        created.webhook.id,
        "an attempt to be refused",
        |d| d.len() == 1 && !d[0].attempts.is_empty(),
    )
    .await;
    let attempt = &failed[0].attempts[0];
    assert!(!attempt.succeeded);
    assert_eq!(attempt.status_code, None);
    assert!(
        attempt.error.as_deref().unwrap_or("").contains("refused"),
        "{attempt:?}"
    );
    rx.quiet(
        Duration::from_millis(500),
        "the dispatcher connected to a refused address",
    )
    .await;
    hooks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_org_can_neither_see_nor_change_nor_replay_an_orgs_webhooks() {
    let hooks = Hooks::start().await;
    let a = hooks.org("a").await;
    let b = hooks.org("b").await;
    let mut rx = Receiver::start(Answer::Ok).await;
    let created = create(&a, &rx.url, None).await;
    let endpoint = created.webhook.id;
    hooks.canceled_job(&a).await;
    rx.next("a's delivery").await;
    let delivery = deliveries_when(&a, endpoint, "a's delivery to be recorded", |d| {
        d.len() == 1
    })
    .await[0]
        .id;
    let before = a.webhook(endpoint).await.unwrap();

    let missing = Uuid::now_v7();
    // Each of B's calls on A's ids answers exactly what it answers for an id that exists
    // nowhere.
    let same = |ours: anyhow::Result<Value>, nobody: anyhow::Result<Value>, what: &str| {
        let (ours, nobody) = (refused(ours), refused(nobody));
        assert_eq!(ours.status, 404, "{what}");
        assert_eq!(
            (ours.status, ours.code, ours.detail),
            (nobody.status, nobody.code, nobody.detail),
            "{what}"
        );
    };
    for id in [endpoint] {
        same(
            json(b.webhook(id).await),
            json(b.webhook(missing).await),
            "get",
        );
        same(
            json(
                b.update_webhook(
                    id,
                    &api::WebhookPatch {
                        description: Some("x".into()),
                        ..Default::default()
                    },
                )
                .await,
            ),
            json(
                b.update_webhook(
                    missing,
                    &api::WebhookPatch {
                        description: Some("x".into()),
                        ..Default::default()
                    },
                )
                .await,
            ),
            "patch",
        );
        same(
            json(b.rotate_webhook_secret(id, None).await),
            json(b.rotate_webhook_secret(missing, None).await),
            "rotate",
        );
        same(
            json(b.enable_webhook(id).await),
            json(b.enable_webhook(missing).await),
            "enable",
        );
        let since = api::RecoverIn {
            since: api::Timestamp::from(time::OffsetDateTime::UNIX_EPOCH),
        };
        same(
            json(b.recover_webhook(id, &since).await),
            json(b.recover_webhook(missing, &since).await),
            "recover",
        );
        same(
            json(b.webhook_deliveries(id, &Default::default()).await),
            json(b.webhook_deliveries(missing, &Default::default()).await),
            "deliveries",
        );
        same(
            json(b.delete_webhook(id).await),
            json(b.delete_webhook(missing).await),
            "delete",
        );
    }
    same(
        json(b.webhook_delivery(delivery).await),
        json(b.webhook_delivery(missing).await),
        "delivery",
    );
    same(
        json(b.replay_delivery(delivery).await),
        json(b.replay_delivery(missing).await),
        "replay",
    );
    assert!(b.webhooks().await.unwrap().webhooks.is_empty());
    // B's own events never reach A's endpoint, and A's endpoint is as it was.
    hooks.canceled_job(&b).await;
    rx.quiet(Duration::from_secs(1), "b's event reached a's endpoint")
        .await;
    assert_eq!(a.webhook(endpoint).await.unwrap(), before);
    let after = a
        .webhook_deliveries(endpoint, &Default::default())
        .await
        .unwrap();
    assert_eq!(after.deliveries.len(), 1);
    hooks.stop().await;
}

/// The control plane killed (SIGKILL) in the middle of a burst of cancellations: afterwards
/// the dispatcher delivers an event for exactly the jobs whose cancellation committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_mid_burst_leaves_exactly_its_committed_events_to_deliver() {
    let hooks = Hooks::without_dispatcher().await;
    let tp = &hooks.tp;
    let (_, key) = tp.platform.store().create_org("acme").await.unwrap();
    let keys_file = tp.platform.data_dir.join(WEBHOOK_KEYS_FILE);
    let mut env = tp.external_env();
    env.push((
        "MPEGFLOW_WEBHOOK_KEYS_FILE",
        keys_file.to_str().unwrap().to_owned(),
    ));
    env.push(("MPEGFLOW_WEBHOOK_ALLOW_LOOPBACK", "true".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = control_config_file(tp.dir.path(), hooks_config());
    let mut control =
        ControlChild::start(tp.dir.path(), &["--config", config.to_str().unwrap()], &env);
    let (api_url, _) = tokio::task::block_in_place(|| control.wait_serving());
    let client = ApiClient::new(&api_url, key.expose());
    let mut rx = Receiver::start(Answer::Ok).await;
    create(&client, &rx.url, Some(vec![api::EventType::JobCanceled])).await;
    let mut jobs = Vec::new();
    for _ in 0..30 {
        jobs.push(
            submit(
                &client,
                &hooks.clip,
                &[("out", "o.mp4")],
                "-i {{in}} -c copy {{out}}",
            )
            .await
            .id,
        );
    }
    // Cancel them all at once and kill the control plane while the requests are in flight.
    let burst: Vec<_> = jobs
        .iter()
        .map(|&id| {
            let client = client.clone();
            tokio::spawn(async move { client.cancel(id).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    control.child.kill().unwrap();
    control.child.wait().unwrap();
    let mut answered = 0;
    for b in burst {
        if let Ok(Ok(_)) = b.await {
            answered += 1;
        }
    }
    // What committed, read from the database itself.
    let committed: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'canceled' ORDER BY id")
            .fetch_all(tp.platform.store().pool())
            .await
            .unwrap();
    assert!(
        committed.len() >= answered,
        "{answered} answered, {} committed",
        committed.len()
    );

    // Nothing was delivered yet; a dispatcher started now delivers exactly those.
    rx.quiet(Duration::from_millis(300), "no dispatcher runs yet")
        .await;
    let hooks = hooks.with_dispatcher().await;
    let mut delivered = Vec::new();
    for n in 0..committed.len() {
        let r = rx.next(&format!("committed event {}", n + 1)).await;
        delivered.push(
            r.json()["data"]["id"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .unwrap(),
        );
    }
    rx.quiet(Duration::from_secs(1), "an event for an uncommitted change")
        .await;
    delivered.sort();
    assert_eq!(delivered, committed);
    hooks.stop().await;
}

/// The `mpegflow-dispatcher` process killed after sending an attempt and before recording it:
/// the claim runs out and the delivery is sent again with the same id (at-least-once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_between_sending_and_recording_leaves_the_delivery_to_be_sent_again() {
    let hooks = Hooks::without_dispatcher().await;
    let client = hooks.org("acme").await;
    let mut rx = Receiver::start(Answer::Sleep(Duration::from_secs(30))).await;
    create(&client, &rx.url, None).await;
    let url = dispatcher_url(&hooks.tp).await;
    let keys_file = hooks.tp.platform.data_dir.join(WEBHOOK_KEYS_FILE);
    let bin = Path::new(env!("CARGO_BIN_EXE_mpegflow")).with_file_name("mpegflow-dispatcher");
    let mut process = tokio::process::Command::new(bin)
        .arg("--database-url-file")
        .arg("-")
        .arg("--keys-file")
        .arg(&keys_file)
        .arg("--allow-loopback")
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stderr(std::fs::File::create(hooks.tp.path("dispatcher.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start mpegflow-dispatcher (cargo build --workspace --bins)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = process.stdin.take().unwrap();
        stdin.write_all(url.as_bytes()).await.unwrap();
    }
    hooks.canceled_job(&client).await;
    let sent = rx.next("the attempt the process sent").await;
    process.kill().await.unwrap();
    rx.set(Answer::Ok);

    // Another dispatcher, its clock past the dead one's claim, sends it again.
    let hooks = hooks.with_dispatcher().await;
    hooks.clock.advance(Duration::from_secs(5 * 60));
    let again = rx.next("the delivery sent again").await;
    assert_eq!(again.header("webhook-id"), sent.header("webhook-id"));
    assert_eq!(again.body, sent.body);
    let endpoint = client.webhooks().await.unwrap().webhooks[0].id;
    let d = deliveries_when(&client, endpoint, "the delivery to succeed", |d| {
        d.len() == 1 && d[0].state == api::DeliveryState::Succeeded
    })
    .await;
    // The killed attempt was never recorded; the one that was is.
    assert_eq!(d[0].attempts.len(), 1);
    hooks.stop().await;
}

/// A delivery verifies with the Standard Webhooks reference library for Python (PyPI
/// `standardwebhooks`, installed by scripts/test.sh into a venv named by
/// MPEGFLOW_STANDARDWEBHOOKS_PYTHON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_verifies_with_the_standard_webhooks_python_library() {
    let Some(python) = std::env::var_os("MPEGFLOW_STANDARDWEBHOOKS_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide MPEGFLOW_STANDARDWEBHOOKS_PYTHON (scripts/test.sh does)"
        );
        eprintln!("skipped: MPEGFLOW_STANDARDWEBHOOKS_PYTHON is not set (scripts/test.sh sets it)");
        return;
    };
    let hooks = Hooks::start().await;
    let client = hooks.org("acme").await;
    let mut rx = Receiver::start(Answer::Ok).await;
    let created = create(&client, &rx.url, None).await;
    let job = hooks.canceled_job(&client).await;
    let got = rx.next("the delivery").await;
    let dir = hooks.tp.path("py");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("body"), &got.body).unwrap();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, msg_id, ts, sig, path, tampered = sys.argv[1:7]
body = open(path, "rb").read()
headers = {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": sig}
if tampered == "1":
    body = body.replace(b"job.canceled", b"job.completed")
payload = Webhook(secret).verify(body, headers)
print(json.dumps(payload))
"#;
    let run = |tampered: &str| {
        std::process::Command::new(&python)
            .arg("-c")
            .arg(script)
            .args([
                created.secret.as_str(),
                got.header("webhook-id"),
                got.header("webhook-timestamp"),
                got.header("webhook-signature"),
                dir.join("body").to_str().unwrap(),
                tampered,
            ])
            .output()
            .expect("run python")
    };
    let ok = run("0");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let payload: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(payload["type"], "job.canceled");
    assert_eq!(payload["data"]["id"], job.to_string());
    let bad = run("1");
    assert!(!bad.status.success(), "a tampered body verified");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("WebhookVerificationError"));
    hooks.stop().await;
}

/// `mpegflow webhooks listen --forward-to` streams the org's events from the API and forwards
/// each, signed with the session's secret, to a local receiver; `webhooks verify` accepts what
/// arrived and refuses it altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_listen_forwards_the_orgs_events_signed_and_verify_checks_them() {
    let hooks = Hooks::without_dispatcher().await;
    let (_, key) = hooks.tp.platform.store().create_org("acme").await.unwrap();
    let client = ApiClient::new(&hooks.tp.platform.api_url, key.expose());
    let (_, other_key) = hooks.tp.platform.store().create_org("other").await.unwrap();
    let other = ApiClient::new(&hooks.tp.platform.api_url, other_key.expose());
    let mut rx = Receiver::start(Answer::Ok).await;
    let secret = SigningSecret::generate();
    let mut listen = tokio::process::Command::new(env!("CARGO_BIN_EXE_mpegflow"))
        .args(["webhooks", "listen", "--forward-to", &rx.url, "--json"])
        .env("MPEGFLOW_API_URL", &hooks.tp.platform.api_url)
        .env("MPEGFLOW_API_KEY", key.expose())
        .env("MPEGFLOW_WEBHOOK_SECRET", secret.expose())
        .env("XDG_CONFIG_HOME", hooks.tp.path("config"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The stream starts from "now": wait until it is open.
    let streams = hooks.tp.platform.state.event_streams.clone();
    eventually("the stream to open", Duration::from_secs(10), || {
        let open = !streams.lock().unwrap().is_empty();
        async move { open.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    other_org_noise(&hooks, &other).await;
    let job = hooks.canceled_job(&client).await;
    let got = rx.next("the forwarded event").await;
    assert_eq!(got.json()["type"], "job.canceled");
    assert_eq!(got.json()["data"]["id"], job.to_string());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify(&secret, &got.signed(), &got.body, now).expect("forwarded events are signed");
    rx.quiet(Duration::from_secs(1), "another org's event was streamed")
        .await;

    // `webhooks verify`, as a receiver would run it.
    let verify_cli = |body: &[u8]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mpegflow"));
        cmd.args(["webhook", "verify"])
            .env("MPEGFLOW_WEBHOOK_SECRET", secret.expose())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for name in [
            "x-mpegflow-id",
            "x-mpegflow-timestamp",
            "x-mpegflow-signature",
        ] {
            cmd.arg("--header")
                .arg(format!("{name}: {}", got.header(name)));
        }
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(body).unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = verify_cli(&got.body);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mut altered = got.body.clone();
    altered.push(b' ');
    let bad = verify_cli(&altered);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not verified"));
    let _ = listen.kill().await;
    hooks.stop().await;
}

async fn other_org_noise(hooks: &Hooks, other: &ApiClient) {
    hooks.canceled_job(other).await;
}

fn json<T: serde::Serialize>(r: anyhow::Result<T>) -> anyhow::Result<Value> {
    r.map(|v| serde_json::to_value(v).unwrap())
}

/// Waits until the endpoint's only delivery has `attempts` recorded attempts and none in
/// flight: the dispatcher has decided its next attempt from the clock as it is now.
async fn recorded(client: &ApiClient, endpoint: Uuid, attempts: usize) {
    deliveries_when(
        client,
        endpoint,
        &format!("attempt {attempts} to be recorded"),
        |d| d.len() == 1 && d[0].attempts.len() == attempts && !d[0].in_flight,
    )
    .await;
}

/// How a [`slow_receiver`] is doing: requests held now, most held at once, answered.
#[derive(Default)]
struct SlowStats {
    held: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    answered: std::sync::atomic::AtomicUsize,
}

/// A receiver that holds every request `hold` before answering 200.
async fn slow_receiver(hold: Duration) -> (String, Arc<SlowStats>) {
    use std::sync::atomic::Ordering;
    let stats = Arc::new(SlowStats::default());
    let s = stats.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let s = s.clone();
            async move {
                let held = s.held.fetch_add(1, Ordering::SeqCst) + 1;
                s.most.fetch_max(held, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                s.held.fetch_sub(1, Ordering::SeqCst);
                s.answered.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, stats)
}

/// 500 deliveries to a receiver that takes 14 s to answer each: it holds at most the
/// per-endpoint cap of attempts, and another org's delivery goes out at once meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_with_500_deliveries_delays_no_other_orgs_delivery() {
    use std::sync::atomic::Ordering;
    let hooks = Hooks::start().await;
    let slow_org = hooks.org("slow").await;
    let (slow_url, slow) = slow_receiver(Duration::from_secs(14)).await;
    create(&slow_org, &slow_url, None).await;
    // 500 events for the slow org, committed at once (as many job changes would).
    let slow_org_id: Uuid = sqlx::query_scalar("SELECT id FROM orgs WHERE name = 'slow'")
        .fetch_one(hooks.tp.platform.store().pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO webhook_events (id, org_id, type, data)
         SELECT gen_random_uuid(), $1, 'job.canceled', jsonb_build_object('id', gen_random_uuid())
         FROM generate_series(1, 500)",
    )
    .bind(slow_org_id)
    .execute(hooks.tp.platform.store().pool())
    .await
    .unwrap();
    eventually(
        "the slow receiver to be busy",
        Duration::from_secs(10),
        || {
            let busy = slow.held.load(Ordering::SeqCst) > 0;
            async move { busy.then_some(()) }
        },
    )
    .await;

    let other = hooks.org("other").await;
    let mut rx = Receiver::start(Answer::Ok).await;
    create(&other, &rx.url, None).await;
    let job = hooks.canceled_job(&other).await;
    let got = rx.next("the other org's delivery").await;
    assert_eq!(got.json()["data"]["id"], job.to_string());
    // It went out before the slow receiver answered even its first requests.
    assert_eq!(
        slow.answered.load(Ordering::SeqCst),
        0,
        "the other org's delivery waited for the slow receiver"
    );
    let cap = DispatcherConfig::default().per_endpoint;
    assert_eq!(
        slow.most.load(Ordering::SeqCst),
        cap,
        "one endpoint holds at most the cap"
    );
    hooks.stop().await;
}

/// Rotating the key that seals signing secrets: `admin webhook-keys rotate` puts a new key
/// first, `reseal` re-seals every secret with it, and with the old key gone from the file a
/// dispatcher still signs with the endpoint's unchanged secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sealing_key_rotates_and_secrets_survive_the_old_keys_removal() {
    let hooks = Hooks::without_dispatcher().await;
    let client = hooks.org("acme").await;
    let mut rx = Receiver::start(Answer::Ok).await;
    let created = create(&client, &rx.url, None).await;
    let rotated = client
        .rotate_webhook_secret(created.webhook.id, Some(600))
        .await
        .unwrap();
    let keys_file = hooks.tp.platform.data_dir.join(WEBHOOK_KEYS_FILE);
    let old_id = keys(&hooks.tp.platform.data_dir).primary_id().to_owned();
    let admin = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mpegflow"))
            .arg("admin")
            .args(["webhook-keys"])
            .args(args)
            .env("DATABASE_URL", &hooks.tp.platform.database_url)
            .env("MPEGFLOW_WEBHOOK_KEYS_FILE", &keys_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    // Distinct key ids need distinct seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new_id = admin(&["rotate"])["primary"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&keys_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = admin(&["reseal"]);
    assert_eq!(out["resealed"], 1);
    assert_eq!(out["primary"], new_id.as_str());
    assert_eq!(admin(&["reseal"])["resealed"], 0, "nothing left to re-seal");
    let stored: (String, String) =
        sqlx::query_as("SELECT secret_sealed, previous_secret_sealed FROM webhook_endpoints")
            .fetch_one(hooks.tp.platform.store().pool())
            .await
            .unwrap();
    for sealed in [&stored.0, &stored.1] {
        assert!(sealed.starts_with(&format!("v1.{new_id}.")), "{sealed}");
    }
    // The old key leaves the file; a dispatcher with the new one alone signs with both the
    // current and the previous secret.
    let text = std::fs::read_to_string(&keys_file).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{old_id}:")))
        .map(|l| format!("{l}\n"))
        .collect();
    mpegflow::write_private(&keys_file, &kept).unwrap();
    let hooks = hooks.with_dispatcher().await;
    hooks.canceled_job(&client).await;
    let got = rx.next("a delivery after the key rotation").await;
    let now = unix_seconds(hooks.clock.now());
    verify(&secret(&rotated), &got.signed(), &got.body, now).expect("the current secret verifies");
    verify(&secret(&created), &got.signed(), &got.body, now).expect("the previous secret verifies");
    hooks.stop().await;
}

/// A job with 31 output files and 5 KiB of metadata: its `job.completed` event lists 20 files
/// without their media, says the list is truncated, leaves the metadata out, and stays under
/// 16 KiB; `url` leads to the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_jobs_event_is_summarised_under_the_size_bound() {
    let tp = TestPlatform::start(1, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "clip.mp4", 3, "160x120").await;
    let asset = client.upload(&input).await.unwrap();
    let mut job = api::JobIn::new(
        [("in", asset.id)],
        [("frames", "frames/")],
        "-i {{in}} -vf fps=10 {{frames}}/f_%03d.png",
    )
    .unwrap();
    let mut metadata = serde_json::Map::new();
    for n in 0..50 {
        metadata.insert(format!("k{n}"), Value::String("x".repeat(100)));
    }
    job.metadata = Some(metadata);
    let job = client.submit(&job).await.unwrap();
    let done = client.wait(job.id, |_| {}).await.unwrap();
    assert_eq!(done.state, api::JobState::Succeeded, "{done:#?}");
    let files = done.outputs.values().map(|o| o.files.len()).sum::<usize>();
    assert!(files > api::MAX_EVENT_OUTPUT_FILES, "{files} files");
    let data: Value = sqlx::query_scalar(
        "SELECT data FROM webhook_events WHERE job_id = $1 AND type = 'job.completed'",
    )
    .bind(job.id)
    .fetch_one(tp.platform.store().pool())
    .await
    .unwrap();
    let event: api::JobEventData =
        serde_json::from_value(data.clone()).expect("the documented shape");
    let listed: usize = event.outputs.values().map(|o| o.files.len()).sum();
    assert_eq!(listed, api::MAX_EVENT_OUTPUT_FILES);
    assert!(event.outputs_truncated);
    assert!(event
        .outputs
        .values()
        .flat_map(|o| &o.files)
        .all(|f| f.media.is_none()));
    assert!(event.metadata_omitted && event.metadata.is_none());
    assert_eq!(event.url, format!("/v1/jobs/{}", job.id));
    assert!(serde_json::to_vec(&data).unwrap().len() < 16 * 1024);
    tp.stop().await;
}

/// The CLI's webhook commands against a live API: create prints the secret once, list and
/// show find the endpoint, update changes it, deliveries lists what was sent, a refused URL
/// exits 2 with the problem's code, delete removes it and show then exits 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_commands_manage_endpoints_and_show_deliveries() {
    let hooks = Hooks::start().await;
    let (_, key) = hooks.tp.platform.store().create_org("acme").await.unwrap();
    let client = ApiClient::new(&hooks.tp.platform.api_url, key.expose());
    let mut rx = Receiver::start(Answer::Ok).await;
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mpegflow"))
            .args(args)
            .env("MPEGFLOW_API_URL", &hooks.tp.platform.api_url)
            .env("MPEGFLOW_API_KEY", key.expose())
            .env("XDG_CONFIG_HOME", hooks.tp.path("config"))
            .output()
            .unwrap()
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let created = cli(&[
        "webhooks",
        "create",
        &rx.url,
        "--event",
        "job.canceled",
        "--description",
        "ci",
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let secret = text(&created.stdout).trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let id = client.webhooks().await.unwrap().webhooks[0].id.to_string();
    let list = cli(&["webhooks", "list"]);
    assert!(text(&list.stdout).contains(&id) && text(&list.stdout).contains("job.canceled"));
    assert!(
        !text(&list.stdout).contains(&secret),
        "list shows no secret"
    );
    let updated = cli(&[
        "webhooks",
        "update",
        &id,
        "--event",
        "job.canceled",
        "--event",
        "job.completed",
    ]);
    assert!(updated.status.success(), "{}", text(&updated.stderr));
    let shown: api::Webhook =
        serde_json::from_slice(&cli(&["webhooks", "show", &id]).stdout).unwrap();
    assert_eq!(
        shown.events,
        [api::EventType::JobCompleted, api::EventType::JobCanceled]
    );
    assert_eq!(shown.description, "ci");

    hooks.canceled_job(&client).await;
    let got = rx.next("the delivery").await;
    verify(
        &SigningSecret::parse(&secret).unwrap(),
        &got.signed(),
        &got.body,
        unix_seconds(hooks.clock.now()),
    )
    .expect("signed with the secret create printed");
    let listed = eventually(
        "the delivery to be listed",
        Duration::from_secs(10),
        || async {
            let out = cli(&["webhooks", "deliveries", &id]);
            let t = text(&out.stdout);
            t.contains("succeeded").then_some(t)
        },
    )
    .await;
    assert!(listed.contains(got.header("webhook-id")), "{listed}");

    let refused = cli(&["webhooks", "create", "http://169.254.169.254/"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("invalid_url"),
        "{}",
        text(&refused.stderr)
    );
    let deleted = cli(&["webhooks", "delete", &id]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    assert_eq!(cli(&["webhooks", "show", &id]).status.code(), Some(4));
    hooks.stop().await;
}
