//! The Docker executor (bollard): every step of a stage attempt runs in a fresh container.
//!
//! For one stage attempt:
//!
//! 1. Everything that can be checked without the engine is checked first (the workspace exists,
//!    there is an image, the CPU and memory limits parse), so a bad stage creates nothing.
//! 2. The image is pulled when absent (or always / never, per [`PullPolicy`]). A failed pull is
//!    a [`StageOutcome::Error`] naming the image and carrying the engine's message.
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
mod limits;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use deploylite_pipeline::Service;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::{step_label, BoxFuture, Executor, StageJob, StageOutcome};
use crate::log::{LogStream, StageLog, MAX_LINE};
use crate::outcome::step_failed;

pub use cleanup::Cleaned;
use cleanup::Leftovers;
pub use limits::{parse_cpu, parse_memory};

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

/// How long a step's container gets between SIGTERM and SIGKILL after a timeout or a
/// cancellation (the local executor's grace period).
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long we keep reading a finished step's output.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long we wait for a stopped container to be reported as exited.
const STOP_WAIT_LIMIT: Duration = Duration::from_secs(10);

/// When the executor pulls a stage's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull only when the engine does not have the image (`if-not-present`, also `missing`).
    #[default]
    IfNotPresent,
    /// Pull before every attempt (`always`).
    Always,
    /// Never pull: a missing image is an error (`never`).
    Never,
}

