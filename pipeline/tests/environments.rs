//! Environment files: the full example parses to exactly the expected model, every problem is
//! reported at its `line:col`, the repository-wide checks (unknown pipelines and environments,
//! duplicates, promotion cycles, the file cap) name what is wrong, and no input panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use deploylite_pipeline::*;
use proptest::prelude::*;

const EXAMPLE: &str = "name: production
deploy: deploy
follows: { branch: main }
requires: [ci]
promote_from: [staging]
approval: { required: 1 }
verify: smoke
check: { pipeline: drift, interval: 5m }
on_drift: redeploy
rollback: auto
";

/// `line:col: message` of every problem of `src`; panics if it parses.
fn errors(src: &str) -> Vec<String> {
    match parse_environment("env.yaml", src) {
        Ok(e) => panic!("expected errors, parsed {e:#?}"),
        Err(d) => d
            .iter()
            .map(|d| {
                assert_eq!(d.file, "env.yaml");
                format!("{}:{}: {}", d.line, d.col, d.message)
            })
            .collect(),
    }
}

/// A minimal valid file plus `extra` lines.
fn with(extra: &str) -> String {
    format!("name: staging\ndeploy: deploy\nfollows: {{ branch: main }}\n{extra}")
}

fn env(src: &str) -> Environment {
    parse_environment("env.yaml", src).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn pos(line: u32, col: u32) -> Pos {
    Pos { line, col }
}

#[test]
fn full_example() {
    let e = env(EXAMPLE);
    let expected = Environment {
        name: "production".into(),
        name_pos: pos(1, 7),
        deploy: "deploy".into(),
        follows: Follows::Branch("main".into()),
        requires: vec!["ci".into()],
        promote_from: vec!["staging".into()],
        approval: Some(Approval { required: 1 }),
        verify: Some("smoke".into()),
        check: Some(DriftCheck {
            pipeline: "drift".into(),
            interval: Duration::from_secs(300),
        }),
        on_drift: OnDrift::Redeploy,
        rollback: RollbackMode::Auto,
        spans: EnvironmentSpans {
            deploy: pos(2, 9),
            verify: pos(7, 9),
            check_pipeline: pos(8, 20),
            requires: vec![pos(4, 12)],
            promote_from: vec![pos(5, 16)],
        },
        warnings: vec![],
    };
    assert_eq!(e, expected);
    assert_eq!(
        e.pipelines().collect::<Vec<_>>(),
        ["deploy", "smoke", "drift"]
    );

    // The model survives a JSON round trip (it is stored with deployments), in its
    // documented shape.
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["follows"], serde_json::json!({ "branch": "main" }));
    assert_eq!(json["check"]["interval"], 300_000);
    assert_eq!(json["on_drift"], "redeploy");
    assert_eq!(json["rollback"], "auto");
    let back: Environment = serde_json::from_value(json).unwrap();
    assert_eq!(back, e);
}

