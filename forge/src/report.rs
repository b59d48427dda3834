//! Reports out: the outbox sender (checks, commit statuses, PR/MR comments).
//!
//! The store writes an outbox row in the same transaction as every state change of a run whose
//! repository reports (`report = 1`). A row carries no payload: the [`Reporter`] renders the
//! run's *current* state when it sends, so a late send can never put a stale state over a final
//! one — as long as one run is never reported by two sends at once, which the reporter
//! guarantees (runs in flight are skipped; different runs go concurrently). The pull request
//! comment, shared by the runs of a pull request, is written under a per-PR lock.
//!
//! Delivery is a separate task: a forge outage never blocks a run. A failed delivery is
//! retried with exponential backoff and jitter (1 s doubling to 5 min), honouring `Retry-After`
//! and, on a rate limit (`403`/`429` with `x-ratelimit-remaining: 0`), `x-ratelimit-reset`: no
//! request goes to that forge before the reset. Undelivered reports are rows, so they survive a
//! restart.
//!
//! What is sent:
//! - GitHub App: one check run per pipeline run, `deploylite/<pipeline>`, `external_id` = run
//!   id, created `queued`, then `in_progress`, completed `success` / `failure` / `timed_out` /
//!   `cancelled` / `skipped`; an invalid pipeline is a `failure` with annotations.
//! - GitHub token: commit statuses, context `deploylite/<pipeline>`: `pending`, `success`,
//!   `failure`, `error` (invalid pipeline, and cancelled: no verdict); skipped is `success`.
//! - GitLab token: commit statuses `pending` / `running` / `success` / `failed` / `canceled`;
//!   skipped is `success`.
//! - Pull/merge requests: one comment, edited in place, covering every pipeline of the latest
//!   head commit, and a line per environment the head would deploy to after merge.
//! - Deployments (their own outbox, `deployment_outbox`): a GitHub Deployment with deployment
//!   statuses, a GitLab deployment, and for a policy rejection a failing check / commit status
//!   (`deployments.rs`).

mod comments;
mod deployments;
pub(crate) mod github;
pub(crate) mod gitlab;
pub(crate) mod http;
mod render;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploylite_model::Attempt;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{DueReport, RunRecord, StageRecord, Store, StoreError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::http::DeliveryError;
use self::render::{Failure, RunState};
use crate::forges::{ForgeKind, ForgeRepo, Forges};

pub use self::render::PR_COMMENT_MARKER;

/// Client errors that retrying will not fix are dropped after this many attempts.
const GIVE_UP_AFTER: i64 = 10;

/// Longest wait a forge can ask for with `Retry-After` or a rate-limit reset.
const MAX_FORGE_WAIT_MS: i64 = 3_600_000;

#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// How often the outbox is read for due reports.
    pub poll_interval: Duration,
    /// First retry delay after a failed delivery; doubles per attempt, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Runs reported at the same time.
    pub max_concurrent: usize,
    /// Connect/read/write timeout of one request.
    pub request_timeout: Duration,
    /// Limit for all the requests of one run's report.
    pub delivery_timeout: Duration,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            poll_interval: Duration::from_millis(200),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_concurrent: 8,
            request_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(120),
        }
    }
}

/// Sends the outbox's due reports to GitHub and GitLab.
pub struct Reporter {
    store: Store,
    data: DataDir,
    forges: Arc<Forges>,
    config: ReporterConfig,
    github: Option<github::Github>,
    gitlab: Option<gitlab::Gitlab>,
    /// Runs whose report is being sent: never two sends of one run at once.
    in_flight: Mutex<HashSet<i64>>,
    /// The same for deployments.
    deployments_in_flight: Mutex<HashSet<i64>>,
    /// Serialises the writers of one pull request's comment.
    pr_locks: Mutex<HashMap<(String, i64), PrLock>>,
    /// No request to a forge before this time (epoch ms): its rate limit is exhausted.
    blocked_until: Mutex<HashMap<ForgeKind, i64>>,
}

/// Held while a pull request's comment is rendered and written.
type PrLock = Arc<tokio::sync::Mutex<()>>;

/// `forge_objects` kind: a pull request's base branch, keyed `number@head`.
const PR_BASE: &str = "pr_base";

/// Where to ask for a pull request's base branch.
#[derive(Clone, Copy)]
enum PrBase<'a> {
    Github {
        crab: &'a octocrab::Octocrab,
        slug: &'a str,
    },
    Gitlab {
        crab: &'a octocrab::Octocrab,
        slug: &'a str,
    },
}

