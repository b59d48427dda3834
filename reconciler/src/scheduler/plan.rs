//! One scheduler tick as a pure function: from the active runs (as stored) to the writes that
//! move them on. No IO here, so every scheduling rule is unit-tested directly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deploylite_pipeline::{Concurrency, Pipeline};

use crate::status::{run_outcome, RunStatus, StageStatus};
use crate::store::{ActiveRun, Dispatch, RunFinish, StageSkip, TickWrites};

#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Stages running at once, over all runs.
    pub max_parallel_stages: usize,
    /// Labels of the executor that takes stages; a stage's `runs-on` must be a subset.
    pub labels: Vec<String>,
    pub executor: String,
}

/// What a tick decides besides store writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickEffects {
    /// Running stages whose run was cancelled: their processes must be stopped.
    pub cancel_running: Vec<(i64, String)>,
    /// Started runs whose workspace must be prepared before any stage runs.
    pub prepare_workspace: Vec<i64>,
    /// The earliest backoff deadline in the future, to wake up for.
    pub next_wakeup: Option<i64>,
}

pub fn plan_tick(
    runs: &[ActiveRun],
    specs: &HashMap<i64, Arc<Pipeline>>,
    config: &PlanConfig,
    now: i64,
) -> (TickWrites, TickEffects) {
    let mut writes = TickWrites::default();
    let mut effects = TickEffects::default();
    let running_now = runs
        .iter()
        .flat_map(|r| &r.stages)
        .filter(|s| s.status == StageStatus::Running)
        .count();
    let mut free = config.max_parallel_stages.saturating_sub(running_now);

    // Concurrency groups that already have an active run older than the one we look at.
    let mut busy_groups: HashMap<(&str, &str, &str), i64> = HashMap::new();

    for run in runs {
        let group = (run.repo.as_str(), run.pipeline.as_str(), run.git_ref.as_str());
        let older = busy_groups.get(&group).copied();
        busy_groups.entry(group).or_insert(run.id);

        match run.status {
            RunStatus::Queued => {
                if run.cancel_requested {
                    skip_remaining(run, "run cancelled", StageStatus::Skipped, &mut writes);
                    writes.finish.push(RunFinish {
                        run_id: run.id,
                        status: RunStatus::Cancelled,
                    });
                } else if let (Concurrency::Queue, Some(older)) = (run.concurrency, older) {
                    let reason = Some(format!("concurrency: waiting for run #{older} on {}", run.git_ref));
                    if run.pending_reason != reason {
                        writes.run_pending.push((run.id, reason));
                    }
                } else {
                    writes.start_runs.push(run.id);
                    if !run.workspace_ready {
                        effects.prepare_workspace.push(run.id);
                    }
                }
            }
            RunStatus::Running => {
                plan_running_run(run, specs.get(&run.id), config, now, &mut free, &mut writes, &mut effects);
            }
            _ => {}
        }
    }
    (writes, effects)
}

