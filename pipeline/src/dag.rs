//! The stage dependency graph.
//!
//! Validation (in `validate.rs`) guarantees that a parsed pipeline has unique stage names,
//! known `needs` and no cycle. These functions still accept any [`Pipeline`] (e.g. one
//! deserialised from an old run): unknown `needs` and self-edges are ignored, and stages in or
//! behind a cycle are left out of [`layers`] instead of looping or panicking.

use std::collections::HashMap;

use crate::model::Pipeline;

/// For each stage, the indices of the stages it needs (unknown names and self-edges dropped,
/// duplicates removed).
pub fn dependencies(p: &Pipeline) -> Vec<Vec<usize>> {
    // The first stage of a name wins. Pipelines have a handful of stages: a linear scan beats
    // hashing until there are many.
    let index: Option<HashMap<&str, usize>> = (p.stages.len() > 16).then(|| {
        p.stages
            .iter()
            .enumerate()
            .rev()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect()
    });
    let find = |name: &str| match &index {
        Some(index) => index.get(name).copied(),
        None => p.stages.iter().position(|s| s.name == name),
    };
    // `added_by[j] == i`: stage i already has j (a long `needs` list stays linear).
    let mut added_by = vec![usize::MAX; p.stages.len()];
    p.stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut deps: Vec<usize> = Vec::with_capacity(s.needs.len());
            for n in &s.needs {
                if let Some(j) = find(n) {
                    if j != i && added_by[j] != i {
                        added_by[j] = i;
                        deps.push(j);
                    }
                }
            }
            deps
        })
        .collect()
}

/// Stages grouped into layers that can run in parallel: layer 0 has no `needs`; a stage is in
/// layer `k` when its longest chain of `needs` has length `k`. Within a layer, file order.
pub fn layers(p: &Pipeline) -> Vec<Vec<usize>> {
    let deps = dependencies(p);
    let n = deps.len();
    let mut remaining: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut out = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
    // Kahn's algorithm, one layer at a time; terminates because each stage enters at most once.
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &d in &dependents[i] {
                remaining[d] -= 1;
                if remaining[d] == 0 {
                    next.push(d);
                }
            }
        }
        next.sort_unstable();
        out.push(std::mem::replace(&mut current, next));
    }
    out
}

/// Every stage that (transitively) needs stage `idx`, in file order, without `idx` itself.
/// Used to skip the rest of the graph when a stage fails. Out-of-range `idx` gives `[]`.
pub fn dependents(p: &Pipeline, idx: usize) -> Vec<usize> {
    let deps = dependencies(p);
    let n = deps.len();
    if idx >= n {
        return Vec::new();
    }
    let mut needed_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            needed_by[d].push(i);
        }
    }
    // A walk along the reversed edges: each stage is visited at most once.
    let mut hit = vec![false; n];
    hit[idx] = true;
    let mut todo = vec![idx];
    while let Some(d) = todo.pop() {
        for &i in &needed_by[d] {
            if !hit[i] {
                hit[i] = true;
                todo.push(i);
            }
        }
    }
    (0..n).filter(|&i| i != idx && hit[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Concurrency, Stage, Step, Triggers};

    fn pipeline(stages: &[(&str, &[&str])]) -> Pipeline {
        Pipeline {
            name: "p".into(),
            name_pos: Default::default(),
            on: Triggers::default(),
            concurrency: Concurrency::default(),
            env: Default::default(),
            on_given: false,
            stages: stages
                .iter()
                .map(|(name, needs)| Stage {
                    name: name.to_string(),
                    needs: needs.iter().map(|s| s.to_string()).collect(),
                    runs_on: vec![],
                    runs_on_pos: Default::default(),
                    image: None,
                    timeout: None,
                    retry: Default::default(),
                    env: Default::default(),
                    condition: None,
                    steps: vec![Step {
                        name: None,
                        run: "true".into(),
                        env: Default::default(),
                    }],
                    rollback: vec![],
                    resources: Default::default(),
                    services: vec![],
                })
                .collect(),
            warnings: vec![],
        }
    }

    #[test]
    fn diamond() {
        // d needs b and c; b and c need a; e is independent.
        let p = pipeline(&[
            ("d", &["b", "c"]),
            ("c", &["a"]),
            ("a", &[]),
            ("b", &["a"]),
            ("e", &[]),
        ]);
        assert_eq!(layers(&p), vec![vec![2, 4], vec![1, 3], vec![0]]);
        assert_eq!(dependents(&p, 2), vec![0, 1, 3]);
        assert_eq!(dependents(&p, 1), vec![0]);
        assert_eq!(dependents(&p, 4), Vec::<usize>::new());
        assert_eq!(dependents(&p, 99), Vec::<usize>::new());
    }

    #[test]
    fn longest_chain_decides_layer() {
        let p = pipeline(&[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])]);
        assert_eq!(layers(&p), vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn invalid_pipelines_do_not_loop() {
        let p = pipeline(&[
            ("a", &["c"]),
            ("b", &["a"]),
            ("c", &["b"]),
            ("d", &[]),
            ("e", &["a", "zz", "e", "d", "d"]),
        ]);
        assert_eq!(layers(&p), vec![vec![3]]);
        assert_eq!(dependents(&p, 0), vec![1, 2, 4]);
        let p = pipeline(&[("a", &["a", "nope"])]);
        assert_eq!(layers(&p), vec![vec![0]]);
    }
}
