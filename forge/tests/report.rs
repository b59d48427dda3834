//! Forge reporting end to end: real runs in a real SQLite store and real log files, reported by
//! the `Reporter` to fake GitHub/GitLab servers over HTTP. Every request to GitHub is validated
//! against the OpenAPI subset in `tests/fixtures/github/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod report_support;

use std::sync::Arc;
use std::time::Duration;

use deploylite_forge::forges::Forges;
use deploylite_forge::report::{Reporter, PR_COMMENT_MARKER};
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{SqliteSync, Store};
use report_support::fake::{self, FakeForge, Recorded, Reply};
use report_support::openapi::OpenApi;
use report_support::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(20);

fn assert_valid(forge: &FakeForge) {
    let violations = forge.violations();
    assert!(
        violations.is_empty(),
        "requests the forge API would refuse:\n{}",
        violations.join("\n")
    );
}

fn check_run_requests(forge: &FakeForge) -> Vec<Recorded> {
    forge
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/check-runs") && r.status < 300)
        .collect()
}

fn spawn_loop(reporter: &Arc<Reporter>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reporter.clone().run(shutdown.clone()));
    (shutdown, task)
}

// ---------------------------------------------------------------------------------------------
// The validator itself

#[test]
fn the_openapi_validator_accepts_good_bodies_and_refuses_bad_ones() {
    let spec = OpenApi::github();
    let good = json!({ "name": "deploylite/ci", "head_sha": "abc", "status": "queued", "external_id": "1",
                       "output": { "title": "Queued", "summary": "..." } });
    assert_eq!(
        spec.validate_request("POST", "/repos/o/r/check-runs", Some(&good)),
        Vec::<String>::new()
    );
    let completed =
        json!({ "name": "x", "head_sha": "abc", "status": "completed", "conclusion": "timed_out" });
    assert!(spec
        .validate_request("POST", "/repos/o/r/check-runs", Some(&completed))
        .is_empty());

    let cases = [
        (
            "POST",
            "/repos/o/r/check-runs",
            json!({ "name": "x" }),
            "head_sha",
        ),
        (
            "POST",
            "/repos/o/r/check-runs",
            json!({ "name": "x", "head_sha": "a", "conclusion": "passed" }),
            "not one of",
        ),
        (
            "POST",
            "/repos/o/r/check-runs",
            json!({ "name": "x", "head_sha": "a", "status": "completed" }),
            "oneOf",
        ),
        (
            "POST",
            "/repos/o/r/check-runs",
            json!({ "name": 7, "head_sha": "a" }),
            "expected string",
        ),
        (
            "POST",
            "/repos/o/r/check-runs",
            json!({ "name": "x", "head_sha": "a", "output": { "title": "t", "summary": "s",
                     "annotations": [{ "path": "f", "start_line": 1, "end_line": 1, "annotation_level": "failure" }] } }),
            "message",
        ),
        (
            "POST",
            "/repos/o/r/check-runs",
            json!({ "name": "x", "head_sha": "a", "output": { "title": "t", "summary": "s",
                     "annotations": (0..51).map(|_| json!({ "path": "f", "start_line": 1, "end_line": 1,
                                                            "annotation_level": "failure", "message": "m" })).collect::<Vec<_>>() } }),
            "more than 50",
        ),
        (
            "PATCH",
            "/repos/o/r/check-runs/12",
            json!({ "status": "completed" }),
            "anyOf",
        ),
        (
            "PATCH",
            "/repos/o/r/check-runs/twelve",
            json!({ "status": "in_progress" }),
            "not an integer",
        ),
        (
            "POST",
            "/repos/o/r/statuses/abc",
            json!({ "state": "skipped" }),
            "not one of",
        ),
        (
            "POST",
            "/repos/o/r/statuses/abc",
            json!({ "description": "no state" }),
            "state",
        ),
        (
            "PATCH",
            "/repos/o/r/issues/comments/5",
            json!({ "text": "no body" }),
            "body",
        ),
        (
            "DELETE",
            "/repos/o/r/issues/comments/5",
            Value::Null,
            "no such operation",
        ),
    ];
    for (method, path, body, expected) in cases {
        let body = (!body.is_null()).then_some(body);
        let errors = spec.validate_request(method, path, body.as_ref());
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{method} {path} {body:?}: expected an error mentioning `{expected}`, got {errors:?}"
        );
    }
}

