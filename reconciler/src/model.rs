//! The run domain model: what a commit asks for (`NewRun`), what the scheduler plans over
//! (`ActiveRun`, `ActiveStage`) and decides (`TickWrites` and its parts), how an attempt ended
//! (`AttemptResult`), and the records the API reads back (`RunRecord`, `StageRecord`,
//! `StageAttemptRecord`). Plain data: the store (`store/`, the only SQL) writes and reads it,
//! `scheduler/plan.rs` decides over it without knowing the store. The ids and the state
//! machines come from the `deploylite-model` crate; these records stay here because they carry
//! the pipeline's and the policy's types.

use deploylite_model::{Attempt, CommitSha, RepoName, RunId, StageName};
use serde::Serialize;

use crate::status::{RunStatus, StageStatus};

/// A run to create. Its identity is (repo, pipeline, commit, trigger, run_attempt): creating it
/// twice is a no-op, which is what makes polling, webhooks and restarts safe to overlap.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub repo: RepoName,
    pub pipeline: String,
    pub pipeline_file: String,
    pub commit: CommitSha,
    pub git_ref: String,
    pub trigger: String,
    pub run_attempt: i64,
    /// `Queued`, or created final: `Error` (did not validate), `Skipped` (path filters).
    pub status: RunStatus,
    /// Why a run is waiting, or why it was created final.
    pub pending_reason: Option<String>,
    pub concurrency: deploylite_pipeline::Concurrency,
    pub spec: Option<String>,
    pub errors: Option<String>,
    /// Preset by `deploylite run`, which runs in the working copy itself.
    pub workspace: Option<String>,
    pub stages: Vec<NewStage>,
    /// Whether state changes of this run are reported to a forge (outbox rows).
    pub report: bool,
    pub pull_request: Option<PullRequestInfo>,
    /// Untrusted code: the run is recorded queued but starts only once approved.
    pub awaiting_approval: bool,
    /// The `deploylite.run` gate's decision, when a policy applied.
    pub policy: Option<deploylite_policy::Decision>,
}

/// The pull/merge request a run belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequestInfo {
    pub number: i64,
    /// `owner/name` (GitHub) or `group/project` (GitLab) the head commit comes from.
    pub head_repo: String,
    /// From a fork: secrets and policy must not trust it.
    pub untrusted: bool,
}

#[derive(Debug, Clone)]
pub struct NewStage {
    pub name: StageName,
    pub status: StageStatus,
    pub needs: Vec<String>,
    pub pending_reason: Option<String>,
}

