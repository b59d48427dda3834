//! The environments interface of issue 11 with the real binary and a real git repository: the
//! HTTP routes' roles and error codes, the CLI's output and exit codes, and the status pages.
//! (What deployments do is tests/environments.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Daemon, TestRepo};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// `staging` deploys every commit of main; `production` waits for one approval.
fn project() -> TestRepo {
    project_named("app")
}

fn project_named(name: &str) -> TestRepo {
    let repo = TestRepo::named(name);
    repo.pipeline(
        "deploy.yaml",
        "name: deploy\nstages:\n  release:\n    steps:\n      - run: echo \"$DEPLOYLITE_ACTION $DEPLOYLITE_VERSION to $DEPLOYLITE_ENVIRONMENT\"\n",
    );
    repo.write(
        ".deploylite/environments/staging.yaml",
        "name: staging\ndeploy: deploy\nfollows: { branch: main }\n",
    );
    repo.write(
        ".deploylite/environments/production.yaml",
        "name: production\ndeploy: deploy\nfollows: { branch: main }\napproval: { required: 1 }\n",
    );
    repo
}

async fn wait_for(daemon: &Daemon, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let pred = &pred;
    daemon
        .wait_for_within(
            DEADLINE,
            format_args!("{what} (GET {path})"),
            || async move {
                // 404 until the controller's first pass has recorded the environment files.
                let (code, body) = daemon.get(path).await;
                let value: Value = match code {
                    200 => serde_json::from_str(&body).expect("JSON"),
                    404 => Value::Null,
                    _ => panic!("GET {path} answered {code}: {body}"),
                };
                Some(value).filter(pred)
            },
        )
        .await
}

