//! One scheduler tick as a pure function: from the active runs (as stored) to the writes that
//! move them on. No IO here, so every scheduling rule is unit-tested directly; it knows the run
//! domain model (`crate::model`), never the store.

use std::collections::HashMap;
use std::sync::Arc;

use deploylite_model::{RunId, StageName};
use deploylite_pipeline::{Concurrency, Pipeline};

use crate::model::{
    ActiveRun, Dispatch, ExpiredLease, RunFinish, StageSkip, TickWrites, LOCAL_RUNNER,
};
use crate::status::{run_outcome, RunStatus, StageStatus};

/// Where the scheduler may place stages now, as placement sees it (name, labels, capacity): the
/// daemon's own runner (`local`) or a remote runner that is online.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub name: String,
    /// A stage's `runs_on` must be a subset of these.
    pub labels: Vec<String>,
    /// Stages it runs at once.
    pub capacity: usize,
}

#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub runners: Vec<Placement>,
    /// How long a remote runner's lease holds without a heartbeat.
    pub lease_ttl_ms: i64,
    /// Untrusted (fork) runs go only to runners offering one of these labels; none: nowhere.
    pub untrusted_labels: Vec<String>,
}

/// What a tick decides besides store writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickEffects {
    /// Running stages whose run was cancelled: their processes must be stopped.
    pub cancel_running: Vec<(RunId, StageName)>,
    /// Started runs whose workspace must be prepared before any stage runs.
    pub prepare_workspace: Vec<RunId>,
    /// The earliest backoff deadline in the future, to wake up for.
    pub next_wakeup: Option<i64>,
}

pub fn plan_tick(
    runs: &[ActiveRun],
    specs: &HashMap<RunId, Arc<Pipeline>>,
    config: &PlanConfig,
    now: i64,
) -> (TickWrites, TickEffects) {
    let mut writes = TickWrites::default();
    let mut effects = TickEffects::default();
    let mut slots = Slots::new(config, runs);
    expire_leases(runs, now, config.lease_ttl_ms, &mut writes);

    // Concurrency groups that already have an active run older than the one we look at.
    let mut busy_groups: HashMap<(&str, &str, &str), RunId> = HashMap::new();

    for run in runs {
        let group = (
            run.repo.as_str(),
            run.pipeline.as_str(),
            run.git_ref.as_str(),
        );
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
                } else if run.awaiting_approval {
                    // Recorded with its `approval required: …` reason; nothing starts, and
                    // no workspace is prepared, until someone approves the head commit.
                } else if let (Concurrency::Queue, Some(older)) = (run.concurrency, older) {
                    let reason = Some(format!(
                        "concurrency: waiting for run #{older} on {}",
                        run.git_ref
                    ));
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
                plan_running_run(
                    run,
                    specs.get(&run.id),
                    config,
                    now,
                    &mut slots,
                    &mut writes,
                    &mut effects,
                );
            }
            _ => {}
        }
    }
    (writes, effects)
}

/// Free capacity per runner, as this tick hands it out.
struct Slots<'a> {
    runners: &'a [Placement],
    free: Vec<usize>,
}

