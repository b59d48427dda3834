//! Deployments mirrored to the forges (docs/environments.md, "Forges").
//!
//! - GitHub: one Deployment per DeployLite deployment (`ref` = the version's sha), then a
//!   deployment status per change of state, with `environment` and `log_url`.
//! - GitLab: the deployments API: created when the deployment leaves `waiting`, then updated.
//! - A deployment rejected by policy is also a failing check run (GitHub App) or commit status
//!   (token, GitLab) named `deploylite/deploy: <env>` on the version's commit, whose summary
//!   lists the deny messages.
//!
//! As for runs, the sender renders the deployment's *current* state; what was sent is
//! remembered in `forge_objects`, so a retry after a partial delivery resumes without
//! duplicating a Deployment, a status or a check.

use deploylite_reconciler::status::DeploymentStatus;
use deploylite_reconciler::store::{DeploymentRecord, Store};
use octocrab::Octocrab;
use serde_json::{json, Value};

use super::http::{call, encode_segment, DeliveryError, Verb};
use super::{github, gitlab};

/// `forge_objects` kinds, keyed by the deployment id.
const DEPLOYMENT: &str = "deployment";
/// The last status sent (`state\ndescription` on GitHub, `status` on GitLab).
const DEPLOYMENT_STATUS: &str = "deployment_status";
/// The rejection's check run id or commit status state, once sent.
const DEPLOYMENT_REJECTION: &str = "deployment_rejection";

/// A deployment as a report shows it.
#[derive(Debug, Clone)]
pub(crate) struct DeploymentState {
    pub deployment: DeploymentRecord,
    /// DeployLite's page for the deployment (`log_url`, `details_url`), when `public_url` is set.
    pub url: Option<String>,
    pub now_ms: i64,
}

/// The check run / commit status name of a rejected deployment.
pub(crate) fn check_name(environment: &str) -> String {
    format!("deploylite/deploy: {environment}")
}

/// GitHub's deployment status `state` for a DeployLite status.
pub(crate) fn github_state(status: DeploymentStatus) -> &'static str {
    use DeploymentStatus::*;
    match status {
        Waiting | Queued => "queued",
        Deploying | Verifying | RollingBack => "in_progress",
        Succeeded => "success",
        Failed | RolledBack => "failure",
        Rejected => "error",
        Superseded | Cancelled => "inactive",
    }
}

/// GitLab's deployment `status`; `None`: nothing to mirror yet. GitLab's API creates and
/// updates deployments only as `running`, `success`, `failed` or `canceled` (it refuses
/// `created`), so a waiting deployment appears on GitLab when it is queued. A rejected one
/// never ran: it is a failed commit status instead.
pub(crate) fn gitlab_status(status: DeploymentStatus) -> Option<&'static str> {
    use DeploymentStatus::*;
    match status {
        Waiting | Rejected => None,
        Queued | Deploying | Verifying | RollingBack => Some("running"),
        Succeeded => Some("success"),
        Failed | RolledBack => Some("failed"),
        Superseded | Cancelled => Some("canceled"),
    }
}

fn one_line(text: &str, max: usize) -> String {
    let text = text.replace(['\n', '\r'], " ");
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if text.chars().count() > max => format!("{}…", &text[..cut]),
        _ => text,
    }
}

/// The status description: why it waits, or what went wrong, else where it stands.
pub(crate) fn description(d: &DeploymentRecord, max: usize) -> String {
    use DeploymentStatus::*;
    let short = super::render::short_sha(&d.version);
    let text = match d.status {
        Waiting => match &d.pending_reason {
            Some(reason) => format!("waiting: {reason}"),
            None => "waiting".into(),
        },
        Rejected if !d.errors.is_empty() => format!("rejected: {}", d.errors.join("; ")),
        Failed | RolledBack | Cancelled if !d.errors.is_empty() => {
            format!("{}: {}", d.status, d.errors.join("; "))
        }
        _ => match &d.pending_reason {
            Some(reason) => format!("{}: {reason}", d.status),
            None => format!("{} {short} ({})", d.status, d.action),
        },
    };
    one_line(&text, max)
}

