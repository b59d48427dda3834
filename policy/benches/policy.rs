//! Policy evaluation of the shipped bundles (`policy-bundles/`, all five enabled): one
//! `deploylite.run` decision for a three-stage plan and one `deploylite.deploy` decision for a
//! production deployment, each through `Policies::evaluate` (clone of the prepared engine,
//! input conversion, every deny/warn rule). The target is p99 ≤ 100 µs, so besides criterion's
//! mean this prints p50/p99/max over 20,000 timed evaluations of each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::Criterion;
use deploylite_policy::{Gate, ImageReference, Policies, PolicySources};
use serde_json::{json, Value};

fn policies() -> Policies {
    // BENCH_BUNDLES: another copy of the bundles (e.g. an older revision, for a comparison
    // on one machine state).
    let root = std::env::var_os("BENCH_BUNDLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy-bundles"));
    Policies::from_bundles(&[root], Duration::from_millis(100)).expect("the bundles compile")
}

fn run_input() -> Value {
    let images = ["ghcr.io/deploylite/kaniko:1.2", "postgres:17", "rust:1.85"];
    let references: Vec<ImageReference> = images.iter().map(|i| ImageReference::parse(i)).collect();
    json!({
        "gate": "deploylite.run",
        "now": {"time": "2026-12-07T18:48:09Z", "unix": 1796668089, "weekday": "mon", "hour": 18, "minute": 48},
        "repository": {"name": "webapp", "default_branch": "main"},
        "commit": {"sha": "0123456789abcdef0123456789abcdef01234567", "ref": "refs/heads/main",
                   "branch": "main", "tag": null, "author": {"name": "Ada", "email": "ada@example.com"}, "runs": []},
        "trigger": {"event": "push", "trusted": true, "pull_request": null},
        "plan": {
            "pipeline": "ci", "file": ".deploylite/pipelines/ci.yaml",
            "stages": [
                {"name": "build", "needs": [], "runs_on": ["linux"], "image": "rust:1.85", "services": [], "secrets": [], "skipped": false},
                {"name": "test", "needs": ["build"], "runs_on": ["linux"], "image": "rust:1.85", "services": ["postgres:17"], "secrets": [], "skipped": false},
                {"name": "image", "needs": ["test"], "runs_on": ["docker"], "image": "ghcr.io/deploylite/kaniko:1.2", "services": [], "secrets": [], "skipped": false}
            ],
            "images": images,
            "image_references": references,
            "runner_labels": ["docker", "linux"],
            "secrets": []
        },
        "environment": null,
        "approvals": []
    })
}

fn deploy_input() -> Value {
    let mut input = run_input();
    input["gate"] = json!("deploylite.deploy");
    input["commit"]["runs"] = json!([{"pipeline": "ci", "status": "success"}]);
    input["environment"] = json!({
        "name": "production",
        "current_version": "fedcba9876543210fedcba9876543210fedcba98",
        "desired_version": "0123456789abcdef0123456789abcdef01234567",
        "requires": ["ci"],
        "action": "deploy"
    });
    input["approvals"] = json!([{"by": "token:ops", "at": "2026-12-07T18:00:00Z"}]);
    input
}

/// This thread's CPU time (user + system) from `/proc/thread-self/stat`, in clock ticks
/// (10 ms): coarse, so only used over thousands of evaluations. On a machine shared with
/// other work, wall-clock percentiles include the time the thread waited for a core; the
/// CPU time per evaluation does not.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `)`.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn percentiles(policies: &Policies, gate: Gate, input: &Value) -> String {
    let none = PolicySources::default();
    for _ in 0..1_000 {
        black_box(policies.evaluate(gate, &none, input).expect("evaluates"));
    }
    let mut failed = 0;
    let cpu_before = cpu_ticks();
    let wall = Instant::now();
    let mut times: Vec<Duration> = (0..20_000)
        .map(|_| {
            let started = Instant::now();
            // A wall-clock time limit can strike when the machine is overloaded: counted,
            // and the time kept, rather than ending the measurement.
            if black_box(policies.evaluate(gate, &none, black_box(input))).is_err() {
                failed += 1;
            }
            started.elapsed()
        })
        .collect();
    let wall = wall.elapsed();
    let cpu = cpu_before
        .zip(cpu_ticks())
        .map(|(before, after)| Duration::from_millis((after - before) * 10));
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let per = |d: Duration| d.as_secs_f64() * 1e6 / times.len() as f64;
    format!(
        "{gate}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs over {} evaluations ({failed} failed); \
         mean {:.1} µs wall, {} CPU",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(1.0).as_secs_f64() * 1e6,
        times.len(),
        per(wall),
        cpu.map_or("unknown".to_string(), |c| format!("{:.1} µs", per(c))),
    )
}

fn main() {
    let policies = policies();
    let (run, deploy) = (run_input(), deploy_input());
    let none = PolicySources::default();
    // The inputs are the ones the figures are about: allowed at the run gate, and denied at
    // the deploy gate only by the deployment window (18:48 is outside 09:00-16:00).
    let decision = policies
        .evaluate(Gate::Run, &none, &run)
        .expect("evaluates");
    assert!(!decision.denied(), "{decision:?}");
    let decision = policies
        .evaluate(Gate::Deploy, &none, &deploy)
        .expect("evaluates");
    assert_eq!(decision.deny.len(), 1, "{decision:?}");

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("policy/run_gate_default_bundles", |b| {
        b.iter(|| policies.evaluate(Gate::Run, &none, black_box(&run)))
    });
    c.bench_function("policy/deploy_gate_default_bundles", |b| {
        b.iter(|| policies.evaluate(Gate::Deploy, &none, black_box(&deploy)))
    });
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        println!("{}", percentiles(&policies, Gate::Run, &run));
        println!("{}", percentiles(&policies, Gate::Deploy, &deploy));
    }
}
