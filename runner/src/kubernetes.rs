//! The Kubernetes executor (kube): one Pod per stage attempt.
//!
//! The Pod (see [`spec`]) has an init container that clones [`StageJob::source_url`] at
//! [`StageJob::commit`] into an `emptyDir` mounted at `/workspace`, and one main container, the
//! stage's image (or [`KubernetesConfig::default_image`]), that runs every step in order from a
//! single `sh` script: each step is `sh -e -c <run>` with the step's env on top of the stage's,
//! preceded by a marker line that the log follower turns into the usual `step N: label` line.
//! The first failing step writes its number to the termination message and its exit code
//! becomes the container's. One container for all steps (rather than one per step) keeps what
//! steps share on a machine (installed tools, `$HOME`, `/tmp`) as with the local executor, costs
//! one image pull and one container start, and leaves one log to follow.
//!
//! The executor watches the Pod (a `watch` on its name, with a `get` whenever the watch ends or
//! fails), follows the main container's log into the [`StageLog`] as it is produced, and maps
//! the end to a [`AttemptOutcome`]: the container's exit code, a failed clone or an image that
//! cannot be pulled (after [`KubernetesConfig::image_pull_timeout`]) are `Error`s. A timeout or
//! a cancellation deletes the Pod (grace period [`KubernetesConfig::delete_grace_period`]) and
//! waits for it to be gone; the Pod is deleted at the end of every attempt, whatever happened.
//!
//! **The executor fetches the commit itself**: a job without `source_url` is an `Error`; the
//! host workspace is not used. `DEPLOYLITE_WORKSPACE` is `/workspace` in the Pod.

mod logs;
pub mod spec;
mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use deploylite_model::RunId;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::{services_unsupported, step_label, AttemptOutcome, BoxFuture, Executor, StageJob};
use crate::log::{LogStream, StageLog};
use logs::LogMsg;
use spec::{PodSettings, LABEL_ATTEMPT, LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY};
use status::{assess, PodState};

/// How long we keep reading a finished container's log.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Server-side timeout of one watch request (kube re-issues it).
const WATCH_TIMEOUT_SECS: u32 = 240;
/// A watch that ends sooner than this is followed by a pause (poll-like fallback).
const MIN_WATCH_SESSION: Duration = Duration::from_secs(1);
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How many times a Pod deletion is tried before giving up on it.
const DELETE_ROUNDS: u32 = 3;
/// How long a deleted Pod may take to disappear beyond its grace period.
const GONE_SLACK: Duration = Duration::from_secs(30);
/// How long failing reads may go on while waiting for a deleted Pod to disappear.
const UNKNOWN_AFTER: Duration = Duration::from_secs(3);

/// How the executor reaches the cluster and what its Pods look like.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Namespace of the Pods; None: the kubeconfig context's namespace, or the service
    /// account's namespace in a cluster.
    pub namespace: Option<String>,
    /// A kubeconfig file; None: `Config::infer` (`$KUBECONFIG` or `~/.kube/config`, else the
    /// in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; None: its current context.
    pub context: Option<String>,
    /// The image of the init container that clones the commit; it needs `sh` and `git`.
    pub git_image: String,
    /// The image of stages that name none; it needs `sh`.
    pub default_image: String,
    /// The Pods' service account; None: the namespace's default, without a mounted token.
    pub service_account: Option<String>,
    /// Extra labels on every Pod.
    pub labels: BTreeMap<String, String>,
    /// Pods are named `<prefix>-<run>-<stage>-<attempt>`.
    pub pod_name_prefix: String,
    /// How long an image may fail to pull (`ErrImagePull`, `ImagePullBackOff`) or a container
    /// fail to be created before the attempt is an `Error`.
    pub image_pull_timeout: Duration,
    /// Grace period (whole seconds) of the deletion after a timeout or a cancellation.
    pub delete_grace_period: Duration,
    /// How long the API may be unreachable before a running attempt is an `Error`.
    pub api_retry_window: Duration,
    /// A Secret in the Pods' namespace with the keys `username` and `password` (type
    /// `kubernetes.io/basic-auth`): the credential the init container clones with. It reaches
    /// git through a credential helper in the init container's environment; the Pod spec only
    /// names the Secret, and the stage's container never sees it.
    pub git_secret: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: None,
            kubeconfig: None,
            context: None,
            git_image: "alpine/git:latest".into(),
            default_image: "alpine:3".into(),
            service_account: None,
            labels: BTreeMap::new(),
            pod_name_prefix: "deploylite".into(),
            image_pull_timeout: Duration::from_secs(120),
            delete_grace_period: Duration::from_secs(1),
            api_retry_window: Duration::from_secs(60),
            git_secret: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesSetupError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes credentials found (neither a kubeconfig nor an in-cluster service account): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Runs each stage attempt in a Pod. See the module docs.
