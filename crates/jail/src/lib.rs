//! A per-process jail for FFmpeg and ffprobe that holds even when the jailed program is fully
//! compromised. It works without root (an ordinary Kubernetes pod: non-root, no capabilities)
//! and adds namespaces and a per-job uid when it does run as root.
//!
//! Everything that allocates is built in the parent ([`Jail::new`], [`Jail::prepare`]); the
//! child, between fork and exec, only makes raw system calls, in this order:
//!
//! 1. parent-death signal (SIGKILL), so a jailed process never outlives its worker;
//! 2. every inherited descriptor above stderr marked close-on-exec;
//! 3. rlimits: address space, CPU seconds, file size, open files, processes, no core dumps;
//! 4. as root only: new network/IPC/UTS/mount namespaces, then the per-job uid/gid, no groups
//!    (started by the privileged spawn helper, [`spawner`], inside a new pid namespace);
//! 5. `no_new_privs`;
//! 6. Landlock: execute only the program and its dynamic loader, read system libraries, fonts
//!    (fontconfig's configuration, fonts and cache) and the declared read paths, write only the declared write paths; no TCP bind/connect (ABI ≥ 4);
//!    no signals or abstract sockets outside the jail (ABI ≥ 6);
//! 7. seccomp, last (an allowlist blocks the `seccomp` call any later filter would need).
//!
//! Signals never leave the job, on any kernel: seccomp confines every signalling route to the
//! process's own thread group (see `seccomp.rs`), and Landlock's scoping (ABI ≥ 6) adds a
//! second wall where the kernel has it. [`Layers::landlock_abi_max`] models an older kernel.
//!
//! The seccomp policy is four stacked filters; the kernel applies the most restrictive answer:
//! a *tripwire* that kills the process (SIGSYS) on syscalls no transcode makes — sockets,
//! ptrace, process_vm_*, mount, namespaces, io_uring, bpf, new processes (fork, vfork, clone
//! without CLONE_THREAD) and the like; an *allowlist* of what FFmpeg needs, answering EPERM to
//! anything else; `clone3` → ENOSYS so glibc falls back to `clone`, whose flags the
//! tripwire can inspect; and `tgkill` only to the process's own tgid, a filter the child
//! builds on its stack from `getpid()` (the one value the parent cannot know before fork).

mod elf;
pub mod ids;
pub mod privilege;
mod seccomp;
pub mod spawner;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use seccomp::{ALLOWED_SYSCALLS, TRIPWIRE_SYSCALLS};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "Landlock is not available (kernel ABI {0}); file-system confinement cannot be enforced"
    )]
    LandlockUnavailable(i32),
    #[error("Landlock ruleset: {0}")]
    Landlock(String),
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    #[error("{path}: {source}")]
    Path { path: PathBuf, source: io::Error },
    #[error("{0} is not an ELF executable we can read")]
    NotElf(PathBuf),
}

/// Resource limits for one jailed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space (RLIMIT_AS). Generous: glibc reserves 64 MiB per thread arena.
    pub address_space_bytes: u64,
    /// CPU seconds (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL one second later.
    pub cpu_seconds: u64,
    /// Largest file it may write (RLIMIT_FSIZE): SIGXFSZ past it.
    pub file_size_bytes: u64,
    pub open_files: u64,
    /// Processes and threads of its uid (RLIMIT_NPROC); meaningful with a per-job uid.
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            address_space_bytes: 4 << 30,
            cpu_seconds: 4 * 3600,
            file_size_bytes: 10 << 30,
            open_files: 256,
            processes: 512,
        }
    }
}

/// Which layers to build. Everything on is the only safe setting; switching one off exists so
/// that the worker's start-up self-test can be shown to catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    pub landlock: bool,
    pub seccomp: bool,
    /// Use at most this Landlock ABI even if the kernel offers more, to run as on an older
    /// kernel (e.g. 2 for Debian 12's 6.1) and show the jail holds there too.
    pub landlock_abi_max: Option<i32>,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            landlock: true,
            seccomp: true,
            landlock_abi_max: None,
        }
    }
}

/// What one jailed process may touch.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Read-only files or directories (inputs).
    pub read: Vec<PathBuf>,
    /// Read-write directories (outputs).
    pub write: Vec<PathBuf>,
    pub limits: Limits,
    /// As root: run as this uid/gid, in new network/IPC/UTS namespaces.
    pub identity: Option<(u32, u32)>,
}

