//! The intake every forge's deliveries go through, in this order:
//!
//! 1. limit: the body is read with a streaming cap (`forges.max_body_bytes`) → 413, within
//!    `forges.webhook_limits.body_timeout` → 408 (and at most `max_in_flight` requests are
//!    here at once: see `limits`);
//! 2. authenticate (signature or token) → 401;
//! 3. headers (event, delivery id) → 400;
//! 4. parse the JSON → 400;
//! 5. map it to a [`ForgeEvent`] → 400 naming a missing field, 202 `ignored`, 200 for a ping;
//! 6. look the repository up → 404;
//! 7. de-duplicate by delivery id (this records the delivery), and a re-run by its request's
//!    identity → 200 `duplicate`;
//! 8. queue the event behind the repository's earlier deliveries (503 when its queue is full),
//!    answer 202, and apply it afterwards, in arrival order (`deploylite_reconciler::inbox`).
//!
//! Nothing is recorded or enqueued before every check that can answer 4xx has passed, and no
//! input can take the server down: every failure is an answer.

use std::pin::Pin;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deploylite_reconciler::events::ForgeEvent;
use deploylite_reconciler::inbox::Delivery;
use deploylite_reconciler::store::StoreError;
use serde_json::{json, Value};

use deploylite_forge::forges::{ForgeKind, Forges};
use deploylite_forge::members;
use deploylite_forge::payload::MapError;

use crate::payload::{for_repo, Mapped};
use crate::verify::AuthError;
use crate::WebhookState;

/// What one forge contributes to the intake.
pub(crate) trait Receiver: 'static {
    const FORGE: ForgeKind;
    /// The header naming the event (`X-GitHub-Event`, `X-Gitlab-Event`).
    const EVENT_HEADER: &'static str;
    fn authenticate(forges: &Forges, headers: &HeaderMap, body: &[u8]) -> Result<(), AuthError>;
    /// The id to de-duplicate by; `Ok(None)` skips de-duplication.
    fn delivery_id(headers: &HeaderMap) -> Result<Option<String>, Reject>;
    fn map(event: &str, payload: &Value) -> Result<Mapped, MapError>;
}

/// A delivery refused, as the forge will see it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub(crate) enum Reject {
    TooLarge(usize),
    /// The body did not arrive within this time.
    TooSlow(std::time::Duration),
    Unauthorized(AuthError),
    BadRequest(String),
    NotFound(String),
    /// The daemon watches no repositories (an API-only server).
    Unavailable(String),
    /// The repository's delivery queue is full: the forge retries later.
    Busy(String),
    Internal(StoreError),
}

/// A delivery taken.
#[derive(Debug)]
pub(crate) enum Ack {
    Pong,
    Ignored(String),
    Duplicate,
    Accepted { repo: String },
}

impl IntoResponse for Ack {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Ack::Pong => (StatusCode::OK, json!({ "status": "pong" })),
            Ack::Ignored(reason) => (
                StatusCode::ACCEPTED,
                json!({ "status": "ignored", "reason": reason }),
            ),
            Ack::Duplicate => (StatusCode::OK, json!({ "status": "duplicate" })),
            Ack::Accepted { repo } => (
                StatusCode::ACCEPTED,
                json!({ "status": "accepted", "repo": repo }),
            ),
        };
        (status, Json(body)).into_response()
    }
}

impl Reject {
    fn into_response_for(self, forge: ForgeKind) -> Response {
        let forge = forge.as_str();
        let (status, message) = match self {
            Reject::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than the limit of {limit} bytes"),
            ),
            Reject::TooSlow(limit) => {
                tracing::warn!(forge, "webhook refused: the body was sent too slowly");
                // Close the connection: the rest of the body is not worth reading.
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    [(header::CONNECTION, "close")],
                    Json(json!({ "error": format!(
                        "the body did not arrive within {} s", limit.as_secs_f64()
                    ) })),
                )
                    .into_response();
            }
            Reject::Unauthorized(e) => {
                tracing::warn!(forge, reason = %e.message(), "webhook refused: not authenticated");
                (StatusCode::UNAUTHORIZED, e.message())
            }
            Reject::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Reject::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Reject::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            Reject::Busy(m) => {
                tracing::warn!(forge, reason = %m, "webhook refused: the repository's queue is full");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "10")],
                    Json(json!({ "error": m })),
                )
                    .into_response();
            }
            Reject::Internal(error) => {
                tracing::error!(forge, %error, "webhook failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the daemon's log".to_string(),
                )
            }
        };
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::INTERNAL_SERVER_ERROR {
            tracing::debug!(forge, status = status.as_u16(), %message, "webhook refused");
        }
        (status, Json(json!({ "error": message }))).into_response()
    }
}

impl From<StoreError> for Reject {
    fn from(e: StoreError) -> Self {
        Reject::Internal(e)
    }
}

/// The axum handler for one forge's endpoint.
pub(crate) async fn handle<R: Receiver>(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match process::<R>(&state, &headers, body).await {
        Ok(ack) => ack.into_response(),
        Err(reject) => reject.into_response_for(R::FORGE),
    }
}

