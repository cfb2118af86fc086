//! Running ffprobe and ffmpeg: argv in, exit status, stderr and progress out. Everything read
//! from the process is read in fixed-size chunks into fixed-size buffers: a jailed process
//! cannot make the worker's memory grow, whatever it writes.

use crate::ffmpeg_log::InputLog;
use mpegflow_jail::spawner::SpawnerClient;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Read size for the process's pipes.
const CHUNK: usize = 64 * 1024;
/// Stderr kept for the record: its first and last bytes (FFmpeg's banner and its final error).
pub const STDERR_HEAD: usize = 256 * 1024;
pub const STDERR_TAIL: usize = 256 * 1024;
/// Longest progress line read; a longer one is skipped, never buffered.
pub const MAX_PROGRESS_LINE: usize = 4096;
/// Most of stdout kept when it is an answer (ffprobe's), not progress; the rest is drained.
pub const MAX_STDOUT: usize = 64 * 1024;

/// The first `head` and the last `tail` bytes of a stream, with a count of what was dropped.
#[derive(Debug)]
pub struct HeadTail {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_max: usize,
    tail_max: usize,
    omitted: u64,
}

impl HeadTail {
    pub fn new(head_max: usize, tail_max: usize) -> Self {
        HeadTail {
            head: Vec::with_capacity(head_max.min(CHUNK)),
            tail: VecDeque::new(),
            head_max,
            tail_max,
            omitted: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        let to_head = (self.head_max - self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..to_head]);
        bytes = &bytes[to_head..];
        if bytes.len() >= self.tail_max {
            self.omitted += (self.tail.len() + bytes.len() - self.tail_max) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_max..]);
        } else {
            let over = (self.tail.len() + bytes.len()).saturating_sub(self.tail_max);
            self.tail.drain(..over);
            self.omitted += over as u64;
            self.tail.extend(bytes);
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        let mut out = self.head;
        if self.omitted > 0 {
            out.extend_from_slice(
                format!("\n[... {} bytes omitted ...]\n", self.omitted).as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

/// Splits a byte stream into lines of at most `max` bytes; longer lines are skipped whole
/// (their bytes are never kept), so memory stays `max` whatever the stream holds.
#[derive(Debug)]
pub struct BoundedLines {
    line: Vec<u8>,
    max: usize,
    skipping: bool,
}

impl BoundedLines {
    pub fn new(max: usize) -> Self {
        BoundedLines {
            line: Vec::with_capacity(max),
            max,
            skipping: false,
        }
    }

    /// Feeds `bytes`, calling `on_line` for each complete line that fits (without its `\n`).
    pub fn feed(&mut self, mut bytes: &[u8], mut on_line: impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let (body, complete) = match memchr::memchr(b'\n', bytes) {
                Some(i) => {
                    let body = &bytes[..i];
                    bytes = &bytes[i + 1..];
                    (body, true)
                }
                None => (std::mem::take(&mut bytes), false),
            };
            if !self.skipping {
                if self.line.len() + body.len() > self.max {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(body);
                }
            }
            if complete {
                if !self.skipping {
                    on_line(&self.line);
                }
                self.line.clear();
                self.skipping = false;
            }
        }
    }
}

/// How a run's progress is followed: FFmpeg's `-progress` lines on stdout, against the output
/// duration expected from what its log (stderr) tells of the inputs.
pub struct Watch {
    pub progress: Progress,
    pub inputs: InputLog,
    /// The output's expected duration (µs, 0 unknown) from the inputs' durations known so far.
    pub expected_us: Box<dyn Fn(&InputLog) -> u64 + Send>,
}

/// Applies one `-progress` line to `progress`.
fn progress_line(line: &[u8], progress: &Progress, duration_us: u64) {
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    if let Some(v) = line
        .strip_prefix("out_time_us=")
        .or_else(|| line.strip_prefix("out_time_ms="))
    {
        if let (Ok(us), true) = (v.trim().parse::<u64>(), duration_us > 0) {
            progress.set(us as f64 / duration_us as f64);
        }
    } else if let Some(v) = line.strip_prefix("speed=") {
        // "1.23x", or "N/A" before the first frame.
        if let Ok(x) = v.trim().trim_end_matches('x').parse::<f64>() {
            Progress::set_rate(&progress.0.speed_milli, x);
        }
    } else if let Some(v) = line.strip_prefix("fps=") {
        if let Ok(f) = v.trim().parse::<f64>() {
            Progress::set_rate(&progress.0.fps_milli, f);
        }
    } else if line == "progress=end" {
        progress.set(1.0);
    }
}

/// A bound on what a process may write under a directory while it runs.
#[derive(Debug, Clone)]
pub struct OutputBound {
    pub dir: PathBuf,
    /// Total bytes (0: unbounded). A file counts the larger of its length and its allocated
    /// blocks, so neither sparse files nor preallocation hide from it.
    pub max_bytes: u64,
    /// Entries, files and directories alike (0: unbounded).
    pub max_files: u64,
}

/// How often [`watch_output`] measures. The overshoot past a bound is at most what the
/// process writes in one interval (plus one walk's duration).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// What [`usage`] measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    /// A directory that exists but cannot be listed: what it holds is unknown. (A job sharing
    /// the worker's uid can make one, e.g. with mode 0300, and write into it unseen.)
    pub unlisted: Option<PathBuf>,
}

/// Bytes and entries under `dir`, without following symlinks; stops counting once past
/// `stop_bytes` or `stop_files` (so a tree of a million files costs one bounded walk), or at
/// the first directory it cannot list.
pub fn usage(dir: &Path, stop_bytes: u64, stop_files: u64) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let mut u = Usage {
        bytes: 0,
        files: 0,
        unlisted: None,
    };
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            // Removed since it was seen (or out/ not made yet): nothing there to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => {
                u.unlisted = Some(d);
                return u;
            }
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            u.files += 1;
            u.bytes = u
                .bytes
                .saturating_add(meta.len().max(meta.blocks().saturating_mul(512)));
            if meta.is_dir() {
                pending.push(entry.path());
            }
            if (stop_bytes > 0 && u.bytes > stop_bytes) || (stop_files > 0 && u.files > stop_files)
            {
                return u;
            }
        }
    }
    u
}

