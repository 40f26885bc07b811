//! Voting rounds and votes (at most one vote per node and round).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::audit::{append_audit, append_audit_with, audited_statement};
use super::groups::{all_written, write_together_or_alone, Groups, Waiting};
use super::{Store, StoreError};
use crate::audit::AuditEntry;
use vote::{vote_key_fingerprint, PinOutcome, VIOLATION_KEY_CHANGED};

/// A voting round.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RoundRow {
    /// Round id.
    pub id: Uuid,
    /// Transaction voted on.
    pub transaction_id: Uuid,
    /// Round number (1 for the first round of a transaction).
    pub round_no: i32,
    /// Approvals needed.
    pub required_approvals: i32,
    /// Nodes that may vote.
    pub total_nodes: i32,
    /// open, approved, rejected or expired.
    pub state: String,
    /// Deadline.
    pub deadline: DateTime<Utc>,
}

/// A vote as received.
#[derive(Debug, Clone)]
pub struct NewVote {
    /// Round.
    pub round_id: Uuid,
    /// Voter.
    pub node_id: String,
    /// approve or reject.
    pub decision: String,
    /// Reasons (policy violation codes) as JSON.
    pub reasons: serde_json::Value,
    /// Policy hash the voter evaluated.
    pub policy_hash: Option<String>,
    /// Voter's signature over the vote.
    pub signature: Vec<u8>,
}

/// Tally of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Approvals.
    pub approve: i64,
    /// Rejections.
    pub reject: i64,
}

impl Store {
    /// Opens a round for a transaction.
    pub async fn create_round(
        &self,
        id: Uuid,
        transaction_id: Uuid,
        round_no: i32,
        required_approvals: i32,
        total_nodes: i32,
        deadline: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        let round = NewRound {
            id,
            round_no,
            required_approvals,
            total_nodes,
            deadline,
        };
        insert_round(&mut conn, transaction_id, &round).await
    }

