//! At most N webhook requests at once. A request over the cap is answered 503 with
//! `Retry-After` at once, before its body is read: queueing it would let a flood of slow
//! senders pile up connections and buffers behind the ones being served.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::Semaphore;

/// Seconds a refused sender is asked to wait: GitHub and GitLab retry failed deliveries anyway.
const RETRY_AFTER_SECS: &str = "5";

/// The slots for `max_in_flight` requests at once (at least one).
pub(super) fn slots(max_in_flight: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
    ))
}

/// Middleware (`from_fn_with_state` with [`slots`]) for the webhook routes.
pub(super) async fn in_flight(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match slots.try_acquire_owned() {
        // Held until the handler has answered: the body is read inside it.
        Ok(_slot) => next.run(request).await,
        Err(_) => {
            tracing::warn!(
                path = %request.uri().path(),
                "webhook refused: too many webhook requests in flight"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, RETRY_AFTER_SECS)],
                Json(serde_json::json!({
                    "error": "too many webhook requests at once; retry later"
                })),
            )
                .into_response()
        }
    }
}
