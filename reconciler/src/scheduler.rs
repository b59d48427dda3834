//! The stage scheduler: a single task that, on each tick, collects what ended since the last one
//! (attempts, workspaces), decides what follows (see [`plan`]) and writes both in one
//! transaction (group commit), then starts the dispatched attempts on the executor. Everything
//! it knows survives in the store; what it keeps in memory (the active runs, see [`active`];
//! parsed specs; cancellation handles) is a write-through cache or a handle on live processes.

pub mod active;
mod attempt;
pub mod plan;
mod remote;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploylite_model::{Attempt, RunId, StageName};
use deploylite_pipeline::Pipeline;
use deploylite_runner::{CancellationToken, Executor};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinSet;

use crate::paths::DataDir;
use crate::status::{RunStatus, StageStatus};
use crate::store::{now_ms, ActiveRun, AttemptResult, Store, StoreError, TickTx, LOCAL_RUNNER};
pub use plan::{plan_tick, Placement, PlanConfig, TickEffects};
pub use remote::RunnerHub;

/// How the scheduler places stages.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The daemon's own runner (`local`), if enabled: stages it runs at once, and its labels.
    pub local: Option<Placement>,
    /// How long a remote runner's lease holds without a heartbeat.
    pub lease_ttl: Duration,
    /// A remote runner not heard from for this long is offline: it gets no new stages.
    pub runner_offline_after: Duration,
    /// Clone URLs by repository name, for executors that fetch the commit themselves.
    pub source_urls: HashMap<String, String>,
    /// Runs from forks go only to runners offering one of these labels (`untrusted.labels`).
    pub untrusted_labels: Vec<String>,
    /// The most one attempt's log holds (`limits.log_bytes`), here and on remote runners.
    pub log_bytes: u64,
}

impl SchedulerConfig {
    /// Only the local runner, with `capacity` slots and `labels`.
    pub fn local(capacity: usize, labels: Vec<String>) -> SchedulerConfig {
        SchedulerConfig {
            local: Some(Placement {
                name: LOCAL_RUNNER.to_string(),
                labels,
                capacity,
            }),
            lease_ttl: Duration::from_secs(30),
            runner_offline_after: Duration::from_secs(60),
            source_urls: HashMap::new(),
            untrusted_labels: Vec::new(),
            log_bytes: deploylite_runner::DEFAULT_LOG_BYTES,
        }
    }
}

/// Prepares a run's workspace: writes the commit's files into an empty directory.
pub trait WorkspaceSource: Send + Sync + 'static {
    fn prepare(
        &self,
        repo: &str,
        commit: &str,
        dir: &Path,
    ) -> deploylite_runner::BoxFuture<'static, Result<(), WorkspaceError>>;
}

