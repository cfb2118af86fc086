//! The seccomp policy, compiled once in the parent.

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

/// The filters, in installation order: clone3 → ENOSYS, the tripwire, the allowlist (last,
/// since it refuses the `seccomp` call itself).
pub fn compile() -> Result<Vec<BpfProgram>, String> {
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

    Ok(vec![
        program(clone3)?,
        program(tripwire)?,
        program(allowlist)?,
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn compiles_and_lists_are_disjoint() {
        let filters = super::compile().unwrap();
        assert_eq!(filters.len(), 3);
        for (name, nr) in super::TRIPWIRE_SYSCALLS {
            assert!(
                !super::ALLOWED_SYSCALLS.iter().any(|(_, a)| a == nr),
                "{name} is both allowed and a tripwire"
            );
        }
    }
}
