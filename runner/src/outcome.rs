//! What an attempt's outcome means for its stage: retried, failed for good (rollback), or done.
//! One pure function, used by the daemon for its own attempts and by remote runners (which run
//! the rollback themselves), so both decide identically.

use std::time::Duration;

use deploylite_model::Attempt;
use deploylite_pipeline::duration::format_duration;
use deploylite_pipeline::Stage;

use crate::log::StageLog;
use crate::AttemptOutcome;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Cancelled,
    /// Failed, and another attempt follows after the base delay (jitter is the caller's).
    Retry {
        delay: Duration,
    },
    /// Failed for good: the stage's rollback steps run, then the stage fails.
    Failed,
}

/// `failures_before`: failed attempts before this one. `cancelled`: the run is being cancelled
/// (a failure then never retries).
pub fn verdict(
    stage: &Stage,
    failures_before: u32,
    outcome: &AttemptOutcome,
    cancelled: bool,
) -> Verdict {
    match outcome {
        AttemptOutcome::Succeeded => Verdict::Succeeded,
        // A handed-back attempt was stopped, not failed: neither retried nor rolled back here
        // (the scheduler runs the stage again as a new attempt).
        AttemptOutcome::Cancelled | AttemptOutcome::HandedBack => Verdict::Cancelled,
        AttemptOutcome::Failed { .. } | AttemptOutcome::TimedOut | AttemptOutcome::Error(_) => {
            let failures = failures_before.saturating_add(1);
            if !cancelled && stage.retry.should_retry(failures, outcome.exit_code()) {
                Verdict::Retry {
                    delay: stage.retry.base_delay(failures),
                }
            } else {
                Verdict::Failed
            }
        }
    }
}

/// `step N exited with C`, or `step N was killed by a signal` (N counted from 1).
fn failed_step(step: usize, exit_code: Option<i32>) -> String {
    match exit_code {
        Some(c) => format!("step {} exited with {c}", step + 1),
        None => format!("step {} was killed by a signal", step + 1),
    }
}

/// A step that did not exit with 0: the executors log it this way and end the attempt with it.
pub(crate) async fn step_failed(
    log: &mut StageLog,
    step: usize,
    exit_code: Option<i32>,
) -> AttemptOutcome {
    log.system(&failed_step(step, exit_code)).await;
    AttemptOutcome::Failed { step, exit_code }
}

/// A short human note on how an attempt ended (None for a success).
pub fn describe(stage: &Stage, outcome: &AttemptOutcome) -> Option<String> {
    match outcome {
        AttemptOutcome::Succeeded => None,
        AttemptOutcome::Failed { step, exit_code } => Some(failed_step(*step, *exit_code)),
        AttemptOutcome::TimedOut => Some(format!(
            "timed out after {}",
            stage.timeout.map(format_duration).unwrap_or_default()
        )),
        AttemptOutcome::Cancelled => Some("cancelled".into()),
        AttemptOutcome::Error(message) => Some(message.clone()),
        AttemptOutcome::HandedBack => Some("handed back by its runner".into()),
    }
}

/// How an attempt ended, as its closing line says it: `success`, `cancelled`,
/// `interrupted (…)` for an attempt handed back, or `failed (<what [`describe`] says>)`.
pub fn ending(stage: &Stage, outcome: &AttemptOutcome) -> String {
    match describe(stage, outcome) {
        None => "success".into(),
        Some(note) if matches!(outcome, AttemptOutcome::Cancelled) => note,
        Some(note) if matches!(outcome, AttemptOutcome::HandedBack) => {
            format!("interrupted ({note})")
        }
        Some(note) => format!("failed ({note})"),
    }
}

/// The last line of every attempt's log, whatever the outcome (`attempt 2 ended: success`,
/// `attempt 1 ended: failed (step 1 exited with 75); retry 1 of 2 in 1s`): someone reading the
/// log while it grows knows from it that the attempt is over.
pub fn closing_line(attempt: Attempt, ending: &str) -> String {
    format!("attempt {attempt} ended: {ending}")
}

