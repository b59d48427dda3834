//! Latency of the whole reconcile path, in process: a new commit is noticed (the repository is
//! poked, as a webhook will do) -> ref lookup -> pipeline read from the commit's tree -> run
//! recorded (durable SQLite) -> workspace checked out -> stage dispatched -> `sh` started.
//! "Started" is when the stage's shell opens a FIFO the bench is waiting on.
//!
//! `cargo bench --bench latency` (prints p50/p90/max over ITERATIONS commits)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deploylite_runner::CancellationToken;

const ITERATIONS: usize = 60;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git")
        .status
        .success();
    assert!(ok, "git {args:?}");
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench absent; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    // One FIFO per commit, named after it: a stage of another commit (the initial one, say) can
    // never be the writer a measurement pairs with.
    let fifos = tmp.path().join("fifos");
    std::fs::create_dir_all(&fifos).expect("mkdir");
    std::fs::create_dir_all(repo.join(".deploylite/pipelines")).expect("mkdir");
    std::fs::write(
        repo.join(".deploylite/pipelines/ci.yaml"),
        format!(
            "name: ci\nstages:\n  first:\n    steps: [{{ run: ': > {}/$DEPLOYLITE_COMMIT' }}]\n",
            fifos.display()
        ),
    )
    .expect("write");
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "init"]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let support::LocalDaemon {
        repos,
        scheduler,
        watcher,
        ..
    } = support::local_daemon(&rt, &tmp.path().join("data"), &repo);
    let shutdown = CancellationToken::new();
    rt.spawn(scheduler.run(shutdown.clone()));
    rt.spawn(watcher.run(shutdown.clone()));

    let mut samples = Vec::new();
    for i in 0..=ITERATIONS {
        std::fs::write(repo.join("change.txt"), i.to_string()).expect("write");
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", &format!("change {i}")]);
        let fifo = fifos.join(head(&repo));
        nix_mkfifo(&fifo);
        let start = Instant::now();
        repos.poke(support::REPO);
        // Blocks until the stage's shell opens the FIFO for writing.
        let opened = std::fs::File::open(&fifo).expect("fifo");
        let elapsed = start.elapsed();
        drop(opened);
        if i > 0 {
            samples.push(elapsed); // the first one also pays the initial ref scan
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    shutdown.cancel();
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "commit noticed -> first stage process started: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms over {} commits",
        pct(50).as_secs_f64() * 1e3,
        pct(90).as_secs_f64() * 1e3,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        samples.len()
    );
}

fn head(dir: &Path) -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .expect("git rev-parse");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn nix_mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo")
        .success();
    assert!(ok, "mkfifo");
}
