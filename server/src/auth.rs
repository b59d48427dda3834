//! Who may call what. One middleware over the whole router: it resolves the caller from
//! `Authorization: Bearer <token>`, checks the route's required role (one table, [`access`]),
//! refuses cross-origin state changes, and writes every state-changing call to the audit log.
//!
//! Webhooks and the runner protocol carry their own credentials (signatures, runner
//! credentials) and are checked by their handlers, not here.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use deploylite_reconciler::store::{AuditRecord, Role, Store, TokenIdentity};
use hmac::digest::Digest;
use rand::RngCore;

/// API tokens look like `dlt_<64 hex>`; runner credentials are `dlr_…`.
pub const TOKEN_PREFIX: &str = "dlt_";

/// A new API token: 256 random bits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Reads (runs, logs, runners) without a token.
    pub anonymous_read: bool,
    /// `Host` values a state-changing request may carry (`127.0.0.1:8080`, the public URL's
    /// authority). Empty: any host (a wildcard listen address without `public_url`).
    pub hosts: Vec<String>,
}

impl AuthConfig {
    /// The hosts this server answers to: `public_url`'s authority, and the listen address
    /// (with `localhost` and both loopback spellings when it is a loopback address). A
    /// wildcard listen address names no host of its own.
    pub fn hosts_for(listen: std::net::SocketAddr, public_url: Option<&str>) -> Vec<String> {
        let mut hosts = Vec::new();
        if let Some(authority) = public_url.and_then(url_authority) {
            hosts.push(authority);
        }
        let port = listen.port();
        let ip = listen.ip();
        if ip.is_loopback() {
            hosts.extend([
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ]);
        } else if !ip.is_unspecified() {
            hosts.push(listen.to_string());
        } else if hosts.is_empty() {
            return Vec::new();
        }
        hosts
    }
}

/// `https://ci.example.com/x` → `ci.example.com`; the authority as a `Host` header carries it.
fn url_authority(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    (!authority.is_empty()).then(|| authority.to_ascii_lowercase())
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks.
    Public,
    /// Webhooks and the runner protocol: their handlers check their own credentials.
    OwnCredentials,
    /// A token of at least this role (reads: or anonymous, when allowed).
    Role(Role),
}

/// The one table of who may call what. A state-changing route that is not listed needs an
/// admin token: a new route is closed until it is given its role here.
pub fn access(method: &Method, route: &str) -> Access {
    // The sign-in form and the page's stylesheet and script; `/login` and `/logout` check
    // the request's origin (and `/logout` its CSRF token) themselves.
    if matches!(
        route,
        "/healthz" | "/readyz" | "/login" | "/logout" | "/static/page.css" | "/static/page.js"
    ) {
        return Access::Public;
    }
    if route.starts_with("/webhooks/")
        || route.starts_with("/api/v1/runner/")
        || route == "/api/v1/runners/register"
    {
        return Access::OwnCredentials;
    }
    let read = matches!(*method, Method::GET | Method::HEAD);
    // Reads (runs, logs, runners, repositories and their health) need a viewer.
    match route {
        "/api/v1/tokens" | "/api/v1/tokens/{name}/revoke" | "/api/v1/audit" => {
            Access::Role(Role::Admin)
        }
        _ if read => Access::Role(Role::Viewer),
        "/api/v1/runs/{id}/cancel"
        | "/api/v1/runs/{id}/approve"
        | "/api/v1/runs/{id}/rerun"
        | "/runs/{id}/cancel"
        | "/runs/{id}/approve"
        | "/runs/{id}/rerun"
        // Deploy, rollback, hold and release (`{repo}/{env}/{action}`), and approvals.
        | "/api/v1/environments/{*path}"
        | "/api/v1/deployments/{id}/approve" => Access::Role(Role::Operator),
        _ => Access::Role(Role::Admin),
    }
}

/// The caller of a request, for handlers that record who did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Token(TokenIdentity),
}

impl Caller {
    /// How the audit log and approvals name the caller.
    pub fn label(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".to_string(),
            Caller::Token(t) => format!("token:{}", t.name),
        }
    }

    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Anonymous => None,
            Caller::Token(t) => Some(t.role),
        }
    }
}

#[derive(Clone)]
pub struct Authorizer {
    pub store: Store,
    pub config: Arc<AuthConfig>,
}

/// A refusal: its status and message, made a response only once decided.
type Refusal = (StatusCode, String);

fn refuse(status: StatusCode, message: String) -> Refusal {
    (status, message)
}

fn refusal_response((status, message): Refusal) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let token = text
        .strip_prefix("Bearer ")
        .ok_or("expected `Authorization: Bearer <token>`")?
        .trim();
    Ok(Some(token.to_string()))
}

