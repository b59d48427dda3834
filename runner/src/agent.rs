//! The runner agent (`deploylite runner`). It registers once (trading a registration token for
//! its own credential, kept in the state directory), then long-polls the server for leases,
//! runs each on its executor, streams the log in chunks, renews the lease with heartbeats (which
//! also deliver cancellations), and reports the end. On SIGTERM it takes no new work, lets
//! running stages finish within the grace period, and hands back the rest. On start it kills
//! the stage processes a previous incarnation with the same work directory left running.

mod credential;
mod error;
mod log_upload;
mod url_path;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploylite_model::{Attempt, RunId};
use deploylite_protocol::{AttemptOutcome, HeartbeatResponse, LeaseJob, PollRequest, PollResponse};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use self::credential::credential_path;
pub use self::error::AgentError;
use self::error::{PollError, PrepareError, SegmentError};
use self::url_path::path_segment;
use crate::outcome::{verdict, Verdict};
use crate::{Executor, StageJob, StageLog};

pub struct AgentConfig {
    pub server: String,
    pub registration_token: Option<String>,
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: usize,
    pub executor_name: String,
    pub executor: Arc<dyn Executor>,
    /// Whether the executor needs the commit's files on this machine (local, Docker).
    pub needs_workspace: bool,
    pub work_dir: PathBuf,
    pub state_dir: PathBuf,
    pub grace: Duration,
    /// Register again with the registration token, replacing the stored credential (which the
    /// server no longer knows after its data was reset).
    pub reregister: bool,
}

/// How long to wait before polling again after the server could not be reached.
const RECONNECT_DELAY: Duration = Duration::from_secs(2);

struct Agent {
    config: AgentConfig,
    http: reqwest::Client,
    base: String,
    credential: String,
    running: AtomicUsize,
    slot_freed: Notify,
    /// Set once SIGTERM's grace period is over: cancelled stages are handed back, not reported
    /// as cancelled.
    handing_back: AtomicBool,
    stages: Mutex<HashMap<(RunId, String, Attempt), CancellationToken>>,
}

