//! A repository URL with a credential, end to end: the daemon's log and the leases it hands to
//! runners never hold the credential.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "s3cret-t0ken";
const TOKEN: &str = "test-registration-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_errors_in_the_daemon_log_do_not_show_the_credential() {
    let url = format!("https://deploy:{SECRET}@127.0.0.1:1/x.git");
    let daemon = Daemon::start_with(
        vec![RepoRef {
            name: "app".into(),
            path: PathBuf::from(&url),
            branches: vec!["main".into()],
        }],
        "",
    )
    .await;
    let log = daemon.wait_stderr_contains("poll failed").await;
    assert!(!log.contains(SECRET), "{log}");
    assert!(
        log.contains("127.0.0.1:1/x.git"),
        "the error still says where: {log}"
    );
    // Nor does the API that shows the failing repository.
    let (_, repos) = daemon.get("/api/v1/repos").await;
    let (_, ready) = daemon.get("/readyz").await;
    for body in [&repos, &ready] {
        assert!(!body.contains(SECRET), "{body}");
    }
    let repos: Value = serde_json::from_str(&repos).expect("JSON");
    assert_eq!(repos[0]["url"], "https://***@127.0.0.1:1/x.git");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_carry_the_repository_url_without_its_credential() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  build:\n    runs_on: [remote]\n    steps:\n      - run: echo hi\n",
    );
    let commit = repo.commit("ci");
    let bare = format!("file://{}", repo.path().display());
    let with_credential = format!("file://deploy:{SECRET}@{}", repo.path().display());
    let daemon = Daemon::start_with(
        vec![RepoRef {
            name: "app".into(),
            path: PathBuf::from(&with_credential),
            branches: vec!["main".into()],
        }],
        &format!(
            "local_runner: {{ enabled: false }}\nrunners: {{ registration_tokens: [\"{TOKEN}\"] }}\n"
        ),
    )
    .await;
    daemon.wait_for_commit_run("ci", &commit).await;

    let http = daemon.http();
    let registered: Value = http
        .post(format!("{}/api/v1/runners/register", daemon.url))
        .json(&json!({"token": TOKEN, "name": "r1", "labels": ["remote"], "capacity": 1, "executor": "kubernetes"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("register answer");
    let credential = registered["credential"].as_str().expect("a credential");
    let started = Instant::now();
    let answer = loop {
        let text = http
            .post(format!("{}/api/v1/runner/poll", daemon.url))
            .bearer_auth(credential)
            .timeout(Duration::from_secs(60))
            .json(&json!({"labels": ["remote"], "capacity": 1, "free": 1}))
            .send()
            .await
            .expect("poll")
            .text()
            .await
            .expect("poll answer");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        if value["leases"].as_array().is_some_and(|l| !l.is_empty()) {
            break (text, value);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no lease: {text}\n{}",
            daemon.dump().await
        );
    };
    let (text, value) = answer;
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains("deploy:"), "{text}");
    assert_eq!(value["leases"][0]["source_url"], bare.as_str(), "{text}");
    let mirror_config = std::fs::read_to_string(daemon.data_dir.join("git/app.git/config"))
        .expect("the mirror's config");
    assert!(!mirror_config.contains(SECRET), "{mirror_config}");
}
