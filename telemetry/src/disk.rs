//! The data dir's file system: logs, workspaces and mirrors fill it, so its free space is a
//! gauge (`deploylite_data_dir_free_bytes`) an alert can watch.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    pub size_bytes: u64,
}

/// The space of the file system holding `path`. Blocking (a system call): call it off the
/// async runtime.
pub fn disk_space(path: &Path) -> std::io::Result<DiskSpace> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let fragment = stat.fragment_size();
    Ok(DiskSpace {
        free_bytes: stat.blocks_available().saturating_mul(fragment),
        size_bytes: stat.blocks().saturating_mul(fragment),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_file_system_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let space = super::disk_space(dir.path()).unwrap();
        assert!(space.size_bytes > 0);
        assert!(space.free_bytes <= space.size_bytes);
        assert!(super::disk_space(&dir.path().join("missing")).is_err());
    }
}
