//! Daemon configuration, in layers: built-in defaults < config file (YAML) < `DEPLOYLITE_*`
//! environment variables < command-line flags. Each layer is a [`ConfigLayer`] of optional
//! values; the merged result is validated once into a [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use deploylite_forge::forges::{
    forge_from_url, ForgeKind, ForgeRepo, GithubAuth, GithubConfig, GitlabConfig, Secret,
};
use deploylite_pipeline::duration::parse_duration;
use deploylite_pipeline::GlobList;
use deploylite_reconciler::store::SqliteSync;
use deploylite_reconciler::trust::UntrustedPolicy;
use deploylite_reconciler::watcher::{RepoConfig, TagFilter};
use serde::Deserialize;

mod env;
pub mod listen;
mod schema;

pub use env::EnvLayer;
pub use listen::ListenAddr;

/// Every problem found in the configuration, each on its own line (`file:line:col: message`
/// for the config file, `DEPLOYLITE_X: message` for a variable), reported all at once.
#[derive(Debug, Default)]
pub struct ConfigProblems(pub Vec<String>);

impl std::fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            all => {
                write!(f, "{} problems in the configuration:", all.len())?;
                for problem in all {
                    write!(f, "\n{problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigProblems {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub sqlite_synchronous: Option<SqliteSync>,
    pub max_parallel_stages: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub retention: Option<RetentionLayer>,
    pub local_runner: Option<LocalRunnerLayer>,
    pub repos: Option<Vec<RepoLayer>>,
    pub public_url: Option<String>,
    pub webhook_max_body_bytes: Option<usize>,
    pub forges: Option<ForgesLayer>,
    pub runners: Option<RunnersLayer>,
    pub auth: Option<AuthLayer>,
    pub untrusted: Option<UntrustedLayer>,
    pub limits: Option<LimitsLayer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthLayer {
    /// Reads without a token [default: true while `listen` is a loopback address].
    pub anonymous_read: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UntrustedLayer {
    /// Runners offering one of these labels may run pull requests from forks [default: none].
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsLayer {
    /// The most one stage attempt's log holds, in bytes.
    pub log_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnersLayer {
    /// Tokens a new runner may register with (`deploylite runner --token`).
    pub registration_tokens: Option<Vec<String>>,
    /// A file with one registration token per line.
    pub registration_tokens_file: Option<PathBuf>,
    /// How long a remote runner's lease holds without a heartbeat.
    pub lease_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgesLayer {
    pub github: Option<GithubLayer>,
    pub gitlab: Option<GitlabLayer>,
}

/// Secrets may be given inline (in this file or a `DEPLOYLITE_FORGES__...` variable) or as
/// `*_file` paths (e.g. mounted Kubernetes secrets); never as command-line flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubLayer {
    pub api_url: Option<String>,
    pub app_id: Option<u64>,
    pub private_key_path: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub webhook_secret: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabLayer {
    pub api_url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub webhook_secret: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionLayer {
    pub workspaces: Option<String>,
    pub logs: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRunnerLayer {
    pub enabled: Option<bool>,
    pub labels: Option<Vec<String>>,
    /// Who local stages run as when the daemon is root: a name or `uid[:gid]` (`user: 65534`
    /// means the uid: the schema keeps every scalar of a text key as text).
    pub user: Option<String>,
    /// Stages naming an `image:` run on the host anyway, with a warning in their log.
    pub ignore_image: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoLayer {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub branches: Vec<String>,
    /// Absent: the tags the pipelines ask for.
    pub tags: Option<Vec<String>>,
    pub poll_interval: Option<String>,
    /// `github` or `gitlab`; derived from github.com / gitlab.com URLs.
    pub forge: Option<String>,
    /// `owner/name` or `group/project`; derived from the URL where possible.
    pub slug: Option<String>,
    /// Pull requests from forks by non-members: `require-approval` (default), `never`, `run`.
    pub untrusted: Option<UntrustedPolicy>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Resolved when the daemon starts (`listen.rs`).
    pub listen: ListenAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub sqlite_synchronous: SqliteSync,
    pub max_parallel_stages: usize,
    pub log_format: LogFormat,
    pub workspace_retention: Duration,
    pub log_retention: Duration,
    pub local_runner_enabled: bool,
    pub local_runner_labels: Vec<String>,
    /// `local_runner.user` (docs/local-isolation.md).
    pub local_runner_user: String,
    /// `local_runner.ignore_image`: stages naming an `image:` run on the host (with a warning
    /// in their log) instead of failing.
    pub local_runner_ignore_image: bool,
    pub repos: Vec<RepoConfig>,
    pub forges: deploylite_forge::Forges,
    pub registration_tokens: Vec<Secret>,
    pub lease_ttl: Duration,
    /// Reads without a token; None: while every address listened on is a loopback address
    /// (known once `listen` is resolved).
    pub anonymous_read: Option<bool>,
    /// Runner labels allowed to run untrusted (fork) code.
    pub untrusted_labels: Vec<String>,
    pub public_url: Option<String>,
    /// `limits.log_bytes`: past it an attempt's log keeps its head and tail.
    pub log_bytes: u64,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = ".deploylite-data";
pub const DEFAULT_POLL_INTERVAL: &str = "30s";

impl ConfigLayer {
    /// Reads a config file. Relative paths in it (data_dir, local repository urls) are taken
    /// relative to the file's directory, so the file means the same from any working directory.
    pub fn from_file(path: &Path) -> Result<ConfigLayer, ConfigProblems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigProblems(vec![format!(
                "cannot read config file {}: {e}",
                path.display()
            )])
        })?;
        let name = path.display().to_string();
        let (root, mut diagnostics) = deploylite_pipeline::document::parse_yaml(&name, &text);
        let value = schema::check_map(&name, &root, schema::ROOT, &mut diagnostics);
        if !diagnostics.is_empty() {
            diagnostics.sort_by_key(|d| (d.line, d.col));
            return Err(ConfigProblems(
                diagnostics.iter().map(ToString::to_string).collect(),
            ));
        }
        let mut layer = ConfigLayer::from_json(value, &name)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        layer.resolve_relative_to(&base);
        Ok(layer)
    }

    /// The layer from JSON the schema has checked (so a failure here is a schema that lets
    /// through what the layer's types refuse: a bug, reported as a problem rather than a panic).
    fn from_json(value: serde_json::Value, source: &str) -> Result<ConfigLayer, ConfigProblems> {
        if value.is_null() {
            return Ok(ConfigLayer::default());
        }
        serde_json::from_value(value).map_err(|e| ConfigProblems(vec![format!("{source}: {e}")]))
    }

    fn resolve_relative_to(&mut self, base: &Path) {
        if let Some(dir) = &self.data_dir {
            if dir.is_relative() {
                self.data_dir = Some(base.join(dir));
            }
        }
        for repo in self.repos.iter_mut().flatten() {
            if deploylite_reconciler::git::is_local(&repo.url) && Path::new(&repo.url).is_relative()
            {
                repo.url = base.join(&repo.url).display().to_string();
            }
        }
        let rebase = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                *path = base.join(&*path);
            }
        };
        if let Some(runners) = self.runners.as_mut() {
            rebase(&mut runners.registration_tokens_file);
        }
        if let Some(forges) = self.forges.as_mut() {
            if let Some(g) = forges.github.as_mut() {
                rebase(&mut g.private_key_path);
                rebase(&mut g.token_file);
                rebase(&mut g.webhook_secret_file);
            }
            if let Some(g) = forges.gitlab.as_mut() {
                rebase(&mut g.token_file);
                rebase(&mut g.webhook_secret_file);
            }
        }
    }

    /// `other` wins wherever it has a value.
    pub fn merge(mut self, other: ConfigLayer) -> ConfigLayer {
        macro_rules! take {
            ($($field:ident),*) => { $( if other.$field.is_some() { self.$field = other.$field; } )* };
        }
        take!(
            listen,
            data_dir,
            database_url,
            sqlite_synchronous,
            max_parallel_stages,
            log_format,
            repos,
            public_url,
            webhook_max_body_bytes
        );
        if let Some(a) = other.auth {
            let mine = self.auth.get_or_insert_with(Default::default);
            if a.anonymous_read.is_some() {
                mine.anonymous_read = a.anonymous_read;
            }
        }
        if let Some(u) = other.untrusted {
            let mine = self.untrusted.get_or_insert_with(Default::default);
            if u.labels.is_some() {
                mine.labels = u.labels;
            }
        }
        if let Some(l) = other.limits {
            let mine = self.limits.get_or_insert_with(Default::default);
            if l.log_bytes.is_some() {
                mine.log_bytes = l.log_bytes;
            }
        }
        if let Some(r) = other.runners {
            let mine = self.runners.get_or_insert_with(Default::default);
            if r.registration_tokens.is_some() {
                mine.registration_tokens = r.registration_tokens;
            }
            if r.registration_tokens_file.is_some() {
                mine.registration_tokens_file = r.registration_tokens_file;
            }
            if r.lease_ttl.is_some() {
                mine.lease_ttl = r.lease_ttl;
            }
        }
        if let Some(f) = other.forges {
            let mine = self.forges.get_or_insert_with(Default::default);
            if let Some(g) = f.github {
                let m = mine.github.get_or_insert_with(Default::default);
                macro_rules! field { ($($x:ident),*) => { $( if g.$x.is_some() { m.$x = g.$x; } )* }; }
                field!(
                    api_url,
                    app_id,
                    private_key_path,
                    token,
                    token_file,
                    webhook_secret,
                    webhook_secret_file
                );
            }
            if let Some(g) = f.gitlab {
                let m = mine.gitlab.get_or_insert_with(Default::default);
                macro_rules! field { ($($x:ident),*) => { $( if g.$x.is_some() { m.$x = g.$x; } )* }; }
                field!(
                    api_url,
                    token,
                    token_file,
                    webhook_secret,
                    webhook_secret_file
                );
            }
        }
        if let Some(r) = other.retention {
            let mine = self.retention.get_or_insert_with(Default::default);
            if r.workspaces.is_some() {
                mine.workspaces = r.workspaces;
            }
            if r.logs.is_some() {
                mine.logs = r.logs;
            }
        }
        if let Some(l) = other.local_runner {
            let mine = self.local_runner.get_or_insert_with(Default::default);
            if l.enabled.is_some() {
                mine.enabled = l.enabled;
            }
            if l.labels.is_some() {
                mine.labels = l.labels;
            }
            if l.user.is_some() {
                mine.user = l.user;
            }
            if l.ignore_image.is_some() {
                mine.ignore_image = l.ignore_image;
            }
        }
        self
    }

    /// The merged layers as a [`Config`], or every problem found with them.
    pub fn finish(self) -> Result<Config, ConfigProblems> {
        let mut problems = Vec::new();
        let mut report = |result: Result<(), String>| {
            if let Err(problem) = result {
                problems.push(problem);
            }
        };
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = ListenAddr::parse(&listen_text)
            .map_err(|e| report(Err(format!("listen: {e}"))))
            .ok();
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        let database_url = self.database_url.unwrap_or_else(|| {
            deploylite_reconciler::paths::DataDir::new(&data_dir).default_database_url()
        });
        let max_parallel_stages = self.max_parallel_stages.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2)
        });
        if max_parallel_stages == 0 {
            report(Err("max_parallel_stages must be at least 1".into()));
        }
        let retention = self.retention.unwrap_or_default();
        let mut duration = |key: &str, value: Option<String>, default: &str| -> Duration {
            let text = value.unwrap_or_else(|| default.to_string());
            parse_duration(&text).unwrap_or_else(|e| {
                report(Err(format!("{key}: {e}")));
                Duration::from_secs(1)
            })
        };
        let workspace_retention = duration("retention.workspaces", retention.workspaces, "1h");
        let log_retention = duration("retention.logs", retention.logs, "30d");
        let lease_ttl = {
            let runners = self.runners.as_ref();
            duration(
                "runners.lease_ttl",
                runners.and_then(|r| r.lease_ttl.clone()),
                "30s",
            )
        };
        let local = self.local_runner.unwrap_or_default();
        let runners = self.runners.unwrap_or_default();
        let mut registration_tokens: Vec<Secret> = runners
            .registration_tokens
            .unwrap_or_default()
            .into_iter()
            .map(Secret::new)
            .collect();
        if let Some(path) = runners.registration_tokens_file {
            match std::fs::read_to_string(&path) {
                Ok(text) => registration_tokens.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(Secret::new),
                ),
                Err(e) => report(Err(format!(
                    "runners.registration_tokens_file: cannot read {}: {e}",
                    path.display()
                ))),
            }
        }
        if registration_tokens.iter().any(|t| t.expose().len() < 16) {
            report(Err(
                "runners.registration_tokens: every token must be at least 16 characters".into(),
            ));
        }
        if lease_ttl < Duration::from_secs(1) {
            report(Err("runners.lease_ttl must be at least 1s".into()));
        }
        let log_bytes = self
            .limits
            .unwrap_or_default()
            .log_bytes
            .unwrap_or(deploylite_runner::DEFAULT_LOG_BYTES);
        if log_bytes < deploylite_runner::MIN_LOG_BYTES {
            report(Err(format!(
                "limits.log_bytes must be at least {} (64 KiB)",
                deploylite_runner::MIN_LOG_BYTES
            )));
        }
        let forge_layer = self.forges.unwrap_or_default();
        let github = forge_layer
            .github
            .map(github_config)
            .transpose()
            .unwrap_or_else(|e| {
                report(Err(format!("{e:#}")));
                None
            });
        let gitlab = forge_layer
            .gitlab
            .map(gitlab_config)
            .transpose()
            .unwrap_or_else(|e| {
                report(Err(format!("{e:#}")));
                None
            });
        let mut forge_repos = Vec::new();
        let mut repos = Vec::new();
        for (i, repo) in self.repos.unwrap_or_default().into_iter().enumerate() {
            match repo_config(i, repo, &repos, github.as_ref(), gitlab.as_ref()) {
                Ok((repo, forge)) => {
                    forge_repos.extend(forge);
                    repos.push(repo);
                }
                Err(repo_problems) => problems.extend(repo_problems),
            }
        }
        let (Some(listen), true) = (listen, problems.is_empty()) else {
            return Err(ConfigProblems(problems));
        };
        Ok(Config {
            listen,
            data_dir,
            database_url,
            sqlite_synchronous: self.sqlite_synchronous.unwrap_or_default(),
            max_parallel_stages,
            log_format: self.log_format.unwrap_or_default(),
            workspace_retention,
            log_retention,
            local_runner_enabled: local.enabled.unwrap_or(true),
            local_runner_user: local
                .user
                .clone()
                .unwrap_or_else(|| deploylite_runner::sandbox::DEFAULT_STAGE_USER.to_string()),
            local_runner_labels: local
                .labels
                .unwrap_or_else(|| vec!["local".into(), std::env::consts::OS.into()]),
            local_runner_ignore_image: local.ignore_image.unwrap_or(false),
            repos,
            anonymous_read: self.auth.and_then(|a| a.anonymous_read),
            untrusted_labels: self.untrusted.and_then(|u| u.labels).unwrap_or_default(),
            public_url: self.public_url.clone(),
            forges: deploylite_forge::Forges::new(
                github,
                gitlab,
                self.public_url,
                self.webhook_max_body_bytes
                    .unwrap_or(deploylite_forge::forges::DEFAULT_MAX_BODY_BYTES),
                forge_repos,
            ),
            registration_tokens,
            lease_ttl,
            log_bytes,
        })
    }
}

/// `repos[i]` checked: the repository and its forge, or every problem with it.
fn repo_config(
    i: usize,
    repo: RepoLayer,
    before: &[RepoConfig],
    github: Option<&GithubConfig>,
    gitlab: Option<&GitlabConfig>,
) -> Result<(RepoConfig, Option<ForgeRepo>), Vec<String>> {
    let at = format!("repos[{i}] ({})", repo.name);
    let mut problems = Vec::new();
    if repo.name.is_empty()
        || !repo
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        problems.push(format!(
            "{at}: name must be letters, digits, `-`, `_`, `.` or `/`"
        ));
    }
    if before.iter().any(|r| r.name == repo.name) {
        problems.push(format!(
            "{at}: a repository named `{}` is already configured",
            repo.name
        ));
    }
    let forge = forge_of(&repo, &at).unwrap_or_else(|e| {
        problems.push(format!("{e:#}"));
        None
    });
    let poll_text = repo
        .poll_interval
        .clone()
        .unwrap_or_else(|| DEFAULT_POLL_INTERVAL.to_string());
    let poll_interval = match parse_duration(&poll_text) {
        Ok(d) if d < Duration::from_millis(100) => {
            problems.push(format!("{at}.poll_interval must be at least 100ms"));
            d
        }
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("{at}.poll_interval: {e}"));
            Duration::ZERO
        }
    };
    let branches = GlobList::new(&repo.branches).map_err(|e| format!("{at}.branches: {e}"));
    let tags = match &repo.tags {
        None => Ok(TagFilter::FromPipelines),
        Some(tags) => GlobList::new(tags)
            .map(TagFilter::from)
            .map_err(|e| format!("{at}.tags: {e}")),
    };
    let (branches, tags) = match (branches, tags) {
        (Ok(b), Ok(t)) if problems.is_empty() => (b, t),
        (b, t) => {
            problems.extend(b.err());
            problems.extend(t.err());
            return Err(problems);
        }
    };
    let report = match &forge {
        Some(f) => match f.forge {
            ForgeKind::Github => github.is_some_and(|g| g.auth.is_some()),
            ForgeKind::Gitlab => gitlab.is_some_and(|g| g.token.is_some()),
        },
        None => false,
    };
    Ok((
        RepoConfig {
            report,
            branches,
            tags,
            name: repo.name,
            url: repo.url,
            poll_interval,
            untrusted: repo.untrusted.unwrap_or_default(),
        },
        forge,
    ))
}

