//! Keeping a local stage away from the secrets of the process that runs it (the daemon or a
//! runner): its environment, its config and credential files, its data dir.
//!
//! - **As root**, stages run as an unprivileged user ([`StageUser`], `local_runner.user`) who
//!   owns only the workspaces handed to it ([`Sandbox::adopt_workspace`]); the rest is kept
//!   away by file modes (`/proc/PID/environ` of a root process is 0400, the data dir 0711 with
//!   private contents). They are spawned from a thread that dropped to that user
//!   (`thread_creds.rs`), not with `CommandExt::uid`, which makes std fork the whole daemon.
//! - **Not as root**, stages share our uid: [`harden_process`] makes us non-dumpable (closing
//!   `/proc/PID/environ` and `/proc/PID/mem` to same-uid processes) and stages are spawned from
//!   a thread that Landlock denies the protected paths (`landlocked.rs`), when the kernel has it.
//!
//! Either way one thread spawns every stage process (`spawner.rs`).
//!
//! docs/local-isolation.md says what a stage can and cannot reach in each mode.

mod landlocked;
mod spawner;
mod thread_creds;
mod user;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::{Child, Command};

pub use user::StageUser;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("local_runner.user `{0}`: expected a user name or uid[:gid]")]
    BadUser(String),
    #[error(
        "local_runner.user: there is no user `{0}` on this machine (create it, or give uid[:gid])"
    )]
    UnknownUser(String),
    #[error("local_runner.user: cannot look up `{name}`: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("stages run as {user}, who cannot reach {path}: {why}")]
    Unreachable {
        user: String,
        path: PathBuf,
        why: String,
    },
    #[error("cannot give {path} to the stage user: {source}")]
    Adopt {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up Landlock for stages: {0}")]
    Landlock(String),
    #[error("cannot start the thread that spawns stages: {0}")]
    Spawner(String),
    #[error("preparing the workspace stopped unexpectedly: {0}")]
    Interrupted(String),
}

/// What stages are kept from: whatever the process that runs them can reach besides their
/// workspaces.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `local_runner.user`: who stages run as when we are root (a name, or `uid[:gid]`).
    pub user: String,
    /// Paths a stage must not read or write: the data dir, the config file, secret files, a
    /// runner's state dir.
    pub protected: Vec<PathBuf>,
    /// Where the workspaces live (it may lie inside a protected path): stages need it.
    pub workspaces: PathBuf,
}

/// The default of `local_runner.user`: present on every Linux distribution and owning nothing
/// that matters. A dedicated user is better (docs/local-isolation.md): other daemons that run
/// as `nobody` can be signalled by stages, and files they leave are the stages' too.
pub const DEFAULT_STAGE_USER: &str = "nobody";

/// How a [`crate::LocalExecutor`] starts stages. The default keeps nothing from them (beyond
/// the `DEPLOYLITE_*` variables the executor always withholds): `deploylite run`, where the
/// steps run in the caller's own working copy as the caller.
#[derive(Clone, Default)]
pub struct Sandbox {
    mode: Arc<Mode>,
}