#[derive(Clone)]
pub struct KubernetesExecutor {
    client: Client,
    namespace: String,
    config: KubernetesConfig,
}

impl std::fmt::Debug for KubernetesExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesExecutor")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KubernetesExecutor {
    /// Loads credentials (`config.kubeconfig`, else `Config::infer`) and builds the client.
    /// Nothing is sent to the cluster yet.
    pub async fn connect(config: KubernetesConfig) -> Result<Self, KubernetesSetupError> {
        let kube_config = match &config.kubeconfig {
            Some(path) => {
                let to_error = |source| KubernetesSetupError::Kubeconfig {
                    path: path.clone(),
                    source,
                };
                let file = Kubeconfig::read_from(path).map_err(to_error)?;
                let options = KubeConfigOptions {
                    context: config.context.clone(),
                    ..Default::default()
                };
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(to_error)?
            }
            None if config.context.is_some() => {
                let options = KubeConfigOptions {
                    context: config.context.clone(),
                    ..Default::default()
                };
                Config::from_kubeconfig(&options).await.map_err(|source| {
                    KubernetesSetupError::Kubeconfig {
                        path: PathBuf::from("$KUBECONFIG or ~/.kube/config"),
                        source,
                    }
                })?
            }
            None => Config::infer().await?,
        };
        let client = Client::try_from(kube_config)?;
        Ok(Self::with_client(client, config))
    }

    /// An executor on an existing client (tests, or a client shared with other code).
    pub fn with_client(client: Client, config: KubernetesConfig) -> Self {
        let namespace = config
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| client.default_namespace().to_string());
        KubernetesExecutor {
            client,
            namespace,
            config,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// The name of the Pod of one stage attempt (deterministic).
    pub fn pod_name(
        &self,
        run_id: RunId,
        stage: &str,
        attempt: deploylite_model::Attempt,
    ) -> String {
        spec::pod_name(&self.config.pod_name_prefix, run_id, stage, attempt)
    }

    fn grace_secs(&self) -> u32 {
        u32::try_from(self.config.delete_grace_period.as_secs()).unwrap_or(u32::MAX)
    }

    async fn run(
        &self,
        job: StageJob,
        log: &mut StageLog,
        cancel: CancellationToken,
    ) -> AttemptOutcome {
        // Before anything else: sidecars in the Pod are not built, and steps without the
        // services they expect would fail obscurely.
        if let Some(message) = services_unsupported("kubernetes", &job) {
            return error(log, message).await;
        }
        let source_url = match job.source_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => {
                let (bare, credential) = crate::source_url::split_credentials(url);
                if credential.is_some() || bare != url {
                    // A Pod spec is readable by anyone who may list Pods, and the URL would
                    // end up in the workspace's .git/config, readable by the stage.
                    log.system(
                        "the repository URL carries a credential: the Pod clones without it \
                         (give the credential as a Secret: DEPLOYLITE_KUBE_GIT_SECRET)",
                    )
                    .await;
                }
                bare
            }
            _ => {
                return error(
                    log,
                    "the kubernetes executor clones the commit in the Pod and needs the \
                     repository's URL, but this stage has no source_url"
                        .into(),
                )
                .await
            }
        };
        if job.steps.is_empty() {
            return AttemptOutcome::Succeeded;
        }
        let name = self.pod_name(job.run_id, &job.stage, job.attempt);
        let nonce = spec::short_hash(&format!("{name}/{}/{}", job.commit, job.repo));
        let settings = PodSettings {
            namespace: &self.namespace,
            git_image: &self.config.git_image,
            default_image: &self.config.default_image,
            service_account: self.config.service_account.as_deref(),
            labels: &self.config.labels,
            deadline_slack_secs: 60,
            git_secret: self.config.git_secret.as_deref(),
        };
        let pod = match spec::build_pod(&job, &settings, &name, &source_url, &nonce) {
            Ok(pod) => pod,
            Err(e) => return error(log, e.to_string()).await,
        };
        if cancel.is_cancelled() {
            log.system("cancelled before the pod was created").await;
            return AttemptOutcome::Cancelled;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut guard = DeleteOnDrop {
            api: Some(api.clone()),
            name: name.clone(),
            grace: self.grace_secs(),
        };
        let deadline = job.timeout.map(|t| Instant::now() + t);
        let ctx = Attempt {
            api: &api,
            name: &name,
            namespace: &self.namespace,
            job: &job,
            source_url: &source_url,
            nonce: &nonce,
        };
        let end = {
            let supervised = self.create_and_supervise(&ctx, &pod, log);
            tokio::select! {
                finished = supervised => End::Finished(finished),
                _ = sleep_until(deadline) => End::TimedOut,
                _ = cancel.cancelled() => End::Cancelled,
            }
        };
        let outcome = match end {
            End::Finished(Finished { outcome, may_run }) => {
                if let AttemptOutcome::Error(message) = &outcome {
                    system_lines(log, message).await;
                }
                self.remove(&ctx, log, may_run).await;
                outcome
            }
            End::TimedOut => {
                let limit = job.timeout.map(|t| format!("{t:?}")).unwrap_or_default();
                log.system(&format!(
                    "timed out after {limit}: deleting pod {}/{name}",
                    self.namespace
                ))
                .await;
                self.remove(&ctx, log, true).await;
                AttemptOutcome::TimedOut
            }
            End::Cancelled => {
                log.system(&format!(
                    "cancelled: deleting pod {}/{name}",
                    self.namespace
                ))
                .await;
                self.remove(&ctx, log, true).await;
                AttemptOutcome::Cancelled
            }
        };
        guard.api = None;
        outcome
    }

    /// Deletes the Pod; when it may still run, waits (bounded) until it is gone.
    async fn remove(&self, ctx: &Attempt<'_>, log: &mut StageLog, wait: bool) {
        let grace = self.grace_secs();
        match delete_pod(ctx.api, ctx.name, grace).await {
            Ok(false) => {}
            Ok(true) if !wait => {}
            Ok(true) => {
                let limit = Duration::from_secs(u64::from(grace)) + GONE_SLACK;
                match wait_gone(ctx.api, ctx.name, limit).await {
                    Gone::Yes => {}
                    Gone::StillThere => {
                        log.system(&format!(
                            "pod {}/{} is still terminating after {limit:?}; the cluster will finish deleting it",
                            ctx.namespace, ctx.name
                        ))
                        .await
                    }
                    Gone::Unknown(error) => {
                        log.system(&format!(
                            "deleted pod {}/{} but cannot confirm it is gone: {error}",
                            ctx.namespace, ctx.name
                        ))
                        .await
                    }
                }
            }
            Err(message) => {
                log.system(&format!(
                    "cannot delete pod {}/{}: {message}; delete it by hand",
                    ctx.namespace, ctx.name
                ))
                .await;
            }
        }
    }

    async fn create_and_supervise(
        &self,
        ctx: &Attempt<'_>,
        pod: &Pod,
        log: &mut StageLog,
    ) -> Finished {
        let created = match self.create(ctx, pod).await {
            Ok(created) => created,
            Err(e) => {
                return Finished {
                    outcome: AttemptOutcome::Error(e.to_string()),
                    may_run: false,
                }
            }
        };
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        log.system(&format!(
            "pod {}/{} created (image {image})",
            ctx.namespace, ctx.name
        ))
        .await;
        self.supervise(ctx, created, log).await
    }

    async fn create(&self, ctx: &Attempt<'_>, pod: &Pod) -> Result<Pod, CreateError> {
        let api_error = |source| CreateError::Api {
            namespace: ctx.namespace.to_string(),
            name: ctx.name.to_string(),
            source,
        };
        let first = match ctx.api.create(&PostParams::default(), pod).await {
            Err(kube::Error::Api(status)) if status.code == 409 => status,
            other => return other.map_err(api_error),
        };
        // A Pod of the same attempt is left over (a rollback after the stage's own Pod, or a
        // daemon that stopped mid-attempt): replace it if it is ours.
        let existing = ctx.api.get_opt(ctx.name).await.ok().flatten();
        let ours = existing.as_ref().is_some_and(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
                && labels.get(LABEL_RUN) == Some(&ctx.job.run_id.to_string())
                && labels.get(LABEL_ATTEMPT) == Some(&ctx.job.attempt.to_string())
        });
        if existing.is_some() && !ours {
            return Err(CreateError::NotOurs {
                namespace: ctx.namespace.to_string(),
                name: ctx.name.to_string(),
                message: first.message,
            });
        }
        if existing.is_some() {
            delete_pod(ctx.api, ctx.name, 0).await?;
            if !matches!(wait_gone(ctx.api, ctx.name, GONE_SLACK).await, Gone::Yes) {
                return Err(CreateError::StillTerminating {
                    namespace: ctx.namespace.to_string(),
                    name: ctx.name.to_string(),
                });
            }
        }
        ctx.api
            .create(&PostParams::default(), pod)
            .await
            .map_err(api_error)
    }

    /// Follows the Pod until its main container has terminated and its log is read.
    async fn supervise(&self, ctx: &Attempt<'_>, created: Pod, log: &mut StageLog) -> Finished {
        let version = created
            .metadata
            .resource_version
            .clone()
            .unwrap_or_else(|| "0".into());
        let (pod_tx, mut pod_rx) = mpsc::channel(64);
        let _watcher = AbortOnDrop(tokio::spawn(watch_pod(
            ctx.api.clone(),
            ctx.name.to_string(),
            version,
            pod_tx,
            self.config.api_retry_window,
        )));
        let mut follower: Option<(AbortOnDrop<()>, mpsc::Receiver<LogMsg>)> = None;
        let mut log_done = false;
        let mut tracker = Tracker::default();
        let mut next_pod = Some(created);
        loop {
            if let Some(pod) = next_pod.take() {
                let state = assess(&pod);
                if matches!(state, PodState::Running | PodState::Terminated { .. })
                    && follower.is_none()
                {
                    let (tx, rx) = mpsc::channel(256);
                    let task =
                        tokio::spawn(logs::follow(ctx.api.clone(), ctx.name.to_string(), tx));
                    follower = Some((AbortOnDrop(task), rx));
                }
                if let Some(outcome) = self.on_state(ctx, state, &mut tracker, log).await {
                    return Finished {
                        outcome,
                        may_run: true,
                    };
                }
            }
            if let Some(at) = tracker.terminated_at {
                if log_done || follower.is_none() {
                    return self.finish(ctx, &tracker, log).await;
                }
                if at.max(tracker.last_output).elapsed() >= DRAIN_LIMIT {
                    log.system("output still open after the step ended; stopped reading it")
                        .await;
                    return self.finish(ctx, &tracker, log).await;
                }
            }
            if let Some(since) = tracker.stuck_since {
                if since.elapsed() >= self.config.image_pull_timeout {
                    let message = tracker.stuck_error.clone().unwrap_or_default();
                    return Finished {
                        outcome: AttemptOutcome::Error(message),
                        may_run: true,
                    };
                }
            }
            let following = follower.is_some();
            let log_rx = follower.as_mut().map(|(_, rx)| rx);
            tokio::select! {
                event = pod_rx.recv() => match event {
                    Some(PodEvent::Pod(pod)) => next_pod = Some(*pod),
                    Some(PodEvent::Gone) => {
                        return Finished {
                            outcome: AttemptOutcome::Error(format!(
                                "pod {}/{} was deleted before the stage finished",
                                ctx.namespace, ctx.name
                            )),
                            may_run: false,
                        }
                    }
                    Some(PodEvent::Lost(message)) => {
                        return Finished { outcome: AttemptOutcome::Error(message), may_run: true }
                    }
                    None => {
                        return Finished {
                            outcome: AttemptOutcome::Error("stopped watching the pod".into()),
                            may_run: true,
                        }
                    }
                },
                message = recv_log(log_rx), if !log_done && following => {
                    tracker.last_output = Instant::now();
                    match message {
                    Some(LogMsg::Line(text)) => {
                        match spec::parse_step_marker(ctx.nonce, &text) {
                            Some(index) => {
                                let label = ctx
                                    .job
                                    .steps
                                    .get(index)
                                    .map(step_label)
                                    .unwrap_or_default();
                                tracker.step = Some(index);
                                log.system(&format!("step {}: {label}", index + 1)).await;
                            }
                            None => log.line(LogStream::Stdout, &text).await,
                        }
                    }
                    Some(LogMsg::Note(text)) => log.system(&text).await,
                    Some(LogMsg::End) | None => log_done = true,
                }},
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Applies one observed state; Some when the attempt is decided by it.
    async fn on_state(
        &self,
        ctx: &Attempt<'_>,
        state: PodState,
        tracker: &mut Tracker,
        log: &mut StageLog,
    ) -> Option<AttemptOutcome> {
        let stuck = matches!(
            state,
            PodState::PullFailing { .. } | PodState::ContainerBroken { fatal: false, .. }
        );
        if !stuck {
            tracker.stuck_since = None;
            tracker.stuck_error = None;
        }
        match state {
            PodState::Pending { note } => {
                if note.is_some() && note != tracker.last_note {
                    log.system(note.as_deref().unwrap_or_default()).await;
                    tracker.last_note = note;
                }
                None
            }
            PodState::CloneFailed { exit_code, message } => Some(AttemptOutcome::Error(format!(
                "cloning {} at {} failed (exit code {exit_code}): {message}",
                ctx.source_url, ctx.job.commit
            ))),
            PodState::PullFailing {
                container,
                image,
                reason,
                message,
            } => {
                let error = format!(
                    "cannot pull image {image} for the {container} container ({reason}): {message}"
                );
                if tracker.stuck_since.is_none() {
                    tracker.stuck_since = Some(Instant::now());
                    log.system(&format!(
                        "cannot pull image {image} yet ({reason}); giving up after {:?}",
                        self.config.image_pull_timeout
                    ))
                    .await;
                }
                tracker.stuck_error = Some(error);
                None
            }
            PodState::ContainerBroken {
                container,
                reason,
                message,
                fatal,
            } => {
                let error = format!("the {container} container cannot start ({reason}): {message}");
                if fatal {
                    return Some(AttemptOutcome::Error(error));
                }
                if tracker.stuck_since.is_none() {
                    tracker.stuck_since = Some(Instant::now());
                    log.system(&format!(
                        "the {container} container cannot start yet ({reason}); giving up after {:?}",
                        self.config.image_pull_timeout
                    ))
                    .await;
                }
                tracker.stuck_error = Some(error);
                None
            }
            PodState::Running => None,
            PodState::Terminated {
                exit_code,
                reason,
                message,
            } => {
                if tracker.terminated_at.is_none() {
                    tracker.terminated_at = Some(Instant::now());
                }
                tracker.terminated = Some((exit_code, reason, message));
                None
            }
            PodState::PodFailed { reason, message } => Some(AttemptOutcome::Error(format!(
                "pod {}/{} failed ({reason}): {message}",
                ctx.namespace, ctx.name
            ))),
        }
    }

    /// Maps the main container's end to the outcome.
    async fn finish(&self, ctx: &Attempt<'_>, tracker: &Tracker, log: &mut StageLog) -> Finished {
        let done = |outcome| Finished {
            outcome,
            may_run: false,
        };
        let Some((exit_code, reason, message)) = tracker.terminated.clone() else {
            return done(AttemptOutcome::Error(
                "the stage container ended without a status".into(),
            ));
        };
        if exit_code == 0 {
            return done(AttemptOutcome::Succeeded);
        }
        let reason = reason.unwrap_or_default();
        let message = message.unwrap_or_default();
        let reported = spec::parse_termination(&message);
        if reported.is_none() && tracker.step.is_none() {
            // The script never ran: the image has no `sh`, or the runtime refused the container.
            return done(AttemptOutcome::Error(format!(
                "the stage container could not run its script (exit code {exit_code}, {reason}): {}",
                message.trim()
            )));
        }
        let last = ctx.job.steps.len().saturating_sub(1);
        let step = reported
            .map(|(step, _)| step)
            .or(tracker.step)
            .unwrap_or(0)
            .min(last);
        if reason == "OOMKilled" {
            let limit = ctx.job.resources.memory.as_deref().unwrap_or("none");
            log.system(&format!(
                "the container ran out of memory (OOMKilled; memory limit {limit})"
            ))
            .await;
        }
        log.system(&format!("step {} exited with {exit_code}", step + 1))
            .await;
        done(AttemptOutcome::Failed {
            step,
            exit_code: Some(exit_code),
        })
    }
}

impl Executor for KubernetesExecutor {
    fn name(&self) -> &'static str {
        "kubernetes"
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

struct Attempt<'a> {
    api: &'a Api<Pod>,
    name: &'a str,
    namespace: &'a str,
    job: &'a StageJob,
    source_url: &'a str,
    nonce: &'a str,
}

struct Finished {
    outcome: AttemptOutcome,
    /// Whether the Pod may still be running (so its deletion must be waited for).
    may_run: bool,
}

enum End {
    Finished(Finished),
    TimedOut,
    Cancelled,
}

struct Tracker {
    /// The step whose marker was seen last.
    step: Option<usize>,
    last_note: Option<String>,
    /// Since when an image pull or a container creation has been failing, and how.
    stuck_since: Option<Instant>,
    stuck_error: Option<String>,
    terminated: Option<(i32, Option<String>, Option<String>)>,
    terminated_at: Option<Instant>,
    /// When the log last delivered something: draining a finished container's log ends
    /// [`DRAIN_LIMIT`] after that.
    last_output: Instant,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            step: None,
            last_note: None,
            stuck_since: None,
            stuck_error: None,
            terminated: None,
            terminated_at: None,
            last_output: Instant::now(),
        }
    }
}

