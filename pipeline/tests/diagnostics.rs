//! Data-driven diagnostics tests: each case is a pipeline file and the exact text users see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use deploylite_pipeline::{check_pipeline_set, parse_pipeline, parse_pipeline_with_warnings};

/// Parse `input` as `p.yaml` and compare every diagnostic, one per line.
#[track_caller]
fn check(input: &str, expected: &str) {
    let got = match parse_pipeline("p.yaml", input) {
        Ok(_) => String::new(),
        Err(diags) => diags.iter().map(|d| format!("{d}\n")).collect(),
    };
    let expected: String = expected
        .lines()
        .map(|l| format!("{}\n", l.trim()))
        .filter(|l| l != "\n")
        .collect();
    assert_eq!(
        got, expected,
        "\n--- input ---\n{input}\n--- got ---\n{got}"
    );
}

/// As [`check`], with the warnings too (errors first, then warnings, each in file order).
#[track_caller]
fn check_with_warnings(input: &str, expected: &str) {
    let (parsed, warnings) = parse_pipeline_with_warnings("p.yaml", input);
    let mut got: String = parsed
        .err()
        .unwrap_or_default()
        .iter()
        .map(|d| format!("{d}\n"))
        .collect();
    got.extend(warnings.iter().map(|w| format!("{}\n", w.as_warning())));
    let expected: String = expected
        .lines()
        .map(|l| format!("{}\n", l.trim()))
        .filter(|l| l != "\n")
        .collect();
    assert_eq!(
        got, expected,
        "\n--- input ---\n{input}\n--- got ---\n{got}"
    );
}

/// A minimal valid file with `stage` spliced in under `stages:`.
fn with_stage(stage: &str) -> String {
    format!("name: ci\nstages:\n  test:\n{stage}")
}

#[test]
fn valid_minimal() {
    check("name: ci\nstages:\n  build:\n    steps: [make]\n", "");
}

#[test]
fn yaml_syntax_errors() {
    check(
        "name: ci\nstages: [a\n",
        "p.yaml:3:1: yaml syntax error: while parsing a flow sequence, expected ',' or ']'",
    );
    check(
        "name: ci\n  bad: indent\n",
        "p.yaml:2:6: yaml syntax error: mapping values are not allowed in this context",
    );
    check("name: \"ci\n", "p.yaml:1:7: yaml syntax error: while scanning a quoted scalar, found unexpected end of stream");
}

#[test]
fn yaml_restrictions() {
    check("name: a\n---\nname: b\n", "p.yaml:2:1: multiple yaml documents in one file are not supported; use one file per pipeline");
    check(
        "name: &n ci\nstages: *n\n",
        "p.yaml:1:7: yaml anchors (`&name`) are not supported",
    );
    check(
        "",
        "p.yaml:1:1: empty file: expected a mapping with `name` and `stages`",
    );
    check(
        "# only a comment\n",
        "p.yaml:1:1: empty file: expected a mapping with `name` and `stages`",
    );
    check(
        &format!("name: ci\nstages: {}{}\n", "[".repeat(70), "]".repeat(70)),
        "p.yaml:2:72: nesting too deep: more than 64 levels",
    );
    check(
        "name: ci\n[a]: b\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:1: mapping keys must be strings, found a sequence",
    );
}

#[test]
fn wrong_types() {
    check(
        "- a\n- b\n",
        "p.yaml:1:1: expected a mapping, found a sequence",
    );
    check(
        "name: [ci]\nstages: {}\n",
        "
        p.yaml:1:7: expected a string, found a sequence
        p.yaml:2:9: `stages` must not be empty
    ",
    );
    check(
        "name: ci\nstages: [a]\n",
        "p.yaml:2:9: expected a mapping of stage names to stages, found a sequence",
    );
    check(
        &with_stage("    steps: run this\n"),
        "p.yaml:4:12: expected a sequence of steps, found a string",
    );
    check(
        &with_stage("    steps: [x]\n    needs: {a: b}\n"),
        "p.yaml:5:12: expected a string or a sequence of strings, found a mapping",
    );
    check(
        &with_stage("    steps: [x]\n    env: [A]\n"),
        "p.yaml:5:10: expected a mapping, found a sequence",
    );
    check(
        &with_stage("    steps: [x]\n    env: {A: [1]}\n"),
        "p.yaml:5:14: expected a string, number or boolean, found a sequence",
    );
    check(
        &with_stage("    steps: [x]\n    retry: {max: two}\n"),
        "p.yaml:5:18: expected a non-negative integer, found a string",
    );
    check(
        &with_stage("    steps: [x]\n    retry: {exit_codes: [1, x, 300]}\n"),
        "
        p.yaml:5:29: expected a non-negative integer, found a string
        p.yaml:5:32: invalid exit code 300: expected 0 to 255
    ",
    );
    check(
        &with_stage("    steps: [x]\n    if: [a]\n"),
        "p.yaml:5:9: expected an expression string, found a sequence",
    );
    check(
        &with_stage("    steps:\n      -\n      - {run: x, name: [a]}\n"),
        "
        p.yaml:5:8: expected a step (a command string or a mapping with `run`), found null
        p.yaml:6:24: expected a string, found a sequence
    ",
    );
    check(
        "name: ci\non: 5\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:5: unknown event `5`; expected `push` or `pull_request`",
    );
    check(
        "name: ci\non:\n  push: [main]\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:3:9: expected a mapping, found a sequence",
    );
}

