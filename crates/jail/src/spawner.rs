//! The privileged spawn helper of a root worker.
//!
//! A worker started as root forks this helper first (before it reads its token or touches the
//! network), then drops to its own uid with no capabilities. The helper keeps root, lives in a
//! network namespace of its own with no interfaces, and talks only over a `SOCK_SEQPACKET`
//! socketpair with a fixed, length-bounded message format. It does five things, each checked:
//!
//! - `BEGIN job`: leases a fresh job uid/gid from the reserved range (never 0, never one a
//!   process or mount still carries), opens the job directory without following links, gives
//!   the job's group passage to it and read access to `in/`, and mounts a tmpfs of
//!   `max_output_bytes + 1 MiB` and `max_output_files + aliases + 8` inodes on `out/`, owned by
//!   the job uid: the kernel bounds what a job can write while it runs.
//! - `SPAWN uid program argv`: only for a uid it leased and has not handed over, only the
//!   configured ffmpeg or ffprobe (and, until `SEAL`, the worker's self-test probe). The child
//!   is the init of a new pid namespace that runs as the *worker's* uid (so the job cannot signal
//!   it) and reaps; its child applies the whole jail (rlimits, new net/ipc/uts/mount namespaces,
//!   the job uid, `no_new_privs`, Landlock, seccomp last) and execs. When the init exits, the
//!   kernel kills whatever is left in the namespace.
//!   `out/` is writable only for ffmpeg; an ffprobe may be given it read-only (to measure what
//!   the job wrote, before the handover, as the job's uid).
//! - `LIST uid max`: names the regular files in `out/`'s alias directories (`alias/name`, at
//!   most `max`), walked as root by descriptor without following links, before the handover:
//!   the worker cannot list `out/` itself until then.
//! - `KILL uid`: kills the job's namespace inits (and so the namespaces).
//! - `HANDOVER uid`: kills them, waits for them, checks that no process of the uid remains, and
//!   gives `out/` to the worker read-only (root's, the worker's group) so it can upload; once
//!   only (the helper never walks `out/` as root again).
//! - `END uid`: unmounts `out/`, gives the job directory back to the worker, checks again, and
//!   only then frees the uid. A uid whose clean-up failed is never freed by this helper.
//!
//! When the worker goes away (the socket closes), the helper ends every live job, removes their
//! directories and exits.

use crate::ids::{processes_with, IdAllocator, IdRange, Lease};
use crate::{Jail, Limits, Policy};
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Mutex;

/// Largest message either side accepts.
pub const MAX_MESSAGE: usize = 256 * 1024;
const MAX_ARGS: usize = 4096;
const MAX_ALIASES: usize = 64;
const MAX_TREE_DEPTH: usize = 32;
/// Live jobs one helper keeps: a worker runs one job at a time; one more leaves room for a job
/// whose clean-up failed (its uid is never freed). Bounds what one worker takes of the host's
/// job uids and `out/` file systems.
pub const MAX_LIVE_JOBS: usize = 2;

const OP_BEGIN: u8 = 1;
const OP_SPAWN: u8 = 2;
const OP_KILL: u8 = 3;
const OP_HANDOVER: u8 = 4;
const OP_END: u8 = 5;
const OP_SEAL: u8 = 6;
const OP_LIST: u8 = 7;
/// Most names one `LIST` answers (the answer must fit one message).
pub const MAX_LISTED: usize = 512;

/// What the helper may execute. Nothing else can be named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Program {
    Ffmpeg = 1,
    Ffprobe = 2,
    /// The worker's own binary in self-test mode; refused after `SEAL`.
    SelfTestProbe = 3,
}

/// What a spawned program may do with the job's `out/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OutAccess {
    None = 0,
    /// Only ffmpeg is ever given this.
    Write = 1,
    /// To measure what the job wrote.
    Read = 2,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the spawn helper refused: {0}")]
    Refused(String),
    #[error("talking to the spawn helper: {0}")]
    Io(#[from] io::Error),
}

/// Fixed at start by the (then still trusted) root worker.
#[derive(Debug, Clone)]
pub struct SpawnerConfig {
    /// The worker's directory of job directories.
    pub work_dir: PathBuf,
    /// The worker's own uid/gid: owner of job directories, and what namespace inits run as.
    pub worker: (u32, u32),
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    pub probe: Option<PathBuf>,
    pub job_ids: IdRange,
    pub lock_dir: PathBuf,
    /// Upper bounds for what a request may ask; `open_files` and `processes` are used as given.
    pub max_limits: Limits,
    /// Largest `out/` file system, whatever a job asks (tmpfs lives in memory or swap).
    pub max_output_fs_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Wire format: op byte, then fields; integers little-endian, strings as u32 length + bytes.

#[derive(Default)]
struct Enc(Vec<u8>);
impl Enc {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut e = self.u32(s.len() as u32);
        e.0.extend_from_slice(s.as_bytes());
        e
    }
}

struct Dec<'a>(&'a [u8]);
impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated message".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        if b.contains(&0) {
            return Err("a string holds a NUL byte".into());
        }
        std::str::from_utf8(b).map_err(|_| "a string is not UTF-8".to_owned())
    }
    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes".into())
        }
    }
}

fn valid_job_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.contains("..")
}

