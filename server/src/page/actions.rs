//! The operator's forms on a run's page: cancel, approve, re-run. Each calls the same code as
//! its API endpoint (`api::cancel`, `api::approve`, `api::rerun`) after checking the form's
//! CSRF token, then sends the browser back to the run with a note of what happened.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use deploylite_model::RunId;
use serde::Deserialize;

use super::session::{csrf_ok, csrf_refused, SessionCookie};
use super::PageState;
use crate::api::{self, ApiError};
use crate::auth::Caller;

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// Where to go after an action: the run's page, with the outcome to show.
fn back_to(id: RunId, note: &str) -> Response {
    Redirect::to(&format!("/runs/{id}?note={}", super::encode_query(note))).into_response()
}

fn outcome(id: RunId, result: Result<String, ApiError>) -> Response {
    match result {
        Ok(note) => back_to(id, &note),
        Err(ApiError::NotFound(m)) => super::PageError::NotFound(m).into_response(),
        Err(ApiError::Conflict(m))
        | Err(ApiError::BadRequest(m))
        | Err(ApiError::Unavailable(m)) => back_to(id, &m),
        Err(ApiError::Internal(e)) => super::PageError::Internal(e).into_response(),
        Err(ApiError::Failed(m)) => {
            tracing::error!(error = %m, "status page action failed");
            back_to(id, "internal error; see the daemon's log")
        }
    }
}

pub(crate) async fn cancel(
    State(state): State<PageState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<SessionCookie>>,
    Path(id): Path<RunId>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !csrf_ok(&state, &caller, session.as_deref(), &form.csrf) {
        return csrf_refused();
    }
    let result = api::cancel(&state.store, &state.scheduler, id)
        .await
        .map(|c| c.message);
    outcome(id, result)
}

pub(crate) async fn approve(
    State(state): State<PageState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<SessionCookie>>,
    Path(id): Path<RunId>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !csrf_ok(&state, &caller, session.as_deref(), &form.csrf) {
        return csrf_refused();
    }
    let result = api::approve(&state.store, &state.scheduler, &caller, id)
        .await
        .map(|runs| format!("approved: {} run(s) may start", runs.len()));
    outcome(id, result)
}

pub(crate) async fn rerun(
    State(state): State<PageState>,
    Extension(caller): Extension<Caller>,
    session: Option<Extension<SessionCookie>>,
    Path(id): Path<RunId>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !csrf_ok(&state, &caller, session.as_deref(), &form.csrf) {
        return csrf_refused();
    }
    match api::rerun(&state.store, &state.scheduler, &caller, id).await {
        // The new attempt is the page to watch.
        Ok(created) => match created.first() {
            Some(new) => back_to(*new, &format!("run #{id} started again as #{new}")),
            None => back_to(id, "nothing to run again"),
        },
        Err(e) => outcome(id, Err(e)),
    }
}
