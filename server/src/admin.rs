//! Admin routes: API tokens and the audit log. The role checks are in `auth`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use deploylite_reconciler::store::{now_ms, AuditEntry, Role, TokenRecord};
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::auth::{hash_token, new_token, Caller};
use crate::AppState;

/// Longest token name.
const MAX_NAME: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub role: Role,
    /// Lifetime in milliseconds; none: the token lives until revoked.
    #[serde(default)]
    pub expires_in_ms: Option<i64>,
}

/// The answer to a token creation: the only time the token itself is shown.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    pub token: String,
    pub expires_at: Option<i64>,
}

/// A token name outside what [`valid_token_name`] accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a token name is 1 to {} letters, digits, `-`, `_` or `.`", MAX_NAME)]
pub struct InvalidTokenName;

pub fn valid_token_name(name: &str) -> Result<(), InvalidTokenName> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(InvalidTokenName);
    }
    Ok(())
}

pub(crate) async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<CreateToken>,
) -> Result<Response, ApiError> {
    valid_token_name(&body.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let expires_at = match body.expires_in_ms {
        Some(ms) if ms <= 0 => {
            return Err(ApiError::BadRequest(
                "expires_in_ms must be positive".into(),
            ))
        }
        Some(ms) => Some(now_ms().saturating_add(ms)),
        None => None,
    };
    let token = new_token();
    let created = state
        .store
        .create_token(
            &body.name,
            &hash_token(&token),
            body.role,
            &caller.label(),
            expires_at,
        )
        .await?;
    if !created {
        return Err(ApiError::Conflict(format!(
            "a token named `{}` exists; revoke it first",
            body.name
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            name: body.name,
            role: body.role,
            token,
            expires_at,
        }),
    )
        .into_response())
}

pub(crate) async fn list_tokens(
    State(state): State<AppState>,
) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    Ok(Json(state.store.list_tokens().await?))
}

pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if !state.store.revoke_token(&name).await? {
        return Err(ApiError::NotFound(format!("no live token named `{name}`")));
    }
    Ok(Json(serde_json::json!({ "name": name, "revoked": true })).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

pub(crate) async fn audit(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    Ok(Json(state.store.audit_entries(limit, q.before).await?))
}
