//! GitLab: commit statuses and the merge request note. Parameters go as a JSON body (GitLab's
//! REST API accepts JSON for every endpoint; a note body can be far longer than a query
//! string should be).

use std::sync::Arc;
use std::time::Duration;

use deploylite_reconciler::store::Store;
use http::HeaderName;
use octocrab::Octocrab;
use serde_json::json;
use tokio::sync::OnceCell;

use super::comments::CommentApi;
use super::http::{builder, call, encode_segment, DeliveryError, Verb};
use super::render::{self, RunState};
use crate::forges::{GitlabConfig, Secret};

const COMMIT_STATUS: &str = "commit_status";

pub(crate) struct Gitlab {
    api_url: String,
    token: Secret,
    timeout: Duration,
    client: OnceCell<Arc<Octocrab>>,
}

impl Gitlab {
    pub(crate) fn new(config: &GitlabConfig, timeout: Duration) -> Option<Gitlab> {
        Some(Gitlab {
            api_url: config.api_url.clone(),
            token: config.token.clone()?,
            timeout,
            client: OnceCell::new(),
        })
    }

    /// A plain HTTP client (octocrab's stack, no GitHub auth) sending `PRIVATE-TOKEN`.
    pub(crate) async fn client(&self) -> Result<Arc<Octocrab>, DeliveryError> {
        self.client
            .get_or_try_init(|| async {
                builder(&self.api_url, self.timeout)?
                    .add_header(
                        HeaderName::from_static("private-token"),
                        self.token.expose().to_string(),
                    )
                    .build()
                    .map(Arc::new)
                    .map_err(|e| {
                        DeliveryError::Setup(format!("cannot build the GitLab client: {e}"))
                    })
            })
            .await
            .cloned()
    }
}

pub(crate) fn project_path(slug: &str) -> String {
    format!("/projects/{}", encode_segment(slug))
}

/// Sets the run's commit status when its state changed. GitLab refuses a transition to the
/// state a status already has (`400 Cannot transition status via :run from :running`), so the
/// last state sent is remembered, and that answer counts as delivered.
pub(crate) async fn report_status(
    crab: &Octocrab,
    store: &Store,
    repo: &str,
    slug: &str,
    state: &RunState,
) -> Result<(), DeliveryError> {
    let (st, description) = render::gitlab_status(state);
    let key = state.run.id.to_string();
    if store
        .forge_object(repo, COMMIT_STATUS, &key)
        .await?
        .as_deref()
        == Some(st)
    {
        return Ok(());
    }
    let mut body = json!({
        "state": st,
        "name": render::context_name(&state.run.pipeline),
        "description": description,
    });
    if let Some(url) = &state.url {
        body["target_url"] = json!(url);
    }
    let path = format!(
        "{}/statuses/{}",
        project_path(slug),
        encode_segment(&state.run.commit)
    );
    match call(crab, Verb::Post, &path, Some(&body)).await {
        Ok(_) => {}
        Err(DeliveryError::Http {
            status: 400,
            message,
            ..
        }) if message.contains("Cannot transition status") => {
            tracing::debug!(
                run_id = state.run.id.get(),
                state = st,
                "GitLab already has this state"
            );
        }
        Err(e) => return Err(e),
    }
    store
        .set_forge_object(repo, COMMIT_STATUS, &key, st)
        .await?;
    Ok(())
}

/// A merge request's target branch: `GET /projects/:id/merge_requests/:merge_request_iid`,
/// `target_branch` (https://docs.gitlab.com/ee/api/merge_requests.html#get-single-mr).
pub(crate) async fn mr_target(
    crab: &Octocrab,
    slug: &str,
    iid: i64,
) -> Result<String, DeliveryError> {
    let answer = call(
        crab,
        Verb::Get,
        &format!("{}/merge_requests/{iid}", project_path(slug)),
        None,
    )
    .await?;
    answer
        .get("target_branch")
        .and_then(serde_json::Value::as_str)
        .filter(|b| !b.is_empty() && b.len() <= 255)
        .map(str::to_string)
        .ok_or_else(|| DeliveryError::Unexpected("the merge request has no target_branch".into()))
}

pub(crate) fn comment_api<'a>(crab: &'a Octocrab, slug: &str, iid: i64) -> CommentApi<'a> {
    let base = format!("{}/merge_requests/{iid}/notes", project_path(slug));
    CommentApi {
        crab,
        list: format!("{base}?per_page=100&sort=asc&order_by=created_at"),
        create: base.clone(),
        item_prefix: format!("{base}/"),
        update: Verb::Put,
    }
}
