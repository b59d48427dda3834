//! DeployLite's HTTP front door (axum) and its forge integration: health and the read API,
//! cancellation, GitHub/GitLab webhooks in (`inbound`), checks, statuses and PR/MR comments out
//! (`report`). Only this crate knows forge JSON. Handlers record intents in the store or hand
//! events to the reconciler; they never run anything themselves.

mod api;
pub mod forges;
mod inbound;
pub mod report;
pub mod runners;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::store::Store;
use deploylite_reconciler::watcher::Watcher;
use tokio::sync::Notify;

pub use api::{RunView, StageView};
pub use forges::Forges;
pub use report::{Reporter, ReporterConfig};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub data: DataDir,
    /// Wakes the scheduler after a cancellation is recorded.
    pub scheduler: Arc<Notify>,
    /// Acts on forge events; None where no repositories are watched (tests of the read API).
    pub watcher: Option<Arc<Watcher>>,
    pub forges: Arc<Forges>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/api/v1/runs", get(api::list_runs))
        .route("/api/v1/runs/{id}", get(api::get_run))
        .route("/api/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/api/v1/runs/{id}/stages/{stage}/log", get(api::stage_log))
        .merge(inbound::routes(&state))
        .with_state(state)
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
