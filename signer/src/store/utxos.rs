//! `utxos`: outputs paying this node's wallet addresses.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{Store, StoreError};
use wallet::OwnedUtxo;

impl Store {
    /// Adds imported UTXOs (already known ones are kept as they are; one learned
    /// from a proposal with the same amount and script becomes an imported one);
    /// returns how many were new (or newly imported).
    pub async fn add_utxos(&self, utxos: &[OwnedUtxo]) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut added = 0;
        for u in utxos {
            added += sqlx::query(
                "INSERT INTO utxos (txid, vout, key_id, value_sats, script_pubkey, chain, idx) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (txid, vout) DO UPDATE \
                 SET origin = 'import' WHERE utxos.origin = 'proposal' \
                 AND utxos.value_sats = EXCLUDED.value_sats \
                 AND utxos.script_pubkey = EXCLUDED.script_pubkey",
            )
            .bind(u.outpoint.txid.to_string())
            .bind(i64::from(u.outpoint.vout))
            .bind(&u.key_id)
            .bind(i64::try_from(u.value_sats).unwrap_or(i64::MAX))
            .bind(u.script_pubkey.as_bytes())
            .bind(i64::from(u.chain))
            .bind(i64::from(u.index))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, "utxo"))?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Available UTXOs of a key.
    pub async fn available_utxos(&self, key_id: &str) -> Result<Vec<OwnedUtxo>, StoreError> {
        self.selectable_utxos(key_id, 0, i64::MAX).await
    }

    /// What coin selection can use: the key's available imported UTXOs worth more
    /// than `above_sats`, largest first, at most `limit` (selection takes at most
    /// `max_inputs` inputs). Read through `idx_utxos_selection`, so a payment's intake
    /// costs the same with ten or ten thousand UTXOs (issue 21).
    pub async fn selectable_utxos(
        &self,
        key_id: &str,
        above_sats: u64,
        limit: i64,
    ) -> Result<Vec<OwnedUtxo>, StoreError> {
        let rows: Vec<(String, i32, i64, Vec<u8>, i32, i32)> = sqlx::query_as(
            "SELECT txid, vout, value_sats, script_pubkey, chain, idx FROM utxos \
             WHERE key_id = $1 AND state = 'available' AND origin = 'import' AND value_sats > $2 \
             ORDER BY value_sats DESC, txid, vout LIMIT $3",
        )
        .bind(key_id)
        .bind(i64::try_from(above_sats).unwrap_or(i64::MAX))
        .bind(limit.max(0))
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (txid, vout, value, script, chain, idx) in rows {
            let (Ok(txid), Ok(vout), Ok(value), Ok(chain), Ok(idx)) = (
                txid.parse(),
                u32::try_from(vout),
                u64::try_from(value),
                u32::try_from(chain),
                u32::try_from(idx),
            ) else {
                continue;
            };
            out.push(OwnedUtxo {
                key_id: key_id.to_owned(),
                outpoint: bitcoin::OutPoint { txid, vout },
                value_sats: value,
                script_pubkey: bitcoin::ScriptBuf::from_bytes(script),
                chain,
                index: idx,
            });
        }
        Ok(out)
    }

    /// Reserves every input of a proposal for transaction `id`. Inputs this node
    /// does not know yet are recorded (origin `proposal`, with the amount and script
    /// the caller proved) and reserved at once. Reserves nothing when an input is
    /// spent or reserved by another transaction, or when `id` has already ended
    /// here (a late reservation would hold the inputs of a dead transaction, which
    /// nothing releases). The transaction's row is share-locked first, so an end
    /// that commits concurrently either happens before (seen here) or releases what
    /// this reserved.
    pub async fn reserve_inputs(
        &self,
        id: Uuid,
        inputs: &[OwnedUtxo],
    ) -> Result<InputReservation, StoreError> {
        let mut tx = self.pool().begin().await?;
        let state: Option<(String,)> =
            sqlx::query_as("SELECT state FROM transactions WHERE id = $1 FOR SHARE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        match state {
            Some((s,)) if LIVE_STATES.contains(&s.as_str()) => {}
            Some((s,)) => {
                tx.rollback().await?;
                return Ok(InputReservation::TransactionEnded(s));
            }
            None => {
                tx.rollback().await?;
                return Err(StoreError::NotFound {
                    what: "transaction",
                    id: id.to_string(),
                });
            }
        }
        if let Some(o) = reserve_in(&mut tx, id, inputs).await? {
            tx.rollback().await?;
            return Ok(InputReservation::Unavailable(o));
        }
        tx.commit().await?;
        Ok(InputReservation::Reserved)
    }

    /// Whether every one of `outpoints` is reserved by transaction `id` in this
    /// node's database (what a signer checks before a partial signature leaves it).
    pub async fn inputs_reserved_by(
        &self,
        id: Uuid,
        outpoints: &[bitcoin::OutPoint],
    ) -> Result<bool, StoreError> {
        let (txids, vouts) = outpoint_columns(outpoints);
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM utxos u \
             JOIN unnest($1::text[], $2::int[]) AS o(txid, vout) \
               ON u.txid = o.txid AND u.vout = o.vout \
             WHERE u.state = 'reserved' AND u.reserved_by = $3",
        )
        .bind(&txids)
        .bind(&vouts)
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        Ok(usize::try_from(n).is_ok_and(|n| n == outpoints.len()))
    }

    /// Those of `outpoints` this node holds `available` or `reserved` (one
    /// statement for any number of them).
    pub async fn unspent_among(
        &self,
        outpoints: &[bitcoin::OutPoint],
    ) -> Result<std::collections::HashSet<bitcoin::OutPoint>, StoreError> {
        if outpoints.is_empty() {
            return Ok(Default::default());
        }
        let (txids, vouts) = outpoint_columns(outpoints);
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "SELECT u.txid, u.vout FROM utxos u \
             JOIN unnest($1::text[], $2::int[]) AS o(txid, vout) \
               ON u.txid = o.txid AND u.vout = o.vout \
             WHERE u.state IN ('available', 'reserved')",
        )
        .bind(&txids)
        .bind(&vouts)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(t, v)| match (t.parse(), u32::try_from(v)) {
                (Ok(txid), Ok(vout)) => Ok(bitcoin::OutPoint { txid, vout }),
                _ => Err(StoreError::Corrupt(format!("utxo row {t}:{v}"))),
            })
            .collect()
    }

    /// The amount and script of those of `outpoints` this node has a UTXO row for.
    pub async fn known_outputs(
        &self,
        outpoints: &[bitcoin::OutPoint],
    ) -> Result<wallet::KnownOutputs, StoreError> {
        let (txids, vouts) = outpoint_columns(outpoints);
        let rows: Vec<(String, i32, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT u.txid, u.vout, u.value_sats, u.script_pubkey FROM utxos u \
             JOIN unnest($1::text[], $2::int[]) AS o(txid, vout) \
               ON u.txid = o.txid AND u.vout = o.vout",
        )
        .bind(&txids)
        .bind(&vouts)
        .fetch_all(self.pool())
        .await?;
        let mut out = wallet::KnownOutputs::new();
        for (txid, vout, value, script) in rows {
            let (Ok(txid), Ok(vout), Ok(value)) =
                (txid.parse(), u32::try_from(vout), u64::try_from(value))
            else {
                return Err(StoreError::Corrupt(format!("utxo row {txid}:{vout}")));
            };
            out.insert(
                bitcoin::OutPoint { txid, vout },
                bitcoin::TxOut {
                    value: bitcoin::Amount::from_sat(value),
                    script_pubkey: bitcoin::ScriptBuf::from_bytes(script),
                },
            );
        }
        Ok(out)
    }

    /// Stores a funding transaction (once; its outputs are imported separately).
    pub async fn add_funding_transaction(
        &self,
        tx: &bitcoin::Transaction,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO funding_transactions (txid, raw) VALUES ($1, $2) \
             ON CONFLICT (txid) DO NOTHING",
        )
        .bind(tx.compute_txid().to_string())
        .bind(bitcoin::consensus::serialize(tx))
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "funding transaction"))?;
        Ok(())
    }

    /// The stored funding transactions among `txids`.
    pub async fn funding_transactions(
        &self,
        txids: &[bitcoin::Txid],
    ) -> Result<std::collections::HashMap<bitcoin::Txid, bitcoin::Transaction>, StoreError> {
        let ids: Vec<String> = txids.iter().map(ToString::to_string).collect();
        let rows: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT raw FROM funding_transactions WHERE txid = ANY($1)")
                .bind(&ids)
                .fetch_all(self.pool())
                .await?;
        let mut out = std::collections::HashMap::new();
        for (raw,) in rows {
            let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&raw)
                .map_err(|e| StoreError::Corrupt(format!("funding transaction: {e}")))?;
            out.insert(tx.compute_txid(), tx);
        }
        Ok(out)
    }

    /// Highest change index used so far by a key (for the next change output).
    pub async fn next_change_index(&self, key_id: &str) -> Result<u32, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM transactions WHERE key_id = $1 AND recipient IS NOT NULL",
        )
        .bind(key_id)
        .fetch_one(self.pool())
        .await?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// Marks `outpoints` spent (those still `available` or `reserved`) because a
    /// signed transaction `txid` that this node verified itself spends them, in one
    /// database transaction with its `utxo.spent` audit entry naming the peer that
    /// reported it; returns the outpoints it changed (none: nothing audited).
    pub async fn mark_spent_elsewhere(
        &self,
        node_id: &str,
        txid: &str,
        outpoints: &[bitcoin::OutPoint],
        reported_by: &str,
    ) -> Result<Vec<bitcoin::OutPoint>, StoreError> {
        let (txids, vouts) = outpoint_columns(outpoints);
        let mut tx = self.pool().begin().await?;
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "UPDATE utxos u SET state = 'spent' \
             FROM unnest($1::text[], $2::int[]) AS o(txid, vout) \
             WHERE u.txid = o.txid AND u.vout = o.vout AND u.state IN ('available', 'reserved') \
             RETURNING u.txid, u.vout",
        )
        .bind(&txids)
        .bind(&vouts)
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = Vec::with_capacity(rows.len());
        for (t, v) in rows {
            let (Ok(t), Ok(v)) = (t.parse(), u32::try_from(v)) else {
                return Err(StoreError::Corrupt(format!("utxo row {t}:{v}")));
            };
            changed.push(bitcoin::OutPoint { txid: t, vout: v });
        }
        if changed.is_empty() {
            return Ok(changed);
        }
        let listed: Vec<String> = changed.iter().map(ToString::to_string).collect();
        super::audit::append_audit(
            &mut tx,
            node_id,
            crate::audit::AuditEntry::new("node", "utxo.spent")
                .subject(txid)
                .details(serde_json::json!({
                    "outpoints": listed,
                    "reported_by": reported_by,
                    "verified": "consensus",
                })),
        )
        .await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// The ids of the signed transactions this node recorded (signed, broadcast or
    /// confirmed) and last changed within `within`, newest first, at most `limit`.
    pub async fn recent_signed_transactions(
        &self,
        within: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM transactions \
             WHERE state IN ('signed', 'broadcast', 'confirmed') AND signed_tx IS NOT NULL \
               AND updated_at > now() - make_interval(secs => $1) \
             ORDER BY updated_at DESC, id LIMIT $2",
        )
        .bind(within.as_secs_f64())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// The serialized signed transactions of `ids` (those that have one).
    pub async fn signed_transactions(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, signed_tx FROM transactions WHERE id = ANY($1) AND signed_tx IS NOT NULL",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?)
    }

    /// Makes the UTXOs reserved by a transaction that will not be signed available
    /// again.
    pub async fn release_utxos(&self, id: Uuid) -> Result<u64, StoreError> {
        let released = release_reserved(self.pool(), id).await?;
        self.released();
        Ok(released)
    }
}

