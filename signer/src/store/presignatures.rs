//! `presignatures`: this node's sealed CGGMP24 presignatures, and the counter used to
//! detect a restored database (see `docs/PRESIGNATURES.md`).
//!
//! A presignature leaves `available` exactly once, in the transaction that records its
//! use (`reserved` by the signing leader, `consumed` by a signer, `discarded` after a
//! restore); a trigger (migration 0006) refuses any way back.

use uuid::Uuid;

use super::{Store, StoreError};

/// A new presignature row.
#[derive(Debug)]
pub struct NewPresignature<'a> {
    /// Row id.
    pub id: Uuid,
    /// ECDSA key.
    pub key_id: &'a str,
    /// Signer set (node ids, run order).
    pub signer_set: &'a [String],
    /// Execution id of the presigning run.
    pub execution_id: &'a [u8],
    /// Sealed presignature (envelope bound to `public_id`).
    pub envelope: &'a [u8],
    /// `PresignaturePublic` bytes.
    pub public_data: &'a [u8],
    /// SHA-256 of the public data (the same on every member of the set).
    pub public_id: &'a [u8; 32],
    /// Derivation path the presignature is bound to.
    pub path: &'a [u32],
    /// Ceremony of the key share it was made with: the row is stored only while that
    /// share is still this node's usable share of the key (a reshare switched in the
    /// meantime discards it, docs/RESHARING.md).
    pub share_ceremony: Uuid,
    /// This node.
    pub node_id: &'a str,
}

/// What a consuming signer gets back: the sealed secret and its public data.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConsumedPresignature {
    /// Row id.
    pub id: Uuid,
    /// Sealed presignature.
    pub envelope: Vec<u8>,
    /// `PresignaturePublic` bytes.
    pub public_data: Vec<u8>,
}

/// A presignature the signing leader reserved.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReservedPresignature {
    /// Public id (hex on the wire).
    pub public_id: Vec<u8>,
    /// `PresignaturePublic` bytes.
    pub public_data: Vec<u8>,
}

/// Which use is recorded with a presignature.
#[derive(Debug, Clone, Copy)]
pub struct PresignatureUse {
    /// Transaction.
    pub tx: Uuid,
    /// Input index.
    pub input: u32,
    /// Signing session.
    pub session: Uuid,
}

/// Counts per key, signer set and state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct PoolRow {
    /// ECDSA key.
    pub key_id: String,
    /// Signer set.
    pub signer_set: Vec<String>,
    /// Ready to use.
    pub available: i64,
    /// Reserved by this node as signing leader (never available again).
    pub reserved: i64,
    /// Used for a partial signature.
    pub consumed: i64,
    /// Discarded (restore).
    pub discarded: i64,
    /// Created in the last 10 minutes (for the generation rate).
    pub created_last_10min: i64,
}

fn path_i32(path: &[u32]) -> Vec<i32> {
    path.iter()
        .map(|c| i32::try_from(*c).unwrap_or(-1))
        .collect()
}

/// A hook run inside the consuming transaction with the new counter value, before
/// the commit (writes the watermark file, increments the TPM counter when one
/// anchors the watermark). It returns the TPM counter's new value to store in the
/// same transaction, if any. An error aborts the transaction.
pub type CounterHook<'a> = &'a (dyn Fn(i64) -> Result<Option<i64>, String> + Send + Sync);

/// Advances the counter inside `tx`, runs the hook and stores the TPM anchor it
/// returned; the inner error is the hook's refusal (a rollback of the database, the
/// file not written, the TPM counter not incremented).
async fn bump_counter(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    hook: CounterHook<'_>,
) -> Result<Result<(), String>, StoreError> {
    let (c,): (i64,) = sqlx::query_as(
        "UPDATE presign_watermark SET counter = counter + 1 WHERE id RETURNING counter",
    )
    .fetch_one(&mut **tx)
    .await?;
    match hook(c) {
        Ok(Some(anchor)) => {
            sqlx::query("UPDATE presign_watermark SET tpm_anchor = $1 WHERE id")
                .bind(anchor)
                .execute(&mut **tx)
                .await?;
            Ok(Ok(()))
        }
        Ok(None) => Ok(Ok(())),
        Err(e) => Ok(Err(e)),
    }
}

