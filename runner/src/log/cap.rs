//! The size limit of one attempt's log. A stage may print without end; its log keeps the first
//! bytes as they come (readable while the stage runs) and the last bytes in a ring that is
//! written, after a line saying how much was dropped in between, when the attempt ends.
//! Memory stays bounded by the ring, whatever the stage prints.

use std::collections::VecDeque;

/// What the log keeps when nothing says otherwise (`limits.log_bytes`).
pub const DEFAULT_LOG_BYTES: u64 = deploylite_protocol::DEFAULT_LOG_BYTES;
/// The smallest limit accepted: room for a head, a tail and the marker line.
pub const MIN_LOG_BYTES: u64 = 64 * 1024;
/// The most of the tail held in memory until the attempt ends: a daemon runs many attempts
/// at once, and each holds its ring.
const MAX_TAIL: u64 = 4 * 1024 * 1024;

/// Where a record goes.
pub(super) enum Placement {
    /// Into the log now.
    Head,
    /// Into the tail ring, written by [`LogCap::finish`].
    Tail,
}

pub(super) struct LogCap {
    limit: u64,
    head_limit: u64,
    /// Bytes of the head written so far (the file's size when it was opened included).
    written: u64,
    tail: Option<Tail>,
}

struct Tail {
    ring: VecDeque<u8>,
    room: usize,
    dropped: u64,
}

impl LogCap {
    pub(super) fn new(limit: u64, already_written: u64) -> LogCap {
        let limit = limit.max(MIN_LOG_BYTES);
        let tail = (limit / 2).min(MAX_TAIL);
        LogCap {
            limit,
            head_limit: limit - tail,
            written: already_written,
            tail: None,
        }
    }

    /// Bytes of the head written so far.
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    /// Decides where `record` (one formatted line) goes; a tail record is kept here.
    pub(super) fn place(&mut self, record: &str) -> Placement {
        let len = record.len() as u64;
        if self.tail.is_none() && self.written + len <= self.head_limit {
            self.written += len;
            return Placement::Head;
        }
        let room = usize::try_from(self.limit - self.head_limit).unwrap_or(usize::MAX);
        let tail = self.tail.get_or_insert_with(|| Tail {
            ring: VecDeque::new(),
            room,
            dropped: 0,
        });
        tail.push(record.as_bytes());
        Placement::Tail
    }

    /// The marker (when something was dropped) and the tail's records, in order; the head
    /// budget is spent, so anything later goes to a new tail.
    pub(super) fn finish(&mut self) -> Option<(Option<String>, String)> {
        let mut tail = self.tail.take()?;
        self.written = self.written.max(self.head_limit);
        let marker = (tail.dropped > 0).then(|| {
            format!(
                "log limit reached: {} bytes of output dropped here (the log keeps its first \
                 {} and last {} bytes; limits.log_bytes = {})",
                tail.dropped,
                self.head_limit,
                self.limit - self.head_limit,
                self.limit
            )
        });
        let records = String::from_utf8_lossy(tail.ring.make_contiguous()).into_owned();
        Some((marker, records))
    }
}

impl Tail {
    fn push(&mut self, record: &[u8]) {
        if record.len() > self.room {
            self.dropped += record.len() as u64;
            return;
        }
        while self.ring.len() + record.len() > self.room {
            // Records end with a newline: drop whole records from the front.
            let (front, back) = self.ring.as_slices();
            let end = match front.iter().position(|b| *b == b'\n') {
                Some(at) => at + 1,
                None => back
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(self.ring.len(), |at| front.len() + at + 1),
            };
            self.ring.drain(..end);
            self.dropped += end as u64;
        }
        self.ring.extend(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_head_and_the_tail_and_counts_what_it_drops() {
        let mut cap = LogCap::new(MIN_LOG_BYTES, 0);
        let record = format!("{}\n", "x".repeat(99));
        let mut head = 0u64;
        for i in 0..10_000 {
            let record = if i == 9_999 {
                "last\n".to_string()
            } else {
                record.clone()
            };
            if matches!(cap.place(&record), Placement::Head) {
                head += record.len() as u64;
            }
        }
        assert_eq!(head, MIN_LOG_BYTES / 2 / 100 * 100);
        let (marker, tail) = cap.finish().expect("a tail");
        let marker = marker.expect("something was dropped");
        assert!(tail.ends_with("last\n"), "{tail}");
        assert!(tail.len() as u64 <= MIN_LOG_BYTES / 2);
        let dropped: u64 = marker
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse().ok())
            .expect("a count");
        assert_eq!(head + dropped + tail.len() as u64, 9_999 * 100 + 5);
    }

    #[test]
    fn nothing_is_dropped_below_the_limit() {
        let mut cap = LogCap::new(1 << 20, 0);
        assert!(matches!(cap.place("a\n"), Placement::Head));
        assert!(cap.finish().is_none());
    }
}
