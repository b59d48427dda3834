//! The reconciler loop: for every watched repository, compare each ref's head with the commit
//! recorded for it, and turn the difference into runs. Polls on an interval; a webhook (later)
//! only pokes a repository to poll now. Run identity makes double work harmless. Each
//! repository's polling is recorded in its [`RepoHealth`]; failing polls back off.

mod health;
mod tags;

pub use health::{poll_delay, RepoHealth, MAX_BACKOFF_FACTOR};
pub use tags::{tag_warnings, TagFilter};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploylite_model::RunId;
use deploylite_pipeline::{Event, GlobList};
use deploylite_runner::source_url::redact_url;
use deploylite_runner::{BoxFuture, CancellationToken};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::desired::{CommitEvent, ParseCache};
use crate::git::{is_local, GitError, GitRepo};
use crate::paths::DataDir;
use crate::run_gate::{self, RunGateFacts};
use crate::scheduler::{WorkspaceError, WorkspaceSource};
use crate::store::{now_ms, RecordCommit, Store, StoreError};
use crate::trust::{Untrusted, UntrustedPolicy};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown repository `{0}`")]
    UnknownRepo(String),
    #[error("background task failed: {0}")]
    Task(String),
}

#[derive(Clone)]
pub struct RepoConfig {
    pub name: String,
    /// A local path or any URL `git` can fetch.
    pub url: String,
    /// Branch globs to watch; empty = every branch.
    pub branches: GlobList,
    /// Which tags to watch: by default those the pipelines ask for.
    pub tags: TagFilter,
    pub poll_interval: Duration,
    /// Whether runs of this repository are reported to a forge.
    pub report: bool,
    /// What pull requests from forks by non-members may do.
    pub untrusted: UntrustedPolicy,
}

/// By hand: the URL may carry a credential.
impl std::fmt::Debug for RepoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("branches", &self.branches)
            .field("tags", &self.tags)
            .field("poll_interval", &self.poll_interval)
            .field("report", &self.report)
            .finish()
    }
}

pub struct RepoEntry {
    pub config: RepoConfig,
    git: Mutex<Option<GitRepo>>,
    poke: Notify,
    mirror: PathBuf,
    health: Mutex<RepoHealth>,
    /// Whether the tags present when tags were first watched are known to be recorded (a
    /// cache of the store's answer).
    tags_baselined: AtomicBool,
    /// The commit whose pipelines the tag warnings were computed from.
    tag_warnings_of: Mutex<Option<String>>,
}

/// A repository as the API shows it: never its URL's credential.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepoStatus {
    pub name: String,
    pub url: String,
    pub health: RepoHealth,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RepoEntry {
    /// Runs `f` on the (opened, and for remotes fetched-at-least-once) repository, off the runtime.
    pub(crate) async fn with_git<T: Send + 'static>(
        self: &Arc<Self>,
        fetch: bool,
        f: impl FnOnce(&GitRepo) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, ReconcileError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = this.git.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = Some(if is_local(&this.config.url) {
                    GitRepo::local(std::path::Path::new(&this.config.url))?
                } else {
                    let mut repo = GitRepo::remote(&this.config.url, &this.mirror);
                    repo.fetch()?;
                    repo
                });
            } else if fetch {
                if let Some(repo) = guard.as_mut() {
                    repo.fetch()?;
                }
            }
            match guard.as_ref() {
                Some(repo) => f(repo).map_err(ReconcileError::from),
                None => Err(ReconcileError::Task("repository not opened".into())),
            }
        })
        .await
        .map_err(|e| ReconcileError::Task(e.to_string()))?
    }
}

/// The watched repositories, by name.
pub struct Repos {
    entries: HashMap<String, Arc<RepoEntry>>,
}

