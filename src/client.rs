//! The client commands (`status`, `cancel`, `approve`, `runners`, `token`, `audit`): thin
//! clients of a running daemon's API, authenticated with an API token when one is found.

mod repo_health;

use std::process::ExitCode;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use deploylite_webhook::RunView;

pub struct ListQuery {
    pub repo: Option<String>,
    pub pipeline: Option<String>,
    pub status: Option<String>,
    pub limit: i64,
}

/// A daemon's API, as one user calls it.
pub struct Client {
    server: String,
    base: String,
    http: reqwest::Client,
}

/// Where the client finds its token, in this order: `--token-file`, `DEPLOYLITE_TOKEN`, and,
/// for a daemon on this machine, the initial admin token in its data dir
/// (`$DEPLOYLITE_DATA_DIR` or `./.deploylite-data`).
pub fn find_token(server: &str, token_file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?;
        return Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()));
    }
    if let Some(token) = std::env::var("DEPLOYLITE_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(token));
    }
    if !is_loopback_url(server) {
        return Ok(None);
    }
    let data_dir = std::env::var_os("DEPLOYLITE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DATA_DIR));
    Ok(
        std::fs::read_to_string(data_dir.join(crate::serve::ADMIN_TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
    )
}

fn is_loopback_url(server: &str) -> bool {
    let host = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the API token is not valid header text")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            server: server.to_string(),
            base: server.trim_end_matches('/').to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        request.send().await.map_err(unreachable(&self.server))
    }
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
    match status {
        reqwest::StatusCode::UNAUTHORIZED => bail!(
            "the daemon answered {status}: {message}\n\
             give a token with --token-file FILE or DEPLOYLITE_TOKEN (on the daemon's machine, \
             its data dir's admin.token is used)"
        ),
        _ => bail!("the daemon answered {status}: {message}"),
    }
}

fn unreachable(server: &str) -> impl FnOnce(reqwest::Error) -> anyhow::Error + '_ {
    move |e| {
        anyhow::anyhow!("cannot reach the daemon at {server} ({e}); is `deploylite serve` running? (--server / DEPLOYLITE_SERVER)")
    }
}

pub async fn status(
    client: &Client,
    run: Option<i64>,
    query: ListQuery,
    json: bool,
) -> Result<ExitCode> {
    if let Some(id) = run {
        let response = client
            .send(client.http.get(client.url(&format!("/api/v1/runs/{id}"))))
            .await?;
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
        .send(client.http.get(client.url("/api/v1/runs")).query(&params))
        .await?;
    let runs: Vec<RunView> = check(response)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    repo_health::print_section(client).await;
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

pub async fn cancel(client: &Client, run: i64) -> Result<ExitCode> {
    let response = client
        .send(
            client
                .http
                .post(client.url(&format!("/api/v1/runs/{run}/cancel"))),
        )
        .await?;
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

pub async fn runners(client: &Client, json: bool) -> Result<ExitCode> {
    let response = client
        .send(client.http.get(client.url("/api/v1/runners")))
        .await?;
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

pub async fn revoke(client: &Client, name: &str) -> Result<ExitCode> {
    let response = client
        .send(
            client
                .http
                .post(client.url(&format!("/api/v1/runners/{name}/revoke"))),
        )
        .await?;
    check(response).await?;
    println!("runner `{name}` revoked: its credential no longer works");
    Ok(ExitCode::SUCCESS)
}

/// `deploylite approve RUN`: the run's head commit may run (its sibling runs of that commit too).
pub async fn approve(client: &Client, run: i64) -> Result<ExitCode> {
    let response = client
        .send(
            client
                .http
                .post(client.url(&format!("/api/v1/runs/{run}/approve"))),
        )
        .await?;
    if response.status() == reqwest::StatusCode::CONFLICT {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        eprintln!(
            "{}",
            body.get("error")
                .and_then(|m| m.as_str())
                .unwrap_or("the run is not waiting for approval")
        );
        return Ok(ExitCode::from(1));
    }
    let body: serde_json::Value = check(response).await?.json().await.unwrap_or_default();
    let approved: Vec<String> = body
        .get("approved")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().map(|id| format!("#{id}")).collect())
        .unwrap_or_default();
    println!("approved: run {} will start", approved.join(", run "));
    Ok(ExitCode::SUCCESS)
}

pub async fn token_create(
    client: &Client,
    name: &str,
    role: &str,
    expires_in: Option<std::time::Duration>,
) -> Result<ExitCode> {
    let mut body = serde_json::json!({ "name": name, "role": role });
    if let Some(d) = expires_in {
        body["expires_in_ms"] = serde_json::json!(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    }
    let response = client
        .send(client.http.post(client.url("/api/v1/tokens")).json(&body))
        .await?;
    let created: deploylite_webhook::CreatedToken = check(response)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    // The token alone on stdout, so that `deploylite token create ... > file` keeps it.
    println!("{}", created.token);
    eprintln!(
        "token `{}` ({}) created{}; it is shown only this once",
        created.name,
        created.role.as_str(),
        created
            .expires_at
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| format!(
                ", expires {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn token_revoke(client: &Client, name: &str) -> Result<ExitCode> {
    let response = client
        .send(
            client
                .http
                .post(client.url(&format!("/api/v1/tokens/{name}/revoke"))),
        )
        .await?;
    check(response).await?;
    println!("token `{name}` revoked");
    Ok(ExitCode::SUCCESS)
}

fn time_text(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

pub async fn token_list(client: &Client, json: bool) -> Result<ExitCode> {
    let response = client
        .send(client.http.get(client.url("/api/v1/tokens")))
        .await?;
    let tokens: Vec<serde_json::Value> = check(response)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&tokens)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = tokens
        .iter()
        .map(|t| {
            let text = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let ms = |k: &str| t.get(k).and_then(|v| v.as_i64());
            let state = if ms("revoked_at").is_some() {
                "revoked".to_string()
            } else {
                "live".to_string()
            };
            [
                text("name"),
                text("role"),
                state,
                time_text(ms("expires_at")),
                text("created_by"),
            ]
        })
        .collect();
    print_table(&["NAME", "ROLE", "STATE", "EXPIRES", "CREATED BY"], &rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(client: &Client, limit: i64, json: bool) -> Result<ExitCode> {
    let response = client
        .send(
            client
                .http
                .get(client.url("/api/v1/audit"))
                .query(&[("limit", limit.to_string())]),
        )
        .await?;
    let entries: Vec<serde_json::Value> = check(response)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            [
                time_text(e.get("at").and_then(|v| v.as_i64())),
                text("actor"),
                text("action"),
                text("target"),
                e.get("result").map(|v| v.to_string()).unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["TIME", "ACTOR", "ACTION", "TARGET", "RESULT"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// Columns as wide as their widest cell.
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
