//! The seccomp policy, compiled once in the parent, plus one tiny filter the child builds on its
//! stack (it needs the child's own pid, which the parent cannot know before fork).
//!
//! Signals: no route may reach a process outside the jailed thread group. `kill`, `tkill`,
//! `rt_sigqueueinfo`, `rt_tgsigqueueinfo` and `pidfd_send_signal` are off the allowlist (EPERM);
//! `pidfd_open` is a tripwire; `tgkill`, which glibc's `raise`/`abort`/`pthread_kill` need, is
//! allowed only with the process's own tgid as its first argument (the kernel then refuses any
//! tid outside that thread group); `fcntl` is narrowed to the commands FFmpeg and glibc use, so
//! `F_SETOWN`, `F_SETOWN_EX`, `F_SETSIG` and `O_ASYNC` (SIGIO to a chosen process) are refused;
//! `ioctl` is narrowed to terminal queries, so `FIOSETOWN`, `SIOCSPGRP` and `FIOASYNC` are too.
//! This holds on every kernel, with or without Landlock's signal scoping (ABI ≥ 6).

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => { &[$((stringify!($name), libc::$name)),*] };
}

/// What FFmpeg and ffprobe need for ordinary transcodes (x264/aac, vp9/opus, HLS, thumbnails),
/// measured with strace, plus what glibc and the dynamic loader use at start-up. `prctl`,
/// `prlimit64` and `ioctl` are narrowed by argument below.
pub const ALLOWED_SYSCALLS: &[(&str, libc::c_long)] = syscalls![
    SYS_read,
    SYS_write,
    SYS_readv,
    SYS_writev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_lseek,
    SYS_close,
    SYS_openat,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_statfs,
    SYS_fstatfs,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_getdents64,
    SYS_readlinkat,
    SYS_getcwd,
    SYS_fcntl,
    SYS_dup,
    SYS_dup3,
    SYS_ftruncate,
    SYS_fsync,
    SYS_fdatasync,
    SYS_unlinkat,
    SYS_renameat,
    SYS_renameat2,
    SYS_mkdirat,
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_brk,
    SYS_madvise,
    SYS_mlock,
    SYS_munlock,
    SYS_get_mempolicy,
    SYS_set_mempolicy,
    SYS_membarrier,
    SYS_futex,
    SYS_set_robust_list,
    SYS_get_robust_list,
    SYS_rseq,
    SYS_set_tid_address,
    SYS_clone,
    SYS_clone3,
    SYS_exit,
    SYS_exit_group,
    SYS_execve,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_tgkill,
    SYS_gettid,
    SYS_getpid,
    SYS_getppid,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_getresuid,
    SYS_getresgid,
    SYS_getrusage,
    SYS_prlimit64,
    SYS_sched_getaffinity,
    SYS_sched_yield,
    SYS_sched_getparam,
    SYS_sched_getscheduler,
    SYS_nanosleep,
    SYS_clock_nanosleep,
    SYS_clock_gettime,
    SYS_clock_getres,
    SYS_gettimeofday,
    SYS_uname,
    SYS_sysinfo,
    SYS_getrandom,
    SYS_prctl,
    SYS_ioctl,
    SYS_ppoll,
    SYS_pselect6,
];

#[cfg(target_arch = "x86_64")]
const ALLOWED_ARCH: &[(&str, libc::c_long)] = syscalls![
    SYS_open,
    SYS_stat,
    SYS_lstat,
    SYS_access,
    SYS_readlink,
    SYS_arch_prctl,
    SYS_time,
    SYS_poll,
    SYS_unlink,
    SYS_rename,
    SYS_mkdir,
    SYS_dup2,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_ARCH: &[(&str, libc::c_long)] = &[];

/// Syscalls no transcode makes and every escape wants: making one kills the process with
/// SIGSYS, which the worker reports as a security violation.
pub const TRIPWIRE_SYSCALLS: &[(&str, libc::c_long)] = syscalls![
    SYS_socket,
    SYS_socketpair,
    SYS_connect,
    SYS_bind,
    SYS_listen,
    SYS_accept,
    SYS_accept4,
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_process_madvise,
    SYS_pidfd_open,
    SYS_pidfd_getfd,
    SYS_mount,
    SYS_umount2,
    SYS_move_mount,
    SYS_fsopen,
    SYS_fsmount,
    SYS_fspick,
    SYS_open_tree,
    SYS_pivot_root,
    SYS_chroot,
    SYS_unshare,
    SYS_setns,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_bpf,
    SYS_perf_event_open,
    SYS_userfaultfd,
    SYS_execveat,
    SYS_kexec_load,
    SYS_kexec_file_load,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_keyctl,
    SYS_add_key,
    SYS_request_key,
    SYS_open_by_handle_at,
    SYS_name_to_handle_at,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_swapon,
    SYS_swapoff,
    SYS_reboot,
    SYS_acct,
    SYS_quotactl,
];

#[cfg(target_arch = "x86_64")]
const TRIPWIRE_ARCH: &[(&str, libc::c_long)] = syscalls![SYS_fork, SYS_vfork];
#[cfg(not(target_arch = "x86_64"))]
const TRIPWIRE_ARCH: &[(&str, libc::c_long)] = &[];

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("{e:?}"))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn rules_any_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, String> {
    values
        .iter()
        .map(|v| {
            SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)?]).map_err(|e| e.to_string())
        })
        .collect()
}

