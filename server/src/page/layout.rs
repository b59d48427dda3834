//! The frame every page shares (head, navigation, who is logged in), the response headers,
//! and the small pieces pages repeat: a status as text and colour, times, durations.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use deploylite_reconciler::store::Role;
use maud::{html, Markup, DOCTYPE};

use super::session::SessionCookie;
use super::PageState;
use crate::auth::Caller;

/// Scripts and styles come only from this server; status colours in logs are inline styles.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Who is looking at a page, and the CSRF token their forms carry.
pub(crate) struct Viewer {
    pub caller: Caller,
    /// Set when the caller logged in through the form (their cookie carries the session).
    pub csrf: Option<String>,
}

impl Viewer {
    /// Operators (and admins) logged in through the form get the state-changing buttons.
    pub fn can_operate(&self) -> bool {
        self.csrf.is_some() && self.caller.role().is_some_and(|r| r >= Role::Operator)
    }
}

impl FromRequestParts<PageState> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PageState,
    ) -> Result<Self, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous);
        let csrf = parts
            .extensions
            .get::<SessionCookie>()
            .map(|cookie| state.sessions.csrf_token(&cookie.0));
        Ok(Viewer { caller, csrf })
    }
}

/// A whole page: `title`, the viewer's corner, and `main`. `live` tells the script what to
/// follow (`runs`, `run:<id>`, `runners`), or nothing.
pub(crate) fn page(title: &str, viewer: &Viewer, live: Option<&str>, main: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                link rel="icon" href="data:,";
                title { (title) " · DeployLite" }
                link rel="stylesheet" href="/static/page.css";
                script src="/static/page.js" defer {}
            }
            body data-live=[live] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Main" {
                        a.brand href="/" { "DeployLite" }
                        a href="/" { "Repositories" }
                        a href="/environments" { "Environments" }
                        a href="/runners" { "Runners" }
                    }
                    (who(viewer))
                }
                main id="main" { (main) }
            }
        }
    };
    respond(StatusCode::OK, markup)
}

fn who(viewer: &Viewer) -> Markup {
    html! {
        div.who {
            @match &viewer.caller {
                Caller::Token(token) => {
                    span { "Signed in as " strong { (token.name) } " (" (token.role) ")" }
                    @if let Some(csrf) = &viewer.csrf {
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                Caller::Anonymous => {
                    span { "Anonymous (read only)" }
                    a href="/login" { "Sign in" }
                }
            }
        }
    }
}

/// A page of its own for an error.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { (status.as_u16()) " · DeployLite" }
                link rel="stylesheet" href="/static/page.css";
            }
            body {
                header.top { nav aria-label="Main" { a.brand href="/" { "DeployLite" } } }
                main id="main" {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p.error role="alert" { (message) }
                    p { a href="/" { "Back to the repositories" } }
                }
            }
        }
    };
    respond(status, markup)
}

/// HTML with the page's security headers.
pub(crate) fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A status as a word with a symbol and a colour class: never colour alone.
pub(crate) fn status(status: &str) -> Markup {
    html! {
        span class={ "status s-" (status) } {
            span aria-hidden="true" { (symbol(status)) " " }
            (status)
        }
    }
}

pub(crate) fn symbol(status: &str) -> &'static str {
    match status {
        "success" | "online" | "succeeded" | "in_sync" | "healthy" => "✓",
        "offline" | "waiting" | "out_of_sync" => "○",
        "drifted" | "degraded" | "rolled_back" | "rejected" => "✗",
        "deploying" | "verifying" | "rolling_back" | "progressing" => "●",
        "superseded" => "↷",
        "revoked" => "⊘",
        "failed" | "error" => "✗",
        "running" => "●",
        "queued" => "○",
        "cancelled" => "⊘",
        "skipped" => "↷",
        _ => "·",
    }
}

/// A Unix-ms time as `<time>`: UTC, to the second.
pub(crate) fn time(ms: Option<i64>) -> Markup {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => html! {
            time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
                (t.format("%Y-%m-%d %H:%M:%S UTC"))
            }
        },
        None => html! { "—" },
    }
}

/// How long something took (or has taken until `now`, when it is still going).
pub(crate) fn duration(started: Option<i64>, finished: Option<i64>, now: i64) -> String {
    let Some(started) = started else {
        return "—".to_string();
    };
    let ms = finished.unwrap_or(now).saturating_sub(started).max(0);
    let seconds = ms / 1000;
    if seconds < 60 {
        format!("{}.{}s", seconds, (ms % 1000) / 100)
    } else if seconds < 3600 {
        format!("{}m {:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{}h {:02}m", seconds / 3600, (seconds % 3600) / 60)
    }
}

/// `refs/heads/main` → `main`, `refs/tags/v1` → `v1`; other refs as they are.
pub(crate) fn short_ref(git_ref: &str) -> &str {
    git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(git_ref)
}

pub(crate) fn short_commit(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// A path segment, percent-encoded (repository, stage and pipeline names are plain, but a
/// link must not break on a name the config allows).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(Some(0), Some(1_250), 0), "1.2s");
        assert_eq!(duration(Some(0), Some(62_000), 0), "1m 02s");
        assert_eq!(duration(Some(0), None, 3_600_000 + 120_000), "1h 02m");
        assert_eq!(duration(None, None, 5), "—");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("web app/ä"), "web%20app%2F%C3%A4");
        assert_eq!(segment("unit-tests_2.x"), "unit-tests_2.x");
    }
}
