//! A private PostgreSQL cluster under a directory: `initdb` once, `pg_ctl start` on a loopback
//! port, `pg_ctl stop` at the end. When this process runs as root the cluster runs as the
//! `postgres` user (initdb refuses root) and its files stay unreadable to everyone else.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Cluster {
    pub data: PathBuf,
    pub port: u16,
    pub url: String,
    pg_ctl: PathBuf,
    owner: Option<(u32, u32)>,
}

/// uid and gid of a user, from the password database.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy two integers out
    // before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds a PostgreSQL server binary on PATH or in Debian's versioned directories.
pub fn find_bin(name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
        {
            return Some(p);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.is_file())
}

/// A free TCP port on loopback (bound and released; the race is acceptable for local use).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn chown_r(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_r(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

impl Cluster {
    /// Initialises (if needed) and starts a cluster in `dir`; `tuned_for_tests` turns off
    /// durability for speed.
    pub fn start(dir: &Path, port: Option<u16>, tuned_for_tests: bool) -> Result<Cluster> {
        let initdb = find_bin("initdb").context("initdb not found: install postgresql")?;
        let pg_ctl = find_bin("pg_ctl").context("pg_ctl not found: install postgresql")?;
        let owner = if is_root() {
            Some(
                lookup_user("postgres")
                    .context("running as root needs a 'postgres' user to own the cluster")?,
            )
        } else {
            None
        };
        let data = dir.join("pgdata");
        let password_file = dir.join("pg-password");
        std::fs::create_dir_all(dir)?;
        if owner.is_some() {
            // postgres must traverse `dir` to reach its data directory, but not list it.
            let mode = std::fs::metadata(dir)?.permissions().mode();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o711))?;
        }
        if !data.join("PG_VERSION").exists() {
            let password = hex::encode(rand_bytes());
            std::fs::write(&password_file, &password)?;
            std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))?;
            std::fs::create_dir_all(&data)?;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
            let pw_for_initdb = data.join("..").join("pgdata-initpw");
            std::fs::write(&pw_for_initdb, &password)?;
            if let Some((uid, gid)) = owner {
                chown_r(&data, uid, gid)?;
                std::os::unix::fs::chown(&pw_for_initdb, Some(uid), Some(gid))?;
            }
            let mut cmd = Command::new(&initdb);
            cmd.arg("-D").arg(&data).args([
                "-U",
                "mpegflow",
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ]);
            cmd.arg(format!("--pwfile={}", pw_for_initdb.display()));
            let out = as_owner(&mut cmd, owner)
                .stdin(Stdio::null())
                .output()
                .context("running initdb")?;
            let _ = std::fs::remove_file(&pw_for_initdb);
            if !out.status.success() {
                bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        } else if let Some((uid, _)) = owner {
            if std::fs::metadata(&data)?.uid() != uid {
                bail!("{} is not owned by the postgres user", data.display());
            }
        }
        recover_leftover_server(&data, &pg_ctl, owner)?;
        let password =
            std::fs::read_to_string(&password_file).context("reading the cluster password")?;
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut opts = format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200");
        if tuned_for_tests {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = data.join("server.log");
        let mut cmd = Command::new(&pg_ctl);
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        let out = as_owner(&mut cmd, owner)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            );
        }
        let url = format!(
            "postgres://mpegflow:{}@127.0.0.1:{port}/postgres",
            password.trim()
        );
        Ok(Cluster {
            data,
            port,
            url,
            pg_ctl,
            owner,
        })
    }

    /// URL of another database on this cluster.
    pub fn database_url(&self, db: &str) -> String {
        self.url
            .rsplit_once('/')
            .map(|(base, _)| format!("{base}/{db}"))
            .unwrap_or_else(|| self.url.clone())
    }

    pub fn stop(&self) {
        let mut cmd = Command::new(&self.pg_ctl);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        let _ = as_owner(&mut cmd, self.owner)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether process `pid` is a postmaster serving the data directory `data`.
fn postmaster_of(pid: i32, data: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&std::ffi::OsStr> = cmdline
        .split(|b| *b == 0)
        .map(std::ffi::OsStr::from_bytes)
        .collect();
    let is_postgres = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "postgres");
    let ours = std::fs::canonicalize(data).ok();
    is_postgres
        && args
            .windows(2)
            .any(|w| w[0] == "-D" && ours.is_some() && std::fs::canonicalize(w[1]).ok() == ours)
}

/// Deals with a `postmaster.pid` left by an earlier run (the caller makes sure no live run
/// uses `data`): a server still running on `data` (orphaned when the run that started it was
/// killed) is stopped; a file naming a dead process, or one that is not a postmaster of `data`
/// (pids are reused), is stale and removed, so that the start does not fail with "another
/// server might be running".
fn recover_leftover_server(data: &Path, pg_ctl: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let pid_file = data.join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let pid = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .filter(|p| *p > 0);
    if let Some(pid) = pid.filter(|p| postmaster_of(*p, data)) {
        tracing::warn!(
            pid,
            data = %data.display(),
            "stopping the PostgreSQL server an earlier run left running"
        );
        let mut cmd = Command::new(pg_ctl);
        cmd.arg("-D")
            .arg(data)
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        let _ = as_owner(&mut cmd, owner)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if postmaster_of(pid, data) {
            bail!(
                "PostgreSQL (pid {pid}) left running on {} by an earlier run did not stop; stop it (`kill {pid}`) and try again",
                data.display()
            );
        }
        return Ok(());
    }
    tracing::warn!(
        file = %pid_file.display(),
        "removing the stale lock file of a PostgreSQL server that is no longer running"
    );
    std::fs::remove_file(&pid_file)
        .with_context(|| format!("removing the stale {}", pid_file.display()))?;
    Ok(())
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        // std drops supplementary groups when it changes uid as root.
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
    cmd
}

fn rand_bytes() -> [u8; 24] {
    let mut b = [0u8; 24];
    let f = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    f.expect("/dev/urandom is readable");
    b
}
