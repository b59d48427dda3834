//! The server's side of remote runners: where they wait for assigned leases, what a lease
//! carries (the wire types are `deploylite-protocol`'s), and how their reports become attempt
//! results. The HTTP layer (server crate) only authenticates and translates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deploylite_model::{Attempt, RunId};
use deploylite_protocol::{AttemptOutcome, LeaseJob};
use deploylite_runner::outcome::{describe, ending, verdict, Verdict};
use deploylite_runner::source_url::split_credentials;
use deploylite_telemetry::spans;
use tokio::sync::{oneshot, Notify};

use super::{lock, Scheduler, SchedulerEvent};
use crate::status::StageStatus;
use crate::store::{now_ms, AttemptResult, StoreError};

/// Wakes the long-poll of a runner when the scheduler assigns it a lease.
#[derive(Default)]
pub struct RunnerHub {
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

impl RunnerHub {
    pub fn notify(&self, runner: &str) {
        self.waiter(runner).notify_one();
    }

    pub fn waiter(&self, runner: &str) -> Arc<Notify> {
        lock(&self.waiters)
            .entry(runner.to_string())
            .or_default()
            .clone()
    }
}

impl Scheduler {
    /// Leases assigned to `runner` and not collected yet (at most `max`), marked collected.
    pub async fn collect_leases(
        &self,
        runner: &str,
        max: usize,
    ) -> Result<Vec<LeaseJob>, StoreError> {
        let leases = self
            .store
            .collect_leases(runner, i64::try_from(max).unwrap_or(i64::MAX))
            .await?;
        let mut jobs = Vec::with_capacity(leases.len());
        for lease in leases {
            let Some(run) = self.store.run(lease.run_id).await? else {
                continue;
            };
            let spec = self.spec_of(lease.run_id).await?;
            let Some(stage) = spec.stages.iter().find(|s| s.name == lease.stage).cloned() else {
                continue;
            };
            let info = super::attempt::RunInfo {
                id: run.id,
                repo: run.repo.clone(),
                pipeline: run.pipeline.clone(),
                commit: run.commit.clone(),
                git_ref: run.git_ref.clone(),
                trigger: run.trigger.clone(),
                workspace: None,
            };
            let run_span = spans::run_span(run.id, &run.repo, &run.pipeline);
            let span =
                spans::remote_attempt_span(&run_span, run.id, &lease.stage, lease.attempt, runner);
            span.in_scope(|| tracing::info!("stage attempt leased"));
            let traceparent = deploylite_telemetry::trace::traceparent(&span);
            let env = super::attempt::stage_env(&info, &spec, &stage, lease.attempt, "");
            let previous_attempt = self
                .previous_attempt(run.id, &lease.stage, lease.attempt)
                .await?;
            jobs.push(LeaseJob {
                run_id: run.id,
                stage,
                attempt: lease.attempt,
                failures: lease.failures,
                repo: run.repo,
                pipeline: run.pipeline,
                commit: run.commit,
                git_ref: run.git_ref,
                trigger: run.trigger,
                env,
                // Never the credential: executors that clone get theirs another way.
                source_url: self
                    .config
                    .source_urls
                    .get(info.repo.as_str())
                    .map(|url| split_credentials(url).0),
                previous_attempt,
                log_bytes: self.config.log_bytes,
                traceparent,
            });
        }
        Ok(jobs)
    }

    /// Extends a lease; None when the runner no longer holds it, else whether to cancel.
    pub async fn renew_lease(
        &self,
        runner: &str,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
    ) -> Result<Option<bool>, StoreError> {
        let deadline =
            now_ms() + i64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(i64::MAX / 2);
        self.store
            .renew_lease(runner, run_id, stage, attempt, deadline)
            .await
    }

