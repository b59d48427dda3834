//! The DeployLite pipeline model and its YAML front door.
//!
//! Invariants: no IO, no async, no panics on any input. Every user-facing problem is a
//! [`Diagnostic`] naming `file:line:col`.

pub mod dag;
pub mod document;
pub mod duration;
pub mod expr;
pub mod glob;
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
pub use expr::{Expr, ExprContext};
pub use glob::{Glob, GlobList};
pub use model::*;
pub use trigger::{Event, TriggerMatch};

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

/// Parse and validate one pipeline file. `file` is only used in diagnostics.
/// On failure, returns every problem found (not just the first).
pub fn parse_pipeline(file: &str, src: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    parse::parse_pipeline(file, src)
}

/// Problems that span several files of one repository (duplicate pipeline names).
pub fn check_pipeline_set(pipelines: &[(String, Pipeline)]) -> Vec<Diagnostic> {
    validate::check_pipeline_set(pipelines)
}
