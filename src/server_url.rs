//! `--server` / `DEPLOYLITE_SERVER`: the daemon's base URL, checked once when the command line
//! is read, so that a typo is reported as what it is rather than as an unreachable daemon.

/// What a server URL looks like, for error messages.
const EXAMPLE: &str = "e.g. http://127.0.0.1:8080 or localhost:8080";

/// The base URL (`http://localhost:8080`, no trailing slash) for `text`; `http://` is assumed
/// when `text` has no scheme. The error says exactly what is wrong (clap shows it after the
/// value).
pub fn parse_server_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("the daemon's URL is empty ({EXAMPLE})"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{e} ({EXAMPLE})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme `{}` is not supported: use http:// or https:// ({EXAMPLE})",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host name ({EXAMPLE})"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials do not go in the URL: give a token with --token-file or DEPLOYLITE_TOKEN"
                .into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "the daemon's URL takes no `?query` or `#fragment` ({EXAMPLE})"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_a_scheme() {
        let ok = |t: &str| parse_server_url(t).unwrap();
        assert_eq!(ok("localhost:8080"), "http://localhost:8080");
        assert_eq!(ok("http://127.0.0.1:8080/"), "http://127.0.0.1:8080");
        assert_eq!(
            ok("https://ci.example.com/deploylite/"),
            "https://ci.example.com/deploylite"
        );
        assert_eq!(ok("[::1]:8080"), "http://[::1]:8080");
        assert_eq!(ok(" ci.example.com "), "http://ci.example.com");
    }

    #[test]
    fn what_is_wrong_with_a_bad_url() {
        let err = |t: &str| parse_server_url(t).unwrap_err();
        assert_eq!(
            err("localhost:99999"),
            "invalid port number (e.g. http://127.0.0.1:8080 or localhost:8080)"
        );
        assert_eq!(
            err("ftp://host"),
            "the scheme `ftp` is not supported: use http:// or https:// (e.g. http://127.0.0.1:8080 or localhost:8080)"
        );
        assert_eq!(
            err(""),
            "the daemon's URL is empty (e.g. http://127.0.0.1:8080 or localhost:8080)"
        );
        assert_eq!(
            err("http://"),
            "empty host (e.g. http://127.0.0.1:8080 or localhost:8080)"
        );
        assert_eq!(
            err("http://u:p@host"),
            "credentials do not go in the URL: give a token with --token-file or DEPLOYLITE_TOKEN"
        );
        assert_eq!(
            err("host:8080?x=1"),
            "the daemon's URL takes no `?query` or `#fragment` (e.g. http://127.0.0.1:8080 or localhost:8080)"
        );
    }
}
