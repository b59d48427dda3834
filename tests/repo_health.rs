//! A repository that cannot be polled is visible: `/api/v1/repos`, `/readyz` and `status`
//! name it, its polls back off, and `/healthz` still says the daemon is alive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Daemon, RepoRef, TestRepo};
use serde_json::Value;

async fn repo_named(daemon: &Daemon, name: &str) -> Value {
    let repos = daemon.get_json("/api/v1/repos").await;
    repos
        .as_array()
        .and_then(|list| list.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no repository `{name}` in {repos:#}"))
}

/// Polls `/api/v1/repos` until repository `name` satisfies `pred`.
async fn wait_repo(
    daemon: &Daemon,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let pred = &pred;
    daemon
        .wait_for(format_args!("repository `{name}`: {what}"), || async move {
            Some(repo_named(daemon, name).await).filter(pred)
        })
        .await
}

fn failures(repo: &Value) -> u64 {
    repo["consecutive_failures"].as_u64().unwrap_or(0)
}

/// Milliseconds from the last poll to the next one.
fn gap(repo: &Value) -> i64 {
    common::ts(repo, "next_poll_at") - common::ts(repo, "last_poll_at")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_repository_is_shown_backed_off_and_named_by_readyz_and_status() {
    let good = TestRepo::named("app");
    good.commit("empty");
    let gone = tempfile::tempdir().expect("tempdir");
    let missing = gone.path().join("no-such-repo");
    let mut repos = vec![RepoRef::from(&good)];
    repos.push(RepoRef {
        name: "broken".into(),
        path: missing.clone(),
        branches: vec!["main".into()],
    });
    let daemon = Daemon::start_with(repos, "").await;

    let first = wait_repo(&daemon, "broken", "a failed poll", |r| failures(r) >= 1).await;
    assert_eq!(first["url"], missing.display().to_string());
    assert_eq!(first["last_success_at"], Value::Null);
    let error = first["last_error"].as_str().expect("an error").to_string();
    assert!(error.contains(&missing.display().to_string()), "{error}");
    // The backoff: 100 ms polls, doubled per failure, at most 10 intervals.
    let expected_gap = |f: u64| (100 * 2i64.pow(f as u32)).min(1000);
    assert_eq!(gap(&first), expected_gap(failures(&first)), "{first:#}");
    let later = wait_repo(&daemon, "broken", "another failed poll", |r| {
        failures(r) > failures(&first)
    })
    .await;
    assert_eq!(gap(&later), expected_gap(failures(&later)), "{later:#}");
    assert!(
        gap(&later) > gap(&first) || gap(&first) == 1000,
        "the delay grows"
    );

    let app = wait_repo(&daemon, "app", "a successful poll", |r| {
        !r["last_success_at"].is_null()
    })
    .await;
    assert_eq!((failures(&app), &app["last_error"]), (0, &Value::Null));

    let (code, body) = daemon.get("/healthz").await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!(code, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["status"], "degraded", "{ready:#}");
    assert_eq!(
        ready["repos"].as_array().map(Vec::len),
        Some(1),
        "{ready:#}"
    );
    assert_eq!(ready["repos"][0]["name"], "broken");
    assert_eq!(ready["repos"][0]["error"], error.as_str());
    assert!(failures(&ready["repos"][0]) >= 2);

    let (code, stdout, stderr) = daemon.cli(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    let (section, _runs_table) = stdout.split_once("\n\n").expect("a section, then the runs");
    assert_eq!(
        normalized(section),
        format!(
            "UNHEALTHY REPOSITORIES\n\
             broken ({}): N failed polls in a row, next at T\n\
             \x20 {error}",
            missing.display()
        ),
        "{stdout}"
    );
}

/// The status section with its moving parts (the failure count, the next poll's time) fixed.
fn normalized(section: &str) -> String {
    section
        .lines()
        .map(|line| match line.split_once("): ") {
            Some((head, tail)) if tail.contains(" failed polls in a row, next at ") => {
                format!("{head}): N failed polls in a row, next at T")
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_recovers_is_ready_again() {
    let repo = TestRepo::named("late");
    let path = repo.path().to_path_buf();
    // The repository is not there yet at the daemon's start.
    let hidden = path.with_extension("hidden");
    std::fs::rename(&path, &hidden).expect("hide the repository");
    let daemon = Daemon::start(&[&repo], "").await;
    wait_repo(&daemon, "late", "a failed poll", |r| failures(r) >= 1).await;
    std::fs::rename(&hidden, &path).expect("bring the repository back");
    repo.commit("first");
    wait_repo(&daemon, "late", "a successful poll", |r| {
        failures(r) == 0 && !r["last_success_at"].is_null()
    })
    .await;
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ready"}"#));
    let (code, stdout, _) = daemon.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(!stdout.contains("UNHEALTHY"), "{stdout}");
}
