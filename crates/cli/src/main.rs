//! `mpegflow`: run the platform (`up`) or its control plane alone (`control`), run jobs (`run`, `jobs`), administer it (`admin`).

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use mpegflow::client::ApiClient;
use mpegflow::platform::{Platform, PlatformConfig};
use mpegflow::tenant;
use mpegflow_store::Store;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mpegflow",
    version,
    about = "Multi-tenant FFmpeg jobs on credential-less workers",
    after_help = tenant::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the whole platform on this machine and run a sample job; serve until Ctrl-C.
    Up {
        #[arg(long, default_value = "mpegflow-data")]
        data_dir: PathBuf,
        /// TOML file with platform settings (overridden by MPEGFLOW_* variables).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Worker processes to start (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Do not run the sample job.
        #[arg(long)]
        no_sample: bool,
    },
    /// Serve only the control plane (REST API, gRPC coordinator, reaper) against a database and
    /// object store that run already: DATABASE_URL and MPEGFLOW_S3_*, or --join the platform a
    /// running `mpegflow up` serves. Killing and restarting it touches neither PostgreSQL, the
    /// store nor the workers. Serves until Ctrl-C.
    Control {
        /// TOML file with settings (overridden by MPEGFLOW_* variables); `up`'s file does.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Use the database and object store of the `mpegflow up` running with this data
        /// directory.
        #[arg(long, value_name = "DATA_DIR")]
        join: Option<PathBuf>,
    },
    /// Check an FFmpeg command, upload its inputs, run it on the platform and download its
    /// outputs. Ctrl-C cancels the job (a second Ctrl-C leaves it running).
    Run {
        #[command(flatten)]
        args: tenant::run::RunArgs,
        #[command(flatten)]
        conn: tenant::Connection,
    },
    /// List, show, wait for, download or cancel jobs.
    Jobs {
        #[command(subcommand)]
        cmd: tenant::jobs::JobsCmd,
        #[command(flatten)]
        conn: tenant::Connection,
    },
    /// List or delete your uploads and outputs.
    Assets {
        #[command(subcommand)]
        cmd: tenant::jobs::AssetsCmd,
        #[command(flatten)]
        conn: tenant::Connection,
    },
    /// The worker pools you may submit to.
    Pools {
        #[command(subcommand)]
        cmd: tenant::jobs::PoolsCmd,
        #[command(flatten)]
        conn: tenant::Connection,
    },
    /// Webhook endpoints, their deliveries, replay and recover; `verify` checks a delivery's
    /// signature as a receiver should.
    #[command(alias = "webhook")]
    Webhooks {
        #[command(subcommand)]
        cmd: tenant::webhooks::WebhooksCmd,
        #[command(flatten)]
        conn: tenant::Connection,
    },
    /// Check an API URL and key, and save them for later commands (in
    /// $XDG_CONFIG_HOME/mpegflow/config.toml, mode 0600). The key is read from
    /// MPEGFLOW_API_KEY, --api-key or stdin.
    #[command(after_help = tenant::EXIT_CODES_HELP)]
    Login {
        #[command(flatten)]
        conn: tenant::Connection,
    },
    /// Print a shell completion script, e.g. `mpegflow completions bash > /etc/bash_completion.d/mpegflow`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Manage orgs, API keys, pools and worker tokens (needs the database).
    Admin {
        /// Read DATABASE_URL from DIR/demo.env (as written by `up`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        cmd: AdminCmd,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    Org {
        #[command(subcommand)]
        cmd: OrgCmd,
    },
    ApiKey {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
    },
    WorkerToken {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// The keys sealing webhook signing secrets (`DIR/webhook-keys` with --data-dir, else
    /// MPEGFLOW_WEBHOOK_KEYS_FILE). To rotate: `rotate` (a new primary key first in the file),
    /// restart the platform's processes, `reseal`, then remove the old line and restart again.
    WebhookKeys {
        #[command(subcommand)]
        cmd: WebhookKeysCmd,
    },
}

