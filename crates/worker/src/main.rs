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

fn main() -> anyhow::Result<()> {
    // A jailed self-test probe: do the one thing asked and report by exit code.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(mpegflow_worker::selftest::PROBE_ARG) {
        std::process::exit(mpegflow_worker::selftest::probe(&argv[2..]));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MPEGFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let token = read_token(&args)?;
    // No core dumps and no ptrace by same-uid processes: the token lives in this memory.
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mpegflow-worker-{}", std::process::id()))
    });
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
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
    let config = WorkerConfig {
        jail,
        memory_limit_bytes: args.memory_limit_mb.saturating_mul(1024 * 1024),
        coordinator: args.coordinator.clone(),
        work_dir,
        ffmpeg: args.ffmpeg.clone(),
        ffprobe: args.ffprobe.clone(),
        hostname,
        image_hash: args.image_hash.clone(),
        max_input_bytes: args.max_input_bytes,
        poll_seconds: args.poll_seconds,
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
