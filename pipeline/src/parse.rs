//! Spanned YAML tree → [`Pipeline`], collecting every diagnostic instead of stopping at the
//! first. The grammar is documented in `docs/pipeline.md`; the accepted keys of each mapping
//! are listed once below and a unit test checks them against the JSON schema, so the parser,
//! the schema and the docs cannot drift apart silently.

use std::collections::BTreeMap;
use std::time::Duration;

use saphyr_parser::ScalarStyle;

use crate::duration::{format_duration, parse_duration};
use crate::expr::Expr;
use crate::glob::GlobList;
use crate::keys::canonical_key;
use crate::limits::{MAX_DIAGNOSTICS, MAX_FILE_BYTES, MAX_PATTERNS, MAX_STAGES};
use crate::model::*;
use crate::suggest::Suggester;
use crate::tree::{Entry, Node, NodeKind, ScalarKind};
use crate::validate::{self, StageRef};
use crate::yaml;
use crate::Diagnostic;

pub(crate) const PIPELINE_KEYS: &[&str] = &["name", "on", "concurrency", "env", "stages"];
pub(crate) const ON_KEYS: &[&str] = &["push", "pull_request"];
pub(crate) const PUSH_KEYS: &[&str] = &[
    "branches",
    "branches_ignore",
    "tags",
    "tags_ignore",
    "paths",
    "paths_ignore",
];
pub(crate) const PULL_REQUEST_KEYS: &[&str] =
    &["branches", "branches_ignore", "paths", "paths_ignore"];
pub(crate) const STAGE_KEYS: &[&str] = &[
    "needs",
    "runs_on",
    "image",
    "timeout",
    "retry",
    "env",
    "if",
    "resources",
    "services",
    "steps",
    "rollback",
];
pub(crate) const RETRY_KEYS: &[&str] = &["max", "backoff", "max_backoff", "exit_codes"];
pub(crate) const RESOURCES_KEYS: &[&str] = &["cpu", "memory"];
pub(crate) const SERVICE_KEYS: &[&str] = &["image", "env", "command"];
pub(crate) const STEP_KEYS: &[&str] = &["name", "run", "env"];
pub(crate) const CONCURRENCY_VALUES: &[&str] = &["parallel", "queue", "cancel-in-progress"];

/// Every mapping of the grammar with its keys, named as in the schema's `$defs`.
#[cfg(test)]
pub(crate) const ALL_KEY_LISTS: &[(&str, &[&str])] = &[
    ("pipeline", PIPELINE_KEYS),
    ("on", ON_KEYS),
    ("push", PUSH_KEYS),
    ("pull_request", PULL_REQUEST_KEYS),
    ("stage", STAGE_KEYS),
    ("retry", RETRY_KEYS),
    ("resources", RESOURCES_KEYS),
    ("service", SERVICE_KEYS),
    ("step", STEP_KEYS),
];

const MAX_RETRIES: u64 = 100;
/// Pipeline and stage names: a log file is `<stage>@<attempt>.log`, and file names stop at 255.
const MAX_NAME: usize = 128;
/// A DNS label's limit: a service name becomes a host name on the attempt's network.
const MAX_SERVICE_NAME: usize = 63;

/// Keys of GitHub Actions workflows that users paste, with what to write instead.
const GITHUB_ACTIONS_KEYS: &[(&str, &str)] = &[
    ("jobs", "GitHub Actions' `jobs` are `stages` here"),
    (
        "timeout_minutes",
        "GitHub Actions' `timeout-minutes: 10` is written `timeout: 10m` here",
    ),
    (
        "continue_on_error",
        "`continue-on-error` is not supported yet; a step that may fail without failing the stage can end with `|| true`",
    ),
    (
        "uses",
        "actions (`uses:`) are not supported; write what the action does as `run:` commands",
    ),
    ("with", "actions' `with:` inputs are not supported; pass values through `env:`"),
    (
        "working_directory",
        "`working-directory` is not supported; start the command with `cd DIR &&`",
    ),
    (
        "strategy",
        "matrix builds (`strategy:`) are not supported; write one stage per combination",
    ),
];

