//! One policy revision compiled: a regorus engine with its modules and data loaded and its
//! rules analysed (prepared) once, cloned for each evaluation so that evaluations share
//! nothing and cost no re-parse.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use crate::data::data_document;
use crate::error::{describe, PolicyError};
use crate::gate::Gate;
use crate::limits::{MAX_MESSAGES, MAX_MESSAGE_CHARS};
use crate::sources::PolicySources;

/// How many units of interpreter work pass between two looks at the clock: a look costs
/// little, and a runaway policy is still stopped within a fraction of a millisecond.
const TIMER_CHECK_INTERVAL: u32 = 32;

/// The messages one source set produced at one gate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub deny: Vec<String>,
    pub warn: Vec<String>,
}

/// A module as loaded: its file and its package.
#[derive(Debug, Clone)]
pub(crate) struct LoadedModule {
    pub path: String,
    pub package: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct GateRules {
    deny: Vec<String>,
    warn: Vec<String>,
}

/// A compiled policy revision. Cheap to share (`Arc`), evaluated through clones.
#[derive(Clone)]
pub struct CompiledPolicy {
    engine: Engine,
    revision_sha256: String,
    rules: BTreeMap<GateKey, GateRules>,
    pub(crate) modules: Vec<LoadedModule>,
}

/// `Gate` ordered, for a deterministic map.
type GateKey = &'static str;

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("revision_sha256", &self.revision_sha256)
            .field("modules", &self.modules.len())
            .finish()
    }
}

impl CompiledPolicy {
    /// Parses every module, merges every data document and prepares the engine. Fails on the
    /// first problem, naming its file.
    pub fn compile(sources: &PolicySources) -> Result<CompiledPolicy, PolicyError> {
        let mut engine = Engine::new();
        for file in &sources.data {
            let document = data_document(file)?;
            engine
                .add_data(Value::from(document))
                .map_err(|e| PolicyError::Data {
                    path: file.path.clone(),
                    message: format!(
                        "1:1: cannot be merged with the data loaded before it: {}",
                        describe(&e)
                    ),
                })?;
        }
        for file in &sources.modules {
            engine
                .add_policy(file.path.clone(), file.text.clone())
                .map_err(|e| PolicyError::Compile {
                    path: file.path.clone(),
                    message: describe(&e),
                })?;
        }
        let modules = engine
            .get_policy_package_components()
            .map_err(|e| compile_error(sources, &e))?
            .into_iter()
            .map(|p| LoadedModule {
                path: p.source_file,
                package: p.components,
            })
            .collect::<Vec<_>>();
        let mut rules: BTreeMap<GateKey, GateRules> = BTreeMap::new();
        for module in &modules {
            for gate in Gate::ALL.into_iter().filter(|g| g.covers(&module.package)) {
                let entry = rules.entry(gate.package()).or_default();
                for (name, list) in [("deny", &mut entry.deny), ("warn", &mut entry.warn)] {
                    let declared = engine
                        .has_declared_rule_rooted_at(&module.path, name)
                        .map_err(|e| PolicyError::Compile {
                            path: module.path.clone(),
                            message: describe(&e),
                        })?;
                    let rule = rule_path(&module.package, name);
                    if declared && !list.contains(&rule) {
                        list.push(rule);
                    }
                }
            }
        }
        for list in rules.values_mut() {
            list.deny.sort();
            list.warn.sort();
        }
        // The analysis (rule ordering, imports, loop hoisting) happens on the first
        // evaluation; doing it here makes every clone start prepared.
        engine
            .eval_query("true".to_string(), false)
            .map_err(|e| compile_error(sources, &e))?;
        Ok(CompiledPolicy {
            engine,
            revision_sha256: sources.revision_sha256(),
            rules,
            modules,
        })
    }

    /// No modules, no data: denies nothing.
    pub fn empty() -> CompiledPolicy {
        CompiledPolicy {
            engine: Engine::new(),
            revision_sha256: PolicySources::default().revision_sha256(),
            rules: BTreeMap::new(),
            modules: Vec::new(),
        }
    }

    pub fn revision_sha256(&self) -> &str {
        &self.revision_sha256
    }

