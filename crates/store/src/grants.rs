//! Upload grants: the presigned PUTs an attempt was given, each pinned to a size and SHA-256.

use crate::{Lease, Result, Store};
use uuid::Uuid;

/// One granted upload.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UploadGrant {
    pub path: String,
    pub size: i64,
    pub sha256: String,
}

/// Bounds on one attempt's grants.
#[derive(Debug, Clone, Copy)]
pub struct GrantLimits {
    pub max_files: i64,
    pub max_bytes: i64,
    pub max_calls: i32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum GrantResult {
    /// Every requested file is granted; `new` lists the paths granted by this call.
    Granted { attempt: i32, new: Vec<String> },
    /// The caller does not hold the lease (or the job is no longer running).
    LeaseLost,
    /// A path was granted before with another size or SHA-256.
    Conflict(String),
    /// The attempt's grants would exceed a limit.
    TooMany(String),
    /// The attempt asked too often.
    CallsExhausted(i32),
}

impl Store {
    /// Grants `files` to the holder of `lease`, all or nothing: already granted paths must be
    /// asked with the same size and SHA-256; new ones must fit the attempt's limits.
    pub async fn grant_uploads(
        &self,
        lease: Lease<'_>,
        files: &[UploadGrant],
        limits: GrantLimits,
    ) -> Result<GrantResult> {
        let mut tx = self.begin().await?;
        // Locks the job row: grants and the attempt's report are serialised. Nothing is granted
        // on an expired lease, reaped or not.
        let attempt: Option<i32> = sqlx::query_scalar(
            "SELECT attempts FROM jobs WHERE id = $1 AND lease_worker_id = $2 AND fencing_token = $3 AND state = 'running'
               AND lease_expires_at > COALESCE($4, now())
             FOR UPDATE",
        )
        .bind(lease.job_id)
        .bind(lease.worker_id)
        .bind(lease.fencing_token)
        .bind(self.lease_cutoff())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(attempt) = attempt else {
            return Ok(GrantResult::LeaseLost);
        };
        let calls: i32 = sqlx::query_scalar(
            "INSERT INTO upload_grant_calls (job_id, attempt, calls) VALUES ($1, $2, 1)
             ON CONFLICT (job_id, attempt) DO UPDATE SET calls = upload_grant_calls.calls + 1
             RETURNING calls",
        )
        .bind(lease.job_id)
        .bind(attempt)
        .fetch_one(&mut *tx)
        .await?;
        if calls > limits.max_calls {
            return Ok(GrantResult::CallsExhausted(limits.max_calls));
        }
        let existing = grants_of(&mut tx, lease.job_id, attempt).await?;
        let mut new = Vec::new();
        for f in files {
            match existing.iter().find(|g| g.path == f.path) {
                Some(g) if g == f => {}
                Some(g) => {
                    return Ok(GrantResult::Conflict(format!(
                        "{:?} was already granted with size {} and sha256 {}",
                        g.path, g.size, g.sha256
                    )))
                }
                None if new.iter().any(|n: &&UploadGrant| n.path == f.path) => {
                    return Ok(GrantResult::Conflict(format!("{:?} listed twice", f.path)))
                }
                None => new.push(f),
            }
        }
        let count = existing.len() as i64 + new.len() as i64;
        if count > limits.max_files {
            return Ok(GrantResult::TooMany(format!(
                "{count} files would exceed the limit of {} per attempt",
                limits.max_files
            )));
        }
        let bytes = existing
            .iter()
            .chain(new.iter().copied())
            .fold(0i64, |t, g| t.saturating_add(g.size));
        if bytes > limits.max_bytes {
            return Ok(GrantResult::TooMany(format!(
                "outputs would exceed {} bytes",
                limits.max_bytes
            )));
        }
        if !new.is_empty() {
            sqlx::query(
                "INSERT INTO upload_grants (job_id, attempt, path, size, sha256)
                 SELECT $1, $2, * FROM UNNEST($3::text[], $4::bigint[], $5::text[])",
            )
            .bind(lease.job_id)
            .bind(attempt)
            .bind(new.iter().map(|g| g.path.clone()).collect::<Vec<_>>())
            .bind(new.iter().map(|g| g.size).collect::<Vec<_>>())
            .bind(new.iter().map(|g| g.sha256.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(GrantResult::Granted {
            attempt,
            new: new.into_iter().map(|g| g.path.clone()).collect(),
        })
    }

    /// Everything granted to one attempt, by path.
    pub async fn upload_grants(&self, job_id: Uuid, attempt: i32) -> Result<Vec<UploadGrant>> {
        let mut conn = self.conn().await?;
        grants_of(&mut conn, job_id, attempt).await
    }
}

async fn grants_of(
    conn: &mut sqlx::PgConnection,
    job_id: Uuid,
    attempt: i32,
) -> Result<Vec<UploadGrant>> {
    Ok(sqlx::query_as(
        "SELECT path, size, sha256 FROM upload_grants WHERE job_id = $1 AND attempt = $2 ORDER BY path",
    )
    .bind(job_id)
    .bind(attempt)
    .fetch_all(conn)
    .await?)
}
