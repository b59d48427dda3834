//! A real front door for the inbound webhook tests: the webhook routes served on 127.0.0.1:0
//! with a real `Store` (SQLite in a temp dir), a real `Watcher` running over real git
//! repositories made with the `git` CLI, and no scheduler (runs stay queued, which is what the
//! assertions read; a test that needs a run started or finished writes what the scheduler would,
//! through the store). The fixture payloads are adapted at run time, never edited on disk.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use deploylite_forge::forges::{
    ForgeKind, ForgeRepo, GithubAuth, GithubConfig, GitlabConfig, Secret, WebhookLimits,
};
use deploylite_forge::pulls::ForgePullRequests;
use deploylite_forge::Forges;
use deploylite_model::{Attempt, RunId};
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{
    AttemptResult, Dispatch, RunFilter, RunFinish, RunRecord, SqliteSync, Store, TickWrites,
};
use deploylite_reconciler::watcher::{RepoConfig, Repos, Watcher};
use deploylite_webhook::WebhookState;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const GITHUB_SECRET: &str = "test github secret";
pub const GITLAB_SECRET: &str = "test-gitlab-token";
/// The slug every GitHub fixture but one names (the check_run example names github/hello-world).
pub const GITHUB_SLUG: &str = "Codertocat/Hello-World";
/// The GitLab merge request example's project; the push examples name others and are adapted.
pub const GITLAB_SLUG: &str = "gitlabhq/gitlab-test";
/// DeployLite's names for the two watched repositories.
pub const GH_REPO: &str = "app";
pub const GL_REPO: &str = "gl";

/// Every branch and tag push, and every pull request, runs `ci`.
const PIPELINE: &str = "name: ci\non:\n  push: { branches: [\"**\"], tags: [\"*\"] }\n  pull_request:\nstages:\n  build:\n    steps: [{ run: \"true\" }]\n";

pub struct Options {
    pub github_secret: Option<&'static str>,
    pub gitlab_secret: Option<&'static str>,
    pub max_body_bytes: usize,
    /// GitLab's API (base URL, token), for the members check of approval comments.
    pub gitlab_api: Option<(String, String)>,
    /// GitHub's API (base URL, token), for listing open pull requests.
    pub github_api: Option<(String, String)>,
    /// Watch open pull requests with this close grace (`reconciler::pulls`).
    pub pull_requests: Option<Duration>,
    pub webhook_limits: WebhookLimits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            github_secret: Some(GITHUB_SECRET),
            gitlab_secret: Some(GITLAB_SECRET),
            max_body_bytes: deploylite_forge::forges::DEFAULT_MAX_BODY_BYTES,
            gitlab_api: None,
            github_api: None,
            pull_requests: None,
            webhook_limits: WebhookLimits::default(),
        }
    }
}

pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub gh_repo: PathBuf,
    pub gl_repo: PathBuf,
    pub store: Store,
    pub base: String,
    pub watcher: Arc<Watcher>,
    shutdown: CancellationToken,
}

/// The repositories and the store of a harness not started yet: what a daemon finds when it
/// starts (e.g. a pull request opened while it was stopped).
pub struct Prepared {
    pub tmp: tempfile::TempDir,
    pub gh_repo: PathBuf,
    pub gl_repo: PathBuf,
    options: Options,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs git in `dir` and returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir.join(".deploylite/pipelines")).unwrap();
    std::fs::write(dir.join(".deploylite/pipelines/ci.yaml"), PIPELINE).unwrap();
    std::fs::write(dir.join("README.md"), "hello\n").unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "init"]);
}

/// A new commit on `branch` (created from the current HEAD if missing), checked out; its id.
pub fn commit_on(repo: &Path, branch: &str, file: &str) -> String {
    let exists = Command::new("git")
        .args([
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}"),
        ])
        .current_dir(repo)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    if exists {
        git(repo, &["checkout", "-q", branch]);
    } else {
        git(repo, &["checkout", "-q", "-b", branch]);
    }
    std::fs::write(repo.join(file), format!("{file} on {branch}\n")).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", &format!("{file} on {branch}")]);
    let sha = git(repo, &["rev-parse", "HEAD"]);
    git(repo, &["checkout", "-q", "main"]);
    sha
}

