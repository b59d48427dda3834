//! A container's output (the attach stream) into the stage log, line by line.

use bollard::container::LogOutput;

use crate::log::{LogStream, StageLog, MAX_LINE};

/// Splits the attach stream's chunks into lines, per stream.
#[derive(Default)]
pub(super) struct Lines {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Lines {
    pub(super) async fn push(&mut self, chunk: LogOutput, log: &mut StageLog) {
        let (stream, buf, bytes) = match chunk {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (LogStream::Stdout, &mut self.stdout, message)
            }
            LogOutput::StdErr { message } => (LogStream::Stderr, &mut self.stderr, message),
            LogOutput::StdIn { .. } => return,
        };
        buf.extend_from_slice(&bytes);
        while let Some(newline) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=newline).collect();
            log.line(stream, &String::from_utf8_lossy(&line)).await;
        }
        if buf.len() >= MAX_LINE {
            let line = std::mem::take(buf);
            log.line(stream, &String::from_utf8_lossy(&line)).await;
        }
    }

    /// Logs what is left without a final newline.
    pub(super) async fn flush(&mut self, log: &mut StageLog) {
        for (stream, buf) in [
            (LogStream::Stdout, &mut self.stdout),
            (LogStream::Stderr, &mut self.stderr),
        ] {
            if !buf.is_empty() {
                let line = std::mem::take(buf);
                log.line(stream, &String::from_utf8_lossy(&line)).await;
            }
        }
    }
}