    /// One round.
    pub async fn get_round(&self, id: Uuid) -> Result<RoundRow, StoreError> {
        sqlx::query_as::<_, RoundRow>(
            "SELECT id, transaction_id, round_no, required_approvals, total_nodes, state, deadline \
             FROM voting_rounds WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound {
            what: "voting round",
            id: id.to_string(),
        })
    }

    /// Records a vote; a second vote by the same node in the round is refused with
    /// [`StoreError::Duplicate`].
    pub async fn record_vote(&self, vote: &NewVote) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO votes (round_id, node_id, decision, reasons, policy_hash, signature) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(vote.round_id)
        .bind(&vote.node_id)
        .bind(&vote.decision)
        .bind(&vote.reasons)
        .bind(&vote.policy_hash)
        .bind(&vote.signature)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "vote"))?;
        Ok(())
    }

    /// Counts approvals and rejections of a round.
    pub async fn tally(&self, round_id: Uuid) -> Result<Tally, StoreError> {
        let (approve, reject): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE decision = 'approve'), \
                    count(*) FILTER (WHERE decision = 'reject') \
             FROM votes WHERE round_id = $1",
        )
        .bind(round_id)
        .fetch_one(self.pool())
        .await?;
        Ok(Tally { approve, reject })
    }

    /// Closes an open round with its outcome and moves its transaction to the same
    /// state in one database transaction, with the audit row `tx.<outcome>` (and,
    /// unless approved, the transaction's reserved UTXOs released): a crash never
    /// leaves a closed round beside a transaction still `voting`. Returns `false`
    /// (and changes nothing) when the round was already closed.
    pub async fn close_round_and_transaction(
        &self,
        local_node: &str,
        round_id: Uuid,
        transaction_id: Uuid,
        outcome: &str,
        failure_reason: Option<&str>,
        votes: usize,
    ) -> Result<bool, StoreError> {
        self.close_round(
            local_node,
            round_id,
            transaction_id,
            (outcome, failure_reason),
            votes,
            None,
        )
        .await
    }

    /// [`Store::close_round_and_transaction`] for a quorum of approvals: in the same
    /// database transaction, the transaction's outflow (`outflow_sats` of key
    /// `key_id`) is counted against the key's velocity windows (whatever this node
    /// voted itself: others may sign it), unless its own approval counted it already.
    pub async fn close_round_approved(
        &self,
        local_node: &str,
        round_id: Uuid,
        transaction_id: Uuid,
        votes: usize,
        outflow: Option<(&str, u64)>,
    ) -> Result<bool, StoreError> {
        self.close_round(
            local_node,
            round_id,
            transaction_id,
            ("approved", None),
            votes,
            outflow,
        )
        .await
    }

    /// Closes a round (see [`Store::close_round_and_transaction`]). Grouped with the
    /// closes other callers are writing (see [`super::groups`]): one statement, one
    /// commit and one hold of the audit lock for the group, each round, transaction,
    /// release, outflow and audit record still its own row. A group in which a round
    /// was not open any more, or that fails, is written again one close at a time.
    async fn close_round(
        &self,
        local_node: &str,
        round_id: Uuid,
        transaction_id: Uuid,
        (outcome, failure_reason): (&str, Option<&str>),
        votes: usize,
        outflow: Option<(&str, u64)>,
    ) -> Result<bool, StoreError> {
        let (key_id, sats) = super::transactions::outflow_columns(transaction_id, outflow)?;
        let close = RoundClose {
            local_node: local_node.to_owned(),
            round_id,
            transaction_id,
            outcome: outcome.to_owned(),
            failure_reason: failure_reason.map(str::to_owned),
            votes,
            key_id: key_id.map(str::to_owned),
            sats,
        };
        let store = self.clone();
        let answer = Groups::submit(
            &self.round_closes,
            close.clone(),
            |c: &RoundClose| c.transaction_id,
            move |group| {
                let store = store.clone();
                async move { store.close_round_group(group).await }
            },
        )
        .await;
        match answer {
            Some(r) => r,
            // The writing task ended without answering (the runtime shutting
            // down): this caller closes its round itself.
            None => self.close_round_alone(&close).await,
        }
    }

    /// One group of closes (see [`Store::close_round`]).
    async fn close_round_group(&self, group: Vec<Waiting<RoundClose, Result<bool, StoreError>>>) {
        write_together_or_alone(
            group,
            |closes| async move {
                let n = closes.len();
                let all = self.close_rounds_together(closes).await?;
                Ok(all_written(all, n, || Ok(true)))
            },
            |c| async move { self.close_round_alone(&c).await },
        )
        .await;
    }

    /// Several closes in one statement and one commit: `false`, with nothing
    /// written, unless they are all of one node, every round was open and every
    /// transaction moved.
    async fn close_rounds_together(&self, closes: Vec<RoundClose>) -> Result<bool, StoreError> {
        let Some(first) = closes.first() else {
            return Ok(true);
        };
        if closes.iter().any(|c| c.local_node != first.local_node) {
            return Ok(false);
        }
        let entries = closes.iter().map(close_entry).collect();
        let col = |f: fn(&RoundClose) -> Option<String>| closes.iter().map(f).collect::<Vec<_>>();
        let rounds: Vec<Uuid> = closes.iter().map(|c| c.round_id).collect();
        let txs: Vec<Uuid> = closes.iter().map(|c| c.transaction_id).collect();
        let outcomes: Vec<String> = closes.iter().map(|c| c.outcome.clone()).collect();
        let reasons = col(|c| c.failure_reason.clone());
        let keys = col(|c| c.key_id.clone());
        let sats: Vec<Option<i64>> = closes.iter().map(|c| c.sats).collect();
        let mut tx = self.pool().begin().await?;
        let (closed, _) = super::audit::append_audit_many_with(
            &mut tx,
            &first.local_node,
            entries,
            super::audit::audited_group_statement!(
                "s AS (SELECT * FROM unnest($11::uuid[], $12::uuid[], $13::text[], $14::text[], \
                                            $15::text[], $16::bigint[]) \
                       AS s(round_id, transaction_id, outcome, failure_reason, key_id, sats)), \
                 r AS (UPDATE voting_rounds vr SET state = s.outcome, closed_at = now() \
                       FROM s WHERE vr.id = s.round_id AND vr.state = 'open' \
                       RETURNING s.transaction_id, s.outcome, s.failure_reason, s.key_id, s.sats), \
                 t AS (UPDATE transactions tr SET state = r.outcome, \
                              failure_reason = COALESCE(r.failure_reason, tr.failure_reason) \
                       FROM r WHERE tr.id = r.transaction_id \
                       RETURNING tr.id, r.outcome, r.key_id, r.sats), \
                 u AS (UPDATE utxos SET state = 'available', reserved_by = NULL \
                       FROM t WHERE t.outcome <> 'approved' AND utxos.reserved_by = t.id \
                         AND utxos.state = 'reserved' RETURNING 1), \
                 o AS (INSERT INTO outflows (transaction_id, key_id, outflow_sats, counted_for) \
                       SELECT t.id, t.key_id, t.sats, $17 FROM t WHERE t.key_id IS NOT NULL \
                       ON CONFLICT (transaction_id) DO NOTHING RETURNING 1), \
                 done AS (SELECT id FROM t \
                          WHERE (SELECT count(*) FROM u) + (SELECT count(*) FROM o) >= 0)"
            ),
            |q| {
                q.bind(rounds)
                    .bind(txs)
                    .bind(outcomes)
                    .bind(reasons)
                    .bind(keys)
                    .bind(sats)
                    .bind(super::transactions::OutflowReason::QuorumApproved.as_str())
            },
        )
        .await?;
        if usize::try_from(closed).ok() != Some(closes.len()) {
            return Ok(false);
        }
        tx.commit().await?;
        if closes.iter().any(|c| c.outcome != "approved") {
            self.released();
        }
        Ok(true)
    }

    /// One close in its own statement and commit.
    async fn close_round_alone(&self, c: &RoundClose) -> Result<bool, StoreError> {
        // The round's close, the transaction's move (the state machine's trigger
        // checks it; its round's foreign key means the row exists), the release of
        // the inputs of a transaction that will not be signed, the outflow count
        // and the audit record: one statement (issue 21), in a transaction that is
        // rolled back when the round was not open any more.
        let mut tx = self.pool().begin().await?;
        let (closed, _) = append_audit_with(
            &mut tx,
            &c.local_node,
            close_entry(c),
            audited_statement!(
                "r AS (UPDATE voting_rounds SET state = $12, closed_at = now() \
                       WHERE id = $11 AND state = 'open' RETURNING id), \
                 t AS (UPDATE transactions SET state = $12, \
                              failure_reason = COALESCE($14, failure_reason) \
                       WHERE id = $13 AND EXISTS (SELECT 1 FROM r) RETURNING id), \
                 u AS (UPDATE utxos SET state = 'available', reserved_by = NULL \
                       WHERE $12 <> 'approved' AND EXISTS (SELECT 1 FROM t) \
                         AND reserved_by = $13 AND state = 'reserved' RETURNING 1), \
                 o AS (INSERT INTO outflows (transaction_id, key_id, outflow_sats, counted_for) \
                       SELECT $13, $15, $16, $17 FROM t WHERE $15::text IS NOT NULL \
                       ON CONFLICT (transaction_id) DO NOTHING RETURNING 1), \
                 done AS (SELECT id FROM t \
                          WHERE (SELECT count(*) FROM u) + (SELECT count(*) FROM o) >= 0)"
            ),
            |q| {
                q.bind(c.round_id)
                    .bind(c.outcome.as_str())
                    .bind(c.transaction_id)
                    .bind(c.failure_reason.as_deref())
                    .bind(c.key_id.as_deref())
                    .bind(c.sats)
                    .bind(super::transactions::OutflowReason::QuorumApproved.as_str())
            },
        )
        .await?;
        if closed != 1 {
            return Ok(false);
        }
        tx.commit().await?;
        if c.outcome != "approved" {
            self.released();
        }
        Ok(true)
    }
}

