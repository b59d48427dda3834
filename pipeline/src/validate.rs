//! Checks that need the whole pipeline (the stage graph) or several files.
//!
//! Linear in the stages and their `needs`: thousands of stages with unknown `needs` come from
//! hostile or generated files, and are validated on every commit that touches them.

use std::collections::HashMap;

use crate::limits::MAX_CYCLES;
use crate::model::{Pipeline, Pos};
use crate::suggest::Suggester;
use crate::Diagnostic;

/// Stages named in one cycle's message; a longer cycle is shortened in the middle.
const MAX_CYCLE_NAMES: usize = 20;

/// What graph validation needs about a stage, with the positions the model does not keep.
/// Collected even for stages that have other errors, so that `needs` problems are reported
/// together with everything else.
pub(crate) struct StageRef<'n> {
    pub name: &'n str,
    pub name_pos: Pos,
    pub needs: Vec<(&'n str, Pos)>,
}

/// Unknown `needs`, stages needing themselves, and dependency cycles.
pub(crate) fn check_stages(
    stages: &[StageRef<'_>],
    suggester: &mut Suggester,
) -> Vec<(Pos, String)> {
    let mut problems = Vec::new();
    // Duplicate stage names never reach here (duplicate keys are dropped by the yaml layer);
    // should they, the first one wins, as in `dag`.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(stages.len());
    for (i, s) in stages.iter().enumerate() {
        index.entry(s.name).or_insert(i);
    }
    // `added_by[j] == i`: stage i already has the edge to j (duplicate `needs` entries).
    let mut added_by: Vec<usize> = vec![usize::MAX; stages.len()];
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); stages.len()];
    for (i, s) in stages.iter().enumerate() {
        for &(need, pos) in &s.needs {
            match index.get(need).copied() {
                Some(j) if j == i => {
                    problems.push((pos, format!("stage `{}` needs itself", s.name)))
                }
                Some(j) => {
                    if added_by[j] != i {
                        added_by[j] = i;
                        edges[i].push(j);
                    }
                }
                None => {
                    let hint = suggester.did_you_mean(need, stages.iter().map(|s| s.name));
                    problems.push((
                        pos,
                        format!("stage `{}` needs unknown stage `{need}`{hint}", s.name),
                    ));
                }
            }
        }
    }
    for cycle in find_cycles(&edges, MAX_CYCLES) {
        problems.push((
            stages[cycle[0]].name_pos,
            format!("dependency cycle: {}", cycle_names(&cycle, stages)),
        ));
    }
    problems
}

/// `a -> b -> c -> a`, or for a long cycle `a -> … -> z -> a` with the number left out.
fn cycle_names(cycle: &[usize], stages: &[StageRef<'_>]) -> String {
    let name = |i: usize| stages.get(i).map_or("?", |s| s.name);
    let mut names: Vec<String> = Vec::with_capacity(MAX_CYCLE_NAMES + 2);
    if cycle.len() <= MAX_CYCLE_NAMES {
        names.extend(cycle.iter().map(|&i| name(i).to_string()));
    } else {
        let head = MAX_CYCLE_NAMES / 2;
        let tail = MAX_CYCLE_NAMES - head;
        names.extend(cycle[..head].iter().map(|&i| name(i).to_string()));
        names.push(format!("… ({} more) …", cycle.len() - head - tail));
        names.extend(
            cycle[cycle.len() - tail..]
                .iter()
                .map(|&i| name(i).to_string()),
        );
    }
    if let Some(&first) = cycle.first() {
        names.push(name(first).to_string());
    }
    names.join(" -> ")
}

/// Cycles found by an iterative depth-first search (no recursion: the graph comes from user
/// input). Each cycle is rotated to start at its first stage in file order and reported once.
/// Not every elementary cycle of a tangled graph is listed, but every graph with a cycle yields
/// at least one, which is what validation needs; the search stops after `max` cycles.
/// Linear: every edge is followed once, and a stage's place on the current path is kept.
pub(crate) fn find_cycles(edges: &[Vec<usize>], max: usize) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Gray,
        Black,
    }
    let n = edges.len();
    let mut color = vec![Color::White; n];
    // Where a gray stage sits in `stack`.
    let mut depth = vec![0usize; n];
    let mut found: Vec<Vec<usize>> = Vec::new();
    for start in 0..n {
        if found.len() >= max {
            break;
        }
        if color[start] != Color::White {
            continue;
        }
        // (node, index of the next edge to follow); the stack is also the current path.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = Color::Gray;
        while let Some(top) = stack.last_mut() {
            if found.len() >= max {
                break;
            }
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
                    depth[to] = stack.len();
                    stack.push((to, 0));
                }
                Color::Gray => {
                    let from = depth[to];
                    let mut cycle: Vec<usize> = stack
                        .get(from..)
                        .unwrap_or_default()
                        .iter()
                        .map(|&(v, _)| v)
                        .collect();
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
pub(crate) fn check_pipeline_set<'a>(
    pipelines: impl IntoIterator<Item = (&'a str, &'a Pipeline)>,
) -> Vec<Diagnostic> {
    let mut first: HashMap<&str, (&str, &Pipeline)> = HashMap::new();
    let mut out = Vec::new();
    for entry in pipelines {
        let (file, p) = entry;
        match first.get(p.name.as_str()) {
            Some((first_file, fp)) => out.push(Diagnostic {
                file: file.to_string(),
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
    use super::*;

    #[test]
    fn cycles() {
        assert!(find_cycles(&[vec![1], vec![2], vec![]], 10).is_empty());
        assert_eq!(
            find_cycles(&[vec![1], vec![2], vec![0]], 10),
            vec![vec![0, 1, 2]]
        );
        // Entered from the middle: still reported starting at the first stage.
        assert_eq!(
            find_cycles(&[vec![], vec![2], vec![1], vec![2]], 10),
            vec![vec![1, 2]]
        );
        assert_eq!(
            find_cycles(&[vec![1], vec![0], vec![3], vec![2]], 10),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert_eq!(
            find_cycles(&[vec![1], vec![0], vec![3], vec![2]], 1),
            vec![vec![0, 1]]
        );
    }

    /// A chain where every stage also needs the first one: a back edge at every depth.
    #[test]
    fn many_back_edges_are_capped() {
        let n = 5000;
        let edges: Vec<Vec<usize>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1, 0] } else { vec![0] })
            .collect();
        let cycles = find_cycles(&edges, MAX_CYCLES);
        assert_eq!(cycles.len(), MAX_CYCLES);
        assert_eq!(cycles[0].len(), n);
    }

    #[test]
    fn long_cycles_are_shortened() {
        let names: Vec<String> = (0..30).map(|i| format!("s{i}")).collect();
        let stages: Vec<StageRef<'_>> = names
            .iter()
            .map(|name| StageRef {
                name,
                name_pos: Pos::default(),
                needs: Vec::new(),
            })
            .collect();
        let cycle: Vec<usize> = (0..30).collect();
        assert_eq!(
            cycle_names(&cycle, &stages),
            "s0 -> s1 -> s2 -> s3 -> s4 -> s5 -> s6 -> s7 -> s8 -> s9 -> … (10 more) … -> s20 -> s21 -> s22 -> s23 -> s24 -> s25 -> s26 -> s27 -> s28 -> s29 -> s0"
        );
        assert_eq!(cycle_names(&[2, 5], &stages), "s2 -> s5 -> s2");
    }
}
