//! `deploylite runner`: the runner agent. It registers once (trading a registration token for
//! its own credential, kept in the state directory), then long-polls the server for leases,
//! runs each on its executor, streams the log in chunks, renews the lease with heartbeats (which
//! also deliver cancellations), and reports the end. On SIGTERM it takes no new work, lets
//! running stages finish within the grace period, and hands back the rest. On start it kills
//! the stage processes a previous incarnation with the same work directory left running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use deploylite_reconciler::scheduler::{LeaseJob, RemoteOutcome};
use deploylite_runner::outcome::{verdict, Verdict};
use deploylite_runner::{CancellationToken, Executor, StageJob, StageLog};
use deploylite_server::runners::{
    HeartbeatResponse, PollRequest, PollResponse, RegisterRequest, RegisterResponse,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

mod url_path;

use url_path::path_segment;

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
/// Log lines are uploaded at least this often while a stage runs.
const LOG_FLUSH: Duration = Duration::from_millis(200);
const LOG_CHUNK_BYTES: usize = 256 * 1024;

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
    stages: Mutex<HashMap<(i64, String, i64), CancellationToken>>,
}

pub async fn run(mut config: AgentConfig) -> Result<ExitCode> {
    crate::isolation::harden_process();
    let base = config.server.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")?;
    tokio::fs::create_dir_all(&config.work_dir)
        .await
        .with_context(|| format!("cannot create the work dir {}", config.work_dir.display()))?;
    // Workspaces (and so every stage's DEPLOYLITE_WORKSPACE) are absolute paths, so that the
    // next start finds this incarnation's stages whatever directory it is started from.
    config.work_dir = std::path::absolute(&config.work_dir)
        .with_context(|| format!("cannot resolve the work dir {}", config.work_dir.display()))?;
    kill_leftover_stages(&config.work_dir).await?;
    let credential = credential(&http, &base, &config).await?;
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

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            crate::serve::wait_for_signal().await;
            shutdown.cancel();
        }
    });
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
                    tracing::warn!(error = %format!("{error:#}"), "cannot poll the server; retrying");
                }
                if let Some(refused) = error.downcast_ref::<Refused>() {
                    bail!("the server refused this runner's poll: {}", refused.0);
                }
                if let Some(refused) = error.downcast_ref::<Unauthorized>() {
                    bail!(
                        "{}",
                        stale_credential_message(
                            &agent.base,
                            &credential_path(&agent.config),
                            &refused.0
                        )
                    );
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
    Ok(ExitCode::SUCCESS)
}

/// Kills what a previous incarnation of this runner (same work directory) left running: after a
/// `kill -9` its stage processes, in process groups of their own, outlive it. Their leases are
/// lost (the server requeues the stages when the leases lapse), so nothing will ever collect
/// their results. Done before taking work, so no stage of ours can be among them.
async fn kill_leftover_stages(work_dir: &Path) -> Result<()> {
    let dir = work_dir.to_path_buf();
    // A scan of /proc: blocking file reads, off the runtime.
    let killed = tokio::task::spawn_blocking(move || deploylite_runner::kill_stages_under(&dir))
        .await
        .context("the sweep for leftover stage processes failed")?;
    if killed > 0 {
        tracing::warn!(killed, work_dir = %work_dir.display(),
            "killed stage processes a previous run of this runner left behind");
    } else {
        tracing::info!(killed, work_dir = %work_dir.display(), "no leftover stage processes");
    }
    Ok(())
}

#[derive(Debug)]
struct Unauthorized(String);

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unauthorized {}

/// The server refused what a poll offered (400/409): the runner's setup disagrees with its
/// registration.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn credential_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join(format!("{}.credential", config.name))
}

/// What to do when the server refuses the stored credential: most often its data was reset
/// (a new database knows no runner), sometimes an admin revoked the runner.
fn stale_credential_message(base: &str, path: &Path, reason: &str) -> String {
    format!(
        "the server at {base} refused this runner's credential ({reason}), read from {}. If the \
         server's data was reset, register again: start the runner with --reregister and a \
         registration token (--token-file FILE or DEPLOYLITE_RUNNER_TOKEN); that file is \
         replaced. A revoked runner cannot register again under its name: use another --name",
        path.display()
    )
}

