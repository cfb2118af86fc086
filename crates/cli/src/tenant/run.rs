//! `mpegflow run`: check the command, upload the inputs, run the job, fetch the outputs — with
//! a live bar on a terminal, plain lines otherwise, and Ctrl-C that cancels the job.

use super::{Connection, Exit};
use crate::client::ApiClient;
use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mpegflow_api as api;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = super::EXIT_CODES_HELP)]
pub struct RunArgs {
    /// ALIAS=PATH of a local input file (repeatable; aliases are a-z, 0-9, _).
    #[arg(
        long = "input",
        short = 'i',
        value_name = "ALIAS=PATH",
        required = true
    )]
    pub inputs: Vec<String>,
    /// ALIAS=PATH where an output goes (repeatable); a trailing / declares a directory output
    /// (HLS, DASH, segments, image sequences).
    #[arg(
        long = "output",
        short = 'o',
        value_name = "ALIAS=PATH",
        required = true
    )]
    pub outputs: Vec<String>,
    /// The worker pool to run on (default: `default`; see `mpegflow pools list`).
    #[arg(long)]
    pub pool: Option<String>,
    /// Wall-clock limit of the job in seconds (default: the server's, one hour).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Print the finished job as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Submit, print the job id on stdout and exit; follow with `mpegflow jobs wait ID`, fetch
    /// with `mpegflow jobs download ID DIR`.
    #[arg(long)]
    pub no_wait: bool,
    /// The FFmpeg arguments (after `--`), with {{alias}} placeholders, as one string or as
    /// separate words.
    #[arg(last = true, required = true, value_name = "FFMPEG ARGS")]
    pub command: Vec<String>,
}

fn split_pair(s: &str, what: &str) -> Result<(api::Alias, PathBuf)> {
    let (a, p) = s
        .split_once('=')
        .filter(|(a, p)| !a.is_empty() && !p.is_empty())
        .ok_or_else(|| anyhow!("--{what} {s:?} must be ALIAS=PATH"))?;
    let alias = api::Alias::parse(a).map_err(|e| anyhow!("--{what} {s:?}: {e}"))?;
    Ok((alias, PathBuf::from(p)))
}

/// The job as the flags describe it, before anything is uploaded.
struct Plan {
    inputs: BTreeMap<api::Alias, PathBuf>,
    outputs: BTreeMap<api::Alias, api::OutputName>,
    dests: BTreeMap<String, PathBuf>,
    command: String,
    pool: Option<api::PoolName>,
    timeout: Option<api::TimeoutSeconds>,
}

fn plan(args: &RunArgs) -> Result<Plan> {
    let command = if args.command.len() == 1 {
        args.command[0].clone()
    } else {
        shell_words::join(&args.command)
    };
    let mut outputs = BTreeMap::new();
    let mut dests = BTreeMap::new();
    for o in &args.outputs {
        let (alias, path) = split_pair(o, "output")?;
        let is_dir = o.ends_with('/');
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("--output {o:?}: no file name"))?;
        let name = if is_dir {
            format!("{name}/")
        } else {
            name.to_owned()
        };
        let name = api::OutputName::parse(name).map_err(|e| anyhow!("--output {o:?}: {e}"))?;
        if outputs.insert(alias.clone(), name).is_some() {
            bail!("--output: alias {alias} is given twice");
        }
        dests.insert(alias.to_string(), path);
    }
    let mut inputs = BTreeMap::new();
    for i in &args.inputs {
        let (alias, path) = split_pair(i, "input")?;
        if outputs.contains_key(&alias) || inputs.contains_key(&alias) {
            bail!("--input: alias {alias} is given twice");
        }
        if !path.is_file() {
            bail!("--input {i:?}: {} is not a readable file", path.display());
        }
        inputs.insert(alias, path);
    }
    Ok(Plan {
        inputs,
        outputs,
        dests,
        command,
        pool: args
            .pool
            .clone()
            .map(api::PoolName::parse)
            .transpose()
            .map_err(|e| anyhow!("--pool: {e}"))?,
        timeout: args
            .timeout
            .map(api::TimeoutSeconds::parse)
            .transpose()
            .map_err(|e| anyhow!("--timeout: {e}"))?,
    })
}

/// Progress on stderr: a bar on a terminal, a line per change otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    last_line: Option<(String, Instant)>,
}

