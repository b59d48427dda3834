//! Environment files: `.deploylite/environments/*.yaml`, one environment per file. An
//! environment names the pipeline that deploys it, the version it follows and the gates a
//! version passes first; the reconciler turns that into deployments.
//!
//! Parsed by the same walker as pipeline files (`parse.rs`'s `Cx`), so both kinds of file
//! share the key-spelling rule, type errors, did-you-mean, caps and durations. The grammar is
//! documented in `docs/environments.md` and in `schema/environment.schema.json`; a unit test
//! in `schema.rs` keeps the key lists below and the schema in step.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::format_duration;
use crate::glob::Glob;
use crate::limits::{
    MAX_CYCLES, MAX_ENVIRONMENTS, MAX_ENVIRONMENT_LIST, MAX_ENVIRONMENT_NAME, MAX_FILE_BYTES,
};
use crate::model::Pos;
use crate::parse::{capped, name_problem, one_of, shown, Cx, Fields};
use crate::suggest::Suggester;
use crate::tree::Node;
use crate::validate::find_cycles;
use crate::yaml;
use crate::Diagnostic;

pub(crate) const ENVIRONMENT_KEYS: &[&str] = &[
    "name",
    "deploy",
    "follows",
    "requires",
    "promote_from",
    "approval",
    "verify",
    "check",
    "on_drift",
    "rollback",
];
pub(crate) const FOLLOWS_KEYS: &[&str] = &["branch", "tag"];
pub(crate) const APPROVAL_KEYS: &[&str] = &["required"];
pub(crate) const CHECK_KEYS: &[&str] = &["pipeline", "interval"];
pub(crate) const ON_DRIFT_VALUES: &[&str] = &["redeploy", "report"];
pub(crate) const ROLLBACK_VALUES: &[&str] = &["auto", "manual"];

/// Every mapping of the grammar with its keys, named as in the schema's `definitions`.
#[cfg(test)]
pub(crate) const ALL_KEY_LISTS: &[(&str, &[&str])] = &[
    ("environment", ENVIRONMENT_KEYS),
    ("follows", FOLLOWS_KEYS),
    ("approval", APPROVAL_KEYS),
    ("check", CHECK_KEYS),
];

/// Approvals one deployment may ask for: more people than this is a process, not a gate.
pub const MAX_APPROVALS: u32 = 20;
/// The shortest drift-check interval: every check is a pipeline run.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The longest drift-check interval: a week.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(7 * 86_400);
/// The interval of a `check` that does not give one.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Bytes of a branch name (git allows more, but no forge shows such a name whole).
const MAX_BRANCH: usize = 255;
/// An unknown pipeline with no close match is shown with the list of pipelines when there are
/// at most this many: a longer list would bury the message.
const MAX_LISTED_PIPELINES: usize = 20;

/// One environment: the content of one `.deploylite/environments/*.yaml` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// A safe identifier (`[a-z0-9][a-z0-9_-]*`, at most 63 characters): it is a URL segment
    /// (`/api/v1/environments/{repo}/{env}`) and the value of `DEPLOYLITE_ENVIRONMENT`.
    pub name: String,
    /// Where `name`'s value was written (for duplicate-name diagnostics across files).
    #[serde(default)]
    pub name_pos: Pos,
    /// The pipeline that converges the environment.
    pub deploy: String,
    /// Where desired versions come from.
    pub follows: Follows,
    /// Pipelines that must have succeeded on a version before it deploys.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Environments a version must already be deployed (and verified) in.
    #[serde(default)]
    pub promote_from: Vec<String>,
    #[serde(default)]
    pub approval: Option<Approval>,
    /// A pipeline run after the deploy; its failure fails the deployment.
    #[serde(default)]
    pub verify: Option<String>,
    #[serde(default)]
    pub check: Option<DriftCheck>,
    #[serde(default)]
    pub on_drift: OnDrift,
    #[serde(default)]
    pub rollback: RollbackMode,
    /// Where the names of other files' things were written, for [`check_environment_set`].
    #[serde(default)]
    pub spans: EnvironmentSpans,
    /// What `deploylite validate` warns about (deprecated key spellings...), in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Diagnostic>,
}

/// Positions of the values that name pipelines and environments; unknown (line 0) for an
/// environment that was not parsed from a file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvironmentSpans {
    #[serde(default)]
    pub deploy: Pos,
    #[serde(default)]
    pub verify: Pos,
    #[serde(default)]
    pub check_pipeline: Pos,
    /// One per `requires` entry, in order.
    #[serde(default)]
    pub requires: Vec<Pos>,
    /// One per `promote_from` entry, in order.
    #[serde(default)]
    pub promote_from: Vec<Pos>,
}

