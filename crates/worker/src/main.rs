//! `mpegflow-worker`: a credential-less FFmpeg worker.

use anyhow::{bail, Context};
use clap::Parser;
use mpegflow_worker::{run, WorkerConfig};
use std::io::Read;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Runs FFmpeg jobs handed out by an MpegFlow coordinator. Holds no credentials but its worker token."
)]
struct Args {
    /// Coordinator gRPC URL, e.g. http://127.0.0.1:7070
    #[arg(long, env = "MPEGFLOW_COORDINATOR_URL")]
    coordinator: String,
    /// File holding the worker token ("-" reads it from standard input). Otherwise
    /// MPEGFLOW_WORKER_TOKEN is used.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Directory for job directories.
    #[arg(long, env = "MPEGFLOW_WORK_DIR")]
    work_dir: Option<PathBuf>,
    #[arg(long, default_value = "ffmpeg")]
    ffmpeg: PathBuf,
    #[arg(long, default_value = "ffprobe")]
    ffprobe: PathBuf,
    /// Identifies the image/binary that runs, for provenance.
    #[arg(long, env = "MPEGFLOW_IMAGE_HASH", default_value = "")]
    image_hash: String,
    /// Longest input accepted, in bytes.
    #[arg(long, default_value_t = 50 * 1024 * 1024 * 1024)]
    max_input_bytes: u64,
    #[arg(long, default_value_t = 20)]
    poll_seconds: u32,
    /// Address-space limit of each FFmpeg/ffprobe process, in MiB.
    #[arg(long, default_value_t = 4096)]
    memory_limit_mb: u64,
    /// Where the kernel counts OOM kills (an `oom_kill N` line): /proc/vmstat for the host, or
    /// the worker's cgroup `memory.events` in a container. A SIGKILL of FFmpeg is the
    /// platform's fault only when this count rose while it ran; otherwise it is the job's own.
    #[arg(long, default_value = "/proc/vmstat", value_name = "FILE")]
    oom_events: PathBuf,
    /// Run FFmpeg WITHOUT the jail. Never in production: a crafted input then reaches whatever
    /// this worker can.
    #[arg(long)]
    insecure_no_jail: bool,
    /// Build the jail without a layer (landlock or seccomp). Exists to show that the start-up
    /// self-test refuses such a jail.
    #[arg(long, value_name = "LAYER")]
    jail_disable_layer: Vec<String>,
    /// Use at most this Landlock ABI even where the kernel offers more, to run exactly as on an
    /// older kernel (e.g. 2 for Debian 12's 6.1). The other layers do not depend on it.
    #[arg(long, env = "MPEGFLOW_LANDLOCK_ABI_MAX", value_name = "N")]
    landlock_abi_max: Option<i32>,
    /// As root: the first of the reserved ids. Worker processes take uids from the
    /// `--worker-uids` ids starting here, jobs from the `--job-uids` ids after those. The
    /// default sits above systemd's container ranges and below 2^31; start-up refuses a range
    /// that overlaps /etc/subuid, /etc/subgid or any user or group of the host. (In a user
    /// namespace, e.g. a Kubernetes pod with `hostUsers: false`, both ranges must lie inside
    /// the namespace's mapped ids.)
    #[arg(long, default_value_t = 0x7000_0000)]
    uid_base: u32,
    /// As root: how many worker uids to use (one per live worker process on the host).
    #[arg(long, default_value_t = 65_536)]
    worker_uids: u32,
    /// As root: how many job uids to use (each job gets a fresh one while it runs).
    #[arg(long, default_value_t = 65_536)]
    job_uids: u32,
    /// As root: where the host's id leases live (root-only; shared by every worker).
    #[arg(long, default_value = "/run/mpegflow")]
    id_lock_dir: PathBuf,
    /// As root: the largest out/ file system of a job, in MiB, whatever its output limit (it is
    /// a tmpfs: memory or swap).
    #[arg(long, default_value_t = 10 * 1024)]
    max_output_fs_mb: u64,
}

