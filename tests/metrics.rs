//! `GET /metrics` as operators meet it: scraped by a real Prometheus (Debian's `prometheus`,
//! started here on loopback) after a known run, checked by `promtool`, and held against the
//! Grafana dashboard and alert rules in charts/deploylite/ (every metric they name must be one
//! the daemon really exports).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{free_port, id, status, wait, Daemon, TestRepo, DEADLINE};
use serde_json::Value;

const CHARTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/deploylite");

/// A program on PATH, or a skip (a failure under CI, whose .ci/run installs it).
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        deploylite_testkit::skip(
            &format!("tests/metrics.rs needs `{name}`"),
            "install Debian's `prometheus` package (.ci/run does)",
        );
    }
    found
}

/// A repository with a pipeline of two stages that succeeds and one of one stage that fails.
fn known_repo() -> TestRepo {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\non:\n  push:\nstages:\n  build:\n    steps:\n      - run: echo built\n  test:\n    needs: [build]\n    steps:\n      - run: echo tested\n",
    );
    repo.pipeline(
        "broken.yaml",
        "name: broken\non:\n  push:\nstages:\n  fail:\n    steps:\n      - run: exit 3\n",
    );
    repo.commit("two pipelines");
    repo
}

async fn both_runs_final(daemon: &Daemon) -> Vec<Value> {
    let runs = daemon
        .wait_for_runs("both runs final", |runs| {
            runs.len() == 2 && runs.iter().all(common::is_final)
        })
        .await;
    let by_pipeline = |p: &str| {
        runs.iter()
            .find(|r| r["pipeline"] == p)
            .unwrap_or_else(|| panic!("no {p} run in {runs:#?}"))
    };
    assert_eq!(status(by_pipeline("ci")), "success");
    assert_eq!(status(by_pipeline("broken")), "failed");
    runs
}

async fn scrape(daemon: &Daemon, accept: Option<&str>) -> (String, String) {
    let mut request = daemon.http().get(format!("{}/metrics", daemon.url));
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.text().await.unwrap())
}

