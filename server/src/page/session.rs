//! Signing in to the status page: an API token given once to a form, then carried by an
//! HttpOnly, SameSite=Strict cookie (Secure when the page is served over HTTPS). The cookie
//! authenticates reads and the page's own forms; each form also carries a CSRF token derived
//! from the cookie with a key only this process knows, so another site can neither read it
//! nor forge it.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use hmac::{Hmac, Mac};
use maud::html;
use rand::RngCore;
use serde::Deserialize;

use super::layout::{self, Viewer};
use super::PageState;
use crate::auth::{hash_token, Caller, TOKEN_PREFIX};

/// The cookie that carries a signed-in viewer's token.
pub const COOKIE: &str = "deploylite_session";

/// The longest token the form accepts (tokens are `dlt_` and 64 hex digits).
const MAX_TOKEN: usize = 128;

/// The session cookie's value, put in a request's extensions by the authorization middleware
/// when the cookie (not a bearer token) authenticated it.
#[derive(Debug, Clone)]
pub struct SessionCookie(pub String);

/// The key CSRF tokens are derived with: random per process, so a restart ends open forms
/// (not sessions: the cookie still holds the token).
pub struct SessionKeys {
    key: [u8; 32],
    /// Whether cookies get `Secure` (the page is reached over HTTPS).
    pub secure: bool,
}

impl SessionKeys {
    pub fn new(secure: bool) -> SessionKeys {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SessionKeys { key, secure }
    }

    /// The CSRF token of a session: an HMAC of its cookie.
    pub fn csrf_token(&self, session: &str) -> String {
        hex::encode(self.mac(session).finalize().into_bytes())
    }

    /// Whether `presented` is the CSRF token of `session` (compared in constant time).
    pub fn csrf_matches(&self, session: &str, presented: &str) -> bool {
        match hex::decode(presented) {
            Ok(bytes) => self.mac(session).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, session: &str) -> Hmac<sha2::Sha256> {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(b"deploylite-csrf\0");
        mac.update(session.as_bytes());
        mac
    }
}

/// The session token in a request's cookies, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty() && value.len() <= MAX_TOKEN)
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    error: Option<String>,
}

/// `GET /login`: the token form.
pub(crate) async fn form(Query(q): Query<LoginQuery>, viewer: Viewer) -> Response {
    let next = safe_next(q.next.as_deref());
    let main = html! {
        h1 { "Sign in" }
        p { "Paste an API token (" code { "deploylite token create --role viewer --name NAME" } "). It is kept in a cookie that scripts cannot read." }
        @if let Some(error) = q.error.as_deref() {
            p.error role="alert" { (error_text(error)) }
        }
        form.login method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            label for="token" { "API token" }
            input id="token" name="token" type="password" autocomplete="off" required
                maxlength=(MAX_TOKEN) spellcheck="false";
            button type="submit" { "Sign in" }
        }
    };
    layout::page("Sign in", &viewer, None, main)
}

fn error_text(code: &str) -> &'static str {
    match code {
        "invalid" => "That token is not valid (unknown, expired or revoked).",
        "unavailable" => "The token cannot be checked now; try again.",
        _ => "Signing in failed.",
    }
}

/// Only a local path may follow a login: never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `POST /login`: checks the token and sets the session cookie.
pub(crate) async fn login(
    State(state): State<PageState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(refused) = crate::auth::same_origin(&headers, &state.auth) {
        return (StatusCode::FORBIDDEN, refused.to_string()).into_response();
    }
    let next = safe_next(form.next.as_deref());
    let token = form.token.trim();
    let retry = |error: &str| {
        Redirect::to(&format!(
            "/login?error={error}&next={}",
            super::layout::segment(&next)
        ))
        .into_response()
    };
    if !token.starts_with(TOKEN_PREFIX) || token.len() > MAX_TOKEN {
        return retry("invalid");
    }
    match state.store.token_by_hash(&hash_token(token)).await {
        Ok(Some(identity)) => {
            tracing::info!(token = %identity.name, "signed in to the status page");
            let mut response = Redirect::to(&next).into_response();
            set_cookie(&mut response, token, state.sessions.secure);
            response
        }
        Ok(None) => retry("invalid"),
        Err(error) => {
            tracing::error!(%error, "cannot check a token at sign-in");
            retry("unavailable")
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: clears the cookie (with the session's CSRF token, so no other site can
/// sign a viewer out).
pub(crate) async fn logout(
    State(state): State<PageState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(cookie) = cookie_token(&headers) {
        if !state.sessions.csrf_matches(&cookie, &form.csrf) {
            return csrf_refused();
        }
    }
    let mut response = Redirect::to("/").into_response();
    set_cookie(&mut response, "", state.sessions.secure);
    response
}

/// The answer to a form without the session's CSRF token.
pub(crate) fn csrf_refused() -> Response {
    layout::error_page(
        StatusCode::FORBIDDEN,
        "This form's CSRF token is missing or wrong. Reload the page and try again.",
    )
}

/// Whether a form's CSRF token matches the request's session cookie. The caller must have
/// come through the cookie (forms are for browsers) or a bearer token (no ambient authority,
/// nothing to forge).
pub(crate) fn csrf_ok(
    state: &PageState,
    caller: &Caller,
    session: Option<&SessionCookie>,
    presented: &str,
) -> bool {
    match (session, caller) {
        (Some(cookie), _) => state.sessions.csrf_matches(&cookie.0, presented),
        (None, Caller::Token(_)) => true,
        (None, Caller::Anonymous) => false,
    }
}

fn set_cookie(response: &mut Response, token: &str, secure: bool) {
    let mut cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    if token.is_empty() {
        cookie.push_str("; Max-Age=0");
    }
    if secure {
        cookie.push_str("; Secure");
    }
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_belong_to_their_session_and_key() {
        let keys = SessionKeys::new(false);
        let token = keys.csrf_token("dlt_a");
        assert!(keys.csrf_matches("dlt_a", &token));
        assert!(!keys.csrf_matches("dlt_b", &token));
        assert!(!keys.csrf_matches("dlt_a", ""));
        assert!(!keys.csrf_matches("dlt_a", "not hex"));
        assert!(!SessionKeys::new(false).csrf_matches("dlt_a", &token));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; deploylite_session=dlt_x ; b=2"),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("dlt_x"));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn only_local_paths_follow_a_login() {
        assert_eq!(safe_next(Some("/runs/1")), "/runs/1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
