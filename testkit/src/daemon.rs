//! `deploylite serve` as a test drives it: the real binary on its own port and data dir, with
//! helpers over its HTTP API, and one-shot CLI commands.
//!
//! Waits re-read the API until a predicate holds, at once on each event of the daemon's change
//! feed (`GET /api/v1/events`, followed for the daemon's life) and otherwise with a short
//! backoff (see [`crate::wait`]); they fail after a generous deadline with the daemon's stderr
//! and every run it knows about. "Nothing new" is
//! asserted only after [`Daemon::wait_fresh_poll`] or [`Daemon::wait_fresh_environment_pass`]:
//! the loop that could have made something new has run since.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::repo::TestRepo;
use crate::views::RunView;
use crate::wait::{self, DEADLINE};

/// The `deploylite` binary of this build: Cargo builds it for the root package's integration
/// tests and sets `CARGO_BIN_EXE_deploylite` for them (at run time under nextest, else next to
/// the test binary: `target/<profile>/deps/<test>` beside `target/<profile>/deploylite`).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_deploylite") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("deploylite"))
        .unwrap_or_else(|| panic!("no target dir above {}", exe.display()));
    assert!(
        bin.is_file(),
        "{} is not built: Daemon and cli() are for the root package's integration tests",
        bin.display()
    );
    bin
}

/// Statuses a run never leaves.
pub const FINAL_RUN_STATUSES: &[&str] = &["success", "failed", "cancelled", "skipped", "error"];

pub fn is_final(run: &Value) -> bool {
    FINAL_RUN_STATUSES.contains(&status(run))
}

pub fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("<no status>")
}

// ---------------------------------------------------------------------------------------------
// Commands

/// A `deploylite` command with a clean environment: no DEPLOYLITE_* configuration and no proxy
/// inherited from whoever runs the tests.
pub fn cli() -> Command {
    let mut cmd = Command::new(binary());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy().to_ascii_uppercase();
        if k.starts_with("DEPLOYLITE_") || k.ends_with("_PROXY") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion, killing it after `limit` (then panicking with what it printed).
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let described = format!("{cmd:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {described}: {e}"));
    let Some(status) = wait::child_exit(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{described} did not finish within {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            fs::read_to_string(&out_path).unwrap_or_default(),
            fs::read_to_string(&err_path).unwrap_or_default()
        );
    };
    Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    }
}

/// Runs `cmd` (at most 30 s) and returns (exit code, stdout, stderr).
pub fn run_cmd(cmd: Command) -> (i32, String, String) {
    let out = output_within(cmd, DEADLINE);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A live process found in /proc.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub cmdline: String,
    pub env: HashMap<String, String>,
}

/// Every process (readable by us, not a zombie) whose environment satisfies `pred`.
pub fn processes_where(pred: impl Fn(&HashMap<String, String>) -> bool) -> Vec<Proc> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.is_empty() {
            continue; // zombie or kernel thread
        }
        if let Ok(stat) = fs::read_to_string(entry.path().join("stat")) {
            // state is the field after the `(comm)`; Z = zombie, X = dead
            if let Some(state) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
            {
                if state == "Z" || state == "X" {
                    continue;
                }
            }
        }
        let env: HashMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        if pred(&env) {
            let cmdline = fs::read(entry.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            found.push(Proc { pid, cmdline, env });
        }
    }
    found
}

/// Stage processes started by the daemon whose data dir is `data_dir` (identified by the
/// DEPLOYLITE_WORKSPACE every stage inherits), optionally of one run only.
pub fn stage_processes(data_dir: &Path, run: Option<i64>) -> Vec<Proc> {
    let prefix = data_dir.join("workspaces").display().to_string();
    processes_where(|env| {
        env.get("DEPLOYLITE_WORKSPACE")
            .is_some_and(|w| w.starts_with(&prefix))
            && run.is_none_or(|id| {
                env.get("DEPLOYLITE_RUN_ID").map(String::as_str) == Some(id.to_string().as_str())
            })
    })
}