fn refused(e: &str) -> StoreError {
    StoreError::Corrupt(format!("presignature watermark: {e}"))
}

impl Store {
    /// Stores a presignature this node holds; false if its public id is known already
    /// or the share it was made with is no longer this node's share of the key.
    pub async fn insert_presignature(&self, p: &NewPresignature<'_>) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO presignatures (id, key_id, signer_set, execution_id, envelope, \
             public_data, public_id, derivation_path) SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
             WHERE EXISTS (SELECT 1 FROM key_shares WHERE key_id = $2 AND node_id = $10 \
             AND ceremony_id = $9 AND usable) \
             ON CONFLICT (public_id) DO NOTHING",
        )
        .bind(p.id)
        .bind(p.key_id)
        .bind(p.signer_set)
        .bind(p.execution_id)
        .bind(p.envelope)
        .bind(p.public_data)
        .bind(&p.public_id[..])
        .bind(path_i32(p.path))
        .bind(p.share_ceremony)
        .bind(p.node_id)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "presignature"))?
        .rows_affected();
        Ok(n == 1)
    }

    /// Available presignatures of `(key, signer set, path)`.
    pub async fn presignatures_available(
        &self,
        key_id: &str,
        signer_set: &[String],
        path: &[u32],
    ) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM presignatures WHERE key_id = $1 AND signer_set = $2 \
             AND derivation_path = $3 AND state = 'available'",
        )
        .bind(key_id)
        .bind(signer_set)
        .bind(path_i32(path))
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    /// The signer sets holding at least one available presignature of `(key, path)`.
    pub async fn presignature_sets_in_stock(
        &self,
        key_id: &str,
        path: &[u32],
    ) -> Result<Vec<Vec<String>>, StoreError> {
        let rows: Vec<(Vec<String>,)> = sqlx::query_as(
            "SELECT DISTINCT signer_set FROM presignatures WHERE key_id = $1 \
             AND derivation_path = $2 AND state = 'available'",
        )
        .bind(key_id)
        .bind(path_i32(path))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(s,)| s).collect())
    }

    /// Signing leader: reserves the oldest available presignature of `(key, signer
    /// set, path)` for one use, in one transaction; it is never available again.
    pub async fn reserve_presignature(
        &self,
        key_id: &str,
        signer_set: &[String],
        path: &[u32],
        usage: PresignatureUse,
        hook: CounterHook<'_>,
    ) -> Result<Option<ReservedPresignature>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query_as::<_, ReservedPresignature>(
            "UPDATE presignatures SET state = 'reserved', consumed_by = $4, consumed_input = $5, \
             consumed_session = $6, consumed_at = now() \
             WHERE id = (SELECT id FROM presignatures WHERE key_id = $1 AND signer_set = $2 \
                         AND derivation_path = $3 AND state = 'available' \
                         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING public_id, public_data",
        )
        .bind(key_id)
        .bind(signer_set)
        .bind(path_i32(path))
        .bind(usage.tx)
        .bind(i64::from(usage.input))
        .bind(usage.session)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_none() {
            // Nothing used: the counter (and its file) must not move for nothing,
            // or the next start would take it for a restore.
            tx.rollback().await?;
            return Ok(None);
        }
        if let Err(e) = bump_counter(&mut tx, hook).await? {
            // The hook refused (it stopped presignature use and alerted): nothing is
            // reserved, and the leader signs without a presignature.
            tx.rollback().await?;
            tracing::warn!(error = %e, "no presignature reserved");
            return Ok(None);
        }
        tx.commit().await?;
        Ok(row)
    }

    /// Signer: consumes presignature `public_id` for one use, in one transaction that
    /// also records the use and advances the restore counter; `None` if it is not
    /// available on this node for exactly this key, signer set and path (or reserved
    /// by another session). The secret must only be opened after this returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn consume_presignature(
        &self,
        public_id: &[u8],
        key_id: &str,
        signer_set: &[String],
        path: &[u32],
        usage: PresignatureUse,
        hook: CounterHook<'_>,
    ) -> Result<Option<ConsumedPresignature>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query_as::<_, ConsumedPresignature>(
            "UPDATE presignatures SET state = 'consumed', consumed_by = $5, consumed_input = $6, \
             consumed_session = $7, consumed_at = now() \
             WHERE public_id = $1 AND key_id = $2 AND signer_set = $3 AND derivation_path = $4 \
             AND (state = 'available' OR (state = 'reserved' AND consumed_session = $7 \
                                          AND consumed_by = $5 AND consumed_input = $6)) \
             RETURNING id, envelope, public_data",
        )
        .bind(public_id)
        .bind(key_id)
        .bind(signer_set)
        .bind(path_i32(path))
        .bind(usage.tx)
        .bind(i64::from(usage.input))
        .bind(usage.session)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        if let Err(e) = bump_counter(&mut tx, hook).await? {
            // Nothing consumed; the signer refuses (the leader falls back).
            tx.rollback().await?;
            return Err(refused(&e));
        }
        tx.commit().await?;
        Ok(row)
    }

    /// The restore counter stored in the database.
    pub async fn presign_counter(&self) -> Result<i64, StoreError> {
        let (c,): (i64,) = sqlx::query_as("SELECT counter FROM presign_watermark WHERE id")
            .fetch_one(self.pool())
            .await?;
        Ok(c)
    }

    /// The TPM counter value stored by the last committed use (`None`: never
    /// anchored).
    pub async fn presign_tpm_anchor(&self) -> Result<Option<i64>, StoreError> {
        let (a,): (Option<i64>,) =
            sqlx::query_as("SELECT tpm_anchor FROM presign_watermark WHERE id")
                .fetch_one(self.pool())
                .await?;
        Ok(a)
    }

    /// The restore counter read under its row lock, given to `check` while the lock
    /// is held: every reserving or consuming transaction holds that lock from its
    /// increment through its watermark write to its commit, so none is half-way.
    pub async fn presign_counter_settled<R>(
        &self,
        check: impl FnOnce(i64) -> R + Send,
    ) -> Result<R, StoreError> {
        let mut tx = self.pool().begin().await?;
        let (c,): (i64,) =
            sqlx::query_as("SELECT counter FROM presign_watermark WHERE id FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        let r = check(c);
        tx.rollback().await?;
        Ok(r)
    }

    /// After a detected restore (at start or while running): discards every
    /// available presignature (all of them predate the restore point, or may have
    /// been used after it) and raises the counter to `counter` in one transaction,
    /// with the audit record `presign.discarded` (`details` added to it), and
    /// re-anchors the watermark at the TPM counter's value if `tpm_anchor` is given
    /// (`Some(None)`: a counter never incremented); returns how many were discarded.
    pub async fn discard_restored_presignatures(
        &self,
        node_id: &str,
        counter: i64,
        tpm_anchor: Option<Option<i64>>,
        reason: &str,
        details: serde_json::Value,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE presignatures SET state = 'discarded', discarded_at = now(), \
             discard_reason = $1 WHERE state = 'available'",
        )
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE presign_watermark SET counter = GREATEST(counter, $1), \
             tpm_anchor = CASE WHEN $2 THEN $3 ELSE tpm_anchor END WHERE id",
        )
        .bind(counter)
        .bind(tpm_anchor.is_some())
        .bind(tpm_anchor.flatten())
        .execute(&mut *tx)
        .await?;
        super::audit::append_audit(
            &mut tx,
            node_id,
            crate::audit::AuditEntry::new("node", "presign.discarded").details({
                let mut d = serde_json::json!({ "count": n, "reason": reason });
                if let (Some(d), serde_json::Value::Object(extra)) = (d.as_object_mut(), details) {
                    d.extend(extra);
                }
                d
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Pool counts per key and signer set.
    pub async fn presignature_counts(&self) -> Result<Vec<PoolRow>, StoreError> {
        Ok(sqlx::query_as::<_, PoolRow>(
            "SELECT key_id, signer_set, \
                    count(*) FILTER (WHERE state = 'available') AS available, \
                    count(*) FILTER (WHERE state = 'reserved') AS reserved, \
                    count(*) FILTER (WHERE state = 'consumed') AS consumed, \
                    count(*) FILTER (WHERE state = 'discarded') AS discarded, \
                    count(*) FILTER (WHERE created_at > now() - interval '10 minutes') \
                      AS created_last_10min \
             FROM presignatures GROUP BY key_id, signer_set ORDER BY key_id, signer_set",
        )
        .fetch_all(self.pool())
        .await?)
    }
}
