//! Local stages cannot reach the secrets of the process that runs them: the real daemon (and a
//! real `deploylite runner`) run a stage that hunts for a known token in every process's
//! environment and command line, in the config file and in the data dir, tries to open the
//! database and the runner's credential, and to signal its parent. The stage must find
//! nothing.
//!
//! As root (here and in CI) the daemon drops stages to `nobody`; a second daemon runs as
//! `nobody` itself, so that the non-root path (non-dumpable + Landlock) is exercised too. Not as
//! root, the daemon runs as the test's user and only the second path applies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::{cli, find_stage, http_client, id, status, wait, Daemon, TestRepo, DEADLINE};
use serde_json::Value;

/// The fake forge token, in two halves: the pipeline (and so the stage's own environment and
/// workspace) carries only the halves, the stage joins them in its shell's memory.
const TOKEN_HEAD: &str = "ghp_isolation";
const TOKEN_TAIL: &str = "_canary_5f1c9e0b7a";
const NOBODY: u32 = 65534;

fn token() -> String {
    format!("{TOKEN_HEAD}{TOKEN_TAIL}")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The hunt. `sh` only, matching in the shell (a `grep "$token"` would put the token on a
/// command line of its own). Exits 0 only if it found nothing and opened nothing it must not.
const PROBE: &str = r#"
set +e
token="$HEAD$TAIL"
found=""
holds() { # file
  content=$(tr '\0' ' ' < "$1" 2>/dev/null) || return 1
  case "$content" in *"$token"*) return 0 ;; esac
  return 1
}
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline $SECRETS; do
  holds "$f" && found="$found $f"
done
for f in $(find $DIRS -type f 2>/dev/null); do
  holds "$f" && found="$found $f"
done
for f in $FORBIDDEN; do
  if cat "$f" > /dev/null 2>&1; then found="$found opened:$f"; else echo "cannot open $f"; fi
done
for d in $DIRS; do
  if ls "$d" > /dev/null 2>&1; then found="$found listed:$d"; else echo "cannot list $d"; fi
done
if kill -0 "$PPID" 2>/dev/null; then found="$found signalled:$PPID"; fi
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME"
if [ -n "$found" ]; then echo "FOUND:$found"; exit 1; fi
echo "found nothing"
"#;

/// Commits a pipeline running [`PROBE`] with `env` (names of files and directories: no
/// secrets) on runners labelled `runs_on`.
fn probe_pipeline(repo: &TestRepo, runs_on: &str, env: &[(&str, String)]) -> String {
    let mut yaml = format!("name: probe\nstages:\n  probe:\n    runs_on: [{runs_on}]\n    env:\n");
    yaml += &format!("      HEAD: {TOKEN_HEAD:?}\n      TAIL: {TOKEN_TAIL:?}\n");
    for (k, v) in env {
        yaml += &format!("      {k}: {v:?}\n");
    }
    yaml += "    steps:\n      - run: |\n";
    for line in PROBE.lines() {
        yaml += &format!("          {line}\n");
    }
    repo.pipeline("probe.yaml", &yaml);
    repo.commit("probe")
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown");
    if fs::symlink_metadata(path).expect("stat").is_dir() {
        for entry in fs::read_dir(path).expect("read_dir") {
            chown_tree(&entry.expect("entry").path(), uid);
        }
    }
}

/// `deploylite serve` with the token in its environment and in its config file, optionally as
/// another user.
struct SecretDaemon {
    child: Child,
    url: String,
    stderr: PathBuf,
    http: reqwest::Client,
}

impl SecretDaemon {
    /// `forges_extra` goes under `forges:`, next to the GitHub token.
    async fn start(
        dir: &Path,
        repo: &TestRepo,
        forges_extra: &str,
        user: Option<u32>,
    ) -> SecretDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.join("deploylite.yaml");
        fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ndata_dir: {}\nforges:\n  github:\n    token: {}\n\
                 {forges_extra}repos:\n  - {{ name: app, url: {}, poll_interval: 100ms }}\n",
                dir.join("data").display(),
                token(),
                repo.path().display()
            ),
        )
        .expect("config");
        chmod(&config, 0o600);
        let stderr = dir.join("daemon.stderr");
        let mut cmd = match user {
            // Another user cannot execute the binary where cargo put it (under /root).
            Some(_) => {
                let bin = dir.join("deploylite");
                if fs::hard_link(common::BIN, &bin).is_err() {
                    fs::copy(common::BIN, &bin).expect("copy the binary");
                }
                let mut cmd = std::process::Command::new(&bin);
                cmd.env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .stdin(Stdio::null());
                cmd
            }
            None => cli(),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("DEPLOYLITE_FORGES__GITHUB__TOKEN", token())
            .env("DEPLOYLITE_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr"));
        if let Some(uid) = user {
            chown_tree(dir, uid);
            cmd.uid(uid).gid(uid);
        }
        let daemon = SecretDaemon {
            child: cmd.spawn().expect("spawn deploylite serve"),
            url: format!("http://127.0.0.1:{port}"),
            stderr,
            http: http_client(),
        };
        daemon.wait_for("/healthz", |_| true).await;
        daemon
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls GET `path` until it answers 200 with a body that satisfies `pred`.
    async fn wait_for(&self, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let pred = &pred;
        let found = wait::try_until(DEADLINE, || async move {
            let resp = self
                .http
                .get(format!("{}{path}", self.url))
                .send()
                .await
                .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let body: Value = resp.json().await.unwrap_or_default();
            Some(body).filter(pred)
        })
        .await;
        found.unwrap_or_else(|timed_out| {
            panic!(
                "{timed_out} waiting for {path}\n--- daemon stderr ---\n{}",
                self.stderr()
            )
        })
    }

    /// The probe's run, once final, and its log.
    async fn probe_result(&self) -> (Value, String) {
        let runs = self
            .wait_for("/api/v1/runs", |runs| {
                runs.as_array()
                    .is_some_and(|r| r.iter().any(|r| r["pipeline"] == "probe"))
            })
            .await;
        let rid = runs
            .as_array()
            .and_then(|r| r.iter().find(|r| r["pipeline"] == "probe"))
            .map(id)
            .expect("the probe's run");
        let run = self
            .wait_for(&format!("/api/v1/runs/{rid}"), common::is_final)
            .await;
        let log = self
            .http
            .get(format!("{}/api/v1/runs/{rid}/stages/probe/log", self.url))
            .send()
            .await
            .expect("log")
            .text()
            .await
            .expect("log text");
        (run, log)
    }
}