impl<'a> Slots<'a> {
    fn new(config: &'a PlanConfig, runs: &[ActiveRun]) -> Slots<'a> {
        let mut running: HashMap<&str, usize> = HashMap::new();
        for stage in runs.iter().flat_map(|r| &r.stages) {
            if stage.status == StageStatus::Running {
                *running
                    .entry(stage.runner.as_deref().unwrap_or(LOCAL_RUNNER))
                    .or_default() += 1;
            }
        }
        let free = config
            .runners
            .iter()
            .map(|r| {
                r.capacity
                    .saturating_sub(running.get(r.name.as_str()).copied().unwrap_or(0))
            })
            .collect();
        Slots {
            runners: &config.runners,
            free,
        }
    }

    /// The matching runner with the most free capacity, taking one slot of it; otherwise why not.
    /// `untrusted` (for a fork's run) restricts the choice to runners offering one of its labels.
    fn take(
        &mut self,
        runs_on: &[String],
        untrusted: Option<&Vec<String>>,
    ) -> Result<&'a Placement, Unplaced> {
        let allowed = |slot: &Placement| {
            untrusted.is_none_or(|labels| slot.labels.iter().any(|l| labels.contains(l)))
        };
        let matching: Vec<usize> = (0..self.runners.len())
            .filter(|&i| runs_on.iter().all(|l| self.runners[i].labels.contains(l)))
            .filter(|&i| allowed(&self.runners[i]))
            .collect();
        if let (true, Some(labels)) = (matching.is_empty(), untrusted) {
            return Err(if labels.is_empty() {
                Unplaced::NoUntrustedLabels
            } else {
                Unplaced::NoUntrustedRunner {
                    labels: labels.join(", "),
                    runs_on: runs_on.join(", "),
                }
            });
        }
        if matching.is_empty() {
            return Err(if self.runners.is_empty() {
                Unplaced::NoRunnerOnline
            } else if runs_on.is_empty() {
                Unplaced::NoMatchingRunner
            } else {
                Unplaced::RunsOnNotOffered {
                    runs_on: runs_on.join(", "),
                }
            });
        }
        match matching
            .iter()
            .copied()
            .filter(|&i| self.free[i] > 0)
            .max_by_key(|&i| (self.free[i], usize::MAX - i))
        {
            Some(i) => {
                self.free[i] -= 1;
                Ok(&self.runners[i])
            }
            None => Err(match matching.as_slice() {
                [only] => Unplaced::Full {
                    capacity: self.runners[*only].capacity,
                },
                _ => {
                    let names: Vec<&str> = matching
                        .iter()
                        .map(|&i| self.runners[i].name.as_str())
                        .collect();
                    Unplaced::AllBusy {
                        runners: names.join(", "),
                    }
                }
            }),
        }
    }
}

/// Why a ready stage has no runner this tick: its pending reason, as users read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Unplaced {
    #[error(
        "no runner for untrusted work: set `untrusted.labels` in the daemon's config to the \
         labels of runners that may run pull requests from forks"
    )]
    NoUntrustedLabels,
    #[error(
        "no runner for untrusted work: runs from forks go only to runners labelled [{labels}] \
         (untrusted.labels) that also offer runs_on [{runs_on}]"
    )]
    NoUntrustedRunner { labels: String, runs_on: String },
    #[error("no matching runner: no runner is online")]
    NoRunnerOnline,
    #[error("no matching runner")]
    NoMatchingRunner,
    #[error("no matching runner: runs_on [{runs_on}] is not offered by any runner")]
    RunsOnNotOffered { runs_on: String },
    #[error("capacity: {capacity} of {capacity} stages running")]
    Full { capacity: usize },
    #[error("capacity: every matching runner is busy ({runners})")]
    AllBusy { runners: String },
}

/// Remote attempts whose runner stopped renewing the lease go back to the queue.
fn expire_leases(runs: &[ActiveRun], now: i64, lease_ttl_ms: i64, writes: &mut TickWrites) {
    for run in runs.iter().filter(|r| r.status == RunStatus::Running) {
        for stage in &run.stages {
            if let (StageStatus::Running, Some(runner), Some(deadline)) =
                (stage.status, &stage.runner, stage.lease_deadline)
            {
                if runner != LOCAL_RUNNER && deadline < now {
                    writes.expire.push(ExpiredLease {
                        run_id: run.id,
                        stage: stage.name.clone(),
                        attempt: stage.attempt,
                        runner: runner.clone(),
                        last_renewed: deadline - lease_ttl_ms,
                    });
                }
            }
        }
    }
}

