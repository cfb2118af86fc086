//! The webhook dispatcher: turns committed events into deliveries and sends them, signed, to
//! tenants' endpoints.
//!
//! It is the part of the platform with open egress that parses hostile responses, so it runs
//! as a process of its own with least privilege: a database role that reaches only the webhook
//! tables (migration 0008), the key that opens signing secrets, and nothing else — no S3
//! credentials, no coordinator. Several replicas may run: deliveries are claimed with
//! `SKIP LOCKED` and the claim commits before any request goes out, so an attempt is never
//! sent twice at once; a dispatcher killed between sending and recording leaves a claim that
//! runs out and is sent again with the same id (at-least-once).
//!
//! Every address an endpoint's host resolves to is checked before the connection, and the
//! connection goes to exactly the addresses checked ([`resolve::CheckedResolver`]).

pub mod clock;
pub mod keyfile;
pub mod resolve;
mod send;

pub use clock::{Clock, ManualClock, SystemClock};
pub use keyfile::{read_keyring, KeyFileError};
pub use resolve::{check_endpoint, NoResolver, Refused, Resolver, SystemResolver};

use mpegflow_domain::webhook::{BreakerPolicy, Keyring, UrlPolicy};
use mpegflow_store::{ClaimLimits, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub url_policy: UrlPolicy,
    /// The longest one attempt may take, connection included.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts in flight at once in this process.
    pub concurrency: usize,
    /// Attempts in flight per endpoint at once, across every dispatcher: a slow receiver
    /// holds at most this many, and everyone else's deliveries go on.
    pub per_endpoint: usize,
    /// How often due deliveries are looked for when no event wakes the dispatcher.
    pub poll_interval: Duration,
    pub breaker: BreakerPolicy,
    /// How much of a response body an attempt keeps.
    pub response_body_bytes: usize,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            url_policy: UrlPolicy::default(),
            attempt_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            concurrency: 256,
            per_endpoint: 16,
            poll_interval: Duration::from_millis(200),
            breaker: BreakerPolicy::default(),
            response_body_bytes: 2048,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Store(#[from] mpegflow_store::StoreError),
}

/// A running dispatcher's parts.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    keys: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    config: Arc<DispatcherConfig>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        keys: Keyring,
        clock: Arc<dyn Clock>,
        resolver: Arc<dyn Resolver>,
        config: DispatcherConfig,
    ) -> Result<Dispatcher, DispatcherError> {
        let http = send::client(&config, resolver)?;
        Ok(Dispatcher {
            store,
            keys: Arc::new(keys),
            clock,
            http,
            config: Arc::new(config),
        })
    }

    /// Runs until `shutdown`: fans out new events, claims due deliveries while it has room,
    /// and sends each in a task of its own. Woken by committed events (LISTEN), else polls.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        // Each finished attempt wakes the loop: room for another claim at once, instead of at
        // the next poll (a busy endpoint's cap would otherwise pace it to the poll interval).
        let finished = Arc::new(tokio::sync::Notify::new());
        let mut listener = self.listen().await;
        let mut outage = false;
        loop {
            match self.round(&permits, &finished).await {
                Ok(()) => {
                    if outage {
                        tracing::info!("database reachable again");
                        outage = false;
                    }
                }
                Err(e) => {
                    if !outage {
                        tracing::warn!("dispatching paused: {e}");
                        outage = true;
                    }
                }
            }
            let wait = tokio::time::sleep(self.config.poll_interval);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait => {}
                _ = finished.notified() => {}
                woke = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await.map(|_| ()),
                        None => std::future::pending().await,
                    }
                } => {
                    if woke.is_err() {
                        listener = None;
                    }
                }
            }
            if listener.is_none() {
                listener = self.listen().await;
            }
        }
        // Attempts in flight finish (each is bounded by the attempt timeout) and are recorded.
        let all = u32::try_from(self.config.concurrency.max(1)).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(
            self.config.attempt_timeout + Duration::from_secs(5),
            permits.acquire_many(all),
        )
        .await;
    }

    async fn listen(&self) -> Option<sqlx::postgres::PgListener> {
        let mut l = sqlx::postgres::PgListener::connect_with(self.store.pool())
            .await
            .ok()?;
        l.listen("mpegflow_webhook_events").await.ok()?;
        Some(l)
    }

    /// One round: every new event fanned out, then as many due deliveries claimed as there is
    /// room for.
    async fn round(
        &self,
        permits: &Arc<Semaphore>,
        finished: &Arc<tokio::sync::Notify>,
    ) -> Result<(), DispatcherError> {
        while self.store.fan_out_events(self.clock.now(), 500).await? > 0 {}
        loop {
            let room = permits.available_permits();
            if room == 0 {
                return Ok(());
            }
            let claimed = self
                .store
                .claim_deliveries(
                    self.clock.now(),
                    ClaimLimits {
                        batch: room.min(200) as i64,
                        per_endpoint: self.config.per_endpoint as i64,
                        hold: self.config.attempt_timeout * 2 + Duration::from_secs(30),
                    },
                )
                .await?;
            if claimed.is_empty() {
                return Ok(());
            }
            for claim in claimed {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Cannot happen (claimed at most `room`); the claim runs out and is
                    // taken again.
                    break;
                };
                let (this, finished) = (self.clone(), finished.clone());
                tokio::spawn(async move {
                    this.deliver(claim).await;
                    drop(permit);
                    finished.notify_one();
                });
            }
        }
    }
}
