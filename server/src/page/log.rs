//! A stage attempt's log: `/runs/{id}/stages/{stage}?attempt=N` shows its last lines (at most
//! [`PAGE_LINES`] and [`PAGE_BYTES`], read from the end of the file), with links to earlier
//! pages (`&before=<byte offset>`) and to the raw text. Lines are anchored by their byte offset
//! (`#b1234`), which never changes in an append-only log. While the attempt runs, the page's
//! script follows `/live`, an SSE stream of rendered lines whose event ids are byte offsets, so
//! a reconnect (`Last-Event-ID`) resumes where it stopped.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deploylite_model::{Attempt, RunId};
use deploylite_reconciler::status::StageStatus;
use deploylite_reconciler::store::{StageAttemptRecord, StageRecord};
use futures_util::stream::{self, Stream};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::layout::{self, segment, Viewer};
use super::log_window::{self, Line};
use super::{ansi, PageError, PageState};

/// The most lines one page shows.
pub const PAGE_LINES: usize = 5_000;
/// The most bytes one page shows (lines are at most 16 KiB: a page of long lines is shorter).
pub const PAGE_BYTES: u64 = 1024 * 1024;
/// The most bytes of new lines one live event carries.
const LIVE_CHUNK: u64 = 256 * 1024;
/// How often the live tail looks for new lines.
const LIVE_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Deserialize)]
pub(crate) struct LogQuery {
    attempt: Option<Attempt>,
    /// Show the lines ending at this byte offset (an earlier page).
    before: Option<u64>,
    /// Show timestamps (the script toggles them without a reload).
    ts: Option<u8>,
}

struct Selected {
    stage: StageRecord,
    attempt: Attempt,
    attempts: Vec<StageAttemptRecord>,
    repo: String,
    pipeline: String,
    path: PathBuf,
}

async fn select(
    state: &PageState,
    id: RunId,
    stage: &str,
    attempt: Option<Attempt>,
) -> Result<Selected, PageError> {
    let (run, stages) = state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| PageError::NotFound(format!("There is no run #{id}.")))?;
    let record = stages
        .into_iter()
        .find(|s| s.name == stage)
        .ok_or_else(|| PageError::NotFound(format!("Run #{id} has no stage `{stage}`.")))?;
    let attempt = attempt.unwrap_or(record.attempt.max(Attempt::FIRST));
    if attempt < Attempt::FIRST
        || (attempt > record.attempt
            && !(attempt == Attempt::FIRST && record.attempt == Attempt::NONE))
    {
        return Err(PageError::NotFound(format!(
            "Stage `{stage}` of run #{id} has no attempt {attempt} (it has {}).",
            record.attempt
        )));
    }
    let attempts = state.store.stage_attempts(id, stage).await?;
    Ok(Selected {
        path: state.data.log_path(id, stage, attempt),
        stage: record,
        attempt,
        attempts,
        repo: run.repo.into(),
        pipeline: run.pipeline,
    })
}

/// Whether attempt `attempt` of `stage` may still write to its log.
fn still_writing(stage: &StageRecord, attempt: Attempt) -> bool {
    attempt >= stage.attempt && matches!(stage.status, StageStatus::Running | StageStatus::Queued)
}

