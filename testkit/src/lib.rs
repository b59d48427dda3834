//! What DeployLite's tests share across crates. A dev-dependency only: nothing here ships.
//!
//! The vocabulary: [`TestRepo`] (a real git repository: `write`, `commit`, `branch`),
//! [`wait`] (every wait of a test: on a signal where there is one, else re-reading a state
//! until a deadline, never a bare sleep), [`RunView`] (a run as the API shows it, typed) and,
//! with the `daemon` feature, [`daemon::Daemon`] (`deploylite serve` on its own port); with the
//! `executor` feature, [`executor::FakeExecutor`] (stages scripted to succeed, fail or hang,
//! for the scheduler's tests); with the `forge` feature, [`forge::FakeForge`] (a fake GitHub
//! and GitLab over HTTP).

// Test support: a panic here is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "executor")]
pub mod executor;
#[cfg(feature = "forge")]
pub mod forge;
pub mod repo;
pub mod views;
pub mod wait;

pub use repo::TestRepo;
pub use views::{RunStatus, RunView, StageStatus, StageView};

use std::io::Write;

/// Says that a test cannot run on this machine for want of `what` (the PostgreSQL server, a
/// Docker engine, root...). Under CI (`CI=true`) nothing may be skipped, so this panics with
/// the reason; elsewhere it prints the reason and records it in the file named by
/// `DEPLOYLITE_TEST_SKIPS`, which `scripts/test` lists loudly once every test has run (libtest
/// hides a passing test's output, so an `eprintln!` alone would go unseen).
///
/// The caller returns early after this: the test then counts as passed, which is why the list
/// at the end matters.
pub fn skip(what: &str, why: &str) {
    let line = format!("{what}: {why}");
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("CI must run this test, but {line}");
    }
    eprintln!("SKIPPED {line}");
    if let Some(path) = std::env::var_os("DEPLOYLITE_TEST_SKIPS") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// The URL of a fresh, empty database on the PostgreSQL server named by
/// `DEPLOYLITE_TEST_POSTGRES_URL` (`./scripts/test` starts one), so that tests never share
/// state. Without that variable, `what` is [`skip`]ped (a failure under CI) and this is `None`.
pub async fn postgres_database(what: &str) -> Option<String> {
    use sqlx::Connection;
    use std::sync::atomic::{AtomicU32, Ordering};
    let Ok(url) = std::env::var("DEPLOYLITE_TEST_POSTGRES_URL") else {
        skip(
            what,
            "DEPLOYLITE_TEST_POSTGRES_URL is not set (./scripts/test starts a server when PostgreSQL is installed)",
        );
        return None;
    };
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "dl_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    admin.close().await.ok();
    let (base, _) = url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("DEPLOYLITE_TEST_POSTGRES_URL names no database: {url}"));
    Some(format!("{base}/{name}"))
}
