//! The pipeline front door (saphyr, the only YAML parser) and what the watcher does with it.
//! Targets: parse + validate + DAG of the reference pipeline <= 50 µs; a parse-cache hit
//! <= 1 µs; 1,000 changed pipeline files turned into desired runs <= 100 ms; 5,000 stages with
//! unknown `needs` (the security finding: 28 s before the caps) validated in <= 50 ms.
//!
//! Every figure is the benchmark thread's CPU time (CLOCK_THREAD_CPUTIME_ID), not wall time:
//! the development machine is shared, and preemption would otherwise be counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use deploylite_pipeline::{layers, parse_pipeline, Event};
use deploylite_reconciler::desired::{desired_runs, CommitEvent, ParseCache};
use deploylite_reconciler::git::PipelineFile;
use nix::time::{clock_gettime, ClockId};

/// The example of docs/pipeline.md, without services.
const EXAMPLE: &str = include_str!("../pipeline/tests/fixtures/bench-example.yaml");

fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Criterion's `iter`, timed in this thread's CPU time.
fn cpu_iter<T>(b: &mut criterion::Bencher<'_>, mut f: impl FnMut() -> T) {
    b.iter_custom(|iters| {
        let start = thread_cpu();
        for _ in 0..iters {
            black_box(f());
        }
        thread_cpu().saturating_sub(start)
    });
}

/// `n` pipeline files as a commit's tree gives them, each the example under its own name.
fn changed_files(n: usize) -> Vec<PipelineFile> {
    (0..n)
        .map(|i| PipelineFile {
            path: format!(".deploylite/pipelines/ci-{i}.yaml"),
            blob_id: format!("{i:040x}"),
            content: EXAMPLE
                .replacen("name: ci", &format!("name: ci-{i}"), 1)
                .into_bytes(),
        })
        .collect()
}

fn push_to_main(files: &[PipelineFile]) -> CommitEvent {
    let mut changed: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    changed.push("src/main.rs".into());
    CommitEvent {
        repo: "app".into(),
        git_ref: "refs/heads/main".into(),
        commit: "c0ffee".repeat(6) + "c0ff",
        event: Event::Push {
            branch: "main".into(),
        },
        changed_paths: Some(changed),
        report: false,
        pull_request: None,
    }
}

/// The finding's file: 5,000 stages, each needing a stage that does not exist.
fn unknown_needs(n: usize) -> String {
    let mut src = String::from("name: big\nstages:\n");
    for i in 0..n {
        src.push_str(&format!(
            "  stage-{i:04}:\n    needs: [missing-{i:04}]\n    steps: [\"make stage-{i:04}\"]\n"
        ));
    }
    src
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");

    group.bench_function("parse_validate_dag", |b| {
        cpu_iter(b, || {
            let p = parse_pipeline("ci.yaml", black_box(EXAMPLE)).expect("the example is valid");
            layers(&p)
        })
    });

    let cache = ParseCache::default();
    let file = changed_files(1).remove(0);
    let _ = cache.parse(&file);
    group.bench_function("parse_cache_hit", |b| {
        cpu_iter(b, || cache.parse(black_box(&file)))
    });

    let big = unknown_needs(5_000);
    group.bench_function("validate_5000_stages_unknown_needs", |b| {
        cpu_iter(b, || {
            parse_pipeline("big.yaml", black_box(&big)).expect_err("the needs are unknown")
        })
    });

    let files = changed_files(1_000);
    let event = push_to_main(&files);
    assert_eq!(
        desired_runs(&files, &event, &ParseCache::default()).len(),
        1_000
    );
    group.sample_size(20);
    group.bench_function("desired_runs_1000_changed_files", |b| {
        cpu_iter(b, || {
            desired_runs(black_box(&files), &event, &ParseCache::default())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
