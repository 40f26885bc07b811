//! Peers' votes stored in groups (issue 21): votes that arrive while an insert is
//! running are stored together by the next one, in one multi-row statement (one
//! round trip and one commit for the group). A lone vote is inserted at once, as
//! before: nothing waits for a group to fill.
//!
//! Each caller still gets its own answer (stored now, or the slot was taken) only
//! once its row is committed, so what the callers do next (tally, relay) is
//! unchanged. Two votes of the same voter in the same round never share a group:
//! the second goes to the next insert and finds the slot taken, so a double vote
//! is still caught by comparing it with the stored one.

use std::collections::HashSet;

use sqlx::Row;
use uuid::Uuid;

use super::groups::{write_together_or_alone, Groups, Waiting};
use super::votes::{insert_vote_row, NewSignedVote};
use super::{Store, StoreError};

/// Most votes one insert stores.
const MAX_GROUP: usize = 256;

/// The votes waiting for an insert (see [`Groups`]).
pub(crate) type VoteInserts = Groups<NewSignedVote, Result<bool, StoreError>>;

/// A fresh queue.
pub(crate) fn vote_inserts() -> VoteInserts {
    Groups::new(MAX_GROUP)
}

impl Store {
    /// Inserts `vote` unless its voter has a vote in the round: `true` when it is
    /// stored now. Grouped with the votes other callers are storing (module doc);
    /// two votes of one voter in one round never share a group.
    pub(crate) async fn insert_vote_grouped(
        &self,
        vote: &NewSignedVote,
    ) -> Result<bool, StoreError> {
        let store = self.clone();
        Groups::submit_or_alone(
            &self.vote_inserts,
            vote.clone(),
            |v: &NewSignedVote| (v.round_id, v.node_id.clone()),
            move |group| {
                let store = store.clone();
                async move { store.insert_group(group).await }
            },
            |vote| async move { insert_vote_row(self.pool(), &vote).await },
        )
        .await
    }

    async fn insert_group(&self, group: Vec<Waiting<NewSignedVote, Result<bool, StoreError>>>) {
        // One bad row (its round deleted) fails the whole statement: each vote is
        // then inserted on its own, so it fails alone.
        write_together_or_alone(
            group,
            |votes| self.insert_votes_together(votes),
            |v| async move { insert_vote_row(self.pool(), &v).await },
        )
        .await;
    }

    /// Several votes in one multi-row statement: for each, whether it was stored
    /// now (`false`: its voter's slot in the round was taken).
    async fn insert_votes_together(
        &self,
        votes: Vec<NewSignedVote>,
    ) -> Result<Option<Vec<Result<bool, StoreError>>>, StoreError> {
        let rows = VoteColumns::of(votes.iter())
            .query(INSERT_PEER_VOTES)
            .fetch_all(self.pool())
            .await?;
        let stored = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<HashSet<(Uuid, String)>, sqlx::Error>>()?;
        Ok(Some(
            votes
                .into_iter()
                .map(|v| Ok(stored.contains(&(v.round_id, v.node_id))))
                .collect(),
        ))
    }
}

/// Votes as the parallel columns of one multi-row `INSERT` (`unnest`).
pub(crate) struct VoteColumns<'a> {
    round_id: Vec<Uuid>,
    node_id: Vec<&'a str>,
    decision: Vec<&'a str>,
    reasons: Vec<&'a serde_json::Value>,
    policy_hash: Vec<&'a str>,
    signature: Vec<&'a [u8]>,
    signed_vote: Vec<&'a [u8]>,
}

/// The multi-row insert of [`VoteColumns`], before its conflict clause.
macro_rules! insert_votes {
    () => {
        "INSERT INTO votes (round_id, node_id, decision, reasons, policy_hash, signature, signed_vote) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], \
                              $6::bytea[], $7::bytea[])"
    };
}

/// This node's own votes: no conflict clause.
const INSERT_OWN_VOTES: &str = insert_votes!();

/// Peers' votes: a voter's slot taken in a round keeps the stored vote.
const INSERT_PEER_VOTES: &str = concat!(
    insert_votes!(),
    " ON CONFLICT ON CONSTRAINT votes_one_per_node DO NOTHING RETURNING round_id, node_id"
);

impl<'a> VoteColumns<'a> {
    /// The columns of `votes`, in order.
    pub(crate) fn of(votes: impl Iterator<Item = &'a NewSignedVote>) -> Self {
        let mut c = Self {
            round_id: Vec::new(),
            node_id: Vec::new(),
            decision: Vec::new(),
            reasons: Vec::new(),
            policy_hash: Vec::new(),
            signature: Vec::new(),
            signed_vote: Vec::new(),
        };
        for v in votes {
            c.round_id.push(v.round_id);
            c.node_id.push(&v.node_id);
            c.decision.push(&v.decision);
            c.reasons.push(&v.reasons);
            c.policy_hash.push(&v.policy_hash);
            c.signature.push(&v.signature);
            c.signed_vote.push(&v.signed_vote);
        }
        c
    }

    /// Insert `sql` (one of the two above) with the columns bound.
    fn query(
        &self,
        sql: &'static str,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql)
            .bind(&self.round_id)
            .bind(&self.node_id)
            .bind(&self.decision)
            .bind(&self.reasons)
            .bind(&self.policy_hash)
            .bind(&self.signature)
            .bind(&self.signed_vote)
    }

    /// Inserts every vote (this node's own: a vote of its own stored in one of
    /// the rounds fails the statement, and nothing is inserted).
    pub(crate) async fn insert_all(&self, conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        self.query(INSERT_OWN_VOTES)
            .execute(conn)
            .await
            .map_err(|e| StoreError::classify(e, "own vote"))?;
        Ok(())
    }
}
