//! The daemon's policies: the operator's bundles, compiled once at start, and each
//! repository revision's own policies, compiled once per revision (cached by its sha256).
//! A decision is the union of both: a repository's policies can add denies and warnings,
//! never take back one of the operator's (they are evaluated as separate engines).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regorus::Value;
use serde::Deserialize;

use crate::compiled::{CompiledPolicy, Verdict};
use crate::decision::Decision;
use crate::error::PolicyError;
use crate::gate::Gate;
use crate::limits::DEFAULT_EVAL_LIMIT;
use crate::sources::{combined_revision, PolicySources};

/// Compiled repository revisions kept; beyond that the cache starts over (most commits
/// share their policies' revision, so it rarely grows).
const REPOSITORY_CACHE_LIMIT: usize = 256;

/// A revision that does not compile is cached too, with its error, so it is not compiled
/// again for every run.
type Compiled = Arc<Result<CompiledPolicy, PolicyError>>;

pub struct Policies {
    operator: CompiledPolicy,
    bundles: Vec<PathBuf>,
    limit: Duration,
    repositories: Mutex<HashMap<String, Compiled>>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("bundles", &self.bundles)
            .field("operator", &self.operator)
            .field("limit", &self.limit)
            .finish()
    }
}

impl Default for Policies {
    fn default() -> Self {
        Policies::none()
    }
}

impl Policies {
    /// No operator bundles: the operator denies nothing (a repository's own policies still
    /// apply to its runs).
    pub fn none() -> Policies {
        Policies {
            operator: CompiledPolicy::empty(),
            bundles: Vec::new(),
            limit: DEFAULT_EVAL_LIMIT,
            repositories: Mutex::new(HashMap::new()),
        }
    }

    /// Reads and compiles the operator's bundle directories. `limit` bounds each evaluation
    /// of each source set (operator, repository).
    pub fn from_bundles(bundles: &[PathBuf], limit: Duration) -> Result<Policies, PolicyError> {
        let sources = PolicySources::from_dirs(bundles, false)?;
        Policies::with_operator(sources, bundles.to_vec(), limit)
    }

    fn with_operator(
        sources: PolicySources,
        bundles: Vec<PathBuf>,
        limit: Duration,
    ) -> Result<Policies, PolicyError> {
        Ok(Policies {
            operator: CompiledPolicy::compile(&sources)?,
            bundles,
            limit,
            repositories: Mutex::new(HashMap::new()),
        })
    }

    pub fn bundles(&self) -> &[PathBuf] {
        &self.bundles
    }

    pub fn operator(&self) -> &CompiledPolicy {
        &self.operator
    }

    /// Whether evaluating `gate` can say anything: an operator bundle takes part in it, or
    /// the repository has policies of its own. When not, callers record no decision.
    pub fn applies(&self, gate: Gate, repository: &PolicySources) -> bool {
        self.operator.covers(gate) || !repository.is_empty()
    }

    /// A decision that denies because the policies could not be read or evaluated at all.
    pub fn failed(&self, error: &PolicyError, repository_revision: &str) -> Decision {
        Decision {
            deny: vec![format!("policy error: {error}")],
            warn: Vec::new(),
            revision_sha256: combined_revision(
                self.operator.revision_sha256(),
                repository_revision,
            ),
            eval_time: Duration::ZERO,
        }
    }

    /// Evaluates `gate` for `input` against the operator's bundles and the repository's
    /// policies (`repository`, as read at the commit). Errors: a repository policy that does
    /// not compile, an evaluation that fails or exceeds the time limit.
    pub fn evaluate(
        &self,
        gate: Gate,
        repository: &PolicySources,
        input: &serde_json::Value,
    ) -> Result<Decision, PolicyError> {
        let started = Instant::now();
        // Hashed once per evaluation: the key of the compiled-revision cache and the
        // decision's revision both need it, and a repository's policies can be long.
        let repository_revision = repository.revision_sha256();
        let repository_compiled = self.compiled_repository(repository, &repository_revision);
        let repository_compiled = match repository_compiled.as_ref() {
            Ok(compiled) => compiled,
            Err(error) => {
                return Err(PolicyError::Compile {
                    path: "repository policies".into(),
                    message: error.to_string(),
                })
            }
        };
        // Read from the borrowed document: no copy of it first (what `Value::from` would
        // take). Like `Value::from`, a document regorus cannot represent is undefined.
        let input = Value::deserialize(input).unwrap_or(Value::Undefined);
        let mut verdict = self.operator.evaluate(gate, &input, self.limit)?;
        let theirs: Verdict = repository_compiled.evaluate(gate, &input, self.limit)?;
        // Operator messages first: a repository cannot push them out of a capped list.
        verdict.deny.extend(theirs.deny);
        verdict.warn.extend(theirs.warn);
        dedup_keep_order(&mut verdict.deny);
        dedup_keep_order(&mut verdict.warn);
        Ok(Decision {
            deny: verdict.deny,
            warn: verdict.warn,
            revision_sha256: combined_revision(
                self.operator.revision_sha256(),
                &repository_revision,
            ),
            eval_time: started.elapsed(),
        })
    }

    /// [`Policies::evaluate`], failing closed: an error becomes a deny that says what went
    /// wrong, so a broken or runaway policy never lets a run through unseen.
    pub fn decide(
        &self,
        gate: Gate,
        repository: &PolicySources,
        input: &serde_json::Value,
    ) -> Decision {
        let started = Instant::now();
        self.evaluate(gate, repository, input)
            .unwrap_or_else(|error| Decision {
                eval_time: started.elapsed(),
                ..self.failed(&error, &repository.revision_sha256())
            })
    }

    fn compiled_repository(&self, sources: &PolicySources, revision: &str) -> Compiled {
        if let Some(hit) = self.lock().get(revision) {
            return hit.clone();
        }
        // Compiled outside the lock: other repositories' evaluations need not wait.
        let compiled: Compiled = Arc::new(CompiledPolicy::compile(sources));
        let mut cache = self.lock();
        if cache.len() >= REPOSITORY_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(revision.to_string(), compiled.clone());
        compiled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Compiled>> {
        self.repositories.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn dedup_keep_order(messages: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    messages.retain(|m| seen.insert(m.clone()));
}
