//! Remote runners as separate OS processes on loopback: the real daemon and real
//! `deploylite runner` agents (local executor), against real git repositories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    id, pid_alive, processes_where, wait, Daemon, Proc, RunStatus, StageStatus, TestRepo,
};
use serde_json::Value;

const TOKEN: &str = "test-registration-token-0123";

/// Remote runners only (the daemon's own runner is off), short leases so that a dead runner's
/// stage moves on quickly.
fn server_config() -> String {
    format!("local_runner: {{ enabled: false }}\nrunners: {{ registration_tokens: [\"{TOKEN}\"], lease_ttl: 2s }}\n")
}

struct Runner {
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    token: String,
}

impl Runner {
    fn start(daemon: &Daemon, name: &str, labels: &str, capacity: usize) -> Runner {
        Self::start_with_token(daemon, name, labels, capacity, TOKEN)
    }

    fn start_with_token(
        daemon: &Daemon,
        name: &str,
        labels: &str,
        capacity: usize,
        token: &str,
    ) -> Runner {
        let dir = tempfile::Builder::new()
            .prefix("deploylite-runner-")
            .tempdir()
            .expect("tempdir");
        let args = [
            "runner",
            "--server",
            &daemon.url,
            "--name",
            name,
            "--labels",
            labels,
            "--capacity",
            &capacity.to_string(),
            "--grace",
            "1s",
        ]
        .map(str::to_string)
        .to_vec();
        let mut runner = Runner {
            child: None,
            dir,
            args,
            token: token.to_string(),
        };
        runner.spawn();
        runner
    }

    /// Starts the agent (again) with this runner's name, state dir and work dir. Its stderr is
    /// appended to, so that it keeps every incarnation's log.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the runner is still running");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("runner.stderr"))
            .expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_deploylite"))
            .args(&self.args)
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--work-dir")
            .arg(self.work_dir())
            .env("DEPLOYLITE_RUNNER_TOKEN", &self.token)
            .env("DEPLOYLITE_LOG", "info")
            .env_remove("DEPLOYLITE_SERVER")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the runner");
        self.child = Some(child);
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runner.stderr")).unwrap_or_default()
    }

    fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The credential the agent stored when it registered as `name` (the server lists the
    /// runner as soon as it registered, a moment before the agent has written the file).
    fn credential(&self, name: &str) -> String {
        let path = self
            .dir
            .path()
            .join("state")
            .join(format!("{name}.credential"));
        let written = wait::try_until_blocking(Duration::from_secs(15), || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            (text.trim().len() == "dlr_".len() + 64).then(|| text.trim().to_string())
        });
        written.unwrap_or_else(|timed_out| {
            panic!(
                "{} was not written ({timed_out}): {}",
                path.display(),
                self.stderr()
            )
        })
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself; its exit status.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let status = wait::child_exit(self.child.as_mut()?, limit)?;
        self.child = None;
        Some(status)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill9();
        kill_stage_processes_under(&self.work_dir());
    }
}