/// Reserves `outpoints` (all `available`) for transaction `id` inside the caller's
/// transaction; a `Duplicate` error when one is not available (the caller's
/// transaction must then be rolled back).
pub(super) async fn reserve_available(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    outpoints: &[bitcoin::OutPoint],
) -> Result<(), StoreError> {
    for o in outpoints {
        let n = sqlx::query(
            "UPDATE utxos SET state = 'reserved', reserved_by = $3 \
             WHERE txid = $1 AND vout = $2 AND state = 'available'",
        )
        .bind(o.txid.to_string())
        .bind(i64::from(o.vout))
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::Duplicate {
                what: "utxo reservation",
                detail: format!("{o} is not available"),
            });
        }
    }
    Ok(())
}

/// Reserves `inputs` for transaction `id` inside the caller's open database
/// transaction (see [`Store::reserve_inputs`]); the first input that is spent or
/// reserved by another transaction is returned, and the caller rolls back its
/// whole database transaction.
pub(crate) async fn reserve_in(
    conn: &mut PgConnection,
    id: Uuid,
    inputs: &[OwnedUtxo],
) -> Result<Option<bitcoin::OutPoint>, StoreError> {
    for u in inputs {
        let o = &u.outpoint;
        // An input this node did not know is recorded reserved by `id` in one
        // statement (the usual case on a node that did not import the coin);
        // a known one is checked and reserved below.
        let learned: Option<(i32,)> = sqlx::query_as(
            "INSERT INTO utxos (txid, vout, key_id, value_sats, script_pubkey, chain, idx, \
             state, reserved_by, origin) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'reserved', $8, 'proposal') \
             ON CONFLICT (txid, vout) DO NOTHING RETURNING vout",
        )
        .bind(o.txid.to_string())
        .bind(i64::from(o.vout))
        .bind(&u.key_id)
        .bind(i64::try_from(u.value_sats).unwrap_or(i64::MAX))
        .bind(u.script_pubkey.as_bytes())
        .bind(i64::from(u.chain))
        .bind(i64::from(u.index))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| StoreError::classify(e, "utxo"))?;
        if learned.is_some() {
            continue;
        }
        let row: Option<(String, Option<Uuid>)> = sqlx::query_as(
            "SELECT state, reserved_by FROM utxos WHERE txid = $1 AND vout = $2 FOR UPDATE",
        )
        .bind(o.txid.to_string())
        .bind(i64::from(o.vout))
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some((state, _)) if state == "available" => {
                sqlx::query(
                    "UPDATE utxos SET state = 'reserved', reserved_by = $3 \
                     WHERE txid = $1 AND vout = $2",
                )
                .bind(o.txid.to_string())
                .bind(i64::from(o.vout))
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            Some((state, by)) if state == "reserved" && by == Some(id) => {}
            _ => return Ok(Some(*o)),
        }
    }
    Ok(None)
}

