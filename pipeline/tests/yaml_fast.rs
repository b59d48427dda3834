//! Differential tests of the YAML fast path (`src/yaml_fast.rs`) against the saphyr path.
//!
//! Whenever the fast path accepts a document, its tree, positions, styles and diagnostics must
//! equal saphyr's, and `parse_pipeline` must give the same result with and without it. The
//! realistic inputs (docs, examples, the reference pipeline) must take the fast path, or the
//! speedup would be fake.

use std::cell::Cell;

use deploylite_pipeline::__private::{fast_yaml_tree, parse_pipeline_slow, slow_yaml_tree};
use deploylite_pipeline::parse_pipeline;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Checks one input; returns whether the fast path accepted it.
#[track_caller]
fn check(src: &str) -> bool {
    let fast = fast_yaml_tree(src);
    if let Some(fast) = &fast {
        let slow = slow_yaml_tree(src);
        if fast != &slow {
            panic!(
                "fast and saphyr trees differ for\n---\n{src}\n---\n{}",
                first_difference(fast, &slow)
            );
        }
    }
    let with = parse_pipeline("f.yaml", src);
    let without = parse_pipeline_slow("f.yaml", src);
    assert_eq!(
        with, without,
        "parse_pipeline differs with the fast path for\n---\n{src}\n---"
    );
    fast.is_some()
}

/// The first differing line of two renderings, with some context.
fn first_difference(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let at = (0..a.len().max(b.len()))
        .find(|&i| a.get(i) != b.get(i))
        .unwrap_or(0);
    let from = at.saturating_sub(12);
    let ctx = |v: &[&str]| v[from.min(v.len())..(at + 3).min(v.len())].join("\n");
    format!(
        "--- fast (from line {from}) ---\n{}\n--- saphyr ---\n{}",
        ctx(&a),
        ctx(&b)
    )
}

#[track_caller]
fn check_accepted(src: &str) {
    assert!(check(src), "the fast path should accept\n---\n{src}\n---");
}

/// The pipeline `benches/pipeline.rs` times: it must stay on the fast path.
const BENCH_EXAMPLE: &str = include_str!("fixtures/bench-example.yaml");

fn read(rel: &str) -> Option<String> {
    std::fs::read_to_string(format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))).ok()
}

#[test]
fn realistic_inputs_take_the_fast_path() {
    check_accepted(BENCH_EXAMPLE);
    let mut n = 0;
    if let Some(doc) = read("../docs/pipeline.md") {
        for block in doc.split("```yaml\n").skip(1) {
            let body = block.split("```").next().unwrap_or("");
            // Every complete pipeline and every fragment that is a mapping on its own.
            if body.starts_with("name:") || body.starts_with("on:") {
                check_accepted(body);
                n += 1;
            } else {
                check(body);
            }
        }
        assert!(n >= 2);
    }
    for f in [
        "../examples/deploylite.yaml",
        "../examples/repos/docs-site/.deploylite/pipelines/docs.yaml",
        "../examples/repos/docs-site/.deploylite/pipelines/site.yaml",
        "../examples/repos/webapp/.deploylite/pipelines/ci.yaml",
    ] {
        if let Some(src) = read(f) {
            // examples/deploylite.yaml is the daemon config, not a pipeline: still YAML.
            check_accepted(&src);
        }
    }
}

