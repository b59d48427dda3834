//! Forge webhooks in: `POST /webhooks/github` and `POST /webhooks/gitlab`. Deliveries are
//! verified, de-duplicated, mapped to [`ForgeEvent`](deploylite_reconciler::events::ForgeEvent)s
//! and queued on their repository's inbox; nothing here runs or reports anything.
//!
//! `limits` caps how many webhooks are served at once; `intake` is the request path both
//! share (limit → auth → parse → map → lookup → dedupe → ack → apply); `verify` checks
//! signatures and tokens; `github` and `gitlab` map payloads to events. This file only says,
//! per forge, which header carries what.

mod github;
mod gitlab;
mod intake;
mod limits;
mod payload;
mod verify;

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use deploylite_forge::forges::{ForgeKind, Forges};
use deploylite_forge::payload::MapError;
use deploylite_reconciler::store::Store;
use deploylite_reconciler::watcher::Watcher;
use serde_json::Value;

use self::intake::{delivery_header, Receiver, Reject};
use self::payload::Mapped;
use self::verify::AuthError;

/// What the webhook endpoints need.
#[derive(Clone)]
pub struct WebhookState {
    pub store: Store,
    /// Acts on forge events; None where no repositories are watched (an API-only server).
    pub watcher: Option<Arc<Watcher>>,
    pub forges: Arc<Forges>,
}

/// The two webhook endpoints, each limited to `forges.webhook_limits` requests at once.
pub fn routes(state: WebhookState) -> Router {
    Router::new()
        .route("/webhooks/github", post(intake::handle::<GithubHooks>))
        .route("/webhooks/gitlab", post(intake::handle::<GitlabHooks>))
        .route_layer(axum::middleware::from_fn_with_state(
            limits::slots(&state.forges.webhook_limits),
            limits::in_flight,
        ))
        .with_state(state)
}

struct GithubHooks;

impl Receiver for GithubHooks {
    const FORGE: ForgeKind = ForgeKind::Github;
    const EVENT_HEADER: &'static str = "X-GitHub-Event";

    fn authenticate(forges: &Forges, headers: &HeaderMap, body: &[u8]) -> Result<(), AuthError> {
        let secret = forges
            .github
            .as_ref()
            .and_then(|g| g.webhook_secret.as_ref());
        verify::github_signature(
            secret,
            body,
            headers.get(verify::GITHUB_SIGNATURE).map(|v| v.as_bytes()),
        )
    }

    /// GitHub sends a GUID with every delivery, and the same one when a delivery is redelivered.
    fn delivery_id(headers: &HeaderMap) -> Result<Option<String>, Reject> {
        delivery_header(headers, "X-GitHub-Delivery")?
            .map(Some)
            .ok_or_else(|| Reject::BadRequest("missing `X-GitHub-Delivery` header".into()))
    }

    fn map(event: &str, payload: &Value) -> Result<Mapped, MapError> {
        github::map(event, payload)
    }
}

struct GitlabHooks;

impl Receiver for GitlabHooks {
    const FORGE: ForgeKind = ForgeKind::Gitlab;
    const EVENT_HEADER: &'static str = "X-Gitlab-Event";

    fn authenticate(forges: &Forges, headers: &HeaderMap, _body: &[u8]) -> Result<(), AuthError> {
        let secret = forges
            .gitlab
            .as_ref()
            .and_then(|g| g.webhook_secret.as_ref());
        verify::gitlab_token(
            secret,
            headers.get(verify::GITLAB_TOKEN).map(|v| v.as_bytes()),
        )
    }

    /// `Idempotency-Key` (GitLab 17.4+) is documented to stay the same across retries of one
    /// delivery, so it is preferred; otherwise `X-Gitlab-Event-UUID`, which identifies the event.
    /// Older GitLab versions send neither: de-duplication is then skipped, which is safe because
    /// run identity (repo, pipeline, commit, trigger, attempt) already makes a replayed push or
    /// merge request event a no-op; only nothing is saved by recognising it early.
    fn delivery_id(headers: &HeaderMap) -> Result<Option<String>, Reject> {
        match delivery_header(headers, "Idempotency-Key")? {
            Some(key) => Ok(Some(key)),
            None => delivery_header(headers, "X-Gitlab-Event-UUID"),
        }
    }

    fn map(event: &str, payload: &Value) -> Result<Mapped, MapError> {
        gitlab::map(event, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_delivery_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(
            GitlabHooks::delivery_id(&h).unwrap(),
            None,
            "absent: no de-duplication"
        );
        h.insert("X-Gitlab-Event-UUID", "ev-1".parse().unwrap());
        assert_eq!(
            GitlabHooks::delivery_id(&h).unwrap().as_deref(),
            Some("ev-1")
        );
        h.insert("Idempotency-Key", "idem-1".parse().unwrap());
        assert_eq!(
            GitlabHooks::delivery_id(&h).unwrap().as_deref(),
            Some("idem-1")
        );
        assert!(
            GithubHooks::delivery_id(&HeaderMap::new()).is_err(),
            "GitHub always sends one"
        );
    }
}
