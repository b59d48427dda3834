//! End-to-end tests of `deploylite serve`: real git repositories, the real binary, the HTTP API.
//! Each test has its own repositories, data dir and port, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Seconds since the epoch as written by `date +%s.%N` into `file`.
fn read_time(file: &std::path::Path) -> f64 {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", file.display()))
}

// ---------------------------------------------------------------------------------------------
// 1. DAG

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_dag_runs_the_middle_layer_in_parallel_and_the_join_after_both() {
    let marks = tempfile::tempdir().unwrap();
    // Stages of a root daemon run as `nobody`: they may write here.
    std::fs::set_permissions(
        marks.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let m = marks.path().display();
    let repo = TestRepo::new();
    repo.pipeline(
        "diamond.yaml",
        &format!(
            r#"name: diamond
stages:
  a:
    steps:
      - run: echo "a ran in $PWD"
  b:
    needs: [a]
    steps:
      - run: |
          date +%s.%N > {m}/b.start
          sleep 0.5
          date +%s.%N > {m}/b.end
  c:
    needs: [a]
    steps:
      - run: |
          date +%s.%N > {m}/c.start
          sleep 0.5
          date +%s.%N > {m}/c.end
  d:
    needs: [b, c]
    steps:
      - run: |
          date +%s.%N > {m}/d.start
          test -f .deploylite/pipelines/diamond.yaml
"#
        ),
    );
    let commit = repo.commit("diamond");
    let daemon = Daemon::start(&[&repo], "").await;

    let run = daemon.wait_for_commit_run("diamond", &commit).await;
    let run = daemon.wait_run_done(id(&run)).await;
    assert_eq!(run.status, RunStatus::Success, "{run:#}");
    assert_eq!(run.repo, "app");
    assert_eq!(run.git_ref, "refs/heads/main");
    assert_eq!(run.trigger, "push");
    for name in ["a", "b", "c", "d"] {
        let s = run.stage(name);
        assert_eq!(s.status, StageStatus::Success, "{s:#}");
        assert_eq!(s.attempt, 1, "{s:#}");
        assert_eq!(s.exit_code, Some(0), "{s:#}");
    }
    assert_eq!(run.stage("d").needs, ["b", "c"]);

    // As the steps saw it.
    let (bs, be) = (
        read_time(&marks.path().join("b.start")),
        read_time(&marks.path().join("b.end")),
    );
    let (cs, ce) = (
        read_time(&marks.path().join("c.start")),
        read_time(&marks.path().join("c.end")),
    );
    let ds = read_time(&marks.path().join("d.start"));
    assert!(
        bs < ce && cs < be,
        "b [{bs}, {be}] and c [{cs}, {ce}] did not overlap"
    );
    assert!(
        ds >= be && ds >= ce,
        "d started at {ds}, before b ({be}) or c ({ce}) ended"
    );

    // As the API records it.
    let (a, b, c, d) = (
        run.stage("a"),
        run.stage("b"),
        run.stage("c"),
        run.stage("d"),
    );
    assert!(b.started_ms() >= a.finished_ms() && c.started_ms() >= a.finished_ms());
    assert!(b.started_ms() < c.finished_ms() && c.started_ms() < b.finished_ms());
    assert!(d.started_ms() >= b.finished_ms().max(c.finished_ms()));
    assert!(daemon.log(run.id, "a", None).await.contains("a ran in"));
}

// ---------------------------------------------------------------------------------------------
// 2. Retries and rollback

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_a_listed_exit_code_succeeds_on_the_second_attempt() {
    let repo = TestRepo::new();
    repo.pipeline(
        "flaky.yaml",
        r#"name: flaky
stages:
  integration:
    retry: { max: 2, backoff: 100ms, exit_codes: [75] }
    steps:
      - run: |
          echo "attempt $DEPLOYLITE_ATTEMPT of $DEPLOYLITE_STAGE in run $DEPLOYLITE_RUN_ID"
          if [ "$DEPLOYLITE_ATTEMPT" = 1 ]; then echo "database not ready" >&2; exit 75; fi
          echo "database ready"
  after:
    needs: [integration]
    steps:
      - run: echo after-ran
"#,
    );
    let commit = repo.commit("flaky");
    let daemon = Daemon::start(&[&repo], "").await;

    let run = daemon.wait_for_commit_run("flaky", &commit).await;
    let rid = id(&run);
    let run = daemon.wait_run_done(rid).await;
    assert_eq!(run.status, RunStatus::Success, "{run:#}");
    let stage = run.stage("integration");
    assert_eq!(stage.status, StageStatus::Success);
    assert_eq!(stage.attempt, 2);
    assert_eq!(stage.exit_code, Some(0));
    assert_eq!(run.stage("after").status, StageStatus::Success);
    assert_eq!(run.stage("after").attempt, 1);

    let first = daemon.log(rid, "integration", Some(1)).await;
    assert!(
        first.contains(&format!("attempt 1 of integration in run {rid}")),
        "{first}"
    );
    assert!(first.contains("database not ready"), "{first}");
    assert!(first.contains("step 1 exited with 75"), "{first}");
    assert!(first.contains("retry 1 of 2"), "{first}");
    assert!(!first.contains("database ready\n"), "{first}");

    let second = daemon.log(rid, "integration", Some(2)).await;
    assert!(second.contains("attempt 2 of integration"), "{second}");
    assert!(
        second.contains("previous attempt 1: failed (step 1 exited with 75)"),
        "{second}"
    );
    assert!(second.contains("database ready"), "{second}");
    assert_eq!(
        daemon.log(rid, "integration", None).await,
        second,
        "no ?attempt = the latest attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_exit_code_is_not_retried_dependents_are_skipped_and_rollback_runs() {
    let repo = TestRepo::new();
    repo.pipeline(
        "deploy.yaml",
        r#"name: deploy
stages:
  push:
    retry: { max: 2, backoff: 100ms, exit_codes: [75] }
    steps:
      - run: echo pushing; exit 3
    rollback:
      - run: echo "rolled back $DEPLOYLITE_STAGE attempt $DEPLOYLITE_ATTEMPT"
  verify:
    needs: [push]
    steps:
      - run: echo should-not-run
  announce:
    needs: [verify]
    steps:
      - run: echo should-not-run
  independent:
    steps:
      - run: echo independent-ran
"#,
    );
    let commit = repo.commit("deploy");
    let daemon = Daemon::start(&[&repo], "").await;

    let run = daemon.wait_for_commit_run("deploy", &commit).await;
    let rid = id(&run);
    let run = daemon.wait_run_done(rid).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:#}");
    let push = run.stage("push");
    assert_eq!(push.status, StageStatus::Failed);
    assert_eq!(push.attempt, 1, "exit 3 is not in exit_codes: no retry");
    assert_eq!(push.exit_code, Some(3));
    let verify = run.stage("verify");
    assert_eq!(verify.status, StageStatus::Skipped);
    assert_eq!(verify.attempt, 0);
    assert_eq!(
        verify.pending_reason.as_deref(),
        Some("needs `push`, which failed")
    );
    let announce = run.stage("announce");
    assert_eq!(announce.status, StageStatus::Skipped);
    assert_eq!(
        announce.pending_reason.as_deref(),
        Some("needs `verify`, which was skipped")
    );
    assert_eq!(run.stage("independent").status, StageStatus::Success);

    let log = daemon.log(rid, "push", None).await;
    assert!(log.contains("pushing"), "{log}");
    assert!(log.contains("step 1 exited with 3"), "{log}");
    assert!(!log.contains("retry 1 of"), "{log}");
    assert!(log.contains("running its rollback steps"), "{log}");
    assert!(log.contains("rolled back push attempt 1"), "{log}");
    // A stage that never ran has no attempt to show.
    let (code, body) = daemon
        .get(&format!("/api/v1/runs/{rid}/stages/verify/log"))
        .await;
    assert_eq!(code, 404, "{body}");
}

// ---------------------------------------------------------------------------------------------
// 3. Timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_the_stage_and_kills_its_whole_process_group() {
    let repo = TestRepo::new();
    repo.pipeline(
        "slow.yaml",
        r#"name: slow
stages:
  hang:
    timeout: 1s
    steps:
      - run: |
          echo started
          sleep 30 &
          sleep 30
  after:
    needs: [hang]
    steps:
      - run: echo should-not-run
"#,
    );
    let commit = repo.commit("slow");
    let daemon = Daemon::start(&[&repo], "").await;

    let run = daemon.wait_for_commit_run("slow", &commit).await;
    let rid = id(&run);
    daemon.wait_stage(rid, "hang", "running").await;
    daemon.wait_log_contains(rid, "hang", "started").await;
    let waited = Instant::now();
    let run = daemon.wait_run_done(rid).await;
    assert!(
        waited.elapsed() < Duration::from_secs(8),
        "the 1s timeout took {:?}",
        waited.elapsed()
    );
    assert_eq!(run.status, RunStatus::Failed, "{run:#}");
    let hang = run.stage("hang");
    assert_eq!(hang.status, StageStatus::Failed);
    assert_eq!(hang.attempt, 1);
    assert_eq!(hang.exit_code, None, "a timed-out stage has no exit code");
    let took = hang.finished_ms() - hang.started_ms();
    assert!(
        (1000..6000).contains(&took),
        "stage ran {took} ms for a 1s timeout"
    );
    assert_eq!(run.stage("after").status, StageStatus::Skipped);
    let log = daemon.log(rid, "hang", None).await;
    assert!(log.contains("timed out after 1s"), "{log}");

    // Nothing of the stage survives: neither the foreground nor the background `sleep 30`.
    let left = stage_processes(&daemon.data_dir, Some(rid));
    assert!(
        left.is_empty(),
        "processes of the timed-out stage survived: {left:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Cancellation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_running_stage_skips_the_rest_and_cannot_be_repeated() {
    let repo = TestRepo::new();
    repo.pipeline(
        "long.yaml",
        r#"name: long
stages:
  wait:
    steps:
      - run: echo waiting; sleep 30
  after:
    needs: [wait]
    steps:
      - run: echo should-not-run
"#,
    );
    let commit = repo.commit("long");
    let daemon = Daemon::start(&[&repo], "").await;

    let run = daemon.wait_for_commit_run("long", &commit).await;
    let rid = id(&run);
    daemon.wait_stage(rid, "wait", "running").await;
    daemon.wait_log_contains(rid, "wait", "waiting").await;
    assert!(
        !stage_processes(&daemon.data_dir, Some(rid)).is_empty(),
        "the stage should be running"
    );

    let (code, out, err) = daemon.cli(&["cancel", &rid.to_string()]);
    assert_eq!(code, 0, "cancel failed: {out}{err}");
    assert!(
        out.contains(&format!("run #{rid} is being cancelled")),
        "{out}"
    );

    let run = daemon.wait_run_done(rid).await;
    assert_eq!(run.status, RunStatus::Cancelled, "{run:#}");
    assert_eq!(run.pending_reason.as_deref(), Some("cancelled by request"));
    let wait = run.stage("wait");
    assert_eq!(wait.status, StageStatus::Cancelled);
    assert_eq!(wait.attempt, 1);
    let after = run.stage("after");
    assert_eq!(after.status, StageStatus::Skipped);
    assert_eq!(after.pending_reason.as_deref(), Some("run cancelled"));
    let log = daemon.log(rid, "wait", None).await;
    assert!(
        log.contains("cancelled: killed the step's process group"),
        "{log}"
    );
    daemon.wait_no_stage_processes(Some(rid)).await;

    let (code, out, err) = daemon.cli(&["cancel", &rid.to_string()]);
    assert_eq!(code, 1, "a second cancel must fail: {out}{err}");
    assert!(
        err.contains(&format!("run #{rid} is already cancelled")),
        "{err}"
    );
    assert_eq!(status(&daemon.run(rid).await), "cancelled");
}

// ---------------------------------------------------------------------------------------------
// 5. Concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_progress_cancels_the_older_run_when_a_new_commit_arrives() {
    let repo = TestRepo::new();
    repo.pipeline(
        "deploy.yaml",
        r#"name: deploy
concurrency: cancel-in-progress
stages:
  roll-out:
    steps:
      - run: echo "rolling out $DEPLOYLITE_COMMIT"; sleep "$(cat delay)"
"#,
    );
    repo.write("delay", "30\n");
    let first = repo.commit("slow deploy");
    let daemon = Daemon::start(&[&repo], "").await;

    let run1 = daemon.wait_for_commit_run("deploy", &first).await;
    let id1 = id(&run1);
    daemon.wait_stage(id1, "roll-out", "running").await;
    daemon
        .wait_log_contains(id1, "roll-out", "rolling out")
        .await;

    repo.write("delay", "0\n");
    let second = repo.commit("fast deploy");
    let run2 = daemon.wait_for_commit_run("deploy", &second).await;
    let id2 = id(&run2);
    assert!(id2 > id1);

    let run1 = daemon.wait_run_done(id1).await;
    assert_eq!(run1.status, RunStatus::Cancelled, "{run1:#}");
    assert_eq!(
        run1.pending_reason,
        Some(format!("cancelled: superseded by run #{id2}"))
    );
    assert_eq!(run1.stage("roll-out").status, StageStatus::Cancelled);
    let run2 = daemon.wait_run_done(id2).await;
    assert_eq!(run2.status, RunStatus::Success, "{run2:#}");
    assert_eq!(run2.stage("roll-out").status, StageStatus::Success);
    daemon.wait_no_stage_processes(Some(id1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_concurrency_makes_the_newer_run_wait_for_the_older() {
    let repo = TestRepo::new();
    repo.pipeline(
        "release.yaml",
        r#"name: release
concurrency: queue
stages:
  ship:
    steps:
      - run: sleep "$(cat delay)"; echo shipped
"#,
    );
    repo.write("delay", "2\n");
    let first = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    let id1 = id(&daemon.wait_for_commit_run("release", &first).await);
    daemon.wait_stage(id1, "ship", "running").await;

    repo.write("delay", "0\n");
    let second = repo.commit("second");
    let run2 = daemon.wait_for_commit_run("release", &second).await;
    let id2 = id(&run2);
    let waiting = daemon
        .wait_run(id2, "waiting for the older run", |r| {
            r.pending_reason.is_some() || r.is_final()
        })
        .await;
    assert_eq!(waiting.status, RunStatus::Queued, "{waiting}");
    assert_eq!(
        waiting.pending_reason.as_deref(),
        Some(format!("concurrency: waiting for run #{id1} on refs/heads/main").as_str())
    );

    let run1 = daemon.wait_run_done(id1).await;
    let run2 = daemon.wait_run_done(id2).await;
    assert_eq!(run1.status, RunStatus::Success);
    assert_eq!(run2.status, RunStatus::Success);
    assert!(
        run2.started_ms() >= run1.finished_ms(),
        "queued run started before the older ended"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Path filters

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_filters_skip_commits_that_touch_no_matching_path() {
    let repo = TestRepo::new();
    repo.pipeline(
        "build.yaml",
        r#"name: build
on:
  push:
    branches: [main]
    paths: ["src/**"]
stages:
  compile:
    steps:
      - run: cat src/lib.txt
"#,
    );
    repo.write("src/lib.txt", "v1\n")
        .write("docs/guide.md", "# guide\n");
    let c1 = repo.commit("initial");
    let daemon = Daemon::start(&[&repo], "").await;

    // A ref seen for the first time: its changes are unknown, so path filters pass.
    let run1 = daemon.wait_for_commit_run("build", &c1).await;
    let run1 = daemon.wait_run_done(id(&run1)).await;
    assert_eq!(run1.status, RunStatus::Success, "{run1:#}");

    repo.write("docs/guide.md", "# guide, improved\n");
    let c2 = repo.commit("docs only");
    let run2 = daemon.wait_for_commit_run("build", &c2).await;
    assert_eq!(status(&run2), "skipped", "{run2:#}");
    assert_eq!(
        run2["pending_reason"],
        "skipped: no changed file matches the pipeline's path filters"
    );
    let detail = daemon.run(id(&run2)).await;
    assert_eq!(
        detail["stages"],
        serde_json::json!([]),
        "a skipped run has no stages"
    );

    repo.write("src/lib.txt", "v2\n");
    let c3 = repo.commit("code");
    let run3 = daemon.wait_for_commit_run("build", &c3).await;
    let run3 = daemon.wait_run_done(id(&run3)).await;
    assert_eq!(run3.status, RunStatus::Success, "{run3:#}");
    assert!(daemon.log(run3.id, "compile", None).await.contains("v2"));
}

// ---------------------------------------------------------------------------------------------
// 7. Invalid pipelines

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pipeline_becomes_an_error_run_with_positions_and_siblings_still_run() {
    let repo = TestRepo::new();
    repo.pipeline(
        "broken.yaml",
        "name: broken\ncolour: blue\nstages:\n  a:\n    needs: [nope]\n    steps: [\"true\"]\n",
    );
    repo.pipeline(
        "fine.yaml",
        "name: fine\nstages:\n  ok:\n    steps: [\"echo fine\"]\n",
    );
    let c1 = repo.commit("one broken, one fine");
    let daemon = Daemon::start(&[&repo], "").await;

    let broken = daemon.wait_for_commit_run("broken", &c1).await;
    assert_eq!(status(&broken), "error", "{broken:#}");
    assert_eq!(broken["pipeline_file"], ".deploylite/pipelines/broken.yaml");
    assert_eq!(
        broken["errors"],
        serde_json::json!([
            {
                "file": ".deploylite/pipelines/broken.yaml",
                "line": 2,
                "col": 1,
                "message": "unknown key `colour`; expected one of `name`, `on`, `concurrency`, `env`, `stages`"
            },
            {
                "file": ".deploylite/pipelines/broken.yaml",
                "line": 5,
                "col": 13,
                "message": "stage `a` needs unknown stage `nope`"
            }
        ])
    );
    assert!(
        broken["finished_at"].is_string(),
        "an error run is final at once: {broken:#}"
    );

    let fine = daemon.wait_for_commit_run("fine", &c1).await;
    let fine = daemon.wait_run_done(id(&fine)).await;
    assert_eq!(fine.status, RunStatus::Success, "{fine:#}");

    // The daemon keeps serving and picks up the fix.
    let (code, _) = daemon.get("/healthz").await;
    assert_eq!(code, 200);
    repo.pipeline(
        "broken.yaml",
        "name: broken\nstages:\n  a:\n    steps: [\"echo fixed\"]\n",
    );
    let c2 = repo.commit("fix");
    let fixed = daemon.wait_for_commit_run("broken", &c2).await;
    let fixed = daemon.wait_run_done(id(&fixed)).await;
    assert_eq!(fixed.status, RunStatus::Success, "{fixed:#}");
    assert!(
        fixed.json.get("errors").is_none_or(Value::is_null),
        "{fixed:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_pipeline_names_across_files_are_an_error() {
    let repo = TestRepo::new();
    repo.pipeline(
        "a.yaml",
        "name: same\nstages:\n  x:\n    steps: [\"true\"]\n",
    );
    repo.pipeline(
        "b.yaml",
        "# second\nname: same\nstages:\n  y:\n    steps: [\"true\"]\n",
    );
    let c1 = repo.commit("duplicates");
    let daemon = Daemon::start(&[&repo], "").await;
    let err = daemon
        .wait_for_run("an error run for b.yaml", |r| {
            r["commit"] == c1.as_str() && r["status"] == "error"
        })
        .await;
    assert_eq!(err["pipeline_file"], ".deploylite/pipelines/b.yaml");
    assert_eq!(err["errors"][0]["line"], 2);
    assert_eq!(err["errors"][0]["col"], 7);
    assert_eq!(
        err["errors"][0]["message"],
        "duplicate pipeline name `same` (first defined at .deploylite/pipelines/a.yaml:1:7)"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Commits in quick succession

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_successive_commits_never_duplicate_runs_and_all_finish() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  test:\n    steps: [\"echo $DEPLOYLITE_COMMIT\"]\n",
    );
    repo.pipeline(
        "lint.yaml",
        "name: lint\nstages:\n  lint:\n    steps: [\"sleep 0.2\"]\n",
    );
    repo.commit("base");
    let daemon = Daemon::start(&[&repo], "").await;
    daemon
        .wait_for_runs("the base commit's runs", |runs| runs.len() == 2)
        .await;

    let mut commits = Vec::new();
    for i in 0..4 {
        repo.write("counter", &format!("{i}\n"));
        commits.push(repo.commit(&format!("quick {i}")));
    }
    let last = commits.last().unwrap().clone();
    let runs = daemon
        .wait_for_runs("runs of the latest commit, and every run final", |runs| {
            let latest = runs.iter().filter(|r| r["commit"] == last.as_str()).count();
            latest == 2 && runs.iter().all(is_final)
        })
        .await;
    let mut seen = HashSet::new();
    for r in &runs {
        let key = (
            r["pipeline"].as_str().unwrap().to_string(),
            r["commit"].as_str().unwrap().to_string(),
        );
        assert!(
            seen.insert(key.clone()),
            "duplicate run for {key:?}: {runs:#?}"
        );
        assert_eq!(status(r), "success", "{r:#}");
    }
    // A commit the watcher never saw as a head has no run; one it saw has both pipelines.
    for c in &commits {
        let n = runs.iter().filter(|r| r["commit"] == c.as_str()).count();
        assert!(n == 0 || n == 2, "commit {c} has {n} runs");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Crash recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_a_restart_reruns_the_interrupted_stage_once_and_kills_the_orphan() {
    let repo = TestRepo::new();
    // Attempt 1 at the first commit sleeps long, so that "the orphan is gone" cannot be
    // explained by it ending on its own.
    repo.pipeline(
        "durable.yaml",
        r#"name: durable
stages:
  recover-me-7f3a:
    steps:
      - run: |
          echo "attempt $DEPLOYLITE_ATTEMPT sleeping"
          if [ "$DEPLOYLITE_ATTEMPT" = 1 ] && [ -f slow ]; then sleep 30; else sleep 2; fi
          echo "attempt $DEPLOYLITE_ATTEMPT done"
  after:
    needs: [recover-me-7f3a]
    steps:
      - run: echo after-done
"#,
    );
    repo.pipeline(
        "quick.yaml",
        "name: quick\nstages:\n  q:\n    steps: [\"echo quick\"]\n",
    );
    repo.write("slow", "");
    let c1 = repo.commit("durable");
    let mut daemon = Daemon::start(&[&repo], "").await;

    let run = daemon.wait_for_commit_run("durable", &c1).await;
    let rid = id(&run);
    daemon.wait_stage(rid, "recover-me-7f3a", "running").await;
    daemon
        .wait_log_contains(rid, "recover-me-7f3a", "attempt 1 sleeping")
        .await;
    let orphans = stage_processes(&daemon.data_dir, Some(rid));
    assert!(
        orphans.iter().any(|p| p.cmdline.starts_with("sleep 30")),
        "attempt 1's sleep is not running: {orphans:?}"
    );

    daemon.kill9();
    assert!(
        orphans.iter().any(|p| pid_alive(p.pid)),
        "the stage should outlive a kill -9 of the daemon (else this test proves nothing)"
    );
    // A commit made while the daemon is down must not be lost either.
    repo.remove("slow");
    let c2 = repo.commit("while down");

    daemon.restart().await;
    let pids: Vec<i32> = orphans.iter().map(|p| p.pid).collect();
    let survivors = wait::pids_exit(&pids, Duration::from_secs(5));
    assert!(
        survivors.is_empty(),
        "attempt 1's processes survived the restart: {survivors:?} of {orphans:?}"
    );

    let run = daemon.wait_run_done(rid).await;
    assert_eq!(run.status, RunStatus::Success, "{run:#}");
    let stage = run.stage("recover-me-7f3a");
    assert_eq!(stage.status, StageStatus::Success);
    assert_eq!(stage.attempt, 2);
    assert_eq!(run.stage("after").status, StageStatus::Success);
    let log2 = daemon.log(rid, "recover-me-7f3a", Some(2)).await;
    assert!(
        log2.contains(
            "previous attempt 1: failed (interrupted: the daemon stopped while this attempt ran)"
        ),
        "{log2}"
    );
    assert!(log2.contains("attempt 2 done"), "{log2}");
    let log1 = daemon.log(rid, "recover-me-7f3a", Some(1)).await;
    assert!(
        log1.contains("attempt 1 sleeping") && !log1.contains("attempt 1 done"),
        "{log1}"
    );

    let runs = daemon
        .wait_for_runs("the commit made while down, and every run final", |runs| {
            runs.iter().filter(|r| r["commit"] == c2.as_str()).count() == 2
                && runs.iter().all(is_final)
        })
        .await;
    for c in [&c1, &c2] {
        for p in ["durable", "quick"] {
            let n = runs
                .iter()
                .filter(|r| r["commit"] == c.as_str() && r["pipeline"] == p)
                .count();
            assert_eq!(n, 1, "pipeline {p} at {c}: {n} runs\n{runs:#?}");
        }
    }
    assert!(runs.iter().all(|r| status(r) == "success"), "{runs:#?}");
    daemon.wait_no_stage_processes(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_stops_the_stage_and_a_restart_finishes_the_run() {
    let repo = TestRepo::new();
    repo.pipeline(
        "durable.yaml",
        r#"name: durable
stages:
  graceful-3c1d:
    steps:
      - run: |
          echo "attempt $DEPLOYLITE_ATTEMPT"
          if [ "$DEPLOYLITE_ATTEMPT" = 1 ]; then sleep 30; fi
"#,
    );
    let c1 = repo.commit("durable");
    let mut daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("durable", &c1).await);
    daemon
        .wait_log_contains(rid, "graceful-3c1d", "attempt 1")
        .await;

    let stopped = Instant::now();
    let exit = daemon.stop().await;
    assert!(
        exit.success(),
        "SIGTERM should be a clean exit: {exit}\n{}",
        daemon.stderr()
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    let left = stage_processes(&daemon.data_dir, Some(rid));
    assert!(
        left.is_empty(),
        "a graceful stop must stop its stages: {left:?}"
    );

    daemon.restart().await;
    let run = daemon.wait_run_done(rid).await;
    assert_eq!(run.status, RunStatus::Success, "{run:#}");
    assert_eq!(run.stage("graceful-3c1d").attempt, 2);
    let log1 = daemon.log(rid, "graceful-3c1d", Some(1)).await;
    assert!(log1.contains("the daemon is shutting down"), "{log1}");
    let log2 = daemon.log(rid, "graceful-3c1d", Some(2)).await;
    assert!(
        log2.contains("previous attempt 1: failed (interrupted"),
        "{log2}"
    );
    assert_eq!(daemon.runs().await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 10. Branch filters

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_on_unwatched_branches_create_no_run() {
    // `cfg`: the daemon's config watches only main; the pipeline has no `on:`.
    let cfg = TestRepo::named("cfg");
    cfg.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  t:\n    steps: [\"echo $DEPLOYLITE_BRANCH\"]\n",
    );
    // `pipe`: the config watches every branch; the pipeline's own `on:` keeps only main.
    let pipe = TestRepo::named("pipe").watching(&[]);
    pipe.pipeline(
        "ci.yaml",
        "name: ci\non:\n  push:\n    branches: [main]\nstages:\n  t:\n    steps: [\"echo $DEPLOYLITE_BRANCH\"]\n",
    );
    let base_cfg = cfg.commit("base");
    let base_pipe = pipe.commit("base");
    let daemon = Daemon::start(&[&cfg, &pipe], "").await;
    daemon
        .wait_for_runs("the base runs", |runs| {
            runs.iter().any(|r| r["commit"] == base_cfg.as_str())
                && runs.iter().any(|r| r["commit"] == base_pipe.as_str())
        })
        .await;

    let mut feature_commits = Vec::new();
    let mut main_commits = Vec::new();
    for repo in [&cfg, &pipe] {
        repo.branch("feature");
        repo.checkout("feature");
        repo.write("f", "feature\n");
        feature_commits.push(repo.commit("on feature"));
        repo.checkout("main");
        repo.write("m", "main\n");
        main_commits.push(repo.commit("on main"));
    }
    // The poll that sees main's new head also sees feature's (created before it).
    let runs = daemon
        .wait_for_runs("runs for the new main commits, all final", |runs| {
            main_commits
                .iter()
                .all(|c| runs.iter().any(|r| r["commit"] == c.as_str()))
                && runs.iter().all(is_final)
        })
        .await;
    for c in &feature_commits {
        assert!(
            runs.iter().all(|r| r["commit"] != c.as_str()),
            "a commit on an unwatched branch created a run:\n{runs:#?}"
        );
    }
    assert_eq!(runs.len(), 4, "{runs:#?}");
    for r in &runs {
        assert_eq!(r["ref"], "refs/heads/main");
        assert_eq!(status(r), "success");
        assert!(daemon.log(id(r), "t", None).await.contains("out main"));
    }
}

// ---------------------------------------------------------------------------------------------
// 11. The API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_filters_runs_and_answers_400_and_404_where_due() {
    let alpha = TestRepo::named("alpha");
    alpha.pipeline(
        "one.yaml",
        "name: one\nstages:\n  s:\n    steps: [\"echo one\"]\n",
    );
    alpha.pipeline(
        "two.yaml",
        "name: two\nstages:\n  s:\n    steps: [\"exit 1\"]\n",
    );
    let beta = TestRepo::named("beta");
    beta.pipeline(
        "one.yaml",
        "name: one\nstages:\n  s:\n    steps: [\"echo one\"]\n",
    );
    alpha.commit("alpha");
    beta.commit("beta");
    let daemon = Daemon::start(&[&alpha, &beta], "").await;
    let all = daemon
        .wait_for_runs("three final runs", |runs| {
            runs.len() == 3 && runs.iter().all(is_final)
        })
        .await;

    let ids: Vec<i64> = all.iter().map(id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    for r in &all {
        for field in [
            "id",
            "repo",
            "pipeline",
            "commit",
            "ref",
            "trigger",
            "status",
            "pending_reason",
            "created_at",
            "started_at",
            "finished_at",
        ] {
            assert!(r.get(field).is_some(), "run without `{field}`: {r:#}");
        }
        assert!(
            r.get("stages").is_none(),
            "the list does not embed stages: {r:#}"
        );
    }

    let list = |q: &'static str| {
        let daemon = &daemon;
        async move {
            match daemon.get_json(&format!("/api/v1/runs?{q}")).await {
                Value::Array(v) => v,
                other => panic!("{other}"),
            }
        }
    };
    let alpha_runs = list("repo=alpha").await;
    assert_eq!(alpha_runs.len(), 2);
    assert!(alpha_runs.iter().all(|r| r["repo"] == "alpha"));
    let ones = list("pipeline=one").await;
    assert_eq!(ones.len(), 2);
    assert!(ones.iter().all(|r| r["pipeline"] == "one"));
    let failed = list("status=failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["pipeline"], "two");
    assert_eq!(failed[0]["repo"], "alpha");
    assert_eq!(list("repo=beta&pipeline=two").await.len(), 0);
    assert_eq!(
        list("repo=alpha&pipeline=one&status=success").await.len(),
        1
    );
    assert_eq!(list("status=running").await.len(), 0);
    let newest = list("limit=1").await;
    assert_eq!(newest.len(), 1);
    assert_eq!(id(&newest[0]), ids[0]);
    assert_eq!(
        list("repo=&status=").await.len(),
        3,
        "empty filters are no filters"
    );

    let (code, body) = daemon.get("/api/v1/runs?status=bogus").await;
    assert_eq!(code, 400, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        err["error"],
        "unknown status `bogus`; expected one of queued, running, success, failed, cancelled, skipped, error"
    );
    for q in ["limit=0", "limit=1001", "limit=-1"] {
        let (code, body) = daemon.get(&format!("/api/v1/runs?{q}")).await;
        assert_eq!(code, 400, "{q}: {body}");
    }

    // One run, its stages and logs.
    let two = &failed[0];
    let tid = id(two);
    let detail = daemon.run(tid).await;
    let s = find_stage(&detail, "s");
    for field in [
        "name",
        "status",
        "attempt",
        "needs",
        "pending_reason",
        "started_at",
        "finished_at",
        "exit_code",
    ] {
        assert!(s.get(field).is_some(), "stage without `{field}`: {s:#}");
    }
    assert_eq!(s["exit_code"], 1);
    let resp = daemon
        .http()
        .get(format!(
            "{}/api/v1/runs/{tid}/stages/s/log?attempt=1",
            daemon.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    assert!(resp.text().await.unwrap().contains("step 1 exited with 1"));

    let missing = [
        "/api/v1/runs/999999".to_string(),
        format!("/api/v1/runs/{tid}/stages/nope/log"),
        format!("/api/v1/runs/{tid}/stages/s/log?attempt=2"),
        format!("/api/v1/runs/{tid}/stages/s/log?attempt=0"),
        "/api/v1/runs/999999/stages/s/log".to_string(),
    ];
    for path in &missing {
        let (code, body) = daemon.get(path).await;
        assert_eq!(code, 404, "GET {path}: {body}");
        let err: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("GET {path}: not JSON: {body}"));
        assert!(err["error"].is_string(), "{body}");
    }
    let resp = daemon
        .http()
        .post(format!("{}/api/v1/runs/999999/cancel", daemon.url))
        .bearer_auth(daemon.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let resp = daemon
        .http()
        .post(format!("{}/api/v1/runs/{tid}/cancel", daemon.url))
        .bearer_auth(daemon.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409, "cancelling a finished run");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], format!("run #{tid} is already failed"));
    assert_eq!(
        status(&daemon.run(tid).await),
        "failed",
        "a refused cancel changes nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Stage environment and workspace

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_run_in_a_checkout_of_the_commit_with_the_documented_environment() {
    let repo = TestRepo::new();
    repo.pipeline(
        "env.yaml",
        r#"name: env
env:
  LEVEL: pipeline
  SHARED: pipeline
stages:
  show:
    env:
      SHARED: stage
      DEPLOYLITE_RUN_ID: "overridden?"
    steps:
      - run: |
          echo "run=$DEPLOYLITE_RUN_ID stage=$DEPLOYLITE_STAGE attempt=$DEPLOYLITE_ATTEMPT"
          echo "commit=$DEPLOYLITE_COMMIT ref=$DEPLOYLITE_REF branch=$DEPLOYLITE_BRANCH"
          echo "level=$LEVEL shared=$SHARED step=$STEP_VAR ci=$CI pwd=$PWD"
          cat payload.txt
        env:
          STEP_VAR: step
"#,
    );
    repo.write("payload.txt", "payload at commit 1\n");
    let c1 = repo.commit("env");
    // Uncommitted changes are not part of the commit.
    repo.write("payload.txt", "dirty working copy\n");
    let daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("env", &c1).await);
    let run = daemon.wait_run_done(rid).await;
    assert_eq!(run.status, RunStatus::Success, "{run:#}");
    let log = daemon.log(rid, "show", None).await;
    let workspace = daemon.data_dir.join("workspaces").join(rid.to_string());
    for needle in [
        format!("run={rid} stage=show attempt=1"),
        format!("commit={c1} ref=refs/heads/main branch=main"),
        format!(
            "level=pipeline shared=stage step=step ci=true pwd={}",
            workspace.display()
        ),
        "payload at commit 1".to_string(),
    ] {
        assert!(log.contains(&needle), "missing {needle:?} in\n{log}");
    }
    assert!(!log.contains("dirty working copy"), "{log}");
    assert!(daemon
        .data_dir
        .join("logs")
        .join(rid.to_string())
        .join("show@1.log")
        .is_file());
}

/// Regression: a step's `env:` once overrode DeployLite's own variables (applied after the job
/// env), so a step could pose as another run/stage/attempt and misdirect the crash-recovery
/// orphan killer, which finds stage processes by these variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_env_cannot_override_deploylite_variables() {
    let repo = TestRepo::new();
    repo.pipeline(
        "env.yaml",
        r#"name: env
stages:
  show:
    steps:
      - run: echo "run=$DEPLOYLITE_RUN_ID attempt=$DEPLOYLITE_ATTEMPT"
        env:
          DEPLOYLITE_RUN_ID: "999"
          DEPLOYLITE_ATTEMPT: "42"
"#,
    );
    let c1 = repo.commit("env");
    let daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("env", &c1).await);
    assert_eq!(daemon.wait_run_done(rid).await.status, RunStatus::Success);
    let log = daemon.log(rid, "show", None).await;
    assert!(
        log.contains(&format!("run={rid} attempt=1")),
        "a step overrode DeployLite's variables:\n{log}"
    );
}

/// The daemon's own `DEPLOYLITE_*` variables are its configuration, secrets included (forge
/// tokens, webhook secrets, the database URL): a stage must not inherit them. The harness starts
/// the daemon with `DEPLOYLITE_LOG` set, and a real deployment would add
/// `DEPLOYLITE_FORGES__GITHUB__TOKEN` the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_do_not_inherit_the_daemons_configuration_or_secrets() {
    let repo = TestRepo::new();
    repo.pipeline(
        "env.yaml",
        "name: env\nstages:\n  show:\n    steps: [ { run: 'env | sort' } ]\n",
    );
    let c1 = repo.commit("env");
    let daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("env", &c1).await);
    assert_eq!(daemon.wait_run_done(rid).await.status, RunStatus::Success);
    let log = daemon.log(rid, "show", None).await;
    assert!(
        log.contains(&format!("DEPLOYLITE_RUN_ID={rid}")),
        "the stage's own variables are missing:\n{log}"
    );
    assert!(
        log.contains("PATH="),
        "the rest of the environment is inherited:\n{log}"
    );
    assert!(
        !log.contains("DEPLOYLITE_LOG="),
        "the daemon's configuration leaked into the stage:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Isolation between daemons on one host

/// Regression: crash recovery once killed "orphans" by matching only DEPLOYLITE_RUN_ID /
/// DEPLOYLITE_STAGE / DEPLOYLITE_ATTEMPT in /proc/*/environ, not the daemon's data dir, so a
/// second daemon on the same host whose run had the same id, stage name and attempt lost its
/// stage when the first daemon restarted after a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_does_not_kill_stages_of_another_daemon_on_the_same_host() {
    let pipeline = r#"name: shared
stages:
  shared-stage-9e2b:
    steps:
      - run: echo "started"; sleep 3; echo "finished"
"#;
    let victim_repo = TestRepo::new();
    victim_repo.pipeline("shared.yaml", pipeline);
    let vc = victim_repo.commit("victim");
    let crash_repo = TestRepo::new();
    crash_repo.pipeline("shared.yaml", pipeline);
    let cc = crash_repo.commit("crasher");

    let victim = Daemon::start(&[&victim_repo], "").await;
    let mut crasher = Daemon::start(&[&crash_repo], "").await;
    let vid = id(&victim.wait_for_commit_run("shared", &vc).await);
    let cid = id(&crasher.wait_for_commit_run("shared", &cc).await);
    assert_eq!((vid, cid), (1, 1), "both daemons number their first run 1");
    victim
        .wait_log_contains(vid, "shared-stage-9e2b", "started")
        .await;
    crasher
        .wait_log_contains(cid, "shared-stage-9e2b", "started")
        .await;

    crasher.kill9();
    crasher.restart().await;

    let run = victim.wait_run_done(vid).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "the other daemon's crash recovery killed this daemon's stage:\n{:#}\n{}",
        run,
        victim.log(vid, "shared-stage-9e2b", None).await
    );
    assert_eq!(crasher.wait_run_done(cid).await.status, RunStatus::Success);
}

// ---------------------------------------------------------------------------------------------
// Workspace preparation

/// Regression (a race, seen most often under load): the scheduler once prepared a run's
/// workspace twice. A tick that read `workspace_ready = 0` before the first preparation finished
/// started a second one, which `remove_dir_all`ed the directory ("half-written by a daemon that
/// died") while a stage dispatched by the next tick ran in it. The run's id stays in the
/// scheduler's `preparing` set until the tick that records the workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_starts_in_a_complete_workspace() {
    let repo = TestRepo::new();
    for i in 0..40 {
        repo.write(&format!("payload/file-{i:03}.txt"), &format!("{i}\n"));
    }
    const PIPELINES: usize = 8;
    for p in 0..PIPELINES {
        repo.pipeline(
            &format!("p{p}.yaml"),
            &format!("name: p{p}\nstages:\n  check:\n    steps: [\"test -f payload/file-039.txt && echo complete\"]\n"),
        );
    }
    let mut commits = vec![repo.commit("payload")];
    let daemon = Daemon::start(&[&repo], "max_parallel_stages: 16\n").await;
    for round in 1..3 {
        let last = commits.last().unwrap().clone();
        daemon
            .wait_for_runs("the runs of the last commit", |runs| {
                runs.iter().filter(|r| r["commit"] == last.as_str()).count() == PIPELINES
            })
            .await;
        repo.write("payload/file-000.txt", &format!("round {round}\n"));
        commits.push(repo.commit(&format!("round {round}")));
    }
    let last = commits.last().unwrap().clone();
    let runs = daemon
        .wait_for_runs("every run final", |runs| {
            runs.iter().filter(|r| r["commit"] == last.as_str()).count() == PIPELINES
                && runs.iter().all(is_final)
        })
        .await;
    let mut broken = Vec::new();
    for r in &runs {
        if status(r) != "success" {
            let rid = id(r);
            broken.push(format!(
                "run #{rid} {}: {}\n{}",
                r["pipeline"],
                status(r),
                daemon.log(rid, "check", None).await
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {} runs did not succeed:\n{}",
        broken.len(),
        runs.len(),
        broken.join("\n")
    );
}

/// A watched branch deleted in the repository (noticed by polling, no webhook) cancels its
/// queued runs, and re-creating it at the same commit counts as new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_branch_cancels_its_queued_runs_and_can_come_back() {
    let repo = TestRepo::new().watching(&[]);
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  hold:\n    steps: [\"sleep 3\"]\n",
    );
    let main = repo.commit("base");
    // One slot: while main's run holds it, the feature run stays queued.
    let daemon = Daemon::start(&[&repo], "max_parallel_stages: 1\n").await;
    let main_run = daemon.wait_for_commit_run("ci", &main).await;
    daemon.wait_stage(id(&main_run), "hold", "running").await;

    repo.branch("feature");
    repo.checkout("feature");
    repo.write("feature.txt", "feature\n");
    let feature = repo.commit("on feature");
    repo.checkout("main");
    let feature_run = daemon
        .wait_for_runs("the feature run", |runs| runs.len() == 2)
        .await;
    let feature_run = feature_run
        .iter()
        .find(|r| r["ref"] == "refs/heads/feature")
        .expect("feature run")
        .clone();
    // Wait until the feature run's stage says it waits for capacity (not merely "not yet").
    daemon
        .wait_run(id(&feature_run), "its stage waiting for capacity", |run| {
            run.stage("hold")
                .pending_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("capacity"))
        })
        .await;

    repo.git(&["branch", "-D", "feature"]);
    let cancelled = daemon.wait_run_done(id(&feature_run)).await;
    assert_eq!(
        cancelled.status,
        RunStatus::Cancelled,
        "{}",
        daemon.dump().await
    );
    assert_eq!(
        cancelled.pending_reason.as_deref(),
        Some("cancelled: the ref was deleted")
    );
    let main_done = daemon.wait_run_done(id(&main_run)).await;
    assert_eq!(
        main_done.status,
        RunStatus::Success,
        "other refs are untouched"
    );

    // The same commit under the same name again is a new ref: it is reconciled, but the run of
    // that (pipeline, commit, trigger) exists already, so no duplicate is created.
    repo.git(&["branch", "feature", &feature]);
    daemon.wait_fresh_poll("app").await;
    assert_eq!(daemon.runs().await.len(), 2, "run identity still holds");
}
