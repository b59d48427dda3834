//! `deploylite run` with the real binary: the checkout is never touched unless `--in-place`
//! says so, and the local executor refuses `image:` loudly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{cli, run_cmd, TestRepo};

/// `deploylite run <args>` in `dir`, with `env` set: (exit code, stdout, stderr).
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = cli();
    cmd.arg("run").args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(cmd)
}

/// Every file of the working copy but `.git`, with its bytes.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            if entry.file_type().expect("file type").is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(root).expect("under root");
                out.insert(
                    name.display().to_string(),
                    std::fs::read(&path).expect("read"),
                );
            }
        }
    }
    out
}

/// A checkout with committed files, an uncommitted change, a deleted tracked file, an untracked
/// file and an ignored one.
fn checkout_with_local_changes(pipeline: &str) -> TestRepo {
    let repo = TestRepo::new();
    repo.pipeline("ci.yaml", pipeline);
    repo.write(".gitignore", "*.log\n")
        .write("src/main.c", "int main(void) { return 0; }\n")
        .write("tests/data/a/_external/big.txt", "external\n")
        .write("version.txt", "committed\n")
        .write("gone.txt", "tracked, deleted before the run\n");
    repo.commit("initial");
    repo.write("version.txt", "uncommitted\n")
        .write("untracked.txt", "not added yet\n")
        .write("build.log", "ignored\n")
        .remove("gone.txt");
    repo
}

/// tomli's coverage step deleted 902 tracked files of the checkout it ran in.
const WRECKING: &str = r#"name: ci
stages:
  wreck:
    steps:
      - run: test "$(cat version.txt)" = uncommitted && test -f untracked.txt && test ! -e build.log && test ! -e gone.txt && test ! -e .git && echo "the copy holds the working tree"
      - run: rm -rf src tests/data/*/_external version.txt && echo new > new-file.txt && echo changed > untracked.txt
"#;

#[test]
fn run_works_in_a_copy_and_leaves_the_checkout_as_it_was() {
    let repo = checkout_with_local_changes(WRECKING);
    let status_before = repo.git(&["status", "--porcelain", "--ignored"]);
    let files_before = files(repo.path());

    let (code, out, err) = run_in(repo.path(), &[], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("[wreck] the copy holds the working tree\n"),
        "{out}"
    );
    assert_eq!(
        repo.git(&["status", "--porcelain", "--ignored"]),
        status_before
    );
    assert_eq!(files(repo.path()), files_before, "the checkout changed");

    // The copy is gone too.
    let line = err
        .lines()
        .find(|l| l.starts_with("running pipeline `ci`"))
        .unwrap_or_else(|| panic!("{err}"));
    let canonical = repo.path().canonicalize().unwrap();
    let prefix = format!(
        "running pipeline `ci` ({0}/.deploylite/pipelines/ci.yaml) in a copy of {0} (6 files, in ",
        canonical.display()
    );
    assert!(line.starts_with(&prefix), "{line}");
    let copy = line[prefix.len()..]
        .strip_suffix("; deleted afterwards)")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(!Path::new(copy).exists(), "{copy} is still there");
}

#[test]
fn run_in_place_changes_the_checkout_and_says_so() {
    let repo = checkout_with_local_changes(
        "name: ci\nstages:\n  wreck:\n    steps:\n      - run: rm -rf src && echo new > new-file.txt\n",
    );
    let (code, out, err) = run_in(repo.path(), &["--in-place"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let canonical = repo.path().canonicalize().unwrap();
    assert_eq!(
        err.lines().next(),
        Some(
            format!(
                "warning: --in-place: the steps run in {} itself; whatever they change or delete there stays changed or deleted",
                canonical.display()
            )
            .as_str()
        ),
        "{err}"
    );
    assert!(!repo.path().join("src").exists());
    assert_eq!(
        std::fs::read_to_string(repo.path().join("new-file.txt")).unwrap(),
        "new\n"
    );
}

const WITH_IMAGE: &str = r#"name: ci
stages:
  build:
    image: alpine:3.20
    resources: { cpu: 1, memory: 512Mi }
    steps:
      - run: echo "ran on the host"
"#;

#[test]
fn run_fails_a_stage_with_an_image_unless_told_to_ignore_it() {
    let repo = TestRepo::new();
    repo.pipeline("ci.yaml", WITH_IMAGE);

    let (code, out, err) = run_in(repo.path(), &[], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "[build] the executor could not run the stage: image: the local executor cannot run \
             stage `build` in image `alpine:3.20`: it runs steps on this machine, not in \
             containers; send the stage to a Docker or Kubernetes runner (`runs_on` one of its \
             labels), or set `local_runner.ignore_image: true` \
             (DEPLOYLITE_LOCAL_RUNNER__IGNORE_IMAGE=true, or --ignore-image) to run it here \
             without the image\n"
        ),
        "{out}"
    );
    assert!(!out.contains("ran on the host"), "{out}");
    assert!(err.trim_end().ends_with("run failed"), "{err}");

    let warnings = "[build] warning: image `alpine:3.20` ignored (local_runner.ignore_image): \
                    stage `build` runs on this machine, not in a container\n\
                    [build] warning: the local executor does not enforce resources: stage \
                    `build` runs without its limits (cpu: 1, memory: 512Mi)\n";
    for (args, env) in [
        (&["--ignore-image"][..], &[][..]),
        (
            &[][..],
            &[("DEPLOYLITE_LOCAL_RUNNER__IGNORE_IMAGE", "true")][..],
        ),
    ] {
        let (code, out, err) = run_in(repo.path(), args, env);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(warnings), "{out}");
        assert!(out.contains("[build] ran on the host\n"), "{out}");
    }
}