async fn post(
    daemon: &Daemon,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = daemon.http().post(format!("{}{path}", daemon.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the daemon answers");
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

/// Staging at `v1` and production's deployment of it waiting for approval: (v1, that id).
async fn settled(daemon: &Daemon, v1: &str) -> i64 {
    wait_for(
        daemon,
        "/api/v1/environments/app/staging",
        "staging at v1",
        |e| e["current_version"] == v1,
    )
    .await;
    let production = wait_for(
        daemon,
        "/api/v1/environments/app/production",
        "production waiting for approval",
        |e| e["deployments"][0]["pending_reason"] == "approval: 0 of 1",
    )
    .await;
    production["deployments"][0]["id"].as_i64().expect("id")
}

#[tokio::test]
async fn the_routes_answer_with_the_interface_names_roles_and_codes() {
    let repo = project();
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    let waiting = settled(&daemon, &v1).await;

    let list = daemon.get_json("/api/v1/environments?repo=app").await;
    let names: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["production", "staging"]);
    let staging = &list[1];
    for key in [
        "repo",
        "name",
        "current_version",
        "desired_version",
        "sync",
        "health",
        "hold",
    ] {
        assert!(staging.get(key).is_some(), "no `{key}` in {staging:#}");
    }
    assert_eq!(staging["sync"], "in_sync");
    assert_eq!(staging["health"], "healthy");
    assert_eq!(
        daemon.get_json("/api/v1/environments?repo=other").await,
        Value::Array(vec![])
    );

    let env = daemon.get_json("/api/v1/environments/app/staging").await;
    let deployed = &env["deployments"][0];
    let id = deployed["id"].as_i64().expect("id");
    let full = daemon.get_json(&format!("/api/v1/deployments/{id}")).await;
    for key in [
        "id",
        "repo",
        "environment",
        "version",
        "previous_version",
        "action",
        "status",
        "pending_reason",
        "attempt",
        "runs",
        "policy",
        "created_at",
        "started_at",
        "finished_at",
        "approvals",
        "triggered_by",
    ] {
        assert!(full.get(key).is_some(), "no `{key}` in {full:#}");
    }
    assert_eq!(full["status"], "succeeded");
    assert_eq!(full["version"], v1.as_str());
    let run = full["runs"][0]["id"]
        .as_i64()
        .expect("the run that deployed");
    let (code, _) = daemon.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(code, 200);
    // The repository's name may be percent-encoded, as the CLI and the pages write it.
    let (code, _) = daemon.get("/api/v1/environments/app%2Fx/staging").await;
    assert_eq!(code, 404);

    // Unknown things are 404 with a JSON error.
    for path in [
        "/api/v1/environments/app/nope",
        "/api/v1/environments/nope/staging",
        "/api/v1/environments/staging",
        "/api/v1/deployments/999999",
    ] {
        let (code, body) = daemon.get(path).await;
        assert_eq!(code, 404, "GET {path}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert!(body["error"].is_string(), "GET {path}: {body}");
    }

    // Every action needs an operator: anonymous 401, a viewer 403.
    let viewer = daemon.create_token("dashboard", "viewer").await;
    let operator = daemon.create_token("alice", "operator").await;
    let actions = [
        "/api/v1/environments/app/staging/deploy".to_string(),
        "/api/v1/environments/app/staging/rollback".to_string(),
        "/api/v1/environments/app/staging/hold".to_string(),
        "/api/v1/environments/app/staging/release".to_string(),
        format!("/api/v1/deployments/{waiting}/approve"),
    ];
    for path in &actions {
        let (code, body) = post(&daemon, path, None, None).await;
        assert_eq!(code, 401, "anonymous POST {path}: {body}");
        let (code, body) = post(&daemon, path, Some(&viewer), None).await;
        assert_eq!(code, 403, "viewer POST {path}: {body}");
    }
    // Nothing was approved or held by them.
    let production = daemon
        .get_json(&format!("/api/v1/deployments/{waiting}"))
        .await;
    assert_eq!(production["approvals"], Value::Array(vec![]));

    // Refused (409): no earlier good version, nothing to approve, an unknown version.
    let (code, body) = post(&daemon, &actions[1], Some(&operator), None).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no earlier good version")),
        "{body}"
    );
    let (code, body) = post(
        &daemon,
        &format!("/api/v1/deployments/{id}/approve"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = post(
        &daemon,
        &actions[0],
        Some(&operator),
        Some(serde_json::json!({"version": "no-such-branch"})),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    // A body with a misspelt key is a bad request, not a silent default.
    let (code, body) = post(
        &daemon,
        &actions[0],
        Some(&operator),
        Some(serde_json::json!({"versoin": "main"})),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    // Unknown targets are 404.
    let (code, _) = post(
        &daemon,
        "/api/v1/environments/app/nope/hold",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = post(
        &daemon,
        "/api/v1/environments/app/staging/explode",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = post(
        &daemon,
        "/api/v1/deployments/999999/approve",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(code, 404);

    // The operator holds, releases, approves; each is audited under the token's name.
    let (code, body) = post(&daemon, &actions[2], Some(&operator), None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["environment"]["hold"]["by"], "token:alice", "{body}");
    let (code, body) = post(&daemon, &actions[3], Some(&operator), None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["environment"]["hold"].is_null(), "{body}");
    let (code, body) = post(&daemon, &actions[4], Some(&operator), None).await;
    assert_eq!(code, 200, "{body}");
    let approved = daemon
        .get_json(&format!("/api/v1/deployments/{waiting}"))
        .await;
    assert_eq!(approved["approvals"], serde_json::json!(["token:alice"]));
    // A deploy with a branch as its version: a new attempt, triggered by the operator.
    let (code, body) = post(
        &daemon,
        &actions[0],
        Some(&operator),
        Some(serde_json::json!({"version": "main"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let again = body["deployment"]
        .as_i64()
        .expect("the deployment recorded");
    let redeployed = daemon
        .get_json(&format!("/api/v1/deployments/{again}"))
        .await;
    assert_eq!(redeployed["version"], v1.as_str());
    assert_eq!(redeployed["attempt"], 2);
    assert_eq!(redeployed["triggered_by"], "token:alice");

    let audit = daemon.cli(&["audit", "--json", "--limit", "200"]);
    assert_eq!(audit.0, 0, "{}", audit.2);
    let audit: Value = serde_json::from_str(&audit.1).expect("JSON");
    let entries = audit.as_array().expect("a list");
    let by = |actor: &str, target: &str, result: u64| {
        entries
            .iter()
            .any(|e| e["actor"] == actor && e["target"] == target && e["result"] == result)
    };
    assert!(
        by("token:alice", "/api/v1/environments/app/staging/hold", 200),
        "{audit:#}"
    );
    assert!(
        by(
            "token:dashboard",
            "/api/v1/environments/app/staging/hold",
            403
        ),
        "{audit:#}"
    );
    assert!(
        by("anonymous", "/api/v1/environments/app/staging/hold", 401),
        "{audit:#}"
    );
}

#[tokio::test]
async fn the_cli_lists_shows_and_acts_on_environments() {
    let repo = project();
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    let waiting = settled(&daemon, &v1).await;
    let short = &v1[..12];

    let (code, out, err) = daemon.cli(&["env", "list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "REPO",
            "ENVIRONMENT",
            "SYNC",
            "HEALTH",
            "CURRENT",
            "DESIRED",
            "HOLD"
        ]
    );
    let production: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        production,
        ["app", "production", "unknown", "unknown", "-", short, "-"],
        "{out}"
    );
    let staging: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        staging,
        ["app", "staging", "in_sync", "healthy", short, short, "-"],
        "{out}"
    );
    // Columns line up: each starts where its header does.
    let column = lines[0].find("SYNC").expect("SYNC");
    assert_eq!(lines[2].find("in_sync"), Some(column), "{out}");

    let (code, out, _) = daemon.cli(&["env", "list", "--repo", "other"]);
    assert_eq!(code, 0);
    assert_eq!(out, "");
    let (code, out, _) = daemon.cli(&["env", "list", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    // `env status`: the summary, and the newest deployments with what they wait for.
    let (code, out, err) = daemon.cli(&["env", "status", "app/production"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("app/production\n"), "{out}");
    assert!(out.contains("  sync:       unknown\n"), "{out}");
    assert!(out.contains(&format!("  desired:    {v1}\n")), "{out}");
    assert!(out.contains("  hold:       no\n"), "{out}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with(&waiting.to_string()))
        .unwrap_or_else(|| panic!("no row for deployment {waiting}:\n{out}"));
    assert!(
        row.contains("waiting") && row.ends_with("approval: 0 of 1"),
        "{out}"
    );

    let (code, out, err) = daemon.cli(&["env", "history", "app/staging"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].trim_start().starts_with("DEPLOYMENT  STATUS"),
        "{out}"
    );
    assert!(
        lines[1].contains("succeeded") && lines[1].contains(" deploy "),
        "{out}"
    );

    // Unknown environment: the daemon's 404, exit 2; a malformed target is a usage error.
    let (code, _, err) = daemon.cli(&["env", "status", "app/nope"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no environment `nope` in repository `app`"),
        "{err}"
    );
    let (code, _, err) = daemon.cli(&["deploy", "staging"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected REPO/ENV"), "{err}");

    // Hold and release.
    let (code, out, err) = daemon.cli(&["hold", "app/staging"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("app/staging is held"), "{out}");
    let (_, out, _) = daemon.cli(&["env", "list", "--repo", "app"]);
    assert!(
        out.contains(&format!("held at {short} by token:admin")),
        "{out}"
    );
    let (code, _, err) = daemon.cli(&["release", "app/staging"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = daemon.cli(&["release", "app/staging"]);
    assert_eq!(code, 0);
    assert!(out.contains("was not held"), "{out}");

    // Rollback with nothing to go back to: refused, exit 1.
    let (code, _, err) = daemon.cli(&["rollback", "app/staging"]);
    assert_eq!(code, 1);
    assert!(err.contains("no earlier good version"), "{err}");

    // `approve`: nothing by that number, a deployment that does not wait, then the one that does.
    let (code, _, err) = daemon.cli(&["approve", "999999"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = daemon.cli(&["approve", "run/nope"]);
    assert_eq!(code, 2, "{err}");
    let staging = daemon.get_json("/api/v1/environments/app/staging").await;
    let done = staging["deployments"][0]["id"].as_i64().expect("id");
    let (code, _, err) = daemon.cli(&["approve", &format!("deployment/{done}")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not waiting"), "{err}");
    let (code, out, err) = daemon.cli(&["approve", &format!("deployment/{waiting}")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("deployment {waiting} approved by token:admin")),
        "{out}"
    );
    wait_for(
        &daemon,
        "/api/v1/environments/app/production",
        "production at v1",
        |e| e["current_version"] == v1.as_str(),
    )
    .await;

    // `deploy`: a new attempt of the desired version.
    let (code, out, err) = daemon.cli(&["deploy", "app/staging", "--version", short]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("deployment ") && out.contains("to app/staging recorded"),
        "{out}"
    );
    let (code, _, err) = daemon.cli(&["deploy", "app/staging", "--version", "no-such-tag"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown version"), "{err}");

    // A token-less client is refused with the daemon's explanation.
    let (code, _, err) = daemon.cli_anonymous(&["hold", "app/staging"]);
    assert_eq!(code, 2);
    assert!(err.contains("operator"), "{err}");
}

#[tokio::test]
async fn the_status_page_lists_environments_and_their_history() {
    let repo = project();
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    let waiting = settled(&daemon, &v1).await;

    let (code, html) = daemon.get("/environments").await;
    assert_eq!(code, 200);
    assert!(
        html.contains("href=\"/environments/app/staging\""),
        "{html}"
    );
    assert!(
        html.contains("href=\"/environments/app/production\""),
        "{html}"
    );
    assert!(
        html.contains("in_sync") && html.contains("healthy"),
        "{html}"
    );

    let (code, html) = daemon.get("/environments/app/production").await;
    assert_eq!(code, 200);
    assert!(
        html.contains(&format!("data-deployment=\"{waiting}\"")),
        "{html}"
    );
    assert!(html.contains("approval: 0 of 1"), "{html}");

    let (code, html) = daemon.get("/environments/app/staging").await;
    assert_eq!(code, 200);
    let staging = daemon.get_json("/api/v1/environments/app/staging").await;
    let run = staging["deployments"][0]["runs"][0]["id"]
        .as_i64()
        .expect("run");
    assert!(html.contains(&format!("href=\"/runs/{run}\"")), "{html}");

    let (code, _) = daemon.get("/environments/app/nope").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_repository_name_with_a_slash_works_encoded_or_not() {
    let repo = project_named("org/app");
    let v1 = repo.commit("first");
    let daemon = Daemon::start(&[&repo], "").await;
    let encoded = "/api/v1/environments/org%2Fapp/staging";
    let env = wait_for(&daemon, encoded, "staging at v1", |e| {
        e["current_version"] == v1.as_str()
    })
    .await;
    assert_eq!(env["repo"], "org/app");
    let raw = daemon
        .get_json("/api/v1/environments/org/app/staging")
        .await;
    assert_eq!(raw["name"], "staging");
    assert_eq!(raw["repo"], "org/app");
    let list = daemon.get_json("/api/v1/environments?repo=org/app").await;
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    let (code, out, err) = daemon.cli(&["env", "status", "org/app/staging"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("org/app/staging\n"), "{out}");
    let (code, out, err) = daemon.cli(&["hold", "org/app/staging"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("org/app/staging is held"), "{out}");
    let (code, _, err) = daemon.cli(&["release", "org/app/staging"]);
    assert_eq!(code, 0, "{err}");
    let token = daemon.admin_token();
    let (code, body) = post(
        &daemon,
        "/api/v1/environments/org/app/staging/hold",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["environment"]["hold"]["by"], "token:admin");

    let (code, html) = daemon.get("/environments").await;
    assert_eq!(code, 200);
    assert!(
        html.contains("href=\"/environments/org%2Fapp/staging\""),
        "{html}"
    );
    let (code, html) = daemon.get("/environments/org%2Fapp/staging").await;
    assert_eq!(code, 200, "{html}");
    assert!(html.contains("held"), "{html}");
}
