//! The RVM path against the interpreter: every shipped bundle (`policy-bundles/`, all five
//! enabled, and each alone) evaluated on a matrix of run and deploy inputs, ordinary and
//! malformed, through both evaluators. Wherever the interpreter evaluates without an error,
//! the deny/warn sets must be identical. Where it fails (fails closed), regorus 0.14.1's VM
//! treats the failing rule body as undefined: those inputs are counted, and the known
//! difference is pinned by a test of its own.

use std::path::PathBuf;
use std::time::Duration;

use deploylite_policy::{CompiledPolicy, Evaluator, Gate, Policies};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(5);

fn bundles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy-bundles")
}

fn bundle_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(bundles_dir())
        .expect("policy-bundles/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn base() -> Value {
    json!({
        "gate": "deploylite.run",
        "now": {"time": "2026-12-07T18:48:09Z", "unix": 1796668089, "weekday": "mon", "hour": 18, "minute": 48},
        "repository": {"name": "webapp", "default_branch": "main"},
        "commit": {"sha": "0123456789abcdef0123456789abcdef01234567", "ref": "refs/heads/main",
                   "branch": "main", "tag": null, "author": {"name": "Ada", "email": "ada@example.com"}, "runs": []},
        "trigger": {"event": "push", "trusted": true, "pull_request": null},
        "plan": {"pipeline": "ci", "file": ".deploylite/pipelines/ci.yaml", "stages": [],
                 "images": [], "runner_labels": [], "secrets": []},
        "environment": null,
        "approvals": []
    })
}

/// Each variation is a JSON pointer and a value; inputs are the base with one or two of
/// them applied, at both gates.
fn variations() -> Vec<(&'static str, Value)> {
    vec![
        ("/plan/images", json!(["alpine"])),
        (
            "/plan/images",
            json!(["alpine:3.20", "docker.io/library/rust:1.85"]),
        ),
        (
            "/plan/images",
            json!(["ghcr.io/deploylite/kaniko:1.2", "postgres:17", "rust:1.85"]),
        ),
        ("/plan/images", json!(["quay.io/evil/miner:1", "alpine:3"])),
        (
            "/plan/images",
            json!(["someone/alpine:3", "ghcr.io/deploylite-evil/app:1"]),
        ),
        (
            "/plan/images",
            json!([
                "localhost/tool:1",
                "registry:5000/team/tool",
                "ghcr.io/deploylite/app:latest"
            ]),
        ),
        (
            "/plan/images",
            json!(["docker.io/library/x@sha256:0123", "a/b/c:latest", "x:"]),
        ),
        ("/plan/images", json!([1, null, "alpine"])),
        ("/plan/images", json!("alpine")),
        ("/plan/images", Value::Null),
        ("/trigger/trusted", json!(false)),
        ("/trigger/trusted", Value::Null),
        (
            "/trigger/pull_request",
            json!({"number": 7, "head_repo": "fork/webapp"}),
        ),
        (
            "/trigger/pull_request",
            json!({"number": "7", "head_repo": "fork/webapp"}),
        ),
        ("/commit/branch", json!("feature/x")),
        ("/commit/branch", Value::Null),
        ("/commit/tag", json!("v1.2.0")),
        ("/commit/sha", json!("abc")),
        ("/commit/sha", json!(42)),
        (
            "/commit/runs",
            json!([{"pipeline": "ci", "status": "success"}]),
        ),
        (
            "/commit/runs",
            json!([{"pipeline": "ci", "status": "failed"}, {"pipeline": "lint", "status": "success"}]),
        ),
        ("/repository/default_branch", Value::Null),
        (
            "/environment",
            json!({"name": "production", "requires": ["ci"], "action": "deploy"}),
        ),
        (
            "/environment",
            json!({"name": "staging", "requires": ["ci", "lint"], "action": "rollback"}),
        ),
        (
            "/environment",
            json!({"name": "production", "requires": []}),
        ),
        ("/environment", json!({"name": 3})),
        ("/now", json!({"weekday": "tue", "hour": 9, "minute": 0})),
        ("/now", json!({"weekday": "thu", "hour": 15, "minute": 59})),
        ("/now", json!({"weekday": "wed", "hour": 16, "minute": 0})),
        ("/now", json!({"weekday": "sun", "hour": 3, "minute": 0})),
        ("/now", json!({"weekday": "mon", "hour": "9", "minute": 0})),
        ("/now", Value::Null),
        ("/plan", Value::Null),
    ]
}

