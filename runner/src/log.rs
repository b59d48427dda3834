//! Stage logs: one timestamped line per output line, `2026-11-26T23:58:28.869Z out text`.
//! On the server a log is a file per stage attempt, flushed line by line so that the log API can
//! serve it while the stage runs; on a remote runner the same lines go to a channel that uploads
//! them to the server in chunks.

use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines DeployLite itself writes (step headers, retries, timeouts).
    System,
}

impl LogStream {
    fn tag(self) -> &'static str {
        match self {
            LogStream::Stdout => "out",
            LogStream::Stderr => "err",
            LogStream::System => "---",
        }
    }
}

enum Sink {
    File {
        path: PathBuf,
        file: BufWriter<File>,
        /// Lines written since the last flush.
        dirty: bool,
    },
    Channel(mpsc::Sender<String>),
}

pub struct StageLog {
    sink: Sink,
    /// Mirror every line to our stdout as `[stage] line` (used by `deploylite run`).
    echo_prefix: Option<String>,
}

impl StageLog {
    /// Creates (or appends to) the log at `path`, creating parent directories.
    pub async fn create(path: &Path) -> std::io::Result<StageLog> {
        let owned = path.to_path_buf();
        // One trip to the blocking pool for both calls: this is on every stage's critical path.
        let file = tokio::task::spawn_blocking(move || {
            if let Some(parent) = owned.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&owned)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(StageLog {
            sink: Sink::File {
                path: path.to_path_buf(),
                file: BufWriter::new(File::from_std(file)),
                dirty: false,
            },
            echo_prefix: None,
        })
    }

    /// A log whose formatted lines (newline included) are sent to `tx`: a remote runner's
    /// uploader batches them into chunks for the server.
    pub fn channel(tx: mpsc::Sender<String>) -> StageLog {
        StageLog {
            sink: Sink::Channel(tx),
            echo_prefix: None,
        }
    }

    pub fn echo_to_stdout(&mut self, prefix: String) {
        self.echo_prefix = Some(prefix);
    }

    /// The file behind the log, when it is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.sink {
            Sink::File { path, .. } => Some(path),
            Sink::Channel(_) => None,
        }
    }

    /// Writes one line and makes it (and anything buffered before it) readable. A failing log
    /// write never fails the stage: the error is traced instead.
    pub async fn line(&mut self, stream: LogStream, text: &str) {
        self.buffer(stream, text).await;
        self.flush().await;
    }

    /// Writes one line without making it readable yet: the next [`StageLog::line`] or
    /// [`StageLog::flush`] does (one write for many lines). Channel logs send it at once.
    pub async fn buffer(&mut self, stream: LogStream, text: &str) {
        let text = text.trim_end_matches(['\n', '\r']);
        let record = format_line(stream, text);
        if let Some(prefix) = &self.echo_prefix {
            println!("[{prefix}] {text}");
        }
        match &mut self.sink {
            Sink::File { path, file, dirty } => {
                *dirty = true;
                if let Err(error) = file.write_all(record.as_bytes()).await {
                    tracing::warn!(path = %path.display(), %error, "cannot write stage log");
                }
            }
            Sink::Channel(tx) => {
                if tx.send(record).await.is_err() {
                    tracing::warn!("stage log uploader has stopped; a line was dropped");
                }
            }
        }
    }

    /// Makes every buffered line readable. Costs nothing when nothing is buffered.
    pub async fn flush(&mut self) {
        if let Sink::File { path, file, dirty } = &mut self.sink {
            if !std::mem::take(dirty) {
                return;
            }
            if let Err(error) = file.flush().await {
                tracing::warn!(path = %path.display(), %error, "cannot write stage log");
            }
        }
    }

    /// A line of DeployLite's own, buffered: the step that follows (or the end of the attempt)
    /// makes it readable.
    pub async fn note(&mut self, text: &str) {
        self.buffer(LogStream::System, text).await;
    }

    pub async fn system(&mut self, text: &str) {
        self.line(LogStream::System, text).await;
    }
}

/// One log line as stored: `<RFC 3339 UTC, ms> <out|err|---> <text>\n`.
pub fn format_line(stream: LogStream, text: &str) -> String {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    format!("{now} {} {text}\n", stream.tag())
}

/// Appends already formatted lines (a chunk uploaded by a remote runner) to a log file.
pub async fn append_chunk(path: &Path, chunk: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    file.write_all(chunk).await?;
    file.flush().await
}

/// Reads a whole log; a missing file is an empty log (the attempt has not written yet).
pub async fn read_log(path: &Path) -> std::io::Result<String> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}
