//! What a report says, as pure functions of a run's current state: check run bodies, commit
//! status states and descriptions, the pull request comment. No IO here.

use deploylite_model::Attempt;
use deploylite_reconciler::status::{RunStatus, StageStatus};
use deploylite_reconciler::store::{RunRecord, StageRecord};
use serde_json::{json, Map, Value};

/// Finds our pull/merge request comment again when its id is not known.
pub const PR_COMMENT_MARKER: &str = "<!-- deploylite:pr-comment -->";

/// Lines of the failing stage's log quoted in a report.
pub(crate) const LOG_TAIL_LINES: usize = 20;

/// GitHub accepts at most this many annotations per check run request.
pub(crate) const ANNOTATIONS_PER_REQUEST: usize = 50;

/// GitHub caps `output.summary` at 65535 characters.
const SUMMARY_LIMIT: usize = 60_000;

/// A run as it is at send time, with what a report quotes from it.
#[derive(Debug, Clone)]
pub(crate) struct RunState {
    pub run: RunRecord,
    pub stages: Vec<StageRecord>,
    /// The first failed stage of a finished run, if any.
    pub failure: Option<Failure>,
    /// The run on this daemon (`details_url` / `target_url`), when `public_url` is configured.
    pub url: Option<String>,
    /// When the state was read (epoch ms): durations of running stages are measured to it.
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub stage: String,
    pub attempt: Attempt,
    /// The attempt's note: `step 2 exited with 1`, `timed out after 5m`, ...
    pub note: Option<String>,
    pub exit_code: Option<i64>,
    /// The last lines of the attempt's log, without our timestamp/stream prefix.
    pub log_tail: Vec<String>,
    pub timed_out: bool,
}

/// One `file:line:col: message` problem of a pipeline that did not validate (or a message
/// without a position, such as a workspace that could not be prepared).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub file: Option<String>,
    pub line: Option<u64>,
    pub col: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line, self.col) {
            (Some(file), Some(line), Some(col)) => {
                write!(f, "{file}:{line}:{col}: {}", self.message)
            }
            (Some(file), Some(line), None) => write!(f, "{file}:{line}: {}", self.message),
            (Some(file), None, _) => write!(f, "{file}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// The policy decision's deny messages, when a policy gate denied the run.
fn policy_denials(run: &RunRecord) -> Option<&[String]> {
    run.policy
        .as_ref()
        .filter(|p| p.denied() && run.status == RunStatus::Error)
        .map(|p| p.deny.as_slice())
}

fn policy_warnings(run: &RunRecord) -> &[String] {
    run.policy.as_ref().map_or(&[], |p| p.warn.as_slice())
}

/// The check run / status name of a pipeline.
pub(crate) fn context_name(pipeline: &str) -> String {
    format!("deploylite/{pipeline}")
}

pub(crate) fn problems(run: &RunRecord) -> Vec<Problem> {
    let Some(Value::Array(items)) = &run.errors else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| Problem {
            file: item
                .get("file")
                .and_then(Value::as_str)
                .filter(|f| !f.is_empty())
                .map(str::to_string),
            line: item.get("line").and_then(Value::as_u64),
            col: item.get("col").and_then(Value::as_u64),
            message: item
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| item.to_string()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Log tails

/// The last `n` lines of a stage log, readable: our `2026-11-26T23:58:28.869Z out ` prefix is
/// removed (DeployLite's own lines keep a `▸ ` marker), terminal escapes are dropped and very
/// long lines are cut.
pub(crate) fn log_tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| readable_log_line(l))
        .collect()
}

fn readable_log_line(line: &str) -> String {
    let text = match split_log_prefix(line) {
        Some(("---", text)) => format!("▸ {text}"),
        Some((_, text)) => text.to_string(),
        None => line.to_string(),
    };
    let text = strip_ansi(&text);
    truncate_chars(&text, 400)
}

/// `(stream, text)` of a log line written by `StageLog`.
fn split_log_prefix(line: &str) -> Option<(&str, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let looks_like_time =
        stamp.len() >= 20 && stamp.ends_with('Z') && stamp.as_bytes()[0].is_ascii_digit();
    if !looks_like_time {
        return None;
    }
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    matches!(stream, "out" | "err" | "---").then_some((stream, text))
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\r' || (c.is_control() && c != '\t') {
            continue;
        } else {
            out.push(c);
        }
    }
    out
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// A fenced code block that the quoted text cannot close early.
fn fenced(lines: &[String]) -> String {
    let longest = lines
        .iter()
        .map(|l| {
            let mut best = 0;
            let mut current = 0;
            for c in l.chars() {
                current = if c == '`' { current + 1 } else { 0 };
                best = best.max(current);
            }
            best
        })
        .max()
        .unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}text\n{}\n{fence}", lines.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// Shared wording

pub(crate) fn format_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 10_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

fn run_icon(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "⏳",
        RunStatus::Running => "🔄",
        RunStatus::Success => "✅",
        RunStatus::Failed => "❌",
        RunStatus::Cancelled => "⛔",
        RunStatus::Skipped => "⏭️",
        RunStatus::Error => "⚠️",
    }
}

