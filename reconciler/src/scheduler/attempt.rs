//! One stage attempt, from its first log line to the result in the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deploylite_model::{Attempt, CommitSha, RepoName, RunId};
use deploylite_pipeline::{Pipeline, Stage};
use deploylite_runner::outcome::{
    closing_line, describe, ending, parse_closing_line, verdict, Verdict,
};
use deploylite_runner::{CancellationToken, StageJob, StageLog};
use deploylite_telemetry::spans;
use rand::Rng;
use tracing::Instrument;

use super::{lock, Scheduler};
use crate::status::StageStatus;
use crate::store::{now_ms, ActiveRun, AttemptResult, Dispatch};

pub(super) struct RunInfo {
    pub id: RunId,
    pub repo: RepoName,
    pub pipeline: String,
    pub commit: CommitSha,
    pub git_ref: String,
    pub trigger: String,
    pub workspace: Option<String>,
}

impl From<&ActiveRun> for RunInfo {
    fn from(r: &ActiveRun) -> Self {
        RunInfo {
            id: r.id,
            repo: r.repo.clone(),
            pipeline: r.pipeline.clone(),
            commit: r.commit.clone(),
            git_ref: r.git_ref.clone(),
            trigger: r.trigger.clone(),
            workspace: r.workspace.clone(),
        }
    }
}

pub(super) struct AttemptContext {
    pub run: RunInfo,
    pub spec: Arc<Pipeline>,
    pub dispatch: Dispatch,
    /// Failed attempts before this one (what `retry.max` counts).
    pub failures: u32,
    pub cancel: CancellationToken,
    pub shutdown: CancellationToken,
}

/// How an attempt ended, before [`Scheduler::result`] names the attempt in its record.
struct AttemptEnd {
    attempt_status: StageStatus,
    /// The same as the attempt's, or `Queued` for a retry.
    stage_status: StageStatus,
    exit_code: Option<i64>,
    note: Option<String>,
    /// Counts against `retry.max`.
    counts_as_failure: bool,
    /// When the retry may start, and the pending reason that says so.
    backoff: Option<(i64, String)>,
}

impl AttemptEnd {
    /// The attempt and the stage both end `status`: no exit code, note or retry, not counted.
    fn ended(status: StageStatus) -> AttemptEnd {
        AttemptEnd {
            attempt_status: status,
            stage_status: status,
            exit_code: None,
            note: None,
            counts_as_failure: false,
            backoff: None,
        }
    }
}

impl Scheduler {
    pub(super) async fn run_attempt(self: Arc<Self>, ctx: AttemptContext) {
        let d = &ctx.dispatch;
        let run_span = spans::run_span(d.run_id, &ctx.run.repo, &ctx.run.pipeline);
        let span = spans::attempt_span(&run_span, d.run_id, &d.stage, d.attempt, &d.runner);
        self.run_attempt_in_span(&ctx).instrument(span).await
    }

    async fn run_attempt_in_span(self: Arc<Self>, ctx: &AttemptContext) {
        let d = &ctx.dispatch;
        tracing::info!("stage attempt started");
        let key = (d.run_id, d.stage.clone());
        let result = self.execute_attempt(ctx).await;
        lock(&self.running).remove(&key);
        let Some(result) = result else {
            return; // daemon shutting down: the attempt stays open for recovery
        };
        tracing::info!(status = %result.attempt_status, exit_code = result.exit_code, "stage attempt ended");
        // The scheduler's next tick records the end together with what follows from it.
        if let Err(error) = self
            .complete(super::Completion::Attempt {
                result,
                reply: None,
            })
            .await
        {
            // Left open in the store: the next start recovers it as interrupted.
            tracing::error!(%error, run_id = d.run_id.get(), stage = %d.stage, "cannot record an attempt");
        }
    }

