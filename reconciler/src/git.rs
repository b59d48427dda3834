//! Everything DeployLite does with git, in one small module (gix is pinned and breaks its API
//! often). All functions block: callers run them on `spawn_blocking`.
//!
//! A repository is either a local path, read in place (polling it is a ref lookup on disk), or a
//! URL, mirrored under the data dir with the `git` CLI (which knows every transport and the
//! user's credential helpers) and then read like a local one. A credential in the URL
//! (`https://user:token@host/x.git`) never reaches git in a URL: the mirror is cloned and
//! fetched from the bare URL, and git gets the credential from a helper given in its
//! environment (see [`deploylite_runner::source_url`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use deploylite_runner::source_url::{
    credential_helper_config, origin, split_credentials, UrlCredential,
};
use gix::ObjectId;

mod checkout;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open git repository {path}: {message}")]
    Open { path: String, message: String },
    #[error("`git {args}` failed: {message}")]
    Command { args: String, message: String },
    #[error("{context}: {message}")]
    Read { context: String, message: String },
    #[error("unknown revision `{0}`")]
    UnknownRevision(String),
    #[error("refusing to check out `{path}`: {reason}")]
    UnsafeTree { path: String, reason: String },
    #[error("cannot write the workspace {path}: {source}")]
    Workspace {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = GitError> = std::result::Result<T, E>;

fn read_err(context: impl Into<String>) -> impl FnOnce(gix::Error) -> GitError {
    let context = context.into();
    move |e| GitError::Read {
        context,
        message: e.to_string(),
    }
}

/// Where the pipelines of a repository live.
pub const PIPELINES_DIR: &str = ".deploylite/pipelines";
/// Where a repository's own Rego policies live.
pub const ENVIRONMENTS_DIR: &str = ".deploylite/environments";
pub const POLICY_DIR: &str = deploylite_policy::REPOSITORY_POLICY_DIR;

/// A pipeline file as stored at one commit.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    /// Path in the repository, e.g. `.deploylite/pipelines/ci.yaml`.
    pub path: String,
    /// Git blob id: identical content has an identical id, which keys the parse cache.
    pub blob_id: String,
    pub content: Vec<u8>,
}

#[derive(Debug)]
enum Source {
    Local,
    Remote {
        /// Without its credential: what git, the mirror's config and error messages see.
        url: String,
        credential: Option<UrlCredential>,
    },
}

#[derive(Debug)]
pub struct GitRepo {
    source: Source,
    git_dir: PathBuf,
    repo: Option<gix::ThreadSafeRepository>,
}

/// Whether `url` names a local path rather than something to fetch.
pub fn is_local(url: &str) -> bool {
    !(url.contains("://") || (url.contains('@') && url.contains(':')))
}

impl GitRepo {
    /// A repository at a local path, read in place.
    pub fn local(path: &Path) -> Result<GitRepo> {
        Self::opened_in_place(path, gix::open(path))
    }

    /// The repository that `path` is in, found as git finds it: `path` itself or the nearest
    /// directory above it that is a repository (so `plan` works from a subdirectory).
    pub fn discover(path: &Path) -> Result<GitRepo> {
        Self::opened_in_place(path, gix::discover(path))
    }

    fn opened_in_place<E: std::fmt::Display>(
        path: &Path,
        opened: std::result::Result<gix::Repository, E>,
    ) -> Result<GitRepo> {
        let repo = opened.map_err(|e| GitError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(GitRepo {
            source: Source::Local,
            git_dir: repo.git_dir().to_path_buf(),
            repo: Some(repo.into_sync()),
        })
    }

    /// The working tree of a local repository (None when bare).
    pub fn work_dir(&self) -> Option<PathBuf> {
        self.repo()
            .ok()
            .and_then(|r| r.workdir().map(Path::to_path_buf))
    }

    /// A remote repository mirrored at `mirror` (created by the first [`GitRepo::fetch`]).
    pub fn remote(url: &str, mirror: &Path) -> GitRepo {
        let (url, credential) = split_credentials(url);
        GitRepo {
            source: Source::Remote { url, credential },
            git_dir: mirror.to_path_buf(),
            repo: None,
        }
    }

    /// Brings a mirror up to date; a no-op for local repositories.
    pub fn fetch(&mut self) -> Result<()> {
        let Source::Remote { url, credential } = &self.source else {
            return Ok(());
        };
        let auth = credential.as_ref().map(|c| (url.as_str(), c));
        if !self.git_dir.join("HEAD").exists() {
            let parent = self.git_dir.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent).map_err(|source| GitError::Workspace {
                path: parent.display().to_string(),
                source,
            })?;
            let dir = self.git_dir.display().to_string();
            run_git(
                &["clone", "--mirror", "--quiet", "--", url, &dir],
                None,
                auth,
            )?;
        } else {
            if self.repo.is_none() {
                // A mirror cloned before credentials were split off keeps them in its config.
                run_git(
                    &["config", "remote.origin.url", url],
                    Some(&self.git_dir),
                    None,
                )?;
            }
            run_git(
                &["fetch", "--prune", "--quiet", "origin"],
                Some(&self.git_dir),
                auth,
            )?;
        }
        if self.repo.is_none() {
            let repo = gix::open(&self.git_dir).map_err(|e| GitError::Open {
                path: self.git_dir.display().to_string(),
                message: e.to_string(),
            })?;
            self.repo = Some(repo.into_sync());
        }
        Ok(())
    }