/// Rust string literals of a test source file (plain `"..."` with the usual escapes, and
/// `r#"..."#`), to reuse every input of the other test files.
fn rust_string_literals(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"r#\"") {
            let rest = &code[i + 3..];
            if let Some(end) = rest.find("\"#") {
                out.push(rest[..end].to_string());
                i += 3 + end + 2;
                continue;
            }
        }
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal such as '"'
            continue;
        }
        if b[i] == b'"' {
            let mut s = String::new();
            let mut chars = code[i + 1..].char_indices();
            let mut end = None;
            while let Some((k, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(k);
                        break;
                    }
                    '\\' => match chars.next().map(|x| x.1) {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some('0') => s.push('\0'),
                        Some('\n') => {
                            // Line continuation: skip leading whitespace.
                            let rest = &code[i + 1 + k + 2..];
                            let skip = rest.len() - rest.trim_start().len();
                            for _ in 0..rest[..skip].chars().count() {
                                chars.next();
                            }
                        }
                        Some('u') => {
                            let mut hex = String::new();
                            for (_, c) in chars.by_ref() {
                                if c == '}' {
                                    break;
                                }
                                if c != '{' {
                                    hex.push(c);
                                }
                            }
                            if let Some(c) =
                                u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                            {
                                s.push(c);
                            }
                        }
                        Some(c) => s.push(c),
                        None => break,
                    },
                    c => s.push(c),
                }
            }
            match end {
                Some(k) => {
                    out.push(s);
                    i += 1 + k + 1;
                }
                None => break,
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn every_test_input_matches() {
    let mut inputs: Vec<String> = vec![BENCH_EXAMPLE.to_string()];
    for f in [
        "tests/diagnostics.rs",
        "tests/example.rs",
        "tests/fuzz.rs",
        "src/yaml.rs",
    ] {
        let code = read(f).unwrap_or_default();
        for lit in rust_string_literals(&code) {
            // Stage fragments of diagnostics.rs are spliced into a minimal file there.
            inputs.push(format!("name: ci\nstages:\n  test:\n{lit}"));
            inputs.push(lit);
        }
    }
    assert!(inputs.len() > 200, "{}", inputs.len());
    let accepted = inputs.iter().filter(|s| check(s)).count();
    println!(
        "hand-written inputs: {} checked, {accepted} took the fast path",
        inputs.len()
    );
    // The reference example of tests/example.rs (with a `|` block scalar) must be accepted.
    let example = read("tests/example.rs").unwrap_or_default();
    let lits = rust_string_literals(&example);
    let full = lits
        .iter()
        .find(|l| l.starts_with("name: ci\non:"))
        .expect("the example");
    check_accepted(full);
}

#[test]
fn hand_written_edge_cases() {
    let accepted = [
        "a: 1\n",
        "a:\n",
        "a:\nb:\n",
        "a: # c\nb: 1\n",
        "a:\n- x\n-\n- y\n",
        "a:\n  -\n  - y\n",
        "a:\n  - - x\n    - y\n  - z\n",
        "- a: 1\n  b: 2\n- c\n",
        "-   a: 1\n    b: [x]\n",
        "a: 'it''s'\nb: \"x\\ty\"\nc: \"q\\\"\"\n",
        "'a b': 1\n\"c\": 2\n",
        "a: {x: 1, y: [1, 2, {z: }], }\n",
        "a: [ x , y , ]\n",
        "a: {}\nb: []\n",
        "a: x # c\n  # indented comment\nb: y   \n",
        "\n\n# head\na: 1\n\n\n",
        "a: |\n  x\n   y\n\n  z\n\nb: 1\n",
        "a: |-\n  x\n  y\n",
        "a: >\n  x\n  y\n\n  z\n",
        "a: >-\n  x\n",
        "a:\n  - |\n    x\n  - b: >\n      y\n",
        "a: b\na: c\n",
        "a: {b: 1, b: 2}\n",
        "a: é\nb: [café, 'naïve']\n",
        "a: rust:1.83\nb: http://x/y\nc: a#b\n",
        "a: -1\nb: --x\n",
        "  a: 1\n  b: 2\n",
        "a:\n    b:\n       c: 1\n",
    ];
    for src in accepted {
        check_accepted(src);
    }
    // Outside the subset (or invalid): must bail, and `parse_pipeline` must still agree.
    let bail = [
        "",
        "# only\n",
        "a: &x 1\n",
        "a: *x\n",
        "a: !t 1\n",
        "? a\n: b\n",
        "---\na: 1\n",
        "a: 1\n...\n",
        "%YAML 1.2\n---\na: 1\n",
        "a: b\n  c\n",
        "a: 'x\n  y'\n",
        "a: [x,\n  y]\n",
        "a:\tb\n",
        "a: 1\r\n",
        "a: |+\n  x\n",
        "a: |2\n  x\n",
        "a: >\n  x\n    y\n",
        "[a]: b\n",
        "a: b: c\n",
        "a: [b: c]\n",
        "a: \"\\u0041\"\n",
        "x\n",
        "a: 1\n b: 2\n",
        "\u{feff}a: 1\n",
        // saphyr keeps an extra line break before trailing spaces at the end of the input.
        "a: |\n  x\n\n  ",
    ];
    for src in bail {
        assert!(!check(src), "the fast path should bail on\n---\n{src}\n---");
    }
}

// --- generated documents ----------------------------------------------------------------

/// A tiny deterministic generator driven by a proptest seed: simpler than a recursive
/// strategy and good enough to explore the shapes the fast path must handle.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const KEYS: &[&str] = &[
    "name",
    "on",
    "push",
    "branches",
    "stages",
    "steps",
    "run",
    "env",
    "needs",
    "if",
    "a",
    "b",
    "x y",
    "<<",
    "A_1",
    "é",
    "a#b",
    "a:b",
    "-k",
    "1",
    "true",
    "null",
    "~",
    "k ",
    "'q k'",
    "\"d k\"",
    "''",
    "'it''s'",
    "\"a\\tb\"",
];