fn kill_all(procs: &[Proc]) {
    for p in procs {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub use crate::wait::pid_alive;

// ---------------------------------------------------------------------------------------------
// The daemon

/// A repository as the daemon's config names it.
pub struct RepoRef {
    pub name: String,
    pub path: PathBuf,
    pub branches: Vec<String>,
}

impl From<&TestRepo> for RepoRef {
    fn from(r: &TestRepo) -> RepoRef {
        RepoRef {
            name: r.name.clone(),
            path: r.path().to_path_buf(),
            branches: r.watch.clone(),
        }
    }
}

/// `deploylite serve` on a free port with its own data dir, stderr captured to a file.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    stderr_path: PathBuf,
    repos: Vec<RepoRef>,
    extra: String,
    http: reqwest::Client,
    starts: usize,
    /// Bumped on every event of the daemon's change feed (`GET /api/v1/events`: a run or a
    /// stage moved): what [`Daemon::wait_for`] re-reads on, besides its backoff.
    changes: tokio::sync::watch::Sender<u64>,
    /// The task following the change feed of the running incarnation.
    follower: Option<tokio::task::JoinHandle<()>>,
}

/// An HTTP client for the daemon's API. reqwest is built (through the workspace) with rustls
/// and no default crypto provider, like the binary, which installs aws-lc-rs at start: do the
/// same, or building a client panics with "No provider set".
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

impl Daemon {
    /// Starts a daemon watching `repos` (poll interval 100 ms, 4 parallel stages), with
    /// `extra_config` (top-level YAML keys) overriding or adding to the defaults.
    pub async fn start(repos: &[&TestRepo], extra_config: &str) -> Daemon {
        Daemon::start_with(
            repos.iter().map(|r| RepoRef::from(*r)).collect(),
            extra_config,
        )
        .await
    }

    pub async fn start_with(repos: Vec<RepoRef>, extra_config: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("deploylite-daemon-")
            .tempdir()
            .expect("tempdir");
        // Stages of a root daemon run as `nobody`, who must pass through to its workspaces.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
        }
        let data_dir = dir.path().join("data");
        let mut daemon = Daemon {
            child: None,
            port: 0,
            url: String::new(),
            config_path: dir.path().join("deploylite.yaml"),
            stderr_path: dir.path().join("daemon.stderr"),
            data_dir,
            dir,
            repos,
            extra: extra_config.to_string(),
            http: http_client(),
            starts: 0,
            changes: tokio::sync::watch::channel(0).0,
            follower: None,
        };
        // A port picked free may be taken before the daemon binds it: try a few.
        for _ in 0..5 {
            daemon.port = free_port();
            daemon.url = format!("http://127.0.0.1:{}", daemon.port);
            daemon.write_config();
            if daemon.spawn_and_wait_healthy().await {
                return daemon;
            }
        }
        panic!(
            "the daemon could not listen on a free port\n{}",
            daemon.stderr()
        );
    }

    fn write_config(&self) {
        let has = |key: &str| {
            self.extra
                .lines()
                .any(|l| l.starts_with(&format!("{key}:")))
        };
        let mut yaml = String::new();
        if !has("listen") {
            yaml += &format!("listen: 127.0.0.1:{}\n", self.port);
        }
        if !has("data_dir") {
            yaml += &format!("data_dir: {}\n", self.data_dir.display());
        }
        if !has("max_parallel_stages") {
            yaml += "max_parallel_stages: 4\n";
        }
        if !has("repos") {
            yaml += "repos:\n";
            for r in &self.repos {
                let branches: Vec<String> = r.branches.iter().map(|b| format!("{b:?}")).collect();
                yaml += &format!(
                    "  - name: {}\n    url: {}\n    branches: [{}]\n    poll_interval: 100ms\n",
                    r.name,
                    r.path.display(),
                    branches.join(", ")
                );
            }
        }
        yaml += &self.extra;
        fs::write(&self.config_path, yaml).expect("write config");
    }

    /// Spawns the binary and waits for /healthz. False when it exited because its port was
    /// taken; panics on any other early exit.
    async fn spawn_and_wait_healthy(&mut self) -> bool {
        self.starts += 1;
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let mut header = stderr.try_clone().expect("clone");
        use std::io::Write;
        let _ = writeln!(
            header,
            "===== daemon start #{} on port {} =====",
            self.starts, self.port
        );
        let mut cmd = cli();
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env(
                "DEPLOYLITE_LOG",
                "info,deploylite_reconciler=debug,deploylite_runner=debug,sqlx=warn",
            )
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn deploylite serve");
        let (http, health) = (&self.http, format!("{}/healthz", self.url));
        let outcome = wait::try_until(DEADLINE, || {
            let exited = child.try_wait().ok().flatten();
            let health = health.clone();
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                let answer = http.get(health).send().await;
                answer
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(Ok(()))
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {
                self.child = Some(child);
                self.follow_changes();
                true
            }
            Ok(Err(status)) => {
                let text = self.stderr();
                if text.contains("cannot listen") {
                    return false;
                }
                panic!("the daemon exited early with {status}\n--- daemon stderr ---\n{text}");
            }
            Err(timed_out) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not become healthy: {timed_out}\n--- daemon stderr ---\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Follows the daemon's change feed, bumping [`Daemon::changes`] on every chunk of it,
    /// until the stream ends (the daemon stops and ends it) or [`Daemon::unfollow`].
    fn follow_changes(&mut self) {
        self.unfollow();
        let url = format!("{}/api/v1/events", self.url);
        let token = fs::read_to_string(self.admin_token_path()).unwrap_or_default();
        let changes = self.changes.clone();
        self.follower = Some(tokio::spawn(async move {
            // Not the API client: its timeout would cut the stream.
            let Ok(http) = reqwest::Client::builder().no_proxy().build() else {
                return;
            };
            let Ok(mut response) = http.get(url).bearer_auth(token.trim()).send().await else {
                return;
            };
            if !response.status().is_success() {
                return;
            }
            while let Ok(Some(_)) = response.chunk().await {
                changes.send_modify(|n| *n += 1);
            }
        }));
    }

    fn unfollow(&mut self) {
        if let Some(follower) = self.follower.take() {
            follower.abort();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then waits for the process to exit (panics after the deadline).
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        self.unfollow();
        let mut child = self.child.take().expect("the daemon is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        match wait::child_exit_async(&mut child, DEADLINE).await {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon ignored SIGTERM for {DEADLINE:?}\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL: the daemon dies at once; its stage processes do not.
    pub fn kill9(&mut self) {
        self.unfollow();
        let mut child = self.child.take().expect("the daemon is not running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// Starts the daemon again on the same config, data dir and port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped daemon");
        let port = self.port;
        for _ in 0..50 {
            // The port of a daemon just stopped may linger for a moment.
            wait::until(format!("port {port} to be free"), || async move {
                std::net::TcpListener::bind(("127.0.0.1", port))
                    .ok()
                    .map(drop)
            })
            .await;
            if self.spawn_and_wait_healthy().await {
                return;
            }
        }
        panic!(
            "the daemon cannot listen on its port again\n{}",
            self.stderr()
        );
    }

    // --- HTTP -----------------------------------------------------------------------------

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// GET `path`: (status code, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.stderr()));
        let code = resp.status().as_u16();
        (code, resp.text().await.unwrap_or_default())
    }

    /// GET `path` with the admin token: (status code, body).
    pub async fn get_authorized(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(
                fs::read_to_string(self.admin_token_path())
                    .unwrap_or_default()
                    .trim(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.stderr()));
        let code = resp.status().as_u16();
        (code, resp.text().await.unwrap_or_default())
    }

    /// GET `path`, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path).await;
        assert_eq!(code, 200, "GET {path} answered {code}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// Every run, newest first.
    pub async fn runs(&self) -> Vec<Value> {
        match self.get_json("/api/v1/runs?limit=1000").await {
            Value::Array(runs) => runs,
            other => panic!("/api/v1/runs is not a list: {other}"),
        }
    }

    /// One run with its stages.
    pub async fn run(&self, id: i64) -> Value {
        self.get_json(&format!("/api/v1/runs/{id}")).await
    }

    /// A stage of a run, by name (panics if absent).
    pub async fn stage(&self, id: i64, stage: &str) -> Value {
        let run = self.run(id).await;
        find_stage(&run, stage).clone()
    }

    /// The log of one attempt (`None` = the latest), expecting 200.
    pub async fn log(&self, id: i64, stage: &str, attempt: Option<i64>) -> String {
        let path = match attempt {
            Some(a) => format!("/api/v1/runs/{id}/stages/{stage}/log?attempt={a}"),
            None => format!("/api/v1/runs/{id}/stages/{stage}/log"),
        };
        let (code, body) = self.get(&path).await;
        assert_eq!(code, 200, "GET {path} answered {code}: {body}");
        body
    }

    /// The daemon's stderr and every run (with stages), for failure messages.
    pub async fn dump(&self) -> String {
        let mut out = format!(
            "--- daemon stderr ({}) ---\n{}\n--- runs ---\n",
            self.url,
            self.stderr()
        );
        match self
            .http
            .get(format!("{}/api/v1/runs?limit=1000", self.url))
            .send()
            .await
        {
            Ok(resp) => {
                let runs: Vec<Value> = resp.json().await.unwrap_or_default();
                for r in runs {
                    let id = r["id"].as_i64().unwrap_or(0);
                    let detail = match self
                        .http
                        .get(format!("{}/api/v1/runs/{id}", self.url))
                        .send()
                        .await
                    {
                        Ok(resp) => resp.json::<Value>().await.unwrap_or(r),
                        Err(_) => r,
                    };
                    out += &serde_json::to_string_pretty(&detail).unwrap_or_default();
                    out += "\n";
                    for s in detail["stages"].as_array().into_iter().flatten() {
                        let (name, attempts) = (
                            s["name"].as_str().unwrap_or(""),
                            s["attempt"].as_i64().unwrap_or(0),
                        );
                        for a in 1..=attempts {
                            let url = format!(
                                "{}/api/v1/runs/{id}/stages/{name}/log?attempt={a}",
                                self.url
                            );
                            if let Ok(resp) = self.http.get(url).send().await {
                                let text = resp.text().await.unwrap_or_default();
                                out += &format!(
                                    "--- log of run #{id} stage `{name}` attempt {a} ---\n{text}"
                                );
                            }
                        }
                    }
                }
            }
            Err(e) => out += &format!("(cannot list runs: {e})\n"),
        }
        out
    }

    /// Re-reads `probe` until it yields a value; after [`DEADLINE`], fails naming `what` with
    /// the daemon's stderr and runs. Every wait on the daemon goes through here.
    pub async fn wait_for<T, F, Fut>(&self, what: impl std::fmt::Display, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        self.wait_for_within(DEADLINE, what, probe).await
    }

    /// [`Daemon::wait_for`] with its own deadline.
    pub async fn wait_for_within<T, F, Fut>(
        &self,
        within: Duration,
        what: impl std::fmt::Display,
        probe: F,
    ) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let mut changes = self.changes.subscribe();
        match wait::try_until_signalled(within, &mut changes, probe).await {
            Ok(value) => value,
            Err(timed_out) => panic!("{timed_out} waiting for {what}\n{}", self.dump().await),
        }
    }

    /// Waits until the run list satisfies `pred`; returns that list. `what` names the wait in
    /// the failure message.
    pub async fn wait_for_runs(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let pred = &pred;
        self.wait_for(what, || async move {
            let runs = self.runs().await;
            pred(&runs).then_some(runs)
        })
        .await
    }

    /// Waits for a run matching `pred` to exist and returns it (the newest such).
    pub async fn wait_for_run(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let pred = &pred;
        self.wait_for(what, || async move {
            self.runs().await.into_iter().find(|r| pred(r))
        })
        .await
    }

    /// Waits for the run of `pipeline` at `commit` to exist.
    pub async fn wait_for_commit_run(&self, pipeline: &str, commit: &str) -> Value {
        self.wait_for_run(&format!("a run of `{pipeline}` for commit {commit}"), |r| {
            r["pipeline"] == pipeline && r["commit"] == commit
        })
        .await
    }

    /// One run with its stages, typed.
    pub async fn run_view(&self, id: i64) -> RunView {
        RunView::from_json(self.run(id).await)
    }

    /// Waits until run `id` (with its stages) satisfies `pred`; returns it.
    pub async fn wait_run(&self, id: i64, what: &str, pred: impl Fn(&RunView) -> bool) -> RunView {
        let pred = &pred;
        self.wait_for(format!("run #{id}: {what}"), || async move {
            let run = self.run_view(id).await;
            pred(&run).then_some(run)
        })
        .await
    }

    /// Waits for run `id` to reach a final status; returns it with its stages.
    pub async fn wait_run_done(&self, id: i64) -> RunView {
        self.wait_run(id, "a final status", RunView::is_final).await
    }

    /// Polls one run (with stages, as JSON) until `pred` holds.
    pub async fn wait_run_json(&self, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let pred = &pred;
        self.wait_for(format!("run #{id}: {what}"), || async move {
            let run = self.run(id).await;
            pred(&run).then_some(run)
        })
        .await
    }

    /// Waits for run `id` to reach a final status; returns it with its stages, as JSON.
    pub async fn wait_run_final(&self, id: i64) -> Value {
        self.wait_run_json(id, "a final status", is_final).await
    }

    /// Waits until `stage` of run `id` has `status`.
    pub async fn wait_stage(&self, id: i64, stage: &str, wanted: &str) -> Value {
        let run = self
            .wait_run_json(id, &format!("stage `{stage}` {wanted}"), |run| {
                run["stages"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|s| s["name"] == stage && s["status"] == wanted)
                })
            })
            .await;
        find_stage(&run, stage).clone()
    }

    /// Waits until the latest log of `stage` contains `needle`; returns the log.
    pub async fn wait_log_contains(&self, id: i64, stage: &str, needle: &str) -> String {
        let path = format!("/api/v1/runs/{id}/stages/{stage}/log");
        let path = &path;
        self.wait_for(
            format_args!("the log of run #{id} stage `{stage}` to contain {needle:?}"),
            || async move {
                let (code, body) = self.get(path).await;
                (code == 200 && body.contains(needle)).then_some(body)
            },
        )
        .await
    }

    /// Waits until the daemon's stderr contains `needle`; that stderr.
    pub async fn wait_stderr_contains(&self, needle: &str) -> String {
        self.wait_for(
            format_args!("{needle:?} in the daemon's stderr"),
            || async {
                let text = self.stderr();
                text.contains(needle).then_some(text)
            },
        )
        .await
    }

    /// Waits until no stage process of this daemon (optionally of one run) is left.
    pub async fn wait_no_stage_processes(&self, run: Option<i64>) {
        let pids: Vec<i32> = stage_processes(&self.data_dir, run)
            .iter()
            .map(|p| p.pid)
            .collect();
        let left =
            tokio::task::spawn_blocking(move || wait::pids_exit(&pids, Duration::from_secs(10)))
                .await
                .unwrap_or_default();
        // A process could have forked after the listing: look again, now that the first ones
        // are gone.
        let left: Vec<Proc> = stage_processes(&self.data_dir, run)
            .into_iter()
            .filter(|p| left.contains(&p.pid) || wait::pid_alive(p.pid))
            .collect();
        if !left.is_empty() {
            let list: Vec<String> = left
                .iter()
                .map(|p| format!("{} {}", p.pid, p.cmdline))
                .collect();
            kill_all(&left);
            panic!("stage processes survived: {list:?}\n{}", self.dump().await);
        }
    }

    // --- Positive signals: what ran since ----------------------------------------------------

    /// How many polls of repository `repo` ended since the daemon started (`GET
    /// /api/v1/repos`: `polls`).
    pub async fn polls(&self, repo: &str) -> u64 {
        let (code, body) = self.get_authorized("/api/v1/repos").await;
        assert_eq!(code, 200, "GET /api/v1/repos answered {code}: {body}");
        let repos: Value = serde_json::from_str(&body).unwrap_or_default();
        repos
            .as_array()
            .and_then(|list| list.iter().find(|r| r["name"] == repo))
            .and_then(|r| r["polls"].as_u64())
            .unwrap_or_else(|| panic!("no repository `{repo}` with `polls` in {repos:#}"))
    }

    /// Waits until a poll of `repo` that began after this call has ended: whatever a poll would
    /// record from the repository as it is now (a run, a cancellation) is recorded. The poll in
    /// progress at the call may have read the repository before it changed, hence two.
    pub async fn wait_fresh_poll(&self, repo: &str) {
        let since = self.polls(repo).await;
        self.wait_for(
            format!("two more polls of `{repo}` (after {since})"),
            || async move { (self.polls(repo).await >= since + 2).then_some(()) },
        )
        .await
    }

    /// Environment controller passes ended since the daemon started
    /// (`deploylite_environment_passes_total`).
    pub async fn environment_passes(&self) -> u64 {
        let (code, text) = self.get_authorized("/metrics").await;
        assert_eq!(code, 200, "GET /metrics answered {code}: {text}");
        metric_value(&text, "deploylite_environment_passes_total")
            .unwrap_or_else(|| panic!("no deploylite_environment_passes_total in\n{text}"))
            as u64
    }

    /// Waits until an environment controller pass that began after this call has ended (one
    /// at least every 5 s, so up to 10 s).
    pub async fn wait_fresh_environment_pass(&self) {
        let since = self.environment_passes().await;
        self.wait_for(
            format!("two more environment passes (after {since})"),
            || async move { (self.environment_passes().await >= since + 2).then_some(()) },
        )
        .await
    }

    /// `deploylite <args> --server <this daemon> --token-file <its admin token>` → (exit
    /// code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = cli();
        cmd.args(args)
            .arg("--server")
            .arg(&self.url)
            .arg("--token-file")
            .arg(self.admin_token_path());
        run_cmd(cmd)
    }

    /// `deploylite <args> --server <this daemon>` with no token → (exit code, stdout, stderr).
    pub fn cli_anonymous(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = cli();
        cmd.args(args).arg("--server").arg(&self.url);
        // Run elsewhere than the daemon's data dir, so that no admin.token is found by default.
        cmd.current_dir(self.dir.path());
        run_cmd(cmd)
    }

    /// The admin token the daemon wrote at its first start.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    pub fn admin_token(&self) -> String {
        fs::read_to_string(self.admin_token_path())
            .expect("the daemon wrote data_dir/admin.token")
            .trim()
            .to_string()
    }

    /// A new API token of `role`, made with the admin token.
    pub async fn create_token(&self, name: &str, role: &str) -> String {
        let response = self
            .http
            .post(format!("{}/api/v1/tokens", self.url))
            .bearer_auth(self.admin_token())
            .json(&serde_json::json!({ "name": name, "role": role }))
            .send()
            .await
            .expect("the daemon answers");
        assert_eq!(response.status().as_u16(), 201, "creating token {name}");
        let body: Value = response.json().await.expect("JSON");
        body["token"].as_str().expect("a token").to_string()
    }

    /// A POST to the API with the admin token.
    pub async fn post_as_admin(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let code = resp.status().as_u16();
        (code, resp.text().await.unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.unfollow();
        if let Some(mut child) = self.child.take() {
            // Graceful first, so that the daemon stops its stages; then no mercy.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            wait::child_exit(&mut child, Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_all(&stage_processes(&self.data_dir, None));
    }
}

// ---------------------------------------------------------------------------------------------
// JSON helpers

pub fn find_stage<'a>(run: &'a Value, stage: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == stage))
        .unwrap_or_else(|| panic!("run has no stage `{stage}`: {run:#}"))
}

pub fn id(run: &Value) -> i64 {
    run["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {run}"))
}

/// An RFC 3339 timestamp field as epoch milliseconds.
pub fn ts(v: &Value, field: &str) -> i64 {
    let text = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no `{field}` in {v:#}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{field}` = {text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// The value of the sample `name` (with no labels) in a Prometheus text exposition.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}
