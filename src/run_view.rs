//! How `deploylite status` shows runs: the list of recent runs, and one run with its problems
//! and stages.

use deploylite_reconciler::status::RunStatus;
use deploylite_server::RunView;

use crate::table::{Align, Table};
use crate::text::count;

pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// `deploylite status`: one line per run, newest first.
pub fn render_list(runs: &[RunView]) -> String {
    let mut table = Table::new(&[
        ("RUN", Align::Right),
        ("REPO", Align::Left),
        ("PIPELINE", Align::Left),
        ("STATUS", Align::Left),
        ("REF", Align::Left),
        ("COMMIT", Align::Left),
        ("CREATED", Align::Left),
    ]);
    for r in runs {
        table.row([
            r.id.to_string(),
            r.repo.clone(),
            r.pipeline.clone(),
            r.status.as_str().to_string(),
            r.git_ref
                .strip_prefix("refs/heads/")
                .unwrap_or(&r.git_ref)
                .to_string(),
            short(&r.commit).to_string(),
            r.created_at.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}

/// `deploylite status RUN`: the run, why it stands where it does, its problems (once), and its
/// stages when it has any.
pub fn render(run: &RunView) -> String {
    let mut out = format!(
        "run #{} {}/{} {} {}\n",
        run.id,
        run.repo,
        run.pipeline,
        run.git_ref,
        short(&run.commit)
    );
    let problems = problems(run);
    let why = match run.status {
        // Its problems follow, each on its own line.
        RunStatus::Error => Some(format!(
            "the pipeline is invalid: {}",
            count(problems.len(), "problem")
        )),
        RunStatus::Skipped => Some(
            run.pending_reason
                .as_deref()
                .map(|r| r.strip_prefix("skipped: ").unwrap_or(r).to_string())
                .unwrap_or_else(|| "nothing to run".into()),
        ),
        _ => run.pending_reason.clone().filter(|r| !r.is_empty()),
    };
    out += &format!(
        "status: {}{}\n",
        run.status,
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    );
    for problem in &problems {
        out += &format!("  {problem}\n");
    }
    let stages = run.stages.as_deref().unwrap_or_default();
    if stages.is_empty() {
        return out;
    }
    let mut table = Table::new(&[
        ("STAGE", Align::Left),
        ("STATUS", Align::Left),
        ("ATTEMPT", Align::Right),
        ("EXIT", Align::Right),
        ("WAITING FOR", Align::Left),
    ]);
    for s in stages {
        table.row([
            s.name.clone(),
            s.status.as_str().to_string(),
            s.attempt.to_string(),
            s.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            s.pending_reason.clone().unwrap_or_default(),
        ]);
    }
    out.push('\n');
    out += &table.render();
    out
}

/// The run's `errors`, one line each: `file:line:col: message` for a pipeline's problems.
fn problems(run: &RunView) -> Vec<String> {
    let Some(items) = run.errors.as_ref().and_then(|e| e.as_array()) else {
        return Vec::new();
    };
    items
        .iter()
        .map(|e| {
            let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
            match (e.get("file"), e.get("line"), e.get("col"), e.get("message")) {
                (Some(_), Some(l), Some(c), Some(_)) => {
                    format!("{}:{l}:{c}: {}", text("file"), text("message"))
                }
                (_, _, _, Some(_)) => text("message").to_string(),
                _ => e.to_string(),
            }
        })
        .collect()
}