fn plan_running_run(
    run: &ActiveRun,
    spec: Option<&Arc<Pipeline>>,
    config: &PlanConfig,
    now: i64,
    slots: &mut Slots<'_>,
    writes: &mut TickWrites,
    effects: &mut TickEffects,
) {
    // Statuses as this tick leaves them, so that a skip propagates down the DAG in one tick.
    let mut status: HashMap<&str, StageStatus> = run
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.status))
        .collect();
    let mut any_running = false;

    for stage in &run.stages {
        match stage.status {
            StageStatus::Running => {
                any_running = true;
                if writes
                    .expire
                    .iter()
                    .any(|e| e.run_id == run.id && e.stage == stage.name)
                {
                    continue; // requeued by this tick; dispatched again by the next
                }
                if run.cancel_requested {
                    effects.cancel_running.push((run.id, stage.name.clone()));
                }
                continue;
            }
            StageStatus::Queued => {}
            _ => continue,
        }
        if run.cancel_requested {
            writes.skip.push(skip(
                run.id,
                &stage.name,
                StageStatus::Skipped,
                "run cancelled",
            ));
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
            writes
                .skip
                .push(skip(run.id, &stage.name, StageStatus::Skipped, &why));
            status.insert(&stage.name, StageStatus::Skipped);
            continue;
        }
        let runs_on: &[String] = spec
            .and_then(|p| p.stages.iter().find(|s| s.name == stage.name))
            .map_or(&[], |s| s.runs_on.as_slice());
        let decision = if !unmet.is_empty() {
            Err(format!("needs: {}", unmet.join(", ")))
        } else if !run.workspace_ready {
            Err("preparing workspace".to_string())
        } else if let Some(at) = stage.not_before.filter(|at| *at > now) {
            effects.next_wakeup = Some(effects.next_wakeup.map_or(at, |w| w.min(at)));
            Err(format!(
                "backoff until {}",
                chrono::DateTime::from_timestamp_millis(at)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                    .unwrap_or_else(|| at.to_string())
            ))
        } else {
            slots
                .take(runs_on, run.untrusted.then_some(&config.untrusted_labels))
                .map_err(|unplaced| unplaced.to_string())
        };
        let reason = decision.as_ref().err().cloned();
        match reason {
            Some(reason) => {
                // The retry/restart note stays visible until the stage really waits on something else.
                let keep = stage
                    .pending_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("restart:") && !reason.starts_with("needs"))
                    || stage.pending_reason.as_deref() == Some(reason.as_str());
                if !keep {
                    writes
                        .stage_pending
                        .push((run.id, stage.name.clone(), Some(reason)));
                }
            }
            None => {
                let Ok(runner) = decision else { continue };
                any_running = true;
                writes.dispatch.push(Dispatch {
                    run_id: run.id,
                    stage: stage.name.clone(),
                    attempt: stage.attempt.next(),
                    runner: runner.name.clone(),
                    lease_deadline: (runner.name != LOCAL_RUNNER)
                        .then_some(now + config.lease_ttl_ms),
                });
                status.insert(&stage.name, StageStatus::Running);
            }
        }
    }

    if !run.workspace_ready && !any_running {
        effects.prepare_workspace.push(run.id);
    }
    let all_final = run
        .stages
        .iter()
        .all(|s| status.get(s.name.as_str()).is_some_and(|st| st.is_final()));
    if all_final {
        let finals: Vec<StageStatus> = run
            .stages
            .iter()
            .filter_map(|s| status.get(s.name.as_str()).copied())
            .collect();
        writes.finish.push(RunFinish {
            run_id: run.id,
            status: run_outcome(&finals, run.cancel_requested),
        });
    }
}

fn skip_remaining(run: &ActiveRun, reason: &str, to: StageStatus, writes: &mut TickWrites) {
    for stage in run
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Queued)
    {
        writes.skip.push(skip(run.id, &stage.name, to, reason));
    }
}