/// [`reserve_in`] for the inputs of several transactions (`(transaction,
/// input)`, no output twice), in two statements: the outputs this node did not
/// know are recorded reserved, the known ones reserved unless another
/// transaction holds them or they are spent. `false` when one of them could not
/// be reserved: the caller rolls back its whole database transaction.
pub(crate) async fn reserve_many_in(
    conn: &mut PgConnection,
    inputs: &[(Uuid, &OwnedUtxo)],
) -> Result<bool, StoreError> {
    if inputs.is_empty() {
        return Ok(true);
    }
    let n = inputs.len();
    let (mut ids, mut txids, mut vouts, mut keys) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut values, mut scripts, mut chains, mut idxs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (id, u) in inputs {
        ids.push(*id);
        txids.push(u.outpoint.txid.to_string());
        vouts.push(i64::from(u.outpoint.vout));
        keys.push(u.key_id.as_str());
        values.push(i64::try_from(u.value_sats).unwrap_or(i64::MAX));
        scripts.push(u.script_pubkey.as_bytes());
        chains.push(i64::from(u.chain));
        idxs.push(i64::from(u.index));
    }
    let learned = sqlx::query(
        "INSERT INTO utxos (txid, vout, key_id, value_sats, script_pubkey, chain, idx, \
                            state, reserved_by, origin) \
         SELECT s.txid, s.vout, s.key_id, s.value_sats, s.script_pubkey, s.chain, s.idx, \
                'reserved', s.id, 'proposal' \
         FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], \
                     $6::bytea[], $7::bigint[], $8::bigint[]) \
              AS s(id, txid, vout, key_id, value_sats, script_pubkey, chain, idx) \
         ON CONFLICT (txid, vout) DO NOTHING",
    )
    .bind(&ids)
    .bind(&txids)
    .bind(&vouts)
    .bind(&keys)
    .bind(&values)
    .bind(&scripts)
    .bind(&chains)
    .bind(&idxs)
    .execute(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "utxo"))?
    .rows_affected();
    let learned = usize::try_from(learned).unwrap_or(usize::MAX);
    if learned == n {
        return Ok(true);
    }
    // The known ones: reserved now unless held by another transaction or spent.
    // Every input is then either reserved by this update (`now`) or was already
    // reserved by its own transaction as the statement's snapshot sees it
    // (`before`: the rows just learned above, or a reservation of an earlier
    // commit); fewer than all means one is held elsewhere or spent.
    let reserved = sqlx::query(
        "WITH s AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS s(id, txid, vout)), \
              r AS (UPDATE utxos u SET state = 'reserved', reserved_by = s.id FROM s \
                    WHERE u.txid = s.txid AND u.vout = s.vout AND u.state = 'available' \
                    RETURNING 1) \
         SELECT (SELECT count(*) FROM r) AS now, count(*) AS before FROM utxos u JOIN s \
             ON u.txid = s.txid AND u.vout = s.vout \
         WHERE u.state = 'reserved' AND u.reserved_by = s.id",
    )
    .bind(&ids)
    .bind(&txids)
    .bind(&vouts)
    .fetch_one(&mut *conn)
    .await?;
    let now: i64 = sqlx::Row::try_get(&reserved, "now")?;
    let before: i64 = sqlx::Row::try_get(&reserved, "before")?;
    Ok(usize::try_from(now + before).ok() == Some(n))
}

/// Transaction states in which inputs may still be reserved.
const LIVE_STATES: [&str; 4] = ["pending", "voting", "approved", "signing"];

/// What [`Store::reserve_inputs`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputReservation {
    /// Every input is now reserved by the transaction.
    Reserved,
    /// Nothing reserved: this input is spent or reserved by another transaction.
    Unavailable(bitcoin::OutPoint),
    /// Nothing reserved: the transaction already ended here (in this state).
    TransactionEnded(String),
}

/// Releases the UTXOs reserved by transaction `id` (in a pool or a transaction).
pub(super) async fn release_reserved<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    id: Uuid,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE utxos SET state = 'available', reserved_by = NULL \
         WHERE reserved_by = $1 AND state = 'reserved'",
    )
    .bind(id)
    .execute(ex)
    .await?
    .rows_affected())
}

/// Outpoints as two parallel columns for `unnest`.
fn outpoint_columns(outpoints: &[bitcoin::OutPoint]) -> (Vec<String>, Vec<i32>) {
    outpoints
        .iter()
        .map(|o| {
            (
                o.txid.to_string(),
                i32::try_from(o.vout).unwrap_or(i32::MAX),
            )
        })
        .unzip()
}