/// Measures `bound.dir` every [`WATCH_INTERVAL`] until cancelled; past a bound it records why
/// in `tripped` and cancels `stop` (which kills the process group), then returns.
pub async fn watch_output(
    bound: OutputBound,
    stop: CancellationToken,
    tripped: Arc<Mutex<Option<String>>>,
) {
    if bound.max_bytes == 0 && bound.max_files == 0 {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
        let b = bound.clone();
        let Ok(Usage {
            bytes,
            files,
            unlisted,
        }) = tokio::task::spawn_blocking(move || usage(&b.dir, b.max_bytes, b.max_files)).await
        else {
            continue;
        };
        let why = if let Some(d) = unlisted {
            let rel = d.strip_prefix(&bound.dir).unwrap_or(&d);
            format!(
                "an output directory ({}) could not be measured while ffmpeg ran",
                rel.display()
            )
        } else if bound.max_bytes > 0 && bytes > bound.max_bytes {
            format!("outputs exceed {} bytes while ffmpeg ran", bound.max_bytes)
        } else if bound.max_files > 0 && files > bound.max_files {
            format!(
                "more than {} output files while ffmpeg ran",
                bound.max_files
            )
        } else {
            continue;
        };
        if let Ok(mut t) = tripped.lock() {
            *t = Some(why);
        }
        stop.cancel();
        return;
    }
}