impl ConfigLayer {
    /// The files this layer reads secrets from (key, token and secret files): what local
    /// stages must not reach, and what should be private to the daemon's user.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(r) = &self.runners {
            files.extend(r.registration_tokens_file.clone());
        }
        if let Some(f) = &self.forges {
            if let Some(g) = &f.github {
                files.extend(g.private_key_path.clone());
                files.extend(g.token_file.clone());
                files.extend(g.webhook_secret_file.clone());
            }
            if let Some(g) = &f.gitlab {
                files.extend(g.token_file.clone());
                files.extend(g.webhook_secret_file.clone());
            }
        }
        files
    }
}

/// The forge a repository entry names (or its URL implies).
fn forge_of(repo: &RepoLayer, at: &str) -> Result<Option<ForgeRepo>> {
    let derived = forge_from_url(&repo.url);
    let forge = match repo.forge.as_deref() {
        None => derived.as_ref().map(|(k, _)| *k),
        Some("github") => Some(ForgeKind::Github),
        Some("gitlab") => Some(ForgeKind::Gitlab),
        Some(other) => bail!("{at}.forge: `{other}` is not a forge; expected github or gitlab"),
    };
    let Some(forge) = forge else {
        if repo.slug.is_some() {
            bail!(
                "{at}.slug is set but the forge is unknown: add `forge: github` or `forge: gitlab`"
            );
        }
        return Ok(None);
    };
    let slug = match (&repo.slug, derived) {
        (Some(slug), _) => slug.clone(),
        (None, Some((_, slug))) => slug,
        (None, None) => {
            bail!("{at}: cannot derive owner/name from the URL; add `slug: owner/name`")
        }
    };
    if !slug.contains('/') {
        bail!("{at}.slug `{slug}` must look like owner/name (or group/project)");
    }
    Ok(Some(ForgeRepo {
        name: repo.name.clone(),
        forge,
        slug,
    }))
}

