//! DeployLite's HTTP front door (axum): health, the read API and cancellation. Forge webhooks
//! join here next. Handlers only read the store or record intents in it; the scheduler acts.

mod api;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::store::Store;
use tokio::sync::Notify;

pub use api::{RunView, StageView};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub data: DataDir,
    /// Wakes the scheduler after a cancellation is recorded.
    pub scheduler: Arc<Notify>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/api/v1/runs", get(api::list_runs))
        .route("/api/v1/runs/{id}", get(api::get_run))
        .route("/api/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/api/v1/runs/{id}/stages/{stage}/log", get(api::stage_log))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
