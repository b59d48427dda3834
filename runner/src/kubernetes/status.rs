//! Reading a Pod's status: what the executor should do next.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::spec::{CLONE_CONTAINER, STAGE_CONTAINER};

/// Waiting reasons that mean the image cannot be pulled (yet).
const PULL_REASONS: &[&str] = &["ErrImagePull", "ImagePullBackOff"];
/// Waiting reasons that will not fix themselves.
const FATAL_REASONS: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];
/// Waiting reasons that may be transient (a Secret created late) but usually are not.
const CONFIG_REASONS: &[&str] = &[
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Nothing decisive yet; `note` explains the wait when there is something to say.
    Pending { note: Option<String> },
    /// The clone failed.
    CloneFailed { exit_code: i32, message: String },
    /// A container's image cannot be pulled (yet): give it a bounded time.
    PullFailing {
        container: String,
        image: String,
        reason: String,
        message: String,
    },
    /// A container cannot be created or started (bad image name, missing Secret...).
    ContainerBroken {
        container: String,
        reason: String,
        message: String,
        fatal: bool,
    },
    /// The main container is running: its log can be followed.
    Running,
    /// The main container has terminated.
    Terminated {
        exit_code: i32,
        reason: Option<String>,
        message: Option<String>,
    },
    /// The Pod failed without a terminated main container (evicted, deadline exceeded...).
    PodFailed { reason: String, message: String },
}

fn status_of<'a>(
    statuses: Option<&'a Vec<ContainerStatus>>,
    name: &str,
) -> Option<&'a ContainerStatus> {
    statuses?.iter().find(|s| s.name == name)
}

fn image_of(pod: &Pod, container: &str, init: bool) -> String {
    let spec = pod.spec.as_ref();
    let list = if init {
        spec.and_then(|s| s.init_containers.as_ref())
    } else {
        spec.map(|s| &s.containers)
    };
    list.and_then(|l| l.iter().find(|c| c.name == container))
        .and_then(|c| c.image.clone())
        .unwrap_or_else(|| "?".to_string())
}

/// A waiting container that cannot go on, if it is one.
fn waiting_problem(pod: &Pod, status: &ContainerStatus, init: bool) -> Option<PodState> {
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.clone().unwrap_or_default();
    let message = waiting.message.clone().unwrap_or_default();
    if PULL_REASONS.contains(&reason.as_str()) {
        return Some(PodState::PullFailing {
            container: status.name.clone(),
            image: image_of(pod, &status.name, init),
            reason,
            message,
        });
    }
    let fatal = FATAL_REASONS.contains(&reason.as_str());
    if fatal || CONFIG_REASONS.contains(&reason.as_str()) {
        return Some(PodState::ContainerBroken {
            container: status.name.clone(),
            reason,
            message,
            fatal,
        });
    }
    None
}

pub fn assess(pod: &Pod) -> PodState {
    let Some(status) = pod.status.as_ref() else {
        return PodState::Pending { note: None };
    };
    if let Some(clone) = status_of(status.init_container_statuses.as_ref(), CLONE_CONTAINER) {
        if let Some(t) = clone.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            if t.exit_code != 0 {
                let message = t
                    .message
                    .clone()
                    .filter(|m| !m.trim().is_empty())
                    .or_else(|| t.reason.clone())
                    .unwrap_or_default();
                return PodState::CloneFailed {
                    exit_code: t.exit_code,
                    message: message.trim().to_string(),
                };
            }
        }
        if let Some(problem) = waiting_problem(pod, clone, true) {
            return problem;
        }
    }
    let phase = status.phase.as_deref().unwrap_or_default();
    let pod_reason = status.reason.clone().filter(|r| !r.is_empty());
    let pod_failed = || PodState::PodFailed {
        reason: pod_reason.clone().unwrap_or_else(|| "Failed".into()),
        message: status.message.clone().unwrap_or_default(),
    };
    // Evicted, DeadlineExceeded, NodeLost...: the Pod's reason says more than its containers.
    if phase == "Failed" && pod_reason.is_some() {
        return pod_failed();
    }
    let main = status_of(status.container_statuses.as_ref(), STAGE_CONTAINER);
    let main_state = main.and_then(|m| m.state.as_ref());
    if let Some(t) = main_state.and_then(|s| s.terminated.as_ref()) {
        return PodState::Terminated {
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            message: t.message.clone(),
        };
    }
    match phase {
        "Failed" => return pod_failed(),
        // No container status (should not happen): the phase says every container exited 0.
        "Succeeded" => {
            return PodState::Terminated {
                exit_code: 0,
                reason: None,
                message: None,
            }
        }
        _ => {}
    }
    if main_state.and_then(|s| s.running.as_ref()).is_some() {
        return PodState::Running;
    }
    if let Some(problem) = main.and_then(|m| waiting_problem(pod, m, false)) {
        return problem;
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    let note = unschedulable.map(|c| {
        format!(
            "waiting for a node: {}",
            c.message.as_deref().unwrap_or("unschedulable")
        )
    });
    PodState::Pending { note }
}
