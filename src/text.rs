//! Wording and colour shared by the commands' output.

use std::io::IsTerminal;

/// `1 run`, `2 runs`, `0 runs`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {}", plural(noun))
    }
}

fn plural(noun: &str) -> String {
    if noun.ends_with('s') || noun.ends_with("sh") || noun.ends_with("ch") || noun.ends_with('x') {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// Whether the daemon's (or a runner's) log on stderr may use ANSI colours: only on a
/// terminal, and never when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>).
pub fn stderr_colour() -> bool {
    colour(std::io::stderr().is_terminal())
}

/// Whether what goes to stdout may keep ANSI colours (a stage's coloured output, say).
pub fn stdout_colour() -> bool {
    colour(std::io::stdout().is_terminal())
}

fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` without ANSI escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ESC \`,
/// and two-character escapes).
pub fn strip_ansi(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\u{1b}') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates, up to a final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_nouns() {
        assert_eq!(count(0, "run"), "0 runs");
        assert_eq!(count(1, "run"), "1 run");
        assert_eq!(count(2, "stage"), "2 stages");
        assert_eq!(count(1, "problem"), "1 problem");
        assert_eq!(count(3, "match"), "3 matches");
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(strip_ansi("\u{1b}[1;31merror\u{1b}[0m: x"), "error: x");
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}text"), "text");
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
