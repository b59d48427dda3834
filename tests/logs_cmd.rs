//! `deploylite logs`: a run's logs in the order its stages run, and following a live stage
//! until its attempt's closing line, with the real binary against a running daemon.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Instant;

use common::*;

/// The log without its timestamps: `out hello`, `--- attempt 1 ended: success`.
fn untimed(log: &str) -> String {
    log.lines()
        .map(|l| match l.split_once(' ') {
            Some((time, rest)) if time.ends_with('Z') => rest.to_string(),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect()
}

/// A directory a stage running as `nobody` can look into.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `deploylite logs <args>` against `daemon`, running in the background, its stdout in `out`.
fn spawn_logs(daemon: &Daemon, args: &[&str], out: &Path) -> Child {
    let mut cmd = cli();
    cmd.arg("logs")
        .args(args)
        .arg("--server")
        .arg(&daemon.url)
        .arg("--token-file")
        .arg(daemon.admin_token_path())
        .stdout(std::fs::File::create(out).expect("stdout file"))
        .stderr(Stdio::piped());
    cmd.spawn().expect("deploylite logs")
}

fn wait_for_file_to_contain(path: &Path, needle: &str, child: &mut Child) {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    if let Err(unprinted) = wait::printed(child, needle, DEADLINE, read) {
        panic!("`deploylite logs` did not print {needle:?}: {unprinted}");
    }
}

fn wait_exit(child: &mut Child) -> i32 {
    match wait::child_exit(child, DEADLINE) {
        Some(status) => status.code().unwrap_or(-1),
        None => {
            let _ = child.kill();
            panic!("`deploylite logs -f` did not exit after the attempt ended");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_a_running_stage_to_its_closing_line_and_exits_with_its_outcome() {
    let marks = shared_dir();
    let go = marks.path().join("go");
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        &format!(
            "name: ci\nstages:\n  wait:\n    steps:\n      - run: |\n          echo started\n          while [ ! -e {go} ]; do sleep 0.02; done\n          echo last line\n  fail:\n    needs: [wait]\n    steps: [\"echo failing; exit 4\"]\n",
            go = go.display()
        ),
    );
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("ci", &commit).await);
    daemon.wait_stage(rid, "wait", "running").await;

    let out_dir = tempfile::tempdir().expect("tempdir");
    let stage_out = out_dir.path().join("stage");
    let run_out = out_dir.path().join("run");
    let mut stage = spawn_logs(&daemon, &[&rid.to_string(), "wait", "-f"], &stage_out);
    let mut run = spawn_logs(&daemon, &[&rid.to_string(), "--follow"], &run_out);
    wait_for_file_to_contain(&stage_out, " out started\n", &mut stage);
    wait_for_file_to_contain(&run_out, " out started\n", &mut run);
    assert!(
        stage.try_wait().expect("try_wait").is_none(),
        "the follower waits while the stage runs"
    );
    std::fs::write(&go, "").expect("go");

    assert_eq!(wait_exit(&mut stage), 0, "the stage succeeded");
    let c = &commit[..12];
    let wait_log = format!(
        "--- run #{rid} app/ci stage `wait` attempt 1 on local (refs/heads/main {c})\n\
         --- step 1: echo started\n\
         out started\n\
         out last line\n\
         --- attempt 1 ended: success\n"
    );
    let printed = std::fs::read_to_string(&stage_out).expect("stdout");
    assert_eq!(untimed(&printed), wait_log);

    assert_eq!(wait_exit(&mut run), 1, "the run failed");
    let fail_log = format!(
        "--- run #{rid} app/ci stage `fail` attempt 1 on local (refs/heads/main {c})\n\
         --- step 1: echo failing; exit 4\n\
         out failing\n\
         --- step 1 exited with 4\n\
         --- attempt 1 ended: failed (step 1 exited with 4)\n"
    );
    let whole = format!(
        "==> stage wait, attempt 1 <==\n{wait_log}\n==> stage fail, attempt 1 <==\n{fail_log}"
    );
    let printed = std::fs::read_to_string(&run_out).expect("stdout");
    assert_eq!(untimed(&printed), whole);

    // Without -f: the same, at once; one stage's log alone has no header.
    let (code, out, err) = daemon.cli(&["logs", &rid.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(untimed(&out), whole);
    let (code, out, err) = daemon.cli(&["logs", &rid.to_string(), "fail"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(untimed(&out), fail_log);
    // A reader that goes away early (`| head`) ends the command quietly, not with a panic.
    for command in ["logs", "status"] {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c")
            .arg(format!(
                "set -o pipefail; '{BIN}' {command} {rid} --server {} --token-file '{}' | true",
                daemon.url,
                daemon.admin_token_path().display()
            ))
            .env("RUST_BACKTRACE", "0");
        let (code, out, err) = run_cmd(cmd);
        assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""), "{command}");
    }
    let (code, _, err) = daemon.cli(&["logs", &rid.to_string(), "nope"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        format!("error: run #{rid} has no stage `nope`; its stages: wait, fail\n")
    );
    let (code, _, err) = daemon.cli(&["logs", &rid.to_string(), "--attempt", "1"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        format!("error: --attempt needs a STAGE: run #{rid} has 2 stages (wait, fail)\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_ends_with_a_closing_line_retries_and_cancellations_too() {
    let marks = shared_dir();
    let go = marks.path().join("go");
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        &format!(
            "name: ci\nstages:\n  flaky:\n    retry: {{ max: 1, backoff: 10ms, exit_codes: [75] }}\n    steps:\n      - run: |\n          echo \"attempt $DEPLOYLITE_ATTEMPT\"\n          while [ ! -e {go} ]; do sleep 0.02; done\n          test \"$DEPLOYLITE_ATTEMPT\" = 2 || exit 75\n  hang:\n    needs: [flaky]\n    steps:\n      - run: echo hanging; while true; do sleep 0.02; done\n",
            go = go.display()
        ),
    );
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("ci", &commit).await);

    // Following a stage that will be retried goes on from attempt to attempt.
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("flaky");
    let mut follow = spawn_logs(&daemon, &[&rid.to_string(), "flaky", "-f"], &out);
    wait_for_file_to_contain(&out, " out attempt 1\n", &mut follow);
    std::fs::write(&go, "").expect("go");
    assert_eq!(wait_exit(&mut follow), 0, "the stage succeeded at last");
    let first = daemon.log(rid, "flaky", Some(1)).await;
    let second = daemon.log(rid, "flaky", Some(2)).await;
    let printed = std::fs::read_to_string(&out).expect("stdout");
    assert_eq!(printed, format!("{first}{second}"));
    let last = |log: &str| untimed(log).lines().last().unwrap_or_default().to_string();
    assert!(
        last(&first)
            .starts_with("--- attempt 1 ended: failed (step 1 exited with 75); retry 1 of 1 in "),
        "{first}"
    );
    assert_eq!(last(&second), "--- attempt 2 ended: success", "{second}");

    // One attempt alone: its outcome is the exit code.
    let (code, out, err) = daemon.cli(&["logs", &rid.to_string(), "flaky", "-f", "--attempt", "1"]);
    assert_eq!((code, out), (1, first), "{err}");

    daemon
        .wait_log_contains(rid, "hang", " out hanging\n")
        .await;
    let (code, body) = daemon
        .post_as_admin(&format!("/api/v1/runs/{rid}/cancel"))
        .await;
    assert_eq!(code, 202, "{body}");
    let out = out_dir.path().join("hang");
    let mut follow = spawn_logs(&daemon, &[&rid.to_string(), "hang", "-f"], &out);
    assert_eq!(
        wait_exit(&mut follow),
        1,
        "a cancelled stage did not succeed"
    );
    let hang = daemon.log(rid, "hang", None).await;
    assert_eq!(last(&hang), "--- attempt 1 ended: cancelled", "{hang}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_attempts_log_ends_with_its_closing_line_after_the_runners_last_chunk() {
    const TOKEN: &str = "a-registration-token-for-tests";
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  remote:\n    steps: [\"echo remote\"]\n",
    );
    let commit = repo.commit("ci");
    let daemon = Daemon::start(
        &[&repo],
        &format!("local_runner: {{ enabled: false }}\nrunners: {{ registration_tokens: [\"{TOKEN}\"] }}\n"),
    )
    .await;
    let rid = id(&daemon.wait_for_commit_run("ci", &commit).await);
    let post = |path: String, credential: Option<String>, body: reqwest::Body| {
        let mut request = daemon
            .http()
            .post(format!("{}{path}", daemon.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(c) = credential {
            request = request.bearer_auth(c);
        }
        async move {
            let response = request.send().await.expect("the daemon answers");
            let code = response.status().as_u16();
            (code, response.text().await.unwrap_or_default())
        }
    };
    let (code, body) = post(
        "/api/v1/runners/register".into(),
        None,
        serde_json::json!({
            "token": TOKEN, "name": "far", "labels": ["linux"], "capacity": 1, "executor": "local"
        })
        .to_string()
        .into(),
    )
    .await;
    assert!(code < 300, "{code} {body}");
    let credential = serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["credential"]
        .as_str()
        .expect("a credential")
        .to_string();
    let started = Instant::now();
    let lease = loop {
        let (code, body) = post(
            "/api/v1/runner/poll".into(),
            Some(credential.clone()),
            r#"{"labels": ["linux"], "capacity": 1, "free": 1}"#.into(),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if let Some(lease) = answer["leases"].as_array().and_then(|l| l.first()) {
            break lease.clone();
        }
        assert!(started.elapsed() < DEADLINE, "no lease came");
    };
    assert_eq!(lease["run_id"], rid);
    let base = format!("/api/v1/runner/leases/{rid}/remote/1");
    let chunk = "2026-12-07T10:00:00.000Z --- run on far\n2026-12-07T10:00:00.001Z out remote\n";
    let (code, body) = post(
        format!("{base}/log"),
        Some(credential.clone()),
        chunk.into(),
    )
    .await;
    assert!(code < 300, "{code} {body}");
    let (code, body) = post(
        format!("{base}/complete"),
        Some(credential.clone()),
        r#"{"outcome": "success"}"#.into(),
    )
    .await;
    assert!(code < 300, "{code} {body}");
    daemon.wait_run_done(rid).await;
    let log = daemon.log(rid, "remote", None).await;
    assert_eq!(
        untimed(&log),
        "--- run on far\nout remote\n--- attempt 1 ended: success\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_a_restart_interrupts_is_closed_once_stopped_or_killed() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  hang:\n    steps:\n      - run: echo \"attempt $DEPLOYLITE_ATTEMPT\"; while true; do sleep 0.02; done\n",
    );
    let commit = repo.commit("ci");
    let mut daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("ci", &commit).await);
    let closings = |log: &str| -> Vec<String> {
        untimed(log)
            .lines()
            .filter(|l| l.starts_with("--- attempt ") && l.contains(" ended: "))
            .map(str::to_string)
            .collect()
    };

    // Stopped: the daemon closes the attempt's log itself, and the restart adds nothing.
    daemon
        .wait_log_contains(rid, "hang", " out attempt 1\n")
        .await;
    daemon.stop().await;
    daemon.restart().await;
    daemon
        .wait_log_contains(rid, "hang", " out attempt 2\n")
        .await;
    let first = daemon.log(rid, "hang", Some(1)).await;
    assert_eq!(
        closings(&first),
        ["--- attempt 1 ended: interrupted (the daemon is shutting down; the stage runs again after it restarts)"],
        "{first}"
    );
    assert!(untimed(&first).ends_with(" ended: interrupted (the daemon is shutting down; the stage runs again after it restarts)\n"));

    // Killed: the next start closes it.
    daemon.kill9();
    daemon.restart().await;
    daemon
        .wait_log_contains(rid, "hang", " out attempt 3\n")
        .await;
    let second = daemon.log(rid, "hang", Some(2)).await;
    assert_eq!(
        untimed(&second).lines().last(),
        Some("--- attempt 2 ended: interrupted (the daemon stopped while it ran; the stage runs again)"),
        "{second}"
    );
    assert_eq!(closings(&second).len(), 1, "{second}");
}