fn with(mut input: Value, (pointer, value): &(&str, Value)) -> Value {
    if let Some(slot) = input.pointer_mut(pointer) {
        *slot = value.clone();
    }
    input
}

fn inputs() -> Vec<Value> {
    let variations = variations();
    let mut inputs = vec![base()];
    for (i, a) in variations.iter().enumerate() {
        inputs.push(with(base(), a));
        for b in &variations[i + 1..] {
            if a.0 != b.0 {
                inputs.push(with(with(base(), a), b));
            }
        }
    }
    inputs.push(json!(null));
    inputs.push(json!({}));
    inputs.push(json!([1, 2]));
    inputs
}

/// Compares both evaluators on every input at both gates; returns how many comparisons, and
/// on how many the interpreter failed.
fn compare(name: &str, compiled: &CompiledPolicy) -> (usize, usize) {
    let mut compared = 0;
    let mut refused = 0;
    let mut differ: Vec<String> = Vec::new();
    for input in inputs() {
        let value = regorus::Value::from(input.clone());
        for gate in Gate::ALL {
            let vm = compiled.evaluate_with(Evaluator::Rvm, gate, &value, LIMIT);
            let engine = compiled.evaluate_with(Evaluator::Interpreter, gate, &value, LIMIT);
            match (&vm, &engine) {
                (Ok(a), Ok(b)) if a == b => {}
                (Ok(a), Ok(b)) => {
                    if differ.is_empty() {
                        eprintln!(
                            "{name}, {gate}, input {input}:\n  RVM {a:?}\n  interpreter {b:?}"
                        );
                    }
                    differ.push(format!("{gate}"));
                }
                (_, Err(_)) => refused += 1,
                (Err(_), Ok(_)) => {
                    panic!("{name}, {gate}, input {input}: RVM {vm:?}, interpreter {engine:?}")
                }
            }
            compared += 1;
        }
    }
    eprintln!(
        "{name}: {compared} compared, {} differ, {refused} refused by the interpreter",
        differ.len()
    );
    assert!(
        std::env::var_os("DIFF_ALL").is_some() || differ.is_empty(),
        "{name}: the RVM and the interpreter differ on {} of {compared} evaluations",
        differ.len()
    );
    (compared, refused)
}

// Fails with regorus 0.14.1: of 988 evaluations of all five bundles, 85 differ (a required
// pipeline without any run is not denied, see the test below; deployment-windows alone
// denies environments it has no windows for), and on 72 the interpreter fails closed where
// the VM answers. `DIFF_ALL=1 cargo test -p deploylite-policy --test rvm_differential --
// --ignored --nocapture` prints every bundle's counts.
#[test]
#[ignore = "regorus 0.14.1's RVM decides the shipped bundles differently (docs/performance.md)"]
fn the_rvm_and_the_interpreter_decide_every_shipped_bundle_alike() {
    let all = Policies::from_bundles(&[bundles_dir()], LIMIT).expect("bundles compile");
    let compiled = all.operator();
    // Both gates run on the RVM: otherwise this compares the interpreter with itself.
    assert_eq!(
        compiled.interpreted_gates(),
        &[] as &[(&str, String)],
        "gates the RVM did not compile"
    );
    assert_eq!(
        compiled.compiled_gates(),
        vec!["deploylite.deploy", "deploylite.run"]
    );
    let (compared, refused) = compare("all bundles", compiled);
    assert!(compared > 900, "{compared}");
    assert!(refused < compared / 10, "{refused} of {compared}");
    // The matrix holds inputs the VM refuses (mixed-type comparisons, builtins given the
    // wrong types) and the interpreter answers: those went through the fallback.
    let fallbacks: u64 = Gate::ALL
        .into_iter()
        .map(|g| compiled.vm_fallbacks(g))
        .sum();
    eprintln!(
        "{compared} comparisons, {refused} refused by the interpreter, {fallbacks} VM fallbacks"
    );
    for dir in bundle_dirs() {
        let one = Policies::from_bundles(std::slice::from_ref(&dir), LIMIT).expect("compiles");
        compare(&dir.display().to_string(), one.operator());
    }
}

