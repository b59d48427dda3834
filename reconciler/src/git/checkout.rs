//! Writing a commit's tree into a workspace. A tree is untrusted input: it may hold a symlink
//! and a directory of the same name (`git fsck` calls it `duplicateEntries`), or names such as
//! `..`, so no path is ever resolved through the workspace. Each directory is opened relative
//! to its parent's descriptor with `O_NOFOLLOW`, and every entry is created with `mkdirat`,
//! `symlinkat` or `O_CREAT | O_EXCL | O_NOFOLLOW`: an entry that already exists (a symlink
//! written a moment ago included) is an error, never something to write through.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use gix::ObjectId;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::symlinkat;

use super::{read_err, GitError, Result};

/// Deeper trees are refused (git itself stops at 2048 by default); each level holds a
/// descriptor while its subtrees are written.
const MAX_DEPTH: usize = 256;

/// Writes `tree` into the existing directory `root`.
pub(super) fn write_tree(repo: &gix::Repository, tree: ObjectId, root: &Path) -> Result<()> {
    let dir = open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| workspace_error(&root.display().to_string(), errno))?;
    write_dir(repo, tree, &dir, "", 0)
}

fn workspace_error(path: &str, errno: nix::errno::Errno) -> GitError {
    GitError::Workspace {
        path: path.to_string(),
        source: std::io::Error::from(errno),
    }
}

fn unsafe_tree(path: String, reason: &str) -> GitError {
    GitError::UnsafeTree {
        path,
        reason: reason.to_string(),
    }
}

/// Why a tree entry's name can never be written, if it cannot.
fn refused_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("the tree has an entry with an empty name")
    } else if name == b"." || name == b".." {
        Some("a tree entry may not be named `.` or `..`")
    } else if name.eq_ignore_ascii_case(b".git") {
        Some("a tree entry may not be named `.git`")
    } else if name.contains(&b'/') {
        Some("a tree entry's name may not contain `/`")
    } else if name.contains(&0) {
        Some("a tree entry's name may not contain NUL")
    } else {
        None
    }
}

fn write_dir(
    repo: &gix::Repository,
    tree: ObjectId,
    dir: &OwnedFd,
    prefix: &str,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(unsafe_tree(
            prefix.trim_end_matches('/').to_string(),
            &format!("the tree is nested more than {MAX_DEPTH} levels deep"),
        ));
    }
    let tree = repo
        .find_tree(tree)
        .map_err(read_err(format!("reading tree {tree}")))?;
    let decoded = tree.decode().map_err(|e| GitError::Read {
        context: "decoding a tree".into(),
        message: e.to_string(),
    })?;
    // Every name is checked before anything of this directory is written.
    let mut seen = HashSet::new();
    for e in &decoded.entries {
        let name: &[u8] = e.filename.as_ref();
        let path = format!("{prefix}{}", e.filename);
        if let Some(reason) = refused_name(name) {
            return Err(unsafe_tree(path, reason));
        }
        if !seen.insert(name) {
            return Err(unsafe_tree(
                path,
                "the tree has two entries of that name (git fsck: duplicateEntries)",
            ));
        }
    }
    for e in &decoded.entries {
        let name = OsStr::from_bytes(e.filename.as_ref());
        let path = format!("{prefix}{}", e.filename);
        if e.mode.is_tree() || e.mode.is_commit() {
            mkdirat(dir, name, Mode::from_bits_truncate(0o755))
                .map_err(|errno| workspace_error(&path, errno))?;
            if e.mode.is_commit() {
                // A submodule: an empty directory, as `git clone` without --recursive leaves.
                continue;
            }
            let sub = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|errno| workspace_error(&path, errno))?;
            write_dir(repo, e.oid.to_owned(), &sub, &format!("{path}/"), depth + 1)?;
            continue;
        }
        let blob = repo
            .find_blob(e.oid.to_owned())
            .map_err(read_err(format!("reading {path}")))?;
        if e.mode.is_link() {
            symlinkat(OsStr::from_bytes(&blob.data), dir, name)
                .map_err(|errno| workspace_error(&path, errno))?;
            continue;
        }
        let fd = openat(
            dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|errno| workspace_error(&path, errno))?;
        let mut file = std::fs::File::from(fd);
        let io = |source| GitError::Workspace {
            path: path.clone(),
            source,
        };
        file.write_all(&blob.data).map_err(io)?;
        if e.mode.is_executable() {
            file.set_permissions(std::fs::Permissions::from_mode(0o755))
                .map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::refused_name;

    #[test]
    fn names_that_are_never_written() {
        for name in [&b""[..], b".", b"..", b".git", b".GIT", b"a/b", b"a\0b"] {
            assert!(refused_name(name).is_some(), "{name:?} was accepted");
        }
        for name in [&b"..."[..], b".gitignore", b"git", b"zz", b".deploylite"] {
            assert!(refused_name(name).is_none(), "{name:?} was refused");
        }
    }
}
