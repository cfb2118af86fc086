//! The whole platform on one machine: PostgreSQL (a private cluster or `DATABASE_URL`), the
//! object store (embedded on loopback, or any S3 endpoint), the control plane, and worker
//! processes. `mpegflow up` and the integration tests both start it through [`Platform::start`].

use crate::layout::{remove_old_work_dirs, stop_orphan_workers, DataDirLock, Layout};
use crate::pg::{self, Cluster};
use anyhow::{bail, Context, Result};
use mpegflow_control::{AppState, ControlConfig};
use mpegflow_objstore::embedded::EmbeddedConfig;
use mpegflow_objstore::probe::{self, ProbeError, StoreSetting};
use mpegflow_objstore::{Presigner, S3Config};
use mpegflow_store::Store;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The user an *unprivileged* worker runs as when the platform is started as root (see
/// [`Platform::spawn_worker_with`]). By default a root platform starts workers as root and each
/// drops to a uid of its own, keeping a privileged spawn helper that runs every job as a fresh
/// uid (`mpegflow_jail::spawner`).
pub const WORKER_USER: &str = "mpegflow-worker";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PlatformConfig {
    pub data_dir: PathBuf,
    /// Use this database instead of a private cluster.
    pub database_url: Option<String>,
    pub api_addr: String,
    pub grpc_addr: String,
    pub s3_addr: String,
    /// Use this S3 endpoint instead of the embedded store.
    pub s3: Option<S3Config>,
    pub workers: usize,
    pub worker_bin: Option<PathBuf>,
    pub control: ControlConfig,
    /// Tune the private cluster for tests (no fsync).
    pub pg_for_tests: bool,
    /// The embedded store cuts off a request body that sends no byte for this long.
    pub s3_body_idle_timeout_secs: u64,
    /// Replace a worker of the fleet that exits while the platform runs (after removing its
    /// work directory). Workers started with [`Platform::spawn_worker`] are never replaced.
    pub supervise_workers: bool,
    /// The keys sealing webhook signing secrets (default: `DATA_DIR/webhook-keys`, created
    /// with one fresh key, mode 0600, when missing).
    pub webhook_keys_file: Option<PathBuf>,
    /// Start the webhook dispatcher process (`mpegflow-dispatcher`), supervised.
    pub dispatcher: bool,
    pub dispatcher_bin: Option<PathBuf>,
    /// The dispatcher's database URL. Default: a fresh login for the dispatcher's own role
    /// (migration 0008), granted at start, which needs the platform's connection to be allowed
    /// to alter roles.
    pub dispatcher_database_url: Option<String>,
    /// How the API resolves endpoint hosts when they are saved (tests inject their own).
    #[serde(skip)]
    pub webhook_resolver: WebhookResolver,
}

/// The resolver the control plane checks endpoint hosts with: the system's unless injected.
#[derive(Clone, Default)]
pub struct WebhookResolver(pub Option<Arc<dyn mpegflow_dispatcher::Resolver>>);

impl std::fmt::Debug for WebhookResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "injected"
        } else {
            "system"
        })
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            data_dir: PathBuf::from("mpegflow-data"),
            database_url: None,
            api_addr: "127.0.0.1:8080".into(),
            grpc_addr: "127.0.0.1:7070".into(),
            s3_addr: "127.0.0.1:9000".into(),
            s3: None,
            // At least two: a tenant-blaming failure is final only when a second worker confirms it.
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
            worker_bin: None,
            control: ControlConfig::default(),
            pg_for_tests: false,
            s3_body_idle_timeout_secs: mpegflow_objstore::embedded::DEFAULT_BODY_IDLE_TIMEOUT
                .as_secs(),
            supervise_workers: true,
            webhook_keys_file: None,
            dispatcher: true,
            dispatcher_bin: None,
            dispatcher_database_url: None,
            webhook_resolver: WebhookResolver::default(),
        }
    }
}

impl PlatformConfig {
    /// Defaults, then a TOML file, then `MPEGFLOW_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut cfg: PlatformConfig = load_toml(file)?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        apply_control_env(
            &mut cfg.database_url,
            &mut cfg.api_addr,
            &mut cfg.grpc_addr,
            &mut cfg.s3,
        )?;
        if let Some(v) = env("MPEGFLOW_S3_ADDR") {
            cfg.s3_addr = v;
        }
        if let Some(v) = env("MPEGFLOW_S3_BODY_IDLE_TIMEOUT") {
            cfg.s3_body_idle_timeout_secs = v
                .parse()
                .ok()
                .filter(|&s| s > 0)
                .context("MPEGFLOW_S3_BODY_IDLE_TIMEOUT must be a number of seconds above 0")?;
        }
        if let Some(v) = env("MPEGFLOW_WORKERS") {
            cfg.workers = v.parse().context("MPEGFLOW_WORKERS must be a number")?;
        }
        if let Some(v) = env("MPEGFLOW_WEBHOOK_KEYS_FILE") {
            cfg.webhook_keys_file = Some(v.into());
        }
        if let Some(v) = env("MPEGFLOW_DISPATCHER_DATABASE_URL") {
            cfg.dispatcher_database_url = Some(v);
        }
        if let Some(v) = env("MPEGFLOW_DISPATCHER") {
            cfg.dispatcher = match v.as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => bail!("MPEGFLOW_DISPATCHER must be true or false"),
            };
        }
        apply_webhook_env(&mut cfg.control)?;
        Ok(cfg)
    }
}

