//! Environments end to end (issue 11): the real binary, real git repositories, the local
//! executor. The "hosts" deployed to are directories of the test's temp dir; the deploy
//! pipeline writes there what it was given (version, action, previous version, deployment id).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, TestRepo};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// A repository with `ci` (on push to main), `deploy`, `smoke` and `drift` pipelines, and the
/// environment files given. The deploy fails while the committed file `FAIL` exists; it waits
/// while `<hosts>/<env>.hold-open` exists (for the kill -9 test).
fn project(hosts: &Path, environments: &[(&str, &str)]) -> TestRepo {
    let repo = TestRepo::new();
    let hosts = hosts.display();
    repo.pipeline(
        "ci.yaml",
        "name: ci\non:\n  push: { branches: [main] }\nstages:\n  test:\n    steps:\n      - run: test ! -f BROKEN_CI\n",
    );
    repo.pipeline(
        "deploy.yaml",
        &format!(
            r#"name: deploy
env:
  HOSTS: {hosts}
stages:
  release:
    steps:
      - run: |
          host="$HOSTS/$DEPLOYLITE_ENVIRONMENT"
          mkdir -p "$host"
          while [ -f "$HOSTS/$DEPLOYLITE_ENVIRONMENT.hold-open" ]; do sleep 0.05; done
          test ! -f FAIL
          printf '%s\n' "$DEPLOYLITE_VERSION" > "$host/VERSION"
          printf '%s %s %s %s %s\n' "$DEPLOYLITE_ACTION" "$DEPLOYLITE_VERSION" "${{DEPLOYLITE_PREVIOUS_VERSION:-none}}" "$DEPLOYLITE_DEPLOYMENT_ID" "$DEPLOYLITE_EVENT" >> "$host/history"
    rollback:
      - run: echo "rollback steps of the failed release ran"
"#
        ),
    );
    repo.pipeline(
        "smoke.yaml",
        &format!(
            "name: smoke\nenv:\n  HOSTS: {hosts}\nstages:\n  smoke:\n    steps:\n      - run: test \"$(cat $HOSTS/$DEPLOYLITE_ENVIRONMENT/VERSION)\" = \"$DEPLOYLITE_VERSION\" && echo \"verify $DEPLOYLITE_ACTION\" >> $HOSTS/$DEPLOYLITE_ENVIRONMENT/verified\n"
        ),
    );
    repo.pipeline(
        "drift.yaml",
        &format!(
            "name: drift\nenv:\n  HOSTS: {hosts}\nstages:\n  compare:\n    steps:\n      - run: |\n          echo check >> $HOSTS/$DEPLOYLITE_ENVIRONMENT/checks\n          test \"$(cat $HOSTS/$DEPLOYLITE_ENVIRONMENT/VERSION)\" = \"$DEPLOYLITE_VERSION\" || exit 2\n"
        ),
    );
    for (name, yaml) in environments {
        repo.write(&format!(".deploylite/environments/{name}.yaml"), yaml);
    }
    repo.write("README", "v1\n");
    repo
}

const STAGING: &str = "name: staging\ndeploy: deploy\nfollows: { branch: main }\nrequires: [ci]\nverify: smoke\nrollback: auto\n";

fn hosts() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // Stages of a root daemon run as `nobody`: the "hosts" must be theirs to write.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_default()
}

/// The environment as the API shows it; null until the controller's first pass has recorded
/// the environment files (the API answers 404 until then).
async fn environment(daemon: &Daemon, env: &str) -> Value {
    let (code, body) = daemon.get(&format!("/api/v1/environments/app/{env}")).await;
    match code {
        200 => serde_json::from_str(&body).expect("JSON"),
        404 => Value::Null,
        other => panic!("GET environment {env}: {other} {body}"),
    }
}

/// Waits until the environment satisfies `pred`.
async fn wait_env(daemon: &Daemon, env: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let pred = &pred;
    daemon
        .wait_for_within(
            DEADLINE,
            format_args!("{what} (environment {env})"),
            || async move { Some(environment(daemon, env).await).filter(pred) },
        )
        .await
}

fn deployments(env: &Value) -> Vec<Value> {
    env["deployments"].as_array().cloned().unwrap_or_default()
}

fn deployment_of<'a>(env: &'a Value, version: &str, action: &str) -> Option<&'a Value> {
    env["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["version"] == version && d["action"] == action)
}

fn with_status(env: &Value, version: &str, action: &str, status: &str) -> bool {
    deployment_of(env, version, action).is_some_and(|d| d["status"] == status)
}

