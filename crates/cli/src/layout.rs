//! Where `up` keeps its files, and the guard that one `up` at a time uses a data directory.
//!
//! As root, PostgreSQL runs as the `postgres` user and each worker (and each job) as a uid of
//! its own: they must be able to *traverse* every directory above their files. A data
//! directory under a mode-0700 parent (root's home, a `mktemp -d`) is out of their reach. Rather
//! than open the user's directories to everyone, [`Layout::resolve`] then places the files
//! other uids need (the cluster and the workers' directories) under [`SHARED_ROOT`], in a
//! directory of this data directory's own (root's, mode 0711: traversable, not listable), and
//! leaves a `shared` link to it in the data directory.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where files other uids must reach go when the data directory is out of their reach.
pub const SHARED_ROOT: &str = "/var/lib/mpegflow";

/// The name of the link, in the data directory, to its shared directory.
pub const SHARED_LINK: &str = "shared";

#[derive(Debug, Clone)]
pub struct Layout {
    /// The directory holding `pg/` and `work/`: the data directory itself, or its directory
    /// under [`SHARED_ROOT`].
    pub shared: PathBuf,
    /// Why the files are not in the data directory: the first directory above it that others
    /// cannot traverse.
    pub placed_because: Option<PathBuf>,
}

/// The first directory in `path` (itself excluded) that users other than its owner cannot
/// traverse (no `o+x`; ACLs are not consulted, so a directory opened by an ACL only is still
/// reported).
pub fn first_closed_ancestor(path: &Path) -> Result<Option<PathBuf>> {
    let path =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        if meta.permissions().mode() & 0o001 == 0 {
            return Ok(Some(dir.to_owned()));
        }
    }
    Ok(None)
}

impl Layout {
    /// Decides where the files other uids must reach live (see the module docs). `with_cluster`
    /// says whether a private PostgreSQL cluster will be used.
    pub fn resolve(data_dir: &Path, with_cluster: bool) -> Result<Layout> {
        let in_place = Layout {
            shared: data_dir.to_owned(),
            placed_because: None,
        };
        if !crate::pg::is_root() {
            return Ok(in_place);
        }
        let Some(closed) = first_closed_ancestor(data_dir)? else {
            return Ok(in_place);
        };
        let canonical = std::fs::canonicalize(data_dir)?;
        let cluster_in_place = data_dir.join("pg").join("pgdata").join("PG_VERSION");
        if with_cluster && cluster_in_place.exists() {
            bail!(
                "the PostgreSQL cluster in {} is out of the postgres user's reach: {} (mode {:04o}) \
                 cannot be traversed by other users. Either allow traversal (`chmod o+x {}`; it \
                 lets others pass through, not list it), or move the cluster to where `up` now \
                 keeps it: `mkdir -p {} && mv {} {}`",
                data_dir.join("pg").display(),
                closed.display(),
                std::fs::metadata(&closed)?.mode() & 0o7777,
                closed.display(),
                Self::shared_dir_for(&canonical).display(),
                data_dir.join("pg").display(),
                Self::shared_dir_for(&canonical).join("pg").display(),
            );
        }
        let shared = Self::shared_dir_for(&canonical);
        let root = Path::new(SHARED_ROOT);
        for dir in [root, shared.as_path()] {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "creating {} (the data directory {} is under {}, which other users cannot \
                     traverse; give a data directory they can reach, e.g. under /srv or /var/lib)",
                    dir.display(),
                    data_dir.display(),
                    closed.display()
                )
            })?;
            let meta = std::fs::symlink_metadata(dir)?;
            if !meta.is_dir() || meta.uid() != 0 {
                bail!(
                    "{} must be a directory owned by root (it holds files of every data directory placed there)",
                    dir.display()
                );
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        }
        if let Some(blocked) = first_closed_ancestor(&shared)? {
            bail!(
                "{} is not traversable by other users either ({} blocks it); give a data \
                 directory they can reach, or `chmod o+x {}`",
                shared.display(),
                blocked.display(),
                blocked.display()
            );
        }
        let link = data_dir.join(SHARED_LINK);
        match std::fs::read_link(&link) {
            Ok(target) if target == shared => {}
            Ok(_) => {
                std::fs::remove_file(&link)?;
                std::os::unix::fs::symlink(&shared, &link)?;
            }
            Err(_) if link.symlink_metadata().is_ok() => {
                bail!("{} exists and is not a link; move it away", link.display())
            }
            Err(_) => std::os::unix::fs::symlink(&shared, &link)?,
        }
        tracing::info!(
            shared = %shared.display(),
            closed = %closed.display(),
            "PostgreSQL's files and the workers' directories are kept outside the data directory: \
             the postgres user and worker uids cannot traverse {} (`chmod o+x` it to keep them inside)",
            closed.display()
        );
        Ok(Layout {
            shared,
            placed_because: Some(closed),
        })
    }

    /// `SHARED_ROOT/<name>-<hash of the path>`: stable for a data directory, distinct per path.
    fn shared_dir_for(canonical_data_dir: &Path) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let digest = Sha256::digest(canonical_data_dir.as_os_str().as_bytes());
        let name: String = canonical_data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        Path::new(SHARED_ROOT).join(format!("{name}-{}", &hex::encode(digest)[..16]))
    }

    /// The private cluster's directory.
    pub fn pg_dir(&self) -> PathBuf {
        self.shared.join("pg")
    }

    /// The parent of every worker's work directory.
    pub fn work_root(&self) -> PathBuf {
        self.shared.join("work")
    }
}

