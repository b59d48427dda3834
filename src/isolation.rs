//! Start-up checks of `serve` and `runner` that keep local stages away from our secrets (the
//! mechanisms live in `deploylite_runner::sandbox`; docs/local-isolation.md says what they
//! cover).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Makes this process non-dumpable: a stage running as our user can then read neither our
/// environment nor our memory through /proc. A failure is logged, not fatal.
pub fn harden_process() {
    if let Err(error) = deploylite_runner::sandbox::harden_process() {
        tracing::warn!(%error, "cannot make this process non-dumpable: stages running as this \
            user can read its environment in /proc");
    }
}

/// Warns, as ssh does for keys, about each file that holds secrets but is readable by its
/// group or by others. Never fails: the file was read already.
pub fn warn_if_readable_by_others(files: &[PathBuf]) {
    for file in files {
        if let Some(mode) = readable_by_others(file) {
            tracing::warn!(
                file = %file.display(),
                mode = %format!("{mode:o}"),
                "this file holds secrets and other users can read it: chmod 600 {}",
                file.display()
            );
        }
    }
}

/// The permission bits of `file` when its group or others may read it.
fn readable_by_others(file: &Path) -> Option<u32> {
    let mode = std::fs::metadata(file).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_other_read_bits_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "t").unwrap();
        for (mode, flagged) in [(0o600, false), (0o640, true), (0o604, true), (0o400, false)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(readable_by_others(&file).is_some(), flagged, "{mode:o}");
        }
        assert_eq!(readable_by_others(&dir.path().join("missing")), None);
    }
}
