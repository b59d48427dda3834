//! What the client commands print, as exact text: tables sized to long names, one run's
//! problems printed once, a skipped run without an empty stages table, plurals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

const LONG_REPO: &str = "a-repository-with-a-long-name";

fn short(commit: &str) -> &str {
    &commit[..12]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tables_are_as_wide_as_their_longest_names() {
    let repo = TestRepo::named(LONG_REPO);
    repo.pipeline(
        "ci.yaml",
        "name: a-pipeline-with-a-long-name\nstages:\n  a-stage-with-a-rather-long-name:\n    steps: [\"true\"]\n  short:\n    needs: [a-stage-with-a-rather-long-name]\n    steps: [\"exit 3\"]\n",
    );
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "").await;
    let run = daemon
        .wait_for_commit_run("a-pipeline-with-a-long-name", &commit)
        .await;
    let run = daemon.wait_run_done(id(&run)).await;
    assert_eq!(run.id, 1, "{run:#}");
    let created = run.json["created_at"].as_str().expect("created_at");
    assert_eq!(created.len(), 24, "{created}");
    let c = short(&commit);

    let (code, out, err) = daemon.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "RUN  REPO                           PIPELINE                     STATUS  REF   COMMIT        CREATED\n  \
             1  a-repository-with-a-long-name  a-pipeline-with-a-long-name  failed  main  {c}  {created}\n"
        )
    );

    let (code, out, err) = daemon.cli(&["status", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "run #1 a-repository-with-a-long-name/a-pipeline-with-a-long-name refs/heads/main {c}\n\
             status: failed\n\
             \n\
             STAGE                            STATUS   ATTEMPT  EXIT  WAITING FOR\n\
             a-stage-with-a-rather-long-name  success        1     0\n\
             short                            failed         1     3\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pipelines_problems_are_printed_once_and_a_skipped_run_says_why() {
    let repo = TestRepo::new();
    repo.pipeline(
        "broken.yaml",
        "name: broken\ncolour: blue\nstages:\n  a:\n    needs: [nope]\n    steps: [\"true\"]\n",
    );
    repo.pipeline(
        "docs.yaml",
        "name: docs\non:\n  push:\n    paths: [\"docs/**\"]\nstages:\n  build:\n    steps: [\"true\"]\n",
    );
    repo.write("docs/a.md", "a\n");
    repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    // The first commit of a ref runs everything (its changes are unknown); the second one
    // touches no documentation.
    daemon
        .wait_for_runs("the first commit's runs", |runs| runs.len() == 2)
        .await;
    repo.write("src/main.rs", "fn main() {}\n");
    let second = repo.commit("code only");
    let c = short(&second);
    let broken = daemon.wait_for_commit_run("broken", &second).await;
    let skipped = daemon.wait_for_commit_run("docs", &second).await;

    assert_eq!(status(&broken), "error", "{broken:#}");
    assert_eq!(
        broken["pending_reason"],
        Value::Null,
        "the problems are in `errors` only: {broken:#}"
    );
    assert_eq!(broken["errors"].as_array().map(Vec::len), Some(2));
    let (code, out, err) = daemon.cli(&["status", &id(&broken).to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "run #{} app/broken refs/heads/main {c}\n\
             status: error (the pipeline is invalid: 2 problems)\n  \
             .deploylite/pipelines/broken.yaml:2:1: unknown key `colour`; expected one of `name`, `on`, `concurrency`, `env`, `stages`\n  \
             .deploylite/pipelines/broken.yaml:5:13: stage `a` needs unknown stage `nope`\n",
            id(&broken)
        )
    );

    assert_eq!(status(&skipped), "skipped", "{skipped:#}");
    let (code, out, err) = daemon.cli(&["status", &id(&skipped).to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "run #{} app/docs refs/heads/main {c}\n\
             status: skipped (no changed file matches the pipeline's path filters)\n",
            id(&skipped)
        )
    );
    let (code, out, err) = daemon.cli(&["logs", &id(&skipped).to_string()]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(
        err,
        format!(
            "run #{} has no stages: it is skipped (no changed file matches the pipeline's path filters)\n",
            id(&skipped)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_token_and_audit_tables_are_as_wide_as_their_longest_names() {
    let repo = TestRepo::new();
    let daemon = Daemon::start(
        &[&repo],
        "runners: { registration_tokens: [\"register-me-0123456789\"] }\n",
    )
    .await;
    let name = "a-runner-with-a-name-longer-than-twenty";
    let response = daemon
        .http()
        .post(format!("{}/api/v1/runners/register", daemon.url))
        .json(&serde_json::json!({
            "token": "register-me-0123456789",
            "name": name,
            "labels": ["linux", "a-label-that-is-long"],
            "capacity": 12,
            "executor": "local",
        }))
        .send()
        .await
        .expect("register");
    assert!(response.status().is_success(), "{response:?}");
    let (code, out, err) = daemon.cli(&["runners", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let runners: Value = serde_json::from_str(&out).expect("JSON");
    let seen = runners[0]["last_seen"].as_str().unwrap_or("-").to_string();
    let state = runners[0]["status"].as_str().expect("status").to_string();
    let (code, out, err) = daemon.cli(&["runners", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "NAME                                     STATUS  EXECUTOR  RUNNING  CAPACITY  LAST SEEN{pad}  LABELS\n\
             {name}  {state:<6}  local           0        12  {seen}  linux,a-label-that-is-long\n",
            pad = " ".repeat(seen.len().saturating_sub("LAST SEEN".len())),
        )
    );

    daemon
        .create_token("a-token-for-the-grafana-dashboard", "viewer")
        .await;
    let (code, out, err) = daemon.cli(&["token", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "NAME                               ROLE    STATE  EXPIRES  CREATED BY\n\
         a-token-for-the-grafana-dashboard  viewer  live   -        token:admin\n\
         admin                              admin   live   -        deploylite serve (first start)\n"
    );

    let (code, out, err) = daemon.cli(&["audit", "--json"]);
    assert_eq!(code, 0, "{err}");
    let entries: Value = serde_json::from_str(&out).expect("JSON");
    let entries = entries.as_array().expect("a list");
    let (code, out, err) = daemon.cli(&["audit"]);
    assert_eq!(code, 0, "{err}");
    let times: Vec<String> = entries
        .iter()
        .map(|e| {
            chrono::DateTime::from_timestamp_millis(e["at"].as_i64().expect("at"))
                .expect("a time")
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .collect();
    let expected = format!(
        "TIME                  ACTOR                ACTION                         TARGET                    RESULT\n\
         {}  token:admin          POST /api/v1/tokens            /api/v1/tokens            201\n\
         {}  runner-registration  POST /api/v1/runners/register  /api/v1/runners/register  201\n",
        times[0], times[1]
    );
    assert_eq!(out, expected, "{entries:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ansi_colour_when_the_output_is_not_a_terminal() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  paint:\n    steps: [\"printf '\\\\033[1;31mred\\\\033[0m\\\\n'\"]\n",
    );
    let commit = repo.commit("ci");

    // `deploylite run`'s live output, to a file.
    let mut cmd = cli();
    cmd.arg("run").current_dir(repo.path());
    let (code, out, err) = run_cmd(cmd);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("[paint] red\n"), "{out}");
    assert!(!out.contains('\u{1b}'), "{out:?}");

    let daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("ci", &commit).await);
    daemon.wait_run_done(rid).await;
    let stored = daemon.log(rid, "paint", None).await;
    assert!(
        stored.contains(" out \u{1b}[1;31mred\u{1b}[0m\n"),
        "the log keeps what the stage printed: {stored:?}"
    );
    let (code, out, err) = daemon.cli(&["logs", &rid.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" out red\n"), "{out:?}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    // On a terminal (util-linux's `script` gives it one), colours stay unless NO_COLOR is set.
    let on_a_terminal = |no_colour: Option<&str>| {
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec"])
            .arg(format!(
                "{BIN} logs {rid} --server {} --token-file {}",
                daemon.url,
                daemon.admin_token_path().display()
            ))
            .arg("/dev/null")
            .env_remove("NO_COLOR");
        if let Some(value) = no_colour {
            cmd.env("NO_COLOR", value);
        }
        run_cmd(cmd)
    };
    let (code, out, err) = on_a_terminal(None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" out \u{1b}[1;31mred\u{1b}[0m"), "{out:?}");
    let (code, out, err) = on_a_terminal(Some(""));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains('\u{1b}'),
        "an empty NO_COLOR is no NO_COLOR: {out:?}"
    );
    let (code, out, err) = on_a_terminal(Some("1"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" out red"), "{out:?}");
    assert!(!out.contains('\u{1b}'), "{out:?}");

    // The daemon's own log, to a file.
    let log = daemon.stderr();
    assert!(log.contains("INFO"), "the daemon has logged: {log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[test]
fn run_summary_is_as_wide_as_its_longest_stage_name() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  a-stage-whose-name-is-longer-than-24:\n    steps: [\"true\"]\n  b:\n    needs: [a-stage-whose-name-is-longer-than-24]\n    steps: [\"true\"]\n",
    );
    let mut cmd = cli();
    cmd.arg("run").current_dir(repo.path());
    let (code, out, err) = run_cmd(cmd);
    assert_eq!(code, 0, "{out}{err}");
    let summary = &err[err.find("\nSTAGE").expect("a summary")..];
    // Durations vary: take them from the output, and check all the rest.
    let durations: Vec<&str> = summary
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(durations.len(), 2, "{summary}");
    assert!(
        durations.iter().all(|d| d.ends_with('s') && d.len() <= 8),
        "{summary}"
    );
    assert_eq!(
        summary,
        format!(
            "\nSTAGE                                 STATUS   ATTEMPTS  DURATION\n\
             a-stage-whose-name-is-longer-than-24  success         1  {:>8}\n\
             b                                     success         1  {:>8}\n\
             run success\n",
            durations[0], durations[1]
        )
    );
}
