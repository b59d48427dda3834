//! `parse_pipeline` must never panic, on arbitrary text or on YAML-shaped text built from
//! the grammar's own keys (which reaches much deeper into the parser than random bytes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use deploylite_pipeline::{layers, parse_pipeline};
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "name",
    "on",
    "push",
    "pull_request",
    "branches",
    "tags",
    "paths",
    "paths_ignore",
    "concurrency",
    "env",
    "stages",
    "needs",
    "runs_on",
    "runs-on",
    "branches_ignore",
    "tags_ignore",
    "image",
    "timeout",
    "retry",
    "max",
    "backoff",
    "max_backoff",
    "exit_codes",
    "if",
    "resources",
    "cpu",
    "memory",
    "steps",
    "run",
    "rollback",
    "a",
    "b",
    "c",
    "<<",
    "x y",
];
const VALUES: &[&str] = &[
    "",
    "ci",
    "a",
    "b",
    "[a, b]",
    "[]",
    "{}",
    "{run: x}",
    "[x]",
    "15m",
    "0",
    "500",
    "-1",
    "1h30m",
    "15x",
    "'[a'",
    "\"v*\"",
    "branch == 'main'",
    "brnch ==",
    "matches(ref, '[')",
    "(((",
    "queue",
    "true",
    "null",
    "~",
    "&a x",
    "*a",
    "|",
    ">",
    "- x",
    "2",
    "512Mi",
    "!tag",
    "'!docs/**'",
    "\"\\u0000\"",
    "é",
    "{a: [b, {c: d}]}",
];

/// One line of YAML-ish text: indentation, optional `- `, a key and/or a value.
fn line() -> impl Strategy<Value = String> {
    (
        0usize..6,
        any::<bool>(),
        prop::sample::select(KEYS),
        prop::sample::select(VALUES),
        0u8..4,
    )
        .prop_map(|(indent, dash, key, value, shape)| {
            let pad = "  ".repeat(indent);
            let dash = if dash { "- " } else { "" };
            match shape {
                0 => format!("{pad}{dash}{key}:"),
                1 => format!("{pad}{dash}{value}"),
                _ => format!("{pad}{dash}{key}: {value}"),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC*") {
        let _ = parse_pipeline("f.yaml", &s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_pipeline("f.yaml", &String::from_utf8_lossy(&b));
    }

    #[test]
    fn yamlish_never_panics(lines in prop::collection::vec(line(), 0..30)) {
        let src = lines.join("\n");
        match parse_pipeline("f.yaml", &src) {
            Ok(p) => {
                // A valid pipeline always has a complete DAG.
                let n: usize = layers(&p).iter().map(Vec::len).sum();
                prop_assert_eq!(n, p.stages.len());
            }
            Err(d) => prop_assert!(!d.is_empty()),
        }
    }

    #[test]
    fn valid_prefix_then_yamlish(lines in prop::collection::vec(line(), 0..15)) {
        let src = format!("name: ci\nstages:\n  s:\n    steps: [x]\n{}", lines.join("\n"));
        let _ = parse_pipeline("f.yaml", &src);
    }
}
