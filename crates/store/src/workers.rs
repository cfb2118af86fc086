use crate::audit::insert_audit;
use crate::{AuditEntry, Result, Store, WorkerTokenInfo};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub hostname: String,
    pub worker_version: String,
    pub ffmpeg_version: String,
    pub image_hash: String,
}

impl Store {
    /// Registers one worker process under a token; its id is the provenance "which worker".
    pub async fn register_worker(
        &self,
        token: &WorkerTokenInfo,
        info: &WorkerInfo,
    ) -> Result<Uuid> {
        let id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO workers (id, token_id, pool_id, hostname, worker_version, ffmpeg_version, image_hash)
             VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(id)
        .bind(token.token_id)
        .bind(token.pool_id)
        .bind(&info.hostname)
        .bind(&info.worker_version)
        .bind(&info.ffmpeg_version)
        .bind(&info.image_hash)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut *tx,
            &AuditEntry {
                org_id: None,
                actor: format!("worker_token:{}", token.token_id),
                action: "worker.registered",
                job_id: None,
                subject: Some(id.to_string()),
                details: json!({ "pool": token.pool_name, "hostname": info.hostname, "version": info.worker_version,
                                 "ffmpeg_version": info.ffmpeg_version, "image_hash": info.image_hash }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Whether `worker_id` was registered with `token_id` (a token cannot speak for another's workers).
    pub async fn worker_belongs_to(&self, worker_id: Uuid, token_id: Uuid) -> Result<bool> {
        let n: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM workers WHERE id = $1 AND token_id = $2")
                .bind(worker_id)
                .bind(token_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(n.is_some())
    }
}
