//! Policy gates end to end: the real binary, a real git repository with its own
//! `.deploylite/policy/*.rego`, an operator bundle from `policy-bundles/`, and a fake GitHub
//! API receiving the commit statuses. Plus `deploylite policy test` and `policy eval`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bundles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy-bundles")
}

/// A GitHub API that answers every request `201 {"id": 1}` and records `(method, path, body)`.
/// Raw HTTP/1.1 over a loopback socket, one request per connection.
struct FakeGithub {
    url: String,
    requests: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl FakeGithub {
    async fn start() -> FakeGithub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    if let Some(request) = serve_one(socket).await {
                        recorded
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(request);
                    }
                });
            }
        });
        FakeGithub { url, requests }
    }

    fn requests(&self) -> Vec<(String, String, Value)> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for a commit status of `context` whose state is final.
    async fn wait_status(&self, sha: &str, context: &str) -> Value {
        let path = format!("/repos/octo/app/statuses/{sha}");
        let path = &path;
        let found = wait::try_until(DEADLINE, || async move {
            let found = self.requests().into_iter().rev().find(|(m, p, body)| {
                m == "POST" && p == path && body["context"] == context && body["state"] != "pending"
            });
            found.map(|(_, _, body)| body)
        })
        .await;
        found.unwrap_or_else(|timed_out| {
            panic!(
                "no final status {context} for {sha} ({timed_out}); requests: {:#?}",
                self.requests()
            )
        })
    }
}

async fn serve_one(mut socket: tokio::net::TcpStream) -> Option<(String, String, Value)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buffer.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length.min(1 << 20) {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buffer[head_end..]).unwrap_or(Value::Null);
    let answer = r#"{"id": 1}"#;
    let response = format!(
        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    socket.write_all(response.as_bytes()).await.ok()?;
    let path = target.split('?').next().unwrap_or("").to_string();
    Some((method, path, body))
}

