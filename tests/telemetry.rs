//! Traces and logs as an operator reads them: the real daemon with `log_format: json`, a
//! signed GitHub push webhook, a run, and reports to a forge that answers 500. Every webhook
//! delivery, run, stage attempt and forge report is a span whose ids (`delivery`, `run_id`,
//! `stage`, `attempt`) are in the JSON lines logged inside it; and the webhook's path shows in
//! `/metrics` (deliveries, webhook → start, forge reports).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{id, Daemon, RunStatus, TestRepo};
use serde_json::Value;
use std::sync::atomic::Ordering;

const WEBHOOK_SECRET: &str = "a-webhook-secret-for-telemetry";
const DELIVERY: &str = "delivery-7f3a";

/// The daemon's JSON log lines (other lines, e.g. the test kit's headers, are skipped).
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// The first line with `message` logged inside a span named `span` that `pred` accepts.
fn find<'a>(
    lines: &'a [Value],
    text: &str,
    span: &str,
    pred: impl Fn(&Value) -> bool,
) -> &'a Value {
    lines
        .iter()
        .find(|l| message(l) == text && l["span"]["name"] == span && pred(&l["span"]))
        .unwrap_or_else(|| {
            let related: Vec<&Value> = lines.iter().filter(|l| message(l) == text).collect();
            panic!(
                "no `{text}` in a `{span}` span as expected; lines with that message: {related:#?}"
            )
        })
}

async fn wait_for_metric(daemon: &Daemon, line_start: &str, accept: impl Fn(f64) -> bool) {
    let accept = &accept;
    daemon
        .wait_for(
            format_args!("`{line_start}` in /metrics with an accepted value"),
            || async move {
                let text = daemon
                    .http()
                    .get(format!("{}/metrics", daemon.url))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let value = text
                    .lines()
                    .find(|l| l.starts_with(line_start))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok());
                value.filter(|v| accept(*v))
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_ids_of_webhooks_runs_attempts_and_reports() {
    let (forge_url, forge_requests) = common::failing_forge();
    let repo = TestRepo::new();
    repo.write("README", "no pipelines yet\n");
    repo.commit("start");
    // Polls an hour apart: the run below comes from the webhook.
    let config = format!(
        "log_format: json\nrepos:\n  - name: app\n    url: {}\n    branches: [main]\n    poll_interval: 1h\n    forge: github\n    slug: Codertocat/Hello-World\nforges:\n  github:\n    api_url: {forge_url}\n    token: not-a-real-token\n    webhook_secret: {WEBHOOK_SECRET}\n",
        repo.path().display()
    );
    let daemon = Daemon::start(&[&repo], &config).await;
    repo.pipeline(
        "ci.yaml",
        "name: ci\non:\n  push:\nstages:\n  build:\n    steps:\n      - run: echo built\n  test:\n    needs: [build]\n    steps:\n      - run: echo tested\n",
    );
    let head = repo.commit("a pipeline");
    assert_eq!(
        common::send_github_push(&daemon, WEBHOOK_SECRET, DELIVERY, &head).await,
        202
    );
    let run = daemon.wait_for_commit_run("ci", &head).await;
    let run = daemon.wait_run_done(id(&run)).await;
    assert_eq!(run.status, RunStatus::Success, "{run:#}");
    let run_id = run.id;

    // The report fails (the forge answers 500) and is retried: its span is in the log.
    let shared = &daemon;
    let lines = daemon
        .wait_for(
            format_args!("a forge report and the run's end in the log"),
            || async move {
                let lines = json_lines(&shared.stderr());
                let reported = lines
                    .iter()
                    .any(|l| l["span"]["name"] == "forge_report" && l["span"]["run_id"] == run_id);
                let finished = lines.iter().any(|l| message(l) == "run finished");
                (reported && finished).then_some(lines)
            },
        )
        .await;
    assert!(
        forge_requests.load(Ordering::SeqCst) >= 1,
        "the report's span is logged, so it reached the forge"
    );

    let answered = find(
        &lines,
        "webhook delivery answered",
        "webhook_delivery",
        |s| s["delivery"] == DELIVERY,
    );
    assert_eq!(answered["span"]["forge"], "github");
    assert_eq!(answered["span"]["event"], "push");
    assert_eq!(answered["fields"]["result"], "accepted");
    find(&lines, "webhook applied", "webhook_apply", |s| {
        s["delivery"] == DELIVERY
    });

    for stage in ["build", "test"] {
        let started = find(&lines, "stage attempt started", "stage_attempt", |s| {
            s["run_id"] == run_id && s["stage"] == stage && s["attempt"] == 1
        });
        assert_eq!(started["span"]["runner"], "local");
        // The attempt's span is a child of its run's.
        let parents = started["spans"].as_array().unwrap();
        assert!(
            parents
                .iter()
                .any(|p| p["name"] == "run" && p["run_id"] == run_id && p["pipeline"] == "ci"),
            "{started:#}"
        );
        let ended = find(&lines, "stage attempt ended", "stage_attempt", |s| {
            s["run_id"] == run_id && s["stage"] == stage
        });
        assert_eq!(ended["fields"]["status"], "success");
    }
    let finished = find(&lines, "run finished", "run", |s| s["run_id"] == run_id);
    assert_eq!(finished["fields"]["status"], "success");
    assert_eq!(finished["span"]["repo"], "app");
    let report = lines
        .iter()
        .find(|l| l["span"]["name"] == "forge_report" && l["span"]["run_id"] == run_id)
        .unwrap();
    assert_eq!(report["span"]["forge"], "github", "{report:#}");
    assert!(report["span"]["attempt"].as_i64().unwrap() >= 1);

    wait_for_metric(
        &daemon,
        r#"deploylite_webhook_deliveries_total{forge="github",event="push",result="accepted"}"#,
        |n| n == 1.0,
    )
    .await;
    wait_for_metric(
        &daemon,
        r#"deploylite_webhook_to_start_seconds_count{forge="github"}"#,
        |n| n == 1.0,
    )
    .await;
    wait_for_metric(
        &daemon,
        r#"deploylite_forge_delivery_seconds_count{forge="github",result="error"}"#,
        |n| n >= 1.0,
    )
    .await;
    wait_for_metric(&daemon, "deploylite_forge_outbox_retrying", |n| n >= 1.0).await;

    // An unsigned delivery is counted too, under its own result.
    let refused = daemon
        .http()
        .post(format!("{}/webhooks/github", daemon.url))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "forged")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    wait_for_metric(
        &daemon,
        r#"deploylite_webhook_deliveries_total{forge="github",event="push",result="unauthorized"}"#,
        |n| n == 1.0,
    )
    .await;
}