pub(crate) async fn page(
    State(state): State<PageState>,
    Path((id, stage)): Path<(RunId, String)>,
    Query(q): Query<LogQuery>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let selected = select(&state, id, &stage, q.attempt).await?;
    let path = selected.path.clone();
    let before = q.before;
    let window = tokio::task::spawn_blocking(move || {
        log_window::read(&path, before, PAGE_LINES, PAGE_BYTES)
    })
    .await
    .map_err(|e| PageError::BadRequest(format!("reading the log stopped: {e}")))?
    .map_err(|e| {
        tracing::error!(path = %selected.path.display(), error = %e, "cannot read a log");
        PageError::NotFound("This log cannot be read now.".to_string())
    })?;
    let attempt = selected.attempt;
    let base = format!("/runs/{id}/stages/{}", segment(&stage));
    let show_ts = q.ts == Some(1);
    let ts_query = if show_ts { "&ts=1" } else { "" };
    let attempt_status = selected
        .attempts
        .iter()
        .find(|a| a.attempt == attempt)
        .map(|a| a.status.as_str())
        .unwrap_or(selected.stage.status.as_str());
    let live = (before.is_none() && still_writing(&selected.stage, attempt)).then(|| {
        format!(
            "{base}/live?attempt={attempt}&offset={}{ts_query}",
            window.end
        )
    });
    let raw = format!(
        "/api/v1/runs/{id}/stages/{}/log?attempt={attempt}",
        segment(&stage)
    );
    let main = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href={ "/repos/" (segment(&selected.repo)) } { (selected.repo) }
            " / " a href={ "/runs/" (id) } { (selected.pipeline) " #" (id) }
            " / " (stage)
        }
        h1 { "Stage " code { (stage) } " " (layout::status(attempt_status)) }
        @if selected.attempts.len() > 1 {
            nav.attempts aria-label="Attempts" {
                "Attempts: "
                @for a in &selected.attempts {
                    @if a.attempt == attempt {
                        strong aria-current="page" { (a.attempt) " (" (a.status) ")" }
                    } @else {
                        a href={ (base) "?attempt=" (a.attempt) (ts_query) } { (a.attempt) " (" (a.status) ")" }
                    }
                    " "
                }
            }
        }
        @if let Some(note) = selected.attempts.iter().find(|a| a.attempt == attempt).and_then(|a| a.note.as_deref()) {
            p.note { (note) }
        }
        div.logbar {
            a href=(raw) { "Raw log" }
            @if window.start > 0 {
                a href={ (base) "?attempt=" (attempt) "&before=" (window.start) (ts_query) } { "Earlier lines" }
            }
            @if before.is_some() {
                a href={ (base) "?attempt=" (attempt) (ts_query) } { "Latest lines" }
            }
            @if show_ts {
                a.ts-link href={ (base) "?attempt=" (attempt) @if let Some(b) = before { "&before=" (b) } } { "Hide timestamps" }
            } @else {
                a.ts-link href={ (base) "?attempt=" (attempt) @if let Some(b) = before { "&before=" (b) } "&ts=1" } { "Show timestamps" }
            }
            span.lines-info {
                @if window.lines.is_empty() {
                    "No output yet."
                } @else if window.start > 0 {
                    "Showing the last " (window.lines.len()) " lines before byte " (window.end) " of " (window.len) "."
                } @else {
                    (window.lines.len()) " lines."
                }
            }
        }
        div #log class={ "log" @if !show_ts { " hide-ts" } } data-live-src=[live.as_deref()] role="log" aria-live="off" {
            @for line in &window.lines {
                (line_html(line, &base, attempt, window.end))
            }
        }
        @if live.is_some() {
            p.live-note { "The stage is running: new lines appear here as they are written (with JavaScript), or reload the page." }
        }
    };
    let title = format!("{stage} · #{id}");
    Ok(layout::page(&title, &viewer, None, main))
}

