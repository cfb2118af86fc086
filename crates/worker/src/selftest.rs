//! The start-up self-test: the worker proves the jail holds before it takes any work. A jailed
//! copy of this binary (`mpegflow-worker __jail-probe …`) must be able to read an allowed file,
//! must be refused a forbidden one, must not be able to signal the worker, and must be killed
//! for creating a socket.

use mpegflow_jail::spawner::{OutAccess, Program, SpawnerClient};
use mpegflow_jail::{Jail, Limits, Policy};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The hidden subcommand a jailed probe runs.
pub const PROBE_ARG: &str = "__jail-probe";

/// Exit codes of the probe.
pub const PROBE_OK: i32 = 0;
pub const PROBE_DENIED: i32 = 10;
pub const PROBE_OTHER_ERROR: i32 = 11;

/// The probe itself, run inside the jail: `read PATH`, `signal` or `socket`.
pub fn probe(args: &[String]) -> i32 {
    match args {
        [mode, path] if mode == "read" => match std::fs::read(path) {
            Ok(_) => PROBE_OK,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
                PROBE_DENIED
            }
            Err(_) => PROBE_OTHER_ERROR,
        },
        [mode] if mode == "signal" => {
            // SAFETY: plain system calls. SIGWINCH is ignored by default, so nothing breaks if
            // the jail fails and the signal does reach the worker.
            unsafe {
                let ppid = libc::getppid() as libc::c_long;
                let sig = libc::SIGWINCH as libc::c_long;
                // glibc's raise (tgkill to itself) must still work, or FFmpeg's abort() breaks.
                if libc::raise(libc::SIGWINCH) != 0 {
                    return PROBE_OTHER_ERROR;
                }
                let refused = |rc: libc::c_long| {
                    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
                };
                let tgkill = refused(libc::syscall(libc::SYS_tgkill, ppid, ppid, sig));
                let kill = refused(libc::syscall(libc::SYS_kill, ppid, sig));
                let setown = refused(libc::fcntl(1, libc::F_SETOWN, ppid) as libc::c_long);
                if tgkill && kill && setown {
                    PROBE_DENIED
                } else {
                    PROBE_OK
                }
            }
        }
        [mode] if mode == "socket" => {
            // SAFETY: plain socket(2) call; the fd is closed right away.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                unsafe { libc::close(fd) };
                PROBE_OK
            } else {
                PROBE_DENIED
            }
        }
        _ => PROBE_OTHER_ERROR,
    }
}

fn run_probe(
    jail: &Jail,
    policy: &Policy,
    cwd: &Path,
    args: &[&str],
) -> Result<std::process::ExitStatus, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let prepared = jail.prepare(&exe, policy).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&exe);
    cmd.arg(PROBE_ARG)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: `apply` only makes raw system calls.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || prepared.apply());
    }
    cmd.status()
        .map_err(|e| format!("cannot start the jailed probe: {e}"))
}

