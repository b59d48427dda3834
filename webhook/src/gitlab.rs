//! GitLab payloads (`X-Gitlab-Event` + body) → [`ForgeEvent`]. Pure: no IO, no state.
//!
//! - `Push Hook`, `Tag Push Hook` → push (a deletion when `after` is all zeros)
//! - `Merge Request Hook`: `open` / `update` → run the head; `reopen` → run the head and re-run
//!   its cancelled runs; `close` / `merge` → cancel
//! - `Note Hook` on a merge request, `/deploylite approve` → approve the head's untrusted runs
//!   if the commenter is a member (checked by the intake through the members API)
//! - anything else is ignored.

use deploylite_forge::payload::{is_zero_sha, opt_str, req_i64, req_sha, req_str, MapError};
use deploylite_reconciler::events::{ApprovalComment, ForgeEvent, PullRequestEvent};
use serde_json::Value;

use crate::payload::{is_approve_command, Mapped};

pub(crate) fn map(event: &str, payload: &Value) -> Result<Mapped, MapError> {
    match event {
        "Push Hook" | "Tag Push Hook" => push(payload),
        "Merge Request Hook" => merge_request(payload),
        "Note Hook" => note(payload),
        other => Ok(Mapped::Ignored(format!("event `{other}` is not used"))),
    }
}

/// A comment `/deploylite approve` on a merge request approves its head commit's untrusted
/// runs, once the members API says the commenter has at least Developer access.
fn note(payload: &Value) -> Result<Mapped, MapError> {
    if opt_str(payload, "object_attributes.noteable_type") != Some("MergeRequest") {
        return Ok(Mapped::Ignored(
            "a comment on something other than a merge request".into(),
        ));
    }
    if !is_approve_command(opt_str(payload, "object_attributes.note").unwrap_or("")) {
        return Ok(Mapped::Ignored(
            "the comment holds no DeployLite command".into(),
        ));
    }
    let slug = slug(payload)?;
    let iid = req_i64(payload, "merge_request.iid")?;
    let commit = req_sha(payload, "merge_request.last_commit.id")?;
    let username = req_str(payload, "user.username")?;
    let user_id =
        req_i64(payload, "user.id").or_else(|_| req_i64(payload, "object_attributes.author_id"))?;
    let project_id = req_i64(payload, "project_id").or_else(|_| req_i64(payload, "project.id"))?;
    Ok(Mapped::IfMember {
        event: ForgeEvent::Approve(ApprovalComment {
            repo: slug.clone(),
            git_ref: format!("refs/merge-requests/{iid}/head"),
            by: format!("gitlab:{username}"),
            // The hook names the head the commenter saw: only that commit is approved.
            commit: Some(commit.to_string()),
            written_at: 0,
        }),
        slug,
        project_id,
        user_id,
    })
}

fn slug(payload: &Value) -> Result<String, MapError> {
    req_str(payload, "project.path_with_namespace").map(str::to_string)
}

fn push(payload: &Value) -> Result<Mapped, MapError> {
    let git_ref = req_str(payload, "ref")?;
    let after = req_str(payload, "after")?;
    let slug = slug(payload)?;
    Ok(Mapped::Event {
        event: ForgeEvent::Push {
            repo: slug.clone(),
            git_ref: git_ref.to_string(),
            deleted: is_zero_sha(after),
        },
        slug,
    })
}

