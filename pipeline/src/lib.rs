//! The DeployLite pipeline model and its YAML front door.
//!
//! Invariants: no IO, no async, no panics on any input. Every user-facing problem is a
//! [`Diagnostic`] naming `file:line:col`.

pub mod dag;
pub mod duration;
pub mod expr;
pub mod glob;
pub mod model;
mod parse;
pub mod schema;
pub mod trigger;
mod validate;
mod yaml;
mod yaml_fast;

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

/// Test hooks for the differential tests of the YAML fast path. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use crate::{Diagnostic, Pipeline};

    /// The fast path's tree and diagnostics, rendered with `Debug`, or `None` when the input is
    /// outside its subset.
    pub fn fast_yaml_tree(src: &str) -> Option<String> {
        let mut diags = Vec::new();
        let node = crate::yaml_fast::parse(src, &mut diags)?;
        Some(format!("{node:#?}\n{diags:?}"))
    }

    /// The saphyr path's tree (`None` when it fails) and diagnostics, rendered like
    /// [`fast_yaml_tree`].
    pub fn slow_yaml_tree(src: &str) -> String {
        let mut diags = Vec::new();
        let node = crate::yaml::load_with(src, &mut diags, false);
        match node {
            Some(node) => format!("{node:#?}\n{diags:?}"),
            None => format!("None\n{diags:?}"),
        }
    }

    /// [`crate::parse_pipeline`] without the fast path.
    pub fn parse_pipeline_slow(file: &str, src: &str) -> Result<Pipeline, Vec<Diagnostic>> {
        crate::parse::parse_pipeline_with(file, src, false)
    }
}
