//! Scheduler throughput: stage dispatches per second with durable SQLite commits
//! (synchronous = FULL, WAL), batched as the scheduler batches them: one transaction per tick.
//!
//! `cargo bench --bench core`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use deploylite_pipeline::Concurrency;
use deploylite_reconciler::scheduler::{plan_tick, Placement, PlanConfig};
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{NewRun, NewStage, RecordCommit, SqliteSync, Store, TickWrites};

const RUNS: usize = 20;
const STAGES_PER_RUN: usize = 100;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn open(dir: &Path) -> Store {
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    Store::connect(&url, SqliteSync::Full).await.expect("store")
}

/// A database with RUNS running runs of STAGES_PER_RUN independent queued stages each.
async fn build_template(dir: &Path) {
    let store = open(dir).await;
    let pipeline = {
        let mut yaml = String::from("name: wide\nstages:\n");
        for i in 0..STAGES_PER_RUN {
            yaml.push_str(&format!("  s{i}:\n    steps: [{{ run: 'true' }}]\n"));
        }
        deploylite_pipeline::parse_pipeline("wide.yaml", &yaml).expect("valid")
    };
    let spec = serde_json::to_string(&pipeline).expect("json");
    let mut ids = Vec::new();
    for r in 0..RUNS {
        let commit = format!("{r:040x}");
        let run = NewRun {
            repo: "bench".into(),
            pipeline: "wide".into(),
            pipeline_file: "wide.yaml".into(),
            commit: commit.clone().into(),
            git_ref: "refs/heads/main".into(),
            trigger: "push".into(),
            run_attempt: 1,
            status: RunStatus::Queued,
            pending_reason: None,
            concurrency: Concurrency::Parallel,
            spec: Some(spec.clone()),
            errors: None,
            workspace: Some("/tmp".into()),
            report: false,
            pull_request: None,
            awaiting_approval: false,
            policy: None,
            stages: pipeline
                .stages
                .iter()
                .map(|s| NewStage {
                    name: s.name.clone().into(),
                    status: StageStatus::Queued,
                    needs: vec![],
                    pending_reason: None,
                })
                .collect(),
        };
        let (created, _) = store
            .record_commit(&RecordCommit {
                repo: "bench".into(),
                git_ref: "refs/heads/main".into(),
                commit: commit.into(),
                runs: vec![run],
                update_ref: false,
            })
            .await
            .expect("record");
        ids.extend(created);
    }
    store
        .apply_tick(&TickWrites {
            start_runs: ids,
            ..Default::default()
        })
        .await
        .expect("start");
    store.close().await;
}

fn dispatch(c: &mut Criterion) {
    let rt = runtime();
    let template = tempfile::tempdir().expect("tmp");
    rt.block_on(build_template(template.path()));
    let config = PlanConfig {
        runners: vec![Placement {
            name: "local".into(),
            labels: vec![],
            capacity: RUNS * STAGES_PER_RUN,
        }],
        lease_ttl_ms: 30_000,
        untrusted_labels: Vec::new(),
    };

    let mut group = c.benchmark_group("scheduler");
    group.sample_size(20);
    group.throughput(Throughput::Elements((RUNS * STAGES_PER_RUN) as u64));
    group.bench_function("dispatch_2000_stages_one_tick_sqlite_full", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tmp");
                std::fs::copy(
                    template.path().join("bench.db"),
                    dir.path().join("bench.db"),
                )
                .expect("copy");
                let store = rt.block_on(open(dir.path()));
                (dir, store)
            },
            |(dir, store)| {
                rt.block_on(async {
                    let runs = store.load_active().await.expect("load");
                    let (writes, _) = plan_tick(&runs, &Default::default(), &config, 0);
                    assert_eq!(writes.dispatch.len(), RUNS * STAGES_PER_RUN);
                    store.apply_tick(&writes).await.expect("apply");
                });
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    // The pure decision alone, to see what the database costs on top.
    let runs = rt.block_on(async {
        let store = open(template.path()).await;
        store.load_active().await.expect("load")
    });
    let specs = std::collections::HashMap::<
        deploylite_model::RunId,
        Arc<deploylite_pipeline::Pipeline>,
    >::new();
    group.bench_function("plan_tick_2000_stages", |b| {
        b.iter(|| plan_tick(&runs, &specs, &config, 0))
    });
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
