use crate::{Result, Store};
use serde_json::Value;
use sqlx::{Executor, Postgres};
use uuid::Uuid;

/// One line of the append-only audit trail.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub org_id: Option<Uuid>,
    /// `admin`, `api_key:<id>`, `worker:<id>`, `system`.
    pub actor: String,
    /// Dotted verb: `org.created`, `job.assigned`, `presign.get` …
    pub action: &'a str,
    pub job_id: Option<Uuid>,
    pub subject: Option<String>,
    pub details: Value,
}

pub(crate) async fn insert_audit<'e, E: Executor<'e, Database = Postgres>>(
    ex: E,
    e: &AuditEntry<'_>,
) -> Result<()> {
    sqlx::query("INSERT INTO audit_logs (org_id, actor, action, job_id, subject, details) VALUES ($1,$2,$3,$4,$5,$6)")
        .bind(e.org_id)
        .bind(&e.actor)
        .bind(e.action)
        .bind(e.job_id)
        .bind(&e.subject)
        .bind(&e.details)
        .execute(ex)
        .await?;
    Ok(())
}

pub(crate) async fn insert_audits<'e, E: Executor<'e, Database = Postgres>>(
    ex: E,
    entries: &[AuditEntry<'_>],
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut qb = sqlx::QueryBuilder::new(
        "INSERT INTO audit_logs (org_id, actor, action, job_id, subject, details) ",
    );
    qb.push_values(entries, |mut b, e| {
        b.push_bind(e.org_id)
            .push_bind(&e.actor)
            .push_bind(e.action)
            .push_bind(e.job_id)
            .push_bind(&e.subject)
            .push_bind(&e.details);
    });
    qb.build().execute(ex).await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    pub org_id: Option<Uuid>,
    pub actor: String,
    pub action: String,
    pub job_id: Option<Uuid>,
    pub subject: Option<String>,
    pub details: Value,
}

impl Store {
    pub async fn audit(&self, e: &AuditEntry<'_>) -> Result<()> {
        insert_audit(&mut *self.conn().await?, e).await
    }

    /// Several audit lines in one round trip (presigns come in batches).
    pub async fn audit_many(&self, entries: &[AuditEntry<'_>]) -> Result<()> {
        insert_audits(&mut *self.conn().await?, entries).await
    }

    /// The audit trail of one job, oldest first.
    pub async fn job_audit(&self, job_id: Uuid) -> Result<Vec<AuditRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM audit_logs WHERE job_id = $1 ORDER BY id")
                .bind(job_id)
                .fetch_all(&mut *self.conn().await?)
                .await?,
        )
    }
}
