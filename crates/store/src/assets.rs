use crate::{Result, Store, StoreError};
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
}

impl Store {
    pub async fn create_asset(&self, a: &NewAsset<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO assets (id, org_id, object_key, filename, content_type, declared_size, declared_sha256, state)
             VALUES ($1,$2,$3,$4,$5,$6,$7,'pending')",
        )
        .bind(a.id)
        .bind(a.org_id)
        .bind(a.object_key)
        .bind(a.filename)
        .bind(a.content_type)
        .bind(a.declared_size)
        .bind(a.declared_sha256)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An asset of `org_id`. Another org's asset is `NotFound`, exactly like a missing one.
    pub async fn get_asset(&self, org_id: Uuid, id: Uuid) -> Result<Asset> {
        sqlx::query_as("SELECT * FROM assets WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn get_assets(&self, org_id: Uuid, ids: &[Uuid]) -> Result<Vec<Asset>> {
        Ok(
            sqlx::query_as("SELECT * FROM assets WHERE id = ANY($1) AND org_id = $2")
                .bind(ids)
                .bind(org_id)
                .fetch_all(&self.pool)
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
        .fetch_optional(&self.pool)
        .await?;
        match updated {
            Some(a) => Ok(a),
            None => self.get_asset(org_id, id).await,
        }
    }
}
