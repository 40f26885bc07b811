//! `api_tokens`: only a hash of each token secret is stored (keyed HMAC-SHA-256,
//! or the enrolment / legacy argon2 forms until first use; see `api::auth`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::audit::AuditOf;
use super::{Store, StoreError};

/// PostgreSQL notification channel on which a revocation names the token id (sent
/// in the revoking transaction, so it is delivered only when the revocation
/// commits).
pub const TOKEN_REVOKED_CHANNEL: &str = "token_revoked";

/// A stored token (without its secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TokenRow {
    /// Public token id (the part before the secret).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Stored hash of the secret (`hmac-sha256$v1$…`, `sha256$v1$…` or argon2id).
    #[serde(skip)]
    pub secret_hash: String,
    /// Per-token rate limit.
    pub rate_limit_per_min: i32,
    /// Who created it.
    pub created_by: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Stores a new token and its audit row in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_token(
        &self,
        id: &str,
        name: &str,
        role: &str,
        secret_hash: &str,
        rate_limit_per_min: i32,
        created_by: &str,
        audit: AuditOf,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, rate_limit_per_min, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(name)
        .bind(role)
        .bind(secret_hash)
        .bind(rate_limit_per_min)
        .bind(created_by)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::classify(e, "token"))?;
        audit.append(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A token by id, revoked or not.
    pub async fn find_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        Ok(sqlx::query_as::<_, TokenRow>(
            "SELECT id, name, role, secret_hash, rate_limit_per_min, created_by, created_at, revoked_at \
             FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// All tokens.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        Ok(sqlx::query_as::<_, TokenRow>(
            "SELECT id, name, role, secret_hash, rate_limit_per_min, created_by, created_at, revoked_at \
             FROM api_tokens ORDER BY created_at",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Replaces a token's stored hash (`old` to the keyed form `new`), only if it
    /// is still `old`; true when replaced.
    pub async fn rehash_token(&self, id: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET secret_hash = $3 WHERE id = $1 AND secret_hash = $2",
        )
        .bind(id)
        .bind(old)
        .bind(new)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes a token with its audit row in one transaction; returns false (and
    /// writes nothing) if it was unknown or already revoked. Running nodes learn it
    /// at once through the `token_revoked` notification.
    pub async fn revoke_token(&self, id: &str, audit: AuditOf) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        audit.append(&mut tx).await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(TOKEN_REVOKED_CHANNEL)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}