/// The variables `up` and `control` share: `DATABASE_URL`, `MPEGFLOW_API_ADDR`,
/// `MPEGFLOW_GRPC_ADDR` and an external store's `MPEGFLOW_S3_*`, over what the file said.
pub(crate) fn apply_control_env(
    database_url: &mut Option<String>,
    api_addr: &mut String,
    grpc_addr: &mut String,
    s3: &mut Option<S3Config>,
) -> Result<()> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(v) = env("DATABASE_URL") {
        *database_url = Some(v);
    }
    if let Some(v) = env("MPEGFLOW_API_ADDR") {
        *api_addr = v;
    }
    if let Some(v) = env("MPEGFLOW_GRPC_ADDR") {
        *grpc_addr = v;
    }
    if let Some(v) = s3_from_env()? {
        *s3 = Some(v);
    }
    Ok(())
}

/// `MPEGFLOW_WEBHOOK_ALLOW_LOOPBACK` and `MPEGFLOW_WEBHOOK_RESOLVE_NAMES` (`1`/`true` or
/// `0`/`false`) over what the file said.
pub(crate) fn apply_webhook_env(control: &mut ControlConfig) -> Result<()> {
    if let Ok(v) = std::env::var("MPEGFLOW_WEBHOOK_ALLOW_LOOPBACK") {
        control.webhook_allow_loopback = match v.as_str() {
            "1" | "true" => true,
            "" | "0" | "false" => false,
            _ => bail!("MPEGFLOW_WEBHOOK_ALLOW_LOOPBACK must be true or false"),
        };
    }
    if let Ok(v) = std::env::var("MPEGFLOW_WEBHOOK_RESOLVE_NAMES") {
        control.webhook_resolve_names = match v.as_str() {
            "" | "1" | "true" => true,
            "0" | "false" => false,
            _ => bail!("MPEGFLOW_WEBHOOK_RESOLVE_NAMES must be true or false"),
        };
    }
    Ok(())
}

/// The key file in a data directory that seals webhook signing secrets.
pub const WEBHOOK_KEYS_FILE: &str = "webhook-keys";

