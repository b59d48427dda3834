//! Reading forge JSON, shared by the webhook mappers (`deploylite-webhook`) and the listings
//! (`pulls`): dotted-path accessors whose errors name exactly what is missing, and the pull
//! request object GitHub sends in a `pull_request` webhook and lists under `/pulls` alike.

use deploylite_reconciler::events::PullRequestEvent;
use serde_json::Value;

/// A payload that lacks a field the event needs (or has it with the wrong type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError(pub String);

impl MapError {
    pub fn missing(path: &str, expected: &str) -> MapError {
        MapError(format!(
            "missing or invalid field `{path}` (expected {expected})"
        ))
    }
}

/// The value at a dotted path (`pull_request.head.sha`); JSON `null` counts as absent.
pub fn at<'a>(payload: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(payload, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

pub fn opt_str<'a>(payload: &'a Value, path: &str) -> Option<&'a str> {
    at(payload, path).and_then(Value::as_str)
}

/// A required, non-empty string.
pub fn req_str<'a>(payload: &'a Value, path: &str) -> Result<&'a str, MapError> {
    opt_str(payload, path)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| MapError::missing(path, "a string"))
}

pub fn req_i64(payload: &Value, path: &str) -> Result<i64, MapError> {
    at(payload, path)
        .and_then(Value::as_i64)
        .ok_or_else(|| MapError::missing(path, "an integer"))
}

pub fn opt_bool(payload: &Value, path: &str) -> Option<bool> {
    at(payload, path).and_then(Value::as_bool)
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn req_sha<'a>(payload: &'a Value, path: &str) -> Result<&'a str, MapError> {
    opt_str(payload, path)
        .filter(|s| is_sha(s))
        .ok_or_else(|| MapError::missing(path, "a commit id"))
}

pub fn is_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The all-zero id forges send as `after` for a deleted ref (and `before` for a new one).
pub fn is_zero_sha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// A time (RFC 3339) as epoch milliseconds.
pub fn req_time_ms(payload: &Value, path: &str) -> Result<i64, MapError> {
    opt_str(payload, path)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| MapError::missing(path, "a time"))
}

/// `author_association` values of people with write access to the repository: their pull
/// requests from forks are trusted, and their comments may approve untrusted ones.
const MEMBER_ASSOCIATIONS: [&str; 3] = ["OWNER", "MEMBER", "COLLABORATOR"];

pub fn is_member(association: Option<&str>) -> bool {
    association.is_some_and(|a| MEMBER_ASSOCIATIONS.contains(&a))
}

/// A pull request object (`pull_request` in a webhook, an item of `GET /repos/{owner}/{repo}/pulls`,
/// which share these fields) found at `prefix` in `payload`, as the event its head asks for.
pub fn pull_request_event(
    slug: &str,
    number: i64,
    payload: &Value,
    prefix: &str,
) -> Result<PullRequestEvent, MapError> {
    let field = |name: &str| format!("{prefix}{name}");
    let head_sha = req_sha(payload, &field("head.sha"))?;
    let base_branch = req_str(payload, &field("base.ref"))?;
    let base_repo = opt_str(payload, &field("base.repo.full_name")).unwrap_or(slug);
    let (head_repo, from_fork) = match opt_str(payload, &field("head.repo.full_name")) {
        Some(head) => (head.to_string(), !head.eq_ignore_ascii_case(base_repo)),
        // `head.repo` is null when the fork was deleted. The head commit is still reachable as
        // refs/pull/N/head, but nothing shows it came from the base repository: treat it as a
        // fork (untrusted), named after the head's owner (`label` is `owner:branch`).
        None => {
            let owner = opt_str(payload, &field("head.label"))
                .and_then(|l| l.split_once(':').map(|(owner, _)| owner))
                .or_else(|| opt_str(payload, &field("head.user.login")))
                .unwrap_or("unknown");
            (format!("{owner}/(deleted fork)"), true)
        }
    };
    Ok(PullRequestEvent {
        repo: slug.to_string(),
        number,
        git_ref: format!("refs/pull/{number}/head"),
        head_sha: head_sha.to_string(),
        base_sha: opt_str(payload, &field("base.sha"))
            .filter(|s| is_sha(s))
            .map(str::to_string),
        base_branch: base_branch.to_string(),
        head_repo,
        from_fork,
        author: opt_str(payload, &field("user.login"))
            .unwrap_or("unknown")
            .to_string(),
        author_is_member: is_member(opt_str(payload, &field("author_association"))),
    })
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
}
