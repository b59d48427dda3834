//! The scheduler with a scripted executor (`deploylite_testkit::executor::FakeExecutor`): the
//! real watcher, store (SQLite) and scheduler on a real git repository, with stages that
//! succeed, fail, hang or wait behind a gate instead of running processes. Every wait ends on
//! a signal: the scheduler's events or the executor's record of attempts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use deploylite_model::{Attempt as AttemptNumber, RunId};
use deploylite_pipeline::GlobList;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::scheduler::{Scheduler, SchedulerConfig, SchedulerEvent};
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{SqliteSync, StageRecord, Store};
use deploylite_reconciler::watcher::{RepoConfig, Repos, Watcher};
use deploylite_runner::{AttemptOutcome, CancellationToken};
use deploylite_testkit::executor::{Attempt, FakeExecutor, Gate, Script};
use deploylite_testkit::wait::DEADLINE;
use deploylite_testkit::TestRepo;
use tokio::sync::broadcast;

/// The watcher and the scheduler of one repository, running until dropped.
struct Harness {
    store: Store,
    scheduler: Arc<Scheduler>,
    events: broadcast::Receiver<SchedulerEvent>,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

impl Harness {
    /// `repo` watched (polled only when poked: every run here comes from the first poll), its
    /// stages given to `executor` on the local runner with `capacity` slots.
    async fn start(repo: &TestRepo, executor: Arc<FakeExecutor>, capacity: usize) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(dir.path());
        let store = Store::connect(&data.default_database_url(), SqliteSync::Normal)
            .await
            .expect("store");
        let repos = Arc::new(Repos::new(
            vec![RepoConfig {
                name: repo.name.clone(),
                url: repo.path().display().to_string(),
                branches: GlobList::default(),
                tags: GlobList::default().into(),
                poll_interval: Duration::from_secs(3600),
                report: false,
                untrusted: Default::default(),
            }],
            &data,
        ));
        let scheduler = Scheduler::new(
            store.clone(),
            data.clone(),
            SchedulerConfig::local(capacity, vec![]),
            executor,
            repos.clone(),
        );
        let events = scheduler.subscribe();
        let watcher = Watcher::new(store.clone(), repos, scheduler.waker());
        let shutdown = CancellationToken::new();
        tokio::spawn(scheduler.clone().run(shutdown.clone()));
        tokio::spawn(watcher.run(shutdown.clone()));
        Harness {
            store,
            scheduler,
            events,
            shutdown,
            _data: dir,
        }
    }

    /// Waits for the scheduler's event that run `run_id` ended; its status.
    async fn run_finished(&mut self) -> (RunId, RunStatus) {
        let next = async {
            loop {
                match self.events.recv().await {
                    Ok(SchedulerEvent::RunFinished { run_id, status }) => return (run_id, status),
                    Ok(_) => continue,
                    Err(error) => panic!("the scheduler's events stopped: {error}"),
                }
            }
        };
        tokio::time::timeout(DEADLINE, next)
            .await
            .unwrap_or_else(|_| panic!("no run finished within {DEADLINE:?}"))
    }

    async fn stages(&self, run_id: RunId) -> Vec<StageRecord> {
        let (_, stages) = self
            .store
            .get_run(run_id)
            .await
            .expect("the store answers")
            .unwrap_or_else(|| panic!("no run #{run_id}"));
        stages
    }

    async fn stage(&self, run_id: RunId, name: &str) -> StageRecord {
        self.stages(run_id)
            .await
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("run #{run_id} has no stage `{name}`"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn outcomes_of<'a>(attempts: &'a [Attempt], stage: &str) -> Vec<Option<&'a AttemptOutcome>> {
    attempts
        .iter()
        .filter(|a| a.stage == stage)
        .map(|a| a.outcome.as_ref())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_and_its_dependents_run_after_the_success() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  build:\n    retry: { max: 2, backoff: 10ms }\n    steps: [{ run: make }]\n  test:\n    needs: [build]\n    steps: [{ run: make test }]\n",
    );
    repo.commit("ci");
    let executor = FakeExecutor::new();
    executor.script("build", [Script::Fail(3), Script::Succeed]);
    let mut harness = Harness::start(&repo, executor.clone(), 2).await;