#[test]
fn unknown_keys() {
    check(
        &with_stage("    steps: [x]\n    nedds: [a]\n"),
        "p.yaml:5:5: unknown key `nedds`; did you mean `needs`?",
    );
    check(
        &with_stage("    steps: [x]\n    run-on: linux\n"),
        "p.yaml:5:5: unknown key `run-on`; did you mean `runs_on`?",
    );
    check(
        "name: ci\nfoo: 1\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:1: unknown key `foo`; expected one of `name`, `on`, `concurrency`, `env`, `stages`",
    );
    check(
        "name: ci\non:\n  push:\n    paths-ignores: [docs]\n  pull_requests: {}\nstages:\n  s: {steps: [x]}\n",
        "
        p.yaml:4:5: unknown key `paths-ignores`; did you mean `paths_ignore`?
        p.yaml:5:3: unknown key `pull_requests`; did you mean `pull_request`?
    ",
    );
    check(
        &with_stage("    steps: [{run: x, envv: {}}]\n"),
        "p.yaml:4:22: unknown key `envv`; did you mean `env`?",
    );
    check(
        &with_stage("    steps: [x]\n    retry: {max: 1, backof: 1s}\n"),
        "p.yaml:5:21: unknown key `backof`; did you mean `backoff`?",
    );
    check(
        &with_stage("    steps: [x]\n    resources: {mem: 1Gi}\n"),
        "p.yaml:5:17: unknown key `mem`; expected one of `cpu`, `memory`",
    );
    check(
        "name: ci\non: [push, pull]\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:12: unknown event `pull`; expected `push` or `pull_request`",
    );
    check(
        "name: ci\non: psuh\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:5: unknown event `psuh`; did you mean `push`?",
    );
    check(
        "name: ci\nconcurrency: cancel-in-progres\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:14: invalid concurrency `cancel-in-progres`; did you mean `cancel-in-progress`?",
    );
    check(
        "name: ci\nconcurrency: later\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:14: invalid concurrency `later`; expected one of `parallel`, `queue`, `cancel-in-progress`",
    );
}

#[test]
fn missing_keys() {
    check(
        "stages:\n  s: {steps: [x]}\n",
        "p.yaml:1:1: missing required key `name`",
    );
    check("name: ci\n", "p.yaml:1:1: missing required key `stages`");
    check(
        "\nname: ci\nstages:\n  build:\n    image: x\n",
        "p.yaml:5:5: missing required key `steps`",
    );
    check(
        "name: ci\nstages:\n  build:\n",
        "p.yaml:3:3: missing required key `steps`",
    );
    check(
        &with_stage("    steps: [{name: x}]\n"),
        "p.yaml:4:13: missing required key `run`",
    );
    check(
        &with_stage("    steps: []\n"),
        "p.yaml:4:12: `steps` must not be empty",
    );
    check(
        &with_stage("    steps: ['  ']\n"),
        "p.yaml:4:13: `run` must not be empty",
    );
}

#[test]
fn duplicate_keys() {
    check(
        "name: ci\nstages:\n  build:\n    steps: [a]\n  build:\n    steps: [b]\n",
        "p.yaml:5:3: duplicate key `build` (first defined at 3:3)",
    );
    check(
        "name: ci\nname: cd\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:1: duplicate key `name` (first defined at 1:1)",
    );
}