/// Why a run's workspace could not be prepared; the run fails with this message.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("repository `{0}` is no longer configured")]
    RepoGone(String),
    #[error(transparent)]
    Checkout(#[from] crate::watcher::ReconcileError),
    /// A source whose runs come with their workspace, saying so.
    #[error("{0}")]
    NotProvided(&'static str),
    /// The half-written directory a killed daemon left could not be removed.
    #[error(transparent)]
    Clear(std::io::Error),
    /// The stage user could not be given the checkout.
    #[error(transparent)]
    Adopt(#[from] deploylite_runner::sandbox::SandboxError),
}

/// What the scheduler tells whoever listens (the `run` command, tests, later the forge reporter).
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerEvent {
    RunStarted {
        run_id: RunId,
    },
    StageStarted {
        run_id: RunId,
        stage: StageName,
        attempt: Attempt,
    },
    StageFinished {
        run_id: RunId,
        stage: StageName,
        attempt: Attempt,
        status: StageStatus,
    },
    RunFinished {
        run_id: RunId,
        status: RunStatus,
    },
    /// A queued stage that will not run (its needs failed, its `if:` is false, its run ended).
    StageSkipped {
        run_id: RunId,
        stage: StageName,
        status: StageStatus,
    },
}

/// When nothing wakes it, the scheduler still reads the store this often (a safety net for
/// writes made by another process, e.g. a second daemon on the same PostgreSQL).
const IDLE_TICK: Duration = Duration::from_secs(2);

/// Something that ended outside the scheduler task and is written by its next tick, in the
/// same transaction as what follows from it.
enum Completion {
    /// A stage attempt ended. `reply` (remote runners) learns whether the result was recorded.
    Attempt {
        result: AttemptResult,
        reply: Option<oneshot::Sender<bool>>,
    },
    WorkspaceReady {
        run_id: RunId,
        path: String,
    },
    WorkspaceFailed {
        run_id: RunId,
        message: String,
    },
}

/// What the scheduler task keeps between ticks.
struct LoopState {
    /// The active runs as the store has them after our own writes; None: read them again.
    active: Option<Vec<ActiveRun>>,
    runners: Option<PlanConfig>,
    loaded_at: Instant,
    /// Collected but not committed yet: kept until a tick's commit succeeds.
    pending: Vec<Completion>,
}

impl LoopState {
    fn invalidate(&mut self) {
        self.active = None;
        self.runners = None;
    }
}

pub struct Scheduler {
    store: Store,
    data: DataDir,
    config: SchedulerConfig,
    hub: Arc<RunnerHub>,
    executor: Arc<dyn Executor>,
    workspaces: Arc<dyn WorkspaceSource>,
    wake: Arc<Notify>,
    events: broadcast::Sender<SchedulerEvent>,
    specs: Mutex<HashMap<RunId, Arc<Pipeline>>>,
    running: Mutex<HashMap<(RunId, StageName), CancellationToken>>,
    preparing: Mutex<HashSet<RunId>>,
    completions: mpsc::UnboundedSender<Completion>,
    /// The receiving end, taken by [`Scheduler::run`].
    completions_rx: Mutex<Option<mpsc::UnboundedReceiver<Completion>>>,
    /// Whether [`Scheduler::run`] is collecting completions (else they are written directly).
    collecting: AtomicBool,
    /// Echo stage logs to stdout (the `run` command).
    echo_logs: bool,
}

impl Scheduler {
    pub fn new(
        store: Store,
        data: DataDir,
        config: SchedulerConfig,
        executor: Arc<dyn Executor>,
        workspaces: Arc<dyn WorkspaceSource>,
    ) -> Arc<Scheduler> {
        Self::build(store, data, config, executor, workspaces, false)
    }

    /// Like [`Scheduler::new`], and every stage's log lines are also printed to stdout as
    /// `[stage] line` (the `run` command).
    pub fn echoing_logs(
        store: Store,
        data: DataDir,
        config: SchedulerConfig,
        executor: Arc<dyn Executor>,
        workspaces: Arc<dyn WorkspaceSource>,
    ) -> Arc<Scheduler> {
        Self::build(store, data, config, executor, workspaces, true)
    }

    fn build(
        store: Store,
        data: DataDir,
        config: SchedulerConfig,
        executor: Arc<dyn Executor>,
        workspaces: Arc<dyn WorkspaceSource>,
        echo_logs: bool,
    ) -> Arc<Scheduler> {
        let (events, _) = broadcast::channel(1024);
        let (completions, completions_rx) = mpsc::unbounded_channel();
        Arc::new(Scheduler {
            store,
            data,
            config,
            hub: Arc::new(RunnerHub::default()),
            executor,
            workspaces,
            wake: Arc::new(Notify::new()),
            events,
            specs: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            preparing: Mutex::new(HashSet::new()),
            completions,
            completions_rx: Mutex::new(Some(completions_rx)),
            collecting: AtomicBool::new(false),
            echo_logs,
        })
    }

    /// A handle that makes the scheduler read the store again and act now. Whoever writes runs
    /// or stages outside the scheduler (new runs, cancellations, runners) must use it.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SchedulerEvent> {
        self.events.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// Where remote runners wait for the leases the scheduler assigns them.
    pub fn hub(&self) -> Arc<RunnerHub> {
        self.hub.clone()
    }

    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    /// The runners that can take stages now: the local one and the remote ones online.
    async fn runner_slots(&self, now: i64) -> Result<PlanConfig, StoreError> {
        let offline_before = now
            - i64::try_from(self.config.runner_offline_after.as_millis()).unwrap_or(i64::MAX / 2);
        let mut runners: Vec<Placement> = self.config.local.iter().cloned().collect();
        for (name, labels, capacity) in self.store.online_runners(offline_before).await? {
            runners.push(Placement {
                name,
                labels,
                capacity: usize::try_from(capacity).unwrap_or(0),
            });
        }
        Ok(PlanConfig {
            runners,
            lease_ttl_ms: i64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(i64::MAX / 2),
            untrusted_labels: self.config.untrusted_labels.clone(),
        })
    }

    /// Closes the attempts a previous daemon left running and kills what is left of their
    /// processes. Call once, before [`Scheduler::run`].
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let interrupted = self.store.recover_interrupted().await?;
        for i in &interrupted {
            let (run_id, stage, attempt) = (i.run_id, i.stage.clone(), i.attempt);
            let workspaces = self.data.workspaces();
            let killed = tokio::task::spawn_blocking(move || {
                deploylite_runner::kill_orphans(&workspaces, run_id, &stage, attempt)
            })
            .await
            .unwrap_or(0);
            tracing::warn!(run_id = run_id.get(), stage = %i.stage, attempt = attempt.get(), orphans_killed = killed,
                "stage attempt was interrupted by a daemon restart; it will run again");
            self.close_attempt_log(
                run_id,
                &i.stage,
                attempt,
                "interrupted (the daemon stopped while it ran; the stage runs again)",
            )
            .await;
        }
        Ok(interrupted.len())
    }

    /// Runs until `shutdown`. Attempts still running then are left marked running in the store,
    /// and their processes are stopped: the next start recovers them as new attempts.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(mut completions) = lock(&self.completions_rx).take() else {
            tracing::error!("the scheduler is already running");
            return;
        };
        self.collecting.store(true, Ordering::SeqCst);
        let mut state = LoopState {
            active: None,
            runners: None,
            loaded_at: Instant::now(),
            pending: Vec::new(),
        };
        let mut tasks = JoinSet::new();
        loop {
            while let Ok(completion) = completions.try_recv() {
                state.pending.push(completion);
            }
            let wakeup = match self.tick(&mut state, &mut tasks, &shutdown).await {
                Ok(Some(effects)) => effects.next_wakeup,
                Ok(None) => continue, // made progress: look again at once
                Err(error) => {
                    tracing::error!(%error, "scheduler tick failed; retrying");
                    state.invalidate();
                    Some(now_ms() + 1000)
                }
            };
            while tasks.try_join_next().is_some() {}
            let sleep = wakeup
                .map(|at| {
                    Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(IDLE_TICK)
                })
                .unwrap_or(IDLE_TICK);
            tokio::select! {
                _ = self.wake.notified() => state.invalidate(),
                Some(completion) = completions.recv() => state.pending.push(completion),
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tracing::info!(running = tasks.len(), "scheduler stopping");
        while tasks.join_next().await.is_some() {}
        // What ended before the stop is recorded; attempts cut short by it were not sent and
        // stay open for recovery.
        self.collecting.store(false, Ordering::SeqCst);
        completions.close();
        while let Ok(completion) = completions.try_recv() {
            state.pending.push(completion);
        }
        if let Err(error) = self.commit_completions(&mut state).await {
            tracing::error!(%error, "cannot record the last attempt ends; they run again after a restart");
        }
    }

    /// Hands something that ended to the scheduler task, or writes it at once when that task
    /// is not running (then the next start reads it from the store). A remote report learns
    /// through its `reply` whether it was recorded.
    async fn complete(&self, completion: Completion) -> Result<(), StoreError> {
        let completion = if self.collecting.load(Ordering::SeqCst) {
            match self.completions.send(completion) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(completion)) => completion,
            }
        } else {
            completion
        };
        let mut tx = self.store.begin_tick().await?;
        let applied = write_one(&mut tx, &completion).await?;
        tx.commit().await?;
        if let Completion::Attempt {
            reply: Some(reply), ..
        } = completion
        {
            let _ = reply.send(applied);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// One pass. Returns `Ok(None)` when it changed something (so another pass may find more),
    /// or the effects of a pass that found nothing to do.
    async fn tick(
        self: &Arc<Self>,
        state: &mut LoopState,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Result<Option<TickEffects>, StoreError> {
        let now = now_ms();
        if state.loaded_at.elapsed() >= IDLE_TICK {
            state.invalidate();
        }
        let fresh = state.active.is_none();
        if fresh {
            state.active = Some(self.store.load_active().await?);
            state.runners = Some(self.runner_slots(now).await?);
            state.loaded_at = Instant::now();
        }
        let (Some(runs), Some(slots)) = (state.active.as_mut(), state.runners.as_ref()) else {
            return Ok(None);
        };

        // Before the transaction opens: reading a new run's spec needs a connection of its own,
        // and SQLite's pool has exactly one (the transaction's).
        let specs = self.specs_for(runs).await;
        let mut tx: Option<TickTx<'static>> = None;
        let mut outcomes = Vec::with_capacity(state.pending.len());
        let mut consistent = true;
        for completion in &state.pending {
            let tx = match &mut tx {
                Some(tx) => tx,
                None => tx.insert(self.store.begin_tick().await?),
            };
            let applied = write_one(tx, completion).await?;
            match completion {
                Completion::Attempt { result, .. } => {
                    // Our copy must agree with the store on which attempt was running.
                    consistent &= applied == active::apply_result(runs, result);
                }
                Completion::WorkspaceReady { run_id, path } => {
                    active::apply_workspace_ready(runs, *run_id, path)
                }
                Completion::WorkspaceFailed { run_id, .. } => {
                    active::apply_run_failed(runs, *run_id)
                }
            }
            outcomes.push(applied);
        }
        if !consistent {
            // Record the ends, then decide on a fresh read.
            if let Some(tx) = tx {
                tx.commit().await?;
            }
            self.after_completions(state, &outcomes);
            state.invalidate();
            return Ok(None);
        }

        let (writes, effects) = plan_tick(runs, &specs, slots, now);
        if !writes.expire.is_empty() && !fresh {
            // A lease may have been renewed since our copy was read: check on a fresh one.
            if let Some(tx) = tx {
                tx.commit().await?;
            }
            self.after_completions(state, &outcomes);
            state.invalidate();
            return Ok(None);
        }
        // The checkout overlaps this tick's commit: it is the slow part of starting a run.
        for run_id in &effects.prepare_workspace {
            if let Some(run) = runs.iter().find(|r| r.id == *run_id) {
                self.prepare_workspace(run, tasks);
            }
        }
        let mut as_expected = true;
        if !writes.is_empty() {
            let tx = match &mut tx {
                Some(tx) => tx,
                None => tx.insert(self.store.begin_tick().await?),
            };
            as_expected = tx.apply(&writes).await?;
        }
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        let progressed = !writes.is_empty() || !state.pending.is_empty();
        self.after_completions(state, &outcomes);
        let Some(runs) = state.active.as_mut() else {
            return Ok(None);
        };

        for expired in &writes.expire {
            tracing::warn!(run_id = expired.run_id.get(), stage = %expired.stage, attempt = expired.attempt.get(), runner = %expired.runner,
                "lease expired: the stage goes back to the queue");
            self.close_attempt_log(
                expired.run_id,
                &expired.stage,
                expired.attempt,
                &format!(
                    "interrupted (lease expired: runner `{}` stopped renewing it; the stage runs again)",
                    expired.runner
                ),
            )
            .await;
        }
        for (run_id, stage) in &effects.cancel_running {
            if let Some(token) = lock(&self.running).get(&(*run_id, stage.clone())) {
                token.cancel();
            }
        }
        for run_id in &writes.start_runs {
            let _ = self
                .events
                .send(SchedulerEvent::RunStarted { run_id: *run_id });
        }
        for skip in &writes.skip {
            let _ = self.events.send(SchedulerEvent::StageSkipped {
                run_id: skip.run_id,
                stage: skip.stage.clone(),
                status: skip.status,
            });
        }
        for finish in &writes.finish {
            lock(&self.specs).remove(&finish.run_id);
            let _ = self.events.send(SchedulerEvent::RunFinished {
                run_id: finish.run_id,
                status: finish.status,
            });
        }
        for dispatch in writes.dispatch.iter().cloned() {
            let _ = self.events.send(SchedulerEvent::StageStarted {
                run_id: dispatch.run_id,
                stage: dispatch.stage.clone(),
                attempt: dispatch.attempt,
            });
            if dispatch.runner != LOCAL_RUNNER {
                self.hub.notify(&dispatch.runner);
                continue;
            }
            let Some(run) = runs.iter().find(|r| r.id == dispatch.run_id) else {
                continue;
            };
            let Some(spec) = specs.get(&dispatch.run_id).cloned() else {
                continue;
            };
            let failures = run
                .stages
                .iter()
                .find(|s| s.name == dispatch.stage)
                .map_or(0, |s| s.failures);
            let token = shutdown.child_token();
            lock(&self.running).insert((dispatch.run_id, dispatch.stage.clone()), token.clone());
            let context = attempt::AttemptContext {
                run: attempt::RunInfo::from(run),
                spec,
                dispatch,
                failures,
                cancel: token,
                shutdown: shutdown.clone(),
            };
            tasks.spawn(self.clone().run_attempt(context));
        }
        if as_expected && writes.expire.is_empty() {
            active::apply_writes(runs, &writes);
        } else {
            state.invalidate();
        }
        Ok(if progressed { None } else { Some(effects) })
    }

    /// After the commit that recorded `state.pending`: answers and announces them.
    fn after_completions(&self, state: &mut LoopState, outcomes: &[bool]) {
        for (completion, applied) in state.pending.drain(..).zip(outcomes) {
            match completion {
                Completion::Attempt { result, reply } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(*applied);
                    }
                    if !applied {
                        tracing::warn!(run_id = result.run_id.get(), stage = %result.stage, attempt = result.attempt.get(),
                            "attempt result ignored: the attempt is no longer current");
                        continue;
                    }
                    let _ = self.events.send(SchedulerEvent::StageFinished {
                        run_id: result.run_id,
                        stage: result.stage,
                        attempt: result.attempt,
                        status: result.attempt_status,
                    });
                }
                Completion::WorkspaceReady { run_id, .. } => {
                    lock(&self.preparing).remove(&run_id);
                }
                Completion::WorkspaceFailed { run_id, .. } => {
                    lock(&self.preparing).remove(&run_id);
                    lock(&self.specs).remove(&run_id);
                    let _ = self.events.send(SchedulerEvent::RunFinished {
                        run_id,
                        status: RunStatus::Failed,
                    });
                }
            }
        }
    }

    /// Writes what is pending without deciding anything more (the scheduler is stopping).
    async fn commit_completions(&self, state: &mut LoopState) -> Result<(), StoreError> {
        if state.pending.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin_tick().await?;
        let mut outcomes = Vec::with_capacity(state.pending.len());
        for completion in &state.pending {
            outcomes.push(write_one(&mut tx, completion).await?);
        }
        tx.commit().await?;
        self.after_completions(state, &outcomes);
        Ok(())
    }

    /// A run's pipeline, from the cache the ticks fill (parsing a large spec for every lease
    /// and every report would cost more than the rest of the request).
    async fn spec_of(&self, run_id: RunId) -> Result<Arc<Pipeline>, StoreError> {
        if let Some(spec) = lock(&self.specs).get(&run_id) {
            return Ok(spec.clone());
        }
        Ok(Arc::new(self.store.run_spec(run_id).await?))
    }

    async fn specs_for(&self, runs: &[ActiveRun]) -> HashMap<RunId, Arc<Pipeline>> {
        let missing: Vec<RunId> = {
            let cache = lock(&self.specs);
            runs.iter()
                .filter(|r| !cache.contains_key(&r.id))
                .map(|r| r.id)
                .collect()
        };
        for id in missing {
            match self.store.run_spec(id).await {
                Ok(spec) => {
                    lock(&self.specs).insert(id, Arc::new(spec));
                }
                Err(error) => {
                    tracing::error!(run_id = id.get(), %error, "cannot read a run's pipeline")
                }
            }
        }
        let cache = lock(&self.specs);
        runs.iter()
            .filter_map(|r| cache.get(&r.id).map(|s| (r.id, s.clone())))
            .collect()
    }

    fn prepare_workspace(self: &Arc<Self>, run: &ActiveRun, tasks: &mut JoinSet<()>) {
        // Cleared by the tick that records the result, so no tick in between prepares it twice.
        if !lock(&self.preparing).insert(run.id) {
            return;
        }
        let this = self.clone();
        let (run_id, repo, commit) = (run.id, run.repo.clone(), run.commit.clone());
        tasks.spawn(async move {
            let dir = this.data.workspace(run_id);
            let result = async {
                if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                    // Half-written by a daemon that died while preparing it.
                    tokio::fs::remove_dir_all(&dir)
                        .await
                        .map_err(WorkspaceError::Clear)?;
                }
                this.workspaces.prepare(&repo, &commit, &dir).await?;
                // Before any stage can run in it: the stage user gets the checkout.
                this.executor
                    .adopt_workspace(&dir)
                    .await
                    .map_err(WorkspaceError::from)
            }
            .await;
            let completion = match result {
                Ok(()) => Completion::WorkspaceReady {
                    run_id,
                    path: dir.display().to_string(),
                },
                Err(message) => {
                    let message = message.to_string();
                    tracing::error!(run_id = run_id.get(), %message, "cannot prepare the workspace");
                    Completion::WorkspaceFailed {
                        run_id,
                        message: format!("cannot prepare the workspace: {message}"),
                    }
                }
            };
            if let Err(error) = this.complete(completion).await {
                tracing::error!(run_id = run_id.get(), %error, "cannot record the workspace");
                lock(&this.preparing).remove(&run_id);
            }
        });
    }
}

/// Writes one completion in `tx`; whether it changed anything.
async fn write_one(tx: &mut TickTx<'_>, completion: &Completion) -> Result<bool, StoreError> {
    match completion {
        Completion::Attempt { result, .. } => tx.finish_attempt(result).await,
        Completion::WorkspaceReady { run_id, path } => {
            tx.mark_workspace_ready(*run_id, path).await?;
            Ok(true)
        }
        Completion::WorkspaceFailed { run_id, message } => {
            tx.fail_run(*run_id, message).await?;
            Ok(true)
        }
    }
}

/// Poisoning only means another task panicked while holding the lock; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
