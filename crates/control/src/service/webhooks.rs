//! Tenants' webhook endpoints and their deliveries. Signing secrets are generated here, shown
//! once, and stored only sealed under the platform's keyring (bound to their endpoint's id).
//! Endpoint URLs are checked against SSRF here (the URL, and the addresses its host resolves
//! to now) and again by the dispatcher at every delivery.

use super::{page_size, split_page, views, Tenant};
use crate::error::{ControlError, Result};
use crate::AppState;
use mpegflow_api as api;
use mpegflow_domain::webhook::{
    endpoint_secret_aad, EndpointUrl, Keyring, SigningSecret, TargetHost,
};
use mpegflow_store::{NewWebhookEndpoint, WebhookEndpointPatch};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

fn keys(state: &AppState) -> Result<&Keyring> {
    state.webhook_keys.as_deref().ok_or_else(|| {
        ControlError::Unavailable(
            "webhooks are not configured on this platform (no signing-secret keys)".into(),
        )
    })
}

/// The URL as saved: the rules of [`EndpointUrl::parse`], then every address its host resolves
/// to now.
async fn checked_url(state: &AppState, url: &str) -> Result<String> {
    let policy = state.config.webhook_url_policy();
    let parsed = EndpointUrl::parse(url, &policy)
        .map_err(|e| ControlError::invalid("invalid_url", e.to_string()))?;
    if !state.config.webhook_resolve_names && matches!(parsed.host(), TargetHost::Name(_)) {
        return Err(ControlError::invalid(
            "invalid_url",
            "this platform delivers webhooks to IP addresses only (it resolves no names)",
        ));
    }
    mpegflow_dispatcher::check_endpoint(&parsed, state.resolver.as_ref(), &policy)
        .await
        .map_err(|e| ControlError::invalid("invalid_url", e.to_string()))?;
    Ok(parsed.as_str().to_owned())
}

/// The event types asked for, without repeats, in their canonical order; at least one.
fn event_types(events: Option<Vec<api::EventType>>) -> Result<Option<Vec<api::EventType>>> {
    let Some(events) = events else {
        return Ok(None);
    };
    let set: BTreeSet<&str> = events.iter().map(|e| e.as_str()).collect();
    if set.is_empty() {
        return Err(ControlError::invalid(
            "invalid_events",
            "events must name at least one event type",
        ));
    }
    Ok(Some(
        api::EventType::ALL
            .into_iter()
            .filter(|e| set.contains(e.as_str()))
            .collect(),
    ))
}

fn description(d: Option<String>) -> Result<Option<String>> {
    match d {
        Some(d) if d.chars().count() > api::MAX_WEBHOOK_DESCRIPTION_CHARS => {
            Err(ControlError::invalid(
                "invalid_description",
                format!(
                    "description must be at most {} characters",
                    api::MAX_WEBHOOK_DESCRIPTION_CHARS
                ),
            ))
        }
        d => Ok(d),
    }
}

fn sealed(keys: &Keyring, endpoint_id: Uuid, secret: &SigningSecret) -> String {
    keys.seal(secret.as_bytes(), &endpoint_secret_aad(endpoint_id))
}

pub async fn create(
    state: &AppState,
    tenant: &Tenant,
    req: api::WebhookIn,
) -> Result<api::WebhookWithSecret> {
    let keys = keys(state)?;
    let events = event_types(req.events)?.unwrap_or_else(|| {
        api::EventType::ALL
            .into_iter()
            .filter(|e| e.subscribed_by_default())
            .collect()
    });
    let description = description(req.description)?.unwrap_or_default();
    let url = checked_url(state, &req.url).await?;
    let existing = state.store.list_webhook_endpoints(tenant.org_id).await?;
    if existing.len() >= api::MAX_WEBHOOKS_PER_ORG {
        return Err(ControlError::Conflict {
            code: "too_many_webhooks",
            message: format!(
                "an org may have at most {} webhook endpoints",
                api::MAX_WEBHOOKS_PER_ORG
            ),
        });
    }
    let id = Uuid::now_v7();
    let secret = SigningSecret::generate();
    let ep = state
        .store
        .create_webhook_endpoint(
            NewWebhookEndpoint {
                id,
                org_id: tenant.org_id,
                url,
                description,
                events,
                secret_sealed: sealed(keys, id, &secret),
            },
            tenant.actor(),
        )
        .await?;
    Ok(api::WebhookWithSecret {
        webhook: views::webhook(&ep)?,
        secret: secret.expose(),
    })
}

