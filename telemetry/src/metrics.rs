//! The event instruments: counters and histograms recorded where things happen. One registry
//! per process ([`metrics`]), as tracing has one dispatcher: the scheduler's recorder, the
//! webhook receiver and the forge reporter record into it without being handed it.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets for runs and stages: 1 s to about 5.5 h, tripling. Ten buckets, not more: a
/// histogram per pipeline and status is most of a scrape (1,000 pipelines × 2 statuses × 13
/// lines), and its size is what a scrape costs the daemon and Prometheus.
fn duration_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 3.0, 10,
    ))
}

/// Buckets for waits that should be short (scheduling, webhook → start, forge calls):
/// 5 ms to about 80 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 15,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub repo: String,
    pub pipeline: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub repo: String,
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub repo: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForgeLabels {
    pub forge: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub forge: String,
    pub event: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `deploylite.run` or `deploylite.deploy`.
    pub gate: String,
    /// `allow`, `warn` (allowed with warnings), `deny`, `error` (failed closed).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    pub forge: String,
    pub result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every event instrument DeployLite records (docs/metrics.md lists them).
pub struct Metrics {
    registry: Registry,
    pipeline_duration: HistogramFamily<RunLabels>,
    pipeline_failures: Family<PipelineLabels, Counter>,
    stage_duration: HistogramFamily<StageLabels>,
    scheduler_latency: Histogram,
    webhook_to_start: HistogramFamily<ForgeLabels>,
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    forge_delivery: HistogramFamily<ReportLabels>,
    policy_evaluations: Family<PolicyLabels, Counter>,
    environment_passes: Counter,
}

/// The process' instruments.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of instruments (the process has one, [`metrics`]; benchmarks and tests
    /// make their own).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let pipeline_duration: HistogramFamily<RunLabels> =
            Family::new_with_constructor(duration_buckets);
        registry.register(
            "deploylite_pipeline_duration_seconds",
            "Runs that ended, by final status: from the run's start to its end",
            pipeline_duration.clone(),
        );
        let pipeline_failures = Family::<PipelineLabels, Counter>::default();
        // The client adds `_total`: exposed as deploylite_pipeline_failure_total.
        registry.register(
            "deploylite_pipeline_failure",
            "Runs that ended failed",
            pipeline_failures.clone(),
        );
        let stage_duration: HistogramFamily<StageLabels> =
            Family::new_with_constructor(duration_buckets);
        registry.register(
            "deploylite_stage_duration_seconds",
            "Stage attempts that ended, by the attempt's status",
            stage_duration.clone(),
        );
        let scheduler_latency = latency_buckets();
        registry.register(
            "deploylite_scheduler_latency_seconds",
            "From a stage becoming runnable (its run started, its needs done, its retry backoff over) to its attempt starting",
            scheduler_latency.clone(),
        );
        let webhook_to_start: HistogramFamily<ForgeLabels> =
            Family::new_with_constructor(latency_buckets);
        registry.register(
            "deploylite_webhook_to_start_seconds",
            "From a forge webhook's arrival to the first stage of a run it caused starting",
            webhook_to_start.clone(),
        );
        let webhook_deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deploylite_webhook_deliveries",
            "Forge webhook deliveries received, by how they were answered",
            webhook_deliveries.clone(),
        );
        let forge_delivery: HistogramFamily<ReportLabels> =
            Family::new_with_constructor(latency_buckets);
        registry.register(
            "deploylite_forge_delivery_seconds",
            "Reports sent to a forge (check runs, statuses, comments), by result",
            forge_delivery.clone(),
        );
        let policy_evaluations = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "deploylite_policy_evaluations",
            "Policy gate decisions, by gate and result (allow, warn, deny, error)",
            policy_evaluations.clone(),
        );
        let environment_passes = Counter::default();
        // Exposed as deploylite_environment_passes_total.
        registry.register(
            "deploylite_environment_passes",
            "Passes of the environment controller ended, failed or not",
            environment_passes.clone(),
        );
        Metrics {
            registry,
            policy_evaluations,
            environment_passes,
            pipeline_duration,
            pipeline_failures,
            stage_duration,
            scheduler_latency,
            webhook_to_start,
            webhook_deliveries,
            forge_delivery,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A run ended with `status` (`success`, `failed`, `cancelled`) after `duration`.
    pub fn run_finished(&self, repo: &str, pipeline: &str, status: &str, duration: Duration) {
        self.pipeline_duration
            .get_or_create(&RunLabels {
                repo: repo.to_string(),
                pipeline: pipeline.to_string(),
                status: status.to_string(),
            })
            .observe(duration.as_secs_f64());
        if status == "failed" {
            self.pipeline_failures
                .get_or_create(&PipelineLabels {
                    repo: repo.to_string(),
                    pipeline: pipeline.to_string(),
                })
                .inc();
        }
    }

    /// The environment controller ended a pass over every repository.
    pub fn environment_pass(&self) {
        self.environment_passes.inc();
    }

    /// A stage attempt ended with `status` after `duration`.
    pub fn stage_finished(&self, repo: &str, pipeline: &str, status: &str, duration: Duration) {
        // Per repository: a histogram per pipeline and stage outcome would double the scrape
        // for little (the pipeline's own histogram has its duration).
        let _ = pipeline;
        self.stage_duration
            .get_or_create(&StageLabels {
                repo: repo.to_string(),
                status: status.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    /// A stage attempt started `waited` after it became runnable.
    pub fn stage_started(&self, waited: Duration) {
        self.scheduler_latency.observe(waited.as_secs_f64());
    }

    /// The first stage of a run caused by a `forge` webhook started `after` its arrival.
    pub fn webhook_to_start(&self, forge: &str, after: Duration) {
        self.webhook_to_start
            .get_or_create(&ForgeLabels {
                forge: forge.to_string(),
            })
            .observe(after.as_secs_f64());
    }

    /// A webhook delivery was answered. `event` must come from a fixed vocabulary (see
    /// [`bounded_event`]): the header it comes from is the sender's to choose.
    pub fn webhook_delivery(&self, forge: &str, event: &str, result: &str) {
        self.webhook_deliveries
            .get_or_create(&DeliveryLabels {
                forge: forge.to_string(),
                event: bounded_event(event).to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// A policy gate decided. `result`: `allow`, `warn`, `deny` or `error`.
    pub fn policy_evaluation(&self, gate: &str, result: &str) {
        self.policy_evaluations
            .get_or_create(&PolicyLabels {
                gate: gate.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// A report to a forge took `took` and ended with `result` (`ok`, `error`, `rate_limited`).
    pub fn forge_delivery(&self, forge: &str, result: &str, took: Duration) {
        self.forge_delivery
            .get_or_create(&ReportLabels {
                forge: forge.to_string(),
                result: result.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The webhook events DeployLite knows (GitHub's `X-GitHub-Event`, GitLab's `X-Gitlab-Event`);
/// anything else is `other`, so that a sender cannot create label values at will.
pub fn bounded_event(event: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "ping",
        "push",
        "create",
        "delete",
        "pull_request",
        "check_run",
        "check_suite",
        "issue_comment",
        "Push Hook",
        "Tag Push Hook",
        "Merge Request Hook",
        "Note Hook",
        "System Hook",
    ];
    KNOWN
        .iter()
        .find(|known| **known == event)
        .copied()
        .unwrap_or(if event.is_empty() { "none" } else { "other" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, m.registry()).unwrap();
        out
    }

    #[test]
    fn a_failed_run_counts_as_a_failure_and_a_duration() {
        let m = Metrics::new();
        m.run_finished("app", "ci", "failed", Duration::from_secs(3));
        m.run_finished("app", "ci", "success", Duration::from_secs(5));
        let out = text(&m);
        assert!(
            out.contains(r#"deploylite_pipeline_failure_total{repo="app",pipeline="ci"} 1"#),
            "{out}"
        );
        assert!(out.contains(
            r#"deploylite_pipeline_duration_seconds_count{repo="app",pipeline="ci",status="success"} 1"#
        ));
        assert!(out.contains(
            r#"deploylite_pipeline_duration_seconds_sum{repo="app",pipeline="ci",status="failed"} 3.0"#
        ));
    }

    #[test]
    fn webhook_event_labels_stay_within_the_known_events() {
        let m = Metrics::new();
        m.webhook_delivery("github", "push", "accepted");
        m.webhook_delivery("github", "made-up-event-42", "ignored");
        m.webhook_delivery("gitlab", "", "bad_request");
        let out = text(&m);
        assert!(
            out.contains(r#"event="push",result="accepted"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"event="other",result="ignored"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"event="none",result="bad_request"} 1"#),
            "{out}"
        );
        assert!(!out.contains("made-up"));
    }
}