/// What became of one run's due report.
#[derive(Debug)]
enum Outcome {
    Delivered,
    /// Nothing to send (no forge configured for the repository, no credentials, no run).
    NothingToDo(String),
    Retry {
        at: i64,
        error: String,
    },
    /// A client error that retrying will not fix.
    GiveUp(String),
}

/// A run (or a deployment) claimed for sending; dropping it (even by aborting its task)
/// releases it.
struct Claim {
    reporter: Arc<Reporter>,
    /// For a deployment, `due.id` is the deployment id.
    due: DueReport,
    deployment: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let set = if self.deployment {
            &self.reporter.deployments_in_flight
        } else {
            &self.reporter.in_flight
        };
        lock(set).remove(&self.due.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Reporter {
    pub fn new(store: Store, data: DataDir, forges: Arc<Forges>) -> Arc<Reporter> {
        Reporter::with_config(store, data, forges, ReporterConfig::default())
    }

    pub fn with_config(
        store: Store,
        data: DataDir,
        forges: Arc<Forges>,
        config: ReporterConfig,
    ) -> Arc<Reporter> {
        let github = forges
            .github
            .as_ref()
            .and_then(|c| github::Github::new(c, config.request_timeout));
        let gitlab = forges
            .gitlab
            .as_ref()
            .and_then(|c| gitlab::Gitlab::new(c, config.request_timeout));
        Arc::new(Reporter {
            store,
            data,
            forges,
            config,
            github,
            gitlab,
            in_flight: Mutex::new(HashSet::new()),
            deployments_in_flight: Mutex::new(HashSet::new()),
            pr_locks: Mutex::new(HashMap::new()),
            blocked_until: Mutex::new(HashMap::new()),
        })
    }

    /// Sends due reports until `shutdown`: polls the outbox every `poll_interval` (sooner when
    /// a postponed report falls due), up to `max_concurrent` runs at a time. On shutdown the
    /// sends in flight get a few seconds; whatever is not delivered stays in the outbox.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks: JoinSet<bool> = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let free = self
                .config
                .max_concurrent
                .max(1)
                .saturating_sub(tasks.len());
            if free > 0 {
                for claim in self.claim_due(free).await {
                    tasks.spawn(async move { claim.reporter.process(&claim).await });
                }
            }
            let wait = self.next_wait().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::info!("stopping forge reports in flight: they stay in the outbox");
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// Sends every report due now (up to 100 runs, concurrently) and returns how many runs'
    /// reports were delivered or needed no delivery. For tests and one-shot use.
    pub async fn send_due(self: &Arc<Self>) -> usize {
        let mut tasks = JoinSet::new();
        for claim in self.claim_due(100).await {
            tasks.spawn(async move { claim.reporter.process(&claim).await });
        }
        let mut done = 0;
        while let Some(result) = tasks.join_next().await {
            if matches!(result, Ok(true)) {
                done += 1;
            }
        }
        done
    }

    async fn next_wait(&self) -> Duration {
        let poll = self.config.poll_interval;
        match self.store.next_report_due().await {
            Ok(Some(at)) => {
                let in_ms = at - now_ms();
                if in_ms > 0 {
                    poll.min(Duration::from_millis(in_ms as u64))
                } else {
                    poll
                }
            }
            _ => poll,
        }
    }

    /// Due reports of runs, then of deployments, not already being sent, marked in flight.
    async fn claim_due(self: &Arc<Self>, limit: usize) -> Vec<Claim> {
        let mut claims = self.claim_due_of(limit, false).await;
        let left = limit.saturating_sub(claims.len());
        if left > 0 {
            claims.extend(self.claim_due_of(left, true).await);
        }
        claims
    }

    async fn claim_due_of(self: &Arc<Self>, limit: usize, deployment: bool) -> Vec<Claim> {
        let set = if deployment {
            &self.deployments_in_flight
        } else {
            &self.in_flight
        };
        let busy = lock(set).len();
        let read = if deployment {
            self.store
                .due_deployment_reports(now_ms(), (limit + busy) as i64)
                .await
        } else {
            self.store
                .due_reports(now_ms(), (limit + busy) as i64)
                .await
        };
        let due = match read {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, deployment, "cannot read the outbox");
                return Vec::new();
            }
        };
        let mut in_flight = lock(set);
        due.into_iter()
            .filter(|d| in_flight.insert(d.id))
            .take(limit)
            .map(|due| Claim {
                reporter: self.clone(),
                due,
                deployment,
            })
            .collect::<Vec<_>>()
    }

