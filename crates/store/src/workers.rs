use crate::audit::insert_audit;
use crate::{AuditEntry, Result, Store, WorkerTokenInfo};
use mpegflow_domain::token::TokenHash;
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub hostname: String,
    pub worker_version: String,
    pub ffmpeg_version: String,
    pub image_hash: String,
    /// The command grammar its FFmpeg implements (empty: none the platform knows).
    pub ffmpeg_grammar: String,
    pub ffmpeg_configuration_sha256: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Registration {
    Registered(Uuid),
    /// The token already has `live` live registrations, its maximum.
    Full {
        live: i64,
        max: i32,
    },
}

/// What a worker's contact says about its registration.
#[derive(Debug, PartialEq, Eq)]
pub enum WorkerContact {
    /// Live (and now refreshed); the grammar its FFmpeg implements.
    Live { grammar: String },
    /// Registered with this token, but silent for longer than the TTL: must register again.
    Expired,
    /// Not a worker of this token.
    Unknown,
}

/// The registrations of a token that take one of its `max_workers` slots: those in touch
/// within the TTL, and those still holding a lease. A lapsed registration can still heartbeat
/// and finish its job; were its slot free meanwhile, a token could hold ever more leases by
/// letting registrations lapse and registering new ones.
const OCCUPIED_SLOTS: &str = "SELECT count(*) FROM workers w WHERE w.token_id = $1
     AND (w.last_seen_at > now() - make_interval(secs => $2)
          OR EXISTS (SELECT 1 FROM jobs j WHERE j.lease_worker_id = w.id AND j.state = 'running'))";

impl Store {
    /// Registers one worker process under a token, unless the token already has its maximum of
    /// live workers (registrations in touch or holding a lease). Its id is the provenance "which worker".
    pub async fn register_worker(
        &self,
        token: &WorkerTokenInfo,
        info: &WorkerInfo,
    ) -> Result<Registration> {
        let ttl = self.token_policy.worker_ttl.as_secs_f64();
        let mut tx = self.begin().await?;
        // Registrations of one token are serialised on its row; claims never lock it.
        let max: i32 =
            sqlx::query_scalar("SELECT max_workers FROM worker_tokens WHERE id = $1 FOR UPDATE")
                .bind(token.token_id)
                .fetch_one(&mut *tx)
                .await?;
        let live: i64 = sqlx::query_scalar(OCCUPIED_SLOTS)
            .bind(token.token_id)
            .bind(ttl)
            .fetch_one(&mut *tx)
            .await?;
        if live >= i64::from(max) {
            return Ok(Registration::Full { live, max });
        }
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO workers (id, token_id, pool_id, hostname, worker_version, ffmpeg_version, image_hash,
                                  ffmpeg_grammar, ffmpeg_configuration_sha256)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        )
        .bind(id)
        .bind(token.token_id)
        .bind(token.pool_id)
        .bind(&info.hostname)
        .bind(&info.worker_version)
        .bind(&info.ffmpeg_version)
        .bind(&info.image_hash)
        .bind(&info.ffmpeg_grammar)
        .bind(&info.ffmpeg_configuration_sha256)
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
                                 "ffmpeg_version": info.ffmpeg_version, "image_hash": info.image_hash,
                                 "ffmpeg_grammar": info.ffmpeg_grammar,
                                 "ffmpeg_configuration_sha256": info.ffmpeg_configuration_sha256,
                                 "live_workers": live + 1, "max_workers": max }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Registration::Registered(id))
    }

    /// Records contact from a worker and tells whether its registration is live, in one round
    /// trip. An expired registration is not revived: its slot may have gone to another worker.
    /// The contact time is written at most every third of the TTL, not on every call: a live
    /// worker's heartbeats and polls cost reads, and its registration still lapses within a TTL
    /// of its last call.
    pub async fn touch_worker(&self, worker_id: Uuid, token_id: Uuid) -> Result<WorkerContact> {
        let ttl = self.token_policy.worker_ttl.as_secs_f64();
        let row: Option<(String, bool)> = sqlx::query_as(
            "WITH w AS (
                SELECT ffmpeg_grammar, last_seen_at > now() - make_interval(secs => $3) AS live
                FROM workers WHERE id = $1 AND token_id = $2
             ), touched AS (
                UPDATE workers SET last_seen_at = now()
                WHERE id = $1 AND token_id = $2
                  AND last_seen_at > now() - make_interval(secs => $3)
                  AND last_seen_at <= now() - make_interval(secs => $3 / 3)
             )
             SELECT ffmpeg_grammar, live FROM w",
        )
        .bind(worker_id)
        .bind(token_id)
        .bind(ttl)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(match row {
            Some((grammar, true)) => WorkerContact::Live { grammar },
            Some((_, false)) => WorkerContact::Expired,
            None => WorkerContact::Unknown,
        })
    }

    /// A worker's call, authenticated in one round trip: the valid token of `hash` (as
    /// [`Store::authenticate_worker_token`]) and the contact of its registration `worker_id`
    /// (as [`Store::touch_worker`], which a suspended token's worker does not refresh).
    /// `None`: no valid token has that hash.
    pub async fn authenticate_worker_call(
        &self,
        hash: &TokenHash,
        worker_id: Uuid,
    ) -> Result<Option<(WorkerTokenInfo, WorkerContact)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            token: WorkerTokenInfo,
            ffmpeg_grammar: Option<String>,
            live: Option<bool>,
        }
        let ttl = self.token_policy.worker_ttl.as_secs_f64();
        let row: Option<Row> = sqlx::query_as(concat!(
            "WITH t AS (",
            worker_token_by_hash!(),
            "), w AS (
                SELECT ffmpeg_grammar, last_seen_at > now() - make_interval(secs => $3) AS live
                FROM workers WHERE id = $2 AND token_id = (SELECT token_id FROM t)
             ), touched AS (
                UPDATE workers SET last_seen_at = now()
                WHERE id = $2 AND token_id = (SELECT token_id FROM t WHERE NOT suspended)
                  AND last_seen_at > now() - make_interval(secs => $3)
                  AND last_seen_at <= now() - make_interval(secs => $3 / 3)
             )
             SELECT t.*, w.ffmpeg_grammar, w.live FROM t LEFT JOIN w ON true",
        ))
        .bind(hash.as_bytes())
        .bind(worker_id)
        .bind(ttl)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(row.map(|r| {
            let contact = match (r.ffmpeg_grammar, r.live) {
                (Some(grammar), Some(true)) => WorkerContact::Live { grammar },
                (Some(_), _) => WorkerContact::Expired,
                (None, _) => WorkerContact::Unknown,
            };
            (r.token, contact)
        }))
    }

    /// How many registrations of `token_id` are live (in touch, or holding a lease).
    pub async fn live_workers(&self, token_id: Uuid) -> Result<i64> {
        Ok(sqlx::query_scalar(OCCUPIED_SLOTS)
            .bind(token_id)
            .bind(self.token_policy.worker_ttl.as_secs_f64())
            .fetch_one(&mut *self.conn().await?)
            .await?)
    }
}
