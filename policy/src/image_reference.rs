//! An image as Docker resolves it, so that policies compare fields instead of re-deriving
//! Docker's normalisation in Rego: string builtins cost the interpreter about 2 µs a call, and
//! doing this per image in Rego made a run decision take several times the 100 µs budget.
//!
//! The rules are those of `github.com/distribution/reference` (`splitDockerDomain`): the
//! first path component names a registry when it has a `.` or a `:`, is `localhost`, or has
//! an upper-case letter; otherwise the image is on Docker Hub, where a one-component name is
//! an official image under `library/`.

use serde::{Deserialize, Serialize};

/// Docker Hub's registry as references name it.
const DOCKER_HUB: &str = "docker.io";
/// The legacy name that also means Docker Hub.
const DOCKER_HUB_LEGACY: &str = "index.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageReference {
    /// As the pipeline wrote it: `postgres:17`.
    pub reference: String,
    /// `docker.io`, `ghcr.io`, `registry.example.com:5000`, `localhost:5000`.
    pub registry: String,
    /// The path inside the registry: `library/postgres`, `acme/app`.
    pub repository: String,
    /// `registry/repository`, without tag or digest: `docker.io/library/postgres`.
    pub name: String,
    /// `17`; null when the reference names none (Docker then pulls `latest`).
    pub tag: Option<String>,
    /// `sha256:…` when the reference pins one.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Splits `reference` the way Docker does. Never fails: a reference Docker would refuse
    /// still has a registry, a repository and maybe a tag, and refusing it is the engine's
    /// job when it pulls.
    pub fn parse(reference: &str) -> ImageReference {
        let (named, digest) = match reference.split_once('@') {
            Some((named, digest)) => (named, Some(digest.to_string())),
            None => (reference, None),
        };
        // A tag follows the last `:` of the last path component (a `:` before the last `/`
        // is a registry's port).
        let last_slash = named.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match named[last_slash..].rfind(':') {
            Some(colon) => (
                &named[..last_slash + colon],
                Some(named[last_slash + colon + 1..].to_string()),
            ),
            None => (named, None),
        };
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest)) if names_a_registry(first) => {
                let registry = if first == DOCKER_HUB_LEGACY {
                    DOCKER_HUB
                } else {
                    first
                };
                (registry.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), path.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        ImageReference {
            reference: reference.to_string(),
            name: format!("{registry}/{repository}"),
            registry,
            repository,
            tag,
            digest,
        }
    }
}

fn names_a_registry(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::ImageReference;

    fn parts(reference: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageReference::parse(reference);
        assert_eq!(r.reference, reference);
        assert_eq!(r.name, format!("{}/{}", r.registry, r.repository));
        (r.registry, r.repository, r.tag, r.digest)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn official_images_are_docker_hub_library_images() {
        assert_eq!(
            parts("alpine"),
            ("docker.io".into(), "library/alpine".into(), None, None)
        );
        assert_eq!(
            parts("rust:1.85"),
            (
                "docker.io".into(),
                "library/rust".into(),
                some("1.85"),
                None
            )
        );
        assert_eq!(
            parts("docker.io/library/rust:1.85").1,
            "library/rust".to_string()
        );
        assert_eq!(parts("docker.io/rust").1, "library/rust".to_string());
        assert_eq!(
            parts("index.docker.io/rust").0,
            "docker.io".to_string(),
            "the legacy host is Docker Hub"
        );
    }

    #[test]
    fn a_user_image_on_docker_hub_is_not_official() {
        assert_eq!(
            parts("someone/alpine:3"),
            ("docker.io".into(), "someone/alpine".into(), some("3"), None)
        );
    }

    #[test]
    fn a_first_component_with_a_dot_a_port_localhost_or_capitals_is_a_registry() {
        assert_eq!(
            parts("ghcr.io/acme/app:1.0"),
            ("ghcr.io".into(), "acme/app".into(), some("1.0"), None)
        );
        assert_eq!(
            parts("registry.example.com:5000/team/tool"),
            (
                "registry.example.com:5000".into(),
                "team/tool".into(),
                None,
                None
            )
        );
        assert_eq!(
            parts("localhost/app:dev"),
            ("localhost".into(), "app".into(), some("dev"), None)
        );
        assert_eq!(
            parts("localhost:5000/app"),
            ("localhost:5000".into(), "app".into(), None, None)
        );
        assert_eq!(parts("Registry/app").0, "Registry".to_string());
        assert_eq!(
            parts("localhost").1,
            "library/localhost".to_string(),
            "one component is a name, whatever it says"
        );
    }

    #[test]
    fn digests_and_tags_are_split_off() {
        assert_eq!(
            parts("registry.example.com:5000/tool@sha256:0123"),
            (
                "registry.example.com:5000".into(),
                "tool".into(),
                None,
                some("sha256:0123")
            )
        );
        assert_eq!(
            parts("ghcr.io/acme/app:1.2@sha256:abcd"),
            (
                "ghcr.io".into(),
                "acme/app".into(),
                some("1.2"),
                some("sha256:abcd")
            )
        );
        assert_eq!(parts("ghcr.io/acme/app:latest").2, some("latest"));
    }

    #[test]
    fn odd_references_still_split_without_panicking() {
        for odd in [
            "", ":", "@", "/", "a/", "/b", "a:b:c", "a@b@c", "ü/ö:1", "host:/x",
        ] {
            let r = ImageReference::parse(odd);
            assert_eq!(r.reference, odd);
        }
    }
}
