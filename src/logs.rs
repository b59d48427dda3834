//! `deploylite logs RUN [STAGE] [-f] [--attempt N]`: a run's stage logs from a daemon, and
//! following a live one until its attempt ends (its closing line, or the stage's final status
//! for an attempt that ended without one).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use deploylite_model::{Attempt, RunId};
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_runner::outcome::parse_closing_line;
use deploylite_runner::strip_ansi;
use deploylite_server::{RunView, StageView};

use crate::client::Client;
use crate::text::{closed_pipe, count, stdout_colour, write_out};

pub struct LogsRequest {
    pub run: RunId,
    pub stage: Option<String>,
    pub follow: bool,
    pub attempt: Option<Attempt>,
}

/// First wait between two polls of a live log, and the longest once nothing new comes.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(2);

pub async fn logs(client: &Client, request: LogsRequest) -> Result<ExitCode> {
    match print_logs(client, &request).await {
        // `deploylite logs 3 | head`: the reader has what it wanted.
        Err(error) if closed_pipe(&error) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

async fn print_logs(client: &Client, request: &LogsRequest) -> Result<ExitCode> {
    let run: RunView = client
        .get_json(&format!("/api/v1/runs/{}", request.run))
        .await?;
    let stages = dag_order(run.stages.as_deref().unwrap_or_default());
    let selected: Vec<&StageView> = match &request.stage {
        Some(name) => match stages.iter().find(|s| &s.name == name) {
            Some(stage) => vec![*stage],
            None => bail!(
                "run #{} has no stage `{name}`; its stages: {}",
                run.id,
                names(&stages)
            ),
        },
        None => stages.clone(),
    };
    if selected.is_empty() {
        eprintln!(
            "run #{} has no stages: it is {}{}",
            run.id,
            run.status,
            run.pending_reason
                .as_deref()
                .map(|r| format!(" ({})", r.strip_prefix("skipped: ").unwrap_or(r)))
                .unwrap_or_default()
        );
        return Ok(exit_code(
            run.status == RunStatus::Success || !request.follow,
        ));
    }
    if request.attempt.is_some() && selected.len() > 1 {
        bail!(
            "--attempt needs a STAGE: run #{} has {} ({})",
            run.id,
            count(selected.len(), "stage"),
            names(&stages)
        );
    }
    let mut out = Printer::new(selected.len() > 1);
    if !request.follow {
        for stage in &selected {
            let attempt = request.attempt.unwrap_or(stage.attempt);
            out.header(stage, attempt)?;
            if attempt > Attempt::NONE {
                let log = fetch(client, run.id, &stage.name, attempt, 0).await?;
                out.write(&String::from_utf8_lossy(&log))?;
            } else if !out.headers {
                eprintln!("{}", not_run(stage));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let follower = Follower {
        client,
        run: run.id,
    };
    let mut every_stage_succeeded = true;
    for stage in &selected {
        let succeeded = follower
            .follow_stage(&stage.name, request.attempt, &mut out)
            .await?;
        every_stage_succeeded &= succeeded;
    }
    if request.stage.is_some() || request.attempt.is_some() {
        return Ok(exit_code(every_stage_succeeded));
    }
    // The run's outcome, as `deploylite run` gives it: every stage may be final a moment
    // before the run is.
    let mut pause = Backoff::new();
    loop {
        let run: RunView = client
            .get_json(&format!("/api/v1/runs/{}", request.run))
            .await?;
        if run.status.is_final() {
            return Ok(exit_code(run.status == RunStatus::Success));
        }
        tokio::time::sleep(pause.idle()).await;
    }
}

fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn names(stages: &[&StageView]) -> String {
    stages
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stages in an order that puts every stage after the stages it needs (the file's order
/// among stages that are ready together).
fn dag_order(stages: &[StageView]) -> Vec<&StageView> {
    let mut ordered: Vec<&StageView> = Vec::with_capacity(stages.len());
    let mut left: Vec<&StageView> = stages.iter().collect();
    while !left.is_empty() {
        let ready = left.iter().position(|s| {
            s.needs.iter().all(|n| {
                ordered.iter().any(|o| &o.name == n) || !stages.iter().any(|s| &s.name == n)
            })
        });
        // A cycle cannot be recorded; should one be, the rest keeps the file's order.
        ordered.push(left.remove(ready.unwrap_or(0)));
    }
    ordered
}

/// `stage `deploy` did not run: skipped (needs `test`, which failed)`.
fn not_run(stage: &StageView) -> String {
    format!(
        "stage `{}` has not run: {}{}",
        stage.name,
        stage.status,
        stage
            .pending_reason
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(|r| format!(" ({})", r.strip_prefix("skipped: ").unwrap_or(r)))
            .unwrap_or_default()
    )
}

/// The bytes of a log from `offset` on.
async fn fetch(
    client: &Client,
    run: RunId,
    stage: &str,
    attempt: Attempt,
    offset: u64,
) -> Result<Vec<u8>> {
    let response = client
        .get(
            &format!("/api/v1/runs/{run}/stages/{stage}/log"),
            &[
                ("attempt", attempt.to_string()),
                ("offset", offset.to_string()),
            ],
        )
        .await?;
    Ok(response.bytes().await?.to_vec())
}

/// What goes to stdout: log text (without ANSI colours when stdout is not a terminal or
/// NO_COLOR is set), and a header per stage when there are several.
struct Printer {
    headers: bool,
    colour: bool,
    sections: usize,
}

impl Printer {
    fn new(headers: bool) -> Printer {
        Printer {
            headers,
            colour: stdout_colour(),
            sections: 0,
        }
    }

    /// `==> stage build, attempt 2 <==` (as `tail` heads each file), or, for a stage that has
    /// not run, why.
    fn header(&mut self, stage: &StageView, attempt: Attempt) -> Result<()> {
        if !self.headers {
            return Ok(());
        }
        let gap = if self.sections > 0 { "\n" } else { "" };
        self.sections += 1;
        if attempt > Attempt::NONE {
            write_out(&format!(
                "{gap}==> stage {}, attempt {attempt} <==\n",
                stage.name
            ))?;
        } else {
            write_out(&format!("{gap}==> {} <==\n", not_run(stage)))?;
        }
        Ok(())
    }

    fn write(&mut self, text: &str) -> Result<()> {
        if self.colour {
            write_out(text)?;
        } else {
            write_out(&strip_ansi(text))?;
        }
        Ok(())
    }
}

/// Polls a live log: quickly while it grows, slower and slower while it does not.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: POLL_FIRST }
    }

    fn grew(&mut self) -> Duration {
        self.next = POLL_FIRST;
        POLL_FIRST
    }

    fn idle(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(POLL_MAX);
        now
    }
}

struct Follower<'a> {
    client: &'a Client,
    run: RunId,
}

impl Follower<'_> {
    async fn stage(&self, name: &str) -> Result<StageView> {
        let run: RunView = self
            .client
            .get_json(&format!("/api/v1/runs/{}", self.run))
            .await?;
        match run
            .stages
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.name == name)
        {
            Some(stage) => Ok(stage),
            None => bail!("run #{} has no stage `{name}`", self.run),
        }
    }

    async fn wait_stage(
        &self,
        name: &str,
        until: impl Fn(&StageView) -> bool,
    ) -> Result<StageView> {
        let mut pause = Backoff::new();
        loop {
            let stage = self.stage(name).await?;
            if until(&stage) {
                return Ok(stage);
            }
            tokio::time::sleep(pause.idle()).await;
        }
    }

    /// Prints the stage's log as it grows, attempt after attempt (or only `only_attempt`),
    /// until it ends; true when it succeeded.
    async fn follow_stage(
        &self,
        name: &str,
        only_attempt: Option<Attempt>,
        out: &mut Printer,
    ) -> Result<bool> {
        let stage = self
            .wait_stage(name, |s| s.attempt > Attempt::NONE || s.status.is_final())
            .await?;
        let mut attempt = only_attempt.unwrap_or(stage.attempt);
        out.header(&stage, attempt)?;
        if attempt == Attempt::NONE {
            if !out.headers {
                eprintln!("{}", not_run(&stage));
            }
            return Ok(stage.status == StageStatus::Success);
        }
        loop {
            let ending = self.follow_attempt(name, attempt, out).await?;
            if only_attempt.is_some() {
                return Ok(match ending {
                    Some(how) => how == "success",
                    None => {
                        let stage = self.stage(name).await?;
                        stage.attempt == attempt && stage.status == StageStatus::Success
                    }
                });
            }
            // A retry queues the next attempt; anything else makes the stage final.
            let stage = self
                .wait_stage(name, |s| s.attempt > attempt || s.status.is_final())
                .await?;
            if stage.attempt > attempt {
                attempt = attempt.next();
                continue;
            }
            return Ok(stage.status == StageStatus::Success);
        }
    }

    /// Prints one attempt's log until its closing line (Some(how it ended)), or until the
    /// stage moved on without one (None: a daemon killed mid-attempt writes none).
    async fn follow_attempt(
        &self,
        name: &str,
        attempt: Attempt,
        out: &mut Printer,
    ) -> Result<Option<String>> {
        let mut offset = 0u64;
        let mut partial: Vec<u8> = Vec::new();
        let mut pause = Backoff::new();
        let mut last_look = false;
        loop {
            let bytes = fetch(self.client, self.run, name, attempt, offset).await?;
            offset += bytes.len() as u64;
            partial.extend_from_slice(&bytes);
            let mut ending = None;
            while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some((closed, how)) = parse_closing_line(&line) {
                    if closed == attempt {
                        ending = Some(how.to_string());
                    }
                }
                out.write(&line)?;
            }
            if ending.is_some() || last_look {
                if !partial.is_empty() {
                    out.write(&format!("{}\n", String::from_utf8_lossy(&partial)))?;
                }
                return Ok(ending);
            }
            let wait = if bytes.is_empty() {
                let stage = self.stage(name).await?;
                if stage.attempt > attempt || stage.status.is_final() {
                    // Over without a closing line: read what it wrote before it ended.
                    last_look = true;
                    continue;
                }
                pause.idle()
            } else {
                pause.grew()
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, needs: &[&str]) -> StageView {
        StageView {
            name: name.into(),
            status: StageStatus::Queued,
            attempt: Attempt::NONE,
            needs: needs.iter().map(|n| n.to_string()).collect(),
            pending_reason: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
        }
    }

    #[test]
    fn stages_come_after_what_they_need() {
        let stages = [
            stage("deploy", &["test", "lint"]),
            stage("test", &["build"]),
            stage("build", &[]),
            stage("lint", &[]),
        ];
        let order: Vec<&str> = dag_order(&stages).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["build", "test", "lint", "deploy"]);
    }

    #[test]
    fn polling_backs_off_while_nothing_comes() {
        let mut b = Backoff::new();
        assert_eq!(b.idle(), Duration::from_millis(100));
        assert_eq!(b.idle(), Duration::from_millis(200));
        for _ in 0..10 {
            b.idle();
        }
        assert_eq!(b.idle(), POLL_MAX);
        assert_eq!(b.grew(), POLL_FIRST);
        assert_eq!(b.idle(), POLL_FIRST);
    }
}
