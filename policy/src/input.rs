//! The input document every gate sees, typed. `schema/policy-input.schema.json` documents it
//! (a test checks that what this produces validates against it).

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use deploylite_pipeline::Pipeline;
use serde::{Deserialize, Serialize};

use crate::gate::Gate;
use crate::image_reference::ImageReference;

/// The JSON Schema of [`PolicyInput`].
pub const INPUT_SCHEMA: &str = include_str!("../schema/policy-input.schema.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInput {
    /// The gate being evaluated: `deploylite.run` or `deploylite.deploy`.
    pub gate: Gate,
    /// When the daemon evaluated, so that policies and their tests need no clock.
    pub now: Now,
    pub repository: Repository,
    pub commit: Commit,
    pub trigger: Trigger,
    /// The resolved plan of the run (for a deployment: of its deploy pipeline).
    pub plan: Plan,
    /// The environment deployed to; null at the run gate.
    pub environment: Option<Environment>,
    /// Approvals given so far.
    pub approvals: Vec<Approval>,
}

/// A moment in UTC, with the calendar fields deployment windows need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Now {
    /// RFC 3339, `2026-12-07T18:48:09Z`.
    pub time: String,
    /// Seconds since the Unix epoch.
    pub unix: i64,
    /// `mon` … `sun`.
    pub weekday: String,
    pub hour: u32,
    pub minute: u32,
}

impl Now {
    pub fn at(time: DateTime<Utc>) -> Now {
        Now {
            time: time.to_rfc3339_opts(SecondsFormat::Secs, true),
            unix: time.timestamp(),
            weekday: time.weekday().to_string().to_ascii_lowercase(),
            hour: time.hour(),
            minute: time.minute(),
        }
    }

