//! API identities (tokens with roles, stored hashed) and the audit log of state-changing calls.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, DbContext, Result, Store, StoreError};

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read runs, logs and runners.
    Viewer,
    /// Also cancel, approve and re-run.
    Operator,
    /// Also runners and tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> std::result::Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// A role name that is none of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`; expected viewer, operator or admin")]
pub struct UnknownRole(pub String);

/// A token as the API shows it: never its value or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// The identity behind a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: i64,
}

/// A new audit row.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub result: u16,
}

fn parse_role(text: &str) -> Result<Role> {
    text.parse()
        .map_err(|e: UnknownRole| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Creates a token. A name that belongs to a live token is refused (returns false); the
    /// name of a revoked or expired token is taken over.
    pub async fn create_token(
        &self,
        name: &str,
        token_hash: &str,
        role: Role,
        created_by: &str,
        expires_at: Option<i64>,
    ) -> Result<bool> {
        let now = now_ms();
        let created: Option<String> = sqlx::query_scalar(
            "INSERT INTO api_tokens (name, token_hash, role, created_at, created_by, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)
             ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, role = excluded.role,
                 created_at = excluded.created_at, created_by = excluded.created_by,
                 expires_at = excluded.expires_at, revoked_at = NULL
             WHERE api_tokens.revoked_at IS NOT NULL
                OR (api_tokens.expires_at IS NOT NULL AND api_tokens.expires_at <= $4)
             RETURNING name",
        )
        .bind(name)
        .bind(token_hash)
        .bind(role.as_str())
        .bind(now)
        .bind(created_by)
        .bind(expires_at)
        .fetch_optional(self.pool())
        .await
        .ctx("creating an API token")?;
        Ok(created.is_some())
    }

    /// Revokes a live token at once. False when no live token has that name.
    pub async fn revoke_token(&self, name: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
        )
        .bind(name)
        .bind(now_ms())
        .execute(self.pool())
        .await
        .ctx("revoking an API token")?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT name, role, created_at, created_by, expires_at, revoked_at
             FROM api_tokens ORDER BY name",
        )
        .fetch_all(self.pool())
        .await
        .ctx("listing API tokens")?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    name: r.try_get("name").ctx("reading a token")?,
                    role: parse_role(&r.try_get::<String, _>("role").ctx("reading a token")?)?,
                    created_at: r.try_get("created_at").ctx("reading a token")?,
                    created_by: r.try_get("created_by").ctx("reading a token")?,
                    expires_at: r.try_get("expires_at").ctx("reading a token")?,
                    revoked_at: r.try_get("revoked_at").ctx("reading a token")?,
                })
            })
            .collect()
    }

    /// Whether any token was ever created (the first start writes the initial admin token).
    pub async fn has_tokens(&self) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(self.pool())
            .await
            .ctx("counting API tokens")?;
        Ok(n > 0)
    }

    /// The live (not revoked, not expired) token with this hash.
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenIdentity>> {
        let row = sqlx::query(
            "SELECT name, role FROM api_tokens
             WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await
        .ctx("looking up an API token")?;
        row.map(|r| {
            Ok(TokenIdentity {
                name: r.try_get("name").ctx("reading a token")?,
                role: parse_role(&r.try_get::<String, _>("role").ctx("reading a token")?)?,
            })
        })
        .transpose()
    }

    pub async fn audit(&self, record: &AuditRecord<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, result) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ms())
        .bind(record.actor)
        .bind(record.action)
        .bind(record.target)
        .bind(i64::from(record.result))
        .execute(self.pool())
        .await
        .ctx("writing the audit log")?;
        Ok(())
    }

    /// The newest audit entries first; `before` pages back by id.
    pub async fn audit_entries(&self, limit: i64, before: Option<i64>) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, result FROM audit_log
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("reading the audit log")?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id").ctx("reading the audit log")?,
                    at: r.try_get("at").ctx("reading the audit log")?,
                    actor: r.try_get("actor").ctx("reading the audit log")?,
                    action: r.try_get("action").ctx("reading the audit log")?,
                    target: r.try_get("target").ctx("reading the audit log")?,
                    result: r.try_get("result").ctx("reading the audit log")?,
                })
            })
            .collect()
    }
}
