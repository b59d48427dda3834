//! Following the main container's log: `follow=true&timestamps=true`, line by line. A stream
//! that ends while the container still runs (API server or kubelet restart, log rotation) is
//! reopened from the last timestamp seen, skipping the lines already delivered.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::io::{AsyncBufRead, AsyncBufReadExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use tokio::sync::mpsc;

use super::spec::STAGE_CONTAINER;
use super::status::{assess, PodState};
use crate::log::MAX_LINE;

const REOPEN_PAUSE: Duration = Duration::from_millis(500);
/// How often the log may be reopened before the follower gives up.
const MAX_REOPENS: u32 = 20;

#[derive(Debug)]
pub enum LogMsg {
    Line(String),
    /// A note for the stage log (the stream could not be read).
    Note(String),
    /// Nothing more will come.
    End,
}

/// Where the follower stands: the last timestamp delivered and how many lines carried it.
#[derive(Default)]
struct Position {
    last: Option<DateTime<Utc>>,
    at_last: usize,
    /// Lines still to skip at `last` after a reopen.
    skip_at_last: usize,
}

impl Position {
    /// Splits the `timestamps=true` prefix off; None when the line was already delivered.
    fn accept(&mut self, raw: &str) -> Option<String> {
        let (stamp, text) = match raw.split_once(' ') {
            Some((stamp, text)) => match DateTime::parse_from_rfc3339(stamp) {
                Ok(t) => (Some(t.with_timezone(&Utc)), text),
                Err(_) => (None, raw),
            },
            None => match DateTime::parse_from_rfc3339(raw.trim_end()) {
                Ok(t) => (Some(t.with_timezone(&Utc)), ""),
                Err(_) => (None, raw),
            },
        };
        let Some(stamp) = stamp else {
            return Some(text.to_string());
        };
        match self.last {
            Some(last) if stamp < last => return None,
            Some(last) if stamp == last => {
                if self.skip_at_last > 0 {
                    self.skip_at_last -= 1;
                    return None;
                }
                self.at_last += 1;
            }
            _ => {
                self.last = Some(stamp);
                self.at_last = 1;
                self.skip_at_last = 0;
            }
        }
        Some(text.to_string())
    }

    fn reopened(&mut self) -> LogParams {
        self.skip_at_last = self.at_last;
        let since_seconds = self.last.map(|last| {
            let age = (Utc::now() - last).num_seconds();
            age.max(0) + 2
        });
        LogParams {
            container: Some(STAGE_CONTAINER.into()),
            follow: true,
            timestamps: true,
            since_seconds,
            ..Default::default()
        }
    }
}

async fn read_stream(
    mut stream: impl AsyncBufRead + Unpin,
    position: &mut Position,
    tx: &mpsc::Sender<LogMsg>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let (consumed, done) = {
            let chunk = stream.fill_buf().await?;
            if chunk.is_empty() {
                (0, true)
            } else {
                let room = MAX_LINE.saturating_sub(buf.len()).max(1);
                let window = &chunk[..chunk.len().min(room)];
                match window.iter().position(|b| *b == b'\n') {
                    Some(at) => {
                        buf.extend_from_slice(&window[..=at]);
                        (at + 1, false)
                    }
                    None => {
                        buf.extend_from_slice(window);
                        (window.len(), false)
                    }
                }
            }
        };
        if done {
            break;
        }
        stream.consume_unpin(consumed);
        if buf.ends_with(b"\n") || buf.len() >= MAX_LINE {
            let line = String::from_utf8_lossy(&buf).into_owned();
            buf.clear();
            if let Some(text) = position.accept(line.trim_end_matches(['\n', '\r'])) {
                if tx.send(LogMsg::Line(text)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    if !buf.is_empty() {
        let line = String::from_utf8_lossy(&buf).into_owned();
        if let Some(text) = position.accept(line.trim_end_matches(['\n', '\r'])) {
            let _ = tx.send(LogMsg::Line(text)).await;
        }
    }
    Ok(())
}

/// Whether the main container is still going (worth reopening its log for).
async fn still_running(api: &Api<Pod>, name: &str) -> bool {
    match api.get_opt(name).await {
        Ok(Some(pod)) => matches!(assess(&pod), PodState::Running),
        Ok(None) => false,
        // Cannot tell: let the status watcher decide, and try the log again.
        Err(_) => true,
    }
}

/// Follows the log until the container is done; started once the container runs (or ran).
pub async fn follow(api: Api<Pod>, name: String, tx: mpsc::Sender<LogMsg>) {
    let mut position = Position::default();
    let mut params = LogParams {
        container: Some(STAGE_CONTAINER.into()),
        follow: true,
        timestamps: true,
        ..Default::default()
    };
    let mut reopens = 0;
    let mut opened = false;
    let mut last_error = None;
    loop {
        match api.log_stream(&name, &params).await {
            Ok(stream) => {
                opened = true;
                let stream = Box::pin(stream);
                if let Err(error) = read_stream(stream, &mut position, &tx).await {
                    tracing::debug!(pod = %name, %error, "log stream broke");
                }
            }
            Err(error) => {
                tracing::debug!(pod = %name, %error, "cannot open the log");
                last_error = Some(error.to_string());
                if reopens + 1 >= MAX_REOPENS {
                    let _ = tx
                        .send(LogMsg::Note(format!(
                            "cannot read the container's log: {error}"
                        )))
                        .await;
                    break;
                }
            }
        }
        if tx.is_closed() || !still_running(&api, &name).await {
            if let (false, Some(error)) = (opened, last_error) {
                let _ = tx
                    .send(LogMsg::Note(format!(
                        "cannot read the container's log: {error}"
                    )))
                    .await;
            }
            break;
        }
        reopens += 1;
        if reopens >= MAX_REOPENS {
            let _ = tx
                .send(LogMsg::Note(
                    "the container's log stream keeps breaking; stopped following it".into(),
                ))
                .await;
            break;
        }
        tokio::time::sleep(REOPEN_PAUSE).await;
        params = position.reopened();
    }
    let _ = tx.send(LogMsg::End).await;
}
