//! One policy revision compiled: a regorus engine with its modules and data loaded and its
//! rules analysed (prepared) once, cloned for each evaluation so that evaluations share
//! nothing and cost no re-parse; and, per gate, the same rules compiled once more to a
//! program of regorus' bytecode VM (RVM), which evaluates them about three times faster.
//!
//! The engine is the default and the reference. The RVM (opt-in, [`Evaluator::Rvm`]) gives
//! the same deny/warn sets wherever the engine evaluates without an error, but where the
//! engine fails (a builtin given the wrong type, two values for one complete rule) regorus
//! 0.14.1's VM treats the failing rule body as undefined: a policy error that fails closed
//! with the engine says nothing on the VM. A gate whose rules the RVM compiler refuses, and
//! an evaluation the VM itself fails (other than by the time limit), go to the engine.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::{RegoVM, VmError};
use regorus::rvm::Program;
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

/// Idle VMs kept per gate program: one per evaluating thread is enough, the rest are dropped.
const VM_POOL_LIMIT: usize = 8;

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
    /// The gates whose rules the RVM compiled.
    programs: BTreeMap<GateKey, Arc<GateProgram>>,
    /// The gates left to the engine, each with the RVM compiler's reason.
    interpreted: Vec<(GateKey, String)>,
}

/// Which evaluator [`CompiledPolicy::evaluate_with`] uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Evaluator {
    /// regorus' interpreter (the engine): the default, and the reference semantics.
    #[default]
    Interpreter,
    /// The gate's RVM program where it has one, else the engine. Faster; differs from the
    /// engine on evaluations the engine fails (see the module's documentation).
    Rvm,
}

/// One gate's `deny`/`warn` rules as an RVM program, with the revision's data, and idle VMs
/// with both loaded (a VM costs allocations and a rule/data conflict check to set up).
struct GateProgram {
    program: Arc<Program>,
    data: Value,
    idle: Mutex<Vec<RegoVM>>,
    /// Evaluations the VM failed and the engine redid (a builtin error, an unsupported
    /// instruction): for tests and diagnostics.
    fallbacks: AtomicU64,
}

impl GateProgram {
    fn compile(engine: &Engine, rules: &GateRules) -> Result<GateProgram, String> {
        let entry_points: Vec<&str> = rules
            .deny
            .iter()
            .chain(&rules.warn)
            .map(String::as_str)
            .collect();
        let Some(first) = entry_points.first() else {
            return Err("no rules".into());
        };
        // On a clone: compiling for a target marks the engine, which evaluations must not see.
        let mut engine = engine.clone();
        let policy = engine
            .compile_with_entrypoint(&(*first).into())
            .map_err(|e| describe(&e))?;
        let program =
            Compiler::compile_from_policy(&policy, &entry_points).map_err(|e| describe(&e))?;
        let data = engine.get_data();
        let gate = GateProgram {
            program,
            data,
            idle: Mutex::new(Vec::new()),
            fallbacks: AtomicU64::new(0),
        };
        // A rule that is also a data path is refused here, once, not at each evaluation.
        let vm = gate.new_vm().map_err(|e| describe(&e))?;
        gate.release(vm);
        Ok(gate)
    }