    /// Runs the attempt (and the rollback when it is the stage's last failure). None when the
    /// daemon is shutting down.
    async fn execute_attempt(&self, ctx: &AttemptContext) -> Option<AttemptResult> {
        let d = &ctx.dispatch;
        let Some(stage) = ctx.spec.stages.iter().find(|s| s.name == d.stage) else {
            return Some(self.result(
                ctx,
                AttemptEnd {
                    note: Some("stage missing from the run's pipeline".into()),
                    ..AttemptEnd::ended(StageStatus::Failed)
                },
            ));
        };
        let log_path = self.data.log_path(d.run_id, &d.stage, d.attempt);
        let mut log = match StageLog::create(&log_path).await {
            Ok(log) => log.with_byte_limit(self.config.log_bytes),
            Err(e) => {
                let note = format!("cannot create the log {}: {e}", log_path.display());
                return Some(self.result(
                    ctx,
                    AttemptEnd {
                        note: Some(note),
                        counts_as_failure: true,
                        ..AttemptEnd::ended(StageStatus::Failed)
                    },
                ));
            }
        };
        if self.echo_logs {
            log.echo_to_stdout(d.stage.to_string());
        }
        self.write_header(ctx, &mut log).await;

        let workspace = ctx
            .run
            .workspace
            .clone()
            .unwrap_or_else(|| self.data.workspace(d.run_id).display().to_string());
        let job = StageJob {
            run_id: d.run_id,
            stage: d.stage.clone(),
            attempt: d.attempt,
            workspace: workspace.clone().into(),
            env: stage_env(&ctx.run, &ctx.spec, stage, d.attempt, &workspace),
            steps: stage.steps.clone(),
            timeout: stage.timeout,
            image: stage.image.clone(),
            resources: stage.resources.clone(),
            services: stage.services.clone(),
            source_url: None,
            repo: ctx.run.repo.clone(),
            pipeline: ctx.run.pipeline.clone(),
            commit: ctx.run.commit.clone(),
        };
        let outcome = self
            .executor
            .execute(job.clone(), &mut log, ctx.cancel.clone())
            .await;
        if ctx.shutdown.is_cancelled() {
            log.system(&closing_line(
                d.attempt,
                "interrupted (the daemon is shutting down; the stage runs again after it restarts)",
            ))
            .await;
            log.finish().await;
            return None;
        }
        if let deploylite_runner::AttemptOutcome::Error(message) = &outcome {
            // Otherwise only the attempt record would say why the stage never ran.
            log.system(&format!("the executor could not run the stage: {message}"))
                .await;
        }
        let exit_code = outcome.exit_code().map(i64::from);
        let note = describe(stage, &outcome);
        let failures = ctx.failures;
        let verdict = verdict(stage, failures, &outcome, ctx.cancel.is_cancelled());
        // A retried attempt's closing line also says when the next one starts.
        let retried = matches!(verdict, Verdict::Retry { .. });
        let result = match verdict {
            Verdict::Succeeded => self.result(
                ctx,
                AttemptEnd {
                    exit_code: Some(0),
                    ..AttemptEnd::ended(StageStatus::Success)
                },
            ),
            Verdict::Cancelled => self.result(
                ctx,
                AttemptEnd {
                    note,
                    ..AttemptEnd::ended(StageStatus::Cancelled)
                },
            ),
            Verdict::Retry { delay } => {
                let (at, reason) = retry_backoff(
                    stage,
                    d.attempt,
                    failures.saturating_add(1),
                    delay,
                    note.as_deref(),
                    &mut log,
                )
                .await;
                self.result(
                    ctx,
                    AttemptEnd {
                        attempt_status: StageStatus::Failed,
                        stage_status: StageStatus::Queued,
                        exit_code,
                        note,
                        counts_as_failure: true,
                        backoff: Some((at, reason)),
                    },
                )
            }
            Verdict::Failed => {
                if !stage.rollback.is_empty() && !ctx.cancel.is_cancelled() {
                    log.system("the stage failed for good: running its rollback steps")
                        .await;
                    let rollback = StageJob {
                        steps: stage.rollback.clone(),
                        ..job
                    };
                    let rolled = self
                        .executor
                        .execute(rollback, &mut log, ctx.cancel.clone())
                        .await;
                    log.system(&format!("rollback finished: {rolled:?}")).await;
                }
                self.result(
                    ctx,
                    AttemptEnd {
                        exit_code,
                        note,
                        counts_as_failure: true,
                        ..AttemptEnd::ended(StageStatus::Failed)
                    },
                )
            }
        };
        if !retried {
            log.system(&closing_line(d.attempt, &ending(stage, &outcome)))
                .await;
        }
        log.finish().await;
        Some(result)
    }

    fn result(&self, ctx: &AttemptContext, end: AttemptEnd) -> AttemptResult {
        let AttemptEnd {
            attempt_status,
            stage_status,
            exit_code,
            note,
            counts_as_failure,
            backoff,
        } = end;
        let (not_before, pending_reason) = match backoff {
            Some((at, reason)) => (Some(at), Some(reason)),
            None => (None, None),
        };
        AttemptResult {
            run_id: ctx.dispatch.run_id,
            stage: ctx.dispatch.stage.clone(),
            attempt: ctx.dispatch.attempt,
            attempt_status,
            stage_status,
            exit_code,
            note,
            counts_as_failure,
            not_before,
            pending_reason,
        }
    }

