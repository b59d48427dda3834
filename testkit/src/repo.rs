//! Real git repositories in temp dirs, driven by the `git` command line as a person would.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `git args` in `dir` with no user or system configuration, as a fixed author; its
/// trimmed stdout. Panics with git's output when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=DeployLite Tests",
            "-c",
            "user.email=tests@deploylite.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        // No user config: init.defaultBranch and the like must not leak in.
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run git: {e}"));
    assert!(
        out.status.success(),
        "git {args:?} failed in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real git repository (working copy, initial branch `main`) in a temp dir.
pub struct TestRepo {
    dir: tempfile::TempDir,
    /// The repository's name in the daemon's config.
    pub name: String,
    /// The `branches:` globs the daemon's config watches (empty = every branch).
    pub watch: Vec<String>,
}

impl TestRepo {
    pub fn new() -> TestRepo {
        TestRepo::named("app")
    }

    pub fn named(name: &str) -> TestRepo {
        let dir = tempfile::Builder::new()
            .prefix("deploylite-repo-")
            .tempdir()
            .expect("tempdir");
        git(dir.path(), &["init", "--quiet", "--initial-branch=main"]);
        TestRepo {
            dir,
            name: name.to_string(),
            watch: vec!["main".to_string()],
        }
    }

    /// Changes the branch globs the daemon watches for this repository.
    pub fn watching(mut self, branches: &[&str]) -> TestRepo {
        self.watch = branches.iter().map(|b| b.to_string()).collect();
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }

    /// Writes a file of the working copy (parents created).
    pub fn write(&self, path: &str, content: &str) -> &TestRepo {
        let file = self.path().join(path);
        fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        fs::write(&file, content).expect("write");
        self
    }

    /// Writes `.deploylite/pipelines/<file>`.
    pub fn pipeline(&self, file: &str, yaml: &str) -> &TestRepo {
        self.write(&format!(".deploylite/pipelines/{file}"), yaml)
    }

    pub fn remove(&self, path: &str) -> &TestRepo {
        fs::remove_file(self.path().join(path)).expect("remove");
        self
    }

    /// Stages everything and commits; returns the new commit id.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", msg]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// Creates `name` at HEAD (without switching to it).
    pub fn branch(&self, name: &str) {
        self.git(&["branch", name]);
    }

    pub fn checkout(&self, name: &str) {
        self.git(&["checkout", "--quiet", name]);
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        TestRepo::new()
    }
}
