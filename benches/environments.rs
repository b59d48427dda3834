//! The environment controller's two targets (issue 11), in process:
//!
//! 1. A commit on main -> staging's deploy pipeline started, measured from the end of `ci`
//!    (one `true` stage, as the issue says) to the deploy stage's shell opening a FIFO the
//!    bench waits on. The ci run's end is the scheduler's `RunFinished` event.
//! 2. 1,000 environments (10 repositories × 100 environment files, every one deployed at the
//!    head of main) with nothing to do: the process CPU time of one controller pass.
//!
//! `cargo bench --bench environments` (prints p50/p90/max for each)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploylite_pipeline::GlobList;
use deploylite_reconciler::environments::Environments;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::scheduler::SchedulerEvent;
use deploylite_reconciler::status::{DeploymentStatus, RunStatus};
use deploylite_reconciler::store::{SqliteSync, Store};
use deploylite_reconciler::watcher::{RepoConfig, Repos};
use deploylite_runner::CancellationToken;
use nix::time::{clock_gettime, ClockId};

const LATENCY_ITERATIONS: usize = 40;
const PASS_ITERATIONS: usize = 30;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench absent; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    ci_end_to_deploy_started(&rt);
    idle_pass_over_1000_environments(&rt);
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "{what}: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms over {} samples",
        pct(50).as_secs_f64() * 1e3,
        pct(90).as_secs_f64() * 1e3,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        samples.len()
    );
}

fn ci_end_to_deploy_started(rt: &tokio::runtime::Runtime) {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    let fifos = tmp.path().join("fifos");
    std::fs::create_dir_all(&fifos).expect("mkdir");
    std::fs::create_dir_all(repo.join(".deploylite/pipelines")).expect("mkdir");
    std::fs::create_dir_all(repo.join(".deploylite/environments")).expect("mkdir");
    std::fs::write(
        repo.join(".deploylite/pipelines/ci.yaml"),
        "name: ci\nstages:\n  test:\n    steps: [{ run: 'true' }]\n",
    )
    .expect("write");
    std::fs::write(
        repo.join(".deploylite/pipelines/deploy.yaml"),
        format!(
            "name: deploy\nstages:\n  release:\n    steps: [{{ run: ': > {}/$DEPLOYLITE_VERSION' }}]\n",
            fifos.display()
        ),
    )
    .expect("write");
    std::fs::write(
        repo.join(".deploylite/environments/staging.yaml"),
        "name: staging\ndeploy: deploy\nfollows: { branch: main }\nrequires: [ci]\n",
    )
    .expect("write");
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "init"]);
    // The initial commit's deploy opens its FIFO too: make it a plain file.
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(fifos.join(&first), "").expect("write");

    let support::LocalDaemon {
        store,
        repos,
        scheduler,
        watcher,
        ..
    } = support::local_daemon(rt, &tmp.path().join("data"), &repo);
    let environments = Environments::new(
        store.clone(),
        repos.clone(),
        Arc::default(),
        scheduler.waker(),
    );
    watcher.notify_on_commit(environments.waker());
    let shutdown = CancellationToken::new();
    // When each run finished, by run id, as the scheduler announces it.
    let finished: Arc<Mutex<HashMap<deploylite_model::RunId, Instant>>> = Arc::default();
    {
        let finished = finished.clone();
        let mut events = scheduler.subscribe();
        rt.spawn(async move {
            while let Ok(event) = events.recv().await {
                if let SchedulerEvent::RunFinished { run_id, .. } = event {
                    finished
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(run_id, Instant::now());
                }
            }
        });
    }
    rt.spawn(
        environments
            .clone()
            .run(scheduler.subscribe(), shutdown.clone()),
    );
    rt.spawn(scheduler.run(shutdown.clone()));
    rt.spawn(watcher.run(shutdown.clone()));
    repos.poke(support::REPO);
    wait_deployed(rt, &store, &first);

    let mut samples = Vec::new();
    for i in 0..LATENCY_ITERATIONS {
        std::fs::write(repo.join("change.txt"), i.to_string()).expect("write");
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", &format!("change {i}")]);
        let head = git(&repo, &["rev-parse", "HEAD"]);
        let fifo = fifos.join(&head);
        let ok = Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success();
        assert!(ok, "mkfifo");
        repos.poke(support::REPO);
        // Blocks until the deploy stage's shell opens the FIFO for writing.
        let opened = std::fs::File::open(&fifo).expect("fifo");
        let started = Instant::now();
        drop(opened);
        let ci = rt
            .block_on(store.latest_run(support::REPO, "ci", Some("refs/heads/main")))
            .expect("store")
            .expect("the ci run");
        assert_eq!(ci.commit, head, "the newest ci run is this commit's");
        assert_eq!(ci.status, RunStatus::Success);
        let ended = finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ci.id)
            .copied()
            .expect("the ci run's end was announced");
        samples.push(started.saturating_duration_since(ended));
        wait_deployed(rt, &store, &head);
    }
    shutdown.cancel();
    report("ci ended -> staging's deploy stage started", samples);
}

