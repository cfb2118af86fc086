//! PostgreSQL persistence for the control plane: embedded migrations and every query.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no live database. Every
//! query a tenant can reach takes the caller's org id and filters on it: another org's row looks
//! exactly like a missing one. Every state change of a running job is fenced by its lease's
//! fencing token.

mod admin;
mod assets;
mod audit;
mod grants;
mod jobs;
mod workers;

pub use admin::*;
pub use assets::*;
pub use audit::*;
pub use grants::*;
pub use jobs::*;
pub use workers::*;

use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

pub use sqlx::PgPool as Pool;
pub use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// Text PostgreSQL cannot store: a NUL character in `text` or `jsonb`.
    #[error("text contains a character the database cannot store")]
    UnstorableText,
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // untranslatable_character (22P05, NUL in jsonb) and character_not_in_repertoire
        // (22021, NUL in text) are the caller's input, not a database failure.
        let code = e.as_database_error().and_then(|d| d.code());
        if code.is_some_and(|c| c == "22P05" || c == "22021") {
            return StoreError::UnstorableText;
        }
        StoreError::Db(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A handle on the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    token_policy: TokenPolicy,
}

/// How far one worker token may go: registration liveness, lease rate, and the strikes (leases
/// that ended without a finished encode by the worker's doing) that throttle and suspend it.
#[derive(Clone, Copy, Debug)]
pub struct TokenPolicy {
    /// A registration without contact for this long no longer counts, and must register again.
    pub worker_ttl: Duration,
    /// Leases per minute per allowed worker, when the token sets no rate of its own.
    pub leases_per_worker_per_minute: u32,
    /// Strikes are counted over this sliding window.
    pub strike_window: Duration,
    /// From this many strikes in the window, assignments back off exponentially.
    pub throttle_after_strikes: u32,
    pub throttle_base: Duration,
    pub throttle_max: Duration,
    /// At this many strikes in the window the token is suspended until an admin lifts it.
    pub suspend_after_strikes: u32,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            worker_ttl: Duration::from_secs(15),
            leases_per_worker_per_minute: 120,
            strike_window: Duration::from_secs(600),
            throttle_after_strikes: 20,
            throttle_base: Duration::from_secs(1),
            throttle_max: Duration::from_secs(5),
            suspend_after_strikes: 60,
        }
    }
}

impl Store {
    /// Connects and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store {
            pool,
            token_policy: TokenPolicy::default(),
        })
    }

    /// Sets the limits worker tokens are held to (the control plane's configuration).
    pub fn set_token_policy(&mut self, policy: TokenPolicy) {
        self.token_policy = policy;
    }

    pub fn token_policy(&self) -> TokenPolicy {
        self.token_policy
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

pub(crate) fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// Creates database `name` on the server of `admin_url` and returns its URL. For first-time
/// setup and tests; `name` must be a plain lowercase identifier.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    use sqlx::Connection;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StoreError::Conflict(format!(
            "invalid database name {name:?}"
        )));
    }
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}