fn skip(run_id: RunId, stage: &str, status: StageStatus, reason: &str) -> StageSkip {
    StageSkip {
        run_id,
        stage: stage.into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActiveStage;
    use deploylite_model::Attempt;

    const NOW: i64 = 1_000_000;

    fn config(max: usize) -> PlanConfig {
        PlanConfig {
            runners: vec![Placement {
                name: LOCAL_RUNNER.into(),
                labels: vec!["local".into(), "linux".into()],
                capacity: max,
            }],
            lease_ttl_ms: 30_000,
            untrusted_labels: Vec::new(),
        }
    }

    fn stage(name: &str, status: StageStatus, needs: &[&str]) -> ActiveStage {
        ActiveStage {
            name: name.into(),
            position: 0,
            status,
            attempt: Attempt::new(u32::from(status != StageStatus::Queued)),
            failures: 0,
            needs: needs.iter().map(|s| s.to_string()).collect(),
            pending_reason: None,
            not_before: None,
            runner: (status == StageStatus::Running).then(|| LOCAL_RUNNER.to_string()),
            lease_deadline: None,
        }
    }

    fn run(id: i64, status: RunStatus, stages: Vec<ActiveStage>) -> ActiveRun {
        ActiveRun {
            id: RunId::new(id),
            repo: "repo".into(),
            pipeline: "ci".into(),
            git_ref: "refs/heads/main".into(),
            commit: "c".repeat(40).into(),
            trigger: "push".into(),
            status,
            pending_reason: None,
            concurrency: Concurrency::Parallel,
            cancel_requested: false,
            workspace: Some("/ws".into()),
            workspace_ready: true,
            untrusted: false,
            awaiting_approval: false,
            stages,
        }
    }

    fn spec_with_runs_on(stage: &str, labels: &[&str]) -> HashMap<RunId, Arc<Pipeline>> {
        let yaml = format!(
            "name: ci\nstages:\n  {stage}:\n    runs_on: [{}]\n    steps: [{{ run: 'true' }}]\n",
            labels.join(", ")
        );
        let pipeline =
            deploylite_pipeline::parse_pipeline("ci.yaml", &yaml).expect("valid test pipeline");
        HashMap::from([(RunId::new(1), Arc::new(pipeline))])
    }

    fn dispatched(w: &TickWrites) -> Vec<&str> {
        w.dispatch.iter().map(|d| d.stage.as_str()).collect()
    }

    fn pending<'a>(w: &'a TickWrites, stage: &str) -> Option<&'a str> {
        w.stage_pending
            .iter()
            .find(|(_, s, _)| s == stage)
            .and_then(|(_, _, r)| r.as_deref())
    }

    #[test]
    fn a_queued_run_starts_and_asks_for_its_workspace() {
        let mut r = run(
            1,
            RunStatus::Queued,
            vec![stage("a", StageStatus::Queued, &[])],
        );
        r.workspace_ready = false;
        let (w, e) = plan_tick(&[r], &HashMap::new(), &config(4), NOW);
        assert_eq!(w.start_runs, vec![RunId::new(1)]);
        assert!(w.dispatch.is_empty(), "stages wait for the next tick");
        assert_eq!(e.prepare_workspace, vec![RunId::new(1)]);
    }

    #[test]
    fn stages_without_needs_run_in_parallel_and_needs_wait() {
        let r = run(
            1,
            RunStatus::Running,
            vec![
                stage("build", StageStatus::Queued, &[]),
                stage("lint", StageStatus::Queued, &[]),
                stage("test", StageStatus::Queued, &["build"]),
            ],
        );
        let (w, _) = plan_tick(&[r], &HashMap::new(), &config(4), NOW);
        assert_eq!(dispatched(&w), ["build", "lint"]);
        assert_eq!(pending(&w, "test"), Some("needs: build"));
        assert!(w.dispatch.iter().all(|d| d.attempt == Attempt::FIRST));
    }

    #[test]
    fn the_diamond_joins_only_when_both_sides_succeeded() {
        let stages = |b: StageStatus, c: StageStatus| {
            vec![
                stage("a", StageStatus::Success, &[]),
                stage("b", b, &["a"]),
                stage("c", c, &["a"]),
                stage("d", StageStatus::Queued, &["b", "c"]),
            ]
        };
        let (w, _) = plan_tick(
            &[run(
                1,
                RunStatus::Running,
                stages(StageStatus::Success, StageStatus::Running),
            )],
            &HashMap::new(),
            &config(4),
            NOW,
        );
        assert!(w.dispatch.is_empty());
        assert_eq!(pending(&w, "d"), Some("needs: c"));
        let (w, _) = plan_tick(
            &[run(
                1,
                RunStatus::Running,
                stages(StageStatus::Success, StageStatus::Success),
            )],
            &HashMap::new(),
            &config(4),
            NOW,
        );
        assert_eq!(dispatched(&w), ["d"]);
    }

    #[test]
    fn a_failure_skips_every_dependent_in_one_tick_and_fails_the_run() {
        let r = run(
            1,
            RunStatus::Running,
            vec![
                stage("a", StageStatus::Failed, &[]),
                stage("b", StageStatus::Queued, &["a"]),
                stage("c", StageStatus::Queued, &["b"]),
                stage("other", StageStatus::Success, &[]),
            ],
        );
        let (w, _) = plan_tick(&[r], &HashMap::new(), &config(4), NOW);
        let skipped: Vec<(&str, &str)> = w
            .skip
            .iter()
            .map(|s| (s.stage.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("b", "needs `a`, which failed"),
                ("c", "needs `b`, which was skipped")
            ]
        );
        assert_eq!(
            w.finish,
            vec![RunFinish {
                run_id: RunId::new(1),
                status: RunStatus::Failed
            }]
        );
    }

    #[test]
    fn capacity_is_shared_by_all_runs_and_says_so() {
        let runs = vec![
            run(
                1,
                RunStatus::Running,
                vec![
                    stage("a", StageStatus::Running, &[]),
                    stage("b", StageStatus::Queued, &[]),
                ],
            ),
            run(
                2,
                RunStatus::Running,
                vec![
                    stage("a", StageStatus::Queued, &[]),
                    stage("b", StageStatus::Queued, &[]),
                ],
            ),
        ];
        let (w, _) = plan_tick(&runs, &HashMap::new(), &config(2), NOW);
        assert_eq!(w.dispatch.len(), 1);
        assert_eq!(w.dispatch[0].run_id, RunId::new(1), "older runs first");
        let waiting: Vec<&str> = w
            .stage_pending
            .iter()
            .filter_map(|(_, _, r)| r.as_deref())
            .collect();
        assert_eq!(
            waiting,
            [
                "capacity: 2 of 2 stages running",
                "capacity: 2 of 2 stages running"
            ]
        );
    }

    #[test]
    fn backoff_holds_a_retry_until_its_time_and_sets_a_wakeup() {
        let mut s = stage("flaky", StageStatus::Queued, &[]);
        s.attempt = Attempt::FIRST;
        s.failures = 1;
        s.not_before = Some(NOW + 1500);
        let r = run(1, RunStatus::Running, vec![s.clone()]);
        let (w, e) = plan_tick(&[r], &HashMap::new(), &config(4), NOW);
        assert!(w.dispatch.is_empty());
        assert!(pending(&w, "flaky").is_some_and(|p| p.starts_with("backoff until ")));
        assert_eq!(e.next_wakeup, Some(NOW + 1500));
        let r = run(1, RunStatus::Running, vec![s]);
        let (w, _) = plan_tick(&[r], &HashMap::new(), &config(4), NOW + 1500);
        assert_eq!(
            w.dispatch[0].attempt,
            Attempt::new(2),
            "a retry is a new attempt"
        );
    }

    #[test]
    fn a_stage_whose_labels_no_runner_offers_waits_and_says_which() {
        let r = run(
            1,
            RunStatus::Running,
            vec![stage("gpu", StageStatus::Queued, &[])],
        );
        let (w, _) = plan_tick(
            &[r],
            &spec_with_runs_on("gpu", &["linux", "gpu"]),
            &config(4),
            NOW,
        );
        assert!(w.dispatch.is_empty());
        assert_eq!(
            pending(&w, "gpu"),
            Some("no matching runner: runs_on [linux, gpu] is not offered by any runner")
        );
        let r = run(
            1,
            RunStatus::Running,
            vec![stage("gpu", StageStatus::Queued, &[])],
        );
        let (w, _) = plan_tick(&[r], &spec_with_runs_on("gpu", &["linux"]), &config(4), NOW);
        assert_eq!(dispatched(&w), ["gpu"]);
    }

    #[test]
    fn cancelling_stops_running_stages_and_skips_the_rest() {
        let mut r = run(
            1,
            RunStatus::Running,
            vec![
                stage("a", StageStatus::Running, &[]),
                stage("b", StageStatus::Queued, &["a"]),
            ],
        );
        r.cancel_requested = true;
        let (w, e) = plan_tick(&[r.clone()], &HashMap::new(), &config(4), NOW);
        assert_eq!(e.cancel_running, vec![(RunId::new(1), "a".into())]);
        assert_eq!(w.skip[0].reason, "run cancelled");
        assert!(w.finish.is_empty(), "not final while `a` runs");
        r.stages[0].status = StageStatus::Cancelled;
        r.stages[1].status = StageStatus::Skipped;
        let (w, _) = plan_tick(&[r], &HashMap::new(), &config(4), NOW);
        assert_eq!(
            w.finish,
            vec![RunFinish {
                run_id: RunId::new(1),
                status: RunStatus::Cancelled
            }]
        );
    }

    #[test]
    fn a_cancelled_queued_run_never_starts() {
        let mut r = run(
            1,
            RunStatus::Queued,
            vec![stage("a", StageStatus::Queued, &[])],
        );
        r.cancel_requested = true;
        let (w, _) = plan_tick(&[r], &HashMap::new(), &config(4), NOW);
        assert!(w.start_runs.is_empty());
        assert_eq!(
            w.finish,
            vec![RunFinish {
                run_id: RunId::new(1),
                status: RunStatus::Cancelled
            }]
        );
        assert_eq!(w.skip.len(), 1);
    }

    #[test]
    fn queue_concurrency_waits_for_the_older_run_of_the_same_ref() {
        let older = run(
            1,
            RunStatus::Running,
            vec![stage("a", StageStatus::Running, &[])],
        );
        let mut newer = run(
            2,
            RunStatus::Queued,
            vec![stage("a", StageStatus::Queued, &[])],
        );
        newer.concurrency = Concurrency::Queue;
        let mut other_ref = run(
            3,
            RunStatus::Queued,
            vec![stage("a", StageStatus::Queued, &[])],
        );
        other_ref.concurrency = Concurrency::Queue;
        other_ref.git_ref = "refs/heads/dev".into();
        let (w, _) = plan_tick(&[older, newer, other_ref], &HashMap::new(), &config(4), NOW);
        assert_eq!(w.start_runs, vec![RunId::new(3)]);
        assert_eq!(
            w.run_pending,
            vec![(
                RunId::new(2),
                Some("concurrency: waiting for run #1 on refs/heads/main".to_string())
            )]
        );
    }

    #[test]
    fn skipped_by_if_counts_as_success_for_the_run_but_not_for_dependents() {
        let r = run(
            1,
            RunStatus::Running,
            vec![
                stage("test", StageStatus::Success, &[]),
                stage("deploy", StageStatus::Skipped, &["test"]),
                stage("notify", StageStatus::Queued, &["deploy"]),
            ],
        );
        let (w, _) = plan_tick(&[r], &HashMap::new(), &config(4), NOW);
        assert_eq!(w.skip[0].stage, "notify");
        assert_eq!(
            w.finish,
            vec![RunFinish {
                run_id: RunId::new(1),
                status: RunStatus::Success
            }]
        );
    }

    #[test]
    fn unchanged_pending_reasons_are_not_rewritten() {
        let mut s = stage("test", StageStatus::Queued, &["build"]);
        s.pending_reason = Some("needs: build".into());
        let r = run(
            1,
            RunStatus::Running,
            vec![stage("build", StageStatus::Running, &[]), s],
        );
        let (w, _) = plan_tick(&[r], &HashMap::new(), &config(4), NOW);
        assert!(w.is_empty(), "an idle tick writes nothing: {w:?}");
    }
}

