//! `/runs/{id}`: a run's facts (commit, ref, trigger, forge links), its DAG, its stages table
//! with every wait explained, and — for an operator signed in through the form — cancel,
//! approve and re-run.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use deploylite_model::RunId;
use deploylite_reconciler::store::{now_ms, RunRecord};
use maud::{html, Markup};
use serde::Deserialize;

use super::forge_links::ForgeRepo;
use super::layout::{self, segment, short_commit, short_ref, Viewer};
use super::{dag, PageError, PageState};

#[derive(Debug, Deserialize)]
pub(crate) struct RunQuery {
    /// What the last action did (set by the forms' redirect).
    note: Option<String>,
}

/// The most characters of a note shown (it comes from the query string).
const MAX_NOTE: usize = 200;

pub(crate) async fn page(
    State(state): State<PageState>,
    Path(id): Path<RunId>,
    Query(q): Query<RunQuery>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let (run, stages) = state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| PageError::NotFound(format!("There is no run #{id}.")))?;
    let forge = repo_url(&state, &run.repo).and_then(|u| ForgeRepo::from_url(&u));
    let now = now_ms();
    let main = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href={ "/repos/" (segment(&run.repo)) } { (run.repo) } " / " (run.pipeline) " #" (run.id)
        }
        h1 { (run.pipeline) " #" (run.id) " " (layout::status(run.status.as_str())) }
        @if let Some(note) = q.note.as_deref() {
            p.note role="status" { (note.chars().take(MAX_NOTE).collect::<String>()) }
        }
        (facts(&run, forge.as_ref(), now))
        @if viewer.can_operate() {
            (actions(&run, &viewer))
        }
        @if let Some(errors) = &run.errors {
            section {
                h2 { "Why the pipeline did not validate" }
                pre.errors { (errors_text(errors)) }
            }
        }
        @if !stages.is_empty() {
            section aria-labelledby="graph" {
                h2 #graph { "Stages" }
                (dag::render(run.id, &stages, now))
            }
            section aria-labelledby="table" {
                h2 #table { "Stage details" }
                div.scroll {
                    table.stages {
                        thead { tr { th scope="col" { "Stage" } th scope="col" { "Status" } th scope="col" { "Attempts" }
                            th scope="col" { "Duration" } th scope="col" { "Needs" } th scope="col" { "Waiting for" } th scope="col" { "Exit" } } }
                        tbody {
                            @for s in &stages {
                                tr data-stage=(s.name) {
                                    th scope="row" { a href={ "/runs/" (run.id) "/stages/" (segment(&s.name)) } { (s.name) } }
                                    td { (layout::status(s.status.as_str())) }
                                    td { (s.attempt) }
                                    td { (layout::duration(s.started_at, s.finished_at, now)) }
                                    td { @if s.needs.is_empty() { "—" } @else { (s.needs.join(", ")) } }
                                    td.reason { (s.pending_reason.as_deref().unwrap_or("—")) }
                                    td { @if let Some(code) = s.exit_code { (code) } @else { "—" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let title = format!("{} #{}", run.pipeline, run.id);
    let live = format!("run:{}", run.id);
    Ok(layout::page(&title, &viewer, Some(&live), main))
}

fn facts(run: &RunRecord, forge: Option<&ForgeRepo>, now: i64) -> Markup {
    html! {
        dl.facts {
            dt { "Repository" } dd { a href={ "/repos/" (segment(&run.repo)) } { (run.repo) } }
            dt { "Commit" }
            dd {
                code title=(run.commit) { (short_commit(&run.commit)) }
                @if let Some(forge) = forge { " " a href=(forge.commit(&run.commit)) rel="noreferrer" { "on the forge" } }
            }
            dt { "Ref" }
            dd {
                (short_ref(&run.git_ref))
                @if let Some(link) = forge.and_then(|f| f.tree(&run.git_ref)) { " " a href=(link) rel="noreferrer" { "browse" } }
            }
            dt { "Trigger" } dd { (run.trigger) @if run.run_attempt > 1 { " (attempt " (run.run_attempt) ")" } }
            @if let Some(pr) = &run.pull_request {
                dt { "Pull request" }
                dd {
                    @match forge {
                        Some(f) => { a href=(f.pull_request(pr.number)) rel="noreferrer" { "#" (pr.number) } }
                        None => { "#" (pr.number) }
                    }
                    " from " (pr.head_repo)
                    @if pr.untrusted { " " strong { "(untrusted fork)" } }
                }
            }
            @if run.awaiting_approval { dt { "Approval" } dd { strong { "Waiting for an operator to approve this commit" } } }
            @if let Some(by) = &run.approved_by { dt { "Approved by" } dd { (by) } }
            @if let Some(reason) = &run.pending_reason { dt { "Waiting for" } dd.reason { (reason) } }
            @if run.cancel_requested && !run.status.is_final() { dt { "Cancel" } dd { "requested" } }
            dt { "Created" } dd { (layout::time(Some(run.created_at))) }
            dt { "Started" } dd { (layout::time(run.started_at)) }
            dt { "Finished" } dd { (layout::time(run.finished_at)) }
            dt { "Duration" } dd { (layout::duration(run.started_at, run.finished_at, now)) }
            dt { "Pipeline file" } dd { code { (run.pipeline_file) } }
        }
    }
}

fn actions(run: &RunRecord, viewer: &Viewer) -> Markup {
    let csrf = viewer.csrf.as_deref().unwrap_or("");
    html! {
        div.actions {
            @if !run.status.is_final() && !run.cancel_requested {
                form method="post" action={ "/runs/" (run.id) "/cancel" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" { "Cancel run" }
                }
            }
            @if run.awaiting_approval {
                form method="post" action={ "/runs/" (run.id) "/approve" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Approve this commit" }
                }
            }
            @if run.status.is_final() {
                form method="post" action={ "/runs/" (run.id) "/rerun" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Run again" }
                }
            }
        }
    }
}

fn errors_text(errors: &serde_json::Value) -> String {
    match errors {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|e| match e {
                serde_json::Value::String(s) => s.clone(),
                other => other
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map_or_else(|| other.to_string(), str::to_string),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// The repository's URL as the watcher has it (without credentials).
pub(crate) fn repo_url(state: &PageState, repo: &str) -> Option<String> {
    state
        .watcher
        .as_ref()?
        .repos()
        .statuses()
        .into_iter()
        .find(|r| r.name == repo)
        .map(|r| r.url)
}
