//! `mpegflow control`: the control plane alone (REST API, gRPC coordinator, reaper) against a
//! database and an object store that run already: an external S3 store named by `MPEGFLOW_S3_*`
//! settings with `DATABASE_URL`, or the platform a running `mpegflow up` serves from a data
//! directory (`--join DIR`, read from its [`PLATFORM_FILE`] and [`EMBEDDED_KEY_FILE`]). It owns
//! nothing but its listeners: killing and restarting it touches neither PostgreSQL, the store,
//! nor the workers, and several can run side by side on one store. It never opens the embedded
//! store's directory (only the `up` serving it does, under its lock).

use crate::layout::DataDirLock;
use crate::platform::{
    apply_control_env, apply_webhook_env, check_external_store, embedded_key, load_toml,
    webhook_keys, PlatformInfo, EMBEDDED_KEY_FILE, PLATFORM_FILE, WEBHOOK_KEYS_FILE,
};
use anyhow::{bail, Context, Result};
use mpegflow_control::{AppState, ControlConfig};
use mpegflow_objstore::probe;
use mpegflow_objstore::{Presigner, S3Config};
use mpegflow_store::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Defaults, then a TOML file (the one `up` reads does: keys of `up`'s alone are ignored), then
/// `DATABASE_URL`, `MPEGFLOW_API_ADDR`, `MPEGFLOW_GRPC_ADDR` and `MPEGFLOW_S3_*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlOnlyConfig {
    pub database_url: Option<String>,
    /// Defaults to a port beside `up`'s, so both run on one machine as they come.
    pub api_addr: String,
    pub grpc_addr: String,
    pub s3: Option<S3Config>,
    pub control: ControlConfig,
    /// Attach to the platform `mpegflow up` serves from this data directory (instead of
    /// `database_url` and `s3`).
    pub join: Option<PathBuf>,
    /// The keys sealing webhook signing secrets (`--join`: the data directory's). Without
    /// them the webhook API answers 503.
    pub webhook_keys_file: Option<PathBuf>,
}

impl Default for ControlOnlyConfig {
    fn default() -> Self {
        ControlOnlyConfig {
            database_url: None,
            api_addr: "127.0.0.1:8081".into(),
            grpc_addr: "127.0.0.1:7071".into(),
            s3: None,
            control: ControlConfig::default(),
            join: None,
            webhook_keys_file: None,
        }
    }
}

impl ControlOnlyConfig {
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut cfg: ControlOnlyConfig = load_toml(file)?;
        apply_control_env(
            &mut cfg.database_url,
            &mut cfg.api_addr,
            &mut cfg.grpc_addr,
            &mut cfg.s3,
        )?;
        if let Some(v) = std::env::var_os("MPEGFLOW_WEBHOOK_KEYS_FILE").filter(|v| !v.is_empty()) {
            cfg.webhook_keys_file = Some(v.into());
        }
        apply_webhook_env(&mut cfg.control)?;
        Ok(cfg)
    }
}

/// The control plane's bound listeners.
pub struct Listeners {
    pub api: TcpListener,
    pub grpc: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &ControlOnlyConfig) -> Result<Listeners> {
        let api = TcpListener::bind(&cfg.api_addr)
            .await
            .with_context(|| format!("binding the API to {} (MPEGFLOW_API_ADDR)", cfg.api_addr))?;
        let grpc = TcpListener::bind(&cfg.grpc_addr).await.with_context(|| {
            format!(
                "binding the coordinator to {} (MPEGFLOW_GRPC_ADDR)",
                cfg.grpc_addr
            )
        })?;
        Ok(Listeners { api, grpc })
    }

    pub fn api_url(&self) -> Result<String> {
        Ok(format!("http://{}", self.api.local_addr()?))
    }

    pub fn coordinator_url(&self) -> Result<String> {
        Ok(format!("http://{}", self.grpc.local_addr()?))
    }
}

/// The database and store a control plane serves.
struct Attachment {
    database_url: String,
    s3: S3Config,
    /// The data directory joined, if any (for messages).
    joined: Option<PathBuf>,
}