impl Drop for SecretDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The probe ran to its end, found nothing and was refused each of `forbidden`.
fn assert_found_nothing(run: &Value, log: &str, stderr: &str, forbidden: &[&Path]) {
    for path in forbidden {
        assert!(
            log.contains(&format!("cannot open {}", path.display())),
            "{} was not refused:\n{log}",
            path.display()
        );
    }
    assert!(
        log.contains("found nothing") && !log.contains("FOUND"),
        "the stage reached a secret:\n{log}\n--- daemon stderr ---\n{stderr}"
    );
    assert_eq!(status(run), "success", "{run:#}\n{log}");
    assert_eq!(find_stage(run, "probe")["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_of_a_root_daemon_runs_as_nobody_and_finds_no_secret() {
    if !is_root() {
        deploylite_testkit::skip(
            "a_stage_of_a_root_daemon_runs_as_nobody_and_finds_no_secret",
            "needs root (the non-root path is tested below)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The documented layout: the stage user may pass through to the data dir.
    chmod(dir.path(), 0o711);
    let data = dir.path().join("data");
    // Readable by everyone, but it holds a secret: the daemon must say so.
    let loose = dir.path().join("gitlab-token");
    fs::write(&loose, "glpat-not-the-canary\n").unwrap();
    chmod(&loose, 0o644);
    let repo = TestRepo::new();
    probe_pipeline(
        &repo,
        "local",
        &[
            (
                "SECRETS",
                dir.path().join("deploylite.yaml").display().to_string(),
            ),
            ("DIRS", data.display().to_string()),
            (
                "FORBIDDEN",
                format!(
                    "{} {}",
                    data.join("deploylite.db").display(),
                    dir.path().join("deploylite.yaml").display()
                ),
            ),
        ],
    );
    let daemon = SecretDaemon::start(
        dir.path(),
        &repo,
        &format!("  gitlab:\n    token_file: {}\n", loose.display()),
        None,
    )
    .await;
    let (run, log) = daemon.probe_result().await;
    let stderr = daemon.stderr();
    assert_found_nothing(
        &run,
        &log,
        &stderr,
        &[
            &data.join("deploylite.db"),
            &dir.path().join("deploylite.yaml"),
        ],
    );
    let workspace = data.join("workspaces").join(id(&run).to_string());
    assert!(
        log.contains(&format!(
            "uid={NOBODY} gid={NOBODY} groups={NOBODY} home={}",
            workspace.display()
        )),
        "not nobody, or supplementary groups kept:\n{log}"
    );
    assert!(
        stderr.contains("stages run as nobody (uid 65534"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("chmod 600 {}", loose.display())),
        "no warning about the readable token file:\n{stderr}"
    );
    for (path, mode) in [
        (data.clone(), 0o711),
        (data.join("workspaces"), 0o711),
        (data.join("logs"), 0o700),
        (data.join("deploylite.db"), 0o600),
        (workspace, 0o700),
    ] {
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            mode,
            "{}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_of_a_daemon_not_run_as_root_finds_no_secret() {
    // As root, the daemon itself runs as nobody; otherwise as us.
    let user = is_root().then_some(NOBODY);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("deploylite.yaml");
    let repo = TestRepo::new();
    probe_pipeline(
        &repo,
        "local",
        &[
            ("SECRETS", config.display().to_string()),
            ("DIRS", data.display().to_string()),
            (
                "FORBIDDEN",
                format!(
                    "{} {}",
                    data.join("deploylite.db").display(),
                    config.display()
                ),
            ),
        ],
    );
    if let Some(uid) = user {
        chmod(repo.path(), 0o755);
        chown_tree(repo.path(), uid);
    }
    let daemon = SecretDaemon::start(dir.path(), &repo, "", user).await;
    // Non-dumpable: another process of the daemon's user, outside any sandbox, cannot read
    // its environment either.
    let mut peek = std::process::Command::new("cat");
    peek.arg(format!("/proc/{}/environ", daemon.child.id()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(uid) = user {
        peek.uid(uid).gid(uid);
    }
    let peeked = peek.output().expect("cat");
    assert!(
        !peeked.status.success() && !String::from_utf8_lossy(&peeked.stdout).contains(&token()),
        "a process of the daemon's user read its environment"
    );
    let (run, log) = daemon.probe_result().await;
    let stderr = daemon.stderr();
    if stderr.contains("Landlock is not available") {
        // Only the non-dumpable part holds: the files are the stage's to read.
        let found = log
            .lines()
            .find_map(|l| l.split_once("FOUND:").map(|(_, f)| f.to_string()))
            .unwrap_or_default();
        assert!(
            !found.contains("/proc/"),
            "the stage read our environment:\n{log}"
        );
        eprintln!("Landlock unavailable: only the non-dumpable process was tested");
        return;
    }
    assert!(
        stderr.contains("isolation=Landlock (fully enforced)"),
        "{stderr}"
    );
    assert_found_nothing(&run, &log, &stderr, &[&data.join("deploylite.db"), &config]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_of_a_root_runner_runs_as_nobody_and_cannot_read_its_credential() {
    if !is_root() {
        deploylite_testkit::skip(
            "a_stage_of_a_root_runner_runs_as_nobody_and_cannot_read_its_credential",
            "needs root",
        );
        return;
    }
    // The registration token is the secret here: the runner has it in its environment.
    let registration = token();
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o711);
    let (state, work) = (dir.path().join("state"), dir.path().join("work"));
    let credential = state.join("iso-1.credential");
    let repo = TestRepo::new();
    let daemon = Daemon::start(
        &[&repo],
        &format!(
            "local_runner: {{ enabled: false }}\nrunners: {{ registration_tokens: [\"{registration}\"] }}\n"
        ),
    )
    .await;
    let mut runner = cli()
        .args(["runner", "--server", &daemon.url, "--name", "iso-1"])
        .args(["--labels", "iso", "--capacity", "1", "--grace", "1s"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--work-dir")
        .arg(&work)
        .env("DEPLOYLITE_RUNNER_TOKEN", &registration)
        .env("DEPLOYLITE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("runner.stderr")).unwrap())
        .spawn()
        .expect("spawn the runner");
    let runner_stderr = || fs::read_to_string(dir.path().join("runner.stderr")).unwrap_or_default();
    let registered =
        wait::try_until(DEADLINE, || async { credential.exists().then_some(()) }).await;
    assert!(
        registered.is_ok(),
        "the runner did not register\n{}",
        runner_stderr()
    );
    let commit = probe_pipeline(
        &repo,
        "iso",
        &[
            ("SECRETS", credential.display().to_string()),
            ("DIRS", state.display().to_string()),
            ("FORBIDDEN", credential.display().to_string()),
        ],
    );
    let rid = id(&daemon.wait_for_commit_run("probe", &commit).await);
    let run = daemon.wait_run_final(rid).await;
    let log = daemon.log(rid, "probe", None).await;
    let _ = runner.kill();
    let _ = runner.wait();
    assert_found_nothing(&run, &log, &runner_stderr(), &[&credential]);
    assert!(
        log.contains(&format!("uid={NOBODY} gid={NOBODY} groups={NOBODY}")),
        "{log}"
    );
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(&credential).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
