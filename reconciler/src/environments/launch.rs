//! The runs that carry out a deployment: its environment's `deploy`, `verify` or `check`
//! pipeline, read at the version's commit, with the deployment's variables in every stage.

use std::collections::BTreeMap;
use std::sync::Arc;

use deploylite_pipeline::{Event, Pipeline};

use super::gates::short;
use crate::desired::{queued_run, CommitEvent, ParseCache};
use crate::status::RunAction;
use crate::store::NewRun;
use crate::watcher::{ReconcileError, RepoEntry};

/// What to run for a deployment.
#[derive(Debug, Clone)]
pub struct Launch {
    pub action: RunAction,
    pub pipeline: String,
    pub commit: String,
    pub git_ref: String,
    pub environment: String,
    pub deployment: i64,
    pub previous_version: Option<String>,
}

impl Launch {
    /// The variables a deployment's stages get. They are set in the pipeline's and every
    /// stage's `env`, after the file's own values, so a pipeline cannot shadow them.
    pub fn variables(&self) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        vars.insert("DEPLOYLITE_ENVIRONMENT".into(), self.environment.clone());
        vars.insert("DEPLOYLITE_VERSION".into(), self.commit.clone());
        vars.insert(
            "DEPLOYLITE_PREVIOUS_VERSION".into(),
            self.previous_version.clone().unwrap_or_default(),
        );
        vars.insert(
            "DEPLOYLITE_DEPLOYMENT_ID".into(),
            self.deployment.to_string(),
        );
        vars.insert("DEPLOYLITE_ACTION".into(), self.action.as_str().into());
        vars
    }

    /// `deployment` for the deploy, rollback and verify runs, `check` for drift checks: the
    /// run's `trigger` (and `DEPLOYLITE_EVENT`).
    pub fn trigger(&self) -> &'static str {
        match self.action {
            RunAction::Check => "check",
            _ => "deployment",
        }
    }
}

/// Why a deployment has no run; the message goes into the deployment's record.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("reading the pipelines at {commit}: {source}")]
    Read {
        commit: String,
        #[source]
        source: ReconcileError,
    },
    #[error("the {action} pipeline `{pipeline}` is invalid at {commit}: {problem}")]
    Invalid {
        action: RunAction,
        pipeline: String,
        commit: String,
        problem: String,
    },
    #[error("no pipeline named `{pipeline}` at {commit} (the environment's {action} pipeline)")]
    Missing {
        pipeline: String,
        commit: String,
        action: RunAction,
    },
}

/// Builds the run (`run_attempt` is numbered when it is recorded). The error says, for the
/// deployment's record, why there is no run.
pub async fn build_run(
    entry: &Arc<RepoEntry>,
    cache: &Arc<ParseCache>,
    launch: &Launch,
) -> Result<NewRun, LaunchError> {
    let commit = launch.commit.clone();
    let files = entry
        .with_git(false, move |git| git.pipeline_files(&commit))
        .await
        .map_err(|source| LaunchError::Read {
            commit: short(&launch.commit).to_string(),
            source,
        })?;
    let mut invalid = None;
    let mut found: Option<(crate::git::PipelineFile, Pipeline)> = None;
    for file in &files {
        match cache.parse(file).as_ref() {
            Ok(p) if p.name == launch.pipeline => {
                found = Some((file.clone(), p.clone()));
                break;
            }
            Ok(_) => {}
            Err(diagnostics) => {
                let stem = file
                    .path
                    .rsplit('/')
                    .next()
                    .map(|f| f.trim_end_matches(".yaml").trim_end_matches(".yml"));
                if stem == Some(launch.pipeline.as_str()) {
                    invalid = diagnostics.first().map(ToString::to_string);
                }
            }
        }
    }
    let Some((file, mut pipeline)) = found else {
        return Err(match invalid {
            Some(problem) => LaunchError::Invalid {
                action: launch.action,
                pipeline: launch.pipeline.clone(),
                commit: short(&launch.commit).to_string(),
                problem,
            },
            None => LaunchError::Missing {
                pipeline: launch.pipeline.clone(),
                commit: short(&launch.commit).to_string(),
                action: launch.action,
            },
        });
    };
    let vars = launch.variables();
    pipeline.env.extend(vars.clone());
    for stage in &mut pipeline.stages {
        stage.env.extend(vars.clone());
    }
    let event = match launch.git_ref.strip_prefix("refs/tags/") {
        Some(tag) => Event::Tag { tag: tag.into() },
        None => Event::Push {
            branch: launch
                .git_ref
                .strip_prefix("refs/heads/")
                .unwrap_or(&launch.git_ref)
                .into(),
        },
    };
    let commit_event = CommitEvent {
        repo: entry.config.name.clone(),
        git_ref: launch.git_ref.clone(),
        commit: launch.commit.clone(),
        event,
        changed_paths: None,
        // Deployments are mirrored to the forge as deployments, not as checks of their runs.
        report: false,
        pull_request: None,
    };
    let mut run = queued_run(&file, &commit_event, &pipeline);
    run.trigger = launch.trigger().into();
    Ok(run)
}