fn stage_icon(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Queued => "⏳",
        StageStatus::Running => "🔄",
        StageStatus::Success => "✅",
        StageStatus::Failed => "❌",
        StageStatus::Cancelled => "⛔",
        StageStatus::Skipped => "⏭️",
    }
}

/// Text safe inside a markdown table cell.
fn cell(text: &str) -> String {
    truncate_chars(&text.replace(['\n', '\r'], " ").replace('|', "\\|"), 200)
}

fn stage_duration(stage: &StageRecord, now_ms: i64) -> String {
    match (stage.started_at, stage.finished_at) {
        (Some(start), Some(end)) => format_duration(end - start),
        (Some(start), None) if stage.status == StageStatus::Running => {
            format!("{} so far", format_duration(now_ms - start))
        }
        _ => "—".into(),
    }
}

fn run_duration(state: &RunState) -> Option<String> {
    match (state.run.started_at, state.run.finished_at) {
        (Some(start), Some(end)) => Some(format_duration(end - start)),
        _ => None,
    }
}

fn stages_done(stages: &[StageRecord]) -> usize {
    stages.iter().filter(|s| s.status.is_final()).count()
}

fn failure_headline(failure: &Failure) -> String {
    let what = if failure.timed_out {
        "timed out"
    } else {
        "failed"
    };
    match failure.note.as_deref() {
        Some(note) if !note.is_empty() => format!("stage `{}` {what} ({note})", failure.stage),
        _ if failure.exit_code.is_some() => {
            format!(
                "stage `{}` {what} (exit code {})",
                failure.stage,
                failure.exit_code.unwrap_or_default()
            )
        }
        _ => format!("stage `{}` {what}", failure.stage),
    }
}

