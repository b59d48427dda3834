//! DeployLite's policy gates: Rego (regorus) policies that may deny a run or a deployment.
//!
//! One job: compile a policy revision once (the operator's bundles, a repository's
//! `.deploylite/policy/*.rego`), clone the compiled engine per evaluation, evaluate a gate
//! under a time limit and return a [`Decision`]. Conftest's convention: `deny contains msg`
//! blocks, `warn contains msg` annotates. A gate is a package prefix (`deploylite.run`,
//! `deploylite.deploy`): every package at or under it takes part.
//!
//! No IO but reading bundle directories; no async (callers run evaluations off the runtime).

mod compiled;
mod data;
mod decision;
mod error;
mod gate;
mod image_reference;
mod input;
pub mod limits;
mod policies;
mod sources;
pub mod testing;

pub use compiled::{CompiledPolicy, Verdict};
pub use decision::Decision;
pub use error::PolicyError;
pub use gate::{deploy_input, DeploymentFacts, Gate};
pub use image_reference::ImageReference;
pub use input::{
    Approval, Author, Commit, CommitRun, DeploymentAction, Environment, Now, Plan, PlanStage,
    PolicyInput, PullRequest, Repository, Trigger, INPUT_SCHEMA,
};
pub use policies::Policies;
pub use sources::{is_test_file, PolicyFile, PolicySources, DATA_FILE};

/// Where a repository keeps its own policies.
pub const REPOSITORY_POLICY_DIR: &str = ".deploylite/policy";
