//! The Docker executor (bollard): every step of a stage attempt runs in a fresh container.
//!
//! For one stage attempt:
//!
//! 1. Everything that can be checked without the engine is checked first (the workspace exists,
//!    there is an image, the CPU and memory limits parse), so a bad stage creates nothing.
//! 2. The image is pulled when absent (or always / never, per [`PullPolicy`]). A failed pull is
//!    a [`AttemptOutcome::Error`] naming the image and carrying the engine's message.
//!    The images of the stage's `services:` are made present the same way (an error names the
//!    service).
//! 3. A bridge network is created for the attempt (`deploylite-<run>-<stage>-<attempt>-<key>`).
//!    Each of the stage's `services:` is started on it in file order, as a container named
//!    `<network>-svc-<name>` with the service's name as network alias (the host name the steps
//!    reach it by), its own env and, if given, its `command` as CMD. Services are not waited
//!    for (there is no health check, as in GitHub Actions without `options: --health-cmd`): a
//!    step that needs one up retries until it answers. They get neither the workspace nor the
//!    stage's limits, which are for the steps.
//! 4. Each step is `sh -e -c <run>` in a new container from the image, on that network, with the
//!    workspace bind-mounted at a fixed path ([`DockerConfig::workspace_mount`], the working
//!    directory), the job's env + the step's env, the configured user, and the stage's CPU and
//!    memory limits. Output is attached before the container starts and streamed into the stage
//!    log line by line, with the same step headers and messages as the local executor.
//! 5. Containers (steps and services) and the network are always removed afterwards: on
//!    success, failure, timeout, cancellation, error, and (from a spawned task) when the
//!    attempt's future is dropped.
//!
//! Why one container per step (the Woodpecker model) rather than one long-lived container with
//! an `exec` per step:
//! - the engine cannot kill an exec'd process: a timeout or a cancellation in exec mode could
//!   only kill the whole container, and a step's background processes would leak into the next
//!   step. A container per step is the container equivalent of the local executor's process
//!   group per step — stopping it kills everything the step started;
//! - the exit code comes from the container's `wait`, exact and race-free;
//! - what steps share is exactly what they share under the local executor: the workspace files
//!   (and the env the pipeline gives them), never leftover processes or files outside it.
//!
//! The cost is one container create + start per step (tens of milliseconds on a warm engine).
//!
//! Every container and network carries labels ([`LABEL_MANAGED`], [`LABEL_INSTANCE`],
//! [`LABEL_RUN_ID`], [`LABEL_STAGE`], [`LABEL_ATTEMPT`], [`LABEL_KEY`], ...), so that what a killed
//! daemon left behind can be found and removed: [`DockerExecutor::cleanup_attempt`],
//! [`DockerExecutor::cleanup_run`], [`DockerExecutor::cleanup_all`].

mod cleanup;
mod image;
mod interrupt;
mod limits;
mod logs;
mod plan;
mod services;
mod steps;

use std::ops::ControlFlow;

use bollard::errors::Error as BollardError;
use bollard::models::NetworkCreateRequest;
use bollard::Docker;
use deploylite_model::RunId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::{AttemptOutcome, BoxFuture, Executor, StageJob};
use crate::log::StageLog;

pub use cleanup::Cleaned;
use cleanup::Leftovers;
pub use image::{InvalidPullPolicy, PullPolicy};
pub use limits::{parse_cpu, parse_memory, LimitError};
use plan::Plan;

/// Present (`true`) on every container and network the Docker executor creates.
pub const LABEL_MANAGED: &str = "deploylite.managed";
/// [`DockerConfig::instance`]: which daemon created the object.
pub const LABEL_INSTANCE: &str = "deploylite.instance";
pub const LABEL_RUN_ID: &str = "deploylite.run_id";
pub const LABEL_STAGE: &str = "deploylite.stage";
pub const LABEL_ATTEMPT: &str = "deploylite.attempt";
/// Unique per execution of an attempt: what the executor's own final sweep filters on.
pub const LABEL_KEY: &str = "deploylite.key";
pub const LABEL_REPO: &str = "deploylite.repo";
pub const LABEL_PIPELINE: &str = "deploylite.pipeline";
pub const LABEL_COMMIT: &str = "deploylite.commit";
/// On step containers only: the step's number, from 1.
pub const LABEL_STEP: &str = "deploylite.step";
/// On service containers only: the service's name.
pub const LABEL_SERVICE: &str = "deploylite.service";