/// One stored line (`<time> <out|err|---> <text>`) as HTML, anchored by its byte offset.
fn line_html(line: &Line, base: &str, attempt: Attempt, page_end: u64) -> Markup {
    let mut parts = line.text.splitn(3, ' ');
    let (time, stream, text) = match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(s @ ("out" | "err" | "---")), text) => (t, s, text.unwrap_or("")),
        _ => ("", "out", line.text.as_str()),
    };
    let class = match stream {
        "err" => "t err",
        "---" => "t sys",
        _ => "t",
    };
    let anchor = format!("b{}", line.offset);
    html! {
        div.l id=(anchor) {
            a.a href={ (base) "?attempt=" (attempt) "&before=" (page_end) "#" (anchor) } aria-label="Link to this line" { "#" }
            span.ts { (time) }
            span class=(class) { (PreEscaped(ansi::to_html(text))) }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct LiveQuery {
    attempt: Option<Attempt>,
    offset: Option<u64>,
}

struct Tail {
    state: PageState,
    run_id: RunId,
    stage: String,
    attempt: Attempt,
    path: PathBuf,
    base: String,
    offset: u64,
    done: bool,
    /// Idle polls since the store was last asked whether the attempt ended.
    idle: u32,
}

/// `GET /runs/{id}/stages/{stage}/live?attempt=N&offset=X`: the log's new lines as SSE
/// `lines` events (rendered HTML, id = the byte offset after them), then one `end` event
/// once the attempt has ended and everything is sent. `Last-Event-ID` overrides `offset`.
pub(crate) async fn live(
    State(state): State<PageState>,
    Path((id, stage)): Path<(RunId, String)>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let selected = select(&state, id, &stage, q.attempt).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let tail = Tail {
        base: format!("/runs/{id}/stages/{}", segment(&stage)),
        state,
        run_id: id,
        stage,
        attempt: selected.attempt,
        path: selected.path,
        offset: resume.or(q.offset).unwrap_or(0),
        done: false,
        idle: 0,
    };
    Ok(Sse::new(tail_events(tail))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn tail_events(tail: Tail) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(tail, |mut tail| async move {
        loop {
            if tail.done {
                return None;
            }
            match read_lines(&tail.path, tail.offset, LIVE_CHUNK).await {
                Ok((lines, next)) if !lines.is_empty() => {
                    tail.idle = 0;
                    let html: String = lines
                        .iter()
                        .map(|l| line_html(l, &tail.base, tail.attempt, next).into_string())
                        .collect();
                    tail.offset = next;
                    let event = Event::default()
                        .event("lines")
                        .id(next.to_string())
                        .data(html);
                    return Some((Ok(event), tail));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(path = %tail.path.display(), %error, "cannot follow a log");
                }
            }
            // Nothing new: has the attempt ended? Asked at most every few polls.
            tail.idle += 1;
            if tail.idle % 4 == 1 && attempt_ended(&tail).await {
                // One more read: the closing line may have come with the end.
                if let Ok((lines, _)) = read_lines(&tail.path, tail.offset, 1).await {
                    if lines.is_empty() {
                        tail.done = true;
                        let event = Event::default().event("end").data("ended");
                        return Some((Ok(event), tail));
                    }
                }
                continue;
            }
            tokio::time::sleep(LIVE_POLL).await;
        }
    })
}

async fn attempt_ended(tail: &Tail) -> bool {
    match tail.state.store.get_run(tail.run_id).await {
        Ok(Some((_, stages))) => stages
            .iter()
            .find(|s| s.name == tail.stage)
            .is_none_or(|s| !still_writing(s, tail.attempt)),
        Ok(None) => true,
        Err(error) => {
            tracing::warn!(%error, "cannot read a stage for its live log");
            false
        }
    }
}

/// The whole lines from `offset` (at most about `max` bytes; at least one line when there is
/// one) and the offset after them.
async fn read_lines(
    path: &std::path::Path,
    offset: u64,
    max: u64,
) -> std::io::Result<(Vec<Line>, u64)> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    if len <= offset {
        return Ok((Vec::new(), offset));
    }
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    // A line is at most 16 KiB: reading that much more always finds one whole line.
    let want = (len - offset).min(max.max(1) + 16 * 1024 + 64);
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    file.take(want).read_to_end(&mut buf).await?;
    let Some(last) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok((Vec::new(), offset));
    };
    // Keep whole lines, up to `max` bytes when there is more than one.
    let mut cut = last + 1;
    if cut as u64 > max {
        cut = buf[..max as usize]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(cut, |p| p + 1);
        if cut as u64 > max {
            cut = buf.iter().position(|b| *b == b'\n').map_or(cut, |p| p + 1);
        }
    }
    let mut lines = Vec::new();
    let mut at = offset;
    for raw in buf[..cut].split_inclusive(|b| *b == b'\n') {
        lines.push(Line {
            offset: at,
            text: String::from_utf8_lossy(raw)
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        });
        at += raw.len() as u64;
    }
    Ok((lines, at))
}