#[derive(Default)]
enum Mode {
    #[default]
    Unconfined,
    User(StageUser, spawner::Spawner),
    Landlock(spawner::Spawner),
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Sandbox {
    /// The sandbox for stages of this process: a user drop when we are root, else Landlock
    /// where the kernel has it (logged once when it does not). Checks that the stage user can
    /// reach `config.workspaces`.
    pub async fn for_stages(config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let mode = if nix::unistd::geteuid().is_root() {
            // The user database may be NSS (LDAP...), and stat is a disk read: off the runtime.
            let (spec, workspaces) = (config.user.clone(), config.workspaces.clone());
            let user = tokio::task::spawn_blocking(move || {
                let user = StageUser::resolve(&spec)?;
                if user.uid != 0 {
                    user.check_reaches(&workspaces)?;
                }
                Ok::<_, SandboxError>(user)
            })
            .await
            .map_err(|e| SandboxError::Interrupted(e.to_string()))??;
            if user.uid == 0 {
                tracing::warn!(
                    "local_runner.user is root: stages run as root and can read every secret of \
                     this process (its environment, config file, database)"
                );
                Mode::Unconfined
            } else {
                let (uid, gid) = (user.uid, user.gid);
                let spawner = spawner::Spawner::start(move || {
                    thread_creds::drop_to(uid, gid)
                        .map(|()| Some(format!("uid {uid}, gid {gid}")))
                        .map_err(|e| SandboxError::Spawner(format!("dropping to uid {uid}: {e}")))
                })
                .await?
                .ok_or_else(|| SandboxError::Spawner("no spawning thread".into()))?;
                Mode::User(user, spawner)
            }
        } else {
            let (protected, workspaces) = (config.protected.clone(), config.workspaces.clone());
            let confine = move || landlocked::confine(&protected, &workspaces);
            match spawner::Spawner::start(confine).await? {
                Some(spawner) => Mode::Landlock(spawner),
                None => {
                    tracing::warn!(
                        "Landlock is not available on this kernel: local stages are NOT kept from \
                         the data dir, the config file and secret files (they run as this \
                         process's user; see docs/local-isolation.md)"
                    );
                    Mode::Unconfined
                }
            }
        };
        Ok(Sandbox {
            mode: Arc::new(mode),
        })
    }

    /// One phrase for the start-up log.
    pub fn describe(&self) -> String {
        match &*self.mode {
            Mode::Unconfined => "none: stages run as this process's user".into(),
            Mode::User(u, _) => format!("stages run as {u}"),
            Mode::Landlock(s) => s.status().to_string(),
        }
    }

    /// The user stages run as, when it is not ours.
    pub fn stage_user(&self) -> Option<&StageUser> {
        match &*self.mode {
            Mode::User(u, _) => Some(u),
            _ => None,
        }
    }

    /// Makes a freshly filled workspace the stage's: owned by the stage user (recursively, not
    /// following symlinks) and closed to everyone else. Call it once, after the checkout and
    /// before the first step, while no stage process can be in the workspace yet.
    pub async fn adopt_workspace(&self, dir: &Path) -> Result<(), SandboxError> {
        let owner = self.stage_user().map(|u| (u.uid, u.gid));
        let path = dir.to_path_buf();
        let started = std::time::Instant::now();
        let entries = tokio::task::spawn_blocking(move || user::adopt(&path, owner))
            .await
            .map_err(|e| SandboxError::Interrupted(e.to_string()))??;
        tracing::debug!(workspace = %dir.display(), entries, elapsed = ?started.elapsed(),
            "workspace handed to the stage user");
        Ok(())
    }

    /// Sets the variables that go with the stage user. HOME becomes the workspace (ours, e.g.
    /// /root, is neither writable nor any of its business); the pipeline's `env`, applied
    /// after, may still set another. (Not `CommandExt::uid`: the spawning thread already is
    /// that user, and a uid on the command would make std fork the whole daemon.)
    pub(crate) fn configure(&self, command: &mut Command, workspace: &Path) {
        if let Mode::User(u, _) = &*self.mode {
            command
                .env("HOME", workspace)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
    }

    pub(crate) async fn spawn(&self, command: Command) -> std::io::Result<Child> {
        match &*self.mode {
            Mode::Landlock(spawner) | Mode::User(_, spawner) => spawner.spawn(command).await,
            Mode::Unconfined => {
                let mut command = command;
                command.spawn()
            }
        }
    }
}

/// Makes this process non-dumpable: `/proc/PID/environ`, `/proc/PID/mem` and ptrace are then
/// closed to processes of the same uid (stages, when we are not root). Call it first thing.
pub fn harden_process() -> Result<(), nix::Error> {
    nix::sys::prctl::set_dumpable(false)
}