/// The desired version: the newest commit of a branch, or the highest semver tag matching a
/// pattern, that passes the environment's gates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Follows {
    Branch(String),
    /// A tag pattern (GitHub Actions filter syntax), e.g. `v*`.
    Tag(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// People who must approve each deployment, 1 to [`MAX_APPROVALS`].
    pub required: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftCheck {
    /// The pipeline whose exit status says: 0 in sync, 2 drifted, anything else unknown.
    pub pipeline: String,
    #[serde(with = "crate::model::duration_ms")]
    pub interval: Duration,
}

/// What a drift check that finds drift leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    Redeploy,
    #[default]
    Report,
}

/// What a failed deployment leads to (its failed stage's `rollback` steps run either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackMode {
    /// Redeploy the last succeeded version as a `rollback` action.
    Auto,
    #[default]
    Manual,
}

impl Environment {
    /// The pipelines that run for this environment's deployments: `deploy`, then `verify` and
    /// `check.pipeline` when given (not `requires`, which are ordinary pipelines it waits for).
    pub fn pipelines(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.deploy.as_str())
            .chain(self.verify.as_deref())
            .chain(self.check.as_ref().map(|c| c.pipeline.as_str()))
    }
}

/// Why `s` cannot be an environment name, if it cannot.
fn environment_name_problem(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'));
    if !first_ok || !rest_ok {
        return Some(
            "use lowercase letters, digits, `_` and `-`, starting with a letter or digit; \
             the name is part of URLs and environment variables"
                .into(),
        );
    }
    if b.len() > MAX_ENVIRONMENT_NAME {
        return Some(format!("at most {MAX_ENVIRONMENT_NAME} characters"));
    }
    None
}

/// Why `s` cannot be a branch name, if it cannot: git's `check-ref-format` rules, and no
/// patterns (an environment follows one branch).
fn branch_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("must not be empty");
    }
    if s.len() > MAX_BRANCH {
        return Some("at most 255 bytes");
    }
    if s.bytes().any(|b| matches!(b, b'*' | b'?' | b'[' | b'!')) {
        return Some("an environment follows one branch: patterns are not supported");
    }
    if s.bytes()
        .any(|b| b.is_ascii_control() || matches!(b, b' ' | b'~' | b'^' | b':' | b'\\'))
        || s.contains("..")
        || s.contains("@{")
        || s.contains("//")
        || s.starts_with(['-', '/', '.'])
        || s.ends_with(['/', '.'])
        || s.ends_with(".lock")
    {
        return Some("not a valid git branch name");
    }
    None
}

