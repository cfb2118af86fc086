//! `mpegflow-dispatcher`: sends webhook deliveries. Give it the database URL of its own role
//! (migration 0008's `<database>_webhooks`, which reaches only the webhook tables) and the key
//! file that opens signing secrets; it holds nothing else.

use anyhow::{bail, Context};
use clap::Parser;
use mpegflow_dispatcher::{Dispatcher, DispatcherConfig, NoResolver, SystemClock, SystemResolver};
use mpegflow_domain::webhook::{Keyring, UrlPolicy};
use mpegflow_store::Store;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Sends MpegFlow's signed webhook deliveries. Reaches only the webhook tables."
)]
struct Args {
    /// File holding the database URL ("-" reads it from standard input). Otherwise
    /// DATABASE_URL is used.
    #[arg(long)]
    database_url_file: Option<PathBuf>,
    /// The keys that open signing secrets (mode 0600, lines `ID:BASE64`). "-" reads them from
    /// standard input (after the database URL's line, when that comes from there too).
    #[arg(long, env = "MPEGFLOW_WEBHOOK_KEYS_FILE")]
    keys_file: PathBuf,
    /// Allow endpoints that are loopback IP literals (development and tests only).
    #[arg(long, env = "MPEGFLOW_WEBHOOK_ALLOW_LOOPBACK")]
    allow_loopback: bool,
    /// Deliver to endpoints whose host is an IP address only, never asking DNS.
    #[arg(long, env = "MPEGFLOW_WEBHOOK_NO_RESOLVE")]
    no_resolve: bool,
    /// Attempts in flight at once in this process.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Attempts in flight per endpoint at once, across every dispatcher.
    #[arg(long, default_value_t = 16)]
    per_endpoint: usize,
    /// Database connections (none is held while a request is out).
    #[arg(long, default_value_t = 8)]
    connections: u32,
}

fn init_logging() -> anyhow::Result<()> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MPEGFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match std::env::var("MPEGFLOW_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => builder.init(),
        Ok(other) => bail!("MPEGFLOW_LOG_FORMAT={other:?} is not a log format: use text or json"),
    }
    Ok(())
}

/// The database URL and the keyring, from files, the environment or standard input.
fn secrets(args: &Args) -> anyhow::Result<(String, Keyring)> {
    let url_on_stdin = args
        .database_url_file
        .as_ref()
        .is_some_and(|p| p.as_os_str() == "-");
    let keys_on_stdin = args.keys_file.as_os_str() == "-";
    let mut stdin = String::new();
    if url_on_stdin || keys_on_stdin {
        std::io::stdin().read_to_string(&mut stdin)?;
    }
    let (url, keys_text) = match (url_on_stdin, keys_on_stdin) {
        (true, true) => {
            let (url, keys) = stdin.split_once('\n').unwrap_or((&stdin, ""));
            (url.to_owned(), Some(keys.to_owned()))
        }
        (true, false) => (stdin.clone(), None),
        (false, keys_on_stdin) => {
            let url = match &args.database_url_file {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => std::env::var("DATABASE_URL")
                    .context("give --database-url-file or set DATABASE_URL")?,
            };
            (url, keys_on_stdin.then(|| stdin.clone()))
        }
    };
    let keys = match keys_text {
        Some(text) => Keyring::parse(&text).context("the webhook keys on standard input")?,
        None => mpegflow_dispatcher::read_keyring(&args.keys_file)?,
    };
    Ok((url.trim().to_owned(), keys))
}

fn main() -> anyhow::Result<()> {
    init_logging()?;
    let args = Args::parse();
    let (url, keys) = secrets(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = Store::connect_unmigrated(&url, args.connections.max(2))
            .await
            .context("connecting to PostgreSQL")?;
        let config = DispatcherConfig {
            url_policy: UrlPolicy {
                allow_loopback_literals: args.allow_loopback,
            },
            concurrency: args.concurrency.max(1),
            per_endpoint: args.per_endpoint.max(1),
            ..DispatcherConfig::default()
        };
        let dispatcher = Dispatcher::new(
            store,
            keys,
            Arc::new(SystemClock),
            if args.no_resolve {
                Arc::new(NoResolver) as Arc<dyn mpegflow_dispatcher::Resolver>
            } else {
                Arc::new(SystemResolver)
            },
            config,
        )?;
        let shutdown = CancellationToken::new();
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut interrupt = signal(SignalKind::interrupt())?;
            let mut terminate = signal(SignalKind::terminate())?;
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                stop.cancel();
            });
        }
        tracing::info!("dispatching webhook deliveries");
        dispatcher.run(shutdown).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