#[derive(Subcommand)]
enum WebhookKeysCmd {
    /// Put a fresh key first in the key file (it seals from the next start on; the others
    /// keep opening).
    Rotate,
    /// Re-seal every stored signing secret with the key file's first key, so older keys can be
    /// removed; prints {"resealed","primary"}.
    Reseal,
}

#[derive(Subcommand)]
enum OrgCmd {
    /// Create an org; prints {"org_id","api_key"}.
    Create { name: String },
}

#[derive(Subcommand)]
enum KeyCmd {
    Create {
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "cli")]
        label: String,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum PoolCmd {
    /// Create a pool, shared by all orgs unless --org dedicates it.
    Create {
        name: String,
        #[arg(long)]
        org: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a worker token bound to a pool; prints {"id","token","pool","max_workers"}.
    Create {
        #[arg(long, default_value = "default")]
        pool: String,
        #[arg(long, default_value = "cli")]
        label: String,
        /// Most workers registered with this token at once (a registration lapses seconds
        /// after its worker stops calling, so a rolling update's surge needs a little headroom).
        #[arg(long, default_value_t = mpegflow_store::DEFAULT_MAX_WORKERS,
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        max_workers: u32,
        /// Most leases per minute (default: max-workers times the control plane's per-worker rate).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        leases_per_minute: Option<u32>,
    },
    Revoke {
        id: String,
    },
    /// Lift a suspension (tokens are suspended when too many leases end without a finished
    /// encode); the strikes that led to it are forgiven.
    Unsuspend {
        id: String,
    },
}

fn main() {
    if let Err(e) = mpegflow::logging::init() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Up { .. } | Cmd::Control { .. }) {
        // A client command piped into `head` ends quietly when the pipe closes, as other CLI
        // tools do, instead of panicking on its next print. (The servers keep ignoring it.)
        // SAFETY: setting a signal's disposition to its default, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            mpegflow::logging::final_error(&e);
            2
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let tenant_command = async {
        match &cli.cmd {
            Cmd::Run { args, conn } => Some(tenant::run::run(conn, args).await),
            Cmd::Jobs { cmd, conn } => Some(tenant::jobs::jobs(conn, cmd).await),
            Cmd::Assets { cmd, conn } => Some(tenant::jobs::assets(conn, cmd).await),
            Cmd::Pools { cmd, conn } => Some(tenant::jobs::pools(conn, cmd).await),
            Cmd::Webhooks { cmd, conn } => Some(tenant::webhooks::webhooks(conn, cmd).await),
            Cmd::Login { conn } => Some(tenant::login(conn).await),
            _ => None,
        }
    };
    // The tenant's commands tell their errors with documented exit codes.
    if let Some(result) = tenant_command.await {
        return Ok(match result {
            Ok(exit) => exit as i32,
            Err(e) => tenant::report(&e) as i32,
        });
    }
    match cli.cmd {
        Cmd::Up {
            data_dir,
            config,
            workers,
            no_sample,
        } => up(data_dir, config, workers, no_sample).await,
        Cmd::Control { config, join } => control(config, join).await,
        Cmd::Admin { data_dir, cmd } => admin(data_dir, cmd).await,
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "mpegflow",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Cmd::Run { .. }
        | Cmd::Jobs { .. }
        | Cmd::Assets { .. }
        | Cmd::Pools { .. }
        | Cmd::Webhooks { .. }
        | Cmd::Login { .. } => {
            unreachable!("handled above")
        }
    }
}

async fn up(
    data_dir: PathBuf,
    config: Option<PathBuf>,
    workers: Option<usize>,
    no_sample: bool,
) -> Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    // Listening from the start: a Ctrl-C or SIGTERM during the start or the sample job stops
    // what was started instead of killing this process and orphaning PostgreSQL and workers.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let stop_requested = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    let mut cfg = PlatformConfig::load(config.as_deref())?;
    cfg.data_dir = data_dir;
    if let Some(n) = workers {
        cfg.workers = n;
    }
    // The start itself is not abandoned half-way (it stops what it started if it fails); a
    // signal that arrives meanwhile is acted on right after.
    let platform = Platform::start(cfg).await?;
    let result = serve(&platform, no_sample, stop_requested).await;
    mpegflow::logging::status(format_args!("shutting down"));
    platform.stop(Duration::from_secs(30)).await;
    result
}