/// A state-changing request must come from this server's own pages or from a non-browser
/// client: an `Origin` naming another site, or a `Host` this server does not answer to (DNS
/// rebinding), is refused whatever its token.
pub(crate) fn same_origin(headers: &HeaderMap, config: &AuthConfig) -> Result<(), CrossSite> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    if !config.hosts.is_empty() {
        match &host {
            Some(h) if config.hosts.iter().any(|allowed| allowed == h) => {}
            Some(h) => return Err(CrossSite::ForeignHost(h.clone())),
            None => return Err(CrossSite::NoHost),
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
        let authority = url_authority(&origin);
        if authority.is_none() || authority != host {
            return Err(CrossSite::Origin(origin));
        }
    }
    Ok(())
}

/// Why [`same_origin`] refused a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CrossSite {
    #[error("Host `{0}` is not this server's")]
    ForeignHost(String),
    #[error("the request has no Host header")]
    NoHost,
    #[error("cross-origin request from `{0}` refused")]
    Origin(String),
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub async fn authorize(
    State(auth): State<Authorizer>,
    mut request: Request,
    next: Next,
) -> Response {
    // Unknown paths answer 404 from the router, whoever asks.
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(route) = matched else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let required = match access(&method, &route) {
        Access::Public => return next.run(request).await,
        Access::OwnCredentials => {
            // An admin token may stand in for a runner's own credential at registration
            // (taking over a runner name): tell the handler who is calling.
            let presented = bearer(request.headers()).ok().flatten();
            if let Some(token) = presented {
                if token.starts_with(TOKEN_PREFIX) {
                    if let Ok(Some(identity)) = auth.store.token_by_hash(&hash_token(&token)).await
                    {
                        request.extensions_mut().insert(Caller::Token(identity));
                    }
                }
            }
            let target = request.uri().path().to_string();
            let response = next.run(request).await;
            if route == "/api/v1/runners/register" {
                record(
                    &auth,
                    "runner-registration",
                    &method,
                    &route,
                    &target,
                    response.status(),
                )
                .await;
            }
            return response;
        }
        Access::Role(role) => role,
    };
    let target = request.uri().path().to_string();
    let changing = is_state_changing(&method);
    let presented = bearer(request.headers());
    // Without a bearer token, the status page's session cookie may name one.
    let session = match &presented {
        Ok(None) => session_caller(&auth, request.headers()).await,
        _ => None,
    };
    let via_session = session.is_some();
    let session_actor = session
        .as_ref()
        .map(|(_, identity)| format!("token:{}", identity.name));
    let caller = match presented {
        Err(message) => Err(refuse(StatusCode::UNAUTHORIZED, message.to_string())),
        Ok(None) => match session {
            Some((cookie, identity)) => {
                request.extensions_mut().insert(cookie);
                Ok(Caller::Token(identity))
            }
            None => Ok(Caller::Anonymous),
        },
        Ok(Some(token)) => match auth.store.token_by_hash(&hash_token(&token)).await {
            Ok(Some(identity)) => Ok(Caller::Token(identity)),
            Ok(None) => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "invalid, expired or revoked token".to_string(),
            )),
            Err(error) => {
                tracing::error!(%error, "cannot check an API token");
                Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check the token now; try again".to_string(),
                ))
            }
        },
    };
    let decision = caller.and_then(|caller| {
        if changing {
            same_origin(request.headers(), &auth.config)
                .map_err(|refused| refuse(StatusCode::FORBIDDEN, refused.to_string()))?;
            // A cookie is sent by the browser on its own: it may only authorize the page's
            // forms, whose handlers check the CSRF token. The API wants a bearer token.
            if via_session && !crate::page::accepts_session_for_changes(&route) {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "a status page session cannot call the API; use Authorization: Bearer <token>"
                        .to_string(),
                ));
            }
        }
        match caller.role() {
            Some(have) if have >= required => Ok(caller),
            Some(have) => Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs the {required} role; the token `{}` is {have}",
                    caller_name(&caller)
                ),
            )),
            None if required == Role::Viewer && auth.config.anonymous_read => Ok(caller),
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                format!(
                    "this needs a token with the {required} role (Authorization: Bearer <token>)"
                ),
            )),
        }
    });
    let (actor, response) = match decision {
        Ok(caller) => {
            let actor = caller.label();
            request.extensions_mut().insert(caller);
            (actor, next.run(request).await)
        }
        Err(refusal) => {
            let presented = bearer(request.headers()).ok().flatten();
            let response = if refusal.0 == StatusCode::UNAUTHORIZED
                && !changing
                && crate::page::is_page_route(&route)
            {
                sign_in_first(request.uri())
            } else {
                refusal_response(refusal)
            };
            let actor = match session_actor {
                Some(actor) => actor,
                None => actor_of(&auth, presented).await,
            };
            (actor, response)
        }
    };
    if changing {
        record(&auth, &actor, &method, &route, &target, response.status()).await;
    }
    response
}