/// A round's close waiting for its group.
#[derive(Debug, Clone)]
pub(crate) struct RoundClose {
    local_node: String,
    round_id: Uuid,
    transaction_id: Uuid,
    outcome: String,
    failure_reason: Option<String>,
    votes: usize,
    key_id: Option<String>,
    sats: Option<i64>,
}

/// Most closes one statement writes.
const MAX_CLOSE_GROUP: usize = 64;

/// The closes waiting for a write (see [`Groups`]).
pub(crate) type RoundCloses = Groups<RoundClose, Result<bool, StoreError>>;

/// A fresh queue.
pub(crate) fn round_closes() -> RoundCloses {
    Groups::new(MAX_CLOSE_GROUP)
}

/// The audit entry of a close: `tx.<outcome>` with the votes counted.
fn close_entry(c: &RoundClose) -> AuditEntry {
    AuditEntry::new("node", format!("tx.{}", c.outcome))
        .subject(c.transaction_id.to_string())
        .details(serde_json::json!({ "votes": c.votes }))
}

/// Inserts `vote` unless its node has a vote in the round; returns whether it
/// was inserted.
pub(super) async fn insert_vote_row<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    vote: &NewSignedVote,
) -> Result<bool, StoreError> {
    let sql = "INSERT INTO votes (round_id, node_id, decision, reasons, policy_hash, signature, signed_vote) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT ON CONSTRAINT votes_one_per_node DO NOTHING RETURNING id";
    let inserted: Option<(i64,)> = sqlx::query_as(sql)
        .bind(vote.round_id)
        .bind(&vote.node_id)
        .bind(&vote.decision)
        .bind(&vote.reasons)
        .bind(&vote.policy_hash)
        .bind(&vote.signature)
        .bind(&vote.signed_vote)
        .fetch_optional(ex)
        .await
        .map_err(|e| StoreError::classify(e, "vote"))?;
    Ok(inserted.is_some())
}

