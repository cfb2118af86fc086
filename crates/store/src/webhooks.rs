//! Webhooks: tenants' endpoints, the event outbox, deliveries and their attempts.
//!
//! Events are inserted by the job transitions themselves ([`insert_job_event`], in the same
//! transaction), so an event exists exactly when its change committed. The dispatcher fans
//! them out to endpoints ([`Store::fan_out_events`]), claims due deliveries with `SKIP LOCKED`
//! and commits the claim before any HTTP request ([`Store::claim_deliveries`]), and records each
//! attempt fenced by its claim ([`Store::record_delivery_attempt`]). Every time the schedule
//! depends on comes from the caller's clock, never from SQL `now()`, so tests drive the real
//! schedule.

use crate::audit::insert_audit;
use crate::{AuditEntry, Job, Result, Store, StoreError};
use mpegflow_domain::job::JobState;
use mpegflow_domain::webhook::{self as hooks, BreakerPolicy, EndpointHealth, EventType};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use uuid::Uuid;

/// What a job event's `data` carries, rendered from the job row as it is after the change.
/// The control plane sets the API's rendering ([`Store::set_job_snapshot`]); until then the
/// id and state.
pub type JobSnapshot = fn(&Job) -> Value;

pub(crate) fn minimal_snapshot(job: &Job) -> Value {
    json!({ "id": job.id, "state": job.state })
}

fn at(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub org_id: Uuid,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    pub state: String,
    pub disabled_at: Option<OffsetDateTime>,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i32,
    pub failing_since: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl WebhookEndpoint {
    pub fn enabled(&self) -> bool {
        self.state == "enabled"
    }
}

const ENDPOINT_COLUMNS: &str = "id, org_id, url, description, events, secret_sealed, previous_secret_sealed,
    previous_secret_expires_at, state, disabled_at, disabled_reason, consecutive_failures, failing_since,
    created_at, updated_at";

#[derive(Debug, Clone)]
pub struct NewWebhookEndpoint {
    pub id: Uuid,
    pub org_id: Uuid,
    pub url: String,
    pub description: String,
    pub events: Vec<EventType>,
    pub secret_sealed: String,
}

/// A change to an endpoint; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WebhookEndpointPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub events: Option<Vec<EventType>>,
}

/// A delivery of one event to one endpoint, with the event it carries.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_created_at: OffsetDateTime,
    pub job_id: Option<Uuid>,
    pub data: Value,
    pub state: String,
    pub failures: i32,
    pub next_attempt_at: OffsetDateTime,
    pub in_flight: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

const DELIVERY_SELECT: &str = "SELECT d.id, d.endpoint_id, d.event_id, ev.type AS event_type,
    ev.created_at AS event_created_at, ev.job_id, ev.data, d.state, d.failures, d.next_attempt_at,
    (d.claimed_until IS NOT NULL) AS in_flight, d.created_at, d.updated_at
    FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id";

/// An event of an org's outbox, for its own stream.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgEvent {
    pub seq: i64,
    pub id: Uuid,
    pub event_type: String,
    pub created_at: OffsetDateTime,
    pub data: Value,
}

/// One attempt to deliver, as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookAttempt {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub attempted_at: OffsetDateTime,
    pub succeeded: bool,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

/// A delivery the dispatcher claimed: everything it needs to send one attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedDelivery {
    pub delivery_id: Uuid,
    pub claim_token: Uuid,
    pub endpoint_id: Uuid,
    pub org_id: Uuid,
    pub url: String,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_created_at: OffsetDateTime,
    pub data: Value,
    pub failures: i32,
}

/// How one attempt ended, as the dispatcher saw it.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub succeeded: bool,
    pub status_code: Option<u16>,
    pub latency: Duration,
    pub error: Option<String>,
    /// The start of the response body, already truncated.
    pub response_body: Option<String>,
    /// The receiver's `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
}

/// What recording an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The claim was no longer ours (it ran out and another dispatcher took the delivery):
    /// nothing was written.
    Stale,
    Succeeded,
    /// Failed; tried again at the given time.
    Retrying(SystemTime),
    /// Failed for the last time: retries are exhausted.
    Exhausted,
    /// Failed, and the endpoint is disabled (by this attempt's circuit breaker, or meanwhile):
    /// the delivery is held until the endpoint is enabled.
    Held,
}

