//! What a forge webhook can ask of the reconciler, independent of the forge's JSON (which only
//! the webhook crate knows). Every action is idempotent: a webhook and a poll for the same
//! commit, or a replayed delivery, cannot create a second run.

use deploylite_model::RunId;
use deploylite_pipeline::Event;

use crate::store::PullRequestInfo;
use crate::trust::Untrusted;
use crate::watcher::{ReconcileError, RefCommit, Watcher};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeEvent {
    /// A branch or tag moved (or was deleted). The repository is polled at once; a deletion also
    /// cancels the ref's queued runs.
    Push {
        repo: String,
        git_ref: String,
        deleted: bool,
    },
    /// A pull/merge request was opened or updated: run its head commit.
    PullRequestOpened(PullRequestEvent),
    /// A pull/merge request was reopened: run its head commit, and run again, as new attempts,
    /// the head's runs that were cancelled (closing cancels queued runs, and a reopen at the same
    /// head would otherwise record nothing).
    PullRequestReopened(PullRequestEvent),
    /// A pull/merge request was closed or merged: cancel its queued runs.
    PullRequestClosed { repo: String, git_ref: String },
    /// Run a commit's pipelines again (a check re-requested); `pipeline: None` means all.
    /// `request` identifies the forge's request (not the delivery): the same request applied
    /// again, e.g. a captured delivery replayed under a fresh delivery id, creates no attempt.
    Rerun {
        repo: String,
        commit: String,
        pipeline: Option<String>,
        request: Option<String>,
    },
    /// A member of the repository commented `/deploylite approve` on a pull/merge request: its
    /// untrusted head runs may start. The forge crate has checked the commenter's membership.
    Approve(ApprovalComment),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalComment {
    pub repo: String,
    /// The pull request's head ref, as in [`PullRequestEvent::git_ref`].
    pub git_ref: String,
    /// Who approved: `github:<login>`, `gitlab:<username>`.
    pub by: String,
    /// The head commit the comment approves, when the forge says (GitLab); otherwise the
    /// newest head recorded before `written_at` is approved.
    pub commit: Option<String>,
    /// When the comment was written (epoch ms).
    pub written_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub repo: String,
    pub number: i64,
    /// Where the forge keeps the head: `refs/pull/N/head` (GitHub), `refs/merge-requests/N/head` (GitLab).
    pub git_ref: String,
    pub head_sha: String,
    /// The target branch's tip, for path filters; None when the payload does not say.
    pub base_sha: Option<String>,
    /// Target branch name, without `refs/heads/`.
    pub base_branch: String,
    pub head_repo: String,
    pub from_fork: bool,
    /// Who opened it (the forge's login), for the approval message.
    pub author: String,
    /// The author is an owner, member or collaborator of the base repository: their fork's
    /// code is trusted like a branch of the repository.
    pub author_is_member: bool,
}

impl ForgeEvent {
    /// The repository the event is about (DeployLite's name once the receiver looked it up).
    pub fn repo(&self) -> &str {
        match self {
            ForgeEvent::Push { repo, .. }
            | ForgeEvent::PullRequestClosed { repo, .. }
            | ForgeEvent::Rerun { repo, .. } => repo,
            ForgeEvent::PullRequestOpened(pr) | ForgeEvent::PullRequestReopened(pr) => &pr.repo,
            ForgeEvent::Approve(comment) => &comment.repo,
        }
    }
}

impl PullRequestEvent {
    /// Code from a fork whose author is not a member of the repository.
    pub fn untrusted(&self) -> bool {
        self.from_fork && !self.author_is_member
    }
}

/// What applying an event did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: Vec<RunId>,
    pub cancelled: Vec<RunId>,
    pub approved: Vec<RunId>,
    pub polled: bool,
}

impl Watcher {
    pub async fn apply(&self, event: ForgeEvent) -> Result<Applied, ReconcileError> {
        // A pull request event is also a poke: the repository's open pull requests are listed
        // now, so whatever this delivery does not say (an earlier delivery that was lost) is
        // caught up at once rather than at the next poll.
        let poke = match &event {
            ForgeEvent::PullRequestOpened(pr) | ForgeEvent::PullRequestReopened(pr) => {
                Some(pr.repo.clone())
            }
            ForgeEvent::PullRequestClosed { repo, .. } => Some(repo.clone()),
            _ => None,
        };
        let applied = self.apply_event(event).await;
        if let Some(repo) = poke {
            self.poke_pull_requests(&repo);
        }
        applied
    }

