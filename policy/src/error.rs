//! What can go wrong loading, compiling or evaluating policies.

use std::path::PathBuf;
use std::time::Duration;

/// regorus reports its errors as `anyhow` values; they are kept as text (with their cause
/// chain), so that this crate's callers need not know regorus.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("{path}: {size} bytes; a policy file may have at most {limit}")]
    FileTooLarge {
        path: String,
        size: usize,
        limit: usize,
    },
    #[error("too many policy files: more than {limit}")]
    TooManyFiles { limit: usize },
    /// `message` starts with the problem's `line:col`.
    #[error("{path}:{message}")]
    Data { path: String, message: String },
    #[error("{path}: {message}")]
    Compile { path: String, message: String },
    #[error("evaluating {rule}: time limit of {}ms exceeded", limit.as_millis())]
    TimeLimit { rule: String, limit: Duration },
    #[error("evaluating {rule}: {message}")]
    Eval { rule: String, message: String },
    #[error("reading the input: {0}")]
    Input(String),
}

/// The text of a regorus error (an `anyhow` value) with its causes, `a: b: c`.
pub(crate) fn describe(error: &impl std::fmt::Display) -> String {
    format!("{error:#}")
}
