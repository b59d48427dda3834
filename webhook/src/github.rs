//! GitHub payloads (`X-GitHub-Event` + body) → [`ForgeEvent`]. Pure: no IO, no state.
//!
//! - `push` (branches and tags; `deleted: true` cancels the ref's queued runs)
//! - `pull_request` `opened` / `synchronize` → run the head; `reopened` → run the head and re-run
//!   its cancelled runs; `closed` → cancel
//! - `check_run` `rerequested` on a `deploylite/<pipeline>` check → re-run that pipeline
//! - `check_suite` `rerequested` → re-run every pipeline of the commit
//! - `issue_comment` `created` on a pull request, `/deploylite approve` by an owner, member or
//!   collaborator → approve the head's untrusted runs
//! - `ping` → answered; anything else is ignored.

use deploylite_forge::payload::{
    at, is_member, is_zero_sha, opt_bool, opt_str, pull_request_event, req_i64, req_sha, req_str,
    req_time_ms, MapError,
};
use deploylite_reconciler::events::{ApprovalComment, ForgeEvent};
use serde_json::Value;

use crate::payload::{is_approve_command, Mapped};

/// Check runs DeployLite reports are named `deploylite/<pipeline>`.
pub(crate) const CHECK_PREFIX: &str = "deploylite/";

pub(crate) fn map(event: &str, payload: &Value) -> Result<Mapped, MapError> {
    match event {
        "ping" => Ok(Mapped::Ping),
        "push" => push(payload),
        "pull_request" => pull_request(payload),
        "check_run" => check_run(payload),
        "check_suite" => check_suite(payload),
        "issue_comment" => issue_comment(payload),
        other => Ok(Mapped::Ignored(format!("event `{other}` is not used"))),
    }
}

fn slug(payload: &Value) -> Result<String, MapError> {
    req_str(payload, "repository.full_name").map(str::to_string)
}

fn push(payload: &Value) -> Result<Mapped, MapError> {
    let git_ref = req_str(payload, "ref")?;
    // `deleted` is always present in real deliveries; `after` all zeros says the same.
    let deleted = opt_bool(payload, "deleted")
        .unwrap_or_else(|| opt_str(payload, "after").is_some_and(is_zero_sha));
    let slug = slug(payload)?;
    Ok(Mapped::Event {
        event: ForgeEvent::Push {
            repo: slug.clone(),
            git_ref: git_ref.to_string(),
            deleted,
        },
        slug,
    })
}

fn ignored_action(event: &str, action: &str) -> Mapped {
    Mapped::Ignored(format!("`{event}` action `{action}` is not used"))
}

fn pull_request(payload: &Value) -> Result<Mapped, MapError> {
    let action = req_str(payload, "action")?;
    if !matches!(action, "opened" | "synchronize" | "reopened" | "closed") {
        return Ok(ignored_action("pull_request", action));
    }
    let slug = slug(payload)?;
    let number = req_i64(payload, "number").or_else(|_| req_i64(payload, "pull_request.number"))?;
    let git_ref = format!("refs/pull/{number}/head");
    if action == "closed" {
        return Ok(Mapped::Event {
            event: ForgeEvent::PullRequestClosed {
                repo: slug.clone(),
                git_ref,
            },
            slug,
        });
    }
    let pr = pull_request_event(&slug, number, payload, "pull_request.")?;
    let event = if action == "reopened" {
        ForgeEvent::PullRequestReopened(pr)
    } else {
        ForgeEvent::PullRequestOpened(pr)
    };
    Ok(Mapped::Event { event, slug })
}

fn check_run(payload: &Value) -> Result<Mapped, MapError> {
    let action = req_str(payload, "action")?;
    if action != "rerequested" {
        return Ok(ignored_action("check_run", action));
    }
    let name = req_str(payload, "check_run.name")?;
    let Some(pipeline) = name.strip_prefix(CHECK_PREFIX).filter(|p| !p.is_empty()) else {
        return Ok(Mapped::Ignored(format!(
            "check run `{name}` is not DeployLite's"
        )));
    };
    let commit = req_sha(payload, "check_run.head_sha")?;
    let slug = slug(payload)?;
    let request = rerun_request(
        payload,
        "check_run",
        &["check_run.completed_at", "check_run.check_suite.updated_at"],
    )?;
    Ok(Mapped::Event {
        event: ForgeEvent::Rerun {
            repo: slug.clone(),
            commit: commit.to_string(),
            pipeline: Some(pipeline.to_string()),
            request: Some(request),
        },
        slug,
    })
}

