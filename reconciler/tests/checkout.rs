//! Checking out hostile trees. The trees are built with real git plumbing (`hash-object`,
//! `mktree --missing`, `commit-tree`, `update-ref`), as an attacker pushing them would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use deploylite_reconciler::git::GitRepo;

fn git(repo: &Path, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=t", "-c", "user.email=t@deploylite.invalid"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run git");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("git output");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository whose `main` is one commit of `tree` (lines as `git mktree` reads them, with
/// `{file}` standing for a blob `pwned\n` and `{sub}` for a tree holding it as `pwned`).
fn hostile_repo(link_target: &str, tree: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path();
    git(repo, &["init", "--quiet", "--initial-branch=main"], "");
    let link = git(repo, &["hash-object", "-w", "--stdin"], link_target);
    let file = git(repo, &["hash-object", "-w", "--stdin"], "pwned\n");
    let sub = git(repo, &["mktree"], &format!("100644 blob {file}\tpwned\n"));
    let listing = tree
        .replace("{link}", &link)
        .replace("{file}", &file)
        .replace("{sub}", &sub);
    let root = git(repo, &["mktree", "--missing"], &listing);
    let commit = git(repo, &["commit-tree", &root, "-m", "hostile"], "");
    git(repo, &["update-ref", "refs/heads/main", &commit], "");
    (dir, commit)
}

fn outside_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("outside-")
        .tempdir_in("/tmp")
        .expect("outside dir")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_symlink_and_a_directory_of_the_same_name_cannot_write_outside_the_workspace() {
    let outside = outside_dir();
    let target = outside.path().display().to_string();
    let (repo, commit) = hostile_repo(&target, "120000 blob {link}\tzz\n040000 tree {sub}\tzz\n");
    let workspace = tempfile::tempdir().expect("workspace");
    let ws = workspace.path().join("ws");

    let git = GitRepo::local(repo.path()).expect("open");
    let error = git
        .checkout(&commit, &ws)
        .expect_err("a tree with duplicate entries was checked out")
        .to_string();

    assert!(error.contains("`zz`"), "the error names the path: {error}");
    assert!(error.contains("duplicate"), "the error says why: {error}");
    assert_eq!(
        entries(outside.path()),
        Vec::<String>::new(),
        "the checkout wrote outside the workspace"
    );
}

#[test]
fn an_existing_symlink_in_the_workspace_is_never_written_through() {
    // No duplicate in the tree: the symlink is already in the workspace (a leftover, or a
    // race), and the tree's directory of the same name must not go through it.
    let outside = outside_dir();
    let (repo, commit) = hostile_repo("", "040000 tree {sub}\tzz\n");
    let workspace = tempfile::tempdir().expect("workspace");
    std::os::unix::fs::symlink(outside.path(), workspace.path().join("zz")).expect("symlink");

    let git = GitRepo::local(repo.path()).expect("open");
    let error = git
        .checkout(&commit, workspace.path())
        .expect_err("the checkout went through a symlink")
        .to_string();

    assert!(error.contains("zz"), "{error}");
    assert_eq!(entries(outside.path()), Vec::<String>::new());
}

#[test]
fn entries_named_dot_dot_or_dot_git_are_refused_with_their_name() {
    for name in ["..", ".git", ".Git"] {
        let (repo, commit) = hostile_repo("", &format!("040000 tree {{sub}}\t{name}\n"));
        let workspace = tempfile::tempdir().expect("workspace");
        let ws = workspace.path().join("a").join("ws");
        let git = GitRepo::local(repo.path()).expect("open");
        let error = git
            .checkout(&commit, &ws)
            .expect_err("a hostile name was checked out")
            .to_string();
        assert!(error.contains(&format!("`{name}`")), "{name}: {error}");
        assert_eq!(entries(&ws), Vec::<String>::new(), "{name}");
        assert!(!workspace.path().join("a").join("pwned").exists(), "{name}");
    }
}

#[test]
fn an_ordinary_tree_is_checked_out_with_links_modes_and_subdirectories() {
    let (repo, commit) = hostile_repo(
        "sub/pwned",
        "100755 blob {file}\trun.sh\n120000 blob {link}\tlink\n040000 tree {sub}\tsub\n",
    );
    let workspace = tempfile::tempdir().expect("workspace");
    let ws = workspace.path().join("ws");
    GitRepo::local(repo.path())
        .expect("open")
        .checkout(&commit, &ws)
        .expect("checkout");
    assert_eq!(entries(&ws), vec!["link", "run.sh", "sub"]);
    assert_eq!(
        std::fs::read_link(ws.join("link")).expect("link"),
        Path::new("sub/pwned")
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("link")).expect("via link"),
        "pwned\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ws.join("run.sh"))
        .expect("run.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}
