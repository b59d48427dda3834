//! Forge configuration as the webhook receivers and the reporters need it. Secrets are wrapped
//! so that no `Debug`, log line or error message can print them.

use deploylite_model::RunId;
use std::collections::HashMap;
use std::fmt;

/// A secret value: compared in constant time by its users, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForgeKind {
    Github,
    Gitlab,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
        }
    }
}

/// How DeployLite authenticates to GitHub.
#[derive(Debug, Clone)]
pub enum GithubAuth {
    /// A GitHub App: check runs. Installation tokens are fetched and refreshed from the key.
    App {
        app_id: u64,
        private_key_pem: Secret,
    },
    /// A personal or fine-grained token: commit statuses (tokens cannot create check runs).
    Token(Secret),
}

#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    pub api_url: String,
    pub auth: Option<GithubAuth>,
    pub webhook_secret: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct GitlabConfig {
    /// `https://gitlab.com/api/v4`, or `https://HOST/api/v4` for self-managed GitLab.
    pub api_url: String,
    pub token: Option<Secret>,
    pub webhook_secret: Option<Secret>,
}

/// A watched repository as a forge knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeRepo {
    /// DeployLite's name for the repository (`repos[].name`).
    pub name: String,
    pub forge: ForgeKind,
    /// `owner/name` on GitHub, `group/subgroup/project` on GitLab.
    pub slug: String,
}

#[derive(Debug, Clone, Default)]
pub struct Forges {
    pub github: Option<GithubConfig>,
    pub gitlab: Option<GitlabConfig>,
    /// Where users reach this daemon: links in checks and comments point here.
    pub public_url: Option<String>,
    /// Largest webhook body accepted (GitHub caps deliveries at 25 MB).
    pub max_body_bytes: usize,
    /// How long a webhook body may take to arrive, and how many webhooks are served at once.
    pub webhook_limits: WebhookLimits,
    by_slug: HashMap<(ForgeKind, String), ForgeRepo>,
}

pub const DEFAULT_MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Bounds on what webhook senders can hold before they are authenticated: bodies are buffered
/// whole (the signature covers all of it), so a slow or numerous sender holds memory and a
/// connection until these cut it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookLimits {
    /// Time to receive the whole body once the headers are in → 408. Forges send at once.
    pub body_timeout: std::time::Duration,
    /// Webhook requests served at once. At most this many bodies of `max_body_bytes` are
    /// buffered at any time.
    pub max_in_flight: usize,
    /// How long one more request waits (holding only its connection) for a slot before it is
    /// answered 503 with `Retry-After`.
    pub queue_wait: std::time::Duration,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits {
            body_timeout: std::time::Duration::from_secs(10),
            max_in_flight: 64,
            queue_wait: std::time::Duration::from_secs(5),
        }
    }
}

impl Forges {
    pub fn new(
        github: Option<GithubConfig>,
        gitlab: Option<GitlabConfig>,
        public_url: Option<String>,
        max_body_bytes: usize,
        repos: Vec<ForgeRepo>,
    ) -> Forges {
        let by_slug = repos
            .into_iter()
            .map(|r| ((r.forge, r.slug.to_ascii_lowercase()), r))
            .collect();
        Forges {
            github,
            gitlab,
            public_url,
            max_body_bytes,
            webhook_limits: WebhookLimits::default(),
            by_slug,
        }
    }

    /// The watched repository a forge names (slugs compare case-insensitively, as forges do).
    pub fn repo(&self, forge: ForgeKind, slug: &str) -> Option<&ForgeRepo> {
        self.by_slug.get(&(forge, slug.to_ascii_lowercase()))
    }

    pub fn repo_by_name(&self, name: &str) -> Option<&ForgeRepo> {
        self.by_slug.values().find(|r| r.name == name)
    }

    /// The page of an environment on this daemon (its deployments), for a deployment's
    /// `log_url` / `target_url`.
    pub fn environment_url(&self, repo: &str, environment: &str) -> Option<String> {
        self.public_url.as_deref().map(|base| {
            format!(
                "{}/environments/{}/{}",
                base.trim_end_matches('/'),
                crate::report::http::encode_segment(repo),
                crate::report::http::encode_segment(environment)
            )
        })
    }

    /// The URL of a run on this daemon, for `details_url` / `target_url`.
    pub fn run_url(&self, run_id: RunId) -> Option<String> {
        self.public_url
            .as_deref()
            .map(|base| format!("{}/api/v1/runs/{run_id}", base.trim_end_matches('/')))
    }
}

/// Derives the forge and slug from a repository URL where the host says which forge it is:
/// `https://github.com/o/n(.git)`, `git@github.com:o/n.git`, and the same for gitlab.com.
pub fn forge_from_url(url: &str) -> Option<(ForgeKind, String)> {
    // `https://user:token@github.com/o/n.git` is still github.com.
    let (url, _) = deploylite_runner::source_url::split_credentials(url);
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .or_else(|| url.strip_prefix("ssh://git@"))
        .or_else(|| url.strip_prefix("git@"))?;
    let (host, path) = rest.split_once(['/', ':'])?;
    let forge = match host {
        "github.com" => ForgeKind::Github,
        "gitlab.com" => ForgeKind::Gitlab,
        _ => return None,
    };
    let slug = path
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .to_string();
    (slug.contains('/') && !slug.is_empty()).then_some((forge, slug))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_from_urls() {
        assert_eq!(
            forge_from_url("https://github.com/o/n.git"),
            Some((ForgeKind::Github, "o/n".into()))
        );
        assert_eq!(
            forge_from_url("git@github.com:o/n.git"),
            Some((ForgeKind::Github, "o/n".into()))
        );
        assert_eq!(
            forge_from_url("https://gitlab.com/g/sub/p"),
            Some((ForgeKind::Gitlab, "g/sub/p".into()))
        );
        assert_eq!(
            forge_from_url("https://x-access-token:s3cret@github.com/o/n.git"),
            Some((ForgeKind::Github, "o/n".into()))
        );
        assert_eq!(forge_from_url("https://git.example.com/o/n.git"), None);
        assert_eq!(forge_from_url("/srv/git/app"), None);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let auth = GithubAuth::Token(s);
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn repos_are_found_by_slug_case_insensitively() {
        let forges = Forges::new(
            None,
            None,
            Some("https://ci.example.com/".into()),
            DEFAULT_MAX_BODY_BYTES,
            vec![ForgeRepo {
                name: "app".into(),
                forge: ForgeKind::Github,
                slug: "Octo/App".into(),
            }],
        );
        assert_eq!(
            forges
                .repo(ForgeKind::Github, "octo/app")
                .map(|r| r.name.as_str()),
            Some("app")
        );
        assert!(forges.repo(ForgeKind::Gitlab, "octo/app").is_none());
        assert_eq!(
            forges.run_url(RunId::new(4)).as_deref(),
            Some("https://ci.example.com/api/v1/runs/4")
        );
    }
}
