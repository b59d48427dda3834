//! Secrets as stored: sealed values (the key is never here, see `crate::secrets`), what can
//! be listed about them (names, scopes, who set them, when), and the audit of each secret
//! handed to a stage attempt. No function here returns a value in the clear.

use sqlx::any::AnyRow;
use sqlx::Row;

use deploylite_model::{Attempt, RunId};

use super::{now_ms, DbContext, Result, RowExt, Store, StoreError};
use crate::secrets::{Sealed, SecretScope};

/// What may be shown about a secret: everything but its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretInfo {
    pub repo: String,
    /// Null for a secret of the whole repository.
    pub environment: Option<String>,
    pub name: String,
    pub set_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A sealed row, for reading a value or resealing it under a new key.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub id: i64,
    pub scope: SecretScope,
    pub name: String,
    pub sealed: Sealed,
}

/// `environment` as stored: '' stands for the whole repository (a UNIQUE key cannot hold
/// NULL as a value on every database).
fn stored_environment(scope: &SecretScope) -> &str {
    scope.environment.as_deref().unwrap_or("")
}

fn scope_of(repo: String, environment: String) -> SecretScope {
    SecretScope {
        repo,
        environment: (!environment.is_empty()).then_some(environment),
    }
}

fn sealed_of(row: &AnyRow) -> Result<SealedSecret> {
    let text = |column: &'static str| -> Result<String> {
        row.try_get::<String, _>(column).ctx("reading a secret")
    };
    let bytes = |column: &'static str| -> Result<Vec<u8>> {
        hex::decode(text(column)?)
            .map_err(|_| StoreError::Corrupt(format!("secret {column} is not hex")))
    };
    Ok(SealedSecret {
        id: row.try_get("id").ctx("reading a secret")?,
        scope: scope_of(text("repo")?, text("environment")?),
        name: text("name")?,
        sealed: Sealed {
            key_id: text("key_id")?,
            nonce: bytes("nonce")?,
            ciphertext: bytes("ciphertext")?,
        },
    })
}

const SEALED_COLUMNS: &str = "id, repo, environment, name, key_id, nonce, ciphertext";