pub async fn list(state: &AppState, tenant: &Tenant) -> Result<api::WebhookList> {
    let webhooks = state
        .store
        .list_webhook_endpoints(tenant.org_id)
        .await?
        .iter()
        .map(views::webhook)
        .collect::<Result<_>>()?;
    Ok(api::WebhookList { webhooks })
}

pub async fn get(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<api::Webhook> {
    let ep = state
        .store
        .get_webhook_endpoint(tenant.org_id, id)
        .await
        .map_err(not_found)?;
    views::webhook(&ep)
}

pub async fn update(
    state: &AppState,
    tenant: &Tenant,
    id: Uuid,
    req: api::WebhookPatch,
) -> Result<api::Webhook> {
    let events = event_types(req.events)?;
    let description = description(req.description)?;
    let url = match req.url {
        Some(url) => Some(checked_url(state, &url).await?),
        None => None,
    };
    let ep = state
        .store
        .update_webhook_endpoint(
            tenant.org_id,
            id,
            WebhookEndpointPatch {
                url,
                description,
                events,
            },
            tenant.actor(),
        )
        .await
        .map_err(not_found)?;
    views::webhook(&ep)
}

pub async fn delete(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<()> {
    state
        .store
        .delete_webhook_endpoint(tenant.org_id, id, SystemTime::now(), tenant.actor())
        .await
        .map_err(not_found)
}

pub async fn rotate_secret(
    state: &AppState,
    tenant: &Tenant,
    id: Uuid,
    q: &api::RotateSecretQuery,
) -> Result<api::WebhookWithSecret> {
    let keys = keys(state)?;
    let overlap = q
        .overlap_seconds
        .unwrap_or(api::DEFAULT_ROTATION_OVERLAP_SECONDS);
    if overlap > api::MAX_ROTATION_OVERLAP_SECONDS {
        return Err(ControlError::invalid(
            "invalid_query",
            format!(
                "overlap_seconds must be at most {}",
                api::MAX_ROTATION_OVERLAP_SECONDS
            ),
        ));
    }
    let secret = SigningSecret::generate();
    let ep = state
        .store
        .rotate_webhook_secret(
            tenant.org_id,
            id,
            &sealed(keys, id, &secret),
            SystemTime::now() + Duration::from_secs(overlap.into()),
            tenant.actor(),
        )
        .await
        .map_err(not_found)?;
    Ok(api::WebhookWithSecret {
        webhook: views::webhook(&ep)?,
        secret: secret.expose(),
    })
}

pub async fn enable(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<api::WebhookEnabled> {
    let (ep, released) = state
        .store
        .enable_webhook_endpoint(tenant.org_id, id, SystemTime::now(), tenant.actor())
        .await
        .map_err(not_found)?;
    Ok(api::WebhookEnabled {
        webhook: views::webhook(&ep)?,
        released,
    })
}

pub async fn deliveries(
    state: &AppState,
    tenant: &Tenant,
    id: Uuid,
    q: &api::ListDeliveriesQuery,
) -> Result<api::WebhookDeliveryList> {
    let limit = page_size(q.limit)?;
    let rows = state
        .store
        .list_webhook_deliveries(tenant.org_id, id, q.cursor, i64::from(limit) + 1)
        .await
        .map_err(not_found)?;
    let (rows, next_cursor) = split_page(rows, limit, |d| d.id);
    let ids: Vec<Uuid> = rows.iter().map(|d| d.id).collect();
    let attempts = state.store.webhook_attempts(&ids).await?;
    let deliveries = rows
        .iter()
        .map(|d| views::delivery(d, &attempts))
        .collect::<Result<_>>()?;
    Ok(api::WebhookDeliveryList {
        deliveries,
        next_cursor,
    })
}

pub async fn delivery(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<api::WebhookDelivery> {
    let d = state
        .store
        .get_webhook_delivery(tenant.org_id, id)
        .await
        .map_err(delivery_not_found)?;
    let attempts = state.store.webhook_attempts(&[d.id]).await?;
    views::delivery(&d, &attempts)
}

pub async fn replay(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<api::WebhookDelivery> {
    let d = state
        .store
        .replay_webhook_delivery(tenant.org_id, id, SystemTime::now(), tenant.actor())
        .await
        .map_err(delivery_not_found)?;
    let attempts = state.store.webhook_attempts(&[d.id]).await?;
    views::delivery(&d, &attempts)
}

pub async fn recover(
    state: &AppState,
    tenant: &Tenant,
    id: Uuid,
    req: &api::RecoverIn,
) -> Result<api::RecoverOut> {
    let recovered = state
        .store
        .recover_webhook_deliveries(
            tenant.org_id,
            id,
            req.since.get().into(),
            SystemTime::now(),
            tenant.actor(),
        )
        .await
        .map_err(not_found)?;
    Ok(api::RecoverOut { recovered })
}

/// The store's conflicts about endpoints are the tenant's to fix (a disabled endpoint, an
/// attempt in flight); missing rows name what is missing.
fn not_found(e: mpegflow_store::StoreError) -> ControlError {
    match e {
        mpegflow_store::StoreError::NotFound => ControlError::NotFound("webhook"),
        mpegflow_store::StoreError::Conflict(message) => ControlError::Conflict {
            code: "webhook_conflict",
            message,
        },
        e => e.into(),
    }
}

fn delivery_not_found(e: mpegflow_store::StoreError) -> ControlError {
    match e {
        mpegflow_store::StoreError::NotFound => ControlError::NotFound("webhook delivery"),
        e => not_found(e),
    }
}

/// An org's open event stream: counted while it lives.
struct StreamSlot {
    streams: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Uuid, usize>>>,
    org_id: Uuid,
}

impl StreamSlot {
    fn take(state: &AppState, org_id: Uuid) -> Result<StreamSlot> {
        let mut open = state
            .event_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = open.entry(org_id).or_insert(0);
        if *n >= api::MAX_EVENT_STREAMS_PER_ORG {
            return Err(ControlError::ResourceExhausted(format!(
                "an org may hold {} event streams open at once",
                api::MAX_EVENT_STREAMS_PER_ORG
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            streams: state.event_streams.clone(),
            org_id,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.org_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.org_id);
            }
        }
    }
}

/// How long an event may take to become visible after a later one did (its transaction
/// committed later): a stream looks back this far so it misses none.
const LATE_COMMIT: Duration = Duration::from_secs(10);

/// The org's events as they commit, from after `after` (default: from now), each with its
/// position, until the caller drops the receiver or [`api::MAX_EVENT_STREAM_SECONDS`] pass.
pub async fn stream_events(
    state: &AppState,
    tenant: &Tenant,
    after: Option<i64>,
) -> Result<tokio::sync::mpsc::Receiver<(i64, api::StreamedEvent)>> {
    let slot = StreamSlot::take(state, tenant.org_id)?;
    let start = match after {
        Some(seq) => seq.max(0),
        None => state.store.latest_org_webhook_event(tenant.org_id).await?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (store, changed, org_id) = (
        state.store.clone(),
        state.job_changed.clone(),
        tenant.org_id,
    );
    tokio::spawn(async move {
        let _slot = slot;
        let until =
            tokio::time::Instant::now() + Duration::from_secs(api::MAX_EVENT_STREAM_SECONDS);
        // Everything at or below `floor` was sent or is too old to still commit; above it,
        // `sent` holds what went out.
        let mut floor = start;
        let mut sent = BTreeSet::new();
        loop {
            let rows = match store.org_webhook_events(org_id, floor, 200).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(%org_id, "event stream: {e}");
                    Vec::new()
                }
            };
            let settled = time::OffsetDateTime::now_utc() - LATE_COMMIT;
            let mut fresh = 0;
            for row in &rows {
                if sent.contains(&row.seq) {
                    continue;
                }
                fresh += 1;
                let Ok(event_type) = api::EventType::parse(&row.event_type) else {
                    continue;
                };
                let event = api::StreamedEvent {
                    message_id: mpegflow_domain::webhook::message_id(row.id),
                    envelope: api::WebhookEnvelope {
                        event_type,
                        timestamp: row.created_at.into(),
                        data: row.data.clone(),
                    },
                };
                if tx.send((row.seq, event)).await.is_err() {
                    return;
                }
                sent.insert(row.seq);
            }
            // Rows older than the late-commit window can no longer be joined by earlier ones.
            if let Some(top) = rows
                .iter()
                .filter(|r| r.created_at < settled)
                .map(|r| r.seq)
                .max()
            {
                floor = floor.max(top);
                sent = sent.split_off(&(floor + 1));
            }
            // A full page with something new: read on at once. A page of rows already sent
            // waits like an empty one (they are only being held for late commits).
            if rows.len() == 200 && fresh > 0 {
                continue;
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep_until(until) => return,
                () = changed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    Ok(rx)
}
