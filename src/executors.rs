//! Building the Docker and Kubernetes executors for `deploylite runner`. Their settings come
//! from the environment (documented in README.md), so the runner's flags stay few.

use std::sync::Arc;

use anyhow::{Context, Result};
use deploylite_runner::{
    DockerConfig, DockerExecutor, Executor, KubernetesConfig, KubernetesExecutor,
};

/// The executor's name, the executor, and whether it needs the commit's files on this machine.
pub type Built = (&'static str, Arc<dyn Executor>, bool);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The Docker executor of runner `runner`. Its containers and networks are labelled with the
/// runner's name, and whatever a killed predecessor of that name left behind is removed before
/// the runner takes work (other runners sharing the engine keep theirs).
pub async fn docker(runner: &str) -> Result<Built> {
    let mut config = DockerConfig {
        instance: format!("runner-{runner}"),
        ..DockerConfig::default()
    };
    if let Some(host) = env("DEPLOYLITE_DOCKER_HOST") {
        config.host = host;
    }
    config.default_image = env("DEPLOYLITE_DOCKER_DEFAULT_IMAGE");
    config.user = env("DEPLOYLITE_DOCKER_USER");
    if let Some(pull) = env("DEPLOYLITE_DOCKER_PULL") {
        config.pull = pull
            .parse()
            .map_err(|e| anyhow::anyhow!("DEPLOYLITE_DOCKER_PULL: {e}"))?;
    }
    let executor = DockerExecutor::new(config).context("cannot set up the docker executor")?;
    let version = executor
        .ping()
        .await
        .context("cannot reach the Docker engine")?;
    let cleaned = executor
        .cleanup_all()
        .await
        .context("cannot remove the containers a previous runner left")?;
    if cleaned.containers + cleaned.networks > 0 {
        tracing::warn!(
            containers = cleaned.containers,
            networks = cleaned.networks,
            "removed what a previous incarnation of this runner left in Docker"
        );
    }
    tracing::info!(engine = %version, "docker executor ready");
    Ok(("docker", Arc::new(executor), true))
}

pub async fn kubernetes() -> Result<Built> {
    let mut config = KubernetesConfig {
        namespace: env("DEPLOYLITE_KUBE_NAMESPACE"),
        kubeconfig: env("DEPLOYLITE_KUBECONFIG").map(Into::into),
        context: env("DEPLOYLITE_KUBE_CONTEXT"),
        service_account: env("DEPLOYLITE_KUBE_SERVICE_ACCOUNT"),
        git_secret: env("DEPLOYLITE_KUBE_GIT_SECRET"),
        ..KubernetesConfig::default()
    };
    if let Some(image) = env("DEPLOYLITE_KUBE_GIT_IMAGE") {
        config.git_image = image;
    }
    if let Some(image) = env("DEPLOYLITE_KUBE_DEFAULT_IMAGE") {
        config.default_image = image;
    }
    let executor = KubernetesExecutor::connect(config)
        .await
        .context("cannot set up the kubernetes executor")?;
    // Pods clone the commit themselves: no workspace on this machine.
    Ok(("kubernetes", Arc::new(executor), false))
}
