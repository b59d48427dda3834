//! Inbound webhooks under time and load.
//!
//! (a) Latency, in process: a signed GitHub push is POSTed over loopback → verified → delivery
//!     recorded → 202 → the event applied (poke) → ref listed → pipeline read → run recorded →
//!     workspace checked out → stage dispatched → `sh` started. "Started" is when the stage's
//!     shell opens a FIFO the bench waits on (as in benches/latency.rs). p50/p90 over PUSHES.
//! (c) The same as (a) with forge reporting on: the repository has `report: true`, GitHub is
//!     configured with a token (commit statuses) whose `api_url` is a fake GitHub API on
//!     loopback that answers every request correctly but only after FORGE_DELAY, and a
//!     `Reporter` runs as `deploylite serve` runs it. The outbox should keep the slow forge off
//!     the runs' path: (c)'s p50 should be about (a)'s. The requests the fake received are
//!     counted (the bench fails if none arrived during the measured pushes).
//! (b) Throughput, from a second process: the real daemon binary is started with a webhook
//!     secret and one GitHub repository; this process fires signed pushes with unique delivery
//!     ids at RATE/s for SECONDS, paced on a fixed schedule (latency is measured from each
//!     request's scheduled time, so a stalled server cannot hide behind a slowed sender), counts
//!     answers by status, stops the daemon and counts the rows of `webhook_deliveries` in its
//!     SQLite database: every 202 must have its row.
//!
//! `cargo bench --bench webhooks` (the daemon is the bench build's `deploylite`, or
//! `DEPLOYLITE_BIN=path`; (b) reads the database with the `sqlite3` CLI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploylite_forge::forges::{
    ForgeKind, ForgeRepo, GithubAuth, GithubConfig, Secret, DEFAULT_MAX_BODY_BYTES,
};
use deploylite_forge::{Forges, Reporter};
use deploylite_reconciler::store::RunFilter;
use deploylite_runner::CancellationToken;
use deploylite_server::AppState;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const PUSHES: usize = 50;
const RATE: u64 = 1000;
const SECONDS: u64 = 10;
const SECRET: &str = "bench webhook secret";
const SLUG: &str = "bench/app";
/// How long the fake GitHub API of (c) takes to answer each request.
const FORGE_DELAY: Duration = Duration::from_millis(200);
const FORGE_TOKEN: &str = "ghp_bench_token";

fn main() {
    // `cargo test --benches` runs bench targets with --bench absent; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // GitHub's example ("Validating webhook deliveries"): the signer is right before it is used.
    assert_eq!(
        hex(&hmac_sha256(
            b"It's a Secret to Everybody",
            b"Hello, World!"
        )),
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
    // reqwest is built without a default TLS provider; the daemon installs this one too.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let plain = latency(&rt, None);
    // Right after (a), so that both see the same machine.
    let reported = latency(&rt, Some(FORGE_DELAY));
    println!(
        "(c) - (a): p50 {:+.2} ms, p90 {:+.2} ms",
        pct(&reported, 50) - pct(&plain, 50),
        pct(&reported, 90) - pct(&plain, 90)
    );
    throughput(&rt);
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn make_repo(dir: &Path, pipeline: &str) -> String {
    std::fs::create_dir_all(dir.join(".deploylite/pipelines")).expect("mkdir");
    std::fs::write(dir.join(".deploylite/pipelines/ci.yaml"), pipeline).expect("write");
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "init"]);
    git(dir, &["rev-parse", "HEAD"])
}

/// GitHub's own push example, adapted: this repository, its main branch, commit `sha`.
fn push_payload(sha: &str) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/webhook/tests/fixtures/github/webhooks/push.branch-created.json"
    );
    let mut p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    p["ref"] = "refs/heads/main".into();
    p["after"] = sha.into();
    p["head_commit"]["id"] = sha.into();
    p["repository"]["full_name"] = SLUG.into();
    serde_json::to_vec(&p).expect("json")
}

