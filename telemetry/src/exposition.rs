//! The text served at `GET /metrics`. prometheus-client writes OpenMetrics; Prometheus asks for
//! it, but other readers (`promtool check metrics`, curl, older agents) read Prometheus' text
//! format 0.0.4, in which a counter's family is named with its `_total` and there is no
//! `# EOF`. So the format follows the `Accept` header, as the Go client's does.

use prometheus_client::registry::Registry;

use crate::disk::DiskSpace;
use crate::process::ProcessStats;
use crate::state::StateSnapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus' text format 0.0.4.
    Text,
}

impl Format {
    /// OpenMetrics when the client asks for it, else the classic text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Everything one scrape shows.
pub struct Scrape<'a> {
    /// The event instruments ([`crate::metrics()`]'s registry).
    pub events: &'a Registry,
    pub state: Option<&'a StateSnapshot>,
    pub process: Option<&'a ProcessStats>,
    pub data_dir: Option<DiskSpace>,
}

impl Scrape<'_> {
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut now = Registry::default();
        register_build_info(&mut now);
        if let Some(state) = self.state {
            state.register(&mut now);
        }
        if let Some(space) = self.data_dir {
            register_disk(&mut now, space);
        }
        if let Some(process) = self.process {
            process.register(&mut now);
        }
        let mut out = String::with_capacity(64 * 1024);
        encode_registry(&mut out, self.events)?;
        encode_registry(&mut out, &now)?;
        encode_eof(&mut out)?;
        Ok(match format {
            Format::OpenMetrics => out,
            Format::Text => openmetrics_to_text(&out),
        })
    }
}

fn register_build_info(registry: &mut Registry) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![(
        "version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )])
    .set(1);
    registry.register(
        "deploylite_build_info",
        "Always 1; the running DeployLite's version is its label",
        info,
    );
}

fn register_disk(registry: &mut Registry, space: DiskSpace) {
    use prometheus_client::metrics::gauge::Gauge;
    use std::sync::atomic::AtomicU64;
    let gauge = |value: u64| {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(value as f64);
        g
    };
    registry.register(
        "deploylite_data_dir_free_bytes",
        "Free space on the data dir's file system (logs, workspaces, mirrors, artifacts), for unprivileged writers",
        gauge(space.free_bytes),
    );
    registry.register(
        "deploylite_data_dir_size_bytes",
        "Size of the data dir's file system",
        gauge(space.size_bytes),
    );
}

/// OpenMetrics text → Prometheus text 0.0.4: a counter family takes its samples' `_total`
/// name in `# HELP` and `# TYPE`, and `# UNIT` / `# EOF` go (0.0.4 has neither).
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let name = rest.split(' ').next().unwrap_or("");
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RunnerState;

    #[test]
    fn counters_are_named_with_total_in_the_text_format() {
        let om = "# HELP x_deliveries Deliveries.\n# TYPE x_deliveries counter\nx_deliveries_total{a=\"b\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP x_deliveries_total Deliveries.\n# TYPE x_deliveries_total counter\nx_deliveries_total{a=\"b\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn a_scrape_has_every_state_gauge_and_one_eof() {
        let events = crate::Metrics::new();
        events.stage_started(std::time::Duration::from_millis(30));
        let state = StateSnapshot {
            queue_depth: vec![("capacity".into(), 3)],
            running_stages: 2,
            runners: vec![RunnerState {
                name: "r1".into(),
                capacity: 4,
                active: 2,
                online: true,
                last_seen_ms: Some(1_700_000_000_500),
            }],
            outbox_depth: 5,
            outbox_retrying: 1,
            deployments: vec![
                crate::state::DeploymentCount {
                    repo: "app".into(),
                    environment: "production".into(),
                    status: "succeeded".into(),
                    final_status: true,
                    count: 7,
                },
                crate::state::DeploymentCount {
                    repo: "app".into(),
                    environment: "production".into(),
                    status: "waiting".into(),
                    final_status: false,
                    count: 1,
                },
            ],
            environments: vec![crate::state::EnvironmentState {
                repo: "app".into(),
                environment: "production".into(),
                sync: "out_of_sync".into(),
                health: "healthy".into(),
                held: false,
            }],
        };
        let scrape = Scrape {
            events: events.registry(),
            state: Some(&state),
            process: None,
            data_dir: Some(DiskSpace {
                free_bytes: 10,
                size_bytes: 100,
            }),
        };
        let om = scrape.encode(Format::OpenMetrics).unwrap();
        assert_eq!(om.matches("# EOF").count(), 1);
        assert!(om.ends_with("# EOF\n"));
        for expected in [
            "deploylite_queue_depth{reason=\"capacity\"} 3",
            "deploylite_queue_depth{reason=\"needs\"} 0",
            "deploylite_stage_parallel 2",
            "deploylite_runner_capacity{runner=\"r1\"} 4",
            "deploylite_runner_active{runner=\"r1\"} 2",
            "deploylite_runner_online{runner=\"r1\"} 1",
            "deploylite_runner_last_seen_timestamp_seconds{runner=\"r1\"} 1700000000.5",
            "deploylite_forge_outbox_depth 5",
            "deploylite_forge_outbox_retrying 1",
            "deploylite_deployments_total{repo=\"app\",environment=\"production\",status=\"succeeded\"} 7",
            "deploylite_deployments_open{repo=\"app\",environment=\"production\",status=\"waiting\"} 1",
            "deploylite_environment_info{repo=\"app\",environment=\"production\",sync=\"out_of_sync\",health=\"healthy\",held=\"false\"} 1",
            "deploylite_data_dir_free_bytes 10.0",
            "deploylite_scheduler_latency_seconds_count 1",
            "deploylite_build_info{version=",
        ] {
            assert!(om.contains(expected), "missing {expected} in\n{om}");
        }
        let text = scrape.encode(Format::Text).unwrap();
        assert!(!text.contains("# EOF"));
    }
}
