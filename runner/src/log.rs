//! Stage logs: one text file per stage attempt, one timestamped line per output line, flushed
//! line by line so that the log API can serve it while the stage runs.

use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::{AsyncWriteExt, BufWriter};

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

pub struct StageLog {
    path: PathBuf,
    file: BufWriter<File>,
    /// Mirror every line to our stdout as `[stage] line` (used by `deploylite run`).
    echo_prefix: Option<String>,
}

impl StageLog {
    /// Creates (or appends to) the log at `path`, creating parent directories.
    pub async fn create(path: &Path) -> std::io::Result<StageLog> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        Ok(StageLog {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            echo_prefix: None,
        })
    }

    pub fn echo_to_stdout(&mut self, prefix: String) {
        self.echo_prefix = Some(prefix);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line. A failing log write never fails the stage: the error is traced instead.
    pub async fn line(&mut self, stream: LogStream, text: &str) {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let text = text.trim_end_matches(['\n', '\r']);
        let record = format!("{now} {} {text}\n", stream.tag());
        if let Some(prefix) = &self.echo_prefix {
            println!("[{prefix}] {text}");
        }
        let result = async {
            self.file.write_all(record.as_bytes()).await?;
            self.file.flush().await
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(path = %self.path.display(), %error, "cannot write stage log");
        }
    }

    pub async fn system(&mut self, text: &str) {
        self.line(LogStream::System, text).await;
    }
}

/// Reads a whole log; a missing file is an empty log (the attempt has not written yet).
pub async fn read_log(path: &Path) -> std::io::Result<String> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}
