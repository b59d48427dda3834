//! The shipped bundles (`policy-bundles/`): every unit test passes, every bundle has tests,
//! and together they compile into a gate set that covers both gates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use deploylite_policy::testing::{run_tests, TestOutcome};
use deploylite_policy::{Gate, Policies};

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

#[test]
fn every_shipped_bundle_test_passes() {
    let results = run_tests(&[bundles_dir()], Duration::from_secs(5)).expect("bundles compile");
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.outcome != TestOutcome::Pass)
        .map(|r| format!("{} ({}): {:?}", r.rule, r.file, r.outcome))
        .collect();
    assert!(
        failed.is_empty(),
        "failing bundle tests:\n{}",
        failed.join("\n")
    );
    for dir in bundle_dirs() {
        let dir = dir.display().to_string();
        let tests = results.iter().filter(|r| r.file.starts_with(&dir)).count();
        assert!(
            tests >= 3,
            "{dir} has {tests} tests; every bundle tests its rules"
        );
    }
}

#[test]
fn each_bundle_has_data_and_compiles_alone() {
    let dirs = bundle_dirs();
    assert_eq!(dirs.len(), 5, "{dirs:?}");
    for dir in dirs {
        assert!(
            dir.join("data.yaml").is_file(),
            "{} has no data.yaml",
            dir.display()
        );
        let policies = Policies::from_bundles(std::slice::from_ref(&dir), Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let gates = Gate::ALL
            .into_iter()
            .filter(|g| policies.operator().covers(*g))
            .count();
        assert_eq!(gates, 1, "{} takes part in exactly one gate", dir.display());
    }
}
