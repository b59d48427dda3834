//! The layout of the data directory, in one place.

use deploylite_model::{Attempt, RunId};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `logs/<run>/<stage>@<attempt>.log`: one directory per run, not per stage, because
    /// creating a directory costs as much as the rest of a short stage's bookkeeping. `@` never
    /// appears in an encoded stage name, so the name cannot collide with another stage's.
    pub fn log_path(&self, run_id: RunId, stage: &str, attempt: Attempt) -> PathBuf {
        self.run_logs(run_id)
            .join(format!("{}@{attempt}.log", safe_component(stage)))
    }

    pub fn run_logs(&self, run_id: RunId) -> PathBuf {
        self.root.join("logs").join(run_id.to_string())
    }

    pub fn workspaces(&self) -> PathBuf {
        self.root.join("workspaces")
    }

    pub fn workspace(&self, run_id: RunId) -> PathBuf {
        self.workspaces().join(run_id.to_string())
    }

    /// Where a remote repository is mirrored.
    pub fn mirror(&self, repo: &str) -> PathBuf {
        self.root
            .join("git")
            .join(format!("{}.git", safe_component(repo)))
    }

    pub fn default_database_url(&self) -> String {
        format!("sqlite://{}", self.root.join("deploylite.db").display())
    }

    /// Creates the data dir (or tightens an existing one) so that a stage running as another
    /// user reaches its own workspace and nothing else: the root and `workspaces/` are 0711
    /// (enter by a known name, never list), `logs/` and `git/` 0700, and the SQLite database at
    /// `sqlite_path` (when it is one) 0600, created empty if need be so that SQLite gives its
    /// `-wal` and `-shm` files the same mode. Blocking: run it off the runtime.
    pub fn create_private(&self, sqlite_path: Option<&Path>) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let dirs = [
            (self.root.clone(), 0o711),
            (self.workspaces(), 0o711),
            (self.root.join("logs"), 0o700),
            (self.root.join("git"), 0o700),
        ];
        for (dir, mode) in dirs {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        }
        if let Some(db) = sqlite_path {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(db)?;
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut name = db.as_os_str().to_owned();
                name.push(suffix);
                match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The file of a `sqlite:` database URL (None for other databases and in-memory ones).
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Stage and repository names are validated upstream, but a path is built from them here, so
/// anything that could escape the directory is encoded instead of trusted.
fn safe_component(name: &str) -> String {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        name.to_string()
    } else {
        name.bytes().map(|b| format!("%{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        let d = DataDir::new("/data");
        assert_eq!(
            d.log_path(RunId::new(3), "test", Attempt::new(2)),
            PathBuf::from("/data/logs/3/test@2.log")
        );
        assert_eq!(
            d.log_path(RunId::new(3), "..", Attempt::new(1)),
            PathBuf::from("/data/logs/3/%2e%2e@1.log")
        );
        assert_eq!(
            d.log_path(RunId::new(3), "a@1", Attempt::new(2)),
            PathBuf::from("/data/logs/3/%61%40%31@2.log")
        );
        assert_eq!(d.mirror("a/b"), PathBuf::from("/data/git/%61%2f%62.git"));
    }

    #[test]
    fn the_layout_is_private_but_workspaces_are_reachable() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("data"));
        std::fs::create_dir_all(data.root().join("logs")).unwrap();
        std::fs::set_permissions(
            data.root().join("logs"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let db = data.root().join("deploylite.db");
        std::fs::write(format!("{}-wal", db.display()), "").unwrap();
        data.create_private(Some(&db)).unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(data.root().to_path_buf()), 0o711);
        assert_eq!(mode(data.workspaces()), 0o711);
        assert_eq!(mode(data.root().join("logs")), 0o700, "tightened");
        assert_eq!(mode(data.root().join("git")), 0o700);
        assert_eq!(mode(db.to_path_buf()), 0o600);
        assert_eq!(mode(PathBuf::from(format!("{}-wal", db.display()))), 0o600);
    }

    #[test]
    fn sqlite_files_of_urls() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/d/deploylite.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/d/deploylite.db"))
        );
        assert_eq!(sqlite_file("sqlite:rel.db"), Some(PathBuf::from("rel.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
