//! The scheduler's events as metrics and span ends. A task of its own reads
//! [`SchedulerEvent`]s and the times the store recorded for them, so the scheduler's tick does
//! no metrics work and its transaction no extra query; the histograms lag the events by
//! one small read each.

use std::time::Duration;

use deploylite_runner::CancellationToken;
use deploylite_telemetry::webhook_clock::webhook_clock;
use deploylite_telemetry::{metrics, spans};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::scheduler::SchedulerEvent;
use crate::store::{Store, StoreError};

/// Records every event until `shutdown`.
pub async fn record_events(
    store: Store,
    mut events: broadcast::Receiver<SchedulerEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown.cancelled() => return,
        };
        match event {
            Ok(event) => {
                if let Err(error) = record(&store, &event).await {
                    tracing::debug!(%error, ?event, "cannot record a scheduler event's metrics");
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "the metrics recorder fell behind the scheduler; some runs and stages are not counted"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Records one event's metrics (and closes the spans it ends).
pub async fn record(store: &Store, event: &SchedulerEvent) -> Result<(), StoreError> {
    match event {
        SchedulerEvent::StageStarted {
            run_id,
            stage,
            attempt,
        } => {
            let Some(t) = store.attempt_timing(*run_id, stage, *attempt).await? else {
                return Ok(());
            };
            if let Some(runnable_at) = t.runnable_at {
                metrics().stage_started(millis(t.started_at - runnable_at));
            }
            if t.first_of_run {
                if let Some(webhook) = webhook_clock().cause_of(&t.repo, t.run_created_at) {
                    metrics()
                        .webhook_to_start(&webhook.forge, millis(t.started_at - webhook.at_ms));
                }
            }
        }
        SchedulerEvent::StageFinished {
            run_id,
            stage,
            attempt,
            status,
        } => {
            spans::end_attempt(*run_id, stage, *attempt);
            let Some(t) = store.attempt_timing(*run_id, stage, *attempt).await? else {
                return Ok(());
            };
            let ended = t.finished_at.unwrap_or(t.started_at);
            metrics().stage_finished(
                &t.repo,
                &t.pipeline,
                status.as_str(),
                millis(ended - t.started_at),
            );
        }
        SchedulerEvent::RunFinished { run_id, status } => {
            let timing = store.run_timing(*run_id).await?;
            if let Some(t) = timing {
                let began = t.started_at.unwrap_or(t.created_at);
                let took = millis(t.finished_at.unwrap_or(began) - began);
                metrics().run_finished(&t.repo, &t.pipeline, status.as_str(), took);
                spans::run_span(*run_id, &t.repo, &t.pipeline).in_scope(|| {
                    tracing::info!(status = %status, duration_ms = took.as_millis() as u64, "run finished")
                });
            }
            spans::end_run(*run_id);
        }
        // The change feed's events for the status page: no metric of their own (a run's
        // duration is measured at its end, a skipped stage never ran).
        SchedulerEvent::RunStarted { .. } | SchedulerEvent::StageSkipped { .. } => {}
    }
    Ok(())
}