/// Resolves a program name to an absolute path through `PATH`, once at start.
pub fn resolve(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() {
        return program.is_file().then(|| program.to_owned());
    }
    if program.components().count() > 1 {
        return std::fs::canonicalize(program).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The first line of `ffmpeg -version`.
pub async fn version(ffmpeg: &Path) -> std::io::Result<String> {
    let out = Command::new(ffmpeg)
        .arg("-version")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("unknown").to_owned())
}

/// CPU time (µs) of the job processes the spawn helper ran, as it reported them: they are not
/// this process's children, so `RUSAGE_CHILDREN` does not see them.
static JAILED_CPU_US: AtomicU64 = AtomicU64::new(0);

/// CPU time used so far by this worker and every job process it ran (its own children and the
/// helper's), in microseconds. A worker runs one job at a time: the difference across a stage
/// is that stage's CPU.
pub fn cpu_used_us() -> u64 {
    let usage = |who| {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct we own.
        unsafe { libc::getrusage(who, &mut u) };
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        us(u.ru_utime) + us(u.ru_stime)
    };
    usage(libc::RUSAGE_SELF) + usage(libc::RUSAGE_CHILDREN) + JAILED_CPU_US.load(Ordering::Relaxed)
}

/// How a process ended.
#[derive(Debug)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
    Canceled,
}

#[derive(Debug)]
pub struct Finished {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// What the log told of the inputs, when the run was watched.
    pub inputs: Option<InputLog>,
    /// FFmpeg reported progress on stdout (it got past opening its inputs and outputs).
    pub progressed: bool,
}

/// Progress in millionths, shared with the heartbeat task.
#[derive(Clone)]
pub struct Progress(Arc<Live>);

/// What the heartbeat tells of a running job: its stage, and FFmpeg's own progress figures.
#[derive(Debug)]
struct Live {
    /// Millionths of the encode, or [`Progress::UNKNOWN`].
    fraction: AtomicU32,
    /// FFmpeg's `speed=` (media time per wall time) in thousandths; 0 unknown.
    speed_milli: AtomicU32,
    /// FFmpeg's `fps=` in thousandths; 0 unknown.
    fps_milli: AtomicU32,
    /// Index into [`STAGES`] + 1; 0 none.
    stage: std::sync::atomic::AtomicU8,
}

use mpegflow_domain::job::STAGES;

