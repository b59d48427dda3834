//! Whether a GitLab user may approve untrusted code: note hooks do not carry the commenter's
//! access level, so the members API is asked (`GET /projects/:id/members/all/:user_id`, which
//! includes inherited and invited members; https://docs.gitlab.com/api/members/).

use std::time::Duration;

use crate::forges::Forges;

/// GitLab's Developer access level: push rights, like GitHub's COLLABORATOR.
const DEVELOPER: i64 = 30;

/// True when `user_id` has at least Developer access to `project_id`.
pub async fn gitlab_developer(
    forges: &Forges,
    project_id: i64,
    user_id: i64,
) -> Result<bool, String> {
    let gitlab = forges.gitlab.as_ref().ok_or("GitLab is not configured")?;
    let token = gitlab
        .token
        .as_ref()
        .ok_or("forges.gitlab.token is needed to check membership")?;
    let url = format!(
        "{}/projects/{project_id}/members/all/{user_id}",
        gitlab.api_url.trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let response = client
        .get(&url)
        .header("PRIVATE-TOKEN", token.expose())
        .send()
        .await
        .map_err(|e| format!("GitLab did not answer: {e}"))?;
    match response.status().as_u16() {
        404 => Ok(false),
        200 => {
            let member: serde_json::Value = response
                .json()
                .await
                .map_err(|e| format!("unexpected answer from GitLab: {e}"))?;
            let level = member
                .get("access_level")
                .and_then(|l| l.as_i64())
                .ok_or("GitLab's answer has no access_level")?;
            let active = member.get("state").and_then(|s| s.as_str()) != Some("blocked");
            Ok(active && level >= DEVELOPER)
        }
        status => Err(format!("GitLab answered {status}")),
    }
}
