//! What the in-process benches share: a daemon's parts (store, one watched repository, the
//! scheduler with the local executor, the watcher) wired as `deploylite serve` wires them.

// Each bench compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deploylite_pipeline::GlobList;
use deploylite_reconciler::paths::DataDir;
use deploylite_reconciler::scheduler::{Scheduler, SchedulerConfig};
use deploylite_reconciler::store::{SqliteSync, Store};
use deploylite_reconciler::watcher::{RepoConfig, Repos, Watcher};
use deploylite_runner::LocalExecutor;

/// The name the watched repository is known by.
pub const REPO: &str = "bench";

pub struct LocalDaemon {
    pub store: Store,
    pub data: DataDir,
    pub repos: Arc<Repos>,
    pub scheduler: Arc<Scheduler>,
    pub watcher: Arc<Watcher>,
}

/// Durable SQLite under `data_dir`, `repo` watched with a poll interval so long that every
/// measured reconciliation is started by the bench (a poke or a webhook), never by the timer.
/// Its runs are not reported to a forge.
pub fn local_daemon(rt: &tokio::runtime::Runtime, data_dir: &Path, repo: &Path) -> LocalDaemon {
    local_daemon_reporting(rt, data_dir, repo, false)
}

/// [`local_daemon`], with `repos[].report` set to `report`: when true, every state change of the
/// repository's runs queues an outbox row (in the same transaction) for a `Reporter` to send.
pub fn local_daemon_reporting(
    rt: &tokio::runtime::Runtime,
    data_dir: &Path,
    repo: &Path,
    report: bool,
) -> LocalDaemon {
    let data = DataDir::new(data_dir);
    let store = rt
        .block_on(Store::connect(
            &data.default_database_url(),
            SqliteSync::Full,
        ))
        .expect("store");
    let repos = Arc::new(Repos::new(
        vec![RepoConfig {
            name: REPO.into(),
            url: repo.display().to_string(),
            branches: GlobList::default(),
            tags: GlobList::default().into(),
            poll_interval: Duration::from_secs(3600),
            report,
            untrusted: Default::default(),
        }],
        &data,
    ));
    let scheduler = Scheduler::new(
        store.clone(),
        data.clone(),
        SchedulerConfig::local(4, vec![]),
        Arc::new(LocalExecutor::default()),
        repos.clone(),
    );
    let watcher = Watcher::new(store.clone(), repos.clone(), scheduler.waker());
    LocalDaemon {
        store,
        data,
        repos,
        scheduler,
        watcher,
    }
}
