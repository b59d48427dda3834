//! Landlock for stages that share our uid: the stage-spawning thread (`spawner.rs`) restricts
//! itself with a ruleset that covers the whole file system except the protected paths (and lets
//! the workspaces back in), built once instead of for every step.
//!
//! Landlock only grants: to deny `/srv/ci/data`, every entry of `/`, `/srv` and `/srv/ci` other
//! than the way down to it is granted, as it exists when the thread starts. The directories on
//! the way (`/`, `/srv`, `/srv/ci`) can be passed through but not listed or written, and what
//! appears in them later is out of reach (docs/local-isolation.md).

use std::fs;
use std::path::{Path, PathBuf};

use super::SandboxError;
use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The newest ABI we ask for; older kernels enforce what they have (best effort).
const TARGET_ABI: ABI = ABI::V6;

/// Restricts the calling thread to everything but `protected`, plus `workspaces`; its status,
/// or None when the kernel enforces no Landlock at all.
pub(super) fn confine(
    protected: &[PathBuf],
    workspaces: &Path,
) -> Result<Option<String>, SandboxError> {
    let status = ruleset(protected, workspaces)?
        .restrict_self()
        .map_err(|e| SandboxError::Landlock(e.to_string()))?;
    Ok(match status.ruleset {
        RulesetStatus::NotEnforced => None,
        RulesetStatus::FullyEnforced => Some("Landlock (fully enforced)".into()),
        _ => Some("Landlock (partially enforced: an older kernel)".into()),
    })
}

/// Everything but `protected`, plus `workspaces`. Reads directories: not on the runtime.
fn ruleset(protected: &[PathBuf], workspaces: &Path) -> Result<RulesetCreated, SandboxError> {
    let failed = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    // The walk from `/` meets real paths only. A protected path that does not exist has
    // nothing to protect.
    let protected: Vec<PathBuf> = protected
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    let workspaces = workspaces
        .canonicalize()
        .map_err(|e| SandboxError::Landlock(format!("{}: {e}", workspaces.display())))?;
    let all = AccessFs::from_all(TARGET_ABI);
    let file = AccessFs::from_file(TARGET_ABI);
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .map_err(failed)?
        // Nor may a stage signal us (or anything else outside its sandbox).
        .scope(Scope::Signal)
        .map_err(failed)?
        .create()
        .map_err(failed)?;
    let mut grants = Vec::new();
    collect_grants(Path::new("/"), &protected, &mut grants);
    grants.push((workspaces, true));
    for (path, is_dir) in grants {
        // Gone since it was listed: nothing to grant.
        let Ok(fd) = PathFd::new(&path) else { continue };
        let access: BitFlags<AccessFs> = if is_dir { all } else { file };
        (&mut ruleset)
            .add_rule(PathBeneath::new(fd, access))
            .map_err(failed)?;
    }
    Ok(ruleset)
}

/// The entries of `dir` to grant: all but the protected ones, descending into those that lead
/// to a protected path. Symlinks are skipped: their targets are judged where they live.
fn collect_grants(dir: &Path, protected: &[PathBuf], grants: &mut Vec<(PathBuf, bool)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() || protected.contains(&path) {
            continue;
        }
        if kind.is_dir() && protected.iter().any(|p| p.starts_with(&path)) {
            collect_grants(&path, protected, grants);
        } else {
            grants.push((path, kind.is_dir()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_everything_but_the_way_to_protected_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["data/workspaces", "data/logs", "etc/app", "other"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/app/config.yaml"), "").unwrap();
        fs::write(root.join("etc/hosts"), "").unwrap();
        std::os::unix::fs::symlink(root.join("data"), root.join("link")).unwrap();
        let protected = [root.join("data"), root.join("etc/app/config.yaml")];
        let mut grants = Vec::new();
        collect_grants(root, &protected, &mut grants);
        grants.sort();
        assert_eq!(
            grants,
            vec![(root.join("etc/hosts"), false), (root.join("other"), true)]
        );
    }
}
