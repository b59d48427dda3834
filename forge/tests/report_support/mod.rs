//! Test support for forge reporting: fake forges, the OpenAPI request validator, and real runs
//! written to a real SQLite store with real log files.

#![allow(dead_code)]

pub use deploylite_testkit::forge::{fake, openapi};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deploylite_forge::forges::{
    ForgeKind, ForgeRepo, Forges, GithubAuth, GithubConfig, GitlabConfig, Secret,
};
use deploylite_forge::report::{Reporter, ReporterConfig};
use deploylite_model::RunId;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{
    AttemptResult, Dispatch, NewRun, NewStage, PullRequestInfo, RecordCommit, RunFinish,
    SqliteSync, Store, TickWrites,
};

pub const PUBLIC_URL: &str = "https://ci.example.com";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub data: DataDir,
    pub db_url: String,
}

pub async fn env() -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = DataDir::new(dir.path());
    let db_url = data.default_database_url();
    let store = Store::connect(&db_url, SqliteSync::Normal)
        .await
        .expect("sqlite store");
    Env {
        dir,
        store,
        data,
        db_url,
    }
}

/// Quick retries, so that tests of delivery after a failure take about a second.
pub fn fast_config() -> ReporterConfig {
    ReporterConfig {
        poll_interval: Duration::from_millis(50),
        backoff_min: Duration::from_millis(300),
        backoff_max: Duration::from_secs(2),
        ..ReporterConfig::default()
    }
}

pub fn reporter(env: &Env, forges: Forges) -> Arc<Reporter> {
    Reporter::with_config(
        env.store.clone(),
        env.data.clone(),
        Arc::new(forges),
        fast_config(),
    )
}

pub fn github_repo(slug: &str) -> ForgeRepo {
    ForgeRepo {
        name: "app".into(),
        forge: ForgeKind::Github,
        slug: slug.into(),
    }
}

pub fn app_key() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/report_support/test-app-key.pem"),
    )
    .expect("the test app key")
}

pub fn github_app(url: &str) -> Forges {
    Forges::new(
        Some(GithubConfig {
            api_url: url.into(),
            auth: Some(GithubAuth::App {
                app_id: fake::APP_ID,
                private_key_pem: Secret::new(app_key()),
            }),
            webhook_secret: None,
        }),
        None,
        Some(PUBLIC_URL.into()),
        1 << 20,
        vec![github_repo("octo/app")],
    )
}

pub fn github_token(url: &str) -> Forges {
    Forges::new(
        Some(GithubConfig {
            api_url: url.into(),
            auth: Some(GithubAuth::Token(Secret::new(fake::PAT))),
            webhook_secret: None,
        }),
        None,
        Some(PUBLIC_URL.into()),
        1 << 20,
        vec![github_repo("octo/app")],
    )
}

pub fn gitlab(url: &str) -> Forges {
    Forges::new(
        None,
        Some(GitlabConfig {
            api_url: url.into(),
            token: Some(Secret::new(fake::PAT)),
            webhook_secret: None,
        }),
        Some(PUBLIC_URL.into()),
        1 << 20,
        vec![ForgeRepo {
            name: "app".into(),
            forge: ForgeKind::Gitlab,
            slug: "group/sub/app".into(),
        }],
    )
}

/// A reporting run of pipeline `pipeline` at `commit` with `stages` (each needing the previous).
pub fn new_run(pipeline: &str, commit: &str, stages: &[&str], pr: Option<i64>) -> NewRun {
    NewRun {
        awaiting_approval: false,
        policy: None,
        repo: "app".into(),
        pipeline: pipeline.into(),
        pipeline_file: format!(".deploylite/pipelines/{pipeline}.yaml"),
        commit: commit.into(),
        git_ref: match pr {
            Some(n) => format!("refs/pull/{n}/head"),
            None => "refs/heads/main".into(),
        },
        trigger: if pr.is_some() {
            "pull_request".into()
        } else {
            "push".into()
        },
        run_attempt: 1,
        status: RunStatus::Queued,
        pending_reason: None,
        concurrency: Default::default(),
        spec: None,
        errors: None,
        workspace: None,
        report: true,
        pull_request: pr.map(|number| PullRequestInfo {
            number,
            head_repo: "octo/app".into(),
            untrusted: false,
        }),
        stages: stages
            .iter()
            .enumerate()
            .map(|(i, s)| NewStage {
                name: s.to_string().into(),
                status: StageStatus::Queued,
                needs: if i == 0 {
                    vec![]
                } else {
                    vec![stages[i - 1].to_string()]
                },
                pending_reason: None,
            })
            .collect(),
    }
}

