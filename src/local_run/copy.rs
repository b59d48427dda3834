//! The throwaway copy of a working tree that `deploylite run` works in, so that a step's
//! `rm -rf` or build output never touches the user's checkout.
//!
//! What is copied is what `git ls-files --cached --others --exclude-standard` lists, as it is
//! on disk: tracked files (uncommitted changes included; tracked files deleted on disk stay
//! deleted) and untracked files that are not ignored. No `.git`. Outside a git work tree,
//! everything but `.git` directories is copied.
//!
//! Files are copied, never hard-linked: a step writing through a hard link would change the
//! original. `std::fs::copy` uses `copy_file_range`, which clones the data (a reflink) where the
//! file system can (btrfs, XFS, bcachefs on the same mount) and copies it in the kernel
//! otherwise.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A copy of a working tree in a temp dir, deleted when dropped.
pub struct WorkingCopy {
    dir: tempfile::TempDir,
    pub files: usize,
}

impl WorkingCopy {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Deletes the copy, saying why when it cannot (dropping it would not).
    pub fn delete(self) -> io::Result<()> {
        self.dir.close()
    }

    /// Blocking (git, a file walk): call it from `spawn_blocking`.
    pub fn of(source: &Path) -> Result<WorkingCopy> {
        let dir = tempfile::Builder::new()
            .prefix("deploylite-run-")
            .tempdir()
            .context("cannot create a temp dir for the working copy (TMPDIR)")?;
        let listed = match git_listed_files(source)? {
            Some(files) => files,
            None => walk(source)?,
        };
        let mut files = 0;
        for relative in listed {
            if copy_entry(&source.join(&relative), &dir.path().join(&relative))
                .with_context(|| format!("cannot copy {}", source.join(&relative).display()))?
            {
                files += 1;
            }
        }
        Ok(WorkingCopy { dir, files })
    }
}

/// The files git would consider part of the working tree, relative to `dir`; None when `dir`
/// is not inside a git work tree.
fn git_listed_files(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let inside = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--is-inside-work-tree"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match inside {
        Ok(out) if out.status.success() && out.stdout.starts_with(b"true") => {}
        // No git, or not a work tree (a plain directory, a bare repository).
        _ => return Ok(None),
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run `git ls-files`")?;
    if !out.status.success() {
        bail!(
            "`git ls-files` failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    use std::os::unix::ffi::OsStrExt;
    let mut files: Vec<PathBuf> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(std::ffi::OsStr::from_bytes(name)))
        .collect();
    // A file both modified and unmerged is listed once per stage of the merge.
    files.dedup();
    Ok(Some(files))
}

/// Every entry under `root` except `.git` (relative paths): for a directory outside git.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            if entry.file_name() == ".git" {
                continue;
            }
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Copies one listed entry (a file, a symlink, or a submodule's directory); false when it is
/// gone from disk (a tracked file deleted and not yet committed).
fn copy_entry(from: &Path, to: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(from) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        // As a link: the target may point anywhere, and copying it would follow it there.
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if kind.is_dir() {
        // A submodule (git lists it as one entry): its files, not its `.git`.
        for relative in walk(from).map_err(io::Error::other)? {
            copy_entry(&from.join(&relative), &to.join(&relative))?;
        }
    } else if kind.is_file() {
        std::fs::copy(from, to)?;
    }
    Ok(true)
}