const PLAIN: &[&str] = &[
    "a",
    "ci",
    "main",
    "cargo test",
    "rust:1.83",
    "http://x/y",
    "-1",
    "--flag",
    "a#b",
    "a,b",
    "x y z",
    "true",
    "null",
    "~",
    "15m",
    "é",
    "naïve café",
    "a'b",
    "a\"b",
    "./s.sh",
    "a:",
    "0.50",
    "x\\y",
    "a [b]",
    "a {b}",
    "a]",
    "b}",
    "a - b",
    "a -",
    "a -b",
    "a ?",
    "a ? b",
    "a -,",
    "a :",
    "echo \"hi\" 'x'",
    "a  b",
    "-a - b",
];
const RISKY: &[&str] = &[
    "*a", "&a x", "!t x", "? x", ": x", "%x", "@x", "`x", "a: b", "a :b", "{a", "}", "[x", "|",
    ">", "- x", "-", "#x", "a #b", "'x", "\"x", "|-", ">+", "a:  b", "'a'b", "\"a\" x",
];
const QUOTED: &[&str] = &[
    "'x y'",
    "'it''s'",
    "''",
    "'a: b'",
    "'# x'",
    "'[a'",
    "'!docs/**'",
    "\"x\"",
    "\"a\\tb\"",
    "\"a\\\"b\"",
    "\"\\u0041\"",
    "\"\\x41\"",
    "\"a\\\\b\"",
    "\"\"",
    "\"\\n\"",
    "\"v*\"",
    "\"a\\/b\"",
    "\"a\\ b\"",
    "\"\\e\"",
    "'é'",
];

fn scalar(g: &mut Gen, flow: bool) -> String {
    match g.below(10) {
        0..=4 => {
            let s = g.pick(PLAIN);
            if flow && s.contains([',', '[', ']', '{', '}']) {
                "f".to_string()
            } else {
                s.to_string()
            }
        }
        5..=7 => g.pick(QUOTED).to_string(),
        8 => g.pick(RISKY).to_string(),
        _ => {
            const ALPHA: &[&str] = &[
                "a", "b", " ", ":", "#", "-", "'", "\"", "[", "]", "{", "}", ",", "&", "*", "!",
                "|", ">", "?", "%", "\\", "é", "x",
            ];
            (0..g.below(6)).map(|_| g.pick(ALPHA)).collect()
        }
    }
}

fn sp(g: &mut Gen) -> &'static str {
    ["", " ", "  "][g.below(3)]
}

fn flow(g: &mut Gen, depth: usize) -> String {
    let n = g.below(4);
    let nested = depth < 3;
    let mut items = Vec::new();
    let map = g.chance(45);
    for _ in 0..n {
        let v = if nested && g.chance(25) {
            flow(g, depth + 1)
        } else {
            scalar(g, true)
        };
        if map {
            let k = if g.chance(80) {
                g.pick(&["a", "b", "run", "max", "'q'", "\"d\"", "x y", "B-C", "é"])
                    .to_string()
            } else {
                scalar(g, true)
            };
            let v = if g.chance(10) { String::new() } else { v };
            let colon = if g.chance(95) { ": " } else { ":" };
            items.push(format!("{k}{colon}{v}"));
        } else {
            items.push(v);
        }
    }
    let (open, close) = if map { ("{", "}") } else { ("[", "]") };
    let sep = [", ", ",", " , ", ",  "][g.below(4)];
    let trailing = if n > 0 && g.chance(10) { "," } else { "" };
    format!(
        "{open}{}{}{trailing}{}{close}",
        sp(g),
        items.join(sep),
        sp(g)
    )
}

fn trailer(g: &mut Gen) -> String {
    match g.below(10) {
        0 => " # c".to_string(),
        1 => "   ".to_string(),
        2 => "#c".to_string(),
        3 => "  # x: y".to_string(),
        _ => String::new(),
    }
}

fn key(g: &mut Gen) -> String {
    if g.chance(90) {
        g.pick(KEYS).to_string()
    } else {
        scalar(g, false)
    }
}

fn noise(g: &mut Gen, out: &mut Vec<String>, indent: usize) {
    if g.chance(10) {
        out.push(String::new());
    }
    if g.chance(8) {
        let pad = " ".repeat(g.below(indent + 3));
        out.push(format!("{pad}# comment"));
    }
    if g.chance(3) {
        out.push(" ".repeat(g.below(6)));
    }
}