fn valid_alias(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// Socket plumbing.

fn send_msg(sock: RawFd, msg: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: building a msghdr over buffers we own; CMSG_* macros stay inside `cbuf`.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if !fds.is_empty() {
            let len = libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize;
            hdr.msg_control = cbuf.as_mut_ptr().cast();
            hdr.msg_controllen = len;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        loop {
            let n = libc::sendmsg(sock, &hdr, libc::MSG_NOSIGNAL);
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Receives one message (`None` at end of stream) and the descriptors that came with it.
fn recv_msg(sock: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>, bool)>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: recvmsg into buffers we own; received descriptors are taken into OwnedFds.
    unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = loop {
            let n = libc::recvmsg(sock, &mut hdr, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut fds = Vec::new();
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        let truncated = hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
        Ok(Some((n, fds, truncated)))
    }
}

fn cvt(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: the caller just got this descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens directory `name` under `dir` without following a link at any step.
fn open_dir_at(dir: RawFd, name: &str) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: openat with a NUL-terminated name.
    owned(unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY,
        )
    } as libc::c_long)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills a struct we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::fstat(fd, &mut st) as libc::c_long)?;
        Ok(st)
    }
}

fn fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// Entry names of an open directory.
fn entries(dir: RawFd) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(fd_path(dir))? {
        names.push(
            e?.file_name()
                .into_string()
                .map_err(|_| io::Error::other("a file name is not UTF-8"))?,
        );
    }
    Ok(names)
}

/// Whether `name` in `dir` is of type `kind` (`S_IFDIR`, `S_IFREG`…), not following a link.
fn is_a(dir: RawFd, name: &str, kind: libc::mode_t) -> io::Result<bool> {
    let c = cstring(name)?;
    // SAFETY: fstatat fills a struct we own, from a NUL-terminated name.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) as libc::c_long)?;
        Ok(st.st_mode & libc::S_IFMT == kind)
    }
}

/// Gives everything under `dir` (and `dir`) to `uid`/`gid`, readable (and directories
/// searchable) by owner and group only, writable by no one but root, never following a link.
/// Children first: a directory opens up only once nothing in it is left to change.
fn chown_tree(dir: RawFd, uid: u32, gid: u32, depth: usize) -> io::Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(io::Error::other("output tree too deep"));
    }
    // SAFETY: fstatat/fchmodat/fchownat/fchmod/fchown on descriptors we own with
    // NUL-terminated names.
    unsafe {
        for name in entries(dir)? {
            let c = cstring(&name)?;
            let mut st: libc::stat = std::mem::zeroed();
            cvt(
                libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) as libc::c_long,
            )?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    let sub = open_dir_at(dir, &name)?;
                    chown_tree(sub.as_raw_fd(), uid, gid, depth + 1)?;
                }
                libc::S_IFREG => {
                    // Changed through a descriptor opened without following a link: the name
                    // may have become a link since the look above (`fchmodat` follows one).
                    let file = owned(libc::openat(
                        dir,
                        c.as_ptr(),
                        libc::O_RDONLY
                            | libc::O_NOFOLLOW
                            | libc::O_NONBLOCK
                            | libc::O_NOCTTY
                            | libc::O_CLOEXEC,
                    ) as libc::c_long)?;
                    if fstat(file.as_raw_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
                        return Err(io::Error::other(format!("{name:?} changed its type")));
                    }
                    cvt(libc::fchmod(file.as_raw_fd(), 0o440) as libc::c_long)?;
                    cvt(libc::fchown(file.as_raw_fd(), uid, gid) as libc::c_long)?;
                }
                // Anything else (the jail makes none) stays the job's: the worker refuses it.
                _ => {}
            }
        }
        cvt(libc::fchmod(dir, 0o550) as libc::c_long)?;
        cvt(libc::fchown(dir, uid, gid) as libc::c_long)?;
    }
    Ok(())
}

/// Truncates every file under `dir` to nothing and removes every entry, never following a
/// link: open descriptors to them then hold no data.
fn empty_tree(dir: RawFd, depth: usize) -> io::Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(io::Error::other("tree too deep"));
    }
    // SAFETY: fstatat/openat/ftruncate/unlinkat on descriptors we own with NUL-terminated
    // names.
    unsafe {
        for name in entries(dir)? {
            let c = cstring(&name)?;
            let mut st: libc::stat = std::mem::zeroed();
            cvt(
                libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) as libc::c_long,
            )?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    let sub = open_dir_at(dir, &name)?;
                    empty_tree(sub.as_raw_fd(), depth + 1)?;
                    cvt(libc::unlinkat(dir, c.as_ptr(), libc::AT_REMOVEDIR) as libc::c_long)?;
                }
                kind => {
                    if kind == libc::S_IFREG {
                        let file = owned(libc::openat(
                            dir,
                            c.as_ptr(),
                            libc::O_WRONLY
                                | libc::O_NOFOLLOW
                                | libc::O_NONBLOCK
                                | libc::O_NOCTTY
                                | libc::O_CLOEXEC,
                        ) as libc::c_long)?;
                        if fstat(file.as_raw_fd())?.st_mode & libc::S_IFMT == libc::S_IFREG {
                            cvt(libc::ftruncate(file.as_raw_fd(), 0) as libc::c_long)?;
                        }
                    }
                    cvt(libc::unlinkat(dir, c.as_ptr(), 0) as libc::c_long)?;
                }
            }
        }
    }
    Ok(())
}

/// Removes `name` under `parent` and everything in it, never following a link.
fn remove_tree_at(parent: RawFd, name: &str, depth: usize) -> io::Result<()> {
    if depth > MAX_TREE_DEPTH {
        return Err(io::Error::other("tree too deep"));
    }
    let dir = open_dir_at(parent, name)?;
    // SAFETY: fstatat/unlinkat with descriptors we own and NUL-terminated names.
    unsafe {
        for entry in entries(dir.as_raw_fd())? {
            let c = cstring(&entry)?;
            let mut st: libc::stat = std::mem::zeroed();
            cvt(libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            ) as libc::c_long)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                remove_tree_at(dir.as_raw_fd(), &entry, depth + 1)?;
            } else {
                cvt(libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) as libc::c_long)?;
            }
        }
        let c = cstring(name)?;
        cvt(libc::unlinkat(parent, c.as_ptr(), libc::AT_REMOVEDIR) as libc::c_long)?;
    }
    Ok(())
}