fn program(filter: SeccompFilter) -> Result<BpfProgram, String> {
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// The compiled filters. Installed by [`Compiled::apply`] in this order: clone3 → ENOSYS, the
/// tripwire, the own-process `tgkill` filter, the allowlist (last, since it refuses the
/// `seccomp` call itself).
#[derive(Debug)]
pub struct Compiled {
    clone3: BpfProgram,
    tripwire: BpfProgram,
    allowlist: BpfProgram,
}

/// Offsets into `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LO: u32 = 16;
const DATA_ARG0_HI: u32 = 20;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Length of [`own_tgkill_filter`].
pub const OWN_TGKILL_LEN: usize = 11;

/// `tgkill(tgid, …)` is allowed only when `tgid` is exactly `pid` (all 64 bits: the kernel
/// truncates to `int`, so high bits must not smuggle another pid through); anything else is
/// EPERM. Other syscalls pass to the other filters. Built on the stack, without allocating.
pub const fn own_tgkill_filter(pid: u32) -> [libc::sock_filter; OWN_TGKILL_LEN] {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let ld = BPF_LD | BPF_W | BPF_ABS;
    let jeq = BPF_JMP | BPF_JEQ | BPF_K;
    let ret = BPF_RET | BPF_K;
    [
        /* 0 */ stmt(ld, DATA_ARCH),
        /* 1 */ jump(jeq, AUDIT_ARCH, 0, 8), // other ABI → kill (10)
        /* 2 */ stmt(ld, DATA_NR),
        /* 3 */ jump(jeq, libc::SYS_tgkill as u32, 0, 4), // not tgkill → allow (8)
        /* 4 */ stmt(ld, DATA_ARG0_LO),
        /* 5 */ jump(jeq, pid, 0, 3), // other pid → EPERM (9)
        /* 6 */ stmt(ld, DATA_ARG0_HI),
        /* 7 */ jump(jeq, 0, 0, 1), // high bits set → EPERM (9)
        /* 8 */ stmt(ret, libc::SECCOMP_RET_ALLOW),
        /* 9 */ stmt(ret, libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32)),
        /* 10 */ stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// Installs one filter. Raw syscall: no allocation, safe between fork and exec.
///
/// # Safety
/// `prog` must be a valid classic-BPF program.
unsafe fn install(prog: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let rc = libc::syscall(
        libc::SYS_seccomp,
        libc::SECCOMP_SET_MODE_FILTER,
        0u32,
        &fprog as *const libc::sock_fprog,
    );
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn as_raw(prog: &BpfProgram) -> &[libc::sock_filter] {
    // SAFETY: seccompiler's `sock_filter` is `#[repr(C)]` with the kernel's layout, the same as
    // libc's (checked by the size assertion below).
    const _: () = assert!(
        std::mem::size_of::<seccompiler::sock_filter>() == std::mem::size_of::<libc::sock_filter>()
    );
    unsafe { std::slice::from_raw_parts(prog.as_ptr().cast(), prog.len()) }
}

impl Compiled {
    /// Confines the calling process. Only raw system calls, no allocation: for the child
    /// between fork and exec, after no_new_privs and everything else.
    ///
    /// # Safety
    /// Call in a freshly forked child; the pid it reads must stay the process's pid through
    /// exec (it does: exec keeps the pid), so call it in the process that will exec.
    pub unsafe fn apply(&self) -> std::io::Result<()> {
        install(as_raw(&self.clone3))?;
        install(as_raw(&self.tripwire))?;
        let own = own_tgkill_filter(libc::getpid() as u32);
        install(&own)?;
        install(as_raw(&self.allowlist))
    }
}

/// Compiles the filters built in the parent.
pub fn compile() -> Result<Compiled, String> {
    let arch = arch()?;
    let e = |e: seccompiler::BackendError| e.to_string();

    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(e)?;

    let mut trip: BTreeMap<i64, Vec<SeccompRule>> = TRIPWIRE_SYSCALLS
        .iter()
        .chain(TRIPWIRE_ARCH)
        .map(|(_, nr)| (*nr, vec![]))
        .collect();
    // clone is allowed for threads only: without CLONE_THREAD it makes a process.
    trip.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )?])
        .map_err(|e| e.to_string())?],
    );
    let tripwire = SeccompFilter::new(trip, SeccompAction::Allow, SeccompAction::KillProcess, arch)
        .map_err(e)?;

    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED_SYSCALLS
        .iter()
        .chain(ALLOWED_ARCH)
        .map(|(_, nr)| (*nr, vec![]))
        .collect();
    // Thread names and glibc's VMA naming only.
    allow.insert(
        libc::SYS_prctl,
        rules_any_of(
            0,
            &[
                libc::PR_SET_NAME as u64,
                libc::PR_GET_NAME as u64,
                0x5356_4d41,
            ],
        )?,
    );
    // Its own limits only (pid 0), never another process's.
    allow.insert(libc::SYS_prlimit64, rules_any_of(0, &[0])?);
    // File-descriptor flags, duplication and locks; never an owner or signal for async I/O.
    let fcntl_plain = [
        libc::F_GETFD,
        libc::F_SETFD,
        libc::F_GETFL,
        libc::F_DUPFD,
        libc::F_DUPFD_CLOEXEC,
        libc::F_GETLK,
        libc::F_SETLK,
        libc::F_SETLKW,
        libc::F_OFD_GETLK,
        libc::F_OFD_SETLK,
        libc::F_OFD_SETLKW,
    ];
    let mut fcntl = rules_any_of(
        1,
        &fcntl_plain.iter().map(|c| *c as u64).collect::<Vec<_>>(),
    )?;
    fcntl.push(
        SeccompRule::new(vec![
            cond(1, SeccompCmpOp::Eq, libc::F_SETFL as u64)?,
            cond(2, SeccompCmpOp::MaskedEq(libc::O_ASYNC as u64), 0)?,
        ])
        .map_err(|e| e.to_string())?,
    );
    allow.insert(libc::SYS_fcntl, fcntl);
    // Terminal queries on stdio only.
    allow.insert(
        libc::SYS_ioctl,
        rules_any_of(1, &[libc::TCGETS, libc::TIOCGWINSZ])?,
    );
    let allowlist = SeccompFilter::new(
        allow,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(e)?;

    Ok(Compiled {
        clone3: program(clone3)?,
        tripwire: program(tripwire)?,
        allowlist: program(allowlist)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn compiles_and_lists_are_disjoint() {
        super::compile().unwrap();
        for (name, nr) in super::TRIPWIRE_SYSCALLS {
            assert!(
                !super::ALLOWED_SYSCALLS.iter().any(|(_, a)| a == nr),
                "{name} is both allowed and a tripwire"
            );
        }
    }

    /// Runs `f` in a forked child (raw system calls only) and returns its exit code, or
    /// 1000 + the signal that killed it.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child makes raw system calls only and leaves with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                libc::_exit(f());
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                1000 + libc::WTERMSIG(status)
            }
        }
    }

    fn errno() -> i32 {
        // SAFETY: reads this thread's errno.
        unsafe { *libc::__errno_location() }
    }

    // Linux's numbers, the same on x86_64 and aarch64 (libc lacks some of them).
    const F_SETSIG: libc::c_int = 10;
    const F_SETOWN_EX: libc::c_int = 15;
    const FIOSETOWN: libc::c_ulong = 0x8901;
    const SIOCSPGRP: libc::c_ulong = 0x8902;

    /// Confines a child with the whole policy and tries every signalling route at its parent
    /// (this test process) with a real signal it ignores (SIGWINCH). Each bit of the exit code
    /// is one route that was not refused with EPERM.
    #[test]
    fn no_signal_route_leaves_the_process() {
        let compiled = super::compile().unwrap();
        let code = in_child(|| unsafe {
            let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || compiled.apply().is_err()
            {
                return 255;
            }
            let me = libc::getpid() as libc::c_long;
            let tid = libc::syscall(libc::SYS_gettid);
            let ppid = libc::getppid() as libc::c_long;
            let sig = libc::SIGWINCH as libc::c_long;
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let info_ptr = &mut info as *mut libc::siginfo_t;
            let mut owner = [0 as libc::c_int; 2];
            let refused = |rc: libc::c_long| rc == -1 && errno() == libc::EPERM;
            let attempts: [bool; 13] = [
                refused(libc::syscall(libc::SYS_kill, ppid, sig)),
                refused(libc::syscall(libc::SYS_tgkill, ppid, ppid, sig)),
                refused(libc::syscall(libc::SYS_tgkill, ppid | (1 << 32), ppid, sig)),
                refused(libc::syscall(libc::SYS_tkill, ppid, sig)),
                refused(libc::syscall(
                    libc::SYS_rt_sigqueueinfo,
                    ppid,
                    sig,
                    info_ptr,
                )),
                refused(libc::syscall(
                    libc::SYS_rt_tgsigqueueinfo,
                    ppid,
                    ppid,
                    sig,
                    info_ptr,
                )),
                refused(libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    devnull,
                    sig,
                    0,
                    0,
                )),
                refused(libc::fcntl(devnull, libc::F_SETOWN, ppid) as libc::c_long),
                refused(libc::fcntl(devnull, F_SETOWN_EX, owner.as_mut_ptr()) as libc::c_long),
                refused(libc::fcntl(devnull, F_SETSIG, libc::SIGKILL) as libc::c_long),
                refused(libc::fcntl(devnull, libc::F_SETFL, libc::O_ASYNC) as libc::c_long),
                refused(
                    libc::ioctl(devnull, FIOSETOWN, &ppid as *const libc::c_long) as libc::c_long,
                ),
                refused(
                    libc::ioctl(devnull, SIOCSPGRP, &ppid as *const libc::c_long) as libc::c_long,
                ),
            ];
            if let Some(i) = attempts.iter().position(|refused| !refused) {
                return i as i32 + 1;
            }
            let mut code = 0;
            // What glibc and FFmpeg need still works: signals to itself, fd flags.
            if libc::syscall(libc::SYS_tgkill, me, tid, sig) != 0
                || libc::raise(libc::SIGWINCH) != 0
                || libc::fcntl(devnull, libc::F_SETFD, libc::FD_CLOEXEC) != 0
                || libc::fcntl(devnull, libc::F_SETFL, libc::O_NONBLOCK) != 0
                || libc::fcntl(devnull, libc::F_GETFL) < 0
            {
                code |= 128;
            }
            code
        });
        assert_eq!(
            code, 0,
            "route #{code} was not refused (128: own signals broke)"
        );
    }

    #[test]
    fn pidfd_open_trips_the_wire() {
        let compiled = super::compile().unwrap();
        let code = in_child(|| unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || compiled.apply().is_err()
            {
                return 255;
            }
            libc::syscall(libc::SYS_pidfd_open, libc::getppid(), 0);
            0
        });
        assert_eq!(code, 1000 + libc::SIGSYS);
    }

    /// The own-process filter alone: the pid check covers all 64 bits of the argument.
    #[test]
    fn tgkill_is_allowed_for_the_own_tgid_only() {
        let code = in_child(|| unsafe {
            let me = libc::getpid() as libc::c_long;
            let tid = libc::syscall(libc::SYS_gettid);
            let prog = super::own_tgkill_filter(me as u32);
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                ) != 0
            {
                return 255;
            }
            let sig = libc::SIGWINCH as libc::c_long;
            let mut code = 0;
            if libc::syscall(libc::SYS_tgkill, me, tid, sig) != 0 {
                code |= 1;
            }
            if libc::syscall(libc::SYS_tgkill, me | (1 << 32), tid, sig) != -1
                || errno() != libc::EPERM
            {
                code |= 2;
            }
            let ppid = libc::getppid() as libc::c_long;
            if libc::syscall(libc::SYS_tgkill, ppid, ppid, sig) != -1 || errno() != libc::EPERM {
                code |= 4;
            }
            code
        });
        assert_eq!(code, 0, "bits: {code:#b}");
    }
}
