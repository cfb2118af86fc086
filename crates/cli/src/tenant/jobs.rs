//! `mpegflow jobs`, `assets` and `pools`.

use super::run::{finish, follow, Followed, Progress};
use super::{Connection, Exit};
use anyhow::{anyhow, Result};
use mpegflow_api as api;
use std::collections::BTreeMap;
use std::path::PathBuf;
use uuid::Uuid;

/// A job state as a flag value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl From<StateArg> for api::JobState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Queued => api::JobState::Queued,
            StateArg::Running => api::JobState::Running,
            StateArg::Succeeded => api::JobState::Succeeded,
            StateArg::Failed => api::JobState::Failed,
            StateArg::Canceled => api::JobState::Canceled,
        }
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum JobsCmd {
    /// List your org's jobs, newest first.
    #[command(after_help = super::EXIT_CODES_HELP)]
    List {
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Jobs per page (1-200).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
        /// Start after this job id (the cursor a previous page printed on its `more: … --cursor X` line).
        #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
        cursor: Option<Uuid>,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
        /// The page(s) as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one job as JSON, with every attempt's provenance.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Show {
        /// The job id.
        id: Uuid,
    },
    /// Wait for a job to end, showing its progress; exits 0 if it succeeded, 1 if not.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Wait {
        /// The job id.
        id: Uuid,
        /// Print the finished job as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Download a succeeded job's outputs into DIR: a file output as its file name, a directory
    /// output as a directory.
    #[command(after_help = super::EXIT_CODES_HELP)]
    Download {
        /// The job id.
        id: Uuid,
        /// Where to write (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Cancel a queued or running job (a running FFmpeg is stopped).
    #[command(after_help = super::EXIT_CODES_HELP)]
    Cancel {
        /// The job id.
        id: Uuid,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AssetsCmd {
    /// List your org's assets (uploads and outputs), newest first.
    #[command(after_help = super::EXIT_CODES_HELP)]
    List {
        /// Assets per page (1-200).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
        /// Start after this asset id (the cursor a previous page printed on its `more: … --cursor X` line).
        #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
        cursor: Option<Uuid>,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
        /// The page(s) as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Delete an asset (refused while a queued or running job reads it).
    #[command(after_help = super::EXIT_CODES_HELP)]
    Delete {
        /// The asset id.
        id: Uuid,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PoolsCmd {
    /// The pools you may submit to, with their live workers.
    #[command(after_help = super::EXIT_CODES_HELP)]
    List {
        /// As JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A page of a cursor-paged list, as `jobs list` and `assets list` print it.
pub(super) trait Listing: serde::Serialize {
    /// The command that prints the next page with `--cursor`.
    const COMMAND: &'static str;
    /// The table's header line.
    fn header() -> String;
    /// The table's lines, one an item of this page.
    fn lines(&self) -> Vec<String>;
    fn next_cursor(&self) -> Option<&str>;
}

impl Listing for api::JobList {
    const COMMAND: &'static str = "jobs list";

    fn header() -> String {
        format!(
            "{:<36}  {:<9}  {:>6}  {:<24}  POOL",
            "ID", "STATE", "DONE", "CREATED"
        )
    }

    fn lines(&self) -> Vec<String> {
        self.jobs
            .iter()
            .map(|j| {
                let done = j
                    .progress
                    .map_or("-".to_owned(), |p| format!("{:.1}%", p * 100.0));
                format!(
                    "{:<36}  {:<9}  {done:>6}  {:<24}  {}",
                    j.id.to_string(),
                    j.state.to_string(),
                    j.created_at.to_string(),
                    j.pool
                )
            })
            .collect()
    }

    fn next_cursor(&self) -> Option<&str> {
        self.next_cursor.as_deref()
    }
}

impl Listing for api::AssetList {
    const COMMAND: &'static str = "assets list";

    fn header() -> String {
        format!(
            "{:<36}  {:<7}  {:>12}  {:<24}  {:<24}  FILENAME",
            "ID", "STATE", "SIZE", "CREATED", "EXPIRES"
        )
    }

    fn lines(&self) -> Vec<String> {
        self.assets
            .iter()
            .map(|a| {
                let state = match a.state {
                    api::AssetState::Pending => "pending",
                    api::AssetState::Ready => "ready",
                };
                format!(
                    "{:<36}  {state:<7}  {:>12}  {:<24}  {:<24}  {}",
                    a.id.to_string(),
                    a.size.map_or("-".to_owned(), |s| s.to_string()),
                    a.created_at.to_string(),
                    a.expires_at.map_or("-".to_owned(), |t| t.to_string()),
                    a.filename
                )
            })
            .collect()
    }

    fn next_cursor(&self) -> Option<&str> {
        self.next_cursor.as_deref()
    }
}

/// Prints a list from `cursor` on, each page fetched by `fetch` (given the page's cursor): the
/// header once (after the first page arrived) and a line an item, or each page as JSON with
/// `json`. With `all` every page; otherwise the first, and on stderr the command for the next.
pub(super) async fn print_pages<P, F, Fut>(
    mut cursor: Option<Uuid>,
    all: bool,
    json: bool,
    mut fetch: F,
) -> Result<()>
where
    P: Listing,
    F: FnMut(Option<Uuid>) -> Fut,
    Fut: std::future::Future<Output = Result<P>>,
{
    let mut header = !json;
    loop {
        let page = fetch(cursor).await?;
        if std::mem::take(&mut header) {
            println!("{}", P::header());
        }
        if json {
            print_json(&page)?;
        } else {
            for line in page.lines() {
                println!("{line}");
            }
        }
        match (page.next_cursor(), all) {
            (Some(next), true) => cursor = Some(next.parse()?),
            (Some(next), false) => {
                if !json {
                    eprintln!("more: mpegflow {} --cursor {next}", P::COMMAND);
                }
                return Ok(());
            }
            (None, _) => return Ok(()),
        }
    }
}

pub async fn jobs(conn: &Connection, cmd: &JobsCmd) -> Result<Exit> {
    let client = conn.client()?;
    match cmd {
        JobsCmd::List {
            state,
            limit,
            cursor,
            all,
            json,
        } => {
            let client = &client;
            print_pages(*cursor, *all, *json, |cursor| {
                let query = api::ListJobsQuery {
                    state: state.map(Into::into),
                    cursor,
                    limit: Some(*limit),
                };
                async move { client.list_jobs(&query).await }
            })
            .await?;
            Ok(Exit::Ok)
        }
        JobsCmd::Show { id } => {
            print_json(&client.job(*id).await?)?;
            Ok(Exit::Ok)
        }
        JobsCmd::Wait { id, json } => {
            let mut progress = Progress::new();
            match follow(&client, *id, &mut progress).await? {
                Followed::Ended(job) => {
                    finish(&client, &job, &BTreeMap::new(), &mut progress, *json).await
                }
                Followed::Detached => Ok(Exit::JobFailed),
            }
        }
        JobsCmd::Download { id, dir } => {
            let job = client.job(*id).await?;
            if job.state != api::JobState::Succeeded {
                return Err(anyhow!(
                    "job {id} is {}: only a succeeded job has outputs",
                    job.state
                ));
            }
            std::fs::create_dir_all(dir)?;
            let dests = job
                .outputs
                .iter()
                .map(|(alias, out)| {
                    let name = out.filename.trim_end_matches('/');
                    (alias.to_string(), dir.join(name))
                })
                .collect();
            let mut progress = Progress::new();
            finish(&client, &job, &dests, &mut progress, false).await
        }
        JobsCmd::Cancel { id } => {
            let job = client.cancel(*id).await?;
            eprintln!("job {} {}", job.id, job.state);
            Ok(Exit::Ok)
        }
    }
}

pub async fn assets(conn: &Connection, cmd: &AssetsCmd) -> Result<Exit> {
    let client = conn.client()?;
    match cmd {
        AssetsCmd::List {
            limit,
            cursor,
            all,
            json,
        } => {
            let client = &client;
            print_pages(*cursor, *all, *json, |cursor| {
                let query = api::ListAssetsQuery {
                    cursor,
                    limit: Some(*limit),
                };
                async move { client.list_assets(&query).await }
            })
            .await?;
            Ok(Exit::Ok)
        }
        AssetsCmd::Delete { id } => {
            client.delete_asset(*id).await?;
            eprintln!("asset {id} deleted");
            Ok(Exit::Ok)
        }
    }
}

pub async fn pools(conn: &Connection, cmd: &PoolsCmd) -> Result<Exit> {
    let client = conn.client()?;
    match cmd {
        PoolsCmd::List { json } => {
            let list = client.pools().await?;
            if *json {
                print_json(&list)?;
            } else {
                println!("{:<24}  {:<9}  LIVE WORKERS", "POOL", "SHARED");
                for p in &list.pools {
                    println!(
                        "{:<24}  {:<9}  {}",
                        p.name.as_str(),
                        if p.shared { "yes" } else { "org only" },
                        p.live_workers
                    );
                }
            }
            Ok(Exit::Ok)
        }
    }
}