    async fn write_header(&self, ctx: &AttemptContext, log: &mut StageLog) {
        let d = &ctx.dispatch;
        log.note(&format!(
            "run #{} {}/{} stage `{}` attempt {} on {} ({} {})",
            d.run_id,
            ctx.run.repo,
            ctx.run.pipeline,
            d.stage,
            d.attempt,
            d.runner,
            ctx.run.git_ref,
            short(&ctx.run.commit)
        ))
        .await;
        if let Ok(Some(previous)) = self.previous_attempt(d.run_id, &d.stage, d.attempt).await {
            log.note(&previous).await;
        }
    }

    /// Ends the log of an attempt that someone else ran (a remote runner) or that stopped
    /// without saying so (interrupted by a restart, a lost lease) with its closing line.
    pub(super) async fn close_attempt_log(
        &self,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
        ending: &str,
    ) {
        let path = self.data.log_path(run_id, stage, attempt);
        // A daemon that was stopped (not killed) closed its attempts' logs itself.
        if let Ok(Some(last)) = deploylite_runner::last_line(&path).await {
            if parse_closing_line(&last).is_some_and(|(closed, _)| closed == attempt) {
                return;
            }
        }
        match StageLog::create(&path).await {
            Ok(log) => {
                let mut log = log.with_byte_limit(self.config.log_bytes);
                log.system(&closing_line(attempt, ending)).await;
                log.finish().await;
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot end an attempt's log")
            }
        }
    }

    /// How the attempt before `attempt` ended, as the new attempt's log says it (None for the
    /// first attempt).
    pub(super) async fn previous_attempt(
        &self,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
    ) -> Result<Option<String>, crate::store::StoreError> {
        if attempt <= Attempt::FIRST {
            return Ok(None);
        }
        Ok(self
            .store
            .stage_attempts(run_id, stage)
            .await?
            .into_iter()
            .find(|a| a.attempt.next() == attempt)
            .map(|a| {
                format!(
                    "previous attempt {}: {}{}",
                    a.attempt,
                    a.status,
                    a.note.map(|n| format!(" ({n})")).unwrap_or_default()
                )
            }))
    }
}

/// When a retried stage may run again, and the `pending_reason` that says so; logged too.
pub(crate) async fn retry_backoff(
    stage: &Stage,
    attempt: Attempt,
    failures: u32,
    delay: Duration,
    note: Option<&str>,
    log: &mut StageLog,
) -> (i64, String) {
    let delay = with_jitter(delay, stage.retry.max_backoff);
    let at = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
    let why = note.unwrap_or("failed");
    log.system(&closing_line(
        attempt,
        &format!(
            "failed ({why}); retry {failures} of {} in {}",
            stage.retry.max,
            deploylite_pipeline::duration::format_duration(delay)
        ),
    ))
    .await;
    let when = chrono::DateTime::from_timestamp_millis(at)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    (
        at,
        format!("backoff until {when}: attempt {attempt} failed ({why})"),
    )
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Exponential backoff plus up to 25% random jitter, so that retries of many stages that failed
/// together do not hit a shared dependency in lockstep.
fn with_jitter(base: Duration, cap: Duration) -> Duration {
    let jitter_ms = u64::try_from(base.as_millis() / 4).unwrap_or(0);
    let extra = if jitter_ms > 0 {
        rand::rng().random_range(0..=jitter_ms)
    } else {
        0
    };
    (base + Duration::from_millis(extra)).min(cap.max(base))
}

/// Pipeline env < stage env < DeployLite's own variables (which a pipeline cannot override).
pub(crate) fn stage_env(
    run: &RunInfo,
    spec: &Pipeline,
    stage: &Stage,
    attempt: Attempt,
    workspace: &str,
) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    env.extend(stage.env.clone());
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("CI", "true".into());
    set("DEPLOYLITE", "true".into());
    set("DEPLOYLITE_RUN_ID", run.id.to_string());
    set("DEPLOYLITE_REPO", run.repo.to_string());
    set("DEPLOYLITE_COMMIT", run.commit.to_string());
    set("DEPLOYLITE_REF", run.git_ref.clone());
    set("DEPLOYLITE_EVENT", run.trigger.clone());
    set("DEPLOYLITE_PIPELINE", run.pipeline.clone());
    set("DEPLOYLITE_STAGE", stage.name.clone());
    set("DEPLOYLITE_ATTEMPT", attempt.to_string());
    set("DEPLOYLITE_WORKSPACE", workspace.to_string());
    if let Some(branch) = run.git_ref.strip_prefix("refs/heads/") {
        set("DEPLOYLITE_BRANCH", branch.to_string());
    }
    if let Some(tag) = run.git_ref.strip_prefix("refs/tags/") {
        set("DEPLOYLITE_TAG", tag.to_string());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter_and_the_cap() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(4), Duration::from_secs(60));
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(5),
                "{d:?}"
            );
            let capped = with_jitter(Duration::from_secs(60), Duration::from_secs(60));
            assert_eq!(capped, Duration::from_secs(60));
        }
    }
}
