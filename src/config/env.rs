//! The `DEPLOYLITE_*` layer: one variable per key of the schema, nested keys joined with `__`
//! (`DEPLOYLITE_RETENTION__LOGS=7d`). A scalar key takes the variable's text as it is; a list
//! or a list of mappings (`DEPLOYLITE_REPOS`) takes YAML, checked like the config file. A
//! `DEPLOYLITE_*` variable that is neither a key nor one of the variables DeployLite reads for
//! other purposes is reported as a warning, with the closest name.

use deploylite_pipeline::document::{did_you_mean, parse_yaml};
use serde_json::Value;

use super::schema::{self, Kind};
use super::{ConfigLayer, ConfigProblems};

/// `DEPLOYLITE_*` variables that are not configuration: read by other commands, by tools, or
/// set for stages.
const OTHER_VARIABLES: &[&str] = &[
    // `deploylite serve` and the client commands
    "CONFIG",
    "LOG",
    "TOKEN",
    "SERVER",
    // `deploylite runner`
    "RUNNER_TOKEN",
    "KUBECONFIG",
    // stage variables (docs/pipeline.md), and the runner's name on remote runners
    "RUN_ID",
    "STAGE",
    "ATTEMPT",
    "WORKSPACE",
    "REPO",
    "PIPELINE",
    "COMMIT",
    "REF",
    "BRANCH",
    "TAG",
    "EVENT",
    "RUNNER",
    // Kubernetes init containers
    "SOURCE_URL",
    // the bench and examples/serve.sh
    "BIN",
];

/// Families of variables read elsewhere: the Docker and Kubernetes executors' settings, git
/// credentials handed to a credential helper, the tests' settings.
const OTHER_PREFIXES: &[&str] = &["DOCKER_", "KUBE_", "GIT_", "TEST_"];

/// The environment's layer and the warnings about variables it did not understand.
pub struct EnvLayer {
    pub layer: ConfigLayer,
    pub warnings: Vec<String>,
}

