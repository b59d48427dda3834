//! The environment controller: the GitOps half (docs/environments.md). For each repository it
//! reads the environment files of the default branch, works out each environment's desired
//! version, records the deployments that are missing (exactly once: attempt 1 of a desired
//! version, a unique key), moves them through their state machine by the runs that carry them
//! out, and runs drift checks.
//!
//! A pass is idempotent: it reads the store, decides (`gates.rs` is pure), then writes in one
//! transaction whose every deployment move is guarded by the status it expects. A crash
//! anywhere leaves either the writes of a whole pass or none, and the next pass (after a
//! restart too) takes over from the store.

mod gates;
mod launch;
mod versions;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploylite_pipeline::{Diagnostic, Environment, OnDrift, RollbackMode};
use deploylite_policy::{Gate, Now, Policies, PolicySources};
use deploylite_runner::CancellationToken;
use tokio::sync::Notify;

pub use gates::{short, waiting_reason, GateFacts};
pub use launch::Launch;
pub use versions::desired_version;

use crate::desired::ParseCache;
use crate::git::PipelineFile;
use crate::scheduler::SchedulerEvent;
use crate::status::{DeploymentAction, DeploymentStatus, RunAction, RunStatus, Sync};
use crate::store::{
    DeploymentRecord, EnvironmentRecord, NewDeployment, NewRun, Store, StoreError,
    MAX_DRIFT_REDEPLOYS,
};
use crate::watcher::{ReconcileError, RepoEntry, Repos};

/// A pass also runs this often with nothing to wake it: drift checks fall due, and a missed
/// wake-up costs at most this much latency.
const IDLE_PASS: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EnvironmentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Git(#[from] ReconcileError),
    #[error("no repository `{0}` is watched")]
    UnknownRepo(String),
    #[error("no environment `{environment}` in repository `{repo}`")]
    UnknownEnvironment { repo: String, environment: String },
    #[error("no deployment {0}")]
    UnknownDeployment(i64),
    #[error("{0}")]
    Refused(String),
}

/// A deployment's new status, as committed by a pass (for the change feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentEvent {
    pub id: i64,
    pub repo: String,
    pub environment: String,
    pub status: DeploymentStatus,
}

/// The controller. One per daemon; its passes are serialised by `pass_lock`.
pub struct Environments {
    events: tokio::sync::broadcast::Sender<DeploymentEvent>,
    store: Store,
    repos: Arc<Repos>,
    policies: Arc<Policies>,
    scheduler: Arc<Notify>,
    wake: Arc<Notify>,
    pipelines: Arc<ParseCache>,
    definitions: Mutex<DefinitionCache>,
    pass_lock: tokio::sync::Mutex<()>,
}

type ParsedEnvironment = Arc<Result<Environment, Vec<Diagnostic>>>;

/// Parsed environment files by (blob id, path), and per repository the blob ids last recorded.
#[derive(Default)]
struct DefinitionCache {
    parsed: HashMap<(String, String), ParsedEnvironment>,
    recorded: HashMap<String, Vec<String>>,
}

/// What one pass of one repository read from git.
struct RepoSnapshot {
    default_head: Option<String>,
    environment_files: Vec<PipelineFile>,
    branches: Vec<(String, String)>,
    tags: Vec<(String, String)>,
}

/// One write of a pass, applied in order in one transaction.
enum Write {
    Desired {
        env: String,
        version: String,
        git_ref: String,
    },
    Create(NewDeployment),
    Pending {
        id: i64,
        reason: String,
    },
    Move {
        id: i64,
        from: DeploymentStatus,
        to: DeploymentStatus,
        errors: Vec<String>,
    },
    /// Waiting -> rejected by policy, its summary kept as `pending_reason`.
    Reject {
        id: i64,
        errors: Vec<String>,
        reason: String,
    },
    Policy {
        id: i64,
        decision: deploylite_policy::Decision,
    },
    /// Move, and when the move happened, record the run that carries it on.
    Start {
        id: i64,
        from: DeploymentStatus,
        to: DeploymentStatus,
        action: RunAction,
        run: Box<NewRun>,
    },
    CancelRuns {
        deployment: i64,
        reason: String,
    },
    Current {
        env: String,
        version: String,
        deployment: i64,
    },
    StartCheck {
        env: String,
        deployment: i64,
        run: Box<NewRun>,
        next_at: i64,
    },
    FinishCheck {
        env: String,
        drift: Sync,
        redeploys: i64,
        next_at: i64,
    },
    ScheduleCheck {
        env: String,
        at: i64,
    },
}

