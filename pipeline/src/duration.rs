//! Human durations: `500ms`, `30s`, `15m`, `1h30m`, `2d`.
//!
//! Grammar: one or more `<digits><unit>` groups with no spaces, unit one of `ms`, `s`, `m`,
//! `h`, `d`; groups add up (`1h30m` = 90 minutes). A bare integer (`30`) means seconds, because
//! `timeout: 30` is what people write and there is no other sensible reading. Fractions
//! (`1.5h`) and negative values are rejected.

use std::time::Duration;

/// A duration outside the grammar, holding the text given. Its message is the text users see;
/// `parse.rs` shows it verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{0}`: expected e.g. 500ms, 30s, 15m, 1h30m")]
pub struct InvalidDuration(pub String);

fn invalid(s: &str) -> InvalidDuration {
    InvalidDuration(s.to_string())
}

/// Parse a duration such as `1h30m`. See the module docs for the grammar.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err(invalid(s));
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| invalid(s));
    }
    let mut total_ms: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(invalid(s));
        }
        // Digits are ASCII, so this slice is on char boundaries.
        let n: u64 = s[start..i].parse().map_err(|_| invalid(s))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor: u64 = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid(s)),
        };
        total_ms = n
            .checked_mul(factor)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| invalid(s))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Format a duration for humans: `450ms`, `12.3s`, `1m5s`, `2h`, `1d3h`.
/// Below one minute one decimal of seconds is shown; above it, whole units only.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let tenths = ms / 100;
        return if tenths % 10 == 0 {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let secs = d.as_secs();
    let (days, hours, mins, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(days, "d"), (hours, "h"), (mins, "m"), (s, "s")] {
        if v > 0 {
            out.push_str(&v.to_string());
            out.push_str(unit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok: &[(&str, u64)] = &[
            ("500ms", 500),
            ("30s", 30_000),
            ("30", 30_000),
            ("0", 0),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1m30s250ms", 90_250),
            ("0s", 0),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(*ms)), "{s}");
        }
        for s in [
            "",
            "15x",
            "1.5h",
            "-1s",
            "h",
            "1 h",
            "1h 30m",
            "ms",
            "99999999999999999999s",
            "1hh",
            "١s",
        ] {
            assert_eq!(parse_duration(s), Err(invalid(s)), "{s}");
        }
        assert_eq!(
            parse_duration("15x").unwrap_err().to_string(),
            "invalid duration `15x`: expected e.g. 500ms, 30s, 15m, 1h30m"
        );
    }

    #[test]
    fn format_table() {
        for (ms, s) in [
            (0, "0ms"),
            (450, "450ms"),
            (1_000, "1s"),
            (12_340, "12.3s"),
            (65_000, "1m5s"),
            (7_200_000, "2h"),
            (97_200_000, "1d3h"),
            (5_400_000, "1h30m"),
        ] {
            assert_eq!(format_duration(Duration::from_millis(ms)), s);
        }
    }
}