fn issue_comment(payload: &Value) -> Result<Mapped, MapError> {
    let action = req_str(payload, "action")?;
    if action != "created" {
        return Ok(ignored_action("issue_comment", action));
    }
    if at(payload, "issue.pull_request").is_none() {
        return Ok(Mapped::Ignored(
            "a comment on an issue, not on a pull request".into(),
        ));
    }
    if !is_approve_command(opt_str(payload, "comment.body").unwrap_or("")) {
        return Ok(Mapped::Ignored(
            "the comment holds no DeployLite command".into(),
        ));
    }
    let login = req_str(payload, "comment.user.login")?;
    let association = opt_str(payload, "comment.author_association");
    if !is_member(association) {
        return Ok(Mapped::Ignored(format!(
            "`/deploylite approve` by {login} ignored: only owners, members and collaborators \
             may approve (author_association {})",
            association.unwrap_or("NONE")
        )));
    }
    let number = req_i64(payload, "issue.number")?;
    let slug = slug(payload)?;
    Ok(Mapped::Event {
        event: ForgeEvent::Approve(ApprovalComment {
            repo: slug.clone(),
            git_ref: format!("refs/pull/{number}/head"),
            by: format!("github:{login}"),
            commit: None,
            // GitHub gives whole seconds: the comment was written within the second after.
            written_at: req_time_ms(payload, "comment.created_at")? + 999,
        }),
        slug,
    })
}

/// The identity of a re-run request, as opposed to its delivery: the check's id and the
/// times that move whenever the check changes (GitHub sends no request time). A captured,
/// signed `rerequested` body replayed under a fresh `X-GitHub-Delivery` has the same identity
/// and so re-runs nothing; a new click after the re-run reported has newer times.
fn rerun_request(payload: &Value, object: &str, times: &[&str]) -> Result<String, MapError> {
    let id = req_i64(payload, &format!("{object}.id"))?;
    let mut key = format!("github/{object}/{id}");
    for path in times {
        let time = opt_str(payload, path).unwrap_or("-");
        if time.len() > 40 {
            return Err(MapError::missing(path, "a timestamp"));
        }
        key.push('/');
        key.push_str(time);
    }
    Ok(key)
}