    let (run_id, status) = harness.run_finished().await;
    assert_eq!(status, RunStatus::Success);
    let attempts = executor.attempts();
    assert_eq!(
        outcomes_of(&attempts, "build"),
        [
            Some(&AttemptOutcome::Failed {
                step: 0,
                exit_code: Some(3)
            }),
            Some(&AttemptOutcome::Succeeded)
        ]
    );
    assert_eq!(
        outcomes_of(&attempts, "test"),
        [Some(&AttemptOutcome::Succeeded)]
    );
    // `test` started only after build's second attempt ended.
    let order: Vec<(&str, u32)> = attempts
        .iter()
        .map(|a| (a.stage.as_str(), a.attempt))
        .collect();
    assert_eq!(order, [("build", 1), ("build", 2), ("test", 1)]);
    let build = harness.stage(run_id, "build").await;
    assert_eq!(
        (build.status, build.attempt),
        (StageStatus::Success, AttemptNumber::from(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_without_retries_fails_the_run_and_skips_its_dependents() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  build:\n    steps: [{ run: make }]\n  test:\n    needs: [build]\n    steps: [{ run: make test }]\n  lint:\n    steps: [{ run: make lint }]\n",
    );
    repo.commit("ci");
    let executor = FakeExecutor::new();
    executor.script("build", [Script::Fail(2)]);
    let mut harness = Harness::start(&repo, executor.clone(), 2).await;

    let (run_id, status) = harness.run_finished().await;
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(
        harness.stage(run_id, "test").await.status,
        StageStatus::Skipped
    );
    let lint = harness.stage(run_id, "lint").await;
    assert_eq!(lint.status, StageStatus::Success, "independent stages run");
    let build = harness.stage(run_id, "build").await;
    assert_eq!(
        (build.status, build.exit_code),
        (StageStatus::Failed, Some(2))
    );
    assert!(
        executor.attempts().iter().all(|a| a.stage != "test"),
        "{:#?}",
        executor.attempts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_wait_for_capacity_and_run_when_a_slot_frees() {
    let repo = TestRepo::new();
    repo.pipeline(
        "fan.yaml",
        "name: fan\nstages:\n  a:\n    steps: [{ run: a }]\n  b:\n    steps: [{ run: b }]\n  c:\n    steps: [{ run: c }]\n",
    );
    repo.commit("fan");
    let gate = Gate::new();
    let executor = FakeExecutor::new();
    for stage in ["a", "b", "c"] {
        executor.script(stage, [Script::Wait(gate.clone())]);
    }
    let mut harness = Harness::start(&repo, executor.clone(), 2).await;

    let started = executor
        .wait_until("two stages to start", |a| a.len() == 2)
        .await;
    let run_id = started[0].run_id;
    // The scheduler's own word that the third waits for a slot, not merely that it has not
    // started yet: only then is "two running" an assertion about capacity.
    let waiting = deploylite_testkit::wait::until("the third stage to wait for capacity", || {
        let harness = &harness;
        async move {
            let stages = harness.stages(RunId::from(run_id)).await;
            stages.into_iter().find(|s| {
                s.status == StageStatus::Queued
                    && s.pending_reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("capacity"))
            })
        }
    })
    .await;
    assert_eq!(executor.attempts().len(), 2, "{:#?}", executor.attempts());
    assert!(started.iter().all(|a| a.stage != waiting.name));

    gate.open();
    let (_, status) = harness.run_finished().await;
    assert_eq!(status, RunStatus::Success);
    assert_eq!(executor.attempts().len(), 3);
    assert_eq!(executor.peak_running(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_cancels_its_hanging_stage_and_skips_the_rest() {
    let repo = TestRepo::new();
    repo.pipeline(
        "deploy.yaml",
        "name: deploy\nstages:\n  rollout:\n    steps: [{ run: rollout }]\n  verify:\n    needs: [rollout]\n    steps: [{ run: verify }]\n",
    );
    repo.commit("deploy");
    let executor = FakeExecutor::new();
    executor.script("rollout", [Script::Hang]);
    let mut harness = Harness::start(&repo, executor.clone(), 2).await;

    let run_id = executor.wait_started("rollout", 1).await;
    harness
        .store
        .request_cancel(RunId::from(run_id), "cancelled by the test")
        .await
        .expect("the store answers")
        .expect("the run exists");
    harness.scheduler.waker().notify_one();

    let (finished, status) = harness.run_finished().await;
    assert_eq!(
        (finished, status),
        (RunId::from(run_id), RunStatus::Cancelled)
    );
    assert_eq!(
        outcomes_of(&executor.attempts(), "rollout"),
        [Some(&AttemptOutcome::Cancelled)]
    );
    assert_eq!(
        harness.stage(RunId::from(run_id), "verify").await.status,
        StageStatus::Skipped
    );
}
