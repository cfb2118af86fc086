//! `mpegflow`: run the platform (`up`), run jobs (`run`, `jobs`), administer it (`admin`).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use mpegflow::client::{ApiClient, Problem};
use mpegflow::platform::{Platform, PlatformConfig};
use mpegflow_store::Store;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mpegflow",
    version,
    about = "Multi-tenant FFmpeg jobs on credential-less workers"
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
    /// Upload inputs, run one FFmpeg command on the platform, download the outputs.
    Run {
        /// ALIAS=PATH of a local input file (repeatable).
        #[arg(long = "input", value_name = "ALIAS=PATH", required = true)]
        inputs: Vec<String>,
        /// ALIAS=PATH where an output goes; a trailing / declares a directory output.
        #[arg(long = "output", value_name = "ALIAS=PATH", required = true)]
        outputs: Vec<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        timeout: Option<u32>,
        /// The FFmpeg arguments as one string, with {{alias}} placeholders.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List, show or cancel jobs.
    Jobs {
        #[command(subcommand)]
        cmd: JobsCmd,
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
enum JobsCmd {
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    Show {
        id: String,
    },
    Cancel {
        id: String,
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
    match cli.cmd {
        Cmd::Up {
            data_dir,
            config,
            workers,
            no_sample,
        } => up(data_dir, config, workers, no_sample).await,
        Cmd::Run {
            inputs,
            outputs,
            pool,
            timeout,
            command,
        } => run(inputs, outputs, pool, timeout, command).await,
        Cmd::Jobs { cmd } => jobs(cmd).await,
        Cmd::Admin { data_dir, cmd } => admin(data_dir, cmd).await,
    }
}

fn env_client() -> Result<ApiClient> {
    let url = std::env::var("MPEGFLOW_API_URL")
        .context("MPEGFLOW_API_URL is not set (source DIR/demo.env)")?;
    let key = std::env::var("MPEGFLOW_API_KEY")
        .context("MPEGFLOW_API_KEY is not set (source DIR/demo.env)")?;
    Ok(ApiClient::new(&url, &key))
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
        let out = &job["outputs"]["out"];
        mpegflow::logging::status(format_args!(
            "sample job {} succeeded: {} ({} bytes, sha256 {}) -> {}",
            job["id"].as_str().unwrap_or_default(),
            out["filename"].as_str().unwrap_or_default(),
            out["size"],
            out["sha256"].as_str().unwrap_or_default(),
            platform.data_dir.join("sample-160p.mp4").display()
        ));
    }
    mpegflow::logging::status(format_args!("serving; press Ctrl-C to stop"));
    stop_requested.await;
    Ok(0)
}

fn split_pair(s: &str, what: &str) -> Result<(String, String)> {
    let (a, p) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--{what} {s:?} must be ALIAS=PATH"))?;
    if a.is_empty() || p.is_empty() {
        bail!("--{what} {s:?} must be ALIAS=PATH");
    }
    Ok((a.to_owned(), p.to_owned()))
}

async fn run(
    inputs: Vec<String>,
    outputs: Vec<String>,
    pool: Option<String>,
    timeout: Option<u32>,
    command: Vec<String>,
) -> Result<i32> {
    let client = env_client()?;
    let command = if command.len() == 1 {
        command[0].clone()
    } else {
        shell_words::join(&command)
    };
    let mut declared_out = BTreeMap::new();
    let mut dests = BTreeMap::new();
    for o in &outputs {
        let (alias, path) = split_pair(o, "output")?;
        let is_dir = path.ends_with('/');
        let p = PathBuf::from(&path);
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("--output {o:?}: no file name"))?;
        declared_out.insert(
            alias.clone(),
            if is_dir {
                format!("{name}/")
            } else {
                name.to_owned()
            },
        );
        dests.insert(alias, p);
    }
    let mut declared_in = BTreeMap::new();
    for i in &inputs {
        let (alias, path) = split_pair(i, "input")?;
        eprintln!("uploading {path}");
        let asset = client.upload(Path::new(&path)).await?;
        declared_in.insert(alias, asset["id"].as_str().unwrap_or_default().to_owned());
    }
    let mut extra = json!({});
    if let Some(p) = pool {
        extra["pool"] = json!(p);
    }
    if let Some(t) = timeout {
        extra["timeout_seconds"] = json!(t);
    }
    let job = match client
        .submit(&declared_in, &declared_out, &command, extra)
        .await
    {
        Ok(j) => j,
        Err(e) => match e.downcast_ref::<Problem>() {
            Some(p) => {
                eprintln!("job refused: {} ({})", p.detail, p.code);
                return Ok(1);
            }
            None => return Err(e),
        },
    };
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    eprintln!("job {id} submitted");
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:40}] {percent:>3}% {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let job = client
        .wait(&id, |j| {
            let p = j["progress"].as_f64().unwrap_or(0.0);
            bar.set_position((p * 1000.0) as u64);
            bar.set_message(j["state"].as_str().unwrap_or("").to_owned());
        })
        .await?;
    bar.finish_and_clear();
    match job["state"].as_str() {
        Some("succeeded") => {
            for path in client.download_outputs(&job, &dests).await? {
                eprintln!("wrote {}", path.display());
            }
            eprintln!("job {id} succeeded");
            Ok(0)
        }
        state => {
            let err = &job["error"];
            eprintln!(
                "job {id} {}: {}: {}",
                state.unwrap_or("?"),
                err["code"].as_str().unwrap_or("-"),
                err["message"].as_str().unwrap_or("")
            );
            if let Some(tail) = err["stderr_tail"].as_str() {
                eprintln!("--- ffmpeg stderr (tail) ---\n{tail}");
            }
            Ok(1)
        }
    }
}

async fn jobs(cmd: JobsCmd) -> Result<i32> {
    let client = env_client()?;
    let print = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    let result = match cmd {
        JobsCmd::List { state, limit } => {
            let mut path = format!("/v1/jobs?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            client.ok(reqwest::Method::GET, &path, None).await.map(|v| {
                for j in v["jobs"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<9}  {:>5.1}%  {}",
                        j["id"].as_str().unwrap_or_default(),
                        j["state"].as_str().unwrap_or_default(),
                        j["progress"].as_f64().unwrap_or(0.0) * 100.0,
                        j["created_at"].as_str().unwrap_or_default()
                    );
                }
            })
        }
        JobsCmd::Show { id } => client.job(&id).await.map(|v| print(&v)),
        JobsCmd::Cancel { id } => client
            .ok(
                reqwest::Method::POST,
                &format!("/v1/jobs/{id}/cancel"),
                None,
            )
            .await
            .map(|v| print(&v)),
    };
    match result {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<Problem>() {
            Some(p) => {
                eprintln!("error: {} ({})", p.detail, p.code);
                Ok(1)
            }
            None => Err(e),
        },
    }
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

async fn admin(data_dir: Option<PathBuf>, cmd: AdminCmd) -> Result<i32> {
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