enum PodEvent {
    Pod(Box<Pod>),
    Gone,
    /// The API has been unreachable for too long.
    Lost(String),
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deletes the Pod in the background if `execute` is dropped before it could clean up.
struct DeleteOnDrop {
    api: Option<Api<Pod>>,
    name: String,
    grace: u32,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let Some(api) = self.api.take() else { return };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let name = std::mem::take(&mut self.name);
            let grace = self.grace;
            handle.spawn(async move {
                let _ = delete_pod(&api, &name, grace).await;
            });
        }
    }
}

async fn error(log: &mut StageLog, message: String) -> AttemptOutcome {
    system_lines(log, &message).await;
    AttemptOutcome::Error(message)
}

/// A message (a clone's output, an API message) as system lines, one per line: the log's
/// format is one record per line.
async fn system_lines(log: &mut StageLog, message: &str) {
    for line in message.lines().filter(|l| !l.trim().is_empty()) {
        log.system(line).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_log(rx: Option<&mut mpsc::Receiver<LogMsg>>) -> Option<LogMsg> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn error_text(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                format!("HTTP {}", status.code)
            } else {
                status.reason.clone()
            };
            format!("{reason}: {}", status.message)
        }
        other => other.to_string(),
    }
}

/// Ok(true) when a deletion was accepted, Ok(false) when there was no such Pod.
async fn delete_pod(api: &Api<Pod>, name: &str, grace: u32) -> Result<bool, DeleteError> {
    let params = DeleteParams {
        grace_period_seconds: Some(grace),
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let mut round = 1;
    loop {
        match api.delete(name, &params).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
            Err(e) if round >= DELETE_ROUNDS => return Err(DeleteError(e)),
            Err(_) => {}
        }
        round += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Why a stage's Pod could not be created; the message is the stage's error as users see it.
#[derive(Debug, thiserror::Error)]
enum CreateError {
    #[error("cannot create pod {namespace}/{name}: {}", error_text(.source))]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot create pod {namespace}/{name}: a pod of that name exists and is not this attempt's ({message})"
    )]
    NotOurs {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "cannot create pod {namespace}/{name}: an earlier pod of the same name is still terminating"
    )]
    StillTerminating { namespace: String, name: String },
    /// The left-over Pod of the same name could not be deleted.
    #[error(transparent)]
    Delete(#[from] DeleteError),
}

