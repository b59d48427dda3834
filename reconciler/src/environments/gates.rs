//! Why a waiting deployment waits: the gates of its environment, in a fixed order, as the
//! `pending_reason` users read. Pure: the controller gathers the facts.

use deploylite_pipeline::Environment;

use crate::status::{DeploymentAction, RunStatus};
use crate::store::{DeploymentRecord, Hold};

/// What the controller read for one waiting deployment.
#[derive(Debug, Clone, Default)]
pub struct GateFacts {
    pub hold: Option<Hold>,
    /// Each `requires:` pipeline with the status of its newest run on the version.
    pub required: Vec<(String, Option<RunStatus>)>,
    /// Each `promote_from:` environment with whether it has deployed the version.
    pub promoted: Vec<(String, bool)>,
    /// The deployment holding the environment's lock, if another one does.
    pub active: Option<i64>,
}

/// `None`: every gate is open (the policy gate comes next). Otherwise the reason it waits.
pub fn waiting_reason(
    deployment: &DeploymentRecord,
    environment: &Environment,
    facts: &GateFacts,
) -> Option<String> {
    let short = short(&deployment.version);
    let is_rollback = deployment.action == DeploymentAction::Rollback;
    // A hold stops automation; a person's deployment or a rollback goes through.
    if let Some(hold) = facts
        .hold
        .as_ref()
        .filter(|_| !deployment.manual && !is_rollback)
    {
        return Some(format!(
            "hold: pinned to {} by {}",
            self::short(&hold.version),
            hold.by
        ));
    }
    // A rollback goes back to a version that was already good: it waits for nothing but the lock.
    if !is_rollback {
        for (pipeline, status) in &facts.required {
            let state = match status {
                Some(RunStatus::Success) => continue,
                None => "has not run",
                Some(RunStatus::Queued) => "queued",
                Some(RunStatus::Running) => "running",
                Some(RunStatus::Failed) => "failed",
                Some(RunStatus::Cancelled) => "cancelled",
                Some(RunStatus::Error) => "is invalid",
                Some(RunStatus::Skipped) => "skipped",
            };
            return Some(format!("requires: {pipeline} {state} on {short}"));
        }
        for (source, deployed) in &facts.promoted {
            if !deployed {
                return Some(format!("promote_from: {source} has not deployed {short}"));
            }
        }
        if let Some(approval) = environment.approval {
            let given = deployment.approvals.len();
            if given < approval.required as usize {
                return Some(format!("approval: {given} of {}", approval.required));
            }
        }
    }
    facts
        .active
        .map(|id| format!("lock: deployment {id} in progress"))
}

pub fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::DeploymentStatus;
    use deploylite_pipeline::{Approval, Follows, OnDrift, RollbackMode};

    fn environment(approvals: Option<u32>) -> Environment {
        Environment {
            name: "production".into(),
            name_pos: Default::default(),
            deploy: "deploy".into(),
            follows: Follows::Branch("main".into()),
            requires: vec!["ci".into()],
            promote_from: vec!["staging".into()],
            approval: approvals.map(|required| Approval { required }),
            verify: None,
            check: None,
            on_drift: OnDrift::Report,
            rollback: RollbackMode::Manual,
            spans: Default::default(),
            warnings: Vec::new(),
        }
    }

    fn deployment(action: DeploymentAction, manual: bool, approvals: usize) -> DeploymentRecord {
        DeploymentRecord {
            id: 7,
            repo: "app".into(),
            environment: "production".into(),
            version: "abc123456789".into(),
            attempt: 1,
            git_ref: None,
            previous_version: None,
            action,
            status: DeploymentStatus::Waiting,
            pending_reason: None,
            triggered_by: "follows refs/heads/main".into(),
            manual,
            rollback_of: None,
            policy: None,
            errors: Vec::new(),
            created_at: 0,
            started_at: None,
            finished_at: None,
            runs: Vec::new(),
            approvals: (0..approvals).map(|i| format!("token:p{i}")).collect(),
        }
    }

    fn open_facts() -> GateFacts {
        GateFacts {
            hold: None,
            required: vec![("ci".into(), Some(RunStatus::Success))],
            promoted: vec![("staging".into(), true)],
            active: None,
        }
    }

    #[test]
    fn gates_are_checked_in_order_and_named() {
        let env = environment(Some(1));
        let d = deployment(DeploymentAction::Deploy, false, 0);
        let mut facts = open_facts();
        facts.hold = Some(Hold {
            version: "9f8e7d6c".into(),
            by: "token:alice".into(),
            at: 0,
        });
        facts.required = vec![("ci".into(), Some(RunStatus::Running))];
        facts.active = Some(41);
        assert_eq!(
            waiting_reason(&d, &env, &facts).as_deref(),
            Some("hold: pinned to 9f8e7d6 by token:alice")
        );
        facts.hold = None;
        assert_eq!(
            waiting_reason(&d, &env, &facts).as_deref(),
            Some("requires: ci running on abc1234")
        );
        facts.required = vec![("ci".into(), Some(RunStatus::Success))];
        facts.promoted = vec![("staging".into(), false)];
        assert_eq!(
            waiting_reason(&d, &env, &facts).as_deref(),
            Some("promote_from: staging has not deployed abc1234")
        );
        facts.promoted = vec![("staging".into(), true)];
        assert_eq!(
            waiting_reason(&d, &env, &facts).as_deref(),
            Some("approval: 0 of 1")
        );
        let approved = deployment(DeploymentAction::Deploy, false, 1);
        assert_eq!(
            waiting_reason(&approved, &env, &facts).as_deref(),
            Some("lock: deployment 41 in progress")
        );
        facts.active = None;
        assert_eq!(waiting_reason(&approved, &env, &facts), None);
    }

    #[test]
    fn a_rollback_or_a_person_passes_a_hold_and_a_rollback_skips_the_version_gates() {
        let env = environment(Some(2));
        let mut facts = open_facts();
        facts.hold = Some(Hold {
            version: "9f8e7d".into(),
            by: "token:alice".into(),
            at: 0,
        });
        facts.required = vec![("ci".into(), Some(RunStatus::Failed))];
        let rollback = deployment(DeploymentAction::Rollback, false, 0);
        assert_eq!(waiting_reason(&rollback, &env, &facts), None);
        let manual = deployment(DeploymentAction::Deploy, true, 0);
        assert_eq!(
            waiting_reason(&manual, &env, &facts).as_deref(),
            Some("requires: ci failed on abc1234")
        );
    }
}