async fn serve(
    platform: &Platform,
    no_sample: bool,
    stop_requested: impl std::future::Future<Output = ()>,
) -> Result<i32> {
    let mut stop_requested = std::pin::pin!(stop_requested);
    let store = platform.store();
    let (org_id, key) = mpegflow::demo::credentials(store, &platform.data_dir).await?;
    let env_file = platform.data_dir.join("demo.env");
    let env = format!(
        "MPEGFLOW_API_URL={}\nMPEGFLOW_API_KEY={key}\nMPEGFLOW_COORDINATOR_URL={}\nDATABASE_URL={}\nMPEGFLOW_ORG_ID={org_id}\n",
        platform.api_url,
        platform.coordinator_url,
        platform.database_url
    );
    mpegflow::demo::write_private(&env_file, &env)?;
    mpegflow::logging::status(format_args!(
        "API {}  coordinator {}  object store {}",
        platform.api_url, platform.coordinator_url, platform.s3_endpoint
    ));
    mpegflow::logging::status(format_args!(
        "demo org credentials in {} (source it to use `mpegflow run`)",
        env_file.display()
    ));
    if !no_sample {
        let client = ApiClient::new(&platform.api_url, &key);
        let sample = mpegflow::sample::run_sample(&client, &platform.data_dir);
        let job = tokio::select! {
            job = sample => job.context("sample job")?,
            () = stop_requested.as_mut() => return Ok(130),
        };
        let out = job.outputs.values().flat_map(|o| &o.files).next();
        mpegflow::logging::status(format_args!(
            "sample job {} succeeded: {} ({} bytes, sha256 {}) -> {}",
            job.id,
            out.map_or("", |f| f.path.as_str()),
            out.map_or(0, |f| f.size),
            out.map_or("", |f| f.sha256.as_str()),
            platform.data_dir.join("sample-160p.mp4").display()
        ));
    }
    mpegflow::logging::status(format_args!("serving; press Ctrl-C to stop"));
    stop_requested.await;
    Ok(0)
}

async fn control(config: Option<PathBuf>, join: Option<PathBuf>) -> Result<i32> {
    use mpegflow::control_only::{self, ControlOnlyConfig, Listeners};
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut cfg = ControlOnlyConfig::load(config.as_deref())?;
    if join.is_some() {
        cfg.join = join;
    }
    let listeners = Listeners::bind(&cfg).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        mpegflow::logging::status(format_args!("shutting down"));
        stop.cancel();
    });
    control_only::run(cfg, listeners, shutdown).await?;
    Ok(0)
}

fn database_url(data_dir: Option<&Path>) -> Result<String> {
    if let Some(dir) = data_dir {
        let env = std::fs::read_to_string(dir.join("demo.env")).with_context(|| {
            format!(
                "reading {}/demo.env (is `mpegflow up` running?)",
                dir.display()
            )
        })?;
        return env
            .lines()
            .find_map(|l| l.strip_prefix("DATABASE_URL="))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no DATABASE_URL in demo.env"));
    }
    std::env::var("DATABASE_URL").context("give --data-dir or set DATABASE_URL")
}

fn webhook_keys_file(data_dir: Option<&Path>) -> Result<PathBuf> {
    match data_dir {
        Some(dir) => Ok(dir.join(mpegflow::platform::WEBHOOK_KEYS_FILE)),
        None => std::env::var_os("MPEGFLOW_WEBHOOK_KEYS_FILE")
            .map(PathBuf::from)
            .context("give --data-dir or set MPEGFLOW_WEBHOOK_KEYS_FILE"),
    }
}