    pub fn from_unix_ms(ms: i64) -> Now {
        Now::at(DateTime::from_timestamp_millis(ms).unwrap_or_default())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    /// The repository's name in the daemon's config.
    pub name: String,
    /// The branch its HEAD names, when known.
    pub default_branch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub sha: String,
    /// The full ref: `refs/heads/main`, `refs/tags/v1.2.0`, `refs/pull/7/head`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The branch, for a push (and the pull request's source branch when known).
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub author: Option<Author>,
    /// Runs already recorded for this commit (the other pipelines' state); at the run gate,
    /// the runs of earlier reconciliations of the same commit.
    pub runs: Vec<CommitRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRun {
    pub pipeline: String,
    /// A run status: `queued`, `running`, `success`, `failed`, `cancelled`, `skipped`, `error`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// `push`, `tag`, `pull_request`, `deploy`, `manual`.
    pub event: String,
    /// False for code from a fork whose author is not a member.
    pub trusted: bool,
    pub pull_request: Option<PullRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub number: i64,
    /// Where the head commit comes from (`owner/name`).
    pub head_repo: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub pipeline: String,
    /// The pipeline's file, `.deploylite/pipelines/ci.yaml`.
    pub file: String,
    pub stages: Vec<PlanStage>,
    /// Every image the plan pulls (stages and services), sorted, each once.
    pub images: Vec<String>,
    /// `images`, in the same order, split as Docker resolves them (registry, repository,
    /// tag, digest), so policies need not re-derive Docker's rules.
    pub image_references: Vec<ImageReference>,
    /// Every runner label the stages ask for, sorted, each once.
    pub runner_labels: Vec<String>,
    /// Every secret name the stages use, sorted, each once (none until secrets exist).
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStage {
    pub name: String,
    pub needs: Vec<String>,
    pub runs_on: Vec<String>,
    pub image: Option<String>,
    /// The images of its services.
    pub services: Vec<String>,
    pub secrets: Vec<String>,
    /// Created skipped (its `if:` is false).
    pub skipped: bool,
}

impl Plan {
    /// The plan of a pipeline whose definition is not known (any more): no stages.
    pub fn empty(pipeline: &str, file: &str) -> Plan {
        Plan {
            pipeline: pipeline.to_string(),
            file: file.to_string(),
            stages: Vec::new(),
            images: Vec::new(),
            image_references: Vec::new(),
            runner_labels: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// The plan of a pipeline; `skipped` names the stages created skipped.
    pub fn of(pipeline: &Pipeline, file: &str, skipped: &[&str]) -> Plan {
        let stages: Vec<PlanStage> = pipeline
            .stages
            .iter()
            .map(|stage| PlanStage {
                name: stage.name.clone(),
                needs: stage.needs.clone(),
                runs_on: stage.runs_on.clone(),
                image: stage.image.clone(),
                services: stage.services.iter().map(|s| s.image.clone()).collect(),
                secrets: Vec::new(),
                skipped: skipped.contains(&stage.name.as_str()),
            })
            .collect();
        let distinct = |f: &dyn Fn(&PlanStage) -> Vec<String>| -> Vec<String> {
            stages
                .iter()
                .flat_map(f)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let images = distinct(&|s| s.image.iter().chain(&s.services).cloned().collect());
        Plan {
            pipeline: pipeline.name.clone(),
            file: file.to_string(),
            image_references: images.iter().map(|i| ImageReference::parse(i)).collect(),
            images,
            runner_labels: distinct(&|s| s.runs_on.clone()),
            secrets: distinct(&|s| s.secrets.clone()),
            stages,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    /// The version (commit) deployed now; null before the first deployment.
    pub current_version: Option<String>,
    /// The version this deployment would bring.
    pub desired_version: Option<String>,
    /// The pipelines that must have succeeded on the desired version.
    pub requires: Vec<String>,
}

/// What a deployment does to its environment: `environment.action` in the deploy gate's
/// input. Not a field of [`Environment`]: callers build that struct literally, and a new
/// field would break them; `gate::deploy_input` adds it to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentAction {
    /// Brings the desired version (a new one, a promotion, a redeploy after drift).
    Deploy,
    /// Goes back to an earlier, good version (`rollback: auto` or `deploylite rollback`).
    Rollback,
}

impl Commit {
    /// A commit at `git_ref`, with its branch or tag read from the ref.
    pub fn at(
        sha: String,
        git_ref: String,
        author: Option<Author>,
        runs: Vec<CommitRun>,
    ) -> Commit {
        Commit {
            branch: git_ref.strip_prefix("refs/heads/").map(str::to_string),
            tag: git_ref.strip_prefix("refs/tags/").map(str::to_string),
            sha,
            git_ref,
            author,
            runs,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `token:<name>`, `github:<login>`, `gitlab:<username>`.
    pub by: String,
    /// RFC 3339.
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_carries_utc_calendar_fields() {
        // 2026-12-07 is a Monday.
        let now = Now::from_unix_ms(1_796_668_089_000);
        assert_eq!(now.time, "2026-12-07T18:28:09Z");
        assert_eq!(now.weekday, "mon");
        assert_eq!((now.hour, now.minute), (18, 28));
        assert_eq!(now.unix, 1_796_668_089);
    }

    #[test]
    fn a_plan_lists_images_labels_once_and_marks_skipped_stages() {
        let source = "name: ci\non: push\nstages:\n  build:\n    image: rust:1.85\n    runs_on: [linux, big]\n    steps: [{run: cargo build}]\n    services:\n      db: {image: postgres:17}\n  test:\n    needs: [build]\n    image: rust:1.85\n    runs_on: [linux]\n    steps: [{run: cargo test}]\n";
        let pipeline = deploylite_pipeline::parse_pipeline("ci.yaml", source).expect("valid");
        let plan = Plan::of(&pipeline, ".deploylite/pipelines/ci.yaml", &["test"]);
        assert_eq!(plan.images, ["postgres:17", "rust:1.85"]);
        let names: Vec<&str> = plan
            .image_references
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["docker.io/library/postgres", "docker.io/library/rust"]
        );
        assert_eq!(plan.runner_labels, ["big", "linux"]);
        assert_eq!(plan.stages.len(), 2);
        assert!(!plan.stages[0].skipped && plan.stages[1].skipped);
        assert_eq!(plan.stages[0].services, ["postgres:17"]);
    }
}
