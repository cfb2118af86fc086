//! Running ffprobe and ffmpeg: argv in, exit status, stderr and progress out.

use mpegflow_jail::spawner::SpawnerClient;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Most stderr kept per process (the head and the tail are what matter).
const MAX_STDERR: usize = 16 * 1024 * 1024;

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
}

/// Progress in millionths, shared with the heartbeat task.
#[derive(Clone)]
pub struct Progress(Arc<AtomicU32>);

impl Progress {
    pub const UNKNOWN: u32 = u32::MAX;
    pub fn set(&self, fraction: f64) {
        self.0
            .store((fraction.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }
    pub fn get(&self) -> Option<f32> {
        match self.0.load(Ordering::Relaxed) {
            Self::UNKNOWN => None,
            v => Some(v as f32 / 1e6),
        }
    }
    pub fn unknown() -> Self {
        Progress(Arc::new(AtomicU32::new(Self::UNKNOWN)))
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
        write_out: bool,
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
                write_out,
                limits,
            } => {
                let args = argv.to_vec();
                let client = spawner.clone();
                let spawned = tokio::task::spawn_blocking(move || {
                    client.spawn(uid, program, &args, write_out, &limits)
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
/// (or pid namespace), killed (all of it) on timeout or cancellation. With `progress`, stdout
/// is read as FFmpeg `-progress` output against `duration_us`.
pub async fn run(
    program: &Path,
    argv: &[String],
    dir: &Path,
    timeout: Duration,
    cancel: &CancellationToken,
    progress: Option<(&Progress, u64)>,
    launch: Launch,
) -> std::io::Result<Finished> {
    let (mut child, mut stdout, mut stderr) = Running::start(program, argv, dir, launch).await?;

    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) if buf.len() < MAX_STDERR => buf.extend_from_slice(&chunk[..n]),
                Ok(_) => {}
            }
        }
        buf
    });
    let progress_owned = progress.map(|(p, d)| (p.clone(), d));
    let stdout_task = tokio::spawn(async move {
        let mut kept = Vec::new();
        match progress_owned {
            Some((p, duration_us)) => {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(v) = line
                        .strip_prefix("out_time_us=")
                        .or_else(|| line.strip_prefix("out_time_ms="))
                    {
                        if let (Ok(us), true) = (v.trim().parse::<u64>(), duration_us > 0) {
                            p.set(us as f64 / duration_us as f64);
                        }
                    } else if line == "progress=end" {
                        p.set(1.0);
                    }
                }
            }
            None => {
                let _ = (&mut stdout)
                    .take(MAX_STDERR as u64)
                    .read_to_end(&mut kept)
                    .await;
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
    child.kill();
    let stderr = stderr_task.await.unwrap_or_default();
    let stdout = stdout_task.await.unwrap_or_default();
    Ok(Finished {
        exit,
        stdout,
        stderr,
    })
}

/// Marks a probe failure that was a tripped seccomp wire.
pub const SECURITY_PREFIX: &str = "security: ";

/// Duration of a media file in microseconds, from ffprobe; `Err` carries ffprobe's complaint.
pub async fn probe_duration_us(
    ffprobe: &Path,
    dir: &Path,
    rel: &str,
    cancel: &CancellationToken,
    launch: Launch,
) -> Result<Option<u64>, String> {
    let argv: Vec<String> = [
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        mpegflow_domain::command::INPUT_FORMAT_WHITELIST,
        "-probesize",
        mpegflow_domain::command::PROBE_SIZE,
        "-show_entries",
        "format=duration",
        "-of",
        "default=nw=1:nk=1",
        rel,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let f = run(
        ffprobe,
        &argv,
        dir,
        Duration::from_secs(60),
        cancel,
        None,
        launch,
    )
    .await
    .map_err(|e| format!("cannot run ffprobe: {e}"))?;
    match f.exit {
        Exit::Code(0) => {
            let text = String::from_utf8_lossy(&f.stdout);
            Ok(text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|d| d.is_finite() && *d > 0.0)
                .map(|d| (d * 1e6) as u64))
        }
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