/// Runner labels of GitHub-hosted runners, which no DeployLite runner offers unless registered
/// with them.
fn github_hosted_label(label: &str) -> bool {
    ["ubuntu-", "windows-", "macos-"]
        .iter()
        .any(|p| label.starts_with(p))
}

pub(crate) fn one_of(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|k| format!("`{k}`")).collect();
    quoted.join(", ")
}

/// Names of pipelines and stages end up in URLs, file names and metrics labels: this says why
/// `s` cannot be one, if it cannot.
pub(crate) fn name_problem(s: &str) -> Option<String> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        // No `/` (a path or URL separator), no spaces, no control characters.
        return Some("use only letters, digits, `_`, `.` and `-`".into());
    }
    if s == "." || s == ".." {
        // A URL or path segment `..` (or `.`) is resolved away: on a remote runner the stage's
        // URLs would name another route, and the stage would be requeued forever.
        return Some("`.` and `..` are path segments that URLs and file paths resolve away".into());
    }
    if s.len() > MAX_NAME {
        return Some(format!(
            "at most {MAX_NAME} characters: names become file names and URL segments"
        ));
    }
    None
}

/// A name in a message: control characters escaped, so that a hostile name cannot rewrite
/// the terminal or the log line it is shown in.
pub(crate) fn shown(s: &str) -> String {
    s.escape_debug().to_string()
}

/// RFC 1123 label: a service name is the host name steps reach the service by, so it must be
/// one that every resolver (and Kubernetes, should it ever run services) accepts.
fn valid_service_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_SERVICE_NAME
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
}

fn valid_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The pipeline or its errors, and the file's warnings.
pub(crate) fn parse_pipeline(
    file: &str,
    src: &str,
) -> (Result<Pipeline, Vec<Diagnostic>>, Vec<Diagnostic>) {
    let mut cx = Cx::new(file, true);
    if src.len() > MAX_FILE_BYTES {
        cx.err(
            Pos { line: 1, col: 1 },
            format!(
                "file too large: {} bytes; a pipeline file may be at most {} MiB ({MAX_FILE_BYTES} bytes)",
                src.len(),
                MAX_FILE_BYTES >> 20
            ),
        );
        return (Err(cx.diags), Vec::new());
    }
    let mut raw = Vec::new();
    let root = yaml::load(src, &mut raw);
    for (pos, msg) in raw {
        cx.err(pos, msg);
    }
    let pipeline = root.and_then(|root| cx.pipeline(&root));
    let warnings = capped(std::mem::take(&mut cx.warnings), "warnings");
    match pipeline {
        Some(mut p) if cx.diags.is_empty() => {
            p.warnings.clone_from(&warnings);
            (Ok(p), warnings)
        }
        _ => (Err(capped(cx.diags, "problems")), warnings),
    }
}

/// Diagnostics in file order (whichever pass found them), at most [`MAX_DIAGNOSTICS`] of them
/// and then one saying how many more there were.
pub(crate) fn capped(mut diags: Vec<Diagnostic>, what: &str) -> Vec<Diagnostic> {
    diags.sort_by_key(|d| (d.line, d.col));
    if diags.len() > MAX_DIAGNOSTICS {
        let more = diags.len() - MAX_DIAGNOSTICS;
        diags.truncate(MAX_DIAGNOSTICS + 1);
        if let Some(last) = diags.last_mut() {
            last.message = format!(
                "{more} more {what} from here on are not shown (at most {MAX_DIAGNOSTICS} are reported per file)"
            );
        }
    }
    diags
}

/// The walker state: file name for diagnostics, everything found so far, and the file's
/// suggestion budget. Shared with the environment-file parser (`environment.rs`), so that both
/// kinds of file get the same key-spelling rule, type errors and did-you-mean.
pub(crate) struct Cx<'f> {
    file: &'f str,
    pub(crate) diags: Vec<Diagnostic>,
    pub(crate) warnings: Vec<Diagnostic>,
    pub(crate) suggester: Suggester,
    /// Whether unknown keys that GitHub Actions workflows use get their hint: only pipeline
    /// files resemble workflows.
    github_actions_hints: bool,
}