impl Progress {
    pub const UNKNOWN: u32 = u32::MAX;
    pub fn set(&self, fraction: f64) {
        self.0
            .fraction
            .store((fraction.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }
    pub fn get(&self) -> Option<f32> {
        match self.0.fraction.load(Ordering::Relaxed) {
            Self::UNKNOWN => None,
            v => Some(v as f32 / 1e6),
        }
    }
    fn set_rate(cell: &AtomicU32, value: f64) {
        if value.is_finite() && (0.0..1e6).contains(&value) {
            cell.store((value * 1e3) as u32, Ordering::Relaxed);
        }
    }
    /// FFmpeg's encoding speed (1.0 = real time), when it said.
    pub fn speed(&self) -> Option<f32> {
        let v = self.0.speed_milli.load(Ordering::Relaxed);
        (v > 0).then(|| v as f32 / 1e3)
    }
    /// Frames encoded per second, when FFmpeg said.
    pub fn fps(&self) -> Option<f32> {
        let v = self.0.fps_milli.load(Ordering::Relaxed);
        (v > 0).then(|| v as f32 / 1e3)
    }
    pub fn set_stage(&self, name: &str) {
        let i = STAGES.iter().position(|s| *s == name).map_or(0, |i| i + 1);
        self.0.stage.store(i as u8, Ordering::Relaxed);
    }
    pub fn stage(&self) -> &'static str {
        match self.0.stage.load(Ordering::Relaxed) {
            0 => "",
            i => STAGES.get(usize::from(i) - 1).copied().unwrap_or(""),
        }
    }
    pub fn unknown() -> Self {
        Progress(Arc::new(Live {
            fraction: AtomicU32::new(Self::UNKNOWN),
            speed_milli: AtomicU32::new(0),
            fps_milli: AtomicU32::new(0),
            stage: std::sync::atomic::AtomicU8::new(0),
        }))
    }
}

/// How a process of a job is started.
pub enum Launch {
    /// By this worker, in the jail when given (an unprivileged worker).
    Direct(Option<mpegflow_jail::Prepared>),
    /// By the privileged spawn helper, as the job's own uid (a root worker).
    Helper {
        spawner: Arc<SpawnerClient>,
        uid: u32,
        program: mpegflow_jail::spawner::Program,
        out: mpegflow_jail::spawner::OutAccess,
        limits: mpegflow_jail::Limits,
    },
}

type Pipe = Box<dyn AsyncRead + Unpin + Send>;

/// A started process: this worker's child, or a job process the helper started.
enum Running {
    /// The child and its pid, kept: `Child::id` forgets it once the child is reaped.
    Child(tokio::process::Child, Option<u32>),
    Helper {
        spawner: Arc<SpawnerClient>,
        uid: u32,
        status: tokio::net::unix::pipe::Receiver,
    },
}

impl Running {
    async fn start(
        program: &Path,
        argv: &[String],
        dir: &Path,
        launch: Launch,
    ) -> std::io::Result<(Running, Pipe, Pipe)> {
        match launch {
            Launch::Direct(jail) => {
                let mut cmd = Command::new(program);
                cmd.args(argv)
                    .current_dir(dir)
                    .env_clear()
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0)
                    .kill_on_drop(true);
                if let Some(prepared) = jail {
                    let prepared = std::sync::Arc::new(prepared);
                    // SAFETY: `apply` only makes raw system calls and does not allocate, as
                    // required between fork and exec.
                    unsafe {
                        cmd.pre_exec(move || prepared.apply());
                    }
                }
                let mut child = cmd.spawn()?;
                let stdout = child.stdout.take().expect("stdout is piped");
                let stderr = child.stderr.take().expect("stderr is piped");
                let pid = child.id();
                Ok((
                    Running::Child(child, pid),
                    Box::new(stdout),
                    Box::new(stderr),
                ))
            }
            Launch::Helper {
                spawner,
                uid,
                program,
                out,
                limits,
            } => {
                let args = argv.to_vec();
                let client = spawner.clone();
                let spawned = tokio::task::spawn_blocking(move || {
                    client.spawn(uid, program, &args, out, &limits)
                })
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
                use tokio::net::unix::pipe::Receiver;
                let stdout = Receiver::from_owned_fd(spawned.stdout)?;
                let stderr = Receiver::from_owned_fd(spawned.stderr)?;
                let status = Receiver::from_owned_fd(spawned.status)?;
                Ok((
                    Running::Helper {
                        spawner,
                        uid,
                        status,
                    },
                    Box::new(stdout),
                    Box::new(stderr),
                ))
            }
        }
    }