impl FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "if-not-present" | "missing" => Ok(PullPolicy::IfNotPresent),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "invalid pull policy `{other}`: expected if-not-present, always or never"
            )),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        })
    }
}

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
    #[error("cannot connect to the Docker engine at {host}: {message}")]
    Connect { host: String, message: String },
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
        let connect_error = |e: BollardError| DockerError::Connect {
            host: host.to_string(),
            message: e.to_string(),
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
        run_id: i64,
        stage: &str,
        attempt: u32,
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
    pub async fn cleanup_run(&self, run_id: i64) -> Result<Cleaned, DockerError> {
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

    fn connect_error(&self, e: BollardError) -> DockerError {
        DockerError::Connect {
            host: self.config.host.clone(),
            message: engine_message(&e),
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
    ) -> StageOutcome {
        let plan = match Plan::new(&self.config, &job) {
            Ok(plan) => plan,
            Err(message) => {
                log.system(&message).await;
                return StageOutcome::Error(message);
            }
        };
        if job.steps.is_empty() {
            return StageOutcome::Succeeded;
        }
        let docker = match self.client().await {
            Ok(docker) => docker,
            Err(e) => {
                let message = e.to_string();
                log.system(&message).await;
                return StageOutcome::Error(message);
            }
        };
        let deadline = job.timeout.map(|t| Instant::now() + t);
        let mut leftovers = Leftovers::new(docker.clone(), plan.key.clone());
        let outcome = self
            .run_attempt(&docker, &job, &plan, log, deadline, &cancel, &mut leftovers)
            .await;
        let problems = leftovers.release().await;
        for problem in problems {
            tracing::warn!(
                run_id = job.run_id,
                stage = %job.stage,
                attempt = job.attempt,
                %problem,
                "docker cleanup"
            );
            log.system(&format!("cleanup: {problem}")).await;
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_attempt(
        &self,
        docker: &Docker,
        job: &StageJob,
        plan: &Plan,
        log: &mut StageLog,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
        leftovers: &mut Leftovers,
    ) -> StageOutcome {
        let pulled = interruptible(
            self.ensure_image(docker, &plan.image, log),
            deadline,
            cancel,
        )
        .await;
        let doing = format!(" while preparing image `{}`", plan.image);
        if let Some(end) = settle(pulled, log, job, "", &doing).await {
            return end;
        }
        // Before the network: a service image that cannot be had fails the attempt before
        // anything is created, like the stage's own image.
        for service in &job.services {
            let pulled = interruptible(
                self.ensure_image(docker, &service.image, log),
                deadline,
                cancel,
            )
            .await;
            let context = format!("service `{}`: ", service.name);
            let doing = format!(
                " while preparing image `{}` of service `{}`",
                service.image, service.name
            );
            if let Some(end) = settle(pulled, log, job, &context, &doing).await {
                return end;
            }
        }

        let network = NetworkCreateRequest {
            name: plan.network.clone(),
            driver: Some("bridge".into()),
            labels: Some(plan.labels.clone()),
            ..Default::default()
        };
        match docker.create_network(network).await {
            Ok(created) => leftovers.network(if created.id.is_empty() {
                plan.network.clone()
            } else {
                created.id
            }),
            Err(e) => {
                let message = format!(
                    "cannot create network `{}`: {}",
                    plan.network,
                    engine_message(&e)
                );
                log.system(&message).await;
                return StageOutcome::Error(message);
            }
        }

        for service in &job.services {
            if cancel.is_cancelled() {
                log.system(&format!(
                    "cancelled while starting service `{}`",
                    service.name
                ))
                .await;
                return StageOutcome::Cancelled;
            }
            // Registered in `leftovers` as soon as created, so the final cleanup removes the
            // services whatever happens next.
            let started = interruptible(
                self.start_service(docker, plan, service, leftovers),
                deadline,
                cancel,
            )
            .await;
            let context = format!("service `{}`: ", service.name);
            let doing = format!(" while starting service `{}`", service.name);
            if let Some(end) = settle(started, log, job, &context, &doing).await {
                return end;
            }
            log.system(&format!(
                "service {}: started from image {} (not waited for)",
                service.name, service.image
            ))
            .await;
        }

        for (index, step) in job.steps.iter().enumerate() {
            let label = step_label(step);
            log.system(&format!("step {}: {label}", index + 1)).await;
            let end = self
                .run_step(docker, job, plan, index, log, deadline, cancel, leftovers)
                .await;
            match end {
                StepEnd::Exited(Some(0)) => {}
                StepEnd::Exited(code) => return step_failed(log, index, code).await,
                StepEnd::OutOfMemory => {
                    let limit = job
                        .resources
                        .memory
                        .as_deref()
                        .unwrap_or("the host's memory");
                    log.system(&format!(
                        "step {} was killed by a signal: out of memory (limit {limit})",
                        index + 1
                    ))
                    .await;
                    return StageOutcome::Failed {
                        step: index,
                        exit_code: None,
                    };
                }
                StepEnd::Interrupted(end) => {
                    log.system(&interrupt_message(
                        end,
                        job,
                        ": stopped the step's container",
                    ))
                    .await;
                    return end.outcome();
                }
                StepEnd::Error(message) => {
                    let message = format!("step {}: {message}", index + 1);
                    log.system(&message).await;
                    return StageOutcome::Error(message);
                }
            }
        }
        StageOutcome::Succeeded
    }

    /// Makes sure the engine has `image`, pulling it per the pull policy. Err is the message.
    async fn ensure_image(
        &self,
        docker: &Docker,
        image: &str,
        log: &mut StageLog,
    ) -> Result<(), String> {
        let present = match docker.inspect_image(image).await {
            Ok(_) => true,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(e) => {
                return Err(format!(
                    "cannot inspect image `{image}`: {}",
                    engine_message(&e)
                ))
            }
        };
        match (self.config.pull, present) {
            (PullPolicy::IfNotPresent, true) | (PullPolicy::Never, true) => return Ok(()),
            (PullPolicy::Never, false) => {
                return Err(format!(
                    "image `{image}` is not present on the Docker engine and the pull policy is `never`"
                ))
            }
            _ => {}
        }
        log.system(&format!("pulling image {image}")).await;
        let (from_image, tag) = pull_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(&from_image);
        if let Some(tag) = &tag {
            options = options.tag(tag);
        }
        let mut stream = docker.create_image(Some(options.build()), None, None);
        let mut last_status = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(format!("cannot pull image `{image}`: {detail}"));
                    }
                    // Per-layer progress carries an id; the overall status lines do not.
                    if let (None, Some(status)) = (info.id, info.status) {
                        if status != last_status {
                            log.system(&status).await;
                            last_status = status;
                        }
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "cannot pull image `{image}`: {}",
                        engine_message(&e)
                    ))
                }
            }
        }
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "image `{image}` is still missing after the pull: {}",
                engine_message(&e)
            )),
        }
    }

    /// Creates and starts one service container on the attempt's network. Err is the message.
    async fn start_service(
        &self,
        docker: &Docker,
        plan: &Plan,
        service: &Service,
        leftovers: &mut Leftovers,
    ) -> Result<(), String> {
        let name = format!("{}-svc-{}", plan.network, service.name);
        let mut labels = plan.labels.clone();
        labels.insert(LABEL_SERVICE.into(), service.name.clone());
        let endpoint = EndpointSettings {
            aliases: Some(vec![service.name.clone()]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(service.image.clone()),
            // The image's entrypoint stays; `command` replaces only its CMD (as `docker run
            // IMAGE ARGS...` and GitLab's `services: command`).
            cmd: service.command.clone(),
            env: Some(
                service
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            open_stdin: Some(false),
            tty: Some(false),
            host_config: Some(HostConfig {
                network_mode: Some(plan.network.clone()),
                init: Some(self.config.init),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(plan.network.clone(), endpoint)])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let id = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| format!("cannot create container: {}", engine_message(&e)))?
            .id;
        leftovers.container(id.clone());
        docker
            .start_container(&id, None)
            .await
            .map_err(|e| format!("cannot start the container: {}", engine_message(&e)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        docker: &Docker,
        job: &StageJob,
        plan: &Plan,
        index: usize,
        log: &mut StageLog,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
        leftovers: &mut Leftovers,
    ) -> StepEnd {
        let step = &job.steps[index];
        let name = format!("{}-s{}", plan.network, index + 1);
        let mut env: BTreeMap<String, String> = job.env.clone();
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if env.contains_key("DEPLOYLITE_WORKSPACE") {
            env.insert(
                "DEPLOYLITE_WORKSPACE".into(),
                self.config.workspace_mount.clone(),
            );
        }
        let mut labels = plan.labels.clone();
        labels.insert(LABEL_STEP.into(), (index + 1).to_string());
        let body = ContainerCreateBody {
            image: Some(plan.image.clone()),
            entrypoint: Some(vec![
                "sh".into(),
                "-e".into(),
                "-c".into(),
                step.run.clone(),
            ]),
            cmd: None,
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(self.config.workspace_mount.clone()),
            user: self.config.user.clone(),
            labels: Some(labels),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    target: Some(self.config.workspace_mount.clone()),
                    source: Some(plan.workspace.display().to_string()),
                    typ: Some(MountType::BIND),
                    read_only: Some(false),
                    ..Default::default()
                }]),
                network_mode: Some(plan.network.clone()),
                nano_cpus: plan.nano_cpus,
                memory: plan.memory,
                // No swap beyond the memory limit, as in Kubernetes.
                memory_swap: plan.memory,
                init: Some(self.config.init),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let id = match docker.create_container(Some(options), body).await {
            Ok(created) => created.id,
            Err(e) => {
                return StepEnd::Error(format!("cannot create container: {}", engine_message(&e)))
            }
        };
        leftovers.container(id.clone());
        let end = supervise(docker, &id, log, deadline, cancel).await;
        // Remove it now rather than at the end of the attempt: a stage of many steps should not
        // keep all of them around. What fails here is retried by the final cleanup.
        if leftovers.remove_container(&id).await.is_ok() {
            leftovers.forget_container(&id);
        }
        end
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
    ) -> BoxFuture<'a, StageOutcome> {
        Box::pin(self.run(job, log, cancel))
    }
}