/// The attempt a log line closes and how it ended (`success`, `failed (...)`...), when the line
/// (as stored: `<time> --- attempt N ended: ...`) is a closing line. Only DeployLite's own lines
/// count: a stage that prints the same words does not end its attempt.
pub fn parse_closing_line(record: &str) -> Option<(Attempt, &str)> {
    let (stream, text) = crate::log::parse_line(record)?;
    if stream != crate::log::LogStream::System {
        return None;
    }
    let (attempt, ending) = text.strip_prefix("attempt ")?.split_once(" ended: ")?;
    Some((attempt.parse().ok()?, ending))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(retry: &str) -> Stage {
        let yaml = format!("name: p\nstages:\n  s:\n    retry: {retry}\n    timeout: 5s\n    steps: [{{ run: x }}]\n");
        let pipeline = deploylite_pipeline::parse_pipeline("p.yaml", &yaml).expect("valid");
        pipeline.stages.into_iter().next().expect("one stage")
    }

    #[test]
    fn retries_follow_the_policy() {
        let s = stage("{ max: 2, backoff: 1s, exit_codes: [75] }");
        let failed = |c| AttemptOutcome::Failed {
            step: 0,
            exit_code: Some(c),
        };
        assert_eq!(
            verdict(&s, 0, &failed(75), false),
            Verdict::Retry {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            verdict(&s, 1, &failed(75), false),
            Verdict::Retry {
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(
            verdict(&s, 2, &failed(75), false),
            Verdict::Failed,
            "max reached"
        );
        assert_eq!(
            verdict(&s, 0, &failed(1), false),
            Verdict::Failed,
            "exit code not listed"
        );
        assert_eq!(
            verdict(&s, 0, &AttemptOutcome::TimedOut, false),
            Verdict::Failed,
            "no exit code under a filter"
        );
        assert_eq!(
            verdict(&s, 0, &failed(75), true),
            Verdict::Failed,
            "never retried while cancelling"
        );
        assert_eq!(
            verdict(&s, 0, &AttemptOutcome::Succeeded, false),
            Verdict::Succeeded
        );
        let any = stage("2");
        assert!(matches!(
            verdict(&any, 0, &AttemptOutcome::TimedOut, false),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn notes() {
        let s = stage("0");
        assert_eq!(
            describe(&s, &AttemptOutcome::TimedOut).as_deref(),
            Some("timed out after 5s")
        );
        assert_eq!(
            describe(
                &s,
                &AttemptOutcome::Failed {
                    step: 1,
                    exit_code: Some(3)
                }
            )
            .as_deref(),
            Some("step 2 exited with 3")
        );
        assert_eq!(describe(&s, &AttemptOutcome::Succeeded), None);
    }

    #[test]
    fn closing_lines() {
        let s = stage("0");
        let failed = AttemptOutcome::Failed {
            step: 0,
            exit_code: Some(4),
        };
        assert_eq!(ending(&s, &AttemptOutcome::Succeeded), "success");
        assert_eq!(ending(&s, &AttemptOutcome::Cancelled), "cancelled");
        assert_eq!(
            ending(&s, &AttemptOutcome::HandedBack),
            "interrupted (handed back by its runner)"
        );
        assert_eq!(ending(&s, &failed), "failed (step 1 exited with 4)");
        assert_eq!(
            ending(&s, &AttemptOutcome::TimedOut),
            "failed (timed out after 5s)"
        );
        let line = crate::log::format_line(
            crate::log::LogStream::System,
            &closing_line(Attempt::new(3), "failed (step 1 exited with 4)"),
        );
        assert_eq!(
            parse_closing_line(line.trim_end()),
            Some((Attempt::new(3), "failed (step 1 exited with 4)"))
        );
        let printed = crate::log::format_line(
            crate::log::LogStream::Stdout,
            &closing_line(Attempt::FIRST, "success"),
        );
        assert_eq!(parse_closing_line(&printed), None, "a stage's own output");
        assert_eq!(
            parse_closing_line("2026-11-26T23:58:28.869Z --- step 1 exited with 4"),
            None
        );
    }
}