    /// How the process ended; for the helper's, once nothing of the job's namespace is left.
    async fn wait(&mut self) -> std::io::Result<Exit> {
        match self {
            Running::Child(child, _) => {
                let status = child.wait().await?;
                use std::os::unix::process::ExitStatusExt;
                Ok(match (status.code(), status.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(s)) => Exit::Signal(s),
                    _ => Exit::Code(-1),
                })
            }
            Running::Helper { status, .. } => {
                let mut raw = Vec::new();
                (&mut *status).take(64).read_to_end(&mut raw).await?;
                if let Some(cpu) = raw.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    JAILED_CPU_US.fetch_add(u64::from_ne_bytes(cpu), Ordering::Relaxed);
                }
                Ok(
                    match <[u8; 4]>::try_from(raw.get(..4).unwrap_or_default()) {
                        Ok(b) => {
                            let st = i32::from_ne_bytes(b);
                            if libc::WIFEXITED(st) {
                                Exit::Code(libc::WEXITSTATUS(st))
                            } else if libc::WIFSIGNALED(st) {
                                Exit::Signal(libc::WTERMSIG(st))
                            } else {
                                Exit::Code(-1)
                            }
                        }
                        // The namespace was killed before its init could report.
                        Err(_) => Exit::Signal(libc::SIGKILL),
                    },
                )
            }
        }
    }

    /// After it ended: kills what it left in its process group. One the helper started leaves
    /// nothing (its status arrives once its namespace init exited, taking the namespace), and
    /// killing by uid there would end the job's other processes too (measured two at a time).
    fn reap_rest(&self) {
        if let Running::Child(..) = self {
            self.kill();
        }
    }

    /// Kills the process and everything it left (its process group, or its pid namespace).
    fn kill(&self) {
        match self {
            Running::Child(_, pid) => {
                if let Some(pid) = pid {
                    // SAFETY: kill(2) with a negative pid signals the process group we created.
                    unsafe { libc::kill(-(*pid as i32), libc::SIGKILL) };
                }
            }
            Running::Helper { spawner, uid, .. } => {
                if let Err(e) = spawner.kill(*uid) {
                    tracing::error!("killing job uid {uid}: {e}");
                }
            }
        }
    }
}

/// Runs `program argv` in `dir` with an empty environment, no stdin, in its own process group
/// (or pid namespace), killed (all of it) on timeout or cancellation. With `watch`, stderr is
/// read line by line as FFmpeg's log and stdout as its `-progress` output.
pub async fn run(
    program: &Path,
    argv: &[String],
    dir: &Path,
    timeout: Duration,
    cancel: &CancellationToken,
    watch: Option<Watch>,
    launch: Launch,
) -> std::io::Result<Finished> {
    let (mut child, mut stdout, mut stderr) = Running::start(program, argv, dir, launch).await?;

    // Both pipes are read to their end in fixed chunks (a writer never blocks on us, so the
    // timeout and the kill below stay in charge) and kept only within fixed bounds.
    let expected_us = Arc::new(AtomicU64::new(0));
    let (progress, log) = match watch {
        Some(w) => (
            Some(w.progress),
            Some((w.inputs, w.expected_us, expected_us.clone())),
        ),
        None => (None, None),
    };
    let stderr_task = tokio::spawn(async move {
        let mut kept = HeadTail::new(STDERR_HEAD, STDERR_TAIL);
        let mut lines = BoundedLines::new(MAX_PROGRESS_LINE);
        let mut log = log;
        let mut chunk = vec![0u8; CHUNK];
        loop {
            match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.push(&chunk[..n]);
                    if let Some((inputs, expected, cell)) = &mut log {
                        lines.feed(&chunk[..n], |line| {
                            if inputs.line(line) {
                                cell.store(expected(inputs), Ordering::Relaxed);
                            }
                        });
                    }
                }
            }
        }
        (kept.into_bytes(), log.map(|(inputs, _, _)| inputs))
    });
    let progressed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progressed_seen = progressed.clone();
    let stdout_task = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut lines = BoundedLines::new(MAX_PROGRESS_LINE);
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let n = match stdout.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match &progress {
                Some(p) => lines.feed(&chunk[..n], |line| {
                    if line.starts_with(b"progress=") {
                        progressed_seen.store(true, Ordering::Relaxed);
                    }
                    progress_line(line, p, expected_us.load(Ordering::Relaxed))
                }),
                None => {
                    let room = MAX_STDOUT.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&chunk[..room]);
                }
            }
        }
        kept
    });

    let exit = tokio::select! {
        status = child.wait() => status?,
        () = tokio::time::sleep(timeout) => { child.kill(); let _ = child.wait().await; Exit::TimedOut }
        () = cancel.cancelled() => { child.kill(); let _ = child.wait().await; Exit::Canceled }
    };
    // Reap anything left (a process that forked and left).
    child.reap_rest();
    let (stderr, inputs) = stderr_task.await.unwrap_or_default();
    let stdout = stdout_task.await.unwrap_or_default();
    Ok(Finished {
        exit,
        stdout,
        stderr,
        inputs,
        progressed: progressed.load(Ordering::Relaxed),
    })
}

