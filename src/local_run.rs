//! `deploylite run`: one pipeline of a working copy, here and now, through the same scheduler
//! and executor as the daemon (so retries, timeouts and the DAG behave identically), with a
//! throwaway store. The steps work in a throwaway copy of the working tree (`copy.rs`) unless
//! `--in-place` asks for the working copy itself.

mod copy;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use deploylite_model::RunId;
use deploylite_reconciler::desired::{queued_run, CommitEvent};
use deploylite_reconciler::git::{GitRepo, PipelineFile};
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::scheduler::{
    Scheduler, SchedulerConfig, SchedulerEvent, WorkspaceError, WorkspaceSource,
};
use deploylite_reconciler::status::RunStatus;
use deploylite_reconciler::store::{RecordCommit, SqliteSync, Store};
use deploylite_runner::{BoxFuture, CancellationToken, LocalExecutor};

use crate::plan::event_for_ref;
use crate::table::{Align, Table};
use crate::validate::{load, pipeline_files};

/// The workspace is ready before the run is recorded: nothing is ever checked out.
struct AlreadyThere;

impl WorkspaceSource for AlreadyThere {
    fn prepare(
        &self,
        _: &str,
        _: &str,
        _: &Path,
    ) -> BoxFuture<'static, Result<(), WorkspaceError>> {
        Box::pin(async {
            Err(WorkspaceError::NotProvided(
                "`deploylite run` prepares its workspace itself",
            ))
        })
    }
}

/// What `deploylite run` was asked to do.
pub struct RunOptions<'a> {
    pub pipeline: Option<&'a str>,
    pub max_parallel: Option<usize>,
    /// Steps run in the working copy itself, which they may change.
    pub in_place: bool,
    /// `image:` is ignored (with a warning in the stage log) instead of failing the stage.
    pub ignore_image: bool,
}

pub async fn run(repo_dir: &Path, options: RunOptions<'_>) -> Result<ExitCode> {
    let RunOptions {
        pipeline,
        max_parallel,
        in_place,
        ignore_image,
    } = options;
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
    // Kept alive until the run ends; dropping it deletes the copy.
    let copy = if in_place {
        eprintln!("{}", in_place_warning(&repo_dir));
        None
    } else {
        let source = repo_dir.clone();
        Some(
            tokio::task::spawn_blocking(move || copy::WorkingCopy::of(&source))
                .await
                .context("copying the working tree stopped")??,
        )
    };
    let workspace = copy
        .as_ref()
        .map_or_else(|| repo_dir.clone(), |c| c.path().to_path_buf());
    let mut new_run = queued_run(&file, &event, &chosen);
    new_run.trigger = "manual".into();
    new_run.workspace = Some(workspace.display().to_string());
    let (created, _) = store
        .record_commit(&RecordCommit {
            repo: repo_name.into(),
            git_ref,
            commit: commit.into(),
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
        // Here, every stage runs on this machine whatever its `runs_on` says.
        SchedulerConfig::local(parallel, every_label(&chosen)),
        Arc::new(LocalExecutor::default().ignoring_image(ignore_image)),
        Arc::new(AlreadyThere),
    );
    let mut events = scheduler.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler.clone().run(shutdown.clone()));
    match &copy {
        Some(copy) => eprintln!(
            "running pipeline `{}` ({path}) in a copy of {} ({} file{}, in {}; deleted afterwards)",
            chosen.name,
            repo_dir.display(),
            copy.files,
            if copy.files == 1 { "" } else { "s" },
            copy.path().display()
        ),
        None => eprintln!(
            "running pipeline `{}` ({path}) in {}",
            chosen.name,
            repo_dir.display()
        ),
    }

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
    if let Some(copy) = copy {
        let at = copy.path().display().to_string();
        match tokio::task::spawn_blocking(move || copy.delete()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: cannot delete the working copy at {at}: {e}"),
            Err(e) => eprintln!("warning: cannot delete the working copy at {at}: {e}"),
        }
    }
    Ok(if status == RunStatus::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Printed on stderr before an `--in-place` run.
fn in_place_warning(repo_dir: &Path) -> String {
    format!(
        "warning: --in-place: the steps run in {} itself; whatever they change or delete there stays changed or deleted",
        repo_dir.display()
    )
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

async fn print_summary(store: &Store, run_id: RunId) -> Result<()> {
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
            s.name.into_string(),
            s.status.as_str().to_string(),
            s.attempt.to_string(),
            duration,
        ]);
    }
    eprint!("\n{}", table.render());
    Ok(())
}
