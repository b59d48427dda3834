//! What a forge payload means once mapped, and the small JSON accessors the mappers share.
//! Fields are addressed by dotted paths so that an error names exactly what is missing.

use deploylite_reconciler::events::{ApprovalComment, ForgeEvent, PullRequestEvent};
use serde_json::Value;

/// A mapped delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// GitHub's hello when a hook is created: answered, nothing else.
    Ping,
    /// An event or action DeployLite does not act on; the reason goes back to the forge.
    Ignored(String),
    /// Something to do in the repository the forge calls `slug`. Until the pipeline looks the
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

/// A payload that lacks a field the event needs (or has it with the wrong type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapError(pub String);

impl MapError {
    pub(crate) fn missing(path: &str, expected: &str) -> MapError {
        MapError(format!(
            "missing or invalid field `{path}` (expected {expected})"
        ))
    }
}

/// The value at a dotted path (`pull_request.head.sha`); JSON `null` counts as absent.
pub(crate) fn at<'a>(payload: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(payload, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

pub(crate) fn opt_str<'a>(payload: &'a Value, path: &str) -> Option<&'a str> {
    at(payload, path).and_then(Value::as_str)
}

/// A required, non-empty string.
pub(crate) fn req_str<'a>(payload: &'a Value, path: &str) -> Result<&'a str, MapError> {
    opt_str(payload, path)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| MapError::missing(path, "a string"))
}

pub(crate) fn req_i64(payload: &Value, path: &str) -> Result<i64, MapError> {
    at(payload, path)
        .and_then(Value::as_i64)
        .ok_or_else(|| MapError::missing(path, "an integer"))
}

pub(crate) fn opt_bool(payload: &Value, path: &str) -> Option<bool> {
    at(payload, path).and_then(Value::as_bool)
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub(crate) fn req_sha<'a>(payload: &'a Value, path: &str) -> Result<&'a str, MapError> {
    opt_str(payload, path)
        .filter(|s| is_sha(s))
        .ok_or_else(|| MapError::missing(path, "a commit id"))
}

pub(crate) fn is_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The all-zero id forges send as `after` for a deleted ref (and `before` for a new one).
pub(crate) fn is_zero_sha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// A time (RFC 3339) as epoch milliseconds.
pub(crate) fn req_time_ms(payload: &Value, path: &str) -> Result<i64, MapError> {
    opt_str(payload, path)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| MapError::missing(path, "a time"))
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
    use serde_json::json;

    #[test]
    fn paths_and_errors() {
        let v = json!({"a": {"b": {"c": "x", "n": 3, "z": null}}, "e": ""});
        assert_eq!(req_str(&v, "a.b.c"), Ok("x"));
        assert_eq!(req_i64(&v, "a.b.n"), Ok(3));
        assert!(at(&v, "a.b.z").is_none(), "null is absent");
        let err = req_str(&v, "a.b.z").unwrap_err();
        assert!(err.0.contains("`a.b.z`"), "{err:?}");
        assert!(req_str(&v, "e").is_err(), "empty strings are missing");
        assert!(req_i64(&v, "a.b.c").is_err(), "wrong type");
        assert!(req_str(&v, "a.x.c").is_err());
        assert!(is_zero_sha("0000000000000000000000000000000000000000"));
        assert!(!is_zero_sha(""));
        assert!(is_sha("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
        assert!(!is_sha("6113728f"));
    }

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