fn sign(body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac_sha256(SECRET.as_bytes(), body)))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn pct(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------

/// (a) without reporting, or (c) with `forge_delay`: reporting on, to a fake GitHub that takes
/// that long to answer. Returns the sorted webhook -> stage started latencies.
fn latency(rt: &tokio::runtime::Runtime, forge_delay: Option<Duration>) -> Vec<Duration> {
    let tag = if forge_delay.is_some() { "(c)" } else { "(a)" };
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    let fifo = tmp.path().join("started.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    make_repo(
        &repo,
        &format!(
            "name: ci\nstages:\n  first:\n    steps: [{{ run: ': > {}' }}]\n",
            fifo.display()
        ),
    );
    let support::LocalDaemon {
        store,
        data,
        scheduler,
        watcher,
        ..
    } = support::local_daemon_reporting(rt, &tmp.path().join("data"), &repo, forge_delay.is_some());
    let fake = forge_delay.map(FakeGithub::start);
    let (api_url, auth) = match &fake {
        Some(fake) => (
            fake.url.clone(),
            Some(GithubAuth::Token(Secret::new(FORGE_TOKEN))),
        ),
        None => ("https://api.github.com".to_string(), None),
    };
    let forges = Arc::new(Forges::new(
        Some(GithubConfig {
            api_url,
            auth,
            webhook_secret: Some(Secret::new(SECRET)),
        }),
        None,
        None,
        DEFAULT_MAX_BODY_BYTES,
        vec![ForgeRepo {
            name: support::REPO.into(),
            forge: ForgeKind::Github,
            slug: SLUG.into(),
        }],
    ));
    let state = AppState {
        store: store.clone(),
        data: data.clone(),
        scheduler: scheduler.waker(),
        watcher: Some(watcher.clone()),
        forges: forges.clone(),
        auth: Arc::new(deploylite_server::AuthConfig {
            anonymous_read: true,
            hosts: Vec::new(),
        }),
        environments: None,
    };
    let shutdown = CancellationToken::new();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!(
        "http://{}/webhooks/github",
        listener.local_addr().expect("addr")
    );
    let stop = shutdown.clone();
    rt.spawn(async move {
        deploylite_server::serve(listener, state, async move { stop.cancelled().await }).await
    });
    rt.spawn(scheduler.run(shutdown.clone()));
    rt.spawn(watcher.run(shutdown.clone()));
    // As `deploylite serve` starts it: its own task, default configuration.
    let reporter = fake
        .as_ref()
        .map(|_| rt.spawn(Reporter::new(store.clone(), data, forges).run(shutdown.clone())));
    // The first scan runs the initial commit: consume its stage before measuring.
    assert!(
        wait_for_fifo(&fifo, Duration::from_secs(30)),
        "the initial commit's stage did not start"
    );

    let http = client();
    let (mut to_started, mut to_ack, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    let arrived_before = fake.as_ref().map_or(0, |f| f.stats.arrivals());
    // Stage starts that happened while the fake forge was holding a report request.
    let mut started_during_report = 0;
    for i in 0..PUSHES {
        std::fs::write(repo.join("change.txt"), i.to_string()).expect("write");
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", &format!("change {i}")]);
        let sha = git(&repo, &["rev-parse", "HEAD"]);
        let body = push_payload(&sha);
        let signature = sign(&body);
        let start = Instant::now();
        let status = rt.block_on(async {
            http.post(&url)
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", format!("latency-{i}"))
                .header("X-Hub-Signature-256", signature)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        });
        let acked = start.elapsed();
        assert_eq!(status, 202);
        to_ack.push(acked);
        // Until the stage's shell opens the FIFO for writing.
        if wait_for_fifo(&fifo, Duration::from_secs(10)) {
            to_started.push(start.elapsed());
            if fake.as_ref().is_some_and(|f| f.stats.pending() > 0) {
                started_during_report += 1;
            }
        } else {
            let runs = rt
                .block_on(store.list_runs(&RunFilter {
                    repo: Some(support::REPO.into()),
                    limit: 5,
                    ..Default::default()
                }))
                .unwrap_or_default();
            let run = runs.into_iter().find(|r| r.commit == sha);
            let attempts = match &run {
                Some(r) => rt
                    .block_on(store.stage_attempts(r.id, "first"))
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            lost.push(format!(
                "push {i}: run {:?} {:?}, stage attempts {:?}",
                run.as_ref().map(|r| r.id),
                run.as_ref().map(|r| r.status),
                attempts
                    .iter()
                    .map(|a| (a.status, a.note.clone()))
                    .collect::<Vec<_>>()
            ));
        }
    }
    let arrived_during = fake.as_ref().map_or(0, |f| f.stats.arrivals()) - arrived_before;
    // Runs whose report the slow forge has not taken yet: the runs went ahead without them.
    let backlog = fake.as_ref().map(|_| {
        rt.block_on(store.due_reports(i64::MAX, 10_000))
            .map(|due| due.len().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    });
    shutdown.cancel();
    for line in &lost {
        println!("{tag} a stage that never started: {line}");
    }
    to_started.sort();
    to_ack.sort();
    let what = match forge_delay {
        None => "signed push webhook -> first stage process started".to_string(),
        Some(delay) => format!(
            "the same with forge reporting ON (GitHub token, fake API answering after {} ms)",
            delay.as_millis()
        ),
    };
    println!(
        "{tag} {what}: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms \
         (202 answered: p50 {:.2} ms, p90 {:.2} ms) over {} pushes ({} stages never started)",
        pct(&to_started, 50),
        pct(&to_started, 90),
        pct(&to_started, 100),
        pct(&to_ack, 50),
        pct(&to_ack, 90),
        to_started.len(),
        lost.len()
    );
    if let (Some(fake), Some(reporter)) = (fake, reporter) {
        // The reporter gives the sends in flight a few seconds after a shutdown.
        let _ =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), reporter).await });
        let stats = fake.stop();
        println!(
            "{tag} the fake GitHub received {} report requests ({arrived_during} during the {PUSHES} measured pushes, \
             {arrived_before} before): {} commit statuses accepted, {} rejected, at most {} at a time; \
             {started_during_report} of {} stage starts happened while it held a request; \
             runs with a report still queued after the last push: {}",
            stats.arrivals(),
            stats.statuses.load(Ordering::SeqCst),
            stats.rejected.load(Ordering::SeqCst),
            stats.peak.load(Ordering::SeqCst),
            to_started.len(),
            backlog.unwrap_or_default(),
        );
        for problem in lock(&stats.problems).iter() {
            println!("{tag} rejected by the fake GitHub: {problem}");
        }
        assert!(
            arrived_during > 0,
            "(c) measured nothing: no report request reached the fake GitHub during the pushes"
        );
        assert_eq!(
            stats.rejected.load(Ordering::SeqCst),
            0,
            "(c) the reporter sent requests the fake GitHub does not accept (listed above)"
        );
    }
    to_started
}