/// `POST /repos/{owner}/{repo}/deployments`
/// (https://docs.github.com/en/rest/deployments/deployments#create-a-deployment). No
/// auto-merge and no required contexts: DeployLite has decided already, GitHub only records.
pub(crate) fn github_deployment_body(d: &DeploymentRecord) -> Value {
    let mut body = json!({
        "ref": d.version,
        "task": "deploy",
        "environment": d.environment,
        "auto_merge": false,
        "required_contexts": [],
        "description": one_line(
            &format!("DeployLite deployment {} ({}, {})", d.id, d.action, d.triggered_by),
            140,
        ),
        "transient_environment": false,
        "payload": { "deploylite_deployment_id": d.id, "attempt": d.attempt },
    });
    if d.environment == "production" {
        body["production_environment"] = json!(true);
    }
    body
}

/// `POST /repos/{owner}/{repo}/deployments/{id}/statuses`
/// (https://docs.github.com/en/rest/deployments/statuses#create-a-deployment-status).
/// `auto_inactive` stays GitHub's default: a new success makes the older ones inactive.
pub(crate) fn github_status_body(state: &DeploymentState) -> Value {
    let d = &state.deployment;
    let mut body = json!({
        "state": github_state(d.status),
        "environment": d.environment,
        "description": description(d, 140),
    });
    if let Some(url) = &state.url {
        body["log_url"] = json!(url);
    }
    body
}

/// The deny messages of a rejected deployment: the policy's, else its errors (a deploy
/// pipeline that cannot be read rejects it too).
pub(crate) fn deny_messages(d: &DeploymentRecord) -> Vec<String> {
    match &d.policy {
        Some(p) if !p.deny.is_empty() => p.deny.clone(),
        _ => d.errors.clone(),
    }
}

/// The markdown summary of a rejected deployment's check run.
pub(crate) fn rejection_summary(state: &DeploymentState) -> String {
    let d = &state.deployment;
    let mut out = format!(
        "**Deployment {} of `{}` to `{}` was rejected.**\n\n",
        d.id,
        super::render::short_sha(&d.version),
        d.environment
    );
    if let Some(url) = &state.url {
        out.push_str(&format!("[Details]({url})\n\n"));
    }
    let messages = deny_messages(d);
    let heading = if d.policy.as_ref().is_some_and(|p| p.denied()) {
        "Denied by policy"
    } else {
        "Problems"
    };
    out.push_str(&format!("### {heading}\n\n"));
    for m in messages.iter().take(100) {
        out.push_str(&format!("- {}\n", one_line(m, 1000)));
    }
    if messages.len() > 100 {
        out.push_str(&format!("- … and {} more\n", messages.len() - 100));
    }
    if let Some(p) = &d.policy {
        if !p.warn.is_empty() {
            out.push_str("\n### Policy warnings\n\n");
            for m in p.warn.iter().take(100) {
                out.push_str(&format!("- {}\n", one_line(m, 1000)));
            }
        }
    }
    out
}

