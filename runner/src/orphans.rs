//! Processes left behind by a daemon or a runner that was killed (`kill -9`) while stages ran.
//!
//! Stage processes live in their own process group, so they survive whoever started them. We
//! find them again by the `DEPLOYLITE_*` variables every stage process inherits, rather than by
//! a recorded pid, because a recorded pid may have been reused by an unrelated process since.
//! The workspace must lie under the directory the dead process kept its workspaces in: another
//! daemon or runner on the same host has its own run ids, and its stages are not ours to kill.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use deploylite_model::{Attempt, RunId};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A sweep repeats while it still finds new processes, at most this many times: a stage
/// process may fork between our reading its parent's entry and killing it, and its child
/// (which inherits the same environment) can sit at a /proc entry we already passed.
const MAX_SWEEPS: usize = 5;

/// Kills every process whose environment says it belongs to this stage attempt of the daemon
/// whose workspaces live under `workspaces`. Returns how many were signalled. Linux only
/// (reads /proc); elsewhere it finds nothing.
pub fn kill_orphans(workspaces: &Path, run_id: RunId, stage: &str, attempt: Attempt) -> usize {
    let workspace = workspaces.join(run_id.to_string());
    let wanted = [
        format!("DEPLOYLITE_RUN_ID={run_id}"),
        format!("DEPLOYLITE_STAGE={stage}"),
        format!("DEPLOYLITE_ATTEMPT={attempt}"),
        format!("DEPLOYLITE_WORKSPACE={}", workspace.display()),
    ];
    kill_where(|vars| wanted.iter().all(|w| vars.contains(&w.as_bytes())))
}

/// Kills every stage process whose `DEPLOYLITE_WORKSPACE` lies strictly under `dir`, whatever
/// its run, stage or attempt: what a runner restarted with the same work directory finds of
/// its previous incarnation, whose leases are lost anyway. Paths compare by components, so
/// `/w/a` does not cover `/w/ab/1`. This process itself is never signalled. Returns how many
/// processes were signalled. Linux only (reads /proc); elsewhere it finds nothing.
pub fn kill_stages_under(dir: &Path) -> usize {
    let own = i32::try_from(std::process::id()).ok();
    let mut killed = HashSet::new();
    for _ in 0..MAX_SWEEPS {
        let mut new = 0;
        for pid in matching_pids(|vars| is_stage_under(vars, dir)) {
            if Some(pid) == own || killed.contains(&pid) {
                continue;
            }
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
                new += 1;
            }
        }
        if new == 0 {
            break;
        }
    }
    killed.len()
}

/// A stage's environment (it names its run and stage) with a workspace under `dir`.
fn is_stage_under(vars: &[&[u8]], dir: &Path) -> bool {
    let has = |prefix: &[u8]| vars.iter().any(|v| v.starts_with(prefix));
    has(b"DEPLOYLITE_RUN_ID=")
        && has(b"DEPLOYLITE_STAGE=")
        && vars.iter().any(|v| {
            v.strip_prefix(b"DEPLOYLITE_WORKSPACE=").is_some_and(|w| {
                let workspace = Path::new(OsStr::from_bytes(w));
                workspace != dir && workspace.starts_with(dir)
            })
        })
}

fn kill_where(wanted: impl Fn(&[&[u8]]) -> bool) -> usize {
    matching_pids(wanted)
        .into_iter()
        .filter(|pid| kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok())
        .count()
}

/// Pids of the processes (readable by us) whose environment satisfies `wanted`, given as
/// `NAME=value` byte strings. Zombies and kernel threads have an empty environment and never
/// match.
fn matching_pids(wanted: impl Fn(&[&[u8]]) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
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
        if wanted(&vars) {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[&'static str]) -> Vec<&'static [u8]> {
        vars.iter().map(|v| v.as_bytes()).collect()
    }

    #[test]
    fn stages_under_a_directory() {
        let dir = Path::new("/srv/runner/work");
        let stage = |workspace: &'static str| {
            env(&[
                "PATH=/bin",
                "DEPLOYLITE_RUN_ID=7",
                "DEPLOYLITE_STAGE=build",
                workspace,
            ])
        };
        assert!(is_stage_under(
            &stage("DEPLOYLITE_WORKSPACE=/srv/runner/work/7-build-1"),
            dir
        ));
        assert!(is_stage_under(
            &stage("DEPLOYLITE_WORKSPACE=/srv/runner/work/7-build-1/sub"),
            dir
        ));
        for other in [
            "DEPLOYLITE_WORKSPACE=/srv/runner/work",
            "DEPLOYLITE_WORKSPACE=/srv/runner/work2/7-build-1",
            "DEPLOYLITE_WORKSPACE=/srv/runner/7-build-1",
            "DEPLOYLITE_WORKSPACE=work/7-build-1",
            "NOT_DEPLOYLITE_WORKSPACE=/srv/runner/work/7-build-1",
        ] {
            assert!(!is_stage_under(&stage(other), dir), "{other}");
        }
        // A shell that merely exported a workspace is not a stage.
        assert!(!is_stage_under(
            &env(&["DEPLOYLITE_WORKSPACE=/srv/runner/work/7-build-1"]),
            dir
        ));
    }
}
