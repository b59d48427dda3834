//! `GET /metrics` with 1,000 pipelines: the store's gauges (waiting stages by kind, running
//! stages by runner, runners, the outbox), the process and disk figures, and the encoding of
//! every series, as the route answers a scrape. Target: ≤ 10 ms.
//!
//! `cargo bench --bench metrics`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use deploylite_pipeline::Concurrency;
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{
    Dispatch, NewRun, NewStage, RecordCommit, SqliteSync, Store, TickWrites,
};
use deploylite_server::metrics::{render, MetricsSource};
use deploylite_telemetry::exposition::Format;

const PIPELINES: usize = 1_000;

fn stage(name: &str, needs: &[&str]) -> NewStage {
    NewStage {
        name: name.into(),
        status: StageStatus::Queued,
        needs: needs.iter().map(|n| n.to_string()).collect(),
        pending_reason: None,
    }
}

/// One active run per pipeline (build → test → deploy): half of the builds running, the other
/// half waiting for capacity, every test and deploy waiting on needs.
async fn fill(store: &Store) {
    let mut started = Vec::new();
    for p in 0..PIPELINES {
        let commit = format!("{p:040x}");
        let run = NewRun {
            repo: format!("repo{}", p % 50).into(),
            pipeline: format!("pipeline{p}"),
            pipeline_file: format!("p{p}.yaml"),
            commit: commit.clone().into(),
            git_ref: "refs/heads/main".into(),
            trigger: "push".into(),
            run_attempt: 1,
            status: RunStatus::Queued,
            pending_reason: None,
            concurrency: Concurrency::Parallel,
            spec: None,
            errors: None,
            workspace: Some("/tmp".into()),
            report: false,
            pull_request: None,
            awaiting_approval: false,
            policy: None,
            stages: vec![
                stage("build", &[]),
                stage("test", &["build"]),
                stage("deploy", &["test"]),
            ],
        };
        let (created, _) = store
            .record_commit(&RecordCommit {
                repo: run.repo.clone(),
                git_ref: "refs/heads/main".into(),
                commit: commit.into(),
                runs: vec![run],
                update_ref: false,
            })
            .await
            .expect("record");
        started.extend(created);
    }
    let mut writes = TickWrites {
        start_runs: started.clone(),
        ..Default::default()
    };
    for (i, run_id) in started.iter().enumerate() {
        if i % 2 == 0 {
            writes.dispatch.push(Dispatch {
                run_id: *run_id,
                stage: "build".into(),
                attempt: deploylite_model::Attempt::FIRST,
                runner: "local".into(),
                lease_deadline: None,
            });
        } else {
            writes.stage_pending.push((
                *run_id,
                "build".into(),
                Some("capacity: 500 of 500 stages running".into()),
            ));
        }
        for (name, need) in [("test", "build"), ("deploy", "test")] {
            writes
                .stage_pending
                .push((*run_id, name.into(), Some(format!("needs: {need}"))));
        }
    }
    store.apply_tick(&writes).await.expect("apply");
}

/// Every pipeline has ended runs of both outcomes, and stages of both.
fn observe_history() {
    let metrics = deploylite_telemetry::metrics();
    for p in 0..PIPELINES {
        let (repo, pipeline) = (format!("repo{}", p % 50), format!("pipeline{p}"));
        for status in ["success", "failed"] {
            metrics.run_finished(&repo, &pipeline, status, Duration::from_secs(90));
            metrics.stage_finished(&repo, &pipeline, status, Duration::from_secs(30));
        }
        metrics.stage_started(Duration::from_millis(15));
    }
    metrics.webhook_delivery("github", "push", "accepted");
    metrics.webhook_to_start("github", Duration::from_millis(8));
    metrics.forge_delivery("github", "ok", Duration::from_millis(120));
}

fn scrape(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let store = rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = Store::connect(&url, SqliteSync::Full).await.expect("store");
        fill(&store).await;
        store
    });
    observe_history();
    let source = MetricsSource {
        store,
        data_dir: dir.path().to_path_buf(),
        local_capacity: Some(500),
        runner_offline_after: Duration::from_secs(60),
    };
    let text = rt
        .block_on(render(&source, Format::Text))
        .expect("a scrape");
    assert!(
        text.contains("deploylite_queue_depth{reason=\"capacity\"} 500"),
        "{text}"
    );
    assert!(text.contains("deploylite_queue_depth{reason=\"needs\"} 2000"));
    assert!(text.contains("deploylite_stage_parallel 500"));
    eprintln!(
        "one scrape: {} bytes, {} lines",
        text.len(),
        text.lines().count()
    );

    let mut group = c.benchmark_group("metrics");
    group.sample_size(50);
    group.bench_function("scrape_1000_pipelines_text", |b| {
        b.iter(|| rt.block_on(render(&source, Format::Text)).expect("scrape"))
    });
    group.bench_function("scrape_1000_pipelines_openmetrics", |b| {
        b.iter(|| {
            rt.block_on(render(&source, Format::OpenMetrics))
                .expect("scrape")
        })
    });
    group.bench_function("store_gauges_only", |b| {
        b.iter(|| {
            rt.block_on(source.store.scheduling_gauges())
                .expect("gauges")
        })
    });
    group.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