/// What an attempt will do, computed before touching the engine.
struct Plan {
    image: String,
    workspace: PathBuf,
    nano_cpus: Option<i64>,
    memory: Option<i64>,
    /// The attempt's network name; step containers are named after it.
    network: String,
    key: String,
    labels: HashMap<String, String>,
}

impl Plan {
    fn new(config: &DockerConfig, job: &StageJob) -> Result<Plan, String> {
        if !job.workspace.is_dir() {
            return Err(format!(
                "workspace {} does not exist",
                job.workspace.display()
            ));
        }
        let workspace = std::fs::canonicalize(&job.workspace)
            .map_err(|e| format!("workspace {}: {e}", job.workspace.display()))?;
        let image = job
            .image
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(str::to_string)
            .or_else(|| config.default_image.clone())
            .ok_or_else(|| {
                format!(
                    "stage `{}` names no `image` and the Docker executor has no default image: \
                     set `image:` on the stage or configure a default image",
                    job.stage
                )
            })?;
        let nano_cpus = job.resources.cpu.as_deref().map(parse_cpu).transpose()?;
        let memory = job
            .resources
            .memory
            .as_deref()
            .map(parse_memory)
            .transpose()?;
        let key = unique_key();
        let network = format!(
            "deploylite-{}-{}-{}-{key}",
            job.run_id,
            sanitize_name(&job.stage),
            job.attempt
        );
        let mut labels = HashMap::new();
        labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
        labels.insert(LABEL_INSTANCE.to_string(), config.instance.clone());
        labels.insert(LABEL_RUN_ID.to_string(), job.run_id.to_string());
        labels.insert(LABEL_STAGE.to_string(), job.stage.clone());
        labels.insert(LABEL_ATTEMPT.to_string(), job.attempt.to_string());
        labels.insert(LABEL_KEY.to_string(), key.clone());
        labels.insert(LABEL_REPO.to_string(), job.repo.clone());
        labels.insert(LABEL_PIPELINE.to_string(), job.pipeline.clone());
        labels.insert(LABEL_COMMIT.to_string(), job.commit.clone());
        Ok(Plan {
            image,
            workspace,
            nano_cpus,
            memory,
            network,
            key,
            labels,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    TimedOut,
    Cancelled,
}

impl Interrupt {
    fn outcome(self) -> StageOutcome {
        match self {
            Interrupt::TimedOut => StageOutcome::TimedOut,
            Interrupt::Cancelled => StageOutcome::Cancelled,
        }
    }
}

enum StepEnd {
    Exited(Option<i32>),
    OutOfMemory,
    Interrupted(Interrupt),
    Error(String),
}

/// `timed out after 1s: stopped the step's container`, `cancelled while preparing image ...`.
fn interrupt_message(end: Interrupt, job: &StageJob, what: &str) -> String {
    match end {
        Interrupt::TimedOut => {
            let limit = job.timeout.map(|t| format!("{t:?}")).unwrap_or_default();
            format!("timed out after {limit}{what}")
        }
        Interrupt::Cancelled => format!("cancelled{what}"),
    }
}

/// How a preparation (an image pulled, a service started) ended: None to go on, or the
/// attempt's outcome once the log says why. `context` prefixes an error, `doing` follows
/// "timed out after …" or "cancelled".
async fn settle(
    result: Result<Result<(), String>, Interrupt>,
    log: &mut StageLog,
    job: &StageJob,
    context: &str,
    doing: &str,
) -> Option<StageOutcome> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(message)) => {
            let message = format!("{context}{message}");
            log.system(&message).await;
            Some(StageOutcome::Error(message))
        }
        Err(end) => {
            log.system(&interrupt_message(end, job, doing)).await;
            Some(end.outcome())
        }
    }
}