impl Progress {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            last_line: None,
        }
    }

    /// A phase measured in bytes (upload, download).
    fn bytes(&mut self, what: &str, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.reset();
                bar.set_length(total);
                bar.set_position(0);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg:<28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_message(what.to_owned());
            }
            None => self.line(&format!("{what} ({total} bytes)")),
        }
    }

    fn set_bytes(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(n);
        }
    }

    /// Where a transfer running elsewhere reports its bytes.
    fn byte_sink(&self) -> impl FnMut(u64) + Send + 'static {
        let bar = self.bar.clone();
        move |n| {
            if let Some(bar) = &bar {
                bar.set_position(n);
            }
        }
    }

    /// The job's phase: queued, then running with its stage, progress, speed and fps.
    fn job(&mut self, job: &api::Job, started: Instant) {
        let state = job.state.to_string();
        match &self.bar {
            Some(bar) => {
                if bar.length() != Some(1000) {
                    bar.reset();
                    bar.set_length(1000);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {msg:<28} [{bar:30}] {percent:>3}% elapsed {elapsed} ETA {eta}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                }
                bar.set_position((job.progress.unwrap_or(0.0).clamp(0.0, 1.0) * 1000.0) as u64);
                bar.set_message(format!("job {state}{}", live_text(job)));
            }
            None => {
                let percent = job.progress.map(|p| (p * 100.0).floor() as u32);
                // A line per state change, and per 10% of progress.
                let stage = job.live.as_ref().and_then(|l| l.stage.as_deref());
                let key = format!("{state} {stage:?} {}", percent.map_or(0, |p| p / 10));
                if self.last_line.as_ref().map(|(k, _)| k) != Some(&key) {
                    let p = percent.map_or(String::new(), |p| format!(" {p}%"));
                    eprintln!(
                        "job {} {state}{p}{} ({}s)",
                        job.id,
                        live_text(job),
                        started.elapsed().as_secs()
                    );
                    self.last_line = Some((key, Instant::now()));
                }
            }
        }
    }

    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Text from the server that came from a worker or FFmpeg, safe for a terminal: control
/// characters other than newline and tab are replaced (no escape sequences reach it).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// ": encode 2.1x 52 fps" while a worker reports it.
fn live_text(job: &api::Job) -> String {
    let Some(live) = &job.live else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(stage) = &live.stage {
        parts.push(printable(stage));
    }
    if let Some(speed) = live.speed {
        parts.push(format!("{speed:.2}x"));
    }
    if let Some(fps) = live.fps {
        parts.push(format!("{fps:.0} fps"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(" "))
    }
}

pub async fn run(conn: &Connection, args: &RunArgs) -> Result<Exit> {
    let plan = plan(args)?;
    let client = conn.client()?;
    // The template is checked before anything is uploaded: a typo costs no upload.
    let file_names = plan
        .inputs
        .iter()
        .map(|(alias, path)| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("input");
            Ok((alias.clone(), api::FileName::parse(name)?))
        })
        .collect::<Result<_>>()?;
    let checked = client
        .validate(&api::JobValidateIn {
            inputs: file_names,
            outputs: plan.outputs.clone(),
            command: plan.command.clone(),
            pool: plan.pool.clone(),
            timeout_seconds: plan.timeout,
        })
        .await?;
    warn_without_workers(&client, &checked.pool).await;

    let mut progress = Progress::new();
    let mut inputs = BTreeMap::new();
    for (alias, path) in &plan.inputs {
        let size = std::fs::metadata(path)?.len();
        progress.bytes(&format!("uploading {alias}"), size);
        let asset = client.upload_with(path, progress.byte_sink()).await?;
        inputs.insert(alias.clone(), asset.id);
    }
    let job = client
        .submit(&api::JobIn {
            inputs,
            outputs: plan.outputs.clone(),
            command: plan.command.clone(),
            pool: plan.pool.clone(),
            timeout_seconds: plan.timeout,
            metadata: None,
        })
        .await?;
    if args.no_wait {
        progress.finish();
        println!("{}", job.id);
        return Ok(Exit::Ok);
    }
    progress.line(&format!("job {} submitted", job.id));
    let job = match follow(&client, job.id, &mut progress).await? {
        Followed::Ended(job) => *job,
        Followed::Detached => return Ok(Exit::JobFailed),
    };
    finish(&client, &job, &plan.dests, &mut progress, args.json).await
}

