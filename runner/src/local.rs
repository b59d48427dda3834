//! The local executor: each step is `sh -e -c <run>` in the workspace, in a process group of its
//! own so that a timeout or a cancellation kills the step and everything it started.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use deploylite_pipeline::Resources;

use crate::job::{services_unsupported, step_label, AttemptOutcome, BoxFuture, Executor, StageJob};
use crate::log::{read_line_bounded, LogStream, StageLog, MAX_LINE};
use crate::outcome::step_failed;
use crate::sandbox::{Sandbox, SandboxError};

/// How long a step gets between SIGTERM and SIGKILL after a timeout or a cancellation.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long we keep reading a finished step's output pipes.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct LocalExecutor {
    shell: String,
    /// `DEPLOYLITE_*` variables of our own environment: configuration, and with it secrets
    /// (forge tokens, webhook secrets, the database URL, a runner's registration token). A
    /// stage inherits the rest of the environment (PATH, HOME, locale) but never these.
    withheld: Vec<std::ffi::OsString>,
    /// Who the steps run as and what they are kept from (docs/local-isolation.md).
    sandbox: Sandbox,
    /// `local_runner.ignore_image`: a stage naming an `image:` runs here anyway, with a
    /// warning in its log, instead of failing.
    ignore_image: bool,
}

impl Default for LocalExecutor {
    /// `sh` from `PATH`, looked up once: a bare name makes every spawn try each `PATH` entry
    /// in turn (one failed `execve` per entry before the right one).
    fn default() -> Self {
        let shell = std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("sh"))
                    .find(|candidate| candidate.is_file())
            })
            .map_or_else(|| "sh".to_string(), |p| p.display().to_string());
        let withheld = std::env::vars_os()
            .map(|(name, _)| name)
            .filter(|name| name.to_string_lossy().starts_with("DEPLOYLITE_"))
            .collect();
        LocalExecutor {
            shell,
            withheld,
            sandbox: Sandbox::default(),
            ignore_image: false,
        }
    }
}

enum StepEnd {
    Exited(Option<i32>),
    TimedOut,
    Cancelled,
}

impl LocalExecutor {
    /// Steps run inside `sandbox` (the daemon's and a runner's executors; `default()` keeps
    /// nothing from them, for `deploylite run`).
    pub fn sandboxed(sandbox: Sandbox) -> LocalExecutor {
        LocalExecutor {
            sandbox,
            ..LocalExecutor::default()
        }
    }

    /// Whether stages naming an `image:` run here anyway (with a warning) or fail.
    pub fn ignoring_image(self, ignore_image: bool) -> LocalExecutor {
        LocalExecutor {
            ignore_image,
            ..self
        }
    }