pub async fn record(store: &Store, run: NewRun) -> RunId {
    let (created, _) = store
        .record_commit(&RecordCommit {
            repo: run.repo.clone(),
            git_ref: run.git_ref.clone(),
            commit: run.commit.clone(),
            runs: vec![run],
            update_ref: false,
        })
        .await
        .expect("record a commit");
    created[0]
}

/// Starts the run (if queued) and dispatches `stage` as `attempt`.
pub async fn dispatch(store: &Store, run_id: RunId, stage: &str, attempt: u32) {
    store
        .apply_tick(&TickWrites {
            start_runs: vec![run_id],
            dispatch: vec![Dispatch {
                run_id,
                stage: stage.into(),
                attempt: attempt.into(),
                runner: "local".into(),
                lease_deadline: None,
            }],
            ..Default::default()
        })
        .await
        .expect("tick");
}

/// Ends `attempt` of `stage`. `retry` queues the stage again instead of failing it.
pub async fn finish(
    store: &Store,
    run_id: RunId,
    stage: &str,
    attempt: u32,
    status: StageStatus,
    note: Option<&str>,
    retry: bool,
) {
    let ok = store
        .finish_attempt(&AttemptResult {
            run_id,
            stage: stage.into(),
            attempt: attempt.into(),
            attempt_status: status,
            stage_status: if retry { StageStatus::Queued } else { status },
            exit_code: match status {
                StageStatus::Success => Some(0),
                StageStatus::Failed if note.is_some_and(|n| n.starts_with("timed out")) => None,
                StageStatus::Failed => Some(2),
                _ => None,
            },
            note: note.map(str::to_string),
            counts_as_failure: status == StageStatus::Failed,
            not_before: None,
            pending_reason: retry.then(|| "backoff until soon: retrying".to_string()),
        })
        .await
        .expect("finish an attempt");
    assert!(ok, "the attempt was current");
}

/// Skips the queued `stages` (their needs failed) and finishes the run as `status`.
pub async fn end_run(store: &Store, run_id: RunId, status: RunStatus, skip: &[&str]) {
    store
        .apply_tick(&TickWrites {
            skip: skip
                .iter()
                .map(|s| deploylite_reconciler::store::StageSkip {
                    run_id,
                    stage: s.to_string().into(),
                    status: StageStatus::Skipped,
                    reason: "skipped: a needed stage failed".into(),
                })
                .collect(),
            finish: vec![RunFinish { run_id, status }],
            ..Default::default()
        })
        .await
        .expect("finish a run");
}

/// Writes a stage log the way `StageLog` does.
pub fn write_log(
    data: &DataDir,
    run_id: RunId,
    stage: &str,
    attempt: u32,
    lines: &[(&str, String)],
) {
    let path = data.log_path(run_id, stage, attempt.into());
    std::fs::create_dir_all(path.parent().expect("log dir")).expect("create log dir");
    let mut text = String::new();
    for (i, (stream, line)) in lines.iter().enumerate() {
        text.push_str(&format!(
            "2026-11-26T23:58:{:02}.{:03}Z {stream} {line}\n",
            i % 60,
            i % 1000
        ));
    }
    std::fs::write(path, text).expect("write a log");
}

/// Re-checks `check` until it holds, failing the test after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    deploylite_testkit::wait::until_within(within, what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

pub async fn wait_delivered(store: &Store, within: Duration) {
    wait_until(within, "every report delivered", || async {
        store.pending_report_count().await.expect("count") == 0
    })
    .await;
}
