//! Store conformance: every behaviour the scheduler and the reconciler rely on, run against
//! SQLite and against PostgreSQL (DEPLOYLITE_TEST_POSTGRES_URL, e.g. from .ci/postgres.sh; each
//! test gets a fresh database). Under CI the PostgreSQL half is mandatory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use deploylite_model::{Attempt, RunId};
use deploylite_pipeline::Concurrency;
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{
    AttemptResult, DatabaseLock, Dialect, Dispatch, ExpiredLease, NewRun, NewStage,
    PullRequestInfo, RecordCommit, Registration, RunFilter, RunFinish, SqliteSync, StageSkip,
    Store, StoreError, TickWrites,
};
use sqlx::Connection;

mod support;

conformance!(
    "the PostgreSQL half of the store suite";
    with_url;
    a_run_is_created_once_per_identity,
    reopening_applies_no_migration_twice,
    cancel_in_progress_supersedes_older_runs_of_the_same_ref,
    a_tick_is_written_atomically_and_guarded,
    a_late_attempt_result_is_refused,
    a_retry_queues_the_stage_with_its_backoff,
    recovery_requeues_interrupted_attempts,
    runs_are_listed_newest_first_with_filters,
    cancellation_is_recorded_once,
    watched_refs_round_trip,
    a_run_whose_workspace_fails_is_failed_with_its_message,
    error_runs_keep_their_diagnostics,
    a_replayed_delivery_is_recognised,
    reports_are_queued_with_the_change_and_coalesced_per_run,
    a_failed_report_is_postponed_and_newer_changes_stay_pending,
    queued_runs_of_a_ref_can_be_cancelled,
    a_rerun_is_a_new_run_attempt_with_fresh_stages,
    a_rerun_request_creates_one_attempt_across_restarts,
    old_deliveries_are_pruned_and_recent_ones_kept,
    pull_request_runs_are_those_of_the_latest_head,
    pull_request_heads_and_the_runs_a_close_would_cancel,
    runners_register_authenticate_and_are_revoked,
    a_remote_lease_is_collected_once_renewed_and_guarded,
    an_expired_lease_requeues_the_stage_without_counting_a_failure,
    recovery_leaves_remote_leases_alone,
    the_schedulers_copy_matches_the_store_after_every_write,
    existing_tags_are_baselined_once_without_runs,
    one_daemon_holds_a_database,
    scrape_gauges_classify_waits_and_count_runners,
    attempt_timings_start_when_a_stage_could_run,
);

fn new_run(commit: &str, concurrency: Concurrency) -> NewRun {
    let pipeline = deploylite_pipeline::parse_pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  build:\n    steps: [{ run: 'true' }]\n  test:\n    needs: [build]\n    steps: [{ run: 'true' }]\n",
    )
    .expect("valid pipeline");
    NewRun {
        repo: "app".into(),
        pipeline: "ci".into(),
        pipeline_file: ".deploylite/pipelines/ci.yaml".into(),
        commit: commit.into(),
        git_ref: "refs/heads/main".into(),
        trigger: "push".into(),
        run_attempt: 1,
        status: RunStatus::Queued,
        pending_reason: None,
        concurrency,
        spec: Some(serde_json::to_string(&pipeline).expect("spec json")),
        errors: None,
        workspace: None,
        report: false,
        pull_request: None,
        awaiting_approval: false,
        policy: None,
        stages: vec![
            NewStage {
                name: "build".into(),
                status: StageStatus::Queued,
                needs: vec![],
                pending_reason: None,
            },
            NewStage {
                name: "test".into(),
                status: StageStatus::Queued,
                needs: vec!["build".into()],
                pending_reason: None,
            },
        ],
    }
}

fn record(commit: &str, runs: Vec<NewRun>) -> RecordCommit {
    RecordCommit {
        repo: "app".into(),
        git_ref: "refs/heads/main".into(),
        commit: commit.into(),
        runs,
        update_ref: true,
    }
}

async fn one_run(store: &Store, commit: &str) -> RunId {
    let (created, _) = store
        .record_commit(&record(
            commit,
            vec![new_run(commit, Concurrency::Parallel)],
        ))
        .await
        .expect("record");
    created[0]
}

/// Starts the run and dispatches `build` as attempt `attempt`.
async fn dispatch_build(store: &Store, run_id: RunId, attempt: u32) {
    store
        .apply_tick(&TickWrites {
            start_runs: vec![run_id],
            dispatch: vec![Dispatch {
                run_id,
                stage: "build".into(),
                attempt: attempt.into(),
                runner: "local".into(),
                lease_deadline: None,
            }],
            ..Default::default()
        })
        .await
        .expect("tick");
}

async fn stage_status(store: &Store, run_id: RunId, stage: &str) -> (StageStatus, u32) {
    let (_, stages) = store
        .get_run(run_id)
        .await
        .expect("get")
        .expect("run exists");
    let s = stages
        .into_iter()
        .find(|s| s.name == stage)
        .expect("stage exists");
    (s.status, s.attempt.get())
}

async fn a_run_is_created_once_per_identity(store: &Store, _url: &str) {
    let first = store
        .record_commit(&record("c1", vec![new_run("c1", Concurrency::Parallel)]))
        .await
        .unwrap();
    let again = store
        .record_commit(&record("c1", vec![new_run("c1", Concurrency::Parallel)]))
        .await
        .unwrap();
    assert_eq!(first.0.len(), 1);
    assert!(
        again.0.is_empty(),
        "the same (repo, pipeline, commit, trigger) must not create a second run"
    );
    let mut other_trigger = new_run("c1", Concurrency::Parallel);
    other_trigger.trigger = "pull_request".into();
    let third = store
        .record_commit(&record("c1", vec![other_trigger]))
        .await
        .unwrap();
    assert_eq!(third.0.len(), 1, "another trigger is another run");
    let runs = store
        .list_runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
    let spec = store.run_spec(first.0[0]).await.unwrap();
    assert_eq!(spec.stages.len(), 2, "the pipeline snapshot round-trips");
}

