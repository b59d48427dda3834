//! Pull/merge requests as watched state. A webhook is only the fast path: at every poll of a
//! repository whose forge can be asked, the open pull requests are listed, each head that has
//! no runs yet is recorded exactly as its `pull_request` webhook would have recorded it, and the
//! queued runs of pull requests no longer open are cancelled, as a `closed` webhook does. A
//! missed, refused or failed delivery, or a pull request opened while the daemon was stopped,
//! costs latency, never a run.
//!
//! The listing itself (forge JSON, HTTP, ETags) lives behind [`PullRequestSource`], which the
//! webhook crate implements: this crate knows no forge JSON.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploylite_model::RunId;
use deploylite_runner::{BoxFuture, CancellationToken};
use tokio::sync::Notify;

use crate::events::PullRequestEvent;
use crate::store::now_ms;
use crate::watcher::{RepoEntry, Watcher};

/// The open pull requests of one repository, as its forge lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenPullRequests {
    /// One event per open pull request, as its `opened` webhook would carry it.
    pub open: Vec<PullRequestEvent>,
    /// The forge said the listing has not changed since the last one it answered (an HTTP 304
    /// to a conditional request).
    pub unchanged: bool,
}

/// Why a listing failed (the forge's answer or a transport error), for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot list the open pull requests: {0}")]
pub struct ListError(pub String);

/// Lists a repository's open pull requests from its forge.
pub trait PullRequestSource: Send + Sync + 'static {
    /// The open pull requests of `repo` (DeployLite's name); `Ok(None)` when this repository's
    /// forge cannot be asked (none configured, or no credentials).
    fn open_pull_requests<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<Option<OpenPullRequests>, ListError>>;
}

/// How long a pull request's newest run must have been recorded before a listing that lacks the
/// pull request may cancel it. Forges' listings lag their webhooks a little: an `opened` webhook
/// applied just before a listing that does not show it yet must not be taken for a close. (A
/// `closed` webhook still cancels at once.)
pub const DEFAULT_CLOSE_GRACE: Duration = Duration::from_secs(60);

/// The watcher's pull request state: where listings come from, and per repository whether the
/// last listing was reconciled completely (an unchanged listing then needs no work).
#[derive(Default)]
pub struct PullWatch {
    source: Mutex<Option<(Arc<dyn PullRequestSource>, Duration)>>,
    settled: Mutex<HashSet<String>>,
    /// Wakes a repository's pull request loop now (a pull request webhook).
    pokes: Mutex<HashMap<String, Arc<Notify>>>,
    /// Reconciles started and completed so far, by repository: tests wait on them.
    passes: Mutex<HashMap<String, (u64, u64)>>,
}

