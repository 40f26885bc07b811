//! `dkg_ceremonies` and `key_shares`: key ceremonies and this node's sealed shares.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::audit::AuditEntry;

/// A key ceremony as recorded by this node.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CeremonyRow {
    /// Ceremony (session) id.
    pub id: Uuid,
    /// `cggmp24` or `frost`.
    pub protocol: String,
    /// Threshold t.
    pub threshold: i32,
    /// Participant node ids in run-index order.
    pub participants: Vec<String>,
    /// Execution id the protocol is bound to.
    #[serde(serialize_with = "ser_hex")]
    pub execution_id: Vec<u8>,
    /// Node that announced the ceremony.
    pub coordinator: String,
    /// etcd fencing token of the coordinator's start lock.
    pub fencing_token: i64,
    /// `pending`, `running`, `completed` or `failed`.
    pub state: String,
    /// Shared public key, once completed.
    #[serde(serialize_with = "ser_opt_hex")]
    pub public_key: Option<Vec<u8>>,
    /// Why it failed.
    pub error: Option<String>,
    /// When this node recorded it.
    pub created_at: DateTime<Utc>,
    /// When it completed or failed.
    pub completed_at: Option<DateTime<Utc>>,
}

fn ser_hex<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

fn ser_opt_hex<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&hex::encode(v)),
        None => s.serialize_none(),
    }
}

/// A new ceremony to record.
#[derive(Debug, Clone)]
pub struct NewCeremony<'a> {
    /// Ceremony id.
    pub id: Uuid,
    /// `cggmp24` or `frost`.
    pub protocol: &'a str,
    /// Threshold.
    pub threshold: u16,
    /// Participants in run-index order.
    pub participants: &'a [String],
    /// Execution id.
    pub execution_id: &'a [u8],
    /// Coordinator node id.
    pub coordinator: &'a str,
    /// Fencing token.
    pub fencing_token: i64,
}

/// This node's share of a key (public data only; the envelope stays in the row).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ShareRow {
    /// Ceremony that made it.
    pub ceremony_id: Uuid,
    /// Key id.
    pub key_id: String,
    /// Shared public key.
    pub public_key: Vec<u8>,
    /// HSM/TPM envelope of the share.
    pub envelope: Vec<u8>,
    /// Protocol of the ceremony.
    pub protocol: String,
    /// Threshold.
    pub threshold: i32,
    /// Participants.
    pub participants: Vec<String>,
}

/// A usable share's key, without the share: what the transaction service reads on
/// every request (the envelope stays in the database).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ShareKeyRow {
    /// Key id.
    pub key_id: String,
    /// Protocol of the ceremony.
    pub protocol: String,
    /// Threshold.
    pub threshold: i32,
    /// Participants.
    pub participants: Vec<String>,
}

macro_rules! ceremony_cols {
    () => {
        "id, protocol, threshold, participants, execution_id, coordinator, \
         fencing_token, state, public_key, error, created_at, completed_at"
    };
}