/// As root: leases this worker's own uid, forks the privileged spawn helper (which keeps root
/// and the lease), then drops this process to that uid with no capabilities and no way back.
/// Runs while the process is still single-threaded.
fn drop_root(
    args: &Args,
    work_dir: &std::path::Path,
    jail: Option<&mpegflow_jail::Jail>,
) -> anyhow::Result<Option<mpegflow_jail::spawner::SpawnerClient>> {
    use mpegflow_jail::ids::{IdAllocator, IdRange};
    use std::os::unix::fs::PermissionsExt;
    // Job directories start private to this worker; the helper opens them to the job's group.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let workers = IdRange {
        base: args.uid_base,
        count: args.worker_uids,
    };
    let jobs = IdRange {
        base: args
            .uid_base
            .checked_add(args.worker_uids)
            .context("--uid-base is too large")?,
        count: args.job_uids,
    };
    for range in [workers, jobs] {
        range.check_against_host().map_err(anyhow::Error::msg)?;
    }
    let lease = IdAllocator::open(&args.id_lock_dir, "worker", workers)
        .and_then(|a| a.allocate())
        .context("leasing a worker uid")?;
    let uid = lease.id;
    // A fresh work directory of this worker's own: others may pass (job uids must), not list.
    // Root changes it through a descriptor opened without following a link, and only if root
    // (or this very uid) already owns it: its parent may be shared (the default is under /tmp),
    // and a link or directory planted there by another uid must not be given away or adopted.
    std::fs::create_dir_all(work_dir)?;
    let dir = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(work_dir)
            .with_context(|| {
                format!(
                    "opening the work directory {} (it must be a directory, not a link)",
                    work_dir.display()
                )
            })?
    };
    let owner = std::os::unix::fs::MetadataExt::uid(&dir.metadata()?);
    if owner != 0 && owner != uid {
        bail!(
            "the work directory {} belongs to uid {owner}; as root it must be root's",
            work_dir.display()
        );
    }
    let by_fd = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ));
    if std::fs::read_dir(&by_fd)?.next().is_some() {
        bail!(
            "the work directory {} must be empty (it is given to this worker's own uid)",
            work_dir.display()
        );
    }
    std::os::unix::fs::fchown(&dir, Some(uid), Some(uid))?;
    dir.set_permissions(std::fs::Permissions::from_mode(0o711))?;
    let spawner = match jail {
        Some(jail) => {
            let resolve = |p: &PathBuf| {
                mpegflow_worker::ffmpeg::resolve(p)
                    .and_then(|p| std::fs::canonicalize(p).ok())
                    .with_context(|| format!("{} not found", p.display()))
            };
            let cfg = mpegflow_jail::spawner::SpawnerConfig {
                work_dir: std::fs::canonicalize(work_dir)?,
                worker: (uid, uid),
                ffmpeg: resolve(&args.ffmpeg)?,
                ffprobe: resolve(&args.ffprobe)?,
                probe: mpegflow_jail::spawner::own_binary(),
                job_ids: jobs,
                lock_dir: args.id_lock_dir.clone(),
                max_limits: mpegflow_jail::Limits {
                    address_space_bytes: args.memory_limit_mb.saturating_mul(1024 * 1024),
                    cpu_seconds: 7 * 24 * 3600,
                    file_size_bytes: u64::MAX,
                    ..mpegflow_jail::Limits::default()
                },
                max_output_fs_bytes: args.max_output_fs_mb.saturating_mul(1024 * 1024),
            };
            // SAFETY: no thread has been started yet.
            Some(
                unsafe { mpegflow_jail::spawner::start(cfg, jail.clone(), vec![lease.into_fd()]) }
                    .context("starting the spawn helper")?,
            )
        }
        None => {
            // Held for the life of this process.
            std::mem::forget(lease);
            None
        }
    };
    mpegflow_jail::privilege::drop_to(uid, uid).context("dropping root")?;
    tracing::info!(
        uid,
        "dropped root; jobs run as their own uids through the spawn helper"
    );
    Ok(spawner)
}