/// The jail, built once per worker: kernel capabilities found, seccomp compiled.
#[derive(Debug, Clone)]
pub struct Jail {
    abi: ABI,
    abi_version: i32,
    layers: Layers,
    filters: Option<Arc<seccomp::Compiled>>,
    system_read: Vec<PathBuf>,
}

/// The Landlock ABI this kernel offers (0 when Landlock is off).
pub fn landlock_abi_version() -> i32 {
    // SAFETY: landlock_create_ruleset with a null attr and the VERSION flag only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    v as i32
}

/// What the kernel enforces of each layer, for logs and the security documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    pub landlock_abi: i32,
    pub landlock_fs: bool,
    pub landlock_tcp: bool,
    pub landlock_scopes: bool,
    pub seccomp: bool,
}

impl Jail {
    pub fn new(layers: Layers) -> Result<Jail, JailError> {
        let kernel_abi = landlock_abi_version();
        let abi_version = match layers.landlock_abi_max {
            Some(max) => kernel_abi.min(max),
            None => kernel_abi,
        };
        if layers.landlock && abi_version < 1 {
            return Err(JailError::LandlockUnavailable(abi_version));
        }
        let filters = if layers.seccomp {
            Some(Arc::new(seccomp::compile().map_err(JailError::Seccomp)?))
        } else {
            None
        };
        let mut system_read = Vec::new();
        for p in [
            "/usr/lib",
            "/lib",
            "/lib64",
            "/usr/lib64",
            "/etc/ld.so.cache",
            "/dev/urandom",
            "/dev/null",
            // Fonts for libass (subtitles=/ass=): fontconfig's configuration (its conf.d links
            // point into /usr/share/fontconfig), the fonts, and the cache fc-cache built. Read
            // only: a cache fontconfig wants to write fails, and it goes on without one.
            "/etc/fonts",
            "/usr/share/fontconfig",
            "/usr/share/fonts",
            "/var/cache/fontconfig",
        ] {
            if let Ok(c) = std::fs::canonicalize(p) {
                if !system_read.contains(&c) {
                    system_read.push(c);
                }
            }
        }
        Ok(Jail {
            abi: ABI::from(abi_version),
            abi_version,
            layers,
            filters,
            system_read,
        })
    }

    pub fn enforcement(&self) -> Enforcement {
        Enforcement {
            landlock_abi: self.abi_version,
            landlock_fs: self.layers.landlock && self.abi_version >= 1,
            landlock_tcp: self.layers.landlock && self.abi_version >= 4,
            landlock_scopes: self.layers.landlock && self.abi_version >= 6,
            seccomp: self.layers.seccomp,
        }
    }

    /// Builds, in the parent, everything the child needs to confine itself before running
    /// `program` under `policy`.
    pub fn prepare(&self, program: &Path, policy: &Policy) -> Result<Prepared, JailError> {
        let ruleset = if self.layers.landlock {
            Some(self.ruleset(program, policy)?)
        } else {
            None
        };
        let mut rlimits = [
            (
                libc::RLIMIT_AS,
                policy.limits.address_space_bytes,
                policy.limits.address_space_bytes,
            ),
            (
                libc::RLIMIT_CPU,
                policy.limits.cpu_seconds,
                policy.limits.cpu_seconds.saturating_add(1),
            ),
            (
                libc::RLIMIT_FSIZE,
                policy.limits.file_size_bytes,
                policy.limits.file_size_bytes,
            ),
            (
                libc::RLIMIT_NOFILE,
                policy.limits.open_files,
                policy.limits.open_files,
            ),
            (
                libc::RLIMIT_NPROC,
                policy.limits.processes,
                policy.limits.processes,
            ),
            (libc::RLIMIT_CORE, 0, 0),
        ];
        // Never raise a hard limit we were given (that would fail for a non-root worker).
        for (res, soft, hard) in rlimits.iter_mut() {
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit fills the struct we own.
            if unsafe { libc::getrlimit(*res, &mut cur) } == 0 {
                *hard = (*hard).min(cur.rlim_max);
                *soft = (*soft).min(*hard);
            }
        }
        Ok(Prepared {
            ruleset,
            filters: self.filters.clone(),
            rlimits,
            identity: policy.identity,
            landlock_required: self.layers.landlock,
        })
    }

