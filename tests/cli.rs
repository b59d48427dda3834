//! End-to-end tests of the one-shot commands: validate, plan, run, status, cancel, help, and
//! `serve`'s configuration errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn deploylite(args: &[&str]) -> std::process::Command {
    let mut cmd = cli();
    // `validate` and `plan` ask the default server about runners: not a daemon that happens
    // to run on this machine.
    cmd.env("DEPLOYLITE_SERVER", "http://127.0.0.1:9");
    cmd.args(args);
    cmd
}

/// Runs `deploylite <args>` in `dir`.
fn in_dir(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = deploylite(args);
    cmd.current_dir(dir);
    run_cmd(cmd)
}

const GOOD: &str = "name: good\nstages:\n  build:\n    steps: [\"echo building\"]\n";
const BAD: &str =
    "name: bad\ncolour: blue\nstages:\n  a:\n    needs: [nope]\n    steps: [\"true\"]\n";
const BAD_LINES: [&str; 2] = [
    "2:1: unknown key `colour`; expected one of `name`, `on`, `concurrency`, `env`, `stages`",
    "5:13: stage `a` needs unknown stage `nope`",
];

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

// ---------------------------------------------------------------------------------------------
// validate

#[test]
fn validate_accepts_a_good_file_with_exit_0_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("good.yaml");
    std::fs::write(&file, GOOD).unwrap();
    let (code, out, err) = run_cmd(deploylite(&["validate", file.to_str().unwrap()]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "");
    assert_eq!(err, "1 pipeline file valid\n");
}

#[test]
fn validate_prints_one_file_line_col_message_per_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, BAD).unwrap();
    let path = file.display().to_string();
    let (code, out, err) = run_cmd(deploylite(&["validate", &path]));
    assert_eq!(code, 1, "{out}{err}");
    let expected: Vec<String> = BAD_LINES.iter().map(|l| format!("{path}:{l}")).collect();
    assert_eq!(lines(&out), expected);
    assert_eq!(err, "2 problems in 1 file\n");

    // More shapes of problems, each at its exact place.
    let cases: &[(&str, &[&str])] = &[
        (
            "name: ci\nstages:\n  test:\n    stepz: [\"true\"]\n",
            &["4:5: unknown key `stepz`; did you mean `steps`?", "4:5: missing required key `steps`"],
        ),
        (
            "name: ci\nstages:\n  a:\n    needs: [b]\n    steps: [x]\n  b:\n    needs: [a]\n    steps: [x]\n",
            &["3:3: dependency cycle: a -> b -> a"],
        ),
        (
            "name: ci\nstages:\n  a:\n    timeout: 5 minutes\n    steps: [x]\n",
            &["4:14: invalid duration `5 minutes`: expected e.g. 500ms, 30s, 15m, 1h30m"],
        ),
        ("name: ci\nstages: [a\n", &["3:1: yaml syntax error: while parsing a flow sequence, expected ',' or ']'"]),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let path = file.display().to_string();
        let (code, out, err) = run_cmd(deploylite(&["validate", &path]));
        assert_eq!(code, 1, "case {i}: {out}{err}");
        let got = lines(&out);
        assert_eq!(got.len(), want.len(), "case {i}:\n{yaml}\n{out}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(
                g.starts_with(&format!("{path}:{w}")),
                "case {i}: got {g:?}, want {path}:{w}..."
            );
        }
    }
}

