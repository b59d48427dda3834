//! Deployments mirrored to the forges end to end: deployments written to a real SQLite store
//! through the environment controller's transaction (`begin_environments`, `insert_deployment`,
//! `transition`), reported by the `Reporter` to fake GitHub/GitLab servers over HTTP. Every
//! request to GitHub is validated against the OpenAPI subset in `tests/fixtures/github/`
//! (which has the deployments endpoints); GitLab's against its documented parameters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod report_support;

use std::time::Duration;

use deploylite_pipeline::{Approval, Environment, Follows};
use deploylite_reconciler::status::{DeploymentAction, DeploymentStatus, StageStatus};
use deploylite_reconciler::store::{NewDeployment, Store};
use report_support::fake::{FakeForge, Recorded};
use report_support::openapi::OpenApi;
use report_support::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WITHIN: Duration = Duration::from_secs(20);
const VERSION: &str = "0123456789abcdef0123456789abcdef01234567";

fn assert_valid(forge: &FakeForge) {
    let violations = forge.violations();
    assert!(
        violations.is_empty(),
        "requests the forge API would refuse:\n{}",
        violations.join("\n")
    );
}

fn new_deployment(environment: &str, reason: &str) -> NewDeployment {
    NewDeployment {
        repo: "app".into(),
        environment: environment.into(),
        version: VERSION.into(),
        attempt: Some(1),
        git_ref: Some("refs/heads/main".into()),
        previous_version: None,
        action: DeploymentAction::Deploy,
        status: DeploymentStatus::Waiting,
        pending_reason: Some(reason.into()),
        triggered_by: "follows refs/heads/main".into(),
        manual: false,
        rollback_of: None,
    }
}

async fn insert(store: &Store, new: &NewDeployment) -> i64 {
    let mut tx = store.begin_environments().await.expect("tx");
    let id = tx
        .insert_deployment(new)
        .await
        .expect("insert")
        .expect("a new deployment");
    tx.commit().await.expect("commit");
    id
}

async fn transition(
    store: &Store,
    id: i64,
    from: DeploymentStatus,
    to: DeploymentStatus,
    errors: &[String],
) {
    let mut tx = store.begin_environments().await.expect("tx");
    assert!(
        tx.transition(id, from, to, None, errors)
            .await
            .expect("transition"),
        "{from} -> {to} moved"
    );
    tx.commit().await.expect("commit");
}

fn ok(requests: Vec<Recorded>) -> Vec<Recorded> {
    requests.into_iter().filter(|r| r.status < 300).collect()
}

fn deployment_posts(forge: &FakeForge) -> Vec<Recorded> {
    ok(forge.requests())
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/deployments"))
        .collect()
}

fn deployment_statuses(forge: &FakeForge) -> Vec<Recorded> {
    ok(forge.requests())
        .into_iter()
        .filter(|r| {
            r.method == "POST" && r.path.contains("/deployments/") && r.path.ends_with("/statuses")
        })
        .collect()
}

async fn wait_deployments_delivered(store: &Store) {
    wait_until(WITHIN, "every deployment report delivered", || async {
        store
            .pending_deployment_report_count()
            .await
            .expect("count")
            == 0
    })
    .await;
}

#[test]
fn the_openapi_subset_has_the_deployment_endpoints_and_refuses_bad_states() {
    let spec = OpenApi::github();
    let good = json!({ "ref": VERSION, "environment": "production", "auto_merge": false,
                       "required_contexts": [], "transient_environment": false,
                       "production_environment": true });
    assert_eq!(
        spec.validate_request("POST", "/repos/o/r/deployments", Some(&good)),
        Vec::<String>::new()
    );
    let errors = spec.validate_request(
        "POST",
        "/repos/o/r/deployments/12/statuses",
        Some(&json!({ "state": "deploying" })),
    );
    assert!(
        errors.iter().any(|e| e.contains("not one of")),
        "{errors:?}"
    );
    let errors = spec.validate_request(
        "POST",
        "/repos/o/r/deployments",
        Some(&json!({ "environment": "production" })),
    );
    assert!(errors.iter().any(|e| e.contains("ref")), "{errors:?}");
}