fn read_token(args: &Args) -> anyhow::Result<String> {
    let raw = match &args.token_file {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the token from stdin")?;
            s
        }
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading token file {}", p.display()))?,
        None => std::env::var("MPEGFLOW_WORKER_TOKEN")
            .context("no --token-file and no MPEGFLOW_WORKER_TOKEN")?,
    };
    // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
    unsafe { std::env::remove_var("MPEGFLOW_WORKER_TOKEN") };
    let token = raw.trim().to_owned();
    if mpegflow_domain::token::Secret::parse(mpegflow_domain::token::TokenKind::WorkerToken, &token)
        .is_err()
    {
        bail!("the worker token is malformed (expected mfw_ followed by 64 hex characters)");
    }
    Ok(token)
}

/// Logs to stderr: text (coloured only on a terminal without `NO_COLOR`), or JSON lines with
/// `MPEGFLOW_LOG_FORMAT=json`, as `mpegflow up` logs.
fn init_logging() {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MPEGFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match std::env::var("MPEGFLOW_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init()
        }
        Ok(other) => {
            eprintln!("MPEGFLOW_LOG_FORMAT={other:?} is not a log format: use text or json");
            std::process::exit(2);
        }
    }
}

fn main() -> anyhow::Result<()> {
    // A jailed self-test probe: do the one thing asked and report by exit code.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(mpegflow_worker::selftest::PROBE_ARG) {
        std::process::exit(mpegflow_worker::selftest::probe(&argv[2..]));
    }
    init_logging();
    let args = Args::parse();
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mpegflow-worker-{}", std::process::id()))
    });
    let jail = if args.insecure_no_jail {
        None
    } else {
        let mut layers = mpegflow_jail::Layers {
            landlock_abi_max: args.landlock_abi_max,
            ..mpegflow_jail::Layers::default()
        };
        for l in &args.jail_disable_layer {
            match l.as_str() {
                "landlock" => layers.landlock = false,
                "seccomp" => layers.seccomp = false,
                other => bail!("unknown jail layer {other:?} (landlock, seccomp)"),
            }
        }
        Some(
            mpegflow_jail::Jail::new(layers)
                .context("building the jail (pass --insecure-no-jail to run unconfined)")?,
        )
    };
    // SAFETY: geteuid has no preconditions.
    let spawner = if unsafe { libc::geteuid() } == 0 {
        drop_root(&args, &work_dir, jail.as_ref())?.map(std::sync::Arc::new)
    } else {
        None
    };
    let token = read_token(&args)?;
    // No core dumps and no ptrace by same-uid processes: the token lives in this memory.
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let config = WorkerConfig {
        jail,
        memory_limit_bytes: args.memory_limit_mb.saturating_mul(1024 * 1024),
        oom_events: args.oom_events.clone(),
        coordinator: args.coordinator.clone(),
        work_dir,
        ffmpeg: args.ffmpeg.clone(),
        ffprobe: args.ffprobe.clone(),
        hostname,
        image_hash: args.image_hash.clone(),
        max_input_bytes: args.max_input_bytes,
        poll_seconds: args.poll_seconds,
        spawner,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let hard = CancellationToken::new();
        {
            let (shutdown, hard) = (shutdown.clone(), hard.clone());
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("signal handler");
                let mut int = signal(SignalKind::interrupt()).expect("signal handler");
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                tracing::info!(
                    "stopping: finishing the current job (signal again to hand it back)"
                );
                shutdown.cancel();
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                hard.cancel();
            });
        }
        run(config, token, shutdown, hard)
            .await
            .map_err(anyhow::Error::from)
    })
}
