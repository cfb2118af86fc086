//! Dropping root for good: the long-running worker keeps no uid 0 and no capability.

use std::io;

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Turns the calling (root, single-threaded) process into `uid`/`gid` with no supplementary
/// groups, empty effective, permitted, inheritable, ambient and bounding capability sets, and
/// `no_new_privs`; then checks that it took and that there is no way back.
pub fn drop_to(uid: u32, gid: u32) -> io::Result<()> {
    if uid == 0 || gid == 0 {
        return Err(io::Error::other("refusing to drop privileges to uid/gid 0"));
    }
    // SAFETY: prctl/setgroups/setres*id/capset with plain integers and structs we own.
    unsafe {
        // The bounding set goes first: dropping from it needs CAP_SETPCAP, lost with root.
        for cap in 0..64 {
            let rc = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) as libc::c_long)?;
        check(libc::setgroups(0, std::ptr::null()) as libc::c_long)?;
        check(libc::setresgid(gid, gid, gid) as libc::c_long)?;
        // Leaving uid 0 for a non-zero uid in all three clears the permitted and effective sets.
        check(libc::setresuid(uid, uid, uid) as libc::c_long)?;
        // And the inheritable set, explicitly.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
    }
    verify(uid, gid)
}

/// The capability sets of this process from `/proc/self/status`, by name (`CapEff`, …).
pub fn capability_sets() -> io::Result<Vec<(String, u64)>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.starts_with("Cap")
                .then(|| {
                    u64::from_str_radix(v.trim(), 16)
                        .ok()
                        .map(|v| (k.to_owned(), v))
                })
                .flatten()
        })
        .collect())
}

fn verify(uid: u32, gid: u32) -> io::Result<()> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    let (mut rg, mut eg, mut sg) = (0, 0, 0);
    // SAFETY: getres*id fill integers we own.
    unsafe {
        libc::getresuid(&mut r, &mut e, &mut s);
        libc::getresgid(&mut rg, &mut eg, &mut sg);
    }
    if [r, e, s] != [uid; 3] || [rg, eg, sg] != [gid; 3] {
        return Err(io::Error::other("the uid/gid change did not take"));
    }
    for (name, value) in capability_sets()? {
        if value != 0 {
            return Err(io::Error::other(format!(
                "{name} is {value:x} after dropping privileges"
            )));
        }
    }
    // SAFETY: setuid with a plain integer; it must fail now.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other(
            "could become root again after dropping privileges",
        ));
    }
    Ok(())
}