async fn process<R: Receiver>(
    state: &WebhookState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Ack, Reject> {
    let body_timeout = state.forges.webhook_limits.body_timeout;
    let body = tokio::time::timeout(
        body_timeout,
        read_limited(body, headers, state.forges.max_body_bytes),
    )
    .await
    .map_err(|_| Reject::TooSlow(body_timeout))??;
    R::authenticate(&state.forges, headers, &body).map_err(Reject::Unauthorized)?;
    let event = header_str(headers, R::EVENT_HEADER)?
        .ok_or_else(|| Reject::BadRequest(format!("missing `{}` header", R::EVENT_HEADER)))?;
    let delivery = R::delivery_id(headers)?;
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| Reject::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let (slug, forge_event, member_check) =
        match R::map(event, &payload).map_err(|e| Reject::BadRequest(e.0))? {
            Mapped::Ping => return Ok(Ack::Pong),
            Mapped::Ignored(reason) => return Ok(Ack::Ignored(reason)),
            Mapped::Event { slug, event } => (slug, event, None),
            Mapped::IfMember {
                slug,
                event,
                project_id,
                user_id,
            } => (slug, event, Some((project_id, user_id))),
        };
    let repo = state.forges.repo(R::FORGE, &slug).ok_or_else(|| {
        Reject::NotFound(format!("repository `{slug}` is not watched by this daemon"))
    })?;
    let watcher = state
        .watcher
        .clone()
        .ok_or_else(|| Reject::Unavailable("this daemon watches no repositories".into()))?;
    if watcher.repos().get(&repo.name).is_none() {
        return Err(Reject::NotFound(format!(
            "repository `{}` is not watched by this daemon",
            repo.name
        )));
    }
    if let Some(id) = &delivery {
        if !state
            .store
            .record_delivery(R::FORGE.as_str(), id, event)
            .await?
        {
            tracing::debug!(forge = R::FORGE.as_str(), delivery = %id, "replayed webhook delivery ignored");
            return Ok(Ack::Duplicate);
        }
    }
    // A re-run already carried out (the same request under a new delivery id) is answered as
    // a duplicate here; the store's re-run records the request atomically either way.
    if let ForgeEvent::Rerun {
        request: Some(key), ..
    } = &forge_event
    {
        if state.store.rerun_requested(key).await? {
            tracing::warn!(forge = R::FORGE.as_str(), request = %key, "replayed re-run request ignored");
            return Ok(Ack::Duplicate);
        }
    }
    let forge_event = for_repo(forge_event, &repo.name);
    if let Some((project_id, user_id)) = member_check {
        // Asked before answering, so that the forge's delivery log says why nothing happened.
        match members::gitlab_developer(&state.forges, project_id, user_id).await {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Ack::Ignored(format!(
                    "user {user_id} has less than Developer access to project {project_id}: \
                     only members may approve"
                )))
            }
            Err(why) => {
                tracing::warn!(project_id, user_id, %why, "cannot check a commenter's membership");
                return Ok(Ack::Ignored(format!(
                    "cannot check the commenter's membership: {why}"
                )));
            }
        }
    }
    let forge = R::FORGE.as_str();
    let queued = watcher.enqueue(Delivery {
        event: forge_event,
        forge,
        id: delivery.clone(),
    });
    if let Err(error) = queued {
        // Not applied: the forge's retry of this delivery must not be taken for a replay.
        if let Some(id) = &delivery {
            state.store.forget_delivery(forge, id).await?;
        }
        return Err(Reject::Busy(error.to_string()));
    }
    Ok(Ack::Accepted {
        repo: repo.name.clone(),
    })
}

/// A header as text; `Ok(None)` when absent or blank, 400 when not visible ASCII.
pub(crate) fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, Reject> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) if s.trim().is_empty() => Ok(None),
            Ok(s) => Ok(Some(s.trim())),
            Err(_) => Err(Reject::BadRequest(format!(
                "`{name}` header is not readable text"
            ))),
        },
    }
}

/// A delivery id: bounded, so that a client cannot store arbitrary amounts through it.
pub(crate) fn delivery_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, Reject> {
    match header_str(headers, name)? {
        Some(id) if id.len() > 200 => Err(Reject::BadRequest(format!(
            "`{name}` header is longer than 200 characters"
        ))),
        other => Ok(other.map(str::to_string)),
    }
}

/// Reads the body, refusing it as soon as it exceeds `limit`: a declared `Content-Length` over
/// the limit is refused before reading anything, and a chunked body is counted as it streams.
/// At most `limit` bytes are ever buffered.
async fn read_limited(mut body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Reject> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Reject::TooLarge(limit));
    }
    let capacity = declared
        .map_or(0, |len| len as usize)
        .min(limit)
        .min(1 << 20);
    let mut buf = Vec::with_capacity(capacity);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| Reject::BadRequest(format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(Reject::TooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn bodies_are_capped_while_streaming() {
        let limit = 16;
        let ok = read_limited(Body::from("0123456789abcdef"), &HeaderMap::new(), limit)
            .await
            .unwrap();
        assert_eq!(ok.len(), 16);
        let over = read_limited(Body::from("0123456789abcdefX"), &HeaderMap::new(), limit).await;
        assert!(matches!(over, Err(Reject::TooLarge(16))));
        // A declared length over the limit is refused without reading.
        let declared = read_limited(
            Body::from("x"),
            &headers(&[("content-length", "17")]),
            limit,
        )
        .await;
        assert!(matches!(declared, Err(Reject::TooLarge(16))));
        // Chunked bodies (no Content-Length) are covered by tests/inbound.rs over a socket.
    }

    #[test]
    fn headers_are_text_and_ids_bounded() {
        assert_eq!(
            header_str(&headers(&[("x-a", " push ")]), "x-a").unwrap(),
            Some("push")
        );
        assert_eq!(header_str(&HeaderMap::new(), "x-a").unwrap(), None);
        assert_eq!(header_str(&headers(&[("x-a", "")]), "x-a").unwrap(), None);
        let long = "a".repeat(201);
        assert!(delivery_header(&headers(&[("x-id", &long)]), "x-id").is_err());
        assert_eq!(
            delivery_header(&headers(&[("x-id", "abc")]), "x-id")
                .unwrap()
                .as_deref(),
            Some("abc")
        );
    }
}