    /// Sends one run's report and records the result. True when the rows are done with.
    async fn process(&self, claim: &Claim) -> bool {
        let due = &claim.due;
        if claim.deployment {
            let span = tracing::info_span!(
                "forge_deployment_report",
                deployment_id = due.id,
                attempt = due.attempts + 1,
            );
            return self.process_deployment(due).instrument(span).await;
        }
        let span = tracing::info_span!(
            "forge_report",
            run_id = due.id,
            attempt = due.attempts + 1,
            forge = tracing::field::Empty
        );
        self.process_in_span(due).instrument(span).await
    }

    async fn process_in_span(&self, due: &DueReport) -> bool {
        let outcome =
            match tokio::time::timeout(self.config.delivery_timeout, self.deliver(due)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Retry {
                    at: now_ms() + self.backoff_ms(due.attempts),
                    error: "the forge did not answer in time".into(),
                },
            };
        let result = match &outcome {
            Outcome::Delivered => {
                tracing::info!(run_id = due.id, "report delivered");
                self.store.report_sent(due.run_id(), due.up_to_id).await
            }
            Outcome::NothingToDo(why) => {
                tracing::debug!(run_id = due.id, why = %why, "nothing to report");
                self.store.report_sent(due.run_id(), due.up_to_id).await
            }
            Outcome::GiveUp(error) => {
                tracing::warn!(run_id = due.id, attempts = due.attempts + 1, %error, "giving up on a forge report");
                self.store.report_sent(due.run_id(), due.up_to_id).await
            }
            Outcome::Retry { at, error } => {
                tracing::warn!(
                    run_id = due.id,
                    attempts = due.attempts + 1,
                    retry_in_ms = at - now_ms(),
                    %error,
                    "cannot report to the forge; will retry"
                );
                self.store.report_failed(due.run_id(), *at, error).await
            }
        };
        if let Err(error) = result {
            tracing::warn!(run_id = due.id, %error, "cannot record a report's outcome");
            return false;
        }
        !matches!(outcome, Outcome::Retry { .. })
    }

