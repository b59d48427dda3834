//! Open pull/merge requests, listed from the forges for the watcher's pull request reconcile
//! (`deploylite_reconciler::pulls`, which sees only [`PullRequestEvent`]s):
//!
//! - GitHub: `GET /repos/{owner}/{repo}/pulls?state=open&per_page=100`, page by page while
//!   `Link` has `rel="next"` (https://docs.github.com/en/rest/pulls/pulls#list-pull-requests);
//!   the items are pull request objects, mapped as a `pull_request` webhook's.
//! - GitLab: `GET /projects/:id/merge_requests?state=opened&per_page=100`, page by page while
//!   `x-next-page` is set (https://docs.gitlab.com/api/merge_requests/#list-project-merge-requests,
//!   https://docs.gitlab.com/api/rest/#pagination).
//!
//! Every page is asked for with `If-None-Match` and the ETag of its last answer, so that an
//! unchanged listing is one conditional request answered 304, which GitHub does not count
//! against the rate limit. The pages' items are kept to rebuild a listing from 304s.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploylite_reconciler::events::PullRequestEvent;
use deploylite_reconciler::pulls::{ListError, OpenPullRequests, PullRequestSource};
use octocrab::Octocrab;
use serde_json::Value;

use crate::forges::{ForgeKind, ForgeRepo, Forges};
use crate::payload::{opt_str, pull_request_event, req_i64, req_sha, req_str, MapError};
use crate::report::http::{get_page, DeliveryError, Page};
use crate::report::{github, gitlab};

/// What `PullRequestSource::open` returns (the executors' `BoxFuture`, spelt out so that this
/// crate needs nothing from the runner).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Items per page: the most both forges allow.
const PER_PAGE: usize = 100;
/// Pages read at most (10,000 open pull requests): a bound on one poll's requests.
const MAX_PAGES: usize = 100;

/// One page as last answered: its ETag and its pull requests.
#[derive(Clone)]
struct CachedPage {
    etag: Option<String>,
    open: Vec<PullRequestEvent>,
}

/// Lists open pull requests of the watched repositories that have a forge with credentials.
pub struct ForgePullRequests {
    forges: Arc<Forges>,
    github: Option<github::Github>,
    gitlab: Option<gitlab::Gitlab>,
    /// By DeployLite's repository name.
    pages: Mutex<HashMap<String, Vec<CachedPage>>>,
    /// No listing from a forge before this time (epoch ms): its rate limit is exhausted.
    blocked_until: Mutex<HashMap<ForgeKind, i64>>,
}

impl ForgePullRequests {
    pub fn new(forges: Arc<Forges>, request_timeout: Duration) -> Arc<ForgePullRequests> {
        Arc::new(ForgePullRequests {
            github: forges
                .github
                .as_ref()
                .and_then(|c| github::Github::new(c, request_timeout)),
            gitlab: forges
                .gitlab
                .as_ref()
                .and_then(|c| gitlab::Gitlab::new(c, request_timeout)),
            forges,
            pages: Mutex::new(HashMap::new()),
            blocked_until: Mutex::new(HashMap::new()),
        })
    }

    /// Lists `name`'s open pull requests, unless its forge asked to wait; a rate-limit answer
    /// makes every repository of that forge wait until the reset (or `Retry-After`).
    async fn list_politely(&self, name: &str) -> Result<Option<OpenPullRequests>, DeliveryError> {
        let forge = self.forges.repo_by_name(name).map(|r| r.forge);
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(until) = forge.and_then(|f| lock(&self.blocked_until).get(&f).copied()) {
            if until > now {
                return Err(DeliveryError::Unexpected(format!(
                    "waiting {} s for the rate limit to reset",
                    (until - now) / 1000 + 1
                )));
            }
        }
        let result = self.list(name).await;
        if let (
            Some(forge),
            Err(DeliveryError::Http {
                status,
                retry_after,
                remaining,
                reset,
                ..
            }),
        ) = (forge, &result)
        {
            let limited = *status == 429
                || (*status == 403 && (*remaining == Some(0) || retry_after.is_some()));
            let until = match (retry_after, reset) {
                (Some(secs), _) => {
                    Some(now.saturating_add(i64::try_from(*secs).unwrap_or(3600).min(3600) * 1000))
                }
                (None, Some(reset)) if *remaining == Some(0) => {
                    Some(reset.saturating_mul(1000).min(now + 3_600_000))
                }
                _ => None,
            };
            if let (true, Some(until)) = (limited, until) {
                lock(&self.blocked_until).insert(forge, until);
            }
        }
        result
    }

