//! DeployLite's outbound side of the forges: their configuration (`forges`), the GitHub and
//! GitLab API clients that report runs (`report`: check runs or commit statuses and the one
//! pull/merge request comment, sent from the outbox), list open pull/merge requests for the
//! watcher (`pulls`) and ask GitLab who may approve (`members`), and the forge JSON they and
//! the webhooks read (`payload`). Nothing here serves HTTP.

pub mod forges;
pub mod members;
pub mod payload;
pub mod pulls;
pub mod report;

pub use forges::Forges;
pub use report::{Reporter, ReporterConfig};