/// A new commit on `branch` (created from main if missing) writing `files` (path, content);
/// its id. main stays checked out.
pub fn commit_files_on(repo: &Path, branch: &str, files: &[(&str, &str)]) -> String {
    git(repo, &["checkout", "-q", "-B", branch, "main"]);
    for (path, content) in files {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    git(repo, &["add", "-A"]);
    git(
        repo,
        &[
            "commit",
            "-qm",
            &format!("{} files on {branch}", files.len()),
        ],
    );
    let sha = git(repo, &["rev-parse", "HEAD"]);
    git(repo, &["checkout", "-q", "main"]);
    sha
}

pub fn head(repo: &Path, rev: &str) -> String {
    git(repo, &["rev-parse", rev])
}

impl Harness {
    pub async fn start(options: Options) -> Harness {
        Harness::prepare(options).start().await
    }

    pub fn prepare(options: Options) -> Prepared {
        let tmp = tempfile::tempdir().unwrap();
        let gh_repo = tmp.path().join("gh");
        let gl_repo = tmp.path().join("gl");
        make_repo(&gh_repo);
        make_repo(&gl_repo);
        Prepared {
            tmp,
            gh_repo,
            gl_repo,
            options,
        }
    }
}

impl Prepared {
    pub async fn start(self) -> Harness {
        let Prepared {
            tmp,
            gh_repo,
            gl_repo,
            options,
        } = self;
        let data = DataDir::new(tmp.path().join("data"));
        let db = tmp.path().join("deploylite.db");
        let store = Store::connect(&format!("sqlite://{}", db.display()), SqliteSync::Normal)
            .await
            .unwrap();
        let repo_config = |name: &str, path: &Path| RepoConfig {
            name: name.into(),
            url: path.display().to_string(),
            branches: Default::default(),
            // The webhook crate does not depend on deploylite-pipeline, so the GlobList is built
            // through its serde form: every tag is watched.
            tags: serde_json::from_value(serde_json::json!(["*"])).unwrap(),
            // Long: after the first scan, only webhooks make the watcher look.
            poll_interval: Duration::from_secs(3600),
            report: false,
            untrusted: Default::default(),
        };
        let repos = Arc::new(Repos::new(
            vec![
                repo_config(GH_REPO, &gh_repo),
                repo_config(GL_REPO, &gl_repo),
            ],
            &data,
        ));
        let scheduler = Arc::new(Notify::new());
        let watcher = Watcher::new(store.clone(), repos, scheduler.clone());
        let gitlab_api = options.gitlab_api.clone();
        let mut forges = Forges::new(
            options.github_secret.map(|s| GithubConfig {
                api_url: options
                    .github_api
                    .as_ref()
                    .map_or("https://api.github.com".into(), |(u, _)| u.clone()),
                auth: options
                    .github_api
                    .as_ref()
                    .map(|(_, t)| GithubAuth::Token(Secret::new(t.clone()))),
                webhook_secret: Some(Secret::new(s)),
            }),
            options.gitlab_secret.map(|s| GitlabConfig {
                api_url: gitlab_api
                    .as_ref()
                    .map_or("https://gitlab.com/api/v4".into(), |(u, _)| u.clone()),
                token: gitlab_api.as_ref().map(|(_, t)| Secret::new(t.clone())),
                webhook_secret: Some(Secret::new(s)),
            }),
            None,
            options.max_body_bytes,
            vec![
                ForgeRepo {
                    name: GH_REPO.into(),
                    forge: ForgeKind::Github,
                    slug: GITHUB_SLUG.into(),
                },
                ForgeRepo {
                    name: GL_REPO.into(),
                    forge: ForgeKind::Gitlab,
                    slug: GITLAB_SLUG.into(),
                },
            ],
        );
        forges.webhook_limits = options.webhook_limits;
        let forges = Arc::new(forges);
        if let Some(grace) = options.pull_requests {
            watcher.watch_pull_requests(
                ForgePullRequests::new(forges.clone(), Duration::from_secs(10)),
                grace,
            );
        }
        let routes = deploylite_webhook::routes(WebhookState {
            store: store.clone(),
            watcher: Some(watcher.clone()),
            forges,
        });
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, routes)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        tokio::spawn(watcher.clone().run(shutdown.clone()));
        let harness = Harness {
            tmp,
            gh_repo,
            gl_repo,
            store,
            base,
            watcher,
            shutdown,
        };
        // The watcher's first scan records main's run in both repositories; wait for it so that
        // every later run is the webhook's doing.
        for repo in [GH_REPO, GL_REPO] {
            harness
                .wait_for_run(repo, "main's first scan", |r| {
                    r.git_ref == "refs/heads/main"
                })
                .await;
        }
        harness
    }
}

