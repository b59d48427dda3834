mod log_range;
mod repos;

pub use repos::RepoView;
pub(crate) use repos::{list_repos, readyz};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use deploylite_model::{Attempt, RunId};
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{RunFilter, RunRecord, StageRecord, StoreError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::auth::Caller;
use crate::AppState;

/// Errors as the API shows them: a status and a one-line JSON message. Store details go to the
/// log, not to the client.
pub(crate) enum ApiError {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    /// A part of the daemon this server was built without (no environment controller).
    Unavailable(String),
    Internal(StoreError),
    /// An internal failure other than the store's (git): logged, not shown.
    Failed(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Failed(error) => {
                tracing::error!(%error, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the daemon's log".to_string(),
                )
            }
            ApiError::Internal(error) => {
                tracing::error!(%error, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the daemon's log".to_string(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

pub(crate) fn time(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RunView {
    pub id: RunId,
    pub repo: String,
    pub pipeline: String,
    pub pipeline_file: String,
    pub commit: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub trigger: String,
    pub run_attempt: i64,
    pub status: RunStatus,
    pub pending_reason: Option<String>,
    pub cancel_requested: bool,
    /// A pull request from a fork, by someone who is not a member of the repository.
    #[serde(default)]
    pub untrusted: bool,
    /// Waiting, queued, for `deploylite approve` or a `/deploylite approve` comment.
    #[serde(default)]
    pub awaiting_approval: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<serde_json::Value>,
    /// The `deploylite.run` policy gate's decision; null when no policy applied.
    #[serde(default)]
    pub policy: Option<deploylite_policy::Decision>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<StageView>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StageView {
    pub name: String,
    pub status: StageStatus,
    pub attempt: Attempt,
    pub needs: Vec<String>,
    pub pending_reason: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
}

impl RunView {
    fn new(r: RunRecord, stages: Option<Vec<StageRecord>>) -> RunView {
        RunView {
            id: r.id,
            repo: r.repo.into(),
            pipeline: r.pipeline,
            pipeline_file: r.pipeline_file,
            commit: r.commit.into(),
            git_ref: r.git_ref,
            trigger: r.trigger,
            run_attempt: r.run_attempt,
            status: r.status,
            pending_reason: r.pending_reason,
            cancel_requested: r.cancel_requested,
            untrusted: r.pull_request.as_ref().is_some_and(|p| p.untrusted),
            awaiting_approval: r.awaiting_approval,
            approved_by: r.approved_by,
            errors: r.errors,
            policy: r.policy,
            created_at: time(Some(r.created_at)),
            started_at: time(r.started_at),
            finished_at: time(r.finished_at),
            stages: stages.map(|s| {
                s.into_iter()
                    .map(|s| StageView {
                        name: s.name.into(),
                        status: s.status,
                        attempt: s.attempt,
                        needs: s.needs,
                        pending_reason: s.pending_reason,
                        started_at: time(s.started_at),
                        finished_at: time(s.finished_at),
                        exit_code: s.exit_code,
                    })
                    .collect()
            }),
        }
    }
}

/// Alive: the store answers, not just the socket. Failing repositories are for `/readyz`.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    match store_answers(&state).await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response(),
        Err(unavailable) => unavailable,
    }
}

/// Ok when the store answers a query; else the 503 to answer.
async fn store_answers(state: &AppState) -> Result<(), Response> {
    let probe = RunFilter {
        limit: 1,
        ..Default::default()
    };
    match state.store.list_runs(&probe).await {
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::error!(%error, "health check: the store does not answer");
            Err((
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "store unavailable" })),
            )
                .into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    repo: Option<String>,
    pipeline: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

/// Most runs one request returns.
const MAX_LIMIT: i64 = 1000;

pub(crate) async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<RunStatus>().map_err(|_| {
            let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!(
                "unknown status `{s}`; expected one of {}",
                known.join(", ")
            ))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let runs = state
        .store
        .list_runs(&RunFilter {
            repo: q.repo.filter(|s| !s.is_empty()),
            pipeline: q.pipeline.filter(|s| !s.is_empty()),
            status,
            limit,
            ..Default::default()
        })
        .await?;
    Ok(Json(
        runs.into_iter().map(|r| RunView::new(r, None)).collect(),
    ))
}

pub(crate) async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
) -> Result<Json<RunView>, ApiError> {
    let (run, stages) = state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run #{id}")))?;
    Ok(Json(RunView::new(run, Some(stages))))
}

pub(crate) async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<RunId>,
) -> Result<Response, ApiError> {
    let outcome = cancel(&state.store, &state.scheduler, id).await?;
    let code = if outcome.accepted {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CONFLICT
    };
    Ok((
        code,
        Json(serde_json::json!({ "id": id, "status": outcome.status, "message": outcome.message })),
    )
        .into_response())
}

/// What a cancellation request did.
pub(crate) struct Cancelled {
    pub status: RunStatus,
    /// False when the run had already ended.
    pub accepted: bool,
    pub message: String,
}

/// Asks the scheduler to cancel run `id`: the API's and the status page's cancel.
pub(crate) async fn cancel(
    store: &deploylite_reconciler::store::Store,
    scheduler: &tokio::sync::Notify,
    id: RunId,
) -> Result<Cancelled, ApiError> {
    let status = store
        .request_cancel(id, "cancelled by request")
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run #{id}")))?;
    scheduler.notify_one();
    Ok(if status.is_final() {
        Cancelled {
            status,
            accepted: false,
            message: format!("run #{id} is already {status}"),
        }
    } else {
        Cancelled {
            status,
            accepted: true,
            message: format!("run #{id} is being cancelled"),
        }
    })
}

/// Approves the head commit of an untrusted run: it and the other runs of that commit waiting
/// for approval start.
pub(crate) async fn approve_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<RunId>,
) -> Result<Response, ApiError> {
    let approved = approve(&state.store, &state.scheduler, &caller, id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": id, "approved": approved })),
    )
        .into_response())
}

/// Approves run `id`'s head commit for `caller`: the API's and the status page's approve.
/// Returns the runs it lets start.
pub(crate) async fn approve(
    store: &deploylite_reconciler::store::Store,
    scheduler: &tokio::sync::Notify,
    caller: &Caller,
    id: RunId,
) -> Result<Vec<RunId>, ApiError> {
    let approved = store
        .approve_run(id, &caller.label())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run #{id}")))?;
    if approved.is_empty() {
        return Err(ApiError::Conflict(format!(
            "run #{id} is not waiting for approval"
        )));
    }
    scheduler.notify_one();
    tracing::info!(run_id = id.get(), by = %caller.label(), runs = ?approved, "untrusted runs approved");
    Ok(approved)
}

/// Runs a finished run's pipeline again at the same commit, as its next `run_attempt`.
pub(crate) async fn rerun_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<RunId>,
) -> Result<Response, ApiError> {
    let created = rerun(&state.store, &state.scheduler, &caller, id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": id, "created": created })),
    )
        .into_response())
}