#[tokio::test]
async fn the_fake_github_flags_requests_outside_the_api() {
    let forge = FakeForge::github().await;
    let crab = octocrab::Octocrab::builder()
        .base_uri(forge.url.as_str())
        .unwrap()
        .personal_token(fake::PAT.to_string())
        .build()
        .unwrap();
    let bad = json!({ "name": "deploylite/ci", "status": "done" });
    crab._post("/repos/octo/app/check-runs", Some(&bad))
        .await
        .unwrap();
    crab._post("/repos/octo/app/merges", Some(&json!({})))
        .await
        .unwrap();
    let violations = forge.violations();
    assert!(
        violations.iter().any(|v| v.contains("head_sha")),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.contains("\"done\" is not one of")),
        "{violations:?}"
    );
    assert!(
        violations.iter().any(|v| v.contains("no such operation")),
        "{violations:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// GitHub App: check runs

#[tokio::test]
async fn a_check_run_goes_queued_in_progress_completed() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let run = record(
        &env.store,
        new_run("ci", "c0ffee1234", &["build", "test"], None),
    )
    .await;
    assert_eq!(reporter.send_due().await, 1);
    dispatch(&env.store, run, "build", 1).await;
    assert_eq!(reporter.send_due().await, 1);
    finish(
        &env.store,
        run,
        "build",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    dispatch(&env.store, run, "test", 1).await;
    finish(
        &env.store,
        run,
        "test",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    end_run(&env.store, run, RunStatus::Success, &[]).await;
    assert_eq!(reporter.send_due().await, 1);
    assert_eq!(env.store.pending_report_count().await.unwrap(), 0);

    let checks = check_run_requests(&forge);
    assert_eq!(checks.len(), 3, "{checks:#?}");
    let (create, progress, done) = (&checks[0], &checks[1], &checks[2]);
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", "/repos/octo/app/check-runs")
    );
    assert_eq!(create.body["name"], "deploylite/ci");
    assert_eq!(create.body["head_sha"], "c0ffee1234");
    assert_eq!(create.body["external_id"], run.to_string());
    assert_eq!(create.body["status"], "queued");
    assert_eq!(
        create.body["details_url"],
        format!("{PUBLIC_URL}/api/v1/runs/{run}")
    );
    let id = env
        .store
        .forge_object("app", "check_run", &run.to_string())
        .await
        .unwrap()
        .expect("check run id kept");
    assert_eq!(progress.method, "PATCH");
    assert_eq!(progress.path, format!("/repos/octo/app/check-runs/{id}"));
    assert_eq!(progress.body["status"], "in_progress");
    assert!(progress.body["started_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(done.method, "PATCH");
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["conclusion"], "success");
    assert_eq!(
        done.body["details_url"],
        format!("{PUBLIC_URL}/api/v1/runs/{run}")
    );
    let summary = done.body["output"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("| Stage | Status | Duration | Attempts |"),
        "{summary}"
    );
    assert!(summary.contains("| build | ✅ success |"), "{summary}");
    assert!(summary.contains("| test | ✅ success |"), "{summary}");
    // The app authenticated with a JWT for the installation lookup and the token, then with
    // the installation token.
    let tokens = forge.issued_tokens();
    assert_eq!(tokens.len(), 1, "the token is cached");
    for r in forge
        .requests()
        .iter()
        .filter(|r| r.path.contains("/check-runs"))
    {
        assert_eq!(r.bearer(), Some(tokens[0].as_str()));
    }
    assert_eq!(
        forge.requests_to("GET", "/installation").len(),
        1,
        "the installation id is cached"
    );
    assert_valid(&forge);
}

#[tokio::test]
async fn a_failure_quotes_the_tail_of_the_failing_stage_log() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let run = record(
        &env.store,
        new_run("ci", "feed", &["build", "test", "deploy"], None),
    )
    .await;
    dispatch(&env.store, run, "build", 1).await;
    finish(
        &env.store,
        run,
        "build",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    // Attempt 1 of `test` fails and is retried; attempt 2 fails for good.
    dispatch(&env.store, run, "test", 1).await;
    write_log(
        &env.data,
        run,
        "test",
        1,
        &[("out", "first attempt output".into())],
    );
    finish(
        &env.store,
        run,
        "test",
        1,
        StageStatus::Failed,
        Some("step 1 exited with 2"),
        true,
    )
    .await;
    dispatch(&env.store, run, "test", 2).await;
    let mut lines: Vec<(&str, String)> = vec![("---", "step 1: cargo test".into())];
    lines.extend((1..=30).map(|i| ("out", format!("test output line {i}"))));
    lines.push((
        "err",
        "error: 3 tests failed ``` not closing the fence".into(),
    ));
    lines.push(("---", "step 1 exited with 2".into()));
    write_log(&env.data, run, "test", 2, &lines);
    finish(
        &env.store,
        run,
        "test",
        2,
        StageStatus::Failed,
        Some("step 1 exited with 2"),
        false,
    )
    .await;
    end_run(&env.store, run, RunStatus::Failed, &["deploy"]).await;
    assert_eq!(reporter.send_due().await, 1);

    let checks = check_run_requests(&forge);
    let last = checks.last().expect("a check run");
    assert_eq!(last.body["conclusion"], "failure");
    assert_eq!(last.body["output"]["title"], "Failed: stage test");
    let summary = last.body["output"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("### Log of `test` (attempt 2, last 20 lines)"),
        "{summary}"
    );
    assert!(
        summary.contains("\n````text\n"),
        "a fence longer than the quoted backticks: {summary}"
    );
    assert!(summary.contains("test output line 30"));
    assert!(summary.contains("test output line 13"), "{summary}");
    assert!(
        !summary.contains("test output line 12\n"),
        "only the last 20 lines: {summary}"
    );
    assert!(
        !summary.contains("first attempt output"),
        "the latest attempt's log"
    );
    assert!(summary.contains("error: 3 tests failed"));
    assert!(summary.contains("▸ step 1 exited with 2"));
    assert!(
        !summary.contains("2026-11-26T"),
        "timestamps are stripped: {summary}"
    );
    assert!(
        !summary.contains(" out test output"),
        "stream tags are stripped"
    );
    assert!(summary.contains("| test | ❌ failed |"), "{summary}");
    assert!(
        summary.contains("| 2 | step 1 exited with 2 |"),
        "attempts and note: {summary}"
    );
    assert!(summary.contains("| deploy | ⏭️ skipped |"), "{summary}");
    assert_valid(&forge);
}

#[tokio::test]
async fn a_stage_that_timed_out_concludes_timed_out() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let run = record(&env.store, new_run("ci", "beef", &["slow"], None)).await;
    dispatch(&env.store, run, "slow", 1).await;
    write_log(
        &env.data,
        run,
        "slow",
        1,
        &[
            ("---", "step 1: sleep 600".into()),
            (
                "---",
                "timed out after 5s: killed the step's process group".into(),
            ),
        ],
    );
    finish(
        &env.store,
        run,
        "slow",
        1,
        StageStatus::Failed,
        Some("timed out after 5s"),
        false,
    )
    .await;
    end_run(&env.store, run, RunStatus::Failed, &[]).await;
    assert_eq!(reporter.send_due().await, 1);
    let checks = check_run_requests(&forge);
    assert_eq!(checks.len(), 1, "created final in one request");
    let body = &checks[0].body;
    assert_eq!(
        (body["status"].as_str(), body["conclusion"].as_str()),
        (Some("completed"), Some("timed_out"))
    );
    assert_eq!(body["output"]["title"], "Timed out: stage slow");
    assert!(body["completed_at"].is_string());
    assert_valid(&forge);
}

#[tokio::test]
async fn an_invalid_pipeline_fails_with_annotations_fifty_per_request() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let mut run = new_run("ci", "bad1", &[], None);
    run.status = RunStatus::Error;
    let mut problems: Vec<Value> = (1..=60)
        .map(|i| json!({ "file": ".deploylite/pipelines/ci.yaml", "line": i, "col": 3, "message": format!("unknown key `k{i}`") }))
        .collect();
    problems.insert(0, json!({ "file": ".deploylite/pipelines/ci.yaml", "line": 0, "col": 0, "message": "the file is empty" }));
    run.errors = Some(Value::Array(problems).to_string());
    let run = record(&env.store, run).await;
    assert_eq!(reporter.send_due().await, 1);

    let checks = check_run_requests(&forge);
    assert_eq!(
        checks.len(),
        2,
        "61 annotations: 50 with the create, 11 in an update"
    );
    let create = &checks[0];
    assert_eq!(create.method, "POST");
    assert_eq!(
        (
            create.body["status"].as_str(),
            create.body["conclusion"].as_str()
        ),
        (Some("completed"), Some("failure"))
    );
    assert_eq!(
        create.body["output"]["title"],
        "Invalid pipeline: 61 problems"
    );
    let first = create.body["output"]["annotations"].as_array().unwrap();
    assert_eq!(first.len(), 50);
    assert_eq!(first[0]["path"], ".deploylite/pipelines/ci.yaml");
    assert_eq!(
        (
            first[0]["start_line"].as_u64(),
            first[0]["end_line"].as_u64()
        ),
        (Some(1), Some(1)),
        "line 0 is clamped"
    );
    assert!(first[0].get("start_column").is_none());
    assert_eq!(first[1]["start_line"], 1);
    assert_eq!(first[1]["start_column"], 3);
    assert_eq!(first[1]["annotation_level"], "failure");
    assert_eq!(first[1]["message"], "unknown key `k1`");
    assert!(create.body["output"]["summary"]
        .as_str()
        .unwrap()
        .contains(".deploylite/pipelines/ci.yaml:2:3: unknown key"));
    let more = checks[1].body["output"]["annotations"].as_array().unwrap();
    assert_eq!(checks[1].method, "PATCH");
    assert_eq!(more.len(), 11);
    assert_eq!(more[10]["message"], "unknown key `k60`");
    assert_eq!(
        env.store
            .forge_object("app", "check_run_annotations", &run.to_string())
            .await
            .unwrap()
            .as_deref(),
        Some("61")
    );
    assert_valid(&forge);
}