impl Harness {
    /// Makes the watcher list `repo`'s pull requests now and waits until a pull request reconcile that started
    /// after this call has completed.
    pub async fn poll(&self, repo: &str) {
        let (started, _) = self.watcher.pull_request_passes(repo);
        self.watcher.poke_pull_requests(repo);
        eventually("a pull request reconcile after the poke", || async {
            (self.watcher.pull_request_passes(repo).1 > started).then_some(())
        })
        .await;
    }

    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub async fn runs(&self, repo: &str) -> Vec<RunRecord> {
        self.store
            .list_runs(&RunFilter {
                repo: Some(repo.into()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// What the scheduler writes when it starts a run and its stage `build` (every harness
    /// pipeline's only stage) as attempt 1: the run is running and a stage has begun.
    pub async fn start_build(&self, run_id: RunId) {
        self.store
            .apply_tick(&TickWrites {
                start_runs: vec![run_id],
                dispatch: vec![Dispatch {
                    run_id,
                    stage: "build".into(),
                    attempt: Attempt::FIRST,
                    runner: "local".into(),
                    lease_deadline: None,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// What the scheduler writes when a started `build` (see [`Harness::start_build`]) succeeds
    /// and with it the run.
    pub async fn succeed_build(&self, run_id: RunId) {
        let current = self
            .store
            .finish_attempt(&AttemptResult {
                run_id,
                stage: "build".into(),
                attempt: Attempt::FIRST,
                attempt_status: StageStatus::Success,
                stage_status: StageStatus::Success,
                exit_code: Some(0),
                note: None,
                counts_as_failure: false,
                not_before: None,
                pending_reason: None,
            })
            .await
            .unwrap();
        assert!(current, "build's attempt 1 was running");
        self.end_run(run_id, RunStatus::Success).await;
    }

    /// What the scheduler writes when it finishes a run (e.g. a cancelled one, `cancelled`).
    pub async fn end_run(&self, run_id: RunId, status: RunStatus) {
        self.store
            .apply_tick(&TickWrites {
                finish: vec![RunFinish { run_id, status }],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// The run attempts recorded for `commit` in `repo`, as (pipeline, run_attempt), sorted.
    pub async fn attempts(&self, repo: &str, commit: &str) -> Vec<(String, i64)> {
        let mut attempts: Vec<(String, i64)> = self
            .runs(repo)
            .await
            .into_iter()
            .filter(|r| r.commit == commit)
            .map(|r| (r.pipeline, r.run_attempt))
            .collect();
        attempts.sort();
        attempts
    }

    /// Polls the store until a run of `repo` matches, or fails after a deadline.
    pub async fn wait_for_run(
        &self,
        repo: &str,
        what: &str,
        pred: impl Fn(&RunRecord) -> bool,
    ) -> RunRecord {
        let found = eventually(what, || async {
            self.runs(repo).await.into_iter().find(|r| pred(r))
        })
        .await;
        found
    }

    pub async fn post(&self, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
        http(self.addr(), "POST", path, headers, body).await
    }

    /// A GitHub delivery signed with the configured secret.
    pub async fn github(&self, event: &str, delivery: &str, body: &[u8]) -> (u16, Value) {
        let headers = [
            ("X-GitHub-Event", event.to_string()),
            ("X-GitHub-Delivery", delivery.to_string()),
            ("X-Hub-Signature-256", sign(GITHUB_SECRET, body)),
            ("Content-Type", "application/json".to_string()),
        ];
        self.post("/webhooks/github", &headers, body).await
    }

    /// A GitLab delivery with the configured token.
    pub async fn gitlab(&self, event: &str, event_uuid: Option<&str>, body: &[u8]) -> (u16, Value) {
        let mut headers = vec![
            ("X-Gitlab-Event", event.to_string()),
            ("X-Gitlab-Token", GITLAB_SECRET.to_string()),
            ("Content-Type", "application/json".to_string()),
        ];
        if let Some(uuid) = event_uuid {
            headers.push(("X-Gitlab-Event-UUID", uuid.to_string()));
        }
        self.post("/webhooks/gitlab", &headers, body).await
    }
}

/// One HTTP/1.1 request on a fresh connection; the status and the body (JSON when it parses,
/// else a string). A plain socket rather than an HTTP client library: the crate's reqwest is
/// built without a TLS crypto provider, which its client panics on even for plain HTTP.
/// Write errors are ignored (a server may answer, e.g. 413, and close before reading it all).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if s.write_all(head.as_bytes()).await.is_ok() {
            let _ = s.write_all(body).await;
        }
        let mut response = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
        }
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .expect("the server answers in time");
    parse_response(&response)
}

/// The status code and decoded body of a raw HTTP/1.1 response (0 when there is none).
pub fn parse_response(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return (0, Value::String(text.into_owned()));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// Re-reads `probe` until it yields a value; panics naming `what` after 15 s. (Events are
/// applied after the response, so tests wait for their effects in the store rather than
/// sleeping.)
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    deploylite_testkit::wait::until_within(Duration::from_secs(15), what, probe).await
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn fixture(path: &str) -> Value {
    let file = format!("{}/tests/fixtures/{path}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}")))
        .unwrap()
}

pub fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}
