//! Policies as the daemon uses them: operator bundles and repository policies together.

use std::path::Path;
use std::time::Duration;

use deploylite_policy::{Gate, Policies, PolicyError, PolicySources};
use serde_json::json;

fn bundle(dir: &Path, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).expect("mkdir");
    for (file, text) in files {
        std::fs::write(path.join(file), text).expect("write");
    }
    path
}

fn repository(files: &[(&str, &str)]) -> PolicySources {
    PolicySources::from_repository(
        files
            .iter()
            .map(|(p, t)| (format!(".deploylite/policy/{p}"), t.as_bytes().to_vec())),
    )
    .expect("valid repository policies")
}

const OPERATOR: &str = r#"package deploylite.run.operator
import rego.v1
deny contains sprintf("pipeline %s is frozen", [input.plan.pipeline]) if input.plan.pipeline in data.freeze.pipelines
warn contains "operator says hi" if input.plan.pipeline == "ci"
"#;

fn operator(dir: &Path) -> Policies {
    let dir = bundle(
        dir,
        "freeze",
        &[
            ("policy.rego", OPERATOR),
            ("data.yaml", "freeze:\n  pipelines: [release]\n"),
        ],
    );
    Policies::from_bundles(&[dir], Duration::from_secs(1)).expect("compiles")
}

fn run_input(pipeline: &str) -> serde_json::Value {
    json!({"gate": "deploylite.run", "plan": {"pipeline": pipeline}})
}

#[test]
fn without_bundles_or_repository_policies_nothing_is_denied() {
    let decision = Policies::none()
        .evaluate(Gate::Run, &PolicySources::default(), &run_input("release"))
        .expect("evaluates");
    assert!(decision.is_quiet(), "{decision:?}");
    assert_eq!(decision.revision_sha256.len(), 64);
}

#[test]
fn operator_denies_and_warnings_come_with_data_from_data_yaml() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = operator(dir.path());
    let none = PolicySources::default();
    let release = policies
        .evaluate(Gate::Run, &none, &run_input("release"))
        .expect("evaluates");
    assert_eq!(release.deny, ["pipeline release is frozen"]);
    assert!(release.warn.is_empty());
    let ci = policies
        .evaluate(Gate::Run, &none, &run_input("ci"))
        .expect("evaluates");
    assert!(!ci.denied());
    assert_eq!(ci.warn, ["operator says hi"]);
    // The deploy gate is another package: the run bundle says nothing there.
    let deploy = policies
        .evaluate(Gate::Deploy, &none, &run_input("release"))
        .expect("evaluates");
    assert!(deploy.is_quiet());
}

#[test]
fn repository_policies_add_denies_but_cannot_take_back_the_operators() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = operator(dir.path());
    // Same package as the operator, trying to empty `deny` and to add its own.
    let theirs = repository(&[
        (
            "override.rego",
            "package deploylite.run.operator\nimport rego.v1\ndefault allow := true\n",
        ),
        (
            "own.rego",
            "package deploylite.run\nimport rego.v1\ndeny contains \"no releases on Fridays\" if input.plan.pipeline == \"release\"\nwarn contains \"repo says hi\" if true\n",
        ),
    ]);
    let decision = policies
        .evaluate(Gate::Run, &theirs, &run_input("release"))
        .expect("evaluates");
    assert_eq!(
        decision.deny,
        ["pipeline release is frozen", "no releases on Fridays"],
        "operator first, then the repository's"
    );
    assert_eq!(decision.warn, ["repo says hi"]);
    let none = policies
        .evaluate(Gate::Run, &PolicySources::default(), &run_input("release"))
        .expect("evaluates");
    assert_ne!(decision.revision_sha256, none.revision_sha256);
}

#[test]
fn a_broken_repository_policy_is_an_error_and_decide_fails_closed() {
    let policies = Policies::none();
    let broken = repository(&[("bad.rego", "package deploylite.run\ndeny contains if {\n")]);
    let err = policies
        .evaluate(Gate::Run, &broken, &run_input("ci"))
        .expect_err("does not compile");
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
    assert!(err.to_string().contains("bad.rego"), "{err}");
    let decision = policies.decide(Gate::Run, &broken, &run_input("ci"));
    assert_eq!(decision.deny.len(), 1);
    assert!(
        decision.deny[0].starts_with("policy error: "),
        "{decision:?}"
    );
}

#[test]
fn a_runaway_policy_is_stopped_by_the_time_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let slow = bundle(
        dir.path(),
        "slow",
        &[(
            "policy.rego",
            "package deploylite.run.slow\nimport rego.v1\n\
             deny contains \"never\" if {\n  count([x | some a in numbers.range(1, 3000); some b in numbers.range(1, 3000); x := a * b]) < 0\n}\n",
        )],
    );
    let policies = Policies::from_bundles(&[slow], Duration::from_millis(20)).expect("compiles");
    let started = std::time::Instant::now();
    let err = policies
        .evaluate(Gate::Run, &PolicySources::default(), &run_input("ci"))
        .expect_err("too slow");
    assert!(matches!(err, PolicyError::TimeLimit { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_operator_bundle_that_does_not_compile_is_refused_by_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = bundle(
        dir.path(),
        "bad",
        &[("broken.rego", "package x\nthis is not rego\n")],
    );
    let err = Policies::from_bundles(&[bad], Duration::from_secs(1)).expect_err("refused");
    assert!(err.to_string().contains("broken.rego"), "{err}");
    let data = bundle(dir.path(), "data", &[("data.yaml", "a: [1\n")]);
    let err = Policies::from_bundles(&[data], Duration::from_secs(1)).expect_err("refused");
    assert!(err.to_string().contains("data.yaml:"), "{err}");
}