#[tokio::test]
async fn a_deployment_is_one_github_deployment_with_a_status_per_change() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));

    let id = insert(
        &env.store,
        &new_deployment("production", "requires: ci running on 0123456"),
    )
    .await;
    reporter.send_due().await;
    transition(
        &env.store,
        id,
        DeploymentStatus::Waiting,
        DeploymentStatus::Queued,
        &[],
    )
    .await;
    reporter.send_due().await;
    transition(
        &env.store,
        id,
        DeploymentStatus::Queued,
        DeploymentStatus::Deploying,
        &[],
    )
    .await;
    reporter.send_due().await;
    transition(
        &env.store,
        id,
        DeploymentStatus::Deploying,
        DeploymentStatus::Succeeded,
        &[],
    )
    .await;
    reporter.send_due().await;
    // Nothing left, and sending again sends nothing more.
    assert_eq!(
        env.store.pending_deployment_report_count().await.unwrap(),
        0
    );
    reporter.send_due().await;

    assert_valid(&forge);
    let created = deployment_posts(&forge);
    assert_eq!(created.len(), 1, "one GitHub deployment: {created:?}");
    let body = &created[0].body;
    assert_eq!(body["ref"], VERSION);
    assert_eq!(body["environment"], "production");
    assert_eq!(body["auto_merge"], false);
    assert_eq!(body["required_contexts"], json!([]));
    assert_eq!(body["transient_environment"], false);
    assert_eq!(body["production_environment"], true);

    let statuses = deployment_statuses(&forge);
    let states: Vec<&str> = statuses
        .iter()
        .map(|r| r.body["state"].as_str().unwrap_or(""))
        .collect();
    // Waiting and queued are both GitHub's `queued`; the first says why it waits.
    assert_eq!(states, ["queued", "queued", "in_progress", "success"]);
    assert_eq!(
        statuses[0].body["description"],
        "waiting: requires: ci running on 0123456"
    );
    let deployment_id = created[0].path.clone();
    for s in &statuses {
        assert!(
            s.path.starts_with(&format!("{deployment_id}/")),
            "{}",
            s.path
        );
        assert_eq!(s.body["environment"], "production");
        assert_eq!(
            s.body["log_url"],
            format!("{PUBLIC_URL}/environments/app/production")
        );
        assert!(s.body["description"].as_str().unwrap().chars().count() <= 140);
    }
    // The status requests went to the id GitHub gave the deployment.
    assert!(
        statuses.iter().all(|s| s
            .path
            .split('/')
            .nth(5)
            .is_some_and(|n| n.parse::<u64>().is_ok())),
        "{:?}",
        statuses.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_staging_deployment_is_not_a_production_environment() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_token(&forge.url));
    let id = insert(&env.store, &new_deployment("staging", "approval: 0 of 1")).await;
    transition(
        &env.store,
        id,
        DeploymentStatus::Waiting,
        DeploymentStatus::Superseded,
        &[],
    )
    .await;
    reporter.send_due().await;
    assert_valid(&forge);
    // Superseded before GitHub ever saw it: nothing worth a deployment.
    assert!(deployment_posts(&forge).is_empty());

    let id = insert(
        &env.store,
        &NewDeployment {
            version: "1111111111111111111111111111111111111111".into(),
            ..new_deployment("staging", "approval: 0 of 1")
        },
    )
    .await;
    reporter.send_due().await;
    transition(
        &env.store,
        id,
        DeploymentStatus::Waiting,
        DeploymentStatus::Cancelled,
        &["cancelled by token:alice".into()],
    )
    .await;
    reporter.send_due().await;
    assert_valid(&forge);
    let created = deployment_posts(&forge);
    assert_eq!(created.len(), 1);
    assert!(created[0].body.get("production_environment").is_none());
    let states: Vec<Value> = deployment_statuses(&forge)
        .iter()
        .map(|r| r.body["state"].clone())
        .collect();
    assert_eq!(states, [json!("queued"), json!("inactive")]);
}

