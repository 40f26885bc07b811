//! A proposal batch's two writes on a follower (issue 21, docs/BATCHING.md): its
//! records (rows, rounds, reservations) and this node's own votes on it. Each is
//! one database transaction of multi-row statements, a fixed number per batch
//! whatever its size (before: the same statements once per payment inside the
//! transaction). Either writes all of its batch or nothing: `false` tells the
//! caller to write each payment on its own, so that one that cannot be written as
//! it is fails, or votes reject, alone.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::audit::AuditOf;
use super::transactions::{
    insert_rows, outflow_columns, ApprovalClaim, NewTransaction, OutflowReason,
};
use super::vote_inserts::VoteColumns;
use super::votes::{NewRound, NewSignedVote};
use super::{Store, StoreError};

/// One proposal of a batch to record: its row (a peer's proposal; `None` for the
/// leader's own, stored since intake), id, round and the inputs to reserve.
pub type ProposalRecord<'a> = (
    Option<&'a NewTransaction>,
    Uuid,
    &'a NewRound,
    &'a [wallet::OwnedUtxo],
);

/// One own vote of a batch to write: the transaction, its approval claim (an
/// approve), the vote and its audit record.
pub type OwnVoteRecord<'a> = (Uuid, Option<ApprovalClaim<'a>>, NewSignedVote, AuditOf);

