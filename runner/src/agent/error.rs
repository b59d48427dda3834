//! What stops the agent, and what goes wrong with one lease. The agent stops only on what
//! retrying cannot mend (no credential, a refused one, a setup the server refuses); a lease's
//! failure becomes its attempt's `error` outcome.

use std::path::PathBuf;

use reqwest::StatusCode;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sweep for leftover stage processes failed")]
    Sweep(#[source] tokio::task::JoinError),
    #[error("--reregister needs a registration token: give it with --token-file or DEPLOYLITE_RUNNER_TOKEN")]
    ReregisterWithoutToken,
    #[error("runner `{name}` is not registered yet ({} does not exist): give a registration token with --token-file or DEPLOYLITE_RUNNER_TOKEN", path.display())]
    NotRegistered { name: String, path: PathBuf },
    #[error("cannot reach the server at {base}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registration refused ({status}): {reason}")]
    RegistrationRefused { status: StatusCode, reason: String },
    #[error("unexpected registration answer")]
    RegistrationAnswer(#[source] reqwest::Error),
    #[error("the server refused this runner's poll: {0}")]
    PollRefused(String),
    /// The stored credential is no longer good; the message says what to do.
    #[error("the server at {base} refused this runner's credential ({reason}), read from {}. If the \
         server's data was reset, register again: start the runner with --reregister and a \
         registration token (--token-file FILE or DEPLOYLITE_RUNNER_TOKEN); that file is \
         replaced. A revoked runner cannot register again under its name: use another --name", path.display())]
    StaleCredential {
        base: String,
        path: PathBuf,
        reason: String,
    },
}

/// Why one poll brought nothing: retried, unless the server refused us.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    #[error("poll")]
    Send(#[source] reqwest::Error),
    /// 401: the credential (the text is the server's reason).
    #[error("{0}")]
    Unauthorized(String),
    /// 400/409: what this runner offers (e.g. labels other than the registered ones).
    #[error("poll refused ({status}): {reason}")]
    Refused { status: StatusCode, reason: String },
    #[error("poll answered {0}")]
    Status(StatusCode),
    #[error("unexpected poll answer")]
    Answer(#[source] reqwest::Error),
}

/// Why a lease's workspace could not be filled: the attempt ends in `error`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error("cannot make the workspace")]
    Workspace(#[source] std::io::Error),
    #[error("downloading the commit")]
    Download(#[source] reqwest::Error),
    #[error("the server answered {0} for the commit's archive")]
    Status(StatusCode),
    #[error("cannot run tar")]
    Spawn(#[source] std::io::Error),
    #[error("unpacking the commit")]
    Unpack(#[source] std::io::Error),
    #[error("tar failed: {0}")]
    Tar(String),
    #[error("handing the workspace to the stage user")]
    Adopt(#[source] crate::sandbox::SandboxError),
}

/// A name that cannot be one segment of a URL path.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SegmentError(pub(crate) String);