/// Runs `fut` unless the deadline passes or the stage is cancelled first.
async fn interruptible<T>(
    fut: impl std::future::Future<Output = T>,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<T, Interrupt> {
    tokio::select! {
        out = fut => Ok(out),
        _ = sleep_until(deadline) => Err(Interrupt::TimedOut),
        _ = cancel.cancelled() => Err(Interrupt::Cancelled),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Attaches to the created container, starts it and streams its output into the log until it
/// exits, the deadline passes or the stage is cancelled (then stops it).
async fn supervise(
    docker: &Docker,
    id: &str,
    log: &mut StageLog,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> StepEnd {
    // Attach before starting so that no output is lost.
    let attach = AttachContainerOptionsBuilder::new()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .logs(false)
        .build();
    let mut output = match docker.attach_container(id, Some(attach)).await {
        Ok(attached) => attached.output,
        Err(e) => {
            return StepEnd::Error(format!(
                "cannot attach to the container: {}",
                engine_message(&e)
            ))
        }
    };
    if cancel.is_cancelled() {
        return StepEnd::Interrupted(Interrupt::Cancelled);
    }
    if let Err(e) = docker.start_container(id, None).await {
        return StepEnd::Error(format!(
            "cannot start the container: {}",
            engine_message(&e)
        ));
    }
    let wait_options = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut wait = Box::pin(docker.wait_container(id, Some(wait_options)));
    let mut lines = Lines::default();
    let mut output_open = true;
    let sleep = sleep_until(deadline);
    tokio::pin!(sleep);
    let end = loop {
        tokio::select! {
            status = wait.next() => break Ok(status),
            chunk = output.next(), if output_open => match chunk {
                Some(Ok(chunk)) => lines.push(chunk, log).await,
                Some(Err(e)) => {
                    tracing::debug!(container = id, error = %e, "attach stream ended with an error");
                    output_open = false;
                }
                None => output_open = false,
            },
            _ = &mut sleep => break Err(Interrupt::TimedOut),
            _ = cancel.cancelled() => break Err(Interrupt::Cancelled),
        }
    };
    let end = match end {
        Ok(status) => exit_status(docker, id, status).await,
        Err(interrupt) => {
            // SIGTERM, then SIGKILL after the grace period (the engine does both).
            let stop = StopContainerOptionsBuilder::new()
                .t(KILL_GRACE.as_secs() as i32)
                .build();
            if let Err(e) = docker.stop_container(id, Some(stop)).await {
                tracing::debug!(container = id, error = %e, "stop failed; removing by force");
            }
            let _ = tokio::time::timeout(STOP_WAIT_LIMIT, wait.next()).await;
            StepEnd::Interrupted(interrupt)
        }
    };
    // The output of a finished container ends promptly; do not wait for it forever.
    let drain = async {
        while output_open {
            match output.next().await {
                Some(Ok(chunk)) => lines.push(chunk, log).await,
                _ => output_open = false,
            }
        }
    };
    if tokio::time::timeout(DRAIN_LIMIT, drain).await.is_err() {
        log.system("output still open after the step ended; stopped reading it")
            .await;
    }
    lines.flush(log).await;
    end
}

/// Turns the container's wait result into a step end; an OOM kill is reported as such.
async fn exit_status(
    docker: &Docker,
    id: &str,
    status: Option<Result<bollard::models::ContainerWaitResponse, BollardError>>,
) -> StepEnd {
    let code = match status {
        Some(Ok(response)) => Some(response.status_code),
        Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Some(code),
        // The wait connection broke: ask the engine for the container's state instead.
        Some(Err(_)) | None => None,
    };
    let state = match docker.inspect_container(id, None).await {
        Ok(inspect) => inspect.state,
        Err(e) if code.is_none() => {
            return StepEnd::Error(format!(
                "cannot read the container's exit status: {}",
                engine_message(&e)
            ))
        }
        Err(_) => None,
    };
    let code = code.or_else(|| state.as_ref().and_then(|s| s.exit_code));
    if code != Some(0) && state.as_ref().and_then(|s| s.oom_killed) == Some(true) {
        return StepEnd::OutOfMemory;
    }
    match code {
        Some(code) => StepEnd::Exited(Some(i32::try_from(code).unwrap_or(i32::MAX))),
        None => StepEnd::Error("the engine reported no exit status".into()),
    }
}

/// Splits the attach stream's chunks into lines, per stream.
#[derive(Default)]
struct Lines {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Lines {
    async fn push(&mut self, chunk: LogOutput, log: &mut StageLog) {
        let (stream, buf, bytes) = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (LogStream::Stdout, &mut self.stdout, message)
            }
            LogOutput::StdErr { message } => (LogStream::Stderr, &mut self.stderr, message),
            LogOutput::StdIn { .. } => return,
        };
        buf.extend_from_slice(&bytes);
        while let Some(newline) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=newline).collect();
            log.line(stream, &String::from_utf8_lossy(&line)).await;
        }
        if buf.len() >= MAX_LINE {
            let line = std::mem::take(buf);
            log.line(stream, &String::from_utf8_lossy(&line)).await;
        }
    }

    /// Logs what is left without a final newline.
    async fn flush(&mut self, log: &mut StageLog) {
        for (stream, buf) in [
            (LogStream::Stdout, &mut self.stdout),
            (LogStream::Stderr, &mut self.stderr),
        ] {
            if !buf.is_empty() {
                let line = std::mem::take(buf);
                log.line(stream, &String::from_utf8_lossy(&line)).await;
            }
        }
    }
}

/// `fromImage` and `tag` for a pull. A reference without a tag or digest means `latest` (the
/// engine would otherwise pull every tag of the repository).
fn pull_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        (image.to_string(), None)
    } else {
        (image.to_string(), Some("latest".to_string()))
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

/// A stage name usable in a container or network name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
fn sanitize_name(stage: &str) -> String {
    let mut name: String = stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if name.is_empty() {
        name.push_str("stage");
    }
    name
}

/// 8 hex digits, unique enough per attempt execution (random keys from the std hasher).
fn unique_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    format!("{:08x}", hasher.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_references() {
        assert_eq!(
            pull_reference("alpine"),
            ("alpine".into(), Some("latest".into()))
        );
        assert_eq!(pull_reference("alpine:3.20"), ("alpine:3.20".into(), None));
        assert_eq!(
            pull_reference("localhost:5000/team/app"),
            ("localhost:5000/team/app".into(), Some("latest".into()))
        );
        assert_eq!(
            pull_reference("localhost:5000/team/app:v1"),
            ("localhost:5000/team/app:v1".into(), None)
        );
        assert_eq!(
            pull_reference("alpine@sha256:abc"),
            ("alpine@sha256:abc".into(), None)
        );
    }

    #[test]
    fn names() {
        assert_eq!(sanitize_name("build"), "build");
        assert_eq!(sanitize_name("deploy prod/eu"), "deploy-prod-eu");
        assert_eq!(sanitize_name(""), "stage");
        assert_ne!(unique_key(), unique_key());
        assert_eq!(unique_key().len(), 8);
    }

    #[test]
    fn pull_policies() {
        for policy in [
            PullPolicy::IfNotPresent,
            PullPolicy::Always,
            PullPolicy::Never,
        ] {
            assert_eq!(policy.to_string().parse::<PullPolicy>(), Ok(policy));
        }
        assert_eq!(
            "missing".parse::<PullPolicy>(),
            Ok(PullPolicy::IfNotPresent)
        );
        assert!("sometimes".parse::<PullPolicy>().is_err());
    }

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