impl Store {
    /// [`Store::open_voting`] for the proposals of one batch from `leader`: every
    /// row, move to `voting`, round and reservation in one database transaction,
    /// or none. `false` (nothing written) when one of them cannot be written as
    /// it is (known already, not found, an input unavailable, an input named by
    /// two of them).
    pub async fn open_votings(
        &self,
        leader: &str,
        proposals: &[ProposalRecord<'_>],
    ) -> Result<bool, StoreError> {
        let mut seen = HashSet::new();
        if !proposals
            .iter()
            .flat_map(|(_, _, _, reserve)| reserve.iter())
            .all(|u| seen.insert(u.outpoint))
        {
            return Ok(false);
        }
        let mut tx = self.pool().begin().await?;
        let new: Vec<&NewTransaction> = proposals.iter().filter_map(|p| p.0).collect();
        if !new.is_empty() {
            match insert_rows(&mut tx, &new).await {
                Ok(n) if usize::try_from(n).ok() == Some(new.len()) => {}
                Ok(_) => return Ok(false),
                Err(e) => return not_as_it_is(e),
            }
        }
        if !open_rounds(&mut tx, leader, proposals).await? {
            return Ok(false);
        }
        let reserve: Vec<(Uuid, &wallet::OwnedUtxo)> = proposals
            .iter()
            .flat_map(|(_, id, _, reserve)| reserve.iter().map(move |u| (*id, u)))
            .collect();
        if !super::utxos::reserve_many_in(&mut tx, &reserve).await? {
            return Ok(false);
        }
        crate::crash::before_commit(crate::crash::PROPOSAL_BATCH, || {
            proposals.iter().map(|(_, id, _, _)| *id).collect()
        });
        tx.commit().await?;
        Ok(true)
    }

    /// [`Store::record_own_vote`] for the votes of one batch, in one database
    /// transaction: every one is written, or none. `false` (nothing written) when
    /// one's txid was approved here under other data: the caller writes each on
    /// its own, so that one votes reject alone.
    pub async fn record_own_votes(&self, votes: &[OwnVoteRecord<'_>]) -> Result<bool, StoreError> {
        super::retry_conflicts("own votes", || async {
            let mut tx = self.pool().begin().await?;
            // Every row lock of the batch (claims, outflows, votes) is taken before
            // the audit append lock, as in every other audited change: a batch
            // that took the lock with its first vote's record and then row locks
            // for the next deadlocked with a round close holding such a row and
            // waiting for the lock (seen under a 1,000-payment burst).
            if !claim_txids(&mut tx, votes).await? {
                return Ok(false);
            }
            insert_own_outflows(&mut tx, votes).await?;
            // This node votes once per round: a stored vote of its own fails the
            // statement (no `ON CONFLICT`), and nothing of the batch is written.
            VoteColumns::of(votes.iter().map(|(_, _, v, _)| v))
                .insert_all(&mut tx)
                .await?;
            let audits = votes.iter().map(|(_, _, _, a)| a.clone()).collect();
            AuditOf::append_many(audits, &mut tx).await?;
            crate::crash::before_commit(crate::crash::OWN_VOTES, || {
                votes.iter().map(|(id, _, _, _)| *id).collect()
            });
            tx.commit().await?;
            Ok(true)
        })
        .await
    }
}

/// `Ok(false)` for an error that says a row cannot be written as it is (a known
/// id, a refused state move); the error itself otherwise.
fn not_as_it_is(e: StoreError) -> Result<bool, StoreError> {
    match e {
        StoreError::Duplicate { .. } | StoreError::InvalidTransition(_) => Ok(false),
        e => Err(e),
    }
}

/// Moves every proposal's row to `voting` under `leader` with its deadline and
/// inserts its round, in one statement; `false` unless every row moved.
async fn open_rounds(
    conn: &mut sqlx::PgConnection,
    leader: &str,
    proposals: &[ProposalRecord<'_>],
) -> Result<bool, StoreError> {
    let n = proposals.len();
    let (mut ids, mut deadlines, mut round_ids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut round_nos, mut required, mut total) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (_, id, round, _) in proposals {
        ids.push(*id);
        deadlines.push(round.deadline);
        round_ids.push(round.id);
        round_nos.push(round.round_no);
        required.push(round.required_approvals);
        total.push(round.total_nodes);
    }
    let opened = sqlx::query(
        "WITH s AS (SELECT * FROM unnest($2::uuid[], $3::timestamptz[], $4::uuid[], $5::int[], \
                                         $6::int[], $7::int[]) \
                    AS s(id, deadline, round_id, round_no, required, total)), \
              t AS (UPDATE transactions tr SET leader = $1, vote_deadline = s.deadline, \
                           state = 'voting' FROM s WHERE tr.id = s.id RETURNING tr.id) \
         INSERT INTO voting_rounds \
             (id, transaction_id, round_no, required_approvals, total_nodes, deadline) \
         SELECT s.round_id, t.id, s.round_no, s.required, s.total, s.deadline \
         FROM t JOIN s ON s.id = t.id",
    )
    .bind(leader)
    .bind(&ids)
    .bind(&deadlines)
    .bind(&round_ids)
    .bind(&round_nos)
    .bind(&required)
    .bind(&total)
    .execute(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "transaction"));
    match opened {
        Ok(r) => Ok(usize::try_from(r.rows_affected()).ok() == Some(n)),
        Err(e) => not_as_it_is(e),
    }
}

/// Claims the txids of the batch's approvals, new ones in one statement; `false`
/// when one was approved here under other data.
async fn claim_txids(
    conn: &mut sqlx::PgConnection,
    votes: &[OwnVoteRecord<'_>],
) -> Result<bool, StoreError> {
    let claims: Vec<(Uuid, &ApprovalClaim<'_>)> = votes
        .iter()
        .filter_map(|(id, claim, _, _)| claim.as_ref().map(|c| (*id, c)))
        .collect();
    if claims.is_empty() {
        return Ok(true);
    }
    let txids: Vec<&str> = claims.iter().map(|(_, c)| c.txid).collect();
    let hashes: Vec<&[u8]> = claims.iter().map(|(_, c)| c.data_hash.as_slice()).collect();
    let ids: Vec<Uuid> = claims.iter().map(|(id, _)| *id).collect();
    // A txid twice in the batch: the first row claims it, the second finds it
    // claimed and is compared below, as if written one after the other.
    let claimed: Vec<(String, Uuid)> = sqlx::query_as(
        "INSERT INTO approved_txids (txid, data_hash, transaction_id) \
         SELECT * FROM unnest($1::text[], $2::bytea[], $3::uuid[]) \
         ON CONFLICT (txid) DO NOTHING RETURNING txid, transaction_id",
    )
    .bind(&txids)
    .bind(&hashes)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "txid approval"))?;
    let claimed: HashSet<(String, Uuid)> = claimed.into_iter().collect();
    let unclaimed: Vec<&ApprovalClaim<'_>> = claims
        .iter()
        .filter(|(id, c)| !claimed.contains(&(c.txid.to_owned(), *id)))
        .map(|(_, c)| *c)
        .collect();
    if unclaimed.is_empty() {
        return Ok(true);
    }
    let before: Vec<&str> = unclaimed.iter().map(|c| c.txid).collect();
    let stored: HashMap<String, Vec<u8>> =
        sqlx::query_as("SELECT txid, data_hash FROM approved_txids WHERE txid = ANY($1)")
            .bind(&before)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    Ok(unclaimed
        .iter()
        .all(|c| stored.get(c.txid).map(Vec::as_slice) == Some(c.data_hash.as_slice())))
}

/// The approvals' outflow counts (`own_approve`), one statement; a count that
/// exists stays.
async fn insert_own_outflows(
    conn: &mut sqlx::PgConnection,
    votes: &[OwnVoteRecord<'_>],
) -> Result<(), StoreError> {
    let (mut ids, mut keys, mut sats) = (Vec::new(), Vec::new(), Vec::new());
    for (id, claim, _, _) in votes {
        if let (Some(key_id), Some(amount)) =
            outflow_columns(*id, claim.as_ref().map(|a| (a.key_id, a.outflow_sats)))?
        {
            ids.push(*id);
            keys.push(key_id);
            sats.push(amount);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outflows (transaction_id, key_id, outflow_sats, counted_for) \
         SELECT s.id, s.key_id, s.sats, $4 \
         FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS s(id, key_id, sats) \
         ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&sats)
    .bind(OutflowReason::OwnApprove.as_str())
    .execute(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "outflow"))?;
    Ok(())
}