/// A detached tmpfs (new mount API: no path is resolved), bounded in bytes and inodes.
fn make_tmpfs(bytes: u64, inodes: u64, uid: u32) -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
    const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
    const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;
    let fstype = cstring("tmpfs")?;
    // SAFETY: the new mount API with NUL-terminated strings and descriptors we own.
    unsafe {
        let fs = owned(libc::syscall(
            libc::SYS_fsopen,
            fstype.as_ptr(),
            FSOPEN_CLOEXEC,
        ))?;
        for (k, v) in [
            ("size", bytes.to_string()),
            ("nr_inodes", inodes.to_string()),
            ("mode", "0700".to_owned()),
            ("uid", uid.to_string()),
            ("gid", uid.to_string()),
        ] {
            let (k, v) = (cstring(k)?, cstring(&v)?);
            cvt(libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            ))?;
        }
        cvt(libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        ))?;
        owned(libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        ))
    }
}

fn attach_mount(mount: RawFd, onto: RawFd) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = cstring("")?;
    // SAFETY: move_mount between two descriptors we own.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount,
            empty.as_ptr(),
            onto,
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
}

// ---------------------------------------------------------------------------------------------
// The client, used by the (unprivileged) worker.

/// The worker's end of the socket. Calls are short and serialised.
pub struct SpawnerClient {
    sock: Mutex<OwnedFd>,
}

impl std::fmt::Debug for SpawnerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpawnerClient")
    }
}

/// What the status pipe carries: the raw wait status (4 bytes) and the CPU time the program
/// used, user and system, in microseconds (8 bytes), both native endian.
pub const STATUS_LEN: usize = 12;

