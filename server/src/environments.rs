//! Environments and deployments over HTTP (docs/environments.md, "Interface"): reads straight
//! from the store, actions through the environment controller (`deploylite_reconciler::
//! environments::Environments`), which records the intent and wakes its next pass. Nothing here
//! deploys anything.
//!
//! Repository names may hold `/` (`org/app`). The routes take the rest of the path
//! (`{*path}`) and split it from the end, so both `/api/v1/environments/org%2Fapp/production`
//! (how the status page and the CLI encode a name) and `/api/v1/environments/org/app/production`
//! work: an environment's name never holds `/`, and neither does an action.
//!
//! Times are Unix epoch milliseconds, as the store keeps them (the controller's tests compare
//! them), not the RFC 3339 text of the runs API.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use deploylite_model::RunId;
use deploylite_reconciler::environments::{EnvironmentError, Environments};
use deploylite_reconciler::status::{DeploymentAction, DeploymentStatus, Health, RunStatus, Sync};
use deploylite_reconciler::store::{DeploymentRecord, EnvironmentRecord};
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::auth::Caller;
use crate::AppState;

/// Deployments `GET /api/v1/environments/{repo}/{env}` shows unless `?limit=` says otherwise.
pub const DEFAULT_HISTORY: i64 = 50;
/// Most deployments one request returns.
const MAX_HISTORY: i64 = 1000;
/// The largest action body taken (`{"version": "..."}` is a few dozen bytes).
const MAX_BODY: usize = 16 * 1024;
/// The longest version (commit id, branch or tag) an action takes.
const MAX_VERSION: usize = 256;
/// The longest repository or environment name a route takes.
const MAX_NAME: usize = 512;

/// An environment's pin: automation records desired versions but does not deploy them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub version: String,
    pub by: String,
    /// Epoch ms.
    pub at: i64,
}

/// An environment as the API shows it (times in epoch ms). `deployments` only on
/// `GET /api/v1/environments/{repo}/{env}`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentView {
    pub repo: String,
    pub name: String,
    pub current_version: Option<String>,
    pub desired_version: Option<String>,
    pub sync: Sync,
    pub health: Health,
    pub hold: Option<HoldView>,
    /// `branch main` or `tag v*`.
    #[serde(default)]
    pub follows: String,
    /// The last drift check, epoch ms.
    #[serde(default)]
    pub last_check_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<Vec<DeploymentView>>,
}

impl EnvironmentView {
    pub fn new(env: &EnvironmentRecord, deployments: Option<Vec<DeploymentRecord>>) -> Self {
        let s = env.summary();
        EnvironmentView {
            repo: s.repo,
            name: s.name,
            current_version: s.current_version,
            desired_version: s.desired_version,
            sync: s.sync,
            health: s.health,
            hold: s.hold.map(|h| HoldView {
                version: h.version,
                by: h.by,
                at: h.at,
            }),
            follows: s.follows,
            last_check_at: s.last_check_at,
            deployments: deployments
                .map(|list| list.into_iter().map(DeploymentView::from).collect()),
        }
    }
}

/// A run that carried out (part of) a deployment: `deploy`, `verify`, `rollback` or `check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRunView {
    pub id: RunId,
    pub pipeline: String,
    pub action: String,
    pub status: RunStatus,
}

/// One deployment as the API shows it (times in epoch ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: i64,
    pub repo: String,
    pub environment: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub action: DeploymentAction,
    pub status: DeploymentStatus,
    /// Set while `waiting`: what it waits for (`approval: 0 of 1`, `hold: pinned to ...`).
    pub pending_reason: Option<String>,
    pub attempt: i64,
    pub runs: Vec<DeploymentRunView>,
    /// The `deploylite.deploy` gate's decision; null when no policy applied (yet).
    pub policy: Option<deploylite_policy::Decision>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Who approved it so far (`token:<name>`, or a forge user by comment).
    #[serde(default)]
    pub approvals: Vec<String>,
    /// `token:<name>` for a person's action, else what automation saw (`follows main`, ...).
    #[serde(default)]
    pub triggered_by: String,
    /// Asked for by a person (deploy, rollback), not by automation.
    #[serde(default)]
    pub manual: bool,
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    #[serde(default)]
    pub rollback_of: Option<i64>,
    #[serde(default)]
    pub errors: Vec<String>,
}

