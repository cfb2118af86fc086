//! Orgs, API keys, pools and worker tokens.

use crate::audit::insert_audit;
use crate::{unique_violation, AuditEntry, Result, Store, StoreError};
use mpegflow_domain::token::{Secret, TokenHash, TokenKind};
use serde_json::json;
use uuid::Uuid;

pub const DEFAULT_POOL_ID: Uuid = Uuid::from_u128(1);

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pool {
    pub id: Uuid,
    pub name: String,
    pub org_id: Option<Uuid>,
}

/// Default cap on a token's live workers.
pub const DEFAULT_MAX_WORKERS: u32 = 4;

/// What a valid worker token stands for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerTokenInfo {
    pub token_id: Uuid,
    pub pool_id: Uuid,
    pub pool_name: String,
    /// Most live registrations at once.
    pub max_workers: i32,
    /// Own lease rate, if set (otherwise derived from `max_workers`).
    pub leases_per_minute: Option<i32>,
    /// Suspended (strikes past the threshold): every call is refused until an admin lifts it.
    pub suspended: bool,
    /// Strikes before this are forgiven.
    pub strikes_since: Option<time::OffsetDateTime>,
}

/// The bounds a new worker token carries.
#[derive(Debug, Clone, Copy)]
pub struct TokenLimits {
    pub max_workers: u32,
    pub leases_per_minute: Option<u32>,
}

impl Default for TokenLimits {
    fn default() -> Self {
        TokenLimits {
            max_workers: DEFAULT_MAX_WORKERS,
            leases_per_minute: None,
        }
    }
}

/// Maps a unique-key violation to a readable conflict.
fn exists_conflict(message: String) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| {
        if unique_violation(&e) {
            StoreError::Conflict(message)
        } else {
            e.into()
        }
    }
}

fn admin(
    action: &str,
    org_id: Option<Uuid>,
    subject: String,
    details: serde_json::Value,
) -> AuditEntry<'_> {
    AuditEntry {
        org_id,
        actor: "admin".into(),
        action,
        job_id: None,
        subject: Some(subject),
        details,
    }
}

impl Store {
    /// Creates an org and its first API key. The key is returned once and stored only as a hash.
    pub async fn create_org(&self, name: &str) -> Result<(Uuid, Secret)> {
        let mut tx = self.begin().await?;
        let org_id = Uuid::now_v7();
        sqlx::query("INSERT INTO orgs (id, name) VALUES ($1, $2)")
            .bind(org_id)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(exists_conflict(format!("org {name:?} exists")))?;
        insert_audit(
            &mut *tx,
            &admin(
                "org.created",
                Some(org_id),
                org_id.to_string(),
                json!({ "name": name }),
            ),
        )
        .await?;
        let key = create_api_key_tx(&mut tx, org_id, "initial").await?;
        tx.commit().await?;
        Ok((org_id, key.1))
    }