/// Stage processes of a runner killed with -9 survive it (their own process group): the test
/// cleans them up.
fn kill_stage_processes_under(dir: &Path) {
    let prefix = dir.display().to_string();
    for p in processes_where(|env| {
        env.get("DEPLOYLITE_WORKSPACE")
            .is_some_and(|w| w.starts_with(&prefix))
    }) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn wait_until(what: &str, daemon: &Daemon, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let check = &check;
    daemon
        .wait_for(
            format_args!("{what} (GET /api/v1/runners)"),
            || async move {
                let runners: Vec<Value> =
                    serde_json::from_str(&daemon.get("/api/v1/runners").await.1)
                        .unwrap_or_default();
                check(&runners).then_some(runners)
            },
        )
        .await
}

fn online(runners: &[Value], names: &[&str]) -> bool {
    names.iter().all(|n| {
        runners
            .iter()
            .any(|r| r["name"] == *n && r["status"] == "online")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_go_to_runners_by_label_within_each_runners_capacity() {
    let repo = TestRepo::new();
    let mut yaml = String::from("name: routed\nstages:\n");
    for i in 0..3 {
        yaml += &format!("  x{i}:\n    runs_on: [x]\n    steps: [{{ run: 'echo ran on $DEPLOYLITE_RUNNER; sleep 0.4' }}]\n");
        yaml += &format!("  y{i}:\n    runs_on: [y]\n    steps: [{{ run: 'echo ran on $DEPLOYLITE_RUNNER; sleep 0.4' }}]\n");
    }
    repo.pipeline("routed.yaml", &yaml);
    let daemon = Daemon::start(&[], &server_config()).await;
    let _a = Runner::start(&daemon, "runner-a", "x,linux", 1);
    let _b = Runner::start(&daemon, "runner-b", "y,linux", 2);
    wait_until("both runners online", &daemon, |r| {
        online(r, &["runner-a", "runner-b"])
    })
    .await;
    drop(daemon);

    // The repository is watched from the second start on, so both runners are online first.
    let daemon = Daemon::start(&[&repo], &server_config()).await;
    let _a = Runner::start(&daemon, "runner-a", "x,linux", 1);
    let _b = Runner::start(&daemon, "runner-b", "y,linux", 2);
    repo.commit("routed");
    let run = daemon
        .wait_for_runs("the run", |runs| !runs.is_empty())
        .await;
    let run = daemon.wait_run_done(id(&run[0])).await;
    assert_eq!(run.status, RunStatus::Success, "{}", daemon.dump().await);

    let mut intervals: Vec<(String, i64, i64)> = Vec::new();
    for i in 0..3 {
        for (stage, runner) in [(format!("x{i}"), "runner-a"), (format!("y{i}"), "runner-b")] {
            let log = daemon.log(run.id, &stage, None).await;
            assert!(
                log.contains(&format!("ran on {runner}")),
                "{stage} should run on {runner}:\n{log}"
            );
            let s = run.stage(&stage);
            intervals.push((runner.to_string(), s.started_ms(), s.finished_ms()));
        }
    }
    let most_at_once = |runner: &str| {
        let mine: Vec<&(String, i64, i64)> =
            intervals.iter().filter(|(r, _, _)| r == runner).collect();
        mine.iter()
            .map(|(_, start, _)| {
                mine.iter()
                    .filter(|(_, s, e)| s <= start && start < e)
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    assert_eq!(
        most_at_once("runner-a"),
        1,
        "capacity 1 means one at a time: {intervals:?}"
    );
    assert!(most_at_once("runner-b") <= 2, "capacity 2: {intervals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_mid_stage_loses_its_lease_and_the_stage_completes_on_the_other() {
    let repo = TestRepo::new();
    repo.pipeline(
        "slow.yaml",
        "name: slow\nstages:\n  work:\n    runs_on: [shared]\n    steps: [{ run: 'echo attempt $DEPLOYLITE_ATTEMPT on $DEPLOYLITE_RUNNER; sleep 2; echo done' }]\n",
    );
    let daemon = Daemon::start(&[], &server_config()).await;
    let mut one = Runner::start(&daemon, "runner-1", "shared", 1);
    wait_until("runner-1 online", &daemon, |r| online(r, &["runner-1"])).await;
    drop(daemon);
    let daemon = Daemon::start(&[&repo], &server_config()).await;
    let mut one = {
        one.kill9();
        Runner::start(&daemon, "runner-1", "shared", 1)
    };
    repo.commit("slow");
    let run = daemon
        .wait_for_runs("the run", |runs| !runs.is_empty())
        .await;
    let run_id = id(&run[0]);
    daemon
        .wait_log_contains(run_id, "work", "attempt 1 on runner-1")
        .await;
    one.kill9();
    let _two = Runner::start(&daemon, "runner-2", "shared", 1);

    let run = daemon.wait_run_done(run_id).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}\nrunner-1:\n{}",
        daemon.dump().await,
        one.stderr()
    );
    let work = run.stage("work");
    assert_eq!(work.attempt, 2, "the stage ran again as a new attempt");
    let log = daemon.log(run_id, "work", Some(2)).await;
    assert!(log.contains("attempt 2 on runner-2"), "{log}");
    assert!(
        log.contains("previous attempt 1: failed (interrupted: lease expired, runner `runner-1`"),
        "{log}"
    );
    assert!(log.contains("out done"), "{log}");
    let runs = daemon.runs().await;
    assert_eq!(runs.len(), 1, "no duplicate run");
}

/// Text without terminal colour codes (the log's field names may be styled).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences end with a letter (`m` for styles).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `sleep 300` of a stage running under `work_dir`, other than `except`, once it exists.
async fn sleeping_stage(work_dir: &Path, except: Option<i32>) -> Proc {
    let prefix = work_dir.display().to_string();
    let prefix = &prefix;
    wait::until(
        format_args!("a stage's `sleep 300` under {prefix}"),
        || async move {
            processes_where(|env| {
                env.get("DEPLOYLITE_WORKSPACE")
                    .is_some_and(|w| w.starts_with(prefix))
            })
            .into_iter()
            .find(|p| p.cmdline == "sleep 300" && Some(p.pid) != except)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_kills_the_stage_processes_its_killed_predecessor_left() {
    let repo = TestRepo::new();
    repo.pipeline(
        "hold.yaml",
        "name: hold\nstages:\n  hold:\n    runs_on: [sweep]\n    steps: [{ run: 'echo attempt $DEPLOYLITE_ATTEMPT started; sleep 300' }]\n",
    );
    repo.commit("hold");
    let daemon = Daemon::start(&[&repo], &server_config()).await;
    let mut runner = Runner::start(&daemon, "runner-s", "sweep", 1);
    let run = daemon
        .wait_for_runs("the run", |runs| !runs.is_empty())
        .await;
    let run_id = id(&run[0]);
    daemon
        .wait_log_contains(run_id, "hold", "attempt 1 started")
        .await;
    let orphan = sleeping_stage(&runner.work_dir(), None).await;
    assert_eq!(orphan.env["DEPLOYLITE_RUNNER"], "runner-s");

    runner.kill9();
    // The stage runs in a process group of its own: the runner's death does not reach it.
    assert!(
        pid_alive(orphan.pid),
        "the stage's sleep died with its runner: nothing left to test"
    );

    // Wait for the server to give up on the lost lease first: the stage is queued again, for
    // this runner, when the new incarnation starts. (A runner that is mid-poll when its old
    // lease lapses gets no work until that poll ends.) So the new attempt is there to be taken
    // the moment the runner asks, and the sweep must come before that.
    daemon
        .wait_run(run_id, "the lost lease lapsed", |run| {
            run.stage("hold").status == StageStatus::Queued
        })
        .await;
    runner.spawn();
    assert!(
        wait::pid_exit_async(orphan.pid, Duration::from_secs(10)).await,
        "the restarted runner left its predecessor's stage running (pid {} `{}`):\n{}",
        orphan.pid,
        orphan.cmdline,
        runner.stderr()
    );
    // The runner logs the sweep just after the kill: wait for the line rather than race it.
    let swept = wait::try_until(Duration::from_secs(10), || async {
        runner
            .stderr()
            .contains("previous run of this runner left behind")
            .then_some(())
    })
    .await;
    assert!(swept.is_ok(), "no sweep logged:\n{}", runner.stderr());
    let killed: usize = strip_ansi(&runner.stderr())
        .lines()
        .find(|l| l.contains("previous run of this runner left behind"))
        .and_then(|l| {
            l.split_once("killed=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the runner logs how many it killed:\n{}", runner.stderr()));
    assert!(killed >= 1, "{}", runner.stderr());

    // The sweep came before any new work: the lost stage runs again on the restarted runner,
    // and that attempt's processes are left alone.
    daemon
        .wait_log_contains(run_id, "hold", "attempt 2 started")
        .await;
    let second = sleeping_stage(&runner.work_dir(), Some(orphan.pid)).await;
    assert_eq!(second.env["DEPLOYLITE_ATTEMPT"], "2");
    assert!(pid_alive(second.pid), "{}", runner.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_stops_its_stage_on_the_runner() {
    let repo = TestRepo::new();
    repo.pipeline(
        "long.yaml",
        "name: long\nstages:\n  wait:\n    runs_on: [r]\n    steps: [{ run: 'echo started; sleep 30' }]\n  after:\n    needs: [wait]\n    runs_on: [r]\n    steps: [{ run: 'true' }]\n",
    );
    repo.commit("long");
    let daemon = Daemon::start(&[&repo], &server_config()).await;
    let runner = Runner::start(&daemon, "runner-c", "r", 1);
    let run = daemon
        .wait_for_runs("the run", |runs| !runs.is_empty())
        .await;
    let run_id = id(&run[0]);
    daemon
        .wait_log_contains(run_id, "wait", "out started")
        .await;
    let started = Instant::now();
    let (code, out, err) = daemon.cli(&["cancel", &run_id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let run = daemon.wait_run_done(run_id).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancellation took {:?}",
        started.elapsed()
    );
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.stage("wait").status, StageStatus::Cancelled);
    assert_eq!(run.stage("after").status, StageStatus::Skipped);
    let prefix = runner.work_dir().display().to_string();
    let pids: Vec<i32> = processes_where(|env| {
        env.get("DEPLOYLITE_WORKSPACE")
            .is_some_and(|w| w.starts_with(&prefix))
    })
    .iter()
    .map(|p| p.pid)
    .collect();
    let survivors = wait::pids_exit(&pids, Duration::from_secs(5));
    assert!(
        survivors.is_empty(),
        "the stage's processes outlived the cancellation: {survivors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_and_a_revoked_runner_are_rejected() {
    let daemon = Daemon::start(&[], &server_config()).await;
    let mut intruder =
        Runner::start_with_token(&daemon, "intruder", "x", 1, "not-the-token-0000000");
    let exit = intruder
        .wait_exit(Duration::from_secs(15))
        .expect("a runner with a wrong token exits");
    assert!(!exit.success());
    assert!(
        intruder
            .stderr()
            .contains("registration refused (401 Unauthorized)"),
        "{}",
        intruder.stderr()
    );

    let mut good = Runner::start(&daemon, "good", "x", 1);
    wait_until("good online", &daemon, |r| online(r, &["good"])).await;
    let (code, out, err) = daemon.cli(&["runners", "revoke", "good"]);
    assert_eq!(code, 0, "{out}{err}");
    let exit = good
        .wait_exit(Duration::from_secs(30))
        .expect("a revoked runner stops");
    assert!(!exit.success());
    assert!(
        good.stderr().contains("refused this runner's credential"),
        "{}",
        good.stderr()
    );
    let runners = wait_until("good revoked", &daemon, |r| {
        r.iter()
            .any(|r| r["name"] == "good" && r["status"] == "revoked")
    })
    .await;
    assert_eq!(
        runners.len(),
        1,
        "the intruder never registered: {runners:?}"
    );

    // A revoked name cannot register again, even with a valid token.
    let mut again = Runner::start(&daemon, "good", "x", 1);
    std::fs::remove_dir_all(again.dir.path().join("state")).ok();
    let exit = again.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(!exit.success());
    assert!(again.stderr().contains("was revoked"), "{}", again.stderr());
    let (code, list, _) = daemon.cli(&["runners", "list"]);
    assert_eq!(code, 0);
    assert!(list.contains("good") && list.contains("revoked"), "{list}");
}

/// A raw call to the runner protocol, as an attacker (or a careless script) would make it:
/// (status, JSON body).
async fn post_json(
    daemon: &Daemon,
    path: &str,
    credential: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = daemon
        .http()
        .post(format!("{}{path}", daemon.url))
        .json(&body);
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    let response = request.send().await.expect("the daemon answers");
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or_default())
}

async fn register(
    daemon: &Daemon,
    name: &str,
    labels: &[&str],
    credential: Option<&str>,
) -> (u16, Value) {
    post_json(
        daemon,
        "/api/v1/runners/register",
        credential,
        serde_json::json!({
            "token": TOKEN, "name": name, "labels": labels, "capacity": 1, "executor": "local"
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_under_a_live_runners_name_needs_its_credential_and_cannot_steal_its_lease() {
    let repo = TestRepo::new();
    repo.pipeline(
        "held.yaml",
        "name: held\nstages:\n  work:\n    runs_on: [shared]\n    steps: [{ run: 'echo started on $DEPLOYLITE_RUNNER; sleep 2; echo done' }]\n",
    );
    let daemon = Daemon::start(&[&repo], &server_config()).await;
    let owner = Runner::start(&daemon, "owner", "shared", 1);
    wait_until("owner online", &daemon, |r| online(r, &["owner"])).await;
    repo.commit("held");
    let run = daemon
        .wait_for_runs("the run", |runs| !runs.is_empty())
        .await;
    let run_id = id(&run[0]);
    daemon
        .wait_log_contains(run_id, "work", "started on owner")
        .await;

    // The takeover: a valid registration token and the owner's name, but not its credential.
    let (code, body) = register(&daemon, "owner", &["shared", "prod"], None).await;
    assert_eq!(code, 409, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("`owner` is taken") && message.contains("current credential"),
        "{message}"
    );

    // The owner keeps its lease: its heartbeats and its report still count.
    let run = daemon.wait_run_done(run_id).await;
    assert_eq!(run.status, RunStatus::Success, "{}", daemon.dump().await);
    assert_eq!(run.stage("work").attempt, 1, "the lease was never lost");
    assert!(daemon
        .log(run_id, "work", Some(1))
        .await
        .contains("out done"));
    let runners = daemon.get_json("/api/v1/runners").await;
    assert_eq!(runners[0]["labels"], serde_json::json!(["shared"]));

    // Someone else's credential proves nothing.
    let other = Runner::start(&daemon, "other", "shared", 1);
    wait_until("other online", &daemon, |r| online(r, &["other"])).await;
    let (code, body) = register(
        &daemon,
        "owner",
        &["shared"],
        Some(&other.credential("other")),
    )
    .await;
    assert_eq!(code, 401, "{body}");

    // The owner itself may register again (a new credential), presenting the current one.
    let old = owner.credential("owner");
    let (code, body) = register(&daemon, "owner", &["shared"], Some(&old)).await;
    assert_eq!(code, 201, "{body}");
    let new = body["credential"].as_str().expect("a new credential");
    assert_ne!(new, old);
    let poll = serde_json::json!({ "labels": ["shared"], "capacity": 1, "free": 0 });
    let (code, _) = post_json(&daemon, "/api/v1/runner/poll", Some(&old), poll.clone()).await;
    assert_eq!(code, 401, "the replaced credential stops working");
    let (code, body) = post_json(&daemon, "/api/v1/runner/poll", Some(new), poll).await;
    assert_eq!(code, 200, "{body}");

    // An admin API token may hand the name to a new machine; a weaker token may not.
    let viewer = daemon.create_token("runner-viewer", "viewer").await;
    let (code, body) = register(&daemon, "owner", &["shared"], Some(&viewer)).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = register(&daemon, "owner", &["shared"], Some(&daemon.admin_token())).await;
    assert_eq!(code, 201, "{body}");
    let (code, _) = post_json(
        &daemon,
        "/api/v1/runner/poll",
        Some(new),
        serde_json::json!({ "labels": ["shared"], "capacity": 1, "free": 0 }),
    )
    .await;
    assert_eq!(code, 401, "the admin's takeover replaced the credential");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_cannot_claim_other_labels_or_unbounded_capacity() {
    let daemon = Daemon::start(&[], &server_config()).await;
    let mut runner = Runner::start(&daemon, "small", "x", 1);
    wait_until("small online", &daemon, |r| online(r, &["small"])).await;
    let credential = runner.credential("small");
    // Stopped, so that nothing but the attacker's polls writes what the runner offers.
    runner.kill9();
    let poll = |labels: &[&str], capacity: i64| serde_json::json!({ "labels": labels, "capacity": capacity, "free": 0 });

    let (code, body) = post_json(
        &daemon,
        "/api/v1/runner/poll",
        Some(&credential),
        poll(&["x", "prod"], 1_000_000),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = post_json(
        &daemon,
        "/api/v1/runner/poll",
        Some(&credential),
        poll(&["x"], 1_000_000),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("capacity"),
        "{body}"
    );
    let (code, body) = post_json(
        &daemon,
        "/api/v1/runner/poll",
        Some(&credential),
        poll(&["x", "prod"], 2),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("fixed at registration"),
        "{body}"
    );
    let runners = daemon.get_json("/api/v1/runners").await;
    assert_eq!(
        (runners[0]["labels"].clone(), runners[0]["capacity"].clone()),
        (serde_json::json!(["x"]), serde_json::json!(1)),
        "what the runner registered with"
    );
    // Within the bounds and with its own labels, a poll may change the capacity.
    let (code, body) = post_json(
        &daemon,
        "/api/v1/runner/poll",
        Some(&credential),
        poll(&["x"], 3),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let runners = daemon.get_json("/api/v1/runners").await;
    assert_eq!(runners[0]["capacity"], 3);

    // The agent started again with other labels says why it cannot work, and stops.
    let labels = runner
        .args
        .iter()
        .position(|a| a == "--labels")
        .expect("--labels")
        + 1;
    runner.args[labels] = "x,prod".into();
    runner.spawn();
    let exit = runner
        .wait_exit(Duration::from_secs(15))
        .expect("the runner stops");
    assert!(!exit.success());
    assert!(
        runner.stderr().contains("labels are fixed at registration"),
        "{}",
        runner.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_credential_the_server_forgot_says_so_and_registers_again_when_asked() {
    let mut daemon = Daemon::start(&[], &server_config()).await;
    let mut runner = Runner::start(&daemon, "forgotten", "x", 1);
    wait_until("forgotten online", &daemon, |r| online(r, &["forgotten"])).await;
    let old = runner.credential("forgotten");
    runner.kill9();

    // The server's data is reset: a new database knows no runner.
    daemon.stop().await;
    std::fs::remove_dir_all(&daemon.data_dir).expect("reset the data dir");
    daemon.restart().await;

    runner.spawn();
    let exit = runner
        .wait_exit(Duration::from_secs(15))
        .expect("the runner stops");
    assert_eq!(exit.code(), Some(2), "{}", runner.stderr());
    let credential_file = runner.dir.path().join("state/forgotten.credential");
    let last_line = runner
        .stderr()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        last_line,
        format!(
            "error: the server at {} refused this runner's credential (401 unknown or revoked \
             runner credential), read from {}. If the server's data was reset, register again: \
             start the runner with --reregister and a registration token (--token-file FILE or \
             DEPLOYLITE_RUNNER_TOKEN); that file is replaced. A revoked runner cannot register \
             again under its name: use another --name",
            daemon.url,
            credential_file.display()
        )
    );

    runner.args.push("--reregister".into());
    runner.spawn();
    wait_until("forgotten registered again", &daemon, |r| {
        online(r, &["forgotten"])
    })
    .await;
    let replaced = wait::try_until_blocking(Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&credential_file).unwrap_or_default();
        (text.trim() != old).then_some(())
    });
    assert!(
        replaced.is_ok(),
        "{} still holds the old credential\n{}",
        credential_file.display(),
        runner.stderr()
    );
    assert_eq!(runner.credential("forgotten").len(), old.len());
}
