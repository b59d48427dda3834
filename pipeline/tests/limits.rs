//! The caps of `deploylite_pipeline::limits`, replayed from the security finding: a 370 KB
//! file of 5,000 stages with unknown `needs` took 28 s to validate (a "did you mean" search
//! over every stage name for every unknown need, and quadratic graph checks). Timing is the
//! benchmark's job (`benches/pipeline.rs`); these tests check that the work is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use deploylite_pipeline::limits::{
    MAX_CYCLES, MAX_DIAGNOSTICS, MAX_FILE_BYTES, MAX_STAGES, MAX_SUGGESTIONS,
};
use deploylite_pipeline::{layers, parse_pipeline};

/// `n` stages, stage `i` needing `needs(i)`.
fn pipeline(n: usize, needs: impl Fn(usize) -> String) -> String {
    let mut src = String::from("name: big\nstages:\n");
    for i in 0..n {
        src.push_str(&format!(
            "  stage-{i:04}:\n    needs: [{}]\n    steps: [\"make stage-{i:04}\"]\n",
            needs(i)
        ));
    }
    src
}

#[test]
fn thousands_of_unknown_needs_give_bounded_diagnostics_and_suggestions() {
    // Every unknown need is one edit away from a stage name: each lookup finds a suggestion.
    let src = pipeline(MAX_STAGES, |i| format!("stage-{i:04}x"));
    let diags = parse_pipeline("big.yaml", &src).unwrap_err();
    assert_eq!(diags.len(), MAX_DIAGNOSTICS + 1);
    for (i, d) in diags[..MAX_DIAGNOSTICS].iter().enumerate() {
        assert_eq!(d.line, u32::try_from(4 + 3 * i).unwrap(), "{d}");
        assert!(
            d.message.starts_with(&format!(
                "stage `stage-{i:04}` needs unknown stage `stage-{i:04}x`"
            )),
            "{d}"
        );
    }
    let suggested = diags
        .iter()
        .filter(|d| d.message.contains("did you mean"))
        .count();
    assert_eq!(suggested, MAX_SUGGESTIONS);
    assert!(diags[0].message.ends_with("; did you mean `stage-0000`?"));
    assert_eq!(
        diags[MAX_DIAGNOSTICS].to_string(),
        format!(
            "big.yaml:{}:13: {} more problems from here on are not shown (at most {MAX_DIAGNOSTICS} are reported per file)",
            4 + 3 * MAX_DIAGNOSTICS,
            MAX_STAGES - MAX_DIAGNOSTICS
        )
    );
    assert!(
        src.len() > 350_000,
        "as large as the finding's file (370 KB)"
    );
}

#[test]
fn the_largest_allowed_pipeline_validates() {
    // A chain plus a fan-in: 5,000 stages, each needing its predecessor and the first stage.
    let src = pipeline(MAX_STAGES, |i| match i {
        0 => String::new(),
        _ => format!("stage-{:04}, stage-0000, stage-{:04}", i - 1, i - 1),
    });
    let p = parse_pipeline("big.yaml", &src).unwrap();
    assert_eq!(p.stages.len(), MAX_STAGES);
    assert_eq!(layers(&p).len(), MAX_STAGES);
}

#[test]
fn one_stage_too_many_is_refused() {
    let src = pipeline(MAX_STAGES + 1, |_| String::new());
    let diags = parse_pipeline("big.yaml", &src).unwrap_err();
    let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["big.yaml:3:3: too many stages: 5001; a pipeline may have at most 5000"]
    );
}

#[test]
fn a_cycle_through_every_stage_is_named_a_bounded_number_of_times() {
    // Every stage needs the next and the first: a back edge at every depth of the search.
    let n = MAX_STAGES;
    let src = pipeline(n, |i| format!("stage-{:04}, stage-0000", (i + 1) % n));
    let diags = parse_pipeline("big.yaml", &src).unwrap_err();
    let cycles: Vec<&str> = diags
        .iter()
        .filter(|d| d.message.starts_with("dependency cycle: "))
        .map(|d| d.message.as_str())
        .collect();
    // Stage 0 needing itself through the second entry is a self-need, not a cycle.
    assert_eq!(cycles.len(), MAX_CYCLES);
    assert!(
        cycles[0].starts_with("dependency cycle: stage-0000 -> stage-0001 -> "),
        "{}",
        cycles[0]
    );
    assert!(
        cycles[0].contains(" -> … (4980 more) … -> "),
        "{}",
        cycles[0]
    );
    assert!(cycles.iter().all(|c| c.len() < 1000));
}

#[test]
fn a_file_over_the_size_cap_gets_one_clear_error() {
    let mut src = pipeline(1, |_| String::new());
    src.push_str(&format!(
        "# {}\n",
        "x".repeat(MAX_FILE_BYTES + 1 - src.len() - 3)
    ));
    assert_eq!(src.len(), MAX_FILE_BYTES + 1);
    let diags = parse_pipeline("big.yaml", &src).unwrap_err();
    let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["big.yaml:1:1: file too large: 1048577 bytes; a pipeline file may be at most 1 MiB (1048576 bytes)"]
    );
    // One byte less is read as usual.
    src.truncate(MAX_FILE_BYTES - 1);
    src.push('\n');
    assert_eq!(src.len(), MAX_FILE_BYTES);
    assert!(parse_pipeline("big.yaml", &src).is_ok());
}
