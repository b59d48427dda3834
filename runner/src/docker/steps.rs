//! The steps: one container per step, created, started, supervised until it exits (or the
//! deadline passes, or the stage is cancelled), and removed.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cleanup::Leftovers;
use super::interrupt::{interrupt_message, sleep_until, Interrupt};
use super::logs::Lines;
use super::{engine_message, Attempt, DockerExecutor, LABEL_STEP};
use crate::job::{step_label, AttemptOutcome};
use crate::log::StageLog;
use crate::outcome::step_failed;

/// How long a step's container gets between SIGTERM and SIGKILL after a timeout or a
/// cancellation (the local executor's grace period).
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long we keep reading a finished step's output.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long we wait for a stopped container to be reported as exited.
const STOP_WAIT_LIMIT: Duration = Duration::from_secs(10);

enum StepEnd {
    Exited(Option<i32>),
    OutOfMemory,
    Interrupted(Interrupt),
    Error(ContainerError),
}

/// What went wrong with a step's or a service's container; the message is what users see after
/// `step N: ` or `service `name`: `.
#[derive(Debug, thiserror::Error)]
pub(super) enum ContainerError {
    #[error("cannot create container: {}", engine_message(.0))]
    Create(#[source] BollardError),
    #[error("cannot attach to the container: {}", engine_message(.0))]
    Attach(#[source] BollardError),
    #[error("cannot start the container: {}", engine_message(.0))]
    Start(#[source] BollardError),
    #[error("cannot read the container's exit status: {}", engine_message(.0))]
    ExitStatus(#[source] BollardError),
    #[error("the engine reported no exit status")]
    NoExitStatus,
}

impl DockerExecutor {
    /// The steps in order, each with its `step N: label` header; the first that does not
    /// succeed ends the attempt.
    pub(super) async fn run_steps(
        &self,
        attempt: &Attempt<'_>,
        log: &mut StageLog,
        leftovers: &mut Leftovers,
    ) -> ControlFlow<AttemptOutcome> {
        let job = attempt.job;
        for (index, step) in job.steps.iter().enumerate() {
            let label = step_label(step);
            log.system(&format!("step {}: {label}", index + 1)).await;
            let outcome = match self.run_step(attempt, index, log, leftovers).await {
                StepEnd::Exited(Some(0)) => continue,
                StepEnd::Exited(code) => step_failed(log, index, code).await,
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
                    AttemptOutcome::Failed {
                        step: index,
                        exit_code: None,
                    }
                }
                StepEnd::Interrupted(end) => {
                    log.system(&interrupt_message(
                        end,
                        job,
                        ": stopped the step's container",
                    ))
                    .await;
                    end.outcome()
                }
                StepEnd::Error(e) => {
                    let message = format!("step {}: {e}", index + 1);
                    log.system(&message).await;
                    AttemptOutcome::Error(message)
                }
            };
            return ControlFlow::Break(outcome);
        }
        ControlFlow::Continue(())
    }

    /// Step `index + 1` in its own container, removed once it has ended.
    async fn run_step(
        &self,
        attempt: &Attempt<'_>,
        index: usize,
        log: &mut StageLog,
        leftovers: &mut Leftovers,
    ) -> StepEnd {
        let Attempt {
            docker,
            job,
            plan,
            deadline,
            cancel,
        } = *attempt;
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
            Err(e) => return StepEnd::Error(ContainerError::Create(e)),
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
        Err(e) => return StepEnd::Error(ContainerError::Attach(e)),
    };
    if cancel.is_cancelled() {
        return StepEnd::Interrupted(Interrupt::Cancelled);
    }
    if let Err(e) = docker.start_container(id, None).await {
        return StepEnd::Error(ContainerError::Start(e));
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
        Err(e) if code.is_none() => return StepEnd::Error(ContainerError::ExitStatus(e)),
        Err(_) => None,
    };
    let code = code.or_else(|| state.as_ref().and_then(|s| s.exit_code));
    if code != Some(0) && state.as_ref().and_then(|s| s.oom_killed) == Some(true) {
        return StepEnd::OutOfMemory;
    }
    match code {
        Some(code) => StepEnd::Exited(Some(i32::try_from(code).unwrap_or(i32::MAX))),
        None => StepEnd::Error(ContainerError::NoExitStatus),
    }
}