/// The environment or its errors, and the file's warnings.
pub(crate) fn parse(
    file: &str,
    src: &str,
) -> (Result<Environment, Vec<Diagnostic>>, Vec<Diagnostic>) {
    let mut cx = Cx::new(file, false);
    if src.len() > MAX_FILE_BYTES {
        cx.err(
            Pos { line: 1, col: 1 },
            format!(
                "file too large: {} bytes; an environment file may be at most {} MiB ({MAX_FILE_BYTES} bytes)",
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
    let env = root.and_then(|root| environment(&mut cx, &root));
    let warnings = capped(std::mem::take(&mut cx.warnings), "warnings");
    match env {
        Some(mut e) if cx.diags.is_empty() => {
            e.warnings.clone_from(&warnings);
            (Ok(e), warnings)
        }
        _ => {
            if cx.diags.is_empty() {
                // Not expected (whatever stops the walker reports why), but an invalid file
                // must never come back without a reason.
                cx.err(Pos { line: 1, col: 1 }, "not a valid environment file");
            }
            (Err(capped(cx.diags, "problems")), warnings)
        }
    }
}

fn environment(cx: &mut Cx<'_>, root: &Node<'_>) -> Option<Environment> {
    let f = cx.map(root, ENVIRONMENT_KEYS)?;
    let name = cx.required(&f, "name").and_then(|e| {
        let n = cx.string(&e.value)?;
        if let Some(why) = environment_name_problem(&n) {
            cx.err(
                e.value.pos,
                format!("invalid environment name `{}`: {why}", shown(&n)),
            );
            return None;
        }
        Some((n, e.value.pos))
    });
    let deploy = cx
        .required(&f, "deploy")
        .and_then(|e| pipeline_name(cx, &e.value, "deploy"));
    let follows = cx
        .required(&f, "follows")
        .and_then(|e| follows(cx, &e.value));
    let requires = list(cx, &f, "requires", name_problem);
    let promote_from = list(cx, &f, "promote_from", environment_name_problem);
    if let (Some((n, _)), Some(entries)) = (&name, &promote_from) {
        if let Some((_, pos)) = entries.iter().find(|(p, _)| p == n) {
            cx.err(
                *pos,
                format!("environment `{n}` cannot promote from itself"),
            );
        }
    }
    let approval = f.get("approval").and_then(|e| approval(cx, &e.value));
    let verify = f
        .get("verify")
        .and_then(|e| pipeline_name(cx, &e.value, "verify"));
    let check = f.get("check").and_then(|e| check(cx, &e.value));
    let on_drift = f.get("on_drift").and_then(|e| {
        let v = choice(cx, &e.value, "on_drift", ON_DRIFT_VALUES)?;
        if f.get("check").is_none() {
            cx.warn(
                e.key_pos,
                "`on_drift` has no effect without `check`: nothing looks for drift",
            );
        }
        Some(if v == "redeploy" {
            OnDrift::Redeploy
        } else {
            OnDrift::Report
        })
    });
    let rollback = f.get("rollback").and_then(|e| {
        let v = choice(cx, &e.value, "rollback", ROLLBACK_VALUES)?;
        Some(if v == "auto" {
            RollbackMode::Auto
        } else {
            RollbackMode::Manual
        })
    });
    // Every field was looked at (and every problem reported) before giving up on any.
    let (name, name_pos) = name?;
    let (deploy, deploy_pos) = deploy?;
    let (requires, requires_pos) = requires?.into_iter().unzip();
    let (promote_from, promote_from_pos) = promote_from?.into_iter().unzip();
    let (verify, verify_pos) = match verify {
        Some((v, pos)) => (Some(v), pos),
        None => (None, Pos::default()),
    };
    let (check, check_pipeline_pos) = match check {
        Some((c, pos)) => (Some(c), pos),
        None => (None, Pos::default()),
    };
    Some(Environment {
        name,
        name_pos,
        deploy,
        follows: follows?,
        requires,
        promote_from,
        approval,
        verify,
        check,
        on_drift: on_drift.unwrap_or_default(),
        rollback: rollback.unwrap_or_default(),
        spans: EnvironmentSpans {
            deploy: deploy_pos,
            verify: verify_pos,
            check_pipeline: check_pipeline_pos,
            requires: requires_pos,
            promote_from: promote_from_pos,
        },
        warnings: Vec::new(),
    })
}

/// A value naming a pipeline, with its position. Whether the pipeline exists is
/// [`check_environment_set`]'s question: it needs the other files.
fn pipeline_name(cx: &mut Cx<'_>, node: &Node<'_>, key: &str) -> Option<(String, Pos)> {
    let s = cx.string(node)?;
    if let Some(why) = name_problem(&s) {
        cx.err(
            node.pos,
            format!("`{key}`: invalid pipeline name `{}`: {why}", shown(&s)),
        );
        return None;
    }
    Some((s, node.pos))
}

/// `requires` or `promote_from`: a name or a list of names, at most [`MAX_ENVIRONMENT_LIST`];
/// `Some(empty)` when absent, `None` when any entry is wrong. Repeated names are warned about
/// and kept once.
fn list(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    key: &str,
    problem: fn(&str) -> Option<String>,
) -> Option<Vec<(String, Pos)>> {
    let Some(e) = f.get(key) else {
        return Some(Vec::new());
    };
    if e.value.is_null() {
        return Some(Vec::new());
    }
    let items = cx.string_list(&e.value)?;
    if items.len() > MAX_ENVIRONMENT_LIST {
        cx.err(
            e.value.pos,
            format!(
                "too many entries in `{key}`: {}; at most {MAX_ENVIRONMENT_LIST}",
                items.len()
            ),
        );
        return None;
    }
    let what = if key == "requires" {
        "pipeline"
    } else {
        "environment"
    };
    let mut out: Vec<(String, Pos)> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (s, pos) in items {
        if let Some(why) = problem(s) {
            cx.err(
                pos,
                format!("`{key}`: invalid {what} name `{}`: {why}", shown(s)),
            );
            ok = false;
        } else if let Some((_, first)) = out.iter().find(|(n, _)| n == s) {
            cx.warn(
                pos,
                format!(
                    "`{s}` is listed twice in `{key}` (first at {}:{})",
                    first.line, first.col
                ),
            );
        } else {
            out.push((s.to_string(), pos));
        }
    }
    ok.then_some(out)
}

fn follows(cx: &mut Cx<'_>, node: &Node<'_>) -> Option<Follows> {
    let f = cx.map(node, FOLLOWS_KEYS)?;
    match (f.get("branch"), f.get("tag")) {
        (Some(_), Some(tag)) => {
            cx.err(
                tag.key_pos,
                "`follows` takes either `branch` or `tag`, not both",
            );
            None
        }
        (None, None) => {
            cx.err(
                f.pos,
                "`follows` needs `branch` or `tag`, e.g. `follows: { branch: main }` or `follows: { tag: \"v*\" }`",
            );
            None
        }
        (Some(b), None) => {
            let s = cx.string(&b.value)?;
            if let Some(why) = branch_problem(&s) {
                cx.err(
                    b.value.pos,
                    format!("invalid branch `{}`: {why}", shown(&s)),
                );
                return None;
            }
            Some(Follows::Branch(s))
        }
        (None, Some(t)) => {
            let s = cx.string(&t.value)?;
            if s.is_empty() {
                cx.err(t.value.pos, "`tag` must not be empty; e.g. `\"v*\"`");
                return None;
            }
            match Glob::new(&s) {
                Err(e) => {
                    cx.err(t.value.pos, e.to_string());
                    None
                }
                Ok(g) if g.is_negated() => {
                    cx.err(
                        t.value.pos,
                        format!(
                            "invalid tag pattern `{}`: a `!` pattern alone matches no tag; name the tags to follow, e.g. `\"v*\"`",
                            shown(&s)
                        ),
                    );
                    None
                }
                Ok(_) => Some(Follows::Tag(s)),
            }
        }
    }
}

fn approval(cx: &mut Cx<'_>, node: &Node<'_>) -> Option<Approval> {
    let f = cx.map(node, APPROVAL_KEYS)?;
    let e = cx.required(&f, "required")?;
    let n = cx.uint(&e.value)?;
    match u32::try_from(n) {
        Ok(required) if (1..=MAX_APPROVALS).contains(&required) => Some(Approval { required }),
        _ => {
            cx.err(
                e.value.pos,
                format!("`required` approvals must be 1 to {MAX_APPROVALS}, found {n}"),
            );
            None
        }
    }
}

fn check(cx: &mut Cx<'_>, node: &Node<'_>) -> Option<(DriftCheck, Pos)> {
    let f = cx.map(node, CHECK_KEYS)?;
    let pipeline = cx
        .required(&f, "pipeline")
        .and_then(|e| pipeline_name(cx, &e.value, "check.pipeline"));
    let interval = match f.get("interval") {
        None => Some(DEFAULT_CHECK_INTERVAL),
        Some(e) => cx.duration(&e.value).and_then(|d| {
            let bound = if d < MIN_CHECK_INTERVAL {
                Some(("at least", MIN_CHECK_INTERVAL))
            } else if d > MAX_CHECK_INTERVAL {
                Some(("at most", MAX_CHECK_INTERVAL))
            } else {
                None
            };
            if let Some((how, limit)) = bound {
                cx.err(
                    e.value.pos,
                    format!(
                        "check interval must be {how} {}, found {}",
                        format_duration(limit),
                        format_duration(d)
                    ),
                );
                return None;
            }
            Some(d)
        }),
    };
    let (pipeline, pos) = pipeline?;
    Some((
        DriftCheck {
            pipeline,
            interval: interval?,
        },
        pos,
    ))
}

/// One of `values`, with did-you-mean for anything else.
fn choice<'v>(cx: &mut Cx<'_>, node: &Node<'_>, key: &str, values: &[&'v str]) -> Option<&'v str> {
    let s = cx.str_of(node)?;
    if let Some(v) = values.iter().find(|v| **v == s) {
        return Some(v);
    }
    let hint = cx.suggester.did_you_mean(s, values.iter().copied());
    let msg = if hint.is_empty() {
        format!(
            "invalid {key} `{}`; expected one of {}",
            shown(s),
            one_of(values)
        )
    } else {
        format!("invalid {key} `{}`{hint}", shown(s))
    };
    cx.err(node.pos, msg);
    None
}