#[tokio::test]
async fn a_gitlab_deployment_is_created_when_it_leaves_waiting_then_updated() {
    let forge = FakeForge::gitlab().await;
    let env = env().await;
    let reporter = reporter(&env, gitlab(&forge.url));
    let id = insert(
        &env.store,
        &new_deployment("production", "approval: 0 of 1"),
    )
    .await;
    reporter.send_due().await;
    // GitLab's API cannot record a deployment that has not started.
    assert!(forge.requests().is_empty(), "{:?}", forge.requests());
    for (from, to) in [
        (DeploymentStatus::Waiting, DeploymentStatus::Queued),
        (DeploymentStatus::Queued, DeploymentStatus::Deploying),
        (DeploymentStatus::Deploying, DeploymentStatus::Verifying),
        (DeploymentStatus::Verifying, DeploymentStatus::Succeeded),
    ] {
        transition(&env.store, id, from, to, &[]).await;
        reporter.send_due().await;
    }
    assert_valid(&forge);
    let requests = ok(forge.requests());
    let calls: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(requests.len(), 2, "{calls:?}");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(
        requests[0].path,
        "/api/v4/projects/group%2Fsub%2Fapp/deployments"
    );
    assert_eq!(
        requests[0].body,
        json!({ "environment": "production", "sha": VERSION, "ref": "main", "tag": false,
                "status": "running" })
    );
    let created_id = requests[0].status;
    assert_eq!(created_id, 201);
    assert_eq!(requests[1].method, "PUT");
    assert!(
        requests[1]
            .path
            .starts_with("/api/v4/projects/group%2Fsub%2Fapp/deployments/"),
        "{}",
        requests[1].path
    );
    assert_eq!(requests[1].body, json!({ "status": "success" }));
}

#[tokio::test]
async fn a_failed_gitlab_deployment_is_failed_there() {
    let forge = FakeForge::gitlab().await;
    let env = env().await;
    let reporter = reporter(&env, gitlab(&forge.url));
    let id = insert(&env.store, &new_deployment("staging", "lock")).await;
    for (from, to) in [
        (DeploymentStatus::Waiting, DeploymentStatus::Queued),
        (DeploymentStatus::Queued, DeploymentStatus::Deploying),
        (DeploymentStatus::Deploying, DeploymentStatus::RollingBack),
        (DeploymentStatus::RollingBack, DeploymentStatus::RolledBack),
    ] {
        transition(&env.store, id, from, to, &[]).await;
        reporter.send_due().await;
    }
    assert_valid(&forge);
    let statuses: Vec<Value> = ok(forge.requests())
        .iter()
        .map(|r| r.body["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("running"), json!("failed")]);
}

async fn reject(store: &Store, environment: &str, deny: &[&str]) -> i64 {
    let id = insert(store, &new_deployment(environment, "policy")).await;
    let decision = deploylite_policy::Decision {
        deny: deny.iter().map(|m| m.to_string()).collect(),
        warn: vec!["deploying on a Friday".into()],
        revision_sha256: "ab".repeat(32),
        eval_time: Duration::from_micros(42),
    };
    let mut tx = store.begin_environments().await.expect("tx");
    tx.record_policy(id, &decision).await.expect("policy");
    let errors: Vec<String> = deny
        .iter()
        .map(|m| format!("denied by policy: {m}"))
        .collect();
    assert!(tx
        .transition(
            id,
            DeploymentStatus::Waiting,
            DeploymentStatus::Rejected,
            None,
            &errors
        )
        .await
        .expect("reject"));
    tx.commit().await.expect("commit");
    id
}

const DENY: [&str; 2] = [
    "production deploys only from the default branch",
    "required pipeline `ci` is not green",
];

#[tokio::test]
async fn a_rejected_deployment_is_a_failing_check_listing_the_deny_messages() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    reject(&env.store, "production", &DENY).await;
    reporter.send_due().await;
    reporter.send_due().await;
    assert_valid(&forge);

    let checks: Vec<Recorded> = ok(forge.requests())
        .into_iter()
        .filter(|r| r.path.ends_with("/check-runs"))
        .collect();
    assert_eq!(checks.len(), 1, "one check run");
    let check = &checks[0].body;
    assert_eq!(check["name"], "deploylite/deploy: production");
    assert_eq!(check["head_sha"], VERSION);
    assert_eq!(check["status"], "completed");
    assert_eq!(check["conclusion"], "failure");
    let summary = check["output"]["summary"].as_str().unwrap();
    for m in DENY {
        assert!(summary.contains(&format!("- {m}")), "{summary}");
    }
    assert!(summary.contains("deploying on a Friday"), "{summary}");
    assert_eq!(check["output"]["title"], "Deployment rejected: 2 messages");

    // The deployment itself is GitHub's `error`.
    let statuses = deployment_statuses(&forge);
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].body["state"], "error");
    assert!(statuses[0].body["description"]
        .as_str()
        .unwrap()
        .starts_with("rejected: denied by policy: production deploys only"));
}

