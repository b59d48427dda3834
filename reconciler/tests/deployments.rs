//! The deployments store (migration 0009) on SQLite and on PostgreSQL: the identity of a
//! deployment, guarded moves, approvals, holds, definitions, and the runs linked to a
//! deployment. Under CI the PostgreSQL half is mandatory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use deploylite_pipeline::Concurrency;
use deploylite_reconciler::status::{
    DeploymentAction, DeploymentStatus, Health, RunAction, RunStatus, StageStatus, Sync,
};
use deploylite_reconciler::store::{NewDeployment, NewRun, NewStage, Store};

mod support;

conformance!(
    "the PostgreSQL half of the deployments suite";
    a_deployment_is_recorded_once_per_identity,
    moves_are_guarded_by_the_status_they_expect,
    approvals_count_each_person_once_and_only_while_waiting,
    definitions_are_recorded_and_a_removed_environment_deploys_nothing,
    holds_and_the_environment_summary,
    a_deployments_runs_are_linked_to_it,
);

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn environment(name: &str) -> deploylite_pipeline::Environment {
    deploylite_pipeline::parse_environment(
        &format!("{name}.yaml"),
        &format!("name: {name}\ndeploy: deploy\nfollows: {{ branch: main }}\nrequires: [ci]\n"),
    )
    .expect("a valid environment")
}

fn automation(env: &str, version: &str) -> NewDeployment {
    NewDeployment {
        repo: "app".into(),
        environment: env.into(),
        version: version.into(),
        attempt: Some(1),
        git_ref: Some("refs/heads/main".into()),
        previous_version: None,
        action: DeploymentAction::Deploy,
        status: DeploymentStatus::Waiting,
        pending_reason: Some("waiting".into()),
        triggered_by: "follows refs/heads/main".into(),
        manual: false,
        rollback_of: None,
    }
}

async fn insert(store: &Store, new: &NewDeployment) -> Option<i64> {
    let mut tx = store.begin_environments().await.expect("tx");
    let id = tx.insert_deployment(new).await.expect("insert");
    tx.commit().await.expect("commit");
    id
}

async fn a_deployment_is_recorded_once_per_identity(store: &Store) {
    store
        .record_environment_definitions("app", SHA_A, &[environment("staging")])
        .await
        .expect("definitions");
    let first = insert(store, &automation("staging", SHA_A)).await;
    assert!(first.is_some());
    // A poll, a webhook and a restart all ask for attempt 1 again: nothing new.
    assert_eq!(insert(store, &automation("staging", SHA_A)).await, None);
    assert_eq!(insert(store, &automation("staging", SHA_A)).await, None);
    // A person asks again: the next attempt.
    let again = NewDeployment {
        attempt: None,
        manual: true,
        triggered_by: "token:alice".into(),
        ..automation("staging", SHA_A)
    };
    let second = store.request_deployment(&again).await.expect("request");
    let third = store.request_deployment(&again).await.expect("request");
    let history = store
        .deployment_history("app", "staging", 10, None)
        .await
        .expect("history");
    let attempts: Vec<(i64, i64)> = history.iter().map(|d| (d.id, d.attempt)).collect();
    assert_eq!(
        attempts,
        vec![(third, 3), (second, 2), (first.expect("first"), 1)],
        "newest first, numbered per version"
    );
    assert!(store
        .has_attempt("app", "staging", SHA_A, 3)
        .await
        .expect("read"));
    assert!(!store
        .has_attempt("app", "staging", SHA_A, 4)
        .await
        .expect("read"));
    assert!(!store
        .has_attempt("app", "production", SHA_A, 1)
        .await
        .expect("read"));
    // Another environment's identity is its own.
    assert!(insert(store, &automation("production", SHA_A))
        .await
        .is_some());
}

async fn moves_are_guarded_by_the_status_they_expect(store: &Store) {
    let id = insert(store, &automation("staging", SHA_A))
        .await
        .expect("created");
    let mut tx = store.begin_environments().await.expect("tx");
    assert!(tx
        .transition(
            id,
            DeploymentStatus::Waiting,
            DeploymentStatus::Queued,
            None,
            &[]
        )
        .await
        .expect("move"));
    // The same move again (a second pass racing): nothing happens.
    assert!(!tx
        .transition(
            id,
            DeploymentStatus::Waiting,
            DeploymentStatus::Queued,
            None,
            &[]
        )
        .await
        .expect("guarded"));
    // An illegal move is refused outright.
    assert!(tx
        .transition(
            id,
            DeploymentStatus::Succeeded,
            DeploymentStatus::Waiting,
            None,
            &[]
        )
        .await
        .is_err());
    assert!(tx
        .transition(
            id,
            DeploymentStatus::Queued,
            DeploymentStatus::Deploying,
            None,
            &[]
        )
        .await
        .expect("move"));
    assert!(tx
        .transition(
            id,
            DeploymentStatus::Deploying,
            DeploymentStatus::Failed,
            None,
            &["deploy run 3 failed".to_string()]
        )
        .await
        .expect("move"));
    tx.commit().await.expect("commit");
    let d = store.deployment(id).await.expect("read").expect("exists");
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert_eq!(d.errors, vec!["deploy run 3 failed".to_string()]);
    assert!(d.started_at.is_some() && d.finished_at.is_some());
    assert!(store
        .open_deployments("app")
        .await
        .expect("open")
        .is_empty());
    // Its automatic rollback is found by what it undoes.
    assert_eq!(store.rollback_status(id).await.expect("read"), None);
    let rollback = NewDeployment {
        action: DeploymentAction::Rollback,
        rollback_of: Some(id),
        ..automation("staging", SHA_B)
    };
    insert(store, &rollback).await.expect("created");
    assert_eq!(
        store.rollback_status(id).await.expect("read"),
        Some(DeploymentStatus::Waiting)
    );
}