impl ConfigLayer {
    /// The `DEPLOYLITE_*` variables of `vars`: the layer, or every problem with them.
    pub fn from_env(
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<EnvLayer, ConfigProblems> {
        let keys = schema::env_keys();
        let mut root = serde_json::Map::new();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut vars: Vec<(String, String)> = vars.collect();
        vars.sort();
        for (name, text) in vars {
            let Some(suffix) = name.strip_prefix("DEPLOYLITE_") else {
                continue;
            };
            let key = suffix.to_ascii_lowercase();
            let Some((_, kind)) = keys.iter().find(|(k, _)| *k == key) else {
                if !is_other_variable(suffix) {
                    warnings.push(unknown_variable(&name, &keys));
                }
                continue;
            };
            let value = match kind {
                Kind::TextList | Kind::MapList(_) | Kind::Map(_) => {
                    let (node, mut diagnostics) = parse_yaml(&name, &text);
                    let value = match (kind, &node.value) {
                        // `a,b` or a single label: not YAML's business.
                        (
                            Kind::TextList,
                            deploylite_pipeline::document::YamlValue::Scalar { .. },
                        ) if diagnostics.is_empty() => Value::Array(
                            text.split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(|s| Value::String(s.to_string()))
                                .collect(),
                        ),
                        _ => schema::check_value(&name, &node, *kind, &key, &mut diagnostics),
                    };
                    if !diagnostics.is_empty() {
                        problems.extend(diagnostics.iter().map(|d| d.to_string()));
                        continue;
                    }
                    value
                }
                _ => match schema::scalar(*kind, &text) {
                    Ok(value) => value,
                    Err(expected) => {
                        problems.push(format!("{name}: invalid value {text:?}: {expected}"));
                        continue;
                    }
                },
            };
            if !value.is_null() {
                let path: Vec<&str> = key.split("__").collect();
                insert_path(&mut root, &path, value);
            }
        }
        if !problems.is_empty() {
            return Err(ConfigProblems(problems));
        }
        let layer = ConfigLayer::from_json(Value::Object(root), "DEPLOYLITE_* variables")?;
        Ok(EnvLayer { layer, warnings })
    }
}

fn is_other_variable(suffix: &str) -> bool {
    OTHER_VARIABLES.contains(&suffix) || OTHER_PREFIXES.iter().any(|p| suffix.starts_with(p))
}

/// `DEPLOYLITE_LISTN is not a DeployLite variable (ignored); did you mean `DEPLOYLITE_LISTEN`?`
fn unknown_variable(name: &str, keys: &[(String, Kind)]) -> String {
    let suffix = name.strip_prefix("DEPLOYLITE_").unwrap_or(name);
    let known: Vec<String> = keys
        .iter()
        .map(|(k, _)| k.to_ascii_uppercase())
        .chain(OTHER_VARIABLES.iter().map(|v| v.to_string()))
        .collect();
    // Compared without the common prefix, which would make any two names look close.
    let hint = did_you_mean(suffix, known.iter().map(String::as_str));
    let hint = hint.replacen('`', "`DEPLOYLITE_", 1);
    format!("{name} is not a DeployLite variable (ignored){hint}")
}

/// Sets `root[a][b]...[leaf] = value`, creating the intermediate objects.
fn insert_path(root: &mut serde_json::Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [] => {}
        [leaf] => {
            root.insert(leaf.to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = root
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(map) = entry.as_object_mut() {
                insert_path(map, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<EnvLayer, ConfigProblems> {
        ConfigLayer::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn unknown_variables_are_warned_about_with_the_closest_name() {
        let got = env(&[
            ("DEPLOYLITE_LISTN", "127.0.0.1:1"),
            ("DEPLOYLITE_RETENTION_LOGS", "7d"),
            ("DEPLOYLITE_WHATEVER", "x"),
            ("DEPLOYLITE_RUN_ID", "1"),
            ("DEPLOYLITE_DOCKER_HOST", "unix:///x"),
            ("DEPLOYLITE_TOKEN", "t"),
            ("PATH", "/bin"),
        ])
        .map_err(|e| e.to_string())
        .unwrap();
        assert_eq!(
            got.warnings,
            vec![
                "DEPLOYLITE_LISTN is not a DeployLite variable (ignored); did you mean `DEPLOYLITE_LISTEN`?",
                "DEPLOYLITE_RETENTION_LOGS is not a DeployLite variable (ignored); did you mean `DEPLOYLITE_RETENTION__LOGS`?",
                "DEPLOYLITE_WHATEVER is not a DeployLite variable (ignored)",
            ]
        );
    }

    #[test]
    fn every_problem_names_its_variable() {
        let err = env(&[
            ("DEPLOYLITE_MAX_PARALLEL_STAGES", "abc"),
            ("DEPLOYLITE_LOCAL_RUNNER__ENABLED", "yes"),
            ("DEPLOYLITE_REPOS", "[{name: a, url: /a, poll_intervl: 5s}]"),
        ])
        .err()
        .unwrap();
        assert_eq!(
            err.0,
            vec![
                r#"DEPLOYLITE_LOCAL_RUNNER__ENABLED: invalid value "yes": expected true or false"#,
                r#"DEPLOYLITE_MAX_PARALLEL_STAGES: invalid value "abc": expected a whole number"#,
                "DEPLOYLITE_REPOS:1:21: unknown key `poll_intervl`; did you mean `poll_interval`?",
            ]
        );
    }

    #[test]
    fn lists_take_yaml_or_commas() {
        let layer = env(&[
            ("DEPLOYLITE_LOCAL_RUNNER__LABELS", "local, gpu"),
            ("DEPLOYLITE_UNTRUSTED__LABELS", "[forks]"),
        ])
        .map_err(|e| e.to_string())
        .unwrap()
        .layer;
        assert_eq!(
            layer.local_runner.and_then(|l| l.labels),
            Some(vec!["local".to_string(), "gpu".to_string()])
        );
        assert_eq!(
            layer.untrusted.and_then(|u| u.labels),
            Some(vec!["forks".to_string()])
        );
    }
}
