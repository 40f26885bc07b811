//! `tx_approvals`: human approvals of transactions, as seen by this node.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError};

/// One human approval of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ApprovalRow {
    /// Authenticated identity of the approver (token id at the node that took it).
    pub approver: String,
    /// Role of the approver's token.
    pub role: String,
    /// Node whose API authenticated the approver.
    pub via_node: String,
    /// When this node recorded it.
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Records an approval; false if this approver already approved the transaction.
    pub async fn insert_approval(
        &self,
        transaction_id: Uuid,
        approver: &str,
        role: &str,
        via_node: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO tx_approvals (transaction_id, approver, role, via_node) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (transaction_id, approver) DO NOTHING",
        )
        .bind(transaction_id)
        .bind(approver)
        .bind(role)
        .bind(via_node)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "approval"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Every approval of a transaction, oldest first.
    pub async fn approvals(&self, transaction_id: Uuid) -> Result<Vec<ApprovalRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT approver, role, via_node, created_at FROM tx_approvals \
             WHERE transaction_id = $1 ORDER BY created_at, approver",
        )
        .bind(transaction_id)
        .fetch_all(self.pool())
        .await?)
    }
}