/// Everything one reconciliation of one ref writes, in one transaction: the runs the commit
/// triggers and the ref's new recorded commit. A crash before the commit loses nothing (the next
/// poll sees the same difference), a crash after it duplicates nothing.
#[derive(Debug, Clone, Default)]
pub struct RecordCommit {
    pub repo: RepoName,
    pub git_ref: String,
    pub commit: CommitSha,
    pub runs: Vec<NewRun>,
    /// Whether to move the ref's recorded commit (false for one-off runs).
    pub update_ref: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub repo: Option<String>,
    pub pipeline: Option<String>,
    pub status: Option<RunStatus>,
    /// The full ref (`refs/heads/main`).
    pub git_ref: Option<String>,
    pub trigger: Option<String>,
    /// Only runs older than this id: the cursor of the next page.
    pub before: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub repo: RepoName,
    pub pipeline: String,
    pub pipeline_file: String,
    pub commit: CommitSha,
    pub git_ref: String,
    pub trigger: String,
    pub run_attempt: i64,
    pub status: RunStatus,
    pub pending_reason: Option<String>,
    pub errors: Option<serde_json::Value>,
    pub cancel_requested: bool,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub pull_request: Option<PullRequestInfo>,
    /// Untrusted, and waiting for someone to approve its head commit.
    pub awaiting_approval: bool,
    /// Who approved it (`token:<name>`, `github:<login>`), if it needed an approval.
    pub approved_by: Option<String>,
    /// The `deploylite.run` gate's decision; null when no policy applied.
    pub policy: Option<deploylite_policy::Decision>,
    /// The deployment this run carries out (or the environment check it is), if any.
    pub deployment_id: Option<i64>,
    /// `deploy`, `rollback`, `verify` or `check` for a deployment's run.
    pub deployment_action: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub name: StageName,
    pub position: i64,
    pub status: StageStatus,
    pub attempt: Attempt,
    pub needs: Vec<String>,
    pub pending_reason: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageAttemptRecord {
    pub attempt: Attempt,
    pub status: StageStatus,
    pub exit_code: Option<i64>,
    pub note: Option<String>,
    pub executor: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// The daemon's own runner. Its attempts die with the daemon and are recovered at start; remote
/// runners' leases outlive a daemon restart.
pub const LOCAL_RUNNER: &str = "local";

/// A lease as its runner collects it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub run_id: RunId,
    pub stage: StageName,
    pub attempt: Attempt,
    /// Failed attempts before this one (what `retry.max` counts).
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveRun {
    pub id: RunId,
    pub repo: RepoName,
    pub pipeline: String,
    pub git_ref: String,
    pub commit: CommitSha,
    pub trigger: String,
    pub status: RunStatus,
    pub pending_reason: Option<String>,
    pub concurrency: deploylite_pipeline::Concurrency,
    pub cancel_requested: bool,
    pub workspace: Option<String>,
    pub workspace_ready: bool,
    /// From a fork: runs only on runners allowed for untrusted work, never gets secrets.
    pub untrusted: bool,
    /// Waits, queued, for an approval of its head commit.
    pub awaiting_approval: bool,
    pub stages: Vec<ActiveStage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveStage {
    pub name: StageName,
    pub position: i64,
    pub status: StageStatus,
    pub attempt: Attempt,
    pub failures: u32,
    pub needs: Vec<String>,
    pub pending_reason: Option<String>,
    pub not_before: Option<i64>,
    /// Who runs the current attempt (running stages only).
    pub runner: Option<String>,
    pub lease_deadline: Option<i64>,
}

/// A stage attempt to start now, on `runner`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub run_id: RunId,
    pub stage: StageName,
    pub attempt: Attempt,
    pub runner: String,
    /// When the lease lapses unless the runner renews it; None for the local runner.
    pub lease_deadline: Option<i64>,
}

/// A running attempt whose runner stopped renewing its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiredLease {
    pub run_id: RunId,
    pub stage: StageName,
    pub attempt: Attempt,
    pub runner: String,
    /// When the lease was last granted or renewed (its deadline less the lease TTL).
    pub last_renewed: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageSkip {
    pub run_id: RunId,
    pub stage: StageName,
    pub status: StageStatus,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunFinish {
    pub run_id: RunId,
    pub status: RunStatus,
}

/// One tick's decisions; written in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickWrites {
    pub start_runs: Vec<RunId>,
    pub run_pending: Vec<(RunId, Option<String>)>,
    pub dispatch: Vec<Dispatch>,
    pub skip: Vec<StageSkip>,
    pub stage_pending: Vec<(RunId, StageName, Option<String>)>,
    pub finish: Vec<RunFinish>,
    pub expire: Vec<ExpiredLease>,
}

impl TickWrites {
    /// Every run this tick changes (what it writes a report row for), each once.
    pub fn touched_runs(&self) -> Vec<RunId> {
        let mut ids: Vec<RunId> = self
            .start_runs
            .iter()
            .copied()
            .chain(self.dispatch.iter().map(|d| d.run_id))
            .chain(self.skip.iter().map(|s| s.run_id))
            .chain(self.finish.iter().map(|f| f.run_id))
            .chain(self.expire.iter().map(|e| e.run_id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn is_empty(&self) -> bool {
        self.start_runs.is_empty()
            && self.run_pending.is_empty()
            && self.dispatch.is_empty()
            && self.skip.is_empty()
            && self.stage_pending.is_empty()
            && self.finish.is_empty()
            && self.expire.is_empty()
    }
}

/// How an attempt ended, as the scheduler decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub run_id: RunId,
    pub stage: StageName,
    pub attempt: Attempt,
    /// The attempt's own status: success, failed or cancelled.
    pub attempt_status: StageStatus,
    /// The stage's next status: the same as the attempt's, or `Queued` for a retry.
    pub stage_status: StageStatus,
    pub exit_code: Option<i64>,
    pub note: Option<String>,
    /// Counts against `retry.max`.
    pub counts_as_failure: bool,
    pub not_before: Option<i64>,
    pub pending_reason: Option<String>,
}

/// A stage attempt that was running when the daemon stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    pub run_id: RunId,
    pub stage: StageName,
    pub attempt: Attempt,
}
