//! OTLP export against a real HTTP receiver: the daemon (`tracing.otlp_endpoint`) and a remote
//! runner (`--otlp-endpoint`) both send their spans as OTLP/HTTP protobuf to a local axum
//! server that records the requests; the runner's span of a stage must be a child of the
//! daemon's span of that attempt (the trace context travels in the lease), itself a child of
//! the run's span.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use common::{id, wait, Daemon, RunStatus, TestRepo, DEADLINE};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const TOKEN: &str = "test-registration-token-otlp";

/// An OTLP/HTTP receiver on loopback: every request body sent to `/v1/traces`.
async fn receiver() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// A span as exported, with the service that sent it.
#[derive(Debug)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    }
}

fn decode(bodies: &[Bytes]) -> Vec<Exported> {
    let mut spans = Vec::new();
    for body in bodies {
        let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }
    spans
}

/// SIGTERM, then waits for the exit (off the runtime: the receiver must keep answering the
/// spans the runner flushes as it stops).
async fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if wait::child_exit_async(child, DEADLINE).await.is_none() {
        let _ = child.kill();
        panic!("the runner ignored SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_stage_span_is_a_child_of_the_daemons_attempt_span() {
    let (endpoint, received) = receiver().await;
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\non:\n  push:\nstages:\n  build:\n    steps:\n      - run: echo built remotely\n",
    );
    let head = repo.commit("a pipeline");
    let mut daemon = Daemon::start(
        &[&repo],
        &format!(
            "local_runner: {{ enabled: false }}\nrunners: {{ registration_tokens: [\"{TOKEN}\"] }}\ntracing:\n  otlp_endpoint: {endpoint}\n"
        ),
    )
    .await;
    let runner_dir = tempfile::tempdir().unwrap();
    let mut runner = Command::new(env!("CARGO_BIN_EXE_deploylite"))
        .args([
            "runner",
            "--server",
            &daemon.url,
            "--name",
            "far",
            "--grace",
            "1s",
        ])
        .arg("--otlp-endpoint")
        .arg(&endpoint)
        .arg("--state-dir")
        .arg(runner_dir.path().join("state"))
        .arg("--work-dir")
        .arg(runner_dir.path().join("work"))
        .env("DEPLOYLITE_RUNNER_TOKEN", TOKEN)
        .env("DEPLOYLITE_LOG", "info")
        .env_remove("DEPLOYLITE_SERVER")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(runner_dir.path().join("runner.stderr")).unwrap())
        .spawn()
        .expect("spawn the runner");

    let run = daemon.wait_for_commit_run("ci", &head).await;
    let run = daemon.wait_run_done(id(&run)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{run:#}\n{}",
        daemon.stderr()
    );
    let run_id = run.id.to_string();
    // Both flush what they buffered when they stop.
    stop(&mut runner).await;
    daemon.stop().await;

    let spans = decode(&received.lock().unwrap());
    let runner_log = std::fs::read_to_string(runner_dir.path().join("runner.stderr")).unwrap();
    let find = |service: &str, name: &str| -> &Exported {
        spans
            .iter()
            .find(|s| {
                s.service == service
                    && s.span.name == name
                    && s.attribute("run_id").as_deref() == Some(run_id.as_str())
            })
            .unwrap_or_else(|| {
                let seen: Vec<(&str, &str)> = spans
                    .iter()
                    .map(|s| (s.service.as_str(), s.span.name.as_str()))
                    .collect();
                panic!("no {name} span from {service}; seen {seen:?}\nrunner log:\n{runner_log}")
            })
    };
    let run_span = find("deploylite", "run");
    let leased = find("deploylite", "stage_attempt");
    let remote = find("deploylite-runner", "stage_attempt");
    assert_eq!(leased.attribute("stage").as_deref(), Some("build"));
    assert_eq!(leased.attribute("runner").as_deref(), Some("far"));
    assert_eq!(remote.attribute("stage").as_deref(), Some("build"));
    assert_eq!(remote.attribute("attempt").as_deref(), Some("1"));

    assert_eq!(leased.span.trace_id, run_span.span.trace_id);
    assert_eq!(
        leased.span.parent_span_id, run_span.span.span_id,
        "the attempt is the run's child"
    );
    assert_eq!(
        remote.span.trace_id, leased.span.trace_id,
        "one trace across both processes"
    );
    assert_eq!(
        remote.span.parent_span_id, leased.span.span_id,
        "the runner's span is the daemon's attempt span's child"
    );
    assert!(
        run_span.span.parent_span_id.is_empty(),
        "a run starts its trace"
    );
}
