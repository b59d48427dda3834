//! Whether a GitLab user may approve untrusted code: note hooks do not carry the commenter's
//! access level, so the members API is asked (`GET /projects/:id/members/all/:user_id`, which
//! includes inherited and invited members; https://docs.gitlab.com/api/members/).

use std::time::Duration;

use crate::forges::Forges;

/// GitLab's Developer access level: push rights, like GitHub's COLLABORATOR.
const DEVELOPER: i64 = 30;

/// Why a commenter's access could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("GitLab is not configured")]
    NotConfigured,
    #[error("forges.gitlab.token is needed to check membership")]
    NoToken,
    #[error("cannot build an HTTP client: {source}")]
    Client {
        #[source]
        source: reqwest::Error,
    },
    #[error("GitLab did not answer: {source}")]
    Request {
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from GitLab: {source}")]
    Body {
        #[source]
        source: reqwest::Error,
    },
    #[error("GitLab's answer has no access_level")]
    NoAccessLevel,
    #[error("GitLab answered {0}")]
    Status(u16),
}

/// True when `user_id` has at least Developer access to `project_id`.
pub async fn gitlab_developer(
    forges: &Forges,
    project_id: i64,
    user_id: i64,
) -> Result<bool, MembershipError> {
    let gitlab = forges
        .gitlab
        .as_ref()
        .ok_or(MembershipError::NotConfigured)?;
    let token = gitlab.token.as_ref().ok_or(MembershipError::NoToken)?;
    let url = format!(
        "{}/projects/{project_id}/members/all/{user_id}",
        gitlab.api_url.trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|source| MembershipError::Client { source })?;
    let response = client
        .get(&url)
        .header("PRIVATE-TOKEN", token.expose())
        .send()
        .await
        .map_err(|source| MembershipError::Request { source })?;
    match response.status().as_u16() {
        404 => Ok(false),
        200 => {
            let member: serde_json::Value = response
                .json()
                .await
                .map_err(|source| MembershipError::Body { source })?;
            let level = member
                .get("access_level")
                .and_then(|l| l.as_i64())
                .ok_or(MembershipError::NoAccessLevel)?;
            let active = member.get("state").and_then(|s| s.as_str()) != Some("blocked");
            Ok(active && level >= DEVELOPER)
        }
        status => Err(MembershipError::Status(status)),
    }
}