/// A run the `deploylite.run` gate denied (a real repository policy, evaluated by the gate the
/// watcher uses) fails its check run with every deny message in the summary, and the warnings
/// of an allowed run annotate its summary.
#[tokio::test]
async fn a_run_denied_by_policy_fails_its_check_listing_the_messages() {
    use deploylite_policy::{Now, Policies, Repository};
    use deploylite_reconciler::desired::ParseCache;
    use deploylite_reconciler::git::PipelineFile;
    use deploylite_reconciler::run_gate::{self, RunGateFacts};

    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let file = |path: &str, text: &str| PipelineFile {
        path: path.into(),
        blob_id: format!("{path}{}", text.len()),
        content: text.as_bytes().to_vec(),
    };
    let pipeline = file(
        ".deploylite/pipelines/ci.yaml",
        "name: ci\nstages:\n  build:\n    image: quay.io/miner/xmr\n    steps: [{run: make}]\n",
    );
    let policy = file(
        ".deploylite/policy/gate.rego",
        "package deploylite.run\nimport rego.v1\n\
         deny contains sprintf(\"image %s is not allowed\", [i]) if { some i in input.plan.images; startswith(i, \"quay.io/\") }\n\
         deny contains \"pipeline ci is frozen | today\" if input.plan.pipeline == \"ci\"\n\
         warn contains \"builds on main are slow\" if input.commit.branch == \"main\"\n",
    );
    let mut denied = new_run("ci", "deadbeef", &["build"], None);
    denied.spec = None;
    let mut runs = vec![denied];
    let facts = RunGateFacts {
        repository: Repository {
            name: "app".into(),
            default_branch: Some("main".into()),
        },
        author: None,
        now: Now::from_unix_ms(0),
    };
    let files = [pipeline];
    run_gate::apply(
        &mut runs,
        &files,
        &ParseCache::default(),
        &Policies::none(),
        &run_gate::repository_policies(&[policy]),
        &facts,
    );
    assert_eq!(runs[0].status, RunStatus::Error);
    let run_id = record(&env.store, runs.remove(0)).await;
    assert_eq!(reporter.send_due().await, 1);

    let checks = check_run_requests(&forge);
    assert_eq!(checks.len(), 1);
    let body = &checks[0].body;
    assert_eq!(
        (body["status"].as_str(), body["conclusion"].as_str()),
        (Some("completed"), Some("failure"))
    );
    assert_eq!(body["output"]["title"], "Denied by policy: 2 messages");
    let summary = body["output"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("### Denied by policy"), "{summary}");
    assert!(
        summary.contains("- image quay.io/miner/xmr is not allowed"),
        "{summary}"
    );
    assert!(
        summary.contains("- pipeline ci is frozen \\| today"),
        "a table-safe cell: {summary}"
    );
    assert!(summary.contains("### Policy warnings"), "{summary}");
    assert!(summary.contains("- builds on main are slow"), "{summary}");
    assert!(
        !summary.contains("### Problems"),
        "the denials are not listed twice: {summary}"
    );
    assert!(body["output"]["annotations"]
        .as_array()
        .is_none_or(|a| a.is_empty()));
    let (stored, stages) = env
        .store
        .get_run(run_id)
        .await
        .expect("read")
        .expect("the run");
    let decision = stored.policy.expect("the decision is recorded");
    assert_eq!(decision.deny.len(), 2);
    assert_eq!(decision.warn, ["builds on main are slow"]);
    assert_eq!(decision.revision_sha256.len(), 64);
    assert!(stages.iter().all(|s| s.status == StageStatus::Skipped));
    assert_valid(&forge);
}

