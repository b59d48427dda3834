//! Policies as the daemon uses them: operator bundles and repository policies together.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

#[test]
fn every_rule_shape_gives_its_messages() {
    // Sets, arrays, strings, `true`, objects with a `msg`, undefined and false rules; deny
    // and warn sharing a helper rule.
    let theirs = repository(&[
        (
            "a.rego",
            "package deploylite.run.a\nimport rego.v1\nbig if count(input.plan.stages) > 1\n\
             deny contains {\"msg\": \"object message\"} if big\nwarn contains \"shared helper\" if big\n",
        ),
        ("b.rego", "package deploylite.run.b\nimport rego.v1\ndeny if true\nwarn := [\"w1\", \"w2\"]\n"),
        ("c.rego", "package deploylite.run.c\nimport rego.v1\ndeny := \"a string\"\nwarn if false\n"),
        ("d.rego", "package deploylite.run[\"d-e\"]\nimport rego.v1\ndeny contains 7 if true\n"),
        ("e.rego", "package deploylite.run.e\nimport rego.v1\ndeny contains \"never\" if input.nothing\n"),
    ]);
    let input = json!({"gate": "deploylite.run", "plan": {"stages": [1, 2]}});
    let decision = Policies::none()
        .evaluate(Gate::Run, &theirs, &input)
        .expect("evaluates");
    assert_eq!(
        decision.deny,
        [
            "7",
            "a string",
            "data.deploylite.run.b.deny is true",
            "object message"
        ]
    );
    assert_eq!(decision.warn, ["shared helper", "w1", "w2"]);
}

#[test]
fn an_evaluation_error_still_names_its_rule() {
    let theirs = repository(&[(
        "conflict.rego",
        "package deploylite.run.conflict\nimport rego.v1\ndeny := \"x\" if true\ndeny := \"y\" if true\n",
    )]);
    let err = Policies::none()
        .evaluate(Gate::Run, &theirs, &run_input("ci"))
        .expect_err("conflicting values");
    assert!(matches!(err, PolicyError::Eval { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("evaluating data.deploylite.run.conflict.deny:"),
        "{err}"
    );
}

#[test]
fn the_deploy_gate_decides_a_deployment_from_its_facts() {
    use deploylite_policy::{
        deploy_input, Approval, CommitRun, DeploymentAction, DeploymentFacts, Now, Plan, Repository,
    };
    let bundles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-bundles");
    let policies = Policies::from_bundles(&[bundles], Duration::from_secs(1)).expect("compiles");
    let facts = DeploymentFacts {
        // Monday 10:00 UTC: inside production's window.
        now: Now::from_unix_ms(1_796_637_600_000),
        repository: Repository {
            name: "webapp".into(),
            default_branch: Some("main".into()),
        },
        environment: "production".into(),
        current_version: None,
        version: "0123456789abcdef0123456789abcdef01234567".into(),
        git_ref: "refs/tags/v1.0.0".into(),
        author: None,
        runs: vec![CommitRun {
            pipeline: "ci".into(),
            status: "success".into(),
        }],
        requires: vec!["ci".into()],
        action: DeploymentAction::Deploy,
        approvals: vec![Approval {
            by: "token:ops".into(),
            at: "2026-12-07T09:00:00Z".into(),
        }],
        trusted: true,
        pull_request: None,
    };
    let plan = Plan::empty("deploy", ".deploylite/pipelines/deploy.yaml");
    let none = PolicySources::default();
    let input = deploy_input(facts.clone(), plan.clone()).expect("serializes");
    let decision = policies.decide(Gate::Deploy, &none, &input);
    assert_eq!(
        decision.deny,
        ["environment production deploys only from the default branch (main); 0123456 is from tag v1.0.0"]
    );
    let from_main = DeploymentFacts {
        git_ref: "refs/heads/main".into(),
        ..facts
    };
    let input = deploy_input(from_main, plan).expect("serializes");
    let decision = policies.decide(Gate::Deploy, &none, &input);
    assert!(decision.is_quiet(), "{decision:?}");
    assert_eq!(decision.revision_sha256.len(), 64);
}
