//! Wording and colour shared by the commands' output.

use std::io::{IsTerminal, Write};

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

/// Whether the daemon's (or a runner's) log on stderr may use ANSI colours.
pub fn stderr_colour() -> bool {
    deploylite_runner::colour_allowed(std::io::stderr().is_terminal())
}

/// Whether what goes to stdout may keep ANSI colours (a stage's coloured output, say).
pub fn stdout_colour() -> bool {
    deploylite_runner::colour_allowed(std::io::stdout().is_terminal())
}

/// Writes `text` to stdout. A reader that went away (`deploylite status | head -1`) is no
/// error: what it did not read is not wanted.
pub fn print_out(text: &str) -> std::io::Result<()> {
    match write_out(text) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes `text` to stdout and flushes it (a followed log shows each line as it comes).
pub fn write_out(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Whether `error` is stdout's reader having gone away.
pub fn closed_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
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
}