#[cfg(test)]
mod runner_tests {
    use super::*;
    use crate::model::ActiveStage;
    use deploylite_model::Attempt;

    fn slot(name: &str, labels: &[&str], capacity: usize) -> Placement {
        Placement {
            name: name.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            capacity,
        }
    }

    fn queued(name: &str) -> ActiveStage {
        ActiveStage {
            name: name.into(),
            position: 0,
            status: StageStatus::Queued,
            attempt: Attempt::NONE,
            failures: 0,
            needs: vec![],
            pending_reason: None,
            not_before: None,
            runner: None,
            lease_deadline: None,
        }
    }

    fn running_on(name: &str, runner: &str, deadline: Option<i64>) -> ActiveStage {
        ActiveStage {
            status: StageStatus::Running,
            attempt: Attempt::FIRST,
            runner: Some(runner.into()),
            lease_deadline: deadline,
            ..queued(name)
        }
    }

    fn run(stages: Vec<ActiveStage>) -> ActiveRun {
        ActiveRun {
            id: RunId::new(1),
            repo: "r".into(),
            pipeline: "p".into(),
            git_ref: "refs/heads/main".into(),
            commit: "c".into(),
            trigger: "push".into(),
            status: RunStatus::Running,
            pending_reason: None,
            concurrency: Concurrency::Parallel,
            cancel_requested: false,
            workspace: None,
            workspace_ready: true,
            untrusted: false,
            awaiting_approval: false,
            stages,
        }
    }