fn block_scalar(g: &mut Gen, out: &mut Vec<String>, header: &mut String, indent: usize) {
    header.push_str(g.pick(&["|", "|-", ">", ">-", "|+", "|2", ">+"]));
    header.push_str(&trailer(g));
    let ci = indent + 1 + g.below(3);
    for _ in 0..1 + g.below(3) {
        match g.below(8) {
            0 => out.push(String::new()),
            1 => out.push(format!(
                "{}more {}",
                " ".repeat(ci + 1 + g.below(2)),
                g.below(9)
            )),
            2 => out.push(" ".repeat(ci + g.below(2))),
            _ => out.push(format!("{}{}", " ".repeat(ci), scalar(g, false))),
        }
    }
}

/// Lines of a value that starts after `key:` (or `-`) owned by a collection at `indent`.
/// Returns what goes on the indicator's own line.
fn value(g: &mut Gen, out: &mut Vec<String>, indent: usize, depth: usize) -> String {
    let w = 1 + g.below(3);
    match g.below(12) {
        0..=3 => format!(" {}{}", scalar(g, false), trailer(g)),
        4 => trailer(g),
        5 => format!(" {}{}", flow(g, 0), trailer(g)),
        6 | 7 if depth < 5 => {
            let mut inner = Vec::new();
            block_map(g, &mut inner, indent + w, depth + 1);
            out.extend(inner);
            trailer(g)
        }
        8 | 9 if depth < 5 => {
            let seq_indent = if g.chance(50) { indent } else { indent + w };
            let mut inner = Vec::new();
            block_seq(g, &mut inner, seq_indent, depth + 1);
            out.extend(inner);
            trailer(g)
        }
        10 => {
            let mut header = " ".to_string();
            block_scalar(g, out, &mut header, indent);
            header
        }
        _ => {
            out.push(format!(
                "{}{}{}",
                " ".repeat(indent + w),
                scalar(g, false),
                trailer(g)
            ));
            String::new()
        }
    }
}

fn block_map(g: &mut Gen, out: &mut Vec<String>, indent: usize, depth: usize) {
    for _ in 0..1 + g.below(4) {
        noise(g, out, indent);
        let k = key(g);
        let colon = if g.chance(3) { " :" } else { ":" };
        let mut rest = Vec::new();
        let first = value(g, &mut rest, indent, depth);
        out.push(format!("{}{k}{colon}{first}", " ".repeat(indent)));
        out.extend(rest);
    }
}

fn block_seq(g: &mut Gen, out: &mut Vec<String>, indent: usize, depth: usize) {
    for _ in 0..1 + g.below(4) {
        noise(g, out, indent);
        let pad = " ".repeat(indent);
        let gap = 1 + g.below(2);
        match g.below(10) {
            // Compact mapping: `- k: v` and its continuation lines.
            0..=2 if depth < 5 => {
                let mut lines = Vec::new();
                block_map(g, &mut lines, indent + 1 + gap, depth + 1);
                if let Some(first) = lines.first_mut() {
                    let trimmed = first.trim_start().to_string();
                    *first = format!("{pad}-{}{trimmed}", " ".repeat(gap));
                }
                out.extend(lines);
            }
            3 if depth < 5 => {
                let mut lines = Vec::new();
                block_seq(g, &mut lines, indent + 1 + gap, depth + 1);
                if let Some(first) = lines.first_mut() {
                    let trimmed = first.trim_start().to_string();
                    *first = format!("{pad}-{}{trimmed}", " ".repeat(gap));
                }
                out.extend(lines);
            }
            _ => {
                let mut rest = Vec::new();
                let first = value(g, &mut rest, indent, depth);
                out.push(format!("{pad}-{first}"));
                out.extend(rest);
            }
        }
    }
}

fn mutate(g: &mut Gen, src: &mut String) {
    const INSERT: &[&str] = &[
        " ", ":", "-", "#", "'", "\"", "[", "]", "{", "}", "\n", "\t", "&", "*", "!", "|", ">",
        "? ", "---\n", "\r", "  ", ",", "\\",
    ];
    for _ in 0..1 + g.below(2) {
        let boundaries: Vec<usize> = (0..=src.len())
            .filter(|&i| src.is_char_boundary(i))
            .collect();
        let at = boundaries[g.below(boundaries.len())];
        if g.chance(50) {
            src.insert_str(at, g.pick(INSERT));
        } else if let Some(c) = src[at..].chars().next() {
            src.replace_range(at..at + c.len_utf8(), "");
        }
    }
}