#[tokio::test]
async fn a_rejected_deployment_is_a_failing_commit_status_with_a_token_and_on_gitlab() {
    let github = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_token(&github.url));
    reject(&env.store, "production", &DENY).await;
    reporter.send_due().await;
    assert_valid(&github);
    let statuses: Vec<Recorded> = ok(github.requests())
        .into_iter()
        .filter(|r| r.path.contains(&format!("/statuses/{VERSION}")))
        .collect();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].body["state"], "failure");
    assert_eq!(statuses[0].body["context"], "deploylite/deploy: production");
    assert!(statuses[0].body["description"]
        .as_str()
        .unwrap()
        .contains(DENY[0]));

    let gitlab_forge = FakeForge::gitlab().await;
    let env = report_support::env().await;
    let reporter = report_support::reporter(&env, gitlab(&gitlab_forge.url));
    reject(&env.store, "production", &DENY).await;
    reporter.send_due().await;
    assert_valid(&gitlab_forge);
    let requests = ok(gitlab_forge.requests());
    assert_eq!(requests.len(), 1, "only the commit status: {requests:?}");
    assert_eq!(
        requests[0].path,
        format!("/api/v4/projects/group%2Fsub%2Fapp/statuses/{VERSION}")
    );
    assert_eq!(requests[0].body["state"], "failed");
    assert_eq!(requests[0].body["name"], "deploylite/deploy: production");
    let description = requests[0].body["description"].as_str().unwrap();
    assert!(description.contains(DENY[0]) && description.contains(DENY[1]));
}

#[tokio::test]
async fn a_forge_outage_delays_deployment_reports_without_losing_them() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    forge.set_down(true);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reporter.clone().run(shutdown.clone()));

    let id = insert(&env.store, &new_deployment("production", "requires: ci")).await;
    transition(
        &env.store,
        id,
        DeploymentStatus::Waiting,
        DeploymentStatus::Queued,
        &[],
    )
    .await;
    wait_until(WITHIN, "two refused attempts", || async {
        forge.requests().iter().filter(|r| r.status == 503).count() >= 2
    })
    .await;
    // Changes during the outage join the pending retry.
    transition(
        &env.store,
        id,
        DeploymentStatus::Queued,
        DeploymentStatus::Deploying,
        &[],
    )
    .await;
    transition(
        &env.store,
        id,
        DeploymentStatus::Deploying,
        DeploymentStatus::Succeeded,
        &[],
    )
    .await;
    assert!(env.store.pending_deployment_report_count().await.unwrap() > 0);
    forge.set_down(false);
    wait_deployments_delivered(&env.store).await;
    shutdown.cancel();
    task.await.expect("the reporter stops");

    assert_valid(&forge);
    assert_eq!(
        deployment_posts(&forge).len(),
        1,
        "one deployment, not lost, not doubled"
    );
    let states: Vec<Value> = deployment_statuses(&forge)
        .iter()
        .map(|r| r.body["state"].clone())
        .collect();
    assert_eq!(states.last(), Some(&json!("success")), "{states:?}");
}

#[tokio::test]
async fn deployments_of_a_repository_without_a_forge_are_done_with_at_once() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    insert(
        &env.store,
        &NewDeployment {
            repo: "elsewhere".into(),
            ..new_deployment("production", "requires: ci")
        },
    )
    .await;
    reporter.send_due().await;
    assert_eq!(
        env.store.pending_deployment_report_count().await.unwrap(),
        0
    );
    assert!(forge.requests().is_empty());
}

