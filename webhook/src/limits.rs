//! At most N webhook requests at once. A request over the cap waits for a slot, before its
//! body is read (so waiting costs a connection, never a buffer), for at most `queue_wait`; then
//! it is answered 503 with `Retry-After`. Waiting absorbs bursts: GitHub does not redeliver a
//! failed delivery by itself, so refusing at once would drop events a short burst produced.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::Semaphore;

/// Seconds a refused sender is asked to wait before it redelivers.
const RETRY_AFTER_SECS: &str = "5";

/// The slots for `max_in_flight` requests at once (at least one), and how long a request
/// waits for one.
#[derive(Clone)]
pub(super) struct Slots {
    slots: Arc<Semaphore>,
    queue_wait: std::time::Duration,
}

pub(super) fn slots(limits: &deploylite_forge::forges::WebhookLimits) -> Slots {
    Slots {
        slots: Arc::new(Semaphore::new(
            limits.max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
        )),
        queue_wait: limits.queue_wait,
    }
}

/// Middleware (`from_fn_with_state` with [`slots`]) for the webhook routes.
pub(super) async fn in_flight(
    State(slots): State<Slots>,
    request: Request,
    next: Next,
) -> Response {
    let slot = tokio::time::timeout(slots.queue_wait, slots.slots.clone().acquire_owned()).await;
    match slot {
        // Held until the handler has answered: the body is read inside it.
        Ok(Ok(_slot)) => next.run(request).await,
        Ok(Err(_)) | Err(_) => {
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