/// Waits until a writer opens `fifo` (the stage started), at most `timeout`. On a timeout the
/// bench opens it for writing itself, so that the reader thread ends and the FIFO is clean for
/// the next iteration.
fn wait_for_fifo(fifo: &Path, timeout: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.to_path_buf();
    let reader = std::thread::spawn(move || {
        let opened = std::fs::File::open(&path).is_ok();
        let _ = tx.send(opened);
    });
    if let Ok(opened) = rx.recv_timeout(timeout) {
        let _ = reader.join();
        return opened;
    }
    // Non-blocking: fails at once (ENXIO) if the reader has just been served after all.
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000; // Linux
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(fifo),
    );
    let _ = reader.join();
    false
}

// ---------------------------------------------------------------------------------------------

/// Largest request body the fake GitHub reads (a commit status is a few hundred bytes).
const FAKE_MAX_BODY: usize = 1 << 20;

/// A fake GitHub REST API for (c): HTTP/1.1 on loopback, on its own thread and runtime (a real
/// forge is another machine: its work must not take the daemon's two workers). It takes what a
/// token reporter sends, `POST /repos/{owner}/{repo}/statuses/{sha}` with the token, checks the
/// body and answers `201` with the status as GitHub does, but only after `delay`. Anything else
/// gets GitHub's `401` / `404` / `400` / `422` (also slowly) and is listed as rejected.
struct FakeGithub {
    url: String,
    stats: Arc<ForgeStats>,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Default)]
struct ForgeStats {
    /// Requests received, counted on arrival (before the delay).
    arrivals: AtomicU64,
    /// Commit statuses accepted.
    statuses: AtomicU64,
    rejected: AtomicU64,
    /// Requests received and not answered yet.
    pending: AtomicUsize,
    peak: AtomicUsize,
    /// What was rejected (the first few).
    problems: Mutex<Vec<String>>,
}

