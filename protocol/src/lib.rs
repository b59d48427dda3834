//! The runner protocol's wire types, shared by the server (`deploylite-server`, which answers)
//! and the runner agent (`deploylite-runner`, which asks): what a runner registers with, polls
//! with and gets back, what a heartbeat answers, and how an attempt ended. Serde only: no IO,
//! no HTTP, no store.
//!
//! The endpoints (all JSON, all but registration with `Authorization: Bearer <credential>`):
//!
//! - `POST /api/v1/runners/register`: [`RegisterRequest`] → [`RegisterResponse`];
//! - `POST /api/v1/runner/poll`: [`PollRequest`] → [`PollResponse`] (a long poll);
//! - `POST /api/v1/runner/leases/{run}/{stage}/{attempt}/heartbeat` → [`HeartbeatResponse`];
//! - `POST …/log`: a chunk of log lines (bytes, not JSON);
//! - `GET …/source.tar`: the commit's files;
//! - `POST …/complete`: an [`AttemptOutcome`].

mod outcome;

use std::collections::BTreeMap;

use deploylite_model::{Attempt, CommitSha, RepoName, RunId};
use deploylite_pipeline::Stage;
use serde::{Deserialize, Serialize};

pub use outcome::AttemptOutcome;

/// The most an attempt's log may hold when nobody says otherwise: the server's default
/// `limits.log_bytes`, and what a lease from a server that predates [`LeaseJob::log_bytes`]
/// means.
pub const DEFAULT_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// A lease as a remote runner receives it: everything needed to run the attempt and to decide
/// (with the runner's `outcome::verdict`) whether a failure is final and rolls back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseJob {
    pub run_id: RunId,
    pub stage: Stage,
    /// A number out of `u32`'s range is refused when the lease is read, not clamped.
    pub attempt: Attempt,
    /// Failed attempts before this one (what `retry.max` counts).
    pub failures: u32,
    pub repo: RepoName,
    pub pipeline: String,
    pub commit: CommitSha,
    pub git_ref: String,
    pub trigger: String,
    /// The stage's environment, `DEPLOYLITE_*` included (the workspace path is the runner's).
    pub env: BTreeMap<String, String>,
    /// Where the commit can be cloned from, for executors that fetch it themselves.
    pub source_url: Option<String>,
    /// How the previous attempt ended, for the new attempt's log (`None` for attempt 1).
    pub previous_attempt: Option<String>,
    /// The most the attempt's log may hold (the server's `limits.log_bytes`); the server
    /// refuses to store more.
    #[serde(default = "default_log_bytes")]
    pub log_bytes: u64,
    /// The W3C trace context of the daemon's span of this attempt, when spans are exported
    /// (`tracing.otlp_endpoint`): the runner's span of the stage becomes its child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn default_log_bytes() -> u64 {
    DEFAULT_LOG_BYTES
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub token: String,
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: i64,
    pub executor: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub name: String,
    /// The runner's own credential: shown once, stored hashed.
    pub credential: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PollRequest {
    pub labels: Vec<String>,
    pub capacity: i64,
    /// Leases it can take now.
    pub free: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PollResponse {
    pub leases: Vec<LeaseJob>,
    /// How often to renew a lease.
    pub heartbeat_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The run is being cancelled: stop the stage and report `cancelled`.
    pub cancel: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runner built before `log_bytes` existed in leases still reads today's leases, and
    /// today's runner reads a lease without it as the default limit.
    #[test]
    fn a_lease_without_log_bytes_gets_the_default() {
        let stage: Stage = serde_json::from_value(serde_json::json!({
            "name": "build",
            "steps": [{ "run": "true" }]
        }))
        .unwrap_or_else(|e| panic!("a stage: {e}"));
        let lease = LeaseJob {
            run_id: RunId::new(7),
            stage,
            attempt: Attempt::FIRST,
            failures: 0,
            repo: "app".into(),
            pipeline: "ci".into(),
            commit: "c".repeat(40).into(),
            git_ref: "refs/heads/main".into(),
            trigger: "push".into(),
            env: BTreeMap::new(),
            source_url: None,
            previous_attempt: None,
            log_bytes: 1024,
            traceparent: None,
        };
        let mut wire = serde_json::to_value(&lease).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wire["log_bytes"], 1024);
        // The typed ids are the bare numbers runners of every version read and send.
        assert_eq!(wire["run_id"], 7);
        assert_eq!(wire["attempt"], 1);
        assert_eq!(wire["failures"], 0);
        let back: LeaseJob = serde_json::from_value(wire.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, lease);
        wire.as_object_mut().map(|o| o.remove("log_bytes"));
        let old: LeaseJob = serde_json::from_value(wire).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.log_bytes, DEFAULT_LOG_BYTES);
    }
}