/// A process the helper started: its output pipes and a status pipe. The status pipe yields
/// [`STATUS_LEN`] bytes (wait status, CPU time) and then end-of-file once nothing of the job's
/// pid namespace is left; end-of-file without a status means the namespace was killed.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub status: OwnedFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array we own.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: pipe2 just returned these two descriptors; the read end becomes non-blocking.
    unsafe {
        let flags = libc::fcntl(fds[0], libc::F_GETFL);
        libc::fcntl(fds[0], libc::F_SETFL, flags | libc::O_NONBLOCK);
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

impl SpawnerClient {
    /// Wraps a connected socket (for tests that speak to a helper directly).
    pub fn from_socket(sock: OwnedFd) -> SpawnerClient {
        SpawnerClient {
            sock: Mutex::new(sock),
        }
    }

    fn call(&self, msg: Enc, fds: &[RawFd]) -> Result<u32, SpawnError> {
        let answer = self.call_for(msg, fds)?;
        let mut d = Dec(&answer);
        let v = d.u32().map_err(SpawnError::Refused)?;
        d.end().map_err(SpawnError::Refused)?;
        Ok(v)
    }

    /// Sends one request; the body of a successful answer (after its status byte).
    fn call_for(&self, msg: Enc, fds: &[RawFd]) -> Result<Vec<u8>, SpawnError> {
        if msg.0.len() > MAX_MESSAGE {
            return Err(SpawnError::Refused("request too large".into()));
        }
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        send_msg(sock.as_raw_fd(), &msg.0, fds)?;
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let Some((n, _fds, truncated)) = recv_msg(sock.as_raw_fd(), &mut buf)? else {
            return Err(SpawnError::Io(io::Error::other("the spawn helper is gone")));
        };
        if truncated {
            return Err(SpawnError::Refused("answer too large".into()));
        }
        let mut d = Dec(&buf[..n]);
        match d.u8() {
            Ok(0) => Ok(d.0.to_vec()),
            Ok(_) => Err(SpawnError::Refused(
                d.str().unwrap_or("unreadable answer").to_owned(),
            )),
            Err(e) => Err(SpawnError::Refused(e)),
        }
    }

    /// Prepares job directory `job` (under the work directory) for a fresh uid; returns it.
    pub fn begin(
        &self,
        job: &str,
        output_aliases: &[&str],
        max_output_bytes: u64,
        max_output_files: u64,
    ) -> Result<u32, SpawnError> {
        let mut m = Enc::default()
            .u8(OP_BEGIN)
            .str(job)
            .u64(max_output_bytes)
            .u64(max_output_files)
            .u16(output_aliases.len().min(u16::MAX as usize) as u16);
        for a in output_aliases {
            m = m.str(a);
        }
        self.call(m, &[])
    }

    /// Starts `program args…` as `uid` in the job directory, with `out` access to `out/`.
    pub fn spawn(
        &self,
        uid: u32,
        program: Program,
        args: &[String],
        out: OutAccess,
        limits: &Limits,
    ) -> Result<Spawned, SpawnError> {
        self.spawn_raw(uid, program as u8, args, out as u8, limits)
    }

    /// The regular files the job wrote under `out/`'s alias directories, as `alias/name`,
    /// sorted, at most `max` (≤ [`MAX_LISTED`]).
    pub fn list_outputs(&self, uid: u32, max: usize) -> Result<Vec<String>, SpawnError> {
        let answer = self.call_for(
            Enc::default()
                .u8(OP_LIST)
                .u32(uid)
                .u32(max.min(u32::MAX as usize) as u32),
            &[],
        )?;
        let mut d = Dec(&answer);
        let n = d.u32().map_err(SpawnError::Refused)? as usize;
        if n > max {
            return Err(SpawnError::Refused("more names than asked for".into()));
        }
        let mut names = Vec::with_capacity(n);
        for _ in 0..n {
            names.push(d.str().map_err(SpawnError::Refused)?.to_owned());
        }
        d.end().map_err(SpawnError::Refused)?;
        Ok(names)
    }

    /// [`spawn`](Self::spawn) with any program code, to show the helper refuses unknown ones.
    pub fn spawn_raw(
        &self,
        uid: u32,
        program: u8,
        args: &[String],
        out: u8,
        limits: &Limits,
    ) -> Result<Spawned, SpawnError> {
        let mut m = Enc::default()
            .u8(OP_SPAWN)
            .u32(uid)
            .u8(program)
            .u8(out)
            .u64(limits.address_space_bytes)
            .u64(limits.cpu_seconds)
            .u64(limits.file_size_bytes)
            .u16(args.len().min(u16::MAX as usize) as u16);
        for a in args {
            m = m.str(a);
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (st_r, st_w) = pipe()?;
        let pid = self.call(m, &[out_w.as_raw_fd(), err_w.as_raw_fd(), st_w.as_raw_fd()])?;
        Ok(Spawned {
            pid,
            stdout: out_r,
            stderr: err_r,
            status: st_r,
        })
    }

    pub fn kill(&self, uid: u32) -> Result<(), SpawnError> {
        self.call(Enc::default().u8(OP_KILL).u32(uid), &[])
            .map(drop)
    }

    /// Ends every process of the job and gives `out/` to the worker.
    pub fn handover(&self, uid: u32) -> Result<(), SpawnError> {
        self.call(Enc::default().u8(OP_HANDOVER).u32(uid), &[])
            .map(drop)
    }

    /// Unmounts `out/`, returns the job directory to the worker and frees the uid.
    pub fn end(&self, uid: u32) -> Result<(), SpawnError> {
        self.call(Enc::default().u8(OP_END).u32(uid), &[]).map(drop)
    }

    /// No self-test probe may be started any more.
    pub fn seal(&self) -> Result<(), SpawnError> {
        self.call(Enc::default().u8(OP_SEAL), &[]).map(drop)
    }
}

// ---------------------------------------------------------------------------------------------
// The helper.

/// A successful answer: a number (a uid, a pid, 0) or names.
enum Answer {
    Value(u32),
    Names(Vec<String>),
}

struct Init {
    pid: libc::pid_t,
    pidfd: OwnedFd,
}

struct Job {
    lease: Lease,
    name: String,
    dir: OwnedFd,
    input: OwnedFd,
    mount: Option<OwnedFd>,
    handed_over: bool,
    inits: Vec<Init>,
}

struct Server {
    cfg: SpawnerConfig,
    jail: Jail,
    work: OwnedFd,
    ids: IdAllocator,
    devnull: OwnedFd,
    jobs: HashMap<u32, Job>,
    sealed: bool,
    /// Read end of a pipe only this process writes to: it hangs up when the helper is gone,
    /// which is how a namespace init learns of it in the instant before its parent-death
    /// signal is armed.
    life: Option<OwnedFd>,
}

/// Forks the helper from a single-threaded root process. The child never returns; the parent
/// gets the client end. `keep` are descriptors (e.g. the worker uid's lease) the helper holds
/// for as long as it lives.
///
/// # Safety
/// The calling process must be single-threaded (the child allocates after fork).
pub unsafe fn start(
    cfg: SpawnerConfig,
    jail: Jail,
    keep: Vec<OwnedFd>,
) -> io::Result<SpawnerClient> {
    cfg.job_ids.check_against_host().map_err(io::Error::other)?;
    let ids = IdAllocator::open(&cfg.lock_dir, "job", cfg.job_ids)?;
    let work_path = cstring(&cfg.work_dir.to_string_lossy())?;
    let work = owned(libc::open(
        work_path.as_ptr(),
        libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY,
    ) as libc::c_long)?;
    let devnull =
        owned(libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) as libc::c_long)?;
    let mut pair = [0; 2];
    cvt(libc::socketpair(
        libc::AF_UNIX,
        libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
        0,
        pair.as_mut_ptr(),
    ) as libc::c_long)?;
    let (client, server) = (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1]));
    match libc::fork() {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(client);
            let server_fd = server.as_raw_fd();
            let mut keep_fds: Vec<RawFd> = keep.iter().map(|f| f.as_raw_fd()).collect();
            keep_fds.extend([
                server_fd,
                ids.dir_fd(),
                work.as_raw_fd(),
                devnull.as_raw_fd(),
            ]);
            let s = Server {
                cfg,
                jail,
                work,
                ids,
                devnull,
                jobs: HashMap::new(),
                sealed: false,
                life: None,
            };
            let code = s.run(server, &keep_fds);
            drop(keep);
            libc::_exit(code)
        }
        _ => {
            drop(server);
            drop(keep);
            Ok(SpawnerClient::from_socket(client))
        }
    }
}