/// A secret given inline or as a file (trailing newline trimmed).
fn secret(inline: Option<String>, file: Option<PathBuf>, what: &str) -> Result<Option<Secret>> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("{what}: give the value or a file, not both"),
        (Some(v), None) => Ok(Some(Secret::new(v))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{what}: cannot read {}", path.display()))?;
            Ok(Some(Secret::new(
                text.trim_end_matches(['\n', '\r']).to_string(),
            )))
        }
        (None, None) => Ok(None),
    }
}

fn github_config(g: GithubLayer) -> Result<GithubConfig> {
    let token = secret(g.token, g.token_file, "forges.github.token")?;
    let auth = match (g.app_id, g.private_key_path, token) {
        (Some(_), Some(_), Some(_)) => bail!(
            "forges.github: configure a GitHub App (app_id, private_key_path) or a token, not both"
        ),
        (Some(app_id), Some(path), None) => {
            let pem = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "forges.github.private_key_path: cannot read {}",
                    path.display()
                )
            })?;
            Some(GithubAuth::App {
                app_id,
                private_key_pem: Secret::new(pem),
            })
        }
        (Some(_), None, _) => bail!("forges.github.app_id needs private_key_path"),
        (None, Some(_), _) => bail!("forges.github.private_key_path needs app_id"),
        (None, None, Some(token)) => Some(GithubAuth::Token(token)),
        (None, None, None) => None,
    };
    Ok(GithubConfig {
        api_url: g
            .api_url
            .unwrap_or_else(|| "https://api.github.com".into())
            .trim_end_matches('/')
            .to_string(),
        auth,
        webhook_secret: secret(
            g.webhook_secret,
            g.webhook_secret_file,
            "forges.github.webhook_secret",
        )?,
    })
}

