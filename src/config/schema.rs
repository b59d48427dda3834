//! Every configuration key, its type, and the check of a YAML tree against them. One table
//! serves the config file (each problem at its `file:line:col`, all of them at once, unknown
//! keys with a "did you mean") and the `DEPLOYLITE_*` variables (named after its paths). What
//! passes is turned into JSON for the typed layer in `config.rs`, so serde never has to
//! report a problem itself.

use deploylite_pipeline::document::{did_you_mean, ScalarType, YamlNode, YamlValue};
use deploylite_pipeline::duration::parse_duration;
use deploylite_pipeline::{Diagnostic, Pos};
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Any scalar, kept as text (`token: 12345` is the text "12345").
    Text,
    WholeNumber,
    Bool,
    /// A duration such as `30s` or `7d`.
    Duration,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A sequence of scalars, each kept as text.
    TextList,
    Map(&'static [Field]),
    /// A sequence of mappings.
    MapList(&'static [Field]),
}

#[derive(Debug)]
pub struct Field {
    pub key: &'static str,
    pub kind: Kind,
    /// A mapping of a [`Kind::MapList`] must have it.
    pub required: bool,
}

const fn field(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: false,
    }
}

const fn required(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: true,
    }
}

/// The config file's top level. A key added to the layers in `config.rs` is added here too
/// (the unit test `every_key_reaches_the_typed_layer` catches a key missing from the layers).
pub const ROOT: &[Field] = &[
    field("listen", Kind::Text),
    field("data_dir", Kind::Text),
    field("database_url", Kind::Text),
    field("sqlite_synchronous", Kind::OneOf(&["full", "normal"])),
    field("max_parallel_stages", Kind::WholeNumber),
    field("log_format", Kind::OneOf(&["text", "json"])),
    field("retention", Kind::Map(RETENTION)),
    field("local_runner", Kind::Map(LOCAL_RUNNER)),
    field("repos", Kind::MapList(REPO)),
    field("public_url", Kind::Text),
    field("webhook_max_body_bytes", Kind::WholeNumber),
    field("forges", Kind::Map(FORGES)),
    field("runners", Kind::Map(RUNNERS)),
    field("auth", Kind::Map(AUTH)),
    field("untrusted", Kind::Map(UNTRUSTED)),
    field("limits", Kind::Map(LIMITS)),
    field("policy", Kind::Map(POLICY)),
    field("metrics", Kind::Map(METRICS)),
    field("tracing", Kind::Map(TRACING)),
];

const RETENTION: &[Field] = &[
    field("workspaces", Kind::Duration),
    field("logs", Kind::Duration),
];

const LOCAL_RUNNER: &[Field] = &[
    field("enabled", Kind::Bool),
    field("labels", Kind::TextList),
    field("user", Kind::Text),
    field("ignore_image", Kind::Bool),
];

const REPO: &[Field] = &[
    required("name", Kind::Text),
    required("url", Kind::Text),
    field("branches", Kind::TextList),
    field("tags", Kind::TextList),
    field("poll_interval", Kind::Duration),
    field("forge", Kind::OneOf(&["github", "gitlab"])),
    field("slug", Kind::Text),
    field(
        "untrusted",
        Kind::OneOf(&["require-approval", "never", "run"]),
    ),
];

const FORGES: &[Field] = &[
    field("github", Kind::Map(GITHUB)),
    field("gitlab", Kind::Map(GITLAB)),
];

const GITHUB: &[Field] = &[
    field("api_url", Kind::Text),
    field("app_id", Kind::WholeNumber),
    field("private_key_path", Kind::Text),
    field("token", Kind::Text),
    field("token_file", Kind::Text),
    field("webhook_secret", Kind::Text),
    field("webhook_secret_file", Kind::Text),
];

const GITLAB: &[Field] = &[
    field("api_url", Kind::Text),
    field("token", Kind::Text),
    field("token_file", Kind::Text),
    field("webhook_secret", Kind::Text),
    field("webhook_secret_file", Kind::Text),
];

const RUNNERS: &[Field] = &[
    field("registration_tokens", Kind::TextList),
    field("registration_tokens_file", Kind::Text),
    field("lease_ttl", Kind::Duration),
];

const AUTH: &[Field] = &[field("anonymous_read", Kind::Bool)];
const UNTRUSTED: &[Field] = &[field("labels", Kind::TextList)];
const LIMITS: &[Field] = &[field("log_bytes", Kind::WholeNumber)];
const POLICY: &[Field] = &[
    field("bundles", Kind::TextList),
    field("eval_timeout", Kind::Duration),
];
const METRICS: &[Field] = &[field("listen", Kind::Text)];
const TRACING: &[Field] = &[field("otlp_endpoint", Kind::Text)];

/// Checks `node` against `fields` and returns it as JSON; every problem goes to `problems`
/// (`file` names the source in them).
pub fn check_map(
    file: &str,
    node: &YamlNode,
    fields: &'static [Field],
    problems: &mut Vec<Diagnostic>,
) -> Value {
    Walker { file, problems }.map(node, fields, "")
}

/// Checks a node against one kind (a YAML-valued environment variable).
pub fn check_value(
    file: &str,
    node: &YamlNode,
    kind: Kind,
    key: &str,
    problems: &mut Vec<Diagnostic>,
) -> Value {
    Walker { file, problems }.value(node, kind, key)
}

