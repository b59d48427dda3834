//! The API's runs as tests read them: typed, so that a test says `run.stage("build").status ==
//! StageStatus::Success` instead of indexing JSON with strings that may be misspelt. These are
//! the test's own copies of the wire format, not the server's types: a change of the API that
//! would break clients breaks these tests too.

use serde::Deserialize;

/// A run's status, as `GET /api/v1/runs/{id}` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Success,
    Failed,
    Cancelled,
    Skipped,
    Error,
}

impl RunStatus {
    /// A status the run never leaves.
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// A stage's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Queued,
    Running,
    Success,
    Failed,
    Cancelled,
    Skipped,
}

impl StageStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, StageStatus::Queued | StageStatus::Running)
    }
}

/// One run with its stages (`GET /api/v1/runs/{id}`). The run list has no stages: `stages` is
/// then empty.
#[derive(Debug, Clone, Deserialize)]
pub struct RunView {
    pub id: i64,
    pub repo: String,
    pub pipeline: String,
    pub commit: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub trigger: String,
    pub run_attempt: i64,
    pub status: RunStatus,
    pub pending_reason: Option<String>,
    pub cancel_requested: bool,
    #[serde(default)]
    pub untrusted: bool,
    #[serde(default)]
    pub awaiting_approval: bool,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(default)]
    pub stages: Vec<StageView>,
    /// The whole answer, for what the typed fields leave out and for failure messages.
    #[serde(skip)]
    pub json: serde_json::Value,
}

/// One stage of a run.
#[derive(Debug, Clone, Deserialize)]
pub struct StageView {
    pub name: String,
    pub status: StageStatus,
    pub attempt: i64,
    pub needs: Vec<String>,
    pub pending_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl RunView {
    /// Reads a run from the API's JSON; panics with the JSON when it does not fit.
    pub fn from_json(json: serde_json::Value) -> RunView {
        let mut run: RunView = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("not a run ({e}): {json:#}"));
        run.json = json;
        run
    }

    /// The stage called `name`; panics (showing the run) when there is none.
    pub fn stage(&self, name: &str) -> &StageView {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("run #{} has no stage `{name}`: {:#}", self.id, self.json))
    }

    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }

    /// When the run started, epoch ms (panics when it has not).
    pub fn started_ms(&self) -> i64 {
        epoch_ms(&self.started_at, "started_at", &self.json)
    }

    /// When the run ended, epoch ms (panics when it has not).
    pub fn finished_ms(&self) -> i64 {
        epoch_ms(&self.finished_at, "finished_at", &self.json)
    }
}

impl StageView {
    /// When the attempt started, epoch ms (panics when it has not).
    pub fn started_ms(&self) -> i64 {
        epoch_ms(&self.started_at, "started_at", self)
    }

    /// When the attempt ended, epoch ms (panics when it has not).
    pub fn finished_ms(&self) -> i64 {
        epoch_ms(&self.finished_at, "finished_at", self)
    }
}

impl std::fmt::Display for StageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:#?}")
    }
}

/// An RFC 3339 time of the API as epoch milliseconds.
fn epoch_ms(time: &Option<String>, field: &str, of: &dyn std::fmt::Debug) -> i64 {
    let text = time
        .as_deref()
        .unwrap_or_else(|| panic!("no `{field}` in {of:#?}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{field}` = {text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

impl std::fmt::Display for RunView {
    /// The run's JSON, pretty: what assertion messages show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.json)
    }
}
