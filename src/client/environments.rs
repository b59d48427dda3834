//! The environment commands (`env list|status|history`, `deploy`, `rollback`, `hold`,
//! `release`, and `approve` of a deployment): thin clients of the daemon's
//! `/api/v1/environments` and `/api/v1/deployments` routes (docs/environments.md).
//!
//! Exit codes as the other client commands: 0 done, 1 refused by the daemon for a reason the
//! user can act on (nothing to approve, no earlier good version, ...), 2 any other error
//! (unknown environment, unreachable daemon, a token that may not do this).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use deploylite_server::{ActionView, DeploymentView, EnvironmentView, RunView};

use super::{check, error_message, Client};
use crate::run_view::short;
use crate::table::{Align, Table};

/// Deployments `env status` shows under the summary.
const STATUS_DEPLOYMENTS: i64 = 10;

/// `REPO/ENV`, split at the last `/`: a repository's name may hold `/` (`org/app/production`),
/// an environment's never does.
pub fn parse_target(target: &str) -> Result<(String, String), String> {
    match target.trim_matches('/').rsplit_once('/') {
        Some((repo, env)) if !repo.is_empty() && !env.is_empty() => {
            Ok((repo.to_string(), env.to_string()))
        }
        _ => Err(format!(
            "expected REPO/ENV (e.g. app/production), got `{target}`"
        )),
    }
}

fn env_path(repo: &str, env: &str) -> String {
    format!(
        "/api/v1/environments/{}/{}",
        deploylite_server::page::encode_query(repo),
        deploylite_server::page::encode_query(env)
    )
}

fn version(v: Option<&str>) -> String {
    v.map(short).unwrap_or("-").to_string()
}

fn hold_text(env: &EnvironmentView) -> String {
    match &env.hold {
        Some(h) => format!("held at {} by {}", version(Some(&h.version)), h.by),
        None => "-".to_string(),
    }
}

