//! The gates a decision is asked at. Each gate is a Rego package prefix: every package at or
//! under it that declares `deny` or `warn` takes part, so bundles can live side by side in
//! packages of their own (`deploylite.run.image_registries`) and be tested one at a time.

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::input::{
    Approval, Author, Commit, CommitRun, DeploymentAction, Environment, Now, Plan, PolicyInput,
    PullRequest, Repository, Trigger,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Gate {
    /// Once a run is planned, before anything is dispatched: a deny ends the run in `error`.
    #[serde(rename = "deploylite.run")]
    Run,
    /// When a deployment leaves `waiting`: a deny rejects it.
    #[serde(rename = "deploylite.deploy")]
    Deploy,
}

impl Gate {
    pub const ALL: [Gate; 2] = [Gate::Run, Gate::Deploy];

    /// The Rego package (and the `input.gate` value) of this gate.
    pub fn package(self) -> &'static str {
        match self {
            Gate::Run => "deploylite.run",
            Gate::Deploy => "deploylite.deploy",
        }
    }

    /// The package components, `["deploylite", "run"]`.
    pub(crate) fn components(self) -> [&'static str; 2] {
        match self {
            Gate::Run => ["deploylite", "run"],
            Gate::Deploy => ["deploylite", "deploy"],
        }
    }

    /// Whether a package (by its components) belongs to this gate.
    pub(crate) fn covers(self, package: &[String]) -> bool {
        let prefix = self.components();
        package.len() >= prefix.len() && prefix.iter().zip(package).all(|(a, b)| *a == b)
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.package())
    }
}

impl std::str::FromStr for Gate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Gate::ALL
            .into_iter()
            .find(|g| g.package() == s || g.package().strip_prefix("deploylite.") == Some(s))
            .ok_or_else(|| {
                format!("unknown gate `{s}`: expected deploylite.run or deploylite.deploy")
            })
    }
}

/// What the deployment controller knows when a deployment leaves `waiting`: everything
/// [`deploy_input`] needs besides the plan of the environment's deploy pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentFacts {
    /// When the gate is asked (`Now::at(Utc::now())` in the daemon).
    pub now: Now,
    pub repository: Repository,
    /// The environment's name.
    pub environment: String,
    /// The version (commit sha) deployed now; None before the first deployment.
    pub current_version: Option<String>,
    /// The version (commit sha) this deployment brings.
    pub version: String,
    /// The ref the version was taken from: `refs/heads/main`, `refs/tags/v1.2.0`.
    pub git_ref: String,
    pub author: Option<Author>,
    /// Each pipeline's latest run on the version.
    pub runs: Vec<CommitRun>,
    /// The environment's `requires:`.
    pub requires: Vec<String>,
    pub action: DeploymentAction,
    /// Approvals given so far, oldest first.
    pub approvals: Vec<Approval>,
    /// False when the version is code from a fork whose author is not a member.
    pub trusted: bool,
    /// The pull request the version came from, if it did.
    pub pull_request: Option<PullRequest>,
}

/// The `deploylite.deploy` input document of a deployment, ready for
/// `Policies::decide(Gate::Deploy, &repository_sources, &input)`: the typed [`PolicyInput`]
/// (`plan` is the plan of the environment's deploy pipeline, `Plan::of(pipeline, file, &[])`)
/// with `environment.action` added. Errors only if the document cannot be serialized.
pub fn deploy_input(facts: DeploymentFacts, plan: Plan) -> Result<serde_json::Value, PolicyError> {
    let action = facts.action;
    let input = PolicyInput {
        gate: Gate::Deploy,
        now: facts.now,
        repository: facts.repository,
        environment: Some(Environment {
            name: facts.environment,
            current_version: facts.current_version,
            desired_version: Some(facts.version.clone()),
            requires: facts.requires,
        }),
        commit: Commit::at(facts.version, facts.git_ref, facts.author, facts.runs),
        trigger: Trigger {
            event: "deploy".into(),
            trusted: facts.trusted,
            pull_request: facts.pull_request,
        },
        plan,
        approvals: facts.approvals,
    };
    let input_error = |e: serde_json::Error| PolicyError::Input(e.to_string());
    let mut document = serde_json::to_value(input).map_err(input_error)?;
    let action = serde_json::to_value(action).map_err(input_error)?;
    if let Some(environment) = document
        .get_mut("environment")
        .and_then(serde_json::Value::as_object_mut)
    {
        environment.insert("action".into(), action);
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(p: &str) -> Vec<String> {
        p.split('.').map(str::to_string).collect()
    }

    #[test]
    fn a_gate_covers_its_package_and_those_under_it_only() {
        assert!(Gate::Run.covers(&package("deploylite.run")));
        assert!(Gate::Run.covers(&package("deploylite.run.registries")));
        assert!(!Gate::Run.covers(&package("deploylite.runner")));
        assert!(!Gate::Run.covers(&package("deploylite.deploy.windows")));
        assert!(!Gate::Run.covers(&package("deploylite")));
        assert!(Gate::Deploy.covers(&package("deploylite.deploy.windows")));
    }

    #[test]
    fn gates_parse_by_package_or_short_name() {
        assert_eq!("deploylite.run".parse(), Ok(Gate::Run));
        assert_eq!("deploy".parse(), Ok(Gate::Deploy));
        assert!("deploylite.build".parse::<Gate>().is_err());
    }
}
