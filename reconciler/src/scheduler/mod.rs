//! The stage scheduler: a single task that repeatedly reads the active runs from the store,
//! decides (see [`plan`]) and writes the decisions in one transaction, then starts the
//! dispatched attempts on the executor. Everything it knows survives in the store; what it keeps
//! in memory (parsed specs, cancellation handles) is a cache or a handle on live processes.

mod attempt;
pub mod plan;
mod remote;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploylite_pipeline::Pipeline;
use deploylite_runner::{CancellationToken, Executor};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinSet;

use crate::paths::DataDir;
use crate::status::{RunStatus, StageStatus};
use crate::store::{now_ms, ActiveRun, Store, StoreError, LOCAL_RUNNER};
pub use plan::{plan_tick, PlanConfig, RunnerSlot, TickEffects};
pub use remote::{LeaseJob, RemoteOutcome, RunnerHub};

/// How the scheduler places stages.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The daemon's own runner (`local`), if enabled: stages it runs at once, and its labels.
    pub local: Option<RunnerSlot>,
    /// How long a remote runner's lease holds without a heartbeat.
    pub lease_ttl: Duration,
    /// A remote runner not heard from for this long is offline: it gets no new stages.
    pub runner_offline_after: Duration,
    /// Clone URLs by repository name, for executors that fetch the commit themselves.
    pub source_urls: HashMap<String, String>,
}