fn document(seed: u64) -> String {
    let mut g = Gen(seed | 1);
    let mut lines = Vec::new();
    match g.below(10) {
        0 => block_seq(&mut g, &mut lines, 0, 0),
        1 => lines.push(flow(&mut g, 0)),
        _ => block_map(&mut g, &mut lines, 0, 0),
    }
    noise(&mut g, &mut lines, 0);
    let mut src = lines.join("\n");
    if g.chance(85) {
        src.push('\n');
    }
    if g.chance(20) {
        mutate(&mut g, &mut src);
    }
    src
}

/// Pipeline-shaped documents: the grammar's keys in the grammar's places, so that the
/// comparison also covers the model and its diagnostics, not just the tree.
fn pipeline_document(seed: u64) -> String {
    let mut g = Gen(seed | 1);
    let mut s = String::from("name: ci\n");
    if g.chance(50) {
        s.push_str(g.pick(&[
            "on: push\n",
            "on: [push, pull_request]\n",
            "on:\n  push: { branches: [main, 'release/**'], tags: [\"v*\"] }\n",
            "on:\n  push:\n    branches:\n      - main\n    paths: ['!docs/**']\n  pull_request:\n",
        ]));
    }
    if g.chance(30) {
        s.push_str("env: { A: 1, B: \"x\", C: }\n");
    }
    s.push_str("stages:\n");
    let names = ["lint", "test", "deploy", "lint"];
    for (i, name) in names.iter().take(1 + g.below(4)).enumerate() {
        s.push_str(&format!("  {name}:\n"));
        if i > 0 && g.chance(60) {
            s.push_str(g.pick(&[
                "    needs: lint\n",
                "    needs: [lint, test]\n",
                "    needs:\n      - lint\n",
                "    needs: [nope]\n",
            ]));
        }
        if g.chance(30) {
            s.push_str(g.pick(&[
                "    retry: 2\n",
                "    retry: { max: 2, backoff: 2s, max_backoff: 1m, exit_codes: [75] }\n",
                "    timeout: 15x\n",
                "    if: branch == 'main'\n",
                "    if: \"brnch == 'main'\"\n",
                "    if: >\n      branch ==\n",
                "    resources: { cpu: 2, memory: 512Mi }\n",
            ]));
        }
        s.push_str(g.pick(&[
            "    steps: [make]\n",
            "    steps:\n      - make\n      - name: t\n        run: |\n          cargo test\n          echo ok\n",
            "    steps:\n    - run: x\n      env: { A: b }\n",
            "    steps:\n      -\n",
            "    stpes: [x]\n",
        ]));
    }
    if g.chance(25) {
        mutate(&mut g, &mut s);
    }
    s
}

fn run_differential(name: &str, cases: u32, gen: fn(u64) -> String, min_accept_percent: u32) {
    // `YAML_FAST_CASES_X=10` runs ten times as many cases, for a deeper search.
    let factor: u32 = std::env::var("YAML_FAST_CASES_X")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let cases = cases.saturating_mul(factor);
    let accepted = Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&any::<u64>(), |seed| {
        let src = gen(seed);
        if check(&src) {
            accepted.set(accepted.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let a = accepted.get();
    println!("{name}: {cases} generated documents, {a} took the fast path");
    assert!(
        a * 100 >= cases * min_accept_percent,
        "{name}: only {a} of {cases} documents took the fast path"
    );
}

#[test]
fn generated_yaml_documents_match() {
    run_differential("yaml-shaped", 20_000, document, 20);
}

#[test]
fn generated_pipelines_match() {
    run_differential("pipeline-shaped", 5_000, pipeline_document, 60);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Line soup as in fuzz.rs, which reaches odd indentation and broken structure.
    #[test]
    fn yamlish_lines_match(lines in prop::collection::vec(
        (0usize..6, any::<bool>(), prop::sample::select(KEYS), prop::sample::select(PLAIN), 0u8..4),
        0..20,
    )) {
        let src: String = lines
            .iter()
            .map(|(indent, dash, k, v, shape)| {
                let pad = "  ".repeat(*indent);
                let dash = if *dash { "- " } else { "" };
                match shape {
                    0 => format!("{pad}{dash}{k}:\n"),
                    1 => format!("{pad}{dash}{v}\n"),
                    _ => format!("{pad}{dash}{k}: {v}\n"),
                }
            })
            .collect();
        check(&src);
    }

    #[test]
    fn arbitrary_strings_match(s in "[a-z:#\\- '\"\\[\\]{},|>\n]{0,60}") {
        check(&s);
    }
}
