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

    /// Stores, in one transaction, this node's pending (not usable) new share (when
    /// it receives one) and its confirmation value. Refused
    /// ([`StoreError::InvalidTransition`], nothing stored) unless the reshare is still
    /// `pending` without a confirmation: a reshare an outcome query already marked
    /// `failed` ([`Store::reshare_outcome_for_query`]) can never be confirmed later.
    /// The row lock orders this against that query.
    pub async fn reshare_store_confirmation(
        &self,
        node_id: &str,
        id: Uuid,
        key_id: &str,
        public_key: &[u8],
        envelope: Option<&[u8]>,
        value: &[u8; 32],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let row: Option<(String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT state, confirmation FROM key_reshares WHERE id = $1 AND node_id = $2 \
             FOR UPDATE",
        )
        .bind(id)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some((state, None)) if state == "pending" => {}
            other => {
                return Err(StoreError::InvalidTransition(format!(
                    "reshare {id} cannot be confirmed: {:?}",
                    other.map(|(s, c)| (s, c.is_some()))
                )))
            }
        }
        if let Some(envelope) = envelope {
            sqlx::query(
                "INSERT INTO key_shares (ceremony_id, node_id, key_id, public_key, envelope, usable) \
                 VALUES ($1, $2, $3, $4, $5, false)",
            )
            .bind(id)
            .bind(node_id)
            .bind(key_id)
            .bind(public_key)
            .bind(envelope)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, "key share"))?;
        }
        sqlx::query("UPDATE key_reshares SET confirmation = $2 WHERE id = $1")
            .bind(id)
            .bind(value.as_slice())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
    ) -> Result<bool, StoreError> {
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
        Ok(uncertain)
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
    ///
    /// `outcome`: `None` for the normal switch (every confirmation received; the
    /// reshare must be `pending`); `Some(details)` when the outcome protocol resolved
    /// an `uncertain` reshare as committed (it must be `uncertain`; the same
    /// transaction also audits `key.reshare.outcome_committed` with `details`).
    pub async fn switch_reshare(
        &self,
        node_id: &str,
        id: Uuid,
        key_id: &str,
        public_key: &[u8],
        outcome: Option<&serde_json::Value>,
    ) -> Result<Switched, StoreError> {
        let mut tx = self.pool().begin().await?;
        let state: Option<(String,)> = sqlx::query_as(
            "SELECT state FROM key_reshares WHERE id = $1 AND node_id = $2 FOR UPDATE",
        )
        .bind(id)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
        let expected = if outcome.is_some() {
            "uncertain"
        } else {
            "pending"
        };
        match state {
            Some((s,)) if s == expected => {}
            other => {
                return Err(StoreError::InvalidTransition(format!(
                    "reshare {id} is {:?}, not {expected}",
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
        if let Some(details) = outcome {
            let mut details = details.clone();
            if let Some(m) = details.as_object_mut() {
                m.insert("session".to_owned(), id.to_string().into());
                m.insert("pending_share_activated".to_owned(), (activated > 0).into());
            }
            append_audit(
                &mut tx,
                node_id,
                AuditEntry::new(node_id, "key.reshare.outcome_committed")
                    .subject(key_id.to_owned())
                    .details(details),
            )
            .await?;
        }
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

    /// Answers an outcome query about reshare `id` from participant `querier`, as this
    /// node's state says. A reshare still `pending` **without** a stored confirmation
    /// is marked `failed` in this same transaction (row lock against
    /// [`Store::reshare_store_confirmation`]): this node then never confirms it, so no
    /// node can ever hold every confirmation and switch, and `failed` is a true
    /// answer. Its ceremony is failed, a pending share (none is stored before the
    /// confirmation) deleted, and `key.reshare.outcome_failed_by_query` audited.
    pub async fn reshare_outcome_for_query(
        &self,
        node_id: &str,
        id: Uuid,
        querier: &str,
    ) -> Result<LocalOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row: Option<(String, String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT state, key_id, confirmation FROM key_reshares WHERE id = $1 AND node_id = $2 \
             FOR UPDATE",
        )
        .bind(id)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((state, key_id, confirmation)) = row else {
            return Ok(LocalOutcome::Unknown);
        };
        let value = confirmation
            .as_deref()
            .and_then(|c| <[u8; 32]>::try_from(c).ok());
        let out = match (state.as_str(), value) {
            ("committed", Some(v)) => LocalOutcome::Committed(v),
            ("pending" | "uncertain", Some(v)) => LocalOutcome::Confirmed(v),
            ("pending", None) => {
                let reason = format!("outcome query from {querier} before this node confirmed");
                sqlx::query(
                    "UPDATE key_reshares SET state = 'failed', error = $2, finished_at = now() \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
                let deleted = sqlx::query(
                    "DELETE FROM key_shares WHERE ceremony_id = $1 AND node_id = $2 AND NOT usable",
                )
                .bind(id)
                .bind(node_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query(
                    "UPDATE dkg_ceremonies SET state = 'failed', error = $2, completed_at = now() \
                     WHERE id = $1 AND state IN ('pending', 'running')",
                )
                .bind(id)
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
                append_audit(
                    &mut tx,
                    node_id,
                    AuditEntry::new(node_id, "key.reshare.outcome_failed_by_query")
                        .subject(key_id)
                        .details(serde_json::json!({
                            "session": id.to_string(),
                            "querier": querier,
                            "pending_share_deleted": deleted > 0,
                        })),
                )
                .await?;
                LocalOutcome::Failed
            }
            ("failed", _) => LocalOutcome::Failed,
            // A committed or pending row without a confirmation value, or an unknown
            // state: not something this node can vouch for.
            _ => LocalOutcome::Unknown,
        };
        tx.commit().await?;
        Ok(out)
    }

    /// `(new participants, old participants, dealers)` of reshare `id` on this node.
    pub async fn reshare_run_sets(
        &self,
        node_id: &str,
        id: Uuid,
    ) -> Result<Option<(Vec<String>, Vec<String>, Vec<String>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT new_participants, old_participants, dealers FROM key_reshares \
             WHERE id = $1 AND node_id = $2",
        )
        .bind(id)
        .bind(node_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Reshares of this node in state `uncertain` (to resolve).
    pub async fn uncertain_reshares(&self, node_id: &str) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM key_reshares WHERE node_id = $1 AND state = 'uncertain' \
             ORDER BY created_at",
        )
        .bind(node_id)
        .fetch_all(self.pool())
        .await?;
        Ok(ids.into_iter().map(|(i,)| i).collect())
    }

    /// An `uncertain` reshare of this node with what resolving it needs; `None` if
    /// it is not (or no longer) uncertain.
    pub async fn uncertain_reshare(
        &self,
        node_id: &str,
        id: Uuid,
    ) -> Result<Option<UncertainReshare>, StoreError> {
        #[allow(clippy::type_complexity)]
        let row: Option<(
            String,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Option<Vec<u8>>,
        )> = sqlx::query_as(
            "SELECT key_id, old_participants, new_participants, dealers, confirmation \
                 FROM key_reshares WHERE id = $1 AND node_id = $2 AND state = 'uncertain'",
        )
        .bind(id)
        .bind(node_id)
        .fetch_optional(self.pool())
        .await?;
        let Some((key_id, old_participants, new_participants, dealers, confirmation)) = row else {
            return Ok(None);
        };
        let confirmation = confirmation
            .as_deref()
            .and_then(|c| <[u8; 32]>::try_from(c).ok())
            .ok_or_else(|| {
                StoreError::Corrupt(format!("uncertain reshare {id} without a confirmation"))
            })?;
        // The key's public key, from any share row of it on this node.
        let public_key: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT public_key FROM key_shares WHERE key_id = $1 AND node_id = $2 \
             ORDER BY usable DESC, id LIMIT 1",
        )
        .bind(&key_id)
        .bind(node_id)
        .fetch_optional(self.pool())
        .await?;
        let public_key = public_key.map(|p| p.0).ok_or_else(|| {
            StoreError::Corrupt(format!("no share row of the key of reshare {id}"))
        })?;
        Ok(Some(UncertainReshare {
            id,
            key_id,
            old_participants,
            new_participants,
            dealers,
            confirmation,
            public_key,
        }))
    }

    /// The outcome protocol resolved `uncertain` reshare `id` as failed (a
    /// participant answered that it never confirmed): in one transaction the reshare
    /// becomes `failed`, this node's pending share is deleted (audited
    /// `key.share.deleted`) and `key.reshare.outcome_failed` is audited with
    /// `details`. The old share stays the key's share. Returns the pending shares
    /// deleted; refused unless the reshare is `uncertain`.
    pub async fn resolve_reshare_failed(
        &self,
        node_id: &str,
        id: Uuid,
        details: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let key: Option<(String,)> = sqlx::query_as(
            "UPDATE key_reshares SET state = 'failed', \
               error = coalesce(error || '; ', '') || 'outcome: a participant never confirmed' \
             WHERE id = $1 AND node_id = $2 AND state = 'uncertain' RETURNING key_id",
        )
        .bind(id)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((key_id,)) = key else {
            return Err(StoreError::InvalidTransition(format!(
                "reshare {id} is not uncertain"
            )));
        };
        let rows: Vec<(i64,)> = sqlx::query_as(
            "DELETE FROM key_shares WHERE ceremony_id = $1 AND node_id = $2 AND NOT usable \
             RETURNING id",
        )
        .bind(id)
        .bind(node_id)
        .fetch_all(&mut *tx)
        .await?;
        for (row,) in &rows {
            append_audit(
                &mut tx,
                node_id,
                AuditEntry::new(node_id, "key.share.deleted")
                    .subject(key_id.clone())
                    .details(serde_json::json!({
                        "session": id.to_string(),
                        "share_row": row,
                        "ceremony": id.to_string(),
                        "reason": "pending share of a failed reshare (outcome protocol)",
                    })),
            )
            .await?;
        }
        let mut details = details.clone();
        if let Some(m) = details.as_object_mut() {
            m.insert("session".to_owned(), id.to_string().into());
            m.insert("pending_shares_deleted".to_owned(), rows.len().into());
        }
        append_audit(
            &mut tx,
            node_id,
            AuditEntry::new(node_id, "key.reshare.outcome_failed")
                .subject(key_id)
                .details(details),
        )
        .await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }
}

/// What this node can say about a reshare when asked for its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalOutcome {
    /// It switched to the new generation (its confirmation value).
    Committed([u8; 32]),
    /// It stored its confirmation (this value) but did not switch.
    Confirmed([u8; 32]),
    /// It never confirmed (marked failed) or the reshare failed here.
    Failed,
    /// No record of it here.
    Unknown,
}

/// An `uncertain` reshare of this node.
#[derive(Debug, Clone)]
pub struct UncertainReshare {
    /// Session id.
    pub id: Uuid,
    /// The key.
    pub key_id: String,
    /// Old holders.
    pub old_participants: Vec<String>,
    /// New holders.
    pub new_participants: Vec<String>,
    /// Dealers.
    pub dealers: Vec<String>,
    /// This node's confirmation value.
    pub confirmation: [u8; 32],
    /// The key's public key.
    pub public_key: Vec<u8>,
}
