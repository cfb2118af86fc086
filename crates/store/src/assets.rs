use crate::audit::{insert_audit, AuditEntry};
use crate::{Result, Store, StoreError};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Asset {
    pub id: Uuid,
    pub org_id: Uuid,
    pub object_key: String,
    pub filename: String,
    pub content_type: Option<String>,
    pub declared_size: Option<i64>,
    pub declared_sha256: Option<String>,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    pub state: String,
    pub source_job_id: Option<Uuid>,
    pub created_at: OffsetDateTime,
    pub completed_at: Option<OffsetDateTime>,
    /// When an upload no job has used is removed (`None` once a job used it, and for outputs).
    pub expires_at: Option<OffsetDateTime>,
    /// For an output: what it is as media (`mpegflow_domain::media::MediaInfo`).
    pub media: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct NewAsset<'a> {
    pub id: Uuid,
    pub org_id: Uuid,
    pub object_key: &'a str,
    pub filename: &'a str,
    pub content_type: Option<&'a str>,
    pub declared_size: Option<i64>,
    pub declared_sha256: Option<&'a str>,
    /// Removed at this time unless a job uses it first.
    pub expires_at: OffsetDateTime,
}

/// Why an asset could not be deleted.
#[derive(Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// A queued or running job reads it.
    InUse(Uuid),
}

impl Store {
    pub async fn create_asset(&self, a: &NewAsset<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO assets (id, org_id, object_key, filename, content_type, declared_size, declared_sha256, state, expires_at)
             VALUES ($1,$2,$3,$4,$5,$6,$7,'pending',$8)",
        )
        .bind(a.id)
        .bind(a.org_id)
        .bind(a.object_key)
        .bind(a.filename)
        .bind(a.content_type)
        .bind(a.declared_size)
        .bind(a.declared_sha256)
        .bind(a.expires_at)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// An asset of `org_id`. Another org's asset is `NotFound`, exactly like a missing one.
    pub async fn get_asset(&self, org_id: Uuid, id: Uuid) -> Result<Asset> {
        sqlx::query_as("SELECT * FROM assets WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn get_assets(&self, org_id: Uuid, ids: &[Uuid]) -> Result<Vec<Asset>> {
        Ok(
            sqlx::query_as("SELECT * FROM assets WHERE id = ANY($1) AND org_id = $2")
                .bind(ids)
                .bind(org_id)
                .fetch_all(&mut *self.conn().await?)
                .await?,
        )
    }

    /// Marks a pending asset ready with the size and SHA-256 the control plane established.
    /// An asset completed meanwhile keeps its record (its object is write-once, so both
    /// completions saw the same bytes).
    pub async fn complete_asset(
        &self,
        org_id: Uuid,
        id: Uuid,
        size: i64,
        sha256: &str,
    ) -> Result<Asset> {
        let updated: Option<Asset> = sqlx::query_as(
            "UPDATE assets SET state = 'ready', size = $3, sha256 = $4, completed_at = now()
             WHERE id = $1 AND org_id = $2 AND state = 'pending' RETURNING *",
        )
        .bind(id)
        .bind(org_id)
        .bind(size)
        .bind(sha256)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        match updated {
            Some(a) => Ok(a),
            None => self.get_asset(org_id, id).await,
        }
    }

    /// A page of the org's assets, newest first, older than `before`.
    pub async fn list_assets(
        &self,
        org_id: Uuid,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Asset>> {
        Ok(sqlx::query_as(
            "SELECT * FROM assets WHERE org_id = $1 AND ($2::uuid IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
        )
        .bind(org_id)
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    /// Deletes an asset unless a queued or running job reads it; its object is deleted from the
    /// store once `object_free_at` has passed (when no URL signed for it is valid any more).
    /// Submissions lock their inputs (`FOR SHARE`), so a job cannot start using an asset that
    /// is being deleted, nor an asset be deleted under a job being submitted.
    pub async fn delete_asset(
        &self,
        org_id: Uuid,
        id: Uuid,
        actor: String,
        object_free_at: OffsetDateTime,
    ) -> Result<Deletion> {
        let mut tx = self.begin().await?;
        let asset: Asset =
            sqlx::query_as("SELECT * FROM assets WHERE id = $1 AND org_id = $2 FOR UPDATE")
                .bind(id)
                .bind(org_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
        let user: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE org_id = $1 AND state IN ('queued', 'running')
               AND inputs @> jsonb_build_array(jsonb_build_object('asset_id', $2::text))
             LIMIT 1",
        )
        .bind(org_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(job) = user {
            return Ok(Deletion::InUse(job));
        }
        remove_asset(&mut tx, &asset, actor, "asset.deleted", object_free_at).await?;
        tx.commit().await?;
        Ok(Deletion::Deleted)
    }

    /// Removes up to `limit` uploads whose expiry passed without a job using them; answers how
    /// many.
    pub async fn expire_assets(&self, object_free_at: OffsetDateTime, limit: i64) -> Result<u64> {
        let mut tx = self.begin().await?;
        let expired: Vec<Asset> = sqlx::query_as(
            "SELECT * FROM assets WHERE expires_at < now() ORDER BY expires_at LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        for asset in &expired {
            remove_asset(
                &mut tx,
                asset,
                "system".into(),
                "asset.expired",
                object_free_at,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(expired.len() as u64)
    }

    /// Object keys whose deletion is due, oldest first.
    pub async fn due_object_deletions(&self, limit: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT object_key FROM object_deletions WHERE not_before <= now()
             ORDER BY not_before LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    /// The object is gone from the store.
    pub async fn object_deleted(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM object_deletions WHERE object_key = $1")
            .bind(key)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// The store did not delete it: try again later, backing off.
    pub async fn object_deletion_failed(&self, key: &str) -> Result<()> {
        sqlx::query(
            "UPDATE object_deletions SET attempts = attempts + 1,
                    not_before = now() + make_interval(secs => least(3600, 10 * power(2, least(attempts, 9))))
             WHERE object_key = $1",
        )
        .bind(key)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }
}

async fn remove_asset(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    asset: &Asset,
    actor: String,
    action: &'static str,
    object_free_at: OffsetDateTime,
) -> Result<()> {
    sqlx::query("DELETE FROM assets WHERE id = $1")
        .bind(asset.id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO object_deletions (object_key, not_before) VALUES ($1, $2)
         ON CONFLICT (object_key) DO NOTHING",
    )
    .bind(&asset.object_key)
    .bind(object_free_at)
    .execute(&mut **tx)
    .await?;
    insert_audit(
        &mut **tx,
        &AuditEntry {
            org_id: Some(asset.org_id),
            actor,
            action,
            job_id: asset.source_job_id,
            subject: Some(asset.id.to_string()),
            details: json!({ "filename": asset.filename, "object_key": asset.object_key,
                             "size": asset.size, "sha256": asset.sha256 }),
        },
    )
    .await?;
    Ok(())
}
