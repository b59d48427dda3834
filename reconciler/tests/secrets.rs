//! Secrets at rest, on SQLite and PostgreSQL: sealed values, listing without values, scopes,
//! the audit of uses, and a key rotation that stops half way and resumes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use deploylite_model::Attempt;
use deploylite_pipeline::Concurrency;
use deploylite_reconciler::secrets::{
    next_key_path, reseal_all, SecretKey, SecretKeys, SecretScope,
};
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{NewRun, NewStage, RecordCommit, Store};

mod support;

conformance!(
    "the PostgreSQL half of the secrets suite";
    values_are_stored_sealed_and_listed_without_them,
    an_environment_secret_overrides_the_repositorys_for_its_deployments_only,
    each_use_is_audited_by_name_never_by_value,
    a_rotation_interrupted_half_way_resumes_and_every_value_still_opens,
);

fn repo_scope() -> SecretScope {
    SecretScope {
        repo: "app".into(),
        environment: None,
    }
}

fn env_scope(environment: &str) -> SecretScope {
    SecretScope {
        repo: "app".into(),
        environment: Some(environment.into()),
    }
}

fn keys(dir: &tempfile::TempDir) -> SecretKeys {
    SecretKeys::load(&dir.path().join("secrets.key")).expect("keys")
}

async fn values_are_stored_sealed_and_listed_without_them(store: &Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys(&dir);
    let sealed = keys
        .seal(&repo_scope(), "API_TOKEN", b"tok-123456")
        .expect("seals");
    assert!(store
        .put_secret(&repo_scope(), "API_TOKEN", &sealed, "token:ops")
        .await
        .expect("put"));
    let again = keys
        .seal(&repo_scope(), "API_TOKEN", b"tok-7")
        .expect("seals");
    assert!(!store
        .put_secret(&repo_scope(), "API_TOKEN", &again, "token:dev")
        .await
        .expect("put"));
    let listed = store.list_secrets("app", None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "API_TOKEN");
    assert_eq!(listed[0].set_by, "token:dev");
    assert_eq!(listed[0].environment, None);
    let shown = serde_json::to_string(&listed).expect("json");
    assert!(!shown.contains("tok-"), "{shown}");

    let stored = store
        .sealed_secrets("app", None, &["API_TOKEN".into()])
        .await
        .expect("read");
    assert_eq!(stored.len(), 1);
    let hex_of_value = "746f6b2d37"; // "tok-7"
    assert!(!hex::encode(&stored[0].sealed.ciphertext).contains(hex_of_value));
    let value = keys
        .open(&stored[0].scope, &stored[0].name, &stored[0].sealed)
        .expect("opens");
    assert_eq!(value.expose(), b"tok-7");

    assert!(store
        .delete_secret(&repo_scope(), "API_TOKEN")
        .await
        .expect("delete"));
    assert!(!store
        .delete_secret(&repo_scope(), "API_TOKEN")
        .await
        .expect("delete"));
    assert!(store
        .list_secrets("app", None)
        .await
        .expect("list")
        .is_empty());
}

async fn an_environment_secret_overrides_the_repositorys_for_its_deployments_only(store: &Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys(&dir);
    for (scope, name, value) in [
        (repo_scope(), "DB_URL", "repo-db"),
        (repo_scope(), "SHARED", "shared"),
        (env_scope("production"), "DB_URL", "prod-db"),
        (env_scope("production"), "PROD_ONLY", "p"),
    ] {
        let sealed = keys.seal(&scope, name, value.as_bytes()).expect("seals");
        store
            .put_secret(&scope, name, &sealed, "token:ops")
            .await
            .expect("put");
    }
    let names: Vec<String> = ["DB_URL", "SHARED", "PROD_ONLY", "MISSING"]
        .map(String::from)
        .to_vec();
    let open = |secrets: Vec<deploylite_reconciler::store::SealedSecret>| -> Vec<(String, String)> {
        secrets
            .iter()
            .map(|s| {
                let value = keys.open(&s.scope, &s.name, &s.sealed).expect("opens");
                (
                    s.name.clone(),
                    String::from_utf8_lossy(value.expose()).into_owned(),
                )
            })
            .collect()
    };
    let production = store
        .sealed_secrets("app", Some("production"), &names)
        .await
        .expect("read");
    assert_eq!(
        open(production),
        [
            ("DB_URL".to_string(), "prod-db".to_string()),
            ("PROD_ONLY".into(), "p".into()),
            ("SHARED".into(), "shared".into()),
        ]
    );
    let ci = store
        .sealed_secrets("app", None, &names)
        .await
        .expect("read");
    assert_eq!(
        open(ci),
        [
            ("DB_URL".to_string(), "repo-db".to_string()),
            ("SHARED".into(), "shared".into()),
        ],
        "a run that is not a deployment never sees an environment's secrets"
    );
    let staging = store
        .sealed_secrets("app", Some("staging"), &names)
        .await
        .expect("read");
    assert_eq!(staging.len(), 2);
    assert_eq!(
        store
            .list_secrets("app", Some("production"))
            .await
            .expect("list")
            .len(),
        2
    );
    assert_eq!(
        store.list_secrets("app", None).await.expect("list").len(),
        4
    );
    assert!(store
        .list_secrets("other", None)
        .await
        .expect("list")
        .is_empty());
}

