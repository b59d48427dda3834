//! `/environments`: every environment with where it stands (sync, health, current and desired
//! versions, hold); `/environments/{repo}/{env}`: one environment and its deployment history,
//! newest first, with what each waits for and links to the runs that carried it out.
//!
//! Like the API, the environment route takes the rest of the path, so a repository name
//! holding `/` works encoded (`org%2Fapp`, as the links here write it) or not.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use deploylite_reconciler::store::{EnvironmentRecord, Hold};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, segment, short_commit, Viewer};
use super::{PageError, PageState};

/// Deployments per page of an environment's history.
const PAGE: i64 = 50;
/// The longest path (repository and environment names) taken.
const MAX_PATH: usize = 1024;

fn version(v: Option<&str>) -> Markup {
    match v {
        Some(v) if !v.is_empty() => html! { code title=(v) { (short_commit(v)) } },
        _ => html! { "—" },
    }
}

fn hold(h: Option<&Hold>) -> Markup {
    match h {
        Some(h) => html! {
            span.status.s-held { span aria-hidden="true" { "⏸ " } "held" }
            " at " (version(Some(&h.version))) " by " (h.by)
        },
        None => html! { "no" },
    }
}

pub(crate) fn link(repo: &str, env: &str) -> String {
    format!("/environments/{}/{}", segment(repo), segment(env))
}

/// The environments table, shared by `/environments` (every repository).
fn table(envs: &[EnvironmentRecord]) -> Markup {
    html! {
        div.scroll {
            table.environments {
                thead { tr { th scope="col" { "Environment" } th scope="col" { "Repository" } th scope="col" { "Sync" }
                    th scope="col" { "Health" } th scope="col" { "Current" } th scope="col" { "Desired" }
                    th scope="col" { "Follows" } th scope="col" { "Hold" } } }
                tbody {
                    @for e in envs {
                        @let s = e.summary();
                        tr {
                            th scope="row" { a href=(link(&e.repo, &e.name)) { (e.name) } }
                            td { a href={ "/repos/" (segment(&e.repo)) } { (e.repo) } }
                            td { (layout::status(s.sync.as_str())) }
                            td { (layout::status(s.health.as_str())) }
                            td { (version(s.current_version.as_deref())) }
                            td { (version(s.desired_version.as_deref())) }
                            td { (s.follows) }
                            td { (hold(s.hold.as_ref())) }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn list(
    State(state): State<PageState>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let envs = state.store.environments(None, false).await?;
    let main = html! {
        h1 { "Environments" }
        @if envs.is_empty() {
            p { "No environment is defined yet: add one under " code { ".deploylite/environments/" }
                " on a repository's default branch (see docs/environments.md)." }
        } @else {
            (table(&envs))
        }
    };
    Ok(layout::page(
        "Environments",
        &viewer,
        Some("deployments"),
        main,
    ))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HistoryQuery {
    before: Option<i64>,
}

pub(crate) async fn page(
    State(state): State<PageState>,
    Path(path): Path<String>,
    Query(q): Query<HistoryQuery>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let path = path.trim_matches('/');
    let not_found = || PageError::NotFound(format!("No environment `{path}`."));
    if path.len() > MAX_PATH {
        return Err(not_found());
    }
    let (repo, name) = path.rsplit_once('/').ok_or_else(not_found)?;
    let env = match state.store.environment(repo, name).await? {
        Some(env) if !env.removed => env,
        _ => return Err(not_found()),
    };
    let history = state
        .store
        .deployment_history(repo, name, PAGE + 1, q.before)
        .await?;
    let more = history.len() as i64 > PAGE;
    let history = &history[..history.len().min(PAGE as usize)];
    let s = env.summary();
    let title = format!("{repo}/{name}");
    let base = link(repo, name);
    let main = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/environments" { "Environments" } " / "
            a href={ "/repos/" (segment(repo)) } { (repo) } " / " (name)
        }
        h1 { (title) }
        dl.facts {
            dt { "Sync" } dd { (layout::status(s.sync.as_str())) }
            dt { "Health" } dd { (layout::status(s.health.as_str())) }
            dt { "Current version" } dd { (version(s.current_version.as_deref())) }
            dt { "Desired version" } dd { (version(s.desired_version.as_deref())) }
            dt { "Follows" } dd { (s.follows) }
            dt { "Deploys with" } dd { (env.definition.deploy) }
            dt { "Hold" } dd { (hold(s.hold.as_ref())) }
            dt { "Last drift check" } dd { (layout::time(s.last_check_at)) }
        }
        h2 { "Deployments" }
        @if history.is_empty() {
            p { "No deployments yet." }
        } @else {
            div.scroll {
                table.deployments {
                    thead { tr { th scope="col" { "Deployment" } th scope="col" { "Status" } th scope="col" { "Action" }
                        th scope="col" { "Version" } th scope="col" { "Previous" } th scope="col" { "Waiting for" }
                        th scope="col" { "Triggered by" } th scope="col" { "Runs" } th scope="col" { "Created" } } }
                    tbody {
                        @for d in history {
                            tr data-deployment=(d.id) {
                                th scope="row" { "#" (d.id) @if d.attempt > 1 { " (attempt " (d.attempt) ")" } }
                                td { (layout::status(d.status.as_str())) }
                                td { (d.action.as_str()) }
                                td { (version(Some(&d.version))) }
                                td { (version(d.previous_version.as_deref())) }
                                td.reason {
                                    @if let Some(reason) = &d.pending_reason { (reason) }
                                    @for e in &d.errors { div.error { (e) } }
                                    @if let Some(p) = &d.policy { @for m in &p.deny { div.error { "policy: " (m) } } }
                                }
                                td { (d.triggered_by) @if !d.approvals.is_empty() { div { "approved by " (d.approvals.join(", ")) } } }
                                td {
                                    @for (i, r) in d.runs.iter().enumerate() {
                                        @if i > 0 { ", " }
                                        a href={ "/runs/" (r.id) } title={ (r.pipeline) " (" (r.action) "): " (r.status.as_str()) } { "#" (r.id) }
                                        " " (r.action)
                                    }
                                    @if d.runs.is_empty() { "—" }
                                }
                                td { (layout::time(Some(d.created_at))) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if q.before.is_some() { a href=(base) { "Newest deployments" } }
            @if more {
                @if let Some(last) = history.last() {
                    a href={ (base) "?before=" (last.id) } rel="next" { "Older deployments" }
                }
            }
        }
    };
    Ok(layout::page(&title, &viewer, Some("deployments"), main))
}
