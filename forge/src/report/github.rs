//! GitHub: check runs (GitHub App) or commit statuses (token), and the pull request comment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deploylite_reconciler::store::Store;
use octocrab::models::{AppId, InstallationId};
use octocrab::Octocrab;
use serde_json::{json, Value};
use tokio::sync::{Mutex, OnceCell};

use super::comments::CommentApi;
use super::http::{builder, call, encode_segment, DeliveryError, Verb};
use super::render::{self, RunState, ANNOTATIONS_PER_REQUEST};
use crate::forges::{GithubAuth, GithubConfig};

/// `forge_objects` kinds.
pub(crate) const CHECK_RUN: &str = "check_run";
const CHECK_RUN_ANNOTATIONS: &str = "check_run_annotations";
const COMMIT_STATUS: &str = "commit_status";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A GitHub App: one check run per pipeline run.
    Checks,
    /// A token: commit statuses.
    Statuses,
}

pub(crate) struct Github {
    api_url: String,
    auth: GithubAuth,
    timeout: Duration,
    /// The app client (JWT) or the token client, built on first use (it needs the runtime).
    base: OnceCell<Arc<Octocrab>>,
    /// Installation clients by lower-cased `owner/name`; each caches and refreshes its own
    /// installation token (octocrab renews it when less than 30 s of validity remain).
    installations: Mutex<HashMap<String, Arc<Octocrab>>>,
}

