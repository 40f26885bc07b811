//! Reshare/refresh records (migration 0016) and the atomic switch to a new share.

use uuid::Uuid;

use super::audit::append_audit;
use super::{Store, StoreError};
use crate::audit::AuditEntry;

/// A reshare as this node records it when it joins.
#[derive(Debug, Clone)]
pub struct NewReshare<'a> {
    /// Session id (also the id of its `dkg_ceremonies` row).
    pub id: Uuid,
    /// The key.
    pub key_id: &'a str,
    /// This node.
    pub node_id: &'a str,
    /// Ceremony of the shares being replaced.
    pub old_ceremony_id: Uuid,
    /// Old threshold.
    pub old_threshold: u16,
    /// Old participants.
    pub old_participants: &'a [String],
    /// New threshold.
    pub new_threshold: u16,
    /// New participants.
    pub new_participants: &'a [String],
    /// Dealers.
    pub dealers: &'a [String],
    /// Coordinator.
    pub coordinator: &'a str,
    /// Digest of the voted proposal.
    pub proposal_digest: &'a [u8; 32],
    /// Approving votes `{voter: hex}`.
    pub votes: serde_json::Value,
}

/// Outcome of the switch on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    /// Old share rows deleted.
    pub shares_deleted: u64,
    /// Presignatures deleted.
    pub presignatures_deleted: u64,
}

