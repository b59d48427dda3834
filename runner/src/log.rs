//! Stage logs: one timestamped line per output line, `2026-11-26T23:58:28.869Z out text`.
//! On the server a log is a file per stage attempt, flushed line by line so that the log API can
//! serve it while the stage runs; on a remote runner the same lines go to a channel that uploads
//! them to the server in chunks. Every line is at most [`MAX_LINE`] bytes and every attempt's
//! log at most its limit ([`cap`]): what a stage prints never decides how much memory or disk
//! the daemon uses.

mod ansi;
mod cap;
mod lines;
mod mask;

use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

pub use ansi::{colour_allowed, strip_ansi};
use cap::{LogCap, Placement};
pub use cap::{DEFAULT_LOG_BYTES, MIN_LOG_BYTES};
pub use lines::{read_line_bounded, MAX_LINE};
pub use mask::{MaskError, MaskStream, MaskingReader, SecretMask, MASK};

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
    /// Whether the mirrored lines keep their ANSI colours.
    echo_colour: bool,
    cap: LogCap,
}

impl StageLog {
    /// Creates (or appends to) the log at `path`, creating parent directories. The log holds
    /// at most [`DEFAULT_LOG_BYTES`] (what it already holds counts) unless
    /// [`StageLog::with_byte_limit`] says otherwise.
    pub async fn create(path: &Path) -> std::io::Result<StageLog> {
        let owned = path.to_path_buf();
        // One trip to the blocking pool for all calls: this is on every stage's critical path.
        let (file, len) = tokio::task::spawn_blocking(move || {
            if let Some(parent) = owned.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&owned)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
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
            echo_colour: false,
            cap: LogCap::new(DEFAULT_LOG_BYTES, len),
        })
    }

    /// A log whose formatted lines (newline included) are sent to `tx`: a remote runner's
    /// uploader batches them into chunks for the server.
    pub fn channel(tx: mpsc::Sender<String>) -> StageLog {
        StageLog {
            sink: Sink::Channel(tx),
            echo_prefix: None,
            echo_colour: false,
            cap: LogCap::new(DEFAULT_LOG_BYTES, 0),
        }
    }

    /// Limits the log to `bytes` (at least [`MIN_LOG_BYTES`]) plus one marker line: past the
    /// limit, the first bytes stay and the last ones are written by [`StageLog::finish`].
    pub fn with_byte_limit(mut self, bytes: u64) -> StageLog {
        self.cap = LogCap::new(bytes, self.cap.written());
        self
    }

    /// Mirrors every line to stdout as `[prefix] text`, without colours unless stdout is a
    /// terminal and `NO_COLOR` is not set (the log itself keeps them).
    pub fn echo_to_stdout(&mut self, prefix: String) {
        use std::io::IsTerminal;
        self.echo_prefix = Some(prefix);
        self.echo_colour = colour_allowed(std::io::stdout().is_terminal());
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
    /// [`StageLog::flush`] does (one write for many lines). Channel logs send it at once. A
    /// line longer than [`MAX_LINE`] becomes several; past the log's limit, lines wait in the
    /// tail for [`StageLog::finish`].
    pub async fn buffer(&mut self, stream: LogStream, text: &str) {
        let text = text.trim_end_matches(['\n', '\r']);
        for piece in lines::pieces(text) {
            let record = format_line(stream, piece);
            if let Placement::Head = self.cap.place(&record) {
                self.echo(&record);
                self.emit(record).await;
            }
        }
    }

    fn echo(&self, record: &str) {
        if let Some(prefix) = &self.echo_prefix {
            let text = record.splitn(3, ' ').nth(2).unwrap_or_default();
            let text = text.trim_end_matches('\n');
            if self.echo_colour {
                println!("[{prefix}] {text}");
            } else {
                println!("[{prefix}] {}", strip_ansi(text));
            }
        }
    }

    async fn emit(&mut self, record: String) {
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

    /// Ends the attempt's log: when it reached its limit, writes the marker line saying how
    /// much was dropped and then the tail; makes everything readable. Call it once the attempt
    /// has written its last line (a log dropped without it loses its tail).
    pub async fn finish(&mut self) {
        if let Some((marker, records)) = self.cap.finish() {
            if let Some(marker) = marker {
                let record = format_line(LogStream::System, &marker);
                self.echo(&record);
                self.emit(record).await;
            }
            // Line by line: a remote runner's uploader batches lines into bounded chunks.
            for record in records.split_inclusive('\n') {
                self.echo(record);
                self.emit(record.to_string()).await;
            }
        }
        self.flush().await;
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

/// A stored log line's stream and text (`2026-11-26T23:58:28.869Z out hello` gives
/// `(Stdout, "hello")`); None for a line not in that form. A trailing newline is ignored.
pub fn parse_line(record: &str) -> Option<(LogStream, &str)> {
    let record = record.trim_end_matches(['\n', '\r']);
    let mut parts = record.splitn(3, ' ');
    let _time = parts.next()?;
    let stream = match parts.next()? {
        "out" => LogStream::Stdout,
        "err" => LogStream::Stderr,
        "---" => LogStream::System,
        _ => return None,
    };
    Some((stream, parts.next().unwrap_or("")))
}

/// Room past a log's limit for what comes after the runner's own marker line.
const CHUNK_SLACK: u64 = 64 * 1024;

/// Appends already formatted lines (a chunk uploaded by a remote runner) to a log file. The
/// runner keeps its log within `limit`; a chunk that would take the file further than that
/// (and a little slack) is not written: false.
pub async fn append_chunk(path: &Path, chunk: &[u8], limit: u64) -> std::io::Result<bool> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let len = file.metadata().await?.len();
    if len + chunk.len() as u64 > limit.max(MIN_LOG_BYTES) + CHUNK_SLACK {
        return Ok(false);
    }
    file.write_all(chunk).await?;
    file.flush().await?;
    Ok(true)
}

/// The last line of a log (without its newline); None for a missing or empty log. Reads only
/// the end of the file.
pub async fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = match File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    let start = len.saturating_sub(MAX_LINE as u64 + 64);
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut end = Vec::new();
    file.read_to_end(&mut end).await?;
    let text = String::from_utf8_lossy(&end);
    Ok(text
        .trim_end_matches(['\n', '\r'])
        .rsplit('\n')
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_string))
}

/// Reads a whole log; a missing file is an empty log (the attempt has not written yet).
pub async fn read_log(path: &Path) -> std::io::Result<String> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}
