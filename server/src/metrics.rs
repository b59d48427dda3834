//! `GET /metrics`: the event instruments, the store's gauges, the data dir's free space and the
//! process' figures, in the text format the client asks for (see
//! `deploylite_telemetry::exposition`). On the API listener it is a read like any other (a
//! viewer, or anonymous where reads are); `metrics.listen` serves it alone on another address.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use deploylite_reconciler::store::{now_ms, SchedulingGauges, Store, StoreError, LOCAL_RUNNER};
use deploylite_telemetry::exposition::{Format, Scrape};
use deploylite_telemetry::state::{RunnerState, StateSnapshot};

/// What a scrape reads.
#[derive(Clone)]
pub struct MetricsSource {
    pub store: Store,
    /// The data dir, whose file system's free space is exported.
    pub data_dir: PathBuf,
    /// The daemon's own runner's capacity, when it runs stages.
    pub local_capacity: Option<usize>,
    /// A remote runner not heard from for this long is offline (as the scheduler sees it).
    pub runner_offline_after: Duration,
}

/// The `/metrics` route.
pub fn routes(source: MetricsSource) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(source))
}

async fn scrape(State(source): State<Arc<MetricsSource>>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match render(&source, format).await {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(message) => {
            tracing::warn!(%message, "cannot answer a metrics scrape");
            (StatusCode::INTERNAL_SERVER_ERROR, message.to_string()).into_response()
        }
    }
}

/// Why a scrape has no text.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode the metrics: {0}")]
    Encode(#[source] std::fmt::Error),
    #[error("the metrics encoder stopped: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// The scrape's text.
pub async fn render(source: &MetricsSource, format: Format) -> Result<String, ScrapeError> {
    let gauges = source.store.scheduling_gauges().await?;
    let mut state = snapshot(&gauges, source, now_ms());
    environment_state(&source.store, &mut state).await?;
    let data_dir = source.data_dir.clone();
    // /proc, statvfs and the encoding: blocking and CPU work, off the runtime.
    tokio::task::spawn_blocking(move || {
        let process = deploylite_telemetry::process::read_self()
            .map_err(|error| tracing::debug!(%error, "no process metrics"))
            .ok();
        let disk = deploylite_telemetry::disk::disk_space(&data_dir)
            .map_err(|error| tracing::debug!(%error, "no data dir metrics"))
            .ok();
        Scrape {
            events: deploylite_telemetry::metrics().registry(),
            state: Some(&state),
            process: process.as_ref(),
            data_dir: disk,
        }
        .encode(format)
        .map_err(ScrapeError::Encode)
    })
    .await
    .map_err(ScrapeError::Task)?
}

/// Deployments and environments, read from the store (two queries).
async fn environment_state(
    store: &Store,
    state: &mut StateSnapshot,
) -> Result<(), deploylite_reconciler::store::StoreError> {
    use deploylite_reconciler::status::DeploymentStatus;
    use deploylite_telemetry::state::{DeploymentCount, EnvironmentState};
    state.deployments = store
        .deployment_counts()
        .await?
        .into_iter()
        .map(|(repo, environment, status, n)| DeploymentCount {
            final_status: status
                .parse::<DeploymentStatus>()
                .is_ok_and(DeploymentStatus::is_final),
            repo,
            environment,
            status,
            count: u64::try_from(n).unwrap_or(0),
        })
        .collect();
    state.environments = store
        .environments(None, false)
        .await?
        .iter()
        .map(|e| EnvironmentState {
            repo: e.repo.clone(),
            environment: e.name.clone(),
            sync: e.sync().to_string(),
            health: e.health().to_string(),
            held: e.hold.is_some(),
        })
        .collect();
    Ok(())
}

/// The store's gauges and the runners' liveness as the metrics show them.
pub fn snapshot(gauges: &SchedulingGauges, source: &MetricsSource, now: i64) -> StateSnapshot {
    let running = |runner: &str| -> u64 {
        gauges
            .running_by_runner
            .iter()
            .find(|(name, _)| name == runner)
            .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
    };
    let offline_before =
        now - i64::try_from(source.runner_offline_after.as_millis()).unwrap_or(i64::MAX / 2);
    let mut runners: Vec<RunnerState> = source
        .local_capacity
        .map(|capacity| RunnerState {
            name: LOCAL_RUNNER.to_string(),
            capacity: u64::try_from(capacity).unwrap_or(u64::MAX),
            active: running(LOCAL_RUNNER),
            online: true,
            last_seen_ms: None,
        })
        .into_iter()
        .collect();
    runners.extend(gauges.remote_runners.iter().map(|r| RunnerState {
        name: r.name.clone(),
        capacity: u64::try_from(r.capacity).unwrap_or(0),
        active: running(&r.name),
        online: r.last_seen.is_some_and(|seen| seen >= offline_before),
        last_seen_ms: r.last_seen,
    }));
    StateSnapshot {
        queue_depth: gauges
            .waiting
            .iter()
            .map(|(kind, n)| (kind.clone(), u64::try_from(*n).unwrap_or(0)))
            .collect(),
        running_stages: gauges
            .running_by_runner
            .iter()
            .map(|(_, n)| u64::try_from(*n).unwrap_or(0))
            .sum(),
        runners,
        outbox_depth: u64::try_from(gauges.outbox_pending).unwrap_or(0),
        outbox_retrying: u64::try_from(gauges.outbox_retrying).unwrap_or(0),
        deployments: Vec::new(),
        environments: Vec::new(),
    }
}