async fn approvals_count_each_person_once_and_only_while_waiting(store: &Store) {
    let id = insert(store, &automation("production", SHA_A))
        .await
        .expect("created");
    assert_eq!(
        store
            .approve_deployment(id, "token:alice")
            .await
            .expect("ok"),
        Some(true)
    );
    assert_eq!(
        store
            .approve_deployment(id, "token:alice")
            .await
            .expect("ok"),
        Some(true)
    );
    assert_eq!(
        store
            .approve_deployment(id, "github:bob")
            .await
            .expect("ok"),
        Some(true)
    );
    let d = store.deployment(id).await.expect("read").expect("exists");
    assert_eq!(d.approvals.len(), 2, "{:?}", d.approvals);
    assert_eq!(
        store
            .approve_deployment(id + 1000, "token:alice")
            .await
            .expect("ok"),
        None
    );
    let approved = store
        .approve_deployments_of_commit("app", SHA_A, "gitlab:carol")
        .await
        .expect("by commit");
    assert_eq!(approved, vec![id]);
    let mut tx = store.begin_environments().await.expect("tx");
    tx.transition(
        id,
        DeploymentStatus::Waiting,
        DeploymentStatus::Cancelled,
        None,
        &[],
    )
    .await
    .expect("move");
    tx.commit().await.expect("commit");
    assert_eq!(
        store
            .approve_deployment(id, "token:dave")
            .await
            .expect("ok"),
        Some(false)
    );
}

async fn definitions_are_recorded_and_a_removed_environment_deploys_nothing(store: &Store) {
    let both = [environment("staging"), environment("production")];
    assert!(store
        .record_environment_definitions("app", SHA_A, &both)
        .await
        .expect("record"));
    // The same files again change nothing.
    assert!(!store
        .record_environment_definitions("app", SHA_A, &both)
        .await
        .expect("record"));
    let waiting = insert(store, &automation("production", SHA_A))
        .await
        .expect("created");
    assert!(store
        .record_environment_definitions("app", SHA_B, &both[..1])
        .await
        .expect("record"));
    let listed: Vec<String> = store
        .environments(Some("app"), false)
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listed, vec!["staging".to_string()]);
    assert_eq!(store.environments(None, true).await.expect("all").len(), 2);
    let d = store
        .deployment(waiting)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(d.status, DeploymentStatus::Cancelled);
    // Brought back, it is listed again.
    store
        .record_environment_definitions("app", SHA_B, &both)
        .await
        .expect("record");
    assert_eq!(
        store
            .environments(Some("app"), false)
            .await
            .expect("list")
            .len(),
        2
    );
}