impl Environments {
    pub fn new(
        store: Store,
        repos: Arc<Repos>,
        policies: Arc<Policies>,
        scheduler: Arc<Notify>,
    ) -> Arc<Environments> {
        Arc::new(Environments {
            events: tokio::sync::broadcast::channel(1024).0,
            store,
            repos,
            policies,
            scheduler,
            wake: Arc::new(Notify::new()),
            pipelines: Arc::new(ParseCache::default()),
            definitions: Mutex::default(),
            pass_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Asks for a pass soon (a ref moved, a run ended, someone acted).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The deployments' moves, after each pass commits them.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DeploymentEvent> {
        self.events.subscribe()
    }

    /// A handle that asks for a pass (given to the watcher).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Passes until shutdown: woken by the scheduler's run events, by [`Environments::wake`],
    /// and at least every [`IDLE_PASS`].
    pub async fn run(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<SchedulerEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            if let Err(error) = self.pass().await {
                tracing::warn!(%error, "environment pass failed; retrying");
            }
            deploylite_telemetry::metrics().environment_pass();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_PASS) => {}
                event = events.recv() => match event {
                    Ok(SchedulerEvent::RunStarted { .. } | SchedulerEvent::RunFinished { .. }) => {}
                    Ok(_) => continue,
                    // Lagged: we missed some, a pass catches up anyway.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = self.wake.notified() => {}
                        }
                    }
                },
            }
        }
    }

    /// One pass over every repository. Errors of one repository do not stop the others.
    pub async fn pass(&self) -> Result<(), EnvironmentError> {
        let _serial = self.pass_lock.lock().await;
        let mut first_error = None;
        let names: Vec<String> = self.repos.names().map(str::to_string).collect();
        for name in names {
            let Some(entry) = self.repos.get(&name).cloned() else {
                continue;
            };
            // A pass that wrote something may unlock more (a created deployment can start):
            // a few rounds settle it without waiting for the next wake-up.
            for _ in 0..4 {
                match self.pass_repo(&entry).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(error) => {
                        tracing::warn!(repo = %name, %error, "environment pass failed");
                        first_error.get_or_insert(error);
                        break;
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One pass of one repository. Returns whether it wrote anything.
    async fn pass_repo(&self, entry: &Arc<RepoEntry>) -> Result<bool, EnvironmentError> {
        let repo = entry.config.name.clone();
        let snapshot = entry
            .with_git(false, |git| {
                let default_head = git.resolve("HEAD").ok();
                let environment_files = match &default_head {
                    Some(head) => git.environment_files(head)?,
                    None => Vec::new(),
                };
                Ok(RepoSnapshot {
                    default_head,
                    environment_files,
                    branches: git.branch_heads()?,
                    tags: git.tag_heads()?,
                })
            })
            .await?;
        self.record_definitions(&repo, &snapshot).await?;
        let environments = self.store.environments(Some(&repo), false).await?;
        if environments.is_empty() {
            return Ok(false);
        }
        let open = self.store.open_deployments(&repo).await?;
        let now = crate::store::now_ms();
        let mut writes = Vec::new();
        for env in &environments {
            let mine: Vec<&DeploymentRecord> =
                open.iter().filter(|d| d.environment == env.name).collect();
            self.plan_environment(entry, env, &mine, &snapshot, now, &mut writes)
                .await?;
        }
        if writes.is_empty() {
            return Ok(false);
        }
        let environment_of: HashMap<i64, String> =
            open.iter().map(|d| (d.id, d.environment.clone())).collect();
        self.apply(&repo, writes, &environment_of).await
    }

    /// Records the environment files of the default branch when they changed (parsed once
    /// per blob; the invalid ones are logged and left out).
    async fn record_definitions(
        &self,
        repo: &str,
        snapshot: &RepoSnapshot,
    ) -> Result<(), EnvironmentError> {
        let Some(head) = snapshot.default_head.as_deref() else {
            return Ok(());
        };
        let blob_ids: Vec<String> = snapshot
            .environment_files
            .iter()
            .map(|f| format!("{}:{}", f.path, f.blob_id))
            .collect();
        let mut valid = Vec::new();
        {
            let mut cache = self.definitions.lock().unwrap_or_else(|e| e.into_inner());
            if cache.recorded.get(repo) == Some(&blob_ids) {
                return Ok(());
            }
            for file in &snapshot.environment_files {
                let key = (file.blob_id.clone(), file.path.clone());
                let parsed = cache
                    .parsed
                    .entry(key)
                    .or_insert_with(|| Arc::new(parse_file(file)))
                    .clone();
                match parsed.as_ref() {
                    Ok(env) => valid.push(env.clone()),
                    Err(diagnostics) => {
                        for d in diagnostics {
                            tracing::warn!(repo, commit = %head, problem = %d,
                                "environment file ignored: run `deploylite validate` on it");
                        }
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        valid.retain(|e| seen.insert(e.name.clone()));
        self.store
            .record_environment_definitions(repo, head, &valid)
            .await?;
        let mut cache = self.definitions.lock().unwrap_or_else(|e| e.into_inner());
        if cache.parsed.len() > 4096 {
            cache.parsed.clear();
        }
        cache.recorded.insert(repo.to_string(), blob_ids);
        Ok(())
    }

    /// Decides one environment's writes for this pass.
    async fn plan_environment(
        &self,
        entry: &Arc<RepoEntry>,
        env: &EnvironmentRecord,
        open: &[&DeploymentRecord],
        snapshot: &RepoSnapshot,
        now: i64,
        writes: &mut Vec<Write>,
    ) -> Result<(), EnvironmentError> {
        let def = &env.definition;
        let repo = &env.repo;
        // 1. The desired version, and automation's deployment of it.
        let desired = desired_version(&def.follows, &snapshot.branches, &snapshot.tags);
        if let Some((version, git_ref)) = &desired {
            if env.desired_version.as_deref() != Some(version.as_str()) {
                writes.push(Write::Desired {
                    env: env.name.clone(),
                    version: version.clone(),
                    git_ref: git_ref.clone(),
                });
            }
            let already = open
                .iter()
                .any(|d| &d.version == version && d.action == DeploymentAction::Deploy);
            // Automation's attempt 1 may exist and be over (failed, rolled back, rejected):
            // then there is nothing to ask for, and no transaction to open for it every pass.
            let wanted = env.current_version.as_deref() != Some(version.as_str())
                && !already
                && !self.store.has_attempt(repo, &env.name, version, 1).await?;
            if wanted {
                writes.push(Write::Create(NewDeployment {
                    repo: repo.clone(),
                    environment: env.name.clone(),
                    version: version.clone(),
                    attempt: Some(1),
                    git_ref: Some(git_ref.clone()),
                    previous_version: env.current_version.clone(),
                    action: DeploymentAction::Deploy,
                    status: DeploymentStatus::Waiting,
                    pending_reason: Some("waiting for the controller's next pass".into()),
                    triggered_by: format!("follows {git_ref}"),
                    manual: false,
                    rollback_of: None,
                }));
            }
            // Prevent outdated deployments: automation's older versions that have not started
            // give way. One already deploying finishes.
            for d in open.iter().filter(|d| {
                &d.version != version
                    && !d.manual
                    && d.action == DeploymentAction::Deploy
                    && matches!(
                        d.status,
                        DeploymentStatus::Waiting | DeploymentStatus::Queued
                    )
                    && !d.triggered_by.starts_with("drift")
            }) {
                let reason = format!("superseded by {}", short(version));
                writes.push(Write::Move {
                    id: d.id,
                    from: d.status,
                    to: DeploymentStatus::Superseded,
                    errors: vec![reason.clone()],
                });
                if d.status == DeploymentStatus::Queued {
                    writes.push(Write::CancelRuns {
                        deployment: d.id,
                        reason: format!("cancelled: deployment {}", reason),
                    });
                }
            }
        }
        let superseded: HashSet<i64> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Move {
                    id,
                    to: DeploymentStatus::Superseded,
                    ..
                } => Some(*id),
                _ => None,
            })
            .collect();
        let open: Vec<&DeploymentRecord> = open
            .iter()
            .copied()
            .filter(|d| !superseded.contains(&d.id))
            .collect();

        // 2. The deployments in progress, moved by their runs.
        let mut lock_holder = None;
        for d in open
            .iter()
            .filter(|d| d.status != DeploymentStatus::Waiting)
        {
            let still_active = self.advance(entry, env, d, now, writes).await?;
            if still_active {
                lock_holder = Some(d.id);
            }
        }

        // 3. The waiting ones: the first whose gates are open starts; the others say why not.
        let mut waiting: Vec<&DeploymentRecord> = open
            .iter()
            .copied()
            .filter(|d| d.status == DeploymentStatus::Waiting)
            .collect();
        // Rollbacks first: they restore a known-good version.
        waiting.sort_by_key(|d| (d.action != DeploymentAction::Rollback, d.id));
        for d in waiting {
            let facts = self.gate_facts(env, d, lock_holder).await?;
            match waiting_reason(d, def, &facts) {
                Some(reason) => {
                    if d.pending_reason.as_deref() != Some(reason.as_str()) {
                        writes.push(Write::Pending { id: d.id, reason });
                    }
                }
                None => {
                    if self.start(entry, env, d, now, writes).await? {
                        lock_holder = Some(d.id);
                    }
                }
            }
        }

        // 4. Drift checks, when nothing is deploying.
        if lock_holder.is_none() && open.iter().all(|d| d.status == DeploymentStatus::Waiting) {
            self.plan_check(entry, env, now, writes).await?;
        }
        Ok(())
    }

    /// Moves a deployment in progress by its runs. Returns whether it still holds the lock.
    async fn advance(
        &self,
        entry: &Arc<RepoEntry>,
        env: &EnvironmentRecord,
        d: &DeploymentRecord,
        now: i64,
        writes: &mut Vec<Write>,
    ) -> Result<bool, EnvironmentError> {
        use DeploymentStatus as S;
        let run_for = |action: RunAction| d.runs.iter().rev().find(|r| r.action == action.as_str());
        let main_action = match d.action {
            DeploymentAction::Deploy => RunAction::Deploy,
            DeploymentAction::Rollback => RunAction::Rollback,
        };
        match d.status {
            S::Queued | S::Deploying => {
                let Some(run) = run_for(main_action) else {
                    // Never written without its run; a row from elsewhere fails visibly.
                    self.fail(env, d, d.status, "its deploy run is missing".into(), writes)
                        .await?;
                    return Ok(false);
                };
                let mut from = d.status;
                if from == S::Queued && run.status != RunStatus::Queued {
                    writes.push(Write::Move {
                        id: d.id,
                        from,
                        to: S::Deploying,
                        errors: Vec::new(),
                    });
                    from = S::Deploying;
                }
                match run.status {
                    RunStatus::Queued | RunStatus::Running => Ok(true),
                    RunStatus::Success => match env.definition.verify.clone() {
                        Some(verify) => {
                            let launch = Launch {
                                action: RunAction::Verify,
                                pipeline: verify,
                                commit: d.version.clone(),
                                git_ref: run_ref(d, env),
                                environment: env.name.clone(),
                                deployment: d.id,
                                previous_version: d.previous_version.clone(),
                            };
                            match launch::build_run(entry, &self.pipelines, &launch).await {
                                Ok(run) => {
                                    writes.push(Write::Start {
                                        id: d.id,
                                        from,
                                        to: S::Verifying,
                                        action: RunAction::Verify,
                                        run: Box::new(run),
                                    });
                                    Ok(true)
                                }
                                Err(problem) => {
                                    self.fail(env, d, from, problem.to_string(), writes).await?;
                                    Ok(false)
                                }
                            }
                        }
                        None => {
                            self.succeed(env, d, from, now, writes);
                            Ok(false)
                        }
                    },
                    RunStatus::Cancelled => {
                        writes.push(Write::Move {
                            id: d.id,
                            from,
                            to: S::Cancelled,
                            errors: vec![format!("run {} was cancelled", run.id)],
                        });
                        Ok(false)
                    }
                    status => {
                        let problem = format!("{} run {} {status}", run.pipeline, run.id);
                        self.fail(env, d, from, problem, writes).await?;
                        Ok(false)
                    }
                }
            }
            S::Verifying => {
                let Some(run) = run_for(RunAction::Verify) else {
                    self.fail(
                        env,
                        d,
                        S::Verifying,
                        "its verify run is missing".into(),
                        writes,
                    )
                    .await?;
                    return Ok(false);
                };
                match run.status {
                    RunStatus::Queued | RunStatus::Running => Ok(true),
                    RunStatus::Success => {
                        self.succeed(env, d, S::Verifying, now, writes);
                        Ok(false)
                    }
                    RunStatus::Cancelled => {
                        writes.push(Write::Move {
                            id: d.id,
                            from: S::Verifying,
                            to: S::Cancelled,
                            errors: vec![format!("verify run {} was cancelled", run.id)],
                        });
                        Ok(false)
                    }
                    status => {
                        let problem = format!("verify: {} run {} {status}", run.pipeline, run.id);
                        self.fail(env, d, S::Verifying, problem, writes).await?;
                        Ok(false)
                    }
                }
            }
            S::RollingBack => {
                // Waits for its rollback deployment; it does not hold the lock (the rollback does).
                match self.store.rollback_status(d.id).await? {
                    Some(S::Succeeded) => writes.push(Write::Move {
                        id: d.id,
                        from: S::RollingBack,
                        to: S::RolledBack,
                        errors: Vec::new(),
                    }),
                    Some(s) if s.is_final() => writes.push(Write::Move {
                        id: d.id,
                        from: S::RollingBack,
                        to: S::Failed,
                        errors: vec![format!("its rollback ended {s}")],
                    }),
                    Some(_) => {}
                    None => writes.push(Write::Move {
                        id: d.id,
                        from: S::RollingBack,
                        to: S::Failed,
                        errors: vec!["its rollback deployment is missing".into()],
                    }),
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    fn succeed(
        &self,
        env: &EnvironmentRecord,
        d: &DeploymentRecord,
        from: DeploymentStatus,
        now: i64,
        writes: &mut Vec<Write>,
    ) {
        writes.push(Write::Move {
            id: d.id,
            from,
            to: DeploymentStatus::Succeeded,
            errors: Vec::new(),
        });
        writes.push(Write::Current {
            env: env.name.clone(),
            version: d.version.clone(),
            deployment: d.id,
        });
        if let Some(failed) = d.rollback_of {
            writes.push(Write::Move {
                id: failed,
                from: DeploymentStatus::RollingBack,
                to: DeploymentStatus::RolledBack,
                errors: Vec::new(),
            });
        }
        // A new version is checked for drift at once.
        if env.definition.check.is_some() {
            writes.push(Write::ScheduleCheck {
                env: env.name.clone(),
                at: now,
            });
        }
    }

    /// A deployment failed: with `rollback: auto` and a last good version, that version is
    /// redeployed as a rollback; the environment stays recorded at it either way.
    async fn fail(
        &self,
        env: &EnvironmentRecord,
        d: &DeploymentRecord,
        from: DeploymentStatus,
        problem: String,
        writes: &mut Vec<Write>,
    ) -> Result<(), EnvironmentError> {
        let good = env
            .current_version
            .clone()
            .filter(|g| g != &d.version && env.definition.rollback == RollbackMode::Auto);
        match good {
            Some(good) if d.action == DeploymentAction::Deploy => {
                writes.push(Write::Move {
                    id: d.id,
                    from,
                    to: DeploymentStatus::RollingBack,
                    errors: vec![problem],
                });
                writes.push(Write::Create(NewDeployment {
                    repo: env.repo.clone(),
                    environment: env.name.clone(),
                    version: good.clone(),
                    attempt: None,
                    git_ref: None,
                    previous_version: Some(d.version.clone()),
                    action: DeploymentAction::Rollback,
                    status: DeploymentStatus::Waiting,
                    pending_reason: Some("waiting for the controller's next pass".into()),
                    triggered_by: format!("rollback: auto, deployment {} failed", d.id),
                    manual: false,
                    rollback_of: Some(d.id),
                }));
            }
            _ => writes.push(Write::Move {
                id: d.id,
                from,
                to: DeploymentStatus::Failed,
                errors: vec![problem],
            }),
        }
        Ok(())
    }

    async fn gate_facts(
        &self,
        env: &EnvironmentRecord,
        d: &DeploymentRecord,
        lock_holder: Option<i64>,
    ) -> Result<GateFacts, EnvironmentError> {
        let mut facts = GateFacts {
            hold: env.hold.clone(),
            active: lock_holder,
            ..GateFacts::default()
        };
        if d.action == DeploymentAction::Deploy {
            for pipeline in &env.definition.requires {
                let status = self
                    .store
                    .pipeline_status_at(&env.repo, pipeline, &d.version)
                    .await?;
                facts.required.push((pipeline.clone(), status));
            }
            for source in &env.definition.promote_from {
                let deployed = self
                    .store
                    .has_deployed(&env.repo, source, &d.version)
                    .await?;
                facts.promoted.push((source.clone(), deployed));
            }
        }
        Ok(facts)
    }

    /// Gates open: the `deploylite.deploy` policy decides, then the deployment is queued with
    /// its run. Returns whether it took the lock.
    async fn start(
        &self,
        entry: &Arc<RepoEntry>,
        env: &EnvironmentRecord,
        d: &DeploymentRecord,
        now: i64,
        writes: &mut Vec<Write>,
    ) -> Result<bool, EnvironmentError> {
        let action = match d.action {
            DeploymentAction::Deploy => RunAction::Deploy,
            DeploymentAction::Rollback => RunAction::Rollback,
        };
        let launch = Launch {
            action,
            pipeline: env.definition.deploy.clone(),
            commit: d.version.clone(),
            git_ref: run_ref(d, env),
            environment: env.name.clone(),
            deployment: d.id,
            previous_version: d
                .previous_version
                .clone()
                .or_else(|| env.current_version.clone()),
        };
        let run = match launch::build_run(entry, &self.pipelines, &launch).await {
            Ok(run) => run,
            Err(problem) => {
                writes.push(Write::Move {
                    id: d.id,
                    from: DeploymentStatus::Waiting,
                    to: DeploymentStatus::Rejected,
                    errors: vec![problem.to_string()],
                });
                return Ok(false);
            }
        };
        if let Some(decision) = self.decide(entry, env, d, &run, now).await? {
            let denied = decision.denied();
            let deny = decision.deny.clone();
            writes.push(Write::Policy { id: d.id, decision });
            if denied {
                writes.push(Write::Reject {
                    id: d.id,
                    reason: format!("policy: denied: {}", deny.join("; ")),
                    errors: deny
                        .into_iter()
                        .map(|m| format!("{}{m}", crate::run_gate::DENIED_BY_POLICY))
                        .collect(),
                });
                return Ok(false);
            }
        }
        writes.push(Write::Start {
            id: d.id,
            from: DeploymentStatus::Waiting,
            to: DeploymentStatus::Queued,
            action,
            run: Box::new(run),
        });
        Ok(true)
    }

    /// The `deploylite.deploy` gate. `None` when no policy applies.
    async fn decide(
        &self,
        entry: &Arc<RepoEntry>,
        env: &EnvironmentRecord,
        d: &DeploymentRecord,
        run: &NewRun,
        now: i64,
    ) -> Result<Option<deploylite_policy::Decision>, EnvironmentError> {
        let version = d.version.clone();
        let (policy_files, author, default_branch) = entry
            .with_git(false, move |git| {
                Ok((
                    git.policy_files(&version)?,
                    git.commit_author(&version).ok(),
                    git.default_branch(),
                ))
            })
            .await?;
        let sources = crate::run_gate::repository_policies(&policy_files);
        let empty = PolicySources::default();
        let applies = match &sources {
            Ok(s) => self.policies.applies(Gate::Deploy, s),
            Err(_) => true,
        };
        if !applies {
            return Ok(None);
        }
        let decision = match &sources {
            Err(error) => self.policies.failed(error, &empty.revision_sha256()),
            Ok(sources) => {
                let facts = DeployGateFacts {
                    author,
                    default_branch,
                    runs: self.store.runs_at_commit(&env.repo, &d.version).await?,
                    approvals: self.store.deployment_approvals(d.id).await?,
                    now,
                };
                match deploy_input(entry, env, d, run, facts) {
                    Ok(input) => self.policies.decide(Gate::Deploy, sources, &input),
                    Err(error) => self.policies.failed(&error, &sources.revision_sha256()),
                }
            }
        };
        crate::run_gate::count(Gate::Deploy, &decision);
        Ok(Some(decision))
    }

    /// Starts a drift check when one is due, or reads the verdict of the one running.
    async fn plan_check(
        &self,
        entry: &Arc<RepoEntry>,
        env: &EnvironmentRecord,
        now: i64,
        writes: &mut Vec<Write>,
    ) -> Result<(), EnvironmentError> {
        let Some(check) = env.definition.check.clone() else {
            return Ok(());
        };
        let interval = i64::try_from(check.interval.as_millis()).unwrap_or(i64::MAX);
        if let Some(run_id) = env.check_run_id {
            let Some((status, exited_2)) = self.store.run_end(run_id, 2).await? else {
                return Ok(());
            };
            if !status.is_final() {
                return Ok(());
            }
            let drift = match status {
                RunStatus::Success => Sync::InSync,
                RunStatus::Failed if exited_2 => Sync::Drifted,
                _ => Sync::Unknown,
            };
            let mut redeploys = if drift == Sync::InSync {
                0
            } else {
                env.drift_redeploys
            };
            let mut next_at = now.saturating_add(interval);
            if drift == Sync::Drifted {
                let redeploy =
                    env.definition.on_drift == OnDrift::Redeploy && redeploys < MAX_DRIFT_REDEPLOYS;
                match (redeploy, &env.current_version) {
                    (true, Some(current)) => {
                        redeploys += 1;
                        // Exponential backoff between repair attempts: interval × 2^n.
                        next_at =
                            now.saturating_add(interval.saturating_mul(1 << redeploys.min(16)));
                        writes.push(Write::Create(NewDeployment {
                            repo: env.repo.clone(),
                            environment: env.name.clone(),
                            version: current.clone(),
                            attempt: None,
                            git_ref: env.desired_ref.clone(),
                            previous_version: Some(current.clone()),
                            action: DeploymentAction::Deploy,
                            status: DeploymentStatus::Waiting,
                            pending_reason: Some("waiting for the controller's next pass".into()),
                            triggered_by: format!(
                                "drift: check run {run_id} (redeploy {redeploys} of {MAX_DRIFT_REDEPLOYS})"
                            ),
                            manual: false,
                            rollback_of: None,
                        }));
                    }
                    _ if env.definition.on_drift == OnDrift::Redeploy => {
                        tracing::warn!(repo = %env.repo, environment = %env.name,
                            "drift persists after {MAX_DRIFT_REDEPLOYS} redeploys: degraded");
                    }
                    _ => {}
                }
            }
            writes.push(Write::FinishCheck {
                env: env.name.clone(),
                drift,
                redeploys,
                next_at,
            });
            return Ok(());
        }
        let (Some(current), Some(deployment)) = (&env.current_version, env.current_deployment)
        else {
            return Ok(());
        };
        if env.next_check_at.is_some_and(|at| at > now) {
            return Ok(());
        }
        let launch = Launch {
            action: RunAction::Check,
            pipeline: check.pipeline.clone(),
            commit: current.clone(),
            git_ref: env
                .desired_ref
                .clone()
                .unwrap_or_else(|| "refs/heads/main".into()),
            environment: env.name.clone(),
            deployment,
            previous_version: None,
        };
        match launch::build_run(entry, &self.pipelines, &launch).await {
            Ok(run) => writes.push(Write::StartCheck {
                env: env.name.clone(),
                deployment,
                run: Box::new(run),
                next_at: now.saturating_add(interval),
            }),
            Err(problem) => {
                tracing::warn!(repo = %env.repo, environment = %env.name, %problem,
                    "drift check cannot run");
                writes.push(Write::FinishCheck {
                    env: env.name.clone(),
                    drift: Sync::Unknown,
                    redeploys: env.drift_redeploys,
                    next_at: now.saturating_add(interval),
                });
            }
        }
        Ok(())
    }

    /// Applies a pass's writes in one transaction. Returns whether anything changed.
    async fn apply(
        &self,
        repo: &str,
        writes: Vec<Write>,
        environment_of: &HashMap<i64, String>,
    ) -> Result<bool, EnvironmentError> {
        let mut tx = self.store.begin_environments().await?;
        let mut changed = false;
        let mut events = Vec::new();
        let mut moved = |id: i64, environment: Option<&String>, status: DeploymentStatus| {
            if let Some(environment) = environment {
                events.push(DeploymentEvent {
                    id,
                    repo: repo.to_string(),
                    environment: environment.clone(),
                    status,
                });
            }
        };
        for write in writes {
            match write {
                Write::Desired {
                    env,
                    version,
                    git_ref,
                } => {
                    tx.set_desired(repo, &env, &version, &git_ref).await?;
                    changed = true;
                }
                Write::Create(new) => {
                    if let Some(id) = tx.insert_deployment(&new).await? {
                        moved(id, Some(&new.environment), new.status);
                        tracing::info!(repo, environment = %new.environment, deployment = id,
                            version = %new.version, action = %new.action, by = %new.triggered_by,
                            "deployment recorded");
                        changed = true;
                    }
                }
                Write::Pending { id, reason } => {
                    tx.set_pending(id, &reason).await?;
                }
                Write::Move {
                    id,
                    from,
                    to,
                    errors,
                } => {
                    if tx.transition(id, from, to, None, &errors).await? {
                        moved(id, environment_of.get(&id), to);
                        tracing::info!(repo, deployment = id, %from, %to, "deployment moved");
                        changed = true;
                    }
                }
                Write::Reject { id, errors, reason } => {
                    let (from, to) = (DeploymentStatus::Waiting, DeploymentStatus::Rejected);
                    if tx.transition(id, from, to, Some(&reason), &errors).await? {
                        moved(id, environment_of.get(&id), to);
                        tracing::info!(repo, deployment = id, %reason, "deployment rejected by policy");
                        changed = true;
                    }
                }
                Write::Policy { id, decision } => tx.record_policy(id, &decision).await?,
                Write::Start {
                    id,
                    from,
                    to,
                    action,
                    mut run,
                } => {
                    if tx.transition(id, from, to, None, &[]).await? {
                        moved(id, environment_of.get(&id), to);
                        run.run_attempt = tx
                            .next_run_attempt(repo, &run.pipeline, &run.commit, &run.trigger)
                            .await?;
                        let run_id = tx.insert_run(&run, id, action).await?;
                        tracing::info!(repo, deployment = id, run = ?run_id, %action, "deployment run recorded");
                        changed = true;
                    }
                }
                Write::CancelRuns { deployment, reason } => {
                    tx.cancel_runs_of(deployment, &reason).await?
                }
                Write::Current {
                    env,
                    version,
                    deployment,
                } => tx.set_current(repo, &env, &version, deployment).await?,
                Write::StartCheck {
                    env,
                    deployment,
                    mut run,
                    next_at,
                } => {
                    run.run_attempt = tx
                        .next_run_attempt(repo, &run.pipeline, &run.commit, &run.trigger)
                        .await?;
                    if let Some(run_id) = tx.insert_run(&run, deployment, RunAction::Check).await? {
                        tx.start_check(repo, &env, run_id, next_at).await?;
                        changed = true;
                    }
                }
                Write::FinishCheck {
                    env,
                    drift,
                    redeploys,
                    next_at,
                } => {
                    tx.finish_check(repo, &env, drift, redeploys, next_at)
                        .await?;
                    changed = true;
                }
                Write::ScheduleCheck { env, at } => tx.schedule_check(repo, &env, at).await?,
            }
        }
        let touched_runs = tx.touched_runs();
        tx.commit().await?;
        for event in events {
            // No follower (no status page open): nothing to tell.
            let _ = self.events.send(event);
        }
        if touched_runs {
            self.scheduler.notify_one();
        }
        Ok(changed)
    }

    // --- What people ask for (the API and the CLI) -------------------------------------

    fn known(&self, repo: &str) -> Result<Arc<RepoEntry>, EnvironmentError> {
        self.repos
            .get(repo)
            .cloned()
            .ok_or_else(|| EnvironmentError::UnknownRepo(repo.to_string()))
    }

    async fn environment(
        &self,
        repo: &str,
        name: &str,
    ) -> Result<EnvironmentRecord, EnvironmentError> {
        self.known(repo)?;
        match self.store.environment(repo, name).await? {
            Some(env) if !env.removed => Ok(env),
            _ => Err(EnvironmentError::UnknownEnvironment {
                repo: repo.to_string(),
                environment: name.to_string(),
            }),
        }
    }

    /// `deploylite deploy REPO/ENV [--version SHA]`: the next attempt of a version (default:
    /// the desired one), through the environment's gates but not its hold.
    pub async fn deploy(
        &self,
        repo: &str,
        name: &str,
        version: Option<&str>,
        by: &str,
    ) -> Result<i64, EnvironmentError> {
        let env = self.environment(repo, name).await?;
        let (version, git_ref) = match version {
            Some(v) => self.resolve_version(repo, v).await?,
            None => match (&env.desired_version, &env.desired_ref) {
                (Some(v), r) => (v.clone(), r.clone()),
                (None, _) => {
                    return Err(EnvironmentError::Refused(format!(
                        "{repo}/{name} has no desired version yet: name one with --version"
                    )))
                }
            },
        };
        let id = self
            .store
            .request_deployment(&NewDeployment {
                repo: repo.to_string(),
                environment: name.to_string(),
                version,
                attempt: None,
                git_ref,
                previous_version: env.current_version.clone(),
                action: DeploymentAction::Deploy,
                status: DeploymentStatus::Waiting,
                pending_reason: Some("waiting for the controller's next pass".into()),
                triggered_by: by.to_string(),
                manual: true,
                rollback_of: None,
            })
            .await?;
        self.wake();
        Ok(id)
    }

    /// `deploylite rollback REPO/ENV [--to SHA]`: redeploys an earlier good version (default:
    /// the one before the current) as a rollback, and pins the environment there.
    pub async fn rollback(
        &self,
        repo: &str,
        name: &str,
        to: Option<&str>,
        by: &str,
    ) -> Result<i64, EnvironmentError> {
        let env = self.environment(repo, name).await?;
        let good = self.store.succeeded_versions(repo, name, 100).await?;
        let target = match to {
            Some(v) => {
                let (sha, _) = self.resolve_version(repo, v).await?;
                if !good.contains(&sha) {
                    return Err(EnvironmentError::Refused(format!(
                        "{} was never deployed successfully to {repo}/{name}: a rollback goes back to a good version (use `deploylite deploy --version` for a new one)",
                        short(&sha)
                    )));
                }
                sha
            }
            None => good
                .iter()
                .find(|v| Some(v.as_str()) != env.current_version.as_deref())
                .cloned()
                .ok_or_else(|| {
                    EnvironmentError::Refused(format!(
                        "{repo}/{name} has no earlier good version to roll back to"
                    ))
                })?,
        };
        let id = self
            .store
            .request_deployment(&NewDeployment {
                repo: repo.to_string(),
                environment: name.to_string(),
                version: target.clone(),
                attempt: None,
                git_ref: None,
                previous_version: env.current_version.clone(),
                action: DeploymentAction::Rollback,
                status: DeploymentStatus::Waiting,
                pending_reason: Some("waiting for the controller's next pass".into()),
                triggered_by: by.to_string(),
                manual: true,
                rollback_of: None,
            })
            .await?;
        // A manual rollback pins the environment: automation must not roll it forward again.
        self.store.hold_environment(repo, name, &target, by).await?;
        self.wake();
        Ok(id)
    }

    /// `deploylite hold REPO/ENV`: pins the environment at its current version.
    pub async fn hold(&self, repo: &str, name: &str, by: &str) -> Result<(), EnvironmentError> {
        let env = self.environment(repo, name).await?;
        let version = env
            .current_version
            .or(env.desired_version)
            .unwrap_or_default();
        self.store
            .hold_environment(repo, name, &version, by)
            .await?;
        self.wake();
        Ok(())
    }

    /// `deploylite release REPO/ENV`. Returns whether it was held.
    pub async fn release(&self, repo: &str, name: &str) -> Result<bool, EnvironmentError> {
        self.environment(repo, name).await?;
        let released = self.store.release_environment(repo, name).await?;
        self.wake();
        Ok(released)
    }

    /// `deploylite approve DEPLOYMENT`. Refused for a deployment that does not wait.
    pub async fn approve(&self, id: i64, by: &str) -> Result<(), EnvironmentError> {
        match self.store.approve_deployment(id, by).await? {
            None => Err(EnvironmentError::UnknownDeployment(id)),
            Some(false) => Err(EnvironmentError::Refused(format!(
                "deployment {id} is not waiting: there is nothing to approve"
            ))),
            Some(true) => {
                self.wake();
                Ok(())
            }
        }
    }

    /// A commit id (full or abbreviated), branch or tag of `repo`, as (commit, ref).
    async fn resolve_version(
        &self,
        repo: &str,
        rev: &str,
    ) -> Result<(String, Option<String>), EnvironmentError> {
        let entry = self.known(repo)?;
        let rev_owned = rev.to_string();
        entry
            .with_git(false, move |git| {
                let sha = git.rev_parse(&rev_owned)?;
                Ok((sha, git.full_ref_name(&rev_owned)))
            })
            .await
            .map_err(|e| EnvironmentError::Refused(format!("unknown version `{rev}`: {e}")))
    }
}

fn parse_file(file: &PipelineFile) -> Result<Environment, Vec<Diagnostic>> {
    match std::str::from_utf8(&file.content) {
        Ok(text) => deploylite_pipeline::parse_environment(&file.path, text),
        Err(e) => Err(vec![Diagnostic {
            file: file.path.clone(),
            line: 1,
            col: 1,
            message: format!("the file is not valid UTF-8 (byte {})", e.valid_up_to()),
        }]),
    }
}

/// The ref a deployment's runs are recorded on: the version's own, else what the environment
/// follows.
fn run_ref(d: &DeploymentRecord, env: &EnvironmentRecord) -> String {
    d.git_ref
        .clone()
        .or_else(|| env.desired_ref.clone())
        .unwrap_or_else(|| match &env.definition.follows {
            deploylite_pipeline::Follows::Branch(b) => format!("refs/heads/{b}"),
            deploylite_pipeline::Follows::Tag(_) => "refs/tags/unknown".into(),
        })
}

/// What the `deploylite.deploy` gate is told about a deployment besides the records.
struct DeployGateFacts {
    author: Option<(String, String)>,
    default_branch: Option<String>,
    /// Each pipeline's newest run on the version.
    runs: Vec<(String, RunStatus)>,
    /// Who approved, and when (epoch ms).
    approvals: Vec<(String, i64)>,
    now: i64,
}

/// The `deploylite.deploy` gate's input (policy/schema/policy-input.schema.json).
fn deploy_input(
    entry: &Arc<RepoEntry>,
    env: &EnvironmentRecord,
    d: &DeploymentRecord,
    run: &NewRun,
    facts: DeployGateFacts,
) -> Result<serde_json::Value, deploylite_policy::PolicyError> {
    use deploylite_policy::{Approval, Author, CommitRun, DeploymentFacts, Plan, Repository};
    let pipeline: Option<deploylite_pipeline::Pipeline> = run
        .spec
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok());
    let plan = match &pipeline {
        Some(p) => Plan::of(p, &run.pipeline_file, &[]),
        None => Plan::empty(&run.pipeline, &run.pipeline_file),
    };
    deploylite_policy::deploy_input(
        DeploymentFacts {
            now: Now::from_unix_ms(facts.now),
            repository: Repository {
                name: entry.config.name.clone(),
                default_branch: facts.default_branch,
            },
            environment: env.name.clone(),
            current_version: env.current_version.clone(),
            version: d.version.clone(),
            git_ref: run.git_ref.clone(),
            author: facts.author.map(|(name, email)| Author { name, email }),
            runs: facts
                .runs
                .into_iter()
                .map(|(pipeline, status)| CommitRun {
                    pipeline,
                    status: status.as_str().to_string(),
                })
                .collect(),
            requires: env.definition.requires.clone(),
            action: match d.action {
                DeploymentAction::Deploy => deploylite_policy::DeploymentAction::Deploy,
                DeploymentAction::Rollback => deploylite_policy::DeploymentAction::Rollback,
            },
            approvals: facts
                .approvals
                .into_iter()
                .map(|(by, at)| Approval {
                    by,
                    at: Now::from_unix_ms(at).time,
                })
                .collect(),
            // Versions come from the repository's own branches and tags, never from a fork.
            trusted: true,
            pull_request: None,
        },
        plan,
    )
}
