//! The stage's image and its services' images: which image a stage runs, and making it present
//! on the engine per the [`PullPolicy`].

use std::fmt;
use std::str::FromStr;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use super::{engine_message, DockerExecutor};
use crate::log::StageLog;

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

impl FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "if-not-present" | "missing" => Ok(PullPolicy::IfNotPresent),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "invalid pull policy `{other}`: expected if-not-present, always or never"
            )),
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
    /// Makes sure the engine has `image`, pulling it per the pull policy. Err is the message.
    pub(super) async fn ensure_image(
        &self,
        docker: &Docker,
        image: &str,
        log: &mut StageLog,
    ) -> Result<(), String> {
        let present = match docker.inspect_image(image).await {
            Ok(_) => true,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(e) => {
                return Err(format!(
                    "cannot inspect image `{image}`: {}",
                    engine_message(&e)
                ))
            }
        };
        match (self.config.pull, present) {
            (PullPolicy::IfNotPresent, true) | (PullPolicy::Never, true) => return Ok(()),
            (PullPolicy::Never, false) => {
                return Err(format!(
                    "image `{image}` is not present on the Docker engine and the pull policy is `never`"
                ))
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
                        return Err(format!("cannot pull image `{image}`: {detail}"));
                    }
                    // Per-layer progress carries an id; the overall status lines do not.
                    if let (None, Some(status)) = (info.id, info.status) {
                        if status != last_status {
                            log.system(&status).await;
                            last_status = status;
                        }
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "cannot pull image `{image}`: {}",
                        engine_message(&e)
                    ))
                }
            }
        }
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "image `{image}` is still missing after the pull: {}",
                engine_message(&e)
            )),
        }
    }
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