    fn specs(yaml_stages: &str) -> HashMap<RunId, Arc<Pipeline>> {
        let yaml = format!("name: p\nstages:\n{yaml_stages}");
        HashMap::from([(
            RunId::new(1),
            Arc::new(deploylite_pipeline::parse_pipeline("p.yaml", &yaml).expect("valid")),
        )])
    }

    #[test]
    fn stages_go_to_runners_whose_labels_match_with_the_most_free_capacity() {
        let config = PlanConfig {
            runners: vec![
                slot("local", &["local"], 1),
                slot("a", &["linux", "gpu"], 1),
                slot("b", &["linux"], 3),
            ],
            lease_ttl_ms: 10_000,
            untrusted_labels: Vec::new(),
        };
        let specs = specs("  g:\n    runs_on: [gpu]\n    steps: [{ run: x }]\n  l1:\n    runs_on: [linux]\n    steps: [{ run: x }]\n  l2:\n    runs_on: [linux]\n    steps: [{ run: x }]\n  any:\n    steps: [{ run: x }]\n");
        let r = run(vec![queued("g"), queued("l1"), queued("l2"), queued("any")]);
        let (w, _) = plan_tick(&[r], &specs, &config, 1_000);
        let placed: Vec<(&str, &str, Option<i64>)> = w
            .dispatch
            .iter()
            .map(|d| (d.stage.as_str(), d.runner.as_str(), d.lease_deadline))
            .collect();
        assert_eq!(
            placed,
            // `any` matches all three; local and b have one slot left each: the first listed wins.
            vec![
                ("g", "a", Some(11_000)),
                ("l1", "b", Some(11_000)),
                ("l2", "b", Some(11_000)),
                ("any", "local", None)
            ]
        );
    }

