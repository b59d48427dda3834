//! Dropping the credentials of the calling thread only. The project's one `unsafe` block:
//! glibc's `setresuid` and friends change every thread of the process (the whole daemon), and
//! nix and std wrap those; the raw system calls change the calling thread's credentials, which
//! is what the stage-spawning thread needs (`spawner.rs`).

use std::io;

/// Makes the calling thread `uid`:`gid` with no supplementary groups, for good: with every
/// uid (real, effective, saved) non-zero, the kernel also clears its capabilities.
pub(super) fn drop_to(uid: u32, gid: u32) -> io::Result<()> {
    let (wanted_uid, wanted_gid) = (uid, gid);
    let (uid, gid) = (libc::c_long::from(uid), libc::c_long::from(gid));
    // In this order, stopping at the first failure: each call needs the privilege that the
    // next one gives up.
    #[allow(unsafe_code)]
    // SAFETY: the system calls take integers (setgroups an empty list, for which a null pointer
    // is allowed); they read and write no memory of ours, and change only the credentials of
    // the calling thread, on which no other code relies: this thread does nothing but spawn.
    let failed = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            0 as libc::c_long,
            std::ptr::null::<libc::gid_t>(),
        ) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
    };
    if failed {
        return Err(io::Error::last_os_error());
    }
    // getuid and friends are plain system calls too: they report this thread's credentials.
    let now = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let no_groups = nix::unistd::getgroups().is_ok_and(|g| g.is_empty());
    if now != (wanted_uid, wanted_uid, wanted_gid) || !no_groups {
        return Err(io::Error::other(format!(
            "the thread is uid, euid, gid {now:?} after the drop"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_calling_thread_changes() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can change its uid
        }
        let dropped = std::thread::spawn(|| {
            super::drop_to(4242, 4343).unwrap();
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(dropped, (4242, 4343));
        assert!(nix::unistd::geteuid().is_root(), "the process lost root");
    }
}
