//! Reserved uid/gid ranges and a host-wide allocator for them.
//!
//! Every id is leased through an exclusive `flock` on a file named after it in a root-only lock
//! directory, so all workers on a host (whatever started them) agree on who holds what, and a
//! lease dies with the process that holds it. An id is handed out only when no process runs with
//! it and no mount still carries it (a job's output file system), and the next id to try is a
//! shared round-robin counter: an id comes back only after the whole range went round.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A contiguous range of ids used as both uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub base: u32,
    pub count: u32,
}

impl IdRange {
    pub fn contains(&self, id: u32) -> bool {
        id >= self.base && id - self.base < self.count
    }
    fn end(&self) -> u64 {
        u64::from(self.base) + u64::from(self.count)
    }
    fn overlaps(&self, start: u64, len: u64) -> bool {
        start < self.end() && u64::from(self.base) < start.saturating_add(len)
    }

    /// Refuses a range that contains 0, the overflow ids, any id the host's user and group
    /// databases name, or any id delegated in `/etc/subuid`/`/etc/subgid`.
    pub fn check_against_host(&self) -> Result<(), String> {
        if self.base == 0 || self.count == 0 || self.end() > u64::from(u32::MAX - 1) {
            return Err(format!(
                "id range {}+{} must be non-empty, exclude 0 and fit below 2^32-2",
                self.base, self.count
            ));
        }
        for (file, what) in [
            ("/etc/subuid", "subordinate uids"),
            ("/etc/subgid", "subordinate gids"),
        ] {
            for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
                let f: Vec<&str> = line.trim().split(':').collect();
                if let [owner, start, len] = f[..] {
                    if let (Ok(s), Ok(l)) = (start.parse::<u64>(), len.parse::<u64>()) {
                        if self.overlaps(s, l) {
                            return Err(format!(
                                "id range {}+{} overlaps the {what} {s}+{l} of {owner:?} in {file}",
                                self.base, self.count
                            ));
                        }
                    }
                }
            }
        }
        for (file, what) in [("/etc/passwd", "user"), ("/etc/group", "group")] {
            for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
                let f: Vec<&str> = line.split(':').collect();
                if let Some(Ok(id)) = f.get(2).map(|s| s.parse::<u32>()) {
                    if self.contains(id) {
                        return Err(format!(
                            "id range {}+{} contains {what} {:?} ({id}) of {file}",
                            self.base, self.count, f[0]
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// One leased id. Dropping it (or the death of every process holding it) frees the id.
#[derive(Debug)]
pub struct Lease {
    pub id: u32,
    _lock: OwnedFd,
}

impl Lease {
    /// The lock descriptor: the id stays leased while any copy of it is open.
    pub fn into_fd(self) -> OwnedFd {
        self._lock
    }
}

/// Leases ids of one range through lock files in `dir`.
#[derive(Debug)]
pub struct IdAllocator {
    dir: OwnedFd,
    prefix: &'static str,
    range: IdRange,
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn openat(dir: &OwnedFd, name: &str, flags: i32) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    // SAFETY: openat with a valid directory fd and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn flock(fd: &OwnedFd, op: i32) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(fd.as_raw_fd(), op) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl IdAllocator {
    /// Opens (creating, root-only) the lock directory.
    pub fn open(dir: &Path, prefix: &'static str, range: IdRange) -> io::Result<IdAllocator> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(io::Error::other(format!(
                "{} must be a directory owned by root and writable only by it",
                dir.display()
            )));
        }
        let path = cstr(&dir.to_string_lossy())?;
        // SAFETY: open with a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(IdAllocator {
            // SAFETY: open just returned this descriptor.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
            prefix,
            range,
        })
    }

    pub(crate) fn dir_fd(&self) -> std::os::fd::RawFd {
        self.dir.as_raw_fd()
    }

    pub fn range(&self) -> IdRange {
        self.range
    }