    async fn run(
        &self,
        job: StageJob,
        log: &mut StageLog,
        cancel: CancellationToken,
    ) -> AttemptOutcome {
        if !job.workspace.is_dir() {
            return AttemptOutcome::Error(format!(
                "workspace {} does not exist",
                job.workspace.display()
            ));
        }
        if let Some(message) = services_unsupported("local", &job) {
            return AttemptOutcome::Error(message);
        }
        if let Some(image) = &job.image {
            if !self.ignore_image {
                return AttemptOutcome::Error(image_unsupported(&job.stage, image));
            }
            log.system(&format!(
                "warning: image `{image}` ignored (local_runner.ignore_image): stage `{}` runs \
                 on this machine, not in a container",
                job.stage
            ))
            .await;
        }
        if let Some(limits) = resources_text(&job.resources) {
            log.system(&format!(
                "warning: the local executor does not enforce resources: stage `{}` runs \
                 without its limits ({limits})",
                job.stage
            ))
            .await;
        }
        let deadline = job.timeout.map(|t| Instant::now() + t);
        for (index, step) in job.steps.iter().enumerate() {
            let label = step_label(step);
            // Flushed with whatever the attempt wrote before it, in one write.
            log.system(&format!("step {}: {label}", index + 1)).await;
            let mut command = Command::new(&self.shell);
            command
                .arg("-e")
                .arg("-c")
                .arg(&step.run)
                .current_dir(&job.workspace);
            for name in &self.withheld {
                command.env_remove(name);
            }
            self.sandbox.configure(&mut command, &job.workspace);
            command
                .envs(&job.env)
                // A step may add to the environment, but DeployLite's own variables stay ours:
                // they identify the attempt (and find its processes after a crash).
                .envs(
                    step.env
                        .iter()
                        .filter(|(k, _)| !k.starts_with("DEPLOYLITE_")),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            let mut child = match self.sandbox.spawn(command).await {
                Ok(child) => child,
                Err(e) => {
                    return AttemptOutcome::Error(format!("cannot start `{}`: {e}", self.shell))
                }
            };
            let end = supervise(&mut child, log, deadline, &cancel).await;
            match end {
                StepEnd::Exited(Some(0)) => {}
                StepEnd::Exited(code) => return step_failed(log, index, code).await,
                StepEnd::TimedOut => {
                    let limit = job.timeout.map(|t| format!("{t:?}")).unwrap_or_default();
                    log.system(&format!(
                        "timed out after {limit}: killed the step's process group"
                    ))
                    .await;
                    return AttemptOutcome::TimedOut;
                }
                StepEnd::Cancelled => {
                    log.system("cancelled: killed the step's process group")
                        .await;
                    return AttemptOutcome::Cancelled;
                }
            }
        }
        AttemptOutcome::Succeeded
    }
}

/// Why a stage with an `image:` does not run here, and what to do about it: running its steps
/// on the host instead would pass or fail for reasons unrelated to the image it asks for.
fn image_unsupported(stage: &str, image: &str) -> String {
    format!(
        "image: the local executor cannot run stage `{stage}` in image `{image}`: it runs steps \
         on this machine, not in containers; send the stage to a Docker or Kubernetes runner \
         (`runs_on` one of its labels), or set `local_runner.ignore_image: true` \
         (DEPLOYLITE_LOCAL_RUNNER__IGNORE_IMAGE=true, or --ignore-image) to run it here without \
         the image"
    )
}

/// `cpu: 1, memory: 512Mi`, or None when the stage sets no limit.
fn resources_text(resources: &Resources) -> Option<String> {
    let parts: Vec<String> = [("cpu", &resources.cpu), ("memory", &resources.memory)]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}: {v}")))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn execute<'a>(
        &'a self,
        job: StageJob,
        log: &'a mut StageLog,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, AttemptOutcome> {
        Box::pin(self.run(job, log, cancel))
    }

    fn adopt_workspace<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<(), SandboxError>> {
        Box::pin(self.sandbox.adopt_workspace(dir))
    }
}

/// Streams the child's output into the log until it exits, the deadline passes or the stage is
/// cancelled; then makes sure nothing of its process group survives.
async fn supervise(
    child: &mut Child,
    log: &mut StageLog,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> StepEnd {
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let (tx, mut rx) = mpsc::channel::<(LogStream, String)>(256);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out, LogStream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err, LogStream::Stderr, tx.clone()));
    }
    drop(tx);

    let sleep = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let mut output_open = true;
    let end = loop {
        tokio::select! {
            status = child.wait() => {
                break StepEnd::Exited(status.ok().and_then(|s| s.code()));
            }
            line = rx.recv(), if output_open => match line {
                Some((stream, text)) => {
                    // Whatever else is already waiting goes out with it in one write.
                    log.buffer(stream, &text).await;
                    while let Ok((stream, text)) = rx.try_recv() {
                        log.buffer(stream, &text).await;
                    }
                    log.flush().await;
                }
                None => output_open = false,
            },
            _ = &mut sleep => break StepEnd::TimedOut,
            _ = cancel.cancelled() => break StepEnd::Cancelled,
        }
    };
    if let Some(pgid) = pgid {
        if !matches!(end, StepEnd::Exited(_)) {
            let _ = killpg(pgid, Signal::SIGTERM);
            if tokio::time::timeout(KILL_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        }
        // Background processes a step left behind would otherwise outlive the stage and keep
        // our pipes open.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = child.wait().await;
    // A process that escaped the group (setsid) may still hold our pipes: drain what is
    // there, but do not wait for it forever.
    let drain = async {
        while let Some((stream, text)) = rx.recv().await {
            log.line(stream, &text).await;
        }
    };
    if tokio::time::timeout(DRAIN_LIMIT, drain).await.is_err() {
        log.system("output still open after the step ended; stopped reading it")
            .await;
    }
    end
}

async fn forward_lines<R: AsyncRead + Unpin>(
    reader: R,
    stream: LogStream,
    tx: mpsc::Sender<(LogStream, String)>,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::with_capacity(MAX_LINE);
    loop {
        // Bounded: a stage printing without newlines must not grow this buffer.
        match read_line_bounded(&mut reader, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf).into_owned();
                if tx.send((stream, text)).await.is_err() {
                    break;
                }
            }
        }
    }
}
