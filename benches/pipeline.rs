//! Parse + validate + DAG layering of the reference pipeline (the example of docs/pipeline.md).
//! Target: <= 10 µs per iteration. `parse_validate_dag_saphyr` measures the
//! same without the YAML fast path (`pipeline/src/yaml_fast.rs`): what a file outside the fast
//! path's subset costs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use deploylite_pipeline::{layers, parse_pipeline};

const EXAMPLE: &str = r#"name: ci
on:
  push: { branches: [main, "release/**"], tags: ["v*"], paths: ["src/**", "Cargo.*"], paths_ignore: ["docs/**"] }
  pull_request: { branches: [main], paths: ["src/**"], paths_ignore: ["docs/**"] }
concurrency: cancel-in-progress
env: { RUST_LOG: info }
stages:
  lint:
    steps: [cargo clippy]
  test:
    needs: [lint]
    runs-on: [linux]
    image: rust:1.83
    timeout: 15m
    retry: { max: 2, backoff: 2s, max_backoff: 1m, exit_codes: [75] }
    env: { CARGO_INCREMENTAL: "0" }
    if: branch == 'main'
    resources: { cpu: 2, memory: 512Mi }
    steps:
      - name: unit tests
        run: cargo test
    rollback: [ { run: ./scripts/undo.sh } ]
"#;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.bench_function("parse_validate_dag", |b| {
        b.iter(|| {
            let p = parse_pipeline("ci.yaml", black_box(EXAMPLE)).expect("the example is valid");
            black_box(layers(&p))
        })
    });
    // The same without the YAML fast path (every file outside its subset takes this path).
    group.bench_function("parse_validate_dag_saphyr", |b| {
        b.iter(|| {
            let p =
                deploylite_pipeline::__private::parse_pipeline_slow("ci.yaml", black_box(EXAMPLE))
                    .expect("the example is valid");
            black_box(layers(&p))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