impl From<DeploymentRecord> for DeploymentView {
    fn from(d: DeploymentRecord) -> Self {
        DeploymentView {
            id: d.id,
            repo: d.repo,
            environment: d.environment,
            version: d.version,
            previous_version: d.previous_version,
            action: d.action,
            status: d.status,
            pending_reason: d.pending_reason,
            attempt: d.attempt,
            runs: d
                .runs
                .into_iter()
                .map(|r| DeploymentRunView {
                    id: r.id,
                    pipeline: r.pipeline,
                    action: r.action,
                    status: r.status,
                })
                .collect(),
            policy: d.policy,
            created_at: d.created_at,
            started_at: d.started_at,
            finished_at: d.finished_at,
            approvals: d.approvals,
            triggered_by: d.triggered_by,
            manual: d.manual,
            git_ref: d.git_ref,
            rollback_of: d.rollback_of,
            errors: d.errors,
        }
    }
}

/// What an action answers: the deployment it recorded (deploy, rollback, approve), and the
/// environment as it stands after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionView {
    pub message: String,
    #[serde(default)]
    pub deployment: Option<i64>,
    #[serde(default)]
    pub environment: Option<EnvironmentView>,
}

impl From<EnvironmentError> for ApiError {
    fn from(e: EnvironmentError) -> Self {
        match e {
            EnvironmentError::UnknownRepo(_)
            | EnvironmentError::UnknownEnvironment { .. }
            | EnvironmentError::UnknownDeployment(_) => ApiError::NotFound(e.to_string()),
            EnvironmentError::Refused(m) => ApiError::Conflict(m),
            EnvironmentError::Store(e) => ApiError::Internal(e),
            EnvironmentError::Git(e) => ApiError::Failed(e.to_string()),
        }
    }
}

