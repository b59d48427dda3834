//! The stage's `services:`: one container each on the attempt's network, reachable by the
//! service's name.

use std::collections::HashMap;
use std::ops::ControlFlow;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::Docker;
use deploylite_pipeline::Service;

use super::cleanup::Leftovers;
use super::interrupt::{interruptible, settle};
use super::plan::Plan;
use super::steps::ContainerError;
use super::{Attempt, DockerExecutor, LABEL_SERVICE};
use crate::log::StageLog;
use crate::AttemptOutcome;

impl DockerExecutor {
    /// Starts the services in file order; they are not waited for.
    pub(super) async fn start_services(
        &self,
        attempt: &Attempt<'_>,
        log: &mut StageLog,
        leftovers: &mut Leftovers,
    ) -> ControlFlow<AttemptOutcome> {
        for service in &attempt.job.services {
            if attempt.cancel.is_cancelled() {
                log.system(&format!(
                    "cancelled while starting service `{}`",
                    service.name
                ))
                .await;
                return ControlFlow::Break(AttemptOutcome::Cancelled);
            }
            // Registered in `leftovers` as soon as created, so the final cleanup removes the
            // services whatever happens next.
            let started = interruptible(
                self.start_service(attempt.docker, attempt.plan, service, leftovers),
                attempt.deadline,
                attempt.cancel,
            )
            .await;
            let context = format!("service `{}`: ", service.name);
            let doing = format!(" while starting service `{}`", service.name);
            if let Some(end) = settle(started, log, attempt.job, &context, &doing).await {
                return ControlFlow::Break(end);
            }
            log.system(&format!(
                "service {}: started from image {} (not waited for)",
                service.name, service.image
            ))
            .await;
        }
        ControlFlow::Continue(())
    }

    /// Creates and starts one service container on the attempt's network.
    async fn start_service(
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
