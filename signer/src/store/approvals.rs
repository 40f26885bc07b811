//! `tx_approvals`: human approvals of transactions, as seen by this node.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::audit::AuditOf;
use super::{Store, StoreError};

/// Stored form of an [`Endorsement`]: approver, role, key, node, admin, signature.
type EndorsementRow = (String, String, Vec<u8>, String, String, Vec<u8>);

/// A node's signed endorsement of an approver identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endorsement {
    /// Approver name.
    pub approver: String,
    /// Approver role.
    pub role: String,
    /// Approver public key.
    pub public_key: [u8; 32],
    /// Endorsing node.
    pub node_id: String,
    /// Token id of the admin who endorsed at that node.
    pub admin: String,
    /// The node's vote-key signature over `vote::endorsement_message`.
    pub signature: [u8; 64],
}

/// One human approval of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApprovalRow {
    /// The approver's registered name.
    pub approver: String,
    /// The role it is registered for.
    pub role: String,
    /// Node whose API authenticated the approver.
    pub via_node: String,
    /// When this node recorded it.
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Records a signed approval (`public_key` the approver key it verifies under,
    /// `signature` over `vote::approval_message`); false if this approver already
    /// approved the transaction. Recorded with its audit row in one transaction;
    /// nothing is written when it was already recorded.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_approval(
        &self,
        transaction_id: Uuid,
        approver: &str,
        role: &str,
        via_node: &str,
        public_key: &[u8; 32],
        signature: &[u8; 64],
        audit: AuditOf,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "INSERT INTO tx_approvals (transaction_id, approver, role, via_node, public_key, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (transaction_id, approver) DO NOTHING",
        )
        .bind(transaction_id)
        .bind(approver)
        .bind(role)
        .bind(via_node)
        .bind(public_key.as_slice())
        .bind(signature.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::classify(e, "approval"))?;
        finish_audited(tx, done.rows_affected() == 1, audit).await
    }

    /// Records node `e.node_id`'s endorsement of an approver (checked by the
    /// caller); false if it was already recorded. Recorded with its audit row in
    /// one transaction; nothing is written when it was already recorded.
    pub async fn insert_endorsement(
        &self,
        e: &Endorsement,
        audit: AuditOf,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "INSERT INTO approver_endorsements (approver, role, public_key, node_id, admin, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&e.approver)
        .bind(&e.role)
        .bind(e.public_key.as_slice())
        .bind(&e.node_id)
        .bind(&e.admin)
        .bind(e.signature.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::classify(e, "approver endorsement"))?;
        finish_audited(tx, done.rows_affected() == 1, audit).await
    }

    /// Every endorsement this node holds, by approver, role and key.
    pub async fn endorsements(&self) -> Result<Vec<Endorsement>, StoreError> {
        let rows: Vec<EndorsementRow> = sqlx::query_as(
            "SELECT approver, role, public_key, node_id, admin, signature \
             FROM approver_endorsements ORDER BY approver, role, public_key, node_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(approver, role, pk, node_id, admin, sig)| {
                Ok(Endorsement {
                    approver,
                    role,
                    public_key: pk
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("approver key is not 32 bytes".into()))?,
                    node_id,
                    admin,
                    signature: sig.try_into().map_err(|_| {
                        StoreError::Corrupt("endorsement signature is not 64 bytes".into())
                    })?,
                })
            })
            .collect()
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

/// Commits an insert with its audit row when it wrote something (`inserted`), and
/// writes nothing otherwise; returns `inserted`.
async fn finish_audited(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    inserted: bool,
    audit: AuditOf,
) -> Result<bool, StoreError> {
    if inserted {
        audit.append(&mut tx).await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(inserted)
}