impl Repos {
    pub fn new(configs: Vec<RepoConfig>, data: &DataDir) -> Repos {
        let entries = configs
            .into_iter()
            .map(|config| {
                let entry = RepoEntry {
                    mirror: data.mirror(&config.name),
                    config,
                    git: Mutex::new(None),
                    poke: Notify::new(),
                    health: Mutex::new(RepoHealth::default()),
                    tags_baselined: AtomicBool::new(false),
                    tag_warnings_of: Mutex::new(None),
                };
                (entry.config.name.clone(), Arc::new(entry))
            })
            .collect();
        Repos { entries }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<RepoEntry>> {
        self.entries.get(name)
    }

    /// The git directory a repository is read from (the repository itself, or its mirror).
    pub async fn git_dir(&self, repo: &str) -> Option<std::path::PathBuf> {
        let entry = self.entries.get(repo)?.clone();
        entry
            .with_git(false, |git| Ok(git.git_dir().to_path_buf()))
            .await
            .ok()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Every repository with its polling health, by name.
    pub fn statuses(&self) -> Vec<RepoStatus> {
        let mut list: Vec<RepoStatus> = self
            .entries
            .values()
            .map(|entry| RepoStatus {
                name: entry.config.name.clone(),
                url: redact_url(&entry.config.url),
                health: lock(&entry.health).clone(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Makes the watcher poll `repo` now (e.g. on a webhook). False for an unknown repository.
    pub fn poke(&self, repo: &str) -> bool {
        match self.entries.get(repo) {
            Some(entry) => {
                entry.poke.notify_one();
                true
            }
            None => false,
        }
    }
}

impl WorkspaceSource for Repos {
    fn prepare(
        &self,
        repo: &str,
        commit: &str,
        dir: &std::path::Path,
    ) -> BoxFuture<'static, Result<(), WorkspaceError>> {
        let entry = self.entries.get(repo).cloned();
        let (repo, commit, dir) = (repo.to_string(), commit.to_string(), dir.to_path_buf());
        Box::pin(async move {
            let entry = entry.ok_or(WorkspaceError::RepoGone(repo))?;
            entry
                .with_git(false, move |git| git.checkout(&commit, &dir))
                .await
                .map_err(WorkspaceError::from)
        })
    }
}

pub struct Watcher {
    store: Store,
    repos: Arc<Repos>,
    /// Shared with the blocking task that parses a commit's pipelines.
    cache: Arc<ParseCache>,
    scheduler: Arc<Notify>,
    /// The `deploylite.run` gate's operator bundles (repository policies are read per commit).
    policies: Arc<deploylite_policy::Policies>,
    /// Open pull requests as watched state (`pulls.rs`) and the delivery queues (`inbox.rs`).
    pub(crate) pulls: crate::pulls::PullWatch,
    pub(crate) inbox: crate::inbox::Inbox,
    /// Told when a commit was recorded: the environment controller's desired versions moved.
    on_commit: std::sync::OnceLock<Arc<Notify>>,
}

impl Watcher {
    pub fn new(store: Store, repos: Arc<Repos>, scheduler: Arc<Notify>) -> Arc<Watcher> {
        Watcher::with_policies(store, repos, scheduler, Arc::default())
    }

    /// A watcher whose runs pass the operator's policy bundles (`policy.bundles`).
    pub fn with_policies(
        store: Store,
        repos: Arc<Repos>,
        scheduler: Arc<Notify>,
        policies: Arc<deploylite_policy::Policies>,
    ) -> Arc<Watcher> {
        Arc::new(Watcher {
            store,
            repos,
            cache: Arc::new(ParseCache::default()),
            scheduler,
            policies,
            pulls: Default::default(),
            inbox: Default::default(),
            on_commit: std::sync::OnceLock::new(),
        })
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        for entry in self.repos.entries.values() {
            tasks.spawn(self.clone().watch(entry.clone(), shutdown.clone()));
            tasks.spawn(
                self.clone()
                    .watch_pull_requests_of(entry.clone(), shutdown.clone()),
            );
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn watch(self: Arc<Self>, entry: Arc<RepoEntry>, shutdown: CancellationToken) {
        let name = entry.config.name.clone();
        let interval = entry.config.poll_interval;
        let mut recorded: Option<HashMap<String, String>> = None;
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = entry.poke.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            let error = self.poll_recorded(&entry, &mut recorded).await.err();
            let failures_before = lock(&entry.health).consecutive_failures;
            let message = error.as_ref().map(ToString::to_string);
            delay = lock(&entry.health).record_poll(now_ms(), message, interval);
            match error {
                Some(error) => {
                    tracing::warn!(repo = %name, %error, consecutive_failures = failures_before + 1,
                        retry_in = ?delay, "poll failed; backing off")
                }
                None if failures_before > 0 => {
                    tracing::info!(repo = %name, after_failures = failures_before, "poll succeeded again")
                }
                None => {}
            }
        }
    }

    /// One poll, first reading the refs recorded for the repository if not done yet.
    async fn poll_recorded(
        &self,
        entry: &Arc<RepoEntry>,
        recorded: &mut Option<HashMap<String, String>>,
    ) -> Result<usize, ReconcileError> {
        let known = match recorded {
            Some(known) => known,
            None => recorded.insert(
                self.store
                    .watched_refs(&entry.config.name)
                    .await?
                    .into_iter()
                    .collect(),
            ),
        };
        self.poll(entry, known).await
    }

    /// One poll of one repository: every watched ref whose head differs from the recorded commit
    /// is reconciled. Returns how many runs were created.
    pub async fn poll(
        &self,
        entry: &Arc<RepoEntry>,
        known: &mut HashMap<String, String>,
    ) -> Result<usize, ReconcileError> {
        let watch_tags = entry.config.tags.watches_any();
        let (heads, default_head) = entry
            .with_git(true, move |git| {
                let mut heads = git.branch_heads()?;
                if watch_tags {
                    heads.extend(git.tag_heads()?);
                }
                Ok((heads, git.resolve("HEAD").ok()))
            })
            .await?;
        if let Some(commit) = default_head {
            self.check_tag_triggers(entry, commit).await?;
        }
        if watch_tags && !entry.tags_baselined.load(Ordering::SeqCst) {
            self.baseline_tags(entry, &heads, known).await?;
        }
        let mut created = 0;
        // A watched ref that is gone was deleted: its queued runs are cancelled and it is
        // forgotten, so that re-creating it (even at the same commit) counts as new.
        let deleted: Vec<String> = known
            .keys()
            .filter(|r| !heads.iter().any(|(h, _)| h == *r))
            .cloned()
            .collect();
        for git_ref in deleted {
            let cancelled = self
                .store
                .cancel_queued_runs(
                    &entry.config.name,
                    &git_ref,
                    "cancelled: the ref was deleted",
                )
                .await?;
            self.store.forget_ref(&entry.config.name, &git_ref).await?;
            known.remove(&git_ref);
            tracing::info!(repo = %entry.config.name, git_ref, cancelled = ?cancelled, "watched ref deleted");
            if !cancelled.is_empty() {
                self.scheduler.notify_one();
            }
        }
        for (git_ref, commit) in heads {
            let Some(event) = event_for(&entry.config, &git_ref) else {
                continue;
            };
            if known.get(&git_ref) == Some(&commit) {
                continue;
            }
            let previous = known.get(&git_ref).cloned();
            created += self
                .reconcile_commit(
                    entry,
                    RefCommit {
                        git_ref: &git_ref,
                        commit: &commit,
                        previous,
                        event,
                        pull_request: None,
                        fetch: false,
                        untrusted: None,
                    },
                )
                .await?
                .len();
            known.insert(git_ref, commit);
        }
        Ok(created)
    }

    /// The first time a repository's tags are watched, the tags it already has are recorded
    /// without runs: a newly watched repository does not run every historical release, while
    /// a tag pushed afterwards runs (even one pushed while the daemon was down).
    async fn baseline_tags(
        &self,
        entry: &Arc<RepoEntry>,
        heads: &[(String, String)],
        known: &mut HashMap<String, String>,
    ) -> Result<(), ReconcileError> {
        let repo = &entry.config.name;
        if !self.store.tags_baselined(repo).await? {
            // Tags recorded already: they were watched before there were baselines.
            let tags: Vec<(String, String)> = if known.keys().any(|r| r.starts_with("refs/tags/")) {
                Vec::new()
            } else {
                heads
                    .iter()
                    .filter(|(r, _)| {
                        r.strip_prefix("refs/tags/")
                            .is_some_and(|tag| entry.config.tags.matches(tag))
                    })
                    .cloned()
                    .collect()
            };
            self.store.baseline_tags(repo, &tags).await?;
            if !tags.is_empty() {
                tracing::info!(repo = %repo, tags = tags.len(),
                    "existing tags recorded without runs: tags pushed from now on start runs");
            }
            for (git_ref, commit) in tags {
                known.entry(git_ref).or_insert(commit);
            }
        }
        entry.tags_baselined.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// With `tags:` in the repository's config, warns (log, API, `status`) about the pipelines
    /// at the default branch's head whose tag triggers it excludes; again when that head moves.
    async fn check_tag_triggers(
        &self,
        entry: &Arc<RepoEntry>,
        commit: String,
    ) -> Result<(), ReconcileError> {
        if !matches!(entry.config.tags, TagFilter::Globs(_))
            || lock(&entry.tag_warnings_of).as_deref() == Some(commit.as_str())
        {
            return Ok(());
        }
        let at = commit.clone();
        let files = entry
            .with_git(false, move |git| git.pipeline_files(&at))
            .await?;
        let (cache, filter) = (self.cache.clone(), entry.config.tags.clone());
        let warnings = tokio::task::spawn_blocking(move || {
            let parsed: Vec<_> = files
                .iter()
                .map(|f| (f.path.as_str(), cache.parse(f)))
                .collect();
            let pipelines: Vec<_> = parsed
                .iter()
                .filter_map(|(path, p)| p.as_ref().as_ref().ok().map(|p| (*path, p)))
                .collect();
            tag_warnings(&filter, &pipelines)
        })
        .await
        .map_err(|e| ReconcileError::Task(e.to_string()))?;
        let changed = {
            let mut health = lock(&entry.health);
            let changed = health.tag_warnings != warnings;
            health.tag_warnings = warnings.clone();
            changed
        };
        if changed {
            for warning in &warnings {
                tracing::warn!(repo = %entry.config.name, "{warning}");
            }
        }
        *lock(&entry.tag_warnings_of) = Some(commit);
        Ok(())
    }

    /// Records the runs one commit on one ref asks for, and the ref's new commit, atomically.
    pub async fn reconcile_commit(
        &self,
        entry: &Arc<RepoEntry>,
        head: RefCommit<'_>,
    ) -> Result<Vec<RunId>, ReconcileError> {
        let RefCommit {
            git_ref,
            commit,
            previous,
            event,
            pull_request,
            fetch,
            untrusted,
        } = head;
        let (commit_owned, prev) = (commit.to_string(), previous.clone());
        let base = untrusted
            .as_ref()
            .map(|u| (u.base_branch.clone(), u.base_sha.clone()));
        let (files, changed, policy_files, author, default_branch, environment_files) = entry
            .with_git(fetch, move |git| {
                let definitions = match base {
                    Some((branch, sha)) => definitions_commit(git, &branch, sha)?,
                    None => commit_owned.clone(),
                };
                let files = git.pipeline_files(&definitions)?;
                // Policies come from where the pipelines do: a fork cannot bring its own.
                let policy_files = git.policy_files(&definitions)?;
                // Environments are defined by the default branch only.
                let environment_files = match git.resolve("HEAD") {
                    Ok(head) => git.environment_files(&head)?,
                    Err(_) => Vec::new(),
                };
                // An unknown previous commit (force-push, gc) makes the change unknown: no filter.
                let changed = prev.and_then(|p| git.changed_paths(&p, &commit_owned).ok());
                let author = git.commit_author(&commit_owned).ok();
                Ok((
                    files,
                    changed,
                    policy_files,
                    author,
                    git.default_branch(),
                    environment_files,
                ))
            })
            .await?;
        let event_kind = if matches!(event, Event::PullRequest { .. }) {
            EventKind::PullRequest
        } else {
            EventKind::Ref
        };
        let event = CommitEvent {
            repo: entry.config.name.clone(),
            git_ref: git_ref.to_string(),
            commit: commit.to_string(),
            event,
            changed_paths: changed,
            report: entry.config.report,
            pull_request,
        };
        let facts = RunGateFacts {
            repository: deploylite_policy::Repository {
                name: entry.config.name.clone(),
                default_branch,
            },
            author: author.map(|(name, email)| deploylite_policy::Author { name, email }),
            now: deploylite_policy::Now::at(chrono::Utc::now()),
        };
        // Parsing, validating and the policy gate are CPU work proportional to the files (up
        // to a MiB each): off the runtime, like the git reads. The gate decides before the
        // runs are recorded, so a denied run is never dispatched.
        let (cache, policies) = (self.cache.clone(), self.policies.clone());
        let runs = tokio::task::spawn_blocking(move || {
            let deployment_only = crate::desired::deployment_only_pipelines(&environment_files);
            let mut runs =
                crate::desired::desired_runs_except(&files, &event, &cache, &deployment_only);
            if let Some(untrusted) = &untrusted {
                crate::trust::apply(&mut runs, untrusted);
            }
            let repository = run_gate::repository_policies(&policy_files);
            run_gate::apply(&mut runs, &files, &cache, &policies, &repository, &facts);
            runs
        })
        .await
        .map_err(|e| ReconcileError::Task(e.to_string()))?;
        let (created, cancelled) = self
            .store
            .record_commit(&RecordCommit {
                repo: entry.config.name.clone().into(),
                git_ref: git_ref.to_string(),
                commit: commit.into(),
                runs,
                // Pull request heads are watched through listings (`pulls.rs`), not as refs.
                update_ref: matches!(event_kind, EventKind::Ref),
            })
            .await?;
        if !created.is_empty() || !cancelled.is_empty() {
            tracing::info!(repo = %entry.config.name, git_ref, commit, created = ?created, superseded = ?cancelled, "new commit reconciled");
            self.scheduler.notify_one();
        }
        if let Some(notify) = self.on_commit.get() {
            notify.notify_one();
        }
        Ok(created)
    }

    pub fn repos(&self) -> &Arc<Repos> {
        &self.repos
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Who to tell when a commit has been reconciled (the environment controller).
    pub fn notify_on_commit(&self, notify: Arc<Notify>) {
        let _ = self.on_commit.set(notify);
    }

    /// Asks the environment controller for a pass (an approval may have opened a gate).
    pub(crate) fn wake_environments(&self) {
        if let Some(notify) = self.on_commit.get() {
            notify.notify_one();
        }
    }

    pub fn wake_scheduler(&self) {
        self.scheduler.notify_one();
    }
}

/// A commit on a ref, as [`Watcher::reconcile_commit`] records its runs.
pub struct RefCommit<'a> {
    pub git_ref: &'a str,
    pub commit: &'a str,
    /// The ref's commit before this one, for the paths changed (none: unknown, no filter).
    pub previous: Option<String>,
    pub event: Event,
    pub pull_request: Option<crate::store::PullRequestInfo>,
    /// Fetch first, bringing a mirror up to date: a webhook may name a commit not fetched yet.
    pub fetch: bool,
    /// For untrusted code the pipelines are read from the base branch, never from `commit`.
    pub untrusted: Option<Untrusted>,
}

/// The commit whose pipelines decide what an untrusted head runs: the base branch's tip as
/// this daemon knows it (after the fetch), or as the forge said when the branch is unknown here.
fn definitions_commit(
    git: &GitRepo,
    base_branch: &str,
    base_sha: Option<String>,
) -> Result<String, GitError> {
    let wanted = format!("refs/heads/{base_branch}");
    if let Some((_, head)) = git.branch_heads()?.into_iter().find(|(r, _)| *r == wanted) {
        return Ok(head);
    }
    base_sha.ok_or(GitError::UnknownRevision(wanted))
}

enum EventKind {
    Ref,
    PullRequest,
}

/// The event a ref's new head stands for, if the repository watches that ref.
fn event_for(config: &RepoConfig, git_ref: &str) -> Option<Event> {
    if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        (config.branches.is_empty() || config.branches.matches(branch)).then(|| Event::Push {
            branch: branch.to_string(),
        })
    } else if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        config.tags.matches(tag).then(|| Event::Tag {
            tag: tag.to_string(),
        })
    } else {
        None
    }
}
