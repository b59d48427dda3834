//! What an attempt will do (image, workspace, limits, names, labels), computed and checked
//! before anything touches the engine.

use std::collections::HashMap;
use std::path::PathBuf;

use super::limits::{parse_cpu, parse_memory, LimitError};
use super::{
    DockerConfig, LABEL_ATTEMPT, LABEL_COMMIT, LABEL_INSTANCE, LABEL_KEY, LABEL_MANAGED,
    LABEL_PIPELINE, LABEL_REPO, LABEL_RUN_ID, LABEL_STAGE,
};
use crate::job::StageJob;

/// Why a stage cannot run here, found before anything is created.
#[derive(Debug, thiserror::Error)]
pub(super) enum PlanError {
    #[error("workspace {} does not exist", .0.display())]
    NoWorkspace(PathBuf),
    #[error("workspace {}: {source}", path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "stage `{0}` names no `image` and the Docker executor has no default image: \
         set `image:` on the stage or configure a default image"
    )]
    NoImage(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// What an attempt will do, computed before touching the engine.
pub(super) struct Plan {
    pub(super) image: String,
    pub(super) workspace: PathBuf,
    pub(super) nano_cpus: Option<i64>,
    pub(super) memory: Option<i64>,
    /// The attempt's network name; step containers are named after it.
    pub(super) network: String,
    pub(super) key: String,
    pub(super) labels: HashMap<String, String>,
}

impl Plan {
    pub(super) fn new(config: &DockerConfig, job: &StageJob) -> Result<Plan, PlanError> {
        if !job.workspace.is_dir() {
            return Err(PlanError::NoWorkspace(job.workspace.clone()));
        }
        let workspace =
            std::fs::canonicalize(&job.workspace).map_err(|source| PlanError::Workspace {
                path: job.workspace.clone(),
                source,
            })?;
        let image = job
            .image
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(str::to_string)
            .or_else(|| config.default_image.clone())
            .ok_or_else(|| PlanError::NoImage(job.stage.to_string()))?;
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
        labels.insert(LABEL_STAGE.to_string(), job.stage.to_string());
        labels.insert(LABEL_ATTEMPT.to_string(), job.attempt.to_string());
        labels.insert(LABEL_KEY.to_string(), key.clone());
        labels.insert(LABEL_REPO.to_string(), job.repo.to_string());
        labels.insert(LABEL_PIPELINE.to_string(), job.pipeline.clone());
        labels.insert(LABEL_COMMIT.to_string(), job.commit.to_string());
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
    fn names() {
        assert_eq!(sanitize_name("build"), "build");
        assert_eq!(sanitize_name("deploy prod/eu"), "deploy-prod-eu");
        assert_eq!(sanitize_name(""), "stage");
        assert_ne!(unique_key(), unique_key());
        assert_eq!(unique_key().len(), 8);
    }
}
