//! PostgreSQL persistence for the control plane: embedded migrations and every query.
//!
//! Queries are checked at run time (`sqlx::query`), so building needs no live database. Every
//! query a tenant can reach takes the caller's org id and filters on it: another org's row looks
//! exactly like a missing one. Every state change of a running job is fenced by its lease's
//! fencing token.

/// The valid worker token whose hash is `$1`, with its pool: one statement's text, shared by
/// [`Store::authenticate_worker_token`] and [`Store::authenticate_worker_call`] so the two
/// cannot drift apart on what a valid token is.
macro_rules! worker_token_by_hash {
    () => {
        "SELECT t.id AS token_id, t.pool_id, p.name AS pool_name, t.max_workers, t.leases_per_minute,
                t.suspended_at IS NOT NULL AS suspended, t.strikes_since
         FROM worker_tokens t JOIN pools p ON p.id = t.pool_id
         WHERE t.hash = $1 AND t.revoked_at IS NULL"
    };
}

mod admin;
mod assets;
mod audit;
mod grants;
mod jobs;
mod webhooks;
mod workers;

pub use admin::*;
pub use assets::*;
pub use audit::*;
pub use grants::*;
pub use jobs::*;
pub use webhooks::*;
pub use workers::*;

use mpegflow_domain::lease::LeaseClock;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
    /// The database cannot be reached: no connection within the acquire timeout while a fresh
    /// connection is refused too, a connection refused, reset or lost, or the server shutting
    /// down. Transient: callers answer "retry later", not a failure of the request.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
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
        if unavailable(&e) {
            connection_lost();
            return StoreError::Unavailable(e);
        }
        StoreError::Db(e)
    }
}

/// When a query last found its connection lost (ms on the monotonic [`process_clock_ms`]; 0:
/// never). Process-wide: errors become [`StoreError`] without their store, and a pool that
/// pings a while for nothing costs a round trip per query, not a failure.
static CONNECTION_LOST_MS: AtomicU64 = AtomicU64::new(0);

/// For this long after a query found its connection lost, every pooled connection is pinged
/// before use: the server restarted or killed its backends, and the others are likely dead too.
const SUSPECT_AFTER_LOSS: Duration = Duration::from_secs(5);

fn process_clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // +1: 0 means "never".
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

fn connection_lost() {
    CONNECTION_LOST_MS.store(process_clock_ms(), Ordering::Relaxed);
}

/// Whether a pooled connection must be checked before use: idle long enough to have missed a
/// restart of the server, or handed out soon after another one was found lost.
fn check_before_use(idle_for: Duration) -> bool {
    let lost = CONNECTION_LOST_MS.load(Ordering::Relaxed);
    idle_for >= IDLE_CHECK
        || (lost != 0
            && process_clock_ms().saturating_sub(lost) < SUSPECT_AFTER_LOSS.as_millis() as u64)
}

/// Whether `e` says the database cannot be reached (rather than that it refused a query).
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // Class 08 is "connection exception"; 57P01..57P03 are admin_shutdown, crash_shutdown
        // and cannot_connect_now (the server stopping or starting).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

impl StoreError {
    /// Whether this error is the database being unreachable (transient, retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A handle on the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    token_policy: TokenPolicy,
    /// Set when a probe found the database unreachable; cleared by the next connection.
    down: Arc<AtomicBool>,
    /// The last probe: when, and whether the server was reachable. Callers share one probe
    /// at a time, so a saturated pool does not open a connection per waiting query.
    probe: Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>,
    /// What this process saw of the database, for the leases that count through an outage.
    leases: Arc<std::sync::Mutex<LeaseClock>>,
    /// How long after an attempt ended without success the objects it was granted to upload
    /// are deleted: once no upload URL signed for them can still be used.
    unused_outputs_after: Duration,
    /// How job events render their `data` (see [`JobSnapshot`]).
    job_snapshot: JobSnapshot,
}