async fn reopening_applies_no_migration_twice(store: &Store, url: &str) {
    one_run(store, "c1").await;
    // A second daemon start against the same database: migrations are recorded, data stays.
    let reopened = Store::connect(url, SqliteSync::Normal)
        .await
        .expect("reopen");
    let runs = reopened
        .list_runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    reopened.close().await;
}

async fn cancel_in_progress_supersedes_older_runs_of_the_same_ref(store: &Store, _url: &str) {
    let (old, _) = store
        .record_commit(&record(
            "c1",
            vec![new_run("c1", Concurrency::CancelInProgress)],
        ))
        .await
        .unwrap();
    let mut other_ref = new_run("c9", Concurrency::CancelInProgress);
    other_ref.git_ref = "refs/heads/dev".into();
    let (dev, _) = store
        .record_commit(&record("c9", vec![other_ref]))
        .await
        .unwrap();
    let (new, superseded) = store
        .record_commit(&record(
            "c2",
            vec![new_run("c2", Concurrency::CancelInProgress)],
        ))
        .await
        .unwrap();
    assert_eq!(superseded, old, "only the older run of the same ref");
    let (old_run, _) = store.get_run(old[0]).await.unwrap().unwrap();
    assert!(old_run.cancel_requested);
    assert_eq!(
        old_run.pending_reason.as_deref(),
        Some(format!("cancelled: superseded by run #{}", new[0]).as_str())
    );
    let (dev_run, _) = store.get_run(dev[0]).await.unwrap().unwrap();
    assert!(!dev_run.cancel_requested);
}