#[test]
fn needs_and_cycles() {
    check(
        "name: ci\nstages:\n  lint:\n    steps: [x]\n  test:\n    needs: [lnt, deploy]\n    steps: [x]\n",
        "
        p.yaml:6:13: stage `test` needs unknown stage `lnt`; did you mean `lint`?
        p.yaml:6:18: stage `test` needs unknown stage `deploy`
    ",
    );
    check(
        "name: ci\nstages:\n  a:\n    needs: a\n    steps: [x]\n",
        "p.yaml:4:12: stage `a` needs itself",
    );
    check(
        "name: ci\nstages:\n  x:\n    steps: [x]\n  a:\n    needs: [c]\n    steps: [x]\n  b:\n    needs: [a]\n    steps: [x]\n  c:\n    needs: [b, x]\n    steps: [x]\n",
        "p.yaml:5:3: dependency cycle: a -> c -> b -> a",
    );
    // Graph problems are reported together with unrelated errors in other stages.
    check(
        "name: ci\nstages:\n  a:\n    needs: b\n  b:\n    needs: a\n    steps: [x]\n",
        "
        p.yaml:3:3: dependency cycle: a -> b -> a
        p.yaml:4:5: missing required key `steps`
    ",
    );
}

#[test]
fn durations_and_limits() {
    check(
        &with_stage("    steps: [x]\n    timeout: 15x\n"),
        "p.yaml:5:14: invalid duration `15x`: expected e.g. 500ms, 30s, 15m, 1h30m",
    );
    check(
        &with_stage("    steps: [x]\n    timeout: 0s\n"),
        "p.yaml:5:14: timeout must be greater than zero",
    );
    check(
        &with_stage("    steps: [x]\n    retry: 500\n"),
        "p.yaml:5:12: retry max must be at most 100, found 500",
    );
    check(
        &with_stage("    steps: [x]\n    retry: {max: 101}\n"),
        "p.yaml:5:18: retry max must be at most 100, found 101",
    );
    check(
        &with_stage("    steps: [x]\n    retry: {max: 1, backoff: 2m, max_backoff: 1m}\n"),
        "p.yaml:5:30: retry backoff (2m) is longer than max_backoff (1m)",
    );
    check(
        &with_stage("    steps: [x]\n    retry: {backoff: 1 h}\n"),
        "p.yaml:5:22: invalid duration `1 h`: expected e.g. 500ms, 30s, 15m, 1h30m",
    );
    check(
        &with_stage("    steps: [x]\n    resources: {cpu: lots, memory: 1GB}\n"),
        "
        p.yaml:5:22: invalid cpu `lots`: expected a positive number, e.g. 0.5 or 2
        p.yaml:5:36: invalid memory `1GB`: expected e.g. 512Mi, 2Gi or 1G
    ",
    );
}

#[test]
fn globs() {
    check(
        "name: ci\non:\n  push:\n    branches: [main, '[abc']\n    paths: '{a,b'\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:4:22: invalid glob `[abc`: unclosed `[`; missing `]`",
    );
    check(
        "name: ci\non:\n  push:\n    tags: ['[0-9]+.[0-9]+*', 'v[!0]', 'a*+']\nstages:\n  s: {steps: [x]}\n",
        "
        p.yaml:4:30: invalid glob `v[!0]`: `!` in brackets: only letters, digits and the ranges a-z, A-Z, 0-9 can be listed (escape a literal `[` as `\\[`)
        p.yaml:4:39: invalid glob `a*+`: `+` cannot follow `*`; to match a literal `+`, write `\\+`
    ",
    );
    check(
        "name: ci\non:\n  push:\n    branches: [main]\n    branches_ignore: [wip]\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:5:5: use either `branches` or `branches_ignore`, not both; exclude names with `!` patterns in `branches`",
    );
    check(
        "name: ci\non:\n  pull_request:\n    paths: ['!docs/**']\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:4:12: a list of only negated (`!`) patterns matches nothing; start with a positive pattern such as `**`",
    );
}

#[test]
fn expressions() {
    // Plain scalar: the column points inside the expression.
    check(
        &with_stage("    steps: [x]\n    if: brnch == 'main'\n"),
        "p.yaml:5:9: invalid expression: unknown identifier `brnch`; did you mean `branch`?",
    );
    check(
        &with_stage("    steps: [x]\n    if: branch = 'main'\n"),
        "p.yaml:5:16: invalid expression: expected `==`",
    );
    // Quoted: one more for the quote.
    check(
        &with_stage("    steps: [x]\n    if: \"branch == 'main' && tagg\"\n"),
        "p.yaml:5:30: invalid expression: unknown identifier `tagg`; did you mean `tag`?",
    );
    // Block scalar: the position of the scalar's text.
    check(
        &with_stage("    steps: [x]\n    if: >\n      branch ==\n"),
        "p.yaml:6:7: invalid expression: unexpected end of expression",
    );
}