/// How long a query waits for a pooled connection before the database is probed.
///
/// The pool's own timeout cannot tell "the server is down" from "every connection is busy":
/// when the server refuses connections sqlx retries until the deadline, then answers
/// `PoolTimedOut` exactly as it does for an exhausted pool. So the pool waits only this long,
/// then [`Store::conn`] opens one fresh connection ([`PROBE_TIMEOUT`]): refused or timed out
/// means unreachable, and the caller gets [`StoreError::Unavailable`] within about a second
/// (the API answers 503); accepted means the pool is merely busy, and the query keeps waiting
/// for a pooled connection, up to [`BUSY_WAIT`] in all as before. While the database is known
/// to be down, queries probe first and do not wait on the pool at all.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a probe connection may take to open. A refused connection fails at once; this
/// bounds a server that does not answer at all, and leaves room for a loaded one.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A probe's answer is reused this long by every query that needs one.
const PROBE_REUSE: Duration = Duration::from_millis(250);
/// Longest a query waits for a connection of a busy (but reachable) database.
pub const BUSY_WAIT: Duration = Duration::from_secs(10);
/// A lease's length until the control plane sets its own ([`Store::set_lease`]).
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// A pooled connection idle at least this long is pinged before a query uses it.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long [`Store::connect`] waits for the server to accept connections (it may be starting).
const STARTUP_WAIT: Duration = Duration::from_secs(10);

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
        Self::open(url, max_connections, true).await
    }

    /// Connects without migrating, for a process whose role may not change the schema (the
    /// webhook dispatcher): the schema must already be this build's, or it refuses to start.
    pub async fn connect_unmigrated(url: &str, max_connections: u32) -> Result<Self> {
        Self::open(url, max_connections, false).await
    }

    async fn open(url: &str, max_connections: u32, migrate: bool) -> Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        // Migrations run on a pool of their own that waits for a starting server; the pool
        // queries use gives up fast (see ACQUIRE_TIMEOUT).
        let boot = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(STARTUP_WAIT)
            .connect_with(options.clone())
            .await?;
        let ready = if migrate {
            MIGRATOR.run(&boot).await.map_err(StoreError::from)
        } else {
            schema_is_current(&boot).await
        };
        boot.close().await;
        ready?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx pings every connection it hands out by default: a round trip more per query
            // (it pings again as the connection goes back, which cannot be turned off). One
            // that went back a moment ago after a successful ping is alive, unless a query has
            // just found its own connection lost (a fast restart, killed backends): then, as
            // for one idle long enough to have missed a restart, it is checked first, and a
            // dead one is replaced instead of failing a call.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if check_before_use(meta.idle_for) {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        Ok(Store {
            pool,
            token_policy: TokenPolicy::default(),
            down: Arc::default(),
            probe: Arc::default(),
            leases: Arc::new(std::sync::Mutex::new(LeaseClock::new(
                DEFAULT_LEASE,
                SystemTime::now(),
            ))),
            unused_outputs_after: Duration::from_secs(3600 + 300),
            job_snapshot: webhooks::minimal_snapshot,
        })
    }

    /// A pooled connection, or [`StoreError::Unavailable`] within about a second when the
    /// database cannot be reached (see [`ACQUIRE_TIMEOUT`] for how busy is told from down).
    pub(crate) async fn conn(&self) -> Result<PoolConnection<Postgres>> {
        if self.down.load(Ordering::Relaxed) && !self.reachable().await {
            self.clock(|c| c.unreachable());
            return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        let started = Instant::now();
        loop {
            match self.pool.acquire().await {
                Ok(conn) => {
                    self.down.store(false, Ordering::Relaxed);
                    self.clock(|c| c.reached(SystemTime::now()));
                    return Ok(conn);
                }
                Err(sqlx::Error::PoolTimedOut) => {
                    if !self.reachable().await {
                        self.down.store(true, Ordering::Relaxed);
                        self.clock(|c| c.unreachable());
                        return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
                    }
                    if started.elapsed() >= BUSY_WAIT {
                        // Reachable but saturated for this long: still "retry later".
                        return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A transaction on a pooled connection (see [`Store::conn`]).
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        let conn = self.conn().await?;
        Ok(Transaction::begin(conn, None).await?)
    }

    /// Whether the server accepts a fresh connection within [`PROBE_TIMEOUT`] (or answers
    /// that it has too many: busy, not down). One probe at a time; its answer is shared.
    async fn reachable(&self) -> bool {
        let mut last = self.probe.lock().await;
        if let Some((at, reachable)) = *last {
            if at.elapsed() < PROBE_REUSE {
                return reachable;
            }
        }
        let options = self.pool.connect_options();
        let reachable =
            match tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect_with(&options))
                .await
            {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    true
                }
                // too_many_connections: the server is up and full.
                Ok(Err(sqlx::Error::Database(d))) => d.code().as_deref() == Some("53300"),
                _ => false,
            };
        *last = Some((Instant::now(), reachable));
        reachable
    }

    fn clock<T>(&self, f: impl FnOnce(&mut LeaseClock) -> T) -> T {
        // The clock holds plain values: a panic elsewhere cannot leave it half-updated.
        let mut clock = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut clock)
    }

    /// Sets how long a lease lasts (the control plane's configuration), and with it how long
    /// leases count through an outage or this process's start ([`LeaseClock`]).
    pub fn set_lease(&mut self, lease: Duration) {
        self.leases = Arc::new(std::sync::Mutex::new(LeaseClock::new(
            lease,
            SystemTime::now(),
        )));
    }

    /// Sets how long the objects of an attempt that ended without success stay in the store
    /// (the longest an upload URL granted to it lives, plus a grace for clock differences).
    pub fn set_unused_outputs_after(&mut self, after: Duration) {
        self.unused_outputs_after = after;
    }

    /// Leases that expired after this time still count as held (see [`LeaseClock`]); `None`:
    /// only unexpired ones. Bound into every statement that decides whether a lease is held.
    pub(crate) fn lease_cutoff(&self) -> Option<time::OffsetDateTime> {
        self.clock(|c| c.held_if_expired_after(SystemTime::now()))
            .map(time::OffsetDateTime::from)
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

    /// Whether the database answers a query (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }
}

/// Whether every migration of this build has been applied (by a control plane).
async fn schema_is_current(pool: &PgPool) -> Result<()> {
    let newest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    match applied {
        Some(v) if v >= newest => Ok(()),
        v => Err(StoreError::Conflict(format!(
            "the database schema is at version {} and this build needs {newest}: start the control plane (which migrates) first",
            v.unwrap_or(0)
        ))),
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