#[test]
fn a_gate_the_rvm_cannot_compile_stays_on_the_interpreter() {
    // `with` inside a rule body is something this version's RVM compiler refuses (checked
    // below): the gate is recorded and evaluated by the engine, with the same answer.
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = dir.path().join("with");
    std::fs::create_dir_all(&bundle).expect("mkdir");
    std::fs::write(
        bundle.join("policy.rego"),
        "package deploylite.run.with_keyword\nimport rego.v1\n\
         frozen if input.plan.pipeline == \"release\"\n\
         deny contains \"release is frozen\" if frozen with input.plan.pipeline as \"release\"\n",
    )
    .expect("write");
    let policies = Policies::from_bundles(&[bundle], LIMIT).expect("compiles");
    let compiled = policies.operator();
    let value = regorus::Value::from(json!({"plan": {"pipeline": "ci"}}));
    let vm = compiled
        .evaluate_with(Evaluator::Rvm, Gate::Run, &value, LIMIT)
        .expect("evaluates");
    let engine = compiled
        .evaluate_with(Evaluator::Interpreter, Gate::Run, &value, LIMIT)
        .expect("evaluates");
    assert_eq!(vm, engine);
    assert_eq!(vm.deny, vec!["release is frozen".to_string()]);
    eprintln!(
        "compiled: {:?}, interpreted: {:?}",
        compiled.compiled_gates(),
        compiled.interpreted_gates()
    );
}

/// required-pipelines' `state(name)`, reduced: a function whose first body iterates an empty
/// array and whose `else` gives a value. The interpreter takes the `else`; regorus 0.14.1's
/// VM gives undefined, so the bundle's deny for a required pipeline without any run is lost.
#[test]
#[ignore = "regorus 0.14.1's RVM does not take the else after a body that iterated nothing"]
fn an_else_after_an_empty_iteration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = dir.path().join("else");
    std::fs::create_dir_all(&bundle).expect("mkdir");
    std::fs::write(
        bundle.join("policy.rego"),
        "package deploylite.deploy.else_case\nimport rego.v1\n\
         deny contains state(\"ci\")\n\
         state(name) := run.status if {\n  some run in input.commit.runs\n  run.pipeline == name\n} else := \"no run\"\n",
    )
    .expect("write");
    let policies = Policies::from_bundles(&[bundle], LIMIT).expect("compiles");
    let value = regorus::Value::from(json!({"commit": {"runs": []}}));
    let engine = policies
        .operator()
        .evaluate_with(Evaluator::Interpreter, Gate::Deploy, &value, LIMIT)
        .expect("evaluates");
    assert_eq!(engine.deny, vec!["no run".to_string()]);
    let vm = policies
        .operator()
        .evaluate_with(Evaluator::Rvm, Gate::Deploy, &value, LIMIT)
        .expect("evaluates");
    assert_eq!(vm, engine);
}

/// The VM is bounded like the engine: its execution timer (checked every 32 instructions)
/// with what is left of the evaluation's limit; its own instruction limit is lifted.
#[test]
fn a_runaway_policy_is_stopped_on_the_rvm_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = dir.path().join("slow");
    std::fs::create_dir_all(&bundle).expect("mkdir");
    std::fs::write(
        bundle.join("policy.rego"),
        "package deploylite.run.slow\nimport rego.v1\n\
         deny contains \"never\" if {\n  count([x | some a in numbers.range(1, 3000); some b in numbers.range(1, 3000); x := a * b]) < 0\n}\n",
    )
    .expect("write");
    let policies = Policies::from_bundles(&[bundle], Duration::from_millis(20))
        .expect("compiles")
        .with_evaluator(Evaluator::Rvm);
    assert_eq!(policies.operator().compiled_gates(), vec!["deploylite.run"]);
    let started = std::time::Instant::now();
    let err = policies
        .evaluate(
            Gate::Run,
            &deploylite_policy::PolicySources::default(),
            &json!({}),
        )
        .expect_err("too slow");
    assert!(
        matches!(err, deploylite_policy::PolicyError::TimeLimit { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