#[tokio::test]
async fn a_skipped_run_is_reported_skipped() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let mut run = new_run("docs", "d0c5", &[], None);
    run.status = RunStatus::Skipped;
    run.pending_reason =
        Some("skipped: no changed file matches the pipeline's path filters".into());
    record(&env.store, run).await;
    assert_eq!(reporter.send_due().await, 1);
    let checks = check_run_requests(&forge);
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].body["name"], "deploylite/docs");
    assert_eq!(
        (
            checks[0].body["status"].as_str(),
            checks[0].body["conclusion"].as_str()
        ),
        (Some("completed"), Some("skipped"))
    );
    assert_valid(&forge);
}

// ---------------------------------------------------------------------------------------------
// GitHub token: commit statuses

#[tokio::test]
async fn a_token_sets_commit_statuses() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_token(&forge.url));
    let run = record(&env.store, new_run("ci", "5a5a5a", &["build"], None)).await;
    assert_eq!(reporter.send_due().await, 1);
    dispatch(&env.store, run, "build", 1).await;
    assert_eq!(reporter.send_due().await, 1);
    finish(
        &env.store,
        run,
        "build",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    end_run(&env.store, run, RunStatus::Success, &[]).await;
    assert_eq!(reporter.send_due().await, 1);

    let mut invalid = new_run("lint", "5a5a5a", &[], None);
    invalid.status = RunStatus::Error;
    invalid.errors = Some(json!([{ "file": ".deploylite/pipelines/lint.yaml", "line": 2, "col": 1, "message": "bad" }]).to_string());
    record(&env.store, invalid).await;
    let mut skipped = new_run("docs", "5a5a5a", &[], None);
    skipped.status = RunStatus::Skipped;
    record(&env.store, skipped).await;
    let cancelled = record(&env.store, new_run("deploy", "5a5a5a", &["ship"], None)).await;
    env.store
        .request_cancel(cancelled, "cancelled by alice")
        .await
        .unwrap();
    end_run(&env.store, cancelled, RunStatus::Cancelled, &[]).await;
    assert_eq!(reporter.send_due().await, 3);

    let statuses = forge.requests_to("POST", "/repos/octo/app/statuses/5a5a5a");
    let by = |context: &str| {
        statuses
            .iter()
            .filter(|r| r.body["context"] == context)
            .map(|r| r.body.clone())
            .collect::<Vec<_>>()
    };
    let ci = by("deploylite/ci");
    let states: Vec<&str> = ci.iter().map(|b| b["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "pending", "success"]);
    assert_eq!(ci[0]["description"], "Queued");
    assert_eq!(ci[1]["description"], "Running: 0 of 1 stages done");
    assert!(ci[2]["description"]
        .as_str()
        .unwrap()
        .starts_with("Succeeded"));
    assert_eq!(
        ci[2]["target_url"],
        format!("{PUBLIC_URL}/api/v1/runs/{run}")
    );
    let lint = by("deploylite/lint");
    assert_eq!(lint.len(), 1);
    assert_eq!(lint[0]["state"], "error");
    assert!(lint[0]["description"]
        .as_str()
        .unwrap()
        .contains("lint.yaml:2:1: bad"));
    let docs = by("deploylite/docs");
    assert_eq!(docs[0]["state"], "success");
    assert!(docs[0]["description"]
        .as_str()
        .unwrap()
        .contains("path filters"));
    let deploy = by("deploylite/deploy");
    assert_eq!(deploy.last().unwrap()["state"], "error");
    assert!(deploy.last().unwrap()["description"]
        .as_str()
        .unwrap()
        .starts_with("Cancelled"));
    for s in &statuses {
        assert!(s.body["description"].as_str().unwrap().chars().count() <= 140);
        assert_eq!(s.bearer(), Some(fake::PAT));
    }
    assert!(
        forge.requests_to("POST", "check-runs").is_empty(),
        "tokens cannot create check runs"
    );
    assert_valid(&forge);
}

/// A commit status is one per pipeline and commit: once a re-run exists, the earlier attempt's
/// late report (here: its cancellation, delivered after the re-run was created) must not
/// overwrite the re-run's status.
#[tokio::test]
async fn a_rerun_owns_the_commit_status_and_the_earlier_attempt_stays_quiet() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_token(&forge.url));
    let first = record(&env.store, new_run("ci", "5b5b5b", &["build"], None)).await;
    assert_eq!(reporter.send_due().await, 1);
    env.store
        .request_cancel(first, "cancelled by alice")
        .await
        .unwrap();
    end_run(&env.store, first, RunStatus::Cancelled, &[]).await;
    let mut again = new_run("ci", "5b5b5b", &["build"], None);
    again.run_attempt = 2;
    record(&env.store, again).await;
    reporter.send_due().await;

    let states: Vec<String> = forge
        .requests_to("POST", "/repos/octo/app/statuses/5b5b5b")
        .iter()
        .map(|r| format!("{} {}", r.body["state"], r.body["description"]))
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(
        states.iter().all(|s| s.starts_with("\"pending\"")),
        "{states:?}"
    );
    assert!(
        !states.iter().any(|s| s.contains("Cancelled")),
        "the superseded attempt overwrote the re-run's status: {states:?}"
    );
    assert_valid(&forge);
}

