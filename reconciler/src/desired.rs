//! Desired state: which runs a commit asks for. Pure given the pipeline files and the event;
//! parsing is cached by git blob id, since most commits do not touch `.deploylite/`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use deploylite_pipeline::{
    check_pipeline_set, parse_pipeline, ChangedPaths, Diagnostic, Event, ExprContext, Pipeline,
    TriggerMatch,
};

use crate::git::PipelineFile;
use crate::status::{RunStatus, StageStatus};
use crate::store::{NewRun, NewStage, PullRequestInfo};

type Parsed = Arc<Result<Pipeline, Vec<Diagnostic>>>;

/// Parsed pipelines by (blob id, path): the path is part of the key because it appears in the
/// diagnostics.
#[derive(Default)]
pub struct ParseCache {
    entries: Mutex<HashMap<(String, String), Parsed>>,
}

/// Beyond this many entries the cache starts over; a daemon watching many repositories keeps
/// only what the current commits use.
const CACHE_LIMIT: usize = 4096;

impl ParseCache {
    pub fn parse(&self, file: &PipelineFile) -> Parsed {
        let key = (file.blob_id.clone(), file.path.clone());
        if let Some(hit) = self.lock().get(&key) {
            return hit.clone();
        }
        let parsed: Parsed = Arc::new(match std::str::from_utf8(&file.content) {
            Ok(text) => parse_pipeline(&file.path, text),
            Err(e) => Err(vec![Diagnostic {
                file: file.path.clone(),
                line: 1,
                col: 1,
                message: format!("the file is not valid UTF-8 (byte {})", e.valid_up_to()),
            }]),
        });
        let mut entries = self.lock();
        if entries.len() >= CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(key, parsed.clone());
        parsed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Parsed>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A commit seen on a ref, as the reconciler hands it over.
#[derive(Debug, Clone)]
pub struct CommitEvent {
    pub repo: String,
    pub git_ref: String,
    pub commit: String,
    pub event: Event,
    /// Files changed since the ref's previous recorded commit; None when unknown (a ref seen
    /// for the first time), in which case path filters match everything.
    pub changed_paths: Option<Vec<String>>,
    /// Whether the repository reports to a forge.
    pub report: bool,
    pub pull_request: Option<PullRequestInfo>,
}

impl CommitEvent {
    pub fn trigger(&self) -> &'static str {
        match self.event {
            Event::Push { .. } => "push",
            Event::Tag { .. } => "tag",
            Event::PullRequest { .. } => "pull_request",
        }
    }
}

/// The runs `event` asks for, given the pipeline files at its commit. Pipelines that do not
/// validate become runs in status `error` carrying their diagnostics; pipelines whose path
/// filters exclude the change become `skipped` runs (so that a required check still reports).
pub fn desired_runs(
    files: &[PipelineFile],
    event: &CommitEvent,
    cache: &ParseCache,
) -> Vec<NewRun> {
    desired_runs_except(files, event, cache, &HashSet::new())
}

/// The pipelines the default branch's environments name as `deploy`, `verify` or `check`:
/// they run only for deployments unless their own `on:` says otherwise. Invalid environment
/// files name none (`deploylite validate` reports them).
pub fn deployment_only_pipelines(environment_files: &[PipelineFile]) -> HashSet<String> {
    let mut names = HashSet::new();
    for file in environment_files {
        let Ok(text) = std::str::from_utf8(&file.content) else {
            continue;
        };
        if let Ok(env) = deploylite_pipeline::parse_environment(&file.path, text) {
            names.extend(env.pipelines().map(str::to_string));
        }
    }
    names
}

/// [`desired_runs`], leaving out the `deployment_only` pipelines that have no `on:` of their own.
pub fn desired_runs_except(
    files: &[PipelineFile],
    event: &CommitEvent,
    cache: &ParseCache,
    deployment_only: &HashSet<String>,
) -> Vec<NewRun> {
    let parsed: Vec<(&PipelineFile, Parsed)> = files.iter().map(|f| (f, cache.parse(f))).collect();
    let valid = parsed
        .iter()
        .filter_map(|(f, p)| p.as_ref().as_ref().ok().map(|p| (f.path.as_str(), p)));
    let mut set_problems: HashMap<String, Vec<Diagnostic>> = HashMap::new();
    for d in check_pipeline_set(valid) {
        set_problems.entry(d.file.clone()).or_default().push(d);
    }

    let mut runs = Vec::new();
    let mut changes = ChangedPaths::new(event.changed_paths.as_deref());
    for (file, parsed) in &parsed {
        let problems = match parsed.as_ref() {
            Err(diagnostics) => Some(diagnostics.clone()),
            Ok(_) => set_problems.get(&file.path).cloned(),
        };
        if let Some(diagnostics) = problems {
            runs.push(error_run(file, event, &diagnostics));
            continue;
        }
        let Ok(pipeline) = parsed.as_ref() else {
            continue;
        };
        if !pipeline.on_given && deployment_only.contains(&pipeline.name) {
            continue;
        }
        match pipeline.on.matches_changes(&event.event, &mut changes) {
            TriggerMatch::NoEvent => {}
            TriggerMatch::PathsFiltered => {
                let mut run = base_run(file, event, &pipeline.name, RunStatus::Skipped);
                run.pending_reason =
                    Some("skipped: no changed file matches the pipeline's path filters".into());
                runs.push(run);
            }
            TriggerMatch::Yes => runs.push(queued_run(file, event, pipeline)),
        }
    }
    runs
}

fn base_run(file: &PipelineFile, event: &CommitEvent, pipeline: &str, status: RunStatus) -> NewRun {
    NewRun {
        repo: event.repo.clone().into(),
        pipeline: pipeline.to_string(),
        pipeline_file: file.path.clone(),
        commit: event.commit.clone().into(),
        git_ref: event.git_ref.clone(),
        trigger: event.trigger().to_string(),
        run_attempt: 1,
        status,
        pending_reason: None,
        concurrency: Default::default(),
        spec: None,
        errors: None,
        workspace: None,
        stages: Vec::new(),
        report: event.report,
        pull_request: event.pull_request.clone(),
        awaiting_approval: false,
        policy: None,
    }
}

fn error_run(file: &PipelineFile, event: &CommitEvent, diagnostics: &[Diagnostic]) -> NewRun {
    // The pipeline's name is unknown when its file does not parse: the file name stands in.
    let name = file
        .path
        .rsplit('/')
        .next()
        .map(|f| f.trim_end_matches(".yaml").trim_end_matches(".yml"))
        .unwrap_or("pipeline");
    let mut run = base_run(file, event, name, RunStatus::Error);
    // The problems live in `errors` only: `pending_reason` says why a run waits.
    run.errors = serde_json::to_string(diagnostics).ok();
    run
}

/// A queued run with its stages; stages whose `if:` is false are created skipped.
pub fn queued_run(file: &PipelineFile, event: &CommitEvent, pipeline: &Pipeline) -> NewRun {
    let mut run = base_run(file, event, &pipeline.name, RunStatus::Queued);
    run.concurrency = pipeline.concurrency;
    run.spec = serde_json::to_string(pipeline).ok();
    let mut context = ExprContext::from_event(&event.event);
    context.git_ref = Some(event.git_ref.clone());
    context.commit = Some(event.commit.clone());
    context.repo = Some(event.repo.clone());
    context.pipeline = Some(pipeline.name.clone());
    run.stages = pipeline
        .stages
        .iter()
        .map(|stage| {
            let skipped_by_if = stage.condition.as_ref().filter(|c| !c.eval(&context));
            NewStage {
                name: stage.name.clone().into(),
                status: if skipped_by_if.is_some() {
                    StageStatus::Skipped
                } else {
                    StageStatus::Queued
                },
                needs: stage.needs.clone(),
                pending_reason: skipped_by_if
                    .map(|c| format!("skipped: `if: {}` is false", c.source())),
            }
        })
        .collect();
    run
}
