//! Checks that need the whole pipeline (the stage graph) or several files.

use std::collections::HashMap;

use crate::model::Pipeline;
use crate::parse::{did_you_mean, Cx, StageRef};
use crate::Diagnostic;

/// Unknown `needs`, stages needing themselves, and dependency cycles.
pub(crate) fn check_stages(cx: &mut Cx<'_>, stages: &[StageRef<'_>]) {
    // Duplicate stage names never reach here (duplicate keys are dropped by the yaml layer);
    // should they, the first one wins, as in `dag`.
    // A handful of stages is the norm: scan linearly below 16 stages, hash above.
    let index: Option<HashMap<&str, usize>> = (stages.len() > 16).then(|| {
        let mut index = HashMap::with_capacity(stages.len());
        for (i, s) in stages.iter().enumerate() {
            index.entry(s.name).or_insert(i);
        }
        index
    });
    let find = |name: &str| match &index {
        Some(index) => index.get(name).copied(),
        None => stages.iter().position(|s| s.name == name),
    };
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); stages.len()];
    for (i, s) in stages.iter().enumerate() {
        for &(need, ref pos) in &s.needs {
            match find(need) {
                Some(j) if j == i => cx.err(*pos, format!("stage `{}` needs itself", s.name)),
                Some(j) => {
                    if !edges[i].contains(&j) {
                        edges[i].push(j);
                    }
                }
                None => {
                    let hint = did_you_mean(need, stages.iter().map(|s| s.name));
                    cx.err(
                        *pos,
                        format!("stage `{}` needs unknown stage `{need}`{hint}", s.name),
                    );
                }
            }
        }
    }
    for cycle in find_cycles(&edges) {
        let names: Vec<&str> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&i| stages[i].name)
            .collect();
        cx.err(
            stages[cycle[0]].name_pos,
            format!("dependency cycle: {}", names.join(" -> ")),
        );
    }
}

/// Cycles found by an iterative depth-first search (no recursion: the graph comes from user
/// input). Each cycle is rotated to start at its first stage in file order and reported once.
/// Not every elementary cycle of a tangled graph is listed, but every graph with a cycle yields
/// at least one, which is what validation needs.
fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Gray,
        Black,
    }
    let n = edges.len();
    let mut color = vec![Color::White; n];
    let mut found: Vec<Vec<usize>> = Vec::new();
    for start in 0..n {
        if color[start] != Color::White {
            continue;
        }
        // (node, index of the next edge to follow); the stack is also the current path.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = Color::Gray;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            let Some(&to) = edges[node].get(next) else {
                color[node] = Color::Black;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match color[to] {
                Color::White => {
                    color[to] = Color::Gray;
                    stack.push((to, 0));
                }
                Color::Gray => {
                    let from = stack.iter().position(|&(v, _)| v == to).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[from..].iter().map(|&(v, _)| v).collect();
                    let min_at = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|&(_, &v)| v)
                        .map_or(0, |(i, _)| i);
                    cycle.rotate_left(min_at);
                    if !found.contains(&cycle) {
                        found.push(cycle);
                    }
                }
                Color::Black => {}
            }
        }
    }
    found
}

/// Duplicate pipeline names across the files of one repository, reported at each later
/// file's `name` with a pointer to the first definition.
pub(crate) fn check_pipeline_set(pipelines: &[(String, Pipeline)]) -> Vec<Diagnostic> {
    let mut first: HashMap<&str, &(String, Pipeline)> = HashMap::new();
    let mut out = Vec::new();
    for entry in pipelines {
        let (file, p) = entry;
        match first.get(p.name.as_str()) {
            Some((first_file, fp)) => out.push(Diagnostic {
                file: file.clone(),
                line: p.name_pos.line,
                col: p.name_pos.col,
                message: format!(
                    "duplicate pipeline name `{}` (first defined at {first_file}:{}:{})",
                    p.name, fp.name_pos.line, fp.name_pos.col
                ),
            }),
            None => {
                first.insert(p.name.as_str(), entry);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::find_cycles;

    #[test]
    fn cycles() {
        assert!(find_cycles(&[vec![1], vec![2], vec![]]).is_empty());
        assert_eq!(
            find_cycles(&[vec![1], vec![2], vec![0]]),
            vec![vec![0, 1, 2]]
        );
        // Entered from the middle: still reported starting at the first stage.
        assert_eq!(
            find_cycles(&[vec![], vec![2], vec![1], vec![2]]),
            vec![vec![1, 2]]
        );
        assert_eq!(
            find_cycles(&[vec![1], vec![0], vec![3], vec![2]]),
            vec![vec![0, 1], vec![2, 3]]
        );
    }
}