impl Store {
    /// Sets `name` in `scope` to `sealed`; true when it did not exist before.
    pub async fn put_secret(
        &self,
        scope: &SecretScope,
        name: &str,
        sealed: &Sealed,
        set_by: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.pool().begin().await.ctx("starting to set a secret")?;
        let existed = sqlx::query(
            "UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3, set_by = $4, updated_at = $5
             WHERE repo = $6 AND environment = $7 AND name = $8",
        )
        .bind(&sealed.key_id)
        .bind(hex::encode(&sealed.nonce))
        .bind(hex::encode(&sealed.ciphertext))
        .bind(set_by)
        .bind(now)
        .bind(&scope.repo)
        .bind(stored_environment(scope))
        .bind(name)
        .execute(&mut *tx)
        .await
        .ctx("updating a secret")?
        .rows_affected()
            > 0;
        if !existed {
            sqlx::query(
                "INSERT INTO secrets (repo, environment, name, key_id, nonce, ciphertext, set_by, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            )
            .bind(&scope.repo)
            .bind(stored_environment(scope))
            .bind(name)
            .bind(&sealed.key_id)
            .bind(hex::encode(&sealed.nonce))
            .bind(hex::encode(&sealed.ciphertext))
            .bind(set_by)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("adding a secret")?;
        }
        tx.commit().await.ctx("committing a secret")?;
        Ok(!existed)
    }

    /// The secrets of `repo`: of the whole repository and of every environment when
    /// `environment` is None, else of that environment only. Sorted by scope, then name.
    pub async fn list_secrets(
        &self,
        repo: &str,
        environment: Option<&str>,
    ) -> Result<Vec<SecretInfo>> {
        let rows = sqlx::query(
            "SELECT repo, environment, name, set_by, created_at, updated_at FROM secrets
             WHERE repo = $1 AND ($2 = '*' OR environment = $2)
             ORDER BY environment, name",
        )
        .bind(repo)
        .bind(environment.unwrap_or("*"))
        .fetch_all(self.reads())
        .await
        .ctx("listing secrets")?;
        rows.iter()
            .map(|r| {
                let scope = scope_of(
                    r.try_get("repo").ctx("reading a secret")?,
                    r.try_get("environment").ctx("reading a secret")?,
                );
                Ok(SecretInfo {
                    repo: scope.repo,
                    environment: scope.environment,
                    name: r.try_get("name").ctx("reading a secret")?,
                    set_by: r.try_get("set_by").ctx("reading a secret")?,
                    created_at: r.try_get("created_at").ctx("reading a secret")?,
                    updated_at: r.try_get("updated_at").ctx("reading a secret")?,
                })
            })
            .collect()
    }

    /// Deletes `name` from `scope`; false when there was no such secret.
    pub async fn delete_secret(&self, scope: &SecretScope, name: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM secrets WHERE repo = $1 AND environment = $2 AND name = $3")
                .bind(&scope.repo)
                .bind(stored_environment(scope))
                .bind(name)
                .execute(self.pool())
                .await
                .ctx("deleting a secret")?;
        Ok(done.rows_affected() > 0)
    }

    /// The sealed values a stage asking for `names` gets: the environment's own secret when
    /// `environment` has one of that name, else the repository's. Names without a secret are
    /// left out (the caller names them in its error).
    pub async fn sealed_secrets(
        &self,
        repo: &str,
        environment: Option<&str>,
        names: &[String],
    ) -> Result<Vec<SealedSecret>> {
        let rows = sqlx::query(&format!(
            "SELECT {SEALED_COLUMNS} FROM secrets
             WHERE repo = $1 AND (environment = '' OR environment = $2) ORDER BY name, environment"
        ))
        .bind(repo)
        .bind(environment.unwrap_or(""))
        .fetch_all(self.pool())
        .await
        .ctx("reading secrets for a stage")?;
        let mut chosen: Vec<SealedSecret> = Vec::new();
        for row in &rows {
            let secret = sealed_of(row)?;
            if !names.contains(&secret.name) {
                continue;
            }
            // Sorted by name, then environment: '' (the repository's) comes first and an
            // environment's own secret of the same name replaces it.
            match chosen.last_mut() {
                Some(last) if last.name == secret.name => *last = secret,
                _ => chosen.push(secret),
            }
        }
        Ok(chosen)
    }

    /// Up to `limit` secrets sealed by another key than `key_id`: what a key rotation has
    /// left to do.
    pub async fn secrets_not_sealed_with(
        &self,
        key_id: &str,
        limit: i64,
    ) -> Result<Vec<SealedSecret>> {
        let rows = sqlx::query(&format!(
            "SELECT {SEALED_COLUMNS} FROM secrets WHERE key_id <> $1 ORDER BY id LIMIT $2"
        ))
        .bind(key_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("reading secrets to reseal")?;
        rows.iter().map(sealed_of).collect()
    }

    /// Replaces secret `id`'s sealed value if it is still sealed by `was_key_id`; false
    /// when someone set it meanwhile (its new value is already under the new key).
    pub async fn reseal_secret(&self, id: i64, was_key_id: &str, sealed: &Sealed) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3 WHERE id = $4 AND key_id = $5",
        )
        .bind(&sealed.key_id)
        .bind(hex::encode(&sealed.nonce))
        .bind(hex::encode(&sealed.ciphertext))
        .bind(id)
        .bind(was_key_id)
        .execute(self.pool())
        .await
        .ctx("resealing a secret")?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that `secrets` were handed to attempt `attempt` of stage `stage` of run
    /// `run_id`: names and scopes, never values.
    pub async fn record_secret_uses(
        &self,
        run_id: RunId,
        stage: &str,
        attempt: Attempt,
        secrets: &[(SecretScope, String)],
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool().begin().await.ctx("starting a secret audit")?;
        for (scope, name) in secrets {
            sqlx::query(
                "INSERT INTO secret_uses (run_id, stage, attempt, repo, environment, name, used_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(run_id.get())
            .bind(stage)
            .bind(i64::from(attempt))
            .bind(&scope.repo)
            .bind(stored_environment(scope))
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("recording a secret use")?;
        }
        tx.commit().await.ctx("committing a secret audit")?;
        Ok(())
    }

    /// The secrets handed to run `run_id`'s attempts: (stage, attempt, scope, name), in order.
    pub async fn secret_uses(
        &self,
        run_id: RunId,
    ) -> Result<Vec<(String, Attempt, SecretScope, String)>> {
        let rows = sqlx::query(
            "SELECT stage, attempt, repo, environment, name FROM secret_uses WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id.get())
        .fetch_all(self.pool())
        .await
        .ctx("reading secret uses")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("stage").ctx("reading a secret use")?,
                    r.attempt("attempt", "reading a secret use")?,
                    scope_of(
                        r.try_get("repo").ctx("reading a secret use")?,
                        r.try_get("environment").ctx("reading a secret use")?,
                    ),
                    r.try_get("name").ctx("reading a secret use")?,
                ))
            })
            .collect()
    }
}
