//! URL path segments built from names the server hands out (stage names, run ids...).
//!
//! Every byte outside RFC 3986's unreserved set is percent-encoded, so a name can never add a
//! segment (`/`), start a query (`?`) or a fragment (`#`), or smuggle in an encoded `%2F`.
//! `.` and `..` cannot be sent at all: URL parsers (reqwest's `url` crate included) resolve
//! them, even written as `%2e`, so the request would reach another route. Pipeline validation
//! rejects such stage names; this refuses the ones a run recorded before that.
//! (`Url::path_segments_mut` is no help here: it silently drops `.` and `..` segments.)

use std::fmt::Write;

use super::error::SegmentError;

/// `s` as one path segment, percent-encoded.
pub(super) fn path_segment(s: &str) -> Result<String, SegmentError> {
    match s {
        "" => {
            return Err(SegmentError(
                "an empty name cannot be a URL path segment".into(),
            ))
        }
        "." | ".." => {
            return Err(SegmentError(format!(
                "`{s}` cannot be a URL path segment: URLs resolve `.` and `..` away"
            )))
        }
        _ => {}
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing into a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_pass_through() {
        assert_eq!(path_segment("build-1.x_y~z").unwrap(), "build-1.x_y~z");
        assert_eq!(path_segment("42").unwrap(), "42");
        assert_eq!(path_segment("...").unwrap(), "...");
    }

    #[test]
    fn everything_else_is_encoded() {
        assert_eq!(path_segment("a/b").unwrap(), "a%2Fb");
        assert_eq!(path_segment("a b?c#d").unwrap(), "a%20b%3Fc%23d");
        assert_eq!(path_segment("%2e%2e").unwrap(), "%252e%252e");
        assert_eq!(path_segment("é\n").unwrap(), "%C3%A9%0A");
    }

    #[test]
    fn dot_segments_and_empty_names_are_refused() {
        for name in [".", ".."] {
            let error = path_segment(name).unwrap_err().to_string();
            assert!(error.contains("resolve `.` and `..` away"), "{error}");
        }
        assert!(path_segment("").is_err());
    }

    /// What the encoded segment becomes once reqwest parses the URL: still one segment, decoding
    /// back to the name.
    #[test]
    fn survives_url_parsing_as_one_segment() {
        for name in ["a/b", "x?y", "p#q", "..%2F", "%2e%2e", "a/../b", "sp ace"] {
            let url = format!("http://h/leases/{}/log", path_segment(name).unwrap());
            let parsed = reqwest::Url::parse(&url).unwrap();
            let segments: Vec<&str> = parsed.path_segments().unwrap().collect();
            assert_eq!(segments.len(), 3, "{name}: {parsed}");
            assert_eq!(segments[2], "log", "{name}: {parsed}");
            assert!(
                parsed.query().is_none() && parsed.fragment().is_none(),
                "{name}"
            );
            let decoded = percent_decode(segments[1]);
            assert_eq!(decoded, name);
        }
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
}
