//! The stage's image and its services' images: which image a stage runs, and making it present
//! on the engine per the [`PullPolicy`].

use std::fmt;
use std::ops::ControlFlow;
use std::str::FromStr;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use super::interrupt::{interruptible, settle};
use super::{engine_message, Attempt, DockerExecutor};
use crate::log::StageLog;
use crate::AttemptOutcome;

/// When the executor pulls a stage's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull only when the engine does not have the image (`if-not-present`, also `missing`).
    #[default]
    IfNotPresent,
    /// Pull before every attempt (`always`).
    Always,
    /// Never pull: a missing image is an error (`never`).
    Never,
}

/// A pull policy that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pull policy `{0}`: expected if-not-present, always or never")]
pub struct InvalidPullPolicy(pub String);

impl FromStr for PullPolicy {
    type Err = InvalidPullPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "if-not-present" | "missing" => Ok(PullPolicy::IfNotPresent),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            other => Err(InvalidPullPolicy(other.to_string())),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        })
    }
}

impl DockerExecutor {
    /// The stage's image, then its services' images. Before the network: an image that cannot
    /// be had fails the attempt before anything is created.
    pub(super) async fn prepare_images(
        &self,
        attempt: &Attempt<'_>,
        log: &mut StageLog,
    ) -> ControlFlow<AttemptOutcome> {
        let image = &attempt.plan.image;
        let doing = format!(" while preparing image `{image}`");
        self.prepare_image(attempt, image, log, "", &doing).await?;
        for service in &attempt.job.services {
            let context = format!("service `{}`: ", service.name);
            let doing = format!(
                " while preparing image `{}` of service `{}`",
                service.image, service.name
            );
            self.prepare_image(attempt, &service.image, log, &context, &doing)
                .await?;
        }
        ControlFlow::Continue(())
    }

    /// One image, unless the deadline passes or the stage is cancelled first; `context` and
    /// `doing` are for [`settle`].
    async fn prepare_image(
        &self,
        attempt: &Attempt<'_>,
        image: &str,
        log: &mut StageLog,
        context: &str,
        doing: &str,
    ) -> ControlFlow<AttemptOutcome> {
        let pulled = interruptible(
            self.ensure_image(attempt.docker, image, log),
            attempt.deadline,
            attempt.cancel,
        )
        .await;
        match settle(pulled, log, attempt.job, context, doing).await {
            Some(end) => ControlFlow::Break(end),
            None => ControlFlow::Continue(()),
        }
    }

    /// Makes sure the engine has `image`, pulling it per the pull policy.
    async fn ensure_image(
        &self,
        docker: &Docker,
        image: &str,
        log: &mut StageLog,
    ) -> Result<(), ImageError> {
        let present = match docker.inspect_image(image).await {
            Ok(_) => true,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(source) => {
                return Err(ImageError::Inspect {
                    image: image.to_string(),
                    source,
                })
            }
        };
        match (self.config.pull, present) {
            (PullPolicy::IfNotPresent, true) | (PullPolicy::Never, true) => return Ok(()),
            (PullPolicy::Never, false) => {
                return Err(ImageError::Absent {
                    image: image.to_string(),
                })
            }
            _ => {}
        }
        log.system(&format!("pulling image {image}")).await;
        let (from_image, tag) = pull_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(&from_image);
        if let Some(tag) = &tag {
            options = options.tag(tag);
        }
        let mut stream = docker.create_image(Some(options.build()), None, None);
        let mut last_status = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(ImageError::PullRefused {
                            image: image.to_string(),
                            detail,
                        });
                    }
                    // Per-layer progress carries an id; the overall status lines do not.
                    if let (None, Some(status)) = (info.id, info.status) {
                        if status != last_status {
                            log.system(&status).await;
                            last_status = status;
                        }
                    }
                }
                Err(source) => {
                    return Err(ImageError::Pull {
                        image: image.to_string(),
                        source,
                    })
                }
            }
        }
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(source) => Err(ImageError::StillMissing {
                image: image.to_string(),
                source,
            }),
        }
    }
}

/// Why an image cannot be had; the message is the stage's error as users see it.
#[derive(Debug, thiserror::Error)]
pub(super) enum ImageError {
    #[error("cannot inspect image `{image}`: {}", engine_message(.source))]
    Inspect {
        image: String,
        #[source]
        source: BollardError,
    },
    #[error("image `{image}` is not present on the Docker engine and the pull policy is `never`")]
    Absent { image: String },
    /// The engine answered the pull with an error in its progress stream.
    #[error("cannot pull image `{image}`: {detail}")]
    PullRefused { image: String, detail: String },
    #[error("cannot pull image `{image}`: {}", engine_message(.source))]
    Pull {
        image: String,
        #[source]
        source: BollardError,
    },
    #[error("image `{image}` is still missing after the pull: {}", engine_message(.source))]
    StillMissing {
        image: String,
        #[source]
        source: BollardError,
    },
}

/// `fromImage` and `tag` for a pull. A reference without a tag or digest means `latest` (the
/// engine would otherwise pull every tag of the repository).
fn pull_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        (image.to_string(), None)
    } else {
        (image.to_string(), Some("latest".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_errors_read_as_before_and_keep_the_engine_error() {
        let refused = BollardError::DockerResponseServerError {
            status_code: 500,
            message: " pull access denied for nope \n".into(),
        };
        let error = ImageError::Pull {
            image: "nope".into(),
            source: refused,
        };
        assert_eq!(
            error.to_string(),
            "cannot pull image `nope`: pull access denied for nope"
        );
        assert!(std::error::Error::source(&error).is_some());
        assert_eq!(
            ImageError::Absent {
                image: "app:1".into()
            }
            .to_string(),
            "image `app:1` is not present on the Docker engine and the pull policy is `never`"
        );
        assert_eq!(
            "sometimes".parse::<PullPolicy>().unwrap_err().to_string(),
            "invalid pull policy `sometimes`: expected if-not-present, always or never"
        );
    }

    #[test]
    fn pull_references() {
        assert_eq!(
            pull_reference("alpine"),
            ("alpine".into(), Some("latest".into()))
        );
        assert_eq!(pull_reference("alpine:3.20"), ("alpine:3.20".into(), None));
        assert_eq!(
            pull_reference("localhost:5000/team/app"),
            ("localhost:5000/team/app".into(), Some("latest".into()))
        );
        assert_eq!(
            pull_reference("localhost:5000/team/app:v1"),
            ("localhost:5000/team/app:v1".into(), None)
        );
        assert_eq!(
            pull_reference("alpine@sha256:abc"),
            ("alpine@sha256:abc".into(), None)
        );
    }

    #[test]
    fn pull_policies() {
        for policy in [
            PullPolicy::IfNotPresent,
            PullPolicy::Always,
            PullPolicy::Never,
        ] {
            assert_eq!(policy.to_string().parse::<PullPolicy>(), Ok(policy));
        }
        assert_eq!(
            "missing".parse::<PullPolicy>(),
            Ok(PullPolicy::IfNotPresent)
        );
        assert!("sometimes".parse::<PullPolicy>().is_err());
    }
}