    fn repo(&self) -> Result<gix::Repository> {
        self.repo
            .as_ref()
            .map(|r| r.to_thread_local())
            .ok_or_else(|| GitError::Open {
                path: self.git_dir.display().to_string(),
                message: "the mirror has not been fetched yet".into(),
            })
    }

    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Every branch (`refs/heads/...`) with the commit it points at.
    pub fn branch_heads(&self) -> Result<Vec<(String, String)>> {
        self.heads(true)
    }

    /// Every tag (`refs/tags/...`) with the commit it points at.
    pub fn tag_heads(&self) -> Result<Vec<(String, String)>> {
        self.heads(false)
    }

    fn heads(&self, branches: bool) -> Result<Vec<(String, String)>> {
        let repo = self.repo()?;
        let platform = repo.references().map_err(read_err("listing refs"))?;
        let iter = if branches {
            platform.local_branches()
        } else {
            platform.tags()
        }
        .map_err(read_err("listing refs"))?;
        let mut heads = Vec::new();
        for reference in iter {
            let Ok(reference) = reference else { continue };
            let name = reference.name().as_bstr().to_string();
            // A tag may point at a tag object: peel to the commit.
            let Ok(id) = reference.into_fully_peeled_id() else {
                continue;
            };
            heads.push((name, id.to_string()));
        }
        Ok(heads)
    }

    /// Resolves a commit id (full hex), a full ref name, a branch, a tag or `HEAD` to a commit.
    pub fn resolve(&self, rev: &str) -> Result<String> {
        let repo = self.repo()?;
        if let Ok(id) = ObjectId::from_hex(rev.as_bytes()) {
            return repo
                .find_commit(id)
                .map(|c| c.id.to_string())
                .map_err(|_| GitError::UnknownRevision(rev.to_string()));
        }
        let candidates = if rev == "HEAD" || rev.starts_with("refs/") {
            vec![rev.to_string()]
        } else {
            vec![
                format!("refs/heads/{rev}"),
                format!("refs/tags/{rev}"),
                format!("refs/remotes/origin/{rev}"),
            ]
        };
        for name in candidates {
            if let Ok(Some(reference)) = repo.try_find_reference(name.as_str()) {
                if let Ok(id) = reference.into_fully_peeled_id() {
                    return Ok(id.to_string());
                }
            }
        }
        Err(GitError::UnknownRevision(rev.to_string()))
    }