fn environment(name: &str, follows: Follows, requires: &[&str], approval: u32) -> Environment {
    Environment {
        name: name.into(),
        name_pos: Default::default(),
        deploy: "deploy".into(),
        follows,
        requires: requires.iter().map(|s| s.to_string()).collect(),
        promote_from: Vec::new(),
        approval: (approval > 0).then_some(Approval { required: approval }),
        verify: None,
        check: None,
        on_drift: Default::default(),
        rollback: Default::default(),
        spans: Default::default(),
        warnings: Vec::new(),
    }
}

#[tokio::test]
async fn the_pull_request_comment_plans_each_environment_of_the_base_branch() {
    let forge = FakeForge::github().await;
    let env = env().await;
    let reporter = reporter(&env, github_app(&forge.url));
    let mut staging = environment("staging", Follows::Branch("main".into()), &[], 0);
    staging.requires = vec![];
    let mut production = environment("production", Follows::Branch("main".into()), &["ci"], 1);
    production.promote_from = vec!["staging".into()];
    env.store
        .record_environment_definitions(
            "app",
            "ffffffffffffffffffffffffffffffffffffffff",
            &[
                staging,
                production,
                environment("release", Follows::Tag("v*".into()), &["ci"], 0),
                environment("legacy", Follows::Branch("v1".into()), &["ci"], 0),
            ],
        )
        .await
        .expect("environments");
    forge.set_pull_requests(vec![json!({ "number": 7, "base": { "ref": "main" } })]);
    let head = "abc1234def5678abc1234def5678abc1234def56";
    let run = record(&env.store, new_run("ci", head, &["test"], Some(7))).await;
    dispatch(&env.store, run, "test", 1).await;
    reporter.send_due().await;
    assert_valid(&forge);

    let comments = forge.comments(7);
    assert_eq!(comments.len(), 1);
    let body = &comments[0].1;
    assert!(
        body.contains(
            "- production: would deploy abc1234 after ci, promote_from staging, approval 0 of 1 — waiting: requires: ci running on abc1234\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("- staging: would deploy abc1234 on merge\n"),
        "{body}"
    );
    assert!(!body.contains("release"), "a tag's environment: {body}");
    assert!(
        !body.contains("legacy"),
        "another branch's environment: {body}"
    );

    // ci passes: production now waits for staging's deployment of the head.
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
    end_run(
        &env.store,
        run,
        deploylite_reconciler::status::RunStatus::Success,
        &[],
    )
    .await;
    reporter.send_due().await;
    let body = &forge.comments(7)[0].1;
    assert!(
        body.contains("— waiting: promote_from: staging has not deployed abc1234"),
        "{body}"
    );
    // The base was asked once for this head.
    assert_eq!(forge.requests_to("GET", "/pulls/7").len(), 1);
}

#[tokio::test]
async fn the_merge_request_note_plans_the_environments_of_its_target_branch() {
    let forge = FakeForge::gitlab().await;
    let env = env().await;
    let reporter = reporter(&env, gitlab(&forge.url));
    env.store
        .record_environment_definitions(
            "app",
            "ffffffffffffffffffffffffffffffffffffffff",
            &[
                environment("production", Follows::Branch("main".into()), &["ci"], 2),
                environment("next", Follows::Branch("develop".into()), &[], 0),
            ],
        )
        .await
        .expect("environments");
    forge.set_pull_requests(vec![json!({ "iid": 11, "target_branch": "develop" })]);
    let head = "abc1234def5678abc1234def5678abc1234def56";
    record(&env.store, new_run("ci", head, &["test"], Some(11))).await;
    reporter.send_due().await;
    assert_valid(&forge);
    let notes = forge.comments(11);
    assert_eq!(notes.len(), 1);
    let body = &notes[0].1;
    assert!(
        body.contains("- next: would deploy abc1234 on merge\n"),
        "{body}"
    );
    assert!(!body.contains("production"), "main's environment: {body}");
    let asked = forge
        .requests_to("GET", "/merge_requests/11")
        .into_iter()
        .filter(|r| r.path.ends_with("/merge_requests/11"))
        .count();
    assert_eq!(asked, 1, "the target branch is asked once");
}
