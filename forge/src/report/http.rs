//! Raw forge requests through octocrab's HTTP stack (rustls over aws-lc-rs, timeouts), for
//! GitHub and GitLab alike: we need the status and the rate-limit headers of every answer, so
//! every call goes through `_get/_post/_patch/_put` and is read here.

use std::fmt;
use std::time::Duration;

use deploylite_reconciler::store::StoreError;
use octocrab::service::middleware::retry::RetryConfig;
use octocrab::Octocrab;
use serde_json::Value;

/// Why a delivery did not go through.
#[derive(Debug)]
pub(crate) enum DeliveryError {
    /// The forge answered with an error status.
    Http {
        status: u16,
        message: String,
        /// `Retry-After` in seconds.
        retry_after: Option<u64>,
        /// `x-ratelimit-remaining`.
        remaining: Option<u64>,
        /// `x-ratelimit-reset` (epoch seconds).
        reset: Option<i64>,
    },
    /// No answer: connection refused, timeout, TLS, ...
    Transport(String),
    /// The forge answered 2xx with something we cannot use.
    Unexpected(String),
    /// Our side: the store.
    Store(StoreError),
    /// The forge configuration cannot work (an unreadable private key, a bad URL).
    Setup(String),
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::Http {
                status, message, ..
            } if message.is_empty() => write!(f, "HTTP {status}"),
            DeliveryError::Http {
                status, message, ..
            } => write!(f, "HTTP {status}: {message}"),
            DeliveryError::Transport(m) => write!(f, "cannot reach the forge: {m}"),
            DeliveryError::Unexpected(m) => write!(f, "unexpected answer: {m}"),
            DeliveryError::Store(e) => write!(f, "{e}"),
            DeliveryError::Setup(m) => write!(f, "forge configuration: {m}"),
        }
    }
}

impl From<StoreError> for DeliveryError {
    fn from(e: StoreError) -> Self {
        DeliveryError::Store(e)
    }
}