fn controller(state: &AppState) -> Result<&Environments, ApiError> {
    state.environments.as_deref().ok_or_else(|| {
        ApiError::Unavailable("this server runs no environment controller".to_string())
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    repo: Option<String>,
}

/// `GET /api/v1/environments?repo=`: every environment (of one repository), by repository
/// then name.
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<EnvironmentView>>, ApiError> {
    let repo = q.repo.as_deref().filter(|r| !r.is_empty());
    if repo.is_some_and(|r| r.len() > MAX_NAME) {
        return Err(ApiError::BadRequest(format!(
            "repo is longer than {MAX_NAME} bytes"
        )));
    }
    let envs = state.store.environments(repo, false).await?;
    Ok(Json(
        envs.iter().map(|e| EnvironmentView::new(e, None)).collect(),
    ))
}

/// `{repo}/{env}` (and `{repo}/{env}/{action}`), the repository's name possibly holding `/`.
fn split_path(path: &str, with_action: bool) -> Option<(String, String, Option<String>)> {
    let path = path.trim_matches('/');
    if path.len() > 2 * MAX_NAME {
        return None;
    }
    let (rest, action) = if with_action {
        let (rest, action) = path.rsplit_once('/')?;
        (rest, Some(action.to_string()))
    } else {
        (path, None)
    };
    let (repo, env) = rest.rsplit_once('/')?;
    if repo.is_empty() || env.is_empty() {
        return None;
    }
    Some((repo.to_string(), env.to_string(), action))
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::NotFound(format!(
        "expected /api/v1/environments/REPO/ENV, got /api/v1/environments/{path}"
    ))
}

/// 404 for an environment that is not (or no longer) recorded, naming what is unknown.
async fn environment(
    state: &AppState,
    repo: &str,
    name: &str,
) -> Result<EnvironmentRecord, ApiError> {
    match state.store.environment(repo, name).await? {
        Some(env) if !env.removed => Ok(env),
        _ => {
            let watched = state
                .watcher
                .as_ref()
                .is_none_or(|w| w.repos().get(repo).is_some());
            Err(ApiError::NotFound(if watched {
                format!("no environment `{name}` in repository `{repo}`")
            } else {
                format!("no repository `{repo}` is watched")
            }))
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    limit: Option<i64>,
    /// Deployments older than this id (the cursor of the next page).
    before: Option<i64>,
}

/// `GET /api/v1/environments/{repo}/{env}`: the summary and its deployments, newest first.
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(path): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<EnvironmentView>, ApiError> {
    let (repo, name, _) = split_path(&path, false).ok_or_else(|| not_found_path(&path))?;
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_HISTORY}"
        )));
    }
    let env = environment(&state, &repo, &name).await?;
    let history = state
        .store
        .deployment_history(&repo, &name, limit, q.before)
        .await?;
    Ok(Json(EnvironmentView::new(&env, Some(history))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

/// An optional JSON body: none (or blank) is the default.
fn body<T: Default + serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.len() > MAX_BODY {
        return Err(ApiError::BadRequest(format!(
            "the body is larger than {MAX_BODY} bytes"
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not the JSON expected: {e}")))
}

/// A version as given: a commit id, branch or tag, of sane length.
fn version(v: Option<String>, field: &str) -> Result<Option<String>, ApiError> {
    match v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
        Some(v) if v.len() > MAX_VERSION => Err(ApiError::BadRequest(format!(
            "`{field}` is longer than {MAX_VERSION} bytes"
        ))),
        Some(v) if v.starts_with('-') || v.chars().any(char::is_control) => Err(
            ApiError::BadRequest(format!("`{field}` is not a commit id, branch or tag")),
        ),
        other => Ok(other),
    }
}

/// `POST /api/v1/environments/{repo}/{env}/{deploy|rollback|hold|release}` (operator).
pub(crate) async fn act(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (repo, name, action) = split_path(&path, true).ok_or_else(|| not_found_path(&path))?;
    let action = action.unwrap_or_default();
    if !matches!(action.as_str(), "deploy" | "rollback" | "hold" | "release") {
        return Err(ApiError::NotFound(format!(
            "no action `{action}`: expected deploy, rollback, hold or release"
        )));
    }
    let controller = controller(&state)?;
    let by = caller.label();
    let (status, message, deployment) = match action.as_str() {
        "deploy" => {
            let b: DeployBody = body(&bytes)?;
            let v = version(b.version, "version")?;
            let id = controller.deploy(&repo, &name, v.as_deref(), &by).await?;
            tracing::info!(repo, environment = name, deployment = id, by, version = ?v, "deployment requested");
            (
                StatusCode::OK,
                format!("deployment {id} to {repo}/{name} recorded"),
                Some(id),
            )
        }
        "rollback" => {
            let b: RollbackBody = body(&bytes)?;
            let to = version(b.to, "to")?;
            let id = controller
                .rollback(&repo, &name, to.as_deref(), &by)
                .await?;
            tracing::info!(repo, environment = name, deployment = id, by, to = ?to, "rollback requested");
            (
                StatusCode::OK,
                format!(
                    "rollback {id} of {repo}/{name} recorded; the environment is held until `deploylite release {repo}/{name}`"
                ),
                Some(id),
            )
        }
        "hold" => {
            let _: EmptyBody = body(&bytes)?;
            controller.hold(&repo, &name, &by).await?;
            tracing::info!(repo, environment = name, by, "environment held");
            (
                StatusCode::OK,
                format!("{repo}/{name} is held: automation records desired versions but does not deploy them"),
                None,
            )
        }
        _ => {
            let _: EmptyBody = body(&bytes)?;
            let released = controller.release(&repo, &name).await?;
            tracing::info!(
                repo,
                environment = name,
                by,
                released,
                "environment released"
            );
            let message = if released {
                format!("{repo}/{name} is released: automation deploys again")
            } else {
                format!("{repo}/{name} was not held")
            };
            (StatusCode::OK, message, None)
        }
    };
    let environment = state
        .store
        .environment(&repo, &name)
        .await?
        .map(|e| EnvironmentView::new(&e, None));
    Ok((
        status,
        Json(ActionView {
            message,
            deployment,
            environment,
        }),
    )
        .into_response())
}

/// `GET /api/v1/deployments/{id}`.
pub(crate) async fn deployment(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<DeploymentView>, ApiError> {
    let d = state
        .store
        .deployment(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))?;
    Ok(Json(d.into()))
}

/// `POST /api/v1/deployments/{id}/approve` (operator): one approval of a waiting deployment.
pub(crate) async fn approve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let controller = controller(&state)?;
    let by = caller.label();
    controller.approve(id, &by).await?;
    tracing::info!(deployment = id, by, "deployment approved");
    let view = state.store.deployment(id).await?.map(DeploymentView::from);
    let count = view.as_ref().map_or(0, |d| d.approvals.len());
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({
            "id": id,
            "approved": true,
            "message": format!("deployment {id} approved by {by} ({count} approval{} so far)", if count == 1 { "" } else { "s" }),
            "deployment": view,
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn repository_names_may_hold_slashes() {
        assert_eq!(
            split_path("app/production", false),
            Some(("app".into(), "production".into(), None))
        );
        assert_eq!(
            split_path("org/app/production", false),
            Some(("org/app".into(), "production".into(), None))
        );
        assert_eq!(
            split_path("org/app/production/deploy", true),
            Some(("org/app".into(), "production".into(), Some("deploy".into())))
        );
        assert_eq!(split_path("production", false), None);
        assert_eq!(split_path("app/production", true), None);
        assert_eq!(split_path("/production/", false), None);
    }
}