async fn each_use_is_audited_by_name_never_by_value(store: &Store) {
    let run = NewRun {
        repo: "app".into(),
        pipeline: "ci".into(),
        pipeline_file: ".deploylite/pipelines/ci.yaml".into(),
        commit: "c1".into(),
        git_ref: "refs/heads/main".into(),
        trigger: "push".into(),
        run_attempt: 1,
        status: RunStatus::Queued,
        pending_reason: None,
        concurrency: Concurrency::Parallel,
        spec: None,
        errors: None,
        workspace: None,
        stages: vec![NewStage {
            name: "build".into(),
            status: StageStatus::Queued,
            needs: Vec::new(),
            pending_reason: None,
        }],
        report: false,
        pull_request: None,
        awaiting_approval: false,
        policy: None,
    };
    let (created, _) = store
        .record_commit(&RecordCommit {
            repo: "app".into(),
            git_ref: "refs/heads/main".into(),
            commit: "c1".into(),
            runs: vec![run],
            update_ref: true,
        })
        .await
        .expect("recorded");
    let run_id = created[0];
    let used = vec![
        (repo_scope(), "API_TOKEN".to_string()),
        (env_scope("production"), "DB_URL".to_string()),
    ];
    store
        .record_secret_uses(run_id, "build", Attempt::from(1), &used)
        .await
        .expect("audited");
    let uses = store.secret_uses(run_id).await.expect("read");
    assert_eq!(
        uses,
        vec![
            (
                "build".to_string(),
                Attempt::from(1),
                repo_scope(),
                "API_TOKEN".to_string()
            ),
            (
                "build".to_string(),
                Attempt::from(1),
                env_scope("production"),
                "DB_URL".to_string()
            ),
        ]
    );
}

async fn a_rotation_interrupted_half_way_resumes_and_every_value_still_opens(store: &Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secrets.key");
    let before = SecretKeys::load(&path).expect("keys");
    let old_id = before.current_id().to_string();
    for i in 0..250 {
        let name = format!("S{i:03}");
        let sealed = before
            .seal(&repo_scope(), &name, format!("value-{i}").as_bytes())
            .expect("seals");
        store
            .put_secret(&repo_scope(), &name, &sealed, "token:ops")
            .await
            .expect("put");
    }

    // A rotation that resealed one batch and then stopped (the daemon was killed).
    let rotating = SecretKeys::begin_rotation(&path).expect("begins");
    let new_id = rotating.current_id().to_string();
    assert_ne!(new_id, old_id);
    let first = store
        .secrets_not_sealed_with(&new_id, 100)
        .await
        .expect("batch");
    for row in &first {
        let value = rotating
            .open(&row.scope, &row.name, &row.sealed)
            .expect("opens");
        let sealed = rotating
            .seal(&row.scope, &row.name, value.expose())
            .expect("seals");
        assert!(store
            .reseal_secret(row.id, &row.sealed.key_id, &sealed)
            .await
            .expect("reseals"));
    }
    drop(rotating);

    // Restarted: both keys load (the next key file is still there) and every value opens.
    assert!(next_key_path(&path).exists());
    let restarted = SecretKeys::load(&path).expect("keys");
    assert_eq!(restarted.current_id(), new_id);
    let all: Vec<String> = (0..250).map(|i| format!("S{i:03}")).collect();
    for row in store.sealed_secrets("app", None, &all).await.expect("read") {
        restarted
            .open(&row.scope, &row.name, &row.sealed)
            .expect("every value opens mid-rotation");
    }
    // A value set mid-rotation is sealed by the new key and not resealed again.
    let mid = restarted
        .seal(&repo_scope(), "S000", b"new")
        .expect("seals");
    store
        .put_secret(&repo_scope(), "S000", &mid, "token:ops")
        .await
        .expect("put");

    let resumed = SecretKeys::begin_rotation(&path).expect("resumes");
    assert_eq!(resumed.current_id(), new_id, "the same next key is used");
    let resealed = reseal_all(store, &resumed).await.expect("reseals");
    assert_eq!(resealed, 150);
    let finished = SecretKeys::finish_rotation(&path).expect("finishes");
    assert_eq!(finished.current_id(), new_id);
    assert!(!next_key_path(&path).exists());
    assert!(store
        .secrets_not_sealed_with(&new_id, 1)
        .await
        .expect("none left")
        .is_empty());
    let after = SecretKey::load(&path).expect("loads");
    assert_eq!(after.id(), new_id);
    let only_new = SecretKeys::new(after);
    for row in store.sealed_secrets("app", None, &all).await.expect("read") {
        let value = only_new
            .open(&row.scope, &row.name, &row.sealed)
            .expect("opens with the new key alone");
        let expected = if row.name == "S000" {
            "new".to_string()
        } else {
            format!(
                "value-{}",
                row.name[1..]
                    .trim_start_matches('0')
                    .parse::<u32>()
                    .unwrap_or(0)
            )
        };
        assert_eq!(
            String::from_utf8_lossy(value.expose()),
            expected,
            "{}",
            row.name
        );
    }
}