    fn new_vm(&self) -> Result<RegoVM, anyhow::Error> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone())?;
        // Not strict, unlike the engine: a strict VM errs on comparing values of different
        // types, which the engine compares, and either way it treats an error in a rule body
        // as undefined. Not strict, the comparisons agree with the engine's.
        vm.set_strict_builtin_errors(false);
        // The time limit is the bound (set per rule); the VM's default of 25,000
        // instructions would stop ordinary policies.
        vm.set_max_instructions(usize::MAX);
        Ok(vm)
    }

    fn acquire(&self) -> Result<RegoVM, anyhow::Error> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(vm) => Ok(vm),
            None => self.new_vm(),
        }
    }

    fn release(&self, mut vm: RegoVM) {
        vm.set_input(Value::Null);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < VM_POOL_LIMIT {
            idle.push(vm);
        }
    }

    /// `Ok(None)`: the VM could not evaluate this input; the engine must.
    fn evaluate(
        &self,
        rules: &GateRules,
        input: &Value,
        limit: Duration,
    ) -> Result<Option<Verdict>, PolicyError> {
        let Ok(mut vm) = self.acquire() else {
            return Ok(None);
        };
        vm.set_input(input.clone());
        let started = Instant::now();
        let mut run = |paths: &[String]| -> Result<Option<Vec<String>>, PolicyError> {
            let mut messages = Vec::new();
            for path in paths {
                let remaining = limit.saturating_sub(started.elapsed());
                if remaining.is_zero() {
                    return Err(PolicyError::TimeLimit {
                        rule: path.clone(),
                        limit,
                    });
                }
                vm.set_execution_timer_config(Some(ExecutionTimerConfig {
                    limit: remaining,
                    check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL)
                        .unwrap_or(NonZeroU32::MIN),
                }));
                match vm.execute_entry_point_by_name(path) {
                    Ok(value) => messages_of(&value, path, &mut messages),
                    Err(VmError::TimeLimitExceeded { .. }) => {
                        return Err(PolicyError::TimeLimit {
                            rule: path.clone(),
                            limit,
                        })
                    }
                    Err(_) => return Ok(None),
                }
            }
            Ok(Some(finish(messages)))
        };
        let verdict = match run(&rules.deny)? {
            Some(deny) => run(&rules.warn)?.map(|warn| Verdict { deny, warn }),
            None => None,
        };
        self.release(vm);
        Ok(verdict)
    }
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
        let mut programs = BTreeMap::new();
        let mut interpreted = Vec::new();
        for (gate, gate_rules) in &rules {
            match GateProgram::compile(&engine, gate_rules) {
                Ok(program) => {
                    programs.insert(*gate, Arc::new(program));
                }
                Err(reason) => interpreted.push((*gate, reason)),
            }
        }
        Ok(CompiledPolicy {
            engine,
            revision_sha256: sources.revision_sha256(),
            rules,
            modules,
            programs,
            interpreted,
        })
    }

    /// No modules, no data: denies nothing.
    pub fn empty() -> CompiledPolicy {
        CompiledPolicy {
            engine: Engine::new(),
            revision_sha256: PolicySources::default().revision_sha256(),
            rules: BTreeMap::new(),
            modules: Vec::new(),
            programs: BTreeMap::new(),
            interpreted: Vec::new(),
        }
    }

    /// The gates (packages) whose rules run on the RVM.
    pub fn compiled_gates(&self) -> Vec<&'static str> {
        self.programs.keys().copied().collect()
    }

    /// The gates left to the interpreter because the RVM compiler refused their rules, with
    /// its reason: callers log them.
    pub fn interpreted_gates(&self) -> &[(&'static str, String)] {
        &self.interpreted
    }

    /// How many evaluations of `gate` the VM failed and the interpreter redid.
    pub fn vm_fallbacks(&self, gate: Gate) -> u64 {
        self.programs
            .get(gate.package())
            .map_or(0, |p| p.fallbacks.load(Ordering::Relaxed))
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
        self.evaluate_with(Evaluator::Interpreter, gate, input, limit)
    }

    /// [`CompiledPolicy::evaluate`] with a chosen evaluator: on the gate's RVM program
    /// ([`Evaluator::Rvm`]), or on a clone of the prepared engine where there is none or
    /// the VM failed. The differential tests compare the two.
    pub fn evaluate_with(
        &self,
        evaluator: Evaluator,
        gate: Gate,
        input: &Value,
        limit: Duration,
    ) -> Result<Verdict, PolicyError> {
        let Some(rules) = self.rules.get(gate.package()) else {
            return Ok(Verdict::default());
        };
        let started = Instant::now();
        let full = limit;
        let mut limit = limit;
        if evaluator == Evaluator::Rvm {
            if let Some(program) = self.programs.get(gate.package()) {
                if let Some(verdict) = program.evaluate(rules, input, limit)? {
                    return Ok(verdict);
                }
                program.fallbacks.fetch_add(1, Ordering::Relaxed);
                // The engine gets what is left of the limit, not a second one.
                limit = limit.saturating_sub(started.elapsed());
                if limit.is_zero() {
                    return Err(PolicyError::TimeLimit {
                        rule: gate.package().to_string(),
                        limit: full,
                    });
                }
            }
        }
        let mut engine = self.prepared_clone(limit);
        engine.set_input(input.clone());
        Ok(Verdict {
            deny: collect(&mut engine, &rules.deny, full)?,
            warn: collect(&mut engine, &rules.warn, full)?,
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
    Ok(finish(messages))
}

/// Sorted, without duplicates, capped.
fn finish(mut messages: Vec<String>) -> Vec<String> {
    messages.sort();
    messages.dedup();
    messages.truncate(MAX_MESSAGES);
    messages
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