/// Runs the agent until `shutdown` is cancelled (the binary cancels it on SIGTERM or SIGINT),
/// then drains: running stages get `config.grace` to finish and the rest are handed back.
pub async fn run(mut config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let base = config.server.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(AgentError::Client)?;
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentError::Io { what, path, source }
    };
    tokio::fs::create_dir_all(&config.work_dir)
        .await
        .map_err(io("create the work dir", &config.work_dir))?;
    // Workspaces (and so every stage's DEPLOYLITE_WORKSPACE) are absolute paths, so that the
    // next start finds this incarnation's stages whatever directory it is started from.
    config.work_dir = std::path::absolute(&config.work_dir)
        .map_err(io("resolve the work dir", &config.work_dir))?;
    kill_leftover_stages(&config.work_dir).await?;
    let credential = credential::obtain(&http, &base, &config).await?;
    let agent = Arc::new(Agent {
        config,
        http,
        base,
        credential,
        running: AtomicUsize::new(0),
        slot_freed: Notify::new(),
        handing_back: AtomicBool::new(false),
        stages: Mutex::new(HashMap::new()),
    });
    tracing::info!(runner = %agent.config.name, server = %agent.base, labels = ?agent.config.labels,
        capacity = agent.config.capacity, executor = %agent.config.executor_name, "runner started");

    let mut tasks = JoinSet::new();
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let free = agent
            .config
            .capacity
            .saturating_sub(agent.running.load(Ordering::SeqCst));
        if free == 0 {
            tokio::select! {
                _ = agent.slot_freed.notified() => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        let polled = tokio::select! {
            polled = agent.poll(free) => polled,
            _ = shutdown.cancelled() => break,
        };
        match polled {
            Ok(response) => {
                failures = 0;
                for job in response.leases {
                    agent.running.fetch_add(1, Ordering::SeqCst);
                    tasks.spawn(agent.clone().run_lease(job, response.heartbeat_ms));
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 || failures % 30 == 0 {
                    tracing::warn!(error = %chain(&error), "cannot poll the server; retrying");
                }
                match error {
                    PollError::Refused { .. } => {
                        return Err(AgentError::PollRefused(error.to_string()))
                    }
                    PollError::Unauthorized(reason) => {
                        return Err(AgentError::StaleCredential {
                            base: agent.base.clone(),
                            path: credential_path(&agent.config.state_dir, &agent.config.name),
                            reason,
                        })
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        while tasks.try_join_next().is_some() {}
    }

    let running = agent.running.load(Ordering::SeqCst);
    tracing::info!(running, grace = ?agent.config.grace, "stopping: no new work; running stages get the grace period");
    let drained = tokio::time::timeout(agent.config.grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        agent.handing_back.store(true, Ordering::SeqCst);
        let tokens: Vec<CancellationToken> = lock(&agent.stages).values().cloned().collect();
        tracing::warn!(
            stages = tokens.len(),
            "grace period over: handing the remaining stages back"
        );
        for token in tokens {
            token.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// Kills what a previous incarnation of this runner (same work directory) left running: after a
/// `kill -9` its stage processes, in process groups of their own, outlive it. Their leases are
/// lost (the server requeues the stages when the leases lapse), so nothing will ever collect
/// their results. Done before taking work, so no stage of ours can be among them.
async fn kill_leftover_stages(work_dir: &Path) -> Result<(), AgentError> {
    let dir = work_dir.to_path_buf();
    // A scan of /proc: blocking file reads, off the runtime.
    let killed = tokio::task::spawn_blocking(move || crate::kill_stages_under(&dir))
        .await
        .map_err(AgentError::Sweep)?;
    if killed > 0 {
        tracing::warn!(killed, work_dir = %work_dir.display(),
            "killed stage processes a previous run of this runner left behind");
    } else {
        tracing::info!(killed, work_dir = %work_dir.display(), "no leftover stage processes");
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server's URLs for one lease, built once, every segment from the lease encoded.
#[derive(Clone)]
struct LeaseUrls {
    log: String,
    source_tar: String,
    heartbeat: String,
    complete: String,
}

impl LeaseUrls {
    fn new(base: &str, lease: &LeaseJob) -> Result<LeaseUrls, SegmentError> {
        let prefix = format!(
            "{base}/api/v1/runner/leases/{}/{}/{}",
            path_segment(&lease.run_id.to_string())?,
            path_segment(&lease.stage.name)?,
            path_segment(&lease.attempt.to_string())?
        );
        Ok(LeaseUrls {
            log: format!("{prefix}/log"),
            source_tar: format!("{prefix}/source.tar"),
            heartbeat: format!("{prefix}/heartbeat"),
            complete: format!("{prefix}/complete"),
        })
    }
}

impl Agent {
    async fn poll(&self, free: usize) -> Result<PollResponse, PollError> {
        let response = self
            .http
            .post(format!("{}/api/v1/runner/poll", self.base))
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(60))
            .json(&PollRequest {
                labels: self.config.labels.clone(),
                capacity: i64::try_from(self.config.capacity).unwrap_or(i64::MAX),
                free: i64::try_from(free).unwrap_or(i64::MAX),
            })
            .send()
            .await
            .map_err(PollError::Send)?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let reason = error_text(response).await;
            return Err(PollError::Unauthorized(
                format!("401 {reason}").trim_end().to_string(),
            ));
        }
        if status == reqwest::StatusCode::CONFLICT || status == reqwest::StatusCode::BAD_REQUEST {
            // What this runner offers is refused (e.g. labels other than the registered ones):
            // asking again cannot help.
            let reason = error_text(response).await;
            return Err(PollError::Refused { status, reason });
        }
        if !status.is_success() {
            return Err(PollError::Status(status));
        }
        response.json().await.map_err(PollError::Answer)
    }

    async fn run_lease(self: Arc<Self>, lease: LeaseJob, heartbeat_ms: u64) {
        // The daemon's span of this attempt is the parent, when both export spans.
        let span = tracing::info_span!(
            "stage_attempt",
            run_id = lease.run_id.get(),
            stage = %lease.stage.name,
            attempt = lease.attempt.get(),
            runner = %self.config.name
        );
        if let Some(parent) = &lease.traceparent {
            deploylite_telemetry::trace::set_remote_parent(&span, parent);
        }
        span.in_scope(|| tracing::info!("stage attempt started"));
        match LeaseUrls::new(&self.base, &lease) {
            Ok(urls) => {
                self.clone()
                    .hold_lease(lease, urls, heartbeat_ms)
                    .instrument(span)
                    .await
            }
            // Nothing can be reported on such a lease: it lapses on the server.
            Err(error) => tracing::error!(run = lease.run_id.get(), stage = %lease.stage.name,
                %error, "cannot address this lease on the server; leaving it"),
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.slot_freed.notify_one();
    }

    async fn hold_lease(self: Arc<Self>, lease: LeaseJob, urls: LeaseUrls, heartbeat_ms: u64) {
        let key = (lease.run_id, lease.stage.name.clone(), lease.attempt);
        let cancel = CancellationToken::new();
        lock(&self.stages).insert(key.clone(), cancel.clone());
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(self.clone().heartbeat(
            lease.clone(),
            urls.heartbeat.clone(),
            heartbeat_ms,
            cancel.clone(),
            lost.clone(),
        ));

        let outcome = self
            .execute(&lease, &urls, cancel.clone(), lost.clone())
            .await;

        heartbeat.abort();
        lock(&self.stages).remove(&key);
        if !lost.load(Ordering::SeqCst) {
            let reported = if self.handing_back.load(Ordering::SeqCst) && cancel.is_cancelled() {
                AttemptOutcome::HandedBack
            } else {
                outcome
            };
            tracing::info!(outcome = ?reported, "stage attempt ended");
            self.report(&lease, &urls.complete, &reported).await;
        }
    }

    async fn execute(
        &self,
        lease: &LeaseJob,
        urls: &LeaseUrls,
        cancel: CancellationToken,
        lost: Arc<AtomicBool>,
    ) -> AttemptOutcome {
        let workspace = self.config.work_dir.join(format!(
            "{}-{}-{}",
            lease.run_id, lease.stage.name, lease.attempt
        ));
        let (tx, rx) = mpsc::channel::<String>(4096);
        let uploader = tokio::spawn(log_upload::upload(
            self.http.clone(),
            urls.log.clone(),
            self.credential.clone(),
            rx,
            cancel.clone(),
            lost,
        ));
        let mut log = StageLog::channel(tx).with_byte_limit(lease.log_bytes);
        log.system(&format!(
            "run #{} {}/{} stage `{}` attempt {} on runner `{}` ({} executor; {} {})",
            lease.run_id,
            lease.repo,
            lease.pipeline,
            lease.stage.name,
            lease.attempt,
            self.config.name,
            self.config.executor_name,
            lease.git_ref,
            lease.commit.get(..12).unwrap_or(&lease.commit)
        ))
        .await;
        if let Some(previous) = &lease.previous_attempt {
            log.system(previous).await;
        }
        let outcome = match self.prepare(&urls.source_tar, &workspace).await {
            Err(error) => {
                let message = format!("cannot prepare the workspace: {}", chain(&error));
                log.system(&message).await;
                AttemptOutcome::Error(message)
            }
            Ok(()) => {
                let mut env = lease.env.clone();
                env.insert(
                    "DEPLOYLITE_WORKSPACE".into(),
                    workspace.display().to_string(),
                );
                env.insert("DEPLOYLITE_RUNNER".into(), self.config.name.clone());
                let job = StageJob {
                    run_id: lease.run_id,
                    stage: lease.stage.name.clone().into(),
                    attempt: lease.attempt,
                    workspace: workspace.clone(),
                    env,
                    steps: lease.stage.steps.clone(),
                    timeout: lease.stage.timeout,
                    image: lease.stage.image.clone(),
                    resources: lease.stage.resources.clone(),
                    services: lease.stage.services.clone(),
                    source_url: lease.source_url.clone(),
                    repo: lease.repo.clone(),
                    pipeline: lease.pipeline.clone(),
                    commit: lease.commit.clone(),
                };
                let outcome = self
                    .config
                    .executor
                    .execute(job.clone(), &mut log, cancel.clone())
                    .await;
                if let AttemptOutcome::Error(message) = &outcome {
                    log.system(&format!("the executor could not run the stage: {message}"))
                        .await;
                }
                if verdict(
                    &lease.stage,
                    lease.failures,
                    &outcome,
                    cancel.is_cancelled(),
                ) == Verdict::Failed
                    && !lease.stage.rollback.is_empty()
                {
                    log.system("the stage failed for good: running its rollback steps")
                        .await;
                    let rollback = StageJob {
                        steps: lease.stage.rollback.clone(),
                        ..job
                    };
                    let rolled = self
                        .config
                        .executor
                        .execute(rollback, &mut log, CancellationToken::new())
                        .await;
                    log.system(&format!("rollback finished: {rolled:?}")).await;
                }
                outcome
            }
        };
        // The tail of a log that reached its limit goes up now, then the uploader ends.
        log.finish().await;
        drop(log);
        let _ = uploader.await;
        if let Err(e) = tokio::fs::remove_dir_all(&workspace).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %workspace.display(), error = %e, "cannot remove a workspace");
            }
        }
        outcome
    }

    /// Fills the workspace with the commit, as a tar from the server.
    async fn prepare(&self, source_tar: &str, workspace: &Path) -> Result<(), PrepareError> {
        if tokio::fs::try_exists(workspace).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(workspace)
                .await
                .map_err(PrepareError::Workspace)?;
        }
        tokio::fs::create_dir_all(workspace)
            .await
            .map_err(PrepareError::Workspace)?;
        if !self.config.needs_workspace {
            return Ok(());
        }
        let mut response = self
            .http
            .get(source_tar)
            .bearer_auth(&self.credential)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .map_err(PrepareError::Download)?;
        if !response.status().is_success() {
            return Err(PrepareError::Status(response.status()));
        }
        let mut tar = tokio::process::Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(workspace)
            .arg("-f")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(PrepareError::Spawn)?;
        let Some(mut stdin) = tar.stdin.take() else {
            return Err(PrepareError::Tar("tar has no stdin".into()));
        };
        while let Some(chunk) = response.chunk().await.map_err(PrepareError::Download)? {
            stdin
                .write_all(&chunk)
                .await
                .map_err(PrepareError::Unpack)?;
        }
        drop(stdin);
        let output = tar.wait_with_output().await.map_err(PrepareError::Unpack)?;
        if !output.status.success() {
            return Err(PrepareError::Tar(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ));
        }
        // Before the first step: the stage user gets the files (tar ran as us).
        self.config
            .executor
            .adopt_workspace(workspace)
            .await
            .map_err(PrepareError::Adopt)?;
        Ok(())
    }

    async fn heartbeat(
        self: Arc<Self>,
        lease: LeaseJob,
        url: String,
        every_ms: u64,
        cancel: CancellationToken,
        lost: Arc<AtomicBool>,
    ) {
        let mut interval = tokio::time::interval(Duration::from_millis(every_ms));
        interval.tick().await;
        loop {
            interval.tick().await;
            let answer = self
                .http
                .post(&url)
                .bearer_auth(&self.credential)
                .timeout(Duration::from_millis(every_ms.max(1000)))
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                    tracing::warn!(run = lease.run_id.get(), stage = %lease.stage.name, attempt = lease.attempt.get(),
                        "the server says this lease is lost: stopping the stage");
                    lost.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                Ok(r) if r.status().is_success() => {
                    if r.json::<HeartbeatResponse>().await.is_ok_and(|h| h.cancel) {
                        cancel.cancel();
                    }
                }
                Ok(r) => tracing::warn!(status = %r.status(), "heartbeat refused; retrying"),
                Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
            }
        }
    }

    /// Reports the end; retried while the server is unreachable (the lease would expire and the
    /// stage run again elsewhere if we never get through).
    async fn report(&self, lease: &LeaseJob, url: &str, outcome: &AttemptOutcome) {
        for delay in [0u64, 200, 1000, 2000, 5000, 10_000] {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let answer = self
                .http
                .post(url)
                .bearer_auth(&self.credential)
                .timeout(Duration::from_secs(30))
                .json(outcome)
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => return,
                Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                    tracing::warn!(run = lease.run_id.get(), stage = %lease.stage.name, "report refused: the lease is no longer ours");
                    return;
                }
                Ok(r) => tracing::warn!(status = %r.status(), "report refused; retrying"),
                Err(e) => tracing::warn!(error = %e, "cannot report; retrying"),
            }
        }
        tracing::error!(run = lease.run_id.get(), stage = %lease.stage.name, "giving up reporting; the lease will expire and the stage run again");
    }
}

/// The `error` text of a refusal's JSON body (empty when there is none).
async fn error_text(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body.get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("")
        .to_string()
}

/// An error and its causes, `: `-separated, for a log line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(source) = cause {
        text.push_str(": ");
        text.push_str(&source.to_string());
        cause = source.source();
    }
    text
}