fn gitlab_config(g: GitlabLayer) -> Result<GitlabConfig> {
    Ok(GitlabConfig {
        api_url: g
            .api_url
            .unwrap_or_else(|| "https://gitlab.com/api/v4".into())
            .trim_end_matches('/')
            .to_string(),
        token: secret(g.token, g.token_file, "forges.gitlab.token")?,
        webhook_secret: secret(
            g.webhook_secret,
            g.webhook_secret_file,
            "forges.gitlab.webhook_secret",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> ConfigLayer {
        ConfigLayer::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .unwrap()
            .layer
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:9000\nmax_parallel_stages: 3\ndata_dir: data\nrepos:\n  - {name: a, url: ./a, poll_interval: 5s}\n",
        )
        .unwrap();
        let from_file = ConfigLayer::from_file(&file).unwrap();
        let from_env = env(&[
            ("DEPLOYLITE_MAX_PARALLEL_STAGES", "7"),
            ("DEPLOYLITE_RUN_ID", "12"),
            ("PATH", "/bin"),
        ]);
        let from_flags = ConfigLayer {
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let config = ConfigLayer::default()
            .merge(from_file)
            .merge(from_env)
            .merge(from_flags)
            .finish()
            .unwrap();
        assert_eq!(
            config.listen.to_string(),
            "127.0.0.1:9100",
            "flag beats file"
        );
        assert_eq!(config.max_parallel_stages, 7, "env beats file");
        assert_eq!(
            config.data_dir,
            dir.path().join("data"),
            "relative to the file"
        );
        assert_eq!(
            config.repos[0].url,
            dir.path().join("./a").display().to_string()
        );
        assert_eq!(config.repos[0].poll_interval, Duration::from_secs(5));
        assert!(config.database_url.starts_with("sqlite://"));
    }

    #[test]
    fn nested_env_keys_and_lists() {
        let layer = env(&[
            ("DEPLOYLITE_RETENTION__LOGS", "7d"),
            ("DEPLOYLITE_REPOS", "[{name: x, url: /tmp/x}]"),
            ("DEPLOYLITE_LISTEN", "0.0.0.0:80"),
        ]);
        let config = layer.finish().unwrap();
        assert_eq!(config.log_retention, Duration::from_secs(7 * 86400));
        assert_eq!(config.repos.len(), 1);
        assert_eq!(config.listen.to_string(), "0.0.0.0:80");
    }

    #[test]
    fn forges_come_from_file_and_env_and_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "forges:\n  github:\n    webhook_secret_file: secret\nrepos:\n  - {name: a, url: https://github.com/Octo/App.git}\n  - {name: b, url: /srv/b, forge: gitlab, slug: grp/b}\n  - {name: c, url: /srv/c}\n",
        )
        .unwrap();
        let config = ConfigLayer::default()
            .merge(ConfigLayer::from_file(&file).unwrap())
            .merge(env(&[
                ("DEPLOYLITE_FORGES__GITHUB__TOKEN", "12345"),
                ("DEPLOYLITE_PUBLIC_URL", "https://ci.example.com"),
            ]))
            .finish()
            .unwrap();
        let github = config.forges.github.as_ref().unwrap();
        assert_eq!(
            github.webhook_secret.as_ref().map(|s| s.expose()),
            Some("s3cret")
        );
        assert!(
            matches!(&github.auth, Some(GithubAuth::Token(t)) if t.expose() == "12345"),
            "a numeric-looking token stays text"
        );
        assert_eq!(
            config
                .forges
                .repo(ForgeKind::Github, "octo/app")
                .map(|r| r.name.as_str()),
            Some("a")
        );
        assert_eq!(
            config
                .forges
                .repo(ForgeKind::Gitlab, "grp/b")
                .map(|r| r.name.as_str()),
            Some("b")
        );
        let report: Vec<bool> = config.repos.iter().map(|r| r.report).collect();
        assert_eq!(
            report,
            vec![true, false, false],
            "only repos whose forge has credentials report"
        );
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "secrets never print"
        );
    }

    #[test]
    fn the_stage_user_is_a_name_or_a_number() {
        assert_eq!(
            ConfigLayer::default().finish().unwrap().local_runner_user,
            "nobody"
        );
        let from_env = env(&[("DEPLOYLITE_LOCAL_RUNNER__USER", "65534")]);
        assert_eq!(from_env.finish().unwrap().local_runner_user, "65534");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "local_runner: { user: 1001 }\n").unwrap();
        let layer = ConfigLayer::from_file(&file).unwrap();
        assert_eq!(layer.finish().unwrap().local_runner_user, "1001");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:1\nrepoz: []\nmax_parallel_stages: abc\nretention:\n  logs: 5x\n  workspaces: [1h]\nsqlite_synchronous: ful\nlocal_runner:\n  enabled: yes\nrepos:\n  - {name: a, poll_interval: 1s}\n  - nope\n",
        )
        .unwrap();
        let err = ConfigLayer::from_file(&file).unwrap_err().to_string();
        let at = file.display();
        assert_eq!(
            err,
            format!(
                "8 problems in the configuration:\n\
                 {at}:2:1: unknown key `repoz`; did you mean `repos`?\n\
                 {at}:3:22: max_parallel_stages: invalid value \"abc\": expected a whole number\n\
                 {at}:5:9: retention.logs: invalid value \"5x\": expected a duration such as 500ms, 30s, 15m, 1h30m or 7d\n\
                 {at}:6:15: retention.workspaces: expected a duration, found a sequence\n\
                 {at}:7:21: sqlite_synchronous: invalid value \"ful\": expected `full` or `normal`; did you mean `full`?\n\
                 {at}:9:12: local_runner.enabled: invalid value \"yes\": expected true or false\n\
                 {at}:11:5: repos[0]: missing required key `url`\n\
                 {at}:12:5: repos[1]: expected a mapping, found the string \"nope\""
            )
        );
    }

    #[test]
    fn problems_of_the_merged_layers_are_reported_together() {
        let err = env(&[
            ("DEPLOYLITE_LISTEN", "nope"),
            ("DEPLOYLITE_RUNNERS__LEASE_TTL", "10ms"),
            (
                "DEPLOYLITE_REPOS",
                "[{name: a, url: /a}, {name: a, url: /b}]",
            ),
        ])
        .finish()
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "3 problems in the configuration:\n\
             listen: `nope` is not an address to listen on: write HOST:PORT, e.g. 127.0.0.1:8080, [::1]:8080, localhost:8080 or 0.0.0.0:8080 (every interface)\n\
             runners.lease_ttl must be at least 1s\n\
             repos[1] (a): a repository named `a` is already configured"
        );
    }

    #[test]
    fn every_schema_key_reaches_the_typed_layer() {
        // A key in the schema but not in the layers would be refused by serde as a bug.
        fn sample(kind: schema::Kind) -> serde_json::Value {
            use schema::Kind;
            match kind {
                Kind::Text => "/x".into(),
                Kind::WholeNumber => 70000.into(),
                Kind::Bool => true.into(),
                Kind::Duration => "1s".into(),
                Kind::OneOf(words) => words[0].into(),
                Kind::TextList => serde_json::json!(["x"]),
                Kind::Map(fields) | Kind::MapList(fields) => {
                    let map: serde_json::Map<_, _> = fields
                        .iter()
                        .map(|f| (f.key.to_string(), sample(f.kind)))
                        .collect();
                    if matches!(kind, Kind::MapList(_)) {
                        serde_json::json!([map])
                    } else {
                        serde_json::Value::Object(map)
                    }
                }
            }
        }
        let all = sample(schema::Kind::Map(schema::ROOT));
        ConfigLayer::from_json(all, "sample").unwrap();
    }
}