/// The credential kept from an earlier registration, or a new one from registering now (always
/// with `reregister`).
async fn credential(http: &reqwest::Client, base: &str, config: &AgentConfig) -> Result<String> {
    let path = credential_path(config);
    crate::isolation::warn_if_readable_by_others(std::slice::from_ref(&path));
    let stored = tokio::fs::read_to_string(&path)
        .await
        .map(|text| text.trim().to_string())
        .ok()
        .filter(|text| !text.is_empty());
    if let (Some(stored), false) = (&stored, config.reregister) {
        return Ok(stored.clone());
    }
    let Some(token) = &config.registration_token else {
        if config.reregister {
            bail!("--reregister needs a registration token: give it with --token-file or DEPLOYLITE_RUNNER_TOKEN");
        }
        bail!(
            "runner `{}` is not registered yet ({} does not exist): give a registration token with --token-file or DEPLOYLITE_RUNNER_TOKEN",
            config.name,
            path.display()
        );
    };
    let mut request = http.post(format!("{base}/api/v1/runners/register"));
    // A server that still knows this runner lets it replace its own credential; one whose data
    // was reset ignores a credential it does not know.
    if let Some(stored) = &stored {
        request = request.bearer_auth(stored);
    }
    let response = request
        .json(&RegisterRequest {
            token: token.clone(),
            name: config.name.clone(),
            labels: config.labels.clone(),
            capacity: i64::try_from(config.capacity).unwrap_or(i64::MAX),
            executor: config.executor_name.clone(),
        })
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {base}"))?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        bail!(
            "registration refused ({status}): {}",
            body.get("error").and_then(|e| e.as_str()).unwrap_or("")
        );
    }
    let registered: RegisterResponse = response
        .json()
        .await
        .context("unexpected registration answer")?;
    write_private(&path, &registered.credential).await?;
    tracing::info!(runner = %config.name, credential_file = %path.display(),
        replaced = stored.is_some(), "registered with the server");
    Ok(registered.credential)
}

