//! Parse + validate + DAG layering of the reference pipeline (the example of docs/pipeline.md).
//! Target: <= 10 µs per iteration. `parse_validate_dag_saphyr` measures the
//! same without the YAML fast path (`pipeline/src/yaml_fast.rs`): what a file outside the fast
//! path's subset costs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use deploylite_pipeline::{layers, parse_pipeline};

/// Shared with pipeline/tests/yaml_fast.rs, which checks that it stays on the fast path.
const EXAMPLE: &str = include_str!("../pipeline/tests/fixtures/bench-example.yaml");

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