/// `deploylite env list [--repo R]`.
pub async fn list(client: &Client, repo: Option<String>, json: bool) -> Result<ExitCode> {
    let query: Vec<(&str, String)> = repo.into_iter().map(|r| ("repo", r)).collect();
    let envs: Vec<EnvironmentView> = client
        .get("/api/v1/environments", &query)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&envs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if envs.is_empty() {
        eprintln!("no environments: add .deploylite/environments/*.yaml on a repository's default branch (docs/environments.md)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("REPO", Align::Left),
        ("ENVIRONMENT", Align::Left),
        ("SYNC", Align::Left),
        ("HEALTH", Align::Left),
        ("CURRENT", Align::Left),
        ("DESIRED", Align::Left),
        ("HOLD", Align::Left),
    ]);
    for e in &envs {
        table.row([
            e.repo.clone(),
            e.name.clone(),
            e.sync.as_str().to_string(),
            e.health.as_str().to_string(),
            version(e.current_version.as_deref()),
            version(e.desired_version.as_deref()),
            hold_text(e),
        ]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

async fn fetch(client: &Client, target: &str, limit: i64) -> Result<EnvironmentView> {
    let (repo, env) = parse_target(target).map_err(anyhow::Error::msg)?;
    client
        .get(&env_path(&repo, &env), &[("limit", limit.to_string())])
        .await?
        .json()
        .await
        .context("unexpected answer")
}

fn history_table(deployments: &[DeploymentView]) -> String {
    let mut table = Table::new(&[
        ("DEPLOYMENT", Align::Right),
        ("STATUS", Align::Left),
        ("ACTION", Align::Left),
        ("VERSION", Align::Left),
        ("PREVIOUS", Align::Left),
        ("TRIGGERED BY", Align::Left),
        ("CREATED", Align::Left),
        ("RUNS", Align::Left),
        ("WAITING FOR / ERRORS", Align::Left),
    ]);
    for d in deployments {
        let mut why: Vec<String> = d.pending_reason.iter().cloned().collect();
        why.extend(d.errors.iter().cloned());
        if let Some(p) = &d.policy {
            why.extend(p.deny.iter().map(|m| format!("policy: {m}")));
        }
        table.row([
            d.id.to_string(),
            d.status.as_str().to_string(),
            d.action.as_str().to_string(),
            version(Some(&d.version)),
            version(d.previous_version.as_deref()),
            d.triggered_by.clone(),
            super::time_text(Some(d.created_at)),
            d.runs
                .iter()
                .map(|r| format!("#{} {}", r.id, r.action))
                .collect::<Vec<_>>()
                .join(", "),
            why.join("; "),
        ]);
    }
    table.render()
}

/// The summary lines of `env status`.
fn render_summary(env: &EnvironmentView) -> String {
    let mut out = format!("{}/{}\n", env.repo, env.name);
    let rows = [
        ("sync", env.sync.as_str().to_string()),
        ("health", env.health.as_str().to_string()),
        (
            "current",
            env.current_version.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "desired",
            env.desired_version.clone().unwrap_or_else(|| "-".into()),
        ),
        ("follows", env.follows.clone()),
        (
            "hold",
            match &env.hold {
                Some(h) => format!(
                    "pinned to {} by {} since {}; `deploylite release {}/{}` lets automation deploy again",
                    short(&h.version),
                    h.by,
                    super::time_text(Some(h.at)),
                    env.repo,
                    env.name
                ),
                None => "no".into(),
            },
        ),
        ("last check", super::time_text(env.last_check_at)),
    ];
    for (k, v) in rows {
        out.push_str(&format!("  {:<12}{v}\n", format!("{k}:")));
    }
    out
}

/// `deploylite env status REPO/ENV`: where it stands and its newest deployments, with what
/// the waiting ones wait for.
pub async fn status(client: &Client, target: &str, json: bool) -> Result<ExitCode> {
    let env = fetch(client, target, STATUS_DEPLOYMENTS).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&env)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = render_summary(&env);
    let deployments = env.deployments.as_deref().unwrap_or_default();
    out.push('\n');
    if deployments.is_empty() {
        out.push_str("no deployments yet\n");
    } else {
        out.push_str(&history_table(deployments));
    }
    crate::text::print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `deploylite env history REPO/ENV`: every deployment, newest first, `--limit` of them.
pub async fn history(client: &Client, target: &str, limit: i64, json: bool) -> Result<ExitCode> {
    let env = fetch(client, target, limit).await?;
    let deployments = env.deployments.unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&deployments)?);
        return Ok(ExitCode::SUCCESS);
    }
    if deployments.is_empty() {
        eprintln!("{}/{} has no deployments yet", env.repo, env.name);
        return Ok(ExitCode::SUCCESS);
    }
    crate::text::print_out(&history_table(&deployments))?;
    Ok(ExitCode::SUCCESS)
}

/// What an environment action asks of the daemon.
pub enum Action {
    Deploy { version: Option<String> },
    Rollback { to: Option<String> },
    Hold,
    Release,
}