/// The identity behind a request's status page cookie, when it names a valid token.
async fn session_caller(
    auth: &Authorizer,
    headers: &HeaderMap,
) -> Option<(crate::page::session::SessionCookie, TokenIdentity)> {
    let token = crate::page::session::cookie_token(headers)?;
    if !token.starts_with(TOKEN_PREFIX) {
        return None;
    }
    match auth.store.token_by_hash(&hash_token(&token)).await {
        Ok(Some(identity)) => Some((crate::page::session::SessionCookie(token), identity)),
        // A revoked token's cookie reads as anonymous: the page offers the sign-in form.
        Ok(None) => None,
        Err(error) => {
            tracing::error!(%error, "cannot check a session cookie");
            None
        }
    }
}

/// A page read refused for want of a token: off to the sign-in form, coming back here after.
fn sign_in_first(uri: &axum::http::Uri) -> Response {
    let back = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("/login?next={}", crate::page::encode_query(back));
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location)],
        "sign in first",
    )
        .into_response()
}

fn caller_name(caller: &Caller) -> &str {
    match caller {
        Caller::Anonymous => "anonymous",
        Caller::Token(t) => &t.name,
    }
}

/// Who a refused request claimed to be, for the audit log.
async fn actor_of(auth: &Authorizer, presented: Option<String>) -> String {
    match presented {
        Some(token) => match auth.store.token_by_hash(&hash_token(&token)).await {
            Ok(Some(identity)) => format!("token:{}", identity.name),
            _ => "invalid-token".to_string(),
        },
        None => "anonymous".to_string(),
    }
}

async fn record(
    auth: &Authorizer,
    actor: &str,
    method: &Method,
    route: &str,
    target: &str,
    status: StatusCode,
) {
    let action = format!("{method} {route}");
    let entry = AuditRecord {
        actor,
        action: &action,
        target,
        result: status.as_u16(),
    };
    if let Err(error) = auth.store.audit(&entry).await {
        tracing::error!(%error, actor, action, target, "cannot write the audit log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_change_needs_a_role_and_unknown_ones_need_admin() {
        assert_eq!(access(&Method::GET, "/healthz"), Access::Public);
        assert_eq!(access(&Method::GET, "/readyz"), Access::Public);
        assert_eq!(
            access(&Method::GET, "/api/v1/runs"),
            Access::Role(Role::Viewer)
        );
        assert_eq!(
            access(&Method::GET, "/api/v1/repos"),
            Access::Role(Role::Viewer)
        );
        assert_eq!(
            access(&Method::POST, "/api/v1/runs/{id}/cancel"),
            Access::Role(Role::Operator)
        );
        assert_eq!(
            access(&Method::POST, "/api/v1/environments/{*path}"),
            Access::Role(Role::Operator)
        );
        assert_eq!(
            access(&Method::GET, "/api/v1/environments/{*path}"),
            Access::Role(Role::Viewer)
        );
        assert_eq!(
            access(&Method::POST, "/api/v1/deployments/{id}/approve"),
            Access::Role(Role::Operator)
        );
        assert_eq!(
            access(&Method::POST, "/api/v1/runners/{name}/revoke"),
            Access::Role(Role::Admin)
        );
        assert_eq!(
            access(&Method::GET, "/api/v1/audit"),
            Access::Role(Role::Admin)
        );
        assert_eq!(
            access(&Method::POST, "/api/v1/something/new"),
            Access::Role(Role::Admin)
        );
        assert_eq!(
            access(&Method::POST, "/api/v1/runner/poll"),
            Access::OwnCredentials
        );
        assert_eq!(
            access(&Method::POST, "/webhooks/github"),
            Access::OwnCredentials
        );
    }

    #[test]
    fn hosts_follow_the_listen_address_and_public_url() {
        let loopback = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            AuthConfig::hosts_for(loopback, None),
            vec!["127.0.0.1:8080", "localhost:8080", "[::1]:8080"]
        );
        let any = "0.0.0.0:8080".parse().unwrap();
        assert!(AuthConfig::hosts_for(any, None).is_empty());
        assert_eq!(
            AuthConfig::hosts_for(any, Some("https://CI.example.com/deploylite")),
            vec!["ci.example.com"]
        );
    }

    #[test]
    fn cross_origin_and_rebound_hosts_are_refused() {
        let config = AuthConfig {
            anonymous_read: true,
            hosts: AuthConfig::hosts_for("127.0.0.1:8080".parse().unwrap(), None),
        };
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")]), &config).is_ok());
        assert!(same_origin(
            &headers(&[
                ("host", "localhost:8080"),
                ("origin", "http://localhost:8080")
            ]),
            &config
        )
        .is_ok());
        assert!(same_origin(
            &headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example")
            ]),
            &config
        )
        .is_err());
        assert!(same_origin(
            &headers(&[
                ("host", "evil.example:8080"),
                ("origin", "http://evil.example:8080")
            ]),
            &config
        )
        .is_err());
        assert!(same_origin(
            &headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
            &config
        )
        .is_err());
    }
}