impl Server {
    /// Sets the helper up and serves until the worker's end closes.
    unsafe fn run(mut self, sock: OwnedFd, keep: &[RawFd]) -> i32 {
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGPIPE,
            libc::SIGQUIT,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // Nothing the worker had open (its stdin carries the token) stays with the helper.
        libc::dup2(self.devnull.as_raw_fd(), 0);
        libc::dup2(self.devnull.as_raw_fd(), 1);
        let mut keep = keep.to_vec();
        keep.sort_unstable();
        let mut from = 3u32;
        for fd in keep {
            if (fd as u32) > from {
                libc::syscall(libc::SYS_close_range, from, fd as u32 - 1, 0u32);
            }
            from = fd as u32 + 1;
        }
        libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
        // No network: a namespace with nothing in it.
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            eprintln!(
                "spawn helper: cannot leave the host network: {}",
                io::Error::last_os_error()
            );
            return 1;
        }
        let _life_w = match pipe() {
            Ok((r, w)) => {
                self.life = Some(r);
                w
            }
            Err(e) => {
                eprintln!("spawn helper: {e}");
                return 1;
            }
        };
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        loop {
            let mut polls = vec![libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            for job in self.jobs.values() {
                for init in &job.inits {
                    polls.push(libc::pollfd {
                        fd: init.pidfd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                }
            }
            if libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) < 0 {
                continue;
            }
            if polls.iter().skip(1).any(|p| p.revents != 0) {
                self.reap();
            }
            if polls[0].revents == 0 {
                continue;
            }
            let (n, fds, truncated) = match recv_msg(sock.as_raw_fd(), &mut buf) {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            let answer = if truncated || n > MAX_MESSAGE {
                Err("message too large".to_owned())
            } else {
                self.handle(&buf[..n], fds)
            };
            let reply = match answer {
                Ok(Answer::Value(v)) => Enc::default().u8(0).u32(v),
                Ok(Answer::Names(names)) => {
                    let mut m = Enc::default().u8(0).u32(names.len() as u32);
                    for n in &names {
                        m = m.str(n);
                    }
                    m
                }
                Err(e) => {
                    let e: String = e.chars().take(1000).collect();
                    Enc::default().u8(1).str(&e)
                }
            };
            if send_msg(sock.as_raw_fd(), &reply.0, &[]).is_err() {
                break;
            }
        }
        // The worker is gone: end every job and remove its directory.
        let uids: Vec<u32> = self.jobs.keys().copied().collect();
        let mut code = 0;
        for uid in uids {
            let name = self
                .jobs
                .get(&uid)
                .map(|j| j.name.clone())
                .unwrap_or_default();
            if let Err(e) = self.end(uid) {
                eprintln!("spawn helper: ending job {name}: {e}");
                code = 1;
            }
            if let Err(e) = remove_tree_at(self.work.as_raw_fd(), &name, 0) {
                eprintln!("spawn helper: removing job {name}: {e}");
            }
        }
        code
    }

    fn reap(&mut self) {
        for job in self.jobs.values_mut() {
            job.inits.retain(|init| {
                // SAFETY: waitpid on our own child, without blocking.
                unsafe { libc::waitpid(init.pid, std::ptr::null_mut(), libc::WNOHANG) == 0 }
            });
        }
    }

    fn handle(&mut self, msg: &[u8], fds: Vec<OwnedFd>) -> Result<Answer, String> {
        let mut d = Dec(msg);
        if d.0.first() == Some(&OP_LIST) {
            d.u8()?;
            let uid = d.u32()?;
            let max = d.u32()? as usize;
            d.end()?;
            if !fds.is_empty() {
                return Err("unexpected descriptors".into());
            }
            return self.list(uid, max.min(MAX_LISTED)).map(Answer::Names);
        }
        self.handle_value(msg, fds).map(Answer::Value)
    }

    fn handle_value(&mut self, msg: &[u8], fds: Vec<OwnedFd>) -> Result<u32, String> {
        let mut d = Dec(msg);
        let op = d.u8()?;
        if op != OP_SPAWN && !fds.is_empty() {
            return Err("unexpected descriptors".into());
        }
        match op {
            OP_BEGIN => {
                let name = d.str()?.to_owned();
                let max_bytes = d.u64()?;
                let max_files = d.u64()?;
                let n = d.u16()? as usize;
                if n > MAX_ALIASES {
                    return Err("too many output aliases".into());
                }
                let mut aliases = Vec::with_capacity(n);
                for _ in 0..n {
                    let a = d.str()?;
                    if !valid_alias(a) {
                        return Err(format!("invalid output alias {a:?}"));
                    }
                    aliases.push(a.to_owned());
                }
                d.end()?;
                self.begin(name, &aliases, max_bytes, max_files)
            }
            OP_SPAWN => {
                let uid = d.u32()?;
                let program = d.u8()?;
                let out = match d.u8()? {
                    0 => OutAccess::None,
                    1 => OutAccess::Write,
                    2 => OutAccess::Read,
                    other => return Err(format!("unknown out/ access {other}")),
                };
                let limits = Limits {
                    address_space_bytes: d.u64()?,
                    cpu_seconds: d.u64()?,
                    file_size_bytes: d.u64()?,
                    ..self.cfg.max_limits
                };
                let n = d.u16()? as usize;
                if n > MAX_ARGS {
                    return Err("too many arguments".into());
                }
                let mut args = Vec::with_capacity(n);
                for _ in 0..n {
                    args.push(d.str()?.to_owned());
                }
                d.end()?;
                let [stdout, stderr, status]: [OwnedFd; 3] = fds
                    .try_into()
                    .map_err(|_| "a spawn request carries exactly three descriptors".to_owned())?;
                self.spawn(uid, program, &args, out, limits, [stdout, stderr, status])
            }
            OP_KILL | OP_HANDOVER | OP_END => {
                let uid = d.u32()?;
                d.end()?;
                self.job(uid)?;
                match op {
                    OP_KILL => {
                        for init in &self.jobs[&uid].inits {
                            // SAFETY: SIGKILL to a namespace init we started.
                            unsafe { libc::kill(init.pid, libc::SIGKILL) };
                        }
                        Ok(0)
                    }
                    OP_HANDOVER => self.handover(uid).map(|()| 0),
                    _ => self.end(uid).map(|()| 0),
                }
            }
            OP_SEAL => {
                d.end()?;
                self.sealed = true;
                Ok(0)
            }
            other => Err(format!("unknown request {other}")),
        }
    }

    /// The live job of `uid`, refusing uid 0 and any uid outside the range by name.
    fn job(&self, uid: u32) -> Result<&Job, String> {
        if uid == 0 {
            return Err("uid 0 is never a job uid".into());
        }
        if !self.cfg.job_ids.contains(uid) {
            return Err(format!(
                "uid {uid} is outside the job range {}+{}",
                self.cfg.job_ids.base, self.cfg.job_ids.count
            ));
        }
        self.jobs
            .get(&uid)
            .ok_or_else(|| format!("uid {uid} is not a live job of this worker"))
    }

    fn begin(
        &mut self,
        name: String,
        aliases: &[String],
        max_bytes: u64,
        max_files: u64,
    ) -> Result<u32, String> {
        if !valid_job_name(&name) {
            return Err(format!("invalid job directory name {name:?}"));
        }
        if self.jobs.values().any(|j| j.name == name) {
            return Err(format!("job {name:?} is already live"));
        }
        if self.jobs.len() >= MAX_LIVE_JOBS {
            return Err(format!(
                "{} live jobs already (end one first)",
                self.jobs.len()
            ));
        }
        let (wuid, wgid) = self.cfg.worker;
        let e = |what: &str| {
            let what = what.to_owned();
            move |err: io::Error| format!("{what}: {err}")
        };
        let dir = open_dir_at(self.work.as_raw_fd(), &name).map_err(e("job directory"))?;
        let input = open_dir_at(dir.as_raw_fd(), "in").map_err(e("in/"))?;
        let out = open_dir_at(dir.as_raw_fd(), "out").map_err(e("out/"))?;
        for (fd, what) in [(&dir, "job directory"), (&input, "in/"), (&out, "out/")] {
            let st = fstat(fd.as_raw_fd()).map_err(e(what))?;
            if st.st_uid != wuid {
                return Err(format!("{what} is not owned by the worker"));
            }
        }
        let lease = self.ids.allocate().map_err(e("leasing a job uid"))?;
        let uid = lease.id;
        let bytes = if max_bytes == 0 {
            self.cfg.max_output_fs_bytes
        } else {
            max_bytes.min(self.cfg.max_output_fs_bytes)
        }
        .saturating_add(1 << 20);
        let files = if max_files == 0 {
            10_000
        } else {
            max_files.min(1 << 20)
        };
        let inodes = files + aliases.len() as u64 + 8;
        let setup = || -> io::Result<OwnedFd> {
            // SAFETY: fchown/fchmod/mkdirat/fchownat on descriptors we hold.
            unsafe {
                // The job's group may pass through the job directory and read in/; no one
                // else but the worker may (another worker's uid or job's uid is "other").
                cvt(libc::fchown(dir.as_raw_fd(), wuid, uid) as libc::c_long)?;
                cvt(libc::fchmod(dir.as_raw_fd(), 0o710) as libc::c_long)?;
                cvt(libc::fchown(input.as_raw_fd(), wuid, uid) as libc::c_long)?;
                cvt(libc::fchmod(input.as_raw_fd(), 0o750) as libc::c_long)?;
                let mount = make_tmpfs(bytes, inodes, uid)?;
                for a in aliases {
                    let c = cstring(a)?;
                    cvt(libc::mkdirat(mount.as_raw_fd(), c.as_ptr(), 0o700) as libc::c_long)?;
                    cvt(libc::fchownat(
                        mount.as_raw_fd(),
                        c.as_ptr(),
                        uid,
                        uid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    ) as libc::c_long)?;
                }
                attach_mount(mount.as_raw_fd(), out.as_raw_fd())?;
                Ok(mount)
            }
        };
        match setup() {
            Ok(mount) => {
                self.jobs.insert(
                    uid,
                    Job {
                        lease,
                        name,
                        dir,
                        input,
                        mount: Some(mount),
                        handed_over: false,
                        inits: Vec::new(),
                    },
                );
                Ok(uid)
            }
            Err(err) => {
                // SAFETY: restoring ownership on descriptors we hold.
                unsafe {
                    libc::fchown(dir.as_raw_fd(), wuid, wgid);
                    libc::fchown(input.as_raw_fd(), wuid, wgid);
                }
                Err(format!("preparing the job directory: {err}"))
            }
        }
    }

    fn spawn(
        &mut self,
        uid: u32,
        program: u8,
        args: &[String],
        out: OutAccess,
        limits: Limits,
        [stdout, stderr, status]: [OwnedFd; 3],
    ) -> Result<u32, String> {
        let job = self.job(uid)?;
        if job.handed_over {
            return Err(format!("job uid {uid} was handed over; start a new job"));
        }
        let path = match program {
            p if p == Program::Ffmpeg as u8 => self.cfg.ffmpeg.clone(),
            p if p == Program::Ffprobe as u8 => self.cfg.ffprobe.clone(),
            p if p == Program::SelfTestProbe as u8 && !self.sealed && self.cfg.probe.is_some() => {
                self.cfg.probe.clone().unwrap_or_default()
            }
            p => return Err(format!("program {p} is not ffmpeg or ffprobe")),
        };
        let max = &self.cfg.max_limits;
        let mut read = vec![fd_path(job.input.as_raw_fd())];
        let mut write = vec![];
        match (&job.mount, out) {
            // Only ffmpeg writes; a self-test probe never reaches out/.
            (Some(m), OutAccess::Write) if program == Program::Ffmpeg as u8 => {
                write.push(fd_path(m.as_raw_fd()))
            }
            (Some(m), OutAccess::Read)
                if program == Program::Ffmpeg as u8 || program == Program::Ffprobe as u8 =>
            {
                read.push(fd_path(m.as_raw_fd()))
            }
            (_, OutAccess::None) => {}
            _ => return Err("that program may not have that access to out/".into()),
        }
        let policy = Policy {
            read,
            write,
            limits: Limits {
                address_space_bytes: limits.address_space_bytes.min(max.address_space_bytes),
                cpu_seconds: limits.cpu_seconds.clamp(1, max.cpu_seconds),
                file_size_bytes: limits.file_size_bytes.min(max.file_size_bytes),
                open_files: max.open_files,
                processes: max.processes,
            },
            identity: Some((uid, uid)),
        };
        let prepared = self
            .jail
            .prepare(&path, &policy)
            .map_err(|e| format!("building the jail: {e}"))?;
        let to_c = |s: &str| CString::new(s).map_err(|_| "an argument holds a NUL byte".to_owned());
        let mut argv = vec![to_c(&path.to_string_lossy())?];
        for a in args {
            argv.push(to_c(a)?);
        }
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        let (wuid, wgid) = self.cfg.worker;
        let dir = job.dir.as_raw_fd();
        let devnull = self.devnull.as_raw_fd();
        let life = self
            .life
            .as_ref()
            .map(|l| l.as_raw_fd())
            .ok_or("the helper is not running")?;
        let fds = [
            stdout.as_raw_fd(),
            stderr.as_raw_fd(),
            status.as_raw_fd(),
            life,
        ];

        // SAFETY: this process is single-threaded, so the children may do anything; they only
        // make system calls on memory prepared above, and never return.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(format!("clone: {}", io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                namespace_init(
                    &prepared,
                    &argv_ptrs,
                    &envp,
                    dir,
                    devnull,
                    fds,
                    (wuid, wgid),
                )
            }
        }
        drop((stdout, stderr, status));
        let pid = pid as libc::pid_t;
        // SAFETY: pidfd_open of our own child.
        let pidfd = owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) });
        let job = self.jobs.get_mut(&uid).expect("checked above");
        match pidfd {
            Ok(pidfd) => job.inits.push(Init { pid, pidfd }),
            Err(e) => {
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                return Err(format!("pidfd_open: {e}"));
            }
        }
        Ok(pid as u32)
    }

    /// Kills the job's namespaces and waits until none of its processes is left.
    fn stop_processes(&mut self, uid: u32) -> Result<(), String> {
        let job = self.jobs.get_mut(&uid).ok_or("no such job")?;
        for init in job.inits.drain(..) {
            // SAFETY: killing and reaping our own child; its namespace dies with it.
            unsafe {
                libc::kill(init.pid, libc::SIGKILL);
                while libc::waitpid(init.pid, std::ptr::null_mut(), 0) < 0
                    && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                {
                }
            }
        }
        if processes_with(uid) {
            return Err(format!("processes of uid {uid} remain"));
        }
        Ok(())
    }

    /// Regular files in `out/`'s directories as `alias/name`, sorted, at most `max`; before the
    /// handover only (after it the worker lists `out/` itself).
    fn list(&self, uid: u32, max: usize) -> Result<Vec<String>, String> {
        let job = self.job(uid)?;
        if job.handed_over {
            return Err(format!("job uid {uid} was handed over; list out/ yourself"));
        }
        let Some(m) = &job.mount else {
            return Err("this job has no out/ file system".into());
        };
        let walk = || -> io::Result<Vec<String>> {
            let root = open_dir_at(m.as_raw_fd(), ".")?;
            let mut aliases = entries(root.as_raw_fd())?;
            aliases.sort();
            let mut names = Vec::new();
            for alias in aliases {
                if !valid_alias(&alias) || !is_a(root.as_raw_fd(), &alias, libc::S_IFDIR)? {
                    continue;
                }
                let dir = open_dir_at(root.as_raw_fd(), &alias)?;
                let mut files = entries(dir.as_raw_fd())?;
                files.sort();
                for name in files {
                    if names.len() >= max {
                        return Ok(names);
                    }
                    if is_a(dir.as_raw_fd(), &name, libc::S_IFREG)? {
                        names.push(format!("{alias}/{name}"));
                    }
                }
            }
            Ok(names)
        };
        walk().map_err(|e| format!("listing out/: {e}"))
    }

    fn handover(&mut self, uid: u32) -> Result<(), String> {
        // Once handed over, out/ is the worker's to change: walking it again as root would
        // follow whatever the worker put there.
        if self.jobs.get(&uid).is_some_and(|j| j.handed_over) {
            return Err(format!("job uid {uid} was already handed over"));
        }
        self.stop_processes(uid)?;
        let (_, wgid) = self.cfg.worker;
        let job = self.jobs.get_mut(&uid).ok_or("no such job")?;
        if let Some(m) = &job.mount {
            // The mount descriptor is a path-only one; reopen its root to change it.
            let root = open_dir_at(m.as_raw_fd(), ".").map_err(|e| format!("out/: {e}"))?;
            // Read-only for the worker: root's, readable by the worker's group. The worker only
            // uploads from out/; if it could write there, it could keep filling the file system
            // through a descriptor after END detaches it, or plant links for root to walk.
            chown_tree(root.as_raw_fd(), 0, wgid, 0).map_err(|e| format!("out/: {e}"))?;
        }
        job.handed_over = true;
        Ok(())
    }

    fn end(&mut self, uid: u32) -> Result<(), String> {
        self.stop_processes(uid)?;
        let (wuid, wgid) = self.cfg.worker;
        let job = self.jobs.get_mut(&uid).ok_or("no such job")?;
        if let Some(m) = job.mount.take() {
            // Unmounting only detaches: whoever still holds a descriptor into out/ (the worker
            // after the handover) would keep its data in memory. Emptied first, it holds none.
            if let Ok(root) = open_dir_at(m.as_raw_fd(), ".") {
                let _ = empty_tree(root.as_raw_fd(), 0);
            }
            let path =
                cstring(&fd_path(m.as_raw_fd()).to_string_lossy()).map_err(|e| e.to_string())?;
            // SAFETY: unmounting the mount this descriptor is the root of.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                let err = io::Error::last_os_error();
                job.mount = Some(m);
                return Err(format!("unmounting out/: {err}"));
            }
        }
        // SAFETY: returning ownership on descriptors we hold.
        unsafe {
            libc::fchown(job.dir.as_raw_fd(), wuid, wgid);
            libc::fchmod(job.dir.as_raw_fd(), 0o700);
            libc::fchown(job.input.as_raw_fd(), wuid, wgid);
        }
        for (fd, what) in [(&job.dir, "the job directory"), (&job.input, "in/")] {
            match fstat(fd.as_raw_fd()) {
                Ok(st) if st.st_gid == wgid => {}
                _ => return Err(format!("{what} still carries the job's group")),
            }
        }
        if processes_with(uid) || crate::ids::ids_in_use().contains(&uid) {
            return Err(format!("uid {uid} is still in use; not freeing it"));
        }
        let job = self.jobs.remove(&uid).ok_or("no such job")?;
        drop(job.lease);
        Ok(())
    }
}

