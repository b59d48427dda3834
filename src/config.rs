//! Daemon configuration, in layers: built-in defaults < config file (YAML) < `DEPLOYLITE_*`
//! environment variables < command-line flags. Each layer is a [`ConfigLayer`] of optional
//! values; the merged result is validated once into a [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use deploylite_pipeline::duration::parse_duration;
use deploylite_pipeline::GlobList;
use deploylite_reconciler::store::SqliteSync;
use deploylite_reconciler::watcher::RepoConfig;
use serde::Deserialize;

/// The environment variables read (besides `DEPLOYLITE_CONFIG`), with the key each sets.
/// Nested keys use `__`: `DEPLOYLITE_RETENTION__LOGS=7d`. Values are YAML: `DEPLOYLITE_REPOS`
/// takes a YAML/JSON list.
pub const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "sqlite_synchronous",
    "max_parallel_stages",
    "log_format",
    "retention__workspaces",
    "retention__logs",
    "local_runner__enabled",
    "local_runner__labels",
    "repos",
];

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoLayer {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub poll_interval: Option<String>,
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
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub sqlite_synchronous: SqliteSync,
    pub max_parallel_stages: usize,
    pub log_format: LogFormat,
    pub workspace_retention: Duration,
    pub log_retention: Duration,
    pub local_runner_enabled: bool,
    pub local_runner_labels: Vec<String>,
    pub repos: Vec<RepoConfig>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = ".deploylite-data";
pub const DEFAULT_POLL_INTERVAL: &str = "30s";

impl ConfigLayer {
    /// Reads a config file. Relative paths in it (data_dir, local repository urls) are taken
    /// relative to the file's directory, so the file means the same from any working directory.
    pub fn from_file(path: &Path) -> Result<ConfigLayer> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut layer: ConfigLayer = if text.trim().is_empty() {
            ConfigLayer::default()
        } else {
            yaml_serde::from_str(&text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!("{}:{}:{}", path.display(), l.line(), l.column()))
                    .unwrap_or_else(|| path.display().to_string());
                anyhow::anyhow!("{at}: {e}")
            })?
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        layer.resolve_relative_to(&base);
        Ok(layer)
    }

    /// The `DEPLOYLITE_*` variables of `vars` (only the documented keys; stage variables such
    /// as DEPLOYLITE_RUN_ID are not configuration).
    pub fn from_env(vars: impl Iterator<Item = (String, String)>) -> Result<ConfigLayer> {
        let mut root = serde_json::Map::new();
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("DEPLOYLITE_").map(str::to_ascii_lowercase) else {
                continue;
            };
            if !ENV_KEYS.contains(&key.as_str()) {
                continue;
            }
            let parsed: serde_json::Value =
                yaml_serde::from_str(&value).unwrap_or_else(|_| serde_json::Value::String(value.clone()));
            // A string key such as listen stays a string even if it looks like a number.
            let parsed = match (key.as_str(), parsed) {
                ("listen" | "data_dir" | "database_url", v) if !v.is_string() => serde_json::Value::String(value.clone()),
                (_, v) => v,
            };
            match key.split_once("__") {
                Some((outer, inner)) => {
                    let entry = root
                        .entry(outer.to_string())
                        .or_insert_with(|| serde_json::Value::Object(Default::default()));
                    if let Some(map) = entry.as_object_mut() {
                        map.insert(inner.to_string(), parsed);
                    }
                }
                None => {
                    root.insert(key, parsed);
                }
            }
        }
        serde_json::from_value(serde_json::Value::Object(root)).context("invalid DEPLOYLITE_* environment variable")
    }

    fn resolve_relative_to(&mut self, base: &Path) {
        if let Some(dir) = &self.data_dir {
            if dir.is_relative() {
                self.data_dir = Some(base.join(dir));
            }
        }
        for repo in self.repos.iter_mut().flatten() {
            if deploylite_reconciler::git::is_local(&repo.url) && Path::new(&repo.url).is_relative() {
                repo.url = base.join(&repo.url).display().to_string();
            }
        }
    }

    /// `other` wins wherever it has a value.
    pub fn merge(mut self, other: ConfigLayer) -> ConfigLayer {
        macro_rules! take {
            ($($field:ident),*) => { $( if other.$field.is_some() { self.$field = other.$field; } )* };
        }
        take!(listen, data_dir, database_url, sqlite_synchronous, max_parallel_stages, log_format, repos);
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
        }
        self
    }

    pub fn finish(self) -> Result<Config> {
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .with_context(|| format!("listen: `{listen_text}` is not an address like 127.0.0.1:8080"))?;
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        let database_url = self
            .database_url
            .unwrap_or_else(|| deploylite_reconciler::paths::DataDir::new(&data_dir).default_database_url());
        let max_parallel_stages = self.max_parallel_stages.unwrap_or_else(|| {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2)
        });
        if max_parallel_stages == 0 {
            bail!("max_parallel_stages must be at least 1");
        }
        let retention = self.retention.unwrap_or_default();
        let duration = |key: &str, value: Option<String>, default: &str| -> Result<Duration> {
            let text = value.unwrap_or_else(|| default.to_string());
            parse_duration(&text).map_err(|e| anyhow::anyhow!("{key}: {e}"))
        };
        let workspace_retention = duration("retention.workspaces", retention.workspaces, "1h")?;
        let log_retention = duration("retention.logs", retention.logs, "30d")?;
        let local = self.local_runner.unwrap_or_default();
        let mut repos = Vec::new();
        for (i, repo) in self.repos.unwrap_or_default().into_iter().enumerate() {
            let at = format!("repos[{i}] ({})", repo.name);
            if repo.name.is_empty()
                || !repo.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            {
                bail!("{at}: name must be letters, digits, `-`, `_`, `.` or `/`");
            }
            if repos.iter().any(|r: &RepoConfig| r.name == repo.name) {
                bail!("{at}: a repository named `{}` is already configured", repo.name);
            }
            let poll_interval = duration(
                &format!("{at}.poll_interval"),
                repo.poll_interval,
                DEFAULT_POLL_INTERVAL,
            )?;
            if poll_interval < Duration::from_millis(100) {
                bail!("{at}.poll_interval must be at least 100ms");
            }
            repos.push(RepoConfig {
                branches: GlobList::new(&repo.branches).map_err(|e| anyhow::anyhow!("{at}.branches: {e}"))?,
                tags: GlobList::new(&repo.tags).map_err(|e| anyhow::anyhow!("{at}.tags: {e}"))?,
                name: repo.name,
                url: repo.url,
                poll_interval,
            });
        }
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
            local_runner_labels: local.labels.unwrap_or_else(|| vec!["local".into(), std::env::consts::OS.into()]),
            repos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> ConfigLayer {
        ConfigLayer::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
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
        let from_env = env(&[("DEPLOYLITE_MAX_PARALLEL_STAGES", "7"), ("DEPLOYLITE_RUN_ID", "12"), ("PATH", "/bin")]);
        let from_flags = ConfigLayer {
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let config = ConfigLayer::default().merge(from_file).merge(from_env).merge(from_flags).finish().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9100", "flag beats file");
        assert_eq!(config.max_parallel_stages, 7, "env beats file");
        assert_eq!(config.data_dir, dir.path().join("data"), "relative to the file");
        assert_eq!(config.repos[0].url, dir.path().join("./a").display().to_string());
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
    fn errors_name_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "listen: 127.0.0.1:1\nrepoz: []\n").unwrap();
        let err = ConfigLayer::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("c.yaml:2:1"), "{err}");
        assert!(err.contains("unknown field `repoz`"), "{err}");

        let err = env(&[("DEPLOYLITE_REPOS", "[{name: a, url: /a, poll_interval: 5x}]")]).finish().unwrap_err();
        assert!(err.to_string().contains("poll_interval"), "{err}");
        let err = env(&[("DEPLOYLITE_LISTEN", "nope")]).finish().unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }
}