async fn a_tick_is_written_atomically_and_guarded(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    dispatch_build(store, run_id, 1).await;
    let (run, _) = store.get_run(run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert!(run.started_at.is_some());
    assert_eq!(
        stage_status(store, run_id, "build").await,
        (StageStatus::Running, 1)
    );
    // A decision made on a stale read (the stage is no longer queued) changes nothing.
    store
        .apply_tick(&TickWrites {
            dispatch: vec![Dispatch {
                run_id,
                stage: "build".into(),
                attempt: Attempt::new(7),
                runner: "local".into(),
                lease_deadline: None,
            }],
            skip: vec![StageSkip {
                run_id,
                stage: "build".into(),
                status: StageStatus::Skipped,
                reason: "x".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        stage_status(store, run_id, "build").await,
        (StageStatus::Running, 1)
    );
    let attempts = store.stage_attempts(run_id, "build").await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, StageStatus::Running);
}

fn result(run_id: RunId, attempt: u32, status: StageStatus) -> AttemptResult {
    AttemptResult {
        run_id,
        stage: "build".into(),
        attempt: attempt.into(),
        attempt_status: status,
        stage_status: status,
        exit_code: Some(if status == StageStatus::Success { 0 } else { 1 }),
        note: None,
        counts_as_failure: status == StageStatus::Failed,
        not_before: None,
        pending_reason: None,
    }
}

async fn a_late_attempt_result_is_refused(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    dispatch_build(store, run_id, 1).await;
    assert!(
        !store
            .finish_attempt(&result(run_id, 2, StageStatus::Success))
            .await
            .unwrap(),
        "not the current attempt"
    );
    assert!(store
        .finish_attempt(&result(run_id, 1, StageStatus::Failed))
        .await
        .unwrap());
    assert!(
        !store
            .finish_attempt(&result(run_id, 1, StageStatus::Success))
            .await
            .unwrap(),
        "a final state never moves"
    );
    assert_eq!(
        stage_status(store, run_id, "build").await,
        (StageStatus::Failed, 1)
    );
}

async fn a_retry_queues_the_stage_with_its_backoff(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    dispatch_build(store, run_id, 1).await;
    let mut retry = result(run_id, 1, StageStatus::Failed);
    retry.stage_status = StageStatus::Queued;
    retry.not_before = Some(42);
    retry.pending_reason = Some("backoff until then".into());
    assert!(store.finish_attempt(&retry).await.unwrap());
    let active = store.load_active().await.unwrap();
    let build = active[0].stages.iter().find(|s| s.name == "build").unwrap();
    assert_eq!(
        (
            build.status,
            build.attempt.get(),
            build.failures,
            build.not_before
        ),
        (StageStatus::Queued, 1, 1, Some(42))
    );
    assert_eq!(build.pending_reason.as_deref(), Some("backoff until then"));
    let attempts = store.stage_attempts(run_id, "build").await.unwrap();
    assert_eq!(attempts[0].status, StageStatus::Failed);
}

async fn recovery_requeues_interrupted_attempts(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    dispatch_build(store, run_id, 1).await;
    let interrupted = store.recover_interrupted().await.unwrap();
    assert_eq!(interrupted.len(), 1);
    assert_eq!(
        (interrupted[0].run_id, interrupted[0].attempt),
        (run_id, Attempt::FIRST)
    );
    let active = store.load_active().await.unwrap();
    let build = active[0].stages.iter().find(|s| s.name == "build").unwrap();
    assert_eq!(
        (build.status, build.attempt.get(), build.failures),
        (StageStatus::Queued, 1, 0),
        "a restart is not the stage's failure"
    );
    assert!(build
        .pending_reason
        .as_deref()
        .unwrap_or("")
        .contains("interrupted"));
    let attempts = store.stage_attempts(run_id, "build").await.unwrap();
    assert_eq!(attempts[0].status, StageStatus::Failed);
    assert!(attempts[0]
        .note
        .as_deref()
        .unwrap_or("")
        .contains("daemon stopped"));
    assert!(
        store.recover_interrupted().await.unwrap().is_empty(),
        "recovery is idempotent"
    );
}

async fn runs_are_listed_newest_first_with_filters(store: &Store, _url: &str) {
    let a = one_run(store, "c1").await;
    let b = one_run(store, "c2").await;
    let mut other = new_run("c3", Concurrency::Parallel);
    other.repo = "other".into();
    other.pipeline = "deploy".into();
    store
        .record_commit(&record("c3", vec![other]))
        .await
        .unwrap();
    let all = store
        .list_runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert!(all[0].id > all[1].id && all[1].id > all[2].id);
    let app = store
        .list_runs(&RunFilter {
            repo: Some("app".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(app.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b, a]);
    let deploy = store
        .list_runs(&RunFilter {
            pipeline: Some("deploy".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(deploy.len(), 1);
    let limited = store
        .list_runs(&RunFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    dispatch_build(store, a, 1).await;
    let running = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Running),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a]);
}

async fn cancellation_is_recorded_once(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    assert_eq!(
        store.request_cancel(run_id, "by test").await.unwrap(),
        Some(RunStatus::Queued)
    );
    assert_eq!(
        store.request_cancel(run_id, "again").await.unwrap(),
        Some(RunStatus::Queued)
    );
    let (run, _) = store.get_run(run_id).await.unwrap().unwrap();
    assert!(run.cancel_requested);
    assert_eq!(
        run.pending_reason.as_deref(),
        Some("by test"),
        "the first reason stays"
    );
    assert_eq!(
        store.request_cancel(RunId::new(9999), "x").await.unwrap(),
        None
    );
}

async fn watched_refs_round_trip(store: &Store, _url: &str) {
    one_run(store, "c1").await;
    one_run(store, "c2").await;
    assert_eq!(
        store.watched_refs("app").await.unwrap(),
        vec![("refs/heads/main".to_string(), "c2".to_string())]
    );
    store.forget_ref("app", "refs/heads/main").await.unwrap();
    assert!(store.watched_refs("app").await.unwrap().is_empty());
}

async fn existing_tags_are_baselined_once_without_runs(store: &Store, _url: &str) {
    one_run(store, "c1").await;
    assert!(!store.tags_baselined("app").await.unwrap());
    let tags = vec![
        ("refs/tags/v1".to_string(), "t1".to_string()),
        ("refs/heads/main".to_string(), "other".to_string()),
    ];
    store.baseline_tags("app", &tags).await.unwrap();
    assert!(store.tags_baselined("app").await.unwrap());
    assert!(!store.tags_baselined("other-repo").await.unwrap());
    let mut refs = store.watched_refs("app").await.unwrap();
    refs.sort();
    assert_eq!(
        refs,
        vec![
            ("refs/heads/main".to_string(), "c1".to_string()),
            ("refs/tags/v1".to_string(), "t1".to_string()),
        ],
        "recorded refs keep their commit"
    );
    assert_eq!(
        store
            .list_runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1,
        "no run for a baselined tag"
    );
    // Taken again (another daemon start): nothing changes, nothing fails.
    store
        .baseline_tags("app", &[("refs/tags/v2".to_string(), "t2".to_string())])
        .await
        .unwrap();
    assert!(store.tags_baselined("app").await.unwrap());
}

async fn one_daemon_holds_a_database(store: &Store, url: &str) {
    let first = DatabaseLock::acquire(url, "deploylite serve pid 1 on first")
        .await
        .unwrap();
    let second = DatabaseLock::acquire(url, "deploylite serve pid 2 on second").await;
    match store.dialect() {
        // SQLite's file lives in the data dir, which the binary locks.
        Dialect::Sqlite => assert!(first.is_none() && matches!(second, Ok(None))),
        Dialect::Postgres => {
            let error = second.unwrap_err();
            assert!(
                matches!(error, StoreError::DatabaseLocked { .. }),
                "{error}"
            );
            let message = error.to_string();
            assert!(
                message.contains("(deploylite serve pid 1 on first, connected from ")
                    && message.contains(", backend PID "),
                "{message}"
            );
            let mut first = first.expect("the lock on PostgreSQL");
            first.check().await.unwrap();
            first.release().await;
            let again = DatabaseLock::acquire(url, "deploylite serve pid 2 on second").await;
            assert!(matches!(again, Ok(Some(_))), "free once released");
        }
    }
}

async fn a_run_whose_workspace_fails_is_failed_with_its_message(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    store
        .fail_run(run_id, "cannot prepare the workspace: gone")
        .await
        .unwrap();
    let (run, stages) = store.get_run(run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.errors.unwrap().to_string().contains("gone"));
    assert!(stages.iter().all(|s| s.status == StageStatus::Skipped));
}

async fn error_runs_keep_their_diagnostics(store: &Store, _url: &str) {
    let mut run = new_run("c1", Concurrency::Parallel);
    run.status = RunStatus::Error;
    run.spec = None;
    run.stages.clear();
    run.errors = Some(r#"[{"file":"ci.yaml","line":3,"col":5,"message":"unknown key"}]"#.into());
    let (created, _) = store.record_commit(&record("c1", vec![run])).await.unwrap();
    let (stored, _) = store.get_run(created[0]).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Error);
    assert!(stored.finished_at.is_some(), "created final");
    assert_eq!(stored.errors.unwrap()[0]["line"], 3);
    assert!(store.load_active().await.unwrap().is_empty());
}

async fn a_replayed_delivery_is_recognised(store: &Store, _url: &str) {
    assert!(store
        .record_delivery("github", "d-1", "push")
        .await
        .unwrap());
    assert!(
        !store
            .record_delivery("github", "d-1", "push")
            .await
            .unwrap(),
        "a replay"
    );
    assert!(
        store
            .record_delivery("gitlab", "d-1", "push")
            .await
            .unwrap(),
        "ids are per forge"
    );
}

fn reporting_run(commit: &str) -> NewRun {
    let mut run = new_run(commit, Concurrency::Parallel);
    run.report = true;
    run
}

async fn reports_are_queued_with_the_change_and_coalesced_per_run(store: &Store, _url: &str) {
    let quiet = one_run(store, "c0").await;
    let (created, _) = store
        .record_commit(&record("c1", vec![reporting_run("c1")]))
        .await
        .unwrap();
    let run_id = created[0];
    dispatch_build(store, run_id, 1).await;
    dispatch_build(store, quiet, 1).await;
    assert!(store
        .finish_attempt(&result(run_id, 1, StageStatus::Success))
        .await
        .unwrap());
    assert_eq!(
        store.pending_report_count().await.unwrap(),
        3,
        "create, tick and finish each queue one row"
    );
    let due = store.due_reports(i64::MAX, 10).await.unwrap();
    assert_eq!(
        due.len(),
        1,
        "one entry per run, and none for a run that does not report"
    );
    assert_eq!(due[0].run_id(), run_id);
    store.report_sent(run_id, due[0].up_to_id).await.unwrap();
    assert_eq!(store.pending_report_count().await.unwrap(), 0);
    assert!(store.due_reports(i64::MAX, 10).await.unwrap().is_empty());
}

async fn a_failed_report_is_postponed_and_newer_changes_stay_pending(store: &Store, _url: &str) {
    let (created, _) = store
        .record_commit(&record("c1", vec![reporting_run("c1")]))
        .await
        .unwrap();
    let run_id = created[0];
    let due = store.due_reports(i64::MAX, 10).await.unwrap();
    store
        .report_failed(run_id, 5_000, "HTTP 500")
        .await
        .unwrap();
    assert!(
        store.due_reports(4_999, 10).await.unwrap().is_empty(),
        "postponed"
    );
    assert_eq!(store.next_report_due().await.unwrap(), Some(5_000));
    let later = store.due_reports(5_000, 10).await.unwrap();
    assert_eq!(later[0].attempts, 1);
    // A change while the report was in flight must not be marked sent with the older rows.
    store
        .apply_tick(&TickWrites {
            finish: vec![RunFinish {
                run_id,
                status: RunStatus::Cancelled,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    store.report_sent(run_id, due[0].up_to_id).await.unwrap();
    assert_eq!(store.pending_report_count().await.unwrap(), 1);
}

async fn queued_runs_of_a_ref_can_be_cancelled(store: &Store, _url: &str) {
    let queued = one_run(store, "c1").await;
    let running = one_run(store, "c2").await;
    dispatch_build(store, running, 1).await;
    let cancelled = store
        .cancel_queued_runs("app", "refs/heads/main", "branch deleted")
        .await
        .unwrap();
    assert_eq!(
        cancelled,
        vec![queued],
        "only runs that have not started a stage"
    );
    let preparing = one_run(store, "c3").await;
    store
        .apply_tick(&TickWrites {
            start_runs: vec![preparing],
            ..Default::default()
        })
        .await
        .unwrap();
    let cancelled = store
        .cancel_queued_runs("app", "refs/heads/main", "branch deleted")
        .await
        .unwrap();
    assert_eq!(
        cancelled,
        vec![preparing],
        "a started run whose stages all wait is still queued work"
    );
    assert!(store
        .cancel_queued_runs("app", "refs/heads/other", "x")
        .await
        .unwrap()
        .is_empty());
}

async fn a_rerun_is_a_new_run_attempt_with_fresh_stages(store: &Store, _url: &str) {
    let mut run = new_run("c1", Concurrency::Parallel);
    run.stages[1].status = StageStatus::Skipped;
    run.stages[1].pending_reason = Some("skipped: `if: branch == 'x'` is false".into());
    let (created, _) = store.record_commit(&record("c1", vec![run])).await.unwrap();
    dispatch_build(store, created[0], 1).await;
    assert!(store
        .finish_attempt(&result(created[0], 1, StageStatus::Failed))
        .await
        .unwrap());
    let reruns = store.rerun("app", "c1", Some("ci"), None).await.unwrap();
    assert_eq!(reruns.len(), 1);
    let (rerun, stages) = store.get_run(reruns[0]).await.unwrap().unwrap();
    assert_eq!((rerun.run_attempt, rerun.status), (2, RunStatus::Queued));
    let states: Vec<(String, StageStatus, u32)> = stages
        .into_iter()
        .map(|s| (s.name.into_string(), s.status, s.attempt.get()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("build".to_string(), StageStatus::Queued, 0),
            ("test".to_string(), StageStatus::Skipped, 0)
        ]
    );
    assert_eq!(
        store.rerun("app", "c1", None, None).await.unwrap().len(),
        1,
        "re-runs the latest attempt"
    );
    let (third, _) = store
        .get_run(
            *store
                .rerun("app", "c1", None, None)
                .await
                .unwrap()
                .first()
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.run_attempt, 4);
    assert!(store
        .rerun("app", "nope", None, None)
        .await
        .unwrap()
        .is_empty());
}

async fn a_rerun_request_creates_one_attempt_across_restarts(store: &Store, url: &str) {
    one_run(store, "c1").await;
    let key = "github/check_suite/7/2026-01-01T00:00:00Z";
    let first = store.rerun("app", "c1", None, Some(key)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(store.rerun_requested(key).await.unwrap());
    assert!(
        store
            .rerun("app", "c1", None, Some(key))
            .await
            .unwrap()
            .is_empty(),
        "the same request again"
    );
    // After a restart, too.
    let reopened = Store::connect(url, SqliteSync::Normal)
        .await
        .expect("reopen");
    assert!(reopened
        .rerun("app", "c1", None, Some(key))
        .await
        .unwrap()
        .is_empty());
    reopened.close().await;
    // Another request (a later click) is another attempt.
    let later = "github/check_suite/7/2026-01-01T00:05:00Z";
    assert!(!store.rerun_requested(later).await.unwrap());
    assert_eq!(
        store
            .rerun("app", "c1", None, Some(later))
            .await
            .unwrap()
            .len(),
        1
    );
    let attempts: Vec<i64> = store
        .list_runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.run_attempt)
        .collect();
    assert_eq!(attempts, vec![3, 2, 1]);
}

async fn old_deliveries_are_pruned_and_recent_ones_kept(store: &Store, url: &str) {
    let now = deploylite_reconciler::store::now_ms();
    let day = 86_400_000;
    assert!(store
        .record_delivery("github", "recent", "push")
        .await
        .unwrap());
    // A delivery received eight days ago (the store only records "now").
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(
        "INSERT INTO webhook_deliveries (forge, delivery_id, event, received_at) VALUES ($1, $2, $3, $4)",
    )
    .bind("github")
    .bind("old")
    .bind("push")
    .bind(now - 8 * day)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_eq!(store.prune_deliveries(now - 7 * day).await.unwrap(), 1);
    assert!(
        store
            .record_delivery("github", "old", "push")
            .await
            .unwrap(),
        "pruned: no longer known"
    );
    assert!(
        !store
            .record_delivery("github", "recent", "push")
            .await
            .unwrap(),
        "kept: still recognised"
    );
    assert_eq!(store.prune_deliveries(now - 7 * day).await.unwrap(), 0);
}

async fn pull_request_runs_are_those_of_the_latest_head(store: &Store, _url: &str) {
    let pr = |commit: &str| {
        let mut run = new_run(commit, Concurrency::Parallel);
        run.trigger = "pull_request".into();
        run.git_ref = "refs/pull/7/head".into();
        run.pull_request = Some(PullRequestInfo {
            number: 7,
            head_repo: "fork/app".into(),
            untrusted: true,
        });
        run
    };
    store
        .record_commit(&record("old", vec![pr("old")]))
        .await
        .unwrap();
    let (new, _) = store
        .record_commit(&record("new", vec![pr("new")]))
        .await
        .unwrap();
    let runs = store.pull_request_runs("app", 7).await.unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), new);
    let info = runs[0].pull_request.clone().unwrap();
    assert_eq!(
        (info.number, info.head_repo.as_str(), info.untrusted),
        (7, "fork/app", true)
    );
    assert!(store.pull_request_runs("app", 8).await.unwrap().is_empty());
}

async fn pull_request_heads_and_the_runs_a_close_would_cancel(store: &Store, _url: &str) {
    let pr = |number: i64, commit: &str| {
        let mut run = new_run(commit, Concurrency::Parallel);
        run.trigger = "pull_request".into();
        run.git_ref = format!("refs/pull/{number}/head");
        run.pull_request = Some(PullRequestInfo {
            number,
            head_repo: "app".into(),
            untrusted: false,
        });
        run
    };
    let before = deploylite_reconciler::store::now_ms();
    let (seven, _) = store
        .record_commit(&record("a", vec![pr(7, "a")]))
        .await
        .unwrap();
    let (eight, _) = store
        .record_commit(&record("b", vec![pr(8, "b")]))
        .await
        .unwrap();
    one_run(store, "c").await;
    let recorded = |git_ref: &'static str, commit: &'static str| async move {
        store
            .pull_request_head_recorded("app", git_ref, commit)
            .await
            .unwrap()
    };
    assert!(recorded("refs/pull/7/head", "a").await);
    assert!(!recorded("refs/pull/7/head", "b").await, "another head");
    assert!(
        !recorded("refs/heads/main", "c").await,
        "a push, not a pull request"
    );

    let refs = |store: &Store| {
        let store = store.clone();
        async move {
            let mut refs = store.cancellable_pull_request_refs("app").await.unwrap();
            refs.sort();
            refs
        }
    };
    let found = refs(store).await;
    assert_eq!(
        found.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        vec!["refs/pull/7/head", "refs/pull/8/head"]
    );
    assert!(found.iter().all(|(_, at)| *at >= before), "{found:?}");
    // A run whose stage has started is not cancelled by a close, nor one already cancelled.
    dispatch_build(store, eight[0], 1).await;
    assert_eq!(
        store
            .cancel_queued_runs("app", "refs/pull/7/head", "closed")
            .await
            .unwrap(),
        seven
    );
    assert!(refs(store).await.is_empty());
    assert!(store
        .cancellable_pull_request_refs("other")
        .await
        .unwrap()
        .is_empty());
}

async fn runners_register_authenticate_and_are_revoked(store: &Store, _url: &str) {
    let labels = vec!["linux".to_string(), "docker".to_string()];
    assert_eq!(
        store
            .register_runner("r1", "hash-1", &labels, 2, "docker", false)
            .await
            .unwrap(),
        Registration::New
    );
    let me = store
        .authenticate_runner("hash-1")
        .await
        .unwrap()
        .expect("authenticated");
    assert_eq!(
        (
            me.name.as_str(),
            me.labels.clone(),
            me.capacity,
            me.executor.as_str()
        ),
        ("r1", labels.clone(), 2, "docker")
    );
    assert!(store.authenticate_runner("wrong").await.unwrap().is_none());
    // The name is taken: without takeover, a second registration changes nothing.
    assert_eq!(
        store
            .register_runner("r1", "hash-x", &["prod".to_string()], 64, "local", false)
            .await
            .unwrap(),
        Registration::Taken
    );
    let still = store
        .authenticate_runner("hash-1")
        .await
        .unwrap()
        .expect("the holder's credential still works");
    assert_eq!((still.labels.clone(), still.capacity), (labels.clone(), 2));
    assert!(store.authenticate_runner("hash-x").await.unwrap().is_none());
    assert_eq!(
        store
            .register_runner("r1", "hash-2", &labels, 4, "local", true)
            .await
            .unwrap(),
        Registration::Replaced
    );
    assert!(
        store.authenticate_runner("hash-1").await.unwrap().is_none(),
        "the old credential stops working"
    );
    store.touch_runner("r1", 8).await.unwrap();
    assert!(store
        .set_runner_labels("r1", &["arm64".to_string()])
        .await
        .unwrap());
    assert!(!store.set_runner_labels("nobody", &[]).await.unwrap());
    let listed = store.list_runners().await.unwrap();
    assert_eq!(
        (
            listed[0].labels.clone(),
            listed[0].capacity,
            listed[0].running
        ),
        (vec!["arm64".to_string()], 8, 0)
    );
    let online: Vec<String> = store
        .online_runners(0)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(online, vec!["r1".to_string()]);
    assert!(
        store.online_runners(i64::MAX).await.unwrap().is_empty(),
        "not seen since then"
    );
    assert!(store.revoke_runner("r1").await.unwrap());
    assert!(
        store.online_runners(0).await.unwrap().is_empty(),
        "a revoked runner takes no stage"
    );
    assert!(!store.revoke_runner("nobody").await.unwrap());
    assert!(
        store.authenticate_runner("hash-2").await.unwrap().is_none(),
        "revoked"
    );
    assert_eq!(
        store
            .register_runner("r1", "hash-3", &labels, 1, "local", true)
            .await
            .unwrap(),
        Registration::Revoked
    );
    assert!(store.authenticate_runner("hash-3").await.unwrap().is_none());
}

async fn dispatch_remote(store: &Store, run_id: RunId, attempt: u32, runner: &str, deadline: i64) {
    store
        .apply_tick(&TickWrites {
            start_runs: vec![run_id],
            dispatch: vec![Dispatch {
                run_id,
                stage: "build".into(),
                attempt: attempt.into(),
                runner: runner.into(),
                lease_deadline: Some(deadline),
            }],
            ..Default::default()
        })
        .await
        .expect("tick");
}

async fn a_remote_lease_is_collected_once_renewed_and_guarded(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    dispatch_remote(store, run_id, 1, "r1", 10_000).await;
    assert!(
        store.collect_leases("r2", 10).await.unwrap().is_empty(),
        "not r2's"
    );
    let leases = store.collect_leases("r1", 10).await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (
            leases[0].run_id,
            leases[0].stage.as_str(),
            leases[0].attempt
        ),
        (run_id, "build", Attempt::new(1))
    );
    assert!(
        store.collect_leases("r1", 10).await.unwrap().is_empty(),
        "collected once"
    );
    assert_eq!(
        store
            .renew_lease("r1", run_id, "build", Attempt::new(1), 20_000)
            .await
            .unwrap(),
        Some(false)
    );
    assert_eq!(
        store
            .renew_lease("r2", run_id, "build", Attempt::new(1), 20_000)
            .await
            .unwrap(),
        None,
        "another runner's lease"
    );
    assert_eq!(
        store
            .renew_lease("r1", run_id, "build", Attempt::new(2), 20_000)
            .await
            .unwrap(),
        None,
        "another attempt"
    );
    store.request_cancel(run_id, "stop").await.unwrap();
    assert_eq!(
        store
            .renew_lease("r1", run_id, "build", Attempt::new(1), 20_000)
            .await
            .unwrap(),
        Some(true),
        "cancel rides the heartbeat"
    );
    assert_eq!(
        store
            .held_lease("r1", run_id, "build", Attempt::new(1))
            .await
            .unwrap(),
        Some((0, true))
    );
    assert_eq!(
        store
            .held_lease("r2", run_id, "build", Attempt::new(1))
            .await
            .unwrap(),
        None
    );
    let runners = store.list_runners().await.unwrap();
    assert!(runners.is_empty(), "leases do not create runners");
}

async fn an_expired_lease_requeues_the_stage_without_counting_a_failure(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    dispatch_remote(store, run_id, 1, "r1", 10_000).await;
    store
        .register_runner("r1", "hash-r1", &["linux".into()], 2, "local", false)
        .await
        .unwrap();
    store.touch_runner("r1", 2).await.unwrap();
    let seen = store.list_runners().await.unwrap()[0].last_seen.unwrap();
    store
        .apply_tick(&TickWrites {
            expire: vec![ExpiredLease {
                run_id,
                stage: "build".into(),
                attempt: Attempt::new(1),
                runner: "r1".into(),
                last_renewed: seen - 1,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.list_runners().await.unwrap()[0].last_seen,
        Some(seen),
        "a runner heard from since the lease's last renewal (restarted under the same name) stays online"
    );
    // The same runner silent since the renewal is dead or cut off: no new stages for it.
    store
        .apply_tick(&TickWrites {
            expire: vec![ExpiredLease {
                run_id,
                stage: "build".into(),
                attempt: Attempt::new(1),
                runner: "r1".into(),
                last_renewed: seen,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(store.list_runners().await.unwrap()[0].last_seen, None);
    let active = store.load_active().await.unwrap();
    let build = active[0].stages.iter().find(|s| s.name == "build").unwrap();
    assert_eq!(
        (
            build.status,
            build.attempt.get(),
            build.failures,
            build.runner.clone()
        ),
        (StageStatus::Queued, 1, 0, None)
    );
    assert!(build
        .pending_reason
        .as_deref()
        .unwrap_or("")
        .contains("lost with runner `r1`"));
    let attempts = store.stage_attempts(run_id, "build").await.unwrap();
    assert!(attempts[0]
        .note
        .as_deref()
        .unwrap_or("")
        .contains("lease expired"));
    // The old runner's late report is refused: it holds nothing any more.
    assert_eq!(
        store
            .held_lease("r1", run_id, "build", Attempt::new(1))
            .await
            .unwrap(),
        None
    );
    assert!(!store
        .finish_attempt(&result(run_id, 1, StageStatus::Success))
        .await
        .unwrap());
    dispatch_remote(store, run_id, 2, "r2", 10_000).await;
    assert_eq!(
        stage_status(store, run_id, "build").await,
        (StageStatus::Running, 2)
    );
}

async fn recovery_leaves_remote_leases_alone(store: &Store, _url: &str) {
    let local = one_run(store, "c1").await;
    let remote = one_run(store, "c2").await;
    dispatch_build(store, local, 1).await;
    dispatch_remote(store, remote, 1, "r1", i64::MAX / 2).await;
    let interrupted = store.recover_interrupted().await.unwrap();
    assert_eq!(
        interrupted.iter().map(|i| i.run_id).collect::<Vec<_>>(),
        vec![local]
    );
    assert_eq!(
        stage_status(store, remote, "build").await,
        (StageStatus::Running, 1)
    );
}

fn diamond_run(commit: &str) -> NewRun {
    let text = "name: ci\nstages:\n  a: { steps: [{ run: 'true' }] }\n  b: { needs: [a], steps: [{ run: 'true' }] }\n  c: { needs: [a], steps: [{ run: 'true' }] }\n  d: { needs: [b, c], steps: [{ run: 'true' }] }\n  e: { needs: [c], steps: [{ run: 'true' }] }\n";
    let pipeline = deploylite_pipeline::parse_pipeline("ci.yaml", text).expect("valid pipeline");
    let stages = pipeline
        .stages
        .iter()
        .map(|s| NewStage {
            name: s.name.clone().into(),
            status: StageStatus::Queued,
            needs: s.needs.clone(),
            pending_reason: None,
        })
        .collect();
    NewRun {
        awaiting_approval: false,
        policy: None,
        spec: Some(serde_json::to_string(&pipeline).expect("spec json")),
        stages,
        report: true,
        ..new_run(commit, Concurrency::Parallel)
    }
}

/// The scheduler keeps the active runs in memory and applies its own writes to that copy
/// (`scheduler::active`). Drive a run to its end through every kind of write — start, pending
/// reasons (capacity 1), dispatch, a retry with backoff, a failure that skips its dependents,
/// success, the run's finish — and compare the copy with a fresh read after each one.
async fn the_schedulers_copy_matches_the_store_after_every_write(store: &Store, _url: &str) {
    use deploylite_reconciler::scheduler::{active, plan_tick, Placement, PlanConfig};
    use deploylite_reconciler::store::now_ms;
    use std::collections::HashMap;
    use std::sync::Arc;

    let (created, _) = store
        .record_commit(&record("c1", vec![diamond_run("c1")]))
        .await
        .unwrap();
    let run_id = created[0];
    let spec = Arc::new(store.run_spec(run_id).await.unwrap());
    let specs = HashMap::from([(run_id, spec)]);
    let config = PlanConfig {
        runners: vec![Placement {
            name: "local".into(),
            labels: vec![],
            capacity: 1,
        }],
        lease_ttl_ms: 30_000,
        untrusted_labels: Vec::new(),
    };
    let mut copy = store.load_active().await.unwrap();
    let mut retried = false;
    let mut kinds_seen = std::collections::BTreeSet::new();
    for step in 0..60 {
        if copy.is_empty() {
            break;
        }
        let (writes, effects) = plan_tick(&copy, &specs, &config, now_ms());
        if !writes.is_empty() {
            for (kind, present) in [
                ("start", !writes.start_runs.is_empty()),
                ("dispatch", !writes.dispatch.is_empty()),
                ("skip", !writes.skip.is_empty()),
                ("pending", !writes.stage_pending.is_empty()),
                ("finish", !writes.finish.is_empty()),
            ] {
                if present {
                    kinds_seen.insert(kind);
                }
            }
            let mut tx = store.begin_tick().await.unwrap();
            assert!(
                tx.apply(&writes).await.unwrap(),
                "step {step}: a guarded write missed"
            );
            tx.commit().await.unwrap();
            active::apply_writes(&mut copy, &writes);
        } else if effects.prepare_workspace.contains(&run_id) {
            store.mark_workspace_ready(run_id, "/ws/1").await.unwrap();
            active::apply_workspace_ready(&mut copy, run_id, "/ws/1");
        } else {
            // End the running stage: `a` fails once and is retried, `b` fails for good.
            let running = copy[0]
                .stages
                .iter()
                .find(|s| s.status == StageStatus::Running)
                .unwrap_or_else(|| {
                    panic!("step {step}: nothing to do and nothing running: {copy:?}")
                })
                .clone();
            let mut end = result(run_id, running.attempt.get(), StageStatus::Success);
            end.stage = running.name.clone();
            if running.name == "a" && !retried {
                retried = true;
                end.attempt_status = StageStatus::Failed;
                end.stage_status = StageStatus::Queued;
                end.counts_as_failure = true;
                end.not_before = Some(now_ms() - 1);
                end.pending_reason = Some("backoff until now: attempt 1 failed".into());
                kinds_seen.insert("retry");
            } else if running.name == "b" {
                end.attempt_status = StageStatus::Failed;
                end.stage_status = StageStatus::Failed;
                end.exit_code = Some(1);
                end.counts_as_failure = true;
            }
            let mut tx = store.begin_tick().await.unwrap();
            assert!(tx.finish_attempt(&end).await.unwrap());
            tx.commit().await.unwrap();
            assert!(active::apply_result(&mut copy, &end), "step {step}");
        }
        assert_eq!(
            copy,
            store.load_active().await.unwrap(),
            "step {step}: the copy and the store differ"
        );
    }
    assert!(copy.is_empty(), "the run did not finish: {copy:?}");
    let (run, stages) = store.get_run(run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let status_of = |name: &str| stages.iter().find(|s| s.name == name).map(|s| s.status);
    assert_eq!(status_of("a"), Some(StageStatus::Success));
    assert_eq!(status_of("b"), Some(StageStatus::Failed));
    assert_eq!(status_of("d"), Some(StageStatus::Skipped));
    assert_eq!(status_of("e"), Some(StageStatus::Success));
    assert_eq!(
        kinds_seen.into_iter().collect::<Vec<_>>(),
        ["dispatch", "finish", "pending", "retry", "skip", "start"]
    );
}

async fn scrape_gauges_classify_waits_and_count_runners(store: &Store, _url: &str) {
    // Running: build runs, test waits on it.
    let running = one_run(store, "c1").await;
    dispatch_build(store, running, 1).await;
    // Started, but build waits for capacity; test on needs.
    let crowded = one_run(store, "c2").await;
    store
        .apply_tick(&TickWrites {
            start_runs: vec![crowded],
            stage_pending: vec![
                (running, "test".into(), Some("needs: build".into())),
                (
                    crowded,
                    "build".into(),
                    Some("capacity: 4 of 4 stages running".into()),
                ),
                (crowded, "test".into(), Some("needs: build".into())),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    // Not started: both its stages wait for the run to start.
    let (created, _) = store
        .record_commit(&record("c3", vec![reporting_run("c3")]))
        .await
        .unwrap();
    store
        .report_failed(created[0], i64::MAX, "the forge is down")
        .await
        .unwrap();
    store
        .register_runner(
            "far",
            "hash-far",
            &["linux".to_string()],
            3,
            "docker",
            false,
        )
        .await
        .unwrap();

    let gauges = store.scheduling_gauges().await.unwrap();
    let mut waiting = gauges.waiting.clone();
    waiting.sort();
    assert_eq!(
        waiting,
        vec![
            ("capacity".to_string(), 1),
            ("needs".to_string(), 2),
            ("run_start".to_string(), 2),
        ]
    );
    assert_eq!(gauges.running_by_runner, vec![("local".to_string(), 1)]);
    assert_eq!(gauges.remote_runners.len(), 1);
    assert_eq!(
        (
            gauges.remote_runners[0].name.as_str(),
            gauges.remote_runners[0].capacity
        ),
        ("far", 3)
    );
    assert_eq!((gauges.outbox_pending, gauges.outbox_retrying), (1, 1));
}

async fn attempt_timings_start_when_a_stage_could_run(store: &Store, _url: &str) {
    let run_id = one_run(store, "c1").await;
    dispatch_build(store, run_id, 1).await;
    let build = store
        .attempt_timing(run_id, "build", Attempt::new(1))
        .await
        .unwrap()
        .unwrap();
    let run = store.run_timing(run_id).await.unwrap().unwrap();
    assert!(build.first_of_run);
    assert_eq!(
        build.runnable_at, run.started_at,
        "a first stage can run when its run starts"
    );
    assert!(build.runnable_at.unwrap() <= build.started_at);
    assert_eq!(build.finished_at, None);

    assert!(store
        .finish_attempt(&result(run_id, 1, StageStatus::Success))
        .await
        .unwrap());
    store
        .apply_tick(&TickWrites {
            dispatch: vec![Dispatch {
                run_id,
                stage: "test".into(),
                attempt: Attempt::new(1),
                runner: "local".into(),
                lease_deadline: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let build = store
        .attempt_timing(run_id, "build", Attempt::new(1))
        .await
        .unwrap()
        .unwrap();
    let test = store
        .attempt_timing(run_id, "test", Attempt::new(1))
        .await
        .unwrap()
        .unwrap();
    assert!(!test.first_of_run);
    assert_eq!(
        test.runnable_at, build.finished_at,
        "a stage can run when its needs ended"
    );
    assert!(build.finished_at.unwrap() >= build.started_at);
    assert_eq!((test.repo.as_str(), test.pipeline.as_str()), ("app", "ci"));

    // A retry after a failure waited out a backoff the store no longer knows: not measured.
    let mut failed = result(run_id, 1, StageStatus::Failed);
    failed.stage = "test".into();
    failed.stage_status = StageStatus::Queued;
    assert!(store.finish_attempt(&failed).await.unwrap());
    store
        .apply_tick(&TickWrites {
            dispatch: vec![Dispatch {
                run_id,
                stage: "test".into(),
                attempt: Attempt::new(2),
                runner: "local".into(),
                lease_deadline: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let retry = store
        .attempt_timing(run_id, "test", Attempt::new(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retry.runnable_at, None);
    assert!(store
        .attempt_timing(run_id, "test", Attempt::new(3))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .attempt_timing(RunId::new(run_id.get() + 1000), "test", Attempt::FIRST)
        .await
        .unwrap()
        .is_none());
}
