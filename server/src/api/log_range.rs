//! Which bytes of a log a request asks for: `?offset=N` (from byte N to the end, for clients
//! that follow a log), or a single HTTP byte range (`Range: bytes=N-`, `bytes=N-M`,
//! `bytes=-N`). Pure: the handler streams the answer from the file.

/// A byte range `start..end` (end exclusive) of a log of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    /// 200: `span` (all of the log, or from an `?offset`).
    Whole(Span),
    /// 206 with `Content-Range: bytes start-(end-1)/len`.
    Partial(Span),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// What to send of a log of `len` bytes. `range` is the Range header's value, if any; a range
/// in a unit other than bytes, or a list of ranges, is ignored (the whole log is sent), as HTTP
/// allows.
pub(crate) fn select(len: u64, offset: Option<u64>, range: Option<&str>) -> Selection {
    if let Some(offset) = offset {
        if offset > len {
            return Selection::Unsatisfiable;
        }
        return Selection::Whole(Span {
            start: offset,
            end: len,
        });
    }
    let whole = Selection::Whole(Span { start: 0, end: len });
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return whole;
    };
    if spec.contains(',') {
        return whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Selection::Unsatisfiable;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    let span = match (first.trim().is_empty(), last.trim().is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match number(last) {
            Some(n) if n > 0 && len > 0 => Some(Span {
                start: len.saturating_sub(n),
                end: len,
            }),
            _ => None,
        },
        (false, true) => match number(first) {
            Some(start) if start < len => Some(Span { start, end: len }),
            _ => None,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(last)) if start <= last && start < len => Some(Span {
                start,
                end: last.saturating_add(1).min(len),
            }),
            _ => None,
        },
        (true, true) => None,
    };
    span.map_or(Selection::Unsatisfiable, Selection::Partial)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(start: u64, end: u64) -> Selection {
        Selection::Partial(Span { start, end })
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(select(100, None, Some("bytes=10-19")), partial(10, 20));
        assert_eq!(select(100, None, Some("bytes=10-")), partial(10, 100));
        assert_eq!(select(100, None, Some("bytes=90-500")), partial(90, 100));
        assert_eq!(select(100, None, Some("bytes=-5")), partial(95, 100));
        assert_eq!(select(100, None, Some("bytes=-500")), partial(0, 100));
        assert_eq!(select(100, None, Some("bytes=99-99")), partial(99, 100));
        for unsatisfiable in [
            "bytes=100-",
            "bytes=100-200",
            "bytes=20-10",
            "bytes=-0",
            "bytes=-",
            "bytes=x-",
            "bytes=1-y",
            "bytes=+1-2",
            "bytes=5",
        ] {
            assert_eq!(
                select(100, None, Some(unsatisfiable)),
                Selection::Unsatisfiable,
                "{unsatisfiable}"
            );
        }
        assert_eq!(
            select(0, None, Some("bytes=0-")),
            Selection::Unsatisfiable,
            "an empty log has no byte 0"
        );
    }

    #[test]
    fn what_is_ignored_and_offsets() {
        let whole = Selection::Whole(Span { start: 0, end: 100 });
        assert_eq!(select(100, None, None), whole);
        assert_eq!(select(100, None, Some("lines=1-2")), whole);
        assert_eq!(select(100, None, Some("bytes=0-1,5-6")), whole);
        assert_eq!(
            select(100, Some(40), None),
            Selection::Whole(Span {
                start: 40,
                end: 100
            })
        );
        assert_eq!(
            select(100, Some(100), None),
            Selection::Whole(Span {
                start: 100,
                end: 100
            }),
            "a follower that is up to date gets an empty answer"
        );
        assert_eq!(select(100, Some(101), None), Selection::Unsatisfiable);
    }
}