// ---------------------------------------------------------------------------------------------
// Delivery

#[tokio::test]
async fn a_forge_error_is_retried_until_delivered() {
    let forge = FakeForge::github().await;
    forge.script("POST", "/check-runs", vec![Reply::status(500)]);
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    record(&env.store, new_run("ci", "aaa", &["build"], None)).await;
    let (shutdown, task) = spawn_loop(&reporter);
    wait_delivered(&env.store, WITHIN).await;
    shutdown.cancel();
    task.await.unwrap();
    let posts = forge.requests_to("POST", "/check-runs");
    assert_eq!(
        posts.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 201]
    );
    assert!(
        posts[1].at_ms - posts[0].at_ms >= 140,
        "backed off (at least half of 300 ms)"
    );
    assert_valid(&forge);
}

#[tokio::test]
async fn a_rate_limit_holds_every_request_until_the_reset() {
    let forge = FakeForge::github().await;
    let reset = chrono::Utc::now().timestamp() + 2;
    forge.script(
        "POST",
        "/check-runs",
        vec![Reply::status(403)
            .header("x-ratelimit-limit", 5000)
            .header("x-ratelimit-remaining", 0)
            .header("x-ratelimit-reset", reset)],
    );
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let first = record(&env.store, new_run("ci", "aaa", &["build"], None)).await;
    let (shutdown, task) = spawn_loop(&reporter);
    wait_until(WITHIN, "the rate-limited answer", || async {
        !forge.requests_to("POST", "/check-runs").is_empty()
    })
    .await;
    // Another run's report in the meantime must wait for the reset too.
    let second = record(&env.store, new_run("lint", "aaa", &["lint"], None)).await;
    wait_delivered(&env.store, WITHIN).await;
    shutdown.cancel();
    task.await.unwrap();
    let posts = forge.requests_to("POST", "/check-runs");
    assert_eq!(posts[0].status, 403);
    let limited_at = posts[0].at_ms;
    let requests = forge.requests();
    let after: Vec<&Recorded> = requests.iter().filter(|r| r.at_ms > limited_at).collect();
    assert!(!after.is_empty());
    for r in &after {
        assert!(
            r.at_ms >= reset * 1000,
            "{} {} sent at {} before the reset at {}",
            r.method,
            r.path,
            r.at_ms,
            reset * 1000
        );
    }
    for run in [first, second] {
        assert!(env
            .store
            .forge_object("app", "check_run", &run.to_string())
            .await
            .unwrap()
            .is_some());
    }
    assert_valid(&forge);
}

