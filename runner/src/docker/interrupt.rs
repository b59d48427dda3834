//! Timeouts and cancellation: how a stage attempt is interrupted, and what the log says then.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::{AttemptOutcome, StageJob};
use crate::log::StageLog;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interrupt {
    TimedOut,
    Cancelled,
}

impl Interrupt {
    pub(super) fn outcome(self) -> AttemptOutcome {
        match self {
            Interrupt::TimedOut => AttemptOutcome::TimedOut,
            Interrupt::Cancelled => AttemptOutcome::Cancelled,
        }
    }
}

/// `timed out after 1s: stopped the step's container`, `cancelled while preparing image ...`.
pub(super) fn interrupt_message(end: Interrupt, job: &StageJob, what: &str) -> String {
    match end {
        Interrupt::TimedOut => {
            let limit = job.timeout.map(|t| format!("{t:?}")).unwrap_or_default();
            format!("timed out after {limit}{what}")
        }
        Interrupt::Cancelled => format!("cancelled{what}"),
    }
}

/// How a preparation (an image pulled, a service started) ended: None to go on, or the
/// attempt's outcome once the log says why. `context` prefixes an error, `doing` follows
/// "timed out after …" or "cancelled".
pub(super) async fn settle(
    result: Result<Result<(), impl std::fmt::Display>, Interrupt>,
    log: &mut StageLog,
    job: &StageJob,
    context: &str,
    doing: &str,
) -> Option<AttemptOutcome> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(message)) => {
            let message = format!("{context}{message}");
            log.system(&message).await;
            Some(AttemptOutcome::Error(message))
        }
        Err(end) => {
            log.system(&interrupt_message(end, job, doing)).await;
            Some(end.outcome())
        }
    }
}

/// Runs `fut` unless the deadline passes or the stage is cancelled first.
pub(super) async fn interruptible<T>(
    fut: impl std::future::Future<Output = T>,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<T, Interrupt> {
    tokio::select! {
        out = fut => Ok(out),
        _ = sleep_until(deadline) => Err(Interrupt::TimedOut),
        _ = cancel.cancelled() => Err(Interrupt::Cancelled),
    }
}

pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
