//! Spans that outlive the task that starts them. A run lives across many scheduler ticks and a
//! remote stage attempt across many runner requests, so their spans are kept here, by id, until
//! the end is seen: a stage attempt's span is then a child of its run's, and a remote runner's
//! span a child of the attempt's (through the trace context in the lease, see [`crate::trace`]).
//!
//! Both maps are bounded: should ends be missed (a lagging event stream), the oldest runs'
//! spans are closed first.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use deploylite_model::{Attempt, RunId};
use tracing::Span;

/// More runs than this open at once is a leak, not a workload: the oldest are closed.
const MAX_OPEN_RUNS: usize = 10_000;

#[derive(Default)]
struct Open {
    runs: BTreeMap<RunId, Span>,
    /// Remote attempts by (run, stage, attempt).
    attempts: BTreeMap<(RunId, String, Attempt), Span>,
}

fn open() -> std::sync::MutexGuard<'static, Open> {
    static OPEN: OnceLock<Mutex<Open>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
        .lock()
        // A panic elsewhere while holding it leaves the maps usable.
        .unwrap_or_else(|e| e.into_inner())
}

/// The span of run `run_id`, opened on first use (a root span: a run starts a trace).
pub fn run_span(run_id: RunId, repo: &str, pipeline: &str) -> Span {
    let mut open = open();
    if let Some(span) = open.runs.get(&run_id) {
        return span.clone();
    }
    let span = tracing::info_span!(parent: None, "run", run_id = run_id.get(), repo = %repo, pipeline = %pipeline);
    open.runs.insert(run_id, span.clone());
    while open.runs.len() > MAX_OPEN_RUNS {
        let Some((&oldest, _)) = open.runs.iter().next() else {
            break;
        };
        close_run(&mut open, oldest);
    }
    span
}

/// Closes the run's span and those of its remote attempts still open.
pub fn end_run(run_id: RunId) {
    close_run(&mut open(), run_id);
}

fn close_run(open: &mut Open, run_id: RunId) {
    open.runs.remove(&run_id);
    let ended: Vec<_> = open
        .attempts
        .range((run_id, String::new(), Attempt::NONE)..)
        .take_while(|((run, _, _), _)| *run == run_id)
        .map(|(key, _)| key.clone())
        .collect();
    for key in ended {
        open.attempts.remove(&key);
    }
}

/// The span of a stage attempt, a child of its run's (`run` from [`run_span`]).
pub fn attempt_span(
    run: &Span,
    run_id: RunId,
    stage: &str,
    attempt: Attempt,
    runner: &str,
) -> Span {
    tracing::info_span!(parent: run, "stage_attempt", run_id = run_id.get(), stage = %stage, attempt = attempt.get(), runner = %runner)
}

/// The span of a remote attempt, kept open until [`end_attempt`] (its report, or its run's end).
pub fn remote_attempt_span(
    run: &Span,
    run_id: RunId,
    stage: &str,
    attempt: Attempt,
    runner: &str,
) -> Span {
    let span = attempt_span(run, run_id, stage, attempt, runner);
    open()
        .attempts
        .insert((run_id, stage.to_string(), attempt), span.clone());
    span
}

/// The open span of a remote attempt, if any.
pub fn open_attempt(run_id: RunId, stage: &str, attempt: Attempt) -> Option<Span> {
    open()
        .attempts
        .get(&(run_id, stage.to_string(), attempt))
        .cloned()
}

pub fn end_attempt(run_id: RunId, stage: &str, attempt: Attempt) {
    open()
        .attempts
        .remove(&(run_id, stage.to_string(), attempt));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_one_span_until_it_ends() {
        let run = RunId::new(-7);
        let a = run_span(run, "app", "ci");
        let b = run_span(run, "app", "ci");
        assert_eq!(a.id(), b.id());
        remote_attempt_span(&a, run, "build", Attempt::FIRST, "r1");
        assert!(open_attempt(run, "build", Attempt::FIRST).is_some());
        end_run(run);
        assert!(open_attempt(run, "build", Attempt::FIRST).is_none());
        assert!(!open().runs.contains_key(&run));
    }
}
