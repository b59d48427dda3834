//! The `deploylite.run` policy gate: once a commit's runs are planned and before any is
//! recorded (so before anything can be dispatched), each queued run's plan is put to the
//! operator's bundles and the repository's `.deploylite/policy/*.rego`. A deny records the
//! run final in `error`, its messages in `errors` and its stages skipped; every decision is
//! recorded with its run (`runs.policy_*`).

use deploylite_pipeline::Pipeline;
use deploylite_policy::{
    Author, Commit, Decision, Gate, Now, Plan, Policies, PolicyError, PolicyInput, PolicySources,
    PullRequest, Repository, Trigger,
};

use crate::desired::ParseCache;
use crate::git::PipelineFile;
use crate::status::{RunStatus, StageStatus};
use crate::store::NewRun;

/// Every denied run's `errors` entry starts with this.
pub const DENIED_BY_POLICY: &str = "denied by policy: ";

/// What the gate knows about the commit besides the runs.
#[derive(Debug, Clone)]
pub struct RunGateFacts {
    pub repository: Repository,
    pub author: Option<Author>,
    pub now: Now,
}

/// The repository's policies as read at the commit: parsed into sources, or why not.
pub fn repository_policies(files: &[PipelineFile]) -> Result<PolicySources, PolicyError> {
    PolicySources::from_repository(files.iter().map(|f| (f.path.clone(), f.content.clone())))
}

/// Decides every queued run of `runs` (pipelines from `files`, parsed through `cache`).
/// Runs created final (invalid, skipped) are not put to the gate. Nothing is recorded when no
/// policy applies.
pub fn apply(
    runs: &mut [NewRun],
    files: &[PipelineFile],
    cache: &ParseCache,
    policies: &Policies,
    repository: &Result<PolicySources, PolicyError>,
    facts: &RunGateFacts,
) {
    let empty = PolicySources::default();
    let sources = repository.as_ref().unwrap_or(&empty);
    if repository.is_ok() && !policies.applies(Gate::Run, sources) {
        return;
    }
    for run in runs.iter_mut().filter(|r| r.status == RunStatus::Queued) {
        let decision = match repository {
            Err(error) => policies.failed(error, &empty.revision_sha256()),
            Ok(sources) => {
                let parsed = files
                    .iter()
                    .find(|f| f.path == run.pipeline_file)
                    .map(|f| cache.parse(f));
                let pipeline = parsed.as_deref().and_then(|p| p.as_ref().ok());
                match serde_json::to_value(input(run, pipeline, facts)) {
                    Ok(input) => policies.decide(Gate::Run, sources, &input),
                    Err(e) => policies.failed(&PolicyError::Input(e.to_string()), ""),
                }
            }
        };
        record(run, decision);
    }
}

fn input(run: &NewRun, pipeline: Option<&Pipeline>, facts: &RunGateFacts) -> PolicyInput {
    let skipped: Vec<&str> = run
        .stages
        .iter()
        .filter(|s| s.status == StageStatus::Skipped)
        .map(|s| s.name.as_str())
        .collect();
    let plan = match pipeline {
        Some(pipeline) => Plan::of(pipeline, &run.pipeline_file, &skipped),
        None => Plan::empty(&run.pipeline, &run.pipeline_file),
    };
    PolicyInput {
        gate: Gate::Run,
        now: facts.now.clone(),
        repository: facts.repository.clone(),
        commit: Commit {
            sha: run.commit.to_string(),
            git_ref: run.git_ref.clone(),
            branch: run.git_ref.strip_prefix("refs/heads/").map(str::to_string),
            tag: run.git_ref.strip_prefix("refs/tags/").map(str::to_string),
            author: facts.author.clone(),
            runs: Vec::new(),
        },
        trigger: Trigger {
            event: run.trigger.clone(),
            trusted: !run.pull_request.as_ref().is_some_and(|p| p.untrusted),
            pull_request: run.pull_request.as_ref().map(|p| PullRequest {
                number: p.number,
                head_repo: p.head_repo.clone(),
            }),
        },
        plan,
        environment: None,
        approvals: Vec::new(),
    }
}

/// Counts a decision in `deploylite_policy_evaluations_total{gate, result}`.
pub fn count(gate: Gate, decision: &Decision) {
    let result = if decision
        .deny
        .iter()
        .any(|m| m.starts_with("policy error: "))
    {
        "error"
    } else if decision.denied() {
        "deny"
    } else if !decision.warn.is_empty() {
        "warn"
    } else {
        "allow"
    };
    deploylite_telemetry::metrics().policy_evaluation(gate.package(), result);
}

