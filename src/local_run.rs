//! `deploylite run`: one pipeline of a working copy, here and now, through the same scheduler
//! and executor as the daemon (so retries, timeouts and the DAG behave identically), with a
//! throwaway store.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use deploylite_reconciler::desired::{queued_run, CommitEvent};
use deploylite_reconciler::git::{GitRepo, PipelineFile};
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::scheduler::{
    Scheduler, SchedulerConfig, SchedulerEvent, WorkspaceSource,
};
use deploylite_reconciler::status::RunStatus;
use deploylite_reconciler::store::{RecordCommit, SqliteSync, Store};
use deploylite_runner::{BoxFuture, CancellationToken, LocalExecutor};

use crate::plan::event_for_ref;
use crate::table::{Align, Table};
use crate::validate::{load, pipeline_files};

/// The working copy is the workspace: nothing is ever checked out.
struct InPlace;

impl WorkspaceSource for InPlace {
    fn prepare(&self, _: &str, _: &str, _: &Path) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Err("`deploylite run` uses the working copy in place".to_string()) })
    }
}

pub async fn run(
    repo_dir: &Path,
    pipeline: Option<&str>,
    max_parallel: Option<usize>,
) -> Result<ExitCode> {
    let repo_dir = repo_dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", repo_dir.display()))?;
    let files = pipeline_files(std::slice::from_ref(&repo_dir))?;
    let (valid, problems) = load(&files);
    if !problems.is_empty() {
        for p in &problems {
            println!("{p}");
        }
        eprintln!("error: the pipelines do not validate");
        return Ok(ExitCode::from(1));
    }
    let (path, chosen) = match (pipeline, valid.len()) {
        (_, 0) => bail!(
            "no pipelines in {}/.deploylite/pipelines",
            repo_dir.display()
        ),
        (None, 1) => valid[0].clone(),
        (None, _) => bail!(
            "this working copy has several pipelines; choose one with --pipeline: {}",
            valid
                .iter()
                .map(|(_, p)| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (Some(name), _) => valid
            .iter()
            .find(|(_, p)| p.name == name)
            .cloned()
            .with_context(|| {
                format!(
                    "no pipeline named `{name}`; there are: {}",
                    valid
                        .iter()
                        .map(|(_, p)| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
    };

    let dir = repo_dir.clone();
    let (commit, git_ref) = tokio::task::spawn_blocking(move || {
        let Ok(repo) = GitRepo::local(&dir) else {
            return ("0".repeat(40), "refs/heads/local".to_string());
        };
        let commit = repo.resolve("HEAD").unwrap_or_else(|_| "0".repeat(40));
        let git_ref = repo.full_ref_name("HEAD").unwrap_or_else(|| "HEAD".into());
        (commit, git_ref)
    })
    .await
    .context("reading the working copy's HEAD")?;

    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let data = DataDir::new(scratch.path());
    let store = Store::connect(&data.default_database_url(), SqliteSync::Normal).await?;
    let repo_name = repo_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let event = CommitEvent {
        repo: repo_name.clone(),
        git_ref: git_ref.clone(),
        commit: commit.clone(),
        event: event_for_ref(&git_ref),
        changed_paths: None,
        report: false,
        pull_request: None,
    };
    let file = PipelineFile {
        path: path.clone(),
        blob_id: String::new(),
        content: Vec::new(),
    };
    let mut new_run = queued_run(&file, &event, &chosen);
    new_run.trigger = "manual".into();
    new_run.workspace = Some(repo_dir.display().to_string());
    let (created, _) = store
        .record_commit(&RecordCommit {
            repo: repo_name,
            git_ref,
            commit,
            runs: vec![new_run],
            update_ref: false,
        })
        .await?;
    let run_id = *created.first().context("the run was not created")?;

    let parallel = max_parallel.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
    });
    let scheduler = Scheduler::echoing_logs(
        store.clone(),
        data,
        // Here, every stage runs on this machine whatever its `runs-on` says.
        SchedulerConfig::local(parallel, every_label(&chosen)),
        Arc::new(LocalExecutor::default()),
        Arc::new(InPlace),
    );
    let mut events = scheduler.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler.clone().run(shutdown.clone()));
    eprintln!(
        "running pipeline `{}` ({path}) in {}",
        chosen.name,
        repo_dir.display()
    );

    let status = loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(SchedulerEvent::RunFinished { run_id: id, status }) if id == run_id => break status,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => bail!("the scheduler stopped unexpectedly"),
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: cancelling the run");
                store.request_cancel(run_id, "interrupted (Ctrl-C)").await?;
                scheduler.waker().notify_one();
            }
        }
    };
    shutdown.cancel();
    let _ = task.await;
    print_summary(&store, run_id).await?;
    eprintln!("run {status}");
    store.close().await;
    Ok(if status == RunStatus::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn every_label(pipeline: &deploylite_pipeline::Pipeline) -> Vec<String> {
    let mut labels: Vec<String> = pipeline
        .stages
        .iter()
        .flat_map(|s| s.runs_on.iter().cloned())
        .collect();
    labels.sort();
    labels.dedup();
    labels
}

async fn print_summary(store: &Store, run_id: i64) -> Result<()> {
    let Some((_, stages)) = store.get_run(run_id).await? else {
        return Ok(());
    };
    let mut table = Table::new(&[
        ("STAGE", Align::Left),
        ("STATUS", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("DURATION", Align::Right),
    ]);
    for s in stages {
        let duration = match (s.started_at, s.finished_at) {
            (Some(a), Some(b)) => format!("{:.2}s", (b - a) as f64 / 1000.0),
            _ => "-".into(),
        };
        table.row([
            s.name,
            s.status.as_str().to_string(),
            s.attempt.to_string(),
            duration,
        ]);
    }
    eprint!("\n{}", table.render());
    Ok(())
}