/// Reads the webhook key file; with `create`, writes one with a fresh key (mode 0600) first
/// when it is missing.
pub(crate) fn webhook_keys(path: &Path, create: bool) -> Result<mpegflow_domain::webhook::Keyring> {
    if create && !path.exists() {
        let id = format!("k{}", time::OffsetDateTime::now_utc().unix_timestamp());
        let text = format!(
            "# Keys sealing webhook signing secrets (ID:BASE64 of 32 bytes). The first seals, all\n\
             # open: to rotate, add a new first line and keep the old ones.\n{}",
            mpegflow_domain::webhook::Keyring::generate_line(&id)
        );
        crate::write_private(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(mpegflow_dispatcher::read_keyring(path)?)
}

/// Puts a fresh key first in the key file (written anew, mode 0600); returns its id.
pub fn rotate_webhook_keys(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Refuses a file others can read, or one that does not parse, before touching it.
    mpegflow_dispatcher::read_keyring(path)?;
    let id = format!("k{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let line = mpegflow_domain::webhook::Keyring::generate_line(&id);
    // The new key goes before the first key line (comments at the top stay on top).
    let mut out = String::new();
    let mut placed = false;
    for l in text.lines() {
        let trimmed = l.trim();
        if !placed && !trimmed.is_empty() && !trimmed.starts_with('#') {
            out.push_str(&line);
            placed = true;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !placed {
        out.push_str(&line);
    }
    let keys = mpegflow_domain::webhook::Keyring::parse(&out)?;
    if keys.primary_id() != id {
        bail!("key id {id} is already in {}", path.display());
    }
    crate::write_private(path, &out).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Re-seals every stored signing secret not sealed with the keyring's first key; returns how
/// many endpoints changed. A secret that does not open with any key is an error (nothing of
/// it is lost: it stays as it was).
pub async fn reseal_webhook_secrets(
    store: &Store,
    keys: &mpegflow_domain::webhook::Keyring,
) -> Result<u64> {
    use mpegflow_domain::webhook::endpoint_secret_aad;
    let mut resealed = 0;
    for _round in 0..5 {
        let mut raced = false;
        for old in store.sealed_webhook_secrets().await? {
            let current = |sealed: &str| keys.sealed_with_primary(sealed);
            if current(&old.secret_sealed)
                && old.previous_secret_sealed.as_deref().is_none_or(current)
            {
                continue;
            }
            let aad = endpoint_secret_aad(old.id);
            let again = |sealed: &str| -> Result<String> {
                if keys.sealed_with_primary(sealed) {
                    return Ok(sealed.to_owned());
                }
                let secret = keys
                    .open(sealed, &aad)
                    .with_context(|| format!("webhook endpoint {}", old.id))?;
                Ok(keys.seal(&secret, &aad))
            };
            let new = mpegflow_store::SealedSecrets {
                id: old.id,
                secret_sealed: again(&old.secret_sealed)?,
                previous_secret_sealed: old
                    .previous_secret_sealed
                    .as_deref()
                    .map(again)
                    .transpose()?,
            };
            if store.replace_sealed_webhook_secrets(&old, &new).await? {
                resealed += 1;
            } else {
                raced = true;
            }
        }
        if !raced {
            return Ok(resealed);
        }
    }
    bail!("endpoints kept changing while re-sealing: run it again")
}

/// A config file's settings over `T`'s defaults (`T` ignores keys it does not know, so `up`
/// and `control` can share one file).
pub(crate) fn load_toml<T: serde::de::DeserializeOwned + Default>(
    file: Option<&Path>,
) -> Result<T> {
    match file {
        Some(f) => toml::from_str(
            &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        )
        .with_context(|| format!("parsing {}", f.display())),
        None => Ok(T::default()),
    }
}

/// An external object store named by `MPEGFLOW_S3_*` variables, if `MPEGFLOW_S3_ENDPOINT` is set.
fn s3_from_env() -> Result<Option<S3Config>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(endpoint) = env("MPEGFLOW_S3_ENDPOINT") else {
        return Ok(None);
    };
    Ok(Some(S3Config {
        endpoint,
        region: env("MPEGFLOW_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
        bucket: env("MPEGFLOW_S3_BUCKET")
            .context("MPEGFLOW_S3_BUCKET is required with MPEGFLOW_S3_ENDPOINT")?,
        path_style: env("MPEGFLOW_S3_PATH_STYLE").is_none_or(|v| v != "false"),
        access_key: env("MPEGFLOW_S3_ACCESS_KEY").context("MPEGFLOW_S3_ACCESS_KEY is required")?,
        secret_key: env("MPEGFLOW_S3_SECRET_KEY").context("MPEGFLOW_S3_SECRET_KEY is required")?,
    }))
}

/// A started platform.
pub struct Platform {
    pub api_url: String,
    pub coordinator_url: String,
    pub database_url: String,
    pub s3_endpoint: String,
    pub state: AppState,
    pub data_dir: PathBuf,
    /// Where the files other uids must reach live (see [`crate::layout`]).
    pub layout: Layout,
    parts: Parts,
    worker_bin: Option<PathBuf>,
    worker_uid: Option<(u32, u32)>,
}

/// Everything a start has brought up so far: what a failed start, and [`Platform::stop`],
/// take down.
#[derive(Default)]
struct Parts {
    /// Held while the platform runs: one `up` per data directory.
    lock: Option<DataDirLock>,
    cluster: Option<Cluster>,
    store: Option<Store>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Workers started one by one ([`Platform::spawn_worker`]): not replaced when they exit.
    workers: Vec<tokio::process::Child>,
    /// The supervisors of the fleet `start` launched, one per worker (see [`supervise`]).
    fleet: Vec<JoinHandle<()>>,
    /// The pid of each fleet worker running now (`None` between one and its replacement).
    fleet_pids: Arc<Mutex<Vec<Option<u32>>>>,
    /// Set to the grace period when the platform stops: the supervisors then stop their
    /// workers instead of replacing them.
    fleet_stop: Option<watch::Sender<Option<Duration>>>,
    /// Numbers workers (their log files and work directories).
    next_worker: usize,
    /// The token of the workers `start` launched; revoked at `stop`, so it dies with this run.
    fleet_token: Option<uuid::Uuid>,
    /// [`PLATFORM_FILE`], once written: removed first at `stop`, so no control plane joins a
    /// platform that is going away.
    published: Option<PathBuf>,
}

impl Parts {
    /// Stops workers (SIGTERM, then SIGKILL after `grace`), revokes the fleet's token, stops
    /// the servers and the private cluster.
    async fn stop(&mut self, grace: std::time::Duration) {
        if let Some(path) = self.published.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
        if let Some(stop) = self.fleet_stop.take() {
            let _ = stop.send(Some(grace));
        }
        for w in &self.workers {
            if let Some(pid) = w.id() {
                // SAFETY: signalling a child we started.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        for w in &mut self.workers {
            if tokio::time::timeout(grace, w.wait()).await.is_err() {
                let _ = w.kill().await;
            }
        }
        self.workers.clear();
        for s in self.fleet.drain(..) {
            let _ = s.await;
        }
        if let (Some(id), Some(store)) = (self.fleet_token.take(), &self.store) {
            if let Err(e) = store.revoke_worker_token(id).await {
                tracing::warn!("revoking the fleet's worker token: {e}");
            }
        }
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
        }
        if let Some(store) = self.store.take() {
            store.pool().close().await;
        }
        if let Some(c) = self.cluster.take() {
            tokio::task::block_in_place(|| c.stop());
        }
        self.lock = None;
    }
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The file, in the data directory, holding the embedded store's key pair.
pub const EMBEDDED_KEY_FILE: &str = "s3.key";

/// The embedded store's one bucket.
pub const EMBEDDED_BUCKET: &str = "mpegflow";

/// The file, in the data directory, telling a control plane started with `mpegflow control
/// --join` where the running platform's database and object store are (a [`PlatformInfo`],
/// mode 0600: it names the database). Written once the platform serves, removed at its clean
/// stop; a crashed platform leaves it behind, so a joiner also checks that the data directory
/// is locked (see [`crate::layout::DataDirLock::is_held`]).
pub const PLATFORM_FILE: &str = "platform.json";

/// What [`PLATFORM_FILE`] holds.
#[derive(Clone, Serialize, Deserialize)]
pub struct PlatformInfo {
    /// The `mpegflow up` process.
    pub pid: u32,
    pub database_url: String,
    pub api_url: String,
    pub coordinator_url: String,
    /// The embedded store (its key pair is in [`EMBEDDED_KEY_FILE`]); `None` when the platform
    /// uses an external store, whose key is not written down.
    pub embedded_store: Option<StoreLocation>,
}

/// Where an S3 store answers: all of an [`S3Config`] but its key pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreLocation {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
}

/// The first wait before replacing a fleet worker that exited, doubled at each exit in a row
/// up to [`RESTART_MAX`] (a crash-looping worker binary does not spin).
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A worker that ran this long before exiting is replaced after [`RESTART_FIRST`] again.
const RESTART_STABLE: Duration = Duration::from_secs(60);

/// The embedded store's key pair, as kept in [`EMBEDDED_KEY_FILE`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbeddedKey {
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
}

impl std::fmt::Debug for EmbeddedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKey")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl EmbeddedKey {
    fn generate() -> Self {
        EmbeddedKey {
            access_key: format!("MF{}", random_hex(8)),
            secret_key: random_hex(32),
        }
    }

    fn is_well_formed(&self) -> bool {
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        self.access_key
            .strip_prefix("MF")
            .is_some_and(|h| hex(h, 16))
            && hex(&self.secret_key, 64)
    }
}

/// The embedded store's key pair: read from `path`, or made and written there (mode 0600) on
/// the first start, so URLs signed before a restart stay valid after it. A file others could
/// read, or that is not ours, not a regular file or not a key file, fails the start naming it:
/// its key may have been copied (fixing the mode would not undo that) or the file is not
/// what `up` wrote.
///
/// Without `create`, a missing file is an error: a control plane joining a running platform
/// must use its key, never make one.
pub(crate) fn embedded_key(path: &Path, create: bool) -> Result<EmbeddedKey> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let remedy = "remove it to make a new key (URLs signed with the old one then answer 403)";
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
            bail!("the object store's key file {} is missing", path.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = EmbeddedKey::generate();
            crate::write_private(path, &toml::to_string(&key)?)
                .with_context(|| format!("writing the object store's key to {}", path.display()))?;
            return Ok(key);
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            bail!(
                "{} is a symbolic link, not the object store's key file; {remedy}",
                path.display()
            )
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the object store's key {}", path.display()))
        }
    };
    let meta = file.metadata()?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() || meta.uid() != me {
        bail!(
            "{} is not a regular file owned by uid {me}, so not the object store's key file; {remedy}",
            path.display()
        );
    }
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the object store's key file {} is readable or writable by others (mode {:04o}, must be 0600):              its key may have been copied; {remedy}",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    let mut text = String::new();
    (&mut file)
        .take(4096)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the object store's key {}", path.display()))?;
    match toml::from_str::<EmbeddedKey>(&text) {
        Ok(key) if key.is_well_formed() => Ok(key),
        // The parser's message could quote the file: say only where it is.
        _ => bail!(
            "{} is not a valid object store key file; {remedy}",
            path.display()
        ),
    }
}

/// The worker binary: next to this executable (or its parent, for test binaries in deps/).
pub fn default_worker_bin() -> Result<PathBuf> {
    sibling_bin("mpegflow-worker", "MPEGFLOW_WORKER_BIN")
}

/// A binary of the platform: named by `variable`, else next to this executable (or its
/// parent, for test binaries in deps/).
fn sibling_bin(name: &str, variable: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(variable) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found next to {} (build it with `cargo build --workspace --bins`)",
        exe.display()
    )
}

/// A database URL for the dispatcher: the platform's, as the dispatcher's own role with a fresh
/// password.
async fn dispatcher_login(store: &Store, database_url: &str) -> Result<String> {
    let (role, password) = store.grant_dispatcher_login().await.context(
        "granting the webhook dispatcher's role a login (the database user must be allowed to \
         alter roles; or set MPEGFLOW_DISPATCHER_DATABASE_URL to a login of that role)",
    )?;
    let mut url = url::Url::parse(database_url).context("DATABASE_URL is not a URL")?;
    let parts = url
        .set_username(&role)
        .and_then(|()| url.set_password(Some(&password)));
    if parts.is_err() {
        bail!("DATABASE_URL cannot carry a user name");
    }
    Ok(url.into())
}

/// Everything starting the dispatcher process takes.
struct DispatcherLaunch {
    bin: PathBuf,
    /// Its role's login and the keyring's text: given on its standard input, never in its
    /// arguments, environment or a file it must be able to read.
    secrets: Arc<String>,
    /// The unprivileged user it runs as when the platform runs as root.
    user: Option<(u32, u32)>,
    allow_loopback: bool,
    resolve_names: bool,
    log: PathBuf,
}

impl DispatcherLaunch {
    async fn spawn(&self) -> Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = tokio::process::Command::new(&self.bin);
        // It holds its role's login and the keys (on stdin), nothing of ours: no S3 key, no
        // superuser URL.
        child_environment(&mut cmd);
        cmd.args(["--database-url-file", "-", "--keys-file", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if self.allow_loopback {
            cmd.arg("--allow-loopback");
        }
        if !self.resolve_names {
            cmd.arg("--no-resolve");
        }
        if let Some((uid, gid)) = self.user {
            cmd.as_std_mut().uid(uid).gid(gid);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let mut stdin = child.stdin.take().context("dispatcher stdin")?;
        stdin.write_all(self.secrets.as_bytes()).await?;
        drop(stdin);
        Ok(child)
    }
}

/// The whole environment of a process `up` starts (a worker, the dispatcher): `PATH` and how to
/// log, nothing else of ours. Their stderr is a log file: no colour codes; JSON lines when `up`
/// logs JSON.
fn child_environment(cmd: &mut tokio::process::Command) {
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env(
            "MPEGFLOW_LOG",
            std::env::var("MPEGFLOW_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .env(
            "MPEGFLOW_LOG_FORMAT",
            match crate::logging::format() {
                crate::logging::LogFormat::Json => "json",
                crate::logging::LogFormat::Text => "text",
            },
        );
}

/// Keeps the dispatcher running until the platform stops, as [`supervise`] does a worker.
async fn supervise_dispatcher(
    launch: DispatcherLaunch,
    mut child: tokio::process::Child,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut backoff = RESTART_FIRST;
    loop {
        let started = Instant::now();
        let exit = tokio::select! {
            status = child.wait() => Ok(status),
            grace = stop.wait_for(Option::is_some) => {
                Err(grace.map(|g| (*g).unwrap_or_default()).unwrap_or_default())
            }
        };
        let status = match exit {
            Ok(status) => status,
            Err(grace) => {
                terminate(&mut child, grace).await;
                return;
            }
        };
        if started.elapsed() >= RESTART_STABLE {
            backoff = RESTART_FIRST;
        }
        tracing::warn!(
            status = %status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            "the webhook dispatcher exited while the platform runs: starting it again"
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(Option::is_some) => return,
            }
            backoff = (backoff * 2).min(RESTART_MAX);
            match launch.spawn().await {
                Ok(c) => {
                    child = c;
                    break;
                }
                Err(e) => tracing::error!("starting the webhook dispatcher: {e:#}"),
            }
        }
    }
}

/// The unprivileged user workers run as, created on first use when we are root.
fn worker_user() -> Result<(u32, u32)> {
    system_user(WORKER_USER)
}

/// The user the webhook dispatcher runs as when the platform runs as root: it holds no file
/// of ours (its secrets come on its standard input) and none of the workers' ids.
pub const DISPATCHER_USER: &str = "mpegflow-webhooks";

/// A system user without a home or shell, created on first use (we are root).
fn system_user(name: &str) -> Result<(u32, u32)> {
    if let Some(ids) = pg::lookup_user(name) {
        return Ok(ids);
    }
    let status = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status();
    match (status, pg::lookup_user(name)) {
        (_, Some(ids)) => Ok(ids),
        _ => pg::lookup_user("nobody")
            .with_context(|| format!("no unprivileged user to run as instead of {name}")),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The variable (and config-file key) behind a store setting.
fn setting_name(s: StoreSetting) -> (&'static str, &'static str) {
    match s {
        StoreSetting::Endpoint => ("MPEGFLOW_S3_ENDPOINT", "s3.endpoint"),
        StoreSetting::Region => ("MPEGFLOW_S3_REGION", "s3.region"),
        StoreSetting::Bucket => ("MPEGFLOW_S3_BUCKET", "s3.bucket"),
        StoreSetting::AccessKey | StoreSetting::Permissions => {
            ("MPEGFLOW_S3_ACCESS_KEY", "s3.access_key")
        }
        StoreSetting::SecretKey => ("MPEGFLOW_S3_SECRET_KEY", "s3.secret_key"),
    }
}

/// Checks an external object store, naming the setting a refusal points at.
pub(crate) async fn check_external_store(presigner: &Presigner, s3: &S3Config) -> Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .no_proxy()
        .build()?;
    match probe::probe(presigner, &http, &random_hex(8)).await {
        Ok(report) => {
            for (key, why) in report.undeleted {
                tracing::warn!(key, "could not delete the start-up probe's object: {why}");
            }
            Ok(())
        }
        Err(ProbeError::Misconfigured {
            setting: StoreSetting::Permissions,
            answer,
        }) => bail!(
            "MPEGFLOW_S3_ACCESS_KEY may not write, read or delete objects in MPEGFLOW_S3_BUCKET \
             {:?} (check the key's permissions and the bucket policy): the object store at {} \
             answered {answer}",
            s3.bucket,
            s3.endpoint
        ),
        Err(ProbeError::Misconfigured { setting, answer }) => {
            let (var, key) = setting_name(setting);
            bail!(
                "{var} is wrong (or {key} in the config file): the object store at {} answered {answer}",
                s3.endpoint
            )
        }
        Err(ProbeError::Unreachable(e)) => {
            bail!("MPEGFLOW_S3_ENDPOINT {} is unreachable: {e}", s3.endpoint)
        }
        Err(e) => Err(e).with_context(|| format!("checking the object store at {}", s3.endpoint)),
    }
}

/// Checks the embedded store as any other (it is cheap), then removes the directories its
/// deleted probe objects leave behind.
async fn check_embedded_store(presigner: &Presigner, cfg: &EmbeddedConfig) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .no_proxy()
        .build()?;
    let result = probe::probe(presigner, &http, &random_hex(8)).await;
    remove_embedded_probe_objects(cfg);
    result
        .map(|_| ())
        .context("checking the embedded object store")
}

fn remove_embedded_probe_objects(cfg: &EmbeddedConfig) {
    let dir = cfg.root.join(&cfg.bucket).join(probe::PROBE_PREFIX);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            "removing the start-up probe's objects in {}: {e}",
            dir.display()
        ),
    }
}

impl Platform {
    /// Starts everything; on failure, stops whatever it had started before returning the error.
    pub async fn start(cfg: PlatformConfig) -> Result<Platform> {
        let mut parts = Parts::default();
        let started = Self::start_services(cfg.clone(), &mut parts).await;
        let mut platform = match started {
            Ok(p) => p,
            Err(e) => {
                parts.stop(std::time::Duration::from_secs(5)).await;
                return Err(e);
            }
        };
        let started = async {
            platform.publish(cfg.s3.is_none())?;
            platform
                .start_fleet(cfg.workers, cfg.supervise_workers)
                .await
        };
        if let Err(e) = started.await {
            platform.stop(std::time::Duration::from_secs(5)).await;
            return Err(e);
        }
        Ok(platform)
    }

    /// Writes [`PLATFORM_FILE`].
    fn publish(&mut self, embedded: bool) -> Result<()> {
        let info = PlatformInfo {
            pid: std::process::id(),
            database_url: self.database_url.clone(),
            api_url: self.api_url.clone(),
            coordinator_url: self.coordinator_url.clone(),
            embedded_store: embedded.then(|| StoreLocation {
                endpoint: self.s3_endpoint.clone(),
                region: mpegflow_objstore::embedded::EMBEDDED_REGION.into(),
                bucket: EMBEDDED_BUCKET.into(),
            }),
        };
        let path = self.data_dir.join(PLATFORM_FILE);
        crate::write_private(&path, &serde_json::to_string_pretty(&info)?)
            .with_context(|| format!("writing {}", path.display()))?;
        self.parts.published = Some(path);
        Ok(())
    }

    async fn start_services(cfg: PlatformConfig, parts: &mut Parts) -> Result<Platform> {
        let data_dir = std::path::absolute(&cfg.data_dir)?;
        // 0711: other users (postgres, workers) may pass through to their own directories only.
        mkdir(&data_dir, 0o711)?;
        parts.lock = Some(DataDirLock::acquire(&data_dir)?);
        // What a crashed run published names its database port, free now for anyone to take:
        // gone before anything could read it as ours (joiners also check its pid).
        match std::fs::remove_file(data_dir.join(PLATFORM_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                bail!("removing the stale {PLATFORM_FILE} of an earlier run: {e}")
            }
            _ => {}
        }
        mkdir(&data_dir.join("logs"), 0o700)?;
        // The object store first: a wrong setting fails the start before anything else runs.
        let s3 = match &cfg.s3 {
            Some(s3) => {
                let presigner = Presigner::new(s3)
                    .with_context(|| "MPEGFLOW_S3_ENDPOINT is not a usable URL".to_owned())?;
                check_external_store(&presigner, s3).await?;
                s3.clone()
            }
            None => {
                let listener = TcpListener::bind(&cfg.s3_addr).await.with_context(|| {
                    format!(
                        "binding the object store to {} (MPEGFLOW_S3_ADDR)",
                        cfg.s3_addr
                    )
                })?;
                let endpoint = format!("http://{}", listener.local_addr()?);
                let key = embedded_key(&data_dir.join(EMBEDDED_KEY_FILE), true)?;
                let embedded = EmbeddedConfig {
                    root: data_dir.join("s3"),
                    bucket: EMBEDDED_BUCKET.into(),
                    access_key: key.access_key,
                    secret_key: key.secret_key,
                    body_idle_timeout: std::time::Duration::from_secs(
                        cfg.s3_body_idle_timeout_secs.max(1),
                    ),
                };
                let s3 = S3Config {
                    endpoint,
                    region: mpegflow_objstore::embedded::EMBEDDED_REGION.into(),
                    bucket: embedded.bucket.clone(),
                    path_style: true,
                    access_key: embedded.access_key.clone(),
                    secret_key: embedded.secret_key.clone(),
                };
                let opened = mpegflow_objstore::embedded::open(embedded.clone())
                    .context("opening the embedded object store")?;
                // Objects an earlier version's probe left behind.
                remove_embedded_probe_objects(&embedded);
                let stop = parts.shutdown.clone();
                parts.tasks.push(tokio::spawn(async move {
                    if let Err(e) = mpegflow_objstore::embedded::serve_open(
                        listener,
                        opened,
                        Default::default(),
                        stop.cancelled_owned(),
                    )
                    .await
                    {
                        tracing::error!("object store stopped: {e}");
                    }
                }));
                check_embedded_store(&Presigner::new(&s3)?, &embedded).await?;
                s3
            }
        };
        let presigner = Presigner::new(&s3)?;

        let layout = Layout::resolve(&data_dir, cfg.database_url.is_none())?;
        // Workers a killed run left behind would still serve its (unrevoked) token.
        stop_orphan_workers(&layout.work_root());
        remove_old_work_dirs(&layout.work_root());
        let database_url = match &cfg.database_url {
            Some(url) => url.clone(),
            None => {
                let dir = layout.pg_dir();
                mkdir(&dir, 0o711)?;
                let c =
                    tokio::task::block_in_place(|| Cluster::start(&dir, None, cfg.pg_for_tests))?;
                let url = c.database_url("postgres");
                parts.cluster = Some(c);
                url
            }
        };
        let store = Store::connect(&database_url, 32)
            .await
            .context("connecting to PostgreSQL")?;
        parts.store = Some(store.clone());
        let keys_file = cfg
            .webhook_keys_file
            .clone()
            .unwrap_or_else(|| data_dir.join(WEBHOOK_KEYS_FILE));
        let keys = webhook_keys(&keys_file, cfg.webhook_keys_file.is_none())?;
        let mut state =
            AppState::new(store.clone(), presigner, cfg.control.clone()).with_webhook_keys(keys);
        if let Some(resolver) = &cfg.webhook_resolver.0 {
            state = state.with_resolver(resolver.clone());
        }

        let api = TcpListener::bind(&cfg.api_addr).await.with_context(|| {
            format!(
                "binding the API to {} (MPEGFLOW_API_ADDR; is another `mpegflow up` running?)",
                cfg.api_addr
            )
        })?;
        let grpc = TcpListener::bind(&cfg.grpc_addr).await.with_context(|| {
            format!(
                "binding the coordinator to {} (MPEGFLOW_GRPC_ADDR)",
                cfg.grpc_addr
            )
        })?;
        let api_url = format!("http://{}", api.local_addr()?);
        let coordinator_url = format!("http://{}", grpc.local_addr()?);
        {
            let (state, stop) = (state.clone(), parts.shutdown.clone());
            parts.tasks.push(tokio::spawn(async move {
                if let Err(e) = mpegflow_control::run(state, api, grpc, stop).await {
                    tracing::error!("control plane stopped: {e}");
                }
            }));
        }
        if cfg.dispatcher {
            let url = match &cfg.dispatcher_database_url {
                Some(url) => url.clone(),
                None => dispatcher_login(&store, &database_url).await?,
            };
            let keys_text = std::fs::read_to_string(&keys_file)
                .with_context(|| format!("reading {}", keys_file.display()))?;
            let launch = DispatcherLaunch {
                // Run as its own user: a binary under a directory that user cannot traverse
                // (a checkout in root's home) is run from a copy it can reach.
                bin: reachable_bin(
                    &layout,
                    &match &cfg.dispatcher_bin {
                        Some(b) => b.clone(),
                        None => sibling_bin("mpegflow-dispatcher", "MPEGFLOW_DISPATCHER_BIN")?,
                    },
                )?,
                secrets: Arc::new(format!("{}\n{keys_text}", url.trim())),
                user: if pg::is_root() {
                    Some(system_user(DISPATCHER_USER)?)
                } else {
                    None
                },
                allow_loopback: cfg.control.webhook_allow_loopback,
                resolve_names: cfg.control.webhook_resolve_names,
                log: data_dir.join("logs").join("dispatcher.log"),
            };
            let child = launch.spawn().await?;
            let stop = parts
                .fleet_stop
                .get_or_insert_with(|| watch::channel(None).0)
                .subscribe();
            parts
                .fleet
                .push(tokio::spawn(supervise_dispatcher(launch, child, stop)));
        }
        let worker_uid = if pg::is_root() {
            Some(worker_user()?)
        } else {
            None
        };
        Ok(Platform {
            api_url,
            coordinator_url,
            database_url,
            s3_endpoint: s3.endpoint.clone(),
            state,
            data_dir,
            layout,
            parts: std::mem::take(parts),
            worker_bin: cfg.worker_bin.clone(),
            worker_uid,
        })
    }

    /// Starts `n` workers under one fresh token sized to them; `supervised`, each one that
    /// exits while the platform runs is replaced (see [`supervise`]).
    async fn start_fleet(&mut self, n: usize, supervised: bool) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        // Sized to the fleet: a stolen fleet token cannot register extra workers while
        // these run.
        let limits = mpegflow_store::TokenLimits {
            max_workers: u32::try_from(n).unwrap_or(u32::MAX).min(10_000),
            leases_per_minute: None,
        };
        let (token_id, token) = self
            .state
            .store
            .create_worker_token("default", "local fleet", limits)
            .await?;
        self.parts.fleet_token = Some(token_id);
        if !supervised {
            for _ in 0..n {
                self.spawn_worker(token.expose()).await?;
            }
            return Ok(());
        }
        let launch = self.launch(token.expose(), &[], true)?;
        // Kept in the parts before the first worker starts: a start that fails half-way stops
        // the supervisors already running.
        let stop = self
            .parts
            .fleet_stop
            .get_or_insert_with(|| watch::channel(None).0)
            .clone();
        for slot in 0..n {
            let number = self.next_number();
            let (child, work_dir) = launch.spawn(number, false).await?;
            let pids = self.parts.fleet_pids.clone();
            {
                let mut pids = pids.lock().unwrap_or_else(|e| e.into_inner());
                pids.push(child.id());
            }
            let supervisor = supervise(
                launch.clone(),
                Slot {
                    index: slot,
                    number,
                    pids,
                },
                child,
                work_dir,
                stop.subscribe(),
            );
            self.parts.fleet.push(tokio::spawn(supervisor));
        }
        Ok(())
    }

    fn next_number(&mut self) -> usize {
        let n = self.parts.next_worker;
        self.parts.next_worker += 1;
        n
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Starts one more worker process with `token`. Returns its pid.
    pub async fn spawn_worker(&mut self, token: &str) -> Result<u32> {
        self.spawn_worker_with(token, &[], true).await
    }

    /// The pids of the worker processes this platform started (and has not seen exit).
    /// The fleet's come first, in start order (a replacement takes the place of the worker it
    /// replaces).
    pub fn worker_pids(&mut self) -> Vec<u32> {
        let mut pids = self.fleet_pids();
        pids.extend(
            self.parts
                .workers
                .iter_mut()
                .filter_map(|w| match w.try_wait() {
                    Ok(None) => w.id(),
                    _ => None,
                }),
        );
        pids
    }

    /// The pids of the fleet's workers running now (a worker that exited is left out until
    /// its replacement starts).
    pub fn fleet_pids(&self) -> Vec<u32> {
        let pids = self
            .parts
            .fleet_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pids.iter().flatten().copied().collect()
    }

    /// Starts a worker with extra arguments. With `as_root` (and when we are root) the worker
    /// starts as root, forks its spawn helper and drops to a uid of its own: every job then
    /// runs as a fresh uid. Without it, the worker starts as the unprivileged worker user, as a
    /// deployment without root would run it (one uid, Landlock + seccomp + rlimits only).
    pub async fn spawn_worker_with(
        &mut self,
        token: &str,
        extra_args: &[&str],
        as_root: bool,
    ) -> Result<u32> {
        let launch = self.launch(token, extra_args, as_root)?;
        let number = self.next_number();
        let (child, _) = launch.spawn(number, false).await?;
        let pid = child.id().unwrap_or(0);
        self.parts.workers.push(child);
        Ok(pid)
    }

    /// How to start workers with `token`.
    fn launch(&mut self, token: &str, extra_args: &[&str], as_root: bool) -> Result<WorkerLaunch> {
        if self.worker_bin.is_none() {
            let bin = default_worker_bin()?;
            self.worker_bin = Some(self.reachable_worker_bin(&bin)?);
        }
        Ok(WorkerLaunch {
            bin: self.worker_bin.clone().unwrap_or_default(),
            coordinator_url: self.coordinator_url.clone(),
            work_root: self.layout.work_root(),
            logs: self.data_dir.join("logs"),
            token: Arc::new(token.to_owned()),
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            drop_to: self.worker_uid.filter(|_| !as_root),
        })
    }

    /// As root, each worker's jailed self-test runs the worker binary as a job uid, so that
    /// uid must reach it: a binary under a directory other users cannot traverse (a checkout
    /// in root's home) is copied to the shared directory's `bin/` (root's, 0711/0755) first.
    fn reachable_worker_bin(&self, bin: &Path) -> Result<PathBuf> {
        reachable_bin(&self.layout, bin)
    }
}

/// `bin`, or as root when other uids cannot traverse to it, a copy in the shared directory's
/// `bin/` (root's, 0711/0755) that they can run.
fn reachable_bin(layout: &Layout, bin: &Path) -> Result<PathBuf> {
    {
        if !pg::is_root() {
            return Ok(bin.to_owned());
        }
        let Some(closed) = crate::layout::first_closed_ancestor(bin)? else {
            return Ok(bin.to_owned());
        };
        let dir = layout.shared.join("bin");
        mkdir(&dir, 0o711)?;
        let name = bin
            .file_name()
            .context("the worker binary has no file name")?;
        let dest = dir.join(name);
        let tmp = dir.join(format!(".{}-{}", name.to_string_lossy(), random_hex(4)));
        std::fs::copy(bin, &tmp)
            .with_context(|| format!("copying {} to {}", bin.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        // A rename, not a write in place: a worker an earlier run left may still run the old one.
        std::fs::rename(&tmp, &dest)?;
        tracing::info!(
            from = %bin.display(),
            to = %dest.display(),
            "running a copy of the binary: other uids cannot traverse {}",
            closed.display()
        );
        Ok(dest)
    }
}

impl Platform {
    /// Whether the worker with this pid is still running.
    pub fn worker_alive(&mut self, pid: u32) -> bool {
        self.fleet_pids().contains(&pid)
            || self
                .parts
                .workers
                .iter_mut()
                .any(|w| w.id() == Some(pid) && matches!(w.try_wait(), Ok(None)))
    }

    /// Waits for a worker started with [`Platform::spawn_worker`] to exit and returns its exit
    /// code (`None` for a fleet worker: its supervisor waits for it).
    pub async fn wait_worker(&mut self, pid: u32) -> Option<i32> {
        let w = self
            .parts
            .workers
            .iter_mut()
            .find(|w| w.id() == Some(pid))?;
        w.wait().await.ok()?.code()
    }

    /// Stops workers (SIGTERM, then SIGKILL after `grace`), the control plane, the object store
    /// and the private cluster.
    pub async fn stop(mut self, grace: std::time::Duration) {
        self.parts.stop(grace).await;
    }
}

/// Everything starting one worker process takes: cloned into each fleet worker's supervisor.
#[derive(Clone)]
struct WorkerLaunch {
    bin: PathBuf,
    coordinator_url: String,
    work_root: PathBuf,
    logs: PathBuf,
    token: Arc<String>,
    extra_args: Vec<String>,
    /// The unprivileged user to start it as (else it starts as we are).
    drop_to: Option<(u32, u32)>,
}

impl WorkerLaunch {
    /// Starts worker number `n` in a fresh work directory, its token on stdin, its stderr to
    /// `logs/worker-<n>.log` (appended to with `append`: a replacement keeps the last words of
    /// the worker it replaces). Returns it and its work directory.
    async fn spawn(&self, n: usize, append: bool) -> Result<(tokio::process::Child, PathBuf)> {
        let work_dir = self.work_root.join(format!("{n}-{}", random_hex(4)));
        mkdir(&self.work_root, 0o711)?;
        mkdir(&work_dir, 0o700)?;
        if let Some((uid, gid)) = self.drop_to {
            std::os::unix::fs::chown(&work_dir, Some(uid), Some(gid))?;
        }
        let log_path = self.logs.join(format!("worker-{n}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = tokio::process::Command::new(&self.bin);
        // The credential vacuum starts with the environment: nothing of ours is inherited.
        child_environment(&mut cmd);
        cmd.arg("--coordinator")
            .arg(&self.coordinator_url)
            .arg("--token-file")
            .arg("-")
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--poll-seconds")
            .arg("5")
            .args(&self.extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.drop_to {
            cmd.as_std_mut().uid(uid).gid(gid);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        stdin.write_all(self.token.as_bytes()).await?;
        drop(stdin);
        Ok((child, work_dir))
    }
}

/// Where a supervised worker's pid is published.
struct Slot {
    /// Its place in [`Parts::fleet_pids`].
    index: usize,
    /// Its number (log file and work directory names).
    number: usize,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
}

impl Slot {
    fn set(&self, pid: Option<u32>) {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pids.get_mut(self.index) {
            *p = pid;
        }
    }
}

/// Keeps one fleet worker running until the platform stops. A worker that exits meanwhile
/// (crashed, killed, out of memory) is logged, its work directory removed (the files of its
/// jobs, owned by per-job uids when we are root, would otherwise stay until the next `up`),
/// and a replacement started with the same token after a backoff. The wait comes first: a
/// Ctrl-C reaches the workers (same process group) as it reaches `up`, whose stop then
/// arrives within it, so stopping replaces no one.
async fn supervise(
    launch: WorkerLaunch,
    slot: Slot,
    mut child: tokio::process::Child,
    mut work_dir: PathBuf,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut backoff = RESTART_FIRST;
    let mut started = Instant::now();
    loop {
        slot.set(child.id());
        let pid = child.id().unwrap_or(0);
        let exit = tokio::select! {
            status = child.wait() => Ok(status),
            // A dropped sender (a platform dropped unstopped) stops at once.
            grace = stop.wait_for(Option::is_some) => {
                Err(grace.map(|g| (*g).unwrap_or_default()).unwrap_or_default())
            }
        };
        let status = match exit {
            Ok(status) => status,
            Err(grace) => {
                terminate(&mut child, grace).await;
                slot.set(None);
                return;
            }
        };
        slot.set(None);
        if started.elapsed() >= RESTART_STABLE {
            backoff = RESTART_FIRST;
        }
        let mut exited = Some(status);
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(Option::is_some) => return,
            }
            backoff = (backoff * 2).min(RESTART_MAX);
            if let Some(status) = exited.take() {
                let status = match &status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown ({e})"),
                };
                tracing::warn!(
                    pid,
                    %status,
                    work_dir = %work_dir.display(),
                    "worker {} exited while the platform runs: removing its work directory and \
                     starting a replacement",
                    slot.number
                );
                let dir = work_dir.clone();
                let _ = tokio::task::spawn_blocking(move || crate::layout::reclaim_work_dir(&dir))
                    .await;
            }
            match launch.spawn(slot.number, true).await {
                Ok((c, d)) => {
                    tracing::info!(pid = c.id().unwrap_or(0), "worker {} replaced", slot.number);
                    (child, work_dir) = (c, d);
                    started = Instant::now();
                    break;
                }
                Err(e) => {
                    tracing::error!("starting a replacement for worker {}: {e:#}", slot.number);
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling a child we started (and have not reaped).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}