impl PullWatch {
    fn poke(&self, repo: &str) -> Arc<Notify> {
        lock(&self.pokes)
            .entry(repo.to_string())
            .or_default()
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one pull request reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullsReconciled {
    pub created: Vec<RunId>,
    pub cancelled: Vec<RunId>,
    /// The listing was unchanged and the previous one fully reconciled: nothing was looked at.
    pub unchanged: bool,
}

impl Watcher {
    /// Makes every poll also reconcile open pull requests, listed by `source`. `close_grace`:
    /// see [`DEFAULT_CLOSE_GRACE`].
    pub fn watch_pull_requests(&self, source: Arc<dyn PullRequestSource>, close_grace: Duration) {
        *lock(&self.pulls.source) = Some((source, close_grace));
    }

    /// Makes `repo`'s pull requests be listed and reconciled now (a pull request webhook arrived),
    /// compared with the store even if the listing is unchanged: the webhook may have recorded
    /// runs for a pull request the listing no longer shows (a late delivery after a close).
    pub fn poke_pull_requests(&self, repo: &str) {
        lock(&self.pulls.settled).remove(repo);
        self.pulls.poke(repo).notify_one();
    }

    /// A repository's pull request loop: a reconcile at every poll interval, and at once when
    /// poked. Beside the ref poll rather than in it, so that a pull request webhook does not make
    /// the refs be polled too.
    pub(crate) async fn watch_pull_requests_of(
        self: Arc<Self>,
        entry: Arc<RepoEntry>,
        shutdown: CancellationToken,
    ) {
        let poke = self.pulls.poke(&entry.config.name);
        let mut interval = tokio::time::interval(entry.config.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = poke.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            self.poll_pull_requests(&entry).await;
        }
    }

    /// How many pull request reconciles of `repo` have started and completed (whatever their
    /// outcome): a test that pokes waits for `completed` to pass what `started` was, which
    /// proves a whole reconcile ran after the poke.
    pub fn pull_request_passes(&self, repo: &str) -> (u64, u64) {
        lock(&self.pulls.passes)
            .get(repo)
            .copied()
            .unwrap_or((0, 0))
    }

    /// One pull request reconcile of one repository. Errors are logged: the next poll tries
    /// again.
    pub(crate) async fn poll_pull_requests(&self, entry: &Arc<RepoEntry>) {
        let name = entry.config.name.clone();
        lock(&self.pulls.passes).entry(name.clone()).or_default().0 += 1;
        match self.reconcile_pull_requests(entry).await {
            Ok(Some(done)) if !done.created.is_empty() || !done.cancelled.is_empty() => {
                tracing::info!(repo = %name, created = ?done.created, cancelled = ?done.cancelled, "pull requests reconciled");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(repo = %name, %error, "pull request reconcile failed; will try again")
            }
        }
        lock(&self.pulls.passes).entry(name).or_default().1 += 1;
    }

    /// Lists `entry`'s open pull requests and closes the gap with what is recorded. `Ok(None)`
    /// when pull requests are not listed for this repository.
    pub async fn reconcile_pull_requests(
        &self,
        entry: &Arc<RepoEntry>,
    ) -> Result<Option<PullsReconciled>, PullsError> {
        let Some((source, grace)) = lock(&self.pulls.source).clone() else {
            return Ok(None);
        };
        let repo = entry.config.name.clone();
        let listed_at = now_ms();
        let Some(listing) = source.open_pull_requests(&repo).await? else {
            return Ok(None);
        };
        if listing.unchanged && lock(&self.pulls.settled).contains(&repo) {
            return Ok(Some(PullsReconciled {
                unchanged: true,
                ..Default::default()
            }));
        }
        // Until this pass completes without leaving anything for later, an unchanged listing
        // must be looked at again.
        lock(&self.pulls.settled).remove(&repo);
        let mut settled = true;
        let mut done = PullsReconciled::default();

        for pr in &listing.open {
            if self
                .store()
                .pull_request_head_recorded(&repo, &pr.git_ref, &pr.head_sha)
                .await?
            {
                continue;
            }
            match self.record_listed_head(entry, pr).await {
                Ok(Some(created)) => done.created.extend(created),
                Ok(None) => settled = false,
                Err(error) => {
                    tracing::warn!(repo = %repo, number = pr.number, commit = %pr.head_sha, %error, "cannot record a pull request head");
                    settled = false;
                }
            }
        }

        let open: HashSet<&str> = listing.open.iter().map(|p| p.git_ref.as_str()).collect();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        for (git_ref, newest) in self.store().cancellable_pull_request_refs(&repo).await? {
            if open.contains(git_ref.as_str()) {
                continue;
            }
            if newest > listed_at.saturating_sub(grace_ms) {
                // Possibly opened after what the listing shows: decided by a later listing.
                settled = false;
                continue;
            }
            let cancelled = self
                .store()
                .cancel_queued_runs(&repo, &git_ref, "cancelled: the pull request was closed")
                .await?;
            if !cancelled.is_empty() {
                tracing::info!(repo = %repo, git_ref, cancelled = ?cancelled, "pull request no longer open: its queued runs are cancelled");
                done.cancelled.extend(cancelled);
            }
        }
        if !done.cancelled.is_empty() {
            self.wake_scheduler();
        }
        if settled {
            lock(&self.pulls.settled).insert(repo);
        }
        Ok(Some(done))
    }

    /// Records a listed head once its commit is here: read from the pull request's ref
    /// (`refs/pull/N/head`, `refs/merge-requests/N/head`) of the base repository, fetched again
    /// when the mirror is behind the listing. `Ok(None)` when the commit is not there yet.
    async fn record_listed_head(
        &self,
        entry: &Arc<RepoEntry>,
        pr: &PullRequestEvent,
    ) -> Result<Option<Vec<RunId>>, crate::watcher::ReconcileError> {
        let mut present = false;
        for fetch in [false, true] {
            let (git_ref, head) = (pr.git_ref.clone(), pr.head_sha.clone());
            present = entry
                .with_git(fetch, move |git| {
                    Ok(git.resolve(&git_ref).is_ok_and(|at| at == head))
                })
                .await?;
            if present {
                break;
            }
        }
        if !present {
            tracing::info!(repo = %entry.config.name, git_ref = %pr.git_ref, commit = %pr.head_sha, "the pull request's ref does not point at its listed head yet; a later poll records it");
            return Ok(None);
        }
        self.record_pull_request_head(pr, false).await.map(Some)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullsError {
    #[error(transparent)]
    List(#[from] ListError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