#[test]
fn defaults_and_shorthands() {
    let e = env("name: qa-1\ndeploy: deploy\nfollows:\n  tag: \"v*\"\nrequires: ci\n");
    assert_eq!(e.follows, Follows::Tag("v*".into()));
    assert_eq!(e.requires, ["ci"], "a single name is a list of one");
    assert_eq!(e.promote_from, Vec::<String>::new());
    assert_eq!(
        (e.approval, &e.verify, &e.check),
        (None, &None, &None),
        "optional gates are off"
    );
    assert_eq!(e.on_drift, OnDrift::Report);
    assert_eq!(e.rollback, RollbackMode::Manual);
    assert_eq!(e.pipelines().collect::<Vec<_>>(), ["deploy"]);

    let e = env(&with("check: { pipeline: drift }\n"));
    assert_eq!(
        e.check.map(|c| c.interval),
        Some(Duration::from_secs(300)),
        "the default interval"
    );

    // A stored environment without the newer fields still reads.
    let old: Environment =
        serde_json::from_str(r#"{"name":"p","deploy":"d","follows":{"tag":"v*"}}"#).unwrap();
    assert_eq!(old.on_drift, OnDrift::Report);
    assert_eq!(old.rollback, RollbackMode::Manual);
    assert!(old.name_pos.is_unknown());
}

#[test]
fn unknown_keys_get_did_you_mean() {
    assert_eq!(
        errors("name: staging\ndeploy: deploy\nfolows: { branch: main }\n"),
        [
            "1:1: missing required key `follows`",
            "3:1: unknown key `folows`; did you mean `follows`?",
        ]
    );
    assert_eq!(
        errors(&with("colour: blue\n")),
        ["4:1: unknown key `colour`; expected one of `name`, `deploy`, `follows`, `requires`, `promote_from`, `approval`, `verify`, `check`, `on_drift`, `rollback`"]
    );
    // Nested mappings too; and no GitHub Actions hints in environment files.
    assert_eq!(
        errors(&with("check: { pipeline: drift, intervall: 5m }\nuses: x\n")),
        [
            "4:27: unknown key `intervall`; did you mean `interval`?",
            "5:1: unknown key `uses`; expected one of `name`, `deploy`, `follows`, `requires`, `promote_from`, `approval`, `verify`, `check`, `on_drift`, `rollback`",
        ]
    );
    assert_eq!(
        errors(&with("approval: { requird: 2 }\n")),
        [
            "4:11: missing required key `required`",
            "4:13: unknown key `requird`; did you mean `required`?",
        ]
    );
}

#[test]
fn required_keys_and_types() {
    assert_eq!(
        errors("name: x\n"),
        [
            "1:1: missing required key `deploy`",
            "1:1: missing required key `follows`",
        ]
    );
    assert_eq!(
        errors("- name: x\n"),
        ["1:1: expected a mapping, found a sequence"]
    );
    assert_eq!(
        errors(&with("requires: { ci: true }\nverify: [smoke]\n")),
        [
            "4:11: expected a string or a sequence of strings, found a mapping",
            "5:9: expected a string, found a sequence",
        ]
    );
    assert_eq!(
        errors("name: staging\ndeploy: deploy\nfollows: main\n"),
        ["3:10: expected a mapping, found a string"]
    );
    assert!(
        !errors("").is_empty(),
        "an empty file is not an environment"
    );
}

#[test]
fn names() {
    assert_eq!(
        errors("name: Production\ndeploy: deploy\nfollows: { branch: main }\n"),
        ["1:7: invalid environment name `Production`: use lowercase letters, digits, `_` and `-`, starting with a letter or digit; the name is part of URLs and environment variables"]
    );
    let long = "a".repeat(64);
    assert_eq!(
        errors(&format!(
            "name: {long}\ndeploy: deploy\nfollows: {{ branch: main }}\n"
        )),
        [format!(
            "1:7: invalid environment name `{long}`: at most 63 characters"
        )]
    );
    for bad in ["-x", "_x", "a/b", "a.b", "\"a b\"", "é"] {
        let src = format!("name: {bad}\ndeploy: deploy\nfollows: {{ branch: main }}\n");
        assert_eq!(errors(&src).len(), 1, "{bad}");
    }
    for good in ["prod", "eu-west_1", "1st", &"a".repeat(63)] {
        env(&format!(
            "name: {good}\ndeploy: deploy\nfollows: {{ branch: main }}\n"
        ));
    }
    assert_eq!(
        errors("name: staging\ndeploy: a/b\nfollows: { branch: main }\n"),
        ["2:9: `deploy`: invalid pipeline name `a/b`: use only letters, digits, `_`, `.` and `-`"]
    );
    assert_eq!(
        errors(&with("promote_from: [Staging]\n")),
        ["4:16: `promote_from`: invalid environment name `Staging`: use lowercase letters, digits, `_` and `-`, starting with a letter or digit; the name is part of URLs and environment variables"]
    );
}

#[test]
fn follows_needs_exactly_one_of_branch_or_tag() {
    assert_eq!(
        errors("name: staging\ndeploy: deploy\nfollows: { branch: main, tag: v* }\n"),
        ["3:26: `follows` takes either `branch` or `tag`, not both"]
    );
    assert_eq!(
        errors("name: staging\ndeploy: deploy\nfollows: {}\n"),
        ["3:10: `follows` needs `branch` or `tag`, e.g. `follows: { branch: main }` or `follows: { tag: \"v*\" }`"]
    );
    assert_eq!(
        errors("name: staging\ndeploy: deploy\nfollows: { branch: \"release/*\" }\n"),
        ["3:20: invalid branch `release/*`: an environment follows one branch: patterns are not supported"]
    );
    assert_eq!(
        errors("name: staging\ndeploy: deploy\nfollows: { branch: a..b }\n"),
        ["3:20: invalid branch `a..b`: not a valid git branch name"]
    );
    let e = errors("name: staging\ndeploy: deploy\nfollows: { tag: \"v[\" }\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("3:17: "), "{e:?}");
    assert_eq!(
        errors("name: staging\ndeploy: deploy\nfollows: { tag: \"!v*\" }\n"),
        ["3:17: invalid tag pattern `!v*`: a `!` pattern alone matches no tag; name the tags to follow, e.g. `\"v*\"`"]
    );
    assert_eq!(
        errors("name: staging\ndeploy: deploy\nfollows: { tag: \"\" }\n"),
        ["3:17: `tag` must not be empty; e.g. `\"v*\"`"]
    );
    env("name: staging\ndeploy: deploy\nfollows: { branch: release/1.x }\n");
}

#[test]
fn bad_durations_and_bounds() {
    assert_eq!(
        errors(&with("check: { pipeline: drift, interval: 5x }\n")),
        ["4:37: invalid duration `5x`: expected e.g. 500ms, 30s, 15m, 1h30m"]
    );
    assert_eq!(
        errors(&with("check: { pipeline: drift, interval: 500ms }\n")),
        ["4:37: check interval must be at least 1s, found 500ms"]
    );
    assert_eq!(
        errors(&with("check: { pipeline: drift, interval: 8d }\n")),
        ["4:37: check interval must be at most 7d, found 8d"]
    );
    assert_eq!(
        errors(&with("check: { interval: 1m }\n")),
        ["4:8: missing required key `pipeline`"]
    );
    assert_eq!(
        env(&with("check: { pipeline: drift, interval: 10 }\n"))
            .check
            .map(|c| c.interval),
        Some(Duration::from_secs(10)),
        "a bare number is seconds"
    );
    assert_eq!(
        errors(&with("approval: { required: 0 }\n")),
        ["4:23: `required` approvals must be 1 to 20, found 0"]
    );
    assert_eq!(
        errors(&with("approval: { required: 21 }\n")),
        ["4:23: `required` approvals must be 1 to 20, found 21"]
    );
    assert_eq!(
        errors(&with("approval: { required: two }\n")),
        ["4:23: expected a non-negative integer, found a string"]
    );
    let many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    assert_eq!(
        errors(&with(&format!("requires: [{}]\n", many.join(", ")))),
        ["4:11: too many entries in `requires`: 65; at most 64"]
    );
}

#[test]
fn enum_values() {
    assert_eq!(
        errors(&with(
            "check: { pipeline: d }\non_drift: redploy\nrollback: yes\n"
        )),
        [
            "5:11: invalid on_drift `redploy`; did you mean `redeploy`?",
            "6:11: invalid rollback `yes`; expected one of `auto`, `manual`",
        ]
    );
    let e = env(&with(
        "check: { pipeline: d }\non_drift: report\nrollback: manual\n",
    ));
    assert_eq!(
        (e.on_drift, e.rollback),
        (OnDrift::Report, RollbackMode::Manual)
    );
}

#[test]
fn warnings() {
    // The deprecated kebab spelling is accepted, with a warning at the key.
    let (e, w) = parse_environment_with_warnings(
        "env.yaml",
        &with("promote-from: [qa]\non-drift: redeploy\ncheck: { pipeline: d }\n"),
    );
    let e = e.unwrap();
    assert_eq!(e.promote_from, ["qa"]);
    assert_eq!(e.on_drift, OnDrift::Redeploy);
    let shown: Vec<String> = w.iter().map(|d| d.as_warning().to_string()).collect();
    assert_eq!(
        shown,
        [
            "env.yaml:4:1: warning: `promote-from` is spelled `promote_from`; the other spelling is deprecated",
            "env.yaml:5:1: warning: `on-drift` is spelled `on_drift`; the other spelling is deprecated",
        ]
    );
    assert_eq!(e.warnings, w);

    // Both spellings: an error.
    assert_eq!(
        errors(&with("promote_from: [qa]\npromote-from: [dev]\n")),
        ["5:1: `promote-from` and `promote_from` (at 4:1) are the same key; keep only `promote_from`"]
    );

    // `on_drift` without `check`, and a name listed twice.
    let (e, w) = parse_environment_with_warnings(
        "env.yaml",
        &with("on_drift: redeploy\nrequires: [ci, lint, ci]\n"),
    );
    assert_eq!(e.unwrap().requires, ["ci", "lint"]);
    let shown: Vec<String> = w
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect();
    assert_eq!(
        shown,
        [
            "4:1: `on_drift` has no effect without `check`: nothing looks for drift",
            "5:22: `ci` is listed twice in `requires` (first at 5:12)",
        ]
    );

    // Warnings come back with errors too.
    let (e, w) = parse_environment_with_warnings("env.yaml", "name: x\non-drift: report\n");
    assert!(e.is_err());
    assert_eq!(w.len(), 2, "{w:?}");
}

#[test]
fn promoting_from_itself() {
    assert_eq!(
        errors(&with("promote_from: [qa, staging]\n")),
        ["4:20: environment `staging` cannot promote from itself"]
    );
}

#[test]
fn files_too_large_are_refused() {
    let big = format!("{}\n# {}\n", with(""), "x".repeat(limits::MAX_FILE_BYTES));
    let e = errors(&big);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("1:1: file too large: "), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// check_environment_set

fn named(name: &str, deploy: &str, promote_from: &[&str]) -> String {
    format!(
        "name: {name}\ndeploy: {deploy}\nfollows: {{ branch: main }}\npromote_from: [{}]\n",
        promote_from.join(", ")
    )
}

/// `file:line:col: message` of the set's problems.
fn set_problems(files: &[(&str, String)], pipelines: &[&str]) -> Vec<String> {
    let envs: Vec<(&str, Environment)> = files
        .iter()
        .map(|(f, src)| {
            (
                *f,
                parse_environment(f, src).unwrap_or_else(|d| panic!("{d:#?}")),
            )
        })
        .collect();
    let refs: Vec<(&str, &Environment)> = envs.iter().map(|(f, e)| (*f, e)).collect();
    check_environment_set(&refs, pipelines)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_valid_set_has_no_problems() {
    let files = [
        ("production.yaml", EXAMPLE.to_string()),
        ("staging.yaml", named("staging", "deploy", &[])),
    ];
    assert_eq!(
        set_problems(&files, &["ci", "deploy", "smoke", "drift"]),
        Vec::<String>::new()
    );
}

#[test]
fn unknown_pipelines() {
    let files = [("production.yaml", EXAMPLE.to_string())];
    assert_eq!(
        set_problems(&files, &["ci", "deplyo", "drift"]),
        [
            "production.yaml:2:9: `deploy` names unknown pipeline `deploy` (pipelines are named by the `name` of a .deploylite/pipelines/*.yaml file); did you mean `deplyo`?",
            "production.yaml:7:9: `verify` names unknown pipeline `smoke` (pipelines are named by the `name` of a .deploylite/pipelines/*.yaml file); pipelines are `ci`, `deplyo`, `drift`",
            "production.yaml:5:16: `promote_from` names unknown environment `staging`",
        ]
    );
    assert_eq!(
        set_problems(&files, &[]),
        [
            "production.yaml:2:9: `deploy` names unknown pipeline `deploy` (pipelines are named by the `name` of a .deploylite/pipelines/*.yaml file); the repository has no valid pipeline",
            "production.yaml:4:12: `requires` names unknown pipeline `ci` (pipelines are named by the `name` of a .deploylite/pipelines/*.yaml file); the repository has no valid pipeline",
            "production.yaml:7:9: `verify` names unknown pipeline `smoke` (pipelines are named by the `name` of a .deploylite/pipelines/*.yaml file); the repository has no valid pipeline",
            "production.yaml:8:20: `check.pipeline` names unknown pipeline `drift` (pipelines are named by the `name` of a .deploylite/pipelines/*.yaml file); the repository has no valid pipeline",
            "production.yaml:5:16: `promote_from` names unknown environment `staging`",
        ]
    );
}

#[test]
fn unknown_environments_get_did_you_mean() {
    let files = [
        ("a.yaml", named("staging", "d", &[])),
        ("b.yaml", named("production", "d", &["stagin"])),
    ];
    assert_eq!(
        set_problems(&files, &["d"]),
        ["b.yaml:4:16: `promote_from` names unknown environment `stagin`; did you mean `staging`?"]
    );
}

#[test]
fn duplicate_names() {
    let files = [
        ("a.yaml", named("staging", "d", &[])),
        ("b.yaml", format!("# again\n{}", named("staging", "d", &[]))),
    ];
    assert_eq!(
        set_problems(&files, &["d"]),
        ["b.yaml:2:7: duplicate environment name `staging` (first defined at a.yaml:1:7)"]
    );
}

#[test]
fn promotion_cycles_are_named() {
    let files = [
        ("production.yaml", named("production", "d", &["staging"])),
        ("staging.yaml", named("staging", "d", &["production"])),
    ];
    assert_eq!(
        set_problems(&files, &["d"]),
        ["production.yaml:4:16: promote_from cycle: production -> staging -> production (no version could ever reach them)"]
    );
    let files = [
        ("dev.yaml", named("dev", "d", &[])),
        ("qa.yaml", named("qa", "d", &["dev", "production"])),
        ("staging.yaml", named("staging", "d", &["qa"])),
        ("production.yaml", named("production", "d", &["staging"])),
    ];
    assert_eq!(
        set_problems(&files, &["d"]),
        ["qa.yaml:4:21: promote_from cycle: qa -> staging -> production -> qa (no version could ever reach them)"]
    );
    // A chain is not a cycle.
    let files = [
        ("dev.yaml", named("dev", "d", &[])),
        ("qa.yaml", named("qa", "d", &["dev"])),
        ("production.yaml", named("production", "d", &["qa", "dev"])),
    ];
    assert_eq!(set_problems(&files, &["d"]), Vec::<String>::new());
}

#[test]
fn too_many_environment_files() {
    let files: Vec<(String, String)> = (0..=limits::MAX_ENVIRONMENTS)
        .map(|i| (format!("e{i:03}.yaml"), named(&format!("e{i}"), "d", &[])))
        .collect();
    let files: Vec<(&str, String)> = files.iter().map(|(f, s)| (f.as_str(), s.clone())).collect();
    assert_eq!(
        set_problems(&files, &["d"]),
        ["e100.yaml:1:1: too many environment files: 101; a repository may have at most 100, this file and those after it are ignored"]
    );
}

// ---------------------------------------------------------------------------------------------
// never panics

const KEYS: &[&str] = &[
    "name",
    "deploy",
    "follows",
    "branch",
    "tag",
    "requires",
    "promote_from",
    "promote-from",
    "approval",
    "required",
    "verify",
    "check",
    "pipeline",
    "interval",
    "on_drift",
    "rollback",
    "x y",
    "<<",
];
const VALUES: &[&str] = &[
    "",
    "prod",
    "staging",
    "[a, b]",
    "[]",
    "{}",
    "{ branch: main }",
    "{ tag: \"v*\" }",
    "{ pipeline: d, interval: 5m }",
    "{ required: 1 }",
    "5m",
    "5x",
    "0",
    "-1",
    "99999999999999999999",
    "auto",
    "redeploy",
    "null",
    "~",
    "&a x",
    "*a",
    "|",
    "- x",
    "'[a'",
    "\"\\u0000\"",
    "é",
];

fn line() -> impl Strategy<Value = String> {
    (
        0usize..4,
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
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC*") {
        let _ = parse_environment("f.yaml", &s);
    }

    #[test]
    fn yamlish_never_panics(lines in prop::collection::vec(line(), 0..20)) {
        let src = lines.join("\n");
        match parse_environment("f.yaml", &src) {
            Ok(e) => {
                prop_assert!(!e.name.is_empty());
                let refs = [("f.yaml", &e), ("g.yaml", &e)];
                let _ = check_environment_set(&refs, &["d"]);
            }
            Err(d) => prop_assert!(!d.is_empty()),
        }
    }

    #[test]
    fn valid_prefix_then_yamlish(lines in prop::collection::vec(line(), 0..10)) {
        let src = format!("{}{}", with(""), lines.join("\n"));
        let _ = parse_environment("f.yaml", &src);
    }
}

/// Every complete environment in docs/environments.md (a ```yaml block starting with `name:`)
/// is valid.
#[test]
fn docs_examples_parse() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/environments.md");
    let Ok(doc) = std::fs::read_to_string(path) else {
        return; // docs not present (e.g. crate vendored alone)
    };
    let mut found = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let Some((body, _)) = block.split_once("```") else {
            continue;
        };
        if body.starts_with("name:") {
            found += 1;
            let e =
                parse_environment("docs.yaml", body).unwrap_or_else(|d| panic!("{d:#?}\n{body}"));
            assert_eq!(e.warnings, [], "docs examples use the canonical spelling");
        }
    }
    assert!(
        found >= 2,
        "the docs show at least the full and the smallest example"
    );
}