/// Security finding: a stage named `.` or `..` validated, and on a remote runner its URLs
/// (`.../leases/<run>/../<attempt>/complete`) normalised into another route, so the stage was
/// requeued forever.
#[test]
fn dot_names_are_rejected() {
    check(
        "name: ci\nstages:\n  ..: {steps: [x]}\n  .: {steps: [y]}\n  '...': {steps: [z]}\n",
        "
        p.yaml:3:3: invalid stage name `..`: `.` and `..` are path segments that URLs and file paths resolve away
        p.yaml:4:3: invalid stage name `.`: `.` and `..` are path segments that URLs and file paths resolve away
    ",
    );
    check(
        "name: '..'\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:1:7: invalid pipeline name `..`: `.` and `..` are path segments that URLs and file paths resolve away",
    );
}

#[test]
fn hostile_names_are_rejected_and_shown_escaped() {
    check(
        "name: ci\nstages:\n  \"a\\e[2Jb\": {steps: [x]}\n  \"t\\tu\": {steps: [x]}\n",
        "
        p.yaml:3:3: invalid stage name `a\\u{1b}[2Jb`: use only letters, digits, `_`, `.` and `-`
        p.yaml:4:3: invalid stage name `t\\tu`: use only letters, digits, `_`, `.` and `-`
    ",
    );
    let long = "s".repeat(129);
    check(
        &format!("name: ci\nstages:\n  {long}: {{steps: [x]}}\n  {}: {{steps: [x]}}\n", &long[1..]),
        &format!("p.yaml:3:3: invalid stage name `{long}`: at most 128 characters: names become file names and URL segments"),
    );
}

#[test]
fn names_and_env() {
    check(
        "name: my ci\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:1:7: invalid pipeline name `my ci`: use only letters, digits, `_`, `.` and `-`",
    );
    check(
        "name: ci\nstages:\n  'a/b': {steps: [x]}\n",
        "p.yaml:3:3: invalid stage name `a/b`: use only letters, digits, `_`, `.` and `-`",
    );
    check(
        "name: ci\nenv: {1X: a, OK: 1, B-C: true, D: }\nstages:\n  s: {steps: [x]}\n",
        "
        p.yaml:2:7: invalid environment variable name `1X`: use letters, digits and `_`, not starting with a digit
        p.yaml:2:21: invalid environment variable name `B-C`: use letters, digits and `_`, not starting with a digit
        p.yaml:2:32: expected a string, number or boolean, found null
    ",
    );
}

#[test]
fn collects_all_errors() {
    check(
        "name: ci\nconcurrency: sometimes\nstages:\n  a:\n    timeout: 5y\n    steps: [x]\n    needs: [zz]\n  b:\n    stpes: [x]\n",
        "
        p.yaml:2:14: invalid concurrency `sometimes`; expected one of `parallel`, `queue`, `cancel-in-progress`
        p.yaml:5:14: invalid duration `5y`: expected e.g. 500ms, 30s, 15m, 1h30m
        p.yaml:7:13: stage `a` needs unknown stage `zz`
        p.yaml:9:5: unknown key `stpes`; did you mean `steps`?
        p.yaml:9:5: missing required key `steps`
    ",
    );
}

#[test]
fn pipeline_set() {
    let a = parse_pipeline("a.yaml", "name: ci\nstages:\n  s: {steps: [x]}\n").unwrap();
    let b = parse_pipeline(
        "b.yaml",
        "# ci again\nname:   ci\nstages:\n  s: {steps: [x]}\n",
    )
    .unwrap();
    let c = parse_pipeline("c.yaml", "name: cd\nstages:\n  s: {steps: [x]}\n").unwrap();
    let set = [
        ("a.yaml".to_string(), a.clone()),
        ("b.yaml".to_string(), b),
        ("c.yaml".to_string(), c),
        ("d.yaml".to_string(), a),
    ];
    let got: Vec<String> = check_pipeline_set(set.iter().map(|(f, p)| (f.as_str(), p)))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "b.yaml:2:9: duplicate pipeline name `ci` (first defined at a.yaml:1:7)",
            "d.yaml:1:7: duplicate pipeline name `ci` (first defined at a.yaml:1:7)",
        ]
    );
}