fn wait_deployed(rt: &tokio::runtime::Runtime, store: &Store, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let env = rt
            .block_on(store.environment(support::REPO, "staging"))
            .expect("store");
        if env.and_then(|e| e.current_version).as_deref() == Some(version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "staging never deployed {version}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn idle_pass_over_1000_environments(rt: &tokio::runtime::Runtime) {
    const REPOS: usize = 10;
    const PER_REPO: usize = 100;
    let tmp = tempfile::tempdir().expect("tmp");
    let data = DataDir::new(tmp.path().join("data"));
    let store = rt
        .block_on(Store::connect(
            &data.default_database_url(),
            SqliteSync::Full,
        ))
        .expect("store");
    let mut configs = Vec::new();
    for r in 0..REPOS {
        let repo = tmp.path().join(format!("repo{r}"));
        std::fs::create_dir_all(repo.join(".deploylite/pipelines")).expect("mkdir");
        std::fs::create_dir_all(repo.join(".deploylite/environments")).expect("mkdir");
        std::fs::write(
            repo.join(".deploylite/pipelines/deploy.yaml"),
            "name: deploy\nstages:\n  release:\n    steps: [{ run: 'true' }]\n",
        )
        .expect("write");
        for e in 0..PER_REPO {
            std::fs::write(
                repo.join(format!(".deploylite/environments/env{e}.yaml")),
                format!("name: env{e}\ndeploy: deploy\nfollows: {{ branch: main }}\n"),
            )
            .expect("write");
        }
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", "init"]);
        configs.push(RepoConfig {
            name: format!("repo{r}"),
            url: repo.display().to_string(),
            branches: GlobList::default(),
            tags: GlobList::default().into(),
            poll_interval: Duration::from_secs(3600),
            report: false,
            untrusted: Default::default(),
        });
    }
    let repos = Arc::new(Repos::new(configs, &data));
    let environments =
        Environments::new(store.clone(), repos.clone(), Arc::default(), Arc::default());
    // The first pass records the definitions and a deployment per environment; mark each one
    // succeeded at the head, as if it had run, so that nothing is left to do.
    rt.block_on(environments.pass()).expect("first pass");
    rt.block_on(async {
        for r in 0..REPOS {
            let repo = format!("repo{r}");
            let open = store.open_deployments(&repo).await.expect("open");
            let mut tx = store.begin_environments().await.expect("tx");
            for d in &open {
                for (from, to) in [
                    (DeploymentStatus::Waiting, DeploymentStatus::Queued),
                    (DeploymentStatus::Queued, DeploymentStatus::Deploying),
                    (DeploymentStatus::Deploying, DeploymentStatus::Succeeded),
                ] {
                    tx.transition(d.id, from, to, None, &[])
                        .await
                        .expect("move");
                }
                tx.set_current(&repo, &d.environment, &d.version, d.id)
                    .await
                    .expect("current");
            }
            tx.commit().await.expect("commit");
        }
    });
    let envs = rt.block_on(store.environments(None, false)).expect("list");
    assert_eq!(envs.len(), REPOS * PER_REPO);
    assert!(envs
        .iter()
        .all(|e| e.current_version.is_some() && e.current_version == e.desired_version));

    let mut samples = Vec::new();
    for _ in 0..PASS_ITERATIONS {
        let before = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("clock");
        rt.block_on(environments.pass()).expect("pass");
        let after = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("clock");
        samples.push(Duration::from(after) - Duration::from(before));
    }
    let open: usize = (0..REPOS)
        .map(|r| {
            rt.block_on(store.open_deployments(&format!("repo{r}")))
                .expect("open")
                .len()
        })
        .sum();
    assert_eq!(open, 0, "an idle pass records nothing");
    report(
        "one controller pass, 1,000 environments with nothing to do (process CPU time)",
        samples,
    );
}
