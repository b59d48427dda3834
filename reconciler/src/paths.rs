//! The layout of the data directory, in one place.

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
    pub fn log_path(&self, run_id: i64, stage: &str, attempt: i64) -> PathBuf {
        self.run_logs(run_id)
            .join(format!("{}@{attempt}.log", safe_component(stage)))
    }

    pub fn run_logs(&self, run_id: i64) -> PathBuf {
        self.root.join("logs").join(run_id.to_string())
    }

    pub fn workspaces(&self) -> PathBuf {
        self.root.join("workspaces")
    }

    pub fn workspace(&self, run_id: i64) -> PathBuf {
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
            d.log_path(3, "test", 2),
            PathBuf::from("/data/logs/3/test@2.log")
        );
        assert_eq!(
            d.log_path(3, "..", 1),
            PathBuf::from("/data/logs/3/%2e%2e@1.log")
        );
        assert_eq!(
            d.log_path(3, "a@1", 2),
            PathBuf::from("/data/logs/3/%61%40%31@2.log")
        );
        assert_eq!(d.mirror("a/b"), PathBuf::from("/data/git/%61%2f%62.git"));
    }
}