impl SchedulerConfig {
    /// Only the local runner, with `capacity` slots and `labels`.
    pub fn local(capacity: usize, labels: Vec<String>) -> SchedulerConfig {
        SchedulerConfig {
            local: Some(RunnerSlot {
                name: LOCAL_RUNNER.to_string(),
                labels,
                capacity,
            }),
            lease_ttl: Duration::from_secs(30),
            runner_offline_after: Duration::from_secs(60),
            source_urls: HashMap::new(),
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
    ) -> deploylite_runner::BoxFuture<'static, Result<(), String>>;
}

/// What the scheduler tells whoever listens (the `run` command, tests, later the forge reporter).
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerEvent {
    StageStarted {
        run_id: i64,
        stage: String,
        attempt: i64,
    },
    StageFinished {
        run_id: i64,
        stage: String,
        attempt: i64,
        status: StageStatus,
    },
    RunFinished {
        run_id: i64,
        status: RunStatus,
    },
}

/// When nothing wakes it, the scheduler still looks at the store this often (a safety net for
/// writes made by another process, e.g. a second daemon on the same PostgreSQL).
const IDLE_TICK: Duration = Duration::from_secs(2);

pub struct Scheduler {
    store: Store,
    data: DataDir,
    config: SchedulerConfig,
    hub: Arc<RunnerHub>,
    executor: Arc<dyn Executor>,
    workspaces: Arc<dyn WorkspaceSource>,
    wake: Arc<Notify>,
    events: broadcast::Sender<SchedulerEvent>,
    specs: Mutex<HashMap<i64, Arc<Pipeline>>>,
    running: Mutex<HashMap<(i64, String), CancellationToken>>,
    preparing: Mutex<HashSet<i64>>,
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
            echo_logs,
        })
    }

    /// A handle that makes the scheduler look at the store now.
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
        let mut runners: Vec<RunnerSlot> = self.config.local.iter().cloned().collect();
        for (name, labels, capacity) in self.store.online_runners(offline_before).await? {
            runners.push(RunnerSlot {
                name,
                labels,
                capacity: usize::try_from(capacity).unwrap_or(0),
            });
        }
        Ok(PlanConfig {
            runners,
            lease_ttl_ms: i64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(i64::MAX / 2),
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
                deploylite_runner::kill_orphans(
                    &workspaces,
                    run_id,
                    &stage,
                    u32::try_from(attempt).unwrap_or(0),
                )
            })
            .await
            .unwrap_or(0);
            tracing::warn!(run_id, stage = %i.stage, attempt, orphans_killed = killed,
                "stage attempt was interrupted by a daemon restart; it will run again");
        }
        Ok(interrupted.len())
    }

    /// Runs until `shutdown`. Attempts still running then are left marked running in the store,
    /// and their processes are stopped: the next start recovers them as new attempts.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        loop {
            let wakeup = match self.tick(&mut tasks, &shutdown).await {
                Ok(Some(effects)) => effects.next_wakeup,
                Ok(None) => continue, // made progress: look again at once
                Err(error) => {
                    tracing::error!(%error, "scheduler tick failed; retrying");
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
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tracing::info!(running = tasks.len(), "scheduler stopping");
        while tasks.join_next().await.is_some() {}
    }

    /// One pass. Returns `Ok(None)` when it changed something (so another pass may find more),
    /// or the effects of a pass that found nothing to do.
    async fn tick(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Result<Option<TickEffects>, StoreError> {
        let runs = self.store.load_active().await?;
        let specs = self.specs_for(&runs).await;
        let now = now_ms();
        let slots = self.runner_slots(now).await?;
        let (writes, effects) = plan_tick(&runs, &specs, &slots, now);
        self.store.apply_tick(&writes).await?;
        for expired in &writes.expire {
            tracing::warn!(run_id = expired.run_id, stage = %expired.stage, attempt = expired.attempt, runner = %expired.runner,
                "lease expired: the stage goes back to the queue");
        }

        for (run_id, stage) in &effects.cancel_running {
            if let Some(token) = lock(&self.running).get(&(*run_id, stage.clone())) {
                token.cancel();
            }
        }
        for run_id in &effects.prepare_workspace {
            if let Some(run) = runs.iter().find(|r| r.id == *run_id) {
                self.prepare_workspace(run, tasks);
            }
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
        let progressed = !writes.is_empty();
        Ok(if progressed { None } else { Some(effects) })
    }

    async fn specs_for(&self, runs: &[ActiveRun]) -> HashMap<i64, Arc<Pipeline>> {
        let missing: Vec<i64> = {
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
                Err(error) => tracing::error!(run_id = id, %error, "cannot read a run's pipeline"),
            }
        }
        let cache = lock(&self.specs);
        runs.iter()
            .filter_map(|r| cache.get(&r.id).map(|s| (r.id, s.clone())))
            .collect()
    }

    fn prepare_workspace(self: &Arc<Self>, run: &ActiveRun, tasks: &mut JoinSet<()>) {
        if !lock(&self.preparing).insert(run.id) {
            return;
        }
        let this = self.clone();
        let (run_id, repo, commit) = (run.id, run.repo.clone(), run.commit.clone());
        tasks.spawn(async move {
            let dir = this.data.workspace(run_id);
            // The tick that asked for this may have read the run before an earlier preparation
            // finished: never rewrite a workspace that stages may already be using.
            match this.store.workspace_ready(run_id).await {
                Ok(true) => {
                    lock(&this.preparing).remove(&run_id);
                    this.wake.notify_one();
                    return;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(run_id, %error, "cannot read whether a workspace is ready");
                    lock(&this.preparing).remove(&run_id);
                    return;
                }
            }
            let result = async {
                if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                    // Half-written by a daemon that died while preparing it.
                    tokio::fs::remove_dir_all(&dir)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                this.workspaces.prepare(&repo, &commit, &dir).await
            }
            .await;
            let recorded = match result {
                Ok(()) => {
                    this.store
                        .mark_workspace_ready(run_id, &dir.display().to_string())
                        .await
                }
                Err(message) => {
                    tracing::error!(run_id, %message, "cannot prepare the workspace");
                    this.store
                        .fail_run(run_id, &format!("cannot prepare the workspace: {message}"))
                        .await
                }
            };
            if let Err(error) = recorded {
                tracing::error!(run_id, %error, "cannot record the workspace");
            }
            lock(&this.preparing).remove(&run_id);
            this.wake.notify_one();
        });
    }
}

/// Poisoning only means another task panicked while holding the lock; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