    pub async fn org_by_name(&self, name: &str) -> Result<Uuid> {
        sqlx::query_scalar("SELECT id FROM orgs WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Resolves an org given by id or name.
    pub async fn resolve_org(&self, id_or_name: &str) -> Result<Uuid> {
        match Uuid::parse_str(id_or_name) {
            Ok(id) => sqlx::query_scalar("SELECT id FROM orgs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?
                .ok_or(StoreError::NotFound),
            Err(_) => self.org_by_name(id_or_name).await,
        }
    }

    pub async fn create_api_key(&self, org_id: Uuid, label: &str) -> Result<(Uuid, Secret)> {
        let mut tx = self.begin().await?;
        let key = create_api_key_tx(&mut tx, org_id, label).await?;
        tx.commit().await?;
        Ok(key)
    }

    pub async fn revoke_api_key(&self, key_id: Uuid) -> Result<()> {
        let mut tx = self.begin().await?;
        let org: Option<Uuid> =
            sqlx::query_scalar("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING org_id")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await?;
        let org = org.ok_or(StoreError::NotFound)?;
        insert_audit(
            &mut *tx,
            &admin("api_key.revoked", Some(org), key_id.to_string(), json!({})),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The org of a live API key, with the key's id.
    pub async fn authenticate_api_key(&self, hash: &TokenHash) -> Result<Option<(Uuid, Uuid)>> {
        Ok(
            sqlx::query_as(
                "SELECT org_id, id FROM api_keys WHERE hash = $1 AND revoked_at IS NULL",
            )
            .bind(hash.as_bytes())
            .fetch_optional(&mut *self.conn().await?)
            .await?,
        )
    }

    pub async fn create_pool(&self, name: &str, org_id: Option<Uuid>) -> Result<Pool> {
        let mut tx = self.begin().await?;
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO pools (id, name, org_id) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(org_id)
            .execute(&mut *tx)
            .await
            .map_err(exists_conflict(format!("pool {name:?} exists")))?;
        insert_audit(
            &mut *tx,
            &admin(
                "pool.created",
                org_id,
                id.to_string(),
                json!({ "name": name }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(Pool {
            id,
            name: name.to_owned(),
            org_id,
        })
    }

    pub async fn pool_by_name(&self, name: &str) -> Result<Pool> {
        sqlx::query_as("SELECT id, name, org_id FROM pools WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn pool_name(&self, id: Uuid) -> Result<String> {
        sqlx::query_scalar("SELECT name FROM pools WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Names of several pools in one query.
    pub async fn pool_names(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, String>> {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, name FROM pools WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&mut *self.conn().await?)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// The pools an org may submit to (shared ones and its own), with their live workers.
    pub async fn pools_for_org(&self, org_id: Uuid) -> Result<Vec<(Pool, i64)>> {
        let rows: Vec<(Uuid, String, Option<Uuid>, i64)> = sqlx::query_as(
            "SELECT p.id, p.name, p.org_id,
                    (SELECT count(*) FROM workers w WHERE w.pool_id = p.id
                       AND (w.last_seen_at > now() - make_interval(secs => $2)
                            OR EXISTS (SELECT 1 FROM jobs j WHERE j.lease_worker_id = w.id AND j.state = 'running')))
             FROM pools p WHERE p.org_id IS NULL OR p.org_id = $1 ORDER BY p.name",
        )
        .bind(org_id)
        .bind(self.token_policy.worker_ttl.as_secs_f64())
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, org_id, live)| (Pool { id, name, org_id }, live))
            .collect())
    }

    pub async fn create_worker_token(
        &self,
        pool_name: &str,
        label: &str,
        limits: TokenLimits,
    ) -> Result<(Uuid, Secret)> {
        if !(1..=10_000).contains(&limits.max_workers) {
            return Err(StoreError::Conflict(
                "max_workers must be between 1 and 10000".into(),
            ));
        }
        if limits.leases_per_minute == Some(0) {
            return Err(StoreError::Conflict(
                "leases_per_minute must be at least 1".into(),
            ));
        }
        let pool = self.pool_by_name(pool_name).await?;
        let secret = Secret::generate(TokenKind::WorkerToken);
        let id = Uuid::now_v7();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO worker_tokens (id, pool_id, label, hash, max_workers, leases_per_minute) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(pool.id)
        .bind(label)
        .bind(secret.hash().as_bytes())
        .bind(limits.max_workers as i32)
        .bind(limits.leases_per_minute.map(|n| n.min(i32::MAX as u32) as i32))
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut *tx,
            &admin(
                "worker_token.created",
                pool.org_id,
                id.to_string(),
                json!({ "pool": pool.name, "label": label, "max_workers": limits.max_workers,
                        "leases_per_minute": limits.leases_per_minute }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok((id, secret))
    }

    /// Lifts a suspension; the strikes that led to it are forgiven.
    pub async fn unsuspend_worker_token(&self, token_id: Uuid) -> Result<()> {
        self.update_worker_token_audited(
            token_id,
            "UPDATE worker_tokens SET suspended_at = NULL, suspended_reason = NULL, strikes_since = now()
             WHERE id = $1 AND suspended_at IS NOT NULL AND revoked_at IS NULL",
            "worker_token.unsuspended",
        )
        .await
    }

    pub async fn revoke_worker_token(&self, token_id: Uuid) -> Result<()> {
        self.update_worker_token_audited(
            token_id,
            "UPDATE worker_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            "worker_token.revoked",
        )
        .await
    }

    /// Runs one admin change of a worker token (`$1` = its id) and its audit row in one
    /// transaction; a token the change does not apply to is `NotFound`.
    async fn update_worker_token_audited(
        &self,
        token_id: Uuid,
        update: &'static str,
        action: &'static str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(update)
            .bind(token_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(
            &mut *tx,
            &admin(action, None, token_id.to_string(), json!({})),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn authenticate_worker_token(
        &self,
        hash: &TokenHash,
    ) -> Result<Option<WorkerTokenInfo>> {
        Ok(sqlx::query_as(worker_token_by_hash!())
            .bind(hash.as_bytes())
            .fetch_optional(&mut *self.conn().await?)
            .await?)
    }
}

async fn create_api_key_tx(
    tx: &mut sqlx::PgTransaction<'_>,
    org_id: Uuid,
    label: &str,
) -> Result<(Uuid, Secret)> {
    let secret = Secret::generate(TokenKind::ApiKey);
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_keys (id, org_id, label, hash) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(org_id)
        .bind(label)
        .bind(secret.hash().as_bytes())
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23503")) {
                StoreError::NotFound
            } else {
                e.into()
            }
        })?;
    insert_audit(
        &mut **tx,
        &admin(
            "api_key.created",
            Some(org_id),
            id.to_string(),
            json!({ "label": label, "prefix": secret.display_prefix() }),
        ),
    )
    .await?;
    Ok((id, secret))
}

/// Suspends `token_id` when its strikes in the policy's window reach the threshold. Runs in the
/// transaction that recorded a strike; touches the token's row only when it suspends.
pub(crate) async fn suspend_if_struck_out(
    tx: &mut sqlx::PgTransaction<'_>,
    token_id: Uuid,
    policy: &crate::TokenPolicy,
) -> Result<bool> {
    let strikes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_attempts a, worker_tokens t
         WHERE t.id = $1 AND a.token_id = $1 AND a.strike
           AND a.finished_at > greatest(now() - make_interval(secs => $2), COALESCE(t.strikes_since, '-infinity'))",
    )
    .bind(token_id)
    .bind(policy.strike_window.as_secs_f64())
    .fetch_one(&mut **tx)
    .await?;
    if strikes < i64::from(policy.suspend_after_strikes.max(1)) {
        return Ok(false);
    }
    let reason = format!(
        "{strikes} leases ended without a finished encode within {}s",
        policy.strike_window.as_secs()
    );
    let suspended: Option<Uuid> = sqlx::query_scalar(
        "UPDATE worker_tokens SET suspended_at = now(), suspended_reason = $2
         WHERE id = $1 AND suspended_at IS NULL RETURNING pool_id",
    )
    .bind(token_id)
    .bind(&reason)
    .fetch_optional(&mut **tx)
    .await?;
    if suspended.is_none() {
        return Ok(false);
    }
    insert_audit(
        &mut **tx,
        &AuditEntry {
            org_id: None,
            actor: "system:token_guard".into(),
            action: "worker_token.suspended",
            job_id: None,
            subject: Some(token_id.to_string()),
            details: json!({ "strikes": strikes, "window_seconds": policy.strike_window.as_secs(),
                             "threshold": policy.suspend_after_strikes, "reason": reason }),
        },
    )
    .await?;
    Ok(true)
}
