//! `deploylite policy test`: regorus has no test runner, so this is one. Every rule named
//! `test_*` in a `*_test.rego` module is evaluated; it passes when it is `true`, fails when
//! it is false or undefined, and errs when evaluating it fails (or takes too long).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::compiled::{eval_error, rule_path, CompiledPolicy};
use crate::error::{describe, PolicyError};
use crate::sources::{is_test_file, PolicySources};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    Pass,
    /// The rule was false or undefined.
    Fail,
    Error(String),
}

#[derive(Debug, Clone)]
pub struct TestResult {
    /// `data.deploylite.run.registries_test.test_untagged_image_is_denied`
    pub rule: String,
    /// The `*_test.rego` file declaring it.
    pub file: String,
    pub outcome: TestOutcome,
    pub duration: Duration,
}

/// Loads every module, test and `data.yaml` under `dirs`, then runs every test rule, in file
/// and name order. Errors only when the policies cannot be loaded or compiled.
pub fn run_tests(dirs: &[PathBuf], limit: Duration) -> Result<Vec<TestResult>, PolicyError> {
    let sources = PolicySources::from_dirs(dirs, true)?;
    let compiled = CompiledPolicy::compile(&sources)?;
    let mut results = Vec::new();
    for module in &compiled.modules {
        let Some(file) = sources.modules.iter().find(|f| f.path == module.path) else {
            continue;
        };
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        if !is_test_file(name) {
            continue;
        }
        for test in compiled.declared_tests(&module.path, &candidate_names(&file.text))? {
            let rule = rule_path(&module.package, &test);
            if results.iter().any(|r: &TestResult| r.rule == rule) {
                continue;
            }
            let started = Instant::now();
            let mut engine = compiled.prepared_clone(limit);
            let outcome = match engine.eval_rule(rule.clone()) {
                Ok(regorus::Value::Bool(true)) => TestOutcome::Pass,
                Ok(_) => TestOutcome::Fail,
                Err(e) => TestOutcome::Error(eval_error(&rule, &e, limit).to_string()),
            };
            results.push(TestResult {
                rule,
                file: file.path.clone(),
                outcome,
                duration: started.elapsed(),
            });
        }
    }
    Ok(results)
}

impl CompiledPolicy {
    /// Which of `candidates` the module at `path` declares as rules.
    fn declared_tests(
        &self,
        path: &str,
        candidates: &[String],
    ) -> Result<Vec<String>, PolicyError> {
        let mut declared = Vec::new();
        for name in candidates {
            let is_rule = self
                .engine()
                .has_declared_rule_rooted_at(path, name)
                .map_err(|e| PolicyError::Compile {
                    path: path.to_string(),
                    message: describe(&e),
                })?;
            if is_rule {
                declared.push(name.clone());
            }
        }
        Ok(declared)
    }
}

/// Every distinct word of the file that looks like a test rule's name, in order of first
/// appearance; the engine then says which of them are rules (a name in a comment or a rule
/// body is not).
fn candidate_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if is_word(bytes[i]) {
            let start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            let word = &text[start..i];
            let after_dot = start > 0 && bytes[start - 1] == b'.';
            if word.starts_with("test_") && !after_dot && !names.iter().any(|n| n == word) {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_distinct_words_starting_with_test_and_not_references() {
        let text = "test_a if { x }\n# test_b in a comment\ntest_a if { data.p.test_c }\n";
        assert_eq!(candidate_names(text), ["test_a", "test_b"]);
    }

    fn write(dir: &std::path::Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn tests_pass_fail_and_err_and_only_declared_rules_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(
            dir.path(),
            "policy.rego",
            "package deploylite.run.sample\n\
             deny contains \"no\" if input.bad\n",
        );
        write(dir.path(), "data.yaml", "sample: {limit: 2}\n");
        write(
            dir.path(),
            "policy_test.rego",
            "package deploylite.run.sample_test\n\
             import data.deploylite.run.sample\n\
             # test_in_a_comment is not a rule\n\
             test_bad_input_is_denied if { \"no\" in sample.deny with input as {\"bad\": true} }\n\
             test_good_input_is_denied if { \"no\" in sample.deny with input as {\"bad\": false} }\n\
             test_data_is_loaded if { data.sample.limit == 2 }\n\
             test_errs if { 1 / 0 }\n",
        );
        let results = run_tests(&[dir.path().to_path_buf()], Duration::from_secs(1)).expect("runs");
        let outcome = |name: &str| {
            results
                .iter()
                .find(|r| r.rule.ends_with(name))
                .map(|r| r.outcome.clone())
        };
        assert_eq!(results.len(), 4, "{results:?}");
        assert_eq!(outcome("test_bad_input_is_denied"), Some(TestOutcome::Pass));
        assert_eq!(
            outcome("test_good_input_is_denied"),
            Some(TestOutcome::Fail)
        );
        assert_eq!(outcome("test_data_is_loaded"), Some(TestOutcome::Pass));
        assert!(
            matches!(
                outcome("test_errs"),
                Some(TestOutcome::Error(_)) | Some(TestOutcome::Fail)
            ),
            "{results:?}"
        );
        assert!(results[0]
            .rule
            .starts_with("data.deploylite.run.sample_test."));
    }
}
