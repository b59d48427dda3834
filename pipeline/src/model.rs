//! The typed pipeline model. Everything here is plain data: it is serialised into each run
//! (`runs.spec`) so that the scheduler never needs the git repository again after a run exists.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::expr::Expr;
use crate::glob::GlobList;

/// A position in a source file, 1-based, as editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    /// Line 0: no position (a value that was not written, or a spec from before positions).
    pub fn is_unknown(&self) -> bool {
        self.line == 0
    }
}

/// One pipeline: the content of one `.deploylite/pipelines/*.yaml` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    /// Where `name` was written (for duplicate-name diagnostics across files).
    #[serde(default)]
    pub name_pos: Pos,
    pub on: Triggers,
    #[serde(default)]
    pub concurrency: Concurrency,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// In file order. Validated: names unique, `needs` known, no cycle.
    pub stages: Vec<Stage>,
    /// Whether the file has an `on:` key at all. A pipeline that an environment names as
    /// `deploy`, `verify` or `check` runs only for deployments unless its own `on:` says
    /// otherwise, so the reconciler must tell "no `on:`" from "`on:` with defaults".
    /// Specs stored before this field read as `false`.
    #[serde(default)]
    pub on_given: bool,
    /// What `deploylite validate` warns about (deprecated key spellings, GitHub Actions
    /// habits), in file order; kept in the run's spec so that a run shows what its file was
    /// warned about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<crate::Diagnostic>,
}

/// When a pipeline runs. An absent `on:` means "every push to a watched branch".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Triggers {
    pub push: Option<PushTrigger>,
    pub pull_request: Option<PullRequestTrigger>,
}

/// The `*_ignore` lists are skipped when empty so that older stored specs and newer ones
/// read the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PushTrigger {
    /// Branch globs; empty = every branch, unless only tag filters are given (then no branch
    /// push).
    pub branches: GlobList,
    /// Branches that do not trigger (never together with `branches`).
    #[serde(default, skip_serializing_if = "GlobList::is_empty")]
    pub branches_ignore: GlobList,
    /// Tag globs; empty (and no `tags_ignore`) = no tag pushes.
    pub tags: GlobList,
    /// Tags that do not trigger (never together with `tags`).
    #[serde(default, skip_serializing_if = "GlobList::is_empty")]
    pub tags_ignore: GlobList,
    /// Path globs; empty = every path.
    pub paths: GlobList,
    /// A push whose changed paths all match these does not trigger.
    pub paths_ignore: GlobList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PullRequestTrigger {
    /// Target-branch globs; empty = every target branch.
    pub branches: GlobList,
    /// Target branches that do not trigger (never together with `branches`).
    #[serde(default, skip_serializing_if = "GlobList::is_empty")]
    pub branches_ignore: GlobList,
    pub paths: GlobList,
    pub paths_ignore: GlobList,
}

/// What to do when a newer commit on the same ref starts this pipeline while older runs are active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Concurrency {
    /// Runs of the same ref may overlap.
    #[default]
    Parallel,
    /// A newer run waits (pending_reason `concurrency`) until older runs of the same ref finish.
    Queue,
    /// A newer run cancels the older, still active runs of the same ref.
    CancelInProgress,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub runs_on: Vec<String>,
    /// Where `runs_on` was written, for warnings about labels no runner offers.
    #[serde(default, skip_serializing_if = "Pos::is_unknown")]
    pub runs_on_pos: Pos,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default, with = "opt_duration_ms")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(rename = "if", default)]
    pub condition: Option<Expr>,
    pub steps: Vec<Step>,
    /// Runs once if the stage still fails after its retries.
    #[serde(default)]
    pub rollback: Vec<Step>,
    #[serde(default)]
    pub resources: Resources,
    /// Sidecar containers (a database...) reachable by name from the steps; Docker executor
    /// only. In file order. Skipped when empty so that specs of stages without services
    /// serialise as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

/// One entry of a stage's `services:`: a container started before the steps, on the
/// attempt's network, under its name as host name. No readiness wait: a step that needs the
/// service up waits for it itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// DNS-label-like (validated): it becomes the host name the steps reach it by.
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces the image's CMD (the entrypoint is kept); None = the image's own.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Resources {
    /// CPUs, e.g. 0.5 or 2, kept as written.
    pub cpu: Option<String>,
    /// Memory, e.g. "512Mi", kept as written.
    pub memory: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: Option<String>,
    pub run: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Extra attempts after the first one.
    pub max: u32,
    #[serde(with = "duration_ms")]
    pub backoff: Duration,
    #[serde(with = "duration_ms")]
    pub max_backoff: Duration,
    /// Retry only these exit codes; empty = any failure.
    #[serde(default)]
    pub exit_codes: Vec<i32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max: 0,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            exit_codes: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Whether a failed attempt number `attempt` (1-based) that exited with `exit_code` gets another try.
    /// `None` exit codes (killed, timed out) are retried only when no exit code filter is set.
    pub fn should_retry(&self, attempt: u32, exit_code: Option<i32>) -> bool {
        if attempt > self.max {
            return false;
        }
        self.exit_codes.is_empty() || exit_code.is_some_and(|c| self.exit_codes.contains(&c))
    }

    /// Delay before attempt `attempt + 1`: exponential from `backoff`, capped at `max_backoff`,
    /// without jitter (the caller adds jitter so this stays a pure function).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

pub(crate) mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}
