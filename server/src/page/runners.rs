//! `/runners`: the daemon's own runner and every registered one: labels, capacity, stages
//! running now, when it was last heard from, and whether it counts as online.

use axum::extract::State;
use axum::response::Response;
use deploylite_reconciler::store::{now_ms, LOCAL_RUNNER};
use maud::html;

use super::layout::{self, Viewer};
use super::{PageError, PageState};

/// The daemon's own runner as the page shows it: its labels and capacity.
#[derive(Debug, Clone)]
pub struct LocalRunner {
    pub labels: Vec<String>,
    pub capacity: usize,
}

pub(crate) async fn page(
    State(state): State<PageState>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let runners = state.store.list_runners().await?;
    let local_running = match &state.local_runner {
        Some(_) => Some(state.store.running_on(LOCAL_RUNNER).await?),
        None => None,
    };
    let now = now_ms();
    let offline_before =
        now - i64::try_from(state.runner_offline_after.as_millis()).unwrap_or(i64::MAX / 2);
    let main = html! {
        h1 { "Runners" }
        div.scroll {
            table.runners {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Labels" } th scope="col" { "Capacity" }
                    th scope="col" { "In use" } th scope="col" { "Last seen" } th scope="col" { "State" } } }
                tbody {
                    @if let (Some(local), Some(running)) = (&state.local_runner, local_running) {
                        tr data-runner=(LOCAL_RUNNER) {
                            th scope="row" { (LOCAL_RUNNER) " " small { "(this daemon)" } }
                            td { (labels(&local.labels)) }
                            td { (local.capacity) }
                            td { (running) }
                            td { "now" }
                            td { (layout::status("online")) }
                        }
                    }
                    @for r in runners.iter().filter(|r| r.name != LOCAL_RUNNER) {
                        @let online = !r.revoked && r.last_seen.is_some_and(|seen| seen >= offline_before);
                        tr data-runner=(r.name) {
                            th scope="row" { (r.name) " " small { "(" (r.executor) ")" } }
                            td { (labels(&r.labels)) }
                            td { (r.capacity) }
                            td { (r.running) }
                            td { (layout::time(r.last_seen)) }
                            td { (layout::status(if r.revoked { "revoked" } else if online { "online" } else { "offline" })) }
                        }
                    }
                }
            }
        }
        @if runners.iter().all(|r| r.name == LOCAL_RUNNER) {
            p { "No remote runner has registered (" code { "deploylite runner register" } ")." }
        }
    };
    Ok(layout::page("Runners", &viewer, Some("runners"), main))
}

fn labels(labels: &[String]) -> String {
    if labels.is_empty() {
        "—".to_string()
    } else {
        labels.join(", ")
    }
}
