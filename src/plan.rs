//! `deploylite plan`: what the daemon would run for a commit, without running anything.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use deploylite_pipeline::{layers, Event, Pipeline};
use deploylite_reconciler::desired::{desired_runs, CommitEvent, ParseCache};
use deploylite_reconciler::git::GitRepo;
use deploylite_reconciler::status::{RunStatus, StageStatus};

pub async fn plan(repo_dir: &Path, rev: &str) -> Result<ExitCode> {
    let (repo_dir, rev) = (repo_dir.to_path_buf(), rev.to_string());
    let (event, files, git_ref) = tokio::task::spawn_blocking(move || -> Result<_> {
        let repo = GitRepo::local(&repo_dir)?;
        let commit = repo.resolve(&rev)?;
        let git_ref = repo
            .full_ref_name(&rev)
            .unwrap_or_else(|| "HEAD".to_string());
        // What a push of this one commit would have changed.
        let changed = match repo.first_parent(&commit)? {
            Some(parent) => Some(repo.changed_paths(&parent, &commit)?),
            None => None,
        };
        let files = repo.pipeline_files(&commit)?;
        let name = repo_dir.canonicalize().unwrap_or(repo_dir.clone());
        let name = name
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let event = CommitEvent {
            repo: name,
            git_ref: git_ref.clone(),
            commit,
            event: event_for_ref(&git_ref),
            changed_paths: changed,
            report: false,
            pull_request: None,
        };
        Ok((event, files, git_ref))
    })
    .await
    .context("plan task failed")??;

    println!("{} @ {} {}", event.repo, git_ref, event.commit);
    if files.is_empty() {
        println!("no pipelines: the commit has no .deploylite/pipelines/*.yaml");
        return Ok(ExitCode::SUCCESS);
    }
    let runs = desired_runs(&files, &event, &ParseCache::default());
    let mut any_error = false;
    for run in &runs {
        match run.status {
            RunStatus::Error => {
                any_error = true;
                println!(
                    "\npipeline {} ({}): invalid, would be recorded as `error`",
                    run.pipeline, run.pipeline_file
                );
                let diagnostics: Vec<deploylite_pipeline::Diagnostic> = run
                    .errors
                    .as_deref()
                    .and_then(|e| serde_json::from_str(e).ok())
                    .unwrap_or_default();
                for d in diagnostics {
                    println!("  {d}");
                }
            }
            RunStatus::Skipped => {
                println!(
                    "\npipeline {} ({}): skipped, no changed file matches its path filters",
                    run.pipeline, run.pipeline_file
                );
            }
            _ => {
                println!(
                    "\npipeline {} ({}): would run",
                    run.pipeline, run.pipeline_file
                );
                let Some(spec) = run
                    .spec
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<Pipeline>(s).ok())
                else {
                    continue;
                };
                for (i, layer) in layers(&spec).iter().enumerate() {
                    let names: Vec<String> = layer
                        .iter()
                        .filter_map(|&idx| spec.stages.get(idx))
                        .map(|stage| {
                            let skipped = run
                                .stages
                                .iter()
                                .find(|s| s.name == stage.name && s.status == StageStatus::Skipped);
                            match skipped.and_then(|s| s.pending_reason.as_deref()) {
                                Some(why) => format!("{} ({why})", stage.name),
                                None => stage.name.clone(),
                            }
                        })
                        .collect();
                    println!("  layer {}: {}", i + 1, names.join(", "));
                }
            }
        }
    }
    let silent = files.len() - runs.len();
    if silent > 0 {
        println!("\n{silent} other pipeline(s) are not triggered by {git_ref}");
    }
    Ok(if any_error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn event_for_ref(git_ref: &str) -> Event {
    if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        Event::Tag {
            tag: tag.to_string(),
        }
    } else {
        let branch = git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref);
        Event::Push {
            branch: branch.to_string(),
        }
    }
}