/// The API refused to delete a Pod, [`DELETE_ROUNDS`] times in a row.
#[derive(Debug, thiserror::Error)]
#[error("{}", error_text(.0))]
struct DeleteError(#[source] kube::Error);

enum Gone {
    Yes,
    StillThere,
    /// The API did not answer usably for a while.
    Unknown(String),
}

/// Whether the Pod disappeared within `limit`.
async fn wait_gone(api: &Api<Pod>, name: &str, limit: Duration) -> Gone {
    let until = Instant::now() + limit;
    let mut failing_since: Option<Instant> = None;
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Gone::Yes,
            Ok(Some(_)) => failing_since = None,
            Err(error) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNKNOWN_AFTER {
                    return Gone::Unknown(error_text(&error));
                }
            }
        }
        if Instant::now() >= until {
            return Gone::StillThere;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends the Pod's states: a watch on its name from `version`, re-issued when it ends, with a
/// `get` after each (which also recovers from an expired version).
async fn watch_pod(
    api: Api<Pod>,
    name: String,
    mut version: String,
    tx: mpsc::Sender<PodEvent>,
    retry_window: Duration,
) {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(WATCH_TIMEOUT_SECS);
    let mut failing_since: Option<Instant> = None;
    loop {
        let session = Instant::now();
        match api.watch(&params, &version).await {
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(WatchEvent::Added(pod)) | Ok(WatchEvent::Modified(pod)) => {
                            if let Some(rv) = pod.metadata.resource_version.clone() {
                                version = rv;
                            }
                            if tx.send(PodEvent::Pod(Box::new(pod))).await.is_err() {
                                return;
                            }
                        }
                        Ok(WatchEvent::Deleted(_)) => {
                            let _ = tx.send(PodEvent::Gone).await;
                            return;
                        }
                        Ok(WatchEvent::Bookmark(bookmark)) => {
                            version = bookmark.metadata.resource_version;
                        }
                        Ok(WatchEvent::Error(status)) => {
                            tracing::debug!(pod = %name, ?status, "watch error event");
                            break;
                        }
                        Err(error) => {
                            tracing::debug!(pod = %name, %error, "watch stream failed");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(pod = %name, %error, "cannot watch the pod"),
        }
        if session.elapsed() < MIN_WATCH_SESSION {
            tokio::time::sleep(MIN_WATCH_SESSION).await;
        }
        match api.get_opt(&name).await {
            Ok(Some(pod)) => {
                failing_since = None;
                if let Some(rv) = pod.metadata.resource_version.clone() {
                    version = rv;
                }
                if tx.send(PodEvent::Pod(Box::new(pod))).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(PodEvent::Gone).await;
                return;
            }
            Err(error) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= retry_window {
                    let _ = tx
                        .send(PodEvent::Lost(format!(
                            "cannot read pod {name} from the Kubernetes API for {retry_window:?}: {}",
                            error_text(&error)
                        )))
                        .await;
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
