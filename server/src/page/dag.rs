//! A run's stages as an inline SVG: one column per layer of `needs` (a stage sits one column
//! right of its furthest need), boxes coloured by status *and* labelled with it, edges from
//! each need to its stage. Each box links to the stage's log.

use std::collections::HashMap;
use std::fmt::Write;

use deploylite_model::RunId;
use deploylite_reconciler::store::StageRecord;
use maud::{html, Markup, PreEscaped};

use super::layout::{duration, segment, symbol};

const BOX_W: i64 = 190;
const BOX_H: i64 = 64;
const GAP_X: i64 = 60;
const GAP_Y: i64 = 18;
const PAD: i64 = 8;
/// Names longer than this are cut in the box (the table below has them whole).
const NAME_CHARS: usize = 22;

/// Each stage's column: 0 without needs, else one more than its furthest need. A need that
/// names no stage (the pipeline validated, so only in a corrupt store) counts as column 0.
fn columns(stages: &[StageRecord]) -> HashMap<&str, usize> {
    let by_name: HashMap<&str, &StageRecord> =
        stages.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut column: HashMap<&str, usize> = HashMap::new();
    // Relaxation, at most one pass per stage: needs form a DAG, so this settles.
    for _ in 0..=stages.len() {
        let mut changed = false;
        for stage in stages {
            let col = stage
                .needs
                .iter()
                .filter(|n| by_name.contains_key(n.as_str()))
                .map(|n| column.get(n.as_str()).map_or(1, |c| c + 1))
                .max()
                .unwrap_or(0)
                .min(stages.len());
            if column.get(stage.name.as_str()) != Some(&col) {
                column.insert(stage.name.as_str(), col);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    column
}

fn cut(name: &str) -> String {
    if name.chars().count() <= NAME_CHARS {
        name.to_string()
    } else {
        let mut short: String = name.chars().take(NAME_CHARS - 1).collect();
        short.push('…');
        short
    }
}

/// The SVG for `stages` of run `run_id`; `now` (Unix ms) times stages still running.
pub fn render(run_id: RunId, stages: &[StageRecord], now: i64) -> Markup {
    let column = columns(stages);
    let mut rows_in: HashMap<usize, i64> = HashMap::new();
    let mut place: HashMap<&str, (i64, i64)> = HashMap::new();
    for stage in stages {
        let col = column.get(stage.name.as_str()).copied().unwrap_or(0);
        let row = rows_in.entry(col).or_insert(0);
        let x = PAD + col as i64 * (BOX_W + GAP_X);
        let y = PAD + *row * (BOX_H + GAP_Y);
        *row += 1;
        place.insert(stage.name.as_str(), (x, y));
    }
    let columns_used = column.values().max().map_or(1, |c| c + 1) as i64;
    let rows_used = rows_in.values().max().copied().unwrap_or(1).max(1);
    let width = PAD * 2 + columns_used * BOX_W + (columns_used - 1) * GAP_X;
    let height = PAD * 2 + rows_used * BOX_H + (rows_used - 1) * GAP_Y;

    let mut edges = String::new();
    for stage in stages {
        let Some(&(x2, y2)) = place.get(stage.name.as_str()) else {
            continue;
        };
        for need in &stage.needs {
            if let Some(&(x1, y1)) = place.get(need.as_str()) {
                let (sx, sy) = (x1 + BOX_W, y1 + BOX_H / 2);
                let (ex, ey) = (x2, y2 + BOX_H / 2);
                let mid = (sx + ex) / 2;
                let _ = write!(
                    edges,
                    "<path class=\"edge\" d=\"M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}\" marker-end=\"url(#arrow)\"><title>{} needs {}</title></path>",
                    escape(&stage.name),
                    escape(need)
                );
            }
        }
    }
    html! {
        figure.dag {
            svg #dag role="img" aria-labelledby="dag-title" viewBox={ "0 0 " (width) " " (height) }
                width=(width) height=(height) xmlns="http://www.w3.org/2000/svg" {
                title #dag-title { "Stages of run #" (run_id) " and what each needs" }
                defs {
                    marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                        path d="M0,0 L10,5 L0,10 z" class="arrowhead" {}
                    }
                }
                (PreEscaped(edges))
                @for stage in stages {
                    @if let Some(&(x, y)) = place.get(stage.name.as_str()) {
                        a href={ "/runs/" (run_id) "/stages/" (segment(&stage.name)) } {
                            g class={ "stage s-" (stage.status) } data-stage=(stage.name) data-status=(stage.status)
                                transform={ "translate(" (x) "," (y) ")" } {
                                title { (stage.name) ": " (stage.status) }
                                rect width=(BOX_W) height=(BOX_H) rx="6" {}
                                text.name x="10" y="20" { (cut(&stage.name)) }
                                text.state x="10" y="38" { (symbol(stage.status.as_str())) " " (stage.status) }
                                text.meta x="10" y="55" {
                                    "attempt " (stage.attempt) " · " (duration(stage.started_at, stage.finished_at, now))
                                }
                            }
                        }
                    }
                }
            }
            figcaption { "Stages by what they need; each box links to its log." }
        }
    }
}

fn escape(text: &str) -> String {
    maud::html! { (text) }.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploylite_model::Attempt;
    use deploylite_reconciler::status::StageStatus;

    fn stage(name: &str, needs: &[&str]) -> StageRecord {
        StageRecord {
            name: name.into(),
            position: 0,
            status: StageStatus::Success,
            attempt: Attempt::FIRST,
            needs: needs.iter().map(|n| n.to_string()).collect(),
            pending_reason: None,
            started_at: Some(0),
            finished_at: Some(1500),
            exit_code: Some(0),
        }
    }

    #[test]
    fn a_diamond_has_three_columns() {
        let stages = vec![
            stage("build", &[]),
            stage("unit", &["build"]),
            stage("integration", &["build"]),
            stage("lint", &[]),
            stage("package", &["unit", "integration", "lint"]),
        ];
        let col = columns(&stages);
        assert_eq!(col["build"], 0);
        assert_eq!(col["lint"], 0);
        assert_eq!(col["unit"], 1);
        assert_eq!(col["integration"], 1);
        assert_eq!(col["package"], 2);
        let svg = render(RunId::new(7), &stages, 0).into_string();
        assert_eq!(svg.matches("class=\"edge\"").count(), 5);
        assert!(svg.contains("data-stage=\"package\""));
        assert!(svg.contains("✓ success"));
        assert!(svg.contains("attempt 1 · 1.5s"));
    }

    #[test]
    fn long_names_are_cut_and_text_is_escaped() {
        let stages = vec![stage("a<b>&very-long-stage-name-indeed", &[])];
        let svg = render(RunId::new(1), &stages, 0).into_string();
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("…"));
    }
}