/// Waits until the recorder has seen the runs end (it follows the scheduler's events).
async fn scrape_after_runs(daemon: &Daemon) -> String {
    daemon
        .wait_for("the runs in /metrics", || async {
            let (_, text) = scrape(daemon, None).await;
            let shown = text.contains(r#"deploylite_pipeline_duration_seconds_count{repo="app",pipeline="broken",status="failed"} 1"#)
                && text.contains(r#"deploylite_pipeline_duration_seconds_count{repo="app",pipeline="ci",status="success"} 1"#);
            shown.then_some(text)
        })
        .await
}

/// A real Prometheus scraping `target` every second, on a free loopback port.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(binary: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: deploylite\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let http = common::http_client();
        let ready = format!("{}/-/ready", prometheus.url);
        let became = wait::try_until(DEADLINE, || async {
            let answer = http.get(&ready).send().await;
            answer.is_ok_and(|r| r.status().is_success()).then_some(())
        })
        .await;
        assert!(
            became.is_ok(),
            "prometheus did not become ready:\n{}",
            prometheus.log()
        );
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query that returns one series, waiting until it does and
    /// `accept` holds for it.
    async fn value(&self, query: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let http = common::http_client();
        let (http, accept) = (&http, &accept);
        let last = std::sync::Mutex::new(Value::Null);
        let last = &last;
        let found = wait::try_until(DEADLINE, || async move {
            let answer: Value = http
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", query)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let value = match answer["data"]["result"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
                _ => None,
            };
            if let Ok(mut last) = last.lock() {
                *last = answer;
            }
            value.filter(|v| accept(*v))
        })
        .await;
        found.unwrap_or_else(|timed_out| {
            let answer = last.lock().map(|a| a.clone()).unwrap_or_default();
            panic!(
                "`{query}` never gave an accepted value ({timed_out}); last answer: {answer}\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_numbers_of_a_known_run() {
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let repo = known_repo();
    let daemon = Daemon::start(&[&repo], "").await;
    let runs = both_runs_final(&daemon).await;
    let text = scrape_after_runs(&daemon).await;

    // The classic text format passes promtool's lint as it is.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // No run id, commit or branch in any label.
    for run in &runs {
        let commit = run["commit"].as_str().unwrap();
        assert!(!text.contains(commit), "a commit in the metrics:\n{text}");
        assert!(!text.contains(&format!("\"{}\"", id(run))));
    }
    assert!(!text.contains("refs/heads"));

    // Prometheus asks for OpenMetrics, and reads the same numbers.
    let (content_type, openmetrics) =
        scrape(&daemon, Some("application/openmetrics-text;version=1.0.0")).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(openmetrics.ends_with("# EOF\n"));

    let server = Prometheus::start(&prometheus, &format!("127.0.0.1:{}", daemon.port)).await;
    let exactly = |n: f64| move |v: f64| v == n;
    server.value(r#"up{job="deploylite"}"#, exactly(1.0)).await;
    server
        .value(r#"deploylite_pipeline_duration_seconds_count{repo="app",pipeline="ci",status="success"}"#, exactly(1.0))
        .await;
    server
        .value(
            r#"deploylite_pipeline_failure_total{repo="app",pipeline="broken"}"#,
            exactly(1.0),
        )
        .await;
    server
        .value(
            r#"sum(deploylite_pipeline_failure_total{pipeline="ci"}) or vector(0)"#,
            exactly(0.0),
        )
        .await;
    server
        .value(
            r#"sum(deploylite_stage_duration_seconds_count{repo="app",status="success"})"#,
            exactly(2.0),
        )
        .await;
    server
        .value(
            r#"sum(deploylite_stage_duration_seconds_count{repo="app",status="failed"})"#,
            exactly(1.0),
        )
        .await;
    // Three stages started, each measured from the moment it could run.
    server
        .value("deploylite_scheduler_latency_seconds_count", exactly(3.0))
        .await;
    server
        .value(
            r#"deploylite_runner_capacity{runner="local"}"#,
            exactly(4.0),
        )
        .await;
    server
        .value(r#"deploylite_runner_online{runner="local"}"#, exactly(1.0))
        .await;
    server
        .value(r#"deploylite_runner_active{runner="local"}"#, exactly(0.0))
        .await;
    server
        .value("deploylite_stage_parallel", exactly(0.0))
        .await;
    server
        .value("sum(deploylite_queue_depth)", exactly(0.0))
        .await;
    server
        .value("count(deploylite_queue_depth)", |n| n >= 9.0)
        .await;
    server
        .value("deploylite_forge_outbox_depth", exactly(0.0))
        .await;
    server
        .value("deploylite_data_dir_free_bytes", |b| b > 0.0)
        .await;
    server
        .value("process_resident_memory_bytes", |b| b > 1e6)
        .await;
    server
        .value("time() - process_start_time_seconds", |age| {
            age > 0.0 && age < 600.0
        })
        .await;
}

/// Metric names a query text mentions.
fn names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("deploylite_") || word.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// Every sample name a scrape (Prometheus text format) can show: each family's samples, and
/// the ones its `# TYPE` implies (a histogram observed nowhere yet still has its family).
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_name_only_exported_metrics() {
    let dashboard_text =
        std::fs::read_to_string(format!("{CHARTS}/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let datasource = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    let variable = format!("${{{}}}", datasource["name"].as_str().unwrap());
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(panel["gridPos"]["w"].as_u64().unwrap() <= 24);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], variable, "{}", panel["title"]);
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        queries.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string()),
        );
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            queries.push(query.to_string());
        }
    }
    let rules = std::fs::read_to_string(format!("{CHARTS}/prometheus-rules.yaml")).unwrap();
    let expressions: Vec<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut named = names_in(&queries.join("\n"));
    assert!(named.len() >= 15, "{named:?}");
    named.extend(names_in(&expressions.join("\n")));

    // A scenario in which every metric has a sample: runs of the daemon's own runner, a
    // remote runner heard from, a signed webhook that causes a run, and reports to a forge
    // (which fails them).
    const SECRET: &str = "a-webhook-secret-for-metrics";
    const TOKEN: &str = "test-registration-token-metrics";
    let (forge_url, _) = common::failing_forge();
    let repo = known_repo();
    let config = format!(
        "repos:\n  - name: app\n    url: {}\n    branches: [main]\n    poll_interval: 100ms\n    forge: github\n    slug: Codertocat/Hello-World\nforges:\n  github:\n    api_url: {forge_url}\n    token: not-a-real-token\n    webhook_secret: {SECRET}\nrunners: {{ registration_tokens: [\"{TOKEN}\"] }}\n",
        repo.path().display()
    );
    let daemon = Daemon::start(&[&repo], &config).await;
    let runner_dir = tempfile::tempdir().unwrap();
    let mut runner = Command::new(env!("CARGO_BIN_EXE_deploylite"))
        .args([
            "runner",
            "--server",
            &daemon.url,
            "--name",
            "far",
            "--labels",
            "far-only",
        ])
        .arg("--state-dir")
        .arg(runner_dir.path().join("state"))
        .arg("--work-dir")
        .arg(runner_dir.path().join("work"))
        .env("DEPLOYLITE_RUNNER_TOKEN", TOKEN)
        .env_remove("DEPLOYLITE_SERVER")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the runner");
    both_runs_final(&daemon).await;
    // The webhook comes first; the commit it names is recorded by the poll it pokes.
    assert_eq!(
        common::send_github_push(&daemon, SECRET, "metrics-1", "0".repeat(40).as_str()).await,
        202
    );
    repo.write("more", "x\n");
    repo.commit("after the webhook");

    let daemon = &daemon;
    let named = &named;
    let all_exported = wait::try_until(DEADLINE, || async move {
        let exported = exported_names(&scrape(daemon, None).await.1);
        named.is_subset(&exported).then_some(())
    })
    .await;
    if all_exported.is_err() {
        let _ = runner.kill();
        let exported = exported_names(&scrape(daemon, None).await.1);
        let missing: Vec<&String> = named.difference(&exported).collect();
        panic!(
            "the dashboard or the rules name metrics the daemon does not export: {missing:?}\nexported: {exported:?}"
        );
    }
    let _ = runner.kill();
    let _ = runner.wait();
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        ["check", "rules", "prometheus-rules.yaml"],
        ["test", "rules", "prometheus-rules.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(CHARTS)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