/// The entries of a type-checked mapping, by canonical key; unknown keys and deprecated
/// spellings were already reported.
pub(crate) struct Fields<'n> {
    pub(crate) pos: Pos,
    entries: Vec<(&'static str, &'n Entry<'n>)>,
}

impl<'n> Fields<'n> {
    pub(crate) fn get(&self, key: &str) -> Option<&'n Entry<'n>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| *e)
    }
}

impl<'f> Cx<'f> {
    pub(crate) fn new(file: &'f str, github_actions_hints: bool) -> Self {
        Cx {
            file,
            diags: Vec::new(),
            warnings: Vec::new(),
            suggester: Suggester::default(),
            github_actions_hints,
        }
    }

    pub(crate) fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    pub(crate) fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        self.warnings.push(Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    pub(crate) fn expected(&mut self, node: &Node, what: &str) {
        self.err(
            node.pos,
            format!("expected {what}, found {}", node.type_name()),
        );
    }

    /// Type-check a mapping (null counts as empty), resolve each key's spelling
    /// ([`canonical_key`]) and report unknown keys and keys written in both spellings.
    pub(crate) fn map<'n>(
        &mut self,
        node: &'n Node<'n>,
        keys: &[&'static str],
    ) -> Option<Fields<'n>> {
        let entries: &[Entry<'_>] = match &node.kind {
            NodeKind::Map(e) => e,
            _ if node.is_null() => &[],
            _ => {
                self.expected(node, "a mapping");
                return None;
            }
        };
        let mut fields: Vec<(&'static str, &'n Entry<'n>)> = Vec::with_capacity(entries.len());
        for e in entries {
            let Some((key, deprecated)) = canonical_key(&e.key, keys) else {
                self.unknown_key(&e.key, e.key_pos, keys);
                continue;
            };
            if let Some((_, first)) = fields.iter().find(|(k, _)| *k == key) {
                self.err(
                    e.key_pos,
                    format!(
                        "`{}` and `{}` (at {}:{}) are the same key; keep only `{key}`",
                        e.key, first.key, first.key_pos.line, first.key_pos.col
                    ),
                );
                continue;
            }
            if deprecated {
                self.warn(
                    e.key_pos,
                    format!(
                        "`{}` is spelled `{key}`; the other spelling is deprecated",
                        e.key
                    ),
                );
            }
            fields.push((key, e));
        }
        Some(Fields {
            pos: node.pos,
            entries: fields,
        })
    }

    fn unknown_key(&mut self, key: &str, pos: Pos, keys: &[&str]) {
        // Compared in the canonical spelling, so that `timeout-minutes` and `run-on` are
        // recognised as well as their snake_case forms.
        let snake = key.replace('-', "_");
        let github = self
            .github_actions_hints
            .then(|| GITHUB_ACTIONS_KEYS.iter().find(|(k, _)| *k == snake));
        if let Some(Some((_, hint))) = github {
            self.err(pos, format!("unknown key `{key}`: {hint}"));
            return;
        }
        let hint = self.suggester.did_you_mean(&snake, keys.iter().copied());
        let msg = if hint.is_empty() {
            format!("unknown key `{key}`; expected one of {}", one_of(keys))
        } else {
            format!("unknown key `{key}`{hint}")
        };
        self.err(pos, msg);
    }

    pub(crate) fn required<'n>(&mut self, f: &Fields<'n>, key: &str) -> Option<&'n Entry<'n>> {
        let e = f.get(key);
        if e.is_none() {
            self.err(f.pos, format!("missing required key `{key}`"));
        }
        e
    }

    /// Any non-null scalar, as written (numbers and booleans are kept as text).
    pub(crate) fn string(&mut self, node: &Node<'_>) -> Option<String> {
        self.str_of(node).map(str::to_string)
    }

    /// [`Cx::string`], borrowed from the tree.
    pub(crate) fn str_of<'n>(&mut self, node: &'n Node<'_>) -> Option<&'n str> {
        match &node.kind {
            NodeKind::Scalar(s) if s.kind() != ScalarKind::Null => Some(&s.value),
            _ => {
                self.expected(node, "a string");
                None
            }
        }
    }

