//! `/`: every repository with the latest run of each pipeline on each branch (and tag, and
//! pull request ref), its environments' current versions (each links to its page,
//! `environments.rs`), and its polling health.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use deploylite_reconciler::store::{EnvironmentRecord, RunRecord};
use maud::html;

use super::layout::{self, segment, short_ref, Viewer};
use super::{PageError, PageState};

/// The most (repository, pipeline, ref) rows the page lists.
const MAX_ROWS: i64 = 500;

pub(crate) async fn page(
    State(state): State<PageState>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let latest = state.store.latest_runs(MAX_ROWS).await?;
    let mut by_repo: BTreeMap<String, Vec<RunRecord>> = BTreeMap::new();
    let statuses = state
        .watcher
        .as_ref()
        .map(|w| w.repos().statuses())
        .unwrap_or_default();
    for repo in &statuses {
        by_repo.entry(repo.name.clone()).or_default();
    }
    let truncated = latest.len() as i64 >= MAX_ROWS;
    let mut environments: BTreeMap<String, Vec<EnvironmentRecord>> = BTreeMap::new();
    for env in state.store.environments(None, false).await? {
        environments.entry(env.repo.clone()).or_default().push(env);
    }
    for run in latest {
        by_repo.entry(run.repo.to_string()).or_default().push(run);
    }
    let main = html! {
        h1 { "Repositories" }
        @if by_repo.is_empty() {
            p { "No repository is watched yet: add one under " code { "repos:" } " in the configuration." }
        }
        @for (repo, runs) in &by_repo {
            section.repo aria-labelledby={ "repo-" (segment(repo)) } {
                h2 id={ "repo-" (segment(repo)) } { a href={ "/repos/" (segment(repo)) } { (repo) } }
                @if let Some(health) = statuses.iter().find(|s| &s.name == repo).map(|s| &s.health) {
                    @if let Some(error) = &health.last_error {
                        p.error role="alert" { "Polling fails (" (health.consecutive_failures) " times): " (error) }
                    }
                }
                @if let Some(envs) = environments.get(repo) {
                    div.scroll {
                        table.environments {
                            thead { tr { th scope="col" { "Environment" } th scope="col" { "Current version" }
                                th scope="col" { "Sync" } th scope="col" { "Health" } } }
                            tbody {
                                @for env in envs {
                                    tr data-environment=(env.name) {
                                        th scope="row" { a href={ "/environments/" (segment(repo)) "/" (segment(&env.name)) } { (env.name) } }
                                        td { @match &env.current_version {
                                            Some(v) => code { (v.get(..7).unwrap_or(v)) },
                                            None => "none yet",
                                        } @if env.hold.is_some() { " (held)" } }
                                        td { (layout::status(env.sync().as_str())) }
                                        td { (layout::status(env.health().as_str())) }
                                    }
                                }
                            }
                        }
                    }
                }
                @if runs.is_empty() {
                    p { "No runs yet." }
                } @else {
                    div.scroll {
                        table.runs {
                            thead { tr { th scope="col" { "Pipeline" } th scope="col" { "Ref" } th scope="col" { "Latest run" }
                                th scope="col" { "Status" } th scope="col" { "Created" } } }
                            tbody {
                                @for run in runs {
                                    tr data-run=(run.id) {
                                        th scope="row" { (run.pipeline) }
                                        td { (short_ref(&run.git_ref)) }
                                        td { a href={ "/runs/" (run.id) } { "#" (run.id) } }
                                        td { (layout::status(run.status.as_str())) }
                                        td { (layout::time(Some(run.created_at))) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if truncated {
            p.note { "Only the first " (MAX_ROWS) " pipelines and refs are listed; each repository's page has them all." }
        }
    };
    Ok(layout::page("Repositories", &viewer, Some("runs"), main))
}