    async fn list(&self, name: &str) -> Result<Option<OpenPullRequests>, DeliveryError> {
        let Some(repo) = self.forges.repo_by_name(name).cloned() else {
            return Ok(None);
        };
        let (crab, base) = match repo.forge {
            ForgeKind::Github => {
                let Some(gh) = &self.github else {
                    return Ok(None);
                };
                let crab = gh.client_for(&repo.slug).await;
                if matches!(&crab, Err(e) if e.status() == Some(401)) {
                    gh.forget_installation(&repo.slug).await;
                }
                (
                    crab?,
                    format!(
                        "{}/pulls?state=open&per_page={PER_PAGE}",
                        github::repo_path(&repo.slug)?
                    ),
                )
            }
            ForgeKind::Gitlab => {
                let Some(gl) = &self.gitlab else {
                    return Ok(None);
                };
                (
                    gl.client().await?,
                    format!(
                        "{}/merge_requests?state=opened&per_page={PER_PAGE}",
                        gitlab::project_path(&repo.slug)
                    ),
                )
            }
        };
        let cached = lock(&self.pages).get(name).cloned().unwrap_or_default();
        let (pages, unchanged) = read_pages(&crab, &base, &cached, &repo).await?;
        let open = pages.iter().flat_map(|p| p.open.iter().cloned()).collect();
        lock(&self.pages).insert(name.to_string(), pages);
        Ok(Some(OpenPullRequests { open, unchanged }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PullRequestSource for ForgePullRequests {
    fn open_pull_requests<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<Option<OpenPullRequests>, ListError>> {
        Box::pin(async move {
            self.list_politely(repo)
                .await
                .map_err(|e| ListError(e.to_string()))
        })
    }
}

/// Reads every page of a listing, each conditionally on its last ETag; the pages and whether
/// all of them were unchanged.
async fn read_pages(
    crab: &Octocrab,
    base: &str,
    cached: &[CachedPage],
    repo: &ForgeRepo,
) -> Result<(Vec<CachedPage>, bool), DeliveryError> {
    let mut pages = Vec::new();
    let mut unchanged = true;
    for index in 0..MAX_PAGES {
        let path = if index == 0 {
            base.to_string()
        } else {
            format!("{base}&page={}", index + 1)
        };
        let before = cached.get(index);
        let etag = before.and_then(|p| p.etag.as_deref());
        let (page, next) = match (get_page(crab, &path, etag).await?, before) {
            (Page::NotModified, Some(before)) => (before.clone(), cached.len() > index + 1),
            (Page::NotModified, None) => {
                return Err(DeliveryError::Unexpected(
                    "304 Not Modified to an unconditional request".into(),
                ))
            }
            (Page::Fresh { body, etag, next }, _) => {
                unchanged = false;
                let open = map_page(&body, repo).map_err(|e| {
                    DeliveryError::Unexpected(format!("a listed pull request: {}", e.0))
                })?;
                (CachedPage { etag, open }, next)
            }
        };
        pages.push(page);
        if !next {
            break;
        }
    }
    let unchanged = unchanged && pages.len() == cached.len();
    Ok((pages, unchanged))
}

fn map_page(body: &Value, repo: &ForgeRepo) -> Result<Vec<PullRequestEvent>, MapError> {
    let items = body
        .as_array()
        .ok_or_else(|| MapError::missing("(listing)", "an array"))?;
    items
        .iter()
        .map(|item| {
            let mut pr = match repo.forge {
                ForgeKind::Github => {
                    pull_request_event(&repo.slug, req_i64(item, "number")?, item, "")?
                }
                ForgeKind::Gitlab => gitlab_merge_request(&repo.slug, item)?,
            };
            pr.repo = repo.name.clone();
            Ok(pr)
        })
        .collect()
}

/// An item of GitLab's merge request listing. Like the merge request hook, the listing does
/// not say whether the author is a member: a fork's code waits for an approval whoever wrote
/// it. It names the source project by id only.
fn gitlab_merge_request(slug: &str, item: &Value) -> Result<PullRequestEvent, MapError> {
    let iid = req_i64(item, "iid")?;
    let source_project = req_i64(item, "source_project_id")?;
    let target_project = req_i64(item, "target_project_id")?;
    let from_fork = source_project != target_project;
    Ok(PullRequestEvent {
        repo: slug.to_string(),
        number: iid,
        git_ref: format!("refs/merge-requests/{iid}/head"),
        head_sha: req_sha(item, "sha")?.to_string(),
        // As for the hook: the target branch's tip is not given (`diff_refs` is the merge base).
        base_sha: None,
        base_branch: req_str(item, "target_branch")?.to_string(),
        head_repo: if from_fork {
            format!("project {source_project}")
        } else {
            slug.to_string()
        },
        from_fork,
        author: opt_str(item, "author.username")
            .unwrap_or("unknown")
            .to_string(),
        author_is_member: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Value {
        let file = format!("{}/tests/fixtures/{path}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(file).expect("fixture")).expect("JSON")
    }

    fn repo(forge: ForgeKind, slug: &str) -> ForgeRepo {
        ForgeRepo {
            name: "app".into(),
            forge,
            slug: slug.into(),
        }
    }

    #[test]
    fn gitlab_listing_items() {
        // A listing in GitLab's documented shape: MR !1 from project 2 into project 3, a fork.
        let listing = fixture("gitlab/api.project-merge-requests.list.response");
        let open = map_page(&listing, &repo(ForgeKind::Gitlab, "my-group/my-project")).unwrap();
        assert_eq!(
            open,
            vec![PullRequestEvent {
                repo: "app".into(),
                number: 1,
                git_ref: "refs/merge-requests/1/head".into(),
                head_sha: "8888888888888888888888888888888888888888".into(),
                base_sha: None,
                base_branch: "master".into(),
                head_repo: "project 2".into(),
                from_fork: true,
                author: "admin".into(),
                author_is_member: false,
            }]
        );
        let mut bad = listing.clone();
        bad[0]["sha"] = Value::Null;
        let err = map_page(&bad, &repo(ForgeKind::Gitlab, "g/p")).unwrap_err();
        assert!(err.0.contains("`sha`"), "{err:?}");
    }

    #[test]
    fn github_listing_items_are_pull_request_objects() {
        // The pull request example of GitHub's OpenAPI description (`pulls/get`): the listing's
        // items carry the same fields DeployLite reads.
        let spec = fixture("github/openapi-subset");
        let example = spec["components"]["examples"]["pull-request"]["value"].clone();
        let open = map_page(
            &Value::Array(vec![example]),
            &repo(ForgeKind::Github, "octocat/Hello-World"),
        )
        .unwrap();
        assert_eq!(
            open,
            vec![PullRequestEvent {
                repo: "app".into(),
                number: 1347,
                git_ref: "refs/pull/1347/head".into(),
                head_sha: "6dcb09b5b57875f334f61aebed695e2e4193db5e".into(),
                base_sha: Some("6dcb09b5b57875f334f61aebed695e2e4193db5e".into()),
                base_branch: "master".into(),
                head_repo: "octocat/Hello-World".into(),
                from_fork: false,
                author: "octocat".into(),
                author_is_member: true,
            }]
        );
    }
}