    /// A single string or a sequence of strings, each with its position.
    pub(crate) fn string_list<'n>(&mut self, node: &'n Node<'_>) -> Option<Vec<(&'n str, Pos)>> {
        match &node.kind {
            NodeKind::Scalar(s) if s.kind() != ScalarKind::Null => {
                Some(vec![(&*s.value, node.pos)])
            }
            NodeKind::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items {
                    match self.str_of(item) {
                        Some(s) => out.push((s, item.pos)),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.expected(node, "a string or a sequence of strings");
                None
            }
        }
    }

    fn globs(&mut self, node: &Node<'_>) -> GlobList {
        // As `string_list`, without its intermediate vector: type-check every item (reporting
        // each bad one), and compile the patterns only when all are strings.
        let items: &[Node<'_>] = match &node.kind {
            NodeKind::Seq(items) => items,
            NodeKind::Scalar(s) if s.kind() != ScalarKind::Null => std::slice::from_ref(node),
            _ => {
                self.expected(node, "a string or a sequence of strings");
                return GlobList::default();
            }
        };
        let mut ok = true;
        for item in items {
            ok &= self.str_of(item).is_some();
        }
        if !ok {
            return GlobList::default();
        }
        if items.len() > MAX_PATTERNS {
            self.err(
                node.pos,
                format!(
                    "too many patterns: {}; a filter may have at most {MAX_PATTERNS}",
                    items.len()
                ),
            );
            return GlobList::default();
        }
        let mut globs = Vec::with_capacity(items.len());
        for item in items {
            let (NodeKind::Scalar(s), pos) = (&item.kind, item.pos) else {
                continue;
            };
            match crate::glob::Glob::new(&s.value) {
                Ok(g) => globs.push(g),
                Err(e) => self.err(pos, e.to_string()),
            }
        }
        let list = GlobList(globs);
        if !list.is_empty() && !list.has_positive() {
            self.err(
                node.pos,
                "a list of only negated (`!`) patterns matches nothing; start with a positive pattern such as `**`",
            );
        }
        list
    }

    pub(crate) fn uint(&mut self, node: &Node) -> Option<u64> {
        match &node.kind {
            NodeKind::Scalar(s) if s.kind() == ScalarKind::Number => {
                if let Ok(v) = s.value.parse::<u64>() {
                    return Some(v);
                }
            }
            _ => {}
        }
        self.expected(node, "a non-negative integer");
        None
    }

    pub(crate) fn duration(&mut self, node: &Node<'_>) -> Option<Duration> {
        let s = self.str_of(node)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(node.pos, e.to_string());
                None
            }
        }
    }

    fn env(&mut self, node: &Node) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let entries: &[Entry<'_>] = match &node.kind {
            NodeKind::Map(e) => e,
            _ if node.is_null() => &[],
            _ => {
                self.expected(node, "a mapping");
                return out;
            }
        };
        for e in entries {
            if !valid_env_name(&e.key) {
                self.err(
                    e.key_pos,
                    format!("invalid environment variable name `{}`: use letters, digits and `_`, not starting with a digit", e.key),
                );
            }
            match &e.value.kind {
                NodeKind::Scalar(s) if s.kind() != ScalarKind::Null => {
                    out.insert(e.key.to_string(), s.value.to_string());
                }
                _ => self.expected(&e.value, "a string, number or boolean"),
            }
        }
        out
    }

    fn pipeline(&mut self, root: &Node) -> Option<Pipeline> {
        let f = self.map(root, PIPELINE_KEYS)?;
        let name = self.required(&f, "name").and_then(|e| {
            let n = self.string(&e.value)?;
            if let Some(why) = name_problem(&n) {
                self.err(
                    e.value.pos,
                    format!("invalid pipeline name `{}`: {why}", shown(&n)),
                );
            }
            Some((n, e.value.pos))
        });
        let on_given = f.get("on").is_some();
        let on = f
            .get("on")
            .map_or_else(Triggers::default, |e| self.triggers(&e.value));
        let concurrency = f
            .get("concurrency")
            .map_or(Concurrency::Parallel, |e| self.concurrency(&e.value));
        let env = f.get("env").map(|e| self.env(&e.value)).unwrap_or_default();
        let mut refs = Vec::new();
        let stages = self
            .required(&f, "stages")
            .and_then(|e| self.stages(&e.value, &mut refs));
        for (pos, message) in validate::check_stages(&refs, &mut self.suggester) {
            self.err(pos, message);
        }
        let (name, name_pos) = name?;
        Some(Pipeline {
            name,
            name_pos,
            on,
            concurrency,
            env,
            stages: stages?,
            on_given,
            warnings: Vec::new(),
        })
    }

    fn concurrency(&mut self, node: &Node<'_>) -> Concurrency {
        let Some(s) = self.str_of(node) else {
            return Concurrency::Parallel;
        };
        match s {
            "parallel" => Concurrency::Parallel,
            "queue" => Concurrency::Queue,
            "cancel-in-progress" => Concurrency::CancelInProgress,
            _ => {
                let hint = self
                    .suggester
                    .did_you_mean(s, CONCURRENCY_VALUES.iter().copied());
                let msg = if hint.is_empty() {
                    format!(
                        "invalid concurrency `{s}`; expected one of {}",
                        one_of(CONCURRENCY_VALUES)
                    )
                } else {
                    format!("invalid concurrency `{s}`{hint}")
                };
                self.err(node.pos, msg);
                Concurrency::Parallel
            }
        }
    }

    fn triggers(&mut self, node: &Node) -> Triggers {
        let mut t = Triggers::default();
        // Shorthands: `on: push` and `on: [push, pull_request]` enable events with defaults.
        let names: Vec<&Node> = match &node.kind {
            NodeKind::Map(_) => Vec::new(),
            NodeKind::Seq(items) => items.iter().collect(),
            NodeKind::Scalar(_) if node.is_null() => return t,
            NodeKind::Scalar(_) => vec![node],
        };
        if !names.is_empty() || matches!(node.kind, NodeKind::Seq(_)) {
            for n in names {
                let Some(s) = self.str_of(n) else { continue };
                match canonical_key(s, ON_KEYS) {
                    Some((event, deprecated)) => {
                        if deprecated {
                            self.warn(
                                n.pos,
                                format!(
                                    "`{s}` is spelled `{event}`; the other spelling is deprecated"
                                ),
                            );
                        }
                        if event == "push" {
                            t.push = Some(PushTrigger::default());
                        } else {
                            t.pull_request = Some(PullRequestTrigger::default());
                        }
                    }
                    None => self.unknown_event(s, n.pos),
                }
            }
            return t;
        }
        let Some(f) = self.map(node, ON_KEYS) else {
            return t;
        };
        if let Some(e) = f.get("push") {
            if let Some(pf) = self.map(&e.value, PUSH_KEYS) {
                t.push = Some(PushTrigger {
                    branches: self.filter(&pf, "branches"),
                    branches_ignore: self.filter(&pf, "branches_ignore"),
                    tags: self.filter(&pf, "tags"),
                    tags_ignore: self.filter(&pf, "tags_ignore"),
                    paths: self.filter(&pf, "paths"),
                    paths_ignore: self.filter(&pf, "paths_ignore"),
                });
                self.not_both(&pf, "branches", "branches_ignore");
                self.not_both(&pf, "tags", "tags_ignore");
            }
        }
        if let Some(e) = f.get("pull_request") {
            if let Some(pf) = self.map(&e.value, PULL_REQUEST_KEYS) {
                t.pull_request = Some(PullRequestTrigger {
                    branches: self.filter(&pf, "branches"),
                    branches_ignore: self.filter(&pf, "branches_ignore"),
                    paths: self.filter(&pf, "paths"),
                    paths_ignore: self.filter(&pf, "paths_ignore"),
                });
                self.not_both(&pf, "branches", "branches_ignore");
            }
        }
        t
    }

    fn filter(&mut self, f: &Fields<'_>, key: &str) -> GlobList {
        f.get(key).map(|e| self.globs(&e.value)).unwrap_or_default()
    }

    /// As in GitHub Actions: a name list and its ignore list exclude each other (a `!`
    /// pattern in the list does what the ignore list would).
    fn not_both(&mut self, f: &Fields<'_>, list: &str, ignore: &str) {
        if let (Some(_), Some(e)) = (f.get(list), f.get(ignore)) {
            self.err(
                e.key_pos,
                format!("use either `{list}` or `{ignore}`, not both; exclude names with `!` patterns in `{list}`"),
            );
        }
    }

    fn unknown_event(&mut self, s: &str, pos: Pos) {
        let hint = self.suggester.did_you_mean(s, ON_KEYS.iter().copied());
        let msg = if hint.is_empty() {
            format!("unknown event `{s}`; expected `push` or `pull_request`")
        } else {
            format!("unknown event `{s}`{hint}")
        };
        self.err(pos, msg);
    }

    fn stages<'n>(
        &mut self,
        node: &'n Node<'n>,
        refs: &mut Vec<StageRef<'n>>,
    ) -> Option<Vec<Stage>> {
        let entries = match &node.kind {
            NodeKind::Map(e) => e,
            _ => {
                self.expected(node, "a mapping of stage names to stages");
                return None;
            }
        };
        if entries.is_empty() {
            self.err(node.pos, "`stages` must not be empty");
            return None;
        }
        if entries.len() > MAX_STAGES {
            self.err(
                node.pos,
                format!(
                    "too many stages: {}; a pipeline may have at most {MAX_STAGES}",
                    entries.len()
                ),
            );
            return None;
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut ok = true;
        for e in entries {
            if let Some(why) = name_problem(&e.key) {
                self.err(
                    e.key_pos,
                    format!("invalid stage name `{}`: {why}", shown(&e.key)),
                );
            }
            match self.stage(e, refs) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn stage<'n>(&mut self, entry: &'n Entry<'n>, refs: &mut Vec<StageRef<'n>>) -> Option<Stage> {
        let f = self.map(&entry.value, STAGE_KEYS);
        let needs_with_pos = f
            .as_ref()
            .and_then(|f| f.get("needs"))
            .and_then(|e| self.string_list(&e.value))
            .unwrap_or_default();
        let needs = needs_with_pos.iter().map(|(n, _)| n.to_string()).collect();
        refs.push(StageRef {
            name: &entry.key,
            name_pos: entry.key_pos,
            needs: needs_with_pos,
        });
        let f = f?;
        let runs_on_entry = f.get("runs_on");
        let runs_on: Vec<String> = runs_on_entry
            .and_then(|e| self.string_list(&e.value))
            .map(|labels| {
                labels
                    .into_iter()
                    .map(|(label, pos)| {
                        if github_hosted_label(label) {
                            self.warn(
                                pos,
                                format!(
                                    "`{label}` is a GitHub-hosted runner label: no DeployLite runner offers it unless registered with it. \
                                     The daemon's local runner offers `local` and its OS name (`linux`); remote runners offer the --labels they registered with"
                                ),
                            );
                        }
                        label.to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let runs_on_pos = runs_on_entry.map(|e| e.value.pos).unwrap_or_default();
        let image = f.get("image").and_then(|e| self.string(&e.value));
        let timeout = f.get("timeout").and_then(|e| {
            let d = self.duration(&e.value)?;
            if d.is_zero() {
                self.err(e.value.pos, "timeout must be greater than zero");
            }
            Some(d)
        });
        let retry = f
            .get("retry")
            .map(|e| self.retry(&e.value))
            .unwrap_or_default();
        let env = f.get("env").map(|e| self.env(&e.value)).unwrap_or_default();
        let condition = f.get("if").and_then(|e| self.condition(&e.value));
        let resources = f
            .get("resources")
            .map(|e| self.resources(&e.value))
            .unwrap_or_default();
        let services = f
            .get("services")
            .map(|e| self.services(&e.value))
            .unwrap_or_default();
        let steps = self.required(&f, "steps").and_then(|e| {
            let steps = self.steps(&e.value)?;
            if steps.is_empty() {
                self.err(e.value.pos, "`steps` must not be empty");
            }
            Some(steps)
        });
        let rollback = f
            .get("rollback")
            .and_then(|e| self.steps(&e.value))
            .unwrap_or_default();
        Some(Stage {
            name: entry.key.to_string(),
            needs,
            runs_on,
            runs_on_pos,
            image,
            timeout,
            retry,
            env,
            condition,
            steps: steps?,
            rollback,
            resources,
            services,
        })
    }

    fn retry(&mut self, node: &Node) -> RetryPolicy {
        let mut r = RetryPolicy::default();
        // Shorthand `retry: 2` = two extra attempts with the default backoff.
        if let NodeKind::Scalar(s) = &node.kind {
            if s.kind() == ScalarKind::Number {
                if let Some(max) = self.retry_max(node) {
                    r.max = max;
                }
                return r;
            }
        }
        let Some(f) = self.map(node, RETRY_KEYS) else {
            return r;
        };
        if let Some(e) = f.get("max") {
            if let Some(max) = self.retry_max(&e.value) {
                r.max = max;
            }
        }
        let backoff = f
            .get("backoff")
            .and_then(|e| Some((self.duration(&e.value)?, e.value.pos)));
        let max_backoff = f.get("max_backoff").and_then(|e| self.duration(&e.value));
        if let Some((b, _)) = backoff {
            r.backoff = b;
        }
        if let Some(m) = max_backoff {
            r.max_backoff = m;
        }
        // Only when both are written: the default max_backoff must not reject `backoff: 2m`.
        if let (Some((b, pos)), Some(m)) = (backoff, max_backoff) {
            if b > m {
                self.err(
                    pos,
                    format!(
                        "retry backoff ({}) is longer than max_backoff ({})",
                        format_duration(b),
                        format_duration(m)
                    ),
                );
            }
        }
        if let Some(e) = f.get("exit_codes") {
            let items: Vec<&Node> = match &e.value.kind {
                NodeKind::Seq(items) => items.iter().collect(),
                NodeKind::Scalar(_) if !e.value.is_null() => vec![&e.value],
                _ => {
                    self.expected(&e.value, "a sequence of exit codes");
                    Vec::new()
                }
            };
            for item in items {
                match self.uint(item) {
                    Some(c) if c <= 255 => r.exit_codes.push(c as i32),
                    Some(c) => self.err(
                        item.pos,
                        format!("invalid exit code {c}: expected 0 to 255"),
                    ),
                    None => {}
                }
            }
        }
        r
    }

    fn retry_max(&mut self, node: &Node) -> Option<u32> {
        let v = self.uint(node)?;
        if v > MAX_RETRIES {
            self.err(
                node.pos,
                format!("retry max must be at most {MAX_RETRIES}, found {v}"),
            );
            return None;
        }
        u32::try_from(v).ok()
    }

    fn condition(&mut self, node: &Node) -> Option<Expr> {
        let NodeKind::Scalar(s) = &node.kind else {
            self.expected(node, "an expression string");
            return None;
        };
        match Expr::parse(&s.value) {
            Ok(e) => Some(e),
            Err((at, msg)) => {
                let mut pos = node.pos;
                // Point inside the expression when the source maps 1:1 onto the value.
                if s.verbatim_single_line {
                    let quote = u32::from(s.style != ScalarStyle::Plain);
                    let prefix = s.value.get(..at).map_or(0, |p| p.chars().count());
                    pos.col = pos
                        .col
                        .saturating_add(quote)
                        .saturating_add(u32::try_from(prefix).unwrap_or(0));
                }
                self.err(pos, format!("invalid expression: {msg}"));
                None
            }
        }
    }

    fn resources(&mut self, node: &Node) -> Resources {
        let mut r = Resources::default();
        let Some(f) = self.map(node, RESOURCES_KEYS) else {
            return r;
        };
        if let Some(e) = f.get("cpu") {
            if let Some(s) = self.str_of(&e.value) {
                if s.parse::<f64>().is_ok_and(|v| v.is_finite() && v > 0.0) {
                    r.cpu = Some(s.to_string());
                } else {
                    self.err(
                        e.value.pos,
                        format!("invalid cpu `{s}`: expected a positive number, e.g. 0.5 or 2"),
                    );
                }
            }
        }
        if let Some(e) = f.get("memory") {
            if let Some(s) = self.str_of(&e.value) {
                if valid_memory(s) {
                    r.memory = Some(s.to_string());
                } else {
                    self.err(
                        e.value.pos,
                        format!("invalid memory `{s}`: expected e.g. 512Mi, 2Gi or 1G"),
                    );
                }
            }
        }
        r
    }

    /// `services:`, a mapping of service names to services; null = none.
    fn services(&mut self, node: &Node) -> Vec<Service> {
        let entries: &[Entry<'_>] = match &node.kind {
            NodeKind::Map(e) => e,
            _ if node.is_null() => &[],
            _ => {
                self.expected(node, "a mapping of service names to services");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if !valid_service_name(&e.key) {
                self.err(
                    e.key_pos,
                    format!(
                        "invalid service name `{}`: use lowercase letters, digits and `-` \
                         (not first or last), at most {MAX_SERVICE_NAME} characters; \
                         it is the service's host name",
                        e.key
                    ),
                );
            }
            if let Some(s) = self.service(&e.key, &e.value) {
                out.push(s);
            }
        }
        out
    }

    fn service(&mut self, name: &str, node: &Node) -> Option<Service> {
        let f = self.map(node, SERVICE_KEYS)?;
        let env = f.get("env").map(|e| self.env(&e.value)).unwrap_or_default();
        let command = f.get("command").and_then(|e| {
            // A list only: splitting a string into arguments would need shell quoting rules.
            let NodeKind::Seq(items) = &e.value.kind else {
                self.expected(&e.value, "a sequence of strings");
                return None;
            };
            if items.is_empty() {
                self.err(e.value.pos, "`command` must not be empty");
                return None;
            }
            let mut args = Vec::with_capacity(items.len());
            for item in items {
                args.push(self.string(item)?);
            }
            Some(args)
        });
        let image = self.required(&f, "image")?;
        let image = self.str_of(&image.value).and_then(|s| {
            if s.trim().is_empty() {
                self.err(image.value.pos, "`image` must not be empty");
                return None;
            }
            Some(s.to_string())
        })?;
        Some(Service {
            name: name.to_string(),
            image,
            env,
            command,
        })
    }

    fn steps(&mut self, node: &Node) -> Option<Vec<Step>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.expected(node, "a sequence of steps");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.step(item) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn step(&mut self, node: &Node) -> Option<Step> {
        // A bare string is shorthand for `run:`.
        if let NodeKind::Scalar(s) = &node.kind {
            if s.kind() == ScalarKind::Null {
                self.expected(node, "a step (a command string or a mapping with `run`)");
                return None;
            }
            return self.nonempty_run(&s.value, node.pos).map(|run| Step {
                name: None,
                run,
                env: BTreeMap::new(),
            });
        }
        let f = self.map(node, STEP_KEYS)?;
        let name = f.get("name").and_then(|e| self.string(&e.value));
        let env = f.get("env").map(|e| self.env(&e.value)).unwrap_or_default();
        let run = self.required(&f, "run")?;
        let run = self
            .str_of(&run.value)
            .and_then(|s| self.nonempty_run(s, run.value.pos))?;
        Some(Step { name, run, env })
    }

    fn nonempty_run(&mut self, s: &str, pos: Pos) -> Option<String> {
        if s.trim().is_empty() {
            self.err(pos, "`run` must not be empty");
            return None;
        }
        Some(s.to_string())
    }
}

/// Kubernetes-style quantities: digits with an optional `K|M|G|T` or `Ki|Mi|Gi|Ti` suffix.
fn valid_memory(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && matches!(
            &s[digits..],
            "" | "K" | "M" | "G" | "T" | "Ki" | "Mi" | "Gi" | "Ti"
        )
}
