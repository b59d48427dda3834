//! The local executor cannot honour `image:` or `resources:`: the daemon's own runner and a
//! `deploylite runner --executor local` fail a stage with an image (saying what to do) unless
//! told to ignore it, and say in the log that resource limits are not enforced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Stdio};

use common::{cli, id, Daemon, RunStatus, RunView, StageStatus, TestRepo};

const WITH_IMAGE: &str = r#"name: ci
stages:
  build:
    runs_on: [local]
    image: alpine:3.20
    resources: { cpu: 1, memory: 512Mi }
    steps:
      - run: echo "ran on the host"
"#;

const REFUSED: &str = "the executor could not run the stage: image: the local executor cannot \
    run stage `build` in image `alpine:3.20`: it runs steps on this machine, not in \
    containers; send the stage to a Docker or Kubernetes runner (`runs_on` one of its labels), \
    or set `local_runner.ignore_image: true` (DEPLOYLITE_LOCAL_RUNNER__IGNORE_IMAGE=true, or \
    --ignore-image) to run it here without the image";

const WARNINGS: [&str; 2] = [
    "warning: image `alpine:3.20` ignored (local_runner.ignore_image): stage `build` runs on \
     this machine, not in a container",
    "warning: the local executor does not enforce resources: stage `build` runs without its \
     limits (cpu: 1, memory: 512Mi)",
];

/// The texts of a stored log's lines (`<time> <stream> <text>`).
fn texts(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| l.splitn(3, ' ').nth(2))
        .collect()
}

/// Runs the image pipeline's commit on `daemon`; returns the run (final) and the stage's log.
async fn run_image_stage(daemon: &Daemon, commit: &str) -> (RunView, String) {
    let run = daemon.wait_for_commit_run("ci", commit).await;
    let run = daemon.wait_run_done(id(&run)).await;
    let log = daemon.log(run.id, "build", Some(1)).await;
    (run, log)
}

#[tokio::test]
async fn the_daemon_fails_a_stage_with_an_image_and_says_what_to_do() {
    let repo = TestRepo::new();
    repo.pipeline("ci.yaml", WITH_IMAGE);
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "").await;
    let (run, log) = run_image_stage(&daemon, &commit).await;
    assert_eq!(run.status, RunStatus::Failed, "{log}");
    assert_eq!(run.stage("build").status, StageStatus::Failed);
    assert!(texts(&log).contains(&REFUSED), "{log}");
    assert!(!log.contains("ran on the host"), "{log}");
}

#[tokio::test]
async fn the_daemon_runs_it_with_a_warning_when_told_to_ignore_images() {
    let repo = TestRepo::new();
    repo.pipeline("ci.yaml", WITH_IMAGE);
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "local_runner: { ignore_image: true }\n").await;
    let (run, log) = run_image_stage(&daemon, &commit).await;
    assert_eq!(run.status, RunStatus::Success, "{log}");
    let texts = texts(&log);
    let at = texts
        .iter()
        .position(|t| *t == WARNINGS[0])
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(texts.get(at + 1), Some(&WARNINGS[1]), "{log}");
    assert!(texts.contains(&"ran on the host"), "{log}");
}

const TOKEN: &str = "test-registration-token-0123";

/// A `deploylite runner` (local executor) offering `local`, killed when dropped.
struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(daemon: &Daemon, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let child = cli()
            .args(["runner", "--server", &daemon.url, "--name", "agent-1"])
            .args(["--labels", "local", "--executor", "local"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .args(extra)
            .env("DEPLOYLITE_RUNNER_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn deploylite runner");
        Agent { child, _dir: dir }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon runs nothing itself: every stage goes to a remote runner.
fn remote_only() -> String {
    format!(
        "local_runner: {{ enabled: false }}\nrunners: {{ registration_tokens: [\"{TOKEN}\"] }}\n"
    )
}

#[tokio::test]
async fn a_local_runner_agent_fails_a_stage_with_an_image() {
    let repo = TestRepo::new();
    repo.pipeline("ci.yaml", WITH_IMAGE);
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], &remote_only()).await;
    let _agent = Agent::start(&daemon, &[]);
    let (run, log) = run_image_stage(&daemon, &commit).await;
    assert_eq!(run.status, RunStatus::Failed, "{log}");
    assert!(texts(&log).contains(&REFUSED), "{log}");
    assert!(!log.contains("ran on the host"), "{log}");
}

#[tokio::test]
async fn a_local_runner_agent_runs_it_with_a_warning_given_ignore_image() {
    let repo = TestRepo::new();
    repo.pipeline("ci.yaml", WITH_IMAGE);
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], &remote_only()).await;
    let _agent = Agent::start(&daemon, &["--ignore-image"]);
    let (run, log) = run_image_stage(&daemon, &commit).await;
    assert_eq!(run.status, RunStatus::Success, "{log}");
    let texts = texts(&log);
    assert!(texts.contains(&WARNINGS[0]), "{log}");
    assert!(texts.contains(&WARNINGS[1]), "{log}");
    assert!(texts.contains(&"ran on the host"), "{log}");
}
