//! Gauges of what *is*: waiting stages, runners, the forge outbox. They mirror the store, so
//! they are read from it at scrape time (one cheap query each, see the store's `gauges`) rather
//! than kept up to date by every writer; the server fills a [`StateSnapshot`] and this module
//! turns it into metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Why stages wait, as `deploylite_queue_depth{reason}` names it. Every kind is exported, at 0
/// when nothing waits for it, so that dashboards and alerts see a series.
pub const WAIT_KINDS: &[&str] = &[
    "approval",
    "concurrency",
    "run_start",
    "needs",
    "workspace",
    "backoff",
    "capacity",
    "no_runner",
    "restart",
    "other",
];

/// A runner as the gauges show it (the daemon's own is `local`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerState {
    pub name: String,
    /// Stages it runs at once.
    pub capacity: u64,
    /// Stages it is running now.
    pub active: u64,
    pub online: bool,
    /// When it was last heard from (epoch ms); None for the daemon's own runner.
    pub last_seen_ms: Option<i64>,
}

/// What the store says at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateSnapshot {
    /// Waiting stages by kind (one of [`WAIT_KINDS`]).
    pub queue_depth: Vec<(String, u64)>,
    /// Stages running now, on every runner.
    pub running_stages: u64,
    pub runners: Vec<RunnerState>,
    /// Reports queued for a forge and not sent yet.
    pub outbox_depth: u64,
    /// Of those, the ones whose last send failed (they are retried with backoff).
    pub outbox_retrying: u64,
    /// Deployments by repository, environment and status (every deployment ever recorded:
    /// final statuses only grow, so the final ones are exported as a counter).
    pub deployments: Vec<DeploymentCount>,
    pub environments: Vec<EnvironmentState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentCount {
    pub repo: String,
    pub environment: String,
    pub status: String,
    pub final_status: bool,
    pub count: u64,
}

/// An environment as `deploylite_environment_info` shows it (no version: a commit is not a
/// bounded label).
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentState {
    pub repo: String,
    pub environment: String,
    pub sync: String,
    pub health: String,
    pub held: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    repo: String,
    environment: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabels {
    repo: String,
    environment: String,
    sync: String,
    health: String,
    held: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunnerLabel {
    runner: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

impl StateSnapshot {
    /// Registers the snapshot's gauges in `registry` (a registry made for one scrape).
    pub fn register(&self, registry: &mut Registry) {
        let queue = Family::<ReasonLabel, Gauge>::default();
        for kind in WAIT_KINDS {
            queue
                .get_or_create(&ReasonLabel {
                    reason: kind.to_string(),
                })
                .set(0);
        }
        for (kind, n) in &self.queue_depth {
            queue
                .get_or_create(&ReasonLabel {
                    reason: kind.clone(),
                })
                .set(to_i64(*n));
        }
        registry.register(
            "deploylite_queue_depth",
            "Stages waiting, by the kind of their pending_reason",
            queue,
        );
        let running = Gauge::<i64>::default();
        running.set(to_i64(self.running_stages));
        registry.register(
            "deploylite_stage_parallel",
            "Stages running now, on every runner",
            running,
        );

        let capacity = Family::<RunnerLabel, Gauge>::default();
        let active = Family::<RunnerLabel, Gauge>::default();
        let online = Family::<RunnerLabel, Gauge>::default();
        let last_seen = Family::<RunnerLabel, FloatGauge>::default();
        for runner in &self.runners {
            let label = RunnerLabel {
                runner: runner.name.clone(),
            };
            capacity.get_or_create(&label).set(to_i64(runner.capacity));
            active.get_or_create(&label).set(to_i64(runner.active));
            online.get_or_create(&label).set(i64::from(runner.online));
            if let Some(ms) = runner.last_seen_ms {
                // Epoch milliseconds as seconds: f64 holds them exactly for another 280,000 years.
                last_seen.get_or_create(&label).set(ms as f64 / 1000.0);
            }
        }
        registry.register(
            "deploylite_runner_capacity",
            "Stages a runner runs at once",
            capacity,
        );
        registry.register(
            "deploylite_runner_active",
            "Stages a runner is running now",
            active,
        );
        registry.register(
            "deploylite_runner_online",
            "1 while a runner takes stages (the daemon's own while enabled; a remote one while heard from)",
            online,
        );
        registry.register(
            "deploylite_runner_last_seen_timestamp_seconds",
            "When a remote runner was last heard from (a poll, a heartbeat, a report)",
            last_seen,
        );

        let outbox = Gauge::<i64>::default();
        outbox.set(to_i64(self.outbox_depth));
        registry.register(
            "deploylite_forge_outbox_depth",
            "Reports queued for a forge and not sent yet",
            outbox,
        );
        let retrying = Gauge::<i64>::default();
        retrying.set(to_i64(self.outbox_retrying));
        registry.register(
            "deploylite_forge_outbox_retrying",
            "Queued reports whose last send failed (retried with backoff)",
            retrying,
        );

        let ended = Family::<DeploymentLabels, Counter>::default();
        let open = Family::<DeploymentLabels, Gauge>::default();
        for d in &self.deployments {
            let labels = DeploymentLabels {
                repo: d.repo.clone(),
                environment: d.environment.clone(),
                status: d.status.clone(),
            };
            if d.final_status {
                ended.get_or_create(&labels).inc_by(d.count);
            } else {
                open.get_or_create(&labels).set(to_i64(d.count));
            }
        }
        // The client adds `_total`: exposed as deploylite_deployments_total.
        registry.register(
            "deploylite_deployments",
            "Deployments that ended, by environment and final status (read from the store: survives restarts)",
            ended,
        );
        registry.register(
            "deploylite_deployments_open",
            "Deployments not ended yet, by environment and status (waiting, queued, deploying, verifying, rolling_back)",
            open,
        );
        let info = Family::<EnvironmentLabels, Gauge>::default();
        for e in &self.environments {
            info.get_or_create(&EnvironmentLabels {
                repo: e.repo.clone(),
                environment: e.environment.clone(),
                sync: e.sync.clone(),
                health: e.health.clone(),
                held: e.held.to_string(),
            })
            .set(1);
        }
        registry.register(
            "deploylite_environment_info",
            "1 per environment, labelled with its sync and health status and whether it is held",
            info,
        );
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