fn merge_request(payload: &Value) -> Result<Mapped, MapError> {
    let action = req_str(payload, "object_attributes.action")?;
    if !matches!(action, "open" | "update" | "reopen" | "close" | "merge") {
        // approved, unapproved, approval, unapproval: no new code.
        return Ok(Mapped::Ignored(format!(
            "merge request action `{action}` is not used"
        )));
    }
    let slug = slug(payload)?;
    let iid = req_i64(payload, "object_attributes.iid")?;
    let git_ref = format!("refs/merge-requests/{iid}/head");
    if matches!(action, "close" | "merge") {
        return Ok(Mapped::Event {
            event: ForgeEvent::PullRequestClosed {
                repo: slug.clone(),
                git_ref,
            },
            slug,
        });
    }
    // An `update` without new commits (a title edit) maps the same way: the head's runs exist
    // already, and run identity makes recording them again a no-op.
    let head_sha = req_sha(payload, "object_attributes.last_commit.id")?;
    let base_branch = req_str(payload, "object_attributes.target_branch")?;
    let source_project = req_i64(payload, "object_attributes.source_project_id")?;
    let target_project = req_i64(payload, "object_attributes.target_project_id")?;
    // The source project is under object_attributes (older GitLab versions also sent it at the
    // top level); a same-project MR may omit it, and then the head is in this project.
    let head_repo = opt_str(payload, "object_attributes.source.path_with_namespace")
        .or_else(|| opt_str(payload, "source.path_with_namespace"))
        .map(str::to_string)
        .unwrap_or_else(|| slug.clone());
    let mr = PullRequestEvent {
        repo: slug.clone(),
        number: iid,
        git_ref,
        head_sha: head_sha.to_string(),
        // The hook does not carry the target branch's tip (GitLab's documented payload has
        // no such field); None makes path filters pass, as for any unknown change.
        base_sha: None,
        base_branch: base_branch.to_string(),
        head_repo,
        from_fork: source_project != target_project,
        author: opt_str(payload, "user.username")
            .unwrap_or("unknown")
            .to_string(),
        // The hook does not say whether the author is a member: a fork's code waits for an
        // approval whoever wrote it.
        author_is_member: false,
    };
    let event = if action == "reopen" {
        ForgeEvent::PullRequestReopened(mr)
    } else {
        ForgeEvent::PullRequestOpened(mr)
    };
    Ok(Mapped::Event { event, slug })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/gitlab/webhooks/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture"))
            .expect("fixture JSON")
    }

    #[test]
    fn pushes_and_tags() {
        assert_eq!(
            map("Push Hook", &fixture("push")).unwrap(),
            Mapped::Event {
                slug: "mike/diaspora".into(),
                event: ForgeEvent::Push {
                    repo: "mike/diaspora".into(),
                    git_ref: "refs/heads/master".into(),
                    deleted: false
                }
            }
        );
        assert_eq!(
            map("Tag Push Hook", &fixture("tag_push")).unwrap(),
            Mapped::Event {
                slug: "jsmith/example".into(),
                event: ForgeEvent::Push {
                    repo: "jsmith/example".into(),
                    git_ref: "refs/tags/v1.0.0".into(),
                    deleted: false
                }
            }
        );
        // No published example deletes a branch: GitLab sends `after` all zeros.
        let mut p = fixture("push");
        p["after"] = json!("0000000000000000000000000000000000000000");
        assert!(matches!(
            map("Push Hook", &p).unwrap(),
            Mapped::Event {
                event: ForgeEvent::Push { deleted: true, .. },
                ..
            }
        ));
    }

    #[test]
    fn merge_requests() {
        let open = fixture("merge_request.open");
        let expected = ForgeEvent::PullRequestOpened(PullRequestEvent {
            repo: "gitlabhq/gitlab-test".into(),
            number: 1,
            git_ref: "refs/merge-requests/1/head".into(),
            head_sha: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
            base_sha: None,
            base_branch: "master".into(),
            head_repo: "awesome_space/awesome_project".into(),
            from_fork: false,
            author: "root".into(),
            author_is_member: false,
        });
        assert_eq!(
            map("Merge Request Hook", &open).unwrap(),
            Mapped::Event {
                slug: "gitlabhq/gitlab-test".into(),
                event: expected
            }
        );
        let mut p = open.clone();
        p["object_attributes"]["action"] = json!("update");
        assert!(matches!(
            map("Merge Request Hook", &p).unwrap(),
            Mapped::Event {
                event: ForgeEvent::PullRequestOpened(_),
                ..
            }
        ));
        p["object_attributes"]["action"] = json!("reopen");
        assert!(matches!(
            map("Merge Request Hook", &p).unwrap(),
            Mapped::Event {
                event: ForgeEvent::PullRequestReopened(_),
                ..
            }
        ));
        for action in ["close", "merge"] {
            let mut p = open.clone();
            p["object_attributes"]["action"] = json!(action);
            assert_eq!(
                map("Merge Request Hook", &p).unwrap(),
                Mapped::Event {
                    slug: "gitlabhq/gitlab-test".into(),
                    event: ForgeEvent::PullRequestClosed {
                        repo: "gitlabhq/gitlab-test".into(),
                        git_ref: "refs/merge-requests/1/head".into()
                    }
                }
            );
        }
        let mut p = open.clone();
        p["object_attributes"]["action"] = json!("approved");
        assert!(matches!(
            map("Merge Request Hook", &p).unwrap(),
            Mapped::Ignored(_)
        ));
        // A fork: the source project differs from the target.
        let mut p = open.clone();
        p["object_attributes"]["source_project_id"] = json!(99);
        let Mapped::Event {
            event: ForgeEvent::PullRequestOpened(pr),
            ..
        } = map("Merge Request Hook", &p).unwrap()
        else {
            panic!()
        };
        assert!(pr.from_fork);
    }

    #[test]
    fn other_events_and_missing_fields() {
        assert!(
            matches!(map("Pipeline Hook", &fixture("pipeline")).unwrap(), Mapped::Ignored(r) if r.contains("Pipeline Hook"))
        );
        let mut p = fixture("push");
        p["project"]
            .as_object_mut()
            .unwrap()
            .remove("path_with_namespace");
        assert!(map("Push Hook", &p)
            .unwrap_err()
            .0
            .contains("`project.path_with_namespace`"));
        let mut p = fixture("merge_request.open");
        p["object_attributes"]
            .as_object_mut()
            .unwrap()
            .remove("last_commit");
        assert!(map("Merge Request Hook", &p)
            .unwrap_err()
            .0
            .contains("`object_attributes.last_commit.id`"));
    }
}