async fn admin(data_dir: Option<PathBuf>, cmd: AdminCmd) -> Result<i32> {
    if let AdminCmd::WebhookKeys {
        cmd: WebhookKeysCmd::Rotate,
    } = cmd
    {
        let path = webhook_keys_file(data_dir.as_deref())?;
        let id = mpegflow::platform::rotate_webhook_keys(&path)?;
        println!("{}", json!({ "primary": id, "file": path }));
        return Ok(0);
    }
    let store = Store::connect(&database_url(data_dir.as_deref())?, 2).await?;
    let parse_id = |s: &str| uuid::Uuid::parse_str(s).map_err(|_| anyhow!("{s:?} is not an id"));
    let out = match cmd {
        AdminCmd::Org {
            cmd: OrgCmd::Create { name },
        } => {
            let (org_id, key) = store.create_org(&name).await?;
            json!({ "org_id": org_id, "api_key": key.expose() })
        }
        AdminCmd::ApiKey {
            cmd: KeyCmd::Create { org, label },
        } => {
            let org_id = store
                .resolve_org(&org)
                .await
                .map_err(|_| anyhow!("org {org:?} not found"))?;
            let (id, key) = store.create_api_key(org_id, &label).await?;
            json!({ "id": id, "org_id": org_id, "api_key": key.expose() })
        }
        AdminCmd::ApiKey {
            cmd: KeyCmd::Revoke { id },
        } => {
            store
                .revoke_api_key(parse_id(&id)?)
                .await
                .map_err(|_| anyhow!("no live API key {id}"))?;
            json!({ "revoked": id })
        }
        AdminCmd::Pool {
            cmd: PoolCmd::Create { name, org },
        } => {
            let org_id = match org {
                Some(o) => Some(
                    store
                        .resolve_org(&o)
                        .await
                        .map_err(|_| anyhow!("org {o:?} not found"))?,
                ),
                None => None,
            };
            mpegflow_domain::names::check_pool_name(&name)?;
            let pool = store.create_pool(&name, org_id).await?;
            json!({ "id": pool.id, "name": pool.name, "org_id": pool.org_id })
        }
        AdminCmd::WorkerToken {
            cmd:
                TokenCmd::Create {
                    pool,
                    label,
                    max_workers,
                    leases_per_minute,
                },
        } => {
            let limits = mpegflow_store::TokenLimits {
                max_workers,
                leases_per_minute,
            };
            let (id, token) = store
                .create_worker_token(&pool, &label, limits)
                .await
                .map_err(|e| match e {
                    mpegflow_store::StoreError::NotFound => anyhow!("pool {pool:?} not found"),
                    e => e.into(),
                })?;
            json!({ "id": id, "token": token.expose(), "pool": pool, "max_workers": max_workers,
                    "leases_per_minute": leases_per_minute })
        }
        AdminCmd::WorkerToken {
            cmd: TokenCmd::Unsuspend { id },
        } => {
            store
                .unsuspend_worker_token(parse_id(&id)?)
                .await
                .map_err(|_| anyhow!("no suspended live worker token {id}"))?;
            json!({ "unsuspended": id })
        }
        AdminCmd::WebhookKeys {
            cmd: WebhookKeysCmd::Reseal,
        } => {
            let path = webhook_keys_file(data_dir.as_deref())?;
            let keys = mpegflow_dispatcher::read_keyring(&path)?;
            let resealed = mpegflow::platform::reseal_webhook_secrets(&store, &keys).await?;
            json!({ "resealed": resealed, "primary": keys.primary_id() })
        }
        AdminCmd::WebhookKeys {
            cmd: WebhookKeysCmd::Rotate,
        } => unreachable!("handled above"),
        AdminCmd::WorkerToken {
            cmd: TokenCmd::Revoke { id },
        } => {
            store
                .revoke_worker_token(parse_id(&id)?)
                .await
                .map_err(|_| anyhow!("no live worker token {id}"))?;
            json!({ "revoked": id })
        }
    };
    println!("{out}");
    Ok(0)
}
