//! The client commands (`status`, `cancel`, `approve`, `runners`, `token`, `audit`, and the
//! environment commands in `environments`): thin
//! clients of a running daemon's API, authenticated with an API token when one is found.

pub mod environments;
mod repo_health;

use std::process::ExitCode;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use deploylite_server::RunView;

use crate::table::{Align, Table};

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
    /// The same client without the token, for reads retried after a guessed token is refused.
    anonymous: reqwest::Client,
    token_origin: Option<TokenOrigin>,
}

/// A token the client found, and where: a refused token is explained by naming its origin.
pub struct FoundToken {
    pub value: String,
    pub origin: TokenOrigin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// `--token-file FILE`.
    Flag(PathBuf),
    /// `DEPLOYLITE_TOKEN`.
    Environment,
    /// The initial admin token of a daemon on this machine, guessed from a data dir. It may
    /// belong to another daemon than the one asked (a second checkout's, an example's), so a
    /// read it cannot authorise is retried anonymously.
    DataDir(PathBuf),
}

impl std::fmt::Display for TokenOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenOrigin::Flag(path) => write!(f, "--token-file {}", path.display()),
            TokenOrigin::Environment => f.write_str("DEPLOYLITE_TOKEN"),
            TokenOrigin::DataDir(path) => {
                write!(f, "{} (found in a local data dir)", path.display())
            }
        }
    }
}

/// Where the client finds its token, in this order: `--token-file`, `DEPLOYLITE_TOKEN`, and,
/// for a daemon on this machine, the initial admin token in its data dir
/// (`$DEPLOYLITE_DATA_DIR` or `./.deploylite-data`).
pub fn find_token(server: &str, token_file: Option<&Path>) -> Result<Option<FoundToken>> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?;
        return Ok(Some(text.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|value| FoundToken {
                value,
                origin: TokenOrigin::Flag(path.to_path_buf()),
            }));
    }
    if let Some(value) = std::env::var("DEPLOYLITE_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(FoundToken {
            value,
            origin: TokenOrigin::Environment,
        }));
    }
    if !is_loopback_url(server) {
        return Ok(None);
    }
    let data_dir = std::env::var_os("DEPLOYLITE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DATA_DIR));
    let path = data_dir.join(crate::serve::ADMIN_TOKEN_FILE);
    Ok(std::fs::read_to_string(&path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .map(|value| FoundToken {
            value,
            origin: TokenOrigin::DataDir(path),
        }))
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
    pub fn new(server: &str, token: Option<FoundToken>) -> Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        let token_origin = token.as_ref().map(|t| t.origin.clone());
        if let Some(token) = token {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.value))
                    .with_context(|| {
                        format!(
                            "the API token from {} is not valid header text",
                            token.origin
                        )
                    })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let builder = || reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        let http = builder()
            .default_headers(headers)
            .build()
            .context("cannot build the HTTP client")?;
        let anonymous = builder().build().context("cannot build the HTTP client")?;
        Ok(Client {
            server: server.to_string(),
            base: server.trim_end_matches('/').to_string(),
            http,
            anonymous,
            token_origin,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let request = request.build().context("cannot build the request")?;
        // A token guessed from a local data dir may be another daemon's: a read it cannot
        // authorise is asked again without it, which works wherever anonymous reads do.
        let retry = match &self.token_origin {
            Some(TokenOrigin::DataDir(_)) if request.method() == reqwest::Method::GET => {
                request.try_clone()
            }
            _ => None,
        };
        let response = self
            .http
            .execute(request)
            .await
            .map_err(unreachable(&self.server))?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let response = match retry {
            Some(request) => self
                .anonymous
                .execute(request)
                .await
                .map_err(unreachable(&self.server))?,
            None => response,
        };
        match (&self.token_origin, response.status()) {
            (Some(origin), reqwest::StatusCode::UNAUTHORIZED) => {
                let message = error_message(response).await;
                bail!(
                    "the daemon at {} refused the token from {origin}: {message}\n\
                     give this daemon's token with --token-file FILE or DEPLOYLITE_TOKEN",
                    self.server
                )
            }
            _ => Ok(response),
        }
    }

    /// GET `path` (with `query`), expecting a success; the raw answer.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<reqwest::Response> {
        check(
            self.send(self.http.get(self.url(path)).query(query))
                .await?,
        )
        .await
    }

    /// GET `path`, expecting a success with JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.get(path, &[])
            .await?
            .json()
            .await
            .context("unexpected answer")
    }
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let message = error_message(response).await;
    match status {
        reqwest::StatusCode::UNAUTHORIZED => bail!(
            "the daemon answered {status}: {message}\n\
             give a token with --token-file FILE or DEPLOYLITE_TOKEN (on the daemon's machine, \
             its data dir's admin.token is used)"
        ),
        _ => bail!("the daemon answered {status}: {message}"),
    }
}

/// The `error` (or `message`) of an API error's JSON body; empty when there is none.
async fn error_message(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body.get("error")
        .or_else(|| body.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string()
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
        let run: RunView = client.get_json(&format!("/api/v1/runs/{id}")).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&run)?);
        } else {
            crate::text::print_out(&crate::run_view::render(&run))?;
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
    } else {
        repo_health::print_section(client).await;
        crate::text::print_out(&crate::run_view::render_list(&runs))?;
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

pub async fn runners(client: &Client, json: bool) -> Result<ExitCode> {
    let response = client
        .send(client.http.get(client.url("/api/v1/runners")))
        .await?;
    let runners: Vec<deploylite_server::runners::RunnerView> = check(response)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runners)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("STATUS", Align::Left),
        ("EXECUTOR", Align::Left),
        ("RUNNING", Align::Right),
        ("CAPACITY", Align::Right),
        ("LAST SEEN", Align::Left),
        ("LABELS", Align::Left),
    ]);
    for r in runners {
        table.row([
            r.name,
            r.status,
            r.executor,
            r.running.to_string(),
            r.capacity.to_string(),
            r.last_seen.unwrap_or_else(|| "-".into()),
            r.labels.join(","),
        ]);
    }
    table.print()?;
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
    let runs = if approved.len() == 1 { "run" } else { "runs" };
    println!("approved: {runs} {} will start", approved.join(", "));
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
    let created: deploylite_server::CreatedToken = check(response)
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
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("ROLE", Align::Left),
        ("STATE", Align::Left),
        ("EXPIRES", Align::Left),
        ("CREATED BY", Align::Left),
    ]);
    for t in &tokens {
        let text = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let ms = |k: &str| t.get(k).and_then(|v| v.as_i64());
        let state = if ms("revoked_at").is_some() {
            "revoked"
        } else {
            "live"
        };
        table.row([
            text("name"),
            text("role"),
            state.to_string(),
            time_text(ms("expires_at")),
            text("created_by"),
        ]);
    }
    table.print()?;
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
    let mut table = Table::new(&[
        ("TIME", Align::Left),
        ("ACTOR", Align::Left),
        ("ACTION", Align::Left),
        ("TARGET", Align::Left),
        ("RESULT", Align::Left),
    ]);
    for e in &entries {
        let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        table.row([
            time_text(e.get("at").and_then(|v| v.as_i64())),
            text("actor"),
            text("action"),
            text("target"),
            e.get("result").map(|v| v.to_string()).unwrap_or_default(),
        ]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}