/// `deploylite deploy|rollback|hold|release REPO/ENV`.
pub async fn act(client: &Client, target: &str, action: Action) -> Result<ExitCode> {
    let (repo, env) = parse_target(target).map_err(anyhow::Error::msg)?;
    let (name, body) = match &action {
        Action::Deploy { version } => ("deploy", serde_json::json!({ "version": version })),
        Action::Rollback { to } => ("rollback", serde_json::json!({ "to": to })),
        Action::Hold => ("hold", serde_json::json!({})),
        Action::Release => ("release", serde_json::json!({})),
    };
    let url = client.url(&format!("{}/{name}", env_path(&repo, &env)));
    let response = client.send(client.http.post(url).json(&body)).await?;
    if response.status() == reqwest::StatusCode::CONFLICT {
        eprintln!("{}", error_message(response).await);
        return Ok(ExitCode::from(1));
    }
    let answer: ActionView = check(response)
        .await?
        .json()
        .await
        .context("unexpected answer")?;
    println!("{}", answer.message);
    if answer.deployment.is_some() {
        eprintln!("follow it with `deploylite env status {repo}/{env}`");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `deploylite approve ID` approves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approvable {
    /// `run/N`: an untrusted run.
    Run(i64),
    /// `deployment/N`: a waiting deployment.
    Deployment(i64),
    /// `N`: whichever of run N and deployment N waits for an approval.
    Either(i64),
}

pub fn parse_approvable(text: &str) -> Result<Approvable, String> {
    let number = |n: &str| {
        n.trim_start_matches('#')
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
    };
    let parsed = match text.split_once('/') {
        Some(("run" | "runs", n)) => number(n).map(Approvable::Run),
        Some(("deployment" | "deployments" | "deploy", n)) => number(n).map(Approvable::Deployment),
        Some(_) => None,
        None => number(text).map(Approvable::Either),
    };
    parsed.ok_or_else(|| {
        format!("expected a deployment or run id: N, deployment/N or run/N; got `{text}`")
    })
}

/// `deploylite approve ID`.
pub async fn approve(client: &Client, what: Approvable) -> Result<ExitCode> {
    let id = match what {
        Approvable::Run(id) => return super::approve(client, id).await,
        Approvable::Deployment(id) => return approve_deployment(client, id).await,
        Approvable::Either(id) => id,
    };
    // Runs and deployments are numbered apart: the id is whichever of the two waits.
    let run = read::<RunView>(client, &format!("/api/v1/runs/{id}")).await?;
    let deployment = read::<DeploymentView>(client, &format!("/api/v1/deployments/{id}")).await?;
    let run_waits = run.as_ref().is_some_and(|r| r.awaiting_approval);
    let deployment_waits = deployment
        .as_ref()
        .is_some_and(|d| d.status == deploylite_reconciler::status::DeploymentStatus::Waiting);
    match (run_waits, deployment_waits) {
        (true, true) => {
            eprintln!(
                "both run #{id} and deployment {id} wait for an approval: say which, \
                 `deploylite approve run/{id}` or `deploylite approve deployment/{id}`"
            );
            Ok(ExitCode::from(1))
        }
        (true, false) => super::approve(client, id).await,
        (false, true) => approve_deployment(client, id).await,
        // Neither waits: the daemon says why (a run keeps the answer it always had).
        (false, false) => match (run, deployment) {
            (Some(_), Some(d)) => {
                eprintln!(
                    "neither run #{id} nor deployment {id} waits for an approval (the deployment is {})",
                    d.status
                );
                Ok(ExitCode::from(1))
            }
            (Some(_), None) => super::approve(client, id).await,
            (None, Some(_)) => approve_deployment(client, id).await,
            (None, None) => bail!("there is no deployment {id} and no run #{id}"),
        },
    }
}

/// A GET that may answer 404 (None).
async fn read<T: serde::de::DeserializeOwned>(client: &Client, path: &str) -> Result<Option<T>> {
    let response = client.send(client.http.get(client.url(path))).await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    Ok(Some(
        check(response)
            .await?
            .json()
            .await
            .context("unexpected answer")?,
    ))
}

async fn approve_deployment(client: &Client, id: i64) -> Result<ExitCode> {
    let response = client
        .send(
            client
                .http
                .post(client.url(&format!("/api/v1/deployments/{id}/approve"))),
        )
        .await?;
    if response.status() == reqwest::StatusCode::CONFLICT {
        eprintln!("{}", error_message(response).await);
        return Ok(ExitCode::from(1));
    }
    let body: serde_json::Value = check(response).await?.json().await.unwrap_or_default();
    println!(
        "{}",
        body.get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("deployment approved")
    );
    if let Some(reason) = body
        .pointer("/deployment/pending_reason")
        .and_then(|r| r.as_str())
    {
        eprintln!("still waiting: {reason}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_at_the_last_slash() {
        assert_eq!(
            parse_target("app/production"),
            Ok(("app".into(), "production".into()))
        );
        assert_eq!(
            parse_target("org/app/staging"),
            Ok(("org/app".into(), "staging".into()))
        );
        assert!(parse_target("production").is_err());
        assert!(parse_target("/production").is_err());
    }

    #[test]
    fn approvals_name_a_run_or_a_deployment() {
        assert_eq!(parse_approvable("7"), Ok(Approvable::Either(7)));
        assert_eq!(parse_approvable("run/7"), Ok(Approvable::Run(7)));
        assert_eq!(
            parse_approvable("deployment/12"),
            Ok(Approvable::Deployment(12))
        );
        assert!(parse_approvable("0").is_err());
        assert!(parse_approvable("job/3").is_err());
        assert!(parse_approvable("app/production").is_err());
    }
}
