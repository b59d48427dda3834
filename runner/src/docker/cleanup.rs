//! Removing what the Docker executor created: per attempt (always, whatever the outcome) and by
//! label for what a killed daemon left behind.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;

use super::{engine_message, DockerError, LABEL_KEY};

/// What a cleanup removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub containers: usize,
    pub networks: usize,
}

/// The containers and the network of one attempt execution, until they are removed. Dropped
/// without [`Leftovers::release`] (the attempt's future was dropped), it removes them from a
/// spawned task.
pub(super) struct Leftovers {
    docker: Docker,
    key: String,
    containers: Vec<String>,
    network: Option<String>,
    armed: bool,
}

impl Leftovers {
    pub(super) fn new(docker: Docker, key: String) -> Leftovers {
        Leftovers {
            docker,
            key,
            containers: Vec::new(),
            network: None,
            armed: true,
        }
    }

    pub(super) fn container(&mut self, id: String) {
        self.containers.push(id);
    }

    pub(super) fn forget_container(&mut self, id: &str) {
        self.containers.retain(|c| c != id);
    }

    pub(super) fn network(&mut self, id: String) {
        self.network = Some(id);
    }

    pub(super) async fn remove_container(&self, id: &str) -> Result<(), RemoveError> {
        remove_container(&self.docker, id).await
    }

    /// Removes everything of the attempt; returns what could not be removed. Should this
    /// future be dropped half-way, `Drop` starts over (removal is idempotent).
    pub(super) async fn release(&mut self) -> Vec<String> {
        let problems = release(
            self.docker.clone(),
            self.key.clone(),
            self.containers.clone(),
            self.network.clone(),
        )
        .await;
        self.armed = false;
        self.containers.clear();
        self.network = None;
        problems
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, "docker leftovers dropped outside a runtime; not removed");
            return;
        };
        let docker = self.docker.clone();
        let key = self.key.clone();
        let containers = std::mem::take(&mut self.containers);
        let network = self.network.take();
        runtime.spawn(async move {
            for problem in release(docker, key.clone(), containers, network).await {
                tracing::warn!(%key, %problem, "docker cleanup after an abandoned attempt");
            }
        });
    }
}

async fn release(
    docker: Docker,
    key: String,
    containers: Vec<String>,
    network: Option<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for id in &containers {
        if let Err(e) = remove_container(&docker, id).await {
            problems.push(e.to_string());
        }
    }
    if let Some(network) = &network {
        if let Err(e) = remove_network(&docker, network).await {
            problems.push(e.to_string());
        }
    }
    // Whatever carries this attempt's key but was not recorded (a create whose response was
    // lost, say) goes too.
    if let Err(e) = sweep(&docker, vec![format!("{LABEL_KEY}={key}")]).await {
        problems.push(e.to_string());
    }
    problems
}

/// Removes (by force: running ones are killed) every container, then every network, whose
/// labels match all of `labels` (`key=value`).
pub(super) async fn sweep(docker: &Docker, labels: Vec<String>) -> Result<Cleaned, DockerError> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), labels);
    let mut cleaned = Cleaned::default();
    let mut problems = Vec::new();

    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .map_err(|source| DockerError::List {
            what: "containers",
            source,
        })?;
    for container in containers {
        let Some(id) = container.id else { continue };
        match remove_container(docker, &id).await {
            Ok(()) => cleaned.containers += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }

    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    let networks = docker
        .list_networks(Some(options))
        .await
        .map_err(|source| DockerError::List {
            what: "networks",
            source,
        })?;
    for network in networks {
        let Some(id) = network.id.or(network.name) else {
            continue;
        };
        match remove_network(docker, &id).await {
            Ok(()) => cleaned.networks += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(cleaned)
    } else {
        Err(DockerError::Engine(problems.join("; ")))
    }
}

/// A container or network that is still there after a removal.
#[derive(Debug, thiserror::Error)]
pub(super) enum RemoveError {
    #[error("cannot remove container {id}: {}", engine_message(.source))]
    Container {
        id: String,
        #[source]
        source: BollardError,
    },
    #[error("cannot remove network {id}: {}", engine_message(.source))]
    Network {
        id: String,
        #[source]
        source: BollardError,
    },
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), RemoveError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        // Gone already, or being removed by someone else.
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        }) if message.contains("already in progress") => Ok(()),
        Err(source) => Err(RemoveError::Container {
            id: id.to_string(),
            source,
        }),
    }
}

async fn remove_network(docker: &Docker, id: &str) -> Result<(), RemoveError> {
    match docker.remove_network(id).await {
        Ok(()) => Ok(()),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(source) => Err(RemoveError::Network {
            id: id.to_string(),
            source,
        }),
    }
}
