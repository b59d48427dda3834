//! Stages that no known runner can take: a stage waits for a runner offering every label of
//! its `runs_on`, so a label no runner has leaves its run waiting forever. `validate` and
//! `plan` warn about it when a server tells them which runners exist.

use crate::model::Pipeline;
use crate::Diagnostic;

/// Warnings for the stages of `pipeline` whose `runs_on` labels no runner in `runners` (each
/// runner's label set) offers all of. `known_to` names where the runners come from.
pub fn unserved_stages(
    file: &str,
    pipeline: &Pipeline,
    runners: &[Vec<String>],
    known_to: &str,
) -> Vec<Diagnostic> {
    pipeline
        .stages
        .iter()
        .filter(|s| !s.runs_on.is_empty())
        .filter(|s| {
            !runners
                .iter()
                .any(|labels| s.runs_on.iter().all(|l| labels.contains(l)))
        })
        .map(|s| Diagnostic {
            file: file.to_string(),
            line: s.runs_on_pos.line,
            col: s.runs_on_pos.col,
            message: format!(
                "stage `{}`: no runner known to {known_to} offers runs_on [{}]",
                s.name,
                s.runs_on.join(", ")
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_must_be_offered_by_one_runner() {
        let p = crate::parse_pipeline(
            "p.yaml",
            "name: p\nstages:\n  any: {steps: [x]}\n  gpu:\n    runs_on: [linux, gpu]\n    steps: [x]\n  local: {runs_on: local, steps: [x]}\n",
        )
        .unwrap();
        let runners = vec![
            vec!["local".to_string(), "linux".to_string()],
            vec!["gpu".to_string()],
        ];
        let got: Vec<String> = unserved_stages("p.yaml", &p, &runners, "http://h")
            .iter()
            .map(|d| d.as_warning().to_string())
            .collect();
        assert_eq!(
            got,
            ["p.yaml:5:14: warning: stage `gpu`: no runner known to http://h offers runs_on [linux, gpu]"]
        );
        let all = vec![vec!["gpu".into(), "linux".into(), "local".into()]];
        assert!(unserved_stages("p.yaml", &p, &all, "h").is_empty());
    }
}
