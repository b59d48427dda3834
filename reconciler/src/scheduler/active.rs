//! The scheduler's copy of the active runs, kept up to date by applying to it exactly what it
//! writes to the store (write-through). The store stays the truth: the copy is read again from
//! it whenever someone else may have written (a new run, a cancellation, a remote runner), when
//! a guarded write did not change the rows it expected, and every idle tick. What it saves is a
//! full read of every active run and stage on each stage end.
//!
//! Every function here mirrors one statement of `store::schedule`; the store conformance tests
//! compare the two after each kind of write.

use crate::model::{ActiveRun, AttemptResult, TickWrites};
use crate::status::{RunStatus, StageStatus};
use deploylite_model::RunId;

/// Applies a tick's decisions as `TickTx::apply` writes them. Expired leases are not mirrored:
/// the caller reads the store again after one.
pub fn apply_writes(runs: &mut Vec<ActiveRun>, writes: &TickWrites) {
    for run_id in &writes.start_runs {
        if let Some(run) = queued_run(runs, *run_id) {
            run.status = RunStatus::Running;
            run.pending_reason = None;
        }
    }
    for (run_id, reason) in &writes.run_pending {
        if let Some(run) = queued_run(runs, *run_id) {
            run.pending_reason = reason.clone();
        }
    }
    for skip in &writes.skip {
        if let Some(stage) = queued_stage(runs, skip.run_id, &skip.stage) {
            stage.status = skip.status;
            stage.pending_reason = Some(skip.reason.clone());
        }
    }
    for (run_id, name, reason) in &writes.stage_pending {
        if let Some(stage) = queued_stage(runs, *run_id, name) {
            stage.pending_reason = reason.clone();
        }
    }
    for d in &writes.dispatch {
        if let Some(stage) = queued_stage(runs, d.run_id, &d.stage) {
            stage.status = StageStatus::Running;
            stage.attempt = stage.attempt.next();
            stage.pending_reason = None;
            stage.not_before = None;
            stage.runner = Some(d.runner.clone());
            stage.lease_deadline = d.lease_deadline;
        }
    }
    let finished: Vec<RunId> = writes.finish.iter().map(|f| f.run_id).collect();
    runs.retain(|r| !finished.contains(&r.id));
}

/// Applies an attempt's end as `TickTx::finish_attempt` writes it. Returns false, changing
/// nothing, when the copy does not hold that attempt as running.
pub fn apply_result(runs: &mut [ActiveRun], result: &AttemptResult) -> bool {
    let Some(stage) = runs
        .iter_mut()
        .find(|r| r.id == result.run_id)
        .and_then(|r| r.stages.iter_mut().find(|s| s.name == result.stage))
        .filter(|s| s.status == StageStatus::Running && s.attempt == result.attempt)
    else {
        return false;
    };
    stage.status = result.stage_status;
    stage.failures = stage
        .failures
        .saturating_add(u32::from(result.counts_as_failure));
    stage.not_before = result.not_before;
    stage.pending_reason = result.pending_reason.clone();
    true
}

pub fn apply_workspace_ready(runs: &mut [ActiveRun], run_id: RunId, path: &str) {
    if let Some(run) = runs.iter_mut().find(|r| r.id == run_id) {
        run.workspace = Some(path.to_string());
        run.workspace_ready = true;
    }
}

/// A failed run leaves the active set.
pub fn apply_run_failed(runs: &mut Vec<ActiveRun>, run_id: RunId) {
    runs.retain(|r| r.id != run_id);
}

fn queued_run(runs: &mut [ActiveRun], run_id: RunId) -> Option<&mut ActiveRun> {
    runs.iter_mut()
        .find(|r| r.id == run_id && r.status == RunStatus::Queued)
}

fn queued_stage<'a>(
    runs: &'a mut [ActiveRun],
    run_id: RunId,
    name: &str,
) -> Option<&'a mut crate::model::ActiveStage> {
    runs.iter_mut()
        .find(|r| r.id == run_id)
        .and_then(|r| r.stages.iter_mut().find(|s| s.name == name))
        .filter(|s| s.status == StageStatus::Queued)
}