    fn ruleset(&self, program: &Path, policy: &Policy) -> Result<OwnedFd, JailError> {
        let ll = |e: landlock::RulesetError| JailError::Landlock(e.to_string());
        let path_fd = |p: &Path| {
            PathFd::new(p).map_err(|e| JailError::Path {
                path: p.to_owned(),
                source: io::Error::other(e.to_string()),
            })
        };
        let abi = self.abi;
        let all = AccessFs::from_all(abi);
        let read_files: BitFlags<AccessFs> = AccessFs::ReadFile.into();
        let read_dirs = AccessFs::ReadFile | AccessFs::ReadDir;
        let write_dirs = AccessFs::from_write(abi)
            & !(AccessFs::Execute
                | AccessFs::MakeSym
                | AccessFs::MakeChar
                | AccessFs::MakeBlock
                | AccessFs::MakeSock
                | AccessFs::MakeFifo)
            | read_dirs;

        let mut ruleset = Ruleset::default().handle_access(all).map_err(ll)?;
        let net = AccessNet::from_all(abi);
        if !net.is_empty() {
            ruleset = ruleset.handle_access(net).map_err(ll)?;
        }
        let scopes = Scope::from_all(abi);
        if !scopes.is_empty() {
            ruleset = ruleset.scope(scopes).map_err(ll)?;
        }
        let mut created = ruleset.create().map_err(ll)?;

        let program = std::fs::canonicalize(program).map_err(|e| JailError::Path {
            path: program.to_owned(),
            source: e,
        })?;
        let mut exec = vec![program.clone()];
        if let Some(interp) =
            elf::interpreter(&program).map_err(|_| JailError::NotElf(program.clone()))?
        {
            exec.push(std::fs::canonicalize(&interp).map_err(|e| JailError::Path {
                path: interp,
                source: e,
            })?);
        }
        for p in &exec {
            created = created
                .add_rule(PathBeneath::new(
                    path_fd(p)?,
                    AccessFs::Execute | AccessFs::ReadFile,
                ))
                .map_err(ll)?;
        }
        for p in &self.system_read {
            let access = if p.is_dir() { read_dirs } else { read_files };
            created = created
                .add_rule(PathBeneath::new(path_fd(p)?, access))
                .map_err(ll)?;
        }
        for p in &policy.read {
            let access = if p.is_dir() { read_dirs } else { read_files };
            created = created
                .add_rule(PathBeneath::new(path_fd(p)?, access))
                .map_err(ll)?;
        }
        for p in &policy.write {
            created = created
                .add_rule(PathBeneath::new(path_fd(p)?, write_dirs))
                .map_err(ll)?;
        }
        let fd: Option<OwnedFd> = created.into();
        fd.ok_or_else(|| JailError::Landlock("the kernel did not create a ruleset".into()))
    }
}

/// Everything the child applies between fork and exec.
#[derive(Debug)]
pub struct Prepared {
    ruleset: Option<OwnedFd>,
    filters: Option<Arc<seccomp::Compiled>>,
    rlimits: [(libc::__rlimit_resource_t, u64, u64); 6],
    identity: Option<(u32, u32)>,
    landlock_required: bool,
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Prepared {
    /// Confines the calling process. Call only in a child between fork and exec: it makes raw
    /// system calls and does not allocate.
    ///
    /// # Safety
    /// Must run in a freshly forked child (e.g. from `CommandExt::pre_exec`).
    pub unsafe fn apply(&self) -> io::Result<()> {
        // 1. Die with the parent.
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) as libc::c_long)?;
        // 2. Inherited descriptors close at exec (std's own error pipe must live until then).
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            for fd in 3..4096 {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        // 3. Resource limits.
        for (res, soft, hard) in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            check(libc::setrlimit(*res, &lim) as libc::c_long)?;
        }
        // 4. Root only: fresh namespaces, then the per-job identity. (The spawn helper also
        //    starts each job in its own pid namespace, one level up.)
        if let Some((uid, gid)) = self.identity {
            check(libc::unshare(
                libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNS,
            ) as libc::c_long)?;
            // Mounts made later on the host (other jobs' out/) do not propagate in here.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as libc::c_long)?;
            check(libc::setgroups(0, std::ptr::null()) as libc::c_long)?;
            check(libc::setresgid(gid, gid, gid) as libc::c_long)?;
            check(libc::setresuid(uid, uid, uid) as libc::c_long)?;
        }
        // 5. No privilege gain through exec.
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
        // 6. Landlock.
        match &self.ruleset {
            Some(fd) => check(libc::syscall(
                libc::SYS_landlock_restrict_self,
                fd.as_raw_fd(),
                0u32,
            ))?,
            None if self.landlock_required => {
                return Err(io::Error::from_raw_os_error(libc::EPERM))
            }
            None => {}
        }
        // 7. seccomp, last.
        if let Some(filters) = &self.filters {
            filters.apply()?;
        }
        Ok(())
    }
}
