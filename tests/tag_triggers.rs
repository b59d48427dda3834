//! Tag pushes run the pipelines that ask for them, as in GitHub Actions, without `tags:` in the
//! repository's config; the tags a repository already had when first watched start nothing;
//! a config `tags:` that excludes a pipeline's tag trigger is warned about.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{id, is_final, Daemon, RunStatus, TestRepo};
use serde_json::Value;

const RELEASE: &str = "name: release\non:\n  push:\n    tags: [\"v*\"]\nstages:\n  publish:\n    steps: [{ run: 'echo publishing $DEPLOYLITE_TAG' }]\n";

async fn repos(daemon: &Daemon) -> Vec<Value> {
    match daemon.get_json("/api/v1/repos").await {
        Value::Array(list) => list,
        other => panic!("/api/v1/repos is not a list: {other}"),
    }
}

/// Waits until the first repository's first poll succeeded.
async fn first_poll_done(daemon: &Daemon) -> Value {
    daemon
        .wait_for("a successful poll", || async {
            repos(daemon)
                .await
                .into_iter()
                .next()
                .filter(|r| !r["last_success_at"].is_null())
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_tag_runs_the_pipeline_that_asks_for_it_and_old_tags_run_nothing() {
    let repo = TestRepo::new();
    repo.pipeline("release.yaml", RELEASE);
    repo.commit("release pipeline");
    repo.git(&["tag", "v0.9.0"]);
    // No `tags:` in the repository's config: the pipelines decide.
    let daemon = Daemon::start(&[&repo], "").await;
    first_poll_done(&daemon).await;

    repo.write("CHANGELOG", "1.0.0\n");
    let commit = repo.commit("1.0.0");
    repo.git(&["tag", "v1.0.0"]);
    repo.git(&["tag", "nightly-1"]);
    let run = daemon
        .wait_for_run("the run of tag v1.0.0", |r| r["ref"] == "refs/tags/v1.0.0")
        .await;
    assert_eq!(
        (&run["pipeline"], &run["trigger"], &run["commit"]),
        (
            &Value::from("release"),
            &Value::from("tag"),
            &Value::from(commit)
        )
    );
    let run = daemon.wait_run_done(id(&run)).await;
    assert_eq!(run.status, RunStatus::Success, "{}", daemon.dump().await);
    assert!(daemon
        .log(run.id, "publish", None)
        .await
        .contains("out publishing v1.0.0"));

    // The tag that existed at the first poll, and the one no pipeline asks for, ran nothing,
    // though a poll has seen them both since.
    daemon.wait_fresh_poll("app").await;
    let runs = daemon.runs().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert!(runs.iter().all(is_final));
    assert!(daemon
        .stderr()
        .contains("existing tags recorded without runs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_tags_list_that_excludes_a_pipelines_tag_trigger_is_warned_about() {
    let repo = TestRepo::new();
    repo.pipeline("release.yaml", RELEASE);
    repo.commit("release pipeline");
    let config = format!(
        "repos:\n  - name: app\n    url: {}\n    branches: [main]\n    tags: [\"release-*\"]\n    poll_interval: 100ms\n",
        repo.path().display()
    );
    let daemon = Daemon::start(&[], &config).await;
    let app = first_poll_done(&daemon).await;
    let warning = "pipeline `release` (.deploylite/pipelines/release.yaml) triggers on tags `v*` \
        that the repository's `tags:` [`release-*`] excludes: that tag trigger can never fire \
        (remove `tags:` from the repository's config to let the pipelines decide)";
    assert_eq!(app["tag_warnings"], serde_json::json!([warning]), "{app:#}");
    assert!(daemon.stderr().contains(warning), "{}", daemon.stderr());

    let (code, stdout, stderr) = daemon.cli(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    let (section, _runs_table) = stdout.split_once("\n\n").expect("a section, then the runs");
    assert_eq!(
        section,
        format!("TAG TRIGGERS THAT CANNOT FIRE\napp: {warning}")
    );
}
