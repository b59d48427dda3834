//! Processes left behind by a daemon that was killed (`kill -9`) while stages ran.
//!
//! Stage processes live in their own process group, so they survive the daemon. We find them
//! again by the `DEPLOYLITE_*` variables every stage process inherits, rather than by a recorded
//! pid, because a recorded pid may have been reused by an unrelated process since. The
//! workspace must lie under this daemon's `workspaces` directory: another daemon on the same
//! host has its own run ids, and its stages are not ours to kill.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kills every process whose environment says it belongs to this stage attempt of the daemon
/// whose workspaces live under `workspaces`. Returns how many were signalled. Linux only
/// (reads /proc); elsewhere it finds nothing.
pub fn kill_orphans(workspaces: &Path, run_id: i64, stage: &str, attempt: u32) -> usize {
    let workspace = workspaces.join(run_id.to_string());
    let wanted = [
        format!("DEPLOYLITE_RUN_ID={run_id}"),
        format!("DEPLOYLITE_STAGE={stage}"),
        format!("DEPLOYLITE_ATTEMPT={attempt}"),
        format!("DEPLOYLITE_WORKSPACE={}", workspace.display()),
    ];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if wanted.iter().all(|w| vars.contains(&w.as_bytes()))
            && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}