/// Records the decision with the run; a deny makes the run final in `error`.
fn record(run: &mut NewRun, decision: Decision) {
    count(Gate::Run, &decision);
    if decision.denied() {
        let errors: Vec<serde_json::Value> = decision
            .deny
            .iter()
            .map(|m| serde_json::json!({ "message": format!("{DENIED_BY_POLICY}{m}") }))
            .collect();
        run.status = RunStatus::Error;
        run.errors = serde_json::to_string(&errors).ok();
        run.pending_reason = None;
        run.awaiting_approval = false;
        for stage in &mut run.stages {
            if stage.status == StageStatus::Queued {
                stage.status = StageStatus::Skipped;
                stage.pending_reason = Some("skipped: the run was denied by policy".into());
            }
        }
    }
    run.policy = Some(decision);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{desired_runs, CommitEvent};
    use deploylite_pipeline::Event;

    fn file(path: &str, text: &str) -> PipelineFile {
        PipelineFile {
            path: path.into(),
            blob_id: format!("{:x}", text.len()),
            content: text.as_bytes().to_vec(),
        }
    }

    fn facts() -> RunGateFacts {
        RunGateFacts {
            repository: Repository {
                name: "app".into(),
                default_branch: Some("main".into()),
            },
            author: None,
            now: Now::from_unix_ms(0),
        }
    }

    fn planned(files: &[PipelineFile], cache: &ParseCache) -> Vec<NewRun> {
        let event = CommitEvent {
            repo: "app".into(),
            git_ref: "refs/heads/main".into(),
            commit: "c0ffee".into(),
            event: Event::Push {
                branch: "main".into(),
            },
            changed_paths: None,
            report: false,
            pull_request: None,
        };
        desired_runs(files, &event, cache)
    }

    const CI: &str = "name: ci\non: push\nstages:\n  build:\n    image: quay.io/x/y:1\n    steps: [{run: make}]\n  test:\n    needs: [build]\n    steps: [{run: make test}]\n";
    const BROKEN: &str = "name: broken\non: push\nstages: 3\n";

    #[test]
    fn a_repository_deny_makes_the_run_an_error_with_skipped_stages() {
        let files = [
            file(".deploylite/pipelines/ci.yaml", CI),
            file(".deploylite/pipelines/broken.yaml", BROKEN),
        ];
        let cache = ParseCache::default();
        let mut runs = planned(&files, &cache);
        let policy = [file(
            ".deploylite/policy/images.rego",
            "package deploylite.run\nimport rego.v1\ndeny contains sprintf(\"no quay: %s\", [img]) if { some img in input.plan.images; startswith(img, \"quay.io/\") }\n",
        )];
        let repository = repository_policies(&policy);
        apply(
            &mut runs,
            &files,
            &cache,
            &Policies::none(),
            &repository,
            &facts(),
        );
        let ci = runs.iter().find(|r| r.pipeline == "ci").expect("ci run");
        assert_eq!(ci.status, RunStatus::Error);
        let decision = ci.policy.as_ref().expect("decision recorded");
        assert_eq!(decision.deny, ["no quay: quay.io/x/y:1"]);
        assert!(ci
            .errors
            .as_deref()
            .is_some_and(|e| e.contains("denied by policy: no quay: quay.io/x/y:1")));
        assert!(ci.stages.iter().all(|s| s.status == StageStatus::Skipped));
        // The invalid pipeline's run was not put to the gate.
        let broken = runs
            .iter()
            .find(|r| r.status == RunStatus::Error && r.policy.is_none());
        assert!(broken.is_some(), "{runs:?}");
    }

    #[test]
    fn warnings_are_recorded_and_the_run_stays_queued() {
        let files = [file(".deploylite/pipelines/ci.yaml", CI)];
        let cache = ParseCache::default();
        let mut runs = planned(&files, &cache);
        let policy = [file(
            ".deploylite/policy/warn.rego",
            "package deploylite.run.style\nimport rego.v1\nwarn contains sprintf(\"%d stages on %s\", [count(input.plan.stages), input.commit.branch]) if true\n",
        )];
        apply(
            &mut runs,
            &files,
            &cache,
            &Policies::none(),
            &repository_policies(&policy),
            &facts(),
        );
        assert_eq!(runs[0].status, RunStatus::Queued);
        let decision = runs[0].policy.as_ref().expect("decision recorded");
        assert!(decision.deny.is_empty());
        assert_eq!(decision.warn, ["2 stages on main"]);
    }

    #[test]
    fn without_any_policy_nothing_is_recorded() {
        let files = [file(".deploylite/pipelines/ci.yaml", CI)];
        let cache = ParseCache::default();
        let mut runs = planned(&files, &cache);
        apply(
            &mut runs,
            &files,
            &cache,
            &Policies::none(),
            &repository_policies(&[]),
            &facts(),
        );
        assert_eq!(runs[0].status, RunStatus::Queued);
        assert!(runs[0].policy.is_none());
    }

    #[test]
    fn unreadable_repository_policies_deny_every_queued_run() {
        let files = [file(".deploylite/pipelines/ci.yaml", CI)];
        let cache = ParseCache::default();
        let mut runs = planned(&files, &cache);
        let mut bad = file(".deploylite/policy/bin.rego", "");
        bad.content = vec![0xff, 0xfe];
        apply(
            &mut runs,
            &files,
            &cache,
            &Policies::none(),
            &repository_policies(&[bad]),
            &facts(),
        );
        assert_eq!(runs[0].status, RunStatus::Error);
        let decision = runs[0].policy.as_ref().expect("decision recorded");
        assert!(decision.deny[0].contains("bin.rego"), "{decision:?}");
    }
}