/// Reads what `up` published in `data_dir`, after checking an `up` holds it.
fn read_platform(data_dir: &Path) -> Result<Attachment> {
    let not_running = || {
        format!(
            "no `mpegflow up` is running with the data directory {}: start it first (or give \
             DATABASE_URL and MPEGFLOW_S3_* instead of --join)",
            data_dir.display()
        )
    };
    if !data_dir.is_dir() {
        bail!("{} (it is not a directory)", not_running());
    }
    let Some(holder) = DataDirLock::held_by(data_dir)? else {
        bail!(not_running());
    };
    let path = data_dir.join(PLATFORM_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (the `mpegflow up` running with the data directory {} has not \
             published its platform yet, or is older than `mpegflow control --join`)",
            path.display(),
            data_dir.display()
        )
    })?;
    let info: PlatformInfo = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a platform file", path.display()))?;
    // A file an earlier, crashed run left (its database may have been on another port, which
    // anyone may listen on now) is not the running platform's: never connect to what it names.
    if info.pid != holder {
        bail!(
            "{} was written by an earlier run (pid {}), not by the `mpegflow up` running now              (pid {holder}), which has not published its platform yet: try again in a moment",
            path.display(),
            info.pid
        );
    }
    let Some(store) = info.embedded_store else {
        bail!(
            "the platform running with the data directory {} uses an external object store, \
             whose key it does not write down: give its MPEGFLOW_S3_* settings and DATABASE_URL \
             instead of --join",
            data_dir.display()
        );
    };
    let key = embedded_key(&data_dir.join(EMBEDDED_KEY_FILE), false)?;
    Ok(Attachment {
        database_url: info.database_url,
        s3: S3Config {
            endpoint: store.endpoint,
            region: store.region,
            bucket: store.bucket,
            path_style: true,
            access_key: key.access_key,
            secret_key: key.secret_key,
        },
        joined: Some(data_dir.to_owned()),
    })
}

fn attachment(cfg: &ControlOnlyConfig) -> Result<Attachment> {
    if let Some(dir) = &cfg.join {
        if cfg.database_url.is_some() || cfg.s3.is_some() {
            bail!(
                "--join takes the database and the object store from the running platform: \
                 give either --join or DATABASE_URL and MPEGFLOW_S3_*, not both"
            );
        }
        return read_platform(&std::path::absolute(dir)?);
    }
    let database_url = cfg
        .database_url
        .clone()
        .context("give DATABASE_URL (or database_url in the config file), or --join DATA_DIR")?;
    let s3 = cfg.s3.clone().context(
        "give the object store's MPEGFLOW_S3_ENDPOINT, MPEGFLOW_S3_BUCKET, \
         MPEGFLOW_S3_ACCESS_KEY and MPEGFLOW_S3_SECRET_KEY (or [s3] in the config file), or \
         --join DATA_DIR",
    )?;
    Ok(Attachment {
        database_url,
        s3,
        joined: None,
    })
}

/// Checks the joined platform's store as `up` checked it at its start.
async fn check_joined_store(presigner: &Presigner, s3: &S3Config, dir: &Path) -> Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .no_proxy()
        .build()?;
    let nonce = format!("{:016x}", rand::random::<u64>());
    match probe::probe(presigner, &http, &nonce).await {
        Ok(report) => {
            for (key, why) in report.undeleted {
                tracing::warn!(key, "could not delete the start-up probe's object: {why}");
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "checking the object store of the platform running with the data directory {} \
                 at {}",
                dir.display(),
                s3.endpoint
            )
        }),
    }
}

/// Connects to the database, checks the object store, then serves the control plane on
/// `listeners` until `shutdown`.
pub async fn run(
    cfg: ControlOnlyConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let at = attachment(&cfg)?;
    let presigner = Presigner::new(&at.s3)
        .with_context(|| "MPEGFLOW_S3_ENDPOINT is not a usable URL".to_owned())?;
    match &at.joined {
        Some(dir) => check_joined_store(&presigner, &at.s3, dir).await?,
        None => check_external_store(&presigner, &at.s3).await?,
    }
    let store = Store::connect(&at.database_url, 32)
        .await
        .context("connecting to PostgreSQL")?;
    let mut state = AppState::new(store.clone(), presigner, cfg.control.clone());
    let keys_file = cfg
        .webhook_keys_file
        .clone()
        .or_else(|| at.joined.as_ref().map(|d| d.join(WEBHOOK_KEYS_FILE)));
    match keys_file {
        Some(path) => state = state.with_webhook_keys(webhook_keys(&path, false)?),
        None => tracing::warn!(
            "no webhook key file (MPEGFLOW_WEBHOOK_KEYS_FILE): the webhook API answers 503"
        ),
    }
    crate::logging::status(format_args!(
        "control plane serving: API {}  coordinator {}  object store {}",
        listeners.api_url()?,
        listeners.coordinator_url()?,
        at.s3.endpoint
    ));
    let served = mpegflow_control::run(state, listeners.api, listeners.grpc, shutdown).await;
    store.pool().close().await;
    served.context("the control plane stopped")
}