    #[test]
    fn a_run_awaiting_approval_neither_starts_nor_gets_a_workspace() {
        let mut r = run(vec![queued("a")]);
        r.status = RunStatus::Queued;
        r.workspace_ready = false;
        r.awaiting_approval = true;
        let config = PlanConfig {
            runners: vec![slot("local", &["local"], 4)],
            lease_ttl_ms: 10_000,
            untrusted_labels: Vec::new(),
        };
        let (w, e) = plan_tick(&[r.clone()], &HashMap::new(), &config, 1_000);
        assert_eq!(w, TickWrites::default(), "nothing is written");
        assert_eq!(e, TickEffects::default(), "no workspace is prepared");
        r.awaiting_approval = false;
        let (w, e) = plan_tick(&[r], &HashMap::new(), &config, 1_000);
        assert_eq!(w.start_runs, vec![RunId::new(1)], "once approved it starts");
        assert_eq!(e.prepare_workspace, vec![RunId::new(1)]);
    }

    #[test]
    fn untrusted_runs_go_only_to_runners_allowed_for_untrusted_work() {
        let specs = specs("  t:\n    steps: [{ run: x }]\n");
        let mut config = PlanConfig {
            runners: vec![slot("local", &["local"], 4), slot("box", &["sandbox"], 4)],
            lease_ttl_ms: 10_000,
            untrusted_labels: Vec::new(),
        };
        let mut r = run(vec![queued("t")]);
        r.untrusted = true;
        let (w, _) = plan_tick(&[r.clone()], &specs, &config, 1_000);
        assert!(w.dispatch.is_empty(), "no runner is allowed by default");
        let reason = w.stage_pending[0].2.clone().unwrap_or_default();
        assert!(
            reason.starts_with("no runner for untrusted work: set `untrusted.labels`"),
            "{reason}"
        );

        config.untrusted_labels = vec!["sandbox".into()];
        let (w, _) = plan_tick(&[r.clone()], &specs, &config, 1_000);
        assert_eq!(w.dispatch.len(), 1);
        assert_eq!(
            w.dispatch[0].runner, "box",
            "only the sandbox runner may take it"
        );

        r.untrusted = false;
        let (w, _) = plan_tick(&[r], &specs, &config, 1_000);
        assert_eq!(w.dispatch[0].runner, "local", "trusted runs go anywhere");
    }

