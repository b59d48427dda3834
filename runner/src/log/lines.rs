//! Reading a stage's output as lines without trusting it to print newlines: a line longer
//! than [`MAX_LINE`] is cut into pieces of that size, so a reader never holds more.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line a log holds; longer output lines are cut into lines of this size.
pub const MAX_LINE: usize = 16 * 1024;

/// Reads up to and including the next newline, or [`MAX_LINE`] bytes, whichever comes first,
/// into `buf` (cleared first). Ok(0) at the end of the stream.
pub async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    buf.clear();
    while buf.len() < MAX_LINE {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        let window = &available[..available.len().min(MAX_LINE - buf.len())];
        let (taken, done) = match window.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (window.len(), false),
        };
        buf.extend_from_slice(&window[..taken]);
        reader.consume(taken);
        if done {
            break;
        }
    }
    Ok(buf.len())
}

/// `text` in pieces of at most [`MAX_LINE`] bytes, cut at character boundaries (one empty
/// piece for an empty text).
pub(crate) fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        if current.len() <= MAX_LINE {
            rest = None;
            return Some(current);
        }
        let mut end = MAX_LINE;
        while !current.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, tail) = current.split_at(end);
        rest = Some(tail);
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_newlines_kept() {
        let input = format!("{}\nshort\n{}", "a".repeat(MAX_LINE * 2 + 5), "end");
        let mut reader = tokio::io::BufReader::with_capacity(1000, input.as_bytes());
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while read_line_bounded(&mut reader, &mut buf).await.unwrap() > 0 {
            assert!(buf.len() <= MAX_LINE);
            lines.push(String::from_utf8(buf.clone()).unwrap());
        }
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths, vec![MAX_LINE, MAX_LINE, 6, 6, 3]);
        assert_eq!(lines[3], "short\n");
        assert_eq!(lines.concat(), input);
    }

    #[test]
    fn pieces_respect_character_boundaries() {
        let text = "é".repeat(MAX_LINE);
        let cut: Vec<&str> = pieces(&text).collect();
        assert!(cut.iter().all(|p| p.len() <= MAX_LINE && !p.is_empty()));
        assert_eq!(cut.concat(), text);
        assert_eq!(pieces("").collect::<Vec<_>>(), vec![""]);
    }
}
