//! `deploylite plan`: what the daemon would run for a commit, without running anything.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use deploylite_pipeline::{layers, Diagnostic, Event, Pipeline};
use deploylite_reconciler::desired::{desired_runs, CommitEvent, ParseCache};
use deploylite_reconciler::git::GitRepo;
use deploylite_reconciler::status::{RunStatus, StageStatus};

use crate::validate::{runner_warnings, Server};

pub async fn plan(repo_dir: &Path, rev: &str, server: Server<'_>) -> Result<ExitCode> {
    let (repo_dir, rev) = (repo_dir.to_path_buf(), rev.to_string());
    let (event, files, git_ref) = tokio::task::spawn_blocking(move || -> Result<_> {
        let repo = GitRepo::discover(&repo_dir)?;
        let commit = repo.rev_parse(&rev)?;
        let git_ref = ref_of(&repo, &rev);
        // What a push of this one commit would have changed.
        let changed = match repo.first_parent(&commit)? {
            Some(parent) => Some(repo.changed_paths(&parent, &commit)?),
            None => None,
        };
        let files = repo.pipeline_files(&commit)?;
        let event = CommitEvent {
            repo: repo_name(&repo, &repo_dir),
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
    let cache = ParseCache::default();
    let runs = desired_runs(&files, &event, &cache);
    let mut any_error = false;
    let mut valid: Vec<(String, Pipeline)> = Vec::new();
    let mut warnings: Vec<Diagnostic> = Vec::new();
    for file in &files {
        // A cache hit: desired_runs parsed every file.
        let parsed = cache.parse(file);
        if let Ok(p) = parsed.as_ref() {
            warnings.extend(p.warnings.iter().cloned());
            valid.push((file.path.clone(), p.clone()));
        }
        let Some(run) = runs.iter().find(|r| r.pipeline_file == file.path) else {
            let why = parsed
                .as_ref()
                .as_ref()
                .ok()
                .and_then(|p| Some((p.name.as_str(), p.on.why_not(&event.event)?.to_string())));
            let (name, why) = why.unwrap_or(("?", format!("{} does not trigger it", event.event)));
            println!("\npipeline {name} ({}): not triggered: {why}", file.path);
            continue;
        };
        match run.status {
            RunStatus::Error => {
                any_error = true;
                println!(
                    "\npipeline {} ({}): invalid, would be recorded as `error`",
                    run.pipeline, run.pipeline_file
                );
                let diagnostics: Vec<Diagnostic> = run
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
    warnings.extend(runner_warnings(&server, &valid).await);
    if !warnings.is_empty() {
        println!();
        for w in &warnings {
            println!("{}", w.as_warning());
        }
    }
    Ok(if any_error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The ref a push of `rev` would be on: the branch or tag it names (`main^` is on `main`),
/// else the branch checked out (`HEAD~1`, a commit id), else `HEAD` when detached.
fn ref_of(repo: &GitRepo, rev: &str) -> String {
    let name = rev.split(['~', '^', '@', ':']).next().unwrap_or("");
    let name = if name.is_empty() { "HEAD" } else { name };
    repo.full_ref_name(name)
        .or_else(|| repo.full_ref_name("HEAD"))
        .unwrap_or_else(|| "HEAD".to_string())
}

/// The name of the repository's directory (the working tree's, or a bare repository's
/// without `.git`).
fn repo_name(repo: &GitRepo, given: &Path) -> String {
    let dir = repo
        .work_dir()
        .unwrap_or_else(|| repo.git_dir().to_path_buf());
    let dir = dir.canonicalize().unwrap_or(dir);
    let name = dir
        .file_name()
        .or_else(|| given.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".git")
        .map(str::to_string)
        .unwrap_or(name)
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
