//! The unprivileged user stages run as when we are root, and handing workspaces to it.

use std::fs;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::Path;

use super::SandboxError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageUser {
    /// The login name, or the uid when the uid has no passwd entry.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl std::fmt::Display for StageUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.name, self.uid, self.gid)
    }
}

impl StageUser {
    /// `name`, or `uid[:gid]` (the gid defaults to the uid's primary group, else to the uid).
    /// Reads the user database: call it once at start.
    pub fn resolve(spec: &str) -> Result<StageUser, SandboxError> {
        let bad = || SandboxError::BadUser(spec.to_string());
        let spec = spec.trim();
        if spec.is_empty() || spec.len() > 64 {
            return Err(bad());
        }
        if spec.starts_with(|c: char| c.is_ascii_digit()) {
            let (uid, gid) = match spec.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (spec, None),
            };
            let uid: u32 = uid.parse().map_err(|_| bad())?;
            let gid: Option<u32> = gid.map(|g| g.parse().map_err(|_| bad())).transpose()?;
            let entry =
                nix::unistd::User::from_uid(uid.into()).map_err(|source| SandboxError::Lookup {
                    name: spec.to_string(),
                    source,
                })?;
            return Ok(StageUser {
                name: entry
                    .as_ref()
                    .map_or_else(|| uid.to_string(), |u| u.name.clone()),
                uid,
                gid: gid.unwrap_or_else(|| entry.map_or(uid, |u| u.gid.as_raw())),
            });
        }
        let plain = spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            return Err(bad());
        }
        match nix::unistd::User::from_name(spec) {
            Ok(Some(u)) => Ok(StageUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(SandboxError::UnknownUser(spec.to_string())),
            Err(source) => Err(SandboxError::Lookup {
                name: spec.to_string(),
                source,
            }),
        }
    }

    /// Every directory from `/` down to `dir` must let this user through (`x` for it, with only
    /// its primary group: supplementary groups are dropped), or no step could start there.
    pub(crate) fn check_reaches(&self, dir: &Path) -> Result<(), SandboxError> {
        let unreachable = |path: &Path, why: String| SandboxError::Unreachable {
            user: self.to_string(),
            path: dir.to_path_buf(),
            why: format!("{}: {why}", path.display()),
        };
        let dir = dir
            .canonicalize()
            .map_err(|e| unreachable(dir, e.to_string()))?;
        for step in dir.ancestors() {
            let meta = fs::metadata(step).map_err(|e| unreachable(step, e.to_string()))?;
            let mode = meta.mode();
            let bit = if meta.uid() == self.uid {
                0o100
            } else if meta.gid() == self.gid {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                return Err(unreachable(
                    step,
                    format!(
                        "mode {:o}, owner {}:{}; let it through (chmod o+x) or move the directory",
                        mode & 0o7777,
                        meta.uid(),
                        meta.gid()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Gives `dir` and everything in it to `owner` (when stages run as another user) and closes
/// `dir` to everyone else. Symlinks are changed themselves, never followed. The root goes
/// last, so a workspace owned by the stage user is a complete one. Returns how many entries
/// changed owner.
pub(super) fn adopt(dir: &Path, owner: Option<(u32, u32)>) -> Result<usize, SandboxError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Adopt { path, source }
    };
    let mut changed = 0;
    if let Some((uid, gid)) = owner {
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            for entry in fs::read_dir(&current).map_err(failed(&current))? {
                let entry = entry.map_err(failed(&current))?;
                let path = entry.path();
                lchown(&path, Some(uid), Some(gid)).map_err(failed(&path))?;
                changed += 1;
                if entry.file_type().map_err(failed(&path))?.is_dir() {
                    pending.push(path);
                }
            }
        }
        lchown(dir, Some(uid), Some(gid)).map_err(failed(dir))?;
        changed += 1;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(failed(dir))?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs() {
        let root = StageUser::resolve("0").unwrap();
        assert_eq!((root.uid, root.gid, root.name.as_str()), (0, 0, "root"));
        let numeric = StageUser::resolve("4242:4343").unwrap();
        assert_eq!((numeric.uid, numeric.gid), (4242, 4343));
        assert_eq!(
            StageUser::resolve("4241").unwrap().gid,
            4241,
            "no passwd entry"
        );
        assert_eq!(StageUser::resolve("root").unwrap().uid, 0);
        for bad in ["", "12x", "1:x", "a b", "../x", "x:1"] {
            assert!(
                matches!(StageUser::resolve(bad), Err(SandboxError::BadUser(_))),
                "{bad:?}"
            );
        }
        let err = StageUser::resolve("no-such-user-d7")
            .unwrap_err()
            .to_string();
        assert!(err.contains("there is no user `no-such-user-d7`"), "{err}");
    }

    #[test]
    fn a_directory_closed_to_others_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("workspaces");
        fs::create_dir(&inner).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let stranger = StageUser {
            name: "stranger".into(),
            uid: 4242,
            gid: 4242,
        };
        let err = stranger.check_reaches(&inner).unwrap_err().to_string();
        assert!(
            err.contains("mode 700") && err.contains("chmod o+x"),
            "{err}"
        );
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        stranger.check_reaches(&inner).unwrap();
    }

    #[test]
    fn adopting_changes_owners_without_following_symlinks() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give files away
        }
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target");
        fs::write(&target, "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), "f").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("a/link")).unwrap();
        assert_eq!(adopt(dir.path(), Some((4242, 4343))).unwrap(), 5);
        for p in ["", "a", "a/b", "a/b/f", "a/link"] {
            let meta = fs::symlink_metadata(dir.path().join(p)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4343), "{p}");
        }
        assert_eq!(
            fs::metadata(&target).unwrap().uid(),
            0,
            "followed a symlink"
        );
        assert_eq!(fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o700);
    }
}