    /// Records a remote attempt's end. False (nothing changed) when the runner does not hold
    /// that attempt any more: a late report can never overwrite a newer attempt.
    pub async fn complete_remote(
        &self,
        runner: &str,
        run_id: RunId,
        stage_name: &str,
        attempt: Attempt,
        reported: &AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let Some((failures, cancelling)) = self
            .store
            .held_lease(runner, run_id, stage_name, attempt)
            .await?
        else {
            return Ok(false);
        };
        if let Some(span) = spans::open_attempt(run_id, stage_name, attempt) {
            span.in_scope(|| tracing::info!(outcome = ?reported, "stage attempt reported"));
        }
        if *reported == AttemptOutcome::HandedBack {
            let note =
                format!("interrupted: handed back by runner `{runner}`, which is shutting down");
            let reason = format!("restart: attempt {attempt} was handed back by runner `{runner}`");
            self.close_attempt_log(
                run_id,
                stage_name,
                attempt,
                &format!("interrupted (handed back by runner `{runner}`, which is shutting down)"),
            )
            .await;
            let done = self
                .store
                .requeue_attempt(run_id, stage_name, attempt, &note, &reason)
                .await?;
            self.after_remote_end(run_id, stage_name, attempt, StageStatus::Failed);
            return Ok(done);
        }
        let outcome = reported;
        let spec = self.spec_of(run_id).await?;
        let Some(stage) = spec.stages.iter().find(|s| s.name == stage_name) else {
            return Ok(false);
        };
        let note = describe(stage, outcome);
        let exit_code = outcome.exit_code().map(i64::from);
        let base = AttemptResult {
            run_id,
            stage: stage_name.into(),
            attempt,
            attempt_status: StageStatus::Failed,
            stage_status: StageStatus::Failed,
            exit_code,
            note: note.clone(),
            counts_as_failure: true,
            not_before: None,
            pending_reason: None,
        };
        let verdict = verdict(stage, failures, outcome, cancelling);
        if !matches!(verdict, Verdict::Retry { .. }) {
            // The runner's last chunk is in: the closing line goes after it. (A retry's closing
            // line, with the retry's delay, is written below.)
            self.close_attempt_log(run_id, stage_name, attempt, &ending(stage, outcome))
                .await;
        }
        let result = match verdict {
            Verdict::Succeeded => AttemptResult {
                attempt_status: StageStatus::Success,
                stage_status: StageStatus::Success,
                counts_as_failure: false,
                ..base
            },
            Verdict::Cancelled => AttemptResult {
                attempt_status: StageStatus::Cancelled,
                stage_status: StageStatus::Cancelled,
                counts_as_failure: false,
                ..base
            },
            Verdict::Failed => base,
            Verdict::Retry { delay } => {
                let path = self.data.log_path(run_id, stage_name, attempt);
                let mut log = deploylite_runner::StageLog::create(&path)
                    .await
                    .map_err(|e| {
                        StoreError::Corrupt(format!("cannot open the log {}: {e}", path.display()))
                    })?
                    .with_byte_limit(self.config.log_bytes);
                let (at, reason) = super::attempt::retry_backoff(
                    stage,
                    attempt,
                    failures.saturating_add(1),
                    delay,
                    note.as_deref(),
                    &mut log,
                )
                .await;
                log.finish().await;
                AttemptResult {
                    stage_status: StageStatus::Queued,
                    not_before: Some(at),
                    pending_reason: Some(reason),
                    ..base
                }
            }
        };
        // Recorded by the scheduler's next tick, with whatever the end lets start.
        let (reply, recorded) = oneshot::channel();
        self.complete(super::Completion::Attempt {
            result,
            reply: Some(reply),
        })
        .await?;
        recorded.await.map_err(|_| StoreError::Stopping)
    }

    /// Appends a chunk of formatted log lines to the attempt's log, if the runner holds it.
    pub async fn append_remote_log(
        &self,
        runner: &str,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
        chunk: &[u8],
    ) -> Result<bool, StoreError> {
        if self
            .store
            .held_lease(runner, run_id, stage, attempt)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        let path = self.data.log_path(run_id, stage, attempt);
        match deploylite_runner::append_chunk(&path, chunk, self.config.log_bytes).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                runner,
                run_id = run_id.get(),
                stage,
                attempt = attempt.get(),
                limit = self.config.log_bytes,
                "a remote runner sent more log than limits.log_bytes; the chunk was dropped"
            ),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot append a remote log chunk")
            }
        }
        Ok(true)
    }

    fn after_remote_end(&self, run_id: RunId, stage: &str, attempt: Attempt, status: StageStatus) {
        let _ = self.events.send(SchedulerEvent::StageFinished {
            run_id,
            stage: stage.into(),
            attempt,
            status,
        });
        self.wake.notify_one();
    }
}
