//! A window of a log file: at most `max_lines` whole lines (and `max_bytes`) ending at a byte
//! offset, found by reading backwards from that offset in blocks. The cost depends on the
//! window, never on the log's length: a page of a million-line log reads what it shows.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much is read per step backwards.
const BLOCK: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Where the line starts in the file: its anchor.
    pub offset: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    /// The first byte shown (0: the log's start is on this page).
    pub start: u64,
    /// Just past the last line shown; the live tail goes on from here.
    pub end: u64,
    /// The file's length when read.
    pub len: u64,
    pub lines: Vec<Line>,
}

/// The lines ending at `end` (None: the end of the file's complete lines). A line still being
/// written (no newline yet) is left for the live tail.
pub fn read(
    path: &Path,
    end: Option<u64>,
    max_lines: usize,
    max_bytes: u64,
) -> std::io::Result<Window> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Window::default()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut end = end.unwrap_or(len).min(len);
    // `buf` holds the bytes [pos, end), read backwards a block at a time.
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = end;
    let mut finished_line = false;
    loop {
        if finished_line {
            let newlines = buf.iter().filter(|b| **b == b'\n').count();
            // One newline more than lines wanted: it marks where the first line starts.
            if newlines > max_lines || buf.len() as u64 >= max_bytes {
                break;
            }
        }
        if pos == 0 {
            break;
        }
        let step = BLOCK.min(pos);
        pos -= step;
        let mut block = vec![0u8; step as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        if !finished_line {
            // A line still being written (no newline yet) is left for the live tail.
            if let Some(last) = buf.iter().rposition(|b| *b == b'\n') {
                end -= (buf.len() - (last + 1)) as u64;
                buf.truncate(last + 1);
                finished_line = true;
            }
        }
    }
    if !finished_line {
        buf.clear();
        end = pos;
    }
    let start_index = first_line(&buf, pos == 0, max_lines, max_bytes);
    let start = pos + start_index as u64;
    let mut lines = Vec::new();
    let mut offset = start;
    for raw in buf[start_index..].split_inclusive(|b| *b == b'\n') {
        let text = String::from_utf8_lossy(raw)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        lines.push(Line { offset, text });
        offset += raw.len() as u64;
    }
    Ok(Window {
        start,
        end,
        len,
        lines,
    })
}

/// Where in `buf` (whole lines, ending with a newline) the window starts: the earliest line
/// start keeping at most `max_lines` lines and `max_bytes` bytes (always at least the last
/// line). `at_file_start`: `buf` begins the file, so its first byte starts a line.
fn first_line(buf: &[u8], at_file_start: bool, max_lines: usize, max_bytes: u64) -> usize {
    let Some(body) = buf.len().checked_sub(1) else {
        return 0;
    };
    let mut best = buf.len();
    let mut lines = 0usize;
    // Line starts, from the last line backwards: after each newline, then the file's start.
    let starts = buf[..body]
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .chain(at_file_start.then_some(0));
    for start in starts {
        lines += 1;
        let within = lines <= max_lines && (buf.len() - start) as u64 <= max_bytes;
        if !within && best < buf.len() {
            break;
        }
        best = start;
        if !within {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn log(lines: usize, partial: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        for i in 0..lines {
            writeln!(file, "line {i}").expect("write");
        }
        write!(file, "{partial}").expect("write");
        file
    }

    fn texts(w: &Window) -> Vec<&str> {
        w.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn a_short_log_is_shown_whole_without_its_unfinished_line() {
        let file = log(3, "half");
        let w = read(file.path(), None, 10, 1 << 20).expect("read");
        assert_eq!(texts(&w), vec!["line 0", "line 1", "line 2"]);
        assert_eq!((w.start, w.end), (0, 21));
        assert_eq!(w.len, 25);
        assert_eq!(w.lines[1].offset, 7);
    }

    #[test]
    fn a_long_log_shows_its_last_lines_read_from_the_end() {
        let file = log(100_000, "");
        let w = read(file.path(), None, 5, 1 << 20).expect("read");
        assert_eq!(
            texts(&w),
            vec![
                "line 99995",
                "line 99996",
                "line 99997",
                "line 99998",
                "line 99999"
            ]
        );
        assert_eq!(w.end, w.len);
        // The page before ends where this one starts.
        let before = read(file.path(), Some(w.start), 2, 1 << 20).expect("read");
        assert_eq!(texts(&before), vec!["line 99993", "line 99994"]);
        assert_eq!(before.end, w.start);
    }

    #[test]
    fn the_byte_budget_bounds_a_window_of_long_lines() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        for i in 0..50 {
            writeln!(file, "{i:02}{}", "x".repeat(998)).expect("write");
        }
        let w = read(file.path(), None, 1000, 10_000).expect("read");
        assert!(w.lines.len() <= 10, "{} lines", w.lines.len());
        assert!(w.end - w.start <= 10_000);
        assert!(w.lines[0]
            .text
            .starts_with(&format!("{:02}", 50 - w.lines.len())));
    }

    #[test]
    fn a_missing_or_empty_log_is_an_empty_window() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(
            read(&dir.path().join("none.log"), None, 5, 100).expect("read"),
            Window::default()
        );
        let file = log(0, "no newline yet");
        let w = read(file.path(), None, 5, 100).expect("read");
        assert!(w.lines.is_empty());
        assert_eq!(w.end, 0);
    }
}