/// A signed vote to store (see the transaction service's vote intake).
#[derive(Debug, Clone)]
pub struct NewSignedVote {
    /// Round.
    pub round_id: Uuid,
    /// Voter (already checked to be the authenticated sender).
    pub node_id: String,
    /// approve or reject.
    pub decision: String,
    /// Reasons as a JSON array of strings.
    pub reasons: serde_json::Value,
    /// Policy hash the voter evaluated (hex).
    pub policy_hash: String,
    /// The Ed25519 signature.
    pub signature: Vec<u8>,
    /// The whole signed vote in its wire form, so the quorum can be re-verified.
    pub signed_vote: Vec<u8>,
}

/// Outcome of [`Store::insert_signed_vote`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteSlot {
    /// The vote is now stored.
    Inserted,
    /// The node already has a vote in the round; the stored one stays. Its signed
    /// bytes, if it was stored with them.
    Taken {
        /// Wire form of the stored vote.
        existing: Option<Vec<u8>>,
    },
}

/// A stored vote of a round.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredVote {
    /// Voter.
    pub node_id: String,
    /// approve or reject.
    pub decision: String,
    /// Wire form of the signed vote (absent for rows written by [`Store::record_vote`]).
    pub signed_vote: Option<Vec<u8>>,
}

impl Store {
    /// Stores a vote unless the node already has one in the round (constraint
    /// `votes_one_per_node`); then returns the stored one, untouched.
    pub async fn insert_signed_vote(&self, vote: &NewSignedVote) -> Result<VoteSlot, StoreError> {
        if self.insert_vote_grouped(vote).await? {
            return Ok(VoteSlot::Inserted);
        }
        let existing: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT signed_vote FROM votes WHERE round_id = $1 AND node_id = $2")
                .bind(vote.round_id)
                .bind(&vote.node_id)
                .fetch_optional(self.pool())
                .await?;
        match existing {
            Some((existing,)) => Ok(VoteSlot::Taken { existing }),
            // Only a cascade delete of the round removes votes.
            None => Err(StoreError::NotFound {
                what: "voting round",
                id: vote.round_id.to_string(),
            }),
        }
    }