/// Marks a probe failure that was a tripped seccomp wire.
pub const SECURITY_PREFIX: &str = "security: ";

/// An ffprobe of `rel` as a job's inputs are read (only local files, only whitelisted
/// demuxers, bounded probing), printing what `show` asks for.
fn probe_argv(show: &[&str], rel: &str) -> Vec<String> {
    ["-v", "error"]
        .into_iter()
        .chain(mpegflow_domain::command::forced_input_flags())
        .chain(show.iter().copied())
        .chain([rel])
        .map(str::to_owned)
        .collect()
}

/// What a file the job wrote is, as media: `Ok(None)` when ffprobe does not read it as media
/// on the input whitelist (a playlist, say); `Err` only for a tripped seccomp wire.
pub async fn probe_media(
    ffprobe: &Path,
    dir: &Path,
    rel: &str,
    cancel: &CancellationToken,
    launch: Launch,
) -> Result<Option<mpegflow_domain::media::MediaInfo>, String> {
    // The inputs' whitelist: demuxers that open nothing but the file itself (no playlists).
    let argv = probe_argv(
        &[
            "-show_entries",
            mpegflow_domain::media::FFPROBE_ENTRIES,
            "-of",
            "json",
        ],
        rel,
    );
    match run_probe(ffprobe, &argv, dir, cancel, launch).await {
        Ok(stdout) => Ok(mpegflow_domain::media::MediaInfo::from_ffprobe_json(&stdout).ok()),
        Err(message) if message.starts_with(SECURITY_PREFIX) => Err(message),
        Err(message) => {
            tracing::debug!(file = rel, "not measured as media: {message}");
            Ok(None)
        }
    }
}

/// How [`probe_subtitles`] reads a subtitle file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubtitleProbe {
    /// With the demuxer forced (`-f`): the file must hold one subtitle stream with cues.
    Forced,
    /// By content, as the `subtitles` filter opens it (no format given), with only that
    /// demuxer allowed: FFmpeg's probing must pick it.
    Content,
}