/// A scalar of `kind`, written as `text`, as JSON; or why it is not one (`expected ...`).
pub fn scalar(kind: Kind, text: &str) -> Result<Value, String> {
    match kind {
        Kind::Text => Ok(Value::String(text.to_string())),
        Kind::WholeNumber => text
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| "expected a whole number".to_string()),
        Kind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("expected true or false".to_string()),
        },
        Kind::Duration => parse_duration(text)
            .map(|_| Value::String(text.to_string()))
            .map_err(|_| "expected a duration such as 500ms, 30s, 15m, 1h30m or 7d".to_string()),
        Kind::OneOf(words) => {
            if words.contains(&text) {
                Ok(Value::String(text.to_string()))
            } else {
                let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
                Err(format!(
                    "expected {}{}",
                    quoted.join(" or "),
                    did_you_mean(text, words.iter().copied())
                ))
            }
        }
        Kind::TextList | Kind::Map(_) | Kind::MapList(_) => {
            Err(format!("expected {}", kind_name(kind)))
        }
    }
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "a string",
        Kind::WholeNumber => "a whole number",
        Kind::Bool => "true or false",
        Kind::Duration => "a duration",
        Kind::OneOf(_) => "a string",
        Kind::TextList => "a sequence of strings",
        Kind::Map(_) => "a mapping",
        Kind::MapList(_) => "a sequence of mappings",
    }
}

struct Walker<'a> {
    file: &'a str,
    problems: &'a mut Vec<Diagnostic>,
}

impl Walker<'_> {
    fn problem(&mut self, pos: Pos, message: String) {
        self.problems.push(Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
            message,
        });
    }

    /// `key` is the dotted path, for messages (`repos[0].poll_interval`).
    fn value(&mut self, node: &YamlNode, kind: Kind, key: &str) -> Value {
        match (kind, &node.value) {
            (_, YamlValue::Null) => Value::Null,
            (Kind::Map(fields), YamlValue::Map(_)) => self.map(node, fields, key),
            (Kind::MapList(fields), YamlValue::Seq(items)) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let at = format!("{key}[{i}]");
                        if matches!(item.value, YamlValue::Map(_)) {
                            self.map(item, fields, &at)
                        } else {
                            self.mismatch(item, Kind::Map(fields), &at);
                            Value::Null
                        }
                    })
                    .collect(),
            ),
            (Kind::TextList, YamlValue::Seq(items)) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.value(item, Kind::Text, &format!("{key}[{i}]")))
                    .collect(),
            ),
            (
                Kind::Text | Kind::WholeNumber | Kind::Bool | Kind::Duration | Kind::OneOf(_),
                YamlValue::Scalar { text, .. },
            ) => match scalar(kind, text) {
                Ok(value) => value,
                Err(expected) => {
                    self.problem(
                        node.pos,
                        format!("{key}: invalid value {text:?}: {expected}"),
                    );
                    Value::Null
                }
            },
            _ => {
                self.mismatch(node, kind, key);
                Value::Null
            }
        }
    }

    fn mismatch(&mut self, node: &YamlNode, kind: Kind, key: &str) {
        let found = match &node.value {
            YamlValue::Scalar {
                text,
                kind: ScalarType::String,
            } => format!("the string {text:?}"),
            _ => node.type_name().to_string(),
        };
        let what = if key.is_empty() {
            "the configuration".to_string()
        } else {
            key.to_string()
        };
        self.problem(
            node.pos,
            format!("{what}: expected {}, found {found}", kind_name(kind)),
        );
    }

    fn map(&mut self, node: &YamlNode, fields: &'static [Field], key: &str) -> Value {
        let YamlValue::Map(entries) = &node.value else {
            if !matches!(node.value, YamlValue::Null) {
                self.mismatch(node, Kind::Map(fields), key);
            }
            return Value::Null;
        };
        let mut out = serde_json::Map::new();
        for entry in entries {
            let path = if key.is_empty() {
                entry.key.clone()
            } else {
                format!("{key}.{}", entry.key)
            };
            let Some(field) = fields.iter().find(|f| f.key == entry.key) else {
                let keys = fields.iter().map(|f| f.key);
                let hint = did_you_mean(&entry.key, keys.clone());
                let message = if hint.is_empty() {
                    let expected: Vec<String> = keys.map(|k| format!("`{k}`")).collect();
                    format!(
                        "unknown key `{}`; expected one of {}",
                        entry.key,
                        expected.join(", ")
                    )
                } else {
                    format!("unknown key `{}`{hint}", entry.key)
                };
                self.problem(entry.key_pos, message);
                continue;
            };
            let value = self.value(&entry.value, field.kind, &path);
            if !value.is_null() {
                out.insert(entry.key.clone(), value);
            }
        }
        for field in fields.iter().filter(|f| f.required) {
            if !out.contains_key(field.key)
                && !entries
                    .iter()
                    .any(|e| e.key == field.key && !matches!(e.value.value, YamlValue::Null))
            {
                self.problem(
                    node.pos,
                    format!("{key}: missing required key `{}`", field.key),
                );
            }
        }
        Value::Object(out)
    }
}

/// Every key that is a leaf for the environment (`local_runner__user`; lists and mappings of
/// lists as one variable holding YAML), with its kind.
pub fn env_keys() -> Vec<(String, Kind)> {
    fn walk(prefix: &str, fields: &[Field], out: &mut Vec<(String, Kind)>) {
        for f in fields {
            let name = format!("{prefix}{}", f.key);
            match f.kind {
                Kind::Map(inner) => walk(&format!("{name}__"), inner, out),
                kind => out.push((name, kind)),
            }
        }
    }
    let mut out = Vec::new();
    walk("", ROOT, &mut out);
    out
}