    #[test]
    fn busy_runners_and_missing_labels_are_explained() {
        let config = PlanConfig {
            runners: vec![slot("a", &["linux"], 1), slot("b", &["linux"], 1)],
            lease_ttl_ms: 10_000,
            untrusted_labels: Vec::new(),
        };
        let specs = specs("  busy:\n    runs_on: [linux]\n    steps: [{ run: x }]\n  arm:\n    runs_on: [arm64]\n    steps: [{ run: x }]\n");
        let r = run(vec![
            running_on("x", "a", Some(5_000)),
            running_on("y", "b", Some(5_000)),
            queued("busy"),
            queued("arm"),
        ]);
        let (w, _) = plan_tick(&[r], &specs, &config, 1_000);
        let reasons: Vec<&str> = w
            .stage_pending
            .iter()
            .filter_map(|(_, _, r)| r.as_deref())
            .collect();
        assert_eq!(
            reasons,
            vec![
                "capacity: every matching runner is busy (a, b)",
                "no matching runner: runs_on [arm64] is not offered by any runner"
            ]
        );
        let (w, _) = plan_tick(
            &[run(vec![queued("busy")])],
            &specs,
            &PlanConfig {
                runners: vec![],
                lease_ttl_ms: 1,
                untrusted_labels: Vec::new(),
            },
            0,
        );
        assert_eq!(
            w.stage_pending[0].2.as_deref(),
            Some("no matching runner: no runner is online")
        );
    }

    #[test]
    fn an_expired_remote_lease_is_requeued_and_a_local_one_never_expires() {
        let config = PlanConfig {
            runners: vec![slot("a", &[], 2)],
            lease_ttl_ms: 10_000,
            untrusted_labels: Vec::new(),
        };
        let r = run(vec![
            running_on("lost", "a", Some(999)),
            running_on("alive", "a", Some(5_000)),
            running_on("mine", LOCAL_RUNNER, None),
        ]);
        let (w, _) = plan_tick(&[r], &HashMap::new(), &config, 1_000);
        assert_eq!(
            w.expire,
            vec![ExpiredLease {
                run_id: RunId::new(1),
                stage: "lost".into(),
                attempt: Attempt::FIRST,
                runner: "a".into(),
                last_renewed: 999 - 10_000,
            }]
        );
        assert!(w.finish.is_empty());
    }
}
