//! `node_keys`: the node's own long-lived secret keys, stored as envelopes.

use super::audit::AuditOf;
use super::{Store, StoreError};

/// A stored node key (public part in clear, secret part sealed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeKeyRow {
    /// What the key is for, e.g. `vote_signing`.
    pub purpose: String,
    /// Algorithm name, e.g. `ed25519`.
    pub algorithm: String,
    /// Public key bytes.
    pub public_key: Vec<u8>,
    /// HSM/TPM envelope of the private key.
    pub envelope: Vec<u8>,
    /// KEK that wraps the envelope's data key.
    pub kek_id: String,
}

impl Store {
    /// The node key for `purpose`, if one exists.
    pub async fn node_key(&self, purpose: &str) -> Result<Option<NodeKeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, NodeKeyRow>(
            "SELECT purpose, algorithm, public_key, envelope, kek_id FROM node_keys WHERE purpose = $1",
        )
        .bind(purpose)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Stores a node key; fails with [`StoreError::Duplicate`] if one exists.
    pub async fn insert_node_key(
        &self,
        row: &NodeKeyRow,
        audit: AuditOf,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO node_keys (purpose, algorithm, public_key, envelope, kek_id) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&row.purpose)
        .bind(&row.algorithm)
        .bind(&row.public_key)
        .bind(&row.envelope)
        .bind(&row.kek_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::classify(e, "node key"))?;
        audit.append(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
