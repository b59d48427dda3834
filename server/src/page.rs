//! The status page: server-rendered HTML (maud, checked at compile time), working without
//! JavaScript; one small script (`assets.rs`) adds live updates from `GET /api/v1/events` and
//! the log's live tail. Reads follow the API's auth settings (anonymous read, or a token given
//! once to the login form and kept in an HttpOnly cookie); operators get cancel, approve and
//! re-run forms, each carrying a CSRF token tied to the session cookie.
//!
//! Pages: `/` (latest run of each pipeline and branch), `/repos/{repo}` (runs, filtered, with
//! a cursor), `/runs/{id}` (the DAG as SVG and the stages), `/runs/{id}/stages/{stage}` (a
//! log's tail), `/runners`, `/environments` and `/environments/{repo}/{env}` (an
//! environment's deployment history), badges at `/badges/{repo}/{pipeline}.svg`.

mod actions;
mod ansi;
mod assets;
mod badge;
mod dag;
mod environments;
mod events;
mod forge_links;
mod home;
mod layout;
mod log;
mod log_window;
mod repo;
mod run;
pub mod runners;
pub mod session;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use deploylite_reconciler::changes::ChangeFeed;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::store::{Store, StoreError};
use deploylite_reconciler::watcher::Watcher;
use tokio::sync::Notify;

use crate::auth::AuthConfig;

/// What the pages read and act on.
#[derive(Clone)]
pub struct PageState {
    pub store: Store,
    pub data: DataDir,
    /// Wakes the scheduler after a cancel, approve or re-run.
    pub scheduler: Arc<Notify>,
    /// Repository names, URLs and polling health; None where nothing is watched (tests).
    pub watcher: Option<Arc<Watcher>>,
    pub changes: Arc<ChangeFeed>,
    pub auth: Arc<AuthConfig>,
    pub sessions: Arc<session::SessionKeys>,
    /// Runners not heard from for this long show as offline.
    pub runner_offline_after: std::time::Duration,
    /// The daemon's own runner, when it runs stages itself.
    pub local_runner: Option<runners::LocalRunner>,
}

/// The page routes and `GET /api/v1/events`. Merge them into the router given to
/// [`crate::app`], so the one authorization middleware covers them.
pub fn routes(state: PageState) -> Router {
    Router::new()
        .route("/", get(home::page))
        .route("/repos/{repo}", get(repo::page))
        .route("/runs/{id}", get(run::page))
        .route("/runs/{id}/cancel", post(actions::cancel))
        .route("/runs/{id}/approve", post(actions::approve))
        .route("/runs/{id}/rerun", post(actions::rerun))
        .route("/runs/{id}/stages/{stage}", get(log::page))
        .route("/runs/{id}/stages/{stage}/live", get(log::live))
        .route("/runners", get(runners::page))
        .route("/environments", get(environments::list))
        .route("/environments/{*path}", get(environments::page))
        .route("/badges/{repo}/{file}", get(badge::badge))
        .route("/login", get(session::form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/static/page.css", get(assets::stylesheet))
        .route("/static/page.js", get(assets::script))
        .route("/api/v1/events", get(events::stream))
        .with_state(state)
}

/// Whether a route is one of the page's HTML routes: a refused read there is sent to the
/// login form rather than answered with JSON.
pub fn is_page_route(route: &str) -> bool {
    !route.starts_with("/api/")
        && !route.starts_with("/webhooks/")
        && !route.starts_with("/badges/")
        && route != "/healthz"
        && route != "/readyz"
}

/// The page's own POST routes: the only state changes a session cookie may authenticate,
/// because their handlers check the CSRF token.
pub fn accepts_session_for_changes(route: &str) -> bool {
    matches!(
        route,
        "/runs/{id}/cancel" | "/runs/{id}/approve" | "/runs/{id}/rerun"
    )
}

/// A page that cannot be shown: a status and a sentence, rendered in the layout.
pub(crate) enum PageError {
    NotFound(String),
    BadRequest(String),
    Internal(StoreError),
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        PageError::Internal(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            PageError::Internal(error) => {
                tracing::error!(%error, "status page request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the daemon's log".to_string(),
                )
            }
        };
        (status, layout::error_page(status, &message)).into_response()
    }
}

/// A query string value, percent-encoded.
pub fn encode_query(value: &str) -> String {
    layout::segment(value)
}
