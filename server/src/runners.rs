//! The runner protocol over HTTP. Registration trades a registration token for the runner's own
//! credential (stored hashed); every other call carries `Authorization: Bearer <credential>`.
//! Runners long-poll for leases, renew them with heartbeats (which answer "cancel" when the run is
//! being cancelled), upload log chunks, fetch the commit as a tar, and report the end. Any call
//! about an attempt the runner no longer holds answers 409: a late report changes nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deploylite_model::{Attempt, RunId};
use deploylite_protocol::{
    AttemptOutcome, HeartbeatResponse, PollRequest, PollResponse, RegisterRequest, RegisterResponse,
};
use deploylite_reconciler::scheduler::Scheduler;
use deploylite_reconciler::store::{now_ms, Registration, RunnerRecord, StoreError};
use deploylite_reconciler::watcher::Repos;
use hmac::digest::Digest;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use axum::Extension;
use deploylite_forge::forges::Secret;
use deploylite_reconciler::store::Role;

#[derive(Clone)]
pub struct RunnerState {
    pub scheduler: Arc<Scheduler>,
    pub repos: Arc<Repos>,
    /// Tokens that let a new runner register. Empty: registration is closed.
    pub registration_tokens: Arc<Vec<Secret>>,
    /// How long a poll waits for a lease before answering with none.
    pub poll_wait: Duration,
    /// A runner not heard from for this long is shown offline.
    pub offline_after: Duration,
}

pub fn routes(state: RunnerState) -> Router {
    Router::new()
        .route("/api/v1/runners", get(list))
        .route("/api/v1/runners/register", post(register))
        .route("/api/v1/runners/{name}/revoke", post(revoke))
        .route("/api/v1/runner/poll", post(poll))
        .route(
            "/api/v1/runner/leases/{run}/{stage}/{attempt}/heartbeat",
            post(heartbeat),
        )
        .route(
            "/api/v1/runner/leases/{run}/{stage}/{attempt}/log",
            post(log),
        )
        .route(
            "/api/v1/runner/leases/{run}/{stage}/{attempt}/complete",
            post(complete),
        )
        .route(
            "/api/v1/runner/leases/{run}/{stage}/{attempt}/source.tar",
            get(source),
        )
        .with_state(state)
}

