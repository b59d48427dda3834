//! The DeployLite pipeline model and its YAML front door.
//!
//! Invariants: no IO, no async, no panics on any input. Every user-facing problem is a
//! [`Diagnostic`] naming `file:line:col`.

pub mod dag;
pub mod document;
pub mod duration;
pub mod environment;
pub mod expr;
pub mod glob;
pub mod keys;
pub mod labels;
pub mod limits;
pub mod model;
mod parse;
pub mod schema;
mod suggest;
mod tree;
pub mod trigger;
mod validate;
mod yaml;

pub use dag::layers;
pub use environment::{
    Approval, DriftCheck, Environment, EnvironmentSpans, Follows, OnDrift, RollbackMode,
};
pub use expr::{Expr, ExprContext};
pub use glob::{Glob, GlobList, InvalidGlob};
pub use keys::canonical_key;
pub use model::*;
pub use trigger::{ChangedPaths, Event, NotTriggered, TriggerMatch};

/// One problem in one file, shown to users as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

impl Diagnostic {
    /// The diagnostic shown as a warning: `file:line:col: warning: message`.
    pub fn as_warning(&self) -> impl std::fmt::Display + '_ {
        struct Warning<'a>(&'a Diagnostic);
        impl std::fmt::Display for Warning<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let d = self.0;
                write!(f, "{}:{}:{}: warning: {}", d.file, d.line, d.col, d.message)
            }
        }
        Warning(self)
    }
}

/// Parse and validate one pipeline file. `file` is only used in diagnostics.
/// On failure, returns every problem found (not just the first). A valid pipeline carries its
/// warnings in [`Pipeline::warnings`].
pub fn parse_pipeline(file: &str, src: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    parse::parse_pipeline(file, src).0
}

/// [`parse_pipeline`], with the file's warnings (deprecated spellings, GitHub Actions habits)
/// also when it has errors.
pub fn parse_pipeline_with_warnings(
    file: &str,
    src: &str,
) -> (Result<Pipeline, Vec<Diagnostic>>, Vec<Diagnostic>) {
    parse::parse_pipeline(file, src)
}

/// Problems that span several files of one repository (duplicate pipeline names), given each
/// valid pipeline with its file. Borrowed, so that callers holding parsed pipelines in a cache
/// need not copy them.
pub fn check_pipeline_set<'a>(
    pipelines: impl IntoIterator<Item = (&'a str, &'a Pipeline)>,
) -> Vec<Diagnostic> {
    validate::check_pipeline_set(pipelines)
}

/// Parse and validate one environment file (`.deploylite/environments/*.yaml`). `file` is only
/// used in diagnostics. On failure, returns every problem found. A valid environment carries
/// its warnings in [`Environment::warnings`]. Whether the pipelines and environments it names
/// exist is [`check_environment_set`]'s question.
pub fn parse_environment(file: &str, src: &str) -> Result<Environment, Vec<Diagnostic>> {
    environment::parse(file, src).0
}

/// [`parse_environment`], with the file's warnings (deprecated spellings) also when it has
/// errors.
pub fn parse_environment_with_warnings(
    file: &str,
    src: &str,
) -> (Result<Environment, Vec<Diagnostic>>, Vec<Diagnostic>) {
    environment::parse(file, src)
}

/// Problems across a repository's environment files, given each valid environment with its
/// file (in the order files are read) and the names of the repository's valid pipelines:
/// duplicate environment names; `deploy`, `verify`, `check.pipeline` or `requires` naming a
/// pipeline not in `pipelines`; `promote_from` naming an unknown environment or itself;
/// `promote_from` cycles, named as `staging -> production -> staging`; more than
/// [`limits::MAX_ENVIRONMENTS`] files (the excess is reported and not checked).
pub fn check_environment_set(envs: &[(&str, &Environment)], pipelines: &[&str]) -> Vec<Diagnostic> {
    environment::check_set(envs, pipelines)
}
