//! What DeployLite's tests share across crates. A dev-dependency only: nothing here ships.

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
