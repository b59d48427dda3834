//! `deploylite status` and `deploylite cancel`: thin clients of a running daemon's API.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use deploylite_webhook::RunView;

pub struct ListQuery {
    pub repo: Option<String>,
    pub pipeline: Option<String>,
    pub status: Option<String>,
    pub limit: i64,
}

fn http() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body
        .get("error")
        .or_else(|| body.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or("");
    bail!("the daemon answered {status}: {message}")
}

fn unreachable(server: &str) -> impl FnOnce(reqwest::Error) -> anyhow::Error + '_ {
    move |e| {
        anyhow::anyhow!("cannot reach the daemon at {server} ({e}); is `deploylite serve` running? (--server / DEPLOYLITE_SERVER)")
    }
}

pub async fn status(
    server: &str,
    run: Option<i64>,
    query: ListQuery,
    json: bool,
) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let client = http()?;
    if let Some(id) = run {
        let response = client
            .get(format!("{base}/api/v1/runs/{id}"))
            .send()
            .await
            .map_err(unreachable(server))?;
        let run: RunView = check(response)
            .await?
            .json()
            .await
            .context("unexpected answer")?;
        if json {
            println!("{}", serde_json::to_string_pretty(&run)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "run #{} {}/{} {} {}",
            run.id,
            run.repo,
            run.pipeline,
            run.git_ref,
            short(&run.commit)
        );
        println!(
            "status: {}{}",
            run.status,
            run.pending_reason
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        if let Some(errors) = run.errors.as_ref().and_then(|e| e.as_array()) {
            for e in errors {
                let text = match (e.get("file"), e.get("line"), e.get("col"), e.get("message")) {
                    (Some(f), Some(l), Some(c), Some(m)) => format!(
                        "{}:{}:{}: {}",
                        f.as_str().unwrap_or(""),
                        l,
                        c,
                        m.as_str().unwrap_or("")
                    ),
                    (_, _, _, Some(m)) => m.as_str().unwrap_or("").to_string(),
                    _ => e.to_string(),
                };
                println!("  {text}");
            }
        }
        println!(
            "\n{:<20} {:<10} {:>7} {:>5}  WAITING FOR",
            "STAGE", "STATUS", "ATTEMPT", "EXIT"
        );
        for s in run.stages.unwrap_or_default() {
            println!(
                "{:<20} {:<10} {:>7} {:>5}  {}",
                s.name,
                s.status.as_str(),
                s.attempt,
                s.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.pending_reason.unwrap_or_default()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut params = vec![("limit", query.limit.to_string())];
    for (k, v) in [
        ("repo", query.repo),
        ("pipeline", query.pipeline),
        ("status", query.status),
    ] {
        if let Some(v) = v {
            params.push((k, v));
        }
    }
    let response = client
        .get(format!("{base}/api/v1/runs"))
        .query(&params)
        .send()
        .await
        .map_err(unreachable(server))?;
    let runs: Vec<RunView> = check(response)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<18} {:<14} {:<10} {:<22} {:<12} CREATED",
        "RUN", "REPO", "PIPELINE", "STATUS", "REF", "COMMIT"
    );
    for r in runs {
        println!(
            "{:>6}  {:<18} {:<14} {:<10} {:<22} {:<12} {}",
            r.id,
            r.repo,
            r.pipeline,
            r.status.as_str(),
            r.git_ref.strip_prefix("refs/heads/").unwrap_or(&r.git_ref),
            short(&r.commit),
            r.created_at.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(server: &str, run: i64) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let response = http()?
        .post(format!("{base}/api/v1/runs/{run}/cancel"))
        .send()
        .await
        .map_err(unreachable(server))?;
    if response.status() == reqwest::StatusCode::CONFLICT {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        eprintln!(
            "{}",
            body.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("the run is already finished")
        );
        return Ok(ExitCode::from(1));
    }
    let body: serde_json::Value = check(response).await?.json().await.unwrap_or_default();
    println!(
        "{}",
        body.get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("cancellation requested")
    );
    Ok(ExitCode::SUCCESS)
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

pub async fn runners(server: &str, json: bool) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let response = http()?
        .get(format!("{base}/api/v1/runners"))
        .send()
        .await
        .map_err(unreachable(server))?;
    let runners: Vec<deploylite_webhook::runners::RunnerView> = check(response)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runners)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<8} {:<11} {:>8} {:>8}  {:<24} LABELS",
        "NAME", "STATUS", "EXECUTOR", "RUNNING", "CAPACITY", "LAST SEEN"
    );
    for r in runners {
        println!(
            "{:<20} {:<8} {:<11} {:>8} {:>8}  {:<24} {}",
            r.name,
            r.status,
            r.executor,
            r.running,
            r.capacity,
            r.last_seen.unwrap_or_else(|| "-".into()),
            r.labels.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke(server: &str, name: &str) -> Result<ExitCode> {
    let base = server.trim_end_matches('/');
    let response = http()?
        .post(format!("{base}/api/v1/runners/{name}/revoke"))
        .send()
        .await
        .map_err(unreachable(server))?;
    check(response).await?;
    println!("runner `{name}` revoked: its credential no longer works");
    Ok(ExitCode::SUCCESS)
}