impl Github {
    /// None without credentials: nothing can be reported.
    pub(crate) fn new(config: &GithubConfig, timeout: Duration) -> Option<Github> {
        Some(Github {
            api_url: config.api_url.clone(),
            auth: config.auth.clone()?,
            timeout,
            base: OnceCell::new(),
            installations: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn mode(&self) -> Mode {
        match self.auth {
            GithubAuth::App { .. } => Mode::Checks,
            GithubAuth::Token(_) => Mode::Statuses,
        }
    }

    async fn base(&self) -> Result<Arc<Octocrab>, DeliveryError> {
        self.base
            .get_or_try_init(|| async {
                let b = builder(&self.api_url, self.timeout)?;
                let crab = match &self.auth {
                    GithubAuth::App {
                        app_id,
                        private_key_pem,
                    } => {
                        let key = octocrab::EncodingKey::from_rsa_pem(
                            private_key_pem.expose().as_bytes(),
                        )
                        .map_err(|e| {
                            DeliveryError::Setup(format!(
                                "the GitHub App private key is not a valid RSA PEM key ({e})"
                            ))
                        })?;
                        b.app(AppId(*app_id), key).build()
                    }
                    GithubAuth::Token(token) => {
                        b.personal_token(token.expose().to_string()).build()
                    }
                }
                .map_err(|e| {
                    DeliveryError::Setup(format!("cannot build the GitHub client: {e}"))
                })?;
                Ok(Arc::new(crab))
            })
            .await
            .cloned()
    }

    /// The client that acts on `slug`: its installation's for an app, else the token's.
    pub(crate) async fn client_for(&self, slug: &str) -> Result<Arc<Octocrab>, DeliveryError> {
        let base = self.base().await?;
        if self.mode() == Mode::Statuses {
            return Ok(base);
        }
        let key = slug.to_ascii_lowercase();
        let mut installations = self.installations.lock().await;
        if let Some(client) = installations.get(&key) {
            return Ok(client.clone());
        }
        let answer = call(
            &base,
            Verb::Get,
            &format!("{}/installation", repo_path(slug)?),
            None,
        )
        .await?;
        let id = answer
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| DeliveryError::Unexpected("the installation has no id".into()))?;
        let client = Arc::new(base.installation(InstallationId(id)).map_err(|e| {
            DeliveryError::Setup(format!("cannot build the installation client: {e}"))
        })?);
        tracing::debug!(
            repo = slug,
            installation = id,
            "found the GitHub App installation"
        );
        installations.insert(key, client.clone());
        Ok(client)
    }

    /// Forgets a repository's installation (after an authentication failure: the app may have
    /// been re-installed); the next report looks it up again.
    pub(crate) async fn forget_installation(&self, slug: &str) {
        self.installations
            .lock()
            .await
            .remove(&slug.to_ascii_lowercase());
    }
}

/// `/repos/{owner}/{repo}`, each part encoded.
pub(crate) fn repo_path(slug: &str) -> Result<String, DeliveryError> {
    match slug.split('/').collect::<Vec<_>>().as_slice() {
        [owner, name] if !owner.is_empty() && !name.is_empty() => Ok(format!(
            "/repos/{}/{}",
            encode_segment(owner),
            encode_segment(name)
        )),
        _ => Err(DeliveryError::Setup(format!(
            "`{slug}` is not an owner/name GitHub repository"
        ))),
    }
}

fn id_of(answer: &Value) -> Result<String, DeliveryError> {
    answer
        .get("id")
        .and_then(|id| {
            id.as_u64()
                .map(|n| n.to_string())
                .or_else(|| id.as_str().map(str::to_string))
        })
        .ok_or_else(|| DeliveryError::Unexpected("the created object has no id".into()))
}

/// Creates the run's check run, or moves it to the run's current state. Annotations of an
/// invalid pipeline go 50 per request, each batch once (GitHub appends them).
pub(crate) async fn report_check_run(
    crab: &Octocrab,
    store: &Store,
    repo: &str,
    slug: &str,
    state: &RunState,
) -> Result<(), DeliveryError> {
    let base = repo_path(slug)?;
    let key = state.run.id.to_string();
    let all = render::annotations(state);
    let mut sent = store
        .forge_object(repo, CHECK_RUN_ANNOTATIONS, &key)
        .await?
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
        .min(all.len());
    let mut batch_end = (sent + ANNOTATIONS_PER_REQUEST).min(all.len());

    let mut id = store.forge_object(repo, CHECK_RUN, &key).await?;
    if let Some(existing) = &id {
        let body = render::check_run_body(state, false, &all[sent..batch_end]);
        match call(
            crab,
            Verb::Patch,
            &format!("{base}/check-runs/{existing}"),
            Some(&body),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {
                tracing::warn!(run_id = state.run.id.get(), check_run = %existing, "the check run is gone: creating it again");
                id = None;
                sent = 0;
                batch_end = ANNOTATIONS_PER_REQUEST.min(all.len());
            }
            Err(e) => return Err(e),
        }
    }
    let id = match id {
        Some(id) => id,
        None => {
            let body = render::check_run_body(state, true, &all[sent..batch_end]);
            let answer = call(crab, Verb::Post, &format!("{base}/check-runs"), Some(&body)).await?;
            let id = id_of(&answer)?;
            store.set_forge_object(repo, CHECK_RUN, &key, &id).await?;
            id
        }
    };
    if batch_end > sent {
        sent = batch_end;
        store
            .set_forge_object(repo, CHECK_RUN_ANNOTATIONS, &key, &sent.to_string())
            .await?;
    }
    while sent < all.len() {
        let end = (sent + ANNOTATIONS_PER_REQUEST).min(all.len());
        let body = render::check_run_annotations_body(state, &all[sent..end]);
        call(
            crab,
            Verb::Patch,
            &format!("{base}/check-runs/{id}"),
            Some(&body),
        )
        .await?;
        sent = end;
        store
            .set_forge_object(repo, CHECK_RUN_ANNOTATIONS, &key, &sent.to_string())
            .await?;
    }
    Ok(())
}

/// Sets the run's commit status (skipped when the same state and description were sent last).
pub(crate) async fn report_status(
    crab: &Octocrab,
    store: &Store,
    repo: &str,
    slug: &str,
    state: &RunState,
) -> Result<(), DeliveryError> {
    let (st, description) = render::github_status(state);
    let key = state.run.id.to_string();
    let fingerprint = format!("{st}\n{description}");
    if store
        .forge_object(repo, COMMIT_STATUS, &key)
        .await?
        .as_deref()
        == Some(fingerprint.as_str())
    {
        return Ok(());
    }
    let mut body = json!({
        "state": st,
        "context": render::context_name(&state.run.pipeline),
        "description": description,
    });
    if let Some(url) = &state.url {
        body["target_url"] = json!(url);
    }
    let path = format!(
        "{}/statuses/{}",
        repo_path(slug)?,
        encode_segment(&state.run.commit)
    );
    call(crab, Verb::Post, &path, Some(&body)).await?;
    store
        .set_forge_object(repo, COMMIT_STATUS, &key, &fingerprint)
        .await?;
    Ok(())
}

/// A pull request's base branch: `GET /repos/{owner}/{repo}/pulls/{pull_number}`, `base.ref`
/// (https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request).
pub(crate) async fn pull_base(
    crab: &Octocrab,
    slug: &str,
    number: i64,
) -> Result<String, DeliveryError> {
    let answer = call(
        crab,
        Verb::Get,
        &format!("{}/pulls/{number}", repo_path(slug)?),
        None,
    )
    .await?;
    answer
        .pointer("/base/ref")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty() && b.len() <= 255)
        .map(str::to_string)
        .ok_or_else(|| DeliveryError::Unexpected("the pull request has no base.ref".into()))
}

/// Where a pull request's comments live.
pub(crate) fn comment_api<'a>(
    crab: &'a Octocrab,
    slug: &str,
    number: i64,
) -> Result<CommentApi<'a>, DeliveryError> {
    let base = repo_path(slug)?;
    Ok(CommentApi {
        crab,
        list: format!("{base}/issues/{number}/comments?per_page=100"),
        create: format!("{base}/issues/{number}/comments"),
        item_prefix: format!("{base}/issues/comments/"),
        update: Verb::Patch,
    })
}
