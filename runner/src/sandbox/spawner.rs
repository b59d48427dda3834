//! One thread that spawns every stage process of a sandbox, after confining itself (Landlock,
//! or a credential drop when we are root). A child inherits the Landlock domain and the
//! credentials of the thread that started it, not of the whole process, so the rest of the
//! daemon stays as it is, and no `pre_exec` is needed: std keeps its fast `posix_spawn` path
//! (a `fork` of the whole daemon, which `CommandExt::uid` would force, costs milliseconds per
//! stage: docs/performance.md#stage-isolation).

use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::SandboxError;

struct Request {
    command: Command,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

pub(super) struct Spawner {
    requests: mpsc::Sender<Request>,
    status: String,
}

impl Spawner {
    /// Starts the thread, which runs `confine` first: Ok(Some(status)) when it is confined,
    /// Ok(None) when there was nothing to apply (the thread then ends: no spawner).
    pub(super) async fn start(
        confine: impl FnOnce() -> Result<Option<String>, SandboxError> + Send + 'static,
    ) -> Result<Option<Spawner>, SandboxError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| SandboxError::Spawner(e.to_string()))?;
        let (requests, incoming) = mpsc::channel::<Request>();
        let (ready, confined) = oneshot::channel();
        std::thread::Builder::new()
            .name("stage-spawner".into())
            .spawn(move || {
                let status = confine();
                let serving = matches!(status, Ok(Some(_)));
                let _ = ready.send(status);
                if !serving {
                    return;
                }
                // tokio needs its runtime to register the child (its exit, its pipes).
                let _entered = runtime.enter();
                while let Ok(Request { mut command, reply }) = incoming.recv() {
                    let _ = reply.send(command.spawn());
                }
            })
            .map_err(|e| SandboxError::Spawner(format!("cannot start a thread: {e}")))?;
        let status = confined
            .await
            .map_err(|_| SandboxError::Spawner("the spawning thread died".into()))??;
        Ok(status.map(|status| Spawner { requests, status }))
    }

    pub(super) fn status(&self) -> &str {
        &self.status
    }

    pub(super) async fn spawn(&self, command: Command) -> std::io::Result<Child> {
        let gone = || std::io::Error::other("the stage-spawning thread is gone");
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { command, reply })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}
