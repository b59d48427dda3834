//! The one pull/merge request comment: created with the first report, edited in place after,
//! found again by its hidden marker when its id is not known (a lost database row, a comment
//! created just before a crash).

use std::hash::{DefaultHasher, Hash, Hasher};

use deploylite_reconciler::store::Store;
use octocrab::Octocrab;
use serde_json::{json, Value};

use super::http::{call, DeliveryError, Verb};
use super::render::PR_COMMENT_MARKER;

/// `forge_objects` kinds: the comment's id, and a digest of the body last written.
pub(crate) const PR_COMMENT: &str = "pr_comment";
const PR_COMMENT_DIGEST: &str = "pr_comment_digest";

/// Pages of 100 comments searched for the marker before a new comment is created.
const MAX_PAGES: usize = 10;

pub(crate) struct CommentApi<'a> {
    pub crab: &'a Octocrab,
    /// Lists comments; already carries a query (`?per_page=100`), `&page=N` is appended.
    pub list: String,
    pub create: String,
    /// `item_prefix` + id is one comment.
    pub item_prefix: String,
    /// PATCH on GitHub, PUT on GitLab.
    pub update: Verb,
}

fn digest(body: &str) -> String {
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn id_of(value: &Value) -> Option<String> {
    let id = value.get("id")?;
    id.as_u64()
        .map(|n| n.to_string())
        .or_else(|| id.as_str().map(str::to_string))
}

/// Makes the comment of pull request `number` of `repo` say `body`.
pub(crate) async fn upsert(
    api: &CommentApi<'_>,
    store: &Store,
    repo: &str,
    number: i64,
    body: &str,
) -> Result<(), DeliveryError> {
    let key = number.to_string();
    let payload = json!({ "body": body });
    let digest = digest(body);
    if let Some(id) = store.forge_object(repo, PR_COMMENT, &key).await? {
        if store
            .forge_object(repo, PR_COMMENT_DIGEST, &key)
            .await?
            .as_deref()
            == Some(digest.as_str())
        {
            return Ok(());
        }
        match call(
            api.crab,
            api.update,
            &format!("{}{id}", api.item_prefix),
            Some(&payload),
        )
        .await
        {
            Ok(_) => {
                store
                    .set_forge_object(repo, PR_COMMENT_DIGEST, &key, &digest)
                    .await?;
                return Ok(());
            }
            Err(e) if e.status() == Some(404) => {
                tracing::info!(
                    repo,
                    pull_request = number,
                    "the pull request comment is gone: writing it again"
                );
            }
            Err(e) => return Err(e),
        }
    }
    let id = match find(api).await? {
        Some(id) => {
            call(
                api.crab,
                api.update,
                &format!("{}{id}", api.item_prefix),
                Some(&payload),
            )
            .await?;
            id
        }
        None => {
            let created = call(api.crab, Verb::Post, &api.create, Some(&payload)).await?;
            id_of(&created)
                .ok_or_else(|| DeliveryError::Unexpected("the created comment has no id".into()))?
        }
    };
    store.set_forge_object(repo, PR_COMMENT, &key, &id).await?;
    store
        .set_forge_object(repo, PR_COMMENT_DIGEST, &key, &digest)
        .await?;
    Ok(())
}

/// Our comment among the existing ones, by its marker.
async fn find(api: &CommentApi<'_>) -> Result<Option<String>, DeliveryError> {
    for page in 1..=MAX_PAGES {
        let answer = call(
            api.crab,
            Verb::Get,
            &format!("{}&page={page}", api.list),
            None,
        )
        .await?;
        let items = answer.as_array().map(Vec::as_slice).unwrap_or_default();
        let ours = items.iter().find(|c| {
            c.get("body")
                .and_then(Value::as_str)
                .is_some_and(|b| b.contains(PR_COMMENT_MARKER))
        });
        if let Some(comment) = ours {
            return Ok(id_of(comment));
        }
        if items.len() < 100 {
            break;
        }
    }
    Ok(None)
}
