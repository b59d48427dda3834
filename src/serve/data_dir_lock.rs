//! One daemon per data dir. `deploylite serve` holds an exclusive `flock` on
//! `DATA_DIR/daemon.lock` for its whole life, taken before recovery or anything else touches the
//! data dir: a second daemon on the same data dir would otherwise "recover" the first one's
//! running stages (kill them and run them again). The kernel releases the lock when the holder
//! dies, `kill -9` included, so a stale lock file never blocks a restart.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file, in the data dir; it holds the PID of the daemon that holds the lock.
pub const LOCK_FILE: &str = "daemon.lock";

/// The lock, held until dropped (or the process ends).
pub struct DataDirLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl DataDirLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the data dir if needed and takes its lock without waiting: blocking file calls, to
/// be run off the async runtime.
pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(data_dir)
        .with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            // The holder writes its PID right after locking: an empty file is a daemon starting.
            let _ = file.read_to_string(&mut holder);
            bail!("{}", held_message(data_dir, &path, holder.trim()));
        }
        Err((_, errno)) => bail!("cannot lock {}: {errno}", path.display()),
    };
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(*file, "{pid}"))
        .and_then(|()| file.sync_data())
        .with_context(|| format!("cannot write this daemon's PID to {}", path.display()))?;
    Ok(DataDirLock { _file: file, path })
}

fn held_message(data_dir: &Path, lock_file: &Path, holder_pid: &str) -> String {
    let holder = if holder_pid.is_empty() {
        "another deploylite serve (starting up, PID not written yet)".to_string()
    } else {
        format!("another deploylite serve (PID {holder_pid})")
    };
    format!(
        "{holder} is using the data dir {}: it holds the lock {}. Stop it first, or give this \
         daemon another data_dir",
        data_dir.display(),
        lock_file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_data_dir_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let held = acquire(&data).expect("first lock");
        let written = std::fs::read_to_string(held.path()).expect("lock file");
        assert_eq!(written, format!("{}\n", std::process::id()));
        let refused = acquire(&data).err().expect("the second lock is refused");
        assert_eq!(
            refused.to_string(),
            format!(
                "another deploylite serve (PID {}) is using the data dir {}: it holds the lock {}. \
                 Stop it first, or give this daemon another data_dir",
                std::process::id(),
                data.display(),
                data.join(LOCK_FILE).display()
            )
        );
        drop(held);
        acquire(&data).expect("free again once the holder lets go");
    }
}
