//! Waiting in tests. A test never sleeps a fixed time and hopes: it waits until a condition
//! holds, and fails loudly when it does not within a deadline.
//!
//! The best waits end on a signal: a process' exit ([`pid_exit`], through a pidfd), a child's
//! exit ([`child_exit`]), an event the daemon sends. Where only a state can be read (a file, an
//! HTTP answer), [`until`] re-reads it with a short, growing backoff, and returns as soon as it
//! holds; the backoff lives here, once, instead of in every test.
//!
//! "Nothing happened" is never a wait: a test first waits for a positive signal that whatever
//! could have happened did run (a poll completed, a pass counted), then asserts the absence.

use std::fmt::Display;
use std::future::Future;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails. Generous: CI machines are slow.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The first re-check comes quickly (most waits are short); later ones back off to this, so a
/// long wait does not hammer what it reads.
const MAX_BACKOFF: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// A wait that did not end within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

/// The backoff between re-reads of a state: doubling from a few milliseconds, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// The delay before the next re-read.
    pub fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        now
    }
}

/// Re-reads `probe` until it yields `Some`, for at most `within`.
pub async fn try_until<T, F, Fut>(within: Duration, mut probe: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut backoff = Backoff::default();
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut(within));
        }
        tokio::time::sleep(backoff.step().min(deadline - now)).await;
    }
}

/// [`try_until`] that also re-reads `probe` at once whenever `signal` changes (an event of the
/// thing waited on), so that the wait ends on the event rather than on the next re-read. The
/// backoff stays, for the changes no event announces.
pub async fn try_until_signalled<T, S, F, Fut>(
    within: Duration,
    signal: &mut tokio::sync::watch::Receiver<S>,
    mut probe: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut backoff = Backoff::default();
    let mut signalled = true;
    loop {
        // Marked seen before the read: a change during the read wakes the next wait.
        signal.borrow_and_update();
        if let Some(value) = probe().await {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut(within));
        }
        let pause = backoff.step().min(deadline - now);
        if signalled {
            tokio::select! {
                changed = signal.changed() => signalled = changed.is_ok(),
                _ = tokio::time::sleep(pause) => {}
            }
        } else {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Re-reads `probe` until it yields `Some`; panics naming `what` after [`DEADLINE`].
pub async fn until<T, F, Fut>(what: impl Display, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until_within(DEADLINE, what, probe).await
}

/// [`until`] with its own deadline.
pub async fn until_within<T, F, Fut>(within: Duration, what: impl Display, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_until(within, probe).await {
        Ok(value) => value,
        Err(timed_out) => panic!("{timed_out} waiting for {what}"),
    }
}

/// [`until`] for a condition: re-checks `check` until it is true.
pub async fn until_true<F, Fut>(what: impl Display, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until(what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// The blocking [`try_until`], for tests and helpers without a runtime.
pub fn try_until_blocking<T>(
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let deadline = Instant::now() + within;
    let mut backoff = Backoff::default();
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut(within));
        }
        std::thread::sleep(backoff.step().min(deadline - now));
    }
}

/// The blocking [`until_within`].
pub fn until_blocking<T>(
    within: Duration,
    what: impl Display,
    probe: impl FnMut() -> Option<T>,
) -> T {
    match try_until_blocking(within, probe) {
        Ok(value) => value,
        Err(timed_out) => panic!("{timed_out} waiting for {what}"),
    }
}

/// Whether process `pid` (any process, not only a child) exits within `within`: blocks on a
/// pidfd, which the kernel makes readable when the process ends, so this returns at once on
/// the exit instead of sampling /proc. A zombie counts as exited.
// Test support only: pidfd_open and poll have no safe wrapper in the crates we use; each
// call below states why it is sound.
#[allow(unsafe_code)]
pub fn pid_exit(pid: i32, within: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => true,
            // Kernels before 5.3 have no pidfd: read /proc instead.
            _ => try_until_blocking(within, || (!pid_alive(pid)).then_some(())).is_ok(),
        };
    }
    let fd = fd as libc::c_int;
    let deadline = Instant::now() + within;
    let exited = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, its count, a timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready > 0 {
            break true;
        }
        let interrupted =
            ready < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if !interrupted || left.is_zero() {
            break false;
        }
    };
    // SAFETY: the descriptor is ours and closed once.
    unsafe { libc::close(fd) };
    exited || !pid_alive(pid)
}

/// Whether `pid` is a live process (not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
    {
        Some(state) => state != "Z" && state != "X",
        None => false,
    }
}

/// Waits for every one of `pids` to exit; the ones still alive after `within`.
pub fn pids_exit(pids: &[i32], within: Duration) -> Vec<i32> {
    let deadline = Instant::now() + within;
    pids.iter()
        .copied()
        .filter(|&pid| !pid_exit(pid, deadline.saturating_duration_since(Instant::now())))
        .collect()
}

/// The exit status of `child` if it exits within `within` (it is reaped); None otherwise (it
/// still runs). Ends on the exit itself, through a pidfd.
pub fn child_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = i32::try_from(child.id()).ok()?;
    pid_exit(pid, within);
    child.try_wait().ok().flatten()
}

/// [`pid_exit`] for async code: the blocking wait runs off the runtime's threads, so that a
/// fake server on the same runtime keeps answering the process while it shuts down.
pub async fn pid_exit_async(pid: i32, within: Duration) -> bool {
    tokio::task::spawn_blocking(move || pid_exit(pid, within))
        .await
        .unwrap_or(false)
}

/// [`child_exit`] for async code.
pub async fn child_exit_async(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = i32::try_from(child.id()).ok()?;
    pid_exit_async(pid, within).await;
    child.try_wait().ok().flatten()
}

/// Why [`printed`] gave up: the writer exited, or the deadline passed. Each carries the text
/// read last.
#[derive(Debug)]
pub enum Unprinted {
    Exited(ExitStatus, String),
    TimedOut(TimedOut, String),
}

impl Display for Unprinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unprinted::Exited(status, text) => {
                write!(f, "the process exited with {status}:\n{text}")
            }
            Unprinted::TimedOut(timed_out, text) => write!(f, "{timed_out}:\n{text}"),
        }
    }
}

/// Waits until what `child` wrote (read by `text`, e.g. its log file) contains `needle`; that
/// text. Ends early, with what it printed, when the child exits without printing it.
pub fn printed(
    child: &mut Child,
    needle: &str,
    within: Duration,
    mut text: impl FnMut() -> String,
) -> Result<String, Unprinted> {
    let mut last = String::new();
    let mut exited = None;
    let found = try_until_blocking(within, || {
        last = text();
        if last.contains(needle) {
            return Some(true);
        }
        exited = child.try_wait().ok().flatten();
        // What it wrote before exiting may have landed after the read above.
        exited.map(|_| {
            last = text();
            last.contains(needle)
        })
    });
    match (found, exited) {
        (Ok(true), _) => Ok(last),
        (Ok(false), Some(status)) => Err(Unprinted::Exited(status, last)),
        (Ok(false), None) => unreachable!("false only once the child exited"),
        (Err(timed_out), _) => Err(Unprinted::TimedOut(timed_out, last)),
    }
}