fn denials(run: &Value) -> Vec<String> {
    run["policy"]["deny"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn runs_denied_by_a_repository_policy_or_an_operator_bundle_end_in_error_and_fail_the_status()
{
    let forge = FakeGithub::start().await;
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\non: push\nstages:\n  build:\n    steps: [{run: 'true'}]\n",
    );
    repo.pipeline(
        "release.yaml",
        "name: release\non: push\nstages:\n  pack:\n    image: quay.io/evil/miner:1\n    steps: [{run: 'true'}]\n",
    );
    repo.pipeline(
        "docs.yaml",
        "name: docs\non: push\nstages:\n  build:\n    steps: [{run: 'true'}]\n",
    );
    repo.write(
        ".deploylite/policy/freeze.rego",
        "package deploylite.run.freeze\nimport rego.v1\n\
         deny contains \"ci is frozen by the repository\" if input.plan.pipeline == \"ci\"\n\
         warn contains sprintf(\"reviewed by %s\", [input.commit.author.name]) if input.plan.pipeline == \"docs\"\n",
    );
    let sha = repo.commit("pipelines and a policy");
    let extra = format!(
        "repos:\n  - name: app\n    url: {}\n    branches: [main]\n    poll_interval: 100ms\n    forge: github\n    slug: octo/app\n\
         forges:\n  github:\n    api_url: {}\n    token: test-token-not-a-secret\n\
         policy:\n  bundles: [{}]\n",
        repo.path().display(),
        forge.url,
        bundles_dir().join("image-registries").display()
    );
    let daemon = Daemon::start(&[&repo], &extra).await;

    let ci = daemon.wait_for_commit_run("ci", &sha).await;
    let ci = daemon
        .wait_run_final(ci["id"].as_i64().unwrap_or_default())
        .await;
    assert_eq!(ci["status"], "error", "{ci:#}");
    assert_eq!(denials(&ci), ["ci is frozen by the repository"]);
    assert_eq!(
        ci["errors"][0]["message"],
        "denied by policy: ci is frozen by the repository"
    );
    assert_eq!(
        ci["policy"]["revision_sha256"].as_str().map(str::len),
        Some(64)
    );
    assert!(ci["policy"]["eval_time_us"].is_u64(), "{ci:#}");

    let release = daemon.wait_for_commit_run("release", &sha).await;
    let release = daemon
        .wait_run_final(release["id"].as_i64().unwrap_or_default())
        .await;
    assert_eq!(release["status"], "error", "{release:#}");
    let expected = "image quay.io/evil/miner:1 is not from an allowed registry (allowed: docker.io/library, ghcr.io/deploylite)";
    assert_eq!(denials(&release), [expected]);
    let stages = daemon.run(release["id"].as_i64().unwrap_or_default()).await;
    assert_eq!(stages["stages"][0]["status"], "skipped", "{stages:#}");

    // Allowed, with the repository's warning recorded; the same revision decided all three.
    let docs = daemon.wait_for_commit_run("docs", &sha).await;
    let docs = daemon
        .wait_run_final(docs["id"].as_i64().unwrap_or_default())
        .await;
    assert_eq!(docs["status"], "success", "{docs:#}");
    assert!(denials(&docs).is_empty());
    assert_eq!(
        docs["policy"]["warn"][0], "reviewed by DeployLite Tests",
        "{docs:#}"
    );
    assert_eq!(
        docs["policy"]["revision_sha256"],
        ci["policy"]["revision_sha256"]
    );

    let status = forge.wait_status(&sha, "deploylite/release").await;
    assert_eq!(status["state"], "error", "{status:#}");
    assert!(
        status["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Denied by policy: image quay.io/evil/miner:1 is not")),
        "{status:#}"
    );
    let status = forge.wait_status(&sha, "deploylite/ci").await;
    assert_eq!(status["state"], "error");
    assert_eq!(
        status["description"],
        "Denied by policy: ci is frozen by the repository"
    );
    assert_eq!(
        forge.wait_status(&sha, "deploylite/docs").await["state"],
        "success"
    );

    // `deploylite status RUN` says why.
    let (code, out, err) = daemon.cli(&["status", &ci["id"].to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("denied by policy"), "{out}");
}

#[test]
fn policy_test_runs_the_shipped_bundles_and_fails_on_a_failing_test() {
    let (code, out, err) = run_cmd({
        let mut cmd = cli();
        cmd.args(["policy", "test"]).arg(bundles_dir());
        cmd
    });
    assert_eq!(code, 0, "{out}{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{out}");
    assert!(
        out.contains("PASS  data.deploylite.run.image_registries_test."),
        "{out}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package p_test\nimport rego.v1\ntest_ok if true\ntest_wrong if 1 == 2\n",
    )
    .expect("write");
    let (code, out, _) = run_cmd({
        let mut cmd = cli();
        cmd.args(["policy", "test"]).arg(dir.path());
        cmd
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  data.p_test.test_wrong"), "{out}");
    assert!(out.contains("PASS  data.p_test.test_ok"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 1 failed"), "{out}");

    let empty = tempfile::tempdir().expect("temp dir");
    let (code, _, err) = run_cmd({
        let mut cmd = cli();
        cmd.args(["policy", "test"]).arg(empty.path());
        cmd
    });
    assert_eq!(code, 2, "{err}");
}

#[test]
fn policy_eval_prints_the_decision_and_exits_1_on_a_deny() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"gate": "deploylite.deploy", "environment": {"name": "production"},
            "now": {"weekday": "sat", "hour": 12, "minute": 0}}"#,
    )
    .expect("write");
    let windows = bundles_dir().join("deployment-windows");
    let (code, out, err) = run_cmd({
        let mut cmd = cli();
        cmd.args(["policy", "eval", "--input"])
            .arg(&input)
            .arg("--bundle")
            .arg(&windows);
        cmd
    });
    assert_eq!(code, 1, "{out}{err}");
    let decision: Value = serde_json::from_str(&out).expect("JSON decision");
    assert!(
        decision["deny"][0]
            .as_str()
            .is_some_and(|m| m.contains("it is sat 12:00 UTC")),
        "{decision:#}"
    );
    assert_eq!(decision["revision_sha256"].as_str().map(str::len), Some(64));

    // The run gate for the same input: the deploy bundle says nothing.
    let (code, out, _) = run_cmd({
        let mut cmd = cli();
        cmd.args(["policy", "eval", "--gate", "run", "--input"])
            .arg(&input)
            .arg("--bundle")
            .arg(&windows);
        cmd
    });
    assert_eq!(code, 0, "{out}");
    let decision: Value = serde_json::from_str(&out).expect("JSON decision");
    assert_eq!(decision["deny"], serde_json::json!([]));
}
