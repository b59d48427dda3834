//! DeployLite's domain vocabulary, shared by every crate: the typed ids of the things the
//! daemon schedules (a run, a stage, an attempt, a commit, a repository) and their state
//! machines (`status`: runs, stages, deployments).
//!
//! Serde only: no IO, no SQL. Each id is `#[serde(transparent)]`, so the JSON of the API and
//! of the runner protocol is the bare number or string it was before the ids were typed. The
//! store converts at its boundary (binds [`RunId::get`], reads an `i64` back into a
//! [`RunId`]); a value the types cannot hold ([`Attempt::try_from`] of a negative number) is an
//! [`OutOfRange`] error there, never a clamp.

mod ids;
pub mod status;

pub use ids::{Attempt, CommitSha, OutOfRange, RepoName, RunId, StageName};