async fn holds_and_the_environment_summary(store: &Store) {
    store
        .record_environment_definitions("app", SHA_A, &[environment("staging")])
        .await
        .expect("definitions");
    let env = store
        .environment("app", "staging")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!((env.sync(), env.health()), (Sync::Unknown, Health::Unknown));

    let id = insert(store, &automation("staging", SHA_A))
        .await
        .expect("created");
    let mut tx = store.begin_environments().await.expect("tx");
    tx.set_desired("app", "staging", SHA_A, "refs/heads/main")
        .await
        .expect("desired");
    tx.transition(
        id,
        DeploymentStatus::Waiting,
        DeploymentStatus::Queued,
        None,
        &[],
    )
    .await
    .expect("move");
    tx.commit().await.expect("commit");
    let env = store
        .environment("app", "staging")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(env.health(), Health::Progressing);

    let mut tx = store.begin_environments().await.expect("tx");
    tx.transition(
        id,
        DeploymentStatus::Queued,
        DeploymentStatus::Deploying,
        None,
        &[],
    )
    .await
    .expect("move");
    tx.transition(
        id,
        DeploymentStatus::Deploying,
        DeploymentStatus::Succeeded,
        None,
        &[],
    )
    .await
    .expect("move");
    tx.set_current("app", "staging", SHA_A, id)
        .await
        .expect("current");
    tx.set_desired("app", "staging", SHA_B, "refs/heads/main")
        .await
        .expect("desired");
    tx.commit().await.expect("commit");
    let env = store
        .environment("app", "staging")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        (env.sync(), env.health()),
        (Sync::OutOfSync, Health::Healthy)
    );
    assert_eq!(
        store
            .succeeded_versions("app", "staging", 5)
            .await
            .expect("versions"),
        vec![SHA_A.to_string()]
    );
    assert!(store
        .has_deployed("app", "staging", SHA_A)
        .await
        .expect("has"));
    assert!(!store
        .has_deployed("app", "staging", SHA_B)
        .await
        .expect("has"));

    // A drift check: started, then its verdict.
    let mut tx = store.begin_environments().await.expect("tx");
    tx.start_check("app", "staging", 42.into(), 1_000)
        .await
        .expect("start");
    tx.commit().await.expect("commit");
    let env = store
        .environment("app", "staging")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        (env.check_run_id, env.next_check_at),
        (Some(42.into()), Some(1_000))
    );
    let mut tx = store.begin_environments().await.expect("tx");
    tx.finish_check("app", "staging", Sync::Drifted, 1, 2_000)
        .await
        .expect("finish");
    tx.schedule_check("app", "staging", 3_000)
        .await
        .expect("schedule");
    tx.commit().await.expect("commit");
    let env = store
        .environment("app", "staging")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(env.check_run_id, None);
    assert_eq!((env.drift, env.drift_redeploys), (Some(Sync::Drifted), 1));
    assert_eq!(env.next_check_at, Some(3_000));
    assert!(env.last_check_at.is_some());
    assert_eq!(env.sync(), Sync::Drifted);

    assert!(store
        .hold_environment("app", "staging", SHA_A, "token:alice")
        .await
        .expect("hold"));
    let env = store
        .environment("app", "staging")
        .await
        .expect("read")
        .expect("exists");
    let hold = env.hold.as_ref().expect("held");
    assert_eq!(
        (hold.version.as_str(), hold.by.as_str()),
        (SHA_A, "token:alice")
    );
    assert!(store
        .release_environment("app", "staging")
        .await
        .expect("release"));
    assert!(!store
        .release_environment("app", "staging")
        .await
        .expect("release"));
    assert!(!store
        .hold_environment("app", "nowhere", SHA_A, "x")
        .await
        .expect("hold"));
}

fn deploy_run(commit: &str, trigger: &str) -> NewRun {
    NewRun {
        repo: "app".into(),
        pipeline: "deploy".into(),
        pipeline_file: ".deploylite/pipelines/deploy.yaml".into(),
        commit: commit.into(),
        git_ref: "refs/heads/main".into(),
        trigger: trigger.into(),
        run_attempt: 1,
        status: RunStatus::Queued,
        pending_reason: None,
        concurrency: Concurrency::Parallel,
        spec: Some("{}".into()),
        errors: None,
        workspace: None,
        stages: vec![NewStage {
            name: "release".into(),
            status: StageStatus::Queued,
            needs: Vec::new(),
            pending_reason: None,
        }],
        report: false,
        pull_request: None,
        awaiting_approval: false,
        policy: None,
    }
}

async fn a_deployments_runs_are_linked_to_it(store: &Store) {
    let id = insert(store, &automation("staging", SHA_A))
        .await
        .expect("created");
    let mut tx = store.begin_environments().await.expect("tx");
    let attempt = tx
        .next_run_attempt("app", "deploy", SHA_A, "deployment")
        .await
        .expect("number");
    assert_eq!(attempt, 1);
    let run = tx
        .insert_run(&deploy_run(SHA_A, "deployment"), id, RunAction::Deploy)
        .await
        .expect("insert")
        .expect("new");
    // The same identity again is not a second run.
    assert_eq!(
        tx.insert_run(&deploy_run(SHA_A, "deployment"), id, RunAction::Deploy)
            .await
            .expect("insert"),
        None
    );
    assert_eq!(
        tx.next_run_attempt("app", "deploy", SHA_A, "deployment")
            .await
            .expect("number"),
        2
    );
    let mut check = deploy_run(SHA_A, "check");
    check.pipeline = "drift".into();
    tx.insert_run(&check, id, RunAction::Check)
        .await
        .expect("insert")
        .expect("new");
    assert!(tx.touched_runs());
    tx.commit().await.expect("commit");
    let d = store.deployment(id).await.expect("read").expect("exists");
    assert_eq!(d.runs.len(), 1, "checks are not the deployment's runs");
    assert_eq!((d.runs[0].id, d.runs[0].action.as_str()), (run, "deploy"));
    let record = store.run(run).await.expect("read").expect("exists");
    assert_eq!(record.deployment_id, Some(id));
    assert_eq!(record.deployment_action.as_deref(), Some("deploy"));
    assert_eq!(
        store
            .pipeline_status_at("app", "deploy", SHA_A)
            .await
            .expect("status"),
        None,
        "a deployment's own runs do not satisfy `requires:`"
    );
}