/// Checks that `rel` is a subtitle file read by `demuxer` (srt, ass or webvtt); `Err` says why
/// not, in ffprobe's words where it has them.
pub async fn probe_subtitles(
    ffprobe: &Path,
    dir: &Path,
    rel: &str,
    demuxer: &str,
    how: SubtitleProbe,
    cancel: &CancellationToken,
    launch: Launch,
) -> Result<(), String> {
    let mut argv: Vec<String> = [
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        demuxer,
        "-probesize",
        mpegflow_domain::command::PROBE_SIZE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if how == SubtitleProbe::Forced {
        argv.extend(["-f".to_owned(), demuxer.to_owned()]);
    }
    argv.extend(
        [
            "-count_packets",
            "-show_entries",
            "stream=codec_type,nb_read_packets",
            "-of",
            "csv=p=0",
            rel,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let stdout = run_probe(ffprobe, &argv, dir, cancel, launch).await?;
    let text = String::from_utf8_lossy(&stdout);
    let streams: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match streams.as_slice() {
        [one] => match one.trim().split_once(',') {
            Some(("subtitle", n)) if n.parse::<u64>().is_ok_and(|n| n > 0) => Ok(()),
            Some(("subtitle", _)) => Err(format!("no subtitle cues read as {demuxer}")),
            _ => Err(format!("not a subtitle stream when read as {demuxer}")),
        },
        _ => Err(format!(
            "{} streams when read as {demuxer}; a subtitle file has one",
            streams.len()
        )),
    }
}

/// Runs one jailed ffprobe; its stdout, or its complaint.
async fn run_probe(
    ffprobe: &Path,
    argv: &[String],
    dir: &Path,
    cancel: &CancellationToken,
    launch: Launch,
) -> Result<Vec<u8>, String> {
    let f = run(
        ffprobe,
        argv,
        dir,
        Duration::from_secs(60),
        cancel,
        None,
        launch,
    )
    .await
    .map_err(|e| format!("cannot run ffprobe: {e}"))?;
    match f.exit {
        Exit::Code(0) => Ok(f.stdout),
        Exit::Code(c) => Err(format!(
            "ffprobe exit {c}: {}",
            String::from_utf8_lossy(&f.stderr).trim()
        )),
        Exit::Signal(s) if s == libc::SIGSYS => {
            Err(SECURITY_PREFIX.to_owned() + "ffprobe made a forbidden system call")
        }
        Exit::Signal(s) => Err(format!("ffprobe killed by signal {s}")),
        Exit::TimedOut => Err("ffprobe timed out".into()),
        Exit::Canceled => Err("canceled".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_are_kept_and_the_middle_counted() {
        let mut ht = HeadTail::new(4, 4);
        ht.push(b"ab");
        ht.push(b"cdef");
        ht.push(b"ghij");
        ht.push(b"k");
        let out = ht.into_bytes();
        assert_eq!(out, b"abcd\n[... 3 bytes omitted ...]\nhijk");
        let mut ht = HeadTail::new(4, 4);
        ht.push(b"abc");
        assert_eq!(ht.into_bytes(), b"abc");
        let mut ht = HeadTail::new(2, 3);
        ht.push(&[b'x'; 100]);
        ht.push(b"yz");
        assert_eq!(ht.into_bytes(), b"xx\n[... 97 bytes omitted ...]\nxyz");
    }

    #[test]
    fn overlong_lines_are_skipped_without_being_kept() {
        let mut lines = BoundedLines::new(8);
        let mut got = Vec::new();
        let mut feed = |l: &mut BoundedLines, b: &[u8]| l.feed(b, |line| got.push(line.to_vec()));
        feed(&mut lines, b"short\nthis one is far too long");
        feed(&mut lines, &[b'x'; 10_000]);
        feed(&mut lines, b"\nok=1\npart");
        feed(&mut lines, b"ial\n");
        assert_eq!(
            got,
            vec![b"short".to_vec(), b"ok=1".to_vec(), b"partial".to_vec()]
        );
        assert!(lines.line.capacity() <= 8, "never grew past the bound");
    }

    #[test]
    fn progress_lines_set_the_fraction() {
        let p = Progress::unknown();
        progress_line(b"out_time_us=500000", &p, 1_000_000);
        assert_eq!(p.get(), Some(0.5));
        progress_line(b"out_time_us=\xff", &p, 1_000_000);
        assert_eq!(p.get(), Some(0.5));
        progress_line(b"progress=end", &p, 1_000_000);
        progress_line(b"speed=2.5x", &p, 1_000_000);
        progress_line(b"fps=47.9", &p, 1_000_000);
        assert_eq!((p.speed(), p.fps()), (Some(2.5), Some(47.9)));
        progress_line(b"speed=N/A", &p, 1_000_000);
        progress_line(b"fps=inf", &p, 1_000_000);
        assert_eq!(
            (p.speed(), p.fps()),
            (Some(2.5), Some(47.9)),
            "unparsable values change nothing"
        );
        assert_eq!(p.get(), Some(1.0));
    }

    #[test]
    fn usage_counts_sparse_files_and_stops_past_the_bound() {
        let dir = std::env::temp_dir().join(format!("mpegflow-usage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/one"), vec![1u8; 1000]).unwrap();
        let sparse = std::fs::File::create(dir.join("a/b/sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let u = usage(&dir, 0, 0);
        assert_eq!((u.files, u.unlisted), (4, None));
        assert!(u.bytes >= (1 << 30) + 1000, "{}", u.bytes);
        assert_eq!(usage(&dir, 0, 2).files, 3, "stops one past the bound");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