#[tokio::test]
async fn a_commit_deploys_to_staging_then_promotes_to_production() {
    let (_keep, hosts) = hosts();
    let production = "name: production\ndeploy: deploy\nfollows: { branch: main }\nrequires: [ci]\npromote_from: [staging]\n";
    let repo = project(&hosts, &[("staging", STAGING), ("production", production)]);
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;

    let staging = wait_env(&daemon, "staging", "staging at v1", |e| {
        e["current_version"] == v1.as_str()
    })
    .await;
    assert_eq!(staging["sync"], "in_sync");
    assert_eq!(staging["health"], "healthy");
    let d = deployment_of(&staging, &v1, "deploy").expect("the deployment of v1");
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempt"], 1);
    let production = wait_env(&daemon, "production", "production at v1", |e| {
        e["current_version"] == v1.as_str()
    })
    .await;
    assert_eq!(deployments(&production).len(), 1);

    // What the deploy pipeline was given.
    let history = read(hosts.join("staging/history"));
    let id = d["id"].as_i64().expect("id");
    assert_eq!(history.trim(), format!("deploy {v1} none {id} deployment"));
    assert_eq!(read(hosts.join("staging/verified")).trim(), "verify verify");

    // The deploy and verify pipelines ran only for deployments, never on the push (`drift`,
    // named by no environment here and without an `on:`, runs on every push).
    let runs = daemon.runs().await;
    assert!(
        runs.iter()
            .filter(|r| r["pipeline"] == "deploy" || r["pipeline"] == "smoke")
            .all(|r| r["trigger"] == "deployment"),
        "deploy and smoke run only for deployments: {runs:#?}"
    );
    assert!(runs
        .iter()
        .any(|r| r["pipeline"] == "drift" && r["trigger"] == "push"));
    let full = daemon.get_json(&format!("/api/v1/deployments/{id}")).await;
    assert_eq!(full["environment"], "staging");
    let run_ids: Vec<i64> = full["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(run_ids.len(), 2, "a deploy run and a verify run: {full:#}");

    // The next commit: staging moves first, production follows with v1 as previous.
    repo.write("README", "v2\n");
    let v2 = repo.commit("second");
    let production = wait_env(&daemon, "production", "production at v2", |e| {
        e["current_version"] == v2.as_str()
    })
    .await;
    assert_eq!(
        deployment_of(&production, &v2, "deploy").expect("v2")["previous_version"],
        v1.as_str()
    );
    let staging = environment(&daemon, "staging").await;
    let staged = deployment_of(&staging, &v2, "deploy").expect("staging v2");

    // The metrics count them, read from the store; the home page lists the environments.
    let (_, metrics) = daemon.get("/metrics").await;
    for expected in [
        "deploylite_deployments_total{repo=\"app\",environment=\"staging\",status=\"succeeded\"} 2",
        "deploylite_deployments_total{repo=\"app\",environment=\"production\",status=\"succeeded\"} 2",
        "deploylite_environment_info{repo=\"app\",environment=\"production\",sync=\"in_sync\",health=\"healthy\",held=\"false\"} 1",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
    let (_, home) = daemon.get("/").await;
    assert!(
        home.contains("href=\"/environments/app/production\""),
        "{home}"
    );
    assert!(
        home.contains(&v2[..7]),
        "the current version is shown: {home}"
    );
    let promoted = deployment_of(&production, &v2, "deploy").expect("production v2");
    assert!(
        promoted["started_at"].as_i64() >= staged["finished_at"].as_i64(),
        "production started only after staging had deployed v2"
    );
}

#[tokio::test]
async fn production_waits_for_an_approval() {
    let (_keep, hosts) = hosts();
    let production =
        "name: production\ndeploy: deploy\nfollows: { branch: main }\napproval: { required: 1 }\n";
    let repo = project(&hosts, &[("production", production)]);
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;

    let env = wait_env(
        &daemon,
        "production",
        "a deployment waiting for approval",
        |e| {
            deployment_of(e, &v1, "deploy")
                .is_some_and(|d| d["pending_reason"] == "approval: 0 of 1")
        },
    )
    .await;
    let id = deployment_of(&env, &v1, "deploy").expect("deployment")["id"]
        .as_i64()
        .expect("id");
    assert_eq!(env["current_version"], Value::Null);
    assert!(!hosts.join("production/VERSION").exists());

    // Anonymous callers cannot approve.
    let anonymous = daemon
        .http()
        .post(format!("{}/api/v1/deployments/{id}/approve", daemon.url))
        .send()
        .await
        .expect("answer");
    assert!(
        matches!(anonymous.status().as_u16(), 401 | 403),
        "{}",
        anonymous.status()
    );
    let (code, body) = daemon
        .post_as_admin(&format!("/api/v1/deployments/{id}/approve"))
        .await;
    assert_eq!(code, 200, "{body}");
    // Both together: the API reads the summary and the history in two queries (not one
    // snapshot yet), so one answer may show one moved and not the other.
    let env = wait_env(&daemon, "production", "production at v1", |e| {
        e["current_version"] == v1.as_str() && with_status(e, &v1, "deploy", "succeeded")
    })
    .await;
    let d = deployment_of(&env, &v1, "deploy").expect("deployment");
    assert_eq!(d["status"], "succeeded");
    let full = daemon.get_json(&format!("/api/v1/deployments/{id}")).await;
    assert_eq!(
        full["approvals"].as_array().map(Vec::len),
        Some(1),
        "{full:#}"
    );
}

#[tokio::test]
async fn a_failed_deploy_rolls_back_and_the_bad_version_is_not_retried() {
    let (_keep, hosts) = hosts();
    let repo = project(&hosts, &[("staging", STAGING)]);
    let good = repo.commit("good");
    let daemon = Daemon::start(&[&repo], "").await;
    wait_env(&daemon, "staging", "staging at the good version", |e| {
        e["current_version"] == good.as_str()
    })
    .await;

    repo.write("FAIL", "the deploy fails while this file exists\n");
    let bad = repo.commit("bad");
    let env = wait_env(&daemon, "staging", "the bad version rolled back", |e| {
        with_status(e, &bad, "deploy", "rolled_back")
            && with_status(e, &good, "rollback", "succeeded")
    })
    .await;
    assert_eq!(env["current_version"], good.as_str());
    assert_eq!(env["desired_version"], bad.as_str());
    assert_eq!(env["sync"], "out_of_sync");
    let failed = deployment_of(&env, &bad, "deploy").expect("bad");
    let rollback = deployment_of(&env, &good, "rollback").expect("rollback");
    assert_eq!(
        rollback["previous_version"],
        bad.as_str(),
        "the rollback replaced the bad version"
    );
    // The failed release's own rollback steps ran.
    let failed_full = daemon
        .get_json(&format!("/api/v1/deployments/{}", failed["id"]))
        .await;
    let deploy_run = failed_full["runs"][0]["id"].as_i64().expect("its run");
    let log = daemon.log(deploy_run, "release", None).await;
    assert!(
        log.contains("rollback steps of the failed release ran"),
        "{log}"
    );
    let history = read(hosts.join("staging/history"));
    assert!(
        history
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("rollback {good} {bad}"))),
        "{history}"
    );

    // Polls and controller passes go on (one at least every 5 s even with nothing to wake
    // it), the bad version stays desired, and it is not deployed again.
    wait_settled(&daemon).await;
    let env = environment(&daemon, "staging").await;
    let attempts_of_bad = deployments(&env)
        .iter()
        .filter(|d| d["version"] == bad.as_str())
        .count();
    assert_eq!(attempts_of_bad, 1, "{env:#}");

    // A fixed commit deploys.
    repo.remove("FAIL");
    let fixed = repo.commit("fixed");
    let env = wait_env(&daemon, "staging", "the fix deployed", |e| {
        e["current_version"] == fixed.as_str()
    })
    .await;
    assert_eq!(env["health"], "healthy");
    assert_eq!(env["sync"], "in_sync");
}

/// Waits until a poll of the repository and then a pass of the environment controller, both
/// begun after this call, have ended: what they would do with the state as it is now (record a
/// duplicate, deploy again), they have done. Only then may a test assert that nothing happened.
async fn wait_settled(daemon: &Daemon) {
    daemon.wait_fresh_poll("app").await;
    daemon.wait_fresh_environment_pass().await;
}

#[tokio::test]
async fn a_hold_pins_the_environment_until_release() {
    let (_keep, hosts) = hosts();
    let repo = project(&hosts, &[("staging", STAGING)]);
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    wait_env(&daemon, "staging", "staging at v1", |e| {
        e["current_version"] == v1.as_str()
    })
    .await;

    let (code, body) = daemon
        .post_as_admin("/api/v1/environments/app/staging/hold")
        .await;
    assert_eq!(code, 200, "{body}");
    repo.write("README", "v2\n");
    let v2 = repo.commit("second");
    let env = wait_env(&daemon, "staging", "v2 held", |e| {
        deployment_of(e, &v2, "deploy").is_some_and(|d| {
            d["pending_reason"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("hold: pinned to {} by ", &v1[..7])))
        })
    })
    .await;
    assert_eq!(env["current_version"], v1.as_str());
    assert_eq!(env["desired_version"], v2.as_str());
    assert!(env["hold"].is_object(), "{env:#}");

    // The change feed announces the deployment's moves once released.
    let mut events = daemon
        .http()
        .get(format!("{}/api/v1/events", daemon.url))
        .send()
        .await
        .expect("the event stream");
    let (code, body) = daemon
        .post_as_admin("/api/v1/environments/app/staging/release")
        .await;
    assert_eq!(code, 200, "{body}");
    let env = wait_env(&daemon, "staging", "v2 deployed after release", |e| {
        e["current_version"] == v2.as_str()
    })
    .await;
    assert!(env["hold"].is_null());
    let mut seen = String::new();
    let started = Instant::now();
    while !seen.contains("\"status\":\"succeeded\"") {
        assert!(
            started.elapsed() < DEADLINE,
            "no deployment event in:\n{seen}"
        );
        match tokio::time::timeout(Duration::from_secs(5), events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the event stream ended: {other:?}\n{seen}"),
        }
    }
    assert!(seen.contains("event: deployment"), "{seen}");
    assert!(seen.contains("\"environment\":\"app/staging\""), "{seen}");
}

