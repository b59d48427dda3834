//! `/repos/{repo}`: a repository's runs, newest first, filtered by branch, status, pipeline
//! and trigger (a plain GET form), [`PAGE`] at a time; "older runs" carries the last id shown
//! as the cursor (`before`), so pages stay stable while new runs arrive.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use deploylite_reconciler::status::RunStatus;
use deploylite_reconciler::store::RunFilter;
use maud::html;
use serde::Deserialize;

use super::layout::{self, segment, short_commit, short_ref, Viewer};
use super::{encode_query, PageError, PageState};

/// Runs per page.
const PAGE: i64 = 50;
/// The longest filter value taken.
const MAX_FILTER: usize = 256;

/// Triggers a run can have, for the filter's choices.
const TRIGGERS: &[&str] = &["push", "tag", "pull_request"];

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filters {
    branch: Option<String>,
    status: Option<String>,
    pipeline: Option<String>,
    trigger: Option<String>,
    before: Option<i64>,
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A branch as typed (`main`) or as a full ref (`refs/heads/main`, `refs/pull/4/head`).
fn full_ref(branch: &str) -> String {
    if branch.starts_with("refs/") {
        branch.to_string()
    } else {
        format!("refs/heads/{branch}")
    }
}

pub(crate) async fn page(
    State(state): State<PageState>,
    Path(repo): Path<String>,
    Query(f): Query<Filters>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    for value in [&f.branch, &f.status, &f.pipeline, &f.trigger] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_FILTER) {
            return Err(PageError::BadRequest(format!(
                "A filter is longer than {MAX_FILTER} characters."
            )));
        }
    }
    let status = match given(&f.status) {
        Some(s) => Some(
            s.parse::<RunStatus>()
                .map_err(|_| PageError::BadRequest(format!("Unknown status `{s}`.")))?,
        ),
        None => None,
    };
    let runs = state
        .store
        .list_runs(&RunFilter {
            repo: Some(repo.clone()),
            pipeline: given(&f.pipeline).map(str::to_string),
            status,
            git_ref: given(&f.branch).map(full_ref),
            trigger: given(&f.trigger).map(str::to_string),
            before: f.before,
            limit: PAGE + 1,
        })
        .await?;
    let more = runs.len() as i64 > PAGE;
    let runs = &runs[..runs.len().min(PAGE as usize)];
    let known = state
        .watcher
        .as_ref()
        .is_none_or(|w| w.repos().statuses().iter().any(|r| r.name == repo));
    if runs.is_empty() && f.before.is_none() && !known {
        return Err(PageError::NotFound(format!(
            "No repository `{repo}` is watched."
        )));
    }
    let mut keep = String::new();
    for (key, value) in [
        ("branch", given(&f.branch)),
        ("status", given(&f.status)),
        ("pipeline", given(&f.pipeline)),
        ("trigger", given(&f.trigger)),
    ] {
        if let Some(value) = value {
            keep.push_str(&format!("&{key}={}", encode_query(value)));
        }
    }
    let base = format!("/repos/{}", segment(&repo));
    let main = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Repositories" } " / " (repo) }
        h1 { (repo) }
        form.filters method="get" action=(base) role="search" aria-label="Filter runs" {
            label { "Branch " input name="branch" value=[given(&f.branch)] placeholder="main" maxlength=(MAX_FILTER); }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in RunStatus::ALL {
                        option value=(s.as_str()) selected[given(&f.status) == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label { "Pipeline " input name="pipeline" value=[given(&f.pipeline)] maxlength=(MAX_FILTER); }
            label { "Trigger "
                select name="trigger" {
                    option value="" { "any" }
                    @for t in TRIGGERS {
                        option value=(t) selected[given(&f.trigger) == Some(*t)] { (t) }
                    }
                }
            }
            button type="submit" { "Filter" }
            @if !keep.is_empty() { a href=(base) { "Clear" } }
        }
        @if runs.is_empty() {
            p { "No runs match." }
        } @else {
            div.scroll {
                table.runs {
                    thead { tr { th scope="col" { "Run" } th scope="col" { "Pipeline" } th scope="col" { "Status" } th scope="col" { "Ref" }
                        th scope="col" { "Commit" } th scope="col" { "Trigger" } th scope="col" { "Created" } } }
                    tbody {
                        @for run in runs {
                            tr data-run=(run.id) {
                                th scope="row" { a href={ "/runs/" (run.id) } { "#" (run.id) } }
                                td { (run.pipeline) }
                                td { (layout::status(run.status.as_str())) }
                                td { (short_ref(&run.git_ref)) }
                                td { code { (short_commit(&run.commit)) } }
                                td { (run.trigger) }
                                td { (layout::time(Some(run.created_at))) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if f.before.is_some() { a href={ (base) "?" (keep.trim_start_matches('&')) } { "Newest runs" } }
            @if more {
                @if let Some(last) = runs.last() {
                    a href={ (base) "?before=" (last.id) (keep) } rel="next" { "Older runs" }
                }
            }
        }
    };
    Ok(layout::page(&repo, &viewer, Some("runs"), main))
}