/// Warns when the pool has no live worker: the job would wait until one joins.
async fn warn_without_workers(client: &ApiClient, pool: &api::PoolName) {
    if let Ok(list) = client.pools().await {
        if let Some(p) = list.pools.iter().find(|p| &p.name == pool) {
            if p.live_workers == 0 {
                eprintln!(
                    "warning: pool {pool} has no live worker; the job will wait until one joins"
                );
            }
        }
    }
}

pub enum Followed {
    Ended(Box<api::Job>),
    /// A second Ctrl-C: the job goes on without us.
    Detached,
}

/// Waits for the job to end, showing its progress. The first Ctrl-C asks the server to
/// cancel the job and waits for it to stop; the second detaches.
pub async fn follow(client: &ApiClient, id: Uuid, progress: &mut Progress) -> Result<Followed> {
    let started = Instant::now();
    let mut interrupts = 0u32;
    loop {
        let poll = client.job_wait(id, 10);
        tokio::select! {
            job = poll => {
                let job = job?;
                progress.job(&job, started);
                if job.state.is_terminal() {
                    progress.finish();
                    return Ok(Followed::Ended(Box::new(job)));
                }
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts >= 2 {
                    progress.finish();
                    eprintln!(
                        "detached from job {id}; it goes on. Follow it with `mpegflow jobs wait {id}`, fetch its outputs with `mpegflow jobs download {id} DIR`"
                    );
                    return Ok(Followed::Detached);
                }
                progress.line(&format!(
                    "canceling job {id} (press Ctrl-C again to detach and leave it running)"
                ));
                match client.cancel(id).await {
                    Ok(_) => {}
                    // Already finished: the next poll shows how.
                    Err(e) if e.downcast_ref::<crate::client::ApiError>().is_some_and(|p| p.0.status == 409) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// One line of what a file is: `10.0 s, h264 1280x720 25/1 fps, aac 48000 Hz 2 ch`.
pub fn media_summary(m: &api::MediaInfo) -> String {
    let mut parts = Vec::new();
    if let Some(d) = m.duration_seconds {
        parts.push(format!("{d:.1} s"));
    }
    for s in &m.streams {
        let mut p = s.codec.clone();
        if let (Some(w), Some(h)) = (s.width, s.height) {
            p += &format!(" {w}x{h}");
        }
        if let Some(r) = &s.frame_rate {
            p += &format!(" {r} fps");
        }
        if let Some(r) = s.sample_rate {
            p += &format!(" {r} Hz");
        }
        if let Some(c) = s.channels {
            p += &format!(" {c} ch");
        }
        parts.push(p);
    }
    parts.join(", ")
}

/// Downloads a finished job's outputs (when it succeeded) and tells the outcome.
pub async fn finish(
    client: &ApiClient,
    job: &api::Job,
    dests: &BTreeMap<String, PathBuf>,
    progress: &mut Progress,
    json: bool,
) -> Result<Exit> {
    let code = if job.state == api::JobState::Succeeded {
        for (alias, out) in &job.outputs {
            let Some(dest) = dests.get(alias.as_str()) else {
                continue;
            };
            let total: u64 = out.files.iter().map(|f| f.size).sum();
            progress.bytes(&format!("downloading {alias}"), total);
            let written = client
                .download_output(out, dest, |n| progress.set_bytes(n))
                .await?;
            for (path, file) in written.iter().zip(&out.files) {
                match &file.media {
                    Some(media) => progress.line(&format!(
                        "wrote {} ({})",
                        path.display(),
                        media_summary(media)
                    )),
                    None => progress.line(&format!("wrote {}", path.display())),
                }
            }
        }
        progress.finish();
        eprintln!("job {} succeeded", job.id);
        Exit::Ok
    } else {
        progress.finish();
        match &job.error {
            Some(err) => {
                eprintln!(
                    "job {} {}: {}: {}",
                    job.id,
                    job.state,
                    printable(&err.code),
                    printable(err.message.as_deref().unwrap_or(""))
                );
                if let Some(tail) = &err.stderr_tail {
                    eprintln!("--- ffmpeg stderr (tail) ---\n{}", printable(tail));
                }
            }
            None => eprintln!("job {} {}", job.id, job.state),
        }
        Exit::JobFailed
    };
    if json {
        println!("{}", serde_json::to_string_pretty(job)?);
    }
    Ok(code)
}