/// Configuration of a [`DockerExecutor`]. `Default` reads `DOCKER_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The engine: a socket path (`/var/run/docker.sock`), `unix:///path`, or `tcp://host:port`
    /// / `http://host:port`. Default: `DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub host: String,
    /// Where the workspace is mounted in step containers; their working directory. Absolute.
    pub workspace_mount: String,
    /// The image of stages that name none; without it such a stage is an error.
    pub default_image: Option<String>,
    /// `user` or `uid[:gid]` the steps run as; default: the image's user.
    pub user: Option<String>,
    pub pull: PullPolicy,
    /// Run an init process (`docker-init`) as PID 1 of each step container, so that SIGTERM on
    /// a timeout or a cancellation reaches the step and zombies are reaped. Default: true.
    pub init: bool,
    /// Value of the [`LABEL_INSTANCE`] label; the cleanup functions only touch objects with this
    /// value, so several daemons can share one engine. Default: `default`.
    pub instance: String,
}

/// The default socket when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The default [`DockerConfig::workspace_mount`].
pub const DEFAULT_WORKSPACE_MOUNT: &str = "/workspace";

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string()),
            workspace_mount: DEFAULT_WORKSPACE_MOUNT.to_string(),
            default_image: None,
            user: None,
            pull: PullPolicy::default(),
            init: true,
            instance: "default".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("invalid Docker executor configuration: {0}")]
    Config(String),
    #[error("cannot connect to the Docker engine at {host}: {}", engine_message(.source))]
    Connect {
        host: String,
        #[source]
        source: BollardError,
    },
    #[error("Docker engine error: cannot list {what}: {}", engine_message(.source))]
    List {
        what: &'static str,
        #[source]
        source: BollardError,
    },
    /// What a cleanup could not remove, each problem's message joined with `; `.
    #[error("Docker engine error: {0}")]
    Engine(String),
}

/// Runs stages in Docker containers; see the module documentation.
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    config: DockerConfig,
    docker: Docker,
    /// Set once the client's API version has been negotiated with the engine.
    negotiated: std::sync::Arc<tokio::sync::OnceCell<()>>,
}