/// One line saying where a run stands.
fn headline(state: &RunState) -> String {
    let run = &state.run;
    match run.status {
        RunStatus::Queued => match run.pending_reason.as_deref() {
            Some(reason) => format!("Queued: {reason}"),
            None => "Queued".into(),
        },
        RunStatus::Running => {
            format!(
                "Running: {} of {} stages done",
                stages_done(&state.stages),
                state.stages.len()
            )
        }
        RunStatus::Success => match run_duration(state) {
            Some(d) => format!("Succeeded in {d}"),
            None => "Succeeded".into(),
        },
        RunStatus::Failed => match &state.failure {
            Some(f) if f.timed_out => format!("Timed out: {}", failure_headline(f)),
            Some(f) => format!("Failed: {}", failure_headline(f)),
            None => match problems(run).first() {
                Some(p) => format!("Failed: {p}"),
                None => "Failed".into(),
            },
        },
        RunStatus::Cancelled => match run.pending_reason.as_deref() {
            Some(reason) if !reason.is_empty() => format!("Cancelled ({reason})"),
            _ => "Cancelled".into(),
        },
        RunStatus::Skipped => "Skipped: no changed file matches the pipeline's path filters".into(),
        RunStatus::Error if policy_denials(run).is_some() => {
            let denials = policy_denials(run).unwrap_or_default();
            match denials.first() {
                Some(first) if denials.len() > 1 => {
                    format!("Denied by policy ({} messages): {first}", denials.len())
                }
                Some(first) => format!("Denied by policy: {first}"),
                None => "Denied by policy".into(),
            }
        }
        RunStatus::Error => {
            let problems = problems(run);
            match problems.first() {
                Some(first) if problems.len() > 1 => {
                    format!("Invalid pipeline ({} problems): {first}", problems.len())
                }
                Some(first) => format!("Invalid pipeline: {first}"),
                None => "Invalid pipeline".into(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GitHub check runs

/// `status` and `conclusion` of a run's check run.
pub(crate) fn check_status(state: &RunState) -> (&'static str, Option<&'static str>) {
    match state.run.status {
        RunStatus::Queued => ("queued", None),
        RunStatus::Running => ("in_progress", None),
        RunStatus::Success => ("completed", Some("success")),
        RunStatus::Failed if state.failure.as_ref().is_some_and(|f| f.timed_out) => {
            ("completed", Some("timed_out"))
        }
        RunStatus::Failed | RunStatus::Error => ("completed", Some("failure")),
        RunStatus::Cancelled => ("completed", Some("cancelled")),
        RunStatus::Skipped => ("completed", Some("skipped")),
    }
}

fn check_title(state: &RunState) -> String {
    let (_, conclusion) = check_status(state);
    match (state.run.status, conclusion) {
        (RunStatus::Queued, _) if state.run.awaiting_approval => "Waiting for approval".into(),
        (RunStatus::Queued, _) => "Queued".into(),
        (RunStatus::Running, _) => {
            format!(
                "Running: {} of {} stages done",
                stages_done(&state.stages),
                state.stages.len()
            )
        }
        (RunStatus::Error, _) if policy_denials(&state.run).is_some() => {
            let n = policy_denials(&state.run).map_or(0, <[String]>::len);
            format!(
                "Denied by policy: {n} message{}",
                if n == 1 { "" } else { "s" }
            )
        }
        (RunStatus::Error, _) => {
            let n = problems(&state.run).len();
            format!(
                "Invalid pipeline: {n} problem{}",
                if n == 1 { "" } else { "s" }
            )
        }
        (RunStatus::Failed, Some("timed_out")) => match &state.failure {
            Some(f) => format!("Timed out: stage {}", f.stage),
            None => "Timed out".into(),
        },
        (RunStatus::Failed, _) => match &state.failure {
            Some(f) => format!("Failed: stage {}", f.stage),
            None => "Failed".into(),
        },
        (RunStatus::Success, _) => "Succeeded".into(),
        (RunStatus::Cancelled, _) => "Cancelled".into(),
        (RunStatus::Skipped, _) if untrusted_skip(state) => "Skipped: code from a fork".into(),
        (RunStatus::Skipped, _) => "Skipped by path filters".into(),
    }
}

/// A fork's run skipped by the repository's `untrusted: never`.
fn untrusted_skip(state: &RunState) -> bool {
    state.run.status == RunStatus::Skipped
        && state
            .run
            .pending_reason
            .as_deref()
            .is_some_and(|r| r.contains("(untrusted: never)"))
}

/// The markdown summary of a check run: where the run stands, its stages, and for a failure
/// the failing stage's log tail; for an invalid pipeline, its problems.
pub(crate) fn check_summary(state: &RunState) -> String {
    let run = &state.run;
    let mut out = format!("**{}**\n\n", cell(&headline(state)));
    out.push_str(&format!(
        "Pipeline `{}` (`{}`) at `{}`, run #{}",
        run.pipeline,
        run.pipeline_file,
        short_sha(&run.commit),
        run.id
    ));
    if run.run_attempt > 1 {
        out.push_str(&format!(" (re-run {})", run.run_attempt));
    }
    if let Some(url) = &state.url {
        out.push_str(&format!(" — [details]({url})"));
    }
    out.push_str("\n\n");
    if !state.stages.is_empty() {
        out.push_str(&stage_table(state));
        out.push('\n');
    }
    out.push_str(&policy_section(run));
    // A policy's denials are listed above; `errors` repeats them.
    let problems = if policy_denials(run).is_some() {
        Vec::new()
    } else {
        problems(run)
    };
    if !problems.is_empty() {
        out.push_str(if run.status == RunStatus::Error {
            "### Problems\n\n"
        } else {
            "### Errors\n\n"
        });
        for p in problems.iter().take(100) {
            out.push_str(&format!("- `{}`\n", cell(&p.to_string()).replace('`', "'")));
        }
        if problems.len() > 100 {
            out.push_str(&format!("- … and {} more\n", problems.len() - 100));
        }
        out.push('\n');
    }
    if let Some(f) = &state.failure {
        if !f.log_tail.is_empty() {
            out.push_str(&format!(
                "### Log of `{}` (attempt {}, last {} lines)\n\n{}\n",
                f.stage,
                f.attempt,
                f.log_tail.len(),
                fenced(&f.log_tail)
            ));
        }
    }
    if out.chars().count() > SUMMARY_LIMIT {
        out = truncate_chars(&out, SUMMARY_LIMIT);
    }
    out
}

/// What the policy gate said: the messages that denied the run, and the warnings.
fn policy_section(run: &RunRecord) -> String {
    let mut out = String::new();
    let mut list = |heading: &str, messages: &[String]| {
        if messages.is_empty() {
            return;
        }
        out.push_str(&format!("### {heading}\n\n"));
        for m in messages.iter().take(100) {
            out.push_str(&format!("- {}\n", cell(m)));
        }
        if messages.len() > 100 {
            out.push_str(&format!("- … and {} more\n", messages.len() - 100));
        }
        out.push('\n');
    };
    list("Denied by policy", policy_denials(run).unwrap_or_default());
    list("Policy warnings", policy_warnings(run));
    out
}

fn stage_table(state: &RunState) -> String {
    let mut out =
        String::from("| Stage | Status | Duration | Attempts | Notes |\n|---|---|---|---|---|\n");
    for s in &state.stages {
        let note = match (&state.failure, s.pending_reason.as_deref()) {
            (Some(f), _) if f.stage == s.name => f.note.clone().unwrap_or_default(),
            (_, Some(reason)) => reason.to_string(),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} {} | {} | {} | {} |\n",
            cell(&s.name),
            stage_icon(s.status),
            s.status,
            stage_duration(s, state.now_ms),
            if s.attempt > Attempt::NONE {
                s.attempt.to_string()
            } else {
                "—".into()
            },
            cell(&note)
        ));
    }
    out
}

pub(crate) fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

fn iso(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The annotations of an invalid pipeline: one per positioned problem, on its file.
pub(crate) fn annotations(state: &RunState) -> Vec<Value> {
    if !matches!(state.run.status, RunStatus::Error | RunStatus::Failed) {
        return Vec::new();
    }
    problems(&state.run)
        .into_iter()
        .filter_map(|p| {
            let file = p.file?;
            let line = p.line.unwrap_or(1).max(1);
            let mut a = json!({
                "path": file,
                "start_line": line,
                "end_line": line,
                "annotation_level": "failure",
                "message": truncate_chars(&p.message, 60_000),
                "title": "Invalid pipeline",
            });
            if let Some(col) = p.col.filter(|c| *c >= 1) {
                a["start_column"] = json!(col);
                a["end_column"] = json!(col);
            }
            Some(a)
        })
        .collect()
}

/// The body of a check run create (with `head_sha`) or update request, carrying `annotations`
/// (at most [`ANNOTATIONS_PER_REQUEST`]).
pub(crate) fn check_run_body(state: &RunState, create: bool, annotations: &[Value]) -> Value {
    let run = &state.run;
    let (status, conclusion) = check_status(state);
    let mut body = Map::new();
    body.insert("name".into(), json!(context_name(&run.pipeline)));
    if create {
        body.insert("head_sha".into(), json!(run.commit));
    }
    body.insert("external_id".into(), json!(run.id.to_string()));
    if let Some(url) = &state.url {
        body.insert("details_url".into(), json!(url));
    }
    body.insert("status".into(), json!(status));
    if let Some(started) = run.started_at.and_then(iso) {
        body.insert("started_at".into(), json!(started));
    }
    if let Some(conclusion) = conclusion {
        body.insert("conclusion".into(), json!(conclusion));
        let completed = run.finished_at.unwrap_or(state.now_ms);
        if let Some(completed) = iso(completed) {
            body.insert("completed_at".into(), json!(completed));
        }
    }
    let mut output = json!({ "title": check_title(state), "summary": check_summary(state) });
    if !annotations.is_empty() {
        output["annotations"] = json!(annotations);
    }
    body.insert("output".into(), output);
    Value::Object(body)
}

/// A follow-up update carrying only more annotations (GitHub appends them).
pub(crate) fn check_run_annotations_body(state: &RunState, annotations: &[Value]) -> Value {
    json!({
        "output": {
            "title": check_title(state),
            "summary": check_summary(state),
            "annotations": annotations,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Commit statuses

/// GitHub commit status `state` and description (at most 140 characters).
///
/// A cancelled run is `error`: it reached no verdict on the commit, and GitHub's `error`
/// (unlike `failure`) says exactly that, while still blocking a merge that requires the check.
/// A skipped run is `success` ("skipped by path filters"), so that required checks don't block.
pub(crate) fn github_status(state: &RunState) -> (&'static str, String) {
    let st = match state.run.status {
        RunStatus::Queued | RunStatus::Running => "pending",
        RunStatus::Success | RunStatus::Skipped => "success",
        RunStatus::Failed => "failure",
        RunStatus::Cancelled | RunStatus::Error => "error",
    };
    (st, status_description(state, 140))
}

/// GitLab commit status `state` and description (at most 255 characters). A skipped run is
/// `success` with a description saying so; an invalid pipeline is `failed` (GitLab has no
/// `error`).
pub(crate) fn gitlab_status(state: &RunState) -> (&'static str, String) {
    let st = match state.run.status {
        RunStatus::Queued => "pending",
        RunStatus::Running => "running",
        RunStatus::Success | RunStatus::Skipped => "success",
        RunStatus::Failed | RunStatus::Error => "failed",
        RunStatus::Cancelled => "canceled",
    };
    (st, status_description(state, 255))
}

fn status_description(state: &RunState, max: usize) -> String {
    let text = match state.run.status {
        RunStatus::Skipped if untrusted_skip(state) => {
            "Skipped: this repository does not run code from forks".to_string()
        }
        RunStatus::Skipped => {
            "Skipped by path filters: no changed file matches the pipeline's paths".to_string()
        }
        _ => headline(state),
    };
    let text = strip_ansi(&text.replace(['\n', '\r'], " "));
    if text.chars().count() > max {
        truncate_chars(&text, max - 1)
    } else {
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Pull request comment

/// The one comment on a pull/merge request: every pipeline of its latest head commit.
pub(crate) fn pr_comment(number: i64, runs: &[RunState]) -> String {
    let mut out = format!("{PR_COMMENT_MARKER}\n### DeployLite\n\n");
    match runs.first() {
        None => {
            out.push_str(&format!("No pipeline runs for #{number} yet.\n"));
            return out;
        }
        Some(first) => {
            out.push_str(&format!(
                "Pipelines for commit `{}`:\n\n",
                short_sha(&first.run.commit)
            ));
        }
    }
    out.push_str("| Pipeline | Status | Stages | Run |\n|---|---|---|---|\n");
    for state in runs {
        let run = &state.run;
        let link = match &state.url {
            Some(url) => format!("[#{}]({url})", run.id),
            None => format!("#{}", run.id),
        };
        out.push_str(&format!(
            "| `{}` | {} {} | {} | {} |\n",
            cell(&run.pipeline).replace('`', "'"),
            run_icon(run.status),
            run.status,
            cell(&stages_summary(state)),
            link
        ));
    }
    let failed: Vec<&RunState> = runs
        .iter()
        .filter(|s| s.failure.is_some() || s.run.status == RunStatus::Error)
        .collect();
    for state in failed {
        out.push_str(&format!(
            "\n**{}**: {}\n",
            cell(&state.run.pipeline),
            cell(&headline(state))
        ));
    }
    out
}

/// One environment the pull request's head would deploy to after merge: its definition and
/// where its gates stand for the head (see [`environment_plan_line`]).
#[derive(Debug, Clone)]
pub(crate) struct EnvironmentPlan {
    pub environment: deploylite_reconciler::store::EnvironmentRecord,
    /// Each `promote_from:` environment with whether it has deployed the head.
    pub promoted: Vec<(String, bool)>,
}

/// The comment's section on environments: one line per environment whose `follows` branch is
/// the pull request's base, saying what would deploy after merge, behind which gates, and what
/// it would wait for now. Empty when no environment follows the base branch.
pub(crate) fn environments_section(
    head: &str,
    plans: &[EnvironmentPlan],
    runs: &[RunState],
) -> String {
    if plans.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "
**Environments** (after merge):

",
    );
    for plan in plans {
        out.push_str(&format!("- {}\n", environment_plan_line(head, plan, runs)));
    }
    out
}

/// `production: would deploy abc1234 after ci, approval 0 of 1 — waiting: requires: ci
/// running on abc1234`. The gates are the environment's; the wait is the controller's own
/// wording (`waiting_reason`) applied to the head as if it were the desired version.
pub(crate) fn environment_plan_line(
    head: &str,
    plan: &EnvironmentPlan,
    runs: &[RunState],
) -> String {
    use deploylite_reconciler::environments::{waiting_reason, GateFacts};
    use deploylite_reconciler::status::{DeploymentAction, DeploymentStatus};
    let env = &plan.environment;
    let def = &env.definition;
    let short = short_sha(head);
    let mut gates: Vec<String> = def.requires.clone();
    gates.extend(def.promote_from.iter().map(|s| format!("promote_from {s}")));
    if let Some(approval) = def.approval.filter(|a| a.required > 0) {
        gates.push(format!("approval 0 of {}", approval.required));
    }
    let mut line = if gates.is_empty() {
        format!("{}: would deploy {short} on merge", cell(&env.name))
    } else {
        format!(
            "{}: would deploy {short} after {}",
            cell(&env.name),
            cell(&gates.join(", "))
        )
    };
    let facts = GateFacts {
        hold: env.hold.clone(),
        required: def
            .requires
            .iter()
            .map(|p| {
                let status = runs
                    .iter()
                    .find(|s| &s.run.pipeline == p && s.run.commit == head)
                    .map(|s| s.run.status);
                (p.clone(), status)
            })
            .collect(),
        promoted: plan.promoted.clone(),
        active: None,
    };
    let planned = deploylite_reconciler::store::DeploymentRecord {
        id: 0,
        repo: env.repo.clone(),
        environment: env.name.clone(),
        version: head.to_string(),
        attempt: 1,
        git_ref: None,
        previous_version: env.current_version.clone(),
        action: DeploymentAction::Deploy,
        status: DeploymentStatus::Waiting,
        pending_reason: None,
        triggered_by: String::new(),
        manual: false,
        rollback_of: None,
        policy: None,
        errors: Vec::new(),
        created_at: 0,
        started_at: None,
        finished_at: None,
        runs: Vec::new(),
        approvals: Vec::new(),
    };
    // The approval is listed with the gates already; any other wait is news.
    if let Some(reason) =
        waiting_reason(&planned, def, &facts).filter(|r| !r.starts_with("approval:"))
    {
        line.push_str(&format!(" — waiting: {}", cell(&reason)));
    }
    line
}

fn stages_summary(state: &RunState) -> String {
    match state.run.status {
        RunStatus::Error if policy_denials(&state.run).is_some() => {
            return "denied by policy".into();
        }
        RunStatus::Error => {
            let n = problems(&state.run).len();
            return format!(
                "invalid pipeline: {n} problem{}",
                if n == 1 { "" } else { "s" }
            );
        }
        RunStatus::Skipped => return "skipped by path filters".into(),
        _ => {}
    }
    if state.stages.is_empty() {
        return "—".into();
    }
    let done = stages_done(&state.stages);
    let list = if state.stages.len() <= 8 {
        state
            .stages
            .iter()
            .map(|s| format!("{} {}", stage_icon(s.status), s.name))
            .collect::<Vec<_>>()
            .join(" · ")
    } else {
        let count = |st: StageStatus| state.stages.iter().filter(|s| s.status == st).count();
        [
            (StageStatus::Success, "passed"),
            (StageStatus::Failed, "failed"),
            (StageStatus::Running, "running"),
            (StageStatus::Queued, "queued"),
            (StageStatus::Skipped, "skipped"),
            (StageStatus::Cancelled, "cancelled"),
        ]
        .iter()
        .filter_map(|(st, word)| {
            let n = count(*st);
            (n > 0).then(|| format!("{} {n} {word}", stage_icon(*st)))
        })
        .collect::<Vec<_>>()
        .join(", ")
    };
    format!("{done}/{} done: {list}", state.stages.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prefixes_are_stripped() {
        let log = "2026-11-26T23:58:28.869Z --- step 1: make test\n\
                   2026-11-26T23:58:28.900Z out compiling \u{1b}[1mfoo\u{1b}[0m\n\
                   2026-11-26T23:58:29.001Z err error: boom\n\
                   not a log line\n";
        assert_eq!(
            log_tail(log, 20),
            vec![
                "▸ step 1: make test",
                "compiling foo",
                "error: boom",
                "not a log line"
            ]
        );
        assert_eq!(log_tail(log, 2), vec!["error: boom", "not a log line"]);
    }

    #[test]
    fn fences_are_longer_than_any_backtick_run() {
        let block = fenced(&["a ```` b".to_string()]);
        assert!(block.starts_with("`````text\n"), "{block}");
        assert!(block.ends_with("\n`````"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(1_234), "1.2s");
        assert_eq!(format_duration(42_000), "42s");
        assert_eq!(format_duration(185_000), "3m 05s");
        assert_eq!(format_duration(3_720_000), "1h 02m");
    }
}
