//! Untrusted code: a pull request whose head lives in a fork and whose author is not a member
//! of the repository. Its pipelines are read from the base branch (the fork supplies only the
//! workspace), it waits for a maintainer's approval unless the repository says otherwise, it
//! runs only on runners allowed for untrusted work, and it is never given secrets.

use serde::Deserialize;

use crate::status::RunStatus;
use crate::store::NewRun;

/// A repository's `untrusted:` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UntrustedPolicy {
    /// Record the runs; start them once someone approves the head commit.
    #[default]
    RequireApproval,
    /// Record the runs as skipped: forks never run here.
    Never,
    /// Run without approval (still only on runners allowed for untrusted work).
    Run,
}

/// How an untrusted head is to be recorded.
#[derive(Debug, Clone)]
pub struct Untrusted {
    pub policy: UntrustedPolicy,
    /// The branch the pull request targets: its pipelines decide what runs.
    pub base_branch: String,
    /// The base branch's tip as the forge saw it, if it said.
    pub base_sha: Option<String>,
    /// Names the pull request, the fork and the author, for `pending_reason`.
    pub reason: String,
}

/// Every waiting reason of an approval starts with this, so tools can find them.
pub const APPROVAL_REQUIRED: &str = "approval required: ";

/// Applies the repository's policy to the runs an untrusted head asks for.
pub fn apply(runs: &mut [NewRun], untrusted: &Untrusted) {
    for run in runs.iter_mut().filter(|r| r.status == RunStatus::Queued) {
        match untrusted.policy {
            UntrustedPolicy::RequireApproval => {
                run.awaiting_approval = true;
                run.pending_reason = Some(format!(
                    "{APPROVAL_REQUIRED}{}; a maintainer approves with `/deploylite approve` \
                     on the pull request or `deploylite approve RUN`",
                    untrusted.reason
                ));
            }
            UntrustedPolicy::Never => {
                run.status = RunStatus::Skipped;
                run.stages.clear();
                run.spec = None;
                run.pending_reason = Some(format!(
                    "skipped: {}; this repository never runs code from forks (untrusted: never)",
                    untrusted.reason
                ));
            }
            UntrustedPolicy::Run => {}
        }
    }
}