#[tokio::test]
async fn a_manual_rollback_pins_the_environment() {
    let (_keep, hosts) = hosts();
    let repo = project(&hosts, &[("staging", STAGING)]);
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    wait_env(&daemon, "staging", "staging at v1", |e| {
        e["current_version"] == v1.as_str()
    })
    .await;
    repo.write("README", "v2\n");
    let v2 = repo.commit("second");
    wait_env(&daemon, "staging", "staging at v2", |e| {
        e["current_version"] == v2.as_str()
    })
    .await;

    let (code, body) = daemon
        .post_as_admin("/api/v1/environments/app/staging/rollback")
        .await;
    assert_eq!(code, 200, "{body}");
    let env = wait_env(&daemon, "staging", "rolled back to v1", |e| {
        with_status(e, &v1, "rollback", "succeeded") && e["current_version"] == v1.as_str()
    })
    .await;
    assert_eq!(env["current_version"], v1.as_str());
    assert_eq!(env["hold"]["version"], v1.as_str());
    // Automation does not roll forward while pinned: v2 (already deployed once) waits for
    // nothing, and a new commit is held.
    repo.write("README", "v3\n");
    let v3 = repo.commit("third");
    wait_env(&daemon, "staging", "v3 held", |e| {
        deployment_of(e, &v3, "deploy").is_some_and(|d| {
            d["pending_reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("hold: pinned to "))
        })
    })
    .await;
}

#[tokio::test]
async fn drift_is_detected_and_redeployed() {
    let (_keep, hosts) = hosts();
    let staging = "name: staging\ndeploy: deploy\nfollows: { branch: main }\ncheck: { pipeline: drift, interval: 1s }\non_drift: redeploy\n";
    let repo = project(&hosts, &[("staging", staging)]);
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    wait_env(&daemon, "staging", "staging checked in sync", |e| {
        e["current_version"] == v1.as_str() && e["last_check_at"].is_i64() && e["sync"] == "in_sync"
    })
    .await;

    // Someone changes the host by hand.
    std::fs::write(hosts.join("staging/VERSION"), "tampered\n").expect("tamper");
    let env = wait_env(&daemon, "staging", "a redeploy for drift", |e| {
        deployments(e).iter().any(|d| {
            d["version"] == v1.as_str()
                && d["status"] == "succeeded"
                && d["attempt"] == 2
                && d["triggered_by"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("drift"))
        })
    })
    .await;
    assert_eq!(read(hosts.join("staging/VERSION")).trim(), v1);
    assert!(env["current_version"] == v1.as_str());
    wait_env(&daemon, "staging", "in sync again", |e| {
        e["sync"] == "in_sync"
    })
    .await;
}

#[tokio::test]
async fn a_deploy_policy_denial_rejects_the_deployment() {
    let (_keep, hosts) = hosts();
    let bundle = tempfile::tempdir().expect("bundle dir");
    std::fs::write(
        bundle.path().join("policy.rego"),
        "package deploylite.deploy.freeze\n\nimport rego.v1\n\ndeny contains msg if {\n\tinput.environment.name == \"staging\"\n\tmsg := sprintf(\"%s is frozen\", [input.environment.name])\n}\n",
    )
    .expect("write the bundle");
    let repo = project(&hosts, &[("staging", STAGING)]);
    let v1 = repo.commit("first");
    let daemon = Daemon::start(
        &[&repo],
        &format!("policy:\n  bundles: [{}]\n", bundle.path().display()),
    )
    .await;
    let env = wait_env(&daemon, "staging", "a rejected deployment", |e| {
        with_status(e, &v1, "deploy", "rejected")
    })
    .await;
    let d = deployment_of(&env, &v1, "deploy").expect("deployment");
    let full = daemon
        .get_json(&format!("/api/v1/deployments/{}", d["id"]))
        .await;
    assert_eq!(full["policy"]["deny"][0], "staging is frozen", "{full:#}");
    assert_eq!(full["pending_reason"], "policy: denied: staging is frozen");
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        metrics.contains(
            "deploylite_policy_evaluations_total{gate=\"deploylite.deploy\",result=\"deny\"} 1"
        ),
        "{metrics}"
    );
    assert!(full["runs"].as_array().is_some_and(Vec::is_empty));
    assert!(!hosts.join("staging/VERSION").exists());
}

