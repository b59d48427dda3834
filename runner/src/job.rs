use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use deploylite_model::{Attempt, CommitSha, RepoName, RunId, StageName};
use deploylite_pipeline::{Resources, Service, Step};
/// How an attempt ended: one type from the executor to the runner protocol to the store.
pub use deploylite_protocol::AttemptOutcome;
use tokio_util::sync::CancellationToken;

use crate::log::StageLog;

/// Everything an executor needs to run one attempt of one stage.
#[derive(Debug, Clone)]
pub struct StageJob {
    pub run_id: RunId,
    pub stage: StageName,
    pub attempt: Attempt,
    /// Holds the commit's files; the working directory of every step.
    pub workspace: PathBuf,
    /// Pipeline env < stage env < `DEPLOYLITE_*`; step env is layered on top per step.
    pub env: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    /// Deadline for the whole attempt, all steps together.
    pub timeout: Option<Duration>,
    /// For container executors; the local executor fails a stage that names one unless told
    /// to ignore it (`local_runner.ignore_image`).
    pub image: Option<String>,
    /// CPU and memory limits for container executors, as the pipeline wrote them (the local
    /// executor warns in the log that it does not enforce them).
    pub resources: Resources,
    /// The stage's `services:`. Only the Docker executor runs them; the others fail the
    /// attempt rather than run steps that expect a service that is not there.
    pub services: Vec<Service>,
    /// Where the commit comes from, for executors that fetch it themselves (a Kubernetes init
    /// container clones `source_url` at `commit`); None when the workspace is already filled.
    pub source_url: Option<String>,
    pub repo: RepoName,
    pub pipeline: String,
    pub commit: CommitSha,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place that runs stages: [`crate::LocalExecutor`], [`crate::DockerExecutor`],
/// [`crate::KubernetesExecutor`].
pub trait Executor: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn execute<'a>(
        &'a self,
        job: StageJob,
        log: &'a mut StageLog,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, AttemptOutcome>;

    /// Makes a workspace just filled with the commit ready for this executor's stages (the
    /// local executor gives it to the stage user). Called once per workspace, before its first
    /// stage starts.
    fn adopt_workspace<'a>(
        &'a self,
        _dir: &'a Path,
    ) -> BoxFuture<'a, Result<(), crate::sandbox::SandboxError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The error of an executor that cannot run `services:`: failing the attempt is better than
/// running steps that expect a database (say) that is not there and failing obscurely.
pub(crate) fn services_unsupported(executor: &str, job: &StageJob) -> Option<String> {
    if job.services.is_empty() {
        return None;
    }
    let names: Vec<&str> = job.services.iter().map(|s| s.name.as_str()).collect();
    Some(format!(
        "services: needs the docker executor; the {executor} executor cannot start the services \
         of stage `{}` ({})",
        job.stage,
        names.join(", ")
    ))
}

/// How a step is named in logs: its `name`, else the first line of its script (at most 60 bytes,
/// cut at a character boundary). The same for every executor.
pub(crate) fn step_label(step: &Step) -> String {
    if let Some(name) = &step.name {
        return name.clone();
    }
    let line = step.run.lines().next().unwrap_or_default().trim();
    if line.len() > 60 {
        let mut end = 60;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploylite_pipeline::Service;

    #[tokio::test]
    async fn the_local_executor_refuses_services() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = StageLog::create(&dir.path().join("1.log"))
            .await
            .expect("log");
        let job = StageJob {
            run_id: RunId::new(1),
            stage: "test".into(),
            attempt: Attempt::FIRST,
            workspace: dir.path().to_path_buf(),
            env: BTreeMap::new(),
            steps: vec![Step {
                name: None,
                run: "touch ran".into(),
                env: BTreeMap::new(),
            }],
            timeout: None,
            image: None,
            resources: Resources::default(),
            services: vec![Service {
                name: "db".into(),
                image: "postgres:16".into(),
                env: BTreeMap::new(),
                command: None,
            }],
            source_url: None,
            repo: "r".into(),
            pipeline: "p".into(),
            commit: "c".into(),
        };
        let outcome = crate::LocalExecutor::default()
            .execute(job, &mut log, CancellationToken::new())
            .await;
        assert_eq!(
            outcome,
            AttemptOutcome::Error(
                "services: needs the docker executor; the local executor cannot start the \
                 services of stage `test` (db)"
                    .into()
            )
        );
        assert!(!dir.path().join("ran").exists(), "a step ran");
    }
}
