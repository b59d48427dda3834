//! The trust boundaries, attacked as the security review attacked them, against the real
//! binary: an API without identities, cross-site requests, DNS rebinding, fork pull requests.
//! Each test replays one attack and checks that it fails the way the README promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{json, Value};

const LONG: &str = r#"name: long
stages:
  wait:
    steps:
      - run: echo waiting; sleep 30
"#;

/// A daemon with one run whose stage is running (and would run for 30 s).
async fn daemon_with_a_running_run() -> (TestRepo, Daemon, i64) {
    let repo = TestRepo::new();
    repo.pipeline("long.yaml", LONG);
    let commit = repo.commit("long");
    let daemon = Daemon::start(&[&repo], "").await;
    let run = daemon.wait_for_commit_run("long", &commit).await;
    let rid = id(&run);
    daemon.wait_stage(rid, "wait", "running").await;
    (repo, daemon, rid)
}

async fn post(
    daemon: &Daemon,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = daemon.http().post(format!("{}{path}", daemon.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_a_token_of_the_right_role() {
    let (_repo, daemon, rid) = daemon_with_a_running_run().await;
    let cancel = format!("/api/v1/runs/{rid}/cancel");

    // The review's attack: anyone who reaches the port cancels runs and revokes runners.
    let (code, body) = post(&daemon, &cancel, None, &[]).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = post(&daemon, "/api/v1/runners/some-runner/revoke", None, &[]).await;
    assert_eq!(code, 401);
    let (code, _) = post(&daemon, &cancel, Some("dlt_not-a-token"), &[]).await;
    assert_eq!(code, 401, "an unknown token is refused");

    let viewer = daemon.create_token("ci-dashboard", "viewer").await;
    let operator = daemon.create_token("release-bot", "operator").await;
    let (code, body) = post(&daemon, &cancel, Some(&viewer), &[]).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("operator"),
        "{body}"
    );
    let (code, _) = post(&daemon, "/api/v1/runners/x/revoke", Some(&operator), &[]).await;
    assert_eq!(code, 403, "revoking runners is for admins");
    let (code, _) = post(
        &daemon,
        "/api/v1/tokens/ci-dashboard/revoke",
        Some(&operator),
        &[],
    )
    .await;
    assert_eq!(code, 403, "tokens are for admins");
    assert_eq!(
        status(&daemon.run(rid).await),
        "running",
        "nothing refused changed the run"
    );

    let (code, body) = post(&daemon, &cancel, Some(&operator), &[]).await;
    assert_eq!(code, 202, "{body}");
    daemon.wait_run_done(rid).await;

    // Revocation takes effect at once.
    let (code, _) = post(
        &daemon,
        "/api/v1/tokens/release-bot/revoke",
        Some(&daemon.admin_token()),
        &[],
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = post(&daemon, &cancel, Some(&operator), &[]).await;
    assert_eq!(code, 401, "a revoked token is refused");

    // Every state-changing call, allowed or not, is in the audit log, readable by admins only.
    let response = daemon
        .http()
        .get(format!("{}/api/v1/audit?limit=100", daemon.url))
        .bearer_auth(daemon.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let entries: Vec<Value> = response.json().await.unwrap();
    let has = |actor: &str, action: &str, result: i64| {
        entries
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action && e["result"] == result)
    };
    assert!(
        has("anonymous", "POST /api/v1/runs/{id}/cancel", 401),
        "{entries:#?}"
    );
    assert!(
        has("token:ci-dashboard", "POST /api/v1/runs/{id}/cancel", 403),
        "{entries:#?}"
    );
    assert!(
        has("token:release-bot", "POST /api/v1/runs/{id}/cancel", 202),
        "{entries:#?}"
    );
    assert!(
        has("token:admin", "POST /api/v1/tokens/{name}/revoke", 200),
        "{entries:#?}"
    );
    assert!(
        entries.iter().any(|e| e["target"] == cancel),
        "{entries:#?}"
    );
    let response = daemon
        .http()
        .get(format!("{}/api/v1/audit", daemon.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_post_or_a_rebound_host_is_refused_whatever_its_token() {
    let (_repo, daemon, rid) = daemon_with_a_running_run().await;
    let cancel = format!("/api/v1/runs/{rid}/cancel");
    let admin = daemon.admin_token();
    // A form on another site posting to the daemon (a "simple" request: no preflight).
    let (code, body) = post(
        &daemon,
        &cancel,
        Some(&admin),
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    // DNS rebinding: evil.example resolves to 127.0.0.1, so the browser calls it same-origin.
    let rebound = format!("evil.example:{}", daemon.port);
    let origin = format!("http://{rebound}");
    let (code, body) = post(
        &daemon,
        &cancel,
        Some(&admin),
        &[("Host", rebound.as_str()), ("Origin", origin.as_str())],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(status(&daemon.run(rid).await), "running");
    // The daemon's own origin is fine.
    let own = format!("http://localhost:{}", daemon.port);
    let host = format!("localhost:{}", daemon.port);
    let (code, body) = post(
        &daemon,
        &cancel,
        Some(&admin),
        &[("Host", host.as_str()), ("Origin", own.as_str())],
    )
    .await;
    assert_eq!(code, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_writes_an_admin_token_only_its_user_can_read() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ok.yaml",
        "name: ok\nstages:\n  a:\n    steps: [{ run: 'true' }]\n",
    );
    repo.commit("ok");
    let mut daemon = Daemon::start(&[&repo], "").await;
    let path = daemon.admin_token_path();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    let token = daemon.admin_token();
    assert!(token.starts_with("dlt_") && token.len() == 68, "{token}");
    // A restart keeps the token and writes no new one.
    daemon.stop().await;
    daemon.restart().await;
    assert_eq!(daemon.admin_token(), token);

    // The CLI creates, lists and revokes tokens; the token is printed once, on stdout.
    let (code, out, err) =
        daemon.cli(&["token", "create", "--role", "viewer", "--name", "grafana"]);
    assert_eq!(code, 0, "{out}{err}");
    let viewer = out.trim().to_string();
    assert!(viewer.starts_with("dlt_"), "{out}");
    assert!(err.contains("shown only this once"), "{err}");
    let (code, out, _) = daemon.cli(&["token", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("grafana") && out.contains("viewer"), "{out}");
    assert!(
        !out.contains(&viewer),
        "a listing never shows a token: {out}"
    );
    let (code, _, err) = daemon.cli(&["token", "create", "--role", "viewer", "--name", "grafana"]);
    assert_eq!(code, 2, "a live name is not reused: {err}");
    let (code, _, err) = daemon.cli(&["token", "create", "--role", "root", "--name", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown role `root`"), "{err}");
    let (code, out, err) = daemon.cli(&["token", "revoke", "grafana"]);
    assert_eq!(code, 0, "{out}{err}");
    // Without a token (run away from the data dir), the CLI says how to give one.
    let (code, _, err) = daemon.cli_anonymous(&["token", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("--token-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_a_token_when_anonymous_read_is_off() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ok.yaml",
        "name: ok\nstages:\n  a:\n    steps: [{ run: 'true' }]\n",
    );
    repo.commit("ok");
    let daemon = Daemon::start(&[&repo], "auth:\n  anonymous_read: false\n").await;
    let (code, _) = daemon.get("/api/v1/runs").await;
    assert_eq!(code, 401);
    let (code, _) = daemon.get("/healthz").await;
    assert_eq!(code, 200, "health checks stay open");
    let viewer = daemon.create_token("reader", "viewer").await;
    let response = daemon
        .http()
        .get(format!("{}/api/v1/runs", daemon.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (code, out, err) = daemon.cli(&["status"]);
    assert_eq!(code, 0, "the CLI sends its token: {out}{err}");
}

const WEBHOOK_SECRET: &str = "a-webhook-secret-for-tests";

/// GitHub's pull_request example (see webhook/tests/fixtures), turned into a pull request from
/// a fork by an outside contributor: the published examples have none.
fn fork_pull_request(number: i64, head: &str, base: &str) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/webhook/tests/fixtures/github/webhooks/pull_request.opened.json"
    );
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    p["number"] = json!(number);
    p["pull_request"]["number"] = json!(number);
    p["pull_request"]["head"]["sha"] = json!(head);
    p["pull_request"]["head"]["repo"]["full_name"] = json!("forker/Hello-World");
    p["pull_request"]["base"]["sha"] = json!(base);
    p["pull_request"]["base"]["ref"] = json!("main");
    p["pull_request"]["author_association"] = json!("NONE");
    p["pull_request"]["user"]["login"] = json!("forker");
    serde_json::to_vec(&p).unwrap()
}

async fn send_github(daemon: &Daemon, event: &str, delivery: &str, body: Vec<u8>) -> u16 {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    daemon
        .http()
        .post(format!("{}/webhooks/github", daemon.url))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Delivers the fork's pull request `number` and waits for its run to be recorded.
async fn open_fork_pull_request(daemon: &Daemon, number: i64, head: &str, base: &str) -> Value {
    let body = fork_pull_request(number, head, base);
    assert_eq!(send_github(daemon, "pull_request", "d-1", body).await, 202);
    daemon
        .wait_for_run("the fork's run", |r| r["commit"] == head)
        .await
}

/// A repository watched with GitHub webhooks whose main has a `ci` pipeline touching
/// `marks/ran`, and a branch (standing in for a fork's head) whose `ci` would touch
/// `marks/fork-yaml-ran` instead; a daemon on it with `extra_config`.
struct ForkSetup {
    marks: tempfile::TempDir,
    repo: TestRepo,
    daemon: Daemon,
    base: String,
    head: String,
}

async fn fork_setup(extra_config: &str) -> ForkSetup {
    let marks = tempfile::tempdir().unwrap();
    // Stages of a root daemon run as an unprivileged user: let them leave their marks.
    std::fs::set_permissions(marks.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        &format!(
            "name: ci\non:\n  pull_request:\nstages:\n  test:\n    steps:\n      - run: touch {}/ran\n",
            marks.path().display()
        ),
    );
    let base = repo.commit("ci");
    repo.git(&["checkout", "--quiet", "-b", "contribution"]);
    // The fork's head rewrites the pipeline; its YAML must never decide what runs.
    repo.pipeline(
        "ci.yaml",
        &format!(
            "name: ci\non:\n  pull_request:\nstages:\n  test:\n    steps:\n      - run: touch {}/fork-yaml-ran\n",
            marks.path().display()
        ),
    );
    let head = repo.commit("a contribution");
    repo.checkout("main");
    let config = format!(
        "repos:\n  - name: app\n    url: {}\n    branches: [main]\n    poll_interval: 100ms\n    forge: github\n    slug: Codertocat/Hello-World\nforges:\n  github:\n    webhook_secret: {WEBHOOK_SECRET}\n{extra_config}",
        repo.path().display()
    );
    let daemon = Daemon::start(&[&repo], &config).await;
    ForkSetup {
        marks,
        repo,
        daemon,
        base,
        head,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_pull_request_runs_nothing_until_approved_and_then_only_where_allowed() {
    let ForkSetup {
        marks,
        repo,
        daemon,
        base,
        head,
    } = fork_setup("").await;
    let run = open_fork_pull_request(&daemon, 3, &head, &base).await;
    let rid = id(&run);
    assert_eq!(status(&run), "queued");
    assert_eq!(run["awaiting_approval"], true, "{run:#}");
    assert!(
        run["pending_reason"].as_str().unwrap().starts_with(
            "approval required: pull request #3 from fork forker/Hello-World by forker"
        ),
        "{run:#}"
    );
    // A push to main recorded and run after the fork's run is the positive signal that the
    // scheduler has ticked since.
    repo.pipeline(
        "main.yaml",
        "name: main\non:\n  push:\nstages:\n  a:\n    steps: [{ run: 'true' }]\n",
    );
    let later = repo.commit("a later push");
    let main_run = daemon
        .wait_for_run("the later push's run", |r| {
            r["commit"] == later.as_str() && r["pipeline"] == "main" && is_final(r)
        })
        .await;
    assert_eq!(status(&main_run), "success", "{main_run:#}");
    let still = daemon.run(rid).await;
    assert_eq!(status(&still), "queued");
    assert!(
        !daemon
            .data_dir
            .join("workspaces")
            .join(rid.to_string())
            .exists(),
        "no workspace is prepared for an unapproved run"
    );

    // An approval with too weak a role is refused; an operator's approval starts it, but no
    // runner is allowed untrusted work by default, and the wait says so.
    let viewer = daemon.create_token("viewer", "viewer").await;
    let (code, _) = post(
        &daemon,
        &format!("/api/v1/runs/{rid}/approve"),
        Some(&viewer),
        &[],
    )
    .await;
    assert_eq!(code, 403);
    let (code, out, err) = daemon.cli(&["approve", &rid.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let waiting = daemon
        .wait_run(rid, "the approved run waits for an allowed runner", |r| {
            r.stage("test")
                .pending_reason
                .as_deref()
                .is_some_and(|p| p.starts_with("no runner for untrusted work"))
        })
        .await;
    assert_eq!(waiting.json["approved_by"], "token:admin");
    let (code, _, err) = daemon.cli(&["approve", &rid.to_string()]);
    assert_eq!(code, 1, "a second approval has nothing to approve: {err}");
    assert!(!marks.path().join("ran").exists());
    assert!(!marks.path().join("fork-yaml-ran").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_fork_run_runs_the_base_pipeline_on_an_allowed_runner() {
    // Every field bound: a dropped `repo` would delete the repository under the daemon.
    let ForkSetup {
        marks,
        repo: _repo,
        daemon,
        base,
        head,
    } = fork_setup("untrusted:\n  labels: [local]\n").await;
    let run = open_fork_pull_request(&daemon, 4, &head, &base).await;
    let rid = id(&run);
    let (code, out, err) = daemon.cli(&["approve", &rid.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("#{rid}")), "{out}");
    let done = daemon.wait_run_done(rid).await;
    assert_eq!(done.status, RunStatus::Success, "{done:#}");
    assert!(
        marks.path().join("ran").exists(),
        "the base branch's pipeline ran"
    );
    assert!(
        !marks.path().join("fork-yaml-ran").exists(),
        "the fork's pipeline never runs"
    );
}