/// Runs the three probes; `Err` says which protection did not hold. The probe works like a job:
/// from its own directory (owned by the job identity, when there is one), with one granted
/// subdirectory; the forbidden file sits beside it, readable but for the jail.
pub fn run(jail: &Jail, work_dir: &Path, identity: Option<(u32, u32)>) -> Result<(), String> {
    let dir = work_dir.join(".jail-selftest");
    let _ = std::fs::remove_dir_all(&dir);
    let granted = dir.join("granted");
    std::fs::create_dir_all(&granted).map_err(|e| e.to_string())?;
    std::fs::write(granted.join("allowed"), b"ok").map_err(|e| e.to_string())?;
    std::fs::write(dir.join("forbidden"), b"secret").map_err(|e| e.to_string())?;
    for p in [&dir, &granted] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    for p in [granted.join("allowed"), dir.join("forbidden")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())?;
    }
    if let Some((uid, gid)) = identity {
        for p in [
            dir.clone(),
            granted.clone(),
            granted.join("allowed"),
            dir.join("forbidden"),
        ] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
    }
    let policy = Policy {
        read: vec![granted.clone()],
        identity,
        ..Policy::default()
    };

    let result = (|| {
        let s = run_probe(jail, &policy, &dir, &["read", "granted/allowed"])?;
        if s.code() != Some(PROBE_OK) {
            return Err(format!(
                "a jailed process could not read an allowed file ({s})"
            ));
        }
        let s = run_probe(jail, &policy, &dir, &["read", "forbidden"])?;
        if s.code() != Some(PROBE_DENIED) {
            return Err(format!(
                "file-system confinement (Landlock) is not enforced: a forbidden read gave {s}"
            ));
        }
        let s = run_probe(jail, &policy, &dir, &["signal"])?;
        if s.code() != Some(PROBE_DENIED) {
            return Err(format!(
                "signals are not confined: a jailed process could signal the worker ({s})"
            ));
        }
        let s = run_probe(jail, &policy, &dir, &["socket"])?;
        if s.signal() != Some(libc::SIGSYS) {
            return Err(format!(
                "the seccomp tripwire is not enforced: socket() gave {s}"
            ));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The same three probes for a root worker, through the spawn helper: as a leased job uid, in
/// the job's namespaces, with the job's directory layout (`in/` granted, a file beside it not).
pub fn run_privileged(spawner: &SpawnerClient, work_dir: &Path) -> Result<(), String> {
    let name = format!("selftest-{}", std::process::id());
    let dir = work_dir.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    let setup = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("in"))?;
        std::fs::create_dir_all(dir.join("out"))?;
        std::fs::write(dir.join("in/allowed"), b"ok")?;
        std::fs::write(dir.join("forbidden"), b"secret")?;
        for f in [dir.join("in/allowed"), dir.join("forbidden")] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    };
    setup().map_err(|e| format!("self-test directory: {e}"))?;
    let uid = spawner
        .begin(&name, &[], 1 << 20, 16)
        .map_err(|e| e.to_string())?;
    let probe = |args: &[&str]| -> Result<i32, String> {
        let mut argv = vec![PROBE_ARG.to_owned()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let limits = Limits {
            address_space_bytes: 1 << 30,
            cpu_seconds: 30,
            file_size_bytes: 1 << 20,
            ..Limits::default()
        };
        let spawned = spawner
            .spawn(uid, Program::SelfTestProbe, &argv, OutAccess::None, &limits)
            .map_err(|e| format!("cannot start the jailed probe: {e}"))?;
        wait_status(&spawned.status).map_err(|e| format!("waiting for the probe: {e}"))
    };
    let result = (|| {
        let s = probe(&["read", "in/allowed"])?;
        if !(libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == PROBE_OK) {
            return Err(format!(
                "a jailed process could not read an allowed file (status {s:#x})"
            ));
        }
        let s = probe(&["read", "forbidden"])?;
        if !(libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == PROBE_DENIED) {
            return Err(format!(
                "file-system confinement (Landlock) is not enforced: a forbidden read gave status {s:#x}"
            ));
        }
        let s = probe(&["socket"])?;
        if !(libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGSYS) {
            return Err(format!(
                "the seccomp tripwire is not enforced: socket() gave status {s:#x}"
            ));
        }
        Ok(())
    })();
    let ended = spawner
        .handover(uid)
        .and_then(|()| spawner.end(uid))
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    result.and(ended)
}

/// Blocks until the helper reports a wait status on `status` (or the namespace was killed).
fn wait_status(status: &std::os::fd::OwnedFd) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    let mut got = Vec::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: status.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll/read on a descriptor we own, into buffers we own.
        unsafe {
            libc::poll(&mut pfd, 1, 60_000);
            let mut b = [0u8; 8];
            let n = libc::read(status.as_raw_fd(), b.as_mut_ptr().cast(), b.len());
            match n {
                0 => break,
                n if n > 0 => got.extend_from_slice(&b[..n as usize]),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::Interrupted
                    {
                        return Err(e);
                    }
                }
            }
        }
    }
    Ok(
        match <[u8; 4]>::try_from(got.get(..4).unwrap_or_default()) {
            Ok(b) => i32::from_ne_bytes(b),
            Err(_) => libc::SIGKILL,
        },
    )
}