    /// Whether any module takes part in `gate`.
    pub fn covers(&self, gate: Gate) -> bool {
        self.rules
            .get(gate.package())
            .is_some_and(|r| !r.deny.is_empty() || !r.warn.is_empty())
    }

    /// Evaluates `gate` on a clone of the prepared engine, within `limit` of wall time.
    pub fn evaluate(
        &self,
        gate: Gate,
        input: &Value,
        limit: Duration,
    ) -> Result<Verdict, PolicyError> {
        let Some(rules) = self.rules.get(gate.package()) else {
            return Ok(Verdict::default());
        };
        let mut engine = self.prepared_clone(limit);
        engine.set_input(input.clone());
        Ok(Verdict {
            deny: collect(&mut engine, &rules.deny, limit)?,
            warn: collect(&mut engine, &rules.warn, limit)?,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A clone of the prepared engine with a time limit, for tests and evaluations.
    pub(crate) fn prepared_clone(&self, limit: Duration) -> Engine {
        let mut engine = self.engine.clone();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
        });
        engine
    }
}

/// A problem found preparing the modules together (a conflict between rules, a recursion):
/// regorus names the file in its message; the revision is named in case it does not.
fn compile_error(sources: &PolicySources, error: &impl std::fmt::Display) -> PolicyError {
    let path = match sources.modules.as_slice() {
        [only] => only.path.clone(),
        _ => format!("{} policy modules", sources.modules.len()),
    };
    PolicyError::Compile {
        path,
        message: describe(error),
    }
}

/// `data.deploylite.run.registries.deny`; components that are not identifiers are quoted.
pub(crate) fn rule_path(package: &[String], rule: &str) -> String {
    let mut path = String::from("data");
    for component in package.iter().map(String::as_str).chain([rule]) {
        let identifier = component
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && component
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if identifier {
            path.push('.');
            path.push_str(component);
        } else {
            path.push_str(&format!("[{}]", serde_json::Value::from(component)));
        }
    }
    path
}

/// Every message of the rules at `paths`: a set or array of messages (strings, or objects
/// with a `msg`), or `true` for a rule that only says yes.
fn collect(
    engine: &mut Engine,
    paths: &[String],
    limit: Duration,
) -> Result<Vec<String>, PolicyError> {
    let mut messages = Vec::new();
    for path in paths {
        let value = engine
            .eval_rule(path.clone())
            .map_err(|e| eval_error(path, &e, limit))?;
        messages_of(&value, path, &mut messages);
    }
    messages.sort();
    messages.dedup();
    messages.truncate(MAX_MESSAGES);
    Ok(messages)
}

/// A time-limit error is told apart from the rest: callers report it differently.
pub(crate) fn eval_error(rule: &str, error: &anyhow::Error, limit: Duration) -> PolicyError {
    let timed_out = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<regorus::LimitError>(),
            Some(regorus::LimitError::TimeLimitExceeded { .. })
        )
    });
    if timed_out {
        PolicyError::TimeLimit {
            rule: rule.to_string(),
            limit,
        }
    } else {
        PolicyError::Eval {
            rule: rule.to_string(),
            message: describe(error),
        }
    }
}

fn messages_of(value: &Value, rule: &str, out: &mut Vec<String>) {
    // Read from regorus' values directly, not through a `serde_json::Value` copy of each
    // rule's value. A set is what `deny contains msg` makes; an array, a string or `true`
    // are what other rule shapes can give. Anything else says nothing.
    match value {
        Value::Set(items) => out.extend(items.iter().map(message)),
        Value::Array(items) => out.extend(items.iter().map(message)),
        Value::Bool(true) => out.push(format!("{rule} is true")),
        Value::String(_) => out.push(message(value)),
        _ => {}
    }
}

/// A message: a string, the `msg` string of an object, else the item as JSON; cut at
/// [`MAX_MESSAGE_CHARS`].
fn message(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.to_string(),
        Value::Object(fields) => match fields.get(&Value::from("msg")) {
            Some(Value::String(s)) => s.to_string(),
            _ => as_json(value),
        },
        other => as_json(other),
    };
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Through `serde_json::Value`, as messages were always written (sorted keys, sets as arrays).
fn as_json(value: &Value) -> String {
    serde_json::to_value(value)
        .map(|v| v.to_string())
        .unwrap_or_default()
}
