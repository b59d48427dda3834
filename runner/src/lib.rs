//! Everything that runs on a runner: the executors, where a stage's steps actually run (local
//! processes, Docker containers, Kubernetes Pods), for the daemon's own runner and for remote
//! ones, and the remote runner's agent (`agent`: register, poll for leases, run them, stream
//! their logs, report their ends).
//!
//! Lifecycle contract (the same for every executor): the scheduler hands over a [`StageJob`]
//! whose workspace already holds the commit, a [`StageLog`] for its output, and a
//! [`CancellationToken`]. `execute` returns once nothing the stage started is left running:
//! after a timeout or a cancellation the executor has killed everything it spawned. What a
//! killed daemon or runner left running is found again by [`kill_orphans`] and
//! [`kill_stages_under`].

pub mod agent;
pub mod docker;
mod job;
pub mod kubernetes;
pub mod local;
mod log;
mod orphans;
pub mod outcome;
pub mod sandbox;
pub mod source_url;

pub use docker::{DockerConfig, DockerExecutor, PullPolicy};
pub use job::{AttemptOutcome, BoxFuture, Executor, StageJob};
pub use kubernetes::{KubernetesConfig, KubernetesExecutor};
pub use local::LocalExecutor;
pub use log::{
    append_chunk, colour_allowed, format_line, last_line, parse_line, read_line_bounded, read_log,
    strip_ansi, LogStream, MaskError, MaskStream, MaskingReader, SecretMask, StageLog,
    DEFAULT_LOG_BYTES, MASK, MAX_LINE, MIN_LOG_BYTES,
};
pub use orphans::{kill_orphans, kill_stages_under};
pub use sandbox::{Sandbox, SandboxConfig, SandboxError};
pub use tokio_util::sync::CancellationToken;