    /// Leases the next free id after the shared counter.
    pub fn allocate(&self) -> io::Result<Lease> {
        let counter = openat(
            &self.dir,
            &format!("{}-next", self.prefix),
            libc::O_RDWR | libc::O_CREAT,
        )?;
        flock(&counter, libc::LOCK_EX)?;
        let mut buf = [0u8; 16];
        // SAFETY: pread into a buffer we own.
        let n = unsafe { libc::pread(counter.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let start = std::str::from_utf8(&buf[..n.max(0) as usize])
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|id| self.range.contains(*id))
            .unwrap_or(self.range.base);
        let in_use = ids_in_use();
        for i in 0..self.range.count {
            let id = self.range.base + (start - self.range.base + i) % self.range.count;
            if in_use.contains(&id) {
                continue;
            }
            let lock = openat(
                &self.dir,
                &format!("{}-{id}", self.prefix),
                libc::O_RDWR | libc::O_CREAT,
            )?;
            if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                continue;
            }
            // Checked again under the lock: a previous holder may have just let go.
            if ids_in_use().contains(&id) {
                continue;
            }
            let next = self.range.base + (id - self.range.base + 1) % self.range.count;
            let text = format!("{next}\n");
            // SAFETY: ftruncate/pwrite on a descriptor we own, from a buffer we own.
            unsafe {
                libc::ftruncate(counter.as_raw_fd(), 0);
                libc::pwrite(counter.as_raw_fd(), text.as_ptr().cast(), text.len(), 0);
            }
            return Ok(Lease { id, _lock: lock });
        }
        Err(io::Error::other(format!(
            "every id of {}+{} is in use",
            self.range.base, self.range.count
        )))
    }
}

/// Every uid and gid that a process runs with or a mount carries (`uid=`/`gid=` options).
pub fn ids_in_use() -> std::collections::HashSet<u32> {
    let mut ids = std::collections::HashSet::new();
    each_process_id(|id| {
        ids.insert(id);
        false
    });
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        for opt in line.split([' ', ',']) {
            if let Some(v) = opt
                .strip_prefix("uid=")
                .or_else(|| opt.strip_prefix("gid="))
            {
                if let Ok(id) = v.parse() {
                    ids.insert(id);
                }
            }
        }
    }
    ids
}

/// Whether any process runs with `id` as a real, effective, saved or file-system uid or gid
/// (true when `/proc` cannot be read: an id is only free when it is known to be).
pub fn processes_with(id: u32) -> bool {
    let mut found = false;
    let readable = each_process_id(|seen| {
        found = seen == id;
        found
    });
    found || !readable
}

/// Calls `visit` with every uid and gid of every process until it returns true; false when
/// `/proc` cannot be read at all.
fn each_process_id(mut visit: impl FnMut(u32) -> bool) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    for e in dir.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            let Some(rest) = line
                .strip_prefix("Uid:")
                .or_else(|| line.strip_prefix("Gid:"))
            else {
                continue;
            };
            for id in rest
                .split_whitespace()
                .filter_map(|v| v.parse::<u32>().ok())
            {
                if visit(id) {
                    return true;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_refuse_zero_and_overflow() {
        assert!(IdRange { base: 0, count: 10 }.check_against_host().is_err());
        assert!(IdRange {
            base: u32::MAX - 5,
            count: 10
        }
        .check_against_host()
        .is_err());
        assert!(IdRange { base: 5, count: 0 }.check_against_host().is_err());
        // root (0) and nobody (65534) are in /etc/passwd on every host we run on.
        assert!(IdRange {
            base: 65_000,
            count: 1000
        }
        .check_against_host()
        .is_err());
    }

    #[test]
    fn containment_is_half_open() {
        let r = IdRange {
            base: 100,
            count: 10,
        };
        assert!(!r.contains(99) && r.contains(100) && r.contains(109) && !r.contains(110));
        assert!(
            r.overlaps(105, 1) && r.overlaps(50, 51) && !r.overlaps(50, 50) && !r.overlaps(110, 5)
        );
    }
}