fn plan_running_run(
    run: &ActiveRun,
    spec: Option<&Arc<Pipeline>>,
    config: &PlanConfig,
    now: i64,
    free: &mut usize,
    writes: &mut TickWrites,
    effects: &mut TickEffects,
) {
    // Statuses as this tick leaves them, so that a skip propagates down the DAG in one tick.
    let mut status: HashMap<&str, StageStatus> = run.stages.iter().map(|s| (s.name.as_str(), s.status)).collect();
    let mut any_running = false;

    for stage in &run.stages {
        match stage.status {
            StageStatus::Running => {
                any_running = true;
                if run.cancel_requested {
                    effects.cancel_running.push((run.id, stage.name.clone()));
                }
                continue;
            }
            StageStatus::Queued => {}
            _ => continue,
        }
        if run.cancel_requested {
            writes.skip.push(skip(run.id, &stage.name, StageStatus::Skipped, "run cancelled"));
            status.insert(&stage.name, StageStatus::Skipped);
            continue;
        }
        let unmet: Vec<&str> = stage
            .needs
            .iter()
            .filter(|n| status.get(n.as_str()) != Some(&StageStatus::Success))
            .map(String::as_str)
            .collect();
        if let Some(blocker) = stage.needs.iter().find(|n| {
            matches!(
                status.get(n.as_str()),
                Some(StageStatus::Failed | StageStatus::Skipped | StageStatus::Cancelled) | None
            )
        }) {
            let why = match status.get(blocker.as_str()) {
                Some(s) => format!("needs `{blocker}`, which {}", past_tense(*s)),
                None => format!("needs `{blocker}`, which this run does not have"),
            };
            writes.skip.push(skip(run.id, &stage.name, StageStatus::Skipped, &why));
            status.insert(&stage.name, StageStatus::Skipped);
            continue;
        }
        let reason = if !unmet.is_empty() {
            Some(format!("needs: {}", unmet.join(", ")))
        } else if !run.workspace_ready {
            Some("preparing workspace".to_string())
        } else if let Some(at) = stage.not_before.filter(|at| *at > now) {
            effects.next_wakeup = Some(effects.next_wakeup.map_or(at, |w| w.min(at)));
            Some(format!(
                "backoff until {}",
                chrono::DateTime::from_timestamp_millis(at)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                    .unwrap_or_else(|| at.to_string())
            ))
        } else if let Some(missing) = missing_labels(spec, &stage.name, &config.labels) {
            Some(format!("no matching runner: runs-on [{}] is not offered by any runner", missing.join(", ")))
        } else if *free == 0 {
            Some(format!(
                "capacity: {} of {} stages running",
                config.max_parallel_stages, config.max_parallel_stages
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => {
                // The retry/restart note stays visible until the stage really waits on something else.
                let keep = stage
                    .pending_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("restart:") && !reason.starts_with("needs"))
                    || stage.pending_reason.as_deref() == Some(reason.as_str());
                if !keep {
                    writes.stage_pending.push((run.id, stage.name.clone(), Some(reason)));
                }
            }
            None => {
                *free -= 1;
                any_running = true;
                writes.dispatch.push(Dispatch {
                    run_id: run.id,
                    stage: stage.name.clone(),
                    attempt: stage.attempt + 1,
                    executor: config.executor.clone(),
                });
                status.insert(&stage.name, StageStatus::Running);
            }
        }
    }

    if !run.workspace_ready && !any_running {
        effects.prepare_workspace.push(run.id);
    }
    let all_final = run.stages.iter().all(|s| status.get(s.name.as_str()).is_some_and(|st| st.is_final()));
    if all_final {
        let finals: Vec<StageStatus> = run.stages.iter().filter_map(|s| status.get(s.name.as_str()).copied()).collect();
        writes.finish.push(RunFinish {
            run_id: run.id,
            status: run_outcome(&finals, run.cancel_requested),
        });
    }
}

fn skip_remaining(run: &ActiveRun, reason: &str, to: StageStatus, writes: &mut TickWrites) {
    for stage in run.stages.iter().filter(|s| s.status == StageStatus::Queued) {
        writes.skip.push(skip(run.id, &stage.name, to, reason));
    }
}

fn skip(run_id: i64, stage: &str, status: StageStatus, reason: &str) -> StageSkip {
    StageSkip {
        run_id,
        stage: stage.to_string(),
        status,
        reason: reason.to_string(),
    }
}

fn past_tense(s: StageStatus) -> &'static str {
    match s {
        StageStatus::Failed => "failed",
        StageStatus::Skipped => "was skipped",
        StageStatus::Cancelled => "was cancelled",
        _ => "did not succeed",
    }
}

fn missing_labels(spec: Option<&Arc<Pipeline>>, stage: &str, offered: &[String]) -> Option<Vec<String>> {
    let stage = spec?.stages.iter().find(|s| s.name == stage)?;
    let offered: HashSet<&str> = offered.iter().map(String::as_str).collect();
    let missing: Vec<String> = stage
        .runs_on
        .iter()
        .filter(|l| !offered.contains(l.as_str()))
        .cloned()
        .collect();
    (!missing.is_empty()).then_some(missing)
}