impl ForgeStats {
    fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::SeqCst)
    }

    fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    fn reject(&self, problem: String) {
        self.rejected.fetch_add(1, Ordering::SeqCst);
        let mut problems = lock(&self.problems);
        if problems.len() < 10 {
            problems.push(problem);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeGithub {
    fn start(delay: Duration) -> FakeGithub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake GitHub");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stats = Arc::new(ForgeStats::default());
        let stop = CancellationToken::new();
        let (served, stopped) = (stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-github".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the fake GitHub's runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("the fake GitHub");
                    loop {
                        tokio::select! {
                            _ = stopped.cancelled() => break,
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => {
                                    tokio::spawn(serve_fake_github(stream, served.clone(), delay));
                                }
                                Err(e) => {
                                    eprintln!("the fake GitHub cannot accept: {e}");
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                            },
                        }
                    }
                });
                // Dropping the runtime closes the connections still open.
            })
            .expect("start the fake GitHub");
        FakeGithub {
            url,
            stats,
            stop,
            thread,
        }
    }

    fn stop(self) -> Arc<ForgeStats> {
        self.stop.cancel();
        let _ = self.thread.join();
        self.stats
    }
}

struct FakeRequest {
    method: String,
    target: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl FakeRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One connection: requests one after the other (keep-alive), each answered after `delay`.
async fn serve_fake_github(stream: tokio::net::TcpStream, stats: Arc<ForgeStats>, delay: Duration) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let request = match read_request(&mut read).await {
            Ok(Some(request)) => request,
            // The client closed the connection between requests.
            Ok(None) => return,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    stats.reject(format!("an unreadable request: {e}"));
                }
                return;
            }
        };
        stats.arrivals.fetch_add(1, Ordering::SeqCst);
        let pending = stats.pending.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak.fetch_max(pending, Ordering::SeqCst);
        let (status, body) = answer(&request, &stats);
        tokio::time::sleep(delay).await;
        let written = write_response(&mut write, status, &body).await;
        stats.pending.fetch_sub(1, Ordering::SeqCst);
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if written.is_err() || close {
            return;
        }
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Reads one HTTP/1.1 request (a `Content-Length` or chunked body). `None` at a clean end.
async fn read_request<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<FakeRequest>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("a bad request line {line:?}")));
    };
    let mut request = FakeRequest {
        method: method.to_string(),
        target: target.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(format!("a bad header line {line:?}")));
        };
        if request.headers.len() >= 100 {
            return Err(invalid("too many headers".into()));
        }
        request
            .headers
            .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await?;
            let digits = size.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(digits, 16)
                .map_err(|_| invalid(format!("a bad chunk size {digits:?}")))?;
            if request.body.len() + size > FAKE_MAX_BODY {
                return Err(invalid("a body too large".into()));
            }
            let start = request.body.len();
            request.body.resize(start + size, 0);
            r.read_exact(&mut request.body[start..]).await?;
            // The CRLF after the chunk's data, or after the last (empty) chunk, no trailers.
            let mut end = String::new();
            r.read_line(&mut end).await?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("a bad Content-Length {length:?}")))?;
        if length > FAKE_MAX_BODY {
            return Err(invalid("a body too large".into()));
        }
        request.body.resize(length, 0);
        r.read_exact(&mut request.body).await?;
    }
    Ok(Some(request))
}

/// GitHub's answer to `request`: a created commit status, or the error GitHub would give.
fn answer(request: &FakeRequest, stats: &ForgeStats) -> (u16, serde_json::Value) {
    use serde_json::{json, Value};
    let here = format!("{} {}", request.method, request.target);
    if request.header("authorization") != Some(format!("Bearer {FORGE_TOKEN}").as_str()) {
        stats.reject(format!("{here}: no token, or not ours"));
        return (401, json!({ "message": "Bad credentials" }));
    }
    let path = request.target.split('?').next().unwrap_or_default();
    let sha = path
        .strip_prefix(&format!("/repos/{SLUG}/statuses/"))
        .filter(|sha| sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(sha) = sha.filter(|_| request.method == "POST") else {
        stats.reject(format!("{here}: not a commit status of {SLUG}"));
        return (404, json!({ "message": "Not Found" }));
    };
    let body: Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(e) => {
            stats.reject(format!("{here}: the body is not JSON ({e})"));
            return (400, json!({ "message": "Problems parsing JSON" }));
        }
    };
    let state = body.get("state").and_then(Value::as_str);
    let context = body.get("context").and_then(Value::as_str);
    match (state, context) {
        (Some(state @ ("error" | "failure" | "pending" | "success")), Some(context)) => {
            let id = stats.statuses.fetch_add(1, Ordering::SeqCst) + 1;
            (
                201,
                json!({
                    "id": id,
                    "url": format!("/repos/{SLUG}/statuses/{sha}"),
                    "state": state,
                    "context": context,
                    "description": body.get("description"),
                    "target_url": body.get("target_url"),
                }),
            )
        }
        _ => {
            stats.reject(format!("{here}: state {state:?}, context {context:?}"));
            (422, json!({ "message": "Validation Failed" }))
        }
    }
}