#[tokio::test]
async fn undelivered_reports_survive_a_restart() {
    let forge = FakeForge::github().await;
    forge.set_down(true);
    let env = env().await;
    let first = reporter(&env, github_app(&forge.url));
    let run = record(&env.store, new_run("ci", "r35t", &["build"], None)).await;
    let (shutdown, task) = spawn_loop(&first);
    wait_until(WITHIN, "a failed attempt", || async {
        forge.requests().iter().any(|r| r.status == 503)
    })
    .await;
    wait_until(WITHIN, "the failure recorded", || async {
        env.store
            .due_reports(i64::MAX, 10)
            .await
            .unwrap()
            .first()
            .is_some_and(|d| d.attempts >= 1)
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    drop(first);
    dispatch(&env.store, run, "build", 1).await; // the run moves on while nobody reports
    env.store.close().await;

    // A new daemon on the same database.
    let store = Store::connect(&env.db_url, SqliteSync::Normal)
        .await
        .unwrap();
    assert!(store.pending_report_count().await.unwrap() > 0);
    forge.set_down(false);
    let second = Reporter::with_config(
        store.clone(),
        env.data.clone(),
        Arc::new(github_app(&forge.url)),
        fast_config(),
    );
    let (shutdown, task) = spawn_loop(&second);
    wait_delivered(&store, WITHIN).await;
    shutdown.cancel();
    task.await.unwrap();
    let delivered: Vec<Recorded> = check_run_requests(&forge);
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert_eq!(
        delivered[0].body["status"], "in_progress",
        "the current state, not the one queued before"
    );
    assert_valid(&forge);
}

#[tokio::test]
async fn a_final_state_is_never_followed_by_a_stale_one() {
    let forge = FakeForge::github().await;
    forge.set_delay(Duration::from_millis(120)); // sends overlap with the run's changes
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let run = record(&env.store, new_run("ci", "f1na1", &["a", "b", "c"], None)).await;
    let (shutdown, task) = spawn_loop(&reporter);
    // Each change lands while a send that rendered the previous state is being answered.
    let in_flight_after = |seen: u64| {
        let forge = &forge;
        move || async move { forge.arrivals() > seen && forge.in_progress() > 0 }
    };
    wait_until(WITHIN, "the first send", in_flight_after(0)).await;
    for stage in ["a", "b", "c"] {
        let seen = forge.arrivals();
        dispatch(&env.store, run, stage, 1).await;
        wait_until(WITHIN, "a send in flight", in_flight_after(seen)).await;
        let seen = forge.arrivals();
        finish(&env.store, run, stage, 1, StageStatus::Success, None, false).await;
        wait_until(WITHIN, "a send in flight", in_flight_after(seen)).await;
    }
    end_run(&env.store, run, RunStatus::Success, &[]).await;
    wait_delivered(&env.store, WITHIN).await;
    shutdown.cancel();
    task.await.unwrap();

    let checks = check_run_requests(&forge);
    assert!(checks.len() >= 5, "{checks:#?}");
    let last = checks.last().unwrap();
    assert_eq!(
        (
            last.body["status"].as_str(),
            last.body["conclusion"].as_str()
        ),
        (Some("completed"), Some("success"))
    );
    let first_done = checks
        .iter()
        .position(|r| r.body["status"] == "completed")
        .unwrap();
    for later in &checks[first_done..] {
        assert_eq!(
            later.body["status"], "completed",
            "a stale state after the final one: {later:#?}"
        );
    }
    assert_eq!(
        forge.max_concurrency("/check-runs"),
        1,
        "one send per run at a time"
    );
    assert_valid(&forge);
}

#[tokio::test]
async fn a_repository_without_a_forge_is_marked_sent() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let mut run = new_run("ci", "0000", &["build"], None);
    run.repo = "elsewhere".into();
    record(&env.store, run).await;
    let reporter = reporter(&env, github_app(&forge.url));
    assert_eq!(reporter.send_due().await, 1);
    assert_eq!(env.store.pending_report_count().await.unwrap(), 0);
    assert!(forge.requests().is_empty());
    // And a forge without credentials: nothing to send either.
    record(&env.store, new_run("ci", "1111", &["build"], None)).await;
    let no_auth = Forges::new(
        Some(deploylite_forge::forges::GithubConfig {
            api_url: forge.url.clone(),
            auth: None,
            webhook_secret: None,
        }),
        None,
        None,
        1 << 20,
        vec![github_repo("octo/app")],
    );
    assert_eq!(
        Reporter::new(env.store.clone(), env.data.clone(), Arc::new(no_auth))
            .send_due()
            .await,
        1
    );
    assert!(forge.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Pull request comments

#[tokio::test]
async fn a_pull_request_has_one_comment_edited_in_place() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let ci = record(
        &env.store,
        new_run("ci", "head1", &["build", "test"], Some(7)),
    )
    .await;
    let lint = record(&env.store, new_run("lint", "head1", &["lint"], Some(7))).await;
    assert_eq!(reporter.send_due().await, 2);
    dispatch(&env.store, ci, "build", 1).await;
    finish(
        &env.store,
        ci,
        "build",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    dispatch(&env.store, lint, "lint", 1).await;
    finish(
        &env.store,
        lint,
        "lint",
        1,
        StageStatus::Failed,
        Some("step 1 exited with 1"),
        false,
    )
    .await;
    end_run(&env.store, lint, RunStatus::Failed, &[]).await;
    assert_eq!(reporter.send_due().await, 2);
    // A new head commit: the comment now shows its runs.
    let next = record(&env.store, new_run("ci", "head2", &["build"], Some(7))).await;
    assert_eq!(reporter.send_due().await, 1);

    let posts = forge.requests_to("POST", "/issues/7/comments");
    assert_eq!(posts.len(), 1, "exactly one comment created");
    let id = env
        .store
        .forge_object("app", "pr_comment", "7")
        .await
        .unwrap()
        .expect("comment id kept");
    let patches = forge.requests_to("PATCH", &format!("/issues/comments/{id}"));
    assert!(patches.len() >= 2, "edited in place: {patches:#?}");
    assert_eq!(
        forge.requests_to("GET", "/issues/7/comments").len(),
        1,
        "searched once, before creating"
    );
    let comments = forge.comments(7);
    assert_eq!(comments.len(), 1);
    let body = &comments[0].1;
    assert!(body.starts_with(PR_COMMENT_MARKER));
    assert!(body.contains("| Pipeline | Status | Stages | Run |"));
    assert!(body.contains("`head2`"), "{body}");
    assert!(
        body.contains(&format!("[#{next}]({PUBLIC_URL}/api/v1/runs/{next})")),
        "{body}"
    );
    assert!(
        !body.contains("`lint`"),
        "only the latest head's pipelines: {body}"
    );
    // The last update before the new head showed both pipelines and the failure.
    let before = patches
        .iter()
        .rev()
        .map(|p| p.body["body"].as_str().unwrap())
        .find(|b| !b.contains("head2"))
        .expect("an update for the first head");
    assert!(
        before.contains("| `ci` | 🔄 running | 1/2 done: ✅ build · ⏳ test |"),
        "{before}"
    );
    assert!(before.contains("| `lint` | ❌ failed |"), "{before}");
    assert!(
        before.contains("stage `lint` failed (step 1 exited with 1)"),
        "{before}"
    );
    assert_valid(&forge);
}

#[tokio::test]
async fn an_existing_comment_is_found_by_its_marker() {
    let forge = FakeForge::github().await;
    forge.add_comment(9, "Looks good to me");
    let ours = forge.add_comment(9, &format!("{PR_COMMENT_MARKER}\nold content"));
    let env = env().await;
    let reporter = reporter(&env, github_token(&forge.url));
    record(&env.store, new_run("ci", "abc", &["build"], Some(9))).await;
    assert_eq!(reporter.send_due().await, 1);
    assert!(
        forge.requests_to("POST", "/issues/9/comments").is_empty(),
        "no duplicate comment"
    );
    assert_eq!(
        forge
            .requests_to("PATCH", &format!("/issues/comments/{ours}"))
            .len(),
        1
    );
    assert_eq!(
        env.store
            .forge_object("app", "pr_comment", "9")
            .await
            .unwrap(),
        Some(ours.to_string())
    );
    assert!(forge
        .comments(9)
        .iter()
        .any(|(id, body)| *id == ours && body.contains("`ci`")));
    assert_valid(&forge);
}

// ---------------------------------------------------------------------------------------------
// GitHub App tokens

#[tokio::test]
async fn installation_tokens_are_refreshed_before_they_expire() {
    let forge = FakeForge::github().await;
    forge.push_token_ttl(5); // expires within octocrab's 30 s margin: renewed before next use
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let run = record(&env.store, new_run("ci", "t0k3n", &["build"], None)).await;
    assert_eq!(reporter.send_due().await, 1);
    dispatch(&env.store, run, "build", 1).await;
    assert_eq!(reporter.send_due().await, 1);
    finish(
        &env.store,
        run,
        "build",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    end_run(&env.store, run, RunStatus::Success, &[]).await;
    assert_eq!(reporter.send_due().await, 1);

    let token_requests = forge.requests_to("POST", "/app/installations/4242/access_tokens");
    assert_eq!(
        token_requests.len(),
        2,
        "the first token expires soon: one refresh, then the new one is reused"
    );
    for r in &token_requests {
        let jwt = r.bearer().expect("a JWT");
        assert_eq!(jwt.split('.').count(), 3);
    }
    let tokens = forge.issued_tokens();
    // Every API request carries the token most recently issued before it.
    let requests = forge.requests();
    let mut current: Option<&str> = None;
    let mut issued = 0;
    for r in &requests {
        if r.path.ends_with("/access_tokens") {
            current = Some(tokens[issued].as_str());
            issued += 1;
        } else if r.path.contains("/check-runs") {
            assert_eq!(r.bearer(), current, "{} {}", r.method, r.path);
            assert_eq!(r.status / 100, 2);
        }
    }
    let checks = check_run_requests(&forge);
    assert_eq!(checks.len(), 3);
    assert_eq!(checks[0].bearer(), Some(tokens[0].as_str()));
    assert_eq!(checks[2].bearer(), Some(tokens[1].as_str()));
    assert_valid(&forge);
}

// ---------------------------------------------------------------------------------------------
// GitLab

#[tokio::test]
async fn gitlab_statuses_and_one_merge_request_note() {
    let forge = FakeForge::gitlab().await;
    let env = env().await;
    let reporter = reporter(&env, gitlab(&forge.url));
    let run = record(
        &env.store,
        new_run("ci", "91ab", &["build", "test"], Some(11)),
    )
    .await;
    assert_eq!(reporter.send_due().await, 1);
    dispatch(&env.store, run, "build", 1).await;
    assert_eq!(reporter.send_due().await, 1);
    finish(
        &env.store,
        run,
        "build",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    dispatch(&env.store, run, "test", 1).await;
    assert_eq!(
        reporter.send_due().await,
        1,
        "still running: no second `running` status"
    );
    finish(
        &env.store,
        run,
        "test",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    end_run(&env.store, run, RunStatus::Success, &[]).await;
    let mut skipped = new_run("docs", "91ab", &[], Some(11));
    skipped.status = RunStatus::Skipped;
    record(&env.store, skipped).await;
    assert_eq!(reporter.send_due().await, 2);
    assert_eq!(env.store.pending_report_count().await.unwrap(), 0);

    let statuses = forge.requests_to("POST", "/api/v4/projects/group%2Fsub%2Fapp/statuses/91ab");
    let ci: Vec<&Value> = statuses
        .iter()
        .filter(|r| r.body["name"] == "deploylite/ci")
        .map(|r| &r.body)
        .collect();
    assert_eq!(
        ci.iter()
            .map(|b| b["state"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["pending", "running", "success"]
    );
    assert_eq!(
        ci[2]["target_url"],
        format!("{PUBLIC_URL}/api/v1/runs/{run}")
    );
    assert!(
        statuses.iter().all(|r| r.status == 201),
        "no refused transition: {statuses:#?}"
    );
    let docs: Vec<&Value> = statuses
        .iter()
        .filter(|r| r.body["name"] == "deploylite/docs")
        .map(|r| &r.body)
        .collect();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["state"], "success");
    assert!(docs[0]["description"]
        .as_str()
        .unwrap()
        .contains("Skipped by path filters"));
    for r in forge.requests() {
        assert_eq!(
            r.headers.get("private-token").map(String::as_str),
            Some(fake::PAT)
        );
        assert!(
            !r.headers.contains_key("authorization"),
            "no GitHub auth sent to GitLab"
        );
    }

    assert_eq!(
        forge.requests_to("POST", "/merge_requests/11/notes").len(),
        1,
        "one note"
    );
    let note = env
        .store
        .forge_object("app", "pr_comment", "11")
        .await
        .unwrap()
        .expect("note id kept");
    assert!(
        forge
            .requests_to("PUT", &format!("/merge_requests/11/notes/{note}"))
            .len()
            >= 2,
        "edited in place"
    );
    let notes = forge.comments(11);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].1.starts_with(PR_COMMENT_MARKER));
    assert!(
        notes[0].1.contains("| `ci` | ✅ success |"),
        "{}",
        notes[0].1
    );
    assert!(
        notes[0].1.contains("| `docs` | ⏭️ skipped |"),
        "{}",
        notes[0].1
    );
    assert_valid(&forge);
}

#[tokio::test]
async fn gitlab_treats_a_refused_same_state_transition_as_delivered() {
    let forge = FakeForge::gitlab().await;
    let env = env().await;
    let reporter = reporter(&env, gitlab(&forge.url));
    let run = record(&env.store, new_run("ci", "77aa", &["build", "test"], None)).await;
    dispatch(&env.store, run, "build", 1).await;
    assert_eq!(reporter.send_due().await, 1);
    // The state we remembered is lost (as after a crash between the send and its record):
    // GitLab refuses the repeated `running` with a 400, which means it has it already.
    env.store
        .set_forge_object("app", "commit_status", &run.to_string(), "")
        .await
        .unwrap();
    finish(
        &env.store,
        run,
        "build",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    assert_eq!(reporter.send_due().await, 1);
    let statuses = forge.requests_to("POST", "/statuses/77aa");
    assert_eq!(
        statuses
            .iter()
            .map(|r| (r.body["state"].as_str().unwrap(), r.status))
            .collect::<Vec<_>>(),
        [("running", 201), ("running", 400)]
    );
    assert_eq!(env.store.pending_report_count().await.unwrap(), 0);
    // Any other 400 is a failure, retried later.
    forge.script("POST", "/statuses/77aa", vec![Reply::status(400)]);
    dispatch(&env.store, run, "test", 1).await;
    finish(
        &env.store,
        run,
        "test",
        1,
        StageStatus::Success,
        None,
        false,
    )
    .await;
    end_run(&env.store, run, RunStatus::Success, &[]).await;
    assert_eq!(reporter.send_due().await, 0, "retried later");
    assert!(env.store.pending_report_count().await.unwrap() > 0);
    assert_valid(&forge);
}
