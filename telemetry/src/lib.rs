//! DeployLite's instruments, in one place so that every crate records into the same ones:
//!
//! - [`metrics`]: the Prometheus registry of what happened (runs, stages, webhooks, reports),
//!   recorded where it happens;
//! - [`state`]: gauges of what *is* (queues, runners, the outbox), computed from the store at
//!   scrape time by the server and handed in as a [`state::StateSnapshot`];
//! - [`process`] and [`disk`]: the process' own figures and the data dir's free space, read
//!   from `/proc` and `statvfs` at scrape time;
//! - [`exposition`]: the text served at `GET /metrics` (OpenMetrics, or Prometheus' text format
//!   0.0.4 for clients that do not ask for OpenMetrics);
//! - [`spans`]: the tracing spans of runs and remote stage attempts, which outlive any one
//!   task; [`webhook_clock`]: when webhooks arrived, for the webhook → start latency;
//! - [`trace`]: the tracing subscriber (text or JSON logs, and OTLP export with the `otlp`
//!   feature) and the W3C trace context handed to remote runners.
//!
//! Label sets are bounded by configuration (repositories, pipelines, forges, registered runners)
//! and by fixed vocabularies (statuses, results, wait kinds): never a run id, a commit or a
//! branch.

pub mod disk;
pub mod exposition;
pub mod metrics;
pub mod process;
pub mod spans;
pub mod state;
pub mod trace;
pub mod webhook_clock;

pub use metrics::{metrics, Metrics};
