//! An executor without processes, for testing the scheduler: each stage does what the test
//! scripted for it (as Woodpecker's dummy backend does), and every attempt it is given is
//! recorded, so that a test waits on "attempt 2 of `build` started" rather than on time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deploylite_runner::{
    AttemptOutcome, BoxFuture, CancellationToken, Executor, LogStream, StageJob, StageLog,
};
use tokio::sync::{watch, Notify};

use crate::wait::{TimedOut, DEADLINE};

/// What one attempt of a stage does.
#[derive(Debug, Clone)]
pub enum Script {
    /// Prints a line and succeeds.
    Succeed,
    /// Fails as if step 0 exited with this code.
    Fail(i32),
    /// Runs until cancelled (then `Cancelled`), like a `sleep infinity`.
    Hang,
    /// Runs until the test calls [`Gate::open`], then succeeds (or until cancelled).
    Wait(Gate),
    /// The executor could not run the stage at all.
    Error(String),
}

/// A door a [`Script::Wait`] attempt waits behind.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<GateInner>);

#[derive(Debug, Default)]
struct GateInner {
    open: Mutex<bool>,
    opened: Notify,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Lets every attempt waiting behind this gate (now or later) succeed.
    pub fn open(&self) {
        *lock(&self.0.open) = true;
        self.0.opened.notify_waiters();
    }

    async fn passed(&self) {
        loop {
            let opened = self.0.opened.notified();
            if *lock(&self.0.open) {
                return;
            }
            opened.await;
        }
    }
}

/// One attempt the executor was given, and how it ended (None while it runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub run_id: i64,
    pub stage: String,
    pub attempt: u32,
    pub outcome: Option<AttemptOutcome>,
}

#[derive(Default)]
struct State {
    /// Per stage name: the scripts of its attempts in order; the last one repeats.
    scripts: HashMap<String, Vec<Script>>,
    attempts: Vec<Attempt>,
    running: usize,
    peak_running: usize,
}

/// See the module's documentation. Stages without a script succeed.
pub struct FakeExecutor {
    state: Mutex<State>,
    /// Bumped on every start and end: what waiters wait on.
    changed: watch::Sender<u64>,
}

impl Default for FakeExecutor {
    fn default() -> Self {
        FakeExecutor {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeExecutor {
    pub fn new() -> Arc<FakeExecutor> {
        Arc::new(FakeExecutor::default())
    }

    /// Scripts the attempts of every stage called `stage`: the first attempt does
    /// `attempts[0]`, the second `attempts[1]`, and so on; later ones repeat the last.
    pub fn script(&self, stage: &str, attempts: impl IntoIterator<Item = Script>) -> &Self {
        let attempts: Vec<Script> = attempts.into_iter().collect();
        assert!(
            !attempts.is_empty(),
            "a script of no attempts for `{stage}`"
        );
        lock(&self.state)
            .scripts
            .insert(stage.to_string(), attempts);
        self
    }

    /// Every attempt given so far, in the order they started.
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.state).attempts.clone()
    }

    /// The most attempts that ran at the same time.
    pub fn peak_running(&self) -> usize {
        lock(&self.state).peak_running
    }

    /// Waits until the attempts satisfy `pred` (re-checked on every start and end, no
    /// polling); the attempts then.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&[Attempt]) -> bool) -> Vec<Attempt> {
        match self.try_wait_until(DEADLINE, &pred).await {
            Ok(attempts) => attempts,
            Err(timed_out) => panic!(
                "{timed_out} waiting for {what}; attempts: {:#?}",
                self.attempts()
            ),
        }
    }

    /// [`FakeExecutor::wait_until`] that returns the timeout instead of panicking.
    pub async fn try_wait_until(
        &self,
        within: Duration,
        pred: &impl Fn(&[Attempt]) -> bool,
    ) -> Result<Vec<Attempt>, TimedOut> {
        let mut changes = self.changed.subscribe();
        let check = async {
            loop {
                changes.borrow_and_update();
                let attempts = self.attempts();
                if pred(&attempts) {
                    return attempts;
                }
                if changes.changed().await.is_err() {
                    // The sender lives as long as self: unreachable, but never spin.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(within, check)
            .await
            .map_err(|_| TimedOut(within))
    }

    /// Waits until attempt `attempt` of stage `stage` has started; its run's id.
    pub async fn wait_started(&self, stage: &str, attempt: u32) -> i64 {
        let attempts = self
            .wait_until(&format!("attempt {attempt} of `{stage}` to start"), |a| {
                a.iter().any(|a| a.stage == stage && a.attempt == attempt)
            })
            .await;
        attempts
            .iter()
            .find(|a| a.stage == stage && a.attempt == attempt)
            .map(|a| a.run_id)
            .unwrap_or_default()
    }

    fn started(&self, job: &StageJob) -> Script {
        let mut state = lock(&self.state);
        let script = state
            .scripts
            .get(job.stage.as_str())
            .and_then(|s| {
                let index =
                    usize::try_from(u32::from(job.attempt).saturating_sub(1)).unwrap_or(usize::MAX);
                s.get(index).or(s.last())
            })
            .cloned()
            .unwrap_or(Script::Succeed);
        state.attempts.push(Attempt {
            run_id: i64::from(job.run_id),
            stage: job.stage.to_string(),
            attempt: u32::from(job.attempt),
            outcome: None,
        });
        state.running += 1;
        state.peak_running = state.peak_running.max(state.running);
        drop(state);
        self.changed.send_modify(|n| *n += 1);
        script
    }

    fn ended(&self, job: &StageJob, outcome: &AttemptOutcome) {
        let mut state = lock(&self.state);
        state.running = state.running.saturating_sub(1);
        if let Some(a) = state.attempts.iter_mut().rev().find(|a| {
            a.run_id == i64::from(job.run_id)
                && a.stage == job.stage.as_str()
                && a.attempt == u32::from(job.attempt)
        }) {
            a.outcome = Some(outcome.clone());
        }
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }
}

impl Executor for FakeExecutor {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn execute<'a>(
        &'a self,
        job: StageJob,
        log: &'a mut StageLog,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, AttemptOutcome> {
        Box::pin(async move {
            let script = self.started(&job);
            let line = format!("fake {} attempt {}: {script:?}", job.stage, job.attempt);
            log.line(LogStream::Stdout, &line).await;
            let outcome = match script {
                Script::Succeed => AttemptOutcome::Succeeded,
                Script::Fail(code) => AttemptOutcome::Failed {
                    step: 0,
                    exit_code: Some(code),
                },
                Script::Error(message) => AttemptOutcome::Error(message),
                Script::Hang => {
                    cancel.cancelled().await;
                    AttemptOutcome::Cancelled
                }
                Script::Wait(gate) => tokio::select! {
                    _ = gate.passed() => AttemptOutcome::Succeeded,
                    _ = cancel.cancelled() => AttemptOutcome::Cancelled,
                },
            };
            log.flush().await;
            self.ended(&job, &outcome);
            outcome
        })
    }
}