/// The dispatcher's limits for one claim.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    /// Deliveries to claim at most.
    pub batch: i64,
    /// Attempts in flight per endpoint at most, across every dispatcher.
    pub per_endpoint: i64,
    /// How long a claim holds: longer than an attempt may take.
    pub hold: Duration,
}

/// The event a job's new state announces, if any.
pub fn job_event_type(state: JobState) -> Option<EventType> {
    match state {
        JobState::Running => Some(EventType::JobStarted),
        JobState::Succeeded => Some(EventType::JobCompleted),
        JobState::Failed => Some(EventType::JobFailed),
        JobState::Canceled => Some(EventType::JobCanceled),
        JobState::Queued => None,
    }
}

/// Writes the event announcing `job`'s state (the row as it is after the change) into the
/// outbox, in the caller's transaction.
pub(crate) async fn insert_job_event(
    tx: &mut sqlx::PgTransaction<'_>,
    snapshot: JobSnapshot,
    job: &Job,
) -> Result<()> {
    let Some(kind) = job_event_type(job.state()) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO webhook_events (id, org_id, job_id, type, data) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(job.org_id)
    .bind(job.id)
    .bind(kind.as_str())
    .bind(snapshot(job))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An audit line of a tenant's change to its webhooks, in the change's transaction.
async fn audit(
    tx: &mut sqlx::PgTransaction<'_>,
    org_id: Uuid,
    actor: String,
    action: &'static str,
    subject: Uuid,
    details: Value,
) -> Result<()> {
    insert_audit(
        &mut **tx,
        &AuditEntry {
            org_id: Some(org_id),
            actor,
            action,
            job_id: None,
            subject: Some(subject.to_string()),
            details,
        },
    )
    .await
}

fn endpoint_disabled() -> StoreError {
    StoreError::Conflict("the endpoint is disabled: enable it to release its deliveries".into())
}

fn events_text(events: &[EventType]) -> Vec<String> {
    events.iter().map(|e| e.as_str().to_owned()).collect()
}

impl Store {
    /// Sets how job events render their `data` (see [`JobSnapshot`]).
    pub fn set_job_snapshot(&mut self, snapshot: JobSnapshot) {
        self.job_snapshot = snapshot;
    }

    pub async fn create_webhook_endpoint(
        &self,
        new: NewWebhookEndpoint,
        actor: String,
    ) -> Result<WebhookEndpoint> {
        let mut tx = self.begin().await?;
        let ep: WebhookEndpoint = sqlx::query_as(&format!(
            "INSERT INTO webhook_endpoints (id, org_id, url, description, events, secret_sealed)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(new.id)
        .bind(new.org_id)
        .bind(&new.url)
        .bind(&new.description)
        .bind(events_text(&new.events))
        .bind(&new.secret_sealed)
        .fetch_one(&mut *tx)
        .await?;
        insert_audit(
            &mut *tx,
            &AuditEntry {
                org_id: Some(new.org_id),
                actor,
                action: "webhook.created",
                job_id: None,
                subject: Some(new.id.to_string()),
                details: json!({ "url": new.url, "events": events_text(&new.events) }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(ep)
    }

    pub async fn list_webhook_endpoints(&self, org_id: Uuid) -> Result<Vec<WebhookEndpoint>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = $1 AND deleted_at IS NULL
             ORDER BY created_at, id"
        ))
        .bind(org_id)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    pub async fn get_webhook_endpoint(&self, org_id: Uuid, id: Uuid) -> Result<WebhookEndpoint> {
        sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL"
        ))
        .bind(id)
        .bind(org_id)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .ok_or(StoreError::NotFound)
    }

    pub async fn update_webhook_endpoint(
        &self,
        org_id: Uuid,
        id: Uuid,
        patch: WebhookEndpointPatch,
        actor: String,
    ) -> Result<WebhookEndpoint> {
        let mut tx = self.begin().await?;
        let ep: WebhookEndpoint = sqlx::query_as(&format!(
            "UPDATE webhook_endpoints SET url = COALESCE($3, url), description = COALESCE($4, description),
                    events = COALESCE($5, events), updated_at = now()
             WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(org_id)
        .bind(&patch.url)
        .bind(&patch.description)
        .bind(patch.events.as_deref().map(events_text))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        audit(
            &mut tx,
            org_id,
            actor,
            "webhook.updated",
            id,
            json!({ "url": patch.url, "events": patch.events.as_deref().map(events_text),
                                 "description": patch.description }),
        )
        .await?;
        tx.commit().await?;
        Ok(ep)
    }

    /// Deletes an endpoint: nothing more is delivered to it; what was pending or held ends as
    /// `failed` (the tenant chose to stop it), and its history stays.
    pub async fn delete_webhook_endpoint(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: SystemTime,
        actor: String,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let found: Option<Uuid> = sqlx::query_scalar(
            "UPDATE webhook_endpoints SET deleted_at = $3, updated_at = $3
             WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING id",
        )
        .bind(id)
        .bind(org_id)
        .bind(at(now))
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'failed', updated_at = $2
             WHERE endpoint_id = $1 AND state IN ('pending', 'held')",
        )
        .bind(id)
        .bind(at(now))
        .execute(&mut *tx)
        .await?;
        audit(&mut tx, org_id, actor, "webhook.deleted", id, json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the signing secret; the old one keeps signing beside it until
    /// `previous_expires_at`.
    pub async fn rotate_webhook_secret(
        &self,
        org_id: Uuid,
        id: Uuid,
        secret_sealed: &str,
        previous_expires_at: SystemTime,
        actor: String,
    ) -> Result<WebhookEndpoint> {
        let mut tx = self.begin().await?;
        let ep: WebhookEndpoint = sqlx::query_as(&format!(
            "UPDATE webhook_endpoints SET previous_secret_sealed = secret_sealed, secret_sealed = $3,
                    previous_secret_expires_at = $4, updated_at = now()
             WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(org_id)
        .bind(secret_sealed)
        .bind(at(previous_expires_at))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        audit(
            &mut tx,
            org_id,
            actor,
            "webhook.secret_rotated",
            id,
            json!({ "previous_secret_expires_at": at(previous_expires_at).unix_timestamp() }),
        )
        .await?;
        tx.commit().await?;
        Ok(ep)
    }

    /// Enables an endpoint: its health starts over and what was held is released (due now).
    pub async fn enable_webhook_endpoint(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: SystemTime,
        actor: String,
    ) -> Result<(WebhookEndpoint, u64)> {
        let mut tx = self.begin().await?;
        let ep: WebhookEndpoint = sqlx::query_as(&format!(
            "UPDATE webhook_endpoints SET state = 'enabled', disabled_at = NULL, disabled_reason = NULL,
                    consecutive_failures = 0, failing_since = NULL, updated_at = $3
             WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(org_id)
        .bind(at(now))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let released = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $2, updated_at = $2
             WHERE endpoint_id = $1 AND state = 'held'",
        )
        .bind(id)
        .bind(at(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        audit(
            &mut tx,
            org_id,
            actor,
            "webhook.enabled",
            id,
            json!({ "released": released }),
        )
        .await?;
        tx.commit().await?;
        Ok((ep, released))
    }

    /// The endpoint's deliveries, newest first (by creation; ties by id), after the cursor
    /// `before` (the last delivery id of the previous page).
    pub async fn list_webhook_deliveries(
        &self,
        org_id: Uuid,
        endpoint_id: Uuid,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>> {
        // The endpoint must be the org's: another org's looks missing.
        self.get_webhook_endpoint(org_id, endpoint_id).await?;
        Ok(sqlx::query_as(&format!(
            "{DELIVERY_SELECT} WHERE d.endpoint_id = $1 AND d.org_id = $2
               AND ($3::uuid IS NULL OR (d.created_at, d.id) <
                    (SELECT c.created_at, c.id FROM webhook_deliveries c WHERE c.id = $3 AND c.endpoint_id = $1))
             ORDER BY d.created_at DESC, d.id DESC LIMIT $4"
        ))
        .bind(endpoint_id)
        .bind(org_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    pub async fn get_webhook_delivery(&self, org_id: Uuid, id: Uuid) -> Result<WebhookDelivery> {
        sqlx::query_as(&format!(
            "{DELIVERY_SELECT} JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.id = $1 AND d.org_id = $2 AND e.deleted_at IS NULL"
        ))
        .bind(id)
        .bind(org_id)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// The attempts of the given deliveries (the caller's, already org-checked), oldest first.
    pub async fn webhook_attempts(&self, delivery_ids: &[Uuid]) -> Result<Vec<WebhookAttempt>> {
        Ok(sqlx::query_as(
            "SELECT id, delivery_id, attempted_at, succeeded, status_code, latency_ms, error, response_body
             FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY attempted_at, id",
        )
        .bind(delivery_ids)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    /// Sends a delivery again, with a fresh schedule and the same event id. Refused while an
    /// attempt of it is in flight or its endpoint is disabled.
    pub async fn replay_webhook_delivery(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: SystemTime,
        actor: String,
    ) -> Result<WebhookDelivery> {
        let mut tx = self.begin().await?;
        let row: Option<(String, bool, String)> = sqlx::query_as(
            "SELECT e.state, d.claimed_until IS NOT NULL, d.state FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.id = $1 AND d.org_id = $2 AND e.deleted_at IS NULL FOR UPDATE OF d",
        )
        .bind(id)
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((endpoint_state, in_flight, _)) = row else {
            return Err(StoreError::NotFound);
        };
        if endpoint_state != "enabled" {
            return Err(endpoint_disabled());
        }
        if in_flight {
            return Err(StoreError::Conflict(
                "an attempt of this delivery is in flight".into(),
            ));
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', failures = 0, next_attempt_at = $2, updated_at = $2
             WHERE id = $1",
        )
        .bind(id)
        .bind(at(now))
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            org_id,
            actor,
            "webhook.delivery_replayed",
            id,
            json!({}),
        )
        .await?;
        tx.commit().await?;
        self.get_webhook_delivery(org_id, id).await
    }

    /// Sends again every delivery of the endpoint that failed or is held, created since
    /// `since`. Refused while the endpoint is disabled. Returns how many.
    pub async fn recover_webhook_deliveries(
        &self,
        org_id: Uuid,
        endpoint_id: Uuid,
        since: SystemTime,
        now: SystemTime,
        actor: String,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM webhook_endpoints WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL FOR UPDATE",
        )
        .bind(endpoint_id)
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?;
        match state.as_deref() {
            None => return Err(StoreError::NotFound),
            Some("enabled") => {}
            Some(_) => return Err(endpoint_disabled()),
        }
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', failures = 0, next_attempt_at = $3, updated_at = $3
             WHERE endpoint_id = $1 AND state IN ('failed', 'held') AND created_at >= $2",
        )
        .bind(endpoint_id)
        .bind(at(since))
        .bind(at(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        audit(
            &mut tx,
            org_id,
            actor,
            "webhook.recovered",
            endpoint_id,
            json!({ "since": at(since).unix_timestamp(), "deliveries": n }),
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// The org's events with a sequence number above `after`, oldest first (for streams:
    /// `mpegflow webhooks listen`).
    pub async fn org_webhook_events(
        &self,
        org_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OrgEvent>> {
        Ok(sqlx::query_as(
            "SELECT seq, id, type AS event_type, created_at, data FROM webhook_events
             WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(org_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    /// The sequence number of the org's latest event (0 when it has none).
    pub async fn latest_org_webhook_event(&self, org_id: Uuid) -> Result<i64> {
        Ok(
            sqlx::query_scalar(
                "SELECT COALESCE(max(seq), 0) FROM webhook_events WHERE org_id = $1",
            )
            .bind(org_id)
            .fetch_one(&mut *self.conn().await?)
            .await?,
        )
    }

    // ---- the dispatcher's side ----

    /// Turns up to `limit` new events into deliveries, one per subscribed endpoint of the
    /// event's org (held for a disabled endpoint). A progress event followed by a later event
    /// of the same job in the same batch is superseded and goes nowhere. Returns how many
    /// events were fanned out.
    pub async fn fan_out_events(&self, now: SystemTime, limit: i64) -> Result<usize> {
        let mut tx = self.begin().await?;
        let events: Vec<(Uuid, String, Option<Uuid>)> = sqlx::query_as(
            "SELECT id, type, job_id FROM webhook_events WHERE fanned_out_at IS NULL
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if events.is_empty() {
            return Ok(0);
        }
        let all: Vec<Uuid> = events.iter().map(|e| e.0).collect();
        let live: Vec<Uuid> = events
            .iter()
            .enumerate()
            .filter(|(i, (_, kind, job))| {
                kind != EventType::JobProgress.as_str()
                    || !events[i + 1..].iter().any(|later| later.2 == *job)
            })
            .map(|(_, e)| e.0)
            .collect();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, endpoint_id, org_id, event_id, state, next_attempt_at, created_at, updated_at)
             SELECT gen_random_uuid(), e.id, ev.org_id, ev.id,
                    CASE WHEN e.state = 'enabled' THEN 'pending' ELSE 'held' END, $2, $2, $2
             FROM webhook_events ev JOIN webhook_endpoints e
               ON e.org_id = ev.org_id AND e.deleted_at IS NULL AND ev.type = ANY(e.events)
              AND e.created_at <= ev.created_at AND e.id IS DISTINCT FROM ev.except_endpoint_id
             WHERE ev.id = ANY($1)
             ON CONFLICT (endpoint_id, event_id) DO NOTHING",
        )
        .bind(&live)
        .bind(at(now))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE webhook_events SET fanned_out_at = $2 WHERE id = ANY($1)")
            .bind(&all)
            .bind(at(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// Claims due deliveries, oldest due first, at most `limits.per_endpoint` in flight per
    /// endpoint across every dispatcher, and commits the claim before returning: the caller
    /// sends only what it holds, and a claim that runs out (a dispatcher killed mid-send) is
    /// taken again, with the same event id, at-least-once.
    pub async fn claim_deliveries(
        &self,
        now: SystemTime,
        limits: ClaimLimits,
    ) -> Result<Vec<ClaimedDelivery>> {
        let mut tx = self.begin().await?;
        let now_at = at(now);
        let hold_until = at(now + limits.hold);
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "WITH busy AS (
                SELECT endpoint_id, count(*) AS n FROM webhook_deliveries
                WHERE state = 'pending' AND claimed_until > $1 GROUP BY endpoint_id),
             due AS (
                SELECT d.id, d.endpoint_id, d.next_attempt_at,
                       row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS rank
                FROM webhook_deliveries d
                -- A delivery fanned out while its endpoint was being deleted or disabled is
                -- not sent.
                JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.deleted_at IS NULL AND e.state = 'enabled'
                WHERE d.state = 'pending' AND d.next_attempt_at <= $1
                  AND (d.claimed_until IS NULL OR d.claimed_until <= $1))
             SELECT due.id FROM due LEFT JOIN busy ON busy.endpoint_id = due.endpoint_id
             WHERE due.rank + COALESCE(busy.n, 0) <= $3
             ORDER BY due.next_attempt_at, due.id LIMIT $2",
        )
        .bind(now_at)
        .bind(limits.batch)
        .bind(limits.per_endpoint)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Locked and checked again: another dispatcher may have taken some meanwhile.
        let claimed: Vec<ClaimedDelivery> = sqlx::query_as(
            "WITH locked AS (
                SELECT id FROM webhook_deliveries
                WHERE id = ANY($1) AND state = 'pending' AND next_attempt_at <= $2
                  AND (claimed_until IS NULL OR claimed_until <= $2)
                FOR UPDATE SKIP LOCKED),
             claimed AS (
                UPDATE webhook_deliveries d SET claimed_until = $3, claim_token = gen_random_uuid(), updated_at = $2
                FROM locked WHERE d.id = locked.id
                RETURNING d.id, d.claim_token, d.endpoint_id, d.org_id, d.event_id, d.failures)
             SELECT c.id AS delivery_id, c.claim_token, c.endpoint_id, c.org_id, e.url, e.secret_sealed,
                    e.previous_secret_sealed, e.previous_secret_expires_at, c.event_id, ev.type AS event_type,
                    ev.created_at AS event_created_at, ev.data, c.failures
             FROM claimed c JOIN webhook_endpoints e ON e.id = c.endpoint_id
             JOIN webhook_events ev ON ev.id = c.event_id",
        )
        .bind(&ids)
        .bind(now_at)
        .bind(hold_until)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records an attempt of a claimed delivery and decides what follows, fenced by the claim:
    /// a claim that is no longer ours records nothing. Failure: the next attempt per the
    /// schedule (`jitter` in [0, 1)), or `failed` when retries are exhausted; the endpoint's
    /// circuit breaker counts it, and when it trips the endpoint is disabled, its pending
    /// deliveries are held, the audit trail says so and a `webhook.disabled` event goes to the
    /// org's other endpoints.
    pub async fn record_delivery_attempt(
        &self,
        claim: &ClaimedDelivery,
        outcome: &AttemptOutcome,
        now: SystemTime,
        jitter: f64,
        breaker: &BreakerPolicy,
    ) -> Result<Recorded> {
        let mut tx = self.begin().await?;
        let mine: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM webhook_deliveries WHERE id = $1 AND claim_token = $2 AND state = 'pending' FOR UPDATE",
        )
        .bind(claim.delivery_id)
        .bind(claim.claim_token)
        .fetch_optional(&mut *tx)
        .await?;
        if mine.is_none() {
            return Ok(Recorded::Stale);
        }
        let (state, failures, failing_since, url): (String, i32, Option<OffsetDateTime>, String) =
            sqlx::query_as(
                "SELECT state, consecutive_failures, failing_since, url FROM webhook_endpoints WHERE id = $1 FOR UPDATE",
            )
            .bind(claim.endpoint_id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (id, delivery_id, org_id, attempted_at, succeeded, status_code, latency_ms, error, response_body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(Uuid::now_v7())
        .bind(claim.delivery_id)
        .bind(claim.org_id)
        .bind(at(now.checked_sub(outcome.latency).unwrap_or(now)))
        .bind(outcome.succeeded)
        .bind(outcome.status_code.map(i32::from))
        .bind(i32::try_from(outcome.latency.as_millis()).unwrap_or(i32::MAX))
        .bind(&outcome.error)
        .bind(&outcome.response_body)
        .execute(&mut *tx)
        .await?;
        let health = EndpointHealth {
            consecutive_failures: failures.max(0) as u32,
            failing_since: failing_since.map(SystemTime::from),
        };
        let (health, trip) = hooks::after_attempt(health, outcome.succeeded, now, breaker);
        let enabled = state == "enabled";
        let disable = enabled && trip;
        sqlx::query(
            "UPDATE webhook_endpoints SET consecutive_failures = $2, failing_since = $3, updated_at = $4,
                    state = CASE WHEN $5 THEN 'disabled' ELSE state END,
                    disabled_at = CASE WHEN $5 THEN $4 ELSE disabled_at END,
                    disabled_reason = CASE WHEN $5 THEN $6 ELSE disabled_reason END
             WHERE id = $1",
        )
        .bind(claim.endpoint_id)
        .bind(i32::try_from(health.consecutive_failures).unwrap_or(i32::MAX))
        .bind(health.failing_since.map(at))
        .bind(at(now))
        .bind(disable)
        .bind(format!(
            "{} consecutive failed attempts",
            health.consecutive_failures
        ))
        .execute(&mut *tx)
        .await?;
        let failures_now = claim.failures.saturating_add(1);
        let (recorded, new_state, next) = if outcome.succeeded {
            (Recorded::Succeeded, "succeeded", now)
        } else if !enabled || disable {
            (Recorded::Held, "held", now)
        } else {
            match hooks::next_retry(failures_now.max(0) as u32, jitter, outcome.retry_after) {
                Some(delay) => (Recorded::Retrying(now + delay), "pending", now + delay),
                None => (Recorded::Exhausted, "failed", now),
            }
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $2, failures = $3, next_attempt_at = $4, claimed_until = NULL,
                    claim_token = NULL, updated_at = $5
             WHERE id = $1",
        )
        .bind(claim.delivery_id)
        .bind(new_state)
        .bind(if outcome.succeeded {
            claim.failures
        } else {
            failures_now
        })
        .bind(at(next))
        .bind(at(now))
        .execute(&mut *tx)
        .await?;
        if disable {
            sqlx::query(
                "UPDATE webhook_deliveries SET state = 'held', updated_at = $2
                 WHERE endpoint_id = $1 AND state = 'pending' AND claimed_until IS NULL",
            )
            .bind(claim.endpoint_id)
            .bind(at(now))
            .execute(&mut *tx)
            .await?;
            let details = json!({ "endpoint_id": claim.endpoint_id, "url": url,
                                  "consecutive_failures": health.consecutive_failures,
                                  "failing_since": health.failing_since.map(|t| at(t).unix_timestamp()) });
            insert_audit(
                &mut *tx,
                &AuditEntry {
                    org_id: Some(claim.org_id),
                    actor: "system:webhook-dispatcher".into(),
                    action: "webhook.disabled",
                    job_id: None,
                    subject: Some(claim.endpoint_id.to_string()),
                    details: details.clone(),
                },
            )
            .await?;
            sqlx::query(
                "INSERT INTO webhook_events (id, org_id, type, data, except_endpoint_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(Uuid::now_v7())
            .bind(claim.org_id)
            .bind(EventType::WebhookDisabled.as_str())
            .bind(json!({ "endpoint_id": claim.endpoint_id, "url": url,
                          "reason": format!("{} consecutive failed attempts", health.consecutive_failures) }))
            .bind(claim.endpoint_id)
            .bind(at(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }
}

/// An endpoint's sealed secrets, for re-sealing under a new key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedSecrets {
    pub id: Uuid,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
}

impl Store {
    /// Every endpoint's sealed secrets (deleted endpoints' too: they stay in the database).
    pub async fn sealed_webhook_secrets(&self) -> Result<Vec<SealedSecrets>> {
        Ok(sqlx::query_as(
            "SELECT id, secret_sealed, previous_secret_sealed FROM webhook_endpoints ORDER BY id",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    /// Replaces an endpoint's sealed secrets with `new` if they are still `old` (a rotation in
    /// between wins; the caller reads again). Returns whether they were replaced.
    pub async fn replace_sealed_webhook_secrets(
        &self,
        old: &SealedSecrets,
        new: &SealedSecrets,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE webhook_endpoints SET secret_sealed = $4, previous_secret_sealed = $5
             WHERE id = $1 AND secret_sealed = $2 AND previous_secret_sealed IS NOT DISTINCT FROM $3",
        )
        .bind(old.id)
        .bind(&old.secret_sealed)
        .bind(&old.previous_secret_sealed)
        .bind(&new.secret_sealed)
        .bind(&new.previous_secret_sealed)
        .execute(&mut *self.conn().await?)
        .await?
        .rows_affected()
            == 1)
    }
}

impl Store {
    /// Lets the dispatcher's role (migration 0008: the database's name, cut to 54 bytes, and
    /// `_webhooks`) log in with a fresh random
    /// password, returned once: for a platform that starts its own dispatcher. Needs a
    /// connection allowed to alter roles (the cluster's owner under `mpegflow up`).
    pub async fn grant_dispatcher_login(&self) -> Result<(String, String)> {
        let password = hex::encode(rand::random::<[u8; 32]>());
        let mut conn = self.conn().await?;
        // The role's name as migration 0008 made it. Utility statements take no parameters:
        // PostgreSQL quotes both values into the statement.
        let (role, statement): (String, String) = sqlx::query_as(
            "SELECT r, format('ALTER ROLE %I LOGIN PASSWORD %L', r, $1::text)
             FROM (SELECT left(current_database(), 54) || '_webhooks' AS r) AS role",
        )
        .bind(&password)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(&statement).execute(&mut *conn).await?;
        Ok((role, password))
    }
}