#[test]
fn validate_of_a_directory_checks_its_deploylite_pipelines() {
    let repo = TestRepo::new();
    repo.pipeline("a-good.yaml", GOOD);
    repo.pipeline("b-bad.yaml", BAD);
    repo.pipeline(
        "c-dup.yml",
        "# same name as a-good\nname: good\nstages:\n  x:\n    steps: [\"true\"]\n",
    );
    repo.write(
        ".deploylite/pipelines/notes.txt",
        "not a pipeline: ignored\n",
    );

    // The default path is the current directory; paths are shown relative to it.
    let (code, out, err) = in_dir(repo.path(), &["validate"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        lines(&out),
        vec![
            format!(".deploylite/pipelines/b-bad.yaml:{}", BAD_LINES[0]),
            format!(".deploylite/pipelines/b-bad.yaml:{}", BAD_LINES[1]),
            ".deploylite/pipelines/c-dup.yml:2:7: duplicate pipeline name `good` (first defined at .deploylite/pipelines/a-good.yaml:1:7)"
                .to_string(),
        ]
    );
    // Two of the three files have problems (it once said `3 problem(s) in 3 file(s)`).
    assert_eq!(err, "3 problems in 2 files\n");

    // A directory argument: the same, with the directory in front.
    let root = repo.path().display().to_string();
    let (code, out, _) = run_cmd(deploylite(&["validate", &root]));
    assert_eq!(code, 1);
    assert_eq!(
        lines(&out)[0],
        format!("{root}/.deploylite/pipelines/b-bad.yaml:{}", BAD_LINES[0])
    );

    // A directory holding the YAML files themselves.
    let pipelines = repo.path().join(".deploylite/pipelines");
    std::fs::remove_file(pipelines.join("b-bad.yaml")).unwrap();
    std::fs::remove_file(pipelines.join("c-dup.yml")).unwrap();
    let (code, out, err) = run_cmd(deploylite(&["validate", pipelines.to_str().unwrap()]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err, "1 pipeline file valid\n");

    // The `.deploylite` directory itself, named or from inside it: its pipelines.
    repo.pipeline("d-more.yaml", "name: more\nstages:\n  s:\n    steps: [x]\n");
    let (code, out, err) = in_dir(repo.path(), &["validate", ".deploylite"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "", "2 pipeline files valid\n")
    );
    let (code, out, err) = in_dir(&repo.path().join(".deploylite"), &["validate", "."]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "", "2 pipeline files valid\n")
    );
    let (code, out, err) = in_dir(&repo.path().join(".deploylite"), &["validate"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "", "2 pipeline files valid\n")
    );
}

#[test]
fn validate_without_pipelines_or_with_a_missing_path_fails() {
    // Nothing to check is not an invalid pipeline: exit 2, saying where it looked.
    let empty = tempfile::tempdir().unwrap();
    let (code, out, err) = in_dir(empty.path(), &["validate"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        "no pipeline files found: no *.yaml or *.yml in . (pipelines live in .deploylite/pipelines/)\n"
    );
    std::fs::create_dir(empty.path().join(".deploylite")).unwrap();
    let (code, _, err) = in_dir(empty.path(), &["validate", ".deploylite"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        "no pipeline files found: no *.yaml or *.yml in .deploylite/pipelines (pipelines live in .deploylite/pipelines/)\n"
    );

    let missing = empty.path().join("missing.yaml");
    let (code, _, err) = run_cmd(deploylite(&["validate", missing.to_str().unwrap()]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}: no such file or directory", missing.display())),
        "{err}"
    );
}

/// Warnings (deprecated spellings, GitHub-hosted labels) do not change the exit code; counts
/// are written with proper plurals; the output has no colour codes (exact text).
#[test]
fn validate_prints_warnings_and_keeps_exit_0() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\non:\n  push:\n    paths-ignore: [docs/**]\nstages:\n  build:\n    runs-on: ubuntu-latest\n    steps: [make]\n",
    );
    let mut cmd = deploylite(&["validate"]);
    cmd.current_dir(repo.path()).env("NO_COLOR", "1");
    let (code, out, err) = run_cmd(cmd);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        ".deploylite/pipelines/ci.yaml:4:5: warning: `paths-ignore` is spelled `paths_ignore`; the other spelling is deprecated\n\
         .deploylite/pipelines/ci.yaml:7:5: warning: `runs-on` is spelled `runs_on`; the other spelling is deprecated\n\
         .deploylite/pipelines/ci.yaml:7:14: warning: `ubuntu-latest` is a GitHub-hosted runner label: no DeployLite runner offers it unless registered with it. \
         The daemon's local runner offers `local` and its OS name (`linux`); remote runners offer the --labels they registered with\n"
    );
    assert_eq!(err, "1 pipeline file valid, 3 warnings\n");

    // With problems too: one file with problems, one with a warning only.
    repo.pipeline("bad.yaml", BAD);
    let (code, out, err) = in_dir(repo.path(), &["validate"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(lines(&out).len(), 5, "{out}");
    assert!(
        lines(&out)[0].starts_with(".deploylite/pipelines/bad.yaml:2:1: unknown key"),
        "{out}"
    );
    assert_eq!(err, "2 problems in 1 file, 3 warnings\n");
    assert!(!out.contains('\x1b') && !err.contains('\x1b'));
}

/// Environment files are validated with the pipelines: each problem and warning as
/// `file:line:col:`, the set checks (unknown pipeline, promote_from cycle) against the
/// pipelines of the same `.deploylite` directory.
#[test]
fn validate_covers_environment_files() {
    let repo = TestRepo::new();
    repo.pipeline("a-good.yaml", GOOD);
    repo.pipeline(
        "deploy.yaml",
        "name: deploy\nstages:\n  apply:\n    steps: [\"true\"]\n",
    );
    repo.write(
        ".deploylite/environments/bad.yaml",
        "name: bad\ndeploy: deploy\nfollows: { branch: main }\ncheck: { pipeline: good, interval: 5x }\n",
    );
    repo.write(
        ".deploylite/environments/production.yaml",
        "name: production\ndeploy: deplyo\nfollows: { branch: main }\npromote_from: [staging]\n",
    );
    repo.write(
        ".deploylite/environments/staging.yaml",
        "name: staging\ndeploy: deploy\nfollows: { branch: main }\npromote-from: [production]\n",
    );
    let (code, out, err) = in_dir(repo.path(), &["validate"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        lines(&out),
        [
            ".deploylite/environments/bad.yaml:4:36: invalid duration `5x`: expected e.g. 500ms, 30s, 15m, 1h30m",
            ".deploylite/environments/production.yaml:2:9: `deploy` names unknown pipeline `deplyo` (pipelines are named by the `name` of a .deploylite/pipelines/*.yaml file); did you mean `deploy`?",
            ".deploylite/environments/production.yaml:4:16: promote_from cycle: production -> staging -> production (no version could ever reach them)",
            ".deploylite/environments/staging.yaml:4:1: warning: `promote-from` is spelled `promote_from`; the other spelling is deprecated",
        ]
    );
    assert_eq!(err, "3 problems in 2 files, 1 warning\n");

    // One environment file named alone: its set is still its directory's (staging is known),
    // and its pipelines are still those of the `.deploylite` directory.
    repo.write(
        ".deploylite/environments/production.yaml",
        "name: production\ndeploy: deploy\nfollows: { branch: main }\npromote_from: [staging]\n",
    );
    repo.write(
        ".deploylite/environments/staging.yaml",
        "name: staging\ndeploy: deploy\nfollows: { branch: main }\n",
    );
    let (code, out, err) = in_dir(
        repo.path(),
        &["validate", ".deploylite/environments/production.yaml"],
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "", "1 environment file valid\n")
    );
    let (code, out, err) = in_dir(repo.path(), &["validate", ".deploylite/environments"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        lines(&out),
        [".deploylite/environments/bad.yaml:4:36: invalid duration `5x`: expected e.g. 500ms, 30s, 15m, 1h30m"]
    );

    // Fixed: everything valid, counted by kind.
    repo.remove(".deploylite/environments/bad.yaml");
    let (code, out, err) = in_dir(repo.path(), &["validate"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "", "2 pipeline files and 2 environment files valid\n")
    );
}

/// With a server to ask, a stage whose `runs_on` labels no runner offers is warned about; a
/// stage the local runner takes is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_and_plan_warn_about_labels_no_runner_offers() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  build:\n    runs_on: [local]\n    steps: [make]\n  cuda:\n    runs_on: [linux, gpu]\n    steps: [make]\n",
    );
    repo.commit("ci");
    let daemon = Daemon::start(&[], "").await;
    let token = daemon.admin_token_path().display().to_string();
    let in_repo = |command: &str| {
        let mut cmd = cli();
        cmd.args([command, "--server", &daemon.url, "--token-file", &token])
            .current_dir(repo.path());
        run_cmd(cmd)
    };
    let (code, out, err) = in_repo("validate");
    assert_eq!(code, 0, "{out}{err}");
    let warning = format!(
        ".deploylite/pipelines/ci.yaml:7:14: warning: stage `cuda`: no runner known to {} offers runs_on [linux, gpu]\n",
        daemon.url
    );
    assert_eq!(out, warning);
    assert_eq!(err, "1 pipeline file valid, 1 warning\n");

    let (code, out, err) = in_repo("plan");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with(&format!("\n\n{warning}")), "{out}");

    // Without a server to ask, no warning and no wait.
    let started = std::time::Instant::now();
    let (code, out, err) = in_dir(repo.path(), &["validate"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "", "1 pipeline file valid\n")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// plan

const DIAMOND: &str = r#"name: diamond
stages:
  d:
    needs: [b, c]
    steps: ["echo d"]
  b:
    needs: [a]
    steps: ["echo b"]
  a:
    steps: ["echo a"]
  c:
    needs: [a]
    if: branch == 'release'
    steps: ["echo c"]
  lint:
    steps: ["echo lint"]
"#;

#[test]
fn plan_prints_the_dag_layers_and_if_skipped_stages() {
    let repo = TestRepo::new();
    repo.pipeline("diamond.yaml", DIAMOND);
    repo.pipeline(
        "tags.yaml",
        "name: release\non:\n  push:\n    tags: [\"v*\"]\nstages:\n  s:\n    steps: [x]\n",
    );
    let commit = repo.commit("diamond");
    let name = repo
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    let (code, out, err) = in_dir(repo.path(), &["plan"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "{name} @ refs/heads/main {commit}\n\
             \n\
             pipeline diamond (.deploylite/pipelines/diamond.yaml): would run\n\
             \x20 layer 1: a, lint\n\
             \x20 layer 2: b, c (skipped: `if: branch == 'release'` is false)\n\
             \x20 layer 3: d\n\
             \n\
             pipeline release (.deploylite/pipelines/tags.yaml): not triggered: push to branch main: on.push filters only tags, so branch pushes do not trigger it\n"
        )
    );

    // On a branch where `if:` is true, nothing is marked skipped.
    repo.git(&["branch", "release"]);
    let root = repo.path().display().to_string();
    let (code, out, _) = run_cmd(deploylite(&["plan", "--repo", &root, "--ref", "release"]));
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("{name} @ refs/heads/release {commit}\n")),
        "{out}"
    );
    assert!(out.contains("  layer 2: b, c\n"), "{out}");
}

#[test]
fn plan_shows_path_filtered_pipelines_as_skipped() {
    let repo = TestRepo::new();
    repo.pipeline(
        "build.yaml",
        "name: build\non:\n  push:\n    paths: [\"src/**\"]\nstages:\n  compile:\n    steps: [\"true\"]\n",
    );
    repo.write("src/a.txt", "1\n").write("docs/a.md", "1\n");
    repo.commit("initial");
    repo.write("docs/a.md", "2\n");
    repo.commit("docs only");
    let (code, out, err) = in_dir(repo.path(), &["plan"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("pipeline build (.deploylite/pipelines/build.yaml): skipped, no changed file matches its path filters"),
        "{out}"
    );
    assert!(!out.contains("layer"), "{out}");

    repo.write("src/a.txt", "2\n");
    repo.commit("code");
    let (code, out, _) = in_dir(repo.path(), &["plan"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "pipeline build (.deploylite/pipelines/build.yaml): would run\n  layer 1: compile\n"
        ),
        "{out}"
    );
}

#[test]
fn plan_reports_invalid_pipelines_and_exits_1() {
    let repo = TestRepo::new();
    repo.pipeline("bad.yaml", BAD);
    repo.commit("bad");
    let (code, out, err) = in_dir(repo.path(), &["plan"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "pipeline bad (.deploylite/pipelines/bad.yaml): invalid, would be recorded as `error`"
        ),
        "{out}"
    );
    for l in BAD_LINES {
        assert!(
            out.contains(&format!("  .deploylite/pipelines/bad.yaml:{l}\n")),
            "{out}"
        );
    }
    let (code, _, err) = in_dir(repo.path(), &["plan", "--ref", "no-such-branch"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown revision `no-such-branch`"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// run

#[test]
fn run_executes_the_working_copy_and_prints_prefixed_logs() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        r#"name: ci
stages:
  build:
    steps:
      - run: echo "built $(cat version.txt)"
  test:
    needs: [build]
    steps:
      - run: echo "tested attempt $DEPLOYLITE_ATTEMPT"
"#,
    );
    repo.write("version.txt", "committed\n");
    repo.commit("ci");
    repo.write("version.txt", "uncommitted\n"); // `run` uses the files on disk
    let root = repo.path().display().to_string();
    let (code, out, err) = run_cmd(deploylite(&["run", "--repo", &root]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("[build] built uncommitted\n"), "{out}");
    assert!(out.contains("[test] tested attempt 1\n"), "{out}");
    let built = out.find("[build] built").unwrap();
    let tested = out.find("[test] tested").unwrap();
    assert!(built < tested, "test ran before build:\n{out}");
    assert!(err.trim_end().ends_with("run success"), "{err}");
}

#[test]
fn run_of_a_failing_pipeline_exits_1() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  a:\n    steps: [\"echo failing; exit 4\"]\n  b:\n    needs: [a]\n    steps: [\"echo never\"]\n",
    );
    let (code, out, err) = in_dir(repo.path(), &["run"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("[a] failing\n"), "{out}");
    assert!(out.contains("[a] step 1 exited with 4\n"), "{out}");
    assert!(!out.contains("never"), "{out}");
    assert!(err.trim_end().ends_with("run failed"), "{err}");
}

#[test]
fn run_retries_like_the_daemon() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        r#"name: ci
stages:
  flaky:
    retry: { max: 1, backoff: 100ms, exit_codes: [75] }
    steps:
      - run: echo "attempt $DEPLOYLITE_ATTEMPT"; test "$DEPLOYLITE_ATTEMPT" = 2 || exit 75
"#,
    );
    let (code, out, err) = in_dir(repo.path(), &["run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("[flaky] attempt 1\n") && out.contains("[flaky] attempt 2\n"),
        "{out}"
    );
    assert!(
        out.contains("[flaky] previous attempt 1: failed (step 1 exited with 75)"),
        "{out}"
    );
}

#[test]
fn run_chooses_among_several_pipelines_with_dash_dash_pipeline() {
    let repo = TestRepo::new();
    repo.pipeline(
        "a.yaml",
        "name: alpha\nstages:\n  first:\n    steps: [\"echo alpha-ran\"]\n",
    );
    repo.pipeline(
        "b.yaml",
        "name: beta\nstages:\n  second:\n    steps: [\"echo beta-ran\"]\n",
    );

    let (code, out, err) = in_dir(repo.path(), &["run", "--pipeline", "beta"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("[second] beta-ran\n"), "{out}");
    assert!(!out.contains("alpha-ran"), "{out}");

    let (code, out, err) = in_dir(repo.path(), &["run"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(
            "this working copy has several pipelines; choose one with --pipeline: alpha, beta"
        ),
        "{err}"
    );
    assert!(!out.contains("-ran"), "{out}");

    let (code, out, err) = in_dir(repo.path(), &["run", "--pipeline", "gamma"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("no pipeline named `gamma`; there are: alpha, beta"),
        "{err}"
    );
    assert!(!out.contains("-ran"), "{out}");
}

#[test]
fn run_refuses_invalid_pipelines() {
    let repo = TestRepo::new();
    repo.pipeline("bad.yaml", BAD);
    let (code, out, err) = in_dir(repo.path(), &["run"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(".deploylite/pipelines/bad.yaml:{}", BAD_LINES[0])),
        "{out}"
    );
    assert!(err.contains("the pipelines do not validate"), "{err}");
}

/// Regression: `deploylite run` once built its scheduler with no runner labels, so a stage with
/// `runs-on:` waited forever for "no matching runner" and the command never returned.
#[test]
fn run_of_a_stage_with_runs_on_local_finishes() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  build:\n    runs_on: [local]\n    steps: [\"echo on-local\"]\n",
    );
    let mut cmd = deploylite(&["run"]);
    cmd.current_dir(repo.path());
    let out = output_within(cmd, Duration::from_secs(10));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[build] on-local"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// status / cancel against a daemon

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_runs_and_shows_one_run_as_a_table_or_json() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  build:\n    steps: [\"true\"]\n  test:\n    needs: [build]\n    steps: [\"exit 7\"]\n",
    );
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("ci", &commit).await);
    daemon.wait_run_done(rid).await;
    let short = &commit[..12];

    let (code, out, err) = daemon.cli(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows = lines(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0]
            .split_whitespace()
            .eq(["RUN", "REPO", "PIPELINE", "STATUS", "REF", "COMMIT", "CREATED"]),
        "{out}"
    );
    let cells: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(
        &cells[..6],
        &[
            rid.to_string().as_str(),
            "app",
            "ci",
            "failed",
            "main",
            short
        ],
        "{out}"
    );

    let (code, out, err) = daemon.cli(&["status", &rid.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!(
            "run #{rid} app/ci refs/heads/main {short}\nstatus: failed\n"
        )),
        "{out}"
    );
    let stage_rows: Vec<Vec<&str>> = lines(&out)
        .iter()
        .skip(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        stage_rows[0],
        ["STAGE", "STATUS", "ATTEMPT", "EXIT", "WAITING", "FOR"],
        "{out}"
    );
    assert_eq!(stage_rows[1], ["build", "success", "1", "0"], "{out}");
    assert_eq!(stage_rows[2], ["test", "failed", "1", "7"], "{out}");

    let (code, out, _) = daemon.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], rid);
    assert_eq!(list[0]["status"], "failed");

    let (code, out, _) = daemon.cli(&["status", &rid.to_string(), "--json"]);
    assert_eq!(code, 0);
    let one: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(one["commit"], commit.as_str());
    assert_eq!(one["stages"][1]["exit_code"], 7);

    let (code, out, _) = daemon.cli(&["status", "--status", "success", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]");

    let (code, _, err) = daemon.cli(&["status", "--status", "bogus"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("400") && err.contains("unknown status `bogus`"),
        "{err}"
    );
    let (code, _, err) = daemon.cli(&["status", "424242"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("404") && err.contains("no run #424242"),
        "{err}"
    );

    // DEPLOYLITE_SERVER stands in for --server.
    let mut cmd = deploylite(&["status", "--json"]);
    cmd.env("DEPLOYLITE_SERVER", &daemon.url);
    // The token fallback reads ./.deploylite-data/admin.token: in a clone where the README's
    // first command ran, that is the example daemon's token, which this daemon refuses.
    cmd.env("DEPLOYLITE_DATA_DIR", &daemon.data_dir);
    let (code, out, err) = run_cmd(cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["id"], rid);

    // Another daemon's admin token in the guessed data dir (the README's example daemon's, in
    // a clone where it ran): reads fall back to anonymous, and a refused write names the file.
    let elsewhere = tempfile::tempdir().unwrap();
    let planted = elsewhere.path().join("admin.token");
    std::fs::write(&planted, "dl_not-this-daemons-token\n").unwrap();
    let with_planted_token = |args: &[&str]| {
        let mut cmd = deploylite(args);
        cmd.env("DEPLOYLITE_SERVER", &daemon.url);
        cmd.env("DEPLOYLITE_DATA_DIR", elsewhere.path());
        run_cmd(cmd)
    };
    let (code, out, err) = with_planted_token(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["id"], rid);
    let (code, _, err) = with_planted_token(&["cancel", &rid.to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("refused the token from")
            && err.contains(&planted.display().to_string())
            && err.contains("--token-file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_finished_or_unknown_run_fails() {
    let repo = TestRepo::new();
    repo.pipeline(
        "ci.yaml",
        "name: ci\nstages:\n  s:\n    steps: [\"true\"]\n",
    );
    let commit = repo.commit("ci");
    let daemon = Daemon::start(&[&repo], "").await;
    let rid = id(&daemon.wait_for_commit_run("ci", &commit).await);
    daemon.wait_run_done(rid).await;

    let (code, out, err) = daemon.cli(&["cancel", &rid.to_string()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.trim(), format!("run #{rid} is already success"));
    assert_eq!(status(&daemon.run(rid).await), "success");

    let (code, _, err) = daemon.cli(&["cancel", "424242"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("404") && err.contains("no run #424242"),
        "{err}"
    );
}

#[test]
fn status_and_cancel_without_a_daemon_say_so() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    for args in [vec!["status"], vec!["cancel", "1"]] {
        let mut cmd = deploylite(&args);
        cmd.args(["--server", &server]);
        let (code, _, err) = run_cmd(cmd);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            err.contains(&format!("cannot reach the daemon at {server}")),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// help and configuration

#[test]
fn help_lists_every_command() {
    let (code, out, _) = run_cmd(deploylite(&["--help"]));
    assert_eq!(code, 0);
    for command in ["serve", "validate", "plan", "run", "status", "cancel"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(command)),
            "`{command}` missing:\n{out}"
        );
    }
    assert!(out.contains(".deploylite/pipelines/*.yaml"), "{out}");
    let (code, out, _) = run_cmd(deploylite(&["--version"]));
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("deploylite {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn serve_help_explains_the_configuration_layers() {
    let (code, out, _) = run_cmd(deploylite(&["serve", "--help"]));
    assert_eq!(code, 0);
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "built-in defaults, the YAML file given by --config, DEPLOYLITE_* environment variables",
        "then these flags",
        "--config <FILE>",
        "DEPLOYLITE_CONFIG",
        "--listen <ADDR>",
        "--data-dir <DIR>",
        "--database-url <URL>",
        "--max-parallel-stages <N>",
        "DEPLOYLITE_DATABASE_URL",
        "DEPLOYLITE_REPOS",
    ] {
        assert!(
            flat.contains(needle),
            "`{needle}` missing from serve --help:\n{out}"
        );
    }
}

/// `serve --help` names the keys through their flags and variables and sends the reader to
/// README.md "for every key": that file must exist next to the binary's sources and document
/// every key of the config file.
#[test]
fn serve_help_points_to_a_readme_that_documents_every_config_key() {
    let (code, out, _) = run_cmd(deploylite(&["serve", "--help"]));
    assert_eq!(code, 0);
    assert!(out.contains("See README.md for every key"), "{out}");
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text =
        std::fs::read_to_string(&readme).unwrap_or_else(|e| panic!("{}: {e}", readme.display()));
    let mut missing = Vec::new();
    for key in [
        "listen",
        "data_dir",
        "database_url",
        "max_parallel_stages",
        "repos",
        "name",
        "url",
        "branches",
        "poll_interval",
    ] {
        if !text.contains(&format!("`{key}`")) {
            missing.push(key);
        }
    }
    assert!(
        missing.is_empty(),
        "README.md does not document {missing:?}"
    );
}

#[test]
fn serve_rejects_a_config_file_with_an_unknown_key_naming_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploylite.yaml");
    std::fs::write(&file, "listen: 127.0.0.1:1\nrepoz: []\n").unwrap();
    let mut cmd = deploylite(&["serve", "--config", file.to_str().unwrap()]);
    cmd.current_dir(dir.path());
    let (code, _, err) = run_cmd(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{}:2:1: unknown key `repoz`; did you mean `repos`?",
            file.display()
        )),
        "{err}"
    );

    // Nested keys too.
    std::fs::write(&file, "repos:\n  - name: a\n    url: /x\n    poll: 1s\n").unwrap();
    let mut cmd = deploylite(&["serve", "--config", file.to_str().unwrap()]);
    cmd.current_dir(dir.path());
    let (code, _, err) = run_cmd(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}:4:5: ", file.display())) && err.contains("unknown key `poll`"),
        "{err}"
    );
    assert!(
        !dir.path().join(".deploylite-data").exists(),
        "a rejected config must not create a data dir"
    );
}

#[test]
fn serve_rejects_bad_values_from_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploylite.yaml");
    std::fs::write(
        &file,
        "repos:\n  - {name: a, url: /nonexistent, poll_interval: 50ms}\n",
    )
    .unwrap();
    let mut cmd = deploylite(&["serve", "--config", file.to_str().unwrap()]);
    cmd.current_dir(dir.path());
    let (code, _, err) = run_cmd(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("repos[0] (a).poll_interval must be at least 100ms"),
        "{err}"
    );

    // The environment layer is read (and validated) too.
    std::fs::write(&file, "listen: 127.0.0.1:1\n").unwrap();
    let mut cmd = deploylite(&["serve", "--config", file.to_str().unwrap()]);
    cmd.current_dir(dir.path())
        .env("DEPLOYLITE_LISTEN", "not-an-address");
    let (code, _, err) = run_cmd(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("listen: `not-an-address` is not an address"),
        "{err}"
    );

    // ...and a flag beats both: --max-parallel-stages 0 is refused even if the file is fine.
    let mut cmd = deploylite(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--max-parallel-stages",
        "0",
    ]);
    cmd.current_dir(dir.path())
        .env("DEPLOYLITE_MAX_PARALLEL_STAGES", "3");
    let (code, _, err) = run_cmd(cmd);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("max_parallel_stages must be at least 1"),
        "{err}"
    );
}

/// GitHub Actions' `+`: a semver tag filter matches `2.4.0`; the pipeline a tag does not
/// trigger is named, with the reason.
#[test]
fn plan_of_a_tag_names_the_pipelines_it_does_not_trigger() {
    let repo = TestRepo::new();
    repo.pipeline(
        "publish.yaml",
        "name: publish\non:\n  push:\n    tags: ['[0-9]+.[0-9]+.[0-9]+*']\nstages:\n  upload:\n    steps: [x]\n",
    );
    repo.pipeline(
        "release.yaml",
        "name: release\non:\n  push:\n    tags: [v*]\nstages:\n  s:\n    steps: [x]\n",
    );
    repo.pipeline("ci.yaml", "name: ci\nstages:\n  test:\n    steps: [x]\n");
    let commit = repo.commit("release");
    repo.git(&["tag", "2.4.0"]);
    let name = repo
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let (code, out, err) = in_dir(repo.path(), &["plan", "--ref", "2.4.0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "{name} @ refs/tags/2.4.0 {commit}\n\
             \n\
             pipeline ci (.deploylite/pipelines/ci.yaml): not triggered: push to tag 2.4.0: a pipeline without `on:` runs on branch pushes only\n\
             \n\
             pipeline publish (.deploylite/pipelines/publish.yaml): would run\n\
             \x20 layer 1: upload\n\
             \n\
             pipeline release (.deploylite/pipelines/release.yaml): not triggered: push to tag 2.4.0 matches none of on.push.tags [v*]\n"
        )
    );
}

/// `plan` finds the repository from a subdirectory, and takes any revision git accepts.
#[test]
fn plan_finds_the_repository_and_takes_any_revision() {
    let repo = TestRepo::new();
    repo.pipeline("ci.yaml", "name: ci\nstages:\n  test:\n    steps: [x]\n");
    repo.write("src/lib/a.txt", "1\n");
    let first = repo.commit("first");
    repo.git(&["tag", "v1.0"]);
    repo.write("src/lib/a.txt", "2\n");
    let second = repo.commit("second");
    let name = repo
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    let sub = repo.path().join("src/lib");
    let (code, out, err) = in_dir(&sub, &["plan"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("{name} @ refs/heads/main {second}\n")),
        "{out}"
    );

    let short = &first[..7];
    for (rev, git_ref) in [
        ("HEAD~1", "refs/heads/main"),
        ("main^", "refs/heads/main"),
        ("main~1", "refs/heads/main"),
        (short, "refs/heads/main"),
        ("v1.0", "refs/tags/v1.0"),
    ] {
        let (code, out, err) = in_dir(&sub, &["plan", "--ref", rev]);
        assert_eq!(code, 0, "{rev}: {out}{err}");
        assert!(
            out.starts_with(&format!("{name} @ {git_ref} {first}\n")),
            "{rev}: {out}"
        );
    }
    let (code, _, err) = in_dir(&sub, &["plan", "--ref", "HEAD~5"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown revision `HEAD~5`"), "{err}");
    let (code, _, err) = in_dir(&sub, &["plan", "--ref", "--output=x"]);
    assert_eq!(code, 2, "{err}");
}