#[test]
fn services() {
    check(
        &with_stage(
            "    services:\n      db: {image: postgres:16, env: {A: 1}, command: [postgres, -c, fsync=off]}\n    steps: [x]\n",
        ),
        "",
    );
    check(
        &with_stage("    services: {db: {image: postgres, port: 5432}}\n    steps: [x]\n"),
        "p.yaml:4:38: unknown key `port`; expected one of `image`, `env`, `command`",
    );
    check(
        &with_stage("    services: {db: {image: postgres, envv: {}}}\n    steps: [x]\n"),
        "p.yaml:4:38: unknown key `envv`; did you mean `env`?",
    );
    check(
        &with_stage(
            "    services:\n      My_DB: {image: postgres}\n      -db: {image: postgres}\n      ok-1: {image: x}\n    steps: [x]\n",
        ),
        "
        p.yaml:5:7: invalid service name `My_DB`: use lowercase letters, digits and `-` (not first or last), at most 63 characters; it is the service's host name
        p.yaml:6:7: invalid service name `-db`: use lowercase letters, digits and `-` (not first or last), at most 63 characters; it is the service's host name
        ",
    );
    let long = "a".repeat(64);
    check(
        &with_stage(&format!(
            "    services: {{{long}: {{image: x}}}}\n    steps: [x]\n"
        )),
        &format!("p.yaml:4:16: invalid service name `{long}`: use lowercase letters, digits and `-` (not first or last), at most 63 characters; it is the service's host name"),
    );
    check(
        &with_stage("    services:\n      db: {env: {A: 1}}\n    steps: [x]\n"),
        "p.yaml:5:11: missing required key `image`",
    );
    check(
        &with_stage("    services:\n      db:\n    steps: [x]\n"),
        "p.yaml:5:7: missing required key `image`",
    );
    check(
        &with_stage(
            "    services:\n      db: {image: '', command: sleep 1}\n      web: {image: x, command: []}\n    steps: [x]\n",
        ),
        "
        p.yaml:5:19: `image` must not be empty
        p.yaml:5:32: expected a sequence of strings, found a string
        p.yaml:6:32: `command` must not be empty
        ",
    );
    check(
        &with_stage("    services: [db]\n    steps: [x]\n"),
        "p.yaml:4:15: expected a mapping of service names to services, found a sequence",
    );
}

/// One spelling convention: snake_case keys, kebab-case accepted with a warning, both at once
/// rejected; keys pasted from GitHub Actions get a specific hint.
#[test]
fn key_spellings_and_github_actions_habits() {
    check_with_warnings(
        "name: ci\non:\n  push:\n    paths-ignore: [docs]\n  pull-request:\n    branches-ignore: [old]\nstages:\n  s:\n    runs-on: linux\n    retry: {max: 1, max-backoff: 1m}\n    steps: [x]\n",
        "
        p.yaml:4:5: warning: `paths-ignore` is spelled `paths_ignore`; the other spelling is deprecated
        p.yaml:5:3: warning: `pull-request` is spelled `pull_request`; the other spelling is deprecated
        p.yaml:6:5: warning: `branches-ignore` is spelled `branches_ignore`; the other spelling is deprecated
        p.yaml:9:5: warning: `runs-on` is spelled `runs_on`; the other spelling is deprecated
        p.yaml:10:21: warning: `max-backoff` is spelled `max_backoff`; the other spelling is deprecated
    ",
    );
    check_with_warnings(
        &with_stage("    runs_on: [linux]\n    runs-on: [local]\n    steps: [x]\n"),
        "
        p.yaml:5:5: `runs-on` and `runs_on` (at 4:5) are the same key; keep only `runs_on`
    ",
    );
    check_with_warnings(
        "name: ci\non: [push, pull-request]\nstages:\n  s: {steps: [x]}\n",
        "p.yaml:2:12: warning: `pull-request` is spelled `pull_request`; the other spelling is deprecated",
    );
    check_with_warnings(
        &with_stage("    runs-on: ubuntu-latest\n    timeout-minutes: 10\n    continue-on-error: true\n    steps:\n      - uses: actions/checkout@v4\n"),
        "
        p.yaml:5:5: unknown key `timeout-minutes`: GitHub Actions' `timeout-minutes: 10` is written `timeout: 10m` here
        p.yaml:6:5: unknown key `continue-on-error`: `continue-on-error` is not supported yet; a step that may fail without failing the stage can end with `|| true`
        p.yaml:8:9: unknown key `uses`: actions (`uses:`) are not supported; write what the action does as `run:` commands
        p.yaml:8:9: missing required key `run`
        p.yaml:4:5: warning: `runs-on` is spelled `runs_on`; the other spelling is deprecated
        p.yaml:4:14: warning: `ubuntu-latest` is a GitHub-hosted runner label: no DeployLite runner offers it unless registered with it. The daemon's local runner offers `local` and its OS name (`linux`); remote runners offer the --labels they registered with
    ",
    );
    check(
        "name: ci\njobs:\n  s: {steps: [x]}\n",
        "
        p.yaml:1:1: missing required key `stages`
        p.yaml:2:1: unknown key `jobs`: GitHub Actions' `jobs` are `stages` here
    ",
    );
}