    /// Resolves any revision git accepts (`HEAD~1`, `main^`, `v1.0`, a short commit id,
    /// `@{-1}`...) to a commit. Names [`GitRepo::resolve`] knows are looked up directly; the
    /// rest of git's revision grammar is left to `git rev-parse`, which defines it.
    pub fn rev_parse(&self, rev: &str) -> Result<String> {
        if let Ok(id) = self.resolve(rev) {
            return Ok(id);
        }
        // A leading `-` would be read as an option.
        if rev.is_empty() || rev.starts_with('-') {
            return Err(GitError::UnknownRevision(rev.to_string()));
        }
        let spec = format!("{rev}^{{commit}}");
        let output = Command::new("git")
            .arg("--git-dir")
            .arg(&self.git_dir)
            .args(["rev-parse", "--verify", "--quiet", &spec])
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| GitError::Command {
                args: format!("rev-parse --verify {spec}"),
                message: e.to_string(),
            })?;
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() || ObjectId::from_hex(id.as_bytes()).is_err() {
            return Err(GitError::UnknownRevision(rev.to_string()));
        }
        Ok(id)
    }

    /// The full ref a short name refers to (`main` -> `refs/heads/main`), if any.
    pub fn full_ref_name(&self, rev: &str) -> Option<String> {
        let repo = self.repo().ok()?;
        if rev == "HEAD" {
            let head = repo.head_name().ok()??;
            return Some(head.as_bstr().to_string());
        }
        if rev.starts_with("refs/") {
            return Some(rev.to_string());
        }
        [format!("refs/heads/{rev}"), format!("refs/tags/{rev}")]
            .into_iter()
            .find(|name| matches!(repo.try_find_reference(name.as_str()), Ok(Some(_))))
    }

    /// The pipeline files of a commit, read from its tree without a checkout.
    pub fn pipeline_files(&self, commit: &str) -> Result<Vec<PipelineFile>> {
        self.files_in(commit, PIPELINES_DIR, |name| {
            name.ends_with(".yaml") || name.ends_with(".yml")
        })
    }

    /// The environment files of a commit (`.deploylite/environments/*.yaml`).
    pub fn environment_files(&self, commit: &str) -> Result<Vec<PipelineFile>> {
        self.files_in(commit, ENVIRONMENTS_DIR, |name| {
            name.ends_with(".yaml") || name.ends_with(".yml")
        })
    }

    /// The repository's own Rego policies at a commit (`.deploylite/policy/*.rego`).
    pub fn policy_files(&self, commit: &str) -> Result<Vec<PipelineFile>> {
        self.files_in(commit, POLICY_DIR, |name| name.ends_with(".rego"))
    }

    /// The blobs directly in `dir` at `commit` whose names `keep` accepts, by path.
    fn files_in(
        &self,
        commit: &str,
        dir_path: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<PipelineFile>> {
        let repo = self.repo()?;
        let id = parse_id(commit)?;
        let tree = repo
            .find_commit(id)
            .map_err(read_err(format!("reading commit {commit}")))?
            .tree()
            .map_err(read_err(format!("reading the tree of {commit}")))?;
        let Some(entry) = tree
            .lookup_entry_by_path(dir_path)
            .map_err(read_err(format!("looking up {dir_path}")))?
        else {
            return Ok(Vec::new());
        };
        if !entry.mode().is_tree() {
            return Ok(Vec::new());
        }
        let dir = repo
            .find_tree(entry.object_id())
            .map_err(read_err(format!("reading {dir_path}")))?;
        let decoded = dir.decode().map_err(|e| GitError::Read {
            context: format!("decoding {dir_path}"),
            message: e.to_string(),
        })?;
        let mut files = Vec::new();
        for e in &decoded.entries {
            let name = e.filename.to_string();
            if !e.mode.is_blob() || !keep(&name) {
                continue;
            }
            let blob = repo
                .find_blob(e.oid.to_owned())
                .map_err(read_err(format!("reading {dir_path}/{name}")))?;
            files.push(PipelineFile {
                path: format!("{dir_path}/{name}"),
                blob_id: e.oid.to_string(),
                content: blob.data.clone(),
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// A commit's author: (name, email).
    pub fn commit_author(&self, commit: &str) -> Result<(String, String)> {
        let repo = self.repo()?;
        let c = repo
            .find_commit(parse_id(commit)?)
            .map_err(read_err(format!("reading commit {commit}")))?;
        let author = c.author().map_err(|e| GitError::Read {
            context: format!("reading the author of {commit}"),
            message: e.to_string(),
        })?;
        Ok((author.name.to_string(), author.email.to_string()))
    }

    /// The branch HEAD names (the default branch of a mirror or a bare repository), if any.
    pub fn default_branch(&self) -> Option<String> {
        self.full_ref_name("HEAD")?
            .strip_prefix("refs/heads/")
            .map(str::to_string)
    }

    /// Paths whose content differs between two commits (added, removed or modified files).
    pub fn changed_paths(&self, from: &str, to: &str) -> Result<Vec<String>> {
        let repo = self.repo()?;
        let tree_of = |commit: &str| -> Result<ObjectId> {
            let id = parse_id(commit)?;
            Ok(repo
                .find_commit(id)
                .map_err(read_err(format!("reading commit {commit}")))?
                .tree_id()
                .map_err(read_err(format!("reading the tree of {commit}")))?
                .detach())
        };
        let (a, b) = (tree_of(from)?, tree_of(to)?);
        let mut out = Vec::new();
        diff_trees(&repo, Some(a), Some(b), "", &mut out)?;
        out.sort();
        Ok(out)
    }

    /// Writes the files of `commit` into `dir` (which must not exist yet or be empty).
    pub fn checkout(&self, commit: &str, dir: &Path) -> Result<()> {
        let repo = self.repo()?;
        let id = parse_id(commit)?;
        let tree = repo
            .find_commit(id)
            .map_err(read_err(format!("reading commit {commit}")))?
            .tree_id()
            .map_err(read_err(format!("reading the tree of {commit}")))?
            .detach();
        std::fs::create_dir_all(dir).map_err(|source| GitError::Workspace {
            path: dir.display().to_string(),
            source,
        })?;
        checkout::write_tree(&repo, tree, dir)
    }
}

fn parse_id(commit: &str) -> Result<ObjectId> {
    ObjectId::from_hex(commit.as_bytes()).map_err(|_| GitError::UnknownRevision(commit.to_string()))
}

/// Runs git; `auth` is the (bare) URL it talks to and the credential for it, handed over by the
/// credential helper in git's environment.
fn run_git(
    args: &[&str],
    git_dir: Option<&Path>,
    auth: Option<(&str, &UrlCredential)>,
) -> Result<()> {
    let mut command = Command::new("git");
    if let Some(dir) = git_dir {
        command.arg("--git-dir").arg(dir);
    }
    command.args(args).env("GIT_TERMINAL_PROMPT", "0");
    if let Some((url, credential)) = auth {
        if let Some(origin) = origin(url) {
            command
                .envs(credential_helper_config(&origin))
                .env("DEPLOYLITE_GIT_USERNAME", &credential.username)
                .env("DEPLOYLITE_GIT_PASSWORD", &credential.password);
        }
    }
    let output = command.output().map_err(|e| GitError::Command {
        args: args.join(" "),
        message: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(GitError::Command {
            args: args.join(" "),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

struct TreeEntry {
    id: ObjectId,
    is_tree: bool,
}

fn tree_entries(
    repo: &gix::Repository,
    id: Option<ObjectId>,
) -> Result<HashMap<String, TreeEntry>> {
    let Some(id) = id else {
        return Ok(HashMap::new());
    };
    let tree = repo
        .find_tree(id)
        .map_err(read_err(format!("reading tree {id}")))?;
    let decoded = tree.decode().map_err(|e| GitError::Read {
        context: format!("decoding tree {id}"),
        message: e.to_string(),
    })?;
    Ok(decoded
        .entries
        .iter()
        .map(|e| {
            (
                e.filename.to_string(),
                TreeEntry {
                    id: e.oid.to_owned(),
                    is_tree: e.mode.is_tree(),
                },
            )
        })
        .collect())
}

/// Recursive tree comparison; equal subtree ids are skipped without being read, so the cost
/// follows the size of the change, not of the repository.
fn diff_trees(
    repo: &gix::Repository,
    a: Option<ObjectId>,
    b: Option<ObjectId>,
    prefix: &str,
    out: &mut Vec<String>,
) -> Result<()> {
    let left = tree_entries(repo, a)?;
    let right = tree_entries(repo, b)?;
    let mut names: Vec<&String> = left.keys().chain(right.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let path = format!("{prefix}{name}");
        let (l, r) = (left.get(name), right.get(name));
        if let (Some(l), Some(r)) = (l, r) {
            if l.id == r.id && l.is_tree == r.is_tree {
                continue;
            }
        }
        let sub = |e: Option<&TreeEntry>| e.filter(|e| e.is_tree).map(|e| e.id);
        let (lt, rt) = (sub(l), sub(r));
        if lt.is_some() || rt.is_some() {
            diff_trees(repo, lt, rt, &format!("{path}/"), out)?;
        }
        let is_file = |e: Option<&TreeEntry>| e.is_some_and(|e| !e.is_tree);
        if is_file(l) || is_file(r) {
            out.push(path);
        }
    }
    Ok(())
}

impl GitRepo {
    /// The first parent of a commit (None for a root commit).
    pub fn first_parent(&self, commit: &str) -> Result<Option<String>> {
        let repo = self.repo()?;
        let c = repo
            .find_commit(parse_id(commit)?)
            .map_err(read_err(format!("reading commit {commit}")))?;
        let parent = c.parent_ids().next().map(|id| id.to_string());
        Ok(parent)
    }
}