async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = match status {
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Unprocessable Entity",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json; charset=utf-8\r\n\
         content-length: {}\r\nx-ratelimit-limit: 5000\r\nx-ratelimit-remaining: 4999\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body.as_bytes()).await?;
    w.flush().await
}

// ---------------------------------------------------------------------------------------------

fn daemon_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("DEPLOYLITE_BIN") {
        return PathBuf::from(bin);
    }
    // Cargo builds the package's binaries for its benches and says where.
    let built = PathBuf::from(env!("CARGO_BIN_EXE_deploylite"));
    if built.exists() {
        return built;
    }
    // target/<profile>/deps/webhooks-HASH -> target/<profile>/deploylite
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("deploylite"))
        .expect("target dir")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn throughput(rt: &tokio::runtime::Runtime) {
    let bin = daemon_binary();
    assert!(
        bin.exists(),
        "no daemon binary at {} (set DEPLOYLITE_BIN)",
        bin.display()
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    // Every push names the same commit: what is measured is the webhook path (verify, record,
    // answer, poke, one ref listing), not the running of 10,000 pipelines.
    let sha = make_repo(
        &repo,
        "name: ci\nstages:\n  first:\n    steps: [{ run: 'true' }]\n",
    );
    let data_dir = tmp.path().join("data");
    let port = free_port();
    let config = tmp.path().join("deploylite.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\nrepos:\n  - {{ name: bench, url: {}, forge: github, slug: {SLUG}, poll_interval: 1h }}\n",
            data_dir.display(),
            repo.display()
        ),
    )
    .expect("config");
    let stderr = std::fs::File::create(tmp.path().join("daemon.stderr")).expect("stderr");
    let mut daemon = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("DEPLOYLITE_FORGES__GITHUB__WEBHOOK_SECRET", SECRET)
        .env("DEPLOYLITE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start the daemon");
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let healthy = rt.block_on(async {
        for _ in 0..400 {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    });
    if !healthy {
        let _ = daemon.kill();
        let log = std::fs::read_to_string(tmp.path().join("daemon.stderr")).unwrap_or_default();
        panic!("the daemon did not become healthy:\n{log}");
    }

    let body: &'static [u8] = Box::leak(push_payload(&sha).into_boxed_slice());
    let signature = sign(body);
    let url = format!("{base}/webhooks/github");
    let total = RATE * SECONDS;
    let (statuses, mut latencies, elapsed) = rt.block_on(async {
        let start = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let due = start + Duration::from_micros(i * 1_000_000 / RATE);
            tokio::time::sleep_until(due).await;
            let (http, url, signature) = (http.clone(), url.clone(), signature.clone());
            tasks.spawn(async move {
                let status = http
                    .post(&url)
                    .header("X-GitHub-Event", "push")
                    .header("X-GitHub-Delivery", format!("bench-{i}"))
                    .header("X-Hub-Signature-256", signature)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                (status, due.elapsed())
            });
        }
        let sent = start.elapsed();
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        let mut latencies = Vec::with_capacity(total as usize);
        while let Some(done) = tasks.join_next().await {
            let (status, latency) = done.expect("task");
            *statuses.entry(status).or_default() += 1;
            latencies.push(latency);
        }
        (statuses, latencies, sent)
    });

    // Stop the daemon the way an operator does, and read what it recorded.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let exit = daemon.wait().expect("daemon exit");
    let db = data_dir.join("deploylite.db");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT COUNT(*) FROM webhook_deliveries WHERE forge = 'github' AND delivery_id LIKE 'bench-%'")
        .output()
        .expect("the sqlite3 CLI");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count");

    latencies.sort();
    let accepted = statuses.get(&202).copied().unwrap_or(0);
    println!(
        "(b) {total} signed webhooks to the daemon in {:.2} s from a second process: {:.0}/s sent; statuses {statuses:?}; \
         latency from schedule p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {rows} deliveries recorded; daemon {exit}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(&latencies, 50),
        pct(&latencies, 90),
        pct(&latencies, 99),
        pct(&latencies, 100),
    );
    assert_eq!(accepted, total, "every webhook is accepted");
    assert_eq!(
        rows, accepted,
        "every accepted delivery is recorded: none lost"
    );
}
