//! What a forge payload means once mapped. The JSON accessors the mappers share are
//! `deploylite_forge::payload`'s, which the pull request listings use too.

use deploylite_reconciler::events::{ApprovalComment, ForgeEvent, PullRequestEvent};

/// A mapped delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// GitHub's hello when a hook is created: answered, nothing else.
    Ping,
    /// An event or action DeployLite does not act on; the reason goes back to the forge.
    Ignored(String),
    /// Something to do in the repository the forge calls `slug`. Until the intake looks the
    /// repository up, the event's `repo` fields hold the slug; see [`for_repo`].
    Event { slug: String, event: ForgeEvent },
    /// An event to act on only if `user_id` is a member of GitLab project `project_id` with
    /// at least Developer access (the note hook does not say; the members API does).
    IfMember {
        slug: String,
        event: ForgeEvent,
        project_id: i64,
        user_id: i64,
    },
}

/// The approval command: a line of a comment that says exactly `/deploylite approve`.
pub(crate) fn is_approve_command(body: &str) -> bool {
    body.lines().any(|l| l.trim() == "/deploylite approve")
}

/// The event with `repo` set to DeployLite's name for the repository.
pub(crate) fn for_repo(event: ForgeEvent, name: &str) -> ForgeEvent {
    let repo = name.to_string();
    match event {
        ForgeEvent::Push {
            git_ref, deleted, ..
        } => ForgeEvent::Push {
            repo,
            git_ref,
            deleted,
        },
        ForgeEvent::PullRequestOpened(pr) => {
            ForgeEvent::PullRequestOpened(PullRequestEvent { repo, ..pr })
        }
        ForgeEvent::PullRequestReopened(pr) => {
            ForgeEvent::PullRequestReopened(PullRequestEvent { repo, ..pr })
        }
        ForgeEvent::PullRequestClosed { git_ref, .. } => {
            ForgeEvent::PullRequestClosed { repo, git_ref }
        }
        ForgeEvent::Rerun {
            commit,
            pipeline,
            request,
            ..
        } => ForgeEvent::Rerun {
            repo,
            commit,
            pipeline,
            request,
        },
        ForgeEvent::Approve(comment) => ForgeEvent::Approve(ApprovalComment { repo, ..comment }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_repo_replaces_the_slug() {
        let e = ForgeEvent::Rerun {
            repo: "o/n".into(),
            commit: "c".into(),
            pipeline: None,
            request: Some("r".into()),
        };
        assert_eq!(
            for_repo(e, "app"),
            ForgeEvent::Rerun {
                repo: "app".into(),
                commit: "c".into(),
                pipeline: None,
                request: Some("r".into()),
            }
        );
    }
}
