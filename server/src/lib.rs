//! DeployLite's HTTP server (axum): one router for health and the read API, cancellation and
//! approval, tokens and the audit log (`admin`), the runner protocol (`runners`) and the forge
//! webhooks (`deploylite-webhook`), all behind one authorization middleware (`auth`). Handlers
//! record intents in the store or hand events to the reconciler; they never run anything
//! themselves.

mod admin;
mod api;
pub mod auth;
pub mod environments;
pub mod metrics;
pub mod page;
pub mod runners;

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use deploylite_forge::Forges;
use deploylite_reconciler::environments::Environments;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::store::Store;
use deploylite_reconciler::watcher::Watcher;
use deploylite_webhook::WebhookState;
use tokio::sync::Notify;

pub use admin::{valid_token_name, CreatedToken, InvalidTokenName};
pub use api::{RepoView, RunView, StageView};
pub use auth::{AuthConfig, Caller};
pub use environments::{ActionView, DeploymentView, EnvironmentView};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub data: DataDir,
    /// Wakes the scheduler after a cancellation is recorded.
    pub scheduler: Arc<Notify>,
    /// Acts on forge events; None where no repositories are watched (tests of the read API).
    pub watcher: Option<Arc<Watcher>>,
    pub forges: Arc<Forges>,
    /// Who may call what (`auth::access`), checked by one middleware over every route.
    pub auth: Arc<AuthConfig>,
    /// The environment controller that deploy, rollback, hold, release and approve act
    /// through; None where the daemon runs none (tests of the read API): those answer 503.
    pub environments: Option<Arc<Environments>>,
}

/// The API and the webhooks; see [`app`] to serve more routes under the same checks.
pub fn router(state: AppState) -> Router {
    app(state, Router::new())
}

/// The API, the webhooks and `extra` (the runner protocol), all behind the one authorization
/// middleware: every route, whoever defines it, gets its role from `auth::access`.
pub fn app(state: AppState, extra: Router) -> Router {
    let authorizer = auth::Authorizer {
        store: state.store.clone(),
        config: state.auth.clone(),
    };
    let webhooks = deploylite_webhook::routes(WebhookState {
        store: state.store.clone(),
        watcher: state.watcher.clone(),
        forges: state.forges.clone(),
    });
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/api/v1/repos", get(api::list_repos))
        .route("/api/v1/runs", get(api::list_runs))
        .route("/api/v1/runs/{id}", get(api::get_run))
        .route("/api/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/api/v1/runs/{id}/approve", post(api::approve_run))
        .route("/api/v1/runs/{id}/rerun", post(api::rerun_run))
        .route("/api/v1/runs/{id}/stages/{stage}/log", get(api::stage_log))
        .route("/api/v1/environments", get(environments::list))
        .route(
            "/api/v1/environments/{*path}",
            get(environments::get).post(environments::act),
        )
        .route("/api/v1/deployments/{id}", get(environments::deployment))
        .route(
            "/api/v1/deployments/{id}/approve",
            post(environments::approve),
        )
        .route(
            "/api/v1/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/api/v1/tokens/{name}/revoke", post(admin::revoke_token))
        .route("/api/v1/audit", get(admin::audit))
        .with_state(state)
        .merge(webhooks)
        .merge(extra)
        .layer(from_fn_with_state(authorizer, auth::authorize))
}

/// Serves the API on `listener` until `shutdown` completes; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), shutdown).await
}

/// Serves any router made of this crate's parts (e.g. the API merged with the runner protocol).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Without TCP_NODELAY a response written in two segments (headers, then a streamed body
    // such as a runner's source tarball) waits for the client's delayed ACK: 40 ms here.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