impl Store {
    /// Records a ceremony as `pending`; a second record of the same id is a
    /// [`StoreError::Duplicate`].
    pub async fn insert_ceremony(&self, c: &NewCeremony<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dkg_ceremonies (id, protocol, threshold, participants, execution_id, \
             coordinator, fencing_token) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(c.id)
        .bind(c.protocol)
        .bind(i32::from(c.threshold))
        .bind(c.participants)
        .bind(c.execution_id)
        .bind(c.coordinator)
        .bind(c.fencing_token)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "ceremony"))?;
        Ok(())
    }

    /// Moves a `pending` ceremony to `running`.
    pub async fn ceremony_running(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE dkg_ceremonies SET state = 'running' WHERE id = $1 AND state = 'pending'",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Marks a ceremony `failed` with `reason` (unless it already ended), with an
    /// audit entry in the same transaction. Returns whether the state changed.
    pub async fn ceremony_failed(
        &self,
        node_id: &str,
        id: Uuid,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE dkg_ceremonies SET state = 'failed', error = $2, completed_at = now() \
             WHERE id = $1 AND state IN ('pending', 'running')",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            super::audit::append_audit(
                &mut tx,
                node_id,
                AuditEntry::new("node", "dkg.failed")
                    .subject(id.to_string())
                    .details(serde_json::json!({ "reason": reason })),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Fails every ceremony the last stop of this node left `pending` or `running`
    /// (a ceremony's run lives in memory: it cannot resume after a restart, and its
    /// row would otherwise say `running` forever), each audited like any failure.
    /// Returns how many.
    pub async fn fail_interrupted_ceremonies(&self, node_id: &str) -> Result<u64, StoreError> {
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM dkg_ceremonies WHERE state IN ('pending', 'running') ORDER BY created_at",
        )
        .fetch_all(self.pool())
        .await?;
        let mut failed = 0;
        for (id,) in ids {
            if self
                .ceremony_failed(
                    node_id,
                    id,
                    "interrupted: this node stopped during the ceremony",
                )
                .await?
            {
                failed += 1;
            }
        }
        Ok(failed)
    }

    /// Stores this node's sealed share, not yet usable.
    pub async fn insert_share(
        &self,
        ceremony_id: Uuid,
        node_id: &str,
        key_id: &str,
        public_key: &[u8],
        envelope: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO key_shares (ceremony_id, node_id, key_id, public_key, envelope, usable) \
             VALUES ($1, $2, $3, $4, $5, false)",
        )
        .bind(ceremony_id)
        .bind(node_id)
        .bind(key_id)
        .bind(public_key)
        .bind(envelope)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "key share"))?;
        Ok(())
    }

    /// In one transaction: the ceremony becomes `completed` with `public_key`, this
    /// node's share becomes usable, and both are audited. Fails (changing nothing)
    /// unless the ceremony is running and the share exists with the same key.
    pub async fn complete_ceremony(
        &self,
        node_id: &str,
        id: Uuid,
        public_key: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let c = sqlx::query(
            "UPDATE dkg_ceremonies SET state = 'completed', public_key = $2, completed_at = now() \
             WHERE id = $1 AND state = 'running'",
        )
        .bind(id)
        .bind(public_key)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let s = sqlx::query(
            "UPDATE key_shares SET usable = true \
             WHERE ceremony_id = $1 AND node_id = $2 AND public_key = $3",
        )
        .bind(id)
        .bind(node_id)
        .bind(public_key)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if c != 1 || s != 1 {
            tx.rollback().await?;
            return Err(StoreError::InvalidTransition(format!(
                "ceremony {id} cannot complete (ceremony rows {c}, share rows {s})"
            )));
        }
        super::audit::append_audit(
            &mut tx,
            node_id,
            AuditEntry::new("node", "dkg.completed")
                .subject(id.to_string())
                .details(serde_json::json!({ "public_key": hex::encode(public_key) })),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One ceremony.
    pub async fn ceremony(&self, id: Uuid) -> Result<Option<CeremonyRow>, StoreError> {
        Ok(sqlx::query_as::<_, CeremonyRow>(concat!(
            "SELECT ",
            ceremony_cols!(),
            " FROM dkg_ceremonies WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Key ceremonies (not aux info), newest first, at most `limit`.
    pub async fn list_ceremonies(&self, limit: i64) -> Result<Vec<CeremonyRow>, StoreError> {
        Ok(sqlx::query_as::<_, CeremonyRow>(concat!(
            "SELECT ",
            ceremony_cols!(),
            " FROM dkg_ceremonies WHERE protocol <> 'aux_info' \
             ORDER BY created_at DESC, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// This node's usable shares of completed ceremonies, oldest first.
    pub async fn usable_shares(&self, node_id: &str) -> Result<Vec<ShareRow>, StoreError> {
        Ok(sqlx::query_as::<_, ShareRow>(
            "SELECT s.ceremony_id, s.key_id, s.public_key, s.envelope, c.protocol, c.threshold, \
             c.participants FROM key_shares s JOIN dkg_ceremonies c ON c.id = s.ceremony_id \
             WHERE s.node_id = $1 AND s.usable AND c.state = 'completed' ORDER BY s.id",
        )
        .bind(node_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The keys of [`Self::usable_shares`], without reading the shares.
    pub async fn usable_share_keys(&self, node_id: &str) -> Result<Vec<ShareKeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, ShareKeyRow>(
            "SELECT s.key_id, c.protocol, c.threshold, c.participants \
             FROM key_shares s JOIN dkg_ceremonies c ON c.id = s.ceremony_id \
             WHERE s.node_id = $1 AND s.usable AND c.state = 'completed' ORDER BY s.id",
        )
        .bind(node_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Stores this node's sealed aux info of ceremony `ceremony_id` (the ceremony is
    /// not completed yet, so the record is not used before every participant confirmed).
    pub async fn insert_aux(
        &self,
        ceremony_id: Uuid,
        node_id: &str,
        participants: &[String],
        envelope: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO aux_info (ceremony_id, node_id, participants, envelope) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(ceremony_id)
        .bind(node_id)
        .bind(participants)
        .bind(envelope)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "aux info"))?;
        Ok(())
    }

    /// Marks an aux-info ceremony completed with its confirmed public digest, in one
    /// transaction with the audit entry; the node's aux-info row must exist.
    pub async fn complete_aux_ceremony(
        &self,
        node_id: &str,
        id: Uuid,
        digest: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let c = sqlx::query(
            "UPDATE dkg_ceremonies SET state = 'completed', public_key = $2, completed_at = now() \
             WHERE id = $1 AND state = 'running' AND protocol = 'aux_info' \
             AND EXISTS (SELECT 1 FROM aux_info WHERE ceremony_id = $1 AND node_id = $3)",
        )
        .bind(id)
        .bind(digest)
        .bind(node_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if c != 1 {
            tx.rollback().await?;
            return Err(StoreError::InvalidTransition(format!(
                "aux-info ceremony {id} cannot complete"
            )));
        }
        super::audit::append_audit(
            &mut tx,
            node_id,
            AuditEntry::new("node", "aux_info.completed")
                .subject(id.to_string())
                .details(serde_json::json!({ "public_digest": hex::encode(digest) })),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest completed aux info of this node for exactly `participants` (same
    /// order): `(ceremony id, envelope)`.
    pub async fn latest_aux(
        &self,
        node_id: &str,
        participants: &[String],
    ) -> Result<Option<(Uuid, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as::<_, (Uuid, Vec<u8>)>(
            "SELECT a.ceremony_id, a.envelope FROM aux_info a \
             JOIN dkg_ceremonies c ON c.id = a.ceremony_id \
             WHERE a.node_id = $1 AND a.participants = $2 AND c.state = 'completed' \
             ORDER BY c.completed_at DESC, a.id DESC LIMIT 1",
        )
        .bind(node_id)
        .bind(participants)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Aux-info ceremonies, newest first.
    pub async fn list_aux_ceremonies(&self, limit: i64) -> Result<Vec<CeremonyRow>, StoreError> {
        Ok(sqlx::query_as::<_, CeremonyRow>(concat!(
            "SELECT ",
            ceremony_cols!(),
            " FROM dkg_ceremonies WHERE protocol = 'aux_info' \
             ORDER BY created_at DESC, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