impl Store {
    /// Records the reshare as pending (its ceremony row must exist).
    pub async fn insert_reshare(&self, r: &NewReshare<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO key_reshares (id, key_id, node_id, old_ceremony_id, old_threshold, \
             old_participants, new_threshold, new_participants, dealers, coordinator, \
             proposal_digest, votes) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
        )
        .bind(r.id)
        .bind(r.key_id)
        .bind(r.node_id)
        .bind(r.old_ceremony_id)
        .bind(i32::from(r.old_threshold))
        .bind(r.old_participants)
        .bind(i32::from(r.new_threshold))
        .bind(r.new_participants)
        .bind(r.dealers)
        .bind(r.coordinator)
        .bind(r.proposal_digest.as_slice())
        .bind(&r.votes)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "key reshare"))?;
        Ok(())
    }

    /// Records the confirmation value of this node's successful run.
    pub async fn reshare_confirmation(&self, id: Uuid, value: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE key_reshares SET confirmation = $2 WHERE id = $1 AND state = 'pending'",
        )
        .bind(id)
        .bind(value.as_slice())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Fails a pending reshare: the ceremony is marked failed, the failure audited,
    /// the old share untouched. Its pending (not usable) share is deleted only if
    /// this node never stored its confirmation; after that, other nodes may have
    /// received every confirmation and switched, so the reshare becomes `uncertain`
    /// and the pending share is kept (deleting it could leave the key with fewer
    /// than t shares of either generation).
    pub async fn reshare_failed(
        &self,
        node_id: &str,
        id: Uuid,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let key: Option<(String, bool)> = sqlx::query_as(
            "UPDATE key_reshares SET \
               state = CASE WHEN confirmation IS NULL THEN 'failed' ELSE 'uncertain' END, \
               error = $2, finished_at = now() \
             WHERE id = $1 AND state = 'pending' RETURNING key_id, confirmation IS NOT NULL",
        )
        .bind(id)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let uncertain = key.as_ref().is_some_and(|(_, confirmed)| *confirmed);
        let deleted = if uncertain {
            0
        } else {
            sqlx::query(
                "DELETE FROM key_shares WHERE ceremony_id = $1 AND node_id = $2 AND NOT usable",
            )
            .bind(id)
            .bind(node_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        sqlx::query(
            "UPDATE dkg_ceremonies SET state = 'failed', error = $2, completed_at = now() \
             WHERE id = $1 AND state IN ('pending', 'running')",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        if let Some((key_id, _)) = key {
            append_audit(
                &mut tx,
                node_id,
                AuditEntry::new(node_id, "key.reshare.failed")
                    .subject(key_id)
                    .details(serde_json::json!({
                        "session": id.to_string(),
                        "error": reason,
                        "pending_share_deleted": deleted > 0,
                        "outcome_uncertain": uncertain,
                    })),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Fails every reshare left pending by an earlier run of this node (it died
    /// midway): their pending shares are deleted, the old shares stay.
    pub async fn fail_pending_reshares(&self, node_id: &str) -> Result<usize, StoreError> {
        let ids: Vec<(Uuid,)> =
            sqlx::query_as("SELECT id FROM key_reshares WHERE node_id = $1 AND state = 'pending'")
                .bind(node_id)
                .fetch_all(self.pool())
                .await?;
        for (id,) in &ids {
            self.reshare_failed(node_id, *id, "node restarted before the switch")
                .await?;
        }
        Ok(ids.len())
    }

    /// The switch, in one transaction: the pending share of reshare `id` becomes the
    /// key's share (if this node received one), every other share row of the key on
    /// this node is deleted, the key's presignatures are deleted, the ceremony and the
    /// reshare are completed, and the switch and each deletion are audited.
    pub async fn switch_reshare(
        &self,
        node_id: &str,
        id: Uuid,
        key_id: &str,
        public_key: &[u8],
    ) -> Result<Switched, StoreError> {
        let mut tx = self.pool().begin().await?;
        let state: Option<(String,)> =
            sqlx::query_as("SELECT state FROM key_reshares WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        match state {
            Some((s,)) if s == "pending" => {}
            other => {
                return Err(StoreError::InvalidTransition(format!(
                    "reshare {id} is {:?}, not pending",
                    other.map(|o| o.0)
                )))
            }
        }
        let activated = sqlx::query(
            "UPDATE key_shares SET usable = true WHERE ceremony_id = $1 AND node_id = $2 \
             AND key_id = $3",
        )
        .bind(id)
        .bind(node_id)
        .bind(key_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let old: Vec<(i64, Uuid)> = sqlx::query_as(
            "DELETE FROM key_shares WHERE key_id = $1 AND node_id = $2 AND ceremony_id <> $3 \
             RETURNING id, ceremony_id",
        )
        .bind(key_id)
        .bind(node_id)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let presignatures_deleted = sqlx::query("DELETE FROM presignatures WHERE key_id = $1")
            .bind(key_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE dkg_ceremonies SET state = 'completed', public_key = $2, completed_at = now() \
             WHERE id = $1",
        )
        .bind(id)
        .bind(public_key)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE key_reshares SET state = 'committed', finished_at = now() WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // Earlier reshares of the key left uncertain here: their pending shares were
        // among the rows just deleted.
        sqlx::query(
            "UPDATE key_reshares SET state = 'failed', \
               error = coalesce(error || '; ', '') || 'superseded by reshare ' || $3 \
             WHERE key_id = $1 AND node_id = $2 AND state = 'uncertain'",
        )
        .bind(key_id)
        .bind(node_id)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        for (row, ceremony) in &old {
            append_audit(
                &mut tx,
                node_id,
                AuditEntry::new(node_id, "key.share.deleted")
                    .subject(key_id.to_owned())
                    .details(serde_json::json!({
                        "session": id.to_string(),
                        "share_row": row,
                        "ceremony": ceremony.to_string(),
                        "reason": "replaced by reshare",
                    })),
            )
            .await?;
        }
        append_audit(
            &mut tx,
            node_id,
            AuditEntry::new(node_id, "key.reshare.committed")
                .subject(key_id.to_owned())
                .details(serde_json::json!({
                    "session": id.to_string(),
                    "new_share": activated > 0,
                    "old_shares_deleted": old.len(),
                    "presignatures_deleted": presignatures_deleted,
                })),
        )
        .await?;
        tx.commit().await?;
        Ok(Switched {
            shares_deleted: old.len() as u64,
            presignatures_deleted,
        })
    }
}
