//! One daemon per data dir (and per PostgreSQL database): a second `deploylite serve` refuses
//! to start, naming the first, and leaves the first one's running stages alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{cli, id, pid_alive, run_cmd, stage_processes, status, Daemon, RunStatus, TestRepo};

/// A pipeline whose only stage runs until `go` exists.
fn held_until(repo: &TestRepo, go: &Path) {
    repo.pipeline(
        "held.yaml",
        &format!(
            "name: held\nstages:\n  work:\n    steps: [{{ run: 'echo waiting; while [ ! -e {} ]; do sleep 0.05; done; echo released' }}]\n",
            go.display()
        ),
    );
    repo.commit("held");
}

/// Starts the held run on `daemon` and waits for its stage to run; (run id, the PIDs of the
/// stage's shell, which lives as long as the stage; its `sleep`s come and go).
async fn running_stage(daemon: &Daemon) -> (i64, Vec<i32>) {
    let run = daemon
        .wait_for_run("the held run", |r| r["pipeline"] == "held")
        .await;
    let run_id = id(&run);
    daemon
        .wait_log_contains(run_id, "work", "out waiting")
        .await;
    let pids: Vec<i32> = stage_processes(&daemon.data_dir, Some(run_id))
        .iter()
        .filter(|p| p.cmdline.contains("while"))
        .map(|p| p.pid)
        .collect();
    assert!(!pids.is_empty(), "the stage runs\n{}", daemon.dump().await);
    (run_id, pids)
}

/// The first daemon's stage was neither killed nor run again: it finishes as attempt 1.
async fn finishes_untouched(daemon: &Daemon, run_id: i64, pids: &[i32], go: &Path) {
    assert!(
        pids.iter().all(|pid| pid_alive(*pid)),
        "the stage's processes survive\n{}",
        daemon.dump().await
    );
    let stage = daemon.stage(run_id, "work").await;
    assert_eq!(
        (status(&stage), stage["attempt"].as_i64()),
        ("running", Some(1))
    );
    std::fs::write(go, "").expect("release the stage");
    let run = daemon.wait_run_done(run_id).await;
    assert_eq!(run.status, RunStatus::Success, "{}", daemon.dump().await);
    assert_eq!(run.stage("work").attempt, 1);
    let log = daemon.log(run_id, "work", Some(1)).await;
    assert_eq!(log.matches("out waiting").count(), 1, "{log}");
    assert!(log.contains("out released"), "{log}");
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_data_dir_refuses_to_start_and_touches_nothing() {
    let go_dir = tempfile::tempdir().expect("tempdir");
    let go = go_dir.path().join("go");
    let repo = TestRepo::new();
    held_until(&repo, &go);
    let daemon = Daemon::start(&[&repo], "").await;
    let (run_id, pids) = running_stage(&daemon).await;

    // The same config (so the same data dir) on another port: only the lock stops it.
    let mut second = cli();
    second
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&daemon.config_path);
    let (code, _, stderr) = run_cmd(second);
    assert_eq!(code, 2, "{stderr}");
    let first_pid = daemon.pid().expect("the first daemon runs");
    assert_eq!(
        last_line(&stderr),
        format!(
            "error: another deploylite serve (PID {first_pid}) is using the data dir {}: it holds \
             the lock {}. Stop it first, or give this daemon another data_dir",
            daemon.data_dir.display(),
            daemon.data_dir.join("daemon.lock").display()
        ),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(daemon.data_dir.join("daemon.lock")).expect("lock file"),
        format!("{first_pid}\n")
    );
    finishes_untouched(&daemon, run_id, &pids, &go).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_postgres_database_refuses_to_start() {
    let Some(database_url) = common::postgres_database().await else {
        return;
    };
    let go_dir = tempfile::tempdir().expect("tempdir");
    let go = go_dir.path().join("go");
    let repo = TestRepo::new();
    held_until(&repo, &go);
    let daemon = Daemon::start(&[&repo], &format!("database_url: {database_url}\n")).await;
    let (run_id, pids) = running_stage(&daemon).await;

    // Another machine, as far as the data dir goes: its own data dir, the same database.
    let other_data = tempfile::tempdir().expect("tempdir");
    let mut second = cli();
    second
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&daemon.config_path)
        .arg("--data-dir")
        .arg(other_data.path());
    let (code, _, stderr) = run_cmd(second);
    assert_eq!(code, 2, "{stderr}");
    let first_pid = daemon.pid().expect("the first daemon runs");
    let message = last_line(&stderr);
    assert!(
        message.starts_with(&format!(
            "error: another deploylite serve holds the database {database_url} (deploylite serve pid {first_pid} on "
        )) && message.contains(", connected from 127.0.0.1, backend PID ")
            && message.ends_with(
                "); one daemon per database until replicas are supported: stop it first"
            ),
        "{stderr}"
    );
    finishes_untouched(&daemon, run_id, &pids, &go).await;
}
