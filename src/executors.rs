//! Building the executors for `deploylite runner`. Their settings come from the environment
//! (documented in README.md), so the runner's flags stay few.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use deploylite_runner::{
    DockerConfig, DockerExecutor, Executor, KubernetesConfig, KubernetesExecutor, LocalExecutor,
    Sandbox, SandboxConfig,
};

/// The executor's name, the executor, and whether it needs the commit's files on this machine.
pub type Built = (&'static str, Arc<dyn Executor>, bool);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The local executor of a runner: stages run as `DEPLOYLITE_LOCAL_RUNNER__USER` (default
/// `nobody`) when the runner is root, else under Landlock; either way they cannot reach the
/// state dir (the runner's credential) or the token file. Creates the work dir (0711: stages
/// enter their own workspace by name, never list the others) and the state dir (0700).
/// `ignore_image`: stages naming an `image:` run here anyway (with a warning) instead of failing.
pub async fn local(
    work_dir: &Path,
    state_dir: &Path,
    token_file: Option<&Path>,
    ignore_image: bool,
) -> Result<Built> {
    create_dir_with_mode(work_dir, 0o711).await?;
    create_dir_with_mode(state_dir, 0o700).await?;
    let mut protected: Vec<PathBuf> = vec![state_dir.to_path_buf()];
    protected.extend(token_file.map(Path::to_path_buf));
    let sandbox = Sandbox::for_stages(&SandboxConfig {
        user: env("DEPLOYLITE_LOCAL_RUNNER__USER")
            .unwrap_or_else(|| deploylite_runner::sandbox::DEFAULT_STAGE_USER.to_string()),
        protected,
        workspaces: work_dir.to_path_buf(),
    })
    .await
    .context(
        "cannot isolate local stages (DEPLOYLITE_LOCAL_RUNNER__USER; docs/local-isolation.md)",
    )?;
    tracing::info!(isolation = %sandbox.describe(), ignore_image, "local executor");
    let executor = LocalExecutor::sandboxed(sandbox).ignoring_image(ignore_image);
    Ok(("local", Arc::new(executor), true))
}

/// Creates `dir` with `mode`, or tightens an existing directory to it (saying so): it holds
/// what stages must not read, or must not list.
async fn create_dir_with_mode(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let path = dir.to_path_buf();
    let tightened = tokio::task::spawn_blocking(move || -> std::io::Result<Option<u32>> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&path)?;
        let was = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
        if was & !mode == 0 {
            return Ok(None);
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(Some(was))
    })
    .await
    .context("creating a directory stopped")?
    .with_context(|| format!("cannot create {} (mode {mode:o})", dir.display()))?;
    if let Some(was) = tightened {
        tracing::warn!(dir = %dir.display(), was = %format!("{was:o}"), now = %format!("{mode:o}"),
            "tightened the permissions of a directory local stages must not read");
    }
    Ok(())
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