/// Writes a secret readable by this user only.
async fn write_private(path: &Path, content: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    let mut file = options
        .open(path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode through `mode(0o600)` above.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .await
        .with_context(|| format!("cannot make {} private", path.display()))?;
    file.write_all(content.as_bytes()).await?;
    file.flush().await?;
    Ok(())
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
    fn new(base: &str, lease: &LeaseJob) -> Result<LeaseUrls> {
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
    async fn poll(&self, free: usize) -> Result<PollResponse> {
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
            .context("poll")?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let reason = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
            return Err(Unauthorized(format!("401 {reason}").trim_end().to_string()).into());
        }
        let status = response.status();
        if status == reqwest::StatusCode::CONFLICT || status == reqwest::StatusCode::BAD_REQUEST {
            // What this runner offers is refused (e.g. labels other than the registered ones):
            // asking again cannot help.
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let reason = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
            return Err(Refused(format!("poll refused ({status}): {reason}")).into());
        }
        if !status.is_success() {
            bail!("poll answered {status}");
        }
        response.json().await.context("unexpected poll answer")
    }

    async fn run_lease(self: Arc<Self>, lease: LeaseJob, heartbeat_ms: u64) {
        match LeaseUrls::new(&self.base, &lease) {
            Ok(urls) => self.clone().hold_lease(lease, urls, heartbeat_ms).await,
            // Nothing can be reported on such a lease: it lapses on the server.
            Err(error) => tracing::error!(run = lease.run_id, stage = %lease.stage.name,
                error = %format!("{error:#}"), "cannot address this lease on the server; leaving it"),
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
                RemoteOutcome::HandedBack
            } else {
                RemoteOutcome::from_outcome(&outcome)
            };
            self.report(&lease, &urls.complete, &reported).await;
        }
    }

    async fn execute(
        &self,
        lease: &LeaseJob,
        urls: &LeaseUrls,
        cancel: CancellationToken,
        lost: Arc<AtomicBool>,
    ) -> deploylite_runner::StageOutcome {
        use deploylite_runner::StageOutcome;
        let workspace = self.config.work_dir.join(format!(
            "{}-{}-{}",
            lease.run_id, lease.stage.name, lease.attempt
        ));
        let (tx, rx) = mpsc::channel::<String>(4096);
        let uploader = tokio::spawn(upload_log(
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
                let message = format!("cannot prepare the workspace: {error:#}");
                log.system(&message).await;
                StageOutcome::Error(message)
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
                    stage: lease.stage.name.clone(),
                    attempt: u32::try_from(lease.attempt).unwrap_or(u32::MAX),
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
                if let StageOutcome::Error(message) = &outcome {
                    log.system(&format!("the executor could not run the stage: {message}"))
                        .await;
                }
                let failures = u32::try_from(lease.failures).unwrap_or(u32::MAX);
                if verdict(&lease.stage, failures, &outcome, cancel.is_cancelled())
                    == Verdict::Failed
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
    async fn prepare(&self, source_tar: &str, workspace: &Path) -> Result<()> {
        if tokio::fs::try_exists(workspace).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(workspace).await?;
        }
        tokio::fs::create_dir_all(workspace).await?;
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
            .context("downloading the commit")?;
        if !response.status().is_success() {
            bail!(
                "the server answered {} for the commit's archive",
                response.status()
            );
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
            .context("cannot run tar")?;
        let mut stdin = tar.stdin.take().context("tar has no stdin")?;
        while let Some(chunk) = response.chunk().await.context("downloading the commit")? {
            stdin
                .write_all(&chunk)
                .await
                .context("unpacking the commit")?;
        }
        drop(stdin);
        let output = tar
            .wait_with_output()
            .await
            .context("unpacking the commit")?;
        if !output.status.success() {
            bail!(
                "tar failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        // Before the first step: the stage user gets the files (tar ran as us).
        self.config
            .executor
            .adopt_workspace(workspace)
            .await
            .context("handing the workspace to the stage user")?;
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
                    tracing::warn!(run = lease.run_id, stage = %lease.stage.name, attempt = lease.attempt,
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
    async fn report(&self, lease: &LeaseJob, url: &str, outcome: &RemoteOutcome) {
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
                    tracing::warn!(run = lease.run_id, stage = %lease.stage.name, "report refused: the lease is no longer ours");
                    return;
                }
                Ok(r) => tracing::warn!(status = %r.status(), "report refused; retrying"),
                Err(e) => tracing::warn!(error = %e, "cannot report; retrying"),
            }
        }
        tracing::error!(run = lease.run_id, stage = %lease.stage.name, "giving up reporting; the lease will expire and the stage run again");
    }
}

/// Batches log lines into chunks, uploaded every LOG_FLUSH or LOG_CHUNK_BYTES.
async fn upload_log(
    http: reqwest::Client,
    url: String,
    credential: String,
    mut rx: mpsc::Receiver<String>,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let mut buffer = String::new();
    let mut open = true;
    while open {
        let deadline = tokio::time::sleep(LOG_FLUSH);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(line) => {
                        buffer.push_str(&line);
                        if buffer.len() >= LOG_CHUNK_BYTES { break; }
                    }
                    None => { open = false; break; }
                },
                _ = &mut deadline => break,
            }
        }
        if buffer.is_empty() {
            continue;
        }
        let chunk = std::mem::take(&mut buffer);
        for delay in [0u64, 200, 1000, 3000] {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            match http
                .post(&url)
                .bearer_auth(&credential)
                .timeout(Duration::from_secs(30))
                .body(chunk.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                    lost.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                Ok(r) => tracing::warn!(status = %r.status(), "log upload refused; retrying"),
                Err(e) => tracing::warn!(error = %e, "log upload failed; retrying"),
            }
        }
    }
}