    /// Sends one deployment's report and records the result. True when the rows are done with.
    async fn process_deployment(&self, due: &DueReport) -> bool {
        let id = due.id;
        let outcome =
            match tokio::time::timeout(self.config.delivery_timeout, self.deliver_deployment(due))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Retry {
                    at: now_ms() + self.backoff_ms(due.attempts),
                    error: "the forge did not answer in time".into(),
                },
            };
        let result = match &outcome {
            Outcome::Delivered => {
                tracing::info!(deployment_id = id, "deployment report delivered");
                self.store.deployment_report_sent(id, due.up_to_id).await
            }
            Outcome::NothingToDo(why) => {
                tracing::debug!(deployment_id = id, why = %why, "nothing to report");
                self.store.deployment_report_sent(id, due.up_to_id).await
            }
            Outcome::GiveUp(error) => {
                tracing::warn!(deployment_id = id, attempts = due.attempts + 1, %error,
                    "giving up on a deployment report");
                self.store.deployment_report_sent(id, due.up_to_id).await
            }
            Outcome::Retry { at, error } => {
                tracing::warn!(
                    deployment_id = id,
                    attempts = due.attempts + 1,
                    retry_in_ms = at - now_ms(),
                    %error,
                    "cannot report a deployment to the forge; will retry"
                );
                self.store.deployment_report_failed(id, *at, error).await
            }
        };
        if let Err(error) = result {
            tracing::warn!(deployment_id = id, %error, "cannot record a report's outcome");
            return false;
        }
        !matches!(outcome, Outcome::Retry { .. })
    }

    async fn deliver_deployment(&self, due: &DueReport) -> Outcome {
        let deployment = match self.store.deployment(due.id).await {
            Ok(Some(d)) => d,
            Ok(None) => return Outcome::NothingToDo("the deployment no longer exists".into()),
            Err(e) => return self.failed(None, due.attempts, DeliveryError::Store(e)),
        };
        let Some(repo) = self.forges.repo_by_name(&deployment.repo).cloned() else {
            return Outcome::NothingToDo(format!(
                "repository `{}` has no forge configured",
                deployment.repo
            ));
        };
        if let Some(until) = lock(&self.blocked_until).get(&repo.forge).copied() {
            if until > now_ms() {
                return Outcome::Retry {
                    at: until,
                    error: format!(
                        "waiting for the {} rate limit to reset",
                        repo.forge.as_str()
                    ),
                };
            }
        }
        let state = deployments::DeploymentState {
            url: self
                .forges
                .environment_url(&deployment.repo, &deployment.environment),
            deployment,
            now_ms: now_ms(),
        };
        let sending = std::time::Instant::now();
        let result = match (repo.forge, &self.github, &self.gitlab) {
            (ForgeKind::Github, Some(gh), _) => {
                let result = async {
                    let crab = gh.client_for(&repo.slug).await?;
                    deployments::report_github(
                        &crab,
                        &self.store,
                        &repo.name,
                        &repo.slug,
                        gh.mode(),
                        &state,
                    )
                    .await
                }
                .await;
                if let Err(e) = &result {
                    if gh.mode() == github::Mode::Checks && e.status() == Some(401) {
                        gh.forget_installation(&repo.slug).await;
                    }
                }
                result
            }
            (ForgeKind::Gitlab, _, Some(gl)) => match gl.client().await {
                Ok(crab) => {
                    deployments::report_gitlab(&crab, &self.store, &repo.name, &repo.slug, &state)
                        .await
                }
                Err(e) => Err(e),
            },
            _ => {
                return Outcome::NothingToDo(format!(
                    "no {} credentials are configured",
                    repo.forge.as_str()
                ))
            }
        };
        self.settle(repo.forge, due.attempts, result, sending)
    }

    async fn deliver(&self, due: &DueReport) -> Outcome {
        let (run, stages) = match self.store.get_run(due.run_id()).await {
            Ok(Some(found)) => found,
            Ok(None) => return Outcome::NothingToDo("the run no longer exists".into()),
            Err(e) => return self.failed(None, due.attempts, DeliveryError::Store(e)),
        };
        let Some(repo) = self.forges.repo_by_name(&run.repo).cloned() else {
            return Outcome::NothingToDo(format!(
                "repository `{}` has no forge configured",
                run.repo
            ));
        };
        let configured = match repo.forge {
            ForgeKind::Github => self.github.is_some(),
            ForgeKind::Gitlab => self.gitlab.is_some(),
        };
        if !configured {
            return Outcome::NothingToDo(format!(
                "no {} credentials are configured",
                repo.forge.as_str()
            ));
        }
        if let Some(until) = lock(&self.blocked_until).get(&repo.forge).copied() {
            if until > now_ms() {
                return Outcome::Retry {
                    at: until,
                    error: format!(
                        "waiting for the {} rate limit to reset",
                        repo.forge.as_str()
                    ),
                };
            }
        }
        let state = match self.state(run, stages, true).await {
            Ok(state) => state,
            Err(e) => return self.failed(None, due.attempts, DeliveryError::Store(e)),
        };
        tracing::Span::current().record("forge", repo.forge.as_str());
        let sending = std::time::Instant::now();
        let result = match repo.forge {
            ForgeKind::Github => self.deliver_github(&repo, &state).await,
            ForgeKind::Gitlab => self.deliver_gitlab(&repo, &state).await,
        };
        self.settle(repo.forge, due.attempts, result, sending)
    }

    async fn deliver_github(
        &self,
        repo: &ForgeRepo,
        state: &RunState,
    ) -> Result<(), DeliveryError> {
        let Some(gh) = &self.github else {
            return Ok(());
        };
        let result: Result<(), DeliveryError> = async {
            let crab = gh.client_for(&repo.slug).await?;
            match gh.mode() {
                github::Mode::Checks => {
                    github::report_check_run(&crab, &self.store, &repo.name, &repo.slug, state)
                        .await?
                }
                // A commit status is one per pipeline and commit: a re-run's attempt owns it,
                // and an older attempt's late report must not overwrite it.
                github::Mode::Statuses if self.store.superseded(state.run.id).await? => {}
                github::Mode::Statuses => {
                    github::report_status(&crab, &self.store, &repo.name, &repo.slug, state).await?
                }
            }
            if let Some(pr) = &state.run.pull_request {
                let api = github::comment_api(&crab, &repo.slug, pr.number)?;
                let base = PrBase::Github {
                    crab: &crab,
                    slug: &repo.slug,
                };
                self.update_pr_comment(repo, pr.number, &api, base).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = &result {
            if gh.mode() == github::Mode::Checks && e.status() == Some(401) {
                gh.forget_installation(&repo.slug).await;
            }
        }
        result
    }

    async fn deliver_gitlab(
        &self,
        repo: &ForgeRepo,
        state: &RunState,
    ) -> Result<(), DeliveryError> {
        let Some(gl) = &self.gitlab else {
            return Ok(());
        };
        let crab = gl.client().await?;
        // As on GitHub with a token: a re-run's attempt owns the pipeline's commit status.
        if !self.store.superseded(state.run.id).await? {
            gitlab::report_status(&crab, &self.store, &repo.name, &repo.slug, state).await?;
        }
        if let Some(pr) = &state.run.pull_request {
            let api = gitlab::comment_api(&crab, &repo.slug, pr.number);
            let base = PrBase::Gitlab {
                crab: &crab,
                slug: &repo.slug,
            };
            self.update_pr_comment(repo, pr.number, &api, base).await?;
        }
        Ok(())
    }

    /// Renders the pull request's comment from the current state of every pipeline of its
    /// latest head and writes it, one writer per pull request at a time.
    async fn update_pr_comment(
        &self,
        repo: &ForgeRepo,
        number: i64,
        api: &comments::CommentApi<'_>,
        base: PrBase<'_>,
    ) -> Result<(), DeliveryError> {
        let pr_lock = {
            let mut locks = lock(&self.pr_locks);
            if locks.len() > 256 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks
                .entry((repo.name.clone(), number))
                .or_default()
                .clone()
        };
        let _writer = pr_lock.lock().await;
        let mut states = Vec::new();
        for run in self.store.pull_request_runs(&repo.name, number).await? {
            if let Some((run, stages)) = self.store.get_run(run.id).await? {
                states.push(self.state(run, stages, false).await?);
            }
        }
        let mut body = render::pr_comment(number, &states);
        if let Some(head) = states.first().map(|s| s.run.commit.clone()) {
            let plans = self.environment_plans(repo, number, &head, base).await?;
            body.push_str(&render::environments_section(&head, &plans, &states));
        }
        comments::upsert(api, &self.store, &repo.name, number, &body).await
    }

    /// The environments a pull request's head would deploy to after merge: those whose
    /// `follows` branch is the pull request's base. The base is asked of the forge once per head
    /// (it is not in the runs), and only when some environment follows a branch.
    async fn environment_plans(
        &self,
        repo: &ForgeRepo,
        number: i64,
        head: &str,
        base: PrBase<'_>,
    ) -> Result<Vec<render::EnvironmentPlan>, DeliveryError> {
        let environments: Vec<_> = self
            .store
            .environments(Some(&repo.name), false)
            .await?
            .into_iter()
            .filter(|e| {
                matches!(
                    e.definition.follows,
                    deploylite_pipeline::Follows::Branch(_)
                )
            })
            .collect();
        if environments.is_empty() {
            return Ok(Vec::new());
        }
        let key = format!("{number}@{head}");
        let branch = match self.store.forge_object(&repo.name, PR_BASE, &key).await? {
            Some(branch) => branch,
            None => {
                let branch = match base {
                    PrBase::Github { crab, slug } => github::pull_base(crab, slug, number).await?,
                    PrBase::Gitlab { crab, slug } => gitlab::mr_target(crab, slug, number).await?,
                };
                self.store
                    .set_forge_object(&repo.name, PR_BASE, &key, &branch)
                    .await?;
                branch
            }
        };
        let mut plans = Vec::new();
        for environment in environments {
            if environment.definition.follows
                != deploylite_pipeline::Follows::Branch(branch.clone())
            {
                continue;
            }
            let mut promoted = Vec::new();
            for source in &environment.definition.promote_from {
                let deployed = self.store.has_deployed(&repo.name, source, head).await?;
                promoted.push((source.clone(), deployed));
            }
            plans.push(render::EnvironmentPlan {
                environment,
                promoted,
            });
        }
        Ok(plans)
    }

    /// A run as a report shows it: for a failed run, its first failed stage with the latest
    /// attempt's note and (with `with_log`) the tail of its log.
    async fn state(
        &self,
        run: RunRecord,
        stages: Vec<StageRecord>,
        with_log: bool,
    ) -> Result<RunState, StoreError> {
        let mut failure = None;
        if run.status == RunStatus::Failed {
            if let Some(stage) = stages.iter().find(|s| s.status == StageStatus::Failed) {
                let attempts = self.store.stage_attempts(run.id, &stage.name).await?;
                let latest = attempts
                    .iter()
                    .find(|a| a.attempt == stage.attempt)
                    .or(attempts.last());
                let note = latest.and_then(|a| a.note.clone());
                let log_tail = if with_log && stage.attempt > Attempt::NONE {
                    read_log_tail(self.data.log_path(run.id, &stage.name, stage.attempt)).await
                } else {
                    Vec::new()
                };
                let timed_out = note.as_deref().is_some_and(|n| n.starts_with("timed out"))
                    || log_tail
                        .iter()
                        .rev()
                        .take(5)
                        .any(|l| l.contains("timed out after"));
                failure = Some(Failure {
                    stage: stage.name.to_string(),
                    attempt: stage.attempt,
                    note,
                    exit_code: stage.exit_code.or(latest.and_then(|a| a.exit_code)),
                    log_tail,
                    timed_out,
                });
            }
        }
        let url = self.forges.run_url(run.id);
        Ok(RunState {
            run,
            stages,
            failure,
            url,
            now_ms: now_ms(),
        })
    }

    /// When to try again after `error`, or whether to give up.
    /// A delivery's outcome (a failure retried or given up), counted in the forge metrics
    /// with the time since `sending`.
    fn settle(
        &self,
        forge: ForgeKind,
        attempts: i64,
        result: Result<(), DeliveryError>,
        sending: std::time::Instant,
    ) -> Outcome {
        let outcome = match result {
            Ok(()) => Outcome::Delivered,
            Err(e) => self.failed(Some(forge), attempts, e),
        };
        let label = match &outcome {
            Outcome::Retry { .. } => "error",
            Outcome::GiveUp(_) => "rejected",
            Outcome::Delivered | Outcome::NothingToDo(_) => "ok",
        };
        deploylite_telemetry::metrics().forge_delivery(forge.as_str(), label, sending.elapsed());
        outcome
    }

    fn failed(&self, forge: Option<ForgeKind>, attempts: i64, error: DeliveryError) -> Outcome {
        let now = now_ms();
        let backoff = self.backoff_ms(attempts);
        let text = error.to_string();
        match &error {
            DeliveryError::Http {
                status,
                retry_after,
                remaining,
                reset,
                ..
            } => {
                let rate_limited = *status == 429
                    || (*status == 403 && (*remaining == Some(0) || retry_after.is_some()));
                let at = if let Some(secs) = retry_after {
                    now + (i64::try_from(*secs).unwrap_or(i64::MAX / 2_000) * 1000)
                        .clamp(0, MAX_FORGE_WAIT_MS)
                } else if let (true, Some(0), Some(reset)) = (rate_limited, *remaining, *reset) {
                    (reset.saturating_mul(1000)).clamp(now + 1000, now + MAX_FORGE_WAIT_MS)
                } else {
                    now + backoff
                };
                if rate_limited {
                    if let Some(forge) = forge {
                        let mut blocked = lock(&self.blocked_until);
                        let until = blocked.entry(forge).or_insert(at);
                        *until = (*until).max(at);
                    }
                    tracing::warn!(
                        forge = forge.map(ForgeKind::as_str),
                        until_ms = at,
                        "forge rate limit reached"
                    );
                }
                if !rate_limited
                    && matches!(status, 400 | 404 | 410 | 422)
                    && attempts + 1 >= GIVE_UP_AFTER
                {
                    return Outcome::GiveUp(text);
                }
                Outcome::Retry { at, error: text }
            }
            DeliveryError::Setup(_) => {
                tracing::error!(error = %text, "forge reporting is misconfigured");
                Outcome::Retry {
                    at: now + self.config.backoff_max.as_millis() as i64,
                    error: text,
                }
            }
            _ => Outcome::Retry {
                at: now + backoff,
                error: text,
            },
        }
    }

    /// `backoff_min * 2^attempts`, at most `backoff_max`, with jitter: between half and all of it.
    fn backoff_ms(&self, attempts: i64) -> i64 {
        let min = self.config.backoff_min.as_millis().max(1) as f64;
        let max = self.config.backoff_max.as_millis().max(1) as f64;
        let base = (min * 2f64.powi(attempts.clamp(0, 30) as i32)).min(max);
        (base * (0.5 + 0.5 * random_fraction())) as i64
    }
}

/// A number in [0, 1) that differs between calls; jitter needs no more than that.
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The last lines of a stage log, read from its end (logs can be large).
async fn read_log_tail(path: std::path::PathBuf) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&path).ok()?;
        let len = file.metadata().ok()?.len();
        let start = len.saturating_sub(64 * 1024);
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if start > 0 {
            // The first line was cut by the seek.
            text = text
                .split_once('\n')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default();
        }
        Some(render::log_tail(&text, render::LOG_TAIL_LINES))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
