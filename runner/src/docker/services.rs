//! The stage's `services:`: one container each on the attempt's network, reachable by the
//! service's name.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::Docker;
use deploylite_pipeline::Service;

use super::cleanup::Leftovers;
use super::plan::Plan;
use super::steps::ContainerError;
use super::{DockerExecutor, LABEL_SERVICE};

impl DockerExecutor {
    /// Creates and starts one service container on the attempt's network.
    pub(super) async fn start_service(
        &self,
        docker: &Docker,
        plan: &Plan,
        service: &Service,
        leftovers: &mut Leftovers,
    ) -> Result<(), ContainerError> {
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
            .map_err(ContainerError::Create)?
            .id;
        leftovers.container(id.clone());
        docker
            .start_container(&id, None)
            .await
            .map_err(ContainerError::Start)
    }
}