/// Problems across one repository's environment files; see [`crate::check_environment_set`].
pub(crate) fn check_set(envs: &[(&str, &Environment)], pipelines: &[&str]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let at = |file: &str, pos: Pos, message: String| Diagnostic {
        file: file.to_string(),
        line: pos.line,
        col: pos.col,
        message,
    };
    let envs = if envs.len() > MAX_ENVIRONMENTS {
        let (file, _) = envs[MAX_ENVIRONMENTS];
        out.push(at(
            file,
            Pos { line: 1, col: 1 },
            format!(
                "too many environment files: {}; a repository may have at most {MAX_ENVIRONMENTS}, \
                 this file and those after it are ignored",
                envs.len()
            ),
        ));
        &envs[..MAX_ENVIRONMENTS]
    } else {
        envs
    };
    let mut suggester = Suggester::default();

    // Names: the first file to define one owns it.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(envs.len());
    for (i, (file, e)) in envs.iter().enumerate() {
        match index.get(e.name.as_str()) {
            Some(&j) => {
                let (first_file, first) = envs[j];
                out.push(at(
                    file,
                    e.name_pos,
                    format!(
                        "duplicate environment name `{}` (first defined at {first_file}:{}:{})",
                        e.name, first.name_pos.line, first.name_pos.col
                    ),
                ));
            }
            None => {
                index.insert(e.name.as_str(), i);
            }
        }
    }

    // Pipelines.
    let known: HashSet<&str> = pipelines.iter().copied().collect();
    let pos_at = |v: &[Pos], k: usize| v.get(k).copied().unwrap_or_default();
    for (file, e) in envs {
        let mut named: Vec<(&str, &str, Pos)> = vec![("deploy", e.deploy.as_str(), e.spans.deploy)];
        named.extend(
            e.requires
                .iter()
                .enumerate()
                .map(|(k, r)| ("requires", r.as_str(), pos_at(&e.spans.requires, k))),
        );
        if let Some(v) = &e.verify {
            named.push(("verify", v, e.spans.verify));
        }
        if let Some(c) = &e.check {
            named.push(("check.pipeline", &c.pipeline, e.spans.check_pipeline));
        }
        for (key, p, pos) in named {
            if known.contains(p) {
                continue;
            }
            let mut hint = suggester.did_you_mean(p, pipelines.iter().copied());
            if hint.is_empty() {
                hint = if pipelines.is_empty() {
                    "; the repository has no valid pipeline".to_string()
                } else if pipelines.len() <= MAX_LISTED_PIPELINES {
                    format!("; pipelines are {}", one_of(pipelines))
                } else {
                    String::new()
                };
            }
            out.push(at(
                file,
                pos,
                format!(
                    "`{key}` names unknown pipeline `{}` (pipelines are named by the `name` of a .deploylite/pipelines/*.yaml file){hint}",
                    shown(p)
                ),
            ));
        }
    }

    // Promotion: edges in the direction versions flow, from the environment promoted from to
    // the one promoting.
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); envs.len()];
    for (i, (file, e)) in envs.iter().enumerate() {
        if index.get(e.name.as_str()) != Some(&i) {
            continue; // a duplicate: already reported, and its edges would be the first's
        }
        for (k, from) in e.promote_from.iter().enumerate() {
            let pos = pos_at(&e.spans.promote_from, k);
            match index.get(from.as_str()) {
                Some(&j) if j == i => out.push(at(
                    file,
                    pos,
                    format!("environment `{}` cannot promote from itself", e.name),
                )),
                Some(&j) => {
                    if !edges[j].contains(&i) {
                        edges[j].push(i);
                    }
                }
                None => {
                    let hint =
                        suggester.did_you_mean(from, envs.iter().map(|(_, e)| e.name.as_str()));
                    out.push(at(
                        file,
                        pos,
                        format!(
                            "`promote_from` names unknown environment `{}`{hint}",
                            shown(from)
                        ),
                    ));
                }
            }
        }
    }
    for cycle in find_cycles(&edges, MAX_CYCLES) {
        let (Some(&first), Some(&last)) = (cycle.first(), cycle.last()) else {
            continue;
        };
        let (file, e) = envs[first];
        // Reported where the cycle closes: the first environment's `promote_from` entry
        // naming the last one.
        let closing = envs[last].1.name.as_str();
        let pos = e
            .promote_from
            .iter()
            .position(|p| p == closing)
            .map_or(e.name_pos, |k| pos_at(&e.spans.promote_from, k));
        let mut names: Vec<&str> = cycle.iter().map(|&i| envs[i].1.name.as_str()).collect();
        names.push(e.name.as_str());
        out.push(at(
            file,
            pos,
            format!(
                "promote_from cycle: {} (no version could ever reach them)",
                names.join(" -> ")
            ),
        ));
    }
    out
}
