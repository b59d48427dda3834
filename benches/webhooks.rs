//! Inbound webhooks under time and load.
//!
//! (a) Latency, in process: a signed GitHub push is POSTed over loopback → verified → delivery
//!     recorded → 202 → the event applied (poke) → ref listed → pipeline read → run recorded →
//!     workspace checked out → stage dispatched → `sh` started. "Started" is when the stage's
//!     shell opens a FIFO the bench waits on (as in benches/latency.rs). p50/p90 over PUSHES.
//! (b) Throughput, from a second process: the real daemon binary is started with a webhook
//!     secret and one GitHub repository; this process fires signed pushes with unique delivery
//!     ids at RATE/s for SECONDS, paced on a fixed schedule (latency is measured from each
//!     request's scheduled time, so a stalled server cannot hide behind a slowed sender), counts
//!     answers by status, stops the daemon and counts the rows of `webhook_deliveries` in its
//!     SQLite database: every 202 must have its row.
//!
//! `cargo bench --bench webhooks` (the daemon is the bench build's `deploylite`, or
//! `DEPLOYLITE_BIN=path`; (b) reads the database with the `sqlite3` CLI).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploylite_reconciler::store::RunFilter;
use deploylite_runner::CancellationToken;
use deploylite_webhook::forges::{
    ForgeKind, ForgeRepo, GithubConfig, Secret, DEFAULT_MAX_BODY_BYTES,
};
use deploylite_webhook::{AppState, Forges};

const PUSHES: usize = 50;
const RATE: u64 = 1000;
const SECONDS: u64 = 10;
const SECRET: &str = "bench webhook secret";
const SLUG: &str = "bench/app";

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
    latency(&rt);
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

fn latency(rt: &tokio::runtime::Runtime) {
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
    } = support::local_daemon(rt, &tmp.path().join("data"), &repo);
    let state = AppState {
        store: store.clone(),
        data,
        scheduler: scheduler.waker(),
        watcher: Some(watcher.clone()),
        forges: Arc::new(Forges::new(
            Some(GithubConfig {
                api_url: "https://api.github.com".into(),
                auth: None,
                webhook_secret: Some(Secret::new(SECRET)),
            }),
            None,
            None,
            DEFAULT_MAX_BODY_BYTES,
            vec![ForgeRepo {
                name: "bench".into(),
                forge: ForgeKind::Github,
                slug: SLUG.into(),
            }],
        )),
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
        deploylite_webhook::serve(listener, state, async move { stop.cancelled().await }).await
    });
    rt.spawn(scheduler.run(shutdown.clone()));
    rt.spawn(watcher.run(shutdown.clone()));
    // The first scan runs the initial commit: consume its stage before measuring.
    assert!(
        wait_for_fifo(&fifo, Duration::from_secs(30)),
        "the initial commit's stage did not start"
    );

    let http = client();
    let (mut to_started, mut to_ack, mut lost) = (Vec::new(), Vec::new(), Vec::new());
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
    shutdown.cancel();
    for line in &lost {
        println!("(a) a stage that never started: {line}");
    }
    to_started.sort();
    to_ack.sort();
    println!(
        "(a) signed push webhook -> first stage process started: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms \
         (202 answered: p50 {:.2} ms, p90 {:.2} ms) over {} pushes ({} stages never started)",
        pct(&to_started, 50),
        pct(&to_started, 90),
        pct(&to_started, 100),
        pct(&to_ack, 50),
        pct(&to_ack, 90),
        to_started.len(),
        lost.len()
    );
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
