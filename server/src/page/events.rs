//! `GET /api/v1/events`: the change feed as Server-Sent Events. Each run or stage transition
//! is one event (`event: run` or `event: stage`, JSON data, `id` from the feed). A client that
//! reconnects with `Last-Event-ID` (browsers do it on their own) gets what it missed from the
//! feed's ring; an id the ring no longer covers gets one `reset` event (reload everything),
//! then the live changes.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deploylite_model::RunId;
use deploylite_reconciler::changes::{Change, Resume, Subject};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::PageState;

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    /// For clients that cannot set `Last-Event-ID` on the first request.
    last_event_id: Option<String>,
}

/// The longest id taken (`<epoch ms>-<sequence>`).
const MAX_ID: usize = 64;

pub(crate) async fn stream(
    State(state): State<PageState>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.last_event_id)
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID);
    let (first, backlog, live) = match state.changes.resume(last.as_deref()) {
        Resume::From(missed, live) => (None, missed, live),
        Resume::Reset(live) => (Some(reset()), Vec::new(), live),
    };
    Sse::new(events(state.changes.clone(), first, backlog.into(), live))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn reset() -> Event {
    Event::default().event("reset").data("{}")
}

fn event(change: &Change) -> Event {
    if change.status == "reset" && change.run_id == RunId::new(0) {
        // The feed itself lost changes: the follower must reload.
        return Event::default().id(&change.id).event("reset").data("{}");
    }
    let kind = match change.subject {
        Subject::Run => "run",
        Subject::Stage => "stage",
        Subject::Deployment => "deployment",
    };
    let data = serde_json::to_string(change).unwrap_or_else(|_| "{}".to_string());
    Event::default().id(&change.id).event(kind).data(data)
}

struct Follow {
    feed: std::sync::Arc<deploylite_reconciler::changes::ChangeFeed>,
    first: Option<Event>,
    backlog: VecDeque<Change>,
    live: broadcast::Receiver<Change>,
}

fn events(
    feed: std::sync::Arc<deploylite_reconciler::changes::ChangeFeed>,
    first: Option<Event>,
    backlog: VecDeque<Change>,
    live: broadcast::Receiver<Change>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let follow = Follow {
        feed,
        first,
        backlog,
        live,
    };
    stream::unfold(follow, |mut f| async move {
        if let Some(first) = f.first.take() {
            return Some((Ok(first), f));
        }
        if let Some(change) = f.backlog.pop_front() {
            return Some((Ok(event(&change)), f));
        }
        let received = tokio::select! {
            // The daemon stops: the stream ends (a browser reconnects to the next daemon).
            _ = f.feed.closed() => return None,
            received = f.live.recv() => received,
        };
        match received {
            Ok(change) => Some((Ok(event(&change)), f)),
            // Too slow a reader: it missed changes, so it must reload; then it goes on live.
            Err(broadcast::error::RecvError::Lagged(_)) => Some((Ok(reset()), f)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}