/// The init of a job's pid namespace: starts the jailed program, drops to the worker uid,
/// reaps, and reports the program's wait status. Never returns.
///
/// # Safety
/// Only in the fresh child of a single-threaded process.
unsafe fn namespace_init(
    prepared: &crate::Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    dir: RawFd,
    devnull: RawFd,
    [stdout, stderr, status, life]: [RawFd; 4],
    (wuid, wgid): (u32, u32),
) -> ! {
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    let child = libc::fork();
    if child == 0 {
        // The jailed program.
        if libc::dup2(devnull, 0) < 0 || libc::dup2(stdout, 1) < 0 || libc::dup2(stderr, 2) < 0 {
            libc::_exit(126);
        }
        for sig in 1..32 {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::umask(0o022);
        if libc::fchdir(dir) != 0 || prepared.apply().is_err() {
            libc::_exit(126);
        }
        libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        libc::_exit(127);
    }
    // Only the status pipe and the helper's life pipe stay; the job cannot signal or trace
    // this process (other uid, not dumpable, no privileges).
    let keep = status;
    let (low, high) = (keep.min(life) as u32, keep.max(life) as u32);
    if low > 3 {
        libc::syscall(libc::SYS_close_range, 3u32, low - 1, 0u32);
    }
    if high > low + 1 {
        libc::syscall(libc::SYS_close_range, low + 1, high - 1, 0u32);
    }
    libc::syscall(libc::SYS_close_range, high + 1, u32::MAX, 0u32);
    if libc::setgroups(0, std::ptr::null()) != 0
        || libc::setresgid(wgid, wgid, wgid) != 0
        || libc::setresuid(wuid, wuid, wuid) != 0
    {
        libc::kill(child, libc::SIGKILL);
        libc::_exit(125);
    }
    // Changing uid cleared the parent-death signal: arm it again, then make sure the helper
    // did not die before it was (its end of the life pipe would have hung up). Otherwise this
    // init, and with it the job, would outlive the helper.
    let mut hup = libc::pollfd {
        fd: life,
        events: libc::POLLIN,
        revents: 0,
    };
    if libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    ) != 0
        || libc::poll(&mut hup, 1, 0) != 0
    {
        libc::kill(child, libc::SIGKILL);
        libc::_exit(125);
    }
    libc::close(life);
    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    let mut reported: libc::c_int = 127 << 8;
    let micros = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    // CPU of the program and of every process of its namespace reaped before it ended.
    let mut cpu_us: u64 = 0;
    if child > 0 {
        loop {
            let mut st = 0;
            let mut usage: libc::rusage = std::mem::zeroed();
            let r = libc::wait4(-1, &mut st, 0, &mut usage);
            if r > 0 {
                cpu_us = cpu_us
                    .saturating_add(micros(usage.ru_utime))
                    .saturating_add(micros(usage.ru_stime));
            }
            if r == child {
                reported = st;
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                break;
            }
        }
    }
    let mut bytes = [0u8; STATUS_LEN];
    bytes[..4].copy_from_slice(&reported.to_ne_bytes());
    bytes[4..].copy_from_slice(&cpu_us.to_ne_bytes());
    libc::write(keep, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(0)
}

/// Where the worker's self-test probe is: this very binary.
pub fn own_binary() -> Option<PathBuf> {
    std::fs::read_link("/proc/self/exe").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_checked() {
        assert!(valid_job_name("0193f2a4-7b1c-7d3e-9f00-123456789abc-1"));
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "a..b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(!valid_job_name(bad), "{bad:?}");
        }
        assert!(valid_alias("out_2"));
        for bad in ["", "Out", "2x", "a-b", "a/b"] {
            assert!(!valid_alias(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_decoder_refuses_short_and_odd_input() {
        let m = Enc::default().u8(1).str("abc").u64(7);
        let mut d = Dec(&m.0);
        assert_eq!(d.u8(), Ok(1));
        assert_eq!(d.str(), Ok("abc"));
        assert_eq!(d.u64(), Ok(7));
        assert!(d.end().is_ok());
        assert!(
            Dec(&[5, 0, 0, 0, b'a']).str().is_err(),
            "length past the end"
        );
        assert!(Dec(&[1, 0, 0, 0, 0]).str().is_err(), "NUL byte");
        assert!(Dec(&[1, 0, 0, 0, 0xff]).str().is_err(), "not UTF-8");
        let mut d = Dec(&[1, 2]);
        d.u8().unwrap();
        assert!(d.end().is_err(), "trailing bytes");
    }
}