/// The API's and the status page's re-run: a new attempt of run `id`'s pipeline at its
/// commit. Refused while the run is still going (cancel it first) or when it never validated.
pub(crate) async fn rerun(
    store: &deploylite_reconciler::store::Store,
    scheduler: &tokio::sync::Notify,
    caller: &Caller,
    id: RunId,
) -> Result<Vec<RunId>, ApiError> {
    let run = store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run #{id}")))?;
    if !run.status.is_final() {
        return Err(ApiError::Conflict(format!(
            "run #{id} is still {}; cancel it before running it again",
            run.status
        )));
    }
    let created = store
        .rerun(&run.repo, &run.commit, Some(&run.pipeline), None)
        .await?;
    if created.is_empty() {
        return Err(ApiError::Conflict(format!(
            "run #{id} cannot run again (its pipeline did not validate, or a newer attempt exists)"
        )));
    }
    scheduler.notify_one();
    tracing::info!(run_id = id.get(), by = %caller.label(), runs = ?created, "run started again on request");
    Ok(created)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogQuery {
    attempt: Option<Attempt>,
    /// Bytes from the start to skip: a client following a log asks for what it has not seen.
    offset: Option<u64>,
}

/// The log of one attempt, streamed from disk (a log may be large: it is never read whole).
/// `?attempt=N` (default the latest), `?offset=N` or a single `Range: bytes=...` (206, or 416
/// with `Content-Range: bytes */len` when no byte of the log is in it).
pub(crate) async fn stage_log(
    State(state): State<AppState>,
    Path((id, stage)): Path<(RunId, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let range = headers.get(header::RANGE).map(|v| v.to_str().unwrap_or(""));
    if q.offset.is_some() && range.is_some() {
        return Err(ApiError::BadRequest(
            "give ?offset or a Range header, not both".into(),
        ));
    }
    let (_, stages) = state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run #{id}")))?;
    let record = stages
        .iter()
        .find(|s| s.name == stage)
        .ok_or_else(|| ApiError::NotFound(format!("run #{id} has no stage `{stage}`")))?;
    let attempt = q.attempt.unwrap_or(record.attempt);
    if attempt < Attempt::FIRST || attempt > record.attempt {
        return Err(ApiError::NotFound(format!(
            "stage `{stage}` of run #{id} has no attempt {attempt} (it has {})",
            record.attempt
        )));
    }
    let path = state.data.log_path(id, &stage, attempt);
    let unavailable = |e: std::io::Error| {
        tracing::error!(path = %path.display(), error = %e, "cannot read a log");
        ApiError::NotFound(format!("the log of attempt {attempt} is not available"))
    };
    // A missing file is an empty log: the attempt has not written yet.
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => Some(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(unavailable(e)),
    };
    // The length now: what the log gains while it is sent belongs to the next request.
    let len = match &file {
        Some(file) => file.metadata().await.map_err(unavailable)?.len(),
        None => 0,
    };
    let (status, span) = match log_range::select(len, q.offset, range) {
        log_range::Selection::Whole(span) => (StatusCode::OK, span),
        log_range::Selection::Partial(span) => (StatusCode::PARTIAL_CONTENT, span),
        log_range::Selection::Unsatisfiable => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                Json(serde_json::json!({
                    "error": format!("the log of attempt {attempt} has {len} bytes")
                })),
            )
                .into_response());
        }
    };
    let body = match file {
        Some(mut file) if span.end > span.start => {
            file.seek(std::io::SeekFrom::Start(span.start))
                .await
                .map_err(unavailable)?;
            Body::from_stream(ReaderStream::with_capacity(
                file.take(span.end - span.start),
                LOG_READ_CHUNK,
            ))
        }
        _ => Body::empty(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let content_range = format!("bytes {}-{}/{len}", span.start, span.end - 1);
        if let Ok(value) = HeaderValue::from_str(&content_range) {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// How much of a log is read per body chunk.
const LOG_READ_CHUNK: usize = 64 * 1024;