enum RunnerError {
    Unauthorized(&'static str),
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Internal(String),
}

impl From<StoreError> for RunnerError {
    fn from(e: StoreError) -> Self {
        RunnerError::Internal(e.to_string())
    }
}

impl IntoResponse for RunnerError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            RunnerError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.to_string()),
            RunnerError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            RunnerError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            RunnerError::Conflict(m) => (StatusCode::CONFLICT, m),
            RunnerError::Internal(m) => {
                tracing::error!(error = %m, "runner API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the daemon's log".to_string(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

pub fn hash_credential(credential: &str) -> String {
    hex::encode(sha2::Sha256::digest(credential.as_bytes()))
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

async fn authenticate(
    state: &RunnerState,
    headers: &HeaderMap,
) -> Result<RunnerRecord, RunnerError> {
    let credential = bearer(headers).ok_or(RunnerError::Unauthorized(
        "missing `Authorization: Bearer <credential>`",
    ))?;
    state
        .scheduler
        .store()
        .authenticate_runner(&hash_credential(credential))
        .await?
        .ok_or(RunnerError::Unauthorized(
            "unknown or revoked runner credential",
        ))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "local"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Most stages one runner may run at once: what registration and every poll are held to.
pub const MAX_CAPACITY: i64 = 1024;
const MAX_LABELS: usize = 32;
const MAX_LABEL_BYTES: usize = 64;
const MAX_EXECUTOR_BYTES: usize = 32;

fn check_capacity(capacity: i64) -> Result<(), RunnerError> {
    if (1..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(RunnerError::BadRequest(format!(
            "capacity must be between 1 and {MAX_CAPACITY}"
        )))
    }
}

/// Labels as `runs_on` names them: printable, no spaces or commas (`--labels` splits on commas).
fn check_labels(labels: &[String]) -> Result<(), RunnerError> {
    if labels.len() > MAX_LABELS {
        return Err(RunnerError::BadRequest(format!(
            "a runner has at most {MAX_LABELS} labels"
        )));
    }
    let valid = |l: &String| {
        !l.is_empty()
            && l.len() <= MAX_LABEL_BYTES
            && l.chars().all(|c| c.is_ascii_graphic() && c != ',')
    };
    match labels.iter().find(|l| !valid(l)) {
        None => Ok(()),
        Some(_) => Err(RunnerError::BadRequest(format!(
            "labels are 1-{MAX_LABEL_BYTES} printable ASCII characters without spaces or commas"
        ))),
    }
}

/// What a runner says it offers, held to the same rules at registration and at every poll.
fn check_offer(labels: &[String], capacity: i64) -> Result<(), RunnerError> {
    check_labels(labels)?;
    check_capacity(capacity)
}

fn same_labels(a: &[String], b: &[String]) -> bool {
    let set = |l: &[String]| {
        l.iter()
            .cloned()
            .collect::<std::collections::BTreeSet<String>>()
    };
    set(a) == set(b)
}

/// Whether this registration may take over the name of an existing, unrevoked runner (a new
/// credential for it, and with it the name's live leases). Today only the runner itself may:
/// the request carries its current credential as `Authorization: Bearer <credential>`. Another
/// runner's credential (or a non-admin API token) is refused outright; one no runner holds (a
/// runner re-registering after the server's data was reset presents its old one) proves
/// nothing, like no credential. This
/// is the one place to admit other proofs: an admin API token (resolved by the authorization
/// middleware) is one.
async fn takeover_allowed(
    state: &RunnerState,
    headers: &HeaderMap,
    caller: Option<&Caller>,
    name: &str,
) -> Result<bool, RunnerError> {
    if caller.and_then(Caller::role) == Some(Role::Admin) {
        return Ok(true);
    }
    let Some(credential) = bearer(headers) else {
        return Ok(false);
    };
    match state
        .scheduler
        .store()
        .authenticate_runner(&hash_credential(credential))
        .await?
    {
        Some(holder) if holder.name == name => Ok(true),
        // An API token that is not an admin's is no proof either, and is said to be none.
        None if !matches!(caller, Some(Caller::Token(_))) => Ok(false),
        _ => Err(RunnerError::Unauthorized(
            "the credential presented is not this runner's current credential",
        )),
    }
}

/// Trades a registration token for a new runner credential.
///
/// Registering again under the name of a live runner (to get a new credential, e.g. after
/// losing the old one's file) needs that runner's current credential in
/// `Authorization: Bearer <credential>` (see [`takeover_allowed`]); without it the answer is
/// 409 and the runner keeps its credential and leases. A revoked name never registers again.
async fn register(
    State(state): State<RunnerState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Json(request): Json<RegisterRequest>,
) -> Result<Response, RunnerError> {
    let known = state
        .registration_tokens
        .iter()
        .any(|t| same(t.expose().as_bytes(), request.token.as_bytes()));
    if !known {
        return Err(RunnerError::Unauthorized("invalid registration token"));
    }
    if !valid_name(&request.name) {
        return Err(RunnerError::BadRequest(
            "runner names are 1-64 letters, digits, `-`, `_` or `.` (and not `local`)".into(),
        ));
    }
    check_offer(&request.labels, request.capacity)?;
    if request.executor.is_empty() || request.executor.len() > MAX_EXECUTOR_BYTES {
        return Err(RunnerError::BadRequest(format!(
            "executor names are 1-{MAX_EXECUTOR_BYTES} bytes"
        )));
    }
    let caller = caller.map(|Extension(c)| c);
    let allow_takeover = takeover_allowed(&state, &headers, caller.as_ref(), &request.name).await?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let credential = format!("dlr_{}", hex::encode(bytes));
    let outcome = state
        .scheduler
        .store()
        .register_runner(
            &request.name,
            &hash_credential(&credential),
            &request.labels,
            request.capacity,
            &request.executor,
            allow_takeover,
        )
        .await?;
    match outcome {
        Registration::Revoked => {
            return Err(RunnerError::Conflict(format!(
                "runner `{}` was revoked; register under another name",
                request.name
            )))
        }
        Registration::Taken => {
            tracing::warn!(runner = %request.name, "registration refused: the name belongs to a live runner");
            return Err(RunnerError::Conflict(format!(
                "runner name `{}` is taken by a registered runner: to register it again, present \
                 its current credential (`Authorization: Bearer <credential>`); otherwise have an \
                 admin revoke it and register under another name",
                request.name
            )));
        }
        Registration::New | Registration::Replaced => {}
    }
    tracing::info!(runner = %request.name, labels = ?request.labels, capacity = request.capacity, executor = %request.executor,
        replaced = outcome == Registration::Replaced, "runner registered");
    state.scheduler.waker().notify_one();
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            name: request.name,
            credential,
        }),
    )
        .into_response())
}

/// How stale a polling runner's `last_seen` may get before a poll records it again.
const TOUCH_INTERVAL: Duration = Duration::from_secs(1);

async fn poll(
    State(state): State<RunnerState>,
    headers: HeaderMap,
    Json(request): Json<PollRequest>,
) -> Result<Json<PollResponse>, RunnerError> {
    let runner = authenticate(&state, &headers).await?;
    check_offer(&request.labels, request.capacity)?;
    if !(0..=request.capacity).contains(&request.free) {
        return Err(RunnerError::BadRequest(
            "free must be between 0 and the capacity".into(),
        ));
    }
    // Labels decide which stages (and so which secrets and deploy targets) reach a runner, so a
    // runner cannot widen its own: they are fixed at registration, changed only by an admin
    // (`Store::set_runner_labels`). A mismatch is refused rather than ignored, so that a runner
    // started with other labels says so at once instead of silently waiting for stages that
    // never come.
    if !same_labels(&runner.labels, &request.labels) {
        tracing::warn!(runner = %runner.name, registered = ?runner.labels, claimed = ?request.labels,
            "poll refused: labels differ from the registered ones");
        return Err(RunnerError::Conflict(format!(
            "runner `{}` is registered with labels {:?}, not {:?}: labels are fixed at \
             registration; ask an admin to change them, or register a new runner",
            runner.name, runner.labels, request.labels
        )));
    }
    let store = state.scheduler.store();
    let changed = runner.capacity != request.capacity;
    // A durable write per poll would be the poll's main cost; "seen" needs no finer grain.
    let seen_lately = runner
        .last_seen
        .is_some_and(|t| now_ms() - t < millis(TOUCH_INTERVAL));
    if changed || !seen_lately {
        store.touch_runner(&runner.name, request.capacity).await?;
    }
    if changed
        || runner
            .last_seen
            .is_none_or(|t| now_ms() - t > millis(state.offline_after))
    {
        // Newly online or changed: let the scheduler consider it at once.
        state.scheduler.waker().notify_one();
    }
    let heartbeat_ms = u64::try_from(state.scheduler.lease_ttl().as_millis() / 4)
        .unwrap_or(5_000)
        .max(100);
    let max = usize::try_from(request.free).unwrap_or(0);
    if max == 0 {
        return Ok(Json(PollResponse {
            leases: Vec::new(),
            heartbeat_ms,
        }));
    }
    let waiter = state.scheduler.hub().waiter(&runner.name);
    let deadline = tokio::time::Instant::now() + state.poll_wait;
    loop {
        // Register interest before looking, so an assignment made in between is not missed.
        let notified = waiter.notified();
        let leases = state.scheduler.collect_leases(&runner.name, max).await?;
        if !leases.is_empty() {
            return Ok(Json(PollResponse {
                leases,
                heartbeat_ms,
            }));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            store.touch_runner(&runner.name, request.capacity).await?;
            return Ok(Json(PollResponse {
                leases: Vec::new(),
                heartbeat_ms,
            }));
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

type LeaseKey = (RunId, String, Attempt);

fn lost() -> RunnerError {
    RunnerError::Conflict(
        "this runner no longer holds that lease (expired, reassigned or finished)".into(),
    )
}

async fn heartbeat(
    State(state): State<RunnerState>,
    headers: HeaderMap,
    Path((run, stage, attempt)): Path<LeaseKey>,
) -> Result<Json<HeartbeatResponse>, RunnerError> {
    let runner = authenticate(&state, &headers).await?;
    let cancel = state
        .scheduler
        .renew_lease(&runner.name, run, &stage, attempt)
        .await?
        .ok_or_else(lost)?;
    Ok(Json(HeartbeatResponse { cancel }))
}

/// Largest log chunk accepted in one request.
const MAX_LOG_CHUNK: usize = 4 * 1024 * 1024;

async fn log(
    State(state): State<RunnerState>,
    headers: HeaderMap,
    Path((run, stage, attempt)): Path<LeaseKey>,
    body: Bytes,
) -> Result<StatusCode, RunnerError> {
    let runner = authenticate(&state, &headers).await?;
    if body.len() > MAX_LOG_CHUNK {
        return Err(RunnerError::BadRequest(format!(
            "log chunks are at most {MAX_LOG_CHUNK} bytes"
        )));
    }
    if state
        .scheduler
        .append_remote_log(&runner.name, run, &stage, attempt, &body)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(lost())
    }
}

async fn complete(
    State(state): State<RunnerState>,
    headers: HeaderMap,
    Path((run, stage, attempt)): Path<LeaseKey>,
    Json(outcome): Json<AttemptOutcome>,
) -> Result<StatusCode, RunnerError> {
    let runner = authenticate(&state, &headers).await?;
    if state
        .scheduler
        .complete_remote(&runner.name, run, &stage, attempt, &outcome)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(lost())
    }
}

/// The commit of a lease as a tar archive (`git archive`), so runners need neither git
/// credentials nor access to the repository.
async fn source(
    State(state): State<RunnerState>,
    headers: HeaderMap,
    Path((run, stage, attempt)): Path<LeaseKey>,
) -> Result<Response, RunnerError> {
    let runner = authenticate(&state, &headers).await?;
    let store = state.scheduler.store();
    if store
        .held_lease(&runner.name, run, &stage, attempt)
        .await?
        .is_none()
    {
        return Err(lost());
    }
    let record = store
        .run(run)
        .await?
        .ok_or_else(|| RunnerError::NotFound(format!("no run #{run}")))?;
    let git_dir = state.repos.git_dir(&record.repo).await.ok_or_else(|| {
        RunnerError::NotFound(format!("repository `{}` is not configured", record.repo))
    })?;
    let mut child = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["archive", "--format=tar", &record.commit])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RunnerError::Internal(format!("cannot run git archive: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| RunnerError::Internal("git archive has no stdout".into()))?;
    // Reap git once it is done, whatever the client does with the stream.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(stdout));
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RunnerView {
    pub name: String,
    pub labels: Vec<String>,
    pub executor: String,
    pub capacity: i64,
    pub running: i64,
    /// online, offline or revoked.
    pub status: String,
    pub last_seen: Option<String>,
}

async fn list(State(state): State<RunnerState>) -> Result<Json<Vec<RunnerView>>, RunnerError> {
    let now = now_ms();
    let runners = state.scheduler.store().list_runners().await?;
    Ok(Json(
        runners
            .into_iter()
            .map(|r| RunnerView {
                status: if r.revoked {
                    "revoked"
                } else if r
                    .last_seen
                    .is_some_and(|t| now - t <= millis(state.offline_after))
                {
                    "online"
                } else {
                    "offline"
                }
                .to_string(),
                last_seen: r
                    .last_seen
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                name: r.name,
                labels: r.labels,
                executor: r.executor,
                capacity: r.capacity,
                running: r.running,
            })
            .collect(),
    ))
}

async fn revoke(
    State(state): State<RunnerState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, RunnerError> {
    if !state.scheduler.store().revoke_runner(&name).await? {
        return Err(RunnerError::NotFound(format!("no runner named `{name}`")));
    }
    tracing::warn!(runner = %name, "runner revoked");
    Ok(Json(
        serde_json::json!({ "name": name, "status": "revoked" }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_and_names() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(valid_name("builder-1.eu"));
        assert!(!valid_name("local"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
        assert_eq!(hash_credential("x").len(), 64);
    }

    #[test]
    fn offers_are_bounded() {
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_offer(&labels(&["linux", "gpu:a100", "x86_64"]), 4).is_ok());
        assert!(check_offer(&labels(&[]), MAX_CAPACITY).is_ok());
        assert!(check_offer(&labels(&["linux"]), 0).is_err());
        assert!(check_offer(&labels(&["linux"]), 1_000_000).is_err());
        assert!(check_offer(&labels(&["a b"]), 1).is_err());
        assert!(check_offer(&labels(&["a,b"]), 1).is_err());
        assert!(check_offer(&labels(&[""]), 1).is_err());
        assert!(check_offer(&[("x".repeat(65))], 1).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("l{i}")).collect();
        assert!(check_offer(&many, 1).is_err());
        assert!(same_labels(&labels(&["a", "b"]), &labels(&["b", "a", "a"])));
        assert!(!same_labels(&labels(&["a"]), &labels(&["a", "prod"])));
    }
}