#[tokio::test]
async fn kill_9_mid_deployment_leaves_exactly_one_succeeded_deployment() {
    let (_keep, hosts) = hosts();
    let staging = "name: staging\ndeploy: deploy\nfollows: { branch: main }\n";
    let repo = project(&hosts, &[("staging", staging)]);
    let v1 = repo.commit("first");
    let gate = hosts.join("staging.hold-open");
    std::fs::write(&gate, "").expect("gate");
    let mut daemon = Daemon::start(&[&repo], "").await;
    wait_env(&daemon, "staging", "deploying", |e| {
        with_status(e, &v1, "deploy", "deploying")
    })
    .await;
    // `deploying` comes before the step runs: kill only once the step has made the host
    // directory and waits at its gate, so that there is an attempt to interrupt.
    let host = hosts.join("staging");
    let host = &host;
    daemon
        .wait_for_within(
            DEADLINE,
            "the release step waiting at its gate",
            || async move { host.is_dir().then_some(()) },
        )
        .await;
    daemon.kill9();
    std::fs::remove_file(&gate).expect("open the gate");
    daemon.restart().await;
    let env = wait_env(&daemon, "staging", "deployed after the restart", |e| {
        e["current_version"] == v1.as_str()
    })
    .await;
    let all = deployments(&env);
    assert_eq!(all.len(), 1, "{env:#}");
    assert_eq!(all[0]["status"], "succeeded");
    let full = daemon
        .get_json(&format!("/api/v1/deployments/{}", all[0]["id"]))
        .await;
    let run = full["runs"][0]["id"].as_i64().expect("its run");
    let log = daemon.log(run, "release", Some(1)).await;
    assert!(
        log.contains("interrupted"),
        "the first attempt's log says it was cut short: {log}"
    );
}