    /// The signed form of `voter`'s stored vote in round `round_no` of
    /// `transaction_id`, if this node has one (`Some(None)`: a row without a signed
    /// form).
    pub async fn stored_vote_of(
        &self,
        transaction_id: Uuid,
        round_no: u32,
        voter: &str,
    ) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let round_no = i32::try_from(round_no).map_err(|_| StoreError::NotFound {
            what: "voting round",
            id: format!("{transaction_id}/{round_no}"),
        })?;
        let row: Option<(Option<Vec<u8>>,)> = sqlx::query_as(
            "SELECT v.signed_vote FROM votes v JOIN voting_rounds r ON r.id = v.round_id \
             WHERE r.transaction_id = $1 AND r.round_no = $2 AND v.node_id = $3",
        )
        .bind(transaction_id)
        .bind(round_no)
        .bind(voter)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(v,)| v))
    }

    /// Every vote of a round, ordered by voter.
    pub async fn round_votes(&self, round_id: Uuid) -> Result<Vec<StoredVote>, StoreError> {
        Ok(sqlx::query_as::<_, StoredVote>(
            "SELECT node_id, decision, signed_vote FROM votes WHERE round_id = $1 ORDER BY node_id",
        )
        .bind(round_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Records a voting violation by `culprit` and its audit row in one database
    /// transaction. `evidence` may hold signed votes; the audit row gets only the
    /// code, session and `summary`.
    pub async fn record_vote_violation(
        &self,
        local_node: &str,
        culprit: &str,
        violation_type: &str,
        session_id: &str,
        evidence: &serde_json::Value,
        summary: &str,
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
        .bind(local_node)
        .fetch_one(&mut *tx)
        .await?;
        append_audit(
            &mut tx,
            local_node,
            AuditEntry::new("node", "vote.violation")
                .subject(culprit)
                .details(serde_json::json!({
                    "violation_id": id,
                    "violation_type": violation_type,
                    "session": session_id,
                    "summary": summary,
                })),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Every pinned peer vote key, ordered by node id.
    ///
    /// Read from the database once and then kept in memory: every pin and unpin
    /// goes through this handle ([`Store::pin_vote_key`], [`Store::unpin_vote_key`])
    /// and drops the memory copy once committed, so the next call reads the table
    /// again. A read that raced with a pin is not kept (a generation count). A
    /// change made to `peer_vote_keys` by hand, outside the node, is seen after
    /// the node's next pin or restart.
    pub async fn vote_keys(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        let generation = {
            let cache = self.vote_key_cache();
            if let Some(keys) = &cache.keys {
                return Ok(keys.clone());
            }
            cache.generation
        };
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT node_id, public_key FROM peer_vote_keys ORDER BY node_id")
                .fetch_all(self.pool())
                .await?;
        let keys = rows
            .into_iter()
            .map(|(node, key)| {
                let key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
                    StoreError::Corrupt(format!("vote key of {node} is not 32 bytes"))
                })?;
                Ok((node, key))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut cache = self.vote_key_cache();
        if cache.generation == generation {
            cache.keys = Some(keys.clone());
        }
        Ok(keys)
    }

    fn vote_key_cache(&self) -> std::sync::MutexGuard<'_, VoteKeyCache> {
        self.vote_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the memory copy of the vote keys (after a committed pin or unpin).
    fn forget_vote_keys(&self) {
        let mut cache = self.vote_key_cache();
        cache.generation = cache.generation.wrapping_add(1);
        cache.keys = None;
    }

    /// Trust on first use: pins `public_key` for `node_id` if none is pinned
    /// (audited as `vote_key.pin`). A different pinned key stays and the attempt is
    /// recorded as violation `vote_key_changed` (and audited), in the same database
    /// transaction.
    pub async fn pin_vote_key(
        &self,
        local_node: &str,
        node_id: &str,
        public_key: &[u8; 32],
    ) -> Result<PinOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        let inserted: Option<(String,)> = sqlx::query_as(
            "INSERT INTO peer_vote_keys (node_id, public_key) VALUES ($1, $2) \
             ON CONFLICT (node_id) DO NOTHING RETURNING node_id",
        )
        .bind(node_id)
        .bind(public_key.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
        let fingerprint = vote_key_fingerprint(public_key);
        if inserted.is_some() {
            append_audit(
                &mut tx,
                local_node,
                AuditEntry::new("node", "vote_key.pin")
                    .subject(node_id)
                    .details(serde_json::json!({
                        "public_key": hex::encode(public_key),
                        "fingerprint": fingerprint,
                    })),
            )
            .await?;
            tx.commit().await?;
            self.forget_vote_keys();
            return Ok(PinOutcome::NewlyPinned);
        }
        let (pinned,): (Vec<u8>,) =
            sqlx::query_as("SELECT public_key FROM peer_vote_keys WHERE node_id = $1")
                .bind(node_id)
                .fetch_one(&mut *tx)
                .await?;
        let pinned: [u8; 32] = pinned
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("vote key of {node_id} is not 32 bytes")))?;
        if pinned == *public_key {
            tx.commit().await?;
            return Ok(PinOutcome::AlreadyPinned);
        }
        let evidence = serde_json::json!({
            "pinned": hex::encode(pinned),
            "pinned_fingerprint": vote_key_fingerprint(&pinned),
            "offered": hex::encode(public_key),
            "offered_fingerprint": fingerprint,
        });
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO byzantine_violations (node_id, violation_type, session_id, evidence, detected_by) \
             VALUES ($1, $2, NULL, $3, $4) RETURNING id",
        )
        .bind(node_id)
        .bind(VIOLATION_KEY_CHANGED)
        .bind(&evidence)
        .bind(local_node)
        .fetch_one(&mut *tx)
        .await?;
        append_audit(
            &mut tx,
            local_node,
            AuditEntry::new("node", "vote.violation")
                .subject(node_id)
                .details(serde_json::json!({
                    "violation_id": id,
                    "violation_type": VIOLATION_KEY_CHANGED,
                    "pinned_fingerprint": vote_key_fingerprint(&pinned),
                    "offered_fingerprint": fingerprint,
                })),
        )
        .await?;
        tx.commit().await?;
        Ok(PinOutcome::Changed { pinned })
    }

    /// Removes the pin of `node_id` (an operator action, e.g. after the node was
    /// rebuilt with a new vote key), audited as `vote_key.unpin` by `actor`.
    /// Returns whether a pin existed.
    pub async fn unpin_vote_key(
        &self,
        local_node: &str,
        actor: &str,
        node_id: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let removed: Option<(Vec<u8>,)> =
            sqlx::query_as("DELETE FROM peer_vote_keys WHERE node_id = $1 RETURNING public_key")
                .bind(node_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((key,)) = removed else {
            return Ok(false);
        };
        append_audit(
            &mut tx,
            local_node,
            AuditEntry::new(actor, "vote_key.unpin")
                .subject(node_id)
                .details(serde_json::json!({"public_key": hex::encode(&key)})),
        )
        .await?;
        tx.commit().await?;
        self.forget_vote_keys();
        Ok(true)
    }
}

/// The memory copy of the pinned vote keys ([`Store::vote_keys`]).
#[derive(Debug, Default)]
pub struct VoteKeyCache {
    /// Bumped by every committed pin or unpin: a read that started before it is
    /// not kept.
    generation: u64,
    /// The keys, when read since the last pin or unpin.
    keys: Option<Vec<(String, [u8; 32])>>,
}

/// A voting round to open ([`Store::open_voting`]).
#[derive(Debug, Clone)]
pub struct NewRound {
    /// Round id.
    pub id: Uuid,
    /// Round number (1 for a proposal).
    pub round_no: i32,
    /// Approvals that make a quorum.
    pub required_approvals: i32,
    /// Nodes that vote.
    pub total_nodes: i32,
    /// End of the round.
    pub deadline: DateTime<Utc>,
}

async fn insert_round(
    conn: &mut sqlx::PgConnection,
    transaction_id: Uuid,
    round: &NewRound,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO voting_rounds (id, transaction_id, round_no, required_approvals, total_nodes, deadline) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(round.id)
    .bind(transaction_id)
    .bind(round.round_no)
    .bind(round.required_approvals)
    .bind(round.total_nodes)
    .bind(round.deadline)
    .execute(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "voting round"))?;
    Ok(())
}