impl DockerExecutor {
    /// Checks the configuration and prepares a client. Does not talk to the engine yet (the
    /// first stage or [`DockerExecutor::ping`] does), so the daemon can start before Docker.
    pub fn new(config: DockerConfig) -> Result<DockerExecutor, DockerError> {
        if !config.workspace_mount.starts_with('/') {
            return Err(DockerError::Config(format!(
                "workspace mount `{}` must be an absolute path",
                config.workspace_mount
            )));
        }
        if config.instance.is_empty() {
            return Err(DockerError::Config("instance must not be empty".into()));
        }
        let host = config.host.trim();
        let connect_error = |source: BollardError| DockerError::Connect {
            host: host.to_string(),
            source,
        };
        let docker = if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, 120, bollard::API_DEFAULT_VERSION)
        } else if host.starts_with('/') || host.starts_with("unix://") {
            Docker::connect_with_socket(host, 120, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(DockerError::Config(format!(
                "unsupported Docker host `{host}`: expected a socket path, unix://, tcp:// or http://"
            )));
        }
        .map_err(connect_error)?;
        Ok(DockerExecutor {
            config,
            docker,
            negotiated: Default::default(),
        })
    }

    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// The engine's version, after negotiating the API version with it: a startup check.
    pub async fn ping(&self) -> Result<String, DockerError> {
        let docker = self.client().await?;
        let version = docker.version().await.map_err(|e| self.connect_error(e))?;
        Ok(format!(
            "Docker {} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    /// Removes the containers and networks of one stage attempt (whatever their state): what a
    /// daemon killed while the attempt ran left behind. The Docker counterpart of
    /// [`crate::kill_orphans`].
    pub async fn cleanup_attempt(
        &self,
        run_id: RunId,
        stage: &str,
        attempt: deploylite_model::Attempt,
    ) -> Result<Cleaned, DockerError> {
        let docker = self.client().await?;
        let filter = vec![
            self.instance_label(),
            format!("{LABEL_RUN_ID}={run_id}"),
            format!("{LABEL_STAGE}={stage}"),
            format!("{LABEL_ATTEMPT}={attempt}"),
        ];
        cleanup::sweep(&docker, filter).await
    }

    /// Removes the containers and networks of every attempt of a run.
    pub async fn cleanup_run(&self, run_id: RunId) -> Result<Cleaned, DockerError> {
        let docker = self.client().await?;
        let filter = vec![self.instance_label(), format!("{LABEL_RUN_ID}={run_id}")];
        cleanup::sweep(&docker, filter).await
    }

    /// Removes every container and network of this instance: at daemon start, when no stage
    /// can be running yet.
    pub async fn cleanup_all(&self) -> Result<Cleaned, DockerError> {
        let docker = self.client().await?;
        cleanup::sweep(&docker, vec![self.instance_label()]).await
    }

    fn instance_label(&self) -> String {
        format!("{LABEL_INSTANCE}={}", self.config.instance)
    }

    fn connect_error(&self, source: BollardError) -> DockerError {
        DockerError::Connect {
            host: self.config.host.clone(),
            source,
        }
    }

    /// The client, its API version negotiated down to the engine's on first use (a 20.10
    /// engine speaks API 1.41; bollard defaults to a newer one).
    async fn client(&self) -> Result<Docker, DockerError> {
        self.negotiated
            .get_or_try_init(|| async {
                self.docker
                    .clone()
                    .negotiate_version()
                    .await
                    .map(|_| ())
                    .map_err(|e| self.connect_error(e))
            })
            .await?;
        Ok(self.docker.clone())
    }

    async fn run(
        &self,
        job: StageJob,
        log: &mut StageLog,
        cancel: CancellationToken,
    ) -> AttemptOutcome {
        let plan = match Plan::new(&self.config, &job) {
            Ok(plan) => plan,
            Err(e) => {
                let message = e.to_string();
                log.system(&message).await;
                return AttemptOutcome::Error(message);
            }
        };
        if job.steps.is_empty() {
            return AttemptOutcome::Succeeded;
        }
        let docker = match self.client().await {
            Ok(docker) => docker,
            Err(e) => {
                let message = e.to_string();
                log.system(&message).await;
                return AttemptOutcome::Error(message);
            }
        };
        let deadline = job.timeout.map(|t| Instant::now() + t);
        let mut leftovers = Leftovers::new(docker.clone(), plan.key.clone());
        let attempt = Attempt {
            docker: &docker,
            job: &job,
            plan: &plan,
            deadline,
            cancel: &cancel,
        };
        let outcome = match self.run_attempt(&attempt, log, &mut leftovers).await {
            ControlFlow::Break(outcome) => outcome,
            ControlFlow::Continue(()) => AttemptOutcome::Succeeded,
        };
        let problems = leftovers.release().await;
        for problem in problems {
            tracing::warn!(
                run_id = job.run_id.get(),
                stage = %job.stage,
                attempt = job.attempt.get(),
                %problem,
                "docker cleanup"
            );
            log.system(&format!("cleanup: {problem}")).await;
        }
        outcome
    }

    /// Images, network, services, steps: each phase either lets the attempt go on or ends it
    /// with the outcome the log has explained.
    async fn run_attempt(
        &self,
        attempt: &Attempt<'_>,
        log: &mut StageLog,
        leftovers: &mut Leftovers,
    ) -> ControlFlow<AttemptOutcome> {
        self.prepare_images(attempt, log).await?;
        create_network(attempt, log, leftovers).await?;
        self.start_services(attempt, log, leftovers).await?;
        self.run_steps(attempt, log, leftovers).await
    }
}

/// What every phase of one attempt works with, besides the log and the leftovers it adds to.
struct Attempt<'a> {
    docker: &'a Docker,
    job: &'a StageJob,
    plan: &'a Plan,
    deadline: Option<Instant>,
    cancel: &'a CancellationToken,
}

/// The attempt's bridge network, which its services and steps join.
async fn create_network(
    attempt: &Attempt<'_>,
    log: &mut StageLog,
    leftovers: &mut Leftovers,
) -> ControlFlow<AttemptOutcome> {
    let plan = attempt.plan;
    let network = NetworkCreateRequest {
        name: plan.network.clone(),
        driver: Some("bridge".into()),
        labels: Some(plan.labels.clone()),
        ..Default::default()
    };
    match attempt.docker.create_network(network).await {
        Ok(created) => {
            leftovers.network(if created.id.is_empty() {
                plan.network.clone()
            } else {
                created.id
            });
            ControlFlow::Continue(())
        }
        Err(e) => {
            let message = format!(
                "cannot create network `{}`: {}",
                plan.network,
                engine_message(&e)
            );
            log.system(&message).await;
            ControlFlow::Break(AttemptOutcome::Error(message))
        }
    }
}

impl Executor for DockerExecutor {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn execute<'a>(
        &'a self,
        job: StageJob,
        log: &'a mut StageLog,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, AttemptOutcome> {
        Box::pin(self.run(job, log, cancel))
    }
}

/// The engine's own message for an error, without bollard's wrapping.
pub(crate) fn engine_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        let config = DockerConfig {
            host: "/nonexistent/docker.sock".into(),
            ..DockerConfig::default()
        };
        let err = DockerExecutor::new(config).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/docker.sock"), "{err}");
        let config = DockerConfig {
            workspace_mount: "workspace".into(),
            ..DockerConfig::default()
        };
        assert!(DockerExecutor::new(config).is_err());
        let config = DockerConfig {
            host: "ssh://somewhere".into(),
            ..DockerConfig::default()
        };
        assert!(DockerExecutor::new(config).is_err());
    }
}