#[tokio::test]
async fn a_webhook_and_polls_give_one_deployment() {
    const SECRET: &str = "a-webhook-secret-for-environments";
    let (_keep, hosts) = hosts();
    let staging = "name: staging\ndeploy: deploy\nfollows: { branch: main }\nrequires: [ci]\n";
    let repo = project(&hosts, &[("staging", staging)]);
    let v1 = repo.commit("first");
    let (forge_url, _calls) = common::failing_forge();
    let mut daemon = Daemon::start(
        &[],
        &format!(
            "repos:\n  - name: app\n    url: {}\n    branches: [main]\n    poll_interval: 100ms\n    forge: github\n    slug: Codertocat/Hello-World\nforges:\n  github:\n    api_url: {forge_url}\n    token: not-a-real-token\n    webhook_secret: {SECRET}\n",
            repo.path().display()
        ),
    )
    .await;
    assert_eq!(
        common::send_github_push(&daemon, SECRET, "env-1", &v1).await,
        202
    );
    assert_eq!(
        common::send_github_push(&daemon, SECRET, "env-2", &v1).await,
        202
    );
    wait_env(&daemon, "staging", "staging at v1", |e| {
        e["current_version"] == v1.as_str()
    })
    .await;
    daemon.stop().await;
    daemon.restart().await;
    assert_eq!(
        common::send_github_push(&daemon, SECRET, "env-3", &v1).await,
        202
    );
    wait_settled(&daemon).await;
    let env = environment(&daemon, "staging").await;
    assert_eq!(deployments(&env).len(), 1, "{env:#}");
    let runs = daemon.runs().await;
    let deploy_runs = runs.iter().filter(|r| r["pipeline"] == "deploy").count();
    assert_eq!(deploy_runs, 1, "{runs:#?}");
}