fn check_suite(payload: &Value) -> Result<Mapped, MapError> {
    let action = req_str(payload, "action")?;
    if action != "rerequested" {
        // `requested` (a new push, for GitHub Apps) is covered by the push event.
        return Ok(ignored_action("check_suite", action));
    }
    let commit = req_sha(payload, "check_suite.head_sha")?;
    let slug = slug(payload)?;
    let request = rerun_request(payload, "check_suite", &["check_suite.updated_at"])?;
    Ok(Mapped::Event {
        event: ForgeEvent::Rerun {
            repo: slug.clone(),
            commit: commit.to_string(),
            pipeline: None,
            request: Some(request),
        },
        slug,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploylite_reconciler::events::PullRequestEvent;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/github/webhooks/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture"))
            .expect("fixture JSON")
    }

    fn event(mapped: Mapped) -> ForgeEvent {
        match mapped {
            Mapped::Event { event, .. } => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    const SLUG: &str = "Codertocat/Hello-World";

    #[test]
    fn pushes() {
        for name in [
            "push.branch-created",
            "push.branch-created.no-username-committer",
        ] {
            let mapped = map("push", &fixture(name)).unwrap();
            assert_eq!(
                mapped,
                Mapped::Event {
                    slug: SLUG.into(),
                    event: ForgeEvent::Push {
                        repo: SLUG.into(),
                        git_ref: "refs/heads/master".into(),
                        deleted: false
                    }
                },
                "{name}"
            );
        }
        assert_eq!(
            event(map("push", &fixture("push.tag-created.ghes-3.5")).unwrap()),
            ForgeEvent::Push {
                repo: SLUG.into(),
                git_ref: "refs/tags/simple-tag".into(),
                deleted: false
            }
        );
        assert_eq!(
            event(map("push", &fixture("push.tag-deleted")).unwrap()),
            ForgeEvent::Push {
                repo: SLUG.into(),
                git_ref: "refs/tags/simple-tag".into(),
                deleted: true
            }
        );
        // Without `deleted`, an all-zero `after` still means a deletion.
        let mut p = fixture("push.tag-deleted");
        p.as_object_mut().unwrap().remove("deleted");
        assert!(matches!(
            event(map("push", &p).unwrap()),
            ForgeEvent::Push { deleted: true, .. }
        ));
    }

    fn pr_event(sha: &str) -> PullRequestEvent {
        PullRequestEvent {
            repo: SLUG.into(),
            number: 2,
            git_ref: "refs/pull/2/head".into(),
            head_sha: sha.into(),
            base_sha: Some("f95f852bd8fca8fcc58a9a2d6c842781e32a215e".into()),
            base_branch: "master".into(),
            head_repo: SLUG.into(),
            from_fork: false,
            // The examples' author is the repository's owner.
            author: "Codertocat".into(),
            author_is_member: true,
        }
    }

    #[test]
    fn pull_requests() {
        let head = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
        for name in [
            "pull_request.opened",
            "pull_request.opened.null-body",
            "pull_request.synchronize",
        ] {
            assert_eq!(
                event(map("pull_request", &fixture(name)).unwrap()),
                ForgeEvent::PullRequestOpened(pr_event(head)),
                "{name}"
            );
        }
        assert_eq!(
            event(map("pull_request", &fixture("pull_request.reopened")).unwrap()),
            ForgeEvent::PullRequestReopened(pr_event(head))
        );
        assert_eq!(
            event(map("pull_request", &fixture("pull_request.closed")).unwrap()),
            ForgeEvent::PullRequestClosed {
                repo: SLUG.into(),
                git_ref: "refs/pull/2/head".into()
            }
        );
        let mut labeled = fixture("pull_request.opened");
        labeled["action"] = json!("labeled");
        assert!(
            matches!(map("pull_request", &labeled).unwrap(), Mapped::Ignored(r) if r.contains("labeled"))
        );
    }

    #[test]
    fn fork_pull_requests() {
        // No published example comes from a fork: make the head repository another one.
        let mut p = fixture("pull_request.opened");
        p["pull_request"]["head"]["repo"]["full_name"] = json!("forker/Hello-World");
        let ForgeEvent::PullRequestOpened(pr) = event(map("pull_request", &p).unwrap()) else {
            panic!()
        };
        assert_eq!(
            (pr.head_repo.as_str(), pr.from_fork),
            ("forker/Hello-World", true)
        );
        // Slugs compare case-insensitively, as GitHub's do.
        p["pull_request"]["head"]["repo"]["full_name"] = json!("codertocat/hello-world");
        let ForgeEvent::PullRequestOpened(pr) = event(map("pull_request", &p).unwrap()) else {
            panic!()
        };
        assert!(!pr.from_fork);
        // A deleted fork: head.repo is null.
        p["pull_request"]["head"]["repo"] = Value::Null;
        let ForgeEvent::PullRequestOpened(pr) = event(map("pull_request", &p).unwrap()) else {
            panic!()
        };
        assert_eq!(
            (pr.head_repo.as_str(), pr.from_fork),
            ("Codertocat/(deleted fork)", true)
        );
    }

    #[test]
    fn check_runs_and_suites() {
        let mut run = fixture("check_run.rerequested");
        assert!(
            matches!(map("check_run", &run).unwrap(), Mapped::Ignored(r) if r.contains("randscape")),
            "not ours"
        );
        run["check_run"]["name"] = json!("deploylite/ci");
        assert_eq!(
            map("check_run", &run).unwrap(),
            Mapped::Event {
                slug: "github/hello-world".into(),
                event: ForgeEvent::Rerun {
                    repo: "github/hello-world".into(),
                    commit: "d6fde92930d4715a2b49857d24b940956b26d2d3".into(),
                    pipeline: Some("ci".into()),
                    request: Some(
                        "github/check_run/4/2018-05-04T01:14:52Z/2018-05-04T01:14:52Z".into()
                    ),
                }
            }
        );
        run["check_run"]["name"] = json!("deploylite/");
        assert!(matches!(
            map("check_run", &run).unwrap(),
            Mapped::Ignored(_)
        ));
        assert_eq!(
            event(map("check_suite", &fixture("check_suite.rerequested")).unwrap()),
            ForgeEvent::Rerun {
                repo: SLUG.into(),
                commit: "ec26c3e57ca3a959ca5aad62de7213c562f8c821".into(),
                pipeline: None,
                request: Some("github/check_suite/118578147/2019-05-15T15:21:14Z".into()),
            }
        );
        // A re-request whose check has no id cannot be told from its replays: refused.
        let mut suite = fixture("check_suite.rerequested");
        suite["check_suite"].as_object_mut().unwrap().remove("id");
        assert!(map("check_suite", &suite)
            .unwrap_err()
            .0
            .contains("check_suite.id"));
        assert!(matches!(
            map("check_suite", &fixture("check_suite.requested")).unwrap(),
            Mapped::Ignored(_)
        ));
    }

    #[test]
    fn pings_and_other_events() {
        assert_eq!(
            map("ping", &fixture("ping.repository-hook")).unwrap(),
            Mapped::Ping
        );
        assert_eq!(
            map("ping", &fixture("ping.app-hook")).unwrap(),
            Mapped::Ping
        );
        assert!(
            matches!(map("create", &fixture("create.tag")).unwrap(), Mapped::Ignored(r) if r.contains("create"))
        );
        assert!(matches!(
            map("delete", &fixture("delete.tag")).unwrap(),
            Mapped::Ignored(_)
        ));
    }

    #[test]
    fn missing_fields_are_named() {
        let mut p = fixture("pull_request.opened");
        p["pull_request"]["head"]
            .as_object_mut()
            .unwrap()
            .remove("sha");
        assert!(map("pull_request", &p)
            .unwrap_err()
            .0
            .contains("`pull_request.head.sha`"));
        let mut p = fixture("push.branch-created");
        p.as_object_mut().unwrap().remove("repository");
        assert!(map("push", &p)
            .unwrap_err()
            .0
            .contains("`repository.full_name`"));
        assert!(map("push", &json!([])).unwrap_err().0.contains("`ref`"));
        assert!(map("check_suite", &json!({"action": "rerequested"}))
            .unwrap_err()
            .0
            .contains("check_suite.head_sha"));
    }
}
