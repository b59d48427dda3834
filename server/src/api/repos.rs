//! The watched repositories and their polling health: `GET /api/v1/repos` and `/readyz`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use deploylite_reconciler::watcher::RepoStatus;
use serde::{Deserialize, Serialize};

use super::time;
use crate::AppState;

/// One repository as `GET /api/v1/repos` shows it (times RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoView {
    pub name: String,
    /// Without its credential.
    pub url: String,
    pub last_poll_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub next_poll_at: Option<String>,
    /// Pipelines whose tag triggers the repository's `tags:` keeps from firing.
    #[serde(default)]
    pub tag_warnings: Vec<String>,
    /// Polls ended since the daemon started.
    #[serde(default)]
    pub polls: u64,
}

impl From<RepoStatus> for RepoView {
    fn from(r: RepoStatus) -> RepoView {
        RepoView {
            name: r.name,
            url: r.url,
            last_poll_at: time(r.health.last_poll_at),
            last_success_at: time(r.health.last_success_at),
            last_error: r.health.last_error,
            consecutive_failures: r.health.consecutive_failures,
            next_poll_at: time(r.health.next_poll_at),
            tag_warnings: r.health.tag_warnings,
            polls: r.health.polls,
        }
    }
}

fn statuses(state: &AppState) -> Vec<RepoStatus> {
    state
        .watcher
        .as_ref()
        .map(|w| w.repos().statuses())
        .unwrap_or_default()
}

pub(crate) async fn list_repos(State(state): State<AppState>) -> Json<Vec<RepoView>> {
    Json(statuses(&state).into_iter().map(RepoView::from).collect())
}

/// Ready: the store answers and every repository polls. 503 only when the store does not
/// answer; a failing repository makes the daemon "degraded" (it still serves the others).
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if let Err(unavailable) = super::store_answers(&state).await {
        return unavailable;
    }
    let failing: Vec<serde_json::Value> = statuses(&state)
        .into_iter()
        .filter(|r| r.health.is_failing())
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "error": r.health.last_error,
                "consecutive_failures": r.health.consecutive_failures,
            })
        })
        .collect();
    let body = if failing.is_empty() {
        serde_json::json!({ "status": "ready" })
    } else {
        serde_json::json!({ "status": "degraded", "repos": failing })
    };
    (StatusCode::OK, Json(body)).into_response()
}