/// `POST /repos/{owner}/{repo}/check-runs`, completed as a failure.
pub(crate) fn rejection_check_run_body(state: &DeploymentState) -> Value {
    let d = &state.deployment;
    let n = deny_messages(d).len();
    let mut body = json!({
        "name": check_name(&d.environment),
        "head_sha": d.version,
        "external_id": format!("deployment-{}", d.id),
        "status": "completed",
        "conclusion": "failure",
        "output": {
            "title": format!("Deployment rejected: {n} message{}", if n == 1 { "" } else { "s" }),
            "summary": rejection_summary(state),
        },
    });
    let completed = d.finished_at.unwrap_or(state.now_ms);
    if let Some(t) = chrono::DateTime::from_timestamp_millis(completed) {
        body["completed_at"] = json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
    if let Some(url) = &state.url {
        body["details_url"] = json!(url);
    }
    body
}

fn id_of(answer: &Value) -> Result<String, DeliveryError> {
    answer
        .get("id")
        .and_then(|id| {
            id.as_u64()
                .map(|n| n.to_string())
                .or_else(|| id.as_str().map(str::to_string))
        })
        .ok_or_else(|| DeliveryError::Unexpected("the created deployment has no id".into()))
}

/// Mirrors a deployment on GitHub: its Deployment, its latest status, and for a rejection the
/// failing check (`mode` Checks) or commit status (Statuses).
pub(crate) async fn report_github(
    crab: &Octocrab,
    store: &Store,
    repo: &str,
    slug: &str,
    mode: github::Mode,
    state: &DeploymentState,
) -> Result<(), DeliveryError> {
    let d = &state.deployment;
    let base = github::repo_path(slug)?;
    let key = d.id.to_string();
    if d.status == DeploymentStatus::Rejected {
        report_rejection_github(crab, store, repo, &base, mode, state).await?;
    }
    let existing = store.forge_object(repo, DEPLOYMENT, &key).await?;
    let id = match existing {
        Some(id) => id,
        // Superseded or cancelled before the forge ever saw it: nothing worth a Deployment.
        None if matches!(
            d.status,
            DeploymentStatus::Superseded | DeploymentStatus::Cancelled
        ) =>
        {
            return Ok(());
        }
        None => {
            let body = github_deployment_body(d);
            let answer = call(
                crab,
                Verb::Post,
                &format!("{base}/deployments"),
                Some(&body),
            )
            .await?;
            let id = id_of(&answer)?;
            store.set_forge_object(repo, DEPLOYMENT, &key, &id).await?;
            id
        }
    };
    let body = github_status_body(state);
    let fingerprint = format!(
        "{}\n{}",
        body["state"].as_str().unwrap_or_default(),
        body["description"].as_str().unwrap_or_default()
    );
    if store
        .forge_object(repo, DEPLOYMENT_STATUS, &key)
        .await?
        .as_deref()
        == Some(fingerprint.as_str())
    {
        return Ok(());
    }
    call(
        crab,
        Verb::Post,
        &format!("{base}/deployments/{}/statuses", encode_segment(&id)),
        Some(&body),
    )
    .await?;
    store
        .set_forge_object(repo, DEPLOYMENT_STATUS, &key, &fingerprint)
        .await?;
    Ok(())
}

async fn report_rejection_github(
    crab: &Octocrab,
    store: &Store,
    repo: &str,
    base: &str,
    mode: github::Mode,
    state: &DeploymentState,
) -> Result<(), DeliveryError> {
    let d = &state.deployment;
    let key = d.id.to_string();
    if store
        .forge_object(repo, DEPLOYMENT_REJECTION, &key)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let sent = match mode {
        github::Mode::Checks => {
            let body = rejection_check_run_body(state);
            let answer = call(crab, Verb::Post, &format!("{base}/check-runs"), Some(&body)).await?;
            id_of(&answer)?
        }
        github::Mode::Statuses => {
            let mut body = json!({
                "state": "failure",
                "context": check_name(&d.environment),
                "description": description(d, 140),
            });
            if let Some(url) = &state.url {
                body["target_url"] = json!(url);
            }
            let path = format!("{base}/statuses/{}", encode_segment(&d.version));
            call(crab, Verb::Post, &path, Some(&body)).await?;
            "failure".to_string()
        }
    };
    store
        .set_forge_object(repo, DEPLOYMENT_REJECTION, &key, &sent)
        .await?;
    Ok(())
}

/// GitLab's `ref` (a branch or tag name) and `tag` for a deployment: from the ref it was
/// recorded on, else the sha itself (GitLab resolves any commit-ish).
pub(crate) fn gitlab_ref(d: &DeploymentRecord) -> (String, bool) {
    match d.git_ref.as_deref() {
        Some(r) if r.starts_with("refs/tags/") => (r["refs/tags/".len()..].to_string(), true),
        Some(r) if r.starts_with("refs/heads/") => (r["refs/heads/".len()..].to_string(), false),
        _ => (d.version.clone(), false),
    }
}

/// Mirrors a deployment on GitLab through the deployments API
/// (https://docs.gitlab.com/ee/api/deployments.html):
/// - create: `POST /projects/:id/deployments` with `environment`, `sha`, `ref`, `tag`,
///   `status` (https://docs.gitlab.com/ee/api/deployments.html#create-a-deployment);
/// - update: `PUT /projects/:id/deployments/:deployment_id` with `status`
///   (https://docs.gitlab.com/ee/api/deployments.html#update-a-deployment).
///
/// A rejection is a failed commit status, `POST /projects/:id/statuses/:sha`
/// (https://docs.gitlab.com/ee/api/commits.html#set-the-pipeline-status-of-a-commit).
pub(crate) async fn report_gitlab(
    crab: &Octocrab,
    store: &Store,
    repo: &str,
    slug: &str,
    state: &DeploymentState,
) -> Result<(), DeliveryError> {
    let d = &state.deployment;
    let project = gitlab::project_path(slug);
    let key = d.id.to_string();
    if d.status == DeploymentStatus::Rejected {
        if store
            .forge_object(repo, DEPLOYMENT_REJECTION, &key)
            .await?
            .is_none()
        {
            let mut body = json!({
                "state": "failed",
                "name": check_name(&d.environment),
                "description": description(d, 255),
            });
            if let Some(url) = &state.url {
                body["target_url"] = json!(url);
            }
            let path = format!("{project}/statuses/{}", encode_segment(&d.version));
            call(crab, Verb::Post, &path, Some(&body)).await?;
            store
                .set_forge_object(repo, DEPLOYMENT_REJECTION, &key, "failed")
                .await?;
        }
        return Ok(());
    }
    let Some(status) = gitlab_status(d.status) else {
        return Ok(());
    };
    let last = store.forge_object(repo, DEPLOYMENT_STATUS, &key).await?;
    if last.as_deref() == Some(status) {
        return Ok(());
    }
    match store.forge_object(repo, DEPLOYMENT, &key).await? {
        Some(id) => {
            call(
                crab,
                Verb::Put,
                &format!("{project}/deployments/{}", encode_segment(&id)),
                Some(&json!({ "status": status })),
            )
            .await?;
        }
        // Cancelled before GitLab ever saw it: nothing to show there.
        None if status == "canceled" => return Ok(()),
        None => {
            let (git_ref, tag) = gitlab_ref(d);
            let body = json!({
                "environment": d.environment,
                "sha": d.version,
                "ref": git_ref,
                "tag": tag,
                "status": status,
            });
            let answer = call(
                crab,
                Verb::Post,
                &format!("{project}/deployments"),
                Some(&body),
            )
            .await?;
            let id = id_of(&answer)?;
            store.set_forge_object(repo, DEPLOYMENT, &key, &id).await?;
        }
    }
    store
        .set_forge_object(repo, DEPLOYMENT_STATUS, &key, status)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_a_github_state() {
        use DeploymentStatus::*;
        let expected = [
            (Waiting, "queued"),
            (Queued, "queued"),
            (Deploying, "in_progress"),
            (Verifying, "in_progress"),
            (RollingBack, "in_progress"),
            (Succeeded, "success"),
            (Failed, "failure"),
            (RolledBack, "failure"),
            (Rejected, "error"),
            (Superseded, "inactive"),
            (Cancelled, "inactive"),
        ];
        for (status, state) in expected {
            assert_eq!(github_state(status), state, "{status}");
        }
        assert_eq!(gitlab_status(Waiting), None);
        assert_eq!(gitlab_status(Verifying), Some("running"));
        assert_eq!(gitlab_status(RolledBack), Some("failed"));
        assert_eq!(gitlab_status(Superseded), Some("canceled"));
    }

    #[test]
    fn descriptions_are_one_short_line() {
        let long = "x".repeat(500);
        let line = one_line(&format!("a\nb {long}"), 140);
        assert_eq!(line.chars().count(), 140);
        assert!(line.starts_with("a b "));
        assert!(line.ends_with('…'));
        assert_eq!(one_line("short", 140), "short");
    }
}
