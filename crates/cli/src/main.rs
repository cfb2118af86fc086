//! `mpegflow`: run the platform (`up`), run jobs (`run`, `jobs`), administer it (`admin`).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use mpegflow::client::{ApiClient, ApiError};
use mpegflow::platform::{Platform, PlatformConfig};
use mpegflow_api as api;
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("MPEGFLOW_LOG")
        .unwrap_or_else(|_| "warn,mpegflow=info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
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
    let mut cfg = PlatformConfig::load(config.as_deref())?;
    cfg.data_dir = data_dir;
    if let Some(n) = workers {
        cfg.workers = n;
    }
    let platform = Platform::start(cfg).await?;
    let result = serve(&platform, no_sample).await;
    eprintln!("mpegflow: shutting down");
    platform.stop(Duration::from_secs(30)).await;
    result
}

async fn serve(platform: &Platform, no_sample: bool) -> Result<i32> {
    let store = platform.store();
    let (org_id, key) = match store.create_org("demo").await {
        Ok(created) => created,
        Err(mpegflow_store::StoreError::Conflict(_)) => {
            let org = store.org_by_name("demo").await?;
            (org, store.create_api_key(org, "up").await?.1)
        }
        Err(e) => return Err(e.into()),
    };
    let env_file = platform.data_dir.join("demo.env");
    let env = format!(
        "MPEGFLOW_API_URL={}\nMPEGFLOW_API_KEY={}\nMPEGFLOW_COORDINATOR_URL={}\nDATABASE_URL={}\nMPEGFLOW_ORG_ID={org_id}\n",
        platform.api_url,
        key.expose(),
        platform.coordinator_url,
        platform.database_url
    );
    write_private(&env_file, &env)?;
    eprintln!(
        "mpegflow: API {}  coordinator {}  object store {}",
        platform.api_url, platform.coordinator_url, platform.s3_endpoint
    );
    eprintln!(
        "mpegflow: demo org credentials in {} (source it to use `mpegflow run`)",
        env_file.display()
    );
    if !no_sample {
        let client = ApiClient::new(&platform.api_url, key.expose());
        let job = mpegflow::sample::run_sample(&client, &platform.data_dir)
            .await
            .context("sample job")?;
        let out = job.outputs.values().flat_map(|o| &o.files).next();
        eprintln!(
            "mpegflow: sample job {} succeeded: {} ({} bytes, sha256 {}) -> {}",
            job.id,
            out.map_or("", |f| f.path.as_str()),
            out.map_or(0, |f| f.size),
            out.map_or("", |f| f.sha256.as_str()),
            platform.data_dir.join("sample-160p.mp4").display()
        );
    }
    eprintln!("mpegflow: serving; press Ctrl-C to stop");
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(0)
}

fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    Ok(())
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
        let name = if is_dir {
            format!("{name}/")
        } else {
            name.to_owned()
        };
        let alias = api::Alias::parse(alias).map_err(|e| anyhow!("--output {o:?}: {e}"))?;
        let name = api::OutputName::parse(name).map_err(|e| anyhow!("--output {o:?}: {e}"))?;
        if declared_out.insert(alias.clone(), name).is_some() {
            bail!("--output: alias {alias} given twice");
        }
        dests.insert(alias.to_string(), p);
    }
    let mut local_in = BTreeMap::new();
    for i in &inputs {
        let (alias, path) = split_pair(i, "input")?;
        let alias = api::Alias::parse(alias).map_err(|e| anyhow!("--input {i:?}: {e}"))?;
        if declared_out.contains_key(&alias) || local_in.contains_key(&alias) {
            bail!("--input: alias {alias} given twice");
        }
        local_in.insert(alias, PathBuf::from(path));
    }
    let pool = pool
        .map(api::PoolName::parse)
        .transpose()
        .map_err(|e| anyhow!("--pool: {e}"))?;
    let timeout_seconds = timeout
        .map(api::TimeoutSeconds::parse)
        .transpose()
        .map_err(|e| anyhow!("--timeout: {e}"))?;
    // The template is checked before anything is uploaded: a typo costs no upload.
    let file_names = local_in
        .iter()
        .map(|(alias, path)| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("input")
                .to_owned();
            Ok((alias.clone(), api::FileName::parse(name)?))
        })
        .collect::<Result<_>>()?;
    let check = client
        .validate(&api::JobValidateIn {
            inputs: file_names,
            outputs: declared_out.clone(),
            command: command.clone(),
            pool: pool.clone(),
            timeout_seconds,
        })
        .await;
    if let Some(code) = refused(&check, "job refused") {
        return Ok(code);
    }
    check?;
    let mut declared_in = BTreeMap::new();
    for (alias, path) in &local_in {
        eprintln!("uploading {}", path.display());
        let asset = client.upload(path).await?;
        declared_in.insert(alias.clone(), asset.id);
    }
    let submitted = client
        .submit(&api::JobIn {
            inputs: declared_in,
            outputs: declared_out,
            command,
            pool,
            timeout_seconds,
            metadata: None,
        })
        .await;
    if let Some(code) = refused(&submitted, "job refused") {
        return Ok(code);
    }
    let id = submitted?.id;
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
        .wait(id, |j| {
            let p = j.progress.unwrap_or(0.0);
            bar.set_position((p * 1000.0) as u64);
            bar.set_message(j.state.to_string());
        })
        .await?;
    bar.finish_and_clear();
    if job.state == api::JobState::Succeeded {
        for path in client.download_outputs(&job, &dests).await? {
            eprintln!("wrote {}", path.display());
        }
        eprintln!("job {id} succeeded");
        return Ok(0);
    }
    match &job.error {
        Some(err) => {
            eprintln!(
                "job {id} {}: {}: {}",
                job.state,
                err.code,
                err.message.as_deref().unwrap_or("")
            );
            if let Some(tail) = &err.stderr_tail {
                eprintln!("--- ffmpeg stderr (tail) ---\n{tail}");
            }
        }
        None => eprintln!("job {id} {}", job.state),
    }
    Ok(1)
}

/// When `result` is the API's refusal, says so and gives the exit code.
fn refused<T>(result: &Result<T>, what: &str) -> Option<i32> {
    let problem = result.as_ref().err()?.downcast_ref::<ApiError>()?;
    match &problem.0.argument {
        Some(arg) => eprintln!(
            "{what}: {} ({}, argument {arg:?})",
            problem.0.detail, problem.0.code
        ),
        None => eprintln!("{what}: {} ({})", problem.0.detail, problem.0.code),
    }
    Some(1)
}

async fn jobs(cmd: JobsCmd) -> Result<i32> {
    let client = env_client()?;
    let print = |j: &api::Job| println!("{}", serde_json::to_string_pretty(j).unwrap_or_default());
    let parse_id =
        |id: &str| uuid::Uuid::parse_str(id).map_err(|_| anyhow!("{id:?} is not a job id"));
    let result = match cmd {
        JobsCmd::List { state, limit } => {
            let state = state
                .map(|s| serde_json::from_value::<api::JobState>(Value::String(s)))
                .transpose()
                .map_err(|e| anyhow!("--state: {e}"))?;
            client
                .list_jobs(&api::ListJobsQuery {
                    state,
                    cursor: None,
                    limit: Some(limit),
                })
                .await
                .map(|page| {
                    for j in &page.jobs {
                        println!(
                            "{}  {:<9}  {:>5.1}%  {}",
                            j.id,
                            j.state,
                            j.progress.unwrap_or(0.0) * 100.0,
                            j.created_at
                        );
                    }
                })
        }
        JobsCmd::Show { id } => client.job(parse_id(&id)?).await.map(|j| print(&j)),
        JobsCmd::Cancel { id } => client.cancel(parse_id(&id)?).await.map(|j| print(&j)),
    };
    if let Some(code) = refused(&result, "error") {
        return Ok(code);
    }
    result.map(|()| 0)
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