impl DeliveryError {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for `base_url` without octocrab's own retries (the outbox retries, with backoff),
/// with connect and read timeouts so that a hanging forge cannot hold a report forever.
pub(crate) type Builder = octocrab::OctocrabBuilder<
    octocrab::NoSvc,
    octocrab::DefaultOctocrabBuilderConfig,
    octocrab::NoAuth,
    octocrab::NotLayerReady,
>;

pub(crate) fn builder(base_url: &str, timeout: Duration) -> Result<Builder, DeliveryError> {
    Octocrab::builder()
        .base_uri(base_url.trim_end_matches('/'))
        .map_err(|e| DeliveryError::Setup(format!("invalid API URL `{base_url}`: {e}")))
        .map(|b| {
            b.add_retry_config(RetryConfig::None)
                .set_connect_timeout(Some(timeout.min(Duration::from_secs(10))))
                .set_read_timeout(Some(timeout))
                .set_write_timeout(Some(timeout))
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    Post,
    Patch,
    Put,
}

/// Sends one request to `path` (relative to the client's base URL, so that octocrab attaches
/// its credentials) and returns the JSON answer of a 2xx, or the error with its retry headers.
pub(crate) async fn call(
    crab: &Octocrab,
    verb: Verb,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, DeliveryError> {
    let response = match verb {
        Verb::Get => crab._get(path).await,
        Verb::Post => crab._post(path, body).await,
        Verb::Patch => crab._patch(path, body).await,
        Verb::Put => crab._put(path, body).await,
    }
    .map_err(from_octocrab)?;
    let status = response.status().as_u16();
    let (retry_after, remaining, reset) = rate_limit(response.headers());
    let text = crab.body_to_string(response).await.map_err(from_octocrab)?;
    if (200..300).contains(&status) {
        return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    Err(DeliveryError::Http {
        status,
        message: error_message(&text),
        retry_after,
        remaining,
        reset,
    })
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// `Retry-After`, the requests remaining and the reset time of an answer. GitHub sends
/// `x-ratelimit-*`; GitLab sends `ratelimit-*` (and `Retry-After` on a 429).
fn rate_limit(headers: &http::HeaderMap) -> (Option<u64>, Option<u64>, Option<i64>) {
    let retry_after = header(headers, "retry-after").and_then(|v| v.parse().ok());
    let remaining = header(headers, "x-ratelimit-remaining")
        .or_else(|| header(headers, "ratelimit-remaining"))
        .and_then(|v| v.parse().ok());
    let reset = header(headers, "x-ratelimit-reset")
        .or_else(|| header(headers, "ratelimit-reset"))
        .and_then(|v| v.parse().ok());
    (retry_after, remaining, reset)
}

/// One page of a listing, fetched with a conditional request.
#[derive(Debug)]
pub(crate) enum Page {
    /// 304: the page is as it was when it had the ETag sent.
    NotModified,
    Fresh {
        body: Value,
        /// The page's `ETag`, to send as `If-None-Match` next time.
        etag: Option<String>,
        /// Another page follows: GitHub's `Link: <…>; rel="next"`, GitLab's `x-next-page` (GitLab
        /// sends both; https://docs.gitlab.com/api/rest/#pagination).
        next: bool,
    },
}

/// GETs one page of a listing, sending `If-None-Match: etag` when there is one. A 304 costs no
/// rate limit on GitHub (https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api#use-conditional-requests-if-appropriate).
pub(crate) async fn get_page(
    crab: &Octocrab,
    path: &str,
    etag: Option<&str>,
) -> Result<Page, DeliveryError> {
    let mut headers = http::header::HeaderMap::new();
    if let Some(etag) = etag {
        let value = http::header::HeaderValue::from_str(etag)
            .map_err(|_| DeliveryError::Unexpected("the forge sent an unusable ETag".into()))?;
        headers.insert(http::header::IF_NONE_MATCH, value);
    }
    let response = crab
        ._get_with_headers(path, Some(headers))
        .await
        .map_err(from_octocrab)?;
    let status = response.status().as_u16();
    if status == 304 {
        return Ok(Page::NotModified);
    }
    let headers = response.headers();
    let page_etag = header(headers, "etag").filter(|e| !e.is_empty());
    let next = header(headers, "link").is_some_and(|l| l.contains("rel=\"next\""))
        || header(headers, "x-next-page").is_some_and(|n| !n.is_empty());
    let (retry_after, remaining, reset) = rate_limit(headers);
    let text = crab.body_to_string(response).await.map_err(from_octocrab)?;
    if !(200..300).contains(&status) {
        return Err(DeliveryError::Http {
            status,
            message: error_message(&text),
            retry_after,
            remaining,
            reset,
        });
    }
    let body = serde_json::from_str(&text)
        .map_err(|e| DeliveryError::Unexpected(format!("the listing is not JSON: {e}")))?;
    Ok(Page::Fresh {
        body,
        etag: page_etag,
        next,
    })
}

/// The forge's own words (`message` on GitHub, `message`/`error` on GitLab), kept short.
fn error_message(text: &str) -> String {
    let message = match serde_json::from_str::<Value>(text) {
        Ok(v) => match v.get("message").or_else(|| v.get("error")) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        },
        Err(_) => text.trim().to_string(),
    };
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    message
}

pub(crate) fn from_octocrab(e: octocrab::Error) -> DeliveryError {
    if let octocrab::Error::GitHub { source, .. } = &e {
        let header = |name: &str| {
            source
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        return DeliveryError::Http {
            status: source.status_code.as_u16(),
            message: source.message.chars().take(200).collect(),
            retry_after: header("retry-after").and_then(|v| u64::try_from(v).ok()),
            remaining: header("x-ratelimit-remaining").and_then(|v| u64::try_from(v).ok()),
            reset: header("x-ratelimit-reset")
                .or(source.rate_limit_reset.and_then(|r| i64::try_from(r).ok())),
        };
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    DeliveryError::Transport(message.chars().take(300).collect())
}

/// A path segment, percent-encoded (GitLab project paths become `group%2Fproject`).
pub(crate) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("group/sub/project"), "group%2Fsub%2Fproject");
        assert_eq!(encode_segment("my-app_1.x"), "my-app_1.x");
    }

    #[test]
    fn error_messages_are_short_and_plain() {
        assert_eq!(
            error_message(r#"{"message":"Bad credentials"}"#),
            "Bad credentials"
        );
        assert_eq!(error_message("oops\n"), "oops");
        assert_eq!(error_message(&"x".repeat(500)).len(), 200);
    }
}