    async fn apply_event(&self, event: ForgeEvent) -> Result<Applied, ReconcileError> {
        match event {
            ForgeEvent::Push {
                repo,
                git_ref,
                deleted,
            } => {
                let mut applied = Applied::default();
                if deleted {
                    applied.cancelled = self
                        .store()
                        .cancel_queued_runs(&repo, &git_ref, "cancelled: the ref was deleted")
                        .await?;
                    self.store().forget_ref(&repo, &git_ref).await?;
                    self.wake_scheduler();
                }
                applied.polled = self.repos().poke(&repo);
                if !applied.polled {
                    return Err(ReconcileError::UnknownRepo(repo));
                }
                Ok(applied)
            }
            ForgeEvent::PullRequestOpened(pr) => Ok(Applied {
                created: self.record_pull_request_head(&pr, true).await?,
                ..Default::default()
            }),
            ForgeEvent::PullRequestReopened(pr) => {
                let mut created = self.record_pull_request_head(&pr, true).await?;
                let reruns = self
                    .store()
                    .rerun_cancelled(&pr.repo, &pr.git_ref, &pr.head_sha)
                    .await?;
                if !reruns.is_empty() {
                    tracing::info!(repo = %pr.repo, git_ref = %pr.git_ref, commit = %pr.head_sha, reruns = ?reruns, "reopened pull request: cancelled runs run again");
                    self.wake_scheduler();
                }
                created.extend(reruns);
                Ok(Applied {
                    created,
                    ..Default::default()
                })
            }
            ForgeEvent::PullRequestClosed { repo, git_ref } => {
                let cancelled = self
                    .store()
                    .cancel_queued_runs(&repo, &git_ref, "cancelled: the pull request was closed")
                    .await?;
                self.wake_scheduler();
                Ok(Applied {
                    cancelled,
                    ..Default::default()
                })
            }
            ForgeEvent::Rerun {
                repo,
                commit,
                pipeline,
                request,
            } => {
                let created = self
                    .store()
                    .rerun(&repo, &commit, pipeline.as_deref(), request.as_deref())
                    .await?;
                self.wake_scheduler();
                Ok(Applied {
                    created,
                    ..Default::default()
                })
            }
            ForgeEvent::Approve(comment) => {
                let approved = self.apply_approval(&comment).await?;
                Ok(Applied {
                    approved,
                    ..Default::default()
                })
            }
        }
    }

    async fn apply_approval(
        &self,
        comment: &ApprovalComment,
    ) -> Result<Vec<RunId>, ReconcileError> {
        let store = self.store();
        let approved = match &comment.commit {
            Some(commit) => {
                store
                    .approve_commit(&comment.repo, &comment.git_ref, commit, &comment.by)
                    .await?
            }
            None => {
                store
                    .approve_pull_request(
                        &comment.repo,
                        &comment.git_ref,
                        comment.written_at,
                        &comment.by,
                    )
                    .await?
            }
        };
        // The same comment approves the deployments waiting for that commit (a fast-forward
        // merge deploys the reviewed head itself; GitLab names the commit).
        let commit = match &comment.commit {
            Some(commit) => Some(commit.clone()),
            None => {
                store
                    .newest_commit_of_ref(&comment.repo, &comment.git_ref, comment.written_at)
                    .await?
            }
        };
        if let Some(commit) = commit {
            let deployments = store
                .approve_deployments_of_commit(&comment.repo, &commit, &comment.by)
                .await?;
            if !deployments.is_empty() {
                tracing::info!(repo = %comment.repo, commit, by = %comment.by, ?deployments, "deployments approved by a comment");
                self.wake_environments();
            }
        }
        if approved.is_empty() {
            tracing::info!(repo = %comment.repo, git_ref = %comment.git_ref, by = %comment.by, "approval comment: no run was waiting for approval");
        } else {
            tracing::info!(repo = %comment.repo, git_ref = %comment.git_ref, by = %comment.by, runs = ?approved, "untrusted runs approved");
            self.wake_scheduler();
        }
        Ok(approved)
    }

    /// Records the runs of a pull request's head (none when they exist already), as its
    /// webhook or a listing of open pull requests names it. `fetch` first brings a mirror up
    /// to date (a webhook may name a commit not fetched yet).
    pub(crate) async fn record_pull_request_head(
        &self,
        pr: &PullRequestEvent,
        fetch: bool,
    ) -> Result<Vec<RunId>, ReconcileError> {
        let entry = self
            .repos()
            .get(&pr.repo)
            .cloned()
            .ok_or_else(|| ReconcileError::UnknownRepo(pr.repo.clone()))?;
        let untrusted = pr.untrusted();
        let info = PullRequestInfo {
            number: pr.number,
            head_repo: pr.head_repo.clone(),
            untrusted,
        };
        let trust = untrusted.then(|| Untrusted {
            policy: entry.config.untrusted,
            base_branch: pr.base_branch.clone(),
            base_sha: pr.base_sha.clone(),
            reason: format!(
                "pull request #{} from fork {} by {}",
                pr.number, pr.head_repo, pr.author
            ),
        });
        self.reconcile_commit(
            &entry,
            RefCommit {
                git_ref: &pr.git_ref,
                commit: &pr.head_sha,
                previous: pr.base_sha.clone(),
                event: Event::PullRequest {
                    target_branch: pr.base_branch.clone(),
                },
                pull_request: Some(info),
                fetch,
                untrusted: trust,
            },
        )
        .await
    }
}