/// An exclusive lock on a data directory (`DIR/up.lock`), held while a platform runs on it.
/// The kernel releases it when the process dies, however it dies.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Whether a platform holds the lock on `data_dir` now. (It takes a shared lock for an
    /// instant when none is held: an `up` starting in that instant is refused and can retry.)
    /// The pid of the `up` holding the lock on `data_dir` (as it wrote it in the lock file;
    /// 0 while it has not yet), or `None` when nothing holds it.
    pub fn held_by(data_dir: &Path) -> Result<Option<u32>> {
        if !Self::is_held(data_dir)? {
            return Ok(None);
        }
        let text = std::fs::read_to_string(data_dir.join("up.lock")).unwrap_or_default();
        Ok(Some(text.trim().parse().unwrap_or(0)))
    }

    pub fn is_held(data_dir: &Path) -> Result<bool> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("up.lock");
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Ok(false); // released when `file` closes
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(true);
        }
        Err(e).with_context(|| format!("locking {}", path.display()))
    }

    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("up.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another `mpegflow up` (pid {}) is using the data directory {}; stop it first, or give another --data-dir",
                holder.trim(),
                data_dir.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(DataDirLock { _file: file })
    }
}

/// Stops worker processes an earlier run on this layout left behind (a run killed before it
/// could stop them): processes whose `--work-dir` is a directory under `work_root`.
pub fn stop_orphan_workers(work_root: &Path) {
    let orphans = orphan_workers(work_root);
    if orphans.is_empty() {
        return;
    }
    tracing::warn!(?orphans, "stopping workers an earlier run left running");
    for &pid in &orphans {
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && !orphan_workers(work_root).is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for pid in orphan_workers(work_root) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Pids of processes started with `--work-dir <work_root>/…`.
pub fn orphan_workers(work_root: &Path) -> Vec<i32> {
    processes_with_work_dir(|dir| dir.parent() == Some(work_root))
}

/// Reclaims the work directory of a worker that exited: stops what of it still runs (its
/// spawn helper, a fork with its arguments) and removes the directory with the files of its
/// jobs (as root, whatever uid owns them).
pub fn reclaim_work_dir(work_dir: &Path) {
    let left = || processes_with_work_dir(|dir| dir == work_dir);
    let wait = |secs| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline && !left().is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // A dead worker's spawn helper sees its socket close and ends its jobs itself (killing
    // their namespaces, unmounting their out/): let it, then kill what is left.
    wait(5);
    for pid in left() {
        // SAFETY: kill takes plain integers; the process works in the directory we reclaim.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait(5);
    // A helper killed before it could unmount leaves a job's tmpfs on its out/.
    detach_mounts_under(work_dir);
    match std::fs::remove_dir_all(work_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            "removing the work directory {} of a worker that exited: {e}",
            work_dir.display()
        ),
    }
}

/// Detaches every mount at or below `dir` (deepest first), from this mount namespace.
fn detach_mounts_under(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    // mountinfo names mount points by their resolved paths: compare like with like.
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // Field 5 is the mount point, with space, tab, newline and backslash as octal escapes.
    let unescape = |s: &str| {
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: a NUL-terminated path; detaching is all this does, and a link swapped in
        // for the mount point's last component is not followed.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } != 0 {
            tracing::warn!(
                "detaching {} under a dead worker's work directory: {}",
                p.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Pids of processes (other than this one) started with a `--work-dir` argument `is_ours`
/// accepts.
fn processes_with_work_dir(is_ours: impl Fn(&Path) -> bool) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2).any(|w| {
                w[0] == b"--work-dir" && is_ours(Path::new(std::ffi::OsStr::from_bytes(w[1])))
            })
        })
        .collect()
}

/// Removes the work directories of earlier runs (their workers are gone: see
/// [`stop_orphan_workers`]); each run gives its workers fresh ones.
pub fn remove_old_work_dirs(work_root: &Path) {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let removed = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(err) = removed {
            tracing::warn!(
                "removing an earlier run's work directory {}: {err}",
                path.display()
            );
        }
    }
}
