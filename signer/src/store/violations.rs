//! `byzantine_violations`: misbehaviour attributed to a node.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Store, StoreError};
use crate::audit::AuditEntry;

/// A recorded violation.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ViolationRow {
    /// Row id.
    pub id: i64,
    /// The culprit.
    pub node_id: String,
    /// Kind, e.g. `double_vote`, `invalid_proof`, `bad_signature`.
    pub violation_type: String,
    /// Protocol session or round.
    pub session_id: Option<String>,
    /// Evidence (never secret material).
    pub evidence: serde_json::Value,
    /// Which node detected it.
    pub detected_by: String,
    /// When.
    pub detected_at: DateTime<Utc>,
}

impl Store {
    /// Records a violation by `culprit` (found by `detected_by`) with its audit row
    /// (`violation.recorded`, in `local_node`'s chain) in one transaction.
    pub async fn record_violation(
        &self,
        culprit: &str,
        violation_type: &str,
        session_id: Option<&str>,
        evidence: &serde_json::Value,
        detected_by: &str,
        local_node: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO byzantine_violations (node_id, violation_type, session_id, evidence, detected_by) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(culprit)
        .bind(violation_type)
        .bind(session_id)
        .bind(evidence)
        .bind(detected_by)
        .fetch_one(&mut *tx)
        .await?;
        super::audit::append_audit(
            &mut tx,
            local_node,
            AuditEntry::new("node", "violation.recorded")
                .subject(culprit)
                .details(serde_json::json!({
                    "violation_id": id,
                    "type": violation_type,
                    "session": session_id,
                    "detected_by": detected_by,
                })),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// All violations, newest first.
    pub async fn list_violations(&self, limit: i64) -> Result<Vec<ViolationRow>, StoreError> {
        Ok(sqlx::query_as::<_, ViolationRow>(
            "SELECT id, node_id, violation_type, session_id, evidence, detected_by, detected_at \
             FROM byzantine_violations ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}

impl Store {
    /// Records a node's liveness as seen by this node.
    pub async fn upsert_node_health(&self, node_id: &str, status: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_health (node_id, status, last_seen) VALUES ($1, $2, now()) \
             ON CONFLICT (node_id) DO UPDATE SET status = EXCLUDED.status, \
             last_seen = CASE WHEN EXCLUDED.status = 'healthy' THEN now() ELSE node_health.last_seen END",
        )
        .bind(node_id)
        .bind(status)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
